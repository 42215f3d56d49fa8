import Collectives
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
    /// The node's heartbeats, one slice per rank: its count of progress calls, its step, and when
    /// its watchdog thread last ran (monotonic ns: a stopped or frozen process stops beating), with
    /// the world rank of each slice's owner. A waiting rank finds there the one it waits for.
    private var heartbeats: (memory: NodeSharedMemory, worldRanks: [Int], worldSize: Int)?
    private var progressCount: Int64 = 0
    private let interval: Double
    /// When this thread last checked: a long gap means this process itself was not running.
    private var lastCheck = StallWatchdog.now()

    init(timeout: Double, rank: Int) {
        self.timeout = timeout
        self.rank = rank
        interval = Swift.min(1, timeout / 4)
        let thread = Thread { [weak self] in
            while let self, self.check() { Thread.sleep(forTimeInterval: self.interval) }
        }
        thread.start()
    }

    static func now() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
    }

    /// Collective over `communicator`: maps the node's heartbeats (a small slice per rank in node
    /// shared memory), so that a stall report names the rank the others wait for.
    /// Best effort: when the node cannot map it (a small /dev/shm) every rank goes on without.
    func shareHeartbeats(over communicator: Communicator) throws {
        let node = try communicator.nodeCommunicator()
        let memory: NodeSharedMemory
        do {
            memory = try node.mapNodeSharedMemory(bytesPerRank: 64)
        } catch is SharedMemoryError {
            return  // thrown on every rank of the node alike
        }
        memory.slice(of: memory.rank).assumingMemoryBound(to: Int64.self)[2] = Self.now()  // before the allgather
        var ranks = [Int](repeating: 0, count: node.size)
        try ranks.withUnsafeMutableBytes { all in
            try withUnsafeBytes(of: communicator.rank) { try node.allgather($0, into: all) }
        }
        lock.lock()
        heartbeats = (memory, ranks, communicator.size)
        lock.unlock()
    }

    /// Records progress: the rank is now at `step`, doing `phase` (e.g. the collective it enters).
    /// Every rank makes the same calls in the same order, so their counts compare; `counts: false`
    /// (a test-only stall) leaves the count.
    func progress(step: Int, _ phase: String, counts: Bool = true) {
        lock.lock()
        defer { lock.unlock() }
        (self.step, self.phase, lastProgress) = (step, phase, Date())
        guard counts, let heartbeats else { return }
        progressCount += 1
        let slot = heartbeats.memory.slice(of: heartbeats.memory.rank).assumingMemoryBound(to: Int64.self)
        (slot[0], slot[1]) = (progressCount, Int64(step))
    }

    /// Who this rank waits for, from the heartbeats: the ranks of this node that are not running
    /// (their watchdog fell silent: stopped, or frozen), else those whose progress is behind.
    private func waitedFor(_ heartbeats: (memory: NodeSharedMemory, worldRanks: [Int], worldSize: Int)?) -> String {
        guard let (memory, worldRanks, worldSize) = heartbeats else { return "" }
        let slots = (0..<memory.ranks).map { memory.slice(of: $0).assumingMemoryBound(to: Int64.self) }
        let now = Self.now(), silence = Int64(3 * interval * 1e9)
        let frozen = slots.indices.filter { $0 != memory.rank && now - slots[$0][2] > silence }
        if !frozen.isEmpty {
            return "; it waits for "
                + frozen.map {
                    "rank \(worldRanks[$0]), which is not running (silent for \((now - slots[$0][2]) / 1_000_000_000) s at step \(slots[$0][1]): stopped, e.g. by SIGSTOP, or frozen)"
                }.joined(separator: ", ")
        }
        let mine = slots[memory.rank][0]
        let behind = slots.indices.filter { slots[$0][0] < mine }
        if behind.isEmpty {
            return worldSize > memory.ranks
                ? "; no rank of this node is behind it, so the one it waits for is on another node"
                : "; no rank is behind it (they wait for each other)"
        }
        return "; it waits for "
            + behind.map { "rank \(worldRanks[$0]), which stopped making progress at step \(slots[$0][1])" }.joined(
                separator: ", ")
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
        let now = Self.now()
        let gap = Double(now - lastCheck) / 1e9
        lastCheck = now
        lock.lock()
        let heartbeats = self.heartbeats
        lock.unlock()
        if let heartbeats { heartbeats.memory.slice(of: heartbeats.memory.rank).assumingMemoryBound(to: Int64.self)[2] = now }
        if idle > timeout {
            let line =
                "autorate: error on rank \(rank): no progress for \(Int(idle)) s (--stall-timeout \(Int(timeout))) at step \(step), "
                + "waiting in \(phase)\(waitedFor(heartbeats))"
                + (gap > 3 * interval ? "; this rank itself was not running for \(Int(gap)) s" : "") + "; ending the job\n"
            FileHandle.standardError.write(Data(line.utf8))
            exit(3)
        }
        return true
    }
}
