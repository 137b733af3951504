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
 * denormal inputs and results as zero: below 1.2e-38.) */
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

#define BH(v) ((__m512bh)(v))

/* One stored row of K bf16 weights against the split token. Six chains (two
 * per part); the last partial 32 weights by a masked load (nothing past the
 * row is read). */
static float row1(const uint16_t *w, const uint16_t *xh, const uint16_t *xm, const uint16_t *xl,
                  int K)
{
    __m512 h0 = _mm512_setzero_ps(), h1 = h0, m0 = h0, m1 = h0, l0 = h0, l1 = h0;
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        _mm_prefetch((const char *)(w + k) + PF_L2_BYTES, _MM_HINT_T1); /* 128 bytes a step, into L2 */
        _mm_prefetch((const char *)(w + k) + PF_L2_BYTES + 64, _MM_HINT_T1);
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

int mc_avx512bf16_rows1(const mc_mat *w, const float *x, float *y, int r0, int r1)
{
    int K = w->cols, K32 = (K + 31) / 32 * 32;
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
