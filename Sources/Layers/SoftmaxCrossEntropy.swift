import RealModule

/// Softmax cross-entropy over `logits: [batch, classes]` with integer labels.
public enum SoftmaxCrossEntropy {
    /// Per-batch results, summed (not averaged) so that ranks can add them exactly.
    public struct Sums: Sendable {
        public var loss = 0.0
        public var correct = 0
        public init() {}
    }

    /// Writes `dlogits = (softmax - onehot) / normalizer` and returns the summed loss and the number
    /// of correct argmax predictions. `normalizer` is the *global* sample count of the step, so that
    /// summing gradients over ranks gives the gradient of the mean loss over the global batch.
    public static func forwardBackward(
        logits: Matrix, labels: UnsafeBufferPointer<Int32>,
        normalizer: Double, dlogits: Matrix?
    ) -> Sums {
        precondition(labels.count == logits.rows, "\(labels.count) labels for \(logits.rows) rows of logits")
        var sums = Sums()
        let k = logits.cols
        let scale = Float(1 / normalizer)
        for r in 0..<logits.rows {
            let z = logits.row(r)
            var best = 0
            var maxValue = z[0]
            for j in 1..<k where z[j] > maxValue { maxValue = z[j]; best = j }
            let label = Int(labels[r])
            precondition(label >= 0 && label < k, "label \(label) outside 0..<\(k)")
            let labelLogit = z[label]  // read before dlogits is written (they may share memory)
            var total = 0.0
            for j in 0..<k {
                let e = Double.exp(Double(z[j] - maxValue))
                if let dlogits { dlogits.row(r)[j] = Float(e) }  // unnormalized; scaled below
                total += e
            }
            sums.loss += Double.log(total) - Double(labelLogit - maxValue)
            if best == label { sums.correct += 1 }
            if let dlogits {
                let d = dlogits.row(r)
                let factor = Float(1 / total) * scale
                for j in 0..<k { d[j] *= factor }
                d[label] -= scale
            }
        }
        return sums
    }
}
