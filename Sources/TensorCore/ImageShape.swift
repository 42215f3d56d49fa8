/// The shape of one image sample. Images are stored channels-last (HWC: the `channels` values of a
/// pixel are adjacent, pixels row by row), and a batch is NHWC: sample n starts at
/// `n * height * width * channels`. Channels-last makes every pixel a row of a `[N*H*W, C]` matrix, so
/// channel BN is feature BN over N*H*W rows, and the lowering of a convolution copies runs of C values.
public struct ImageShape: Sendable, Equatable, CustomStringConvertible {
    public let height: Int
    public let width: Int
    public let channels: Int

    public init(height: Int, width: Int, channels: Int) {
        precondition(height > 0 && width > 0 && channels > 0, "image sizes must be positive")
        self.height = height
        self.width = width
        self.channels = channels
    }

    /// Values per image.
    public var count: Int { height * width * channels }
    /// Pixels per image.
    public var pixels: Int { height * width }
    public var description: String { "\(height)x\(width)x\(channels)" }
}
