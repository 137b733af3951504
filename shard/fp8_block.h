/* fp8_block.h - DeepSeek's FP8 block format: e4m3 values with one f32 scale
 * (`weight_scale_inv`) per 128x128 block, value = fp8 * scale. */
#ifndef MC_FP8_BLOCK_H
#define MC_FP8_BLOCK_H

#include <stdint.h>

#define MC_FP8_BLOCK 128

/* f32 -> e4m3fn, round to nearest even, saturating at +-448. */
uint8_t mc_fp8_encode(float x);

/* Quantizes one band of rows (rows <= MC_FP8_BLOCK, the band starts on a
 * block boundary) of a [*, cols] matrix: dst gets rows*cols bytes, scales
 * the ceil(cols/128) scales of the band (amax/448 per block, 1 for an
 * all-zero block). */
void mc_fp8_quantize_band(const float *src, int64_t rows, int64_t cols, uint8_t *dst,
                          float *scales);

#endif
