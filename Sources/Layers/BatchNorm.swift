import TensorCore

/// How the BN denominator `sqrt(var + eps_c)` gets its epsilon (paper.md §2, "BN epsilon").
public enum EpsilonMode: String, Sendable, CaseIterable {
    /// `eps_c = 0`: exactly scale-invariant; a channel with zero variance outputs beta.
    case zero
    /// `eps_c = eps * ||w_c||^2 * q`: `w_c` is the channel's incoming weight row, and q is the mean of
    /// gamma^2 + beta^2 of the BN whose ReLU output feeds that weight (1 for the first layer). eps_c
    /// then scales exactly like the variance when either the weight or the previous BN's
    /// (gamma, beta) is multiplied by c > 0, so both kinds of SI group stay exactly scale-invariant.
    case scaled
    /// `eps_c = eps`: the usual BN; breaks exact scale invariance when ||w|| is small.
    case standard
}

/// Sums per-channel statistics over the ranks that share a batch (synchronized BN), or does nothing
/// (per-rank statistics). Implemented by the training layer with a communicator, so this module
/// needs no MPI.
public protocol StatisticsReducer {
    /// Collective when synchronized: replaces each value by its sum over the ranks.
    func sumAcrossRanks(_ values: UnsafeMutableBufferPointer<Double>) throws
}

/// Where the `.scaled`-epsilon radial weight gradient goes (see `BatchNorm.applyEpsilonGradient`).
public enum RadialDeferral: Sendable {
    /// Added to the gradient buffer at once.
    case none
    /// Kept as per-row coefficients from the global sums, identical on every rank.
    case global
    /// Kept as per-row coefficients from this rank's sums; to be summed over ranks.
    case local
}

/// Statistics of this process only (plain DDP's BN, and every single-process run).
public struct LocalStatistics: StatisticsReducer {
    public init() {}
    public func sumAcrossRanks(_ values: UnsafeMutableBufferPointer<Double>) throws {}
}

/// Batch normalization over features, `x: [batch, channels]`, in training mode over the *global*
/// batch when the reducer is synchronized:
/// ```
/// y = gamma * (x - mean) / sqrt(var + eps_c) + beta,   var biased (divided by the global count N)
/// ```
/// Forward reduces one buffer of `2C + 1` doubles: (N, sum(x - K), sum((x - K)^2)) per channel, with the
/// shift K = running mean, identical on every rank, so the Double sums lose nothing to cancellation and
/// unequal (or zero) per-rank counts combine exactly. Backward reduces `2C` doubles:
/// (sum dy, sum dy * xhat). Parameter gradients are accumulated from *local* sums, because the
/// gradient allreduce sums them over ranks afterwards.
public final class BatchNorm {
    public let channels: Int
    public let gamma: TensorSpec
    public let beta: TensorSpec
    public let runningMean: TensorSpec
    public let runningVar: TensorSpec
    public let epsilonMode: EpsilonMode
    public let epsilon: Double
    public let momentum: Double
    /// While not nil, training forwards set the running statistics to the plain average of their
    /// batch statistics (this counts them) instead of the exponential average: "precise BN", used to
    /// recompute the statistics for the final weights (see `Trainer.recalibrateBatchNorm`).
    public var averagedBatches: Int?
    /// The `[channels, ...]` weight feeding this BN (a Linear's `[C, in]`, a conv's `[C, k, k, in]`); its row norms set `eps_c` in `.scaled` mode, and
    /// receives the gradient through `eps_c`.
    public let incomingWeight: TensorSpec?
    /// (gamma, beta) of the BN whose ReLU output is this layer's input (`.scaled` mode), if any.
    public let previousAffine: (gamma: TensorSpec, beta: TensorSpec)?

    // Cache of the last training forward, read by backward.
    private let xhat: ActivationBuffer
    private var invStd: [Float]
    private var denominator: [Double]  // s_c^2 = var + eps_c
    private var rowNorms: [Double]  // ||w_c||^2 (.scaled)
    private var inputScale = 1.0  // q (.scaled)
    private var epsilonGradient: [Double]  // dL/d eps_c from local sums (.scaled)
    private var globalEpsilonGradient: [Double]  // dL/d eps_c from global sums (.scaled)
    private var globalCount = 0.0
    private var rows = 0

    public init(
        channels: Int, gamma: TensorSpec, beta: TensorSpec, runningMean: TensorSpec, runningVar: TensorSpec,
        epsilonMode: EpsilonMode, epsilon: Double, momentum: Double = 0.1,
        incomingWeight: TensorSpec?, previousAffine: (gamma: TensorSpec, beta: TensorSpec)? = nil,
        maxBatch: Int
    ) {
        precondition(
            epsilonMode != .scaled || incomingWeight?.shape.first == channels,
            "scaled epsilon needs the [\(channels), in] weight feeding the BN")
        self.channels = channels
        self.gamma = gamma
        self.beta = beta
        self.runningMean = runningMean
        self.runningVar = runningVar
        self.epsilonMode = epsilonMode
        self.epsilon = epsilon
        self.momentum = momentum
        self.incomingWeight = incomingWeight
        self.previousAffine = previousAffine
        rowNorms = [Double](repeating: 0, count: channels)
        epsilonGradient = [Double](repeating: 0, count: channels)
        globalEpsilonGradient = [Double](repeating: 0, count: channels)
        xhat = ActivationBuffer(maxRows: maxBatch, cols: channels)
        invStd = [Float](repeating: 1, count: channels)
        denominator = [Double](repeating: 1, count: channels)
    }

    /// PyTorch's initial state: gamma = 1, beta = 0, running mean 0, running variance 1.
    public func reset(_ p: ParameterStore, buffers: FlatBuffer) {
        p.value(gamma).update(repeating: 1)
        p.value(beta).update(repeating: 0)
        buffers.slice(runningMean.range).update(repeating: 0)
        buffers.slice(runningVar.range).update(repeating: 1)
    }

    /// Length of the moments buffer: count, then C shifted sums, then C shifted sums of squares.
    public var momentsCount: Int { 2 * channels + 1 }
    /// Length of the backward sums buffer: C sums of dy, then C sums of dy * xhat.
    public var backwardSumsCount: Int { 2 * channels }

    // MARK: training forward

    /// Training forward: local moments, reduction across ranks, normalization, running-stat update.
    /// - Parameter relu: apply ReLU to the output in the same pass (y = max(BN(x), 0)).
    public func forward(
        _ x: Matrix, _ y: Matrix, _ p: ParameterStore, buffers: FlatBuffer,
        reducer: StatisticsReducer, relu: Bool = false
    ) throws {
        var moments = [Double](repeating: 0, count: momentsCount)
        try moments.withUnsafeMutableBufferPointer { m in
            accumulateMoments(x, into: m, buffers: buffers)
            try reducer.sumAcrossRanks(m)
            normalize(x, y, moments: UnsafeBufferPointer(m), p, buffers: buffers, relu: relu)
        }
    }

    /// Phase 1: adds this rank's (count, sum(x - K), sum((x - K)^2)) to `m`.
    public func accumulateMoments(_ x: Matrix, into m: UnsafeMutableBufferPointer<Double>, buffers: FlatBuffer) {
        precondition(x.cols == channels && m.count == momentsCount, "BatchNorm moments shape mismatch")
        let shift = buffers.slice(runningMean.range).baseAddress!
        let s1 = m.baseAddress! + 1, s2 = m.baseAddress! + 1 + channels
        m[0] += Double(x.rows)
        let c = channels
        for r in 0..<x.rows {
            let row = x.row(r)
            for j in 0..<c {
                let d = Double(row[j] - shift[j])
                s1[j] += d
                s2[j] += d * d
            }
        }
    }

    /// Phase 2: normalizes with the global moments, caches xhat, updates the running statistics.
    public func normalize(
        _ x: Matrix, _ y: Matrix, moments m: UnsafeBufferPointer<Double>,
        _ p: ParameterStore, buffers: FlatBuffer, relu: Bool = false
    ) {
        let n = m[0]
        precondition(n > 0, "BatchNorm in training mode needs at least one sample in the global batch")
        let shift = buffers.slice(runningMean.range), runVar = buffers.slice(runningVar.range)
        let eps = channelEpsilons(p, saving: true)
        var mean = [Float](repeating: 0, count: channels)
        let momentum = averagedBatches.map { 1 / Double($0 + 1) } ?? self.momentum
        averagedBatches = averagedBatches.map { $0 + 1 }
        for j in 0..<channels {
            let meanShifted = m[1 + j] / n
            let variance = Swift.max(m[1 + channels + j] / n - meanShifted * meanShifted, 0)
            let s2 = variance + eps[j]
            denominator[j] = s2
            invStd[j] = s2 > 0 ? Float(1 / s2.squareRoot()) : 0
            let batchMean = Double(shift[j]) + meanShifted
            mean[j] = Float(batchMean)
            // running statistics: same inputs on every rank, so the same result on every rank
            let unbiased = n > 1 ? variance * n / (n - 1) : variance
            shift[j] = Float((1 - momentum) * Double(shift[j]) + momentum * batchMean)
            runVar[j] = Float((1 - momentum) * Double(runVar[j]) + momentum * unbiased)
        }
        globalCount = n
        rows = x.rows
        let xh = xhat.matrix(rows: x.rows)
        affine(x, y, xhat: xh, mean: mean, invStd: invStd, p, relu: relu)
    }

    // MARK: inference forward

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

    private func affine(
        _ x: Matrix, _ y: Matrix, xhat: Matrix?, mean: [Float], invStd inv: [Float], _ p: ParameterStore, relu: Bool
    ) {
        precondition(x.cols == channels && y.cols == channels && x.rows == y.rows, "BatchNorm forward shape mismatch")
        let g = p.value(gamma).baseAddress!, b = p.value(beta).baseAddress!
        let c = channels
        let floor: Float = relu ? 0 : -.infinity  // max(v, -inf) = v: one loop for both
        mean.withUnsafeBufferPointer { mu in
            inv.withUnsafeBufferPointer { s in
                for r in 0..<x.rows {
                    let xr = x.row(r), yr = y.row(r)
                    if let xhat {
                        let hr = xhat.row(r)
                        for j in 0..<c {
                            let h = (xr[j] - mu[j]) * s[j]
                            hr[j] = h
                            yr[j] = Swift.max(g[j] * h + b[j], floor)
                        }
                    } else {
                        for j in 0..<c { yr[j] = Swift.max(g[j] * ((xr[j] - mu[j]) * s[j]) + b[j], floor) }
                    }
                }
            }
        }
    }

    /// eps_c per channel for the current weights; `saving` keeps ||w_c||^2 and q for backward.
    private func channelEpsilons(_ p: ParameterStore, saving: Bool = false) -> [Double] {
        switch epsilonMode {
        case .zero: return [Double](repeating: 0, count: channels)
        case .standard: return [Double](repeating: epsilon, count: channels)
        case .scaled:
            let w = p.value(incomingWeight!)
            let fanIn = incomingWeight!.count / channels  // [C, in] or a conv's [C, k, k, in]
            let norms = (0..<channels).map { j in
                squaredNorm(UnsafeBufferPointer(rebasing: w[j * fanIn..<(j + 1) * fanIn]))
            }
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

    // MARK: backward

    /// Backward of the last training forward: reduces (sum dy, sum dy*xhat), writes `dx`, accumulates
    /// d gamma, d beta (and the incoming weight's gradient through eps_c in `.scaled` mode).
    public func backward(
        _ dy: Matrix, _ dx: Matrix, _ p: ParameterStore, reducer: StatisticsReducer,
        deferEpsilonGradient: Bool = false
    ) throws {
        var local = [Double](repeating: 0, count: backwardSumsCount)
        local.withUnsafeMutableBufferPointer { accumulateBackwardSums(dy, into: $0) }
        var global = local
        try global.withUnsafeMutableBufferPointer { try reducer.sumAcrossRanks($0) }
        finishBackward(dy, dx, globalSums: global, localSums: local, p, deferEpsilonGradient: deferEpsilonGradient)
    }

    /// Phase 1 of backward: adds this rank's (sum dy, sum dy * xhat) per channel to `s`.
    public func accumulateBackwardSums(_ dy: Matrix, into s: UnsafeMutableBufferPointer<Double>) {
        precondition(
            dy.rows == rows && dy.cols == channels && s.count == backwardSumsCount,
            "BatchNorm backward shape mismatch (was forward run on this batch?)")
        let xh = xhat.matrix(rows: rows)
        let sdy = s.baseAddress!, sdyx = s.baseAddress! + channels
        let c = channels
        for r in 0..<rows {
            let d = dy.row(r), h = xh.row(r)
            for j in 0..<c {
                sdy[j] += Double(d[j])
                sdyx[j] += Double(d[j] * h[j])
            }
        }
    }

    /// Phase 2 of backward:
    /// ```
    /// dx = gamma / s * (dy - sum(dy)/N - xhat * sum(dy*xhat)/N)      (global sums)
    /// d gamma += sum(dy*xhat), d beta += sum(dy)                       (local sums)
    /// ```
    /// In `.scaled` mode eps_c = eps * ||w_c||^2 * q depends on parameters too; with
    /// dL/d eps_c = -gamma_c * sum(dy*xhat) / (2 s_c^2) (local sums):
    /// ```
    /// d w_c += 2 w_c * eps * q * dL/d eps_c
    /// d (gamma_p, beta_p) += 2 (gamma_p, beta_p) / C_p * sum_c eps * ||w_c||^2 * dL/d eps_c
    /// ```
    ///
    /// With `deferEpsilonGradient` the `.scaled`-mode terms are kept and added later by
    /// `applyEpsilonGradient`, so the caller can let the weight-gradient GEMM overwrite (not
    /// accumulate into) the gradient buffer, saving a pass that zeroes it.
    public func finishBackward(
        _ dy: Matrix, _ dx: Matrix, globalSums: [Double], localSums: [Double], _ p: ParameterStore,
        deferEpsilonGradient: Bool = false
    ) {
        precondition(dx.rows == rows && dx.cols == channels, "BatchNorm backward dx shape mismatch")
        let c = channels
        let g = p.value(gamma), dg = p.gradient(gamma), db = p.gradient(beta)
        var meanDy = [Float](repeating: 0, count: c), meanDyX = [Float](repeating: 0, count: c)
        var scaleX = [Float](repeating: 0, count: c)
        for j in 0..<c {
            meanDy[j] = Float(globalSums[j] / globalCount)
            meanDyX[j] = Float(globalSums[c + j] / globalCount)
            scaleX[j] = g[j] * invStd[j]
            db[j] += Float(localSums[j])
            dg[j] += Float(localSums[c + j])
        }
        let xh = xhat.matrix(rows: rows)
        meanDy.withUnsafeBufferPointer { a in
            meanDyX.withUnsafeBufferPointer { b in
                scaleX.withUnsafeBufferPointer { k in
                    for r in 0..<rows {
                        let d = dy.row(r), h = xh.row(r), o = dx.row(r)
                        for j in 0..<c { o[j] = k[j] * (d[j] - a[j] - h[j] * b[j]) }
                    }
                }
            }
        }
        if epsilonMode == .scaled {
            for j in 0..<c {
                let positive = denominator[j] > 0
                epsilonGradient[j] = positive ? -Double(g[j]) * localSums[c + j] / (2 * denominator[j]) : 0
                globalEpsilonGradient[j] = positive ? -Double(g[j]) * globalSums[c + j] / (2 * denominator[j]) : 0
            }
            if !deferEpsilonGradient { applyEpsilonGradient(p) }
        }
    }

    /// Adds the `.scaled`-mode gradient through eps_c (kept by the last `finishBackward`) to the
    /// incoming weight and to the previous BN's (gamma, beta). No-op in the other modes.
    ///
    /// - Parameter radial: `.none` adds every term to the gradients now. `.global` leaves the
    ///   incoming weight's term (radial, row by row) in `p.pendingRadial` for the update to apply,
    ///   computed from the global sums: valid when every rank normalizes with the same statistics
    ///   (synchronized BN, or one rank). `.local` leaves this rank's share of it, which the caller
    ///   must sum over ranks (per-rank statistics).
    public func applyEpsilonGradient(_ p: ParameterStore, radial: RadialDeferral = .none) {
        guard epsilonMode == .scaled, let incomingWeight else { return }
        let fanIn = incomingWeight.count / channels
        var dq = 0.0
        for j in 0..<channels { dq += epsilonGradient[j] * epsilon * rowNorms[j] }
        if radial != .none {
            let source = radial == .global ? globalEpsilonGradient : epsilonGradient
            let coefficients = source.map { Float(2 * epsilon * inputScale * $0) }
            p.pendingRadial.append(RadialGradient(tensor: incomingWeight, coefficients: coefficients))
        } else {
            let w = p.value(incomingWeight), dw = p.gradient(incomingWeight)
            for j in 0..<channels where epsilonGradient[j] != 0 {
                axpy(
                    Float(2 * epsilon * inputScale * epsilonGradient[j]),
                    UnsafeBufferPointer(rebasing: w[j * fanIn..<(j + 1) * fanIn]),
                    UnsafeMutableBufferPointer(rebasing: dw[j * fanIn..<(j + 1) * fanIn]))
            }
        }
        if let previousAffine {
            let factor = Float(2 * dq / Double(previousAffine.gamma.count))
            for spec in [previousAffine.gamma, previousAffine.beta] {
                axpy(factor, UnsafeBufferPointer(p.value(spec)), p.gradient(spec))
            }
        }
    }
}
