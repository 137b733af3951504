// cuda/comm_sum.cu - rank-ordered sums for the NCCL all-reduce (comm_sum.h).
#include "cuda/comm_sum.h"

#include <cuda_runtime.h>
#include <stdint.h>

namespace {

__device__ float bf16_to_f32(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

__device__ uint16_t f32_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// in [n, count], out [count]: one thread per element, grid-stride
__global__ void sum_f32(const float *in, float *out, size_t count, int n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = in[i];
        for (int r = 1; r < n; r++)
            s = __fadd_rn(s, in[(size_t)r * count + i]);
        out[i] = s;
    }
}

__global__ void sum_bf16(const uint16_t *in, uint16_t *out, size_t count, int n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = bf16_to_f32(in[i]);
        for (int r = 1; r < n; r++)
            s = __fadd_rn(s, bf16_to_f32(in[(size_t)r * count + i]));
        out[i] = f32_to_bf16(s);
    }
}

} // namespace

extern "C" int mc_cuda_sum_ranks(const void *in, void *out, size_t count, int n, int bf16,
                                 void *stream)
{
    if (count == 0 || n <= 0)
        return 0;
    size_t blocks = (count + 255) / 256;
    if (blocks > 65535)
        blocks = 65535;
    cudaStream_t s = (cudaStream_t)stream;
    if (bf16)
        sum_bf16<<<(unsigned)blocks, 256, 0, s>>>((const uint16_t *)in, (uint16_t *)out, count, n);
    else
        sum_f32<<<(unsigned)blocks, 256, 0, s>>>((const float *)in, (float *)out, count, n);
    return (int)cudaGetLastError();
}
