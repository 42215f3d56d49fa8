import Collectives
import TensorCore
import XCTest

@testable import Training

/// Where the sharded update cuts its segments: at a row of the tensor at the middle (a row is the
/// tensor's count over its first dimension), or the next row, or the segment's end.
final class ShardedUpdateTests: XCTestCase {
    func testSegmentsAreCutAtRowBoundaries() {
        var layout = ParameterLayout()
        layout.append("a", shape: [3, 4])  // 0..<12, rows of 4
        layout.append("b", shape: [5])  // 12..<17, rows of 1
        layout.append("c", shape: [2, 2, 3])  // 17..<29, rows of 6
        let sharded = ShardedUpdate(layout: layout, communicator: SingleProcessCommunicator())
        XCTAssertEqual(sharded.rowBoundary(0..<29), 14, "the middle, in b")
        XCTAssertEqual(sharded.rowBoundary(0..<12), 4, "row 1 of a, below the middle (6)")
        XCTAssertEqual(sharded.rowBoundary(17..<29), 23, "row 1 of c: the middle")
        XCTAssertEqual(sharded.rowBoundary(5..<7), 7, "inside row 1 of a: the next row is past the end")
        XCTAssertEqual(sharded.rowBoundary(18..<30), 23, "the row of c above the segment's start")
        XCTAssertEqual(sharded.rowBoundary(18..<22), 22, "a segment inside one row of c goes whole to one side")
        XCTAssertEqual(sharded.rowBoundary(0..<0), 0)
    }
}
