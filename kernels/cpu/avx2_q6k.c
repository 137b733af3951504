/* cpu/avx2_q6k.c - Q6_K weights against activations quantized per 256 with
 * per-16 sums (kern.h's mc_qact) with AVX2 (the avx2 path's flags; called
 * through its table, avx2.c). Per half block (128 weights) the 6-bit values
 * as four 32-byte vectors and the int16 scale lanes, vpmaddubsw + vpmaddwd
 * per token into int32 lanes, added to S (exact); the -32 offset as
 * O = sum_j sc_j * bsum16_j (vpmaddwd of the scales and the per-16 sums);
 * then one f32 step acc += (d dx) (S - 32 O), rounded once, per block and
 * token. Passes of at most 4 tokens (16 ymm registers), or, with the
 * token-group repack (kern_avx2.h), rows unpacked into panels and swept
 * once per group of 8 tokens; a token's arithmetic is the same in both.
 * Decode (one token) prefetches the row stream PF_BYTES ahead. */
#include "kern.h"
#include "kern_avx2.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* vpshufb indices: in the lower 128 bits word 2v, in the upper word 2v + 1
 * of a lane of 8 int16 scales (both halves of the register hold it). */
static const uint8_t q6k_sidx[4][32] __attribute__((aligned(32))) = {
#define Q6K_W(v) {4 * v, 4 * v + 1, 4 * v, 4 * v + 1, 4 * v, 4 * v + 1, 4 * v, 4 * v + 1,            \
                  4 * v, 4 * v + 1, 4 * v, 4 * v + 1, 4 * v, 4 * v + 1, 4 * v, 4 * v + 1,            \
                  4 * v + 2, 4 * v + 3, 4 * v + 2, 4 * v + 3, 4 * v + 2, 4 * v + 3, 4 * v + 2, 4 * v + 3, \
                  4 * v + 2, 4 * v + 3, 4 * v + 2, 4 * v + 3, 4 * v + 2, 4 * v + 3, 4 * v + 2, 4 * v + 3}
    Q6K_W(0), Q6K_W(1), Q6K_W(2), Q6K_W(3)
#undef Q6K_W
};

/* Half h of a block: values 128h + 32v + l (v = 0..3) and their scales
 * (sc16: the block's 16 scales as int16, widened once per block). */
AI void q6_k_half(const mc_block_q6_k *blk, __m256i sc16, int h, __m256i qv[4], __m256i s16[4])
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
    /* sub-blocks 8h + 2v (lower half), 8h + 2v + 1 (upper): scales 8h..8h+7 in both halves */
    __m256i sh = h ? _mm256_permute4x64_epi64(sc16, 0xee) : _mm256_permute4x64_epi64(sc16, 0x44);
    for (int v = 0; v < 4; v++)
        s16[v] = _mm256_shuffle_epi8(sh, _mm256_load_si256((const __m256i *)q6k_sidx[v]));
}

/* Block b of a row against T tokens (xq, bs: the first token's values
 * and per-16 sums): st[t] = the int32 lanes of S - 32 O (their sum
 * exact); *dh the block's d. Decode (T 1) prefetches the row stream. */
AI void q6_k_block(int T, const unsigned char *row, int b, const int8_t *xq, const int16_t *bs,
                   int kp, __m256i *st, uint16_t *dh)
{
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
    __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
    for (int h = 0; h < 2; h++) {
        __m256i qv[4], s16[4];
        q6_k_half(blk, sc16, h, qv, s16);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const int8_t *xb = xq + (size_t)t * kp + (size_t)b * MC_QK_K + 128 * h;
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xb + 32 * v));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(qv[v], xv), s16[v]));
            }
        }
    }
    memcpy(dh, &blk->d, 2);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        __m256i o = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(bs + (size_t)t * (kp / 16) + 16 * b)));
        st[t] = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(o, 5));
    }
}

/* One Q6_K row against T tokens from t0. Rows of 8 blocks or more: 8
 * blocks' sums a vector (hsum8x8_epi32; block b in lane b mod 8), one FMA
 * with their d dx into the token's accumulator, hsum256 at the end (the
 * horizontal sum and scalar FMA per block cost a quarter of the decode
 * kernel's time). Shorter rows (768 columns: 3 blocks), where that
 * costs more than it saves: per block the lanes summed, then one scalar
 * FMA, blocks in order. q6_tok8 does the same per token lane. */
AI void q6_k_row(int T, const unsigned char *row, const mc_qact *a, int t0, int nb, float *y,
                 int ldy)
{
    const int8_t *xq = a->q + (size_t)t0 * a->kp;
    const float *xd = a->d + (size_t)t0 * nb;
    const int16_t *bs = a->bsum16 + (size_t)t0 * (a->kp / 16);
    __m256i st[4];
    if (nb < 8) {
        __m128 acc[4]; /* lane 0 */
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[t] = _mm_setzero_ps();
        for (int b = 0; b < nb; b++) {
            uint16_t hd;
            q6_k_block(T, row, b, xq, bs, a->kp, st, &hd);
            float d = _cvtsh_ss(hd);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(st[t]), _mm256_extracti128_si256(st[t], 1));
                s4 = _mm_hadd_epi32(_mm_hadd_epi32(s4, s4), s4);
                acc[t] = _mm_fmadd_ss(_mm_set_ss(d * xd[(size_t)t * nb + b]), _mm_cvtepi32_ps(s4), acc[t]);
            }
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            y[(size_t)t * ldy] = _mm_cvtss_f32(acc[t]);
        return;
    }
    __m256 acc[4]; /* lane j: blocks j mod 8 */
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int b0 = 0; b0 < nb; b0 += 8) {
        int n = nb - b0 < 8 ? nb - b0 : 8;
        __m256i sv[4][8]; /* per token and block: st */
        uint16_t dh[8] __attribute__((aligned(16))) = {0};
#pragma GCC unroll 1
        for (int j = 0; j < n; j++) {
            q6_k_block(T, row, b0 + j, xq, bs, a->kp, st, &dh[j]);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                sv[t][j] = st[t];
        }
        for (int j = n; j < 8; j++)
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                sv[t][j] = _mm256_setzero_si256();
        __m256 d8 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)dh));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d8, load8_ps(xd + (size_t)t * nb + b0, n)),
                                     _mm256_cvtepi32_ps(hsum8x8_epi32(sv[t])), acc[t]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        y[(size_t)t * ldy] = hsum256(acc[t]);
}

/* A Q6_K block unpacked (q6_unpack): the 256 values 0..63 as bytes in
 * order, per 32 values c the scale lanes of vpmaddwd (sub-block 2c in the
 * lower half, 2c + 1 in the upper), the scales as int16 pairs
 * (sc_2p, sc_2p+1) for the offset, d. */
typedef struct {
    uint8_t q[MC_QK_K];
    int16_t sv[8][16];
    int32_t sp[8];
    float d, pad[7];
} q6_unp;

static void q6_unpack(const unsigned char *row, int nb, q6_unp *u)
{
    for (int b = 0; b < nb; b++, u++) {
        const mc_block_q6_k *blk = (const mc_block_q6_k *)(row + (size_t)b * sizeof(mc_block_q6_k));
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
        for (int h = 0; h < 2; h++) {
            __m256i qv[4], s16[4];
            q6_k_half(blk, sc16, h, qv, s16);
            for (int v = 0; v < 4; v++) {
                _mm256_store_si256((__m256i *)(u->q + 128 * h + 32 * v), qv[v]);
                _mm256_store_si256((__m256i *)u->sv[4 * h + v], s16[v]);
            }
        }
        _mm256_store_si256((__m256i *)u->sp, sc16);
        uint16_t hd;
        memcpy(&hd, &blk->d, 2);
        u->d = _cvtsh_ss(hd);
    }
}

/* One unpacked row against token group g: q6_k_row's arithmetic with a
 * token per lane (the 8 tokens' int32 sums by tok8_block). */
static void q6_tok8(const q6_unp *u, int nb, const void *pack, int g, float *y, int ldy, int nt)
{
    __m256 acc[8]; /* block b into acc[b & lm] (sum8_ps): q6_k_row's lanes, or one chain */
    for (int j = 0; j < 8; j++)
        acc[j] = _mm256_setzero_ps();
    int lm = nb < 8 ? 0 : 7;
    for (int b = 0; b < nb; b++, u++) {
        const unsigned char *r = tok8_rec(pack, 8, 8, nb, g, b);
        __m256i st = tok8_block(u->q, NULL, u->sv, r);
        const __m256i *sp = (const __m256i *)(r + 2080);
        __m256i o = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int p = 0; p < 8; p++)
            o = _mm256_add_epi32(o, _mm256_madd_epi16(_mm256_set1_epi32(u->sp[p]), _mm256_load_si256(sp + p)));
        st = _mm256_sub_epi32(st, _mm256_slli_epi32(o, 5));
        __m256 dx = _mm256_load_ps((const float *)(r + 2048));
        acc[b & lm] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(u->d), dx), _mm256_cvtepi32_ps(st),
                                      acc[b & lm]);
    }
    store_tokens(sum8_ps(acc), y, ldy, nt);
}

/* Rows [r0, r1) x all tokens. With the token groups (a->pack): panels of
 * rows unpacked into this thread's scratch, each swept once per group of 8
 * (groups of at most 4 real tokens through q6_k_row). Without: panels of
 * 16 rows swept once per group of 4 tokens (a panel's weights stay in
 * cache; the activations are read once per panel). */
void mc_avx2_rows_q6_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nb = a->kp / MC_QK_K;
    size_t rbytes = (size_t)nb * sizeof(q6_unp);
    int upr = (int)(TOK8_PANEL_BYTES / rbytes);
    upr = upr < 4 ? 4 : upr;
    q6_unp *u = a->pack ? mc_kern_scratch((size_t)upr * rbytes) : NULL;
    int pr = u ? upr : 16;
    for (int p0 = r0; p0 < r1; p0 += pr) {
        int p1 = r1 - p0 < pr ? r1 : p0 + pr;
        if (u)
            for (int o = p0; o < p1; o++)
                q6_unpack(mc_row_ptr(w, o), nb, u + (size_t)(o - p0) * nb);
        int tg = u ? 8 : 4;
        for (int t0 = 0; t0 < a->n; t0 += tg) {
            int T = a->n - t0 < tg ? a->n - t0 : tg;
            if (T >= TOK8_MIN) {
                for (int o = p0; o < p1; o++)
                    q6_tok8(u + (size_t)(o - p0) * nb, nb, a->pack, t0 / 8, y + (size_t)t0 * ldy + o,
                            ldy, T);
                continue;
            }
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
