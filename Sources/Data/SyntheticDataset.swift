import TensorCore

/// The built-in dataset: deterministic, learnable, no download. Inputs are standard normal vectors;
/// labels come from a fixed random teacher network `argmax(V relu(U x))`, so a BN-MLP can learn them
/// well but a linear model cannot. The same seed gives the same data on every rank and machine.
public enum SyntheticDataset {
    public static let defaultTrainCount = 32768
    public static let defaultTestCount = 4096
    public static let defaultDimension = 32
    public static let defaultClasses = 10

    public static func make(
        trainCount: Int = defaultTrainCount, testCount: Int = defaultTestCount,
        dimension: Int = defaultDimension, classes: Int = defaultClasses,
        seed: UInt64 = 1
    ) -> DataSplits {
        var rng = SplitMix64(seed: seed ^ 0xDA7A)
        let hidden = 16
        let u = (0..<(hidden * dimension)).map { _ in rng.normal() / Double(dimension).squareRoot() }
        let v = (0..<(classes * hidden)).map { _ in rng.normal() / Double(hidden).squareRoot() }
        func sample(_ count: Int, _ name: String) -> Dataset {
            var features = [Float](repeating: 0, count: count * dimension)
            var labels = [Int32](repeating: 0, count: count)
            var h = [Double](repeating: 0, count: hidden)
            for i in 0..<count {
                for j in 0..<dimension { features[i * dimension + j] = Float(rng.normal()) }
                for a in 0..<hidden {
                    var s = 0.0
                    for j in 0..<dimension { s += u[a * dimension + j] * Double(features[i * dimension + j]) }
                    h[a] = Swift.max(s, 0)
                }
                var best = 0, bestScore = -Double.infinity
                for c in 0..<classes {
                    var s = 0.0
                    for a in 0..<hidden { s += v[c * hidden + a] * h[a] }
                    if s > bestScore { bestScore = s; best = c }
                }
                labels[i] = Int32(best)
            }
            return Dataset(name: name, features: features, labels: labels, dimension: dimension, classes: classes)
        }
        let train = sample(trainCount, "synthetic/train")
        let test = sample(testCount, "synthetic/test")
        return DataSplits(train: train, test: test)
    }
}
