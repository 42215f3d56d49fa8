#if canImport(Glibc)
    import Glibc
#endif
import TensorCore

/// The decode cache of an image folder (`--data folder:DIR`): every image decoded (and resized) once,
/// as bytes, so that later starts only map the file. Little-endian throughout:
/// ```
/// header   magic "ARIMGCAC", version u32, header bytes u32, key FNV-1a-64 u64, key CRC-32 u32,
///          height u32, width u32, channels u32, classes u32, train count u64, test count u64,
///          per class: name length u32 + UTF-8 name
/// labels   (train + test) x u32, train first
/// pixels   (train + test) x height*width*channels bytes (HWC), train first
/// crc      u32: CRC-32 of every byte before it
/// ```
/// The key (`ImageFolderCacheKey`) covers the file list, sizes, modification times, `--image-size`
/// and the format version; its hash also names the file. A file of the wrong size, with another
/// key, a bad CRC or inconsistent fields is never trusted: the loader rebuilds it.
public enum ImageFolderCache {
    public static let magic = Array("ARIMGCAC".utf8)
    public static let version: UInt32 = 1
    /// The fixed part of the header, before the class names.
    static let fixedHeaderBytes = 8 + 4 + 4 + 8 + 4 + 4 * 4 + 8 + 8
    /// Limits a parsed header must respect (a damaged file must not make us allocate wildly).
    static let maximumClasses = 1 << 20
    static let maximumNameBytes = 4096

    /// Where everything is, for a cache of these classes, counts and image shape.
    public struct Layout: Equatable, Sendable {
        public let classNames: [String]
        public let trainCount: Int
        public let testCount: Int
        public let image: ImageShape

        public init(classNames: [String], trainCount: Int, testCount: Int, image: ImageShape) {
            self.classNames = classNames
            self.trainCount = trainCount
            self.testCount = testCount
            self.image = image
        }

        public var count: Int { trainCount + testCount }
        public var headerBytes: Int { fixedHeaderBytes + classNames.reduce(0) { $0 + 4 + $1.utf8.count } }
        public var labelsOffset: Int { headerBytes }
        public var pixelsOffset: Int { labelsOffset + 4 * count }
        public var crcOffset: Int { pixelsOffset + count * image.count }
        public var fileBytes: Int { crcOffset + 4 }
        public func pixelOffset(ofSample i: Int) -> Int { pixelsOffset + i * image.count }
    }

    /// The header bytes followed by the labels: what is written at offset 0.
    static func headerAndLabels(_ layout: Layout, key: ImageFolderCacheKey, labels: [Int32]) -> [UInt8] {
        precondition(labels.count == layout.count, "cache: \(labels.count) labels for \(layout.count) samples")
        var b = magic
        func u32(_ v: Int) { withUnsafeBytes(of: UInt32(v).littleEndian) { b.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
        u32(Int(version))
        u32(layout.headerBytes)
        u64(key.fnv)
        u32(Int(key.crc))
        u32(layout.image.height)
        u32(layout.image.width)
        u32(layout.image.channels)
        u32(layout.classNames.count)
        u64(UInt64(layout.trainCount))
        u64(UInt64(layout.testCount))
        for name in layout.classNames {
            u32(name.utf8.count)
            b.append(contentsOf: name.utf8)
        }
        precondition(b.count == layout.headerBytes, "cache header is \(b.count) bytes, not \(layout.headerBytes)")
        for label in labels { u32(Int(label)) }
        return b
    }

    /// A checked cache: its layout, key and labels; the pixels stay where they are.
    public struct Contents {
        public let layout: Layout
        public let keyFNV: UInt64
        public let keyCRC: UInt32
        public let labels: [Int32]
    }

    /// Checks a whole cache file's bytes: magic, version, every field within its limits, the exact
    /// file size, the CRC, and every label among the classes.
    /// - Throws: `DataError` naming `path` and the first problem found.
    public static func check(_ bytes: UnsafeRawBufferPointer, path: String) throws -> Contents {
        func fail(_ problem: String) -> DataError { DataError(path: path, "is not a usable image cache: \(problem)") }
        guard bytes.count >= fixedHeaderBytes + 4 else {
            throw fail("it has \(bytes.count) bytes, fewer than the \(fixedHeaderBytes + 4) of an empty cache (cut short?)")
        }
        guard bytes.prefix(8).elementsEqual(magic) else { throw fail("it does not start with \"ARIMGCAC\"") }
        var at = 8
        func u32() -> Int {
            defer { at += 4 }
            return Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self)))
        }
        func u64() -> UInt64 {
            defer { at += 8 }
            return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self))
        }
        let fileVersion = u32()
        guard fileVersion == Int(version) else {
            throw fail("format version \(fileVersion); this build reads version \(version)")
        }
        let headerBytes = u32()
        let fnv = u64()
        let crc = UInt32(u32())
        let height = u32(), width = u32(), channels = u32(), classes = u32()
        let trainCount = u64(), testCount = u64()
        guard (1...ImageSize.maximumSide).contains(height), (1...ImageSize.maximumSide).contains(width),
            channels == 1 || channels == 3
        else {
            throw fail(
                "image shape \(height)x\(width)x\(channels); accepted are sides 1 to \(ImageSize.maximumSide), 1 or 3 channels")
        }
        guard (2...maximumClasses).contains(classes) else {
            throw fail("\(classes) classes; accepted are 2 to \(maximumClasses)")
        }
        guard headerBytes <= bytes.count - 4, headerBytes >= fixedHeaderBytes + 4 * classes else {
            throw fail("header of \(headerBytes) bytes does not fit the \(bytes.count)-byte file and \(classes) classes")
        }
        var names: [String] = []
        for _ in 0..<classes {
            guard at + 4 <= headerBytes else { throw fail("class names run past the header") }
            let n = u32()
            guard n >= 1, n <= maximumNameBytes, at + n <= headerBytes else {
                throw fail(
                    "a class name of \(n) bytes at offset \(at - 4); accepted are 1 to \(maximumNameBytes) within the header")
            }
            guard let name = String(validating: UnsafeRawBufferPointer(rebasing: bytes[at..<(at + n)]), as: UTF8.self) else {
                throw fail("class name at offset \(at) is not UTF-8")
            }
            names.append(name)
            at += n
        }
        guard at == headerBytes else { throw fail("header says \(headerBytes) bytes but its fields end at \(at)") }
        // counts: each at most the file size, so the products below cannot overflow
        guard trainCount >= 1, testCount >= 1, trainCount <= UInt64(bytes.count), testCount <= UInt64(bytes.count) else {
            throw fail("\(trainCount) train and \(testCount) test images; each split needs 1 to \(bytes.count)")
        }
        let layout = Layout(
            classNames: names, trainCount: Int(trainCount), testCount: Int(testCount),
            image: ImageShape(height: height, width: width, channels: channels))
        guard layout.fileBytes == bytes.count else {
            throw fail("it has \(bytes.count) bytes but its header describes \(layout.fileBytes) (cut short or extended?)")
        }
        var sum = CRC32()
        sum.update(UnsafeRawBufferPointer(rebasing: bytes[0..<layout.crcOffset]))
        let stored = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: layout.crcOffset, as: UInt32.self))
        guard sum.value == stored else {
            throw fail("its CRC-32 is \(CRC32.hex(sum.value)) but it stores \(CRC32.hex(stored)) (damaged)")
        }
        var labels = [Int32](repeating: 0, count: layout.count)
        at = layout.labelsOffset
        for i in 0..<layout.count {
            let label = u32()
            guard label < classes else { throw fail("sample \(i) has label \(label) but there are \(classes) classes") }
            labels[i] = Int32(label)
        }
        return Contents(layout: layout, keyFNV: fnv, keyCRC: crc, labels: labels)
    }

    /// The splits of checked cache bytes.
    static func splits(_ bytes: UnsafeRawBufferPointer, _ contents: Contents, name: String) -> DataSplits {
        let pixels = bytes.baseAddress!.advanced(by: contents.layout.pixelOffset(ofSample: 0)).assumingMemoryBound(to: UInt8.self)
        return splits(layout: contents.layout, labels: contents.labels, pixels: pixels, name: name)
    }

    /// The splits of decoded images (`pixels`: every sample's bytes, train first, HWC): pixels as
    /// Float byte/255, like the IDX reader. Used for the cache and for decoding in memory alike.
    static func splits(layout: Layout, labels: [Int32], pixels: UnsafePointer<UInt8>, name: String) -> DataSplits {
        let d = layout.image.count
        func dataset(_ split: String, _ range: Range<Int>) -> Dataset {
            let n = range.count
            let features = [Float](unsafeUninitializedCapacity: n * d) { out, initialized in
                let src = pixels + range.lowerBound * d
                for i in 0..<(n * d) { out[i] = Float(src[i]) / 255 }
                initialized = n * d
            }
            return Dataset(
                name: "\(name)/\(split)", features: features, labels: Array(labels[range]), dimension: d,
                classes: layout.classNames.count, image: layout.image, classNames: layout.classNames)
        }
        return DataSplits(
            train: dataset("train", 0..<layout.trainCount), test: dataset("test", layout.trainCount..<layout.count))
    }

    /// A cache file's bytes checked and converted, whatever key it has: what the fuzz target runs.
    /// - Throws: `DataError` naming `path` for anything `check` rejects.
    public static func parse(bytes: [UInt8], path: String) throws -> DataSplits {
        try bytes.withUnsafeBytes { try splits($0, check($0, path: path), name: "folder") }
    }
}

extension CRC32 {
    static func hex(_ value: UInt32) -> String {
        let h = String(value, radix: 16)
        return String(repeating: "0", count: 8 - h.count) + h
    }
}

/// What a cache must match: a hash of the format version, `--image-size`, and every file's path
/// relative to the folder, size and modification time (ns), in scan order. Two independent
/// hashes (FNV-1a 64 and CRC-32, 96 bits) make an accidental match of other data negligible.
public struct ImageFolderCacheKey: Equatable, Sendable {
    public private(set) var fnv: UInt64 = 0xcbf2_9ce4_8422_2325
    public private(set) var crc: UInt32 = 0
    private var crcState = CRC32()

    /// `--image-size` as the file name shows it: caches of one size replace each other.
    let sizeTag: String

    init(imageSize: ImageSize?) {
        sizeTag = imageSize?.description ?? "stored"
        add("autorate image cache v\(ImageFolderCache.version)\nimage-size \(imageSize?.description ?? "as stored")\n")
    }

    mutating func add(_ text: String) {
        var bytes = Array(text.utf8)
        for b in bytes {
            fnv = (fnv ^ UInt64(b)) &* 0x100_0000_01b3
        }
        crcState.update(bytes)
        crc = crcState.value
        bytes.removeAll()
    }

    mutating func add(file: String, size: Int64, modified: Int64) { add("\(file)\t\(size)\t\(modified)\n") }

    /// The cache's file name: `.autorate-cache-`, the image size, the FNV hash in 16 hex digits, `.bin`.
    public var fileName: String {
        let h = String(fnv, radix: 16)
        return namePrefix + String(repeating: "0", count: 16 - h.count) + h + ".bin"
    }

    /// What the names of this image size's caches start with.
    var namePrefix: String { ".autorate-cache-\(sizeTag)-" }

    public static func == (a: Self, b: Self) -> Bool { a.fnv == b.fnv && a.crc == b.crc }
}

/// A whole file mapped read-only (the one place the cache's memory mapping lives).
final class MappedFile {
    let bytes: UnsafeRawBufferPointer
    private let base: UnsafeMutableRawPointer?

    /// Maps the file open as `fd` (which may be closed afterwards).
    init(fd: Int32, path: String) throws {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw DataError(path: path, "cannot be examined: \(FileReader.errnoText())") }
        let size = Int(st.st_size)
        guard size > 0 else {
            base = nil
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw DataError(path: path, "cannot be mapped: \(FileReader.errnoText())") }
        base = p
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }

    convenience init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DataError(path: path, "cannot be opened: \(FileReader.errnoText())") }
        defer { close(fd) }
        try self.init(fd: fd, path: path)
    }

    deinit { if let base { munmap(base, bytes.count) } }
}
