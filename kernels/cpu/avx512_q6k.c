/* cpu/avx512_q6k.c - Q6_K weights (llama.cpp's blocks, core/dtype.h) against
 * activations quantized per 256 with per-16 sums (kern.h's mc_qact), with
 * AVX-512BW + VNNI-era integer instructions; compiled with the avx512
 * path's flags and called through its table (avx512.c).
 *
 * Per block of 256 weights and row: the 6-bit values are put together once
 * (low nibbles of ql, two bits of qh) as four 64-byte vectors in element
 * order, the 16 int8 sub-block scales widened to int16 lanes once; then per
 * token vpmaddubsw (values 0..63 unsigned x int8 activations: pair sums at
 * most 2 * 63 * 127, no saturation) and vpmaddwd with the scales give int32
 * lanes; the -32 offset of every value is folded in as
 * 32 * sum_j sc_j * bsum16_j per block and token. One f32 step per block:
 * d * dx * (int32 sum), as the scalar path. */
#include "kern.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* The 256 values of one block as 4 x 64 bytes (elements 64v..64v+63) and
 * the matching scale lanes (int16: sc of the 16-element sub-block of each
 * pair of bytes). */
AI void q6_k_unpack(const unsigned char *p, __m512i qv[4], __m512i s16[4], const __m512i sidx[4],
                    float *d)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
    const mc_block_q6_k *blk = (const mc_block_q6_k *)p; /* (210 bytes; loads are unaligned) */
    for (int h = 0; h < 2; h++) {
        __m512i l = _mm512_loadu_si512((const void *)(blk->ql + 64 * h));
        __m256i q = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h));
        __m512i qh = _mm512_inserti64x4(_mm512_castsi256_si512(q), q, 1);
        /* bits 4..5 of each byte: (qh << 4 | qh << 2) for elements 0..63 of
         * the half, (qh | qh >> 2) for 64..127; epi16 shifts only spill into
         * bits the mask drops */
        __m512i h0 = _mm512_mask_blend_epi64(0xf0, _mm512_slli_epi16(qh, 4), _mm512_slli_epi16(qh, 2));
        __m512i h1 = _mm512_mask_blend_epi64(0xf0, qh, _mm512_srli_epi16(qh, 2));
        qv[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(h0, m30));
        qv[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                        _mm512_and_si512(h1, m30));
    }
    __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
    __m512i sc512 = _mm512_castsi256_si512(sc);
    for (int v = 0; v < 4; v++)
        s16[v] = _mm512_permutexvar_epi16(sidx[v], sc512);
    uint16_t hd;
    memcpy(&hd, &blk->d, 2);
    *d = _cvtsh_ss(hd);
}

/* One row against T tokens (t0..t0+T-1), written to y[t * ldy]. */
AI void q6_k_row(int T, const unsigned char *row, const mc_qact *a, int t0, int nb,
                 const __m512i sidx[4], float *y, int ldy)
{
    __m512 acc[8];
    float off[8];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        acc[t] = _mm512_setzero_ps();
        off[t] = 0.0f;
    }
    const int8_t *xq = a->q + (size_t)t0 * a->kp;
    const float *xd = a->d + (size_t)t0 * nb;
    const int16_t *bs = a->bsum16 + (size_t)t0 * (a->kp / 16);
    for (int b = 0; b < nb; b++) {
        __m512i qv[4], s16[4];
        float d;
        const unsigned char *p = row + (size_t)b * sizeof(mc_block_q6_k);
        q6_k_unpack(p, qv, s16, sidx, &d);
        __m512i scw = _mm512_cvtepi8_epi32(
            _mm_loadu_si128((const __m128i *)((const mc_block_q6_k *)p)->scales));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const int8_t *xb = xq + (size_t)t * a->kp + (size_t)b * MC_QK_K;
            __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                __m512i xv = _mm512_loadu_si512((const void *)(xb + 64 * v));
                sumi = _mm512_add_epi32(sumi,
                                        _mm512_madd_epi16(_mm512_maddubs_epi16(qv[v], xv), s16[v]));
            }
            /* sum_j sc_j * bsum16_j for the -32 offset */
            __m512i bsv = _mm512_cvtepi16_epi32(
                _mm256_loadu_si256((const __m256i *)(bs + (size_t)t * (a->kp / 16) + 16 * b)));
            int32_t o = _mm512_reduce_add_epi32(_mm512_mullo_epi32(scw, bsv));
            float dx = d * xd[(size_t)t * nb + b];
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(dx), _mm512_cvtepi32_ps(sumi), acc[t]);
            off[t] += dx * (float)(32 * o);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        y[(size_t)t * ldy] = _mm512_reduce_add_ps(acc[t]) - off[t];
}

/* Rows [r0, r1) x all tokens: panels of 16 rows, each swept once per group
 * of 8 tokens, so a panel's weights stay in cache while the activations are
 * read once per panel instead of once per row. */
void mc_avx512_rows_q6_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nb = a->kp / MC_QK_K;
    __m512i sidx[4];
    for (int v = 0; v < 4; v++) {
        int16_t ix[32];
        for (int i = 0; i < 32; i++)
            ix[i] = (int16_t)(4 * v + i / 8); /* lanes 8j..8j+7: sub-block 4v + j */
        sidx[v] = _mm512_loadu_si512((const void *)ix);
    }
    enum { PANEL = 16 };
    for (int p0 = r0; p0 < r1; p0 += PANEL) {
        int p1 = p0 + PANEL < r1 ? p0 + PANEL : r1;
        for (int t0 = 0; t0 < a->n; t0 += 8) {
            int T = a->n - t0 < 8 ? a->n - t0 : 8;
            for (int o = p0; o < p1; o++) {
                const unsigned char *row = mc_row_ptr(w, o);
                float *yo = y + (size_t)t0 * ldy + o;
                switch (T) {
                case 1: q6_k_row(1, row, a, t0, nb, sidx, yo, ldy); break;
                case 2: q6_k_row(2, row, a, t0, nb, sidx, yo, ldy); break;
                case 3: q6_k_row(3, row, a, t0, nb, sidx, yo, ldy); break;
                case 4: q6_k_row(4, row, a, t0, nb, sidx, yo, ldy); break;
                case 5: q6_k_row(5, row, a, t0, nb, sidx, yo, ldy); break;
                case 6: q6_k_row(6, row, a, t0, nb, sidx, yo, ldy); break;
                case 7: q6_k_row(7, row, a, t0, nb, sidx, yo, ldy); break;
                default: q6_k_row(8, row, a, t0, nb, sidx, yo, ldy); break;
                }
            }
        }
    }
}
