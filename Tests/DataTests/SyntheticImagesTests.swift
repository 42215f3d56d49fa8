import Data
import TensorCore
import XCTest

final class SyntheticImagesTests: XCTestCase {
    func testDeterministicAndShaped() {
        let a = SyntheticImages.make(trainCount: 300, testCount: 50, seed: 4)
        let b = SyntheticImages.make(trainCount: 300, testCount: 50, seed: 4)
        let c = SyntheticImages.make(trainCount: 300, testCount: 50, seed: 5)
        XCTAssertEqual(a.train.features, b.train.features)
        XCTAssertEqual(a.train.labels, b.train.labels)
        XCTAssertEqual(a.test.features, b.test.features)
        XCTAssertNotEqual(a.train.features, c.train.features)
        XCTAssertNotEqual(Array(a.train.features[0..<3072]), Array(a.test.features[0..<3072]), "splits differ")
        XCTAssertEqual(a.train.image, ImageShape(height: 32, width: 32, channels: 3))
        XCTAssertEqual(a.train.dimension, 3072)
        XCTAssertEqual(a.train.classes, 10)
        XCTAssertEqual(a.train.count, 300)
        XCTAssertEqual(a.test.count, 50)
        XCTAssertTrue(a.train.features.allSatisfy(\.isFinite))
        // Image i does not depend on how many images the split has.
        let small = SyntheticImages.make(trainCount: 10, testCount: 1, seed: 4)
        XCTAssertEqual(small.train.features, Array(a.train.features[0..<(10 * 3072)]))
    }

    /// The default set: labels in range, each class 10% +- 1.5%; the images are not plain noise.
    func testDefaultSetIsBalanced() throws {
        let splits = SyntheticImages.make()
        XCTAssertEqual(splits.train.count, SyntheticImages.defaultTrainCount)
        XCTAssertEqual(splits.test.count, SyntheticImages.defaultTestCount)
        for set in [splits.train, splits.test] {
            XCTAssertTrue(set.labels.allSatisfy { $0 >= 0 && $0 < 10 })
            var counts = [Int](repeating: 0, count: 10)
            for l in set.labels { counts[Int(l)] += 1 }
            for n in counts {
                XCTAssertEqual(Double(n) / Double(set.count), 0.1, accuracy: 0.015, "\(set.name) class counts \(counts)")
            }
        }
        let loaded = try DataSource.syntheticImages.load()
        XCTAssertEqual(loaded.train.count, SyntheticImages.defaultTrainCount)
        XCTAssertEqual(loaded.train.image, SyntheticImages.image)
    }

    /// Each class's mean image is flat grey (random phases), so the class cannot be read off linearly.
    func testClassMeanImageIsFlat() {
        let splits = SyntheticImages.make(trainCount: 2000, testCount: 1, seed: 1)
        let d = 3072, n = splits.train.count
        var classMean = [Double](repeating: 0, count: d), members = 0
        for i in 0..<n where splits.train.labels[i] == 0 {
            members += 1
            for j in 0..<d { classMean[j] += Double(splits.train.features[i * d + j]) }
        }
        let deviation = classMean.map { abs($0 / Double(members) - 0.5) }.max()!
        XCTAssertLessThan(deviation, 0.2, "class 0 mean image")
    }
}
