import TensorCore

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
    let xhat: ActivationBuffer
    var cacheHoldsInput = false
    var invStd: [Float]
    var denominator: [Double]  // s_c^2 = var + eps_c
    var rowNorms: [Double]  // ||w_c||^2 (.scaled)
    var inputScale = 1.0  // q (.scaled)
    var epsilonGradient: [Double]  // dL/d eps_c from local sums (.scaled)
    var globalEpsilonGradient: [Double]  // dL/d eps_c from global sums (.scaled)
    var globalCount = 0.0
    var rows = 0
    /// Whether the last training forward applied ReLU (for the fused ReLU backward).
    var lastReLU = false
    /// Per-channel Float sums of one block of rows: `2 * channels` values (see `sumBlock`).
    let blockSums: UnsafeMutablePointer<Float>
    /// Per-channel coefficients of the input gradient, set by `beginInputGradient`:
    /// sum(dy)/N, sum(dy*xhat)/N, gamma/s (`3 * channels` values; a pointer, not arrays held by the
    /// class, whose every element access would pay exclusivity and uniqueness checks).
    let coefficients: UnsafeMutablePointer<Float>
    /// The mean and 1/s of the last training forward (`2 * channels` values), when `cacheHoldsInput`.
    let centering: UnsafeMutablePointer<Float>

    /// Rows per block of the Float sums. A Float sum of B terms is off by at most (B - 1) * 2^-24
    /// (~9e-7 for B = 16) relative to the sum of their magnitudes, and in practice by ~sqrt(B) * 2^-25
    /// (~1e-7); each block's sums are added into Double, so the error does not grow with the row count.
    /// The moments are taken about the block's first row (a sample, within a few standard deviations
    /// of the mean), so the magnitudes are those of the spread, not of the mean: the variance keeps
    /// ~1e-6 relative accuracy whatever the offset of the data (a Float sum of squares about a distant
    /// shift would lose it to cancellation). Float lanes are twice as wide as Double lanes on SSE2.
    static let sumBlock = 16

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

    func normalize(
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
}
