/// Reading a whole file: the length prefix, then (after SafeTensors+Header.swift) the data layout.
extension SafeTensors {
    /// Parses and checks a whole file. - Throws: `DataError(path:)` naming the problem.
    public static func decode(_ file: [UInt8], path: String) throws -> SafeTensors {
        guard file.count >= 8 else {
            throw DataError(
                path: path,
                "has \(file.count) bytes; a safetensors file starts with an 8-byte header length (the file is empty, truncated or not safetensors)"
            )
        }
        let declared = file[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard declared <= UInt64(maxHeaderBytes) else {
            throw DataError(
                path: path,
                "declares a \(declared)-byte JSON header, over the format's limit of \(maxHeaderBytes) bytes; this is not a safetensors file, or its first 8 bytes are corrupted"
            )
        }
        let dataStart = 8 + Int(declared)
        guard dataStart <= file.count else {
            throw DataError(
                path: path,
                "declares a \(declared)-byte JSON header but only \(file.count - 8) bytes follow the 8-byte length; the file is truncated or not safetensors"
            )
        }
        let bufferCount = file.count - dataStart
        let (entries, metadata) = try readHeader(file[8..<dataStart], path: path)

        // Offsets: inside the buffer, sized by dtype * shape, then in order, contiguous, covering it.
        for e in entries {
            let offsets = "data_offsets [\(e.begin), \(e.end)]"
            guard e.begin <= e.end else {
                throw DataError(path: path, "tensor \(quoted(e.name)) has \(offsets): the end is before the beginning")
            }
            guard e.end <= bufferCount else {
                throw DataError(
                    path: path,
                    "tensor \(quoted(e.name)) has \(offsets), past the end of the \(bufferCount)-byte data buffer; the file is truncated or corrupt"
                )
            }
            guard let count = elementCount(e.shape) else {
                throw DataError(path: path, "tensor \(quoted(e.name)) has shape \(e.shape), whose element count overflows")
            }
            let (needed, overflow) = count.multipliedReportingOverflow(by: e.dtype.size)
            guard !overflow && needed == e.end - e.begin else {
                throw DataError(
                    path: path,
                    "tensor \(quoted(e.name)) has \(e.end - e.begin) bytes (\(offsets)) but \(e.dtype.rawValue) \(e.shape) needs \(overflow ? "more than fits in memory" : "\(needed)")"
                )
            }
        }
        // File order. Empty tensors that share an offset have no order in the file: they come in name
        // (UTF-8 byte) order, whatever order the header lists them in, so that decoding is canonical.
        let ordered = entries.sorted { a, b in
            if a.begin != b.begin { return a.begin < b.begin }
            if a.end != b.end { return a.end < b.end }
            return utf8Less(a.name, b.name)
        }
        var position = 0
        for (i, e) in ordered.enumerated() {
            if e.begin < position {
                let p = ordered[i - 1]
                throw DataError(
                    path: path,
                    "tensors \(quoted(p.name)) (data_offsets [\(p.begin), \(p.end)]) and \(quoted(e.name)) ([\(e.begin), \(e.end)]) overlap"
                )
            }
            if e.begin > position {
                throw DataError(
                    path: path,
                    "bytes \(position)..<\(e.begin) of the data buffer belong to no tensor (before \(quoted(e.name))); tensors must be contiguous"
                )
            }
            position = e.end
        }
        guard position == bufferCount else {
            throw DataError(
                path: path,
                "has \(bufferCount - position) byte(s) after the last tensor (its tensors cover \(position) of the \(bufferCount)-byte data buffer); tensors must fill the buffer exactly"
            )
        }
        var result = SafeTensors(
            tensors: ordered.map { e in
                Tensor(
                    name: e.name, dtype: e.dtype, shape: e.shape, bytes: Array(file[(dataStart + e.begin)..<(dataStart + e.end)]))
            }, metadata: metadata)
        result.source = path
        return result
    }

    /// Reads `path` (as it is on disk: no decompression) and decodes it.
    public static func load(_ path: String) throws -> SafeTensors {
        try decode(RawFile.read(path), path: path)
    }
}
