/* cuda/cuda_ops.h - the CUDA kernels' launchers (cuda/ops.cu, cuda/matmul.cu,
 * cuda/probe.cu), callable from C (cuda/backend_cuda*.c). Each launcher
 * queues its kernel(s) on `stream` and returns cudaGetLastError() after the
 * launch (cudaSuccess when nothing was launched because there is no work);
 * it allocates nothing and frees nothing: every pointer is device memory the
 * caller owns and keeps alive until the stream has run the kernel.
 *
 * Activations are F32 rows `ld` elements apart (backend.h's row stride).
 * Dtype codes are mc_dtype's values (core/dtype.h; checked at compile time
 * in cuda/backend_cuda.c), repeated here because the device code is C++ and
 * does not include the C headers. */
#ifndef MC_CUDA_OPS_H
#define MC_CUDA_OPS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    MCK_DT_F32 = 0,
    MCK_DT_F16 = 1,
    MCK_DT_BF16 = 2,
    MCK_DT_F8_E4M3 = 3,
    MCK_DT_I64 = 4,
    MCK_DT_I32 = 5,
    MCK_DT_Q8_0 = 32,
    MCK_DT_Q4_K = 33,
};

/* A 2-D weight W[rows, cols] in device memory (as kernels.h's mc_mat).
 * Element types: W[o, i] at element o * row_stride + i of data, or with
 * `transposed` at i * row_stride + o. Q8_0 / Q4_K: stored row o starts at
 * byte o * row_bytes and holds whole blocks (never transposed). FP8: scale
 * (or NULL) [(o / block_rows) * scale_cols + i / block_cols] multiplies the
 * stored value. */
typedef struct {
    int dtype;
    int rows, cols;
    long long row_stride; /* elements */
    size_t row_bytes;     /* bytes of one stored row (block formats) */
    int transposed;
    const void *data;
    const float *scale;
    int block_rows, block_cols;
    long long scale_cols;
} mck_mat;

/* ---- element-wise and row ops (cuda/ops.cu) ---- */

/* y[r] = x[r] / rms(x[r]) * w (w NULL: no weight); y may be x. */
cudaError_t mck_rmsnorm(cudaStream_t s, const float *x, long long ldx, const float *w, float *y,
                        long long ldy, long long rows, int d, float eps);
/* y[r] = (x[r] - mean) / sqrt(var + eps) * w + b (w, b NULL: 1, 0); y may be x. */
cudaError_t mck_layernorm(cudaStream_t s, const float *x, long long ldx, const float *w,
                          const float *b, float *y, long long ldy, long long rows, int d,
                          float eps);
/* y[r] = softmax(x[r]); y may be x. */
cudaError_t mck_softmax(cudaStream_t s, const float *x, long long ldx, float *y, long long ldy,
                        long long rows, int d);
/* y = a + b; y may be a or b. */
cudaError_t mck_add(cudaStream_t s, const float *a, long long lda, const float *b, long long ldb,
                    float *y, long long ldy, long long rows, int d);
/* y = silu(g) * u; y may be g or u. */
cudaError_t mck_swiglu(cudaStream_t s, const float *g, long long ldg, const float *u,
                       long long ldu, float *y, long long ldy, long long rows, int d);
/* *bad = the first t < n with pos[t] outside [0, P), or -1 (bad: one device int). */
cudaError_t mck_rope_check(cudaStream_t s, const int32_t *pos, long long n, long long P, int *bad);
/* Rotates x (n * heads rows of d columns; row t * heads + h) in place by rows
 * pos[t] of cs, sn (rows ldc / lds apart); does nothing when *bad >= 0. */
cudaError_t mck_rope(cudaStream_t s, float *x, long long ldx, long long n, long long heads, int d,
                     const int32_t *pos, const float *cs, long long ldc, const float *sn,
                     long long lds, int interleaved, const int *bad);
/* *first = min over non-finite x[r, c] of r * d + c; the caller sets it to
 * ~0 before (one device unsigned long long). */
cudaError_t mck_find_nonfinite(cudaStream_t s, const float *x, long long ldx, long long rows,
                               int d, unsigned long long *first);
/* y[t] = row ids[t] - id0 of the table dequantized, zeros outside it; ids
 * I32 (ids32) or I64 (ids64, the other NULL). */
cudaError_t mck_embed(cudaStream_t s, const mck_mat *table, const int32_t *ids32,
                      const int64_t *ids64, long long n, long long id0, float *y, long long ldy);

/* ---- matrix products (cuda/matmul.cu) ---- */

/* y[t, o] = sum_i W[o, i] x[t, i] for element-type weights (F32, F16, BF16,
 * F8_E4M3 with or without scales, transposed or not), F32 accumulation;
 * each weight element is read once per 8 tokens. */
cudaError_t mck_matmul_f(cudaStream_t s, const mck_mat *w, const float *x, long long ldx, int n,
                         float *y, long long ldy);
/* The activations of a block-format product as the CPU quantizes them
 * (kernels/cpu/ops.c quantize_act_row): q (n, kp) int8, d (n, kp / blk)
 * F32 scales, and for Q4_K bsum (n, kp / 32) int16 sums (else NULL). */
cudaError_t mck_quantize_act(cudaStream_t s, const float *x, long long ldx, int n, int cols,
                             int kp, int blk, int8_t *q, float *d, int16_t *bsum);
/* y = W x for Q8_0 / Q4_K weights from the quantized activations above
 * (integer products per block, as the CPU kernels). */
cudaError_t mck_matmul_q(cudaStream_t s, const mck_mat *w, const int8_t *q, const float *d,
                         const int16_t *bsum, int kp, int n, float *y, long long ldy);
/* out (n, cols) BF16 contiguous = x rounded to nearest even. */
cudaError_t mck_f32_to_bf16(cudaStream_t s, const float *x, long long ldx, int n, int cols,
                            uint16_t *out);

/* ---- probes (cuda/probe.cu) ---- */

/* Reads `bytes` (a multiple of 16) of buf once, 16 bytes per load; sink
 * (one device unsigned long long) receives a value depending on every byte. */
cudaError_t mck_probe_read(cudaStream_t s, const void *buf, size_t bytes, int blocks,
                           unsigned long long *sink);
/* blocks x threads threads each run `iters` rounds of 8 independent FMA
 * chains: 16 * iters flops per thread. */
cudaError_t mck_probe_fma(cudaStream_t s, int blocks, int threads, int iters, float *sink);
/* Fills bytes (a multiple of 4) with a pattern (probe input, never zeros). */
cudaError_t mck_fill_pattern(cudaStream_t s, void *buf, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
