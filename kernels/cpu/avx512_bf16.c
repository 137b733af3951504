/* cpu/avx512_bf16.c - BF16 weights against one token with AVX512-BF16's
 * vdpbf16ps (two bf16 products added into each f32 lane), compiled with the
 * avx512 path's flags plus -mavx512bf16 and called by that path's decode
 * (avx512.c stream_rows) when the CPU has the instruction (mc_kern_bf16dp).
 *
 * The token stays exact: x is split once per call into three bf16 parts,
 * x = hi + mid + lo (each part the top 16 bits of what is left, so every
 * subtraction is exact and the last part holds the last 8 bits of the
 * mantissa exactly), and each part meets the weights in its own
 * vdpbf16ps. bf16 x bf16 products are exact in f32, so the result is the
 * f32 dot product summed in another order (as every path's), at one
 * instruction per 32 weights and part instead of a widening and an FMA per
 * 16 weights. A non-finite x goes whole into hi. (vdpbf16ps treats
 * denormal inputs and results as zero: below 1.2e-38.) With activations
 * rounded to bf16 (mc_kernels_set_bf16_acts) the token is its hi part: one
 * instruction per 32 weights. */
#include "kern.h"

#include <immintrin.h>
#include <stdlib.h>

/* x[K] -> hi / mid / lo [K32] (K32: K rounded up to 32, zeros past K) */
static void split3(const float *x, int K, int K32, uint16_t *hi, uint16_t *mid, uint16_t *lo)
{
    const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
    for (int k = 0; k < K32; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xffff
                      : K - k > 0 ? (__mmask16)((1u << (K - k)) - 1) : (__mmask16)0;
        __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        __m512 h = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), top));
        __m512 r = _mm512_sub_ps(v, h);                             /* exact; NaN when v is not finite */
        r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r);
        __m512 md = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r), top));
        __m512 l = _mm512_sub_ps(r, md);                            /* exact, 8 significant bits */
        _mm256_storeu_si256((__m256i *)(hi + k),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(h), 16)));
        _mm256_storeu_si256((__m256i *)(mid + k),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(md), 16)));
        _mm256_storeu_si256((__m256i *)(lo + k),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(l), 16)));
    }
}

/* x[K] already rounded to bf16 (mc_kern_bf16_acts: its top halves are the
 * whole values) -> dst[K32] (zeros past K; dst 32-byte aligned) */
static void top_halves(const float *x, int K, int K32, uint16_t *dst)
{
    for (int k = 0; k < K32; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xffff
                      : K - k > 0 ? (__mmask16)((1u << (K - k)) - 1) : (__mmask16)0;
        __m512i v = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, x + k));
        _mm256_store_si256((__m256i *)(dst + k), _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
    }
}

#define BH(v) ((__m512bh)(v))

/* The decode rows' prefetch for the 64 weights (128 bytes) at w: into L2
 * PF_L2_BYTES ahead, and asked again at half that (kern.h). */
static inline __attribute__((always_inline)) void prefetch_step(const uint16_t *w)
{
    _mm_prefetch((const char *)w + PF_L2_BYTES, _MM_HINT_T1);
    _mm_prefetch((const char *)w + PF_L2_BYTES + 64, _MM_HINT_T1);
    _mm_prefetch((const char *)w + PF_L2_BYTES / 2, _MM_HINT_T1);
    _mm_prefetch((const char *)w + PF_L2_BYTES / 2 + 64, _MM_HINT_T1);
}

/* One stored row of K bf16 weights against the split token. Six chains (two
 * per part); the last partial 32 weights by a masked load (nothing past the
 * row is read). */
static float row1(const uint16_t *w, const uint16_t *xh, const uint16_t *xm, const uint16_t *xl,
                  int K)
{
    __m512 h0 = _mm512_setzero_ps(), h1 = h0, m0 = h0, m1 = h0, l0 = h0, l1 = h0;
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        prefetch_step(w + k);
        __m512i w0 = _mm512_loadu_si512((const void *)(w + k));
        __m512i w1 = _mm512_loadu_si512((const void *)(w + k + 32));
        h0 = _mm512_dpbf16_ps(h0, BH(w0), BH(_mm512_loadu_si512((const void *)(xh + k))));
        m0 = _mm512_dpbf16_ps(m0, BH(w0), BH(_mm512_loadu_si512((const void *)(xm + k))));
        l0 = _mm512_dpbf16_ps(l0, BH(w0), BH(_mm512_loadu_si512((const void *)(xl + k))));
        h1 = _mm512_dpbf16_ps(h1, BH(w1), BH(_mm512_loadu_si512((const void *)(xh + k + 32))));
        m1 = _mm512_dpbf16_ps(m1, BH(w1), BH(_mm512_loadu_si512((const void *)(xm + k + 32))));
        l1 = _mm512_dpbf16_ps(l1, BH(w1), BH(_mm512_loadu_si512((const void *)(xl + k + 32))));
    }
    for (; k < K; k += 32) {
        __mmask32 m = K - k >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (K - k)) - 1);
        __m512i w0 = _mm512_maskz_loadu_epi16(m, w + k);
        h0 = _mm512_dpbf16_ps(h0, BH(w0), BH(_mm512_loadu_si512((const void *)(xh + k))));
        m0 = _mm512_dpbf16_ps(m0, BH(w0), BH(_mm512_loadu_si512((const void *)(xm + k))));
        l0 = _mm512_dpbf16_ps(l0, BH(w0), BH(_mm512_loadu_si512((const void *)(xl + k))));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(l0, l1), _mm512_add_ps(m0, m1));
    return _mm512_reduce_add_ps(_mm512_add_ps(s, _mm512_add_ps(h0, h1)));
}

/* The same against a token already rounded to bf16 (mc_kern_bf16_acts: the
 * front end rounded it, so its top 16 bits are the whole value): one
 * vdpbf16ps per 32 weights, two chains. */
static float row1_bf16(const uint16_t *w, const uint16_t *xh, int K)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        prefetch_step(w + k);
        a0 = _mm512_dpbf16_ps(a0, BH(_mm512_loadu_si512((const void *)(w + k))),
                              BH(_mm512_loadu_si512((const void *)(xh + k))));
        a1 = _mm512_dpbf16_ps(a1, BH(_mm512_loadu_si512((const void *)(w + k + 32))),
                              BH(_mm512_loadu_si512((const void *)(xh + k + 32))));
    }
    for (; k < K; k += 32) {
        __mmask32 m = K - k >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (K - k)) - 1);
        a0 = _mm512_dpbf16_ps(a0, BH(_mm512_maskz_loadu_epi16(m, w + k)),
                              BH(_mm512_loadu_si512((const void *)(xh + k))));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

int mc_avx512bf16_rows1(const mc_mat *w, const float *x, float *y, int r0, int r1)
{
    int K = w->cols, K32 = (K + 31) / 32 * 32;
    if (mc_kern_bf16_acts) {
        uint16_t *xh = aligned_alloc(64, (size_t)K32 * sizeof *xh + 64);
        if (!xh)
            return 0;
        top_halves(x, K, K32, xh);
        for (int o = r0; o < r1; o++)
            y[o] = row1_bf16((const uint16_t *)w->data + (size_t)o * w->row_stride, xh, K);
        free(xh);
        return 1;
    }
    uint16_t *buf = aligned_alloc(64, (size_t)K32 * 3 * sizeof *buf + 64);
    if (!buf)
        return 0; /* the caller's widening loop needs no memory */
    uint16_t *xh = buf, *xm = buf + K32, *xl = buf + 2 * (size_t)K32;
    split3(x, K, K32, xh, xm, xl);
    for (int o = r0; o < r1; o++)
        y[o] = row1((const uint16_t *)w->data + (size_t)o * w->row_stride, xh, xm, xl, K);
    free(buf);
    return 1;
}

/* ---- against 4 or more tokens rounded to bf16 ----
 *
 * The rows as stored and the tokens as bf16 meet in vdpbf16ps directly:
 * per 32 columns of a 4 x 4 tile, 4 weight loads, 4 token loads and 16
 * instructions of 32 multiply-adds each (the f32 tiles of avx512.c need 8
 * token loads, 8 integer operations and 32 FMAs of 16). Each (row, token)
 * keeps 16 lane sums, added at the end. */

void mc_avx512bf16_pack_tokens(const mc_mat *w, const float *x, int n, int ldx, void *dst,
                               int tt0, int tt1)
{
    int K = w->cols;
    size_t k32 = ((size_t)K + 31) / 32 * 32;
    int t1 = tt1 * MC_FPACK_TOKENS < n ? tt1 * MC_FPACK_TOKENS : n;
    for (int t = tt0 * MC_FPACK_TOKENS; t < t1; t++)
        top_halves(x + (size_t)t * ldx, K, (int)k32, (uint16_t *)dst + (size_t)t * k32);
}

static inline __attribute__((always_inline)) void
dp_tile(int T, const uint16_t *const *wr, int R, const uint16_t *xp, size_t k32, int K, float *y,
        int ldy)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_setzero_ps();
    for (int c = 0; c < (int)k32; c += 32) {
        int left = K - c; /* the last chunk by a masked load (nothing past the row is read) */
        __mmask32 m = left >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << left) - 1);
        __m512i xv[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            xv[t] = _mm512_load_si512((const void *)(xp + (size_t)t * k32 + c));
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512i v = left >= 32 ? _mm512_loadu_si512((const void *)(wr[r] + c))
                                   : _mm512_maskz_loadu_epi16(m, wr[r] + c);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                acc[r][t] = _mm512_dpbf16_ps(acc[r][t], BH(v), BH(xv[t]));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            if (r < R)
                y[(size_t)t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

/* mc_bf16_tile_fn over the bf16 pack (kpad: half of k32, in floats) */
static void dp_tile_t(int T, const uint16_t *const *wr, int R, const float *xp, size_t kpad,
                      int K, float *y, int ldy)
{
    const uint16_t *xb = (const uint16_t *)xp;
    size_t k32 = 2 * kpad;
    switch (T) {
    case 1: dp_tile(1, wr, R, xb, k32, K, y, ldy); break;
    case 2: dp_tile(2, wr, R, xb, k32, K, y, ldy); break;
    case 3: dp_tile(3, wr, R, xb, k32, K, y, ldy); break;
    default: dp_tile(4, wr, R, xb, k32, K, y, ldy); break;
    }
}

void mc_avx512bf16_rows_direct(const mc_mat *w, const void *pack, int n, float *y, int ldy,
                               int r0, int r1)
{
    size_t k32 = ((size_t)w->cols + 31) / 32 * 32;
    /* token t at t * k32 bf16 values = t * (k32 / 2) floats */
    mc_bf16_direct_rows(w, pack, k32 / 2, n, 4, dp_tile_t, y, ldy, r0, r1);
}

double mc_avx512bf16_burn(long iters)
{
    if (!mc_kern_bf16dp)
        return 0; /* none: the probe reports -1 */
    __m512 a[12];
    const __m512i u = _mm512_set1_epi16(0x3f80), v = _mm512_set1_epi16((short)0xbf80); /* 1, -1 */
    for (int j = 0; j < 12; j++)
        a[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++)
            a[j] = _mm512_dpbf16_ps(a[j], BH(u), BH(v));
        __asm__ __volatile__("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]));
    }
    __m512 s = a[0];
    for (int j = 1; j < 12; j++)
        s = _mm512_add_ps(s, a[j]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return 2.0 * 32.0 * 12.0 * (double)iters;
}
