import ArgumentParser
import Collectives
import Data
import Layers
import Optimizers
import TensorCore
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train an MLP with batch normalization, data-parallel over the MPI ranks.")

    @Option(help: "Training data: \(DataSource.accepted).")
    var data = "synthetic"
    @Option(help: "Layer widths 'in,hidden...,classes' (default: the data's input size,256,256,its classes).")
    var widths: String?
    @Option(help: "Classifier head: 'linear' (Linear with bias, SV) or 'bn' (Linear then BN, as in the paper).")
    var head: HeadKind = .linear
    @Option(
        name: .customLong("global-batch"), help: "Samples per step summed over all ranks (need not divide by the rank count).")
    var globalBatch = 256
    @Option(help: "Full passes over the training set (ignored when --steps is given).")
    var epochs = 10
    @Option(help: "Total training steps (overrides --epochs).")
    var steps: Int?
    @Option(name: .customLong("lr-si"), help: "Learning rate of the scale-invariant groups (any fixed value works).")
    var lrSI = 1.0
    @Option(name: .customLong("lr-sv"), help: "Learning rate of the scale-variant groups (tune this one).")
    var lrSV = 0.1
    @Option(name: .customLong("schedule-si"), help: "SI schedule: 'const' or 'invsqrt' (lr/sqrt(t+1)).")
    var scheduleSI: Schedule = .constant
    @Option(name: .customLong("schedule-sv"), help: "SV schedule: 'const' or 'invsqrt'.")
    var scheduleSV: Schedule = .constant
    @Option(help: "Heavy-ball momentum for both groups (not the paper's algorithm when > 0).")
    var momentum = 0.0
    @Option(name: .customLong("weight-decay-si"), help: "L2 weight decay on SI groups (not the paper's algorithm when > 0).")
    var weightDecaySI = 0.0
    @Option(name: .customLong("weight-decay-sv"), help: "L2 weight decay on SV groups (not the paper's algorithm when > 0).")
    var weightDecaySV = 0.0
    @Option(help: "BN statistics: 'sync' (over the global batch) or 'local' (per rank, as plain DDP).")
    var bn: BatchNormSync = .sync
    @Option(
        name: .customLong("bn-eps-mode"),
        help: "BN epsilon: 'zero', 'scaled' (eps*||w_c||^2, exactly scale-invariant) or 'standard'.")
    var bnEpsMode: EpsilonMode = .scaled
    @Option(name: .customLong("bn-eps"), help: "BN epsilon value for the 'scaled' and 'standard' modes.")
    var bnEps = 1e-5
    @Option(help: "Seed of initialization and data order (the same on every rank).")
    var seed: UInt64 = 0
    @Option(help: "OpenBLAS threads per rank (1 when each rank has one core).")
    var threads = 1
    @Option(name: .customLong("log-every"), help: "Steps between progress lines and metrics records (default: about 20 per run).")
    var logEvery: Int?
    @Option(help: "Write JSON Lines metrics to this file (rank 0).")
    var metrics: String?
    @Option(name: .customLong("bucket-mb"), help: "Largest gradient allreduce bucket in MiB.")
    var bucketMB = 25.0
    @Flag(help: "Print only the summary, not a progress line per logged step.")
    var quiet = false

    func validate() throws {
        _ = try parseData(data)
        if let widths { _ = try parseWidths(widths) }
        try require(globalBatch > 0, "--global-batch", globalBatch, "a positive number of samples")
        try require(epochs > 0, "--epochs", epochs, "a positive number of passes")
        if let steps { try require(steps > 0, "--steps", steps, "a positive number of steps") }
        try require(lrSI.isFinite && lrSI > 0, "--lr-si", lrSI, "a finite rate > 0")
        try require(lrSV.isFinite && lrSV >= 0, "--lr-sv", lrSV, "a finite rate >= 0")
        try require(momentum >= 0 && momentum < 1, "--momentum", momentum, "a value in [0, 1)")
        try require(weightDecaySI >= 0 && weightDecaySI.isFinite, "--weight-decay-si", weightDecaySI, "a finite value >= 0")
        try require(weightDecaySV >= 0 && weightDecaySV.isFinite, "--weight-decay-sv", weightDecaySV, "a finite value >= 0")
        try require(bnEps >= 0 && bnEps.isFinite, "--bn-eps", bnEps, "a finite value >= 0")
        try require(threads >= 1 && threads <= 256, "--threads", threads, "1 to 256 threads")
        if let logEvery { try require(logEvery >= 1, "--log-every", logEvery, "a positive number of steps") }
        try require(bucketMB >= 0.0625 && bucketMB <= 2048, "--bucket-mb", bucketMB, "a size in MiB from 0.0625 (64 KiB) to 2048")
        if bnEpsMode == .standard && bnEps == 0 {
            throw ValidationError(
                "--bn-eps 0 with --bn-eps-mode standard divides by zero on constant channels; use --bn-eps-mode zero for eps = 0."
            )
        }
    }

    /// Called after `validate()`, so the parses cannot fail here.
    var trainingConfiguration: TrainingConfiguration {
        var c = TrainingConfiguration()
        c.data = try! parseData(data)
        c.widths = widths.map { try! parseWidths($0) }
        c.head = head
        c.globalBatch = globalBatch
        c.epochs = epochs
        c.steps = steps
        c.invariant = GroupRule(learningRate: lrSI, schedule: scheduleSI, momentum: momentum, weightDecay: weightDecaySI)
        c.variant = GroupRule(learningRate: lrSV, schedule: scheduleSV, momentum: momentum, weightDecay: weightDecaySV)
        c.batchNormSync = bn
        c.batchNorm = BatchNormSettings(epsilonMode: bnEpsMode, epsilon: bnEps)
        c.seed = seed
        c.logEvery = logEvery
        c.metricsPath = metrics
        c.bucketBytes = Int(bucketMB * 1024 * 1024)
        c.printProgress = !quiet
        return c
    }

    func run() throws {
        let configuration = trainingConfiguration
        try withMPI(threads: threads) { communicator, console in
            let trainer = try agreeOnSetup(communicator, console) {
                try Trainer(configuration, communicator: communicator, console: console)
            }
            _ = try trainer.run()
        }
    }
}
