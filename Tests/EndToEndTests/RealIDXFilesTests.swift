import Foundation
import XCTest

/// The IDX reader on files nobody here made: Fashion-MNIST as Debian's `dataset-fashion-mnist`
/// packs it (MNIST's format and four gzip file names; `launch/test` installs it as root, and the
/// test skips where it is missing). `AUTORATE_REAL_IDX_DIR` points at another copy, e.g. real MNIST.
final class RealIDXFilesTests: XCTestCase {
    /// Two ranks train the MLP for one epoch through `--data mnist:DIR` and `--data fashion-mnist:DIR`:
    /// every sample of both splits is read (60,000 and 10,000), standardized, and learned from (the
    /// test accuracy is far above the 10% of guessing; an MLP reaches about 86% after one epoch).
    func testTrainingOnRealIDXFiles() throws {
        let directory = ProcessInfo.processInfo.environment["AUTORATE_REAL_IDX_DIR"] ?? "/usr/share/datasets/fashion-mnist"
        let names = [
            "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        ]
        let present = names.allSatisfy { FileManager.default.fileExists(atPath: "\(directory)/\($0)") }
        try XCTSkipUnless(present, "no IDX files in \(directory); install them with: apt-get install -y dataset-fashion-mnist")
        for kind in ["mnist", "fashion-mnist"] {
            let run = try Launcher.mpirun(
                2, "autorate", ["train", "--data", "\(kind):\(directory)", "--widths", "784,256,10", "--epochs", "1", "--quiet"])
            XCTAssertEqual(run.status, 0, run.output)
            XCTAssertTrue(run.output.contains("(60000 train / 10000 test samples of 28x28x1 images"), run.output)
            XCTAssertTrue(run.output.contains("on 10000 samples"), run.output)
            let accuracy = try XCTUnwrap(
                run.output.firstMatch(of: /test accuracy ([0-9.]+)%/).flatMap { Double($0.1) }, run.output)
            XCTAssertGreaterThan(accuracy, 75, "\(kind): \(run.output)")
        }
    }
}
