/* forward.c - the decoder stack: embed, blocks, final norm, LM head. */
#include "attention.h"
#include "deepseek_v4.h"
#include "model.h"
#include "moe.h"

#include <stdlib.h>
#include <string.h>

/* One decoder block on n tokens: x += attn(norm(x)); x += ffn(norm(x)). */
static mc_status block_forward(mc_model *m, int l, mc_kv *kv, float *x, int n, const float *cs,
                               const float *sn, float *xn, float *tmp, float *scratch, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_layer_w *w = &m->layers[l];
    int H = d->hidden;
    mc_status st;
    for (int t = 0; t < n; t++)
        mc_rmsnorm(xn + (size_t)t * H, x + (size_t)t * H, w->attn_norm, H, d->norm_eps);
    st = d->attn == MC_ATTN_MLA ? mc_attn_mla(m, w, kv, l, xn, n, cs, sn, tmp, err)
                                : mc_attn_gqa(m, w, kv, l, xn, n, cs, sn, tmp, err);
    if (st != MC_OK)
        return st;
    for (size_t i = 0; i < (size_t)n * H; i++)
        x[i] += tmp[i];
    for (int t = 0; t < n; t++)
        mc_rmsnorm(xn + (size_t)t * H, x + (size_t)t * H, w->ffn_norm, H, d->norm_eps);
    if (w->moe) {
        if ((st = mc_moe(m, w, xn, n, tmp, err)) != MC_OK)
            return st;
    } else {
        mc_ffn(&w->dense, xn, n, H, tmp, H, scratch);
    }
    for (size_t i = 0; i < (size_t)n * H; i++)
        x[i] += tmp[i];
    return MC_OK;
}

mc_status mc_model_forward(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                           bool last_only, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    int H = d->hidden, half = d->rope.dim / 2;
    if (n <= 0)
        return mc_err_set(err, MC_ERR_ARG, "forward called with %d tokens", n);
    if (n > kv->cap - kv->len)
        return mc_err_set(err, MC_ERR_ARG,
                          "sequence of %d tokens does not fit the KV cache (%d used of %d)", n,
                          kv->len, kv->cap);
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= d->vocab)
            return mc_err_set(err, MC_ERR_ARG, "token id %lld at position %d is outside [0, %d)",
                              (long long)tokens[t], kv->len + t, d->vocab);
    if (d->family == MC_FAM_DEEPSEEK_V4)
        return mc_v4_forward(m, kv, tokens, n, logits, last_only, err);
    mc_status st = MC_OK;
    size_t nH = (size_t)n * H;
    float *x = mc_malloc_n(nH, sizeof *x);
    float *xn = mc_malloc_n(nH, sizeof *xn);
    float *tmp = mc_malloc_n(nH, sizeof *tmp);
    float *scratch = mc_malloc_n((size_t)2 * n * (d->dense_inter > 0 ? d->dense_inter : 1),
                                 sizeof *scratch);
    float *cs = mc_malloc_n((size_t)n * half, sizeof *cs);
    float *sn = mc_malloc_n((size_t)n * half, sizeof *sn);
    if (!x || !xn || !tmp || !scratch || !cs || !sn) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for a forward pass of %d tokens", n);
        goto done;
    }
    for (int t = 0; t < n; t++)
        mc_mat_row_f32(&m->embed, (int)tokens[t], x + (size_t)t * H);
    mc_rope_tables(m, kv->len, n, cs, sn);
    for (int l = 0; l < d->n_layers; l++)
        if ((st = block_forward(m, l, kv, x, n, cs, sn, xn, tmp, scratch, err)) != MC_OK)
            goto done;
    kv->len += n;
    if (logits) {
        int t0 = last_only ? n - 1 : 0;
        for (int t = t0; t < n; t++)
            mc_rmsnorm(xn + (size_t)t * H, x + (size_t)t * H, m->final_norm, H, d->norm_eps);
        mc_matmul(&m->lm_head, xn + (size_t)t0 * H, n - t0, H, logits, d->vocab);
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
