import XCTest
import Layers
import TensorCore

final class LinearReluSoftmaxTests: XCTestCase {
    func testLinearBackwardAgainstFiniteDifferences() {
        var rng = SplitMix64(seed: 21)
        let batch = 7, inF = 5, outF = 4
        var layout = ParameterLayout()
        let w = layout.append("w", shape: [outF, inF]), b = layout.append("b", shape: [outF])
        let linear = Linear(inFeatures: inF, outFeatures: outF, weight: w, bias: b)
        let p = ParameterStore(layout: layout)
        fillNormal(p.values.all, &rng)
        let x = OwnedMatrix(rows: batch, cols: inF, normal: &rng)
        let r = OwnedMatrix(rows: batch, cols: outF, normal: &rng)
        let y = OwnedMatrix(rows: batch, cols: outF)
        let dx = OwnedMatrix(rows: batch, cols: inF)

        // Forward matches a Double loop (fp32 dot of 5 terms + bias: rel 1e-5 of the magnitude).
        linear.forward(x.matrix, y.matrix, p)
        for i in 0..<batch {
            for o in 0..<outF {
                var s = Double(p.value(b)[o]), mag = abs(s)
                for k in 0..<inF {
                    s += Double(x[i * inF + k]) * Double(p.value(w)[o * inF + k])
                    mag += abs(Double(x[i * inF + k]) * Double(p.value(w)[o * inF + k]))
                }
                XCTAssertEqual(Double(y[i * outF + o]), s, accuracy: 1e-5 * mag)
            }
        }

        // Gradients accumulate: start from a known non-zero gradient and subtract it afterwards.
        fillNormal(p.gradients.all, &rng)
        let before = p.gradients.array
        linear.backward(x.matrix, r.matrix, dx.matrix, p)
        let grads = zip(p.gradients.array, before).map { Double($0) - Double($1) }

        func loss() -> Double {
            linear.forward(x.matrix, y.matrix, p)
            return weightedSum(y.matrix, r)
        }
        let h: Float = 1e-2
        let fdW = (0..<w.count).map { centralDifference(at: p.values.pointer + w.offset + $0, h: h, loss) }
        let fdB = (0..<b.count).map { centralDifference(at: p.values.pointer + b.offset + $0, h: h, loss) }
        let fdX = (0..<batch * inF).map { centralDifference(at: x.storage.pointer + $0, h: h, loss) }
        assertGradientsMatch(analytic: Array(grads[w.range]), numeric: fdW, "Linear dW")
        assertGradientsMatch(analytic: Array(grads[b.range]), numeric: fdB, "Linear db")
        assertGradientsMatch(analytic: dx.values.map(Double.init), numeric: fdX, "Linear dx")
    }

    /// Weight rows over several batches (the ranks of a node): against a Double loop over every
    /// batch's samples, zeros outside the rows asked for untouched, and, where the GEMM's beta-1
    /// addition is exact, the bits of each batch's own gradient (`backward`) summed in the tree.
    func testWeightGradientRowsOverSeveralBatches() {
        var rng = SplitMix64(seed: 23)
        let inF = 6, outF = 9, rows = 2..<7
        var layout = ParameterLayout()
        let w = layout.append("w", shape: [outF, inF])
        let linear = Linear(inFeatures: inF, outFeatures: outF, weight: w, bias: nil)
        var bitsCompared = 0
        for counts in [[5, 4], [3, 0, 4, 2]] {
            let parts = counts.map {
                (x: OwnedMatrix(rows: $0, cols: inF, normal: &rng), dy: OwnedMatrix(rows: $0, cols: outF, normal: &rng))
            }
            let p = ParameterStore(layout: layout)
            p.gradients.all.update(repeating: 7)
            linear.weightGradient(
                rows: rows, over: parts.map { ($0.x.matrix, $0.dy.matrix) }, into: p.gradients.pointer, tree: BatchChunks())
            for o in 0..<outF {
                for i in 0..<inF {
                    let got = p.gradients.pointer[o * inF + i]
                    guard rows.contains(o) else {
                        XCTAssertEqual(got, 7, "row \(o) is not asked for")
                        continue
                    }
                    var sum = 0.0, magnitude = 0.0
                    for part in parts {
                        for n in 0..<part.x.rows {
                            let term = Double(part.dy[n * outF + o]) * Double(part.x[n * inF + i])
                            sum += term
                            magnitude += abs(term)
                        }
                    }
                    XCTAssertEqual(Double(got), sum, accuracy: 1e-5 * magnitude + 1e-30, "\(counts) row \(o) column \(i)")
                }
            }
            // the same bits as each part's own gradient, added in the tree, where the fusion is exact
            let exact = Set(counts).allSatisfy { BLAS.accumulationIsExactSum(.transposed, .none, m: rows.count, n: inF, k: $0) }
            guard exact else { continue }
            let own = parts.map { part -> [Float] in
                let q = ParameterStore(layout: layout)
                linear.backward(part.x.matrix, part.dy.matrix, nil, q, accumulating: false)
                return q.gradients.array
            }
            func tree(_ range: Range<Int>) -> [Float] {
                if range.count == 1 { return own[range.lowerBound] }
                let mid = range.lowerBound + range.count / 2
                return zip(tree(range.lowerBound..<mid), tree(mid..<range.upperBound)).map(+)
            }
            let summed = tree(0..<own.count)
            for k in rows.lowerBound * inF..<rows.upperBound * inF {
                XCTAssertEqual(p.gradients.pointer[k].bitPattern, summed[k].bitPattern, "\(counts) element \(k)")
            }
            bitsCompared += 1
        }
        XCTAssertGreaterThan(bitsCompared, 0, "the BLAS adds no pair exactly at these shapes: the bits went unchecked")
    }

    /// Backward with weight-row cuts (one repeated, so one piece is empty): the gradient matches a
    /// Double loop, accumulating adds to what was there, and each piece has the bits of
    /// `weightGradient` over that piece alone, which is what the sharded update's owner computes.
    func testWeightRowCutsInBackward() {
        var rng = SplitMix64(seed: 29)
        // shapes at which OpenBLAS's Haswell kernels give some rows computed apart other bits
        let inF = 32, outF = 256, batch = 128
        var layout = ParameterLayout()
        let w = layout.append("w", shape: [outF, inF])
        var linear = Linear(inFeatures: inF, outFeatures: outF, weight: w, bias: nil)
        linear.weightRowCuts = [96, 96, 128]
        XCTAssertEqual(linear.weightRowPieces, [0..<96, 96..<96, 96..<128, 128..<256])
        let x = OwnedMatrix(rows: batch, cols: inF, normal: &rng), dy = OwnedMatrix(rows: batch, cols: outF, normal: &rng)
        let p = ParameterStore(layout: layout)
        p.gradients.all.update(repeating: 0.5)
        linear.backward(x.matrix, dy.matrix, nil, p, accumulating: true)
        for o in 0..<outF {
            for i in 0..<inF {
                var sum = 0.5, magnitude = 0.5
                for n in 0..<batch {
                    let term = Double(dy[n * outF + o]) * Double(x[n * inF + i])
                    sum += term
                    magnitude += abs(term)
                }
                XCTAssertEqual(Double(p.gradients.pointer[o * inF + i]), sum, accuracy: 1e-5 * magnitude, "row \(o) column \(i)")
            }
        }
        let written = ParameterStore(layout: layout)
        linear.backward(x.matrix, dy.matrix, nil, written, accumulating: false)
        for piece in linear.weightRowPieces where !piece.isEmpty {
            let alone = ParameterStore(layout: layout)
            linear.weightGradient(rows: piece, over: [(x.matrix, dy.matrix)], into: alone.gradients.pointer, tree: BatchChunks())
            for k in piece.lowerBound * inF..<piece.upperBound * inF {
                XCTAssertEqual(
                    alone.gradients.pointer[k].bitPattern, written.gradients.pointer[k].bitPattern, "\(piece) element \(k)")
            }
        }
    }

    func testReluBackwardAgainstFiniteDifferences() {
        var rng = SplitMix64(seed: 22)
        let n = 41
        let x = OwnedMatrix(rows: 1, cols: n, normal: &rng)
        // Keep inputs away from the kink by more than h, where the FD would straddle it.
        for i in 0..<n where abs(x[i]) < 0.05 { x[i] = x[i] < 0 ? -0.5 : 0.5 }
        let r = OwnedMatrix(rows: 1, cols: n, normal: &rng)
        let y = OwnedMatrix(rows: 1, cols: n), dx = OwnedMatrix(rows: 1, cols: n)
        func loss() -> Double {
            for i in 0..<n { y.matrix.base[i] = max(x.matrix.base[i], 0) }
            return weightedSum(y.matrix, r)
        }
        _ = loss()
        reluBackward(output: y.matrix.readOnly, r.matrix.readOnly, dx.matrix.buffer)
        let fd = (0..<n).map { centralDifference(at: x.storage.pointer + $0, h: 1e-2, loss) }
        assertGradientsMatch(analytic: dx.values.map(Double.init), numeric: fd, "ReLU dx")
    }

    func testSoftmaxCrossEntropy() {
        var rng = SplitMix64(seed: 23)
        let batch = 9, k = 6
        let z = OwnedMatrix(rows: batch, cols: k, normal: &rng, scale: 2)
        let labels = (0..<batch).map { _ in Int32(rng.next() % UInt64(k)) }
        let dz = OwnedMatrix(rows: batch, cols: k)
        let normalizer = 12.0  // a "global" count larger than the local batch, as with several ranks
        let sums = labels.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(logits: z.matrix, labels: $0, normalizer: normalizer, dlogits: dz.matrix)
        }
        // Loss and accuracy against a Double reference (log-sum-exp in Double; rel 1e-6 covers the
        // fp32 subtraction z - max inside the kernel).
        var want = 0.0, correct = 0
        for i in 0..<batch {
            let row = (0..<k).map { Double(z[i * k + $0]) }
            let m = row.max()!
            want += log(row.map { exp($0 - m) }.reduce(0, +)) + m - row[Int(labels[i])]
            if row.firstIndex(of: m)! == Int(labels[i]) { correct += 1 }
        }
        XCTAssertEqual(sums.loss, want, accuracy: 1e-6 * want)
        XCTAssertEqual(sums.correct, correct)
        // dlogits rows sum to 0 (softmax sums to 1, minus the one-hot), up to fp32 rounding.
        for i in 0..<batch {
            let s = (0..<k).reduce(0.0) { $0 + Double(dz[i * k + $1]) }
            XCTAssertEqual(s, 0, accuracy: 1e-6)
        }
        func loss() -> Double {
            labels.withUnsafeBufferPointer {
                SoftmaxCrossEntropy.forwardBackward(logits: z.matrix, labels: $0, normalizer: normalizer, dlogits: nil).loss
            } / normalizer
        }
        let fd = (0..<batch * k).map { centralDifference(at: z.storage.pointer + $0, h: 1e-2, loss) }
        assertGradientsMatch(analytic: dz.values.map(Double.init), numeric: fd, "softmax CE dlogits")
    }

    /// Exact known answer: equal logits over 4 classes give loss log 4 per row, gradient 1/4 - onehot.
    func testSoftmaxCrossEntropyUniformLogits() {
        let z = OwnedMatrix(rows: 2, cols: 4), dz = OwnedMatrix(rows: 2, cols: 4)
        let labels: [Int32] = [1, 3]
        let sums = labels.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(logits: z.matrix, labels: $0, normalizer: 1, dlogits: dz.matrix)
        }
        XCTAssertEqual(sums.loss, 2 * log(4.0), accuracy: 1e-12)
        XCTAssertEqual(dz.values, [0.25, -0.75, 0.25, 0.25, 0.25, 0.25, 0.25, -0.75])
    }
}
