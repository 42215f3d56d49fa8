/// Where the training data comes from, as given to `--data`.
public enum DataSource: Sendable, Equatable, CustomStringConvertible {
    /// The built-in synthetic dataset (the default): vectors labelled by a teacher network.
    case synthetic
    /// The built-in synthetic image dataset (32x32x3, see `SyntheticImages`).
    case syntheticImages
    /// MNIST-format IDX files in a directory.
    case mnist(directory: String)
    /// Fashion-MNIST: the same IDX format and file names as MNIST.
    case fashionMNIST(directory: String)
    /// The CIFAR-10 binary batches in a directory (or its `cifar-10-batches-bin`).
    case cifar10(directory: String)
    /// NumPy arrays x_train, y_train, x_test, y_test in one `.npz` (Keras' `mnist.npz` layout).
    case npz(file: String)
    /// The same four arrays as `.npy` files in a directory.
    case npy(directory: String)
    /// PNG and JPEG images in torchvision's ImageFolder layout, decoded once into a cache (`ImageFolder`).
    case folder(directory: String)

    public static let accepted =
        "'synthetic', 'synthetic-images', 'mnist:DIR', 'fashion-mnist:DIR', 'cifar10:DIR', 'npz:FILE', 'npy:DIR' or 'folder:DIR' (DIR/train/CLASS/*.png|*.jpg, DIR/test/CLASS/...)"

    private static let directoryForms: [(prefix: String, make: @Sendable (String) -> DataSource)] = [
        ("mnist:", { .mnist(directory: $0) }),
        ("fashion-mnist:", { .fashionMNIST(directory: $0) }),
        ("cifar10:", { .cifar10(directory: $0) }),
        ("npz:", { .npz(file: $0) }),
        ("npy:", { .npy(directory: $0) }),
        ("folder:", { .folder(directory: $0) }),
    ]

    /// Parses one of the `accepted` forms; nil for anything else (an empty DIR or FILE included).
    public init?(argument: String) {
        switch argument {
        case "synthetic": self = .synthetic
        case "synthetic-images": self = .syntheticImages
        default:
            guard let form = Self.directoryForms.first(where: { argument.hasPrefix($0.prefix) }),
                argument.count > form.prefix.count
            else { return nil }
            self = form.make(String(argument.dropFirst(form.prefix.count)))
        }
    }

    public var description: String {
        switch self {
        case .synthetic: "synthetic"
        case .syntheticImages: "synthetic-images"
        case let .mnist(directory): "mnist:\(directory)"
        case let .fashionMNIST(directory): "fashion-mnist:\(directory)"
        case let .cifar10(directory): "cifar10:\(directory)"
        case let .npz(file): "npz:\(file)"
        case let .npy(directory): "npy:\(directory)"
        case let .folder(directory): "folder:\(directory)"
        }
    }

    /// Loads and standardizes both splits. Every rank loads the same files and gets the same arrays.
    /// Images are standardized per channel; the tabular `synthetic` set per feature.
    ///
    /// Collective over `options.team` for `folder:` (its members share the decoding); the other
    /// sources ignore the options.
    public func load(_ options: DataLoadOptions = DataLoadOptions()) throws -> DataSplits {
        var splits = try loadUnstandardized(options)
        splits.standardize(splits.defaultStandardization)
        return splits
    }

    /// Both splits as stored (pixels in [0, 1]), for a model that brings its own standardization.
    public func loadUnstandardized(_ options: DataLoadOptions = DataLoadOptions()) throws -> DataSplits {
        let splits: DataSplits
        switch self {
        case .synthetic:
            splits = SyntheticDataset.make(seed: 1)  // a fixed dataset: --seed varies only the training
        case .syntheticImages:
            splits = SyntheticImages.make()  // fixed too
        case let .mnist(directory):
            splits = try MNIST.load(directory: directory)
        case let .fashionMNIST(directory):
            splits = try FashionMNIST.load(directory: directory)
        case let .cifar10(directory):
            splits = try CIFAR10.load(directory: directory)
        case let .npz(file):
            splits = try NumPy.load(npz: file)
        case let .npy(directory):
            splits = try NumPy.load(npyDirectory: directory)
        case let .folder(directory):
            splits = try ImageFolder.load(directory: directory, options: options)
        }
        return splits
    }
}
