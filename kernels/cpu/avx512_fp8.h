/* cpu/avx512_fp8.h - FP8 E4M3 to f32 in AVX-512 registers, shared by the
 * avx512 and amx paths (compiled with their flags only). */
#ifndef MC_AVX512_FP8_H
#define MC_AVX512_FP8_H

#include <immintrin.h>
#include <math.h>

/* 16 E4M3 codes -> 16 f32, exact for all 256 codes (as mc_fp8_e4m3_to_f32):
 * the 7 magnitude bits moved to the top of the f32 exponent / mantissa and
 * scaled by 2^120 (subnormal codes become man * 2^-9), NaN for 0x7f / 0xff,
 * then the sign. */
static inline __attribute__((always_inline)) __m512 fp8x16(__m128i v)
{
    __m512i b = _mm512_cvtepu8_epi32(v);
    __m512i mag = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x7f)), 20);
    __m512i sign = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24);
    __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(mag), _mm512_set1_ps(0x1p120f));
    __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f << 20));
    f = _mm512_mask_blend_ps(nan, f, _mm512_set1_ps(NAN));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign));
}

#endif
