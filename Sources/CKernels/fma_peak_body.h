// The FMA peak loop, compiled once per instruction set by kernels.c (KERNEL and VECTOR_BYTES set
// there): 12 independent accumulators, enough to keep two FMA units with 4-cycle latency busy.
static double KERNEL(fma_peak)(long iterations) {
    typedef float vec __attribute__((vector_size(VECTOR_BYTES)));
    enum { lanes = VECTOR_BYTES / 4, chains = 12 };
    vec acc[chains], a, b;
    for (int i = 0; i < lanes; i++) {
        a[i] = 0.999999f;
        b[i] = 1e-7f;
    }
    for (int c = 0; c < chains; c++) acc[c] = a * (float)(c + 1);
    for (long n = 0; n < iterations; n++) {
#pragma clang loop unroll(full)
        for (int c = 0; c < chains; c++) acc[c] = acc[c] * a + b;
    }
    float sum = 0;
    for (int c = 0; c < chains; c++) {
        for (int i = 0; i < lanes; i++) sum += acc[c][i];
    }
    ak_sink = sum;  // keeps the loop
    return 2.0 * lanes * chains * (double)iterations;
}
