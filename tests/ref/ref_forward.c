/* ref_forward.c - the per-call reference implementation kept for tests
 * (ref.h; single process: the engine runs worker/step*.c). The decoder stack
 * of one rank: embed (or receive from the previous stage), this stage's
 * blocks, then send to the next stage or final norm + LM head. Every
 * collective is called here or in mc_moe, by name, where the math needs it;
 * on a model loaded in one process they are no-ops on self communicators. */
#include "log.h"
#include "nonfinite.h"
#include "parallel.h"
#include "ref_internal.h"
#include "rope.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One decoder block on n tokens: x += attn(norm(x)); x += ffn(norm(x)).
 * n may be 0 (this dp group has no tokens): then only the MoE layer's
 * expert exchange runs, which the rest of the ep group waits for. */
static mc_status block_forward(mc_model *m, int l, mc_kv *kv, float *x, int n, const float *cs,
                               const float *sn, float *xn, float *tmp, float *scratch, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_layer_w *w = &m->layers[l];
    int H = d->hidden;
    size_t nH = (size_t)n * H;
    mc_status st;
    mc_fault_check(m, l);
    if (n > 0) {
        for (int t = 0; t < n; t++)
            mc_rmsnorm(xn + (size_t)t * H, x + (size_t)t * H, w->attn_norm, H, d->norm_eps);
        st = d->attn == MC_ATTN_MLA ? mc_attn_mla(m, w, kv, l, xn, n, cs, sn, tmp, err)
                                    : mc_attn_gqa(m, w, kv, l, xn, n, cs, sn, tmp, err);
        if (st != MC_OK)
            return st;
        /* row-split wo: partial sums over this rank's heads */
        if ((st = mc_tp_all_reduce(m, l, tmp, nH, err)) != MC_OK)
            return st;
        for (size_t i = 0; i < nH; i++)
            x[i] += tmp[i];
        /* NaN / Inf: stop here and name the weight, rather than emit NaN logits */
        if ((st = mc_nf_check(m, MC_NF_ATTN, l, x, n, (size_t)H, kv->len, NULL, err)) != MC_OK)
            return st;
        for (int t = 0; t < n; t++)
            mc_rmsnorm(xn + (size_t)t * H, x + (size_t)t * H, w->ffn_norm, H, d->norm_eps);
    }
    if (w->moe) {
        /* dispatch / combine over the ep group happen inside */
        if ((st = mc_moe(m, l, w, xn, n, tmp, err)) != MC_OK)
            return st;
    } else if (n > 0) {
        mc_ffn(&w->dense, xn, n, H, tmp, H, scratch); /* column-then-row split over tp */
    }
    if (n > 0) {
        /* row-split FFN down projections (and each tp rank's share of the routed tokens) */
        if ((st = mc_tp_all_reduce(m, l, tmp, nH, err)) != MC_OK)
            return st;
        for (size_t i = 0; i < nH; i++)
            x[i] += tmp[i];
        if ((st = mc_nf_check(m, MC_NF_FFN, l, x, n, (size_t)H, kv->len, NULL, err)) != MC_OK)
            return st;
    }
    return MC_OK;
}

/* Embedding rows of n tokens into x [n, H]. Under tp each rank holds the
 * rows of its vocabulary slice: it writes those and zeros elsewhere, and
 * the all-reduce over the tp group completes every row (exactly: one
 * non-zero term per element). */
static mc_status embed(mc_model *m, const int64_t *tokens, int n, float *x, mc_err *err)
{
    int H = m->d.hidden, v0 = m->lay.vocab0, nv = m->lay.n_vocab;
    for (int i = 0; i < n; i++) {
        int id = (int)tokens[i] - v0;
        if (id >= 0 && id < nv)
            mc_mat_row_f32(&m->embed, id, x + (size_t)i * H);
        else
            memset(x + (size_t)i * H, 0, (size_t)H * sizeof *x);
    }
    if (m->lay.tp == 1 || n == 0)
        return MC_OK;
    return mc_tp_all_reduce(m, MC_STAT_HEAD(m->d.n_layers), x, (size_t)n * H, err);
}

/* Final norm and the LM head on rows [t0, n) of x: each tp rank computes
 * the logits of its vocabulary slice, then they are gathered (all_to_all_v
 * to tp rank 0 only) into logits [n - t0, V] on tp rank 0. Row t0 is at
 * position pos0 (for messages about non-finite logits). */
static mc_status head_forward(mc_model *m, const float *x, int t0, int n, int pos0, float *xn,
                              float *logits, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_layout *lay = &m->lay;
    int H = d->hidden, V = d->vocab, rows = n - t0, tp = lay->tp;
    for (int t = t0; t < n; t++)
        mc_rmsnorm(xn + (size_t)t * H, x + (size_t)t * H, m->final_norm, H, d->norm_eps);
    if (tp == 1) {
        mc_matmul(&m->lm_head, xn + (size_t)t0 * H, rows, H, logits, V);
        return mc_nf_check(m, MC_NF_HEAD, 0, logits, rows, (size_t)V, pos0, NULL, err);
    }
    int nv = lay->n_vocab;
    size_t mine = (size_t)rows * nv * sizeof(float);
    float *part = mc_malloc_n((size_t)rows * nv, sizeof *part);   /* (rows, nv) */
    float *all = lay->tp_rank == 0 ? mc_malloc_n((size_t)rows * V, sizeof *all) : NULL;
    size_t *cnt = calloc((size_t)4 * tp, sizeof *cnt);
    mc_status st = MC_OK;
    if (!part || (lay->tp_rank == 0 && !all) || !cnt) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for the LM head");
        goto done;
    }
    mc_matmul(&m->lm_head, xn + (size_t)t0 * H, rows, H, part, nv);
    /* each tp rank checks its vocabulary slice */
    if ((st = mc_nf_check(m, MC_NF_HEAD, 0, part, rows, (size_t)nv, pos0, NULL, err)) != MC_OK)
        goto done;
    size_t *sc = cnt, *sd = cnt + tp, *rc = cnt + 2 * tp, *rd = cnt + 3 * tp;
    sc[0] = mine; /* everything to tp rank 0 */
    if (lay->tp_rank == 0)
        for (int p = 0; p < tp; p++) {
            int v0, nvp;
            mc_split(V, tp, p, &v0, &nvp);
            rc[p] = (size_t)rows * nvp * sizeof(float);
            rd[p] = (size_t)rows * v0 * sizeof(float); /* blocks (rows, nvp) one after another */
        }
    int row = MC_STAT_HEAD(d->n_layers);
    double t = mc_now_s();
    st = mc_comm_all_to_all_v(m->tp_comm, part, mine, sc, sd, all,
                              all ? (size_t)rows * V * sizeof(float) : 0, rc, rd, err);
    if (m->stats) {
        m->stats[row].t_comm += mc_now_s() - t;
        if (lay->tp_rank != 0)
            m->stats[row].p2p_bytes += mine;
    }
    if (st != MC_OK || lay->tp_rank != 0)
        goto done;
    for (int p = 0; p < tp; p++) { /* blocks -> rows of V */
        int v0, nvp;
        mc_split(V, tp, p, &v0, &nvp);
        const float *blk = all + (size_t)rows * v0;
        for (int r = 0; r < rows; r++)
            memcpy(logits + (size_t)r * V + v0, blk + (size_t)r * nvp, (size_t)nvp * sizeof(float));
    }
done:
    free(part);
    free(all);
    free(cnt);
    return st;
}

mc_status mc_forward_step(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, bool want_logits,
                          bool last_only, float *logits, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_layout *lay = &m->lay;
    int H = d->hidden, half = d->rope.dim / 2;
    bool first = lay->stage == 0, last = lay->stage == lay->pp - 1;
    if (n < 0)
        return mc_err_set(err, MC_ERR_ARG, "forward called with %d tokens", n);
    if (n > kv->cap - kv->len)
        return mc_err_set(err, MC_ERR_ARG,
                          "sequence of %d tokens does not fit the KV cache (%d used of %d)", n,
                          kv->len, kv->cap);
    if (first)
        for (int t = 0; t < n; t++)
            if (tokens[t] < 0 || tokens[t] >= d->vocab)
                return mc_err_set(err, MC_ERR_ARG,
                                  "token id %lld at position %d is outside [0, %d)",
                                  (long long)tokens[t], kv->len + t, d->vocab);
    if (d->family == MC_FAM_DEEPSEEK_V4) /* one rank per sequence (layout refuses splits) */
        return n > 0 ? mc_v4_forward(m, kv, tokens, n, want_logits ? logits : NULL, last_only,
                                     err)
                     : MC_OK;
    mc_status st = MC_OK;
    size_t nH = (size_t)n * H;
    int L = d->n_layers;
    float *x = mc_malloc_n(nH, sizeof *x);     /* (n, H) residual stream */
    float *xn = mc_malloc_n(nH, sizeof *xn);   /* (n, H) normalized */
    float *tmp = mc_malloc_n(nH, sizeof *tmp); /* (n, H) sub-layer output */
    float *scratch = mc_malloc_n((size_t)2 * n * (d->dense_inter > 0 ? d->dense_inter : 1),
                                 sizeof *scratch);
    float *cs = mc_malloc_n((size_t)n * half, sizeof *cs);
    float *sn = mc_malloc_n((size_t)n * half, sizeof *sn);
    if (!x || !xn || !tmp || !scratch || !cs || !sn) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for a forward pass of %d tokens", n);
        goto done;
    }
    if (first) {
        double t = m->stats ? mc_now_s() : 0;
        st = embed(m, tokens, n, x, err);
        if (st == MC_OK)
            st = mc_nf_check(m, MC_NF_INPUT, 0, x, n, (size_t)H, kv->len, tokens, err);
        if (m->stats)
            m->stats[MC_STAT_HEAD(L)].t_total += mc_now_s() - t;
        if (st != MC_OK)
            goto done;
    } else if (n > 0) {
        /* pipeline: activations of the previous stage */
        if ((st = mc_par_recv(m, m->pp_comm, MC_STAT_PIPE(L), lay->stage - 1, x,
                              nH * sizeof *x, err)) != MC_OK)
            goto done;
    }
    mc_rope_tables(m, kv->len, n, cs, sn);
    for (int l = lay->layer0; l < lay->layer1; l++) {
        double t = m->stats ? mc_now_s() : 0;
        if ((st = block_forward(m, l, kv, x, n, cs, sn, xn, tmp, scratch, err)) != MC_OK)
            goto done;
        if (m->stats) {
            m->stats[l].t_total += mc_now_s() - t;
            m->stats[l].steps++;
        }
    }
    kv->len += n;
    if (!last) {
        if (n > 0 && (st = mc_par_send(m, m->pp_comm, MC_STAT_PIPE(L), lay->stage + 1, x,
                                       nH * sizeof *x, err)) != MC_OK)
            goto done;
    } else if (want_logits && n > 0) {
        double t = m->stats ? mc_now_s() : 0;
        int t0 = last_only ? n - 1 : 0;
        st = head_forward(m, x, t0, n, kv->len - n + t0, xn, logits, err);
        if (m->stats) {
            m->stats[MC_STAT_HEAD(L)].t_total += mc_now_s() - t;
            m->stats[MC_STAT_HEAD(L)].steps++;
        }
    }
done:
    free(x);
    free(xn);
    free(tmp);
    free(scratch);
    free(cs);
    free(sn);
    return st;
}

mc_status mc_model_forward(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                           bool last_only, mc_err *err)
{
    if (n <= 0)
        return mc_err_set(err, MC_ERR_ARG, "forward called with %d tokens", n);
    return mc_forward_step(m, kv, tokens, n, logits != NULL, last_only, logits, err);
}

void mc_ref_row_stats(const float *x, int n, int k, double *best, double *maxabs, double *lse)
{
    double m = 0, mx = -INFINITY, sum = 0;
    for (int j = 0; j < k; j++)
        best[j] = -INFINITY;
    for (int v = 0; v < n; v++) {
        double a = x[v];
        m = fabs(a) > m ? fabs(a) : m;
        mx = a > mx ? a : mx;
        for (int j = 0; j < k; j++)
            if (a > best[j]) {
                memmove(best + j + 1, best + j, (size_t)(k - 1 - j) * sizeof *best);
                best[j] = a;
                break;
            }
    }
    for (int v = 0; v < n; v++)
        sum += exp((double)x[v] - mx);
    *maxabs = m;
    *lse = mx + log(sum);
}
