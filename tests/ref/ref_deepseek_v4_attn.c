/* ref_deepseek_v4_attn.c - the per-call reference implementation kept for
 * tests (ref.h; single process: the engine runs worker/step_v4_fwd.c and the
 * backend's v4 ops). DeepSeek-V4 attention: shared K=V sliding window,
 * compressed entries (HCA: all complete windows; CSA: overlapping windows
 * chosen by the lightning indexer), sinks, grouped output projection.
 *
 * Incremental state per layer: the last `sliding_window` rotated K=V
 * vectors, the raw projections of the last 2*rate tokens of each
 * compressor, and every compressed entry emitted so far. An entry is
 * emitted when its window's last token arrives, exactly as the full forward
 * computes it, so prefill + decode reproduces the full forward. */
#include "ref_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void mc_v4_rope_tail(float *v, int dim, int rd, const float *cs, const float *sn)
{
    mc_rope_rotate(v + dim - rd, rd, 1, cs, sn);
}

static void rms_plain(float *v, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)v[i] * v[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        v[i] *= inv;
}

/* Pools window w of compressor c into entries[w] (normed, rotated at w*rate). */
static void comp_emit(const mc_model *m, const mc_v4_comp *c, mc_v4_comp_state *s, int w,
                      float *gbuf, float *kbuf)
{
    int R = c->rate, cd = c->cd, W = (1 + c->overlap) * cd, rd = m->d.rope.dim;
    float *e = s->entries + (size_t)w * cd;
    for (int ch = 0; ch < cd; ch++) {
        int ns = 0;
        if (c->overlap && w > 0)
            for (int j = 0; j < R; j++) { /* first half of window w-1 */
                size_t slot = (size_t)(((w - 1) * R + j) % (2 * R)) * W;
                gbuf[ns] = s->ring_gate[slot + ch];
                kbuf[ns++] = s->ring_kv[slot + ch];
            }
        int off = c->overlap ? cd : 0;
        for (int j = 0; j < R; j++) {
            size_t slot = (size_t)((w * R + j) % (2 * R)) * W;
            gbuf[ns] = s->ring_gate[slot + off + ch];
            kbuf[ns++] = s->ring_kv[slot + off + ch];
        }
        mc_softmax(gbuf, ns);
        float acc = 0;
        for (int j = 0; j < ns; j++)
            acc += gbuf[j] * kbuf[j];
        e[ch] = acc;
    }
    mc_rmsnorm(e, e, c->norm, cd, m->d.norm_eps);
    float cs[rd / 2], sn[rd / 2];
    mc_v4_rope_cs(m->v4->inv_comp, rd / 2, w * R, cs, sn);
    mc_v4_rope_tail(e, cd, rd, cs, sn);
}

/* Projects n tokens at positions p0.. and feeds them to the compressor,
 * emitting every window that completes. kvp/gp are scratch [n, W]. */
static void comp_feed(const mc_model *m, const mc_v4_comp *c, mc_v4_comp_state *s, const float *x,
                      int n, int p0, float *kvp, float *gp, float *gbuf, float *kbuf)
{
    int H = m->d.hidden, R = c->rate, W = (1 + c->overlap) * c->cd;
    mc_matmul(&c->wkv, x, n, H, kvp, W);
    mc_matmul(&c->wgate, x, n, H, gp, W);
    for (int t = 0; t < n; t++) {
        int pos = p0 + t;
        size_t slot = (size_t)(pos % (2 * R)) * W;
        const float *ape = c->ape + (size_t)(pos % R) * W;
        for (int i = 0; i < W; i++) {
            s->ring_kv[slot + i] = kvp[(size_t)t * W + i];
            s->ring_gate[slot + i] = gp[(size_t)t * W + i] + ape[i];
        }
        if ((pos + 1) % R == 0) {
            int w = (pos + 1) / R - 1;
            if (w < s->max_entries && w == s->n_entries) {
                comp_emit(m, c, s, w, gbuf, kbuf);
                s->n_entries = w + 1;
            }
        }
    }
}

/* ---- top-k selection as the reference's CPU topk makes it ----
 * torch.topk on CPU (k*64 > n) runs std::nth_element (libstdc++ introselect:
 * median-of-three quickselect, insertion sort below 4 elements) with
 * "greater" and keeps the first k. Among equal scores the survivors are the
 * ones that algorithm leaves in front, so the same algorithm is used here:
 * the indexer's ReLU makes exact ties (score 0) common. */
static int sel_gt(const mc_v4_sel *a, const mc_v4_sel *b)
{
    return (isnan(a->v) && !isnan(b->v)) || a->v > b->v;
}

static void sel_swap(mc_v4_sel *a, mc_v4_sel *b)
{
    mc_v4_sel t = *a;
    *a = *b;
    *b = t;
}

static void sel_insertion(mc_v4_sel *first, mc_v4_sel *last)
{
    if (first == last)
        return;
    for (mc_v4_sel *i = first + 1; i < last; i++) {
        mc_v4_sel val = *i;
        if (sel_gt(&val, first)) {
            memmove(first + 1, first, (size_t)(i - first) * sizeof *first);
            *first = val;
        } else {
            mc_v4_sel *j = i;
            while (sel_gt(&val, j - 1)) {
                *j = *(j - 1);
                j--;
            }
            *j = val;
        }
    }
}

/* Moves the median of a, b, c to *r. */
static void sel_median_to_first(mc_v4_sel *r, mc_v4_sel *a, mc_v4_sel *b, mc_v4_sel *c)
{
    if (sel_gt(a, b)) {
        if (sel_gt(b, c))
            sel_swap(r, b);
        else if (sel_gt(a, c))
            sel_swap(r, c);
        else
            sel_swap(r, a);
    } else if (sel_gt(a, c)) {
        sel_swap(r, a);
    } else if (sel_gt(b, c)) {
        sel_swap(r, c);
    } else {
        sel_swap(r, b);
    }
}

static mc_v4_sel *sel_partition(mc_v4_sel *first, mc_v4_sel *last, const mc_v4_sel *pivot)
{
    for (;;) {
        while (sel_gt(first, pivot))
            first++;
        last--;
        while (sel_gt(pivot, last))
            last--;
        if (!(first < last))
            return first;
        sel_swap(first, last);
        first++;
    }
}

void mc_v4_select_topk(mc_v4_sel *q, int n, int k)
{
    if (k <= 0 || k >= n)
        return;
    mc_v4_sel *first = q, *last = q + n, *nth = q + k - 1;
    int depth = 0;
    for (int m = n; m > 1; m >>= 1)
        depth += 2; /* 2 * floor(log2(n)) */
    while (last - first > 3) {
        if (depth-- == 0)
            break; /* pathological input: finish with insertion sort below */
        mc_v4_sel *mid = first + (last - first) / 2;
        sel_median_to_first(first, first + 1, mid, last - 1);
        mc_v4_sel *cut = sel_partition(first + 1, last, first);
        if (cut <= nth)
            first = cut;
        else
            last = cut;
    }
    sel_insertion(first, last);
}

/* Lightning indexer for one query: scores the nv visible entries, pads the
 * row with -inf up to n_row (the entries the cache holds, as the
 * reference's score row), picks the top min(topk, n_row) and keeps the
 * visible picks; returns their count. */
static int index_select(const mc_model *m, const mc_v4_comp_state *is, const float *iq,
                        const float *iw, int nv, int n_row, mc_v4_sel *q, int *sel)
{
    const mc_v4_desc *v = &m->d.v4;
    int inh = v->index_n_heads, icd = v->index_head_dim;
    float scale = 1.0f / sqrtf((float)icd);
    for (int s = 0; s < n_row; s++) {
        q[s].i = s;
        q[s].v = -INFINITY;
        if (s >= nv)
            continue;
        const float *ks = is->entries + (size_t)s * icd;
        float acc = 0;
        for (int h = 0; h < inh; h++) {
            float dp = mc_dot(iq + (size_t)h * icd, ks, icd);
            acc += (dp > 0 ? dp : 0) * scale * iw[h];
        }
        q[s].v = acc;
    }
    int k = v->index_topk < n_row ? v->index_topk : n_row;
    mc_v4_select_topk(q, n_row, k);
    int ns = 0;
    for (int j = 0; j < k; j++)
        if (q[j].i < nv)
            sel[ns++] = q[j].i;
    return ns;
}

mc_status mc_v4_attention(const mc_model *m, int l, mc_kv *kv, const float *x, int n, float *y,
                          mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_v4_desc *v = &d->v4;
    const mc_v4_model *vm = m->v4;
    const mc_v4_layer *L = &vm->layers[l];
    mc_v4_layer_state *ls = &((mc_v4_kv *)kv->ext)->layers[l];
    int H = d->hidden, nh = d->n_heads, hd = d->head_dim, qr = d->q_lora_rank;
    int rd = d->rope.dim, half = rd / 2, G = v->o_groups, olr = v->o_lora_rank;
    int win = v->sliding_window < kv->cap ? v->sliding_window : kv->cap;
    int p0 = kv->len, inh = v->index_n_heads, icd = v->index_head_dim;
    const double *inv = L->kind == MC_V4_ATTN_SLIDING ? vm->inv_main : vm->inv_comp;
    int maxe = L->kind == MC_V4_ATTN_SLIDING ? 0 : ls->comp.max_entries;
    int cw = L->kind == MC_V4_ATTN_SLIDING ? 0 : 2 * L->comp.cd;
    int R2 = L->kind == MC_V4_ATTN_SLIDING ? 0 : 2 * L->comp.rate;
    bool csa = L->kind == MC_V4_ATTN_CSA;
    mc_status st = MC_OK;
    size_t nq = (size_t)n * nh * hd;
    float *qres = mc_malloc_n((size_t)n * qr, sizeof *qres);
    float *q = mc_malloc_n(nq, sizeof *q);
    float *kvn = mc_malloc_n((size_t)n * hd, sizeof *kvn);
    float *o = mc_malloc_n(nq, sizeof *o);
    float *oa = mc_malloc_n((size_t)n * G * olr, sizeof *oa);
    float *cs = mc_malloc_n((size_t)n * half, sizeof *cs);
    float *sn = mc_malloc_n((size_t)n * half, sizeof *sn);
    float *score = mc_malloc_n((size_t)win + maxe + 1, sizeof *score);
    int *sel = mc_malloc_n((size_t)maxe + 1, sizeof *sel);
    mc_v4_sel *isc = mc_malloc_n((size_t)maxe + 1, sizeof *isc);
    size_t pw = (size_t)n * (cw > 2 * icd ? cw : 2 * icd);
    float *kvp = mc_malloc_n(pw + 1, sizeof *kvp), *gp = mc_malloc_n(pw + 1, sizeof *gp);
    float *gbuf = mc_malloc_n((size_t)R2 + 1, sizeof *gbuf);
    float *kbuf = mc_malloc_n((size_t)R2 + 1, sizeof *kbuf);
    float *iq = csa ? mc_malloc_n((size_t)n * inh * icd, sizeof *iq) : NULL;
    float *iw = csa ? mc_malloc_n((size_t)n * inh, sizeof *iw) : NULL;
    if (!qres || !q || !kvn || !o || !oa || !cs || !sn || !score || !sel || !isc || !kvp || !gp ||
        !gbuf || !kbuf || (csa && (!iq || !iw))) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory in deepseek_v4 attention");
        goto done;
    }
    for (int t = 0; t < n; t++)
        mc_v4_rope_cs(inv, half, p0 + t, cs + (size_t)t * half, sn + (size_t)t * half);
    /* queries: LoRA, weighted norm, per-head plain norm, RoPE on the tail */
    mc_matmul(&L->wq_a, x, n, H, qres, qr);
    for (int t = 0; t < n; t++)
        mc_rmsnorm(qres + (size_t)t * qr, qres + (size_t)t * qr, L->q_norm, qr, d->norm_eps);
    mc_matmul(&L->wq_b, qres, n, qr, q, nh * hd);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++) {
            float *qh = q + ((size_t)t * nh + h) * hd;
            rms_plain(qh, hd, d->norm_eps);
            mc_v4_rope_tail(qh, hd, rd, cs + (size_t)t * half, sn + (size_t)t * half);
        }
    /* the single K=V head */
    mc_matmul(&L->wkv, x, n, H, kvn, hd);
    for (int t = 0; t < n; t++) {
        float *kt = kvn + (size_t)t * hd;
        mc_rmsnorm(kt, kt, L->kv_norm, hd, d->norm_eps);
        mc_v4_rope_tail(kt, hd, rd, cs + (size_t)t * half, sn + (size_t)t * half);
    }
    /* compressors */
    if (L->kind != MC_V4_ATTN_SLIDING)
        comp_feed(m, &L->comp, &ls->comp, x, n, p0, kvp, gp, gbuf, kbuf);
    if (csa) {
        comp_feed(m, &L->icomp, &ls->icomp, x, n, p0, kvp, gp, gbuf, kbuf);
        mc_matmul(&L->idx_wq_b, qres, n, qr, iq, inh * icd);
        mc_matmul(&L->idx_wproj, x, n, H, iw, inh);
        float ws = 1.0f / sqrtf((float)inh);
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < inh; h++)
                mc_v4_rope_tail(iq + ((size_t)t * inh + h) * icd, icd, rd, cs + (size_t)t * half,
                                sn + (size_t)t * half);
            for (int h = 0; h < inh; h++)
                iw[(size_t)t * inh + h] *= ws;
        }
    }
    /* attention per token */
    for (int t = 0; t < n; t++) {
        int p = p0 + t, lo = p - win + 1 > 0 ? p - win + 1 : 0, nw = p - lo + 1;
        int ne = 0;
        if (L->kind != MC_V4_ATTN_SLIDING) {
            int nv = (p + 1) / L->comp.rate;
            if (nv > ls->comp.n_entries)
                nv = ls->comp.n_entries;
            if (csa) {
                if (nv > ls->icomp.n_entries)
                    nv = ls->icomp.n_entries;
                ne = index_select(m, &ls->icomp, iq + (size_t)t * inh * icd, iw + (size_t)t * inh,
                                  nv, ls->icomp.max_entries, isc, sel);
            } else {
                ne = nv;
                for (int s = 0; s < nv; s++)
                    sel[s] = s;
            }
        }
        for (int h = 0; h < nh; h++) {
            const float *qh = q + ((size_t)t * nh + h) * hd;
            float mx = L->sinks[h];
            for (int i = 0; i < nw; i++) {
                int s = lo + i;
                const float *ks = s >= p0 ? kvn + (size_t)(s - p0) * hd : ls->win + (size_t)(s % win) * hd;
                score[i] = mc_dot(qh, ks, hd) * d->attn_scale;
                mx = score[i] > mx ? score[i] : mx;
            }
            for (int j = 0; j < ne; j++) {
                score[nw + j] = mc_dot(qh, ls->comp.entries + (size_t)sel[j] * hd, hd) * d->attn_scale;
                mx = score[nw + j] > mx ? score[nw + j] : mx;
            }
            double den = exp((double)L->sinks[h] - mx);
            for (int i = 0; i < nw + ne; i++) {
                score[i] = expf(score[i] - mx);
                den += score[i];
            }
            float inv_den = (float)(1.0 / den);
            float *oh = o + ((size_t)t * nh + h) * hd;
            memset(oh, 0, (size_t)hd * sizeof *oh);
            for (int i = 0; i < nw; i++) {
                int s = lo + i;
                const float *ks = s >= p0 ? kvn + (size_t)(s - p0) * hd : ls->win + (size_t)(s % win) * hd;
                mc_axpy(oh, score[i] * inv_den, ks, hd);
            }
            for (int j = 0; j < ne; j++)
                mc_axpy(oh, score[nw + j] * inv_den, ls->comp.entries + (size_t)sel[j] * hd, hd);
            /* undo the value's rotation at the query position */
            float nsn[half];
            for (int i = 0; i < half; i++)
                nsn[i] = -sn[(size_t)t * half + i];
            mc_v4_rope_tail(oh, hd, rd, cs + (size_t)t * half, nsn);
        }
    }
    /* remember the last `win` keys */
    for (int t = n - win > 0 ? n - win : 0; t < n; t++)
        memcpy(ls->win + (size_t)((p0 + t) % win) * hd, kvn + (size_t)t * hd, (size_t)hd * sizeof *kvn);
    /* grouped output projection: group g of heads -> o_lora_rank, then wo_b */
    int gw = nh * hd / G;
    for (int g = 0; g < G; g++) {
        mc_mat wg = L->wo_a;
        wg.rows = olr;
        wg.data = (const uint8_t *)L->wo_a.data +
                  (size_t)g * olr * L->wo_a.row_stride * mc_dtype_size(L->wo_a.dtype);
        mc_matmul(&wg, o + (size_t)g * gw, n, nh * hd, oa + (size_t)g * olr, G * olr);
    }
    mc_matmul(&L->wo_b, oa, n, G * olr, y, H);
done:
    free(qres);
    free(q);
    free(kvn);
    free(o);
    free(oa);
    free(cs);
    free(sn);
    free(score);
    free(sel);
    free(isc);
    free(kvp);
    free(gp);
    free(gbuf);
    free(kbuf);
    free(iq);
    free(iw);
    return st;
}
