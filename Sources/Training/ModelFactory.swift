import Data
import Layers
import TensorCore

/// The network families `--model` accepts.
public enum ModelKind: String, Sendable, CaseIterable {
    /// Linear-BN-ReLU layers (`--widths`); any data.
    case mlp
    /// A small conv net (conv 16, pool, conv 32, pool), for tests and quick runs; image data.
    case cnn
    /// VGG-style conv3x3-BN-ReLU stack with pools (`--vgg-layers`, `--width-multiplier`); image data.
    case vgg
    /// CIFAR ResNet-20 (`--shortcut`); image data.
    case resnet20
}

extension TrainingConfiguration {
    /// The conv architecture of a conv `model`, nil for `mlp`.
    public var convArchitecture: ConvArchitecture? {
        switch model {
        case .mlp: nil
        case .cnn: .cnn
        case .vgg:
            vggLayers.map { layers in
                .sequential(
                    layers.map { l in
                        if case let .conv(c) = l {
                            .conv(Swift.max(1, Int((Double(c) * widthMultiplier).rounded())))
                        } else {
                            .pool
                        }
                    })
            } ?? .vgg(widthMultiplier: widthMultiplier)
        case .resnet20: .resnet20(shortcut: shortcut)
        }
    }

    /// Builds the network this configuration names for `data`, for batches of up to `maxBatch`.
    /// - Throws: `TrainingError.configuration` when the model does not fit the data.
    public func makeNetwork(for data: Dataset, maxBatch: Int) throws -> any Network {
        guard let architecture = convArchitecture else {
            let widths = try resolvedWidths(dimension: data.dimension, classes: data.classes)
            if !batchNormalized && head == .bn {
                throw TrainingError.configuration("--no-bn builds a network without BN; it takes --head linear, not --head bn")
            }
            return MLP(widths: widths, head: head, batchNorm: batchNorm, maxBatch: maxBatch, normalized: batchNormalized)
        }
        if !batchNormalized {
            throw TrainingError.configuration(
                "--no-bn applies to --model mlp only (the plain baseline); --model \(model.rawValue) always has BN")
        }
        if widths != nil {
            throw TrainingError.configuration(
                "--widths sets the layers of --model mlp only; --model \(model.rawValue) has its own layers")
        }
        guard let image = data.image else {
            throw TrainingError.configuration(
                "--model \(model.rawValue) needs image data, but \(self.data) holds vectors of \(data.dimension) values; use --data synthetic-images, cifar10:DIR, mnist:DIR or fashion-mnist:DIR, or --model mlp"
            )
        }
        try checkFits(architecture, image)
        return ConvNet(
            architecture, input: image, classes: data.classes, head: head, batchNorm: batchNorm, maxBatch: maxBatch,
            convolution: convolution)
    }

    /// Every pool and stride must leave at least one pixel.
    private func checkFits(_ architecture: ConvArchitecture, _ image: ImageShape) throws {
        var size = Swift.min(image.height, image.width)
        let halvings: Int
        switch architecture {
        case let .sequential(layers): halvings = layers.filter { $0 == .pool }.count
        case let .resnet(widths, _, _): halvings = widths.count - 1
        }
        for _ in 0..<halvings { size = size / 2 }
        if size < 1 {
            throw TrainingError.configuration(
                "--model \(model.rawValue) halves the image size \(halvings) times, too often for the \(image) images of \(data); use fewer pools (--vgg-layers) or larger images"
            )
        }
    }
}
