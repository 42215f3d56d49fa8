import Foundation
import XCTest

/// `autorate bench` under mpirun: the figures a scaling study reads, in its JSON and CSV output.
final class BenchTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func testWeakScalingOnTwoRanksReportsBaselineSplitAndBuckets() throws {
        let csv = directory.appendingPathComponent("bench.csv").path, json = directory.appendingPathComponent("bench.jsonl").path
        let common = [
            "bench", "--model", "mlp", "--widths", "32,256,256,10", "--scaling", "weak", "--batch-per-rank", "16",
            "--steps", "5", "--warmup", "1", "--bucket-mb", "0.0625", "--csv", csv, "--json", json,
        ]
        for np in [1, 2] {
            let result = try Launcher.mpirun(
                np, "autorate",
                common
                    + (np == 2 ? ["--compare-local-bn", "--compare-deterministic", "--balance", "on", "--compare-balance"] : []))
            XCTAssertEqual(result.status, 0, result.output)
        }
        let lines = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 3, "one header, then a row per run")
        let header = lines[0].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        func field(_ row: Int, _ name: String) -> String {
            lines[row].split(separator: ",", omittingEmptySubsequences: false).map(String.init)[header.firstIndex(of: name)!]
        }
        XCTAssertEqual(field(1, "ranks"), "1")
        XCTAssertEqual(field(1, "scaling_efficiency"), "", "one rank is its own baseline")
        XCTAssertEqual(field(2, "ranks"), "2")
        XCTAssertEqual(field(2, "global_batch"), "32", "weak scaling: 16 per rank")
        let efficiency = try XCTUnwrap(Double(field(2, "scaling_efficiency")))
        XCTAssertGreaterThan(efficiency, 0)
        XCTAssertLessThan(efficiency, 4)

        let records = try Launcher.metrics(json)
        XCTAssertEqual(records.count, 2)
        let two = records[1]
        XCTAssertEqual(two["scaling"] as? String, "weak")
        let buckets = try XCTUnwrap(two["bucket_allreduce"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(two["buckets"] as? Int ?? 0, 5, "64 KiB buckets over 77,322 floats (309 KB)")
        XCTAssertFalse(buckets.isEmpty)
        XCTAssertTrue(buckets.allSatisfy { ($0["bus_gb_per_s"] as? Double ?? 0) > 0 })
        let split = try XCTUnwrap(two["time_ms"] as? [String: Double])
        XCTAssertGreaterThan(split["compute"]!, 0)
        XCTAssertGreaterThan(split["bn_comm"]!, 0, "synchronized BN reduces statistics every step")
        XCTAssertEqual(split["grad_comm_hidden"]!, 0, "--overlap auto is off on one node")
        XCTAssertEqual(two["overlap"] as? Bool, false)
        XCTAssertNotNil(two["local_bn_step_ms_median"] as? Double)
        XCTAssertGreaterThan(two["deterministic_step_ms_median"] as? Double ?? 0, 0, "the interleaved --deterministic twin")
        XCTAssertNil(records[0]["deterministic_step_ms_median"] as? Double, "no twin asked for at np = 1 (null)")
        XCTAssertGreaterThan(two["baseline_samples_per_s"] as? Double ?? 0, 0)
        XCTAssertEqual(two["balance"] as? String, "on")
        XCTAssertGreaterThan(two["balance_twin_step_ms_median"] as? Double ?? 0, 0, "the interleaved --balance off twin")
        XCTAssertEqual(records[0]["balance"] as? String, "off")
        XCTAssertEqual(
            records.map { $0["build"] as? String }, records.map { _ in "portable" }, "the tests' build targets any x86-64")
    }
}
