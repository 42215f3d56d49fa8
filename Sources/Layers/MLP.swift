import TensorCore

/// What follows the last hidden block.
public enum HeadKind: String, Sendable, CaseIterable {
    /// Linear with bias: scale-variant, the usual classifier.
    case linear
    /// Linear without bias, then BN: the paper's VGG variant; the last BN's (gamma, beta) are SV.
    case bn
}

/// A multilayer perceptron with BN, built from widths `[in, h1, ..., hk, classes]`:
/// ```
/// hidden i:  Linear(no bias) -> BN -> ReLU
/// head:      Linear(bias)                 (--head linear)
///            Linear(no bias) -> BN        (--head bn)
/// ```
/// Names follow PyTorch's `nn.Sequential` numbering (`0.weight`, `1.weight`, `1.running_mean`, ...).
/// SI/SV tagging follows docs/theory.md: a weight feeding a BN is SI; a BN's (gamma, beta) are SI jointly
/// when its output passes through ReLU and a bias-free Linear into another BN; the last BN's
/// (gamma, beta) and a biased head are SV.
public final class MLP: NodeBatchGradients {
    public let widths: [Int]
    public let head: HeadKind
    /// False for the plain baseline without BN.
    public let normalized: Bool
    public let parameters: ParameterStore
    /// Running means and variances of every BN, one flat buffer (broadcast and checksummed like parameters).
    public let buffers: FlatBuffer
    public let bufferLayout: ParameterLayout
    public let groups: [ParameterGroup]
    public let maxBatch: Int

    private var linears: [Linear]
    private let norms: [BatchNorm]  // one per hidden layer, plus one for a BN head
    public var batchNorms: [BatchNorm] { norms }
    public var batchNormValuesPerSample: Int? { norms.isEmpty ? nil : 1 }
    private let linearOut: [ActivationBuffer]
    private var normOut: [ActivationBuffer]  // BN output, ReLU applied in place for hidden layers
    /// With shared activations (`shareActivations`), every rank's region, in rank order, and this rank's index.
    private var shared: (regions: [SharedRegion], rank: Int)?
    public var defersWeightGradients = false
    private let gradA: ActivationBuffer  // ping-pong gradient buffers of the widest layer
    private let gradB: ActivationBuffer
    private var inputRows = 0
    public var observer: StepObserver?
    public let chunks = BatchChunks()
    /// Timeline names, per layer: the Linear ("0 linear", its state_dict index) and its BN ("1 bn").
    private let spanNames: [(linear: String, norm: String)]
    private var lastInput: Matrix?

    public var classes: Int { widths.last! }
    public var inputFeatures: Int { widths[0] }

    /// - Parameter normalized: false builds the plain baseline without BN (docs/theory.md E4): every Linear
    ///   has a bias, hidden layers are Linear -> ReLU, and every parameter is SV.
    public init(widths: [Int], head: HeadKind, batchNorm: BatchNormSettings, maxBatch: Int, normalized: Bool = true) {
        precondition(widths.count >= 2 && widths.allSatisfy { $0 > 0 }, "widths need an input and an output size, all positive")
        precondition(normalized || head == .linear, "a network without BN has a linear head")
        self.widths = widths
        self.normalized = normalized
        self.head = head
        self.maxBatch = maxBatch
        var layout = ParameterLayout(), bufferLayout = ParameterLayout()
        var linearSpecs: [(TensorSpec, TensorSpec?)] = []
        var normSpecs: [(TensorSpec, TensorSpec, TensorSpec, TensorSpec)] = []
        var groups: [ParameterGroup] = []
        var index = 0
        let layers = widths.count - 1
        for i in 0..<layers {
            let isHead = i == layers - 1
            let hasNorm = normalized && (!isHead || head == .bn)
            let w = layout.append("\(index).weight", shape: [widths[i + 1], widths[i]])
            let b = hasNorm ? nil : layout.append("\(index).bias", shape: [widths[i + 1]])
            linearSpecs.append((w, b))
            if hasNorm {
                groups.append(ParameterGroup(name: w.name, kind: .scaleInvariant, tensors: [w]))
            } else {
                groups.append(ParameterGroup(name: w.name, kind: .scaleVariant, tensors: [w]))
                groups.append(ParameterGroup(name: b!.name, kind: .scaleVariant, tensors: [b!]))
            }
            index += 1
            if hasNorm {
                let g = layout.append("\(index).weight", shape: [widths[i + 1]])
                let bt = layout.append("\(index).bias", shape: [widths[i + 1]])
                let rm = bufferLayout.append("\(index).running_mean", shape: [widths[i + 1]])
                let rv = bufferLayout.append("\(index).running_var", shape: [widths[i + 1]])
                normSpecs.append((g, bt, rm, rv))
                // This BN's output reaches another BN through ReLU and a bias-free Linear only if a
                // later BN exists: every hidden BN with a BN head, every hidden BN but the last otherwise.
                let feedsAnotherBN = (i < layers - 2) || (i == layers - 2 && head == .bn)
                groups.append(
                    ParameterGroup(
                        name: "\(index).weight+bias",
                        kind: feedsAnotherBN ? .scaleInvariant : .scaleVariant, tensors: [g, bt]))
                index += 2  // BN, then ReLU (a parameter-free index, as in nn.Sequential)
            } else if !isHead {
                index += 1  // ReLU
            }
        }
        parameters = ParameterStore(layout: layout)
        self.bufferLayout = bufferLayout
        buffers = FlatBuffer(count: bufferLayout.count)
        self.groups = groups
        linears = (0..<layers).map {
            Linear(
                inFeatures: widths[$0], outFeatures: widths[$0 + 1],
                weight: linearSpecs[$0].0, bias: linearSpecs[$0].1)
        }
        norms = normSpecs.enumerated().map { k, s in
            BatchNorm(
                channels: s.0.count, gamma: s.0, beta: s.1, runningMean: s.2, runningVar: s.3,
                epsilonMode: batchNorm.epsilonMode, epsilon: batchNorm.epsilon, momentum: batchNorm.momentum,
                incomingWeight: linearSpecs[k].0,
                previousAffine: k > 0 ? (normSpecs[k - 1].0, normSpecs[k - 1].1) : nil, maxBatch: maxBatch)
        }
        for norm in norms { norm.chunks = chunks }
        spanNames = linearSpecs.enumerated().map { i, spec in
            let index = spec.0.name.dropLast(".weight".count)
            return ("\(index) linear", i < normSpecs.count ? "\(normSpecs[i].0.name.dropLast(".weight".count)) bn" : "")
        }
        linearOut = (0..<layers).map { ActivationBuffer(maxRows: maxBatch, cols: widths[$0 + 1]) }
        normOut = norms.map { ActivationBuffer(maxRows: maxBatch, cols: $0.channels) }
        let widest = widths.max()!
        gradA = ActivationBuffer(maxRows: maxBatch, cols: widest)
        gradB = ActivationBuffer(maxRows: maxBatch, cols: widest)
    }

    /// Kaiming-uniform weights (as PyTorch's default), gamma = 1, beta = 0, running var = 1.
    public func initialize(seed: UInt64) {
        var rng = SplitMix64.derived(seed, 0x1417)
        for (i, linear) in linears.enumerated() {
            let bound = Float(1 / Double(widths[i]).squareRoot())
            let w = parameters.value(linear.weight)
            for k in 0..<w.count { w[k] = Float(rng.uniform() * 2 - 1) * bound }
            if let bias = linear.bias {
                let b = parameters.value(bias)
                for k in 0..<b.count { b[k] = Float(rng.uniform() * 2 - 1) * bound }
            }
        }
        for norm in norms { norm.reset(parameters, buffers: buffers) }
    }

    private func rows(_ buffer: ActivationBuffer, _ n: Int) -> Matrix { buffer.matrix(rows: n) }

    /// Training forward of a local batch `x: [n, in]`; returns the logits `[n, classes]`.
    /// Collective when `reducer` is synchronized: one small reduction per BN layer.
    public func forward(_ x: Matrix, reducer: StatisticsReducer) throws -> Matrix {
        var x = x
        if let shared {
            // the first layer's input goes where the other ranks read it, with the sample count
            let mine = shared.regions[shared.rank]
            precondition(x.rows <= maxBatch && x.cols == inputFeatures, "a batch of \(x.rows) x \(x.cols) for the shared input")
            mine.inputs[0].update(from: x.base, count: x.count)
            mine.rows.pointee = x.rows
            x = Matrix(mine.inputs[0], rows: x.rows, cols: x.cols)
        }
        lastInput = x
        inputRows = x.rows
        return try run(x, chunks: chunks) { norm, z, y, relu in
            try norm.forward(z, y, parameters, buffers: buffers, reducer: reducer, relu: relu)
        }
    }

    /// Inference forward with BN running statistics; no communication.
    public func predict(_ x: Matrix) -> Matrix {
        run(x, chunks: nil) { norm, z, y, relu in norm.inference(z, y, parameters, buffers: buffers, relu: relu) }
    }

    /// Linear -> BN and ReLU (`normalize`, fused in one pass) per hidden layer, then the head.
    private func run(_ x: Matrix, chunks: BatchChunks?, normalize: (BatchNorm, Matrix, Matrix, Bool) throws -> Void) rethrows
        -> Matrix
    {
        precondition(x.cols == inputFeatures, "input has \(x.cols) features; the network expects \(inputFeatures)")
        var current = x
        for (i, linear) in linears.enumerated() {
            let z = rows(linearOut[i], x.rows)
            observer?.layerBegan()
            linear.forward(current, z, parameters, chunks: chunks)
            observer?.layerEnded(spanNames[i].linear, backward: false)
            current = z
            if i < norms.count {
                let y = rows(normOut[i], x.rows)
                observer?.layerBegan()
                try normalize(norms[i], z, y, i < linears.count - 1)
                observer?.layerEnded(spanNames[i].norm, backward: false)
                current = y
            } else if i < linears.count - 1 {
                for k in 0..<z.count { z.base[k] = Swift.max(z.base[k], 0) }  // ReLU of the plain baseline
            }
        }
        return current
    }

    /// Backward of the last `forward`, from `dlogits: [n, classes]`, into `parameters.gradients`:
    /// Linear weight gradients are overwritten by their GEMMs (no pass to zero 4 bytes per
    /// parameter); the small tensors (BN gamma and beta, biases) are zeroed here and accumulated.
    /// Collective when synchronized: one reduction per BN.
    ///
    /// - Parameter radial: where the `.scaled`-epsilon weight terms go; `.global` or `.local` leave
    ///   them in `parameters.pendingRadial` for the optimizer's update pass (one pass over the
    ///   weights saved). See `RadialDeferral`.
    public func backward(_ dlogits: Matrix, reducer: StatisticsReducer, radial: RadialDeferral = .none) throws {
        parameters.pendingRadial.removeAll()
        for linear in linears { if let bias = linear.bias { zero(parameters.gradient(bias)) } }
        for norm in norms {
            zero(parameters.gradient(norm.gamma))
            zero(parameters.gradient(norm.beta))
        }
        let n = inputRows
        precondition(!defersWeightGradients || shared != nil, "weight gradients are deferred only with shared activations")
        var upstream = dlogits  // gradient with respect to the current layer's output
        var useA = true
        // with shared activations, each Linear's output gradient goes where the other ranks read it
        let outputGradients = shared.map { $0.regions[$0.rank].outputGradients }
        if let outputGradients, linears.count > norms.count {
            outputGradients[linears.count - 1].update(from: dlogits.base, count: dlogits.count)
            upstream = Matrix(outputGradients[linears.count - 1], rows: dlogits.rows, cols: dlogits.cols)
        }
        for i in stride(from: linears.count - 1, through: 0, by: -1) {
            if i < norms.count {
                observer?.layerBegan()
                // ReLU (hidden layers) and BN, in the BN's two passes, into the linear output's gradient
                let dz = Matrix(outputGradients?[i] ?? (useA ? gradA : gradB).storage.pointer, rows: n, cols: widths[i + 1])
                useA.toggle()
                try norms[i].backward(
                    upstream, dz, parameters, reducer: reducer, deferEpsilonGradient: true, relu: i < linears.count - 1)
                observer?.layerEnded(spanNames[i].norm, backward: true)
                upstream = dz
            } else if i < linears.count - 1 {
                reluBackward(output: rows(linearOut[i], n).readOnly, upstream.readOnly, upstream.buffer)
            }
            let input = i == 0 ? lastInput! : rows(normalized ? normOut[i - 1] : linearOut[i - 1], n)
            var dx: Matrix? = nil
            if i > 0 {
                dx = Matrix((useA ? gradA : gradB).storage.pointer, rows: n, cols: widths[i])
                useA.toggle()
            }
            observer?.layerBegan()
            linears[i].backward(
                input, upstream, dx, parameters, accumulating: false, chunks: chunks, weightGradient: !defersWeightGradients)
            if i < norms.count { norms[i].applyEpsilonGradient(parameters, radial: radial) }
            observer?.layerEnded(spanNames[i].linear, backward: true)
            // the layout is in forward order: every gradient from this Linear's weight on is final
            try observer?.gradientsFinal(from: linears[i].weight.offset)
            if let dx { upstream = dx }
        }
    }

    public var architecture: String {
        normalized
            ? "mlp, widths \(widths.map(String.init).joined(separator: ",")), head \(head.rawValue)"
            : "plain mlp without BN (baseline), widths \(widths.map(String.init).joined(separator: ","))"
    }

    /// Forward, weight gradient, and input gradient but for the first layer, as `Linear` calls them.
    public func gemmWorkload(rows: Int) -> [GemmCall] { gemmWorkload(rows: rows, weightGradients: true) }

    public func gemmWorkloadDeferringWeightGradients(rows: Int) -> [GemmCall] { gemmWorkload(rows: rows, weightGradients: false) }

    private func gemmWorkload(rows: Int, weightGradients: Bool) -> [GemmCall] {
        let forward = linears.map { GemmCall(.none, .transposed, m: rows, n: $0.outFeatures, k: $0.inFeatures, beta: 0) }
        let backward = linears.enumerated().reversed().flatMap { i, l in
            (weightGradients
                ? l.weightRowPieces.map { GemmCall(.transposed, .none, m: $0.count, n: l.inFeatures, k: rows, beta: 0) } : [])
                + (i > 0 ? [GemmCall(.none, .none, m: rows, n: l.inFeatures, k: l.outFeatures, beta: 0)] : [])
        }
        return forward + backward
    }

    // MARK: weight gradients over the node's batch (`NodeBatchGradients`)

    /// One rank's shared activations: its sample count, then each Linear's input and each Linear's
    /// output gradient, `maxBatch` rows each.
    private struct SharedRegion {
        let rows: UnsafeMutablePointer<Int>
        let inputs: [UnsafeMutablePointer<Float>]
        let outputGradients: [UnsafeMutablePointer<Float>]
    }

    /// 16 floats for the count (a cache line), then the matrices. 0 for the plain baseline, whose
    /// Linear inputs are not BN outputs.
    public var sharedActivationFloats: Int {
        normalized ? 16 + maxBatch * (widths.dropLast().reduce(0, +) + widths.dropFirst().reduce(0, +)) : 0
    }

    public func shareActivations(in regions: [UnsafeMutablePointer<Float>], rank: Int, keeper: AnyObject) {
        precondition(
            sharedActivationFloats > 0 && regions.indices.contains(rank),
            "no shared activations for rank \(rank) of \(regions.count)")
        let layout = regions.map { base in
            var at = base + 16
            func take(_ cols: Int) -> UnsafeMutablePointer<Float> {
                defer { at += maxBatch * cols }
                return at
            }
            let inputs = widths.dropLast().map(take), outputGradients = widths.dropFirst().map(take)
            return SharedRegion(
                rows: UnsafeMutableRawPointer(base).bindMemory(to: Int.self, capacity: 1), inputs: inputs,
                outputGradients: outputGradients)
        }
        shared = (layout, rank)
        // a BN's output is the next Linear's input: it is written where the other ranks read it
        for k in normOut.indices where k + 1 < linears.count {
            normOut[k] = ActivationBuffer(
                wrapping: layout[rank].inputs[k + 1], maxRows: maxBatch, cols: widths[k + 1], keeper: keeper)
        }
    }

    public var nodeBatchTensors: [TensorSpec] { linears.map(\.weight) }

    public func weightGradient(
        _ tensor: TensorSpec, rows: Range<Int>, into gradients: UnsafeMutablePointer<Float>, sameBitsAsSummed: Bool
    ) {
        guard let shared, let i = linears.firstIndex(where: { $0.weight.offset == tensor.offset }) else {
            preconditionFailure("\(tensor.name): not a weight whose gradient is computed over the node's batch")
        }
        let parts = shared.regions.map { region in
            (
                x: Matrix(region.inputs[i], rows: region.rows.pointee, cols: widths[i]),
                dy: Matrix(region.outputGradients[i], rows: region.rows.pointee, cols: widths[i + 1])
            )
        }
        linears[i].weightGradient(
            rows: rows, over: parts, into: gradients + tensor.offset, tree: chunks, sameBitsAsSummed: sameBitsAsSummed)
    }

    public func cutWeightGradients(at segments: [Range<Int>]) {
        for i in linears.indices {
            let weight = linears[i].weight
            linears[i].weightRowCuts = segments.compactMap { weight.rows(in: $0)?.lowerBound }.filter { $0 > 0 }.sorted()
        }
    }
}
