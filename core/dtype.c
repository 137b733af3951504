#include "dtype.h"

#include <math.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[MC_DT_COUNT] = {
    [MC_DT_F32] = {"F32", 4},    [MC_DT_F16] = {"F16", 2}, [MC_DT_BF16] = {"BF16", 2},
    [MC_DT_F8_E4M3] = {"F8_E4M3", 1}, [MC_DT_I64] = {"I64", 8}, [MC_DT_I32] = {"I32", 4},
    [MC_DT_U8] = {"U8", 1},
};

size_t mc_dtype_size(mc_dtype dt) { return (unsigned)dt < MC_DT_COUNT ? dtype_info[dt].size : 0; }

const char *mc_dtype_name(mc_dtype dt)
{
    return (unsigned)dt < MC_DT_COUNT ? dtype_info[dt].name : "?";
}

int mc_dtype_from_name(const char *s, mc_dtype *out)
{
    for (int i = 0; i < MC_DT_COUNT; i++) {
        if (!strcmp(s, dtype_info[i].name)) {
            *out = (mc_dtype)i;
            return 0;
        }
    }
    return -1;
}

float mc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) & 1u;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    float v;
    if (exp == 0)
        v = ldexpf((float)man, -24);
    else if (exp == 31)
        v = man ? NAN : INFINITY;
    else
        v = ldexpf((float)(man | 0x400u), (int)exp - 25);
    return sign ? -v : v;
}

uint16_t mc_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    if (isnan(f))
        return sign | 0x7e00u;
    float a = fabsf(f);
    if (a >= 65520.0f)
        return sign | 0x7c00u;
    if (a < 6.103515625e-05f) { /* subnormal: units of 2^-24, round to nearest even */
        float q = a * 16777216.0f;
        return sign | (uint16_t)lrintf(q);
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5,1) */
    uint32_t man = (uint32_t)lrintf(m * 2048.0f); /* 11 bits incl. implicit */
    if (man == 2048u) {
        man = 1024u;
        e++;
    }
    uint32_t exp = (uint32_t)(e + 14);
    if (exp >= 31)
        return sign | 0x7c00u;
    return sign | (uint16_t)((exp << 10) | (man & 0x3ffu));
}

float mc_fp8_e4m3_decode(uint8_t v)
{
    int sign = v >> 7;
    int exp = (v >> 3) & 0xf;
    int man = v & 0x7;
    float r;
    if (exp == 0xf && man == 0x7)
        r = NAN;
    else if (exp == 0)
        r = ldexpf((float)man, -9); /* subnormal: man/8 * 2^-6 */
    else
        r = ldexpf((float)(8 + man), exp - 10); /* (1+man/8) * 2^(exp-7) */
    return sign ? -r : r;
}

uint8_t mc_f32_to_fp8_e4m3(float f)
{
    if (isnan(f))
        return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f)
        return sign | 0x7e;
    /* brute force nearest, ties to even code: small table, fine for tools/tests */
    int best = 0;
    float bestd = INFINITY;
    for (int c = 0; c < 0x7f; c++) {
        float d = fabsf(mc_fp8_e4m3_decode((uint8_t)c) - a);
        if (d < bestd || (d == bestd && (c & 1) == 0 && (best & 1))) {
            bestd = d;
            best = c;
        }
    }
    return sign | (uint8_t)best;
}
