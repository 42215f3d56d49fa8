import Collectives
import Data
import Layers
import TensorCore

/// What a checkpoint holds, in safetensors: every parameter and BN buffer under its PyTorch
/// `state_dict` name and layout (conv weights transposed from channels-last `[O, kh, kw, I]` to
/// PyTorch's `[O, I, kh, kw]`, plus each BN's `num_batches_tracked`), the optimizer's momentum, and
/// in the metadata the position (the next step; global samples consumed and epoch follow from it),
/// the rank count, and every configuration field that shapes the trajectory.
enum CheckpointFormat {
    static let format = "autorate-checkpoint-1"
    static let momentumName = "optimizer.momentum"
    /// The final checkpoint's BN running statistics as training left them, before `--bn-recalibrate`
    /// replaced them (the state_dict's are the recalibrated ones, which the printed accuracy used):
    /// a run extended from it continues the same running averages.
    static let trainingStatisticsName = "training.bn_running_statistics"
    /// Tensors of a checkpoint that are not the model's weights (`export` leaves them out).
    static func isTrainingState(_ name: String) -> Bool { name.hasPrefix("optimizer.") || name.hasPrefix("training.") }

    /// PyTorch's shape of a tensor stored with `shape`.
    static func torchShape(_ shape: [Int]) -> [Int] { shape.count == 4 ? [shape[0], shape[3], shape[1], shape[2]] : shape }

    /// `values` (our layout) in PyTorch's layout.
    static func torchOrder(_ values: UnsafeBufferPointer<Float>, shape: [Int]) -> [Float] {
        guard shape.count == 4 else { return Array(values) }
        let (o, kh, kw, i) = (shape[0], shape[1], shape[2], shape[3])
        var out = [Float](repeating: 0, count: values.count)
        for a in 0..<o {
            for y in 0..<kh {
                for x in 0..<kw {
                    for c in 0..<i {
                        out[((a * i + c) * kh + y) * kw + x] = values[((a * kh + y) * kw + x) * i + c]
                    }
                }
            }
        }
        return out
    }

    /// The inverse of `torchOrder`, into `destination`.
    static func fromTorchOrder(_ values: [Float], shape: [Int], into destination: UnsafeMutableBufferPointer<Float>) {
        guard shape.count == 4 else {
            destination.update(fromContentsOf: values)
            return
        }
        let (o, kh, kw, i) = (shape[0], shape[1], shape[2], shape[3])
        for a in 0..<o {
            for y in 0..<kh {
                for x in 0..<kw {
                    for c in 0..<i {
                        destination[((a * kh + y) * kw + x) * i + c] = values[((a * i + c) * kh + y) * kw + x]
                    }
                }
            }
        }
    }

    /// Trajectory flags that checkpoints written before them lack, with the value such a checkpoint
    /// resumes under (for --convolution: the default, whose rounding differs from the im2col of then).
    static let addedLater = [
        "--deterministic": "off", "--convolution": "auto", "--val-fraction": "0.0", "--image-size": "as stored",
    ]

    /// Parameters and BN buffers under PyTorch names: what `autorate export` writes alone.
    static func weights(_ model: any Network, batchesTracked: Int) -> SafeTensors {
        var file = SafeTensors()
        for (spec, buffer) in model.parameters.layout.tensors.map({ ($0, model.parameters.values) })
            + model.bufferLayout.tensors.map({ ($0, model.buffers) })
        {
            let values = torchOrder(UnsafeBufferPointer(buffer.slice(spec.range)), shape: spec.shape)
            values.withUnsafeBufferPointer { file.append(spec.name, floats: $0, shape: torchShape(spec.shape)) }
            if spec.name.hasSuffix(".running_var") {
                file.append(
                    String(spec.name.dropLast(".running_var".count)) + ".num_batches_tracked", int64s: [Int64(batchesTracked)],
                    shape: [])
            }
        }
        return file
    }
}

extension CheckpointFormat {
    /// Reads every parameter and BN buffer of `model` from `file` (PyTorch names and layouts).
    /// - Throws: `ForeignCheckpoint` for a missing tensor or one of another size.
    static func loadWeights(_ file: SafeTensors, into model: any Network) throws {
        model.parameters.rowSquaredNormsAfterUpdate.removeAll()  // kept for values replaced here
        for (spec, buffer) in model.parameters.layout.tensors.map({ ($0, model.parameters.values) })
            + model.bufferLayout.tensors.map({ ($0, model.buffers) })
        {
            let values: [Float]
            do {
                values = try file.floats(spec.name)
            } catch {
                throw ForeignCheckpoint(text: "\(error)")
            }
            guard values.count == spec.count else {
                throw ForeignCheckpoint(text: "tensor \(spec.name) has \(values.count) values; this network's has \(spec.count)")
            }
            CheckpointFormat.fromTorchOrder(values, shape: spec.shape, into: buffer.slice(spec.range))
        }
    }

    /// The weights `autorate export` writes, for PyTorch's BatchNorm with the scalar epsilon
    /// `pytorchEpsilon`: with `--bn-eps-mode zero` or `scaled` the per-channel eps_c that inference
    /// adds (it depends on the weights) is folded into `running_var`, and PyTorch's eps is 0.
    static func exported(_ model: any Network, batchesTracked: Int) -> (weights: SafeTensors, pytorchEpsilon: Double) {
        let norms = model.batchNorms
        guard let mode = norms.first?.epsilonMode, mode != .standard else {
            return (weights(model, batchesTracked: batchesTracked), norms.first?.epsilon ?? 0)
        }
        let original = Array(model.buffers.all)
        defer { _ = model.buffers.all.update(fromContentsOf: original) }
        for norm in norms {
            let eps = norm.inferenceEpsilons(model.parameters)
            let v = model.buffers.slice(norm.runningVar.range)
            for c in 0..<norm.channels { v[c] = Float(Double(v[c]) + eps[c]) }
        }
        return (weights(model, batchesTracked: batchesTracked), 0)
    }
}

extension Trainer {
    /// What checkpoints record about the model.
    public var modelCard: ModelCard {
        ModelCard(configuration: configuration, model: model, data: splits.train, standardization: splits.standardization)
    }

    /// Rank 0: writes the state after `completedSteps` steps (to `name`, or the directory's
    /// `checkpoint-STEP` file). `trainingStatistics`: the BN buffers before recalibration, for the
    /// final checkpoint. Errors (a full disk) end the job.
    func saveCheckpoint(
        completedSteps: Int, into directory: CheckpointDirectory, name: String? = nil, trainingStatistics: [Float]? = nil,
        metadata: [String: String] = [:]
    ) throws -> String {
        var file = CheckpointFormat.weights(model, batchesTracked: completedSteps)
        if let momentum = optimizer.momentumBuffer {
            file.append(CheckpointFormat.momentumName, floats: UnsafeBufferPointer(momentum.all), shape: [momentum.count])
        }
        if let trainingStatistics {
            file.append(CheckpointFormat.trainingStatisticsName, floats: trainingStatistics, shape: [trainingStatistics.count])
        }
        file.metadata["autorate.format"] = CheckpointFormat.format
        file.metadata["autorate.step"] = "\(completedSteps)"
        file.metadata["autorate.optimizer_step"] = "\(optimizer.step)"  // fewer when the guard skipped steps
        file.metadata["autorate.global_samples"] = "\(completedSteps * configuration.globalBatch)"
        file.metadata["autorate.epoch"] = "\(completedSteps / Swift.max(sampler.stepsPerEpoch, 1))"
        file.metadata["autorate.ranks"] = "\(communicator.size)"
        file.metadata["autorate.architecture"] = model.architecture
        file.metadata[ModelCard.metadataKey] = modelCard.json
        for (flag, value) in configuration.trajectoryFields { file.metadata["config.\(flag)"] = value }
        file.metadata.merge(metadata) { $1 }
        if let name { return try directory.write(name: name, file) }
        return try directory.write(step: completedSteps, file)
    }

    /// Rank 0: the checkpoint to resume from, loaded into the model and optimizer; nil to start afresh
    /// (`--resume auto` with no checkpoint yet). With `auto`, a file that does not load (truncated,
    /// corrupted, foreign) is reported and the previous one is tried.
    /// - Throws: `TrainingError.configuration` for an unusable `PATH` or a different configuration.
    func loadCheckpoint(_ resume: ResumeSource) throws -> (path: String, step: Int)? {
        let candidates: [String]
        switch resume {
        case let .path(path): candidates = [path]
        case .auto:
            guard let dir = configuration.checkpointDirectory else {
                throw TrainingError.configuration("--resume auto needs --checkpoint-dir, the directory to look in")
            }
            candidates = CheckpointDirectory(path: dir, keep: configuration.keepCheckpoints).checkpoints()
        }
        for path in candidates {
            let file: SafeTensors
            do {
                file = try CheckpointDirectory.load(path)
                guard file.metadata["autorate.format"] == CheckpointFormat.format,
                    let step = file.metadata["autorate.step"].flatMap(Int.init)
                else { throw ForeignCheckpoint(text: "not an autorate checkpoint (no \(CheckpointFormat.format) metadata)") }
                try checkCompatible(file, path)
                try apply(file, path)
                return (path, step)
            } catch let error as TrainingError {
                throw error
            } catch {
                if case .path = resume { throw TrainingError.configuration("--resume \(path): \(error)") }
                console.warning("cannot resume from \(path): \(error); trying the previous checkpoint")
            }
        }
        if case .auto = resume {
            if !candidates.isEmpty {
                throw TrainingError.configuration(
                    "--resume auto: none of the \(candidates.count) checkpoint(s) in \(configuration.checkpointDirectory!) loads (see above)"
                )
            }
            return nil
        }
        return nil
    }

    private func checkCompatible(_ file: SafeTensors, _ path: String) throws {
        let differing = configuration.trajectoryFields.compactMap { flag, value -> String? in
            let saved = file.metadata["config.\(flag)"] ?? CheckpointFormat.addedLater[flag] ?? "(absent)"
            return saved == value ? nil : "\(flag) is \(value) here but \(saved) in the checkpoint"
        }
        if !differing.isEmpty {
            throw TrainingError.configuration(
                "cannot resume from \(path): the configuration differs: " + differing.joined(separator: "; "))
        }
    }

    private func apply(_ file: SafeTensors, _ path: String) throws {
        try CheckpointFormat.loadWeights(file, into: model)
        if file.tensors.contains(where: { $0.name == CheckpointFormat.trainingStatisticsName }) {
            let statistics = try file.floats(CheckpointFormat.trainingStatisticsName)
            guard statistics.count == model.buffers.count else {
                throw ForeignCheckpoint(
                    text:
                        "\(CheckpointFormat.trainingStatisticsName) has \(statistics.count) values; expected \(model.buffers.count)"
                )
            }
            model.buffers.all.update(fromContentsOf: statistics)
        }
        var momentum: [Float]? = nil
        if let buffer = optimizer.momentumBuffer {
            momentum = try file.floats(CheckpointFormat.momentumName)
            guard momentum!.count == buffer.count else {
                throw ForeignCheckpoint(text: "the momentum has \(momentum!.count) values; expected \(buffer.count)")
            }
        }
        guard let optimizerStep = file.metadata["autorate.optimizer_step"].flatMap(Int.init) else {
            throw ForeignCheckpoint(text: "no autorate.optimizer_step metadata")
        }
        optimizer.restore(step: optimizerStep, momentum: momentum)
    }
}

/// A file that decodes but is not a checkpoint of this network.
struct ForeignCheckpoint: Error, CustomStringConvertible {
    let text: String
    var description: String { text }
}

/// `--resume auto` or `--resume PATH`.
public enum ResumeSource: Sendable, Equatable {
    case auto
    case path(String)
    public init(argument: String) { self = argument == "auto" ? .auto : .path(argument) }
}
