import XCTest
import TensorCore

/// `BLAS.gemm` against a Double triple loop for every transpose combination and both betas.
final class GemmTests: XCTestCase {
    /// Reference `C = alpha * op(A) op(B) + beta * C` in Double, row-major with leading dimensions.
    private func reference(
        _ ta: BLAS.Transpose, _ tb: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Double,
        a: [Float], lda: Int, b: [Float], ldb: Int, beta: Double, c: [Float], ldc: Int
    ) -> [Double] {
        var out = c.map(Double.init)
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k {
                    let av = ta == .none ? a[i * lda + p] : a[p * lda + i]
                    let bv = tb == .none ? b[p * ldb + j] : b[j * ldb + p]
                    s += Double(av) * Double(bv)
                }
                out[i * ldc + j] = alpha * s + (beta == 0 ? 0 : beta * Double(c[i * ldc + j]))
            }
        }
        return out
    }

    private func randomArray(_ n: Int, _ rng: inout SplitMix64) -> [Float] {
        (0..<n).map { _ in Float(rng.normal()) }
    }

    func testAllTransposeCombinationsAndBetas() {
        var rng = SplitMix64(seed: 11)
        let shapes = [(m: 1, n: 1, k: 1), (m: 7, n: 5, k: 3), (m: 13, n: 17, k: 33), (m: 64, n: 9, k: 129)]
        for (m, n, k) in shapes {
            for ta in [BLAS.Transpose.none, .transposed] {
                for tb in [BLAS.Transpose.none, .transposed] {
                    for beta: Float in [0, 1] {
                        // Padded leading dimensions (+2) so a wrong lda/ldb/ldc use shows up.
                        let aRows = ta == .none ? m : k, aCols = ta == .none ? k : m
                        let bRows = tb == .none ? k : n, bCols = tb == .none ? n : k
                        let lda = aCols + 2, ldb = bCols + 2, ldc = n + 2
                        let a = randomArray(aRows * lda, &rng), b = randomArray(bRows * ldb, &rng)
                        let c0 = randomArray(m * ldc, &rng)
                        let alpha: Float = 0.75
                        var c = c0
                        a.withUnsafeBufferPointer { ap in
                            b.withUnsafeBufferPointer { bp in
                                c.withUnsafeMutableBufferPointer { cp in
                                    BLAS.gemm(
                                        ta, tb, m: m, n: n, k: k, alpha: alpha, a: ap.baseAddress!, lda: lda,
                                        b: bp.baseAddress!, ldb: ldb, beta: beta, c: cp.baseAddress!, ldc: ldc)
                                }
                            }
                        }
                        let want = reference(
                            ta, tb, m: m, n: n, k: k, alpha: Double(alpha), a: a, lda: lda,
                            b: b, ldb: ldb, beta: Double(beta), c: c0, ldc: ldc)
                        // fp32 GEMM: error grows like k * 2^-24 times the sum of |terms|; compare
                        // relative to that scale (plus |beta*c|), tolerance 1e-5.
                        for i in 0..<m {
                            for j in 0..<n {
                                var mag = Double(abs(beta * c0[i * ldc + j]))
                                for p in 0..<k {
                                    let av = ta == .none ? a[i * lda + p] : a[p * lda + i]
                                    let bv = tb == .none ? b[p * ldb + j] : b[j * ldb + p]
                                    mag += abs(Double(alpha) * Double(av) * Double(bv))
                                }
                                let err = abs(Double(c[i * ldc + j]) - want[i * ldc + j])
                                XCTAssertLessThanOrEqual(
                                    err, 1e-5 * max(mag, 1e-30),
                                    "gemm \(ta) \(tb) beta \(beta) m\(m) n\(n) k\(k) at (\(i),\(j))")
                            }
                            // Padding columns of C must be untouched.
                            for j in n..<ldc { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j]) }
                        }
                    }
                }
            }
        }
    }

    /// beta = 0 means C is output only (BLAS convention): NaN garbage in C must not leak into the result.
    /// Exact answer: product of small integers, exactly representable.
    func testBetaZeroIgnoresGarbageInC() {
        let a: [Float] = [1, 2, 3, 4]  // [2, 2]
        let b: [Float] = [5, 6, 7, 8]  // [2, 2]
        var c = [Float](repeating: .nan, count: 4)
        BLAS.gemm(.none, .none, m: 2, n: 2, k: 2, a: a, lda: 2, b: b, ldb: 2, beta: 0, c: &c, ldc: 2)
        XCTAssertEqual(c, [19, 22, 43, 50])
    }

    /// An empty product (k = 0) gives beta * C: zero for beta 0 even when C holds NaN, C itself for beta 1.
    func testEmptyProduct() {
        let a: [Float] = [0], b: [Float] = [0]
        var c = [Float](repeating: .nan, count: 6)
        BLAS.gemm(.none, .none, m: 2, n: 3, k: 0, a: a, lda: 1, b: b, ldb: 3, beta: 0, c: &c, ldc: 3)
        XCTAssertEqual(c, [Float](repeating: 0, count: 6))
        var d: [Float] = [1, 2, 3, 4, 5, 6]
        BLAS.gemm(.transposed, .none, m: 2, n: 3, k: 0, a: a, lda: 2, b: b, ldb: 3, beta: 1, c: &d, ldc: 3)
        XCTAssertEqual(d, [1, 2, 3, 4, 5, 6])
    }

    /// Deterministic mode's check of the fused (beta 1) tree addition: exact for one product per
    /// element whatever the BLAS, and found inexact when k exceeds OpenBLAS's k-block (the product
    /// is then itself added to C in pieces), so the check can fail and the exact path is taken.
    func testFusedAccumulationCheckTellsExactFromSplit() {
        XCTAssertTrue(BLAS.accumulationIsExactSum(.transposed, .none, m: 8, n: 8, k: 1))
        XCTAssertFalse(BLAS.accumulationIsExactSum(.transposed, .none, m: 16, n: 16, k: 8192))
        // rows of one call and of a split agree trivially for a single row per call
        XCTAssertTrue(BLAS.rowsIndependentOfSplit(.transposed, m: 3, split: [1, 1, 1], n: 4, k: 1))
    }
}
