/// The safetensors format (https://huggingface.co/docs/safetensors), the subset of dtypes the trainer
/// stores: F32, F64 and I64.
/// ```
/// 8 bytes    N, the header length (UInt64, little-endian)
/// N bytes    UTF-8 JSON: {"__metadata__": {"key": "value", ...},
///                         "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
/// rest       the data buffer; offsets are relative to its start
/// ```
/// Tensors are little-endian, contiguous, in C (row-major) order, exactly as NumPy and PyTorch lay
/// them out; the file loads with Python's `safetensors.numpy.load_file` and `safetensors.torch`.
///
/// Writing (`encoded()`, SafeTensors+Encoding.swift) is deterministic: header keys in UTF-8 byte
/// order (`__metadata__` first, left out when there is no metadata), compact JSON as the reference
/// implementation prints it, padded with spaces to a multiple of 8 bytes, data in `tensors` order.
///
/// Reading (`decode`, SafeTensors+Decoding.swift and SafeTensors+Header.swift) rejects, with a
/// `DataError` naming the file and the problem: a short file, a header length past the file or over
/// the format's 100 MB limit, a header that is not a JSON object, unknown or unsupported dtypes,
/// negative shapes or element counts that overflow, offsets outside the data buffer, tensors that
/// overlap or leave gaps, trailing bytes, byte counts that are not dtype size times element count,
/// metadata values that are not strings. It never reads outside the input, never allocates by a
/// count the file declares, and bounds JSON nesting (64 levels) and tensor rank (64 dimensions,
/// NumPy 2's limit). A repeated key keeps its last value (as the reference implementation does for
/// tensor names and metadata keys; it rejects a repeated field or `__metadata__`).
public struct SafeTensors: Sendable, Equatable {
    public enum DType: String, Sendable, CaseIterable {
        case f32 = "F32"
        case f64 = "F64"
        case i64 = "I64"
        /// Bytes per element.
        public var size: Int { self == .f32 ? 4 : 8 }
    }

    public struct Tensor: Sendable, Equatable {
        public var name: String
        public var dtype: DType
        /// Row-major dimensions; `[]` is a scalar (one element).
        public var shape: [Int]
        /// The raw little-endian values: `count * dtype.size` bytes.
        public var bytes: [UInt8]

        public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.bytes = bytes
        }

        /// The number of elements `shape` describes (1 for a scalar); nil when a dimension is negative
        /// or the product overflows.
        public var count: Int? { SafeTensors.elementCount(shape) }
    }

    /// In file order (the order of the data buffer; empty tensors at the same offset, whose order the
    /// file does not record, in name order).
    public var tensors: [Tensor]
    public var metadata: [String: String]
    /// The path this value was decoded from, used in error messages of the accessors; not stored in
    /// the file and ignored by `==`.
    public var source: String?

    public init(tensors: [Tensor] = [], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    public static func == (a: SafeTensors, b: SafeTensors) -> Bool {
        a.tensors == b.tensors && a.metadata == b.metadata
    }

    /// The format's limit on the JSON header (the reference implementation's `MAX_HEADER_SIZE`).
    public static let maxHeaderBytes = 100_000_000
    /// The most dimensions a tensor may have (NumPy 2's `NPY_MAXDIMS`; PyTorch allows fewer).
    public static let maxRank = 64
    static let maxDepth = 64
    static let metadataKey = "__metadata__"

    // MARK: Building

    public mutating func append(_ name: String, floats: UnsafeBufferPointer<Float>, shape: [Int]) {
        append(name, .f32, shape, count: floats.count, bytes: Self.littleEndianBytes(floats.map { $0.bitPattern }))
    }

    public mutating func append(_ name: String, floats: [Float], shape: [Int]) {
        floats.withUnsafeBufferPointer { append(name, floats: $0, shape: shape) }
    }

    public mutating func append(_ name: String, doubles: [Double], shape: [Int]) {
        append(name, .f64, shape, count: doubles.count, bytes: Self.littleEndianBytes(doubles.map { $0.bitPattern }))
    }

    public mutating func append(_ name: String, int64s: [Int64], shape: [Int]) {
        append(name, .i64, shape, count: int64s.count, bytes: Self.littleEndianBytes(int64s.map { UInt64(bitPattern: $0) }))
    }

    private mutating func append(_ name: String, _ dtype: DType, _ shape: [Int], count: Int, bytes: [UInt8]) {
        precondition(name != Self.metadataKey, "safetensors: \(Self.metadataKey) is reserved and cannot name a tensor")
        precondition(tensor(name) == nil, "safetensors: a tensor named \(Self.quoted(name)) is already present")
        precondition(
            shape.count <= Self.maxRank,
            "safetensors: \(Self.quoted(name)) has \(shape.count) dimensions; at most \(Self.maxRank)")
        precondition(
            Self.elementCount(shape) == count,
            "safetensors: \(Self.quoted(name)) has \(count) values but shape \(shape) describes \(Self.elementCount(shape).map(String.init) ?? "an invalid count")"
        )
        tensors.append(Tensor(name: name, dtype: dtype, shape: shape, bytes: bytes))
    }

    // MARK: Reading values

    public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name } }

    /// The values of an F32 tensor. - Throws: `DataError` if there is no such tensor or it is not F32.
    public func floats(_ name: String) throws -> [Float] {
        try values(name, .f32, as: UInt32.self).map { Float(bitPattern: $0) }
    }

    /// The values of an F64 tensor. - Throws: `DataError` if there is no such tensor or it is not F64.
    public func doubles(_ name: String) throws -> [Double] {
        try values(name, .f64, as: UInt64.self).map { Double(bitPattern: $0) }
    }

    /// The values of an I64 tensor. - Throws: `DataError` if there is no such tensor or it is not I64.
    public func int64s(_ name: String) throws -> [Int64] {
        try values(name, .i64, as: UInt64.self).map { Int64(bitPattern: $0) }
    }

    private func values<T: FixedWidthInteger>(_ name: String, _ dtype: DType, as: T.Type) throws -> [T] {
        let where_ = source ?? "safetensors data"
        guard let t = tensor(name) else {
            let names = tensors.prefix(20).map { Self.quoted($0.name) }.joined(separator: ", ")
            throw DataError(
                path: where_,
                "has no tensor named \(Self.quoted(name)); it holds \(tensors.count) tensor(s)\(tensors.isEmpty ? "" : ": \(names)\(tensors.count > 20 ? ", ..." : "")")"
            )
        }
        guard t.dtype == dtype else {
            throw DataError(path: where_, "tensor \(Self.quoted(name)) is \(t.dtype.rawValue), not \(dtype.rawValue)")
        }
        let n = t.bytes.count / MemoryLayout<T>.size
        guard t.bytes.count == n * MemoryLayout<T>.size, t.count == n else {
            throw DataError(
                path: where_,
                "tensor \(Self.quoted(name)) has \(t.bytes.count) bytes, which does not fit \(dtype.rawValue) \(t.shape)")
        }
        return t.bytes.withUnsafeBytes { raw in
            (0..<n).map { T(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self)) }
        }
    }

    // MARK: Helpers

    /// The element count of `shape`; nil if a dimension is negative or the product overflows.
    static func elementCount(_ shape: [Int]) -> Int? {
        var n = 1
        for d in shape {
            guard d >= 0 else { return nil }
            let (p, overflow) = n.multipliedReportingOverflow(by: d)
            guard !overflow else { return nil }
            n = p
        }
        return n
    }

    static func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
        values.map { $0.littleEndian }.withUnsafeBytes { Array($0) }
    }

    /// Byte-wise (code unit) order, as Rust and Python sort UTF-8 strings; Swift's `<` compares
    /// Unicode canonical forms instead.
    static func utf8Less(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }

    /// A name for messages: JSON-quoted, shortened when long.
    static func quoted(_ s: String) -> String {
        guard s.unicodeScalars.count > 80 else { return jsonString(s) }
        var short = String.UnicodeScalarView()
        short.append(contentsOf: s.unicodeScalars.prefix(77))
        return jsonString(String(short) + "...")
    }
}
