import Foundation

extension SafeTensors {
    struct Entry {
        var name: String
        var dtype: DType
        var shape: [Int]
        var begin: Int, end: Int
    }

    /// The tensor entries (in no particular order) and the metadata of a JSON header.
    static func readHeader(_ header: ArraySlice<UInt8>, path: String) throws -> (entries: [Entry], metadata: [String: String]) {
        try HeaderReader(path: path).read(header)
    }
}

/// Reads the JSON header: Foundation parses it; this checks the schema and the limits, with errors
/// naming the file.
private struct HeaderReader {
    typealias ST = SafeTensors
    let path: String

    func read(_ header: ArraySlice<UInt8>) throws -> (entries: [ST.Entry], metadata: [String: String]) {
        let expected = "expected an object mapping tensor names to {dtype, shape, data_offsets}"
        guard header.contains(where: { !" \n\r\t".utf8.contains($0) }) else {
            throw DataError(path: path, "has an empty JSON header; \(expected)")
        }
        // Foundation would also read UTF-16 and UTF-32 (which it tells by their NUL bytes) and skip a
        // UTF-8 byte-order mark; the format's UTF-8 JSON has neither.
        guard !header.contains(0), !header.starts(with: [0xEF, 0xBB, 0xBF]) else {
            throw DataError(
                path: path, "has a header that is not UTF-8 JSON: it holds a NUL byte or starts with a byte-order mark")
        }
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: Foundation.Data(header), options: .fragmentsAllowed)
        } catch {
            let reason = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
            throw DataError(path: path, "has a header that is not valid JSON: \(reason)")
        }
        guard let object = root as? [String: Any] else { throw invalid("the JSON header is \(kind(root)); \(expected)") }
        // Foundation allows 512 levels; unknown fields could nest that deep.
        guard nesting(root) <= ST.maxDepth else {
            throw DataError(path: path, "has a header with JSON nesting deeper than \(ST.maxDepth) levels")
        }
        var entries: [ST.Entry] = []
        var metadata: [String: String] = [:]
        // In name order, so that the problem reported does not depend on hashing.
        for (name, value) in object.sorted(by: { ST.utf8Less($0.key, $1.key) }) {
            if name == ST.metadataKey {
                metadata = try self.metadata(value)
            } else {
                entries.append(try tensor(name, value))
            }
        }
        return (entries, metadata)
    }

    func invalid(_ what: String) -> DataError { DataError(path: path, "has an invalid header: \(what)") }

    func metadata(_ value: Any) throws -> [String: String] {
        if value is NSNull { return [:] }
        guard let object = value as? [String: Any] else {
            throw invalid("\(ST.metadataKey) is \(kind(value)); expected an object of string values")
        }
        var metadata: [String: String] = [:]
        for (key, value) in object.sorted(by: { ST.utf8Less($0.key, $1.key) }) {
            guard let text = value as? String else {
                throw invalid(
                    "\(ST.metadataKey) value for key \(ST.quoted(key)) is \(kind(value)); metadata values must be strings")
            }
            metadata[key] = text
        }
        return metadata
    }

    /// dtypes of the format that this reader does not handle, to tell them from garbage.
    static let otherDTypes: Set<String> = [
        "BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "U64", "C64", "F8_E5M2", "F8_E4M3", "F8_E8M0",
        "F6_E2M3", "F6_E3M2", "F4",
    ]

    func tensor(_ name: String, _ value: Any) throws -> ST.Entry {
        let what = "tensor \(ST.quoted(name))"
        guard let fields = value as? [String: Any] else {
            throw invalid("\(what) is \(kind(value)); expected an object {\"dtype\", \"shape\", \"data_offsets\"}")
        }
        func field(_ key: String) throws -> Any {
            guard let v = fields[key] else { throw invalid("\(what) has no \"\(key)\"") }
            return v
        }
        let dtypeValue = try field("dtype")
        guard let text = dtypeValue as? String else {
            throw invalid("\(what) has dtype \(kind(dtypeValue)); expected a string such as \"F32\"")
        }
        guard let dtype = ST.DType(rawValue: text) else {
            let supported = ST.DType.allCases.map(\.rawValue).joined(separator: ", ")
            if Self.otherDTypes.contains(text) {
                throw invalid("\(what) has dtype \(text), which this reader does not support (supported: \(supported))")
            }
            throw invalid("\(what) has unknown dtype \(ST.quoted(text)) (supported: \(supported))")
        }
        let shape = try integers(field("shape"), "\(what) shape", limit: ST.maxRank)
        let offsets = try integers(field("data_offsets"), "\(what) data_offsets", limit: 2)
        guard offsets.count == 2 else { throw invalid("\(what) has data_offsets \(offsets); expected two offsets [begin, end]") }
        return ST.Entry(name: name, dtype: dtype, shape: shape, begin: offsets[0], end: offsets[1])
    }

    /// An array of at most `limit` non-negative integers written as integers: Foundation gives a
    /// number with a fraction or an exponent ("1e2") as a Double, which prints with '.' or 'e'.
    func integers(_ value: Any, _ what: String, limit: Int) throws -> [Int] {
        guard let array = value as? [Any] else {
            throw invalid("\(what) is \(kind(value)); expected an array of non-negative integers")
        }
        guard array.count <= limit else { throw invalid("\(what) has more than \(limit) entries") }
        return try array.map { element in
            guard let number = element as? NSNumber, !isBoolean(number) else {
                throw invalid("\(what) holds \(kind(element)); expected non-negative integers")
            }
            let text = "\(number)"
            guard text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
                throw invalid("\(what) holds \(text.prefix(40)); expected non-negative integers")
            }
            guard let n = Int(text) else { throw invalid("\(what) holds \(text.prefix(40)), too large for a 64-bit integer") }
            return n
        }
    }

    /// Levels of nesting in `value`, counting `value` itself (a scalar is 1).
    func nesting(_ value: Any) -> Int {
        if let array = value as? [Any] { return 1 + (array.lazy.map(nesting).max() ?? 0) }
        if let object = value as? [String: Any] { return 1 + (object.values.lazy.map(nesting).max() ?? 0) }
        return 1
    }

    /// "an object", "a number", ... for messages.
    func kind(_ value: Any) -> String {
        switch value {
        case is [String: Any]: return "an object"
        case is [Any]: return "an array"
        case is String: return "a string"
        case let n as NSNumber: return isBoolean(n) ? "a boolean" : "a number"
        default: return "null"
        }
    }

    /// JSON's true and false come back as NSNumbers too, of type char.
    func isBoolean(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }
}
