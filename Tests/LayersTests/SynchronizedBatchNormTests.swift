import XCTest
import Layers
import TensorCore

/// Synchronized BN over simulated ranks with the two-phase API: every "rank" has its own BatchNorm,
/// parameters and running buffers (identical copies, as after a broadcast), accumulates into ONE
/// shared moments buffer (what the allreduce would produce), then normalizes its own rows.
final class SynchronizedBatchNormTests: XCTestCase {
    func testShardedEqualsWholeBatchWithEmptyShard() throws {
        let shards = [11, 0, 19, 7]  // 37 rows, unequal, one rank with no rows
        let total = shards.reduce(0, +)
        let inF = 4, c = 5
        for mode in EpsilonMode.allCases {
            let whole = LinearBN(inF: inF, channels: c, mode: mode, epsilon: 0.05, maxBatch: total, seed: 41)
            let ranks = shards.map { LinearBN(inF: inF, channels: c, mode: mode, epsilon: 0.05, maxBatch: max($0, 1), seed: 41) }
            var rng = SplitMix64(seed: 42)
            // Inputs with a large common offset: the shift by the running mean must keep the sums exact.
            let z = OwnedMatrix(rows: total, cols: c, normal: &rng, scale: 2, shift: 30)
            let dy = OwnedMatrix(rows: total, cols: c, normal: &rng)
            let y = OwnedMatrix(rows: total, cols: c), dz = OwnedMatrix(rows: total, cols: c)

            // Whole batch, one process.
            try whole.bn.forward(z.matrix, y.matrix, whole.p, buffers: whole.buffers, reducer: LocalStatistics())
            try whole.bn.backward(dy.matrix, dz.matrix, whole.p, reducer: LocalStatistics())

            // Row views of each shard inside the same arrays; rank outputs go to separate arrays.
            var starts: [Int] = []
            var s = 0
            for n in shards { starts.append(s); s += n }
            let ys = OwnedMatrix(rows: total, cols: c), dzs = OwnedMatrix(rows: total, cols: c)
            func view(_ m: OwnedMatrix, _ k: Int) -> Matrix {
                Matrix(m.storage.pointer + starts[k] * c, rows: shards[k], cols: c)
            }

            var moments = [Double](repeating: 0, count: whole.bn.momentsCount)
            moments.withUnsafeMutableBufferPointer { m in
                for k in 0..<shards.count { ranks[k].bn.accumulateMoments(view(z, k), into: m, buffers: ranks[k].buffers) }
            }
            for k in 0..<shards.count {
                moments.withUnsafeBufferPointer {
                    ranks[k].bn.normalize(view(z, k), view(ys, k), moments: $0, ranks[k].p, buffers: ranks[k].buffers)
                }
            }
            var global = [Double](repeating: 0, count: whole.bn.backwardSumsCount)
            var locals: [[Double]] = []
            for k in 0..<shards.count {
                var local = [Double](repeating: 0, count: whole.bn.backwardSumsCount)
                local.withUnsafeMutableBufferPointer { ranks[k].bn.accumulateBackwardSums(view(dy, k), into: $0) }
                for i in 0..<local.count { global[i] += local[i] }
                locals.append(local)
            }
            for k in 0..<shards.count {
                ranks[k].bn.finishBackward(view(dy, k), view(dzs, k), globalSums: global, localSums: locals[k], ranks[k].p)
            }

            // fp32 outputs and input gradients: the sharded path sums the same Doubles in another
            // order, so the results agree to a few fp32 ulps; rel. 1e-5 (norm-wise).
            XCTAssertLessThan(relativeDifference(ys.values, y.values), 1e-5, "\(mode) outputs")
            XCTAssertLessThan(relativeDifference(dzs.values, dz.values), 1e-5, "\(mode) input gradients")
            // Parameter gradients from local sums, added over ranks (what the gradient allreduce does).
            var summed = [Float](repeating: 0, count: whole.p.layout.count)
            for k in 0..<shards.count { for i in 0..<summed.count { summed[i] += ranks[k].p.gradients.pointer[i] } }
            XCTAssertLessThan(relativeDifference(summed, whole.p.gradients.array), 1e-5, "\(mode) parameter gradients")
            if mode == .scaled {
                // The weight gradient through eps_c is non-zero and part of the comparison above.
                XCTAssertGreaterThan(whole.p.gradient(whole.w).map { abs($0) }.max()!, 0)
            }
            // Running statistics identical on every rank (the same global moments), and equal to the
            // whole-batch run up to fp32 rounding.
            for k in 1..<shards.count {
                XCTAssertEqual(ranks[k].buffers.array, ranks[0].buffers.array, "\(mode) rank \(k) buffers")
            }
            XCTAssertLessThan(relativeDifference(ranks[0].buffers.array, whole.buffers.array), 1e-6)
            // The comparison is not vacuous: the outputs are normalized, not a copy of the input.
            XCTAssertGreaterThan(relativeDifference(y.values, z.values), 0.5)
        }
    }

    /// The same through `forward/backward(reducer:)` with a reducer that sums across simulated ranks
    /// running in lock step on threads would need a barrier; instead check the one-rank reducer path
    /// equals the two-phase path exactly (same arithmetic, same order).
    func testReducerPathEqualsTwoPhasePath() throws {
        let rows = 13, c = 3
        let a = LinearBN(inF: 2, channels: c, mode: .scaled, epsilon: 0.01, maxBatch: rows, seed: 43)
        let b = LinearBN(inF: 2, channels: c, mode: .scaled, epsilon: 0.01, maxBatch: rows, seed: 43)
        var rng = SplitMix64(seed: 44)
        let z = OwnedMatrix(rows: rows, cols: c, normal: &rng), dy = OwnedMatrix(rows: rows, cols: c, normal: &rng)
        let y1 = OwnedMatrix(rows: rows, cols: c), y2 = OwnedMatrix(rows: rows, cols: c)
        let d1 = OwnedMatrix(rows: rows, cols: c), d2 = OwnedMatrix(rows: rows, cols: c)
        try a.bn.forward(z.matrix, y1.matrix, a.p, buffers: a.buffers, reducer: LocalStatistics())
        try a.bn.backward(dy.matrix, d1.matrix, a.p, reducer: LocalStatistics())
        var m = [Double](repeating: 0, count: b.bn.momentsCount)
        m.withUnsafeMutableBufferPointer { b.bn.accumulateMoments(z.matrix, into: $0, buffers: b.buffers) }
        m.withUnsafeBufferPointer { b.bn.normalize(z.matrix, y2.matrix, moments: $0, b.p, buffers: b.buffers) }
        var s = [Double](repeating: 0, count: b.bn.backwardSumsCount)
        s.withUnsafeMutableBufferPointer { b.bn.accumulateBackwardSums(dy.matrix, into: $0) }
        b.bn.finishBackward(dy.matrix, d2.matrix, globalSums: s, localSums: s, b.p)
        // Exact: identical operations in identical order.
        XCTAssertEqual(y1.values, y2.values)
        XCTAssertEqual(d1.values, d2.values)
        XCTAssertEqual(a.p.gradients.array, b.p.gradients.array)
    }
}
