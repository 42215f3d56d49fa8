import XCTest
import Layers
import Optimizers
import TensorCore

/// A two-group store from the smallest BN network, widths [3, 2] with a BN head: "0.weight" (6 values,
/// SI) and "1.weight+bias" (4 values, SV); values and gradients random. Kept alive with the store.
private func makeStore(seed: UInt64) -> (ParameterStore, [ParameterGroup]) {
    let mlp = MLP(widths: [3, 2], head: .bn, batchNorm: BatchNormSettings(), maxBatch: 1)
    precondition(
        mlp.groups.map(\.count) == [6, 4] && mlp.groups[0].kind == .scaleInvariant && mlp.groups[1].kind == .scaleVariant)
    let store = mlp.parameters
    var rng = SplitMix64(seed: seed)
    for i in 0..<store.layout.count {
        store.values.pointer[i] = Float(rng.normal())
        store.gradients.pointer[i] = Float(rng.normal())
    }
    return (store, mlp.groups)
}

final class UpdateRuleTests: XCTestCase {
    /// Plain step: w - eta * g with each group's own rate. One fp32 multiply and subtract per element,
    /// so the result equals the same fp32 expression exactly.
    func testPlainUpdateIsWMinusEtaG() {
        let (store, groups) = makeStore(seed: 1)
        let w0 = store.values.array, g = store.gradients.array
        let opt = ScaleInvariantSGD(
            groups: groups, parameterCount: store.layout.count,
            invariant: GroupRule(learningRate: 0.3), variant: GroupRule(learningRate: 0.05))
        XCTAssertTrue(opt.isPaperAlgorithm)
        opt.apply(to: store, monitor: false)
        let w1 = store.values.array
        for i in 0..<6 { XCTAssertEqual(w1[i], w0[i] - Float(0.3) * g[i]) }
        for i in 6..<10 { XCTAssertEqual(w1[i], w0[i] - Float(0.05) * g[i]) }
        XCTAssertEqual(store.gradients.array, w0, "the plain update leaves the previous values in the gradient buffer")
        XCTAssertEqual(opt.step, 1)
    }

    /// The NaN/Inf guard: a NaN or an infinity anywhere in the gradient, or in a radial coefficient,
    /// makes `apply` return nil and change nothing (values, velocity, step), plain or with momentum.
    func testNonFiniteStepChangesNothing() {
        for momentum in [0.0, 0.9] {
            for bad in [Float.nan, .infinity, -.infinity] {
                for position in [0, 5, 6, 9] {
                    let (store, groups) = makeStore(seed: 4)
                    let opt = ScaleInvariantSGD(
                        groups: groups, parameterCount: store.layout.count,
                        invariant: GroupRule(learningRate: 0.3, momentum: momentum), variant: GroupRule(learningRate: 0))
                    XCTAssertNotNil(opt.apply(to: store, monitor: false))
                    for i in 0..<store.layout.count { store.gradients.pointer[i] = Float(i) / 10 }
                    let w = store.values.array, v = opt.momentumBuffer?.array
                    store.gradients.pointer[position] = bad
                    for monitor in [false, true] {
                        XCTAssertNil(opt.apply(to: store, monitor: monitor), "\(bad) at \(position), momentum \(momentum)")
                        XCTAssertEqual(store.values.array, w)
                        XCTAssertEqual(opt.momentumBuffer?.array, v)
                        XCTAssertEqual(opt.step, 1)
                        store.gradients.pointer[position] = bad  // the plain path wrote over the gradient
                    }
                }
            }
            let (store, groups) = makeStore(seed: 5)
            let opt = ScaleInvariantSGD(
                groups: groups, parameterCount: store.layout.count,
                invariant: GroupRule(learningRate: 0.3, momentum: momentum), variant: GroupRule(learningRate: 0.1))
            let w = store.values.array
            store.pendingRadial = [RadialGradient(tensor: groups[0].tensors[0], coefficients: [0.5, .nan])]
            XCTAssertNil(opt.apply(to: store, monitor: false), "a NaN radial coefficient, momentum \(momentum)")
            XCTAssertEqual(store.values.array, w)
            XCTAssertTrue(store.pendingRadial.isEmpty)
        }
    }

    /// Momentum (heavy ball, v = mu v + g + lambda w, w -= eta v) over two steps, and weight decay
    /// without momentum, against the same formulas evaluated in Double (rel. 1e-6: a few fp32 ops).
    func testMomentumAndWeightDecayFormulas() {
        let (store, groups) = makeStore(seed: 2)
        let eta = 0.1, mu = 0.9, lambda = 0.01
        let opt = ScaleInvariantSGD(
            groups: groups, parameterCount: store.layout.count,
            invariant: GroupRule(learningRate: eta, momentum: mu, weightDecay: lambda),
            variant: GroupRule(learningRate: eta, weightDecay: lambda))
        XCTAssertFalse(opt.isPaperAlgorithm)
        var w = store.values.array.map(Double.init)
        let g = store.gradients.array.map(Double.init)
        var v = [Double](repeating: 0, count: 10)
        for _ in 0..<2 {
            opt.apply(to: store, monitor: false)
            for i in 0..<6 {
                v[i] = mu * v[i] + g[i] + lambda * w[i]
                w[i] -= eta * v[i]
            }
            for i in 6..<10 { w[i] -= eta * (g[i] + lambda * w[i]) }
            for i in 0..<10 { XCTAssertEqual(Double(store.values.pointer[i]), w[i], accuracy: 1e-6 * max(1, abs(w[i]))) }
        }
    }

    /// Exact known answers for the schedules.
    func testSchedules() {
        XCTAssertEqual(Schedule.constant.rate(base: 0.3, step: 0), 0.3)
        XCTAssertEqual(Schedule.constant.rate(base: 0.3, step: 99), 0.3)
        XCTAssertEqual(Schedule.inverseSquareRoot.rate(base: 0.3, step: 0), 0.3)
        XCTAssertEqual(Schedule.inverseSquareRoot.rate(base: 0.3, step: 3), 0.15)
        XCTAssertEqual(Schedule.inverseSquareRoot.rate(base: 1, step: 99), 0.1, accuracy: 1e-15)
        XCTAssertEqual(Schedule(name: "const"), .constant)
        XCTAssertEqual(Schedule(name: "constant"), .constant)
        XCTAssertEqual(Schedule(name: "invsqrt"), .inverseSquareRoot)
        XCTAssertNil(Schedule(name: "cosine"))
        for name in ["exp:0", "exp:-1", "exp:x", "exp:inf", "exp:"] { XCTAssertNil(Schedule(name: name), name) }
        XCTAssertEqual(Schedule(name: "exp:1.5"), .exponential(1.5))
        XCTAssertEqual(Schedule.exponential(1.5).rate(base: 0.4, step: 2), 0.9, accuracy: 1e-15)
        for name in ["const", "invsqrt", "exp:1.5"] { XCTAssertEqual(Schedule(name: name)?.description, name) }
    }

    /// The optimizer applies the schedule at its own step counter: at step 3 an invsqrt rule uses eta/2.
    func testOptimizerUsesScheduleAtCurrentStep() {
        let (store, groups) = makeStore(seed: 3)
        let opt = ScaleInvariantSGD(
            groups: groups, parameterCount: store.layout.count,
            invariant: GroupRule(learningRate: 0.8, schedule: .inverseSquareRoot),
            variant: GroupRule(learningRate: 0.2))
        for _ in 0..<3 { opt.apply(to: store, monitor: false) }
        XCTAssertEqual(opt.currentRate(.scaleInvariant), 0.4)
        XCTAssertEqual(opt.currentRate(.scaleVariant), 0.2)
        let w0 = store.values.array, g = store.gradients.array
        let m = try! XCTUnwrap(opt.apply(to: store, monitor: true))
        for i in 0..<6 { XCTAssertEqual(store.values.pointer[i], w0[i] - Float(0.4) * g[i]) }
        // Monitor fields against Double recomputation (Double accumulation of fp32 data: rel 1e-6).
        var w2 = 0.0, g2 = 0.0, wg = 0.0
        for i in 0..<6 {
            w2 += Double(w0[i]) * Double(w0[i]); g2 += Double(g[i]) * Double(g[i]); wg += Double(w0[i]) * Double(g[i])
        }
        XCTAssertEqual(m[0].name, "0.weight")
        XCTAssertEqual(m[0].norm2, w2, accuracy: 1e-6 * w2)
        XCTAssertEqual(m[0].gradNorm2, g2, accuracy: 1e-6 * g2)
        XCTAssertEqual(m[0].effectiveRate, 0.4 / w2, accuracy: 1e-6 * 0.4 / w2)
        XCTAssertEqual(m[0].cosine, wg / (w2 * g2).squareRoot(), accuracy: 1e-6)
        // Random w and g are not orthogonal, so the identity residual is -2 eta <w,g> / ||w'||^2.
        var after = 0.0
        for i in 0..<6 { after += Double(store.values.pointer[i]) * Double(store.values.pointer[i]) }
        XCTAssertEqual(m[0].identityResidual, -2 * 0.4 * wg / after, accuracy: 1e-5)
    }

    /// An MLP with a BN head and a scaled-epsilon radial term on its [12, 300] weight (units of one
    /// row; the first weight's units are 25 rows of 10), random values and gradients.
    static func radialStore(seed: UInt64) -> (MLP, ScaleInvariantSGD) {
        let mlp = MLP(widths: [10, 300, 12, 6], head: .bn, batchNorm: BatchNormSettings(epsilonMode: .scaled), maxBatch: 1)
        var rng = SplitMix64(seed: seed)
        for i in 0..<mlp.parameters.layout.count {
            mlp.parameters.values.pointer[i] = Float(rng.normal())
            mlp.parameters.gradients.pointer[i] = Float(rng.normal())
        }
        mlp.parameters.pendingRadial = [radialTerm(mlp)]
        let opt = ScaleInvariantSGD(
            groups: mlp.groups, parameterCount: mlp.parameters.layout.count,
            invariant: GroupRule(learningRate: 0.7), variant: GroupRule(learningRate: 0.2))
        return (mlp, opt)
    }

    static func radialTerm(_ mlp: MLP) -> RadialGradient {
        RadialGradient(tensor: mlp.parameters.layout.spec(named: "3.weight")!, coefficients: (0..<12).map { Float($0) / 100 })
    }

    /// A plain step sharded in two (cut at a unit boundary, a row of the radial weight) gives the
    /// bits and row norms of the whole step, and each shard reports only its own non-finite values.
    func testShardedPlainStepEqualsTheWholeStep() {
        let (whole, wholeOpt) = Self.radialStore(seed: 6)
        XCTAssertNotNil(wholeOpt.apply(to: whole.parameters, monitor: false))
        let (parts, partsOpt) = Self.radialStore(seed: 6)
        let p = parts.parameters, w = p.layout.spec(named: "3.weight")!
        let cut = w.offset + 5 * 300  // after row 5 of the [12, 300] weight
        let a = partsOpt.stepShard(p, shard: 0..<cut)
        p.pendingRadial = [Self.radialTerm(parts)]
        let b = partsOpt.stepShard(p, shard: cut..<p.layout.count)
        XCTAssertTrue(a.finite && b.finite)
        XCTAssertEqual(a.rowNorms.map(\.rows), [0..<5])
        XCTAssertEqual(b.rowNorms.map(\.rows), [5..<12])
        partsOpt.commitPlainStep(p, rowNorms: [w.offset: a.rowNorms[0].norms + b.rowNorms[0].norms])
        XCTAssertEqual(p.values.array, whole.parameters.values.array)
        XCTAssertEqual(p.rowSquaredNormsAfterUpdate[w.offset], whole.parameters.rowSquaredNormsAfterUpdate[w.offset])
        XCTAssertEqual(partsOpt.step, 1)

        let (bad, badOpt) = Self.radialStore(seed: 7)
        bad.parameters.gradients.pointer[cut + 3] = .nan
        XCTAssertTrue(badOpt.stepShard(bad.parameters, shard: 0..<cut).finite)
        XCTAssertFalse(badOpt.stepShard(bad.parameters, shard: cut..<bad.parameters.layout.count).finite)
    }

    /// Monitoring changes no bit of the update (values and kept row norms), and the monitors of a
    /// step sharded in two, from their unit sums, have the bits of the whole step's.
    func testMonitorsChangeNothingAndAddUpOverShards() throws {
        let (plain, plainOpt) = Self.radialStore(seed: 8)
        XCTAssertNotNil(plainOpt.apply(to: plain.parameters, monitor: false))
        let (watched, watchedOpt) = Self.radialStore(seed: 8)
        let whole = try XCTUnwrap(watchedOpt.apply(to: watched.parameters, monitor: true))
        XCTAssertEqual(watched.parameters.values.array, plain.parameters.values.array)
        XCTAssertEqual(watched.parameters.rowSquaredNormsAfterUpdate.count, 1)
        XCTAssertEqual(
            watched.parameters.rowSquaredNormsAfterUpdate.first?.value, plain.parameters.rowSquaredNormsAfterUpdate.first?.value)
        XCTAssertEqual(whole.count, watchedOpt.groups.count)

        let (parts, partsOpt) = Self.radialStore(seed: 8)
        let p = parts.parameters, w = p.layout.spec(named: "3.weight")!
        let cut = w.offset + 7 * 300
        var sums = [Double](repeating: 0, count: partsOpt.monitorSlots)
        let sharded = sums.withUnsafeMutableBufferPointer { buffer -> [GroupMonitor] in
            _ = partsOpt.stepShard(p, shard: 0..<cut, unitSums: buffer.baseAddress)
            p.pendingRadial = [Self.radialTerm(parts)]
            _ = partsOpt.stepShard(p, shard: cut..<p.layout.count, unitSums: buffer.baseAddress)
            return partsOpt.groupMonitors(unitSums: UnsafeBufferPointer(buffer))
        }
        for (m, reference) in zip(sharded, whole) {
            XCTAssertEqual(m.name, reference.name)
            for (a, b) in [(m.norm2, reference.norm2), (m.gradNorm2, reference.gradNorm2), (m.cosine, reference.cosine)] {
                XCTAssertEqual(a.bitPattern, b.bitPattern, "\(m.name)")
            }
            XCTAssertEqual(m.identityResidual.bitPattern, reference.identityResidual.bitPattern, "\(m.name)")
        }
    }
}
