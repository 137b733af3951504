/* cuda/matmul.cu - matrix products y = x W^T with F32 accumulation, the
 * weights read in their stored format (never widened in memory):
 *   - element types (F32, F16, BF16, FP8 E4M3 with optional block scales):
 *     one warp per output row, 16-byte weight loads (4 in flight per lane)
 *     when the rows start on 16 bytes, up to 8 tokens per pass (each weight
 *     element read once per 8 tokens);
 *     transposed storage: one thread per output, coalesced across outputs;
 *   - Q8_0 / Q4_K / Q6_K: the activations quantized to 8 bits per block exactly as
 *     the CPU does (kernels/cpu/ops.c), then integer products per block
 *     dequantized by the block scales, one warp per output row.
 * First versions, written for correctness; bandwidth tuning comes later
 * (docs/gpu.md). Launchers as cuda_ops.h. */
#include "cuda/cuda_ops.h"
#include "cuda/dequant.cuh"
#include "cuda/qdot.cuh"
#include "cuda/rowdot.cuh"

#define MM_WARPS 4 /* output rows per block (one warp each) */
#define MM_MAX_NT 8

/* ---- element-type weights, stored row-major ---- */

template <int DT, int NT>
__global__ static void __launch_bounds__(MM_WARPS * 32)
    k_gemv(mck_mat w, const float *__restrict__ x, long long ldx, float *__restrict__ y,
           long long ldy, int vec)
{
    const int lane = threadIdx.x & 31;
    const long long o = (long long)blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    if (o >= w.rows)
        return;
    const float *xr[NT];
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        xr[t] = x + (size_t)t * (size_t)ldx;
        acc[t] = 0.0f;
    }
    mck_row_dot<DT, NT>(w, o, xr, nullptr, acc, vec);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = mck_warp_sum(acc[t]);
        if (lane == 0)
            y[(size_t)t * (size_t)ldy + o] = s;
    }
}

/* ---- element-type weights, transposed storage (W^T row-major) ---- */

template <int DT, int NT>
__global__ static void __launch_bounds__(128)
    k_gemv_t(mck_mat w, const float *__restrict__ x, long long ldx, float *__restrict__ y,
             long long ldy)
{
    constexpr int ES = mck_es<DT>::v;
    const long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= w.rows)
        return;
    const unsigned char *base = (const unsigned char *)w.data;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    for (int i = 0; i < w.cols; i++) {
        float wv = mck_load<DT>(base + (size_t)i * (size_t)w.row_stride * ES, o);
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[t] = fmaf(wv, __ldg(x + (size_t)t * (size_t)ldx + i), acc[t]);
    }
#pragma unroll
    for (int t = 0; t < NT; t++)
        y[(size_t)t * (size_t)ldy + o] = acc[t];
}

template <int DT, int NT>
static void launch_f(cudaStream_t s, const mck_mat &w, const float *x, long long ldx, float *y,
                     long long ldy, int vec)
{
    if (w.transposed)
        k_gemv_t<DT, NT><<<(unsigned)((w.rows + 127) / 128), 128, 0, s>>>(w, x, ldx, y, ldy);
    else
        k_gemv<DT, NT><<<(unsigned)((w.rows + MM_WARPS - 1) / MM_WARPS), MM_WARPS * 32, 0, s>>>(
            w, x, ldx, y, ldy, vec);
}

template <int DT>
static cudaError_t run_f(cudaStream_t s, const mck_mat &w, const float *x, long long ldx, int n,
                         float *y, long long ldy)
{
    constexpr int ES = mck_es<DT>::v;
    /* 16-byte loads need every row to start on 16 bytes */
    int vec = !w.transposed && ((uintptr_t)w.data % 16) == 0 &&
              ((size_t)w.row_stride * ES) % 16 == 0;
    for (int t0 = 0; t0 < n; t0 += MM_MAX_NT) {
        int nt = n - t0 < MM_MAX_NT ? n - t0 : MM_MAX_NT;
        const float *xt = x + (size_t)t0 * (size_t)ldx;
        float *yt = y + (size_t)t0 * (size_t)ldy;
        switch (nt) {
        case 1: launch_f<DT, 1>(s, w, xt, ldx, yt, ldy, vec); break;
        case 2: launch_f<DT, 2>(s, w, xt, ldx, yt, ldy, vec); break;
        case 3: launch_f<DT, 3>(s, w, xt, ldx, yt, ldy, vec); break;
        case 4: launch_f<DT, 4>(s, w, xt, ldx, yt, ldy, vec); break;
        case 5: launch_f<DT, 5>(s, w, xt, ldx, yt, ldy, vec); break;
        case 6: launch_f<DT, 6>(s, w, xt, ldx, yt, ldy, vec); break;
        case 7: launch_f<DT, 7>(s, w, xt, ldx, yt, ldy, vec); break;
        default: launch_f<DT, 8>(s, w, xt, ldx, yt, ldy, vec); break;
        }
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

cudaError_t mck_matmul_f(cudaStream_t s, const mck_mat *w, const float *x, long long ldx, int n,
                         float *y, long long ldy)
{
    if (n <= 0 || w->rows <= 0)
        return cudaSuccess;
    switch (w->dtype) {
    case MCK_DT_F32: return run_f<MCK_DT_F32>(s, *w, x, ldx, n, y, ldy);
    case MCK_DT_F16: return run_f<MCK_DT_F16>(s, *w, x, ldx, n, y, ldy);
    case MCK_DT_BF16: return run_f<MCK_DT_BF16>(s, *w, x, ldx, n, y, ldy);
    case MCK_DT_F8_E4M3: return run_f<MCK_DT_F8_E4M3>(s, *w, x, ldx, n, y, ldy);
    default: return cudaErrorInvalidValue;
    }
}

/* ---- block formats ---- */

/* One thread per (token, block): the CPU's quantize_act_row, bit for bit
 * (no contraction: the product is rounded before the rounding to integer). */
__global__ static void k_quantize_act(const float *x, long long ldx, int n, int cols, int kp,
                                      int blk, int sub, int8_t *q, float *d, int16_t *bsum)
{
    const int nb = kp / blk;
    const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long long)n * nb)
        return;
    const int t = (int)(k / nb), b = (int)(k % nb), b0 = b * blk;
    const float *xr = x + (size_t)t * (size_t)ldx;
    const int len = cols - b0 < blk ? (cols - b0 > 0 ? cols - b0 : 0) : blk;
    float amax = 0.0f;
    for (int i = 0; i < len; i++)
        amax = fmaxf(amax, fabsf(xr[b0 + i]));
    const float sc = amax / 127.0f, is = sc > 0 ? 127.0f / amax : 0.0f;
    d[(size_t)t * nb + b] = sc;
    int8_t *qr = q + (size_t)t * kp + b0;
    int sum = 0;
    for (int i = 0; i < blk; i++) {
        int v = i < len ? __float2int_rn(__fmul_rn(xr[b0 + i], is)) : 0;
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        qr[i] = (int8_t)v;
        sum += v;
        if (bsum && i % sub == sub - 1) {
            bsum[(size_t)t * (kp / sub) + (b0 + i) / sub] = (int16_t)sum;
            sum = 0;
        }
    }
}

cudaError_t mck_quantize_act(cudaStream_t s, const float *x, long long ldx, int n, int cols,
                             int kp, int blk, int sub, int8_t *q, float *d, int16_t *bsum)
{
    long long work = (long long)n * (kp / blk);
    if (work <= 0)
        return cudaSuccess;
    if (bsum && (sub <= 0 || blk % sub != 0))
        return cudaErrorInvalidValue;
    k_quantize_act<<<(unsigned)((work + 127) / 128), 128, 0, s>>>(x, ldx, n, cols, kp, blk, sub,
                                                                  q, d, bsum);
    return cudaGetLastError();
}

/* Lane 0 writes output row o of the NT tokens, each the warp's sum of acc. */
template <int NT>
__device__ __forceinline__ void mm_store(const float (&acc)[NT], float *y, long long ldy,
                                         long long o, int lane)
{
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float sum = mck_warp_sum(acc[t]);
        if (lane == 0)
            y[(size_t)t * (size_t)ldy + o] = sum;
    }
}

/* One warp per output row o of a block-format matrix, NT tokens (rows 0 ..
 * NT - 1 of q, d, bsum): cuda/qdot.cuh's row products. */
template <int DT, int NT>
__global__ static void __launch_bounds__(MM_WARPS * 32)
    k_q(mck_mat w, const int8_t *__restrict__ q, const float *__restrict__ d,
        const int16_t *__restrict__ bsum, int kp, float *__restrict__ y, long long ldy)
{
    const int lane = threadIdx.x & 31;
    const long long o = (long long)blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    if (o >= w.rows)
        return;
    const unsigned char *row = (const unsigned char *)w.data + (size_t)o * w.row_bytes;
    long long tr[NT];
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        tr[t] = t;
        acc[t] = 0.0f;
    }
    mck_q_dot<DT, NT>(row, kp, q, d, bsum, tr, lane, acc);
    mm_store<NT>(acc, y, ldy, o, lane);
}

template <int NT>
static void launch_q(cudaStream_t s, const mck_mat &w, const int8_t *q, const float *d,
                     const int16_t *bsum, int kp, float *y, long long ldy)
{
    unsigned grid = (unsigned)((w.rows + MM_WARPS - 1) / MM_WARPS);
    if (w.dtype == MCK_DT_Q8_0)
        k_q<MCK_DT_Q8_0, NT><<<grid, MM_WARPS * 32, 0, s>>>(w, q, d, bsum, kp, y, ldy);
    else if (w.dtype == MCK_DT_Q6_K)
        k_q<MCK_DT_Q6_K, NT><<<grid, MM_WARPS * 32, 0, s>>>(w, q, d, bsum, kp, y, ldy);
    else
        k_q<MCK_DT_Q4_K, NT><<<grid, MM_WARPS * 32, 0, s>>>(w, q, d, bsum, kp, y, ldy);
}

cudaError_t mck_matmul_q(cudaStream_t s, const mck_mat *w, const int8_t *q, const float *d,
                         const int16_t *bsum, int kp, int n, float *y, long long ldy)
{
    int blk, sub, bb;
    if (!mck_q_geom(w->dtype, &blk, &sub, &bb) || (w->dtype != MCK_DT_Q8_0 && !bsum))
        return cudaErrorInvalidValue;
    for (int t0 = 0; t0 < n; t0 += MM_MAX_NT) {
        int nt = n - t0 < MM_MAX_NT ? n - t0 : MM_MAX_NT;
        const int8_t *qt = q + (size_t)t0 * kp;
        const float *dt = d + (size_t)t0 * (kp / blk);
        const int16_t *bt = bsum ? bsum + (size_t)t0 * (kp / sub) : nullptr;
        float *yt = y + (size_t)t0 * (size_t)ldy;
        switch (nt) {
        case 1: launch_q<1>(s, *w, qt, dt, bt, kp, yt, ldy); break;
        case 2: launch_q<2>(s, *w, qt, dt, bt, kp, yt, ldy); break;
        case 3: launch_q<3>(s, *w, qt, dt, bt, kp, yt, ldy); break;
        case 4: launch_q<4>(s, *w, qt, dt, bt, kp, yt, ldy); break;
        case 5: launch_q<5>(s, *w, qt, dt, bt, kp, yt, ldy); break;
        case 6: launch_q<6>(s, *w, qt, dt, bt, kp, yt, ldy); break;
        case 7: launch_q<7>(s, *w, qt, dt, bt, kp, yt, ldy); break;
        default: launch_q<8>(s, *w, qt, dt, bt, kp, yt, ldy); break;
        }
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

/* ---- BF16 activations for cuBLAS ---- */

__global__ static void k_to_bf16(const float *x, long long ldx, int n, int cols, uint16_t *out)
{
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long long)n * cols)
        return;
    long long t = k / cols, i = k % cols;
    out[k] = mck_to_bf16(x[t * ldx + i]);
}

cudaError_t mck_f32_to_bf16(cudaStream_t s, const float *x, long long ldx, int n, int cols,
                            uint16_t *out)
{
    long long work = (long long)n * cols;
    if (work <= 0)
        return cudaSuccess;
    k_to_bf16<<<(unsigned)((work + 255) / 256), 256, 0, s>>>(x, ldx, n, cols, out);
    return cudaGetLastError();
}

/* ---- FP8 weights widened to BF16 for cuBLAS ----
 * A block row per weight row (grid y), its threads striding the columns:
 * the stored code times its block scale, rounded once to BF16. */

__global__ static void k_fp8_to_bf16(mck_mat w, int r0, uint16_t *out)
{
    const long long o = (long long)r0 + blockIdx.y;
    const unsigned char *row = (const unsigned char *)w.data + (size_t)o * (size_t)w.row_stride;
    const float *srow =
        w.scale ? w.scale + (size_t)(o / w.block_rows) * (size_t)w.scale_cols : nullptr;
    uint16_t *dst = out + (size_t)blockIdx.y * (size_t)w.cols;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < w.cols; i += gridDim.x * blockDim.x) {
        float v = mck_fp8(__ldg(row + i));
        if (srow)
            v = __fmul_rn(v, __ldg(srow + i / w.block_cols));
        dst[i] = mck_to_bf16(v);
    }
}

cudaError_t mck_fp8_to_bf16(cudaStream_t s, const mck_mat *w, int r0, int rows, uint16_t *out)
{
    if (rows <= 0 || w->cols <= 0)
        return cudaSuccess;
    unsigned bx = (unsigned)((w->cols + 255) / 256);
    bx = bx > 16 ? 16 : bx;
    for (int done = 0; done < rows; done += 65535) { /* grid y is at most 65535 */
        int rr = rows - done < 65535 ? rows - done : 65535;
        k_fp8_to_bf16<<<dim3(bx, (unsigned)rr), 256, 0, s>>>(*w, r0 + done,
                                                             out + (size_t)done * (size_t)w->cols);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}
