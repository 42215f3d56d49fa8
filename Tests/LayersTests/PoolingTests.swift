import XCTest
import Layers
import TensorCore

final class PoolingTests: XCTestCase {
    /// A batch whose values are distinct and at least 0.05 apart (a shuffled ramp), so no 2x2 window has
    /// a tie and a finite-difference step of 1e-2 never changes a window's winner.
    static func separatedInput(rows: Int, shape: ImageShape, rng: inout SplitMix64) -> OwnedMatrix {
        let x = OwnedMatrix(rows: rows, cols: shape.count)
        var ramp = (0..<x.storage.count).map { Float($0) * 0.05 - 2 }
        ramp.shuffle(using: &rng)
        for i in ramp.indices { x[i] = ramp[i] }
        return x
    }

    func testMaxPoolForwardMatchesDirectLoop() {
        var rng = SplitMix64(seed: 41)
        for (h, w) in [(7, 5), (4, 6), (2, 3)] {
            let shape = ImageShape(height: h, width: w, channels: 3)
            let pool = MaxPool2d(input: shape, maxBatch: 2)
            XCTAssertEqual(pool.output, ImageShape(height: h / 2, width: w / 2, channels: 3))
            let x = OwnedMatrix(rows: 2, cols: shape.count, normal: &rng)
            let y = OwnedMatrix(rows: 2, cols: pool.output.count)
            y.storage.all.update(repeating: .nan)
            pool.forward(x.matrix, y.matrix)
            for n in 0..<2 {
                for oy in 0..<h / 2 {
                    for ox in 0..<w / 2 {
                        for c in 0..<3 {
                            var m = -Float.infinity
                            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                                m = max(m, x[n * shape.count + ((2 * oy + dy) * w + 2 * ox + dx) * 3 + c])
                            }
                            XCTAssertEqual(
                                y[n * pool.output.count + (oy * (w / 2) + ox) * 3 + c], m, "\(h)x\(w) n\(n) \(oy),\(ox),\(c)")
                        }
                    }
                }
            }
        }
    }

    func testMaxPoolBackwardAgainstFiniteDifferences() {
        var rng = SplitMix64(seed: 42)
        for (h, w) in [(7, 5), (4, 6), (5, 4)] {
            let shape = ImageShape(height: h, width: w, channels: 4)
            let pool = MaxPool2d(input: shape, maxBatch: 3)
            let x = Self.separatedInput(rows: 3, shape: shape, rng: &rng)
            let y = OwnedMatrix(rows: 3, cols: pool.output.count)
            let r = OwnedMatrix(rows: 3, cols: pool.output.count, normal: &rng)
            let dx = OwnedMatrix(rows: 3, cols: shape.count)
            dx.storage.all.update(repeating: .nan)  // dropped rows and columns must be zeroed too
            pool.forward(x.matrix, y.matrix)
            pool.backward(r.matrix, dx.matrix)
            func loss() -> Double {
                pool.forward(x.matrix, y.matrix)
                return weightedSum(y.matrix, r)
            }
            let fd = (0..<x.storage.count).map { centralDifference(at: x.storage.pointer + $0, h: 1e-2, loss) }
            assertGradientsMatch(analytic: dx.values.map(Double.init), numeric: fd, "max pool dx \(h)x\(w)")
        }
    }

    /// Equal values: the gradient goes to the first window position only (top left, then top right,
    /// then bottom left), as PyTorch's max pooling does.
    func testMaxPoolTiesGoToFirstPosition() {
        let shape = ImageShape(height: 2, width: 2, channels: 3)
        let pool = MaxPool2d(input: shape, maxBatch: 1)
        // Channel 0: all equal. Channel 1: top right and bottom right tie for the max. Channel 2: bottom pair.
        let pixels: [[Float]] = [[1, 0, 0], [1, 2, 0], [1, 0, 5], [1, 2, 5]]
        let x = OwnedMatrix(rows: 1, cols: 12), y = OwnedMatrix(rows: 1, cols: 3)
        for (p, values) in pixels.enumerated() { for c in 0..<3 { x[p * 3 + c] = values[c] } }
        let dy = OwnedMatrix(rows: 1, cols: 3), dx = OwnedMatrix(rows: 1, cols: 12)
        for c in 0..<3 { dy[c] = Float(c + 1) }
        pool.forward(x.matrix, y.matrix)
        pool.backward(dy.matrix, dx.matrix)
        XCTAssertEqual(y.values, [1, 2, 5])
        XCTAssertEqual(dx.values, [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0])
    }

    func testGlobalAveragePool() {
        var rng = SplitMix64(seed: 43)
        let shape = ImageShape(height: 5, width: 3, channels: 6)
        let x = OwnedMatrix(rows: 4, cols: shape.count, normal: &rng, scale: 1, shift: 0.5)
        let y = OwnedMatrix(rows: 4, cols: 6)
        y.storage.all.update(repeating: .nan)
        GlobalAveragePool.forward(x.matrix, shape: shape, y.matrix)
        for n in 0..<4 {
            for c in 0..<6 {
                let mean = (0..<15).reduce(0.0) { $0 + Double(x[n * shape.count + $1 * 6 + c]) } / 15
                XCTAssertEqual(Double(y[n * 6 + c]), mean, accuracy: 1e-6, "n\(n) c\(c)")
            }
        }
        let r = OwnedMatrix(rows: 4, cols: 6, normal: &rng)
        let dx = OwnedMatrix(rows: 4, cols: shape.count)
        dx.storage.all.update(repeating: .nan)
        GlobalAveragePool.backward(r.matrix, shape: shape, dx.matrix)
        func loss() -> Double {
            GlobalAveragePool.forward(x.matrix, shape: shape, y.matrix)
            return weightedSum(y.matrix, r)
        }
        let fd = (0..<x.storage.count).map { centralDifference(at: x.storage.pointer + $0, h: 1e-2, loss) }
        assertGradientsMatch(analytic: dx.values.map(Double.init), numeric: fd, "global average pool dx")
    }

    /// A 1x2x3 image, HWC `[p0c0, p0c1, p0c2, p1c0, p1c1, p1c2]`, flattens to CHW `[p0c0, p1c0, p0c1, ...]`.
    func testFlattenExplicitOrder() {
        let shape = ImageShape(height: 1, width: 2, channels: 3)
        let x = OwnedMatrix(rows: 2, cols: 6), y = OwnedMatrix(rows: 2, cols: 6), back = OwnedMatrix(rows: 2, cols: 6)
        for i in 0..<12 { x[i] = Float(i) }
        Flatten.forward(x.matrix, shape: shape, y.matrix)
        XCTAssertEqual(y.values, [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])
        Flatten.backward(y.matrix, shape: shape, back.matrix)
        XCTAssertEqual(back.values, x.values)
    }

    /// The general mapping `y[n, c*H*W + y*W + x] = x[n, (y*W + x)*C + c]`, and backward inverts forward.
    func testFlattenMappingAndInverse() {
        var rng = SplitMix64(seed: 44)
        let shape = ImageShape(height: 3, width: 5, channels: 4)
        let x = OwnedMatrix(rows: 3, cols: shape.count, normal: &rng)
        let y = OwnedMatrix(rows: 3, cols: shape.count), back = OwnedMatrix(rows: 3, cols: shape.count)
        Flatten.forward(x.matrix, shape: shape, y.matrix)
        for n in 0..<3 {
            for row in 0..<3 {
                for col in 0..<5 {
                    for c in 0..<4 {
                        XCTAssertEqual(y[n * 60 + c * 15 + row * 5 + col], x[n * 60 + (row * 5 + col) * 4 + c])
                    }
                }
            }
        }
        back.storage.all.update(repeating: .nan)
        Flatten.backward(y.matrix, shape: shape, back.matrix)
        XCTAssertEqual(back.values, x.values)
    }
}
