import Collectives
import Data
import Layers
import Optimizers
import TensorCore
#if canImport(Glibc)
    import Glibc
#endif

/// One data-parallel training run: every rank builds the same network, takes its share of each
/// global batch, and all ranks apply the same update.
///
/// `init` does no communication (so that a bad file can be reported and agreed on before any
/// collective); `run` starts with the collectives that make the replicas identical.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public let communicator: Communicator
    public let console: RankConsole
    public let splits: DataSplits
    public let model: any Network
    public let optimizer: ScaleInvariantSGD
    public let totalSteps: Int
    /// Steps between progress lines and metrics records.
    public let logEvery: Int
    var sampler: ShardSampler
    private var resumedFrom = 0
    /// Rank 0: the checkpoint this run resumed from.
    private var resumedCheckpoint: String?
    var watchdog: StallWatchdog?
    /// BN running statistics before the current step, restored when the step is skipped.
    private lazy var buffersBeforeStep = FlatBuffer(count: model.buffers.count)
    /// BN statistics reductions: over a communicator of their own once `prepareCommunication` ran,
    /// so that they never queue behind a gradient bucket in flight.
    let statistics: TimedStatistics
    /// The gradient allreduce, bucket by bucket, overlapped with backward or not (the plan's);
    /// what `ReplicatedUpdate` sums with.
    let reduction: OverlappedGradientReduction
    /// How the ranks stay in step, chosen once by `prepareCommunication` (nil before).
    public private(set) var plan: SynchronizationPlan?
    /// The plan's gradient sum and update.
    private var synchronization: GradientSynchronization?
    private var communicationPrepared = false
    /// What the watchdog says a rank waits in during the gradient sum (the plan, once).
    private var synchronizationProgress = ""
    /// `--timeline`: a Chrome trace of a window of steps.
    let timeline: Timeline?
    /// Every rank normalizes with the same BN statistics (synchronized, or a single rank).
    private var sharedStatistics: Bool { configuration.batchNormSync == .sync || communicator.size == 1 }
    private let input: FlatBuffer
    private let dlogits: FlatBuffer
    var labels: [Int32]
    private let metrics: MetricsLog?
    /// `--deterministic`: the chunks of each batch (nil otherwise).
    let chunkPlan: ChunkPlan?
    /// This rank's chunks of every training batch (all have the global batch's size).
    private let stepChunks: [Range<Int>]?
    /// Every rank's share of the global batch: even, or from their speeds (`--balance on`).
    private(set) var shares: BatchShares
    /// Scores the model on the test (or validation) split.
    private let evaluator: Evaluator
    /// What a rank holds in memory, estimated before the network was built.
    public let memory: MemoryEstimate

    /// Loads the data and builds the network and optimizer. Collective for `folder:` data only: the
    /// ranks of each node split the node's communicator and share the decoding (`ImageFolder`);
    /// otherwise no communication. Rank 0 prints the data's notes.
    /// - Throws: `DataError` for unusable data files, `TrainingError.configuration` for settings
    ///   that do not fit the data (widths, batch size).
    public convenience init(_ configuration: TrainingConfiguration, communicator: Communicator, console: RankConsole) throws {
        var options = DataLoadOptions(imageSize: configuration.imageSize, cacheDirectory: configuration.cacheDirectory)
        if case .folder = configuration.data {
            options.team = CommunicatorDecodeTeam(try communicator.nodeCommunicator())
        }
        var splits = try configuration.data.loadUnstandardized(options)
        for note in splits.notes { console.root("data: \(note)") }
        if configuration.validationFraction > 0 {
            guard splits.train.count >= 2 else {
                throw TrainingError.configuration(
                    "--val-fraction \(configuration.validationFraction) needs at least 2 training samples; \(configuration.data) has \(splits.train.count)"
                )
            }
            splits.holdOut(fraction: configuration.validationFraction, seed: configuration.seed)
        }
        splits.standardize(splits.defaultStandardization)
        try self.init(configuration, splits: splits, communicator: communicator, console: console)
    }

    /// Builds a run on data already in memory (benchmarks, tests). No communication.
    public init(
        _ configuration: TrainingConfiguration, splits: DataSplits, communicator: Communicator,
        console: RankConsole
    ) throws {
        self.configuration = configuration
        self.communicator = communicator
        self.console = console
        self.splits = splits
        let train = splits.train
        let p = communicator.size
        guard configuration.globalBatch >= p else {
            throw TrainingError.configuration(
                "--global-batch \(configuration.globalBatch) is smaller than the \(p) ranks; every rank needs at least one sample per step"
            )
        }
        guard configuration.globalBatch <= train.count else {
            throw TrainingError.configuration(
                "--global-batch \(configuration.globalBatch) exceeds the \(train.count) training samples of \(configuration.data)"
            )
        }
        // buffers hold the largest local share of a step, and evaluation chunks of at least 256 rows
        // (64 images for conv nets, whose activations are larger)
        if let conflict = configuration.conflict { throw TrainingError.configuration(conflict) }
        chunkPlan =
            configuration.deterministic
            ? try ChunkPlan(
                chunks: configuration.chunks, ranks: p, rank: communicator.rank, globalBatch: configuration.globalBatch) : nil
        stepChunks = chunkPlan?.localChunks(of: configuration.globalBatch)
        shares = BatchShares(globalBatch: configuration.globalBatch, ranks: p, balanced: configuration.balance == .on)
        let largestShare = shares.limits.upperBound
        let rows = Swift.max(largestShare, Evaluator.rows(for: configuration.model))
        memory = MemoryEstimate(configuration, splits: splits, maxBatch: rows)
        // the data is resident by now (and counted in what is available): the rest must fit
        if let available = MemoryEstimate.availableBytes(), memory.toAllocateBytes > available.bytes {
            let m = memory, text = MemoryEstimate.text
            let batchDriven = largestShare > Evaluator.rows(for: configuration.model)
            throw TrainingError.configuration(
                "\(m.drivingFlags(configuration, batchDriven: batchDriven)) needs about \(text(m.toAllocateBytes)) more per rank (parameters with their gradients and the update's buffers \(text(m.parameterBytes)), activations \(text(m.activationBytes)); the data holds \(text(m.dataBytes))), more than the \(text(available.bytes)) a rank may still use here (\(available.source)); make the network smaller"
                    + (batchDriven ? ", or the batch per rank (more ranks or a smaller --global-batch)" : "")
            )
        }
        model = try configuration.makeNetwork(for: train, maxBatch: rows)
        try Self.checkBatchNormBatch(configuration, ranks: p, valuesPerSample: model.batchNormValuesPerSample)
        if configuration.augmentation != .none && train.image == nil {
            throw TrainingError.configuration(
                "--augment \(configuration.augmentation.rawValue) needs image data, but \(configuration.data) holds vectors; use --augment none"
            )
        }
        model.initialize(seed: configuration.seed)
        if configuration.initScaleSI != 1 {
            for g in model.groups where g.kind == .scaleInvariant {
                scale(model.parameters.values.slice(g.range), by: Float(configuration.initScaleSI))
            }
        }
        optimizer = ScaleInvariantSGD(
            groups: model.groups, parameterCount: model.parameters.layout.count,
            invariant: configuration.invariant, variant: configuration.variant)
        sampler = ShardSampler(sampleCount: train.count, globalBatch: configuration.globalBatch, seed: configuration.seed)
        totalSteps = configuration.steps ?? configuration.epochs * sampler.stepsPerEpoch
        logEvery = configuration.logEvery ?? Swift.max(1, totalSteps / 20)
        timeline = configuration.timelinePath.map { _ in Timeline(window: configuration.timelineWindow) }
        statistics = TimedStatistics(LocalStatistics(), timeline: timeline)
        reduction = OverlappedGradientReduction(
            GradientBuckets(layout: model.parameters.layout, capBytes: configuration.bucketBytes),
            gradients: model.parameters.gradients, communicator: communicator,
            overlap: configuration.overlap == .on && !configuration.deterministic, ordered: configuration.deterministic)
        model.observer = StepObserverAdapter(timeline: timeline, reduction: reduction)
        input = FlatBuffer(count: rows * train.dimension)
        dlogits = FlatBuffer(count: rows * train.classes)
        labels = [Int32](repeating: 0, count: rows)
        evaluator = Evaluator(
            model: model, communicator: communicator, chunkPlan: chunkPlan,
            pieceRows: chunkPlan == nil ? model.maxBatch : Evaluator.rows(for: configuration.model))
        if communicator.isRoot, let path = configuration.timelinePath { try Timeline.checkWritable(path) }
        if communicator.isRoot, let directory = configuration.checkpointDirectory {
            do {
                try CheckpointDirectory(path: directory, keep: configuration.keepCheckpoints).checkWritable()
            } catch let error as DataError {
                throw TrainingError.configuration(
                    "--checkpoint-dir \(directory): " + (error.path == directory ? error.problem : "\(error)"))
            }
        }
        metrics =
            try communicator.isRoot
            ? configuration.metricsPath.map { try MetricsLog(path: $0, append: configuration.resume != nil) } : nil
    }

    // MARK: the run

    /// Collective: trains for `totalSteps`, logging every `logEvery` steps, then evaluates.
    public func run() throws -> RunSummary {
        let watchdog =
            configuration.stallTimeout > 0 ? StallWatchdog(timeout: configuration.stallTimeout, rank: communicator.rank) : nil
        defer { watchdog?.stop() }
        self.watchdog = watchdog
        try agreeOnConfiguration()
        if communicator.size > 1 { try watchdog?.shareHeartbeats(over: communicator) }
        let start = try restoreOrStart()
        if start == totalSteps && start > 0 {  // every rank got the same step
            console.root(
                "already complete: the checkpoint holds all \(totalSteps) steps of this run, so there is nothing to train (raise --steps or --epochs to continue; autorate eval --checkpoint FILE scores it)"
            )
            return RunSummary(
                steps: totalSteps, seconds: 0, trainLoss: .nan, testLoss: .nan, testAccuracy: .nan, testTop5: nil,
                samplesPerSecond: 0)
        }
        try synchronizeReplicas()
        try prepareCommunication()
        try timeline?.alignClocks(communicator)
        describe()
        // a resumed run repeats the steps after its checkpoint: the records an interrupted part wrote
        // for them are superseded by the ones that follow this record
        if start > 0 {
            try metrics?.write(
                .object([
                    ("event", .string("resume")), ("step", .integer(start)),
                    ("checkpoint", .string(resumedCheckpoint ?? "")),
                    ("supersedes", .string("earlier records with step > \(start)")),
                ]))
        }
        // the first record of a run (and of each resumed part of it): where it starts, and how
        try metrics?.write(
            .object([
                ("event", .string("start")), ("step", .integer(start)), ("ranks", .integer(communicator.size)),
                ("classes", .array(splits.train.resolvedClassNames.map { .string($0) })),
                ("plan", plan!.json), ("plan_line", .string(plan!.line)),
            ]))
        let checkpoints = configuration.checkpointDirectory.map {
            CheckpointDirectory(path: $0, keep: configuration.keepCheckpoints)
        }
        var latestCheckpoint: String? = start > 0 ? resumedCheckpoint ?? "the checkpoint this run resumed from" : nil
        func reportInterruption(after step: Int) {
            guard communicator.isRoot else { return }
            InterruptReport.update(
                "after step \(step) of \(totalSteps); "
                    + (latestCheckpoint.map { "the latest state is in \($0); continue with --resume auto (same flags)" }
                        ?? "no checkpoint was written (--checkpoint-dir DIR keeps one every --checkpoint-every steps)"))
        }
        reportInterruption(after: start)
        if communicator.isRoot { InterruptReport.install() }
        let clock = Stopwatch()
        var window = Window()
        var lastLog = (time: 0.0, step: start)
        resumedFrom = start
        var lastLoss = Double.nan
        var badSteps = 0
        var bestScore = try keptBestScore(resumedAt: start)
        for t in start..<totalSteps {
            let logging = (t + 1) % logEvery == 0 || t + 1 == totalSteps
            let result = try trainStep(t, monitor: logging)
            if result.skipped {
                badSteps += 1
                console.warning(
                    "step \(t + 1): the summed gradient, or the update it gives, is not finite (NaN or Inf); the step is skipped on every rank and its BN statistics restored (\(badSteps) in a row, --max-bad-steps \(configuration.maxBadSteps))"
                )
                try metrics?.write(
                    .object([("event", .string("skipped_step")), ("step", .integer(t + 1)), ("consecutive", .integer(badSteps))]))
                if badSteps >= configuration.maxBadSteps { throw try nonFiniteUpdates(step: t + 1, count: badSteps) }
                continue
            }
            badSteps = 0
            window.add(result)
            if logging {
                let global = try window.reduce(
                    over: communicator, ordered: chunkPlan != nil, globalBatch: configuration.globalBatch)
                let timing = try timingRecord(window, sums: global.timing)
                window = Window()
                guard global.loss.isFinite else { throw TrainingError.nonFinite(step: t, what: "the training loss") }
                let now = clock.seconds
                let rate = Double((t + 1 - lastLog.step) * configuration.globalBatch) / Swift.max(now - lastLog.time, 1e-9)
                lastLog = (now, t + 1)
                lastLoss = global.loss
                try report(
                    step: t + 1, loss: global.loss, accuracy: global.accuracy, samplesPerSecond: rate,
                    elapsed: now, monitors: result.monitors, shares: result.shares, timing: timing)
            }
            if let every = configuration.evalEvery, (t + 1) % every == 0 {
                try withSharedRunningStatistics {
                    let score = try evaluateDuringTraining(step: t + 1)
                    if let checkpoints, configuration.keepBest, score.top1 > (bestScore ?? -1) {
                        bestScore = score.top1
                        if communicator.isRoot {
                            let path = try saveCheckpoint(
                                completedSteps: t + 1, into: checkpoints, name: Self.bestName,
                                metadata: [Self.bestScoreKey: "\(score.top1)"])
                            if configuration.printProgress { console.root("best so far: \(path)") }
                        }
                    }
                }
            }
            // the last step's checkpoint is written after the BN recalibration, below
            if let checkpoints, (t + 1) % configuration.checkpointEvery == 0 && t + 1 < totalSteps, communicator.isRoot {
                let path = try measured("checkpoint", "checkpoint") {
                    try saveCheckpoint(completedSteps: t + 1, into: checkpoints)
                }
                latestCheckpoint = path
                if configuration.printProgress { console.root("checkpoint: \(path)") }
            }
            reportInterruption(after: t + 1)
        }
        timeline?.stop()
        if let timeline, let path = configuration.timelinePath {
            try timeline.write(to: path, over: communicator)
            console.root(
                "timeline: \(path) (steps \(timeline.window.lowerBound)-\(timeline.window.upperBound); open it in https://ui.perfetto.dev)"
            )
        }
        let seconds = clock.seconds
        let trainingStatistics = Array(model.buffers.all)
        try recalibrateBatchNorm()
        try averageLocalStatistics()
        try ReplicaCheck.verify([model.parameters.values, model.buffers], over: communicator, when: "after training")
        let test = try evaluate(splits.test)
        // the final model, with the statistics the printed accuracy used
        if let checkpoints, communicator.isRoot {
            let path = try saveCheckpoint(
                completedSteps: totalSteps, into: checkpoints,
                trainingStatistics: trainingStatistics == Array(model.buffers.all) ? nil : trainingStatistics)
            latestCheckpoint = path
            reportInterruption(after: totalSteps)
            if configuration.printProgress { console.root("checkpoint: \(path) (the final model)") }
        }
        let summary = RunSummary(
            steps: totalSteps, seconds: seconds, trainLoss: lastLoss, testLoss: test.loss,
            testAccuracy: test.top1, testTop5: test.top5,
            samplesPerSecond: Double((totalSteps - start) * configuration.globalBatch) / seconds)
        try metrics?.write(summary.json.adding("parameters_fnv1a", .string(parameterFingerprint)))
        if chunkPlan != nil {
            console.root(
                "deterministic (\(configuration.chunks) chunks): parameters and BN buffers fingerprint \(parameterFingerprint) (FNV-1a)"
            )
        }
        console.root(
            String(
                cFormat:
                    "done: %d steps in %.1f s (%.0f samples/s); train loss %.4f; test loss %.4f, test accuracy %.2f%% on %d samples",
                summary.steps, summary.seconds, summary.samplesPerSecond, summary.trainLoss,
                summary.testLoss, 100 * summary.testAccuracy, splits.test.count))
        return summary
    }

    /// One data-parallel step, top to bottom. Collective.
    public func trainStep(_ t: Int, monitor: Bool) throws -> StepResult {
        try prepareCommunication()
        let synchronization = synchronization!
        let began = Stopwatch.now()
        timeline?.begin(step: t + 1)
        statistics.reset()
        // 1. shard: this rank's slice of global batch t
        let x = measured("data", "data") {
            let mine = sampler.indices(step: t, positions: shares.positions(of: communicator.rank))
            return gather(splits.train, mine, augmentedFor: t / sampler.stepsPerEpoch)
        }
        injectFaults(t, x)
        // deterministic mode: this rank's chunks of the batch, for every sum over samples
        if let stepChunks { model.chunks.set(chunks: stepChunks) }
        defer { model.chunks.clear() }
        buffersBeforeStep.all.update(fromContentsOf: model.buffers.all)
        // 2. forward; each BN sums (count, sum, sum of squares) over ranks when synchronized
        watchdog?.progress(step: t + 1, "the forward pass (synchronized BN: MPI_Allreduce of the batch statistics)")
        let logits = try model.forward(x, reducer: statistics)
        // 3. loss of this rank's samples, gradient divided by the *global* batch size
        let dz = Matrix(dlogits.pointer, rows: x.rows, cols: model.classes)
        let sums = measured("loss", "forward") { lossAndGradient(logits, dlogits: dz) }
        // 4. backward (writes every gradient); each BN sums (sum dy, sum dy*xhat) over ranks when
        //    synchronized; with overlap, each gradient bucket starts its allreduce once filled
        watchdog?.progress(step: t + 1, "the backward pass (synchronized BN: MPI_Allreduce of the gradient sums)")
        synchronization.beginBackward()
        try model.backward(dz, reducer: statistics, radial: sharedStatistics ? .global : .local)
        injectGradientFault(t)
        // 5. the gradient sum over ranks and the same update on every rank (SI groups with eta_w,
        //    SV groups with eta_g), which is also the NaN/Inf guard; a skipped step restores its
        //    BN statistics
        watchdog?.progress(step: t + 1, synchronizationProgress)
        let outcome = try synchronization.sumAndUpdate(monitor: monitor)
        if outcome.monitors == nil { model.buffers.all.update(fromContentsOf: buffersBeforeStep.all) }
        // 6. bookkeeping: where the time went, and with --balance on the next step's shares
        var timing = StepTiming()
        timing.gradientExposed = outcome.exposedSeconds
        timing.step = Stopwatch.now() - began
        timing.bnCommunication = statistics.seconds
        timing.gradientHidden = reduction.hiddenSeconds
        let counts = shares.counts
        try rebalance(&timing, step: t)
        return StepResult(
            lossSum: sums.loss, correct: sums.correct, count: x.rows, monitors: outcome.monitors ?? [],
            skipped: outcome.monitors == nil, timing: timing, shares: shares.balanced ? counts : nil)
    }

    /// Collective (`--balance on`): every rank's compute seconds of this step in one allgather, from
    /// which every rank sets the same shares for the next step. Its time joins the step and the small
    /// collectives on the critical path (`bnCommunication`).
    private func rebalance(_ timing: inout StepTiming, step t: Int) throws {
        guard shares.balanced else { return }
        watchdog?.progress(step: t + 1, "the --balance allgather of every rank's compute time")
        let start = Stopwatch.now()
        let all = try communicator.allgather(timing.compute)
        shares.observe(computeSeconds: all)
        let end = Stopwatch.now()
        timing.step += end - start
        timing.bnCommunication += end - start
        timeline?.span(
            "allgather step times (--balance)", "communication", .communication, from: start, to: end, bytes: all.count * 8)
    }

    /// The GEMMs of one step on this rank when the ranks hold `counts` samples: the benchmark's
    /// GEMM-only bound. With weight gradients over the node's batch, this rank's weight rows over
    /// every rank's samples replace its whole weight gradient over its own.
    public func gemmWorkload(counts: [Int]) -> [GemmCall] {
        synchronization!.gemmWorkload(counts: counts, rank: communicator.rank)
    }

    /// The gradient buckets (reverse layer order), for the benchmark's allreduce timing.
    public var gradientBucketRanges: [Range<Int>] { reduction.buckets.ranges }
    /// Whether the plan reduces gradient buckets while backward goes on.
    public var overlapsGradientReduction: Bool { reduction.overlap }
    /// Collective: the gradients `range` reduced alone, as a replicated step would (the benchmark).
    public func reduceGradientsAlone(_ range: Range<Int>) throws { try reduction.reduceAlone(range) }

    /// Collective the first time: chooses the plan and builds its synchronization. BN statistics
    /// get a communicator of their own (a duplicate), so that their small, latency-bound
    /// reductions are matched apart from the gradient buckets. With a sharded update in node
    /// shared memory, the ranks' parameters become one memory here: whatever writes
    /// `model.parameters.values` on one rank (a checkpoint's load, the start-up broadcast) must
    /// come before. A sharded update also sets where the MLP's backward cuts its weight GEMMs
    /// (the same on every rank), so no backward may come before either.
    public func prepareCommunication() throws {
        guard !communicationPrepared else { return }
        communicationPrepared = true
        if configuration.batchNormSync == .sync && communicator.size > 1 {
            let own = try communicator.duplicate()
            statistics.inner = chunkPlan == nil ? SynchronizedStatistics(communicator: own) : OrderedStatistics(communicator: own)
        }
        let oneNode = try communicator.size == 1 || communicator.ranksOnThisNode() == communicator.size  // collective
        // weight gradients cut at the segments and over the node's batch: not in deterministic
        // mode, whose sums over samples follow its chunk tree
        let network = chunkPlan == nil ? model as? NodeBatchGradients : nil
        var plan = SynchronizationPlan.choose(
            configuration, ranks: communicator.size, oneNode: oneNode, plainSteps: optimizer.isPaperAlgorithm,
            nodeBatchNetwork: (network?.sharedActivationFloats ?? 0) > 0)
        reduction.overlap = plan.overlap
        let radialTermsOver = sharedStatistics ? nil : communicator
        if plan.sharded {
            var sharded: ShardedUpdate
            do {
                sharded = try ShardedUpdate(
                    store: model.parameters, communicator: communicator, sharedMemory: plan.gradientSum == .nodeSharedMemory,
                    network: network, overNodeBatch: plan.weightGradientsOverNodeBatch, evenShares: !plan.balanced,
                    extraBytes: configuration.debugSharedMemoryExtra)
            } catch let error as SharedMemoryError {
                // every rank threw (the setup agrees on failure): go on through MPI, and say so
                console.warning("\(error); the sharded update goes through MPI instead")
                sharded = try ShardedUpdate(
                    store: model.parameters, communicator: communicator, sharedMemory: false, network: network)
                plan.gradientSum = .reduceScatter
                plan.weightGradientsOverNodeBatch = false
            }
            sharded.context = (model, optimizer, timeline, radialTermsOver)
            synchronization = sharded
        } else {
            synchronization = ReplicatedUpdate(
                reduction: reduction, model: model, optimizer: optimizer, timeline: timeline, radialTermsOver: radialTermsOver)
        }
        self.plan = plan
        synchronizationProgress = "the gradient sum and the update (\(plan.line))"
    }

    /// Collective: the metrics' `time_ms` (means over the window and the ranks) and, up to 256
    /// ranks, `ranks`: each rank's own split, so that a slow or waiting rank shows.
    private func timingRecord(_ window: Window, sums: StepTiming) throws -> JSONValue {
        let steps = window.steps
        guard case let .object(fields) = sums.json(meanOver: steps * communicator.size) else { return .null }
        guard communicator.size > 1 && communicator.size <= 256 else { return .object(fields) }
        let t = window.timing
        var all = [Double](repeating: 0, count: t.values.count * communicator.size)
        let mine = t.values
        try mine.withUnsafeBytes { input in try all.withUnsafeMutableBytes { try communicator.allgather(input, into: $0) } }
        let ranks: [JSONValue] = (0..<communicator.size).map { r in
            StepTiming(values: all[(4 * r)..<(4 * r + 4)]).json(meanOver: steps)
        }
        return .object(fields + [("ranks", .array(ranks))])
    }

    /// `body`, drawn on the timeline when it records.
    private func measured<T>(_ name: String, _ category: String, _ body: () throws -> T) rethrows -> T {
        guard let timeline, timeline.recording else { return try body() }
        return try timeline.measure(name, category, body)
    }

    /// BN over one value per channel outputs beta whatever the input (x - mean = 0): every BN layer
    /// must normalize at least 2 values per channel, over the global batch (synchronized) or over the
    /// smallest share of a rank (`--bn local`).
    static func checkBatchNormBatch(_ c: TrainingConfiguration, ranks p: Int, valuesPerSample: Int?) throws {
        guard let m = valuesPerSample else { return }
        let perSample = (2 + m - 1) / m  // the fewest samples that give 2 values
        if c.batchNormSync == .sync || p == 1 {
            guard c.globalBatch * m < 2 else { return }
            throw TrainingError.configuration(
                "--global-batch \(c.globalBatch) gives a BN layer \(c.globalBatch * m) value per channel to normalize, and BN needs at least 2 (over one value its output is beta whatever the input); use --global-batch \(perSample) or more"
            )
        }
        let smallest = c.globalBatch / p
        guard smallest * m < 2 else { return }
        throw TrainingError.configuration(
            "--bn local normalizes over each rank's share, and --global-batch \(c.globalBatch) over \(p) ranks leaves a rank \(smallest) sample(s), \(smallest * m) value(s) per channel for a BN layer (at least 2 are needed); use --global-batch \(p * perSample) or more, or --bn sync"
        )
    }

    /// Collective (every rank skipped the same steps): the error that ends a run whose updates were
    /// not finite `count` times in a row, naming the group a rank found first and its rate's flag.
    private func nonFiniteUpdates(step: Int, count: Int) throws -> TrainingError {
        let index = try communicator.allreduce(optimizer.lastNonFiniteGroup ?? -1, .max)
        guard index >= 0 else { return .nonFinite(step: step, what: "the update of \(count) consecutive steps") }
        let group = model.groups[index]
        let (flag, rule) =
            group.kind == .scaleInvariant ? ("--lr-si", configuration.invariant) : ("--lr-sv", configuration.variant)
        return .nonFinite(
            step: step,
            what:
                "the update of group \(group.name) (\(group.kind == .scaleInvariant ? "scale-invariant" : "scale-variant"), \(flag) \(rule.learningRate)) in \(count) consecutive steps",
            advice: "lower \(flag), or check the data for NaN or infinite values")
    }

    /// The checkpoint `--keep-best` keeps in the checkpoint directory, and its score's metadata key.
    public static let bestName = "best.safetensors"
    static let bestScoreKey = "autorate.best_top1"

    /// Collective: with `--keep-best`, the score of the best checkpoint a resumed run kept so far
    /// (rank 0 reads it), so that a worse model does not replace it; nil when starting afresh.
    private func keptBestScore(resumedAt start: Int) throws -> Double? {
        guard configuration.keepBest, start > 0, let directory = configuration.checkpointDirectory else { return nil }
        var score = [-1.0]
        if communicator.isRoot, let file = try? CheckpointDirectory.load(directory + "/" + Self.bestName),
            let kept = file.metadata[Self.bestScoreKey].flatMap(Double.init)
        {
            score[0] = kept
        }
        try communicator.broadcast(&score, root: 0)
        return score[0] >= 0 ? score[0] : nil
    }

    /// Collective: runs `body` with BN running statistics every rank shares. With `--bn local` over
    /// several ranks each rank's differ, so an evaluation (and the best checkpoint) uses their
    /// average, as the final model does; training then continues with each rank's own.
    private func withSharedRunningStatistics(_ body: () throws -> Void) throws {
        guard configuration.batchNormSync == .local && communicator.size > 1 else { return try body() }
        let own = Array(model.buffers.all)
        defer { _ = model.buffers.all.update(fromContentsOf: own) }
        try averageLocalStatistics()
        try body()
    }

    /// Collective: scores the validation split (the test split without one) with the running
    /// statistics of now, and reports it; every rank gets the scores.
    private func evaluateDuringTraining(step: Int) throws -> EvaluationResult {
        let (name, data) = splits.validation.map { ("validation", $0) } ?? ("test", splits.test)
        let score = try evaluate(data)
        if configuration.printProgress {
            console.root(
                String(cFormat: "step %d/%d  ", step, totalSteps) + name + String(cFormat: " loss %.4f  ", score.loss)
                    + score.accuracyText)
        }
        var record: [(String, JSONValue)] = [
            ("event", .string("eval")), ("step", .integer(step)), ("split", .string(name)),
            ("samples", .integer(score.count)), ("loss", .number(score.loss)), ("top1", .number(score.top1)),
        ]
        if let top5 = score.top5 { record.append(("top5", .number(top5))) }
        try metrics?.write(.object(record))
        return score
    }

    /// Collective: the scores on `data` with BN running statistics (see `Evaluator`).
    public func evaluate(_ data: Dataset) throws -> EvaluationResult { try evaluator.evaluate(data) }

    // MARK: helpers

    /// Copies the rows `indices` of `data` into the input buffer and their labels into `labels`;
    /// with `augmentedFor: epoch`, applies the configured augmentation, drawn from (seed, epoch,
    /// sample index) so that the global batch does not depend on the number of ranks.
    func gather(_ data: Dataset, _ indices: ArraySlice<Int32>, augmentedFor epoch: Int? = nil) -> Matrix {
        let d = data.dimension
        let x = Matrix(input.pointer, rows: indices.count, cols: d)
        data.features.withUnsafeBufferPointer { f in
            for (row, index) in indices.enumerated() {
                let source = f.baseAddress! + Int(index) * d
                if let epoch, let image = data.image, configuration.augmentation != .none {
                    configuration.augmentation.apply(
                        source, into: x.row(row), shape: image, seed: configuration.seed, epoch: epoch, sampleIndex: Int(index))
                } else {
                    x.row(row).update(from: source, count: d)
                }
                labels[row] = data.labels[Int(index)]
            }
        }
        return x
    }

    /// Collective: with `--resume`, rank 0 loads the checkpoint and the others receive the step and
    /// the optimizer state (parameters and BN buffers follow in `synchronizeReplicas`). Returns the
    /// first step to run. A checkpoint rank 0 refuses stops every rank with its message.
    private func restoreOrStart() throws -> Int {
        guard let resume = configuration.resume else { return 0 }
        var status = [0, 0, 0]  // 0: start afresh, 1: resumed at step status[1] (optimizer step status[2]), 2: refused
        var refusal: TrainingError? = nil
        if communicator.isRoot {
            do {
                if let loaded = try loadCheckpoint(resume) {
                    status = [1, loaded.step, optimizer.step]
                    resumedCheckpoint = loaded.path
                    console.root("resuming from \(loaded.path) at step \(loaded.step) of \(totalSteps)")
                } else {
                    console.root(
                        "--resume auto: no checkpoint in \(configuration.checkpointDirectory ?? "") yet; starting at step 0")
                }
            } catch let error as TrainingError {
                (status, refusal) = ([2, 0, 0], error)
            }
        }
        try communicator.broadcast(&status, root: 0)
        if status[0] == 2 { throw refusal ?? TrainingError.configuration("rank 0 refused the checkpoint (it printed why)") }
        guard status[0] == 1 else { return 0 }
        if !communicator.isRoot { optimizer.restore(step: status[2], momentum: nil) }
        if let momentum = optimizer.momentumBuffer {
            try communicator.broadcast(UnsafeMutableRawBufferPointer(momentum.all), root: 0)
        }
        guard status[1] <= totalSteps else {
            throw TrainingError.configuration(
                "the checkpoint is at step \(status[1]), beyond the \(totalSteps) steps of this run; raise --steps or --epochs")
        }
        return status[1]
    }

    /// Collective: rank 0's parameters and BN buffers go to every rank; then a fingerprint check.
    private func synchronizeReplicas() throws {
        model.parameters.rowSquaredNormsAfterUpdate.removeAll()  // kept for values replaced here
        for buffer in [model.parameters.values, model.buffers] {
            try communicator.broadcast(UnsafeMutableRawBufferPointer(buffer.all), root: 0)
        }
        try ReplicaCheck.verify(
            [model.parameters.values, model.buffers], over: communicator, when: "after the initial broadcast")
    }

    /// Collective: recomputes every BN's running statistics for the final weights, as the plain
    /// average of the batch statistics of the next `bnRecalibrationBatches` global batches (training
    /// forwards, no update): "precise BN". The exponential average lags behind weights that still move
    /// (scale-invariant groups with a large effective rate rotate fast), and inference then
    /// normalizes with statistics of older weights.
    private func recalibrateBatchNorm() throws {
        let batches = configuration.bnRecalibrationBatches
        guard batches > 0 && !model.batchNorms.isEmpty else { return }
        for norm in model.batchNorms { norm.averagedBatches = 0 }
        defer { for norm in model.batchNorms { norm.averagedBatches = nil } }
        for t in totalSteps..<(totalSteps + batches) {
            let mine = sampler.indices(step: t, rank: communicator.rank, ranks: communicator.size)
            if let stepChunks { model.chunks.set(chunks: stepChunks) }
            defer { model.chunks.clear() }
            _ = try model.forward(gather(splits.train, mine, augmentedFor: t / sampler.stepsPerEpoch), reducer: statistics)
        }
        console.root("BN running statistics recomputed for the final weights over \(batches) global batches (--bn-recalibrate)")
    }

    /// Collective: with per-rank BN statistics (`--bn local`) each rank's running mean and variance
    /// differ; average them so that evaluation and the saved model do not depend on the rank.
    private func averageLocalStatistics() throws {
        guard configuration.batchNormSync == .local && communicator.size > 1 else { return }
        try communicator.allreduce(model.buffers.all, .sum)
        scale(model.buffers.all, by: 1 / Float(communicator.size))
    }

    private func describe() {
        let c = configuration
        console.root(
            "autorate: \(communicator.size) rank(s), data \(c.data) (\(splits.train.count) train / \(splits.test.count) test samples\(splits.train.image.map { " of \($0) images, augmentation \(c.augmentation.rawValue)" } ?? "")), \(model.architecture), BN \(c.batchNormSync.rawValue) eps \(c.batchNorm.epsilonMode.rawValue)"
        )
        console.root(
            "parameter groups (SI: scale-invariant, lr-si \(c.invariant.learningRate) \(c.invariant.schedule); SV: scale-variant, lr-sv \(c.variant.learningRate) \(c.variant.schedule)):\n\(model.groupingDescription)"
        )
        if chunkPlan != nil && c.overlap == .on && communicator.size > 1 {
            console.warning("--overlap on is not used with --deterministic: the ordered gradient sum runs after backward")
        }
        if !optimizer.isPaperAlgorithm {
            console.warning(
                "momentum or weight decay is on: this is no longer the paper's plain SGD, and the norm identity of scale-invariant groups will not hold"
            )
        }
        console.root(
            "\(totalSteps) steps of global batch \(c.globalBatch) (\(sampler.stepsPerEpoch) per epoch); memory about \(MemoryEstimate.text(memory.totalBytes)) per rank; OpenBLAS \(BLAS.coreName) kernels, \(BLAS.threads) thread(s) per rank\(BuildTarget.portable ? "" : "; Swift loops built for one CPU (AUTORATE_TARGET_CPU)")"
        )
        console.root(plan!.line)
    }

    /// `--balance on`'s shares for the progress line: every rank's up to 8 ranks, else the range.
    static func describe(shares: [Int]) -> String {
        shares.count <= 8 ? shares.map(String.init).joined(separator: "/") : "\(shares.min()!)-\(shares.max()!)"
    }

    private func report(
        step: Int, loss: Double, accuracy: Double, samplesPerSecond: Double, elapsed: Double,
        monitors: [GroupMonitor], shares: [Int]?, timing: JSONValue
    ) throws {
        let epoch = Double(step) / Double(sampler.stepsPerEpoch)
        let intrinsic = IntrinsicGradient.squared(monitors)
        if configuration.printProgress {
            let eta = elapsed / Double(Swift.max(step - resumedFrom, 1)) * Double(totalSteps - step)
            console.root(
                String(
                    cFormat: "step %d/%d  epoch %.2f  loss %.4f  acc %.2f%%  %.0f samples/s  ETA %.0fs",
                    step, totalSteps, epoch, loss, 100 * accuracy, samplesPerSecond, eta)
                    + (shares.map { "  shares " + Self.describe(shares: $0) } ?? ""))
        }
        let intrinsicField: [(String, JSONValue)] = [("intrinsic_grad2", .number(intrinsic))]
        let sharesField: [(String, JSONValue)] = shares.map { [("shares", .array($0.map { .integer($0) }))] } ?? []
        try metrics?.write(
            .object(
                intrinsicField + sharesField + [
                    ("step", .integer(step)), ("epoch", .number(epoch)), ("loss", .number(loss)),
                    ("accuracy", .number(accuracy)), ("samples_per_s", .number(samplesPerSecond)),
                    ("lr_si", .number(optimizer.currentRate(.scaleInvariant))),
                    ("lr_sv", .number(optimizer.currentRate(.scaleVariant))),
                    ("time_ms", timing),
                    (
                        "groups",
                        .array(
                            monitors.map { m in
                                .object([
                                    ("name", .string(m.name)), ("kind", .string(m.kind.rawValue)), ("norm2", .number(m.norm2)),
                                    ("grad_norm2", .number(m.gradNorm2)), ("eff_lr", .number(m.effectiveRate)),
                                    ("cos", .number(m.cosine)),
                                    ("identity_residual", .number(m.identityResidual)), ("angle", .number(m.angle)),
                                ])
                            })
                    ),
                ]))
    }
}

/// What one rank measured in one step.
public struct StepResult {
    public let lossSum: Double
    public let correct: Int
    public let count: Int
    public var monitors: [GroupMonitor]
    /// The guard skipped the update: the summed gradient was not finite.
    public var skipped = false
    /// Where this rank's step time went.
    public var timing = StepTiming()
    /// `--balance on`: every rank's share of the batch in this step.
    public var shares: [Int]?
}

/// The end of a run.
public struct RunSummary: Sendable {
    public let steps: Int
    public let seconds: Double
    /// Mean loss over the global batches of the last logging window.
    public let trainLoss: Double
    public let testLoss: Double
    public let testAccuracy: Double
    /// nil with fewer than 5 classes.
    public let testTop5: Double?
    public let samplesPerSecond: Double

    var json: JSONValue {
        .object([
            ("event", .string("final")), ("steps", .integer(steps)), ("seconds", .number(seconds)),
            ("train_loss", .number(trainLoss)), ("test_loss", .number(testLoss)),
            ("test_accuracy", .number(testAccuracy)), ("test_top5", testTop5.map { .number($0) } ?? .null),
            ("samples_per_s", .number(samplesPerSecond)),
        ])
    }
}

/// Local sums between two logging steps; reduced over ranks only when logged.
private struct Window {
    var correct = 0.0, count = 0.0
    /// Each step's loss sum on this rank (their sum in order is the window's).
    var stepLosses: [Double] = []
    /// This rank's time, summed over the window's steps.
    var timing = StepTiming()
    var steps = 0
    mutating func add(_ r: StepResult) {
        timing = timing + r.timing
        steps += 1
        stepLosses.append(r.lossSum)
        correct += Double(r.correct)
        count += Double(r.count)
    }
    /// Collective: the global mean loss and accuracy over the window, and the time sums over ranks.
    /// `ordered`: each step's loss is finished in the chunk tree (rank order), then the steps are
    /// added in order, so the logged loss does not depend on the rank count.
    /// Every step's shares must add up to `globalBatch` (a check on the sampler and `--balance`:
    /// ranks that disagreed on the shares would skip or repeat samples).
    func reduce(over communicator: Communicator, ordered: Bool, globalBatch: Int) throws -> (
        loss: Double, accuracy: Double, timing: StepTiming
    ) {
        var sums = [ordered ? 0 : stepLosses.reduce(0, +), correct, count] + timing.values
        try communicator.allreduce(&sums, .sum)
        guard sums[2] == Double(steps * globalBatch) else {
            throw TrainingError.configuration(
                "the ranks' shares of the last \(steps) steps add up to \(Int(sums[2])) samples, not \(steps) x \(globalBatch): the ranks disagree on how the global batch is split"
            )
        }
        if ordered {
            var losses = stepLosses
            try communicator.orderedSum(&losses)
            sums[0] = losses.reduce(0, +)
        }
        return (sums[0] / sums[2], sums[1] / sums[2], StepTiming(values: sums.dropFirst(3)))
    }
}
