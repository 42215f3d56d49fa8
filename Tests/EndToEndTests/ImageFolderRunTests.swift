import Foundation
import XCTest

/// `--data folder:DIR` under mpirun, the way a user brings their own images: two ranks decode the
/// folder into the cache, the next run reads it, the class names reach the metrics, checkpoint,
/// eval and export; a corrupt image stops every rank, naming it.
final class ImageFolderRunTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// An 8-bit grayscale PNG whose deflate stream uses stored blocks (no compressor needed).
    static func png(_ pixels: [UInt8], width: Int, height: Int) -> Data {
        func be32(_ v: UInt32) -> [UInt8] { [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: v >> $0) } }
        func crc(_ bytes: [UInt8]) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for b in bytes {
                c ^= UInt32(b)
                for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 }
            }
            return ~c
        }
        func chunk(_ kind: String, _ data: [UInt8]) -> [UInt8] {
            let body = Array(kind.utf8) + data
            return be32(UInt32(data.count)) + body + be32(crc(body))
        }
        var raw: [UInt8] = []
        for y in 0..<height { raw += [0] + pixels[(y * width)..<((y + 1) * width)] }
        var a: UInt32 = 1, b: UInt32 = 0
        for v in raw { a = (a + UInt32(v)) % 65521; b = (b + a) % 65521 }
        let n = UInt16(raw.count)  // one stored block: images here are small
        let zlib = [0x78, 0x01, 1, UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8(~n >> 8)] + raw + be32(b << 16 | a)
        let header = be32(UInt32(width)) + be32(UInt32(height)) + [8, 0, 0, 0, 0]
        return Data(
            [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", header) + chunk("IDAT", zlib) + chunk("IEND", []))
    }

    /// Three classes of 12x12 images a conv net tells apart: a bright row band, a column band, or a dark image.
    func writeFolder(_ root: String, perClass: (train: Int, test: Int)) throws {
        var rng = SystemRandomNumberGenerator()
        for (split, count) in [("train", perClass.train), ("test", perClass.test)] {
            for (label, name) in ["columns", "dark", "rows"].enumerated() {
                let dir = "\(root)/\(split)/\(name)"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                for i in 0..<count {
                    let offset = Int.random(in: 2..<8, using: &rng)
                    let pixels = (0..<144).map { p -> UInt8 in
                        let (y, x) = (p / 12, p % 12)
                        let band =
                            label == 0 ? (x >= offset && x < offset + 3) : label == 2 ? (y >= offset && y < offset + 3) : false
                        return UInt8(band ? 200 : Int.random(in: 0..<60, using: &rng))
                    }
                    try Self.png(pixels, width: 12, height: 12).write(to: URL(fileURLWithPath: "\(dir)/\(i).png"))
                }
            }
        }
        try Data("not an image".utf8).write(to: URL(fileURLWithPath: "\(root)/train/rows/README.txt"))
    }

    func testTwoRanksTrainOnAFolderEvalAndExport() throws {
        let data = path("images")
        try writeFolder(data, perClass: (train: 40, test: 10))
        let args = [
            "train", "--model", "cnn", "--data", "folder:\(data)", "--steps", "30", "--global-batch", "24", "--log-every", "15",
            "--eval-every", "15", "--metrics", path("m.jsonl"), "--checkpoint-dir", path("ck"),
        ]
        let first = try Launcher.mpirun(2, "autorate", args)
        XCTAssertEqual(first.status, 0, first.output)
        XCTAssertTrue(first.output.contains("decoded 150 images (12x12x1) on 2 ranks"), first.output)
        XCTAssertTrue(first.output.contains("skipped 1 file"), first.output)
        let second = try Launcher.mpirun(2, "autorate", args + ["--metrics", path("m2.jsonl")])
        XCTAssertEqual(second.status, 0, second.output)
        XCTAssertTrue(second.output.contains("150 images read from the cache"), second.output)
        let start = try XCTUnwrap(Launcher.metrics(path("m.jsonl")).first)
        XCTAssertEqual(start["classes"] as? [String], ["columns", "dark", "rows"])
        let accuracy = try XCTUnwrap(first.output.firstMatch(of: /test accuracy ([0-9.]+)%/).map { String($0.1) })
        XCTAssertGreaterThan(Double(accuracy)!, 60, first.output)

        let checkpoint = path("ck") + "/checkpoint-000000030.safetensors"
        let eval = try Launcher.mpirun(2, "autorate", ["eval", "--checkpoint", checkpoint, "--data", "folder:\(data)"])
        XCTAssertEqual(eval.status, 0, eval.output)
        XCTAssertTrue(eval.output.contains("top-1 \(accuracy)%"), "train printed \(accuracy)%:\n\(eval.output)")
        XCTAssertTrue(eval.output.contains("  columns ") && eval.output.contains("  rows "), eval.output)
        let export = try Launcher.run([
            Launcher.executable("autorate"), "export", "--checkpoint", checkpoint, "--out", path("w.safetensors"),
        ])
        XCTAssertEqual(export.status, 0, export.output)
        XCTAssertEqual(
            try EvaluationTests.metadata(path("w.safetensors"))["autorate.class_names"], "[\"columns\",\"dark\",\"rows\"]")
    }

    func testCorruptImageStopsEveryRankNamingIt() throws {
        let data = path("images")
        try writeFolder(data, perClass: (train: 6, test: 2))
        let bad = "\(data)/train/dark/3.png"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: bad))
        try bytes.prefix(bytes.count - 30).write(to: URL(fileURLWithPath: bad))
        let run = try Launcher.mpirun(
            2, "autorate", ["train", "--model", "cnn", "--data", "folder:\(data)", "--steps", "2"], timeout: 60)
        XCTAssertNotEqual(run.status, 0, run.output)
        XCTAssertLessThan(run.seconds, 30, run.output)
        XCTAssertTrue(run.output.contains(bad), run.output)
    }
}
