// Exercises every collective of the MPI layer on real ranks. Launched by the tests under
// `mpirun -np N`; exits 0 and prints "collectives-check: ok on N ranks" when every check holds.
import Collectives
#if canImport(Glibc)
    import Glibc
#endif

func fail(_ message: String, _ comm: Communicator) -> Never {
    writeAll(2, "collectives-check: rank \(comm.rank): \(message)\n")
    comm.abort(code: 2)
}

/// Runs `body`, which must throw an `E` whose text holds every one of `fragments` (the function,
/// the problem, the rank); rank 0 prints the text after `label` when one is given.
func expectError<E: Error>(
    _ type: E.Type, from what: String, naming fragments: [String], printedAs label: String? = nil, _ comm: Communicator,
    _ body: () throws -> Void
) throws {
    do {
        try body()
    } catch let error as E {
        let text = "\(error)"
        if let missing = fragments.first(where: { !text.contains($0) }) {
            fail("the error of \(what) does not name '\(missing)': \(text)", comm)
        }
        if let label, comm.rank == 0 { print("collectives-check: \(label) reported as: \(text)") }
        return
    }
    fail("\(what) did not fail", comm)
}

do {
    try MPIRuntime.initialize(threadLevel: .serialized)
    let comm = try MPIRuntime.world()
    let p = comm.size, r = comm.rank

    // allreduce sum/max/min for every scalar kind
    var f: [Float] = [Float(r + 1), -Float(r), 0.5]
    try comm.allreduce(&f, .sum)
    let sumRanks = Float(p * (p + 1) / 2)
    if f != [sumRanks, -Float(p * (p - 1) / 2), 0.5 * Float(p)] { fail("Float sum gave \(f)", comm) }
    var d: [Double] = [Double(r), Double(-r)]
    try comm.allreduce(&d, .max)
    if d != [Double(p - 1), 0] { fail("Double max gave \(d)", comm) }
    var i: [Int] = [r * 1_000_000_007, Int.max - r]
    try comm.allreduce(&i, .min)
    if i != [0, Int.max - (p - 1)] { fail("Int min gave \(i)", comm) }
    // a rank may reduce an empty buffer as long as every rank does
    var empty: [Double] = []
    try comm.allreduce(&empty, .sum)

    // broadcast from the last rank
    var b = [UInt8](repeating: UInt8(r), count: 5)
    try comm.broadcast(&b, root: p - 1)
    if b != [UInt8](repeating: UInt8(p - 1), count: 5) { fail("broadcast gave \(b)", comm) }

    // allgather
    let gathered = try comm.allgather(Int64(r * 10))
    if gathered != (0..<p).map({ Int64($0 * 10) }) { fail("allgather gave \(gathered)", comm) }

    try comm.barrier()

    // nonblocking allreduces in flight together, on a duplicate while the original carries
    // another reduction (as BN statistics and gradient buckets do), completed by test and by wait
    let statistics = try comm.duplicate()
    var bucket1 = (0..<1000).map { Float($0 + r) }, bucket2 = [Float](repeating: Float(r), count: 70_000)
    try bucket1.withUnsafeMutableBufferPointer { b1 in
        try bucket2.withUnsafeMutableBufferPointer { b2 in
            let first = try comm.startAllreduce(b1, .sum)
            let second = try comm.startAllreduce(b2, .max)
            var small: [Double] = [Double(r)]
            try statistics.allreduce(&small, .sum)
            if small != [Double(p * (p - 1) / 2)] { fail("allreduce on a duplicate gave \(small)", statistics) }
            while try !first.test() {}
            try second.wait()
            if try !second.test() { fail("a completed request tests as not completed", comm) }
        }
    }
    let offset = Float(p * (p - 1) / 2)
    if bucket1 != (0..<1000).map({ Float(p * $0) + offset }) { fail("nonblocking sum gave \(bucket1.prefix(4))...", comm) }
    if bucket2.contains(where: { $0 != Float(p - 1) }) { fail("nonblocking max gave \(bucket2.prefix(4))...", comm) }
    // gather of a different length per rank (rank 0 sends nothing)
    let pieces = try comm.gather([UInt8](repeating: UInt8(r), count: r * 3), root: p - 1)
    if r == p - 1 && pieces != (0..<p).map({ [UInt8](repeating: UInt8($0), count: $0 * 3) }) {
        fail("gather gave \(pieces)", comm)
    }
    if r != p - 1 && !pieces.isEmpty { fail("a non-root rank received \(pieces.count) gathered pieces", comm) }
    let onNode = try comm.ranksOnThisNode()
    if onNode < 1 || onNode > p { fail("\(onNode) ranks on this node of \(p)", comm) }

    // sendReceive: a ring shift with another byte count on every rank (rank 1 sends nothing), whole
    // and in 7-byte pieces, where the two sides of one call have different piece counts
    func ringBytes(_ rank: Int) -> [UInt8] {
        (0..<(rank == 1 ? 0 : rank * 11 + 9)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ rank) }
    }
    let next = (r + 1) % p, previous = (r + p - 1) % p
    for piece in [nil, 7] {
        let out = ringBytes(r)
        var into = [UInt8](repeating: 0xEE, count: ringBytes(previous).count)
        try out.withUnsafeBytes { o in
            try into.withUnsafeMutableBytes { i in
                if let piece {
                    try comm.sendReceive(o, to: next, into: i, from: previous, pieceBytes: piece)
                } else {
                    try comm.sendReceive(o, to: next, into: i, from: previous)
                }
            }
        }
        if into != ringBytes(previous) {
            fail("sendReceive (pieces of \(piece ?? 1 << 30) bytes) from rank \(previous) gave \(into)", comm)
        }
    }
    try expectError(
        MPIError.self, from: "a sendReceive to the non-existent rank \(p)",
        naming: ["MPI_Sendrecv", "rank \(r)", "MPI_ERR_RANK", "rank \(p) "],
        comm
    ) {
        try comm.sendReceive(
            UnsafeRawBufferPointer(start: nil, count: 0), to: p, into: UnsafeMutableRawBufferPointer(start: nil, count: 0),
            from: 0)
    }

    // the ordered sum: the same bits on every rank, equal to the tree ((r0 + r1) + (r2 + r3)) ...
    // computed here from every rank's input, for sizes from 0 to past the latency threshold, by
    // default and forced through each algorithm; values span 13 decades, so another order would
    // change bits (the controls below show it does)
    func value(_ rank: Int, _ i: Int) -> Double {
        sin(Double(i &* 7 &+ rank &* 131) + 0.5) * pow(10, Double(i % 13) - 6)
    }
    func tree<T: BinaryFloatingPoint>(_ ranks: Range<Int>, _ i: Int, _ type: T.Type) -> T {
        ranks.count == 1
            ? T(value(ranks.lowerBound, i))
            : tree(ranks.lowerBound..<ranks.lowerBound + ranks.count / 2, i, type)
                + tree(ranks.lowerBound + ranks.count / 2..<ranks.upperBound, i, type)
    }
    func bytes<T>(_ x: [T]) -> [UInt8] { x.withUnsafeBytes { Array($0) } }
    func fnv1a(_ bytes: [UInt8]) -> UInt64 {
        bytes.reduce(0xcbf2_9ce4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
    }
    func checkOrdered<T: Reducible & BinaryFloatingPoint>(_ type: T.Type) throws {
        for n in Set([0, 1, 3, max(p - 1, 1), p, p + 1, 1000, 4097, 20_000]).sorted() {
            let reference = (0..<n).map { tree(0..<p, $0, T.self) }
            for (algorithm, doublingUpTo) in [("default", nil), ("halving", 0), ("doubling", Int.max)] {
                var x = (0..<n).map { T(value(r, $0)) }
                try x.withUnsafeMutableBufferPointer {
                    if let doublingUpTo { try comm.orderedSum($0, doublingUpTo: doublingUpTo) } else { try comm.orderedSum($0) }
                }
                let what = "orderedSum (\(algorithm)) of \(n) x \(T.self)"
                if let i = (0..<n).first(where: { bytes([x[$0]]) != bytes([reference[$0]]) }) {
                    fail("\(what): element \(i) is \(x[i]), the tree gives \(reference[i])", comm)
                }
                let hashes = try comm.allgather(fnv1a(bytes(x)))
                if Set(hashes).count != 1 { fail("\(what): the ranks' results differ (FNV-1a \(hashes))", comm) }
            }
        }
    }
    // the two phases apart, cut at multiples of a row length (rows stay whole; a segment inside
    // one row gives an empty half): after the reduce-scatter each rank's segment is the tree sum,
    // the segments tile the buffer, and the allgather gives every rank the whole tree sum
    func checkPhases(rows: Int) throws {
        for n in [0, 5, 1000, 20_000] {
            let split = { (segment: Range<Int>) -> Int in
                let mid = segment.lowerBound + segment.count / 2, down = mid - mid % rows
                return down >= segment.lowerBound ? down : segment.upperBound
            }
            var x = (0..<n).map { Float(value(r, $0)) }
            let reference = (0..<n).map { tree(0..<p, $0, Float.self) }
            let what = "orderedReduceScatter/orderedAllgather of \(n) Floats cut at rows of \(rows)"
            let mine = try x.withUnsafeMutableBufferPointer { try comm.orderedReduceScatter($0, split: split) }
            if mine.lowerBound % rows != 0 && mine.lowerBound != n { fail("\(what): segment \(mine) cuts a row", comm) }
            // every rank can name every rank's segment without communicating
            let named = (0..<p).map { comm.orderedSegment(of: $0, count: n, split: split) }
            let actual = try comm.allgather(Int64(mine.lowerBound)), ends = try comm.allgather(Int64(mine.upperBound))
            if named.map({ Int64($0.lowerBound) }) != actual || named.map({ Int64($0.upperBound) }) != ends {
                fail("\(what): orderedSegment names \(named), the ranks hold \(zip(actual, ends).map { $0..<$1 })", comm)
            }
            if let i = mine.first(where: { bytes([x[$0]]) != bytes([reference[$0]]) }) {
                fail("\(what): element \(i) of segment \(mine) is \(x[i]), the tree gives \(reference[i])", comm)
            }
            let counts = try comm.allgather(mine.count)
            if counts.reduce(0, +) != n { fail("\(what): the segments hold \(counts), not \(n) elements", comm) }
            try x.withUnsafeMutableBufferPointer { try comm.orderedAllgather($0, from: mine, split: split) }
            if bytes(x) != bytes(reference) { fail("\(what): the allgather is not the tree sum", comm) }
        }
    }
    if p & (p - 1) == 0 {
        try checkOrdered(Float.self)
        try checkOrdered(Double.self)
        for rows in [1, 7, 4096] { try checkPhases(rows: rows) }
        var whole = (0..<5000).map { value(r, $0) }
        try comm.orderedSum(&whole)
        if bytes(whole) != bytes((0..<5000).map { tree(0..<p, $0, Double.self) }) {
            fail("orderedSum of [Double] is not the tree", comm)
        }
    } else {
        try expectError(
            MPIError.self, from: "orderedSum on \(p) ranks", naming: ["power-of-two", "\(p)", "rank \(r)"],
            printedAs: "orderedSum on \(p) ranks", comm
        ) {
            var x = [1.0, 2.0]
            try comm.orderedSum(&x)
        }
    }
    if p >= 4 && p & (p - 1) == 0 {
        // the check can fail: left to right, and the tree that pairs ranks half the group apart
        // ((r0 + r2) + (r1 + r3), recursive halving with decreasing distance), give other bits
        func strided<T: BinaryFloatingPoint>(_ ranks: [Int], _ i: Int, _ type: T.Type) -> T {
            ranks.count == 1
                ? T(value(ranks[0], i))
                : strided(ranks.enumerated().filter { $0.offset % 2 == 0 }.map(\.element), i, type)
                    + strided(ranks.enumerated().filter { $0.offset % 2 == 1 }.map(\.element), i, type)
        }
        func controls<T: BinaryFloatingPoint>(_ type: T.Type) -> (leftToRight: Int, strided: Int) {
            let n = 20_000
            let leftToRight = (0..<n).filter { i in
                (1..<p).reduce(T(value(0, i))) { $0 + T(value($1, i)) } != tree(0..<p, i, T.self)
            }
            let other = (0..<n).filter { i in strided(Array(0..<p), i, T.self) != tree(0..<p, i, T.self) }
            return (leftToRight.count, other.count)
        }
        for (name, counts) in [("Float", controls(Float.self)), ("Double", controls(Double.self))] {
            if counts.leftToRight == 0 || counts.strided == 0 {
                fail(
                    "\(name): another order agrees with the tree everywhere (\(counts)): the ordered-sum check could not fail",
                    comm)
            }
            if r == 0 {
                print(
                    "collectives-check: \(name) controls: left to right differs from the tree in \(counts.leftToRight) of 20000 elements, the strided tree in \(counts.strided)"
                )
            }
        }
    }

    // node shared memory: each rank writes its slice, and after a barrier every rank reads all of
    // them in place; the tree sum over the slices has the ordered sum's bits, also written over
    // this rank's part of its own slice (a source, that other ranks do not read then). A common
    // part is one memory for all: each rank writes its piece of it, and every rank reads it whole.
    // A segment no file system can hold fails on every rank alike.
    if p & (p - 1) == 0 {
        let n = 20_000
        let memory = try comm.mapNodeSharedMemory(
            bytesPerRank: n * MemoryLayout<Float>.stride, commonParts: 1, bytesPerPart: n * MemoryLayout<Float>.stride)
        func slice(_ rank: Int) -> UnsafeMutablePointer<Float> { memory.slice(of: rank).assumingMemoryBound(to: Float.self) }
        let common = memory.commonPart(0).bindMemory(to: Float.self, capacity: n)
        for i in 0..<n { slice(r)[i] = Float(value(r, i)) }
        for i in r * n / p..<(r + 1) * n / p { common[i] = Float(i) }
        NodeSharedMemory.fence()
        try comm.barrier()
        NodeSharedMemory.fence()
        if !(0..<n).allSatisfy({ common[$0] == Float($0) }) {
            fail("a common part of node shared memory is not one memory for all ranks", comm)
        }
        var sum = [Float](repeating: 0, count: n)
        orderedTreeSum((0..<p).map { UnsafePointer(slice($0)) }, 0..<n, into: &sum)
        let reference = (0..<n).map { tree(0..<p, $0, Float.self) }
        if bytes(sum) != bytes(reference) { fail("orderedTreeSum over node shared memory is not the tree", comm) }
        try comm.barrier()  // every rank has read every slice whole
        // as the sharded update does: each rank sums its own part of the buffer, over its slice
        let part = r * n / p..<(r + 1) * n / p
        orderedTreeSum((0..<p).map { UnsafePointer(slice($0)) }, part, into: slice(r))
        if bytes(Array(UnsafeBufferPointer(start: slice(r) + part.lowerBound, count: part.count)))
            != bytes(Array(reference[part]))
        {
            fail("orderedTreeSum written over this rank's own slice is not the tree", comm)
        }
        try expectError(
            SharedMemoryError.self, from: "a node shared segment of 1 PiB per rank",
            naming: ["posix_fallocate", "\(1 << 50) bytes", "rank \(r)"], printedAs: "an impossible shared segment", comm
        ) { _ = try comm.mapNodeSharedMemory(bytesPerRank: 1 << 50) }
    }

    // an invalid call (a root that is not a rank) becomes a thrown MPIError naming the MPI
    // function, MPI's own text and the rank; the job goes on
    try expectError(
        MPIError.self, from: "a broadcast from the non-existent rank \(p)", naming: ["MPI_Bcast", "rank \(r)", "MPI_ERR_ROOT"],
        printedAs: "invalid root", comm
    ) { try comm.broadcast(&b, root: p) }
    try comm.barrier()

    if r == 0 { print("collectives-check: ok on \(p) ranks (\(MPIRuntime.libraryVersion))") }
    MPIRuntime.finalize()
} catch {
    writeAll(2, "collectives-check: \(error)\n")
    exit(1)
}
