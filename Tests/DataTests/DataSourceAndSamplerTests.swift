import XCTest
import Data
import TensorCore

final class DataSourceTests: XCTestCase {
    func testParsing() {
        XCTAssertEqual(DataSource(argument: "synthetic"), .synthetic)
        XCTAssertEqual(DataSource(argument: "mnist:/data/mnist"), .mnist(directory: "/data/mnist"))
        XCTAssertEqual(DataSource(argument: "mnist:rel/dir:x"), .mnist(directory: "rel/dir:x"))
        XCTAssertNil(DataSource(argument: "mnist:"))
        XCTAssertNil(DataSource(argument: "mnist"))
        XCTAssertNil(DataSource(argument: "Synthetic"))
        XCTAssertNil(DataSource(argument: ""))
        XCTAssertNil(DataSource(argument: "cifar:/x"))
        for s in ["synthetic", "mnist:/a/b"] { XCTAssertEqual(DataSource(argument: s)?.description, s) }
    }

    func testParsingImageSources() {
        XCTAssertEqual(DataSource(argument: "synthetic-images"), .syntheticImages)
        XCTAssertEqual(DataSource(argument: "fashion-mnist:/data/f"), .fashionMNIST(directory: "/data/f"))
        XCTAssertEqual(DataSource(argument: "cifar10:data/cifar10"), .cifar10(directory: "data/cifar10"))
        XCTAssertEqual(DataSource(argument: "cifar10:a:b"), .cifar10(directory: "a:b"))
        for bad in [
            "fashion-mnist:", "fashion-mnist", "cifar10:", "cifar10", "cifar-10:/x", "synthetic-images:/x", "Synthetic-Images",
        ] {
            XCTAssertNil(DataSource(argument: bad), bad)
        }
        for s in ["synthetic-images", "fashion-mnist:/a", "cifar10:/b/c"] {
            XCTAssertEqual(DataSource(argument: s)?.description, s)
        }
        for form in ["synthetic", "synthetic-images", "mnist:DIR", "fashion-mnist:DIR", "cifar10:DIR"] {
            XCTAssertTrue(DataSource.accepted.contains("'\(form)'"), form)
        }
    }
}

final class StandardizationTests: XCTestCase {
    private func moments(_ f: [Float], d: Int, feature j: Int) -> (Double, Double) {
        let n = f.count / d
        let col = (0..<n).map { Double(f[$0 * d + j]) }
        let m = col.reduce(0, +) / Double(n)
        let v = col.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(n)
        return (m, v.squareRoot())
    }

    /// Per feature: every training feature has mean 0 and std 1 (fp32 values: 1e-4 absolute); a
    /// constant feature is only centred; the test split uses the training statistics.
    func testPerFeature() {
        var rng = SplitMix64(seed: 81)
        let d = 4, n = 500
        var train = [Float](repeating: 0, count: n * d)
        for i in 0..<n {
            train[i * d + 0] = Float(rng.normal() * 3 + 10)
            train[i * d + 1] = Float(rng.normal() * 0.01 - 2)
            train[i * d + 2] = 5  // constant
            train[i * d + 3] = Float(rng.uniform() * 100)
        }
        let test: [Float] = [10, -2, 5, 50]
        var splits = DataSplits(
            train: Dataset(name: "t", features: train, labels: [Int32](repeating: 0, count: n), dimension: d, classes: 2),
            test: Dataset(name: "s", features: test, labels: [0], dimension: d, classes: 2))
        let raw = moments(train, d: d, feature: 0)
        Standardization.perFeature.apply(to: &splits)
        for j in [0, 1, 3] {
            let (m, s) = moments(splits.train.features, d: d, feature: j)
            XCTAssertEqual(m, 0, accuracy: 1e-4, "feature \(j) mean")
            XCTAssertEqual(s, 1, accuracy: 1e-4, "feature \(j) std")
        }
        XCTAssertTrue(splits.train.features.enumerated().filter { $0.offset % d == 2 }.allSatisfy { $0.element == 0 })
        XCTAssertEqual(Double(splits.test.features[0]), (10 - raw.0) / raw.1, accuracy: 1e-4)
    }

    func testGlobalOnSynthetic() {
        var splits = SyntheticDataset.make(trainCount: 300, testCount: 50, dimension: 8, classes: 4, seed: 3)
        for k in 0..<splits.train.features.count { splits.train.features[k] = splits.train.features[k] * 7 + 2 }
        Standardization.global.apply(to: &splits)
        let v = splits.train.features.map(Double.init)
        let m = v.reduce(0, +) / Double(v.count)
        let s = (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
        XCTAssertEqual(m, 0, accuracy: 1e-4)
        XCTAssertEqual(s, 1, accuracy: 1e-4)
    }

    /// Per channel of HWC images: each channel has mean 0 and std 1 over all its pixels; channels
    /// with different statistics are scaled differently; the test split uses the training statistics.
    func testPerChannel() {
        var rng = SplitMix64(seed: 12)
        let image = ImageShape(height: 3, width: 4, channels: 3), n = 200
        let offsets: [Double] = [5, -1, 0.3], scales: [Double] = [2, 0.1, 7]
        let train = (0..<(n * image.count)).map { Float(rng.normal() * scales[$0 % 3] + offsets[$0 % 3]) }
        let test = (0..<image.count).map { Float(offsets[$0 % 3]) }
        var splits = DataSplits(
            train: Dataset(
                name: "t", features: train, labels: [Int32](repeating: 0, count: n), dimension: image.count, classes: 2,
                image: image),
            test: Dataset(name: "s", features: test, labels: [0], dimension: image.count, classes: 2, image: image))
        Standardization.perChannel(channels: 3).apply(to: &splits)
        for c in 0..<3 {
            let v = stride(from: c, to: splits.train.features.count, by: 3).map { Double(splits.train.features[$0]) }
            let m = v.reduce(0, +) / Double(v.count)
            let s = (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
            XCTAssertEqual(m, 0, accuracy: 1e-4, "channel \(c) mean")
            XCTAssertEqual(s, 1, accuracy: 1e-4, "channel \(c) std")
            XCTAssertEqual(Double(splits.test.features[c]), 0, accuracy: 0.2, "channel \(c) test value near its mean")
        }
    }

    /// One channel is exactly the global mode (MNIST results stay as they were).
    func testPerChannelWithOneChannelIsGlobal() {
        var a = SyntheticDataset.make(trainCount: 300, testCount: 50, dimension: 8, classes: 4, seed: 3)
        for k in 0..<a.train.features.count { a.train.features[k] = a.train.features[k] * 7 + 2 }
        var b = a
        Standardization.global.apply(to: &a)
        Standardization.perChannel(channels: 1).apply(to: &b)
        XCTAssertEqual(a.train.features, b.train.features)
        XCTAssertEqual(a.test.features, b.test.features)
    }

    /// The synthetic set: deterministic, labels in range and using every class (a teacher network,
    /// not a constant), and the default load standardizes per feature.
    func testSyntheticDataset() throws {
        let a = SyntheticDataset.make(trainCount: 400, testCount: 100, dimension: 16, classes: 5, seed: 9)
        let b = SyntheticDataset.make(trainCount: 400, testCount: 100, dimension: 16, classes: 5, seed: 9)
        let c = SyntheticDataset.make(trainCount: 400, testCount: 100, dimension: 16, classes: 5, seed: 10)
        XCTAssertEqual(a.train.features, b.train.features)
        XCTAssertEqual(a.train.labels, b.train.labels)
        XCTAssertNotEqual(a.train.features, c.train.features)
        XCTAssertTrue(a.train.labels.allSatisfy { $0 >= 0 && $0 < 5 })
        XCTAssertGreaterThanOrEqual(Set(a.train.labels).count, 3, "labels come from a teacher, not a constant")
        let loaded = try DataSource.synthetic.load()
        XCTAssertEqual(loaded.train.count, SyntheticDataset.defaultTrainCount)
        XCTAssertEqual(loaded.train.dimension, SyntheticDataset.defaultDimension)
        // The default set is a 10-class problem: every class occurs (it is imbalanced, from 0.6% to 28%).
        var counts = [Int](repeating: 0, count: SyntheticDataset.defaultClasses)
        for l in loaded.train.labels { counts[Int(l)] += 1 }
        XCTAssertTrue(counts.allSatisfy { $0 > 0 }, "class counts \(counts)")
        for j in [0, 17, loaded.train.dimension - 1] {
            let col = (0..<loaded.train.count).map { Double(loaded.train.features[$0 * loaded.train.dimension + j]) }
            let m = col.reduce(0, +) / Double(col.count)
            let s = (col.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(col.count)).squareRoot()
            XCTAssertEqual(m, 0, accuracy: 1e-4)
            XCTAssertEqual(s, 1, accuracy: 1e-4)
        }
    }
}

final class ShardSamplerTests: XCTestCase {
    /// Shares of B positions over P ranks: disjoint, in order, covering 0..<B exactly once, sizes differing
    /// by at most one; including B < P (some ranks get nothing).
    func testSharesCoverBatchExactlyOnce() {
        for b in [1, 2, 7, 37, 64, 100] {
            for p in 1...8 {
                var next = 0
                var sizes: [Int] = []
                for r in 0..<p {
                    let s = ShardSampler.share(of: b, rank: r, ranks: p)
                    XCTAssertEqual(s.lowerBound, next, "B \(b) P \(p) rank \(r) not contiguous")
                    next = s.upperBound
                    sizes.append(s.count)
                }
                XCTAssertEqual(next, b, "B \(b) P \(p) does not end at B")
                XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1, "B \(b) P \(p) sizes \(sizes)")
            }
        }
    }

    func testPermutationIsPermutationAndDependsOnSeedAndEpoch() {
        for n in [1, 2, 10, 1000] {
            let p = ShardSampler.permutation(count: n, seed: 5, epoch: 0)
            XCTAssertEqual(p.sorted(), (0..<n).map { Int32($0) })
        }
        let base = ShardSampler.permutation(count: 1000, seed: 5, epoch: 0)
        XCTAssertEqual(base, ShardSampler.permutation(count: 1000, seed: 5, epoch: 0), "deterministic")
        XCTAssertNotEqual(base, ShardSampler.permutation(count: 1000, seed: 6, epoch: 0), "seed")
        XCTAssertNotEqual(base, ShardSampler.permutation(count: 1000, seed: 5, epoch: 1), "epoch")
        XCTAssertNotEqual(base, (0..<1000).map { Int32($0) }, "shuffled")
    }

    /// P ranks together see exactly what one process sees, at every step including across an epoch
    /// boundary; an epoch uses each sample at most once (the tail is dropped).
    func testRanksTogetherSeeTheGlobalBatch() {
        let n = 103, batch = 20
        var single = ShardSampler(sampleCount: n, globalBatch: batch, seed: 9)
        XCTAssertEqual(single.stepsPerEpoch, 5)
        var seenInEpoch = Set<Int32>()
        for step in 0..<12 {
            let whole = Array(single.indices(step: step, rank: 0, ranks: 1))
            XCTAssertEqual(whole.count, batch)
            if step % 5 == 0 { seenInEpoch = [] }
            XCTAssertTrue(seenInEpoch.isDisjoint(with: whole), "sample reused within an epoch at step \(step)")
            seenInEpoch.formUnion(whole)
            for p in [2, 3, 8] {
                var samplers = (0..<p).map { _ in ShardSampler(sampleCount: n, globalBatch: batch, seed: 9) }
                var joined: [Int32] = []
                for r in 0..<p { joined += samplers[r].indices(step: step, rank: r, ranks: p) }
                XCTAssertEqual(joined, whole, "step \(step) P \(p)")
            }
        }
        let e0 = Array(single.indices(step: 0, rank: 0, ranks: 1)), e1 = Array(single.indices(step: 5, rank: 0, ranks: 1))
        XCTAssertNotEqual(e0, e1, "a new epoch reshuffles")
    }
}
