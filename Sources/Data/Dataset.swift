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
    /// The name of each class (ImageFolder's directory names); nil: the classes are numbered 0...
    public var classNames: [String]?

    public init(
        name: String, features: [Float], labels: [Int32], dimension: Int, classes: Int, image: ImageShape? = nil,
        classNames: [String]? = nil
    ) {
        precondition(
            classNames == nil || classNames!.count == classes, "\(name): \(classNames!.count) class names for \(classes) classes")
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
        self.classNames = classNames
    }

    public var count: Int { labels.count }

    /// The samples at `indices`, in that order.
    public func selecting(_ indices: [Int], name: String) -> Dataset {
        var rows = [Float]()
        rows.reserveCapacity(indices.count * dimension)
        for i in indices { rows += features[(i * dimension)..<((i + 1) * dimension)] }
        return Dataset(
            name: name, features: rows, labels: indices.map { labels[$0] }, dimension: dimension, classes: classes,
            image: image, classNames: classNames)
    }

    /// `classNames`, or the class numbers as names.
    public var resolvedClassNames: [String] { classNames ?? (0..<classes).map(String.init) }
}

/// A train/test pair, standardized with statistics of the training split only.
public struct DataSplits: Sendable {
    public var train: Dataset
    public var test: Dataset
    /// What loading noticed and the user should hear (skipped files, a rebuilt cache), one line each.
    public var notes: [String] = []
    /// Held out of the training set (`--val-fraction`); scored during training instead of the test split.
    public var validation: Dataset?
    /// The training split's statistics every split was standardized with (nil: not standardized).
    public var standardization: InputStandardization?
    public init(train: Dataset, test: Dataset) {
        precondition(
            train.dimension == test.dimension && train.classes == test.classes && train.image == test.image,
            "train and test splits differ in dimension, image shape or classes")
        precondition(train.classNames == test.classNames, "train and test splits name their classes differently")
        self.train = train
        self.test = test
    }

    /// Moves `fraction` of the training samples (rounded, at least one, leaving one) into
    /// `validation`, chosen by `seed`; both parts keep the original order.
    public mutating func holdOut(fraction: Double, seed: UInt64) {
        precondition(fraction > 0 && fraction < 1 && train.count >= 2, "holdOut(fraction: \(fraction)) of \(train.count) samples")
        let n = train.count
        let held = Swift.min(Swift.max(Int((fraction * Double(n)).rounded()), 1), n - 1)
        // the sampler's own shuffle (the standard library's may change between toolchains)
        let order = ShardSampler.permutation(count: n, seed: seed ^ 0x7A1_0000_0000, epoch: 0)
        let chosen = Set(order.prefix(held).map { Int($0) })
        validation = train.selecting((0..<n).filter { chosen.contains($0) }, name: train.name + "/validation")
        train = train.selecting((0..<n).filter { !chosen.contains($0) }, name: train.name)
    }

    /// Standardizes every split with the training split's statistics in `form`, and records them.
    public mutating func standardize(_ form: Standardization) {
        let fitted = form.fit(train)
        fitted.apply(to: &train)
        fitted.apply(to: &test)
        if validation != nil { fitted.apply(to: &validation!) }
        standardization = fitted
    }

    /// Per channel for images, per feature for vectors.
    public var defaultStandardization: Standardization {
        train.image.map { .perChannel(channels: $0.channels) } ?? .perFeature
    }
}

/// How inputs are standardized, always with the training split's statistics (accumulated in Double):
/// per feature (tabular data); with one mean and deviation over all values; or per channel of
/// channels-last images (over every pixel of every training image; border pixels of MNIST have zero
/// variance, so per-pixel statistics would not do). With one channel, `perChannel` equals `global`.
public enum Standardization: Sendable, Equatable {
    case perFeature
    case global
    case perChannel(channels: Int)

    /// Standardizes both splits in place with the training split's statistics, and returns them.
    @discardableResult
    public func apply(to splits: inout DataSplits) -> InputStandardization {
        splits.standardize(self)
        return splits.standardization!
    }

    /// The training split's statistics in this form.
    public func fit(_ train: Dataset) -> InputStandardization {
        let d = train.dimension, n = train.count
        var mean = [Double](repeating: 0, count: d), sq = [Double](repeating: 0, count: d)
        train.features.withUnsafeBufferPointer { f in
            for i in 0..<n {
                let row = f.baseAddress! + i * d
                for j in 0..<d {
                    let v = Double(row[j])
                    mean[j] += v
                    sq[j] += v * v
                }
            }
        }
        switch self {
        case .perFeature:
            let moments = (0..<d).map { Self.moments(mean[$0], sq[$0], count: Double(n)) }
            return InputStandardization(kind: .perFeature, mean: moments.map(\.0), std: moments.map(\.1))
        case .global:
            let (m, s) = Self.moments(mean.reduce(0, +), sq.reduce(0, +), count: Double(n * d))
            return InputStandardization(kind: .perChannel, mean: [m], std: [s])
        case let .perChannel(channels):
            precondition(channels > 0 && d % channels == 0, "\(d) features are not pixels of \(channels) channels")
            // Summed in feature order, so that one channel gives exactly the `global` numbers.
            var sum = [Double](repeating: 0, count: channels), sumSq = sum
            for j in 0..<d {
                sum[j % channels] += mean[j]
                sumSq[j % channels] += sq[j]
            }
            let moments = (0..<channels).map { Self.moments(sum[$0], sumSq[$0], count: Double(n * d / channels)) }
            return InputStandardization(kind: .perChannel, mean: moments.map(\.0), std: moments.map(\.1))
        }
    }

    /// The mean and standard deviation (1 for a constant input, which is then only centred).
    private static func moments(_ sum: Double, _ sumSq: Double, count: Double) -> (Double, Double) {
        let m = sum / count
        let v = Swift.max(sumSq / count - m * m, 0)
        return (m, v > 1e-12 ? v.squareRoot() : 1)
    }
}

/// Fitted standardization: `x[j] -> (x[j] - mean[j % L]) / std[j % L]` with L = `mean.count` (one
/// entry per feature, or per channel of channels-last pixels), computed in Float as
/// `(x - Float(mean)) * Float(1 / std)`. Checkpoints record it, so that a model is evaluated and
/// exported with the statistics it was trained with.
public struct InputStandardization: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case perFeature = "per_feature"
        case perChannel = "per_channel"
    }
    public var kind: Kind
    public var mean: [Double]
    public var std: [Double]

    public init(kind: Kind, mean: [Double], std: [Double]) {
        precondition(mean.count == std.count && !mean.isEmpty, "standardization: \(mean.count) means, \(std.count) deviations")
        self.kind = kind
        self.mean = mean
        self.std = std
    }

    /// Whether it applies to rows of `dimension` values.
    public func fits(dimension: Int) -> Bool { dimension > 0 && dimension % mean.count == 0 }

    /// Standardizes `dataset` in place.
    public func apply(to dataset: inout Dataset) {
        let d = dataset.dimension, l = mean.count
        precondition(fits(dimension: d), "standardization of \(l) entries for rows of \(d) values")
        let shift = (0..<d).map { Float(mean[$0 % l]) }
        let scale = (0..<d).map { Float(1 / std[$0 % l]) }
        dataset.features.withUnsafeMutableBufferPointer { f in
            for i in 0..<(f.count / d) {
                let row = f.baseAddress! + i * d
                for j in 0..<d { row[j] = (row[j] - shift[j]) * scale[j] }
            }
        }
    }
}
