/// A failed MPI call: which function, MPI's own error text, and the rank it failed on.
public struct MPIError: Error, CustomStringConvertible, Sendable {
    public let function: String
    public let code: Int32
    public let message: String
    public let rank: Int

    public var description: String {
        "rank \(rank): \(function) failed with MPI error \(code): \(message)"
    }
}

/// Errors of the runtime itself (not of an MPI call).
public enum MPIRuntimeError: Error, CustomStringConvertible, Sendable {
    case threadLevelNotGranted(requested: ThreadLevel, granted: ThreadLevel)
    case alreadyFinalized

    public var description: String {
        switch self {
        case let .threadLevelNotGranted(requested, granted):
            "MPI granted thread level \(granted) but \(requested) was requested; rebuild Open MPI with thread support or ask for less"
        case .alreadyFinalized:
            "MPI was already finalized in this process and cannot be initialized again"
        }
    }
}

/// MPI thread support levels, weakest first.
public enum ThreadLevel: Int, Comparable, Sendable, CustomStringConvertible {
    case single = 0
    case funneled, serialized, multiple
    public static func < (a: ThreadLevel, b: ThreadLevel) -> Bool { a.rawValue < b.rawValue }
    public var description: String {
        switch self {
        case .single: "MPI_THREAD_SINGLE"
        case .funneled: "MPI_THREAD_FUNNELED"
        case .serialized: "MPI_THREAD_SERIALIZED"
        case .multiple: "MPI_THREAD_MULTIPLE"
        }
    }
}
