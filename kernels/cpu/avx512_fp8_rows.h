/* cpu/avx512_fp8_rows.h - FP8 (E4M3) rows with block scales against
 * several tokens, the loop shared by the avx512 path (codes widened through
 * f16 bits) and its AVX512-VBMI extra (codes looked up in a table). The
 * including file defines, before including it:
 *   fp8_tabs, fp8_tabs_init(fp8_tabs *)   the constants of its conversion;
 *   fp8_step(tb, v, u[2])                 64 codes (v) into two vectors u,
 *                                         returning a mask of the codes to
 *                                         read as NaN (0 when the vectors
 *                                         already hold NaN for them);
 *   fp8_vec(tb, u, q)                     the q-th (< 4) f32 vector of 16
 *                                         values of a step, each the code's
 *                                         value over FP8_ROWS_UNIT;
 *   FP8_ROWS_COL(s)                       the column (< 64) of slot s of a
 *                                         step (vector s / 16, lane s % 16);
 *   FP8_ROWS_PERMUTED                     (optional) when that order is not
 *                                         the identity: the tokens are then
 *                                         copied into it once per call.
 * It defines static fp8_rows(w, x, n, ldx, y, ldy, r0, r1): rows [r0, r1) of
 * w (FP8, block scales, block_cols a multiple of 64, not transposed)
 * against n tokens; 0 when out of memory (nothing written).
 *
 * Each 64-code step of a row is converted once per FP8_T tokens and
 * multiplied by FP8_ROWS_UNIT x its block's scale (a power of two times the
 * scale: exact), so each product is (w * s) * x, as the scalar path and the
 * widened panels have it; then each of its four f32 vectors meets the
 * tokens in FMAs, two rows at a time so each token load feeds two. Rows go
 * in chunks of about FP8_CHUNK_BYTES that stay in L2 while the token blocks
 * sweep them; permuted tokens are copied FP8_SUPER at a time (bounded
 * scratch whatever the batch). A row holding a NaN code (0x7f / 0xff) gives
 * NaN for every token, as the scalar path's sums do.
 *
 * Against widening each row into an f32 panel first (packed_rows), which
 * every token count took before: on the 2-core Zen 4 with the table
 * lookup, an 18432 x 7168 FP8 matrix at 2 threads went from 22.5 to
 * 5.4-6.2 ms at 2 tokens, 30 to 16-18 ms at 8 and 101 to 56-63 ms at 32
 * (~130 GFLOP/s, 0.6 of the FMA peak from 8 tokens on). */
#ifndef MC_AVX512_FP8_ROWS_H
#define MC_AVX512_FP8_ROWS_H

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#define FP8_CHUNK_BYTES (128u * 1024u)
#define FP8_T 8
#define FP8_SUPER 64

/* Rows o .. o + R - 1 against T tokens (xs: their values in the steps'
 * order, lds apart; x: as given, for the columns past the last step). NC
 * chains per (row, token) keep enough FMAs in flight when R x T is small. */
static inline __attribute__((always_inline)) void
fp8_tile(int R, int T, const mc_mat *w, int o, const fp8_tabs *tb, const float *xs, size_t lds,
         int K64, const float *x, int ldx, float *y, int ldy)
{
    enum { NCMAX = 4 };
    const int NC = R * T <= 4 ? 4 : R * T <= 8 ? 2 : 1;
    int K = w->cols, bc = w->block_cols;
    const unsigned char *p[2];
    const float *srow[2];
    __mmask64 nan[2] = {0, 0};
    for (int r = 0; r < R; r++) {
        p[r] = (const unsigned char *)w->data + (size_t)(o + r) * w->row_stride;
        srow[r] = w->scale + (size_t)((o + r) / w->block_rows) * (size_t)w->scale_cols;
    }
    __m512 acc[2][FP8_T][NCMAX];
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++)
                acc[r][t][c] = _mm512_setzero_ps();
    for (int k = 0, cb = 0; k < K64; cb++) { /* column blocks: one scale per row */
        int kend = k + bc < K64 ? k + bc : K64;
        for (; k < kend; k += 64) {
            __m512i u[2][2];
#pragma GCC unroll 2
            for (int r = 0; r < R; r++) {
                /* the row stream into L2, each line asked for twice (kern.h) */
                _mm_prefetch((const char *)p[r] + k + PF_L2_BYTES, _MM_HINT_T1);
                _mm_prefetch((const char *)p[r] + k + PF_L2_BYTES / 2, _MM_HINT_T1);
                nan[r] |= fp8_step(tb, _mm512_loadu_si512((const void *)(p[r] + k)), u[r]);
            }
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                __m512 wv[2];
#pragma GCC unroll 2
                for (int r = 0; r < R; r++)
                    wv[r] = _mm512_mul_ps(fp8_vec(tb, u[r], q),
                                          _mm512_set1_ps(srow[r][cb] * FP8_ROWS_UNIT));
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    __m512 xv = _mm512_loadu_ps(xs + (size_t)t * lds + k + 16 * q);
#pragma GCC unroll 2
                    for (int r = 0; r < R; r++)
                        acc[r][t][q % NC] = _mm512_fmadd_ps(wv[r], xv, acc[r][t][q % NC]);
                }
            }
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            __m512 a = acc[r][t][0];
#pragma GCC unroll 4
            for (int c = 1; c < NC; c++)
                a = _mm512_add_ps(a, acc[r][t][c]);
            float s = _mm512_reduce_add_ps(a);
            const float *xt = x + (size_t)t * ldx;
            for (int k = K64; k < K; k++)
                s += mc_fp8_e4m3_to_f32(p[r][k]) * srow[r][k / bc] * xt[k];
            y[(size_t)t * ldy + o + r] = nan[r] ? NAN : s;
        }
}

#define FP8_TILE_T(R, T, ...)                                                                       \
    do {                                                                                           \
        switch (T) {                                                                               \
        case 1: fp8_tile(R, 1, __VA_ARGS__); break;                                                \
        case 2: fp8_tile(R, 2, __VA_ARGS__); break;                                                \
        case 3: fp8_tile(R, 3, __VA_ARGS__); break;                                                \
        case 4: fp8_tile(R, 4, __VA_ARGS__); break;                                                \
        case 5: fp8_tile(R, 5, __VA_ARGS__); break;                                                \
        case 6: fp8_tile(R, 6, __VA_ARGS__); break;                                                \
        case 7: fp8_tile(R, 7, __VA_ARGS__); break;                                                \
        default: fp8_tile(R, 8, __VA_ARGS__); break;                                               \
        }                                                                                          \
    } while (0)

static int fp8_rows(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy, int r0,
                    int r1)
{
    int K = w->cols, K64 = K / 64 * 64;
    fp8_tabs tb;
    fp8_tabs_init(&tb);
#ifdef FP8_ROWS_PERMUTED
    int nsb = n < FP8_SUPER ? n : FP8_SUPER;
    float *xp = aligned_alloc(64, (size_t)nsb * K64 * sizeof *xp + 64);
    if (!xp)
        return 0;
    int col[64];
    for (int s = 0; s < 64; s++)
        col[s] = FP8_ROWS_COL(s);
#endif
    int rc = (int)(FP8_CHUNK_BYTES / (K > 0 ? (size_t)K : 1)) & ~1;
    rc = rc < 2 ? 2 : rc;
    for (int s0 = 0; s0 < n; s0 += FP8_SUPER) {
        int ns = n - s0 < FP8_SUPER ? n - s0 : FP8_SUPER;
#ifdef FP8_ROWS_PERMUTED
        for (int t = 0; t < ns; t++) {
            const float *xt = x + (size_t)(s0 + t) * ldx;
            float *dt = xp + (size_t)t * K64;
            for (int k = 0; k < K64; k += 64)
                for (int s = 0; s < 64; s++)
                    dt[k + s] = xt[k + col[s]];
        }
        const float *xs0 = xp;
        size_t lds = (size_t)K64;
#else
        const float *xs0 = x + (size_t)s0 * ldx;
        size_t lds = (size_t)ldx;
#endif
        for (int c0 = r0; c0 < r1; c0 += rc) {
            int c1 = c0 + rc < r1 ? c0 + rc : r1;
            for (int t0 = 0; t0 < ns; t0 += FP8_T) {
                int T = ns - t0 < FP8_T ? ns - t0 : FP8_T;
                const float *xb = xs0 + (size_t)t0 * lds, *xt = x + (size_t)(s0 + t0) * ldx;
                float *yt = y + (size_t)(s0 + t0) * ldy;
                int o = c0;
                for (; o + 2 <= c1; o += 2)
                    FP8_TILE_T(2, T, w, o, &tb, xb, lds, K64, xt, ldx, yt, ldy);
                for (; o < c1; o++)
                    FP8_TILE_T(1, T, w, o, &tb, xb, lds, K64, xt, ldx, yt, ldy);
            }
        }
    }
#ifdef FP8_ROWS_PERMUTED
    free(xp);
#endif
    return 1;
}

#endif
