import Foundation
import XCTest

/// The sharded update's ways of moving gradients between ranks of one node: through node shared
/// memory (the default), there with each weight row's gradient computed over every rank's samples
/// (`--weight-gradients node`, the default) or each rank's whole gradient summed (`rank`), and
/// through MPI messages (`--intra-node mpi`). All add the ranks' gradients in the ordered sum's
/// tree, so a run ends with the same bits each way.
final class NodeSharedMemoryTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    /// 2 and 4 ranks, a BN head (its weight's rows carry the scaled-epsilon radial term, so the
    /// segments are cut at units of whole rows and the row norms travel), and 2 with a linear head,
    /// every step sharded: the final parameters and BN buffers have the same FNV-1a each way, only
    /// the shared-memory runs say they summed there, and only the default one that it computed
    /// weight gradients over the node's batch. A transport that summed a wrong part, missed a rank
    /// or left new values out of the node's copy of the parameters would change
    /// the bits, as would weight rows computed from another rank's activations, stale ones, or
    /// added in another order. No shared-memory object outlives the runs: rank 0 removes its name
    /// once every rank has mapped it.
    func testSharedMemoryAndMPIGiveTheSameBits() throws {
        try sameBits(for: [(2, "bn"), (4, "bn"), (2, "linear")])
    }

    /// OpenBLAS's Haswell kernels compute some rows of `dyᵀ x` apart to other bits than inside the
    /// whole product (measured for this network's shapes on an AMD EPYC; a kernel's arithmetic does
    /// not depend on the CPU that runs it): the
    /// same bits each way only because backward cuts its weight GEMMs where the segments are cut
    /// (without the cuts this test fails).
    func testKernelsThatComputeRowsApartToOtherBits() throws {
        let flags =
            try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8).split(separator: "\n").first { $0.hasPrefix("flags") }
            ?? ""
        let words = Set(flags.split(separator: " "))
        try XCTSkipUnless(words.contains("avx2") && words.contains("fma"), "OpenBLAS's Haswell kernels need AVX2 and FMA")
        try sameBits(for: [(2, "bn")], kernels: "Haswell")
    }

    private func sameBits(for shapes: [(Int, String)], kernels: String? = nil) throws {
        let before = try Self.sharedObjects()
        let environment = kernels.map { ["OPENBLAS_CORETYPE": $0] } ?? [:]
        for (np, head) in shapes {
            var fingerprints: [String: String] = [:]
            let ways = [
                "node": ["--intra-node", "shared-memory"],
                "rank": ["--intra-node", "shared-memory", "--weight-gradients", "rank"],
                "mpi": ["--intra-node", "mpi"],
            ]
            for (way, flags) in ways {
                let metrics = directory.appendingPathComponent("\(way)-\(np)-\(head).jsonl").path
                let timeline = directory.appendingPathComponent("\(way)-\(np)-\(head).json").path
                let run = try Launcher.mpirun(
                    np, "autorate",
                    [
                        "train", "--steps", "25", "--head", head, "--log-every", "10", "--quiet", "--metrics", metrics,
                        "--timeline", timeline, "--timeline-steps", "2-5",
                    ] + flags, environment: environment)
                XCTAssertEqual(run.status, 0, run.output)
                if let kernels { XCTAssertTrue(run.output.contains("OpenBLAS \(kernels) kernels"), run.output) }
                XCTAssertTrue(run.output.contains("update sharded over the ranks"), run.output)
                XCTAssertEqual(run.output.contains("gradients summed in node shared memory"), way != "mpi", run.output)
                XCTAssertEqual(run.output.contains("(weight rows over the node's batch)"), way == "node", run.output)
                // the steps did compute weight rows over the node's batch (not only said they would)
                let trace = try String(contentsOfFile: timeline, encoding: .utf8)
                XCTAssertEqual(
                    trace.contains("weight gradients over the node's batch, and update"), way == "node", "\(way) \(np) \(head)")
                let final = try XCTUnwrap(try Launcher.metrics(metrics).last)
                fingerprints[way] = try XCTUnwrap(final["parameters_fnv1a"] as? String)
            }
            XCTAssertEqual(fingerprints["node"], fingerprints["mpi"], "\(np) ranks, \(head) head")
            XCTAssertEqual(fingerprints["rank"], fingerprints["mpi"], "\(np) ranks, \(head) head")
        }
        XCTAssertEqual(try Self.sharedObjects().subtracting(before), [])
    }

    /// A segment /dev/shm cannot hold (a hidden flag asks for 1 PiB more per rank): every rank's
    /// setup fails alike, rank 0 warns naming the call and the size, and the run goes on through
    /// MPI to the bits of `--intra-node mpi`; nothing is left in /dev/shm.
    func testSharedMemoryThatCannotBeHadFallsBackToMPI() throws {
        let before = try Self.sharedObjects()
        var fingerprints: [String] = []
        for extra in [["--debug-fault", "shared-memory-extra:\(1 << 50)"], ["--intra-node", "mpi"]] {
            let metrics = directory.appendingPathComponent("fallback-\(fingerprints.count).jsonl").path
            let run = try Launcher.mpirun(
                2, "autorate", ["train", "--steps", "12", "--log-every", "6", "--quiet", "--metrics", metrics] + extra)
            XCTAssertEqual(run.status, 0, run.output)
            XCTAssertTrue(run.output.contains("update sharded over the ranks"), run.output)
            XCTAssertFalse(run.output.contains("gradients summed in node shared memory"), run.output)
            if fingerprints.isEmpty {
                XCTAssertTrue(run.output.contains("warning: node shared memory: posix_fallocate"), run.output)
                XCTAssertTrue(run.output.contains("failed on rank 0"), run.output)
                XCTAssertTrue(run.output.contains("the sharded update goes through MPI instead"), run.output)
            }
            fingerprints.append(try XCTUnwrap(try Launcher.metrics(metrics).last?["parameters_fnv1a"] as? String))
        }
        XCTAssertEqual(fingerprints[0], fingerprints[1])
        XCTAssertEqual(try Self.sharedObjects().subtracting(before), [])
    }

    private static func sharedObjects() throws -> Set<String> {
        Set(try FileManager.default.contentsOfDirectory(atPath: "/dev/shm").filter { $0.hasPrefix("autorate-") })
    }
}
