import Data
import FuzzSupport

/// Checkpoints: `CheckpointDirectory.verify` (what `load` runs on a file's bytes). Random inputs
/// almost never carry a right CRC, so for every input that decodes as safetensors the target also
/// seals it as `write` would, checks that the sealed bytes verify to the same content, then changes
/// one byte (position and value taken from the input) and checks that the result is either rejected
/// or still means exactly the same content (e.g. a padding space turned into a tab).
func check(_ bytes: [UInt8]) -> String {
    let (_, summary) = Fuzz.parse(
        "checkpoint", { try CheckpointDirectory.verify(bytes, path: Fuzz.inputPath) },
        accepted: {
            "\($0.tensors.count) tensor(s), checksum verified"
        })
    guard let file = try? SafeTensors.decode(bytes, path: Fuzz.inputPath) else { return summary }
    var content = file
    content.metadata.removeValue(forKey: CheckpointDirectory.checksumKey)
    let sealed = CheckpointDirectory.encode(file)
    let verified: SafeTensors
    do { verified = try CheckpointDirectory.verify(sealed, path: Fuzz.inputPath) } catch {
        Fuzz.fail("a freshly sealed checkpoint does not verify: \(error)")
    }
    Fuzz.require(verified == content, "a sealed checkpoint verifies to different content")
    let hash = bytes.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
    var damaged = sealed
    let at = Int(hash % UInt64(damaged.count))
    damaged[at] ^= UInt8(truncatingIfNeeded: hash >> 32) | 1
    if let accepted = try? CheckpointDirectory.verify(damaged, path: Fuzz.inputPath) {
        Fuzz.require(accepted == content, "changing byte \(at) of a sealed checkpoint changed its content unnoticed")
    }
    return summary + "; sealed copy verifies, damaged copy checked"
}

#if FUZZING
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { Fuzz.run(data, size, check) }
#else
    @main enum Replay { static func main() { Fuzz.replay(check) } }
#endif
