import Foundation
import XCTest

/// Bad input under mpirun -np 2: a clear message naming the flag or file, a non-zero exit, and no
/// rank left waiting (mpirun returns within seconds).
final class BadInputTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func expectFailure(_ args: [String], mentions fragments: [String], file: StaticString = #filePath, line: UInt = #line) throws
    {
        let result = try Launcher.mpirun(2, "autorate", ["train", "--steps", "2"] + args, timeout: 60)
        XCTAssertNotEqual(result.status, 0, "should fail: \(args)\n\(result.output)", file: file, line: line)
        XCTAssertLessThan(result.seconds, 30, "mpirun took \(result.seconds) s to return", file: file, line: line)
        for fragment in fragments {
            XCTAssertTrue(
                result.output.contains(fragment), "output lacks '\(fragment)':\n\(result.output)", file: file, line: line)
        }
        // the exit after an error already reported prints nothing more (it once printed an empty
        // "before MPI started:" error on every rank)
        let empty = result.output.split(separator: "\n").filter {
            $0.trimmingCharacters(in: .whitespaces).hasSuffix("before MPI started:")
        }
        XCTAssertTrue(empty.isEmpty, "an error line without a message:\n\(result.output)", file: file, line: line)
    }

    /// Writes a small MNIST-format directory; `mutate` may damage it.
    func writeMNIST(
        images: Int = 20, labels: Int? = nil, labelValue: UInt8 = 3, imageMagic: UInt32 = 0x803,
        truncateImages: Bool = false, testImages: Int? = nil
    ) throws -> String {
        func header(_ values: [UInt32]) -> Data {
            Data(values.flatMap { v in (0..<4).map { UInt8((v >> (24 - 8 * $0)) & 0xFF) } })
        }
        for (prefix, n) in [("train", images), ("t10k", testImages ?? images / 2)] {
            var img = header([imageMagic, UInt32(n), 28, 28]) + Data(repeating: 7, count: n * 784)
            if truncateImages && prefix == "train" { img = img.prefix(img.count - 100) }
            try img.write(to: directory.appendingPathComponent("\(prefix)-images-idx3-ubyte"))
            let count = prefix == "train" ? (labels ?? n) : n
            let lab =
                header([0x801, UInt32(count)]) + Data((0..<count).map { UInt8($0 % 10) == 0 ? labelValue : UInt8($0 % 10) })
            try lab.write(to: directory.appendingPathComponent("\(prefix)-labels-idx1-ubyte"))
        }
        return directory.path
    }

    func testMissingDataDirectory() throws {
        try expectFailure(
            ["--data", "mnist:/nonexistent/mnist"], mentions: ["/nonexistent/mnist", "is not a directory", "rank"])
    }

    func testWrongMagicNumber() throws {
        let dir = try writeMNIST(imageMagic: 0x1234)
        try expectFailure(["--data", "mnist:\(dir)"], mentions: ["train-images-idx3-ubyte", "magic number"])
    }

    func testTruncatedFile() throws {
        let dir = try writeMNIST(truncateImages: true)
        try expectFailure(["--data", "mnist:\(dir)"], mentions: ["train-images-idx3-ubyte", "truncated"])
    }

    func testLabelOutOfRange() throws {
        let dir = try writeMNIST(labelValue: 11)
        try expectFailure(["--data", "mnist:\(dir)"], mentions: ["train-labels-idx1-ubyte", "label 11"])
    }

    func testImageAndLabelCountsDiffer() throws {
        let dir = try writeMNIST(labels: 19)
        try expectFailure(["--data", "mnist:\(dir)"], mentions: ["19 labels", "20 images"])
    }

    func testGlobalBatchSmallerThanRanks() throws {
        try expectFailure(["--global-batch", "1"], mentions: ["--global-batch 1", "2 ranks"])
    }

    func testWidthsThatDoNotMatchTheData() throws {
        try expectFailure(["--widths", "784,64,10"], mentions: ["--widths 784,64,10", "32 features"])
    }

    func testUnknownFlagValues() throws {
        try expectFailure(["--head", "softmax"], mentions: ["--head", "softmax", "linear", "bn"])
        try expectFailure(["--bn-eps-mode", "tiny"], mentions: ["--bn-eps-mode", "tiny", "scaled"])
        try expectFailure(["--lr-si", "0"], mentions: ["--lr-si 0.0", "(0, 1e9]"])
        try expectFailure(["--lr-si", "1e39"], mentions: ["--lr-si 1e+39", "(0, 1e9]"])
        try expectFailure(["--lr-sv", "inf"], mentions: ["--lr-sv inf", "[0, 1e9]"])
        try expectFailure(["--data", "cifar:/x"], mentions: ["--data cifar:/x", "synthetic", "mnist:DIR"])
        try expectFailure(["--widths", "784,,10"], mentions: ["--widths 784,,10", "positive integers"])
        try expectFailure(["--overlap", "maybe"], mentions: ["--overlap", "maybe", "auto", "on", "off"])
        try expectFailure(["--timeline-steps", "5-2"], mentions: ["--timeline-steps 5-2", "FIRST-LAST"])
        try expectFailure(["--timeline", "/nonexistent-dir/t.json"], mentions: ["--timeline /nonexistent-dir/t.json", "rank 0"])
        try expectFailure(["--deterministic", "--chunks", "6"], mentions: ["--chunks 6", "power of two"])
        try expectFailure(["--deterministic", "--bn", "local"], mentions: ["--bn local", "--deterministic", "--bn sync"])
        try expectFailure(["--deterministic", "--global-batch", "4"], mentions: ["--global-batch 4", "--chunks 8"])
        try expectFailure(["--balance", "sometimes"], mentions: ["--balance", "sometimes", "off", "on"])
        try expectFailure(["--balance", "on", "--bn", "local"], mentions: ["--balance on", "--bn local", "--bn sync"])
        try expectFailure(
            ["--balance", "on", "--deterministic"], mentions: ["--balance on", "--deterministic", "--balance off"])
        try expectFailure(["--debug-fault", "slow-rank:1"], mentions: ["--debug-fault slow-rank:1", "RANK:MICROSECONDS"])
    }

    func testBenchScalingFlags() throws {
        for (args, fragments) in [
            (["--scaling", "weak"], ["--scaling weak needs --batch-per-rank"]),
            (["--batch-per-rank", "8"], ["--batch-per-rank is for --scaling weak"]),
            (["--scaling", "weak", "--batch-per-rank", "0"], ["--batch-per-rank 0", "positive"]),
            (["--scaling", "sideways"], ["--scaling", "sideways", "strong", "weak"]),
            (["--compare-deterministic", "--bn", "local"], ["--compare-deterministic", "--bn local", "--bn sync"]),
            (["--compare-balance", "--bn", "local"], ["--compare-balance", "--bn local", "--bn sync"]),
            (
                ["--deterministic", "--scaling", "weak", "--batch-per-rank", "2"],
                ["needs a global batch of at least 8", "not 4", "rank 0"]
            ),
        ] {
            let result = try Launcher.mpirun(2, "autorate", ["bench", "--steps", "1"] + args, timeout: 60)
            XCTAssertNotEqual(result.status, 0, "\(args)")
            for fragment in fragments {
                XCTAssertTrue(result.output.contains(fragment), "\(args): lacks '\(fragment)':\n\(result.output)")
            }
        }
    }

    /// One test sample on two ranks: rank 0's evaluation share is empty; it still takes part in the
    /// sums, and the result counts the one sample exactly once (no padding, no duplicate).
    func testEvaluationWithAnEmptyShare() throws {
        let dir = try writeMNIST(images: 64, testImages: 1)
        let result = try Launcher.mpirun(
            2, "autorate",
            ["train", "--data", "mnist:\(dir)", "--global-batch", "16", "--steps", "3", "--widths", "784,16,10", "--quiet"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("on 1 samples"), result.output)
        XCTAssertTrue(
            result.output.contains("test accuracy 0.00%") || result.output.contains("test accuracy 100.00%"), result.output)
    }

    /// A valid MNIST-format directory trains (the real loader path, small files written here).
    func testSmallMNISTDirectoryTrains() throws {
        let dir = try writeMNIST(images: 64)
        let result = try Launcher.mpirun(
            2, "autorate",
            [
                "train", "--data", "mnist:\(dir)", "--global-batch", "16",
                "--epochs", "1", "--widths", "784,32,10",
            ])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("test accuracy"), result.output)
    }
}
