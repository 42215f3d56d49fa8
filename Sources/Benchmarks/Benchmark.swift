import CKernels
import Training
#if canImport(Glibc)
    import Glibc
#endif
import Collectives
import Data
import Layers
import TensorCore

/// Training throughput of one configuration, next to the GEMM-only bound measured in the same
/// process: the time `cblas_sgemm` alone needs for the same matrix shapes (forward, weight
/// gradient, input gradient of every layer for this rank's share of the batch). The fraction
/// `gemm time / step time` says how much of the step is spent outside the GEMMs.
public struct BenchmarkResult: Sendable {
    public let ranks: Int
    public let scaling: ScalingMode
    public let globalBatch: Int
    /// The network, as `Network.architecture` describes it.
    public let model: String
    public let modelKind: String
    public let batchNormSync: String
    public let threads: Int
    /// Step times of the slowest rank, sorted.
    public let stepSeconds: [Double]
    public let gemmSecondsMedian: Double
    public let gemmGFlops: Double
    /// The model's flops of one training step per sample, forward and backward, counted as direct
    /// convolutions and plain matrix products (`Network.modelFlops`, whatever algorithm runs).
    public let flopsPerSample: Double
    /// Median floating-point peak of one core (independent multiply-adds in the widest vectors the
    /// kernels use, `ak_fma_peak_flops`), measured between the blocks.
    public let peakGFlops: Double
    /// Median time of the gradient allreduce alone (every bucket, blocking), and its bytes.
    public let allreduceSecondsMedian: Double
    public let gradientBytes: Int
    /// Each distinct bucket size: bytes, median seconds of its allreduce alone, along the path
    /// training takes (`MPI_Iallreduce` + wait with overlap, `MPI_Allreduce` without).
    public let bucketAllreduce: [(bytes: Int, seconds: Double)]
    /// With `compareLocalBN`: the median step of a `--bn local` twin run interleaved with this one.
    public let localStepSecondsMedian: Double?
    /// With `compareDeterministic`: the median step of a `--deterministic` twin run interleaved with this one.
    public let deterministicStepSecondsMedian: Double?
    /// With `compareBalance`: the median step of a twin with the other `--balance` setting, interleaved.
    public let balanceTwinStepSecondsMedian: Double?
    /// `--balance` of the timed run.
    public let balance: BalanceMode
    /// With `compareWeightGradients`: the median step of a twin with the other `--weight-gradients` setting, interleaved.
    public let weightGradientsTwinStepSecondsMedian: Double?
    /// `--weight-gradients` of the timed run.
    public let weightGradients: WeightGradientMode
    /// The one-rank baseline measured in the same run (rank 0 alone while the others wait,
    /// interleaved): the median step of one process on the whole global batch (strong scaling) or
    /// on one rank's batch (weak).
    public let baselineStepSecondsMedian: Double?
    /// Where the step time went: the mean per timed step over ranks.
    public let timing: StepTiming
    public let buckets: Int
    public let bucketBytes: Int
    public let overlap: Bool
    /// The largest peak resident memory of a rank's process (`getrusage`) after the warm-up steps, in
    /// MiB: what training took, before the benchmark's own GEMM buffers (twins and the one-rank
    /// baseline, when run, are included).
    public let peakResidentMiB: Double

    /// The instruction set of the C kernels in this process, and its vector width.
    public var kernels: String { "\(String(cString: ak_kernel_isa())) (\(ak_vector_bits())-bit)" }

    public var stepSecondsMedian: Double { quantile(0.5) }
    public func quantile(_ q: Double) -> Double {
        stepSeconds[Swift.min(Int(q * Double(stepSeconds.count)), stepSeconds.count - 1)]
    }

    /// Allreduce bus bandwidth, `2 (p - 1) / p * bytes / time` (NCCL's convention), in GB/s.
    public func busBandwidth(bytes: Int, seconds: Double) -> Double {
        ranks > 1 ? 2 * Double(ranks - 1) / Double(ranks) * Double(bytes) / seconds / 1e9 : 0
    }
    public var busBandwidth: Double { busBandwidth(bytes: gradientBytes, seconds: allreduceSecondsMedian) }

    public var samplesPerSecond: Double { Double(globalBatch) / stepSecondsMedian }
    public var gemmBoundSamplesPerSecond: Double { Double(globalBatch) / gemmSecondsMedian }
    public var fractionOfGemmBound: Double { gemmSecondsMedian / stepSecondsMedian }
    /// The model's flops per second as a fraction of the FMA peak of every core the ranks use
    /// (ranks x `threads`).
    public var fractionOfPeak: Double {
        samplesPerSecond * flopsPerSample / (peakGFlops * 1e9 * Double(ranks * threads))
    }
    /// Throughput of the one-rank baseline, and this run's scaling efficiency against it:
    /// samples/s over (ranks x baseline samples/s), for either mode.
    public var baselineSamplesPerSecond: Double? {
        baselineStepSecondsMedian.map { Double(scaling == .strong ? globalBatch : globalBatch / ranks) / $0 }
    }
    public var scalingEfficiency: Double? { baselineSamplesPerSecond.map { samplesPerSecond / (Double(ranks) * $0) } }

    public var json: String {
        JSONValue.object([
            ("ranks", .integer(ranks)), ("scaling", .string(scaling.rawValue)), ("global_batch", .integer(globalBatch)),
            ("model", .string(model)), ("model_kind", .string(modelKind)), ("bn", .string(batchNormSync)),
            ("threads", .integer(threads)), ("build", .string(BuildTarget.name)), ("samples_per_s", .number(samplesPerSecond)),
            ("step_ms_median", .number(stepSecondsMedian * 1e3)), ("step_ms_min", .number(stepSeconds.first! * 1e3)),
            ("step_ms_p10", .number(quantile(0.1) * 1e3)), ("step_ms_p90", .number(quantile(0.9) * 1e3)),
            ("step_ms_max", .number(stepSeconds.last! * 1e3)), ("gemm_ms_median", .number(gemmSecondsMedian * 1e3)),
            ("gemm_gflops", .number(gemmGFlops)), ("peak_fma_gflops", .number(peakGFlops)),
            ("gflop_per_sample", .number(flopsPerSample / 1e9)), ("fraction_of_fma_peak", .number(fractionOfPeak)),
            ("kernels", .string(String(cString: ak_kernel_isa()))), ("vector_bits", .integer(Int(ak_vector_bits()))),
            ("gemm_bound_samples_per_s", .number(gemmBoundSamplesPerSecond)),
            ("fraction_of_gemm_bound", .number(fractionOfGemmBound)),
            ("allreduce_ms_median", .number(allreduceSecondsMedian * 1e3)), ("gradient_bytes", .integer(gradientBytes)),
            ("allreduce_bus_gb_per_s", .number(busBandwidth)),
            (
                "bucket_allreduce",
                .array(
                    bucketAllreduce.map {
                        .object([
                            ("bytes", .integer($0.bytes)), ("ms", .number($0.seconds * 1e3)),
                            ("bus_gb_per_s", .number(busBandwidth(bytes: $0.bytes, seconds: $0.seconds))),
                        ])
                    })
            ),
            ("local_bn_step_ms_median", .number((localStepSecondsMedian ?? .nan) * 1e3)),
            ("deterministic_step_ms_median", .number((deterministicStepSecondsMedian ?? .nan) * 1e3)),
            ("balance", .string(balance.rawValue)),
            ("balance_twin_step_ms_median", .number((balanceTwinStepSecondsMedian ?? .nan) * 1e3)),
            ("weight_gradients", .string(weightGradients.rawValue)),
            ("weight_gradients_twin_step_ms_median", .number((weightGradientsTwinStepSecondsMedian ?? .nan) * 1e3)),
            ("baseline_samples_per_s", .number(baselineSamplesPerSecond ?? .nan)),
            ("scaling_efficiency", .number(scalingEfficiency ?? .nan)),
            ("time_ms", timing.json(meanOver: 1)), ("exposed_comm_fraction", .number(timing.exposedFraction)),
            ("buckets", .integer(buckets)), ("bucket_mb", .number(Double(bucketBytes) / 1_048_576)), ("overlap", .bool(overlap)),
            ("max_rss_mib", .number(peakResidentMiB)),
        ]).encoded
    }

    /// The columns of `csvRow`.
    public static let csvHeader =
        "model,scaling,ranks,global_batch,samples_per_s,step_ms_median,step_ms_p10,step_ms_p90,gemm_bound_samples_per_s,fraction_of_gemm_bound,baseline_samples_per_s,scaling_efficiency,compute_ms,bn_comm_ms,grad_comm_hidden_ms,grad_comm_exposed_ms,exposed_comm_fraction,allreduce_bus_gb_per_s,buckets,bucket_mb,overlap"

    public var csvRow: String {
        func f(_ x: Double?) -> String { x.map { $0.isFinite ? String(cFormat: "%.6g", $0) : "" } ?? "" }
        let t = timing
        return [
            modelKind, scaling.rawValue, "\(ranks)", "\(globalBatch)", f(samplesPerSecond), f(stepSecondsMedian * 1e3),
            f(quantile(0.1) * 1e3), f(quantile(0.9) * 1e3), f(gemmBoundSamplesPerSecond), f(fractionOfGemmBound),
            f(baselineSamplesPerSecond), f(scalingEfficiency), f(t.compute * 1e3), f(t.bnCommunication * 1e3),
            f(t.gradientHidden * 1e3), f(t.gradientExposed * 1e3), f(t.exposedFraction), f(busBandwidth), "\(buckets)",
            f(Double(bucketBytes) / 1_048_576), overlap ? "on" : "off",
        ].joined(separator: ",")
    }
}

/// Strong scaling keeps the global batch fixed as ranks are added; weak scaling keeps each rank's.
public enum ScalingMode: String, Sendable, CaseIterable {
    case strong, weak
}

public enum Benchmark {
    /// A trainer timed next to the run, its steps interleaved with the run's, that differs from it
    /// in one setting (and in what that setting cannot go with). Its raw value is the flag that asks for it.
    public enum Twin: String, Sendable, CaseIterable {
        case localBN = "--compare-local-bn"
        case deterministic = "--compare-deterministic"
        /// The other `--balance` setting (none at one rank: there is nothing to balance).
        case balance = "--compare-balance"
        /// The other `--weight-gradients` setting.
        case weightGradients = "--compare-weight-gradients"

        /// The twin's configuration, from the run's.
        public func configuration(of run: TrainingConfiguration) -> TrainingConfiguration {
            var c = run
            switch self {
            case .localBN:
                c.batchNormSync = .local
                (c.deterministic, c.balance) = (false, .off)  // per-rank statistics are neither
            case .deterministic:
                (c.deterministic, c.overlap, c.balance) = (true, .off, .off)
            case .balance:
                c.balance = run.balance == .on ? .off : .on
            case .weightGradients:
                c.weightGradients = run.weightGradients == .node ? .rank : .node
            }
            return c
        }
    }

    /// What to time besides the training steps.
    public struct Options: Sendable {
        public var steps = 30
        public var warmup = 5
        public var threads = 1
        /// Twins to time too, interleaved with the run.
        public var twins: [Twin] = []
        /// Also time a one-rank baseline on rank 0 while the others wait, interleaved (skipped at one
        /// rank: the run is its own baseline).
        public var oneRankBaseline = true
        public var scaling = ScalingMode.strong
        public init() {}
    }

    /// Collective: times `steps` training steps after `warmup` untimed ones, then the GEMM-only bound.
    /// The data is synthetic at the network's input size (`widths` for an MLP, 32x32x3 images for a
    /// conv net): speed does not depend on the values. `configuration.globalBatch` is the global
    /// batch (strong scaling) or each rank's batch (weak scaling).
    ///
    /// Twins (a `--bn local` trainer; a one-rank trainer on this rank alone) run in the same
    /// process, their blocks interleaved with the others, so that every figure is measured on the
    /// same machine state (separate runs on a shared VM differ by more than the effects measured).
    public static func run(
        _ configuration: TrainingConfiguration, widths: [Int], options: Options,
        communicator: Communicator, console: RankConsole
    ) throws -> BenchmarkResult {
        var c = configuration
        c.printProgress = false
        let perRank = configuration.globalBatch
        if options.scaling == .weak { c.globalBatch = perRank * communicator.size }
        let samples = Swift.max(c.globalBatch * 4, 1024)
        let splits: DataSplits
        if c.model == .mlp {
            splits = SyntheticDataset.make(
                trainCount: samples, testCount: 64, dimension: widths[0], classes: widths.last!, seed: 7)
            c.widths = widths
        } else {
            splits = SyntheticImages.make(trainCount: samples, testCount: 64, seed: 7)
        }
        let trainer = try Trainer(c, splits: splits, communicator: communicator, console: console)
        var twins: [Trainer] = []
        var twinOf: [Twin: Trainer] = [:]
        for kind in options.twins where kind != .balance || communicator.size > 1 {
            twinOf[kind] = try Trainer(kind.configuration(of: c), splits: splits, communicator: communicator, console: console)
            twins.append(twinOf[kind]!)
        }
        var baseline: Trainer? = nil
        if options.oneRankBaseline && communicator.size > 1 {
            var one = c
            one.globalBatch = options.scaling == .strong ? c.globalBatch : perRank
            baseline = try Trainer(one, splits: splits, communicator: SingleProcessCommunicator(), console: console)
            twins.append(baseline!)
        }
        for t in 0..<options.warmup {
            for run in [trainer] + twins where run !== baseline || communicator.isRoot {
                _ = try run.trainStep(t, monitor: false)
            }
        }
        let trainingResidentMiB = try communicator.allreduce(Self.peakResidentMiB(), .max)
        // Blocks of 5 training steps, 5 GEMM-only steps (and 5 steps of each twin) alternate, so that
        // all see the same machine (on a shared VM the speed drifts by tens of percent within a
        // minute) while most steps still start with warm caches, as in training.
        let counts = (0..<communicator.size).map {
            ShardSampler.share(of: c.globalBatch, rank: $0, ranks: communicator.size).count
        }
        try trainer.prepareCommunication()  // collective; the GEMMs depend on where the weight gradients are computed
        let gemm = GemmOnlyStep(trainer.gemmWorkload(counts: counts))
        func fmaPeakSeconds() -> (flops: Double, seconds: Double) {
            let clock = Stopwatch()
            let flops = ak_fma_peak_flops(4_000_000)
            return (flops, clock.seconds)
        }
        var peakFlops = 0.0
        var times: [Double] = [], gemmTimes: [Double] = [], peakTimes: [Double] = []
        var twinTimes = [[Double]](repeating: [], count: twins.count)
        var timing = StepTiming()
        let warmup = options.warmup
        for t in 0..<options.steps {
            try communicator.barrier()
            let clock = Stopwatch()
            timing = timing + (try trainer.trainStep(warmup + t, monitor: false)).timing
            // the slowest rank sets the step time
            times.append(try communicator.allreduce(clock.seconds, .max))
            guard t % 5 == 4 || t == options.steps - 1 else { continue }
            for _ in 0..<5 {
                try communicator.barrier()
                gemmTimes.append(try communicator.allreduce(gemm.time(), .max))
            }
            try communicator.barrier()
            let (flops, seconds) = fmaPeakSeconds()
            peakFlops = flops
            peakTimes.append(try communicator.allreduce(seconds, .max))
            for (k, twin) in twins.enumerated() {
                for j in 0..<5 {
                    try communicator.barrier()
                    if twin === baseline {
                        // one rank alone, the others waiting: the one-rank run, not P at once
                        var seconds = [0.0]
                        if communicator.isRoot {
                            let clock = Stopwatch()
                            _ = try twin.trainStep(warmup + t - 4 + j, monitor: false)
                            seconds[0] = clock.seconds
                        }
                        try communicator.broadcast(&seconds, root: 0)
                        twinTimes[k].append(seconds[0])
                        continue
                    }
                    let clock = Stopwatch()
                    _ = try twin.trainStep(warmup + t - 4 + j, monitor: false)
                    twinTimes[k].append(try communicator.allreduce(clock.seconds, .max))
                }
            }
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        // the gradient allreduce alone: the whole gradient, and each distinct bucket size
        var reduceTimes: [Double] = []
        var bucketTimes: [Int: [Double]] = [:]
        for _ in 0..<Swift.max(options.steps / 2, 3) {
            try communicator.barrier()
            let clock = Stopwatch()
            for range in trainer.gradientBucketRanges { try trainer.reduceGradientsAlone(range) }
            reduceTimes.append(try communicator.allreduce(clock.seconds, .max))
            for range in Set(trainer.gradientBucketRanges.map(\.count)).sorted().map({ 0..<$0 }) {
                try communicator.barrier()
                let clock = Stopwatch()
                try trainer.reduceGradientsAlone(range)
                bucketTimes[range.count * 4, default: []].append(try communicator.allreduce(clock.seconds, .max))
            }
        }
        var sums = timing.values
        try communicator.allreduce(&sums, .sum)
        let mean = StepTiming(values: sums).scaled(by: 1 / Double(options.steps * communicator.size))
        let gemmMedian = median(gemmTimes)
        func twinMedian(_ kind: Twin) -> Double? {
            twinOf[kind].map { twin in median(twinTimes[twins.firstIndex { $0 === twin }!]) }
        }
        return BenchmarkResult(
            ranks: communicator.size, scaling: options.scaling, globalBatch: c.globalBatch, model: trainer.model.architecture,
            modelKind: c.model.rawValue, batchNormSync: c.batchNormSync.rawValue, threads: options.threads,
            stepSeconds: times.sorted(), gemmSecondsMedian: gemmMedian,
            gemmGFlops: gemm.flops / gemmMedian / 1e9,
            flopsPerSample: trainer.model.modelFlops(rows: 1),
            peakGFlops: peakFlops / median(peakTimes) / 1e9, allreduceSecondsMedian: median(reduceTimes),
            gradientBytes: trainer.model.parameters.layout.count * MemoryLayout<Float>.stride,
            bucketAllreduce: bucketTimes.keys.sorted().map { ($0, median(bucketTimes[$0]!)) },
            localStepSecondsMedian: twinMedian(.localBN), deterministicStepSecondsMedian: twinMedian(.deterministic),
            balanceTwinStepSecondsMedian: twinMedian(.balance), balance: c.balance,
            weightGradientsTwinStepSecondsMedian: twinMedian(.weightGradients), weightGradients: c.weightGradients,
            baselineStepSecondsMedian: baseline.map { _ in median(twinTimes[twins.count - 1]) },
            timing: mean, buckets: trainer.gradientBucketRanges.count, bucketBytes: c.bucketBytes,
            overlap: trainer.overlapsGradientReduction, peakResidentMiB: trainingResidentMiB)
    }

    /// This process's peak resident memory so far, in MiB.
    private static func peakResidentMiB() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024  // KiB on Linux
    }
}

/// The GEMMs of one training step alone, as the network lists them for this rank's share of the
/// batch (`Network.gemmWorkload`): the same shapes, transposes and beta, in training's order, each
/// call with its own operand buffers, so that the bound has the memory footprint of the network and
/// not one hot buffer reused by every layer.
struct GemmOnlyStep {
    let calls: [GemmCall]
    let flops: Double
    private let operands: [(a: FlatBuffer, b: FlatBuffer, c: FlatBuffer)]

    init(_ calls: [GemmCall]) {
        self.calls = calls
        operands = calls.map { call in
            let buffers = (
                a: FlatBuffer(count: call.m * call.k), b: FlatBuffer(count: call.k * call.n),
                c: FlatBuffer(count: call.m * call.n)
            )
            for buffer in [buffers.a, buffers.b, buffers.c] {
                for k in 0..<buffer.count { buffer.pointer[k] = Float((k * 7) % 13) * 0.01 - 0.06 }
            }
            return buffers
        }
        flops = calls.reduce(0) { $0 + $1.flops }
    }

    /// Seconds for one step's GEMMs.
    func time() -> Double {
        let clock = Stopwatch()
        for (call, o) in zip(calls, operands) {
            let lda = call.transA == .none ? call.k : call.m
            let ldb = call.transB == .none ? call.n : call.k
            for _ in 0..<call.repeats where call.smallKernel {
                ak_gemm_small(call.m, Int32(call.n), Int32(call.k), o.a.pointer, lda, o.b.pointer, ldb, o.c.pointer, call.n)
            }
            for _ in 0..<call.repeats where !call.smallKernel {
                BLAS.gemm(
                    call.transA, call.transB, m: call.m, n: call.n, k: call.k, a: o.a.pointer, lda: lda,
                    b: o.b.pointer, ldb: ldb, beta: call.beta, c: o.c.pointer, ldc: call.n)
            }
        }
        return clock.seconds
    }
}
