import Collectives
import Layers
import Optimizers
import TensorCore

/// The part of a training step that turns every rank's gradient into one update on every rank,
/// chosen once by the `SynchronizationPlan`: `ReplicatedUpdate` (sum the whole gradient, every
/// rank updates everything) or `ShardedUpdate` (each rank sums and updates its segment).
///
/// The update is also the NaN/Inf guard: every rank takes the same verdict, and a step that meets
/// a value that is not finite leaves the parameters as they were.
protocol GradientSynchronization: AnyObject {
    /// Before backward.
    func beginBackward()
    /// Collective: after backward, sums the gradient over ranks and applies one update on every
    /// rank. Returns nil, with the parameters unchanged, when a value is not finite, else the group
    /// monitors (empty without `monitor`; with it the update is the same); and the seconds this
    /// rank waited on communication here (exposed).
    func sumAndUpdate(monitor: Bool) throws -> (monitors: [GroupMonitor]?, exposedSeconds: Double)
    /// The GEMMs of one step on this rank when the ranks hold `counts` samples (the benchmark's
    /// GEMM-only bound).
    func gemmWorkload(counts: [Int], rank: Int) -> [GemmCall]
}

/// Every rank sums the whole gradient (buckets of `OverlappedGradientReduction`: `MPI_Allreduce`,
/// overlapped with backward or not, or deterministic mode's ordered tree) and applies the whole
/// update. For one rank, for momentum and weight decay (whose velocity is not sharded), for rank
/// counts that are not a power of two, and when the reduction overlaps backward.
final class ReplicatedUpdate: GradientSynchronization {
    let reduction: OverlappedGradientReduction
    private let model: any Network
    private let optimizer: ScaleInvariantSGD
    private let timeline: Timeline?
    /// With per-rank BN statistics: the communicator over which the scaled-epsilon radial terms are summed.
    private let radialTermsOver: Communicator?

    init(
        reduction: OverlappedGradientReduction, model: any Network, optimizer: ScaleInvariantSGD, timeline: Timeline?,
        radialTermsOver: Communicator?
    ) {
        self.reduction = reduction
        self.model = model
        self.optimizer = optimizer
        self.timeline = timeline
        self.radialTermsOver = radialTermsOver
    }

    func beginBackward() { reduction.begin() }

    func sumAndUpdate(monitor: Bool) throws -> (monitors: [GroupMonitor]?, exposedSeconds: Double) {
        // the buckets backward did not start, then the wait for all
        let exposed = try reduction.finish()
        for span in reduction.spans where timeline?.recording == true {
            timeline?.span(
                "allreduce gradients", "communication", .communication, from: span.start, to: span.end, bytes: span.bytes)
        }
        // deterministic mode: BN gamma and beta gradients from the global sums, the same on every
        // rank, where the ranks' gradients held zeros
        model.parameters.addPendingTerms()
        if let radialTermsOver { try sumPendingRadialTerms(model.parameters, over: radialTermsOver) }
        let update = { self.optimizer.apply(to: self.model.parameters, monitor: monitor) }
        let monitors = timeline?.measure("update", "update", update) ?? update()
        return (monitors, exposed)
    }

    func gemmWorkload(counts: [Int], rank: Int) -> [GemmCall] { model.gemmWorkload(rows: counts[rank]) }
}

/// Collective, with per-rank BN statistics (`--bn local`): sums the pending radial coefficients of
/// every layer over ranks, in one allreduce, so that every rank applies the same terms.
func sumPendingRadialTerms(_ store: ParameterStore, over communicator: Communicator) throws {
    guard !store.pendingRadial.isEmpty else { return }
    var all = store.pendingRadial.flatMap(\.coefficients)
    try communicator.allreduce(&all, .sum)
    var offset = 0
    for k in store.pendingRadial.indices {
        let n = store.pendingRadial[k].coefficients.count
        store.pendingRadial[k].coefficients = Array(all[offset..<offset + n])
        offset += n
    }
}
