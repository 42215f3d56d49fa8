import Data
import Foundation
import XCTest

final class CheckpointDirectoryTests: XCTestCase {
    private var root = ""

    override func setUpWithError() throws {
        root = NSTemporaryDirectory() + "ckpt-test-" + UUID().uuidString
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: root)
    }

    private func model(_ seed: Float) -> SafeTensors {
        var f = SafeTensors(metadata: ["step-note": "seed \(seed)"])
        f.append("0.weight", floats: (0..<12).map { Float($0) * seed }, shape: [3, 4])
        f.append("0.running_var", doubles: [1, 2, seed == 0 ? 1 : Double(seed)], shape: [3])
        f.append("step", int64s: [Int64(seed)], shape: [])
        return f
    }

    private func names(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    }

    private func assertLoadFails(
        _ path: String, _ fragment: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try CheckpointDirectory.load(path), file: file, line: line) { error in
            guard let e = error as? DataError else { return XCTFail("\(error) is not a DataError", file: file, line: line) }
            XCTAssertEqual(e.path, path, file: file, line: line)
            XCTAssertTrue(
                e.problem.contains(fragment), "\(e.problem.debugDescription) lacks \(fragment.debugDescription)", file: file,
                line: line)
        }
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        return (0...(haystack.count - needle.count)).first { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }

    private func rewrite(_ path: String, _ change: (inout [UInt8]) -> Void) throws {
        var bytes = [UInt8](try Foundation.Data(contentsOf: URL(fileURLWithPath: path)))
        change(&bytes)
        try Foundation.Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    func testWritesVerifiedSafetensorsAndLoadsThemBack() throws {
        let dir = CheckpointDirectory(path: root + "/nested/run", keep: 2)
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/nested/run"), "init creates the directory")
        let written = try dir.write(step: 123, model(1.5))
        XCTAssertEqual(written, root + "/nested/run/checkpoint-000000123.safetensors")
        XCTAssertEqual(try names(root + "/nested/run"), ["checkpoint-000000123.safetensors"], "no temporary file left")
        XCTAssertEqual(try CheckpointDirectory.load(written), model(1.5), "load returns what was written, checksum key removed")

        // A plain safetensors file carrying the CRC-32 of its own encoding without the key.
        let plain = try SafeTensors.load(written)
        let stored = try XCTUnwrap(plain.metadata[CheckpointDirectory.checksumKey])
        XCTAssertNotNil(stored.range(of: "^crc32:[0-9a-f]{8}$", options: .regularExpression), stored)
        var withoutKey = plain
        withoutKey.metadata.removeValue(forKey: CheckpointDirectory.checksumKey)
        XCTAssertEqual(stored, CRC32(withoutKey.encoded()).text)
        XCTAssertEqual(CRC32(Array("123456789".utf8)).value, 0xCBF4_3926, "the standard CRC-32 check value")
        XCTAssertEqual(CRC32.parse("crc32:cbf43926"), 0xCBF4_3926)
        for bad in ["crc32:CBF43926", "crc32:cbf4392", "crc32:cbf439260", "md5:cbf43926", "crc32:+bf43926"] {
            XCTAssertNil(CRC32.parse(bad), bad)
        }

        // Writing the same step again replaces the file.
        _ = try dir.write(step: 123, model(2))
        XCTAssertEqual(try CheckpointDirectory.load(written), model(2))
    }

    func testKeepsTheNewestAndListsNewestFirst() throws {
        let dir = CheckpointDirectory(path: root, keep: 3)
        for step in [5, 1, 30, 2, 400, 7] { _ = try dir.write(step: step, model(Float(step))) }
        XCTAssertEqual(dir.checkpoints(), [400, 30, 7].map { root + "/" + CheckpointDirectory.fileName(step: $0) })
        XCTAssertEqual(try names(root).count, 3)
        XCTAssertEqual(try CheckpointDirectory.load(dir.checkpoints()[0]), model(400))

        // Ignored: temporary files, other names, other digit counts; big steps sort by value.
        for name in [
            "checkpoint-000000999.safetensors.1234.tmp", "notes.txt", "checkpoint-12.safetensors",
            "checkpoint-0000000999.safetensors", "checkpoint-00000099a.safetensors", "checkpoint--00000001.safetensors",
            "checkpoint-000000500.safetensors.bak",
        ] {
            _ = FileManager.default.createFile(atPath: root + "/" + name, contents: Foundation.Data([1, 2, 3]))
        }
        XCTAssertEqual(
            dir.checkpoints().map { ($0 as NSString).lastPathComponent },
            [
                "checkpoint-000000400.safetensors", "checkpoint-000000030.safetensors", "checkpoint-000000007.safetensors",
            ])
        _ = try dir.write(step: 1_234_567_890, model(3))
        XCTAssertEqual(CheckpointDirectory.fileName(step: 1_234_567_890), "checkpoint-1234567890.safetensors")
        XCTAssertEqual(CheckpointDirectory.step(ofFileName: "checkpoint-1234567890.safetensors"), 1_234_567_890)
        XCTAssertEqual(
            dir.checkpoints().map { CheckpointDirectory.step(ofFileName: ($0 as NSString).lastPathComponent)! },
            [1_234_567_890, 400, 30])
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/notes.txt"), "foreign files are left alone")
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/checkpoint-000000999.safetensors.1234.tmp"))

        // The file just written is kept even when higher steps exist (e.g. a run restarted earlier).
        let older = try dir.write(step: 3, model(3))
        XCTAssertTrue(FileManager.default.fileExists(atPath: older))
        XCTAssertEqual(dir.checkpoints().count, 4)
        XCTAssertEqual(CheckpointDirectory(path: root + "/absent", keep: 1).checkpoints(), [])
    }

    /// A crash mid-write leaves at most a temporary file: it is not listed, and loading it fails
    /// clearly; a truncated or damaged newest checkpoint is detected, and the previous one still loads.
    func testDetectsInterruptedTruncatedAndCorruptedCheckpoints() throws {
        let dir = CheckpointDirectory(path: root, keep: 5)
        let first = try dir.write(step: 1, model(1))
        let newest = try dir.write(step: 2, model(2))
        let good = [UInt8](try Foundation.Data(contentsOf: URL(fileURLWithPath: newest)))
        let headerEnd = 8 + Int(good[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })

        let temporary = root + "/checkpoint-000000003.safetensors.999.tmp"
        _ = FileManager.default.createFile(atPath: temporary, contents: Foundation.Data(good[0..<(good.count / 2)]))
        XCTAssertEqual(dir.checkpoints(), [newest, first])
        assertLoadFails(temporary, "the file is truncated")

        for (cut, fragment) in [
            (0, "has 0 bytes; a safetensors file starts with an 8-byte header length"),
            (5, "has 5 bytes"),
            (40, "JSON header but only 32 bytes follow the 8-byte length; the file is truncated"),
            (headerEnd, "past the end of the 0-byte data buffer; the file is truncated or corrupt"),
            (good.count - 1, "the file is truncated or corrupt"),
        ] {
            try Foundation.Data(good[0..<cut]).write(to: URL(fileURLWithPath: newest))
            assertLoadFails(newest, fragment)
        }
        XCTAssertEqual(try CheckpointDirectory.load(dir.checkpoints()[1]), model(1), "the previous checkpoint still loads")

        // One changed byte anywhere in the data buffer fails the checksum.
        for position in [headerEnd, headerEnd + 17, good.count - 1] {
            try Foundation.Data(good).write(to: URL(fileURLWithPath: newest))
            try rewrite(newest) { $0[position] ^= 0x01 }
            assertLoadFails(newest, "fails its checksum: the file records crc32:")
        }
        // So does a changed metadata value or shape in the header (same length, still valid JSON).
        for (from, to) in [("seed 2.0", "seed 3.0"), (#""shape":[3,4]"#, #""shape":[4,3]"#)] {
            var bytes = good
            let at = try XCTUnwrap(Self.find(Array(from.utf8), in: bytes))
            bytes.replaceSubrange(at..<(at + from.utf8.count), with: Array(to.utf8))
            try Foundation.Data(bytes).write(to: URL(fileURLWithPath: newest))
            assertLoadFails(newest, "fails its checksum")
        }
        // A damaged checksum value, or none: a foreign safetensors file.
        var bytes = good
        let crc = try XCTUnwrap(Self.find(Array("crc32:".utf8), in: bytes))
        bytes.replaceSubrange(crc..<(crc + 14), with: Array("crc32:XYZW0000".utf8))
        try Foundation.Data(bytes).write(to: URL(fileURLWithPath: newest))
        assertLoadFails(newest, "has autorate.checksum \"crc32:XYZW0000\"; expected crc32: and 8 lowercase hex digits")
        let foreign = root + "/foreign.safetensors"
        try Foundation.Data(model(4).encoded()).write(to: URL(fileURLWithPath: foreign))
        assertLoadFails(
            foreign, "has no autorate.checksum metadata: it is a safetensors file but not a checkpoint written by autorate")
        assertLoadFails(root + "/missing.safetensors", "cannot be opened: No such file or directory")
        assertLoadFails(root, "is not a regular file")
    }

    func testWriteErrorsNameThePath() throws {
        _ = FileManager.default.createFile(atPath: root, contents: Foundation.Data([1]))
        let dir = CheckpointDirectory(path: root + "/sub", keep: 1)
        XCTAssertThrowsError(try dir.write(step: 1, model(1))) { error in
            let e = error as! DataError
            XCTAssertEqual(e.path, root + "/sub")
            XCTAssertTrue(
                e.problem.contains("cannot be created (for checkpoint directory \(root)/sub): Not a directory"), e.problem)
        }
        let onFile = CheckpointDirectory(path: root, keep: 1)
        XCTAssertThrowsError(try onFile.write(step: 1, model(1))) { error in
            XCTAssertEqual("\(error)", "\(root): exists but is not a directory; checkpoints need a directory")
        }
    }
}
