import Layers
import TensorCore

extension Trainer {
    /// Loss and per-group squared norms of the weights and of the gradient on the whole training set
    /// at the current parameters, without an update: the full-batch quantities of docs/theory.md (G_I)
    /// for runs that step on mini-batches. One process (the training set must fit in one forward);
    /// BN in training mode, as in a step. Overwrites the gradient buffer, which the next step rewrites.
    public func fullBatchProbe() throws -> (loss: Double, intrinsicGradient2: Double) {
        let data = splits.train
        precondition(communicator.size == 1 && data.count <= model.maxBatch, "the probe runs the training set in one forward")
        let x = gather(data, (0..<data.count).map { Int32($0) }[...])
        let logits = try model.forward(x, reducer: statistics)
        let dz = FlatBuffer(count: data.count * model.classes)
        let sums = labels.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(
                logits: logits, labels: UnsafeBufferPointer(rebasing: $0[0..<data.count]), normalizer: Double(data.count),
                dlogits: Matrix(dz.pointer, rows: data.count, cols: model.classes))
        }
        try model.backward(Matrix(dz.pointer, rows: data.count, cols: model.classes), reducer: statistics, radial: .none)
        var g2 = 0.0
        for group in model.groups {
            let w = UnsafeBufferPointer(model.parameters.values.slice(group.range))
            let g = UnsafeBufferPointer(model.parameters.gradients.slice(group.range))
            g2 += group.kind == .scaleInvariant ? squaredNorm(w) * squaredNorm(g) : squaredNorm(g)
        }
        return (sums.loss / Double(data.count), g2)
    }
}
