import XCTest
import Layers
import TensorCore

/// Deterministic mode's chunked sums, with ranks simulated in one process: the gradient one rank
/// computes over its chunks, added across ranks in rank-tree order, has the bits of one process
/// over all the chunks.
final class BatchChunksTests: XCTestCase {
    /// Chunk c of a batch of n: [c*n/K, (c+1)*n/K); rank r of P owns chunks [r*K/P, (r+1)*K/P).
    static func localChunks(n: Int, chunks k: Int, rank: Int, ranks: Int) -> (share: Range<Int>, chunks: [Range<Int>]) {
        let per = k / ranks
        let all = (0..<k).map { c in (c * n / k)..<((c + 1) * n / k) }
        let mine = Array(all[(rank * per)..<((rank + 1) * per)])
        let base = mine.first!.lowerBound
        return (base..<mine.last!.upperBound, mine.map { ($0.lowerBound - base)..<($0.upperBound - base) })
    }

    /// Elementwise tree sum over rank partials: ((r0 + r1) + (r2 + r3)) ...
    static func rankTree(_ parts: [[Float]]) -> [Float] {
        if parts.count == 1 { return parts[0] }
        let half = parts.count / 2
        let a = rankTree(Array(parts[..<half])), b = rankTree(Array(parts[half...]))
        return zip(a, b).map { $0 + $1 }
    }

    func testLinearHasTheSameBitsOnAnyRankCount() {
        var rng = SplitMix64(seed: 7)
        // 61 samples: uneven chunks of 7 and 8, and uneven rank shares; 1100 inputs: the weight
        // gradient's tree runs over three tiles of output rows (112, 112, 26)
        let n = 61, inF = 1100, outF = 250, k = 8
        var layout = ParameterLayout()
        let w = layout.append("w", shape: [outF, inF]), b = layout.append("b", shape: [outF])
        let linear = Linear(inFeatures: inF, outFeatures: outF, weight: w, bias: b)
        XCTAssertEqual(linear.gradientTileRows, 112)
        let p = ParameterStore(layout: layout)
        fillNormal(p.values.all, &rng, scale: 0.03)
        let x = OwnedMatrix(rows: n, cols: inF, normal: &rng)
        let dy = OwnedMatrix(rows: n, cols: outF, normal: &rng, scale: 1e-3)
        let y = OwnedMatrix(rows: n, cols: outF), dx = OwnedMatrix(rows: n, cols: inF)

        // forward rows, input-gradient rows and the rank-tree sum of the parameter gradients
        func run(ranks: Int) -> (y: [Float], dx: [Float], gradients: [Float]) {
            y.storage.all.update(repeating: .nan)
            dx.storage.all.update(repeating: .nan)
            let parts = (0..<ranks).map { r -> [Float] in
                let (share, ranges) = Self.localChunks(n: n, chunks: k, rank: r, ranks: ranks)
                let chunks = BatchChunks()
                chunks.set(chunks: ranges)
                linear.forward(x.matrix.rows(share), y.matrix.rows(share), p, chunks: chunks)
                p.gradients.all.update(repeating: .nan)
                linear.backward(
                    x.matrix.rows(share), dy.matrix.rows(share), dx.matrix.rows(share), p, accumulating: false, chunks: chunks)
                return p.gradients.array
            }
            return (y.values, dx.values, Self.rankTree(parts))
        }
        let one = run(ranks: 1)
        for ranks in [2, 4, 8] {
            let other = run(ranks: ranks)
            XCTAssertEqual(other.y.map(\.bitPattern), one.y.map(\.bitPattern), "forward, \(ranks) ranks")
            XCTAssertEqual(other.dx.map(\.bitPattern), one.dx.map(\.bitPattern), "input gradient, \(ranks) ranks")
            XCTAssertEqual(
                other.gradients.map(\.bitPattern), one.gradients.map(\.bitPattern), "parameter gradients, \(ranks) ranks")
        }
        // and the values are the plain ones, to rounding
        p.gradients.all.update(repeating: 0)
        linear.forward(x.matrix, y.matrix, p)
        linear.backward(x.matrix, dy.matrix, dx.matrix, p, accumulating: false)
        XCTAssertLessThan(relativeDifference(one.gradients, p.gradients.array), 1e-5)
        XCTAssertLessThan(relativeDifference(one.y, y.values), 1e-5)
        XCTAssertLessThan(relativeDifference(one.dx, dx.values), 1e-5)
    }

    func testTreeSumFusedPairsEqualExplicitAdditions() {
        var rng = SplitMix64(seed: 3)
        let count = 1000, leaves = 8
        let values = (0..<leaves).map { _ in
            (0..<count).map { _ in Float(rng.normal() * pow(10, Double(Int(rng.next() % 7)) - 3)) }
        }
        let chunks = BatchChunks()
        var fused = [Float](repeating: .nan, count: count), explicit = fused
        for (isFused, out) in [(true, 0), (false, 1)] {
            var result = [Float](repeating: .nan, count: count)
            result.withUnsafeMutableBufferPointer { dst in
                chunks.treeSum(leaves: leaves, count: count, into: dst.baseAddress!, fusedPairs: isFused) { i, o, accumulate in
                    for j in 0..<count { o[j] = accumulate ? o[j] + values[i][j] : values[i][j] }
                }
            }
            if out == 0 { fused = result } else { explicit = result }
        }
        XCTAssertEqual(fused.map(\.bitPattern), explicit.map(\.bitPattern))
        XCTAssertEqual(explicit.map(\.bitPattern), Self.rankTree(values).map(\.bitPattern))
        // the negative control: adding the leaves left to right gives other bits
        let sequential = (0..<count).map { j in values.reduce(Float(0)) { $0 + $1[j] } }
        XCTAssertNotEqual(sequential.map(\.bitPattern), explicit.map(\.bitPattern))
    }
}
