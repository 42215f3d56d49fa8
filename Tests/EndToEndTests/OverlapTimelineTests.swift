import Foundation
import XCTest

/// Gradient buckets reduced while backward goes on, the per-step time split in the metrics, and the
/// Chrome-trace timeline, on real mpirun runs of the built `autorate`.
final class OverlapTimelineTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func train(_ np: Int, _ name: String, _ extra: [String]) throws -> [[String: Any]] {
        let metrics = directory.appendingPathComponent("\(name).jsonl").path
        let result = try Launcher.mpirun(
            np, "autorate", ["train", "--steps", "20", "--log-every", "2", "--quiet", "--metrics", metrics] + extra)
        XCTAssertEqual(result.status, 0, result.output)
        return try Launcher.metrics(metrics).filter { $0["event"] == nil }
    }

    /// Overlap changes when the buckets are reduced, not what they sum to: the same trajectory as
    /// the blocking reduction after backward; the time split says which one ran.
    func testOverlapFollowsTheBlockingTrajectoryAndReportsHiddenTime() throws {
        for model in [
            ["--model", "mlp"], ["--model", "cnn", "--data", "synthetic-images", "--global-batch", "32"],
            [
                "--model", "resnet20", "--shortcut", "projection", "--head", "bn", "--data", "synthetic-images", "--global-batch",
                "16",
            ],
        ] {
            let on = try train(2, "on-\(model[1])", model + ["--overlap", "on", "--bucket-mb", "0.0625"])
            let off = try train(2, "off-\(model[1])", model + ["--overlap", "off", "--bucket-mb", "0.0625"])
            let lossOn = on.map { $0["loss"] as! Double }, lossOff = off.map { $0["loss"] as! Double }
            XCTAssertEqual(lossOn.count, 10)
            XCTAssertLessThan(
                DistributedTrainingTests.maxRelativeDifference(lossOn, lossOff), 1e-6, "\(model[1]): \(lossOn) vs \(lossOff)")
            for (records, overlapped) in [(on, true), (off, false)] {
                for record in records {
                    let split = try XCTUnwrap(record["time_ms"] as? [String: Any], "\(record)")
                    let ranks = try XCTUnwrap(split["ranks"] as? [[String: Double]], "each rank's own split")
                    XCTAssertEqual(ranks.count, 2)
                    let time = split.compactMapValues { $0 as? Double }
                    XCTAssertEqual(
                        ranks.map { $0["step"]! }.reduce(0, +) / 2, time["step"]!, accuracy: 1e-9 * time["step"]!,
                        "the mean over ranks")
                    let step = time["step"]!, compute = time["compute"]!, bn = time["bn_comm"]!
                    XCTAssertGreaterThan(compute, 0)
                    XCTAssertGreaterThan(bn, 0, "synchronized BN reduces statistics every step")
                    XCTAssertLessThan(bn, step)
                    if overlapped {
                        // in flight during backward: more than nothing, and within backward, which is
                        // inside the step less the wait after it (compute + BN reductions: backward's
                        // BN reductions overlap the buckets in flight, so hidden may exceed compute
                        // alone when a loaded machine stretches them)
                        let hidden = time["grad_comm_hidden"]!
                        XCTAssertGreaterThan(hidden, 0, "\(model[1]): buckets in flight during backward")
                        XCTAssertLessThanOrEqual(
                            hidden, compute + bn, "\(model[1]): hidden communication outlasts the step less its wait")
                    } else {
                        XCTAssertEqual(time["grad_comm_hidden"]!, 0)
                    }
                }
            }
        }
    }

    /// A trace Perfetto can open: one process per rank; per-layer forward and backward spans, the
    /// BN and gradient reductions with their bytes, data and update, for the window's steps only.
    func testTimelineHasEveryRankLayerAndCollectiveInTheWindow() throws {
        let trace = directory.appendingPathComponent("trace.json").path
        _ = try train(2, "timeline", ["--overlap", "on", "--bucket-mb", "1", "--timeline", trace, "--timeline-steps", "3-5"])
        let data = try Data(contentsOf: URL(fileURLWithPath: trace))
        let events = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        XCTAssertEqual(Set(events.compactMap { $0["pid"] as? Int }), [0, 1])
        for rank in 0..<2 {
            let mine = events.filter { $0["pid"] as? Int == rank && $0["ph"] as? String != "M" }
            let steps = Set(mine.compactMap { ($0["args"] as? [String: Any])?["step"] as? Int })
            XCTAssertEqual(steps, [3, 4, 5], "rank \(rank)")
            func spans(_ name: String, _ category: String) -> [[String: Any]] {
                mine.filter { $0["name"] as? String == name && $0["cat"] as? String == category }
            }
            // the default MLP: Linear 0, BN 1, Linear 3, BN 4, Linear 6 (state_dict indices)
            for layer in ["0 linear", "1 bn", "3 linear", "4 bn", "6 linear"] {
                XCTAssertEqual(spans(layer, "forward").count, 3, "rank \(rank): \(layer) forward")
                XCTAssertEqual(spans(layer, "backward").count, 3, "rank \(rank): \(layer) backward")
            }
            XCTAssertEqual(spans("data", "data").count, 3)
            XCTAssertEqual(spans("update", "update").count, 3)
            let bn = spans("allreduce BN statistics", "communication")
            XCTAssertEqual(bn.count, 3 * 2 * 2, "two BN layers, forward and backward, three steps")
            let begins = mine.filter { $0["ph"] as? String == "b" }, ends = mine.filter { $0["ph"] as? String == "e" }
            XCTAssertEqual(begins.count, ends.count)
            XCTAssertFalse(begins.isEmpty)
            let bytes = begins.map { ($0["args"] as! [String: Any])["bytes"] as! Int }
            XCTAssertEqual(
                bytes.reduce(0, +), 3 * (32 * 256 + 256 * 256 + 256 * 10 + 10 + 4 * 256) * 4,
                "every gradient once per step (synthetic data: 32 features)")
            for span in mine where span["ph"] as? String == "X" {
                XCTAssertGreaterThanOrEqual(span["dur"] as! Double, 0)
                XCTAssertGreaterThanOrEqual(span["ts"] as! Double, 0)
            }
        }
    }
}
