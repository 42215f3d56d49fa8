import Foundation
import XCTest

/// `--deterministic`: the same bits on 1, 2, 4 and 8 ranks (8 oversubscribed), and across a resume
/// on a different number of ranks; without the flag the bits differ, so the comparison can fail.
final class DeterministicTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// A run's logged records (loss, accuracy, group monitors) and its final record.
    func train(_ np: Int, _ name: String, _ args: [String]) throws -> (steps: [[String: Any]], final: [String: Any]) {
        let metrics = path("\(name).jsonl")
        let result = try Launcher.mpirun(np, "autorate", ["train", "--quiet", "--metrics", metrics] + args, timeout: 300)
        XCTAssertEqual(result.status, 0, result.output)
        let records = try Launcher.metrics(metrics)
        return (records.filter { $0["event"] == nil }, try XCTUnwrap(records.last { $0["event"] as? String == "final" }))
    }

    /// What must not depend on the rank count: every logged number but the times, and the final
    /// parameters' fingerprint, test loss and accuracy.
    static func trajectory(_ run: (steps: [[String: Any]], final: [String: Any])) -> String {
        let steps = run.steps.map { r -> String in
            let groups = (r["groups"] as? [[String: Any]] ?? []).map { g in
                ["norm2", "grad_norm2", "eff_lr", "cos", "identity_residual"].map { "\(g[$0] ?? "-")" }.joined(separator: ",")
            }
            return ["step", "loss", "accuracy"].map { "\(r[$0] ?? "-")" }.joined(separator: " ") + " "
                + groups.joined(separator: ";")
        }
        let final = ["parameters_fnv1a", "test_loss", "test_accuracy", "train_loss"].map { "\(run.final[$0] ?? "-")" }
        return (steps + final).joined(separator: "\n")
    }

    /// 601 samples: uneven chunks and shares, and a per-rank batch (the network's buffer size)
    /// that differs between 1, 2 and 4 ranks, which evaluation must not depend on.
    static let mlp = ["--steps", "30", "--log-every", "5", "--global-batch", "601", "--bn-recalibrate", "2"]
    static let cnn = [
        "--model", "cnn", "--data", "synthetic-images", "--augment", "crop-flip", "--steps", "10", "--log-every", "5",
        "--global-batch", "36", "--bn-recalibrate", "2",
    ]
    /// Residual blocks with projection shortcuts (strided 1x1 convs and their BNs), a BN head, and
    /// epsilon mode zero, with weight decay.
    static let resnet = [
        "--model", "resnet20", "--shortcut", "projection", "--head", "bn", "--bn-eps-mode", "zero", "--data", "synthetic-images",
        "--steps", "3", "--log-every", "1", "--global-batch", "16", "--bn-recalibrate", "1", "--weight-decay-si", "1e-4",
    ]

    /// Global batches of 601 and 36 do not divide into 8 chunks (nor over 8 ranks) evenly.
    func testSameBitsOnOneTwoFourAndEightRanks() throws {
        for (name, args) in [("mlp", Self.mlp), ("cnn", Self.cnn), ("resnet", Self.resnet)] {
            let runs = try [1, 2, 4, 8].map { np in try train(np, "\(name)-\(np)", args + ["--deterministic"]) }
            let reference = Self.trajectory(runs[0])
            XCTAssertTrue(reference.contains("0x"), reference)
            for (np, run) in zip([2, 4, 8], runs.dropFirst()) {
                XCTAssertEqual(Self.trajectory(run), reference, "\(name): \(np) ranks differ from 1")
            }
            // with 2 BLAS threads per rank too (the bits may differ from 1 thread: OpenBLAS's split of
            // a conv GEMM between threads changes them), 1 and 2 ranks agree
            guard name == "cnn" else { continue }
            let threads = try [1, 2].map { np in
                try train(np, "\(name)-threads-\(np)", args + ["--deterministic", "--threads", "2"])
            }
            XCTAssertEqual(Self.trajectory(threads[1]), Self.trajectory(threads[0]), "\(name), 2 threads: 2 ranks differ from 1")
        }
    }

    /// The proof that the comparison above can fail: the default mode's sums depend on the split.
    /// Deterministic mode trains the same model, up to the rounding of its sums.
    func testDefaultModeDiffersAcrossRankCounts() throws {
        let one = try train(1, "plain-1", Self.mlp), two = try train(2, "plain-2", Self.mlp)
        XCTAssertNotEqual(one.final["parameters_fnv1a"] as? String, two.final["parameters_fnv1a"] as? String)
        XCTAssertNotEqual(Self.trajectory(one), Self.trajectory(two))
        let deterministic = try train(2, "det-2", Self.mlp + ["--deterministic"])
        let losses = { (run: (steps: [[String: Any]], final: [String: Any])) in run.steps.map { $0["loss"] as! Double } }
        XCTAssertEqual(losses(deterministic).count, 6)
        XCTAssertLessThan(DistributedTrainingTests.maxRelativeDifference(losses(deterministic), losses(two)), 1e-3)
    }

    /// 4 ranks killed after the checkpoint of step 10, resumed on 2 ranks and killed after step 20,
    /// finished on 1 rank: the same bits as an uninterrupted 1-rank run (momentum state included).
    func testResumeOnFewerRanksContinuesTheSameBits() throws {
        let args = Self.mlp + ["--deterministic", "--momentum", "0.5", "--checkpoint-every", "10"]
        let clean = try train(1, "clean", args + ["--checkpoint-dir", path("clean")])
        let dir = ["--checkpoint-dir", path("moved")]
        let four = try Launcher.mpirun(
            4, "autorate", ["train", "--quiet"] + args + dir + ["--debug-fault", "kill:13:2"], timeout: 120)
        XCTAssertNotEqual(four.status, 0, four.output)
        let two = try Launcher.mpirun(
            2, "autorate", ["train", "--quiet"] + args + dir + ["--resume", "auto", "--debug-fault", "kill:24:1"], timeout: 120)
        XCTAssertNotEqual(two.status, 0, two.output)
        XCTAssertTrue(two.output.contains("at step 10 of 30"), two.output)
        let one = try Launcher.mpirun(
            1, "autorate", ["train", "--quiet", "--metrics", path("moved.jsonl")] + args + dir + ["--resume", "auto"],
            timeout: 120)
        XCTAssertEqual(one.status, 0, one.output)
        XCTAssertTrue(one.output.contains("at step 20 of 30"), one.output)
        let final = try XCTUnwrap(Launcher.metrics(path("moved.jsonl")).last)
        XCTAssertEqual(final["parameters_fnv1a"] as? String, clean.final["parameters_fnv1a"] as? String)
        XCTAssertEqual(final["test_loss"] as? Double, clean.final["test_loss"] as? Double)
        let a = try CheckpointTests.tensors(CheckpointTests.newest(path("clean")))
        let b = try CheckpointTests.tensors(CheckpointTests.newest(path("moved")))
        XCTAssertTrue(a.keys.contains("optimizer.momentum"))
        for (name, bytes) in a { XCTAssertEqual(bytes, b[name], "\(name) differs after 4 -> 2 -> 1 ranks") }
    }

    /// A rank count that does not divide the chunks is refused before any collective, naming both.
    func testRankCountMustDivideTheChunks() throws {
        let result = try Launcher.mpirun(2, "autorate", ["train", "--quiet", "--deterministic", "--chunks", "1", "--steps", "2"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.output.contains("--chunks 1 cannot be split over 2 ranks"), result.output)
    }
}
