/* ref_kv.c - the reference's per-sequence KV cache (ref.h): contiguous
 * per-layer arrays of cap tokens. Part of the per-call reference kept for
 * tests; the engine's cache is the paged pool (worker/kv_pool.c). */
#include "ref_internal.h"

#include <stdlib.h>

void mc_kv_free(mc_kv *kv)
{
    if (!kv)
        return;
    if (kv->ext)
        mc_v4_kv_free(kv);
    for (int l = 0; kv->k && l < kv->n_layers; l++)
        free(kv->k[l]);
    for (int l = 0; kv->v && l < kv->n_layers; l++)
        free(kv->v[l]);
    for (int l = 0; kv->aux && l < kv->n_layers; l++)
        free(kv->aux[l]);
    free(kv->aux);
    free(kv->k);
    free(kv->v);
    free(kv);
}

mc_status mc_kv_create(const mc_model *m, int cap, mc_kv **out, mc_err *err)
{
    *out = NULL;
    const mc_model_desc *d = &m->d;
    if (cap <= 0 || cap > d->max_pos * 64)
        return mc_err_set(err, MC_ERR_ARG, "KV cache capacity %d is out of range", cap);
    mc_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    kv->cap = cap;
    if (d->family == MC_FAM_DEEPSEEK_V4) {
        mc_status st = mc_v4_kv_init(m, kv, err);
        if (st != MC_OK) {
            mc_kv_free(kv);
            return st;
        }
        *out = kv;
        return MC_OK;
    }
    kv->n_layers = d->n_layers;
    if (d->attn == MC_ATTN_MLA) {
        kv->k_width = d->kv_lora_rank;
        kv->v_width = d->qk_rope_dim;
    } else {
        kv->k_width = kv->v_width = m->lay.n_kv_heads * d->head_dim;
    }
    if (d->index_topk > 0) {
        kv->aux_width = d->index_head_dim;
        if (!(kv->aux = calloc((size_t)d->n_layers, sizeof *kv->aux)))
            goto nomem;
    }
    kv->k = calloc((size_t)d->n_layers, sizeof *kv->k);
    kv->v = calloc((size_t)d->n_layers, sizeof *kv->v);
    if (!kv->k || !kv->v)
        goto nomem;
    for (int l = m->lay.layer0; l < m->lay.layer1; l++) {
        kv->k[l] = mc_malloc_n((size_t)cap * (size_t)kv->k_width, sizeof(float));
        kv->v[l] = mc_malloc_n((size_t)cap * (size_t)kv->v_width, sizeof(float));
        if (!kv->k[l] || !kv->v[l])
            goto nomem;
        if (kv->aux && !(kv->aux[l] = mc_malloc_n((size_t)cap * (size_t)kv->aux_width,
                                                   sizeof(float))))
            goto nomem;
    }
    *out = kv;
    return MC_OK;
nomem:
    mc_kv_free(kv);
    return mc_err_set(err, MC_ERR_NOMEM, "out of memory for a KV cache of %d tokens", cap);
}

void mc_kv_reset(mc_kv *kv)
{
    kv->len = 0;
    if (kv->ext)
        mc_v4_kv_reset(kv);
}
