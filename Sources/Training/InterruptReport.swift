import Synchronization
#if canImport(Glibc)
    import Glibc
#endif

/// What rank 0 prints when the job is stopped by SIGINT (Ctrl-C) or SIGTERM (mpirun and Slurm
/// forward them): the step reached and the checkpoint that holds the latest state. A signal handler
/// may call only async-signal-safe functions, so the trainer keeps the text current in one of two
/// buffers and the handler only writes the one last completed, then ends the process by the signal.
enum InterruptReport {
    private static let capacity = 1024
    nonisolated(unsafe) private static let buffers = UnsafeMutablePointer<CChar>.allocate(capacity: 2 * capacity)
    nonisolated(unsafe) private static var lengths = (0, 0)
    /// The buffer to print, published after its text and length are written (-1: nothing to say).
    private static let current = Atomic<Int>(-1)

    /// Installs the handlers (rank 0 of a run).
    static func install() {
        for sig in [SIGINT, SIGTERM] {
            signal(
                sig,
                { sig in
                    let i = InterruptReport.current.load(ordering: .acquiring)
                    if i >= 0 {
                        let name = sig == SIGINT ? "autorate: interrupted (SIGINT) " : "autorate: stopped (SIGTERM) "
                        _ = write(2, name, strlen(name))
                        _ = write(
                            2, InterruptReport.buffers + i * InterruptReport.capacity,
                            i == 0 ? InterruptReport.lengths.0 : InterruptReport.lengths.1)
                    }
                    signal(sig, SIG_DFL)
                    raise(sig)
                })
        }
    }

    /// The text printed after "interrupted": written to the buffer not in use, then made current.
    static func update(_ text: String) {
        let next = current.load(ordering: .relaxed) == 0 ? 1 : 0
        let bytes = Array((text + "\n").utf8.prefix(capacity))
        let target = buffers + next * capacity
        bytes.withUnsafeBufferPointer { b in
            for (k, byte) in b.enumerated() { target[k] = CChar(bitPattern: byte) }
        }
        if next == 0 { lengths.0 = bytes.count } else { lengths.1 = bytes.count }
        current.store(next, ordering: .releasing)
    }
}
