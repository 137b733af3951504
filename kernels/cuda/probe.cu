/* cuda/probe.cu - the device ceilings bench compares against: a read
 * stream over device memory (16-byte loads, grid-stride) and an FMA loop.
 * Launchers as cuda_ops.h. */
#include "cuda/cuda_ops.h"

__global__ static void k_read(const uint4 *__restrict__ p, size_t n, unsigned long long *sink)
{
    uint32_t a = 0, b = 0;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        uint4 v = __ldg(p + i);
        a ^= v.x ^ v.z;
        b ^= v.y ^ v.w;
    }
    unsigned long long r = ((unsigned long long)a << 32) | b;
    for (int k = 16; k > 0; k >>= 1)
        r ^= __shfl_xor_sync(0xffffffffu, r, k);
    if ((threadIdx.x & 31) == 0)
        atomicXor(sink, r);
}

cudaError_t mck_probe_read(cudaStream_t s, const void *buf, size_t bytes, int blocks,
                           unsigned long long *sink)
{
    if (bytes < 16 || blocks < 1)
        return cudaSuccess;
    k_read<<<(unsigned)blocks, 512, 0, s>>>((const uint4 *)buf, bytes / 16, sink);
    return cudaGetLastError();
}

__global__ static void k_fma(int iters, float *sink)
{
    float a[8];
#pragma unroll
    for (int j = 0; j < 8; j++)
        a[j] = 1.0f + 1e-3f * (float)(threadIdx.x + j);
    const float m = 0.999999f, c = 1e-7f;
    for (int k = 0; k < iters; k++) {
#pragma unroll
        for (int j = 0; j < 8; j++)
            a[j] = fmaf(a[j], m, c);
    }
    float sum = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
    if (sum == 12345.678f) /* never true: keeps the loop */
        *sink = sum;
}

cudaError_t mck_probe_fma(cudaStream_t s, int blocks, int threads, int iters, float *sink)
{
    k_fma<<<(unsigned)blocks, (unsigned)threads, 0, s>>>(iters, sink);
    return cudaGetLastError();
}

__global__ static void k_fill(uint32_t *p, size_t n)
{
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        p[i] = (uint32_t)(i * 2654435761u) ^ 0x5bd1e995u;
}

cudaError_t mck_fill_pattern(cudaStream_t s, void *buf, size_t bytes)
{
    if (bytes < 4)
        return cudaSuccess;
    k_fill<<<1024, 256, 0, s>>>((uint32_t *)buf, bytes / 4);
    return cudaGetLastError();
}
