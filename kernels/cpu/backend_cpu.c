/* cpu/backend_cpu.c - the CPU backend: buffers are host memory and every op
 * runs today's kernels (kernels.h: run-time chosen AVX-512 / AVX2 /
 * portable path, process-wide thread pool). The front end (backend.c) has
 * validated shapes, dtypes, ranges and aliasing; what is left here is the
 * math and the checks on contents (positions, token ids). */
#include "backend.h"
#include "kernels.h"
#include "cpu/backend_cpu_internal.h"
#include "cpu/backend_cpu_v4.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---- memory ---- */

static mc_status cpu_alloc(void *ctx, size_t bytes, void **mem, mc_err *err)
{
    (void)ctx;
    /* 2 MiB aligned from 4 MiB up so that transparent huge pages can back
     * it (as mc_mat_quantize's weights); the advice is only a hint */
    size_t align = bytes >= (4u << 20) ? (2u << 20) : 64;
    if (bytes > SIZE_MAX - align)
        return mc_err_set(err, MC_ERR_OVERFLOW, "buffer of %zu bytes is too large", bytes);
    size_t alloc = (bytes + align - 1) & ~(align - 1);
    void *p = aligned_alloc(align, alloc);
    if (!p)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for a %zu-byte buffer", bytes);
#ifdef MADV_HUGEPAGE
    if (align > 64)
        (void)madvise(p, alloc, MADV_HUGEPAGE);
#endif
    *mem = p;
    return MC_OK;
}

static void cpu_buf_free(void *ctx, void *mem, size_t bytes)
{
    (void)ctx;
    (void)bytes;
    free(mem);
}

static mc_status cpu_wrap(void *ctx, const void *host, size_t bytes, void **mem, mc_err *err)
{
    (void)ctx;
    (void)bytes;
    (void)err;
    *mem = (void *)host; /* read-only: the front end refuses writes to borrowed buffers */
    return MC_OK;
}

static mc_status cpu_upload(void *ctx, void *mem, size_t off, const void *src, size_t n,
                            mc_err *err)
{
    (void)ctx;
    (void)err;
    memcpy((unsigned char *)mem + off, src, n);
    return MC_OK;
}

static mc_status cpu_download(void *ctx, const void *mem, size_t off, void *dst, size_t n,
                              mc_err *err)
{
    (void)ctx;
    (void)err;
    memcpy(dst, (const unsigned char *)mem + off, n);
    return MC_OK;
}

static mc_status cpu_memset(void *ctx, void *mem, size_t off, int value, size_t n, mc_err *err)
{
    (void)ctx;
    (void)err;
    memset((unsigned char *)mem + off, value, n);
    return MC_OK;
}

static mc_status cpu_sync(void *ctx, mc_err *err)
{
    (void)ctx;
    (void)err;
    return MC_OK; /* ops run synchronously on the calling thread and the pool */
}

/* ---- ops ---- */

static mc_status cpu_matmul(void *ctx, const mc_tensor *w, const mc_tensor *x, mc_tensor *y,
                            mc_err *err)
{
    (void)ctx;
    (void)err;
    mc_mat m = to_mat(w);
    mc_matmul(&m, (const float *)at(x), (int)mc_tensor_rows(x), (int)x->row_stride,
              (float *)at(y), (int)y->row_stride);
    return MC_OK;
}

static mc_status cpu_rmsnorm(void *ctx, const mc_tensor *x, const mc_tensor *w, float eps,
                             mc_tensor *y, mc_err *err)
{
    (void)ctx;
    (void)err;
    const float *wp = w ? (const float *)at(w) : NULL;
    int d = (int)mc_tensor_cols(x);
    for (int64_t r = 0; r < mc_tensor_rows(x); r++)
        mc_rmsnorm(row_f32(y, r), row_f32(x, r), wp, d, eps);
    return MC_OK;
}

static mc_status cpu_rope(void *ctx, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                          const mc_tensor *sn, int interleaved, mc_err *err)
{
    (void)ctx;
    const int32_t *p = (const int32_t *)at(pos);
    int64_t n = x->shape[0], heads = mc_tensor_rows(x) / n, P = mc_tensor_rows(cs);
    int d = (int)mc_tensor_cols(x);
    for (int64_t t = 0; t < n; t++) /* all positions first: nothing is rotated on refusal */
        if (p[t] < 0 || p[t] >= P)
            return mc_err_set(err, MC_ERR_ARG, "rope: pos[%lld] = %d is outside the cos/sin "
                              "tables' %lld positions", (long long)t, (int)p[t], (long long)P);
    for (int64_t t = 0; t < n; t++) {
        const float *c = row_f32(cs, p[t]), *s = row_f32(sn, p[t]);
        for (int64_t h = 0; h < heads; h++)
            mc_rope_rotate(row_f32(x, t * heads + h), d, interleaved, c, s);
    }
    return MC_OK;
}

static mc_status cpu_swiglu(void *ctx, const mc_tensor *g, const mc_tensor *u, mc_tensor *y,
                            mc_err *err)
{
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    int d = (int)mc_tensor_cols(g);
    /* the kernel works in place on g's values: y = g, or a copy of g in y,
     * or (y is u) a row of scratch */
    int y_is_g = at(y) == at(g), y_is_u = !y_is_g && at(y) == at(u);
    float *tmp = NULL;
    if (y_is_u && !(tmp = mc_arena_alloc_n(sa, (size_t)d, sizeof *tmp)))
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory in swiglu");
    for (int64_t r = 0; r < mc_tensor_rows(g); r++) {
        float *yr = row_f32(y, r);
        const float *gr = row_f32(g, r), *ur = row_f32(u, r);
        if (y_is_u) {
            memcpy(tmp, gr, (size_t)d * sizeof *tmp);
            mc_swiglu(tmp, ur, d);
            memcpy(yr, tmp, (size_t)d * sizeof *tmp);
        } else {
            if (!y_is_g)
                memcpy(yr, gr, (size_t)d * sizeof *yr);
            mc_swiglu(yr, ur, d);
        }
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

static mc_status cpu_add(void *ctx, const mc_tensor *a, const mc_tensor *b, mc_tensor *y,
                         mc_err *err)
{
    (void)ctx;
    (void)err;
    int64_t d = mc_tensor_cols(a);
    for (int64_t r = 0; r < mc_tensor_rows(a); r++) {
        const float *ar = row_f32(a, r), *br = row_f32(b, r);
        float *yr = row_f32(y, r);
        for (int64_t i = 0; i < d; i++)
            yr[i] = ar[i] + br[i];
    }
    return MC_OK;
}

static mc_status cpu_softmax(void *ctx, const mc_tensor *x, mc_tensor *y, mc_err *err)
{
    (void)ctx;
    (void)err;
    int d = (int)mc_tensor_cols(x);
    for (int64_t r = 0; r < mc_tensor_rows(x); r++) {
        float *yr = row_f32(y, r);
        if (at(y) != at(x))
            memcpy(yr, row_f32(x, r), (size_t)d * sizeof *yr);
        mc_softmax(yr, d);
    }
    return MC_OK;
}

/* |x| as bits is at least 0x7f800000 exactly for Inf and NaN: adding
 * 0x00800000 sets bit 31 exactly for them, OR-ed over a row (vector code);
 * the column is located only in a row that has one. */
static mc_status cpu_find_nonfinite(void *ctx, const mc_tensor *x, int64_t *row, int64_t *col,
                                    mc_err *err)
{
    (void)ctx;
    (void)err;
    int64_t d = mc_tensor_cols(x);
    for (int64_t r = 0; r < mc_tensor_rows(x); r++) {
        const float *xr = row_f32(x, r);
        uint32_t acc = 0;
        for (int64_t i = 0; i < d; i++) {
            uint32_t u;
            memcpy(&u, &xr[i], sizeof u);
            acc |= (u & 0x7fffffffu) + 0x00800000u;
        }
        if (!(acc & 0x80000000u))
            continue;
        for (int64_t i = 0; i < d; i++)
            if (!isfinite(xr[i])) {
                *row = r;
                *col = i;
                return MC_OK;
            }
    }
    return MC_OK;
}

static mc_status cpu_embed(void *ctx, const mc_tensor *table, const mc_tensor *ids, int64_t id0,
                           mc_tensor *y, mc_err *err)
{
    (void)ctx;
    (void)err;
    mc_mat m = to_mat(table);
    int64_t n = ids->shape[0], H = table->shape[1];
    for (int64_t t = 0; t < n; t++) {
        int64_t id;
        if (ids->dtype == MC_DT_I64)
            memcpy(&id, at(ids) + (size_t)t * 8, sizeof id);
        else {
            int32_t v;
            memcpy(&v, at(ids) + (size_t)t * 4, sizeof v);
            id = v;
        }
        float *yr = row_f32(y, t);
        /* outside this table's slice of the vocabulary: zeros (checked without overflow) */
        if (id >= id0 && id - id0 < m.rows)
            mc_mat_row_f32(&m, (int)(id - id0), yr);
        else
            memset(yr, 0, (size_t)H * sizeof *yr);
    }
    return MC_OK;
}

/* ---- probes and counters ---- */

static const char *cpu_path(void *ctx)
{
    (void)ctx;
    return mc_kpath_name(mc_kernels_path());
}

static const char *cpu_features(void *ctx)
{
    (void)ctx;
    return mc_cpu_features();
}

static mc_status cpu_set_path(void *ctx, const char *name, mc_err *err)
{
    (void)ctx;
    mc_kpath p;
    if (mc_kpath_from_name(name, &p) != 0)
        return mc_err_set(err, MC_ERR_ARG, "set_path: '%s' is not one of scalar|avx2|avx512|amx",
                          name);
    if (mc_kernels_set_path(p) != 0)
        return mc_err_set(err, MC_ERR_ARG, "set_path: this CPU or build lacks the %s path", name);
    return MC_OK;
}

static int cpu_threads(void *ctx)
{
    (void)ctx;
    return mc_kernels_threads();
}

static void cpu_set_threads(void *ctx, int n)
{
    (void)ctx;
    mc_kernels_set_threads(n);
}

static void cpu_count(void *ctx, int on)
{
    (void)ctx;
    mc_kernels_count_bytes(on);
}

static void cpu_counters(void *ctx, mc_backend_counters *out)
{
    (void)ctx;
    out->bytes_read = mc_kernels_bytes_read();
    out->macs = mc_kernels_macs();
}

static double cpu_read_gbps(void *ctx, size_t bytes, int threads, double seconds)
{
    (void)ctx;
    return mc_probe_read_gbps(bytes, threads, seconds);
}

static double cpu_fma_gflops(void *ctx, int threads, double seconds)
{
    (void)ctx;
    return mc_probe_fma_gflops(threads, seconds);
}

static double cpu_int8_gops(void *ctx, int threads, double seconds)
{
    (void)ctx;
    return mc_probe_int8_gops(threads, seconds);
}

static double cpu_bf16_gflops(void *ctx, int threads, double seconds)
{
    (void)ctx;
    return mc_probe_bf16_gflops(threads, seconds);
}

static void cpu_free(void *ctx)
{
    mc_cpu_ctx *c = ctx;
    if (!c)
        return;
    mc_arena_free(c->scratch);
    free(c);
}

/* (a, ia) comes before (b, ib) in mc_op_topk's order: larger first, ties
 * to the lower column, NaN after every number */
static inline int topk_before(float a, int64_t ia, float b, int64_t ib)
{
    if (isnan(a))
        return isnan(b) && ia < ib;
    return isnan(b) || a > b || (a == b && ia < ib);
}

static mc_status cpu_topk(void *ctx, const mc_tensor *x, int k, int64_t id0, mc_tensor *ids,
                          mc_tensor *vals, mc_tensor *lse, mc_err *err)
{
    (void)ctx;
    (void)err;
    int64_t V = mc_tensor_cols(x);
    for (int64_t r = 0; r < mc_tensor_rows(x); r++) {
        const float *xr = row_f32(x, r);
        float bv[MC_TOPK_MAX];
        int64_t bi[MC_TOPK_MAX];
        int n = 0;
        for (int64_t i = 0; i < V; i++) { /* columns ascending: a tie never moves up */
            float v = xr[i];
            if (n == k && !topk_before(v, i, bv[k - 1], bi[k - 1]))
                continue;
            int j = n < k ? n++ : k - 1;
            for (; j > 0 && topk_before(v, i, bv[j - 1], bi[j - 1]); j--) {
                bv[j] = bv[j - 1];
                bi[j] = bi[j - 1];
            }
            bv[j] = v;
            bi[j] = i;
        }
        int32_t *ir = row_i32(ids, r);
        float *vr = row_f32(vals, r);
        for (int j = 0; j < k; j++) {
            ir[j] = (int32_t)(bi[j] + id0);
            vr[j] = bv[j];
        }
        if (!lse)
            continue;
        double m = bv[0], sum = 0; /* the max, unless the row is all NaN (then NaN) */
        for (int64_t i = 0; i < V; i++)
            sum += exp((double)xr[i] - m);
        double l = m + log(sum);
        float hi = (float)l;
        float *lr = row_f32(lse, r);
        lr[0] = hi;
        lr[1] = (float)(l - (double)hi);
    }
    return MC_OK;
}

static mc_status cpu_note_nonfinite(void *ctx, const mc_tensor *x, int64_t tag, mc_err *err)
{
    mc_cpu_ctx *c = ctx;
    c->nf_noted = 1;
    /* the first note is kept, and none after a deferred refusal (its op
     * wrote nothing: what follows may read stale rows) */
    if (c->nf.tag >= 0 || c->pending_st != MC_OK)
        return MC_OK;
    int64_t r = -1, i = -1;
    mc_status st = cpu_find_nonfinite(ctx, x, &r, &i, err);
    if (st == MC_OK && r >= 0)
        c->nf = (mc_nonfinite_note){.tag = tag, .row = r, .col = i, .value = row_f32(x, r)[i]};
    return st;
}

static mc_status cpu_take_nonfinite(void *ctx, mc_nonfinite_note *note, mc_err *err)
{
    (void)err;
    mc_cpu_ctx *c = ctx;
    *note = c->nf;
    c->nf.tag = -1;
    return MC_OK;
}

static const mc_backend_i cpu_iface = {
    .name = "cpu",
    .kind = MC_DEVICE_CPU,
    .free = cpu_free,
    .buf_alloc = cpu_alloc,
    .buf_free = cpu_buf_free,
    .wrap_host = cpu_wrap,
    .host_memory = 1,
    .upload = cpu_upload,
    .download = cpu_download,
    .memset = cpu_memset,
    .synchronize = cpu_sync,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .softmax = cpu_softmax,
    .find_nonfinite = cpu_find_nonfinite,
    .note_nonfinite = cpu_note_nonfinite,
    .take_nonfinite = cpu_take_nonfinite,
    .topk = cpu_topk,
    .embed = cpu_embed,
    .router_topk = mc_cpu_router_topk,
    .moe_permute = mc_cpu_moe_permute,
    .moe_unpermute_weighted = mc_cpu_moe_unpermute,
    .grouped_experts = mc_cpu_grouped_experts,
    .layernorm = mc_cpu_layernorm,
    .kv_bf16 = 1,
    .kv_write = mc_cpu_kv_write,
    .attention = mc_cpu_attention,
    .mla_decode = mc_cpu_mla_decode,
    .indexer_topk = mc_cpu_indexer_topk,
    .path = cpu_path,
    .features = cpu_features,
    .set_path = cpu_set_path,
    .threads = cpu_threads,
    .set_threads = cpu_set_threads,
    .count = cpu_count,
    .counters = cpu_counters,
    .probe_read_gbps = cpu_read_gbps,
    .probe_fma_gflops = cpu_fma_gflops,
    .probe_int8_gops = cpu_int8_gops,
    .probe_bf16_gflops = cpu_bf16_gflops,
    .v4_hc_pre = mc_cpu_v4_hc_pre,
    .v4_hc_post = mc_cpu_v4_hc_post,
    .v4_compress = mc_cpu_v4_compress,
    .v4_index_topk = mc_cpu_v4_index_topk,
    .v4_attention = mc_cpu_v4_attention,
    .v4_hash_route = mc_cpu_v4_hash_route,
};

static mc_status cpu_init(const mc_backend_i *iface, mc_backend **out, mc_err *err)
{
    *out = NULL;
    mc_cpu_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for the CPU backend");
    c->nf.tag = -1;
    mc_status st = mc_arena_init(0, 0, &c->scratch, err);
    if (st != MC_OK) {
        free(c);
        return st;
    }
    *out = mc_backend_new(iface, c);
    if (!*out) {
        cpu_free(c);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for the CPU backend");
    }
    return MC_OK;
}

mc_status mc_backend_cpu_init(mc_backend **out, mc_err *err)
{
    return cpu_init(&cpu_iface, out, err);
}

/* ---- the CPU acting as a device: deferred content checks ---- */

/* An op's answer st, its message in *local when the checks are deferred
 * (else already in err): a refusal (MC_ERR_ARG: the front end has checked
 * the arguments, so it is the content check's) kept for the next wait, the
 * op answering MC_OK; another failure handed to err. */
static mc_status dev_defer(void *ctx, mc_status st, mc_err *err, const mc_err *local)
{
    mc_cpu_ctx *c = ctx;
    if (c->sync_checks || st == MC_OK)
        return st;
    if (st != MC_ERR_ARG)
        return mc_err_set(err, st, "%s", local->msg);
    if (c->pending_st == MC_OK) {
        c->pending_st = st;
        c->pending = *local;
    }
    return MC_OK;
}

/* Runs `call`, whose error argument is E_: err with the checks at the op, a
 * local message otherwise (dev_defer). */
#define DEV_OP(call)                                                                               \
    do {                                                                                           \
        mc_err l_;                                                                                 \
        mc_err_clear(&l_);                                                                         \
        mc_err *E_ = ((mc_cpu_ctx *)ctx)->sync_checks ? err : &l_;                                 \
        mc_status st_ = (call);                                                                    \
        return dev_defer(ctx, st_, err, &l_);                                                      \
    } while (0)

/* The refusal kept since the last wait, once (err may be NULL). */
static mc_status dev_wait(void *ctx, mc_err *err)
{
    mc_cpu_ctx *c = ctx;
    mc_status st = c->pending_st;
    c->nf_noted = 0;
    if (st == MC_OK)
        return MC_OK;
    c->pending_st = MC_OK;
    return mc_err_set(err, st, "%s", c->pending.msg);
}

static mc_status dev_upload(void *ctx, void *mem, size_t off, const void *src, size_t n,
                            mc_err *err)
{
    mc_status st = cpu_upload(ctx, mem, off, src, n, err);
    return st == MC_OK ? dev_wait(ctx, err) : st;
}

static mc_status dev_download(void *ctx, const void *mem, size_t off, void *dst, size_t n,
                              mc_err *err)
{
    mc_status st = cpu_download(ctx, mem, off, dst, n, err);
    return st == MC_OK ? dev_wait(ctx, err) : st;
}

static mc_status dev_sync(void *ctx, mc_err *err) { return dev_wait(ctx, err); }

static int dev_sync_checks(void *ctx) { return ((mc_cpu_ctx *)ctx)->sync_checks; }

/* The note, after a wait when a note call came since the last one (as the
 * CUDA backend's take, whose note is on the device): a refusal kept since
 * the last wait comes back with it. */
static mc_status dev_take_nonfinite(void *ctx, mc_nonfinite_note *note, mc_err *err)
{
    mc_cpu_ctx *c = ctx;
    mc_status st = c->nf_noted ? dev_wait(ctx, err) : MC_OK;
    cpu_take_nonfinite(ctx, note, NULL);
    return st;
}

static int dev_set_sync_checks(void *ctx, int on)
{
    mc_cpu_ctx *c = ctx;
    int was = c->sync_checks;
    c->sync_checks = on != 0;
    return was;
}

static mc_status dev_rope(void *ctx, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                          const mc_tensor *sn, int interleaved, mc_err *err)
{
    DEV_OP(cpu_rope(ctx, x, pos, cs, sn, interleaved, E_));
}

static mc_status dev_kv_write(void *ctx, const mc_kv_index *ix, const mc_tensor *src,
                              mc_tensor *pages, mc_err *err)
{
    DEV_OP(mc_cpu_kv_write(ctx, ix, src, pages, E_));
}

static mc_status dev_attention(void *ctx, const mc_tensor *q, const mc_tensor *k_pages,
                               const mc_tensor *v_pages, const mc_kv_index *ix,
                               const mc_attn_opts *opt, mc_tensor *y, mc_err *err)
{
    DEV_OP(mc_cpu_attention(ctx, q, k_pages, v_pages, ix, opt, y, E_));
}

static mc_status dev_mla_decode(void *ctx, const mc_tensor *q_lat, const mc_tensor *q_pe,
                                const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                                const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                                mc_err *err)
{
    DEV_OP(mc_cpu_mla_decode(ctx, q_lat, q_pe, lat_pages, pe_pages, ix, opt, y, E_));
}

static mc_status dev_permute(void *ctx, const mc_tensor *x, const mc_tensor *ids, mc_tensor *xp,
                             mc_tensor *slot, mc_tensor *offsets, mc_err *err)
{
    DEV_OP(mc_cpu_moe_permute(ctx, x, ids, xp, slot, offsets, E_));
}

static mc_status dev_unpermute(void *ctx, const mc_tensor *yp, const mc_tensor *slot,
                               const mc_tensor *weights, mc_tensor *y, mc_err *err)
{
    DEV_OP(mc_cpu_moe_unpermute(ctx, yp, slot, weights, y, E_));
}

static mc_status dev_experts(void *ctx, const mc_tensor *x, const mc_tensor *offsets,
                             int n_experts, const mc_tensor *gate, const mc_tensor *up,
                             const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                             mc_err *err)
{
    DEV_OP(mc_cpu_grouped_experts(ctx, x, offsets, n_experts, gate, up, down, opts, y, E_));
}

mc_status mc_backend_cpu_device_init(mc_backend **out, mc_err *err)
{
    mc_backend_i dev = cpu_iface; /* mc_backend_new copies it */
    dev.name = "cpu-device";
    /* content checks deferred to the next wait, as the CUDA backend's
     * default (indexer_topk's are not deferred there either) */
    dev.upload = dev_upload;
    dev.download = dev_download;
    dev.synchronize = dev_sync;
    dev.set_sync_checks = dev_set_sync_checks;
    dev.sync_checks = dev_sync_checks;
    dev.take_nonfinite = dev_take_nonfinite;
    dev.rope = dev_rope;
    dev.kv_write = dev_kv_write;
    dev.attention = dev_attention;
    dev.mla_decode = dev_mla_decode;
    dev.moe_permute = dev_permute;
    dev.moe_unpermute_weighted = dev_unpermute;
    dev.grouped_experts = dev_experts;
    dev.host_memory = 0;
    dev.wrap_host = NULL;
    /* the DeepSeek-V4 ops through the front end's host round trip, as on
     * the CUDA backend (backend_ops_v4.c) */
    dev.v4_hc_pre = NULL;
    dev.v4_hc_post = NULL;
    dev.v4_compress = NULL;
    dev.v4_index_topk = NULL;
    dev.v4_attention = NULL;
    dev.v4_hash_route = NULL;
    return cpu_init(&dev, out, err);
}
