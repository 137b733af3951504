/* ref_moe.c - the per-call reference implementation kept for tests (ref.h;
 * single process: the engine runs worker/step_block.c and the backend's MoE
 * ops). Router (top-k choice), expert-parallel dispatch / combine, and the
 * routed and shared expert computation. */
#include "nonfinite.h"
#include "parallel.h"
#include "ref_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void mc_route_token(const mc_model_desc *d, const float *logits, const float *bias, int *idx,
                    float *weight)
{
    int E = d->n_experts, k = d->n_experts_per_tok;
    float scores[E], choice[E];
    unsigned char allowed[E];
    if (d->router == MC_ROUTER_LLAMA4) {
        /* top-k of the raw logits; the weight is the sigmoid of the logit */
        memset(allowed, 1, sizeof allowed);
        for (int j = 0; j < k; j++) {
            int e = mc_argmax_masked(logits, allowed, E);
            allowed[e] = 0;
            idx[j] = e;
            weight[j] = mc_sigmoid(logits[e]);
        }
        return;
    }
    memcpy(scores, logits, sizeof scores);
    if (d->score_func == MC_SCORE_SOFTMAX)
        mc_softmax(scores, E);
    else
        for (int e = 0; e < E; e++)
            scores[e] = mc_sigmoid(scores[e]);
    for (int e = 0; e < E; e++) {
        choice[e] = bias ? scores[e] + bias[e] : scores[e];
        allowed[e] = 1;
    }
    if (d->n_group > 1 && d->topk_group < d->n_group) {
        /* Group-limited: a group scores the sum of its two best choice scores;
         * keep the topk_group best groups. */
        int G = d->n_group, per = E / G;
        float gscore[G];
        unsigned char gallow[G], gkeep[G];
        for (int g = 0; g < G; g++) {
            gscore[g] = mc_top2_sum(choice + g * per, per);
            gallow[g] = 1;
            gkeep[g] = 0;
        }
        for (int j = 0; j < d->topk_group; j++) {
            int g = mc_argmax_masked(gscore, gallow, G);
            gallow[g] = 0;
            gkeep[g] = 1;
        }
        for (int e = 0; e < E; e++)
            allowed[e] = gkeep[e / per];
    }
    double sum = 0;
    for (int j = 0; j < k; j++) {
        int e = mc_argmax_masked(choice, allowed, E);
        allowed[e] = 0;
        idx[j] = e;
        weight[j] = scores[e];
        sum += scores[e];
    }
    if (d->norm_topk_prob) {
        float denom = (float)sum + (d->score_func == MC_SCORE_SIGMOID ? 1e-20f : 0.0f);
        for (int j = 0; j < k; j++)
            weight[j] /= denom;
    }
    for (int j = 0; j < k; j++)
        weight[j] *= d->routed_scale;
}

void mc_ffn(const mc_ffn_w *f, const float *x, int n, int ldx, float *y, int ldy, float *scratch)
{
    int I = f->gate.rows;
    float *g = scratch, *u = scratch + (size_t)n * I;
    mc_matmul(&f->gate, x, n, ldx, g, I);
    mc_matmul(&f->up, x, n, ldx, u, I);
    for (size_t i = 0; i < (size_t)n * I; i++)
        g[i] = mc_silu(g[i]) * u[i];
    mc_matmul(&f->down, g, n, I, y, ldy);
}

/* One dispatched token-expert pair: the token's activation, the expert id
 * and the router weight, as (H + 2) floats. */
#define REC_FLOATS(H) ((size_t)(H) + 2)

static void rec_pack(float *rec, const float *x, int H, int expert, float weight)
{
    int32_t e = expert;
    memcpy(rec, x, (size_t)H * sizeof *rec);
    memcpy(rec + H, &e, sizeof e);
    rec[H + 1] = weight;
}

static int rec_expert(const float *rec, int H)
{
    int32_t e;
    memcpy(&e, rec + H, sizeof e);
    return e;
}

/* Runs the received pairs (nr records) through this rank's experts, one
 * grouped FFN per expert, and writes each pair's weighted output to
 * out[i] (rows in record order). */
static mc_status run_experts(const mc_model *m, const mc_layer_w *w, const float *recs, int nr,
                             float *out, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    int H = d->hidden, e0 = m->lay.expert0, ne_local = m->lay.expert1 - e0;
    size_t rf = REC_FLOATS(H);
    mc_status st = MC_OK;
    int *count = calloc((size_t)ne_local + 1, sizeof *count);
    int *fill = calloc((size_t)ne_local + 1, sizeof *fill);
    int *slot = mc_malloc_n((size_t)nr, sizeof *slot);
    float *xin = mc_malloc_n((size_t)nr * H, sizeof *xin);
    float *yout = mc_malloc_n((size_t)nr * H, sizeof *yout);
    float *scratch = mc_malloc_n((size_t)2 * nr * (d->moe_inter > 0 ? d->moe_inter : 1),
                                 sizeof *scratch);
    if (!count || !fill || !slot || !xin || !yout || !scratch) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in the MoE layer");
        goto done;
    }
    /* group the pairs by local expert: counting sort, stable in arrival order */
    for (int i = 0; i < nr; i++) {
        int e = rec_expert(recs + (size_t)i * rf, H);
        if (e < e0 || e >= e0 + ne_local) { /* from a peer: never trusted */
            st = mc_err_set(err, MC_ERR_INTERNAL,
                            "rank %d received a token for expert %d but holds experts %d..%d",
                            m->lay.rank, e, e0, e0 + ne_local - 1);
            goto done;
        }
        count[e - e0 + 1]++;
    }
    for (int e = 0; e < ne_local; e++)
        count[e + 1] += count[e];
    for (int i = 0; i < nr; i++) {
        int e = rec_expert(recs + (size_t)i * rf, H) - e0;
        slot[count[e] + fill[e]++] = i;
    }
    /* Llama 4 scales the expert's input by the router weight instead of its output */
    bool scale_in = d->router == MC_ROUTER_LLAMA4;
    for (int e = 0; e < ne_local; e++) {
        int c0 = count[e], ne = count[e + 1] - c0;
        if (ne == 0)
            continue; /* an expert with no tokens costs nothing */
        for (int j = 0; j < ne; j++) {
            const float *r = recs + (size_t)slot[c0 + j] * rf;
            float *xi = xin + (size_t)j * H;
            memcpy(xi, r, (size_t)H * sizeof *xi);
            if (scale_in)
                for (int i = 0; i < H; i++)
                    xi[i] *= r[H + 1];
        }
        mc_ffn(&w->experts[e0 + e], xin, ne, H, yout, H, scratch);
        for (int j = 0; j < ne; j++) {
            int s = slot[c0 + j];
            float wgt = scale_in ? 1.0f : recs[(size_t)s * rf + H + 1];
            float *o = out + (size_t)s * H;
            const float *yo = yout + (size_t)j * H;
            for (int i = 0; i < H; i++)
                o[i] = wgt * yo[i];
        }
    }
done:
    free(count);
    free(fill);
    free(slot);
    free(xin);
    free(yout);
    free(scratch);
    return st;
}

/* y[n, H] = routed experts + shared experts of layer l for this rank.
 *
 * The tp ranks of a group hold the same n tokens; each routes and
 * dispatches only its slice [t0, t0+nt) (mc_split), so rows outside it get
 * only this rank's share of the shared expert, and the caller's tp
 * all-reduce completes every row. Within the slice:
 *   route     top-k experts and weights per token (router replicated);
 *   dispatch  all_to_all_v over the ep group: each (token, expert) pair
 *             goes to the rank holding the expert, as (activation, expert
 *             id, weight), pairs ordered by expert;
 *   experts   the receiver runs one grouped FFN per local expert and
 *             weights each output;
 *   combine   all_to_all_v back, in the order the pairs were sent; each
 *             token sums its experts' outputs in expert order, as the
 *             single-process loop over experts does.
 * Every rank of the ep group calls this once per MoE layer, also with n = 0. */
mc_status mc_moe(mc_model *m, int l, const mc_layer_w *w, const float *x, int n, float *y,
                 mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_layout *lay = &m->lay;
    int E = d->n_experts, k = d->n_experts_per_tok, H = d->hidden, P = lay->ep;
    size_t rf = REC_FLOATS(H), rb = rf * sizeof(float), hb = (size_t)H * sizeof(float);
    int t0, nt;
    mc_split(n, lay->tp, lay->tp_rank, &t0, &nt);
    int np = nt * k, nr = 0;
    mc_status st = MC_OK;
    float *logits = mc_malloc_n((size_t)nt * E, sizeof *logits); /* (nt, E) */
    int *idx = mc_malloc_n((size_t)np, sizeof *idx);                /* (nt, k) */
    float *wt = mc_malloc_n((size_t)np, sizeof *wt);                /* (nt, k) */
    int *count = calloc((size_t)E + 1, sizeof *count);
    int *fill = calloc((size_t)E, sizeof *fill);
    int *order = mc_malloc_n((size_t)np, sizeof *order); /* pairs (t*k + j) sorted by expert */
    float *sendb = mc_malloc_n((size_t)np * rf, sizeof *sendb);     /* (np, H + 2) */
    float *back = mc_malloc_n((size_t)np * H, sizeof *back);        /* (np, H) */
    size_t *cnt = calloc((size_t)8 * P, sizeof *cnt);
    uint64_t *pairs_to = calloc((size_t)2 * P, sizeof *pairs_to);
    float *recvb = NULL, *out = NULL;
    if (!logits || !idx || !wt || !count || !fill || !order || !sendb || !back || !cnt ||
        !pairs_to) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in the MoE layer");
        goto done;
    }
    size_t *sc = cnt, *sd = cnt + P, *rc = cnt + 2 * P, *rd = cnt + 3 * P;
    size_t *csc = cnt + 4 * P, *csd = cnt + 5 * P, *crc = cnt + 6 * P, *crd = cnt + 7 * P;
    uint64_t *pairs_from = pairs_to + P;
    /* route this rank's slice of the tokens */
    const float *xs = x + (size_t)t0 * H;
    if (nt > 0)
        mc_matmul(&w->router, xs, nt, H, logits, E);
    for (int t = 0; t < nt; t++)
        mc_route_token(d, logits + (size_t)t * E, w->score_bias, idx + (size_t)t * k,
                       wt + (size_t)t * k);
    /* order the pairs by expert (counting sort, stable in token order): that
     * groups them by owning rank too, since ranks hold contiguous experts */
    for (int i = 0; i < np; i++)
        count[idx[i] + 1]++;
    for (int e = 0; e < E; e++)
        count[e + 1] += count[e];
    for (int i = 0; i < np; i++)
        order[count[idx[i]] + fill[idx[i]]++] = i;
    for (int i = 0; i < np; i++) {
        int s = order[i];
        rec_pack(sendb + (size_t)i * rf, xs + (size_t)(s / k) * H, H, idx[s], wt[s]);
        pairs_to[mc_layout_expert_owner(lay, E, idx[s])]++;
    }
    /* dispatch, 1: how many pairs each rank gets */
    for (int p = 0; p < P; p++) {
        sc[p] = rc[p] = sizeof(uint64_t);
        sd[p] = rd[p] = (size_t)p * sizeof(uint64_t);
    }
    if ((st = mc_ep_exchange(m, l, true, pairs_to, (size_t)P * sizeof(uint64_t), sc, sd,
                             pairs_from, (size_t)P * sizeof(uint64_t), rc, rd, err)) != MC_OK)
        goto done;
    for (int p = 0; p < P; p++) {
        if (pairs_from[p] > (uint64_t)INT32_MAX / (uint64_t)P) {
            st = mc_err_set(err, MC_ERR_INTERNAL, "rank %d: ep peer %d announced %llu tokens",
                            lay->rank, p, (unsigned long long)pairs_from[p]);
            goto done;
        }
        nr += (int)pairs_from[p];
    }
    /* dispatch, 2: the pairs themselves, to the ranks holding their experts */
    size_t so = 0, ro = 0;
    for (int p = 0; p < P; p++) {
        sc[p] = pairs_to[p] * rb;
        sd[p] = so;
        so += sc[p];
        rc[p] = pairs_from[p] * rb;
        rd[p] = ro;
        ro += rc[p];
    }
    recvb = mc_malloc_n((size_t)nr * rf, sizeof *recvb); /* (nr, H + 2) */
    out = mc_malloc_n((size_t)nr * H, sizeof *out);      /* (nr, H) */
    if (!recvb || !out) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for %d dispatched tokens", nr);
        goto done;
    }
    if ((st = mc_ep_exchange(m, l, true, sendb, (size_t)np * rb, sc, sd, recvb, (size_t)nr * rb,
                             rc, rd, err)) != MC_OK)
        goto done;
    if ((st = run_experts(m, w, recvb, nr, out, err)) != MC_OK)
        goto done;
    /* under ep the tokens may be another rank's: the rank holding a NaN
     * expert names it before sending its outputs back */
    if (lay->ep > 1 &&
        (st = mc_nf_check(m, MC_NF_EXPERTS, l, out, nr, (size_t)H, 0, NULL, err)) != MC_OK)
        goto done;
    if (m->stats) {
        mc_stat_row *r = &m->stats[l];
        r->disp_tokens += (uint64_t)np;
        r->disp_remote += (uint64_t)np - pairs_to[lay->ep_rank];
        r->expert_tokens += (uint64_t)nr;
    }
    /* combine: each pair's weighted output back to the rank that sent it */
    so = ro = 0;
    for (int p = 0; p < P; p++) {
        csc[p] = pairs_from[p] * hb;
        csd[p] = so;
        so += csc[p];
        crc[p] = pairs_to[p] * hb;
        crd[p] = ro;
        ro += crc[p];
    }
    if ((st = mc_ep_exchange(m, l, false, out, (size_t)nr * hb, csc, csd, back, (size_t)np * hb,
                             crc, crd, err)) != MC_OK)
        goto done;
    /* y = routed outputs (in expert order per token) + shared experts */
    memset(y, 0, (size_t)n * H * sizeof *y);
    for (int i = 0; i < np; i++) {
        float *yt = y + (size_t)(t0 + order[i] / k) * H;
        const float *b = back + (size_t)i * H;
        for (int j = 0; j < H; j++)
            yt[j] += b[j];
    }
    if (w->has_shared && n > 0) {
        /* shared experts: column-then-row split over tp like a dense FFN, all tokens */
        float *ys = mc_malloc_n((size_t)n * H, sizeof *ys);
        float *scr = mc_malloc_n((size_t)2 * n * w->shared.gate.rows, sizeof *scr);
        if (!ys || !scr) {
            free(ys);
            free(scr);
            st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in the MoE layer");
            goto done;
        }
        mc_ffn(&w->shared, x, n, H, ys, H, scr);
        for (size_t i = 0; i < (size_t)n * H; i++)
            y[i] += ys[i];
        free(ys);
        free(scr);
    }
done:
    free(logits);
    free(idx);
    free(wt);
    free(count);
    free(fill);
    free(order);
    free(sendb);
    free(back);
    free(cnt);
    free(pairs_to);
    free(recvb);
    free(out);
    return st;
}
