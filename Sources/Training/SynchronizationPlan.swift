import Optimizers

/// How a run keeps its ranks in step: chosen once at start-up from the configuration and the
/// machine (`choose`), printed as one line, recorded in the metrics file's first record. The
/// training step never asks which mode it is in: the plan picks one `GradientSynchronization`.
public struct SynchronizationPlan: Sendable, Equatable {
    /// How every rank's gradient becomes the sum over the global batch.
    public enum GradientSum: String, Sendable {
        /// One rank: nothing to sum.
        case none = "none"
        /// `MPI_Allreduce` in buckets, every rank then updates every parameter.
        case allreduce = "allreduce"
        /// Deterministic mode's fixed tree over ranks (`orderedSum`), every rank updates everything.
        case orderedAllreduce = "ordered-allreduce"
        /// Reduce-scatter, each rank updates its segment, allgather of the new values (MPI messages).
        case reduceScatter = "reduce-scatter"
        /// Every rank's gradient read in place in node shared memory, each rank updates its segment
        /// of the node's one copy of the parameters.
        case nodeSharedMemory = "node-shared-memory"

        /// How the plan line says it.
        var phrase: String {
            switch self {
            case .none: "nowhere"
            case .allreduce: "by MPI_Allreduce"
            case .orderedAllreduce: "in a fixed tree over the ranks"
            case .reduceScatter: "by reduce-scatter and allgather (MPI)"
            case .nodeSharedMemory: "in node shared memory"
            }
        }
    }

    public var ranks: Int
    /// BN statistics over the global batch (synchronized) or per rank.
    public var batchNormSync: BatchNormSync
    public var gradientSum: GradientSum
    /// Gradient buckets reduced while backward goes on.
    public var overlap: Bool
    /// In node shared memory: each weight row's gradient computed once over the node's batch by the
    /// rank that updates it (the MLP), instead of every rank's whole gradient summed.
    public var weightGradientsOverNodeBatch: Bool
    /// `--deterministic`: the chunks of each global batch; nil otherwise.
    public var deterministicChunks: Int?
    /// `--balance on`: batch shares follow each rank's speed.
    public var balanced: Bool

    /// Whether each rank updates only its segment of the parameters.
    public var sharded: Bool { gradientSum == .reduceScatter || gradientSum == .nodeSharedMemory }

    /// The plan for `configuration` on `ranks` ranks, `oneNode` when they share one node, with an
    /// optimizer that runs the paper's plain steps or not (`plainSteps`), for a network that can
    /// compute weight gradients over the node's batch or not.
    ///
    /// - The update is sharded (the shape of ZeRO stage 1) when the rank count is a power of two
    ///   (the ordered tree's halving), the steps are plain (momentum would need its velocity
    ///   sharded too) and the gradient is not reduced during backward.
    /// - Overlap (`--overlap auto`) is on across nodes only: over shared memory each copy takes a
    ///   core that backward needs. Deterministic mode sums after backward.
    public static func choose(
        _ configuration: TrainingConfiguration, ranks: Int, oneNode: Bool, plainSteps: Bool, nodeBatchNetwork: Bool
    ) -> SynchronizationPlan {
        let deterministic = configuration.deterministic
        let overlap =
            ranks > 1 && !deterministic
            && (configuration.overlap == .on || (configuration.overlap == .auto && !oneNode))
        let shardable = ranks > 1 && ranks & (ranks - 1) == 0 && !overlap && plainSteps
        let gradientSum: GradientSum
        if ranks == 1 {
            gradientSum = .none
        } else if shardable {
            gradientSum = oneNode && configuration.intraNode == .sharedMemory ? .nodeSharedMemory : .reduceScatter
        } else {
            gradientSum = deterministic ? .orderedAllreduce : .allreduce
        }
        return SynchronizationPlan(
            ranks: ranks, batchNormSync: configuration.batchNormSync, gradientSum: gradientSum,
            overlap: overlap,
            weightGradientsOverNodeBatch: gradientSum == .nodeSharedMemory && nodeBatchNetwork && !deterministic
                && configuration.weightGradients == .node,
            deterministicChunks: deterministic ? configuration.chunks : nil,
            balanced: configuration.balance == .on && ranks > 1)
    }

    /// One line for the start of a run.
    public var line: String {
        guard ranks > 1 else {
            return "plan: 1 rank, no communication"
                + (deterministicChunks.map { "; deterministic, \($0) chunks per batch" } ?? "")
        }
        var parts = [
            "\(ranks) ranks",
            batchNormSync == .sync ? "BN statistics over the global batch" : "BN statistics per rank",
            "gradients summed \(gradientSum.phrase)"
                + (weightGradientsOverNodeBatch ? " (weight rows over the node's batch)" : ""),
            sharded ? "update sharded over the ranks" : "every rank updates every parameter",
            overlap ? "overlapped with backward" : "after backward",
        ]
        if let deterministicChunks { parts.append("deterministic, \(deterministicChunks) chunks per batch") }
        if balanced { parts.append("batch shares follow each rank's speed") }
        return "plan: " + parts.joined(separator: "; ")
    }

    var json: JSONValue {
        .object([
            ("ranks", .integer(ranks)), ("bn", .string(batchNormSync.rawValue)), ("gradient_sum", .string(gradientSum.rawValue)),
            ("sharded_update", .bool(sharded)), ("overlap", .bool(overlap)),
            ("weight_gradients_over_node_batch", .bool(weightGradientsOverNodeBatch)),
            ("deterministic_chunks", deterministicChunks.map { .integer($0) } ?? .null), ("balanced", .bool(balanced)),
        ])
    }
}
