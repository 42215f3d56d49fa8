#include "CKernels.h"

#include <stdlib.h>
#include <string.h>

// Read in place of values outside an image (the convolution's zero padding, a missing start).
static const float ak_zeros[AK_WINOGRAD_MAX_CHANNELS];
// Where the FMA peak loop leaves its result, so that the compiler keeps the loop.
static volatile float ak_sink;
// Channels per step of a border tile's zero-padded copy (16 KiB of stack).
enum { AK_BLOCK = 256 };

#if defined(__x86_64__) || defined(__i386__)
#define KERNEL(name) name##_avx512
#define VECTOR_BYTES 64
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#include "winograd_body.h"
#include "fma_peak_body.h"
#include "gemm_body.h"
#pragma clang attribute pop
#undef KERNEL
#undef VECTOR_BYTES

#define KERNEL(name) name##_avx2
#define VECTOR_BYTES 32
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#include "winograd_body.h"
#include "fma_peak_body.h"
#include "gemm_body.h"
#pragma clang attribute pop
#undef KERNEL
#undef VECTOR_BYTES
#endif

// The baseline: SSE2 on x86-64 (every such CPU has it), the compiler's default vectors elsewhere.
#define KERNEL(name) name##_sse2
#define VECTOR_BYTES 16
#include "winograd_body.h"
#include "fma_peak_body.h"
#include "gemm_body.h"
#undef KERNEL
#undef VECTOR_BYTES

typedef struct {
    const char *name;
    void (*input)(const float *, int, int, int, long, long, long, float *);
    void (*output)(const float *, int, int, int, long, long, long, float *, const float *);
    void (*outputGradient)(const float *, int, int, int, long, long, long, float *);
    void (*filter)(const float *, int, int, float *, int);
    void (*filterGradient)(const float *, int, int, float *, int);
    double (*fmaPeak)(long);
    void (*gemm)(long, int, int, const float *, long, const float *, long, float *, long);
} KernelTable;

#define TABLE(name, isa) \
    {name, winograd_input_##isa, winograd_output_##isa, winograd_output_gradient_##isa, winograd_filter_##isa, \
     winograd_filter_gradient_##isa, fma_peak_##isa, gemm_small_##isa}
#if defined(__x86_64__) || defined(__i386__)
static const KernelTable tables[] = {TABLE("avx512", avx512), TABLE("avx2", avx2), TABLE("sse2", sse2)};
static const int vectorBytes[] = {64, 32, 16};
#else
static const KernelTable tables[] = {TABLE("baseline", sse2)};
static const int vectorBytes[] = {16};
#endif
enum { tableCount = sizeof tables / sizeof tables[0] };

static int supported(int index) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    switch (index) {
    case 0: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    case 1: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return 1;
    }
#else
    return index == 0;
#endif
}

// The table in use, chosen at the first call: the widest the CPU supports, or AUTORATE_KERNELS
// (avx512, avx2, sse2) when set to one it supports. Every thread that races here picks the same.
static const KernelTable *chosen;

static const KernelTable *table(void) {
    const KernelTable *t = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (t) return t;
    int pick = tableCount - 1;
    for (int i = 0; i < tableCount; i++) {
        if (supported(i)) {
            pick = i;
            break;
        }
    }
    const char *want = getenv("AUTORATE_KERNELS");
    for (int i = 0; want && i < tableCount; i++) {
        if (strcmp(want, tables[i].name) == 0 && supported(i)) pick = i;
    }
    __atomic_store_n(&chosen, &tables[pick], __ATOMIC_RELEASE);
    return &tables[pick];
}

const char *ak_kernel_isa(void) { return table()->name; }

int ak_vector_bits(void) { return 8 * vectorBytes[table() - tables]; }

double ak_fma_peak_flops(long iterations) { return table()->fmaPeak(iterations); }

int ak_kernel_force(const char *isa) {
    for (int i = 0; i < tableCount; i++) {
        if (strcmp(isa, tables[i].name) == 0 && supported(i)) {
            __atomic_store_n(&chosen, &tables[i], __ATOMIC_RELEASE);
            return 1;
        }
    }
    return 0;
}

void ak_winograd_input(const float *x, int height, int width, int channels, long first, long count, long plane,
                       float *v) {
    table()->input(x, height, width, channels, first, count, plane, v);
}

void ak_winograd_output(const float *m, int height, int width, int channels, long first, long count, long plane,
                        float *y, const float *initial) {
    table()->output(m, height, width, channels, first, count, plane, y, initial);
}

void ak_winograd_output_gradient(const float *dy, int height, int width, int channels, long first, long count,
                                 long plane, float *z) {
    table()->outputGradient(dy, height, width, channels, first, count, plane, z);
}

void ak_winograd_filter(const float *w, int out, int in, float *u, int transposed) {
    table()->filter(w, out, in, u, transposed);
}

void ak_winograd_filter_gradient(const float *du, int out, int in, float *dw, int accumulate) {
    table()->filterGradient(du, out, in, dw, accumulate);
}

void ak_gemm_small(long m, int n, int k, const float *a, long lda, const float *b, long ldb, float *c, long ldc) {
    table()->gemm(m, n, k, a, lda, b, ldb, c, ldc);
}
