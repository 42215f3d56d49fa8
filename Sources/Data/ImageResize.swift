/// Resizes an image to cover `height x width`, then crops the centre: torchvision's
/// `Resize(shorter side) + CenterCrop(height, width)` for square targets, and for any target the
/// smallest aspect-keeping scale that covers it.
///
/// The filter is PIL's (and torchvision's `antialias=True`) bilinear: a triangle whose radius is one
/// output pixel measured in input pixels, at least one input pixel. Downscaling thus averages every
/// input pixel under the output pixel's footprint (no aliasing); upscaling is plain bilinear. It is
/// separable: a horizontal pass into a Double buffer, a vertical pass, then rounding to the nearest
/// byte. Every weight and sum is Double and computed in a fixed order, so the bytes are the same on
/// every machine (the cache files of two nodes are identical).
///
/// ```
/// scaled size:  (H', W') = (h, round(W*h/H)) when h/H >= w/W, else (round(H*w/W), w)
/// crop offset:  top = (H' - h) / 2, left = (W' - w) / 2   (rounded down)
/// output pixel o (scaled coordinates o + offset) of an axis with scale s = out/in, radius r = max(1, 1/s):
///   centre c = (o + offset + 0.5) / s;  weight of input pixel k: max(0, 1 - |(k + 0.5 - c) / r|), normalized
/// ```
public enum ImageResize {
    /// The scaled size before the centre crop (see the type's discussion).
    public static func scaledSize(from source: (height: Int, width: Int), to target: ImageSize) -> (height: Int, width: Int) {
        let (H, W, h, w) = (source.height, source.width, target.height, target.width)
        if h * W >= w * H {  // the height constrains: it is scaled to h
            return (h, max(w, (2 * W * h + H) / (2 * H)))
        } else {
            return (max(h, (2 * H * w + W) / (2 * W)), w)
        }
    }

    /// One axis's filter: for each output index, the first input index and its normalized weights.
    struct AxisFilter {
        var first: [Int] = []
        var weights: [[Double]] = []

        init(input n: Int, scaled m: Int, offset: Int, count: Int) {
            let scale = Double(m) / Double(n)
            let radius = max(1, 1 / scale)
            for o in 0..<count {
                let centre = (Double(o + offset) + 0.5) / scale
                let lo = max(0, Int((centre - radius).rounded(.down)))
                let hi = min(n, Int((centre + radius).rounded(.up)))
                var w: [Double] = []
                var sum = 0.0
                for k in lo..<hi {
                    let x = max(0, 1 - abs((Double(k) + 0.5 - centre) / radius))
                    w.append(x)
                    sum += x
                }
                first.append(lo)
                weights.append(w.map { $0 / sum })
            }
        }
    }

    /// Resizes `image` and crops it to `target`, writing `target.height * target.width * channels`
    /// bytes (HWC) to `output`. An image already of the target size is copied unchanged.
    public static func resize(_ image: DecodedImage, to target: ImageSize, into output: UnsafeMutableRawBufferPointer) {
        let c = image.channels, h = target.height, w = target.width
        precondition(output.count == h * w * c, "resize output holds \(output.count) bytes, not \(h * w * c)")
        if image.height == h && image.width == w {
            image.pixels.withUnsafeBytes { output.copyMemory(from: $0) }
            return
        }
        let scaled = scaledSize(from: (image.height, image.width), to: target)
        let rows = AxisFilter(input: image.height, scaled: scaled.height, offset: (scaled.height - h) / 2, count: h)
        let columns = AxisFilter(input: image.width, scaled: scaled.width, offset: (scaled.width - w) / 2, count: w)
        // horizontal pass over the input rows the vertical pass reads
        let rowLo = rows.first.first!, rowHi = (0..<h).map { rows.first[$0] + rows.weights[$0].count }.max()!
        var horizontal = [Double](repeating: 0, count: (rowHi - rowLo) * w * c)
        image.pixels.withUnsafeBufferPointer { src in
            for y in rowLo..<rowHi {
                let srcRow = y * image.width * c, dstRow = (y - rowLo) * w * c
                for x in 0..<w {
                    let k0 = columns.first[x]
                    for ch in 0..<c {
                        var sum = 0.0
                        for (j, weight) in columns.weights[x].enumerated() {
                            sum += weight * Double(src[srcRow + (k0 + j) * c + ch])
                        }
                        horizontal[dstRow + x * c + ch] = sum
                    }
                }
            }
        }
        let out = output.bindMemory(to: UInt8.self)
        for y in 0..<h {
            let k0 = rows.first[y] - rowLo
            for i in 0..<(w * c) {
                var sum = 0.0
                for (j, weight) in rows.weights[y].enumerated() { sum += weight * horizontal[(k0 + j) * w * c + i] }
                out[y * w * c + i] = UInt8(min(255, max(0, sum.rounded())))
            }
        }
    }

    /// `resize` into a new array.
    public static func resized(_ image: DecodedImage, to target: ImageSize) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: target.height * target.width * image.channels)
        bytes.withUnsafeMutableBytes { resize(image, to: target, into: $0) }
        return bytes
    }
}
