import ArgumentParser
import Collectives
import Layers
import TensorCore
import Benchmarks
import Training
#if canImport(Glibc)
    import Glibc
#endif

extension ScalingMode: ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure training throughput, its GEMM-only bound and a one-rank baseline, in the same run.",
        discussion: """
            Run under mpirun -np P. Strong scaling keeps --global-batch fixed; weak scaling gives every rank \
            --batch-per-rank samples. launch/bench compares np=1 and np=2; launch/bench-scaling sweeps np and models \
            and plots the speedup and efficiency. The MLP defaults to --widths 784,1024,1024,1024,10; conv nets run \
            on 32x32x3 synthetic images. `autorate bench --help-hidden` also lists the transport and overlap flags, \
            to time the plan's alternatives.
            """)

    @Option(help: "Timed steps (the median is reported).")
    var steps = 30
    @Option(help: "Untimed steps first.")
    var warmup = 5
    @OptionGroup(title: "Model") var network: ModelOptions
    @OptionGroup(title: "Distribution") var communication: DistributionOptions
    @Option(help: "'strong' (--global-batch fixed) or 'weak' (--batch-per-rank samples on every rank).")
    var scaling: ScalingMode = .strong
    @Option(name: .customLong("batch-per-rank"), help: "Weak scaling: samples per rank and step.")
    var batchPerRank: Int?
    @Flag(
        name: .customLong("no-baseline"),
        help: "Skip the one-rank baseline (rank 0 alone while the others wait, interleaved) behind the scaling efficiency.")
    var noBaseline = false
    @Flag(name: .customLong("compare-local-bn"), help: "Also time a --bn local twin, interleaved in the same process.")
    var compareLocalBN = false
    @Flag(name: .customLong("compare-deterministic"), help: "Also time a --deterministic twin, interleaved in the same process.")
    var compareDeterministic = false
    @Flag(
        name: .customLong("compare-balance"),
        help: "Also time a twin with the other --balance setting, interleaved in the same process.")
    var compareBalance = false
    @Flag(
        name: .customLong("compare-weight-gradients"),
        help: "Also time a twin with the other --weight-gradients setting, interleaved in the same process.")
    var compareWeightGradients = false
    @Option(help: "Append the result as one JSON line to this file (rank 0).")
    var json: String?
    @Option(help: "Append the result as a CSV row to this file, with a header when the file is new (rank 0).")
    var csv: String?

    /// The twins the --compare flags ask for.
    private var twins: [Benchmark.Twin] {
        let asked: [(Bool, Benchmark.Twin)] = [
            (compareLocalBN, .localBN), (compareDeterministic, .deterministic), (compareBalance, .balance),
            (compareWeightGradients, .weightGradients),
        ]
        return asked.filter { $0.0 }.map { $0.1 }
    }

    func validate() throws {
        try communication.validateCombinations(twins: twins)
        try require(steps >= 1, "--steps", steps, "at least 1 timed step")
        try require(warmup >= 0, "--warmup", warmup, "0 or more steps")
        switch (scaling, batchPerRank) {
        case (.weak, nil):
            throw ValidationError("--scaling weak needs --batch-per-rank N (the samples each rank takes per step).")
        case (.strong, .some):
            throw ValidationError("--batch-per-rank is for --scaling weak; strong scaling uses --global-batch.")
        case let (.weak, n?): try require(n >= 1, "--batch-per-rank", n, "a positive number of samples")
        default: break
        }
    }

    func run() throws {
        var c = TrainingConfiguration()
        network.apply(to: &c)
        communication.apply(to: &c)
        c.widths = nil
        if let batchPerRank { c.globalBatch = batchPerRank }
        var options = Benchmark.Options()
        (options.steps, options.warmup, options.threads) = (steps, warmup, communication.threads)
        (options.twins, options.oneRankBaseline, options.scaling) = (twins, !noBaseline, scaling)
        try withMPI(threads: communication.threads) { communicator, console in
            let result = try Benchmark.run(
                c, widths: try parseWidths(network.widths ?? "784,1024,1024,1024,10"), options: options,
                communicator: communicator, console: console)
            console.root(summary(result))
            if communicator.isRoot {
                if let json { try append(result.json + "\n", to: json, flag: "--json") }
                if let csv {
                    let header = access(csv, F_OK) == 0 ? "" : BenchmarkResult.csvHeader + "\n"
                    try append(header + result.csvRow + "\n", to: csv, flag: "--csv")
                }
            }
        }
    }

    private func summary(_ r: BenchmarkResult) -> String {
        var lines = [
            "bench: np=\(r.ranks) \(r.scaling.rawValue) scaling, bn=\(r.batchNormSync) \(r.model) "
                + String(
                    cFormat:
                        "global batch %d: %.0f samples/s (step median %.2f ms, p10 %.2f, p90 %.2f); GEMM-only bound %.0f samples/s (%.1f GFLOP/s per rank); fraction of bound %.3f; %.3f GFLOP/sample (as direct convolutions) = %.3f of the FMA peak (%.1f GFLOP/s); gradient allreduce %.2f ms (%.2f GB/s bus); OpenBLAS ",
                    r.globalBatch, r.samplesPerSecond, r.stepSecondsMedian * 1e3, r.quantile(0.1) * 1e3, r.quantile(0.9) * 1e3,
                    r.gemmBoundSamplesPerSecond, r.gemmGFlops, r.fractionOfGemmBound, r.flopsPerSample / 1e9, r.fractionOfPeak,
                    r.peakGFlops, r.allreduceSecondsMedian * 1e3, r.busBandwidth) + BLAS.coreName + "; C kernels \(r.kernels)"
                + String(cFormat: "; peak RSS per rank %.0f MiB", r.peakResidentMiB)
                + (BuildTarget.portable ? "" : "; Swift loops built for one CPU")
        ]
        let t = r.timing
        lines.append(
            String(
                cFormat:
                    "bench: step time per rank (mean): %.2f ms = compute %.2f + BN statistics communication %.2f + exposed gradient communication %.2f ms (%.1f%% of the step exposed); gradient communication hidden behind backward %.2f ms; %d bucket(s), overlap ",
                t.step * 1e3, t.compute * 1e3, t.bnCommunication * 1e3, t.gradientExposed * 1e3, 100 * t.exposedFraction,
                t.gradientHidden * 1e3, r.buckets) + (r.overlap ? "on" : "off"))
        if r.ranks > 1 {
            lines.append(
                "bench: allreduce alone per bucket size: "
                    + r.bucketAllreduce.map {
                        String(
                            cFormat: "%.2f MB %.3f ms %.2f GB/s bus", Double($0.bytes) / 1e6, $0.seconds * 1e3,
                            r.busBandwidth(bytes: $0.bytes, seconds: $0.seconds))
                    }.joined(separator: "; "))
        }
        if let base = r.baselineSamplesPerSecond, let efficiency = r.scalingEfficiency {
            lines.append(
                String(
                    cFormat:
                        "bench: one-rank baseline in the same run: %.0f samples/s; speedup %.2fx on %d ranks, scaling efficiency %.3f",
                    base, r.samplesPerSecond / base, r.ranks, efficiency))
        }
        if let local = r.localStepSecondsMedian {
            lines.append(
                String(
                    cFormat: "bench: interleaved --bn local twin: step median %.2f ms; synchronized BN costs %.3fx",
                    local * 1e3, r.stepSecondsMedian / local))
        }
        if let deterministic = r.deterministicStepSecondsMedian {
            lines.append(
                String(
                    cFormat:
                        "bench: interleaved --deterministic twin (--chunks %d): step median %.2f ms; deterministic mode costs %.3fx",
                    communication.chunks, deterministic * 1e3, deterministic / r.stepSecondsMedian))
        }
        if let twin = r.balanceTwinStepSecondsMedian {
            let (on, off) = r.balance == .on ? (r.stepSecondsMedian, twin) : (twin, r.stepSecondsMedian)
            lines.append(
                "bench: interleaved --balance \(r.balance == .on ? "off" : "on") twin: "
                    + String(
                        cFormat: "step median %.2f ms; --balance on gives %.3fx the samples/s of --balance off", twin * 1e3,
                        off / on))
        }
        if let twin = r.weightGradientsTwinStepSecondsMedian {
            let (node, rank) = r.weightGradients == .node ? (r.stepSecondsMedian, twin) : (twin, r.stepSecondsMedian)
            lines.append(
                "bench: interleaved --weight-gradients \(r.weightGradients == .node ? "rank" : "node") twin: "
                    + String(
                        cFormat: "step median %.2f ms; --weight-gradients node gives %.3fx the samples/s of rank", twin * 1e3,
                        rank / node))
        }
        return lines.joined(separator: "\n")
    }

    private func append(_ text: String, to path: String, flag: String) throws {
        guard let f = fopen(path, "a") else {
            throw ValidationError("\(flag) \(path): cannot be opened for appending: \(String(cString: strerror(errno)))")
        }
        defer { fclose(f) }
        fputs(text, f)
    }
}
