import Collectives
import Layers

/// Deterministic mode's split of a batch: K fixed chunks (`--chunks`), chunk c holding positions
/// `[c*n/K, (c+1)*n/K)` of a batch of n samples whatever the rank count, and rank r of P owning the
/// aligned run of chunks `[r*K/P, (r+1)*K/P)`. Those are exactly the positions `ShardSampler.share`
/// gives rank r (floor(r*(K/P)*n/K) = floor(r*n/P)), so the data each rank reads does not change.
struct ChunkPlan: Sendable {
    let chunks: Int
    let ranks: Int
    let rank: Int

    /// - Throws: `TrainingError.configuration` when the rank count does not divide the chunk count,
    ///   or a batch would leave a chunk empty.
    init(chunks: Int, ranks: Int, rank: Int, globalBatch: Int) throws {
        guard globalBatch >= chunks else {
            throw TrainingError.configuration(
                "--deterministic --chunks \(chunks) needs a global batch of at least \(chunks) samples (one per chunk), not \(globalBatch); lower --chunks or raise the batch"
            )
        }
        guard chunks % ranks == 0 else {
            throw TrainingError.configuration(
                "--deterministic --chunks \(chunks) cannot be split over \(ranks) ranks: the rank count must divide the chunk count (each rank takes the same number of chunks, so it must be a power of two); run on 1, 2, 4, ... \(chunks) ranks, or pass a --chunks that \(ranks) divides (results depend on --chunks, not on the rank count)"
            )
        }
        self.chunks = chunks
        self.ranks = ranks
        self.rank = rank
    }

    /// The global positions of chunk `c` in a batch of `n`.
    func chunk(_ c: Int, of n: Int) -> Range<Int> { (c * n / chunks)..<((c + 1) * n / chunks) }

    /// This rank's positions in a batch of `n`.
    func share(of n: Int) -> Range<Int> {
        let per = chunks / ranks
        return chunk(rank * per, of: n).lowerBound..<chunk((rank + 1) * per - 1, of: n).upperBound
    }

    /// This rank's chunks in a batch of `n`, as ranges of its own share (from 0).
    func localChunks(of n: Int) -> [Range<Int>] {
        let per = chunks / ranks, base = share(of: n).lowerBound
        return (rank * per..<(rank + 1) * per).map { c in
            let r = chunk(c, of: n)
            return (r.lowerBound - base)..<(r.upperBound - base)
        }
    }
}

/// Synchronized BN in deterministic mode: each rank holds the tree sum of its chunks' statistics,
/// and the ranks finish the tree in rank order.
struct OrderedStatistics: StatisticsReducer {
    let communicator: Communicator
    func sumAcrossRanks(_ values: UnsafeMutableBufferPointer<Double>) throws {
        try communicator.orderedSum(values)
    }
}
