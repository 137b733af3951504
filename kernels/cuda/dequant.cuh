/* cuda/dequant.cuh - device helpers shared by the CUDA kernels: weight
 * element decoding bit for bit as core/dtype.h and kernels/cpu decode them
 * (F16, BF16, FP8 E4M3 "fn", Q8_0, Q4_K and Q6_K blocks), and warp / block sums.
 * Header-only, internal to kernels/cuda. */
#ifndef MC_CUDA_DEQUANT_CUH
#define MC_CUDA_DEQUANT_CUH

#include "cuda/cuda_ops.h"

#include <cuda_fp16.h>
#include <stdint.h>

/* Pages row of position p of sequence s in a paged cache (mck_kv: rps
 * rows per slot, row r of them). */
__device__ __forceinline__ long long mck_kv_row(const mck_kv &kv, int s, long long p, int rps,
                                                int r)
{
    long long b = kv.bt[(size_t)s * (size_t)kv.bt_ld + (size_t)(p / kv.block_size)];
    return (b * kv.block_size + p % kv.block_size) * rps + r;
}

template <int DT> struct mck_es {
    static constexpr int v = DT == MCK_DT_F32 ? 4 : DT == MCK_DT_F8_E4M3 ? 1 : 2;
};

__device__ __forceinline__ float mck_f16(uint16_t h)
{
    return __half2float(__ushort_as_half(h)); /* exact */
}

__device__ __forceinline__ float mck_bf16(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

/* As mc_fp8_e4m3_to_f32: exact for all 256 codes. */
__device__ __forceinline__ float mck_fp8(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t e = (v >> 3) & 0xfu, man = v & 0x7u;
    if (e == 0)
        return __uint_as_float(__float_as_uint((float)man * (1.0f / 512.0f)) | sign);
    if (e == 0xf && man == 0x7)
        return __uint_as_float(sign | 0x7fc00000u);
    return __uint_as_float(sign | ((e + 120u) << 23) | (man << 20));
}

/* f to BF16, rounded to nearest even; NaN stays NaN (as mc_f32_to_bf16). */
__device__ __forceinline__ uint16_t mck_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ uint16_t mck_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

/* Element i of an element-type row (no scale applied). */
template <int DT> __device__ __forceinline__ float mck_load(const unsigned char *row, long long i)
{
    if (DT == MCK_DT_F32)
        return ((const float *)row)[i];
    if (DT == MCK_DT_BF16)
        return mck_bf16(((const uint16_t *)row)[i]);
    if (DT == MCK_DT_F16)
        return mck_f16(((const uint16_t *)row)[i]);
    return mck_fp8(row[i]);
}

/* The 16 / size elements of 16 loaded bytes. */
template <int DT> __device__ __forceinline__ void mck_unpack16(uint4 raw, float *out)
{
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        if (DT == MCK_DT_F32) {
            out[k] = __uint_as_float(w[k]);
        } else if (DT == MCK_DT_BF16) {
            out[2 * k] = mck_bf16((uint16_t)(w[k] & 0xffffu));
            out[2 * k + 1] = mck_bf16((uint16_t)(w[k] >> 16));
        } else if (DT == MCK_DT_F16) {
            out[2 * k] = mck_f16((uint16_t)(w[k] & 0xffffu));
            out[2 * k + 1] = mck_f16((uint16_t)(w[k] >> 16));
        } else {
#pragma unroll
            for (int b = 0; b < 4; b++)
                out[4 * k + b] = mck_fp8((uint8_t)(w[k] >> (8 * b)));
        }
    }
}

/* Q4_K sub-block j's 6-bit scale and min (mc_q4_k_scale_min). */
__device__ __forceinline__ void mck_q4_k_scale_min(int j, const unsigned char *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Element (o, i) of any weight, dequantized as the CPU does (mc_mat_row_f32:
 * element types times their FP8 block scale; Q8_0 d * q; Q4_K d*sc*q - dmin*m;
 * Q6_K d*sc*(q - 32)). */
__device__ __forceinline__ float mck_weight_at(const mck_mat &w, long long o, long long i)
{
    const unsigned char *base = (const unsigned char *)w.data;
    switch (w.dtype) {
    case MCK_DT_Q8_0: {
        const unsigned char *b = base + (size_t)o * w.row_bytes + (size_t)(i / 32) * MCK_Q8_0_BYTES;
        return __fmul_rn(mck_f16(mck_u16(b)), (float)(int8_t)b[2 + i % 32]);
    }
    case MCK_DT_Q4_K: {
        const unsigned char *b =
            base + (size_t)o * w.row_bytes + (size_t)(i / 256) * MCK_Q4_K_BYTES;
        int e = (int)(i % 256), c = e / 64, r = e % 64, j = 2 * c + (r >= 32);
        int sc, m;
        mck_q4_k_scale_min(j, b + 4, &sc, &m);
        uint8_t qb = b[16 + 32 * c + (r & 31)];
        int q = r >= 32 ? qb >> 4 : qb & 0xF;
        float dj = __fmul_rn(mck_f16(mck_u16(b)), (float)sc);
        float mj = __fmul_rn(mck_f16(mck_u16(b + 2)), (float)m);
        return __fsub_rn(__fmul_rn(dj, (float)q), mj);
    }
    case MCK_DT_Q6_K: { /* (d * sc) * (q - 32), as mc_dequantize_row_q6_k */
        const unsigned char *b =
            base + (size_t)o * w.row_bytes + (size_t)(i / 256) * MCK_Q6_K_BYTES;
        int e = (int)(i % 256), h = e / 128, g = (e % 128) / 32, l = e % 32;
        int lo = b[64 * h + 32 * (g & 1) + l];
        lo = g >= 2 ? lo >> 4 : lo & 0xF;
        int q = (lo | ((b[128 + 32 * h + l] >> (2 * g)) & 3) << 4) - 32;
        int sc = (signed char)b[192 + 8 * h + 2 * g + l / 16];
        return __fmul_rn(__fmul_rn(mck_f16(mck_u16(b + 208)), (float)sc), (float)q);
    }
    default:
        break;
    }
    size_t idx = w.transposed ? (size_t)i * (size_t)w.row_stride + (size_t)o
                              : (size_t)o * (size_t)w.row_stride + (size_t)i;
    float v;
    switch (w.dtype) {
    case MCK_DT_F32:
        v = ((const float *)base)[idx];
        break;
    case MCK_DT_BF16:
        v = mck_bf16(((const uint16_t *)base)[idx]);
        break;
    case MCK_DT_F16:
        v = mck_f16(((const uint16_t *)base)[idx]);
        break;
    default:
        v = mck_fp8(base[idx]);
        break;
    }
    if (w.scale)
        v = __fmul_rn(v, w.scale[(size_t)(o / w.block_rows) * (size_t)w.scale_cols +
                                 (size_t)(i / w.block_cols)]);
    return v;
}

__device__ __forceinline__ float mck_warp_sum(float v)
{
#pragma unroll
    for (int k = 16; k > 0; k >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, k);
    return v;
}

__device__ __forceinline__ double mck_warp_sum_d(double v)
{
#pragma unroll
    for (int k = 16; k > 0; k >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, k);
    return v;
}

__device__ __forceinline__ float mck_warp_max(float v)
{
#pragma unroll
    for (int k = 16; k > 0; k >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, k));
    return v;
}

/* A block's maximum / sum of v (THREADS threads, every one calling; red:
 * THREADS / 32 shared words), the result on every thread; the warps'
 * partials added in warp order. */
template <int THREADS> __device__ __forceinline__ float mck_block_max(float v, float *red)
{
    v = mck_warp_max(v);
    __syncthreads(); /* red may still be read by a previous call */
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int i = 0; i < THREADS / 32; i++)
        m = fmaxf(m, red[i]);
    return m;
}

template <int THREADS> __device__ __forceinline__ float mck_block_sum(float v, float *red)
{
    v = mck_warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < THREADS / 32; i++)
        s += red[i];
    return s;
}

template <int THREADS> __device__ __forceinline__ double mck_block_sum_d(double v, double *red)
{
    v = mck_warp_sum_d(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = 0;
    for (int i = 0; i < THREADS / 32; i++)
        s += red[i];
    return s;
}

#endif
