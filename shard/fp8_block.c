#include "fp8_block.h"

#include <math.h>

uint8_t mc_fp8_encode(float x)
{
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (!(a < 448.0f))
        return sign | 0x7e;
    if (a < 0.015625f) /* below 2^-6: subnormal steps of 2^-9 */
        return sign | (uint8_t)rintf(a * 512.0f);
    int e;
    float m = frexpf(a, &e); /* a = m 2^e, m in [0.5, 1) */
    int q = (int)rintf((m * 2.0f - 1.0f) * 8.0f);
    int ex = e - 1 + 7;
    if (q == 8) {
        q = 0;
        ex++;
    }
    if (ex > 15 || (ex == 15 && q > 6))
        return sign | 0x7e;
    return sign | (uint8_t)((ex << 3) | q);
}

void mc_fp8_quantize_band(const float *src, int64_t rows, int64_t cols, uint8_t *dst,
                          float *scales)
{
    int64_t sc = (cols + MC_FP8_BLOCK - 1) / MC_FP8_BLOCK;
    for (int64_t cb = 0; cb < sc; cb++) {
        int64_t c0 = cb * MC_FP8_BLOCK, c1 = c0 + MC_FP8_BLOCK < cols ? c0 + MC_FP8_BLOCK : cols;
        float amax = 0;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = c0; j < c1; j++)
                amax = fmaxf(amax, fabsf(src[i * cols + j]));
        float s = amax > 0 ? amax / 448.0f : 1.0f;
        scales[cb] = s;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = c0; j < c1; j++)
                dst[i * cols + j] = mc_fp8_encode(src[i * cols + j] / s);
    }
}
