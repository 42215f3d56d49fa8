import Data
import Layers
import TensorCore

/// A trained model read back from a checkpoint: its card, the network rebuilt from it and the
/// weights loaded (the BN running statistics are the final ones, those the run's printed accuracy used).
public struct SavedModel {
    public let path: String
    public let card: ModelCard
    public let model: any Network
    /// The steps the checkpoint holds.
    public let step: Int
    /// The checkpoint as read (metadata and tensors).
    public let file: SafeTensors

    /// Reads the checkpoint at `path` (checksum verified) for forwards of up to `maxBatch` samples
    /// (default: the evaluation size of its kind of model). No communication.
    /// - Throws: `TrainingError.configuration` naming the file and what is wrong.
    public init(checkpoint path: String, maxBatch: Int? = nil) throws {
        let file: SafeTensors
        do {
            file = try CheckpointDirectory.load(path)
        } catch let error as DataError {
            throw TrainingError.configuration("--checkpoint \(path): \(error.problem)")
        } catch {
            throw TrainingError.configuration("--checkpoint \(path): \(error)")
        }
        guard file.metadata["autorate.format"] == CheckpointFormat.format,
            let step = file.metadata["autorate.step"].flatMap(Int.init)
        else {
            throw TrainingError.configuration(
                "--checkpoint \(path): not an autorate checkpoint (no \(CheckpointFormat.format) metadata); give a file that autorate train --checkpoint-dir wrote"
            )
        }
        let card = try ModelCard.read(file.metadata, path: path)
        let kind = ModelKind(rawValue: card.model) ?? .mlp
        let model: any Network
        do {
            model = try card.makeNetwork(maxBatch: maxBatch ?? Evaluator.rows(for: kind))
        } catch {
            throw TrainingError.configuration("--checkpoint \(path): \(error)")
        }
        do {
            try CheckpointFormat.loadWeights(file, into: model)
        } catch {
            throw TrainingError.configuration("--checkpoint \(path): \(error)")
        }
        self.path = path
        self.card = card
        self.model = model
        self.step = step
        self.file = file
    }

    /// The weights of a checkpoint written before checkpoints recorded their model card (no
    /// network can be rebuilt from it): its parameters and BN buffers as stored, nil for a
    /// checkpoint that has a card (use `init`) or is not an autorate checkpoint.
    public static func weightsWithoutCard(_ path: String) -> SafeTensors? {
        guard let file = try? CheckpointDirectory.load(path), file.metadata["autorate.format"] == CheckpointFormat.format,
            file.metadata[ModelCard.metadataKey] == nil
        else { return nil }
        var weights = SafeTensors(tensors: file.tensors.filter { !CheckpointFormat.isTrainingState($0.name) })
        weights.metadata = file.metadata.filter { $0.key == "autorate.architecture" || $0.key == "autorate.step" }
        return weights
    }

    /// `--image-size` of the run that trained it (nil: images as stored).
    public var trainingImageSize: ImageSize? { file.metadata["config.--image-size"].flatMap(ImageSize.init(argument:)) }

    /// The weights `export` writes and the epsilon PyTorch's BatchNorm layers must use with them
    /// (0 when the per-channel epsilon is folded into `running_var`).
    public var exportedWeights: (file: SafeTensors, pytorchEpsilon: Double) {
        let (weights, epsilon) = CheckpointFormat.exported(model, batchesTracked: step)
        return (weights, epsilon)
    }

    /// `dataset` as stored (pixels in [0, 1]) made ready for this model: checked to have its input
    /// shape and classes, then standardized with the statistics it was trained with.
    /// - Throws: `TrainingError.configuration` naming `source` and what does not match.
    public func prepare(_ dataset: Dataset, from source: DataSource) throws -> Dataset {
        var data = dataset
        if let image = card.image {
            guard data.image == image else {
                throw TrainingError.configuration(
                    "--data \(source) holds \(data.image.map { "\($0) images" } ?? "vectors of \(data.dimension) values"), but the model in \(path) takes \(image) images (rows x columns x channels)"
                )
            }
        } else if data.dimension != card.input.features {
            throw TrainingError.configuration(
                "--data \(source) holds \(data.dimension) values per sample, but the model in \(path) takes \(card.input.features)"
            )
        }
        if let names = data.classNames, names != card.classNames {
            throw TrainingError.configuration(
                "--data \(source) names its classes \(names.prefix(5).joined(separator: ", "))\(names.count > 5 ? ", ..." : ""), but the model in \(path) was trained on \(card.classNames.prefix(5).joined(separator: ", "))\(card.classNames.count > 5 ? ", ..." : "")"
            )
        }
        if let largest = data.labels.max(), Int(largest) >= card.classes {
            throw TrainingError.configuration(
                "--data \(source) has label \(largest), but the model in \(path) has \(card.classes) classes (labels 0 to \(card.classes - 1))"
            )
        }
        guard let standardization = card.standardization else {
            throw TrainingError.configuration(
                "\(path) records no input standardization, so new data cannot be prepared for it; score a checkpoint that autorate train wrote"
            )
        }
        guard standardization.fits(dimension: data.dimension) else {
            throw TrainingError.configuration(
                "\(path): its standardization has \(standardization.mean.count) entries, which do not fit \(data.dimension) values per sample"
            )
        }
        standardization.apply(to: &data)
        return data
    }
}
