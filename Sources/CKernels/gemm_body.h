// A GEMM for the Winograd products' shape, compiled once per instruction set by kernels.c
// (KERNEL, VECTOR_BYTES set there): C[m, n] = A[m, k] B[k, n], row-major, with k and n small
// (channel counts) and m large (tiles). OpenBLAS reached 31 GFLOP/s on k = n = 32, under 40% of
// the core's FMA peak; here a block of ROWS rows by up to 4 vectors of columns stays in registers
// for the whole k loop, B's rows come from L1, and every result is one chain of multiply-adds in
// k order, so a row's bits do not depend on the rows around it.

typedef float KERNEL(vec) __attribute__((vector_size(VECTOR_BYTES)));
#define VEC KERNEL(vec)
#define LANES (VECTOR_BYTES / 4)
// Accumulators: ROWS x 4 vectors, plus 4 of B and a broadcast, fit the register file (16
// registers below AVX-512, 32 with it); one more row spills.
#define ROWS (VECTOR_BYTES == 64 ? 6 : 2)

static inline __attribute__((always_inline)) VEC KERNEL(load)(const float *p) {
    VEC v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void KERNEL(store)(float *p, VEC v) { __builtin_memcpy(p, &v, sizeof v); }

// Rows i ..< i + rows (rows * vectors <= 4 * ROWS), columns j ..< j + vectors * LANES.
static inline __attribute__((always_inline)) void KERNEL(gemm_block)(int rows, int vectors, int k, const float *a,
                                                                     long lda, const float *b, long ldb, float *c,
                                                                     long ldc) {
    VEC acc[4 * ROWS][4];
    for (int r = 0; r < rows; r++) {
        for (int v = 0; v < vectors; v++) acc[r][v] = (VEC){0};
    }
    for (int p = 0; p < k; p++) {
        VEC bv[4];
        for (int v = 0; v < vectors; v++) bv[v] = KERNEL(load)(b + p * ldb + v * LANES);
        for (int r = 0; r < rows; r++) {
            const float s = a[r * lda + p];
            VEC ar;
            for (int l = 0; l < LANES; l++) ar[l] = s;
            for (int v = 0; v < vectors; v++) acc[r][v] += ar * bv[v];
        }
    }
    for (int r = 0; r < rows; r++) {
        for (int v = 0; v < vectors; v++) KERNEL(store)(c + r * ldc + v * LANES, acc[r][v]);
    }
}

// Rows in blocks of as many as the accumulators hold for this width of columns, then one by one;
// `rows` and `vectors` are constants in each call below, so the block's loops unroll into registers.
#define GEMM_ROWS(vectors)                                                                                     \
    do {                                                                                                       \
        long i = 0;                                                                                            \
        for (; i + 4 * ROWS / (vectors) <= m; i += 4 * ROWS / (vectors))                                       \
            KERNEL(gemm_block)(4 * ROWS / (vectors), vectors, k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc); \
        for (; i < m; i++) KERNEL(gemm_block)(1, vectors, k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc); \
    } while (0)

static void KERNEL(gemm_small)(long m, int n, int k, const float *a, long lda, const float *b, long ldb, float *c,
                               long ldc) {
    int j = 0;
    for (; j + 4 * LANES <= n; j += 4 * LANES) GEMM_ROWS(4);
    for (; j + 2 * LANES <= n; j += 2 * LANES) GEMM_ROWS(2);
    for (; j + LANES <= n; j += LANES) GEMM_ROWS(1);
    for (; j < n; j++) {  // the last columns, fewer than a vector: the same chains, one by one
        for (long i = 0; i < m; i++) {
            float s = 0;
            for (int p = 0; p < k; p++) s += a[i * lda + p] * b[p * ldb + j];
            c[i * ldc + j] = s;
        }
    }
}
#undef GEMM_ROWS
#undef ROWS
#undef LANES
#undef VEC
