import Data
import Foundation
import TensorCore
import XCTest

/// Writes CIFAR-10 binary batches into a fresh temporary directory.
final class CIFARDirectory {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "cifar-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// The pixel byte of (record tag, channel, pixel): distinct enough to catch any mix-up of planes,
    /// pixels or records.
    static func byte(tag: Int, channel: Int, pixel: Int) -> UInt8 { UInt8((tag * 37 + channel * 85 + pixel * 3) % 256) }

    /// Records as the format lays them out: label, then the R, G and B planes.
    static func records(labels: [UInt8], firstTag: Int) -> [UInt8] {
        labels.enumerated().flatMap { r, label in
            [label] + (0..<3).flatMap { c in (0..<1024).map { p in byte(tag: firstTag + r, channel: c, pixel: p) } }
        }
    }

    func write(_ name: String, _ bytes: [UInt8], under subdirectory: String? = nil) throws {
        let dir = subdirectory.map { path + "/" + $0 } ?? path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Foundation.Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + name))
    }

    /// Train batches of 2, 1, 1, 1 and 3 records (tags 0...7, labels = tag), a test batch of 2 (tags 100, 101).
    static let trainSizes = [2, 1, 1, 1, 3]
    func writeValid(under subdirectory: String? = nil) throws {
        var tag = 0
        for (b, n) in Self.trainSizes.enumerated() {
            try write(
                CIFAR10.trainFiles[b], Self.records(labels: (tag..<tag + n).map { UInt8($0) }, firstTag: tag), under: subdirectory
            )
            tag += n
        }
        try write(CIFAR10.testFile, Self.records(labels: [9, 0], firstTag: 100), under: subdirectory)
    }
}

final class CIFAR10Tests: XCTestCase {
    /// Every value lands at HWC position (pixel * 3 + channel) as byte / 255; records keep file order.
    private func assertHoldsValidSet(_ splits: DataSplits, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(splits.train.count, 8, file: file, line: line)
        XCTAssertEqual(splits.test.count, 2, file: file, line: line)
        XCTAssertEqual(splits.train.labels, (0..<8).map { Int32($0) }, file: file, line: line)
        XCTAssertEqual(splits.test.labels, [9, 0], file: file, line: line)
        XCTAssertEqual(splits.train.image, ImageShape(height: 32, width: 32, channels: 3), file: file, line: line)
        XCTAssertEqual(splits.train.dimension, 3072, file: file, line: line)
        XCTAssertEqual(splits.train.classes, 10, file: file, line: line)
        for (set, firstTag) in [(splits.train, 0), (splits.test, 100)] {
            var expected = [Float](repeating: -1, count: set.count * 3072)
            for r in 0..<set.count {
                for y in 0..<32 {
                    for x in 0..<32 {
                        for c in 0..<3 {
                            let byte = CIFARDirectory.byte(tag: firstTag + r, channel: c, pixel: y * 32 + x)
                            expected[r * 3072 + (y * 32 + x) * 3 + c] = Float(byte) / 255
                        }
                    }
                }
            }
            XCTAssertEqual(set.features, expected, "\(set.name) values", file: file, line: line)
        }
    }

    func testLoadsRecordsInHWCOrder() throws {
        let dir = try CIFARDirectory()
        try dir.writeValid()
        let splits = try CIFAR10.load(directory: dir.path)
        assertHoldsValidSet(splits)
        XCTAssertEqual(splits.train.features[3 * 5 + 1], Float(CIFARDirectory.byte(tag: 0, channel: 1, pixel: 5)) / 255)
        XCTAssertEqual(splits.train.name, "cifar10/train")
    }

    /// The official tarball unpacks to cifar-10-batches-bin; DIR may be its parent.
    func testUsesTarballSubdirectory() throws {
        let dir = try CIFARDirectory()
        try dir.writeValid(under: CIFAR10.tarballDirectory)
        assertHoldsValidSet(try CIFAR10.load(directory: dir.path))
        assertHoldsValidSet(try CIFAR10.load(directory: dir.path + "/" + CIFAR10.tarballDirectory))
    }

    func testDataSourceStandardizesPerChannel() throws {
        let dir = try CIFARDirectory()
        try dir.writeValid()
        let splits = try XCTUnwrap(DataSource(argument: "cifar10:" + dir.path)).load()
        for c in 0..<3 {
            let v = stride(from: c, to: splits.train.features.count, by: 3).map { Double(splits.train.features[$0]) }
            let mean = v.reduce(0, +) / Double(v.count)
            let std = (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v.count)).squareRoot()
            XCTAssertEqual(mean, 0, accuracy: 1e-5, "channel \(c)")
            XCTAssertEqual(std, 1, accuracy: 1e-5, "channel \(c)")
        }
    }

    /// Asserts that `load` throws a DataError whose description contains every fragment.
    private func assertLoadFails(
        _ dir: String, mentioning fragments: [String], file: StaticString = #filePath, line: UInt = #line
    ) {
        do {
            _ = try CIFAR10.load(directory: dir)
            XCTFail("load succeeded on bad input", file: file, line: line)
        } catch let e as DataError {
            for fragment in fragments {
                XCTAssertTrue(e.description.contains(fragment), "'\(fragment)' not in: \(e)", file: file, line: line)
            }
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }

    func testMissingDirectory() {
        let missing = NSTemporaryDirectory() + "no-such-dir-" + UUID().uuidString
        assertLoadFails(missing, mentioning: [missing, "not a directory", "data_batch_1.bin", "test_batch.bin"])
    }

    func testMissingFile() throws {
        let dir = try CIFARDirectory()
        try dir.writeValid()
        try FileManager.default.removeItem(atPath: dir.path + "/data_batch_3.bin")
        assertLoadFails(
            dir.path,
            mentioning: [dir.path + "/data_batch_3.bin", "missing", "data_batch_5.bin", "test_batch.bin", "cifar-10-batches-bin"])
        // An empty directory: the first batch is missing.
        let empty = try CIFARDirectory()
        assertLoadFails(empty.path, mentioning: [empty.path + "/data_batch_1.bin", "missing"])
    }

    func testEmptyFile() throws {
        let dir = try CIFARDirectory()
        try dir.writeValid()
        try dir.write(CIFAR10.testFile, [])
        assertLoadFails(dir.path, mentioning: [dir.path + "/test_batch.bin", "has 0 bytes", "3073-byte record"])
    }

    func testSizeNotAMultipleOfTheRecord() throws {
        let dir = try CIFARDirectory()
        try dir.writeValid()
        try dir.write(CIFAR10.trainFiles[4], CIFARDirectory.records(labels: [1, 2], firstTag: 0) + [0, 0, 0, 0, 0])
        assertLoadFails(
            dir.path, mentioning: [dir.path + "/data_batch_5.bin", "6151 bytes", "3073-byte record", "remainder 5"])
    }

    func testLabelOutOfRange() throws {
        let dir = try CIFARDirectory()
        try dir.writeValid()
        try dir.write(CIFAR10.trainFiles[1], CIFARDirectory.records(labels: [3, 10], firstTag: 0))
        assertLoadFails(dir.path, mentioning: [dir.path + "/data_batch_2.bin", "record 1", "label 10", "0...9"])
    }
}
