import TensorCore

/// `y = x W^T (+ b)`, with `W: [out, in]` (PyTorch's layout) and `x: [batch, in]`.
/// The weight gradient is accumulated into the gradient store or, with `accumulating: false`,
/// overwritten by its GEMM; the bias gradient is accumulated.
public struct Linear: Sendable {
    public let inFeatures: Int
    public let outFeatures: Int
    public let weight: TensorSpec
    public let bias: TensorSpec?

    public init(inFeatures: Int, outFeatures: Int, weight: TensorSpec, bias: TensorSpec?) {
        precondition(weight.shape == [outFeatures, inFeatures], "Linear weight must be [\(outFeatures), \(inFeatures)]")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.weight = weight
        self.bias = bias
    }

    /// One GEMM of `2 * batch * in * out` flops.
    public func forward(_ x: Matrix, _ y: Matrix, _ p: ParameterStore) {
        precondition(x.cols == inFeatures && y.cols == outFeatures && x.rows == y.rows, "Linear forward shape mismatch")
        BLAS.gemm(
            .none, .transposed, m: x.rows, n: outFeatures, k: inFeatures,
            a: x.base, lda: inFeatures, b: p.value(weight).baseAddress!, ldb: inFeatures,
            beta: 0, c: y.base, ldc: outFeatures)
        if let bias { addRowVector(UnsafeBufferPointer(p.value(bias)), to: y.base, rows: y.rows) }
    }

    /// `dW += dy^T x` (`dW = dy^T x` when not `accumulating`), `db += sum_rows dy`, and `dx = dy W`
    /// when `dx` is given (not for the first layer).
    public func backward(_ x: Matrix, _ dy: Matrix, _ dx: Matrix?, _ p: ParameterStore, accumulating: Bool = true) {
        precondition(x.rows == dy.rows && dy.cols == outFeatures, "Linear backward shape mismatch")
        BLAS.gemm(
            .transposed, .none, m: outFeatures, n: inFeatures, k: x.rows,
            a: dy.base, lda: outFeatures, b: x.base, ldb: inFeatures,
            beta: accumulating ? 1 : 0, c: p.gradient(weight).baseAddress!, ldc: inFeatures)
        if let bias {
            var sums = [Double](repeating: 0, count: outFeatures)
            sums.withUnsafeMutableBufferPointer {
                accumulateColumnSums(dy.base, rows: dy.rows, cols: outFeatures, into: $0.baseAddress!)
            }
            let g = p.gradient(bias)
            for c in 0..<outFeatures { g[c] += Float(sums[c]) }
        }
        if let dx {
            precondition(dx.rows == x.rows && dx.cols == inFeatures, "Linear backward dx shape mismatch")
            BLAS.gemm(
                .none, .none, m: dy.rows, n: inFeatures, k: outFeatures,
                a: dy.base, lda: outFeatures, b: p.value(weight).baseAddress!, ldb: inFeatures,
                beta: 0, c: dx.base, ldc: inFeatures)
        }
    }
}
