/* ref_attention.c - the per-call reference implementation kept for tests
 * (ref.h; single process: the engine runs worker/step_attn.c and the
 * backend's attention ops). MLA and GQA over the contiguous per-sequence
 * cache. Positions of the n new tokens are kv->len .. kv->len+n-1; token t
 * attends to cache entries 0..kv->len+t.
 *
 * Under tensor parallelism a rank runs only its heads (m->lay: query heads
 * head0.., KV heads kv_head0..; the weights are bound as those slices) and
 * its output y is the partial sum of its heads' share of wo, which the
 * caller all-reduces over the tp group. */
#include "ref_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Softmax-weighted attention of one query over S cached positions:
 * p[s] = softmax(scale * score[s]) in place. */
static void softmax_scaled(float *score, int S, float scale)
{
    for (int s = 0; s < S; s++)
        score[s] *= scale;
    mc_softmax(score, S);
}

static void layernorm(float *out, const float *x, const float *w, const float *b, int n, float eps)
{
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++)
        var += ((double)x[i] - mean) * ((double)x[i] - mean);
    float inv = (float)(1.0 / sqrt(var / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = (float)(x[i] - mean) * inv * w[i] + b[i];
}

/* Index of the top `k` of v[0..n) into sel (any order), highest first on
 * value, lower index first on exact ties. Returns how many were chosen. */
int mc_topk_indices(const float *v, int n, int k, int *sel, unsigned char *taken)
{
    if (k >= n) {
        for (int i = 0; i < n; i++)
            sel[i] = i;
        return n;
    }
    memset(taken, 0, (size_t)n);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!taken[i] && (best < 0 || v[i] > v[best]))
                best = i;
        taken[best] = 1;
        sel[j] = best;
    }
    return k;
}

/* DeepSeek-V3.2 lightning indexer for the n new tokens: appends their
 * indexer keys to the cache and writes, per token t, which cached positions
 * its attention keeps: keep[t * S_max + s] = 1 (S_max = p0 + n). */
static mc_status indexer_select(const mc_model *m, const mc_layer_w *w, mc_kv *kv, int layer,
                                const float *x, const float *qa, int n, const float *cs,
                                const float *sn, unsigned char *keep, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    int H = d->hidden, ih = d->index_n_heads, id = d->index_head_dim, rd = d->qk_rope_dim;
    int half = rd / 2, p0 = kv->len, S_max = p0 + n;
    mc_status st = MC_OK;
    float *q = mc_malloc_n((size_t)n * ih * id, sizeof *q); /* (n, ih, id) */
    float *k = mc_malloc_n((size_t)n * id, sizeof *k);       /* (n, id) */
    float *wt = mc_malloc_n((size_t)n * ih, sizeof *wt);     /* (n, ih) */
    float *score = mc_malloc_n((size_t)S_max, sizeof *score);
    int *sel = mc_malloc_n((size_t)S_max, sizeof *sel);
    unsigned char *taken = malloc((size_t)S_max);
    if (!q || !k || !wt || !score || !sel || !taken) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in the sparse-attention indexer");
        goto done;
    }
    mc_matmul(&w->idx_wq_b, qa, n, d->q_lora_rank, q, ih * id);
    mc_matmul(&w->idx_wk, x, n, H, k, id);
    mc_matmul(&w->idx_weights, x, n, H, wt, ih);
    float wscale = 1.0f / sqrtf((float)ih), sscale = 1.0f / sqrtf((float)id);
    for (int t = 0; t < n; t++) {
        const float *c = cs + (size_t)t * half, *s = sn + (size_t)t * half;
        float *kt = kv->aux[layer] + (size_t)(p0 + t) * id;
        layernorm(kt, k + (size_t)t * id, w->idx_k_norm, w->idx_k_bias, id, 1e-6f);
        mc_rope_rotate(kt, rd, 0, c, s); /* rotate-half on the first rope dims */
        for (int h = 0; h < ih; h++)
            mc_rope_rotate(q + ((size_t)t * ih + h) * id, rd, 0, c, s);
    }
    for (int t = 0; t < n; t++) {
        int S = p0 + t + 1;
        unsigned char *kp = keep + (size_t)t * S_max;
        memset(kp, 0, (size_t)S_max);
        for (int sidx = 0; sidx < S; sidx++) {
            const float *ks = kv->aux[layer] + (size_t)sidx * id;
            float acc = 0;
            for (int h = 0; h < ih; h++) {
                float v = mc_dot(q + ((size_t)t * ih + h) * id, ks, id) * sscale;
                acc += (v > 0 ? v : 0) * wt[(size_t)t * ih + h] * wscale;
            }
            score[sidx] = acc;
        }
        int cnt = mc_topk_indices(score, S, d->index_topk, sel, taken);
        for (int j = 0; j < cnt; j++)
            kp[sel[j]] = 1;
    }
done:
    free(q);
    free(k);
    free(wt);
    free(score);
    free(sel);
    free(taken);
    return st;
}

mc_status mc_attn_mla(const mc_model *m, const mc_layer_w *w, mc_kv *kv, int layer, const float *x,
                      int n, const float *cs, const float *sn, float *y, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    int H = d->hidden, nh = m->lay.n_heads, nope = d->qk_nope_dim, rd = d->qk_rope_dim;
    int vd = d->v_head_dim, lr = d->kv_lora_rank, qk = nope + rd, half = rd / 2;
    int p0 = kv->len, S_max = p0 + n;
    mc_status st = MC_OK;
    float *qa = NULL;
    unsigned char *keep = NULL;
    float *q = mc_malloc_n((size_t)n * nh * qk, sizeof *q);           /* (n, nh, qk) */
    float *kva = mc_malloc_n((size_t)n * (lr + rd), sizeof *kva);      /* (n, lr + rd) */
    float *qlat = calloc((size_t)n * nh * lr, sizeof *qlat);           /* (n, nh, lr) */
    float *olat = mc_malloc_n((size_t)n * nh * lr, sizeof *olat);      /* (n, nh, lr) */
    float *attn = mc_malloc_n((size_t)n * nh * vd, sizeof *attn);      /* (n, nh, vd) */
    float *score = mc_malloc_n((size_t)S_max, sizeof *score);
    float *row = mc_malloc_n((size_t)lr, sizeof *row);
    if (!q || !kva || !qlat || !olat || !attn || !score || !row) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in MLA attention");
        goto done;
    }
    /* queries */
    if (d->q_lora_rank > 0) {
        int qr = d->q_lora_rank;
        qa = mc_malloc_n((size_t)n * qr, sizeof *qa); /* (n, q_lora) */
        if (!qa) {
            st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in MLA attention");
            goto done;
        }
        mc_matmul(&w->q_a, x, n, H, qa, qr);
        for (int t = 0; t < n; t++)
            mc_rmsnorm(qa + (size_t)t * qr, qa + (size_t)t * qr, w->q_a_norm, qr, d->norm_eps);
        mc_matmul(&w->q_b, qa, n, qr, q, nh * qk);
    } else {
        mc_matmul(&w->q_proj, x, n, H, q, nh * qk);
    }
    /* compressed kv: latent (normalized) + rope key, appended to the cache */
    mc_matmul(&w->kv_a, x, n, H, kva, lr + rd);
    int inter = d->rope.style == MC_ROPE_INTERLEAVED;
    for (int t = 0; t < n; t++) {
        float *lat = kv->k[layer] + (size_t)(p0 + t) * lr;
        float *kpe = kv->v[layer] + (size_t)(p0 + t) * rd;
        mc_rmsnorm(lat, kva + (size_t)t * (lr + rd), w->kv_a_norm, lr, d->norm_eps);
        memcpy(kpe, kva + (size_t)t * (lr + rd) + lr, (size_t)rd * sizeof *kpe);
        mc_rope_rotate(kpe, rd, inter, cs + (size_t)t * half, sn + (size_t)t * half);
        for (int h = 0; h < nh; h++)
            mc_rope_rotate(q + ((size_t)t * nh + h) * qk + nope, rd, inter, cs + (size_t)t * half,
                           sn + (size_t)t * half);
    }
    if (d->index_topk > 0) {
        if (!qa || !(keep = malloc((size_t)n * S_max))) {
            st = mc_err_set(err, qa ? MC_ERR_NOMEM : MC_ERR_CONFIG,
                            qa ? "out of memory in MLA attention"
                               : "sparse attention needs q_lora_rank");
            goto done;
        }
        if ((st = indexer_select(m, w, kv, layer, x, qa, n, cs, sn, keep, err)) != MC_OK)
            goto done;
    }
    /* absorb W_kb into the query: qlat[t,h] = W_kb[h]^T q_nope[t,h] */
    for (int h = 0; h < nh; h++)
        for (int j = 0; j < nope; j++) {
            mc_mat_row_f32(&w->kv_b, h * (nope + vd) + j, row);
            for (int t = 0; t < n; t++)
                mc_axpy(qlat + ((size_t)t * nh + h) * lr, q[((size_t)t * nh + h) * qk + j], row, lr);
        }
    /* scores over the latent cache, weighted sum of latents */
    const float *lat_c = kv->k[layer], *kpe_c = kv->v[layer];
    for (int t = 0; t < n; t++) {
        int S = p0 + t + 1;
        /* Mistral 4 / Llama 4 position scaling of the whole query */
        float qscale = d->attn_scale;
        if (d->llama4_beta != 0)
            qscale *= (float)(1.0 + d->llama4_beta * log(1.0 + floor((p0 + t) / d->llama4_orig_max)));
        const unsigned char *kp = keep ? keep + (size_t)t * S_max : NULL;
        for (int h = 0; h < nh; h++) {
            const float *ql = qlat + ((size_t)t * nh + h) * lr;
            const float *qp = q + ((size_t)t * nh + h) * qk + nope;
            for (int s = 0; s < S; s++)
                score[s] = kp && !kp[s] ? -INFINITY
                                        : mc_dot(ql, lat_c + (size_t)s * lr, lr) +
                                              mc_dot(qp, kpe_c + (size_t)s * rd, rd);
            softmax_scaled(score, S, qscale);
            float *ol = olat + ((size_t)t * nh + h) * lr;
            memset(ol, 0, (size_t)lr * sizeof *ol);
            for (int s = 0; s < S; s++)
                if (score[s] != 0.0f)
                    mc_axpy(ol, score[s], lat_c + (size_t)s * lr, lr);
        }
    }
    /* values: attn[t,h,i] = W_vb[h,i] . olat[t,h] */
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < vd; i++) {
            mc_mat_row_f32(&w->kv_b, h * (nope + vd) + nope + i, row);
            for (int t = 0; t < n; t++)
                attn[((size_t)t * nh + h) * vd + i] = mc_dot(row, olat + ((size_t)t * nh + h) * lr, lr);
        }
    mc_matmul(&w->wo, attn, n, nh * vd, y, H);
done:
    free(keep);
    free(qa);
    free(q);
    free(kva);
    free(qlat);
    free(olat);
    free(attn);
    free(score);
    free(row);
    return st;
}

mc_status mc_attn_gqa(const mc_model *m, const mc_layer_w *w, mc_kv *kv, int layer, const float *x,
                      int n, const float *cs, const float *sn, float *y, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    /* local heads: query heads h0.., KV heads g0.. (split, or one copied head) */
    int H = d->hidden, nh = m->lay.n_heads, nkv = m->lay.n_kv_heads, hd = d->head_dim;
    int h0 = m->lay.head0, g0 = m->lay.kv_head0;
    int rd = d->rope.dim, half = rd / 2, grp = d->n_heads / d->n_kv_heads;
    int p0 = kv->len, kvw = nkv * hd;
    mc_status st = MC_OK;
    float *q = mc_malloc_n((size_t)n * nh * hd, sizeof *q);    /* (n, nh, hd) */
    float *k = mc_malloc_n((size_t)n * kvw, sizeof *k);        /* (n, nkv, hd) */
    float *v = mc_malloc_n((size_t)n * kvw, sizeof *v);        /* (n, nkv, hd) */
    float *attn = mc_malloc_n((size_t)n * nh * hd, sizeof *attn);
    float *score = mc_malloc_n((size_t)(p0 + n), sizeof *score);
    if (!q || !k || !v || !attn || !score) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in attention");
        goto done;
    }
    mc_matmul(&w->wq, x, n, H, q, nh * hd);
    mc_matmul(&w->wk, x, n, H, k, kvw);
    mc_matmul(&w->wv, x, n, H, v, kvw);
    int inter = d->rope.style == MC_ROPE_INTERLEAVED;
    bool rope = d->layer_rope[layer];
    bool l2 = d->qk_l2norm && rope; /* Llama 4: weightless norm after RoPE, RoPE layers only */
    for (int t = 0; t < n; t++) {
        const float *c = cs + (size_t)t * half, *s = sn + (size_t)t * half;
        /* Llama 4 NoPE layers: query temperature grows with position */
        float temp = 1.0f;
        if (d->attn_temp_tuning && !rope)
            temp = (float)(log1p(floor((p0 + t + 1.0) / d->attn_floor_scale)) * d->attn_temp_scale +
                           1.0);
        for (int h = 0; h < nh; h++) {
            float *qh = q + ((size_t)t * nh + h) * hd;
            if (w->q_norm)
                mc_rmsnorm(qh, qh, w->q_norm, hd, d->norm_eps);
            if (rope)
                mc_rope_rotate(qh, rd, inter, c, s);
            if (l2)
                mc_rmsnorm(qh, qh, NULL, hd, d->norm_eps);
            if (temp != 1.0f)
                for (int i = 0; i < hd; i++)
                    qh[i] *= temp;
        }
        for (int g = 0; g < nkv; g++) {
            float *kh = k + ((size_t)t * nkv + g) * hd;
            if (w->k_norm)
                mc_rmsnorm(kh, kh, w->k_norm, hd, d->norm_eps);
            if (rope)
                mc_rope_rotate(kh, rd, inter, c, s);
            if (l2)
                mc_rmsnorm(kh, kh, NULL, hd, d->norm_eps);
        }
    }
    memcpy(kv->k[layer] + (size_t)p0 * kvw, k, (size_t)n * kvw * sizeof *k);
    memcpy(kv->v[layer] + (size_t)p0 * kvw, v, (size_t)n * kvw * sizeof *v);
    const float *kc = kv->k[layer], *vc = kv->v[layer];
    for (int t = 0; t < n; t++) {
        int S = p0 + t + 1;
        /* chunked attention (Llama 4 RoPE layers): only the query's own chunk */
        int s0 = d->attn_chunk > 0 && rope ? ((p0 + t) / d->attn_chunk) * d->attn_chunk : 0;
        for (int h = 0; h < nh; h++) {
            int g = (h0 + h) / grp - g0; /* local index of the head's KV group */
            const float *qh = q + ((size_t)t * nh + h) * hd;
            for (int s = s0; s < S; s++)
                score[s - s0] = mc_dot(qh, kc + (size_t)s * kvw + (size_t)g * hd, hd);
            softmax_scaled(score, S - s0, d->attn_scale);
            float *o = attn + ((size_t)t * nh + h) * hd;
            memset(o, 0, (size_t)hd * sizeof *o);
            for (int s = s0; s < S; s++)
                mc_axpy(o, score[s - s0], vc + (size_t)s * kvw + (size_t)g * hd, hd);
        }
    }
    mc_matmul(&w->wo, attn, n, nh * hd, y, H);
done:
    free(q);
    free(k);
    free(v);
    free(attn);
    free(score);
    return st;
}
