import Collectives
import Data

/// The ranks of one node as a `DecodeTeam` (`--data folder:DIR`): they share the decoding of the
/// image folder into one cache file.
public final class CommunicatorDecodeTeam: DecodeTeam {
    private let node: Communicator

    /// `node`: a communicator over this node's ranks (`Communicator.nodeCommunicator()`).
    public init(_ node: Communicator) { self.node = node }

    public var rank: Int { node.rank }
    public var size: Int { node.size }

    /// Collective over the node: one allreduce (min) of one integer, which is also the barrier.
    public func allSucceeded(_ ok: Bool) throws -> Bool {
        try node.allreduce(ok ? 1 : 0, .min) == 1
    }
}
