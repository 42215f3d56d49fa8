import ArgumentParser
import Collectives
import Layers
import TensorCore
import Training
#if canImport(Glibc)
    import Glibc
#endif

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure training throughput against the GEMM-only bound, in the same run.",
        discussion: "Run under mpirun -np 1 and -np 2 (launch/bench does both) and compare samples/s.")

    @Option(help: "--model mlp layer widths 'in,hidden...,classes' (conv nets run on 32x32x3 synthetic images).")
    var widths = "784,1024,1024,1024,10"
    @Option(help: "Timed steps (the median is reported).")
    var steps = 30
    @Option(help: "Untimed steps first.")
    var warmup = 5
    @OptionGroup var network: NetworkOptions
    @OptionGroup var communication: CommunicationOptions
    @Flag(name: .customLong("compare-local-bn"), help: "Also time a --bn local twin, interleaved in the same process.")
    var compareLocalBN = false
    @Option(help: "Append the result as one JSON line to this file (rank 0).")
    var json: String?

    func validate() throws {
        _ = try parseWidths(widths)
        try require(steps >= 1, "--steps", steps, "at least 1 timed step")
        try require(warmup >= 0, "--warmup", warmup, "0 or more steps")
    }

    func run() throws {
        var c = TrainingConfiguration()
        network.apply(to: &c)
        communication.apply(to: &c)
        try withMPI(threads: network.threads) { communicator, console in
            let layerWidths = try parseWidths(widths)
            let result = try Benchmark.run(
                c, widths: layerWidths, steps: steps, warmup: warmup, threads: network.threads,
                compareLocalBN: compareLocalBN, communicator: communicator, console: console)
            console.root(
                "bench: np=\(result.ranks) bn=\(network.bn.rawValue) \(result.model) "
                    + String(
                        cFormat:
                            "global batch %d: %.0f samples/s (step median %.2f ms, min %.2f, max %.2f); GEMM-only bound %.0f samples/s (%.1f GFLOP/s per rank); fraction of bound %.3f; %.2f GFLOP/sample = %.3f of sgemm peak (%.1f GFLOP/s); gradient allreduce %.2f ms (%.2f GB/s bus); OpenBLAS ",
                        network.globalBatch,
                        result.samplesPerSecond, result.stepSecondsMedian * 1e3, result.stepSecondsMin * 1e3,
                        result.stepSecondsMax * 1e3, result.gemmBoundSamplesPerSecond, result.gemmGFlops,
                        result.fractionOfGemmBound, result.flopsPerSample / 1e9, result.fractionOfPeak, result.peakGFlops,
                        result.allreduceSecondsMedian * 1e3, result.busBandwidth) + BLAS.coreName)
            let t = result.timing
            console.root(
                String(
                    cFormat:
                        "bench: step time per rank (mean): %.2f ms = compute %.2f + BN statistics communication %.2f + exposed gradient communication %.2f ms (%.1f%% of the step exposed); gradient communication hidden behind backward %.2f ms; %d bucket(s), overlap ",
                    t.step * 1e3, t.compute * 1e3, t.bnCommunication * 1e3, t.gradientExposed * 1e3, 100 * t.exposedFraction,
                    t.gradientHidden * 1e3, result.buckets) + (result.overlap ? "on" : "off"))
            if let local = result.localStepSecondsMedian {
                console.root(
                    String(
                        cFormat: "bench: interleaved --bn local twin: step median %.2f ms; synchronized BN costs %.3fx",
                        local * 1e3, result.stepSecondsMedian / local))
            }
            if communicator.isRoot, let json {
                guard let f = fopen(json, "a") else {
                    throw ValidationError("--json \(json): cannot be opened for appending")
                }
                fputs(result.json + "\n", f)
                fclose(f)
            }
        }
    }
}
