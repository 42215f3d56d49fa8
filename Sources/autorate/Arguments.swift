import ArgumentParser
import Data
import Layers
import Optimizers
import Benchmarks
import Training

extension HeadKind: ExpressibleByArgument {}
extension ModelKind: ExpressibleByArgument {}
extension BalanceMode: ExpressibleByArgument {}
extension Augmentation: ExpressibleByArgument {}
extension EpsilonMode: ExpressibleByArgument {}
extension BatchNormSync: ExpressibleByArgument {}

extension Schedule: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
    public static var allValueStrings: [String] { names }
    public var defaultValueDescription: String { description }
}

/// Parses `--data`, naming what is accepted when it fails.
func parseData(_ text: String) throws -> DataSource {
    guard let source = DataSource(argument: text) else {
        throw ValidationError("--data \(text) is not accepted: use \(DataSource.accepted).")
    }
    return source
}

/// Parses comma-separated layer widths such as `784,512,512,10`, naming what is accepted when it fails.
func parseWidths(_ text: String, flag: String = "--widths") throws -> [Int] {
    let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: " ")) }
    guard parts.count >= 2, parts.allSatisfy({ ($0 ?? 0) > 0 }) else {
        throw ValidationError(
            "\(flag) \(text) is not accepted: use at least two comma-separated positive integers, 'inputs,hidden...,classes' (e.g. 784,512,512,10)."
        )
    }
    return parts.map { $0! }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> Substring {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return s
    }
}

/// The value of a hidden option with a fixed set of values (ArgumentParser names the accepted
/// values only for visible ones), naming them when `text` is none of them.
func choice<T: RawRepresentable & CaseIterable>(_ type: T.Type, _ flag: String, _ text: String) throws -> T
where T.RawValue == String {
    guard let value = T(rawValue: text) else {
        let accepted = T.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ")
        throw ValidationError("\(flag) \(text) is not accepted: use one of \(accepted).")
    }
    return value
}

extension ArgumentHelp {
    /// Help for an advanced flag: listed by `--help-hidden` only.
    static func hidden(_ text: String) -> ArgumentHelp { ArgumentHelp(text, visibility: .hidden) }
}

/// Rejects a numeric flag value before any work, naming the flag, the value and what is accepted.
func require(_ ok: Bool, _ flag: String, _ value: Any, _ accepted: String) throws {
    if !ok { throw ValidationError("\(flag) \(value) is not accepted: \(accepted).") }
}

/// Parses `--vgg-layers` such as `32,32,M,64,64,M,128,M`.
func parseVGGLayers(_ text: String) throws -> [ConvArchitecture.Layer] {
    guard let layers = ConvArchitecture.parseLayers(text) else {
        throw ValidationError(
            "--vgg-layers \(text) is not accepted: use comma-separated positive channel counts and M for a 2x2 max pool, with at least one count (e.g. 32,32,M,64,64,M,128,M)."
        )
    }
    return layers
}

/// How the ranks work together: shared by `train` and `bench`. The flags a user needs are
/// visible; the transport and overlap choices are made by the run's plan and hidden (they stay
/// for tests and for measuring the alternatives; `--help-hidden` lists them).
struct DistributionOptions: ParsableArguments {
    @Option(
        name: .customLong("global-batch"), help: "Samples per step summed over all ranks (need not divide by the rank count).")
    var globalBatch = 256
    @Option(help: "BN statistics: 'sync' (over the global batch, whatever the rank count) or 'local' (per rank, as plain DDP).")
    var bn: BatchNormSync = .sync
    @Option(help: "OpenBLAS threads per rank (1 when each rank has one core).")
    var threads = 1
    @Flag(
        help:
            "Bitwise-identical training on any number of ranks that divides --chunks (same binary, BLAS and CPU): every sum over samples is taken per chunk of the global batch and added in a fixed tree."
    )
    var deterministic = false
    @Option(
        help: .hidden(
            "--deterministic: chunks per global batch, a power of two; the rank count must divide it. Results depend on it, not on the rank count."
        ))
    var chunks = TrainingConfiguration.defaultChunks
    @Option(
        help:
            "Each rank's share of the global batch: 'off' (even shares; runs repeat their bits) or 'on' (shares follow each rank's measured speed, for nodes of unequal speed; needs --bn sync, not with --deterministic)."
    )
    var balance: BalanceMode = .off
    @Option(name: .customLong("bucket-mb"), help: .hidden("Largest gradient allreduce bucket in MiB."))
    var bucketMB = 4.0
    @Option(
        help: .hidden(
            "Reduce each gradient bucket while backward goes on: 'on', 'off' (all after backward) or 'auto' (on when the ranks span several nodes)."
        ))
    var overlap = OverlapMode.auto.rawValue
    @Option(
        name: .customLong("intra-node"),
        help: .hidden(
            "How the sharded update sums gradients when every rank is on one node: 'shared-memory' (read each other's buffers in place) or 'mpi' (messages)."
        ))
    var intraNode = IntraNodeMode.sharedMemory.rawValue
    @Option(
        name: .customLong("weight-gradients"),
        help: .hidden(
            "With node shared memory: 'node' (each weight row's gradient computed once, over every rank's samples, by the rank that updates it; the MLP) or 'rank' (each rank's whole gradient, summed)."
        ))
    var weightGradients = WeightGradientMode.node.rawValue

    func validate() throws {
        try require(globalBatch > 0, "--global-batch", globalBatch, "a positive number of samples")
        try require(threads >= 1 && threads <= 256, "--threads", threads, "1 to 256 threads")
        _ = try choice(OverlapMode.self, "--overlap", overlap)
        _ = try choice(IntraNodeMode.self, "--intra-node", intraNode)
        _ = try choice(WeightGradientMode.self, "--weight-gradients", weightGradients)
        try require(bucketMB >= 0.0625 && bucketMB <= 2048, "--bucket-mb", bucketMB, "a size in MiB from 0.0625 (64 KiB) to 2048")
        try require(
            chunks >= 1 && chunks <= 1 << 20 && chunks & (chunks - 1) == 0, "--chunks", chunks, "a power of two from 1 to 1048576"
        )
    }

    /// Rejects what no run can honour, in the run and in each of a bench's `twins`: a combination
    /// of flags (`TrainingConfiguration.conflict`), and a global batch that deterministic mode
    /// cannot cut into `--chunks`.
    func validateCombinations(twins: [Benchmark.Twin] = []) throws {
        var run = TrainingConfiguration()
        apply(to: &run)
        let configurations = [(flag: String?.none, run)] + twins.map { (flag: Optional($0.rawValue), $0.configuration(of: run)) }
        for (flag, c) in configurations {
            let small = c.deterministic && c.globalBatch < c.chunks
            guard
                let problem = c.conflict
                    ?? (small
                        ? "--global-batch \(c.globalBatch) is not accepted with --deterministic --chunks \(c.chunks): the global batch needs at least one sample per chunk; lower --chunks or raise --global-batch"
                        : nil)
            else { continue }
            throw ValidationError((flag.map { "\($0) runs a twin that is not accepted: " } ?? "") + problem + ".")
        }
    }

    func apply(to c: inout TrainingConfiguration) {
        c.globalBatch = globalBatch
        c.batchNormSync = bn
        c.bucketBytes = Int(bucketMB * 1024 * 1024)
        // validated
        c.overlap = try! choice(OverlapMode.self, "--overlap", overlap)
        c.intraNode = try! choice(IntraNodeMode.self, "--intra-node", intraNode)
        c.weightGradients = try! choice(WeightGradientMode.self, "--weight-gradients", weightGradients)
        c.balance = balance
        c.deterministic = deterministic
        c.chunks = chunks
    }
}

/// The network: shared by `train` and `bench`.
struct ModelOptions: ParsableArguments {
    @Option(
        help: "Network: 'mlp' (--widths), 'cnn' (small conv net), 'vgg' (--vgg-layers) or 'resnet20'; conv nets need image data.")
    var model: ModelKind = .mlp
    @Option(
        help: "--model mlp layer widths 'in,hidden...,classes' (default for train: the data's input size,256,256,its classes).")
    var widths: String?
    @Option(
        name: .customLong("vgg-layers"),
        help: "--model vgg layers: channel counts and M for a max pool (default: 32,32,M,64,64,M,128,M).")
    var vggLayers: String?
    @Option(name: .customLong("width-multiplier"), help: .hidden("--model vgg: multiply every channel count by this."))
    var widthMultiplier = 1.0
    @Option(help: "Classifier head: 'linear' (Linear with bias, scale-variant) or 'bn' (Linear then BN, as in the paper).")
    var head: HeadKind = .linear
    @Option(
        name: .customLong("bn-eps-mode"),
        help:
            "BN epsilon: 'scaled' (eps times the squared norm of the channel's incoming weights: exactly scale-invariant), 'zero' or 'standard' (PyTorch's)."
    )
    var bnEpsMode: EpsilonMode = .scaled
    @Option(name: .customLong("bn-eps"), help: .hidden("BN epsilon value for the 'scaled' and 'standard' modes."))
    var bnEps = 1e-5
    @Option(
        help: .hidden("--model resnet20: 'padding' (parameter-free, option A) or 'projection' (1x1 conv + BN) shortcuts."))
    var shortcut = ShortcutKind.padding.rawValue
    @Option(
        help: .hidden(
            "Conv nets: 'auto' (Winograd for 3x3 stride-1 layers with 16 or more channels each way, im2col for the rest), 'im2col' or 'winograd' (wherever it applies)."
        ))
    var convolution = "auto"
    @Flag(
        name: .customLong("no-bn"),
        help: .hidden("--model mlp without BN: Linear with bias + ReLU, every parameter SV (a baseline)."))
    var noBN = false

    func validate() throws {
        if let vggLayers { _ = try parseVGGLayers(vggLayers) }
        _ = try choice(ShortcutKind.self, "--shortcut", shortcut)
        if convolution != "auto" && Conv2d.Algorithm(rawValue: convolution) == nil {
            throw ValidationError("--convolution \(convolution) is not accepted: use one of 'auto', 'im2col', 'winograd'.")
        }
        if let widths { _ = try parseWidths(widths) }
        try require(
            widthMultiplier > 0 && widthMultiplier <= 64 && widthMultiplier.isFinite, "--width-multiplier", widthMultiplier,
            "a value in (0, 64]")
        try require(bnEps >= 0 && bnEps.isFinite, "--bn-eps", bnEps, "a finite value >= 0")
        if bnEpsMode == .standard && bnEps == 0 {
            throw ValidationError(
                "--bn-eps 0 with --bn-eps-mode standard divides by zero on constant channels; use --bn-eps-mode zero for eps = 0."
            )
        }
    }

    func apply(to c: inout TrainingConfiguration) {
        c.model = model
        c.widths = widths.map { try! parseWidths($0) }  // validated
        c.vggLayers = vggLayers.map { try! parseVGGLayers($0) }  // validated
        c.widthMultiplier = widthMultiplier
        c.shortcut = try! choice(ShortcutKind.self, "--shortcut", shortcut)  // validated
        c.convolution = convolution == "auto" ? nil : Conv2d.Algorithm(rawValue: convolution)!  // validated
        c.batchNormalized = !noBN
        c.head = head
        c.batchNorm = BatchNormSettings(epsilonMode: bnEpsMode, epsilon: bnEps)
    }
}
