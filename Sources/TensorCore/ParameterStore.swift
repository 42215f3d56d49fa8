/// Whether a parameter tensor is scale-invariant (its loss does not change when it is multiplied by
/// c > 0: weights feeding a BN layer) or scale-variant. Arora, Li & Lyu (ICLR 2019), paper.md §1.
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
    public var range: Range<Int> { offset ..< offset + count }
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

    public init(layout: ParameterLayout) {
        self.layout = layout
        values = FlatBuffer(count: layout.count)
        gradients = FlatBuffer(count: layout.count)
    }

    public func value(_ spec: TensorSpec) -> UnsafeMutableBufferPointer<Float> { values.slice(spec.range) }
    public func gradient(_ spec: TensorSpec) -> UnsafeMutableBufferPointer<Float> { gradients.slice(spec.range) }
}
