/// Where the training data comes from, as given to `--data`.
public enum DataSource: Sendable, Equatable, CustomStringConvertible {
    /// The built-in synthetic dataset (the default).
    case synthetic
    /// MNIST-format IDX files in a directory.
    case mnist(directory: String)

    public static let accepted = "'synthetic' or 'mnist:DIR'"

    /// Parses `synthetic` or `mnist:DIR`; nil for anything else.
    public init?(argument: String) {
        if argument == "synthetic" {
            self = .synthetic
        } else if argument.hasPrefix("mnist:"), argument.count > "mnist:".count {
            self = .mnist(directory: String(argument.dropFirst("mnist:".count)))
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .synthetic: "synthetic"
        case let .mnist(directory): "mnist:\(directory)"
        }
    }

    /// Loads and standardizes both splits. Every rank loads the same files and gets the same arrays.
    public func load() throws -> DataSplits {
        var splits: DataSplits
        switch self {
        case .synthetic:
            splits = SyntheticDataset.make(seed: 1)  // a fixed dataset: --seed varies only the training
            Standardization.perFeature.apply(to: &splits)
        case let .mnist(directory):
            splits = try MNIST.load(directory: directory)
            Standardization.global.apply(to: &splits)
        }
        return splits
    }
}
