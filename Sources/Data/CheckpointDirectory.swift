#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A directory of checkpoints, `checkpoint-<step, 9 digits>.safetensors`, written atomically and
/// verified on load.
///
/// Each file carries the metadata key `autorate.checksum` = `crc32:<8 hex digits>`: the CRC-32 (zlib)
/// of the file as it would be encoded without that key, so it covers the 8-byte length, the whole
/// JSON header (tensor names, dtypes, shapes, offsets, the other metadata) and the whole data
/// buffer. `load` decodes the file, removes the key, re-encodes (deterministic, so this reproduces
/// the bytes that were summed) and compares. The file stays a plain safetensors file that any
/// reader loads (the reference implementation ignores metadata it does not know). To check one
/// elsewhere: drop the key, encode as `SafeTensors.encoded()` does (keys in byte order, compact
/// JSON, space padding, data in file order) and take zlib's `crc32` of the bytes.
public struct CheckpointDirectory: Sendable {
    public let path: String
    /// How many checkpoints (the highest steps) `write` leaves in the directory.
    public let keep: Int
    public static let checksumKey = "autorate.checksum"
    static let prefix = "checkpoint-", suffix = ".safetensors"

    /// Creates the directory (and missing parents) if needed; a failure to create it is reported by
    /// `write`. - Precondition: `keep >= 1`.
    public init(path: String, keep: Int) {
        precondition(keep >= 1, "CheckpointDirectory: keep must be at least 1, not \(keep)")
        self.path = path
        self.keep = keep
        try? Self.makeDirectory(path)
    }

    /// `checkpoint-000000123.safetensors` (at least 9 digits, no sign).
    public static func fileName(step: Int) -> String {
        precondition(step >= 0, "CheckpointDirectory: step must not be negative, not \(step)")
        let digits = String(step)
        return prefix + String(repeating: "0", count: max(0, 9 - digits.count)) + digits + suffix
    }

    /// The step of a checkpoint file name (exactly as `fileName(step:)` writes it); nil for any other
    /// name, temporary files included.
    public static func step(ofFileName name: String) -> Int? {
        guard name.hasPrefix(prefix), name.hasSuffix(suffix) else { return nil }
        let digits = name.utf8.dropFirst(prefix.utf8.count).dropLast(suffix.utf8.count)
        guard digits.count >= 9 && digits.count <= 18, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            let step = Int(String(decoding: digits, as: UTF8.self)), fileName(step: step) == name
        else { return nil }
        return step
    }

    /// Writes `checkpoint-<step>.safetensors` atomically: the encoded file (with its checksum) goes to
    /// a temporary file in the same directory (`<final name>.<pid>.tmp`), which is written fully,
    /// fsync'ed and renamed over the final name; then the directory is fsync'ed, so that after a crash
    /// the final name holds either the old file or the complete new one. Finally deletes all but the
    /// newest `keep` checkpoints (highest steps; the file just written is never deleted, even when
    /// higher steps exist). Returns the final path.
    /// - Throws: `DataError` naming the file or directory and the system's error text.
    public func write(step: Int, _ file: SafeTensors) throws -> String {
        precondition(step >= 0, "CheckpointDirectory: step must not be negative, not \(step)")
        let final = try place(Self.fileName(step: step), file)
        var deleted = false
        for old in checkpoints().dropFirst(keep) where old != final {
            guard unlink(old) == 0 || errno == ENOENT else {
                throw DataError(path: old, "could not be deleted (keeping the newest \(keep) checkpoints): \(Self.errnoText())")
            }
            deleted = true
        }
        if deleted { try Self.syncDirectory(path) }
        return final
    }

    /// Creates the directory if needed and checks that a file can be written in it (a small probe
    /// file, then removed), so that a bad directory stops the run before its first step rather than
    /// at its first checkpoint.
    /// - Throws: `DataError` naming the directory and the system's reason.
    public func checkWritable() throws {
        try Self.makeDirectory(path)
        let probe = path + "/.autorate-write-probe.\(getpid())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw DataError(path: path, "cannot be written: \(Self.errnoText()); checkpoints need a writable directory")
        }
        let wrote = systemWrite(fd, "probe", 5)
        let reason = Self.errnoText()
        close(fd)
        unlink(probe)
        guard wrote == 5 else {
            throw DataError(path: path, "cannot be written: \(reason); checkpoints need a writable directory")
        }
    }

    /// Writes `file` as `name` in this directory (not a `checkpoint-STEP` name: never pruned, never
    /// resumed from by `auto`), atomically as `write(step:)`. Returns the final path.
    public func write(name: String, _ file: SafeTensors) throws -> String {
        precondition(
            Self.step(ofFileName: name) == nil && !name.contains("/"), "CheckpointDirectory: \(name) is not a plain name")
        return try place(name, file)
    }

    /// Writes to a temporary file, syncs it, renames it to `name`, syncs the directory.
    private func place(_ name: String, _ file: SafeTensors) throws -> String {
        try Self.makeDirectory(path)
        let final = path + "/" + name
        let temporary = final + ".\(getpid()).tmp"
        let bytes = Self.encode(file)
        do {
            try Self.writeSynced(temporary, bytes)
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, final) == 0 else {
            let text = Self.errnoText()
            unlink(temporary)
            throw DataError(path: final, "could not be put in place (rename from \(temporary) failed: \(text))")
        }
        try Self.syncDirectory(path)
        return final
    }

    /// Checkpoint paths in this directory, newest (highest step) first; temporary and foreign files
    /// are ignored. Empty when the directory cannot be read.
    public func checkpoints() -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var found: [(step: Int, name: String)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let step = Self.step(ofFileName: name) { found.append((step, name)) }
        }
        return found.sorted { $0.step > $1.step }.map { path + "/" + $0.name }
    }

    /// Reads a checkpoint, decodes it and verifies its checksum; the result's metadata no longer holds
    /// `autorate.checksum`, so it equals what was passed to `write` (up to the order of empty tensors
    /// at the same offset, which come back in name order).
    /// - Throws: `DataError` naming the file when it is missing, truncated, corrupted or foreign.
    public static func load(_ path: String) throws -> SafeTensors {
        try verify(RawFile.read(path), path: path)
    }

    /// `load` for bytes already in memory.
    public static func verify(_ bytes: [UInt8], path: String) throws -> SafeTensors {
        var file = try SafeTensors.decode(bytes, path: path)
        guard let stored = file.metadata.removeValue(forKey: checksumKey) else {
            throw DataError(
                path: path,
                "has no \(checksumKey) metadata: it is a safetensors file but not a checkpoint written by autorate (or the write was interrupted)"
            )
        }
        guard let expected = CRC32.parse(stored) else {
            throw DataError(
                path: path, "has \(checksumKey) \(SafeTensors.quoted(stored)); expected crc32: and 8 lowercase hex digits")
        }
        let actual = checksum(of: file)
        guard actual.value == expected else {
            throw DataError(
                path: path,
                "fails its checksum: the file records \(stored) but its contents give \(actual.text); the checkpoint is corrupted"
            )
        }
        return file
    }

    /// The bytes `write` stores: `file` with `autorate.checksum` set.
    public static func encode(_ file: SafeTensors) -> [UInt8] {
        var sealed = file
        sealed.metadata.removeValue(forKey: checksumKey)
        sealed.metadata[checksumKey] = checksum(of: sealed).text
        return sealed.encoded()
    }

    /// CRC-32 of `file.encoded()`, computed without building it.
    static func checksum(of file: SafeTensors) -> CRC32 {
        var crc = CRC32(file.encodedHeader())
        for t in file.tensors { crc.update(t.bytes) }
        return crc
    }

    // MARK: System calls

    static func writeSynced(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DataError(path: path, "cannot be created: \(errnoText())") }
        var closed = false
        defer { if !closed { close(fd) } }
        try bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = systemWrite(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw DataError(path: path, "could not be written (\(done) of \(raw.count) bytes): \(errnoText())")
                }
                done += n
            }
        }
        guard fsync(fd) == 0 else { throw DataError(path: path, "could not be synced to disk: \(errnoText())") }
        closed = true
        guard close(fd) == 0 else { throw DataError(path: path, "could not be closed: \(errnoText())") }
    }

    /// Makes a rename or deletion in `directory` durable.
    static func syncDirectory(_ directory: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw DataError(path: directory, "cannot be opened to sync it: \(errnoText())") }
        defer { close(fd) }
        // Some file systems cannot sync a directory (EINVAL); there is nothing more to do there.
        guard fsync(fd) == 0 || errno == EINVAL else {
            throw DataError(path: directory, "could not be synced to disk: \(errnoText())")
        }
    }

    /// `mkdir -p`.
    static func makeDirectory(_ path: String) throws {
        if isDirectory(path) { return }
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw DataError(path: prefix, "cannot be created (for checkpoint directory \(path)): \(errnoText())")
            }
            prefix += "/"
        }
        guard isDirectory(path) else {
            throw DataError(path: path, "exists but is not a directory; checkpoints need a directory")
        }
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }
}

private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }
