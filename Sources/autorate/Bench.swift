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

    @Option(help: "Layer widths 'in,hidden...,classes'.")
    var widths = "784,1024,1024,1024,10"
    @Option(name: .customLong("global-batch"), help: "Samples per step summed over all ranks.")
    var globalBatch = 256
    @Option(help: "Timed steps (the median is reported).")
    var steps = 30
    @Option(help: "Untimed steps first.")
    var warmup = 5
    @Option(help: "BN statistics: 'sync' or 'local'.")
    var bn: BatchNormSync = .sync
    @Option(help: "Classifier head: 'linear' or 'bn'.")
    var head: HeadKind = .linear
    @Option(name: .customLong("bn-eps-mode"), help: "BN epsilon: 'zero', 'scaled' or 'standard'.")
    var bnEpsMode: EpsilonMode = .scaled
    @Option(help: "OpenBLAS threads per rank.")
    var threads = 1
    @Flag(name: .customLong("compare-local-bn"), help: "Also time a --bn local twin, interleaved in the same process.")
    var compareLocalBN = false
    @Option(help: "Append the result as one JSON line to this file (rank 0).")
    var json: String?

    func validate() throws {
        _ = try parseWidths(widths)
        try require(globalBatch > 0, "--global-batch", globalBatch, "a positive number of samples")
        try require(steps >= 1, "--steps", steps, "at least 1 timed step")
        try require(warmup >= 0, "--warmup", warmup, "0 or more steps")
        try require(threads >= 1 && threads <= 256, "--threads", threads, "1 to 256 threads")
    }

    func run() throws {
        var c = TrainingConfiguration()
        c.globalBatch = globalBatch
        c.batchNormSync = bn
        c.head = head
        c.batchNorm = BatchNormSettings(epsilonMode: bnEpsMode)
        try withMPI(threads: threads) { communicator, console in
            let layerWidths = try parseWidths(widths)
            let result = try Benchmark.run(
                c, widths: layerWidths, steps: steps, warmup: warmup, threads: threads,
                compareLocalBN: compareLocalBN, communicator: communicator, console: console)
            console.root(
                "bench: np=\(result.ranks) bn=\(bn.rawValue) widths=\(widths) "
                    + String(
                        cFormat:
                            "global batch %d: %.0f samples/s (step median %.2f ms, min %.2f, max %.2f); GEMM-only bound %.0f samples/s (%.1f GFLOP/s per rank); fraction of bound %.3f; gradient allreduce %.2f ms (%.2f GB/s bus); OpenBLAS ",
                        globalBatch,
                        result.samplesPerSecond, result.stepSecondsMedian * 1e3, result.stepSecondsMin * 1e3,
                        result.stepSecondsMax * 1e3, result.gemmBoundSamplesPerSecond, result.gemmGFlops,
                        result.fractionOfGemmBound, result.allreduceSecondsMedian * 1e3, result.busBandwidth) + BLAS.coreName)
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
