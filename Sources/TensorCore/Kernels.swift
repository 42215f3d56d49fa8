import RealModule

// Element-wise and reduction loops. Index arithmetic uses wrapping operators (&+, &*) because
// overflow checks block vectorization; sums of Floats go through `Relaxed` so the
// compiler may reorder them into vector lanes, and are accumulated in Double where precision matters.

/// `x *= s`.
@inlinable
public func scale(_ x: UnsafeMutableBufferPointer<Float>, by s: Float) {
    guard let p = x.baseAddress else { return }
    for i in 0..<x.count { p[i] *= s }
}

/// `y += a * x`.
@inlinable
public func axpy(_ a: Float, _ x: UnsafeBufferPointer<Float>, _ y: UnsafeMutableBufferPointer<Float>) {
    precondition(x.count == y.count, "axpy: x has \(x.count) elements, y has \(y.count)")
    guard let xp = x.baseAddress, let yp = y.baseAddress else { return }
    for i in 0..<x.count { yp[i] = Relaxed.multiplyAdd(a, xp[i], yp[i]) }
}

/// Sets every element to zero.
@inlinable
public func zero(_ x: UnsafeMutableBufferPointer<Float>) {
    guard let p = x.baseAddress else { return }
    p.update(repeating: 0, count: x.count)
}

/// Sum of `x[i] * y[i]`: blocks of 256 products are summed in Float with relaxed ordering
/// (vectorized; relative error about 256 * 2^-24 ~ 1.5e-5 per block at worst, far below the
/// monitors' thresholds), and the block sums are added in Double, so the error does not grow with
/// the length.
@inlinable
public func dot(_ x: UnsafeBufferPointer<Float>, _ y: UnsafeBufferPointer<Float>) -> Double {
    precondition(x.count == y.count, "dot: x has \(x.count) elements, y has \(y.count)")
    guard let xp = x.baseAddress, let yp = y.baseAddress else { return 0 }
    var total = 0.0
    var start = 0
    while start < x.count {
        let end = Swift.min(start &+ 256, x.count)
        var block: Float = 0
        for i in start..<end { block = Relaxed.multiplyAdd(xp[i], yp[i], block) }
        total += Double(block)
        start = end
    }
    return total
}

/// Squared Euclidean norm accumulated in Double.
@inlinable
public func squaredNorm(_ x: UnsafeBufferPointer<Float>) -> Double { dot(x, x) }

/// True when no value is NaN or infinite (see `FiniteCheck`).
@inlinable
public func allFinite(_ values: UnsafeBufferPointer<Float>) -> Bool {
    guard let p = values.baseAddress else { return true }
    var check = FiniteCheck()
    for i in 0..<values.count { check.carries |= FiniteCheck.carry(p[i]) }
    return check.allFinite
}

/// A NaN/Inf check that a loop feeds one value at a time. A Float is not finite exactly when its
/// exponent bits are all ones; adding one to the lowest exponent bit then carries into the sign
/// bit, and only then. The OR of those carries is an integer reduction, which vectorizes; a Float
/// sum of `x * 0` (the probe this replaced) keeps IEEE order and ran one add at a time.
public struct FiniteCheck: Sendable {
    public var carries: UInt32 = 0
    @inlinable public init() {}
    @inlinable @inline(__always)
    public static func carry(_ v: Float) -> UInt32 { (v.bitPattern & 0x7f80_0000) &+ 0x0080_0000 }
    @inlinable public var allFinite: Bool { carries & 0x8000_0000 == 0 }
}

/// `dx[i] = y[i] > 0 ? dy[i] : 0`, from the ReLU *output* `y`; `dy` and `dx` may be the same buffer.
@inlinable
public func reluBackward(
    output y: UnsafeBufferPointer<Float>, _ dy: UnsafeBufferPointer<Float>,
    _ dx: UnsafeMutableBufferPointer<Float>
) {
    precondition(y.count == dy.count && dy.count == dx.count, "relu backward: sizes differ")
    guard let yp = y.baseAddress, let dyp = dy.baseAddress, let dxp = dx.baseAddress else { return }
    // load unconditionally so the select vectorizes
    for i in 0..<y.count {
        let d = dyp[i]
        dxp[i] = yp[i] > 0 ? d : 0
    }
}

/// Adds `bias[c]` to every row of the row-major `x[rows, bias.count]`.
@inlinable
public func addRowVector(_ bias: UnsafeBufferPointer<Float>, to x: UnsafeMutablePointer<Float>, rows: Int) {
    guard let b = bias.baseAddress else { return }
    let cols = bias.count
    for r in 0..<rows {
        let row = x + r &* cols
        for c in 0..<cols { row[c] += b[c] }
    }
}

/// `sums[c] += sum over rows of x[r, c]`, accumulated in Double.
@inlinable
public func accumulateColumnSums(
    _ x: UnsafePointer<Float>, rows: Int, cols: Int,
    into sums: UnsafeMutablePointer<Double>
) {
    for r in 0..<rows {
        let row = x + r &* cols
        for c in 0..<cols { sums[c] += Double(row[c]) }
    }
}

// MARK: explicit 4-wide vectors
//
// Loops over one row of C = 16..128 channels auto-vectorize only behind runtime alias checks between
// every pair of pointers, paid again for each short row. Written with SIMD4<Float> (one SSE register,
// the widest vector of Swift's default x86-64 target), they need none, and each lane computes exactly
// what the scalar expression would.

/// Four Floats at `p`, any alignment.
@inlinable @inline(__always)
public func loadFloat4(_ p: UnsafePointer<Float>) -> SIMD4<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Float>.self)
}

/// Four Floats at `p`, any alignment.
@inlinable @inline(__always)
public func loadFloat4(_ p: UnsafeMutablePointer<Float>) -> SIMD4<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Float>.self)
}

/// Stores four Floats at `p`, any alignment.
@inlinable @inline(__always)
public func storeFloat4(_ v: SIMD4<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD4<Float>.self)
}
