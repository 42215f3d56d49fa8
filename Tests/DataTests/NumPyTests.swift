import XCTest
import Foundation
import Data
import TensorCore

/// Writes .npy files, and .npz archives of stored entries, for the tests.
enum NPYWriter {
    /// A version 1.0 .npy file, its header padded to a multiple of 64 bytes as NumPy pads it.
    static func npy(_ descr: String, _ shape: [Int], _ data: [UInt8], fortran: Bool = false, header: String? = nil) -> [UInt8] {
        let tuple = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var text = header ?? "{'descr': '\(descr)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': \(tuple), }"
        while (10 + text.utf8.count + 1) % 64 != 0 { text += " " }
        text += "\n"
        let n = text.utf8.count
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(n & 0xFF), UInt8(n >> 8)] + Array(text.utf8) + data
    }
    static func u8(_ values: [UInt8], _ shape: [Int]) -> [UInt8] { npy("|u1", shape, values) }
    static func f4(_ values: [Float], _ shape: [Int]) -> [UInt8] {
        npy("<f4", shape, values.flatMap { v in (0..<4).map { UInt8((v.bitPattern >> (8 * $0)) & 0xFF) } })
    }
    static func f8(_ values: [Double], _ shape: [Int]) -> [UInt8] {
        npy("<f8", shape, values.flatMap { v in (0..<8).map { UInt8((v.bitPattern >> (8 * UInt64($0))) & 0xFF) } })
    }
    static func i8(_ values: [Int64]) -> [UInt8] {
        npy(
            "<i8", [values.count],
            values.flatMap { v in (0..<8).map { UInt8((UInt64(bitPattern: v) >> (8 * UInt64($0))) & 0xFF) } })
    }

    /// A zip archive of stored (method 0) entries, with the end-of-central-directory record.
    static func zip(_ entries: [(String, [UInt8])]) -> [UInt8] {
        func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
        func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * UInt32($0))) & 0xFF) } }
        var file: [UInt8] = [], directory: [UInt8] = []
        for (name, data) in entries {
            let crc = crc32(data), n = Array(name.utf8), offset = UInt32(file.count)
            let common = le16(0) + le16(0) + le16(0) + le16(0) + le32(crc) + le32(UInt32(data.count)) + le32(UInt32(data.count))
            file += le32(0x0403_4B50) + le16(20) + common + le16(n.count) + le16(0) + n + data
            directory += le32(0x0201_4B50) + le16(20) + le16(20) + common + le16(n.count) + le16(0) + le16(0) + le16(0)
            directory += le16(0) + le32(0) + le32(offset) + n
        }
        let end =
            le32(0x0605_4B50) + le16(0) + le16(0) + le16(entries.count) + le16(entries.count)
            + le32(UInt32(directory.count)) + le32(UInt32(file.count)) + le16(0)
        return file + directory + end
    }

    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            crc ^= UInt32(b)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }
}

final class NumPyTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "npy-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = directory + "/" + name
        try Foundation.Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// The set of MNISTTests' IDX directory: 3 train and 2 test images of 2x3 pixels.
    static let trainPixels: [UInt8] = [0, 51, 102, 153, 204, 255, 255, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    static let testPixels: [UInt8] = [10, 20, 30, 40, 50, 60, 0, 0, 0, 0, 0, 255]
    static func validArrays() -> [String: [UInt8]] {
        [
            "x_train": NPYWriter.u8(trainPixels, [3, 2, 3]), "y_train": NPYWriter.i8([7, 0, 9]),
            "x_test": NPYWriter.u8(testPixels, [2, 2, 3]), "y_test": NPYWriter.npy("|u1", [2], [3, 4]),
        ]
    }
    static func npz(_ arrays: [String: [UInt8]]) -> [UInt8] {
        NPYWriter.zip(NumPy.arrayNames.compactMap { name in arrays[name].map { ("\(name).npy", $0) } })
    }

    /// np.savez_compressed of validArrays() (x uint8, y_train int64, y_test uint8): deflated
    /// entries, and local headers in NumPy's ZIP64 form. Also Tests/FuzzCorpus/npy/valid-deflated.npz.
    static let numpyDeflated = Array(
        Foundation.Data(
            base64Encoded: [
                "UEsDBC0AAAAIAAAAIQBjirqr//////////8LABQAeF90cmFpbi5ucHkBABAAkgAAAAAAAABZAAAAAAAAAJvsF+obEMnIUMZQrZ6S",
                "WpxcpG6loF5Taqiuo6Cell9UUpSYF59flJIKEndLzClOBYoXZyQWpAL5GsY6CkY6CsaaOgq1CuQBLgbjtJln/v9nAAFGJmYWVjYA",
                "UEsDBC0AAAAIAAAAIQBH+ggo//////////8LABQAeV90cmFpbi5ucHkBABAAmAAAAAAAAABKAAAAAAAAAJvsF+obEMnIUMZQrZ6S",
                "WpxcpG6loG6TaaGuo6Cell9UUpSYF59flJIKEndLzClOBYoXZyQWpAL5GsY6mjoKtQoUAC52BlTACaUBUEsDBC0AAAAIAAAAIQCs",
                "l144//////////8KABQAeF90ZXN0Lm5weQEAEACMAAAAAAAAAFEAAAAAAAAAm+wX6hsQychQxlCtnpJanFykbqWgXlNqqK6joJ6W",
                "X1RSlJgXn1+UkgoSd0vMKU4FihdnJBakAvkaRjoKQGSsqaNQq0Ae4OISkdMwsmEAgf8AUEsDBC0AAAAIAAAAIQDVxTCE////////",
                "//8KABQAeV90ZXN0Lm5weQEAEACCAAAAAAAAAEYAAAAAAAAAm+wX6hsQychQxlCtnpJanFykbqWgXlNqqK6joJ6WX1RSlJgXn1+U",
                "kgoSd0vMKU4FihdnJBakAvkaRjqaOgq1ChQALmYWAFBLAQItAy0AAAAIAAAAIQBjirqrWQAAAJIAAAALAAAAAAAAAAAAAACAAQAA",
                "AAB4X3RyYWluLm5weVBLAQItAy0AAAAIAAAAIQBH+ggoSgAAAJgAAAALAAAAAAAAAAAAAACAAZYAAAB5X3RyYWluLm5weVBLAQIt",
                "Ay0AAAAIAAAAIQCsl144UQAAAIwAAAAKAAAAAAAAAAAAAACAAR0BAAB4X3Rlc3QubnB5UEsBAi0DLQAAAAgAAAAhANXFMIRGAAAA",
                "ggAAAAoAAAAAAAAAAAAAAIABqgEAAHlfdGVzdC5ucHlQSwUGAAAAAAQABADiAAAALAIAAAAA",
            ].joined())!)

    private func assertValidSet(_ splits: DataSplits, _ name: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(splits.train.name, "\(name)/train", file: file, line: line)
        XCTAssertEqual(splits.train.labels, [7, 0, 9], file: file, line: line)
        XCTAssertEqual(splits.test.labels, [3, 4], file: file, line: line)
        XCTAssertEqual(splits.train.classes, 10, file: file, line: line)
        XCTAssertEqual(splits.train.image, ImageShape(height: 2, width: 3, channels: 1), file: file, line: line)
        XCTAssertEqual(splits.train.features, Self.trainPixels.map { Float($0) / 255 }, file: file, line: line)
        XCTAssertEqual(splits.test.features, Self.testPixels.map { Float($0) / 255 }, file: file, line: line)
    }

    func testStoredNPZOfUInt8ImagesAndInt64Labels() throws {
        let path = try write("set.npz", Self.npz(Self.validArrays()))
        assertValidSet(try NumPy.load(npz: path), "npz")
    }

    func testDeflatedNPZWrittenByNumPy() throws {
        let path = try write("compressed.npz", Self.numpyDeflated)
        assertValidSet(try NumPy.load(npz: path), "npz")
        let stored = try NumPy.parseNPZ(bytes: Self.npz(Self.validArrays()), path: "stored")
        let deflated = try NumPy.parseNPZ(bytes: Self.numpyDeflated, path: "deflated")
        XCTAssertEqual(deflated.train.features, stored.train.features)
        XCTAssertEqual(deflated.test.labels, stored.test.labels)
    }

    func testNPYDirectory() throws {
        for (name, bytes) in Self.validArrays() { _ = try write("\(name).npy", bytes) }
        assertValidSet(try NumPy.load(npyDirectory: directory), "npy")
    }

    /// The same data as IDX files and as .npz: bitwise identical features and labels, raw and
    /// standardized through DataSource.
    func testSameFeaturesAsIDX() throws {
        let idx = try IDXDirectory()
        try idx.writeValid()
        let path = try write("set.npz", Self.npz(Self.validArrays()))
        let fromIDX = try MNIST.load(directory: idx.path), fromNPZ = try NumPy.load(npz: path)
        XCTAssertEqual(fromNPZ.train.features.map(\.bitPattern), fromIDX.train.features.map(\.bitPattern))
        XCTAssertEqual(fromNPZ.test.features.map(\.bitPattern), fromIDX.test.features.map(\.bitPattern))
        XCTAssertEqual(fromNPZ.train.labels, fromIDX.train.labels)
        XCTAssertEqual(fromNPZ.test.labels, fromIDX.test.labels)
        XCTAssertEqual(fromNPZ.train.classes, fromIDX.train.classes)
        let a = try XCTUnwrap(DataSource(argument: "mnist:" + idx.path)).load()
        let b = try XCTUnwrap(DataSource(argument: "npz:" + path)).load()
        XCTAssertEqual(b.train.features.map(\.bitPattern), a.train.features.map(\.bitPattern))
        XCTAssertEqual(b.test.features.map(\.bitPattern), a.test.features.map(\.bitPattern))
    }

    func testFloat32ChannelsLastImages() throws {
        let train = (0..<24).map { Float($0) * 0.5 - 3 }, test = (0..<12).map { Float($0) + 0.25 }
        let arrays = [
            "x_train": NPYWriter.f4(train, [2, 2, 2, 3]), "y_train": NPYWriter.npy("<u2", [2], [1, 0, 2, 0]),
            "x_test": NPYWriter.f4(test, [1, 2, 2, 3]), "y_test": NPYWriter.npy("<i4", [1], [5, 0, 0, 0]),
        ]
        for (name, bytes) in arrays { _ = try write("\(name).npy", bytes) }
        let splits = try NumPy.load(npyDirectory: directory)
        XCTAssertEqual(splits.train.image, ImageShape(height: 2, width: 2, channels: 3))
        XCTAssertEqual(splits.train.features, train)
        XCTAssertEqual(splits.test.features, test)
        XCTAssertEqual(splits.train.labels, [1, 2])
        XCTAssertEqual(splits.test.labels, [5])
        XCTAssertEqual(splits.train.classes, 6, "a test label unseen in training still counts")
        let standardized = try XCTUnwrap(DataSource(argument: "npy:" + directory)).load()
        XCTAssertEqual(standardized.train.count, 2)
    }

    func testFloat64Vectors() throws {
        let arrays = [
            "x_train": NPYWriter.f8([1, 2, 3, 4, 5, 6], [3, 2]), "y_train": NPYWriter.npy("|i1", [3], [0, 1, 1]),
            "x_test": NPYWriter.f8([0.1, -7], [1, 2]), "y_test": NPYWriter.i8([1]),
        ]
        let splits = try NumPy.parseNPZ(bytes: Self.npz(arrays), path: "v.npz")
        XCTAssertNil(splits.train.image)
        XCTAssertEqual(splits.train.dimension, 2)
        XCTAssertEqual(splits.train.features, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(splits.test.features, [Float(0.1), -7])
        XCTAssertEqual(splits.train.classes, 2)
    }

    func testDataSourceForms() {
        XCTAssertEqual(DataSource(argument: "npz:/d/mnist.npz"), .npz(file: "/d/mnist.npz"))
        XCTAssertEqual(DataSource(argument: "npy:rel/dir"), .npy(directory: "rel/dir"))
        XCTAssertNil(DataSource(argument: "npz:"))
        XCTAssertNil(DataSource(argument: "npy:"))
        for s in ["npz:a.npz", "npy:/x"] { XCTAssertEqual(DataSource(argument: s)?.description, s) }
        XCTAssertTrue(DataSource.accepted.contains("'npz:FILE'") && DataSource.accepted.contains("'npy:DIR'"))
    }

    // MARK: Errors

    private func assertFails(
        _ arrays: [String: [UInt8]], _ fragments: [String], file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try NumPy.parseNPZ(bytes: Self.npz(arrays), path: "bad.npz"), file: file, line: line) { error in
            guard let e = error as? DataError else { return XCTFail("not a DataError: \(error)", file: file, line: line) }
            XCTAssertEqual(e.path, "bad.npz", file: file, line: line)
            for fragment in fragments {
                XCTAssertTrue(e.problem.contains(fragment), "'\(fragment)' not in: \(e)", file: file, line: line)
            }
        }
    }
    private func replacing(_ name: String, _ bytes: [UInt8]) -> [String: [UInt8]] {
        var arrays = Self.validArrays()
        arrays[name] = bytes
        return arrays
    }

    func testMissingFileAndArray() throws {
        XCTAssertThrowsError(try NumPy.load(npz: directory + "/none.npz")) { error in
            XCTAssertTrue("\(error)".contains("none.npz") && "\(error)".contains("is missing"), "\(error)")
        }
        var arrays = Self.validArrays()
        arrays["y_test"] = nil
        assertFails(arrays, ["array y_test", "present: 'x_train.npy', 'y_train.npy', 'x_test.npy'"])
        for name in ["x_train", "y_train", "x_test"] { _ = try write("\(name).npy", Self.validArrays()[name]!) }
        XCTAssertThrowsError(try NumPy.load(npyDirectory: directory)) { error in
            XCTAssertEqual((error as? DataError)?.path, self.directory + "/y_test.npy")
            XCTAssertTrue("\(error)".contains("present: x_train.npy, y_train.npy, x_test.npy"), "\(error)")
        }
    }

    func testLengthsDiffer() {
        assertFails(replacing("y_train", NPYWriter.i8([1, 2])), ["array y_train", "2 labels", "x_train holds 3"])
    }

    func testUnsupportedDTypes() {
        assertFails(
            replacing("x_train", NPYWriter.npy("<i4", [3, 2, 3], Array(repeating: 0, count: 72))),
            ["x_train", "'<i4'", "'|u1', '<f4', '<f8'"])
        assertFails(
            replacing("y_train", NPYWriter.npy("<f4", [3], Array(repeating: 0, count: 12))), ["y_train", "'<f4'", "integers"])
        assertFails(
            replacing("x_test", NPYWriter.npy(">f4", [2, 2, 3], Array(repeating: 0, count: 48))), ["x_test", "big-endian"])
        assertFails(replacing("x_test", NPYWriter.npy("<c8", [2, 2, 3], [])), ["x_test", "'<c8'", "accepted are"])
        assertFails(replacing("x_test", NPYWriter.npy("|u1", [2, 2, 3], Self.testPixels, fortran: true)), ["x_test", "Fortran"])
    }

    func testBadShapes() {
        assertFails(replacing("x_train", NPYWriter.u8(Self.trainPixels, [18])), ["x_train", "shape [18]", "[N, H, W]"])
        assertFails(replacing("x_train", NPYWriter.u8(Self.trainPixels, [3, 1, 1, 6])), ["x_train", "6 channels"])
        assertFails(replacing("y_train", NPYWriter.npy("|u1", [3, 1], [7, 0, 9])), ["y_train", "shape [3, 1]"])
        assertFails(replacing("x_test", NPYWriter.u8(Self.testPixels, [2, 3, 2])), ["x_test", "[3, 2]", "x_train [2, 3]"])
    }

    func testTruncatedAndCorrupt() {
        let full = NPYWriter.u8(Self.trainPixels, [3, 2, 3])
        assertFails(replacing("x_train", Array(full.dropLast(4))), ["x_train", "14 data bytes", "needs 18", "truncated"])
        assertFails(replacing("x_train", Array(full.prefix(30))), ["x_train", "truncated"])
        assertFails(
            replacing("x_train", NPYWriter.npy("", [], [], header: "{'descr': '|u1', 'shape': (3, 2, 3)}")),
            ["x_train", "missing 'fortran_order'"])
        let overflow = NPYWriter.npy(
            "", [], [], header: "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 2), }")
        assertFails(replacing("x_train", overflow), ["x_train", "too many"])
        var zip = Self.npz(Self.validArrays())
        XCTAssertThrowsError(try NumPy.parseNPZ(bytes: Array(zip.dropLast(3)), path: "t.npz")) { error in
            XCTAssertTrue("\(error)".hasPrefix("t.npz: ") && "\(error)".contains("end-of-central-directory"), "\(error)")
        }
        zip[60] ^= 0xFF  // a byte of the x_train.npy entry: the CRC no longer matches
        XCTAssertThrowsError(try NumPy.parseNPZ(bytes: zip, path: "c.npz")) { error in
            XCTAssertTrue("\(error)".contains("x_train.npy") && "\(error)".contains("CRC-32"), "\(error)")
        }
        var deflated = Self.numpyDeflated
        deflated[70] ^= 0x55
        XCTAssertThrowsError(try NumPy.parseNPZ(bytes: deflated, path: "d.npz")) { error in
            XCTAssertTrue("\(error)".contains("d.npz: entry 'x_train.npy'"), "\(error)")
        }
    }

    func testValues() {
        assertFails(
            replacing("x_test", NPYWriter.f4([1, 2, 3, 4, .nan, 6, 7, 8, 9, 10, 11, 12], [2, 2, 3])), ["x_test", "index 4"])
        assertFails(
            replacing("x_train", NPYWriter.f8(Array(repeating: 0, count: 17) + [1e300], [3, 2, 3])), ["x_train", "index 17"])
        assertFails(replacing("y_test", NPYWriter.i8([3, -1])), ["y_test", "label -1 at index 1"])
        assertFails(replacing("y_test", NPYWriter.i8([3, 2_000_000_000])), ["y_test", "label 2000000000", "below 100000"])
        let zeros = [
            "x_train": NPYWriter.u8([1, 2], [2, 1]), "y_train": NPYWriter.i8([0, 0]),
            "x_test": NPYWriter.u8([3], [1, 1]), "y_test": NPYWriter.i8([0]),
        ]
        assertFails(zeros, ["at least 2 classes"])
    }
}
