import CZlib

/// The little of the zip format a `.npz` needs: the central directory at the end of the file lists
/// the entries, each stored (method 0) or deflated (method 8). Sizes come from the central
/// directory, not the local headers: NumPy writes its local headers in ZIP64 form with
/// placeholder sizes. ZIP64 archives (over 4 GB or 65535 entries), encryption and multi-disk
/// archives are refused.
enum Zip {
    struct Entry {
        let name: String
        let method: Int
        let crc: UInt32
        let compressedSize: Int
        let size: Int
        let localHeader: Int
    }

    static let endRecordSize = 22

    static func entries(_ bytes: [UInt8], path: String) throws -> [Entry] {
        let notZip =
            "is not a .npz file (no zip end-of-central-directory record); save the arrays with numpy.savez or numpy.savez_compressed"
        guard bytes.count >= endRecordSize else { throw DataError(path: path, "has \(bytes.count) bytes; \(notZip)") }
        // The record is the last 22 bytes plus a comment of up to 65535 bytes: search backwards.
        var end = bytes.count - endRecordSize
        let lowest = max(0, bytes.count - endRecordSize - 0xFFFF)
        while end >= lowest && !(u32(bytes, end) == 0x0605_4B50 && end + endRecordSize + u16(bytes, end + 20) == bytes.count) {
            end -= 1
        }
        guard end >= lowest else { throw DataError(path: path, notZip) }
        if end >= 20 && u32(bytes, end - 20) == 0x0706_4B50 {
            throw DataError(path: path, "is a ZIP64 archive, which is not read; save smaller arrays or use npy:DIR")
        }
        let count = u16(bytes, end + 10), size = Int(u32(bytes, end + 12)), offset = Int(u32(bytes, end + 16))
        guard u16(bytes, end + 4) == 0 && u16(bytes, end + 6) == 0 && u16(bytes, end + 8) == count else {
            throw DataError(path: path, "is a multi-disk zip archive, which is not read; save it as one file")
        }
        guard offset <= end && size <= end - offset else {
            throw DataError(
                path: path,
                "has a central directory at bytes \(offset)..<\(offset + size), outside the \(end) bytes before its end record; the file is truncated or corrupt"
            )
        }
        var entries: [Entry] = []
        var at = offset
        for index in 0..<count {
            func corrupt(_ what: String) -> DataError {
                DataError(
                    path: path, "has a corrupt central directory (entry \(index): \(what)); the file is truncated or corrupt")
            }
            guard offset + size - at >= 46, u32(bytes, at) == 0x0201_4B50 else { throw corrupt("no entry header") }
            let nameLength = u16(bytes, at + 28), extraLength = u16(bytes, at + 30), commentLength = u16(bytes, at + 32)
            guard offset + size - at - 46 >= nameLength + extraLength + commentLength else {
                throw corrupt("runs past the directory")
            }
            let name = String(decoding: bytes[(at + 46)..<(at + 46 + nameLength)], as: UTF8.self)
            let entry = Entry(
                name: name, method: u16(bytes, at + 10), crc: u32(bytes, at + 16), compressedSize: Int(u32(bytes, at + 20)),
                size: Int(u32(bytes, at + 24)), localHeader: Int(u32(bytes, at + 42)))
            if entry.compressedSize == 0xFFFF_FFFF || entry.size == 0xFFFF_FFFF || entry.localHeader == 0xFFFF_FFFF {
                throw DataError(
                    path: path, "entry '\(name)' is in ZIP64 form, which is not read; save smaller arrays or use npy:DIR")
            }
            if u16(bytes, at + 8) & 1 != 0 {
                throw DataError(path: path, "entry '\(name)' is encrypted; save the arrays without a password")
            }
            entries.append(entry)
            at += 46 + nameLength + extraLength + commentLength
        }
        return entries
    }

    /// The entry's uncompressed bytes, checked against its size and CRC-32.
    static func contents(of entry: Entry, in bytes: [UInt8], path: String) throws -> [UInt8] {
        func fail(_ what: String) -> DataError { DataError(path: path, "entry '\(entry.name)' \(what)") }
        let at = entry.localHeader
        guard at <= bytes.count - 30, u32(bytes, at) == 0x0403_4B50 else {
            throw fail("has no local header at byte \(at); the file is truncated or corrupt")
        }
        let start = at + 30 + u16(bytes, at + 26) + u16(bytes, at + 28)
        guard start <= bytes.count && entry.compressedSize <= bytes.count - start else {
            throw fail(
                "needs \(entry.compressedSize) bytes from byte \(start) but the file has \(bytes.count); the file is truncated")
        }
        let stored = bytes[start..<(start + entry.compressedSize)]
        let data: [UInt8]
        switch entry.method {
        case 0:
            guard entry.size == entry.compressedSize else {
                throw fail(
                    "is stored (not compressed) but lists \(entry.size) bytes and \(entry.compressedSize) stored; the file is corrupt"
                )
            }
            data = Array(stored)
        case 8: data = try inflateRaw(stored, size: entry.size, fail: fail)
        default:
            throw fail(
                "is compressed with zip method \(entry.method); accepted are 0 (stored, numpy.savez) and 8 (deflate, numpy.savez_compressed)"
            )
        }
        var checksum = CRC32()
        checksum.update(data)
        let crc = checksum.value
        guard crc == entry.crc else {
            throw fail(
                "has CRC-32 \(String(crc, radix: 16)) but the directory lists \(String(entry.crc, radix: 16)); the file is corrupt"
            )
        }
        return data
    }

    /// Raw deflate (no zlib or gzip wrapper: windowBits -15) into exactly `size` bytes.
    static func inflateRaw(_ input: ArraySlice<UInt8>, size: Int, fail: (String) -> DataError) throws -> [UInt8] {
        // Deflate expands at most about 1032:1; a larger claim is a corrupt (or hostile) directory.
        guard size <= input.count * 1032 + 1024 else {
            throw fail(
                "claims \(size) bytes from \(input.count) deflated ones, more than deflate can produce; the file is corrupt")
        }
        var stream = z_stream()
        guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw fail("could not be inflated: zlib could not start")
        }
        defer { inflateEnd(&stream) }
        // One byte more than listed, so that a stream longer than its listed size shows.
        var output = [UInt8](repeating: 0, count: size + 1)
        var input = Array(input)
        let (status, produced): (Int32, Int) = input.withUnsafeMutableBufferPointer { inBuf in
            output.withUnsafeMutableBufferPointer { outBuf in
                stream.next_in = inBuf.baseAddress
                stream.avail_in = UInt32(inBuf.count)
                stream.next_out = outBuf.baseAddress
                stream.avail_out = UInt32(outBuf.count)
                let status = inflate(&stream, Z_FINISH)
                return (status, outBuf.count - Int(stream.avail_out))
            }
        }
        guard status == Z_STREAM_END && produced == size else {
            throw fail(
                status == Z_STREAM_END
                    ? "inflates to \(produced) bytes but the directory lists \(size); the file is corrupt"
                    : "is not a complete deflate stream (zlib status \(status), \(produced) of \(size) bytes); the file is truncated or corrupt"
            )
        }
        output.removeLast()
        return output
    }

    static func u16(_ b: [UInt8], _ at: Int) -> Int { Int(b[at]) | Int(b[at + 1]) << 8 }
    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }
}
