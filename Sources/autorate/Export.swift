import ArgumentParser
import Collectives
import Data
import Foundation
import Training

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Write the final model of a checkpoint (parameters and BN buffers, PyTorch names and layouts) as safetensors.",
        discussion: """
            The metadata records the architecture, input shape and channel order, standardization, class names and the BN \
            epsilon to use (autorate.model holds all of it as JSON). docs/pytorch.md shows how to load the file in PyTorch.
            """)

    @Option(help: "A checkpoint written by autorate train --checkpoint-dir (the last one holds the final model).")
    var checkpoint: String
    @Option(help: "The safetensors file to write (not the checkpoint itself).")
    var out: String
    @Option(help: "Also write a Python module defining the network for PyTorch, with load(path) and preprocess(x).")
    var pytorch: String?

    func run() throws {
        try refuseOverwriting(checkpoint, with: out, flag: "--out")
        if pytorch == nil, let weights = SavedModel.weightsWithoutCard(checkpoint) {
            try writeAtomically(weights.encoded(), to: out, flag: "--out")
            print(
                "export: \(weights.tensors.count) tensors from \(checkpoint) to \(out), as stored: the checkpoint is from an older autorate and records no model card (input shape, standardization, class names, BN epsilon)"
            )
            return
        }
        let saved: SavedModel
        do {
            saved = try SavedModel(checkpoint: checkpoint)
        } catch {
            throw ValidationError("\(error)")
        }
        var module: String? = nil
        if let pytorch {
            try refuseOverwriting(checkpoint, with: pytorch, flag: "--pytorch")
            try refuseOverwriting(out, with: pytorch, flag: "--pytorch")
            do {
                module = try PyTorchModule.source(card: saved.card)
            } catch {
                throw ValidationError("--pytorch \(pytorch): \(error)")
            }
        }
        let weights = ExportedWeights(saved)
        try writeAtomically(weights.file.encoded(), to: out, flag: "--out")
        if let pytorch, let module { try writeAtomically(Array(module.utf8), to: pytorch, flag: "--pytorch") }
        print(
            "export: \(weights.file.tensors.count) tensors of \(saved.card.architecture) (step \(saved.step)) from \(checkpoint) to \(out)"
                + (pytorch.map { "; PyTorch module \($0) (see docs/pytorch.md)" } ?? ""))
    }
}

/// A checkpoint's weights as `export` writes them, with the metadata a user needs.
struct ExportedWeights {
    let file: SafeTensors

    init(_ saved: SavedModel) {
        var (file, epsilon) = saved.exportedWeights
        let card = saved.card
        let shape =
            card.image.map { "[N, \($0.channels), \($0.height), \($0.width)] float32, NCHW, \(card.input.channelOrder ?? "")" }
            ?? "[N, \(card.input.features)] float32"
        file.metadata = [
            ModelCard.metadataKey: card.json,
            "autorate.architecture": card.architecture,
            "autorate.step": "\(saved.step)",
            "autorate.input": shape,
            "autorate.class_names": JSONValue.array(card.classNames.map { .string($0) }).encoded,
            "autorate.standardization": card.standardization.map { s in
                JSONValue.object([
                    ("kind", .string(s.kind.rawValue)), ("mean", .array(s.mean.map { .number($0) })),
                    ("std", .array(s.std.map { .number($0) })),
                ]).encoded
            } ?? "none",
            "autorate.bn_eps": !card.batchNorm
                ? "none (no BN)"
                : card.bnEpsilonMode != "standard" ? "0 (the per-channel epsilon is folded into running_var)" : "\(epsilon)",
        ]
        self.file = file
    }
}

/// Refuses to write `output` when it is `input` (the same file, also through links).
func refuseOverwriting(_ input: String, with output: String, flag: String) throws {
    let a = URL(fileURLWithPath: input).resolvingSymlinksInPath().standardizedFileURL
    let b = URL(fileURLWithPath: output).resolvingSymlinksInPath().standardizedFileURL
    var same = a == b
    if !same, let x = try? FileManager.default.attributesOfItem(atPath: a.path),
        let y = try? FileManager.default.attributesOfItem(atPath: b.path)
    {
        same =
            x[.systemFileNumber] as? Int == y[.systemFileNumber] as? Int && x[.systemNumber] as? Int == y[.systemNumber] as? Int
    }
    if same { throw ValidationError("\(flag) \(output) is the same file as \(input); give another file name.") }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it (a reader sees the old file or the new one).
func writeAtomically(_ bytes: [UInt8], to path: String, flag: String) throws {
    do {
        try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
    } catch {
        throw ValidationError("\(flag) \(path): cannot be written: \(error.localizedDescription)")
    }
}
