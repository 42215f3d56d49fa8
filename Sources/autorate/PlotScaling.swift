import ArgumentParser
import Foundation
import Benchmarks
import Training

struct PlotScaling: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plot-scaling",
        abstract: "Draw speedup.svg and efficiency.svg from the CSV rows of autorate bench --csv (launch/bench-scaling).")

    @Option(help: "The CSV that autorate bench --csv appended to.")
    var csv: String
    @Option(help: "Directory for speedup.svg, efficiency.svg and scaling.csv (the table behind them).")
    var out: String

    func run() throws {
        guard let data = FileManager.default.contents(atPath: csv), let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("--csv \(csv): cannot be read (missing, unreadable or not UTF-8)")
        }
        let (speedup, efficiency, table, skipped) = try ScalingPlot.plots(ScalingPlot.parse(text, path: csv))
        for key in skipped {
            FileHandle.standardError.write(
                Data("plot-scaling: \(key) has no np=1 row in \(csv); it is left out (speedup is against one rank)\n".utf8))
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        for (name, content) in [("speedup.svg", speedup.svg), ("efficiency.svg", efficiency.svg), ("scaling.csv", table)] {
            try content.write(toFile: (out as NSString).appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        print(table, terminator: "")
        print("plot-scaling: wrote \(out)/speedup.svg, \(out)/efficiency.svg and \(out)/scaling.csv")
    }
}
