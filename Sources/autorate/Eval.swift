import ArgumentParser
import Collectives
import Data
import Layers
import TensorCore
import Training

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score a checkpoint on a dataset: loss, top-1, top-5, per-class accuracy and the confusion matrix.",
        discussion: """
            Runs alone or under mpirun (the samples are split over the ranks). The data is standardized with the \
            statistics recorded in the checkpoint; on the data it was trained on, the test accuracy is the one train printed.
            """)

    @Option(help: "A checkpoint written by autorate train --checkpoint-dir (the last one holds the final model).")
    var checkpoint: String
    @Option(help: "The data to score: \(DataSource.accepted).")
    var data: String
    @Option(help: "Which split of --data: 'test' or 'train'.")
    var split = "test"
    @Flag(help: "Print the scores as one JSON object instead of text.")
    var json = false
    @Option(help: "BLAS threads per rank.")
    var threads = 1
    @OptionGroup var cache: CacheDirectoryOption

    func validate() throws {
        _ = try parseData(data)
        try require(["test", "train"].contains(split), "--split", split, "'test' or 'train'")
        try require(threads >= 1 && threads <= 256, "--threads", threads, "1 to 256")
    }

    func run() throws {
        let source = try parseData(data)
        try withMPI(threads: threads) { communicator, console in
            let saved = try agreeOnSetup(communicator, console) { try SavedModel(checkpoint: checkpoint) }
            // images of a folder are resized as in training; the node's ranks share their decoding
            let dataset = try agreeOnSetup(communicator, console) { () throws -> Dataset in
                var options = DataLoadOptions(imageSize: saved.trainingImageSize, cacheDirectory: cache.cacheDir)
                if case .folder = source { options.team = CommunicatorDecodeTeam(try communicator.nodeCommunicator()) }
                let splits = try source.loadUnstandardized(options)
                // on stderr with --json, whose stdout is the JSON alone
                for note in splits.notes where communicator.isRoot { writeAll(json ? 2 : 1, "data: \(note)\n") }
                return try saved.prepare(split == "test" ? splits.test : splits.train, from: source)
            }
            let score = try Evaluator(model: saved.model, communicator: communicator).evaluate(dataset)
            guard communicator.isRoot else { return }
            print(json ? report(saved, score).encoded : text(saved, score))
        }
    }

    private func text(_ saved: SavedModel, _ score: EvaluationResult) -> String {
        let names = saved.card.classNames
        var lines = [
            "eval: \(checkpoint) (step \(saved.step), \(saved.card.architecture)) on \(data) \(split): \(score.count) samples",
            String(cFormat: "loss %.4f  ", score.loss) + score.accuracyText,
            "per class:",
        ]
        let width = Swift.max(5, names.map(\.count).max() ?? 0)
        lines.append("  " + "class".padding(toLength: width, withPad: " ", startingAt: 0) + "   samples  top-1")
        for c in 0..<score.classes where score.perClassCount[c] > 0 {
            lines.append(
                "  " + names[c].padding(toLength: width, withPad: " ", startingAt: 0)
                    + String(
                        cFormat: "  %8d  %6.2f%%", score.perClassCount[c],
                        100 * Double(score.perClassCorrect[c]) / Double(score.perClassCount[c])))
        }
        if let confusion = score.confusion, score.classes <= 20 {
            lines.append("confusion matrix (rows: true class, columns: predicted class, in class order):")
            for t in 0..<score.classes {
                let row = confusion[(t * score.classes)..<((t + 1) * score.classes)]
                lines.append("  " + row.map { String(cFormat: "%6d", $0) }.joined())
            }
        } else {
            lines.append(
                score.confusion == nil
                    ? "confusion matrix: not kept above \(Evaluator.maxConfusionClasses) classes"
                    : "confusion matrix: \(score.classes) classes, in --json")
        }
        return lines.joined(separator: "\n")
    }

    private func report(_ saved: SavedModel, _ score: EvaluationResult) -> JSONValue {
        let names = saved.card.classNames
        var fields: [(String, JSONValue)] = [
            ("checkpoint", .string(checkpoint)), ("step", .integer(saved.step)),
            ("architecture", .string(saved.card.architecture)),
            ("data", .string(data)), ("split", .string(split)), ("samples", .integer(score.count)),
            ("loss", .number(score.loss)), ("top1", .number(score.top1)),
            ("top5", score.top5.map { .number($0) } ?? .null),
            (
                "classes",
                .array(
                    (0..<score.classes).map { c in
                        .object([
                            ("name", .string(names[c])), ("samples", .integer(score.perClassCount[c])),
                            ("correct", .integer(score.perClassCorrect[c])),
                        ])
                    })
            ),
        ]
        if let confusion = score.confusion {
            let k = score.classes
            fields.append(
                ("confusion", .array((0..<k).map { t in .array(confusion[(t * k)..<((t + 1) * k)].map { .integer($0) }) })))
        }
        return .object(fields)
    }
}
