import Foundation
import XCTest

/// A model trained here, exported with `--pytorch` and scored by PyTorch on Fashion-MNIST's test set
/// (Debian's `dataset-fashion-mnist`, read by numpy): within 0.1 points of the accuracy train printed.
/// Skips, saying why, without the data or without torch.
final class PyTorchExportTests: XCTestCase {
    func testPyTorchReproducesTrainsAccuracyOnFashionMNIST() throws {
        let data = "/usr/share/datasets/fashion-mnist"
        try XCTSkipUnless(
            FileManager.default.fileExists(atPath: "\(data)/t10k-images-idx3-ubyte.gz"),
            "no Fashion-MNIST in \(data); install it with: apt-get install -y dataset-fashion-mnist")
        let probe = try Launcher.run(["python3", "-c", "import torch, numpy"])
        try XCTSkipUnless(probe.status == 0, "PyTorch is not installed for python3 (pip install torch): \(probe.output)")
        let directory = try Launcher.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = { (name: String) in directory.appendingPathComponent(name).path }

        let trained = try Launcher.mpirun(
            2, "autorate",
            [
                "train", "--model", "cnn", "--data", "fashion-mnist:\(data)", "--steps", "150", "--global-batch", "128",
                "--quiet", "--checkpoint-dir", path("ck"),
            ], timeout: 300)
        XCTAssertEqual(trained.status, 0, trained.output)
        let printed = try XCTUnwrap(
            trained.output.firstMatch(of: /test accuracy ([0-9.]+)%/).flatMap { Double($0.1) }, trained.output)
        let export = try Launcher.run([
            Launcher.executable("autorate"), "export", "--checkpoint", path("ck") + "/checkpoint-000000150.safetensors",
            "--out", path("w.safetensors"), "--pytorch", path("model.py"),
        ])
        XCTAssertEqual(export.status, 0, export.output)
        let script = """
            import gzip, sys
            import numpy as np
            import torch
            sys.path.insert(0, "\(directory.path)")
            import model
            net = model.load("\(path("w.safetensors"))")
            images = np.frombuffer(gzip.open("\(data)/t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
            labels = np.frombuffer(gzip.open("\(data)/t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
            with torch.no_grad():
                predicted = net(model.preprocess(images)).argmax(1).numpy()
            print("%.2f" % (100 * (predicted == labels).mean()))
            """
        let scored = try Launcher.run(["python3", "-c", script], timeout: 300)
        XCTAssertEqual(scored.status, 0, scored.output)
        let pytorch = try XCTUnwrap(Double(scored.output.trimmingCharacters(in: .whitespacesAndNewlines)), scored.output)
        XCTAssertGreaterThan(printed, 70, trained.output)
        XCTAssertEqual(pytorch, printed, accuracy: 0.1, "PyTorch \(pytorch)% vs train's \(printed)%")
    }
}
