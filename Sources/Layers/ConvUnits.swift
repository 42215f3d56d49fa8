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
    func forward(
        _ x: Matrix, _ p: ParameterStore, _ buffers: FlatBuffer, _ shared: SharedActivations, reducer: StatisticsReducer?
    ) throws -> Matrix {
        let z = shared.matrix(shared.scratch, rows: x.rows, cols: output.count)
        conv.forward(x, z, p)
        let out = y.matrix(rows: x.rows)
        if let reducer {
            try norm.forward(pixels(z, output), pixels(out, output), p, buffers: buffers, reducer: reducer, relu: relu)
        } else {
            norm.inference(pixels(z, output), pixels(out, output), p, buffers: buffers, relu: relu)
        }
        return out
    }

    /// The output of the last forward, still in this unit's buffer.
    func lastOutput(rows: Int) -> Matrix { y.matrix(rows: rows) }

    /// From `dy` (gradient of the output; overwritten when ReLU is on) to `dx` (when given).
    func backward(
        _ x: Matrix, _ dy: Matrix, _ dx: Matrix?, _ p: ParameterStore, _ shared: SharedActivations,
        reducer: StatisticsReducer, radial: RadialDeferral
    ) throws {
        if relu { reluBackward(output: y.matrix(rows: x.rows).readOnly, dy.readOnly, dy.buffer) }
        let dz = shared.matrix(shared.scratch, rows: x.rows, cols: output.count)
        try norm.backward(pixels(dy, output), pixels(dz, output), p, reducer: reducer, deferEpsilonGradient: true)
        conv.backward(x, dz, dx, p, accumulating: false)
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
        let u = try second.forward(h, p, buffers, shared, reducer: reducer)
        let o = out.matrix(rows: x.rows)
        switch shortcut {
        case .identity:
            addRelu(u.base, x.base, into: o.base, count: o.count)
        case .padding:
            forEachPaddedPair(rows: x.rows) { outRun, inRun, inChannels, offset in
                let uo = u.base + outRun, oo = o.base + outRun, xi = x.base + inRun
                for c in 0..<output.channels {
                    let skip = c >= offset && c < offset + inChannels ? xi[c - offset] : 0
                    oo[c] = Swift.max(uo[c] + skip, 0)
                }
            }
        case let .projection(projection):
            let s = try projection.forward(x, p, buffers, shared, reducer: reducer)
            addRelu(u.base, s.base, into: o.base, count: o.count)
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
        reluBackward(output: out.matrix(rows: n).readOnly, g.readOnly, g.buffer)
        let h = first.lastOutput(rows: n)
        let dh = shared.matrix(shared.free(besides: g), rows: n, cols: first.output.count)
        try second.backward(h, g, dh, p, shared, reducer: reducer, radial: radial)  // no ReLU: g kept
        let dx = shared.matrix(shared.free(besides: g, dh), rows: n, cols: input.count)
        try first.backward(x, dh, dx, p, shared, reducer: reducer, radial: radial)
        switch shortcut {
        case .identity:
            axpy(1, g.readOnly, dx.buffer)
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
        let stride = i.height / o.height
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
