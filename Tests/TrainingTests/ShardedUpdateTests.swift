import Collectives
import TensorCore
import XCTest

@testable import Training

/// Where the sharded update cuts its segments: at a row of the tensor at the middle (a row is the
/// tensor's count over its first dimension), or the next row, or the segment's end.
final class ShardedUpdateTests: XCTestCase {
    func testSegmentsAreCutAtRowBoundaries() throws {
        var layout = ParameterLayout()
        layout.append("a", shape: [3, 4])  // 0..<12, rows of 4
        layout.append("b", shape: [5])  // 12..<17, rows of 1
        layout.append("c", shape: [2, 2, 3])  // 17..<29, rows of 6
        let sharded = try ShardedUpdate(store: ParameterStore(layout: layout), communicator: SingleProcessCommunicator(), sharedMemory: false)
        XCTAssertEqual(sharded.rowBoundary(0..<29), 14, "the middle, in b")
        XCTAssertEqual(sharded.rowBoundary(0..<12), 4, "row 1 of a, below the middle (6)")
        XCTAssertEqual(sharded.rowBoundary(17..<29), 23, "row 1 of c: the middle")
        XCTAssertEqual(sharded.rowBoundary(5..<7), 7, "inside row 1 of a: the next row is past the end")
        XCTAssertEqual(sharded.rowBoundary(18..<30), 23, "the row of c above the segment's start")
        XCTAssertEqual(sharded.rowBoundary(18..<22), 22, "a segment inside one row of c goes whole to one side")
        XCTAssertEqual(sharded.rowBoundary(0..<0), 0)
    }

    /// With node shared memory (one rank here), the store's gradient moves into this rank's slice
    /// and its values into the node's first copy of the parameters, with their contents.
    func testStoreMovesIntoNodeSharedMemory() throws {
        var layout = ParameterLayout()
        layout.append("w", shape: [4, 3])
        let store = ParameterStore(layout: layout)
        for i in 0..<12 {
            store.values.pointer[i] = Float(i)
            store.gradients.pointer[i] = -Float(i)
        }
        let sharded = try ShardedUpdate(store: store, communicator: SingleProcessCommunicator(), sharedMemory: true)
        let shared = try XCTUnwrap(sharded.sharedMemory)
        XCTAssertEqual(UnsafeMutableRawPointer(store.values.pointer), shared.common)
        XCTAssertEqual(UnsafeMutableRawPointer(store.gradients.pointer), shared.slice(of: 0))
        XCTAssertGreaterThanOrEqual(shared.commonBytes, 2 * 12 * MemoryLayout<Float>.stride, "room for two copies")
        XCTAssertEqual(store.values.array, (0..<12).map { Float($0) })
        XCTAssertEqual(store.gradients.array, (0..<12).map { -Float($0) })
    }
}
