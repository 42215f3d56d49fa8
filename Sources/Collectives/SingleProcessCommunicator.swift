#if canImport(Glibc)
    import Glibc
#endif

/// A group of one process: every collective is the identity. For code and tests that run without MPI.
public final class SingleProcessCommunicator: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allreduce<T: Reducible>(_ buffer: UnsafeMutableBufferPointer<T>, _ op: ReduceOp) throws {}
    public func startAllreduce<T: Reducible>(_ buffer: UnsafeMutableBufferPointer<T>, _ op: ReduceOp) throws
        -> PendingCollective
    { Completed() }
    public func duplicate() throws -> Communicator { SingleProcessCommunicator() }
    public func ranksOnThisNode() throws -> Int { 1 }
    public func nodeCommunicator() throws -> Communicator { SingleProcessCommunicator() }
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        precondition(root == 0, "broadcast root \(root) does not exist in a group of one process")
    }
    public func allgather(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws {
        precondition(output.count == input.count, "allgather output must hold exactly one input in a group of one")
        output.copyMemory(from: input)
    }
    public func gather(_ input: [UInt8], root: Int) throws -> [[UInt8]] {
        precondition(root == 0, "gather root \(root) does not exist in a group of one process")
        return [input]
    }
    public func sendReceive(
        _ send: UnsafeRawBufferPointer, to destination: Int, into receive: UnsafeMutableRawBufferPointer, from source: Int
    ) throws {
        precondition(destination == 0 && source == 0 && send.count == receive.count, "a group of one exchanges with itself only")
        receive.copyMemory(from: send)
    }
    public func barrier() throws {}
    public func abort(code: Int32) -> Never { exit(code) }
}

/// An operation that completed when it started (a group of one has nothing to exchange).
final class Completed: PendingCollective {
    func test() throws -> Bool { true }
    func wait() throws {}
}
