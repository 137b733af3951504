/* cuda/attn.cu - the CUDA backend's paged-KV-cache kernels: the content
 * check of an mc_kv_index, kv_write, GQA / MLA attention over the pages
 * (prefill and decode tokens in one launch), the V3.2 sparse selection's
 * preparation and the V3.2 indexer top-k. First versions written for
 * correctness (docs/gpu.md); the design notes say where speed comes later.
 *
 * Attention: one block of AT_THREADS per (head, token); the query and the
 * output accumulator live in shared memory; positions go by tiles of
 * AT_THREADS, one thread scoring one position (a full dot product over its
 * key row), then an online softmax (running maximum m, running sum l, the
 * accumulator rescaled by exp(m_old - m_new)) and the weighted value rows
 * added with the threads spread over the value's columns. All in F32.
 * Later: a warp per position for the scores (coalesced key reads), tensor
 * cores over query tiles for prefill, split-K over long spans for decode.
 *
 * Indexer: every visible position's score in F32 in the CPU's order of
 * operations, packed with its position into one 64-bit key that sorts
 * ascending as (score descending, position ascending) - the CPU's total
 * order, exact ties to the lower position - then CUB's segmented radix sort
 * per token and the first k. Later: a per-token radix select that keeps k
 * keys instead of sorting the whole span. Launchers as cuda_ops.h. */
#include "cuda/cuda_ops.h"
#include "cuda/defer.cuh"
#include "cuda/dequant.cuh"

#include <cub/device/device_segmented_radix_sort.cuh>
#include <limits.h>
#include <math.h>

#define AT_THREADS 128

/* Token t's first visible position: pos (a write), the chunk's start, or 0. */
__device__ __forceinline__ long long kv_lo(int pos, int chunk, int write)
{
    return write ? pos : chunk > 0 ? pos - pos % chunk : 0;
}

/* ---- content check ---- */

__global__ static void k_kv_check(mck_kv kv, int chunk, int write, const int32_t *sel,
                                  long long sel_ld, int sel_k, long long *info, mck_defer d)
{
    __shared__ unsigned long long first, max_span, total;
    if (threadIdx.x == 0) {
        first = ~0ull;
        max_span = 1;
        total = 0;
    }
    __syncthreads();
    for (long long t = threadIdx.x; t < kv.n; t += blockDim.x) {
        int s = kv.seq[t], pos = kv.pos[t];
        int bad = s < 0 || s >= kv.n_seqs || pos < 0 || pos / kv.block_size >= kv.max_blocks;
        long long lo = bad ? 0 : kv_lo(pos, chunk, write);
        for (long long j = lo / kv.block_size; !bad && j <= pos / kv.block_size; j++) {
            int b = kv.bt[(size_t)s * (size_t)kv.bt_ld + (size_t)j];
            bad = b < 0 || b >= kv.n_pages;
        }
        if (!bad && sel) {
            const int32_t *st = sel + (size_t)t * (size_t)sel_ld;
            int kept = 0;
            for (int j = 0; j < sel_k && !bad; j++) {
                if (st[j] == -1)
                    continue;
                bad = st[j] < lo || st[j] > pos;
                kept++;
            }
            bad = bad || !kept;
        }
        if (bad) {
            atomicMin(&first, (unsigned long long)t);
            continue;
        }
        unsigned long long span = (unsigned long long)(pos - lo + 1);
        atomicMax(&max_span, span);
        atomicAdd(&total, span);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        info[0] = first == ~0ull ? -1 : (long long)first;
        info[1] = first == ~0ull ? (long long)max_span : 0;
        info[2] = first == ~0ull ? (long long)total : 0;
        mck_defer_note(d, info[0]);
    }
}

cudaError_t mck_kv_check(cudaStream_t s, const mck_kv *kv, int chunk, int write,
                         const int32_t *sel, long long sel_ld, int sel_k, long long *info,
                         mck_defer d)
{
    k_kv_check<<<1, 256, 0, s>>>(*kv, chunk, write, sel, sel_ld, sel_k, info, d);
    return cudaGetLastError();
}

/* ---- kv_write: one block per (token, row of the slot) ---- */

__global__ static void k_kv_write(mck_kv kv, const float *src, long long ld_src, int rps, int W,
                                  float *pages, long long ld_pages, const long long *info)
{
    if (info[0] >= 0)
        return;
    long long t = blockIdx.x;
    int r = blockIdx.y;
    long long row = mck_kv_row(kv, kv.seq[t], kv.pos[t], rps, r);
    const float *sr = src + (size_t)(t * rps + r) * (size_t)ld_src;
    float *dr = pages + (size_t)row * (size_t)ld_pages;
    for (int i = threadIdx.x; i < W; i += blockDim.x)
        dr[i] = sr[i];
}

cudaError_t mck_kv_write(cudaStream_t s, const mck_kv *kv, const float *src, long long ld_src,
                         int rps, int W, float *pages, long long ld_pages, const long long *info)
{
    if (kv->n <= 0 || rps <= 0 || W <= 0)
        return cudaSuccess;
    k_kv_write<<<dim3((unsigned)kv->n, (unsigned)rps), 128, 0, s>>>(*kv, src, ld_src, rps, W,
                                                                     pages, ld_pages, info);
    return cudaGetLastError();
}

/* ---- the sparse selection, sorted and without repeats ---- */

__global__ static void k_sel_sorted(const int32_t *sel, long long sel_ld, int k, int kp2,
                                    int32_t *out)
{
    extern __shared__ int32_t v[]; /* [kp2] */
    long long t = blockIdx.x;
    const int32_t *st = sel + (size_t)t * (size_t)sel_ld;
    for (int i = threadIdx.x; i < kp2; i += blockDim.x)
        v[i] = i < k && st[i] >= 0 ? st[i] : INT_MAX; /* unused entries sort last */
    __syncthreads();
    for (int size = 2; size <= kp2; size <<= 1) /* bitonic sort, ascending */
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < kp2; i += blockDim.x) {
                int j = i ^ stride;
                if (j > i) {
                    int up = (i & size) == 0;
                    int32_t a = v[i], b = v[j];
                    if ((a > b) == up) {
                        v[i] = b;
                        v[j] = a;
                    }
                }
            }
            __syncthreads();
        }
    if (threadIdx.x == 0) { /* compact the distinct entries: k is small, one thread */
        int32_t *o = out + (size_t)t * (size_t)k;
        int m = 0;
        for (int i = 0; i < k; i++)
            if (v[i] != INT_MAX && (i == 0 || v[i] != v[i - 1]))
                o[m++] = v[i];
        for (; m < k; m++)
            o[m] = -1;
    }
}

cudaError_t mck_sel_sorted(cudaStream_t s, const int32_t *sel, long long sel_ld, long long n,
                           int k, int32_t *out)
{
    if (n <= 0 || k <= 0)
        return cudaSuccess;
    if (k > MCK_SEL_MAX)
        return cudaErrorInvalidValue;
    int kp2 = 1;
    while (kp2 < k)
        kp2 <<= 1;
    k_sel_sorted<<<(unsigned)n, 256, (size_t)kp2 * sizeof(int32_t), s>>>(sel, sel_ld, k, kp2, out);
    return cudaGetLastError();
}

/* ---- attention: one block per (token, head) ---- */

__global__ static void __launch_bounds__(AT_THREADS)
    k_attention(mck_kv kv, mck_attn_src src, const float *qa, long long ldqa, const float *qb,
                long long ldqb, int nh, float *y, long long ldy, float scale,
                const float *q_scale, int chunk, const int32_t *list, int lk,
                const long long *info)
{
    if (info[0] >= 0)
        return;
    extern __shared__ float sh[]; /* q [da + db] | o [dv] */
    __shared__ float red[AT_THREADS / 32];
    __shared__ float e[AT_THREADS];
    __shared__ long long prow[AT_THREADS];
    const int h = blockIdx.y, tid = threadIdx.x;
    const long long t = blockIdx.x, qr = t * nh + h;
    const int da = src.da, db = src.kb ? src.db : 0, dv = src.dv;
    float *q = sh, *o = sh + da + db;
    for (int i = tid; i < da; i += AT_THREADS)
        q[i] = qa[(size_t)qr * (size_t)ldqa + i];
    for (int i = tid; i < db; i += AT_THREADS)
        q[da + i] = qb[(size_t)qr * (size_t)ldqb + i];
    for (int i = tid; i < dv; i += AT_THREADS)
        o[i] = 0.0f;
    __syncthreads();
    const int s = kv.seq[t], pos = kv.pos[t];
    const long long lo = kv_lo(pos, chunk, 0);
    const long long cnt = list ? lk : pos - lo + 1;
    const int32_t *lt = list ? list + (size_t)t * (size_t)lk : nullptr;
    const float sc = q_scale ? scale * q_scale[t] : scale;
    const int g = h / src.grp;
    float m = -INFINITY, l = 0.0f;
    for (long long base = 0; base < cnt; base += AT_THREADS) {
        const long long i = base + tid;
        float sv = -INFINITY;
        long long row = -1;
        long long p = i < cnt ? (lt ? (long long)lt[i] : lo + i) : -1;
        if (p >= 0) {
            row = mck_kv_row(kv, s, p, src.rps, g);
            const float *ka = src.ka + (size_t)row * (size_t)src.lda;
            float d = 0.0f;
            for (int c = 0; c < da; c++)
                d = fmaf(q[c], ka[c], d);
            if (db) { /* the rope part's own dot product, then the sum (as the CPU) */
                const float *kb = src.kb + (size_t)row * (size_t)src.ldb;
                float d2 = 0.0f;
                for (int c = 0; c < db; c++)
                    d2 = fmaf(q[da + c], kb[c], d2);
                d = __fadd_rn(d, d2);
            }
            sv = __fmul_rn(d, sc);
        }
        /* a NaN score makes the CPU's softmax NaN throughout; the max below
         * passes over NaN, so a tile of NaN and -inf scores would be
         * dropped: poison the sum instead (the same on every thread) */
        if (__syncthreads_or(sv != sv))
            l = NAN;
        const float mn = fmaxf(m, mck_block_max<AT_THREADS>(sv, red));
        if (mn == -INFINITY)
            continue; /* the whole tile dropped (the same on every thread) */
        const float alpha = m == -INFINITY ? 0.0f : expf(m - mn);
        const float ev = sv == -INFINITY ? 0.0f : expf(sv - mn);
        e[tid] = ev;
        prow[tid] = row;
        l = l * alpha + mck_block_sum<AT_THREADS>(ev, red); /* its barriers publish e and prow */
        const int nt = cnt - base < AT_THREADS ? (int)(cnt - base) : AT_THREADS;
        for (int d = tid; d < dv; d += AT_THREADS) {
            float acc = o[d] * alpha;
            for (int j = 0; j < nt; j++) /* MLA (kb) skips zero weights, GQA adds them (CPU) */
                if (prow[j] >= 0 && (!src.kb || e[j] != 0.0f))
                    acc = fmaf(e[j], src.v[(size_t)prow[j] * (size_t)src.ldv + d], acc);
            o[d] = acc;
        }
        m = mn;
        __syncthreads(); /* e and prow are rewritten by the next tile */
    }
    float *yr = y + (size_t)qr * (size_t)ldy;
    for (int d = tid; d < dv; d += AT_THREADS) /* each o[d] is this thread's own */
        yr[d] = o[d] / l;
}

cudaError_t mck_attention(cudaStream_t s, const mck_kv *kv, const mck_attn_src *src,
                          const float *qa, long long ldqa, const float *qb, long long ldqb,
                          int nh, float *y, long long ldy, float scale, const float *q_scale,
                          int chunk, const int32_t *list, int k, const long long *info)
{
    if (kv->n <= 0 || nh <= 0)
        return cudaSuccess;
    size_t shm = (size_t)(src->da + (src->kb ? src->db : 0) + src->dv) * sizeof(float);
    if (shm > 40 * 1024)
        return cudaErrorInvalidValue; /* head dims past ~10k floats: not for this kernel */
    if (nh > 65535)
        return cudaErrorInvalidValue;
    k_attention<<<dim3((unsigned)kv->n, (unsigned)nh), AT_THREADS, shm, s>>>(
        *kv, *src, qa, ldqa, qb, ldqb, nh, y, ldy, scale, q_scale, chunk, list, k, info);
    return cudaGetLastError();
}

/* ---- V3.2 indexer top-k ---- */

/* off[t] = the sum of the spans pos + 1 of the tokens before t, off[n] the total. */
__global__ static void k_span_offsets(const int32_t *pos, long long n, int *off)
{
    long long acc = 0;
    for (long long t = 0; t < n; t++) {
        off[t] = (int)acc;
        acc += (long long)pos[t] + 1;
    }
    off[n] = (int)acc;
}

/* Ascending order of the key = descending score, then ascending position. */
__device__ __forceinline__ unsigned long long idx_key(float v, int p)
{
    uint32_t u = v == 0.0f ? 0u : __float_as_uint(v); /* -0 ties with +0, as on the CPU */
    uint32_t asc = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)~asc << 32) | (uint32_t)p;
}

/* One thread per (token, position): the CPU's score, operation by operation. */
__global__ static void k_index_keys(mck_kv kv, const float *iq, long long ldq, int ih, int id,
                                    const float *w, long long ldw, const float *keys,
                                    long long ldk, float ss, float ws, const int *off,
                                    unsigned long long *out)
{
    long long t = blockIdx.x;
    long long p = (long long)blockIdx.y * blockDim.x + threadIdx.x;
    int pos = kv.pos[t];
    if (p > pos)
        return;
    const float *key = keys + (size_t)mck_kv_row(kv, kv.seq[t], p, 1, 0) * (size_t)ldk;
    const float *wt = w + (size_t)t * (size_t)ldw;
    float acc = 0.0f;
    for (int h = 0; h < ih; h++) {
        const float *q = iq + (size_t)(t * ih + h) * (size_t)ldq;
        float d = 0.0f;
        for (int c = 0; c < id; c++)
            d = fmaf(__ldg(q + c), key[c], d);
        float v = __fmul_rn(d, ss);
        acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(v > 0 ? v : 0.0f, wt[h]), ws));
    }
    out[off[t] + p] = idx_key(acc, (int)p);
}

__global__ static void k_index_pick(const int32_t *pos, long long n, int k, const int *off,
                                    const unsigned long long *sorted, int32_t *sel,
                                    long long sel_ld)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * k)
        return;
    long long t = i / k;
    int j = (int)(i % k);
    long long S = (long long)pos[t] + 1;
    sel[(size_t)t * (size_t)sel_ld + j] =
        j < S ? (int32_t)(uint32_t)(sorted[off[t] + j] & 0xffffffffull) : -1;
}

static size_t align256(size_t b)
{
    return (b + 255) & ~(size_t)255;
}

cudaError_t mck_indexer_topk(cudaStream_t s, const mck_kv *kv, const float *iq, long long ldq,
                             int ih, int id, const float *w, long long ldw, const float *keys,
                             long long ldk, float score_scale, float weight_scale, int k,
                             long long max_span, long long total, int32_t *sel, long long sel_ld,
                             void *scratch, size_t *scratch_bytes)
{
    if (total >= 0x7fffffffLL || kv->n >= 0x7fffffffLL)
        return cudaErrorInvalidValue;
    int n = (int)kv->n, items = (int)total;
    /* off [n + 1] int | keys_in [total] | keys_out [total] | CUB's temporary storage */
    size_t b_off = align256((size_t)(n + 1) * sizeof(int));
    size_t b_keys = align256((size_t)total * sizeof(unsigned long long));
    size_t temp = 0;
    cudaError_t e = cub::DeviceSegmentedRadixSort::SortKeys(
        nullptr, temp, (const unsigned long long *)nullptr, (unsigned long long *)nullptr, items,
        n, (const int *)nullptr, (const int *)nullptr + 1, 0, 64, s);
    if (e != cudaSuccess)
        return e;
    size_t need = b_off + 2 * b_keys + align256(temp);
    if (!scratch) {
        *scratch_bytes = need;
        return cudaSuccess;
    }
    if (*scratch_bytes < need)
        return cudaErrorInvalidValue;
    if (n <= 0)
        return cudaSuccess;
    unsigned char *sp = (unsigned char *)scratch;
    int *off = (int *)sp;
    unsigned long long *kin = (unsigned long long *)(sp + b_off);
    unsigned long long *kout = (unsigned long long *)(sp + b_off + b_keys);
    void *tmp = sp + b_off + 2 * b_keys;
    k_span_offsets<<<1, 1, 0, s>>>(kv->pos, kv->n, off);
    if ((max_span + 127) / 128 > 65535)
        return cudaErrorInvalidValue; /* spans past 8M positions */
    k_index_keys<<<dim3((unsigned)n, (unsigned)((max_span + 127) / 128)), 128, 0, s>>>(
        *kv, iq, ldq, ih, id, w, ldw, keys, ldk, score_scale, weight_scale, off, kin);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return e;
    e = cub::DeviceSegmentedRadixSort::SortKeys(tmp, temp, kin, kout, items, n, off, off + 1, 0,
                                                64, s);
    if (e != cudaSuccess)
        return e;
    long long work = (long long)n * k;
    k_index_pick<<<(unsigned)((work + 255) / 256), 256, 0, s>>>(kv->pos, kv->n, k, off, kout, sel,
                                                                sel_ld);
    return cudaGetLastError();
}
