import Collectives
import TensorCore

/// Gradient buckets: contiguous slices of the flat gradient buffer of at most `capBytes` each,
/// listed in reverse layer order (the order backward produces them), so that a bucket's reduction
/// can start as soon as backward has filled it (as PyTorch DDP's reducer does).
///
/// Gradient averaging convention, written once here: each rank's gradient is already a sum over its
/// own samples of d(loss_i)/d(theta) divided by the *global* sample count of the step (the loss
/// layer divides by it), so the sum over ranks is the gradient of the mean loss over the global
/// batch, whatever the number of ranks and however unevenly the batch is split.
public struct GradientBuckets: Sendable {
    public let ranges: [Range<Int>]

    /// - Parameters:
    ///   - layout: the parameter layout (forward order).
    ///   - capBytes: the largest bucket in bytes; a tensor larger than the cap is split.
    public init(layout: ParameterLayout, capBytes: Int) {
        let capElements = Swift.max(capBytes / MemoryLayout<Float>.stride, 1)
        var ranges: [Range<Int>] = []
        var end = layout.count
        var start = end
        for tensor in layout.tensors.reversed() {
            // grow the current bucket by whole tensors while it fits
            if end - tensor.offset <= capElements {
                start = tensor.offset
                continue
            }
            if start < end { ranges.append(start..<end) }
            end = start
            // a tensor larger than the cap becomes several buckets, back to front
            while end - tensor.offset > capElements {
                ranges.append((end - capElements)..<end)
                end -= capElements
            }
            start = tensor.offset
        }
        if start < end { ranges.append(start..<end) }
        self.ranges = ranges
    }
}

/// The gradient reduction of one step, overlapped with backward: when backward reports that every
/// gradient from some offset on is final, the next bucket that lies wholly there starts a
/// nonblocking allreduce; every later report tests the one in flight (Open MPI advances it only
/// inside MPI calls) and starts the next; `finish` starts what is left and waits. Without
/// `overlap`, `finish` does all of it with blocking calls.
final class OverlappedGradientReduction {
    let buckets: GradientBuckets
    /// Set by the trainer (`--overlap`) before the first step; false in a one-rank group.
    var overlap: Bool
    private let communicator: Communicator
    private let gradients: FlatBuffer
    private var next = 0  // the next bucket to start
    private var readyFrom = Int.max  // every gradient at or above this index is final
    private var inFlight: [InFlight] = []
    private var backwardEnded = Double.infinity
    /// Time during backward with at least one reduction in flight, this step (an upper bound:
    /// a completion is seen only at the next test, at a layer boundary).
    var hiddenSeconds: Double {
        var total = 0.0, covered = -Double.infinity  // spans start in order; merge overlapping ones
        for span in spans {
            let start = Swift.max(span.start, covered), end = Swift.min(span.end, backwardEnded)
            if end > start { total += end - start }
            covered = Swift.max(covered, span.end)
        }
        return overlap ? total : 0
    }
    /// Each bucket's reduction as it was observed: start, completion seen, bytes.
    private(set) var spans: [(start: Double, end: Double, bytes: Int)] = []
    /// Between `begin` and `finish`: a backward outside a training step (a probe) reduces nothing.
    private var active = false

    /// Deterministic mode: each bucket is summed in the fixed tree over ranks
    /// (`Communicator.orderedSum`), after backward.
    let ordered: Bool

    init(_ buckets: GradientBuckets, gradients: FlatBuffer, communicator: Communicator, overlap: Bool, ordered: Bool = false) {
        precondition(!(overlap && ordered), "the ordered reduction runs after backward")
        self.buckets = buckets
        self.gradients = gradients
        self.communicator = communicator
        self.overlap = overlap && communicator.size > 1
        self.ordered = ordered
    }

    /// Before backward.
    func begin() {
        precondition(inFlight.isEmpty, "a gradient reduction is still in flight from the previous step")
        next = 0
        readyFrom = .max
        active = true
        backwardEnded = .infinity
        spans.removeAll(keepingCapacity: true)
    }

    /// Backward: every gradient at an index >= `offset` is final. One bucket is in flight at a
    /// time during backward: over TCP a BN reduction sent later waits behind every byte queued
    /// before it on the same connection, and it is on the critical path.
    func gradientsFinal(from offset: Int) throws {
        guard active && overlap else { return }
        readyFrom = offset
        try poll()
    }

    /// After backward: starts the remaining buckets and waits for all. Returns the seconds spent
    /// here (the exposed communication).
    func finish() throws -> Double {
        let began = Stopwatch.now()
        defer { active = false }
        guard communicator.size > 1 else { return 0 }
        if !overlap {
            for range in buckets.ranges {
                let t0 = Stopwatch.now()
                try reduceAlone(range)
                spans.append((t0, Stopwatch.now(), range.count * MemoryLayout<Float>.stride))
            }
            return Stopwatch.now() - began
        }
        backwardEnded = began
        defer { inFlight.removeAll(keepingCapacity: true) }  // also when a wait throws (the run then ends)
        try poll()
        while next < buckets.ranges.count {
            try start(next)
            next += 1
        }
        for item in inFlight {
            if item.seenDone == nil { try item.request.wait() }
            completed(item, at: item.seenDone ?? Stopwatch.now())
        }
        return Stopwatch.now() - began
    }

    /// Collective: the reduction of the gradients `range`, blocking, by the path training takes
    /// (the ordered sum in deterministic mode, `MPI_Iallreduce` and a wait with overlap,
    /// `MPI_Allreduce` without); also what the benchmark times alone.
    func reduceAlone(_ range: Range<Int>) throws {
        if ordered {
            try communicator.orderedSum(gradients.slice(range))
        } else if overlap {
            try communicator.startAllreduce(gradients.slice(range), .sum).wait()
        } else {
            try communicator.allreduce(gradients.slice(range), .sum)
        }
    }

    private func start(_ bucket: Int) throws {
        let request = try communicator.startAllreduce(gradients.slice(buckets.ranges[bucket]), .sum)
        inFlight.append(InFlight(bucket: bucket, request: request, started: Stopwatch.now()))
    }

    /// Tests every reduction in flight (each advances only when tested) and retires the completed
    /// ones at the front.
    private func poll() throws {
        for k in inFlight.indices where inFlight[k].seenDone == nil {
            if try inFlight[k].request.test() { inFlight[k].seenDone = Stopwatch.now() }
        }
        while let oldest = inFlight.first, let end = oldest.seenDone {
            completed(oldest, at: end)
            inFlight.removeFirst()
        }
        while inFlight.isEmpty && next < buckets.ranges.count && buckets.ranges[next].lowerBound >= readyFrom {
            try start(next)
            next += 1
        }
    }

    private func completed(_ item: InFlight, at end: Double) {
        spans.append((item.started, end, buckets.ranges[item.bucket].count * MemoryLayout<Float>.stride))
    }

    private struct InFlight {
        let bucket: Int
        let request: PendingCollective
        let started: Double
        var seenDone: Double? = nil
    }
}
