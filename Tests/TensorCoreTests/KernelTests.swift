import XCTest
import TensorCore

/// Every kernel in Kernels.swift against a plain Double loop, at sizes that hit vector tails.
final class KernelTests: XCTestCase {
    static let sizes = [0, 1, 7, 255, 256, 257, 1000, 4099]

    private func random(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in Float(rng.normal()) }
    }

    func testScale() {
        for n in Self.sizes {
            let x0 = random(n, seed: UInt64(n))
            var x = x0
            x.withUnsafeMutableBufferPointer { scale($0, by: -1.5) }
            // One fp32 multiply per element: exact to within 1 ulp (rel. 1.2e-7).
            for i in 0..<n { XCTAssertEqual(Double(x[i]), Double(x0[i]) * -1.5, accuracy: 1.2e-7 * abs(Double(x0[i]) * 1.5)) }
        }
    }

    func testAxpy() {
        for n in Self.sizes {
            let x = random(n, seed: 1 + UInt64(n)), y0 = random(n, seed: 2 + UInt64(n))
            var y = y0
            let a: Float = 0.37
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { axpy(a, xp, $0) } }
            // One fused or unfused multiply-add: error at most 2 ulp of the larger operand magnitude.
            for i in 0..<n {
                let want = Double(a) * Double(x[i]) + Double(y0[i])
                let mag = abs(Double(a) * Double(x[i])) + abs(Double(y0[i]))
                XCTAssertEqual(Double(y[i]), want, accuracy: 2.4e-7 * mag, "axpy n=\(n) i=\(i)")
            }
        }
    }

    func testZero() {
        for n in Self.sizes {
            var x = random(n, seed: 3)
            x.withUnsafeMutableBufferPointer { zero($0) }
            XCTAssertTrue(x.allSatisfy { $0 == 0 })
        }
    }

    func testDotAndSquaredNorm() {
        for n in Self.sizes {
            let x = random(n, seed: 4 + UInt64(n)), y = random(n, seed: 5 + UInt64(n))
            var want = 0.0, mag = 0.0, norm = 0.0
            for i in 0..<n {
                want += Double(x[i]) * Double(y[i])
                mag += abs(Double(x[i]) * Double(y[i]))
                norm += Double(x[i]) * Double(x[i])
            }
            let got = x.withUnsafeBufferPointer { xp in y.withUnsafeBufferPointer { dot(xp, $0) } }
            let got2 = x.withUnsafeBufferPointer { squaredNorm($0) }
            // Float blocks of 256 products, Double across blocks: error <= ~256 * 2^-24 * sum|x*y|
            // (1.5e-5); real errors are far smaller, 1e-5 of sum|x y| is a fair bound.
            XCTAssertEqual(got, want, accuracy: 1e-5 * mag + 1e-30, "dot n=\(n)")
            XCTAssertEqual(got2, norm, accuracy: 1e-5 * norm + 1e-30, "squaredNorm n=\(n)")
            if n == 0 { XCTAssertEqual(got, 0); XCTAssertEqual(got2, 0) }
        }
    }

    /// Double accumulation across blocks: a sum that fp32 cannot hold exactly. 2^25 ones in fp32
    /// stall at 2^24; the kernel's blocked Double sum is exact (each block of 256 ones is exact).
    func testSquaredNormDoesNotStallLikeFloat() {
        let n = 1 << 25
        let ones = [Float](repeating: 1, count: n)
        let got = ones.withUnsafeBufferPointer { squaredNorm($0) }
        XCTAssertEqual(got, Double(n))  // exact known answer
    }

    /// Every non-finite kind at every position of every size (vector body and tail), against
    /// `isFinite`; the largest finite values, subnormals and signed zeros must pass.
    func testAllFinite() {
        let edges: [Float] = [.greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, -0.0, 0]
        let bad: [Float] = [.nan, -.nan, .infinity, -.infinity, .signalingNaN]
        for n in Self.sizes {
            var x = random(n, seed: 11 + UInt64(n))
            for (i, e) in edges.enumerated() where i < n { x[(i * 97) % n] = e }
            XCTAssertTrue(x.withUnsafeBufferPointer(allFinite), "n=\(n)")
            for position in Set([0, n / 2, n - 1].filter { $0 >= 0 && n > 0 }) {
                for value in bad {
                    var y = x
                    y[position] = value
                    XCTAssertEqual(
                        y.withUnsafeBufferPointer(allFinite), y.allSatisfy(\.isFinite), "n=\(n) at \(position): \(value)")
                    XCTAssertFalse(y.withUnsafeBufferPointer(allFinite), "n=\(n) at \(position): \(value)")
                }
            }
        }
    }

    func testReluBackward() {
        for n in Self.sizes {
            let x = random(n, seed: 6 + UInt64(n)), dy = random(n, seed: 7 + UInt64(n))
            let y = x.map { max($0, 0) }  // the ReLU output (forward is fused into BatchNorm)
            var dx = [Float](repeating: .nan, count: n)
            y.withUnsafeBufferPointer { yp in
                dy.withUnsafeBufferPointer { dyp in
                    dx.withUnsafeMutableBufferPointer { reluBackward(output: yp, dyp, $0) }
                }
            }
            // Exact: select is an exact operation.
            for i in 0..<n { XCTAssertEqual(dx[i], x[i] > 0 ? dy[i] : 0) }
            // In place, as the MLP uses it.
            var g = dy
            y.withUnsafeBufferPointer { yp in
                g.withUnsafeMutableBufferPointer { reluBackward(output: yp, UnsafeBufferPointer($0), $0) }
            }
            XCTAssertEqual(g, dx)
        }
    }

    func testAddRowVectorAndColumnSums() {
        for (rows, cols) in [(1, 1), (3, 7), (37, 1000), (5, 257)] {
            let x0 = random(rows * cols, seed: UInt64(rows * 31 + cols)), bias = random(cols, seed: 9)
            var x = x0
            bias.withUnsafeBufferPointer { bp in
                x.withUnsafeMutableBufferPointer { addRowVector(bp, to: $0.baseAddress!, rows: rows) }
            }
            // One fp32 add per element: half an ulp of the result's magnitude bound.
            for r in 0..<rows {
                for c in 0..<cols {
                    let want = Double(x0[r * cols + c]) + Double(bias[c])
                    XCTAssertEqual(
                        Double(x[r * cols + c]), want, accuracy: 1.2e-7 * (abs(Double(x0[r * cols + c])) + abs(Double(bias[c]))))
                }
            }
            // Column sums accumulate (+=) in Double: exact for these few terms up to Double rounding.
            var sums = [Double](repeating: 0.5, count: cols)
            x0.withUnsafeBufferPointer { xp in
                sums.withUnsafeMutableBufferPointer {
                    accumulateColumnSums(xp.baseAddress!, rows: rows, cols: cols, into: $0.baseAddress!)
                }
            }
            for c in 0..<cols {
                var want = 0.5
                for r in 0..<rows { want += Double(x0[r * cols + c]) }
                XCTAssertEqual(sums[c], want, accuracy: 1e-12 * Double(rows + 1))
            }
        }
    }
}
