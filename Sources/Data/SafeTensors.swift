#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

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
/// Writing (`encoded()`) is deterministic: header keys in UTF-8 byte order (`__metadata__` first,
/// left out when there is no metadata), compact JSON as the reference implementation prints it,
/// padded with spaces to a multiple of 8 bytes, data in `tensors` order.
///
/// Reading (`decode`) accepts what the reference implementation accepts for these dtypes and rejects,
/// with a `DataError` naming the file and the problem, anything else: a short file, a header length
/// past the file or over the format's 100 MB limit, a header that is not a JSON object, duplicate
/// keys, unknown or unsupported dtypes, negative shapes or element counts that overflow, offsets
/// outside the data buffer, tensors that overlap or leave gaps, trailing bytes, byte counts that are
/// not dtype size times element count, metadata values that are not strings. It never reads outside
/// the input, never allocates by a count the file declares (only for bytes that are really there),
/// and bounds JSON nesting (64 levels) and tensor rank (64 dimensions, NumPy 2's limit).
public struct SafeTensors: Sendable, Equatable {
    public enum DType: String, Sendable, CaseIterable {
        case f32 = "F32", f64 = "F64", i64 = "I64"
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
        precondition(shape.count <= Self.maxRank, "safetensors: \(Self.quoted(name)) has \(shape.count) dimensions; at most \(Self.maxRank)")
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
                path: where_, "tensor \(Self.quoted(name)) has \(t.bytes.count) bytes, which does not fit \(dtype.rawValue) \(t.shape)")
        }
        return t.bytes.withUnsafeBytes { raw in
            (0..<n).map { T(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self)) }
        }
    }

    // MARK: Writing

    /// The whole file. - Precondition: every tensor's bytes match its dtype and shape, and names are
    /// unique (`append` ensures both).
    public func encoded() -> [UInt8] {
        var out = encodedHeader()
        out.reserveCapacity(out.count + tensors.reduce(0) { $0 + $1.bytes.count })
        for t in tensors { out.append(contentsOf: t.bytes) }
        return out
    }

    /// The 8-byte length and the padded JSON header: everything before the data buffer.
    func encodedHeader() -> [UInt8] {
        var seen = Set<String>()
        var entries: [(name: String, json: [UInt8])] = []
        var offset = 0
        for t in tensors {
            precondition(t.name != Self.metadataKey, "safetensors: \(Self.metadataKey) cannot name a tensor")
            precondition(seen.insert(t.name).inserted, "safetensors: tensor \(Self.quoted(t.name)) appears twice")
            precondition(t.shape.count <= Self.maxRank, "safetensors: \(Self.quoted(t.name)) has more than \(Self.maxRank) dimensions")
            guard let count = t.count, count.multipliedReportingOverflow(by: t.dtype.size) == (t.bytes.count, false) else {
                preconditionFailure("safetensors: tensor \(Self.quoted(t.name)) has \(t.bytes.count) bytes, not those of \(t.dtype.rawValue) \(t.shape)")
            }
            var json: [UInt8] = []
            JSONWriter.string(t.name, into: &json)
            json.append(contentsOf: Array(#":{"dtype":""#.utf8))
            json.append(contentsOf: Array(t.dtype.rawValue.utf8))
            json.append(contentsOf: Array(#"","shape":["#.utf8))
            json.append(contentsOf: Array(t.shape.map(String.init).joined(separator: ",").utf8))
            json.append(contentsOf: Array(#"],"data_offsets":["#.utf8))
            json.append(contentsOf: Array("\(offset),\(offset + t.bytes.count)]}".utf8))
            offset += t.bytes.count
            entries.append((t.name, json))
        }
        entries.sort { Self.utf8Less($0.name, $1.name) }
        var json: [UInt8] = [UInt8(ascii: "{")]
        if !metadata.isEmpty {
            JSONWriter.string(Self.metadataKey, into: &json)
            json.append(contentsOf: [UInt8(ascii: ":"), UInt8(ascii: "{")])
            for (i, key) in metadata.keys.sorted(by: Self.utf8Less).enumerated() {
                if i > 0 { json.append(UInt8(ascii: ",")) }
                JSONWriter.string(key, into: &json)
                json.append(UInt8(ascii: ":"))
                JSONWriter.string(metadata[key]!, into: &json)
            }
            json.append(UInt8(ascii: "}"))
            if !entries.isEmpty { json.append(UInt8(ascii: ",")) }
        }
        for (i, e) in entries.enumerated() {
            if i > 0 { json.append(UInt8(ascii: ",")) }
            json.append(contentsOf: e.json)
        }
        json.append(UInt8(ascii: "}"))
        json.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - json.count % 8) % 8))
        precondition(json.count <= Self.maxHeaderBytes, "safetensors: the header would exceed \(Self.maxHeaderBytes) bytes")
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count)
        let n = UInt64(json.count)
        for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> (8 * UInt64(k)))) }
        out.append(contentsOf: json)
        return out
    }

    // MARK: Decoding

    /// Parses and checks a whole file. - Throws: `DataError(path:)` naming the problem.
    public static func decode(_ bytes: [UInt8], path: String) throws -> SafeTensors {
        try bytes.withUnsafeBufferPointer { try decode(buffer: $0, path: path) }
    }

    /// Reads `path` (as it is on disk: no decompression) and decodes it.
    public static func load(_ path: String) throws -> SafeTensors {
        try decode(RawFile.read(path), path: path)
    }

    static func decode(buffer file: UnsafeBufferPointer<UInt8>, path: String) throws -> SafeTensors {
        guard file.count >= 8 else {
            throw DataError(
                path: path,
                "has \(file.count) bytes; a safetensors file starts with an 8-byte header length (the file is empty, truncated or not safetensors)"
            )
        }
        var declared: UInt64 = 0
        for k in 0..<8 { declared |= UInt64(file[k]) << (8 * UInt64(k)) }
        guard declared <= UInt64(maxHeaderBytes) else {
            throw DataError(
                path: path,
                "declares a \(declared)-byte JSON header, over the format's limit of \(maxHeaderBytes) bytes; this is not a safetensors file, or its first 8 bytes are corrupted"
            )
        }
        let headerCount = Int(declared)
        guard headerCount <= file.count - 8 else {
            throw DataError(
                path: path,
                "declares a \(headerCount)-byte JSON header but only \(file.count - 8) bytes follow the 8-byte length; the file is truncated or not safetensors"
            )
        }
        let header = UnsafeBufferPointer(rebasing: file[8..<8 + headerCount])
        let dataStart = 8 + headerCount
        let bufferCount = file.count - dataStart

        var parser = HeaderParser(bytes: header, path: path)
        let (entries, metadata) = try parser.parseFile()

        // Offsets: inside the buffer, sized by dtype * shape, then in order, contiguous, covering it.
        for e in entries {
            let (begin, end) = e.offsets
            guard begin <= end else {
                throw DataError(path: path, "tensor \(quoted(e.name)) has data_offsets [\(begin), \(end)]: the end is before the beginning")
            }
            guard end <= bufferCount else {
                throw DataError(
                    path: path,
                    "tensor \(quoted(e.name)) has data_offsets [\(begin), \(end)], past the end of the \(bufferCount)-byte data buffer; the file is truncated or corrupt"
                )
            }
            guard let count = elementCount(e.shape) else {
                throw DataError(path: path, "tensor \(quoted(e.name)) has shape \(e.shape), whose element count overflows")
            }
            let (needed, overflow) = count.multipliedReportingOverflow(by: e.dtype.size)
            guard !overflow && needed == end - begin else {
                throw DataError(
                    path: path,
                    "tensor \(quoted(e.name)) has \(end - begin) bytes (data_offsets [\(begin), \(end)]) but \(e.dtype.rawValue) \(e.shape) needs \(overflow ? "more than fits in memory" : "\(needed)")"
                )
            }
        }
        // File order. Empty tensors that share an offset have no order in the file: they come in name
        // (UTF-8 byte) order, whatever order the header lists them in, so that decoding is canonical.
        let order = entries.indices.sorted { a, b in
            let x = entries[a].offsets, y = entries[b].offsets
            if x.begin != y.begin { return x.begin < y.begin }
            if x.end != y.end { return x.end < y.end }
            return utf8Less(entries[a].name, entries[b].name)
        }
        var position = 0
        var previous: Int? = nil
        for i in order {
            let e = entries[i]
            if e.offsets.begin < position, let p = previous {
                throw DataError(
                    path: path,
                    "tensors \(quoted(entries[p].name)) (data_offsets [\(entries[p].offsets.begin), \(entries[p].offsets.end)]) and \(quoted(e.name)) ([\(e.offsets.begin), \(e.offsets.end)]) overlap"
                )
            }
            if e.offsets.begin > position {
                throw DataError(
                    path: path,
                    "bytes \(position)..<\(e.offsets.begin) of the data buffer belong to no tensor (before \(quoted(e.name))); tensors must be contiguous"
                )
            }
            position = e.offsets.end
            previous = i
        }
        guard position == bufferCount else {
            throw DataError(
                path: path,
                "has \(bufferCount - position) byte(s) after the last tensor (its tensors cover \(position) of the \(bufferCount)-byte data buffer); tensors must fill the buffer exactly"
            )
        }
        var result = SafeTensors(
            tensors: order.map { i in
                let e = entries[i]
                let data = file[(dataStart + e.offsets.begin)..<(dataStart + e.offsets.end)]
                return Tensor(name: e.name, dtype: e.dtype, shape: e.shape, bytes: Array(data))
            }, metadata: metadata)
        result.source = path
        return result
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
        var out: [UInt8] = []
        var short = s
        if s.unicodeScalars.count > 80 {
            var view = String.UnicodeScalarView()
            view.append(contentsOf: s.unicodeScalars.prefix(77))
            short = String(view) + "..."
        }
        JSONWriter.string(short, into: &out)
        return String(decoding: out, as: UTF8.self)
    }
}

// MARK: - JSON

enum JSONWriter {
    /// A JSON string literal, escaped as serde_json does (", \, and control characters).
    static func string(_ s: String, into out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
            case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20:
                out.append(contentsOf: Array("\\u00".utf8))
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xF)])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// A strict RFC 8259 parser for the safetensors header that checks the schema as it goes: it keeps
/// only what the file describes (names, dtypes, shapes, offsets, metadata strings), validates and
/// skips unknown fields, rejects duplicate keys, invalid UTF-8, lone surrogates and nesting deeper
/// than `SafeTensors.maxDepth`.
struct HeaderParser {
    struct Entry {
        var name: String
        var dtype: SafeTensors.DType
        var shape: [Int]
        var offsets: (begin: Int, end: Int)
    }

    let bytes: UnsafeBufferPointer<UInt8>
    let path: String
    var i = 0

    init(bytes: UnsafeBufferPointer<UInt8>, path: String) {
        self.bytes = bytes
        self.path = path
    }

    /// dtypes of the format that this reader does not handle, to tell them from garbage.
    static let otherDTypes: Set<String> = [
        "BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "U64", "C64", "F8_E5M2", "F8_E4M3", "F8_E8M0",
        "F6_E2M3", "F6_E3M2", "F4",
    ]

    // MARK: Errors

    func syntax(_ what: String) -> DataError {
        DataError(path: path, "has a header that is not valid JSON: \(what) at byte \(i) of the \(bytes.count)-byte header")
    }

    func schema(_ what: String) -> DataError { DataError(path: path, "has an invalid header: \(what)") }

    // MARK: Schema

    mutating func parseFile() throws -> ([Entry], [String: String]) {
        skipWhitespace()
        guard i < bytes.count else {
            throw DataError(path: path, "has an empty JSON header; expected an object mapping tensor names to {dtype, shape, data_offsets}")
        }
        guard bytes[i] == UInt8(ascii: "{") else {
            if isValueStart() {
                let kind = describeValue()
                throw schema("the JSON header is \(kind); expected an object mapping tensor names to {dtype, shape, data_offsets}")
            }
            throw syntax("unexpected \(describeByte())")
        }
        var entries: [Entry] = []
        var metadata: [String: String]? = nil
        var names = Set<String>()
        try parseObject(depth: 1) { parser, key in
            if key == SafeTensors.metadataKey {
                guard metadata == nil else { throw parser.schema("\(SafeTensors.metadataKey) appears twice") }
                metadata = try parser.parseMetadata()
            } else {
                guard names.insert(key).inserted else {
                    throw parser.schema("tensor \(SafeTensors.quoted(key)) appears twice")
                }
                entries.append(try parser.parseTensor(key))
            }
        }
        skipWhitespace()
        guard i == bytes.count else { throw syntax("unexpected \(describeByte()) after the header object") }
        return (entries, metadata ?? [:])
    }

    mutating func parseMetadata() throws -> [String: String] {
        if consumeLiteral("null") { return [:] }
        guard i < bytes.count && bytes[i] == UInt8(ascii: "{") else {
            throw schema("\(SafeTensors.metadataKey) is \(describeValue()); expected an object of string values")
        }
        var metadata: [String: String] = [:]
        try parseObject(depth: 2) { parser, key in
            guard parser.i < parser.bytes.count && parser.bytes[parser.i] == UInt8(ascii: "\"") else {
                throw parser.schema(
                    "\(SafeTensors.metadataKey) value for key \(SafeTensors.quoted(key)) is \(parser.describeValue()); metadata values must be strings"
                )
            }
            let value = try parser.parseString()
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw parser.schema("\(SafeTensors.metadataKey) key \(SafeTensors.quoted(key)) appears twice")
            }
        }
        return metadata
    }

    mutating func parseTensor(_ name: String) throws -> Entry {
        let what = "tensor \(SafeTensors.quoted(name))"
        guard i < bytes.count && bytes[i] == UInt8(ascii: "{") else {
            throw schema("\(what) is \(describeValue()); expected an object {\"dtype\", \"shape\", \"data_offsets\"}")
        }
        var dtype: SafeTensors.DType? = nil
        var shape: [Int]? = nil
        var offsets: [Int]? = nil
        var fields = Set<String>()
        try parseObject(depth: 2) { parser, key in
            guard fields.insert(key).inserted else { throw parser.schema("\(what) has field \(SafeTensors.quoted(key)) twice") }
            switch key {
            case "dtype":
                guard parser.i < parser.bytes.count && parser.bytes[parser.i] == UInt8(ascii: "\"") else {
                    throw parser.schema("\(what) has dtype \(parser.describeValue()); expected a string such as \"F32\"")
                }
                let text = try parser.parseString()
                guard let d = SafeTensors.DType(rawValue: text) else {
                    let supported = SafeTensors.DType.allCases.map(\.rawValue).joined(separator: ", ")
                    if Self.otherDTypes.contains(text) {
                        throw parser.schema("\(what) has dtype \(text), which this reader does not support (supported: \(supported))")
                    }
                    throw parser.schema("\(what) has unknown dtype \(SafeTensors.quoted(text)) (supported: \(supported))")
                }
                dtype = d
            case "shape":
                shape = try parser.parseIntegers(what: "\(what) shape", limit: SafeTensors.maxRank)
            case "data_offsets":
                let o = try parser.parseIntegers(what: "\(what) data_offsets", limit: 2)
                guard o.count == 2 else {
                    throw parser.schema("\(what) has data_offsets \(o); expected two offsets [begin, end]")
                }
                offsets = o
            default:
                try parser.skipValue(depth: 3)
            }
        }
        guard let dtype else { throw schema("\(what) has no \"dtype\"") }
        guard let shape else { throw schema("\(what) has no \"shape\"") }
        guard let offsets else { throw schema("\(what) has no \"data_offsets\"") }
        return Entry(name: name, dtype: dtype, shape: shape, offsets: (offsets[0], offsets[1]))
    }

    /// An array of at most `limit` non-negative integers (JSON integer syntax, no fraction or exponent).
    mutating func parseIntegers(what: String, limit: Int) throws -> [Int] {
        guard i < bytes.count && bytes[i] == UInt8(ascii: "[") else {
            throw schema("\(what) is \(describeValue()); expected an array of non-negative integers")
        }
        var values: [Int] = []
        try parseArray { parser in
            guard values.count < limit else {
                throw parser.schema("\(what) has more than \(limit) entries")
            }
            let bytes = parser.bytes, i = parser.i
            guard i < bytes.count, bytes[i] == UInt8(ascii: "-") || (bytes[i] >= 0x30 && bytes[i] <= 0x39) else {
                throw parser.isValueStart()
                    ? parser.schema("\(what) holds \(parser.describeValue()); expected non-negative integers")
                    : parser.syntax("expected a value, found \(parser.describeByte())")
            }
            let literal = try parser.parseNumber()
            guard literal.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                throw parser.schema("\(what) holds \(String(decoding: literal.prefix(40), as: UTF8.self)); expected non-negative integers")
            }
            guard let v = Int(String(decoding: literal, as: UTF8.self)) else {
                throw parser.schema("\(what) holds \(String(decoding: literal.prefix(40), as: UTF8.self)), too large for a 64-bit integer")
            }
            values.append(v)
        }
        return values
    }

    // MARK: Syntax

    /// Parses an array at `i` (which holds '['), calling `element` with the parser positioned at
    /// each element (after whitespace); `element` must consume it.
    mutating func parseArray(_ element: (inout HeaderParser) throws -> Void) throws {
        i += 1  // '['
        skipWhitespace()
        if i < bytes.count && bytes[i] == UInt8(ascii: "]") {
            i += 1
            return
        }
        while true {
            skipWhitespace()
            try element(&self)
            skipWhitespace()
            guard i < bytes.count else { throw syntax("unterminated array") }
            if bytes[i] == UInt8(ascii: ",") {
                i += 1
                continue
            }
            guard bytes[i] == UInt8(ascii: "]") else { throw syntax("expected ',' or ']' in an array, found \(describeByte())") }
            i += 1
            return
        }
    }

    /// Parses an object at `i` (which holds '{'), calling `member` with the parser positioned at each
    /// value (after whitespace); `member` must consume the value.
    mutating func parseObject(depth: Int, _ member: (inout HeaderParser, String) throws -> Void) throws {
        guard depth <= SafeTensors.maxDepth else { throw syntax("nesting deeper than \(SafeTensors.maxDepth) levels") }
        i += 1  // '{'
        skipWhitespace()
        if i < bytes.count && bytes[i] == UInt8(ascii: "}") {
            i += 1
            return
        }
        while true {
            skipWhitespace()
            guard i < bytes.count && bytes[i] == UInt8(ascii: "\"") else {
                throw syntax(i < bytes.count ? "expected a string key, found \(describeByte())" : "unterminated object")
            }
            let key = try parseString()
            skipWhitespace()
            guard i < bytes.count && bytes[i] == UInt8(ascii: ":") else {
                throw syntax("expected ':' after key \(SafeTensors.quoted(key)), found \(describeByte())")
            }
            i += 1
            skipWhitespace()
            guard i < bytes.count else { throw syntax("missing value for key \(SafeTensors.quoted(key))") }
            try member(&self, key)
            skipWhitespace()
            guard i < bytes.count else { throw syntax("unterminated object") }
            if bytes[i] == UInt8(ascii: ",") {
                i += 1
                continue
            }
            guard bytes[i] == UInt8(ascii: "}") else { throw syntax("expected ',' or '}' in an object, found \(describeByte())") }
            i += 1
            return
        }
    }

    /// Validates and skips any JSON value, keeping nothing; duplicate keys in skipped objects are
    /// allowed (they carry nothing this reader uses).
    mutating func skipValue(depth: Int) throws {
        guard depth <= SafeTensors.maxDepth else { throw syntax("nesting deeper than \(SafeTensors.maxDepth) levels") }
        guard i < bytes.count else { throw syntax("missing value") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            try parseObject(depth: depth) { parser, _ in try parser.skipValue(depth: depth + 1) }
        case UInt8(ascii: "["):
            try parseArray { parser in try parser.skipValue(depth: depth + 1) }
        case UInt8(ascii: "\""):
            _ = try parseString()
        case UInt8(ascii: "-"), 0x30...0x39:
            _ = try parseNumber()
        default:
            guard consumeLiteral("true") || consumeLiteral("false") || consumeLiteral("null") else {
                throw syntax("expected a value, found \(describeByte())")
            }
        }
    }

    /// A JSON number at `i`; returns its bytes.
    mutating func parseNumber() throws -> UnsafeBufferPointer<UInt8> {
        let start = i
        func digit(_ k: Int) -> Bool { k < bytes.count && bytes[k] >= 0x30 && bytes[k] <= 0x39 }
        if i < bytes.count && bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard digit(i) else { throw syntax("a number needs a digit, found \(describeByte())") }
        if bytes[i] == 0x30 {
            i += 1
            if digit(i) { throw syntax("a number has a leading zero") }
        } else {
            while digit(i) { i += 1 }
        }
        if i < bytes.count && bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digit(i) else { throw syntax("a number needs digits after '.'") }
            while digit(i) { i += 1 }
        }
        if i < bytes.count && (bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E")) {
            i += 1
            if i < bytes.count && (bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-")) { i += 1 }
            guard digit(i) else { throw syntax("a number needs digits in its exponent") }
            while digit(i) { i += 1 }
        }
        return UnsafeBufferPointer(rebasing: bytes[start..<i])
    }

    /// A JSON string at `i` (which holds '"'), unescaped and checked to be valid UTF-8.
    mutating func parseString() throws -> String {
        let start = i
        i += 1
        var unescaped: [UInt8]? = nil  // only built when the string has escapes
        var runStart = i
        while true {
            guard i < bytes.count else {
                i = start
                throw syntax("unterminated string")
            }
            let b = bytes[i]
            if b == UInt8(ascii: "\"") { break }
            if b < 0x20 { throw syntax("control character 0x\(String(b, radix: 16)) inside a string (it must be escaped)") }
            if b != UInt8(ascii: "\\") {
                i += 1
                continue
            }
            if unescaped == nil { unescaped = [] }
            unescaped!.append(contentsOf: bytes[runStart..<i])
            i += 1
            guard i < bytes.count else { throw syntax("unterminated escape") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): unescaped!.append(e)
            case UInt8(ascii: "b"): unescaped!.append(0x08)
            case UInt8(ascii: "f"): unescaped!.append(0x0C)
            case UInt8(ascii: "n"): unescaped!.append(0x0A)
            case UInt8(ascii: "r"): unescaped!.append(0x0D)
            case UInt8(ascii: "t"): unescaped!.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if scalar >= 0xD800 && scalar < 0xDC00 {
                    guard i + 1 < bytes.count && bytes[i] == UInt8(ascii: "\\") && bytes[i + 1] == UInt8(ascii: "u") else {
                        throw syntax("a lone high surrogate \\u\(String(scalar, radix: 16)) (not valid Unicode)")
                    }
                    i += 2
                    let low = try hex4()
                    guard low >= 0xDC00 && low < 0xE000 else {
                        throw syntax("a high surrogate not followed by a low one (not valid Unicode)")
                    }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if scalar >= 0xDC00 && scalar < 0xE000 {
                    throw syntax("a lone low surrogate \\u\(String(scalar, radix: 16)) (not valid Unicode)")
                }
                UTF8.encode(Unicode.Scalar(scalar)!) { unescaped!.append($0) }
            default:
                throw syntax("invalid escape '\\\(String(decoding: [e], as: UTF8.self))' in a string")
            }
            runStart = i
        }
        let raw: String?
        if var u = unescaped {
            u.append(contentsOf: bytes[runStart..<i])
            raw = String(validating: u, as: UTF8.self)
        } else {
            raw = String(validating: UnsafeBufferPointer(rebasing: bytes[(start + 1)..<i]), as: UTF8.self)
        }
        guard let s = raw else {
            i = start
            throw syntax("a string that is not valid UTF-8")
        }
        i += 1  // closing quote
        return s
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw syntax("a \\u escape needs 4 hex digits") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw syntax("a \\u escape needs 4 hex digits, found \(describeByte())")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    mutating func consumeLiteral(_ word: StaticString) -> Bool {
        let n = word.utf8CodeUnitCount
        guard i + n <= bytes.count else { return false }
        let w = UnsafeBufferPointer(start: word.utf8Start, count: n)
        for k in 0..<n where bytes[i + k] != w[k] { return false }
        i += n
        return true
    }

    mutating func skipWhitespace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    func isValueStart() -> Bool {
        guard i < bytes.count else { return false }
        switch bytes[i] {
        case UInt8(ascii: "{"), UInt8(ascii: "["), UInt8(ascii: "\""), UInt8(ascii: "-"), 0x30...0x39,
            UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
            return true
        default: return false
        }
    }

    /// "an array", "a string", ... for the value starting at `i` (by its first byte).
    func describeValue() -> String {
        guard i < bytes.count else { return "missing" }
        switch bytes[i] {
        case UInt8(ascii: "{"): return "an object"
        case UInt8(ascii: "["): return "an array"
        case UInt8(ascii: "\""): return "a string"
        case UInt8(ascii: "-"), 0x30...0x39: return "a number"
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return "a boolean"
        case UInt8(ascii: "n"): return "null"
        default: return "not a JSON value (\(describeByte()))"
        }
    }

    func describeByte() -> String {
        guard i < bytes.count else { return "the end of the header" }
        let b = bytes[i]
        if b >= 0x21 && b < 0x7F { return "'\(String(decoding: [b], as: UTF8.self))'" }
        return "byte 0x\(b < 16 ? "0" : "")\(String(b, radix: 16))"
    }
}

// MARK: - Raw file I/O

/// Whole-file reads and writes without decompression (a safetensors file may begin with the gzip
/// magic bytes 1F 8B: that is just a header length).
enum RawFile {
    static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DataError(path: path, "cannot be opened: \(errnoText())") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw DataError(path: path, "cannot be inspected: \(errnoText())") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw DataError(path: path, "is not a regular file") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(st.st_size))
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { systemRead(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw DataError(path: path, "read failed: \(errnoText())")
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }
}

private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, buffer, count) }
