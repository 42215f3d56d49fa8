import Collectives
import Layers
import Optimizers
import TensorCore

/// The plain update sharded over ranks (the shape of ZeRO stage 1): instead of every rank summing
/// the whole gradient and updating every parameter, the ranks reduce-scatter the gradient, each
/// updates its own segment, and an allgather of the new values gives every rank all of them. The
/// same bytes cross the wire as in the allreduce, and each rank's update pass shrinks to 1/P (7%
/// of an np=2 MLP step whole). The sum is `orderedSum`'s fixed rank tree, so deterministic runs
/// keep their bits.
///
/// Segments are cut at unit boundaries (`TensorSpec.unitLength`: whole rows), so that each weight
/// row feeding a `.scaled`-epsilon BN is updated by one rank, which computes its new squared norm
/// as an unsharded update would; one small allreduce then hands every rank all the norms, the
/// monitor sums of every unit on logging steps (each slot's sum has one non-zero term, so it is
/// exact) and the count of ranks that met a value that is not finite.
///
/// Used for every step when the rank count is a power of two, the optimizer runs the
/// paper's plain steps and the gradient is not reduced during backward (`--overlap` off).
///
/// When every rank is on one node (`--intra-node shared-memory`, the default), the node holds one
/// copy of the parameters, in shared memory, and each rank's gradient lives in its own slice of it;
/// no gradient byte goes through MPI. After one barrier each rank sums every rank's gradient over
/// its segment, in the ordered sum's tree (the same bits), piece by piece inside the update's pass
/// (each piece of the sum is read back from cache), and writes the segment's new values into the
/// node's second copy of the parameters; after the verdict every rank reads its parameters from
/// that copy. Against the halving and doubling on `MPI_Sendrecv`, this skips MPI's copy into its
/// own buffers, the receive scratch and the gather: fewer passes over memory, the resource that
/// bounds this step on a shared node. With a network that keeps its activations there too
/// (`NodeBatchGradients`, `--weight-gradients node`), the pass computes its weight rows' gradients
/// from every rank's samples instead of summing whole gradients the ranks wrote.
final class ShardedUpdate {
    private let communicator: Communicator
    private let layout: ParameterLayout
    /// How gradients and new values move between ranks.
    private enum Transport {
        /// MPI messages; `scratch` receives the partner's halves in the reduce-scatter (allocated
        /// once: a gradient-sized allocation per step would be an mmap and fresh page faults).
        case messages(scratch: FlatBuffer)
        /// Node shared memory: each rank's slice holds its gradient (`gradients`, in rank order, read
        /// in place); the two common parts hold two copies of the parameters, the store's `values`
        /// and `standby`, which a committed step exchanges (the new values are written into `standby`).
        case sharedMemory(NodeSharedMemory, standby: FlatBuffer, gradients: [UnsafePointer<Float>])
    }
    private let transport: Transport
    /// Every rank's segment (`orderedSegment` with `unitBoundary`).
    private let segments: [Range<Int>]
    /// In node shared memory, a network that shares its activations: the weight rows of this
    /// rank's segment whose gradients it computes over the node's batch (`NodeBatchGradients`).
    private let nodeBatch: (network: NodeBatchGradients, rows: [(tensor: TensorSpec, rows: Range<Int>)], sameBitsAsSummed: Bool)?

    /// With `sharedMemory`, collective: maps the node's shared buffers, moves `store`'s gradient
    /// into this rank's slice and its values into the node's copy (each rank writes its segment of
    /// it, so the values must be the same on every rank, as after the start-up broadcast: checked,
    /// `TrainingError.replicasDiffer` on every rank otherwise). Every rank must be on this node;
    /// `extraBytes` more per rank are asked for (a test's impossible request).
    ///
    /// From then on the ranks' `values` are one memory: a rank that writes it writes every rank's
    /// parameters, so only `step` may.
    ///
    /// With `network` (the MLP, not in deterministic mode), backward cuts its weight gradients at
    /// the segments' boundaries, whatever the transport (`NodeBatchGradients.cutWeightGradients`),
    /// and with `overNodeBatch`, in node shared memory only, each rank's slice also holds the
    /// network's shared activations, after its gradient; backward then defers the weight
    /// gradients (`NodeBatchGradients.defersWeightGradients`), and every step computes the weight rows of
    /// this rank's segment over every rank's samples instead of summing the ranks' gradients
    /// there: GEMMs of the same shapes, added in the same tree, so the same bits when each rank's
    /// sample count stays the same from step to step (`evenShares`, `--balance off`; with
    /// `--balance on` the fusion of the tree's lowest level into the GEMMs goes unchecked).
    init(
        store: ParameterStore, communicator: Communicator, sharedMemory: Bool, network: NodeBatchGradients? = nil,
        overNodeBatch: Bool = false, evenShares: Bool = true, extraBytes: Int = 0
    ) throws {
        let layout = store.layout
        self.layout = layout
        self.communicator = communicator
        let segments = (0..<communicator.size).map {
            communicator.orderedSegment(of: $0, count: layout.count, split: { Self.unitBoundary($0, in: layout) })
        }
        self.segments = segments
        network?.cutWeightGradients(at: segments)
        let activations = overNodeBatch ? network : nil
        guard sharedMemory else {
            transport = .messages(scratch: FlatBuffer(count: layout.count))
            nodeBatch = nil
            return
        }
        let floats = Swift.max(layout.count, 1)  // as many as the store's buffers hold
        let bytes = floats * MemoryLayout<Float>.stride
        // the activations start on a cache line of their own
        let gradientFloats = (floats + 15) / 16 * 16
        let activationFloats = activations?.sharedActivationFloats ?? 0
        let memory = try communicator.mapNodeSharedMemory(
            bytesPerRank: (gradientFloats + activationFloats) * MemoryLayout<Float>.stride + extraBytes, commonParts: 2,
            bytesPerPart: bytes)
        // every rank's slice and the common parts are read as Floats here: bind the whole segment
        let segmentFloats =
            (memory.ranks * memory.bytesPerRank + memory.commonParts * memory.bytesPerPart) / MemoryLayout<Float>.stride
        _ = memory.slice(of: 0).bindMemory(to: Float.self, capacity: segmentFloats)
        let mine = memory.slice(of: memory.rank).assumingMemoryBound(to: Float.self)
        store.gradients.move(into: UnsafeMutableBufferPointer(start: mine, count: floats), keeper: memory)
        func copy(_ i: Int) -> FlatBuffer {
            let start = memory.commonPart(i).assumingMemoryBound(to: Float.self)
            return FlatBuffer(wrapping: UnsafeMutableBufferPointer(start: start, count: layout.count), keeper: memory)
        }
        let current = copy(0)
        try ReplicaCheck.verify([store.values], over: communicator, when: "before the parameters move into node shared memory")
        let segment = segments[communicator.rank]
        _ = current.slice(segment).update(fromContentsOf: store.values.slice(segment))
        NodeSharedMemory.fence()
        try communicator.barrier()  // every segment is written
        NodeSharedMemory.fence()
        store.values.exchangeStorage(with: current)  // `current` now holds, and frees, the private copy
        let gradients = (0..<memory.ranks).map { UnsafePointer(memory.slice(of: $0).assumingMemoryBound(to: Float.self)) }
        transport = .sharedMemory(memory, standby: copy(1), gradients: gradients)
        if let activations, activationFloats > 0 {
            let regions = (0..<memory.ranks).map { memory.slice(of: $0).assumingMemoryBound(to: Float.self) + gradientFloats }
            activations.shareActivations(in: regions, rank: memory.rank, keeper: memory)
            let owned = activations.nodeBatchTensors.compactMap { t in
                t.rows(in: segments[communicator.rank]).map { (tensor: t, rows: $0) }
            }
            nodeBatch = (activations, owned, evenShares)
            activations.defersWeightGradients = true  // every step's update computes them
        } else {
            nodeBatch = nil
        }
    }

    /// The run's network, optimizer and timeline, and with per-rank BN statistics the communicator
    /// the radial terms are summed over: what `sumAndUpdate` steps with.
    var context: (model: any Network, optimizer: ScaleInvariantSGD, timeline: Timeline?, radialTermsOver: Communicator?)?

    /// The node shared memory the gradients are summed in, if they are.
    var sharedMemory: NodeSharedMemory? {
        if case .sharedMemory(let memory, _, _) = transport { return memory }
        return nil
    }

    /// Collective: one plain step from the gradients backward left (each rank's own sums), for
    /// every rank. Returns nil, with the values unchanged, when a new value is not finite, else the
    /// group monitors (empty without `monitor`: their unit sums ride on the step's one small
    /// allreduce, so a monitored step updates exactly as any other); and the seconds spent
    /// communicating. On the timeline: the update's span and each collective's.
    func step(
        _ store: ParameterStore, _ optimizer: ScaleInvariantSGD, monitor: Bool, timeline: Timeline?
    ) throws -> (monitors: [GroupMonitor]?, communicationSeconds: Double) {
        let gradients = store.gradients.all
        let bytes = gradients.count * MemoryLayout<Float>.stride
        var seconds = 0.0
        func communicating<T>(_ name: String, bytes: Int, _ body: () throws -> T) rethrows -> T {
            let start = Stopwatch.now()
            defer {
                let end = Stopwatch.now()
                seconds += end - start
                timeline?.span(name, "communication", .communication, from: start, to: end, bytes: bytes)
            }
            return try body()
        }
        // the radial tensors and their row counts, the same on every rank (as the radial terms are);
        // segments are cut at rows of the tensors' first dimension (`unitBoundary`), which must be
        // the radial terms' rows
        let radial = store.pendingRadial.map { ($0.tensor, rows: $0.coefficients.count) }.sorted { $0.0.offset < $1.0.offset }
        for (tensor, rows) in radial {
            precondition(
                tensor.shape.first == rows, "\(tensor.name): \(rows) radial rows, but its first dimension is \(tensor.shape)")
        }
        let mine: (finite: Bool, rowNorms: [(tensor: TensorSpec, rows: Range<Int>, norms: [Double])])
        // with `monitor`, the monitor sums of this rank's units (zeros elsewhere)
        let unitSums = UnsafeMutableBufferPointer<Double>.allocate(capacity: monitor ? optimizer.monitorSlots : 0)
        defer { unitSums.deallocate() }
        _ = unitSums.initialize(repeating: 0)
        let sumsPointer = monitor ? unitSums.baseAddress : nil
        // in node shared memory, the gradient buffer is the standby copy of the parameters during
        // the update, and `standbyHoldingTheSlice` holds the gradient's slice: the gradient goes
        // back to it however the step ends
        var standbyHoldingTheSlice: FlatBuffer? = nil
        defer { if let standbyHoldingTheSlice { store.gradients.exchangeStorage(with: standbyHoldingTheSlice) } }
        switch transport {
        case .sharedMemory(let memory, let standby, let sources):
            try communicating("barrier: every rank's gradient is final", bytes: 0) { try awaitGradients(store, memory) }
            // the sum and the new values go to the standby copy (the update writes over the summed
            // gradient), which the commit below makes the values
            store.gradients.exchangeStorage(with: standby)
            standbyHoldingTheSlice = standby
            // one pass over the segment, each piece updated while in cache: the sum over ranks of
            // the piece or, when backward deferred them, the weight rows' gradients from every
            // rank's activations (a GEMM per rank over the segment's rows of a tensor, at its first
            // piece; the small tensors, BN's and biases, are still summed)
            let deferred = nodeBatch
            var computed = Set<Int>()
            let segment = segments[communicator.rank]
            let pass = {
                optimizer.stepShard(store, shard: segment, unitSums: sumsPointer) { piece in
                    if let deferred,
                        let (tensor, rows) = deferred.rows.first(where: { $0.tensor.range.contains(piece.lowerBound) })
                    {
                        if computed.insert(tensor.offset).inserted {
                            deferred.network.weightGradient(
                                tensor, rows: rows, into: store.gradients.pointer, sameBitsAsSummed: deferred.sameBitsAsSummed)
                        }
                    } else {
                        orderedTreeSum(sources, piece, into: store.gradients.pointer)
                    }
                    // deterministic mode's terms from global sums go where the sum over ranks is complete
                    store.addPendingTerms(in: piece, forgetting: false)
                }
            }
            // summing, the pass is counted as communication, update included (it cannot be
            // split); computing weight gradients, it is backward's work moved here and the update
            mine =
                deferred == nil
                ? communicating("sum gradients in node shared memory, and update", bytes: bytes, pass)
                : timeline?.measure("weight gradients over the node's batch, and update", "update", pass) ?? pass()
            store.pendingTerms.removeAll()
        case .messages(let scratch):
            let segment = try communicating("reduce-scatter gradients", bytes: bytes) {
                try communicator.orderedReduceScatter(gradients, split: unitBoundary, scratch: scratch.all)
            }
            store.addPendingTerms(in: segment)
            let update = { optimizer.stepShard(store, shard: segment, unitSums: sumsPointer) }
            mine = timeline?.measure("update", "update", update) ?? update()
        }
        // one Double per row of every radial tensor (where each tensor's rows start in it), then
        // the count of ranks that met a value that is not finite
        var first: [Int: Int] = [:]
        var rows = 0
        for (tensor, count) in radial {
            first[tensor.offset] = rows
            rows += count
        }
        var agreed = [Double](repeating: 0, count: rows + 1 + unitSums.count)
        for part in mine.rowNorms {
            let at = first[part.tensor.offset]! + part.rows.lowerBound
            for (k, norm) in part.norms.enumerated() { agreed[at + k] = norm }
        }
        agreed[rows] = mine.finite ? 0 : 1
        // every unit's sums come from one rank (zeros from the others): the sum over ranks is exact
        for (k, sum) in unitSums.enumerated() { agreed[rows + 1 + k] = sum }
        // with shared memory, also the barrier after which every rank's new segment can be read
        NodeSharedMemory.fence()
        try communicating("allreduce row norms and the NaN/Inf verdict", bytes: agreed.count * 8) {
            try communicator.allreduce(&agreed, .sum)
        }
        NodeSharedMemory.fence()
        guard agreed[rows] == 0 else { return (nil, seconds) }
        let monitors = agreed.withUnsafeBufferPointer { all in
            monitor ? optimizer.groupMonitors(unitSums: UnsafeBufferPointer(rebasing: all[(rows + 1)...])) : []
        }
        if case .messages = transport {
            try communicating("allgather new values", bytes: bytes) {
                try communicator.orderedAllgather(gradients, from: segments[communicator.rank], split: unitBoundary)
            }
        }
        var norms: [Int: [Double]] = [:]
        for (tensor, count) in radial {
            norms[tensor.offset] = Array(agreed[first[tensor.offset]!..<first[tensor.offset]! + count])
        }
        optimizer.commitPlainStep(store, rowNorms: norms)
        return (monitors, seconds)
    }

    /// The barrier after which every rank's gradient is final.
    private func awaitGradients(_ store: ParameterStore, _ memory: NodeSharedMemory) throws {
        precondition(
            UnsafeMutableRawPointer(store.gradients.pointer) == memory.slice(of: memory.rank),
            "the gradient is not in this rank's slice of node shared memory")
        // which of the node's two copies of the parameters this rank reads (0 or 1)
        let copy = UnsafeMutableRawPointer(store.values.pointer) == memory.commonPart(0) ? 0 : 1
        NodeSharedMemory.fence()
        // the barrier, and a check of the protocol: every rank reads the same copy (every commit
        // exchanges the two on every rank)
        let sum = try communicator.allreduce(copy, .sum)
        precondition(
            sum == 0 || sum == communicator.size, "the ranks read different copies of the parameters in node shared memory")
        NodeSharedMemory.fence()
    }

    /// Where to cut `segment`: the unit boundary (`TensorSpec.unitLength`, whole rows) at or below
    /// its middle, in the tensor there, or the next one, or the segment's end.
    func unitBoundary(_ segment: Range<Int>) -> Int { Self.unitBoundary(segment, in: layout) }

    static func unitBoundary(_ segment: Range<Int>, in layout: ParameterLayout) -> Int {
        let mid = segment.lowerBound + segment.count / 2
        guard let tensor = layout.tensors.last(where: { $0.offset <= mid }), mid < tensor.range.upperBound else { return mid }
        let unit = tensor.unitLength
        let down = tensor.offset + (mid - tensor.offset) / unit * unit
        if down >= segment.lowerBound { return down }
        return Swift.min(down + unit, tensor.range.upperBound, segment.upperBound)
    }
}

extension ShardedUpdate: GradientSynchronization {
    func beginBackward() {}

    func sumAndUpdate(monitor: Bool) throws -> (monitors: [GroupMonitor]?, exposedSeconds: Double) {
        guard let context else { preconditionFailure("a sharded update steps only with its context set") }
        if let over = context.radialTermsOver { try sumPendingRadialTerms(context.model.parameters, over: over) }
        let outcome = try step(context.model.parameters, context.optimizer, monitor: monitor, timeline: context.timeline)
        return (outcome.monitors, outcome.communicationSeconds)
    }

    /// With weight gradients over the node's batch, the network's GEMMs without its weight
    /// gradients, then this rank's weight rows over every rank's samples: one GEMM per rank and
    /// tensor as `Linear.weightGradient` calls them (every other one adding, beta 1, where the
    /// tree's pairs are fused). Otherwise the network's own.
    func gemmWorkload(counts: [Int], rank: Int) -> [GemmCall] {
        guard let nodeBatch else { return context!.model.gemmWorkload(rows: counts[rank]) }
        let rows = nodeBatch.rows.flatMap { tensor, rows in
            counts.enumerated().map { r, count in
                GemmCall(.transposed, .none, m: rows.count, n: tensor.count / tensor.shape[0], k: count, beta: r % 2 == 0 ? 0 : 1)
            }
        }
        return nodeBatch.network.gemmWorkloadDeferringWeightGradients(rows: counts[rank]) + rows
    }
}
