import Foundation

/// Ends the job when a rank makes no progress for `timeout` seconds, naming the rank, the step and
/// what it was waiting in. Rank 0 alone cannot tell a slow step from a stall, but a rank blocked
/// in a collective for minutes is stuck: a peer died without the job noticing, or hangs. The
/// watchdog thread prints and exits the process (status 3); mpirun then ends every other rank.
final class StallWatchdog: @unchecked Sendable {
    // @unchecked Sendable: every field is read and written under `lock`.
    private let lock = NSLock()
    private var lastProgress = Date()
    private var step = 0
    private var phase = "start-up"
    private var stopped = false
    private let timeout: Double
    private let rank: Int

    init(timeout: Double, rank: Int) {
        self.timeout = timeout
        self.rank = rank
        let thread = Thread { [weak self] in
            while let self, self.check() { Thread.sleep(forTimeInterval: Swift.min(1, timeout / 4)) }
        }
        thread.start()
    }

    /// Records progress: the rank is now at `step`, doing `phase` (e.g. the collective it enters).
    func progress(step: Int, _ phase: String) {
        lock.lock()
        defer { lock.unlock() }
        (self.step, self.phase, lastProgress) = (step, phase, Date())
    }

    func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
    }

    /// False once stopped; exits the process on a stall.
    private func check() -> Bool {
        lock.lock()
        let (stopped, idle, step, phase) = (self.stopped, Date().timeIntervalSince(lastProgress), self.step, self.phase)
        lock.unlock()
        if stopped { return false }
        if idle > timeout {
            let line =
                "autorate: error on rank \(rank): no progress for \(Int(idle)) s (--stall-timeout \(Int(timeout))) at step \(step), "
                + "waiting in \(phase); ending the job\n"
            FileHandle.standardError.write(Data(line.utf8))
            exit(3)
        }
        return true
    }
}
