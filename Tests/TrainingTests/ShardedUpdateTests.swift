import Collectives
import Layers
import Optimizers
import TensorCore
import XCTest

@testable import Training

/// Where the sharded update cuts its segments: at a unit of the tensor at the middle (as many whole
/// rows as fit in 256 elements, or one longer row), or the next unit, or the segment's end.
final class ShardedUpdateTests: XCTestCase {
    func testSegmentsAreCutAtUnitBoundaries() throws {
        var layout = ParameterLayout()
        layout.append("a", shape: [3, 300])  // 0..<900, units of one row, 300
        layout.append("b", shape: [600])  // 900..<1500, units of 256 (rows of 1)
        layout.append("c", shape: [2, 2, 100])  // 1500..<1900, units of one row, 200
        let sharded = try ShardedUpdate(
            store: ParameterStore(layout: layout), communicator: SingleProcessCommunicator(), sharedMemory: false)
        XCTAssertEqual(sharded.unitBoundary(0..<1900), 900, "the middle (950) is in b's first unit")
        XCTAssertEqual(sharded.unitBoundary(0..<900), 300, "row 1 of a, below the middle (450)")
        XCTAssertEqual(sharded.unitBoundary(1500..<1900), 1700, "row 1 of c: the middle")
        XCTAssertEqual(sharded.unitBoundary(350..<450), 450, "a segment inside one row of a goes whole to one side")
        XCTAssertEqual(sharded.unitBoundary(1000..<1300), 1156, "the unit of b above the segment's start")
        XCTAssertEqual(sharded.unitBoundary(0..<0), 0)
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
    /// monitored step moves like any other and returns the monitors. After each, the gradient is
    /// back in this rank's slice.
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
        func place() -> [UnsafeMutableRawPointer] {
            [UnsafeMutableRawPointer(store.values.pointer), UnsafeMutableRawPointer(store.gradients.pointer)]
        }

        gradient { Float($0 % 3) }
        XCTAssertNotNil(try sharded.step(store, optimizer, monitor: false, timeline: nil).monitors)
        XCTAssertEqual(place(), [second, shared.slice(of: 0)])
        let afterOne = (0..<12).map { Float($0) - 0.5 * Float($0 % 3) }
        XCTAssertEqual(store.values.array, afterOne)

        gradient { $0 == 7 ? .nan : 1 }
        XCTAssertNil(try sharded.step(store, optimizer, monitor: false, timeline: nil).monitors)
        XCTAssertEqual(place(), [second, shared.slice(of: 0)], "a skipped step keeps the copy")
        XCTAssertEqual(store.values.array, afterOne)

        gradient { _ in 2 }
        let monitored = try sharded.step(store, optimizer, monitor: true, timeline: nil)
        XCTAssertEqual(place(), [first, shared.slice(of: 0)], "a monitored step moves to the other copy as any step")
        let monitor = try XCTUnwrap(monitored.monitors?.first)
        XCTAssertEqual(monitor.norm2, afterOne.reduce(0.0) { $0 + Double($1) * Double($1) }, accuracy: 1e-9)
        XCTAssertEqual(monitor.gradNorm2, 48, accuracy: 1e-12)
        XCTAssertEqual(store.values.array, afterOne.map { $0 - 1 })
    }
}
