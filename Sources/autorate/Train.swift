import ArgumentParser
import Collectives
import Data
import Layers
import Optimizers
import TensorCore
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a batch-normalized network (MLP, VGG-style, ResNet-20), data-parallel over the MPI ranks.")

    @Option(help: "Training data: \(DataSource.accepted).")
    var data = "synthetic"
    @Option(help: "--model mlp layer widths 'in,hidden...,classes' (default: the data's input size,256,256,its classes).")
    var widths: String?
    @Option(help: "Augmentation of training images: \(Augmentation.accepted) (random 4-pixel-padded crop and horizontal flip).")
    var augment: Augmentation = .none
    @OptionGroup var network: NetworkOptions
    @Option(
        name: .customLong("bn-recalibrate"),
        help: "After training, recompute BN running statistics for the final weights over this many global batches (0: keep the running average).")
    var bnRecalibrate = 20
    @Option(name: .customLong("init-scale-si"), help: "Multiply the SI groups by this after initialization (equivalent scaling, paper.md fact 5).")
    var initScaleSI = 1.0
    @Flag(name: .customLong("log-intrinsic-grad"), help: "Log G_I^2, the intrinsic gradient norm on the global batch, with every logged step.")
    var logIntrinsicGrad = false
    @Option(help: "Full passes over the training set (ignored when --steps is given).")
    var epochs = 10
    @Option(help: "Total training steps (overrides --epochs).")
    var steps: Int?
    @Option(name: .customLong("lr-si"), help: "Learning rate of the scale-invariant groups (any fixed value works).")
    var lrSI = 1.0
    @Option(
        name: .customLong("lr-sv"),
        help: "Learning rate of the scale-variant groups (tune this one; default 0.1 for mlp, 0.02 for conv nets).")
    var lrSV: Double?
    @Option(name: .customLong("schedule-si"), help: "SI schedule: 'const', 'invsqrt' (lr/sqrt(t+1)) or 'exp:R' (lr*R^t).")
    var scheduleSI: Schedule = .constant
    @Option(name: .customLong("schedule-sv"), help: "SV schedule: 'const', 'invsqrt' or 'exp:R'.")
    var scheduleSV: Schedule = .constant
    @Option(help: "Heavy-ball momentum for both groups (not the paper's algorithm when > 0).")
    var momentum = 0.0
    @Option(name: .customLong("weight-decay-si"), help: "L2 weight decay on SI groups (not the paper's algorithm when > 0).")
    var weightDecaySI = 0.0
    @Option(name: .customLong("weight-decay-sv"), help: "L2 weight decay on SV groups (not the paper's algorithm when > 0).")
    var weightDecaySV = 0.0
    @Option(help: "Seed of initialization and data order (the same on every rank).")
    var seed: UInt64 = 0
    @Option(name: .customLong("log-every"), help: "Steps between progress lines and metrics records (default: about 20 per run).")
    var logEvery: Int?
    @Option(help: "Write JSON Lines metrics to this file (rank 0).")
    var metrics: String?
    @OptionGroup var communication: CommunicationOptions
    @Option(help: "Write a Chrome trace (open it in https://ui.perfetto.dev) of the --timeline-steps window to this file (rank 0).")
    var timeline: String?
    @Option(name: .customLong("timeline-steps"), help: "Steps the timeline records, 'FIRST-LAST' (1-based).")
    var timelineSteps = "2-11"
    @Option(name: .customLong("checkpoint-dir"), help: "Write checkpoints (safetensors) to this directory (rank 0).")
    var checkpointDir: String?
    @Option(name: .customLong("checkpoint-every"), help: "Steps between checkpoints (one is also written after the last step).")
    var checkpointEvery = 1000
    @Option(name: .customLong("keep-checkpoints"), help: "Checkpoints kept, newest first.")
    var keepCheckpoints = 3
    @Option(help: "Continue from 'auto' (the newest checkpoint in --checkpoint-dir that loads, if any) or from a checkpoint file.")
    var resume: String?
    @Option(name: .customLong("max-bad-steps"), help: "Stop after this many consecutive steps whose summed gradient is NaN or infinite (each is skipped).")
    var maxBadSteps = 5
    @Option(name: .customLong("stall-timeout"), help: "Seconds a rank may make no progress before it ends the job (0: never).")
    var stallTimeout = 300.0
    @Option(name: .customLong("debug-nan-at"), help: .hidden)
    var debugNaNAt: String?
    @Option(name: .customLong("debug-nan-gradient-at"), help: .hidden)
    var debugNaNGradientAt: String?
    @Option(name: .customLong("debug-stall-at"), help: .hidden)
    var debugStallAt: String?
    @Option(name: .customLong("debug-kill-at"), help: .hidden)
    var debugKillAt: String?
    @Option(name: .customLong("debug-shared-memory-extra"), help: .hidden)
    var debugSharedMemoryExtra = 0
    /// RANK:MICROSECONDS: that rank sleeps this long per sample of its share every step (a slower CPU).
    @Option(name: .customLong("debug-slow-rank"), help: .hidden)
    var debugSlowRank: String?
    @Flag(help: "Print only the summary, not a progress line per logged step.")
    var quiet = false

    func validate() throws {
        _ = try parseData(data)
        try communication.validate(with: network)
        if let widths { _ = try parseWidths(widths) }
        try require(bnRecalibrate >= 0 && bnRecalibrate <= 100_000, "--bn-recalibrate", bnRecalibrate, "0 to 100000 global batches")
        try require(initScaleSI > 0 && initScaleSI.isFinite, "--init-scale-si", initScaleSI, "a finite factor > 0")
        try require(maxBadSteps >= 1, "--max-bad-steps", maxBadSteps, "at least 1")
        try require(stallTimeout >= 0 && stallTimeout.isFinite, "--stall-timeout", stallTimeout, "seconds >= 0 (0: no watchdog)")
        for (flag, value) in [
            ("--debug-nan-at", debugNaNAt), ("--debug-nan-gradient-at", debugNaNGradientAt), ("--debug-stall-at", debugStallAt),
            ("--debug-kill-at", debugKillAt),
        ] {
            if let value, Self.stepAndRank(value) == nil { throw ValidationError("\(flag) \(value) is not accepted: use STEP:RANK.") }
        }
        try require(debugSharedMemoryExtra >= 0, "--debug-shared-memory-extra", debugSharedMemoryExtra, "bytes >= 0")
        if let debugSlowRank, Self.rankAndMicroseconds(debugSlowRank) == nil {
            throw ValidationError("--debug-slow-rank \(debugSlowRank) is not accepted: use RANK:MICROSECONDS (microseconds per sample, at most 100000).")
        }
        try require(checkpointEvery >= 1, "--checkpoint-every", checkpointEvery, "a positive number of steps")
        try require(keepCheckpoints >= 1, "--keep-checkpoints", keepCheckpoints, "at least 1")
        if resume == "auto" && checkpointDir == nil {
            throw ValidationError("--resume auto looks in --checkpoint-dir; give the directory (or --resume PATH for one file).")
        }
        try require(epochs > 0, "--epochs", epochs, "a positive number of passes")
        if let steps { try require(steps > 0, "--steps", steps, "a positive number of steps") }
        try require(lrSI.isFinite && lrSI > 0, "--lr-si", lrSI, "a finite rate > 0")
        if let lrSV { try require(lrSV.isFinite && lrSV >= 0, "--lr-sv", lrSV, "a finite rate >= 0") }
        try require(momentum >= 0 && momentum < 1, "--momentum", momentum, "a value in [0, 1)")
        try require(weightDecaySI >= 0 && weightDecaySI.isFinite, "--weight-decay-si", weightDecaySI, "a finite value >= 0")
        try require(weightDecaySV >= 0 && weightDecaySV.isFinite, "--weight-decay-sv", weightDecaySV, "a finite value >= 0")
        if let logEvery { try require(logEvery >= 1, "--log-every", logEvery, "a positive number of steps") }
        if Self.stepRange(timelineSteps) == nil {
            throw ValidationError("--timeline-steps \(timelineSteps) is not accepted: use FIRST-LAST, 1-based steps with FIRST <= LAST and at most 10000 steps.")
        }
    }

    /// Called after `validate()`, so the parses cannot fail here.
    var trainingConfiguration: TrainingConfiguration {
        var c = TrainingConfiguration()
        network.apply(to: &c)
        c.data = try! parseData(data)
        c.widths = widths.map { try! parseWidths($0) }
        c.augmentation = augment
        c.maxBadSteps = maxBadSteps
        c.stallTimeout = stallTimeout
        c.debugNaN = debugNaNAt.flatMap(Self.stepAndRank)
        c.debugNaNGradient = debugNaNGradientAt.flatMap(Self.stepAndRank)
        c.debugStall = debugStallAt.flatMap(Self.stepAndRank)
        c.debugKill = debugKillAt.flatMap(Self.stepAndRank)
        c.debugSharedMemoryExtra = debugSharedMemoryExtra
        c.debugSlowRank = debugSlowRank.flatMap(Self.rankAndMicroseconds)
        c.checkpointDirectory = checkpointDir
        c.checkpointEvery = checkpointEvery
        c.keepCheckpoints = keepCheckpoints
        c.resume = resume.map(ResumeSource.init(argument:))
        c.initScaleSI = initScaleSI
        c.logIntrinsicGradient = logIntrinsicGrad
        c.bnRecalibrationBatches = bnRecalibrate
        c.epochs = epochs
        c.steps = steps
        c.invariant = GroupRule(learningRate: lrSI, schedule: scheduleSI, momentum: momentum, weightDecay: weightDecaySI)
        // measured on synthetic-images: 0.1 leaves the cnn at 77% after 300 steps, 0.02 reaches 90%
        let defaultSV = network.model == .mlp ? 0.1 : 0.02
        c.variant = GroupRule(learningRate: lrSV ?? defaultSV, schedule: scheduleSV, momentum: momentum, weightDecay: weightDecaySV)
        c.seed = seed
        c.logEvery = logEvery
        c.metricsPath = metrics
        communication.apply(to: &c)
        c.timelinePath = timeline
        c.timelineWindow = Self.stepRange(timelineSteps)!
        c.printProgress = !quiet
        return c
    }

    /// `FIRST-LAST` of `--timeline-steps`.
    static func stepRange(_ text: String) -> ClosedRange<Int>? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
        guard parts.count == 2, let first = parts[0], let last = parts[1], first >= 1, first <= last, last - first < 10_000 else { return nil }
        return first...last
    }

    /// `A:B`, two numbers >= 0 (the test-only fault flags).
    private static func pair(_ text: String) -> (Int, Int)? {
        let parts = text.split(separator: ":").compactMap { Int($0) }
        return parts.count == 2 && parts[0] >= 0 && parts[1] >= 0 ? (parts[0], parts[1]) : nil
    }

    /// `STEP:RANK`.
    static func stepAndRank(_ text: String) -> (step: Int, rank: Int)? { pair(text) }

    /// `--debug-slow-rank RANK:MICROSECONDS`, at most 100,000 microseconds per sample.
    static func rankAndMicroseconds(_ text: String) -> (rank: Int, microsecondsPerSample: Int)? {
        pair(text).flatMap { $0.1 <= 100_000 ? $0 : nil }
    }

    func run() throws {
        let configuration = trainingConfiguration
        try withMPI(threads: network.threads) { communicator, console in
            let trainer = try agreeOnSetup(communicator, console) {
                try Trainer(configuration, communicator: communicator, console: console)
            }
            _ = try trainer.run()
        }
    }
}
