import Foundation
import XCTest

/// What a new user reads first: `autorate train --help` groups its flags under titles and keeps to
/// the flags people use; the advanced ones are behind `--help-hidden`.
final class HelpTests: XCTestCase {
    func help(_ args: [String]) throws -> String {
        let result = try Launcher.run([Launcher.executable("autorate")] + args)
        XCTAssertEqual(result.status, 0, result.output)
        return result.output
    }

    func testTrainHelpGroupsItsFlags() throws {
        let text = try help(["train", "--help"])
        let titles = ["DATA:", "MODEL:", "OPTIMIZER:", "DISTRIBUTION:", "CHECKPOINTS:", "DIAGNOSTICS:"]
        let positions = titles.map { text.range(of: "\n\($0)\n")?.lowerBound }
        XCTAssertTrue(positions.allSatisfy { $0 != nil }, text)
        XCTAssertEqual(positions.compactMap { $0 }, positions.compactMap { $0 }.sorted(), "the groups in this order")
        // a flag's line starts with two spaces; wrapped help text is indented further
        let flags = text.split(separator: "\n").filter { $0.hasPrefix("  -") }
        XCTAssertLessThanOrEqual(flags.count, 36, flags.joined(separator: "\n"))  // 36th: --image-size
        XCTAssertGreaterThan(flags.count, 25, "the common flags are all there")
        for hidden in ["--overlap", "--bucket-mb", "--intra-node", "--weight-gradients", "--debug-fault"] {
            XCTAssertFalse(text.contains(hidden + " "), "\(hidden) is not a common flag")
        }
        let advanced = try help(["train", "--help-hidden"])
        for flag in ["--overlap", "--bucket-mb", "--intra-node", "--weight-gradients", "--stall-timeout"] {
            XCTAssertTrue(advanced.contains(flag), "\(flag) is listed by --help-hidden")
        }
        XCTAssertFalse(advanced.contains("--debug-fault"), "the test-only fault flag stays private")
    }

    /// Every command starts its help with one plain sentence.
    func testEveryCommandStartsWithOneSentence() throws {
        for command in ["train", "bench", "repro", "export", "plot-scaling"] {
            let first = try help([command, "--help"]).split(separator: "\n").first.map(String.init) ?? ""
            XCTAssertTrue(first.hasPrefix("OVERVIEW: "), "\(command): \(first)")
        }
    }
}
