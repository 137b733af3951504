/* avx512.c - AVX-512 path (F, BW, DQ, VL, VNNI; plus AVX2/FMA/F16C).
 * Compiled with those -m flags; only called when the CPU has them.
 *
 * Element-type weights: a tile of 4 weight rows x up to 4 tokens keeps 16
 * zmm accumulators over the whole row; weights are widened a vector at a
 * time (BF16: zero-extend and shift; F16: vcvtph2ps; F8_E4M3: bit
 * placement times 2^120). For many tokens, or scaled weights, the 4 rows
 * are first widened (and scaled) into an f32 panel that all token tiles
 * reuse; FP8 with block scales against several tokens instead converts each
 * row step once per 8 tokens (avx512_fp8_rows.h). Q8_0: vpdpbusd of w + 128 against x, started at -128 sum(x)
 * (exact), on per-call repacks: 4 rows x 4 tokens register tiles over
 * row blocks kept in L2. Q4_K: nibbles against int8 activations with
 * vpmaddubsw, sub-block scales applied with vpdpwssd, mins through the
 * per-32 activation sums; 8 tokens per pass over row blocks kept in L2.
 * Decode prefetches the row stream. */
#include "avx512_fp8.h"
#include "kern.h"
#include "kern_q4k.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#define AI static inline __attribute__((always_inline))

/* ---- widening ---- */

/* 16 weights of type DT from element i of p */
AI __m512 ld16(int DT, const unsigned char *p, size_t i)
{
    switch (DT) {
    case MC_DT_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 2 * i))), 16));
    case MC_DT_F16:
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * i)));
    case MC_DT_F8_E4M3:
        return fp8x16(_mm_loadu_si128((const __m128i *)(p + i)));
    default:
        return _mm512_loadu_ps((const float *)(const void *)(p + 4 * i));
    }
}

/* one weight, scalar (tails) */
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
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, ld16(DT, p, (size_t)i));
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


/* R weight rows (stored type DT, row pointers wr) x T tokens (x rows ldx
 * apart) over K columns; y[t*ldy + r] gets the dot products. */
AI void tile(int DT, int R, int T, const unsigned char *const *wr, const float *x, int ldx, int K,
             float *y, int ldy)
{
    __m512 acc[4][8];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv[8];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            xv[t] = _mm512_loadu_ps(x + (size_t)t * ldx + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 wv = ld16(DT, wr[r], (size_t)k);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (k < K) { /* masked tail: loads past K are suppressed and read as zero */
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
        __m512 xv[8];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            xv[t] = _mm512_maskz_loadu_ps(m, x + (size_t)t * ldx + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 wv;
            if (DT == MC_DT_F32)
                wv = _mm512_maskz_loadu_ps(m, (const float *)(const void *)wr[r] + k);
            else if (DT == MC_DT_F8_E4M3)
                wv = fp8x16(_mm_maskz_loadu_epi8(m, wr[r] + k));
            else {
                __m256i h = _mm256_maskz_loadu_epi16(m, wr[r] + 2 * (size_t)k);
                wv = DT == MC_DT_F16 ? _mm512_cvtph_ps(h)
                                     : _mm512_castsi512_ps(
                                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            }
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            y[(size_t)t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define TILE_T(DT, R, wr, x, ldx, K, y, ldy, T)                                                \
    do {                                                                                           \
        switch (T) {                                                                               \
        case 1:                                                                                    \
            tile(DT, R, 1, wr, x, ldx, K, y, ldy);                                             \
            break;                                                                                 \
        case 2:                                                                                    \
            tile(DT, R, 2, wr, x, ldx, K, y, ldy);                                             \
            break;                                                                                 \
        case 3:                                                                                    \
            tile(DT, R, 3, wr, x, ldx, K, y, ldy);                                             \
            break;                                                                                 \
        default:                                                                                   \
            tile(DT, R, 4, wr, x, ldx, K, y, ldy);                                             \
            break;                                                                                 \
        }                                                                                          \
    } while (0)



/* two rows x up to 8 tokens */
#define TILE2_T(DT, wr, x, ldx, K, y, ldy, T)                                                      \
    do {                                                                                           \
        switch (T) {                                                                               \
        case 1: tile(DT, 2, 1, wr, x, ldx, K, y, ldy); break;                                   \
        case 2: tile(DT, 2, 2, wr, x, ldx, K, y, ldy); break;                                   \
        case 3: tile(DT, 2, 3, wr, x, ldx, K, y, ldy); break;                                   \
        case 4: tile(DT, 2, 4, wr, x, ldx, K, y, ldy); break;                                   \
        case 5: tile(DT, 2, 5, wr, x, ldx, K, y, ldy); break;                                   \
        case 6: tile(DT, 2, 6, wr, x, ldx, K, y, ldy); break;                                   \
        case 7: tile(DT, 2, 7, wr, x, ldx, K, y, ldy); break;                                   \
        default: tile(DT, 2, 8, wr, x, ldx, K, y, ldy); break;                                  \
        }                                                                                          \
    } while (0)

/* one row x up to 8 tokens */
#define TILE1_T(DT, wr, x, ldx, K, y, ldy, T)                                                      \
    do {                                                                                           \
        switch (T) {                                                                               \
        case 1: tile(DT, 1, 1, wr, x, ldx, K, y, ldy); break;                                   \
        case 2: tile(DT, 1, 2, wr, x, ldx, K, y, ldy); break;                                   \
        case 3: tile(DT, 1, 3, wr, x, ldx, K, y, ldy); break;                                   \
        case 4: tile(DT, 1, 4, wr, x, ldx, K, y, ldy); break;                                   \
        case 5: tile(DT, 1, 5, wr, x, ldx, K, y, ldy); break;                                   \
        case 6: tile(DT, 1, 6, wr, x, ldx, K, y, ldy); break;                                   \
        case 7: tile(DT, 1, 7, wr, x, ldx, K, y, ldy); break;                                   \
        default: tile(DT, 1, 8, wr, x, ldx, K, y, ldy); break;                                  \
        }                                                                                          \
    } while (0)

/* rows [r0, r1) x all n tokens, weights widened on the fly */
AI void stream_rows(int DT, const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy,
                    int r0, int r1)
{
    size_t es = mc_dtype_size((mc_dtype)DT);
    int K = w->cols;
    int o = r0;
#ifdef MC_HAVE_AVX512BF16
    if (n == 1 && DT == MC_DT_BF16 && mc_kern_bf16dp && !w->scale &&
        mc_avx512bf16_rows1(w, x, y, r0, r1))
        return;
#endif
    if (n == 1) {
        /* One token: one row at a time, four accumulators along the row. A
         * single sequential stream per thread is what the hardware
         * prefetchers follow best (4 concurrent rows, each often one 4 KiB
         * page, reach only ~60% of the bandwidth here). */
        for (; o < r1; o++) {
            const unsigned char *p = (const unsigned char *)w->data + (size_t)o * w->row_stride * es;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int k = 0;
            for (; k + 64 <= K; k += 64) {
                _mm_prefetch((const char *)p + es * (size_t)k + PF_BYTES, _MM_HINT_T0);
                if (es > 1) /* 64 elements of 2 or 4 bytes: two or four lines */
                    _mm_prefetch((const char *)p + es * (size_t)k + PF_BYTES + 64, _MM_HINT_T0);
                if (es > 2) {
                    _mm_prefetch((const char *)p + es * (size_t)k + PF_BYTES + 128, _MM_HINT_T0);
                    _mm_prefetch((const char *)p + es * (size_t)k + PF_BYTES + 192, _MM_HINT_T0);
                }
                a0 = _mm512_fmadd_ps(ld16(DT, p, (size_t)k), _mm512_loadu_ps(x + k), a0);
                a1 = _mm512_fmadd_ps(ld16(DT, p, (size_t)k + 16), _mm512_loadu_ps(x + k + 16), a1);
                a2 = _mm512_fmadd_ps(ld16(DT, p, (size_t)k + 32), _mm512_loadu_ps(x + k + 32), a2);
                a3 = _mm512_fmadd_ps(ld16(DT, p, (size_t)k + 48), _mm512_loadu_ps(x + k + 48), a3);
            }
            for (; k + 16 <= K; k += 16)
                a0 = _mm512_fmadd_ps(ld16(DT, p, (size_t)k), _mm512_loadu_ps(x + k), a0);
            float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
            for (; k < K; k++)
                s += ld1(DT, p, (size_t)k) * x[k];
            y[o] = s;
        }
        return;
    }
    /* a few tokens (rows_f sends 17 or more to the panel path): two rows x up to
     * 8 tokens per pass, so each activation vector loaded (from L2: n x K floats
     * do not fit L1) feeds two FMAs. Blocking rows x column chunks to keep x in
     * L1 measured slower here: the interleaved row streams lose more bandwidth
     * than the L2 reads of x cost. */
    for (; o + 2 <= r1; o += 2) {
        const unsigned char *wr[2];
        for (int r = 0; r < 2; r++)
            wr[r] = (const unsigned char *)w->data + (size_t)(o + r) * w->row_stride * es;
        for (int t0 = 0; t0 < n; t0 += 8)
            TILE2_T(DT, wr, x + (size_t)t0 * ldx, ldx, K, y + (size_t)t0 * ldy + o, ldy, n - t0);
    }
    for (; o < r1; o++) {
        const unsigned char *wr[1] = {(const unsigned char *)w->data + (size_t)o * w->row_stride * es};
        for (int t0 = 0; t0 < n; t0 += 8)
            TILE1_T(DT, wr, x + (size_t)t0 * ldx, ldx, K, y + (size_t)t0 * ldy + o, ldy, n - t0);
    }
}

/* Widens (and scales) stored row o into dst[K]. */
static void widen_row(const mc_mat *w, int o, float *dst)
{
    size_t es = mc_dtype_size(w->dtype);
    widen(w->dtype, (const unsigned char *)w->data + (size_t)o * w->row_stride * es, w->cols, dst);
    if (w->scale) {
        const float *srow = w->scale + (size_t)(o / w->block_rows) * (size_t)w->scale_cols;
        for (int c = 0; c < w->cols; c += w->block_cols) {
            int len = w->cols - c < w->block_cols ? w->cols - c : w->block_cols;
            __m512 s = _mm512_set1_ps(srow[c / w->block_cols]);
            int i = 0;
            for (; i + 16 <= len; i += 16)
                _mm512_storeu_ps(dst + c + i, _mm512_mul_ps(_mm512_loadu_ps(dst + c + i), s));
            for (; i < len; i++)
                dst[c + i] *= srow[c / w->block_cols];
        }
    }
}

#define PACK_MIN_TOKENS 17

/* rows [r0, r1): 4 rows at a time widened into an f32 panel, then every
 * token tile of a token block reuses it. */
static void packed_rows(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy, int r0,
                        int r1)
{
    int K = w->cols;
    size_t kp = ((size_t)K + 15) & ~(size_t)15;
    float *panel = aligned_alloc(64, 4 * kp * sizeof(float));
    if (!panel) { /* no memory for a panel: the reference needs none */
        mc_kops_scalar.rows_f(w, x, n, ldx, y, ldy, r0, r1);
        return;
    }
    /* token block: keep TB activation rows (TB*K*4 bytes) within ~384 KiB of L2 */
    int tb = (int)((384u * 1024u) / ((size_t)K * 4));
    tb = tb < 4 ? 4 : tb & ~3;
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
            for (int t0 = 0; t0 < tn; t0 += 4) {
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

/* ---- BF16 rows against 4 or more tokens, read as stored ----
 *
 * A 512-bit load of 32 bf16 weights holds in 32-bit lane i the weights 2i
 * (low half) and 2i + 1 (high half): a shift left by 16 gives the f32 of
 * the even ones, a mask of the high halves those of the odd ones (both
 * exact). So the tokens are repacked once per product with each 32 values
 * split into their 16 even and 16 odd ones (pack_f, zeros past K), and the
 * tiles multiply the stored rows: per 32 weights of a row one load and two
 * integer operations for all the tile's tokens, where packed_rows widens
 * every row into an f32 panel first (a store and a reload per weight). The
 * products and sums are the same f32 operations in another order. On the
 * 2-core Zen 4, BF16 prefill of 512 tokens (the 4-layer Qwen3-30B-A3B
 * shape) went from 315-319 to 339-342 tok/s, of 64 tokens from 242-247 to
 * 255-270. (Every weight load is a plain one but the row's last partial
 * chunk: masked loads throughout measured 265-314 tok/s, slower than the
 * panels.) */

static size_t bf16_k32(const mc_mat *w) { return ((size_t)w->cols + 31) / 32 * 32; }

static size_t pack_f_bytes(const mc_mat *w, int n) { return mc_bf16_direct_bytes(w, n, 32); }

/* Tokens [16 tt0, 16 tt1) (and < n) of x -> dst: token t at t * k32 floats,
 * per 32 columns c the 16 values c + 2i, then the 16 values c + 2i + 1. */
static void pack_f(const mc_mat *w, const float *x, int n, int ldx, void *dst, int tt0, int tt1)
{
#ifdef MC_HAVE_AVX512BF16
    if (mc_kern_bf16dp && mc_kern_bf16_acts) { /* tokens rounded to bf16: vdpbf16ps tiles */
        mc_avx512bf16_pack_tokens(w, x, n, ldx, dst, tt0, tt1);
        return;
    }
#endif
    int K = w->cols;
    size_t k32 = bf16_k32(w);
    const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    int t1 = tt1 * MC_FPACK_TOKENS < n ? tt1 * MC_FPACK_TOKENS : n;
    for (int t = tt0 * MC_FPACK_TOKENS; t < t1; t++) {
        const float *xt = x + (size_t)t * ldx;
        float *d = (float *)dst + (size_t)t * k32;
        for (int c = 0; c < (int)k32; c += 32) {
            int left = K - c;
            __mmask16 m0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            __mmask16 m1 = left >= 32   ? (__mmask16)0xffff
                           : left > 16 ? (__mmask16)((1u << (left - 16)) - 1)
                                       : (__mmask16)0;
            __m512 a = _mm512_maskz_loadu_ps(m0, xt + c), b = _mm512_maskz_loadu_ps(m1, xt + c + 16);
            _mm512_store_ps(d + c, _mm512_permutex2var_ps(a, ev, b));
            _mm512_store_ps(d + c + 16, _mm512_permutex2var_ps(a, od, b));
        }
    }
}

/* 4 stored BF16 rows (wr; the first R stored into y) x T tokens of the
 * repack (xp, k32 floats apart): y[t * ldy + r]. */
AI void bf16_tile(int T, const uint16_t *const *wr, int R, const float *xp, size_t k32, int K,
                  float *y, int ldy)
{
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_setzero_ps();
    for (int c = 0; c < (int)k32; c += 32) {
        int left = K - c; /* the last chunk by a masked load (nothing past the row is read) */
        __mmask32 m = left >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << left) - 1);
        __m512 xe[4], xo[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            xe[t] = _mm512_load_ps(xp + (size_t)t * k32 + c);
            xo[t] = _mm512_load_ps(xp + (size_t)t * k32 + c + 16);
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512i v = left >= 32 ? _mm512_loadu_si512((const void *)(wr[r] + c))
                                   : _mm512_maskz_loadu_epi16(m, wr[r] + c);
            __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm512_fmadd_ps(wo, xo[t], _mm512_fmadd_ps(we, xe[t], acc[r][t]));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            if (r < R)
                y[(size_t)t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

static void bf16_tile_t(int T, const uint16_t *const *wr, int R, const float *xp, size_t k32,
                        int K, float *y, int ldy)
{
    switch (T) {
    case 1: bf16_tile(1, wr, R, xp, k32, K, y, ldy); break;
    case 2: bf16_tile(2, wr, R, xp, k32, K, y, ldy); break;
    case 3: bf16_tile(3, wr, R, xp, k32, K, y, ldy); break;
    default: bf16_tile(4, wr, R, xp, k32, K, y, ldy); break;
    }
}

static void rows_bf16_direct(const mc_mat *w, const void *pack, const float *x, int n, int ldx,
                             float *y, int ldy, int r0, int r1)
{
    (void)x;
    (void)ldx;
#ifdef MC_HAVE_AVX512BF16
    if (mc_kern_bf16dp && mc_kern_bf16_acts) {
        mc_avx512bf16_rows_direct(w, pack, n, y, ldy, r0, r1);
        return;
    }
#endif
    mc_bf16_direct_rows(w, pack, bf16_k32(w), n, 4, bf16_tile_t, y, ldy, r0, r1);
}

/* Row o of FP8 w (block scales) against x, one weight at a time through
 * fp8x16 (NaN codes widened to NaN): the rows that hold a NaN code. */
static float fp8_scaled_row_nan(const mc_mat *w, const unsigned char *p, const float *srow,
                                const float *x)
{
    int K = w->cols, bc = w->block_cols, k = 0;
    __m512 a = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16)
        a = _mm512_fmadd_ps(_mm512_mul_ps(fp8x16(_mm_loadu_si128((const __m128i *)(p + k))),
                                          _mm512_set1_ps(srow[k / bc])),
                            _mm512_loadu_ps(x + k), a);
    float s = _mm512_reduce_add_ps(a);
    for (; k < K; k++)
        s += mc_fp8_e4m3_to_f32(p[k]) * srow[k / bc] * x[k];
    return s;
}

/* One token against FP8 rows with block scales whose column blocks are
 * whole multiples of 64 (DeepSeek's 128): each row streamed once, 64
 * weights a step turned into f16 bits (f8_to_h: three operations per 32)
 * and widened by vcvtph2ps, times 256 x their block's scale (256 * s is
 * exact, so each product is widen_row's scaled value to the bit), four
 * accumulators; a NaN code anywhere in the row sends the row to
 * fp8_scaled_row_nan. The row stream is prefetched as in stream_rows.
 * Where the CPU has AVX512-VBMI, avx512_vbmi.c's table lookup instead
 * (about half the operations). */
static void fp8_scaled_rows1(const mc_mat *w, const float *x, float *y, int r0, int r1)
{
#ifdef MC_HAVE_AVX512VBMI
    if (mc_kern_vbmi && mc_avx512vbmi_fp8_rows1(w, x, y, r0, r1))
        return;
#endif
    int K = w->cols, bc = w->block_cols;
    const __m512i m7f = _mm512_set1_epi8(0x7f);
    for (int o = r0; o < r1; o++) {
        const unsigned char *p = (const unsigned char *)w->data + (size_t)o * w->row_stride;
        const float *srow = w->scale + (size_t)(o / w->block_rows) * (size_t)w->scale_cols;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __mmask64 nan = 0;
        int k = 0;
        for (; k + 64 <= K; k += 64) {
            _mm_prefetch((const char *)p + k + PF_BYTES, _MM_HINT_T0);
            __m512 sc = _mm512_set1_ps(srow[k / bc] * 256.0f);
            __m512i v = _mm512_loadu_si512((const void *)(p + k));
            nan |= _mm512_cmpeq_epi8_mask(_mm512_and_si512(v, m7f), m7f);
            __m512i h0 = f8_to_h(_mm512_castsi512_si256(v));
            __m512i h1 = f8_to_h(_mm512_extracti64x4_epi64(v, 1));
            a0 = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h0)), sc),
                                 _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h0, 1)), sc),
                                 _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h1)), sc),
                                 _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h1, 1)), sc),
                                 _mm512_loadu_ps(x + k + 48), a3);
        }
        for (; k < K; k++)
            nan |= (p[k] & 0x7f) == 0x7f;
        if (nan) {
            y[o] = fp8_scaled_row_nan(w, p, srow, x);
            continue;
        }
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        for (k = K / 64 * 64; k < K; k++)
            s += mc_fp8_e4m3_to_f32(p[k]) * srow[k / bc] * x[k];
        y[o] = s;
    }
}

/* ---- FP8 with block scales against several tokens (avx512_fp8_rows.h) ----
 * Without AVX512-VBMI the codes of a step are widened as in
 * fp8_scaled_rows1: f16 bits (the value / 256), vcvtph2ps, NaN codes
 * flagged per row. */
typedef struct {
    __m512i m7f;
} fp8_tabs;

static void fp8_tabs_init(fp8_tabs *tb)
{
    tb->m7f = _mm512_set1_epi8(0x7f);
}

AI __mmask64 fp8_step(const fp8_tabs *tb, __m512i v, __m512i u[2])
{
    u[0] = f8_to_h(_mm512_castsi512_si256(v));
    u[1] = f8_to_h(_mm512_extracti64x4_epi64(v, 1));
    return _mm512_cmpeq_epi8_mask(_mm512_and_si512(v, tb->m7f), tb->m7f);
}

AI __m512 fp8_vec(const fp8_tabs *tb, const __m512i u[2], int q)
{
    (void)tb;
    return _mm512_cvtph_ps(q % 2 ? _mm512_extracti64x4_epi64(u[q / 2], 1)
                                 : _mm512_castsi512_si256(u[q / 2]));
}

#define FP8_ROWS_COL(s) (s)
#define FP8_ROWS_UNIT 256.0f
#include "avx512_fp8_rows.h"

static void rows_f(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy, int r0,
                   int r1)
{
    if (w->scale && n == 1 && w->dtype == MC_DT_F8_E4M3 && !w->transposed && w->block_cols > 0 &&
        w->block_cols % 64 == 0 && w->block_rows > 0) {
        fp8_scaled_rows1(w, x, y, r0, r1);
        return;
    }
    /* several tokens against FP8 rows with block scales: each step converted
     * once per 8 tokens (avx512_fp8_rows.h), by table with AVX512-VBMI */
    if (w->scale && w->dtype == MC_DT_F8_E4M3 && !w->transposed && w->block_cols > 0 &&
        w->block_cols % 64 == 0 && w->block_rows > 0) {
#ifdef MC_HAVE_AVX512VBMI
        if (mc_kern_vbmi && mc_avx512vbmi_fp8_rows(w, x, n, ldx, y, ldy, r0, r1))
            return;
#endif
        /* widened through f16, more tokens read better from the panels below
         * (n = 2: 3x the panels; 8: ~1.1x; 32-512: ~0.85x) */
        if (n < PACK_MIN_TOKENS && fp8_rows(w, x, n, ldx, y, ldy, r0, r1))
            return;
    }
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

/* ---- Q8_0 ---- */

/* Products of 2 or more tokens work on repacked copies made per call (the
 * weights in memory keep their format), 64 weights (two blocks) per
 * 512-bit step:
 *   rows:   per row and step, wu (64 bytes: w + 128, unsigned for
 *           vpdpbusd) then ws (16 f32: the two blocks' scales, 8 lanes each);
 *   tokens: per token and step, x (64 bytes), xc (16 int32: -128 times the
 *           sum of each lane's four bytes of x) and xs (the two scales).
 * A lane's integer sum starts at xc, so vpdpbusd(xc, wu, x) is exactly
 * sum(w * x); then one f32 multiply (ws * xs) and one FMA per row, token
 * and step. An odd last block leaves the upper half zero (x, xc, scales).
 * Rows are taken in blocks of about QBLOCK_BYTES of repacked weights, kept
 * in L2 while every group of 4 tokens (whose repack stays in L1) passes
 * over them, so each weight row is read from memory once per product. */
#define QBLOCK_BYTES (256 * 1024)

/* lanes 0..7 take element 0 (block b), lanes 8..15 element 1 (block b+1) */
AI __m512 q8_0_pair(float s0, float s1)
{
    const __m512i sel = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(sel, _mm512_castps128_ps512(_mm_set_ps(0.0f, 0.0f, s1, s0)));
}

/* The Q8_0 blocks at p (68 bytes: two blocks; `two` 0: one, the second
 * half zero) as one vector of their int8 values, and their scales as
 * q8_0_pair lanes in *sc. */
AI __m512i q8_0_load2(const unsigned char *p, int two, __m512 *sc)
{
    uint16_t h0, h1 = 0;
    memcpy(&h0, p, 2);
    __m256i hi = _mm256_setzero_si256();
    if (two) {
        memcpy(&h1, p + 34, 2);
        hi = _mm256_loadu_si256((const __m256i *)(p + 36));
    }
    *sc = q8_0_pair(_cvtsh_ss(h0), two ? _cvtsh_ss(h1) : 0.0f);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 2))),
                              hi, 1);
}

/* Every 64-byte line of [p, p + bytes) into L2 (prefetches never fault). */
AI void prefetch_l2(const unsigned char *p, size_t bytes)
{
    for (size_t i = 0; i < bytes; i += 64)
        _mm_prefetch((const char *)p + i, _MM_HINT_T1);
}

/* ---- Q8_0 rows repacked at load (MC_MAT_PACK_Q8_0_X16, kernels.h) ---- */

/* Q4_K x16: a token's f32 lanes of dx (then as many of sums x dx) for nb
 * super-blocks, by pairs (pack_qact) */
AI size_t q4k_pair_lanes(int nb) { return (size_t)(nb + 1) / 2 * 16; }

/* The tokens of a product against repacked rows, made once per product
 * (pack_qact): per token its values interleaved as the rows' (32 * nb
 * bytes), then for all tokens
 *   Q8_0: -128 times each block's sum (nb int32 a token: vpdpbusd sums
 *         (w + 128) x);
 *   Q4_K: per pair of super-blocks (an odd last one padded with zeros) 16
 *         f32 lanes of its two activation scales (lanes 0..7 the first
 *         super-block's, 8..15 the second's), then as many lanes of the
 *         per-32 sums times their super-block's scale (sum x dx, one f32
 *         rounding): the x16 rows load both instead of widening and
 *         scaling them per row and token. */
static size_t pack_qact_bytes(const mc_mat *w, int n)
{
    if (w->pack == MC_MAT_PACK_Q6_K_X16)
        return mc_avx512_q6_k_x16_act_bytes(w, n);
    size_t k32 = (size_t)(w->cols / MC_QK8_0);
    if (w->pack == MC_MAT_PACK_Q4_K_X16 || w->pack == MC_MAT_PACK_Q5_K_X16) /* as Q8_0's blocks */
        return (size_t)n * (k32 * 32 + 2 * q4k_pair_lanes(w->cols / MC_QK_K) * sizeof(float));
    if (w->pack != MC_MAT_PACK_Q8_0_X16)
        return 0;
    return (size_t)n * k32 * 36;
}

static void pack_qact(const mc_mat *w, const mc_qact *a, void *dst)
{
    if (w->pack == MC_MAT_PACK_Q6_K_X16) {
        mc_avx512_q6_k_x16_act(w, a, dst);
        return;
    }
    int nb = a->kp / MC_QK8_0, full = nb / 16 * 16;
    int32_t *corr = (int32_t *)((int8_t *)dst + (size_t)a->n * nb * 32);
    int q8 = w->pack == MC_MAT_PACK_Q8_0_X16; /* Q4_K's nibbles are unsigned: no corrections */
    if (!q8) {
        int nk = a->kp / MC_QK_K;
        size_t nbe8 = q4k_pair_lanes(nk), fs = 2 * nbe8;
        float *fl = (float *)corr;
        for (int t = 0; t < a->n; t++) {
            float *xdl = fl + (size_t)t * fs, *xsum = xdl + nbe8;
            for (size_t i = 0; i < nbe8; i++) {
                int b = (int)(i / 8);
                xdl[i] = b < nk ? a->d[(size_t)t * nk + b] : 0.0f;
                xsum[i] = b < nk ? (float)a->bsum[(size_t)t * nb + i] * a->d[(size_t)t * nk + b] : 0.0f;
            }
        }
    }
    for (int t = 0; t < a->n; t++) {
        const int8_t *q = a->q + (size_t)t * a->kp;
        int8_t *xi = (int8_t *)dst + (size_t)t * nb * 32;
        for (int b = 0; b < nb; b += 16) {
            int g = b < full ? 16 : 8; /* blocks in the group; a chunk of 4 values each */
            for (int j = 0; j < g; j++) {
                const int8_t *blk = q + (size_t)(b + j) * 32;
                int32_t sum = 0;
                for (int k = 0; k < 8; k++)
                    memcpy(xi + (size_t)b * 32 + (size_t)(k * g + j) * 4, blk + 4 * k, 4);
                for (int i = 0; q8 && i < 32; i++)
                    sum += blk[i];
                if (q8)
                    corr[(size_t)t * nb + b + j] = -128 * sum;
            }
        }
    }
}

/* One repacked row against one token: per group of 16 blocks, 8 vpdpbusd
 * in four chains (one lane per block), one conversion, one multiply of
 * the 16 weight scales by the 16 activation scales, one FMA; the last 8
 * blocks alike in 256 bits. */
AI float q8_0_row1_x16(const unsigned char *row, const int8_t *xi, const int32_t *corr,
                       const float *xd, int nb)
{
    const __m512i z = _mm512_setzero_si512();
    const unsigned char *sc = row + (size_t)32 * nb;
    __m512 acc = _mm512_setzero_ps();
    int full = nb / 16 * 16, b = 0;
    for (; b < full; b += 16) {
        const unsigned char *q = row + (size_t)b * 32;
        const int8_t *x = xi + (size_t)b * 32;
        __m512i i0 = _mm512_loadu_si512((const void *)(corr + b)), i1 = z, i2 = z, i3 = z;
#pragma GCC unroll 2
        for (int k = 0; k < 8; k += 4) {
            i0 = _mm512_dpbusd_epi32(i0, _mm512_loadu_si512((const void *)(q + 64 * k)),
                                     _mm512_load_si512((const void *)(x + 64 * k)));
            i1 = _mm512_dpbusd_epi32(i1, _mm512_loadu_si512((const void *)(q + 64 * k + 64)),
                                     _mm512_load_si512((const void *)(x + 64 * k + 64)));
            i2 = _mm512_dpbusd_epi32(i2, _mm512_loadu_si512((const void *)(q + 64 * k + 128)),
                                     _mm512_load_si512((const void *)(x + 64 * k + 128)));
            i3 = _mm512_dpbusd_epi32(i3, _mm512_loadu_si512((const void *)(q + 64 * k + 192)),
                                     _mm512_load_si512((const void *)(x + 64 * k + 192)));
        }
        __m512i si = _mm512_add_epi32(_mm512_add_epi32(i0, i1), _mm512_add_epi32(i2, i3));
        __m512 wd = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + 2 * (size_t)b)));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(wd, _mm512_loadu_ps(xd + b)), acc);
    }
    if (b < nb) { /* 8 blocks */
        const unsigned char *q = row + (size_t)b * 32;
        const int8_t *x = xi + (size_t)b * 32;
        __m256i i0 = _mm256_loadu_si256((const __m256i *)(corr + b)), i1 = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int k = 0; k < 8; k += 2) {
            i0 = _mm256_dpbusd_epi32(i0, _mm256_loadu_si256((const __m256i *)(q + 32 * k)),
                                     _mm256_load_si256((const __m256i *)(x + 32 * k)));
            i1 = _mm256_dpbusd_epi32(i1, _mm256_loadu_si256((const __m256i *)(q + 32 * k + 32)),
                                     _mm256_load_si256((const __m256i *)(x + 32 * k + 32)));
        }
        __m256 wd = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 2 * (size_t)b)));
        __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(i0, i1)),
                                 _mm256_mul_ps(wd, _mm256_loadu_ps(xd + b)));
        acc = _mm512_add_ps(acc, _mm512_zextps256_ps512(p));
    }
    return _mm512_reduce_add_ps(acc);
}

/* Rows [o, o + R) of w into dst[R][steps][2] (64-byte aligned). */
static void q8_0_pack_rows(const mc_mat *w, int o, int R, int nb, __m512i *dst)
{
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    int steps = (nb + 1) / 2;
    for (int r = 0; r < R; r++) {
        const unsigned char *row = mc_row_ptr(w, o + r);
        __m512i *d = dst + (size_t)r * steps * 2;
        for (int s = 0; s < steps; s++) {
            __m512 sc;
            __m512i wq = q8_0_load2(row + (size_t)s * 68, 2 * s + 1 < nb, &sc);
            d[2 * s] = _mm512_xor_si512(wq, c128);
            d[2 * s + 1] = _mm512_castps_si512(sc);
        }
    }
}

/* Tokens [t0, t0 + T) of a into dst[T][steps][3] (64-byte aligned). */
static void q8_0_pack_tokens(const mc_qact *a, int t0, int T, int nb, __m512i *dst)
{
    const __m512i c128 = _mm512_set1_epi8((char)0x80), z = _mm512_setzero_si512();
    int steps = (nb + 1) / 2;
    for (int t = 0; t < T; t++) {
        const int8_t *xq = a->q + (size_t)(t0 + t) * a->kp;
        const float *xd = a->d + (size_t)(t0 + t) * nb;
        __m512i *d = dst + (size_t)t * steps * 3;
        for (int s = 0; s < steps; s++) {
            int two = 2 * s + 1 < nb;
            __m512i xv = _mm512_maskz_loadu_epi8(two ? ~(__mmask64)0 : (__mmask64)0xffffffffu,
                                                 xq + (size_t)s * 64);
            d[3 * s] = xv;
            d[3 * s + 1] = _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, c128, xv));
            d[3 * s + 2] = _mm512_castps_si512(q8_0_pair(xd[2 * s], two ? xd[2 * s + 1] : 0.0f));
        }
    }
}

/* R repacked rows (wp, steps * 2 vectors apart) x T repacked tokens (xp,
 * steps * 3 apart); y[t*ldy + r] gets the dot products. Every (row, token)
 * goes through the same operations whatever R and T, so an output does not
 * depend on how rows are split among tasks (threads bitwise equal). */
AI void q8_0_tile(int R, int T, const __m512i *wp, const __m512i *xp, int steps, float *y, int ldy)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_setzero_ps();
    for (int s = 0; s < steps; s++) {
        __m512i wu[4];
        __m512 ws[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            wu[r] = _mm512_load_si512((const void *)(wp + ((size_t)r * steps + s) * 2));
            ws[r] = _mm512_castsi512_ps(_mm512_load_si512((const void *)(wp + ((size_t)r * steps + s) * 2 + 1)));
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const __m512i *xt = xp + ((size_t)t * steps + s) * 3;
            __m512i xv = _mm512_load_si512((const void *)xt);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512i p = _mm512_dpbusd_epi32(_mm512_load_si512((const void *)(xt + 1)), wu[r], xv);
                __m512 sc = _mm512_mul_ps(ws[r], _mm512_castsi512_ps(_mm512_load_si512((const void *)(xt + 2))));
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc, acc[r][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            y[(size_t)t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define Q8_0_TILE_T(R, T, wp, xp, steps, y, ldy)                                                   \
    do {                                                                                           \
        switch (T) {                                                                               \
        case 1: q8_0_tile(R, 1, wp, xp, steps, y, ldy); break;                                     \
        case 2: q8_0_tile(R, 2, wp, xp, steps, y, ldy); break;                                     \
        case 3: q8_0_tile(R, 3, wp, xp, steps, y, ldy); break;                                     \
        default: q8_0_tile(R, 4, wp, xp, steps, y, ldy); break;                                    \
        }                                                                                          \
    } while (0)

/* One Q8_0 row against one token (decode) repacked in xp (as
 * q8_0_pack_tokens, made once per product and shared by all rows): per
 * two blocks (68 bytes) one insert, xor, vpdpbusd, conversion, multiply and
 * FMA, the scales of four blocks converted by one vcvtph2ps. Two chains of
 * 16 lanes. */
AI float q8_0_row1(const unsigned char *row, const __m512i *xp, int nb)
{
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    const __m512i sel0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i sel1 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int steps = (nb + 1) / 2, s = 0;
    for (; 2 * s + 4 <= nb; s += 2) { /* four whole blocks */
        const unsigned char *p = row + (size_t)s * 68;
        _mm_prefetch((const char *)p + PF_BYTES, _MM_HINT_T0); /* 136 bytes a step */
        _mm_prefetch((const char *)p + PF_BYTES + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)p + PF_BYTES + 128, _MM_HINT_T0);
        uint16_t h[4];
        for (int k = 0; k < 4; k++)
            memcpy(&h[k], p + 34 * k, 2);
        uint64_t hh = (uint64_t)h[0] | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 32 | (uint64_t)h[3] << 48;
        __m512 f = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)hh)));
#pragma GCC unroll 2
        for (int k = 0; k < 2; k++) {
            const unsigned char *q = p + 68 * k;
            const __m512i *xt = xp + (size_t)(s + k) * 3;
            __m512i wq = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(q + 2))),
                _mm256_loadu_si256((const __m256i *)(q + 36)), 1);
            __m512i pi = _mm512_dpbusd_epi32(_mm512_load_si512((const void *)(xt + 1)),
                                             _mm512_xor_si512(wq, c128), _mm512_load_si512((const void *)xt));
            __m512 sc = _mm512_mul_ps(_mm512_permutexvar_ps(k ? sel1 : sel0, f),
                                      _mm512_castsi512_ps(_mm512_load_si512((const void *)(xt + 2))));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pi), sc, acc[k]);
        }
    }
    for (; s < steps; s++) { /* the last one to three blocks */
        const __m512i *xt = xp + (size_t)s * 3;
        __m512 sw;
        __m512i wq = q8_0_load2(row + (size_t)s * 68, 2 * s + 1 < nb, &sw);
        __m512i pi = _mm512_dpbusd_epi32(_mm512_load_si512((const void *)(xt + 1)),
                                         _mm512_xor_si512(wq, c128), _mm512_load_si512((const void *)xt));
        __m512 sc = _mm512_mul_ps(sw, _mm512_castsi512_ps(_mm512_load_si512((const void *)(xt + 2))));
        acc[s & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pi), sc, acc[s & 1]);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
}

/* R repacked rows x T tokens (pack_qact's values xi, sums corr, scales
 * xd of each): per group of 16 blocks (the last 8 zero-extended), one
 * vpdpbusd chain per row and token over the group's 8 vectors (one lane a
 * block), then one conversion, one multiply of weight by token scales and
 * one FMA. Every (row, token) goes through the same operations whatever R
 * and T (threads bitwise equal). */
AI void q8_0_tile_x16(int R, int T, const unsigned char *const *wr, const int8_t *const *xi,
                      const int32_t *const *corr, const float *const *xd, int nb, float *y,
                      int ldy)
{
    __m512 f[4][3];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++)
            f[r][t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 16) {
        int g16 = b + 16 <= nb;
        __mmask16 m = g16 ? (__mmask16)0xffff : (__mmask16)0x00ff;
        __m512i acc[4][3];
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) {
            __m512i c = _mm512_maskz_loadu_epi32(m, corr[t] + b);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                acc[r][t] = c;
        }
        for (int k = 0; k < 8; k++) {
            __m512i wv[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                wv[r] = g16 ? _mm512_loadu_si512((const void *)(wr[r] + (size_t)b * 32 + 64 * k))
                            : _mm512_zextsi256_si512(_mm256_loadu_si256(
                                  (const __m256i *)(wr[r] + (size_t)b * 32 + 32 * k)));
#pragma GCC unroll 3
            for (int t = 0; t < T; t++) {
                __m512i xv = g16 ? _mm512_load_si512((const void *)(xi[t] + (size_t)b * 32 + 64 * k))
                                 : _mm512_zextsi256_si512(_mm256_load_si256(
                                       (const __m256i *)(xi[t] + (size_t)b * 32 + 32 * k)));
#pragma GCC unroll 4
                for (int r = 0; r < R; r++)
                    acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[r], xv);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const unsigned char *sc = wr[r] + (size_t)32 * nb + 2 * (size_t)b;
            __m512 wd = _mm512_cvtph_ps(g16 ? _mm256_loadu_si256((const __m256i *)sc)
                                            : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)sc)));
#pragma GCC unroll 3
            for (int t = 0; t < T; t++)
                f[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][t]),
                                          _mm512_mul_ps(wd, _mm512_maskz_loadu_ps(m, xd[t] + b)),
                                          f[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++)
            y[(size_t)t * ldy + r] = _mm512_reduce_add_ps(f[r][t]);
}

#define Q8_0_X16_T(R, T, wr, xi, corr, xd, nb, y, ldy)                                            \
    do {                                                                                           \
        switch (T) {                                                                               \
        case 1: q8_0_tile_x16(R, 1, wr, xi, corr, xd, nb, y, ldy); break;                         \
        case 2: q8_0_tile_x16(R, 2, wr, xi, corr, xd, nb, y, ldy); break;                         \
        default: q8_0_tile_x16(R, 3, wr, xi, corr, xd, nb, y, ldy); break;                        \
        }                                                                                          \
    } while (0)

/* Repacked rows [r0, r1) x a->n tokens from pack_qact's repack (always
 * there: the front end allocates it with the quantized activations, and a
 * product whose allocation fails never reaches the rows): one token
 * a row at a time (q8_0_row1_x16), more in tiles of 4 rows x 3 tokens over
 * blocks of rows of about QBLOCK_BYTES (kept in L2 while every group of
 * tokens passes over them). */
static void rows_q8_0_x16(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nb = a->kp / MC_QK8_0;
    const int8_t *xi = a->pack;
    const int32_t *corr = (const int32_t *)(xi + (size_t)a->n * nb * 32);
    if (a->n == 1) { /* decode: each row's bytes prefetched into L2 (PF_Q8_0_ROW) */
        size_t rbx = (size_t)nb * 34;
        for (int o = r0; o < r1; o++) {
            const unsigned char *row = mc_row_ptr(w, o);
            prefetch_l2(row + PF_Q8_0_ROW, rbx);
            prefetch_l2(row + 2 * PF_Q8_0_ROW, rbx); /* asked twice: see PF_Q8_0_ROW */
            y[o] = q8_0_row1_x16(row, xi, corr, a->d, nb);
        }
        return;
    }
    size_t row_bytes = (size_t)nb * 34;
    int rb = (int)(QBLOCK_BYTES / row_bytes) & ~3;
    if (rb < 4)
        rb = 4;
    for (int o0 = r0; o0 < r1; o0 += rb) {
        int nr = r1 - o0 < rb ? r1 - o0 : rb;
        for (int t0 = 0; t0 < a->n; t0 += 3) {
            int T = a->n - t0 < 3 ? a->n - t0 : 3;
            const int8_t *xt[3];
            const int32_t *ct[3];
            const float *dt[3];
            for (int t = 0; t < T; t++) {
                xt[t] = xi + (size_t)(t0 + t) * nb * 32;
                ct[t] = corr + (size_t)(t0 + t) * nb;
                dt[t] = a->d + (size_t)(t0 + t) * nb;
            }
            for (int o = 0; o < nr; o += 4) {
                const unsigned char *wr[4];
                int R = nr - o < 4 ? nr - o : 4;
                for (int r = 0; r < R; r++)
                    wr[r] = mc_row_ptr(w, o0 + o + r);
                float *yt = y + (size_t)t0 * ldy + o0 + o;
                switch (R) {
                case 1: Q8_0_X16_T(1, T, wr, xt, ct, dt, nb, yt, ldy); break;
                case 2: Q8_0_X16_T(2, T, wr, xt, ct, dt, nb, yt, ldy); break;
                case 3: Q8_0_X16_T(3, T, wr, xt, ct, dt, nb, yt, ldy); break;
                default: Q8_0_X16_T(4, T, wr, xt, ct, dt, nb, yt, ldy); break;
                }
            }
        }
    }
}

/* Q8_0 weights: rows [r0, r1) x a->n tokens (header in kern.h). One token
 * reads the rows in place (q8_0_row1); more use the repacked tiles, in
 * scratch allocated and freed here (out of memory: the scalar path). */
static void rows_q8_0(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nb = a->kp / MC_QK8_0;
    int steps = (nb + 1) / 2;
    if (w->pack == MC_MAT_PACK_Q8_0_X16) { /* a->pack: pack_qact's (see rows_q8_0_x16) */
        rows_q8_0_x16(w, a, y, ldy, r0, r1);
        return;
    }
    if (a->n == 1) {
        __m512i *xp = aligned_alloc(64, (size_t)steps * 3 * 64);
        if (!xp) {
            mc_kops_scalar.rows_q8_0(w, a, y, ldy, r0, r1);
            return;
        }
        q8_0_pack_tokens(a, 0, 1, nb, xp);
        for (int o = r0; o < r1; o++)
            y[o] = q8_0_row1(mc_row_ptr(w, o), xp, nb);
        free(xp);
        return;
    }
    size_t row_vecs = (size_t)steps * 2, tok_vecs = (size_t)steps * 3;
    size_t rbz = QBLOCK_BYTES / (row_vecs * 64);
    int rb = rbz < 4 ? 4 : rbz > 4096 ? 4096 : (int)(rbz & ~(size_t)3);
    if (rb > r1 - r0)
        rb = r1 - r0;
    __m512i *wbuf = aligned_alloc(64, ((size_t)rb * row_vecs + 4 * tok_vecs) * 64);
    if (!wbuf) {
        mc_kops_scalar.rows_q8_0(w, a, y, ldy, r0, r1);
        return;
    }
    __m512i *xbuf = wbuf + (size_t)rb * row_vecs;
    for (int o0 = r0; o0 < r1; o0 += rb) {
        int nr = r1 - o0 < rb ? r1 - o0 : rb;
        q8_0_pack_rows(w, o0, nr, nb, wbuf);
        for (int t0 = 0; t0 < a->n; t0 += 4) {
            int T = a->n - t0 < 4 ? a->n - t0 : 4;
            q8_0_pack_tokens(a, t0, T, nb, xbuf);
            for (int o = 0; o < nr; o += 4) {
                const __m512i *wp = wbuf + (size_t)o * row_vecs;
                float *yt = y + (size_t)t0 * ldy + o0 + o;
                switch (nr - o < 4 ? nr - o : 4) {
                case 1: Q8_0_TILE_T(1, T, wp, xbuf, steps, yt, ldy); break;
                case 2: Q8_0_TILE_T(2, T, wp, xbuf, steps, yt, ldy); break;
                case 3: Q8_0_TILE_T(3, T, wp, xbuf, steps, yt, ldy); break;
                default: Q8_0_TILE_T(4, T, wp, xbuf, steps, yt, ldy); break;
                }
            }
        }
    }
    free(wbuf);
}

/* ---- activation quantization ---- */

/* mc_quantize_act_row 16 values at a time, the same float operations on
 * every value (the max of |x| and 0 skipping NaN, amax / 127, 127 / amax,
 * x * is, + 1.5 * 2^23 and the low mantissa bits, the clamp), so the same
 * bytes; the sums of `sub` values by vpsadbw of q + 128 (eight bytes a
 * lane). Multiply and add stay two statements: no contraction to an FMA. */
static void quantize_act(const float *x, int cols, int kp, int blk, int8_t *q, float *d,
                         int16_t *bsum, int sub)
{
    const __m512 magic = _mm512_set1_ps(12582912.f);
    const __m512 absm = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512i mant = _mm512_set1_epi32(0x007fffff), half = _mm512_set1_epi32(0x00400000);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int b0 = 0; b0 < kp; b0 += blk) {
        int len = cols - b0 < blk ? (cols - b0 > 0 ? cols - b0 : 0) : blk;
        __m512 am = _mm512_setzero_ps();
        for (int i = 0; i < len; i += 16) {
            __mmask16 m = len - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - i)) - 1);
            __m512 v = _mm512_and_ps(_mm512_maskz_loadu_ps(m, x + b0 + i), absm);
            am = _mm512_max_ps(v, am); /* a NaN in v keeps am */
        }
        float amax = _mm512_reduce_max_ps(am);
        float sc = amax / 127.0f, is = sc > 0 ? 127.0f / amax : 0.0f;
        d[b0 / blk] = sc;
        __m512 isv = _mm512_set1_ps(is);
        for (int i = 0; i < blk; i += 16) {
            int rem = len - i;
            __mmask16 m = rem >= 16 ? (__mmask16)0xffff
                          : rem > 0 ? (__mmask16)((1u << rem) - 1) : (__mmask16)0;
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + b0 + i), isv);
            v = _mm512_add_ps(v, magic);
            __m512i iv = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(v), mant), half);
            iv = _mm512_maskz_mov_epi32(m, _mm512_min_epi32(_mm512_max_epi32(iv, lo), hi));
            _mm_storeu_si128((__m128i *)(void *)(q + b0 + i), _mm512_cvtepi32_epi8(iv));
        }
    }
    if (!bsum)
        return;
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    int per = 64 / sub, lanes = sub / 8, j = 0; /* sums per 64 bytes; 8-byte lanes per sum */
    for (int j0 = 0; j0 + 64 <= kp; j0 += 64) {
        __m512i u = _mm512_xor_si512(_mm512_loadu_si512((const void *)(q + j0)), c128);
        uint64_t l8[8];
        _mm512_storeu_si512((void *)l8, _mm512_sad_epu8(u, _mm512_setzero_si512()));
        for (int k = 0; k < per; k++, j++) {
            int64_t s = -128 * (int64_t)sub;
            for (int l = 0; l < lanes; l++)
                s += (int64_t)l8[k * lanes + l];
            bsum[j] = (int16_t)s;
        }
    }
    for (; j < kp / sub; j++) { /* a tail shorter than 64 bytes */
        int s = 0;
        for (int i = 0; i < sub; i++)
            s += q[sub * j + i];
        bsum[j] = (int16_t)s;
    }
}

/* ---- Q4_K ---- */

/* Rows per cache block of a Q4_K product of 2 or more tokens: about
 * QBLOCK_BYTES of weights, kept in L2 while every group of 8 tokens (its
 * activations in L1) passes over them. */
AI int rows_per_block(size_t row_bytes)
{
    size_t rb = QBLOCK_BYTES / (row_bytes ? row_bytes : 1);
    return rb < 1 ? 1 : rb > 4096 ? 4096 : (int)rb;
}

/* One Q4_K row against T tokens (xq, xd, bs: the first token's values).
 * Per super-block the scales and nibbles are unpacked once for all T
 * tokens (high nibbles by a variable shift of the upper half), then
 * vpmaddubsw (nibbles x int8) and vpdpwssd (x 6-bit sub-block scale,
 * accumulated in int32: exact) per 64 bytes and token; the mins through
 * vpmaddwd of m_j and the per-32 activation sums, subtracted in the same
 * f32 accumulator. */
AI void q4_k_row(int T, int five, const unsigned char *row, const int8_t *xq, const float *xd,
                 const int16_t *bs, int kp, int nb, const __m512i *sidx, float *y, int ldy)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), one = _mm512_set1_epi8(1);
    const __m512i shv = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    const size_t bbytes = five ? sizeof(mc_block_q5_k) : sizeof(mc_block_q4_k);
    __m512 acc[8];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const unsigned char *blk = row + (size_t)b * bbytes;
        if (T == 1) /* decode: the row stream */
            q4_k_prefetch_block(blk);
        /* Q5_K: the fifth bits (bit 2c of qh[l] for value 64c + l, 2c + 1 for 64c + 32 + l)
         * in both halves, for the lower's and the upper's shifts */
        __m512i qhb = five ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)))
                           : _mm512_setzero_si512();
        uint32_t hh;
        memcpy(&hh, blk, 4);
        __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)hh)); /* d, dmin */
        __m512 dv = _mm512_broadcastss_ps(dd), mv = _mm512_broadcastss_ps(_mm_movehdup_ps(dd));
        __m128i sm = q4_k_scales(blk + 4);
        __m512i sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm));
        __m128i m16 = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(sm, sm));
        const unsigned char *qs = blk + (five ? 48 : 16);
        __m512i sumi[8];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            sumi[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            /* low nibbles of 32 bytes in the lower half, high nibbles in the upper */
            __m512i q = _mm512_and_si512(
                _mm512_srlv_epi64(_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c))),
                                  shv),
                m4);
            if (five) { /* + 16 x the fifth bit: bit 2c (lower half), 2c + 1 (upper) */
                __m512i sh = _mm512_set_epi64(2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c,
                                              2 * c, 2 * c, 2 * c);
                q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(qhb, sh), one), 4));
            }
            __m512i s16 = _mm512_permutexvar_epi16(sidx[c], sc);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                __m512i xv = _mm512_loadu_si512((const void *)(xq + (size_t)t * kp + (size_t)b * MC_QK_K + 64 * c));
                sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(q, xv), s16);
            }
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            __m512 dx = _mm512_set1_ps(xd[(size_t)t * nb + b]); /* a broadcast load */
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dv, dx), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
            __m128i mp = _mm_madd_epi16(
                m16, _mm_loadu_si128((const __m128i *)(bs + (size_t)t * (kp / 32) + 8 * (size_t)b)));
            acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(mv, dx),
                                      _mm512_zextps128_ps512(_mm_cvtepi32_ps(mp)), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        y[(size_t)t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

/* One MC_MAT_PACK_Q4_K_X16 row against T tokens (xi: the first token's
 * interleaved values, xs apart; xf its lanes of pack_qact's Q4_K floats, fs
 * apart: per pair of super-blocks 16 lanes of dx, then behind all of them
 * 16 lanes of sub-block sums times dx, both read straight into the
 * products). Per pair of super-blocks (16 sub-block lanes; an odd last one
 * in the lower 8): the nibbles as 8 vectors (4 loads, 4 masks, 4 shifts and
 * masks), d x scale and dmin x min per lane once for all tokens; per token
 * 8 vpdpbusd (unsigned nibbles x int8: each lane the exact sum of its
 * sub-block) in two chains, then acc += S (d sc dx) - (dmin m) (X dx) per
 * lane, X the sub-block's activation sum. */
AI void q4_k_row_x16(int T, int five, const unsigned char *row, const int8_t *xi, size_t xs,
                     const float *xf, size_t fs, int nb, float *y, int ldy)
{
    const size_t nbe8 = q4k_pair_lanes(nb); /* the sums' offset in a token's floats */
    const __m512i m4 = _mm512_set1_epi8(0x0f), z = _mm512_setzero_si512();
    const __m512i v16 = _mm512_set1_epi8(16);
    const __m256i didx = _mm256_set_epi16(8, 8, 8, 8, 8, 8, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i midx = _mm256_set_epi16(9, 9, 9, 9, 9, 9, 9, 9, 1, 1, 1, 1, 1, 1, 1, 1);
    const unsigned char *hdr = row + (size_t)nb * (five ? 160 : 128);
    __m512 acc[8];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        int two = b + 1 < nb; /* a pair; else the last block, lanes 0..7 */
        const unsigned char *q = row + (size_t)b * 128;
        /* Q5_K: the pair's fifth bits, 8 masks of 64 (an odd last block: of 32) */
        const unsigned char *mk = row + (size_t)nb * 128 + (size_t)b / 2 * 64;
        __m512i v[8];
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            __m512i n = two ? _mm512_loadu_si512((const void *)(q + 64 * p))
                            : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(q + 32 * p)));
            v[2 * p] = _mm512_and_si512(n, m4);
            /* few tokens: the high nibbles in place (16 x the value; the s1 chain's sum
             * is then 16 x the sub-block's, at most 16 x 16 x 15 x 128 in a lane, and
             * shifted back exactly once per token), else moved down once for all; Q5_K
             * always moved down (its five bits would not fit in place) */
            v[2 * p + 1] = T <= 3 && !five ? _mm512_andnot_si512(m4, n)
                                           : _mm512_and_si512(_mm512_srli_epi16(n, 4), m4);
            if (five) {
                __mmask64 k0, k1;
                if (two) {
                    uint64_t u0, u1;
                    memcpy(&u0, mk + 16 * p, 8);
                    memcpy(&u1, mk + 16 * p + 8, 8);
                    k0 = _cvtu64_mask64(u0);
                    k1 = _cvtu64_mask64(u1);
                } else {
                    uint32_t u0, u1;
                    memcpy(&u0, mk + 8 * p, 4);
                    memcpy(&u1, mk + 8 * p + 4, 4);
                    k0 = _cvtu64_mask64(u0);
                    k1 = _cvtu64_mask64(u1);
                }
                v[2 * p] = _mm512_mask_add_epi8(v[2 * p], k0, v[2 * p], v16);
                v[2 * p + 1] = _mm512_mask_add_epi8(v[2 * p + 1], k1, v[2 * p + 1], v16);
            }
        }
        /* both headers in one vector, one per 128-bit lane (an odd last one: zeros in
         * the upper lane; the last header ends the row: nothing past it is read) */
        const unsigned char *h = hdr + (size_t)b * 16;
        __m256i hv = two ? _mm256_loadu_si256((const __m256i *)h)
                         : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)h));
        /* the scales and mins: bytes 0..7 of the permuted vector the 16 scales, 8..15 the mins */
        __m256i sm = _mm256_permute4x64_epi64(q4_k_scales_v2(_mm256_srli_si256(hv, 4)),
                                              _MM_SHUFFLE(3, 1, 2, 0));
        __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(sm)));
        __m512 mn = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(sm, 1)));
        /* d and dmin of each super-block (f16 words 0 and 1 of its lane) in its 8 lanes */
        __m512 dl = _mm512_cvtph_ps(_mm256_permutexvar_epi16(didx, hv));
        __m512 ml = _mm512_cvtph_ps(_mm256_permutexvar_epi16(midx, hv));
        __m512 wa = _mm512_mul_ps(dl, sc), wb = _mm512_mul_ps(ml, mn);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const int8_t *x = xi + (size_t)t * xs + (size_t)b * 256;
            __m512i s0 = z, s1 = z;
#pragma GCC unroll 4
            for (int k = 0; k < 8; k += 2) {
                __m512i x0 = two ? _mm512_load_si512((const void *)(x + 64 * k))
                                 : _mm512_zextsi256_si512(_mm256_load_si256((const __m256i *)(x + 32 * k)));
                __m512i x1 = two ? _mm512_load_si512((const void *)(x + 64 * k + 64))
                                 : _mm512_zextsi256_si512(_mm256_load_si256((const __m256i *)(x + 32 * k + 32)));
                s0 = _mm512_dpbusd_epi32(s0, v[k], x0);
                s1 = _mm512_dpbusd_epi32(s1, v[k + 1], x1);
            }
            const float *f = xf + (size_t)t * fs + (size_t)b * 8;
            __m512 xdl = _mm512_load_ps(f), xsum = _mm512_load_ps(f + nbe8);
            if (T <= 3 && !five)
                s1 = _mm512_srai_epi32(s1, 4);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), _mm512_mul_ps(wa, xdl), acc[t]);
            acc[t] = _mm512_fnmadd_ps(xsum, wb, acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        y[(size_t)t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

/* Q4_K (five 0) or Q5_K (five 1) rows, either layout. */
AI void rows_q45_k(int five, const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nb = a->kp / MC_QK_K, ns = a->kp / 32;
    const size_t bbytes = five ? sizeof(mc_block_q5_k) : sizeof(mc_block_q4_k);
    /* word index vectors: words 0..15 take scale 2c, words 16..31 scale 2c+1 */
    __m512i sidx[4];
    for (int c = 0; c < 4; c++)
        sidx[c] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)(2 * c))),
                                     _mm256_set1_epi16((short)(2 * c + 1)), 1);
    int rb = a->n == 1 ? r1 - r0 : rows_per_block((size_t)nb * bbytes);
    /* a->pack: pack_qact's interleave */
    int x16 = w->pack == (five ? MC_MAT_PACK_Q5_K_X16 : MC_MAT_PACK_Q4_K_X16);
    size_t xs = (size_t)(a->kp / 32) * 32;      /* a token's interleaved values */
    size_t fs = 2 * q4k_pair_lanes(nb);         /* and its floats (pack_qact) */
/* row o of either layout against T tokens from t0 */
#define Q4K_ROW(T)                                                                                 \
    (x16 ? q4_k_row_x16(T, five, row, xi, xs, xf, fs, nb, yt + o, ldy)                            \
         : q4_k_row(T, five, row, xq, xd, bs, a->kp, nb, sidx, yt + o, ldy))
    for (int o0 = r0; o0 < r1; o0 += rb) {
        int o1 = r1 - o0 < rb ? r1 : o0 + rb;
        for (int t0 = 0; t0 < a->n; t0 += 8) {
            const int8_t *xq = a->q + (size_t)t0 * a->kp;
            const int8_t *xi = x16 ? (const int8_t *)a->pack + (size_t)t0 * xs : NULL;
            const float *xf = x16 ? (const float *)((const int8_t *)a->pack + (size_t)a->n * xs) +
                                        (size_t)t0 * fs
                                  : NULL;
            const float *xd = a->d + (size_t)t0 * nb;
            const int16_t *bs = a->bsum + (size_t)t0 * ns;
            float *yt = y + (size_t)t0 * ldy;
            for (int o = o0; o < o1; o++) {
                const unsigned char *row = mc_row_ptr(w, o);
                if (x16 && a->n == 1) /* decode: the row's bytes into L2 PF_Q4_K_ROW ahead */
                    prefetch_l2(row + PF_Q4_K_ROW, (size_t)nb * bbytes);
                switch (a->n - t0 < 8 ? a->n - t0 : 8) {
                case 1: Q4K_ROW(1); break;
                case 2: Q4K_ROW(2); break;
                case 3: Q4K_ROW(3); break;
                case 4: Q4K_ROW(4); break;
                case 5: Q4K_ROW(5); break;
                case 6: Q4K_ROW(6); break;
                case 7: Q4K_ROW(7); break;
                default: Q4K_ROW(8); break;
                }
            }
        }
    }
#undef Q4K_ROW
}

static void rows_q4_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    rows_q45_k(0, w, a, y, ldy, r0, r1);
}

static void rows_q5_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    rows_q45_k(1, w, a, y, ldy, r0, r1);
}

/* ---- vector math ---- */

/* expf to ~2 ulp (Cephes polynomial); 0 below -87.3, +inf above 88.37. */
AI __m512 exp16(__m512 x)
{
    const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-87.3365447504f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    p = _mm512_scalef_ps(p, fx);
    p = _mm512_mask_mov_ps(p, _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), _mm512_set1_ps(INFINITY));
    p = _mm512_mask_mov_ps(p, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
    return _mm512_maskz_mov_ps((__mmask16)~under, p);
}

/* 16 values of a row of f32 (BF 0) or of bf16 (BF 1, widened: exact)
 * from element i; masked: only the lanes of k, zeros elsewhere. */
AI __m512 row_ld(const void *r, int i, int BF)
{
    if (BF)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)r + i))), 16));
    return _mm512_loadu_ps((const float *)r + i);
}
AI __m512 row_ldm(__mmask16 k, const void *r, int i, int BF)
{
    if (BF)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, (const uint16_t *)r + i)), 16));
    return _mm512_maskz_loadu_ps(k, (const float *)r + i);
}

/* a . b, b a row of f32 or (BF) bf16 */
AI float dot_t(int BF, const float *a, const void *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
           s3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), row_ld(b, i, BF), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), row_ld(b, i + 16, BF), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), row_ld(b, i + 32, BF), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), row_ld(b, i + 48, BF), s3);
    }
    for (; i + 16 <= n; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), row_ld(b, i, BF), s0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), row_ldm(m, b, i, BF), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static float dot(const float *a, const float *b, int n) { return dot_t(0, a, b, n); }

static void axpy(float *y, float a, const float *x, int n)
{
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m,
                              _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i),
                                              _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* The sums of the lanes of t0..t3, each added as _mm512_reduce_add_ps
 * does (halves of 256, of 128 bits, lanes 2 apart, then 1: the same pairs,
 * so the same bits), the four at once: 14 operations where four
 * reductions take about 32. */
AI __m128 reduce_add4(__m512 t0, __m512 t1, __m512 t2, __m512 t3)
{
    /* lanes j and j + 8: t0's 8 sums then t1's; t2's then t3's */
    __m512 a01 = _mm512_add_ps(_mm512_shuffle_f32x4(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 a23 = _mm512_add_ps(_mm512_shuffle_f32x4(t2, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(t2, t3, _MM_SHUFFLE(3, 2, 3, 2)));
    /* lanes j and j + 4: 128-bit lane k holds t_k's 4 sums */
    __m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(a01, a23, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(a01, a23, _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 c = _mm512_add_ps(b, _mm512_permute_ps(b, _MM_SHUFFLE(1, 0, 3, 2))); /* j, j + 2 */
    __m512 d = _mm512_add_ps(c, _mm512_permute_ps(c, _MM_SHUFFLE(2, 3, 0, 1))); /* j, j + 1 */
    return _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), d));
}

/* dot() of four vectors against one (f32, or BF: bf16 widened), each with
 * dot's accumulators, order and reduction: the same bits. */
AI void dot4(int BF, const float *const *a, const void *b, int n, float *out)
{
    __m512 s[4][4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            s[j][k] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 b0 = row_ld(b, i, BF), b1 = row_ld(b, i + 16, BF), b2 = row_ld(b, i + 32, BF),
               b3 = row_ld(b, i + 48, BF);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            s[j][0] = _mm512_fmadd_ps(_mm512_loadu_ps(a[j] + i), b0, s[j][0]);
            s[j][1] = _mm512_fmadd_ps(_mm512_loadu_ps(a[j] + i + 16), b1, s[j][1]);
            s[j][2] = _mm512_fmadd_ps(_mm512_loadu_ps(a[j] + i + 32), b2, s[j][2]);
            s[j][3] = _mm512_fmadd_ps(_mm512_loadu_ps(a[j] + i + 48), b3, s[j][3]);
        }
    }
    for (; i + 16 <= n; i += 16) {
        __m512 b0 = row_ld(b, i, BF);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            s[j][0] = _mm512_fmadd_ps(_mm512_loadu_ps(a[j] + i), b0, s[j][0]);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 b0 = row_ldm(m, b, i, BF);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            s[j][1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a[j] + i), b0, s[j][1]);
    }
    __m512 t[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
        t[j] = _mm512_add_ps(_mm512_add_ps(s[j][0], s[j][1]), _mm512_add_ps(s[j][2], s[j][3]));
    _mm_storeu_ps(out, reduce_add4(t[0], t[1], t[2], t[3]));
}

AI void dot_many_t(int BF, const float *const *a, int m, const void *b, int n, float *out)
{
    int j = 0;
    for (; j + 4 <= m; j += 4)
        dot4(BF, a + j, b, n, out + j);
    for (; j < m; j++)
        out[j] = dot_t(BF, a[j], b, n);
}

static void dot_many(const float *const *a, int m, const float *b, int n, float *out)
{
    dot_many_t(0, a, m, b, n, out);
}

static void dot_many_bf16(const float *const *a, int m, const uint16_t *b, int n, float *out)
{
    dot_many_t(1, a, m, b, n, out);
}

/* mc_wsum_rows for outputs [j0, j0 + MJ), MJ <= 8 (constants after
 * inlining): rows in tiles of mc_wsum_tile(n); per tile and 16 values the MJ
 * accumulators stay in registers over the tile's rows (axpy's FMA per
 * element, rows in order; with SKIP a zero weight leaves its accumulator
 * as it is) and go through y between tiles (stored and reloaded: the same
 * bits). Each pass over a tile asks for one line of every row of the next
 * tile (into L1) and of the tile three ahead (into L2), so the rows (a slot
 * apart in the paged cache, which the hardware prefetchers do not follow)
 * arrive before they are summed. On the 2-core Zen 4 VM, 8 heads x 1024
 * value rows of 128 floats 2 KiB apart, from memory: 135 -> 46 us. */
AI void wsum_block(int BF, int MJ, int SKIP, float *const *y, int j0, const float *a, int m,
                   const void *const *rows, int S, int n)
{
    int ts = mc_wsum_tile(n);
    size_t es = BF ? 2 : 4; /* bytes per value */
    for (int i0 = 0; i0 < S || i0 == 0; i0 += ts) { /* S == 0: zeros */
        int i1 = S - i0 < ts ? S : i0 + ts;
        int pf1 = S - i1 < ts ? S - i1 : ts; /* rows of the next tile, of the one 3 ahead */
        int pf3 = S - i1 - 2 * ts < 0 ? 0 : S - i1 - 2 * ts < ts ? S - i1 - 2 * ts : ts;
        for (int e = 0; e < n; e += 16) {
            __mmask16 k = n - e >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - e)) - 1);
            __m512 acc[8];
#pragma GCC unroll 8
            for (int j = 0; j < MJ; j++)
                acc[j] = i0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(k, y[j0 + j] + e);
            const float *w = a + (size_t)i0 * m + j0;
            for (int i = i0; i < i1; i++, w += m) {
                if (i - i0 < pf1)
                    _mm_prefetch((const char *)rows[i + ts] + e * es, _MM_HINT_T0);
                if (i - i0 < pf3)
                    _mm_prefetch((const char *)rows[i + 3 * ts] + e * es, _MM_HINT_T1);
                __m512 xv = row_ldm(k, rows[i], e, BF);
#pragma GCC unroll 8
                for (int j = 0; j < MJ; j++) {
                    if (SKIP) {
                        __mmask16 on = w[j] != 0.0f ? (__mmask16)0xffff : (__mmask16)0;
                        acc[j] = _mm512_mask3_fmadd_ps(_mm512_set1_ps(w[j]), xv, acc[j], on);
                    } else {
                        acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), xv, acc[j]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int j = 0; j < MJ; j++)
                _mm512_mask_storeu_ps(y[j0 + j] + e, k, acc[j]);
        }
    }
}

#define WSUM_CASE(BF, MJ)                                                                          \
    case MJ:                                                                                       \
        if (skip_zero)                                                                             \
            wsum_block(BF, MJ, 1, y, j0, a, m, rows, S, n);                                        \
        else                                                                                       \
            wsum_block(BF, MJ, 0, y, j0, a, m, rows, S, n);                                        \
        break

#define WSUM_ROWS(NAME, BF, RT)                                                                    \
    static void NAME(float *const *y, int m, const float *a, const RT *const *rt, int S, int n,    \
                     int skip_zero)                                                                \
    {                                                                                              \
        const void *const *rows = (const void *const *)rt;                                         \
        for (int j0 = 0; j0 < m; j0 += 8) {                                                        \
            switch (m - j0 < 8 ? m - j0 : 8) {                                                     \
                WSUM_CASE(BF, 1);                                                                  \
                WSUM_CASE(BF, 2);                                                                  \
                WSUM_CASE(BF, 3);                                                                  \
                WSUM_CASE(BF, 4);                                                                  \
                WSUM_CASE(BF, 5);                                                                  \
                WSUM_CASE(BF, 6);                                                                  \
                WSUM_CASE(BF, 7);                                                                  \
                WSUM_CASE(BF, 8);                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

WSUM_ROWS(wsum_rows, 0, float)
WSUM_ROWS(wsum_rows_bf16, 1, uint16_t)

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        s0 = _mm512_fmadd_pd(a, a, s0);
        s1 = _mm512_fmadd_pd(b, b, s1);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (; i < n; i++)
        ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    __m512 iv = _mm512_set1_ps(inv);
    i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), iv);
        if (w)
            v = _mm512_mul_ps(v, _mm512_loadu_ps(w + i));
        _mm512_storeu_ps(out + i, v);
    }
    for (; i < n; i++)
        out[i] = w ? x[i] * inv * w[i] : x[i] * inv;
}

static void softmax(float *x, int n)
{
    __m512 mv = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
    float mx = _mm512_reduce_max_ps(mv);
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    __m512 mxv = _mm512_set1_ps(mx), sv = _mm512_setzero_ps();
    i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mxv));
        _mm512_storeu_ps(x + i, e);
        sv = _mm512_add_ps(sv, e);
    }
    double s = _mm512_reduce_add_ps(sv);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mxv));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(x + i, m, e);
        s += _mm512_reduce_add_ps(e);
    }
    __m512 inv = _mm512_set1_ps((float)(1.0 / s));
    i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    for (; i < n; i++)
        x[i] *= (float)(1.0 / s);
}

static void rope(float *v, int dim, int interleaved, const float *cos, const float *sin)
{
    int half = dim / 2, i = 0;
    if (!interleaved) {
        for (; i + 16 <= half; i += 16) {
            __m512 a = _mm512_loadu_ps(v + i), b = _mm512_loadu_ps(v + i + half);
            __m512 c = _mm512_loadu_ps(cos + i), s = _mm512_loadu_ps(sin + i);
            _mm512_storeu_ps(v + i, _mm512_fmsub_ps(a, c, _mm512_mul_ps(b, s)));
            _mm512_storeu_ps(v + i + half, _mm512_fmadd_ps(b, c, _mm512_mul_ps(a, s)));
        }
    } else {
        const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        for (; i + 8 <= half; i += 8) {
            __m512 x = _mm512_loadu_ps(v + 2 * i);
            __m512 c = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(cos + i)));
            __m512 s = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(sin + i)));
            __m512 sw = _mm512_permute_ps(x, 0xB1); /* (x1, x0) per pair */
            /* even: x0*c - x1*s; odd: x1*c + x0*s */
            _mm512_storeu_ps(v + 2 * i, _mm512_fmaddsub_ps(x, c, _mm512_mul_ps(sw, s)));
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
    const __m512 one = _mm512_set1_ps(1.0f);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(g + i);
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_storeu_ps(g + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)),
                                              _mm512_loadu_ps(u + i)));
    }
    for (; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static double fma_burn(long iters)
{
    __m512 a[12];
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < 12; j++)
        a[j] = _mm512_set1_ps(1.0f + (float)j);
    for (long k = 0; k < iters; k++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++)
            a[j] = _mm512_fmadd_ps(a[j], m, c);
    }
    __m512 s = a[0];
    for (int j = 1; j < 12; j++)
        s = _mm512_add_ps(s, a[j]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return 2.0 * 16.0 * 12.0 * (double)iters;
}

/* The int8 peak of the products above: 12 independent vpdpbusd chains (64
 * multiply-adds each); returns int8 operations (2 per multiply-add). */
static double int8_burn(long iters)
{
    __m512i a[12];
    const __m512i u = _mm512_set1_epi8(3), v = _mm512_set1_epi8(-2);
    for (int j = 0; j < 12; j++)
        a[j] = _mm512_set1_epi32(j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++)
            a[j] = _mm512_dpbusd_epi32(a[j], u, v);
        __asm__ __volatile__("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]));
    }
    __m512i s = a[0];
    for (int j = 1; j < 12; j++)
        s = _mm512_add_epi32(s, a[j]);
    volatile int sink = _mm512_reduce_add_epi32(s);
    (void)sink;
    return 2.0 * 64.0 * 12.0 * (double)iters;
}

static uint64_t stream_sum(const void *p, size_t bytes)
{
    const __m512i *v = p;
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (size_t i = 0; i < bytes / 64; i += 4) {
        a = _mm512_add_epi64(a, _mm512_load_si512(v + i));
        b = _mm512_add_epi64(b, _mm512_load_si512(v + i + 1));
        c = _mm512_add_epi64(c, _mm512_load_si512(v + i + 2));
        d = _mm512_add_epi64(d, _mm512_load_si512(v + i + 3));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d)));
}

const mc_kops mc_kops_avx512 = {
    .name = "avx512",
    .widen = widen,
    .rows_f = rows_f,
    .rows_q8_0 = rows_q8_0,
    .rows_q4_k = rows_q4_k,
    .rows_q6_k = mc_avx512_rows_q6_k,
    .rows_q5_k = rows_q5_k,
    .quantize_act = quantize_act,
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
    .int8_burn = int8_burn,
#ifdef MC_HAVE_AVX512BF16
    .bf16_burn = mc_avx512bf16_burn, /* amx replaces it with its tiles' with AMX-BF16 */
#endif
    .stream_sum = stream_sum,
    .pack_qact_bytes = pack_qact_bytes,
    .pack_qact = pack_qact,
    .pack_f_bytes = pack_f_bytes,
    .pack_f = pack_f,
    .rows_f_packed = rows_bf16_direct,
    .packs_q8_0 = 1,
    .packs_q6_k = 1,
    .packs_q4_k = 1,
    .packs_q5_k = 1,
};
