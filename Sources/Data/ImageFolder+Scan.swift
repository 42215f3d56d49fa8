#if canImport(Glibc)
    import Glibc
#endif

/// The files of an image folder in load order: class by class (sorted names), files sorted by name.
struct ImageFolderScan {
    struct Entry {
        /// Relative to the folder, e.g. `train/cat/001.png`.
        let path: String
        let label: Int32
        let size: Int64
        let modified: Int64
    }

    static let extensions = [".png", ".jpg", ".jpeg"]
    static let layoutText =
        "--data folder:DIR needs DIR/train/CLASS/*.png|*.jpg|*.jpeg and DIR/test/CLASS/... (or DIR/val/CLASS/...)"

    let directory: String
    let classNames: [String]
    let train: [Entry]
    let test: [Entry]
    var all: [Entry] { train + test }
    private(set) var skipped = 0
    private(set) var firstSkipped: String?
    private(set) var key: ImageFolderCacheKey

    /// Lists `directory` (same sorted list on every rank) and checks the layout.
    /// - Throws: `DataError` for a missing train or test/val directory, fewer than 2 classes, an
    ///   empty class directory, or a test class that train does not have.
    init(directory: String, imageSize: ImageSize?) throws {
        self.directory = directory
        guard FileReader.isDirectory(directory) else {
            throw DataError(path: directory, "is not a directory; \(Self.layoutText)")
        }
        let trainDir = directory + "/train"
        guard try FileReader.exists(trainDir), FileReader.isDirectory(trainDir) else {
            throw DataError(path: trainDir, "is missing; \(Self.layoutText)")
        }
        var testSplit = "test"
        if !FileReader.isDirectory(directory + "/test") {
            guard FileReader.isDirectory(directory + "/val") else {
                throw DataError(path: directory + "/test", "is missing, and so is \(directory)/val; \(Self.layoutText)")
            }
            testSplit = "val"
        }
        key = ImageFolderCacheKey(imageSize: imageSize)
        var skipped = 0
        var firstSkipped: String?
        func skip(_ path: String) {
            skipped += 1
            if firstSkipped == nil { firstSkipped = path }
        }
        func classDirectories(_ split: String) throws -> [String] {
            var names: [String] = []
            for name in try Self.list(directory + "/" + split) {
                let path = directory + "/" + split + "/" + name
                if !name.hasPrefix("."), Self.status(path)?.isDirectory == true { names.append(name) } else { skip(path) }
            }
            return names
        }
        let classNames = try classDirectories("train")
        guard classNames.count >= 2 else {
            throw DataError(
                path: trainDir,
                "holds \(classNames.count) class director\(classNames.count == 1 ? "y" : "ies")\(classNames.isEmpty ? "" : " (\(classNames[0]))"); a classifier needs at least 2 (one directory of images per class)"
            )
        }
        func entries(_ split: String, _ classes: [String]) throws -> [Entry] {
            var result: [Entry] = []
            for name in classes {
                let classDir = directory + "/" + split + "/" + name
                guard let label = classNames.firstIndex(of: name) else {
                    throw DataError(
                        path: classDir,
                        "is a class that \(trainDir) does not have (its classes: \(classNames.joined(separator: ", "))); the \(split) classes must be among train's"
                    )
                }
                let before = result.count
                for file in try Self.list(classDir) {
                    let relative = split + "/" + name + "/" + file
                    let lower = file.lowercased()
                    guard !file.hasPrefix("."), Self.extensions.contains(where: { lower.hasSuffix($0) }),
                        let st = Self.status(directory + "/" + relative), st.isRegular
                    else {
                        skip(directory + "/" + relative)
                        continue
                    }
                    result.append(Entry(path: relative, label: Int32(label), size: st.size, modified: st.modified))
                }
                guard result.count > before else {
                    throw DataError(
                        path: classDir,
                        "holds no .png, .jpg or .jpeg images; every class directory needs at least one (or remove the directory)")
                }
            }
            return result
        }
        train = try entries("train", classNames)
        test = try entries(testSplit, try classDirectories(testSplit))
        guard !test.isEmpty else {
            throw DataError(
                path: directory + "/" + testSplit, "holds no class directories; the test split needs at least one image")
        }
        for e in train + test { key.add(file: e.path, size: e.size, modified: e.modified) }
        self.classNames = classNames
        self.skipped = skipped
        self.firstSkipped = firstSkipped
    }

    /// The note on skipped files, if any were skipped.
    var skippedNote: String? {
        guard let firstSkipped else { return nil }
        return
            "folder:\(directory): skipped \(skipped) file\(skipped == 1 ? "" : "s") that \(skipped == 1 ? "is" : "are") not .png/.jpg/.jpeg images (or are hidden) (first: \(firstSkipped))"
    }

    /// The entry names of a directory, `.` and `..` excluded, sorted by their UTF-8 bytes.
    static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw DataError(path: path, "cannot be listed: \(FileReader.errnoText())") }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        // ASCII names: String's `<` is byte order, and much faster than comparing UTF-8 views
        if names.allSatisfy({ $0.utf8.allSatisfy { $0 < 0x80 } }) { return names.sorted() }
        return names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }

    /// stat(2) of `path` (symbolic links followed); nil when it cannot be examined.
    static func status(_ path: String) -> (isDirectory: Bool, isRegular: Bool, size: Int64, modified: Int64)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        let type = st.st_mode & S_IFMT
        return (
            type == S_IFDIR, type == S_IFREG, Int64(st.st_size),
            Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        )
    }

    /// A whole file's bytes (one allocation of its size).
    static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DataError(path: path, "cannot be opened: \(FileReader.errnoText())") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw DataError(path: path, "cannot be examined: \(FileReader.errnoText())") }
        let size = Int(st.st_size)
        var failure: String?
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            while initialized < size {
                let n = Glibc.read(fd, buffer.baseAddress! + initialized, size - initialized)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    failure = n < 0 ? FileReader.errnoText() : "it ended after \(initialized) of \(size) bytes"
                    break
                }
                initialized += n
            }
        }
        if let failure { throw DataError(path: path, "cannot be read: \(failure)") }
        return bytes
    }
}
