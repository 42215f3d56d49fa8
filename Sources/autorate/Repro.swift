import ArgumentParser
import Foundation
import Reproduction
import Training

struct Repro: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the paper's claims (experiments E1-E12 of docs/theory.md) and write a report with plots.",
        discussion: """
            Run it directly, not under mpirun: the multi-rank experiments (E2, E10) launch \
            `mpirun ... autorate train` themselves. Exits non-zero when an experiment fails its criterion.
            """)

    @Flag(help: "Shorter runs (under 2 minutes on 2 cores); the full table takes longer.")
    var quick = false
    @Option(help: "Directory for report.md, the plots (SVG) and their data (CSV).")
    var out = "repro"
    @Option(help: "Comma-separated experiment ids to run, e.g. E3,E7 (default: all).")
    var only: String?

    func validate() throws {
        if let only {
            let ids = only.split(separator: ",").map { $0.uppercased() }
            let unknown = ids.filter { !Reproduction.all.contains($0) }
            if ids.isEmpty || !unknown.isEmpty {
                throw ValidationError("--only \(only) is not accepted: use comma-separated ids from E1 to E12 (e.g. E3,E7).")
            }
        }
    }

    func run() throws {
        var options = Reproduction.Options(executable: Self.executablePath)
        options.quick = quick
        options.out = out
        options.only = only.map { Set($0.split(separator: ",").map { $0.uppercased() }) }
        let clock = Date()
        let failed = try Reproduction.run(options) { line in print("repro: \(line)") }
        print("repro: report written to \(out)/report.md in \(Int(Date().timeIntervalSince(clock))) s")
        if !failed.isEmpty {
            print("repro: FAILED: \(failed.joined(separator: ", "))")
            throw ExitCode(1)
        }
    }

    /// The absolute path of this executable, for mpirun to start on every rank.
    static var executablePath: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}
