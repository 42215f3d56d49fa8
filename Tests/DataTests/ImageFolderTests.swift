import CPNG
import CTurboJPEG
import Foundation
import XCTest

@testable import Data
import TensorCore

/// Writes PNG (libpng's simplified write API) and JPEG (TurboJPEG) files for the tests.
enum ImageWriter {
    /// A PNG of `pixels` (HWC bytes; 1 channel: gray, 3: RGB, 4: RGBA).
    static func png(_ pixels: [UInt8], height: Int, width: Int, channels: Int) -> [UInt8] {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = [
            1: UInt32(PNG_FORMAT_GRAY), 3: UInt32(PNG_FORMAT_RGB), 4: UInt32(PNG_FORMAT_RGB | PNG_FORMAT_FLAG_ALPHA),
        ][channels]!
        return write(&image, pixels, stride: width * channels, colormap: nil)
    }

    /// A palette PNG: `indices` (one byte per pixel) into `palette` (RGB triples).
    static func palettePNG(_ indices: [UInt8], height: Int, width: Int, palette: [UInt8]) -> [UInt8] {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = UInt32(PNG_FORMAT_RGB | PNG_FORMAT_FLAG_COLORMAP)
        image.colormap_entries = UInt32(palette.count / 3)
        return write(&image, indices, stride: width, colormap: palette)
    }

    private static func write(_ image: inout png_image, _ pixels: [UInt8], stride: Int, colormap: [UInt8]?) -> [UInt8] {
        var size = 0
        precondition(
            png_image_write_to_memory(&image, nil, &size, 0, pixels, Int32(stride), colormap) != 0, "libpng: cannot size")
        var out = [UInt8](repeating: 0, count: size)
        let ok = out.withUnsafeMutableBytes {
            png_image_write_to_memory(&image, $0.baseAddress, &size, 0, pixels, Int32(stride), colormap)
        }
        precondition(ok != 0, "libpng: cannot write")
        return Array(out.prefix(size))
    }

    /// A baseline JPEG, 4:4:4 (no chroma subsampling) or grayscale.
    static func jpeg(_ pixels: [UInt8], height: Int, width: Int, channels: Int, quality: Int32 = 100) -> [UInt8] {
        let handle = tjInitCompress()!
        defer { tjDestroy(handle) }
        var buffer: UnsafeMutablePointer<UInt8>? = nil
        var size: UInt = 0
        let format = channels == 1 ? TJPF_GRAY : TJPF_RGB
        let sampling = channels == 1 ? TJSAMP_GRAY : TJSAMP_444
        let status = tjCompress2(
            handle, pixels, Int32(width), 0, Int32(height), Int32(format.rawValue), &buffer, &size,
            Int32(sampling.rawValue), quality, TJFLAG_ACCURATEDCT)
        precondition(status == 0, String(cString: tjGetErrorStr2(handle)))
        defer { tjFree(buffer) }
        return Array(UnsafeBufferPointer(start: buffer, count: Int(size)))
    }

    /// A smooth test pattern (JPEG keeps it within a few levels).
    static func pattern(height: Int, width: Int, channels: Int, seed: Int = 0) -> [UInt8] {
        var p: [UInt8] = []
        for y in 0..<height {
            for x in 0..<width {
                for c in 0..<channels { p.append(UInt8((x * 7 + y * 5 + c * 40 + seed * 13) % 200 + 20)) }
            }
        }
        return p
    }
}

/// A temporary image folder.
final class Folder: @unchecked Sendable {  // `path` never changes
    let path: String
    init() {
        path = NSTemporaryDirectory() + "autorate-folder-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func write(_ relative: String, _ bytes: [UInt8]) {
        let full = path + "/" + relative
        try! FileManager.default.createDirectory(
            atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: full, contents: Foundation.Data(bytes))
    }

    func mkdir(_ relative: String) {
        try! FileManager.default.createDirectory(atPath: path + "/" + relative, withIntermediateDirectories: true)
    }

    /// A gray 4x3 PNG whose pixels are `value + index`.
    func gray(_ relative: String, _ value: Int, height: Int = 4, width: Int = 3) {
        write(
            relative,
            ImageWriter.png((0..<(height * width)).map { UInt8((value + $0) % 256) }, height: height, width: width, channels: 1))
    }

    /// train/{a,b,c} and test/{a,c}: 2+1+2 train and 1+1 test images of 4x3 gray.
    static func small() -> Folder {
        let f = Folder()
        f.gray("train/a/1.png", 10)
        f.gray("train/a/2.PNG", 20)
        f.gray("train/b/x.png", 30)
        f.gray("train/c/1.png", 40)
        f.gray("train/c/2.png", 50)
        f.gray("test/a/t.png", 60)
        f.gray("test/c/t.png", 70)
        return f
    }

    var cacheFiles: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasPrefix(".autorate-cache-") }.sorted()
    }
}

final class ImageFolderTests: XCTestCase {
    func load(_ f: Folder, _ options: DataLoadOptions = DataLoadOptions()) throws -> DataSplits {
        try ImageFolder.load(directory: f.path, options: options)
    }

    func assertError(
        _ body: @autoclosure () throws -> Any, path: String, contains parts: [String], file: StaticString = #filePath,
        line: UInt = #line
    ) {
        do {
            _ = try body()
            XCTFail("no error; expected one naming \(path)", file: file, line: line)
        } catch let error as DataError {
            XCTAssertEqual(error.path, path, "\(error)", file: file, line: line)
            for part in parts {
                XCTAssertTrue(error.problem.contains(part), "'\(part)' not in: \(error)", file: file, line: line)
            }
        } catch { XCTFail("\(error) is not a DataError", file: file, line: line) }
    }

    // MARK: decoding

    func testPNGGrayRGBPaletteAndAlphaDecodeExactly() throws {
        let d = ImageDecoder()
        let gray = ImageWriter.pattern(height: 5, width: 7, channels: 1)
        XCTAssertEqual(
            try d.decode(ImageWriter.png(gray, height: 5, width: 7, channels: 1), path: "g"),
            DecodedImage(height: 5, width: 7, channels: 1, pixels: gray))
        let rgb = ImageWriter.pattern(height: 3, width: 4, channels: 3)
        XCTAssertEqual(
            try d.decode(ImageWriter.png(rgb, height: 3, width: 4, channels: 3), path: "c"),
            DecodedImage(height: 3, width: 4, channels: 3, pixels: rgb))
        let palette: [UInt8] = [255, 0, 0, 0, 128, 0, 1, 2, 3]
        let indices: [UInt8] = [0, 1, 2, 2, 1, 0]
        let decoded = try d.decode(ImageWriter.palettePNG(indices, height: 2, width: 3, palette: palette), path: "p")
        XCTAssertEqual(decoded.channels, 3)
        XCTAssertEqual(decoded.pixels, indices.flatMap { palette[Int($0) * 3..<Int($0) * 3 + 3] })
        // RGBA: opaque pixels keep their colour, transparent ones become black
        let rgba: [UInt8] = [10, 20, 30, 255, 200, 100, 50, 0]
        let a = try d.decode(ImageWriter.png(rgba, height: 1, width: 2, channels: 4), path: "a")
        XCTAssertEqual(a, DecodedImage(height: 1, width: 2, channels: 3, pixels: [10, 20, 30, 0, 0, 0]))
        XCTAssertEqual(
            try d.header(
                ImageWriter.png(rgb, height: 3, width: 4, channels: 3).withUnsafeBytes { Array($0) }.withUnsafeBytes { $0 },
                path: "h"
            ).channels, 3)
    }

    /// JPEG is lossy: quality 100 without chroma subsampling keeps a smooth pattern within 3 levels
    /// (measured maximum 1-2: the DCT quantization step is 1, the colour conversion rounds twice).
    func testJPEGGrayAndRGBDecodeWithinTolerance() throws {
        let d = ImageDecoder()
        for channels in [1, 3] {
            let pixels = ImageWriter.pattern(height: 16, width: 24, channels: channels)
            let decoded = try d.decode(ImageWriter.jpeg(pixels, height: 16, width: 24, channels: channels), path: "j")
            XCTAssertEqual([decoded.height, decoded.width, decoded.channels], [16, 24, channels])
            let worst = zip(decoded.pixels, pixels).map { abs(Int($0) - Int($1)) }.max()!
            XCTAssertLessThanOrEqual(worst, 3, "channels \(channels)")
        }
    }

    func testCorruptAndTruncatedFilesAreRejectedWithTheDecodersReason() {
        let d = ImageDecoder()
        let png = ImageWriter.png(ImageWriter.pattern(height: 8, width: 8, channels: 1), height: 8, width: 8, channels: 1)
        assertError(
            try d.decode(Array(png.prefix(png.count - 20)), path: "t.png"), path: "t.png", contains: ["not a valid PNG (libpng:"])
        var flipped = png
        flipped[20] ^= 0xFF  // inside IHDR: its CRC fails
        assertError(try d.decode(flipped, path: "f.png"), path: "f.png", contains: ["not a valid PNG (libpng:"])
        let jpeg = ImageWriter.jpeg(ImageWriter.pattern(height: 16, width: 16, channels: 3), height: 16, width: 16, channels: 3)
        assertError(
            try d.decode(Array(jpeg.prefix(jpeg.count / 2)), path: "t.jpg"), path: "t.jpg",
            contains: ["not a valid JPEG (TurboJPEG:"])
        assertError(
            try d.decode(Array("hello".utf8), path: "x.png"), path: "x.png",
            contains: ["neither a PNG nor a JPEG", "68 65 6c 6c 6f"])
        assertError(try d.decode([], path: "e.png"), path: "e.png", contains: ["the file is empty"])
    }

    // MARK: resizing

    /// The 2-D filter written out directly in Double (no separable passes). Tolerance: 1 level, for
    /// sums that fall within rounding of a .5 tie in one order and not the other.
    func reference(_ image: DecodedImage, _ target: ImageSize) -> [UInt8] {
        let (sh, sw) = ImageResize.scaledSize(from: (image.height, image.width), to: target)
        let sy = Double(sh) / Double(image.height), sx = Double(sw) / Double(image.width)
        let ry = max(1, 1 / sy), rx = max(1, 1 / sx)
        let top = (sh - target.height) / 2, left = (sw - target.width) / 2
        var out: [UInt8] = []
        for y in 0..<target.height {
            for x in 0..<target.width {
                let cy = (Double(y + top) + 0.5) / sy, cx = (Double(x + left) + 0.5) / sx
                for c in 0..<image.channels {
                    var sum = 0.0, total = 0.0
                    for k in 0..<image.height {
                        for l in 0..<image.width {
                            let w = max(0, 1 - abs((Double(k) + 0.5 - cy) / ry)) * max(0, 1 - abs((Double(l) + 0.5 - cx) / rx))
                            sum += w * Double(image.pixels[(k * image.width + l) * image.channels + c])
                            total += w
                        }
                    }
                    out.append(UInt8((sum / total).rounded()))
                }
            }
        }
        return out
    }

    func testResizeMatchesTheDoubleReference() {
        let cases: [(Int, Int, Int, ImageSize)] = [
            (40, 30, 1, ImageSize(height: 28, width: 28)),  // down, crop the height
            (30, 40, 3, ImageSize(height: 28, width: 28)),  // down, crop the width
            (10, 7, 1, ImageSize(height: 16, width: 16)),  // up
            (20, 30, 3, ImageSize(height: 10, width: 12)),  // not square
            (9, 9, 1, ImageSize(height: 3, width: 3)),  // a 3x3 box average
        ]
        for (h, w, c, target) in cases {
            var pixels = ImageWriter.pattern(height: h, width: w, channels: c)
            for i in stride(from: 0, to: pixels.count, by: 7) { pixels[i] = 255 }  // some edges
            let image = DecodedImage(height: h, width: w, channels: c, pixels: pixels)
            let got = ImageResize.resized(image, to: target), want = reference(image, target)
            XCTAssertEqual(got.count, target.height * target.width * c)
            let worst = zip(got, want).map { abs(Int($0) - Int($1)) }.max()!
            XCTAssertLessThanOrEqual(worst, 1, "\(h)x\(w)x\(c) -> \(target)")
        }
        // a 3x3 block average, exactly
        let blocks = DecodedImage(height: 3, width: 3, channels: 1, pixels: [0, 9, 18, 27, 36, 45, 54, 63, 72])
        XCTAssertEqual(ImageResize.resized(blocks, to: ImageSize(height: 1, width: 1)), [36])
        XCTAssertEqual(ImageResize.scaledSize(from: (40, 30), to: ImageSize(height: 28, width: 28)).height, 37)
    }

    func testImageSizeArguments() {
        XCTAssertEqual(ImageSize(argument: "28x32"), ImageSize(height: 28, width: 32))
        XCTAssertEqual(ImageSize(argument: "32"), ImageSize(height: 32, width: 32))
        for bad in ["", "x", "28x", "x28", "0x4", "-3", "28x28x3", "28 x 28", "+5", "99999", "16385"] {
            XCTAssertNil(ImageSize(argument: bad), bad)
        }
    }

    // MARK: the folder

    func testLayoutClassesLabelsOrderAndSkippedFiles() throws {
        let f = Folder.small()
        f.write("train/a/notes.txt", Array("hi".utf8))
        f.write("train/b/.DS_Store", [0])
        f.write("train/README", [0])
        let splits = try load(f)
        XCTAssertEqual(splits.train.classNames, ["a", "b", "c"])
        XCTAssertEqual(splits.train.labels, [0, 0, 1, 2, 2])
        XCTAssertEqual(splits.test.labels, [0, 2])
        XCTAssertEqual(splits.train.image, ImageShape(height: 4, width: 3, channels: 1))
        XCTAssertEqual(splits.train.features[0], 10 / 255)
        XCTAssertEqual(splits.train.features[12], 20 / 255)  // 2.PNG: upper-case extension
        XCTAssertEqual(splits.test.features[12 + 5], 75 / 255)
        let skipped = try XCTUnwrap(splits.notes.first { $0.contains("skipped") })
        XCTAssertTrue(skipped.contains("skipped 3 files"), skipped)
        XCTAssertTrue(skipped.contains("(first: \(f.path)/train/README)"), skipped)
    }

    func testValIsTheTestSplitWhenThereIsNoTest() throws {
        let f = Folder()
        f.gray("train/x/1.png", 1)
        f.gray("train/y/1.png", 2)
        f.gray("val/y/1.png", 3)
        let splits = try load(f)
        XCTAssertEqual(splits.test.labels, [1])
    }

    func testBadLayoutsAreNamed() {
        let f = Folder()
        assertError(try load(f), path: f.path + "/train", contains: ["is missing", "DIR/train/CLASS"])
        f.gray("train/a/1.png", 1)
        assertError(try load(f), path: f.path + "/test", contains: ["is missing, and so is \(f.path)/val"])
        f.gray("test/a/1.png", 1)
        assertError(try load(f), path: f.path + "/train", contains: ["holds 1 class directory (a)", "at least 2"])
        f.mkdir("train/b")
        f.write("train/b/readme.md", [1])
        assertError(try load(f), path: f.path + "/train/b", contains: ["holds no .png, .jpg or .jpeg images"])
        f.gray("train/b/1.png", 1)
        f.gray("test/zebra/1.png", 1)
        assertError(try load(f), path: f.path + "/test/zebra", contains: ["does not have (its classes: a, b)"])
        assertError(
            try ImageFolder.load(directory: f.path + "/nothing"), path: f.path + "/nothing", contains: ["is not a directory"])
    }

    func testChannelAndSizeMismatchesNameTheFirstDifferentImage() throws {
        let f = Folder.small()
        f.write(
            "train/b/y.png",
            ImageWriter.png(ImageWriter.pattern(height: 4, width: 3, channels: 3), height: 4, width: 3, channels: 3))
        assertError(
            try load(f), path: f.path + "/train/b/y.png",
            contains: ["has 3 (RGB) channels but the first image, \(f.path)/train/a/1.png, has 1 (grayscale)"])
        try FileManager.default.removeItem(atPath: f.path + "/train/b/y.png")
        f.gray("train/c/3.png", 1, height: 5, width: 3)
        assertError(
            try load(f), path: f.path + "/train/c/3.png",
            contains: ["is 5x3 (HxW) but the first image, \(f.path)/train/a/1.png, is 4x3", "--image-size HxW"])
        // --image-size resizes all of them
        let splits = try load(f, DataLoadOptions(imageSize: ImageSize(height: 2, width: 2)))
        XCTAssertEqual(splits.train.image, ImageShape(height: 2, width: 2, channels: 1))
        XCTAssertEqual(splits.train.count, 6)
    }

    func testCorruptImageInTheFolderIsNamed() {
        let f = Folder.small()
        f.write("train/b/x.png", Array(ImageWriter.png([1, 2, 3, 4], height: 2, width: 2, channels: 1).prefix(30)))
        assertError(try load(f), path: f.path + "/train/b/x.png", contains: ["not a valid PNG (libpng:"])
        XCTAssertEqual(f.cacheFiles, [], "a failed decode leaves no cache and no temporary file")
    }

    func testJPEGAndPNGMixInOneFolder() throws {
        let f = Folder()
        let rgb = ImageWriter.pattern(height: 8, width: 8, channels: 3)
        f.write("train/a/1.jpg", ImageWriter.jpeg(rgb, height: 8, width: 8, channels: 3))
        f.write("train/b/1.JPEG", ImageWriter.jpeg(rgb, height: 8, width: 8, channels: 3))
        f.write("test/b/1.png", ImageWriter.png(rgb, height: 8, width: 8, channels: 3))
        let splits = try load(f)
        XCTAssertEqual(splits.train.image, ImageShape(height: 8, width: 8, channels: 3))
        XCTAssertEqual(splits.test.features, rgb.map { Float($0) / 255 })
    }

    // MARK: the cache

    func testCacheIsBuiltThenReusedWithoutDecoding() throws {
        let f = Folder.small()
        let first = try load(f)
        XCTAssertTrue(first.notes.contains { $0.contains("decoded 7 images") }, "\(first.notes)")
        XCTAssertEqual(f.cacheFiles.count, 1)
        // make an image undecodable but keep its size and time: a reused cache never opens it
        let image = f.path + "/train/b/x.png"
        var st = stat()
        XCTAssertEqual(stat(image, &st), 0)
        var bytes = Array(FileManager.default.contents(atPath: image)!)
        for i in 8..<bytes.count { bytes[i] = 0 }
        _ = FileManager.default.createFile(atPath: image, contents: Foundation.Data(bytes))
        XCTAssertEqual(utimensat(AT_FDCWD, image, [st.st_mtim, st.st_mtim], 0), 0)
        let second = try load(f)
        XCTAssertTrue(second.notes.contains { $0.contains("7 images read from the cache") }, "\(second.notes)")
        XCTAssertEqual(second.train.features, first.train.features)
        XCTAssertEqual(second.test.labels, first.test.labels)
        XCTAssertEqual(second.train.classNames, ["a", "b", "c"])
    }

    func testCacheKeyChangesWithTheFilesAndTheImageSize() throws {
        let f = Folder.small()
        _ = try load(f)
        f.gray("train/c/2.png", 99)  // new content, size and time
        let changed = try load(f)
        XCTAssertTrue(changed.notes.contains { $0.contains("decoded 7 images") })
        XCTAssertEqual(changed.train.features[4 * 12], 99 / 255)
        XCTAssertEqual(f.cacheFiles.count, 1, "a new key: the new cache replaces the old one")
        _ = try load(f, DataLoadOptions(imageSize: ImageSize(height: 2, width: 2)))
        XCTAssertEqual(f.cacheFiles.count, 2, "another image size keeps its own cache")
        // only the time changes
        var st = stat()
        stat(f.path + "/test/a/t.png", &st)
        st.st_mtim.tv_nsec = (st.st_mtim.tv_nsec + 1) % 1_000_000_000
        XCTAssertEqual(utimensat(AT_FDCWD, f.path + "/test/a/t.png", [st.st_mtim, st.st_mtim], 0), 0)
        XCTAssertTrue(try load(f).notes.contains { $0.contains("decoded 7 images") })
    }

    func testDamagedCachesAreRebuiltNeverTrusted() throws {
        let f = Folder.small()
        let good = try load(f)
        let path = f.path + "/" + f.cacheFiles[0]
        let original = Array(FileManager.default.contents(atPath: path)!)
        let damages: [(String, [UInt8])] = [
            ("cut short", Array(original.prefix(original.count - 10))),
            ("empty", []),
            (
                "a pixel byte flipped",
                {
                    var b = original; b[b.count - 20] ^= 0x01; return b
                }()
            ),
            (
                "a label flipped",
                {
                    var b = original; b[ImageFolderCache.fixedHeaderBytes + 12 + 4] ^= 0x01; return b
                }()
            ),
            ("extended", original + [0]),
        ]
        for (what, bytes) in damages {
            _ = FileManager.default.createFile(atPath: path, contents: Foundation.Data(bytes))
            let splits = try load(f)
            XCTAssertTrue(splits.notes.contains { $0.contains("is not used and is rebuilt") }, "\(what): \(splits.notes)")
            XCTAssertEqual(splits.train.features, good.train.features, what)
            XCTAssertEqual(splits.train.labels, good.train.labels, what)
            XCTAssertEqual(Array(FileManager.default.contents(atPath: path)!), original, "\(what): rebuilt identically")
        }
    }

    func testCacheFormatRoundTripAndChecks() throws {
        let f = Folder.small()
        let splits = try load(f)
        let bytes = Array(FileManager.default.contents(atPath: f.path + "/" + f.cacheFiles[0])!)
        let parsed = try ImageFolderCache.parse(bytes: bytes, path: "c")
        XCTAssertEqual(parsed.train.features, splits.train.features)
        XCTAssertEqual(parsed.test.labels, splits.test.labels)
        XCTAssertEqual(parsed.train.classNames, ["a", "b", "c"])
        assertError(try ImageFolderCache.parse(bytes: Array(bytes.prefix(30)), path: "c"), path: "c", contains: ["cut short"])
        var other = bytes
        other[0] = 0
        assertError(try ImageFolderCache.parse(bytes: other, path: "c"), path: "c", contains: ["does not start with"])
        other = bytes
        other[other.count - 1] ^= 0x80
        assertError(try ImageFolderCache.parse(bytes: other, path: "c"), path: "c", contains: ["CRC-32", "damaged"])
    }

    func testCacheDirectoryOption() throws {
        let f = Folder.small()
        let cache = Folder()
        let splits = try load(f, DataLoadOptions(cacheDirectory: cache.path))
        XCTAssertEqual(f.cacheFiles, [])
        XCTAssertEqual(cache.cacheFiles.count, 1)
        XCTAssertTrue(
            try load(f, DataLoadOptions(cacheDirectory: cache.path)).notes.contains { $0.contains("read from the cache") })
        XCTAssertEqual(splits.train.count, 5)
        assertError(
            try load(f, DataLoadOptions(cacheDirectory: cache.path + "/missing")), path: cache.path + "/missing",
            contains: ["cannot hold the decode cache", "--cache-dir"])
    }

    /// A cache that cannot be written beside the data (a read-only folder; here, as root ignores
    /// permissions, a directory in the way of the temporary file) means decoding in memory, with a note.
    func testUnwritableDataDecodesInMemoryWithANote() throws {
        let f = Folder.small()
        let name = try ImageFolderScan(directory: f.path, imageSize: nil).key.fileName
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        f.mkdir(name + ".tmp-" + String(cString: host) + "-\(getppid())")
        let splits = try load(f)
        XCTAssertTrue(
            splits.notes.contains { $0.contains("decoded 7 images in memory") && $0.contains("give --cache-dir") },
            "\(splits.notes)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: f.path + "/" + name))
        XCTAssertEqual(splits.train.labels, [0, 0, 1, 2, 2])
        XCTAssertEqual(splits.train.features[12], 20 / 255)
    }

    // MARK: a team of two

    func testTwoMemberTeamBuildsTheSameCacheAsOneRank() throws {
        let f = Folder.small()
        let solo = try load(f)
        let path = f.path + "/" + f.cacheFiles[0]
        let soloBytes = FileManager.default.contents(atPath: path)!
        try FileManager.default.removeItem(atPath: path)
        let results = runTeam(2) { team in try ImageFolder.load(directory: f.path, options: DataLoadOptions(team: team)) }
        for result in results {
            let splits = try result.get()
            XCTAssertEqual(splits.train.features, solo.train.features)
            XCTAssertTrue(splits.notes.contains { $0.contains("on 2 ranks") }, "\(splits.notes)")
        }
        XCTAssertEqual(FileManager.default.contents(atPath: path), soloBytes)
        // and both reuse it
        for result in runTeam(2, { team in try ImageFolder.load(directory: f.path, options: DataLoadOptions(team: team)) }) {
            XCTAssertTrue(try result.get().notes.contains { $0.contains("read from the cache") })
        }
    }

    func testAFailingMemberStopsTheWholeTeam() throws {
        let f = Folder.small()
        // index 3 (train/c/1.png) is rank 1's share
        f.write("train/c/1.png", Array("not an image".utf8))
        let results = runTeam(2) { team in try ImageFolder.load(directory: f.path, options: DataLoadOptions(team: team)) }
        assertError(try results[1].get(), path: f.path + "/train/c/1.png", contains: ["neither a PNG nor a JPEG"])
        assertError(try results[0].get(), path: f.path, contains: ["another rank of this node failed", "rank 0"])
        XCTAssertEqual(f.cacheFiles, [], "no cache, no temporary file left")
        XCTAssertEqual(teamCalls[0], teamCalls[1], "every member made the same number of team calls")
    }

    private var teamCalls: [Int] = []

    /// Runs `body` on `size` threads, one per member of a simulated team.
    func runTeam(_ size: Int, _ body: @escaping @Sendable (DecodeTeam) throws -> DataSplits) -> [Result<DataSplits, Error>] {
        let shared = ThreadTeam.Shared(size: size)
        let teams = (0..<size).map { ThreadTeam(rank: $0, shared: shared) }
        let box = ResultBox(size)
        let group = DispatchGroup()
        for r in 0..<size {
            group.enter()
            let team = teams[r]
            Thread {
                box.set(r, Result { try body(team) })
                group.leave()
            }.start()
        }
        group.wait()
        teamCalls = teams.map(\.calls)
        return box.results.map { $0! }
    }
}

final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var results: [Result<DataSplits, Error>?]
    init(_ n: Int) { results = Array(repeating: nil, count: n) }
    func set(_ i: Int, _ r: Result<DataSplits, Error>) { lock.withLock { results[i] = r } }
}

/// A simulated node: members are threads; `allSucceeded` is a barrier that ANDs the flags.
final class ThreadTeam: DecodeTeam, @unchecked Sendable {
    final class Shared: @unchecked Sendable {
        let size: Int
        let condition = NSCondition()
        var arrived = 0
        var generation = 0
        var all = true
        var result = true
        init(size: Int) { self.size = size }
    }
    let rank: Int
    let shared: Shared
    var size: Int { shared.size }
    private(set) var calls = 0

    init(rank: Int, shared: Shared) {
        self.rank = rank
        self.shared = shared
    }

    func allSucceeded(_ ok: Bool) throws -> Bool {
        calls += 1
        let s = shared
        s.condition.lock()
        defer { s.condition.unlock() }
        let generation = s.generation
        s.all = s.all && ok
        s.arrived += 1
        if s.arrived == s.size {
            s.result = s.all
            s.all = true
            s.arrived = 0
            s.generation += 1
            s.condition.broadcast()
            return s.result
        }
        while s.generation == generation { s.condition.wait() }
        return s.result
    }
}
