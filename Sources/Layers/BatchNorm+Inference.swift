import TensorCore

/// The inference forward (running statistics) and the per-channel affine and epsilons it shares
/// with training.
extension BatchNorm {
    /// Inference forward with the running statistics; no cache, no communication.
    public func inference(_ x: Matrix, _ y: Matrix, _ p: ParameterStore, buffers: FlatBuffer, relu: Bool = false) {
        let eps = channelEpsilons(p)
        let rm = buffers.slice(runningMean.range), rv = buffers.slice(runningVar.range)
        let mean = Array(rm)
        let inv = (0..<channels).map { j -> Float in
            let s2 = Double(rv[j]) + eps[j]
            return s2 > 0 ? Float(1 / s2.squareRoot()) : 0
        }
        affine(x, y, xhat: nil, mean: mean, invStd: inv, p, relu: relu)
    }

    /// `y = max(gamma * xhat + beta, relu ? 0 : -inf)`, or with `residual`, `max(gamma * xhat + beta + residual, 0)`.
    func affine(
        _ x: Matrix, _ y: Matrix, xhat: Matrix?, mean: [Float], invStd inv: [Float], _ p: ParameterStore, relu: Bool,
        residual: Matrix? = nil
    ) {
        precondition(x.cols == channels && y.cols == channels && x.rows == y.rows, "BatchNorm forward shape mismatch")
        let g = p.value(gamma).baseAddress!, b = p.value(beta).baseAddress!
        let c = channels
        let floor: Float = relu || residual != nil ? 0 : -.infinity  // max(v, -inf) = v: one loop for both
        mean.withUnsafeBufferPointer { mu in
            inv.withUnsafeBufferPointer { s in
                let mu = mu.baseAddress!, s = s.baseAddress!
                // one loop per combination, each specialized by the inlined row kernel
                switch (xhat, residual) {
                case let (xhat?, residual?):
                    for r in 0..<x.rows {
                        Self.affineRow(
                            UnsafePointer(x.row(r)), y.row(r), xhat: xhat.row(r), residual: UnsafePointer(residual.row(r)),
                            mean: mu, invStd: s, gamma: g, beta: b, floor: floor, count: c)
                    }
                case let (xhat?, nil):
                    for r in 0..<x.rows {
                        Self.affineRow(
                            UnsafePointer(x.row(r)), y.row(r), xhat: xhat.row(r), residual: nil, mean: mu, invStd: s,
                            gamma: g, beta: b, floor: floor, count: c)
                    }
                case let (nil, residual?):
                    for r in 0..<x.rows {
                        Self.affineRow(
                            UnsafePointer(x.row(r)), y.row(r), xhat: nil, residual: UnsafePointer(residual.row(r)),
                            mean: mu, invStd: s, gamma: g, beta: b, floor: floor, count: c)
                    }
                case (nil, nil):
                    for r in 0..<x.rows {
                        Self.affineRow(
                            UnsafePointer(x.row(r)), y.row(r), xhat: nil, residual: nil, mean: mu, invStd: s, gamma: g,
                            beta: b, floor: floor, count: c)
                    }
                }
            }
        }
    }

    /// One row of `affine`: `h = (x - mean) * invStd` (stored when `xhat` is given),
    /// `y = max(gamma * h + beta (+ residual), floor)`.
    @inline(__always)
    static func affineRow(
        _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, xhat: UnsafeMutablePointer<Float>?,
        residual: UnsafePointer<Float>?, mean mu: UnsafePointer<Float>, invStd s: UnsafePointer<Float>,
        gamma g: UnsafePointer<Float>, beta b: UnsafePointer<Float>, floor: Float, count c: Int
    ) {
        let f4 = SIMD4<Float>(repeating: floor)
        var j = 0
        while j &+ 4 <= c {
            let h = (loadFloat4(x + j) - loadFloat4(mu + j)) * loadFloat4(s + j)
            if let xhat { storeFloat4(h, xhat + j) }
            var v = loadFloat4(g + j) * h + loadFloat4(b + j)
            if let residual { v += loadFloat4(residual + j) }
            storeFloat4(v.replacing(with: f4, where: f4 .>= v), y + j)  // Swift.max(v, floor), ties to floor
            j &+= 4
        }
        while j < c {
            let h = (x[j] - mu[j]) * s[j]
            xhat?[j] = h
            var v = g[j] * h + b[j]
            if let residual { v += residual[j] }
            y[j] = Swift.max(v, floor)
            j &+= 1
        }
    }

    /// The epsilon inference adds to each channel's running variance, for the current weights.
    public func inferenceEpsilons(_ p: ParameterStore) -> [Double] { channelEpsilons(p) }

    /// eps_c per channel for the current weights; `saving` (a training forward) keeps ||w_c||^2 and
    /// q for backward, and takes the norms the last update kept when there are some.
    func channelEpsilons(_ p: ParameterStore, saving: Bool = false) -> [Double] {
        switch epsilonMode {
        case .zero: return [Double](repeating: 0, count: channels)
        case .standard: return [Double](repeating: epsilon, count: channels)
        case .scaled:
            let w = incomingWeight!
            let fanIn = w.count / channels  // [C, in] or a conv's [C, k, k, in]
            let kept = saving ? p.takeRowSquaredNorms(of: w) : nil
            let norms = kept ?? (0..<channels).map { p.rowSquaredNorm(w, row: $0, rowLength: fanIn) }
            var q = 1.0
            if let previousAffine {
                q =
                    (squaredNorm(UnsafeBufferPointer(p.value(previousAffine.gamma)))
                        + squaredNorm(UnsafeBufferPointer(p.value(previousAffine.beta)))) / Double(previousAffine.gamma.count)
            }
            if saving {
                rowNorms = norms
                inputScale = q
            }
            return norms.map { epsilon * $0 * q }
        }
    }
}
