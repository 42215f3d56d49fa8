import Collectives
#if canImport(Glibc)
    import Glibc
#endif

/// A Chrome trace of a window of steps (the JSON array format that Perfetto and Chrome's trace viewer
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
    enum Track: Int {
        case compute = 1
        case communication = 2
    }

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

    /// After the last step: nothing more is recorded (BN recalibration, evaluation).
    func stop() { recording = false }

    func span(
        _ name: String, _ category: String, _ track: Track = .compute, from start: Double, to end: Double, bytes: Int? = nil
    ) {
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

    /// Collective: every rank's events go to rank 0 (a gather: only the root holds them all),
    /// which writes `path` (a temporary file renamed into place, so a reader never sees half a
    /// trace). Every rank learns whether the write succeeded and throws alike, so no rank is left
    /// waiting in a later collective when the root cannot write.
    func write(to path: String, over communicator: Communicator) throws {
        let mine = Array(encodedEvents(rank: communicator.rank).utf8)
        let gathered = try communicator.gather(mine, root: 0)
        var failure: [Int] = [0]
        var reason = ""
        if communicator.isRoot {
            var parts: [String] = []
            for rank in 0..<communicator.size {
                parts.append("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":\(rank),\"args\":{\"name\":\"rank \(rank)\"}}")
                parts.append("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":\(rank),\"tid\":1,\"args\":{\"name\":\"compute\"}}")
            }
            parts += gathered.map { String(decoding: $0, as: UTF8.self) }.filter { !$0.isEmpty }
            do { try writeAtomically("[\n" + parts.joined(separator: ",\n") + "\n]\n", to: path) } catch {
                (failure[0], reason) = (1, "\(error)")
            }
        }
        try communicator.broadcast(&failure, root: 0)
        if failure[0] != 0 {
            throw TrainingError.configuration(
                communicator.isRoot ? reason : "--timeline \(path): rank 0 could not write the trace (it printed why)")
        }
    }

    private func encodedEvents(rank: Int) -> String {
        func microseconds(_ seconds: Double) -> JSONValue { .number((seconds * 1e9).rounded() / 1000) }
        return events.enumerated().map { k, e in
            var args: [(String, JSONValue)] = [("step", .integer(e.step))]
            if let bytes = e.bytes { args.append(("bytes", .integer(bytes))) }
            let common: [(String, JSONValue)] = [
                ("name", .string(e.name)), ("cat", .string(e.category)), ("pid", .integer(rank)),
            ]
            guard e.track == .communication else {
                return JSONValue.object(
                    common + [
                        ("ph", .string("X")), ("ts", microseconds(e.start - origin)), ("dur", microseconds(e.end - e.start)),
                        ("tid", .integer(e.track.rawValue)), ("args", .object(args)),
                    ]
                ).encoded
            }
            let id = JSONValue.integer(rank << 32 | k)
            return JSONValue.object(
                common + [("ph", .string("b")), ("id", id), ("ts", microseconds(e.start - origin)), ("args", .object(args))]
            ).encoded
                + ",\n"
                + JSONValue.object(common + [("ph", .string("e")), ("id", id), ("ts", microseconds(e.end - origin))]).encoded
        }.joined(separator: ",\n")
    }

    /// Before training: a trace that cannot be written is reported now, not after the run.
    static func checkWritable(_ path: String) throws {
        let temporary = path + ".tmp"
        guard let file = fopen(temporary, "w") else {
            throw TrainingError.configuration(
                "--timeline \(path): cannot be written: \(String(cString: strerror(errno))); give a file in a writable directory")
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
