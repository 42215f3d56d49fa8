import ArgumentParser
import Collectives
import Data
import Layers
import Optimizers
import TensorCore
import Training

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a batch-normalized network (MLP, VGG-style, ResNet-20), data-parallel over the MPI ranks.",
        discussion: """
            Scale-invariant (SI) parameters are those whose loss does not change when they are scaled, such as the \
            weights feeding a BN layer: they train with --lr-si, and any fixed value works. The few scale-variant (SV) \
            ones (the last BN's gamma and beta, a linear classifier head) use --lr-sv, the rate to tune. \
            `autorate train --help-hidden` also lists the advanced flags.
            """)

    @OptionGroup(title: "Data") var dataOptions: DataOptions
    @OptionGroup(title: "Model") var model: ModelOptions
    @OptionGroup(title: "Optimizer") var optimizer: OptimizerOptions
    @OptionGroup(title: "Distribution") var distribution: DistributionOptions
    @OptionGroup(title: "Checkpoints") var checkpoints: CheckpointOptions
    @OptionGroup(title: "Diagnostics") var diagnostics: DiagnosticOptions

    func validate() throws {
        try distribution.validateCombinations()
        if checkpoints.keepBest && diagnostics.evalEvery == nil {
            throw ValidationError("--keep-best keeps the model of the best evaluation; give --eval-every N as well.")
        }
        if dataOptions.valFraction > 0 && diagnostics.evalEvery == nil {
            throw ValidationError(
                "--val-fraction \(dataOptions.valFraction) holds samples out of training to score them with --eval-every N; give --eval-every as well."
            )
        }
    }

    /// Called after `validate()`, so the parses cannot fail here.
    var trainingConfiguration: TrainingConfiguration {
        var c = TrainingConfiguration()
        model.apply(to: &c)
        distribution.apply(to: &c)
        c.data = try! parseData(dataOptions.data)
        c.imageSize = dataOptions.imageSize.flatMap(ImageSize.init(argument:))
        c.cacheDirectory = dataOptions.cacheDir
        c.augmentation = dataOptions.augment
        c.validationFraction = dataOptions.valFraction
        optimizer.apply(to: &c, model: model.model)
        checkpoints.apply(to: &c)
        diagnostics.apply(to: &c)
        return c
    }

    func run() throws {
        let configuration = trainingConfiguration
        try withMPI(threads: distribution.threads) { communicator, console in
            let trainer = try agreeOnSetup(communicator, console) {
                try Trainer(configuration, communicator: communicator, console: console)
            }
            _ = try trainer.run()
        }
    }
}

struct DataOptions: ParsableArguments {
    @Option(help: "Training data: \(DataSource.accepted).")
    var data = "synthetic"
    @Option(help: "Augmentation of training images: \(Augmentation.accepted) (random 4-pixel-padded crop and horizontal flip).")
    var augment: Augmentation = .none
    @Option(
        name: .customLong("val-fraction"),
        help:
            "Hold out this fraction of the training set (a split drawn from --seed) and score it during training instead of the test set."
    )
    var valFraction = 0.0
    @Option(
        name: .customLong("image-size"),
        help: "folder:DIR images: resize each to HxW (or NxN for N): shorter side first, then a centre crop.")
    var imageSize: String?
    @OptionGroup var cache: CacheDirectoryOption
    var cacheDir: String? { cache.cacheDir }

    func validate() throws {
        _ = try parseData(data)
        try require(
            valFraction >= 0 && valFraction < 1, "--val-fraction", valFraction, "a fraction in [0, 1) (0: no validation split)")
        if let imageSize { try require(ImageSize(argument: imageSize) != nil, "--image-size", imageSize, ImageSize.accepted) }
        if case .folder = try parseData(data) {
        } else if imageSize != nil || cacheDir != nil {
            throw ValidationError(
                "--\(imageSize != nil ? "image-size" : "cache-dir") applies to --data folder:DIR only, not to --data \(data).")
        }
    }
}

struct OptimizerOptions: ParsableArguments {
    @Option(name: .customLong("lr-si"), help: "Learning rate of the scale-invariant (SI) groups: any fixed value works.")
    var lrSI = 1.0
    @Option(
        name: .customLong("lr-sv"),
        help: "Learning rate of the scale-variant (SV) groups: tune this one (default 0.1 for mlp, 0.02 for conv nets).")
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
    @Option(help: "Full passes over the training set (ignored when --steps is given).")
    var epochs = 10
    @Option(help: "Total training steps (overrides --epochs).")
    var steps: Int?
    @Option(help: "Seed of initialization and data order (the same on every rank).")
    var seed: UInt64 = 0
    @Option(
        name: .customLong("bn-recalibrate"),
        help:
            "After training, recompute BN running statistics for the final weights over this many global batches (0: keep the running average)."
    )
    var bnRecalibrate = 20
    @Option(
        name: .customLong("init-scale-si"),
        help: .hidden("Multiply the SI groups by this after initialization (equivalent scaling: only lr-si / ||w||^2 matters)."))
    var initScaleSI = 1.0

    func validate() throws {
        try require(epochs > 0, "--epochs", epochs, "a positive number of passes")
        if let steps { try require(steps > 0, "--steps", steps, "a positive number of steps") }
        // beyond 1e9 a Float update overflows for gradients that are not even large
        try require(lrSI > 0 && lrSI <= 1e9, "--lr-si", lrSI, "a rate in (0, 1e9]")
        if let lrSV { try require(lrSV >= 0 && lrSV <= 1e9, "--lr-sv", lrSV, "a rate in [0, 1e9]") }
        try require(momentum >= 0 && momentum < 1, "--momentum", momentum, "a value in [0, 1)")
        try require(weightDecaySI >= 0 && weightDecaySI.isFinite, "--weight-decay-si", weightDecaySI, "a finite value >= 0")
        try require(weightDecaySV >= 0 && weightDecaySV.isFinite, "--weight-decay-sv", weightDecaySV, "a finite value >= 0")
        try require(
            bnRecalibrate >= 0 && bnRecalibrate <= 100_000, "--bn-recalibrate", bnRecalibrate, "0 to 100000 global batches")
        try require(initScaleSI > 0 && initScaleSI.isFinite, "--init-scale-si", initScaleSI, "a finite factor > 0")
    }

    func apply(to c: inout TrainingConfiguration, model: ModelKind) {
        c.epochs = epochs
        c.steps = steps
        c.seed = seed
        c.bnRecalibrationBatches = bnRecalibrate
        c.initScaleSI = initScaleSI
        c.invariant = GroupRule(learningRate: lrSI, schedule: scheduleSI, momentum: momentum, weightDecay: weightDecaySI)
        // measured on synthetic-images: 0.1 leaves the cnn at 77% after 300 steps, 0.02 reaches 90%
        let defaultSV = model == .mlp ? 0.1 : 0.02
        c.variant = GroupRule(
            learningRate: lrSV ?? defaultSV, schedule: scheduleSV, momentum: momentum, weightDecay: weightDecaySV)
    }
}

struct CheckpointOptions: ParsableArguments {
    @Option(name: .customLong("checkpoint-dir"), help: "Write checkpoints (safetensors) to this directory (rank 0).")
    var checkpointDir: String?
    @Option(name: .customLong("checkpoint-every"), help: "Steps between checkpoints (one is also written after the last step).")
    var checkpointEvery = 1000
    @Option(name: .customLong("keep-checkpoints"), help: "Checkpoints kept, newest first.")
    var keepCheckpoints = 3
    @Option(
        help: "Continue from 'auto' (the newest checkpoint in --checkpoint-dir that loads, if any) or from a checkpoint file.")
    var resume: String?
    @Flag(
        name: .customLong("keep-best"),
        help: "Also keep best.safetensors in --checkpoint-dir: the model of the best --eval-every accuracy so far.")
    var keepBest = false

    func validate() throws {
        try require(checkpointEvery >= 1, "--checkpoint-every", checkpointEvery, "a positive number of steps")
        try require(keepCheckpoints >= 1, "--keep-checkpoints", keepCheckpoints, "at least 1")
        if keepBest && checkpointDir == nil {
            throw ValidationError("--keep-best writes best.safetensors into --checkpoint-dir; give the directory.")
        }
        if resume == "auto" && checkpointDir == nil {
            throw ValidationError("--resume auto looks in --checkpoint-dir; give the directory (or --resume PATH for one file).")
        }
    }

    func apply(to c: inout TrainingConfiguration) {
        c.checkpointDirectory = checkpointDir
        c.checkpointEvery = checkpointEvery
        c.keepCheckpoints = keepCheckpoints
        c.resume = resume.map(ResumeSource.init(argument:))
        c.keepBest = keepBest
    }
}

struct DiagnosticOptions: ParsableArguments {
    @Option(
        name: .customLong("log-every"),
        help: "Steps between progress lines and metrics records (default: about 20 per run); logging never changes training.")
    var logEvery: Int?
    @Option(
        name: .customLong("eval-every"),
        help: "Steps between evaluations of the validation split (--val-fraction), else the test split: loss, top-1, top-5.")
    var evalEvery: Int?
    @Option(
        help:
            "Write JSON Lines metrics to this file (rank 0): the run's plan, then loss, accuracy and per-group monitors per logged step."
    )
    var metrics: String?
    @Option(
        help: .hidden(
            "Write a Chrome trace of steps 2-11 (--timeline-steps) to this file (rank 0); open it in https://ui.perfetto.dev."))
    var timeline: String?
    @Flag(help: "Print only the summary, not a progress line per logged step.")
    var quiet = false
    @Option(
        name: .customLong("timeline-steps"),
        help: .hidden("Steps the timeline records, 'FIRST-LAST' (1-based)."))
    var timelineSteps = "2-11"
    @Option(
        name: .customLong("max-bad-steps"),
        help: .hidden("Stop after this many consecutive steps whose summed gradient is NaN or infinite (each is skipped)."))
    var maxBadSteps = 5
    @Option(
        name: .customLong("stall-timeout"),
        help: .hidden("Seconds a rank may make no progress before it ends the job (0: never)."))
    var stallTimeout = 300.0
    /// Test-only faults, repeatable: nan-input:STEP:RANK, nan-gradient:STEP:RANK, stall:STEP:RANK,
    /// kill:STEP:RANK, slow-rank:RANK:MICROSECONDS (per sample), shared-memory-extra:BYTES.
    @Option(name: .customLong("debug-fault"), help: .private)
    var debugFaults: [String] = []

    func validate() throws {
        if let logEvery { try require(logEvery >= 1, "--log-every", logEvery, "a positive number of steps") }
        if let evalEvery { try require(evalEvery >= 1, "--eval-every", evalEvery, "a positive number of steps") }
        if Train.stepRange(timelineSteps) == nil {
            throw ValidationError(
                "--timeline-steps \(timelineSteps) is not accepted: use FIRST-LAST, 1-based steps with FIRST <= LAST and at most 10000 steps."
            )
        }
        try require(maxBadSteps >= 1, "--max-bad-steps", maxBadSteps, "at least 1")
        try require(stallTimeout >= 0 && stallTimeout.isFinite, "--stall-timeout", stallTimeout, "seconds >= 0 (0: no watchdog)")
        var c = TrainingConfiguration()
        for fault in debugFaults { try Self.apply(fault: fault, to: &c) }
    }

    func apply(to c: inout TrainingConfiguration) {
        c.logEvery = logEvery
        c.evalEvery = evalEvery
        c.metricsPath = metrics
        c.timelinePath = timeline
        c.timelineWindow = Train.stepRange(timelineSteps)!
        c.printProgress = !quiet
        c.maxBadSteps = maxBadSteps
        c.stallTimeout = stallTimeout
        for fault in debugFaults { try! Self.apply(fault: fault, to: &c) }  // validated
    }

    /// One `--debug-fault KIND:A[:B]` into the configuration's test-only fields.
    static func apply(fault: String, to c: inout TrainingConfiguration) throws {
        let parts = fault.split(separator: ":", omittingEmptySubsequences: false)
        let numbers = parts.dropFirst().map { Int($0) }
        let kinds =
            "nan-input:STEP:RANK, nan-gradient:STEP:RANK, stall:STEP:RANK, kill:STEP:RANK, slow-rank:RANK:MICROSECONDS (at most 100000) or shared-memory-extra:BYTES"
        guard let kind = parts.first, numbers.allSatisfy({ ($0 ?? -1) >= 0 }) else {
            throw ValidationError("--debug-fault \(fault) is not accepted: use \(kinds).")
        }
        let n = numbers.map { $0! }
        switch (kind, n.count) {
        case ("nan-input", 2): c.debugNaN = (n[0], n[1])
        case ("nan-gradient", 2): c.debugNaNGradient = (n[0], n[1])
        case ("stall", 2): c.debugStall = (n[0], n[1])
        case ("kill", 2): c.debugKill = (n[0], n[1])
        case ("slow-rank", 2) where n[1] <= 100_000: c.debugSlowRank = (n[0], n[1])
        case ("shared-memory-extra", 1): c.debugSharedMemoryExtra = n[0]
        default: throw ValidationError("--debug-fault \(fault) is not accepted: use \(kinds).")
        }
    }
}

extension Train {
    /// `FIRST-LAST` of `--timeline-steps`.
    static func stepRange(_ text: String) -> ClosedRange<Int>? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
        guard parts.count == 2, let first = parts[0], let last = parts[1], first >= 1, first <= last, last - first < 10_000 else {
            return nil
        }
        return first...last
    }

}

/// `--cache-dir`, for train and eval alike.
struct CacheDirectoryOption: ParsableArguments {
    @Option(
        name: .customLong("cache-dir"),
        help: .hidden(
            "folder:DIR images: keep the decode cache in this directory (default: in DIR; needed when DIR is read-only)."))
    var cacheDir: String?

    func validate() throws {
        if let cacheDir { try require(!cacheDir.isEmpty, "--cache-dir", "''", "a directory path") }
    }
}
