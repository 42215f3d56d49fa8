import Data
import FuzzSupport

/// safetensors: `SafeTensors.decode`. Whatever it accepts must be self-consistent, re-encode to at
/// most the input's size (plus header padding), and decode again to the same content.
func check(_ bytes: [UInt8]) -> String {
    let (file, summary) = Fuzz.parse(
        "safetensors", { try SafeTensors.decode(bytes, path: Fuzz.inputPath) },
        accepted: {
            "\($0.tensors.count) tensor(s), \($0.metadata.count) metadata key(s)"
        })
    guard let file else { return summary }
    var total = 0
    for t in file.tensors {
        guard let count = t.count else { Fuzz.fail("tensor \(t.name): shape \(t.shape) has no valid element count") }
        Fuzz.require(t.bytes.count == count * t.dtype.size, "tensor \(t.name): \(t.bytes.count) bytes for \(t.dtype) \(t.shape)")
        total += t.bytes.count
        let values: Int
        do {
            switch t.dtype {
            case .f32: values = try file.floats(t.name).count
            case .f64: values = try file.doubles(t.name).count
            case .i64: values = try file.int64s(t.name).count
            }
        } catch { Fuzz.fail("tensor \(t.name): its values cannot be read back: \(error)") }
        Fuzz.require(values == count, "tensor \(t.name): \(values) values for \(count) elements")
    }
    Fuzz.require(total <= bytes.count, "tensors hold \(total) bytes, more than the \(bytes.count)-byte input")
    let encoded = file.encoded()
    Fuzz.require(encoded.count <= bytes.count + 7, "re-encoding grew the file from \(bytes.count) to \(encoded.count) bytes")
    let again: SafeTensors
    do { again = try SafeTensors.decode(encoded, path: Fuzz.inputPath) } catch {
        Fuzz.fail("the re-encoded file does not decode: \(error)")
    }
    Fuzz.require(again.metadata == file.metadata, "metadata changed in a round trip")
    Fuzz.require(again.encoded() == encoded, "encode(decode(encode(x))) differs from encode(x)")
    Fuzz.require(
        Set(again.tensors.map(\.name)) == Set(file.tensors.map(\.name)) && again.tensors.count == file.tensors.count,
        "tensor names changed in a round trip")
    for t in file.tensors {
        Fuzz.require(again.tensor(t.name) == t, "tensor \(t.name) changed in a round trip")
    }
    return summary
}

#if FUZZING
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { Fuzz.run(data, size, check) }
#else
    @main enum Replay { static func main() { Fuzz.replay(check) } }
#endif
