import XCTest
import Layers
import TensorCore

final class MLPTests: XCTestCase {
    func testWholeNetworkGradientAgainstFiniteDifferences() {
        for head in HeadKind.allCases {
            for mode in [EpsilonMode.zero, .scaled, .standard] {
                // eps 0.05: large enough that the eps terms matter in the comparison.
                let mlp = MLP(
                    widths: [6, 8, 7, 5], head: head, batchNorm: BatchNormSettings(epsilonMode: mode, epsilon: 0.05), maxBatch: 16
                )
                assertGradientsMatchFiniteDifferences(NetworkHarness(mlp, batch: 16, seed: 51), "mlp \(head) \(mode)")
            }
        }
    }

    /// docs/theory.md, derived by hand for widths [6, 8, 7, 5] (names follow nn.Sequential numbering).
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

    /// docs/theory.md E1 and orthogonality for an MLP with a BN head, eps modes zero and scaled (see `assertE1`).
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
        let mlp = MLP(widths: [5, 9, 4], head: .bn, batchNorm: BatchNormSettings(epsilonMode: .standard), maxBatch: 64)
        let h = NetworkHarness(mlp, batch: 64, seed: 55)
        var train: [Float] = []
        for _ in 0..<200 { train = Array((try! mlp.forward(h.x.matrix, reducer: LocalStatistics())).readOnly) }
        let pred = Array(mlp.predict(h.x.matrix).readOnly)
        XCTAssertLessThan(relativeDifference(pred, train), 2e-2)
        XCTAssertGreaterThan(relativeDifference(pred, train), 0)  // unbiased vs biased variance: not identical
    }
}
