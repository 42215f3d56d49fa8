import XCTest
import Layers
import TensorCore

/// An owned row-major Float matrix for tests (a `Matrix` view over a FlatBuffer).
final class OwnedMatrix {
    let storage: FlatBuffer
    let rows: Int, cols: Int
    init(rows: Int, cols: Int) {
        self.rows = rows; self.cols = cols
        storage = FlatBuffer(count: rows * cols)
    }
    convenience init(rows: Int, cols: Int, normal rng: inout SplitMix64, scale: Double = 1, shift: Double = 0) {
        self.init(rows: rows, cols: cols)
        for i in 0..<rows * cols { storage.pointer[i] = Float(rng.normal() * scale + shift) }
    }
    var matrix: Matrix { Matrix(storage.pointer, rows: rows, cols: cols) }
    var values: [Float] { storage.array }
    subscript(i: Int) -> Float {
        get { storage.pointer[i] }
        set { storage.pointer[i] = newValue }
    }
}

func fillNormal(_ x: UnsafeMutableBufferPointer<Float>, _ rng: inout SplitMix64, scale: Double = 1, shift: Double = 0) {
    for i in 0..<x.count { x[i] = Float(rng.normal() * scale + shift) }
}

/// sum(y * r) accumulated in Double.
func weightedSum(_ y: Matrix, _ r: OwnedMatrix) -> Double {
    var s = 0.0
    for i in 0..<y.count { s += Double(y.base[i]) * Double(r[i]) }
    return s
}

/// Central difference in Double of `loss` with respect to the Float at `p`. The step actually taken
/// is measured from the rounded Float values, so rounding of x +- h does not bias the quotient.
func centralDifference(at p: UnsafeMutablePointer<Float>, h: Float, _ loss: () -> Double) -> Double {
    let x0 = p.pointee
    let up = x0 + h, down = x0 - h
    p.pointee = up
    let lUp = loss()
    p.pointee = down
    let lDown = loss()
    p.pointee = x0
    return (lUp - lDown) / (Double(up) - Double(down))
}

/// Compares analytic and finite-difference gradients coordinate-wise. Tolerance: fp32 central
/// differences carry noise ~ (fp32 rounding of the loss) / h and truncation ~ h^2, so each coordinate
/// must agree to `rel` (1e-2) of its own magnitude, plus an absolute floor of `floor` (1e-3) times
/// the largest |gradient| of the tensor, so that coordinates near zero (where fp32 finite differences
/// carry only absolute error) are judged on the tensor's scale.
/// Also requires the analytic gradient not to be all zeros (a backward writing nothing would pass otherwise).
func assertGradientsMatch(
    analytic: [Double], numeric: [Double], rel: Double = 1e-2, floor: Double = 1e-3, _ what: String,
    file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertEqual(analytic.count, numeric.count, file: file, line: line)
    let scale = max(analytic.map(abs).max() ?? 0, numeric.map(abs).max() ?? 0)
    XCTAssertGreaterThan(analytic.map(abs).max() ?? 0, 1e-6, "\(what): analytic gradient is all zeros", file: file, line: line)
    for i in 0..<analytic.count {
        let err = abs(analytic[i] - numeric[i])
        XCTAssertLessThanOrEqual(
            err, rel * abs(numeric[i]) + floor * scale, "\(what)[\(i)]: analytic \(analytic[i]) vs FD \(numeric[i])",
            file: file, line: line)
    }
}

/// Norm-wise relative difference ||a - b|| / ||b|| in Double.
func relativeDifference(_ a: [Float], _ b: [Float]) -> Double {
    precondition(a.count == b.count)
    var d = 0.0, n = 0.0
    for i in 0..<a.count {
        let e = Double(a[i]) - Double(b[i])
        d += e * e
        n += Double(b[i]) * Double(b[i])
    }
    return (d / max(n, 1e-300)).squareRoot()
}
