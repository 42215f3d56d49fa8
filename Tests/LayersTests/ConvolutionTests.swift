import XCTest
import Layers
import TensorCore

final class ConvolutionTests: XCTestCase {
    /// One convolution geometry of the tests: odd image sizes, so windows hit the right and bottom
    /// padding unevenly and strided outputs skip the last input row or column.
    struct Geometry: CustomStringConvertible {
        var height = 7
        var width = 5
        var inChannels: Int
        var outChannels: Int
        var kernel: Int
        var stride: Int
        var padding: Int
        var description: String { "\(height)x\(width)x\(inChannels)->\(outChannels) k\(kernel) s\(stride) p\(padding)" }
    }

    static let geometries = [
        Geometry(inChannels: 3, outChannels: 4, kernel: 3, stride: 1, padding: 1),
        Geometry(inChannels: 2, outChannels: 5, kernel: 3, stride: 2, padding: 1),
        Geometry(inChannels: 6, outChannels: 3, kernel: 1, stride: 1, padding: 0),
        Geometry(inChannels: 4, outChannels: 2, kernel: 1, stride: 2, padding: 0),
        Geometry(inChannels: 1, outChannels: 3, kernel: 3, stride: 1, padding: 0),
        Geometry(height: 6, width: 8, inChannels: 5, outChannels: 7, kernel: 3, stride: 2, padding: 1),
    ]

    /// Chunk sizes in lowered rows: one pixel, 13 pixels (chunks end mid-image and span images, whose
    /// outputs have 35, 12, 15 or 24 pixels), the default, and the whole batch.
    static func chunkBytes(_ g: Geometry, rows: Int?) -> Int {
        guard let rows else { return Conv2d.defaultChunkBytes }
        return rows == .max ? .max : rows * g.kernel * g.kernel * g.inChannels * MemoryLayout<Float>.stride
    }
    static let chunkRowChoices: [Int?] = [1, 13, nil, .max]

    /// A convolution with its own parameter store and random weights.
    final class Fixture {
        let conv: Conv2d
        let p: ParameterStore
        let x: OwnedMatrix, y: OwnedMatrix
        init(
            _ g: Geometry, batch: Int, chunkBytes: Int = Conv2d.defaultChunkBytes, algorithm: Conv2d.Algorithm? = nil,
            rng: inout SplitMix64
        ) {
            var layout = ParameterLayout()
            let w = layout.append(
                "0.weight", shape: Conv2d.weightShape(outChannels: g.outChannels, kernel: g.kernel, inChannels: g.inChannels))
            let input = ImageShape(height: g.height, width: g.width, channels: g.inChannels)
            conv = Conv2d(
                input: input, outChannels: g.outChannels, kernel: g.kernel, stride: g.stride, padding: g.padding, weight: w,
                maxBatch: batch, chunkBytes: chunkBytes, algorithm: algorithm)
            p = ParameterStore(layout: layout)
            fillNormal(p.values.all, &rng)
            x = OwnedMatrix(rows: batch, cols: input.count, normal: &rng)
            y = OwnedMatrix(rows: batch, cols: conv.output.count)
        }
    }

    /// The direct definition, in Double: each output sums weight * input over the in-bounds window.
    /// Returns the values and the sums of |terms| (the scale of each value's fp32 rounding error).
    static func directConvolution(_ f: Fixture) -> (values: [Double], magnitudes: [Double]) {
        let conv = f.conv, i = conv.input, o = conv.output, k = conv.kernel
        let w = f.p.value(conv.weight)
        var values = [Double](repeating: 0, count: f.y.rows * o.count), magnitudes = values
        for n in 0..<f.y.rows {
            for oy in 0..<o.height {
                for ox in 0..<o.width {
                    for oc in 0..<o.channels {
                        var s = 0.0, mag = 0.0
                        for ky in 0..<k {
                            for kx in 0..<k {
                                let iy = oy * conv.stride - conv.padding + ky, ix = ox * conv.stride - conv.padding + kx
                                guard iy >= 0 && iy < i.height && ix >= 0 && ix < i.width else { continue }
                                for ic in 0..<i.channels {
                                    let term =
                                        Double(w[((oc * k + ky) * k + kx) * i.channels + ic])
                                        * Double(f.x[n * i.count + (iy * i.width + ix) * i.channels + ic])
                                    s += term
                                    mag += abs(term)
                                }
                            }
                        }
                        let index = n * o.count + (oy * o.width + ox) * o.channels + oc
                        values[index] = s
                        magnitudes[index] = mag
                    }
                }
            }
        }
        return (values, magnitudes)
    }

    /// Direct gradients in Double of `loss = sum(y * r)`: dW and dx, and the magnitudes of their terms.
    static func directGradients(_ f: ConvolutionTests.Fixture, _ r: OwnedMatrix) -> (
        dw: [Double], dwMagnitude: [Double], dx: [Double], dxMagnitude: [Double]
    ) {
        let conv = f.conv, i = conv.input, o = conv.output, k = conv.kernel
        let w = f.p.value(conv.weight)
        var dw = [Double](repeating: 0, count: w.count), dwMag = dw
        var dx = [Double](repeating: 0, count: f.x.storage.count), dxMag = dx
        for n in 0..<f.x.rows {
            for oy in 0..<o.height {
                for ox in 0..<o.width {
                    for oc in 0..<o.channels {
                        let g = Double(r[n * o.count + (oy * o.width + ox) * o.channels + oc])
                        for ky in 0..<k {
                            for kx in 0..<k {
                                let iy = oy * conv.stride - conv.padding + ky, ix = ox * conv.stride - conv.padding + kx
                                guard iy >= 0 && iy < i.height && ix >= 0 && ix < i.width else { continue }
                                for ic in 0..<i.channels {
                                    let wi = ((oc * k + ky) * k + kx) * i.channels + ic
                                    let xi = n * i.count + (iy * i.width + ix) * i.channels + ic
                                    dw[wi] += g * Double(f.x[xi])
                                    dwMag[wi] += abs(g * Double(f.x[xi]))
                                    dx[xi] += g * Double(w[wi])
                                    dxMag[xi] += abs(g * Double(w[wi]))
                                }
                            }
                        }
                    }
                }
            }
        }
        return (dw, dwMag, dx, dxMag)
    }

    /// im2col's input and weight gradients against the direct definition in Double, for every
    /// geometry and chunking: an fp32 sum of n terms errs by at most about n * eps * (sum of |terms|);
    /// 1e-5 of that sum allows n up to about 170 (the largest here: 3 images x 35 pixels for dW).
    func testGradientsMatchDirectLoops() {
        var rng = SplitMix64(seed: 34)
        for g in Self.geometries {
            for rows in Self.chunkRowChoices {
                let what = "\(g), chunk rows \(String(describing: rows))"
                let f = Fixture(g, batch: 3, chunkBytes: Self.chunkBytes(g, rows: rows), algorithm: .im2col, rng: &rng)
                let r = OwnedMatrix(rows: f.y.rows, cols: f.y.cols, normal: &rng)
                let dx = OwnedMatrix(rows: f.x.rows, cols: f.x.cols)
                dx.storage.all.update(repeating: .nan)
                f.conv.backward(f.x.matrix, r.matrix, dx.matrix, f.p, accumulating: false)
                let direct = Self.directGradients(f, r)
                let dw = f.p.gradient(f.conv.weight)
                for j in 0..<dw.count {
                    XCTAssertLessThanOrEqual(abs(Double(dw[j]) - direct.dw[j]), 1e-5 * direct.dwMagnitude[j], "dW[\(j)], \(what)")
                }
                for j in 0..<dx.storage.count {
                    XCTAssertLessThanOrEqual(abs(Double(dx[j]) - direct.dx[j]), 1e-5 * direct.dxMagnitude[j], "dx[\(j)], \(what)")
                }
            }
        }
    }

    func testOutputShapes() {
        func output(_ h: Int, _ w: Int, k: Int, s: Int, p: Int) -> ImageShape {
            var layout = ParameterLayout()
            let spec = layout.append("w", shape: Conv2d.weightShape(outChannels: 8, kernel: k, inChannels: 3))
            let input = ImageShape(height: h, width: w, channels: 3)
            return Conv2d(input: input, outChannels: 8, kernel: k, stride: s, padding: p, weight: spec, maxBatch: 1).output
        }
        XCTAssertEqual(output(32, 32, k: 3, s: 1, p: 1), ImageShape(height: 32, width: 32, channels: 8))
        XCTAssertEqual(output(32, 32, k: 3, s: 2, p: 1), ImageShape(height: 16, width: 16, channels: 8))
        XCTAssertEqual(output(7, 5, k: 3, s: 2, p: 1), ImageShape(height: 4, width: 3, channels: 8))
        XCTAssertEqual(output(7, 5, k: 3, s: 1, p: 0), ImageShape(height: 5, width: 3, channels: 8))
        XCTAssertEqual(output(7, 5, k: 1, s: 2, p: 0), ImageShape(height: 4, width: 3, channels: 8))
        XCTAssertEqual(Conv2d.weightShape(outChannels: 8, kernel: 5, inChannels: 3), [8, 5, 5, 3])
    }

    func testForwardMatchesDirectLoop() {
        var rng = SplitMix64(seed: 31)
        for g in Self.geometries {
            for rows in Self.chunkRowChoices {
                let f = Fixture(g, batch: 3, chunkBytes: Self.chunkBytes(g, rows: rows), rng: &rng)
                f.y.storage.all.update(repeating: .nan)  // every output must be written
                f.conv.forward(f.x.matrix, f.y.matrix, f.p)
                let want = Self.directConvolution(f)
                var worst = 0.0
                for i in 0..<want.values.count {
                    worst = max(worst, abs(Double(f.y[i]) - want.values[i]) / max(want.magnitudes[i], 1e-30))
                }
                XCTAssertLessThanOrEqual(worst, 1e-5, "\(g), chunk rows \(String(describing: rows))")
            }
        }
    }

    func testBackwardAgainstFiniteDifferences() {
        var rng = SplitMix64(seed: 32)
        for g in Self.geometries {
            for rows in Self.chunkRowChoices {
                let what = "\(g), chunk rows \(String(describing: rows))"
                let f = Fixture(g, batch: 3, chunkBytes: Self.chunkBytes(g, rows: rows), rng: &rng)
                let r = OwnedMatrix(rows: f.y.rows, cols: f.y.cols, normal: &rng)
                let dx = OwnedMatrix(rows: f.x.rows, cols: f.x.cols)
                let weight = f.conv.weight

                // accumulating: false overwrites, and dx is overwritten: start both from NaN garbage.
                f.p.gradients.all.update(repeating: .nan)
                dx.storage.all.update(repeating: .nan)
                f.conv.backward(f.x.matrix, r.matrix, dx.matrix, f.p, accumulating: false)
                let dW = f.p.gradient(weight).map(Double.init)

                func loss() -> Double {
                    f.conv.forward(f.x.matrix, f.y.matrix, f.p)
                    return weightedSum(f.y.matrix, r)
                }
                let h: Float = 1e-2
                let fdW = (0..<weight.count).map { centralDifference(at: f.p.values.pointer + weight.offset + $0, h: h, loss) }
                let fdX = (0..<f.x.storage.count).map { centralDifference(at: f.x.storage.pointer + $0, h: h, loss) }
                assertGradientsMatch(analytic: dW, numeric: fdW, "conv dW, \(what)")
                assertGradientsMatch(analytic: dx.values.map(Double.init), numeric: fdX, "conv dx, \(what)")

                // accumulating: true adds to what is there.
                fillNormal(f.p.gradients.all, &rng)
                let before = f.p.gradient(weight).map(Double.init)
                f.conv.backward(f.x.matrix, r.matrix, nil, f.p, accumulating: true)
                let added = zip(f.p.gradient(weight), before).map { Double($0) - $1 }
                assertGradientsMatch(analytic: added, numeric: fdW, "conv accumulated dW, \(what)")
            }
        }
    }

    /// A weight gradient summed over two half batches with `accumulating: true` equals the one of the
    /// whole batch: the chunk loop must not restart the sum at a call boundary.
    func testAccumulatingOverTwoCallsEqualsOneBatch() {
        var rng = SplitMix64(seed: 33)
        let g = Self.geometries[0]
        let f = Fixture(g, batch: 4, chunkBytes: Self.chunkBytes(g, rows: 13), rng: &rng)
        let dy = OwnedMatrix(rows: 4, cols: f.y.cols, normal: &rng)
        f.conv.backward(f.x.matrix, dy.matrix, nil, f.p, accumulating: false)
        let whole = f.p.gradient(f.conv.weight).map { $0 }
        func half(_ m: OwnedMatrix, _ i: Int) -> Matrix { Matrix(m.matrix.row(2 * i), rows: 2, cols: m.cols) }
        f.conv.backward(half(f.x, 0), half(dy, 0), nil, f.p, accumulating: false)
        f.conv.backward(half(f.x, 1), half(dy, 1), nil, f.p, accumulating: true)
        XCTAssertLessThan(relativeDifference(f.p.gradient(f.conv.weight).map { $0 }, whole), 1e-5)
    }
}
