import TensorCore

/// Fused passes for the conv units: BN backward sums and input gradients that also take the
/// ReLU mask, so a conv unit reads its activations once.
extension BatchNorm {
    /// Phase 1 of the backward of a `forward(..., relu: true)`, with the ReLU's backward fused in:
    /// `dy` is the gradient of the ReLU output max(y, 0), and is not modified. The ReLU passed where
    /// gamma * xhat + beta > 0, recomputed from the cache with the forward's Float expressions,
    /// so the decision is the one the stored output would give; gamma and beta must not have changed
    /// since the forward. Returns the local sums.
    func reluBackwardSums(_ dy: Matrix, _ p: ParameterStore) -> [Double] {
        precondition(lastReLU, "BatchNorm ReLU backward after a forward without ReLU")
        var local = [Double](repeating: 0, count: backwardSumsCount)
        local.withUnsafeMutableBufferPointer { accumulateBackwardSums(dy, into: $0, p: p) }
        return local
    }

    /// Phase 1 of the backward of a BN whose output went through a ReLU elsewhere (after a residual
    /// sum, see `normalize(addingReLU:)`): `dy` becomes `reluOutput > 0 ? dy : 0`, written back, in
    /// the same pass that sums it. Returns the local sums.
    func maskedBackwardSums(_ dy: Matrix, reluOutput: Matrix) -> [Double] {
        precondition(
            dy.rows == rows && dy.cols == channels && reluOutput.rows == rows && reluOutput.cols == channels,
            "BatchNorm backward shape mismatch (was forward run on this batch?)")
        var local = [Double](repeating: 0, count: backwardSumsCount)
        let hat = UnsafePointer(xhat.storage.pointer), c = channels, mask = UnsafePointer(reluOutput.base)
        let centered = cacheHoldsInput ? (UnsafePointer(centering), UnsafePointer(centering + c)) : nil
        local.withUnsafeMutableBufferPointer { s in
            sumByChunk(into: s) { block, sdy, sdyx in
                if let centered {
                    Self.backwardSums(
                        dy.base, hat, block, c, centered: centered, relu: nil, reluOutput: mask, acc: blockSums, sdy, sdyx)
                } else {
                    Self.backwardSums(
                        dy.base, hat, block, c, centered: nil, relu: nil, reluOutput: mask, acc: blockSums, sdy, sdyx)
                }
            }
        }
        return local
    }

    /// Phase 2 in pieces, so that each piece of dx can be consumed while in cache: sets the
    /// coefficients (and d gamma, d beta, eps terms) as `finishBackward` does; then
    /// `inputGradient(rows:...)` writes the rows of dx.
    func beginInputGradient(globalSums: [Double], localSums: [Double], _ p: ParameterStore) {
        beginInputGradient(globalSums: globalSums, localSums: localSums, p, deferEpsilonGradient: true)
    }

    /// Rows `range` of dx after `beginInputGradient`; `relu`: `dy` is the gradient of the ReLU output
    /// (as in `reluBackwardSums`).
    func inputGradient(rows range: Range<Int>, _ dy: Matrix, _ dx: Matrix, _ p: ParameterStore, relu: Bool) {
        precondition(
            dy.rows == rows && dx.rows == rows && dy.cols == channels && dx.cols == channels
                && range.lowerBound >= 0 && range.upperBound <= rows,
            "BatchNorm backward shape mismatch")
        precondition(!relu || lastReLU, "BatchNorm ReLU backward after a forward without ReLU")
        inputGradientRows(range, dy, dx, relu: relu ? p : nil)
    }
}
