import XCTest
import Plots
@testable import Reproduction

/// The pieces of `autorate repro` that decide PASS/FAIL on their own: the slope fit and the plot.
final class ReproHelpersTests: XCTestCase {
    func testLogLogSlopeFitsTheWindowOnly() {
        // y = 5 / x^2 up to x = 100, then a plateau: the tail window sees only the plateau
        let points = (1...1000).map { x -> (x: Double, y: Double) in (Double(x), x <= 100 ? 5 / Double(x * x) : 5e-4) }
        XCTAssertEqual(logLogSlope(points, window: 1...100), -2, accuracy: 1e-9)
        XCTAssertEqual(logLogSlope(points, window: 200...1000), 0, accuracy: 1e-9)
        XCTAssertTrue(logLogSlope(points, window: 2000...3000).isNaN, "no points: no slope")
    }

    func testPlotDrawsEverySeriesWithLegendAndLogTicks() {
        var plot = LinePlot(title: "t <1>", xLabel: "step", yLabel: "loss", logY: true)
        plot.series = [.init("a", [(1, 1), (2, 0.1), (3, 0.01)]), .init("b", [(1, 2), (2, .nan), (3, 0)], dashed: true)]
        let svg = plot.svg
        XCTAssertEqual(svg.components(separatedBy: "<path").count - 1, 2)
        XCTAssertTrue(svg.contains("t &lt;1&gt;"), "the title is escaped")
        XCTAssertTrue(svg.contains(">1e-2<") && svg.contains(">1e0<"), "log ticks are powers of ten")
        XCTAssertTrue(svg.contains("stroke-dasharray"))
        XCTAssertTrue(svg.contains(">a<") && svg.contains(">b<"), "legend")
    }
}
