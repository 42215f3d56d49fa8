import Training
import Foundation

/// Runs `autorate train` under `mpirun -np P` for the multi-rank experiments (E2, E10) and reads
/// back its metrics file: the same binary, the same data-parallel step as a user's job.
struct MPIJob {
    /// This executable (`autorate`), run by mpirun on every rank.
    let executable: String
    let directory: String

    /// The command line, as the report prints it: run from the repository root, so paths under the
    /// current directory are shown relative to it (no one machine's absolute path in the report).
    func commandLine(np: Int, _ arguments: [String]) -> String {
        let here = FileManager.default.currentDirectoryPath + "/"
        let shown = arguments.map { $0.hasPrefix(here) ? String($0.dropFirst(here.count)) : $0 }
        return "mpirun -np \(np) --oversubscribe --bind-to none .build/release/autorate " + shown.joined(separator: " ")
    }

    /// Runs the job and returns its metrics records (one JSON object per line).
    /// - Throws: `TrainingError.configuration` naming the command and its output when it fails.
    func train(np: Int, name: String, _ arguments: [String]) throws -> (command: String, records: [[String: Any]]) {
        let metrics = "\(directory)/\(name).jsonl"
        try? FileManager.default.removeItem(atPath: metrics)
        let args = ["train", "--quiet", "--log-every", "1", "--metrics", metrics] + arguments
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["mpirun", "-np", "\(np)", "--oversubscribe", "--bind-to", "none", executable] + args
        // A process started by mpirun carries OMPI_/PMIX_ variables; a nested mpirun would take
        // them for its own and hang, so they are dropped here.
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("OMPI_") && !$0.key.hasPrefix("PMIX_") }
        if getuid() == 0 {
            environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        }
        environment["OPENBLAS_NUM_THREADS"] = "1"
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let command = commandLine(np: np, args)
        guard process.terminationStatus == 0 else {
            throw TrainingError.configuration("repro: `\(command)` failed with status \(process.terminationStatus):\n\(text)")
        }
        let lines = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n")
        let records = try lines.map { line -> [String: Any] in
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw TrainingError.configuration("repro: \(metrics) holds a line that is not a JSON object")
            }
            return object
        }
        return (command, records)
    }
}
