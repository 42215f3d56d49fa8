import TensorCore

/// `y = x W^T (+ b)`, with `W: [out, in]` (PyTorch's layout) and `x: [batch, in]`.
/// The weight gradient is accumulated into the gradient store or, with `accumulating: false`,
/// overwritten by its GEMM (one per piece of `weightRowCuts`); the bias gradient is accumulated.
public struct Linear: Sendable {
    public let inFeatures: Int
    public let outFeatures: Int
    public let weight: TensorSpec
    public let bias: TensorSpec?

    /// Rows at which backward cuts its weight-gradient GEMM (sorted, inside `1..<outFeatures`;
    /// a repeated cut gives an empty piece, which costs nothing): where the sharded update's
    /// segments cut the weight, so that the rank that computes its segment's rows over the node's
    /// batch makes GEMMs of the shapes backward makes. A BLAS may compute a range of rows
    /// apart to other bits than inside the whole product (OpenBLAS's Haswell kernels do).
    public var weightRowCuts: [Int] = [] {
        didSet {
            precondition(
                weightRowCuts == weightRowCuts.sorted() && weightRowCuts.allSatisfy { $0 > 0 && $0 < outFeatures },
                "weight row cuts \(weightRowCuts) of a \(outFeatures)-row weight")
        }
    }

    /// The weight gradient's rows as backward computes them, one GEMM each.
    public var weightRowPieces: [Range<Int>] {
        zip([0] + weightRowCuts, weightRowCuts + [outFeatures]).map { $0..<$1 }
    }

    public init(inFeatures: Int, outFeatures: Int, weight: TensorSpec, bias: TensorSpec?) {
        precondition(weight.shape == [outFeatures, inFeatures], "Linear weight must be [\(outFeatures), \(inFeatures)]")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.weight = weight
        self.bias = bias
    }

    /// One GEMM of `2 * batch * in * out` flops (one per chunk in deterministic mode, should a
    /// row's result depend on how the batch is split).
    public func forward(_ x: Matrix, _ y: Matrix, _ p: ParameterStore, chunks: BatchChunks? = nil) {
        precondition(x.cols == inFeatures && y.cols == outFeatures && x.rows == y.rows, "Linear forward shape mismatch")
        rowGemm(x, .transposed, p.value(weight).baseAddress!, into: y, chunks: chunks)
        if let bias { addRowVector(UnsafeBufferPointer(p.value(bias)), to: y.base, rows: y.rows) }
    }

    /// Rows of the weight gradient per tile in deterministic mode: about 512 KiB of partials, so
    /// that a tile's partials stay in cache while the tree adds them; a multiple of 16 (the GEMM
    /// kernel's M unroll).
    public var gradientTileRows: Int { Swift.max(16, (512 << 10) / (4 * inFeatures) / 16 * 16) }

    /// `c = a op(b)` row by row (`a: [rows, k]`, `b` the weight, `c: [rows, n]`): the forward
    /// (`op` transposed) and the input gradient. One GEMM over the batch, unless deterministic mode
    /// finds (`BLAS.rowsIndependentOfSplit`) that a row's bits depend on the split; then one per
    /// chunk, whose sizes do not depend on the number of ranks.
    private func rowGemm(_ a: Matrix, _ op: BLAS.Transpose, _ b: UnsafePointer<Float>, into c: Matrix, chunks: BatchChunks?) {
        var calls = [0..<a.rows]
        if let chunks, chunks.deterministic {
            let ranges = chunks.rowRanges(rows: a.rows)
            if !BLAS.rowsIndependentOfSplit(op, m: a.rows, split: ranges.map(\.count), n: c.cols, k: a.cols) { calls = ranges }
        }
        for rows in calls {
            BLAS.gemm(
                .none, op, m: rows.count, n: c.cols, k: a.cols, a: a.row(rows.lowerBound), lda: a.cols, b: b, ldb: inFeatures,
                beta: 0, c: c.row(rows.lowerBound), ldc: c.cols)
        }
    }

    /// `dW += dy^T x` (`dW = dy^T x` when not `accumulating`; left alone without `weightGradient`,
    /// for `weightGradient(rows:over:into:tree:sameBitsAsSummed:)` to compute later), `db += sum_rows dy`, and `dx = dy W`
    /// when `dx` is given (not for the first layer).
    public func backward(
        _ x: Matrix, _ dy: Matrix, _ dx: Matrix?, _ p: ParameterStore, accumulating: Bool = true, chunks: BatchChunks? = nil,
        weightGradient: Bool = true
    ) {
        precondition(x.rows == dy.rows && dy.cols == outFeatures, "Linear backward shape mismatch")
        if let chunks, chunks.deterministic {
            precondition(weightGradient, "deterministic mode computes its weight gradients in chunks")
            precondition(!accumulating, "deterministic mode writes gradients, it does not accumulate them")
            chunkedGradients(x, dy, p, chunks)
        } else {
            if weightGradient {
                let dw = p.gradient(weight).baseAddress!
                for rows in weightRowPieces {
                    BLAS.gemm(
                        .transposed, .none, m: rows.count, n: inFeatures, k: x.rows,
                        a: dy.base + rows.lowerBound, lda: outFeatures, b: x.base, ldb: inFeatures,
                        beta: accumulating ? 1 : 0, c: dw + rows.lowerBound * inFeatures, ldc: inFeatures)
                }
            }
            if let bias {
                var sums = [Double](repeating: 0, count: outFeatures)
                sums.withUnsafeMutableBufferPointer {
                    accumulateColumnSums(dy.base, rows: dy.rows, cols: outFeatures, into: $0.baseAddress!)
                }
                let g = p.gradient(bias)
                for c in 0..<outFeatures { g[c] += Float(sums[c]) }
            }
        }
        if let dx {
            precondition(dx.rows == x.rows && dx.cols == inFeatures, "Linear backward dx shape mismatch")
            rowGemm(dy, .none, p.value(weight).baseAddress!, into: dx, chunks: chunks)
        }
    }

    /// The weight gradient's rows `rows` (one of `weightRowPieces`, or a deterministic-mode tile
    /// when there are no cuts) over every batch of `parts` (each a batch's input and output
    /// gradient, as `backward` took them; in practice each rank's), into `dw`, the weight
    /// gradient's first element: the parts' GEMMs added in `tree`'s tree, the tree the ranks' whole
    /// gradients are summed in, its lowest level fused into the GEMMs (beta 1). With
    /// `sameBitsAsSummed`, only where that addition is exact (checked once per shape), so that
    /// the bits are those of each part's own gradient, summed; without, always (batch sizes that
    /// change every step would need a check every step).
    public func weightGradient(
        rows: Range<Int>, over parts: [(x: Matrix, dy: Matrix)], into dw: UnsafeMutablePointer<Float>, tree: BatchChunks,
        sameBitsAsSummed: Bool = true
    ) {
        precondition(rows.lowerBound >= 0 && rows.upperBound <= outFeatures, "rows \(rows) of a \(outFeatures)-row weight")
        precondition(
            weightRowCuts.isEmpty || weightRowPieces.contains(rows), "rows \(rows) are not a piece of \(weightRowPieces)")
        guard !rows.isEmpty, !parts.isEmpty else { return }
        for part in parts {
            precondition(
                part.x.rows == part.dy.rows && part.x.cols == inFeatures && part.dy.cols == outFeatures,
                "Linear weight gradient shape mismatch")
        }
        let fused =
            !sameBitsAsSummed
            || Set(parts.map(\.x.rows)).allSatisfy {
                BLAS.accumulationIsExactSum(.transposed, .none, m: rows.count, n: inFeatures, k: $0)
            }
        tree.treeSum(
            leaves: parts.count, count: rows.count * inFeatures, into: dw + rows.lowerBound * inFeatures, fusedPairs: fused
        ) {
            i, out, accumulate in
            let part = parts[i]
            BLAS.gemm(
                .transposed, .none, m: rows.count, n: inFeatures, k: part.x.rows,
                a: part.dy.base + rows.lowerBound, lda: outFeatures, b: part.x.base, ldb: inFeatures,
                beta: accumulate ? 1 : 0, c: out, ldc: inFeatures)
        }
    }

    /// Deterministic mode: the weight gradient (and the bias's) as the tree sum of one GEMM per
    /// chunk (`weightGradient` over the chunks' rows). Tiles of output rows (`gradientTileRows`)
    /// keep a tile's partials in cache while the tree adds them; the tiling is the same on every
    /// rank count, so it changes no bits between them.
    private func chunkedGradients(_ x: Matrix, _ dy: Matrix, _ p: ParameterStore, _ chunks: BatchChunks) {
        precondition(weightRowCuts.isEmpty, "deterministic mode tiles its weight gradients itself")
        let ranges = chunks.rowRanges(rows: x.rows)
        let parts = ranges.map { (x: x.rows($0), dy: dy.rows($0)) }
        for first in stride(from: 0, to: outFeatures, by: gradientTileRows) {
            let tile = first..<Swift.min(first + gradientTileRows, outFeatures)
            weightGradient(rows: tile, over: parts, into: p.gradient(weight).baseAddress!, tree: chunks)
        }
        // the bias: Float leaves too (Float(chunk sum in Double)), since ranks add Float partials
        guard let bias else { return }
        var sums = [Double](repeating: 0, count: outFeatures)
        chunks.treeSum(leaves: ranges.count, count: outFeatures, into: p.gradient(bias).baseAddress!, fusedPairs: true) {
            i, out, accumulate in
            let rows = ranges[i]
            sums.withUnsafeMutableBufferPointer { s in
                s.update(repeating: 0)
                accumulateColumnSums(dy.row(rows.lowerBound), rows: rows.count, cols: outFeatures, into: s.baseAddress!)
                for c in 0..<outFeatures { out[c] = accumulate ? out[c] + Float(s[c]) : Float(s[c]) }
            }
        }
    }
}
