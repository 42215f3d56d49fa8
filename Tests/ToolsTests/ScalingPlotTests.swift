import XCTest
import Benchmarks

/// `autorate plot-scaling`: speedup and efficiency from the rows `autorate bench --csv` appends.
final class ScalingPlotTests: XCTestCase {
    func row(_ model: String, _ mode: String, _ ranks: Int, _ rate: Double, _ inRun: String = "") -> String {
        let fields = BenchmarkResult.csvHeader.split(separator: ",").map { name -> String in
            switch name {
            case "model": model
            case "scaling": mode
            case "ranks": "\(ranks)"
            case "samples_per_s": "\(rate)"
            case "scaling_efficiency": inRun
            default: "0"
            }
        }
        return fields.joined(separator: ",")
    }

    func testSpeedupAndEfficiencyAreMediansAgainstOneRank() throws {
        let text = [
            BenchmarkResult.csvHeader, row("mlp", "strong", 1, 100), row("mlp", "strong", 2, 150, "0.8"),
            BenchmarkResult.csvHeader,  // a second run appended its own header
            row("mlp", "strong", 1, 120), row("mlp", "strong", 1, 110), row("mlp", "strong", 2, 190, "0.9"),
            row("mlp", "strong", 2, 170, "0.85"), row("vgg", "weak", 1, 10), row("vgg", "weak", 4, 36),
            row("cnn", "weak", 2, 50),
        ].joined(separator: "\n")
        let (speedup, efficiency, table, skipped) = ScalingPlot.plots(try ScalingPlot.parse(text, path: "b.csv"))
        XCTAssertEqual(skipped, ["cnn weak"], "no one-rank row: left out and named")
        let mlp = try XCTUnwrap(speedup.series.first { $0.name == "mlp strong" })
        XCTAssertEqual(mlp.points.map(\.x), [1, 2])
        XCTAssertEqual(mlp.points[1].y, 170.0 / 110.0, accuracy: 1e-12, "median 170 over median 110")
        let vgg = try XCTUnwrap(efficiency.series.first { $0.name == "vgg weak" })
        XCTAssertEqual(vgg.points[1].y, 36.0 / 10.0 / 4.0, accuracy: 1e-12)
        XCTAssertNotNil(efficiency.series.first { $0.name == "mlp strong, vs in-run baseline" })
        XCTAssertTrue(table.contains("mlp,strong,2,170.0,1.545,0.773,0.850"), table)
        XCTAssertTrue(speedup.svg.contains("<svg"))
    }

    func testAMalformedRowNamesTheFileAndLine() {
        let text = BenchmarkResult.csvHeader + "\n" + row("mlp", "strong", 1, 100) + "\nmlp,strong,two\n"
        XCTAssertThrowsError(try ScalingPlot.parse(text, path: "b.csv")) { error in
            XCTAssertTrue("\(error)".contains("b.csv: line 3"), "\(error)")
        }
        XCTAssertThrowsError(try ScalingPlot.parse("model,ranks\n", path: "x.csv")) { error in
            XCTAssertTrue("\(error)".contains("no 'scaling' column"), "\(error)")
        }
    }
}
