/* cuda/backend_cuda_moe.c - the CUDA backend's MoE block entries: router
 * top-k, moe_permute, moe_unpermute_weighted, grouped_experts (kernels in
 * cuda/moe.cu, products through cuda/matmul.cu and cuBLAS).
 *
 * The front end (backend_ops.c) has checked dtypes, shapes, buffers and
 * aliasing. Expert ids, slots and offsets live on the device: permute and
 * unpermute check them in a kernel that gates the writes, and so does
 * grouped_experts' grouped launch for the offsets; the answer is noted for
 * the next wait (deferred checks, the default) or read back at once
 * (sync_checks: one stream synchronization per call). grouped_experts runs all
 * experts in two launches (cuda/experts.cu) when their weights are element
 * types and they average at most 8 rows (BF16 / F32; FP8: 32, or any count
 * with MC_CUDA_FP8=gemv; F16: any count), else downloads the offsets and
 * loops over the experts on the host, three products and a SwiGLU per
 * expert with rows (cuBLAS for BF16 and FP8 prefill; Q8_0 / Q4_K / Q6_K;
 * MC_CUDA_EXPERTS=loop forces it). Refusals are worded as the
 * CPU op's (kernels/cpu/backend_cpu_moe.c). */
#include "backend.h"
#include "cuda/backend_cuda_internal.h"

#include <stdlib.h>
#include <string.h>

#define MF32(t) ((float *)mc_cuda_at(t))
#define MI32(t) ((int32_t *)mc_cuda_at(t))

_Static_assert(MC_ROUTE_SOFTMAX == 0 && MC_ROUTE_SIGMOID == 1 && MC_ROUTE_SQRTSOFTPLUS == 2 &&
                   MC_ROUTE_LOGIT_SIGMOID == 3,
               "cuda/moe.cu's router score codes follow mc_route_score");

static mc_status moe_launched(cudaError_t e, const char *op, mc_err *err)
{
    return mc_cuda_check(e, op, err);
}

/* Reads c->d_flag back (waits for the stream) into *bad. */
static mc_status read_flag(mc_cuda_ctx *c, const char *op, int *bad, mc_err *err)
{
    mc_status st = mc_cuda_read_back(c, op, c->h_flag, c->d_flag, sizeof *c->h_flag, err);
    *bad = st == MC_OK ? *c->h_flag : -1;
    return st;
}

/* Element (t, j) of an I32 (n, k) tensor on the device. */
static mc_status i32_elem(const mc_tensor *m, int64_t t, int64_t j, int32_t *v, const char *op,
                          mc_err *err)
{
    const int32_t *p = (const int32_t *)mc_cuda_at(m) + (size_t)t * (size_t)m->row_stride +
                       (size_t)j;
    return mc_cuda_check(cudaMemcpy(v, p, sizeof *v, cudaMemcpyDeviceToHost), op, err);
}

mc_status mc_cuda_router_topk(void *ctx, const mc_tensor *logits, const mc_tensor *bias,
                              const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                              mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "router_topk";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    int64_t E = mc_tensor_cols(logits), G = opts->n_group > 1 ? opts->n_group : 1;
    if ((2 * E + G) * (int64_t)sizeof(float) + E + G > 40 * 1024) /* the kernel's shared memory */
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cuda backend: router_topk: %lld experts are "
                          "more than this backend's router kernel holds", (long long)E);
    return moe_launched(mck_router_topk(c->stream, MF32(logits), logits->row_stride,
                                        mc_tensor_rows(logits), (int)mc_tensor_cols(logits),
                                        bias ? MF32(bias) : NULL, (int)opts->score, opts->k,
                                        opts->n_group, opts->topk_group, opts->renorm,
                                        opts->norm_eps, opts->scale, MI32(ids), ids->row_stride,
                                        MF32(weights), weights->row_stride),
                        op, err);
}

mc_status mc_cuda_moe_permute(void *ctx, const mc_tensor *x, const mc_tensor *ids, mc_tensor *xp,
                              mc_tensor *slot, mc_tensor *offsets, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "moe_permute";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    int64_t n = mc_tensor_rows(x), k = mc_tensor_cols(ids), E = mc_tensor_nelems(offsets) - 1;
    st = moe_launched(mck_moe_route(c->stream, MI32(ids), ids->row_stride, n, (int)k, (int)E,
                                    MI32(offsets), MI32(slot), slot->row_stride, c->d_flag,
                                    mc_cuda_defer_of(c, MC_CUDA_CHK_PERMUTE, k)),
                      op, err);
    if (st == MC_OK)
        st = moe_launched(mck_moe_scatter(c->stream, MF32(x), x->row_stride, n, (int)k,
                                          (int)mc_tensor_cols(x), MI32(slot), slot->row_stride,
                                          MF32(xp), xp->row_stride, c->d_flag),
                          op, err);
    if (st != MC_OK || !c->sync_checks) /* deferred: the check kernel left its note */
        return st;
    int bad = -1;
    if (st == MC_OK)
        st = read_flag(c, op, &bad, err);
    if (st != MC_OK || bad < 0)
        return st;
    int32_t e = 0;
    st = i32_elem(ids, bad / k, bad % k, &e, op, err);
    if (st != MC_OK)
        return st;
    return mc_err_set(err, MC_ERR_ARG, "moe_permute: ids[%lld, %lld] = %d is outside the %lld "
                      "experts of offsets", (long long)(bad / k), (long long)(bad % k), (int)e,
                      (long long)E);
}

mc_status mc_cuda_moe_unpermute(void *ctx, const mc_tensor *yp, const mc_tensor *slot,
                                const mc_tensor *weights, mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "moe_unpermute";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    int64_t n = mc_tensor_rows(slot), k = mc_tensor_cols(slot), m = mc_tensor_rows(yp);
    st = moe_launched(mck_slot_check(c->stream, MI32(slot), slot->row_stride, n, (int)k, m,
                                     c->d_flag, mc_cuda_defer_of(c, MC_CUDA_CHK_UNPERMUTE, k)),
                      op, err);
    if (st == MC_OK)
        st = moe_launched(mck_moe_gather(c->stream, MF32(yp), yp->row_stride, MI32(slot),
                                         slot->row_stride, weights ? MF32(weights) : NULL,
                                         weights ? weights->row_stride : 0, n, (int)k,
                                         (int)mc_tensor_cols(yp), MF32(y), y->row_stride,
                                         c->d_flag),
                          op, err);
    if (st != MC_OK || !c->sync_checks) /* deferred: the check kernel left its note */
        return st;
    int bad = -1;
    if (st == MC_OK)
        st = read_flag(c, op, &bad, err);
    if (st != MC_OK || bad < 0)
        return st;
    int32_t r = 0;
    st = i32_elem(slot, bad / k, bad % k, &r, op, err);
    if (st != MC_OK)
        return st;
    return mc_err_set(err, MC_ERR_ARG, "moe_unpermute: slot[%lld, %lld] = %d is outside yp's "
                      "%lld rows", (long long)(bad / k), (long long)(bad % k), (int)r,
                      (long long)m);
}

/* offsets [n_experts + 1] to the host, checked as the CPU op checks them.
 * *off is the caller's to free. Sets *max_rows, *max_inter. */
static mc_status offsets_get(const mc_tensor *offsets, int n_experts, int64_t m,
                             const mc_tensor *gate, int32_t **off, int64_t *max_rows,
                             int64_t *max_inter, mc_err *err)
{
    int32_t *o = malloc((size_t)mc_tensor_nelems(offsets) * sizeof *o);
    if (!o)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory in grouped_experts");
    mc_status st = mc_tensor_download(offsets, o, err);
    if (st == MC_OK && (o[0] != 0 || o[n_experts] != m))
        st = mc_err_set(err, MC_ERR_ARG, "grouped_experts: offsets[0] = %d and offsets[%d] = "
                        "%d, want 0 and the %lld rows of x", (int)o[0], n_experts,
                        (int)o[n_experts], (long long)m);
    *max_rows = *max_inter = 0;
    for (int e = 0; e < n_experts && st == MC_OK; e++) {
        if (o[e + 1] < o[e])
            st = mc_err_set(err, MC_ERR_ARG, "grouped_experts: offsets[%d] = %d is less than "
                            "offsets[%d] = %d", e + 1, (int)o[e + 1], e, (int)o[e]);
        else if (o[e + 1] - o[e] > *max_rows)
            *max_rows = o[e + 1] - o[e];
        if (st == MC_OK && o[e + 1] > o[e] && gate[e].shape[0] > *max_inter)
            *max_inter = gate[e].shape[0];
    }
    if (st != MC_OK) {
        free(o);
        return st;
    }
    *off = o;
    return MC_OK;
}

/* ---- grouped_experts in two launches (cuda/experts.cu) ---- */

static int mck_same(const mck_mat *a, const mck_mat *b)
{
    return a->dtype == b->dtype && a->rows == b->rows && a->cols == b->cols &&
           a->row_stride == b->row_stride && a->row_bytes == b->row_bytes &&
           a->transposed == b->transposed && a->data == b->data && a->scale == b->scale &&
           a->block_rows == b->block_rows && a->block_cols == b->block_cols &&
           a->scale_cols == b->scale_cols;
}

#define EXMATS_MAX 1024 /* descriptor sets kept (a model's layers); then replaced in turn */

/* The experts' descriptors on the device: the set kept for this gate array
 * when every descriptor is unchanged, else uploaded (queued on the stream,
 * so no kernel still reading the old contents is overtaken). */
static mc_status exmats_get(mc_cuda_ctx *c, const mc_tensor *gate, const mc_tensor *up,
                            const mc_tensor *down, int n, const mck_mat **dev, const char *op,
                            mc_err *err)
{
    size_t bytes = 3 * (size_t)n * sizeof(mck_mat);
    mck_mat *tmp = malloc(bytes);
    if (!tmp)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory in grouped_experts");
    for (int e = 0; e < n; e++) {
        tmp[e] = mc_cuda_mck(&gate[e]);
        tmp[n + e] = mc_cuda_mck(&up[e]);
        tmp[2 * n + e] = mc_cuda_mck(&down[e]);
    }
    mc_cuda_exmats *x = NULL;
    for (int i = 0; i < c->n_exm && !x; i++)
        if (c->exm[i].key == (const void *)gate && c->exm[i].n == n)
            x = &c->exm[i];
    if (x) {
        int same = 1;
        for (int i = 0; i < 3 * n && same; i++)
            same = mck_same(&x->host[i], &tmp[i]);
        if (same) {
            free(tmp);
            *dev = x->dev;
            return MC_OK;
        }
        mc_status st = mc_cuda_no_capture(c, "new expert descriptors", err);
        if (st != MC_OK) {
            free(tmp);
            return st;
        }
        c->gen++; /* graphs hold the old descriptors */
        free(x->host);
        x->host = tmp;
    } else {
        mc_status sc = mc_cuda_no_capture(c, "new expert descriptors", err);
        if (sc != MC_OK) {
            free(tmp);
            return sc;
        }
        void *d = NULL;
        mc_status st = mc_cuda_check(cudaMalloc(&d, bytes), op, err);
        if (st != MC_OK) {
            free(tmp);
            return st;
        }
        if (c->n_exm == c->cap_exm && c->cap_exm < EXMATS_MAX) {
            int nc = c->cap_exm ? 2 * c->cap_exm : 64;
            mc_cuda_exmats *ne = realloc(c->exm, (size_t)nc * sizeof *ne);
            if (!ne) {
                cudaFree(d);
                free(tmp);
                return mc_err_set(err, MC_ERR_NOMEM, "out of memory in grouped_experts");
            }
            c->exm = ne;
            c->cap_exm = nc;
        }
        if (c->n_exm < c->cap_exm) {
            x = &c->exm[c->n_exm++];
        } else { /* full: replace one in turn (cudaFree waits for the device) */
            x = &c->exm[c->next_exm++ % (unsigned)c->n_exm];
            cudaFree(x->dev);
            free(x->host);
            c->gen++; /* graphs may hold the set replaced */
        }
        *x = (mc_cuda_exmats){.key = gate, .n = n, .host = tmp, .dev = d};
    }
    *dev = x->dev;
    mc_status st = mc_cuda_check(cudaMemcpyAsync(x->dev, x->host, bytes, cudaMemcpyHostToDevice,
                                                 c->stream), op, err);
    if (st != MC_OK)
        x->n = -1; /* never matched again: the device copy is not these descriptors */
    return st;
}

/* Whether every gate / up (I x H) and down (H x I) is 2-D, not transposed,
 * of type dg (gate, up) or dd (down), with one I (rows of gate[0]) and H
 * (cols of x) within int; `aligned`: also starting on 16 bytes with rows on
 * 16 bytes (the element types' vector loads). *I: that width. */
static int experts_uniform(const mc_tensor *x, int n_experts, const mc_tensor *gate,
                           const mc_tensor *up, const mc_tensor *down, mc_dtype dg, mc_dtype dd,
                           int aligned, int *I)
{
    int64_t H = mc_tensor_cols(x), I0 = gate[0].shape[0];
    for (int e = 0; e < n_experts; e++) {
        const mc_tensor *w[3] = {&gate[e], &up[e], &down[e]};
        for (int k = 0; k < 3; k++) {
            const mc_tensor *t = w[k];
            int64_t r = k < 2 ? I0 : H, cl = k < 2 ? H : I0;
            if (t->dtype != (k < 2 ? dg : dd) || t->ndim != 2 || t->transposed ||
                t->shape[0] != r || t->shape[1] != cl)
                return 0;
            if (aligned && (((uintptr_t)mc_cuda_at(t) % 16) != 0 ||
                            ((size_t)t->row_stride * mc_dtype_size(t->dtype)) % 16 != 0))
                return 0;
        }
    }
    if (I0 > 0x7fffffff || H > 0x7fffffff)
        return 0;
    *I = (int)I0;
    return 1;
}

/* Whether the grouped launch takes this call: every gate / up / down of one
 * element type (F32, F16, BF16, FP8), row-major with rows on 16 bytes, one
 * intermediate width; BF16 / F32 only while the experts average at most 8
 * rows, FP8 32 (more: cuBLAS per expert, the loop below). *I: that width. */
static int grouped_ok(const mc_cuda_ctx *c, const mc_tensor *x, int64_t m, int n_experts,
                      const mc_tensor *gate, const mc_tensor *up, const mc_tensor *down, int *I)
{
    if (c->experts_loop || n_experts < 1 || n_experts > 65535)
        return 0;
    mc_dtype dt = gate[0].dtype;
    if (dt != MC_DT_F32 && dt != MC_DT_F16 && dt != MC_DT_BF16 && dt != MC_DT_F8_E4M3)
        return 0;
    if ((dt == MC_DT_BF16 || dt == MC_DT_F32) && m > 8 * (int64_t)n_experts)
        return 0;
    if (dt == MC_DT_F8_E4M3 && !c->fp8_gemv && m > MC_CUDA_FP8_WIDEN_TOKENS * (int64_t)n_experts)
        return 0;
    return experts_uniform(x, n_experts, gate, up, down, dt, dt, 1, I);
}

/* Whether the grouped launch for block formats takes this call: gate and
 * up all of one of Q8_0 / Q4_K / Q6_K, down all of one (Q4_K_M files keep
 * some downs in Q6_K), 2-D, not transposed, one intermediate width; any
 * number of rows (the per-expert loop's products are the same GEMV kernels:
 * each weight read once per 8 of an expert's rows either way). *I: that
 * width; *dt_gu, *dt_down: the formats. */
static int grouped_q_ok(const mc_cuda_ctx *c, const mc_tensor *x, int n_experts,
                        const mc_tensor *gate, const mc_tensor *up, const mc_tensor *down, int *I,
                        mc_dtype *dt_gu, mc_dtype *dt_down)
{
    if (c->experts_loop || n_experts < 1 || n_experts > 65535)
        return 0;
    mc_dtype dg = gate[0].dtype, dd = down[0].dtype;
    if (!mc_dtype_is_block(dg) || !mc_dtype_is_block(dd) || dg == MC_DT_Q5_K || dd == MC_DT_Q5_K ||
        !experts_uniform(x, n_experts, gate, up, down, dg, dd, 0, I) || *I < 1)
        return 0;
    *dt_gu = dg;
    *dt_down = dd;
    return 1;
}

/* The grouped launches' gate: the offsets checked on the device, the
 * answer noted for the next wait (deferred checks), or read back first (one
 * stream synchronization: a refusal is worded by offsets_get, as the
 * CPU's); and the experts' descriptors on the device (*dm). */
static mc_status grouped_gate(mc_cuda_ctx *c, const mc_tensor *offsets, int n_experts, int64_t m,
                              const mc_tensor *gate, const mc_tensor *up, const mc_tensor *down,
                              const mck_mat **dm, const char *op, mc_err *err)
{
    mc_status st = exmats_get(c, gate, up, down, n_experts, dm, op, err);
    if (st == MC_OK)
        st = moe_launched(mck_offsets_check(c->stream, MI32(offsets), n_experts, m, c->d_flag,
                                            mc_cuda_defer_of(c, MC_CUDA_CHK_OFFSETS, 0)),
                          op, err);
    int bad = -1;
    if (st == MC_OK && c->sync_checks)
        st = read_flag(c, op, &bad, err);
    if (st != MC_OK)
        return st;
    if (bad >= 0) { /* the host check finds it and says so as the CPU does */
        int32_t *off = NULL;
        int64_t a, b;
        st = offsets_get(offsets, n_experts, m, gate, &off, &a, &b, err);
        if (st == MC_OK) {
            free(off);
            st = mc_err_set(err, MC_ERR_INTERNAL, "cuda backend: grouped_experts: the device "
                            "found offsets[%d] wrong, the host check did not", bad);
        }
        return st;
    }
    return MC_OK;
}

/* The two launches for element types. */
static mc_status grouped_launch(mc_cuda_ctx *c, const mc_tensor *x, const mc_tensor *offsets,
                                int n_experts, int I, const mc_tensor *gate, const mc_tensor *up,
                                const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                                const char *op, mc_err *err)
{
    int64_t m = mc_tensor_rows(x);
    const mck_mat *dm = NULL;
    mc_status st = grouped_gate(c, offsets, n_experts, m, gate, up, down, &dm, op, err);
    if (st != MC_OK)
        return st;
    void *h = NULL;
    size_t need = (size_t)(m > 0 ? m : 1) * (size_t)I * sizeof(float);
    if ((st = mc_cuda_scratch2(c, need, &h, op, err)) != MC_OK)
        return st;
    const mc_tensor *rw = opts ? opts->row_weight : NULL;
    mck_experts p = {.dtype = (int)gate[0].dtype,
                     .gate = dm,
                     .up = dm + n_experts,
                     .down = dm + 2 * n_experts,
                     .off = MI32(offsets),
                     .n_experts = n_experts,
                     .I = I,
                     .H = (int)mc_tensor_cols(x),
                     .x = MF32(x),
                     .ldx = x->row_stride,
                     .rw = rw ? MF32(rw) : NULL,
                     .rw_ld = rw ? rw->row_stride : 1,
                     .rw_cols = rw ? mc_tensor_cols(rw) : 1,
                     .w_in = rw && opts->weight_input,
                     .h = h,
                     .ldh = I,
                     .y = MF32(y),
                     .ldy = y->row_stride,
                     .lim = opts ? opts->swiglu_limit : 0.0f,
                     .count = c->counting ? c->d_count : NULL,
                     .bad = c->d_flag};
    return moe_launched(mck_experts_run(c->stream, &p), op, err);
}

/* The launches for block formats (mck_experts_run_q): the quantized
 * activations (and the scaled input) in the first scratch, h in the
 * second. */
static mc_status grouped_launch_q(mc_cuda_ctx *c, const mc_tensor *x, const mc_tensor *offsets,
                                  int n_experts, int I, mc_dtype dt_gu, mc_dtype dt_down,
                                  const mc_tensor *gate, const mc_tensor *up,
                                  const mc_tensor *down, const mc_experts_opts *opts,
                                  mc_tensor *y, const char *op, mc_err *err)
{
    int64_t m = mc_tensor_rows(x);
    const mck_mat *dm = NULL;
    mc_status st = grouped_gate(c, offsets, n_experts, m, gate, up, down, &dm, op, err);
    if (st != MC_OK || m == 0)
        return st;
    const mc_tensor *rw = opts ? opts->row_weight : NULL;
    int w_in = rw && opts->weight_input, H = (int)mc_tensor_cols(x);
    /* xs (m, H) F32 when w_in | x quantized for gate / up | h quantized for down */
    size_t b_xs = w_in ? ((size_t)m * (size_t)H * 4 + 255) & ~(size_t)255 : 0;
    size_t b_qx = mc_cuda_qact_layout(dt_gu, m, H, NULL, NULL);
    size_t b_qh = mc_cuda_qact_layout(dt_down, m, I, NULL, NULL);
    void *s = NULL, *h = NULL;
    st = mc_cuda_scratch(c, b_xs + b_qx + b_qh, &s, op, err);
    if (st == MC_OK)
        st = mc_cuda_scratch2(c, (size_t)m * (size_t)I * sizeof(float), &h, op, err);
    if (st != MC_OK)
        return st;
    unsigned char *p0 = s;
    mc_cuda_qact ax, ah;
    mc_cuda_qact_layout(dt_gu, m, H, p0 + b_xs, &ax);
    mc_cuda_qact_layout(dt_down, m, I, p0 + b_xs + b_qx, &ah);
    mck_experts_q p = {.dt_gu = (int)dt_gu,
                       .dt_down = (int)dt_down,
                       .gate = dm,
                       .up = dm + n_experts,
                       .down = dm + 2 * n_experts,
                       .off = MI32(offsets),
                       .n_experts = n_experts,
                       .I = I,
                       .H = H,
                       .m = m,
                       .x = MF32(x),
                       .ldx = x->row_stride,
                       .rw = rw ? MF32(rw) : NULL,
                       .rw_ld = rw ? rw->row_stride : 1,
                       .rw_cols = rw ? mc_tensor_cols(rw) : 1,
                       .w_in = w_in,
                       .xs = w_in ? (float *)p0 : NULL,
                       .qx = ax.q,
                       .dx = ax.d,
                       .bx = ax.bsum,
                       .kpx = ax.kp,
                       .h = h,
                       .ldh = I,
                       .qh = ah.q,
                       .dh = ah.d,
                       .bh = ah.bsum,
                       .kph = ah.kp,
                       .y = MF32(y),
                       .ldy = y->row_stride,
                       .lim = opts ? opts->swiglu_limit : 0.0f,
                       .count = c->counting ? c->d_count : NULL,
                       .bad = c->d_flag};
    return moe_launched(mck_experts_run_q(c->stream, &p), op, err);
}

mc_status mc_cuda_grouped_experts(void *ctx, const mc_tensor *x, const mc_tensor *offsets,
                                  int n_experts, const mc_tensor *gate, const mc_tensor *up,
                                  const mc_tensor *down, const mc_experts_opts *opts,
                                  mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "grouped_experts";
    mc_status st = mc_cuda_use(c, op, err);
    if (st != MC_OK)
        return st;
    int gI = 0;
    mc_dtype dg, dd;
    if (grouped_ok(c, x, mc_tensor_rows(x), n_experts, gate, up, down, &gI))
        return grouped_launch(c, x, offsets, n_experts, gI, gate, up, down, opts, y, op, err);
    if (grouped_q_ok(c, x, n_experts, gate, up, down, &gI, &dg, &dd))
        return grouped_launch_q(c, x, offsets, n_experts, gI, dg, dd, gate, up, down, opts, y, op,
                                err);
    /* the per-expert loop: offsets to the host (one synchronization), three
     * products and a SwiGLU per expert with rows */
    int64_t m = mc_tensor_rows(x), max_rows = 0, max_inter = 0;
    int H = (int)mc_tensor_cols(x);
    int32_t *off = NULL;
    st = offsets_get(offsets, n_experts, m, gate, &off, &max_rows, &max_inter, err);
    if (st != MC_OK)
        return st;
    const mc_tensor *rw = opts ? opts->row_weight : NULL;
    int w_in = rw && opts->weight_input;
    float lim = opts ? opts->swiglu_limit : 0.0f;
    const float *rwp = rw ? MF32(rw) : NULL;
    long long rw_ld = rw ? rw->row_stride : 1, rw_cols = rw ? mc_tensor_cols(rw) : 1;
    /* scratch2: g, u (rows, I) and, when the input is weighted, xin (rows, H) */
    size_t need = (size_t)max_rows * (size_t)(2 * max_inter + (w_in ? H : 0)) * sizeof(float);
    void *s = NULL;
    st = mc_cuda_scratch2(c, need ? need : 4, &s, op, err);
    for (int e = 0; e < n_experts && st == MC_OK; e++) {
        int r0 = off[e], ne = off[e + 1] - r0;
        if (ne == 0)
            continue; /* an expert with no rows costs nothing */
        int I = (int)gate[e].shape[0];
        if (c->counting) {
            c->counters.bytes_read += mc_cuda_weight_bytes(&gate[e], gate[e].shape[0]) +
                                      mc_cuda_weight_bytes(&up[e], up[e].shape[0]) +
                                      mc_cuda_weight_bytes(&down[e], down[e].shape[0]);
            c->counters.macs += (uint64_t)ne * ((uint64_t)gate[e].shape[0] * gate[e].shape[1] +
                                                (uint64_t)up[e].shape[0] * up[e].shape[1] +
                                                (uint64_t)down[e].shape[0] * down[e].shape[1]);
        }
        float *g = s, *u = g + (size_t)ne * I, *xin = u + (size_t)ne * I;
        const float *xs = MF32(x) + (size_t)r0 * (size_t)x->row_stride;
        long long ldx = x->row_stride;
        if (w_in) { /* Llama 4: the router weight scales the expert's input */
            st = moe_launched(mck_row_scale(c->stream, xs, ldx, rwp, rw_ld, rw_cols, r0, xin, H,
                                            ne, H), op, err);
            xs = xin;
            ldx = H;
        }
        if (st == MC_OK)
            st = mc_cuda_matmul_raw(c, &gate[e], xs, ldx, ne, g, I, op, err);
        if (st == MC_OK)
            st = mc_cuda_matmul_raw(c, &up[e], xs, ldx, ne, u, I, op, err);
        if (st == MC_OK)
            st = moe_launched(mck_swiglu_limit(c->stream, g, I, u, I, ne, I, lim), op, err);
        float *ys = MF32(y) + (size_t)r0 * (size_t)y->row_stride;
        if (st == MC_OK)
            st = mc_cuda_matmul_raw(c, &down[e], g, I, ne, ys, y->row_stride, op, err);
        if (st == MC_OK && rw && !w_in)
            st = moe_launched(mck_row_scale(c->stream, ys, y->row_stride, rwp, rw_ld, rw_cols, r0,
                                            ys, y->row_stride, ne, H), op, err);
    }
    free(off);
    return st;
}
