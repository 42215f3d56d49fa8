import Collectives
import Layers

/// Where one rank's step time went. `compute` is everything but communication (layers, loss,
/// data, update); BN statistics are reduced on the critical path; gradient communication is split
/// into the part that ran while backward was still computing (`gradientHidden`) and the wait after
/// backward (`gradientExposed`). The step time is compute + bnCommunication + gradientExposed.
/// `bnCommunication` also holds `--balance on`'s allgather of compute times (one small collective
/// per step, as latency-bound as the BN reductions).
public struct StepTiming: Sendable {
    public var step = 0.0
    public var bnCommunication = 0.0
    public var gradientHidden = 0.0
    public var gradientExposed = 0.0
    public var compute: Double { step - bnCommunication - gradientExposed }
    public var exposedFraction: Double { step > 0 ? (bnCommunication + gradientExposed) / step : 0 }

    public init() {}

    /// The four measured times in a fixed order, for collectives that sum or gather them.
    public var values: [Double] { [step, bnCommunication, gradientHidden, gradientExposed] }

    public init<C: Collection<Double>>(values: C) {
        precondition(values.count == 4, "a StepTiming has 4 values")
        var v = values.makeIterator()
        (step, bnCommunication, gradientHidden, gradientExposed) = (v.next()!, v.next()!, v.next()!, v.next()!)
    }

    public static func + (a: StepTiming, b: StepTiming) -> StepTiming {
        StepTiming(values: zip(a.values, b.values).map(+))
    }

    public func scaled(by factor: Double) -> StepTiming { StepTiming(values: values.map { $0 * factor }) }

    /// The metrics record's `time_ms`: means over `steps` steps of this sum.
    public func json(meanOver steps: Int) -> JSONValue {
        let k = 1e3 / Double(Swift.max(steps, 1))
        return .object([
            ("step", .number(step * k)), ("compute", .number(compute * k)),
            ("bn_comm", .number(bnCommunication * k)), ("grad_comm_hidden", .number(gradientHidden * k)),
            ("grad_comm_exposed", .number(gradientExposed * k)),
        ])
    }
}

/// BN statistics reductions, timed (they are on the critical path) and drawn on the timeline.
final class TimedStatistics: StatisticsReducer {
    var inner: StatisticsReducer
    let timeline: Timeline?
    /// Seconds spent reducing since the last `reset`.
    private(set) var seconds = 0.0

    init(_ inner: StatisticsReducer, timeline: Timeline?) {
        self.inner = inner
        self.timeline = timeline
    }

    func reset() { seconds = 0 }

    func sumAcrossRanks(_ values: UnsafeMutableBufferPointer<Double>) throws {
        guard !(inner is LocalStatistics) else { return }
        let start = Stopwatch.now()
        try inner.sumAcrossRanks(values)
        let end = Stopwatch.now()
        seconds += end - start
        timeline?.span("allreduce BN statistics", "communication", from: start, to: end, bytes: values.count * 8)
    }
}

/// What the network reports during a step: layer spans go to the timeline, final gradients start
/// their bucket's allreduce.
final class StepObserverAdapter: StepObserver {
    let timeline: Timeline?
    let reduction: OverlappedGradientReduction
    private var layerStart = 0.0

    init(timeline: Timeline?, reduction: OverlappedGradientReduction) {
        self.timeline = timeline
        self.reduction = reduction
    }

    func layerBegan() {
        if timeline?.recording == true { layerStart = Stopwatch.now() }
    }

    func layerEnded(_ name: String, backward: Bool) {
        guard let timeline, timeline.recording else { return }
        timeline.span(name, backward ? "backward" : "forward", from: layerStart, to: Stopwatch.now())
    }

    func gradientsFinal(from offset: Int) throws {
        try reduction.gradientsFinal(from: offset)
    }
}
