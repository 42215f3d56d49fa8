import TensorCore

/// How the BN denominator `sqrt(var + eps_c)` gets its epsilon (docs/theory.md).
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
    /// The chunks of the step (deterministic mode: sums per chunk, added in the fixed tree; the
    /// gamma and beta gradients from the global sums, as `ParameterStore.pendingTerms`). Shared by
    /// the network's layers.
    public var chunks = BatchChunks()
    /// The `[channels, ...]` weight feeding this BN (a Linear's `[C, in]`, a conv's `[C, k, k, in]`); its row norms set `eps_c` in `.scaled` mode, and
    /// receives the gradient through `eps_c`.
    public let incomingWeight: TensorSpec?
    /// (gamma, beta) of the BN whose ReLU output is this layer's input (`.scaled` mode), if any.
    public let previousAffine: (gamma: TensorSpec, beta: TensorSpec)?

    // Cache of the last training forward, read by backward: xhat, or (`cacheHoldsInput`) the input x
    // itself, written there by the layer before (see `inputBuffer`), with the mean and 1/s in
    // `centering`; backward then recomputes xhat = (x - mean) / s with the forward's expression.
    private let xhat: ActivationBuffer
    private var cacheHoldsInput = false
    private var invStd: [Float]
    private var denominator: [Double]  // s_c^2 = var + eps_c
    private var rowNorms: [Double]  // ||w_c||^2 (.scaled)
    private var inputScale = 1.0  // q (.scaled)
    private var epsilonGradient: [Double]  // dL/d eps_c from local sums (.scaled)
    private var globalEpsilonGradient: [Double]  // dL/d eps_c from global sums (.scaled)
    private var globalCount = 0.0
    private var rows = 0
    /// Whether the last training forward applied ReLU (for the fused ReLU backward).
    private var lastReLU = false
    /// Per-channel Float sums of one block of rows: `2 * channels` values (see `sumBlock`).
    private let blockSums: UnsafeMutablePointer<Float>
    /// Per-channel coefficients of the input gradient, set by `beginInputGradient`:
    /// sum(dy)/N, sum(dy*xhat)/N, gamma/s (`3 * channels` values; a pointer, not arrays held by the
    /// class, whose every element access would pay exclusivity and uniqueness checks).
    private let coefficients: UnsafeMutablePointer<Float>
    /// The mean and 1/s of the last training forward (`2 * channels` values), when `cacheHoldsInput`.
    private let centering: UnsafeMutablePointer<Float>

    /// Rows per block of the Float sums. A Float sum of B terms is off by at most (B - 1) * 2^-24
    /// (~9e-7 for B = 16) relative to the sum of their magnitudes, and in practice by ~sqrt(B) * 2^-25
    /// (~1e-7); each block's sums are added into Double, so the error does not grow with the row count.
    /// The moments are taken about the block's first row (a sample, within a few standard deviations
    /// of the mean), so the magnitudes are those of the spread, not of the mean: the variance keeps
    /// ~1e-6 relative accuracy whatever the offset of the data (a Float sum of squares about a distant
    /// shift would lose it to cancellation). Float lanes are twice as wide as Double lanes on SSE2.
    private static let sumBlock = 16

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
        blockSums = .allocate(capacity: 2 * channels)
        blockSums.initialize(repeating: 0, count: 2 * channels)
        coefficients = .allocate(capacity: 3 * channels)
        coefficients.initialize(repeating: 0, count: 3 * channels)
        centering = .allocate(capacity: 2 * channels)
        centering.initialize(repeating: 0, count: 2 * channels)
    }

    deinit {
        blockSums.deallocate()
        coefficients.deallocate()
        centering.deallocate()
    }

    /// Where the layer feeding this BN may write its output `x` (`[rows, channels]`) before a training
    /// forward: a `normalize` of `x` at this address keeps `x` as its cache instead of writing xhat, a
    /// pass over the batch fewer. `x` must stay unmodified until the backward.
    func inputBuffer(rows: Int) -> Matrix { xhat.matrix(rows: rows) }

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
        // one leaf of moments per deterministic chunk, or one in all
        var leaves = BatchChunks.DoubleLeaves(ranges: chunks.rowRanges(rows: x.rows), width: momentsCount)
        for (i, range) in leaves.ranges.enumerated() {
            leaves.withLeaf(i) { accumulateMoments(x.rows(range), into: $0, buffers: buffers) }
        }
        var moments = leaves.combined()
        try moments.withUnsafeMutableBufferPointer { m in
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
        let a1 = blockSums, a2 = blockSums + c
        var start = 0
        while start < x.rows {
            let end = Swift.min(start &+ Self.sumBlock, x.rows)
            // Float sums of d = x - K_b over the block, K_b = its first row (which adds d = 0).
            let first = UnsafePointer(x.row(start))
            a1.update(repeating: 0, count: 2 &* c)
            var r = start &+ 1
            while r < end {
                let row = UnsafePointer(x.row(r))
                var j = 0
                while j &+ 4 <= c {
                    let d = loadFloat4(row + j) - loadFloat4(first + j)
                    storeFloat4(loadFloat4(a1 + j) + d, a1 + j)
                    storeFloat4(loadFloat4(a2 + j) + d * d, a2 + j)
                    j &+= 4
                }
                while j < c {
                    let d = row[j] - first[j]
                    a1[j] += d
                    a2[j] += d * d
                    j &+= 1
                }
                r &+= 1
            }
            // About K instead, in Double: x - K = d + delta with delta = K_b - K.
            let n = Double(end &- start)
            for j in 0..<c {
                let delta = Double(first[j]) - Double(shift[j])
                let b1 = Double(a1[j]), b2 = Double(a2[j])
                s1[j] += b1 + n * delta
                s2[j] += b2 + delta * (2 * b1 + n * delta)
            }
            start = end
        }
    }

    /// Phase 2: normalizes with the global moments, caches xhat, updates the running statistics.
    public func normalize(
        _ x: Matrix, _ y: Matrix, moments m: UnsafeBufferPointer<Double>,
        _ p: ParameterStore, buffers: FlatBuffer, relu: Bool = false
    ) {
        normalize(x, y, moments: m, p, buffers: buffers, relu: relu, residual: nil)
    }

    /// `normalize` of a BN whose output is added to `residual` (same shape) and passed through ReLU:
    /// writes `y = max(BN(x) + residual, 0)` in the same pass, the BN's own output never stored. Its
    /// backward is the one without ReLU, given the gradient masked by `y > 0`
    /// (`maskedBackwardSums`).
    func normalize(
        _ x: Matrix, _ y: Matrix, moments m: UnsafeBufferPointer<Double>, _ p: ParameterStore, buffers: FlatBuffer,
        addingReLU residual: Matrix
    ) {
        precondition(residual.rows == x.rows && residual.cols == x.cols, "BatchNorm residual shape mismatch")
        normalize(x, y, moments: m, p, buffers: buffers, relu: false, residual: residual)
    }

    private func normalize(
        _ x: Matrix, _ y: Matrix, moments m: UnsafeBufferPointer<Double>,
        _ p: ParameterStore, buffers: FlatBuffer, relu: Bool, residual: Matrix?
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
        lastReLU = relu
        cacheHoldsInput = x.base == xhat.storage.pointer
        if cacheHoldsInput {
            mean.withUnsafeBufferPointer { centering.update(from: $0.baseAddress!, count: channels) }
            invStd.withUnsafeBufferPointer { (centering + channels).update(from: $0.baseAddress!, count: channels) }
        }
        let xh = cacheHoldsInput ? nil : xhat.matrix(rows: x.rows)
        affine(x, y, xhat: xh, mean: mean, invStd: invStd, p, relu: relu, residual: residual)
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

    /// `y = max(gamma * xhat + beta, relu ? 0 : -inf)`, or with `residual`, `max(gamma * xhat + beta + residual, 0)`.
    private func affine(
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
    private static func affineRow(
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

    /// eps_c per channel for the current weights; `saving` (a training forward) keeps ||w_c||^2 and
    /// q for backward, and takes the norms the last update kept when there are some.
    private func channelEpsilons(_ p: ParameterStore, saving: Bool = false) -> [Double] {
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

    // MARK: backward

    /// Backward of the last training forward: reduces (sum dy, sum dy*xhat), writes `dx`, accumulates
    /// d gamma, d beta (and the incoming weight's gradient through eps_c in `.scaled` mode).
    ///
    /// - Parameter relu: `dy` is the gradient of the ReLU output of a `forward(..., relu: true)`; the
    ///   ReLU's backward is applied on the fly in both passes (see `reluBackwardSums`), not in a pass
    ///   of its own, and `dy` is not modified.
    public func backward(
        _ dy: Matrix, _ dx: Matrix, _ p: ParameterStore, reducer: StatisticsReducer,
        deferEpsilonGradient: Bool = false, relu: Bool = false
    ) throws {
        precondition(!relu || lastReLU, "BatchNorm ReLU backward after a forward without ReLU")
        precondition(dx.rows == rows && dx.cols == channels, "BatchNorm backward dx shape mismatch")
        var local = [Double](repeating: 0, count: backwardSumsCount)
        local.withUnsafeMutableBufferPointer { accumulateBackwardSums(dy, into: $0, p: relu ? p : nil) }
        var global = local
        try global.withUnsafeMutableBufferPointer { try reducer.sumAcrossRanks($0) }
        beginInputGradient(globalSums: global, localSums: local, p, deferEpsilonGradient: deferEpsilonGradient)
        inputGradientRows(0..<rows, dy, dx, relu: relu ? p : nil)
    }

    /// Phase 1 of backward: adds this rank's (sum dy, sum dy * xhat) per channel to `s`.
    public func accumulateBackwardSums(_ dy: Matrix, into s: UnsafeMutableBufferPointer<Double>) {
        accumulateBackwardSums(dy, into: s, p: nil)
    }

    /// `accumulateBackwardSums`; with `p`, `dy` is the gradient of max(y, 0) after a forward with
    /// `relu: true`, and the ReLU's backward is applied on the fly (see `reluBackwardSums`).
    private func accumulateBackwardSums(_ dy: Matrix, into s: UnsafeMutableBufferPointer<Double>, p: ParameterStore?) {
        precondition(
            dy.rows == rows && dy.cols == channels && s.count == backwardSumsCount,
            "BatchNorm backward shape mismatch (was forward run on this batch?)")
        let relu = p.map { (UnsafePointer($0.value(gamma).baseAddress!), UnsafePointer($0.value(beta).baseAddress!)) }
        let hat = UnsafePointer(xhat.storage.pointer), c = channels
        let centered = cacheHoldsInput ? (UnsafePointer(centering), UnsafePointer(centering + c)) : nil
        sumByChunk(into: s) { block, sdy, sdyx in
            // one call per combination, each specialized by the inlined kernel
            switch (centered, relu) {
            case let (centered?, relu?):
                Self.backwardSums(
                    dy.base, hat, block, c, centered: centered, relu: relu, reluOutput: nil, acc: blockSums, sdy, sdyx)
            case let (centered?, nil):
                Self.backwardSums(
                    dy.base, hat, block, c, centered: centered, relu: nil, reluOutput: nil, acc: blockSums, sdy, sdyx)
            case let (nil, relu?):
                Self.backwardSums(dy.base, hat, block, c, centered: nil, relu: relu, reluOutput: nil, acc: blockSums, sdy, sdyx)
            case (nil, nil):
                Self.backwardSums(dy.base, hat, block, c, centered: nil, relu: nil, reluOutput: nil, acc: blockSums, sdy, sdyx)
            }
        }
    }

    /// Calls `body(block, sdy, sdyx)` with consecutive blocks of `sumBlock` rows of the last
    /// forward's batch, `sdy` and `sdyx` pointing into `s` (added to). In deterministic mode the
    /// blocks restart at each chunk, each chunk sums into a leaf of its own, and the tree sum of the
    /// leaves is added to `s`.
    @inline(__always)
    private func sumByChunk(
        into s: UnsafeMutableBufferPointer<Double>,
        _ body: (Range<Int>, UnsafeMutablePointer<Double>, UnsafeMutablePointer<Double>) -> Void
    ) {
        let c = channels
        @inline(__always) func blocks(_ range: Range<Int>, _ sums: UnsafeMutablePointer<Double>) {
            var start = range.lowerBound
            while start < range.upperBound {
                let end = Swift.min(start &+ Self.sumBlock, range.upperBound)
                body(start..<end, sums, sums + c)
                start = end
            }
        }
        guard chunks.deterministic else { return blocks(0..<rows, s.baseAddress!) }
        var leaves = BatchChunks.DoubleLeaves(ranges: chunks.rowRanges(rows: rows), width: 2 * c)
        for (i, range) in leaves.ranges.enumerated() { leaves.withLeaf(i) { blocks(range, $0.baseAddress!) } }
        for (j, total) in leaves.combined().enumerated() { s[j] += total }
    }

    /// Adds (sum dy, sum dy * xhat) over the rows `block` to `sdy`, `sdyx`: Float sums over the block
    /// (see `sumBlock`) in `acc` (`2 * c` values), added into Double. xhat is read from `hat`
    /// (`[rows, c]`), or with `centered` = (mean, 1/s) recomputed from the cached input there as
    /// (x - mean) * (1/s), the forward's expression. With `relu` = (gamma, beta), dy is zeroed where
    /// the forward's ReLU output was zero (see `reluBackwardSums`); with `reluOutput`, where
    /// `reluOutput` is not positive, and the masked dy is written back.
    ///
    /// Row by row: the kernels stream their operands from memory, and going down the rows of a tile
    /// of channels (parameters in registers) measured slower.
    @inline(__always)
    private static func backwardSums(
        _ dy: UnsafeMutablePointer<Float>, _ hat: UnsafePointer<Float>, _ block: Range<Int>, _ c: Int,
        centered: (UnsafePointer<Float>, UnsafePointer<Float>)?, relu: (UnsafePointer<Float>, UnsafePointer<Float>)?,
        reluOutput: UnsafePointer<Float>?, acc: UnsafeMutablePointer<Float>, _ sdy: UnsafeMutablePointer<Double>,
        _ sdyx: UnsafeMutablePointer<Double>
    ) {
        let zero = SIMD4<Float>()
        let a1 = acc, a2 = acc + c
        a1.update(repeating: 0, count: 2 &* c)
        for r in block {
            let row = r &* c
            var j = 0
            while j &+ 4 <= c {
                let at = row &+ j
                let h =
                    centered.map { (loadFloat4(hat + at) - loadFloat4($0.0 + j)) * loadFloat4($0.1 + j) } ?? loadFloat4(hat + at)
                var d = loadFloat4(dy + at)
                if let relu { d = zero.replacing(with: d, where: loadFloat4(relu.0 + j) * h + loadFloat4(relu.1 + j) .> zero) }
                if let reluOutput {
                    d = zero.replacing(with: d, where: loadFloat4(reluOutput + at) .> zero)
                    storeFloat4(d, dy + at)
                }
                storeFloat4(loadFloat4(a1 + j) + d, a1 + j)
                storeFloat4(loadFloat4(a2 + j) + d * h, a2 + j)
                j &+= 4
            }
            while j < c {
                let at = row &+ j
                let h = centered.map { (hat[at] - $0.0[j]) * $0.1[j] } ?? hat[at]
                var d = dy[at]
                if let relu { d = relu.0[j] * h + relu.1[j] > 0 ? d : 0 }
                if let reluOutput {
                    d = reluOutput[at] > 0 ? d : 0
                    dy[at] = d
                }
                a1[j] += d
                a2[j] += d * h
                j &+= 1
            }
        }
        for j in 0..<c {
            sdy[j] += Double(a1[j])
            sdyx[j] += Double(a2[j])
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
        beginInputGradient(globalSums: globalSums, localSums: localSums, p, deferEpsilonGradient: deferEpsilonGradient)
        inputGradientRows(0..<rows, dy, dx, relu: nil)
    }

    /// The per-channel part of `finishBackward`: the coefficients of dx, d gamma, d beta and the
    /// `.scaled`-mode terms.
    private func beginInputGradient(
        globalSums: [Double], localSums: [Double], _ p: ParameterStore, deferEpsilonGradient: Bool
    ) {
        let c = channels
        let g = p.value(gamma), dg = p.gradient(gamma), db = p.gradient(beta)
        let meanDy = coefficients, meanDyX = coefficients + c, scaleX = coefficients + 2 * c
        invStd.withUnsafeBufferPointer { invStd in
            for j in 0..<c {
                meanDy[j] = Float(globalSums[j] / globalCount)
                meanDyX[j] = Float(globalSums[c + j] / globalCount)
                scaleX[j] = g[j] * invStd[j]
                if !chunks.deterministic {
                    db[j] += Float(localSums[j])
                    dg[j] += Float(localSums[c + j])
                }
            }
        }
        if chunks.deterministic {
            p.pendingTerms.append((beta, (0..<c).map { Float(globalSums[$0]) }))
            p.pendingTerms.append((gamma, (0..<c).map { Float(globalSums[c + $0]) }))
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

    /// Rows `range` of dx (see `finishBackward`), from the coefficients of `beginInputGradient`; with
    /// `relu`, `dy` is the gradient of the ReLU output (see `reluBackwardSums`).
    private func inputGradientRows(_ range: Range<Int>, _ dy: Matrix, _ dx: Matrix, relu p: ParameterStore?) {
        let c = channels
        let relu = p.map { (UnsafePointer($0.value(gamma).baseAddress!), UnsafePointer($0.value(beta).baseAddress!)) }
        let hat = UnsafePointer(xhat.storage.pointer)
        let centered = cacheHoldsInput ? (UnsafePointer(centering), UnsafePointer(centering + c)) : nil
        // one call per combination, each specialized by the inlined kernel
        switch (centered, relu) {
        case let (centered?, relu?):
            inputGradient(dy.base, hat, dx.base, range, centered: centered, relu: relu)
        case let (centered?, nil):
            inputGradient(dy.base, hat, dx.base, range, centered: centered, relu: nil)
        case let (nil, relu?):
            inputGradient(dy.base, hat, dx.base, range, centered: nil, relu: relu)
        case (nil, nil):
            inputGradient(dy.base, hat, dx.base, range, centered: nil, relu: nil)
        }
    }

    /// `dx = k * (dy - a - xhat * b)` (k = gamma/s, a = sum(dy)/N, b = sum(dy*xhat)/N) over the rows
    /// `range`; xhat and the ReLU mask as in `backwardSums`.
    @inline(__always)
    private func inputGradient(
        _ dy: UnsafePointer<Float>, _ hat: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ range: Range<Int>,
        centered: (UnsafePointer<Float>, UnsafePointer<Float>)?, relu: (UnsafePointer<Float>, UnsafePointer<Float>)?
    ) {
        let c = channels
        let a = UnsafePointer(coefficients), b = a + c, k = a + 2 * c
        let zero = SIMD4<Float>()
        @inline(__always) func four(_ at: Int, _ j: Int) {
            let h = centered.map { (loadFloat4(hat + at) - loadFloat4($0.0 + j)) * loadFloat4($0.1 + j) } ?? loadFloat4(hat + at)
            var d = loadFloat4(dy + at)
            if let relu { d = zero.replacing(with: d, where: loadFloat4(relu.0 + j) * h + loadFloat4(relu.1 + j) .> zero) }
            storeFloat4(loadFloat4(k + j) * (d - loadFloat4(a + j) - h * loadFloat4(b + j)), dx + at)
        }
        for r in range {
            let row = r &* c
            var j = 0
            while j &+ 8 <= c {
                four(row &+ j, j)
                four(row &+ j &+ 4, j &+ 4)
                j &+= 8
            }
            while j &+ 4 <= c {
                four(row &+ j, j)
                j &+= 4
            }
            while j < c {
                let at = row &+ j
                let h = centered.map { (hat[at] - $0.0[j]) * $0.1[j] } ?? hat[at]
                var d = dy[at]
                if let relu { d = relu.0[j] * h + relu.1[j] > 0 ? d : 0 }
                dx[at] = k[j] * (d - a[j] - h * b[j])
                j &+= 1
            }
        }
    }

    // MARK: fused passes for conv units

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
        precondition(!chunks.deterministic || radial == .global, "deterministic mode takes the radial terms from the global sums")
        // deterministic: from the global sums, added once after the reduction (pendingTerms)
        let sums = chunks.deterministic ? globalEpsilonGradient : epsilonGradient
        var dq = 0.0
        for j in 0..<channels { dq += sums[j] * epsilon * rowNorms[j] }
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
                if chunks.deterministic {
                    p.pendingTerms.append((spec, p.value(spec).map { factor * $0 }))
                } else {
                    axpy(factor, UnsafeBufferPointer(p.value(spec)), p.gradient(spec))
                }
            }
        }
    }
}
