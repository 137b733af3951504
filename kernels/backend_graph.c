/* backend_graph.c - graphs of ops (backend.h, "graphs"): a backend's own
 * (the CUDA backend's CUDA graphs, through its capture entries), or for a
 * backend without them the op calls recorded by the front end and issued
 * again by mc_graph_launch. A recorded graph saves no time; it holds its
 * caller to what a device graph asks (nothing waits or allocates while it
 * is captured; a launch sees the tensors, shapes and scalars of the
 * capture, with what the buffers hold then), so the CPU acting as a device
 * runs the step executor's graphs in every test that runs it. */
#include "backend.h"
#include "backend_impl.h"
#include "backend_ops_internal.h"

#include <stdlib.h>
#include <string.h>

typedef enum {
    G_MATMUL,
    G_RMSNORM,
    G_ROPE,
    G_SWIGLU,
    G_ADD,
    G_SOFTMAX,
    G_EMBED,
    G_KV_WRITE,
    G_ATTENTION,
    G_MLA_DECODE,
    G_ROUTER_TOPK,
    G_PERMUTE,
    G_UNPERMUTE,
    G_EXPERTS,
    G_LAYERNORM,
    G_NOTE_NONFINITE,
    G_TOPK,
    G_MEMSET
} g_kind;

/* One recorded call: its tensors by value (t[i] given when bit i of has is
 * set, else NULL), its scalars and option structs (their tensor pointers
 * re-aimed at copies in t on launch). */
typedef struct {
    g_kind kind;
    mc_tensor t[8];
    unsigned has;
    float f;
    int64_t i0, i1;
    mc_kv_index ix;
    mc_attn_opts ao;
    mc_router_opts ro;
    mc_experts_opts eo;
    int has_opts;
    mc_tensor *ex; /* grouped experts: gate[n], up[n], down[n] */
    int n;
    mc_buffer *buf; /* memset */
    size_t off, len;
    int value;
} g_op;

struct mc_graph_rec {
    g_op *ops;
    size_t n, cap;
};

struct mc_graph {
    mc_backend *be;
    void *native;        /* the backend's graph, or NULL: ops below */
    struct mc_graph_rec *rec;
};

static void rec_free(struct mc_graph_rec *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->ops[i].ex);
    free(r->ops);
    free(r);
}

int mc_backend_capturing(const mc_backend *be) { return be->capturing; }

int mc_backend_graphs_native(const mc_backend *be) { return be->iface.capture_begin != NULL; }

mc_status mc_backend_capture_begin(mc_backend *be, mc_err *err)
{
    if (be->capturing)
        return mc_err_set(err, MC_ERR_ARG, "capture_begin: the %s backend is capturing already",
                          be->iface.name);
    be->cap_failed = MC_OK;
    mc_err_clear(&be->cap_why);
    if (be->iface.capture_begin) {
        mc_status st = be->iface.capture_begin(be->ctx, err);
        if (st == MC_OK)
            be->capturing = 1;
        return st;
    }
    be->rec = calloc(1, sizeof *be->rec);
    if (!be->rec)
        return mc_err_set(err, MC_ERR_NOMEM, "capture_begin: out of memory");
    be->capturing = 1;
    return MC_OK;
}

mc_status mc_backend_capture_end(mc_backend *be, mc_graph **out, mc_err *err)
{
    if (!out)
        return mc_err_set(err, MC_ERR_ARG, "capture_end: out is NULL");
    *out = NULL;
    if (!be->capturing)
        return mc_err_set(err, MC_ERR_ARG, "capture_end: the %s backend is not capturing",
                          be->iface.name);
    be->capturing = 0;
    mc_graph *g = calloc(1, sizeof *g);
    if (be->iface.capture_begin) {
        void *native = NULL;
        mc_status st = be->iface.capture_end(be->ctx, &native, err);
        if (be->cap_failed != MC_OK) { /* a call refused by the front end: not in the graph */
            mc_err_clear(err);
            st = mc_err_set(err, be->cap_failed, "%s", be->cap_why.msg);
        }
        if (st == MC_OK && !g)
            st = mc_err_set(err, MC_ERR_NOMEM, "capture_end: out of memory");
        if (st != MC_OK) {
            if (native)
                be->iface.graph_free(be->ctx, native);
            free(g);
            return st;
        }
        g->be = be;
        g->native = native;
        *out = g;
        return MC_OK;
    }
    struct mc_graph_rec *r = be->rec;
    be->rec = NULL;
    if (!g || be->cap_failed != MC_OK) {
        mc_status st = g ? mc_err_set(err, be->cap_failed, "%s", be->cap_why.msg)
                         : mc_err_set(err, MC_ERR_NOMEM, "capture_end: out of memory");
        free(g);
        rec_free(r);
        return st;
    }
    g->be = be;
    g->rec = r;
    *out = g;
    return MC_OK;
}

int mc_graph_stale(const mc_graph *g)
{
    return g && g->native && g->be->iface.graph_stale(g->be->ctx, g->native);
}

void mc_graph_free(mc_graph *g)
{
    if (!g)
        return;
    if (g->native)
        g->be->iface.graph_free(g->be->ctx, g->native);
    rec_free(g->rec);
    free(g);
}

/* ---- recording (a backend without graphs of its own) ---- */

/* A call that cannot be in a graph, made while capturing: the capture
 * fails (its end answers with this), and so does the call. */
mc_status mc_graph_refuse(mc_backend *be, const char *what, mc_err *err)
{
    char msg[256];
    snprintf(msg, sizeof msg, "%s while a graph is captured on the %s backend (it waits for the "
             "device or allocates; a graph holds launches only)", what, be->iface.name);
    if (be->capturing && be->cap_failed == MC_OK) {
        be->cap_failed = MC_ERR_UNSUPPORTED;
        mc_err_clear(&be->cap_why);
        mc_err_set(&be->cap_why, MC_ERR_UNSUPPORTED, "%s", msg);
    }
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s", msg);
}

static g_op *rec_new(mc_backend *be, g_kind kind, mc_err *err)
{
    struct mc_graph_rec *r = be->rec;
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        g_op *p = realloc(r->ops, cap * sizeof *p);
        if (!p) {
            mc_graph_refuse(be, "out of memory for a recorded op", NULL);
            mc_err_set(err, MC_ERR_NOMEM, "graph capture: out of memory");
            return NULL;
        }
        r->ops = p;
        r->cap = cap;
    }
    g_op *o = &r->ops[r->n++];
    memset(o, 0, sizeof *o);
    o->kind = kind;
    return o;
}

static void put(g_op *o, int i, const mc_tensor *t)
{
    if (t) {
        o->t[i] = *t;
        o->has |= 1u << i;
    }
}

#define REC(kind_)                                                                                 \
    g_op *o = rec_new(be, kind_, err);                                                             \
    if (!o)                                                                                        \
        return MC_ERR_NOMEM

mc_status mc_rec_matmul(mc_backend *be, const mc_tensor *w, const mc_tensor *x, mc_tensor *y,
                        mc_err *err)
{
    REC(G_MATMUL);
    put(o, 0, w), put(o, 1, x), put(o, 2, y);
    return MC_OK;
}

mc_status mc_rec_rmsnorm(mc_backend *be, const mc_tensor *x, const mc_tensor *w, float eps,
                         mc_tensor *y, mc_err *err)
{
    REC(G_RMSNORM);
    put(o, 0, x), put(o, 1, w), put(o, 2, y);
    o->f = eps;
    return MC_OK;
}

mc_status mc_rec_layernorm(mc_backend *be, const mc_tensor *x, const mc_tensor *w,
                           const mc_tensor *b, float eps, mc_tensor *y, mc_err *err)
{
    REC(G_LAYERNORM);
    put(o, 0, x), put(o, 1, w), put(o, 2, b), put(o, 3, y);
    o->f = eps;
    return MC_OK;
}

mc_status mc_rec_rope(mc_backend *be, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                      const mc_tensor *sn, int interleaved, mc_err *err)
{
    REC(G_ROPE);
    put(o, 0, x), put(o, 1, pos), put(o, 2, cs), put(o, 3, sn);
    o->i0 = interleaved;
    return MC_OK;
}

mc_status mc_rec_binary(mc_backend *be, int add, const mc_tensor *a, const mc_tensor *b,
                        mc_tensor *y, mc_err *err)
{
    REC(add ? G_ADD : G_SWIGLU);
    put(o, 0, a), put(o, 1, b), put(o, 2, y);
    return MC_OK;
}

mc_status mc_rec_softmax(mc_backend *be, const mc_tensor *x, mc_tensor *y, mc_err *err)
{
    REC(G_SOFTMAX);
    put(o, 0, x), put(o, 1, y);
    return MC_OK;
}

mc_status mc_rec_embed(mc_backend *be, const mc_tensor *table, const mc_tensor *ids, int64_t id0,
                       mc_tensor *y, mc_err *err)
{
    REC(G_EMBED);
    put(o, 0, table), put(o, 1, ids), put(o, 2, y);
    o->i0 = id0;
    return MC_OK;
}

mc_status mc_rec_kv_write(mc_backend *be, const mc_kv_index *ix, const mc_tensor *src,
                          mc_tensor *pages, mc_err *err)
{
    REC(G_KV_WRITE);
    o->ix = *ix;
    put(o, 0, src), put(o, 1, pages);
    return MC_OK;
}

/* The attention options with their tensors kept in t[6], t[7]. */
static void put_attn(g_op *o, const mc_kv_index *ix, const mc_attn_opts *opt)
{
    o->ix = *ix;
    o->ao = *opt;
    put(o, 6, opt->q_scale);
    put(o, 7, opt->sel);
}

mc_status mc_rec_attention(mc_backend *be, const mc_tensor *q, const mc_tensor *k_pages,
                           const mc_tensor *v_pages, const mc_kv_index *ix,
                           const mc_attn_opts *opt, mc_tensor *y, mc_err *err)
{
    REC(G_ATTENTION);
    put(o, 0, q), put(o, 1, k_pages), put(o, 2, v_pages), put(o, 3, y);
    put_attn(o, ix, opt);
    return MC_OK;
}

mc_status mc_rec_mla_decode(mc_backend *be, const mc_tensor *q_lat, const mc_tensor *q_pe,
                            const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                            const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                            mc_err *err)
{
    REC(G_MLA_DECODE);
    put(o, 0, q_lat), put(o, 1, q_pe), put(o, 2, lat_pages), put(o, 3, pe_pages), put(o, 4, y);
    put_attn(o, ix, opt);
    return MC_OK;
}

mc_status mc_rec_router_topk(mc_backend *be, const mc_tensor *logits, const mc_tensor *bias,
                             const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                             mc_err *err)
{
    REC(G_ROUTER_TOPK);
    put(o, 0, logits), put(o, 1, bias), put(o, 2, ids), put(o, 3, weights);
    o->ro = *opts;
    return MC_OK;
}

mc_status mc_rec_permute(mc_backend *be, const mc_tensor *x, const mc_tensor *ids, mc_tensor *xp,
                         mc_tensor *slot, mc_tensor *offsets, mc_err *err)
{
    REC(G_PERMUTE);
    put(o, 0, x), put(o, 1, ids), put(o, 2, xp), put(o, 3, slot), put(o, 4, offsets);
    return MC_OK;
}

mc_status mc_rec_unpermute(mc_backend *be, const mc_tensor *yp, const mc_tensor *slot,
                           const mc_tensor *weights, mc_tensor *y, mc_err *err)
{
    REC(G_UNPERMUTE);
    put(o, 0, yp), put(o, 1, slot), put(o, 2, weights), put(o, 3, y);
    return MC_OK;
}

mc_status mc_rec_experts(mc_backend *be, const mc_tensor *x, const mc_tensor *offsets,
                         int n_experts, const mc_tensor *gate, const mc_tensor *up,
                         const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                         mc_err *err)
{
    mc_tensor *ex = malloc(3 * (size_t)(n_experts > 0 ? n_experts : 1) * sizeof *ex);
    if (!ex) {
        mc_graph_refuse(be, "out of memory for a recorded op", NULL);
        return mc_err_set(err, MC_ERR_NOMEM, "graph capture: out of memory");
    }
    g_op *o = rec_new(be, G_EXPERTS, err);
    if (!o) {
        free(ex);
        return MC_ERR_NOMEM;
    }
    memcpy(ex, gate, (size_t)n_experts * sizeof *ex);
    memcpy(ex + n_experts, up, (size_t)n_experts * sizeof *ex);
    memcpy(ex + 2 * (size_t)n_experts, down, (size_t)n_experts * sizeof *ex);
    o->ex = ex;
    o->n = n_experts;
    put(o, 0, x), put(o, 1, offsets), put(o, 2, y);
    if (opts) {
        o->has_opts = 1;
        o->eo = *opts;
        put(o, 7, opts->row_weight);
    }
    return MC_OK;
}

mc_status mc_rec_note_nonfinite(mc_backend *be, const mc_tensor *x, int64_t tag, mc_err *err)
{
    REC(G_NOTE_NONFINITE);
    put(o, 0, x);
    o->i0 = tag;
    return MC_OK;
}

mc_status mc_rec_topk(mc_backend *be, const mc_tensor *x, int k, int64_t id0, mc_tensor *ids,
                      mc_tensor *vals, mc_tensor *lse, mc_err *err)
{
    REC(G_TOPK);
    put(o, 0, x), put(o, 1, ids), put(o, 2, vals), put(o, 3, lse);
    o->i0 = k;
    o->i1 = id0;
    return MC_OK;
}

mc_status mc_rec_memset(mc_backend *be, mc_buffer *b, size_t off, int value, size_t n,
                        mc_err *err)
{
    REC(G_MEMSET);
    o->buf = b;
    o->off = off;
    o->value = value;
    o->len = n;
    return MC_OK;
}

/* ---- launch ---- */

#define T(i) ((o->has >> (i)) & 1u ? &o->t[i] : NULL)

static mc_status issue(mc_backend *be, g_op *o, mc_err *err)
{
    const mc_backend_i *I = &be->iface;
    void *c = be->ctx;
    switch (o->kind) {
    case G_MATMUL: return I->matmul(c, T(0), T(1), T(2), err);
    case G_RMSNORM: return I->rmsnorm(c, T(0), T(1), o->f, T(2), err);
    case G_LAYERNORM: return I->layernorm(c, T(0), T(1), T(2), o->f, T(3), err);
    case G_ROPE: return I->rope(c, T(0), T(1), T(2), T(3), (int)o->i0, err);
    case G_SWIGLU: return I->swiglu(c, T(0), T(1), T(2), err);
    case G_ADD: return I->add(c, T(0), T(1), T(2), err);
    case G_SOFTMAX: return I->softmax(c, T(0), T(1), err);
    case G_EMBED: return I->embed(c, T(0), T(1), o->i0, T(2), err);
    case G_KV_WRITE: return I->kv_write(c, &o->ix, T(0), T(1), err);
    case G_ATTENTION:
    case G_MLA_DECODE: {
        mc_attn_opts ao = o->ao;
        ao.q_scale = T(6);
        ao.sel = T(7);
        return o->kind == G_ATTENTION
                   ? I->attention(c, T(0), T(1), T(2), &o->ix, &ao, T(3), err)
                   : I->mla_decode(c, T(0), T(1), T(2), T(3), &o->ix, &ao, T(4), err);
    }
    case G_ROUTER_TOPK: return I->router_topk(c, T(0), T(1), &o->ro, T(2), T(3), err);
    case G_PERMUTE: return I->moe_permute(c, T(0), T(1), T(2), T(3), T(4), err);
    case G_UNPERMUTE: return I->moe_unpermute_weighted(c, T(0), T(1), T(2), T(3), err);
    case G_EXPERTS: {
        mc_experts_opts eo = o->eo;
        eo.row_weight = T(7);
        return I->grouped_experts(c, T(0), T(1), o->n, o->ex, o->ex + o->n, o->ex + 2 * o->n,
                                  o->has_opts ? &eo : NULL, T(2), err);
    }
    case G_NOTE_NONFINITE: return I->note_nonfinite(c, T(0), o->i0, err);
    case G_TOPK: return I->topk(c, T(0), (int)o->i0, o->i1, T(1), T(2), T(3), err);
    case G_MEMSET: return I->memset(c, mc_buffer_mem(o->buf), o->off, o->value, o->len, err);
    }
    return mc_err_set(err, MC_ERR_INTERNAL, "graph: recorded op %d is unknown", (int)o->kind);
}

mc_status mc_graph_launch(mc_graph *g, mc_err *err)
{
    if (!g)
        return mc_err_set(err, MC_ERR_ARG, "graph_launch: graph is NULL");
    mc_backend *be = g->be;
    if (be->capturing)
        return mc_graph_refuse(be, "graph_launch", err);
    if (g->native) {
        if (be->iface.graph_stale(be->ctx, g->native))
            return mc_err_set(err, MC_ERR_ARG, "graph_launch: the graph is stale (the %s backend "
                              "replaced memory it captured): capture it again", be->iface.name);
        return be->iface.graph_launch(be->ctx, g->native, err);
    }
    for (size_t i = 0; i < g->rec->n; i++) {
        mc_status st = issue(be, &g->rec->ops[i], err);
        if (st != MC_OK)
            return st;
    }
    return MC_OK;
}

size_t mc_graph_ops(const mc_graph *g) { return g && g->rec ? g->rec->n : 0; }
