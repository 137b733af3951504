/* kernels.h - the math the forward pass is built from (CPU reference).
 *
 * Weights stay in their stored dtype (F32, F16, BF16, F8_E4M3 with block
 * scales) and are widened to f32 one row at a time; arithmetic is f32.
 * A batch of tokens reads each weight row once.
 */
#ifndef MC_KERNELS_H
#define MC_KERNELS_H

#include "dtype.h"

#include <stddef.h>

/* A 2-D weight view W[rows, cols] (y = W x: rows = outputs, cols = inputs). Borrowed.
 * Stored row-major: W[o, i] at data[o * row_stride + i]. With `transposed`
 * the storage holds W^T (Llama 4's fused experts, [in, out] row-major):
 * W[o, i] at data[i * row_stride + o]. */
typedef struct {
    mc_dtype dtype;
    int rows, cols;
    size_t row_stride;   /* elements between consecutive stored rows */
    int transposed;
    const void *data;
    /* FP8 block scales (DeepSeek `weight_scale_inv`): scale[(r/br)*scale_cols + c/bc]
     * multiplies the stored value; NULL for unscaled weights. */
    const float *scale;
    int block_rows, block_cols, scale_cols;
} mc_mat;

/* Dequantizes (logical) row r of w into dst[w->cols]. */
void mc_mat_row_f32(const mc_mat *w, int r, float *dst);

/* y[t, o] = sum_i W[o, i] * x[t, i] for t < n; x rows ldx apart, y rows ldy apart.
 * Uses a scratch row of w->cols floats allocated on the stack / heap. */
void mc_matmul(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy);

/* out[i] = x[i] / rms(x) * w[i] (w NULL: no weight); out may alias x. */
void mc_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void mc_softmax(float *x, int n);
static inline float mc_silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
static inline float mc_sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }
float mc_dot(const float *a, const float *b, int n);
/* y += a * x */
void mc_axpy(float *y, float a, const float *x, int n);

/* Rotates the first `dim` entries of v by the angles whose cos/sin are
 * given per pair (dim/2 each). interleaved: pairs (2i, 2i+1); otherwise
 * pairs (i, i + dim/2) (rotate_half). */
void mc_rope_rotate(float *v, int dim, int interleaved, const float *cos, const float *sin);

#endif
