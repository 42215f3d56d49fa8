import TensorCore

/// A 2-D convolution without bias (it always feeds a BN, whose beta makes a bias redundant), on NHWC
/// batches: `x: [n, input.count]`, `y: [n, output.count]`, so `y` is also the `[n * Ho * Wo, Cout]`
/// matrix of output pixels that channel BN normalizes as features.
///
/// The weight is `[Cout, k, k, Cin]` ("OHWI", channels-last like the activations), so that one row of
/// the lowered input, in (ky, kx, ci) order, is a few runs of Cin contiguous input values and the
/// convolution is `col * W^T`. PyTorch stores OIHW: an export or import transposes the last three axes.
///
/// The lowering (im2col) is done in chunks of output pixels taken across the batch (a chunk may span
/// several images and end mid-image), so that the lowered chunk stays in cache while its GEMMs read it:
/// lowering the whole batch at once ran well below GEMM peak. A 1x1 convolution with stride 1 and no
/// padding needs no lowering: `x` itself is the `[n * H * W, Cin]` matrix.
public final class Conv2d {
    public let input: ImageShape
    public let output: ImageShape
    public let outChannels: Int
    public let kernel: Int
    public let stride: Int
    public let padding: Int
    public let weight: TensorSpec
    public let maxBatch: Int
    /// Output pixels lowered per GEMM (0 for the pointwise case, which lowers nothing).
    public let chunkRows: Int

    /// The lowered chunk `[chunkRows, fanIn]` in forward and weight-gradient passes; reused for its
    /// gradient (`dcol`) once the weight gradient has read it.
    private let col: FlatBuffer

    /// Measured: forward + backward of five 3x3 CIFAR layers (32x32x3->32 ... 8x8x64->128), batch 128, one
    /// thread: best geometric-mean GFLOP/s at 512 KiB (80; 256 KiB 79, 1 MiB 78, 4 MiB 70, whole batch 51).
    public static let defaultChunkBytes = 512 << 10

    /// The OHWI weight shape `[outChannels, kernel, kernel, inChannels]`.
    public static func weightShape(outChannels: Int, kernel: Int, inChannels: Int) -> [Int] {
        [outChannels, kernel, kernel, inChannels]
    }

    /// - Parameter chunkBytes: the size of the lowered chunk; `Int.max` lowers the whole batch at once.
    public init(
        input: ImageShape, outChannels: Int, kernel: Int, stride: Int, padding: Int, weight: TensorSpec,
        maxBatch: Int, chunkBytes: Int = Conv2d.defaultChunkBytes
    ) {
        precondition(outChannels > 0 && kernel > 0 && stride > 0 && padding >= 0, "conv sizes must be positive")
        precondition(
            padding < kernel, "padding \(padding) must be smaller than the kernel \(kernel) (no all-padding windows)")
        precondition(
            input.height + 2 * padding >= kernel && input.width + 2 * padding >= kernel,
            "kernel \(kernel) is larger than the padded input \(input)")
        let wantShape = Conv2d.weightShape(outChannels: outChannels, kernel: kernel, inChannels: input.channels)
        precondition(weight.shape == wantShape, "Conv2d weight \(weight.name) must be OHWI \(wantShape), got \(weight.shape)")
        precondition(maxBatch > 0 && chunkBytes > 0, "maxBatch and chunkBytes must be positive")
        self.input = input
        self.output = ImageShape(
            height: (input.height + 2 * padding - kernel) / stride + 1,
            width: (input.width + 2 * padding - kernel) / stride + 1, channels: outChannels)
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.weight = weight
        self.maxBatch = maxBatch
        let isPointwise = kernel == 1 && stride == 1 && padding == 0
        let rowBytes = kernel * kernel * input.channels * MemoryLayout<Float>.stride
        chunkRows = isPointwise ? 0 : min(max(chunkBytes / rowBytes, 1), maxBatch * output.pixels)
        col = FlatBuffer(count: chunkRows * kernel * kernel * input.channels)
    }

    /// Inputs per output value: the GEMM depth, and the fan-in of weight initialization.
    public var fanIn: Int { kernel * kernel * input.channels }

    /// 1x1, stride 1, no padding: the input already is the lowered matrix.
    public var isPointwise: Bool { chunkRows == 0 }

    /// `y = conv(x, W)`: per chunk of output pixels, `y[chunk] = col * W^T`, `2 * n * Ho * Wo * Cout * fanIn` flops.
    public func forward(_ x: Matrix, _ y: Matrix, _ p: ParameterStore) {
        checkShapes(x, y, "forward")
        let w = p.value(weight).baseAddress!
        if isPointwise {
            gemmOutput(rows: y.rows * output.pixels, a: x.base, lda: input.channels, w: w, y: y.base)
            return
        }
        forEachChunk(rows: y.rows * output.pixels) { rows in
            lower(x.base, rows: rows)
            gemmOutput(rows: rows.count, a: col.pointer, lda: fanIn, w: w, y: y.base + rows.lowerBound * outChannels)
        }
    }

    /// `dW (+)= dy^T col` per chunk (overwritten when not `accumulating`), and `dx = col2im(dy W)` when
    /// `dx` is given (not for a network's first layer). `x` is lowered again rather than kept from the
    /// forward pass: the chunk is cheap to rebuild and keeping it would cost the whole-batch buffer.
    public func backward(_ x: Matrix, _ dy: Matrix, _ dx: Matrix?, _ p: ParameterStore, accumulating: Bool) {
        checkShapes(x, dy, "backward")
        if let dx { precondition(dx.rows == x.rows && dx.cols == input.count, "Conv2d backward dx shape mismatch") }
        let w = p.value(weight).baseAddress!, dw = p.gradient(weight).baseAddress!
        let pixels = dy.rows * output.pixels
        if isPointwise {
            gemmWeightGradient(rows: pixels, dy: dy.base, a: x.base, lda: input.channels, beta: accumulating ? 1 : 0, dw: dw)
            if let dx { gemmInputGradient(rows: pixels, dy: dy.base, w: w, into: dx.base, ldc: input.channels) }
            return
        }
        if let dx { zero(dx.buffer) }
        var beta: Float = accumulating ? 1 : 0
        forEachChunk(rows: pixels) { rows in
            let dyChunk = dy.base + rows.lowerBound * outChannels
            lower(x.base, rows: rows)
            gemmWeightGradient(rows: rows.count, dy: dyChunk, a: col.pointer, lda: fanIn, beta: beta, dw: dw)
            beta = 1
            if let dx {
                gemmInputGradient(rows: rows.count, dy: dyChunk, w: w, into: col.pointer, ldc: fanIn)
                scatterAdd(rows: rows, into: dx.base)
            }
        }
    }

    /// Which GEMMs of a training step `gemmWorkload` lists.
    public enum Pass: Sendable {
        /// `forward`'s output GEMMs.
        case forward
        /// `backward` without `dx` (a network's first layer): the weight-gradient GEMMs.
        case weightGradient
        /// `backward` with `dx`: weight- and input-gradient GEMMs.
        case backward
    }

    /// The GEMMs `forward` or `backward` make for a batch of `batch` images, one entry per call shape
    /// (the chunks of equal size repeat one call), for the benchmark's GEMM-only bound.
    public func gemmWorkload(batch: Int, pass: Pass) -> [GemmCall] {
        let pixels = batch * output.pixels
        guard pixels > 0 else { return [] }
        // (rows per call, repeats): the full chunks, then the remainder
        let full = isPointwise ? 1 : pixels / chunkRows
        let remainder = isPointwise ? 0 : pixels - full * chunkRows
        let sizes = (isPointwise ? [(pixels, 1)] : [(chunkRows, full), (remainder, 1)]).filter { $0.0 > 0 && $0.1 > 0 }
        var calls: [GemmCall] = []
        var first = true
        for (rows, repeats) in sizes {
            switch pass {
            case .forward:
                calls.append(GemmCall(.none, .transposed, m: rows, n: outChannels, k: fanIn, beta: 0, repeats: repeats))
            case .weightGradient, .backward:
                // the first chunk overwrites the gradient (beta 0), later ones add to it
                if first { calls.append(GemmCall(.transposed, .none, m: outChannels, n: fanIn, k: rows, beta: 0)) }
                let rest = first ? repeats - 1 : repeats
                if rest > 0 {
                    calls.append(GemmCall(.transposed, .none, m: outChannels, n: fanIn, k: rows, beta: 1, repeats: rest))
                }
                if pass == .backward {
                    calls.append(GemmCall(.none, .none, m: rows, n: fanIn, k: outChannels, beta: 0, repeats: repeats))
                }
            }
            first = false
        }
        return calls
    }

    // MARK: GEMMs

    /// `y[rows, Cout] = a[rows, fanIn] W^T`.
    private func gemmOutput(
        rows: Int, a: UnsafePointer<Float>, lda: Int, w: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
    ) {
        BLAS.gemm(
            .none, .transposed, m: rows, n: outChannels, k: fanIn,
            a: a, lda: lda, b: w, ldb: fanIn, beta: 0, c: y, ldc: outChannels)
    }

    /// `dW[Cout, fanIn] = dy[rows, Cout]^T a[rows, fanIn] + beta * dW`.
    private func gemmWeightGradient(
        rows: Int, dy: UnsafePointer<Float>, a: UnsafePointer<Float>, lda: Int, beta: Float, dw: UnsafeMutablePointer<Float>
    ) {
        BLAS.gemm(
            .transposed, .none, m: outChannels, n: fanIn, k: rows,
            a: dy, lda: outChannels, b: a, ldb: lda, beta: beta, c: dw, ldc: fanIn)
    }

    /// `c[rows, fanIn] = dy[rows, Cout] W`.
    private func gemmInputGradient(
        rows: Int, dy: UnsafePointer<Float>, w: UnsafePointer<Float>, into c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        BLAS.gemm(
            .none, .none, m: rows, n: fanIn, k: outChannels,
            a: dy, lda: outChannels, b: w, ldb: fanIn, beta: 0, c: c, ldc: ldc)
    }

    // MARK: shapes and lowering

    private func checkShapes(_ x: Matrix, _ y: Matrix, _ pass: String) {
        precondition(
            x.cols == input.count && y.cols == output.count && x.rows == y.rows,
            "Conv2d \(pass): expected [n, \(input.count)] and [n, \(output.count)], "
                + "got [\(x.rows), \(x.cols)] and [\(y.rows), \(y.cols)]")
        precondition(x.rows <= maxBatch, "batch of \(x.rows) exceeds the Conv2d's maxBatch \(maxBatch)")
    }

    private func forEachChunk(rows total: Int, _ body: (Range<Int>) -> Void) {
        var start = 0
        while start < total {
            let end = min(start + chunkRows, total)
            body(start..<end)
            start = end
        }
    }

    /// Calls `body(pixel, dst, src, count)` for every run of the window of each output pixel in `rows`:
    /// `pixel` counts from `rows.lowerBound`, `dst` is the run's offset in that pixel's lowered row, `src`
    /// its offset in the input batch, or nil for runs falling on padding. Within one kernel row the in-bounds columns are
    /// adjacent pixels, so they form one run of up to `kernel * Cin` contiguous values.
    @inline(__always)
    private func forEachRun(rows: Range<Int>, _ body: (_ pixel: Int, _ dst: Int, _ src: Int?, _ count: Int) -> Void) {
        let cin = input.channels, inW = input.width, inH = input.height
        let outW = output.width, outH = output.height
        let kernelRow = kernel &* cin
        var image = rows.lowerBound / output.pixels
        var oy = (rows.lowerBound % output.pixels) / outW
        var ox = rows.lowerBound % outW
        for pixel in 0..<rows.count {
            let imageStart = image &* input.count
            let iy0 = oy &* stride &- padding, ix0 = ox &* stride &- padding
            let kx0 = max(0, -ix0), kx1 = min(kernel, inW &- ix0)
            for ky in 0..<kernel {
                let iy = iy0 &+ ky
                let rowStart = ky &* kernelRow
                if iy < 0 || iy >= inH {
                    body(pixel, rowStart, nil, kernelRow)
                    continue
                }
                if kx0 > 0 { body(pixel, rowStart, nil, kx0 &* cin) }
                body(pixel, rowStart &+ kx0 &* cin, imageStart &+ (iy &* inW &+ ix0 &+ kx0) &* cin, (kx1 &- kx0) &* cin)
                if kx1 < kernel { body(pixel, rowStart &+ kx1 &* cin, nil, (kernel &- kx1) &* cin) }
            }
            ox &+= 1
            if ox == outW {
                ox = 0
                oy &+= 1
                if oy == outH {
                    oy = 0
                    image &+= 1
                }
            }
        }
    }

    /// `col[i, :]` = the receptive field of output pixel `rows.lowerBound + i`, (ky, kx, ci) order, zeros on padding.
    private func lower(_ x: UnsafePointer<Float>, rows: Range<Int>) {
        let col = col.pointer, fanIn = fanIn
        forEachRun(rows: rows) { pixel, dst, src, count in
            let to = col + (pixel &* fanIn &+ dst)
            if let src { to.update(from: x + src, count: count) } else { to.update(repeating: 0, count: count) }
        }
    }

    /// `dx += col2im(dcol)`: adds each lowered gradient value back to the input value it was copied from.
    private func scatterAdd(rows: Range<Int>, into dx: UnsafeMutablePointer<Float>) {
        let dcol = UnsafePointer(col.pointer), fanIn = fanIn
        forEachRun(rows: rows) { pixel, dst, src, count in
            guard let src else { return }
            let from = dcol + (pixel &* fanIn &+ dst), to = dx + src
            for i in 0..<count { to[i] += from[i] }
        }
    }
}
