import Plots
import Training
/// The speedup and efficiency plots of a scaling sweep (`launch/bench-scaling`), drawn from the
/// CSV rows `autorate bench --csv` appends (`BenchmarkResult.csvHeader`).
public enum ScalingPlot {
    public struct Row: Sendable {
        public let model: String
        public let scaling: String
        public let ranks: Int
        public let samplesPerSecond: Double
        /// Against the one-rank baseline timed in the same run (nil at one rank).
        public let inRunEfficiency: Double?
    }

    /// - Throws: `TrainingError.configuration` naming the file and line of a malformed row.
    public static func parse(_ text: String, path: String) throws -> [Row] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        guard let header = lines.first?.split(separator: ",", omittingEmptySubsequences: false).map(String.init) else {
            throw TrainingError.configuration("--csv \(path): the file is empty; write it with autorate bench --csv")
        }
        func column(_ name: String) throws -> Int {
            guard let k = header.firstIndex(of: name) else {
                throw TrainingError.configuration(
                    "--csv \(path): no '\(name)' column; the header must be autorate bench's: \(BenchmarkResult.csvHeader)")
            }
            return k
        }
        let (m, s, r, t, e) = try (
            column("model"), column("scaling"), column("ranks"), column("samples_per_s"), column("scaling_efficiency")
        )
        return try lines.dropFirst().enumerated().compactMap { index, line in
            let f = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            if f == header { return nil }  // a header repeated by appending runs
            guard f.count == header.count, let ranks = Int(f[r]), ranks >= 1, let rate = Double(f[t]), rate > 0 else {
                throw TrainingError.configuration(
                    "--csv \(path): line \(index + 2) is not a row of \(header.count) fields with ranks >= 1 and samples_per_s > 0: \(line)"
                )
            }
            return Row(model: f[m], scaling: f[s], ranks: ranks, samplesPerSecond: rate, inRunEfficiency: Double(f[e]))
        }
    }

    /// Per (model, scaling): the median samples/s at each rank count, against the one-rank figure.
    /// Speedup = rate(P) / rate(1); efficiency = speedup / P (both modes: throughput per rank).
    /// A (model, scaling) pair without a one-rank row is left out and named in `skipped`.
    public static func plots(_ rows: [Row]) -> (speedup: LinePlot, efficiency: LinePlot, table: String, skipped: [String]) {
        var speedup = LinePlot(title: "Speedup over one rank", xLabel: "ranks", yLabel: "samples/s over one rank's")
        var efficiency = LinePlot(title: "Scaling efficiency", xLabel: "ranks", yLabel: "speedup / ranks")
        speedup.integerX = true
        efficiency.integerX = true
        var table = "model,scaling,ranks,samples_per_s,speedup,efficiency,in_run_efficiency\n"
        let keys = Set(rows.map { "\($0.model) \($0.scaling)" }).sorted()
        var largest = 1
        var skipped: [String] = []
        for key in keys {
            let mine = rows.filter { "\($0.model) \($0.scaling)" == key }
            func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
            let counts = Set(mine.map(\.ranks)).sorted()
            largest = Swift.max(largest, counts.last ?? 1)
            guard counts.first == 1 else {  // no one-rank run: nothing to compare with
                skipped.append(key)
                continue
            }
            let base = median(mine.filter { $0.ranks == 1 }.map(\.samplesPerSecond))
            var points: [(x: Double, y: Double)] = [], efficiencies: [(x: Double, y: Double)] = [],
                inRun: [(x: Double, y: Double)] = []
            for p in counts {
                let rate = median(mine.filter { $0.ranks == p }.map(\.samplesPerSecond))
                points.append((Double(p), rate / base))
                efficiencies.append((Double(p), rate / base / Double(p)))
                let runs = mine.filter { $0.ranks == p }.compactMap(\.inRunEfficiency)
                if !runs.isEmpty { inRun.append((Double(p), median(runs))) }
                let inRunText = runs.isEmpty ? "" : String(cFormat: "%.3f", median(runs))
                table +=
                    "\(key.replacingAll(" ", ",")),\(p),\(String(cFormat: "%.1f,%.3f,%.3f", rate, rate / base, rate / base / Double(p))),\(inRunText)\n"
            }
            speedup.series.append(.init(key, points))
            efficiency.series.append(.init(key, efficiencies))
            if !inRun.isEmpty { efficiency.series.append(.init("\(key), vs in-run baseline", [(1, 1)] + inRun, dashed: true)) }
        }
        speedup.series.append(.init("ideal", [(1, 1), (Double(largest), Double(largest))], dashed: true))
        efficiency.series.append(.init("ideal", [(1, 1), (Double(largest), 1)], dashed: true))
        return (speedup, efficiency, table, skipped)
    }
}
