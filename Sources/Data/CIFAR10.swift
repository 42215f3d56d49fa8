import TensorCore

/// The CIFAR-10 binary version (`cifar-10-binary.tar.gz`): `data_batch_1.bin` ... `data_batch_5.bin`
/// (training, in that order) and `test_batch.bin`. Each record is one label byte (0...9: airplane,
/// automobile, bird, cat, deer, dog, frog, horse, ship, truck) and 3072 pixel bytes: the 32x32 red
/// plane, then green, then blue, each row-major.
public enum CIFAR10 {
    public static let trainFiles = (1...5).map { "data_batch_\($0).bin" }
    public static let testFile = "test_batch.bin"
    /// What the official tarball unpacks to; used when DIR itself holds no batches.
    public static let tarballDirectory = "cifar-10-batches-bin"
    public static let image = ImageShape(height: 32, width: 32, channels: 3)
    public static let classes = 10
    public static let recordSize = 1 + 3072

    /// Loads both splits from `directory` (or its `cifar-10-batches-bin`), pixels as HWC Floats in
    /// [0, 1] (standardize afterwards).
    /// - Throws: `DataError` naming the file and what is wrong with it.
    public static func load(directory: String) throws -> DataSplits {
        let expected = "\(trainFiles.joined(separator: ", ")) and \(testFile)"
        guard FileReader.isDirectory(directory) else {
            throw DataError(
                path: directory,
                "is not a directory; --data cifar10:DIR needs a directory holding \(expected) (the binary version, cifar-10-binary.tar.gz), or its \(tarballDirectory) subdirectory"
            )
        }
        var root = directory
        if !(try FileReader.exists("\(directory)/\(trainFiles[0])")) && FileReader.isDirectory("\(directory)/\(tarballDirectory)")
        {
            root = "\(directory)/\(tarballDirectory)"
        }
        for name in trainFiles + [testFile] where !(try FileReader.exists("\(root)/\(name)")) {
            throw DataError(
                path: "\(root)/\(name)",
                "is missing; --data cifar10:DIR needs \(expected) in DIR or in DIR/\(tarballDirectory) (the binary version, cifar-10-binary.tar.gz, not the Python or MATLAB one)"
            )
        }
        let train = try split(trainFiles.map { "\(root)/\($0)" }, name: "cifar10/train")
        let test = try split(["\(root)/\(testFile)"], name: "cifar10/test")
        return DataSplits(train: train, test: test)
    }

    /// Reads and checks every file first, then converts all records into one array.
    static func split(_ paths: [String], name: String) throws -> Dataset {
        try dataset(paths.map { path in (try FileReader.read(path), path) }, name: name)
    }

    /// Batch files' bytes as stored on disk (plain, or gzip-compressed as `load` also accepts), in
    /// order, checked and converted as `load` does: one dataset named `name`.
    /// - Throws: `DataError` naming the path of the first bad batch and what is wrong.
    public static func parseBatches(_ batches: [(bytes: [UInt8], path: String)], name: String) throws -> Dataset {
        try dataset(batches.map { (try FileReader.decompressed($0.bytes, path: $0.path), $0.path) }, name: name)
    }

    static func dataset(_ batches: [([UInt8], String)], name: String) throws -> Dataset {
        let files = try batches.map { bytes, path in
            try check(bytes, path: path)
            return bytes
        }
        let count = files.reduce(0) { $0 + $1.count / recordSize }
        var labels = [Int32](repeating: 0, count: count)
        // Uninitialized: zero-filling 600 MB first would cost more than the conversion itself.
        let features = [Float](unsafeUninitializedCapacity: count * image.count) { out, initialized in
            var first = 0
            for bytes in files {
                let records = bytes.count / recordSize
                bytes.withUnsafeBufferPointer { b in
                    for r in 0..<records {
                        labels[first + r] = Int32(b[r * recordSize])
                        convert(b.baseAddress! + r * recordSize + 1, into: out.baseAddress! + (first + r) * image.count)
                    }
                }
                first += records
            }
            initialized = count * image.count
        }
        return Dataset(
            name: name, features: features, labels: labels, dimension: image.count, classes: classes, image: image)
    }

    static func check(_ bytes: [UInt8], path: String) throws {
        guard !bytes.isEmpty && bytes.count % recordSize == 0 else {
            throw DataError(
                path: path,
                "has \(bytes.count) bytes, which is not a positive multiple of the \(recordSize)-byte record (1 label byte + 3072 pixel bytes; remainder \(bytes.count % recordSize)); the file is empty, truncated or not a CIFAR-10 binary batch"
            )
        }
        for r in 0..<(bytes.count / recordSize) where bytes[r * recordSize] >= classes {
            throw DataError(path: path, "record \(r) has label \(bytes[r * recordSize]); accepted labels are 0...\(classes - 1)")
        }
    }

    /// One record's planes (R, G, B; each row-major) to interleaved HWC values in [0, 1]. Pixel by
    /// pixel, so that the output is written once and in order.
    @inline(__always)
    static func convert(_ planes: UnsafePointer<UInt8>, into hwc: UnsafeMutablePointer<Float>) {
        let red = planes, green = planes + 1024, blue = planes + 2048
        for p in 0..<1024 {
            hwc[3 * p] = Float(red[p]) / 255
            hwc[3 * p + 1] = Float(green[p]) / 255
            hwc[3 * p + 2] = Float(blue[p]) / 255
        }
    }
}
