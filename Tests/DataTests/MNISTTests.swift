import XCTest
import Foundation
import Data
import TensorCore

/// Writes IDX files into a fresh temporary directory.
final class IDXDirectory {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "idx-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    static func header(_ words: [UInt32]) -> [UInt8] {
        words.flatMap { w in [UInt8(w >> 24), UInt8((w >> 16) & 0xFF), UInt8((w >> 8) & 0xFF), UInt8(w & 0xFF)] }
    }
    static func images(_ pixels: [[UInt8]], rows: Int, cols: Int, magic: UInt32 = 0x0803) -> [UInt8] {
        header([magic, UInt32(pixels.count), UInt32(rows), UInt32(cols)]) + pixels.flatMap { $0 }
    }
    static func labels(_ values: [UInt8], magic: UInt32 = 0x0801) -> [UInt8] {
        header([magic, UInt32(values.count)]) + values
    }
    func write(_ name: String, _ bytes: [UInt8]) throws {
        try Foundation.Data(bytes).write(to: URL(fileURLWithPath: path + "/" + name))
    }
    /// A valid set: 3 train and 2 test images of 2x3 pixels.
    func writeValid(gzipTrainImages: Bool = false) throws {
        let train: [[UInt8]] = [[0, 51, 102, 153, 204, 255], [255, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]]
        try write(MNIST.fileNames.trainImages, Self.images(train, rows: 2, cols: 3))
        try write(MNIST.fileNames.trainLabels, Self.labels([7, 0, 9]))
        try write(MNIST.fileNames.testImages, Self.images([[10, 20, 30, 40, 50, 60], [0, 0, 0, 0, 0, 255]], rows: 2, cols: 3))
        try write(MNIST.fileNames.testLabels, Self.labels([3, 4]))
        if gzipTrainImages { try gzip(MNIST.fileNames.trainImages) }
    }
    /// Replaces `name` by `name.gz` using the system gzip.
    func gzip(_ name: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["gzip", "-f", path + "/" + name]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "gzip failed")
    }
}

final class MNISTTests: XCTestCase {
    /// Exact known answers: pixels are byte / 255 (computed in Float), labels as written.
    func testLoadsPlainFiles() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        let splits = try MNIST.load(directory: dir.path)
        XCTAssertEqual(splits.train.count, 3)
        XCTAssertEqual(splits.test.count, 2)
        XCTAssertEqual(splits.train.dimension, 6)
        XCTAssertEqual(splits.train.classes, 10)
        XCTAssertEqual(splits.train.labels, [7, 0, 9])
        XCTAssertEqual(splits.test.labels, [3, 4])
        XCTAssertEqual(Array(splits.train.features[0..<6]), [0, 51, 102, 153, 204, 255].map { Float($0) / 255 })
        XCTAssertEqual(splits.test.features[11], 1)
        XCTAssertEqual(splits.train.image, ImageShape(height: 2, width: 3, channels: 1))
        XCTAssertEqual(splits.test.image, ImageShape(height: 2, width: 3, channels: 1))
        XCTAssertEqual(splits.train.name, "mnist/train")
    }

    /// Fashion-MNIST: the same format and files, its own names and messages.
    func testFashionMNIST() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        let mnist = try MNIST.load(directory: dir.path)
        let fashion = try FashionMNIST.load(directory: dir.path)
        XCTAssertEqual(fashion.train.features, mnist.train.features)
        XCTAssertEqual(fashion.test.labels, mnist.test.labels)
        XCTAssertEqual(fashion.train.image, mnist.train.image)
        XCTAssertEqual(fashion.train.name, "fashion-mnist/train")
        XCTAssertEqual(fashion.test.name, "fashion-mnist/test")
        let viaSource = try XCTUnwrap(DataSource(argument: "fashion-mnist:" + dir.path)).load()
        XCTAssertEqual(viaSource.train.count, 3)
        let missing = NSTemporaryDirectory() + "no-such-dir-" + UUID().uuidString
        XCTAssertThrowsError(try FashionMNIST.load(directory: missing)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(missing) && text.contains("--data fashion-mnist:DIR"), text)
        }
    }

    func testTrainAndTestImageSizesMustMatch() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        try dir.write(
            MNIST.fileNames.testImages, IDXDirectory.images([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], rows: 3, cols: 2))
        assertLoadFails(dir.path, mentioning: [dir.path, "2x3x1", "3x2x1"])
    }

    func testLoadsGzipFileSameAsPlain() throws {
        let plain = try IDXDirectory(), gz = try IDXDirectory()
        try plain.writeValid()
        try gz.writeValid(gzipTrainImages: true)
        XCTAssertFalse(FileManager.default.fileExists(atPath: gz.path + "/" + MNIST.fileNames.trainImages))
        XCTAssertTrue(FileManager.default.fileExists(atPath: gz.path + "/" + MNIST.fileNames.trainImages + ".gz"))
        let a = try MNIST.load(directory: plain.path), b = try MNIST.load(directory: gz.path)
        XCTAssertEqual(a.train.features, b.train.features)
        XCTAssertEqual(a.train.labels, b.train.labels)
    }

    /// Asserts that `load` throws a DataError whose description contains every fragment.
    private func assertLoadFails(
        _ dir: String, mentioning fragments: [String], file: StaticString = #filePath, line: UInt = #line
    ) {
        guard let e = loadError(dir, file: file, line: line) else { return }
        for fragment in fragments {
            XCTAssertTrue(e.description.contains(fragment), "'\(fragment)' not in: \(e)", file: file, line: line)
        }
    }

    /// Runs `load` and returns the DataError; fails if it succeeds or throws something else.
    private func loadError(_ dir: String, file: StaticString = #filePath, line: UInt = #line) -> DataError? {
        do {
            _ = try MNIST.load(directory: dir)
            XCTFail("load succeeded on bad input", file: file, line: line)
        } catch let e as DataError {
            return e
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
        return nil
    }

    /// Each bad input: the description names the offending path and the problem.
    func testMissingDirectory() throws {
        let missing = NSTemporaryDirectory() + "no-such-dir-" + UUID().uuidString
        assertLoadFails(missing, mentioning: [missing, "not a directory"])
    }

    func testMissingFile() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        try FileManager.default.removeItem(atPath: dir.path + "/" + MNIST.fileNames.testLabels)
        assertLoadFails(dir.path, mentioning: [MNIST.fileNames.testLabels, "missing"])
    }

    func testWrongMagic() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        try dir.write(MNIST.fileNames.trainImages, IDXDirectory.images([[1, 2, 3, 4, 5, 6]], rows: 2, cols: 3, magic: 0x0801))
        assertLoadFails(dir.path, mentioning: [MNIST.fileNames.trainImages, "magic", "0x801"])
    }

    func testTruncatedFile() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        let full = IDXDirectory.images([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], rows: 2, cols: 3)
        try dir.write(MNIST.fileNames.testImages, Array(full.dropLast(4)))
        assertLoadFails(dir.path, mentioning: [MNIST.fileNames.testImages, "truncated"])
        // A file shorter than the header.
        try dir.write(MNIST.fileNames.testImages, [0, 0, 8])
        assertLoadFails(dir.path, mentioning: [MNIST.fileNames.testImages, "16-byte header"])
    }

    func testTruncatedGzip() throws {
        let dir = try IDXDirectory()
        try dir.writeValid(gzipTrainImages: true)
        let gzPath = dir.path + "/" + MNIST.fileNames.trainImages + ".gz"
        let bytes = try [UInt8](Foundation.Data(contentsOf: URL(fileURLWithPath: gzPath)))
        try dir.write(MNIST.fileNames.trainImages + ".gz", Array(bytes.prefix(bytes.count / 2)))
        assertLoadFails(dir.path, mentioning: [gzPath, "truncated"])
    }

    /// A split with no samples would make every mean 0/0: refused when loading.
    func testEmptySplit() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        try dir.write(MNIST.fileNames.testImages, IDXDirectory.images([], rows: 2, cols: 3))
        try dir.write(MNIST.fileNames.testLabels, IDXDirectory.labels([]))
        assertLoadFails(dir.path, mentioning: [MNIST.fileNames.testImages, "no images"])
    }

    func testLabelOutOfRange() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        try dir.write(MNIST.fileNames.trainLabels, IDXDirectory.labels([7, 11, 9]))
        assertLoadFails(dir.path, mentioning: [MNIST.fileNames.trainLabels, "label 11", "index 1"])
    }

    func testImageLabelCountMismatch() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        try dir.write(MNIST.fileNames.trainLabels, IDXDirectory.labels([7, 0]))
        assertLoadFails(dir.path, mentioning: [MNIST.fileNames.trainLabels, "2 labels", "3 images"])
    }

    func testDataSourceLoadsAndStandardizesMNIST() throws {
        let dir = try IDXDirectory()
        try dir.writeValid()
        let splits = try XCTUnwrap(DataSource(argument: "mnist:" + dir.path)).load()
        // Global standardization: mean 0 and std 1 over all training values (fp32 data: 1e-5).
        let v = splits.train.features.map(Double.init)
        let mean = v.reduce(0, +) / Double(v.count)
        let std = (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v.count)).squareRoot()
        XCTAssertEqual(mean, 0, accuracy: 1e-5)
        XCTAssertEqual(std, 1, accuracy: 1e-5)
    }
}
