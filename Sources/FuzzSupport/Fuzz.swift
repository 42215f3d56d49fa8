#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import Data

/// Shared by the fuzz targets (`Sources/Fuzz*`, run by `launch/fuzz`). Each target defines one
/// `check(_ bytes: [UInt8]) -> String` that parses the input, traps on any broken invariant, and
/// returns a one-line summary. Built plainly (`swift build`), a target is a replay tool:
/// `fuzz-idx FILE|DIR...` runs `check` on each file and prints the summary. Built with
/// `--sanitize=fuzzer -Xswiftc -DFUZZING`, it exports `LLVMFuzzerTestOneInput` instead, and
/// libFuzzer's `main` drives it.
public enum Fuzz {
    /// The path the fuzz targets pass to the parsers; every `DataError` must name it.
    public static let inputPath = "fuzz-input"

    /// libFuzzer's entry point body.
    public static func run(_ data: UnsafePointer<UInt8>?, _ size: Int, _ check: ([UInt8]) -> String) -> CInt {
        let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
        _ = check(bytes)
        return 0
    }

    /// Runs `body`; a `DataError` naming `inputPath` with a message is a rejection ("rejected: ..."),
    /// any other error is a bug and traps.
    public static func parse<T>(_ what: String, _ body: () throws -> T, accepted: (T) -> String) -> (T?, String) {
        do {
            let value = try body()
            return (value, "\(what) accepted: \(accepted(value))")
        } catch let error as DataError {
            require(error.path == inputPath, "\(what): DataError names \(error.path), not the input \(inputPath)")
            require(!error.problem.isEmpty, "\(what): DataError without a message")
            return (nil, "\(what) rejected: \(error.problem)")
        } catch {
            fail("\(what): threw \(type(of: error)) (\(error)), not a DataError")
        }
    }

    /// Traps with `message` unless `condition` holds (also in optimized builds).
    public static func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
        if !condition() { fail(message()) }
    }

    public static func fail(_ message: String) -> Never {
        let text = Array("fuzz invariant broken: \(message)\n".utf8)
        _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        abort()
    }

    /// Replay mode: `check` on every file named in the arguments (directories: their files, sorted).
    public static func replay(_ check: ([UInt8]) -> String) -> Never {
        let arguments = CommandLine.arguments.dropFirst()
        guard !arguments.isEmpty, !arguments.contains("-h"), !arguments.contains("--help") else {
            let name = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? "fuzz"
            print("usage: \(name) FILE|DIRECTORY...")
            print("Runs this fuzz target's checks on each file and prints what the parser made of it.")
            print("Built with `launch/fuzz` (--sanitize=fuzzer -DFUZZING) it is a libFuzzer binary instead.")
            exit(arguments.isEmpty ? 2 : 0)
        }
        var failures = 0
        for argument in arguments {
            for path in files(argument) {
                guard let bytes = readFile(path) else {
                    print("\(path): cannot be read: \(String(cString: strerror(errno)))")
                    failures += 1
                    continue
                }
                print("\(path) (\(bytes.count) bytes): \(check(bytes))")
            }
        }
        exit(failures == 0 ? 0 : 1)
    }

    static func files(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [path] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted().map { path + "/" + $0 }
    }

    static func readFile(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
            bytes.append(contentsOf: chunk[0..<n])
            if n < chunk.count { return ferror(file) == 0 ? bytes : nil }
        }
    }
}
