/* cpu/kern_avx2.h - what avx2.c and avx2_q6k.c share for block products
 * at many tokens: the token-group repack of the quantized activations
 * (the avx2 table's pack_qact) and the reduction of 8 tokens' int32 lanes
 * into one vector with a token per lane. Include it only in files compiled
 * with at least -mavx2 -mfma -mf16c.
 *
 * Token groups (Q4_K, Q5_K, Q6_K products of at least TOK8_MIN tokens,
 * Q8_0 products of 2 to TOK8_MIN - 1; Q8_0 products of more keep their
 * values in quads, avx2.c's Q8Q_REC records): tokens 8g..8g+7 form group
 * g (the last one padded with zero tokens), and per group and block b (C chunks of 32
 * values: C = 8 for the super-blocks, 1 for Q8_0) one record of
 * tok8_rec_bytes(C, P):
 *   int8  x[C][8][32]  x[c][t][l]: token t's value 32 c + l of the block
 *   float dx[8]         the block's activation scale per token
 *   int32 sp[P][8]      per token the int16 pair (sum j = 2p, sum j = 2p + 1)
 *                       of the block's sub-block sums (P = 4: per 32 values,
 *                       Q4_K / Q5_K; P = 8: per 16 values, Q6_K; Q8_0 none)
 * so the kernels read 8 tokens' values from one pointer at fixed offsets
 * and the per-block scales and sums with a token per lane. */
#ifndef MC_KERN_AVX2_H
#define MC_KERN_AVX2_H

#include "kern.h"

#include <immintrin.h>

#ifndef AI
#define AI static inline __attribute__((always_inline))
#endif

/* Products with fewer tokens keep the rows of at most 4 tokens a pass. */
#define TOK8_MIN 5

AI size_t tok8_rec_bytes(int C, int P) { return 256 * (size_t)C + 32 + 32 * (size_t)P; }

/* The record of group g, block b (nb blocks a row); its dx at 256 C, sp
 * at 256 C + 32. */
AI const unsigned char *tok8_rec(const void *pack, int C, int P, int nb, int g, int b)
{
    return (const unsigned char *)pack + ((size_t)g * nb + b) * tok8_rec_bytes(C, P);
}

/* Weight rows unpacked for the token-group kernels live in this much of a
 * thread's scratch (L2), swept once per group. */
#define TOK8_PANEL_BYTES (160 * 1024)

/* s[t] (8 int32 lanes each) -> lane t: the sum of s[t]'s lanes (exact),
 * by unpacks and adds (vphaddd is several operations on some cores). */
AI __m256i hsum8x8_epi32(const __m256i s[8])
{
    __m256i u[4], v[2];
    for (int k = 0; k < 4; k++) /* [a0+a2, b0+b2, a1+a3, b1+b3 | the same of lanes 4..7] */
        u[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(s[2 * k], s[2 * k + 1]),
                                _mm256_unpackhi_epi32(s[2 * k], s[2 * k + 1]));
    for (int k = 0; k < 2; k++) /* [sum a, b, c, d of lanes 0..3 | of lanes 4..7] */
        v[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(u[2 * k], u[2 * k + 1]),
                                _mm256_unpackhi_epi64(u[2 * k], u[2 * k + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(v[0], v[1], 0x20),
                            _mm256_permute2x128_si256(v[0], v[1], 0x31));
}

/* One unpacked super-block (q: its 256 values as bytes) against group
 * record r: per chunk c of 32 values and token t, vpmaddubsw of the
 * values and the token's int8 values, vpmaddwd with the chunk's scale
 * lanes (sc32[c] broadcast, or the vector sc16[c]), int32 sums per token,
 * then a token per lane (exact). */
AI __m256i tok8_block(const uint8_t *q, const int32_t *sc32, const int16_t (*sc16)[16],
                      const unsigned char *r)
{
    __m256i s[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++)
        s[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) {
        __m256i qv = _mm256_load_si256((const __m256i *)(q + 32 * c));
        __m256i sc = sc32 ? _mm256_set1_epi32(sc32[c]) : _mm256_load_si256((const __m256i *)sc16[c]);
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            s[t] = _mm256_add_epi32(
                s[t], _mm256_madd_epi16(_mm256_maddubs_epi16(
                                            qv, _mm256_load_si256((const __m256i *)(r + 32 * (8 * c + t)))),
                                        sc));
        /* the sums held in registers chunk by chunk: left free, GCC adds
         * the 64 products of a block as a tree and spills them */
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            __asm__("" : "+x"(s[t]));
    }
    return hsum8x8_epi32(s);
}

/* The sum of v's 8 lanes: halves, then lanes 2 apart, then 1. */
AI float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Block products whose rows of 1..4 tokens keep 8 blocks' sums a vector
 * (block b in lane b mod 8; Q8_0, Q6_K) keep in their token-group kernels
 * 8 accumulators with a token per lane (block b into a[b mod 8]), added
 * here in hsum256's order: a token's lane is what hsum256 of its row's
 * accumulator gives, so its bits do not depend on the batch. */
AI __m256 sum8_ps(const __m256 a[8])
{
    return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
                         _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7])));
}

/* All ones in the 32-bit lanes below n, zeros above. */
AI __m256i lanes_below(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* The first n of 8 floats at p (the others 0). */
AI __m256 load8_ps(const float *p, int n)
{
    return n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes_below(n));
}

/* The 8 lanes of v to y[t * ldy], t < nt. */
AI void store_tokens(__m256 v, float *y, int ldy, int nt)
{
    float o[8];
    _mm256_storeu_ps(o, v);
    for (int t = 0; t < nt; t++)
        y[(size_t)t * ldy] = o[t];
}

#endif
