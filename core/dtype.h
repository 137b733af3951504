/* dtype.h - element types as stored in checkpoints, and scalar conversions.
 *
 * BF16: upper 16 bits of an IEEE f32. F16: IEEE half. F8_E4M3: the "fn"
 * variant used by DeepSeek/NVIDIA (1 sign, 4 exponent bits with bias 7,
 * 3 mantissa bits, no infinities, S.1111.111 is NaN, max finite 448).
 */
#ifndef MC_DTYPE_H
#define MC_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    MC_DT_F32 = 0,
    MC_DT_F16,
    MC_DT_BF16,
    MC_DT_F8_E4M3,
    MC_DT_I64,
    MC_DT_I32,
    MC_DT_U8,
    MC_DT_COUNT
} mc_dtype;

/* Size of one element in bytes. */
size_t mc_dtype_size(mc_dtype dt);
/* safetensors spelling ("BF16", "F8_E4M3", ...). */
const char *mc_dtype_name(mc_dtype dt);
/* Parses a safetensors dtype string; returns -1 if unknown. */
int mc_dtype_from_name(const char *s, mc_dtype *out);

static inline float mc_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round-to-nearest-even, NaN preserved. */
static inline uint16_t mc_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mc_f16_to_f32(uint16_t h);
uint16_t mc_f32_to_f16(float f);

/* Exact for all 256 codes (bit manipulation; normal codes map directly onto
 * the f32 exponent, subnormals are man * 2^-9). */
static inline float mc_fp8_e4m3_to_f32(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t exp = (v >> 3) & 0xfu, man = v & 0x7u;
    float r;
    if (exp == 0) {
        r = (float)man * (1.0f / 512.0f);
        uint32_t u;
        memcpy(&u, &r, sizeof u);
        u |= sign;
        memcpy(&r, &u, sizeof r);
    } else if (exp == 0xf && man == 0x7) {
        uint32_t u = sign | 0x7fc00000u;
        memcpy(&r, &u, sizeof r);
    } else {
        uint32_t u = sign | ((exp + 120u) << 23) | (man << 20);
        memcpy(&r, &u, sizeof r);
    }
    return r;
}
float mc_fp8_e4m3_decode(uint8_t v); /* arithmetic reference, for tests */
uint8_t mc_f32_to_fp8_e4m3(float f); /* round-to-nearest-even, saturating to +-448 */

#endif
