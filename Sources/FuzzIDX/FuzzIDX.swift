import Data
import FuzzSupport

/// IDX (MNIST, Fashion-MNIST): the input is parsed both as an image file and as a label file, as
/// stored on disk (plain, or gzip-compressed: the gzip path runs zlib on it).
func check(_ bytes: [UInt8]) -> String {
    let (images, imagesSummary) = Fuzz.parse(
        "images", { try MNIST.parseImages(bytes: bytes, path: Fuzz.inputPath) },
        accepted: {
            "\($0.count) images of \($0.image.height)x\($0.image.width)"
        })
    if let images {
        Fuzz.require(images.count > 0 && images.image.channels == 1, "images: \(images.count) images, shape \(images.image)")
        Fuzz.require(images.features.count == images.count * images.image.count, "images: feature count does not match")
        Fuzz.require(images.features.allSatisfy { $0 >= 0 && $0 <= 1 }, "images: a pixel outside [0, 1]")
    }
    let (labels, labelsSummary) = Fuzz.parse(
        "labels", { try MNIST.parseLabels(bytes: bytes, path: Fuzz.inputPath) },
        accepted: {
            "\($0.count) labels"
        })
    if let labels {
        Fuzz.require(labels.allSatisfy { $0 >= 0 && $0 < Int32(MNIST.classes) }, "labels: a label outside 0...9")
    }
    return imagesSummary + "; " + labelsSummary
}

#if FUZZING
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { Fuzz.run(data, size, check) }
#else
    @main enum Replay { static func main() { Fuzz.replay(check) } }
#endif
