import Data
import FuzzSupport

/// Image folders: the input is read as a decode cache (`ImageFolderCache.parse`, what a later start
/// runs on the mapped file) and decoded as a PNG or JPEG file (`ImageDecoder`, libpng and TurboJPEG),
/// then resized when it decodes.
func check(_ bytes: [UInt8]) -> String {
    var summary = checkCache(bytes, "cache")
    // the CRC-32 at the end rejects nearly every mutation: the same bytes with a matching CRC reach
    // the checks after it (header fields, labels, the conversion)
    if bytes.count >= 4 {
        var patched = bytes
        var sum = CRC32()
        sum.update(Array(bytes[0..<(bytes.count - 4)]))
        withUnsafeBytes(of: sum.value.littleEndian) { patched.replaceSubrange((bytes.count - 4)..., with: $0) }
        summary += "; " + checkCache(patched, "cache with its CRC")
    }
    return summary + "; " + checkImage(bytes)
}

/// The cache reader on `bytes`: accepted caches must be consistent.
func checkCache(_ bytes: [UInt8], _ label: String) -> String {
    let (splits, cacheSummary) = Fuzz.parse(
        label, { try ImageFolderCache.parse(bytes: bytes, path: Fuzz.inputPath) },
        accepted: {
            "\($0.train.count) train and \($0.test.count) test images of \($0.train.image!), \($0.train.classes) classes"
        })
    if let splits {
        let names = splits.train.classNames ?? []
        Fuzz.require(names.count == splits.train.classes && splits.train.classes >= 2, "cache: class names and count differ")
        for split in [splits.train, splits.test] {
            let image = split.image!
            Fuzz.require(split.count >= 1 && split.dimension == image.count, "cache: \(split.name) is empty or misshapen")
            Fuzz.require(split.features.count == split.count * split.dimension, "cache: \(split.name) feature count")
            Fuzz.require(split.features.allSatisfy { $0 >= 0 && $0 <= 1 }, "cache: \(split.name) pixel outside [0, 1]")
            Fuzz.require(
                split.labels.allSatisfy { $0 >= 0 && Int($0) < split.classes }, "cache: \(split.name) label outside the classes")
        }
        Fuzz.require(
            ImageFolderCache.Layout(
                classNames: names, trainCount: splits.train.count, testCount: splits.test.count, image: splits.train.image!
            ).fileBytes == bytes.count, "cache: accepted with a size its layout does not give")
    }
    return cacheSummary
}

/// The PNG/JPEG decoders on `bytes`, and the resize of what they accept.
func checkImage(_ bytes: [UInt8]) -> String {
    let decoder = ImageDecoder()
    let (image, imageSummary) = Fuzz.parse(
        "image", { try decoder.decode(bytes, path: Fuzz.inputPath) },
        accepted: { "\($0.height)x\($0.width)x\($0.channels)" })
    if let image {
        Fuzz.require(image.channels == 1 || image.channels == 3, "image: \(image.channels) channels")
        Fuzz.require(image.pixels.count == image.height * image.width * image.channels, "image: pixel count")
        let header = bytes.withUnsafeBytes { try? decoder.header($0, path: Fuzz.inputPath) }
        Fuzz.require(
            header.map { [$0.height, $0.width, $0.channels] } == [image.height, image.width, image.channels],
            "image: the header disagrees with the decoded image")
        if image.height * image.width <= 1 << 16 {
            let resized = ImageResize.resized(image, to: ImageSize(height: 7, width: 5))
            Fuzz.require(resized.count == 7 * 5 * image.channels, "image: resized size")
        }
    }
    return imageSummary
}

#if FUZZING
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { Fuzz.run(data, size, check) }
#else
    @main enum Replay { static func main() { Fuzz.replay(check) } }
#endif
