import Foundation
import XCTest

/// What a hostile new user found: each fault gives a clear message naming the flag or file, and
/// nothing is lost or reported as a success that was not.
final class HostileUserTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    func autorate(_ args: [String], timeout: Double = 60) throws -> Launcher.Result {
        try Launcher.run([Launcher.executable("autorate")] + args, timeout: timeout)
    }

    /// A metrics file that cannot be written stops the run (also under mpirun, every rank).
    func testMetricsWriteErrorStopsTheRun() throws {
        let alone = try autorate(["train", "--steps", "100", "--log-every", "5", "--metrics", "/dev/full", "--quiet"])
        XCTAssertNotEqual(alone.status, 0, alone.output)
        XCTAssertTrue(
            alone.output.contains("--metrics /dev/full: a record could not be written (No space left on device)"), alone.output)
        let ranks = try Launcher.mpirun(
            2, "autorate", ["train", "--steps", "100", "--metrics", "/dev/full", "--quiet"], timeout: 60)
        XCTAssertNotEqual(ranks.status, 0, ranks.output)
        XCTAssertLessThan(ranks.seconds, 30, ranks.output)
        XCTAssertTrue(ranks.output.contains("could not be written"), ranks.output)
    }

    /// A checkpoint directory that cannot be made fails before the first step, not at step 1000.
    func testCheckpointDirectoryCheckedBeforeTheFirstStep() throws {
        let blocker = path("file")
        try Data("x".utf8).write(to: URL(fileURLWithPath: blocker))
        let run = try Launcher.mpirun(
            2, "autorate", ["train", "--steps", "3000", "--checkpoint-dir", blocker + "/ck"], timeout: 60)
        XCTAssertEqual(run.status, 1, run.output)
        XCTAssertTrue(run.output.contains("--checkpoint-dir \(blocker)/ck"), run.output)
        XCTAssertFalse(run.output.contains("step 150/3000"), "it trained first:\n\(run.output)")
        XCTAssertLessThan(run.seconds, 20, run.output)
    }

    /// BN over a batch of one normalizes nothing: refused, naming the flag and the smallest value.
    func testBatchNormBatchOfOneIsRefused() throws {
        let one = try autorate(["train", "--global-batch", "1", "--steps", "5"])
        XCTAssertEqual(one.status, 1, one.output)
        XCTAssertTrue(one.output.contains("--global-batch 1 gives a BN layer 1 value per channel"), one.output)
        XCTAssertTrue(one.output.contains("use --global-batch 2 or more"), one.output)
        let local = try Launcher.mpirun(2, "autorate", ["train", "--global-batch", "3", "--bn", "local", "--steps", "5"])
        XCTAssertEqual(local.status, 1, local.output)
        XCTAssertTrue(local.output.contains("use --global-batch 4 or more, or --bn sync"), local.output)
        // conv BN layers normalize every pixel of the batch: a batch of one image is enough
        let conv = try autorate(["train", "--model", "cnn", "--data", "synthetic-images", "--global-batch", "1", "--steps", "2"])
        XCTAssertEqual(conv.status, 0, conv.output)
    }

    /// A finished run resumed again says so and exits 0 without training (and without "nan").
    func testResumingAFinishedRunSaysItIsComplete() throws {
        let args = ["train", "--steps", "20", "--checkpoint-dir", path("ck"), "--quiet"]
        XCTAssertEqual(try autorate(args).status, 0)
        let again = try autorate(args + ["--resume", "auto"])
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(again.output.contains("already complete: the checkpoint holds all 20 steps"), again.output)
        XCTAssertFalse(again.output.contains("nan"), again.output)
    }

    /// A finished run extended with a larger --steps: the derived --log-every is not a difference.
    func testExtendingAFinishedRunWithTheDefaultLogEvery() throws {
        XCTAssertEqual(try autorate(["train", "--steps", "300", "--checkpoint-dir", path("ck"), "--quiet"]).status, 0)
        let more = try autorate(["train", "--steps", "400", "--checkpoint-dir", path("ck"), "--resume", "auto", "--quiet"])
        XCTAssertEqual(more.status, 0, more.output)
        XCTAssertTrue(more.output.contains("resuming from") && more.output.contains("at step 300 of 400"), more.output)
    }

    /// Ctrl-C: rank 0 says where the run was and which checkpoint holds its state.
    func testInterruptSaysTheStepAndTheCheckpoint() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Launcher.executable("autorate"))
        process.arguments = [
            "train", "--steps", "1000000", "--checkpoint-dir", path("ck"), "--checkpoint-every", "20", "--log-every", "1000",
        ]
        process.environment = Launcher.childEnvironment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        func checkpoints() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: path("ck"))) ?? []).filter {
                $0.hasPrefix("checkpoint-") && $0.hasSuffix(".safetensors")
            }
        }
        while Date() < deadline && checkpoints().isEmpty { usleep(50_000) }
        usleep(200_000)
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationReason, .uncaughtSignal, output)
        XCTAssertTrue(output.contains("autorate: interrupted (SIGINT) after step "), output)
        XCTAssertTrue(output.contains("the latest state is in \(path("ck"))/checkpoint-"), output)
        XCTAssertTrue(output.contains("continue with --resume auto"), output)
    }

    /// The names people bring from other trainers get the flag to use; a misspelt command its name;
    /// a subcommand's error its own help, not the top-level usage.
    func testSuggestionsAndSubcommandErrors() throws {
        for (args, expected) in [
            (["train", "--lr", "0.1"], "--lr is not a flag of autorate; use --lr-si"),
            (["train", "--batch-size=64"], "use --global-batch"),
            (["trian"], "'trian' is not a command; did you mean 'train'?"),
            (["export", "--checkpoint", path("missing"), "--out", path("w")], "See 'autorate export --help'."),
        ] {
            let run = try autorate(args)
            XCTAssertEqual(run.status, 64, run.output)
            XCTAssertTrue(run.output.contains(expected), "\(args): \(run.output)")
        }
        let export = try autorate(["export", "--checkpoint", path("missing"), "--out", path("w")])
        XCTAssertFalse(export.output.contains("Usage: autorate <subcommand>"), export.output)
    }

    /// The run that stops after non-finite updates names the group and the rate flag to lower: here a
    /// NaN put into the last gradient element (the head's bias, scale-variant), found by one rank.
    func testAllSkippedStopNamesTheGroup() throws {
        let run = try Launcher.mpirun(
            2, "autorate",
            ["train", "--steps", "10", "--quiet", "--debug-fault", "nan-gradient:3:1", "--max-bad-steps", "1"])
        XCTAssertEqual(run.status, 1, run.output)
        XCTAssertTrue(run.output.contains("(scale-variant, --lr-sv 0.1) in 1 consecutive steps"), run.output)
        XCTAssertTrue(run.output.contains("lower --lr-sv"), run.output)
    }

    /// A resumed run marks where it continues, so that a reader drops what the interrupted part
    /// logged after its checkpoint: the rule leaves each logged step once.
    func testResumeRecordSupersedesTheRepeatedSteps() throws {
        let metrics = path("m.jsonl")
        let args = [
            "train", "--steps", "40", "--quiet", "--log-every", "5", "--checkpoint-every", "10", "--metrics", metrics,
            "--checkpoint-dir", path("ck"),
        ]
        let killed = try Launcher.mpirun(2, "autorate", args + ["--debug-fault", "kill:27:1"], timeout: 60)
        XCTAssertNotEqual(killed.status, 0, killed.output)
        let resumed = try Launcher.mpirun(2, "autorate", args + ["--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        let records = try Launcher.metrics(metrics)
        let resume = try XCTUnwrap(records.firstIndex { $0["event"] as? String == "resume" })
        XCTAssertEqual(records[resume]["step"] as? Int, 20)
        XCTAssertTrue((records[resume]["checkpoint"] as? String)?.hasSuffix("checkpoint-000000020.safetensors") ?? false)
        let steps = records.compactMap { $0["event"] == nil ? $0["step"] as? Int : nil }
        XCTAssertEqual(steps.filter { $0 == 25 }.count, 2, "the interrupted part logged step 25 too")
        let kept = records.enumerated().filter { i, r in
            r["event"] == nil && !(i < resume && (r["step"] as? Int ?? 0) > 20)
        }.map { $0.element["step"] as! Int }
        XCTAssertEqual(kept, Array(stride(from: 5, through: 40, by: 5)))
    }

    /// A data directory this user cannot read is reported as such, not as missing files.
    func testUnreadableDataDirectoryIsNotMissing() throws {
        let dir = path("fm")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: dir + "/train-images-idx3-ubyte"))
        chmod(dir, 0o000)
        defer { chmod(dir, 0o755) }
        // root reads any directory: run as nobody where we are root
        let prefix = getuid() == 0 ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []
        try XCTSkipIf(prefix.isEmpty == false && !FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "no setpriv")
        let run = try Launcher.run(prefix + [Launcher.executable("autorate"), "train", "--data", "fashion-mnist:\(dir)"])
        XCTAssertNotEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("cannot be read: Permission denied"), run.output)
        XCTAssertFalse(run.output.contains("is missing"), run.output)
    }

    /// A network that cannot fit is refused before allocating, with the estimate and the flag that
    /// drives it (it died with "Fatal error: out of memory" and a backtrace); a run that fits prints
    /// its estimate at start-up.
    func testHugeWidthsAreRefusedWithTheEstimate() throws {
        let binary = Launcher.executable("autorate")
        let limited = try Launcher.run([
            "bash", "-c", "ulimit -v 4000000; exec \(binary) train --widths 32,100000000,10 --steps 2",
        ])
        XCTAssertEqual(limited.status, 1, limited.output)
        XCTAssertTrue(limited.output.contains("--widths 32,100000000,10 needs about"), limited.output)
        XCTAssertTrue(limited.output.contains("GiB more per rank"), limited.output)
        XCTAssertTrue(limited.output.contains("ulimit -v") || limited.output.contains("available memory"), limited.output)
        XCTAssertFalse(limited.output.contains("Fatal error"), limited.output)
        let fits = try autorate(["train", "--steps", "2"])
        XCTAssertEqual(fits.status, 0, fits.output)
        XCTAssertTrue(fits.output.contains("memory about "), fits.output)
    }

    /// A rank stopped by SIGSTOP: the others' watchdog ends the job and names the stopped rank.
    func testStallNamesTheStoppedRank() throws {
        let marker = path("stall.jsonl")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "mpirun", "-np", "2", "--bind-to", "none", Launcher.executable("autorate"), "train", "--steps", "1000000",
            "--quiet", "--stall-timeout", "10", "--log-every", "10", "--metrics", marker,
        ]
        process.environment = Launcher.childEnvironment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        // rank 1: the process whose command line holds the marker and whose environment says rank 1
        var stopped: pid_t = 0
        let deadline = Date().addingTimeInterval(30)
        while stopped == 0 && Date() < deadline {
            usleep(200_000)
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
                guard let pid = Int32(entry),
                    let command = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                    command.contains(marker), !command.hasPrefix("mpirun"),
                    let environment = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ")),
                    String(decoding: environment, as: UTF8.self).contains("OMPI_COMM_WORLD_RANK=1\u{0}")
                else { continue }
                stopped = pid
            }
        }
        guard stopped != 0 else {
            process.terminate()
            return XCTFail("rank 1 not found")
        }
        // training has started once a step is logged (the heartbeats are set up before the first step)
        while Date() < deadline
            && ((try? Launcher.metrics(marker))?.contains { $0["step"] != nil && $0["event"] == nil } ?? false) == false
        {
            usleep(100_000)
        }
        kill(stopped, SIGSTOP)
        let end = Date().addingTimeInterval(60)
        while process.isRunning && Date() < end { usleep(100_000) }
        if process.isRunning { process.terminate() }
        kill(stopped, SIGKILL)  // before reading: a stopped rank would hold the pipe open
        process.waitUntilExit()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertNotEqual(process.terminationStatus, 0, output)
        XCTAssertTrue(output.contains("error on rank 0: no progress for 1"), output)
        XCTAssertTrue(output.contains("it waits for rank 1, which is not running"), output)
    }
}
