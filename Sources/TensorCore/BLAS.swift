import COpenBLAS

/// The only file that calls BLAS. Row-major single-precision GEMM and the thread-count control.
public enum BLAS {
    public enum Transpose: Sendable { case none, transposed }

    /// `C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C`, all row-major with leading
    /// dimensions `lda`, `ldb`, `ldc`. An empty product (`k == 0`) still scales `C` by `beta`.
    @inlinable
    public static func gemm(
        _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0 && n > 0 else { return }
        if k == 0 {
            // beta = 0 means C is output only (BLAS convention): set it, don't scale possible NaN garbage.
            for i in 0..<m {
                let row = UnsafeMutableBufferPointer(start: c + i &* ldc, count: n)
                if beta == 0 { zero(row) } else { scale(row, by: beta) }
            }
            return
        }
        cblas_sgemm(
            CblasRowMajor, transA == .none ? CblasNoTrans : CblasTrans,
            transB == .none ? CblasNoTrans : CblasTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    // MARK: summation-order checks (deterministic mode)
    //
    // OpenBLAS documents no summation order. Deterministic training relies on two properties, which
    // hold when each element of C is one chain of products over k (OpenBLAS splits only M and N
    // between threads, and k only beyond its k-block): they are checked once per shape, on random
    // data, in this process with its thread count, and a caller falls back to the slower exact
    // path when a check fails. A different order would change the bits of random data almost surely.

    /// A checked shape: the kind of check, the GEMM's shape, and the thread count it ran with.
    private struct CheckedShape: Hashable {
        let sum: Bool
        let transA: Transpose, transB: Transpose
        let m: Int, n: Int, k: Int
        let split: [Int]
        let threads: Int
    }
    nonisolated(unsafe) private static var checked: [CheckedShape: Bool] = [:]

    /// Whether `C = op(A1) op(B1)` (beta 0) followed by `C += op(A2) op(B2)` (beta 1) gives
    /// exactly the Float sum of the two products computed apart, for this shape.
    public static func accumulationIsExactSum(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int) -> Bool {
        guard m > 0 && n > 0 && k > 0 else { return true }
        let key = CheckedShape(sum: true, transA: transA, transB: transB, m: m, n: n, k: k, split: [], threads: threads)
        if let known = checked[key] { return known }
        var rng = SplitMix64(seed: 0x5EED)
        let a1 = randomMatrix(m * k, &rng), b1 = randomMatrix(k * n, &rng)
        let a2 = randomMatrix(m * k, &rng), b2 = randomMatrix(k * n, &rng)
        let lda = transA == .none ? k : m, ldb = transB == .none ? n : k
        var apart = [Float](repeating: 0, count: m * n), second = apart, fused = apart
        gemm(transA, transB, m: m, n: n, k: k, a: a1, lda: lda, b: b1, ldb: ldb, beta: 0, c: &apart, ldc: n)
        gemm(transA, transB, m: m, n: n, k: k, a: a2, lda: lda, b: b2, ldb: ldb, beta: 0, c: &second, ldc: n)
        for i in 0..<apart.count { apart[i] = apart[i] + second[i] }
        gemm(transA, transB, m: m, n: n, k: k, a: a1, lda: lda, b: b1, ldb: ldb, beta: 0, c: &fused, ldc: n)
        gemm(transA, transB, m: m, n: n, k: k, a: a2, lda: lda, b: b2, ldb: ldb, beta: 1, c: &fused, ldc: n)
        let exact = bitwiseEqual(apart, fused)
        checked[key] = exact
        return exact
    }

    /// Whether each row of `C = A op(B)` (A `[m, k]`) is the same whether computed in one call or
    /// in calls of `split` rows, for this shape: then a batch's rows do not depend on how many
    /// ranks share the batch.
    public static func rowsIndependentOfSplit(_ transB: Transpose, m: Int, split: [Int], n: Int, k: Int) -> Bool {
        guard m > 0 && n > 0 && k > 0 else { return true }
        precondition(split.reduce(0, +) == m, "split \(split) does not add up to \(m) rows")
        let key = CheckedShape(sum: false, transA: .none, transB: transB, m: m, n: n, k: k, split: split, threads: threads)
        if let known = checked[key] { return known }
        var rng = SplitMix64(seed: 0x5EED)
        let a = randomMatrix(m * k, &rng), b = randomMatrix(k * n, &rng)
        let ldb = transB == .none ? n : k
        var whole = [Float](repeating: 0, count: m * n), parts = whole
        gemm(.none, transB, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: ldb, beta: 0, c: &whole, ldc: n)
        var start = 0
        a.withUnsafeBufferPointer { a in
            parts.withUnsafeMutableBufferPointer { c in
                for rows in split {
                    gemm(
                        .none, transB, m: rows, n: n, k: k, a: a.baseAddress! + start * k, lda: k, b: b, ldb: ldb,
                        beta: 0, c: c.baseAddress! + start * n, ldc: n)
                    start += rows
                }
            }
        }
        let same = bitwiseEqual(whole, parts)
        checked[key] = same
        return same
    }

    private static func randomMatrix(_ count: Int, _ rng: inout SplitMix64) -> [Float] {
        (0..<count).map { _ in Float(rng.uniform() * 2 - 1) }
    }

    private static func bitwiseEqual(_ a: [Float], _ b: [Float]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
    }

    /// Sets the number of threads OpenBLAS uses in this process. Under `mpirun` each rank should
    /// use the cores bound to it (one on a 2-core machine with 2 ranks).
    public static func setThreads(_ count: Int) {
        openblas_set_num_threads(Int32(count))
    }

    /// The number of threads OpenBLAS will use.
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// The kernel family OpenBLAS chose for this CPU, e.g. "SkylakeX" or "Prescott" (the slow
    /// fallback when it does not recognise the CPU; see launch/common.sh).
    public static var coreName: String {
        guard let c = openblas_get_corename() else { return "unknown" }
        return String(cString: c)
    }

}
