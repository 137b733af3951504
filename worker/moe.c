/* moe.c - router (top-k choice) and the routed/shared expert computation. */
#include "moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Index of the largest v[i] among allowed (mask[i] != 0), lowest index on
 * ties; -1 if none. */
static int argmax_masked(const float *v, const unsigned char *mask, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (mask[i] && (best < 0 || v[i] > v[best]))
            best = i;
    return best;
}

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
            int e = argmax_masked(logits, allowed, E);
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
            const float *c = choice + g * per;
            int a = 0;
            for (int i = 1; i < per; i++)
                if (c[i] > c[a])
                    a = i;
            int b = a == 0 ? 1 : 0;
            for (int i = 0; i < per; i++)
                if (i != a && c[i] > c[b])
                    b = i;
            gscore[g] = c[a] + c[b];
            gallow[g] = 1;
            gkeep[g] = 0;
        }
        for (int j = 0; j < d->topk_group; j++) {
            int g = argmax_masked(gscore, gallow, G);
            gallow[g] = 0;
            gkeep[g] = 1;
        }
        for (int e = 0; e < E; e++)
            allowed[e] = gkeep[e / per];
    }
    double sum = 0;
    for (int j = 0; j < k; j++) {
        int e = argmax_masked(choice, allowed, E);
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

mc_status mc_moe(const mc_model *m, const mc_layer_w *w, const float *x, int n, float *y,
                 mc_err *err)
{
    const mc_model_desc *d = &m->d;
    int E = d->n_experts, k = d->n_experts_per_tok, H = d->hidden;
    int maxI = d->moe_inter > d->shared_inter ? d->moe_inter : d->shared_inter;
    mc_status st = MC_OK;
    float *logits = mc_malloc_n((size_t)n * E, sizeof *logits);
    int *idx = mc_malloc_n((size_t)n * k, sizeof *idx);
    float *wt = mc_malloc_n((size_t)n * k, sizeof *wt);
    int *count = calloc((size_t)E + 1, sizeof *count);
    int *slot = mc_malloc_n((size_t)n * k, sizeof *slot); /* (token*k + j) grouped by expert */
    float *xin = mc_malloc_n((size_t)n * H, sizeof *xin);
    float *yout = mc_malloc_n((size_t)n * H, sizeof *yout);
    float *scratch = mc_malloc_n((size_t)2 * n * maxI, sizeof *scratch);
    if (!logits || !idx || !wt || !count || !slot || !xin || !yout || !scratch) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in the MoE layer");
        goto done;
    }
    mc_matmul(&w->router, x, n, H, logits, E);
    for (int t = 0; t < n; t++)
        mc_route_token(d, logits + (size_t)t * E, w->score_bias, idx + (size_t)t * k,
                       wt + (size_t)t * k);
    /* Group (token, choice) pairs by expert: counting sort, stable in token order. */
    for (int i = 0; i < n * k; i++)
        count[idx[i] + 1]++;
    for (int e = 0; e < E; e++)
        count[e + 1] += count[e];
    {
        int *fill = calloc((size_t)E, sizeof *fill);
        if (!fill) {
            st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in the MoE layer");
            goto done;
        }
        for (int i = 0; i < n * k; i++)
            slot[count[idx[i]] + fill[idx[i]]++] = i;
        free(fill);
    }
    memset(y, 0, (size_t)n * H * sizeof *y);
    for (int e = 0; e < E; e++) {
        int c0 = count[e], ne = count[e + 1] - c0;
        if (ne == 0)
            continue; /* an expert with no tokens costs nothing */
        /* Llama 4 scales the expert's input by the router weight instead of its output */
        bool scale_in = d->router == MC_ROUTER_LLAMA4;
        for (int j = 0; j < ne; j++) {
            int s = slot[c0 + j];
            float *xi = xin + (size_t)j * H;
            memcpy(xi, x + (size_t)(s / k) * H, (size_t)H * sizeof *x);
            if (scale_in)
                for (int i = 0; i < H; i++)
                    xi[i] *= wt[s];
        }
        mc_ffn(&w->experts[e], xin, ne, H, yout, H, scratch);
        for (int j = 0; j < ne; j++) {
            int s = slot[c0 + j];
            mc_axpy(y + (size_t)(s / k) * H, scale_in ? 1.0f : wt[s], yout + (size_t)j * H, H);
        }
    }
    if (w->has_shared) {
        mc_ffn(&w->shared, x, n, H, yout, H, scratch);
        for (size_t i = 0; i < (size_t)n * H; i++)
            y[i] += yout[i];
    }
done:
    free(logits);
    free(idx);
    free(wt);
    free(count);
    free(slot);
    free(xin);
    free(yout);
    free(scratch);
    return st;
}
