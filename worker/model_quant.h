/* model_quant.h - load-time weight quantization (`--weights q8_0|q4_k`):
 * replaces a loaded model's expert and dense matrices (attention
 * projections, dense and shared FFNs, routed experts, the LM head) by
 * Q8_0 / Q4_K copies (kernels' mc_mat_quantize). Embeddings, routers, the
 * sparse-attention indexer and norms keep their stored precision. A matrix
 * whose rows do not split into the format's blocks takes the fallback
 * `plan` counts (mc_quant_format_for: Q4_K -> Q8_0 -> stored type).
 *
 * Asking for the stored element type (--weights bf16 on a BF16 model)
 * copies the matrices into memory (huge-page backed where the kernel
 * allows), as the quantized formats are, instead of reading the mapping.
 *
 * Header-only so that it needs no edit to worker/CMakeLists.txt while the
 * worker is being reworked; the copies join m->owned and are freed by
 * mc_model_free. Call it right after mc_model_load (single process) or
 * mc_model_load_dist (each rank quantizes the share it bound).
 */
#ifndef MC_MODEL_QUANT_H
#define MC_MODEL_QUANT_H

#include "kernels.h"
#include "model.h"
#include "nonfinite.h"

#include <stdlib.h>

static inline mc_status mc_model_quant_mat_(mc_model *m, mc_mat *w, mc_dtype target, mc_err *err)
{
    if (!w->data || w->rows <= 0 || w->cols <= 0)
        return MC_OK; /* not bound on this rank */
    mc_dtype fmt = mc_quant_format_for(target, w->cols);
    /* an element type asked for again is still copied: into RAM, off the mapping */
    if (fmt == MC_DT_COUNT || (fmt == w->dtype && mc_dtype_is_block(fmt)))
        return MC_OK;
    mc_mat q;
    void *store;
    mc_err qe;
    mc_err_clear(&qe);
    mc_status st = mc_mat_quantize(w, fmt, &q, &store, &qe);
    if (st == MC_ERR_FORMAT) /* a NaN / Inf: name the tensor and element */
        return mc_nf_blame_mat(m, w->data, qe.msg, err);
    if (st != MC_OK)
        return mc_err_set(err, st, "%s", qe.msg);
    if (!mc_model_own(m, store))
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    *w = q;
    return MC_OK;
}

static inline mc_status mc_model_quant_ffn_(mc_model *m, mc_ffn_w *f, mc_dtype t, mc_err *err)
{
    mc_status st;
    if ((st = mc_model_quant_mat_(m, &f->gate, t, err)) != MC_OK ||
        (st = mc_model_quant_mat_(m, &f->up, t, err)) != MC_OK ||
        (st = mc_model_quant_mat_(m, &f->down, t, err)) != MC_OK)
        return st;
    return MC_OK;
}

/* The routed experts of one layer as ONE buffer (mc_mats_quantize): a
 * layer's experts are one stream on huge pages whatever their size. */
static inline mc_status mc_model_quant_experts_(mc_model *m, mc_ffn_w *ex, int n_experts,
                                                mc_dtype target, mc_err *err)
{
    size_t cap = 3 * (size_t)n_experts;
    const mc_mat **src = malloc(cap * sizeof *src);
    mc_mat **where = malloc(cap * sizeof *where), *dst = malloc(cap * sizeof *dst);
    mc_dtype *tg = malloc(cap * sizeof *tg);
    mc_status st = MC_OK;
    int n = 0;
    if (!src || !where || !dst || !tg) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int e = 0; e < n_experts; e++) {
        mc_mat *mats[3] = {&ex[e].gate, &ex[e].up, &ex[e].down};
        for (int k = 0; k < 3; k++) {
            mc_mat *w = mats[k];
            if (!w->data || w->rows <= 0 || w->cols <= 0)
                continue; /* not bound on this rank */
            mc_dtype fmt = mc_quant_format_for(target, w->cols);
            if (fmt == MC_DT_COUNT || (fmt == w->dtype && mc_dtype_is_block(fmt)))
                continue;
            src[n] = w;
            where[n] = w;
            tg[n++] = fmt;
        }
    }
    if (n > 0) {
        void *store;
        int bad;
        mc_err qe;
        mc_err_clear(&qe);
        st = mc_mats_quantize(src, tg, n, dst, &store, &bad, &qe);
        if (st == MC_ERR_FORMAT && bad >= 0) { /* a NaN / Inf: name the tensor and element */
            st = mc_nf_blame_mat(m, src[bad]->data, qe.msg, err);
            goto fail;
        }
        if (st != MC_OK) {
            st = mc_err_set(err, st, "%s", qe.msg);
            goto fail;
        }
        if (!mc_model_own(m, store)) { /* it freed store */
            st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
            goto fail;
        }
        for (int i = 0; i < n; i++)
            *where[i] = dst[i];
    }
fail:
    free(src);
    free(where);
    free(dst);
    free(tg);
    return st;
}

/* target: MC_DT_Q8_0 or MC_DT_Q4_K (or BF16 / F16 / F32 to re-store). */
static inline mc_status mc_model_quantize(mc_model *m, mc_dtype target, mc_err *err)
{
    if (m->v4)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "--weights %s: load-time quantization of DeepSeek-V4 is not implemented",
                          mc_dtype_name(target));
    const mc_model_desc *d = &m->d;
    mc_status st = MC_OK;
    for (int l = 0; l < d->n_layers && st == MC_OK; l++) {
        mc_layer_w *w = &m->layers[l];
        mc_mat *mats[] = {&w->q_a, &w->q_b, &w->q_proj, &w->kv_a, &w->kv_b,
                          &w->wq,  &w->wk,  &w->wv,     &w->wo};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0] && st == MC_OK; i++)
            st = mc_model_quant_mat_(m, mats[i], target, err);
        if (st == MC_OK && !w->moe)
            st = mc_model_quant_ffn_(m, &w->dense, target, err);
        if (st == MC_OK && w->moe && w->experts)
            st = mc_model_quant_experts_(m, w->experts, d->n_experts, target, err);
        if (st == MC_OK && w->moe && w->has_shared)
            st = mc_model_quant_ffn_(m, &w->shared, target, err);
    }
    if (st == MC_OK && m->lm_head.data != m->embed.data)
        st = mc_model_quant_mat_(m, &m->lm_head, target, err);
    return st;
}

#endif
