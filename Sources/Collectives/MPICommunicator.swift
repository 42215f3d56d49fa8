import CMPI

/// A communicator over Open MPI. Owns a duplicated communicator with `MPI_ERRORS_RETURN`, so every
/// failed call becomes a thrown `MPIError` naming the function, MPI's text and this rank.
///
/// Not thread-safe: one thread drives it (the process asks for `MPI_THREAD_SERIALIZED`).
public final class MPICommunicator: Communicator {
    private let comm: MPI_Comm
    public let rank: Int
    public let size: Int

    init(owning comm: MPI_Comm) throws {
        self.comm = comm
        var r: Int32 = 0, s: Int32 = 0
        try check(MPI_Comm_rank(comm, &r), "MPI_Comm_rank", rank: -1)
        try check(MPI_Comm_size(comm, &s), "MPI_Comm_size", rank: Int(r))
        rank = Int(r)
        size = Int(s)
    }

    deinit {
        var finalized: Int32 = 0
        MPI_Finalized(&finalized)
        if finalized == 0 {
            var c: MPI_Comm? = comm
            MPI_Comm_free(&c)
        }
    }

    /// MPI counts are 32-bit: larger buffers go in chunks of at most this many elements or bytes.
    static let maxCount = Int(Int32.max)

    public func allreduce<T: Reducible>(_ buffer: UnsafeMutableBufferPointer<T>, _ op: ReduceOp) throws {
        guard buffer.count > 0, let base = buffer.baseAddress else { return try emptyAllreduce(T.self, op) }
        var start = 0
        while start < buffer.count {
            let n = Swift.min(buffer.count - start, Self.maxCount)
            try check(
                MPI_Allreduce(cmpi_in_place(), base + start, Int32(n), datatype(T.self), mpiOp(op), comm),
                "MPI_Allreduce(\(op), \(n) x \(T.self))", rank: rank)
            start += n
        }
    }

    public func startAllreduce<T: Reducible>(_ buffer: UnsafeMutableBufferPointer<T>, _ op: ReduceOp) throws
        -> PendingCollective
    {
        precondition(buffer.count <= Self.maxCount, "a nonblocking allreduce of more than 2^31-1 elements")
        guard let base = buffer.baseAddress, buffer.count > 0 else { preconditionFailure("a nonblocking allreduce of nothing") }
        var request: MPI_Request? = cmpi_request_null()
        let what = "MPI_Iallreduce(\(op), \(buffer.count) x \(T.self))"
        try check(
            MPI_Iallreduce(cmpi_in_place(), base, Int32(buffer.count), datatype(T.self), mpiOp(op), comm, &request),
            what, rank: rank)
        return MPIPendingCollective(request, what, rank: rank)
    }

    public func ranksOnThisNode() throws -> Int {
        var node: MPI_Comm? = nil
        try check(
            MPI_Comm_split_type(comm, Int32(MPI_COMM_TYPE_SHARED), Int32(rank), cmpi_info_null(), &node),
            "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", rank: rank)
        defer { MPI_Comm_free(&node) }
        var size: Int32 = 0
        try check(MPI_Comm_size(node, &size), "MPI_Comm_size", rank: rank)
        return Int(size)
    }

    public func nodeCommunicator() throws -> Communicator {
        var node: MPI_Comm? = nil
        try check(
            MPI_Comm_split_type(comm, Int32(MPI_COMM_TYPE_SHARED), Int32(rank), cmpi_info_null(), &node),
            "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", rank: rank)
        guard let node else { fatalError("MPI_Comm_split_type returned success and no communicator") }
        try check(MPI_Comm_set_errhandler(node, cmpi_errors_return()), "MPI_Comm_set_errhandler", rank: rank)
        return try MPICommunicator(owning: node)
    }

    public func duplicate() throws -> Communicator {
        var copy: MPI_Comm? = nil
        try check(MPI_Comm_dup(comm, &copy), "MPI_Comm_dup", rank: rank)
        guard let copy else { fatalError("MPI_Comm_dup returned success and no communicator") }
        try check(MPI_Comm_set_errhandler(copy, cmpi_errors_return()), "MPI_Comm_set_errhandler", rank: rank)
        return try MPICommunicator(owning: copy)
    }

    /// Ranks with nothing to reduce still take part (a zero-length call), so counts must agree.
    private func emptyAllreduce<T: Reducible>(_ type: T.Type, _ op: ReduceOp) throws {
        var dummy: [T] = [T.zero]
        try dummy.withUnsafeMutableBufferPointer { one in
            try check(
                MPI_Allreduce(cmpi_in_place(), one.baseAddress, 0, datatype(T.self), mpiOp(op), comm),
                "MPI_Allreduce(\(op), 0 x \(T.self))", rank: rank)
        }
    }

    /// An invalid `root` is reported by MPI itself, as a thrown `MPIError`.
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        var start = 0
        repeat {  // at least one call, so that MPI checks the arguments even for an empty buffer
            let n = Swift.min(buffer.count - start, Self.maxCount)
            try check(
                MPI_Bcast(buffer.baseAddress.map { $0 + start }, Int32(n), cmpi_byte(), Int32(clamping: root), comm),
                "MPI_Bcast(\(n) bytes from rank \(root))", rank: rank)
            start += n
        } while start < buffer.count
    }

    public func allgather(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws {
        precondition(
            output.count == input.count * size,
            "allgather output holds \(output.count) bytes; \(size) ranks x \(input.count) bytes are needed")
        guard input.count > 0 else { return try barrier() }
        precondition(input.count <= Self.maxCount, "allgather of more than 2^31-1 bytes per rank")
        try check(
            MPI_Allgather(
                input.baseAddress, Int32(input.count), cmpi_byte(),
                output.baseAddress, Int32(input.count), cmpi_byte(), comm),
            "MPI_Allgather(\(input.count) bytes per rank)", rank: rank)
    }

    /// Pieces of at most 1 GiB: MPI counts are 32-bit, and a piece this far below 2^31-1 (and below
    /// Linux's 0x7ffff000-byte limit of one read or write) meets no transport near its edge.
    static let maxExchangePiece = 1 << 30

    public func sendReceive(
        _ send: UnsafeRawBufferPointer, to destination: Int, into receive: UnsafeMutableRawBufferPointer, from source: Int
    ) throws {
        try sendReceive(send, to: destination, into: receive, from: source, pieceBytes: Self.maxExchangePiece)
    }

    /// `sendReceive` in pieces of `pieceBytes`, so that the check can split small messages.
    ///
    /// The sender cuts its bytes into max(1, ceil(n / pieceBytes)) messages and the receiver, whose
    /// count is the same n, expects as many; a side with fewer pieces than the other side of its own
    /// call goes on with `MPI_PROC_NULL` (no message), so unequal send and receive counts (a ring
    /// shift) match piece for piece and cannot leave a stray message for a later call.
    package func sendReceive(
        _ send: UnsafeRawBufferPointer, to destination: Int, into receive: UnsafeMutableRawBufferPointer, from source: Int,
        pieceBytes: Int
    ) throws {
        precondition(pieceBytes > 0 && pieceBytes <= Self.maxCount, "a sendReceive piece of \(pieceBytes) bytes")
        // checked here: MPI would take -1 (MPI_ANY_SOURCE) and -2 (MPI_PROC_NULL) as valid
        for (role, peer) in [("destination", destination), ("source", source)] where !(0..<size).contains(peer) {
            throw MPIError(
                function: "MPI_Sendrecv", code: MPI_ERR_RANK,
                message: "\(errorText(MPI_ERR_RANK)): \(role) rank \(peer) is not in this group of \(size)", rank: rank)
        }
        func pieces(_ bytes: Int) -> Int { Swift.max(1, (bytes + pieceBytes - 1) / pieceBytes) }
        let sends = pieces(send.count), receives = pieces(receive.count)
        for k in 0..<Swift.max(sends, receives) {
            let offset = k * pieceBytes
            let s = k < sends ? Swift.min(send.count - offset, pieceBytes) : 0
            let r = k < receives ? Swift.min(receive.count - offset, pieceBytes) : 0
            try check(
                MPI_Sendrecv(
                    k < sends ? send.baseAddress.map { $0 + offset } : nil, Int32(s), cmpi_byte(),
                    k < sends ? Int32(destination) : MPI_PROC_NULL, 0,
                    k < receives ? receive.baseAddress.map { $0 + offset } : nil, Int32(r), cmpi_byte(),
                    k < receives ? Int32(source) : MPI_PROC_NULL, 0, comm, cmpi_status_ignore()),
                "MPI_Sendrecv(\(s) bytes to rank \(destination), \(r) from rank \(source))", rank: rank)
        }
    }

    public func gather(_ input: [UInt8], root: Int) throws -> [[UInt8]] {
        let counts = try allgather(input.count)
        let total = counts.reduce(0, +)
        guard total <= Self.maxCount else {
            throw MPIError(
                function: "MPI_Gatherv", code: 0, message: "\(total) bytes in all exceed MPI's 2^31-1 limit of one gather",
                rank: rank)
        }
        var displacements: [Int32] = [], offset: Int32 = 0
        for c in counts { displacements.append(offset); offset += Int32(c) }
        let counts32 = counts.map { Int32($0) }
        var output = [UInt8](repeating: 0, count: rank == root ? Swift.max(total, 1) : 1)
        try input.withUnsafeBytes { inBytes in
            try output.withUnsafeMutableBytes { outBytes in
                try check(
                    MPI_Gatherv(
                        inBytes.baseAddress, Int32(input.count), cmpi_byte(), outBytes.baseAddress, counts32, displacements,
                        cmpi_byte(), Int32(clamping: root), comm),
                    "MPI_Gatherv(\(input.count) bytes to rank \(root))", rank: rank)
            }
        }
        guard rank == root else { return [] }
        return counts.indices.map { Array(output[Int(displacements[$0])..<Int(displacements[$0]) + counts[$0]]) }
    }

    public func barrier() throws {
        try check(MPI_Barrier(comm), "MPI_Barrier", rank: rank)
    }

    public func abort(code: Int32) -> Never {
        MPI_Abort(comm, code)
        fatalError("MPI_Abort returned")
    }

    private func datatype<T: Reducible>(_ type: T.Type) -> MPI_Datatype {
        switch T.scalarKind {
        case .float32: cmpi_float()
        case .float64: cmpi_double()
        case .int64: cmpi_int64()
        }
    }

    private func mpiOp(_ op: ReduceOp) -> MPI_Op {
        switch op {
        case .sum: cmpi_sum()
        case .max: cmpi_max()
        case .min: cmpi_min()
        }
    }
}

/// An `MPI_Request` of a nonblocking collective; `MPI_Test`/`MPI_Wait` errors are thrown naming the
/// operation that was started.
final class MPIPendingCollective: PendingCollective {
    private var request: MPI_Request?
    private var done = false
    private let what: String
    private let rank: Int

    init(_ request: MPI_Request?, _ what: String, rank: Int) {
        self.request = request
        self.what = what
        self.rank = rank
    }

    func test() throws -> Bool {
        if done { return true }
        var flag: Int32 = 0
        try check(MPI_Test(&request, &flag, cmpi_status_ignore()), "MPI_Test of \(what)", rank: rank)
        done = flag != 0
        return done
    }

    func wait() throws {
        if done { return }
        try check(MPI_Wait(&request, cmpi_status_ignore()), "MPI_Wait of \(what)", rank: rank)
        done = true
    }
}
