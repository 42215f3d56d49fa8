import TensorCore

/// Views an NHWC batch `[n, H*W*C]` as its `[n*H*W, C]` matrix of pixels, so channel BN is the
/// feature BN over every pixel of the batch.
func pixels(_ m: Matrix, _ shape: ImageShape) -> Matrix {
    Matrix(m.base, rows: m.rows * shape.pixels, cols: shape.channels)
}

/// Memory a network's units share, sized for the largest activation of one batch:
/// `scratch` holds a conv output until its BN has read it (forward) and a BN's input gradient until
/// its conv has read it (backward); `gradients` rotate as the gradients flowing between units (a
/// residual block needs three at once: upstream, inner, and its own input's).
final class SharedActivations {
    let scratch: FlatBuffer
    let gradients: [FlatBuffer]
    let capacity: Int
    init(values: Int) {
        capacity = values
        scratch = FlatBuffer(count: values)
        gradients = (0..<3).map { _ in FlatBuffer(count: values) }
    }
    /// A gradient buffer other than those holding `busy`.
    func free(besides busy: Matrix...) -> FlatBuffer {
        gradients.first { g in !busy.contains { $0.base == g.pointer } }!
    }
    func matrix(_ buffer: FlatBuffer, rows: Int, cols: Int) -> Matrix {
        precondition(rows * cols <= capacity, "activation of \(rows)x\(cols) exceeds the shared buffers")
        return Matrix(buffer.pointer, rows: rows, cols: cols)
    }
}

/// Conv (no bias) -> BN -> optional ReLU, fused into the BN's output pass.
final class ConvBN {
    let conv: Conv2d
    let norm: BatchNorm
    let relu: Bool
    var output: ImageShape { conv.output }
    private let y: ActivationBuffer

    init(conv: Conv2d, norm: BatchNorm, relu: Bool, maxBatch: Int) {
        self.conv = conv
        self.norm = norm
        self.relu = relu
        y = ActivationBuffer(maxRows: maxBatch, cols: conv.output.count)
    }

    /// Training (`reducer` given) or inference forward; returns the BN (and ReLU) output.
    ///
    /// With `residual` (a unit without ReLU), returns `max(BN output + residual.skip, 0)`, written to
    /// `residual.output`; in training the sum is made in the BN's output pass, and this unit's own
    /// output buffer is not written.
    func forward(
        _ x: Matrix, _ p: ParameterStore, _ buffers: FlatBuffer, _ shared: SharedActivations, reducer: StatisticsReducer?,
        residual: (skip: Matrix, output: Matrix)? = nil
    ) throws -> Matrix {
        precondition(residual == nil || !relu, "a residual sum follows a unit without ReLU")
        let channels = output.channels, norm = norm
        let out = y.matrix(rows: x.rows)
        guard let reducer else {
            let z = shared.matrix(shared.scratch, rows: x.rows, cols: output.count)
            conv.forward(x, z, p)
            norm.inference(pixels(z, output), pixels(out, output), p, buffers: buffers, relu: relu)
            guard let residual else { return out }
            addRelu(out.base, residual.skip.base, into: residual.output.base, count: out.count)
            return residual.output
        }
        // BN's two phases, the moments taken from each chunk of the conv output while it is in cache;
        // the conv writes into the BN's cache, which then keeps it instead of xhat.
        let zb = norm.inputBuffer(rows: x.rows * output.pixels)
        let z = Matrix(zb.base, rows: x.rows, cols: output.count)
        // one leaf of moments per deterministic chunk (the lowering chunks lie within them), or one in all
        let chunks = norm.chunks
        var leaves = BatchChunks.DoubleLeaves(ranges: chunks.rowRanges(rows: x.rows * output.pixels), width: norm.momentsCount)
        conv.forward(x, z, p, chunks: chunks) { rows in
            let chunk = Matrix(z.base + rows.lowerBound * channels, rows: rows.count, cols: channels)
            leaves.withLeaf(containing: rows.lowerBound) { norm.accumulateMoments(chunk, into: $0, buffers: buffers) }
        }
        var moments = leaves.combined()
        try moments.withUnsafeMutableBufferPointer { m in
            try reducer.sumAcrossRanks(m)
            if let residual {
                norm.normalize(
                    pixels(z, output), pixels(residual.output, output), moments: UnsafeBufferPointer(m), p,
                    buffers: buffers, addingReLU: pixels(residual.skip, output))
            } else {
                norm.normalize(
                    pixels(z, output), pixels(out, output), moments: UnsafeBufferPointer(m), p, buffers: buffers, relu: relu)
            }
        }
        return residual?.output ?? out
    }

    /// The output of the last forward, still in this unit's buffer.
    func lastOutput(rows: Int) -> Matrix { y.matrix(rows: rows) }

    /// From `dy` (gradient of the output; not modified) to `dx` (when given).
    ///
    /// The ReLU's backward is fused into the BN's passes, and the BN's input gradient is written
    /// chunk by chunk just before the conv's GEMMs read it, so it never travels to memory and back.
    /// With `reluOutput` (a unit without ReLU whose output went through a ReLU after a residual
    /// sum), `dy` is the gradient of that ReLU's output `reluOutput`; it is masked in place (to the
    /// gradient of the sum) in the BN's first pass. With `adding`, `dx = adding + (the input
    /// gradient)`, summed in the conv's passes over dx.
    func backward(
        _ x: Matrix, _ dy: Matrix, _ dx: Matrix?, _ p: ParameterStore, _ shared: SharedActivations,
        reducer: StatisticsReducer, radial: RadialDeferral, reluOutput: Matrix? = nil, adding: Matrix? = nil
    ) throws {
        precondition(reluOutput == nil || !relu, "a residual sum follows a unit without ReLU")
        let relu = relu, norm = norm
        let dz = shared.matrix(shared.scratch, rows: x.rows, cols: output.count)
        let dyPixels = pixels(dy, output), dzPixels = pixels(dz, output)
        var local: [Double]
        if relu {
            local = norm.reluBackwardSums(dyPixels, p)
        } else if let reluOutput {
            local = norm.maskedBackwardSums(dyPixels, reluOutput: pixels(reluOutput, output))
        } else {
            local = [Double](repeating: 0, count: norm.backwardSumsCount)
            local.withUnsafeMutableBufferPointer { norm.accumulateBackwardSums(dyPixels, into: $0) }
        }
        var global = local
        try global.withUnsafeMutableBufferPointer { try reducer.sumAcrossRanks($0) }
        norm.beginInputGradient(globalSums: global, localSums: local, p)
        conv.backward(x, dz, dx, p, accumulating: false, adding: adding, chunks: norm.chunks) { rows in
            norm.inputGradient(rows: rows, dyPixels, dzPixels, p, relu: relu)
        }
        norm.applyEpsilonGradient(p, radial: radial)
    }
}

/// How a residual block's input reaches its sum when the shape changes.
public enum ShortcutKind: String, Sendable, CaseIterable {
    /// He et al.'s option A for CIFAR: take every other pixel and pad the new channels with zeros
    /// on both sides (as the common PyTorch CIFAR ResNet does); no parameters.
    case padding
    /// Option B: 1x1 conv with stride, then BN.
    case projection
}

/// `relu(second(first(x)) + shortcut(x))`: the basic block of ResNet-20.
final class ResidualBlock {
    enum Shortcut {
        case identity
        case padding
        case projection(ConvBN)
    }
    let first: ConvBN  // with ReLU
    let second: ConvBN  // without; its BN's (gamma, beta) are SV, the skip is added after it
    let shortcut: Shortcut
    let input: ImageShape
    var output: ImageShape { second.output }
    private let out: ActivationBuffer

    init(first: ConvBN, second: ConvBN, shortcut: Shortcut, input: ImageShape, maxBatch: Int) {
        self.first = first
        self.second = second
        self.shortcut = shortcut
        self.input = input
        out = ActivationBuffer(maxRows: maxBatch, cols: second.output.count)
    }

    func forward(
        _ x: Matrix, _ p: ParameterStore, _ buffers: FlatBuffer, _ shared: SharedActivations, reducer: StatisticsReducer?
    ) throws -> Matrix {
        let h = try first.forward(x, p, buffers, shared, reducer: reducer)
        let o = out.matrix(rows: x.rows)
        switch shortcut {
        case .identity:
            _ = try second.forward(h, p, buffers, shared, reducer: reducer, residual: (x, o))
        case .padding:
            let u = try second.forward(h, p, buffers, shared, reducer: reducer)
            forEachPaddedPair(rows: x.rows) { outRun, inRun, inChannels, offset in
                let uo = u.base + outRun, oo = o.base + outRun, xi = x.base + inRun
                for c in 0..<output.channels {
                    let skip = c >= offset && c < offset + inChannels ? xi[c - offset] : 0
                    oo[c] = Swift.max(uo[c] + skip, 0)
                }
            }
        case let .projection(projection):
            let s = try projection.forward(x, p, buffers, shared, reducer: reducer)
            _ = try second.forward(h, p, buffers, shared, reducer: reducer, residual: (s, o))
        }
        return o
    }

    /// `g` (gradient of the output, in a shared gradient buffer) is overwritten; returns the input's
    /// gradient in another shared buffer.
    func backward(
        _ x: Matrix, _ g: Matrix, _ p: ParameterStore, _ shared: SharedActivations,
        reducer: StatisticsReducer, radial: RadialDeferral
    ) throws -> Matrix {
        let n = x.rows
        let h = first.lastOutput(rows: n)
        let dh = shared.matrix(shared.free(besides: g), rows: n, cols: first.output.count)
        // The ReLU after the sum: g is masked by out > 0 in place, in the first pass of second's BN.
        try second.backward(h, g, dh, p, shared, reducer: reducer, radial: radial, reluOutput: out.matrix(rows: n))
        let dx = shared.matrix(shared.free(besides: g, dh), rows: n, cols: input.count)
        // identity: dx = g + the first conv's input gradient, summed in the conv's passes over dx
        let identity = if case .identity = shortcut { true } else { false }
        try first.backward(x, dh, dx, p, shared, reducer: reducer, radial: radial, adding: identity ? g : nil)
        switch shortcut {
        case .identity:
            break
        case .padding:
            forEachPaddedPair(rows: n) { outRun, inRun, inChannels, offset in
                let gi = g.base + outRun + offset, di = dx.base + inRun
                for c in 0..<inChannels { di[c] += gi[c] }
            }
        case let .projection(projection):
            let ds = shared.matrix(shared.free(besides: g, dx), rows: n, cols: input.count)
            try projection.backward(x, g, ds, p, shared, reducer: reducer, radial: radial)
            axpy(1, ds.readOnly, dx.buffer)
        }
        return dx
    }

    /// For the padding shortcut: calls `body(outputOffset, inputOffset, inChannels, channelOffset)`
    /// for every output pixel, with the input pixel at twice its coordinates (stride 2 subsampling).
    private func forEachPaddedPair(rows n: Int, _ body: (Int, Int, Int, Int) -> Void) {
        let o = output, i = input
        let stride = o.height == i.height && o.width == i.width ? 1 : 2  // x[::2, ::2], odd sizes too
        let offset = (o.channels - i.channels) / 2
        for image in 0..<n {
            for oy in 0..<o.height {
                for ox in 0..<o.width {
                    let outRun = image * o.count + (oy * o.width + ox) * o.channels
                    let inRun = image * i.count + (oy * stride * i.width + ox * stride) * i.channels
                    body(outRun, inRun, i.channels, offset)
                }
            }
        }
    }
}

/// `out[i] = max(a[i] + b[i], 0)`.
@inline(__always)
func addRelu(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { out[i] = Swift.max(a[i] + b[i], 0) }
}
