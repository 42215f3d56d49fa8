import TensorCore

/// Which samples each rank takes at each step.
///
/// Every epoch has a permutation of the training set drawn from (seed, epoch), the same on every
/// rank. Step s of an epoch takes positions [s*B, (s+1)*B) of it (B = global batch; the incomplete
/// tail of an epoch is dropped, so every step has exactly B samples). Rank r of P takes the
/// contiguous share [r*B/P, (r+1)*B/P) of those positions: shares differ by at most one sample and
/// their union is the global batch whatever P is, so P ranks see exactly what one process sees.
/// With `--balance on` the trainer passes uneven contiguous shares to `indices(step:positions:)`.
public struct ShardSampler: Sendable {
    public let sampleCount: Int
    public let globalBatch: Int
    public let seed: UInt64
    private var cachedEpoch = -1
    private var permutation: [Int32] = []

    public init(sampleCount: Int, globalBatch: Int, seed: UInt64) {
        precondition(
            globalBatch > 0 && globalBatch <= sampleCount,
            "global batch \(globalBatch) must be between 1 and the \(sampleCount) training samples")
        self.sampleCount = sampleCount
        self.globalBatch = globalBatch
        self.seed = seed
    }

    public var stepsPerEpoch: Int { sampleCount / globalBatch }

    /// The half-open range of global-batch positions that `rank` of `ranks` takes.
    public static func share(of total: Int, rank: Int, ranks: Int) -> Range<Int> {
        (rank * total / ranks)..<((rank + 1) * total / ranks)
    }

    /// The sample indices rank `rank` of `ranks` uses at global step `step` (counting across epochs).
    public mutating func indices(step: Int, rank: Int, ranks: Int) -> ArraySlice<Int32> {
        indices(step: step, positions: Self.share(of: globalBatch, rank: rank, ranks: ranks))
    }

    /// The sample indices at the global-batch positions `mine` of global step `step` (uneven shares:
    /// `--balance on`).
    public mutating func indices(step: Int, positions mine: Range<Int>) -> ArraySlice<Int32> {
        precondition(
            mine.lowerBound >= 0 && mine.upperBound <= globalBatch, "positions \(mine) outside the global batch of \(globalBatch)"
        )
        let epoch = step / stepsPerEpoch, inEpoch = step % stepsPerEpoch
        if epoch != cachedEpoch {
            permutation = Self.permutation(count: sampleCount, seed: seed, epoch: epoch)
            cachedEpoch = epoch
        }
        let start = inEpoch * globalBatch
        return permutation[(start + mine.lowerBound)..<(start + mine.upperBound)]
    }

    /// Fisher-Yates shuffle of 0..<count from (seed, epoch).
    public static func permutation(count: Int, seed: UInt64, epoch: Int) -> [Int32] {
        var rng = SplitMix64.derived(seed, UInt64(epoch), 0x5A3)
        var p = (0..<count).map { Int32($0) }
        if count > 1 {
            for i in stride(from: count - 1, to: 0, by: -1) {
                let j = Int(rng.next() % UInt64(i + 1))
                p.swapAt(i, j)
            }
        }
        return p
    }
}
