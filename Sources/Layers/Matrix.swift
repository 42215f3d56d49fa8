import TensorCore

/// A non-owning row-major view `[rows, cols]` of Float memory (activations, gradients of activations).
public struct Matrix {
    public let base: UnsafeMutablePointer<Float>
    public let rows: Int
    public let cols: Int

    public init(_ base: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        self.base = base
        self.rows = rows
        self.cols = cols
    }

    public var count: Int { rows &* cols }
    public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: base, count: count) }
    public var readOnly: UnsafeBufferPointer<Float> { .init(start: base, count: count) }
    public func row(_ r: Int) -> UnsafeMutablePointer<Float> { base + r &* cols }
    /// The rows `range` as a matrix of their own.
    public func rows(_ range: Range<Int>) -> Matrix { Matrix(base + range.lowerBound &* cols, rows: range.count, cols: cols) }
}

/// Activation memory for one layer output, sized for the largest local batch. Owned by the network.
final class ActivationBuffer {
    let storage: FlatBuffer
    let cols: Int
    init(maxRows: Int, cols: Int) {
        storage = FlatBuffer(count: maxRows * cols)
        self.cols = cols
    }
    /// Over memory `keeper` owns (node shared memory).
    init(wrapping base: UnsafeMutablePointer<Float>, maxRows: Int, cols: Int, keeper: AnyObject) {
        storage = FlatBuffer(wrapping: UnsafeMutableBufferPointer(start: base, count: maxRows * cols), keeper: keeper)
        self.cols = cols
    }
    func matrix(rows: Int) -> Matrix {
        precondition(rows * cols <= storage.count, "batch of \(rows) rows exceeds the buffer's capacity")
        return Matrix(storage.pointer, rows: rows, cols: cols)
    }
}
