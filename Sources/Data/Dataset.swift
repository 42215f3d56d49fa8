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

    /// `classNames`, or the class numbers as names.
    public var resolvedClassNames: [String] { classNames ?? (0..<classes).map(String.init) }
}

/// A train/test pair, standardized with statistics of the training split only.
public struct DataSplits: Sendable {
    public var train: Dataset
    public var test: Dataset
    /// What loading noticed and the user should hear (skipped files, a rebuilt cache), one line each.
    public var notes: [String] = []
    public init(train: Dataset, test: Dataset) {
        precondition(
            train.dimension == test.dimension && train.classes == test.classes && train.image == test.image,
            "train and test splits differ in dimension, image shape or classes")
        precondition(train.classNames == test.classNames, "train and test splits name their classes differently")
        self.train = train
        self.test = test
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

    /// Standardizes both splits in place.
    public func apply(to splits: inout DataSplits) {
        let d = splits.train.dimension, n = splits.train.count
        guard d > 0 else { return }
        var mean = [Double](repeating: 0, count: d), sq = [Double](repeating: 0, count: d)
        splits.train.features.withUnsafeBufferPointer { f in
            for i in 0..<n {
                let row = f.baseAddress! + i * d
                for j in 0..<d {
                    let v = Double(row[j])
                    mean[j] += v
                    sq[j] += v * v
                }
            }
        }
        var shift = [Float](repeating: 0, count: d), scale = [Float](repeating: 1, count: d)
        switch self {
        case .perFeature:
            for j in 0..<d {
                let (m, s) = Self.moments(mean[j], sq[j], count: Double(n))
                shift[j] = m
                scale[j] = s
            }
        case .global:
            let (m, s) = Self.moments(mean.reduce(0, +), sq.reduce(0, +), count: Double(n * d))
            shift = [Float](repeating: m, count: d)
            scale = [Float](repeating: s, count: d)
        case let .perChannel(channels):
            precondition(channels > 0 && d % channels == 0, "\(d) features are not pixels of \(channels) channels")
            // Summed in feature order, so that one channel gives exactly the `global` numbers.
            var sum = [Double](repeating: 0, count: channels), sumSq = sum
            for j in 0..<d {
                sum[j % channels] += mean[j]
                sumSq[j % channels] += sq[j]
            }
            for c in 0..<channels {
                let (m, s) = Self.moments(sum[c], sumSq[c], count: Double(n * d / channels))
                for j in stride(from: c, to: d, by: channels) {
                    shift[j] = m
                    scale[j] = s
                }
            }
        }
        Self.transform(&splits.train.features, dimension: d, shift: shift, scale: scale)
        Self.transform(&splits.test.features, dimension: d, shift: shift, scale: scale)
    }

    /// The shift (mean) and scale (1/std; 1 for a constant input, which is then only centred).
    private static func moments(_ sum: Double, _ sumSq: Double, count: Double) -> (Float, Float) {
        let m = sum / count
        let v = Swift.max(sumSq / count - m * m, 0)
        return (Float(m), v > 1e-12 ? Float(1 / v.squareRoot()) : 1)
    }

    private static func transform(_ features: inout [Float], dimension d: Int, shift: [Float], scale: [Float]) {
        features.withUnsafeMutableBufferPointer { f in
            for i in 0..<(f.count / d) {
                let row = f.baseAddress! + i * d
                for j in 0..<d { row[j] = (row[j] - shift[j]) * scale[j] }
            }
        }
    }
}
