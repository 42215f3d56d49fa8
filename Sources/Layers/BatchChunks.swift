import TensorCore

/// The fixed chunks of a step's global batch in deterministic mode, as this rank sees them.
///
/// Every sum over samples (weight-gradient GEMMs, bias and BN sums, the loss) is computed per chunk
/// and the chunk partials are added in one fixed binary tree over the K chunks of the global batch.
/// The chunks depend on the global batch and K only, never on the number of ranks; a rank owns an
/// aligned power-of-two run of them, so it computes a whole subtree locally and the ranks finish the
/// tree in rank order (`Communicator.orderedSum`). Floating-point addition of two numbers is
/// commutative, so a fixed tree gives the same bits on any number of ranks.
///
/// When not deterministic, a step has one chunk (the whole local batch) and every method reduces to
/// the plain computation.
public final class BatchChunks {
    /// Local sample ranges of this rank's chunks, in order (one range, the whole batch, when not
    /// deterministic).
    public private(set) var samples: [Range<Int>] = []
    public var deterministic: Bool { !samples.isEmpty }
    /// Scratch of the Float trees, one buffer per tree level below the top (grown on demand).
    private var scratch: [FlatBuffer] = []

    public init() {}

    /// Deterministic mode for the next training forward and backward: `ranges` are the local sample
    /// ranges of this rank's chunks (a power-of-two count, contiguous from 0).
    public func set(chunks ranges: [Range<Int>]) {
        precondition(
            ranges.count > 0 && ranges.count & (ranges.count - 1) == 0,
            "a rank owns a power-of-two number of chunks, got \(ranges.count)")
        precondition(
            ranges.first!.lowerBound == 0 && zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound },
            "chunk ranges must tile the local batch from 0")
        samples = ranges
    }

    /// Back to one chunk per batch.
    public func clear() { samples = [] }

    /// The chunks as ranges of a batch of `rows` rows (several rows per sample: the pixels of
    /// images), or the whole batch when not deterministic.
    public func rowRanges(rows: Int) -> [Range<Int>] {
        guard deterministic else { return [0..<rows] }
        let count = samples.last!.upperBound
        precondition(
            count > 0 && rows % count == 0,
            "a batch of \(rows) rows does not match the \(count) samples of this step's chunks")
        let perSample = rows / count
        return samples.map { ($0.lowerBound * perSample)..<($0.upperBound * perSample) }
    }

    // MARK: trees

    /// `dst[0..<count] = ` the tree sum over `leaves` Float leaves. `leaf(i, out, accumulate)`
    /// writes leaf i to `out` (`out = leaf`), or with `accumulate` adds it (`out = out + leaf`,
    /// rounded once per element); it is called only with `accumulate: false` unless `fusedPairs`,
    /// which lets the lowest level of the tree compute a pair as `out = leaf(2i); out += leaf(2i+1)`
    /// (valid when that addition is exactly the tree's). Leaves are produced in order.
    public func treeSum(
        leaves: Int, count: Int, into dst: UnsafeMutablePointer<Float>, fusedPairs: Bool,
        leaf: (Int, UnsafeMutablePointer<Float>, Bool) -> Void
    ) {
        subtree(0..<leaves, count: count, dst: dst, level: 0, fusedPairs: fusedPairs, leaf: leaf)
    }

    private func subtree(
        _ range: Range<Int>, count: Int, dst: UnsafeMutablePointer<Float>, level: Int, fusedPairs: Bool,
        leaf: (Int, UnsafeMutablePointer<Float>, Bool) -> Void
    ) {
        if range.count == 1 {
            leaf(range.lowerBound, dst, false)
            return
        }
        if range.count == 2 && fusedPairs {
            leaf(range.lowerBound, dst, false)
            leaf(range.lowerBound + 1, dst, true)
            return
        }
        let mid = range.lowerBound + range.count / 2
        subtree(range.lowerBound..<mid, count: count, dst: dst, level: level + 1, fusedPairs: fusedPairs, leaf: leaf)
        let right = scratch(level: level, count: count)
        subtree(mid..<range.upperBound, count: count, dst: right, level: level + 1, fusedPairs: fusedPairs, leaf: leaf)
        addInPlace(dst, UnsafePointer(right), count: count)
    }

    private func scratch(level: Int, count: Int) -> UnsafeMutablePointer<Float> {
        while scratch.count <= level { scratch.append(FlatBuffer(count: 0)) }
        if scratch[level].count < count { scratch[level] = FlatBuffer(count: count) }
        return scratch[level].pointer
    }

    /// Per-chunk Double partial sums of `width` values, for `ranges` (in rows), combined in the tree.
    public struct DoubleLeaves {
        public let ranges: [Range<Int>]
        public let width: Int
        private var values: [Double]

        public init(ranges: [Range<Int>], width: Int) {
            self.ranges = ranges
            self.width = width
            values = [Double](repeating: 0, count: ranges.count * width)
        }

        /// The leaf of the chunk holding `row` (the whole run `row..<` must lie in that chunk).
        public mutating func withLeaf<R>(containing row: Int, _ body: (UnsafeMutableBufferPointer<Double>) throws -> R) rethrows
            -> R
        {
            guard let i = ranges.firstIndex(where: { $0.contains(row) }) else {
                preconditionFailure("row \(row) is in no chunk of \(ranges)")
            }
            return try withLeaf(i, body)
        }

        public mutating func withLeaf<R>(_ i: Int, _ body: (UnsafeMutableBufferPointer<Double>) throws -> R) rethrows -> R {
            let w = width
            return try values.withUnsafeMutableBufferPointer {
                try body(UnsafeMutableBufferPointer(rebasing: $0[(i * w)..<((i + 1) * w)]))
            }
        }

        /// The tree sum of the leaves (pairs of neighbours, then pairs of pairs, ...).
        public func combined() -> [Double] {
            guard ranges.count > 1 else { return values }
            var v = values
            let w = width, n = ranges.count
            var step = 1
            while step < n {
                var i = 0
                while i + step < n {
                    for j in 0..<w { v[i * w + j] += v[(i + step) * w + j] }
                    i += 2 * step
                }
                step *= 2
            }
            return Array(v[0..<w])
        }
    }
}

/// `dst[i] += src[i]`.
func addInPlace(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int) {
    for i in 0..<count { dst[i] = dst[i] + src[i] }
}
