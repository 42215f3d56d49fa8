// The Winograd F(2x2, 3x3) kernels, compiled once per instruction set by kernels.c, which defines
// KERNEL(name) to give each copy its own names. The loops run over channels (contiguous in NHWC),
// so each is one vector loop the compiler widens to the target's registers. A tile inside the
// image is read (or written) in place, at fixed offsets from one pointer; a tile on the border
// goes through a small zero-padded copy, `AK_BLOCK` channels at a time.
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].

// o[p * plane + c] = (B^T d B)[p] for the 4x4 patch d at d[a * rows + b * cols + c].
static inline void KERNEL(input_tile)(const float *d, long rows, long cols, int channels, float *o, long plane) {
#pragma clang loop vectorize(assume_safety)
    for (int c = 0; c < channels; c++) {
        float s[16];
        for (int b = 0; b < 4; b++) {  // B^T d: combine rows
            const float *col = d + b * cols + c;
            const float d0 = col[0], d1 = col[rows], d2 = col[2 * rows], d3 = col[3 * rows];
            s[b] = d0 - d2;
            s[4 + b] = d1 + d2;
            s[8 + b] = d2 - d1;
            s[12 + b] = d1 - d3;
        }
        for (int a = 0; a < 4; a++) {  // (B^T d) B: combine columns
            const float *r = s + 4 * a;
            o[(4 * a + 0) * plane + c] = r[0] - r[2];
            o[(4 * a + 1) * plane + c] = r[1] + r[2];
            o[(4 * a + 2) * plane + c] = r[2] - r[1];
            o[(4 * a + 3) * plane + c] = r[1] - r[3];
        }
    }
}

static void KERNEL(winograd_input)(const float *x, int height, int width, int channels, long first, long count,
                                   long plane, float *v) {
    const long tilesWide = (width + 1) / 2, perImage = (long)((height + 1) / 2) * tilesWide;
    const long rowLength = (long)width * channels;
    for (long t = 0; t < count; t++) {
        const long tile = first + t, image = tile / perImage, inImage = tile % perImage;
        const int row0 = (int)(inImage / tilesWide) * 2 - 1, col0 = (int)(inImage % tilesWide) * 2 - 1;
        const float *base = x + image * height * rowLength;
        if (row0 >= 0 && col0 >= 0 && row0 + 4 <= height && col0 + 4 <= width) {
            KERNEL(input_tile)(base + row0 * rowLength + (long)col0 * channels, rowLength, channels, channels,
                               v + t * channels, plane);
            continue;
        }
        float patch[16 * AK_BLOCK];
        for (int c0 = 0; c0 < channels; c0 += AK_BLOCK) {
            const int n = channels - c0 < AK_BLOCK ? channels - c0 : AK_BLOCK;
            for (int a = 0; a < 4; a++) {
                for (int b = 0; b < 4; b++) {
                    const int y = row0 + a, xx = col0 + b;
                    float *to = patch + (4 * a + b) * n;
                    if (y >= 0 && y < height && xx >= 0 && xx < width) {
                        memcpy(to, base + y * rowLength + (long)xx * channels + c0, sizeof(float) * n);
                    } else {
                        memset(to, 0, sizeof(float) * n);
                    }
                }
            }
            KERNEL(input_tile)(patch, 4L * n, n, n, v + t * channels + c0, plane);
        }
    }
}

// The 2x2 tile A^T m A (plus start) into y[a * rows + b * cols + c]; m's planes at m + p * plane.
static inline void KERNEL(output_tile)(const float *m, long plane, int channels, float *y, long rows, long cols,
                                       const float *start, long startRows, long startCols) {
#pragma clang loop vectorize(assume_safety)
    for (int c = 0; c < channels; c++) {
        float r[8];
        for (int b = 0; b < 4; b++) {  // A^T m: combine rows
            const float m0 = m[b * plane + c], m1 = m[(4 + b) * plane + c];
            const float m2 = m[(8 + b) * plane + c], m3 = m[(12 + b) * plane + c];
            r[b] = m0 + m1 + m2;
            r[4 + b] = m1 - m2 - m3;
        }
        for (int a = 0; a < 2; a++) {  // (A^T m) A: combine columns
            const float *s = r + 4 * a;
            y[a * rows + c] = start[a * startRows + c] + (s[0] + s[1] + s[2]);
            y[a * rows + cols + c] = start[a * startRows + startCols + c] + (s[1] - s[2] - s[3]);
        }
    }
}

static void KERNEL(winograd_output)(const float *m, int height, int width, int channels, long first, long count,
                                    long plane, float *y, const float *initial) {
    const long tilesWide = (width + 1) / 2, perImage = (long)((height + 1) / 2) * tilesWide;
    const long rowLength = (long)width * channels;
    for (long t = 0; t < count; t++) {
        const long tile = first + t, image = tile / perImage, inImage = tile % perImage;
        const int row0 = (int)(inImage / tilesWide) * 2, col0 = (int)(inImage % tilesWide) * 2;
        const long at = image * height * rowLength + row0 * rowLength + (long)col0 * channels;
        if (row0 + 2 <= height && col0 + 2 <= width) {
            if (initial) {
                KERNEL(output_tile)(m + t * channels, plane, channels, y + at, rowLength, channels, initial + at,
                                    rowLength, channels);
            } else {
                KERNEL(output_tile)(m + t * channels, plane, channels, y + at, rowLength, channels, ak_zeros, 0, 0);
            }
            continue;
        }
        float tile4[4 * AK_BLOCK];  // the whole 2x2 tile; the parts inside the image are copied out
        for (int c0 = 0; c0 < channels; c0 += AK_BLOCK) {
            const int n = channels - c0 < AK_BLOCK ? channels - c0 : AK_BLOCK;
            KERNEL(output_tile)(m + t * channels + c0, plane, n, tile4, 2L * n, n, ak_zeros, 0, 0);
            for (int a = 0; a < 2; a++) {
                for (int b = 0; b < 2; b++) {
                    if (row0 + a >= height || col0 + b >= width) continue;
                    float *to = y + at + a * rowLength + (long)b * channels + c0;
                    const float *from = tile4 + (2 * a + b) * n;
                    for (int c = 0; c < n; c++) to[c] = (initial ? initial[to - y + c] : 0.0f) + from[c];
                }
            }
        }
    }
}

static void KERNEL(winograd_output_gradient)(const float *dy, int height, int width, int channels, long first,
                                             long count, long plane, float *z) {
    const long tilesWide = (width + 1) / 2, perImage = (long)((height + 1) / 2) * tilesWide;
    const long rowLength = (long)width * channels;
    for (long t = 0; t < count; t++) {
        const long tile = first + t, image = tile / perImage, inImage = tile % perImage;
        const int row0 = (int)(inImage / tilesWide) * 2, col0 = (int)(inImage % tilesWide) * 2;
        const float *base = dy + image * height * rowLength + row0 * rowLength + (long)col0 * channels;
        // rows and columns past the image read zeros: a zero stride onto ak_zeros
        const int down = row0 + 1 < height, right = col0 + 1 < width;
        const int inside = down && right;
        const float *p00 = base, *p01 = right ? base + channels : ak_zeros;
        const float *p10 = down ? base + rowLength : ak_zeros, *p11 = inside ? base + rowLength + channels : ak_zeros;
        float *o = z + t * channels;
        // ak_zeros holds AK_WINOGRAD_MAX_CHANNELS zeros, enough for any channel count accepted
#pragma clang loop vectorize(assume_safety)
        for (int c = 0; c < channels; c++) {
            const float d00 = p00[c], d01 = p01[c], d10 = p10[c], d11 = p11[c];
            // A dy: rows d0, d0 + d1, d0 - d1, -d1
            const float u[8] = {d00, d01, d00 + d10, d01 + d11, d00 - d10, d01 - d11, -d10, -d11};
            for (int a = 0; a < 4; a++) {  // (A dy) A^T: the same on columns
                const float e0 = u[2 * a], e1 = u[2 * a + 1];
                o[(4 * a + 0) * plane + c] = e0;
                o[(4 * a + 1) * plane + c] = e0 + e1;
                o[(4 * a + 2) * plane + c] = e0 - e1;
                o[(4 * a + 3) * plane + c] = -e1;
            }
        }
    }
}

static void KERNEL(winograd_filter)(const float *w, int out, int in, float *u, int transposed) {
    const long plane = (long)out * in;
    const long perIn = transposed ? out : 1, perOut = transposed ? 1 : in;  // u's strides
    for (int o = 0; o < out; o++) {
        const float *g = w + (long)o * 9 * in;
        float *uo = u + (long)o * perOut;
#pragma clang loop vectorize(assume_safety)
        for (int i = 0; i < in; i++) {
            float r[12];
            for (int b = 0; b < 3; b++) {  // G g: combine rows
                const float g0 = g[(0 + b) * in + i], g1 = g[(3 + b) * in + i], g2 = g[(6 + b) * in + i];
                r[b] = g0;
                r[3 + b] = 0.5f * (g0 + g1 + g2);
                r[6 + b] = 0.5f * (g0 - g1 + g2);
                r[9 + b] = g2;
            }
            float *to = uo + i * perIn;
            for (int a = 0; a < 4; a++) {  // (G g) G^T: combine columns
                const float *s = r + 3 * a;
                to[(4 * a + 0) * plane] = s[0];
                to[(4 * a + 1) * plane] = 0.5f * (s[0] + s[1] + s[2]);
                to[(4 * a + 2) * plane] = 0.5f * (s[0] - s[1] + s[2]);
                to[(4 * a + 3) * plane] = s[2];
            }
        }
    }
}

static void KERNEL(winograd_filter_gradient)(const float *du, int out, int in, float *dw, int accumulate) {
    const long plane = (long)out * in;
    for (int o = 0; o < out; o++) {
        const float *d = du + (long)o * in;
        float *g = dw + (long)o * 9 * in;
#pragma clang loop vectorize(assume_safety)
        for (int i = 0; i < in; i++) {
            float r[12];
            for (int b = 0; b < 4; b++) {  // G^T du: combine rows
                const float d0 = d[b * plane + i], d1 = d[(4 + b) * plane + i];
                const float d2 = d[(8 + b) * plane + i], d3 = d[(12 + b) * plane + i];
                r[b] = d0 + 0.5f * (d1 + d2);
                r[4 + b] = 0.5f * (d1 - d2);
                r[8 + b] = 0.5f * (d1 + d2) + d3;
            }
            for (int a = 0; a < 3; a++) {  // (G^T du) G: combine columns
                const float *s = r + 4 * a;
                const float e[3] = {s[0] + 0.5f * (s[1] + s[2]), 0.5f * (s[1] - s[2]), 0.5f * (s[1] + s[2]) + s[3]};
                for (int b = 0; b < 3; b++) {
                    float *to = g + (3 * a + b) * in + i;
                    *to = accumulate ? *to + e[b] : e[b];
                }
            }
        }
    }
}
