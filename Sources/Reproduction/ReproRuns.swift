import Training
import Collectives
import RealModule
import Data
import Layers
import Optimizers
import TensorCore

/// What one in-process run of the repro recorded per step: the full-batch (or mini-batch) loss
/// before the step's update and the per-group monitors of that update.
struct Trajectory {
    var losses: [Double] = []
    var monitors: [[GroupMonitor]] = []
    /// Full-batch G_I^2 probed every `probeEvery` steps (E8): (step, value).
    var probes: [(step: Int, value: Double)] = []
    /// A non-finite loss or norm stopped the run.
    var diverged = false
    var initial: Double { losses.first ?? .nan }
    var final: Double { diverged ? .infinity : (losses.last ?? .nan) }
    func monitor(_ t: Int, _ name: String) -> GroupMonitor? { monitors[t].first { $0.name == name } }
}

/// The small problem every in-process experiment runs on, through the same `Trainer` as
/// `autorate train`: 256 synthetic samples (16 features, 4 classes, labelled by a random teacher),
/// an MLP-BN 16-32-32-32-4 with a BN head (the paper's VGG variant: every Linear weight and every
/// hidden BN's (gamma, beta) is SI, only the last BN's are SV), full-batch GD by default.
struct ReproProblem {
    static let widths = [16, 32, 32, 32, 4]
    static let trainCount = 256
    let splits: DataSplits
    let console = RankConsole(program: "autorate repro", rank: 0, size: 1)

    init() {
        var s = SyntheticDataset.make(trainCount: Self.trainCount, testCount: 64, dimension: 16, classes: 4, seed: 11)
        Standardization.perFeature.apply(to: &s)
        splits = s
    }

    /// Full-batch GD, eta_w = 1, eta_g = 0.1, eps scaled, seed 1.
    func configuration(_ change: (inout TrainingConfiguration) -> Void = { _ in }) -> TrainingConfiguration {
        var c = TrainingConfiguration()
        c.widths = Self.widths
        c.head = .bn
        c.globalBatch = Self.trainCount
        c.invariant = GroupRule(learningRate: 1)
        c.variant = GroupRule(learningRate: 0.1)
        c.seed = 1
        c.printProgress = false
        c.bnRecalibrationBatches = 0
        change(&c)
        return c
    }

    func trainer(_ c: TrainingConfiguration) throws -> Trainer {
        try Trainer(c, splits: splits, communicator: SingleProcessCommunicator(), console: console)
    }

    /// `steps` training steps with monitors on every step.
    func run(_ c: TrainingConfiguration, steps: Int, probeEvery: Int? = nil) throws -> Trajectory {
        let trainer = try trainer(c)
        var trajectory = Trajectory()
        for t in 0..<steps {
            if let every = probeEvery, t % every == 0 {
                trajectory.probes.append((t, try trainer.fullBatchProbe().intrinsicGradient2))
            }
            let result = try trainer.trainStep(t, monitor: true)
            let loss = result.lossSum / Double(result.count)
            let finite = loss.isFinite && result.monitors.allSatisfy { $0.norm2.isFinite && $0.gradNorm2.isFinite }
            trajectory.losses.append(loss)
            trajectory.monitors.append(result.monitors)
            if !finite || loss > 1e6 {
                trajectory.diverged = true
                break
            }
        }
        return trajectory
    }
}

/// Least-squares slope of log10(y) against log10(x) over the points with x in `window`.
func logLogSlope(_ points: [(x: Double, y: Double)], window: ClosedRange<Double>) -> Double {
    let use = points.filter { window.contains($0.x) && $0.x > 0 && $0.y > 0 }
    guard use.count >= 2 else { return .nan }
    let xs = use.map { Double.log10($0.x) }, ys = use.map { Double.log10($0.y) }
    let mx = xs.reduce(0, +) / Double(xs.count), my = ys.reduce(0, +) / Double(ys.count)
    var sxy = 0.0, sxx = 0.0
    for (x, y) in zip(xs, ys) {
        sxy += (x - mx) * (y - my)
        sxx += (x - mx) * (x - mx)
    }
    return sxy / sxx
}

/// Points at about `count` log-spaced steps in 1...n (for plots and fits of curves over steps).
func logSpaced(_ n: Int, count: Int = 60) -> [Int] {
    guard n > 1 else { return [1] }
    var result: [Int] = []
    for k in 0..<count {
        let v = Int(Double.pow(Double(n), Double(k) / Double(count - 1)).rounded())
        if v >= 1 && v <= n && result.last != v { result.append(v) }
    }
    return result
}
