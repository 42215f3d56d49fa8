import TensorCore

/// One array of a NumPy `.npy` file: its dtype, shape and raw little-endian values, checked to be
/// exactly `shape.product * dtype.size` bytes.
public struct NumPyArray: Sendable, Equatable {
    public let dtype: NumPy.DType
    public let shape: [Int]
    public let data: [UInt8]

    /// Elements (the product of `shape`; 1 for a scalar).
    public var count: Int { data.count / dtype.size }
}

/// NumPy arrays as `--data npz:FILE` (Keras' `mnist.npz` layout: `x_train.npy`, `y_train.npy`,
/// `x_test.npy`, `y_test.npy` in one zip) or `--data npy:DIR` (the same four files in a directory).
/// x is `[N, D]` vectors, `[N, H, W]` grey images or `[N, H, W, C]` channels-last images; y is `[N]`
/// integer labels from 0, and the classes are the largest label + 1.
public enum NumPy {
    public static let arrayNames = ["x_train", "y_train", "x_test", "y_test"]
    /// Labels must be below this (ImageNet-21k has 21,841 classes).
    public static let maxClasses: Int32 = 100_000

    /// The dtypes accepted, little-endian only (`descr` as NumPy writes it).
    public enum DType: String, Sendable, CaseIterable {
        case u1 = "|u1"
        case i1 = "|i1"
        case u2 = "<u2"
        case i2 = "<i2"
        case u4 = "<u4"
        case i4 = "<i4"
        case u8 = "<u8"
        case i8 = "<i8"
        case f4 = "<f4"
        case f8 = "<f8"

        public var size: Int {
            switch self {
            case .u1, .i1: 1
            case .u2, .i2: 2
            case .u4, .i4, .f4: 4
            case .u8, .i8, .f8: 8
            }
        }
        var isInteger: Bool { self != .f4 && self != .f8 }
        static let features: [DType] = [.u1, .f4, .f8]
        static let labels: [DType] = [.u1, .i1, .u2, .i2, .u4, .i4, .u8, .i8]
        static func list(_ types: [DType]) -> String { types.map { "'\($0.rawValue)'" }.joined(separator: ", ") }
    }

    // MARK: Loading

    /// Loads both splits from the `.npz` at `path`, uint8 pixels scaled to [0, 1] as MNIST's are
    /// (standardize afterwards).
    /// - Throws: `DataError` naming the file, the array and what is wrong.
    public static func load(npz path: String) throws -> DataSplits {
        guard !FileReader.isDirectory(path) else {
            throw DataError(
                path: path, "is a directory; --data npz:FILE needs a .npz file (use npy:DIR for a directory of .npy files)")
        }
        guard try FileReader.exists(path) else {
            throw DataError(path: path, "is missing; --data npz:FILE needs a .npz file holding \(expectedEntries)")
        }
        return try parseNPZ(bytes: FileReader.read(path), path: path)
    }

    /// Loads both splits from `directory/x_train.npy` ... `directory/y_test.npy`, as `load(npz:)`.
    /// - Throws: `DataError` naming the file and what is wrong.
    public static func load(npyDirectory directory: String) throws -> DataSplits {
        guard FileReader.isDirectory(directory) else {
            throw DataError(path: directory, "is not a directory; --data npy:DIR needs a directory holding \(expectedEntries)")
        }
        var arrays: [String: (NumPyArray, String)] = [:]
        for name in arrayNames {
            let path = "\(directory)/\(name).npy"
            guard try FileReader.exists(path) else {
                let present = arrayNames.filter { (try? FileReader.exists("\(directory)/\($0).npy")) == true }
                throw DataError(
                    path: path,
                    "is missing; --data npy:DIR needs \(expectedEntries) (present: \(present.isEmpty ? "none" : present.map { "\($0).npy" }.joined(separator: ", ")))"
                )
            }
            arrays[name] = (try npy(FileReader.read(path), path: path, array: nil), path)
        }
        return try splits(arrays, dataset: "npy") { name, problem in
            DataError(path: arrays[name]!.1, problem)
        }
    }

    static let expectedEntries = arrayNames.map { "\($0).npy" }.joined(separator: ", ")

    /// A `.npz` file's bytes, checked and converted as `load(npz:)` does.
    /// - Throws: `DataError` naming `path`, the array and what is wrong.
    public static func parseNPZ(bytes: [UInt8], path: String) throws -> DataSplits {
        let entries = try Zip.entries(bytes, path: path)
        var arrays: [String: (NumPyArray, String)] = [:]
        for name in arrayNames {
            guard let entry = entries.first(where: { $0.name == "\(name).npy" }) else {
                let present = entries.map { "'\($0.name)'" }.joined(separator: ", ")
                throw DataError(
                    path: path,
                    "has no array \(name) (entry \(name).npy); --data npz:FILE needs \(expectedEntries) (present: \(present.isEmpty ? "none" : present))"
                )
            }
            arrays[name] = (try npy(try Zip.contents(of: entry, in: bytes, path: path), path: path, array: name), path)
        }
        return try splits(arrays, dataset: "npz") { name, problem in DataError(path: path, "array \(name): \(problem)") }
    }

    /// One `.npy` file's bytes, checked as `load` checks each array.
    /// - Throws: `DataError` naming `path` and what is wrong.
    public static func parseNPY(bytes: [UInt8], path: String) throws -> NumPyArray {
        try npy(bytes, path: path, array: nil)
    }

    /// The four arrays converted into two datasets; `fail(array, problem)` makes the error naming
    /// where that array came from.
    static func splits(
        _ arrays: [String: (NumPyArray, String)], dataset: String, fail: (String, String) -> DataError
    ) throws -> DataSplits {
        let xTrain = arrays["x_train"]!.0, yTrain = arrays["y_train"]!.0
        let xTest = arrays["x_test"]!.0, yTest = arrays["y_test"]!.0
        let trainShape = try sampleShape(xTrain, "x_train", fail)
        let testShape = try sampleShape(xTest, "x_test", fail)
        guard trainShape.sample == testShape.sample else {
            throw fail(
                "x_test",
                "has samples of shape \(testShape.sample) but x_train \(trainShape.sample); both splits need the same per-sample shape"
            )
        }
        let trainLabels = try labels(yTrain, "y_train", samples: xTrain.shape[0], fail)
        let testLabels = try labels(yTest, "y_test", samples: xTest.shape[0], fail)
        let largest = max(trainLabels.max() ?? 0, testLabels.max() ?? 0)
        guard largest >= 1 else {
            throw fail("y_train", "has only label 0 (with y_test); classification needs at least 2 classes (labels 0...C-1)")
        }
        // the head has a row per class: a stray huge label must not become a huge layer
        guard largest < NumPy.maxClasses else {
            throw fail(
                trainLabels.max() == largest ? "y_train" : "y_test",
                "has label \(largest); labels must be below \(NumPy.maxClasses) (classes 0...C-1, one head row each)")
        }
        let classes = Int(largest) + 1
        let dimension = xTrain.count / xTrain.shape[0]
        return DataSplits(
            train: Dataset(
                name: "\(dataset)/train", features: try features(xTrain, "x_train", fail), labels: trainLabels,
                dimension: dimension, classes: classes, image: trainShape.image),
            test: Dataset(
                name: "\(dataset)/test", features: try features(xTest, "x_test", fail), labels: testLabels,
                dimension: dimension, classes: classes, image: testShape.image))
    }

    /// Checks an x array's dtype and shape: `[N, D]` (vectors), `[N, H, W]` or `[N, H, W, C]` (images).
    static func sampleShape(
        _ x: NumPyArray, _ name: String, _ fail: (String, String) -> DataError
    ) throws -> (sample: [Int], image: ImageShape?) {
        guard DType.features.contains(x.dtype) else {
            throw fail(name, "has dtype '\(x.dtype.rawValue)'; x arrays must be \(DType.list(DType.features))")
        }
        let accepted = "[N, D] (vectors), [N, H, W] (grey images) or [N, H, W, C] (channels-last images, C in 1...4)"
        guard (2...4).contains(x.shape.count) else {
            throw fail(name, "has shape \(x.shape); x arrays must be \(accepted)")
        }
        guard x.shape[0] > 0 else { throw fail(name, "holds no samples (shape \(x.shape)); a split needs at least one") }
        guard x.shape.dropFirst().allSatisfy({ $0 > 0 }) else {
            throw fail(name, "has shape \(x.shape) with a zero size; x arrays must be \(accepted) with positive sizes")
        }
        let sample = Array(x.shape.dropFirst())
        switch sample.count {
        case 1: return (sample, nil)
        case 2: return (sample, ImageShape(height: sample[0], width: sample[1], channels: 1))
        default:
            guard (1...4).contains(sample[2]) else {
                throw fail(name, "has shape \(x.shape) with \(sample[2]) channels; x arrays must be \(accepted)")
            }
            return (sample, ImageShape(height: sample[0], width: sample[1], channels: sample[2]))
        }
    }

    /// x values as Float: uint8 as MNIST converts its bytes (byte / 255), floats as they are; NaN or
    /// infinity is refused, since it would poison the standardization statistics.
    static func features(_ x: NumPyArray, _ name: String, _ fail: (String, String) -> DataError) throws -> [Float] {
        let n = x.count
        var bad: Int? = nil
        let values = x.data.withUnsafeBytes { raw in
            [Float](unsafeUninitializedCapacity: n) { out, initialized in
                switch x.dtype {
                case .u1:
                    for i in 0..<n { out[i] = Float(raw[i]) / 255 }
                case .f4:
                    for i in 0..<n {
                        let v = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                        out[i] = v
                        if bad == nil && !v.isFinite { bad = i }
                    }
                default:  // .f8, the only other accepted x dtype
                    for i in 0..<n {
                        let v = Float(
                            Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))))
                        out[i] = v
                        if bad == nil && !v.isFinite { bad = i }
                    }
                }
                initialized = n
            }
        }
        if let bad {
            throw fail(
                name,
                "holds a non-finite value at flat index \(bad) (\(x.dtype == .f8 ? "NaN, infinity or beyond Float's range" : "NaN or infinity")); inputs must be finite numbers"
            )
        }
        return values
    }

    /// y as labels: an integer `[N]` array matching the x array's N, every label in 0...Int32.max.
    static func labels(_ y: NumPyArray, _ name: String, samples: Int, _ fail: (String, String) -> DataError) throws -> [Int32] {
        guard DType.labels.contains(y.dtype) else {
            throw fail(name, "has dtype '\(y.dtype.rawValue)'; y arrays must be integers: \(DType.list(DType.labels))")
        }
        guard y.shape.count == 1 else { throw fail(name, "has shape \(y.shape); y arrays must be [N], one label per sample") }
        let x = "x" + name.dropFirst()
        guard y.shape[0] == samples else {
            throw fail(name, "holds \(y.shape[0]) labels but \(x) holds \(samples) samples; the counts must match")
        }
        var labels = [Int32](repeating: 0, count: samples)
        try y.data.withUnsafeBytes { raw in
            for i in 0..<samples {
                let value: Int64? =
                    switch y.dtype {
                    case .u1: Int64(raw[i])
                    case .i1: Int64(Int8(bitPattern: raw[i]))
                    case .u2: Int64(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                    case .i2: Int64(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)))
                    case .u4: Int64(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                    case .i4: Int64(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
                    case .u8: Int64(exactly: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))
                    default: Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))
                    }
                guard let value, value >= 0 && value <= Int64(Int32.max) else {
                    let shown =
                        y.dtype == .u8
                        ? String(UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))
                        : value.map(String.init) ?? "?"
                    throw fail(name, "has label \(shown) at index \(i); labels must be in 0...\(Int32.max) (classes 0...C-1)")
                }
                labels[i] = Int32(value)
            }
        }
        return labels
    }

    // MARK: The .npy format

    /// `\x93NUMPY`, major and minor version, the header length (2 bytes in version 1, 4 in 2 and 3,
    /// little-endian), the header (a Python dict literal padded with spaces and a newline), the data.
    static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]

    /// `array` (the npz entry's array name, or nil for a file of its own) prefixes every message.
    static func npy(_ bytes: [UInt8], path: String, array: String?) throws -> NumPyArray {
        func fail(_ problem: String) -> DataError { DataError(path: path, (array.map { "array \($0): " } ?? "") + problem) }
        guard bytes.count >= 10, Array(bytes[0..<6]) == magic else {
            throw fail("is not a .npy file (it does not start with \\x93NUMPY); save arrays with numpy.save or numpy.savez")
        }
        let major = bytes[6]
        guard (1...3).contains(major) else {
            throw fail("is .npy format version \(major).\(bytes[7]); accepted are versions 1, 2 and 3")
        }
        let lengthBytes = major == 1 ? 2 : 4
        guard bytes.count >= 8 + lengthBytes else { throw fail("is truncated inside its .npy preamble (\(bytes.count) bytes)") }
        var headerLength = 0
        for k in 0..<lengthBytes { headerLength |= Int(bytes[8 + k]) << (8 * k) }
        let start = 8 + lengthBytes
        guard headerLength <= bytes.count - start else {
            throw fail(
                "declares a \(headerLength)-byte header but only \(bytes.count - start) bytes follow; the file is truncated")
        }
        let header = try Header.parse(bytes[start..<(start + headerLength)], fail: fail)
        let payload = bytes.count - start - headerLength
        var count = 1
        for size in header.shape {
            let (product, overflow) = count.multipliedReportingOverflow(by: size)
            guard !overflow else { throw fail("has shape \(header.shape), too many elements to address") }
            count = product
        }
        let (needed, overflow) = count.multipliedReportingOverflow(by: header.dtype.size)
        guard !overflow else { throw fail("has shape \(header.shape), too many bytes to address") }
        guard payload == needed else {
            throw fail(
                "has \(payload) data bytes but its header ('\(header.dtype.rawValue)', shape \(header.shape)) needs \(needed); the file is \(payload < needed ? "truncated" : "corrupt (extra bytes)")"
            )
        }
        return NumPyArray(dtype: header.dtype, shape: header.shape, data: Array(bytes[(start + headerLength)...]))
    }

    /// The header dict, parsed strictly: exactly the keys 'descr' (a string), 'fortran_order'
    /// (True/False) and 'shape' (a tuple of non-negative ints), whitespace and trailing commas allowed.
    struct Header {
        var dtype: DType
        var shape: [Int]

        static func parse(_ text: ArraySlice<UInt8>, fail: (String) -> DataError) throws -> Header {
            var p = Parser(bytes: Array(text))
            func bad(_ what: String) -> DataError {
                let shown = String(decoding: text.prefix(120), as: UTF8.self).unicodeScalars.map {
                    $0.isASCII && $0.value >= 0x20 ? String($0) : "?"
                }.joined()
                return fail(
                    "has a header that is not a .npy header dict (\(what) at byte \(p.at)): \"\(shown)\"; expected {'descr': '<f4', 'fortran_order': False, 'shape': (N, ...), }"
                )
            }
            var descr: String?, fortran: Bool?, shape: [Int]?
            guard p.take("{") else { throw bad("no '{'") }
            while !p.take("}") {
                guard let key = p.string() else { throw bad("expected a quoted key or '}'") }
                guard p.take(":") else { throw bad("expected ':' after '\(key)'") }
                switch key {
                case "descr" where descr == nil:
                    guard let value = p.string() else { throw bad("'descr' is not a string") }
                    descr = value
                case "fortran_order" where fortran == nil:
                    if p.word("True") {
                        fortran = true
                    } else if p.word("False") {
                        fortran = false
                    } else {
                        throw bad("'fortran_order' is not True or False")
                    }
                case "shape" where shape == nil:
                    guard let value = try p.tuple() else { throw bad("'shape' is not a tuple of non-negative integers") }
                    shape = value
                case "descr", "fortran_order", "shape": throw bad("'\(key)' given twice")
                default: throw bad("unknown key '\(key)'")
                }
                if !p.take(",") {
                    guard p.peek("}") else { throw bad("expected ',' or '}'") }
                }
            }
            p.skipSpace()
            guard p.at == p.bytes.count else { throw bad("text after the closing '}'") }
            guard let descr, let fortran, let shape else {
                throw bad(
                    "missing \([descr == nil ? "'descr'" : nil, fortran == nil ? "'fortran_order'" : nil, shape == nil ? "'shape'" : nil].compactMap { $0 }.joined(separator: " and "))"
                )
            }
            guard !fortran else {
                throw fail("is stored in Fortran order (fortran_order True); save a C-ordered array (numpy.ascontiguousarray)")
            }
            guard let dtype = DType(rawValue: descr) ?? (descr == "<u1" ? .u1 : descr == "<i1" ? .i1 : nil) else {
                let hint =
                    descr.hasPrefix(">") ? "big-endian data is not read; convert with .astype('<\(descr.dropFirst())'). " : ""
                throw fail("has dtype '\(descr)'; \(hint)accepted are \(DType.list(DType.allCases))")
            }
            return Header(dtype: dtype, shape: shape)
        }
    }

    /// A cursor over the header's bytes; every token may be preceded by whitespace.
    struct Parser {
        let bytes: [UInt8]
        var at = 0

        mutating func skipSpace() {
            while at < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[at]) { at += 1 }
        }
        func peek(_ c: Character) -> Bool { at < bytes.count && bytes[at] == c.asciiValue! }
        mutating func take(_ c: Character) -> Bool {
            skipSpace()
            guard peek(c) else { return false }
            at += 1
            return true
        }
        mutating func word(_ w: String) -> Bool {
            skipSpace()
            let u = Array(w.utf8)
            guard bytes.count - at >= u.count, Array(bytes[at..<(at + u.count)]) == u else { return false }
            at += u.count
            return true
        }
        /// A single- or double-quoted string of printable ASCII without escapes.
        mutating func string() -> String? {
            skipSpace()
            guard at < bytes.count, bytes[at] == 0x27 || bytes[at] == 0x22 else { return nil }
            let quote = bytes[at]
            var end = at + 1
            while end < bytes.count && bytes[end] != quote {
                guard bytes[end] >= 0x20 && bytes[end] < 0x7F && bytes[end] != 0x5C else { return nil }
                end += 1
            }
            guard end < bytes.count else { return nil }
            defer { at = end + 1 }
            return String(decoding: bytes[(at + 1)..<end], as: UTF8.self)
        }
        /// `(`, non-negative decimal integers separated by commas (a trailing one allowed), `)`.
        mutating func tuple() throws -> [Int]? {
            guard take("(") else { return nil }
            var values: [Int] = []
            while !take(")") {
                skipSpace()
                var value = 0, digits = 0
                while at < bytes.count, bytes[at] >= 0x30 && bytes[at] <= 0x39 {
                    let (times10, o1) = value.multipliedReportingOverflow(by: 10)
                    let (sum, o2) = times10.addingReportingOverflow(Int(bytes[at] - 0x30))
                    if o1 || o2 { return nil }
                    value = sum
                    digits += 1
                    at += 1
                }
                // Python 2 era files may write longs as 60000L.
                if digits > 0 && at < bytes.count && bytes[at] == 0x4C { at += 1 }
                guard digits > 0 else { return nil }
                values.append(value)
                if !take(",") {
                    guard take(")") else { return nil }
                    return values
                }
            }
            return values
        }
    }
}
