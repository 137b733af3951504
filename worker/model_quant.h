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
 * allows), as the quantized formats are, instead of reading the mapping;
 * mc_model_resident (--no-mmap) does that for every stored type.
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

/* w in the CPU kernel path's own layout where it has one (mc_mat_pack),
 * unless the weights go to a device, which reads rows as stored. */
static inline void mc_model_pack_(const mc_model *m, mc_mat *w)
{
    if (!m->stored_layout)
        (void)mc_mat_pack(w);
}

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
    mc_model_pack_(m, w);
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
        for (int i = 0; i < n; i++) {
            *where[i] = dst[i];
            mc_model_pack_(m, where[i]);
        }
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

/* Every bound matrix of dtype `from` (the decoder stack's, routers and
 * indexers included, MLA's kv_b not, the embedding and the LM head) converted to `to`
 * (Q8_0 or another mc_mat_quantize target) as stored rows, never repacked:
 * for a device backend without kernels for `from` (the CUDA backend and
 * Q5_K: each row decoded as llama.cpp decodes it, then the Q8_0 reference
 * quantizer, as `--weights q8_0` would). A tied LM head stays the
 * embedding. */
static inline mc_status mc_model_convert(mc_model *m, mc_dtype from, mc_dtype to, mc_err *err)
{
    if (m->v4)
        return MC_OK;
    const mc_model_desc *d = &m->d;
    mc_status st = MC_OK;
    int tied = m->lm_head.data == m->embed.data;
/* mc_model_quant_mat_: rows decoded, quantized, owned by m (never repacked here: only a
 * device session, which reads rows as stored, converts) */
#define CONV(w)                                                                                    \
    do {                                                                                           \
        if (st == MC_OK && (w)->dtype == from)                                                     \
            st = mc_model_quant_mat_(m, (w), to, err);                                             \
    } while (0)
    for (int l = 0; l < d->n_layers && st == MC_OK; l++) {
        mc_layer_w *w = &m->layers[l];
        /* (kv_b left out: the attention binds a block-format kv_b as an f32 copy on every
         * backend, so it is read from the Q5_K values directly, as on the CPU) */
        mc_mat *one[] = {&w->q_a,      &w->q_b,         &w->q_proj,     &w->kv_a,
                         &w->wq,       &w->wk,          &w->wv,         &w->wo,
                         &w->idx_wq_b, &w->idx_wk,      &w->idx_weights, &w->router,
                         &w->dense.gate, &w->dense.up,  &w->dense.down, &w->shared.gate,
                         &w->shared.up, &w->shared.down};
        for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
            CONV(one[i]);
        for (int e = 0; w->moe && w->experts && e < d->n_experts; e++) {
            CONV(&w->experts[e].gate);
            CONV(&w->experts[e].up);
            CONV(&w->experts[e].down);
        }
    }
    CONV(&m->embed);
    if (tied)
        m->lm_head = m->embed;
    else
        CONV(&m->lm_head);
#undef CONV
    return st;
}

/* One mc_mats_copy of the bound, non-empty matrices in mats[0..n) (NULL
 * entries and matrices not bound on this rank skipped): they then point
 * into one huge-page buffer owned by m. */
static inline mc_status mc_model_resident_group_(mc_model *m, mc_mat **mats, int n, mc_err *err)
{
    mc_mat **where = malloc((size_t)(n > 0 ? n : 1) * sizeof *where);
    mc_mat *dst = malloc((size_t)(n > 0 ? n : 1) * sizeof *dst);
    mc_status st = MC_OK;
    int k = 0;
    if (!where || !dst) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        mc_mat *w = mats[i];
        if (!w || !w->data || w->rows <= 0 || w->cols <= 0)
            continue;
        if (w->transposed && mc_dtype_is_block(w->dtype))
            continue; /* (not a layout any loader makes) */
        where[k++] = w;
    }
    if (k > 0) {
        void *store;
        if ((st = mc_mats_copy((const mc_mat *const *)where, k, dst, &store, err)) != MC_OK)
            goto done;
        if (!mc_model_own(m, store)) { /* it freed store */
            st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < k; i++) {
            *where[i] = dst[i];
            mc_model_pack_(m, where[i]);
        }
    }
done:
    free(where);
    free(dst);
    return st;
}

/* The bound matrices of the decoder stack and the LM head (when it is not
 * the embedding) for which pred(w, arg) holds. */
static inline int mc_model_count_mats(const mc_model *m, int (*pred)(const mc_mat *, int), int arg)
{
    const mc_model_desc *d = &m->d;
    int n = 0;
    if (m->v4)
        return 0;
    for (int l = 0; l < d->n_layers; l++) {
        const mc_layer_w *w = &m->layers[l];
        const mc_mat *one[] = {&w->q_a, &w->q_b, &w->q_proj, &w->kv_a, &w->kv_b, &w->wq, &w->wk,
                               &w->wv, &w->wo, &w->dense.gate, &w->dense.up, &w->dense.down,
                               &w->shared.gate, &w->shared.up, &w->shared.down};
        for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
            n += one[i]->data && one[i]->rows > 0 && pred(one[i], arg);
        for (int e = 0; w->moe && w->experts && e < d->n_experts; e++) {
            const mc_mat *ex[] = {&w->experts[e].gate, &w->experts[e].up, &w->experts[e].down};
            for (int k = 0; k < 3; k++)
                n += ex[k]->data && ex[k]->rows > 0 && pred(ex[k], arg);
        }
    }
    if (m->lm_head.data && m->lm_head.data != m->embed.data && pred(&m->lm_head, arg))
        n++;
    return n;
}

/* still read in place in dtype arg (mc_model_resident would copy it) */
static inline int mc_model_mapped_(const mc_mat *w, int dt)
{
    return (int)w->dtype == dt && w->pack == MC_MAT_PACK_NONE;
}

static inline int mc_model_packed_(const mc_mat *w, int layout)
{
    return w->pack == layout;
}

/* Whether a matrix of dtype dt is still read from the file's mapping as
 * stored (mc_model_resident would copy it, and mc_mat_pack repack it). */
static inline int mc_model_maps_dtype(const mc_model *m, mc_dtype dt)
{
    return mc_model_count_mats(m, mc_model_mapped_, (int)dt) > 0;
}

/* `--no-mmap`: weights used as stored, read from memory: every bound
 * matrix of a layer (attention, indexer, router, dense or shared FFN,
 * routed experts) copied in its stored type into one huge-page buffer per
 * layer, and the LM head into its own, instead of being read through the
 * file's mapping (4 KiB page-cache pages). Bitwise the same weights, so the
 * same logits. The embedding (one row a token) and the norms stay mapped.
 * DeepSeek-V4 models are left as they are. Call it right after loading,
 * instead of mc_model_quantize. (On the 2-core development VM a Q4_K_M
 * GGUF decoded at the same fraction of the read probe either way, 0.69
 * over 5 interleaved pairs: docs/kernels.md.) */
static inline mc_status mc_model_resident(mc_model *m, mc_err *err)
{
    if (m->v4)
        return MC_OK;
    const mc_model_desc *d = &m->d;
    mc_status st = MC_OK;
    int cap = 16 + 3 * (d->n_experts > 0 ? d->n_experts : 0);
    mc_mat **mats = malloc((size_t)cap * sizeof *mats);
    if (!mats)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    for (int l = 0; l < d->n_layers && st == MC_OK; l++) {
        mc_layer_w *w = &m->layers[l];
        int n = 0;
        mc_mat *attn[] = {&w->q_a, &w->q_b, &w->q_proj, &w->kv_a, &w->kv_b, &w->wq, &w->wk,
                          &w->wv, &w->wo, &w->idx_wq_b, &w->idx_wk, &w->idx_weights};
        for (size_t i = 0; i < sizeof attn / sizeof attn[0]; i++)
            mats[n++] = attn[i];
        if (!w->moe) {
            mats[n++] = &w->dense.gate;
            mats[n++] = &w->dense.up;
            mats[n++] = &w->dense.down;
        } else {
            mats[n++] = &w->router;
            if (w->has_shared) {
                mats[n++] = &w->shared.gate;
                mats[n++] = &w->shared.up;
                mats[n++] = &w->shared.down;
            }
            for (int e = 0; w->experts && e < d->n_experts; e++) {
                mats[n++] = &w->experts[e].gate;
                mats[n++] = &w->experts[e].up;
                mats[n++] = &w->experts[e].down;
            }
        }
        st = mc_model_resident_group_(m, mats, n, err);
    }
    if (st == MC_OK && m->lm_head.data != m->embed.data) {
        mats[0] = &m->lm_head;
        st = mc_model_resident_group_(m, mats, 1, err);
    }
    free(mats);
    return st;
}

#endif
