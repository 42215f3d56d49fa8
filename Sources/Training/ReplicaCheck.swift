import Collectives
import TensorCore

/// Detects replicas that drifted apart: every rank hashes its parameters and BN buffers, the hashes
/// are gathered, and any rank that differs from rank 0 is named.
enum ReplicaCheck {
    /// FNV-1a over the bytes of the buffers.
    static func fingerprint(_ buffers: [FlatBuffer]) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for buffer in buffers {
            let bytes = UnsafeRawBufferPointer(buffer.all)
            for b in bytes {
                hash = (hash ^ UInt64(b)) &* 0x0000_0100_0000_01B3
            }
        }
        return hash
    }

    /// Collective: throws naming the ranks whose replica differs from rank 0's.
    static func verify(_ buffers: [FlatBuffer], over communicator: Communicator, when: String) throws {
        let all = try communicator.allgather(fingerprint(buffers))
        let differing = all.indices.filter { all[$0] != all[0] }
        if !differing.isEmpty {
            throw TrainingError.replicasDiffer(ranks: differing, when: when)
        }
    }
}

/// Faults of a training run that are not bad input (those are rejected before any work).
public enum TrainingError: Error, CustomStringConvertible {
    case replicasDiffer(ranks: [Int], when: String)
    case configuration(String)
    case nonFinite(
        step: Int, what: String,
        advice: String = "lower --lr-si or --lr-sv (the rate of the group that diverged), or check the data")

    public var description: String {
        switch self {
        case let .replicasDiffer(ranks, when):
            "the parameters of rank(s) \(ranks.map(String.init).joined(separator: ", ")) differ from rank 0's \(when); the replicas are out of sync"
        case let .configuration(text):
            text
        case let .nonFinite(step, what, advice):
            "\(what) became NaN or infinite at step \(step); \(advice)"
        }
    }
}
