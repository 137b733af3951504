/* cuda/moe.cu - the CUDA backend's MoE block kernels: router top-k, the
 * permutation of token-expert pairs by expert and back, and the element-wise
 * pieces of the grouped experts (row weights, clamped SwiGLU; the products
 * are cuda/matmul.cu's). Each computes what the CPU op computes
 * (kernels/cpu/backend_cpu_moe.c) in the same order of operations where it
 * decides a result: the router's choice and its tie order, the stable slot
 * numbering, the unpermute's ascending-slot sum of rounded products.
 * First versions written for correctness:
 *   - router: one block per token, scores in parallel, the group choice and
 *     the top-k by one thread (k passes of a masked argmax over E, as the CPU);
 *   - permutation: one block for the whole call, a thread per expert that
 *     walks all pairs in order (O(E * n * k) reads; later a histogram and a
 *     scan over many blocks);
 *   - unpermute: a thread per (token, column), the token's pairs in
 *     ascending slot order by k passes (k is small).
 * Launchers as cuda_ops.h. */
#include "cuda/cuda_ops.h"
#include "cuda/defer.cuh"
#include "cuda/dequant.cuh"

#include <math.h>

#define RT_THREADS 128

/* ---- router ---- */

/* mc_argmax_masked: the lowest index on ties, a NaN never beats an earlier value. */
__device__ static int argmax_masked(const float *v, const unsigned char *ok, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (ok[i] && (best < 0 || v[i] > v[best]))
            best = i;
    return best;
}

/* mc_top2_sum */
__device__ static float top2_sum(const float *c, int n)
{
    int a = 0;
    for (int i = 1; i < n; i++)
        if (c[i] > c[a])
            a = i;
    int b = a == 0 ? 1 : 0;
    for (int i = 0; i < n; i++)
        if (i != a && c[i] > c[b])
            b = i;
    return c[a] + c[b];
}

__global__ static void __launch_bounds__(RT_THREADS)
    k_router(const float *logits, long long ldl, int E, const float *bias, int score, int k,
             int n_group, int topk_group, int renorm, float norm_eps, float scale, int32_t *ids,
             long long ld_ids, float *wout, long long ld_w)
{
    extern __shared__ float sh[]; /* s [E] | c [E] | gs [G] | ok [E] + gok [G] bytes */
    __shared__ float redf[RT_THREADS / 32];
    __shared__ double redd[RT_THREADS / 32];
    const int G = n_group > 1 ? n_group : 1;
    float *sv = sh, *c = sh + E, *gs = c + E;
    unsigned char *ok = (unsigned char *)(gs + G), *gok = ok + E;
    const long long t = blockIdx.x;
    const float *lg = logits + (size_t)t * (size_t)ldl;
    if (score == 0) { /* softmax: maximum, exponentials, the sum in double, one reciprocal */
        float mx = -INFINITY;
        for (int e = threadIdx.x; e < E; e += RT_THREADS)
            mx = fmaxf(mx, lg[e]);
        mx = mck_block_max<RT_THREADS>(mx, redf);
        double sum = 0;
        for (int e = threadIdx.x; e < E; e += RT_THREADS) {
            sv[e] = expf(lg[e] - mx);
            sum += sv[e];
        }
        float inv = (float)(1.0 / mck_block_sum_d<RT_THREADS>(sum, redd));
        for (int e = threadIdx.x; e < E; e += RT_THREADS)
            sv[e] = __fmul_rn(sv[e], inv);
    } else {
        for (int e = threadIdx.x; e < E; e += RT_THREADS) {
            float x = lg[e];
            sv[e] = score == 2 ? sqrtf(x > 20.0f ? x : log1pf(expf(x)))
                               : 1.0f / (1.0f + expf(-x));
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += RT_THREADS) {
        float b = score == 3 ? lg[e] : sv[e];
        c[e] = bias ? __fadd_rn(b, bias[e]) : b;
        ok[e] = 1;
    }
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    if (n_group > 1 && topk_group < n_group) {
        int per = E / G;
        for (int g = 0; g < G; g++) {
            gs[g] = top2_sum(c + (size_t)g * per, per);
            gok[g] = 1;
        }
        for (int e = 0; e < E; e++)
            ok[e] = 0;
        for (int j = 0; j < topk_group; j++) {
            int g = argmax_masked(gs, gok, G);
            gok[g] = 0;
            for (int e = 0; e < per; e++)
                ok[(size_t)g * per + e] = 1;
        }
    }
    int32_t *it = ids + (size_t)t * (size_t)ld_ids;
    float *wt = wout + (size_t)t * (size_t)ld_w;
    double sum = 0;
    for (int j = 0; j < k; j++) {
        int e = argmax_masked(c, ok, E);
        ok[e] = 0;
        it[j] = e;
        wt[j] = sv[e];
        sum += sv[e];
    }
    if (renorm) {
        float denom = __fadd_rn((float)sum, norm_eps);
        for (int j = 0; j < k; j++)
            wt[j] = wt[j] / denom;
    }
    for (int j = 0; j < k; j++)
        wt[j] = __fmul_rn(wt[j], scale);
}

cudaError_t mck_router_topk(cudaStream_t s, const float *logits, long long ldl, long long n,
                            int E, const float *bias, int score, int k, int n_group,
                            int topk_group, int renorm, float norm_eps, float scale, int32_t *ids,
                            long long ld_ids, float *w, long long ld_w)
{
    if (n <= 0)
        return cudaSuccess;
    int G = n_group > 1 ? n_group : 1;
    size_t shm = (size_t)(2 * E + G) * sizeof(float) + (size_t)(E + G);
    if (shm > 40 * 1024)
        return cudaErrorInvalidValue;
    k_router<<<(unsigned)n, RT_THREADS, shm, s>>>(logits, ldl, E, bias, score, k, n_group,
                                                  topk_group, renorm, norm_eps, scale, ids, ld_ids,
                                                  w, ld_w);
    return cudaGetLastError();
}

/* ---- permutation by expert ---- */

__device__ __forceinline__ int32_t pair_id(const int32_t *ids, long long ld, int k, long long i)
{
    return ids[(size_t)(i / k) * (size_t)ld + (size_t)(i % k)];
}

__global__ static void k_moe_route(const int32_t *ids, long long ld_ids, long long n, int k, int E,
                                   int32_t *off, int32_t *slot, long long ld_slot, int *bad,
                                   mck_defer d)
{
    __shared__ unsigned long long first;
    const long long N = n * k;
    if (threadIdx.x == 0)
        first = ~0ull;
    __syncthreads();
    for (long long i = threadIdx.x; i < N; i += blockDim.x) {
        int32_t e = pair_id(ids, ld_ids, k, i);
        if (e < 0 || e >= E)
            atomicMin(&first, (unsigned long long)i);
    }
    __syncthreads();
    if (first != ~0ull) { /* refused: nothing written */
        if (threadIdx.x == 0) {
            *bad = first > 0x7fffffffull ? 0x7fffffff : (int)first;
            mck_defer_note(d, *bad);
        }
        return;
    }
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int32_t cnt = 0;
        for (long long i = 0; i < N; i++)
            cnt += pair_id(ids, ld_ids, k, i) == e;
        off[e + 1] = cnt;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        off[0] = 0;
        for (int e = 0; e < E; e++)
            off[e + 1] += off[e];
        *bad = -1;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) { /* stable: pairs in order t * k + j */
        int32_t r = off[e];
        for (long long i = 0; i < N; i++)
            if (pair_id(ids, ld_ids, k, i) == e)
                slot[(size_t)(i / k) * (size_t)ld_slot + (size_t)(i % k)] = r++;
    }
}

cudaError_t mck_moe_route(cudaStream_t s, const int32_t *ids, long long ld_ids, long long n,
                          int k, int E, int32_t *offsets, int32_t *slot, long long ld_slot,
                          int *bad, mck_defer d)
{
    k_moe_route<<<1, 256, 0, s>>>(ids, ld_ids, n, k, E, offsets, slot, ld_slot, bad, d);
    return cudaGetLastError();
}

__global__ static void k_moe_scatter(const float *x, long long ldx, int k, int H,
                                     const int32_t *slot, long long ld_slot, float *xp,
                                     long long ldxp, const int *bad)
{
    if (*bad >= 0)
        return;
    long long i = blockIdx.x, t = i / k;
    int32_t r = slot[(size_t)t * (size_t)ld_slot + (size_t)(i % k)];
    const float *src = x + (size_t)t * (size_t)ldx;
    float *dst = xp + (size_t)r * (size_t)ldxp;
    for (int h = threadIdx.x; h < H; h += blockDim.x)
        dst[h] = src[h];
}

cudaError_t mck_moe_scatter(cudaStream_t s, const float *x, long long ldx, long long n, int k,
                            int H, const int32_t *slot, long long ld_slot, float *xp,
                            long long ldxp, const int *bad)
{
    if (n <= 0 || k <= 0 || H <= 0)
        return cudaSuccess;
    k_moe_scatter<<<(unsigned)(n * k), 128, 0, s>>>(x, ldx, k, H, slot, ld_slot, xp, ldxp, bad);
    return cudaGetLastError();
}

__global__ static void k_slot_check(const int32_t *slot, long long ld_slot, long long n, int k,
                                    long long m, int *bad, mck_defer d)
{
    __shared__ unsigned long long first;
    if (threadIdx.x == 0)
        first = ~0ull;
    __syncthreads();
    for (long long i = threadIdx.x; i < n * k; i += blockDim.x) {
        int32_t r = pair_id(slot, ld_slot, k, i);
        if (r < 0 || r >= m)
            atomicMin(&first, (unsigned long long)i);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        *bad = first == ~0ull ? -1 : first > 0x7fffffffull ? 0x7fffffff : (int)first;
        mck_defer_note(d, *bad);
    }
}

cudaError_t mck_slot_check(cudaStream_t s, const int32_t *slot, long long ld_slot, long long n,
                           int k, long long m, int *bad, mck_defer d)
{
    k_slot_check<<<1, 256, 0, s>>>(slot, ld_slot, n, k, m, bad, d);
    return cudaGetLastError();
}

__global__ static void k_moe_gather(const float *yp, long long ldyp, const int32_t *slot,
                                    long long ld_slot, const float *w, long long ld_w, int k,
                                    int H, float *y, long long ldy, const int *bad)
{
    if (*bad >= 0)
        return;
    long long t = blockIdx.x;
    int h = blockIdx.y * blockDim.x + threadIdx.x;
    if (h >= H)
        return;
    const int32_t *sl = slot + (size_t)t * (size_t)ld_slot;
    float acc = 0.0f;
    int last_s = -1, last_j = -1;
    for (int it = 0; it < k; it++) { /* the next pair in ascending (slot, j) */
        int bj = -1;
        for (int j = 0; j < k; j++) {
            int after = sl[j] > last_s || (sl[j] == last_s && j > last_j);
            if (after && (bj < 0 || sl[j] < sl[bj]))
                bj = j;
        }
        last_s = sl[bj];
        last_j = bj;
        float wgt = w ? w[(size_t)t * (size_t)ld_w + bj] : 1.0f;
        acc = __fadd_rn(acc, __fmul_rn(wgt, yp[(size_t)sl[bj] * (size_t)ldyp + h]));
    }
    y[(size_t)t * (size_t)ldy + h] = acc;
}

cudaError_t mck_moe_gather(cudaStream_t s, const float *yp, long long ldyp, const int32_t *slot,
                           long long ld_slot, const float *w, long long ld_w, long long n, int k,
                           int H, float *y, long long ldy, const int *bad)
{
    if (n <= 0 || H <= 0)
        return cudaSuccess;
    k_moe_gather<<<dim3((unsigned)n, (unsigned)((H + 127) / 128)), 128, 0, s>>>(
        yp, ldyp, slot, ld_slot, w, ld_w, k, H, y, ldy, bad);
    return cudaGetLastError();
}

/* ---- grouped experts' element-wise pieces ---- */

__global__ static void k_row_scale(const float *x, long long ldx, const float *rw, long long rw_ld,
                                   long long rw_cols, long long r0, float *y, long long ldy,
                                   long long rows, int d)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * d)
        return;
    long long r = i / d, c = i % d, ri = r0 + r;
    float wj = rw[(size_t)(ri / rw_cols) * (size_t)rw_ld + (size_t)(ri % rw_cols)];
    y[(size_t)r * (size_t)ldy + c] = __fmul_rn(x[(size_t)r * (size_t)ldx + c], wj);
}

cudaError_t mck_row_scale(cudaStream_t s, const float *x, long long ldx, const float *rw,
                          long long rw_ld, long long rw_cols, long long r0, float *y,
                          long long ldy, long long rows, int d)
{
    if (rows <= 0 || d <= 0)
        return cudaSuccess;
    long long work = rows * d;
    k_row_scale<<<(unsigned)((work + 255) / 256), 256, 0, s>>>(x, ldx, rw, rw_ld, rw_cols, r0, y,
                                                               ldy, rows, d);
    return cudaGetLastError();
}

__global__ static void k_swiglu_limit(float *g, long long ldg, const float *u, long long ldu,
                                      long long rows, int d, float lim)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * d)
        return;
    long long r = i / d, c = i % d;
    float gv = g[(size_t)r * (size_t)ldg + c], uv = u[(size_t)r * (size_t)ldu + c];
    if (lim > 0) {
        gv = gv > lim ? lim : gv;
        uv = uv > lim ? lim : uv < -lim ? -lim : uv;
    }
    g[(size_t)r * (size_t)ldg + c] = __fmul_rn(gv / (1.0f + expf(-gv)), uv);
}

cudaError_t mck_swiglu_limit(cudaStream_t s, float *g, long long ldg, const float *u,
                             long long ldu, long long rows, int d, float limit)
{
    if (rows <= 0 || d <= 0)
        return cudaSuccess;
    long long work = rows * d;
    k_swiglu_limit<<<(unsigned)((work + 255) / 256), 256, 0, s>>>(g, ldg, u, ldu, rows, d, limit);
    return cudaGetLastError();
}
