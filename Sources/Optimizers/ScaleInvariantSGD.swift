import RealModule
import Layers
import TensorCore

/// Update rule for one kind of group (SI or SV).
public struct GroupRule: Sendable, Equatable {
    public var learningRate: Double
    public var schedule: Schedule
    /// Heavy-ball momentum; 0 in the paper's algorithm.
    public var momentum: Double
    /// L2 weight decay added to the gradient; 0 in the paper's algorithm.
    public var weightDecay: Double

    public init(learningRate: Double, schedule: Schedule = .constant, momentum: Double = 0, weightDecay: Double = 0) {
        self.learningRate = learningRate
        self.schedule = schedule
        self.momentum = momentum
        self.weightDecay = weightDecay
    }

    /// True when this is plain (S)GD, the update the paper analyses.
    public var isPlain: Bool { momentum == 0 && weightDecay == 0 }
}

/// What the monitors report for one group at one step, computed in Double on the (allreduced)
/// gradient used for the update. See docs/theory.md.
public struct GroupMonitor: Sendable {
    public let name: String
    public let kind: ScaleKind
    /// ||w_t||^2 before the update.
    public let norm2: Double
    /// ||g_t||^2.
    public let gradNorm2: Double
    /// eta_t / ||w_t||^2: the effective rate on the sphere.
    public let effectiveRate: Double
    /// cos(w_t, g_t); 0 for an SI group up to rounding (orthogonality, docs/theory.md).
    public let cosine: Double
    /// (||w_{t+1}||^2 - ||w_t||^2 - eta_t^2 ||g_t||^2) / ||w_{t+1}||^2; 0 for an SI group under plain
    /// GD/SGD up to rounding (the norm identity, docs/theory.md); clearly non-zero with momentum or weight decay.
    public let identityResidual: Double
    /// Angle between w_t and w_{t+1} in radians.
    public let angle: Double
}

/// The paper's update (Arora, Li & Lyu, ICLR 2019, §3): plain SGD with one learning rate for the
/// scale-invariant groups and another for the scale-variant ones, each with its own schedule.
/// ```
/// w_i <- w_i - eta_w(t) * grad_{w_i} F     for every SI group
/// g   <- g   - eta_g(t) * grad_g F         for the SV parameters
/// ```
/// Momentum and weight decay exist per kind for users who want them; with either on, this is no
/// longer the paper's algorithm (`isPaperAlgorithm` is false and the trainer says so).
public final class ScaleInvariantSGD {
    public let groups: [ParameterGroup]
    public let invariantRule: GroupRule
    public let variantRule: GroupRule
    private var velocity: FlatBuffer?
    private let tensorOffsets: Set<Int>  // of every tensor in `groups`
    public private(set) var step = 0
    /// The group whose update (or, with momentum or weight decay, gradient) this rank found not
    /// finite in the last step; nil when it found none (the guard then skipped the step elsewhere).
    public private(set) var lastNonFiniteGroup: Int?

    public init(groups: [ParameterGroup], parameterCount: Int, invariant: GroupRule, variant: GroupRule) {
        self.groups = groups
        invariantRule = invariant
        variantRule = variant
        tensorOffsets = Set(groups.flatMap { $0.tensors.map(\.offset) })
        precondition(
            groups.map(\.count).reduce(0, +) == parameterCount && tensorOffsets.count == groups.flatMap(\.tensors).count,
            "the groups must hold every parameter once: the plain update rewrites the whole buffer")
        if invariant.momentum != 0 || variant.momentum != 0 { velocity = FlatBuffer(count: parameterCount) }
    }

    public var isPaperAlgorithm: Bool { invariantRule.isPlain && variantRule.isPlain }

    /// The heavy-ball velocity (same layout as the parameters), nil without momentum: part of a checkpoint.
    public var momentumBuffer: FlatBuffer? { velocity }

    /// Continues from a checkpoint: the step counter (schedules depend on it) and the velocity.
    public func restore(step: Int, momentum: [Float]?) {
        precondition(step >= 0, "a negative step")
        self.step = step
        if let velocity, let momentum {
            precondition(
                momentum.count == velocity.count, "momentum of \(momentum.count) values for \(velocity.count) parameters")
            velocity.all.update(fromContentsOf: momentum)
        }
    }

    public func rule(for kind: ScaleKind) -> GroupRule {
        kind == .scaleInvariant ? invariantRule : variantRule
    }

    /// The learning rate a group of `kind` uses at the current step.
    public func currentRate(_ kind: ScaleKind) -> Double {
        let r = rule(for: kind)
        return r.schedule.rate(base: r.learningRate, step: step)
    }

    /// Applies one update to `store.values` from `store.gradients` (already averaged over the global
    /// batch) and advances the step counter. With `monitor`, returns per-group monitors, summed
    /// unit by unit (`TensorSpec.unitLength`) beside the update: the new values do not depend on
    /// `monitor`.
    ///
    /// The NaN/Inf guard is part of the update: when the step meets a value that is not finite (in
    /// the gradient or a radial coefficient; in the paper's algorithm, any new value), `apply`
    /// returns nil and leaves the values, the velocity and the step counter as they were.
    ///
    /// The paper's algorithm (plain steps) writes the new values into the gradient buffer, checking
    /// them on the way, and then exchanges the two buffers' storage (`ParameterStore.exchangeValuesAndGradients`):
    /// one pass that reads w and g and writes one buffer, where an in-place update after a
    /// separate check would read g twice. **After a committed step the gradient buffer holds the
    /// previous values; after a skipped one, values partly written.**
    /// With momentum or weight decay the update is in place, after a check of the gradient.
    ///
    /// Pending radial gradient terms (`store.pendingRadial`) are part of the gradient: the plain
    /// update applies them in its own pass; momentum and weight decay first add them in.
    @discardableResult
    public func apply(to store: ParameterStore, monitor: Bool) -> [GroupMonitor]? {
        store.rowSquaredNormsAfterUpdate.removeAll()
        lastNonFiniteGroup = nil
        if !isPaperAlgorithm { store.materializePendingRadial() }
        let radial = takeRadialTerms(store)
        if !isPaperAlgorithm,
            let bad = groups.firstIndex(where: { !allFinite(UnsafeBufferPointer(store.gradients.slice($0.range))) })
        {
            lastNonFiniteGroup = bad
            return nil
        }
        let sums = UnsafeMutableBufferPointer<Double>.allocate(capacity: monitor ? monitorSlots : 0)
        defer { sums.deallocate() }
        let unitSums = monitor ? sums.baseAddress : nil
        var check = FiniteCheck()
        var keptNorms: [Int: [Double]] = [:]
        for group in groups {
            let rule = rule(for: group.kind)
            let eta = rule.schedule.rate(base: rule.learningRate, step: step)
            if isPaperAlgorithm {
                let wasFinite = check.allFinite
                for part in stepIntoGradient(
                    group, group.range, in: store, eta: Float(eta), radial: radial, unitSums, nil, &check)
                {
                    keptNorms[part.tensor.offset] = part.norms
                }
                if wasFinite && !check.allFinite { lastNonFiniteGroup = groups.firstIndex { $0.range == group.range } }
            } else {
                let w = store.values.slice(group.range), g = store.gradients.slice(group.range)
                if let unitSums { accumulateUnits(group, store, before: true, into: unitSums) }
                updateInPlace(w, g, rule: rule, eta: Float(eta), range: group.range)
                if let unitSums { accumulateUnits(group, store, before: false, into: unitSums) }
            }
        }
        let monitors = monitor ? groupMonitors(unitSums: UnsafeBufferPointer(sums)) : []
        if isPaperAlgorithm {
            guard check.allFinite else { return nil }
            commitPlainStep(store, rowNorms: keptNorms)
            return monitors
        }
        step += 1
        return monitors
    }

    /// This rank's part of a plain step sharded over ranks (the caller reduce-scatters the
    /// gradient, calls this, gathers every rank's new values into the gradient buffer, and commits
    /// with `commitPlainStep`): the new values of the elements `shard`, from the summed gradient
    /// there, written over it and checked. `shard` must hold whole units (`TensorSpec.unitLength`)
    /// of every tensor (a precondition). Returns whether the new values are finite, and for each radial tensor,
    /// its rows in `shard` and their new squared norms. Consumes the pending radial terms.
    ///
    /// With `unitSums` (`monitorSlots` Doubles), writes the monitor sums of the units in `shard`
    /// there; `groupMonitors` turns every rank's into the monitors.
    ///
    /// `completing`, when given, is called with consecutive pieces of `shard` (each within one
    /// tensor), each just before the step reads the gradient there: the caller finishes the
    /// gradient piece by piece (the sum over ranks), and the step reads it back from cache
    /// instead of memory.
    public func stepShard(
        _ store: ParameterStore, shard: Range<Int>, unitSums: UnsafeMutablePointer<Double>? = nil,
        completing: ((Range<Int>) -> Void)? = nil
    ) -> (finite: Bool, rowNorms: [(tensor: TensorSpec, rows: Range<Int>, norms: [Double])]) {
        precondition(isPaperAlgorithm, "only the plain step is sharded")
        store.rowSquaredNormsAfterUpdate.removeAll()
        lastNonFiniteGroup = nil
        let radial = takeRadialTerms(store)
        var check = FiniteCheck()
        var rowNorms: [(tensor: TensorSpec, rows: Range<Int>, norms: [Double])] = []
        for (index, group) in groups.enumerated() {
            let wasFinite = check.allFinite
            rowNorms += stepIntoGradient(
                group, shard, in: store, eta: Float(currentRate(group.kind)), radial: radial, unitSums, completing, &check)
            if wasFinite && !check.allFinite { lastNonFiniteGroup = index }
        }
        return (check.allFinite, rowNorms)
    }

    // MARK: monitors

    /// Doubles of the monitor sums: four per unit of every tensor (`TensorSpec.unitLength`), in
    /// layout order: ||w_t||^2, ||g_t||^2, <w_t, g_t> and ||w_{t+1}||^2 over the unit.
    public var monitorSlots: Int { 4 * unitCount }
    private var unitCount: Int { groups.flatMap(\.tensors).map(\.unitCount).reduce(0, +) }
    /// The first unit of each tensor, by tensor offset.
    private lazy var firstUnit: [Int: Int] = {
        var first: [Int: Int] = [:]
        var next = 0
        for tensor in groups.flatMap(\.tensors).sorted(by: { $0.offset < $1.offset }) {
            first[tensor.offset] = next
            next += tensor.unitCount
        }
        return first
    }()

    /// The monitors of every group at the current step, from the sums of every unit: each group's
    /// sums are added unit by unit in layout order, so they have the same bits whichever rank
    /// summed which unit.
    public func groupMonitors(unitSums: UnsafeBufferPointer<Double>) -> [GroupMonitor] {
        precondition(unitSums.count == monitorSlots, "\(unitSums.count) monitor sums for \(monitorSlots) slots")
        return groups.map { group in
            var w2 = 0.0, g2 = 0.0, wg = 0.0, after = 0.0
            for tensor in group.tensors {
                let first = firstUnit[tensor.offset]!
                for u in first..<first + tensor.unitCount {
                    w2 += unitSums[4 * u]
                    g2 += unitSums[4 * u + 1]
                    wg += unitSums[4 * u + 2]
                    after += unitSums[4 * u + 3]
                }
            }
            let rule = rule(for: group.kind)
            let eta = rule.schedule.rate(base: rule.learningRate, step: step)
            let residual = (after - w2 - eta * eta * g2) / after
            let cosine = wg / Swift.max((w2 * g2).squareRoot(), .leastNormalMagnitude)
            // <w_t, w_{t+1}> = ||w_t||^2 - eta <w_t, g_t> for the plain step
            let cosAngle = Swift.min(Swift.max((w2 - eta * wg) / (w2 * after).squareRoot(), -1), 1)
            return GroupMonitor(
                name: group.name, kind: group.kind, norm2: w2, gradNorm2: g2, effectiveRate: eta / w2, cosine: cosine,
                identityResidual: residual, angle: rule.isPlain ? Double.acos(cosAngle) : .nan)
        }
    }

    /// Momentum and weight decay: the monitor sums of `group`'s units, read from the buffers
    /// before the update (`before`: ||w||^2, ||g||^2, <w, g>) or after it (||w_{t+1}||^2).
    private func accumulateUnits(
        _ group: ParameterGroup, _ store: ParameterStore, before: Bool, into sums: UnsafeMutablePointer<Double>
    ) {
        let wp = store.values.pointer, gp = store.gradients.pointer
        for tensor in group.tensors {
            var u = firstUnit[tensor.offset]!
            var start = tensor.offset
            while start < tensor.range.upperBound {
                let end = Swift.min(start + tensor.unitLength, tensor.range.upperBound)
                var s = (0.0, 0.0, 0.0)
                for i in start..<end {
                    let w = Double(wp[i]), g = Double(gp[i])
                    s = before ? (s.0 + w * w, s.1 + g * g, s.2 + w * g) : (s.0 + w * w, 0, 0)
                }
                if before {
                    (sums[4 * u], sums[4 * u + 1], sums[4 * u + 2]) = s
                } else {
                    sums[4 * u + 3] = s.0
                }
                u += 1
                start = end
            }
        }
    }

    /// The pending radial terms by tensor offset, taken from `store`.
    private func takeRadialTerms(_ store: ParameterStore) -> [Int: RadialGradient] {
        var radial: [Int: RadialGradient] = [:]
        for term in store.pendingRadial { radial[term.tensor.offset] = term }
        precondition(radial.keys.allSatisfy(tensorOffsets.contains), "a pending radial gradient belongs to no parameter group")
        store.pendingRadial.removeAll()
        return radial
    }

    /// Commits a plain step whose new values are all in the gradient buffer: exchanges the two
    /// buffers, keeps the row norms for the next forward, and advances the step counter.
    public func commitPlainStep(_ store: ParameterStore, rowNorms: [Int: [Double]]) {
        store.exchangeValuesAndGradients()
        store.rowSquaredNormsAfterUpdate = rowNorms
        step += 1
    }

    /// The plain step of the elements `range` of a group's tensors, `w - eta * (g + a_r * w)` (a_r:
    /// the radial coefficient of row r, 0 without), written over `g` and checked by `check`. For
    /// each tensor with a radial term (a weight feeding a `.scaled`-epsilon BN; `range` then holds
    /// whole rows of it) returns the rows in `range` and their new squared norms, taken while each
    /// row is in cache, for the next forward's BN epsilons (`ParameterStore.rowSquaredNormsAfterUpdate`).
    private func stepIntoGradient(
        _ group: ParameterGroup, _ range: Range<Int>, in store: ParameterStore, eta: Float, radial: [Int: RadialGradient],
        _ unitSums: UnsafeMutablePointer<Double>?, _ completing: ((Range<Int>) -> Void)?, _ check: inout FiniteCheck
    ) -> [(tensor: TensorSpec, rows: Range<Int>, norms: [Double])] {
        var rowNorms: [(tensor: TensorSpec, rows: Range<Int>, norms: [Double])] = []
        for tensor in group.tensors {
            let lower = Swift.max(tensor.offset, range.lowerBound), upper = Swift.min(tensor.range.upperBound, range.upperBound)
            guard lower < upper else { continue }
            let wp = store.values.pointer, gp = store.gradients.pointer
            // a shard holds whole units, so that monitored and unmonitored steps cut alike
            let unit = tensor.unitLength
            precondition(
                (lower - tensor.offset) % unit == 0 && (upper == tensor.range.upperBound || (upper - tensor.offset) % unit == 0),
                "\(tensor.name): the elements \(lower)..<\(upper) cut its units of \(unit)")
            if let unitSums {
                if let part = stepMonitored(
                    tensor, lower..<upper, store, eta: eta, radial: radial[tensor.offset], unitSums, completing, &check)
                {
                    rowNorms.append(part)
                }
                continue
            }
            guard let term = radial[tensor.offset] else {
                var carries = check.carries
                var start = lower
                while start < upper {
                    let end = completing == nil ? upper : Swift.min(upper, start + Self.piece)
                    completing?(start..<end)
                    for i in start..<end {
                        let v = wp[i] - eta * gp[i]
                        gp[i] = v
                        carries |= FiniteCheck.carry(v)
                    }
                    start = end
                }
                check.carries = carries
                continue
            }
            precondition(tensor.shape.first == term.coefficients.count, "\(tensor.name): one radial coefficient per row")
            let rowLength = tensor.count / term.coefficients.count
            let rows = tensor.rows(in: lower..<upper)!
            var norms = [Double](repeating: 0, count: rows.count)
            for r in rows {
                let keep = 1 - eta * term.coefficients[r]
                let row = wp + tensor.offset + r &* rowLength, out = gp + tensor.offset + r &* rowLength
                completing?(tensor.offset + r &* rowLength..<tensor.offset + (r + 1) &* rowLength)
                var carries = check.carries
                for i in 0..<rowLength {
                    let v = keep * row[i] - eta * out[i]
                    out[i] = v
                    carries |= FiniteCheck.carry(v)
                }
                check.carries = carries
                norms[r - rows.lowerBound] = ParameterStore.squaredNorm(ofRow: UnsafeBufferPointer(start: out, count: rowLength))
            }
            rowNorms.append((tensor, rows, norms))
        }
        return rowNorms
    }

    /// `stepIntoGradient` for the elements `span` of one tensor (whole units), unit by unit, also
    /// writing each unit's monitor sums (the gradient with its radial term, in Double). The new
    /// values are computed by the same expressions as the unmonitored loops, so they have the
    /// same bits.
    private func stepMonitored(
        _ tensor: TensorSpec, _ span: Range<Int>, _ store: ParameterStore, eta: Float, radial term: RadialGradient?,
        _ unitSums: UnsafeMutablePointer<Double>, _ completing: ((Range<Int>) -> Void)?, _ check: inout FiniteCheck
    ) -> (tensor: TensorSpec, rows: Range<Int>, norms: [Double])? {
        let wp = store.values.pointer, gp = store.gradients.pointer
        let unit = tensor.unitLength, rowLength = tensor.rowLength
        if let term {
            precondition(tensor.shape.first == term.coefficients.count, "\(tensor.name): one radial coefficient per row")
        }
        let rows = term.map { _ in tensor.rows(in: span)! }
        var norms = [Double](repeating: 0, count: rows?.count ?? 0)
        var u = firstUnit[tensor.offset]! + (span.lowerBound - tensor.offset) / unit
        var start = span.lowerBound
        var carries = check.carries
        while start < span.upperBound {
            let end = Swift.min(start + unit, span.upperBound)
            if let completing {
                var piece = start
                while piece < end {
                    completing(piece..<Swift.min(end, piece + Self.piece))
                    piece += Self.piece
                }
            }
            var w2 = 0.0, g2 = 0.0, wg = 0.0, after = 0.0
            if let term, let rows {
                var r = (start - tensor.offset) / rowLength
                var rowStart = start
                while rowStart < end {
                    let a = term.coefficients[r]
                    let keep = 1 - eta * a
                    for i in rowStart..<rowStart + rowLength {
                        let w = wp[i], g = gp[i]
                        let v = keep * w - eta * g
                        gp[i] = v
                        carries |= FiniteCheck.carry(v)
                        let ge = Double(g) + Double(a) * Double(w)
                        w2 += Double(w) * Double(w)
                        g2 += ge * ge
                        wg += Double(w) * ge
                    }
                    let norm = ParameterStore.squaredNorm(ofRow: UnsafeBufferPointer(start: gp + rowStart, count: rowLength))
                    norms[r - rows.lowerBound] = norm
                    after += norm
                    r += 1
                    rowStart += rowLength
                }
            } else {
                for i in start..<end {
                    let w = wp[i], g = gp[i]
                    let v = w - eta * g
                    gp[i] = v
                    carries |= FiniteCheck.carry(v)
                    w2 += Double(w) * Double(w)
                    g2 += Double(g) * Double(g)
                    wg += Double(w) * Double(g)
                    after += Double(v) * Double(v)
                }
            }
            (unitSums[4 * u], unitSums[4 * u + 1], unitSums[4 * u + 2], unitSums[4 * u + 3]) = (w2, g2, wg, after)
            u += 1
            start = end
        }
        check.carries = carries
        return rows.map { (tensor, $0, norms) }
    }

    /// Elements per `completing` piece outside radial rows: a piece of every rank's gradient, the
    /// values and the result stay in the first-level cache.
    static let piece = 2048

    /// Momentum and weight decay (not the paper's algorithm): in place.
    private func updateInPlace(
        _ w: UnsafeMutableBufferPointer<Float>, _ g: UnsafeMutableBufferPointer<Float>,
        rule: GroupRule, eta: Float, range: Range<Int>
    ) {
        let n = w.count
        let wp = w.baseAddress!, gp = g.baseAddress!
        if rule.isPlain {
            for i in 0..<n { wp[i] -= eta * gp[i] }
            return
        }
        let decay = Float(rule.weightDecay), mu = Float(rule.momentum)
        if let velocity, mu != 0 {
            let v = velocity.slice(range).baseAddress!
            for i in 0..<n {
                let d = gp[i] + decay * wp[i]
                v[i] = mu * v[i] + d
                wp[i] -= eta * v[i]
            }
        } else {
            for i in 0..<n { wp[i] -= eta * (gp[i] + decay * wp[i]) }
        }
    }

}
