import Data
import Layers

extension TrainingConfiguration {
    /// Every setting that shapes the trajectory, as (flag, value); a checkpoint resumes only under
    /// the same values. Not here: the run length, the rank count, threads, output and checkpoint
    /// flags, and logging (`--log-every`, `--metrics`, `--timeline`), which never changes training.
    var trajectoryFields: [(String, String)] {
        [
            ("--data", "\(data)"), ("--image-size", imageSize?.description ?? "as stored"), ("--model", model.rawValue),
            ("--widths", widths.map { $0.map(String.init).joined(separator: ",") } ?? "default"),
            ("--vgg-layers", vggLayers.map { "\($0)" } ?? "default"), ("--width-multiplier", "\(widthMultiplier)"),
            ("--shortcut", shortcut.rawValue),
            ("--convolution", convolution?.rawValue ?? "auto"), ("--head", head.rawValue), ("--no-bn", "\(!batchNormalized)"),
            ("--augment", augmentation.rawValue), ("--val-fraction", "\(validationFraction)"),
            ("--global-batch", "\(globalBatch)"), ("--bn", batchNormSync.rawValue),
            ("--bn-eps-mode", batchNorm.epsilonMode.rawValue), ("--bn-eps", "\(batchNorm.epsilon)"),
            ("--lr-si", "\(invariant.learningRate)"), ("--schedule-si", "\(invariant.schedule)"),
            ("--lr-sv", "\(variant.learningRate)"), ("--schedule-sv", "\(variant.schedule)"),
            ("--momentum", "\(invariant.momentum),\(variant.momentum)"),
            ("--weight-decay-si", "\(invariant.weightDecay)"), ("--weight-decay-sv", "\(variant.weightDecay)"),
            ("--init-scale-si", "\(initScaleSI)"), ("--seed", "\(seed)"),
            ("--deterministic", deterministic ? "\(chunks) chunks" : "off"),
        ]
    }
}
