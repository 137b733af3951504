/* cuda/comm_sum.h - the device side of the NCCL transport's all-reduce
 * (transport/comm_nccl.c) for more than two ranks: every rank gathers all
 * contributions, then adds them in rank order 0..n-1 as comm.h promises
 * (NCCL's own reductions add in an order of its choosing). */
#ifndef MC_CUDA_COMM_SUM_H
#define MC_CUDA_COMM_SUM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[i] = in[0 * count + i] + in[1 * count + i] + ... + in[(n-1) * count + i],
 * added in that order in f32; bf16 != 0: the elements are bf16 bits, widened,
 * added in f32 and rounded once to bf16 (to nearest even, NaN kept quiet)
 * exactly as mc_f32_to_bf16. in: device [n, count]; out: device [count]
 * (may be any row of in). Queued on stream (a cudaStream_t); returns the
 * launch's cudaError_t as an int (0 = success). Nothing to free. */
int mc_cuda_sum_ranks(const void *in, void *out, size_t count, int n, int bf16, void *stream);

#ifdef __cplusplus
}
#endif

#endif
