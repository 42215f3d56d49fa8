import Foundation
import XCTest

/// Runs the built executables, directly or under mpirun, the way a user would.
enum Launcher {
    /// The build products directory (`swift build --show-bin-path`): on Linux, the test bundle's
    /// `Bundle.main.bundleURL`; `swift test` builds the executables there too.
    static var binDirectory: URL { Bundle.main.bundleURL }

    static func executable(_ name: String) -> String { binDirectory.appendingPathComponent(name).path }

    struct Result {
        let status: Int32
        let output: String
        let seconds: Double
    }

    /// The environment for a child: without the OMPI_/PMIX_/ORTE_/OPAL_ variables an in-process
    /// MPI_Init may have added (a child mpirun that inherits them exits 1 silently), but keeping the
    /// two that let root run mpirun.
    static var childEnvironment: [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { key, _ in
            !["OMPI_", "PMIX_", "ORTE_", "OPAL_"].contains { key.hasPrefix($0) }
        }
        if getuid() == 0 {
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        }
        env["OPENBLAS_NUM_THREADS"] = "1"
        return env
    }

    /// Runs `arguments[0]` with the rest, stdout and stderr merged (read concurrently by the pipe
    /// reader so a chatty child cannot block), killed after `timeout` seconds.
    static func run(_ arguments: [String], timeout: Double = 120, environment: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.environment = childEnvironment.merging(environment) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let collected = Collected()
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if !data.isEmpty { collected.append(data) }
        }
        let start = Date()
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        process.waitUntilExit()
        pipe.fileHandleForReading.readabilityHandler = nil
        collected.append(pipe.fileHandleForReading.readDataToEndOfFile())
        return Result(status: process.terminationStatus, output: collected.text, seconds: Date().timeIntervalSince(start))
    }

    /// `mpirun -np 1 autorate A... : -np 1 autorate B...`: one rank per argument list (MPMD), so
    /// that ranks can be given different flags.
    static func mpirunPerRank(_ perRank: [[String]], timeout: Double = 60) throws -> Result {
        let apps = perRank.map { ["-np", "1", "--bind-to", "none", executable("autorate")] + $0 }
        return try run(["mpirun"] + apps.joined(separator: [":"]), timeout: timeout)
    }

    /// `mpirun -np N [--oversubscribe] executable args...`, with `environment` added to the
    /// child environment (the ranks on this host inherit mpirun's).
    static func mpirun(_ np: Int, _ name: String, _ args: [String], timeout: Double = 120, environment: [String: String] = [:])
        throws -> Result
    {
        var command = ["mpirun", "-np", "\(np)", "--bind-to", "none"]
        if np > 2 { command.append("--oversubscribe") }
        return try run(command + [executable(name)] + args, timeout: timeout, environment: environment)
    }

    final class Collected: @unchecked Sendable {
        // @unchecked: every access holds the lock.
        private let lock = NSLock()
        private var data = Data()
        func append(_ d: Data) { lock.lock(); data.append(d); lock.unlock() }
        var text: String { lock.lock(); defer { lock.unlock() }; return String(decoding: data, as: UTF8.self) }
    }

    /// A fresh temporary directory.
    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("autorate-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// The JSON objects of a metrics file.
    static func metrics(_ path: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try text.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
    }

    /// Loss per logged step of a metrics file.
    static func losses(_ path: String) throws -> [Double] {
        try metrics(path).compactMap { $0["event"] == nil ? $0["loss"] as? Double : nil }
    }
}
