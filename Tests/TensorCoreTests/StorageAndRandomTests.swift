import XCTest
import TensorCore

final class StorageAndRandomTests: XCTestCase {
    func testParameterLayoutOffsetsAreContiguous() {
        var layout = ParameterLayout()
        let w = layout.append("0.weight", shape: [3, 5])
        let g = layout.append("1.weight", shape: [3])
        let b = layout.append("1.bias", shape: [3])
        // Exact: offsets are running sums of the element counts.
        XCTAssertEqual(w.range, 0..<15)
        XCTAssertEqual(g.range, 15..<18)
        XCTAssertEqual(b.range, 18..<21)
        XCTAssertEqual(layout.count, 21)
        XCTAssertEqual(layout.spec(named: "1.weight"), g)
        XCTAssertNil(layout.spec(named: "missing"))

        let store = ParameterStore(layout: layout)
        XCTAssertEqual(store.values.count, 21)
        XCTAssertEqual(store.gradients.count, 21)
        XCTAssertTrue(store.values.array.allSatisfy { $0 == 0 }, "FlatBuffer is zero-initialized")
        store.value(g).update(repeating: 2)
        store.gradient(b).update(repeating: 3)
        XCTAssertEqual(Array(store.values.array[15..<18]), [2, 2, 2])
        XCTAssertEqual(store.values.array.filter { $0 != 0 }.count, 3)
        XCTAssertEqual(Array(store.gradients.array[18..<21]), [3, 3, 3])
    }

    func testFlatBufferSliceZeroingAndAlignment() {
        let a = FlatBuffer(count: 10)
        XCTAssertEqual(a.array, [Float](repeating: 0, count: 10))
        for i in 0..<10 { a.pointer[i] = Float(i) }
        XCTAssertEqual(Array(a.slice(3..<6)), [3, 4, 5])
        XCTAssertEqual(FlatBuffer(count: 0).array, [])
        // documented: one cache line for small buffers, 2 MiB (a huge page) from 2 MiB up
        XCTAssertEqual(Int(bitPattern: a.pointer) % 64, 0)
        XCTAssertEqual(Int(bitPattern: FlatBuffer(count: 1 << 20).pointer) % (2 << 20), 0)
    }

    /// Memory the buffer did not allocate (node shared memory): the contents move, the owner stays
    /// alive while a buffer uses it (also after an exchange) and goes when none does.
    func testFlatBufferMovesIntoMemoryItDoesNotOwnAndKeepsItsOwnerAlive() {
        final class Owner {
            let memory = UnsafeMutableBufferPointer<Float>.allocate(capacity: 8)
            deinit { memory.deallocate() }
        }
        weak var watched: Owner?
        var other: FlatBuffer? = FlatBuffer(count: 5)
        do {
            let owner = Owner()
            watched = owner
            let a = FlatBuffer(count: 5)
            for i in 0..<5 { a.pointer[i] = Float(i + 1) }
            a.move(into: owner.memory, keeper: owner)
            XCTAssertEqual(a.pointer, owner.memory.baseAddress)
            XCTAssertEqual(a.array, [1, 2, 3, 4, 5])
            a.exchangeStorage(with: other!)
            XCTAssertEqual(other!.pointer, owner.memory.baseAddress)
            XCTAssertEqual(other!.array, [1, 2, 3, 4, 5])
        }
        XCTAssertNotNil(watched, "the buffer that holds the memory keeps its owner")
        other = nil
        XCTAssertNil(watched, "no buffer holds the memory: its owner is released")
    }

    func testSplitMixIsDeterministicAndSeedDependent() {
        var a = SplitMix64(seed: 42), b = SplitMix64(seed: 42), c = SplitMix64(seed: 43)
        let xa = (0..<100).map { _ in a.next() }, xb = (0..<100).map { _ in b.next() }, xc = (0..<100).map { _ in c.next() }
        XCTAssertEqual(xa, xb)
        XCTAssertNotEqual(xa, xc)
        // derived(seed, epoch): same parts give the same stream, a different part a different one.
        var d1 = SplitMix64.derived(1, 2), d2 = SplitMix64.derived(1, 3), d3 = SplitMix64.derived(1, 2)
        let s1 = (0..<8).map { _ in d1.next() }, s2 = (0..<8).map { _ in d2.next() }, s3 = (0..<8).map { _ in d3.next() }
        XCTAssertEqual(s1, s3)
        XCTAssertNotEqual(s1, s2)
    }

    /// Moments of 200k samples: standard errors are ~0.002 (mean) and ~0.003 (variance), so 0.02 is
    /// ~7 standard errors: a wrong distribution fails, a correct one essentially never does (fixed seed anyway).
    func testUniformAndNormalMoments() {
        var rng = SplitMix64(seed: 7)
        let n = 200_000
        var su = 0.0, sn = 0.0, sn2 = 0.0
        var minU = 1.0, maxU = 0.0
        for _ in 0..<n {
            let u = rng.uniform()
            su += u; minU = min(minU, u); maxU = max(maxU, u)
            let z = rng.normal()
            sn += z; sn2 += z * z
        }
        XCTAssertGreaterThanOrEqual(minU, 0)
        XCTAssertLessThan(maxU, 1)
        XCTAssertEqual(su / Double(n), 0.5, accuracy: 0.02)
        XCTAssertEqual(sn / Double(n), 0, accuracy: 0.02)
        XCTAssertEqual(sn2 / Double(n), 1, accuracy: 0.02)
    }
}
