import Data
import Foundation
import Layers
import TensorCore

/// What a checkpoint (and an exported weights file) records about its model, as JSON in the
/// safetensors metadata under `autorate.model`: enough to rebuild the network without the training
/// flags, to evaluate it on new data (the input shape and standardization it was trained with), and
/// to use it elsewhere (class names, BN epsilon).
public struct ModelCard: Codable, Sendable, Equatable {
    public static let metadataKey = "autorate.model"
    public static let currentFormat = 1

    public var format = ModelCard.currentFormat
    /// `--model`: mlp, cnn, vgg or resnet20.
    public var model: String
    /// The architecture line printed at start-up.
    public var architecture: String
    /// The MLP's `[in, hidden..., classes]`.
    public var widths: [Int]?
    /// A sequential conv net's layers: channel counts, "M" for a 2x2 max pool.
    public var layers: [String]?
    public var resnet: ResNet?
    /// `linear` (Linear with bias) or `bn` (Linear without bias, then BN).
    public var head: String
    /// False for the plain MLP without BN (`--no-bn`).
    public var batchNorm: Bool
    /// How BN layers get their epsilon (`zero`, `scaled`, `standard`) and its base value.
    public var bnEpsilonMode: String
    public var bnEpsilon: Double
    /// `auto`, `im2col` or `winograd` (`--convolution`).
    public var convolution: String
    public var input: Input
    public var classes: Int
    public var classNames: [String]
    public var standardization: InputStandardization?
    /// `--data` of the run that trained it.
    public var data: String

    public struct ResNet: Codable, Sendable, Equatable {
        public var widths: [Int]
        public var blocks: Int
        /// `padding` (option A) or `projection` (option B).
        public var shortcut: String
    }

    /// Images are given to autorate as channels-last rows (HWC) and to PyTorch as NCHW; vectors as
    /// `features` values.
    public struct Input: Codable, Sendable, Equatable {
        public var features: Int
        public var height: Int?
        public var width: Int?
        public var channels: Int?
        /// For images: "gray" or "RGB".
        public var channelOrder: String?
    }

    public var image: ImageShape? {
        guard let h = input.height, let w = input.width, let c = input.channels else { return nil }
        return ImageShape(height: h, width: w, channels: c)
    }

    /// The card of `model`, built by `configuration` for `data`.
    public init(
        configuration c: TrainingConfiguration, model: any Network, data: Dataset, standardization: InputStandardization?
    ) {
        self.standardization = standardization
        self.model = c.model.rawValue
        architecture = model.architecture
        switch (model as? ConvNet)?.architectureSpec {
        case let .sequential(layers)?:
            self.layers = layers.map { if case let .conv(n) = $0 { String(n) } else { "M" } }
        case let .resnet(widths, blocks, shortcut)?:
            resnet = ResNet(widths: widths, blocks: blocks, shortcut: shortcut.rawValue)
        case nil:
            widths = (model as? MLP)?.widths
        }
        head = c.head.rawValue
        batchNorm = c.batchNormalized
        bnEpsilonMode = c.batchNorm.epsilonMode.rawValue
        bnEpsilon = c.batchNorm.epsilon
        convolution = c.convolution?.rawValue ?? "auto"
        let image = data.image
        input = Input(
            features: data.dimension, height: image?.height, width: image?.width, channels: image?.channels,
            channelOrder: image.map { $0.channels == 1 ? "gray" : $0.channels == 3 ? "RGB" : "\($0.channels) channels" })
        classes = data.classes
        classNames = data.resolvedClassNames
        self.data = "\(c.data)"
    }

    /// The JSON stored in the metadata (keys in snake case, sorted).
    public var json: String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }

    /// The card in a checkpoint's or weights file's metadata.
    /// - Throws: `TrainingError.configuration` naming `path` when it is absent or unreadable.
    public static func read(_ metadata: [String: String], path: String) throws -> ModelCard {
        guard let text = metadata[metadataKey] else {
            throw TrainingError.configuration(
                "\(path) has no \(metadataKey) metadata: it was written by an older autorate; resume it with a larger --steps so that this version writes a checkpoint, or retrain"
            )
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let card: ModelCard
        do {
            card = try decoder.decode(ModelCard.self, from: Foundation.Data(text.utf8))
        } catch {
            throw TrainingError.configuration("\(path): its \(metadataKey) metadata is not a model description: \(error)")
        }
        guard card.format <= currentFormat else {
            throw TrainingError.configuration(
                "\(path): model description format \(card.format) is newer than this autorate's (\(currentFormat)); update autorate"
            )
        }
        return card
    }

    /// The network this card describes, for batches of up to `maxBatch` samples (weights not loaded).
    /// - Throws: `TrainingError.configuration` for a card no network matches.
    public func makeNetwork(maxBatch: Int) throws -> any Network {
        func bad(_ what: String) -> TrainingError { .configuration("the model description's \(what) is not accepted") }
        guard let head = HeadKind(rawValue: head) else { throw bad("head '\(self.head)'") }
        guard let mode = EpsilonMode(rawValue: bnEpsilonMode), bnEpsilon.isFinite, bnEpsilon >= 0 else {
            throw bad("BN epsilon \(bnEpsilonMode) \(bnEpsilon)")
        }
        let settings = BatchNormSettings(epsilonMode: mode, epsilon: bnEpsilon)
        guard classes >= 2, classNames.count == classes, input.features > 0 else { throw bad("classes or input") }
        if let widths {
            guard widths.count >= 2, widths.allSatisfy({ $0 > 0 }), widths.first == input.features, widths.last == classes
            else { throw bad("widths \(widths)") }
            return MLP(widths: widths, head: head, batchNorm: settings, maxBatch: maxBatch, normalized: batchNorm)
        }
        guard let image, image.count == input.features, image.height > 0, image.width > 0, image.channels > 0 else {
            throw bad("input shape")
        }
        let architecture: ConvArchitecture
        if let layers {
            let parsed = ConvArchitecture.parseLayers(layers.joined(separator: ","))
            guard let parsed else { throw bad("layers \(layers)") }
            architecture = .sequential(parsed)
        } else if let resnet {
            guard let shortcut = ShortcutKind(rawValue: resnet.shortcut), resnet.blocks > 0, !resnet.widths.isEmpty,
                resnet.widths.allSatisfy({ $0 > 0 })
            else { throw bad("ResNet \(resnet)") }
            architecture = .resnet(widths: resnet.widths, blocks: resnet.blocks, shortcut: shortcut)
        } else {
            throw bad("network (neither widths, layers nor resnet)")
        }
        let algorithm: Conv2d.Algorithm?
        if convolution == "auto" {
            algorithm = nil
        } else if let chosen = Conv2d.Algorithm(rawValue: convolution) {
            algorithm = chosen
        } else {
            throw bad("convolution '\(convolution)'")
        }
        return ConvNet(
            architecture, input: image, classes: classes, head: head, batchNorm: settings, maxBatch: maxBatch,
            convolution: algorithm)
    }
}
