/// Whether a parameter tensor is scale-invariant (its loss does not change when it is multiplied by
/// c > 0: weights feeding a BN layer) or scale-variant. Arora, Li & Lyu (ICLR 2019), docs/theory.md.
public enum ScaleKind: String, Sendable, Codable {
    case scaleInvariant = "SI"
    case scaleVariant = "SV"
}

/// One named tensor inside the flat parameter storage.
public struct TensorSpec: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
    public var range: Range<Int> { offset..<offset + count }

    /// Elements per row of its first dimension (the whole tensor for a scalar).
    public var rowLength: Int { shape.first.map { $0 > 0 ? count / $0 : 0 } ?? count }

    /// Elements of one unit: as many whole rows as fit in 256 elements, or one row when a row is
    /// longer (the last unit may be short). A sharded update cuts the layout at unit boundaries only, and the group
    /// monitors are summed unit by unit, so that their sums have the same bits however the layout
    /// is cut over ranks.
    public var unitLength: Int { Swift.max(rowLength, 1) * Swift.max(1, 256 / Swift.max(rowLength, 1)) }
    /// Units in this tensor.
    public var unitCount: Int { (count + unitLength - 1) / unitLength }

    /// The rows (of its first dimension) that the flat elements `elements` hold of this tensor;
    /// nil when they hold none. They must not cut a row (a precondition).
    public func rows(in elements: Range<Int>) -> Range<Int>? {
        let lower = Swift.max(offset, elements.lowerBound), upper = Swift.min(range.upperBound, elements.upperBound)
        guard lower < upper, let first = shape.first, first > 0 else { return nil }
        let rowLength = count / first
        precondition(
            (lower - offset) % rowLength == 0 && (upper - offset) % rowLength == 0,
            "the elements \(lower)..<\(upper) cut the rows of \(rowLength) of \(name)")
        return (lower - offset) / rowLength..<(upper - offset) / rowLength
    }
}

/// The layout of all parameters in one flat allocation, in forward order. Gradients use a second
/// allocation of the same layout, so a gradient bucket is a contiguous slice (llm.c's design).
public struct ParameterLayout: Sendable, Equatable {
    public private(set) var tensors: [TensorSpec] = []
    public private(set) var count = 0

    public init() {}

    /// Appends a tensor and returns its spec. Tensors that form one SI group (a BN's gamma and beta)
    /// are appended one after the other, so the group is a contiguous range.
    @discardableResult
    public mutating func append(_ name: String, shape: [Int]) -> TensorSpec {
        precondition(!tensors.contains { $0.name == name }, "parameter name \(name) is used twice")
        let spec = TensorSpec(name: name, shape: shape, offset: count)
        tensors.append(spec)
        count += spec.count
        return spec
    }

    public func spec(named name: String) -> TensorSpec? { tensors.first { $0.name == name } }
}

/// Parameters and their gradients: two flat buffers of one layout.
public final class ParameterStore: @unchecked Sendable {
    // @unchecked Sendable: see FlatBuffer; used from one thread.
    public let layout: ParameterLayout
    public let values: FlatBuffer
    public let gradients: FlatBuffer

    /// Gradient terms of the form `coefficients[r] * value[r, :]` that belong to `gradients` but are
    /// kept as per-row coefficients, so that the update can apply them in its own pass over the
    /// tensor instead of a separate read-modify-write pass (see `RadialGradient`).
    ///
    /// While this is not empty, `gradients` is incomplete: anything that reads the gradient between
    /// backward and the update (clipping, a checkpoint) calls `materializePendingRadial()` first;
    /// the monitors add the terms in as they sum. The optimizer's update consumes every entry.
    public var pendingRadial: [RadialGradient] = []

    /// Deterministic mode: gradient terms computed from globally reduced sums, the same on every
    /// rank (BN gamma and beta, the `.scaled`-epsilon term of the previous BN), added in this order
    /// by `addPendingTerms` after the sum over ranks, to which the ranks contributed zeros.
    public var pendingTerms: [(tensor: TensorSpec, values: [Float])] = []

    /// The squared norm of each row of some tensors, by tensor offset, as the optimizer's last
    /// update left `values`: the update computes them while each row it writes is in cache, and the
    /// next training forward of a `.scaled`-epsilon BN takes them (`takeRowSquaredNorms`) instead
    /// of reading its whole incoming weight again (2% of an MLP step). Emptied by every update;
    /// anything else that writes `values` between an update and the next forward empties it too.
    public var rowSquaredNormsAfterUpdate: [Int: [Double]] = [:]

    public init(layout: ParameterLayout) {
        self.layout = layout
        values = FlatBuffer(count: layout.count)
        gradients = FlatBuffer(count: layout.count)
    }

    public func value(_ spec: TensorSpec) -> UnsafeMutableBufferPointer<Float> { values.slice(spec.range) }
    public func gradient(_ spec: TensorSpec) -> UnsafeMutableBufferPointer<Float> { gradients.slice(spec.range) }

    /// ||row r||^2 of `tensor` cut into rows of `rowLength` values (see `squaredNorm(ofRow:)`).
    public func rowSquaredNorm(_ tensor: TensorSpec, row r: Int, rowLength: Int) -> Double {
        precondition(r >= 0 && (r + 1) * rowLength <= tensor.count, "row \(r) of \(rowLength) values is outside \(tensor.name)")
        return Self.squaredNorm(
            ofRow: UnsafeBufferPointer(start: values.pointer + tensor.offset + r &* rowLength, count: rowLength))
    }

    /// A row's squared norm, accumulated in Double (`squaredNorm`). Never inlined, on purpose:
    /// `squaredNorm`'s relaxed sums may be ordered differently in each place they are compiled,
    /// and the update and the forward must run this one compiled loop, so that a norm the update
    /// kept has the bits the forward would compute.
    @inline(never)
    public static func squaredNorm(ofRow row: UnsafeBufferPointer<Float>) -> Double { TensorCore.squaredNorm(row) }

    /// Exchanges the storage of `values` and `gradients` (the buffer objects stay; what they point
    /// to swaps): how the plain update commits values it wrote over the gradient.
    public func exchangeValuesAndGradients() { values.exchangeStorage(with: gradients) }

    /// The row norms the last update kept for `tensor` (see `rowSquaredNormsAfterUpdate`), once.
    public func takeRowSquaredNorms(of tensor: TensorSpec) -> [Double]? {
        rowSquaredNormsAfterUpdate.removeValue(forKey: tensor.offset)
    }

    /// Adds every pending term into `gradients`, in order, and forgets them (unless `forgetting`
    /// is false: the caller adds them piece by piece); with `range`, only their elements there (a
    /// rank's segment of a sharded update, the one part of the summed gradient it holds).
    public func addPendingTerms(in range: Range<Int>? = nil, forgetting: Bool = true) {
        let range = range ?? 0..<layout.count
        for term in pendingTerms {
            let lower = Swift.max(term.tensor.offset, range.lowerBound),
                upper = Swift.min(term.tensor.range.upperBound, range.upperBound)
            for i in lower..<Swift.max(lower, upper) { gradients.pointer[i] += term.values[i - term.tensor.offset] }
        }
        if forgetting { pendingTerms.removeAll() }
    }

    /// Adds every pending radial term into `gradients` and forgets them.
    public func materializePendingRadial() {
        for term in pendingRadial {
            let rowLength = term.tensor.count / term.coefficients.count
            let w = value(term.tensor), g = gradient(term.tensor)
            for (r, a) in term.coefficients.enumerated() where a != 0 {
                let rows = r * rowLength..<(r + 1) * rowLength
                axpy(a, UnsafeBufferPointer(rebasing: w[rows]), UnsafeMutableBufferPointer(rebasing: g[rows]))
            }
        }
        pendingRadial.removeAll()
    }
}

/// A gradient term `coefficients[r] * w[r, :]` for each row r of `tensor`: in `.scaled` BN epsilon
/// mode, the gradient through eps_c = eps * ||w_c||^2 * q is radial, row by row. It must be the same
/// on every rank when it is applied, because it is added after the gradient allreduce: computed
/// from globally reduced sums, or summed over ranks by the caller.
public struct RadialGradient: Sendable {
    public let tensor: TensorSpec
    public var coefficients: [Float]
    public init(tensor: TensorSpec, coefficients: [Float]) {
        precondition(
            coefficients.count > 0 && tensor.count % coefficients.count == 0,
            "\(coefficients.count) row coefficients do not divide tensor \(tensor.name) of \(tensor.count) values")
        self.tensor = tensor
        self.coefficients = coefficients
    }
}
