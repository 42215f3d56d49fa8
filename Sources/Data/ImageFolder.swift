#if canImport(Glibc)
    import Glibc
#endif
import TensorCore

/// `--data folder:DIR`: torchvision's ImageFolder layout, decoded once into a cache.
/// ```
/// DIR/train/CLASS/*.png|*.jpg|*.jpeg      (extensions in any case; other and hidden files are skipped)
/// DIR/test/CLASS/...  or  DIR/val/CLASS/...  (the test classes: some or all of train's)
/// ```
/// Classes are train's subdirectories sorted by their bytes; a label is an index into them.
/// Samples go class by class, files sorted by name (the trainer shuffles). Pixels are byte/255,
/// HWC; grayscale images give 1 channel, colour ones 3 (see `ImageDecoder`), and all must agree.
/// Images of one size train as they are; otherwise `imageSize` resizes them (see `ImageResize`).
///
/// The first start decodes into `DIR/.autorate-cache-<key>.bin` (or into the cache directory); a
/// later one maps that file and converts it (see `ImageFolderCache`). The ranks of a node share the
/// decoding through their `DecodeTeam`: rank r decodes the files i with `i % size == r` and writes
/// them at their offsets in one temporary file, which rank 0 completes and renames into place.
public enum ImageFolder {
    /// Loads both splits (unstandardized).
    ///
    /// Collective over `options.team`: every member must call this. Every phase ends with one
    /// `allSucceeded`, the same number on every member whatever happens; when one member fails
    /// (a corrupt image), every member stops after that phase: the failing one throws its own
    /// `DataError`, the others one saying that another rank of the node failed.
    /// - Throws: `DataError` naming the file or directory, the value and what is accepted.
    public static func load(directory: String, options: DataLoadOptions = DataLoadOptions()) throws -> DataSplits {
        var loader = Loader(directory: directory, options: options)
        return try loader.run()
    }
}

private struct Loader {
    let directory: String
    let options: DataLoadOptions
    var team: any DecodeTeam { options.team }
    var notes: [String] = []
    var label: String { "folder:\(directory)" }

    init(directory: String, options: DataLoadOptions) {
        self.directory = directory
        self.options = options
    }

    /// Ends a phase: every member learns whether all succeeded; on failure each throws.
    func agree(_ failure: Error?) throws {
        guard try team.allSucceeded(failure == nil) else {
            throw failure
                ?? DataError(
                    path: directory,
                    "another rank of this node failed while loading \(label) and printed why; rank \(team.rank) stopped with it")
        }
    }

    /// Runs `body`, returning its error instead of throwing it (so that `agree` comes next).
    func attempt(_ body: () throws -> Void) -> Error? {
        do {
            try body()
            return nil
        } catch { return error }
    }

    mutating func run() throws -> DataSplits {
        let started = Self.now()
        // 1. scan: every member lists the same files
        var scanned: ImageFolderScan?
        try agree(attempt { scanned = try ImageFolderScan(directory: directory, imageSize: options.imageSize) })
        let scan = scanned!
        if let note = scan.skippedNote { notes.append(note) }
        let cacheDirectory = options.cacheDirectory ?? directory
        let cachePath = cacheDirectory + "/" + scan.key.fileName

        // 2. a valid cache? all members must find it so
        var cached: DataSplits?
        if (try? FileReader.exists(cachePath)) == true {
            do {
                cached = try Self.read(cachePath, key: scan.key, scan: scan)
            } catch let error as DataError {
                notes.append("\(label): the cache \(cachePath) is not used and is rebuilt: \(error.problem)")
            } catch {
                notes.append("\(label): the cache \(cachePath) is not used and is rebuilt: \(error)")
            }
        }
        if try team.allSucceeded(cached != nil) {
            notes.append(
                "\(label): \(scan.all.count) images read from the cache \(cachePath) in \(Self.seconds(since: started)) s")
            cached!.notes = notes
            return cached!
        }

        // 3. the image shape, from the first image's header (all members)
        var shape: ImageShape?
        try agree(
            attempt {
                let first = scan.all[0]
                let path = directory + "/" + first.path
                let bytes = try ImageFolderScan.read(path)
                let h = try bytes.withUnsafeBytes { try ImageDecoder().header($0, path: path) }
                let size = options.imageSize ?? ImageSize(height: h.height, width: h.width)
                shape = ImageShape(height: size.height, width: size.width, channels: h.channels)
            })
        let layout = ImageFolderCache.Layout(
            classNames: scan.classNames, trainCount: scan.train.count, testCount: scan.test.count, image: shape!)
        let work = Work(scan: scan, layout: layout, imageSize: options.imageSize)

        // 4. rank 0 creates the temporary file at full size; one that cannot be written beside the
        // data means decoding in memory, one that cannot be written under --cache-dir is an error.
        // Its name is the same for the node's members (they share the launcher's process as their
        // parent) and differs for another job on the same host.
        let temporary = cachePath + ".tmp-" + Self.hostName() + "-\(getppid())"
        var fd: Int32 = -1
        var fallback: String?
        var failure: Error?
        if team.rank == 0 {
            do {
                fd = try Self.create(temporary, bytes: layout.fileBytes)
            } catch let error as DataError {
                if options.cacheDirectory != nil {
                    failure = DataError(
                        path: cacheDirectory,
                        "cannot hold the decode cache of \(label) (\(error.problem)); give --cache-dir a writable directory")
                } else {
                    fallback = error.problem
                }
            } catch { failure = error }
        }
        try agree(failure)
        defer {
            if fd >= 0 { close(fd) }
        }
        guard try team.allSucceeded(fallback == nil) else {
            // every member decodes everything into memory
            var pixels = [UInt8](repeating: 0, count: layout.count * layout.image.count)
            try agree(attempt { try pixels.withUnsafeMutableBytes { try work.decode(0..<layout.count, into: .memory($0)) } })
            notes.append(
                "\(label): decoded \(layout.count) images in memory in \(Self.seconds(since: started)) s; the cache cannot be written beside the data (\(fallback ?? "rank 0 could not create it")): give --cache-dir DIR to decode only once"
            )
            var splits = pixels.withUnsafeBufferPointer {
                ImageFolderCache.splits(layout: layout, labels: scan.all.map(\.label), pixels: $0.baseAddress!, name: "folder")
            }
            splits.notes = notes
            return splits
        }

        // 5. the other members open the temporary file
        if team.rank != 0 {
            failure = attempt {
                fd = open(temporary, O_RDWR | O_CLOEXEC)
                if fd < 0 { throw DataError(path: temporary, "cannot be opened: \(FileReader.errnoText())") }
            }
        }
        do { try agree(failure) } catch {
            if team.rank == 0 { unlink(temporary) }
            throw error
        }

        // 6. each member decodes its share and writes it at its offsets
        failure = attempt {
            let mine = stride(from: team.rank, to: layout.count, by: team.size)
            try work.decode(mine, into: .file(fd, temporary))
        }
        do { try agree(failure) } catch {
            if team.rank == 0 { unlink(temporary) }
            throw error
        }

        // 7. rank 0 writes the header, labels and CRC, then renames into place
        if team.rank == 0 {
            failure = attempt { try Self.complete(fd, temporary, layout: layout, key: scan.key, labels: scan.all.map(\.label)) }
            if failure == nil && rename(temporary, cachePath) != 0 {
                failure = DataError(path: cachePath, "cannot be written: \(FileReader.errnoText())")
            }
            if failure != nil { unlink(temporary) } else { Self.removeOthers(like: scan.key, in: cacheDirectory) }
        }
        try agree(failure)

        // 8. every member reads the finished file through its descriptor
        var splits: DataSplits?
        try agree(
            attempt {
                let file = try MappedFile(fd: fd, path: cachePath)
                let contents = try ImageFolderCache.check(file.bytes, path: cachePath)
                splits = ImageFolderCache.splits(file.bytes, contents, name: "folder")
            })
        notes.append(
            "\(label): decoded \(layout.count) images (\(layout.image)) on \(team.size) rank\(team.size == 1 ? "" : "s") in \(Self.seconds(since: started)) s into the cache \(cachePath)"
        )
        splits!.notes = notes
        return splits!
    }

    /// A cache file checked against `key` and the scan, converted.
    static func read(_ path: String, key: ImageFolderCacheKey, scan: ImageFolderScan) throws -> DataSplits {
        let file = try MappedFile(path: path)
        let contents = try ImageFolderCache.check(file.bytes, path: path)
        guard contents.keyFNV == key.fnv, contents.keyCRC == key.crc, contents.layout.classNames == scan.classNames,
            contents.layout.trainCount == scan.train.count, contents.layout.testCount == scan.test.count,
            contents.labels == scan.all.map(\.label)
        else { throw DataError(path: path, "was made from other files (its key differs)") }
        return ImageFolderCache.splits(file.bytes, contents, name: "folder")
    }

    /// Deletes the caches of the same image size but other files in `directory`: each change of the
    /// data would otherwise leave a copy of the whole dataset behind.
    static func removeOthers(like key: ImageFolderCacheKey, in directory: String) {
        guard let dir = opendir(directory) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(key.namePrefix) && name.hasSuffix(".bin") && name != key.fileName {
                unlink(directory + "/" + name)
            }
        }
    }

    /// Creates `path` with `bytes` zero bytes; returns the descriptor. A temporary file of the same
    /// name means another job on this host is writing this cache, unless it is an hour old (left by
    /// a job that died), which is replaced.
    static func create(_ path: String, bytes: Int) throws -> Int32 {
        var fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        if fd < 0 && errno == EEXIST {
            var st = stat()
            let age = stat(path, &st) == 0 ? time(nil) - st.st_mtim.tv_sec : 0
            guard age > 3600 else {
                throw DataError(
                    path: path, "is being written by another job on this host (for \(age) s); the cache is not shared with it")
            }
            unlink(path)
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        }
        guard fd >= 0 else { throw DataError(path: path, "cannot be created: \(FileReader.errnoText())") }
        guard ftruncate(fd, off_t(bytes)) == 0 else {
            let reason = FileReader.errnoText()
            close(fd)
            unlink(path)
            throw DataError(path: path, "cannot be given its \(bytes) bytes: \(reason)")
        }
        return fd
    }

    /// Writes the header and labels, then the CRC-32 of everything before it (read back through a
    /// mapping: the pixels were written by every member).
    static func complete(_ fd: Int32, _ path: String, layout: ImageFolderCache.Layout, key: ImageFolderCacheKey, labels: [Int32])
        throws
    {
        try write(fd, ImageFolderCache.headerAndLabels(layout, key: key, labels: labels), at: 0, path)
        let file = try MappedFile(fd: fd, path: path)
        var sum = CRC32()
        sum.update(UnsafeRawBufferPointer(rebasing: file.bytes[0..<layout.crcOffset]))
        try write(fd, withUnsafeBytes(of: sum.value.littleEndian) { Array($0) }, at: layout.crcOffset, path)
    }

    static func write(_ fd: Int32, _ bytes: [UInt8], at offset: Int, _ path: String) throws {
        try bytes.withUnsafeBytes { try write(fd, $0, at: offset, path) }
    }

    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int, _ path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw DataError(path: path, "cannot be written: \(FileReader.errnoText())") }
            done += n
        }
    }

    static func hostName() -> String {
        var name = [CChar](repeating: 0, count: 256)
        guard gethostname(&name, name.count - 1) == 0 else { return "host" }
        return String(decoding: name.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }

    static func seconds(since start: Double) -> String {
        let s = now() - start
        return s < 10 ? String((s * 100).rounded() / 100) : String(Int(s.rounded()))
    }
}

/// Decoding files into their places: checks channels and sizes against the first image's.
private struct Work {
    enum Destination {
        case memory(UnsafeMutableRawBufferPointer)
        case file(Int32, String)
    }

    let scan: ImageFolderScan
    let layout: ImageFolderCache.Layout
    let imageSize: ImageSize?
    let decoder = ImageDecoder()

    init(scan: ImageFolderScan, layout: ImageFolderCache.Layout, imageSize: ImageSize?) {
        self.scan = scan
        self.layout = layout
        self.imageSize = imageSize
    }

    var firstPath: String { scan.directory + "/" + scan.all[0].path }

    static func channelText(_ c: Int) -> String { c == 1 ? "1 (grayscale)" : "\(c) (RGB)" }

    func decode<S: Sequence<Int>>(_ indices: S, into destination: Destination) throws {
        let all = scan.all
        let image = layout.image
        let target = ImageSize(height: image.height, width: image.width)
        var buffer = [UInt8](repeating: 0, count: image.count)
        for i in indices {
            let path = scan.directory + "/" + all[i].path
            let decoded = try decoder.decode(try ImageFolderScan.read(path), path: path)
            guard decoded.channels == image.channels else {
                throw DataError(
                    path: path,
                    "has \(Self.channelText(decoded.channels)) channels but the first image, \(firstPath), has \(Self.channelText(image.channels)); all images need the same channel count"
                )
            }
            guard imageSize != nil || (decoded.height == image.height && decoded.width == image.width) else {
                throw DataError(
                    path: path,
                    "is \(decoded.height)x\(decoded.width) (HxW) but the first image, \(firstPath), is \(image.height)x\(image.width); give --image-size HxW (e.g. --image-size \(image.height)x\(image.width)) to resize every image"
                )
            }
            switch destination {
            case let .memory(pixels):
                let offset = i * image.count
                ImageResize.resize(
                    decoded, to: target, into: UnsafeMutableRawBufferPointer(rebasing: pixels[offset..<(offset + image.count)]))
            case let .file(fd, filePath):
                buffer.withUnsafeMutableBytes { ImageResize.resize(decoded, to: target, into: $0) }
                try Loader.write(fd, buffer, at: layout.pixelOffset(ofSample: i), filePath)
            }
        }
    }
}
