import Collectives
import Data

/// The ranks of one node as a `DecodeTeam` (`--data folder:DIR`): they share the decoding of the
/// image folder into one cache file.
final class CommunicatorDecodeTeam: DecodeTeam {
    private let node: Communicator

    /// `node`: a communicator over this node's ranks (`Communicator.nodeCommunicator()`).
    init(_ node: Communicator) { self.node = node }

    var rank: Int { node.rank }
    var size: Int { node.size }

    /// Collective over the node: one allreduce (min) of one integer, which is also the barrier.
    func allSucceeded(_ ok: Bool) throws -> Bool {
        try node.allreduce(ok ? 1 : 0, .min) == 1
    }
}
