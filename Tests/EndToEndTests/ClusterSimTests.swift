import Foundation
import XCTest

/// launch/cluster-sim: a real multi-host run on this machine. Two simulated hosts (network namespaces
/// joined by veth links to a bridge) each run one rank, and the ranks talk over TCP through the links.
final class ClusterSimTests: XCTestCase {
    /// launch/cluster-sim, found from this file's place in the repository (Tests/EndToEndTests/).
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("launch/cluster-sim").path

    /// 2 ranks on 2 simulated hosts follow the loss trajectory of 2 ranks on one host (shared memory),
    /// to 1e-4 relative as the other np tests: the transport must not change the arithmetic. The script
    /// exits 77 when this machine cannot host the simulation (not root, no namespaces): then skip.
    func testTwoHostsOverTCPFollowTwoRanksOnOneHost() throws {
        let directory = try Launcher.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let train = ["train", "--steps", "20", "--log-every", "1", "--quiet", "--seed", "1"]
        let clusterMetrics = directory.appendingPathComponent("cluster.jsonl").path
        let cluster = try Launcher.run(
            [Self.script, "--hosts", "2", "--slots", "1", "--rate", "1gbit", "--command", Launcher.executable("autorate")]
                + train + ["--metrics", clusterMetrics], timeout: 50)
        if cluster.status == 77 { throw XCTSkip("launch/cluster-sim cannot run here: \(cluster.output)") }
        XCTAssertEqual(cluster.status, 0, cluster.output)
        XCTAssertTrue(cluster.output.contains("2 host(s) x 1 slot(s)"), cluster.output)

        // The gradients really crossed the links: each host sent megabytes out of its veth
        // (the script reports "sent over the simulated links: simhost0 7.1 MB, simhost1 6.7 MB").
        for host in ["simhost0", "simhost1"] {
            let sent = try XCTUnwrap(cluster.output.firstMatch(of: try Regex("\(host) ([0-9.]+) MB")), cluster.output)
            XCTAssertGreaterThan(Double(sent.output[1].substring!)!, 1, "\(host) sent too little over its link")
        }

        let oneHostMetrics = directory.appendingPathComponent("one-host.jsonl").path
        let oneHost = try Launcher.mpirun(2, "autorate", train + ["--metrics", oneHostMetrics])
        XCTAssertEqual(oneHost.status, 0, oneHost.output)

        let across = try Launcher.losses(clusterMetrics), local = try Launcher.losses(oneHostMetrics)
        XCTAssertEqual(across.count, 20, "one metrics record per step")
        XCTAssertEqual(local.count, 20, "one metrics record per step")
        let difference = DistributedTrainingTests.maxRelativeDifference(across, local)
        XCTAssertLessThan(difference, 1e-4, "2 hosts drifted from 2 ranks on one host by \(difference)")
        XCTAssertLessThan(across.last!, across.first!, "the loss went down")
    }
}
