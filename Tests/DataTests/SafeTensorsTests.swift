import Data
import Foundation
import XCTest

final class SafeTensorsTests: XCTestCase {
    /// A file from a header text and data bytes: the 8-byte little-endian length, the header, the data.
    static func file(header: String, data: [UInt8] = []) -> [UInt8] {
        let json = Array(header.utf8)
        return (0..<8).map { UInt8(truncatingIfNeeded: UInt64(json.count) >> (8 * UInt64($0))) } + json + data
    }

    static func file(headerLength: UInt64, rest: [UInt8]) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: headerLength >> (8 * UInt64($0))) } + rest
    }

    /// Asserts that decoding `bytes` throws a `DataError` naming the path and containing `fragment`.
    private func assertRejects(
        _ bytes: [UInt8], _ fragment: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try SafeTensors.decode(bytes, path: "bad.safetensors"), file: file, line: line) { error in
            guard let e = error as? DataError else {
                return XCTFail("threw \(type(of: error)), not DataError: \(error)", file: file, line: line)
            }
            XCTAssertEqual(e.path, "bad.safetensors", file: file, line: line)
            XCTAssertTrue(
                e.problem.contains(fragment), "message \(e.problem.debugDescription) lacks \(fragment.debugDescription)",
                file: file, line: line)
        }
    }

    private func assertRejects(
        header: String, data: [UInt8] = [], _ fragment: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        assertRejects(Self.file(header: header, data: data), fragment, file: file, line: line)
    }

    static func sample() -> SafeTensors {
        var f = SafeTensors(metadata: [
            "format": "pt", "quote\"back\\slash": "line\nbreak\ttab\u{1}ctrl", "unicode": "é ü 日本 🙂", "empty": "",
        ])
        let floats: [Float] = [1, -2.5, .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude]
        floats.withUnsafeBufferPointer { f.append("layer.0.weight", floats: $0, shape: [2, 3]) }
        f.append("double", doubles: [.pi, -0.0, 1e-300], shape: [3])
        f.append("steps", int64s: [0, -1, .max, .min], shape: [2, 2])
        f.append("scalar", int64s: [42], shape: [])
        f.append("empty", floats: [], shape: [0, 4])
        f.append("名前 \"quoted\"", doubles: [2], shape: [1, 1, 1])
        return f
    }

    func testRoundTripsEveryDTypeAndMetadata() throws {
        let original = Self.sample()
        let bytes = original.encoded()
        let header = Int(bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        XCTAssertEqual(header % 8, 0, "header padded to a multiple of 8")
        let decoded = try SafeTensors.decode(bytes, path: "x.safetensors")
        XCTAssertEqual(decoded, original)
        XCTAssertEqual(decoded.tensors.map(\.name), original.tensors.map(\.name), "file order kept")
        XCTAssertEqual(decoded.source, "x.safetensors")
        XCTAssertEqual(decoded.encoded(), bytes, "deterministic")
        XCTAssertEqual(
            try decoded.floats("layer.0.weight").map(\.bitPattern),
            [1, -2.5, .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude].map { (x: Float) in x.bitPattern })
        XCTAssertEqual(try decoded.doubles("double").map(\.bitPattern), [Double.pi, -0.0, 1e-300].map(\.bitPattern))
        XCTAssertEqual(try decoded.int64s("steps"), [0, -1, .max, .min])
        XCTAssertEqual(try decoded.int64s("scalar"), [42])
        XCTAssertEqual(try decoded.floats("empty"), [])
        XCTAssertEqual(decoded.tensor("empty")?.shape, [0, 4])
        XCTAssertEqual(decoded.tensor("scalar")?.shape, [])
        XCTAssertEqual(try decoded.doubles("名前 \"quoted\""), [2])
        XCTAssertEqual(decoded.metadata["unicode"], "é ü 日本 🙂")
        XCTAssertEqual(decoded.metadata["quote\"back\\slash"], "line\nbreak\ttab\u{1}ctrl")
        // NaN payloads survive bit for bit.
        var nan = SafeTensors()
        nan.append("n", floats: [Float(bitPattern: 0x7FC0_1234), Float(bitPattern: 0xFF80_0001)], shape: [2])
        XCTAssertEqual(
            try SafeTensors.decode(nan.encoded(), path: "n").floats("n").map(\.bitPattern), [0x7FC0_1234, 0xFF80_0001])
        // No tensors, no metadata: "{}" padded.
        XCTAssertEqual(SafeTensors().encoded(), Self.file(header: "{}      "))
        XCTAssertEqual(try SafeTensors.decode(SafeTensors().encoded(), path: "e"), SafeTensors())
    }

    /// Written by hand from the specification: 8-byte little-endian header length, compact JSON with
    /// the keys in byte order ("__metadata__" first), spaces up to a multiple of 8, then the data in
    /// append order, little-endian.
    func testGoldenFileByteExact() throws {
        var f = SafeTensors(metadata: ["format": "pt"])
        f.append("weight", floats: [1.0, -2.0], shape: [2])
        f.append("step", int64s: [7], shape: [])
        let json =
            #"{"__metadata__":{"format":"pt"},"step":{"dtype":"I64","shape":[],"data_offsets":[8,16]},"#
            + #""weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        XCTAssertEqual(json.utf8.count, 146)
        let golden: [UInt8] =
            [0x98, 0, 0, 0, 0, 0, 0, 0]  // 152 = 146 + 6 spaces
            + Array(json.utf8) + Array(repeating: 0x20, count: 6)
            + [0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0]  // 1.0f, -2.0f
            + [0x07, 0, 0, 0, 0, 0, 0, 0]  // Int64 7
        XCTAssertEqual(f.encoded(), golden)
        let decoded = try SafeTensors.decode(golden, path: "golden")
        XCTAssertEqual(decoded, f)
        XCTAssertEqual(try decoded.floats("weight"), [1, -2])
        XCTAssertEqual(try decoded.int64s("step"), [7])
    }

    /// Bytes of `safetensors.numpy.save({"weight": float32 [1, -2], "step": int64 7},
    /// metadata={"format": "pt"})` from the reference implementation (safetensors 0.8.0): it orders
    /// the data by dtype alignment and name, so "step" comes first.
    func testDecodesReferenceImplementationOutput() throws {
        let json =
            #"{"__metadata__":{"format":"pt"},"step":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"#
            + #""weight":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}      "#
        let reference = Self.file(header: json, data: [7, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0])
        XCTAssertEqual(reference.count, 176)
        let decoded = try SafeTensors.decode(reference, path: "reference")
        XCTAssertEqual(decoded.tensors.map(\.name), ["step", "weight"], "file (data) order")
        XCTAssertEqual(try decoded.floats("weight"), [1, -2])
        XCTAssertEqual(try decoded.int64s("step"), [7])
        XCTAssertEqual(decoded.metadata, ["format": "pt"])
        XCTAssertEqual(decoded.encoded(), reference, "same bytes as the reference writer when name order is data order")
        // Unknown fields are skipped, whitespace and escapes accepted, as serde_json does.
        let relaxed = Self.file(
            header:
                " {\"\\u0077eight\" : {\"data_offsets\":[0,4],\"extra\":[{\"x\":null},true,-1.5e3],\"dtype\":\"F32\",\"shape\":[1]}}\n",
            data: [0, 0, 0x80, 0x3F])
        XCTAssertEqual(try SafeTensors.decode(relaxed, path: "r").floats("weight"), [1])
    }

    /// File order is data order; empty tensors at one offset come in name order, whatever the header says.
    func testFileOrder() throws {
        let header =
            #"{"c":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"#
            + #""z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"#
            + #""y":{"dtype":"I64","shape":[0],"data_offsets":[0,0]}}"#
        let decoded = try SafeTensors.decode(Self.file(header: header, data: [UInt8](repeating: 0, count: 8)), path: "o")
        XCTAssertEqual(decoded.tensors.map(\.name), ["y", "z", "a", "b", "c"])
        XCTAssertEqual(try SafeTensors.decode(decoded.encoded(), path: "o2"), decoded)
    }

    /// Names sort by UTF-8 bytes (as Rust and Python do), not by Swift's Unicode ordering.
    func testHeaderKeysInByteOrder() throws {
        var f = SafeTensors(metadata: ["b": "1", "B": "2", "_": "3"])
        for name in ["é", "z", "Z", "a.b", "a"] { f.append(name, floats: [0], shape: [1]) }
        let text = String(decoding: f.encoded(), as: UTF8.self)
        let order = ["\"__metadata__\"", "\"B\"", "\"_\"", "\"b\"", "\"Z\":", "\"a\":", "\"a.b\":", "\"z\":", "\"é\":"]
        let positions = order.map { text.range(of: $0)!.lowerBound }
        XCTAssertEqual(positions, positions.sorted(), text)
    }

    func testFloatAccessorErrors() throws {
        let f = try SafeTensors.decode(Self.sample().encoded(), path: "model.safetensors")
        XCTAssertThrowsError(try f.floats("missing")) { error in
            let e = error as! DataError
            XCTAssertEqual(e.path, "model.safetensors")
            XCTAssertTrue(e.problem.contains("has no tensor named \"missing\""), e.problem)
            XCTAssertTrue(e.problem.contains("\"layer.0.weight\""), e.problem)
        }
        XCTAssertThrowsError(try f.floats("steps")) { error in
            XCTAssertTrue((error as! DataError).problem.contains("\"steps\" is I64, not F32"), "\(error)")
        }
    }

    func testRejectsMalformedFiles() {
        let ok = #""w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#
        let eight = [UInt8](repeating: 0, count: 8)
        // Sizes and the length prefix.
        assertRejects([], "has 0 bytes; a safetensors file starts with an 8-byte header length")
        assertRejects([1, 2, 3, 4, 5], "has 5 bytes")
        assertRejects(Self.file(headerLength: 1 << 63, rest: []), "over the format's limit of 100000000 bytes")
        assertRejects(Self.file(headerLength: .max, rest: eight), "over the format's limit")
        assertRejects(Self.file(headerLength: 100_000_001, rest: eight), "over the format's limit")
        assertRejects(
            Self.file(headerLength: 1000, rest: Array("{}".utf8) + eight),
            "declares a 1000-byte JSON header but only 10 bytes follow")
        assertRejects(
            Array(Self.file(header: "{}", data: []).dropLast()), "declares a 2-byte JSON header but only 1 bytes follow")
        assertRejects(header: "", "empty JSON header")
        assertRejects(header: "    ", "empty JSON header")
        // JSON syntax (Foundation's description of the problem).
        let syntax = "has a header that is not valid JSON: "
        assertRejects(header: "{\"w\":", syntax + "Unexpected end of file")
        assertRejects(header: "{\"w\" 1}", syntax)
        assertRejects(header: "{\"w\":{\"dtype\":\"F32\"", syntax)
        assertRejects(header: "{\(ok)} x", syntax)
        assertRejects(header: "{\(ok),,}", syntax)
        assertRejects(
            header: "{\"w\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", syntax + "Number with leading zero")
        assertRejects(Self.file(header: "{\"\u{1}\":1}"), syntax + "Unescaped control character")
        assertRejects(
            Self.file(headerLength: 8, rest: [0x7B, 0x22, 0xFF, 0xFE, 0x22, 0x3A, 0x31, 0x7D]), syntax + "Invalid UTF-8")
        assertRejects(header: #"{"\ud800":1}"#, syntax)
        assertRejects(header: #"{"\ud800\u0041":1}"#, syntax)
        assertRejects(header: #"{"\udc00":1}"#, syntax)
        assertRejects(header: #"{"\x":1}"#, syntax + "Invalid escape")
        assertRejects(header: #"{"w":{"x":1e999}}"#, syntax)
        // Foundation would read these as UTF-16, UTF-32 or BOM-prefixed UTF-8; the format is UTF-8 only.
        let encoding = "not UTF-8 JSON: it holds a NUL byte or starts with a byte-order mark"
        assertRejects(header: "\u{0}{}", encoding)
        assertRejects(Self.file(headerLength: 4, rest: [0x7B, 0x00, 0x7D, 0x00]), encoding)
        assertRejects(Self.file(headerLength: 6, rest: [0xFE, 0xFF, 0x00, 0x7B, 0x00, 0x7D]), encoding)
        assertRejects(Self.file(headerLength: 5, rest: [0xEF, 0xBB, 0xBF, 0x7B, 0x7D]), encoding)
        // Nesting: 64 levels (the header object is level 1) pass, 65 do not; Foundation stops at 512.
        func nested(_ levels: Int) -> String {
            let x = String(repeating: "[", count: levels - 2) + String(repeating: "]", count: levels - 2)
            return #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":"# + x + "}}"
        }
        XCTAssertEqual(try SafeTensors.decode(Self.file(header: nested(64), data: [0, 0, 0, 0]), path: "d").tensors.count, 1)
        assertRejects(header: nested(65), data: [0, 0, 0, 0], "has a header with JSON nesting deeper than 64 levels")
        let deepMetadata =
            #"{"__metadata__":{"k":"# + String(repeating: "[", count: 63) + String(repeating: "]", count: 63) + "}}"
        assertRejects(header: deepMetadata, "nesting deeper than 64 levels")
        assertRejects(header: nested(100_000), syntax + "Too many nested arrays or dictionaries")
        // Schema.
        assertRejects(header: "[1,2]", "the JSON header is an array; expected an object")
        assertRejects(header: "\"text\"", "the JSON header is a string")
        assertRejects(header: "{\"w\":3}", "tensor \"w\" is a number; expected an object")
        assertRejects(header: #"{"w":{"shape":[1],"data_offsets":[0,4]}}"#, "tensor \"w\" has no \"dtype\"")
        assertRejects(header: #"{"w":{"dtype":"F32","data_offsets":[0,4]}}"#, "tensor \"w\" has no \"shape\"")
        assertRejects(header: #"{"w":{"dtype":"F32","shape":[1]}}"#, "tensor \"w\" has no \"data_offsets\"")
        assertRejects(
            header: #"{"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}"#, "unknown dtype \"Q7\" (supported: F32, F64, I64)")
        assertRejects(
            header: #"{"w":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}"#, "dtype BF16, which this reader does not support")
        assertRejects(header: #"{"w":{"dtype":7,"shape":[1],"data_offsets":[0,2]}}"#, "dtype a number; expected a string")
        assertRejects(header: #"{"w":{"dtype":true,"shape":[1],"data_offsets":[0,2]}}"#, "dtype a boolean; expected a string")
        assertRejects(header: #"{"w":{"dtype":"F32","shape":[false],"data_offsets":[0,4]}}"#, "shape holds a boolean")
        assertRejects(header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[null,4]}}"#, "data_offsets holds null")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#,
            "data_offsets holds 18446744073709551615, too large for a 64-bit integer")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, "shape holds -1; expected non-negative integers")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#,
            "shape holds 1.5; expected non-negative integers")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[1e2],"data_offsets":[0,4]}}"#,
            "shape holds 100.0; expected non-negative integers")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}"#,
            "shape holds a string; expected non-negative integers")
        assertRejects(header: #"{"w":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}"#, "shape is a number; expected an array")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}"#,
            "too large for a 64-bit integer")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0],
            "element count overflows")
        assertRejects(
            header: #"{"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0],
            "needs more than fits in memory")
        let rank65 = "[" + Array(repeating: "1", count: 65).joined(separator: ",") + "]"
        assertRejects(
            header: "{\"w\":{\"dtype\":\"F32\",\"shape\":\(rank65),\"data_offsets\":[0,4]}}", "shape has more than 64 entries")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#, "data_offsets has more than 2 entries")
        assertRejects(header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4]}}"#, "data_offsets [4]; expected two offsets")
        // Metadata.
        assertRejects(
            header: #"{"__metadata__":{"k":1}}"#, "__metadata__ value for key \"k\" is a number; metadata values must be strings")
        assertRejects(header: #"{"__metadata__":{"k":{"a":"b"}}}"#, "value for key \"k\" is an object")
        assertRejects(header: #"{"__metadata__":["k"]}"#, "__metadata__ is an array; expected an object of string values")
        XCTAssertEqual(try SafeTensors.decode(Self.file(header: #"{"__metadata__":null}"#), path: "n"), SafeTensors())
        // Offsets, sizes, layout.
        assertRejects(header: "{\(ok)}", data: [0, 0, 0, 0], "data_offsets [0, 8], past the end of the 4-byte data buffer")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, data: eight, "the end is before the beginning")
        assertRejects(
            header: #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: eight,
            "has 8 bytes (data_offsets [0, 8]) but F32 [3] needs 12")
        assertRejects(header: #"{"w":{"dtype":"F64","shape":[],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0], "F64 [] needs 8")
        assertRejects(
            header:
                #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            data: eight + [0, 0, 0, 0], "tensors \"a\" (data_offsets [0, 8]) and \"b\" ([4, 12]) overlap")
        assertRejects(
            header:
                #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            data: eight + [0, 0, 0, 0], "bytes 4..<8 of the data buffer belong to no tensor (before \"b\")")
        assertRejects(
            header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: eight,
            "bytes 0..<4 of the data buffer belong to no tensor")
        assertRejects(header: "{\(ok)}", data: eight + [1], "has 1 byte(s) after the last tensor")
        assertRejects(header: "{}", data: [1, 2], "has 2 byte(s) after the last tensor")
    }

    /// Foundation's JSON keeps the last of a repeated key, as serde_json does for the reference
    /// implementation's tensor map; the layout checks still apply to what is kept.
    func testRepeatedKeysKeepTheLastValue() throws {
        let f32 = #""w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#
        let i64 = #""w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}"#
        let eight: [UInt8] = [7, 0, 0, 0, 0, 0, 0, 0]
        let decoded = try SafeTensors.decode(Self.file(header: "{\(f32),\(i64)}", data: eight), path: "dup")
        XCTAssertEqual(decoded.tensors.map(\.name), ["w"])
        XCTAssertEqual(try decoded.int64s("w"), [7])
        let fields = #"{"w":{"dtype":"F64","dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#
        XCTAssertEqual(try SafeTensors.decode(Self.file(header: fields, data: eight), path: "dup").int64s("w"), [7])
        let metadata = #"{"__metadata__":{"k":"a"},"__metadata__":{"k":"b","k":"c"}}"#
        XCTAssertEqual(try SafeTensors.decode(Self.file(header: metadata), path: "dup").metadata, ["k": "c"])
        // The dropped entry's bytes then belong to no tensor.
        let moved = #""w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}"#
        assertRejects(header: "{\(f32),\(moved)}", data: eight + eight, "bytes 0..<8 of the data buffer belong to no tensor")
    }

    /// What Foundation's parser accepts beyond RFC 8259 (serde_json rejects both): a trailing comma,
    /// and "-0" as the integer 0. Re-encoding makes the header canonical.
    func testFoundationLeniency() throws {
        let header = #"{"w":{"dtype":"F32","shape":[-0,1,],"data_offsets":[0,0],},}"#
        let decoded = try SafeTensors.decode(Self.file(header: header), path: "lenient")
        XCTAssertEqual(decoded.tensor("w")?.shape, [0, 1])
        XCTAssertEqual(
            String(decoding: decoded.encoded().dropFirst(8), as: UTF8.self),
            #"{"w":{"dtype":"F32","shape":[0,1],"data_offsets":[0,0]}}"#)
    }

    /// A file whose header length starts with the gzip magic bytes (0x8B1F = 35615, unpadded, as other
    /// writers may leave it) is read as it is, not inflated.
    func testHeaderLengthThatLooksLikeGzip() throws {
        let tail = #""},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        let head = #"{"__metadata__":{"pad":""#
        let json = head + String(repeating: "x", count: 35615 - head.utf8.count - tail.utf8.count) + tail
        let bytes = Self.file(header: json, data: [0, 0, 0x40, 0x40])
        XCTAssertEqual(Array(bytes[0..<2]), [0x1F, 0x8B])
        let path = NSTemporaryDirectory() + "gz-like-" + UUID().uuidString + ".safetensors"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Foundation.Data(bytes).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try SafeTensors.load(path).floats("w"), [3])
        XCTAssertThrowsError(try SafeTensors.load(path + ".missing")) { error in
            XCTAssertTrue("\(error)".contains("cannot be opened: No such file or directory"), "\(error)")
        }
    }

    /// Interoperability with Python's reference implementation, run when `python3` can import
    /// `safetensors.numpy` (e.g. `PYTHONPATH=/path/to/site-packages`): Python loads a file written
    /// here and checks every value, dtype, shape and the metadata; then writes one that is decoded here.
    func testPythonReferenceImplementation() throws {
        guard run(["python3", "-c", "import safetensors.numpy, numpy"]).status == 0 else {
            throw XCTSkip("python3 cannot import safetensors.numpy and numpy; set PYTHONPATH to run this check")
        }
        let dir = NSTemporaryDirectory() + "st-python-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Foundation.Data(Self.sample().encoded()).write(to: URL(fileURLWithPath: dir + "/swift.safetensors"))
        let script = #"""
            import sys, numpy as np
            from safetensors import safe_open
            from safetensors.numpy import load_file, save_file
            d = sys.argv[1]
            t = load_file(d + "/swift.safetensors")
            f32 = np.array([1, -2.5, np.inf, -np.inf, np.finfo(np.float32).max, np.finfo(np.float32).smallest_subnormal], dtype=np.float32).reshape(2, 3)
            assert t["layer.0.weight"].dtype == np.float32 and t["layer.0.weight"].shape == (2, 3)
            assert t["layer.0.weight"].tobytes() == f32.tobytes(), t["layer.0.weight"]
            assert t["double"].dtype == np.float64 and t["double"].tobytes() == np.array([np.pi, -0.0, 1e-300]).tobytes()
            assert t["steps"].dtype == np.int64 and (t["steps"] == np.array([[0, -1], [2**63 - 1, -2**63]])).all()
            assert t["scalar"].shape == () and t["scalar"] == 42
            assert t["empty"].shape == (0, 4) and t["empty"].dtype == np.float32
            assert t["名前 \"quoted\""].shape == (1, 1, 1) and t["名前 \"quoted\""][0, 0, 0] == 2.0
            with safe_open(d + "/swift.safetensors", framework="np") as f:
                m = f.metadata()
            assert m == {"format": "pt", "quote\"back\\slash": "line\nbreak\ttab\x01ctrl", "unicode": "é ü 日本 🙂", "empty": ""}, m
            save_file({"w": np.arange(6, dtype=np.float32).reshape(3, 2), "z": np.zeros((0,), np.float64), "i": np.array([-5, 7], np.int64)},
                      d + "/python.safetensors", metadata={"from": "python"})
            print("ok")
            """#
        let result = run(["python3", "-c", script, dir])
        XCTAssertEqual(result.status, 0, result.output)
        let fromPython = try SafeTensors.load(dir + "/python.safetensors")
        XCTAssertEqual(try fromPython.floats("w"), [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(fromPython.tensor("w")?.shape, [3, 2])
        XCTAssertEqual(try fromPython.int64s("i"), [-5, 7])
        XCTAssertEqual(try fromPython.doubles("z"), [])
        XCTAssertEqual(fromPython.metadata, ["from": "python"])
    }

    private func run(_ arguments: [String]) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
