/* cpu/avx512_q6k.c - Q6_K weights (llama.cpp's blocks, core/dtype.h) against
 * activations quantized per 256 with per-16 sums (kern.h's mc_qact), with
 * AVX-512BW + VNNI-era integer instructions; compiled with the avx512
 * path's flags and called through its table (avx512.c).
 *
 * Per block of 256 weights and row: the 6-bit values are put together once
 * (ql's nibbles bit-selected with two bits of qh: about 14 vector
 * operations) as four 64-byte vectors in element order, the 16 int8
 * sub-block scales widened to int16 lanes once; then per token vpmaddubsw
 * and vpdpwssd with the scales give int32 lanes, and the -32 offset of
 * every value is one more vpdpwssd of -32 * sc_j against bsum16_j. One f32
 * step per block and token: d * dx * (int32 lanes), as the scalar path's
 * d * dx * (int32 sum). Decode (one token) prefetches the row stream
 * PF_BYTES ahead, as the other formats. */
#include "kern.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* The 256 values of one block as 4 x 64 bytes (elements 64v..64v+63) and
 * the matching scale lanes (int16: sc of the 16-element sub-block of each
 * pair of bytes), plus the scales times -32 in the low 16 int16 lanes of
 * *sneg (the -32 offset against the activations' per-16 sums). Per half
 * (128 values): the low nibbles of ql and the high ones, each OR-ed by a
 * bit select with two bits of qh moved to bits 4..5 by one 64-bit shift
 * whose count differs between the 256-bit halves (qh is broadcast to both:
 * its bytes serve elements l and l + 32 from bits 0..1 and 2..3, l + 64 and
 * l + 96 from bits 4..5 and 6..7); shifts spill only into bits the masks
 * drop. */
AI void q6_k_unpack(const unsigned char *p, __m512i qv[4], __m512i s16[4], __m512i *sneg,
                    const __m512i sidx[4], float *d)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
    const __m512i shl = _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4);
    const __m512i shr = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
    const mc_block_q6_k *blk = (const mc_block_q6_k *)p; /* (210 bytes; loads are unaligned) */
    for (int h = 0; h < 2; h++) {
        __m512i l = _mm512_loadu_si512((const void *)(blk->ql + 64 * h));
        __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h)));
        __m512i h0 = _mm512_and_si512(_mm512_sllv_epi64(qh, shl), m30);
        __m512i h1 = _mm512_and_si512(_mm512_srlv_epi64(qh, shr), m30);
        /* 0xCA: bit select, m4 ? l : h */
        qv[2 * h] = _mm512_ternarylogic_epi32(m4, l, h0, 0xCA);
        qv[2 * h + 1] = _mm512_ternarylogic_epi32(m4, _mm512_srli_epi16(l, 4), h1, 0xCA);
    }
    __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
    __m512i sc512 = _mm512_castsi256_si512(sc);
    for (int v = 0; v < 4; v++)
        s16[v] = _mm512_permutexvar_epi16(sidx[v], sc512);
    /* -32 * sc: at most 4096 in magnitude, an int16 */
    *sneg = _mm512_zextsi256_si512(_mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc, 5)));
    uint16_t hd;
    memcpy(&hd, &blk->d, 2);
    *d = _cvtsh_ss(hd);
}

/* One row against T tokens (t0..t0+T-1), written to y[t * ldy]. Per block
 * and token: vpmaddubsw (values 0..63 unsigned x int8 activations: pair
 * sums at most 2 * 63 * 127, no saturation) and vpdpwssd with the scale
 * lanes into int32 lanes, the offset sum_j (-32 sc_j) bsum16_j by one more
 * vpdpwssd (|block sum| < 2^29: exact), one conversion and FMA by d * dx. */
AI void q6_k_row(int T, const unsigned char *row, const mc_qact *a, int t0, int nb,
                 const __m512i sidx[4], float *y, int ldy)
{
    __m512 acc[8];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        acc[t] = _mm512_setzero_ps();
    const int8_t *xq = a->q + (size_t)t0 * a->kp;
    const float *xd = a->d + (size_t)t0 * nb;
    const int16_t *bs = a->bsum16 + (size_t)t0 * (a->kp / 16);
    for (int b = 0; b < nb; b++) {
        __m512i qv[4], s16[4], sneg;
        float d;
        const unsigned char *p = row + (size_t)b * sizeof(mc_block_q6_k);
        if (T == 1) { /* decode: the row stream, 210 bytes a block */
            _mm_prefetch((const char *)p + PF_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)p + PF_BYTES + 64, _MM_HINT_T0);
            _mm_prefetch((const char *)p + PF_BYTES + 128, _MM_HINT_T0);
            _mm_prefetch((const char *)p + PF_BYTES + 192, _MM_HINT_T0);
        }
        q6_k_unpack(p, qv, s16, &sneg, sidx, &d);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const int8_t *xb = xq + (size_t)t * a->kp + (size_t)b * MC_QK_K;
            __m512i sumi = _mm512_dpwssd_epi32(
                _mm512_setzero_si512(), sneg,
                _mm512_zextsi256_si512(
                    _mm256_loadu_si256((const __m256i *)(bs + (size_t)t * (a->kp / 16) + 16 * b))));
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                __m512i xv = _mm512_loadu_si512((const void *)(xb + 64 * v));
                sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(qv[v], xv), s16[v]);
            }
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * xd[(size_t)t * nb + b]),
                                     _mm512_cvtepi32_ps(sumi), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        y[(size_t)t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

/* ---- rows repacked at load (MC_MAT_PACK_Q6_K_X16, kernels.h) ---- */

/* One repacked row against T tokens (xi / corr / xd: the first token's
 * repack, values and scales; xs, cs: their strides per token). Per block
 * the values come out of ql / qh as four vectors in sub-block lanes (13
 * shifts, masks and bit selects, no permutes); per token one vpdpbusd chain
 * of 4 started at -32 x the sub-blocks' activation sums leaves sub-block j's
 * exact sum in lane j, one vpmulld by the 16 scales, one conversion and one
 * FMA by d * dx. */
AI void q6_k_row_x16(int T, const unsigned char *row, const int8_t *xi, const int32_t *corr,
                     const float *xd, int nb, size_t xs, size_t cs, float *y, int ldy)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
    __m512 acc[8];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const unsigned char *p = row + (size_t)b * sizeof(mc_block_q6_k);
        if (T == 1) { /* decode: the row stream into L2 (PF_L2_BYTES) */
            _mm_prefetch((const char *)p + PF_L2_BYTES, _MM_HINT_T1);
            _mm_prefetch((const char *)p + PF_L2_BYTES + 64, _MM_HINT_T1);
            _mm_prefetch((const char *)p + PF_L2_BYTES + 128, _MM_HINT_T1);
            _mm_prefetch((const char *)p + PF_L2_BYTES + 192, _MM_HINT_T1);
        }
        __m512i l0 = _mm512_loadu_si512((const void *)p), l1 = _mm512_loadu_si512((const void *)(p + 64));
        __m512i qh = _mm512_loadu_si512((const void *)(p + 128));
        /* 0xCA: bit select, m4 ? low nibble : high bits */
        __m512i v0 = _mm512_ternarylogic_epi32(m4, l0, _mm512_and_si512(_mm512_slli_epi16(qh, 4), m30), 0xCA);
        __m512i v1 = _mm512_ternarylogic_epi32(m4, _mm512_srli_epi16(l0, 4),
                                               _mm512_and_si512(_mm512_slli_epi16(qh, 2), m30), 0xCA);
        __m512i v2 = _mm512_ternarylogic_epi32(m4, l1, _mm512_and_si512(qh, m30), 0xCA);
        __m512i v3 = _mm512_ternarylogic_epi32(m4, _mm512_srli_epi16(l1, 4),
                                               _mm512_and_si512(_mm512_srli_epi16(qh, 2), m30), 0xCA);
        __m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 192)));
        uint16_t hd;
        memcpy(&hd, p + 208, 2);
        float d = _cvtsh_ss(hd);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const int8_t *x = xi + (size_t)t * xs + (size_t)b * 256;
            __m512i s = _mm512_loadu_si512((const void *)(corr + (size_t)t * cs + (size_t)b * 16));
            s = _mm512_dpbusd_epi32(s, v0, _mm512_load_si512((const void *)x));
            s = _mm512_dpbusd_epi32(s, v1, _mm512_load_si512((const void *)(x + 64)));
            s = _mm512_dpbusd_epi32(s, v2, _mm512_load_si512((const void *)(x + 128)));
            s = _mm512_dpbusd_epi32(s, v3, _mm512_load_si512((const void *)(x + 192)));
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * xd[(size_t)t * nb + b]),
                                     _mm512_cvtepi32_ps(_mm512_mullo_epi32(s, sc)), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        y[(size_t)t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

size_t mc_avx512_q6_k_x16_act_bytes(const mc_mat *w, int n)
{
    return (size_t)n * (size_t)(w->cols / MC_QK_K) * (256 + 64);
}

/* The tokens' values in the rows' order (256 bytes a block: byte
 * 64k + 4j + c is value 16j + 4k + c) and -32 x each sub-block's sum as
 * int32 (16 a block), all tokens' values first. */
void mc_avx512_q6_k_x16_act(const mc_mat *w, const mc_qact *a, void *dst)
{
    (void)w;
    int nb = a->kp / MC_QK_K;
    int32_t *corr = (int32_t *)((int8_t *)dst + (size_t)a->n * nb * 256);
    for (int t = 0; t < a->n; t++) {
        const int8_t *q = a->q + (size_t)t * a->kp;
        int8_t *xi = (int8_t *)dst + (size_t)t * nb * 256;
        for (int b = 0; b < nb; b++)
            for (int j = 0; j < 16; j++) {
                for (int k = 0; k < 4; k++)
                    memcpy(xi + (size_t)b * 256 + 64 * k + 4 * j, q + (size_t)b * 256 + 16 * j + 4 * k, 4);
                corr[((size_t)t * nb + b) * 16 + j] = -32 * a->bsum16[(size_t)t * (a->kp / 16) + 16 * b + j];
            }
    }
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
    if (w->pack == MC_MAT_PACK_Q6_K_X16) { /* a->pack: the front end allocates it with a */
        const int8_t *xi = a->pack;
        const int32_t *corr = (const int32_t *)(xi + (size_t)a->n * nb * 256);
        size_t xs = (size_t)nb * 256, cs = (size_t)nb * 16;
        for (int p0 = r0; p0 < r1; p0 += PANEL) {
            int p1 = p0 + PANEL < r1 ? p0 + PANEL : r1;
            for (int t0 = 0; t0 < a->n; t0 += 8) {
                int T = a->n - t0 < 8 ? a->n - t0 : 8;
                const int8_t *x0 = xi + (size_t)t0 * xs;
                const int32_t *c0 = corr + (size_t)t0 * cs;
                const float *d0 = a->d + (size_t)t0 * nb;
                for (int o = p0; o < p1; o++) {
                    const unsigned char *row = mc_row_ptr(w, o);
                    float *yo = y + (size_t)t0 * ldy + o;
                    switch (T) {
                    case 1: q6_k_row_x16(1, row, x0, c0, d0, nb, xs, cs, yo, ldy); break;
                    case 2: q6_k_row_x16(2, row, x0, c0, d0, nb, xs, cs, yo, ldy); break;
                    case 3: q6_k_row_x16(3, row, x0, c0, d0, nb, xs, cs, yo, ldy); break;
                    case 4: q6_k_row_x16(4, row, x0, c0, d0, nb, xs, cs, yo, ldy); break;
                    case 5: q6_k_row_x16(5, row, x0, c0, d0, nb, xs, cs, yo, ldy); break;
                    case 6: q6_k_row_x16(6, row, x0, c0, d0, nb, xs, cs, yo, ldy); break;
                    case 7: q6_k_row_x16(7, row, x0, c0, d0, nb, xs, cs, yo, ldy); break;
                    default: q6_k_row_x16(8, row, x0, c0, d0, nb, xs, cs, yo, ldy); break;
                    }
                }
            }
        }
        return;
    }
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
