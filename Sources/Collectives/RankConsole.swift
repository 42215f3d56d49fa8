#if canImport(Glibc)
    import Glibc
#endif

/// The one place a multi-rank program prints: progress from rank 0 only, errors from every rank,
/// prefixed with the rank so that a user of a 64-rank job can tell which one failed.
public struct RankConsole: Sendable {
    public let rank: Int
    public let size: Int
    public let program: String

    public init(program: String, rank: Int, size: Int) {
        self.program = program
        self.rank = rank
        self.size = size
    }

    /// Prints `line` to standard output on rank 0 only, flushed at once (mpirun forwards lines).
    public func root(_ line: String) {
        guard rank == 0 else { return }
        writeAll(1, line + "\n")
    }

    /// Prints `message` to standard error on this rank, naming the program and the rank.
    public func error(_ message: String) {
        writeAll(2, "\(program): error on rank \(rank) of \(size): \(message)\n")
    }

    /// Prints a warning on rank 0 only.
    public func warning(_ message: String) {
        guard rank == 0 else { return }
        writeAll(2, "\(program): warning: \(message)\n")
    }
}

/// Writes a whole string to a file descriptor, unbuffered, so that output is not lost on MPI_Abort.
public func writeAll(_ fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n <= 0 { return }
        offset += n
    }
}
