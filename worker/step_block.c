/* step_block.c - the step executor's math: one decoder block (GQA or MLA
 * attention over the paged cache, routed + shared experts or a dense FFN)
 * and the LM head, on the n tokens of a step, as backend ops only.
 *
 * The order of operations is the reference's (tests/ref/ref_forward.c,
 * ref_attention.c, ref_moe.c), so the logits agree with its
 * mc_model_forward to rounding. */
#include "step_internal.h"

#include "log.h"
#include "nonfinite.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void *mc_step_host(const mc_tensor *t)
{
    char *p = mc_buffer_host(t->buf);
    return p ? p + t->offset : NULL;
}

/* The memory a collective moves for the first `bytes` of t, and the
 * communicator of m's group that carries it (worker/parallel.h, the data
 * plane): on a backend with host memory the tensor's own bytes over the host
 * comm, nothing copied (the CPU path is unchanged); on a device with a
 * direct or NCCL plane the tensor's device address over the plane's comm;
 * otherwise (staged) a malloc'd host copy over the host comm, downloaded
 * first when `in`. stage_out uploads the copy back when `out` and frees it;
 * it passes st through (and skips the upload) on a failure. */
typedef struct {
    void *p;     /* bytes of the collective; NULL when bytes == 0 on a device */
    int copy;    /* p is malloc'd by stage_in, freed by stage_out */
} stage;

/* Which group's comm: the host one, or m's data plane's when tensors move directly. */
enum { G_TP, G_EP, G_PP };

static int plane_direct(const mc_model *m)
{
    return m->plane == MC_PLANE_DIRECT || m->plane == MC_PLANE_NCCL;
}

static mc_comm *group_comm(const mc_model *m, int g)
{
    int dev = plane_direct(m);
    switch (g) {
    case G_TP: return dev ? m->dev_tp : m->tp_comm;
    case G_EP: return dev ? m->dev_ep : m->ep_comm;
    default: return dev ? m->dev_pp : m->pp_comm;
    }
}

static mc_status stage_in(const mc_model *m, const mc_tensor *t, size_t bytes, int in, stage *s,
                          mc_err *err)
{
    s->copy = 0;
    if ((s->p = mc_step_host(t)) != NULL || bytes == 0)
        return MC_OK;
    if (plane_direct(m)) {
        s->p = (char *)mc_buffer_mem(t->buf) + t->offset;
        return MC_OK;
    }
    if (!(s->p = malloc(bytes)))
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory staging %zu bytes of a collective",
                          bytes);
    s->copy = 1;
    mc_status st = in ? mc_buffer_download(t->buf, t->offset, s->p, bytes, err) : MC_OK;
    if (st != MC_OK) {
        free(s->p);
        s->p = NULL;
        s->copy = 0;
    }
    return st;
}

static mc_status stage_out(mc_tensor *t, size_t bytes, int out, stage *s, mc_status st,
                           mc_err *err)
{
    if (s->copy) {
        if (st == MC_OK && out && bytes > 0)
            st = mc_buffer_upload(t->buf, t->offset, s->p, bytes, err);
        free(s->p);
    }
    s->p = NULL;
    s->copy = 0;
    return st;
}

/* mc_ep_exchange of a tensor's rows: send staged in, recv staged out (see
 * stage_in); either may be NULL when its byte count is 0. The backend's
 * queue is drained first: what is sent is final, and nothing queued still
 * reads what is received into. */
static mc_status ep_exchange_t(mc_step_exec *ex, int l, bool dispatch, const mc_tensor *send,
                               size_t send_bytes, const size_t *sc, const size_t *sd,
                               mc_tensor *recv, size_t recv_bytes, const size_t *rc,
                               const size_t *rd, mc_err *err)
{
    mc_model *m = ex->m;
    stage hs = {NULL, 0}, hr = {NULL, 0};
    mc_status st = mc_backend_synchronize(ex->be, err);
    if (st == MC_OK && send)
        st = stage_in(m, send, send_bytes, 1, &hs, err);
    if (st == MC_OK && (!recv || (st = stage_in(m, recv, recv_bytes, 0, &hr, err)) == MC_OK))
        st = mc_ep_exchange_on(m, group_comm(m, G_EP), l, dispatch, hs.p, send_bytes, sc, sd,
                               hr.p, recv_bytes, rc, rd, err);
    if (recv)
        st = stage_out(recv, recv_bytes, 1, &hr, st, err);
    return send ? stage_out(NULL, 0, 0, &hs, st, err) : st;
}

/* The collectives of worker/step.c (step_internal.h) on tensors that may
 * live on a device, staged or direct as above. The backend's queue is
 * drained first (a no-op on the CPU). */
mc_status mc_step_tp_all_reduce(mc_step_exec *ex, int row, mc_tensor *t, size_t count,
                                mc_err *err)
{
    stage h;
    mc_status st = mc_backend_synchronize(ex->be, err);
    if (st != MC_OK || (st = stage_in(ex->m, t, count * sizeof(float), 1, &h, err)) != MC_OK)
        return st;
    st = mc_tp_all_reduce_on(ex->m, group_comm(ex->m, G_TP), row, h.p, count, err);
    return stage_out(t, count * sizeof(float), 1, &h, st, err);
}

mc_status mc_step_pp_send(mc_step_exec *ex, int row, int peer, const mc_tensor *t, size_t bytes,
                          mc_err *err)
{
    stage h;
    mc_status st = mc_backend_synchronize(ex->be, err);
    if (st != MC_OK || (st = stage_in(ex->m, t, bytes, 1, &h, err)) != MC_OK)
        return st;
    st = mc_par_send(ex->m, group_comm(ex->m, G_PP), row, peer, h.p, bytes, err);
    return stage_out(NULL, 0, 0, &h, st, err);
}

mc_status mc_step_pp_recv(mc_step_exec *ex, int row, int peer, mc_tensor *t, size_t bytes,
                          mc_err *err)
{
    stage h;
    mc_status st = plane_direct(ex->m) ? mc_backend_synchronize(ex->be, err) : MC_OK;
    if (st != MC_OK || (st = stage_in(ex->m, t, bytes, 0, &h, err)) != MC_OK)
        return st;
    st = mc_par_recv(ex->m, group_comm(ex->m, G_PP), row, peer, h.p, bytes, err);
    return stage_out(t, bytes, 1, &h, st, err);
}

/* The message of a non-finite value at row r, column c of a check at
 * `site`, the value v (mc_nf_check on it: names the layer, the position
 * and the weight at fault). */
static mc_status nf_blame(mc_step_exec *ex, const mc_step_nf_site *site, int64_t r, int64_t c,
                          float v, mc_err *err)
{
    const mc_step_host_ix *hx = ex->cur_hx;
    int64_t tr = site->rows_off >= 0 && hx ? hx->rows[site->rows_off + r] : r; /* token row */
    int64_t tok = site->tok && hx ? hx->tok[tr] : 0;
    mc_status st = mc_nf_check(ex->m, (mc_nf_where)site->where, site->layer, &v, 1, 1,
                               site->pos && hx ? hx->pos[tr] : 0,
                               site->tok && hx ? &tok : NULL, err);
    if (st == MC_OK) /* the device saw what the host copy does not: say so */
        st = mc_err_set(err, MC_ERR_INTERNAL, "layer %d: non-finite value at row %lld, column %lld",
                        site->layer, (long long)r, (long long)c);
    return st;
}

static mc_status nf_at(mc_step_exec *ex, const mc_step_nf_site *site, const mc_tensor *t,
                       mc_err *err)
{
    mc_status st;
    if (ex->nf_defer) { /* noted on the device, read at the step's end */
        if (ex->nf_n == ex->nf_cap) {
            size_t cap = ex->nf_cap ? 2 * ex->nf_cap : 64;
            mc_step_nf_site *p = realloc(ex->nf_sites, cap * sizeof *p);
            if (!p)
                return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory");
            ex->nf_sites = p;
            ex->nf_cap = cap;
        }
        ex->nf_sites[ex->nf_n] = *site;
        return mc_op_note_nonfinite(ex->be, t, (int64_t)ex->nf_n++, err);
    }
    int64_t r, c;
    if ((st = mc_op_find_nonfinite(ex->be, t, &r, &c, err)) != MC_OK || r < 0)
        return st;
    mc_tensor row, one;
    float v = 0;
    if ((st = mc_tensor_view_rows(t, r, 1, &row, err)) == MC_OK &&
        (st = mc_tensor_view_cols(&row, c, 1, &one, err)) == MC_OK &&
        (st = mc_tensor_download(&one, &v, err)) == MC_OK)
        st = nf_blame(ex, site, r, c, v, err);
    return st;
}

mc_status mc_step_nf(mc_step_exec *ex, int where, int layer, const mc_tensor *t,
                     const int32_t *row_pos, const int32_t *row_tok, mc_err *err)
{
    /* the positions and token ids are the running step's (ex->cur_hx) */
    mc_step_nf_site site = {where, layer, row_pos != NULL, row_tok != NULL, -1};
    return nf_at(ex, &site, t, err);
}

mc_status mc_step_nf_rows(mc_step_exec *ex, int where, const mc_tensor *t, int64_t rows_off,
                          mc_err *err)
{
    mc_step_nf_site site = {where, 0, 1, 0, rows_off};
    return nf_at(ex, &site, t, err);
}

mc_status mc_step_nf_settle(mc_step_exec *ex, mc_status st, mc_err *err)
{
    if (!ex->nf_defer || ex->nf_n == 0)
        return st;
    mc_nonfinite_note nn;
    mc_err e2;
    mc_err_clear(&e2);
    mc_status s2 = mc_backend_take_nonfinite(ex->be, &nn, &e2);
    if (nn.tag < 0 || (uint64_t)nn.tag >= ex->nf_n) {
        /* none noted: the step's answer stands; a refusal the take's wait
         * met (the step failed before its own wait) is not this step's news */
        return st == MC_OK && s2 != MC_OK ? mc_err_set(err, s2, "%s", e2.msg) : st;
    }
    /* the first non-finite value comes before whatever failed after it */
    if (st != MC_OK)
        mc_err_clear(err);
    return nf_blame(ex, &ex->nf_sites[nn.tag], nn.row, nn.col, nn.value, err);
}

/* tp all-reduce (sum) of t (n, H) F32 in place, timed into row l. */
static mc_status tp_sum(mc_step_exec *ex, int row, mc_tensor *t, mc_err *err)
{
    if (ex->m->lay.tp == 1)
        return MC_OK;
    return mc_step_tp_all_reduce(ex, row, t, (size_t)t->shape[0] * (size_t)t->shape[1], err);
}

mc_status mc_step_views_make(mc_step_exec *ex, int64_t n, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int64_t k = d->n_experts_per_tok > 0 ? d->n_experts_per_tok : 1;
    mc_status st;
    s->n = n;
    TRY(mc_tensor_view_rows(&ex->x, 0, n, &s->x, err));
    TRY(mc_tensor_view_rows(&ex->xn, 0, n, &s->xn, err));
    TRY(mc_tensor_view_rows(&ex->tmp, 0, n, &s->tmp, err));
    TRY(mc_step_views_attn(ex, n, s, err));
    TRY(mc_tensor_view_rows(&ex->rlog, 0, n, &s->rlog, err));
    TRY(mc_tensor_view_rows(&ex->ids, 0, n, &s->ids, err));
    TRY(mc_tensor_view_rows(&ex->slot, 0, n, &s->slot, err));
    TRY(mc_tensor_view_rows(&ex->wts, 0, n, &s->wts, err));
    TRY(mc_tensor_view_rows(&ex->xp, 0, n * k, &s->xp, err));
    TRY(mc_tensor_view_rows(&ex->yp, 0, n * k, &s->yp, err));
    TRY(mc_tensor_view_rows(&ex->wp, 0, n * k, &s->wp, err));
    TRY(mc_tensor_view_rows(&ex->xp, 0, n, &s->ys, err));
    TRY(mc_tensor_view_rows(&ex->tok, 0, n, &s->tok, err));
    TRY(mc_tensor_view_rows(&ex->seq, 0, n, &s->ix.seq, err));
    TRY(mc_tensor_view_rows(&ex->pos, 0, n, &s->ix.pos, err));
fail:
    return st;
}

/* y (n, H) = down(silu(gate x) * up x), a dense or shared-expert FFN. */
static mc_status ffn(mc_step_exec *ex, const mc_step_ffn *f, const mc_tensor *x, mc_tensor *y,
                     mc_err *err)
{
    int64_t n = x->shape[0], I = f->gate.shape[0];
    mc_tensor g, u; /* (n, I) */
    mc_status st;
    TRY(mc_tensor_init_2d(&g, ex->g.buf, ex->g.offset, MC_DT_F32, n, I, err));
    TRY(mc_tensor_init_2d(&u, ex->u.buf, ex->u.offset, MC_DT_F32, n, I, err));
    TRY(mc_op_matmul(ex->be, &f->gate, x, &g, err));
    TRY(mc_op_matmul(ex->be, &f->up, x, &u, err));
    TRY(mc_op_swiglu(ex->be, &g, &u, &g, err));
    TRY(mc_op_matmul(ex->be, &f->down, &g, y, err));
fail:
    return st;
}

/* The router of a MoE layer as the backend's options. */
static mc_router_opts router_opts(const mc_model_desc *d)
{
    int sig = d->score_func == MC_SCORE_SIGMOID;
    if (d->router == MC_ROUTER_LLAMA4) /* top-k of the logits, sigmoid weights scaling the input */
        return (mc_router_opts){.score = MC_ROUTE_LOGIT_SIGMOID, .k = d->n_experts_per_tok,
                                .scale = 1.0f};
    return (mc_router_opts){.score = sig ? MC_ROUTE_SIGMOID : MC_ROUTE_SOFTMAX,
                            .k = d->n_experts_per_tok,
                            .n_group = d->n_group,
                            .topk_group = d->topk_group,
                            .renorm = d->norm_topk_prob,
                            .norm_eps = sig ? 1e-20f : 0.0f,
                            .scale = d->routed_scale};
}

/* Growable scratch for the rows an ep exchange brings in: 4 tensors of
 * (nr, H) F32 and 4 small (nr) / (ne + 1) arrays, carved from ex->ep_buf. */
typedef struct {
    mc_tensor xr, xe, ye;   /* (nr, H): received rows, grouped by expert, expert outputs */
    mc_tensor rid;          /* I32 (nr, 1): local expert of each received row */
    mc_tensor slot;         /* I32 (nr, 1): its row in xe */
    mc_tensor offs;         /* I32 [ne + 1] */
    mc_tensor wr, we;       /* (nr, 1) F32: received router weights (Llama 4), grouped */
} ep_scratch;

static mc_status ep_scratch_make(mc_step_exec *ex, int64_t nr, int64_t ne, ep_scratch *x,
                                 mc_err *err)
{
    int64_t H = ex->m->d.hidden, r = nr > 0 ? nr : 1;
    size_t rows = ((size_t)r * (size_t)H * sizeof(float) + 63) & ~(size_t)63;
    size_t small = ((size_t)r * 4 + 63) & ~(size_t)63, offb = ((size_t)(ne + 1) * 4 + 63) & ~(size_t)63;
    size_t need = 3 * rows + 4 * small + offb;
    mc_status st;
    if ((st = mc_step_grow(ex, &ex->ep_buf, &ex->ep_cap, need, err)) != MC_OK)
        return st;
    size_t o = 0;
    TRY(mc_tensor_init_2d(&x->xr, ex->ep_buf, o, MC_DT_F32, r, H, err));
    TRY(mc_tensor_init_2d(&x->xe, ex->ep_buf, o += rows, MC_DT_F32, r, H, err));
    TRY(mc_tensor_init_2d(&x->ye, ex->ep_buf, o += rows, MC_DT_F32, r, H, err));
    TRY(mc_tensor_init_2d(&x->rid, ex->ep_buf, o += rows, MC_DT_I32, r, 1, err));
    TRY(mc_tensor_init_2d(&x->slot, ex->ep_buf, o += small, MC_DT_I32, r, 1, err));
    TRY(mc_tensor_init_2d(&x->wr, ex->ep_buf, o += small, MC_DT_F32, r, 1, err));
    TRY(mc_tensor_init_2d(&x->we, ex->ep_buf, o += small, MC_DT_F32, r, 1, err));
    int64_t no = ne + 1;
    TRY(mc_tensor_init(&x->offs, ex->ep_buf, o += small, MC_DT_I32, 1, &no, err));
fail:
    return st;
}

/* ---- the expert exchange through shared memory (ranks on one host) ----
 *
 * Each rank of the ep group owns one segment of the group's shared memory:
 *   offs   int32 [E + 1]   its pairs' ranges by expert (pairs grouped by expert)
 *   w      f32 [cap]       its pairs' router weights (Llama 4)
 *   out    f32 [cap, H]    its pairs' rows (the dispatch side)
 *   in     f32 [cap, H]    the experts' outputs for its pairs (the combine side)
 * cap = max_tokens * k. Dispatch: a rank writes offs, w and out, then the
 * group meets (mc_comm_ibarrier: a rank arrives, runs the layer's shared
 * expert, then waits for the others); every rank copies the rows of its own
 * experts straight from the peers' `out` into its expert-grouped rows
 * (expert by expert, peer by peer: the order the all-to-all path's stable
 * grouping gives), runs them, and writes each output straight into the
 * sending rank's `in` (at the row the sender's offs give); the group meets
 * again (mc_comm_barrier) and each rank takes its `in`.
 * Two meetings and one copy each way per layer, where the all-to-all path
 * has three exchanges (counts, rows, outputs) that each copy twice.
 * Reuse without more meetings: a rank rewrites its `out` only after the
 * second meeting of the layer before (every reader is done), and peers
 * write its `in` only after the first meeting of the next layer, which it
 * reaches once it has taken its outputs. */

#define EP_SHM_MAX_BYTES ((size_t)1 << 30) /* per rank; larger steps use the all-to-all */

typedef struct {
    size_t woff, xoff, yoff, bytes;
    int64_t cap;
} ep_shm_layout;

static ep_shm_layout ep_shm_layout_of(const mc_step_exec *ex)
{
    const mc_model_desc *d = &ex->m->d;
    ep_shm_layout L;
    L.cap = (int64_t)ex->max_tokens * d->n_experts_per_tok;
    size_t rows = (size_t)L.cap * (size_t)d->hidden * sizeof(float);
    L.woff = ((size_t)(d->n_experts + 1) * sizeof(int32_t) + 63) & ~(size_t)63;
    L.xoff = L.woff + (((size_t)L.cap * sizeof(float) + 63) & ~(size_t)63);
    L.yoff = L.xoff + rows;
    L.bytes = L.yoff + rows;
    return L;
}

/* Once per executor, collectively over the ep group: the shared memory, or
 * the all-to-all path (MC_EP_SHM=0 on any rank, ranks on several hosts, a
 * step too large, no memory, or tensors moved directly by the data plane,
 * which every rank has agreed on; the same answer on every rank). */
static void ep_shm_setup(mc_step_exec *ex)
{
    mc_model *m = ex->m;
    if (plane_direct(m)) {
        ex->ep_shm_tried = true;
        MC_DEBUG("rank %d: expert exchange by all-to-all on the %s data plane", m->lay.rank,
                 mc_plane_name(m->plane));
        return;
    }
    ex->ep_shm_tried = true;
    const char *env = getenv("MC_EP_SHM");
    float off = env && strcmp(env, "0") == 0 ? 1.0f : 0.0f;
    mc_err e;
    mc_err_clear(&e);
    if (mc_comm_all_reduce_sum_f32(m->ep_comm, &off, 1, &e) != MC_OK || off > 0.0f) {
        MC_INFO("rank %d: expert exchange by all-to-all (%s)", m->lay.rank,
                off > 0.0f ? "MC_EP_SHM=0" : e.msg);
        return;
    }
    ep_shm_layout L = ep_shm_layout_of(ex);
    if (L.bytes > EP_SHM_MAX_BYTES) {
        MC_INFO("rank %d: expert exchange by all-to-all (%zu bytes of shared memory a rank "
                "would exceed %zu)", m->lay.rank, L.bytes, EP_SHM_MAX_BYTES);
        return;
    }
    mc_status st = mc_comm_shm_alloc(m->ep_comm, L.bytes, &ex->ep_shm, &e);
    if (st == MC_OK) {
        MC_INFO("rank %d: expert exchange through shared memory (%d ranks, %.1f MiB a rank)",
                m->lay.rank, m->lay.ep, (double)L.bytes / (1 << 20));
    } else if (st == MC_ERR_UNSUPPORTED) {
        MC_INFO("rank %d: expert exchange by all-to-all (%s)", m->lay.rank, e.msg);
    } else {
        MC_WARN("rank %d: expert exchange by all-to-all: %s", m->lay.rank, e.msg);
    }
}

/* A peer's pair ranges, checked: never trusted beyond one step. */
static mc_status ep_shm_peer_offs(const mc_step_exec *ex, int p, const int32_t *po, int64_t cap,
                                  mc_err *err)
{
    int E = ex->m->d.n_experts;
    for (int e = 0; e < E; e++)
        if ((e == 0 && po[0] != 0) || po[e + 1] < po[e] || po[e + 1] > cap)
            return mc_err_set(err, MC_ERR_INTERNAL,
                              "rank %d: ep peer %d published token-expert pair ranges that a "
                              "step of %u tokens cannot hold (expert %d: %d..%d)",
                              ex->m->lay.rank, p, ex->max_tokens, e, (int)po[e], (int)po[e + 1]);
    return MC_OK;
}

/* Work a rank does while its ep group meets (the shared expert). */
typedef mc_status (*ep_between_fn)(void *ctx, mc_err *err);

/* One meeting of the ep group over its shared memory: this rank arrives
 * (its writes before it), runs between (may be NULL; its seconds go to
 * *t_between when counting), then waits for the others, whatever between
 * did. Always the two-halved barrier, so every rank of the group makes the
 * same kind of call (MPI does not match a blocking barrier with a
 * nonblocking one, and an idle rank has no shared expert to run). */
static mc_status ep_shm_meet(mc_step_exec *ex, ep_between_fn between, void *ctx,
                             double *t_between, mc_err *err)
{
    mc_comm_req *req = NULL;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    mc_status st = mc_comm_ibarrier(ex->m->ep_comm, &req, err);
    if (st != MC_OK)
        return st;
    mc_status sb = MC_OK;
    if (between) {
        double t = ex->m->stats ? mc_now_s() : 0;
        sb = between(ctx, err);
        if (ex->m->stats)
            *t_between += mc_now_s() - t;
    }
    mc_status sw = mc_comm_wait(req, sb == MC_OK ? err : NULL);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return sb != MC_OK ? sb : sw;
}

/* ep_experts (below) through the group's shared memory. between (may be
 * NULL) runs between this rank's arrival at the dispatch's meeting and its
 * wait for the others (mc_comm_ibarrier), so it overlaps the exchange. */
static mc_status ep_experts_shm(mc_step_exec *ex, int l, int64_t np, const mc_tensor *xp,
                                const mc_tensor *wp, mc_tensor *yp, ep_between_fn between,
                                void *between_ctx, mc_err *err)
{
    mc_model *m = ex->m;
    const mc_model_desc *d = &m->d;
    const mc_layout *lay = &m->lay;
    const mc_step_layer *w = &ex->layers[l];
    int E = d->n_experts, P = lay->ep, me = lay->ep_rank, H = d->hidden;
    int e0 = lay->expert0, ne = lay->expert1 - e0;
    int llama4 = d->router == MC_ROUTER_LLAMA4;
    size_t hb = (size_t)H * sizeof(float);
    ep_shm_layout L = ep_shm_layout_of(ex);
    mc_status st = MC_OK;
    mc_arena *a = ex->arena;
    mc_arena_mark mk = mc_arena_mark_get(a);
    /* the exchange's share of the time: all of it but the work between */
    double t0 = m->stats ? mc_now_s() : 0, t_between = 0;
    unsigned char *seg = mc_comm_shm_seg(ex->ep_shm, me);
    int32_t *offs = (int32_t *)seg;
    int32_t *eoff = mc_arena_alloc_n(a, (size_t)ne + 1, sizeof *eoff);
    float *wgt = llama4 ? mc_arena_alloc_n(a, (size_t)(L.cap > 0 ? L.cap : 1) * P, sizeof *wgt)
                        : NULL;
    if (!eoff || (llama4 && !wgt)) {
        st = mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for the expert exchange");
        goto done;
    }
    if (np > L.cap) {
        st = mc_err_set(err, MC_ERR_INTERNAL, "rank %d: %lld token-expert pairs, more than a step "
                        "of %u tokens makes", lay->rank, (long long)np, ex->max_tokens);
        goto done;
    }
    /* dispatch, 1: publish this rank's pairs */
    if (np > 0) {
        mc_tensor ov, xv;
        TRY(mc_tensor_view_rows(&ex->offsets, 0, E + 1, &ov, err));
        TRY(mc_tensor_download(&ov, offs, err));
        TRY(mc_tensor_view_rows(xp, 0, np, &xv, err));
        TRY(mc_tensor_download(&xv, seg + L.xoff, err));
        if (llama4) {
            mc_tensor wv;
            TRY(mc_tensor_view_rows(wp, 0, np, &wv, err));
            TRY(mc_tensor_download(&wv, seg + L.woff, err));
        }
    } else {
        memset(offs, 0, (size_t)(E + 1) * sizeof *offs);
    }
    /* (xp, whose memory s->ys shares, is published: between may reuse it) */
    TRY(ep_shm_meet(ex, between, between_ctx, &t_between, err));
    /* dispatch, 2: the rows of this rank's experts, grouped by expert */
    int64_t nr = 0;
    for (int p = 0; p < P; p++)
        TRY(ep_shm_peer_offs(ex, p, (const int32_t *)mc_comm_shm_seg(ex->ep_shm, p), L.cap, err));
    eoff[0] = 0;
    for (int e = 0; e < ne; e++) {
        for (int p = 0; p < P; p++) {
            const int32_t *po = mc_comm_shm_seg(ex->ep_shm, p);
            nr += po[e0 + e + 1] - po[e0 + e];
        }
        eoff[e + 1] = (int32_t)nr;
    }
    ep_scratch x;
    TRY(ep_scratch_make(ex, nr, ne, &x, err));
    for (int e = 0, r = 0; e < ne; e++)
        for (int p = 0; p < P; p++) {
            const unsigned char *ps = mc_comm_shm_seg(ex->ep_shm, p);
            const int32_t *po = (const int32_t *)ps;
            int c = po[e0 + e + 1] - po[e0 + e];
            if (c == 0)
                continue;
            mc_tensor v;
            TRY(mc_tensor_view_rows(&x.xe, r, c, &v, err));
            TRY(mc_tensor_upload(&v, ps + L.xoff + (size_t)po[e0 + e] * hb, err));
            if (llama4)
                memcpy(wgt + r, ps + L.woff + (size_t)po[e0 + e] * sizeof(float),
                       (size_t)c * sizeof(float));
            r += c;
        }
    double t_experts = m->stats ? mc_now_s() : 0;
    if (nr > 0) {
        mc_tensor xe, ye, we, ov;
        mc_experts_opts eo = {.row_weight = &we, .weight_input = 1};
        TRY(mc_tensor_view_rows(&x.xe, 0, nr, &xe, err));
        TRY(mc_tensor_view_rows(&x.ye, 0, nr, &ye, err));
        TRY(mc_tensor_view_rows(&x.offs, 0, ne + 1, &ov, err));
        TRY(mc_tensor_upload(&ov, eoff, err));
        if (llama4) {
            TRY(mc_tensor_view_rows(&x.we, 0, nr, &we, err));
            TRY(mc_tensor_upload(&we, wgt, err));
        }
        TRY(mc_op_grouped_experts(ex->be, &xe, &x.offs, ne, w->gate, w->up, w->down,
                                  llama4 ? &eo : NULL, &ye, err));
        /* the tokens may be another rank's: the rank holding a NaN expert
         * names it (checked at the op: before sending its outputs back;
         * deferred: at the step's end, its peers naming the layer after it) */
        TRY(mc_step_nf(ex, MC_NF_EXPERTS, l, &ye, NULL, NULL, err));
        TRY(mc_backend_synchronize(ex->be, err));
    }
    /* combine, 1: each output into the sending rank's `in`, at its pair's row */
    if (m->stats)
        t_experts = mc_now_s() - t_experts;
    uint64_t remote_out = 0;
    for (int e = 0, r = 0; e < ne; e++)
        for (int p = 0; p < P; p++) {
            unsigned char *ps = mc_comm_shm_seg(ex->ep_shm, p);
            const int32_t *po = (const int32_t *)ps;
            int c = po[e0 + e + 1] - po[e0 + e];
            if (c == 0)
                continue;
            mc_tensor v;
            TRY(mc_tensor_view_rows(&x.ye, r, c, &v, err));
            TRY(mc_tensor_download(&v, ps + L.yoff + (size_t)po[e0 + e] * hb, err));
            if (p != me)
                remote_out += (uint64_t)c;
            r += c;
        }
    TRY(ep_shm_meet(ex, NULL, NULL, NULL, err));
    /* combine, 2: this rank's outputs, in its pairs' order */
    if (np > 0) {
        mc_tensor yv;
        TRY(mc_tensor_view_rows(yp, 0, np, &yv, err));
        TRY(mc_tensor_upload(&yv, seg + L.yoff, err));
    }
    if (m->stats) {
        mc_stat_row *sr = &m->stats[l];
        int64_t mine = np > 0 ? offs[e0 + ne] - offs[e0] : 0;
        sr->disp_tokens += (uint64_t)np;
        sr->disp_remote += (uint64_t)(np - mine);
        sr->expert_tokens += (uint64_t)nr;
        sr->disp_bytes += (uint64_t)(np - mine) * (hb + (llama4 ? sizeof(float) : 0)) +
                          (uint64_t)(P - 1) * (size_t)(E + 1) * sizeof(int32_t);
        sr->comb_bytes += remote_out * hb;
        sr->t_comm += mc_now_s() - t0 - t_between - t_experts;
    }
done:
fail:
    mc_arena_reset_to(a, mk);
    return st;
}

/* Routed experts under expert parallelism, for np = nt * k token-expert
 * pairs of this rank (xp (np, H) grouped by expert, ex->offsets their
 * ranges; np may be 0), collective over the ep group:
 *   dispatch  each pair's row goes to the rank holding its expert (pairs
 *             are grouped by expert, so by owner too), with the count of
 *             each of the owner's experts (and, Llama 4, the weight);
 *   experts   the receiver groups what it got by local expert (stable in
 *             arrival order, as the reference) and runs them in one call;
 *   combine   each output goes back to the rank that sent the pair, into
 *             yp (np, H) in xp's order, unweighted (Llama 4: input-weighted).
 * Index data (counts, each received row's expert) is built on the host. */
static mc_status ep_experts(mc_step_exec *ex, int l, int64_t np, const mc_tensor *xp,
                            const mc_tensor *wp, mc_tensor *yp, ep_between_fn between,
                            void *between_ctx, mc_err *err)
{
    if (!ex->ep_shm_tried)
        ep_shm_setup(ex);
    if (ex->ep_shm)
        return ep_experts_shm(ex, l, np, xp, wp, yp, between, between_ctx, err);

    mc_model *m = ex->m;
    const mc_model_desc *d = &m->d;
    const mc_layout *lay = &m->lay;
    const mc_step_layer *w = &ex->layers[l];
    int E = d->n_experts, P = lay->ep, me = lay->ep_rank, H = d->hidden;
    int e0 = lay->expert0, ne = lay->expert1 - e0;
    int llama4 = d->router == MC_ROUTER_LLAMA4;
    size_t hb = (size_t)H * sizeof(float);
    mc_status st = MC_OK;
    /* host index data of this exchange, from the step's arena (given back at the end) */
    mc_arena *a = ex->arena;
    mc_arena_mark mk = mc_arena_mark_get(a);
    int32_t *off = mc_arena_alloc_n(a, (size_t)E + 1, sizeof *off);    /* [E + 1] pair ranges */
    uint32_t *rcnt = mc_arena_alloc_n(a, (size_t)P * (ne > 0 ? ne : 1), sizeof *rcnt); /* (P, ne) */
    size_t *cnt = mc_arena_alloc_n(a, (size_t)4 * P, sizeof *cnt);
    int64_t *to = mc_arena_alloc_n(a, (size_t)2 * P, sizeof *to);      /* pairs to / from each peer */
    int32_t *rid = NULL;
    uint32_t *sendc = mc_arena_alloc_n(a, (size_t)E + 1, sizeof *sendc);
    if (off)
        memset(off, 0, ((size_t)E + 1) * sizeof *off);
    if (rcnt)
        memset(rcnt, 0, (size_t)P * (ne > 0 ? ne : 1) * sizeof *rcnt);
    if (!off || !rcnt || !cnt || !to || !sendc) {
        st = mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for the expert exchange");
        goto done;
    }
    int64_t *from = to + P;
    size_t *sc = cnt, *sd = cnt + P, *rc = cnt + 2 * P, *rd = cnt + 3 * P;
    if (np > 0) {
        mc_tensor ov;
        TRY(mc_tensor_view_rows(&ex->offsets, 0, E + 1, &ov, err));
        TRY(mc_tensor_download(&ov, off, err));
    }
    for (int e = 0; e < E; e++)
        sendc[e] = (uint32_t)(off[e + 1] - off[e]);
    /* dispatch, 1: the count of every expert of each peer */
    for (int p = 0, o = 0; p < P; p++) {
        int pe0, pne;
        mc_split(E, P, p, &pe0, &pne);
        sc[p] = (size_t)pne * sizeof *sendc;
        sd[p] = (size_t)pe0 * sizeof *sendc;
        rc[p] = (size_t)ne * sizeof *rcnt;
        rd[p] = (size_t)o;
        o += (int)rc[p];
        to[p] = off[pe0 + pne] - off[pe0];
    }
    TRY(mc_ep_exchange(m, l, true, sendc, (size_t)E * sizeof *sendc, sc, sd, rcnt,
                       (size_t)P * ne * sizeof *rcnt, rc, rd, err));
    int64_t nr = 0;
    for (int p = 0; p < P; p++) {
        from[p] = 0;
        for (int e = 0; e < ne; e++)
            from[p] += rcnt[(size_t)p * ne + e];
        /* from a peer: never trusted beyond what one step can hold */
        if (from[p] > (int64_t)ex->max_tokens * d->n_experts_per_tok) {
            st = mc_err_set(err, MC_ERR_INTERNAL,
                            "rank %d: ep peer %d announced %lld token-expert pairs, more than a "
                            "step of %u tokens can send",
                            lay->rank, p, (long long)from[p], ex->max_tokens);
            goto done;
        }
        nr += from[p];
    }
    ep_scratch x;
    TRY(ep_scratch_make(ex, nr, ne, &x, err));
    /* each received row's local expert: peer by peer, expert by expert */
    if (!(rid = mc_arena_alloc_n(a, (size_t)(nr > 0 ? nr : 1), sizeof *rid))) {
        st = mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for %lld received pairs",
                        (long long)nr);
        goto done;
    }
    for (int p = 0, r = 0; p < P; p++)
        for (int e = 0; e < ne; e++)
            for (uint32_t j = 0; j < rcnt[(size_t)p * ne + e]; j++)
                rid[r++] = e;
    /* dispatch, 2: the rows (and Llama 4's weights) */
    for (int p = 0, so = 0, ro = 0; p < P; p++) {
        sc[p] = (size_t)to[p] * hb;
        sd[p] = (size_t)so * hb;
        so += (int)to[p];
        rc[p] = (size_t)from[p] * hb;
        rd[p] = (size_t)ro * hb;
        ro += (int)from[p];
    }
    TRY(ep_exchange_t(ex, l, true, np > 0 ? xp : NULL, (size_t)np * hb, sc, sd, &x.xr,
                      (size_t)nr * hb, rc, rd, err));
    if (llama4) {
        for (int p = 0; p < P; p++) {
            sc[p] /= (size_t)H;
            sd[p] /= (size_t)H;
            rc[p] /= (size_t)H;
            rd[p] /= (size_t)H;
        }
        TRY(ep_exchange_t(ex, l, true, np > 0 ? wp : NULL, (size_t)np * sizeof(float), sc, sd,
                          &x.wr, (size_t)nr * sizeof(float), rc, rd, err));
    }
    if (nr > 0) {
        mc_tensor xr, xe, ye, ri, sl, wr, we;
        mc_experts_opts eo = {.row_weight = &we, .weight_input = 1};
        TRY(mc_tensor_view_rows(&x.xr, 0, nr, &xr, err));
        TRY(mc_tensor_view_rows(&x.xe, 0, nr, &xe, err));
        TRY(mc_tensor_view_rows(&x.ye, 0, nr, &ye, err));
        TRY(mc_tensor_view_rows(&x.rid, 0, nr, &ri, err));
        TRY(mc_tensor_view_rows(&x.slot, 0, nr, &sl, err));
        TRY(mc_tensor_view_rows(&x.wr, 0, nr, &wr, err));
        TRY(mc_tensor_view_rows(&x.we, 0, nr, &we, err));
        TRY(mc_tensor_upload(&ri, rid, err));
        TRY(mc_op_moe_permute(ex->be, &xr, &ri, &xe, &sl, &x.offs, err));
        if (llama4)
            TRY(mc_op_moe_permute(ex->be, &wr, &ri, &we, &sl, &x.offs, err));
        TRY(mc_op_grouped_experts(ex->be, &xe, &x.offs, ne, w->gate, w->up, w->down,
                                  llama4 ? &eo : NULL, &ye, err));
        /* back to arrival order (times 1: exact) */
        TRY(mc_op_moe_unpermute_weighted(ex->be, &ye, &sl, NULL, &xr, err));
        /* the tokens may be another rank's: the rank holding a NaN expert
         * names it (checked at the op: before sending its outputs back;
         * deferred: at the step's end, its peers naming the layer after it) */
        TRY(mc_step_nf(ex, MC_NF_EXPERTS, l, &xr, NULL, NULL, err));
    }
    if (m->stats) {
        mc_stat_row *r = &m->stats[l];
        r->disp_tokens += (uint64_t)np;
        r->disp_remote += (uint64_t)(np - to[me]);
        r->expert_tokens += (uint64_t)nr;
    }
    /* combine: every output back to the rank that sent its pair */
    for (int p = 0, so = 0, ro = 0; p < P; p++) {
        sc[p] = (size_t)from[p] * hb;
        sd[p] = (size_t)so * hb;
        so += (int)from[p];
        rc[p] = (size_t)to[p] * hb;
        rd[p] = (size_t)ro * hb;
        ro += (int)to[p];
    }
    TRY(ep_exchange_t(ex, l, false, &x.xr, (size_t)nr * hb, sc, sd, np > 0 ? yp : NULL,
                      (size_t)np * hb, rc, rd, err));
    /* the all-to-all path: the work comes after the exchange (the shared
     * expert's output shares memory with the rows sent: s->ys is xp's) */
    if (between)
        st = between(between_ctx, err);
done:
fail:
    mc_arena_reset_to(a, mk);
    return st;
}

mc_status mc_step_moe_idle(mc_step_exec *ex, int l, mc_err *err)
{
    return ep_experts(ex, l, 0, NULL, NULL, NULL, NULL, NULL, err);
}

/* The shared expert of a layer into s->ys (ep_experts' between work). */
typedef struct {
    mc_step_exec *ex;
    const mc_step_layer *w;
    mc_step_views *s;
} shared_job;

static mc_status shared_between(void *ctx, mc_err *err)
{
    shared_job *j = ctx;
    return ffn(j->ex, &j->w->shared, &j->s->xn, &j->s->ys, err);
}

/* tmp = routed experts (+ shared experts) of xn. Under tp the ranks of a
 * group route disjoint slices of the tokens (mc_split), so rows outside
 * this rank's slice hold only its share of the shared experts, and the tp
 * all-reduce after the block completes every row (as the reference, tests/ref/ref_moe.c). */
static mc_status moe(mc_step_exec *ex, int l, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    const mc_layout *lay = &ex->m->lay;
    const mc_step_layer *w = &ex->layers[l];
    mc_backend *be = ex->be;
    int llama4 = d->router == MC_ROUTER_LLAMA4, k = d->n_experts_per_tok;
    mc_router_opts ro = router_opts(d);
    int t0 = 0, nt = (int)s->n;
    if (lay->tp > 1)
        mc_split((int)s->n, lay->tp, lay->tp_rank, &t0, &nt);
    int64_t np = (int64_t)nt * k;
    mc_tensor xs, ys, rl, ids, wts, slot, xp, yp, wp; /* this rank's slice */
    mc_status st = MC_OK;
    if (nt < s->n)
        TRY(mc_buffer_memset(s->tmp.buf, s->tmp.offset,
                             0, (size_t)s->n * (size_t)d->hidden * sizeof(float), err));
    if (nt > 0) {
        TRY(mc_tensor_view_rows(&s->xn, t0, nt, &xs, err));
        TRY(mc_tensor_view_rows(&s->tmp, t0, nt, &ys, err));
        TRY(mc_tensor_view_rows(&s->rlog, 0, nt, &rl, err));
        TRY(mc_tensor_view_rows(&s->ids, 0, nt, &ids, err));
        TRY(mc_tensor_view_rows(&s->wts, 0, nt, &wts, err));
        TRY(mc_tensor_view_rows(&s->slot, 0, nt, &slot, err));
        TRY(mc_tensor_view_rows(&s->xp, 0, np, &xp, err));
        TRY(mc_tensor_view_rows(&s->yp, 0, np, &yp, err));
        TRY(mc_tensor_view_rows(&s->wp, 0, np, &wp, err));
        TRY(mc_op_matmul(be, &w->router, &xs, &rl, err));
        TRY(mc_op_router_topk(be, &rl, w->has_bias ? &w->bias : NULL, &ro, &ids, &wts, err));
        TRY(mc_op_moe_permute(be, &xs, &ids, &xp, &slot, &ex->offsets, err));
        /* Llama 4 (one expert per token): the pair's weight, permuted like its row */
        if (llama4)
            TRY(mc_op_moe_permute(be, &wts, &ids, &wp, &slot, &ex->offsets, err));
    }
    int shared_done = 0;
    if (lay->ep > 1) {
        /* the shared expert overlaps the exchange (shared memory) */
        shared_job sj = {ex, w, s};
        TRY(ep_experts(ex, l, np, &xp, &wp, &yp, w->has_shared ? shared_between : NULL, &sj, err));
        shared_done = w->has_shared;
    } else if (nt > 0) {
        mc_experts_opts eo = {.row_weight = &wp, .weight_input = 1};
        TRY(mc_op_grouped_experts(be, &xp, &ex->offsets, d->n_experts, w->gate, w->up, w->down,
                                  llama4 ? &eo : NULL, &yp, err));
    }
    if (nt > 0) /* in expert order per token, from zero (Llama 4: already weighted) */
        TRY(mc_op_moe_unpermute_weighted(be, &yp, &slot, llama4 ? NULL : &wts, &ys, err));
    if (w->has_shared) {
        if (!shared_done)
            TRY(ffn(ex, &w->shared, &s->xn, &s->ys, err));
        TRY(mc_op_add(be, &s->tmp, &s->ys, &s->tmp, err));
    }
fail:
    return st;
}

mc_status mc_step_block(mc_step_exec *ex, int l, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_step_layer *w = &ex->layers[l];
    mc_backend *be = ex->be;
    mc_status st;
    TRY(mc_op_rmsnorm(be, &s->x, &w->attn_norm, d->norm_eps, &s->xn, err));
    TRY(mc_step_attention(ex, l, s, err));
    TRY(tp_sum(ex, l, &s->tmp, err)); /* row-split o: partial sums over this rank's heads */
    TRY(mc_op_add(be, &s->x, &s->tmp, &s->x, err));
    /* NaN / Inf: stop here and name the weight, rather than emit NaN logits */
    TRY(mc_step_nf(ex, MC_NF_ATTN, l, &s->x, s->hx->pos, NULL, err));
    TRY(mc_op_rmsnorm(be, &s->x, &w->ffn_norm, d->norm_eps, &s->xn, err));
    TRY(w->moe ? moe(ex, l, s, err) : ffn(ex, &w->dense, &s->xn, &s->tmp, err));
    TRY(tp_sum(ex, l, &s->tmp, err)); /* row-split down projections, routed slices */
    TRY(mc_op_add(be, &s->x, &s->tmp, &s->x, err));
    TRY(mc_step_nf(ex, MC_NF_FFN, l, &s->x, s->hx->pos, NULL, err));
fail:
    return st;
}

/* ---- candidates in place of logits (ex->top, mc_step_exec_run_top) ---- */

/* The device outputs of mc_op_topk for r rows of k (ex->top_buf): ids (r,
 * k) I32, vals (r, k), lse (r, 2). */
static mc_status top_views(mc_step_exec *ex, int64_t r, int k, mc_tensor *ids, mc_tensor *vals,
                           mc_tensor *lse, mc_err *err)
{
    size_t a = (size_t)r * (size_t)k * 4;
    mc_status st = mc_step_grow(ex, &ex->top_buf, &ex->top_cap, 2 * a + (size_t)r * 8, err);
    if (st == MC_OK)
        st = mc_tensor_init_2d(ids, ex->top_buf, 0, MC_DT_I32, r, k, err);
    if (st == MC_OK)
        st = mc_tensor_init_2d(vals, ex->top_buf, a, MC_DT_F32, r, k, err);
    if (st == MC_OK)
        st = mc_tensor_init_2d(lse, ex->top_buf, 2 * a, MC_DT_F32, r, 2, err);
    return st;
}

/* topk of the rows of hl, id0 its first vocabulary id, into ex->top_buf. */
static mc_status top_issue(mc_step_exec *ex, const mc_tensor *hl, int64_t id0, int want_lse,
                           mc_err *err)
{
    int64_t r = mc_tensor_rows(hl);
    int k = ex->top->k;
    mc_tensor it, vt, lt;
    mc_status st = top_views(ex, r, k, &it, &vt, &lt, err);
    if (st == MC_OK)
        st = mc_op_topk(ex->be, hl, k, id0, &it, &vt, want_lse ? &lt : NULL, err);
    return st;
}

/* The first r_out of top_issue's r rows downloaded: (r_out, k) ids,
 * (r_out, k) vals and (when want_lse) (r_out, 2) lse float pairs. */
static mc_status top_fetch(mc_step_exec *ex, int64_t r, int64_t r_out, int want_lse,
                           int32_t *ids, float *vals, float *lse2, mc_err *err)
{
    mc_tensor it, vt, lt, v;
    mc_status st = top_views(ex, r, ex->top->k, &it, &vt, &lt, err);
    if (st == MC_OK && (st = mc_tensor_view_rows(&it, 0, r_out, &v, err)) == MC_OK)
        st = mc_tensor_download(&v, ids, err);
    if (st == MC_OK && (st = mc_tensor_view_rows(&vt, 0, r_out, &v, err)) == MC_OK)
        st = mc_tensor_download(&v, vals, err);
    if (st == MC_OK && want_lse && (st = mc_tensor_view_rows(&lt, 0, r_out, &v, err)) == MC_OK)
        st = mc_tensor_download(&v, lse2, err);
    return st;
}

static mc_status top_host(mc_step_exec *ex, const mc_tensor *hl, int64_t id0, int want_lse,
                          int32_t *ids, float *vals, float *lse2, mc_err *err)
{
    int64_t r = mc_tensor_rows(hl);
    mc_status st = top_issue(ex, hl, id0, want_lse, err);
    return st == MC_OK ? top_fetch(ex, r, r, want_lse, ids, vals, lse2, err) : st;
}

/* The candidates of the first r_out of r rows (rows r0.. of the step) from
 * ex->top_buf into ex->top. */
static mc_status top_rows_fetch(mc_step_exec *ex, int64_t r, int64_t r_out, int64_t r0,
                                mc_err *err)
{
    mc_step_top *t = ex->top;
    float lse2[2 * MC_STEP_HEAD_ROWS];
    if (r > MC_STEP_HEAD_ROWS || r_out > r)
        return mc_err_set(err, MC_ERR_INTERNAL, "step: %lld head rows at once", (long long)r);
    if (r_out <= 0)
        return MC_OK;
    mc_status st = top_fetch(ex, r, r_out, t->lse != NULL, t->ids + (size_t)r0 * t->k,
                             t->vals + (size_t)r0 * t->k, lse2, err);
    for (int64_t i = 0; st == MC_OK && t->lse && i < r_out; i++)
        t->lse[r0 + i] = (double)lse2[2 * i] + (double)lse2[2 * i + 1];
    return st;
}

/* Rows past the step's ex->head_out are a padded step's (step.c): computed,
 * not brought back. */
static int64_t rows_out(const mc_step_exec *ex, int64_t r0, int64_t r)
{
    int64_t left = ex->head_out - r0;
    return left < 0 ? 0 : left < r ? left : r;
}

mc_status mc_step_top_rows(mc_step_exec *ex, const mc_tensor *hl, int64_t r0, mc_err *err)
{
    int64_t r = mc_tensor_rows(hl);
    mc_status st = top_issue(ex, hl, 0, ex->top->lse != NULL, err);
    return st == MC_OK ? top_rows_fetch(ex, r, rows_out(ex, r0, r), r0, err) : st;
}

/* mc_op_topk's order: larger first, ties to the lower id, NaN last. */
static int top_before(float a, int32_t ia, float b, int32_t ib)
{
    if (a != a)
        return b != b && ia < ib;
    return b != b || a > b || (a == b && ia < ib);
}

/* Row i of the tp slices' candidates (tp blocks of r rows of W = 2k + 2
 * words: k ids, k vals, lse hi / lo) merged into the best k and the whole
 * row's log-sum-exp (the slices' combined: m + log(sum of exp(lse_p - m))). */
static void top_merge(const uint32_t *all, int tp, int64_t r, int64_t i, int k, int32_t *ids,
                      float *vals, double *lse)
{
    size_t W = 2 * (size_t)k + 2;
    int at[MC_COMM_LOCAL_MAX_RANKS] = {0}; /* next candidate of each slice (each is sorted) */
    for (int j = 0; j < k; j++) {
        int bp = -1;
        int32_t bi = 0;
        float bv = 0;
        for (int p = 0; p < tp; p++) {
            if (at[p] >= k)
                continue;
            const uint32_t *row = all + ((size_t)p * (size_t)r + (size_t)i) * W;
            int32_t id;
            float v;
            memcpy(&id, row + at[p], 4);
            memcpy(&v, row + k + at[p], 4);
            if (bp < 0 || top_before(v, id, bv, bi)) {
                bp = p;
                bi = id;
                bv = v;
            }
        }
        at[bp]++;
        ids[j] = bi;
        vals[j] = bv;
    }
    if (!lse)
        return;
    double l[MC_COMM_LOCAL_MAX_RANKS], m = -INFINITY;
    int nan = 0;
    for (int p = 0; p < tp; p++) {
        const uint32_t *row = all + ((size_t)p * (size_t)r + (size_t)i) * W + 2 * (size_t)k;
        float hi, lo;
        memcpy(&hi, row, 4);
        memcpy(&lo, row + 1, 4);
        l[p] = (double)hi + (double)lo;
        nan |= l[p] != l[p];
        m = l[p] > m ? l[p] : m;
    }
    if (nan || isinf(m)) {
        *lse = nan ? NAN : m;
        return;
    }
    double sum = 0;
    for (int p = 0; p < tp; p++)
        sum += exp(l[p] - m);
    *lse = m + log(sum);
}

/* The LM head's candidates under tp: each rank's topk of its slice, sent
 * to tp rank 0 (all-to-all to it alone), merged there into ex->top. */
static mc_status head_top_tp(mc_step_exec *ex, const mc_tensor *hl, int64_t c0, mc_err *err)
{
    mc_model *m = ex->m;
    const mc_layout *lay = &m->lay;
    int tp = lay->tp, k = ex->top->k, L = m->d.n_layers;
    int64_t r = mc_tensor_rows(hl);
    size_t W = 2 * (size_t)k + 2, mine = (size_t)r * W * 4;
    mc_arena_mark mk = mc_arena_mark_get(ex->arena);
    uint32_t *part = mc_arena_alloc_n(ex->arena, (size_t)r * W, 4);
    uint32_t *all = lay->tp_rank == 0 ? mc_arena_alloc_n(ex->arena, (size_t)tp * r * W, 4) : NULL;
    size_t *cnt = mc_arena_alloc_n(ex->arena, (size_t)4 * tp, sizeof *cnt);
    int32_t *ids = mc_arena_alloc_n(ex->arena, (size_t)r * k, 4);
    float *vals = mc_arena_alloc_n(ex->arena, (size_t)r * k, 4);
    float *lse2 = mc_arena_alloc_n(ex->arena, (size_t)r * 2, 4);
    mc_status st = MC_OK;
    if (tp > MC_COMM_LOCAL_MAX_RANKS) {
        st = mc_err_set(err, MC_ERR_UNSUPPORTED, "step: candidates from %d tp ranks (at most %d)",
                        tp, MC_COMM_LOCAL_MAX_RANKS);
        goto done;
    }
    if (!part || (lay->tp_rank == 0 && !all) || !cnt || !ids || !vals || !lse2) {
        st = mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for the LM head's candidates");
        goto done;
    }
    int want_lse = 1; /* every rank sends it (rank 0 alone knows whether it is wanted) */
    TRY(top_host(ex, hl, lay->vocab0, want_lse, ids, vals, lse2, err));
    for (int64_t i = 0; i < r; i++) {
        memcpy(part + (size_t)i * W, ids + (size_t)i * k, (size_t)k * 4);
        memcpy(part + (size_t)i * W + k, vals + (size_t)i * k, (size_t)k * 4);
        memcpy(part + (size_t)i * W + 2 * (size_t)k, lse2 + 2 * i, 8);
    }
    size_t *sc = cnt, *sd = cnt + tp, *rc = cnt + 2 * tp, *rd = cnt + 3 * tp;
    memset(cnt, 0, (size_t)4 * tp * sizeof *cnt);
    sc[0] = mine; /* everything to tp rank 0 */
    if (all)
        for (int p = 0; p < tp; p++) {
            rc[p] = mine;
            rd[p] = (size_t)p * mine;
        }
    double t = m->stats ? mc_now_s() : 0;
    st = mc_comm_all_to_all_v(m->tp_comm, part, mine, sc, sd, all, all ? (size_t)tp * mine : 0,
                              rc, rd, err);
    if (m->stats) {
        m->stats[MC_STAT_HEAD(L)].t_comm += mc_now_s() - t;
        if (lay->tp_rank != 0)
            m->stats[MC_STAT_HEAD(L)].p2p_bytes += mine;
    }
    if (st != MC_OK || !all || !ex->top->ids)
        goto done;
    for (int64_t i = 0; i < r; i++) {
        mc_step_top *tt = ex->top;
        top_merge(all, tp, r, i, k, tt->ids + (size_t)(c0 + i) * k, tt->vals + (size_t)(c0 + i) * k,
                  tt->lse ? tt->lse + c0 + i : NULL);
    }
done:
fail:
    mc_arena_reset_to(ex->arena, mk);
    return st;
}

/* Final norm and the LM head on the nl rows listed in ex->rows, HEAD_ROWS
 * at a time: each tp rank multiplies its vocabulary slice, tp rank 0
 * gathers the slices (all-to-all to it alone) into logits (nl, V), or with
 * ex->top each rank's candidates, merged at tp rank 0. */
mc_status mc_step_head(mc_step_exec *ex, mc_step_views *s, int64_t nl, float *logits, mc_err *err)
{
    mc_model *m = ex->m;
    const mc_model_desc *d = &m->d;
    const mc_layout *lay = &m->lay;
    int64_t R = ex->hx.shape[0], V = d->vocab, nv = lay->n_vocab;
    int tp = lay->tp, L = d->n_layers;
    float *part = NULL, *all = NULL;
    size_t *cnt = NULL;
    mc_status st = MC_OK;
    mc_arena_mark mk = mc_arena_mark_get(ex->arena);
    if (tp > 1 && !ex->top) { /* host staging of the gather, from the step's arena */
        part = mc_arena_alloc_n(ex->arena, (size_t)R * (size_t)nv, sizeof *part); /* (R, nv) */
        all = lay->tp_rank == 0 ? mc_arena_alloc_n(ex->arena, (size_t)R * (size_t)V, sizeof *all)
                                : NULL;                                             /* (R, V) */
        cnt = mc_arena_alloc_n(ex->arena, (size_t)4 * tp, sizeof *cnt);
        if (!part || (lay->tp_rank == 0 && !all) || !cnt) {
            st = mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for the LM head's gather");
            goto fail;
        }
    }
    for (int64_t c0 = 0; c0 < nl; c0 += R) {
        int64_t r = nl - c0 < R ? nl - c0 : R;
        mc_tensor rows, hx, hl; /* [r] I32, (r, H), (r, nv) */
        TRY(mc_tensor_view_rows(&ex->rows, c0, r, &rows, err));
        TRY(mc_tensor_view_rows(&ex->hx, 0, r, &hx, err));
        TRY(mc_tensor_init_2d(&hl, ex->hlog.buf, ex->hlog.offset, MC_DT_F32, r, nv, err));
        TRY(mc_op_embed(ex->be, &s->x, &rows, 0, &hx, err)); /* gather the rows */
        TRY(mc_op_rmsnorm(ex->be, &hx, &ex->final_norm, d->norm_eps, &hx, err));
        TRY(mc_op_matmul(ex->be, &ex->lm_head, &hx, &hl, err));
        /* each tp rank checks its vocabulary slice */
        TRY(mc_step_nf_rows(ex, MC_NF_HEAD, &hl, c0, err));
        if (ex->head_later) { /* one chunk, tp 1: mc_step_head_fetch downloads it */
            if (ex->top)
                TRY(top_issue(ex, &hl, 0, ex->top->lse != NULL, err));
            continue;
        }
        if (ex->top) {
            TRY(tp == 1 ? mc_step_top_rows(ex, &hl, c0, err) : head_top_tp(ex, &hl, c0, err));
            continue;
        }
        if (tp == 1) {
            mc_tensor ho;
            int64_t ro = rows_out(ex, c0, r);
            if (ro > 0 && (st = mc_tensor_view_rows(&hl, 0, ro, &ho, err)) == MC_OK)
                st = mc_tensor_download(&ho, logits + (size_t)c0 * (size_t)V, err);
            if (st != MC_OK)
                goto fail;
            continue;
        }
        TRY(mc_tensor_download(&hl, part, err));
        size_t *sc = cnt, *sd = cnt + tp, *rc = cnt + 2 * tp, *rd = cnt + 3 * tp;
        size_t mine = (size_t)r * (size_t)nv * sizeof(float);
        memset(cnt, 0, (size_t)4 * tp * sizeof *cnt);
        sc[0] = mine; /* everything to tp rank 0 */
        if (all)
            for (int p = 0; p < tp; p++) {
                int v0, nvp;
                mc_split((int)V, tp, p, &v0, &nvp);
                rc[p] = (size_t)r * nvp * sizeof(float);
                rd[p] = (size_t)r * v0 * sizeof(float); /* blocks (r, nvp) one after another */
            }
        double t = m->stats ? mc_now_s() : 0;
        st = mc_comm_all_to_all_v(m->tp_comm, part, mine, sc, sd, all,
                                  all ? (size_t)r * V * sizeof(float) : 0, rc, rd, err);
        if (m->stats) {
            m->stats[MC_STAT_HEAD(L)].t_comm += mc_now_s() - t;
            if (lay->tp_rank != 0)
                m->stats[MC_STAT_HEAD(L)].p2p_bytes += mine;
        }
        if (st != MC_OK)
            goto fail;
        if (!all || !logits)
            continue;
        for (int p = 0; p < tp; p++) { /* blocks -> rows of V */
            int v0, nvp;
            mc_split((int)V, tp, p, &v0, &nvp);
            const float *blk = all + (size_t)r * v0;
            for (int64_t i = 0; i < r; i++)
                memcpy(logits + (size_t)(c0 + i) * V + v0, blk + (size_t)i * nvp,
                       (size_t)nvp * sizeof(float));
        }
    }
fail:
    mc_arena_reset_to(ex->arena, mk);
    return st;
}

mc_status mc_step_head_fetch(mc_step_exec *ex, int64_t nl, float *logits, mc_err *err)
{
    int64_t ro = rows_out(ex, 0, nl);
    if (ro == 0)
        return MC_OK;
    if (ex->top)
        return top_rows_fetch(ex, nl, ro, 0, err);
    mc_tensor hl;
    mc_status st = mc_tensor_init_2d(&hl, ex->hlog.buf, ex->hlog.offset, MC_DT_F32, ro,
                                     ex->m->lay.n_vocab, err);
    return st == MC_OK && logits ? mc_tensor_download(&hl, logits, err) : st;
}
