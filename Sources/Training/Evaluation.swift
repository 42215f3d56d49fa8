import Collectives
import Data
import Layers
import TensorCore

/// A model scored on a dataset with its BN running statistics: mean loss, top-1, top-5, and per
/// class the samples, the correct ones and (up to `Evaluator.maxConfusionClasses`) the predictions.
public struct EvaluationResult: Sendable {
    public let count: Int
    public let loss: Double
    /// Fractions in [0, 1].
    public let top1: Double
    /// nil with fewer than 5 classes.
    public let top5: Double?
    public let classes: Int
    public let perClassCount: [Int]
    public let perClassCorrect: [Int]
    /// `confusion[truth * classes + predicted]`: sample counts; nil above `maxConfusionClasses`.
    public let confusion: [Int]?

    /// `top-1 91.23%  top-5 99.80%` (top-5 only with at least 5 classes).
    public var accuracyText: String {
        String(cFormat: "top-1 %.2f%%", 100 * top1) + (top5.map { String(cFormat: "  top-5 %.2f%%", 100 * $0) } ?? "")
    }
}

/// Scores a model over the ranks: each rank takes a contiguous share of the samples (a rank may have
/// none), forwards it in pieces with the running statistics, and the sums are added exactly.
/// Deterministic mode cuts the share into the chunk plan's chunks, evaluates each in pieces of a
/// fixed size counted from its start (not `maxBatch`, which depends on the rank count), and adds
/// the chunk losses in the tree, so the result does not depend on the rank count. The counts are
/// integers: exact in any order.
public struct Evaluator {
    public static let maxConfusionClasses = 1000
    let model: any Network
    let communicator: Communicator
    let chunkPlan: ChunkPlan?
    let pieceRows: Int
    private let input: FlatBuffer

    /// Samples per evaluation forward at least (conv nets' activations are larger).
    public static func rows(for model: ModelKind) -> Int { model == .mlp ? 256 : 64 }

    init(model: any Network, communicator: Communicator, chunkPlan: ChunkPlan?, pieceRows: Int) {
        precondition(pieceRows <= model.maxBatch, "evaluation pieces of \(pieceRows) rows exceed the model's \(model.maxBatch)")
        self.model = model
        self.communicator = communicator
        self.chunkPlan = chunkPlan
        self.pieceRows = pieceRows
        input = FlatBuffer(count: pieceRows * model.inputFeatures)
    }

    /// Without a chunk plan, in pieces of the model's `maxBatch`.
    public init(model: any Network, communicator: Communicator) {
        self.init(model: model, communicator: communicator, chunkPlan: nil, pieceRows: model.maxBatch)
    }

    /// Collective: the scores of the model on `data` (labels must be below the model's classes).
    public func evaluate(_ data: Dataset) throws -> EvaluationResult {
        let k = model.classes
        precondition(data.dimension == model.inputFeatures, "\(data.dimension) features for a model of \(model.inputFeatures)")
        let share =
            chunkPlan?.share(of: data.count)
            ?? ShardSampler.share(of: data.count, rank: communicator.rank, ranks: communicator.size)
        let chunks = chunkPlan?.localChunks(of: data.count) ?? [0..<share.count]
        let withConfusion = k <= Self.maxConfusionClasses
        var leaves = BatchChunks.DoubleLeaves(ranges: chunks, width: 1)
        var correct = 0, top5 = 0
        var perClass = [Double](repeating: 0, count: 2 * k)  // counts, then correct
        var confusion = [Double](repeating: 0, count: withConfusion ? k * k : 0)
        var labels = [Int32](repeating: 0, count: pieceRows)
        for (i, chunk) in chunks.enumerated() {
            var start = chunk.lowerBound
            while start < chunk.upperBound {
                let end = Swift.min(start + pieceRows, chunk.upperBound)
                let x = Matrix(input.pointer, rows: end - start, cols: data.dimension)
                data.features.withUnsafeBufferPointer { f in
                    let first = f.baseAddress! + (share.lowerBound + start) * data.dimension
                    x.row(0).update(from: first, count: x.rows * x.cols)
                }
                for r in 0..<x.rows { labels[r] = data.labels[share.lowerBound + start + r] }
                let logits = model.predict(x)
                let sums = labels.withUnsafeBufferPointer {
                    SoftmaxCrossEntropy.forwardBackward(
                        logits: logits, labels: UnsafeBufferPointer(rebasing: $0[0..<x.rows]), normalizer: 1, dlogits: nil)
                }
                leaves.withLeaf(i) { $0[0] += sums.loss }
                correct += sums.correct
                for r in 0..<x.rows {
                    let label = Int(labels[r])
                    let (rank, predicted) = Self.rankAndArgmax(logits.row(r), label: label, classes: k)
                    if rank < 5 { top5 += 1 }
                    perClass[label] += 1
                    if rank == 0 { perClass[k + label] += 1 }
                    if withConfusion { confusion[label * k + predicted] += 1 }
                }
                start = end
            }
        }
        var totals = leaves.combined() + [Double(correct), Double(top5)] + perClass + confusion
        if chunkPlan != nil {
            try communicator.orderedSum(&totals)
        } else {
            try communicator.allreduce(&totals, .sum)
        }
        let n = Double(data.count)
        return EvaluationResult(
            count: data.count, loss: totals[0] / n, top1: totals[1] / n, top5: k >= 5 ? totals[2] / n : nil, classes: k,
            perClassCount: totals[3..<(3 + k)].map { Int($0) }, perClassCorrect: totals[(3 + k)..<(3 + 2 * k)].map { Int($0) },
            confusion: withConfusion ? totals[(3 + 2 * k)...].map { Int($0) } : nil)
    }

    /// The label's rank among the logits (0: the prediction) with ties going to the lower class, as
    /// the argmax of `SoftmaxCrossEntropy`, and the predicted class.
    static func rankAndArgmax(_ z: UnsafeMutablePointer<Float>, label: Int, classes k: Int) -> (Int, Int) {
        let target = z[label]
        var rank = 0, best = 0
        for j in 0..<k {
            if z[j] > target || (j < label && z[j] == target) { rank += 1 }
            if z[j] > z[best] { best = j }
        }
        return (rank, best)
    }
}
