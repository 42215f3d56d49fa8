import TensorCore

/// A convolutional architecture, before it is built for an input shape.
public enum ConvArchitecture: Sendable, Equatable {
    /// One entry of a VGG-style feature extractor.
    public enum Layer: Sendable, Equatable {
        /// 3x3 conv (stride 1, padding 1, no bias) -> BN -> ReLU with this many output channels.
        case conv(Int)
        /// 2x2 max pooling, stride 2.
        case pool
    }
    /// conv-BN-ReLU layers and pools, then flatten (in PyTorch's CHW order) and the head;
    /// named like an `nn.Sequential` (`0.weight`, `1.running_mean`, ...).
    case sequential([Layer])
    /// CIFAR ResNet (He et al. 2016, §4.2): a 3x3 conv-BN-ReLU stem with `widths[0]` channels, then
    /// per stage `blocks` basic blocks (the first of stages 2... halves the size), global average
    /// pooling and the head; named like the common PyTorch CIFAR ResNet (`conv1`, `layer1.0.bn2`, `fc`).
    case resnet(widths: [Int], blocks: Int, shortcut: ShortcutKind)

    /// `cnn`: small and fast (conv 16, pool, conv 32, pool), for tests and quick runs.
    public static let cnn = ConvArchitecture.sequential([.conv(16), .pool, .conv(32), .pool])
    /// `vgg`: the reference VGG-style net for 32x32 inputs, channels scaled by `widthMultiplier`.
    public static func vgg(widthMultiplier: Double = 1) -> ConvArchitecture {
        let c = { (base: Int) in Swift.max(1, Int((Double(base) * widthMultiplier).rounded())) }
        return .sequential([.conv(c(32)), .conv(c(32)), .pool, .conv(c(64)), .conv(c(64)), .pool, .conv(c(128)), .pool])
    }
    /// `resnet20`: 3 stages of 3 basic blocks, 16/32/64 channels.
    public static func resnet20(shortcut: ShortcutKind) -> ConvArchitecture {
        .resnet(widths: [16, 32, 64], blocks: 3, shortcut: shortcut)
    }

    /// `32,32,M,64,64,M,128,M` and the like: channel counts and `M` for a pool.
    public static func parseLayers(_ text: String) -> [Layer]? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        let layers = parts.map { p -> Layer? in
            if p == "M" || p == "m" { return .pool }
            guard let c = Int(p), c > 0 else { return nil }
            return .conv(c)
        }
        guard !layers.isEmpty, layers.allSatisfy({ $0 != nil }), layers.contains(where: { $0 != .pool }) else { return nil }
        return layers.map { $0! }
    }
}

/// A batch-normalized convolutional network on NHWC images: the `cnn`, `vgg` and `resnet20` presets.
///
/// SI/SV tagging (docs/theory.md): every conv weight feeds a BN, so it is SI. A BN's (gamma, beta) are SI
/// jointly when its output reaches only BNs, through ReLU, max pooling (positively homogeneous) and
/// bias-free convs: every BN of a VGG-style stack but the last (and the last too with a BN head), and
/// the first BN of each residual block. The BN at the end of a residual branch, a projection
/// shortcut's BN and the stem BN of a ResNet are SV: their output is added to a skip path that does
/// not scale with them. The head follows the MLP's rule.
public final class ConvNet: Network {
    public let input: ImageShape
    public let architectureSpec: ConvArchitecture
    public let head: HeadKind
    public let parameters: ParameterStore
    public let buffers: FlatBuffer
    public let bufferLayout: ParameterLayout
    public let groups: [ParameterGroup]
    public let maxBatch: Int
    public let classes: Int
    public var inputFeatures: Int { input.count }

    enum Unit {
        case convBN(ConvBN)
        case pool(MaxPool2d, ActivationBuffer)
        case residual(ResidualBlock)
    }
    private let units: [Unit]
    private let unitInputs: [ImageShape]
    private let globalPooling: Bool  // ResNet: global average pooling; VGG-style: flatten
    private let features: ActivationBuffer
    private let linear: Linear
    private let headNorm: BatchNorm?
    private let logits: ActivationBuffer
    private let shared: SharedActivations
    private let initialization: [(tensor: TensorSpec, fanIn: Int)]
    private let norms: [BatchNorm]
    public let chunks = BatchChunks()
    public var batchNorms: [BatchNorm] { norms }
    public var batchNormValuesPerSample: Int? {
        if headNorm != nil { return 1 }
        let pixels = units.compactMap { unit -> Int? in
            switch unit {
            case let .convBN(u): u.output.height * u.output.width
            case .pool: nil
            case let .residual(block): block.first.output.height * block.first.output.width
            }
        }
        return pixels.min()
    }
    public var observer: StepObserver?
    /// Per unit: its timeline name, and the lowest flat offset of the parameters of this unit, the
    /// later ones and the head (the layout is in forward order): after the unit's backward, every
    /// gradient from there on is final.
    private let unitSpans: [(name: String, finalFrom: Int)]
    private let headSpan: String
    private var lastInputs: [Matrix] = []
    private var lastFeatures: Matrix?

    /// - Parameter convolution: the algorithm of every convolution it applies to (`.winograd`: the
    /// 3x3 stride-1 ones; the others stay im2col); nil: each convolution's `Conv2d.defaultAlgorithm`.
    public init(
        _ architecture: ConvArchitecture, input: ImageShape, classes: Int, head: HeadKind,
        batchNorm: BatchNormSettings, maxBatch: Int, convolution: Conv2d.Algorithm? = nil
    ) {
        var builder = Builder(batchNorm: batchNorm, maxBatch: maxBatch, convolution: convolution)
        var shape = input
        var units: [Unit] = [], unitInputs: [ImageShape] = []
        var lastAffine: (gamma: TensorSpec, beta: TensorSpec)? = nil
        switch architecture {
        case let .sequential(layers):
            var index = 0
            var convUnits: [Int] = []  // positions of conv units, to tag their BN once the next is known
            for layer in layers {
                unitInputs.append(shape)
                switch layer {
                case let .conv(channels):
                    let unit = builder.convBN(
                        shape, channels, kernel: 3, stride: 1, relu: true, weightName: "\(index).weight",
                        normName: "\(index + 1)", previousAffine: lastAffine)
                    lastAffine = (unit.norm.gamma, unit.norm.beta)
                    convUnits.append(units.count)
                    units.append(.convBN(unit))
                    index += 3  // conv, BN, ReLU
                case .pool:
                    let pool = MaxPool2d(input: shape, maxBatch: maxBatch)
                    units.append(.pool(pool, ActivationBuffer(maxRows: maxBatch, cols: pool.output.count)))
                    index += 1
                }
                shape = Self.output(of: units.last!)
            }
            // every BN feeds the next conv's BN; the last one feeds the head
            for (k, position) in convUnits.enumerated() {
                guard case let .convBN(unit) = units[position] else { continue }
                let feedsBN = k < convUnits.count - 1 || head == .bn
                builder.tagAffine(
                    unit.norm, name: "\(unit.norm.gamma.name.dropLast(".weight".count)).weight+bias", invariant: feedsBN)
            }
            builder.headNames = ("\(index + 1)", "\(index + 2)")  // after Flatten at `index`
            globalPooling = false
        case let .resnet(widths, blocks, shortcut):
            unitInputs.append(shape)
            let stem = builder.convBN(
                shape, widths[0], kernel: 3, stride: 1, relu: true, weightName: "conv1.weight", normName: "bn1")
            builder.tagAffine(stem.norm, name: "bn1.weight+bias", invariant: false)
            units.append(.convBN(stem))
            shape = stem.output
            lastAffine = (stem.norm.gamma, stem.norm.beta)
            for (s, width) in widths.enumerated() {
                for b in 0..<blocks {
                    let prefix = "layer\(s + 1).\(b)"
                    let stride = s > 0 && b == 0 ? 2 : 1
                    unitInputs.append(shape)
                    let first = builder.convBN(
                        shape, width, kernel: 3, stride: stride, relu: true, weightName: "\(prefix).conv1.weight",
                        normName: "\(prefix).bn1", previousAffine: lastAffine)
                    builder.tagAffine(first.norm, name: "\(prefix).bn1.weight+bias", invariant: true)
                    let second = builder.convBN(
                        first.output, width, kernel: 3, stride: 1, relu: false, weightName: "\(prefix).conv2.weight",
                        normName: "\(prefix).bn2", previousAffine: (first.norm.gamma, first.norm.beta))
                    builder.tagAffine(second.norm, name: "\(prefix).bn2.weight+bias", invariant: false)
                    var path = ResidualBlock.Shortcut.identity
                    if stride != 1 || width != shape.channels {
                        switch shortcut {
                        case .padding:
                            precondition(
                                width >= shape.channels && stride == 2, "padding shortcuts halve the size and add channels")
                            path = .padding
                        case .projection:
                            let projection = builder.convBN(
                                shape, width, kernel: 1, stride: stride, relu: false,
                                weightName: "\(prefix).shortcut.0.weight", normName: "\(prefix).shortcut.1")
                            builder.tagAffine(projection.norm, name: "\(prefix).shortcut.1.weight+bias", invariant: false)
                            path = .projection(projection)
                        }
                    }
                    let block = ResidualBlock(first: first, second: second, shortcut: path, input: shape, maxBatch: maxBatch)
                    units.append(.residual(block))
                    shape = block.output
                    lastAffine = nil  // a block's output is a sum, not one BN's output
                }
            }
            builder.headNames = ("fc", "fc_bn")
            globalPooling = true
        }
        let featureCount = globalPooling ? shape.channels : shape.count
        let head = builder.head(
            features: featureCount, classes: classes, kind: head, previousAffine: globalPooling ? nil : lastAffine)
        self.input = input
        self.architectureSpec = architecture
        self.head = head.kind
        self.classes = classes
        self.maxBatch = maxBatch
        self.units = units
        self.unitInputs = unitInputs
        linear = head.linear
        headNorm = head.norm
        features = ActivationBuffer(maxRows: maxBatch, cols: featureCount)
        logits = ActivationBuffer(maxRows: maxBatch, cols: classes)
        parameters = ParameterStore(layout: builder.layout)
        bufferLayout = builder.bufferLayout
        buffers = FlatBuffer(count: builder.bufferLayout.count)
        groups = builder.groups.sorted { $0.range.lowerBound < $1.range.lowerBound }  // forward order
        initialization = builder.weights
        norms = builder.norms
        for norm in norms { norm.chunks = chunks }
        let headName = String(head.linear.weight.name.dropLast(".weight".count))
        headSpan = head.norm == nil ? "\(headName) linear" : "\(headName) linear+bn"
        var finalFrom = head.linear.weight.offset
        unitSpans = units.reversed().map { unit in
            switch unit {
            case let .convBN(u):
                finalFrom = u.conv.weight.offset
                return ("\(u.conv.weight.name.dropLast(".weight".count)) conv+bn", finalFrom)
            case .pool: return ("pool", finalFrom)
            case let .residual(block):
                finalFrom = block.first.conv.weight.offset
                return ("\(block.first.conv.weight.name.dropLast(".conv1.weight".count)) block", finalFrom)
            }
        }.reversed()
        let widest = ([input.count, featureCount, classes] + units.map { Self.output(of: $0).count }).max()!
        shared = SharedActivations(values: widest * maxBatch)
    }

    private static func output(of unit: Unit) -> ImageShape {
        switch unit {
        case let .convBN(u): u.output
        case let .pool(p, _): p.output
        case let .residual(r): r.output
        }
    }

    public var architecture: String {
        switch architectureSpec {
        case let .sequential(layers):
            let text = layers.map { if case let .conv(c) = $0 { String(c) } else { "M" } }.joined(separator: ",")
            return "conv net \(text) on \(input) images, head \(head.rawValue)"
        case let .resnet(widths, blocks, shortcut):
            return
                "ResNet-\(6 * blocks + 2) (\(widths.map(String.init).joined(separator: "/")) channels, \(shortcut.rawValue) shortcuts) on \(input) images, head \(head.rawValue)"
        }
    }

    /// Weights and the head's bias uniform in +-1/sqrt(fan-in) (PyTorch's default for conv and
    /// Linear), gamma = 1, beta = 0,
    /// running var = 1; each tensor from its own stream of `seed`.
    public func initialize(seed: UInt64) {
        for (k, w) in initialization.enumerated() {
            var rng = SplitMix64.derived(seed, 0xC0 + UInt64(k))
            let bound = Float(1 / Double(w.fanIn).squareRoot())
            let values = parameters.value(w.tensor)
            for i in 0..<values.count { values[i] = Float(rng.uniform() * 2 - 1) * bound }
        }
        for norm in norms { norm.reset(parameters, buffers: buffers) }
    }

    public func forward(_ x: Matrix, reducer: StatisticsReducer) throws -> Matrix {
        try run(x, reducer: reducer)
    }

    public func predict(_ x: Matrix) -> Matrix {
        try! run(x, reducer: nil)  // inference does not communicate, so it cannot throw
    }

    private func run(_ x: Matrix, reducer: StatisticsReducer?) throws -> Matrix {
        precondition(
            x.cols == input.count, "input has \(x.cols) values per sample; the network expects \(input) = \(input.count)")
        precondition(x.rows <= maxBatch, "batch of \(x.rows) exceeds the network's \(maxBatch)")
        let n = x.rows
        var current = x
        lastInputs.removeAll(keepingCapacity: true)
        for (i, unit) in units.enumerated() {
            lastInputs.append(current)
            if reducer != nil { observer?.layerBegan() }
            defer { if reducer != nil { observer?.layerEnded(unitSpans[i].name, backward: false) } }
            switch unit {
            case let .convBN(u):
                current = try u.forward(current, parameters, buffers, shared, reducer: reducer)
            case let .pool(pool, out):
                let y = out.matrix(rows: n)
                pool.forward(current, y)
                current = y
            case let .residual(block):
                current = try block.forward(current, parameters, buffers, shared, reducer: reducer)
            }
        }
        let f = features.matrix(rows: n)
        let last = Self.output(of: units.last!)
        if globalPooling { GlobalAveragePool.forward(current, shape: last, f) } else { Flatten.forward(current, shape: last, f) }
        lastFeatures = f
        let out = logits.matrix(rows: n)
        if reducer != nil { observer?.layerBegan() }
        defer { if reducer != nil { observer?.layerEnded(headSpan, backward: false) } }
        if let headNorm {
            let z = shared.matrix(shared.scratch, rows: n, cols: classes)
            linear.forward(f, z, parameters, chunks: reducer == nil ? nil : chunks)
            if let reducer {
                try headNorm.forward(z, out, parameters, buffers: buffers, reducer: reducer)
            } else {
                headNorm.inference(z, out, parameters, buffers: buffers)
            }
        } else {
            linear.forward(f, out, parameters, chunks: reducer == nil ? nil : chunks)
        }
        return out
    }

    public func backward(_ dlogits: Matrix, reducer: StatisticsReducer, radial: RadialDeferral = .none) throws {
        let p = parameters
        p.pendingRadial.removeAll()
        if let bias = linear.bias { zero(p.gradient(bias)) }
        for norm in norms {
            zero(p.gradient(norm.gamma))
            zero(p.gradient(norm.beta))
        }
        let n = dlogits.rows, f = lastFeatures!
        let df = shared.matrix(shared.gradients[0], rows: n, cols: f.cols)
        observer?.layerBegan()
        if let headNorm {
            let dz = shared.matrix(shared.scratch, rows: n, cols: classes)
            try headNorm.backward(dlogits, dz, p, reducer: reducer, deferEpsilonGradient: true)
            linear.backward(f, dz, df, p, accumulating: false, chunks: chunks)
            headNorm.applyEpsilonGradient(p, radial: radial)
        } else {
            linear.backward(f, dlogits, df, p, accumulating: false, chunks: chunks)
        }
        observer?.layerEnded(headSpan, backward: true)
        try observer?.gradientsFinal(from: linear.weight.offset)
        let last = Self.output(of: units.last!)
        var g = shared.matrix(shared.free(besides: df), rows: n, cols: last.count)
        if globalPooling { GlobalAveragePool.backward(df, shape: last, g) } else { Flatten.backward(df, shape: last, g) }
        for (i, unit) in units.enumerated().reversed() {
            let x = lastInputs[i], needInputGradient = i > 0
            let dx = shared.matrix(shared.free(besides: g), rows: n, cols: unitInputs[i].count)
            observer?.layerBegan()
            switch unit {
            case let .convBN(u):
                try u.backward(x, g, needInputGradient ? dx : nil, p, shared, reducer: reducer, radial: radial)
                g = dx
            case let .pool(pool, _):
                if needInputGradient { pool.backward(g, dx) }
                g = dx
            case let .residual(block):
                g = try block.backward(x, g, p, shared, reducer: reducer, radial: radial)
            }
            observer?.layerEnded(unitSpans[i].name, backward: true)
            try observer?.gradientsFinal(from: unitSpans[i].finalFrom)
        }
    }

    public func gemmWorkload(rows: Int) -> [GemmCall] {
        var forward: [GemmCall] = [], backward: [GemmCall] = []
        forEachConvolution { conv, inputGradient in
            forward += conv.gemmWorkload(batch: rows, pass: .forward)
            backward += conv.gemmWorkload(batch: rows, pass: inputGradient ? .backward : .weightGradient)
        }
        let l = linear
        forward.append(GemmCall(.none, .transposed, m: rows, n: l.outFeatures, k: l.inFeatures, beta: 0))
        backward.append(GemmCall(.transposed, .none, m: l.outFeatures, n: l.inFeatures, k: rows, beta: 0))
        backward.append(GemmCall(.none, .none, m: rows, n: l.inFeatures, k: l.outFeatures, beta: 0))
        return forward + backward.reversed()
    }

    public func modelFlops(rows: Int) -> Double {
        var flops = 3 * 2 * Double(rows * linear.outFeatures * linear.inFeatures)
        forEachConvolution { conv, inputGradient in
            flops += conv.directFlops(batch: rows, pass: .forward)
            flops += conv.directFlops(batch: rows, pass: inputGradient ? .backward : .weightGradient)
        }
        return flops
    }

    /// Each convolution in forward order, with whether backward computes its input gradient.
    private func forEachConvolution(_ body: (Conv2d, Bool) -> Void) {
        for (i, unit) in units.enumerated() {
            switch unit {
            case let .convBN(u): body(u.conv, i > 0)
            case .pool: break
            case let .residual(block):
                body(block.first.conv, true)
                body(block.second.conv, true)
                if case let .projection(u) = block.shortcut { body(u.conv, true) }
            }
        }
    }
}

/// Lays out parameters, BN buffers and groups while a `ConvNet` is assembled.
private struct Builder {
    let batchNorm: BatchNormSettings
    let maxBatch: Int
    var layout = ParameterLayout(), bufferLayout = ParameterLayout()
    var groups: [ParameterGroup] = []
    var weights: [(tensor: TensorSpec, fanIn: Int)] = []
    var norms: [BatchNorm] = []
    var headNames = ("fc", "fc_bn")

    let convolution: Conv2d.Algorithm?

    init(batchNorm: BatchNormSettings, maxBatch: Int, convolution: Conv2d.Algorithm?) {
        self.convolution = convolution
        self.batchNorm = batchNorm
        self.maxBatch = maxBatch
    }

    mutating func norm(
        _ name: String, channels: Int, rows: Int, incoming: TensorSpec,
        previousAffine: (gamma: TensorSpec, beta: TensorSpec)?
    ) -> BatchNorm {
        let g = layout.append("\(name).weight", shape: [channels])
        let b = layout.append("\(name).bias", shape: [channels])
        let norm = BatchNorm(
            channels: channels, gamma: g, beta: b,
            runningMean: bufferLayout.append("\(name).running_mean", shape: [channels]),
            runningVar: bufferLayout.append("\(name).running_var", shape: [channels]),
            epsilonMode: batchNorm.epsilonMode, epsilon: batchNorm.epsilon, momentum: batchNorm.momentum,
            incomingWeight: incoming, previousAffine: previousAffine, maxBatch: rows)
        norms.append(norm)
        return norm
    }

    /// Conv (SI weight) then BN; the BN's (gamma, beta) group is added by `tagAffine`.
    mutating func convBN(
        _ input: ImageShape, _ channels: Int, kernel: Int, stride: Int, relu: Bool, weightName: String,
        normName: String, previousAffine: (gamma: TensorSpec, beta: TensorSpec)? = nil
    ) -> ConvBN {
        let w = layout.append(
            weightName, shape: Conv2d.weightShape(outChannels: channels, kernel: kernel, inChannels: input.channels))
        groups.append(ParameterGroup(name: weightName, kind: .scaleInvariant, tensors: [w]))
        let padding = kernel / 2
        let winogradApplies = Winograd3x3.applies(
            kernel: kernel, stride: stride, padding: padding, inChannels: input.channels, outChannels: channels)
        let conv = Conv2d(
            input: input, outChannels: channels, kernel: kernel, stride: stride, padding: padding, weight: w,
            maxBatch: maxBatch, algorithm: convolution == .winograd && !winogradApplies ? .im2col : convolution)
        weights.append((w, conv.fanIn))
        let norm = norm(
            normName, channels: channels, rows: maxBatch * conv.output.pixels, incoming: w, previousAffine: previousAffine)
        return ConvBN(conv: conv, norm: norm, relu: relu, maxBatch: maxBatch)
    }

    mutating func tagAffine(_ norm: BatchNorm, name: String, invariant: Bool) {
        groups.append(
            ParameterGroup(name: name, kind: invariant ? .scaleInvariant : .scaleVariant, tensors: [norm.gamma, norm.beta]))
    }

    /// Linear (with bias, SV) or Linear (no bias, SI) then BN (SV), as in `MLP`.
    mutating func head(
        features: Int, classes: Int, kind: HeadKind, previousAffine: (gamma: TensorSpec, beta: TensorSpec)?
    ) -> (kind: HeadKind, linear: Linear, norm: BatchNorm?) {
        let w = layout.append("\(headNames.0).weight", shape: [classes, features])
        weights.append((w, features))
        if kind == .bn {
            groups.append(ParameterGroup(name: w.name, kind: .scaleInvariant, tensors: [w]))
            let n = norm(headNames.1, channels: classes, rows: maxBatch, incoming: w, previousAffine: previousAffine)
            tagAffine(n, name: "\(headNames.1).weight+bias", invariant: false)
            return (kind, Linear(inFeatures: features, outFeatures: classes, weight: w, bias: nil), n)
        }
        let b = layout.append("\(headNames.0).bias", shape: [classes])
        weights.append((b, features))
        groups.append(ParameterGroup(name: w.name, kind: .scaleVariant, tensors: [w]))
        groups.append(ParameterGroup(name: b.name, kind: .scaleVariant, tensors: [b]))
        return (kind, Linear(inFeatures: features, outFeatures: classes, weight: w, bias: b), nil)
    }
}
