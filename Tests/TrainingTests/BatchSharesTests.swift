import XCTest

@testable import Training

final class BatchSharesTests: XCTestCase {
    func testStartsEvenAndPositionsTileTheBatch() {
        let shares = BatchShares(globalBatch: 250, ranks: 4, balanced: true)
        XCTAssertEqual(shares.counts, [62, 63, 62, 63])
        XCTAssertEqual((0..<4).map { shares.positions(of: $0) }, [0..<62, 62..<125, 125..<187, 187..<250])
        XCTAssertEqual(shares.limits, 31...94)
        XCTAssertEqual(BatchShares.limits(globalBatch: 2, ranks: 2), 1...1)
    }

    /// Against a Double computation: proportional shares round to the nearest integers that sum to
    /// the total, and the limits clamp with the rest spread over the others in proportion.
    func testApportionIsProportionalWithinTheLimits() {
        XCTAssertEqual(BatchShares.apportion(256, weights: [1, 1], limits: 64...192), [128, 128])
        XCTAssertEqual(BatchShares.apportion(256, weights: [3, 1], limits: 64...192), [192, 64])
        XCTAssertEqual(BatchShares.apportion(256, weights: [10, 1], limits: 64...192), [192, 64], "clamped at both ends")
        XCTAssertEqual(BatchShares.apportion(300, weights: [1, 2, 3], limits: 50...150), [50, 100, 150])
        // one rank clamped low, the other two share the rest 1:1.2
        XCTAssertEqual(BatchShares.apportion(300, weights: [0.01, 1, 1.2], limits: 50...150), [50, 114, 136])
        for seed in 0..<200 {
            var state = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 | 1
            func next() -> Double {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17
                return Double(state % 10_000 + 1) / 1000
            }
            let ranks = 1 + seed % 7, total = ranks * (1 + seed % 50) + seed % 5
            let limits = BatchShares.limits(globalBatch: total, ranks: ranks)
            let weights = (0..<ranks).map { _ in next() }
            let counts = BatchShares.apportion(total, weights: weights, limits: limits)
            XCTAssertEqual(counts.reduce(0, +), total, "seed \(seed)")
            XCTAssertTrue(counts.allSatisfy(limits.contains), "seed \(seed): \(counts) outside \(limits)")
            // unclamped shares are within one sample of lambda * w, lambda fitted over them in Double
            let free = counts.indices.filter { counts[$0] > limits.lowerBound && counts[$0] < limits.upperBound }
            let fixed = counts.indices.filter { !free.contains($0) }.map { counts[$0] }.reduce(0, +)
            let weightOfFree = free.map { weights[$0] }.reduce(0, +)
            for i in free {
                let exact = Double(total - fixed) * weights[i] / weightOfFree
                XCTAssertLessThan(abs(Double(counts[i]) - exact), 1, "seed \(seed), rank \(i): \(counts[i]) vs \(exact)")
            }
        }
    }

    func testObservedSpeedsMoveTheSharesAndNonsenseDoesNot() {
        var shares = BatchShares(globalBatch: 256, ranks: 2, balanced: true)
        // rank 1 takes twice as long per sample: the shares go to 2:1 (171/85) at once (first observation)
        shares.observe(computeSeconds: [0.010, 0.020])
        XCTAssertEqual(shares.counts, [171, 85])
        // then equal per-sample speed again: the smoothed speeds move a third of the way back
        for _ in 0..<40 { shares.observe(computeSeconds: [Double(shares.counts[0]) * 1e-4, Double(shares.counts[1]) * 1e-4]) }
        XCTAssertEqual(shares.counts, [128, 128])
        let before = shares.counts
        shares.observe(computeSeconds: [.nan, 0.01])
        shares.observe(computeSeconds: [0, 0.01])
        XCTAssertEqual(shares.counts, before, "a time that is not positive and finite is ignored")
    }
}
