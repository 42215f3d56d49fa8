import CZlib
#if canImport(Glibc)
    import Glibc
#endif

/// Reads a whole file into memory, inflating it when it is gzip-compressed (by magic bytes).
enum FileReader {
    /// Whether `path` exists; a path that cannot be looked at (a directory without permission) is an
    /// error, not a missing file.
    /// - Throws: `DataError` naming the path and the system's reason.
    static func exists(_ path: String) throws -> Bool {
        var st = stat()
        if stat(path, &st) == 0 { return true }
        if errno == ENOENT || errno == ENOTDIR { return false }
        throw DataError(path: path, "cannot be read: \(errnoText())")
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func read(_ path: String) throws -> [UInt8] {
        guard let file = fopen(path, "rb") else {
            throw DataError(path: path, "cannot be opened: \(errnoText())")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
            if n < chunk.count {
                if ferror(file) != 0 { throw DataError(path: path, "read failed: \(errnoText())") }
                break
            }
        }
        if bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B { return try gunzip(bytes, path: path) }
        return bytes
    }

    static func gunzip(_ input: [UInt8], path: String) throws -> [UInt8] {
        var stream = z_stream()
        // 15 + 32: zlib or gzip header, detected automatically
        guard inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw DataError(path: path, "zlib could not start inflating")
        }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var input = input
        let status: Int32 = input.withUnsafeMutableBufferPointer { inBuf in
            stream.next_in = inBuf.baseAddress
            stream.avail_in = UInt32(inBuf.count)
            var status = Z_OK
            repeat {
                status = chunk.withUnsafeMutableBufferPointer { outBuf in
                    stream.next_out = outBuf.baseAddress
                    stream.avail_out = UInt32(outBuf.count)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                let produced = chunk.count - Int(stream.avail_out)
                output.append(contentsOf: chunk[0..<produced])
                if status == Z_BUF_ERROR && stream.avail_in == 0 { break }
            } while status == Z_OK
            return status
        }
        guard status == Z_STREAM_END else {
            throw DataError(path: path, "is not a complete gzip stream (zlib status \(status)); the file may be truncated")
        }
        return output
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }
}
