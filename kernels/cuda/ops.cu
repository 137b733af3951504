/* cuda/ops.cu - the CUDA backend's row and element-wise kernels: rmsnorm,
 * layernorm, softmax, add, swiglu, rope, find_nonfinite, embed. Straight
 * first versions (one block per row for the row reductions, one thread per
 * element otherwise); sums that the CPU reference takes in double are taken
 * in double here too. Launchers as cuda_ops.h. */
#include "cuda/cuda_ops.h"
#include "cuda/defer.cuh"
#include "cuda/dequant.cuh"

#include <math.h>

#define ROW_THREADS 256
#define EW_THREADS 256

static unsigned grid_for(long long n, int threads)
{
    return (unsigned)((n + threads - 1) / threads);
}

/* ---- rmsnorm, layernorm, softmax: one block per row ---- */

__global__ static void k_rmsnorm(const float *x, long long ldx, const float *w, float *y,
                                 long long ldy, int d, float eps)
{
    __shared__ double sh[ROW_THREADS / 32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)ldx;
    float *yr = y + (size_t)blockIdx.x * (size_t)ldy;
    double ss = 0;
    for (int i = threadIdx.x; i < d; i += ROW_THREADS)
        ss += (double)xr[i] * xr[i];
    ss = mck_block_sum_d<ROW_THREADS>(ss, sh);
    float inv = (float)(1.0 / sqrt(ss / d + (double)eps));
    for (int i = threadIdx.x; i < d; i += ROW_THREADS)
        yr[i] = w ? __fmul_rn(__fmul_rn(xr[i], inv), w[i]) : __fmul_rn(xr[i], inv);
}

cudaError_t mck_rmsnorm(cudaStream_t s, const float *x, long long ldx, const float *w, float *y,
                        long long ldy, long long rows, int d, float eps)
{
    if (rows <= 0)
        return cudaSuccess;
    k_rmsnorm<<<(unsigned)rows, ROW_THREADS, 0, s>>>(x, ldx, w, y, ldy, d, eps);
    return cudaGetLastError();
}

__global__ static void k_layernorm(const float *x, long long ldx, const float *w, const float *b,
                                   float *y, long long ldy, int d, float eps)
{
    __shared__ double sh[ROW_THREADS / 32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)ldx;
    float *yr = y + (size_t)blockIdx.x * (size_t)ldy;
    double sum = 0;
    for (int i = threadIdx.x; i < d; i += ROW_THREADS)
        sum += xr[i];
    double mean = mck_block_sum_d<ROW_THREADS>(sum, sh) / (double)d;
    double var = 0;
    for (int i = threadIdx.x; i < d; i += ROW_THREADS)
        var += (xr[i] - mean) * (xr[i] - mean);
    var = mck_block_sum_d<ROW_THREADS>(var, sh);
    double inv = 1.0 / sqrt(var / (double)d + (double)eps);
    for (int i = threadIdx.x; i < d; i += ROW_THREADS) {
        double v = (xr[i] - mean) * inv;
        if (w)
            v *= w[i];
        if (b)
            v += b[i];
        yr[i] = (float)v;
    }
}

cudaError_t mck_layernorm(cudaStream_t s, const float *x, long long ldx, const float *w,
                          const float *b, float *y, long long ldy, long long rows, int d,
                          float eps)
{
    if (rows <= 0)
        return cudaSuccess;
    k_layernorm<<<(unsigned)rows, ROW_THREADS, 0, s>>>(x, ldx, w, b, y, ldy, d, eps);
    return cudaGetLastError();
}

__global__ static void k_softmax(const float *x, long long ldx, float *y, long long ldy, int d)
{
    __shared__ double sh[ROW_THREADS / 32];
    __shared__ float shm[ROW_THREADS / 32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)ldx;
    float *yr = y + (size_t)blockIdx.x * (size_t)ldy;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < d; i += ROW_THREADS)
        mx = fmaxf(mx, xr[i]);
    mx = mck_block_max<ROW_THREADS>(mx, shm);
    double sum = 0;
    for (int i = threadIdx.x; i < d; i += ROW_THREADS) {
        float e = expf(xr[i] - mx);
        yr[i] = e; /* y may be x: each element is read and written by one thread */
        sum += e;
    }
    float inv = (float)(1.0 / mck_block_sum_d<ROW_THREADS>(sum, sh));
    for (int i = threadIdx.x; i < d; i += ROW_THREADS)
        yr[i] *= inv;
}

cudaError_t mck_softmax(cudaStream_t s, const float *x, long long ldx, float *y, long long ldy,
                        long long rows, int d)
{
    if (rows <= 0)
        return cudaSuccess;
    k_softmax<<<(unsigned)rows, ROW_THREADS, 0, s>>>(x, ldx, y, ldy, d);
    return cudaGetLastError();
}

/* ---- element-wise: one thread per element ---- */

__global__ static void k_add(const float *a, long long lda, const float *b, long long ldb, float *y,
                             long long ldy, long long rows, int d)
{
    long long k = (long long)blockIdx.x * EW_THREADS + threadIdx.x;
    if (k >= rows * d)
        return;
    long long r = k / d, i = k % d;
    y[r * ldy + i] = a[r * lda + i] + b[r * ldb + i];
}

cudaError_t mck_add(cudaStream_t s, const float *a, long long lda, const float *b, long long ldb,
                    float *y, long long ldy, long long rows, int d)
{
    if (rows <= 0 || d <= 0)
        return cudaSuccess;
    k_add<<<grid_for(rows * d, EW_THREADS), EW_THREADS, 0, s>>>(a, lda, b, ldb, y, ldy, rows, d);
    return cudaGetLastError();
}

__global__ static void k_swiglu(const float *g, long long ldg, const float *u, long long ldu,
                                float *y, long long ldy, long long rows, int d)
{
    long long k = (long long)blockIdx.x * EW_THREADS + threadIdx.x;
    if (k >= rows * d)
        return;
    long long r = k / d, i = k % d;
    float gv = g[r * ldg + i];
    y[r * ldy + i] = __fmul_rn(gv / (1.0f + expf(-gv)), u[r * ldu + i]);
}

cudaError_t mck_swiglu(cudaStream_t s, const float *g, long long ldg, const float *u,
                       long long ldu, float *y, long long ldy, long long rows, int d)
{
    if (rows <= 0 || d <= 0)
        return cudaSuccess;
    k_swiglu<<<grid_for(rows * d, EW_THREADS), EW_THREADS, 0, s>>>(g, ldg, u, ldu, y, ldy, rows,
                                                                   d);
    return cudaGetLastError();
}

/* ---- rope ---- */

__global__ static void k_rope_check(const int32_t *pos, long long n, long long P, int *bad,
                                    mck_defer d)
{
    __shared__ unsigned long long first;
    if (threadIdx.x == 0)
        first = ~0ull;
    __syncthreads();
    for (long long t = threadIdx.x; t < n; t += blockDim.x)
        if (pos[t] < 0 || pos[t] >= P)
            atomicMin(&first, (unsigned long long)t);
    __syncthreads();
    if (threadIdx.x == 0) {
        *bad = first == ~0ull ? -1 : (int)(first > 0x7fffffffull ? 0x7fffffff : first);
        mck_defer_note(d, *bad);
    }
}

cudaError_t mck_rope_check(cudaStream_t s, const int32_t *pos, long long n, long long P, int *bad,
                           mck_defer d)
{
    k_rope_check<<<1, 256, 0, s>>>(pos, n, P, bad, d);
    return cudaGetLastError();
}

/* One thread per (row, pair): pairs (2i, 2i+1) or (i, i + d/2). */
__global__ static void k_rope(float *x, long long ldx, long long rows, long long heads, int d,
                              const int32_t *pos, const float *cs, long long ldc, const float *sn,
                              long long lds, int interleaved, const int *bad)
{
    if (*bad >= 0)
        return;
    int half = d / 2;
    long long k = (long long)blockIdx.x * EW_THREADS + threadIdx.x;
    if (k >= rows * half)
        return;
    long long r = k / half;
    int i = (int)(k % half);
    long long p = pos[r / heads];
    float c = cs[p * ldc + i], sv = sn[p * lds + i];
    float *v = x + r * ldx;
    int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    float x0 = v[a], x1 = v[b];
    v[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sv));
    v[b] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, sv));
}

cudaError_t mck_rope(cudaStream_t s, float *x, long long ldx, long long n, long long heads, int d,
                     const int32_t *pos, const float *cs, long long ldc, const float *sn,
                     long long lds, int interleaved, const int *bad)
{
    long long rows = n * heads;
    if (rows <= 0 || d < 2)
        return cudaSuccess;
    k_rope<<<grid_for(rows * (d / 2), EW_THREADS), EW_THREADS, 0, s>>>(
        x, ldx, rows, heads, d, pos, cs, ldc, sn, lds, interleaved, bad);
    return cudaGetLastError();
}

/* ---- find_nonfinite ---- */

/* rec NULL (find_nonfinite), or the deferred notes (d_rec, note_nonfinite):
 * nothing to search once a refusal (rec[0]) or a non-finite value (rec[3])
 * is noted, as a step whose activations went NaN has its note already */
__global__ static void k_nonfinite(const float *x, long long ldx, long long rows, int d,
                                   unsigned long long *first, const long long *rec)
{
    if (rec && (rec[0] >= 0 || rec[3] >= 0))
        return;
    long long k = (long long)blockIdx.x * EW_THREADS + threadIdx.x;
    if (k >= rows * d)
        return;
    long long r = k / d, i = k % d;
    if (!isfinite(x[r * ldx + i]))
        atomicMin(first, (unsigned long long)k);
}

cudaError_t mck_find_nonfinite(cudaStream_t s, const float *x, long long ldx, long long rows,
                               int d, unsigned long long *first)
{
    if (rows <= 0 || d <= 0)
        return cudaSuccess;
    k_nonfinite<<<grid_for(rows * d, EW_THREADS), EW_THREADS, 0, s>>>(x, ldx, rows, d, first,
                                                                     NULL);
    return cudaGetLastError();
}

__global__ static void k_nonfinite_note(const float *x, long long ldx, int d, long long tag,
                                        unsigned long long *first, long long *rec)
{
    unsigned long long k = *first;
    if (k == ~0ull)
        return;
    *first = ~0ull;
    /* the first note since the host read them is kept, and none after a
     * refusal (whose op wrote nothing: what follows may read stale rows) */
    if (rec[0] >= 0 || rec[3] >= 0)
        return;
    long long r = (long long)(k / (unsigned long long)d), i = (long long)(k % (unsigned long long)d);
    rec[4] = r;
    rec[5] = i;
    rec[6] = (long long)__float_as_uint(x[r * ldx + i]);
    rec[3] = tag;
}

cudaError_t mck_note_nonfinite(cudaStream_t s, const float *x, long long ldx, long long rows,
                               int d, long long tag, unsigned long long *first, long long *rec)
{
    if (rows <= 0 || d <= 0)
        return cudaSuccess;
    k_nonfinite<<<grid_for(rows * d, EW_THREADS), EW_THREADS, 0, s>>>(x, ldx, rows, d, first,
                                                                     rec);
    k_nonfinite_note<<<1, 1, 0, s>>>(x, ldx, d, tag, first, rec);
    return cudaGetLastError();
}

/* ---- embed: one block per token ---- */

__global__ static void k_embed(mck_mat w, const int32_t *ids32, const int64_t *ids64, long long id0,
                               float *y, long long ldy)
{
    long long t = blockIdx.x;
    long long id = ids64 ? (long long)ids64[t] : (long long)ids32[t];
    float *yr = y + t * ldy;
    /* outside this table's slice of the vocabulary: zeros (checked without overflow) */
    int inside = id >= id0 && id - id0 < (long long)w.rows;
    for (int i = threadIdx.x; i < w.cols; i += blockDim.x)
        yr[i] = inside ? mck_weight_at(w, id - id0, i) : 0.0f;
}

cudaError_t mck_embed(cudaStream_t s, const mck_mat *table, const int32_t *ids32,
                      const int64_t *ids64, long long n, long long id0, float *y, long long ldy)
{
    if (n <= 0)
        return cudaSuccess;
    k_embed<<<(unsigned)n, 256, 0, s>>>(*table, ids32, ids64, id0, y, ldy);
    return cudaGetLastError();
}

/* ---- topk: one block of TOPK_THREADS per row ----
 * mc_op_topk's order: by value, descending, ties to the lower column, NaN
 * last (among themselves by column); -0 and +0 are one value. Two kernels
 * give the same picks: k_topk (small k) makes k passes, pass j taking the
 * best column after pass j - 1's pick in that order; k_topk_radix finds the
 * k-th key by a radix select (four passes of 8-bit digits over the row),
 * gathers the columns above it and the first ones equal to it in one more
 * pass and orders those k by rank. Then the log-sum-exp: the sum of
 * exp(x - max) in double over the block. */
#define TOPK_THREADS 256

__device__ static inline bool topk_before(float a, long long ia, float b, long long ib)
{
    if (isnan(a))
        return isnan(b) && ia < ib;
    return isnan(b) || a > b || (a == b && ia < ib);
}

/* A key that orders as topk_before's values: larger key first; NaN 0 (after
 * -inf's 0x007fffff), -0 as +0. */
__device__ static inline unsigned topk_key(float v)
{
    if (isnan(v))
        return 0u;
    unsigned b = __float_as_uint(v == 0.0f ? 0.0f : v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* lse[0..2) of the row: log of the sum of exp(x - m), plus m, as a float
 * pair (hi, the rest); m the row's first pick. Every thread calls it. */
__device__ static void topk_lse(const float *xr, long long V, float m, float *lr, double *ws)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double sum = 0.0;
    for (long long i = threadIdx.x; i < V; i += TOPK_THREADS)
        sum += exp((double)xr[i] - (double)m);
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_down_sync(0xffffffffu, sum, o);
    if (lane == 0)
        ws[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        sum = 0.0;
        for (int w = 0; w < TOPK_THREADS / 32; w++)
            sum += ws[w];
        double l = (double)m + log(sum);
        float hi = (float)l;
        lr[0] = hi;
        lr[1] = (float)(l - (double)hi);
    }
}

__global__ static void k_topk(const float *x, long long ldx, long long V, int k, long long id0,
                              int32_t *ids, long long ldi, float *vals, long long ldv, float *lse,
                              long long ldl)
{
    __shared__ float wv[TOPK_THREADS / 32];
    __shared__ long long wi[TOPK_THREADS / 32];
    __shared__ double ws[TOPK_THREADS / 32];
    __shared__ float pv, top;
    __shared__ long long pi;
    const float *xr = x + (long long)blockIdx.x * ldx;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int j = 0; j < k; j++) {
        float bv = 0.0f;
        long long bi = -1;
        for (long long i = threadIdx.x; i < V; i += TOPK_THREADS) {
            float v = xr[i];
            if (j > 0 && !topk_before(pv, pi, v, i))
                continue; /* picked already, or before the last pick */
            if (bi < 0 || topk_before(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_down_sync(0xffffffffu, bv, o);
            long long oi = __shfl_down_sync(0xffffffffu, bi, o);
            if (oi >= 0 && (bi < 0 || topk_before(ov, oi, bv, bi))) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            wv[warp] = bv;
            wi[warp] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < TOPK_THREADS / 32; w++)
                if (wi[w] >= 0 && (bi < 0 || topk_before(wv[w], wi[w], bv, bi))) {
                    bv = wv[w];
                    bi = wi[w];
                }
            ids[(long long)blockIdx.x * ldi + j] = (int32_t)(bi + id0);
            vals[(long long)blockIdx.x * ldv + j] = bv;
            pv = bv;
            pi = bi;
            if (j == 0)
                top = bv;
        }
        __syncthreads();
    }
    if (lse)
        topk_lse(xr, V, top, lse + (long long)blockIdx.x * ldl, ws);
}

__global__ static void k_topk_radix(const float *x, long long ldx, long long V, int k,
                                    long long id0, int32_t *ids, long long ldi, float *vals,
                                    long long ldv, float *lse, long long ldl)
{
    __shared__ unsigned hist[256];
    __shared__ unsigned below[TOPK_THREADS]; /* keys equal to the k-th before each thread's chunk */
    __shared__ unsigned ckey[64];
    __shared__ long long ccol[64];
    __shared__ unsigned prefix_s, need_s;
    __shared__ int ngt;
    __shared__ double ws[TOPK_THREADS / 32];
    __shared__ float top;
    const float *xr = x + (long long)blockIdx.x * ldx;
    const int lane = threadIdx.x & 31;
    if (threadIdx.x == 0)
        ngt = 0;
    /* the k-th largest key, a digit at a time: prefix holds its digits so
     * far, need how many keys with that prefix are still to take (>= 1, and
     * at least that many have it) */
    unsigned prefix = 0, mask = 0, need = (unsigned)k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        hist[threadIdx.x] = 0; /* TOPK_THREADS == 256 bins */
        __syncthreads();
        for (long long b = 0; b < V; b += TOPK_THREADS) { /* whole warps each round */
            long long i = b + threadIdx.x;
            unsigned key = i < V ? topk_key(xr[i]) : 0u;
            bool take = i < V && (key & mask) == prefix;
            unsigned bin = take ? (key >> shift) & 255u : 256u + (unsigned)lane;
            unsigned peers = __match_any_sync(0xffffffffu, bin);
            if (take && lane == __ffs(peers) - 1)
                atomicAdd(&hist[bin], (unsigned)__popc(peers));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned cum = 0;
            int d = 255;
            for (; d > 0 && cum + hist[d] < need; d--)
                cum += hist[d];
            prefix_s = prefix | ((unsigned)d << shift);
            need_s = need - cum;
        }
        __syncthreads();
        prefix = prefix_s;
        need = need_s;
        mask |= 255u << shift;
    }
    /* prefix: the k-th key; the k - need keys above it and the first need
     * columns equal to it are the k picks */
    const unsigned kth = prefix;
    const long long C = (V + TOPK_THREADS - 1) / TOPK_THREADS;
    const long long lo = (long long)threadIdx.x * C, hi = lo + C < V ? lo + C : V;
    unsigned eq = 0;
    for (long long i = lo; i < hi; i++) {
        unsigned key = topk_key(xr[i]);
        if (key > kth) {
            int s = atomicAdd(&ngt, 1);
            if (s < k) {
                ckey[s] = key;
                ccol[s] = i;
            }
        } else if (key == kth) {
            eq++;
        }
    }
    below[threadIdx.x] = eq;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned run = 0;
        for (int t = 0; t < TOPK_THREADS; t++) {
            unsigned c = below[t];
            below[t] = run;
            run += c;
        }
    }
    __syncthreads();
    const unsigned gt = (unsigned)k - need;
    const long long r_end = (long long)below[threadIdx.x] + eq; /* past this chunk's equal keys */
    for (long long i = lo, r = below[threadIdx.x]; i < hi && r < need && r < r_end; i++)
        if (topk_key(xr[i]) == kth) {
            ckey[gt + r] = kth;
            ccol[gt + r] = i;
            r++;
        }
    __syncthreads();
    if (threadIdx.x < k) { /* (key, column) pairs are distinct: each rank once */
        unsigned a = ckey[threadIdx.x];
        long long ia = ccol[threadIdx.x];
        int rank = 0;
        for (int j = 0; j < k; j++)
            rank += ckey[j] > a || (ckey[j] == a && ccol[j] < ia);
        float v = xr[ia];
        ids[(long long)blockIdx.x * ldi + rank] = (int32_t)(ia + id0);
        vals[(long long)blockIdx.x * ldv + rank] = v;
        if (rank == 0)
            top = v;
    }
    __syncthreads();
    if (lse)
        topk_lse(xr, V, top, lse + (long long)blockIdx.x * ldl, ws);
}

cudaError_t mck_topk(cudaStream_t s, const float *x, long long ldx, long long rows, long long V,
                     int k, long long id0, int32_t *ids, long long ldi, float *vals, long long ldv,
                     float *lse, long long ldl, int passes)
{
    if (rows <= 0)
        return cudaSuccess;
    if (k < 1 || k > 64 || k > V)
        return cudaErrorInvalidValue;
    if (passes || k < MCK_TOPK_RADIX_MIN)
        k_topk<<<(unsigned)rows, TOPK_THREADS, 0, s>>>(x, ldx, V, k, id0, ids, ldi, vals, ldv,
                                                        lse, ldl);
    else
        k_topk_radix<<<(unsigned)rows, TOPK_THREADS, 0, s>>>(x, ldx, V, k, id0, ids, ldi, vals,
                                                              ldv, lse, ldl);
    return cudaGetLastError();
}
