/* cuda/experts.cu - grouped_experts in two launches over all of a layer's
 * experts, the expert ranges read on the device (no per-expert launches or
 * host loop; the host waits once per call, for the offsets' check): for experts whose gate / up / down are element
 * types (F32, F16, BF16, FP8 with optional block scales) stored row-major
 * with rows on 16 bytes, and one intermediate width I for all.
 *
 *   k_experts_gu    block (rows bx * EX_WARPS.., expert e): one warp per
 *                   intermediate row o reads gate[e] row o and up[e] row o
 *                   once per 8 of the expert's tokens, then writes
 *                   h[r, o] = silu(min(g, lim)) * clamp(u, lim) (the CPU's
 *                   clamped SwiGLU, each step rounded as there);
 *   k_experts_down  block (rows bx * EX_WARPS.., expert e): one warp per
 *                   output row o of down[e] over h, times the row weight
 *                   when the output is weighted.
 *
 * Experts with no rows leave at once (a block each). Accumulation as the
 * one-expert GEMV of matmul.cu: per lane in F32 FMAs, then a warp sum. The
 * input-weighted case (Llama 4) scales x by the row weight as it is read,
 * rounded as the CPU's copy is. The ranges (offsets) are checked by
 * mck_offsets_check first; the launches trust them. Launchers as
 * cuda_ops.h. */
#include "cuda/cuda_ops.h"
#include "cuda/defer.cuh"
#include "cuda/dequant.cuh"
#include "cuda/qdot.cuh"
#include "cuda/rowdot.cuh"

#define EX_WARPS 4 /* rows per block (one warp each) */
#define EX_NT 8    /* tokens per pass over a row */

/* The row weight of pair row ri (the (n, k) weights read as the CPU op
 * reads them: row ri / cols, column ri % cols). */
__device__ __forceinline__ float ex_rw(const float *rw, long long rw_ld, long long rw_cols,
                                       long long ri) {
    return rw[(size_t)(ri / rw_cols) * (size_t)rw_ld + (size_t)(ri % rw_cols)];
}

/* mck_row_dot (rows on 16 bytes) with NT the smallest of 1, 2, 4, 8 that holds nt (the
 * expert's tokens of this pass: the same for the whole block, so the
 * branch does not diverge); acc[t] for t >= nt is not to be used. */
template <int DT>
__device__ __forceinline__ void ex_row_dot_n(const mck_mat &w, long long o, int nt,
                                             const float *const *xr, const float *xs, float *acc) {
    if (nt == 1)
        mck_row_dot<DT, 1>(w, o, xr, xs, acc, 1);
    else if (nt == 2)
        mck_row_dot<DT, 2>(w, o, xr, xs, acc, 1);
    else if (nt <= 4)
        mck_row_dot<DT, 4>(w, o, xr, xs, acc, 1);
    else
        mck_row_dot<DT, EX_NT>(w, o, xr, xs, acc, 1);
}

/* silu(min(g, lim)) * clamp(u, -lim, lim) (lim > 0; else silu(g) * u), each
 * step rounded as the CPU's clamped SwiGLU. */
__device__ __forceinline__ float ex_swiglu(float gv, float uv, float lim) {
    if (lim > 0) {
        gv = gv > lim ? lim : gv;
        uv = uv > lim ? lim : uv < -lim ? -lim : uv;
    }
    return __fmul_rn(gv / (1.0f + expf(-gv)), uv);
}

/* Bytes one full read of w takes (data and FP8 scales), as the CPU counts. */
template <int DT> __device__ __forceinline__ unsigned long long ex_bytes(const mck_mat &w) {
    unsigned long long b = (unsigned long long)w.rows * (unsigned long long)w.cols * mck_es<DT>::v;
    if (w.scale)
        b += (unsigned long long)((w.rows + w.block_rows - 1) / w.block_rows) *
             (unsigned long long)w.scale_cols * 4ull;
    return b;
}

template <int DT>
__global__ static void __launch_bounds__(EX_WARPS * 32)
    k_experts_gu(const mck_mat *gate, const mck_mat *up, const mck_mat *down, const int32_t *off,
                 const float *x, long long ldx, const float *rw, long long rw_ld, long long rw_cols,
                 int w_in, float *h, long long ldh, int I, float lim, unsigned long long *count,
                 const int *bad) {
    if (*bad >= 0) return;
    const int e = blockIdx.y, lane = threadIdx.x & 31;
    const int r0 = off[e], ne = off[e + 1] - r0;
    const long long o = (long long)blockIdx.x * EX_WARPS + (threadIdx.x >> 5);
    if (ne <= 0) return;
    if (count && blockIdx.x == 0 && threadIdx.x == 0) {
        const mck_mat &g = gate[e], &u = up[e], &d = down[e];
        atomicAdd(&count[0], ex_bytes<DT>(g) + ex_bytes<DT>(u) + ex_bytes<DT>(d));
        atomicAdd(&count[1], (unsigned long long)ne * ((unsigned long long)g.rows * g.cols +
                                                       (unsigned long long)u.rows * u.cols +
                                                       (unsigned long long)d.rows * d.cols));
    }
    if (o >= I) return;
    const mck_mat g = gate[e], u = up[e];
    for (int t0 = 0; t0 < ne; t0 += EX_NT) {
        const int nt = ne - t0 < EX_NT ? ne - t0 : EX_NT;
        const float *xr[EX_NT];
        float xs[EX_NT], ag[EX_NT], au[EX_NT];
#pragma unroll
        for (int t = 0; t < EX_NT; t++) {
            const long long r = r0 + t0 + (t < nt ? t : nt - 1);
            xr[t] = x + (size_t)r * (size_t)ldx;
            xs[t] = w_in ? ex_rw(rw, rw_ld, rw_cols, r) : 1.0f;
            ag[t] = au[t] = 0.0f;
        }
        ex_row_dot_n<DT>(g, o, nt, xr, w_in ? xs : nullptr, ag);
        ex_row_dot_n<DT>(u, o, nt, xr, w_in ? xs : nullptr, au);
#pragma unroll
        for (int t = 0; t < EX_NT; t++) {
            float gv = mck_warp_sum(ag[t]), uv = mck_warp_sum(au[t]);
            if (lane == 0 && t < nt)
                h[(size_t)(r0 + t0 + t) * (size_t)ldh + o] = ex_swiglu(gv, uv, lim);
        }
    }
}

template <int DT>
__global__ static void __launch_bounds__(EX_WARPS * 32)
    k_experts_down(const mck_mat *down, const int32_t *off, const float *h, long long ldh, float *y,
                   long long ldy, int H, const float *rw, long long rw_ld, long long rw_cols,
                   int w_out, const int *bad) {
    if (*bad >= 0) return;
    const int e = blockIdx.y, lane = threadIdx.x & 31;
    const int r0 = off[e], ne = off[e + 1] - r0;
    const long long o = (long long)blockIdx.x * EX_WARPS + (threadIdx.x >> 5);
    if (ne <= 0 || o >= H) return;
    const mck_mat d = down[e];
    for (int t0 = 0; t0 < ne; t0 += EX_NT) {
        const int nt = ne - t0 < EX_NT ? ne - t0 : EX_NT;
        const float *hr[EX_NT];
        float acc[EX_NT];
#pragma unroll
        for (int t = 0; t < EX_NT; t++) {
            hr[t] = h + (size_t)(r0 + t0 + (t < nt ? t : nt - 1)) * (size_t)ldh;
            acc[t] = 0.0f;
        }
        ex_row_dot_n<DT>(d, o, nt, hr, nullptr, acc);
#pragma unroll
        for (int t = 0; t < EX_NT; t++) {
            float s = mck_warp_sum(acc[t]);
            if (lane == 0 && t < nt) {
                const long long r = r0 + t0 + t;
                if (w_out) s = __fmul_rn(s, ex_rw(rw, rw_ld, rw_cols, r));
                y[(size_t)r * (size_t)ldy + o] = s;
            }
        }
    }
}

/* ---- block formats (Q8_0 / Q4_K / Q6_K): the activations quantized first ---- */

/* acc[t] (t < nt) = the block-format row . activation rows r + t of q, d, bs,
 * with NT the smallest of 1, 2, 4, 8 that holds nt (rows past nt repeat the
 * last: never past the expert's); acc[t] for t >= nt is not to be used. */
template <int DT, int NT>
__device__ __forceinline__ void exq_dot(const unsigned char *row, int kp, const int8_t *q,
                                        const float *d, const int16_t *bs, long long r, int nt,
                                        int lane, float *acc) {
    long long tr[NT];
    float a[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        tr[t] = r + (t < nt ? t : nt - 1);
        a[t] = 0.0f;
    }
    mck_q_dot<DT, NT>(row, kp, q, d, bs, tr, lane, a);
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = a[t];
}

template <int DT>
__device__ __forceinline__ void exq_dot_n(const unsigned char *row, int kp, const int8_t *q,
                                          const float *d, const int16_t *bs, long long r, int nt,
                                          int lane, float *acc) {
    if (nt == 1)
        exq_dot<DT, 1>(row, kp, q, d, bs, r, nt, lane, acc);
    else if (nt == 2)
        exq_dot<DT, 2>(row, kp, q, d, bs, r, nt, lane, acc);
    else if (nt <= 4)
        exq_dot<DT, 4>(row, kp, q, d, bs, r, nt, lane, acc);
    else
        exq_dot<DT, EX_NT>(row, kp, q, d, bs, r, nt, lane, acc);
}

/* Bytes of a block-format matrix as the CPU and the loop count them (the
 * blocks of its cols, not of its row stride: a column view reads less). */
__device__ __forceinline__ unsigned long long exq_bytes(const mck_mat &w) {
    int blk, sub, bb;
    mck_q_geom(w.dtype, &blk, &sub, &bb);
    return (unsigned long long)w.rows * (unsigned long long)((w.cols + blk - 1) / blk) * bb;
}

/* As k_experts_gu over x quantized (q, d, bs: rows as x's). */
template <int DT>
__global__ static void __launch_bounds__(EX_WARPS * 32)
    k_experts_gu_q(const mck_mat *gate, const mck_mat *up, const mck_mat *down,
                   const int32_t *off, const int8_t *__restrict__ q, const float *__restrict__ d,
                   const int16_t *__restrict__ bs, int kp, float *__restrict__ h, long long ldh,
                   int I, float lim, unsigned long long *count, const int *bad) {
    if (*bad >= 0) return;
    const int e = blockIdx.y, lane = threadIdx.x & 31;
    const int r0 = off[e], ne = off[e + 1] - r0;
    const long long o = (long long)blockIdx.x * EX_WARPS + (threadIdx.x >> 5);
    if (ne <= 0) return;
    if (count && blockIdx.x == 0 && threadIdx.x == 0) {
        const mck_mat &g = gate[e], &u = up[e], &dn = down[e];
        atomicAdd(&count[0], exq_bytes(g) + exq_bytes(u) + exq_bytes(dn));
        atomicAdd(&count[1], (unsigned long long)ne * ((unsigned long long)g.rows * g.cols +
                                                       (unsigned long long)u.rows * u.cols +
                                                       (unsigned long long)dn.rows * dn.cols));
    }
    if (o >= I) return;
    const mck_mat g = gate[e], u = up[e];
    const unsigned char *rg = (const unsigned char *)g.data + (size_t)o * g.row_bytes;
    const unsigned char *ru = (const unsigned char *)u.data + (size_t)o * u.row_bytes;
    for (int t0 = 0; t0 < ne; t0 += EX_NT) {
        const int nt = ne - t0 < EX_NT ? ne - t0 : EX_NT;
        float ag[EX_NT], au[EX_NT];
#pragma unroll
        for (int t = 0; t < EX_NT; t++)
            ag[t] = au[t] = 0.0f;
        exq_dot_n<DT>(rg, kp, q, d, bs, r0 + t0, nt, lane, ag);
        exq_dot_n<DT>(ru, kp, q, d, bs, r0 + t0, nt, lane, au);
#pragma unroll
        for (int t = 0; t < EX_NT; t++) {
            float gv = mck_warp_sum(ag[t]), uv = mck_warp_sum(au[t]);
            if (lane == 0 && t < nt)
                h[(size_t)(r0 + t0 + t) * (size_t)ldh + o] = ex_swiglu(gv, uv, lim);
        }
    }
}

/* As k_experts_down over h quantized. */
template <int DT>
__global__ static void __launch_bounds__(EX_WARPS * 32)
    k_experts_down_q(const mck_mat *down, const int32_t *off, const int8_t *__restrict__ q,
                     const float *__restrict__ d, const int16_t *__restrict__ bs, int kp,
                     float *__restrict__ y, long long ldy, int H, const float *rw,
                     long long rw_ld, long long rw_cols, int w_out, const int *bad) {
    if (*bad >= 0) return;
    const int e = blockIdx.y, lane = threadIdx.x & 31;
    const int r0 = off[e], ne = off[e + 1] - r0;
    const long long o = (long long)blockIdx.x * EX_WARPS + (threadIdx.x >> 5);
    if (ne <= 0 || o >= H) return;
    const mck_mat dn = down[e];
    const unsigned char *row = (const unsigned char *)dn.data + (size_t)o * dn.row_bytes;
    for (int t0 = 0; t0 < ne; t0 += EX_NT) {
        const int nt = ne - t0 < EX_NT ? ne - t0 : EX_NT;
        float acc[EX_NT];
#pragma unroll
        for (int t = 0; t < EX_NT; t++)
            acc[t] = 0.0f;
        exq_dot_n<DT>(row, kp, q, d, bs, r0 + t0, nt, lane, acc);
#pragma unroll
        for (int t = 0; t < EX_NT; t++) {
            float s = mck_warp_sum(acc[t]);
            if (lane == 0 && t < nt) {
                const long long r = r0 + t0 + t;
                if (w_out) s = __fmul_rn(s, ex_rw(rw, rw_ld, rw_cols, r));
                y[(size_t)r * (size_t)ldy + o] = s;
            }
        }
    }
}

/* offsets[0] == 0, offsets[E] == m, non-decreasing: *bad = -1, else the
 * first index at fault (0 or E for the ends). */
__global__ static void k_offsets_check(const int32_t *off, int E, long long m, int *bad,
                                       mck_defer d) {
    __shared__ int first;
    if (threadIdx.x == 0) first = off[0] != 0 ? 0 : 0x7fffffff;
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        if (off[e + 1] < off[e]) atomicMin(&first, e + 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int f = first;
        if (f == 0x7fffffff && off[E] != m) f = E;
        *bad = f == 0x7fffffff ? -1 : f;
        mck_defer_note(d, *bad);
    }
}

cudaError_t mck_offsets_check(cudaStream_t s, const int32_t *off, int n_experts, long long m,
                              int *bad, mck_defer d) {
    k_offsets_check<<<1, 256, 0, s>>>(off, n_experts, m, bad, d);
    return cudaGetLastError();
}

template <int DT> static cudaError_t run_experts(cudaStream_t s, const mck_experts *p) {
    dim3 b(EX_WARPS * 32);
    dim3 g1((unsigned)((p->I + EX_WARPS - 1) / EX_WARPS), (unsigned)p->n_experts);
    k_experts_gu<DT><<<g1, b, 0, s>>>(p->gate, p->up, p->down, p->off, p->x, p->ldx, p->rw,
                                      p->rw_ld, p->rw_cols, p->w_in, p->h, p->ldh, p->I, p->lim,
                                      p->count, p->bad);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    dim3 g2((unsigned)((p->H + EX_WARPS - 1) / EX_WARPS), (unsigned)p->n_experts);
    k_experts_down<DT><<<g2, b, 0, s>>>(p->down, p->off, p->h, p->ldh, p->y, p->ldy, p->H, p->rw,
                                        p->rw_ld, p->rw_cols, p->rw && !p->w_in, p->bad);
    return cudaGetLastError();
}

cudaError_t mck_experts_run(cudaStream_t s, const mck_experts *p) {
    if (p->n_experts <= 0 || p->I <= 0 || p->H <= 0) return cudaSuccess;
    if (!p->bad) return cudaErrorInvalidValue;
    if (p->n_experts > 65535) return cudaErrorInvalidValue; /* grid.y */
    switch (p->dtype) {
    case MCK_DT_F32:
        return run_experts<MCK_DT_F32>(s, p);
    case MCK_DT_F16:
        return run_experts<MCK_DT_F16>(s, p);
    case MCK_DT_BF16:
        return run_experts<MCK_DT_BF16>(s, p);
    case MCK_DT_F8_E4M3:
        return run_experts<MCK_DT_F8_E4M3>(s, p);
    default:
        return cudaErrorInvalidValue;
    }
}

template <int DT> static void exq_gu(cudaStream_t s, const mck_experts_q *p, dim3 g, dim3 b) {
    k_experts_gu_q<DT><<<g, b, 0, s>>>(p->gate, p->up, p->down, p->off, p->qx, p->dx, p->bx,
                                        p->kpx, p->h, p->ldh, p->I, p->lim, p->count, p->bad);
}

template <int DT> static void exq_down(cudaStream_t s, const mck_experts_q *p, dim3 g, dim3 b) {
    k_experts_down_q<DT><<<g, b, 0, s>>>(p->down, p->off, p->qh, p->dh, p->bh, p->kph, p->y,
                                          p->ldy, p->H, p->rw, p->rw_ld, p->rw_cols,
                                          p->rw && !p->w_in, p->bad);
}

cudaError_t mck_experts_run_q(cudaStream_t s, const mck_experts_q *p) {
    if (p->n_experts <= 0 || p->I <= 0 || p->H <= 0 || p->m <= 0) return cudaSuccess;
    int bg, sg, bd, sd, bytes;
    if (!p->bad || !mck_q_geom(p->dt_gu, &bg, &sg, &bytes) ||
        !mck_q_geom(p->dt_down, &bd, &sd, &bytes))
        return cudaErrorInvalidValue;
    if (p->n_experts > 65535 || p->m > 0x7fffffffLL || p->kpx % bg || p->kph % bd ||
        p->kpx < p->H || p->kph < p->I || (p->w_in && (!p->xs || !p->rw)))
        return cudaErrorInvalidValue;
    const float *x = p->x;
    long long ldx = p->ldx;
    cudaError_t e;
    if (p->w_in) { /* Llama 4: the router weight scales the input before it is quantized */
        e = mck_row_scale(s, p->x, p->ldx, p->rw, p->rw_ld, p->rw_cols, 0, p->xs, p->H, p->m,
                          p->H);
        if (e != cudaSuccess) return e;
        x = p->xs;
        ldx = p->H;
    }
    e = mck_quantize_act(s, x, ldx, (int)p->m, p->H, p->kpx, bg, sg, p->qx, p->dx,
                         p->dt_gu == MCK_DT_Q8_0 ? nullptr : p->bx);
    if (e != cudaSuccess) return e;
    dim3 b(EX_WARPS * 32);
    dim3 g1((unsigned)((p->I + EX_WARPS - 1) / EX_WARPS), (unsigned)p->n_experts);
    if (p->dt_gu == MCK_DT_Q8_0)
        exq_gu<MCK_DT_Q8_0>(s, p, g1, b);
    else if (p->dt_gu == MCK_DT_Q4_K)
        exq_gu<MCK_DT_Q4_K>(s, p, g1, b);
    else
        exq_gu<MCK_DT_Q6_K>(s, p, g1, b);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    e = mck_quantize_act(s, p->h, p->ldh, (int)p->m, p->I, p->kph, bd, sd, p->qh, p->dh,
                         p->dt_down == MCK_DT_Q8_0 ? nullptr : p->bh);
    if (e != cudaSuccess) return e;
    dim3 g2((unsigned)((p->H + EX_WARPS - 1) / EX_WARPS), (unsigned)p->n_experts);
    if (p->dt_down == MCK_DT_Q8_0)
        exq_down<MCK_DT_Q8_0>(s, p, g2, b);
    else if (p->dt_down == MCK_DT_Q4_K)
        exq_down<MCK_DT_Q4_K>(s, p, g2, b);
    else
        exq_down<MCK_DT_Q6_K>(s, p, g2, b);
    return cudaGetLastError();
}
