import TensorCore

/// What the trainer needs of a model: flat parameters and BN buffers, the SI/SV grouping, a
/// training forward and backward that may communicate (synchronized BN), and an inference forward.
/// Inputs are rows of a `Matrix` (`[n, inputFeatures]`; images in NHWC, see `ImageShape`).
public protocol Network: AnyObject {
    var parameters: ParameterStore { get }
    /// Running means and variances of every BN, one flat buffer (broadcast and checksummed like parameters).
    var buffers: FlatBuffer { get }
    var bufferLayout: ParameterLayout { get }
    var groups: [ParameterGroup] { get }
    /// The most samples one forward may take (the local share of a step, or an evaluation chunk).
    var maxBatch: Int { get }
    var inputFeatures: Int { get }
    var classes: Int { get }
    /// Every BN layer, in forward order.
    var batchNorms: [BatchNorm] { get }
    /// The fewest values per channel that one sample gives a BN layer (its output pixels; 1 for a
    /// BN on vectors); nil without BN. A batch must give every BN at least 2.
    var batchNormValuesPerSample: Int? { get }
    /// One line naming the architecture, printed at startup.
    var architecture: String { get }
    /// Told about every layer of a training forward and backward (nil: nobody watches).
    var observer: StepObserver? { get set }
    /// The chunks of the next training forward and backward (deterministic mode), shared by every
    /// layer; one chunk, the whole batch, unless set.
    var chunks: BatchChunks { get }

    /// Deterministic initialization from `seed` (every rank gets the same values).
    func initialize(seed: UInt64)
    /// Training forward; returns the logits `[n, classes]`. Collective when `reducer` is synchronized.
    func forward(_ x: Matrix, reducer: StatisticsReducer) throws -> Matrix
    /// Inference forward with BN running statistics; no communication.
    func predict(_ x: Matrix) -> Matrix
    /// Backward of the last `forward` into `parameters.gradients` (every gradient written, none
    /// accumulated from an earlier step). Collective when synchronized.
    func backward(_ dlogits: Matrix, reducer: StatisticsReducer, radial: RadialDeferral) throws
    /// The GEMMs one training step of `rows` samples makes, for the benchmark's GEMM-only bound.
    func gemmWorkload(rows: Int) -> [GemmCall]
    /// The multiply-adds (times 2) of one training step of `rows` samples as direct convolutions and
    /// plain matrix products: the model's work, whichever algorithm (Winograd does fewer) does it.
    func modelFlops(rows: Int) -> Double
}

extension Network {
    public func modelFlops(rows: Int) -> Double { gemmWorkload(rows: rows).reduce(0) { $0 + $1.flops } }
}

/// A network whose weight gradients can be computed over the whole batch of a node's ranks rather
/// than by every rank over its own samples and then summed. Each rank keeps, in node shared memory,
/// what its Linear layers' weight gradients are made of (each layer's input and output gradient),
/// and the rank that updates a weight row computes that row's gradient from every rank's samples:
/// no rank computes, writes or reads whole weight gradients; each reads the node batch's
/// activations instead (for an MLP fewer bytes than its weights).
public protocol NodeBatchGradients: Network {
    /// Floats each rank shares, sized for `maxBatch` samples (0: this network cannot).
    var sharedActivationFloats: Int { get }
    /// Moves this network's shared activations into `regions[rank]` and reads the other ranks'
    /// from theirs (one region of `sharedActivationFloats` per rank, in rank order), for good;
    /// `keeper` owns the regions' memory.
    func shareActivations(in regions: [UnsafeMutablePointer<Float>], rank: Int, keeper: AnyObject)
    /// The tensors whose gradients `weightGradient` computes.
    var nodeBatchTensors: [TensorSpec] { get }
    /// Whether the next `backward` leaves the gradients of `nodeBatchTensors` unwritten, for
    /// `weightGradient` to compute once every rank's backward is over.
    var defersWeightGradients: Bool { get set }
    /// Rows `rows` (of its first dimension) of `tensor`'s gradient over the samples of every rank's
    /// last forward and backward, into `gradients` (the flat gradient buffer); with
    /// `sameBitsAsSummed`, the bits of the ranks' whole gradients summed in the ordered tree
    /// (`Linear.weightGradient`).
    func weightGradient(
        _ tensor: TensorSpec, rows: Range<Int>, into gradients: UnsafeMutablePointer<Float>, sameBitsAsSummed: Bool)
    /// From now on backward computes each of `nodeBatchTensors`' gradients in pieces of rows, one
    /// per segment of the flat layout that holds some (the sharded update's segments, which cut
    /// no row), one GEMM each, so that `weightGradient` over a segment's rows makes the same
    /// calls (`Linear.weightRowCuts`).
    func cutWeightGradients(at segments: [Range<Int>])
    /// The GEMMs one training step of `rows` samples makes when its weight gradients are deferred
    /// (`gemmWorkload` without them).
    func gemmWorkloadDeferringWeightGradients(rows: Int) -> [GemmCall]
}

/// Watches a training step from inside the network: a span per layer (the timeline) and, in
/// backward, which gradients are final, so that their reduction can start while backward goes on.
public protocol StepObserver: AnyObject {
    /// A layer starts (forward or backward); `layerEnded` follows.
    func layerBegan()
    func layerEnded(_ name: String, backward: Bool)
    /// In backward: every gradient at a flat index >= `offset` is final for this step.
    func gradientsFinal(from offset: Int) throws
}

extension Network {
    /// A one-line-per-group description of the SI/SV grouping, printed at startup.
    public var groupingDescription: String {
        groups.map { g in
            let shape = g.tensors.map { $0.shape.map(String.init).joined(separator: "x") }.joined(separator: "+")
            return "  \(g.kind.rawValue)  \(g.name)  [\(shape)]  \(g.count) values"
        }.joined(separator: "\n")
    }
}

/// One GEMM of a training step, repeated `repeats` times on buffers of its shape (a convolution
/// lowered in chunks makes the same call once per chunk). Row-major, contiguous operands.
public struct GemmCall: Sendable, Equatable {
    public let transA: BLAS.Transpose
    public let transB: BLAS.Transpose
    public let m: Int, n: Int, k: Int
    public let beta: Float
    public let repeats: Int
    /// Made by `ak_gemm_small` (no transposes, beta 0), not BLAS.
    public let smallKernel: Bool

    public init(
        _ transA: BLAS.Transpose, _ transB: BLAS.Transpose, m: Int, n: Int, k: Int, beta: Float, repeats: Int = 1,
        smallKernel: Bool = false
    ) {
        precondition(!smallKernel || (transA == .none && transB == .none && beta == 0), "ak_gemm_small: no transposes, beta 0")
        self.smallKernel = smallKernel
        self.transA = transA
        self.transB = transB
        self.m = m
        self.n = n
        self.k = k
        self.beta = beta
        self.repeats = repeats
    }

    public var flops: Double { 2 * Double(m) * Double(n) * Double(k) * Double(repeats) }
}

/// A group of parameters updated and monitored together: one SI group (a weight feeding a BN, or
/// the (gamma, beta) pair of a BN whose output reaches another BN), or one SV tensor.
public struct ParameterGroup: Sendable, Equatable {
    public let name: String
    public let kind: ScaleKind
    public let tensors: [TensorSpec]
    /// Contiguous in the flat storage (a BN's gamma and beta are laid out together).
    public var range: Range<Int> { tensors.first!.offset..<tensors.last!.range.upperBound }
    public var count: Int { range.count }

    public init(name: String, kind: ScaleKind, tensors: [TensorSpec]) {
        self.name = name
        self.kind = kind
        self.tensors = tensors
    }
}
