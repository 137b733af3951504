/* q6_k.h - llama.cpp's Q6_K blocks (GGUF type 14) and their scalar
 * dequantization to f32. The GGUF loader (worker/model_gguf.c) converts
 * Q6_K tensors to Q8_0 with it (see docs/gguf.md); the reference for the
 * SIMD decode kernels to come.
 *
 * One block: 256 weights in 210 bytes, byte for byte ggml-common.h's
 * block_q6_K:
 *   u8 ql[128]     low 4 bits of each 6-bit quant
 *   u8 qh[64]      high 2 bits
 *   i8 scales[16]  one scale per 16 weights
 *   f16 d          super-block scale
 * Weight e (0..255) of a block, with h = e / 128, g = (e % 128) / 32,
 * l = e % 32:
 *   q = (low nibble of ql[64h + 32(g & 1) + l] if g < 2, else its high
 *        nibble) | ((qh[32h + l] >> 2g) & 3) << 4          (0..63)
 *   w = d * scales[e / 16] * (q - 32)
 * The products are rounded as llama.cpp's dequantize_row_q6_K rounds them,
 * (d * scale) * q in f32, so the floats are the same bit for bit.
 * Header-only (static inline) until the kernels' source list takes a .c.
 */
#ifndef MC_Q6_K_H
#define MC_Q6_K_H

#include "dtype.h"

#include <stdint.h>

#define MC_Q6_K_BLOCK_BYTES 210

typedef struct {
    uint8_t ql[MC_QK_K / 2];
    uint8_t qh[MC_QK_K / 4];
    int8_t scales[MC_QK_K / 16];
    uint16_t d; /* f16 */
} mc_block_q6_k;

_Static_assert(sizeof(mc_block_q6_k) == MC_Q6_K_BLOCK_BYTES, "Q6_K block is 210 bytes");

/* Dequantizes one row of n weights (n a multiple of 256: callers check, as
 * the GGUF reader does for every Q6_K tensor) from src (n / 256 blocks,
 * any alignment) into dst (n floats). The caller owns both buffers. */
static inline void mc_dequant_q6_k_row(const void *src, float *dst, int64_t n)
{
    const uint8_t *p = (const uint8_t *)src;
    for (int64_t b = 0; b < n / MC_QK_K; b++, p += MC_Q6_K_BLOCK_BYTES) {
        mc_block_q6_k blk; /* (210 bytes) unaligned source: copy */
        memcpy(&blk, p, sizeof blk);
        const float d = mc_f16_to_f32(blk.d);
        float *y = dst + b * MC_QK_K; /* (256,) */
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk.ql + 64 * h, *qh = blk.qh + 32 * h;
            const int8_t *sc = blk.scales + 8 * h;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[128 * h + l + 0] = d * (float)sc[is + 0] * (float)q1;
                y[128 * h + l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[128 * h + l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[128 * h + l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

#endif
