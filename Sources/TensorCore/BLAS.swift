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

    /// Sets the number of threads OpenBLAS uses in this process. Under `mpirun` each rank should
    /// use the cores bound to it (one on a 2-core machine with 2 ranks); see platform-notes.
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
