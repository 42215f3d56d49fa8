#ifndef AUTORATE_CKERNELS_H
#define AUTORATE_CKERNELS_H
// The trainer's C kernels: loops that must use the widest vector unit the CPU has. Each is
// compiled once per instruction set (AVX-512, AVX2+FMA, baseline SSE2) and the variant is chosen
// at the first call from the CPU this process runs on, so one portable binary runs everywhere.
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The instruction set the kernels run with: "avx512", "avx2" or "sse2" ("baseline" off x86).
const char *_Nonnull ak_kernel_isa(void);

/// The vector width of that instruction set in bits (512, 256, 128).
int ak_vector_bits(void);

/// Runs `iterations` rounds of independent multiply-adds in vector registers (no memory traffic)
/// and returns the flops done: timed, the core's floating-point peak for these kernels.
double ak_fma_peak_flops(long iterations);

/// Use the kernels of `isa` from now on, if this CPU supports them; returns 0 (and changes nothing)
/// otherwise. For tests that run every variant.
int ak_kernel_force(const char *_Nonnull isa);

/// Winograd F(2x2, 3x3) for 3x3 convolutions with stride 1 and padding 1 on NHWC images of
/// `height x width x channels`: output tile (i, j) covers output rows 2i, 2i+1 and columns 2j,
/// 2j+1; tiles are numbered image by image, row by row. A transformed block holds 16 planes
/// (one per position of the 4x4 tile), each `[count, channels]`: plane p at `v + p * plane`. A plane
/// stride that is not a multiple of 4 KiB keeps the 16 streams out of each other's cache sets.
/// The largest channel count accepted is AK_WINOGRAD_MAX_CHANNELS.
#define AK_WINOGRAD_MAX_CHANNELS 8192

/// v = B^T d B for the 4x4 input patch (zeros outside the image) of tiles first ..< first + count.
void ak_winograd_input(const float *_Nonnull x, int height, int width, int channels, long first, long count,
                       long plane, float *_Nonnull v);

/// y = A^T m A (each 2x2 output tile, the parts inside the image) for tiles first ..< first + count;
/// with `initial` non-null, y = initial + A^T m A.
void ak_winograd_output(const float *_Nonnull m, int height, int width, int channels, long first, long count,
                        long plane, float *_Nonnull y, const float *_Nullable initial);

/// z = A dy A^T for the 2x2 tiles of `dy` (zeros outside the image): the gradient of the
/// transformed products, whose planes times v's give the weight gradient.
void ak_winograd_output_gradient(const float *_Nonnull dy, int height, int width, int channels, long first,
                                 long count, long plane, float *_Nonnull z);

/// u = G g G^T for each of the `out x in` 3x3 filters of the OHWI weight w `[out, 3, 3, in]`;
/// u holds 16 planes `[out, in]`, or `[in, out]` when `transposed`.
void ak_winograd_filter(const float *_Nonnull w, int out, int in, float *_Nonnull u, int transposed);

/// dw = G^T du G (or dw += it with `accumulate`): du holds 16 planes `[out, in]`, dw is OHWI.
void ak_winograd_filter_gradient(const float *_Nonnull du, int out, int in, float *_Nonnull dw, int accumulate);

/// C[m, n] = A[m, k] B[k, n], row-major with leading dimensions lda, ldb, ldc: for small k and n
/// (channel counts) and large m. Each element is one chain of multiply-adds in k order, so a row's
/// values do not depend on m or on the other rows.
void ak_gemm_small(long m, int n, int k, const float *_Nonnull a, long lda, const float *_Nonnull b, long ldb,
                   float *_Nonnull c, long ldc);

#ifdef __cplusplus
}
#endif
#endif
