import ArgumentParser
import Collectives
import Foundation

@main
struct Autorate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "autorate",
        abstract: "Data-parallel training of batch-normalized networks over MPI with the scale-invariant SGD update.",
        discussion: """
            Run under mpirun for several ranks (see launch/train), or directly for one rank.
            Scale-invariant (SI) parameters, the weights feeding a BN layer, train with --lr-si; any
            fixed value works (Arora, Li & Lyu, ICLR 2019). Scale-variant (SV) ones use --lr-sv.
            """,
        subcommands: [Train.self, Eval.self, Export.self, Bench.self, PlotScaling.self, Repro.self],
        defaultSubcommand: Train.self
    )

    /// ArgumentParser's `main`, with each message written in one `write` (under mpirun every rank
    /// rejects a bad flag at once, and messages written in pieces interleave character by
    /// character) and, for errors, the rank that the launcher's environment names (MPI has not
    /// started yet).
    static func main() {
        let failure: Error
        var running: ParsableCommand.Type? = nil
        do {
            try FlagSuggestions.check(Array(CommandLine.arguments.dropFirst()))
            var command = try parseAsRoot()
            running = type(of: command)
            try command.run()
            return
        } catch {
            failure = error
        }
        let code = exitCode(for: failure)
        var message = fullMessage(for: failure)
        // a subcommand's own error (a file it cannot use): its message, not the top-level usage
        if let running, let error = failure as? ValidationError {
            message = "Error: \(error.message)\nSee 'autorate \(running._commandName) --help'."
        }
        // empty: an ExitCode thrown after the error was reported (by the rank that met it)
        guard !message.isEmpty else { Foundation.exit(code.rawValue) }
        if code != .success, let rank = launcherRank() {
            // in the form of the errors after MPI started
            let text = message.hasPrefix("Error: ") ? String(message.dropFirst("Error: ".count)) : message
            RankConsole(program: "autorate", rank: rank.rank, size: rank.size).error("before MPI started: " + text)
        } else {
            writeAll(code == .success ? 1 : 2, message + "\n")
        }
        Foundation.exit(code.rawValue)
    }

    /// This process's rank and the rank count from Open MPI's or PMIx's environment, when launched
    /// with more than one rank.
    private static func launcherRank() -> (rank: Int, size: Int)? {
        let environment = ProcessInfo.processInfo.environment
        guard let rank = (environment["OMPI_COMM_WORLD_RANK"] ?? environment["PMIX_RANK"]).flatMap({ Int($0) }),
            let size = (environment["OMPI_COMM_WORLD_SIZE"] ?? environment["SLURM_NTASKS"]).flatMap({ Int($0) }), size > 1
        else { return nil }
        return (rank, size)
    }
}
