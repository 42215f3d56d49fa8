import TensorCore

/// A labelled classification dataset held in memory: `features: [count, dimension]` row-major.
/// Image datasets also carry their `image` shape; each row is then one image in HWC order
/// (see `ImageShape`), so `dimension == image.count`.
public struct Dataset: Sendable {
    public var features: [Float]
    public var labels: [Int32]
    public let dimension: Int
    public let classes: Int
    public let name: String
    public let image: ImageShape?

    public init(
        name: String, features: [Float], labels: [Int32], dimension: Int, classes: Int, image: ImageShape? = nil
    ) {
        precondition(image == nil || image!.count == dimension, "\(name): image \(image!) does not have \(dimension) values")
        precondition(
            features.count == labels.count * dimension,
            "\(name): \(features.count) feature values for \(labels.count) samples of dimension \(dimension)")
        self.name = name
        self.features = features
        self.labels = labels
        self.dimension = dimension
        self.classes = classes
        self.image = image
    }

    public var count: Int { labels.count }
}

/// A train/test pair, standardized with statistics of the training split only.
public struct DataSplits: Sendable {
    public var train: Dataset
    public var test: Dataset
    public init(train: Dataset, test: Dataset) {
        precondition(
            train.dimension == test.dimension && train.classes == test.classes && train.image == test.image,
            "train and test splits differ in dimension, image shape or classes")
        self.train = train
        self.test = test
    }
}

/// How inputs are standardized: per feature (tabular data), or with one mean and deviation over all
/// values (images, where border pixels have zero variance).
public enum Standardization: Sendable {
    case perFeature
    case global

    /// Standardizes both splits in place with the training split's statistics (accumulated in Double).
    public func apply(to splits: inout DataSplits) {
        let d = splits.train.dimension, n = splits.train.count
        var mean = [Double](repeating: 0, count: d), sq = [Double](repeating: 0, count: d)
        for i in 0..<n {
            for j in 0..<d {
                let v = Double(splits.train.features[i * d + j])
                mean[j] += v
                sq[j] += v * v
            }
        }
        var shift = [Float](repeating: 0, count: d), scale = [Float](repeating: 1, count: d)
        switch self {
        case .perFeature:
            for j in 0..<d {
                let m = mean[j] / Double(n)
                let v = Swift.max(sq[j] / Double(n) - m * m, 0)
                shift[j] = Float(m)
                scale[j] = v > 1e-12 ? Float(1 / v.squareRoot()) : 1
            }
        case .global:
            let total = Double(n * d)
            let m = mean.reduce(0, +) / total
            let v = Swift.max(sq.reduce(0, +) / total - m * m, 0)
            shift = [Float](repeating: Float(m), count: d)
            scale = [Float](repeating: v > 1e-12 ? Float(1 / v.squareRoot()) : 1, count: d)
        }
        for k in 0..<splits.train.features.count {
            splits.train.features[k] = (splits.train.features[k] - shift[k % d]) * scale[k % d]
        }
        for k in 0..<splits.test.features.count {
            splits.test.features[k] = (splits.test.features[k] - shift[k % d]) * scale[k % d]
        }
    }
}
