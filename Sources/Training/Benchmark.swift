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
    public let widths: [Int]
    public let batchNormSync: String
    public let threads: Int
    public let stepSecondsMedian: Double
    public let stepSecondsMin: Double
    public let stepSecondsMax: Double
    public let gemmSecondsMedian: Double
    public let gemmGFlops: Double
    /// Median time of the gradient allreduce alone (every bucket), and its bytes.
    public let allreduceSecondsMedian: Double
    public let gradientBytes: Int
    /// With `compareLocalBN`: the median step of a `--bn local` twin run interleaved with this one.
    public let localStepSecondsMedian: Double?

    /// Allreduce bus bandwidth, `2 (p - 1) / p * bytes / time` (NCCL's convention), in GB/s.
    public var busBandwidth: Double {
        ranks > 1 ? 2 * Double(ranks - 1) / Double(ranks) * Double(gradientBytes) / allreduceSecondsMedian / 1e9 : 0
    }

    public var samplesPerSecond: Double { Double(globalBatch) / stepSecondsMedian }
    public var gemmBoundSamplesPerSecond: Double { Double(globalBatch) / gemmSecondsMedian }
    public var fractionOfGemmBound: Double { gemmSecondsMedian / stepSecondsMedian }

    public var json: String {
        JSONValue.object([
            ("ranks", .integer(ranks)), ("global_batch", .integer(globalBatch)),
            ("widths", .string(widths.map(String.init).joined(separator: ","))), ("bn", .string(batchNormSync)),
            ("threads", .integer(threads)), ("samples_per_s", .number(samplesPerSecond)),
            ("step_ms_median", .number(stepSecondsMedian * 1e3)), ("step_ms_min", .number(stepSecondsMin * 1e3)),
            ("step_ms_max", .number(stepSecondsMax * 1e3)), ("gemm_ms_median", .number(gemmSecondsMedian * 1e3)),
            ("gemm_gflops", .number(gemmGFlops)), ("gemm_bound_samples_per_s", .number(gemmBoundSamplesPerSecond)),
            ("fraction_of_gemm_bound", .number(fractionOfGemmBound)),
            ("allreduce_ms_median", .number(allreduceSecondsMedian * 1e3)), ("gradient_bytes", .integer(gradientBytes)),
            ("allreduce_bus_gb_per_s", .number(busBandwidth)),
            ("local_bn_step_ms_median", .number((localStepSecondsMedian ?? .nan) * 1e3)),
        ]).encoded
    }
}

public enum Benchmark {
    /// Collective: times `steps` training steps after `warmup` untimed ones, then the GEMM-only bound.
    /// The data is random (the synthetic generator at the network's input size): speed does not
    /// depend on the values.
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
        let splits = SyntheticDataset.make(
            trainCount: samples, testCount: 64, dimension: widths[0], classes: widths.last!, seed: 7)
        var c = configuration
        c.widths = widths
        c.printProgress = false
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
        let gemm = GemmOnlyStep(widths: widths, rows: local)
        var times: [Double] = [], gemmTimes: [Double] = [], twinTimes: [Double] = []
        for t in 0..<steps {
            try communicator.barrier()
            let clock = Stopwatch()
            _ = try trainer.trainStep(warmup + t, monitor: false)
            // the slowest rank sets the step time
            times.append(try communicator.allreduce(clock.seconds, .max))
            if t % 5 == 4 || t == steps - 1 {
                for _ in 0..<5 {
                    try communicator.barrier()
                    gemmTimes.append(try communicator.allreduce(gemm.time(), .max))
                }
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
        return BenchmarkResult(
            ranks: communicator.size, globalBatch: configuration.globalBatch, widths: widths,
            batchNormSync: configuration.batchNormSync.rawValue, threads: threads,
            stepSecondsMedian: times[times.count / 2], stepSecondsMin: times.first!,
            stepSecondsMax: times.last!, gemmSecondsMedian: gemmMedian,
            gemmGFlops: gemm.flops / gemmMedian / 1e9, allreduceSecondsMedian: reduceTimes[reduceTimes.count / 2],
            gradientBytes: trainer.model.parameters.layout.count * MemoryLayout<Float>.stride,
            localStepSecondsMedian: twinTimes.isEmpty ? nil : twinTimes[twinTimes.count / 2])
    }

}

/// The GEMMs of one training step alone, on `rows` samples: the same shapes, transposes and beta
/// as `Linear` uses in training (forward, weight gradient, and input gradient but for the first
/// layer), each layer with its own weight, gradient and activation buffers, so that the bound has
/// the memory footprint of the network and not one hot buffer reused by every layer.
struct GemmOnlyStep {
    let widths: [Int]
    let rows: Int
    let flops: Double
    private let weights: [FlatBuffer], weightGradients: [FlatBuffer]
    private let inputs: [FlatBuffer], outputs: [FlatBuffer], inputGradients: [FlatBuffer]

    init(widths: [Int], rows: Int) {
        self.widths = widths
        self.rows = rows
        let layers = 0..<(widths.count - 1)
        weights = layers.map { FlatBuffer(count: widths[$0 + 1] * widths[$0]) }
        weightGradients = layers.map { FlatBuffer(count: widths[$0 + 1] * widths[$0]) }
        inputs = layers.map { FlatBuffer(count: rows * widths[$0]) }
        outputs = layers.map { FlatBuffer(count: rows * widths[$0 + 1]) }
        inputGradients = layers.map { FlatBuffer(count: rows * widths[$0]) }
        for buffer in weights + inputs + outputs {
            for k in 0..<buffer.count { buffer.pointer[k] = Float((k * 7) % 13) * 0.01 - 0.06 }
        }
        flops = layers.reduce(0.0) { $0 + Double(2 * rows * widths[$1] * widths[$1 + 1]) * ($1 > 0 ? 3 : 2) }
    }

    /// Seconds for one step's GEMMs, in training's order: forward by layer, then backward in reverse.
    func time() -> Double {
        let clock = Stopwatch()
        let layers = 0..<(widths.count - 1)
        for l in layers {
            let fanIn = widths[l], fanOut = widths[l + 1]
            BLAS.gemm(
                .none, .transposed, m: rows, n: fanOut, k: fanIn, a: inputs[l].pointer, lda: fanIn,
                b: weights[l].pointer, ldb: fanIn, beta: 0, c: outputs[l].pointer, ldc: fanOut)
        }
        for l in layers.reversed() {
            let fanIn = widths[l], fanOut = widths[l + 1]
            // the output buffer stands in for the upstream gradient: same shape, same memory traffic
            BLAS.gemm(
                .transposed, .none, m: fanOut, n: fanIn, k: rows, a: outputs[l].pointer, lda: fanOut,
                b: inputs[l].pointer, ldb: fanIn, beta: 0, c: weightGradients[l].pointer, ldc: fanIn)
            if l > 0 {
                BLAS.gemm(
                    .none, .none, m: rows, n: fanIn, k: fanOut, a: outputs[l].pointer, lda: fanOut,
                    b: weights[l].pointer, ldb: fanIn, beta: 0, c: inputGradients[l].pointer, ldc: fanIn)
            }
        }
        return clock.seconds
    }
}
