import Foundation
import XCTest

/// Checkpoints under mpirun: a rank killed mid-run, `--resume auto`, and the final parameters
/// bitwise equal to a run that was never interrupted; damaged checkpoints; incompatible resumes.
final class CheckpointTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    static let run = ["train", "--steps", "40", "--quiet", "--momentum", "0.5", "--log-every", "10", "--checkpoint-every", "5"]

    func dir(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// The tensors of a safetensors file (header parsed with Foundation, data compared as bytes).
    static func tensors(_ path: String) throws -> [String: Data] {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = Int(bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<8 + n)) as? [String: Any])
        var result: [String: Data] = [:]
        for (name, value) in header where name != "__metadata__" {
            let offsets = (value as! [String: Any])["data_offsets"] as! [Int]
            result[name] = bytes.subdata(in: 8 + n + offsets[0]..<8 + n + offsets[1])
        }
        return result
    }

    static func newest(_ dir: String) throws -> String {
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".safetensors") }.sorted()
        return "\(dir)/\(try XCTUnwrap(names.last))"
    }

    func testKilledRankThenResumeEndsBitwiseIdentical() throws {
        let clean = try Launcher.mpirun(2, "autorate", Self.run + ["--checkpoint-dir", dir("clean")])
        XCTAssertEqual(clean.status, 0, clean.output)

        // rank 1 SIGKILLs itself in step 23: mpirun ends the job within seconds
        let killed = try Launcher.mpirun(
            2, "autorate", Self.run + ["--checkpoint-dir", dir("killed"), "--debug-fault", "kill:23:1"], timeout: 60)
        XCTAssertNotEqual(killed.status, 0, killed.output)
        XCTAssertLessThan(killed.seconds, 20, "mpirun took \(killed.seconds) s after the kill")
        XCTAssertTrue(try Self.newest(dir("killed")).hasSuffix("checkpoint-000000020.safetensors"))

        // a crash during the next write: a partial temporary file and a truncated newest checkpoint
        let partial = dir("killed") + "/checkpoint-000000025.safetensors.tmp"
        try Data(repeating: 7, count: 100).write(to: URL(fileURLWithPath: partial))
        let newest = try Self.newest(dir("killed"))
        let truncated = try Data(contentsOf: URL(fileURLWithPath: newest)).prefix(1000)
        try truncated.write(to: URL(fileURLWithPath: newest))

        let resumed = try Launcher.mpirun(2, "autorate", Self.run + ["--checkpoint-dir", dir("killed"), "--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(
            resumed.output.contains("cannot resume from \(newest)"), "the damaged checkpoint is reported:\n\(resumed.output)")
        XCTAssertTrue(resumed.output.contains("at step 15 of 40"), resumed.output)

        let a = try Self.tensors(Self.newest(dir("clean"))), b = try Self.tensors(Self.newest(dir("killed")))
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        XCTAssertTrue(a.keys.contains("optimizer.momentum") && a.keys.contains("0.weight") && a.keys.contains("1.running_var"))
        for (name, bytes) in a { XCTAssertEqual(bytes, b[name], "\(name) differs after kill and resume") }
    }

    /// The paper's plain steps, sharded over the 2 ranks between log steps, with the row norms
    /// the update hands to the next forward: killed in step 23, resumed from step 20, the final
    /// checkpoint has the bytes of a run that was never interrupted.
    func testPlainShardedStepsResumeBitwiseIdentical() throws {
        let plain = ["train", "--steps", "30", "--quiet", "--log-every", "10", "--checkpoint-every", "5"]
        let clean = try Launcher.mpirun(2, "autorate", plain + ["--checkpoint-dir", dir("plain-clean")])
        XCTAssertEqual(clean.status, 0, clean.output)
        let killed = try Launcher.mpirun(
            2, "autorate", plain + ["--checkpoint-dir", dir("plain"), "--debug-fault", "kill:23:1"], timeout: 60)
        XCTAssertNotEqual(killed.status, 0, killed.output)
        let resumed = try Launcher.mpirun(2, "autorate", plain + ["--checkpoint-dir", dir("plain"), "--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertTrue(resumed.output.contains("at step 20 of 30"), resumed.output)
        let a = try Self.tensors(Self.newest(dir("plain-clean"))), b = try Self.tensors(Self.newest(dir("plain")))
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        for (name, bytes) in a { XCTAssertEqual(bytes, b[name], "\(name) differs after kill and resume") }
    }

    func testIncompatibleResumeIsRefusedAndExportWritesWeights() throws {
        let first = try Launcher.mpirun(2, "autorate", Self.run + ["--checkpoint-dir", dir("c"), "--steps", "10"])
        XCTAssertEqual(first.status, 0, first.output)
        let other = try Launcher.mpirun(
            2, "autorate", Self.run + ["--checkpoint-dir", dir("c"), "--resume", "auto", "--lr-si", "2", "--head", "bn"])
        XCTAssertEqual(other.status, 1, other.output)
        XCTAssertTrue(other.output.contains("--head is bn here but linear in the checkpoint"), other.output)
        XCTAssertTrue(other.output.contains("--lr-si is 2.0 here but 1.0 in the checkpoint"), other.output)

        let foreign = dir("foreign.safetensors")
        try Data("not a checkpoint".utf8).write(to: URL(fileURLWithPath: foreign))
        let refused = try Launcher.mpirun(2, "autorate", Self.run + ["--resume", foreign])
        XCTAssertEqual(refused.status, 1, refused.output)
        XCTAssertTrue(refused.output.contains("--resume \(foreign)"), refused.output)

        let out = dir("model.safetensors")
        let export = try Launcher.run([
            Launcher.executable("autorate"), "export", "--checkpoint", try Self.newest(dir("c")), "--out", out,
        ])
        XCTAssertEqual(export.status, 0, export.output)
        let weights = try Self.tensors(out)
        XCTAssertNotNil(weights["0.weight"])
        XCTAssertNotNil(weights["1.num_batches_tracked"])
        XCTAssertNil(weights["optimizer.momentum"], "export writes the weights alone")
    }
}
