import Collectives
import TensorCore

/// Gradient buckets: contiguous slices of the flat gradient buffer of at most `capBytes` each,
/// listed in reverse layer order (the order backward produces them), so that a later change can
/// reduce a bucket as soon as backward has filled it (as PyTorch DDP's reducer does).
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

    /// Collective: sums every bucket over all ranks, in bucket order (one allreduce per bucket).
    public func allreduce(_ gradients: FlatBuffer, over communicator: Communicator) throws {
        guard communicator.size > 1 else { return }
        for range in ranges {
            try communicator.allreduce(gradients.slice(range), .sum)
        }
    }
}
