import Collectives
#if canImport(Glibc)
    import Glibc
#endif

/// A Chrome trace of a window of steps (the JSON array format that Perfetto and chrome://tracing
/// open): one process per rank, with the computation (layers, BN reductions, update, data,
/// checkpoints) as nested spans on its "compute" thread, and the gradient allreduces, which
/// overlap backward and each other, as async spans of the process.
///
/// Clocks: every rank takes its origin on leaving one barrier, so ranks are aligned to within one
/// message latency (microseconds on one host, tens of microseconds over a network).
final class Timeline {
    /// 1-based steps recorded; outside them nothing is kept, so the file stays small.
    let window: ClosedRange<Int>
    private(set) var recording = false
    private var step = 0
    private var origin = 0.0
    private var events: [Event] = []

    /// Spans on the compute thread nest; communication spans may overlap (async events).
    enum Track: Int { case compute = 1, communication = 2 }

    struct Event {
        let name: String
        let category: String
        let track: Track
        let start: Double
        let end: Double
        let step: Int
        let bytes: Int?
    }

    init(window: ClosedRange<Int>) { self.window = window }

    /// Collective: aligns this rank's clock origin with the others'.
    func alignClocks(_ communicator: Communicator) throws {
        try communicator.barrier()
        origin = Stopwatch.now()
    }

    /// Before step `step` (1-based).
    func begin(step: Int) {
        self.step = step
        recording = window.contains(step)
    }

    func span(_ name: String, _ category: String, _ track: Track = .compute, from start: Double, to end: Double, bytes: Int? = nil) {
        guard recording else { return }
        events.append(Event(name: name, category: category, track: track, start: start, end: end, step: step, bytes: bytes))
    }

    /// Times `body` as a span (when recording).
    func measure<T>(_ name: String, _ category: String, _ body: () throws -> T) rethrows -> T {
        guard recording else { return try body() }
        let start = Stopwatch.now()
        defer { span(name, category, from: start, to: Stopwatch.now()) }
        return try body()
    }

    /// Collective: every rank's events go to rank 0, which writes `path` (a temporary file renamed
    /// into place, so a reader never sees half a trace).
    func write(to path: String, over communicator: Communicator) throws {
        var mine = Array(encodedEvents(rank: communicator.rank).utf8)
        let longest = try communicator.allreduce(mine.count, .max)
        mine += [UInt8](repeating: UInt8(ascii: " "), count: longest - mine.count)
        var all = [UInt8](repeating: 0, count: longest * communicator.size)
        try mine.withUnsafeBytes { input in try all.withUnsafeMutableBytes { try communicator.allgather(input, into: $0) } }
        guard communicator.isRoot else { return }
        var text = "[\n"
        for rank in 0..<communicator.size {
            text += "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":\(rank),\"args\":{\"name\":\"rank \(rank)\"}},\n"
            text += "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":\(rank),\"tid\":1,\"args\":{\"name\":\"compute\"}},\n"
        }
        let parts = (0..<communicator.size).map { rank in
            String(decoding: all[(rank * longest)..<((rank + 1) * longest)], as: UTF8.self).trimmingTrailingSpaces
        }
        text += parts.filter { !$0.isEmpty }.joined(separator: ",\n") + "\n]\n"
        try writeAtomically(text, to: path)
    }

    private func encodedEvents(rank: Int) -> String {
        func microseconds(_ seconds: Double) -> JSONValue { .number((seconds * 1e9).rounded() / 1000) }
        return events.enumerated().map { k, e in
            var args: [(String, JSONValue)] = [("step", .integer(e.step))]
            if let bytes = e.bytes { args.append(("bytes", .integer(bytes))) }
            let common: [(String, JSONValue)] = [("name", .string(e.name)), ("cat", .string(e.category)), ("pid", .integer(rank))]
            guard e.track == .communication else {
                return JSONValue.object(
                    common + [
                        ("ph", .string("X")), ("ts", microseconds(e.start - origin)), ("dur", microseconds(e.end - e.start)),
                        ("tid", .integer(e.track.rawValue)), ("args", .object(args)),
                    ]
                ).encoded
            }
            let id = JSONValue.integer(rank << 32 | k)
            return JSONValue.object(common + [("ph", .string("b")), ("id", id), ("ts", microseconds(e.start - origin)), ("args", .object(args))]).encoded
                + ",\n" + JSONValue.object(common + [("ph", .string("e")), ("id", id), ("ts", microseconds(e.end - origin))]).encoded
        }.joined(separator: ",\n")
    }

    /// Before training: a trace that cannot be written is reported now, not after the run.
    static func checkWritable(_ path: String) throws {
        let temporary = path + ".tmp"
        guard let file = fopen(temporary, "w") else {
            throw TrainingError.configuration("--timeline \(path): cannot be written: \(String(cString: strerror(errno))); give a file in a writable directory")
        }
        fclose(file)
        unlink(temporary)
    }

    private func writeAtomically(_ text: String, to path: String) throws {
        let temporary = path + ".tmp"
        guard let file = fopen(temporary, "w") else {
            throw TrainingError.configuration("--timeline \(path): cannot be written: \(String(cString: strerror(errno)))")
        }
        let written = fputs(text, file) >= 0
        if fclose(file) != 0 || !written || rename(temporary, path) != 0 {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw TrainingError.configuration("--timeline \(path): writing failed: \(reason)")
        }
    }
}

extension String {
    fileprivate var trimmingTrailingSpaces: String {
        var s = Substring(self)
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
