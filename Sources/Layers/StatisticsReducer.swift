import TensorCore

/// Sums per-channel statistics over the ranks that share a batch (synchronized BN), or does nothing
/// (per-rank statistics). Implemented by the training layer with a communicator, so this module
/// needs no MPI.
public protocol StatisticsReducer {
    /// Collective when synchronized: replaces each value by its sum over the ranks.
    func sumAcrossRanks(_ values: UnsafeMutableBufferPointer<Double>) throws
}

/// Where the `.scaled`-epsilon radial weight gradient goes (see `BatchNorm.applyEpsilonGradient`).
public enum RadialDeferral: Sendable {
    /// Added to the gradient buffer at once.
    case none
    /// Kept as per-row coefficients from the global sums, identical on every rank.
    case global
    /// Kept as per-row coefficients from this rank's sums; to be summed over ranks.
    case local
}

/// Statistics of this process only (plain DDP's BN, and every single-process run).
public struct LocalStatistics: StatisticsReducer {
    public init() {}
    public func sumAcrossRanks(_ values: UnsafeMutableBufferPointer<Double>) throws {}
}
