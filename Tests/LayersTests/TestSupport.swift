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

/// Any `Network` with a fixed batch: mean cross-entropy loss and its gradient, with the BN running
/// buffers restored before every forward (so repeated evaluations see the same shift).
final class NetworkHarness {
    let net: any Network
    let x: OwnedMatrix
    let labels: [Int32]
    let dlogits: OwnedMatrix
    let savedBuffers: [Float]

    init(_ net: any Network, batch: Int, seed: UInt64) {
        self.net = net
        net.initialize(seed: seed)
        var rng = SplitMix64(seed: seed &+ 1)
        // non-trivial gamma and beta, so their gradients and scalings are generic
        for g in net.groups where g.tensors.count == 2 {
            fillNormal(net.parameters.value(g.tensors[0]), &rng, scale: 0.2, shift: 1)
            fillNormal(net.parameters.value(g.tensors[1]), &rng, scale: 0.2)
        }
        x = OwnedMatrix(rows: batch, cols: net.inputFeatures, normal: &rng)
        labels = (0..<batch).map { _ in Int32(rng.next() % UInt64(net.classes)) }
        dlogits = OwnedMatrix(rows: batch, cols: net.classes)
        savedBuffers = net.buffers.array
    }

    func loss(gradients: Bool) -> Double {
        for i in 0..<savedBuffers.count { net.buffers.pointer[i] = savedBuffers[i] }
        let logits = try! net.forward(x.matrix, reducer: LocalStatistics())
        let sums = labels.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(
                logits: logits, labels: $0, normalizer: Double(x.rows), dlogits: gradients ? dlogits.matrix : nil)
        }
        if gradients {
            // NaN first: backward must write every gradient, not accumulate into an old one
            net.parameters.gradients.all.update(repeating: .nan)
            try! net.backward(dlogits.matrix, reducer: LocalStatistics(), radial: .none)
        }
        return sums.loss / Double(x.rows)
    }
}

/// docs/theory.md E1 and orthogonality per SI group of `h.net`: loss(cW) = loss(W) and c grad(cW) = grad(W) for
/// c in {0.1, 10} (rel. 1e-5, fp32), the other groups' gradients unchanged, and cos(w, grad) ~ 0.
func assertE1(_ h: NetworkHarness, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    let l0 = h.loss(gradients: true)
    let g0 = h.net.parameters.gradients.array
    let invariant = h.net.groups.filter { $0.kind == .scaleInvariant }
    XCTAssertGreaterThan(invariant.count, 2, what, file: file, line: line)
    for group in invariant {
        let w = h.net.parameters.values.slice(group.range)
        let saved = Array(w)
        let cosine = Array(g0[group.range]).withUnsafeBufferPointer { gb in
            saved.withUnsafeBufferPointer { wb in dot(wb, gb) / (squaredNorm(wb) * squaredNorm(gb)).squareRoot() }
        }
        XCTAssertLessThan(abs(cosine), 1e-3, "\(what) \(group.name): cos(w, g) = \(cosine)", file: file, line: line)
        for c: Float in [0.1, 10] {
            for i in 0..<w.count { w[i] = saved[i] * c }
            let l1 = h.loss(gradients: true)
            let g1 = h.net.parameters.gradients.array
            for i in 0..<w.count { w[i] = saved[i] }
            var rest1: [Float] = [], rest0: [Float] = []
            for i in 0..<g0.count where !group.range.contains(i) {
                rest1.append(g1[i])
                rest0.append(g0[i])
            }
            let lossErr = abs(l1 - l0) / abs(l0)
            let gradErr = relativeDifference(g1[group.range].map { $0 * c }, Array(g0[group.range]))
            XCTAssertLessThan(lossErr, 1e-5, "\(what) \(group.name) c=\(c): loss rel. error \(lossErr)", file: file, line: line)
            XCTAssertLessThan(
                gradErr, 1e-5, "\(what) \(group.name) c=\(c): c grad(cW) vs grad(W) rel. error \(gradErr)", file: file, line: line
            )
            XCTAssertLessThan(
                relativeDifference(rest1, rest0), 1e-5, "\(what) \(group.name) c=\(c): other gradients moved", file: file,
                line: line)
        }
    }
}

/// The SI/SV tagging against the network itself (use eps mode zero): multiplying an SI group by 3
/// leaves the loss unchanged (rel. 1e-5, fp32), multiplying an SV group by 3 changes it (> 1e-4).
func assertTaggingMatchesScaleInvariance(_ h: NetworkHarness, _ what: String, file: StaticString = #filePath, line: UInt = #line)
{
    let l0 = h.loss(gradients: false)
    for g in h.net.groups {
        let w = h.net.parameters.values.slice(g.range)
        let saved = Array(w)
        for i in 0..<w.count { w[i] *= 3 }
        let l1 = h.loss(gradients: false)
        for i in 0..<w.count { w[i] = saved[i] }
        let rel = abs(l1 - l0) / abs(l0)
        if g.kind == .scaleInvariant {
            XCTAssertLessThan(rel, 1e-5, "\(what) \(g.name) tagged SI but the loss changed by \(rel)", file: file, line: line)
        } else {
            XCTAssertGreaterThan(rel, 1e-4, "\(what) \(g.name) tagged SV but the loss is invariant", file: file, line: line)
        }
    }
}

/// Every parameter tensor against central differences in Double at steps h = 1e-3 ... 1e-4.
/// ReLU and max pooling make the loss piecewise smooth, and a BN couples every activation of a
/// channel, so a step often straddles a kink somewhere in the network; the central difference is
/// then biased by an amount that depends on h (measured: a kink closer than 1e-4 biases all four
/// steps alike, and the analytic value is matched only at h = 1e-5..1e-4). A coordinate passes
/// when the analytic value matches the difference at one of the steps (1% of it plus 0.1% of the
/// tensor's largest gradient: fp32 noise); it is a mismatch when it matches none while they agree
/// with each other; otherwise it is skipped. Per tensor, 3 coordinates must pass and at most one
/// of 8 tried may mismatch (a wrong gradient mismatches everywhere).
func assertGradientsMatchFiniteDifferences(_ h: NetworkHarness, _ what: String) {
    _ = h.loss(gradients: true)
    let grads = h.net.parameters.gradients.array.map(Double.init)
    XCTAssertFalse(grads.contains { $0.isNaN }, "\(what): backward left a gradient unwritten")
    var rng = SplitMix64(seed: 61)
    for spec in h.net.parameters.layout.tensors {
        let tensorScale = grads[spec.range].map(abs).max()!
        XCTAssertGreaterThan(tensorScale, 1e-6, "\(what) \(spec.name): gradient all zeros")
        var passed = 0, mismatches: [String] = [], tries = 0
        while passed < 3 && tries < 40 && mismatches.count < 2 {
            tries += 1
            let i = Int(rng.next() % UInt64(spec.count))
            let p = h.net.parameters.values.pointer + spec.offset + i
            let fds = [Float(1e-3), 5e-4, 2.5e-4, 1e-4].map { step in
                centralDifference(at: p, h: step) { h.loss(gradients: false) }
            }
            let an = grads[spec.offset + i]
            if fds.contains(where: { abs(an - $0) <= 1e-2 * abs($0) + 1e-3 * tensorScale }) {
                passed += 1
            } else if fds.max()! - fds.min()! <= 1e-3 * max(abs(fds[0]), tensorScale) {
                mismatches.append("[\(i)]: analytic \(an), finite differences \(fds)")
            }
        }
        XCTAssertLessThan(mismatches.count, 2, "\(what) \(spec.name): \(mismatches)")
        XCTAssertEqual(passed, 3, "\(what) \(spec.name): too few kink-free coordinates (\(tries) tries)")
    }
}
