import Collectives
import Layers

extension Trainer {
    /// The loss and correct count of this rank's samples, writing `dlogits`; in deterministic mode
    /// the loss is the tree sum over this rank's chunks (a subtree, finished across ranks later).
    func lossAndGradient(_ logits: Matrix, dlogits: Matrix) -> SoftmaxCrossEntropy.Sums {
        let ranges = model.chunks.rowRanges(rows: logits.rows)
        var leaves = BatchChunks.DoubleLeaves(ranges: ranges, width: 1)
        var correct = 0
        labels.withUnsafeBufferPointer { labels in
            for (i, rows) in ranges.enumerated() {
                let sums = SoftmaxCrossEntropy.forwardBackward(
                    logits: logits.rows(rows), labels: UnsafeBufferPointer(rebasing: labels[rows]),
                    normalizer: Double(configuration.globalBatch), dlogits: dlogits.rows(rows))
                leaves.withLeaf(i) { $0[0] = sums.loss }
                correct += sums.correct
            }
        }
        var total = SoftmaxCrossEntropy.Sums()
        total.loss = leaves.combined()[0]
        total.correct = correct
        return total
    }

    /// FNV-1a of the parameters and BN buffers: equal on every rank, and, in deterministic mode,
    /// for every rank count.
    var parameterFingerprint: String {
        let hash = ReplicaCheck.fingerprint([model.parameters.values, model.buffers])
        return "0x" + String(hash, radix: 16, uppercase: false)
    }
}
