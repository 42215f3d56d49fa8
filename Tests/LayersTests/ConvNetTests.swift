import XCTest
import Layers
import TensorCore

final class ConvNetTests: XCTestCase {
    static let tinyImage = ImageShape(height: 6, width: 6, channels: 2)

    static func sequential(
        head: HeadKind, mode: EpsilonMode, epsilon: Double = 1e-5, batch: Int, convolution: Conv2d.Algorithm? = nil
    ) -> ConvNet {
        ConvNet(
            .sequential([.conv(3), .pool, .conv(4)]), input: tinyImage, classes: 3, head: head,
            batchNorm: BatchNormSettings(epsilonMode: mode, epsilon: epsilon), maxBatch: batch, convolution: convolution)
    }

    static func resnet(
        shortcut: ShortcutKind, head: HeadKind = .linear, mode: EpsilonMode, epsilon: Double = 1e-5, batch: Int,
        convolution: Conv2d.Algorithm? = nil
    ) -> ConvNet {
        ConvNet(
            .resnet(widths: [3, 4], blocks: 1, shortcut: shortcut), input: ImageShape(height: 4, width: 4, channels: 2),
            classes: 3, head: head,
            batchNorm: BatchNormSettings(epsilonMode: mode, epsilon: epsilon), maxBatch: batch, convolution: convolution)
    }

    func testSequentialGradientsAgainstFiniteDifferences() {
        for head in HeadKind.allCases {
            for mode in [EpsilonMode.zero, .scaled, .standard] {
                let net = Self.sequential(head: head, mode: mode, epsilon: 0.05, batch: 5)
                assertGradientsMatchFiniteDifferences(NetworkHarness(net, batch: 5, seed: 71), "sequential \(head) \(mode)")
            }
        }
    }

    /// The same networks with every 3x3 stride-1 convolution done by Winograd (the channel counts
    /// are too small for the default rule to pick it): the residual add into the input gradient,
    /// the fused BN backward feeding `dy` chunk by chunk, and the weight gradient through it all.
    func testWinogradNetworksAgainstFiniteDifferences() {
        for head in HeadKind.allCases {
            let net = Self.sequential(head: head, mode: .scaled, epsilon: 0.05, batch: 5, convolution: .winograd)
            assertGradientsMatchFiniteDifferences(NetworkHarness(net, batch: 5, seed: 74), "winograd sequential \(head)")
        }
        for shortcut in ShortcutKind.allCases {
            let net = Self.resnet(shortcut: shortcut, mode: .scaled, epsilon: 0.05, batch: 4, convolution: .winograd)
            assertGradientsMatchFiniteDifferences(NetworkHarness(net, batch: 4, seed: 75), "winograd resnet \(shortcut)")
        }
    }

    /// 4x4 images and 4 samples: a BN beta moves every later ReLU of the network, so the fewer the
    /// units, the fewer the coordinates lost to kinks.
    func testResidualGradientsAgainstFiniteDifferences() {
        for shortcut in ShortcutKind.allCases {
            for mode in [EpsilonMode.zero, .scaled] {
                let net = Self.resnet(shortcut: shortcut, mode: mode, epsilon: 0.05, batch: 4)
                assertGradientsMatchFiniteDifferences(NetworkHarness(net, batch: 4, seed: 72), "resnet \(shortcut) \(mode)")
            }
        }
        assertGradientsMatchFiniteDifferences(
            NetworkHarness(Self.resnet(shortcut: .padding, head: .bn, mode: .zero, batch: 4), batch: 4, seed: 73),
            "resnet bn head")
    }

    /// Inference uses the running statistics: after many training forwards on one batch (momentum
    /// 0.1) they converge to the batch's, and predict matches the training forward up to the
    /// unbiased-variance factor N/(N-1) of every BN (N = 64 samples times the pixels of a 2x2 or 3x3
    /// map, compounding through the layers: about 0.5% measured; 1e-2 allowed).
    func testPredictApproachesTrainingForward() {
        for net in [
            Self.sequential(head: .linear, mode: .standard, batch: 64),
            Self.resnet(shortcut: .projection, mode: .standard, batch: 64),
        ] {
            let h = NetworkHarness(net, batch: 64, seed: 76)
            var train: [Float] = []
            for _ in 0..<200 { train = Array((try! net.forward(h.x.matrix, reducer: LocalStatistics())).readOnly) }
            let predicted = Array(net.predict(h.x.matrix).readOnly)
            XCTAssertLessThan(relativeDifference(predicted, train), 1e-2, "\(net.architecture)")
            XCTAssertGreaterThan(relativeDifference(predicted, train), 0, "running statistics are unbiased, batch ones are not")
        }
    }

    /// docs/theory.md, derived by hand: names follow nn.Sequential numbering (conv, BN, ReLU, pool, ...,
    /// Flatten, Linear) and the common CIFAR ResNet (`conv1`, `layer1.0.bn2`, `shortcut.0`, `fc`).
    func testNamesAndScaleTagging() {
        let seq = Self.sequential(head: .linear, mode: .zero, batch: 2)
        XCTAssertEqual(seq.groups.map(\.name), ["0.weight", "1.weight+bias", "4.weight", "5.weight+bias", "8.weight", "8.bias"])
        XCTAssertEqual(seq.groups.map(\.kind.rawValue), ["SI", "SI", "SI", "SV", "SV", "SV"])
        XCTAssertEqual(seq.parameters.layout.spec(named: "0.weight")?.shape, [3, 3, 3, 2], "OHWI")
        XCTAssertEqual(seq.parameters.layout.spec(named: "8.weight")?.shape, [3, 4 * 3 * 3], "Linear after a 3x3x4 flatten")
        let seqBN = Self.sequential(head: .bn, mode: .zero, batch: 2)
        XCTAssertEqual(seqBN.groups.map(\.kind.rawValue), ["SI", "SI", "SI", "SI", "SI", "SV"])
        XCTAssertEqual(seqBN.groups.last?.name, "9.weight+bias")

        let res = Self.resnet(shortcut: .projection, mode: .zero, batch: 2)
        let tagged = Dictionary(uniqueKeysWithValues: res.groups.map { ($0.name, $0.kind.rawValue) })
        XCTAssertEqual(
            tagged,
            [
                "conv1.weight": "SI", "bn1.weight+bias": "SV",
                "layer1.0.conv1.weight": "SI", "layer1.0.bn1.weight+bias": "SI",
                "layer1.0.conv2.weight": "SI", "layer1.0.bn2.weight+bias": "SV",
                "layer2.0.conv1.weight": "SI", "layer2.0.bn1.weight+bias": "SI",
                "layer2.0.conv2.weight": "SI", "layer2.0.bn2.weight+bias": "SV",
                "layer2.0.shortcut.0.weight": "SI", "layer2.0.shortcut.1.weight+bias": "SV",
                "fc.weight": "SV", "fc.bias": "SV",
            ])
        XCTAssertEqual(res.bufferLayout.spec(named: "layer2.0.shortcut.1.running_var")?.count, 4)
        for net in [seq, seqBN, res] {
            XCTAssertEqual(net.groups.map(\.count).reduce(0, +), net.parameters.layout.count, "every parameter in one group")
        }
        let padded = Self.resnet(shortcut: .padding, mode: .zero, batch: 2)
        XCTAssertNil(padded.parameters.layout.spec(named: "layer2.0.shortcut.0.weight"), "option A has no parameters")
    }

    /// The tagging against the network itself (eps zero): multiplying an SI group by 3 leaves the loss
    /// unchanged (rel. 1e-5), multiplying an SV group by 3 changes it (> 1e-4).
    func testTaggingMatchesActualScaleInvariance() {
        let nets: [(String, ConvNet)] = [
            ("sequential linear", Self.sequential(head: .linear, mode: .zero, batch: 8)),
            ("sequential bn", Self.sequential(head: .bn, mode: .zero, batch: 8)),
            ("resnet padding", Self.resnet(shortcut: .padding, mode: .zero, batch: 8)),
            ("resnet projection", Self.resnet(shortcut: .projection, head: .bn, mode: .zero, batch: 8)),
        ]
        for (what, net) in nets { assertTaggingMatchesScaleInvariance(NetworkHarness(net, batch: 8, seed: 74), what) }
    }

    /// docs/theory.md E1 for a ResNet block and the VGG preset (at a quarter of its width), eps zero and
    /// scaled: per SI group, loss(cW) = loss(W) and c grad(cW) = grad(W) for c in {0.1, 10}, the other
    /// gradients unchanged, and <grad, w> = 0 (orthogonality, docs/theory.md).
    func testE1ForResNetBlockAndVGGPreset() {
        for mode in [EpsilonMode.zero, .scaled] {
            let vgg = ConvNet(
                .vgg(widthMultiplier: 0.25), input: ImageShape(height: 32, width: 32, channels: 3), classes: 10, head: .bn,
                batchNorm: BatchNormSettings(epsilonMode: mode), maxBatch: 6)
            let block = Self.resnet(shortcut: .projection, mode: mode, batch: 6)
            for (what, net) in [("vgg", vgg), ("resnet block", block)] {
                assertE1(NetworkHarness(net, batch: 6, seed: 75), "\(what) \(mode)")
            }
        }
    }
}
