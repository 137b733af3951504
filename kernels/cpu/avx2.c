/* avx2.c - AVX2 path (AVX2, FMA, F16C). Compiled with those -m flags; only
 * called when the CPU has them.
 *
 * The same structure as avx512.c with 8-wide vectors: a tile of 4 weight
 * rows x up to 2 tokens (8 ymm accumulators), an f32 panel for several
 * tokens or scaled weights, scalar tails. Block formats: up to 4 tokens
 * per pass over a row (each block unpacked once for them, row panels of
 * ~128 KiB swept once per group of 4 tokens); from 5 tokens on, groups of
 * 8 tokens repacked once per product (pack_qact, kern_avx2.h) against row
 * panels (Q4_K / Q5_K unpacked into scratch), the 8 tokens' block sums
 * reduced into one vector with a token per lane. Q8_0: vpmaddubsw on |w|
 * and sign(x, w), then vpmaddwd with ones. Q4_K / Q5_K: vpmaddubsw on the
 * values and int8 activations, vpmaddwd with the sub-block scale. A
 * token's arithmetic is the same in every pass. */
#include "kern.h"
#include "kern_avx2.h"
#include "kern_q4k.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#define AI static inline __attribute__((always_inline))

/* ---- widening ---- */

AI __m256 fp8x8(__m128i v)
{
    __m256i b = _mm256_cvtepu8_epi32(v);
    __m256i mag = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7f)), 20);
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
    __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(mag), _mm256_set1_ps(0x1p120f));
    __m256 nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7f << 20)));
    f = _mm256_blendv_ps(f, _mm256_set1_ps(NAN), nan);
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(f), sign));
}

AI __m256 ld8(int DT, const unsigned char *p, size_t i)
{
    switch (DT) {
    case MC_DT_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * i))), 16));
    case MC_DT_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
    case MC_DT_F8_E4M3:
        return fp8x8(_mm_loadl_epi64((const __m128i *)(p + i)));
    default:
        return _mm256_loadu_ps((const float *)(const void *)(p + 4 * i));
    }
}

AI float ld1(int DT, const unsigned char *p, size_t i)
{
    uint16_t h;
    float f;
    switch (DT) {
    case MC_DT_BF16:
        memcpy(&h, p + 2 * i, 2);
        return mc_bf16_to_f32(h);
    case MC_DT_F16:
        memcpy(&h, p + 2 * i, 2);
        return mc_kf16(h);
    case MC_DT_F8_E4M3:
        return mc_fp8_e4m3_to_f32(p[i]);
    default:
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
}

AI void widen_t(int DT, const unsigned char *p, int n, float *dst)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, ld8(DT, p, (size_t)i));
    for (; i < n; i++)
        dst[i] = ld1(DT, p, (size_t)i);
}

static void widen(mc_dtype dt, const void *src, int n, float *dst)
{
    const unsigned char *p = src;
    switch (dt) {
    case MC_DT_F32:
        widen_t(MC_DT_F32, p, n, dst);
        break;
    case MC_DT_BF16:
        widen_t(MC_DT_BF16, p, n, dst);
        break;
    case MC_DT_F16:
        widen_t(MC_DT_F16, p, n, dst);
        break;
    case MC_DT_F8_E4M3:
        widen_t(MC_DT_F8_E4M3, p, n, dst);
        break;
    default:
        memset(dst, 0, (size_t)n * sizeof *dst);
        break;
    }
}

/* ---- element-type products ---- */

AI void tile(int DT, int R, int T, const unsigned char *const *wr, const float *x, int ldx, int K,
             float *y, int ldy)
{
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[2];
#pragma GCC unroll 2
        for (int t = 0; t < T; t++)
            xv[t] = _mm256_loadu_ps(x + (size_t)t * ldx + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m256 wv = ld8(DT, wr[r], (size_t)k);
#pragma GCC unroll 2
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) {
            float s = hsum256(acc[r][t]);
            for (int kk = k; kk < K; kk++)
                s += ld1(DT, wr[r], (size_t)kk) * x[(size_t)t * ldx + kk];
            y[(size_t)t * ldy + r] = s;
        }
}

#define TILE_T(DT, R, wr, x, ldx, K, y, ldy, T)                                                    \
    do {                                                                                           \
        if ((T) == 1)                                                                              \
            tile(DT, R, 1, wr, x, ldx, K, y, ldy);                                                 \
        else                                                                                       \
            tile(DT, R, 2, wr, x, ldx, K, y, ldy);                                                 \
    } while (0)

AI void stream_rows(int DT, const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy,
                    int r0, int r1)
{
    size_t es = mc_dtype_size((mc_dtype)DT);
    int K = w->cols;
    int o = r0;
    if (n == 1) { /* one token: one row (one memory stream) at a time, 4 accumulators */
        for (; o < r1; o++) {
            const unsigned char *p = (const unsigned char *)w->data + (size_t)o * w->row_stride * es;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int k = 0;
            for (; k + 32 <= K; k += 32) {
                a0 = _mm256_fmadd_ps(ld8(DT, p, (size_t)k), _mm256_loadu_ps(x + k), a0);
                a1 = _mm256_fmadd_ps(ld8(DT, p, (size_t)k + 8), _mm256_loadu_ps(x + k + 8), a1);
                a2 = _mm256_fmadd_ps(ld8(DT, p, (size_t)k + 16), _mm256_loadu_ps(x + k + 16), a2);
                a3 = _mm256_fmadd_ps(ld8(DT, p, (size_t)k + 24), _mm256_loadu_ps(x + k + 24), a3);
            }
            for (; k + 8 <= K; k += 8)
                a0 = _mm256_fmadd_ps(ld8(DT, p, (size_t)k), _mm256_loadu_ps(x + k), a0);
            float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            for (; k < K; k++)
                s += ld1(DT, p, (size_t)k) * x[k];
            y[o] = s;
        }
        return;
    }
    for (; o + 4 <= r1; o += 4) {
        const unsigned char *wr[4];
        for (int r = 0; r < 4; r++)
            wr[r] = (const unsigned char *)w->data + (size_t)(o + r) * w->row_stride * es;
        for (int t0 = 0; t0 < n; t0 += 2)
            TILE_T(DT, 4, wr, x + (size_t)t0 * ldx, ldx, K, y + (size_t)t0 * ldy + o, ldy, n - t0);
    }
    for (; o < r1; o++) {
        const unsigned char *wr[1] = {(const unsigned char *)w->data + (size_t)o * w->row_stride * es};
        for (int t0 = 0; t0 < n; t0 += 2)
            TILE_T(DT, 1, wr, x + (size_t)t0 * ldx, ldx, K, y + (size_t)t0 * ldy + o, ldy, n - t0);
    }
}

static void widen_row(const mc_mat *w, int o, float *dst)
{
    size_t es = mc_dtype_size(w->dtype);
    widen(w->dtype, (const unsigned char *)w->data + (size_t)o * w->row_stride * es, w->cols, dst);
    if (w->scale) {
        const float *srow = w->scale + (size_t)(o / w->block_rows) * (size_t)w->scale_cols;
        for (int c = 0; c < w->cols; c += w->block_cols) {
            int len = w->cols - c < w->block_cols ? w->cols - c : w->block_cols;
            __m256 s = _mm256_set1_ps(srow[c / w->block_cols]);
            int i = 0;
            for (; i + 8 <= len; i += 8)
                _mm256_storeu_ps(dst + c + i, _mm256_mul_ps(_mm256_loadu_ps(dst + c + i), s));
            for (; i < len; i++)
                dst[c + i] *= srow[c / w->block_cols];
        }
    }
}

#define PACK_MIN_TOKENS 4

static void packed_rows(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy, int r0,
                        int r1)
{
    int K = w->cols;
    size_t kp = ((size_t)K + 7) & ~(size_t)7;
    float *panel = aligned_alloc(32, 4 * kp * sizeof(float));
    if (!panel) {
        mc_kops_scalar.rows_f(w, x, n, ldx, y, ldy, r0, r1);
        return;
    }
    int tb = (int)((384u * 1024u) / ((size_t)K * 4));
    tb = tb < 2 ? 2 : tb & ~1;
    for (int t0b = 0; t0b < n; t0b += tb) {
        int tn = n - t0b < tb ? n - t0b : tb;
        const float *xb = x + (size_t)t0b * ldx;
        for (int o = r0; o < r1; o += 4) {
            int R = r1 - o < 4 ? r1 - o : 4;
            for (int r = 0; r < R; r++)
                widen_row(w, o + r, panel + (size_t)r * kp);
            const unsigned char *wr[4];
            for (int r = 0; r < 4; r++)
                wr[r] = (const unsigned char *)(panel + (size_t)(r < R ? r : 0) * kp);
            for (int t0 = 0; t0 < tn; t0 += 2) {
                float *yt = y + (size_t)(t0b + t0) * ldy + o;
                const float *xt = xb + (size_t)t0 * ldx;
                if (R == 4) {
                    TILE_T(MC_DT_F32, 4, wr, xt, ldx, K, yt, ldy, tn - t0);
                } else {
                    for (int r = 0; r < R; r++)
                        TILE_T(MC_DT_F32, 1, (wr + r), xt, ldx, K, yt + r, ldy, tn - t0);
                }
            }
        }
    }
    free(panel);
}

static void rows_f(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy, int r0,
                   int r1)
{
    if (!w->scale && n < PACK_MIN_TOKENS) {
        switch (w->dtype) {
        case MC_DT_F32:
            stream_rows(MC_DT_F32, w, x, n, ldx, y, ldy, r0, r1);
            return;
        case MC_DT_BF16:
            stream_rows(MC_DT_BF16, w, x, n, ldx, y, ldy, r0, r1);
            return;
        case MC_DT_F16:
            stream_rows(MC_DT_F16, w, x, n, ldx, y, ldy, r0, r1);
            return;
        case MC_DT_F8_E4M3:
            stream_rows(MC_DT_F8_E4M3, w, x, n, ldx, y, ldy, r0, r1);
            return;
        default:
            break;
        }
    }
    packed_rows(w, x, n, ldx, y, ldy, r0, r1);
}

/* ---- BF16 rows against 4 or more tokens, read as stored ----
 * As the avx512 path's (avx512.c): a 256-bit load of 16 bf16 weights holds
 * weights 2i and 2i + 1 in the halves of 32-bit lane i; a shift left by 16
 * and a mask of the high halves give their f32 (exact), and the tokens are
 * repacked once per product with each 16 columns split into their 8 even
 * and 8 odd values (zeros past K). Tiles of 4 rows x 2 tokens. On the
 * 2-core Zen 4 with MC_KERNELS=avx2, BF16 GGUF of the 4-layer Qwen3-30B-A3B
 * shape, against the f32 panels: prefill of 512 tokens 194.1 / 190.0 /
 * 195.6 -> 215.9 / 210.0 / 231.4 tok/s, decode at batch 8 48.0 / 45.8 /
 * 51.2 -> 64.8 / 65.4 / 66.5 tok/s. */

static size_t bf16_k16(const mc_mat *w) { return ((size_t)w->cols + 15) / 16 * 16; }

static size_t pack_f_bytes(const mc_mat *w, int n) { return mc_bf16_direct_bytes(w, n, 16); }

/* Tokens [16 tt0, 16 tt1) (and < n): token t at t * k16 floats, per 16
 * columns c the 8 values c + 2i, then the 8 values c + 2i + 1. */
static void pack_f(const mc_mat *w, const float *x, int n, int ldx, void *dst, int tt0, int tt1)
{
    int K = w->cols;
    size_t k16 = bf16_k16(w);
    int t1 = tt1 * MC_FPACK_TOKENS < n ? tt1 * MC_FPACK_TOKENS : n;
    for (int t = tt0 * MC_FPACK_TOKENS; t < t1; t++) {
        const float *xt = x + (size_t)t * ldx;
        float *d = (float *)dst + (size_t)t * k16;
        int c = 0;
        for (; c + 16 <= K; c += 16) {
            __m256 a = _mm256_loadu_ps(xt + c), b = _mm256_loadu_ps(xt + c + 8);
            /* per 128 bits [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs reordered */
            __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
            __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
            _mm256_store_ps(d + c, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
            _mm256_store_ps(d + c + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8)));
        }
        if (c < K)
            for (int i = 0; i < 8; i++) {
                d[c + i] = c + 2 * i < K ? xt[c + 2 * i] : 0.0f;
                d[c + 8 + i] = c + 2 * i + 1 < K ? xt[c + 2 * i + 1] : 0.0f;
            }
    }
}

/* 4 stored BF16 rows (wr; the first R stored into y) x T (1 or 2) tokens of
 * the repack (xp, k16 floats apart). */
AI void bf16_tile(int T, const uint16_t *const *wr, int R, const float *xp, size_t k16, int K,
                  float *y, int ldy)
{
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    for (int c = 0; c < (int)k16; c += 16) {
        __m256 xe[2], xo[2];
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) {
            xe[t] = _mm256_load_ps(xp + (size_t)t * k16 + c);
            xo[t] = _mm256_load_ps(xp + (size_t)t * k16 + c + 8);
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m256i v;
            if (c + 16 <= K) {
                v = _mm256_loadu_si256((const __m256i *)(wr[r] + c));
            } else { /* the row's last partial chunk: nothing past the row is read */
                uint16_t tail[16] = {0};
                memcpy(tail, wr[r] + c, (size_t)(K - c) * sizeof *tail);
                v = _mm256_loadu_si256((const __m256i *)tail);
            }
            __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
#pragma GCC unroll 2
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm256_fmadd_ps(wo, xo[t], _mm256_fmadd_ps(we, xe[t], acc[r][t]));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++)
            if (r < R)
                y[(size_t)t * ldy + r] = hsum256(acc[r][t]);
}

static void bf16_tile_t(int T, const uint16_t *const *wr, int R, const float *xp, size_t k16,
                        int K, float *y, int ldy)
{
    if (T >= 2)
        bf16_tile(2, wr, R, xp, k16, K, y, ldy);
    else
        bf16_tile(1, wr, R, xp, k16, K, y, ldy);
}

static void rows_bf16_direct(const mc_mat *w, const void *pack, const float *x, int n, int ldx,
                             float *y, int ldy, int r0, int r1)
{
    (void)x;
    (void)ldx;
    mc_bf16_direct_rows(w, pack, bf16_k16(w), n, 2, bf16_tile_t, y, ldy, r0, r1);
}

/* ---- Q8_0 ---- */

/* Q8_0 products add each block's 32 integer products exactly (S), then
 * acc_j += (dw dx) S with one rounding, where j = b mod 8 picks one of 8
 * accumulators; y = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) +
 * (acc3 + acc7)) (hsum256's order). A token's arithmetic is the same
 * alone (q8_0_row: 8 blocks' sums a vector, a block a lane) and in a
 * token group (q8_0_tokn, q8_0_tok8q: a token a lane, a block at a time),
 * so its bits do not depend on the batch. */

/* Byte offsets of 8 consecutive Q8_0 blocks (their fp16 scales). */
#define Q8_0_BLK8_IDX                                                                              \
    _mm256_setr_epi32(0, 34, 68, 102, 136, 170, 204, 238)

/* The scales of blocks blk, blk + 1, .. (n of 8; the others 0) as f32. */
AI __m256 q8_0_dw8(const unsigned char *blk, int n)
{
    __m256i g;
    if (n == 8) {
        g = _mm256_i32gather_epi32((const int *)blk, Q8_0_BLK8_IDX, 1);
    } else {
        g = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)blk, Q8_0_BLK8_IDX,
                                        lanes_below(n), 1);
    }
    /* the low 16 bits of each lane, in order, as 8 halves */
    g = _mm256_packus_epi32(_mm256_and_si256(g, _mm256_set1_epi32(0xffff)), _mm256_setzero_si256());
    g = _mm256_permute4x64_epi64(g, 0x08);
    return _mm256_cvtph_ps(_mm256_castsi256_si128(g));
}

/* One Q8_0 row against T tokens (xq, xd: the first token's values), 8
 * blocks at a time: per block |w| and sign(x, w) by vpmaddubsw and
 * vpmaddwd with ones, the 8 blocks' lanes added into one vector of block
 * sums (hsum8x8_epi32, exact), then one FMA with the 8 scales dw dx into
 * the token's accumulator lanes (lane j: blocks j mod 8). Decode (T 1)
 * prefetches the row stream PF_BYTES ahead. */
AI void q8_0_row(int T, const unsigned char *row, const int8_t *xq, const float *xd, int kp, int nb,
                 float *y, int ldy)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int b0 = 0; b0 < nb; b0 += 8) {
        const unsigned char *blk = row + (size_t)b0 * sizeof(mc_block_q8_0);
        int n = nb - b0 < 8 ? nb - b0 : 8;
        if (T == 1) /* 272 bytes: 5 lines */
#pragma GCC unroll 5
            for (int l = 0; l < 5; l++)
                _mm_prefetch((const char *)blk + PF_BYTES + 64 * l, _MM_HINT_T0);
        __m256 dw = q8_0_dw8(blk, n);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const int8_t *x = xq + (size_t)t * kp + (size_t)b0 * MC_QK8_0;
            __m256i s[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                if (j < n) {
                    __m256i wq = _mm256_loadu_si256((const __m256i *)(blk + j * sizeof(mc_block_q8_0) + 2));
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(x + j * MC_QK8_0));
                    s[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(xv, wq)),
                                             ones);
                } else {
                    s[j] = _mm256_setzero_si256();
                }
            }
            __m256 sc = _mm256_mul_ps(dw, load8_ps(xd + (size_t)t * nb + b0, n));
            acc[t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(hsum8x8_epi32(s)), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        y[(size_t)t * ldy] = hsum256(acc[t]);
}

/* One Q8_0 row against the first NT (2 or 4) tokens of a product of 2..4
 * tokens (tok8_rec with one chunk: the tokens' values per block, their
 * scales): q8_0_row's arithmetic with a token per lane (the NT tokens'
 * int32 sums reduced by vphaddd, block b into accumulator b mod 8); the
 * nt tokens kept go to y[t * ldy]. */
AI void q8_0_tokn(int NT, const unsigned char *row, int nb, const void *pack, int g, float *y,
                  int ldy, int nt)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        acc[j] = _mm256_setzero_ps();
    for (int b0 = 0; b0 < nb; b0 += 8) {
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            int b = b0 + j;
            if (b >= nb)
                break;
            const unsigned char *blk = row + (size_t)b * sizeof(mc_block_q8_0);
            const unsigned char *r = tok8_rec(pack, 1, 0, nb, g, b);
            uint16_t h;
            memcpy(&h, blk, 2);
            __m256i wq = _mm256_loadu_si256((const __m256i *)(blk + 2));
            __m256i aw = _mm256_abs_epi8(wq);
            __m256i s[4];
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++)
                s[t] = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_load_si256((const __m256i *)(r + 32 * t)), wq)),
                    ones);
            /* lanes 0..NT-1 */
            __m256i q = _mm256_hadd_epi32(s[0], s[1]);
            q = _mm256_hadd_epi32(q, NT == 4 ? _mm256_hadd_epi32(s[2], s[3]) : q);
            __m256i st = _mm256_zextsi128_si256(
                _mm_add_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)));
            __m256 dx = _mm256_load_ps((const float *)(r + 256));
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h)), dx),
                                     _mm256_cvtepi32_ps(st), acc[j]);
        }
    }
    store_tokens(sum8_ps(acc), y, ldy, nt);
}

/* Q8_0 products of TOK8_MIN tokens or more: per group g and block b a
 * record of Q8Q_REC bytes, the values in quads and their magnitudes
 * (x[k][t][i], ax[k][t][i] = |x|: token t's value 4k + i), then dx[8]
 * (kern_avx2.h's records otherwise). */
#define Q8Q_REC (512 + 32)

/* Whether a Q8_0 product of n tokens takes the quads (its pack's layout and its kernel). */
AI int q8_0_quads(int n) { return n >= TOK8_MIN; }

/* R (1 or 2) Q8_0 rows against token group g of a product of TOK8_MIN
 * tokens or more (records of Q8Q_REC bytes): per block and quad k each
 * row's 4 weights broadcast to every lane, vpmaddubsw of |x| and
 * sign(w, x) (= |x| * (w with x's sign): x w, exact) and vpmaddwd with
 * ones, so lane t adds token t's products with no reduction across lanes,
 * and two rows share each load of the values; then the same f32 step as
 * q8_0_tokn and q8_0_row (the same integer block sums, the same bits).
 * One thread, 768 x 2048 rows x 64 tokens from cache on the 2-core Zen 3,
 * the pack included: 83 GOP/s with q8_0_tokn's 8 lanes reduced per block
 * -> 105. The nt tokens kept go to y[q + t * ldy]. */
AI void q8_0_tok8q(int R, const unsigned char *const *rows, int nb, const void *pack, int g,
                   float *y, int ldy, int nt)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[2][8];
#pragma GCC unroll 2
    for (int q = 0; q < R; q++)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            acc[q][j] = _mm256_setzero_ps();
    for (int b0 = 0; b0 < nb; b0 += 8) {
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            int b = b0 + j;
            if (b >= nb)
                break;
            const unsigned char *r = (const unsigned char *)pack + ((size_t)g * nb + b) * Q8Q_REC;
            __m256i s[2][2];
#pragma GCC unroll 2
            for (int q = 0; q < R; q++)
                s[q][0] = s[q][1] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                __m256i x = _mm256_load_si256((const __m256i *)(r + 32 * k));
                __m256i ax = _mm256_load_si256((const __m256i *)(r + 256 + 32 * k));
#pragma GCC unroll 2
                for (int q = 0; q < R; q++) {
                    int32_t w4;
                    memcpy(&w4, rows[q] + (size_t)b * sizeof(mc_block_q8_0) + 2 + 4 * k, 4);
                    __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_set1_epi32(w4), x));
                    s[q][k & 1] = _mm256_add_epi32(s[q][k & 1], _mm256_madd_epi16(p, ones));
                }
            }
            __m256 dx = _mm256_load_ps((const float *)(r + 512));
#pragma GCC unroll 2
            for (int q = 0; q < R; q++) {
                uint16_t h;
                memcpy(&h, rows[q] + (size_t)b * sizeof(mc_block_q8_0), 2);
                acc[q][j] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h)), dx),
                                            _mm256_cvtepi32_ps(_mm256_add_epi32(s[q][0], s[q][1])),
                                            acc[q][j]);
            }
        }
    }
#pragma GCC unroll 2
    for (int q = 0; q < R; q++)
        store_tokens(sum8_ps(acc[q]), y + q, ldy, nt);
}

/* Rows of about Q_PANEL_BYTES of weights (kept in L2) swept once per group
 * of 4 tokens (their activations in L1); decode streams its rows once. */
#define Q_PANEL_BYTES (128 * 1024)

AI int panel_rows(size_t row_bytes)
{
    size_t rb = Q_PANEL_BYTES / (row_bytes ? row_bytes : 1);
    return rb < 4 ? 4 : rb > 4096 ? 4096 : (int)rb;
}

/* ---- Q4_K and Q5_K ---- */

/* vpshufb indices: every 16-bit lane word j of the 8 scales as words (in
 * both 128-bit halves). */
static const uint8_t q4k_sidx[8][32] __attribute__((aligned(32))) = {
#define Q4K_W(j) {2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1,            \
                  2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1,            \
                  2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1,            \
                  2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1}
    Q4K_W(0), Q4K_W(1), Q4K_W(2), Q4K_W(3), Q4K_W(4), Q4K_W(5), Q4K_W(6), Q4K_W(7)
#undef Q4K_W
};

/* Chunk c of a Q4_K / Q5_K block (32 bytes of nibbles at qs): values
 * 64c..64c+31 (lo) and 64c+32..64c+63 (hi) as bytes; Q5_K (five): their
 * fifth bits from bits 0 and 1 of *hb's bytes, then *hb shifted on for the
 * next chunk. */
AI void q45_chunk(int five, const unsigned char *qs, __m256i *hb, __m256i *lo, __m256i *hi)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), m16 = _mm256_set1_epi8(16);
    __m256i q = _mm256_loadu_si256((const __m256i *)qs);
    *lo = _mm256_and_si256(q, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    if (five) { /* 16-bit shifts: what crosses from the next byte lands above bit 4 */
        *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_slli_epi16(*hb, 4), m16));
        *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_slli_epi16(*hb, 3), m16));
        *hb = _mm256_srli_epi16(*hb, 2);
    }
}

/* One Q4_K (five 0) or Q5_K (five 1: each value's fifth bit, qh, added as
 * 16; 0..31 x int8 pairs stay within vpmaddubsw's int16) row against T
 * tokens (xq, xd, bs: the first token's values). Per block the scales and
 * mins (in registers, kern_q4k.h) and the 8 vectors of values are unpacked
 * once for all T tokens; per token vpmaddubsw and vpmaddwd with the
 * sub-block scale into int32 lanes, added to S (exact); M = sum_j m_j X_j
 * (vpmaddwd of the mins and the per-32 activation sums); then two f32
 * steps acc += (d dx) S, macc += (dmin dx) M, each rounded once (one
 * 2-lane FMA), and y = acc - macc: a token's arithmetic is the same whatever T, and the
 * same as the token-group kernel's (q45_tok8). Decode (T 1) prefetches the
 * row stream PF_BYTES ahead. */
AI void q45_k_row(int T, int five, const unsigned char *row, const int8_t *xq, const float *xd,
                  const int16_t *bs, int kp, int nb, float *y, int ldy)
{
    const size_t bbytes = five ? sizeof(mc_block_q5_k) : sizeof(mc_block_q4_k);
    __m128 acc[4]; /* lanes 0, 1: acc, macc */
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        acc[t] = _mm_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const unsigned char *blk = row + (size_t)b * bbytes;
        if (T == 1) /* decode: the row stream */
            q4_k_prefetch_block(blk);
        __m128i sm = q4_k_scales(blk + 4); /* bytes 0..7 the scales, 8..15 the mins */
        __m256i s2 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        /* Q5_K: the fifth bits of chunk c in bits 0 and 1 of every byte (shifted on per chunk) */
        __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        const unsigned char *qs = blk + (five ? 48 : 16);
        __m256i sumi[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            sumi[t] = _mm256_setzero_si256();
        /* not unrolled: unrolled, GCC re-associated the int32 sums over the four
         * chunks and spilled the partial products to the stack */
#pragma GCC unroll 1
        for (int c = 0; c < 4; c++) {
            __m256i lo, hi;
            q45_chunk(five, qs + 32 * c, &hb, &lo, &hi);
            __m256i slo = _mm256_shuffle_epi8(s2, _mm256_load_si256((const __m256i *)q4k_sidx[2 * c]));
            __m256i shi = _mm256_shuffle_epi8(s2, _mm256_load_si256((const __m256i *)q4k_sidx[2 * c + 1]));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const int8_t *xb = xq + (size_t)t * kp + (size_t)b * MC_QK_K + 64 * c;
                __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xb));
                __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xb + 32)));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm256_madd_epi16(plo, slo),
                                                                     _mm256_madd_epi16(phi, shi)));
            }
        }
        uint32_t hh;
        memcpy(&hh, blk, 4);
        __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)hh)); /* d, dmin */
        __m128i mins = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(sm, sm));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m128i mp = _mm_madd_epi16(
                mins, _mm_loadu_si128((const __m128i *)(bs + (size_t)t * (kp / 32) + 8 * (size_t)b)));
            /* lanes 0, 1: S and M (exact), then [acc, macc] += [d dx, dmin dx] [S, M] */
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sumi[t]),
                                       _mm256_extracti128_si256(sumi[t], 1));
            __m128i sm4 = _mm_add_epi32(_mm_unpacklo_epi32(s4, mp), _mm_unpackhi_epi32(s4, mp));
            sm4 = _mm_add_epi32(sm4, _mm_unpackhi_epi64(sm4, sm4));
            acc[t] = _mm_fmadd_ps(_mm_mul_ps(dd, _mm_set1_ps(xd[(size_t)t * nb + b])),
                                  _mm_cvtepi32_ps(sm4), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        y[(size_t)t * ldy] = _mm_cvtss_f32(_mm_sub_ss(acc[t], _mm_movehdup_ps(acc[t])));
}

/* ---- Q4_K and Q5_K at many tokens: unpacked row panels x token groups ---- */

/* A Q4_K / Q5_K block unpacked (q45_unpack): the 256 values as bytes in
 * order, sub-block j's scale as an int32 of two equal int16 (vpmaddwd's
 * operand), the mins as int16 pairs (m_2p, m_2p+1), d and dmin. */
typedef struct {
    uint8_t q[MC_QK_K];
    int32_t sc[8];
    int32_t mp[4];
    float d, dmin, pad[2];
} q45_unp;

static void q45_unpack(int five, const unsigned char *row, int nb, q45_unp *u)
{
    const size_t bbytes = five ? sizeof(mc_block_q5_k) : sizeof(mc_block_q4_k);
    for (int b = 0; b < nb; b++, u++) {
        const unsigned char *blk = row + (size_t)b * bbytes;
        __m128i sm = q4_k_scales(blk + 4);
        __m128i sc16 = _mm_cvtepu8_epi16(sm);
        _mm_store_si128((__m128i *)u->sc, _mm_unpacklo_epi16(sc16, sc16));
        _mm_store_si128((__m128i *)(u->sc + 4), _mm_unpackhi_epi16(sc16, sc16));
        _mm_store_si128((__m128i *)u->mp, _mm_cvtepu8_epi16(_mm_unpackhi_epi64(sm, sm)));
        uint16_t h[2];
        memcpy(h, blk, 4);
        u->d = mc_kf16(h[0]);
        u->dmin = mc_kf16(h[1]);
        __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        const unsigned char *qs = blk + (five ? 48 : 16);
        for (int c = 0; c < 4; c++) {
            __m256i lo, hi;
            q45_chunk(five, qs + 32 * c, &hb, &lo, &hi);
            _mm256_store_si256((__m256i *)(u->q + 64 * c), lo);
            _mm256_store_si256((__m256i *)(u->q + 64 * c + 32), hi);
        }
    }
}

/* One unpacked row (nb blocks) against token group g (kern_avx2.h's
 * records): per block and token the int32 sum S in a lane (tok8_block),
 * then q45_k_row's f32 steps with a token per lane; the nt tokens kept go
 * to y[t * ldy]. */
static void q45_tok8(const q45_unp *u, int nb, const void *pack, int g, float *y, int ldy, int nt)
{
    __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, u++) {
        const unsigned char *r = tok8_rec(pack, 8, 4, nb, g, b);
        __m256i st = tok8_block(u->q, u->sc, NULL, r);
        __m256 dx = _mm256_load_ps((const float *)(r + 2048));
        const __m256i *sp = (const __m256i *)(r + 2080);
        __m256i m = _mm256_add_epi32(
            _mm256_add_epi32(_mm256_madd_epi16(_mm256_set1_epi32(u->mp[0]), _mm256_load_si256(sp)),
                             _mm256_madd_epi16(_mm256_set1_epi32(u->mp[1]), _mm256_load_si256(sp + 1))),
            _mm256_add_epi32(_mm256_madd_epi16(_mm256_set1_epi32(u->mp[2]), _mm256_load_si256(sp + 2)),
                             _mm256_madd_epi16(_mm256_set1_epi32(u->mp[3]), _mm256_load_si256(sp + 3))));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(u->d), dx),
                              _mm256_cvtepi32_ps(st), acc);
        macc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(u->dmin), dx), _mm256_cvtepi32_ps(m),
                               macc);
    }
    store_tokens(_mm256_sub_ps(acc, macc), y, ldy, nt);
}

/* Rows [r0, r1) x the token groups of a (a->pack): panels of rows
 * unpacked into this thread's scratch, each swept once per group; groups
 * of at most 4 real tokens go through q45_k_row (the same arithmetic).
 * Returns 0 without scratch (the caller takes the rows of 4 tokens). */
static int rows_q45_tok8(int five, const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0,
                         int r1)
{
    int nb = a->kp / MC_QK_K, n = a->n;
    size_t rbytes = (size_t)nb * sizeof(q45_unp);
    int pr = (int)(TOK8_PANEL_BYTES / rbytes);
    pr = pr < 4 ? 4 : pr;
    q45_unp *u = mc_kern_scratch((size_t)pr * rbytes);
    if (!u)
        return 0;
    for (int p0 = r0; p0 < r1; p0 += pr) {
        int p1 = r1 - p0 < pr ? r1 : p0 + pr;
        for (int o = p0; o < p1; o++)
            q45_unpack(five, mc_row_ptr(w, o), nb, u + (size_t)(o - p0) * nb);
        for (int t0 = 0; t0 < n; t0 += 8) {
            int nt = n - t0 < 8 ? n - t0 : 8;
            float *yt = y + (size_t)t0 * ldy;
            if (nt >= TOK8_MIN) {
                for (int o = p0; o < p1; o++)
                    q45_tok8(u + (size_t)(o - p0) * nb, nb, a->pack, t0 / 8, yt + o, ldy, nt);
                continue;
            }
            const int8_t *xq = a->q + (size_t)t0 * a->kp;
            const float *xd = a->d + (size_t)t0 * nb;
            const int16_t *bs = a->bsum + (size_t)t0 * (a->kp / 32);
            for (int o = p0; o < p1; o++) {
                const unsigned char *row = mc_row_ptr(w, o);
                switch (nt) {
                case 1: q45_k_row(1, five, row, xq, xd, bs, a->kp, nb, yt + o, ldy); break;
                case 2: q45_k_row(2, five, row, xq, xd, bs, a->kp, nb, yt + o, ldy); break;
                case 3: q45_k_row(3, five, row, xq, xd, bs, a->kp, nb, yt + o, ldy); break;
                default: q45_k_row(4, five, row, xq, xd, bs, a->kp, nb, yt + o, ldy); break;
                }
            }
        }
    }
    return 1;
}

/* The token groups of a (kern_avx2.h's records of C chunks and P sum pairs). */
static void tok8_pack(const mc_qact *a, int C, int P, void *dst)
{
    int nb = a->kp / (32 * C), G = (a->n + 7) / 8, nsub = 2 * P, ns = nb * nsub;
    const int16_t *bs = P == 4 ? a->bsum : a->bsum16;
    for (int g = 0; g < G; g++)
        for (int b = 0; b < nb; b++) {
            unsigned char *r = (unsigned char *)tok8_rec(dst, C, P, nb, g, b);
            float *dx = (float *)(r + 256 * C);
            uint32_t *sp = (uint32_t *)(r + 256 * C + 32);
            for (int t = 0; t < 8; t++) {
                int tok = 8 * g + t;
                if (tok >= a->n) {
                    for (int c = 0; c < C; c++)
                        memset(r + 32 * (8 * c + t), 0, 32);
                    dx[t] = 0.0f;
                    for (int p = 0; p < P; p++)
                        sp[8 * p + t] = 0;
                    continue;
                }
                const int8_t *xq = a->q + (size_t)tok * a->kp + (size_t)b * 32 * C;
                for (int c = 0; c < C; c++)
                    memcpy(r + 32 * (8 * c + t), xq + 32 * c, 32);
                dx[t] = a->d[(size_t)tok * nb + b];
                const int16_t *sb = P ? bs + (size_t)tok * ns + (size_t)b * nsub : NULL;
                for (int p = 0; p < P; p++)
                    sp[8 * p + t] = (uint16_t)sb[2 * p] | (uint32_t)(uint16_t)sb[2 * p + 1] << 16;
            }
        }
}

/* Q8_0 products of TOK8_MIN tokens or more (q8_0_tok8q's records, Q8Q_REC):
 * per block the 8 tokens' 32 values as 8 x 8 quads, transposed in
 * registers, and their magnitudes. */
static void q8_0_pack_quads(const mc_qact *a, void *dst)
{
    int nb = a->kp / MC_QK8_0, G = (a->n + 7) / 8;
    for (int g = 0; g < G; g++)
        for (int b = 0; b < nb; b++) {
            unsigned char *r = (unsigned char *)dst + ((size_t)g * nb + b) * Q8Q_REC;
            float *dx = (float *)(r + 512);
            __m256i v[8], u[8];
            for (int t = 0; t < 8; t++) { /* token t's 32 values: 8 quads */
                int tok = 8 * g + t;
                v[t] = tok < a->n ? _mm256_loadu_si256((const __m256i *)(a->q + (size_t)tok * a->kp +
                                                                         (size_t)b * MC_QK8_0))
                                  : _mm256_setzero_si256();
                dx[t] = tok < a->n ? a->d[(size_t)tok * nb + b] : 0.0f;
            }
            /* 8 x 8 quads transposed: vector k = quad k of tokens 0..7 */
            for (int t = 0; t < 8; t += 2) {
                u[t] = _mm256_unpacklo_epi32(v[t], v[t + 1]);
                u[t + 1] = _mm256_unpackhi_epi32(v[t], v[t + 1]);
            }
            for (int t = 0; t < 8; t += 4) {
                v[t] = _mm256_unpacklo_epi64(u[t], u[t + 2]);
                v[t + 1] = _mm256_unpackhi_epi64(u[t], u[t + 2]);
                v[t + 2] = _mm256_unpacklo_epi64(u[t + 1], u[t + 3]);
                v[t + 3] = _mm256_unpackhi_epi64(u[t + 1], u[t + 3]);
            }
            for (int k = 0; k < 4; k++) {
                u[k] = _mm256_permute2x128_si256(v[k], v[k + 4], 0x20);
                u[k + 4] = _mm256_permute2x128_si256(v[k], v[k + 4], 0x31);
            }
            for (int k = 0; k < 8; k++) {
                _mm256_store_si256((__m256i *)(r + 32 * k), u[k]);
                _mm256_store_si256((__m256i *)(r + 256 + 32 * k), _mm256_abs_epi8(u[k]));
            }
        }
}

/* The chunks (C) and sum pairs (P) of a dtype's token-group records; 0 chunks: none. */
static void tok8_shape(mc_dtype dt, int *C, int *P)
{
    *C = dt == MC_DT_Q8_0 ? 1 : dt == MC_DT_Q4_K || dt == MC_DT_Q5_K || dt == MC_DT_Q6_K ? 8 : 0;
    *P = dt == MC_DT_Q6_K ? 8 : dt == MC_DT_Q8_0 ? 0 : 4;
}

/* pack_qact: token groups for Q4_K / Q5_K / Q6_K products of TOK8_MIN
 * tokens or more, Q8_0 products of 2 to 4 (q8_0_tokn) or more (in quads:
 * q8_0_tok8q) */
static size_t pack_qact_bytes(const mc_mat *w, int n)
{
    int C, P;
    tok8_shape(w->dtype, &C, &P);
    if (!C || n < (C == 1 ? 2 : TOK8_MIN))
        return 0;
    size_t nb = ((size_t)w->cols + 32 * (size_t)C - 1) / (32 * (size_t)C);
    return (size_t)((n + 7) / 8) * nb * (C == 1 && q8_0_quads(n) ? Q8Q_REC : tok8_rec_bytes(C, P));
}

static void pack_qact(const mc_mat *w, const mc_qact *a, void *dst)
{
    int C, P;
    tok8_shape(w->dtype, &C, &P);
    if (C == 1 && q8_0_quads(a->n))
        q8_0_pack_quads(a, dst);
    else
        tok8_pack(a, C, P, dst);
}

/* Q8_0 (kind 0), Q4_K (1) or Q5_K (2) rows [r0, r1) x all tokens: panels
 * of panel_rows rows, each swept once per group of 4 tokens, or for Q8_0
 * with its token groups (a->pack) once per group of 8 (products of 2..4
 * tokens through q8_0_tokn, of TOK8_MIN or more through q8_0_tok8q (two
 * rows at a time above 8 tokens; at 8 or fewer each row is read once, and
 * one stream a thread reads faster), a last single token through
 * q8_0_row: the same arithmetic). */
AI void rows_q(int kind, const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nb = a->kp / (kind ? MC_QK_K : MC_QK8_0), ns = a->kp / 32;
    size_t bbytes = kind == 0 ? sizeof(mc_block_q8_0) : kind == 1 ? sizeof(mc_block_q4_k)
                                                                  : sizeof(mc_block_q5_k);
    int pr = a->n == 1 ? r1 - r0 : panel_rows((size_t)nb * bbytes);
    int tg = kind == 0 && a->pack ? 8 : 4; /* tokens a group */
/* row o against T tokens from t0 */
#define Q_ROW(T)                                                                                   \
    (kind ? q45_k_row(T, kind == 2, row, xq, xd, bs, a->kp, nb, yt + o, ldy)                      \
          : q8_0_row(T, row, xq, xd, a->kp, nb, yt + o, ldy))
    for (int p0 = r0; p0 < r1; p0 += pr) {
        int p1 = r1 - p0 < pr ? r1 : p0 + pr;
        for (int t0 = 0; t0 < a->n; t0 += tg) {
            int nt = a->n - t0 < tg ? a->n - t0 : tg;
            const int8_t *xq = a->q + (size_t)t0 * a->kp;
            const float *xd = a->d + (size_t)t0 * nb;
            const int16_t *bs = kind ? a->bsum + (size_t)t0 * ns : NULL;
            float *yt = y + (size_t)t0 * ldy;
            for (int o = p0; o < p1; o++) {
                const unsigned char *row = mc_row_ptr(w, o);
                if (tg == 8 && nt > 1) {
                    if (q8_0_quads(a->n)) { /* rows in pairs above 8 tokens */
                        const unsigned char *rr[2] = {row, row};
                        if (a->n > 8 && o + 1 < p1) {
                            rr[1] = mc_row_ptr(w, o + 1);
                            q8_0_tok8q(2, rr, nb, a->pack, t0 / 8, yt + o++, ldy, nt);
                        } else {
                            q8_0_tok8q(1, rr, nb, a->pack, t0 / 8, yt + o, ldy, nt);
                        }
                    } else if (nt == 2) {
                        q8_0_tokn(2, row, nb, a->pack, t0 / 8, yt + o, ldy, nt);
                    } else {
                        q8_0_tokn(4, row, nb, a->pack, t0 / 8, yt + o, ldy, nt);
                    }
                    continue;
                }
                switch (nt) {
                case 1: Q_ROW(1); break;
                case 2: Q_ROW(2); break;
                case 3: Q_ROW(3); break;
                default: Q_ROW(4); break;
                }
            }
        }
    }
#undef Q_ROW
}

static void rows_q8_0(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    rows_q(0, w, a, y, ldy, r0, r1);
}

static void rows_q4_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    if (!a->pack || !rows_q45_tok8(0, w, a, y, ldy, r0, r1))
        rows_q(1, w, a, y, ldy, r0, r1);
}

static void rows_q5_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    if (!a->pack || !rows_q45_tok8(1, w, a, y, ldy, r0, r1))
        rows_q(2, w, a, y, ldy, r0, r1);
}

/* ---- activation quantization ---- */

/* mc_quantize_act_row 8 values at a time (avx512.c's quantize_act on
 * 256-bit vectors): the same float operations on every value (the max of
 * |x| and 0 skipping NaN, amax / 127, 127 / amax, x * is, + 1.5 * 2^23 and
 * the low mantissa bits, the clamp), values past cols 0, so the same
 * bytes; the sums of `sub` values by vpsadbw of q + 128. Multiply and add
 * stay two statements: no contraction to an FMA. */
static void quantize_act(const float *x, int cols, int kp, int blk, int8_t *q, float *d,
                         int16_t *bsum, int sub)
{
    const __m256 magic = _mm256_set1_ps(12582912.f);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i mant = _mm256_set1_epi32(0x007fffff), half = _mm256_set1_epi32(0x00400000);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b0 = 0; b0 < kp; b0 += blk) { /* blk: 32 or 256 */
        int len = cols - b0 < blk ? (cols - b0 > 0 ? cols - b0 : 0) : blk;
        __m256 am = _mm256_setzero_ps();
        for (int i = 0; i < len; i += 8) {
            __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(len - i), iota);
            __m256 v = _mm256_and_ps(_mm256_maskload_ps(x + b0 + i, m), absm);
            am = _mm256_max_ps(v, am); /* a NaN in v keeps am */
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        float sc = amax / 127.0f, is = sc > 0 ? 127.0f / amax : 0.0f;
        d[b0 / blk] = sc;
        __m256 isv = _mm256_set1_ps(is);
        for (int i = 0; i < blk; i += 32) {
            __m256i iv[4];
            for (int k = 0; k < 4; k++) {
                __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(len - i - 8 * k), iota);
                __m256 v = _mm256_mul_ps(_mm256_maskload_ps(x + b0 + i + 8 * k, m), isv);
                v = _mm256_add_ps(v, magic);
                __m256i r = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(v), mant), half);
                iv[k] = _mm256_and_si256(m, _mm256_min_epi32(_mm256_max_epi32(r, lo), hi));
            }
            __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]),
                                           _mm256_packs_epi32(iv[2], iv[3]));
            _mm256_storeu_si256((__m256i *)(void *)(q + b0 + i), _mm256_permutevar8x32_epi32(b, perm));
        }
    }
    if (!bsum)
        return;
    const __m256i c128 = _mm256_set1_epi8((char)0x80);
    int per = sub == 16 || sub == 32 ? 32 / sub : 0, lanes = sub / 8, j = 0; /* sums per 32 bytes; 8-byte lanes per sum */
    for (int j0 = 0; j0 + 32 <= kp; j0 += 32) {
        __m256i u = _mm256_xor_si256(_mm256_loadu_si256((const void *)(q + j0)), c128);
        uint64_t l8[4];
        _mm256_storeu_si256((void *)l8, _mm256_sad_epu8(u, _mm256_setzero_si256()));
        for (int k = 0; k < per; k++, j++) {
            int64_t sm = -128 * (int64_t)sub;
            for (int l = 0; l < lanes; l++)
                sm += (int64_t)l8[k * lanes + l];
            bsum[j] = (int16_t)sm;
        }
    }
    for (; j < kp / sub; j++) { /* sums of other widths */
        int sm = 0;
        for (int i = 0; i < sub; i++)
            sm += q[sub * j + i];
        bsum[j] = (int16_t)sm;
    }
}

/* ---- vector math ---- */

/* expf to ~2 ulp (Cephes polynomial); 0 below -87.3. */
AI __m256 exp8(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 over = _mm256_cmp_ps(x, _mm256_set1_ps(88.72283935546875f), _CMP_GT_OQ);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    p = _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), over);
    p = _mm256_blendv_ps(p, x, nan);
    return _mm256_andnot_ps(under, p);
}

static void axpy(float *y, float a, const float *x, int n)
{
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

/* ---- attention: heads that share a key or value row ---- */

/* The rows of attention's dot_many / wsum_rows: f32, or (BF) bf16 (ld8 / ld1). */
#define ROW_DT(BF) ((BF) ? MC_DT_BF16 : MC_DT_F32)

/* The dot products of MJ (1..3) vectors against one row (f32, or BF:
 * bf16 widened), each with four 8-lane accumulators, the row's values
 * loaded once for all MJ: dot() is this with one vector. */
AI void dotj(int BF, int MJ, const float *const *a, const void *b, int n, float *out)
{
    __m256 s[3][4];
#pragma GCC unroll 3
    for (int j = 0; j < MJ; j++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            s[j][k] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 b0 = ld8(ROW_DT(BF), b, (size_t)i), b1 = ld8(ROW_DT(BF), b, (size_t)i + 8),
               b2 = ld8(ROW_DT(BF), b, (size_t)i + 16), b3 = ld8(ROW_DT(BF), b, (size_t)i + 24);
#pragma GCC unroll 3
        for (int j = 0; j < MJ; j++) {
            s[j][0] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + i), b0, s[j][0]);
            s[j][1] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + i + 8), b1, s[j][1]);
            s[j][2] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + i + 16), b2, s[j][2]);
            s[j][3] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + i + 24), b3, s[j][3]);
        }
    }
    for (; i + 8 <= n; i += 8) {
        __m256 b0 = ld8(ROW_DT(BF), b, (size_t)i);
#pragma GCC unroll 3
        for (int j = 0; j < MJ; j++)
            s[j][0] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + i), b0, s[j][0]);
    }
#pragma GCC unroll 3
    for (int j = 0; j < MJ; j++) {
        float t = hsum256(_mm256_add_ps(_mm256_add_ps(s[j][0], s[j][1]), _mm256_add_ps(s[j][2], s[j][3])));
        for (int k = i; k < n; k++)
            t += a[j][k] * ld1(ROW_DT(BF), b, (size_t)k);
        out[j] = t;
    }
}

AI void dot_many_t(int BF, const float *const *a, int m, const void *b, int n, float *out)
{
    int j = 0;
    for (; j + 3 <= m; j += 3)
        dotj(BF, 3, a + j, b, n, out + j);
    if (m - j == 2)
        dotj(BF, 2, a + j, b, n, out + j);
    else if (m - j == 1)
        dotj(BF, 1, a + j, b, n, out + j);
}

/* The dot product: four 8-lane accumulators over 32 values at a time,
 * the rest of the multiples of 8 into the first, added (s0 + s1) + (s2 +
 * s3) then hsum256, the last n mod 8 values one by one (dotj with one
 * vector: the attention's dot_many gives the same bits by construction). */
static float dot(const float *a, const float *b, int n)
{
    float s;
    dotj(0, 1, &a, b, n, &s);
    return s;
}

static void dot_many(const float *const *a, int m, const float *b, int n, float *out)
{
    dot_many_t(0, a, m, b, n, out);
}

static void dot_many_bf16(const float *const *a, int m, const uint16_t *b, int n, float *out)
{
    dot_many_t(1, a, m, b, n, out);
}

/* mc_wsum_rows for outputs [j0, j0 + MJ), MJ <= 4, values [e, e + 8 NV)
 * (NV 1 or 2 vectors; all below n rounded down to 8): per tile of rows the
 * MJ x NV accumulators stay in registers over the tile's rows (axpy's FMA
 * per value, rows in order; with SKIP a zero weight leaves its
 * accumulator as it is) and go through y between tiles (the same bits).
 * Each row of the tile asks for its line of the row a tile ahead (into L1)
 * and three tiles ahead (into L2): a head's rows lie a slot apart in the
 * paged cache, a pattern the hardware prefetchers do not follow. */
AI void wsum_chunk(int BF, int MJ, int NV, int SKIP, float *const *y, int j0, const float *a, int m,
                   const void *const *rows, int S, int ts, int e)
{
    size_t es = BF ? 2 : 4;
    for (int i0 = 0; i0 < S || i0 == 0; i0 += ts) { /* S == 0: zeros */
        int i1 = S - i0 < ts ? S : i0 + ts;
        int pf1 = S - i1 < ts ? S - i1 : ts;
        int pf3 = S - i1 - 2 * ts < 0 ? 0 : S - i1 - 2 * ts < ts ? S - i1 - 2 * ts : ts;
        __m256 acc[4][2];
#pragma GCC unroll 4
        for (int j = 0; j < MJ; j++)
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                acc[j][v] = i0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(y[j0 + j] + e + 8 * v);
        const float *w = a + (size_t)i0 * m + j0;
        for (int i = i0; i < i1; i++, w += m) {
            if (i - i0 < pf1)
                _mm_prefetch((const char *)rows[i + ts] + e * es, _MM_HINT_T0);
            if (i - i0 < pf3)
                _mm_prefetch((const char *)rows[i + 3 * ts] + e * es, _MM_HINT_T1);
            __m256 xv[2];
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                xv[v] = ld8(ROW_DT(BF), rows[i], (size_t)(e + 8 * v));
#pragma GCC unroll 4
            for (int j = 0; j < MJ; j++) {
                __m256 wv = _mm256_set1_ps(w[j]);
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++) {
                    __m256 f = _mm256_fmadd_ps(wv, xv[v], acc[j][v]);
                    acc[j][v] = SKIP ? _mm256_blendv_ps(acc[j][v], f,
                                                        _mm256_cmp_ps(wv, _mm256_setzero_ps(), _CMP_NEQ_UQ))
                                     : f;
                }
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < MJ; j++)
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                _mm256_storeu_ps(y[j0 + j] + e + 8 * v, acc[j][v]);
    }
}

/* Outputs [j0, j0 + MJ) over all values: chunks of 16, one of 8, then
 * axpy's scalar tail (y += a x per value, rows in order). */
AI void wsum_block(int BF, int MJ, int SKIP, float *const *y, int j0, const float *a, int m,
                   const void *const *rows, int S, int n)
{
    int ts = mc_wsum_tile(n), n8 = n / 8 * 8, e = 0;
    for (; e + 16 <= n8; e += 16)
        wsum_chunk(BF, MJ, 2, SKIP, y, j0, a, m, rows, S, ts, e);
    if (e < n8)
        wsum_chunk(BF, MJ, 1, SKIP, y, j0, a, m, rows, S, ts, e);
    for (int j = 0; j < MJ; j++)
        for (int k = n8; k < n; k++) {
            float v = 0.0f;
            for (int i = 0; i < S; i++) {
                float wt = a[(size_t)i * m + j0 + j];
                if (!SKIP || wt != 0.0f)
                    v += wt * ld1(ROW_DT(BF), rows[i], (size_t)k);
            }
            y[j0 + j][k] = v;
        }
}

AI void wsum_rows_t(int BF, float *const *y, int m, const float *a, const void *const *rows, int S,
                    int n, int skip_zero)
{
    for (int j0 = 0; j0 < m; j0 += 4) {
        int mj = m - j0 < 4 ? m - j0 : 4;
#define WSUM_MJ(MJ)                                                                                \
    (skip_zero ? wsum_block(BF, MJ, 1, y, j0, a, m, rows, S, n)                                    \
               : wsum_block(BF, MJ, 0, y, j0, a, m, rows, S, n))
        switch (mj) {
        case 1: WSUM_MJ(1); break;
        case 2: WSUM_MJ(2); break;
        case 3: WSUM_MJ(3); break;
        default: WSUM_MJ(4); break;
        }
#undef WSUM_MJ
    }
}

static void wsum_rows(float *const *y, int m, const float *a, const float *const *rows, int S, int n,
                      int skip_zero)
{
    wsum_rows_t(0, y, m, a, (const void *const *)rows, S, n, skip_zero);
}

static void wsum_rows_bf16(float *const *y, int m, const float *a, const uint16_t *const *rows, int S,
                           int n, int skip_zero)
{
    wsum_rows_t(1, y, m, a, (const void *const *)rows, S, n, skip_zero);
}

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d b = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_fmadd_pd(a, a, s0);
        s1 = _mm256_fmadd_pd(b, b, s1);
    }
    __m256d s = _mm256_add_pd(s0, s1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    double ss = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; i < n; i++)
        ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    __m256 iv = _mm256_set1_ps(inv);
    i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), iv);
        if (w)
            v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(out + i, v);
    }
    for (; i < n; i++)
        out[i] = w ? x[i] * inv * w[i] : x[i] * inv;
}

static void softmax(float *x, int n)
{
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float mx = _mm_cvtss_f32(m4);
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    __m256 mxv = _mm256_set1_ps(mx), sv = _mm256_setzero_ps();
    i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mxv));
        _mm256_storeu_ps(x + i, e);
        sv = _mm256_add_ps(sv, e);
    }
    double s = hsum256(sv);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        s += x[i];
    }
    float inv = (float)(1.0 / s);
    __m256 iv = _mm256_set1_ps(inv);
    i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), iv));
    for (; i < n; i++)
        x[i] *= inv;
}

static void rope(float *v, int dim, int interleaved, const float *cos, const float *sin)
{
    int half = dim / 2, i = 0;
    if (!interleaved) {
        for (; i + 8 <= half; i += 8) {
            __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + half);
            __m256 c = _mm256_loadu_ps(cos + i), s = _mm256_loadu_ps(sin + i);
            _mm256_storeu_ps(v + i, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
            _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(b, c, _mm256_mul_ps(a, s)));
        }
    } else {
        const __m256i dup = _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0);
        for (; i + 4 <= half; i += 4) {
            __m256 x = _mm256_loadu_ps(v + 2 * i);
            __m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cos + i)), dup);
            __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sin + i)), dup);
            __m256 sw = _mm256_permute_ps(x, 0xB1);
            _mm256_storeu_ps(v + 2 * i, _mm256_fmaddsub_ps(x, c, _mm256_mul_ps(sw, s)));
        }
    }
    for (; i < half; i++) {
        int a = interleaved ? 2 * i : i;
        int b = interleaved ? 2 * i + 1 : i + half;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * cos[i] - x1 * sin[i];
        v[b] = x1 * cos[i] + x0 * sin[i];
    }
}

static void swiglu(float *g, const float *u, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)),
                                              _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static double fma_burn(long iters)
{
    __m256 a[12];
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    for (int j = 0; j < 12; j++)
        a[j] = _mm256_set1_ps(1.0f + (float)j);
    for (long k = 0; k < iters; k++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++)
            a[j] = _mm256_fmadd_ps(a[j], m, c);
    }
    __m256 s = a[0];
    for (int j = 1; j < 12; j++)
        s = _mm256_add_ps(s, a[j]);
    volatile float sink = hsum256(s);
    (void)sink;
    return 2.0 * 8.0 * 12.0 * (double)iters;
}

static uint64_t stream_sum(const void *p, size_t bytes)
{
    const __m256i *v = p;
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i < bytes / 32; i += 4) {
        a = _mm256_add_epi64(a, _mm256_load_si256(v + i));
        b = _mm256_add_epi64(b, _mm256_load_si256(v + i + 1));
        c = _mm256_add_epi64(c, _mm256_load_si256(v + i + 2));
        d = _mm256_add_epi64(d, _mm256_load_si256(v + i + 3));
    }
    uint64_t o[4];
    _mm256_storeu_si256((__m256i *)o, _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
    return o[0] + o[1] + o[2] + o[3];
}

const mc_kops mc_kops_avx2 = {
    .name = "avx2",
    .quantize_act = quantize_act,
    .widen = widen,
    .rows_f = rows_f,
    .rows_q8_0 = rows_q8_0,
    .rows_q4_k = rows_q4_k,
    .rows_q5_k = rows_q5_k,
    .rows_q6_k = mc_avx2_rows_q6_k,
    .pack_qact_bytes = pack_qact_bytes,
    .pack_qact = pack_qact,
    .dot = dot,
    .axpy = axpy,
    .dot_many = dot_many,
    .wsum_rows = wsum_rows,
    .dot_many_bf16 = dot_many_bf16,
    .wsum_rows_bf16 = wsum_rows_bf16,
    .rmsnorm = rmsnorm,
    .softmax = softmax,
    .rope = rope,
    .swiglu = swiglu,
    .fma_burn = fma_burn,
    .stream_sum = stream_sum,
    .pack_f_bytes = pack_f_bytes,
    .pack_f = pack_f,
    .rows_f_packed = rows_bf16_direct,
};
