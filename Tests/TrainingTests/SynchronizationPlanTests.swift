import XCTest

@testable import Training

/// The plan is a value chosen once from the configuration and the machine's shape.
final class SynchronizationPlanTests: XCTestCase {
    func plan(
        _ ranks: Int, oneNode: Bool = true, plain: Bool = true, nodeBatch: Bool = true,
        _ change: (inout TrainingConfiguration) -> Void = { _ in }
    ) -> SynchronizationPlan {
        var c = TrainingConfiguration()
        change(&c)
        return SynchronizationPlan.choose(c, ranks: ranks, oneNode: oneNode, plainSteps: plain, nodeBatchNetwork: nodeBatch)
    }

    func testOneRankCommunicatesNothing() {
        let p = plan(1)
        XCTAssertEqual(p.gradientSum, .none)
        XCTAssertFalse(p.sharded || p.overlap || p.weightGradientsOverNodeBatch)
        XCTAssertEqual(p.line, "plan: 1 rank, no communication")
    }

    func testOneNodeShardsInSharedMemory() {
        let p = plan(2)
        XCTAssertEqual(p.gradientSum, .nodeSharedMemory)
        XCTAssertTrue(p.sharded && p.weightGradientsOverNodeBatch)
        XCTAssertFalse(p.overlap, "--overlap auto is off on one node")
        XCTAssertFalse(plan(2, nodeBatch: false).weightGradientsOverNodeBatch, "a network that cannot share its activations")
        XCTAssertFalse(plan(2) { $0.weightGradients = .rank }.weightGradientsOverNodeBatch)
        XCTAssertEqual(plan(4) { $0.intraNode = .mpi }.gradientSum, .reduceScatter)
    }

    func testSeveralNodesOverlapAnAllreduce() {
        let p = plan(4, oneNode: false)
        XCTAssertTrue(p.overlap)
        XCTAssertEqual(p.gradientSum, .allreduce, "the overlapped reduction is not sharded")
        XCTAssertEqual(plan(4, oneNode: false) { $0.overlap = .off }.gradientSum, .reduceScatter)
    }

    func testWhatCannotBeSharded() {
        XCTAssertEqual(plan(3).gradientSum, .allreduce, "not a power of two")
        XCTAssertEqual(plan(2, plain: false).gradientSum, .allreduce, "momentum or weight decay")
        XCTAssertEqual(plan(2) { $0.overlap = .on }.gradientSum, .allreduce)
    }

    func testDeterministicModeSumsInOrderAfterBackward() {
        let p = plan(2, oneNode: false) { $0.deterministic = true }
        XCTAssertFalse(p.overlap)
        XCTAssertEqual(p.deterministicChunks, 8)
        XCTAssertEqual(p.gradientSum, .reduceScatter)
        XCTAssertEqual(plan(3) { $0.deterministic = true }.gradientSum, .orderedAllreduce)
        XCTAssertFalse(plan(2) { $0.deterministic = true }.weightGradientsOverNodeBatch, "its sums follow the chunk tree")
        XCTAssertTrue(plan(2) { $0.deterministic = true }.line.contains("deterministic, 8 chunks per batch"))
    }

    func testBalanceAndLocalStatisticsAppearInTheLine() {
        let p = plan(2) {
            $0.balance = .on
            $0.batchNormSync = .local
        }
        XCTAssertTrue(p.balanced)
        XCTAssertTrue(
            p.line.contains("BN statistics per rank") && p.line.contains("batch shares follow each rank's speed"), p.line)
    }
}
