import Data
#if canImport(Glibc)
    import Glibc
#endif

/// A JSON Lines file written by rank 0: a start record (the plan), one object per logged step,
/// skipped-step events and a final record.
/// Each line is flushed as written, so a killed run keeps every line it logged.
final class MetricsLog {
    private let file: UnsafeMutablePointer<FILE>
    let path: String

    /// - Parameter append: keep what an interrupted run wrote (resume) instead of starting afresh.
    init(path: String, append: Bool = false) throws {
        guard let f = fopen(path, append ? "a" : "w") else {
            throw TrainingError.configuration(
                "--metrics \(path): cannot be opened for writing: \(String(cString: strerror(errno)))")
        }
        file = f
        self.path = path
    }

    deinit { fclose(file) }

    /// Appends one record and flushes it.
    /// - Throws: `MetricsWriteError` when the line cannot be written whole (a full disk, a lost
    ///   mount): the run stops rather than report success with records missing.
    func write(_ object: JSONValue) throws {
        clearerr(file)
        guard fputs(object.encoded + "\n", file) >= 0, fflush(file) == 0 else {
            throw MetricsWriteError(path: path, reason: String(cString: strerror(errno)))
        }
    }
}

/// A metrics record that could not be written. It ends the job (rank 0 writes the file alone; the
/// others are stopped with it), so that a run never reports success with records missing.
struct MetricsWriteError: Error, CustomStringConvertible {
    let path: String
    let reason: String
    var description: String {
        "--metrics \(path): a record could not be written (\(reason)); the run stops so that no record is lost silently; free space or give another --metrics file (with --checkpoint-dir, --resume auto continues the run)"
    }
}

/// The small JSON subset the metrics need. Non-finite numbers become `null` (JSON has no NaN).
public indirect enum JSONValue {
    case number(Double)
    case integer(Int)
    case string(String)
    case bool(Bool)
    case array([JSONValue])
    case object([(String, JSONValue)])
    case null

    public var encoded: String {
        switch self {
        case let .number(x): x.isFinite ? "\(x)" : "null"
        case let .integer(i): "\(i)"
        case let .bool(b): b ? "true" : "false"
        case let .string(s): SafeTensors.jsonString(s)
        case let .array(items): "[" + items.map(\.encoded).joined(separator: ",") + "]"
        case let .object(fields):
            "{" + fields.map { SafeTensors.jsonString($0.0) + ":" + $0.1.encoded }.joined(separator: ",") + "}"
        case .null: "null"
        }
    }

    /// An object with one more field (other values are returned unchanged).
    public func adding(_ key: String, _ value: JSONValue) -> JSONValue {
        guard case let .object(fields) = self else { return self }
        return .object(fields + [(key, value)])
    }
}
