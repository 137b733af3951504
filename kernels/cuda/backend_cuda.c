/* cuda/backend_cuda.c - the CUDA backend: one device, one stream, device
 * memory from cudaMalloc; the device, memory, probe and counter entries and
 * the vtable live here, the ops in cuda/backend_cuda_ops.c, _attn.c, _moe.c and the kernels
 * in the .cu files beside it. Every entry makes the backend's device current first (the
 * calling thread may not be the one that created it) and checks the CUDA
 * status after every call and launch, naming the op. */
#include "backend.h"
#include "cuda/backend_cuda_internal.h"
#include "cuda/cuda_device.h"
#include "dtype.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SAME(a, b) ((int)(a) == (int)(b))
_Static_assert(SAME(MCK_DT_F32, MC_DT_F32) && SAME(MCK_DT_F16, MC_DT_F16) &&
                   SAME(MCK_DT_BF16, MC_DT_BF16) && SAME(MCK_DT_F8_E4M3, MC_DT_F8_E4M3) &&
                   SAME(MCK_DT_I64, MC_DT_I64) && SAME(MCK_DT_I32, MC_DT_I32) &&
                   SAME(MCK_DT_Q8_0, MC_DT_Q8_0) && SAME(MCK_DT_Q4_K, MC_DT_Q4_K) &&
                   SAME(MCK_DT_Q6_K, MC_DT_Q6_K),
               "cuda_ops.h dtype codes follow mc_dtype");
#undef SAME

mc_status mc_cuda_check(cudaError_t e, const char *op, mc_err *err)
{
    if (e == cudaSuccess)
        return MC_OK;
    return mc_err_set(err, MC_ERR_INTERNAL, "cuda backend: %s: %s (%s)", op, cudaGetErrorString(e),
                      cudaGetErrorName(e));
}

mc_status mc_cuda_use(mc_cuda_ctx *c, const char *op, mc_err *err)
{
    return mc_cuda_check(cudaSetDevice(c->device), op, err);
}

/* A positive byte count from the environment, else dflt. */
static size_t env_bytes(const char *name, size_t dflt)
{
    const char *v = getenv(name);
    char *end = NULL;
    unsigned long long b = v ? strtoull(v, &end, 10) : 0;
    return v && end != v && !*end && b > 0 ? (size_t)b : dflt;
}

mck_defer mc_cuda_defer_of(mc_cuda_ctx *c, int op, long long k)
{
    mck_defer d = {NULL, 0, 0};
    if (c->sync_checks)
        return d;
    c->noted = 1;
    d.rec = c->d_rec;
    d.op = op;
    d.k = k;
    return d;
}

/* The message of a deferred refusal (rec: op, index, k). The CPU op's words
 * name the value at fault; only the index reaches the host here. */
static mc_status deferred_refusal(const long long *rec, mc_err *err)
{
    long long v = rec[1], k = rec[2] > 0 ? rec[2] : 1;
    const char *how = "(found by the device's check, reported at the next wait; "
                      "MC_CUDA_SYNC_CHECKS=1 checks at the op and names the value)";
    switch ((int)rec[0]) {
    case MC_CUDA_CHK_ROPE:
        return mc_err_set(err, MC_ERR_ARG, "rope: pos[%lld] is outside the cos/sin tables %s", v,
                          how);
    case MC_CUDA_CHK_KV_WRITE:
    case MC_CUDA_CHK_ATTENTION:
    case MC_CUDA_CHK_MLA_DECODE: {
        const char *op = rec[0] == MC_CUDA_CHK_KV_WRITE    ? "kv_write"
                         : rec[0] == MC_CUDA_CHK_ATTENTION ? "attention"
                                                           : "mla_decode";
        return mc_err_set(err, MC_ERR_ARG, "%s: token %lld: its sequence, position, block ids or "
                          "selection are outside the block table or the cache %s", op, v, how);
    }
    case MC_CUDA_CHK_PERMUTE:
        return mc_err_set(err, MC_ERR_ARG, "moe_permute: ids[%lld, %lld] is outside the experts "
                          "of offsets %s", v / k, v % k, how);
    case MC_CUDA_CHK_UNPERMUTE:
        return mc_err_set(err, MC_ERR_ARG, "moe_unpermute: slot[%lld, %lld] is outside yp's rows "
                          "%s", v / k, v % k, how);
    case MC_CUDA_CHK_V4_COMPRESS:
    case MC_CUDA_CHK_V4_INDEX:
    case MC_CUDA_CHK_V4_ATTENTION: {
        const char *op = rec[0] == MC_CUDA_CHK_V4_COMPRESS ? "v4_compress"
                         : rec[0] == MC_CUDA_CHK_V4_INDEX  ? "v4_index_topk"
                                                           : "v4_attention";
        return mc_err_set(err, MC_ERR_ARG, "%s: token %lld: its sequence, position, block ids, "
                          "window or entries are outside the block table, the cache or the "
                          "tables (v4_index_topk: or its n_row is longer than the block table "
                          "holds) %s", op, v, how);
    }
    case MC_CUDA_CHK_V4_HASH:
        return mc_err_set(err, MC_ERR_ARG, "v4_hash_route: token %lld: its id or its table row "
                          "is outside the table or the experts %s", v, how);
    case MC_CUDA_CHK_OFFSETS:
        return mc_err_set(err, MC_ERR_ARG, "grouped_experts: offsets[%lld] is out of order (they "
                          "rise from 0 to the rows of x) %s", v, how);
    default:
        return mc_err_set(err, MC_ERR_INTERNAL, "cuda backend: a deferred check noted op %lld",
                          rec[0]);
    }
}

mc_status mc_cuda_no_capture(mc_cuda_ctx *c, const char *what, mc_err *err)
{
    if (!c->capturing)
        return MC_OK;
    c->cap_refused = 1; /* the graph would lack this op: its end fails */
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: %s while a graph is captured (it "
                      "waits for the device or allocates; a graph holds launches only)", what);
}

mc_status mc_cuda_read_back(mc_cuda_ctx *c, const char *op, void *host, const void *dev,
                            size_t bytes, mc_err *err)
{
    mc_status st = mc_cuda_no_capture(c, op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, c->stream),
                           op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaStreamSynchronize(c->stream), op, err);
    return st;
}

mc_status mc_cuda_wait(mc_cuda_ctx *c, const char *op, int take, mc_err *err)
{
    int noted = c->noted && take, nf = c->nf_noted;
    mc_status st = mc_cuda_no_capture(c, op, err);
    if (st != MC_OK)
        return st;
    if (noted || nf) { /* read the notes and clear what is read, behind everything queued */
        st = mc_cuda_check(cudaMemcpyAsync(c->h_rec, c->d_rec, 7 * sizeof *c->h_rec,
                                           cudaMemcpyDeviceToHost, c->stream), op, err);
        if (st == MC_OK && noted)
            st = mc_cuda_check(cudaMemsetAsync(c->d_rec, 0xff, 3 * sizeof *c->d_rec, c->stream),
                               op, err);
        if (st == MC_OK && nf)
            st = mc_cuda_check(cudaMemsetAsync(c->d_rec + 3, 0xff, 4 * sizeof *c->d_rec,
                                               c->stream), op, err);
    }
    mc_status s2 = mc_cuda_check(cudaStreamSynchronize(c->stream), op, st == MC_OK ? err : NULL);
    if (st == MC_OK)
        st = s2;
    if (st != MC_OK)
        return st;
    if (nf) {
        c->nf_noted = 0;
        if (c->h_rec[3] >= 0 && c->nf.tag < 0) {
            uint32_t u = (uint32_t)c->h_rec[6];
            float v;
            memcpy(&v, &u, sizeof v);
            c->nf = (mc_nonfinite_note){.tag = c->h_rec[3], .row = c->h_rec[4],
                                        .col = c->h_rec[5], .value = v};
        }
    }
    if (!noted)
        return MC_OK;
    c->noted = 0;
    return c->h_rec[0] >= 0 ? deferred_refusal(c->h_rec, err) : MC_OK;
}

static mc_status cu_take_nonfinite(void *ctx, mc_nonfinite_note *note, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = MC_OK;
    if (c->nf_noted && (st = mc_cuda_use(c, "take_nonfinite", err)) == MC_OK)
        st = mc_cuda_wait(c, "take_nonfinite", 1, err);
    *note = c->nf;
    c->nf.tag = -1;
    return st;
}

/* At least `bytes` in *mem (*size bytes), grown when short. */
static mc_status scratch_grow(mc_cuda_ctx *c, void **mem, size_t *size, size_t bytes, void **p,
                              const char *op, mc_err *err)
{
    if (bytes <= *size) {
        *p = *mem;
        return MC_OK;
    }
    /* the ops queued before may still read the old scratch; graphs captured
     * with it go stale */
    mc_status st = mc_cuda_no_capture(c, "a scratch that must grow", err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaStreamSynchronize(c->stream), op, err);
    if (st != MC_OK)
        return st;
    c->gen++;
    if (*mem)
        cudaFree(*mem);
    *mem = NULL;
    *size = 0;
    size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes + bytes / 4;
    if (cudaMalloc(mem, want) != cudaSuccess) {
        (void)cudaGetLastError();
        *mem = NULL;
        return mc_err_set(err, MC_ERR_NOMEM, "cuda backend: %s: no device memory for %zu bytes of "
                          "scratch", op, want);
    }
    *size = want;
    *p = *mem;
    return MC_OK;
}

mc_status mc_cuda_scratch(mc_cuda_ctx *c, size_t bytes, void **p, const char *op, mc_err *err)
{
    return scratch_grow(c, &c->scratch, &c->scratch_bytes, bytes, p, op, err);
}

mc_status mc_cuda_scratch2(mc_cuda_ctx *c, size_t bytes, void **p, const char *op, mc_err *err)
{
    return scratch_grow(c, &c->scratch2, &c->scratch2_bytes, bytes, p, op, err);
}

mc_status mc_cuda_wscratch(mc_cuda_ctx *c, size_t bytes, void **p, const char *op, mc_err *err)
{
    return scratch_grow(c, &c->wscratch, &c->wscratch_bytes, bytes, p, op, err);
}

/* ---- memory ---- */

static mc_status cu_alloc(void *ctx, size_t bytes, void **mem, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "buffer_alloc", err);
    if (st != MC_OK)
        return st;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* not sticky: clear it */
        return mc_err_set(err, e == cudaErrorMemoryAllocation ? MC_ERR_NOMEM : MC_ERR_INTERNAL,
                          "cuda backend: buffer_alloc of %zu bytes: %s", bytes,
                          cudaGetErrorString(e));
    }
    *mem = p;
    return MC_OK;
}

static void cu_buf_free(void *ctx, void *mem, size_t bytes)
{
    mc_cuda_ctx *c = ctx;
    (void)bytes;
    (void)cudaSetDevice(c->device);
    /* cudaFree waits for the device to finish with the memory */
    (void)cudaFree(mem);
}

/* The two pinned staging buffers and their events, made once; 0 when they
 * cannot be had (then copies go from pageable memory, as before). */
static int stage_ready(mc_cuda_ctx *c)
{
    if (c->stage[1])
        return 1;
    if (c->stage_off)
        return 0;
    for (int k = 0; k < 2; k++)
        if (cudaHostAlloc(&c->stage[k], MC_CUDA_STAGE_BYTES, cudaHostAllocDefault) != cudaSuccess ||
            cudaEventCreateWithFlags(&c->done[k], cudaEventDisableTiming) != cudaSuccess) {
            (void)cudaGetLastError(); /* not sticky: clear it */
            for (int j = 0; j <= k; j++) {
                if (c->stage[j])
                    cudaFreeHost(c->stage[j]);
                if (c->done[j])
                    cudaEventDestroy(c->done[j]);
                c->stage[j] = NULL;
                c->done[j] = NULL;
            }
            c->stage_off = 1;
            return 0;
        }
    return 1;
}

static mc_status cu_upload(void *ctx, void *mem, size_t off, const void *src, size_t n,
                           mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "upload", err);
    unsigned char *dst = (unsigned char *)mem + off;
    if (st == MC_OK && n >= MC_CUDA_STAGE_MIN && stage_ready(c)) {
        /* chunk i: wait for the DMA that last read stage[k], fill it, queue its DMA */
        for (size_t o = 0, k = 0; st == MC_OK && o < n; o += MC_CUDA_STAGE_BYTES, k ^= 1) {
            size_t len = n - o < MC_CUDA_STAGE_BYTES ? n - o : MC_CUDA_STAGE_BYTES;
            st = mc_cuda_check(cudaEventSynchronize(c->done[k]), "upload", err);
            if (st != MC_OK)
                break;
            memcpy(c->stage[k], (const unsigned char *)src + o, len);
            st = mc_cuda_check(cudaMemcpyAsync(dst + o, c->stage[k], len, cudaMemcpyHostToDevice,
                                               c->stream), "upload", err);
            if (st == MC_OK)
                st = mc_cuda_check(cudaEventRecord(c->done[k], c->stream), "upload", err);
        }
    } else if (st == MC_OK) {
        st = mc_cuda_check(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->stream),
                           "upload", err);
    }
    /* the caller may reuse src on return (pageable memory) */
    mc_status s2 = mc_cuda_wait(c, "upload", st == MC_OK, st == MC_OK ? err : NULL);
    return st != MC_OK ? st : s2;
}

static mc_status cu_download(void *ctx, const void *mem, size_t off, void *dst, size_t n,
                             mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "download", err);
    const unsigned char *from = (const unsigned char *)mem + off;
    if (st == MC_OK && n >= MC_CUDA_STAGE_MIN && stage_ready(c)) {
        /* chunk i's DMA into stage[i % 2] is queued before chunk i - 1 is copied out */
        const size_t B = MC_CUDA_STAGE_BYTES, nch = (n + B - 1) / B;
        for (size_t i = 0; st == MC_OK && i <= nch; i++) {
            if (i < nch) {
                size_t len = n - i * B < B ? n - i * B : B;
                st = mc_cuda_check(cudaMemcpyAsync(c->stage[i & 1], from + i * B, len,
                                                   cudaMemcpyDeviceToHost, c->stream),
                                   "download", err);
                if (st == MC_OK)
                    st = mc_cuda_check(cudaEventRecord(c->done[i & 1], c->stream), "download",
                                       err);
            }
            if (st == MC_OK && i > 0) {
                size_t j = i - 1, len = n - j * B < B ? n - j * B : B;
                st = mc_cuda_check(cudaEventSynchronize(c->done[j & 1]), "download", err);
                if (st == MC_OK)
                    memcpy((unsigned char *)dst + j * B, c->stage[j & 1], len);
            }
        }
    } else if (st == MC_OK) {
        st = mc_cuda_check(cudaMemcpyAsync(dst, from, n, cudaMemcpyDeviceToHost, c->stream),
                           "download", err);
    }
    mc_status s2 = mc_cuda_wait(c, "download", st == MC_OK, st == MC_OK ? err : NULL);
    return st != MC_OK ? st : s2;
}

static mc_status cu_memset(void *ctx, void *mem, size_t off, int value, size_t n, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "memset", err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMemsetAsync((unsigned char *)mem + off, value, n, c->stream),
                           "memset", err);
    return st;
}

static mc_status cu_sync(void *ctx, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "synchronize", err);
    if (st == MC_OK)
        st = mc_cuda_wait(c, "synchronize", 1, err);
    return st;
}

static int cu_sync_checks(void *ctx) { return ((mc_cuda_ctx *)ctx)->sync_checks; }

/* ---- graphs: CUDA graphs of the stream's work ---- */

typedef struct {
    cudaGraphExec_t exec;
    unsigned long long gen;
    mc_backend_counters counts; /* what its ops count on the host, added at each launch */
} cu_graph;

static mc_status cu_capture_begin(void *ctx, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "capture_begin", err);
    if (st == MC_OK) /* thread-local: calls of this thread that are not
                      * capturable (a synchronous copy, cudaMalloc) fail */
        st = mc_cuda_check(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal),
                           "capture_begin", err);
    if (st == MC_OK) {
        c->capturing = 1;
        c->cap_refused = 0;
        c->cap_counters = c->counters;
        c->cap_counting = c->counting;
        c->counting = 1;
    }
    return st;
}

static mc_status cu_capture_end(void *ctx, void **out, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "capture_end";
    cudaGraph_t graph = NULL;
    c->capturing = 0;
    /* nothing ran: the counts of the captured ops belong to the launches */
    mc_backend_counters counts = {c->counters.bytes_read - c->cap_counters.bytes_read,
                                  c->counters.macs - c->cap_counters.macs};
    c->counters = c->cap_counters;
    c->counting = c->cap_counting;
    mc_status st = mc_cuda_check(cudaStreamEndCapture(c->stream, &graph), op, err);
    if (st == MC_OK && c->cap_refused)
        st = mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: an op was refused while the "
                        "graph was captured");
    cu_graph *g = NULL;
    if (st == MC_OK && !(g = calloc(1, sizeof *g)))
        st = mc_err_set(err, MC_ERR_NOMEM, "cuda backend: out of memory for a graph");
    if (st == MC_OK)
        st = mc_cuda_check(cudaGraphInstantiate(&g->exec, graph, 0), op, err);
    if (graph)
        (void)cudaGraphDestroy(graph);
    if (st != MC_OK) {
        free(g);
        return st;
    }
    g->gen = c->gen;
    g->counts = counts;
    *out = g;
    return MC_OK;
}

static mc_status cu_graph_launch(void *ctx, void *graph, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    cu_graph *g = graph;
    mc_status st = mc_cuda_use(c, "graph_launch", err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaGraphLaunch(g->exec, c->stream), "graph_launch", err);
    if (st == MC_OK) { /* its check kernels may leave notes: the next wait reads them */
        c->noted = 1;
        c->nf_noted = 1;
        if (c->counting) {
            c->counters.bytes_read += g->counts.bytes_read;
            c->counters.macs += g->counts.macs;
        }
    }
    return st;
}

static int cu_graph_stale(void *ctx, const void *graph)
{
    return ((const cu_graph *)graph)->gen != ((mc_cuda_ctx *)ctx)->gen;
}

static void cu_graph_free(void *ctx, void *graph)
{
    cu_graph *g = graph;
    (void)cudaSetDevice(((mc_cuda_ctx *)ctx)->device);
    if (g->exec)
        (void)cudaGraphExecDestroy(g->exec);
    free(g);
}

static int cu_set_sync_checks(void *ctx, int on)
{
    mc_cuda_ctx *c = ctx;
    int was = c->sync_checks;
    c->sync_checks = on != 0;
    return was;
}

/* ---- probes and counters ---- */

static const char *cu_path(void *ctx)
{
    (void)ctx;
    return "cuda";
}

static const char *cu_features(void *ctx)
{
    return ((mc_cuda_ctx *)ctx)->features;
}

static mc_status cu_set_path(void *ctx, const char *name, mc_err *err)
{
    (void)ctx;
    if (strcmp(name, "cuda") != 0)
        return mc_err_set(err, MC_ERR_ARG, "set_path: '%s' is not a path of the cuda backend "
                          "(cuda)", name);
    return MC_OK;
}

static int cu_threads(void *ctx)
{
    return ((mc_cuda_ctx *)ctx)->sms; /* the multiprocessors the kernels spread over */
}

static void cu_set_threads(void *ctx, int n)
{
    (void)ctx;
    (void)n; /* the device schedules its own threads */
}

static void cu_count(void *ctx, int on)
{
    mc_cuda_ctx *c = ctx;
    c->counting = on != 0;
    memset(&c->counters, 0, sizeof c->counters);
    if (cudaSetDevice(c->device) == cudaSuccess) /* (no error channel: a failure counts 0) */
        (void)cudaMemsetAsync(c->d_count, 0, 2 * sizeof *c->d_count, c->stream);
}

/* The host's counts plus the device's (the grouped experts' launch counts
 * there: read after the stream drains). */
static void cu_counters(void *ctx, mc_backend_counters *out)
{
    mc_cuda_ctx *c = ctx;
    *out = c->counters;
    unsigned long long d[2] = {0, 0};
    if (cudaSetDevice(c->device) == cudaSuccess &&
        cudaMemcpyAsync(d, c->d_count, sizeof d, cudaMemcpyDeviceToHost, c->stream) ==
            cudaSuccess &&
        cudaStreamSynchronize(c->stream) == cudaSuccess) {
        out->bytes_read += d[0];
        out->macs += d[1];
    }
}

/* Seconds between two recorded events (negative on error). */
static double ev_seconds(cudaEvent_t a, cudaEvent_t b)
{
    float ms = 0;
    if (cudaEventSynchronize(b) != cudaSuccess || cudaEventElapsedTime(&ms, a, b) != cudaSuccess)
        return -1;
    return ms * 1e-3;
}

/* A probe's end, on success and failure alike: the error state cleared,
 * the stream drained, its timing events destroyed (NULL is fine). */
static void probe_end(mc_cuda_ctx *c, cudaEvent_t e0, cudaEvent_t e1)
{
    (void)cudaGetLastError();
    (void)cudaStreamSynchronize(c->stream);
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
}

/* Best single-pass read bandwidth over `bytes` of device memory (filled with
 * a pattern, never zeros), passes repeated for about `seconds`. */
static double cu_read_gbps(void *ctx, size_t bytes, int threads, double seconds)
{
    mc_cuda_ctx *c = ctx;
    (void)threads;
    bytes &= ~(size_t)15;
    if (bytes < 16 || cudaSetDevice(c->device) != cudaSuccess)
        return -1;
    void *buf = NULL;
    unsigned long long *sink = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = -1, total = 0;
    if (cudaMalloc(&buf, bytes) != cudaSuccess ||
        cudaMalloc((void **)&sink, sizeof *sink) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess ||
        mck_fill_pattern(c->stream, buf, bytes) != cudaSuccess ||
        mck_probe_read(c->stream, buf, bytes, c->sms * 4, sink) != cudaSuccess) /* warm-up */
        goto fail;
    for (int pass = 0; pass < 1000 && (pass < 3 || total < seconds); pass++) {
        if (cudaEventRecord(e0, c->stream) != cudaSuccess ||
            mck_probe_read(c->stream, buf, bytes, c->sms * 4, sink) != cudaSuccess ||
            cudaEventRecord(e1, c->stream) != cudaSuccess)
            goto fail;
        double s = ev_seconds(e0, e1);
        if (s <= 0)
            goto fail;
        total += s;
        double gbps = (double)bytes / s * 1e-9;
        best = gbps > best ? gbps : best;
    }
fail:
    probe_end(c, e0, e1);
    cudaFree(sink);
    cudaFree(buf);
    return best;
}

/* The BF16 matrix rate bench holds prefill against: a cuBLAS product of
 * 4096 x 4096 BF16 weights by 4096 BF16 tokens into F32 with F32
 * accumulation, the call the BF16 matmul makes for more than 8 tokens
 * (cublasGemmEx, CUBLAS_COMPUTE_32F), best pass over about `seconds`. */
static double cu_bf16_gflops(void *ctx, int threads, double seconds)
{
    mc_cuda_ctx *c = ctx;
    (void)threads;
    if (cudaSetDevice(c->device) != cudaSuccess)
        return -1;
    const int n = 4096;
    const size_t ab = (size_t)n * n * 2, yb = (size_t)n * n * 4;
    void *a = NULL, *b = NULL, *y = NULL;
    uint16_t *h = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = -1, total = 0;
    const float one = 1.0f, zero = 0.0f;
    if (cudaMalloc(&a, ab) != cudaSuccess || cudaMalloc(&b, ab) != cudaSuccess ||
        cudaMalloc(&y, yb) != cudaSuccess || cudaEventCreate(&e0) != cudaSuccess ||
        cudaEventCreate(&e1) != cudaSuccess)
        goto fail;
    /* finite, varied values in [-1, 1] (not zeros, which could run faster) */
    h = malloc(ab);
    if (!h)
        goto fail;
    for (size_t i = 0, r = 0x9E3779B97F4A7C15ull; i < (size_t)n * n; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        float v = (float)((long)((r >> 33) % 2001) - 1000) / 1000.0f;
        uint32_t u;
        memcpy(&u, &v, 4);
        h[i] = (uint16_t)(u >> 16);
    }
    if (cudaMemcpy(a, h, ab, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(b, h, ab, cudaMemcpyHostToDevice) != cudaSuccess)
        goto fail;
    for (int pass = -1; pass < 1000 && (pass < 3 || total < seconds); pass++) { /* -1: warm-up */
        if (cudaEventRecord(e0, c->stream) != cudaSuccess ||
            cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b,
                         CUDA_R_16BF, n, &zero, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS ||
            cudaEventRecord(e1, c->stream) != cudaSuccess)
            goto fail;
        double s = ev_seconds(e0, e1);
        if (s <= 0)
            goto fail;
        if (pass < 0)
            continue;
        total += s;
        double gf = 2.0 * (double)n * n * n / s * 1e-9;
        best = gf > best ? gf : best;
    }
fail:
    probe_end(c, e0, e1);
    cudaFree(a);
    cudaFree(b);
    cudaFree(y);
    free(h);
    return best;
}

/* Peak F32 FMA rate: every multiprocessor full of 8-chain FMA loops. */
static double cu_fma_gflops(void *ctx, int threads, double seconds)
{
    mc_cuda_ctx *c = ctx;
    (void)threads;
    if (cudaSetDevice(c->device) != cudaSuccess)
        return -1;
    const int blocks = c->sms * 8, tpb = 256, iters = 20000;
    float *sink = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = -1, total = 0;
    if (cudaMalloc((void **)&sink, sizeof *sink) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess ||
        mck_probe_fma(c->stream, blocks, tpb, iters, sink) != cudaSuccess) /* warm-up */
        goto fail;
    for (int pass = 0; pass < 1000 && (pass < 3 || total < seconds); pass++) {
        if (cudaEventRecord(e0, c->stream) != cudaSuccess ||
            mck_probe_fma(c->stream, blocks, tpb, iters, sink) != cudaSuccess ||
            cudaEventRecord(e1, c->stream) != cudaSuccess)
            goto fail;
        double s = ev_seconds(e0, e1);
        if (s <= 0)
            goto fail;
        total += s;
        double gf = 16.0 * iters * (double)blocks * tpb / s * 1e-9;
        best = gf > best ? gf : best;
    }
fail:
    probe_end(c, e0, e1);
    cudaFree(sink);
    return best;
}

/* ---- lifetime ---- */

static void cu_free(void *ctx)
{
    mc_cuda_ctx *c = ctx;
    if (!c)
        return;
    (void)cudaSetDevice(c->device);
    if (c->stream)
        (void)cudaStreamSynchronize(c->stream);
    if (c->blas)
        cublasDestroy(c->blas);
    cudaFree(c->scratch);
    cudaFree(c->scratch2);
    cudaFree(c->wscratch);
    cudaFree(c->d_flag);
    cudaFree(c->d_first);
    cudaFree(c->d_info);
    cudaFreeHost(c->h_flag);
    cudaFreeHost(c->h_first);
    cudaFreeHost(c->h_info);
    cudaFree(c->d_rec);
    cudaFree(c->d_nf_first);
    cudaFree(c->blas_ws);
    cudaFreeHost(c->h_rec);
    for (int k = 0; k < 2; k++) {
        if (c->stage[k])
            cudaFreeHost(c->stage[k]);
        if (c->done[k])
            cudaEventDestroy(c->done[k]);
    }
    cudaFree(c->d_count);
    for (int i = 0; i < c->n_exm; i++) {
        cudaFree(c->exm[i].dev);
        free(c->exm[i].host);
    }
    free(c->exm);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

static const mc_backend_i cuda_iface = {
    .name = "cuda",
    .kind = MC_DEVICE_GPU,
    .free = cu_free,
    .buf_alloc = cu_alloc,
    .buf_free = cu_buf_free,
    .wrap_host = NULL, /* device memory: upload into an allocated buffer */
    .host_memory = 0,
    .upload = cu_upload,
    .download = cu_download,
    .memset = cu_memset,
    .synchronize = cu_sync,
    .set_sync_checks = cu_set_sync_checks,
    .sync_checks = cu_sync_checks,
    .capture_begin = cu_capture_begin,
    .capture_end = cu_capture_end,
    .graph_launch = cu_graph_launch,
    .graph_stale = cu_graph_stale,
    .graph_free = cu_graph_free,
    .matmul = mc_cuda_matmul,
    .rmsnorm = mc_cuda_rmsnorm,
    .rope = mc_cuda_rope,
    .swiglu = mc_cuda_swiglu,
    .add = mc_cuda_add,
    .softmax = mc_cuda_softmax,
    .embed = mc_cuda_embed,
    .layernorm = mc_cuda_layernorm,
    .find_nonfinite = mc_cuda_find_nonfinite,
    .note_nonfinite = mc_cuda_note_nonfinite,
    .take_nonfinite = cu_take_nonfinite,
    .topk = mc_cuda_topk,
    .kv_write = mc_cuda_kv_write,
    .attention = mc_cuda_attention,
    .mla_decode = mc_cuda_mla_decode,
    .indexer_topk = mc_cuda_indexer_topk,
    .router_topk = mc_cuda_router_topk,
    .moe_permute = mc_cuda_moe_permute,
    .moe_unpermute_weighted = mc_cuda_moe_unpermute,
    .grouped_experts = mc_cuda_grouped_experts,
    .v4_hc_pre = mc_cuda_v4_hc_pre,
    .v4_hc_post = mc_cuda_v4_hc_post,
    .v4_compress = mc_cuda_v4_compress,
    .v4_index_topk = mc_cuda_v4_index_topk,
    .v4_attention = mc_cuda_v4_attention,
    .v4_hash_route = mc_cuda_v4_hash_route,
    .path = cu_path,
    .features = cu_features,
    .set_path = cu_set_path,
    .threads = cu_threads,
    .set_threads = cu_set_threads,
    .count = cu_count,
    .counters = cu_counters,
    .probe_read_gbps = cu_read_gbps,
    .probe_fma_gflops = cu_fma_gflops,
    .probe_bf16_gflops = cu_bf16_gflops,
};

int mc_cuda_device_count(mc_err *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        mc_err_set(err, MC_ERR_UNSUPPORTED, "no CUDA device visible (cudaGetDeviceCount: %s)",
                   e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 0;
    }
    return n;
}

mc_status mc_backend_cuda_init(int device, mc_backend **out, mc_err *err)
{
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "no CUDA device visible (cudaGetDeviceCount: %s)",
                          e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    if (device < 0 || device >= n)
        return mc_err_set(err, MC_ERR_ARG, "CUDA device %d does not exist (%d visible)", device, n);
    mc_cuda_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for the CUDA backend");
    c->device = device;
    c->nf.tag = -1;
    const char *op = "init";
    struct cudaDeviceProp prop;
    mc_status st = mc_cuda_check(cudaSetDevice(device), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaGetDeviceProperties(&prop, device), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMalloc((void **)&c->d_flag, sizeof *c->d_flag), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMalloc((void **)&c->d_first, sizeof *c->d_first), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMallocHost((void **)&c->h_flag, sizeof *c->h_flag), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMallocHost((void **)&c->h_first, sizeof *c->h_first), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMalloc((void **)&c->d_info, 8 * sizeof *c->d_info), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMallocHost((void **)&c->h_info, 8 * sizeof *c->h_info), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMalloc((void **)&c->d_rec, 7 * sizeof *c->d_rec), op, err);
    if (st == MC_OK) /* all ones: -1, no refusal or non-finite value noted (on the ops'
                      * stream, which does not wait for the legacy default stream) */
        st = mc_cuda_check(cudaMemsetAsync(c->d_rec, 0xff, 7 * sizeof *c->d_rec, c->stream), op,
                           err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMallocHost((void **)&c->h_rec, 7 * sizeof *c->h_rec), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMalloc((void **)&c->d_nf_first, sizeof *c->d_nf_first), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMemsetAsync(c->d_nf_first, 0xff, sizeof *c->d_nf_first,
                                           c->stream), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMalloc((void **)&c->d_count, 2 * sizeof *c->d_count), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMemsetAsync(c->d_count, 0, 2 * sizeof *c->d_count, c->stream), op,
                           err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaStreamSynchronize(c->stream), op, err);
    const char *sc = getenv("MC_CUDA_SYNC_CHECKS");
    c->sync_checks = sc && strcmp(sc, "1") == 0;
    const char *tk = getenv("MC_CUDA_TOPK");
    c->topk_passes = tk && strcmp(tk, "passes") == 0;
    const char *ex = getenv("MC_CUDA_EXPERTS");
    c->experts_loop = ex && strcmp(ex, "loop") == 0;
    const char *f8 = getenv("MC_CUDA_FP8");
    c->fp8_gemv = f8 && strcmp(f8, "gemv") == 0;
    c->fp8_chunk_bytes = env_bytes("MC_CUDA_FP8_CHUNK_BYTES", (size_t)128 << 20);
    c->v4_index_bytes = env_bytes("MC_CUDA_V4_INDEX_BYTES", (size_t)256 << 20);
    if (st == MC_OK) {
        cublasStatus_t bs = cublasCreate(&c->blas);
        if (bs == CUBLAS_STATUS_SUCCESS)
            bs = cublasSetStream(c->blas, c->stream);
        /* a workspace of its own (32 MiB, as Hopper's products want at most):
         * a product captured in a graph then allocates nothing */
        const size_t wsb = (size_t)32 << 20;
        if (bs == CUBLAS_STATUS_SUCCESS &&
            (st = mc_cuda_check(cudaMalloc(&c->blas_ws, wsb), op, err)) == MC_OK)
            bs = cublasSetWorkspace(c->blas, c->blas_ws, wsb);
        if (st == MC_OK && bs != CUBLAS_STATUS_SUCCESS)
            st = mc_err_set(err, MC_ERR_INTERNAL, "cuda backend: init: cuBLAS: %s",
                            cublasGetStatusString(bs));
    }
    if (st != MC_OK) {
        cu_free(c);
        return st;
    }
    c->sms = prop.multiProcessorCount;
    snprintf(c->features, sizeof c->features, "%.160s sm_%d%d %d SMs %.1f GiB", prop.name,
             prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    mc_backend_i iface = cuda_iface;
    const char *v4 = getenv("MC_CUDA_V4");
    if (v4 && strcmp(v4, "host") == 0) { /* the front end's host round trip (backend_ops_v4.c) */
        iface.v4_hc_pre = NULL;
        iface.v4_hc_post = NULL;
        iface.v4_compress = NULL;
        iface.v4_index_topk = NULL;
        iface.v4_attention = NULL;
        iface.v4_hash_route = NULL;
    }
    *out = mc_backend_new(&iface, c);
    if (!*out) {
        cu_free(c);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for the CUDA backend");
    }
    return MC_OK;
}
