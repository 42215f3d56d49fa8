import Collectives
import Data
import Layers
import Training
import XCTest

/// The trainer in one process (the same code path as every rank of an MPI job).
final class TrainerTests: XCTestCase {
    let console = RankConsole(program: "test", rank: 0, size: 1)

    func smallData() -> DataSplits {
        var s = SyntheticDataset.make(trainCount: 2048, testCount: 512, dimension: 16, classes: 4, seed: 5)
        Standardization.perFeature.apply(to: &s)
        return s
    }

    func configuration(_ change: (inout TrainingConfiguration) -> Void = { _ in }) -> TrainingConfiguration {
        var c = TrainingConfiguration()
        c.widths = [16, 64, 64, 4]
        c.globalBatch = 128
        c.steps = 80
        c.logEvery = 80
        c.printProgress = false
        change(&c)
        return c
    }

    func testTrainingLowersLossAndBeatsChance() throws {
        let trainer = try Trainer(
            configuration(), splits: smallData(), communicator: SingleProcessCommunicator(), console: console)
        let before = try trainer.evaluate(trainer.splits.train)
        let summary = try trainer.run()
        XCTAssertLessThan(summary.trainLoss, 0.6 * before.loss, "80 steps cut the loss well below its start (\(before.loss))")
        XCTAssertGreaterThan(summary.testAccuracy, 0.6, "4 classes: chance is about 0.25")
        XCTAssertTrue(summary.testLoss.isFinite)
    }

    /// docs/theory.md: any fixed SI rate trains (no NaN, loss falls) when the SV rate is sane.
    func testAnyScaleInvariantRateTrains() throws {
        for lr in [0.01, 1.0, 100.0, 1000.0] {
            let trainer = try Trainer(
                configuration {
                    $0.invariant.learningRate = lr; $0.head = .bn
                },
                splits: smallData(), communicator: SingleProcessCommunicator(), console: console)
            let start = try trainer.evaluate(trainer.splits.train).loss
            let summary = try trainer.run()
            XCTAssertTrue(summary.trainLoss.isFinite, "lr-si \(lr)")
            XCTAssertLessThan(summary.trainLoss, start, "lr-si \(lr)")
        }
    }

    func testWidthsMustMatchTheData() {
        XCTAssertThrowsError(
            try Trainer(
                configuration { $0.widths = [15, 8, 4] }, splits: smallData(),
                communicator: SingleProcessCommunicator(), console: console)
        ) { error in
            XCTAssertTrue("\(error)".contains("--widths 15,8,4"), "\(error)")
            XCTAssertTrue("\(error)".contains("16 features"), "\(error)")
        }
        XCTAssertThrowsError(
            try Trainer(
                configuration { $0.widths = [16, 8, 3] }, splits: smallData(),
                communicator: SingleProcessCommunicator(), console: console)
        ) { error in
            XCTAssertTrue("\(error)".contains("4 classes"), "\(error)")
        }
    }

    func testGlobalBatchLargerThanTheDataIsRejected() {
        XCTAssertThrowsError(
            try Trainer(
                configuration { $0.globalBatch = 5000 }, splits: smallData(),
                communicator: SingleProcessCommunicator(), console: console)
        ) { error in
            XCTAssertTrue("\(error)".contains("--global-batch 5000"), "\(error)")
        }
    }

    /// The same seed gives the same run; another seed another run.
    func testRunsAreReproducible() throws {
        func finalLoss(_ seed: UInt64) throws -> Double {
            try Trainer(
                configuration {
                    $0.seed = seed; $0.steps = 20; $0.logEvery = 20
                }, splits: smallData(),
                communicator: SingleProcessCommunicator(), console: console
            ).run().trainLoss
        }
        XCTAssertEqual(try finalLoss(1), try finalLoss(1))
        XCTAssertNotEqual(try finalLoss(1), try finalLoss(2))
    }

    /// A checkpoint written before `--deterministic` existed (no such field) resumes as one
    /// written with it off, and is refused by a deterministic run.
    func testCheckpointWithoutTheDeterministicFieldResumes() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("autorate-old-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: base) }
        let first = try Trainer(
            configuration {
                $0.steps = 10; $0.logEvery = 5; $0.checkpointDirectory = base + "/new"; $0.checkpointEvery = 5
            },
            splits: smallData(), communicator: SingleProcessCommunicator(), console: console)
        _ = try first.run()
        let newest = try XCTUnwrap(CheckpointDirectory(path: base + "/new", keep: 3).checkpoints().first)
        var file = try CheckpointDirectory.load(newest)
        XCTAssertEqual(file.metadata.removeValue(forKey: "config.--deterministic"), "off")
        let old = try CheckpointDirectory(path: base + "/old", keep: 3).write(step: 10, file)
        func resume(deterministic: Bool) throws -> RunSummary {
            try Trainer(
                configuration {
                    $0.steps = 12; $0.logEvery = 5; $0.resume = .path(old); $0.deterministic = deterministic
                }, splits: smallData(), communicator: SingleProcessCommunicator(), console: console
            ).run()
        }
        XCTAssertEqual(try resume(deterministic: false).steps, 12)
        XCTAssertThrowsError(try resume(deterministic: true)) { error in
            XCTAssertTrue("\(error)".contains("--deterministic is 8 chunks here but off in the checkpoint"), "\(error)")
        }
    }
}
