import Foundation
import XCTest

/// The launch scripts' opt-in build for one CPU (`AUTORATE_TARGET_CPU`).
final class LaunchScriptTests: XCTestCase {
    /// The repository's launch/ folder, found from this file's place in it (Tests/EndToEndTests/).
    static let launch = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("launch")

    /// A value that is no CPU name stops launch/train before it builds or starts mpirun: exit 2,
    /// naming the variable, the value and what is accepted.
    func testABadTargetCPUStopsBeforeTheBuild() throws {
        let run = try Launcher.run(
            ["AUTORATE_TARGET_CPU=x86;rm", "bash", Self.launch.appendingPathComponent("train").path], timeout: 30)
        XCTAssertEqual(run.status, 2, run.output)
        XCTAssertTrue(run.output.contains("AUTORATE_TARGET_CPU='x86;rm' is not a CPU name"), run.output)
        XCTAssertTrue(run.output.contains("native or an LLVM CPU name"), run.output)
        XCTAssertFalse(run.output.contains("Building"), run.output)
    }

    /// The Slurm script runs the binary of the CPU's own build directory (a dry run prints it).
    func testSlurmScriptRunsTheTargetCPUBuild() throws {
        let script = Self.launch.appendingPathComponent("slurm.sbatch").path
        let portable = try Launcher.run(["SLURM_DRY_RUN=1", "bash", script], timeout: 30)
        XCTAssertEqual(portable.status, 0, portable.output)
        XCTAssertTrue(portable.output.contains("/.build/release/autorate train"), portable.output)
        let native = try Launcher.run(["SLURM_DRY_RUN=1", "AUTORATE_TARGET_CPU=znver4", "bash", script], timeout: 30)
        XCTAssertEqual(native.status, 0, native.output)
        XCTAssertTrue(native.output.contains("/.build-cpu-znver4/release/autorate train"), native.output)
    }
}
