/// Writing. Hand-written because Foundation cannot print the canonical header: `__metadata__` ahead
/// of the tensor names (it sorts '_' after 'Z'), the fields in the reference implementation's order
/// (dtype, shape, data_offsets, not sorted) and '/' unescaped.
extension SafeTensors {
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
        var entries: [(name: String, json: String)] = []
        var offset = 0
        for t in tensors {
            precondition(t.name != Self.metadataKey, "safetensors: \(Self.metadataKey) cannot name a tensor")
            precondition(seen.insert(t.name).inserted, "safetensors: tensor \(Self.quoted(t.name)) appears twice")
            precondition(
                t.shape.count <= Self.maxRank, "safetensors: \(Self.quoted(t.name)) has more than \(Self.maxRank) dimensions")
            guard let count = t.count, count.multipliedReportingOverflow(by: t.dtype.size) == (t.bytes.count, false) else {
                preconditionFailure(
                    "safetensors: tensor \(Self.quoted(t.name)) has \(t.bytes.count) bytes, not those of \(t.dtype.rawValue) \(t.shape)"
                )
            }
            let shape = t.shape.map(String.init).joined(separator: ",")
            let end = offset + t.bytes.count
            entries.append(
                (
                    t.name,
                    #"\#(Self.jsonString(t.name)):{"dtype":"\#(t.dtype.rawValue)","shape":[\#(shape)],"data_offsets":[\#(offset),\#(end)]}"#
                ))
            offset = end
        }
        var members: [String] = []
        if !metadata.isEmpty {
            let pairs = metadata.keys.sorted(by: Self.utf8Less).map { Self.jsonString($0) + ":" + Self.jsonString(metadata[$0]!) }
            members.append(Self.jsonString(Self.metadataKey) + ":{" + pairs.joined(separator: ",") + "}")
        }
        members += entries.sorted { Self.utf8Less($0.name, $1.name) }.map(\.json)
        var json = Array(("{" + members.joined(separator: ",") + "}").utf8)
        json.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - json.count % 8) % 8))
        precondition(json.count <= Self.maxHeaderBytes, "safetensors: the header would exceed \(Self.maxHeaderBytes) bytes")
        return (0..<8).map { UInt8(truncatingIfNeeded: UInt64(json.count) >> (8 * UInt64($0))) } + json
    }

    /// A JSON string literal escaped as serde_json does: '"', '\' and control characters only
    /// (also the metrics file's strings).
    public static func jsonString(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{8}": out += "\\b"
            case "\u{C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{0}"..<" ": out += "\\u00" + (c.value < 0x10 ? "0" : "") + String(c.value, radix: 16)
            default: out.unicodeScalars.append(c)
            }
        }
        return out + "\""
    }
}
