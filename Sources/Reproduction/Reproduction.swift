import Plots
import Training
import Foundation

/// `autorate repro`: runs the reproduction table of docs/theory.md and writes `report.md`, the plots
/// (SVG) and their data (CSV) to one directory.
public enum Reproduction {
    public static let all = (1...12).map { "E\($0)" }

    public struct Options: Sendable {
        public var quick = false
        public var out = "repro"
        /// Experiment ids to run; nil: all.
        public var only: Set<String>? = nil
        /// This executable, launched under mpirun for the multi-rank experiments.
        public var executable: String
        public init(executable: String) { self.executable = executable }
    }

    /// Runs the experiments, printing a line per experiment as it ends; returns the ids that failed.
    public static func run(_ options: Options, log: (String) -> Void) throws -> [String] {
        let fm = FileManager.default
        try fm.createDirectory(atPath: "\(options.out)/data", withIntermediateDirectories: true)
        let save: (String, LinePlot) throws -> String = { name, plot in
            try plot.svg.write(toFile: "\(options.out)/\(name).svg", atomically: true, encoding: .utf8)
            var csv = "series,x,y\n"
            for s in plot.series { for p in s.points { csv += "\"\(s.name)\",\(p.x),\(p.y)\n" } }
            try csv.write(toFile: "\(options.out)/data/\(name).csv", atomically: true, encoding: .utf8)
            return "\(name).svg"
        }
        let experiments = Experiments(
            quick: options.quick, mpi: MPIJob(executable: options.executable, directory: "\(options.out)/data"), save: save)
        let wanted = options.only ?? Set(all)
        var outcomes: [Outcome] = []
        func record(_ outcome: Outcome, _ seconds: Double) {
            outcomes.append(outcome)
            log("\(outcome.id) \(outcome.passed ? "PASS" : "FAIL") (\(Int(seconds.rounded())) s): \(outcome.figure)")
        }
        let steps: [(ids: [String], run: () throws -> [Outcome])] = [
            (["E1"], { [try experiments.e1()] }),
            (["E2"], { [try experiments.e2()] }),
            (
                ["E3", "E4"],
                {
                    let s = try experiments.sweep(); return [s.e3, s.e4]
                }
            ),
            (["E5"], { [try experiments.e5()] }),
            (["E6"], { [try experiments.e6()] }),
            (["E7"], { [try experiments.e7()] }),
            (["E8"], { [try experiments.e8()] }),
            (["E9"], { [try experiments.e9()] }),
            (["E10"], { [try experiments.e10()] }),
            (["E11"], { [try experiments.e11()] }),
            (["E12"], { [try experiments.e12()] }),
        ]
        for step in steps where !wanted.isDisjoint(with: step.ids) {
            let clock = Stopwatch()
            let results = try step.run().filter { wanted.contains($0.id) }
            for r in results { record(r, clock.seconds / Double(results.count)) }
        }
        try report(outcomes, options).write(toFile: "\(options.out)/report.md", atomically: true, encoding: .utf8)
        return outcomes.filter { !$0.passed }.map(\.id)
    }

    static func report(_ outcomes: [Outcome], _ options: Options) -> String {
        var text = """
            # Reproduction of Arora, Li & Lyu (ICLR 2019): experiments E1-E12 of docs/theory.md

            Written by `autorate repro\(options.quick ? " --quick" : "")`. In-process experiments run a
            batch-normalized MLP (16-32-32-32-4, BN head: every weight and hidden BN is scale-invariant)
            on 256 synthetic samples through the same `Trainer` step as `autorate train`; E2's multi-rank
            runs and E10 launch `autorate train` under mpirun. Raw data: `data/` (CSV per plot, JSON
            Lines per mpirun job).

            | id | what was run | measured | criterion | result |
            |---|---|---|---|---|

            """
        func cell(_ s: String) -> String { s.replacingAll("|", "\\|") }  // a bare | would end the cell
        for o in outcomes {
            text +=
                "| \(o.id) | \(cell(o.ran)) | \(cell(o.figure)) | \(cell(o.criterion)) | **\(o.passed ? "PASS" : "FAIL")** |\n"
        }
        text += "\n## Commands\n\nRun from the repository root after `swift build -c release` (or use `launch/repro`).\n\n"
        for o in outcomes {
            text += "- **\(o.id)**\n" + o.commands.map { "  - `\($0)`\n" }.joined()
        }
        let notes = outcomes.filter { !$0.note.isEmpty }
        if !notes.isEmpty {
            text += "\n## Notes\n\n" + notes.map { "- **\($0.id)**: \($0.note)" }.joined(separator: "\n") + "\n"
        }
        text += "\n## Plots\n\n"
        for o in outcomes {
            for plot in o.plots { text += "![\(o.id)](\(plot))\n\n" }
        }
        return text
    }
}
