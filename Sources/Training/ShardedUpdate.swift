import Collectives
import Optimizers
import TensorCore

/// The plain update sharded over ranks (the shape of ZeRO stage 1): instead of every rank summing
/// the whole gradient and updating every parameter, the ranks reduce-scatter the gradient, each
/// updates its own segment, and an allgather of the new values gives every rank all of them. The
/// same bytes cross the wire as in the allreduce, and each rank's update pass shrinks to 1/P (7%
/// of an np=2 MLP step whole). The sum is `orderedSum`'s fixed rank tree, so deterministic runs
/// keep their bits.
///
/// Segments are cut at row boundaries, so that each weight row feeding a `.scaled`-epsilon BN is
/// updated by one rank, which computes its new squared norm as an unsharded update would; one
/// small allreduce then hands every rank all the norms (each row's sum has one non-zero term, so
/// it is exact) with the count of ranks that met a value that is not finite.
///
/// Used for steps without monitors when the rank count is a power of two, the optimizer runs the
/// paper's plain steps and the gradient is not reduced during backward (`--overlap` off).
///
/// When every rank is on one node (`--intra-node shared-memory`, the default), the parameter and
/// gradient buffers live in node shared memory and no gradient byte goes through MPI: after one
/// barrier each rank adds every rank's copy of its segment in place, in the ordered sum's tree (the
/// same bits), piece by piece inside the update's pass (each piece of the sum is read back from
/// cache), and after the verdict each rank copies the other segments' new values from their
/// owners' buffers. Against the halving and doubling on `MPI_Sendrecv`, this skips MPI's copy
/// into its own buffers and the receive scratch: fewer passes over memory, the resource that
/// bounds this step on a shared node.
final class ShardedUpdate {
    private let communicator: Communicator
    private let layout: ParameterLayout
    /// How gradients and new values move between ranks.
    private enum Transport {
        /// MPI messages; `scratch` receives the partner's halves in the reduce-scatter (allocated
        /// once: a gradient-sized allocation per step would be an mmap and fresh page faults).
        case messages(scratch: FlatBuffer)
        /// Node shared memory: each rank's slice holds its values and gradients, two regions of
        /// `regionFloats` that exchange roles at every update.
        case sharedMemory(NodeSharedMemory, regionFloats: Int)
    }
    private let transport: Transport
    /// Every rank's segment (`orderedSegment` with `rowBoundary`).
    private var segments: [Range<Int>] = []

    /// With `sharedMemory`, collective: maps the node's shared buffers and moves `store`'s values
    /// and gradients there (every rank must be on this node); `extraBytes` more per rank are asked
    /// for (a test's impossible request).
    init(store: ParameterStore, communicator: Communicator, sharedMemory: Bool, extraBytes: Int = 0) throws {
        layout = store.layout
        self.communicator = communicator
        if sharedMemory {
            let alignment = NodeSharedMemory.alignment / MemoryLayout<Float>.stride
            let regionFloats = (Swift.max(layout.count, 1) + alignment - 1) / alignment * alignment
            let memory = try communicator.mapNodeSharedMemory(bytesPerRank: 2 * regionFloats * MemoryLayout<Float>.stride + extraBytes)
            // every rank's slice is read as Floats here: bind the whole segment
            _ = memory.slice(of: 0).bindMemory(to: Float.self, capacity: memory.ranks * memory.bytesPerRank / MemoryLayout<Float>.stride)
            let mine = memory.slice(of: memory.rank).assumingMemoryBound(to: Float.self)
            store.values.move(into: UnsafeMutableBufferPointer(start: mine, count: regionFloats), keeper: memory)
            store.gradients.move(into: UnsafeMutableBufferPointer(start: mine + regionFloats, count: regionFloats), keeper: memory)
            transport = .sharedMemory(memory, regionFloats: regionFloats)
        } else {
            transport = .messages(scratch: FlatBuffer(count: layout.count))
        }
        segments = (0..<communicator.size).map { communicator.orderedSegment(of: $0, count: layout.count, split: rowBoundary) }
    }

    /// The node shared memory the gradients are summed in, if they are.
    var sharedMemory: NodeSharedMemory? {
        if case .sharedMemory(let memory, _) = transport { return memory }
        return nil
    }

    /// Whether a run of this shape shards its plain steps.
    static func applies(ranks: Int, overlap: Bool, optimizer: ScaleInvariantSGD) -> Bool {
        ranks > 1 && ranks & (ranks - 1) == 0 && !overlap && optimizer.isPaperAlgorithm
    }

    /// Collective: one plain step from the gradients backward left (each rank's own sums), for
    /// every rank. Returns false, with the values unchanged, when a new value is not finite, and
    /// the seconds spent communicating. On the timeline: the update's span and each collective's.
    func step(
        _ store: ParameterStore, _ optimizer: ScaleInvariantSGD, timeline: Timeline?
    ) throws -> (applied: Bool, communicationSeconds: Double) {
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
        // segments are cut at rows of the tensors' first dimension (`rowBoundary`), which must be
        // the radial terms' rows
        let radial = store.pendingRadial.map { ($0.tensor, rows: $0.coefficients.count) }.sorted { $0.0.offset < $1.0.offset }
        for (tensor, rows) in radial {
            precondition(tensor.shape.first == rows, "\(tensor.name): \(rows) radial rows, but its first dimension is \(tensor.shape)")
        }
        let mine: (finite: Bool, rowNorms: [(tensor: TensorSpec, rows: Range<Int>, norms: [Double])])
        // in node shared memory: every rank's gradient buffer, read in place
        var sources: [UnsafePointer<Float>] = []
        switch transport {
        case .sharedMemory(let memory, let regionFloats):
            sources = try communicating("barrier: every rank's gradient is final", bytes: 0) {
                try awaitGradients(store, memory, regionFloats: regionFloats)
            }
            // the sum over ranks inside the update's pass, piece by piece: counted as
            // communication, update included, as the pass cannot be split
            mine = communicating("sum gradients in node shared memory, and update", bytes: bytes) {
                optimizer.stepShard(store, shard: segments[communicator.rank]) { piece in
                    orderedTreeSum(sources, piece, into: store.gradients.pointer)
                    // deterministic mode's terms from global sums go where the sum over ranks is complete
                    store.addPendingTerms(in: piece, forgetting: false)
                }
            }
            store.pendingTerms.removeAll()
        case .messages(let scratch):
            let segment = try communicating("reduce-scatter gradients", bytes: bytes) {
                try communicator.orderedReduceScatter(gradients, split: rowBoundary, scratch: scratch.all)
            }
            store.addPendingTerms(in: segment)
            let update = { optimizer.stepShard(store, shard: segment) }
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
        var agreed = [Double](repeating: 0, count: rows + 1)
        for part in mine.rowNorms {
            let at = first[part.tensor.offset]! + part.rows.lowerBound
            for (k, norm) in part.norms.enumerated() { agreed[at + k] = norm }
        }
        agreed[rows] = mine.finite ? 0 : 1
        // with shared memory, also the barrier after which every rank's new segment can be read
        NodeSharedMemory.fence()
        try communicating("allreduce row norms and the NaN/Inf verdict", bytes: agreed.count * 8) {
            try communicator.allreduce(&agreed, .sum)
        }
        NodeSharedMemory.fence()
        guard agreed[rows] == 0 else { return (false, seconds) }
        switch transport {
        case .sharedMemory:
            communicating("copy new values from node shared memory", bytes: bytes) { gatherInPlace(store, from: sources) }
        case .messages:
            try communicating("allgather new values", bytes: bytes) {
                try communicator.orderedAllgather(gradients, from: segments[communicator.rank], split: rowBoundary)
            }
        }
        var norms: [Int: [Double]] = [:]
        for (tensor, count) in radial { norms[tensor.offset] = Array(agreed[first[tensor.offset]!..<first[tensor.offset]! + count]) }
        optimizer.commitPlainStep(store, rowNorms: norms)
        return (true, seconds)
    }

    /// The barrier after which every rank's gradient is final; returns every rank's gradient
    /// buffer, in rank order, to read in place.
    private func awaitGradients(
        _ store: ParameterStore, _ memory: NodeSharedMemory, regionFloats: Int
    ) throws -> [UnsafePointer<Float>] {
        // which region of this rank's slice the gradient is in now (0 or 1)
        let offset = memory.slice(of: memory.rank).distance(to: UnsafeMutableRawPointer(store.gradients.pointer))
        precondition(offset == 0 || offset == regionFloats * MemoryLayout<Float>.stride, "the gradient is not in node shared memory")
        let region = offset == 0 ? 0 : 1
        NodeSharedMemory.fence()
        // the barrier, and a check of the protocol: every rank's gradient is in the same region of
        // its slice (every update exchanges the two on every rank)
        let sum = try communicator.allreduce(region, .sum)
        precondition(sum == 0 || sum == communicator.size, "the ranks' gradients are in different regions of node shared memory")
        NodeSharedMemory.fence()
        return (0..<communicator.size).map {
            UnsafePointer(memory.slice(of: $0).assumingMemoryBound(to: Float.self) + region * regionFloats)
        }
    }

    /// After the verdict's barrier: copies every other rank's segment of new values from its
    /// gradient buffer (`sources`, as `awaitGradients` returned them) into this rank's. Nothing waits after it: an owner writes that buffer again
    /// only after the next step's barrier (its next backward writes the other region). The rule
    /// this rests on: between steps nothing writes `values` without a collective that every rank
    /// enters after its gather (the start-up broadcasts and a checkpoint's load run before the
    /// first step; a monitor step's update follows its gradient allreduce).
    private func gatherInPlace(_ store: ParameterStore, from sources: [UnsafePointer<Float>]) {
        let mine = store.gradients.pointer
        for (owner, segment) in segments.enumerated() where owner != communicator.rank && !segment.isEmpty {
            (mine + segment.lowerBound).update(from: sources[owner] + segment.lowerBound, count: segment.count)
        }
    }

    /// Where to cut `segment`: the row boundary at or below its middle, in the tensor there (a row
    /// is the tensor's count over its first dimension), or the next one, or the segment's end.
    func rowBoundary(_ segment: Range<Int>) -> Int {
        let mid = segment.lowerBound + segment.count / 2
        guard let tensor = layout.tensors.last(where: { $0.offset <= mid }), mid < tensor.range.upperBound,
            let rows = tensor.shape.first, rows > 0
        else { return mid }
        let rowLength = tensor.count / rows
        let down = tensor.offset + (mid - tensor.offset) / rowLength * rowLength
        if down >= segment.lowerBound { return down }
        return Swift.min(down + rowLength, segment.upperBound)
    }
}
