import Foundation
import XCTest

/// `autorate repro --quick`: every experiment of docs/theory.md passes, and the report, plots and data
/// are written.
final class ReproTests: XCTestCase {
    func testQuickReproductionPassesAndWritesTheReport() throws {
        let directory = try Launcher.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let out = directory.appendingPathComponent("repro").path
        let result = try Launcher.run([Launcher.executable("autorate"), "repro", "--quick", "--out", out], timeout: 300)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertLessThan(result.seconds, 120, "--quick must finish in under 2 minutes")
        let report = try String(contentsOfFile: "\(out)/report.md", encoding: .utf8)
        for id in (1...12).map({ "E\($0)" }) {
            XCTAssertTrue(report.contains("| \(id) |"), "report lacks a row for \(id)")
        }
        XCTAssertEqual(report.components(separatedBy: "**PASS**").count - 1, 12, report)
        for plot in [
            "e2-norm-identity", "e3-sweep-bn", "e4-sweep-plain", "e6-effective-rate", "e7-gd-rate", "e8-sgd-rate",
            "e12-identity-violation",
        ] {
            let svg = try String(contentsOfFile: "\(out)/\(plot).svg", encoding: .utf8)
            XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("<path"), "\(plot).svg is not a drawn plot")
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(out)/data/\(plot).csv"), "\(plot).csv missing")
        }
    }

    /// An unknown experiment id is refused before anything runs, naming the flag and the value.
    func testBadOnlyIsRefused() throws {
        let result = try Launcher.run([Launcher.executable("autorate"), "repro", "--only", "E13"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.output.contains("--only E13"), result.output)
    }
}
