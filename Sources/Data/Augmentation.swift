import TensorCore

/// Training-time augmentation of channels-last images, one sample at a time.
///
/// The draws of a sample come only from (seed, epoch, sample index), never from the batch position
/// or the rank, so an augmented global batch is the same whatever the number of ranks.
public enum Augmentation: String, Sendable, CaseIterable {
    /// The image as it is.
    case none
    /// The CIFAR recipe: shift by dy, dx uniform in -padding...padding (a random crop of the image
    /// padded with `padding` zeros on each side), then a horizontal flip with probability 1/2.
    /// Pixels shifted in from outside are 0, which on standardized data is the training mean.
    case cropFlip = "crop-flip"

    public static let padding = 4
    public static let accepted = allCases.map { "'\($0.rawValue)'" }.joined(separator: " or ")

    /// The shift and flip of one sample: output pixel (y, x) is input pixel (y + dy, x' + dx), where
    /// x' = width - 1 - x when flipped and x otherwise, and 0 outside the input.
    public static func cropFlipParameters(seed: UInt64, epoch: Int, sampleIndex: Int) -> (dy: Int, dx: Int, flip: Bool) {
        var rng = SplitMix64.derived(seed, UInt64(epoch), UInt64(sampleIndex), 0xA06_F11B)
        let span = UInt64(2 * padding + 1)
        let dy = Int(rng.next() % span) - padding
        let dx = Int(rng.next() % span) - padding
        return (dy, dx, rng.next() & 1 == 1)
    }

    /// Writes the augmented `source` image (`shape.count` values, HWC) into `destination`; the two
    /// must not overlap.
    public func apply(
        _ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<Float>, shape: ImageShape,
        seed: UInt64, epoch: Int, sampleIndex: Int
    ) {
        switch self {
        case .none:
            destination.update(from: source, count: shape.count)
        case .cropFlip:
            let (dy, dx, flip) = Self.cropFlipParameters(seed: seed, epoch: epoch, sampleIndex: sampleIndex)
            Self.shift(source, into: destination, shape: shape, dy: dy, dx: dx, flip: flip)
        }
    }

    /// Output (y, x) = input (y + dy, (flip ? w - 1 - x : x) + dx), zero outside. Copies whole runs of
    /// pixels when not flipped; a flip reverses the pixels but keeps the channel order of each.
    static func shift(
        _ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<Float>, shape: ImageShape,
        dy: Int, dx: Int, flip: Bool
    ) {
        let w = shape.width, c = shape.channels, rowLength = w * c
        destination.update(repeating: 0, count: shape.count)
        // Output columns whose (unflipped) source column x + dx lies inside the image.
        let first = Swift.max(0, -dx), end = Swift.min(w, w - dx)
        guard first < end else { return }
        for y in 0..<shape.height {
            let sy = y + dy
            guard sy >= 0 && sy < shape.height else { continue }
            let inRow = source + sy * rowLength, outRow = destination + y * rowLength
            if !flip {
                (outRow + first * c).update(from: inRow + (first + dx) * c, count: (end - first) * c)
            } else {
                // Output x reads source column (w - 1 - x) + dx; that is x' = w - 1 - x in first..<end.
                for xp in first..<end {
                    let from = inRow + (xp + dx) * c, to = outRow + (w - 1 - xp) * c
                    for k in 0..<c { to[k] = from[k] }
                }
            }
        }
    }
}
