/* cuda/defer.cuh - the note a content-check kernel leaves for the host when
 * the checks are deferred (docs/gpu.md, "Content checks"): one thread, after
 * the check's answer v (the first token, pair or index at fault, or -1). */
#ifndef MC_CUDA_DEFER_CUH
#define MC_CUDA_DEFER_CUH

#include "cuda/cuda_ops.h"

/* The first refusal since the host last read d.rec: rec[0..3) = {op, v, k}.
 * d.rec NULL: checks at the op, nothing to note. */
__device__ __forceinline__ void mck_defer_note(const mck_defer d, long long v)
{
    if (d.rec && v >= 0 && d.rec[0] < 0) {
        d.rec[1] = v;
        d.rec[2] = d.k;
        d.rec[0] = d.op;
    }
}

#endif
