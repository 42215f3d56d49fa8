import XCTest
import Layers
import TensorCore

/// A bias-free Linear feeding a BatchNorm, built by hand (the pair whose weight is scale-invariant).
final class LinearBN {
    let linear: Linear
    let bn: BatchNorm
    let p: ParameterStore
    let buffers: FlatBuffer
    let bufferLayout: ParameterLayout
    let w: TensorSpec
    init(inF: Int, channels: Int, mode: EpsilonMode, epsilon: Double, maxBatch: Int, seed: UInt64) {
        var layout = ParameterLayout(), bl = ParameterLayout()
        w = layout.append("0.weight", shape: [channels, inF])
        let g = layout.append("1.weight", shape: [channels]), b = layout.append("1.bias", shape: [channels])
        let rm = bl.append("1.running_mean", shape: [channels]), rv = bl.append("1.running_var", shape: [channels])
        linear = Linear(inFeatures: inF, outFeatures: channels, weight: w, bias: nil)
        bn = BatchNorm(
            channels: channels, gamma: g, beta: b, runningMean: rm, runningVar: rv, epsilonMode: mode,
            epsilon: epsilon, incomingWeight: w, maxBatch: maxBatch)
        p = ParameterStore(layout: layout)
        bufferLayout = bl
        buffers = FlatBuffer(count: bl.count)
        var rng = SplitMix64(seed: seed)
        fillNormal(p.values.all, &rng, scale: 0.5)
        fillNormal(p.value(g), &rng, scale: 0.3, shift: 1)
        // A running mean far from the batch mean, so the shifted-moment path is exercised.
        fillNormal(buffers.slice(rm.range), &rng, scale: 1)
        buffers.slice(rv.range).update(repeating: 1)
    }
}

final class BatchNormTests: XCTestCase {
    /// The ReLU fused into the BN output pass gives exactly max(BN(x), 0), in training and inference.
    func testFusedReLUEqualsReLUAfterBN() throws {
        let batch = 7, c = 5
        var rng = SplitMix64(seed: 41)
        let z = OwnedMatrix(rows: batch, cols: c, normal: &rng)
        let plain = OwnedMatrix(rows: batch, cols: c), fused = OwnedMatrix(rows: batch, cols: c)
        for mode in EpsilonMode.allCases {
            for training in [true, false] {
                let a = LinearBN(inF: 3, channels: c, mode: mode, epsilon: 0.1, maxBatch: batch, seed: 42)
                let b = LinearBN(inF: 3, channels: c, mode: mode, epsilon: 0.1, maxBatch: batch, seed: 42)
                if training {
                    try a.bn.forward(z.matrix, plain.matrix, a.p, buffers: a.buffers, reducer: LocalStatistics())
                    try b.bn.forward(z.matrix, fused.matrix, b.p, buffers: b.buffers, reducer: LocalStatistics(), relu: true)
                } else {
                    a.bn.inference(z.matrix, plain.matrix, a.p, buffers: a.buffers)
                    b.bn.inference(z.matrix, fused.matrix, b.p, buffers: b.buffers, relu: true)
                }
                let expected = plain.values.map { max($0, 0) }
                XCTAssertEqual(fused.values, expected, "\(mode) training \(training)")
                XCTAssertTrue(expected.contains(0) && expected.contains { $0 > 0 }, "both sides of the kink occur")
            }
        }
    }

    /// Each epsilon mode: gamma, beta, BN input and (through the Linear, and in `.scaled` mode also
    /// through eps_c) the incoming weight, against central differences of sum(y * r).
    func testBackwardAgainstFiniteDifferencesAllModes() throws {
        for mode in EpsilonMode.allCases {
            // A large epsilon (0.3) makes the eps terms a sizeable part of the gradient, so a wrong or
            // missing eps term is far outside the FD tolerance.
            let batch = 9, inF = 4, c = 3
            let net = LinearBN(inF: inF, channels: c, mode: mode, epsilon: 0.3, maxBatch: batch, seed: 31)
            var rng = SplitMix64(seed: 32)
            let a = OwnedMatrix(rows: batch, cols: inF, normal: &rng)
            let r = OwnedMatrix(rows: batch, cols: c, normal: &rng)
            let z = OwnedMatrix(rows: batch, cols: c), y = OwnedMatrix(rows: batch, cols: c)
            let dz = OwnedMatrix(rows: batch, cols: c), da = OwnedMatrix(rows: batch, cols: inF)
            let savedBuffers = net.buffers.array

            func restore() { for i in 0..<savedBuffers.count { net.buffers.pointer[i] = savedBuffers[i] } }
            // loss of the pair from the input a
            func lossPair() -> Double {
                restore()
                net.linear.forward(a.matrix, z.matrix, net.p)
                try! net.bn.forward(z.matrix, y.matrix, net.p, buffers: net.buffers, reducer: LocalStatistics())
                return weightedSum(y.matrix, r)
            }
            // loss of the BN alone from its input z
            func lossBN() -> Double {
                restore()
                try! net.bn.forward(z.matrix, y.matrix, net.p, buffers: net.buffers, reducer: LocalStatistics())
                return weightedSum(y.matrix, r)
            }
            _ = lossPair()
            zero(net.p.gradients.all)
            try net.bn.backward(r.matrix, dz.matrix, net.p, reducer: LocalStatistics())
            net.linear.backward(a.matrix, dz.matrix, da.matrix, net.p)
            let grads = net.p.gradients.array.map(Double.init)

            let h: Float = 1e-2
            for spec in net.p.layout.tensors {
                let fd = (0..<spec.count).map { centralDifference(at: net.p.values.pointer + spec.offset + $0, h: h, lossPair) }
                assertGradientsMatch(analytic: Array(grads[spec.range]), numeric: fd, "BN \(mode) \(spec.name)")
            }
            let fdA = (0..<a.rows * a.cols).map { centralDifference(at: a.storage.pointer + $0, h: h, lossPair) }
            assertGradientsMatch(analytic: da.values.map(Double.init), numeric: fdA, "BN \(mode) pair input")
            // BN input directly (z from the unperturbed forward).
            _ = lossPair()
            let fdZ = (0..<z.rows * z.cols).map { centralDifference(at: z.storage.pointer + $0, h: h, lossBN) }
            assertGradientsMatch(analytic: dz.values.map(Double.init), numeric: fdZ, "BN \(mode) input")
        }
    }

    /// The eps term of the incoming weight's gradient in `.scaled` mode on its own: it is what
    /// makes <dW_c, w_c> vanish. Without it the BN-normalised weight gradient is not orthogonal to w_c.
    func testScaledEpsilonWeightGradientIsOrthogonalToWeight() throws {
        let batch = 16, inF = 5, c = 4
        let net = LinearBN(inF: inF, channels: c, mode: .scaled, epsilon: 0.3, maxBatch: batch, seed: 33)
        var rng = SplitMix64(seed: 34)
        let a = OwnedMatrix(rows: batch, cols: inF, normal: &rng)
        let r = OwnedMatrix(rows: batch, cols: c, normal: &rng)
        let z = OwnedMatrix(rows: batch, cols: c), y = OwnedMatrix(rows: batch, cols: c), dz = OwnedMatrix(rows: batch, cols: c)
        net.linear.forward(a.matrix, z.matrix, net.p)
        try net.bn.forward(z.matrix, y.matrix, net.p, buffers: net.buffers, reducer: LocalStatistics())
        zero(net.p.gradients.all)
        try net.bn.backward(r.matrix, dz.matrix, net.p, reducer: LocalStatistics())
        net.linear.backward(a.matrix, dz.matrix, nil, net.p)
        let w = net.p.value(net.w), g = net.p.gradient(net.w)
        for j in 0..<c {
            let wr = UnsafeBufferPointer(rebasing: w[j * inF..<(j + 1) * inF])
            let gr = UnsafeBufferPointer(rebasing: g[j * inF..<(j + 1) * inF])
            let cosine = dot(wr, gr) / (squaredNorm(wr) * squaredNorm(gr)).squareRoot()
            // fp32 rounding of a 16-row batch: |cos| ~ 1e-7; 1e-4 leaves a wide margin, while
            // dropping the eps term gives |cos| of order eps_c / s_c^2 ~ 0.1 here.
            XCTAssertLessThan(abs(cosine), 1e-4, "channel \(j)")
        }
    }

    /// Training forward output: per channel mean beta and biased std |gamma| * sqrt(var/(var+eps)),
    /// and the running statistics follow the momentum rule. Checked in Double against the fp32 output.
    func testForwardStatisticsAndRunningUpdate() throws {
        let batch = 50, c = 3
        let net = LinearBN(inF: 2, channels: c, mode: .standard, epsilon: 1e-3, maxBatch: batch, seed: 35)
        var rng = SplitMix64(seed: 36)
        let z = OwnedMatrix(rows: batch, cols: c, normal: &rng, scale: 3, shift: 5)
        let y = OwnedMatrix(rows: batch, cols: c)
        let rm0 = Array(net.buffers.slice(net.bn.runningMean.range))
        try net.bn.forward(z.matrix, y.matrix, net.p, buffers: net.buffers, reducer: LocalStatistics())
        for j in 0..<c {
            let col = (0..<batch).map { Double(z[$0 * c + j]) }
            let mean = col.reduce(0, +) / Double(batch)
            let v = col.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(batch)
            let out = (0..<batch).map { Double(y[$0 * c + j]) }
            let om = out.reduce(0, +) / Double(batch)
            let ov = out.map { ($0 - om) * ($0 - om) }.reduce(0, +) / Double(batch)
            let gamma = Double(net.p.value(net.bn.gamma)[j]), beta = Double(net.p.value(net.bn.beta)[j])
            // fp32 normalisation of O(1) values: 1e-5 absolute / relative.
            XCTAssertEqual(om, beta, accuracy: 1e-5)
            XCTAssertEqual(ov.squareRoot(), abs(gamma) * (v / (v + 1e-3)).squareRoot(), accuracy: 1e-5 * abs(gamma))
            let rm = Double(net.buffers.slice(net.bn.runningMean.range)[j])
            let rv = Double(net.buffers.slice(net.bn.runningVar.range)[j])
            XCTAssertEqual(rm, 0.9 * Double(rm0[j]) + 0.1 * mean, accuracy: 1e-5 * max(1, abs(mean)))
            XCTAssertEqual(rv, 0.9 * 1 + 0.1 * v * Double(batch) / Double(batch - 1), accuracy: 1e-5 * max(1, v))
        }
        // Inference with running statistics = affine map with (rm, rv): check one element.
        let yi = OwnedMatrix(rows: batch, cols: c)
        net.bn.inference(z.matrix, yi.matrix, net.p, buffers: net.buffers)
        let rm = Double(net.buffers.slice(net.bn.runningMean.range)[1]),
            rv = Double(net.buffers.slice(net.bn.runningVar.range)[1])
        let want =
            Double(net.p.value(net.bn.gamma)[1]) * (Double(z[5 * c + 1]) - rm) / (rv + 1e-3).squareRoot()
            + Double(net.p.value(net.bn.beta)[1])
        XCTAssertEqual(Double(yi[5 * c + 1]), want, accuracy: 1e-5 * max(1, abs(want)))
    }

    /// Zero-eps mode with a constant channel: the channel has zero variance; the output is beta and
    /// nothing is NaN (the guard in `normalize`). Exact known answer.
    func testZeroModeConstantChannelOutputsBeta() throws {
        let batch = 5, c = 2
        let net = LinearBN(inF: 2, channels: c, mode: .zero, epsilon: 0, maxBatch: batch, seed: 37)
        let z = OwnedMatrix(rows: batch, cols: c), y = OwnedMatrix(rows: batch, cols: c), dz = OwnedMatrix(rows: batch, cols: c)
        for i in 0..<batch { z[i * c] = 2.5; z[i * c + 1] = Float(i) }
        try net.bn.forward(z.matrix, y.matrix, net.p, buffers: net.buffers, reducer: LocalStatistics())
        let beta0 = net.p.value(net.bn.beta)[0]
        for i in 0..<batch { XCTAssertEqual(y[i * c], beta0) }
        let dy = OwnedMatrix(rows: batch, cols: c)
        for i in 0..<batch * c { dy[i] = 1 }
        try net.bn.backward(dy.matrix, dz.matrix, net.p, reducer: LocalStatistics())
        XCTAssertFalse(dz.values.contains { !$0.isFinite })
        XCTAssertFalse(net.p.gradients.array.contains { !$0.isFinite })
    }
}
