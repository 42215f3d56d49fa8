import ArgumentParser
import Data
import Foundation

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the weights of a checkpoint (parameters and BN buffers, PyTorch names and layouts) as safetensors.",
        discussion: "PyTorch: model.load_state_dict(safetensors.torch.load_file(OUT)) for the same architecture.")

    @Option(help: "A checkpoint written by autorate train --checkpoint-dir.")
    var checkpoint: String
    @Option(help: "The safetensors file to write.")
    var out: String

    func run() throws {
        let file: SafeTensors
        do {
            file = try CheckpointDirectory.load(checkpoint)
        } catch {
            throw ValidationError("--checkpoint \(checkpoint): \(error)")
        }
        guard file.metadata["autorate.format"] != nil else {
            throw ValidationError("--checkpoint \(checkpoint): not an autorate checkpoint (no autorate.format metadata)")
        }
        var weights = SafeTensors(tensors: file.tensors.filter { !$0.name.hasPrefix("optimizer.") })
        weights.metadata = file.metadata.filter { $0.key == "autorate.architecture" || $0.key == "autorate.step" }
        do {
            try Data(weights.encoded()).write(to: URL(fileURLWithPath: out), options: .atomic)
        } catch {
            throw ValidationError("--out \(out): cannot be written: \(error.localizedDescription)")
        }
        print("export: \(weights.tensors.count) tensors from \(checkpoint) to \(out)")
    }
}
