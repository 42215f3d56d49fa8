/// The operations a data-parallel trainer needs from a process group.
///
/// Implemented over MPI by `MPICommunicator` and, for code that runs in one process without MPI,
/// by `SingleProcessCommunicator`. Knows nothing about tensors: it moves typed buffers.
///
/// Every method marked *Collective* must be called by every rank of the group, in the same order,
/// with buffers of the same length; otherwise the job hangs or fails.
public protocol Communicator: AnyObject {
    /// This process's index in the group, `0 ..< size`.
    var rank: Int { get }
    /// The number of processes in the group.
    var size: Int { get }

    /// Collective: replaces every element with the reduction of that element over all ranks.
    func allreduce<T: Reducible>(_ buffer: UnsafeMutableBufferPointer<T>, _ op: ReduceOp) throws

    /// Collective, nonblocking: starts the in-place reduction of `buffer` (not empty) and returns at once. The
    /// buffer must stay allocated and untouched until the returned request completes. Operations
    /// started on one communicator complete in the order they were started on every rank.
    func startAllreduce<T: Reducible>(_ buffer: UnsafeMutableBufferPointer<T>, _ op: ReduceOp) throws -> PendingCollective

    /// Collective: how many ranks of this group share this rank's node (memory).
    func ranksOnThisNode() throws -> Int

    /// Collective: a new communicator over the ranks of this group on this rank's node (shared
    /// memory), ranked in this group's order; errors return (as thrown errors) like this one's.
    func nodeCommunicator() throws -> Communicator

    /// Collective: a new communicator over the same ranks. Its traffic is matched separately, so
    /// small latency-bound reductions on it never queue behind large operations on this one.
    func duplicate() throws -> Communicator

    /// Collective: copies `root`'s bytes into every rank's buffer (same byte count everywhere).
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws

    /// Collective: `output` (size * input.count bytes) receives rank r's `input` at offset r * input.count.
    func allgather(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws

    /// Collective: `root` receives every rank's bytes (any length per rank, 2 GiB in all at most),
    /// indexed by rank; the other ranks receive an empty array.
    func gather(_ input: [UInt8], root: Int) throws -> [[UInt8]]

    /// Point to point: sends `send` to `destination` and receives `receive.count` bytes from
    /// `source` into `receive`, at once (no deadlock when two ranks exchange). `receive.count` must
    /// be what `source` sends. Any byte count: over MPI, large buffers go in 1 GiB pieces. The
    /// ordered sum is built on it.
    func sendReceive(
        _ send: UnsafeRawBufferPointer, to destination: Int, into receive: UnsafeMutableRawBufferPointer, from source: Int) throws

    /// Collective: returns once every rank has entered it.
    func barrier() throws

    /// Ends the whole job at once (every rank) with `code`. Used when one rank fails where the others
    /// may already be waiting in a collective: the alternative is a hang.
    func abort(code: Int32) -> Never
}

/// A nonblocking collective in flight. Open MPI has no asynchronous progress thread: the operation
/// advances only inside MPI calls, so callers `test` it between pieces of work.
public protocol PendingCollective: AnyObject {
    /// Advances the operation; true once it has completed (and from then on).
    func test() throws -> Bool
    /// Blocks until the operation has completed.
    func wait() throws
}

/// Element-wise reduction operators.
public enum ReduceOp: Sendable, CustomStringConvertible {
    case sum, max, min
    public var description: String {
        switch self {
        case .sum: "sum";
        case .max: "max";
        case .min: "min"
        }
    }
}

/// Scalar kinds that collectives can reduce. The MPI layer maps each to an MPI datatype.
public enum ScalarKind: Sendable { case float32, float64, int64 }

/// A scalar type a communicator can reduce: `Float`, `Double`, `Int`.
public protocol Reducible: Numeric, Comparable, Sendable {
    static var scalarKind: ScalarKind { get }
}
extension Float: Reducible { public static var scalarKind: ScalarKind { .float32 } }
extension Double: Reducible { public static var scalarKind: ScalarKind { .float64 } }
extension Int: Reducible { public static var scalarKind: ScalarKind { .int64 } }

extension Communicator {
    /// Collective: reduces an array in place.
    public func allreduce<T: Reducible>(_ array: inout [T], _ op: ReduceOp) throws {
        try array.withUnsafeMutableBufferPointer { try allreduce($0, op) }
    }

    /// Collective: reduces one scalar and returns the result.
    public func allreduce<T: Reducible>(_ value: T, _ op: ReduceOp) throws -> T {
        var one = [value]
        try allreduce(&one, op)
        return one[0]
    }

    /// Collective: broadcasts an array of trivial values from `root` (same count on every rank).
    public func broadcast<T: BitwiseCopyable>(_ array: inout [T], root: Int) throws {
        try array.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }

    /// Collective: gathers one value from every rank, indexed by rank.
    public func allgather<T: BitwiseCopyable>(_ value: T) throws -> [T] {
        var output = [T](repeating: value, count: size)
        try withUnsafeBytes(of: value) { input in
            try output.withUnsafeMutableBytes { try allgather(input, into: $0) }
        }
        return output
    }

    /// True on the rank that prints summaries and writes shared files.
    public var isRoot: Bool { rank == 0 }
}
