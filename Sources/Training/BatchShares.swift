import Data

/// Each rank's share of the global batch under `--balance on`: proportional to the rank's measured
/// speed, so that a rank on a slower core (a noisy neighbour, a throttled or older CPU) stops setting
/// every rank's step time. On shared virtual machines two cores' GEMM speeds can swing by 30-50% against
/// each other for seconds at a time; with even shares the faster rank waits at every synchronized BN.
///
/// The math does not change: synchronized BN combines unequal counts exactly and the gradient sum is
/// divided by the global count, so only the grouping of the sums moves (their last bits).
///
/// After every step each rank contributes its compute seconds (the step without its time in
/// collectives) to one small allgather, and every rank computes the same new shares from the same
/// numbers: proportional to each rank's samples per compute second, smoothed over steps, each held
/// between half and 1.5 times the even share (the activation buffers are sized for the upper end).
/// At the fixed point every rank computes for the same time.
///
/// Without `balanced` the shares stay even (as `ShardSampler.share` cuts them) and `observe` is
/// never needed: one type serves both, so the step does not ask which it has.
struct BatchShares {
    let globalBatch: Int
    /// `--balance on` with several ranks.
    let balanced: Bool
    /// The smallest and largest share a rank may get.
    let limits: ClosedRange<Int>
    /// Samples each rank takes, in rank order; they sum to `globalBatch`.
    private(set) var counts: [Int]
    /// Smoothed samples per compute second of each rank; nil before the first observation.
    private var speeds: [Double]?
    /// Weight of the newest step in the smoothed speeds: a slow phase of a core is followed within a
    /// few steps, one noisy step moves the shares by a third of its deviation.
    static let smoothing = 0.3

    init(globalBatch: Int, ranks: Int, balanced: Bool) {
        precondition(ranks >= 1 && globalBatch >= ranks, "every rank needs at least one sample")
        self.globalBatch = globalBatch
        self.balanced = balanced && ranks > 1
        let even = (globalBatch / ranks)...((globalBatch + ranks - 1) / ranks)
        limits = self.balanced ? Self.limits(globalBatch: globalBatch, ranks: ranks) : even
        counts = (0..<ranks).map { ShardSampler.share(of: globalBatch, rank: $0, ranks: ranks).count }
    }

    /// Half to 1.5 times the even share, at least one sample, at most the batch.
    static func limits(globalBatch: Int, ranks: Int) -> ClosedRange<Int> {
        let floorShare = globalBatch / ranks, ceilShare = (globalBatch + ranks - 1) / ranks
        return Swift.max(1, floorShare / 2)...Swift.min(globalBatch, ceilShare + ceilShare / 2)
    }

    /// The global-batch positions `rank` takes: contiguous, in rank order.
    func positions(of rank: Int) -> Range<Int> {
        let start = counts[..<rank].reduce(0, +)
        return start..<start + counts[rank]
    }

    /// Takes every rank's compute seconds of the step just run (the same numbers on every rank) and
    /// sets the next step's shares. A time that is not positive and finite leaves the shares as they are.
    mutating func observe(computeSeconds: [Double]) {
        precondition(balanced, "even shares do not follow speed")
        precondition(computeSeconds.count == counts.count, "one time per rank")
        guard computeSeconds.allSatisfy({ $0.isFinite && $0 > 0 }) else { return }
        let measured = zip(counts, computeSeconds).map { Double($0) / $1 }
        let k = Self.smoothing
        let smoothed = speeds.map { zip($0, measured).map { (1 - k) * $0 + k * $1 } } ?? measured
        speeds = smoothed
        counts = Self.apportion(globalBatch, weights: smoothed, limits: limits)
    }

    /// Integers within `limits` that sum to `total`, as close as the limits allow to proportional to
    /// `weights` (positive): the real shares clamp(lambda * w) with lambda found by bisection (their
    /// sum grows with lambda), then floors, and the remainder to the largest fractional parts (ties:
    /// the lower rank). Needs `count * limits.lowerBound <= total <= count * limits.upperBound`.
    static func apportion(_ total: Int, weights: [Double], limits: ClosedRange<Int>) -> [Int] {
        let n = weights.count
        precondition(
            n * limits.lowerBound <= total && total <= n * limits.upperBound, "\(total) cannot be split within \(limits)")
        let lo = Double(limits.lowerBound), hi = Double(limits.upperBound)
        func share(_ w: Double, _ lambda: Double) -> Double { Swift.min(Swift.max(lambda * w, lo), hi) }
        let smallest = weights.min() ?? 1
        var (low, high) = (0.0, hi / Swift.max(smallest, .leastNormalMagnitude))  // every share at hi
        for _ in 0..<100 {  // halves the bracket to Double resolution
            let mid = (low + high) / 2
            if weights.reduce(0, { $0 + share($1, mid) }) < Double(total) { low = mid } else { high = mid }
        }
        let real = weights.map { share($0, high) }
        var counts = real.map { Int($0.rounded(.down)) }
        var sum = counts.reduce(0, +)
        let order = (0..<n).sorted { (real[$0] - real[$0].rounded(.down), $1) > (real[$1] - real[$1].rounded(.down), $0) }
        // the remainder to the largest fractional parts, then, for rounding at the edges (a share a
        // hair under a limit), to the first ranks with room
        for i in order + Array(0..<n) where sum < total && counts[i] < limits.upperBound {
            counts[i] += 1
            sum += 1
        }
        for i in 0..<n where sum > total && counts[i] > limits.lowerBound {
            counts[i] -= 1
            sum -= 1
        }
        return counts
    }
}
