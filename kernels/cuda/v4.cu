/* cuda/v4.cu - the CUDA backend's DeepSeek-V4 kernels (backend.h's
 * mc_op_v4_*): the content check, the hyper-connection mapping and
 * write-back, the compressors' pooling over paged per-position rows, the
 * lightning indexer over compressed keys, attention with sinks over the
 * window and the compressed entries, and hash routing. First versions
 * written for correctness, the CPU op (kernels/cpu/backend_cpu_v4.c) done
 * per token or per column in its order of operations, F32 with the sums the
 * CPU takes in double taken in double:
 *   hc_pre      one block per token: pre / post per stream, the column sums,
 *               then Sinkhorn on the block's (hc, hc) matrix in shared memory
 *               (a thread per row, then per column, as the CPU's loops);
 *   hc_post     one thread per (token, column): the hc streams read, then
 *               written back;
 *   compress    one block per token that completes a window: a thread per
 *               channel makes the softmax over its 2 rate sources (max, sum,
 *               weighted sum: three passes over the pages), then RMSNorm and
 *               the rotation on the block's row;
 *   index_topk  one thread per (token, entry) scores; then one thread per
 *               token runs the CPU's introselect (libstdc++'s, which the
 *               reference's torch.topk uses) on its row, so that the entries
 *               kept among exact ties and their order are the CPU's;
 *   attention   one block per (token, head), as attn.cu's kernel: tiles of
 *               positions, one thread scoring one row, an online softmax
 *               that starts at the head's sink (max = sink, sum = 1);
 *   hash_route  one thread per token.
 * Later: the indexer's select in parallel (a radix select keeping the tie
 * order), attention tiles on tensor cores. Launchers as cuda_ops.h. */
#include "cuda/cuda_ops.h"
#include "cuda/defer.cuh"
#include "cuda/dequant.cuh"

#include <math.h>

#define V4_THREADS 128

__device__ __forceinline__ float v4_sigmoid(float x) /* kernels.h's mc_sigmoid */
{
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
}

/* ---- the content check ---- */

/* Token t's first refusal in the CPU op's order (an MCK_V4_BAD_*, its
 * values in why[0..3)), or 0. */
__device__ static int v4_bad(const mck_v4_chk &c, long long t, long long *why)
{
    if (c.kind == MCK_V4_HASH) {
        int id = c.tok[t];
        if (id < 0 || id >= c.V) {
            why[0] = id;
            return MCK_V4_BAD_ID;
        }
        const int32_t *r = c.table + (size_t)id * (size_t)c.table_ld;
        for (int j = 0; j < c.k; j++)
            if (r[j] < 0 || r[j] >= c.E) {
                why[0] = id;
                why[1] = j;
                why[2] = r[j];
                return MCK_V4_BAD_TABLE;
            }
        return 0;
    }
    const mck_kv &kv = c.kv;
    int s = kv.seq[t], pos = kv.pos[t];
    long long lo = 0, w = 0;
    if (c.kind == MCK_V4_COMPRESS) {
        if (((long long)pos + 1) % c.rate != 0)
            return 0; /* completes no window: not read, not checked (as the CPU) */
        w = ((long long)pos + 1) / c.rate - 1;
        lo = (w - c.overlap) * c.rate;
    } else if (c.kind == MCK_V4_ATTENTION && !c.has_comp) {
        lo = (long long)pos - c.window + 1;
    }
    if (s < 0 || s >= kv.n_seqs) {
        why[0] = s;
        return MCK_V4_BAD_SEQ;
    }
    if (pos < 0 || pos / kv.block_size >= kv.max_blocks) {
        why[0] = pos;
        return MCK_V4_BAD_POS;
    }
    for (long long j = (lo < 0 ? 0 : lo) / kv.block_size; j <= pos / kv.block_size; j++) {
        int b = kv.bt[(size_t)s * (size_t)kv.bt_ld + (size_t)j];
        if (b < 0 || b >= kv.n_pages) {
            why[0] = s;
            why[1] = j;
            why[2] = b;
            return MCK_V4_BAD_BLOCK;
        }
    }
    if (c.kind == MCK_V4_COMPRESS && w * c.rate >= c.P) {
        why[0] = w * c.rate;
        return MCK_V4_BAD_WINDOW;
    }
    if (c.kind == MCK_V4_ATTENTION && c.sel) {
        int nv = c.has_comp ? (int)(((long long)pos + 1) / c.rate) : 0;
        const int32_t *st = c.sel + (size_t)t * (size_t)c.sel_ld;
        for (int j = 0; j < c.sel_k; j++)
            if (st[j] < -1 || st[j] >= nv) {
                why[0] = j;
                why[1] = st[j];
                why[2] = nv;
                return MCK_V4_BAD_SEL;
            }
    }
    if (c.kind == MCK_V4_INDEX && c.n_row && c.n_row[t] > c.cap) {
        why[0] = c.n_row[t];
        why[1] = c.cap;
        return MCK_V4_BAD_NROW;
    }
    return 0;
}

/* The first token the CPU op would refuse; failing that, the first past
 * this backend's own limit (n_row), which never hides a CPU refusal. */
__global__ static void k_v4_check(mck_v4_chk c, long long n, long long *info, mck_defer d)
{
    __shared__ unsigned long long first, first_limit;
    if (threadIdx.x == 0)
        first = first_limit = ~0ull;
    __syncthreads();
    long long why[3];
    for (long long t = threadIdx.x; t < n; t += blockDim.x) {
        int bad = v4_bad(c, t, why);
        if (bad == MCK_V4_BAD_NROW)
            atomicMin(&first_limit, (unsigned long long)t);
        else if (bad)
            atomicMin(&first, (unsigned long long)t);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long f = first != ~0ull ? first : first_limit;
        long long t = f == ~0ull ? -1 : (long long)f;
        why[0] = why[1] = why[2] = 0;
        info[1] = t >= 0 ? v4_bad(c, t, why) : 0;
        info[0] = t;
        info[2] = why[0];
        info[3] = why[1];
        info[4] = why[2];
        mck_defer_note(d, t);
    }
}

cudaError_t mck_v4_check(cudaStream_t s, const mck_v4_chk *c, long long n, long long *info,
                         mck_defer d)
{
    k_v4_check<<<1, 256, 0, s>>>(*c, n, info, d);
    return cudaGetLastError();
}

/* ---- hyper-connections ---- */

__global__ static void k_v4_hc_pre(const float *x, long long ldx, const float *mix, long long ldm,
                                   const float *base, const float *scale, int hc, int iters,
                                   float eps, int H, float *post, long long ldp, float *comb,
                                   long long ldc, float *y, long long ldy)
{
    __shared__ float pre[64];
    __shared__ float cb[64 * 64];
    const long long t = blockIdx.x;
    const float *mx = mix + (size_t)t * (size_t)ldm, *xt = x + (size_t)t * (size_t)ldx;
    for (int j = threadIdx.x; j < hc; j += blockDim.x) {
        pre[j] = __fadd_rn(v4_sigmoid(__fadd_rn(__fmul_rn(mx[j], scale[0]), base[j])), eps);
        if (post)
            post[(size_t)t * (size_t)ldp + j] =
                __fmul_rn(2.0f, v4_sigmoid(__fadd_rn(__fmul_rn(mx[hc + j], scale[1]),
                                                     base[hc + j])));
    }
    __syncthreads();
    float *yt = y + (size_t)t * (size_t)ldy;
    for (int h = threadIdx.x; h < H; h += blockDim.x) { /* from zero, streams ascending */
        float acc = 0.0f;
        for (int j = 0; j < hc; j++)
            acc = fmaf(pre[j], xt[(size_t)j * (size_t)H + h], acc);
        yt[h] = acc;
    }
    if (!post)
        return;
    /* Sinkhorn (the CPU's sinkhorn): rows softmax + eps, then alternating
     * column / row normalization, each row or column by one thread */
    const int kk = hc * hc;
    for (int i = threadIdx.x; i < kk; i += blockDim.x)
        cb[i] = __fadd_rn(__fmul_rn(mx[2 * hc + i], scale[2]), base[2 * hc + i]);
    __syncthreads();
    for (int j = threadIdx.x; j < hc; j += blockDim.x) {
        float *r = cb + j * hc, m = -INFINITY;
        for (int k = 0; k < hc; k++)
            m = r[k] > m ? r[k] : m;
        double s = 0;
        for (int k = 0; k < hc; k++) {
            r[k] = expf(r[k] - m);
            s += r[k];
        }
        float inv = (float)(1.0 / s);
        for (int k = 0; k < hc; k++)
            r[k] = __fadd_rn(__fmul_rn(r[k], inv), eps);
    }
    __syncthreads();
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            for (int j = threadIdx.x; j < hc; j += blockDim.x) {
                float s = 0.0f;
                for (int k = 0; k < hc; k++)
                    s = __fadd_rn(s, cb[j * hc + k]);
                float dv = __fadd_rn(s, eps);
                for (int k = 0; k < hc; k++)
                    cb[j * hc + k] = __fdiv_rn(cb[j * hc + k], dv);
            }
            __syncthreads();
        }
        for (int k = threadIdx.x; k < hc; k += blockDim.x) {
            float s = 0.0f;
            for (int j = 0; j < hc; j++)
                s = __fadd_rn(s, cb[j * hc + k]);
            float dv = __fadd_rn(s, eps);
            for (int j = 0; j < hc; j++)
                cb[j * hc + k] = __fdiv_rn(cb[j * hc + k], dv);
        }
        __syncthreads();
    }
    float *ct = comb + (size_t)t * (size_t)ldc;
    for (int i = threadIdx.x; i < kk; i += blockDim.x)
        ct[i] = cb[i];
}

cudaError_t mck_v4_hc_pre(cudaStream_t s, const float *x, long long ldx, const float *mix,
                          long long ldm, const float *base, const float *scale, int hc, int iters,
                          float eps, int H, long long n, float *post, long long ldp, float *comb,
                          long long ldc, float *y, long long ldy)
{
    if (n <= 0)
        return cudaSuccess;
    if (hc < 1 || hc > 64 || n > 0x7fffffffLL)
        return cudaErrorInvalidValue;
    k_v4_hc_pre<<<(unsigned)n, 256, 0, s>>>(x, ldx, mix, ldm, base, scale, hc, iters, eps, H,
                                            post, ldp, comb, ldc, y, ldy);
    return cudaGetLastError();
}

/* One thread per (token, column h): the hc streams' values at h read first,
 * then every stream rewritten (x is read and written by this thread only). */
__global__ static void k_v4_hc_post(float *x, long long ldx, const float *post, long long ldp,
                                    const float *comb, long long ldc, const float *y,
                                    long long ldy, int hc, int H, long long n)
{
    const int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= H)
        return;
    for (long long t = blockIdx.y; t < n; t += gridDim.y) {
        float xv[64];
        float *xt = x + (size_t)t * (size_t)ldx;
        const float *ct = comb + (size_t)t * (size_t)ldc, *pt = post + (size_t)t * (size_t)ldp;
        for (int j = 0; j < hc; j++)
            xv[j] = xt[(size_t)j * (size_t)H + h];
        const float yv = y[(size_t)t * (size_t)ldy + h];
        for (int o = 0; o < hc; o++) {
            float acc = __fmul_rn(pt[o], yv);
            for (int j = 0; j < hc; j++)
                acc = fmaf(ct[j * hc + o], xv[j], acc);
            xt[(size_t)o * (size_t)H + h] = acc;
        }
    }
}

cudaError_t mck_v4_hc_post(cudaStream_t s, float *x, long long ldx, const float *post,
                           long long ldp, const float *comb, long long ldc, const float *y,
                           long long ldy, int hc, int H, long long n)
{
    if (n <= 0 || H <= 0)
        return cudaSuccess;
    if (hc < 1 || hc > 64)
        return cudaErrorInvalidValue;
    unsigned gy = (unsigned)(n < 65535 ? n : 65535);
    k_v4_hc_post<<<dim3((unsigned)((H + 255) / 256), gy), 256, 0, s>>>(x, ldx, post, ldp, comb,
                                                                       ldc, y, ldy, hc, H, n);
    return cudaGetLastError();
}

/* ---- compressors ---- */

/* Source j of a channel's softmax (the CPU's order: window w - 1's first
 * half when it overlaps, then window w's): its gate + ape and kv value. */
struct v4_src {
    const mck_kv *kv;
    const float *kvp, *gp, *ape;
    long long ldk, ldg, lda;
    int s, R, prev, off;
    long long w;
    __device__ void at(int j, int ch, float *g, float *v) const
    {
        long long q;
        int col, a;
        if (j < prev) { /* prev is 0 or R */
            q = (w - 1) * R + j;
            col = ch;
            a = j;
        } else {
            q = w * R + (j - prev);
            col = off + ch;
            a = j - prev;
        }
        long long r = mck_kv_row(*kv, s, q, 1, 0);
        *g = __fadd_rn(gp[(size_t)r * (size_t)ldg + col], ape[(size_t)a * (size_t)lda + col]);
        *v = kvp[(size_t)r * (size_t)ldk + col];
    }
};

__global__ static void __launch_bounds__(V4_THREADS)
    k_v4_compress(mck_kv kv, const float *kvp, long long ldk, const float *gp, long long ldg,
                  const float *ape, long long lda, const float *norm, const float *cs,
                  long long ldcs, const float *sn, long long ldsn, int R, int overlap, int cd,
                  int rd, float eps, float *out, long long ldo, const long long *info)
{
    if (info[0] >= 0)
        return;
    extern __shared__ float e[]; /* [cd] the entry */
    __shared__ double red[V4_THREADS / 32];
    const long long t = blockIdx.x;
    const int s = kv.seq[t], pos = kv.pos[t];
    if (((long long)pos + 1) % R != 0)
        return; /* the whole block: no window completed */
    const long long w = ((long long)pos + 1) / R - 1;
    v4_src src = {&kv, kvp, gp, ape, ldk, ldg, lda, s, R, overlap && w > 0 ? R : 0,
                  overlap ? cd : 0, w};
    const int ns = src.prev + R;
    for (int ch = threadIdx.x; ch < cd; ch += blockDim.x) { /* mc_softmax, then the sum */
        float g, v, mx = -INFINITY;
        for (int j = 0; j < ns; j++) {
            src.at(j, ch, &g, &v);
            mx = g > mx ? g : mx;
        }
        double sum = 0;
        for (int j = 0; j < ns; j++) {
            src.at(j, ch, &g, &v);
            sum += expf(g - mx);
        }
        const float inv = (float)(1.0 / sum);
        float acc = 0.0f;
        for (int j = 0; j < ns; j++) {
            src.at(j, ch, &g, &v);
            acc = fmaf(__fmul_rn(expf(g - mx), inv), v, acc);
        }
        e[ch] = acc;
    }
    __syncthreads();
    double ss = 0; /* mc_rmsnorm */
    for (int ch = threadIdx.x; ch < cd; ch += blockDim.x)
        ss += (double)e[ch] * e[ch];
    ss = mck_block_sum_d<V4_THREADS>(ss, red);
    const float inv = (float)(1.0 / sqrt(ss / cd + (double)eps));
    for (int ch = threadIdx.x; ch < cd; ch += blockDim.x)
        e[ch] = __fmul_rn(__fmul_rn(e[ch], inv), norm[ch]);
    __syncthreads();
    /* the trailing rd dims rotated in interleaved pairs at position w * R */
    const float *c = cs + (size_t)(w * R) * (size_t)ldcs, *sv = sn + (size_t)(w * R) * (size_t)ldsn;
    float *v = e + cd - rd;
    for (int i = threadIdx.x; i < rd / 2; i += blockDim.x) {
        float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = __fsub_rn(__fmul_rn(x0, c[i]), __fmul_rn(x1, sv[i]));
        v[2 * i + 1] = __fadd_rn(__fmul_rn(x1, c[i]), __fmul_rn(x0, sv[i]));
    }
    __syncthreads();
    float *o = out + (size_t)mck_kv_row(kv, s, pos, 1, 0) * (size_t)ldo;
    for (int ch = threadIdx.x; ch < cd; ch += blockDim.x)
        o[ch] = e[ch];
}

cudaError_t mck_v4_compress(cudaStream_t s, const mck_kv *kv, const float *kvp, long long ldk,
                            const float *gp, long long ldg, const float *ape, long long lda,
                            const float *norm, const float *cs, long long ldcs, const float *sn,
                            long long ldsn, int rate, int overlap, int cd, int rd, float eps,
                            float *out, long long ldo, const long long *info)
{
    if (kv->n <= 0 || cd <= 0)
        return cudaSuccess;
    if (cd > 8192 || rd > cd || rate < 1 || kv->n > 0x7fffffffLL)
        return cudaErrorInvalidValue;
    k_v4_compress<<<(unsigned)kv->n, V4_THREADS, (size_t)cd * sizeof(float), s>>>(
        *kv, kvp, ldk, gp, ldg, ape, lda, norm, cs, ldcs, sn, ldsn, rate, overlap, cd, rd, eps,
        out, ldo, info);
    return cudaGetLastError();
}

/* ---- the lightning indexer ---- */

/* Token t's visible entries and the length of its score row. */
__device__ __forceinline__ void v4_index_row(const mck_kv &kv, long long t, int R,
                                             const int32_t *n_row, long long *nv, long long *row)
{
    *nv = ((long long)kv.pos[t] + 1) / R;
    long long nr = n_row ? n_row[t] : 0;
    *row = *nv > nr ? *nv : nr;
}

/* One thread per (token of the chunk, entry e of its row). */
__global__ static void k_v4_index_scores(mck_kv kv, long long t0, const float *iq, long long ldq,
                                         int ih, int id, const float *w, long long ldw,
                                         const float *keys, long long ldk, int R,
                                         const int32_t *n_row, float ss, float ws, long long cap,
                                         mck_v4_sel *sc, const long long *info)
{
    if (info[0] >= 0)
        return;
    const long long t = t0 + blockIdx.x;
    const long long e = (long long)blockIdx.y * blockDim.x + threadIdx.x;
    long long nv, row;
    v4_index_row(kv, t, R, n_row, &nv, &row);
    if (e >= row)
        return;
    mck_v4_sel *q = sc + (size_t)blockIdx.x * (size_t)cap;
    q[e].i = (int)e;
    if (e >= nv) {
        q[e].v = -INFINITY;
        return;
    }
    const float *key =
        keys + (size_t)mck_kv_row(kv, kv.seq[t], (e + 1) * R - 1, 1, 0) * (size_t)ldk;
    const float *wt = w + (size_t)t * (size_t)ldw;
    float acc = 0.0f;
    for (int h = 0; h < ih; h++) {
        const float *qh = iq + (size_t)(t * ih + h) * (size_t)ldq;
        float dp = 0.0f;
        for (int c = 0; c < id; c++)
            dp = fmaf(__ldg(qh + c), key[c], dp);
        const float wh = __fmul_rn(wt[h], ws);
        acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(dp > 0 ? dp : 0.0f, ss), wh));
    }
    q[e].v = acc;
}

/* The CPU's select_topk (libstdc++'s introselect with "greater", NaN
 * first), step for step: q[0..k) hold k largest, in its order. */
__device__ __forceinline__ int v4_gt(const mck_v4_sel &a, const mck_v4_sel &b)
{
    return (isnan(a.v) && !isnan(b.v)) || a.v > b.v;
}

__device__ __forceinline__ void v4_swap(mck_v4_sel *a, mck_v4_sel *b)
{
    mck_v4_sel t = *a;
    *a = *b;
    *b = t;
}

__device__ static void v4_insertion(mck_v4_sel *first, mck_v4_sel *last)
{
    if (first == last)
        return;
    for (mck_v4_sel *i = first + 1; i < last; i++) {
        mck_v4_sel val = *i;
        if (v4_gt(val, *first)) {
            for (mck_v4_sel *p = i; p > first; p--)
                *p = *(p - 1);
            *first = val;
        } else {
            mck_v4_sel *j = i;
            while (v4_gt(val, *(j - 1))) {
                *j = *(j - 1);
                j--;
            }
            *j = val;
        }
    }
}

__device__ static void v4_median_to_first(mck_v4_sel *r, mck_v4_sel *a, mck_v4_sel *b,
                                          mck_v4_sel *c)
{
    if (v4_gt(*a, *b)) {
        if (v4_gt(*b, *c))
            v4_swap(r, b);
        else if (v4_gt(*a, *c))
            v4_swap(r, c);
        else
            v4_swap(r, a);
    } else if (v4_gt(*a, *c)) {
        v4_swap(r, a);
    } else if (v4_gt(*b, *c)) {
        v4_swap(r, c);
    } else {
        v4_swap(r, b);
    }
}

__device__ static mck_v4_sel *v4_partition(mck_v4_sel *first, mck_v4_sel *last,
                                           const mck_v4_sel *pivot)
{
    for (;;) {
        while (v4_gt(*first, *pivot))
            first++;
        last--;
        while (v4_gt(*pivot, *last))
            last--;
        if (!(first < last))
            return first;
        v4_swap(first, last);
        first++;
    }
}

__device__ static void v4_select_topk(mck_v4_sel *q, long long n, long long k)
{
    if (k <= 0 || k >= n)
        return;
    mck_v4_sel *first = q, *last = q + n, *nth = q + k - 1;
    int depth = 0;
    for (long long m = n; m > 1; m >>= 1)
        depth += 2;
    while (last - first > 3) {
        if (depth-- == 0)
            break;
        mck_v4_sel *mid = first + (last - first) / 2;
        v4_median_to_first(first, first + 1, mid, last - 1);
        mck_v4_sel *cut = v4_partition(first + 1, last, first);
        if (cut <= nth)
            first = cut;
        else
            last = cut;
    }
    v4_insertion(first, last);
}

/* One thread per token of the chunk. */
__global__ static void k_v4_index_select(mck_kv kv, long long t0, long long nt, int R,
                                         const int32_t *n_row, int k, long long cap,
                                         mck_v4_sel *sc, int32_t *sel, long long sel_ld,
                                         const long long *info)
{
    if (info[0] >= 0)
        return;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nt)
        return;
    const long long t = t0 + i;
    long long nv, row;
    v4_index_row(kv, t, R, n_row, &nv, &row);
    mck_v4_sel *q = sc + (size_t)i * (size_t)cap;
    const long long kk = k < row ? k : row;
    v4_select_topk(q, row, kk);
    int32_t *out = sel + (size_t)t * (size_t)sel_ld;
    int m = 0;
    for (long long j = 0; j < kk; j++)
        if (q[j].i < nv)
            out[m++] = q[j].i;
    for (; m < k; m++)
        out[m] = -1;
}

cudaError_t mck_v4_index_topk(cudaStream_t s, const mck_kv *kv, long long t0, long long nt,
                              const float *iq, long long ldq, int ih, int id, const float *w,
                              long long ldw, const float *keys, long long ldk, int rate,
                              const int32_t *n_row, float score_scale, float weight_scale, int k,
                              long long cap, mck_v4_sel *scratch, int32_t *sel, long long sel_ld,
                              const long long *info)
{
    if (nt <= 0)
        return cudaSuccess;
    if (rate < 1 || k < 1 || cap < 0 || nt > 0x7fffffffLL || (cap + 127) / 128 > 65535)
        return cudaErrorInvalidValue;
    if (cap > 0) {
        k_v4_index_scores<<<dim3((unsigned)nt, (unsigned)((cap + 127) / 128)), 128, 0, s>>>(
            *kv, t0, iq, ldq, ih, id, w, ldw, keys, ldk, rate, n_row, score_scale, weight_scale,
            cap, scratch, info);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    k_v4_index_select<<<(unsigned)((nt + 63) / 64), 64, 0, s>>>(*kv, t0, nt, rate, n_row, k, cap,
                                                                scratch, sel, sel_ld, info);
    return cudaGetLastError();
}

/* ---- attention ---- */

__global__ static void __launch_bounds__(V4_THREADS)
    k_v4_attention(mck_kv kv, const float *qa, long long ldq, int nh, int hd, const float *kvp,
                   long long ldk, const float *comp, long long ldc, const float *sinks,
                   const int32_t *sel, long long sel_ld, int ksel, int W, int R, float scale,
                   float *y, long long ldy, const long long *info)
{
    if (info[0] >= 0)
        return;
    extern __shared__ float sh[]; /* q [hd] | o [hd] */
    __shared__ float red[V4_THREADS / 32];
    __shared__ double redd[V4_THREADS / 32];
    __shared__ float e[V4_THREADS];
    __shared__ const float *prow[V4_THREADS];
    const int h = blockIdx.y, tid = threadIdx.x;
    const long long t = blockIdx.x, qr = t * nh + h;
    float *q = sh, *o = sh + hd;
    for (int i = tid; i < hd; i += V4_THREADS) {
        q[i] = qa[(size_t)qr * (size_t)ldq + i];
        o[i] = 0.0f;
    }
    __syncthreads();
    const int s = kv.seq[t], pos = kv.pos[t];
    const long long lo = (long long)pos - W + 1 > 0 ? (long long)pos - W + 1 : 0;
    const long long nw = pos - lo + 1;
    const long long nv = comp ? ((long long)pos + 1) / R : 0;
    const long long cnt = nw + (comp ? (sel ? ksel : nv) : 0);
    const int32_t *st = sel ? sel + (size_t)t * (size_t)sel_ld : nullptr;
    float m = sinks[h];
    double l = 1.0; /* the sink's term exp(sink - m) = 1; the sum in double, as the CPU's */
    for (long long base = 0; base < cnt; base += V4_THREADS) {
        const long long i = base + tid;
        float sv = -INFINITY;
        const float *row = nullptr;
        if (i < cnt) {
            if (i < nw) {
                row = kvp + (size_t)mck_kv_row(kv, s, lo + i, 1, 0) * (size_t)ldk;
            } else {
                long long en = st ? (long long)st[i - nw] : i - nw;
                if (en >= 0)
                    row = comp + (size_t)mck_kv_row(kv, s, (en + 1) * R - 1, 1, 0) * (size_t)ldc;
            }
            if (row) {
                float d = 0.0f;
                for (int c = 0; c < hd; c++)
                    d = fmaf(q[c], row[c], d);
                sv = __fmul_rn(d, scale);
            }
        }
        /* a NaN score makes the CPU's weights NaN throughout (its maximum
         * passes over NaN, its sum does not): poison the sum */
        if (__syncthreads_or(sv != sv))
            l = NAN;
        const float mn = fmaxf(m, mck_block_max<V4_THREADS>(sv, red));
        if (mn == -INFINITY)
            continue; /* a sink of -inf and scores of -inf so far (the same on every thread) */
        const float alpha = m == -INFINITY ? 0.0f : expf(m - mn);
        const float ev = row ? expf(sv - mn) : 0.0f;
        e[tid] = ev;
        prow[tid] = row;
        /* the sum's barriers publish e and prow */
        l = l * alpha + mck_block_sum_d<V4_THREADS>((double)ev, redd);
        const int ntl = cnt - base < V4_THREADS ? (int)(cnt - base) : V4_THREADS;
        for (int dd = tid; dd < hd; dd += V4_THREADS) {
            float acc = o[dd] * alpha;
            for (int j = 0; j < ntl; j++) /* every row seen is added, as the CPU's axpy */
                if (prow[j])
                    acc = fmaf(e[j], prow[j][dd], acc);
            o[dd] = acc;
        }
        m = mn;
        __syncthreads(); /* e and prow are rewritten by the next tile */
    }
    if (m == -INFINITY)
        l = NAN; /* the sink and every score -inf: the CPU's exp(-inf - -inf) */
    const float inv = (float)(1.0 / l);
    float *yr = y + (size_t)qr * (size_t)ldy;
    for (int dd = tid; dd < hd; dd += V4_THREADS)
        yr[dd] = o[dd] * inv;
}

cudaError_t mck_v4_attention(cudaStream_t s, const mck_kv *kv, const float *q, long long ldq,
                             int nh, int hd, const float *kvp, long long ldk, const float *comp,
                             long long ldc, const float *sinks, const int32_t *sel,
                             long long sel_ld, int ksel, int window, int rate, float scale,
                             float *y, long long ldy, const long long *info)
{
    if (kv->n <= 0 || nh <= 0 || hd <= 0)
        return cudaSuccess;
    if (hd > 5120 || nh > 65535 || window < 1 || (comp && rate < 1) || kv->n > 0x7fffffffLL)
        return cudaErrorInvalidValue;
    k_v4_attention<<<dim3((unsigned)kv->n, (unsigned)nh), V4_THREADS,
                     2 * (size_t)hd * sizeof(float), s>>>(*kv, q, ldq, nh, hd, kvp, ldk, comp,
                                                          ldc, sinks, sel, sel_ld, ksel, window,
                                                          rate, scale, y, ldy, info);
    return cudaGetLastError();
}

/* ---- hash routing: one thread per token ---- */

__global__ static void k_v4_hash_route(const float *lg, long long ldl, long long n,
                                       const int32_t *tok, const int32_t *table, long long ldt,
                                       int k, int sigmoid, float norm_eps, float scale,
                                       int32_t *ids, long long ldi, float *w, long long ldw,
                                       const long long *info)
{
    if (info[0] >= 0)
        return;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n)
        return;
    const int32_t *r = table + (size_t)tok[t] * (size_t)ldt;
    const float *lt = lg + (size_t)t * (size_t)ldl;
    int32_t *it = ids + (size_t)t * (size_t)ldi;
    float *wt = w + (size_t)t * (size_t)ldw, sum = 0.0f;
    for (int j = 0; j < k; j++) {
        float x = lt[r[j]], sc;
        if (sigmoid)
            sc = v4_sigmoid(x);
        else
            sc = sqrtf(x > 20.0f ? x : log1pf(expf(x)));
        it[j] = r[j];
        wt[j] = sc;
        sum = __fadd_rn(sum, sc);
    }
    const float dv = __fadd_rn(sum, norm_eps);
    for (int j = 0; j < k; j++)
        wt[j] = __fmul_rn(__fdiv_rn(wt[j], dv), scale);
}

cudaError_t mck_v4_hash_route(cudaStream_t s, const float *logits, long long ldl, long long n,
                              const int32_t *tok, const int32_t *table, long long ldt, int k,
                              int sigmoid, float norm_eps, float scale, int32_t *ids,
                              long long ldi, float *w, long long ldw, const long long *info)
{
    if (n <= 0)
        return cudaSuccess;
    k_v4_hash_route<<<(unsigned)((n + 127) / 128), 128, 0, s>>>(
        logits, ldl, n, tok, table, ldt, k, sigmoid, norm_eps, scale, ids, ldi, w, ldw, info);
    return cudaGetLastError();
}
