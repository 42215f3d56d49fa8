import Data
import Layers

/// The Python module `autorate export --pytorch` writes next to the weights: the network of a
/// `ModelCard` as a `torch.nn.Module` whose `state_dict` names and shapes are those of the exported
/// weights (`CheckpointFormat.exported`), a numpy-only safetensors reader, `load(path)`, and
/// `preprocess` (pixels scaled by 1/255, the recorded standardization, channels-last rows to
/// PyTorch's NCHW). It imports only json, struct, numpy and torch, and imports without torch (the
/// reader and `preprocess` then work with numpy alone). docs/pytorch.md is its user's guide.
public enum PyTorchModule {
    /// PyTorch's BatchNorm `eps` for the weights exported from a network with `card` (as
    /// `CheckpointFormat.exported` gives it): with the `zero` and `scaled` modes the per-channel
    /// epsilon is folded into `running_var`; 0 too for a network without BN.
    public static func batchNormEpsilon(_ card: ModelCard) -> Double {
        card.batchNorm && card.bnEpsilonMode == EpsilonMode.standard.rawValue ? card.bnEpsilon : 0
    }

    /// The module's Python source.
    /// - Throws: `TrainingError.configuration` for a card that describes no network it can write.
    public static func source(card: ModelCard) throws -> String {
        let network = try networkSource(card)
        let image = card.image.map { "(\($0.height), \($0.width), \($0.channels))" } ?? "None"
        let inputShape =
            card.widths == nil
            ? card.image.map { "(\($0.channels), \($0.height), \($0.width))" } ?? "(\(card.input.features),)"
            : "(\(card.input.features),)"
        let s = card.standardization
        let statistics =
            s.map {
                """
                # The training split's standardization (\($0.kind.rawValue)): row value j -> (x - MEAN[j % L]) / STD[j % L],
                # L = len(MEAN), over channels-last rows (for images: one entry per channel).
                MEAN = np.array(\(list($0.mean)))
                STD = np.array(\(list($0.std)))
                """
            } ?? "# Inputs were not standardized.\nMEAN = STD = None"
        return #"""
            """\#(card.architecture): the network autorate trained, for PyTorch.

                import model
                net = model.load("weights.safetensors")  # eval mode, every weight loaded (strict)
                logits = net(model.preprocess(inputs))
                labels = [model.CLASS_NAMES[k] for k in logits.argmax(1)]

            Written by `autorate export --pytorch` (see docs/pytorch.md). Needs numpy, and torch for the
            network; read_safetensors() and preprocess() work with numpy alone.
            """

            import json
            import struct

            import numpy as np

            try:
                import torch
                from torch import nn
            except ImportError:  # read_safetensors() and preprocess() still work; load() needs torch
                torch = None

                class nn:  # stands in for torch.nn so that the classes below can be defined
                    Module = Sequential = object


            ARCHITECTURE = \#(SafeTensors.jsonString(card.architecture))
            CLASS_NAMES = [\#(card.classNames.map(SafeTensors.jsonString).joined(separator: ", "))]
            # One sample as the network takes it: (channels, height, width) for a conv net, (features,) otherwise.
            INPUT_SHAPE = \#(inputShape)
            FEATURES = \#(card.input.features)
            # Images as autorate reads them, channels-last (height, width, channels); None for vectors.
            IMAGE_SHAPE = \#(image)
            \#(statistics)
            # PyTorch BatchNorm eps: 0 when autorate's per-channel epsilon is folded into running_var.
            BN_EPS = \#(batchNormEpsilon(card))


            def read_safetensors(path):
                """The tensors (name -> numpy array) and metadata (str -> str) of a safetensors file."""
                with open(path, "rb") as f:
                    data = f.read()
                (size,) = struct.unpack("<Q", data[:8])
                header = json.loads(data[8 : 8 + size])
                metadata = header.pop("__metadata__", None) or {}
                body = memoryview(data)[8 + size :]
                tensors = {}
                for name, entry in header.items():
                    begin, end = entry["data_offsets"]
                    values = np.frombuffer(body[begin:end], dtype=_DTYPES[entry["dtype"]])
                    tensors[name] = values.reshape(entry["shape"]).copy()
                return tensors, metadata


            _DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1"}


            def preprocess(x):
                """The network's input for `x`, standardized as in training.

                `x` is anything np.asarray takes (arrays, lists, PIL images, CPU tensors): uint8 values are
                scaled by 1/255 (as autorate reads pixels), floats are taken as they are (pixels in [0, 1]).
                Images (when IMAGE_SHAPE is set) are channels-last: (H, W, C) or (N, H, W, C), also
                (H, W) or (N, H, W) for one channel. Any input may also be given as the rows autorate reads:
                (FEATURES,) or (N, FEATURES), images flattened channels-last.
                Returns float32 shaped (N,) + INPUT_SHAPE (NCHW for a conv net): a torch tensor, or a numpy
                array when torch is not installed.
                """
                x = np.asarray(x)
                x = x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)
                images = IMAGE_SHAPE is not None and (
                    (x.ndim in (3, 4) and x.shape[-3:] == IMAGE_SHAPE)
                    or (IMAGE_SHAPE[2] == 1 and x.ndim in (2, 3) and x.shape[-2:] == IMAGE_SHAPE[:2])
                )
                if not images and not (x.ndim in (1, 2) and x.shape[-1] == FEATURES):
                    expected = f"images {IMAGE_SHAPE} (HWC) or " if IMAGE_SHAPE is not None else ""
                    raise ValueError(f"preprocess: input shaped {x.shape}; expected {expected}rows of {FEATURES} values")
                x = x.reshape(-1, FEATURES)
                if MEAN is not None:
                    rows = x.reshape(len(x), -1, len(MEAN))
                    x = ((rows - MEAN.astype(np.float32)) * (1 / STD).astype(np.float32)).reshape(len(x), FEATURES)
                if len(INPUT_SHAPE) == 3:
                    x = x.reshape((-1,) + IMAGE_SHAPE).transpose(0, 3, 1, 2)
                x = np.ascontiguousarray(x, dtype=np.float32)
                return torch.from_numpy(x) if torch is not None else x


            \#(network)


            def load(path):
                """Net() with the weights of the safetensors file at `path` (autorate export), in eval mode."""
                if torch is None:
                    raise ImportError("load() needs torch; read_safetensors() works without it")
                tensors, _ = read_safetensors(path)
                net = Net()
                net.load_state_dict({name: torch.from_numpy(t) for name, t in tensors.items()}, strict=True)
                return net.eval()

            """#
    }

    private static func list(_ values: [Double]) -> String { "[" + values.map { "\($0)" }.joined(separator: ", ") + "]" }

    /// The `Net` class (and what it uses) of `card`'s architecture.
    private static func networkSource(_ card: ModelCard) throws -> String {
        func bad(_ what: String) -> TrainingError { .configuration("the model description's \(what) has no PyTorch module") }
        guard let head = HeadKind(rawValue: card.head) else { throw bad("head '\(card.head)'") }
        guard card.batchNorm || head == .linear else { throw bad("BN head without BN") }
        if let widths = card.widths {
            guard widths.count >= 2 else { throw bad("widths \(widths)") }
            var layers: [String] = []
            for i in 0..<(widths.count - 1) {
                let isHead = i == widths.count - 2
                let normalized = card.batchNorm && (!isHead || head == .bn)
                layers.append("nn.Linear(\(widths[i]), \(widths[i + 1])\(normalized ? ", bias=False" : ""))")
                if normalized { layers.append("nn.BatchNorm1d(\(widths[i + 1]), eps=BN_EPS)") }
                if !isHead { layers.append("nn.ReLU()") }
            }
            let doc = "[N, \(widths[0])] -> [N, \(widths.last!)] logits."
            return sequential(layers, doc: doc)
        }
        guard card.batchNorm, let image = card.image else { throw bad("input (a conv net needs an image shape)") }
        if let spec = card.layers {
            guard let parsed = ConvArchitecture.parseLayers(spec.joined(separator: ",")) else { throw bad("layers \(spec)") }
            var layers: [String] = []
            var (channels, height, width) = (image.channels, image.height, image.width)
            for layer in parsed {
                switch layer {
                case let .conv(c):
                    layers += [
                        "nn.Conv2d(\(channels), \(c), 3, padding=1, bias=False)", "nn.BatchNorm2d(\(c), eps=BN_EPS)", "nn.ReLU()",
                    ]
                    channels = c
                case .pool:
                    layers.append("nn.MaxPool2d(2)")
                    (height, width) = (height / 2, width / 2)
                }
            }
            guard height > 0 && width > 0 else { throw bad("layers \(spec) (more pools than the image has pixels)") }
            layers.append("nn.Flatten()")  // NCHW: (C, H, W) order, as autorate flattens
            let features = channels * height * width
            layers.append("nn.Linear(\(features), \(card.classes)\(head == .bn ? ", bias=False" : ""))")
            if head == .bn { layers.append("nn.BatchNorm1d(\(card.classes), eps=BN_EPS)") }
            return sequential(
                layers, doc: "[N, \(image.channels), \(image.height), \(image.width)] -> [N, \(card.classes)] logits.")
        }
        guard let resnet = card.resnet, let shortcut = ShortcutKind(rawValue: resnet.shortcut), resnet.blocks > 0,
            !resnet.widths.isEmpty
        else { throw bad("network (neither widths, layers nor a ResNet)") }
        let shortcutCode =
            shortcut == .padding
            ? """
                        # option A: every other pixel, the new channels zeros on both sides
                        self.shortcut = PadShortcut(before=(width - inputs) // 2, after=width - inputs - (width - inputs) // 2)
            """
            : """
                        # option B: 1x1 convolution with stride, then BN
                        self.shortcut = nn.Sequential(
                            nn.Conv2d(inputs, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width, eps=BN_EPS)
                        )
            """
        let padClass =
            shortcut == .padding
            ? """
            class PadShortcut(nn.Module):
                \"""x[:, :, ::2, ::2] with `before` and `after` zero channels.\"""

                def __init__(self, before, after):
                    super().__init__()
                    self.before, self.after = before, after

                def forward(self, x):
                    return nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))



            """ : ""
        var stages: [String] = []
        var inputs = resnet.widths[0]
        for (s, w) in resnet.widths.enumerated() {
            stages.append(
                "        self.layer\(s + 1) = _stage(\(inputs), \(w), blocks=\(resnet.blocks), stride=\(s == 0 ? 1 : 2))")
            inputs = w
        }
        let stagesCall = (1...resnet.widths.count).reduce("x") { "self.layer\($1)(\($0))" }
        let headCode =
            head == .bn
            ? """
                    self.fc = nn.Linear(\(inputs), \(card.classes), bias=False)
                    self.fc_bn = nn.BatchNorm1d(\(card.classes), eps=BN_EPS)
            """
            : "        self.fc = nn.Linear(\(inputs), \(card.classes))"
        return #"""
            \#(padClass)class BasicBlock(nn.Module):
                """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the first block of a stage may halve the size."""

                def __init__(self, inputs, width, stride):
                    super().__init__()
                    self.conv1 = nn.Conv2d(inputs, width, 3, stride=stride, padding=1, bias=False)
                    self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
                    self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
                    self.bn2 = nn.BatchNorm2d(width, eps=BN_EPS)
                    self.shortcut = nn.Identity()
                    if stride != 1 or inputs != width:
            \#(shortcutCode)

                def forward(self, x):
                    h = torch.relu(self.bn1(self.conv1(x)))
                    return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


            def _stage(inputs, width, blocks, stride):
                return nn.Sequential(BasicBlock(inputs, width, stride), *(BasicBlock(width, width, 1) for _ in range(blocks - 1)))


            class Net(nn.Module):
                """[N, \#(image.channels), \#(image.height), \#(image.width)] -> [N, \#(card.classes)] logits."""

                def __init__(self):
                    super().__init__()
                    self.conv1 = nn.Conv2d(\#(image.channels), \#(resnet.widths[0]), 3, padding=1, bias=False)
                    self.bn1 = nn.BatchNorm2d(\#(resnet.widths[0]), eps=BN_EPS)
            \#(stages.joined(separator: "\n"))
            \#(headCode)

                def forward(self, x):
                    x = torch.relu(self.bn1(self.conv1(x)))
                    x = \#(stagesCall)
                    x = self.fc(x.mean((2, 3)))  # global average pooling
                    return \#(head == .bn ? "self.fc_bn(x)" : "x")
            """#
    }

    /// `Net` as an `nn.Sequential` of `layers`, each commented with its state_dict index.
    private static func sequential(_ layers: [String], doc: String) -> String {
        let lines = layers.enumerated().map { "            \($1),  # \($0)" }
        return """
            class Net(nn.Sequential):
                \"""\(doc) Parameters are named by layer index, as listed.\"""

                def __init__(self):
                    super().__init__(
            \(lines.joined(separator: "\n"))
                    )
            """
    }
}
