import CPNG
import CTurboJPEG

/// One decoded image: `pixels` are `height * width * channels` bytes, rows top to bottom, channels
/// last (HWC). `channels` is 1 (grayscale) or 3 (RGB).
public struct DecodedImage: Sendable, Equatable {
    public let height: Int
    public let width: Int
    public let channels: Int
    public var pixels: [UInt8]
}

/// Decodes PNG (libpng's simplified API) and JPEG (libjpeg-turbo's TurboJPEG API) files, told apart
/// by their first bytes. Neither API needs `setjmp`: errors come back as return codes and text,
/// which become `DataError`s naming the file and the decoder's own reason.
///
/// Channels: grayscale images (PNG gray or gray+alpha, JPEG grayscale) decode to 1 channel; every
/// colour image (PNG RGB, RGBA, palette; JPEG YCbCr or RGB) to 3. An alpha channel (or a tRNS
/// transparency) is composited onto black. 16-bit PNG samples are reduced to 8 bits by libpng.
///
/// One decoder holds a TurboJPEG handle: use it from one thread at a time.
public final class ImageDecoder {
    /// The most pixels an image may have (8192x8192): a header claiming more is rejected before
    /// any allocation.
    public static let maximumPixels = 1 << 26
    private var jpeg: tjhandle?

    public init() {}

    deinit { if let jpeg { tjDestroy(jpeg) } }

    enum Format { case png, jpeg }

    static func format(_ bytes: UnsafeRawBufferPointer, path: String) throws -> Format {
        let b = Array(bytes.prefix(8))
        if b.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if b.starts(with: [0xFF, 0xD8, 0xFF]) { return .jpeg }
        let shown = b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: " ")
        throw DataError(
            path: path,
            "is neither a PNG nor a JPEG: it starts with \(shown.isEmpty ? "nothing (the file is empty)" : shown), not the PNG signature 89 50 4e 47 0d 0a 1a 0a or the JPEG one ff d8 ff"
        )
    }

    /// Height, width and channel count (1 or 3) from the file's header, without decoding pixels.
    /// - Throws: `DataError` naming `path` when the header cannot be read.
    public func header(_ bytes: UnsafeRawBufferPointer, path: String) throws -> (height: Int, width: Int, channels: Int) {
        switch try Self.format(bytes, path: path) {
        case .png:
            return try withPNG(bytes, path: path) { image in
                let (height, width) = (Int(image.pointee.height), Int(image.pointee.width))
                try Self.checkSize(height, width, "PNG", path)
                return (height, width, image.pointee.format & UInt32(PNG_FORMAT_FLAG_COLOR) != 0 ? 3 : 1)
            }
        case .jpeg:
            let h = try jpegHeader(bytes, path: path)
            return (h.height, h.width, h.channels)
        }
    }

    /// Decodes a whole file's bytes.
    /// - Throws: `DataError` naming `path`, with the decoder's reason, for a corrupt, truncated or
    ///   unsupported file, or one larger than `maximumPixels`.
    public func decode(_ bytes: UnsafeRawBufferPointer, path: String) throws -> DecodedImage {
        switch try Self.format(bytes, path: path) {
        case .png: return try decodePNG(bytes, path: path)
        case .jpeg: return try decodeJPEG(bytes, path: path)
        }
    }

    public func decode(_ bytes: [UInt8], path: String) throws -> DecodedImage {
        try bytes.withUnsafeBytes { try decode($0, path: path) }
    }

    private static func checkSize(_ height: Int, _ width: Int, _ kind: String, _ path: String) throws {
        guard height > 0, width > 0, height * width <= maximumPixels else {
            throw DataError(
                path: path, "is a \(kind) of \(height)x\(width) pixels; accepted are 1 to \(maximumPixels) pixels (8192x8192)")
        }
    }

    private static func message(_ image: UnsafeMutablePointer<png_image>) -> String {
        withUnsafeBytes(of: image.pointee.message) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    }

    /// Runs `body` on a `png_image` whose header has been read. The struct lives on the heap: libpng
    /// keeps its address from `begin` to `finish` (its error handler finds the jump buffer through
    /// it), so it must never move or be copied in between.
    private func withPNG<T>(_ bytes: UnsafeRawBufferPointer, path: String, _ body: (UnsafeMutablePointer<png_image>) throws -> T)
        throws -> T
    {
        let image = UnsafeMutablePointer<png_image>.allocate(capacity: 1)
        image.initialize(to: png_image())
        defer {
            png_image_free(image)
            image.deallocate()
        }
        image.pointee.version = UInt32(PNG_IMAGE_VERSION)
        guard png_image_begin_read_from_memory(image, bytes.baseAddress, bytes.count) != 0 else {
            throw DataError(path: path, "is not a valid PNG (libpng: \(Self.message(image)))")
        }
        return try body(image)
    }

    private func decodePNG(_ bytes: UnsafeRawBufferPointer, path: String) throws -> DecodedImage {
        try withPNG(bytes, path: path) { image in
            let height = Int(image.pointee.height), width = Int(image.pointee.width)
            try Self.checkSize(height, width, "PNG", path)
            let color = image.pointee.format & UInt32(PNG_FORMAT_FLAG_COLOR) != 0
            let channels = color ? 3 : 1
            image.pointee.format = color ? UInt32(PNG_FORMAT_RGB) : UInt32(PNG_FORMAT_GRAY)
            var black = png_color(red: 0, green: 0, blue: 0)
            var pixels = [UInt8](repeating: 0, count: height * width * channels)
            let ok = pixels.withUnsafeMutableBytes {
                png_image_finish_read(image, &black, $0.baseAddress, Int32(width * channels), nil)
            }
            guard ok != 0 else { throw DataError(path: path, "is not a valid PNG (libpng: \(Self.message(image)))") }
            return DecodedImage(height: height, width: width, channels: channels, pixels: pixels)
        }
    }

    private func jpegHandle(_ path: String) throws -> tjhandle {
        if let jpeg { return jpeg }
        guard let handle = tjInitDecompress() else {
            throw DataError(path: path, "cannot be decoded: TurboJPEG could not start (\(String(cString: tjGetErrorStr2(nil))))")
        }
        jpeg = handle
        return handle
    }

    private func jpegError(_ handle: tjhandle, _ path: String) -> DataError {
        DataError(path: path, "is not a valid JPEG (TurboJPEG: \(String(cString: tjGetErrorStr2(handle))))")
    }

    private func jpegHeader(_ bytes: UnsafeRawBufferPointer, path: String) throws -> (height: Int, width: Int, channels: Int) {
        let handle = try jpegHandle(path)
        var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        let source = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        guard tjDecompressHeader3(handle, source, UInt(bytes.count), &width, &height, &subsampling, &colorspace) == 0 else {
            throw jpegError(handle, path)
        }
        try Self.checkSize(Int(height), Int(width), "JPEG", path)
        return (Int(height), Int(width), colorspace == Int32(TJCS_GRAY.rawValue) ? 1 : 3)
    }

    private func decodeJPEG(_ bytes: UnsafeRawBufferPointer, path: String) throws -> DecodedImage {
        let (height, width, channels) = try jpegHeader(bytes, path: path)
        let handle = try jpegHandle(path)
        var pixels = [UInt8](repeating: 0, count: height * width * channels)
        let format = channels == 1 ? TJPF_GRAY : TJPF_RGB
        // STOPONWARNING: a truncated file ("Premature end of JPEG file") is an error, not grey rows.
        let status = pixels.withUnsafeMutableBufferPointer {
            tjDecompress2(
                handle, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt(bytes.count), $0.baseAddress,
                Int32(width), 0, Int32(height), Int32(format.rawValue), TJFLAG_STOPONWARNING | TJFLAG_ACCURATEDCT)
        }
        guard status == 0 else { throw jpegError(handle, path) }
        return DecodedImage(height: height, width: width, channels: channels, pixels: pixels)
    }
}
