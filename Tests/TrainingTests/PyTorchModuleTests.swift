import Data
import Foundation
import Layers
import TensorCore
import XCTest

@testable import Training

/// The Python module `PyTorchModule` writes, run by python3: with torch, its network on the
/// exported weights against autorate's logits; with numpy alone, its safetensors reader and
/// `preprocess` against what autorate wrote and how autorate standardizes.
final class PyTorchModuleTests: XCTestCase {
    /// One network to export: its card's architecture fields, input shape and head.
    struct Case {
        var name: String
        var fields: [String: Any]
        var image: ImageShape?
        var features: Int
        var head: String
        var batchNorm = true
    }

    static let classes = 3

    static var cases: [Case] {
        let mnistLike = ImageShape(height: 8, width: 8, channels: 1)
        let rgb = ImageShape(height: 8, width: 8, channels: 3)
        return [
            Case(name: "mlp-linear", fields: ["widths": [12, 9, 7, classes]], image: nil, features: 12, head: "linear"),
            Case(name: "mlp-bn", fields: ["widths": [12, 9, classes]], image: nil, features: 12, head: "bn"),
            Case(
                name: "mlp-plain", fields: ["widths": [64, 10, classes]], image: mnistLike, features: 64, head: "linear",
                batchNorm: false),
            Case(name: "cnn-linear", fields: ["layers": ["4", "M", "6", "M"]], image: rgb, features: 192, head: "linear"),
            Case(name: "vgg-bn", fields: ["layers": ["4", "5", "M", "6", "M"]], image: mnistLike, features: 64, head: "bn"),
            Case(
                name: "resnet-padding",
                fields: ["resnet": ["widths": [4, 6, 8], "blocks": 2, "shortcut": "padding"]], image: rgb, features: 192,
                head: "linear"),
            // 6 -> 3 -> 2: the last stage halves an odd size, as x[:, :, ::2, ::2] does
            Case(
                name: "resnet-padding-odd",
                fields: ["resnet": ["widths": [4, 6, 8], "blocks": 1, "shortcut": "padding"]],
                image: ImageShape(height: 6, width: 6, channels: 3), features: 108, head: "linear"),
            Case(
                name: "resnet-projection",
                fields: ["resnet": ["widths": [4, 7], "blocks": 1, "shortcut": "projection"]], image: rgb, features: 192,
                head: "bn"),
        ]
    }

    /// The card of `c` (JSON, as checkpoints hold it), with per-channel standardization for images.
    static func card(_ c: Case, epsilonMode: String) throws -> ModelCard {
        var input: [String: Any] = ["features": c.features]
        var standardization: [String: Any] = [
            "kind": "per_feature", "mean": (0..<c.features).map { 0.01 * Double($0 % 7) },
            "std": (0..<c.features).map { 0.5 + 0.1 * Double($0 % 5) },
        ]
        if let image = c.image {
            input.merge(
                ["height": image.height, "width": image.width, "channels": image.channels, "channel_order": "RGB"]) { $1 }
            standardization = [
                "kind": "per_channel", "mean": [0.49, 0.48, 0.45].prefix(image.channels).map { $0 },
                "std": [0.25, 0.24, 0.26].prefix(image.channels).map { $0 },
            ]
        }
        var json: [String: Any] = [
            "format": 1, "model": c.name, "architecture": c.name, "head": c.head, "batch_norm": c.batchNorm,
            "bn_epsilon_mode": epsilonMode, "bn_epsilon": 0.1, "convolution": "auto", "input": input,
            "classes": classes, "class_names": ["cat", "dog \"quoted\"", "naïve/bird"], "standardization": standardization,
            "data": "test",
        ]
        json.merge(c.fields) { $1 }
        let text = String(decoding: try JSONSerialization.data(withJSONObject: json), as: UTF8.self)
        return try ModelCard.read([ModelCard.metadataKey: text], path: c.name)
    }

    static let batch = 5

    /// Bytes of a batch of `batch` samples, and their standardized rows as autorate computes them.
    static func inputs(_ card: ModelCard, seed: UInt64) -> (bytes: [UInt8], rows: [Float]) {
        var rng = SplitMix64(seed: seed)
        let d = card.input.features
        let bytes = (0..<(batch * d)).map { _ in UInt8(truncatingIfNeeded: Int(rng.uniform() * 256)) }
        var data = Dataset(
            name: "x", features: bytes.map { Float($0) / 255 }, labels: [Int32](repeating: 0, count: batch), dimension: d,
            classes: classes)
        card.standardization!.apply(to: &data)
        return (bytes, data.features)
    }

    /// The network of `card`, seeded, its BN affines and running statistics moved away from their
    /// initial values (so that a misplaced or mis-folded BN shows).
    static func network(_ card: ModelCard, seed: UInt64) throws -> any Network {
        let model = try card.makeNetwork(maxBatch: batch)
        model.initialize(seed: seed)
        var rng = SplitMix64(seed: seed ^ 0x5EED)
        func fill(_ values: UnsafeMutableBufferPointer<Float>, _ low: Double, _ high: Double) {
            for i in values.indices { values[i] = Float(low + (high - low) * rng.uniform()) }
        }
        for norm in model.batchNorms {
            fill(model.parameters.value(norm.gamma), 0.5, 1.5)
            fill(model.parameters.value(norm.beta), -0.5, 0.5)
            fill(model.buffers.slice(norm.runningMean.range), -0.3, 0.3)
            fill(model.buffers.slice(norm.runningVar.range), 0.05, 2)
        }
        return model
    }

    /// Writes case `c`'s weights (with the card in the metadata), module and inputs under `directory`;
    /// returns the exported weights, PyTorch's eps and autorate's logits.
    static func write(_ card: ModelCard, to directory: URL, seed: UInt64) throws -> (
        weights: SafeTensors, epsilon: Double, logits: [Float]
    ) {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let model = try network(card, seed: seed)
        let (bytes, rows) = inputs(card, seed: seed + 1)
        let logits = rows.withUnsafeBufferPointer { x in
            Array(
                model.predict(Matrix(UnsafeMutablePointer(mutating: x.baseAddress!), rows: batch, cols: x.count / batch)).readOnly
            )
        }
        var (weights, epsilon) = CheckpointFormat.exported(model, batchesTracked: 7)
        weights.metadata[ModelCard.metadataKey] = card.json
        try Foundation.Data(weights.encoded()).write(to: directory.appendingPathComponent("weights.safetensors"))
        try PyTorchModule.source(card: card).write(
            to: directory.appendingPathComponent("model.py"), atomically: true, encoding: .utf8)
        let shape = card.image.map { [batch, $0.height, $0.width, $0.channels] } ?? [batch, card.input.features]
        try npy(bytes, descr: "|u1", shape: shape).write(to: directory.appendingPathComponent("bytes.npy"))
        try npy(rows, shape: [batch, card.input.features]).write(to: directory.appendingPathComponent("rows.npy"))
        try npy(logits, shape: [batch, classes]).write(to: directory.appendingPathComponent("logits.npy"))
        return (weights, epsilon, logits)
    }

    /// A version 1.0 .npy file of `values`.
    static func npy(_ values: [Float], shape: [Int]) -> Foundation.Data {
        npy(values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }, descr: "<f4", shape: shape)
    }

    static func npy(_ data: [UInt8], descr: String, shape: [Int]) -> Foundation.Data {
        let dims = shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? "," : "")
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': (\(dims)), }"
        header += String(repeating: " ", count: (64 - (10 + header.utf8.count + 1) % 64) % 64) + "\n"
        let length = UInt16(header.utf8.count)
        return Foundation.Data(
            [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(length & 0xFF), UInt8(length >> 8)] + Array(header.utf8) + data)
    }

    /// Runs `python3 -c script arguments...`; returns its status and output (stdout, then stderr).
    static func python(_ script: String, _ arguments: [String] = []) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script] + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    func scratchDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("pytorch-module-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// Every case in every epsilon mode that exports differently: its directory name and card.
    func writeAll(into root: URL) throws -> [(name: String, card: ModelCard, written: (SafeTensors, Double, [Float]))] {
        var all: [(String, ModelCard, (SafeTensors, Double, [Float]))] = []
        for (k, c) in Self.cases.enumerated() {
            for mode in ["scaled", "standard"] {
                let card = try Self.card(c, epsilonMode: mode)
                let name = "\(c.name)-\(mode)"
                all.append((name, card, try Self.write(card, to: root.appendingPathComponent(name), seed: UInt64(100 + k))))
            }
        }
        return all
    }

    /// Imports each case's module by path.
    static let importer = """
        import importlib.util, json, sys
        import numpy as np
        def module(directory):
            spec = importlib.util.spec_from_file_location("model_" + directory.replace("/", "_").replace("-", "_"), directory + "/model.py")
            m = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(m)
            return m
        """

    /// The module's network on the exported weights and `preprocess`ed bytes gives autorate's logits.
    func testNetworkMatchesAutorateInPyTorch() throws {
        let probe = try Self.python("import torch")
        guard probe.status == 0 else {
            let reason = probe.output.split(separator: "\n").last ?? "python3 failed"
            throw XCTSkip("torch is not importable by python3 (\(reason)): the PyTorch network is not checked")
        }
        let root = try scratchDirectory()
        let written = try writeAll(into: root)
        let script =
            Self.importer + """

                import torch
                results = {}
                for d in sys.argv[2:]:
                    m = module(sys.argv[1] + "/" + d)
                    net = m.load(sys.argv[1] + "/" + d + "/weights.safetensors")
                    assert not net.training
                    expected = np.load(sys.argv[1] + "/" + d + "/logits.npy")
                    with torch.no_grad():
                        logits = net(m.preprocess(np.load(sys.argv[1] + "/" + d + "/bytes.npy"))).numpy()
                    scale = float(np.abs(expected).max())
                    results[d] = {"relative": float(np.abs(logits - expected).max()) / scale, "scale": scale, "eps": m.BN_EPS}
                print(json.dumps(results))
                """
        let run = try Self.python(script, [root.path] + written.map(\.name))
        XCTAssertEqual(run.status, 0, run.output)
        guard run.status == 0, let line = run.output.split(separator: "\n").last,
            let results = try JSONSerialization.jsonObject(with: Foundation.Data(line.utf8)) as? [String: [String: Double]]
        else { return XCTFail("no results from python3: \(run.output)") }
        for (name, _, (_, epsilon, _)) in written {
            guard let result = results[name] else {
                XCTFail("\(name): no result")
                continue
            }
            XCTAssertLessThan(result["relative"]!, 1e-4, "\(name): PyTorch's logits differ from autorate's")
            XCTAssertGreaterThan(result["scale"]!, 1e-3, "\(name): logits too small to compare")
            XCTAssertEqual(result["eps"]!, epsilon, "\(name): the module's BN eps is not the export's")
            print("\(name): max |difference| / max |logit| = \(result["relative"]!)")
        }
    }

    /// With numpy alone: the reader returns every tensor and the metadata as written, and
    /// `preprocess` standardizes as autorate does, in every input form it documents.
    func testReaderAndPreprocessWithNumpyAlone() throws {
        // numpy is one of the system packages the launch scripts install (python3-numpy): required
        let probe = try Self.python("import numpy")
        XCTAssertEqual(probe.status, 0, "numpy is not importable by python3; install python3-numpy: \(probe.output)")
        let root = try scratchDirectory()
        let written = try writeAll(into: root)
        let script =
            "import sys\nsys.modules['torch'] = None  # as if torch were not installed\n" + Self.importer + """

                results = {}
                for d in sys.argv[2:]:
                    m = module(sys.argv[1] + "/" + d)
                    tensors, metadata = m.read_safetensors(sys.argv[1] + "/" + d + "/weights.safetensors")
                    rows = np.load(sys.argv[1] + "/" + d + "/rows.npy")
                    images = np.load(sys.argv[1] + "/" + d + "/bytes.npy")
                    x = m.preprocess(images)
                    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (len(rows),) + m.INPUT_SHAPE, x.shape
                    back = (x.transpose(0, 2, 3, 1) if x.ndim == 4 else x).reshape(len(rows), -1)
                    forms = [m.preprocess(images.reshape(len(rows), -1)), m.preprocess(images.astype(np.float32) / 255)]
                    forms += [np.concatenate([m.preprocess(image) for image in images])]
                    if m.IMAGE_SHAPE is not None and m.IMAGE_SHAPE[2] == 1:
                        forms += [m.preprocess(images[..., 0]), np.concatenate([m.preprocess(image[..., 0]) for image in images])]
                    try:
                        m.preprocess(np.zeros((2, m.FEATURES + 1)))
                        raise AssertionError("a wrong shape was accepted")
                    except ValueError:
                        pass
                    try:
                        m.load(sys.argv[1] + "/" + d + "/weights.safetensors")
                        raise AssertionError("load() without torch")
                    except ImportError:
                        pass
                    results[d] = {
                        "tensors": {k: {"dtype": str(t.dtype), "shape": list(t.shape), "values": t.reshape(-1).tolist()} for k, t in tensors.items()},
                        "metadata": metadata,
                        "preprocess": float(np.abs(back - rows).max()),
                        "forms": max(float(np.abs(f.reshape(x.shape) - x).max()) for f in forms),
                        "names": m.CLASS_NAMES,
                    }
                print(json.dumps(results))
                """
        let run = try Self.python(script, [root.path] + written.map(\.name))
        XCTAssertEqual(run.status, 0, run.output)
        guard run.status == 0, let line = run.output.split(separator: "\n").last,
            let results = try JSONSerialization.jsonObject(with: Foundation.Data(line.utf8)) as? [String: [String: Any]]
        else { return XCTFail("no results from python3: \(run.output)") }
        for (name, card, (weights, _, _)) in written {
            guard let result = results[name], let tensors = result["tensors"] as? [String: [String: Any]] else {
                XCTFail("\(name): no result")
                continue
            }
            XCTAssertEqual(Set(tensors.keys), Set(weights.tensors.map(\.name)), name)
            for tensor in weights.tensors {
                guard let read = tensors[tensor.name] else { continue }
                XCTAssertEqual(read["shape"] as? [Int], tensor.shape, "\(name) \(tensor.name)")
                let values = read["values"] as? [NSNumber] ?? []
                switch tensor.dtype {
                case .i64:
                    XCTAssertEqual(read["dtype"] as? String, "int64", "\(name) \(tensor.name)")
                    XCTAssertEqual(values.map(\.int64Value), try weights.int64s(tensor.name), "\(name) \(tensor.name)")
                default:
                    XCTAssertEqual(read["dtype"] as? String, "float32", "\(name) \(tensor.name)")
                    XCTAssertEqual(values.map(\.floatValue), try weights.floats(tensor.name), "\(name) \(tensor.name)")
                }
            }
            XCTAssertEqual(result["metadata"] as? [String: String], weights.metadata, name)
            XCTAssertEqual(result["names"] as? [String], card.classNames, name)
            XCTAssertLessThanOrEqual(
                result["preprocess"] as? Double ?? .infinity, 1e-6, "\(name): preprocess differs from autorate's")
            XCTAssertEqual(result["forms"] as? Double, 0, "\(name): preprocess differs between input forms")
        }
    }
}
