import Collectives
import Data
import Layers
import TensorCore

/// Training throughput of one configuration, next to the GEMM-only bound measured in the same
/// process: the time `cblas_sgemm` alone needs for the same matrix shapes (forward, weight
/// gradient, input gradient of every Linear layer for this rank's share of the batch). The fraction
/// `gemm time / step time` says how much of the step is spent outside the GEMMs.
public struct BenchmarkResult: Sendable {
    public let ranks: Int
    public let globalBatch: Int
    /// The network, as `Network.architecture` describes it.
    public let model: String
    public let batchNormSync: String
    public let threads: Int
    public let stepSecondsMedian: Double
    public let stepSecondsMin: Double
    public let stepSecondsMax: Double
    public let gemmSecondsMedian: Double
    public let gemmGFlops: Double
    /// GEMM flops of one training step per sample (forward and backward; the model's work).
    public let flopsPerSample: Double
    /// Median `cblas_sgemm` throughput of one 1024^3 GEMM per rank, measured between the blocks:
    /// the machine's GEMM peak, against which PyTorch's figures are quoted.
    public let peakGFlops: Double
    /// Median time of the gradient allreduce alone (every bucket), and its bytes.
    public let allreduceSecondsMedian: Double
    public let gradientBytes: Int
    /// With `compareLocalBN`: the median step of a `--bn local` twin run interleaved with this one.
    public let localStepSecondsMedian: Double?
    /// Where the step time went: the mean per timed step over ranks.
    public let timing: StepTiming
    public let buckets: Int
    public let overlap: Bool

    /// Allreduce bus bandwidth, `2 (p - 1) / p * bytes / time` (NCCL's convention), in GB/s.
    public var busBandwidth: Double {
        ranks > 1 ? 2 * Double(ranks - 1) / Double(ranks) * Double(gradientBytes) / allreduceSecondsMedian / 1e9 : 0
    }

    public var samplesPerSecond: Double { Double(globalBatch) / stepSecondsMedian }
    public var gemmBoundSamplesPerSecond: Double { Double(globalBatch) / gemmSecondsMedian }
    public var fractionOfGemmBound: Double { gemmSecondsMedian / stepSecondsMedian }
    /// Training throughput as a fraction of what every rank's GEMM peak would give.
    public var fractionOfPeak: Double { samplesPerSecond * flopsPerSample / (peakGFlops * 1e9 * Double(ranks)) }

    public var json: String {
        JSONValue.object([
            ("ranks", .integer(ranks)), ("global_batch", .integer(globalBatch)),
            ("model", .string(model)), ("bn", .string(batchNormSync)),
            ("threads", .integer(threads)), ("samples_per_s", .number(samplesPerSecond)),
            ("step_ms_median", .number(stepSecondsMedian * 1e3)), ("step_ms_min", .number(stepSecondsMin * 1e3)),
            ("step_ms_max", .number(stepSecondsMax * 1e3)), ("gemm_ms_median", .number(gemmSecondsMedian * 1e3)),
            ("gemm_gflops", .number(gemmGFlops)), ("peak_sgemm_gflops", .number(peakGFlops)),
            ("gflop_per_sample", .number(flopsPerSample / 1e9)), ("fraction_of_sgemm_peak", .number(fractionOfPeak)), ("gemm_bound_samples_per_s", .number(gemmBoundSamplesPerSecond)),
            ("fraction_of_gemm_bound", .number(fractionOfGemmBound)),
            ("allreduce_ms_median", .number(allreduceSecondsMedian * 1e3)), ("gradient_bytes", .integer(gradientBytes)),
            ("allreduce_bus_gb_per_s", .number(busBandwidth)),
            ("local_bn_step_ms_median", .number((localStepSecondsMedian ?? .nan) * 1e3)),
            ("time_ms", timing.json(meanOver: 1)), ("exposed_comm_fraction", .number(timing.exposedFraction)),
            ("buckets", .integer(buckets)), ("overlap", .bool(overlap)),
        ]).encoded
    }
}

public enum Benchmark {
    /// Collective: times `steps` training steps after `warmup` untimed ones, then the GEMM-only bound.
    /// The data is synthetic at the network's input size (`widths` for an MLP, 32x32x3 images for a
    /// conv net): speed does not depend on the values.
    ///
    /// With `compareLocalBN`, a second trainer with per-rank BN statistics runs in the same process,
    /// its blocks interleaved with the others, so that the cost of synchronized BN is measured on
    /// the same machine state (separate runs on a shared VM differ by more than that cost).
    public static func run(
        _ configuration: TrainingConfiguration, widths: [Int], steps: Int, warmup: Int,
        threads: Int, compareLocalBN: Bool = false,
        communicator: Communicator, console: RankConsole
    ) throws -> BenchmarkResult {
        let samples = Swift.max(configuration.globalBatch * 4, 1024)
        var c = configuration
        c.printProgress = false
        let splits: DataSplits
        if c.model == .mlp {
            splits = SyntheticDataset.make(
                trainCount: samples, testCount: 64, dimension: widths[0], classes: widths.last!, seed: 7)
            c.widths = widths
        } else {
            splits = SyntheticImages.make(trainCount: samples, testCount: 64, seed: 7)
        }
        let trainer = try Trainer(c, splits: splits, communicator: communicator, console: console)
        var twin: Trainer? = nil
        if compareLocalBN {
            var l = c
            l.batchNormSync = .local
            twin = try Trainer(l, splits: splits, communicator: communicator, console: console)
        }
        for t in 0..<warmup {
            _ = try trainer.trainStep(t, monitor: false)
            _ = try twin?.trainStep(t, monitor: false)
        }
        // Blocks of 5 training steps, 5 GEMM-only steps (and 5 steps of the twin) alternate, so that all see the same
        // machine (on a shared VM the speed drifts by tens of percent within a minute) while most
        // steps still start with warm caches, as in training; the medians are reported.
        let local = ShardSampler.share(of: configuration.globalBatch, rank: communicator.rank, ranks: communicator.size).count
        let gemm = GemmOnlyStep(trainer.model.gemmWorkload(rows: local))
        let peak = GemmOnlyStep([GemmCall(.none, .none, m: 1024, n: 1024, k: 1024, beta: 0)])
        var times: [Double] = [], gemmTimes: [Double] = [], twinTimes: [Double] = [], peakTimes: [Double] = []
        var timing = StepTiming()
        for t in 0..<steps {
            try communicator.barrier()
            let clock = Stopwatch()
            timing = timing + (try trainer.trainStep(warmup + t, monitor: false)).timing
            // the slowest rank sets the step time
            times.append(try communicator.allreduce(clock.seconds, .max))
            if t % 5 == 4 || t == steps - 1 {
                for _ in 0..<5 {
                    try communicator.barrier()
                    gemmTimes.append(try communicator.allreduce(gemm.time(), .max))
                }
                try communicator.barrier()
                peakTimes.append(try communicator.allreduce(peak.time(), .max))
                if let twin {
                    for k in 0..<5 {
                        try communicator.barrier()
                        let clock = Stopwatch()
                        _ = try twin.trainStep(warmup + t - 4 + k, monitor: false)
                        twinTimes.append(try communicator.allreduce(clock.seconds, .max))
                    }
                }
            }
        }
        times.sort()
        gemmTimes.sort()
        peakTimes.sort()
        twinTimes.sort()
        let gemmMedian = gemmTimes[gemmTimes.count / 2]
        var reduceTimes: [Double] = []
        for _ in 0..<Swift.max(steps / 2, 3) {
            try communicator.barrier()
            let clock = Stopwatch()
            try trainer.buckets.allreduce(trainer.model.parameters.gradients, over: communicator)
            reduceTimes.append(try communicator.allreduce(clock.seconds, .max))
        }
        reduceTimes.sort()
        var sums = [timing.step, timing.bnCommunication, timing.gradientHidden, timing.gradientExposed]
        try communicator.allreduce(&sums, .sum)
        var mean = StepTiming()
        let count = Double(steps * communicator.size)
        (mean.step, mean.bnCommunication, mean.gradientHidden, mean.gradientExposed) = (sums[0] / count, sums[1] / count, sums[2] / count, sums[3] / count)
        return BenchmarkResult(
            ranks: communicator.size, globalBatch: configuration.globalBatch, model: trainer.model.architecture,
            batchNormSync: configuration.batchNormSync.rawValue, threads: threads,
            stepSecondsMedian: times[times.count / 2], stepSecondsMin: times.first!,
            stepSecondsMax: times.last!, gemmSecondsMedian: gemmMedian,
            gemmGFlops: gemm.flops / gemmMedian / 1e9,
            flopsPerSample: trainer.model.gemmWorkload(rows: 1).reduce(0) { $0 + $1.flops },
            peakGFlops: peak.flops / peakTimes[peakTimes.count / 2] / 1e9, allreduceSecondsMedian: reduceTimes[reduceTimes.count / 2],
            gradientBytes: trainer.model.parameters.layout.count * MemoryLayout<Float>.stride,
            localStepSecondsMedian: twinTimes.isEmpty ? nil : twinTimes[twinTimes.count / 2],
            timing: mean, buckets: trainer.buckets.ranges.count, overlap: trainer.reduction.overlap)
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
            let buffers = (a: FlatBuffer(count: call.m * call.k), b: FlatBuffer(count: call.k * call.n), c: FlatBuffer(count: call.m * call.n))
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
            for _ in 0..<call.repeats {
                BLAS.gemm(
                    call.transA, call.transB, m: call.m, n: call.n, k: call.k, a: o.a.pointer, lda: lda,
                    b: o.b.pointer, ldb: ldb, beta: call.beta, c: o.c.pointer, ldc: call.n)
            }
        }
        return clock.seconds
    }
}
