import TensorCore

/// The backward pass, its sums over ranks, and the gradient through the scaled epsilon.
extension BatchNorm {
    /// Backward of the last training forward: reduces (sum dy, sum dy*xhat), writes `dx`, accumulates
    /// d gamma, d beta (and the incoming weight's gradient through eps_c in `.scaled` mode).
    ///
    /// - Parameter relu: `dy` is the gradient of the ReLU output of a `forward(..., relu: true)`; the
    ///   ReLU's backward is applied on the fly in both passes (see `reluBackwardSums`), not in a pass
    ///   of its own, and `dy` is not modified.
    public func backward(
        _ dy: Matrix, _ dx: Matrix, _ p: ParameterStore, reducer: StatisticsReducer,
        deferEpsilonGradient: Bool = false, relu: Bool = false
    ) throws {
        precondition(!relu || lastReLU, "BatchNorm ReLU backward after a forward without ReLU")
        precondition(dx.rows == rows && dx.cols == channels, "BatchNorm backward dx shape mismatch")
        var local = [Double](repeating: 0, count: backwardSumsCount)
        local.withUnsafeMutableBufferPointer { accumulateBackwardSums(dy, into: $0, p: relu ? p : nil) }
        var global = local
        try global.withUnsafeMutableBufferPointer { try reducer.sumAcrossRanks($0) }
        beginInputGradient(globalSums: global, localSums: local, p, deferEpsilonGradient: deferEpsilonGradient)
        inputGradientRows(0..<rows, dy, dx, relu: relu ? p : nil)
    }

    /// Phase 1 of backward: adds this rank's (sum dy, sum dy * xhat) per channel to `s`.
    public func accumulateBackwardSums(_ dy: Matrix, into s: UnsafeMutableBufferPointer<Double>) {
        accumulateBackwardSums(dy, into: s, p: nil)
    }

    /// `accumulateBackwardSums`; with `p`, `dy` is the gradient of max(y, 0) after a forward with
    /// `relu: true`, and the ReLU's backward is applied on the fly (see `reluBackwardSums`).
    func accumulateBackwardSums(_ dy: Matrix, into s: UnsafeMutableBufferPointer<Double>, p: ParameterStore?) {
        precondition(
            dy.rows == rows && dy.cols == channels && s.count == backwardSumsCount,
            "BatchNorm backward shape mismatch (was forward run on this batch?)")
        let relu = p.map { (UnsafePointer($0.value(gamma).baseAddress!), UnsafePointer($0.value(beta).baseAddress!)) }
        let hat = UnsafePointer(xhat.storage.pointer), c = channels
        let centered = cacheHoldsInput ? (UnsafePointer(centering), UnsafePointer(centering + c)) : nil
        sumByChunk(into: s) { block, sdy, sdyx in
            // one call per combination, each specialized by the inlined kernel
            switch (centered, relu) {
            case let (centered?, relu?):
                Self.backwardSums(
                    dy.base, hat, block, c, centered: centered, relu: relu, reluOutput: nil, acc: blockSums, sdy, sdyx)
            case let (centered?, nil):
                Self.backwardSums(
                    dy.base, hat, block, c, centered: centered, relu: nil, reluOutput: nil, acc: blockSums, sdy, sdyx)
            case let (nil, relu?):
                Self.backwardSums(dy.base, hat, block, c, centered: nil, relu: relu, reluOutput: nil, acc: blockSums, sdy, sdyx)
            case (nil, nil):
                Self.backwardSums(dy.base, hat, block, c, centered: nil, relu: nil, reluOutput: nil, acc: blockSums, sdy, sdyx)
            }
        }
    }

    /// Calls `body(block, sdy, sdyx)` with consecutive blocks of `sumBlock` rows of the last
    /// forward's batch, `sdy` and `sdyx` pointing into `s` (added to). In deterministic mode the
    /// blocks restart at each chunk, each chunk sums into a leaf of its own, and the tree sum of the
    /// leaves is added to `s`.
    @inline(__always)
    func sumByChunk(
        into s: UnsafeMutableBufferPointer<Double>,
        _ body: (Range<Int>, UnsafeMutablePointer<Double>, UnsafeMutablePointer<Double>) -> Void
    ) {
        let c = channels
        @inline(__always) func blocks(_ range: Range<Int>, _ sums: UnsafeMutablePointer<Double>) {
            var start = range.lowerBound
            while start < range.upperBound {
                let end = Swift.min(start &+ Self.sumBlock, range.upperBound)
                body(start..<end, sums, sums + c)
                start = end
            }
        }
        guard chunks.deterministic else { return blocks(0..<rows, s.baseAddress!) }
        var leaves = BatchChunks.DoubleLeaves(ranges: chunks.rowRanges(rows: rows), width: 2 * c)
        for (i, range) in leaves.ranges.enumerated() { leaves.withLeaf(i) { blocks(range, $0.baseAddress!) } }
        for (j, total) in leaves.combined().enumerated() { s[j] += total }
    }

    /// Adds (sum dy, sum dy * xhat) over the rows `block` to `sdy`, `sdyx`: Float sums over the block
    /// (see `sumBlock`) in `acc` (`2 * c` values), added into Double. xhat is read from `hat`
    /// (`[rows, c]`), or with `centered` = (mean, 1/s) recomputed from the cached input there as
    /// (x - mean) * (1/s), the forward's expression. With `relu` = (gamma, beta), dy is zeroed where
    /// the forward's ReLU output was zero (see `reluBackwardSums`); with `reluOutput`, where
    /// `reluOutput` is not positive, and the masked dy is written back.
    ///
    /// Row by row: the kernels stream their operands from memory, and going down the rows of a tile
    /// of channels (parameters in registers) measured slower.
    @inline(__always)
    static func backwardSums(
        _ dy: UnsafeMutablePointer<Float>, _ hat: UnsafePointer<Float>, _ block: Range<Int>, _ c: Int,
        centered: (UnsafePointer<Float>, UnsafePointer<Float>)?, relu: (UnsafePointer<Float>, UnsafePointer<Float>)?,
        reluOutput: UnsafePointer<Float>?, acc: UnsafeMutablePointer<Float>, _ sdy: UnsafeMutablePointer<Double>,
        _ sdyx: UnsafeMutablePointer<Double>
    ) {
        let zero = SIMD4<Float>()
        let a1 = acc, a2 = acc + c
        a1.update(repeating: 0, count: 2 &* c)
        for r in block {
            let row = r &* c
            var j = 0
            while j &+ 4 <= c {
                let at = row &+ j
                let h =
                    centered.map { (loadFloat4(hat + at) - loadFloat4($0.0 + j)) * loadFloat4($0.1 + j) } ?? loadFloat4(hat + at)
                var d = loadFloat4(dy + at)
                if let relu { d = zero.replacing(with: d, where: loadFloat4(relu.0 + j) * h + loadFloat4(relu.1 + j) .> zero) }
                if let reluOutput {
                    d = zero.replacing(with: d, where: loadFloat4(reluOutput + at) .> zero)
                    storeFloat4(d, dy + at)
                }
                storeFloat4(loadFloat4(a1 + j) + d, a1 + j)
                storeFloat4(loadFloat4(a2 + j) + d * h, a2 + j)
                j &+= 4
            }
            while j < c {
                let at = row &+ j
                let h = centered.map { (hat[at] - $0.0[j]) * $0.1[j] } ?? hat[at]
                var d = dy[at]
                if let relu { d = relu.0[j] * h + relu.1[j] > 0 ? d : 0 }
                if let reluOutput {
                    d = reluOutput[at] > 0 ? d : 0
                    dy[at] = d
                }
                a1[j] += d
                a2[j] += d * h
                j &+= 1
            }
        }
        for j in 0..<c {
            sdy[j] += Double(a1[j])
            sdyx[j] += Double(a2[j])
        }
    }

    /// Phase 2 of backward:
    /// ```
    /// dx = gamma / s * (dy - sum(dy)/N - xhat * sum(dy*xhat)/N)      (global sums)
    /// d gamma += sum(dy*xhat), d beta += sum(dy)                       (local sums)
    /// ```
    /// In `.scaled` mode eps_c = eps * ||w_c||^2 * q depends on parameters too; with
    /// dL/d eps_c = -gamma_c * sum(dy*xhat) / (2 s_c^2) (local sums):
    /// ```
    /// d w_c += 2 w_c * eps * q * dL/d eps_c
    /// d (gamma_p, beta_p) += 2 (gamma_p, beta_p) / C_p * sum_c eps * ||w_c||^2 * dL/d eps_c
    /// ```
    ///
    /// With `deferEpsilonGradient` the `.scaled`-mode terms are kept and added later by
    /// `applyEpsilonGradient`, so the caller can let the weight-gradient GEMM overwrite (not
    /// accumulate into) the gradient buffer, saving a pass that zeroes it.
    public func finishBackward(
        _ dy: Matrix, _ dx: Matrix, globalSums: [Double], localSums: [Double], _ p: ParameterStore,
        deferEpsilonGradient: Bool = false
    ) {
        precondition(dx.rows == rows && dx.cols == channels, "BatchNorm backward dx shape mismatch")
        beginInputGradient(globalSums: globalSums, localSums: localSums, p, deferEpsilonGradient: deferEpsilonGradient)
        inputGradientRows(0..<rows, dy, dx, relu: nil)
    }

    /// The per-channel part of `finishBackward`: the coefficients of dx, d gamma, d beta and the
    /// `.scaled`-mode terms.
    func beginInputGradient(
        globalSums: [Double], localSums: [Double], _ p: ParameterStore, deferEpsilonGradient: Bool
    ) {
        let c = channels
        let g = p.value(gamma), dg = p.gradient(gamma), db = p.gradient(beta)
        let meanDy = coefficients, meanDyX = coefficients + c, scaleX = coefficients + 2 * c
        invStd.withUnsafeBufferPointer { invStd in
            for j in 0..<c {
                meanDy[j] = Float(globalSums[j] / globalCount)
                meanDyX[j] = Float(globalSums[c + j] / globalCount)
                scaleX[j] = g[j] * invStd[j]
                if !chunks.deterministic {
                    db[j] += Float(localSums[j])
                    dg[j] += Float(localSums[c + j])
                }
            }
        }
        if chunks.deterministic {
            p.pendingTerms.append((beta, (0..<c).map { Float(globalSums[$0]) }))
            p.pendingTerms.append((gamma, (0..<c).map { Float(globalSums[c + $0]) }))
        }
        if epsilonMode == .scaled {
            for j in 0..<c {
                let positive = denominator[j] > 0
                epsilonGradient[j] = positive ? -Double(g[j]) * localSums[c + j] / (2 * denominator[j]) : 0
                globalEpsilonGradient[j] = positive ? -Double(g[j]) * globalSums[c + j] / (2 * denominator[j]) : 0
            }
            if !deferEpsilonGradient { applyEpsilonGradient(p) }
        }
    }

    /// Rows `range` of dx (see `finishBackward`), from the coefficients of `beginInputGradient`; with
    /// `relu`, `dy` is the gradient of the ReLU output (see `reluBackwardSums`).
    func inputGradientRows(_ range: Range<Int>, _ dy: Matrix, _ dx: Matrix, relu p: ParameterStore?) {
        let c = channels
        let relu = p.map { (UnsafePointer($0.value(gamma).baseAddress!), UnsafePointer($0.value(beta).baseAddress!)) }
        let hat = UnsafePointer(xhat.storage.pointer)
        let centered = cacheHoldsInput ? (UnsafePointer(centering), UnsafePointer(centering + c)) : nil
        // one call per combination, each specialized by the inlined kernel
        switch (centered, relu) {
        case let (centered?, relu?):
            inputGradient(dy.base, hat, dx.base, range, centered: centered, relu: relu)
        case let (centered?, nil):
            inputGradient(dy.base, hat, dx.base, range, centered: centered, relu: nil)
        case let (nil, relu?):
            inputGradient(dy.base, hat, dx.base, range, centered: nil, relu: relu)
        case (nil, nil):
            inputGradient(dy.base, hat, dx.base, range, centered: nil, relu: nil)
        }
    }

    /// `dx = k * (dy - a - xhat * b)` (k = gamma/s, a = sum(dy)/N, b = sum(dy*xhat)/N) over the rows
    /// `range`; xhat and the ReLU mask as in `backwardSums`.
    @inline(__always)
    func inputGradient(
        _ dy: UnsafePointer<Float>, _ hat: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ range: Range<Int>,
        centered: (UnsafePointer<Float>, UnsafePointer<Float>)?, relu: (UnsafePointer<Float>, UnsafePointer<Float>)?
    ) {
        let c = channels
        let a = UnsafePointer(coefficients), b = a + c, k = a + 2 * c
        let zero = SIMD4<Float>()
        @inline(__always) func four(_ at: Int, _ j: Int) {
            let h = centered.map { (loadFloat4(hat + at) - loadFloat4($0.0 + j)) * loadFloat4($0.1 + j) } ?? loadFloat4(hat + at)
            var d = loadFloat4(dy + at)
            if let relu { d = zero.replacing(with: d, where: loadFloat4(relu.0 + j) * h + loadFloat4(relu.1 + j) .> zero) }
            storeFloat4(loadFloat4(k + j) * (d - loadFloat4(a + j) - h * loadFloat4(b + j)), dx + at)
        }
        for r in range {
            let row = r &* c
            var j = 0
            while j &+ 8 <= c {
                four(row &+ j, j)
                four(row &+ j &+ 4, j &+ 4)
                j &+= 8
            }
            while j &+ 4 <= c {
                four(row &+ j, j)
                j &+= 4
            }
            while j < c {
                let at = row &+ j
                let h = centered.map { (hat[at] - $0.0[j]) * $0.1[j] } ?? hat[at]
                var d = dy[at]
                if let relu { d = relu.0[j] * h + relu.1[j] > 0 ? d : 0 }
                dx[at] = k[j] * (d - a[j] - h * b[j])
                j &+= 1
            }
        }
    }

    /// Adds the `.scaled`-mode gradient through eps_c (kept by the last `finishBackward`) to the
    /// incoming weight and to the previous BN's (gamma, beta). No-op in the other modes.
    ///
    /// - Parameter radial: `.none` adds every term to the gradients now. `.global` leaves the
    ///   incoming weight's term (radial, row by row) in `p.pendingRadial` for the update to apply,
    ///   computed from the global sums: valid when every rank normalizes with the same statistics
    ///   (synchronized BN, or one rank). `.local` leaves this rank's share of it, which the caller
    ///   must sum over ranks (per-rank statistics).
    public func applyEpsilonGradient(_ p: ParameterStore, radial: RadialDeferral = .none) {
        guard epsilonMode == .scaled, let incomingWeight else { return }
        let fanIn = incomingWeight.count / channels
        precondition(!chunks.deterministic || radial == .global, "deterministic mode takes the radial terms from the global sums")
        // deterministic: from the global sums, added once after the reduction (pendingTerms)
        let sums = chunks.deterministic ? globalEpsilonGradient : epsilonGradient
        var dq = 0.0
        for j in 0..<channels { dq += sums[j] * epsilon * rowNorms[j] }
        if radial != .none {
            let source = radial == .global ? globalEpsilonGradient : epsilonGradient
            let coefficients = source.map { Float(2 * epsilon * inputScale * $0) }
            p.pendingRadial.append(RadialGradient(tensor: incomingWeight, coefficients: coefficients))
        } else {
            let w = p.value(incomingWeight), dw = p.gradient(incomingWeight)
            for j in 0..<channels where epsilonGradient[j] != 0 {
                axpy(
                    Float(2 * epsilon * inputScale * epsilonGradient[j]),
                    UnsafeBufferPointer(rebasing: w[j * fanIn..<(j + 1) * fanIn]),
                    UnsafeMutableBufferPointer(rebasing: dw[j * fanIn..<(j + 1) * fanIn]))
            }
        }
        if let previousAffine {
            let factor = Float(2 * dq / Double(previousAffine.gamma.count))
            for spec in [previousAffine.gamma, previousAffine.beta] {
                if chunks.deterministic {
                    p.pendingTerms.append((spec, p.value(spec).map { factor * $0 }))
                } else {
                    axpy(factor, UnsafeBufferPointer(p.value(spec)), p.gradient(spec))
                }
            }
        }
    }
}
