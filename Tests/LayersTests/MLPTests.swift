import XCTest
import Layers
import TensorCore

/// A small MLP with a fixed batch, and helpers to evaluate the mean cross-entropy loss and its gradient
/// with the running buffers restored before every forward (so repeated evaluations see the same shift).
final class MLPHarness {
    let mlp: MLP
    let x: OwnedMatrix
    let labels: [Int32]
    let dlogits: OwnedMatrix
    let savedBuffers: [Float]
    init(widths: [Int], head: HeadKind, mode: EpsilonMode, epsilon: Double = 1e-5, batch: Int, seed: UInt64) {
        mlp = MLP(widths: widths, head: head, batchNorm: BatchNormSettings(epsilonMode: mode, epsilon: epsilon), maxBatch: batch)
        mlp.initialize(seed: seed)
        var rng = SplitMix64(seed: seed &+ 1)
        // Give gamma and beta non-trivial values so their gradients and scalings are generic.
        for g in mlp.groups where g.tensors.count == 2 {
            fillNormal(mlp.parameters.value(g.tensors[0]), &rng, scale: 0.2, shift: 1)
            fillNormal(mlp.parameters.value(g.tensors[1]), &rng, scale: 0.2)
        }
        x = OwnedMatrix(rows: batch, cols: widths[0], normal: &rng)
        labels = (0..<batch).map { _ in Int32(rng.next() % UInt64(widths.last!)) }
        dlogits = OwnedMatrix(rows: batch, cols: widths.last!)
        savedBuffers = mlp.buffers.array
    }
    func restoreBuffers() { for i in 0..<savedBuffers.count { mlp.buffers.pointer[i] = savedBuffers[i] } }

    /// Mean CE loss (Double); with `gradients`, zeroes and fills `mlp.parameters.gradients`.
    func loss(gradients: Bool) -> Double {
        restoreBuffers()
        let logits = try! mlp.forward(x.matrix, reducer: LocalStatistics())
        let sums = labels.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(
                logits: logits, labels: $0, normalizer: Double(x.rows),
                dlogits: gradients ? dlogits.matrix : nil)
        }
        if gradients {
            zero(mlp.parameters.gradients.all)
            try! mlp.backward(dlogits.matrix, reducer: LocalStatistics())
        }
        return sums.loss / Double(x.rows)
    }
}

final class MLPTests: XCTestCase {
    func testWholeNetworkGradientAgainstFiniteDifferences() {
        for head in HeadKind.allCases {
            for mode in [EpsilonMode.zero, .scaled, .standard] {
                // eps 0.05: large enough that the eps terms matter in the comparison.
                let h = MLPHarness(widths: [6, 8, 7, 5], head: head, mode: mode, epsilon: 0.05, batch: 16, seed: 51)
                _ = h.loss(gradients: true)
                let grads = h.mlp.parameters.gradients.array.map(Double.init)
                var rng = SplitMix64(seed: 52)
                for spec in h.mlp.parameters.layout.tensors {
                    // Tolerance: the loss is a mean over 16 samples of O(1) terms with fp32 rounding
                    // ~1e-7, so with h = 1e-3 FD noise is ~1e-4 of typical gradients; 1e-2 relative,
                    // floored at 1e-2 of the tensor's largest gradient (picked coordinates may be tiny).
                    // ReLU kinks: every activation of a channel moves when one weight moves (BN couples
                    // the batch), so some coordinate's +-h interval may straddle a kink, where central
                    // differences are meaningless. Such a coordinate is recognised because the FD at h
                    // and at h/2 disagree; it is skipped, and at least 4 smooth coordinates per tensor
                    // must be found and match.
                    let tensorScale = grads[spec.range].map(abs).max()!
                    XCTAssertGreaterThan(tensorScale, 1e-6, "\(head) \(mode) \(spec.name): gradient all zeros")
                    var accepted = 0, tries = 0
                    while accepted < 4 && tries < 40 {
                        tries += 1
                        let i = Int(rng.next() % UInt64(spec.count))
                        let ptr = h.mlp.parameters.values.pointer + spec.offset + i
                        let fd1 = centralDifference(at: ptr, h: 1e-3) { h.loss(gradients: false) }
                        let fd2 = centralDifference(at: ptr, h: 5e-4) { h.loss(gradients: false) }
                        if abs(fd1 - fd2) > 2e-3 * max(abs(fd1), tensorScale) { continue }
                        accepted += 1
                        let an = grads[spec.offset + i]
                        // 1% of the coordinate plus 0.1% of the tensor's largest gradient (fp32 FD noise)
                        XCTAssertLessThanOrEqual(
                            abs(an - fd1), 1e-2 * abs(fd1) + 1e-3 * tensorScale,
                            "\(head) \(mode) \(spec.name)[\(i)]: analytic \(an) FD \(fd1) (FD at h/2 \(fd2))")
                    }
                    XCTAssertEqual(accepted, 4, "\(head) \(mode) \(spec.name): too few kink-free coordinates (\(tries) tries)")
                }
            }
        }
    }

    /// paper.md §1 table, derived by hand for widths [6, 8, 7, 5] (names follow nn.Sequential numbering).
    func testScaleTagging() {
        let lin = MLP(widths: [6, 8, 7, 5], head: .linear, batchNorm: BatchNormSettings(), maxBatch: 4)
        XCTAssertEqual(lin.groups.map(\.name), ["0.weight", "1.weight+bias", "3.weight", "4.weight+bias", "6.weight", "6.bias"])
        XCTAssertEqual(
            lin.groups.map(\.kind),
            [.scaleInvariant, .scaleInvariant, .scaleInvariant, .scaleVariant, .scaleVariant, .scaleVariant])
        let bn = MLP(widths: [6, 8, 7, 5], head: .bn, batchNorm: BatchNormSettings(), maxBatch: 4)
        XCTAssertEqual(
            bn.groups.map(\.name), ["0.weight", "1.weight+bias", "3.weight", "4.weight+bias", "6.weight", "7.weight+bias"])
        XCTAssertEqual(
            bn.groups.map(\.kind),
            [.scaleInvariant, .scaleInvariant, .scaleInvariant, .scaleInvariant, .scaleInvariant, .scaleVariant])
        // No bias right before a BN; every parameter belongs to exactly one group.
        for m in [lin, bn] {
            XCTAssertEqual(m.groups.map(\.count).reduce(0, +), m.parameters.layout.count)
            // Biases exist only on a linear head (a bias right before a BN would have zero gradient).
            let biases = m.parameters.layout.tensors.map(\.name).filter { name in
                name.hasSuffix(".bias") && !m.groups.contains { $0.tensors.count == 2 && $0.tensors[1].name == name }
            }
            XCTAssertEqual(biases, m.head == .linear ? ["6.bias"] : [])
        }
    }

    /// The tagging is also checked against the network itself (eps mode zero): multiplying an SI group
    /// by 3 leaves the loss unchanged, multiplying an SV group by 3 changes it (see the helper).
    func testTaggingMatchesActualScaleInvariance() {
        for head in HeadKind.allCases {
            let mlp = MLP(widths: [6, 8, 7, 5], head: head, batchNorm: BatchNormSettings(epsilonMode: .zero), maxBatch: 24)
            assertTaggingMatchesScaleInvariance(NetworkHarness(mlp, batch: 24, seed: 53), "mlp \(head)")
        }
    }

    /// paper.md E1 and fact 1 for an MLP with a BN head, eps modes zero and scaled (see `assertE1`).
    func testE1ScaleInvarianceOfLossAndGradients() {
        for mode in [EpsilonMode.zero, .scaled] {
            let mlp = MLP(widths: [10, 16, 12, 6], head: .bn, batchNorm: BatchNormSettings(epsilonMode: mode), maxBatch: 32)
            assertE1(NetworkHarness(mlp, batch: 32, seed: 54), "mlp \(mode)")
        }
    }

    /// predict uses the running statistics: after many training forwards on the same batch with
    /// momentum 0.1, the running stats converge to the batch stats and predict matches the training
    /// forward (rel. 1e-3: running var is unbiased, N/(N-1) = 64/63 differs by 1.6% in variance,
    /// ~0.8% in scale; so we compare with a tolerance of 2e-2).
    func testPredictApproachesTrainingForward() {
        let h = MLPHarness(widths: [5, 9, 4], head: .bn, mode: .standard, batch: 64, seed: 55)
        var train: [Float] = []
        for _ in 0..<200 { train = (try! h.mlp.forward(h.x.matrix, reducer: LocalStatistics())).readOnly.map { $0 } }
        let pred = Array(h.mlp.predict(h.x.matrix).readOnly)
        XCTAssertLessThan(relativeDifference(pred, train), 2e-2)
        XCTAssertGreaterThan(relativeDifference(pred, train), 0)  // unbiased vs biased variance: not identical
    }
}
