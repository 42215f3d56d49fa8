import Data
import Layers
import Optimizers

/// Whether gradient buckets are reduced while backward goes on.
public enum OverlapMode: String, Sendable, CaseIterable {
    /// On when the ranks span several nodes, off when they share one: measured here, nonblocking
    /// reductions over shared memory cost more CPU than they hide (each copy takes a core that
    /// backward needs), while over a network the transfer proceeds in the kernel.
    case auto
    case on
    case off
}

/// How the sharded update moves gradients between ranks that share a node (`--intra-node`).
public enum IntraNodeMode: String, Sendable, CaseIterable {
    /// Read the other ranks' buffers in place, in node shared memory (when every rank is on one node).
    case sharedMemory = "shared-memory"
    /// Through MPI messages (Open MPI's shared-memory transport copies them).
    case mpi
}

/// Where a sharded update in node shared memory takes the weight gradients from (`--weight-gradients`).
public enum WeightGradientMode: String, Sendable, CaseIterable {
    /// Each weight row's gradient is computed once, over the samples of every rank of the node, by
    /// the rank that updates the row, from the activations the ranks share (the MLP with BN; other
    /// networks, and logging and deterministic steps, use `rank`).
    case node
    /// Every rank computes its whole gradient over its own samples, and the ranks' gradients are summed.
    case rank
}

/// How the global batch is split over ranks (`--balance`).
public enum BalanceMode: String, Sendable, CaseIterable {
    /// Even shares (differing by at most one sample): the same split every step, so a run repeats
    /// its bits.
    case off
    /// Shares follow each rank's measured speed (`BatchShares`); the sums' grouping then depends on
    /// timing, so runs agree to rounding, not bit for bit.
    case on
}

/// Everything that defines a training run. Built and validated by the CLI before MPI starts.
public struct TrainingConfiguration: Sendable {
    public var data: DataSource = .synthetic
    /// `--image-size`: the size every image of a `folder:` source is resized to (nil: as stored).
    public var imageSize: ImageSize? = nil
    /// `--cache-dir`: where a `folder:` source's decode cache goes (nil: beside the data).
    public var cacheDirectory: String? = nil
    public var model: ModelKind = .mlp
    /// `--model vgg` layers (nil: the reference 32,32,M,64,64,M,128,M), before `widthMultiplier`.
    public var vggLayers: [ConvArchitecture.Layer]? = nil
    public var widthMultiplier = 1.0
    public var shortcut: ShortcutKind = .padding
    /// The conv nets' convolution algorithm (`--convolution`); nil: chosen per layer (`Conv2d.defaultAlgorithm`).
    public var convolution: Conv2d.Algorithm? = nil
    /// Training-time augmentation of image data (`--augment`).
    public var augmentation: Augmentation = .none
    /// False: the plain MLP without BN (`--no-bn`), the baseline of docs/theory.md E4.
    public var batchNormalized = true
    /// SI groups are multiplied by this after initialization (`--init-scale-si`; docs/theory.md E9).
    public var initScaleSI = 1.0
    /// `[in, hidden..., classes]`; nil: the data's input size, 256, 256, the data's classes.
    public var widths: [Int]? = nil
    public var head: HeadKind = .linear
    public var globalBatch = 256
    /// Total steps; nil: `epochs` full passes.
    public var steps: Int? = nil
    public var epochs = 10
    public var invariant = GroupRule(learningRate: 1.0)
    public var variant = GroupRule(learningRate: 0.1)
    public var batchNormSync: BatchNormSync = .sync
    public var batchNorm = BatchNormSettings()
    /// Steps between evaluations on the validation (or test) split during training; nil: none.
    public var evalEvery: Int? = nil
    /// The fraction of the training set held out for validation by a seeded split (0: none).
    public var validationFraction = 0.0
    /// Keep `best.safetensors` in the checkpoint directory: the model of the best evaluation.
    public var keepBest = false
    /// Global batches over which BN statistics are recomputed after training (0: keep the exponential average).
    public var bnRecalibrationBatches = 20
    public var seed: UInt64 = 0
    /// Steps between logged steps; nil: about 20 lines per run.
    public var logEvery: Int? = nil
    public var metricsPath: String? = nil
    public var bucketBytes = 4 << 20
    /// Start each bucket's allreduce while backward goes on (`--overlap`).
    public var overlap: OverlapMode = .auto
    /// `--intra-node`: how the sharded update reduces among ranks of one node.
    public var intraNode: IntraNodeMode = .sharedMemory
    /// `--weight-gradients`: with node shared memory, whether weight gradients are computed over the node's batch.
    public var weightGradients: WeightGradientMode = .node
    /// `--balance`: even shares of the global batch, or shares that follow each rank's speed.
    public var balance: BalanceMode = .off
    /// `--deterministic`: bitwise-identical results for any rank count that divides `chunks`.
    public var deterministic = false
    /// `--chunks`: the fixed chunks of each global batch in deterministic mode (a power of two).
    public var chunks = TrainingConfiguration.defaultChunks
    /// Every rank count up to 8 (1, 2, 4, 8) divides it.
    public static let defaultChunks = 8
    /// `--timeline`: a Chrome trace of the steps in `timelineWindow` (1-based).
    public var timelinePath: String? = nil
    public var timelineWindow = 2...11
    /// Where checkpoints go (`--checkpoint-dir`); nil: none are written.
    public var checkpointDirectory: String? = nil
    /// Steps between checkpoints; one is also written after the last step.
    public var checkpointEvery = 1000
    /// Checkpoints kept in the directory, newest first.
    public var keepCheckpoints = 3
    /// Consecutive steps with a non-finite gradient that are skipped before the run stops.
    public var maxBadSteps = 5
    /// Seconds without progress after which a rank ends the job (`--stall-timeout`); 0: no watchdog.
    public var stallTimeout = 300.0
    /// Test-only faults (hidden flags): NaN in the input of (step, rank); a rank that sleeps at (step, rank).
    public var debugNaN: (step: Int, rank: Int)? = nil
    /// Test-only: NaN in the last element of the gradient of (step, rank) after backward, before
    /// the sum over ranks (in a sharded update, one rank's segment alone then holds it).
    public var debugNaNGradient: (step: Int, rank: Int)? = nil
    public var debugStall: (step: Int, rank: Int)? = nil
    /// Test-only: the rank SIGKILLs itself at (step, rank), as a preempted node would die.
    public var debugKill: (step: Int, rank: Int)? = nil
    /// Test-only: bytes asked of node shared memory per rank on top of what the buffers need (an
    /// impossible amount makes the setup fail for real, on every rank).
    public var debugSharedMemoryExtra = 0
    /// Test-only: this rank sleeps `microsecondsPerSample` per sample of its share every step (a slower CPU).
    public var debugSlowRank: (rank: Int, microsecondsPerSample: Int)? = nil
    /// `--resume auto|PATH`.
    public var resume: ResumeSource? = nil
    /// Print progress lines (rank 0). Off for benchmarks and tests that read only the metrics file.
    public var printProgress = true

    public init() {}

    /// A combination of flags no run can honour, as a message naming both and what to use instead;
    /// nil when there is none. The CLI checks it before MPI starts (also for a bench's twins), and
    /// `Trainer` when it is built.
    public var conflict: String? {
        if deterministic && batchNormSync == .local {
            return
                "--bn local cannot be combined with --deterministic: per-rank BN statistics depend on the rank count by definition; use --bn sync"
        }
        if balance == .on && deterministic {
            return
                "--balance on cannot be combined with --deterministic: deterministic mode gives each rank fixed chunks of the batch; use --balance off"
        }
        if balance == .on && batchNormSync == .local {
            return
                "--balance on cannot be combined with --bn local: with per-rank BN statistics a rank's share would change what its BN normalizes over; use --bn sync or --balance off"
        }
        return nil
    }

    public static let defaultHidden = [256, 256]

    /// The widths this run uses for data of `dimension` inputs and `classes` classes.
    /// - Throws: `TrainingError.configuration` when explicit widths do not match the data.
    public func resolvedWidths(dimension: Int, classes: Int) throws -> [Int] {
        guard let widths else { return [dimension] + Self.defaultHidden + [classes] }
        if widths.first != dimension {
            throw TrainingError.configuration(
                "--widths \(widths.map(String.init).joined(separator: ",")) starts with \(widths[0]) inputs, but \(data) has \(dimension) features per sample; the first width must be \(dimension)"
            )
        }
        if widths.last != classes {
            throw TrainingError.configuration(
                "--widths \(widths.map(String.init).joined(separator: ",")) ends with \(widths.last!) outputs, but \(data) has \(classes) classes; the last width must be \(classes)"
            )
        }
        return widths
    }
}
