import Data
import Layers
import TensorCore
#if canImport(Glibc)
    import Glibc
#endif

/// What one rank of a run will hold in memory, computed from the flags and the data before the
/// network is built, so that a run that cannot fit is refused with the figure and the flag that
/// drives it instead of dying in an allocation. An estimate of the large buffers (a few copies of
/// every activation, the parameters with their gradients and the update's buffers, the data), not
/// a measurement: the VGG at batch 128 is estimated at 326 MiB, and `autorate bench` measured a
/// peak RSS of 237 MiB.
public struct MemoryEstimate: Sendable {
    /// Parameters, their gradients, momentum and the gradient sum's buffers.
    public var parameterBytes: Int
    /// The layers' activations and their gradients for the largest batch a forward takes.
    public var activationBytes: Int
    /// Both splits, as every rank holds them.
    public var dataBytes: Int

    public var totalBytes: Int { parameterBytes &+ activationBytes &+ dataBytes }
    /// What is still to be allocated when the estimate is checked (the data is loaded by then).
    public var toAllocateBytes: Int { parameterBytes &+ activationBytes }

    /// The flags that drive what is still to be allocated: the network's, and the global batch
    /// when the batch a rank takes (not the evaluation's minimum rows) sizes the activations.
    public func drivingFlags(_ c: TrainingConfiguration, batchDriven: Bool) -> String {
        let network: String
        switch c.model {
        case .mlp: network = "--widths \(c.widths.map { $0.map(String.init).joined(separator: ",") } ?? "(default)")"
        case .vgg:
            network =
                c.vggLayers.map {
                    "--vgg-layers \($0.map { if case let .conv(n) = $0 { String(n) } else { "M" } }.joined(separator: ","))"
                }
                ?? "--width-multiplier \(c.widthMultiplier)"
        case .cnn, .resnet20: network = "--model \(c.model.rawValue)"
        }
        return batchDriven && activationBytes > parameterBytes ? "--global-batch \(c.globalBatch) with \(network)" : network
    }

    /// The estimate for `c` on `splits`, forwards of up to `maxBatch` samples. Saturates instead
    /// of overflowing (absurd widths give an absurd figure, not a crash).
    public init(_ c: TrainingConfiguration, splits: DataSplits, maxBatch: Int) {
        let train = splits.train
        var parameters = 0, activations = 0, widest = 0
        func add(_ total: inout Int, _ factors: Int...) {
            var product = 1
            for f in factors {
                let (p, overflow) = product.multipliedReportingOverflow(by: f)
                product = overflow ? Int.max : p
            }
            total = total > Int.max - product ? Int.max : total + product
        }
        if let architecture = c.convArchitecture, let image = train.image {
            var (h, w, channels) = (image.height, image.width, image.channels)
            func conv(_ out: Int, stride: Int = 1) {
                (h, w) = ((h - 1) / stride + 1, (w - 1) / stride + 1)
                add(&parameters, 9, channels, out)
                add(&parameters, 4, out)
                add(&activations, 3, maxBatch, h, w, out)  // conv output, BN output, their gradient
                widest = Swift.max(widest, h &* w &* out)
                channels = out
            }
            switch architecture {
            case let .sequential(layers):
                for layer in layers {
                    if case let .conv(out) = layer { conv(out) } else { (h, w) = (h / 2, w / 2) }
                }
            case let .resnet(widths, blocks, _):
                conv(widths[0])
                for (stage, width) in widths.enumerated() {
                    for block in 0..<blocks {
                        conv(width, stride: stage > 0 && block == 0 ? 2 : 1)
                        conv(width)
                    }
                }
                (h, w) = (1, 1)
            }
            add(&parameters, h, w, channels, train.classes)
        } else {
            let widths = (try? c.resolvedWidths(dimension: train.dimension, classes: train.classes)) ?? [train.dimension]
            for (a, b) in zip(widths, widths.dropFirst()) {
                add(&parameters, a, b)
                add(&parameters, 4, b)
                add(&activations, 3, maxBatch, b)
                widest = Swift.max(widest, b)
            }
        }
        add(&activations, 3, maxBatch, Swift.max(widest, train.dimension))  // shared gradient buffers, input
        let floats = MemoryLayout<Float>.size
        // values, gradients, momentum or the sharded update's copy, and the node's gradient sum
        parameterBytes = parameters > Int.max / (4 * floats) ? Int.max : parameters * 4 * floats
        activationBytes = activations > Int.max / floats ? Int.max : activations * floats
        dataBytes = (train.features.count + splits.test.features.count + (splits.validation?.features.count ?? 0)) * floats
    }

    /// The memory one rank may still allocate: the system's available memory shared by the node's
    /// ranks (from the launcher's environment, 1 without), and the address-space limit (`ulimit -v`)
    /// beyond what the process maps already (its data included). nil when neither can be read.
    public static func availableBytes() -> (bytes: Int, source: String)? {
        var result: (bytes: Int, source: String)? = nil
        if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
            let kib = Int(line.split(separator: " ").dropFirst().first ?? "")
        {
            // Open MPI's mpirun, PMIx (srun --mpi=pmix), Slurm
            let names: [String] = ["OMPI_COMM_WORLD_LOCAL_SIZE", "PMIX_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"]
            let ranks = names.compactMap { name in getenv(name).flatMap { Int(String(cString: $0)) } }.first ?? 1
            result = (
                kib * 1024 / Swift.max(ranks, 1),
                ranks > 1 ? "available memory / \(ranks) ranks on this node" : "available memory"
            )
        }
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit) == 0 && limit.rlim_cur != rlim_t.max {
            var mapped = 0
            if let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
                let pages = Int(statm.split(separator: " ").first ?? "")
            {
                mapped = pages * Int(sysconf(Int32(_SC_PAGESIZE)))
            }
            let left = Swift.max(0, Int(clamping: limit.rlim_cur) - mapped)
            if result == nil || left < result!.bytes { result = (left, "the address-space limit (ulimit -v)") }
        }
        return result
    }

    /// `1.2 GiB`, `350 MiB`.
    public static func text(_ bytes: Int) -> String {
        let mib = Double(bytes) / Double(1 << 20)
        return mib >= 1024 ? String(cFormat: "%.1f GiB", mib / 1024) : String(cFormat: "%.0f MiB", mib)
    }
}
