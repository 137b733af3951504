/* cpu/backend_cpu_moe.c - the CPU backend's MoE block and LayerNorm ops:
 * router scoring and top-k, the permutation of token-expert pairs by
 * expert and back, the grouped expert FFN, LayerNorm. The front end
 * (backend.c) has validated shapes, dtypes and aliasing; what is left here
 * is the math and the checks on contents (expert ids, offsets, slots). The
 * router and the experts compute exactly what the reference computes
 * (tests/ref/ref_moe.c; same kernels, same order of operations), so results
 * are bit-identical to it. */
#include "backend.h"
#include "kernels.h"
#include "cpu/backend_cpu_internal.h"
#include "cpu/kern.h"
#include "pool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Element i of t in row-major order over its logical shape (a vector of
 * any shape). */
static float elem_f32(const mc_tensor *t, int64_t i)
{
    int64_t c = mc_tensor_cols(t);
    return row_f32(t, i / c)[i % c];
}

/* ---- router ---- */

/* One token. s, c: E floats; ok: E flags; gs: G floats, gok: G flags (scratch). */
static void route_row(const float *lg, const float *bias, const mc_router_opts *o, int E,
                      float *s, float *c, unsigned char *ok, float *gs, unsigned char *gok,
                      int32_t *ids, float *w)
{
    switch (o->score) {
    case MC_ROUTE_SOFTMAX:
        memcpy(s, lg, (size_t)E * sizeof *s);
        mc_softmax(s, E);
        break;
    case MC_ROUTE_SIGMOID:
    case MC_ROUTE_LOGIT_SIGMOID:
        for (int e = 0; e < E; e++)
            s[e] = mc_sigmoid(lg[e]);
        break;
    default: /* MC_ROUTE_SQRTSOFTPLUS */
        for (int e = 0; e < E; e++)
            s[e] = sqrtf(lg[e] > 20.0f ? lg[e] : log1pf(expf(lg[e])));
        break;
    }
    const float *base = o->score == MC_ROUTE_LOGIT_SIGMOID ? lg : s;
    for (int e = 0; e < E; e++) {
        c[e] = bias ? base[e] + bias[e] : base[e];
        ok[e] = 1;
    }
    if (o->n_group > 1 && o->topk_group < o->n_group) {
        int G = o->n_group, per = E / G;
        for (int g = 0; g < G; g++) {
            gs[g] = mc_top2_sum(c + (size_t)g * per, per);
            gok[g] = 1;
        }
        memset(ok, 0, (size_t)E);
        for (int j = 0; j < o->topk_group; j++) {
            int g = mc_argmax_masked(gs, gok, G);
            gok[g] = 0;
            memset(ok + (size_t)g * per, 1, (size_t)per);
        }
    }
    double sum = 0;
    for (int j = 0; j < o->k; j++) {
        int e = mc_argmax_masked(c, ok, E);
        ok[e] = 0;
        ids[j] = e;
        w[j] = s[e];
        sum += s[e];
    }
    if (o->renorm) {
        float denom = (float)sum + o->norm_eps;
        for (int j = 0; j < o->k; j++)
            w[j] /= denom;
    }
    for (int j = 0; j < o->k; j++)
        w[j] *= o->scale;
}

mc_status mc_cpu_router_topk(void *ctx, const mc_tensor *logits, const mc_tensor *bias,
                             const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                             mc_err *err)
{
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    int64_t n = mc_tensor_rows(logits);
    int E = (int)mc_tensor_cols(logits), G = opts->n_group > 1 ? opts->n_group : 1;
    /* bias as E contiguous floats (a one-row tensor) */
    const float *bp = bias ? row_f32(bias, 0) : NULL;
    float *s = mc_arena_alloc_n(sa, (size_t)2 * E + (size_t)G, sizeof *s); /* s [E], c [E], gs [G] */
    unsigned char *ok = mc_arena_alloc(sa, (size_t)E + (size_t)G, 0);             /* ok [E], gok [G] */
    if (!s || !ok) {
        mc_arena_reset_to(sa, mk);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory in router_topk");
    }
    for (int64_t t = 0; t < n; t++)
        route_row(row_f32(logits, t), bp, opts, E, s, s + E, ok, s + 2 * E, ok + E,
                  row_i32(ids, t), row_f32(weights, t));
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

/* ---- permutation by expert ---- */

mc_status mc_cpu_moe_permute(void *ctx, const mc_tensor *x, const mc_tensor *ids, mc_tensor *xp,
                             mc_tensor *slot, mc_tensor *offsets, mc_err *err)
{
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    int64_t n = mc_tensor_rows(x), k = mc_tensor_cols(ids), H = mc_tensor_cols(x);
    int64_t E = mc_tensor_nelems(offsets);
    E -= 1;
    for (int64_t t = 0; t < n; t++) /* all ids first: nothing is written on refusal */
        for (int64_t j = 0; j < k; j++) {
            int32_t e = row_i32(ids, t)[j];
            if (e < 0 || e >= E)
                return mc_err_set(err, MC_ERR_ARG, "moe_permute: ids[%lld, %lld] = %d is outside "
                                  "the %lld experts of offsets", (long long)t, (long long)j,
                                  (int)e, (long long)E);
        }
    int32_t *off = row_i32(offsets, 0); /* (E + 1) contiguous */
    int32_t *next = mc_arena_alloc_n(sa, (size_t)E, sizeof *next);
    if (!next)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory in moe_permute");
    /* counting sort by expert, stable in pair order t * k + j */
    memset(off, 0, (size_t)(E + 1) * sizeof *off);
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < k; j++)
            off[row_i32(ids, t)[j] + 1]++;
    for (int64_t e = 0; e < E; e++) {
        off[e + 1] += off[e];
        next[e] = off[e];
    }
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < k; j++) {
            int32_t r = next[row_i32(ids, t)[j]]++;
            row_i32(slot, t)[j] = r;
            memcpy(row_f32(xp, r), row_f32(x, t), (size_t)H * sizeof(float));
        }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

mc_status mc_cpu_moe_unpermute(void *ctx, const mc_tensor *yp, const mc_tensor *slot,
                               const mc_tensor *weights, mc_tensor *y, mc_err *err)
{
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    int64_t n = mc_tensor_rows(slot), k = mc_tensor_cols(slot), H = mc_tensor_cols(yp);
    int64_t m = mc_tensor_rows(yp);
    for (int64_t t = 0; t < n; t++) /* all slots first: nothing is written on refusal */
        for (int64_t j = 0; j < k; j++) {
            int32_t r = row_i32(slot, t)[j];
            if (r < 0 || r >= m)
                return mc_err_set(err, MC_ERR_ARG, "moe_unpermute: slot[%lld, %lld] = %d is "
                                  "outside yp's %lld rows", (long long)t, (long long)j, (int)r,
                                  (long long)m);
        }
    int *ord = mc_arena_alloc_n(sa, (size_t)k, sizeof *ord); /* the token's pairs j by ascending slot */
    if (!ord)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory in moe_unpermute");
    for (int64_t t = 0; t < n; t++) {
        const int32_t *sl = row_i32(slot, t);
        for (int j = 0; j < k; j++) { /* insertion sort: k is small */
            int i = j;
            for (; i > 0 && sl[ord[i - 1]] > sl[j]; i--)
                ord[i] = ord[i - 1];
            ord[i] = j;
        }
        float *yt = row_f32(y, t);
        memset(yt, 0, (size_t)H * sizeof *yt);
        for (int i = 0; i < k; i++) {
            const float *src = row_f32(yp, sl[ord[i]]);
            float wgt = weights ? row_f32(weights, t)[ord[i]] : 1.0f;
            for (int64_t h = 0; h < H; h++) {
                float p = wgt * src[h]; /* rounded, then added: as the reference */
                yt[h] += p;
            }
        }
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

/* ---- grouped experts ---- */

/* Scratch floats of g and u that one pass over experts may use: passes of
 * several experts share one wait for the threads per product kind, and this
 * bounds their memory at long prefills (an expert larger than it runs
 * alone). */
#define EXPERTS_PASS_FLOATS ((size_t)8 << 20)

/* The activation of one pass, split in runs of at most ACT_RUN values over
 * the kernels' pool (each value as on one thread: mc_silu, then the
 * product). */
#define ACT_RUN 4096

typedef struct {
    float *g;
    const float *u;
    size_t n;
} act_run;

typedef struct {
    const act_run *runs;
    float lim;
} act_job;

typedef struct {
    const mc_tensor *x, *gate, *up, *down, *rw;
    const int32_t *off;
    int w_in, H;
    float lim;
    const float *xin;      /* (m, H) weighted input when w_in */
    float *scratch;        /* g, u of the pass's experts */
    mc_matmul_item *items; /* [2 * experts in the pass] */
    mc_mat *mats;          /* [3 * experts in the pass] */
    float **gp;            /* [experts in the pass] */
    act_run *runs;         /* [runs of the activation of a pass] */
    mc_tensor *y;
} experts_pass;

static void act_task(void *ctx, int task, int thread)
{
    (void)thread;
    const act_job *j = ctx;
    float *g = j->runs[task].g;
    const float *u = j->runs[task].u;
    size_t gi = j->runs[task].n;
    if (j->lim > 0) { /* DeepSeek-V4: silu(min(g, L)) * clamp(u, -L, L) */
        float lim = j->lim;
        for (size_t i = 0; i < gi; i++) {
            float gv = g[i] > lim ? lim : g[i];
            float uv = u[i] > lim ? lim : u[i] < -lim ? -lim : u[i];
            g[i] = mc_silu(gv) * uv;
        }
    } else {
        for (size_t i = 0; i < gi; i++)
            g[i] = mc_silu(g[i]) * u[i];
    }
}

/* Experts [e0, e1) (those with rows): gate and up of all as one parallel
 * loop, the activation (one parallel loop), then down of all as another. Each product is the
 * one the reference computes (mc_matmul_many is bitwise mc_matmul per
 * product), so the results do not depend on how experts are grouped. */
static void run_pass(const experts_pass *p, int e0, int e1)
{
    const int32_t *off = p->off;
    size_t at = 0;
    int a = 0;
    for (int e = e0; e < e1; e++) {
        int r0 = off[e], ne = off[e + 1] - r0;
        if (ne == 0)
            continue; /* an expert with no rows costs nothing */
        int I = (int)p->gate[e].shape[0];
        float *g = p->scratch + at, *u = g + (size_t)ne * I;
        at += 2 * (size_t)ne * I;
        const float *xs = p->w_in ? p->xin + (size_t)r0 * p->H : row_f32(p->x, r0);
        int ldx = p->w_in ? p->H : (int)p->x->row_stride;
        p->mats[3 * a] = to_mat(&p->gate[e]);
        p->mats[3 * a + 1] = to_mat(&p->up[e]);
        p->mats[3 * a + 2] = to_mat(&p->down[e]);
        p->items[2 * a] = (mc_matmul_item){&p->mats[3 * a], xs, ne, ldx, g, I};     /* (ne, I) */
        p->items[2 * a + 1] = (mc_matmul_item){&p->mats[3 * a + 1], xs, ne, ldx, u, I}; /* (ne, I) */
        p->gp[a++] = g;
    }
    mc_matmul_many(p->items, 2 * a);
    int n_act = a;
    int nr = 0;
    size_t total = 0;
    a = 0;
    for (int e = e0; e < e1; e++) { /* the activation's runs; the down products (run after it) */
        int r0 = off[e], ne = off[e + 1] - r0;
        if (ne == 0)
            continue;
        int I = (int)p->gate[e].shape[0];
        float *g = p->gp[a];
        size_t gi = (size_t)ne * I;
        for (size_t i = 0; i < gi; i += ACT_RUN)
            p->runs[nr++] = (act_run){g + i, g + gi + i, gi - i < ACT_RUN ? gi - i : ACT_RUN};
        total += gi;
        p->items[a] = (mc_matmul_item){&p->mats[3 * a + 2], g, ne, I, row_f32(p->y, r0),
                                       (int)p->y->row_stride}; /* (ne, H) */
        a++;
    }
    act_job aj = {.runs = p->runs, .lim = p->lim};
    mc_pool *pool = total >= 2 * ACT_RUN ? mc_kernels_pool() : NULL;
    if (pool)
        mc_pool_run(pool, nr, act_task, &aj);
    else
        for (int i = 0; i < nr; i++)
            act_task(&aj, i, 0);
    mc_matmul_many(p->items, n_act);
}

mc_status mc_cpu_grouped_experts(void *ctx, const mc_tensor *x, const mc_tensor *offsets,
                                 int n_experts, const mc_tensor *gate, const mc_tensor *up,
                                 const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                                 mc_err *err)
{
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    int64_t m = mc_tensor_rows(x);
    int H = (int)mc_tensor_cols(x);
    const int32_t *off = row_i32(offsets, 0);
    if (off[0] != 0 || off[n_experts] != m)
        return mc_err_set(err, MC_ERR_ARG, "grouped_experts: offsets[0] = %d and offsets[%d] = "
                          "%d, want 0 and the %lld rows of x", (int)off[0], n_experts,
                          (int)off[n_experts], (long long)m);
    size_t max_gu = 0; /* floats of g and u of the largest expert */
    for (int e = 0; e < n_experts; e++) {
        if (off[e + 1] < off[e])
            return mc_err_set(err, MC_ERR_ARG, "grouped_experts: offsets[%d] = %d is less than "
                              "offsets[%d] = %d", e + 1, (int)off[e + 1], e, (int)off[e]);
        size_t gu = 2 * (size_t)(off[e + 1] - off[e]) * (size_t)gate[e].shape[0];
        if (gu > max_gu)
            max_gu = gu;
    }
    const mc_tensor *rw = opts ? opts->row_weight : NULL;
    int w_in = rw && opts->weight_input;
    size_t budget = max_gu > EXPERTS_PASS_FLOATS ? max_gu : EXPERTS_PASS_FLOATS;
    experts_pass p = {.x = x, .gate = gate, .up = up, .down = down, .rw = rw, .off = off,
                      .w_in = w_in, .H = H, .lim = opts ? opts->swiglu_limit : 0.0f, .y = y};
    /* scratch: g, u of one pass (<= budget floats); xin (m, H) when the input is weighted;
     * the product lists of a pass (at most every expert) */
    size_t gu_need = 0;
    for (int e = 0; e < n_experts; e++)
        gu_need += 2 * (size_t)(off[e + 1] - off[e]) * (size_t)gate[e].shape[0];
    if (gu_need > budget)
        gu_need = budget;
    p.scratch = mc_arena_alloc_n(sa, gu_need + 1, sizeof *p.scratch);
    float *xin = w_in ? mc_arena_alloc_n(sa, (size_t)m * H + 1, sizeof *xin) : NULL;
    p.items = mc_arena_alloc_n(sa, 2 * (size_t)n_experts, sizeof *p.items);
    p.mats = mc_arena_alloc_n(sa, 3 * (size_t)n_experts, sizeof *p.mats);
    p.gp = mc_arena_alloc_n(sa, (size_t)n_experts, sizeof *p.gp);
    /* runs of a pass: at most one per expert plus one per ACT_RUN values */
    p.runs = mc_arena_alloc_n(sa, (size_t)n_experts + gu_need / 2 / ACT_RUN + 1, sizeof *p.runs);
    if (!p.scratch || (w_in && !xin) || !p.items || !p.mats || !p.gp || !p.runs) {
        mc_arena_reset_to(sa, mk);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory in grouped_experts");
    }
    if (w_in) { /* Llama 4: the router weight scales the expert's input */
        for (int64_t r = 0; r < m; r++) {
            const float *xr = row_f32(x, r);
            float wj = elem_f32(rw, r);
            for (int h = 0; h < H; h++)
                xin[(size_t)r * H + h] = xr[h] * wj;
        }
        p.xin = xin;
    }
    int e0 = 0;
    size_t used = 0;
    for (int e = 0; e < n_experts; e++) {
        size_t gu = 2 * (size_t)(off[e + 1] - off[e]) * (size_t)gate[e].shape[0];
        if (used + gu > budget) { /* the pass is full: run it */
            run_pass(&p, e0, e);
            e0 = e;
            used = 0;
        }
        used += gu;
    }
    run_pass(&p, e0, n_experts);
    if (rw && !w_in)
        for (int64_t r = 0; r < m; r++) {
            float *yr = row_f32(y, r), wj = elem_f32(rw, r);
            for (int h = 0; h < H; h++)
                yr[h] = wj * yr[h];
        }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}

/* ---- LayerNorm ---- */

mc_status mc_cpu_layernorm(void *ctx, const mc_tensor *x, const mc_tensor *w, const mc_tensor *b,
                           float eps, mc_tensor *y, mc_err *err)
{
    (void)ctx;
    (void)err;
    int64_t d = mc_tensor_cols(x);
    const float *wp = w ? row_f32(w, 0) : NULL, *bp = b ? row_f32(b, 0) : NULL;
    for (int64_t r = 0; r < mc_tensor_rows(x); r++) {
        const float *xr = row_f32(x, r);
        float *yr = row_f32(y, r); /* may be xr: each element is read before it is written */
        double mean = 0, var = 0;
        for (int64_t i = 0; i < d; i++)
            mean += xr[i];
        mean /= (double)d;
        for (int64_t i = 0; i < d; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        double inv = 1.0 / sqrt(var / (double)d + (double)eps);
        for (int64_t i = 0; i < d; i++) {
            double v = (xr[i] - mean) * inv;
            if (wp)
                v *= wp[i];
            if (bp)
                v += bp[i];
            yr[i] = (float)v;
        }
    }
    return MC_OK;
}
