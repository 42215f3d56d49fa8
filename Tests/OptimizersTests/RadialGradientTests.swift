import XCTest
import Layers
import Optimizers
import TensorCore

/// The scaled-epsilon weight gradient can be left as per-row coefficients and applied inside the
/// update pass (what the trainer does with synchronized BN); it must give the update of the
/// materialized gradient, with and without monitors.
final class RadialGradientTests: XCTestCase {
    func trainedParameters(radial: RadialDeferral, monitor: Bool, steps: Int = 5) -> [Float] {
        let widths = [10, 16, 12, 6], batch = 32
        let mlp = MLP(
            widths: widths, head: .bn, batchNorm: BatchNormSettings(epsilonMode: .scaled, epsilon: 0.05),
            maxBatch: batch)
        mlp.initialize(seed: 8)
        var rng = SplitMix64(seed: 9)
        let x = FlatBuffer(count: batch * widths[0]), dlogits = FlatBuffer(count: batch * widths.last!)
        for i in 0..<x.count { x.pointer[i] = Float(rng.normal()) }
        let labels = (0..<batch).map { Int32($0 % widths.last!) }
        let opt = ScaleInvariantSGD(
            groups: mlp.groups, parameterCount: mlp.parameters.layout.count,
            invariant: GroupRule(learningRate: 3), variant: GroupRule(learningRate: 0.1))
        for _ in 0..<steps {
            let logits = try! mlp.forward(Matrix(x.pointer, rows: batch, cols: widths[0]), reducer: LocalStatistics())
            let dl = Matrix(dlogits.pointer, rows: batch, cols: widths.last!)
            _ = labels.withUnsafeBufferPointer {
                SoftmaxCrossEntropy.forwardBackward(logits: logits, labels: $0, normalizer: Double(batch), dlogits: dl)
            }
            try! mlp.backward(dl, reducer: LocalStatistics(), radial: radial)
            XCTAssertEqual(mlp.parameters.pendingRadial.isEmpty, radial == .none, "three SI weights leave radial terms")
            opt.apply(to: mlp.parameters, monitor: monitor)
            XCTAssertTrue(mlp.parameters.pendingRadial.isEmpty, "the update consumes the radial terms")
        }
        return mlp.parameters.values.array
    }

    /// fp32: the fused update rounds `(1 - eta a) w - eta g` instead of `w - eta (g + a w)`; over 5
    /// steps that stays below 1e-5 relative to the largest parameter. A large eps (0.05) makes the
    /// radial term large enough that dropping it would fail this test by orders of magnitude.
    func testFusedRadialUpdateEqualsMaterializedGradient() {
        let reference = trainedParameters(radial: .none, monitor: false)
        let scale = reference.map { abs($0) }.max()!
        // one process: local and global sums are the same, so both deferrals must match
        for radial in [RadialDeferral.global, .local] {
            for monitor in [false, true] {
                let fused = trainedParameters(radial: radial, monitor: monitor)
                let worst = zip(fused, reference).map { abs($0 - $1) }.max()! / scale
                XCTAssertLessThan(worst, 1e-5, "\(radial), monitor \(monitor)")
            }
        }
    }

    /// The update keeps each radial row's new squared norm, the next training forward takes them
    /// (and gives the bits of a forward that computes them afresh), and nothing is left behind.
    func testUpdateKeepsRowNormsForTheNextForward() {
        let widths = [10, 16, 12, 6], batch = 32
        let mlp = MLP(
            widths: widths, head: .bn, batchNorm: BatchNormSettings(epsilonMode: .scaled, epsilon: 0.05), maxBatch: batch)
        mlp.initialize(seed: 8)
        var rng = SplitMix64(seed: 10)
        let x = FlatBuffer(count: batch * widths[0]), dlogits = FlatBuffer(count: batch * widths.last!)
        for i in 0..<x.count { x.pointer[i] = Float(rng.normal()) }
        for i in 0..<dlogits.count { dlogits.pointer[i] = Float(rng.normal()) / Float(batch) }
        let input = Matrix(x.pointer, rows: batch, cols: widths[0]), dl = Matrix(dlogits.pointer, rows: batch, cols: widths.last!)
        let opt = ScaleInvariantSGD(
            groups: mlp.groups, parameterCount: mlp.parameters.layout.count,
            invariant: GroupRule(learningRate: 3), variant: GroupRule(learningRate: 0.1))
        let p = mlp.parameters
        _ = try! mlp.forward(input, reducer: LocalStatistics())
        try! mlp.backward(dl, reducer: LocalStatistics(), radial: .global)
        let weights = p.pendingRadial.map(\.tensor)
        XCTAssertEqual(weights.count, 3, "three weights feed a BN")
        opt.apply(to: p, monitor: false)
        for w in weights {
            let rows = w.shape[0], rowLength = w.count / rows
            let kept = try! XCTUnwrap(p.rowSquaredNormsAfterUpdate[w.offset], w.name)
            XCTAssertEqual(kept.count, rows)
            let values = p.value(w)
            for r in 0..<rows {
                XCTAssertEqual(kept[r], p.rowSquaredNorm(w, row: r, rowLength: rowLength), "\(w.name) row \(r)")
                let exact = (0..<rowLength).reduce(0.0) {
                    $0 + Double(values[r * rowLength + $1]) * Double(values[r * rowLength + $1])
                }
                XCTAssertEqual(kept[r], exact, accuracy: 1e-6 * exact, "\(w.name) row \(r) against a Double loop")
            }
        }
        let buffers = mlp.buffers.array
        let withKept = Array(try! mlp.forward(input, reducer: LocalStatistics()).readOnly)
        XCTAssertTrue(p.rowSquaredNormsAfterUpdate.isEmpty, "the forward took every kept norm")
        mlp.buffers.all.update(fromContentsOf: buffers)
        let afresh = Array(try! mlp.forward(input, reducer: LocalStatistics()).readOnly)
        XCTAssertEqual(withKept, afresh)
    }
}
