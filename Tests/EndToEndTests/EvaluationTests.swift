import Foundation
import XCTest

/// `autorate eval` against what `train` printed, evaluation during training (`--eval-every`,
/// `--val-fraction`, `--keep-best`), the final checkpoint after the BN recalibration, and `export`.
final class EvaluationTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws { directory = try Launcher.temporaryDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static let cnn = [
        "train", "--model", "cnn", "--data", "synthetic-images", "--steps", "60", "--global-batch", "64", "--log-every", "30",
    ]

    /// `test accuracy 88.67%` and `test loss 0.3377` of train's last line; `top-1 88.67%` and `loss 0.3377` of eval's.
    static func number(after label: String, in text: String) -> String? {
        guard let range = text.range(of: label) else { return nil }
        return String(text[range.upperBound...].prefix { "0123456789.".contains($0) })
    }

    /// The accuracy train prints (with the recalibrated BN statistics) is the one eval computes from
    /// the final checkpoint, on 1 rank and on 2, to the last digit; it differs from what the running
    /// averages before the recalibration score, so the order of the two matters.
    func testEvalReproducesTrainsPrintedAccuracy() throws {
        let trained = try Launcher.mpirun(
            2, "autorate", Self.cnn + ["--checkpoint-dir", path("ck"), "--eval-every", "60", "--bn-recalibrate", "20"])
        XCTAssertEqual(trained.status, 0, trained.output)
        let printed = try XCTUnwrap(Self.number(after: "test accuracy ", in: trained.output), trained.output)
        let printedLoss = try XCTUnwrap(
            Self.number(after: "test loss ", in: trained.output.components(separatedBy: "done:").last!))
        let final = path("ck") + "/checkpoint-000000060.safetensors"
        for np in [1, 2] {
            let eval = try Launcher.mpirun(np, "autorate", ["eval", "--checkpoint", final, "--data", "synthetic-images"])
            XCTAssertEqual(eval.status, 0, eval.output)
            XCTAssertEqual(Self.number(after: "top-1 ", in: eval.output), printed, eval.output)
            XCTAssertEqual(Self.number(after: "loss ", in: eval.output), printedLoss, eval.output)
            XCTAssertTrue(eval.output.contains("confusion matrix"), eval.output)
        }
        // the running averages training left score differently: the final checkpoint holds the recalibrated ones
        let duringTraining = try XCTUnwrap(
            trained.output.split(separator: "\n").first { $0.contains("step 60/60  test loss") }, trained.output)
        XCTAssertNotEqual(Self.number(after: "top-1 ", in: String(duringTraining)), printed, trained.output)

        let json = try Launcher.run([
            Launcher.executable("autorate"), "eval", "--checkpoint", final, "--data", "synthetic-images", "--json",
        ])
        XCTAssertEqual(json.status, 0, json.output)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any])
        XCTAssertEqual(String(format: "%.2f", 100 * (object["top1"] as! Double)), printed)
        let classes = try XCTUnwrap(object["classes"] as? [[String: Any]])
        XCTAssertEqual(classes.count, 10)
        XCTAssertEqual(classes.map { $0["samples"] as! Int }.reduce(0, +), object["samples"] as? Int)
        let confusion = try XCTUnwrap(object["confusion"] as? [[Int]])
        XCTAssertEqual(confusion.joined().reduce(0, +), object["samples"] as? Int)
        XCTAssertEqual((0..<10).map { confusion[$0][$0] }, classes.map { $0["correct"] as! Int })
        XCTAssertNotNil(object["top5"] as? Double)
    }

    /// A run extended from its final checkpoint continues the running averages training left, not
    /// the recalibrated ones: the same bits as a run of that length.
    func testExtendingAFinishedRunContinuesTheSameBits() throws {
        let args = ["train", "--quiet", "--deterministic", "--global-batch", "200", "--log-every", "10", "--bn-recalibrate", "3"]
        let whole = try Launcher.mpirun(
            1, "autorate", args + ["--steps", "20", "--metrics", path("whole.jsonl"), "--checkpoint-dir", path("whole")])
        XCTAssertEqual(whole.status, 0, whole.output)
        let first = try Launcher.mpirun(2, "autorate", args + ["--steps", "10", "--checkpoint-dir", path("part")])
        XCTAssertEqual(first.status, 0, first.output)
        let rest = try Launcher.mpirun(
            2, "autorate",
            args + ["--steps", "20", "--metrics", path("part.jsonl"), "--checkpoint-dir", path("part"), "--resume", "auto"])
        XCTAssertEqual(rest.status, 0, rest.output)
        let a = try XCTUnwrap(Launcher.metrics(path("whole.jsonl")).last),
            b = try XCTUnwrap(Launcher.metrics(path("part.jsonl")).last)
        XCTAssertEqual(a["parameters_fnv1a"] as? String, b["parameters_fnv1a"] as? String)
        XCTAssertEqual(a["test_accuracy"] as? Double, b["test_accuracy"] as? Double)
    }

    /// Evaluating during training changes nothing of the training; the records name the split; a
    /// validation split is held out of the training set; --keep-best keeps a loadable checkpoint.
    func testEvalEveryValidationAndKeepBest() throws {
        let args = Self.cnn + ["--quiet", "--deterministic", "--bn-recalibrate", "2"]
        let plain = try Launcher.mpirun(2, "autorate", args + ["--metrics", path("plain.jsonl")])
        XCTAssertEqual(plain.status, 0, plain.output)
        let evaluated = try Launcher.mpirun(
            2, "autorate",
            args + ["--metrics", path("eval.jsonl"), "--eval-every", "20", "--checkpoint-dir", path("best"), "--keep-best"])
        XCTAssertEqual(evaluated.status, 0, evaluated.output)
        let fingerprint = { (file: String) in try Launcher.metrics(file).last?["parameters_fnv1a"] as? String }
        XCTAssertEqual(try fingerprint(path("eval.jsonl")), try fingerprint(path("plain.jsonl")))
        let evals = try Launcher.metrics(path("eval.jsonl")).filter { $0["event"] as? String == "eval" }
        XCTAssertEqual(evals.map { $0["step"] as? Int }, [20, 40, 60])
        XCTAssertEqual(Set(evals.map { $0["split"] as? String }), ["test"])
        XCTAssertTrue(evals.allSatisfy { $0["top5"] is Double && $0["top1"] is Double && $0["samples"] as? Int == 2048 })
        let best = path("best") + "/best.safetensors"
        let scored = try Launcher.run([
            Launcher.executable("autorate"), "eval", "--checkpoint", best, "--data", "synthetic-images",
        ])
        XCTAssertEqual(scored.status, 0, scored.output)
        let bestTop1 = evals.map { $0["top1"] as! Double }.max()!
        XCTAssertEqual(Self.number(after: "top-1 ", in: scored.output), String(format: "%.2f", 100 * bestTop1), scored.output)

        let validated = try Launcher.mpirun(
            2, "autorate", args + ["--metrics", path("val.jsonl"), "--eval-every", "30", "--val-fraction", "0.25"])
        XCTAssertEqual(validated.status, 0, validated.output)
        let records = try Launcher.metrics(path("val.jsonl")).filter { $0["event"] as? String == "eval" }
        XCTAssertEqual(records.map { $0["split"] as? String }, ["validation", "validation"])
        XCTAssertEqual(records.first?["samples"] as? Int, 2048)  // a quarter of the 8192 training images
        XCTAssertNotEqual(try fingerprint(path("val.jsonl")), try fingerprint(path("plain.jsonl")))

        let refused = try Launcher.run([Launcher.executable("autorate")] + Self.cnn + ["--keep-best", "--eval-every", "5"])
        XCTAssertEqual(refused.status, 64, refused.output)
        XCTAssertTrue(refused.output.contains("--keep-best writes best.safetensors into --checkpoint-dir"), refused.output)
        let fraction = try Launcher.run([Launcher.executable("autorate")] + Self.cnn + ["--val-fraction", "1"])
        XCTAssertTrue(fraction.output.contains("--val-fraction 1.0 is not accepted"), fraction.output)
    }

    /// Export writes the metadata a user needs and refuses to overwrite the checkpoint; eval names
    /// the data that does not fit the model.
    func testExportMetadataAndRefusals() throws {
        let trained = try Launcher.mpirun(1, "autorate", Self.cnn + ["--quiet", "--steps", "5", "--checkpoint-dir", path("ck")])
        XCTAssertEqual(trained.status, 0, trained.output)
        let checkpoint = path("ck") + "/checkpoint-000000005.safetensors"
        let out = path("w.safetensors")
        let export = try Launcher.run([Launcher.executable("autorate"), "export", "--checkpoint", checkpoint, "--out", out])
        XCTAssertEqual(export.status, 0, export.output)
        let header = try Self.metadata(out)
        XCTAssertEqual(header["autorate.input"], "[N, 3, 32, 32] float32, NCHW, RGB")
        XCTAssertEqual(header["autorate.class_names"], "[\"0\",\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]")
        XCTAssertTrue(header["autorate.standardization"]?.hasPrefix("{\"kind\":\"per_channel\",\"mean\":[") ?? false)
        XCTAssertTrue(header["autorate.bn_eps"]?.hasPrefix("0 (the per-channel epsilon is folded") ?? false)
        XCTAssertNotNil(header["autorate.model"])
        XCTAssertNil(try CheckpointTests.tensors(out)["training.bn_running_statistics"])

        let link = path("link.safetensors")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: checkpoint)
        let before = try Data(contentsOf: URL(fileURLWithPath: checkpoint))
        for target in [checkpoint, link] {
            let refused = try Launcher.run([
                Launcher.executable("autorate"), "export", "--checkpoint", checkpoint, "--out", target,
            ])
            XCTAssertNotEqual(refused.status, 0, refused.output)
            XCTAssertTrue(refused.output.contains("is the same file as"), refused.output)
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: checkpoint)), before, "the checkpoint is untouched")

        let wrong = try Launcher.run([Launcher.executable("autorate"), "eval", "--checkpoint", checkpoint, "--data", "synthetic"])
        XCTAssertEqual(wrong.status, 1, wrong.output)
        XCTAssertTrue(wrong.output.contains("--data synthetic holds vectors of"), wrong.output)
        XCTAssertTrue(wrong.output.contains("takes 32x32x3 images"), wrong.output)
    }

    static func metadata(_ path: String) throws -> [String: String] {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = Int(bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<8 + n)) as? [String: Any])
        return try XCTUnwrap(header["__metadata__"] as? [String: String])
    }
}
