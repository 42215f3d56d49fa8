import Collectives
import Layers

/// Synchronized BN: sums each BN layer's per-channel statistics over all ranks of `communicator`.
/// Collective: every rank's BN layers call it in the same order (the network's layer order).
struct SynchronizedStatistics: StatisticsReducer {
    let communicator: Communicator
    func sumAcrossRanks(_ values: UnsafeMutableBufferPointer<Double>) throws {
        try communicator.allreduce(values, .sum)
    }
}

/// How BN layers compute batch statistics across ranks.
public enum BatchNormSync: String, Sendable, CaseIterable {
    /// Statistics of the global batch (every rank's samples): the default.
    case sync
    /// Statistics of each rank's own samples, as plain DDP and Horovod do.
    case local
}
