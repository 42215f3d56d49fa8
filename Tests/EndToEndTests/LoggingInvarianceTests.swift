import Foundation
import XCTest

/// Logging never changes training: the final parameters and BN buffers (their fingerprint in the
/// metrics file's final record) are the same bits whether every step is logged, with a timeline
/// recording, or only every 100th, on 1, 2 and 4 ranks, with and without `--deterministic`. The
/// metrics file's first record names the run's synchronization plan.
final class LoggingInvarianceTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    /// The final record's parameter fingerprint and test loss of one run.
    func finalRecord(_ np: Int, _ name: String, _ args: [String]) throws -> String {
        let metrics = directory.appendingPathComponent("\(name).jsonl").path
        // --bn-recalibrate 0: the BN buffers are the running averages the training steps left
        let common = [
            "train", "--quiet", "--steps", "40", "--global-batch", "128", "--bn-recalibrate", "0", "--metrics", metrics,
        ]
        let result = try Launcher.mpirun(np, "autorate", common + args, timeout: 300)
        XCTAssertEqual(result.status, 0, result.output)
        let records = try Launcher.metrics(metrics)
        // the first record holds the run's plan, as the start-up line printed it
        XCTAssertEqual(records.first?["event"] as? String, "start")
        let plan = try XCTUnwrap(records.first?["plan"] as? [String: Any])
        XCTAssertEqual(plan["ranks"] as? Int, np)
        let expected = np == 1 ? "none" : args.contains("--momentum") ? "allreduce" : "node-shared-memory"
        XCTAssertEqual(plan["gradient_sum"] as? String, expected, "\(name)")
        let final = try XCTUnwrap(records.last { $0["event"] as? String == "final" })
        return "\(final["parameters_fnv1a"] ?? "-") \(final["test_loss"] ?? "-")"
    }

    func assertLoggingInvariant(_ np: Int, _ name: String, _ args: [String]) throws {
        let trace = directory.appendingPathComponent("\(name).trace.json").path
        let everyStep = try finalRecord(
            np, "\(name)-every", args + ["--log-every", "1", "--timeline", trace, "--timeline-steps", "5-15"])
        let rarely = try finalRecord(np, "\(name)-rarely", args + ["--log-every", "100"])
        XCTAssertTrue(everyStep.hasPrefix("0x"), everyStep)
        XCTAssertEqual(everyStep, rarely, "\(name): logging every step changed the final parameters or BN buffers")
    }

    func testLoggingDoesNotChangeTheParameters() throws {
        for np in [1, 2, 4] {
            try assertLoggingInvariant(np, "mlp-\(np)", [])
            try assertLoggingInvariant(np, "mlp-deterministic-\(np)", ["--deterministic"])
        }
    }

    /// The other update paths: momentum (in place, not sharded) and a conv net with a BN head.
    func testLoggingDoesNotChangeOtherUpdatePaths() throws {
        try assertLoggingInvariant(2, "momentum", ["--momentum", "0.9"])
        try assertLoggingInvariant(
            2, "cnn", ["--model", "cnn", "--data", "synthetic-images", "--head", "bn"])
    }
}
