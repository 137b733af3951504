/* cpu/kern_q4k.h - the Q4_K / Q5_K scale bytes unpacked in vector
 * registers, shared by the AVX2 and AVX-512 paths (only AVX2 instructions:
 * include it only in files compiled with at least -mavx2). */
#ifndef MC_KERN_Q4K_H
#define MC_KERN_Q4K_H

#include <immintrin.h>

#ifndef AI
#define AI static inline __attribute__((always_inline))
#endif

/* mc_q4_k_unpack in registers, in each 128-bit lane of u (two blocks' scale
 * bytes): the 8 scales and 8 mins of the block whose 12 scale bytes start the
 * lane as bytes 0..7 and 8..15. With the dwords u0, u1, u2 of the scale
 * bytes: scales 0..3 = u0 & 0x3f.., 4..7 = (u2 & 0x0f..) | (u0 >> 2 & 0x30..),
 * mins 0..3 = u1 & 0x3f.., 4..7 = (u2 >> 4 & 0x0f..) | (u1 >> 2 & 0x30..).
 * (No bytes stored and loaded back: the scalar unpack's stores stalled the
 * vector load that followed them.) */
AI __m256i q4_k_scales_v2(__m256i u)
{
    __m256i a = _mm256_shuffle_epi32(u, _MM_SHUFFLE(2, 1, 2, 0));
    __m256i b = _mm256_shuffle_epi32(u, _MM_SHUFFLE(1, 1, 0, 0));
    __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(a, _mm256_set_epi32(4, 0, 0, 0, 4, 0, 0, 0)),
                                  _mm256_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f,
                                                   0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi32(b, 2),
                                  _mm256_set_epi32(0x30303030, 0, 0x30303030, 0, 0x30303030, 0, 0x30303030, 0));
    return _mm256_or_si256(lo, hi);
}

/* One block's (12 scale bytes from p in q4_k_scales: 16 are read, the block
 * goes on): q4_k_scales_v2's lower lane. */
AI __m128i q4_k_scales_v(__m128i u)
{
    return _mm256_castsi256_si128(q4_k_scales_v2(_mm256_zextsi128_si256(u)));
}

AI __m128i q4_k_scales(const unsigned char *p)
{
    return q4_k_scales_v(_mm_loadu_si128((const __m128i *)p));
}

/* Decode: the Q4_K / Q5_K block PF_BYTES ahead in the row stream (144 or
 * 176 bytes a block: three lines). */
AI void q4_k_prefetch_block(const unsigned char *blk)
{
    _mm_prefetch((const char *)blk + PF_BYTES, _MM_HINT_T0);
    _mm_prefetch((const char *)blk + PF_BYTES + 64, _MM_HINT_T0);
    _mm_prefetch((const char *)blk + PF_BYTES + 128, _MM_HINT_T0);
}

#endif
