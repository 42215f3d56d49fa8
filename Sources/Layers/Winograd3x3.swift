import CKernels
import TensorCore

/// A 3x3 convolution with stride 1 and padding 1 by Winograd's F(2x2, 3x3) (Lavin & Gray 2016):
/// each 2x2 output tile is `A^T [(G g G^T) . (B^T d B)] A` over its 4x4 input patch `d`, so the
/// 36 multiplies per tile and channel pair of a direct convolution become 16, done as 16 GEMMs
/// (one per position of the transformed tile) with K = input channels and N = output channels.
/// The products with K and N channel counts go through `ak_gemm_small` where the CPU has AVX2 or
/// wider (on the VGG preset's shapes 1.3-2x OpenBLAS's GFLOP/s, which packs its operands for large
/// matrices), through BLAS otherwise (OpenBLAS beat the SSE2 build of that kernel).
/// The input gradient is the same convolution of `dy` with the filter rotated by 180 degrees,
/// whose transform is the filter's with positions 0 and 3 of each axis swapped; the weight
/// gradient is `G^T [sum over tiles (A dy A^T) . (B^T d B)] G`, 16 GEMMs with K = tiles.
///
/// Work goes in chunks of whole images, so that a chunk's transformed planes stay in cache between
/// the transform and the GEMMs, and `prepare` can make whole images of `dy` at once (the input
/// gradient of a tile reads a one-pixel halo of `dy` around it). The transforms are C kernels
/// (`CKernels`) built for each instruction set and chosen at run time.
final class Winograd3x3 {
    let shape: ImageShape
    let inChannels: Int, outChannels: Int
    let tilesPerImage: Int
    /// Images per chunk.
    let chunkImages: Int
    /// The transformed filter: 16 planes `[Cout, Cin]` (the input gradient's products), 16 planes
    /// `[Cin, Cout]` (the forward's), and the gradient.
    private let u: FlatBuffer, uTransposed: FlatBuffer, du: FlatBuffer
    /// Whether the channel products use `ak_gemm_small` rather than BLAS.
    let ownProducts = ak_vector_bits() >= 256
    /// A chunk's transformed planes, two blocks of 16 x `[tiles, max(Cin, Cout)]`.
    private let first: FlatBuffer, second: FlatBuffer

    /// Tiles per chunk to aim for: GEMMs with M of 256 to 512 tiles ran fastest (the 32x32x32 layer
    /// of the VGG preset, one thread: 31-34 GFLOP/s, against 24 at 32 tiles and 29 at 1024).
    static let targetTiles = 256

    /// The most channels the C kernels take (their zero padding is read from a fixed buffer).
    static let maxChannels = Int(AK_WINOGRAD_MAX_CHANNELS)

    /// Whether this algorithm computes the convolution `kernel`, `stride`, `padding` with these channels.
    static func applies(kernel: Int, stride: Int, padding: Int, inChannels: Int, outChannels: Int) -> Bool {
        kernel == 3 && stride == 1 && padding == 1 && max(inChannels, outChannels) <= maxChannels
    }

    init(input: ImageShape, outChannels: Int, maxBatch: Int) {
        shape = input
        inChannels = input.channels
        self.outChannels = outChannels
        tilesPerImage = ((input.height + 1) / 2) * ((input.width + 1) / 2)
        chunkImages = min(maxBatch, max(1, Self.targetTiles / tilesPerImage))
        let widest = max(inChannels, outChannels)
        let plane = chunkImages * tilesPerImage * widest + 16
        u = FlatBuffer(count: 16 * outChannels * inChannels)
        uTransposed = FlatBuffer(count: 16 * outChannels * inChannels)
        du = FlatBuffer(count: 16 * outChannels * inChannels)
        first = FlatBuffer(count: 16 * plane)
        second = FlatBuffer(count: 16 * plane)
    }

    /// Elements between two of the 16 planes of a chunk of `tiles` tiles of `channels`: the planes'
    /// size, moved off a multiple of 4 KiB (16 planes 4 KiB apart share L1 sets: the transforms ran
    /// 1.7x slower).
    private func stride(tiles: Int, channels: Int) -> Int {
        let plane = tiles * channels
        return plane % 1024 == 0 ? plane + 16 : plane
    }

    /// The image ranges of the chunks of `images` (restarting at each range's start).
    private func forEachChunk(_ images: Range<Int>, _ body: (Range<Int>) -> Void) {
        var start = images.lowerBound
        while start < images.upperBound {
            let end = min(start + chunkImages, images.upperBound)
            body(start..<end)
            start = end
        }
    }

    /// `y = conv(x, w)` for the images `images` of the batch, calling `eachChunk(pixels)` with each
    /// chunk's output pixels once written.
    func forward(
        _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, weight w: UnsafePointer<Float>, images: Range<Int>,
        eachChunk: (Range<Int>) -> Void
    ) {
        ak_winograd_filter(w, Int32(outChannels), Int32(inChannels), uTransposed.pointer, 1)
        let pixels = shape.pixels
        forEachChunk(images) { chunk in
            let tiles = chunk.count * tilesPerImage, tile0 = chunk.lowerBound * tilesPerImage
            let vStride = stride(tiles: tiles, channels: inChannels), mStride = stride(tiles: tiles, channels: outChannels)
            input(x, channels: inChannels, tile0: tile0, tiles: tiles, planeStride: vStride, into: first.pointer)
            for p in 0..<16 {
                product(
                    tiles: tiles, n: outChannels, k: inChannels, a: first.pointer + p * vStride,
                    b: uTransposed.pointer + p * outChannels * inChannels, c: second.pointer + p * mStride)
            }
            ak_winograd_output(
                second.pointer, Int32(shape.height), Int32(shape.width), Int32(outChannels), tile0, tiles, mStride, y,
                nil)
            eachChunk(chunk.lowerBound * pixels..<chunk.upperBound * pixels)
        }
    }

    /// For the images `images`: `dw = ` (with `beta` 1, `dw +=`) the weight gradient, and when `dx`
    /// is given, `dx = initial + ` the input gradient (`initial` nil: zeros). `prepare(pixels)` is
    /// called with each chunk's output pixels before `dy` is read there.
    func backward(
        _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>?,
        initial: UnsafePointer<Float>?, weight w: UnsafePointer<Float>, dw: UnsafeMutablePointer<Float>, beta: Float,
        images: Range<Int>, prepare: (Range<Int>) -> Void
    ) {
        if dx != nil { ak_winograd_filter(w, Int32(outChannels), Int32(inChannels), u.pointer, 0) }
        let pixels = shape.pixels, filterPlane = outChannels * inChannels
        var duBeta: Float = 0
        forEachChunk(images) { chunk in
            prepare(chunk.lowerBound * pixels..<chunk.upperBound * pixels)
            let tiles = chunk.count * tilesPerImage, tile0 = chunk.lowerBound * tilesPerImage
            let vStride = stride(tiles: tiles, channels: inChannels), zStride = stride(tiles: tiles, channels: outChannels)
            // weight gradient: du[p] (+)= z[p]^T v[p]
            input(x, channels: inChannels, tile0: tile0, tiles: tiles, planeStride: vStride, into: first.pointer)
            ak_winograd_output_gradient(
                dy, Int32(shape.height), Int32(shape.width), Int32(outChannels), tile0, tiles, zStride, second.pointer)
            for p in 0..<16 {
                BLAS.gemm(
                    .transposed, .none, m: outChannels, n: inChannels, k: tiles,
                    a: second.pointer + p * zStride, lda: outChannels, b: first.pointer + p * vStride, ldb: inChannels,
                    beta: duBeta, c: du.pointer + p * filterPlane, ldc: inChannels)
            }
            duBeta = 1
            guard let dx else { return }
            // input gradient: the forward convolution of dy with the rotated filter
            input(dy, channels: outChannels, tile0: tile0, tiles: tiles, planeStride: zStride, into: second.pointer)
            for p in 0..<16 {
                let (a, b) = (p / 4, p % 4)
                let rotated = Self.flip(a) * 4 + Self.flip(b)
                product(
                    tiles: tiles, n: inChannels, k: outChannels, a: second.pointer + p * zStride,
                    b: u.pointer + rotated * filterPlane, c: first.pointer + p * vStride)
            }
            ak_winograd_output(
                first.pointer, Int32(shape.height), Int32(shape.width), Int32(inChannels), tile0, tiles, vStride, dx,
                initial)
        }
        if images.isEmpty {
            if beta == 0 { dw.update(repeating: 0, count: 9 * filterPlane) }
            return
        }
        ak_winograd_filter_gradient(du.pointer, Int32(outChannels), Int32(inChannels), dw, beta == 0 ? 0 : 1)
    }

    /// `c[tiles, n] = a[tiles, k] b[k, n]`, all dense.
    private func product(
        tiles: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>
    ) {
        if ownProducts {
            ak_gemm_small(tiles, Int32(n), Int32(k), a, k, b, n, c, n)
        } else {
            BLAS.gemm(.none, .none, m: tiles, n: n, k: k, a: a, lda: k, b: b, ldb: n, beta: 0, c: c, ldc: n)
        }
    }

    /// Transform position `i` of the filter rotated by 180 degrees: G rev(g) is G g with rows 0 and 3 swapped.
    private static func flip(_ i: Int) -> Int { i == 0 ? 3 : i == 3 ? 0 : i }

    private func input(
        _ x: UnsafePointer<Float>, channels: Int, tile0: Int, tiles: Int, planeStride: Int,
        into v: UnsafeMutablePointer<Float>
    ) {
        ak_winograd_input(x, Int32(shape.height), Int32(shape.width), Int32(channels), tile0, tiles, planeStride, v)
    }

    /// The GEMMs of `forward` or `backward` over a batch of `batch` images, one entry per shape.
    func gemmWorkload(batch: Int, pass: Conv2d.Pass) -> [GemmCall] {
        var chunks: [(tiles: Int, repeats: Int)] = []
        let full = batch / chunkImages, rest = batch % chunkImages
        if full > 0 { chunks.append((chunkImages * tilesPerImage, full)) }
        if rest > 0 { chunks.append((rest * tilesPerImage, 1)) }
        var calls: [GemmCall] = []
        for (tiles, repeats) in chunks {
            switch pass {
            case .forward:
                calls.append(
                    GemmCall(
                        .none, .none, m: tiles, n: outChannels, k: inChannels, beta: 0, repeats: 16 * repeats,
                        smallKernel: ownProducts))
            case .weightGradient, .backward:
                calls.append(
                    GemmCall(.transposed, .none, m: outChannels, n: inChannels, k: tiles, beta: 1, repeats: 16 * repeats))
                if pass == .backward {
                    calls.append(
                        GemmCall(
                            .none, .none, m: tiles, n: inChannels, k: outChannels, beta: 0, repeats: 16 * repeats,
                            smallKernel: ownProducts))
                }
            }
        }
        return calls
    }
}
