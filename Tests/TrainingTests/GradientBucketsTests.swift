import TensorCore
import Training
import XCTest

final class GradientBucketsTests: XCTestCase {
    func layout(_ sizes: [Int]) -> ParameterLayout {
        var l = ParameterLayout()
        for (i, n) in sizes.enumerated() { l.append("t\(i)", shape: [n]) }
        return l
    }

    /// Buckets partition the flat gradient exactly, back to front, none above the cap.
    func testBucketsPartitionTheGradientInReverseOrder() {
        let sizes = [1000, 10, 5000, 3, 300, 40_000, 7]
        for capElements in [1, 16, 1000, 4096, 50_000, 1 << 20] {
            let l = layout(sizes)
            let buckets = GradientBuckets(layout: l, capBytes: capElements * 4)
            var expectedEnd = l.count
            for range in buckets.ranges {
                XCTAssertEqual(range.upperBound, expectedEnd, "cap \(capElements): contiguous, back to front")
                XCTAssertLessThanOrEqual(range.count, capElements, "cap \(capElements)")
                XCTAssertFalse(range.isEmpty)
                expectedEnd = range.lowerBound
            }
            XCTAssertEqual(expectedEnd, 0, "cap \(capElements): the buckets cover every gradient")
        }
    }

    /// Whole tensors stay in one bucket when they fit; a large cap gives one bucket.
    func testTensorsAreNotSplitWhenTheyFit() {
        let l = layout([100, 200, 300])
        XCTAssertEqual(GradientBuckets(layout: l, capBytes: 1 << 20).ranges, [0..<600])
        XCTAssertEqual(GradientBuckets(layout: l, capBytes: 500 * 4).ranges, [100..<600, 0..<100])
        // a split tensor's remainder shares a bucket with the tensors before it
        XCTAssertEqual(GradientBuckets(layout: l, capBytes: 250 * 4).ranges, [350..<600, 100..<350, 0..<100])
    }
}
