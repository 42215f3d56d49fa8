import Collectives
import Data
import Layers
import TensorCore
#if canImport(Glibc)
    import Glibc
#endif

extension Trainer {
    /// Collective: every rank hashes each field of its configuration, its network's layout and its
    /// data; a field that differs between ranks stops every rank, naming the field and the ranks.
    func agreeOnConfiguration() throws {
        let layout = (model.parameters.layout.tensors + model.bufferLayout.tensors).map { "\($0.name)\($0.shape)" }.joined(
            separator: ",")
        let fields =
            configuration.trajectoryFields + [
                ("the network layout", layout), ("--steps/--epochs", "\(totalSteps)"),
                ("--checkpoint-dir", configuration.checkpointDirectory ?? "none"),
                ("--checkpoint-every", "\(configuration.checkpointEvery)"),
                ("--resume", configuration.resume.map { "\($0)" } ?? "none"), ("--max-bad-steps", "\(configuration.maxBadSteps)"),
                // logging steps reduce the window's sums over ranks
                ("--log-every", "\(logEvery)"),
                // so do evaluations (and --keep-best's broadcast of the best score at start-up)
                ("--eval-every", configuration.evalEvery.map(String.init) ?? "none"),
                // the watchdog's heartbeats are mapped by a collective
                ("--stall-timeout", configuration.stallTimeout > 0 ? "on" : "off"),
                ("--keep-best", "\(configuration.keepBest)"),
                ("--bucket-mb", "\(configuration.bucketBytes)"),
                // ranks that chose different plans would enter different collectives
                ("--intra-node", configuration.intraNode.rawValue),
                ("--weight-gradients", configuration.weightGradients.rawValue), ("--overlap", configuration.overlap.rawValue),
                // a rank that balances enters an allgather every step that the others would not
                ("--balance", configuration.balance.rawValue),
                // a different nonblocking allreduce algorithm on one rank would hang the others
                (
                    "OMPI_MCA_coll_libnbc_iallreduce_algorithm",
                    getenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm").map { String(cString: $0) } ?? "unset"
                ),
                ("--timeline", configuration.timelinePath.map { "\($0) \(configuration.timelineWindow)" } ?? "none"),
                ("the training data", dataFingerprint(splits.train)), ("the test data", dataFingerprint(splits.test)),
            ]
        let hashes = fields.map { fnv1a($0.0 + "=" + $0.1) }
        let all = try communicator.allgather(fnv1a(hashes.map(String.init).joined()))
        guard all.contains(where: { $0 != all[0] }) else { return }
        for (field, hash) in zip(fields, hashes) {
            let gathered = try communicator.allgather(hash)
            let differing = gathered.indices.filter { gathered[$0] != gathered[0] }
            if !differing.isEmpty {
                throw TrainingError.configuration(
                    "the ranks run different configurations: \(field.0) differs between rank 0 (\(field.0 == "the network layout" ? "its layout" : field.1)) and rank(s) \(differing.map(String.init).joined(separator: ", ")); every rank must get the same flags and data"
                )
            }
        }
    }

    /// Count, shape, every label and a sample of the feature values.
    private func dataFingerprint(_ data: Dataset) -> String {
        let stride = Swift.max(1, data.features.count / 4096)
        let sample = Swift.stride(from: 0, to: data.features.count, by: stride).map { data.features[$0].bitPattern }
        return
            "\(data.count)x\(data.dimension)/\(data.classes): \(fnv1a(data.labels.map(String.init).joined(separator: ","))) \(fnv1a(sample.map(String.init).joined()))"
    }

    /// `--debug-fault nan-gradient` (test-only, 1-based step): after backward, before the sum over ranks.
    func injectGradientFault(_ t: Int) {
        guard let f = configuration.debugNaNGradient, f.step == t + 1, f.rank == communicator.rank else { return }
        model.parameters.gradients.pointer[model.parameters.layout.count - 1] = .nan
    }

    /// The test-only faults of `--debug-fault` nan-input, stall and kill (1-based steps).
    func injectFaults(_ t: Int, _ x: Matrix) {
        if let f = configuration.debugKill, f.step == t + 1, f.rank == communicator.rank { kill(getpid(), SIGKILL) }
        if let f = configuration.debugNaN, f.step == t + 1, f.rank == communicator.rank, x.count > 0 { x.base[0] = .nan }
        if let f = configuration.debugStall, f.step == t + 1, f.rank == communicator.rank {
            watchdog?.progress(step: t + 1, "a test-only stall (--debug-fault stall)", counts: false)
            while true { sleep(3600) }
        }
        if let f = configuration.debugSlowRank, f.rank == communicator.rank {
            usleep(UInt32(Swift.min(f.microsecondsPerSample * x.rows, 10_000_000)))
        }
    }
}

/// FNV-1a 64 of a string's UTF-8 bytes.
func fnv1a(_ text: String) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in text.utf8 { hash = (hash ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return hash
}
