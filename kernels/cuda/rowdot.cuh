/* cuda/rowdot.cuh - one warp's dot products of a weight row stored in an
 * element type (F32, F16, BF16, FP8 E4M3 with optional block scales) with up
 * to NT activation rows, F32 FMAs per lane: the one-expert GEMV
 * (matmul.cu's k_gemv) and the grouped experts (experts.cu) share it. */
#ifndef MC_CUDA_ROWDOT_CUH
#define MC_CUDA_ROWDOT_CUH

#include "cuda/cuda_ops.h"
#include "cuda/dequant.cuh"

#define MCK_ROW_UNROLL 4 /* 16-byte weight loads in flight per lane */

/* acc[t] += the 16 / size weights of raw (elements i.., times their FP8
 * scales when srow) . x rows xr[t] (scaled by xs[t] when xs). */
template <int DT, int NT>
__device__ __forceinline__ void mck_row_vec(uint4 raw, int i, const float *srow, int block_cols,
                                            const float *const *xr, const float *xs, float *acc) {
    constexpr int E = 16 / mck_es<DT>::v;
    float wv[E];
    mck_unpack16<DT>(raw, wv);
    if (srow) {
#pragma unroll
        for (int j = 0; j < E; j++)
            wv[j] = __fmul_rn(wv[j], srow[(i + j) / block_cols]);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
#pragma unroll
        for (int j = 0; j < E; j++) {
            float xv = __ldg(xr[t] + i + j);
            if (xs) xv = __fmul_rn(xv, xs[t]);
            acc[t] = fmaf(wv[j], xv, acc[t]);
        }
    }
}

/* acc[t] += row o of w . x rows xr[t] (scaled by xs[t] when xs) for t < NT,
 * summed per lane (the caller sums the warp): with vec (rows on 16 bytes)
 * the row's 16-byte vectors, MCK_ROW_UNROLL loads in flight per lane, then
 * the tail elements one by one; without, every element one by one. */
template <int DT, int NT>
__device__ __forceinline__ void mck_row_dot(const mck_mat &w, long long o, const float *const *xr,
                                            const float *xs, float *acc, int vec) {
    constexpr int ES = mck_es<DT>::v, E = 16 / ES;
    const int lane = threadIdx.x & 31;
    const unsigned char *row =
        (const unsigned char *)w.data + (size_t)o * (size_t)w.row_stride * ES;
    const float *srow =
        w.scale ? w.scale + (size_t)(o / w.block_rows) * (size_t)w.scale_cols : nullptr;
    const int nv = vec ? w.cols / E : 0;
    const uint4 *rv = (const uint4 *)row;
    int v = lane;
    for (; v + 32 * (MCK_ROW_UNROLL - 1) < nv; v += 32 * MCK_ROW_UNROLL) {
        uint4 raw[MCK_ROW_UNROLL];
#pragma unroll
        for (int k = 0; k < MCK_ROW_UNROLL; k++)
            raw[k] = __ldg(rv + v + 32 * k);
#pragma unroll
        for (int k = 0; k < MCK_ROW_UNROLL; k++)
            mck_row_vec<DT, NT>(raw[k], (v + 32 * k) * E, srow, w.block_cols, xr, xs, acc);
    }
    for (; v < nv; v += 32)
        mck_row_vec<DT, NT>(__ldg(rv + v), v * E, srow, w.block_cols, xr, xs, acc);
    for (int i = nv * E + lane; i < w.cols; i += 32) {
        float wv = mck_load<DT>(row, i);
        if (srow) wv = __fmul_rn(wv, srow[i / w.block_cols]);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float xv = __ldg(xr[t] + i);
            if (xs) xv = __fmul_rn(xv, xs[t]);
            acc[t] = fmaf(wv, xv, acc[t]);
        }
    }
}

#endif
