import Foundation
import XCTest

/// Ranks that disagree, produce NaN or stall, under mpirun: the documented behaviour and exit status,
/// within a bounded time.
final class ReliabilityTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    /// Two ranks started with different --seed (mpirun's MPMD syntax): every rank stops at start-up,
    /// naming the field and the ranks.
    func testRanksWithDifferentConfigurationsStop() throws {
        let result = try Launcher.mpirunPerRank([
            ["train", "--steps", "5", "--seed", "1"], ["train", "--steps", "5", "--seed", "2"],
        ])
        XCTAssertNotEqual(result.status, 0, result.output)
        XCTAssertLessThan(result.seconds, 30)
        XCTAssertTrue(result.output.contains("--seed differs between rank 0 (1) and rank(s) 1"), result.output)
    }

    /// A data directory that exists for rank 0 only (MPMD: rank 1 is given a missing one): rank 1
    /// reports its file, every rank stops with status 1, none is left in a collective.
    func testDataMissingOnOneRankOnlyStopsEveryRank() throws {
        let result = try Launcher.mpirunPerRank([
            ["train", "--steps", "5"], ["train", "--steps", "5", "--data", "mnist:/nonexistent/mnist"],
        ])
        XCTAssertEqual(result.status, 1, result.output)
        XCTAssertLessThan(result.seconds, 30)
        XCTAssertTrue(result.output.contains("error on rank 1 of 2: /nonexistent/mnist"), result.output)
    }

    /// A NaN injected into one rank's input at step 4 spreads to the summed gradient: every rank skips
    /// that step (and restores its BN statistics) and training goes on; with --max-bad-steps 1 the run
    /// stops with a clear message instead.
    func testNonFiniteGradientIsSkippedTogetherOrStops() throws {
        let metrics = directory.appendingPathComponent("nan.jsonl").path
        let skipped = try Launcher.mpirun(
            2, "autorate",
            ["train", "--steps", "12", "--quiet", "--log-every", "1", "--metrics", metrics, "--debug-fault", "nan-input:4:1"])
        XCTAssertEqual(skipped.status, 0, skipped.output)
        XCTAssertTrue(
            skipped.output.contains("step 4: the summed gradient, or the update it gives, is not finite"), skipped.output)
        let records = try Launcher.metrics(metrics)
        XCTAssertEqual(records.filter { $0["event"] as? String == "skipped_step" }.count, 1)
        XCTAssertEqual(records.filter { $0["event"] == nil }.count, 11, "the 11 good steps are logged")
        XCTAssertTrue(records.allSatisfy { ($0["loss"] as? Double)?.isFinite ?? true }, "no NaN reaches the logged loss")
        let final = try XCTUnwrap(records.last?["test_loss"] as? Double)
        XCTAssertTrue(final.isFinite, "the model is intact")

        let stopped = try Launcher.mpirun(
            2, "autorate", ["train", "--steps", "12", "--quiet", "--debug-fault", "nan-input:4:0", "--max-bad-steps", "1"])
        XCTAssertEqual(stopped.status, 1, stopped.output)
        XCTAssertTrue(
            stopped.output.contains("(scale-invariant, --lr-si 1.0) in 1 consecutive steps became NaN or infinite at step 4"),
            stopped.output)
    }

    /// A step whose update is sharded over ranks (every step is, at 2 and 4 ranks), with a NaN put
    /// into one rank's gradient after backward: after the reduction a single rank's segment holds
    /// it, and the ranks must agree to skip. Deterministic runs on 2 and 4 ranks, through node
    /// shared memory and through MPI, end with the same bits; a rank that kept its segment's
    /// update would make the replicas differ through MPI (the run's end-of-training replica check
    /// fails), or the ranks read different copies of the parameters in node shared memory (a
    /// precondition stops the run), and the fingerprints differ.
    func testNonFiniteShardedStepIsSkippedByEveryRank() throws {
        var fingerprints: [String] = []
        for np in [2, 4] {
            for transport in ["shared-memory", "mpi"] {
                let metrics = directory.appendingPathComponent("nan-sharded-\(np)-\(transport).jsonl").path
                let run = try Launcher.mpirun(
                    np, "autorate",
                    [
                        "train", "--steps", "12", "--quiet", "--log-every", "6", "--deterministic", "--metrics", metrics,
                        "--debug-fault", "nan-gradient:4:\(np - 1)", "--intra-node", transport,
                    ])
                XCTAssertEqual(run.status, 0, run.output)
                XCTAssertTrue(
                    run.output.contains("step 4: the summed gradient, or the update it gives, is not finite"), run.output)
                XCTAssertTrue(run.output.contains("update sharded over the ranks"), run.output)
                let records = try Launcher.metrics(metrics)
                XCTAssertEqual(records.filter { $0["event"] as? String == "skipped_step" }.count, 1)
                let final = try XCTUnwrap(records.last)
                XCTAssertTrue((final["test_loss"] as? Double)?.isFinite ?? false, "the model is intact")
                fingerprints.append(try XCTUnwrap(final["parameters_fnv1a"] as? String))
            }
        }
        XCTAssertEqual(Set(fingerprints).count, 1, "\(fingerprints)")
    }

    /// One rank sleeps at step 3: both ranks' watchdogs end the job after --stall-timeout, each naming
    /// itself, the step and what it waits in; mpirun returns within seconds of the timeout.
    func testStalledRankEndsTheJob() throws {
        let result = try Launcher.mpirun(
            2, "autorate", ["train", "--steps", "20", "--quiet", "--debug-fault", "stall:3:1", "--stall-timeout", "3"],
            timeout: 60)
        XCTAssertNotEqual(result.status, 0, result.output)
        XCTAssertLessThan(result.seconds, 20, "mpirun took \(result.seconds) s")
        XCTAssertTrue(
            result.output.contains("rank 1: no progress for 3 s (--stall-timeout 3) at step 3, waiting in a test-only stall")
                || result.output.contains(
                    "rank 0: no progress for 3 s (--stall-timeout 3) at step 3, waiting in the forward pass"),
            result.output)
    }
}
