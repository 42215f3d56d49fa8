import Data
import FuzzSupport

/// NumPy: the input is parsed both as one `.npy` array and as a `.npz` archive (the zip directory,
/// stored and deflated entries: the deflate path runs zlib on it, the arrays and their conversion).
func check(_ bytes: [UInt8]) -> String {
    let (array, arraySummary) = Fuzz.parse(
        "npy", { try NumPy.parseNPY(bytes: bytes, path: Fuzz.inputPath) },
        accepted: {
            "'\($0.dtype.rawValue)' \($0.shape)"
        })
    if let array {
        let elements = array.shape.reduce(1, *)
        Fuzz.require(array.data.count == elements * array.dtype.size, "npy: \(array.data.count) bytes for \(array.shape)")
        Fuzz.require(array.count == elements, "npy: count \(array.count) for shape \(array.shape)")
        Fuzz.require(array.data.count <= bytes.count, "npy: more data than input")
    }
    let (splits, splitsSummary) = Fuzz.parse(
        "npz", { try NumPy.parseNPZ(bytes: bytes, path: Fuzz.inputPath) },
        accepted: {
            "\($0.train.count) train and \($0.test.count) test samples of \($0.train.dimension) values, \($0.train.classes) classes"
        })
    if let splits {
        for split in [splits.train, splits.test] {
            Fuzz.require(split.count > 0 && split.dimension > 0, "npz: \(split.name) is empty")
            Fuzz.require(split.features.count == split.count * split.dimension, "npz: \(split.name) feature count")
            Fuzz.require(split.features.allSatisfy { $0.isFinite }, "npz: \(split.name) holds a non-finite value")
            Fuzz.require(
                split.labels.allSatisfy { $0 >= 0 && Int($0) < split.classes }, "npz: \(split.name) label outside the classes")
        }
        Fuzz.require(splits.train.classes >= 2, "npz: fewer than 2 classes")
    }
    return arraySummary + "; " + splitsSummary
}

#if FUZZING
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { Fuzz.run(data, size, check) }
#else
    @main enum Replay { static func main() { Fuzz.replay(check) } }
#endif
