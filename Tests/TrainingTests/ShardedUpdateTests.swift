import Collectives
import Layers
import Optimizers
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
        XCTAssertEqual(UnsafeMutableRawPointer(store.values.pointer), shared.commonPart(0))
        XCTAssertEqual(UnsafeMutableRawPointer(store.gradients.pointer), shared.slice(of: 0))
        XCTAssertEqual(shared.commonParts, 2, "two copies of the parameters")
        XCTAssertEqual(store.values.array, (0..<12).map { Float($0) })
        XCTAssertEqual(store.gradients.array, (0..<12).map { -Float($0) })
    }

    /// The buffers' dance in node shared memory (one rank): a sharded step writes the new values
    /// into the node's second copy and reads from it after; a skipped step keeps the copy; a
    /// logging step's unsharded update is published into the other copy. After each, the gradient
    /// is back in this rank's slice.
    func testStepsMoveBetweenTheTwoCopiesOfTheParameters() throws {
        var layout = ParameterLayout()
        layout.append("w", shape: [4, 3])
        let store = ParameterStore(layout: layout)
        let optimizer = ScaleInvariantSGD(
            groups: [ParameterGroup(name: "w", kind: .scaleInvariant, tensors: layout.tensors)], parameterCount: 12,
            invariant: GroupRule(learningRate: 0.5), variant: GroupRule(learningRate: 0.1))
        for i in 0..<12 { store.values.pointer[i] = Float(i) }
        let sharded = try ShardedUpdate(store: store, communicator: SingleProcessCommunicator(), sharedMemory: true)
        let shared = try XCTUnwrap(sharded.sharedMemory)
        let first = shared.commonPart(0), second = shared.commonPart(1)
        func gradient(_ g: (Int) -> Float) { for i in 0..<12 { store.gradients.pointer[i] = g(i) } }
        func place() -> [UnsafeMutableRawPointer] { [UnsafeMutableRawPointer(store.values.pointer), UnsafeMutableRawPointer(store.gradients.pointer)] }

        gradient { Float($0 % 3) }
        XCTAssertTrue(try sharded.step(store, optimizer, timeline: nil).applied)
        XCTAssertEqual(place(), [second, shared.slice(of: 0)])
        let afterOne = (0..<12).map { Float($0) - 0.5 * Float($0 % 3) }
        XCTAssertEqual(store.values.array, afterOne)

        gradient { $0 == 7 ? .nan : 1 }
        XCTAssertFalse(try sharded.step(store, optimizer, timeline: nil).applied)
        XCTAssertEqual(place(), [second, shared.slice(of: 0)], "a skipped step keeps the copy")
        XCTAssertEqual(store.values.array, afterOne)

        gradient { $0 == 3 ? .infinity : 2 }
        XCTAssertNil(optimizer.apply(to: store, monitor: true))
        _ = try sharded.publishUnshardedStep(store, applied: false)
        XCTAssertEqual(place(), [second, shared.slice(of: 0)], "a skipped logging step keeps the copy")
        XCTAssertEqual(store.values.array, afterOne)

        gradient { _ in 2 }
        XCTAssertNotNil(optimizer.apply(to: store, monitor: true))
        _ = try sharded.publishUnshardedStep(store, applied: true)
        XCTAssertEqual(place(), [first, shared.slice(of: 0)], "a logging step's values go to the other copy")
        XCTAssertEqual(store.values.array, afterOne.map { $0 - 1 })
    }
}
