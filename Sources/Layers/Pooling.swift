import TensorCore

/// 2x2 max pooling with stride 2 on NHWC batches. Odd heights and widths drop their last row or column
/// (floor, as PyTorch's default), whose gradient is then zero.
///
/// Forward records which of the four window positions won (0: top left, 1: top right, 2: bottom left,
/// 3: bottom right; ties go to the first), one byte per output value, so backward routes each gradient
/// without re-reading the input. The four inputs of an output pixel are runs of C values, so both
/// passes work on whole channel runs with selects, which vectorize.
public final class MaxPool2d {
    public let input: ImageShape
    public let output: ImageShape
    public let maxBatch: Int

    /// Winner of each output value of the last forward, `[maxBatch, output.count]`.
    private let argmax: UnsafeMutablePointer<UInt8>
    private var rows = 0

    public init(input: ImageShape, maxBatch: Int) {
        precondition(input.height >= 2 && input.width >= 2, "max pooling needs at least 2x2 pixels, got \(input)")
        precondition(maxBatch > 0, "maxBatch must be positive")
        self.input = input
        self.output = ImageShape(height: input.height / 2, width: input.width / 2, channels: input.channels)
        self.maxBatch = maxBatch
        argmax = .allocate(capacity: maxBatch * output.count)
        argmax.initialize(repeating: 0, count: maxBatch * output.count)
    }

    deinit { argmax.deallocate() }

    /// `y = max over each 2x2 window of x`; remembers the winners for `backward`.
    public func forward(_ x: Matrix, _ y: Matrix) {
        precondition(x.cols == input.count && y.cols == output.count && x.rows == y.rows, "MaxPool2d forward shape mismatch")
        precondition(x.rows <= maxBatch, "batch of \(x.rows) exceeds the MaxPool2d's maxBatch \(maxBatch)")
        rows = x.rows
        let c = input.channels, inRow = input.width &* c
        forEachWindow(rows: x.rows) { inputStart, outputStart in
            let topLeft = UnsafePointer(x.base + inputStart), bottomLeft = topLeft + inRow
            Self.maxOfFour(
                topLeft, topLeft + c, bottomLeft, bottomLeft + c, into: y.base + outputStart, winner: argmax + outputStart,
                count: c)
        }
    }

    /// The element-wise maximum of four runs and which run won.
    private static func maxOfFour(
        _ topLeft: UnsafePointer<Float>, _ topRight: UnsafePointer<Float>, _ bottomLeft: UnsafePointer<Float>,
        _ bottomRight: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, winner: UnsafeMutablePointer<UInt8>,
        count: Int
    ) {
        // Four channels at a time in explicit vectors (no per-run alias checks), then the rest.
        var i = 0
        while i &+ 4 <= count {
            let a = loadFloat4(topLeft + i), b = loadFloat4(topRight + i)
            let d = loadFloat4(bottomLeft + i), e = loadFloat4(bottomRight + i)
            let takeRight = b .> a, takeBottomRight = e .> d
            let top = a.replacing(with: b, where: takeRight), bottom = d.replacing(with: e, where: takeBottomRight)
            let takeBottom = bottom .> top
            storeFloat4(top.replacing(with: bottom, where: takeBottom), out + i)
            let topIndex = SIMD4<Int32>(repeating: 0).replacing(with: 1, where: takeRight)
            let bottomIndex = SIMD4<Int32>(repeating: 2).replacing(with: 3, where: takeBottomRight)
            let index = SIMD4<UInt8>(truncatingIfNeeded: topIndex.replacing(with: bottomIndex, where: takeBottom))
            UnsafeMutableRawPointer(winner + i).storeBytes(of: index, as: SIMD4<UInt8>.self)
            i &+= 4
        }
        while i < count {
            let a = topLeft[i], b = topRight[i], d = bottomLeft[i], e = bottomRight[i]
            // Strict `>` everywhere: a tie keeps the earlier position.
            let takeRight = b > a, takeBottomRight = e > d
            let top = takeRight ? b : a, bottom = takeBottomRight ? e : d
            let takeBottom = bottom > top
            out[i] = takeBottom ? bottom : top
            let topIndex: UInt8 = takeRight ? 1 : 0, bottomIndex: UInt8 = takeBottomRight ? 3 : 2
            winner[i] = takeBottom ? bottomIndex : topIndex
            i &+= 1
        }
    }

    /// `dx` = `dy` at each window's winner, zero elsewhere (dropped odd rows and columns included).
    public func backward(_ dy: Matrix, _ dx: Matrix) {
        precondition(dy.cols == output.count && dx.cols == input.count && dy.rows == dx.rows, "MaxPool2d backward shape mismatch")
        precondition(dy.rows == rows, "MaxPool2d backward for \(dy.rows) rows after a forward of \(rows)")
        let c = input.channels, inRow = input.width &* c
        zeroDroppedEdges(dx)
        forEachWindow(rows: dy.rows) { inputStart, outputStart in
            let topLeft = dx.base + inputStart, bottomLeft = topLeft + inRow
            Self.route(
                dy.base + outputStart, winner: argmax + outputStart, topLeft, topLeft + c, bottomLeft, bottomLeft + c,
                count: c)
        }
    }

    /// Writes each gradient to the run that won and zeros to the other three.
    private static func route(
        _ gradient: UnsafePointer<Float>, winner: UnsafePointer<UInt8>, _ topLeft: UnsafeMutablePointer<Float>,
        _ topRight: UnsafeMutablePointer<Float>, _ bottomLeft: UnsafeMutablePointer<Float>,
        _ bottomRight: UnsafeMutablePointer<Float>, count: Int
    ) {
        // Four channels at a time in explicit vectors: the scalar loop did not vectorize (byte winners
        // selecting Float lanes), then the rest.
        let zero = SIMD4<Float>()
        var i = 0
        while i &+ 4 <= count {
            let g = loadFloat4(gradient + i)
            let k = SIMD4<Int32>(truncatingIfNeeded: UnsafeRawPointer(winner + i).loadUnaligned(as: SIMD4<UInt8>.self))
            storeFloat4(zero.replacing(with: g, where: k .== 0), topLeft + i)
            storeFloat4(zero.replacing(with: g, where: k .== 1), topRight + i)
            storeFloat4(zero.replacing(with: g, where: k .== 2), bottomLeft + i)
            storeFloat4(zero.replacing(with: g, where: k .== 3), bottomRight + i)
            i &+= 4
        }
        while i < count {
            let g = gradient[i], k = winner[i]
            topLeft[i] = k == 0 ? g : 0
            topRight[i] = k == 1 ? g : 0
            bottomLeft[i] = k == 2 ? g : 0
            bottomRight[i] = k == 3 ? g : 0
            i &+= 1
        }
    }

    /// Calls `body(inputStart, outputStart)` with the offsets of each window's top-left input pixel
    /// and of its output pixel, for `rows` images.
    @inline(__always)
    private func forEachWindow(rows: Int, _ body: (Int, Int) -> Void) {
        let c = input.channels, inRow = input.width &* c
        var outputStart = 0
        for n in 0..<rows {
            let image = n &* input.count
            for oy in 0..<output.height {
                let rowStart = image &+ 2 &* oy &* inRow
                for ox in 0..<output.width {
                    body(rowStart &+ 2 &* ox &* c, outputStart)
                    outputStart &+= c
                }
            }
        }
    }

    /// Zeros the last column (odd width) and last row (odd height) of every image: no window reads them.
    private func zeroDroppedEdges(_ dx: Matrix) {
        let c = input.channels, inRow = input.width &* c
        let oddWidth = input.width % 2 == 1, oddHeight = input.height % 2 == 1
        guard oddWidth || oddHeight else { return }
        for n in 0..<dx.rows {
            let image = dx.row(n)
            if oddWidth {
                for y in 0..<input.height { (image + (y &* inRow &+ inRow &- c)).update(repeating: 0, count: c) }
            }
            if oddHeight { (image + (input.height &- 1) &* inRow).update(repeating: 0, count: inRow) }
        }
    }
}

/// Mean over the pixels of each image and channel: `[n, H * W * C] -> [n, C]`.
///
/// Sums are accumulated in Float, one C-wide vector add per pixel: the error is at most about
/// `H * W * 2^-24` relative to the sum of |x| (6e-5 for 32x32; in practice ~sqrt of that), far below
/// what training notices, and a Double accumulator would need a scratch row and a conversion per value.
public enum GlobalAveragePool {
    public static func forward(_ x: Matrix, shape: ImageShape, _ y: Matrix) {
        precondition(
            x.cols == shape.count && y.cols == shape.channels && x.rows == y.rows, "GlobalAveragePool forward shape mismatch")
        let c = shape.channels, scale = 1 / Float(shape.pixels)
        for n in 0..<x.rows {
            let image = UnsafePointer(x.row(n)), sum = y.row(n)
            sum.update(repeating: 0, count: c)
            for pixel in 0..<shape.pixels {
                let values = image + pixel &* c
                for i in 0..<c { sum[i] += values[i] }
            }
            for i in 0..<c { sum[i] *= scale }
        }
    }

    /// `dx[n, pixel, c] = dy[n, c] / (H * W)` for every pixel.
    public static func backward(_ dy: Matrix, shape: ImageShape, _ dx: Matrix) {
        precondition(
            dy.cols == shape.channels && dx.cols == shape.count && dy.rows == dx.rows, "GlobalAveragePool backward shapes")
        let c = shape.channels, scale = 1 / Float(shape.pixels)
        for n in 0..<dy.rows {
            let g = UnsafePointer(dy.row(n)), image = dx.row(n)
            for i in 0..<c { image[i] = g[i] * scale }
            for pixel in 1..<shape.pixels { (image + pixel &* c).update(from: image, count: c) }
        }
    }
}

/// Reorders each image from HWC (this code's layout) to CHW (PyTorch's), so that a Linear after it
/// sees features in `nn.Flatten`'s order and a PyTorch model's weights load unchanged.
public enum Flatten {
    /// `y[n, c * H * W + pixel] = x[n, pixel * C + c]`: a `[H * W, C]` transpose per image.
    public static func forward(_ x: Matrix, shape: ImageShape, _ y: Matrix) {
        precondition(x.cols == shape.count && y.cols == shape.count && x.rows == y.rows, "Flatten forward shape mismatch")
        let c = shape.channels, pixels = shape.pixels
        for n in 0..<x.rows {
            let from = UnsafePointer(x.row(n)), to = y.row(n)
            for pixel in 0..<pixels {
                let values = from + pixel &* c
                for i in 0..<c { to[i &* pixels &+ pixel] = values[i] }
            }
        }
    }

    /// The inverse permutation: `dx[n, pixel * C + c] = dy[n, c * H * W + pixel]`.
    public static func backward(_ dy: Matrix, shape: ImageShape, _ dx: Matrix) {
        precondition(dy.cols == shape.count && dx.cols == shape.count && dy.rows == dx.rows, "Flatten backward shape mismatch")
        let c = shape.channels, pixels = shape.pixels
        for n in 0..<dy.rows {
            let from = UnsafePointer(dy.row(n)), to = dx.row(n)
            for pixel in 0..<pixels {
                let values = to + pixel &* c
                for i in 0..<c { values[i] = from[i &* pixels &+ pixel] }
            }
        }
    }
}
