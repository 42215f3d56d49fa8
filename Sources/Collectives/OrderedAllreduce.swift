/// A sum whose bits do not depend on how MPI schedules it: the ranks' buffers are added in one
/// fixed binary tree over rank order, `((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))`, and every
/// rank gets the same result. When each rank holds the sum of an aligned subtree of a larger tree
/// (deterministic training: rank r sums chunks `[r*K/P, (r+1)*K/P)`), the result is that larger
/// tree's sum whatever P is. MPI_Allreduce promises no order: its algorithm, and so the rounding,
/// changes with the rank count, the message size and the tuning.
///
/// Rabenseifner's shape, with the distance growing so that pairs follow the tree: a
/// reduce-scatter by recursive halving (step s pairs rank r with r ^ 2^s; each keeps one half of
/// its segment and adds the partner's copy of that half: IEEE addition is commutative, so both
/// partners of a pair compute the same bits), then an allgather by recursive doubling back. Each
/// rank sends and receives 2 (P-1)/P of the buffer, as a ring allreduce does.
extension Communicator {
    /// Collective: replaces `buffer` on every rank by the tree sum over ranks. The rank count must
    /// be a power of two.
    public func orderedSum<T: Reducible & BinaryFloatingPoint>(_ buffer: UnsafeMutableBufferPointer<T>) throws {
        try orderedSum(buffer, doublingUpTo: Self.orderedSumLatencyBytes)
    }

    /// `orderedSum` with the switch between its two algorithms moved (0: always halving,
    /// `Int.max`: always doubling), so that the check can run each on every size, counts below
    /// the rank count included. Both give the same bits.
    package func orderedSum<T: Reducible & BinaryFloatingPoint>(
        _ buffer: UnsafeMutableBufferPointer<T>, doublingUpTo latencyBytes: Int
    ) throws {
        guard size > 1 else { return }
        try requirePowerOfTwo()
        guard buffer.count > 0 else { return }
        if buffer.count * MemoryLayout<T>.stride <= latencyBytes { return try orderedSumByDoubling(buffer) }
        let scratch = UnsafeMutableBufferPointer<T>.allocate(capacity: (buffer.count + 1) / 2)  // the larger half
        defer { scratch.deallocate() }
        let segment = try orderedReduceScatter(buffer, split: Self.middle, scratch: scratch)
        try orderedAllgather(buffer, from: segment, split: Self.middle)
    }

    /// Where `orderedSum` cuts a segment in two: its middle.
    public static func middle(_ segment: Range<Int>) -> Int { segment.lowerBound + segment.count / 2 }

    /// Collective, the first phase of `orderedSum` (recursive halving): afterwards this rank's
    /// segment of `buffer`, which it returns, holds the tree sum over ranks; the rest holds partial
    /// sums. `split(segment)` says where each segment is cut (within it, ends included; the same
    /// function on every rank), so that a caller can keep rows whole. The rank count must be a
    /// power of two. `scratch` receives the partner's halves: as large as the largest half kept
    /// (with cuts at an end, the whole buffer); a buffer of that size is allocated when it is nil.
    public func orderedReduceScatter<T: Reducible & BinaryFloatingPoint>(
        _ buffer: UnsafeMutableBufferPointer<T>, split: (Range<Int>) -> Int, scratch: UnsafeMutableBufferPointer<T>? = nil
    ) throws -> Range<Int> {
        try requirePowerOfTwo()
        let stride = MemoryLayout<T>.stride
        let room = scratch ?? .allocate(capacity: Swift.max(buffer.count, 1))
        defer { if scratch == nil { room.deallocate() } }
        let incoming = room.baseAddress!
        let base = buffer.baseAddress ?? incoming
        var segment = 0..<buffer.count
        var distance = 1
        while distance < size {
            let (keep, give) = halves(of: segment, split: split, distance: distance)
            precondition(
                keep.count <= room.count, "orderedReduceScatter: a scratch of \(room.count) elements for a half of \(keep.count)")
            try sendReceive(
                UnsafeRawBufferPointer(start: base + give.lowerBound, count: give.count * stride), to: rank ^ distance,
                into: UnsafeMutableRawBufferPointer(start: incoming, count: keep.count * stride), from: rank ^ distance)
            addElementwise(base + keep.lowerBound, incoming, count: keep.count)
            segment = keep
            distance <<= 1
        }
        return segment
    }

    /// Collective, the second phase (recursive doubling): every rank's `segment` (as returned by
    /// `orderedReduceScatter` with the same `split`) is copied to every other rank.
    public func orderedAllgather<T: Reducible & BinaryFloatingPoint>(
        _ buffer: UnsafeMutableBufferPointer<T>, from segment: Range<Int>, split: (Range<Int>) -> Int
    ) throws {
        try requirePowerOfTwo()
        guard let base = buffer.baseAddress else { return }
        let stride = MemoryLayout<T>.stride
        // the segments held before each halving, retraced
        var segments: [Range<Int>] = []
        var whole = 0..<buffer.count
        var distance = 1
        while distance < size {
            segments.append(whole)
            whole = halves(of: whole, split: split, distance: distance).keep
            distance <<= 1
        }
        precondition(whole == segment, "orderedAllgather: segment \(segment) is not this rank's (\(whole))")
        var held = segment
        while let outer = segments.popLast() {
            distance >>= 1
            let other = rank & distance == 0 ? held.upperBound..<outer.upperBound : outer.lowerBound..<held.lowerBound
            try sendReceive(
                UnsafeRawBufferPointer(start: base + held.lowerBound, count: held.count * stride), to: rank ^ distance,
                into: UnsafeMutableRawBufferPointer(start: base + other.lowerBound, count: other.count * stride),
                from: rank ^ distance)
            held = outer
        }
    }

    /// The segment of a buffer of `count` elements that `orderedReduceScatter` with `split` leaves
    /// to rank `r` (the rank count must be a power of two).
    public func orderedSegment(of r: Int, count: Int, split: (Range<Int>) -> Int) -> Range<Int> {
        precondition(size & (size - 1) == 0 && (0..<size).contains(r), "rank \(r) of \(size): not a power-of-two group's rank")
        var segment = 0..<count
        var distance = 1
        while distance < size {
            segment = halves(of: segment, split: split, distance: distance, rank: r).keep
            distance <<= 1
        }
        return segment
    }

    /// The half of `segment` rank `rank` (this one by default) keeps at the halving step with
    /// partner `rank ^ distance`, and the half it gives.
    private func halves(
        of segment: Range<Int>, split: (Range<Int>) -> Int, distance: Int, rank: Int? = nil
    ) -> (keep: Range<Int>, give: Range<Int>) {
        let mid = split(segment)
        precondition(segment.contains(mid) || mid == segment.upperBound, "split \(mid) outside \(segment)")
        let lower = segment.lowerBound..<mid, upper = mid..<segment.upperBound
        return (rank ?? self.rank) & distance == 0 ? (lower, upper) : (upper, lower)
    }

    private func requirePowerOfTwo() throws {
        guard size & (size - 1) != 0 else { return }
        throw MPIError(
            function: "orderedSum", code: 0,
            message: "the ordered (deterministic) sum needs a power-of-two rank count, not \(size)", rank: rank)
    }

    /// Below this size (BN statistics) the sum is latency-bound: recursive doubling, log2 P
    /// exchanges of the whole buffer, instead of 2 log2 P exchanges of halves.
    static var orderedSumLatencyBytes: Int { 64 << 10 }

    /// `orderedSum` by recursive doubling: after step s a rank holds the sum over its aligned block
    /// of 2^(s+1) ranks, its block's half plus the partner's (the same tree).
    private func orderedSumByDoubling<T: Reducible & BinaryFloatingPoint>(_ buffer: UnsafeMutableBufferPointer<T>) throws {
        let base = buffer.baseAddress!, bytes = buffer.count * MemoryLayout<T>.stride
        let incoming = UnsafeMutablePointer<T>.allocate(capacity: buffer.count)
        defer { incoming.deallocate() }
        var distance = 1
        while distance < size {
            try sendReceive(
                UnsafeRawBufferPointer(start: base, count: bytes), to: rank ^ distance,
                into: UnsafeMutableRawBufferPointer(start: incoming, count: bytes), from: rank ^ distance)
            addElementwise(base, incoming, count: buffer.count)
            distance <<= 1
        }
    }

    /// Collective: `orderedSum` of an array.
    public func orderedSum(_ array: inout [Double]) throws {
        try array.withUnsafeMutableBufferPointer { try orderedSum($0) }
    }
}

/// `destination[i]` = the sum of `sources[k][i]` over the sources (one per rank, in rank order, a
/// power of two of them) in `orderedSum`'s tree, `((s0 + s1) + (s2 + s3)) + ...`, for each `i` in
/// `range`: the bits the ordered reduce-scatter gives, computed from buffers a rank can read in
/// place (node shared memory). `destination` may be one of the sources. Allocates nothing, so
/// that it can be called per row.
public func orderedTreeSum(_ sources: [UnsafePointer<Float>], _ range: Range<Int>, into destination: UnsafeMutablePointer<Float>)
{
    let p = sources.count
    precondition(p > 0 && p & (p - 1) == 0, "a tree sum of \(p) sources: a power of two is needed")
    let out = destination + range.lowerBound
    switch p {
    case 1:
        if UnsafePointer(destination) != sources[0] { out.update(from: sources[0] + range.lowerBound, count: range.count) }
    case 2:
        addPair(sources[0] + range.lowerBound, sources[1] + range.lowerBound, into: out, range.count)
    default:
        // in blocks that stay in cache: each half's sum into scratch, then their sum into
        // `destination` (which a source may be: every block is read before it is written)
        let block = 1024, levels = p.trailingZeroBitCount
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * block * levels) { scratch in
            func sum(
                _ ranks: Range<Int>, at start: Int, count n: Int, into out: UnsafeMutablePointer<Float>,
                spare: UnsafeMutablePointer<Float>
            ) {
                if ranks.count == 2 {
                    return addPair(sources[ranks.lowerBound] + start, sources[ranks.lowerBound + 1] + start, into: out, n)
                }
                let mid = ranks.lowerBound + ranks.count / 2
                sum(ranks.lowerBound..<mid, at: start, count: n, into: spare, spare: spare + 2 * block)
                sum(mid..<ranks.upperBound, at: start, count: n, into: spare + block, spare: spare + 2 * block)
                addPair(spare, spare + block, into: out, n)
            }
            var start = range.lowerBound
            while start < range.upperBound {
                let n = Swift.min(block, range.upperBound - start)
                sum(0..<p, at: start, count: n, into: destination + start, spare: scratch.baseAddress!)
                start += n
            }
        }
    }
}

/// `out[i] = a[i] + b[i]`; `out` may be `a` or `b` (then the in-place loop: the vectorizer's
/// overlap check would send `out == a` to its scalar loop).
private func addPair(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, _ count: Int) {
    if UnsafePointer(out) == a { return addFloats(out, b, count) }
    if UnsafePointer(out) == b { return addFloats(out, a, count) }  // IEEE addition commutes: the same bits
    for i in 0..<count { out[i] = a[i] + b[i] }
}

/// `dst[i] = dst[i] + src[i]`, through concrete Float and Double loops: a generic loop called
/// across modules is not specialized, and pays a witness-table call per element.
private func addElementwise<T: BinaryFloatingPoint>(_ dst: UnsafeMutablePointer<T>, _ src: UnsafePointer<T>, count: Int) {
    if T.self == Float.self {
        addFloats(
            UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Float.self),
            UnsafeRawPointer(src).assumingMemoryBound(to: Float.self), count)
    } else if T.self == Double.self {
        addDoubles(
            UnsafeMutableRawPointer(dst).assumingMemoryBound(to: Double.self),
            UnsafeRawPointer(src).assumingMemoryBound(to: Double.self), count)
    } else {
        for i in 0..<count { dst[i] = dst[i] + src[i] }
    }
}

private func addFloats(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
    for i in 0..<count { dst[i] = dst[i] + src[i] }
}

private func addDoubles(_ dst: UnsafeMutablePointer<Double>, _ src: UnsafePointer<Double>, _ count: Int) {
    for i in 0..<count { dst[i] = dst[i] + src[i] }
}
