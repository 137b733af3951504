/* cpu/avx512_fp8.h - FP8 E4M3 to f32 in AVX-512 registers, shared by the
 * avx512 and amx paths (compiled with their flags only). */
#ifndef MC_AVX512_FP8_H
#define MC_AVX512_FP8_H

#include <immintrin.h>
#include <math.h>

/* 32 E4M3 codes (bytes of v) as f16 bits in 16-bit lanes: sign to bit
 * 15, the 7 magnitude bits to bits 13..7; the f16 is the E4M3 value times
 * 2^-8 (subnormal codes f16 subnormals), except for NaN (0x7f / 0xff),
 * which the caller checks. */
static inline __attribute__((always_inline)) __m512i f8_to_h(__m256i v)
{
    __m512i w = _mm512_cvtepu8_epi16(v);
    return _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi16(w, 7), _mm512_set1_epi16(0x3f80)),
                           _mm512_and_si512(_mm512_slli_epi16(w, 8), _mm512_set1_epi16((short)0x8000)));
}

/* 16 E4M3 codes -> 16 f32, exact for all 256 codes (as mc_fp8_e4m3_to_f32):
 * f8_to_h, vcvtph2ps and a multiply by 2^8, NaN for 0x7f / 0xff, then the
 * sign. (Not through f32 bits times 2^120: subnormal codes made f32
 * denormals there, and every multiply with one took a microcode assist:
 * 3-5x slower panels on such weights.) */
static inline __attribute__((always_inline)) __m512 fp8x16(__m128i v)
{
    __m256i h = _mm512_castsi512_si256(f8_to_h(_mm256_castsi128_si256(v)));
    __m512 f = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(0x1p8f));
    __m128i m7f = _mm_set1_epi8(0x7f);
    __mmask16 nan = _mm_cmpeq_epi8_mask(_mm_and_si128(v, m7f), m7f);
    f = _mm512_mask_blend_ps(nan, f, _mm512_set1_ps(NAN));
    __m512i sign = _mm512_slli_epi32(_mm512_and_si512(_mm512_cvtepu8_epi32(v), _mm512_set1_epi32(0x80)), 24);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign));
}

#endif
