/* cpu/avx2_q6k.c - Q6_K weights against activations quantized per 256 with
 * per-16 sums (kern.h's mc_qact) with AVX2 (the avx2 path's flags; called
 * through its table, avx2.c). The arithmetic is avx512_q6k.c's on 256-bit
 * vectors: per half block (128 weights) the 6-bit values as four 32-byte
 * vectors and the int16 scale lanes, vpmaddubsw + vpmaddwd per token into
 * int32 lanes, the -32 offset as 32 * sum_j sc_j * bsum16_j, one f32 step
 * d * dx * (int32 sum) per block. At most 4 tokens a pass (16 ymm
 * registers). The -32 offset's sum by vpmaddwd of the scales and the
 * per-16 sums; decode (one token) prefetches the row stream PF_BYTES
 * ahead. */
#include "kern.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* Half h of a block: values 128h + 32v + l (v = 0..3) and their scales. */
AI void q6_k_half(const mc_block_q6_k *blk, int h, __m256i qv[4], __m256i s16[4])
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
    __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h));
    __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h + 32));
    __m256i qh = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h));
    /* epi16 shifts spill only into bits the masks drop */
    qv[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
    qv[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
    qv[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
    qv[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
    const int8_t *sc = blk->scales + 8 * h; /* sub-blocks 8h + 2v, 8h + 2v + 1 */
    for (int v = 0; v < 4; v++)
        s16[v] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * v + 1]), _mm_set1_epi16(sc[2 * v]));
}

AI void q6_k_row(int T, const unsigned char *row, const mc_qact *a, int t0, int nb, float *y,
                 int ldy)
{
    __m256 acc[4];
    float off[4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        off[t] = 0.0f;
    }
    const int8_t *xq = a->q + (size_t)t0 * a->kp;
    const float *xd = a->d + (size_t)t0 * nb;
    const int16_t *bs = a->bsum16 + (size_t)t0 * (a->kp / 16);
    for (int b = 0; b < nb; b++) {
        const mc_block_q6_k *blk = (const mc_block_q6_k *)(row + (size_t)b * sizeof(mc_block_q6_k));
        if (T == 1) { /* decode: the row stream, 210 bytes a block */
            _mm_prefetch((const char *)blk + PF_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)blk + PF_BYTES + 64, _MM_HINT_T0);
            _mm_prefetch((const char *)blk + PF_BYTES + 128, _MM_HINT_T0);
            _mm_prefetch((const char *)blk + PF_BYTES + 192, _MM_HINT_T0);
        }
        __m256i sumi[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            sumi[t] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i qv[4], s16[4];
            q6_k_half(blk, h, qv, s16);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const int8_t *xb = xq + (size_t)t * a->kp + (size_t)b * MC_QK_K + 128 * h;
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(xb + 32 * v));
                    sumi[t] = _mm256_add_epi32(
                        sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(qv[v], xv), s16[v]));
                }
            }
        }
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
        uint16_t hd;
        memcpy(&hd, &blk->d, 2);
        float d = _cvtsh_ss(hd);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const int16_t *bt = bs + (size_t)t * (a->kp / 16) + 16 * b;
            /* sum_j sc_j bsum16_j: vpmaddwd, then the 8 lanes added (exact) */
            __m256i op = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)bt));
            __m128i o4 = _mm_add_epi32(_mm256_castsi256_si128(op), _mm256_extracti128_si256(op, 1));
            o4 = _mm_add_epi32(o4, _mm_unpackhi_epi64(o4, o4));
            int32_t o = _mm_cvtsi128_si32(_mm_add_epi32(o4, _mm_shuffle_epi32(o4, 1)));
            float dx = d * xd[(size_t)t * nb + b];
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            off[t] += dx * (float)(32 * o);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        y[(size_t)t * ldy] = _mm_cvtss_f32(s) - off[t];
    }
}

/* Rows [r0, r1) x all tokens: panels of 16 rows swept once per group of 4
 * tokens (a panel's weights stay in cache; the activations are read once
 * per panel). */
void mc_avx2_rows_q6_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nb = a->kp / MC_QK_K;
    enum { PANEL = 16 };
    for (int p0 = r0; p0 < r1; p0 += PANEL) {
        int p1 = p0 + PANEL < r1 ? p0 + PANEL : r1;
        for (int t0 = 0; t0 < a->n; t0 += 4) {
            int T = a->n - t0 < 4 ? a->n - t0 : 4;
            for (int o = p0; o < p1; o++) {
                const unsigned char *row = mc_row_ptr(w, o);
                float *yo = y + (size_t)t0 * ldy + o;
                switch (T) {
                case 1: q6_k_row(1, row, a, t0, nb, yo, ldy); break;
                case 2: q6_k_row(2, row, a, t0, nb, yo, ldy); break;
                case 3: q6_k_row(3, row, a, t0, nb, yo, ldy); break;
                default: q6_k_row(4, row, a, t0, nb, yo, ldy); break;
                }
            }
        }
    }
}
