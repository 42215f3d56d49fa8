import Data
import FuzzSupport

/// CIFAR-10 binary: the input is one batch file as stored on disk (plain or gzip-compressed).
func check(_ bytes: [UInt8]) -> String {
    let (set, summary) = Fuzz.parse(
        "batch", { try CIFAR10.parseBatches([(bytes, Fuzz.inputPath)], name: "fuzz") },
        accepted: {
            "\($0.count) images"
        })
    if let set {
        Fuzz.require(
            set.count > 0 && set.image == CIFAR10.image, "batch: \(set.count) images of \(String(describing: set.image))")
        Fuzz.require(set.features.count == set.count * CIFAR10.image.count, "batch: feature count does not match")
        Fuzz.require(set.labels.allSatisfy { $0 >= 0 && $0 < Int32(CIFAR10.classes) }, "batch: a label outside 0...9")
        Fuzz.require(set.features.allSatisfy { $0 >= 0 && $0 <= 1 }, "batch: a pixel outside [0, 1]")
    }
    return summary
}

#if FUZZING
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { Fuzz.run(data, size, check) }
#else
    @main enum Replay { static func main() { Fuzz.replay(check) } }
#endif
