import TensorCore

/// The MNIST IDX format (also Fashion-MNIST): four files in one directory, plain or `.gz`.
/// ```
/// images: magic 0x00000803, count, rows, cols (big-endian UInt32), then count*rows*cols bytes
/// labels: magic 0x00000801, count, then count bytes in 0...9
/// ```
public enum MNIST {
    public static let fileNames = (
        trainImages: "train-images-idx3-ubyte", trainLabels: "train-labels-idx1-ubyte",
        testImages: "t10k-images-idx3-ubyte", testLabels: "t10k-labels-idx1-ubyte"
    )
    public static let classes = 10

    /// Loads both splits from `directory`, pixels scaled to [0, 1] (standardize afterwards).
    /// - Throws: `DataError` naming the file and what is wrong with it.
    public static func load(directory: String) throws -> DataSplits {
        try load(directory: directory, dataset: "mnist")
    }

    /// `dataset` ("mnist" or "fashion-mnist") names the splits and the `--data` form in messages.
    static func load(directory: String, dataset: String) throws -> DataSplits {
        guard FileReader.isDirectory(directory) else {
            throw DataError(
                path: directory,
                "is not a directory; --data \(dataset):DIR needs a directory holding \(fileNames.trainImages), \(fileNames.trainLabels), \(fileNames.testImages) and \(fileNames.testLabels) (optionally .gz)"
            )
        }
        let train = try split(directory, fileNames.trainImages, fileNames.trainLabels, "\(dataset)/train")
        let test = try split(directory, fileNames.testImages, fileNames.testLabels, "\(dataset)/test")
        guard train.image == test.image else {
            throw DataError(
                path: directory,
                "train images are \(train.image!) (rows x columns x channels) but test images \(test.image!); both splits need the same size"
            )
        }
        return DataSplits(train: train, test: test)
    }

    static func split(_ directory: String, _ imagesName: String, _ labelsName: String, _ name: String) throws -> Dataset {
        let imagesPath = try locate(directory, imagesName)
        let labelsPath = try locate(directory, labelsName)
        let (images, count, image) = try readImages(imagesPath)
        let labels = try readLabels(labelsPath)
        guard labels.count == count else {
            throw DataError(
                path: labelsPath, "holds \(labels.count) labels but \(imagesPath) holds \(count) images; the counts must match")
        }
        return Dataset(
            name: name, features: images, labels: labels, dimension: image.count, classes: classes, image: image)
    }

    static func locate(_ directory: String, _ name: String) throws -> String {
        for candidate in ["\(directory)/\(name)", "\(directory)/\(name).gz"] where try FileReader.exists(candidate) {
            return candidate
        }
        throw DataError(path: "\(directory)/\(name)", "is missing (looked for it and \(name).gz)")
    }

    static func readImages(_ path: String) throws -> ([Float], Int, ImageShape) {
        try images(FileReader.read(path), path)
    }

    /// An IDX image file's bytes as stored on disk (plain or gzip-compressed), checked as `load`
    /// checks the file at `path`: pixels scaled to [0, 1], the image count and shape.
    /// - Throws: `DataError` naming `path` and what is wrong.
    public static func parseImages(bytes: [UInt8], path: String) throws -> (features: [Float], count: Int, image: ImageShape) {
        try images(FileReader.decompressed(bytes, path: path), path)
    }

    /// An IDX label file's bytes as stored on disk (plain or gzip-compressed), checked as `load`
    /// checks the file at `path`. - Throws: `DataError` naming `path` and what is wrong.
    public static func parseLabels(bytes: [UInt8], path: String) throws -> [Int32] {
        try labels(FileReader.decompressed(bytes, path: path), path)
    }

    static func images(_ bytes: [UInt8], _ path: String) throws -> ([Float], Int, ImageShape) {
        let sizes = try checkIDX(bytes, path, magic: 0x0803, dimensions: 3, kind: "image")
        let count = sizes[0], rows = sizes[1], cols = sizes[2]
        guard count > 0 else { throw DataError(path: path, "holds no images; a split needs at least one sample") }
        guard rows > 0 && cols > 0 && rows <= 4096 && cols <= 4096 else {
            throw DataError(path: path, "declares images of \(rows)x\(cols) pixels; expected sizes between 1 and 4096")
        }
        try checkLength(bytes, path, header: 16, payload: count * rows * cols, declared: "\(count) images of \(rows)x\(cols)")
        var features = [Float](repeating: 0, count: count * rows * cols)
        for i in 0..<features.count { features[i] = Float(bytes[16 + i]) / 255 }
        return (features, count, ImageShape(height: rows, width: cols, channels: 1))
    }

    static func readLabels(_ path: String) throws -> [Int32] {
        try labels(FileReader.read(path), path)
    }

    static func labels(_ bytes: [UInt8], _ path: String) throws -> [Int32] {
        let sizes = try checkIDX(bytes, path, magic: 0x0801, dimensions: 1, kind: "label")
        let count = sizes[0]
        try checkLength(bytes, path, header: 8, payload: count, declared: "\(count) labels")
        var labels = [Int32](repeating: 0, count: count)
        for i in 0..<count {
            let label = bytes[8 + i]
            guard label < classes else {
                throw DataError(path: path, "label \(label) at index \(i) is outside 0...\(classes - 1)")
            }
            labels[i] = Int32(label)
        }
        return labels
    }

    /// Checks an IDX file's header size and magic number; returns the `dimensions` sizes that follow it.
    static func checkIDX(_ bytes: [UInt8], _ path: String, magic: UInt32, dimensions: Int, kind: String) throws -> [Int] {
        let header = 4 + 4 * dimensions
        guard bytes.count >= header else {
            throw DataError(path: path, "has \(bytes.count) bytes; an IDX \(kind) file has a \(header)-byte header")
        }
        let found = bigEndian(bytes, 0)
        guard found == magic else {
            let expected = String(magic, radix: 16)
            throw DataError(
                path: path,
                "has magic number 0x\(String(found, radix: 16)); IDX \(kind) files start with 0x\(String(repeating: "0", count: 8 - expected.count))\(expected)"
            )
        }
        return (0..<dimensions).map { Int(bigEndian(bytes, 4 + 4 * $0)) }
    }

    /// Checks that the file is exactly its header plus the payload its header declares.
    static func checkLength(_ bytes: [UInt8], _ path: String, header: Int, payload: Int, declared: String) throws {
        guard bytes.count == header + payload else {
            throw DataError(
                path: path,
                "has \(bytes.count) bytes but its header (\(declared)) needs \(header + payload); the file is truncated or corrupt"
            )
        }
    }

    static func bigEndian(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) << 24 | UInt32(b[at + 1]) << 16 | UInt32(b[at + 2]) << 8 | UInt32(b[at + 3])
    }
}

/// Fashion-MNIST: Zalando's drop-in replacement for MNIST (same IDX format, file names and sizes),
/// 28x28 grey images of 10 kinds of clothing: T-shirt/top, trouser, pullover, dress, coat, sandal,
/// shirt, sneaker, bag, ankle boot. Harder than the digits.
public enum FashionMNIST {
    /// Loads both splits from `directory`, pixels scaled to [0, 1] (standardize afterwards).
    /// - Throws: `DataError` naming the file and what is wrong with it.
    public static func load(directory: String) throws -> DataSplits {
        try MNIST.load(directory: directory, dataset: "fashion-mnist")
    }
}

extension FileReader {
    /// File bytes as `read` returns them: inflated when they start with the gzip magic bytes.
    static func decompressed(_ bytes: [UInt8], path: String) throws -> [UInt8] {
        if bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B { return try gunzip(bytes, path: path) }
        return bytes
    }
}
