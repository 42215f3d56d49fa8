import XCTest
import Layers
import Optimizers
import TensorCore

/// Trains a BN-headed MLP (eps scaled) for a few steps and returns the monitors of every step.
private func trainMonitors(
    etaW: Double, steps: Int, stochastic: Bool, momentum: Double = 0, weightDecay: Double = 0,
    seed: UInt64 = 61
) -> [[GroupMonitor]] {
    let widths = [10, 16, 12, 6], batch = 32, pool = 256
    let mlp = MLP(widths: widths, head: .bn, batchNorm: BatchNormSettings(epsilonMode: .scaled), maxBatch: batch)
    mlp.initialize(seed: seed)
    var rng = SplitMix64(seed: seed &+ 7)
    let data = (0..<pool * widths[0]).map { _ in Float(rng.normal()) }
    let labels = (0..<pool).map { _ in Int32(rng.next() % UInt64(widths.last!)) }
    let x = FlatBuffer(count: batch * widths[0]), dlogits = FlatBuffer(count: batch * widths.last!)
    var y = [Int32](repeating: 0, count: batch)
    let opt = ScaleInvariantSGD(
        groups: mlp.groups, parameterCount: mlp.parameters.layout.count,
        invariant: GroupRule(learningRate: etaW, momentum: momentum, weightDecay: weightDecay),
        variant: GroupRule(learningRate: 0.1))
    var all: [[GroupMonitor]] = []
    for step in 0..<steps {
        // GD: the same first `batch` samples every step; SGD: a fresh random mini-batch.
        for r in 0..<batch {
            let s = stochastic ? Int(rng.next() % UInt64(pool)) : r
            for j in 0..<widths[0] { x.pointer[r * widths[0] + j] = data[s * widths[0] + j] }
            y[r] = labels[s]
        }
        _ = step
        let logits = try! mlp.forward(Matrix(x.pointer, rows: batch, cols: widths[0]), reducer: LocalStatistics())
        let dl = Matrix(dlogits.pointer, rows: batch, cols: widths.last!)
        _ = y.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(logits: logits, labels: $0, normalizer: Double(batch), dlogits: dl)
        }
        zero(mlp.parameters.gradients.all)
        try! mlp.backward(dl, reducer: LocalStatistics())
        all.append(opt.apply(to: mlp.parameters, monitor: true)!)
    }
    return all
}

final class ScaleInvariantIdentityTests: XCTestCase {
    /// docs/theory.md E2 (orthogonality and the norm identity) for GD and SGD: per SI group and step, |identity residual| < 1e-4
    /// and |cos(w, g)| < 1e-3 (thresholds from docs/theory.md for fp32), and ||w_t|| non-decreasing (allowing
    /// fp32 rounding of 1e-6 relative when eta^2 ||g||^2 is below rounding).
    func testE2NormIdentityAndOrthogonality() {
        for stochastic in [false, true] {
            for etaW in [0.01, 1, 100] {
                let monitors = trainMonitors(etaW: etaW, steps: 20, stochastic: stochastic)
                let si = monitors[0].indices.filter { monitors[0][$0].kind == .scaleInvariant }
                XCTAssertEqual(si.count, 5, "head bn [10,16,12,6]: three weights and two hidden (gamma, beta) pairs are SI")
                for k in si {
                    for t in 0..<monitors.count {
                        let m = monitors[t][k]
                        XCTAssertLessThan(
                            abs(m.identityResidual), 1e-4,
                            "E2 \(stochastic ? "SGD" : "GD") eta \(etaW) \(m.name) step \(t) residual")
                        XCTAssertLessThan(abs(m.cosine), 1e-3, "E2 eta \(etaW) \(m.name) step \(t) cos")
                        XCTAssertGreaterThan(m.gradNorm2, 0)
                        if t > 0 {
                            XCTAssertGreaterThanOrEqual(
                                m.norm2, monitors[t - 1][k].norm2 * (1 - 1e-6),
                                "E2 eta \(etaW) \(m.name) norm decreased at step \(t)")
                        }
                    }
                }
            }
        }
    }

    /// docs/theory.md E6: after step 1 the effective rate equals eta / (||w0||^2 + eta^2 ||g0||^2) (rel. 1e-5),
    /// and it never increases (constant schedule).
    func testE6EffectiveRate() {
        for etaW in [0.01, 1, 100] {
            let monitors = trainMonitors(etaW: etaW, steps: 10, stochastic: false)
            for k in monitors[0].indices where monitors[0][k].kind == .scaleInvariant {
                let m0 = monitors[0][k], m1 = monitors[1][k]
                let predicted = etaW / (m0.norm2 + etaW * etaW * m0.gradNorm2)
                XCTAssertEqual(m1.effectiveRate, predicted, accuracy: 1e-5 * predicted, "E6 eta \(etaW) \(m0.name)")
                for t in 1..<monitors.count {
                    XCTAssertLessThanOrEqual(monitors[t][k].effectiveRate, monitors[t - 1][k].effectiveRate * (1 + 1e-6))
                }
            }
        }
        // A huge eta_w inflates ||w|| in the first step: the effective rate drops by orders of magnitude.
        let big = trainMonitors(etaW: 100, steps: 2, stochastic: false)
        let k = big[0].firstIndex { $0.kind == .scaleInvariant }!
        XCTAssertLessThan(big[1][k].effectiveRate, 1e-2 * big[0][k].effectiveRate)
    }

    /// docs/theory.md E12: the monitor can fail. With momentum 0.9 the identity residual of some SI group
    /// exceeds 1e-3 clearly (it is O(1) once the velocity builds up).
    func testE12MomentumViolatesIdentity() {
        let monitors = trainMonitors(etaW: 1, steps: 20, stochastic: false, momentum: 0.9)
        let worst = monitors.flatMap { $0.filter { $0.kind == .scaleInvariant }.map { abs($0.identityResidual) } }.max()!
        XCTAssertGreaterThan(worst, 1e-2, "momentum 0.9: worst SI residual \(worst)")
    }

    /// docs/theory.md E12 with weight decay lambda at eta = 1. With <w, g> = 0 the residual is exactly
    /// ((1 - eta lambda)^2 - 1) ||w_t||^2 / ||w_{t+1}||^2, i.e. about -2 eta lambda = -1e-3 for lambda = 5e-4:
    /// the monitor measures that value (checked to 1% against the formula using the logged norms), and
    /// since ||w_{t+1}|| >= ||w_t|| (roughly) its magnitude is at most ~1e-3: that setting is a
    /// borderline, not a clear, violation. lambda = 5e-3 gives a clear one (~1e-2 > 1e-3).
    func testE12WeightDecayViolatesIdentity() {
        for lambda in [5e-4, 5e-3] {
            let eta = 1.0
            let monitors = trainMonitors(etaW: eta, steps: 20, stochastic: false, weightDecay: lambda)
            var worst = 0.0
            for k in monitors[0].indices where monitors[0][k].kind == .scaleInvariant {
                for t in 0..<(monitors.count - 1) {
                    let m = monitors[t][k], next = monitors[t + 1][k]
                    let shrink = (1 - eta * lambda) * (1 - eta * lambda) - 1
                    let wg: Double = m.cosine * (m.norm2 * m.gradNorm2).squareRoot()
                    let numerator: Double = shrink * m.norm2 - 2 * eta * (1 - eta * lambda) * wg
                    let predicted: Double = numerator / next.norm2
                    XCTAssertEqual(
                        m.identityResidual, predicted, accuracy: 1e-2 * abs(predicted), "lambda \(lambda) \(m.name) step \(t)")
                    worst = max(worst, abs(m.identityResidual))
                }
            }
            if lambda == 5e-3 {
                XCTAssertGreaterThan(worst, 5e-3, "weight decay 5e-3 at eta 1: worst SI residual \(worst)")
            } else {
                XCTAssertGreaterThan(worst, 5e-4, "weight decay 5e-4 at eta 1: worst SI residual \(worst)")
                print("E12 weight decay 5e-4, eta 1: worst |residual| over SI groups and 20 steps = \(worst)")
            }
        }
    }
}
