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
///
/// A 3x3 convolution with stride 1 and padding 1 may run as Winograd F(2x2, 3x3) instead
/// (`Winograd3x3`), chosen once at construction (`Conv2d.Algorithm`).
public final class Conv2d {
    /// How the convolution is computed.
    public enum Algorithm: String, Sendable, CaseIterable {
        /// Lower the input (im2col) and multiply by the weight: any kernel, stride and padding.
        case im2col
        /// Winograd F(2x2, 3x3): 3x3 kernels with stride 1 and padding 1 only.
        case winograd
    }

    public let input: ImageShape
    public let output: ImageShape
    public let outChannels: Int
    public let kernel: Int
    public let stride: Int
    public let padding: Int
    public let weight: TensorSpec
    public let maxBatch: Int
    /// Output pixels lowered per GEMM (0 for the pointwise case and Winograd, which lower nothing).
    public let chunkRows: Int
    public let algorithm: Algorithm
    /// 1x1, stride 1, no padding: the input already is the lowered matrix.
    public let isPointwise: Bool
    private let winograd: Winograd3x3?

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

    /// The algorithm used unless one is asked for: Winograd where it applies and both channel counts
    /// are at least `winogradMinimumChannels`, else im2col.
    public static func defaultAlgorithm(kernel: Int, stride: Int, padding: Int, inChannels: Int, outChannels: Int)
        -> Algorithm
    {
        Winograd3x3.applies(kernel: kernel, stride: stride, padding: padding, inChannels: inChannels, outChannels: outChannels)
            && min(inChannels, outChannels) >= winogradMinimumChannels ? .winograd : .im2col
    }

    /// Below this many channels Winograd's transforms cost more than the multiplies they save
    /// (the VGG preset's first layer, 3 to 32 channels: Winograd 0.35x the speed of im2col's GEMMs).
    public static let winogradMinimumChannels = 16

    /// - Parameters:
    ///   - chunkBytes: the size of the lowered chunk; `Int.max` lowers the whole batch at once.
    ///   - algorithm: nil for `defaultAlgorithm`; `.winograd` only where `Algorithm.winograd` applies.
    public init(
        input: ImageShape, outChannels: Int, kernel: Int, stride: Int, padding: Int, weight: TensorSpec,
        maxBatch: Int, chunkBytes: Int = Conv2d.defaultChunkBytes, algorithm: Algorithm? = nil
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
        let algorithm =
            algorithm
            ?? Conv2d.defaultAlgorithm(
                kernel: kernel, stride: stride, padding: padding, inChannels: input.channels, outChannels: outChannels)
        precondition(
            algorithm != .winograd
                || Winograd3x3.applies(
                    kernel: kernel, stride: stride, padding: padding, inChannels: input.channels, outChannels: outChannels),
            "Winograd computes 3x3 convolutions with stride 1 and padding 1 of up to \(Winograd3x3.maxChannels) channels, not kernel \(kernel) stride \(stride) padding \(padding) with \(input.channels) -> \(outChannels) channels"
        )
        self.algorithm = algorithm
        isPointwise = kernel == 1 && stride == 1 && padding == 0
        winograd = algorithm == .winograd ? Winograd3x3(input: input, outChannels: outChannels, maxBatch: maxBatch) : nil
        let rowBytes = kernel * kernel * input.channels * MemoryLayout<Float>.stride
        chunkRows = isPointwise || winograd != nil ? 0 : min(max(chunkBytes / rowBytes, 1), maxBatch * output.pixels)
        col = FlatBuffer(count: chunkRows * kernel * kernel * input.channels)
    }

    /// Inputs per output value: the GEMM depth, and the fan-in of weight initialization.
    public var fanIn: Int { kernel * kernel * input.channels }

    /// `y = conv(x, W)`: per chunk of output pixels, `y[chunk] = col * W^T`, `2 * n * Ho * Wo * Cout * fanIn` flops.
    public func forward(_ x: Matrix, _ y: Matrix, _ p: ParameterStore) {
        forward(x, y, p) { _ in }
    }

    /// `forward`, calling `eachChunk(rows)` with each range of output pixels (rows of the
    /// `[n * Ho * Wo, Cout]` matrix `y`) as soon as its GEMM has written it, so that a pass over the
    /// output can read it while it is in cache. With deterministic `chunks`, the lowering chunks
    /// restart at each of their chunks, so that no GEMM's shape depends on the number of ranks.
    func forward(_ x: Matrix, _ y: Matrix, _ p: ParameterStore, chunks: BatchChunks? = nil, eachChunk: (Range<Int>) -> Void) {
        checkShapes(x, y, "forward")
        let w = p.value(weight).baseAddress!
        if let winograd {
            for images in imageRanges(chunks, images: y.rows) {
                winograd.forward(x.base, y.base, weight: w, images: images, eachChunk: eachChunk)
            }
            return
        }
        for range in pixelRanges(chunks, images: y.rows) where !range.isEmpty {
            if isPointwise {
                gemmOutput(
                    rows: range.count, a: x.base + range.lowerBound * input.channels, lda: input.channels, w: w,
                    y: y.base + range.lowerBound * outChannels)
                eachChunk(range)
                continue
            }
            forEachChunk(range) { rows in
                lower(x.base, rows: rows)
                gemmOutput(rows: rows.count, a: col.pointer, lda: fanIn, w: w, y: y.base + rows.lowerBound * outChannels)
                eachChunk(rows)
            }
        }
    }

    /// `dW (+)= dy^T col` per chunk (overwritten when not `accumulating`), and `dx = col2im(dy W)` when
    /// `dx` is given (not for a network's first layer). `x` is lowered again rather than kept from the
    /// forward pass: the chunk is cheap to rebuild and keeping it would cost the whole-batch buffer.
    public func backward(_ x: Matrix, _ dy: Matrix, _ dx: Matrix?, _ p: ParameterStore, accumulating: Bool) {
        backward(x, dy, dx, p, accumulating: accumulating) { _ in }
    }

    /// `backward`, calling `prepare(rows)` to write each range of output pixels of `dy` (rows of the
    /// `[n * Ho * Wo, Cout]` matrix) just before its GEMMs read it, so that they read it from cache.
    /// With `adding`, `dx = adding + (the input gradient)` (`adding` may not overlap `dx`), in the
    /// same passes. With deterministic `chunks`, the weight gradient is the tree sum of one partial
    /// per chunk (see `BatchChunks`), each the sum over that chunk's lowering chunks.
    func backward(
        _ x: Matrix, _ dy: Matrix, _ dx: Matrix?, _ p: ParameterStore, accumulating: Bool, adding initial: Matrix? = nil,
        chunks: BatchChunks? = nil, prepare: (Range<Int>) -> Void
    ) {
        checkShapes(x, dy, "backward")
        if let dx { precondition(dx.rows == x.rows && dx.cols == input.count, "Conv2d backward dx shape mismatch") }
        if let initial {
            precondition(dx != nil && initial.rows == x.rows && initial.cols == input.count, "Conv2d backward: adding needs dx")
        }
        let w = p.value(weight).baseAddress!, dw = p.gradient(weight).baseAddress!
        if let winograd {
            let start = initial.map { UnsafePointer($0.base) }
            let ranges = imageRanges(chunks, images: dy.rows)
            func pass(_ images: Range<Int>, into out: UnsafeMutablePointer<Float>, beta: Float) {
                winograd.backward(
                    x.base, dy.base, dx?.base, initial: start, weight: w, dw: out, beta: beta, images: images,
                    prepare: prepare)
            }
            sumWeightGradient(ranges, chunks: chunks, accumulating: accumulating, into: dw, pass)
            return
        }
        let ranges = pixelRanges(chunks, images: dy.rows)
        // dx is not zeroed in a separate pass. `zeroed` is the end of the prefix of dx that earlier
        // chunks have written (whole input rows): with stride 1, a chunk writes the rows past it
        // outright (`gatherAdd`); otherwise they are zeroed (or set to `initial`) just ahead of the
        // scatter, while in cache.
        let start = initial.map { UnsafePointer($0.base) }
        func initialize(_ range: Range<Int>, of dx: Matrix) {
            if let start {
                (dx.base + range.lowerBound).update(from: start + range.lowerBound, count: range.count)
            } else {
                (dx.base + range.lowerBound).update(repeating: 0, count: range.count)
            }
        }
        var zeroed = 0
        // the weight gradient of the pixels `range` into `out` (added to it from the second lowering chunk on)
        func pass(_ range: Range<Int>, into out: UnsafeMutablePointer<Float>, beta first: Float) {
            if range.isEmpty {  // an empty chunk's leaf is zero (no GEMM would write it)
                if first == 0 { out.update(repeating: 0, count: weight.count) }
                return
            }
            if isPointwise {
                prepare(range)
                let dyRows = dy.base + range.lowerBound * outChannels
                gemmWeightGradient(
                    rows: range.count, dy: dyRows, a: x.base + range.lowerBound * input.channels, lda: input.channels,
                    beta: first, dw: out)
                if let dx {
                    let at = range.lowerBound * input.channels
                    gemmInputGradient(rows: range.count, dy: dyRows, w: w, into: dx.base + at, ldc: input.channels)
                    if let start { addInPlace(dx.base + at, start + at, count: range.count * input.channels) }
                }
                return
            }
            var beta = first
            forEachChunk(range) { rows in
                prepare(rows)
                let dyChunk = dy.base + rows.lowerBound * outChannels
                lower(x.base, rows: rows)
                gemmWeightGradient(rows: rows.count, dy: dyChunk, a: col.pointer, lda: fanIn, beta: beta, dw: out)
                beta = 1
                if let dx {
                    gemmInputGradient(rows: rows.count, dy: dyChunk, w: w, into: col.pointer, ldc: fanIn)
                    let end = inputEnd(ofOutputPixel: rows.upperBound - 1)
                    if stride == 1 {
                        gatherAdd(rows: rows, into: dx.base, written: zeroed, initial: start)
                        zeroed = max(zeroed, end)
                    } else {
                        if end > zeroed {
                            initialize(zeroed..<end, of: dx)
                            zeroed = end
                        }
                        scatterAdd(rows: rows, into: dx.base)
                    }
                }
            }
        }
        sumWeightGradient(ranges, chunks: chunks, accumulating: accumulating, into: dw, pass)
        if !isPointwise, let dx, zeroed < dx.count { initialize(zeroed..<dx.count, of: dx) }
    }

    /// `dw = ` the weight gradient over `ranges` (`+=` when `accumulating`): `pass(range, out, beta)`
    /// writes (beta 0) or adds (beta 1) one range's into `out`. With deterministic `chunks`, the
    /// tree sum of one partial per chunk; otherwise `ranges` is one range, the whole batch.
    private func sumWeightGradient<R>(
        _ ranges: [R], chunks: BatchChunks?, accumulating: Bool, into dw: UnsafeMutablePointer<Float>,
        _ pass: (R, UnsafeMutablePointer<Float>, Float) -> Void
    ) {
        if let chunks, chunks.deterministic {
            precondition(!accumulating, "deterministic mode writes gradients, it does not accumulate them")
            chunks.treeSum(leaves: ranges.count, count: weight.count, into: dw, fusedPairs: false) { i, out, _ in
                pass(ranges[i], out, 0)
            }
        } else {
            pass(ranges[0], dw, accumulating ? 1 : 0)
        }
    }

    /// The images of a batch of `images`, one range per deterministic chunk, or all of them.
    private func imageRanges(_ chunks: BatchChunks?, images: Int) -> [Range<Int>] {
        chunks?.rowRanges(rows: images) ?? [0..<images]
    }

    /// The output pixels of a batch of `images`, one range per deterministic chunk, or all of them.
    private func pixelRanges(_ chunks: BatchChunks?, images: Int) -> [Range<Int>] {
        chunks?.rowRanges(rows: images * output.pixels) ?? [0..<images * output.pixels]
    }

    /// One past the largest offset in the input batch that the windows of output pixels `0...pixel`
    /// read: the end of the last input row under the window of `pixel` (windows only move forward).
    private func inputEnd(ofOutputPixel pixel: Int) -> Int {
        let image = pixel / output.pixels, oy = (pixel % output.pixels) / output.width
        let lastRow = min(oy * stride - padding + kernel - 1, input.height - 1)
        return image * input.count + (lastRow + 1) * input.width * input.channels
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

    /// The multiply-adds (times 2) of `pass` over `batch` images as a direct convolution.
    public func directFlops(batch: Int, pass: Pass) -> Double {
        let one = 2 * Double(batch * output.pixels) * Double(outChannels) * Double(fanIn)
        return pass == .backward ? 2 * one : one
    }

    /// The GEMMs `forward` or `backward` make for a batch of `batch` images, one entry per call shape
    /// (the chunks of equal size repeat one call), for the benchmark's GEMM-only bound.
    public func gemmWorkload(batch: Int, pass: Pass) -> [GemmCall] {
        if let winograd { return winograd.gemmWorkload(batch: batch, pass: pass) }
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

    /// Consecutive lowering chunks of `chunkRows` output pixels covering `range`.
    private func forEachChunk(_ range: Range<Int>, _ body: (Range<Int>) -> Void) {
        var start = range.lowerBound
        while start < range.upperBound {
            let end = min(start + chunkRows, range.upperBound)
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

    /// Calls `body(pixel, ox0, ox1, ky, inputRow)` for each kernel row `ky` of each segment of `rows`
    /// that lies in one output row: the output pixels `pixel ..< pixel + (ox1 - ox0)` (counted from
    /// `rows.lowerBound`) in columns `ox0 ..< ox1`; `inputRow` is the offset in the input batch of the
    /// input row under kernel row `ky`, or nil where it falls on padding. The inner loops over a
    /// segment's pixels then only step pointers (`forEachRun` recomputes a pixel's window per run).
    @inline(__always)
    private func forEachSegment(
        rows: Range<Int>, _ body: (_ pixel: Int, _ ox0: Int, _ ox1: Int, _ ky: Int, _ inputRow: Int?) -> Void
    ) {
        let outW = output.width, rowLength = input.width &* input.channels
        var p = rows.lowerBound
        while p < rows.upperBound {
            let image = p / output.pixels, inImage = p % output.pixels
            let oy = inImage / outW, ox0 = inImage % outW
            let ox1 = min(outW, ox0 &+ (rows.upperBound &- p))
            let pixel = p &- rows.lowerBound
            for ky in 0..<kernel {
                let iy = oy &* stride &- padding &+ ky
                body(pixel, ox0, ox1, ky, iy >= 0 && iy < input.height ? image &* input.count &+ iy &* rowLength : nil)
            }
            p &+= ox1 &- ox0
        }
    }

    /// `col[i, :]` = the receptive field of output pixel `rows.lowerBound + i`, (ky, kx, ci) order, zeros on padding.
    private func lower(_ x: UnsafePointer<Float>, rows: Range<Int>) {
        let col = col.pointer, fanIn = fanIn, cin = input.channels, inW = input.width
        let kernel = kernel, stride = stride, padding = padding, kernelRow = kernel &* cin
        forEachSegment(rows: rows) { pixel, ox0, ox1, ky, inputRow in
            var to = col + (pixel &* fanIn &+ ky &* kernelRow)
            guard let inputRow else {
                for _ in ox0..<ox1 {
                    to.update(repeating: 0, count: kernelRow)
                    to += fanIn
                }
                return
            }
            let from = x + inputRow
            for ox in ox0..<ox1 {
                let ix0 = ox &* stride &- padding
                if ix0 >= 0 && ix0 &+ kernel <= inW {
                    to.update(from: from + ix0 &* cin, count: kernelRow)
                } else {
                    let kx0 = max(0, -ix0), kx1 = min(kernel, inW &- ix0)
                    if kx0 > 0 { to.update(repeating: 0, count: kx0 &* cin) }
                    (to + kx0 &* cin).update(from: from + (ix0 &+ kx0) &* cin, count: (kx1 &- kx0) &* cin)
                    if kx1 < kernel { (to + kx1 &* cin).update(repeating: 0, count: (kernel &- kx1) &* cin) }
                }
                to += fanIn
            }
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

    /// `scatterAdd` for stride 1, as a gather: for each input pixel under the chunk, the (up to
    /// kernel^2) lowered values that were copied from it are summed in registers and added to dx
    /// once, instead of each being added to dx in its own read-modify-write. Input rows at offsets
    /// `>= written` have not been written by an earlier chunk: they are set to `initial` (zeros when
    /// nil) plus this chunk's sums, so dx needs no zeroing pass.
    private func gatherAdd(
        rows: Range<Int>, into dx: UnsafeMutablePointer<Float>, written: Int, initial: UnsafePointer<Float>?
    ) {
        precondition(stride == 1, "gatherAdd is for stride 1")
        let cin = input.channels, inW = input.width, inH = input.height, rowLength = inW &* cin
        let outW = output.width, outH = output.height, outPixels = output.pixels
        let k = kernel, pad = padding, fanIn = fanIn, kernelRow = k &* cin
        let dcol = UnsafePointer(col.pointer)
        let lo = rows.lowerBound, hi = rows.upperBound
        let firstImage = lo / outPixels, firstOy = (lo % outPixels) / outW
        let lastImage = (hi - 1) / outPixels, lastOy = ((hi - 1) % outPixels) / outW
        // Should the first input row under the chunk lie past `written`, zero the gap (it cannot, as
        // consecutive chunks' windows overlap or abut, but the invariant costs nothing to keep).
        let firstRow = firstImage * input.count + max(0, firstOy - pad) * rowLength
        if firstRow > written {
            if let initial {
                (dx + written).update(from: initial + written, count: firstRow - written)
            } else {
                (dx + written).update(repeating: 0, count: firstRow - written)
            }
        }
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 3 * k + k * k) { scratch in
            // per kernel row in the chunk: (offset in dcol of output column 0 at that kernel row, a, b)
            // for its output columns a..<b; then the tap offsets of one input pixel
            let entries = scratch.baseAddress!, taps = entries + 3 * k
            for image in firstImage...lastImage {
                let iyStart = image == firstImage ? max(0, firstOy - pad) : 0
                let iyEnd = image == lastImage ? min(inH - 1, lastOy - pad + k - 1) : inH - 1
                guard iyStart <= iyEnd else { continue }
                for iy in iyStart...iyEnd {
                    var count = 0
                    var full = true  // every kernel row present, with whole output rows
                    for ky in 0..<k {
                        let oy = iy + pad - ky
                        guard oy >= 0 && oy < outH else {
                            full = false
                            continue
                        }
                        let q0 = image * outPixels + oy * outW  // output pixel (image, oy, 0)
                        let a = max(0, lo - q0), b = min(outW, hi - q0)
                        guard a < b else {
                            full = false
                            continue
                        }
                        if a > 0 || b < outW { full = false }
                        entries[3 * count] = (q0 - lo) * fanIn + ky * kernelRow
                        entries[3 * count + 1] = a
                        entries[3 * count + 2] = b
                        count += 1
                    }
                    let rowStart = image * input.count + iy * rowLength
                    let fresh = rowStart >= written
                    let dxRow = dx + rowStart
                    // where the sums start: dx itself once written, else `initial` (or zeros)
                    let startRow = fresh ? initial.map { $0 + rowStart } : UnsafePointer(dxRow)
                    // Interior columns of a row with whole output rows under all kernel rows: all
                    // k^2 taps, at fixed offsets from ix * fanIn.
                    var interior = 0..<0
                    if full {
                        var t = 0
                        for e in 0..<count {
                            for kx in 0..<k {
                                taps[t] = entries[3 * e] + (pad - kx) * fanIn + kx * cin
                                t += 1
                            }
                        }
                        // ox = ix + pad - kx in 0..<outW for every kx
                        let first = k - 1 - pad, last = outW - 1 - pad
                        if first <= last { interior = max(0, first)..<min(inW, last + 1) }
                    }
                    if !interior.isEmpty {
                        for ix in interior {
                            Self.sumTaps(
                                dcol + ix &* fanIn, taps, count: k * k, into: dxRow + ix &* cin,
                                from: startRow.map { $0 + ix &* cin }, channels: cin)
                        }
                    }
                    // The other columns: taps found per pixel.
                    for ix in 0..<inW where !interior.contains(ix) {
                        var n = 0
                        for e in 0..<count {
                            let a = entries[3 * e + 1], b = entries[3 * e + 2]
                            let kxLo = max(0, ix + pad - b + 1), kxHi = min(k - 1, ix + pad - a)
                            guard kxLo <= kxHi else { continue }
                            for kx in kxLo...kxHi {
                                taps[n] = entries[3 * e] + (ix + pad - kx) * fanIn + kx * cin
                                n += 1
                            }
                        }
                        if n == 0 && !fresh { continue }
                        Self.sumTaps(
                            dcol, taps, count: n, into: dxRow + ix &* cin, from: startRow.map { $0 + ix &* cin }, channels: cin)
                    }
                }
            }
        }
    }

    /// `target[c] = start[c] + sum over t of base[taps[t] + c]` (`start` nil: zeros; it may be
    /// `target`) for `channels` values: 16 channels at a time in four vector accumulators, so the
    /// sums over taps are independent chains.
    @inline(__always)
    private static func sumTaps(
        _ base: UnsafePointer<Float>, _ taps: UnsafePointer<Int>, count n: Int, into target: UnsafeMutablePointer<Float>,
        from start: UnsafePointer<Float>?, channels: Int
    ) {
        var c = 0
        while c &+ 16 <= channels {
            var s0 = SIMD4<Float>(), s1 = SIMD4<Float>(), s2 = SIMD4<Float>(), s3 = SIMD4<Float>()
            if let start {
                s0 = loadFloat4(start + c)
                s1 = loadFloat4(start + (c &+ 4))
                s2 = loadFloat4(start + (c &+ 8))
                s3 = loadFloat4(start + (c &+ 12))
            }
            for t in 0..<n {
                let p = base + (taps[t] &+ c)
                s0 += loadFloat4(p)
                s1 += loadFloat4(p + 4)
                s2 += loadFloat4(p + 8)
                s3 += loadFloat4(p + 12)
            }
            storeFloat4(s0, target + c)
            storeFloat4(s1, target + (c &+ 4))
            storeFloat4(s2, target + (c &+ 8))
            storeFloat4(s3, target + (c &+ 12))
            c &+= 16
        }
        while c &+ 4 <= channels {
            var s0 = start.map { loadFloat4($0 + c) } ?? SIMD4<Float>()
            for t in 0..<n { s0 += loadFloat4(base + (taps[t] &+ c)) }
            storeFloat4(s0, target + c)
            c &+= 4
        }
        while c < channels {
            var s0: Float = start?[c] ?? 0
            for t in 0..<n { s0 += base[taps[t] &+ c] }
            target[c] = s0
            c &+= 1
        }
    }
}
