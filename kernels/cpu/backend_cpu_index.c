/* cpu/backend_cpu_index.c - the CPU backend's DeepSeek-V3.2 indexer top-k
 * over the paged indexer-key cache (mc_op_indexer_topk in backend.h).
 *
 * The front end (backend_ops.c) has checked dtypes, shapes, buffers and
 * aliasing. Here are the checks on contents only the device sees: each
 * token's sequence index, its position and the block ids of the positions
 * it sees, all checked before anything is written, with an error that names
 * the token and the field.
 *
 * Scores are the reference's (tests/ref/ref_attention.c: indexer_select),
 * operation by operation in F32: v = mc_dot(iq[t, h], key[p]) * score_scale, then
 * acc += relu(v) * w[t, h] * weight_scale over the heads in order, so both
 * rank the same values. The reference picks the top k by k passes over the
 * scores (mc_topk_indices); here a bounded heap under the same total order
 * (higher score first, an exact tie to the lower position) finds the same
 * set in O(S log k). The tokens are split over the kernels' pool
 * (mc_cpu_run_units) when there is enough work, each token whole on one
 * thread with its own score buffer and heap; a key row is read once for all
 * the token's heads (mc_dot_many, each dot as mc_dot). */
#include "backend.h"
#include "kernels.h"
#include "cpu/backend_cpu_internal.h"

#include <stdlib.h>
#include <string.h>

static int32_t block_of(const mc_kv_index *ix, int32_t seq, int64_t j)
{
    return row_i32(&ix->block_table, seq)[j];
}

/* Checks token t's sequence, position and the block ids of [0, pos]. */
static mc_status token_ok(const mc_kv_index *ix, int64_t n_pages, int64_t bs, int64_t t,
                          mc_err *err)
{
    int64_t n_seqs = ix->block_table.shape[0], max_blocks = ix->block_table.shape[1];
    int32_t s = i32_at(&ix->seq, t), pos = i32_at(&ix->pos, t);
    if (s < 0 || s >= n_seqs)
        return mc_err_set(err, MC_ERR_ARG, "indexer_topk: token %lld: seq = %d is outside the "
                          "block table's %lld sequences", (long long)t, (int)s,
                          (long long)n_seqs);
    if (pos < 0 || pos / bs >= max_blocks)
        return mc_err_set(err, MC_ERR_ARG, "indexer_topk: token %lld: pos = %d is outside the "
                          "block table's capacity (%lld blocks of %lld positions)", (long long)t,
                          (int)pos, (long long)max_blocks, (long long)bs);
    for (int64_t j = 0; j <= pos / bs; j++) {
        int32_t b = block_of(ix, s, j);
        if (b < 0 || b >= n_pages)
            return mc_err_set(err, MC_ERR_ARG, "indexer_topk: token %lld: block_table[%d][%lld] "
                              "= %d is outside the cache's %lld blocks", (long long)t, (int)s,
                              (long long)j, (int)b, (long long)n_pages);
    }
    return MC_OK;
}

/* a ranks before b: higher score, or an exact tie and the lower position. */
static int before(const float *score, int32_t a, int32_t b)
{
    return score[a] > score[b] || (score[a] == score[b] && a < b);
}

/* Restores the heap h[0..m) (the last-ranked position at the root) below i. */
static void sift_down(int32_t *h, int64_t m, int64_t i, const float *score)
{
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= m)
            return;
        if (c + 1 < m && before(score, h[c], h[c + 1]))
            c++; /* the child that ranks later */
        if (!before(score, h[i], h[c]))
            return;
        int32_t tmp = h[i];
        h[i] = h[c];
        h[c] = tmp;
        i = c;
    }
}

/* The m best of positions 0..S-1 into out[0..m), best first. h: m of scratch. */
static void top_m(const float *score, int64_t S, int64_t m, int32_t *h, int32_t *out)
{
    for (int64_t p = 0; p < m; p++)
        h[p] = (int32_t)p;
    for (int64_t i = m / 2; i-- > 0;)
        sift_down(h, m, i, score);
    for (int64_t p = m; p < S; p++)
        if (before(score, (int32_t)p, h[0])) {
            h[0] = (int32_t)p;
            sift_down(h, m, 0, score);
        }
    for (int64_t r = m; r > 0; r--) { /* pop the last-ranked first: fill from the back */
        out[r - 1] = h[0];
        h[0] = h[r - 1];
        sift_down(h, r - 1, 0, score);
    }
}

typedef struct {
    const mc_tensor *iq, *w, *key_pages, *sel;
    const mc_kv_index *ix;
    int64_t ih, k, bs, span, hm;
    int id;
    float ss, ws;
} topk_job;

/* Token t: scores of its positions, then its top k. scratch: span scores,
 * hm heap entries, ih query pointers and ih dot products. */
static void topk_token(void *job, int64_t t, int64_t u, void *scratch)
{
    (void)u;
    const topk_job *j = job;
    const mc_kv_index *ix = j->ix;
    float *score = scratch;
    int32_t *heap = (int32_t *)(score + j->span);
    const float **qh = (const float **)((unsigned char *)scratch +
                                        (((size_t)j->span * sizeof(float) +
                                          (size_t)j->hm * sizeof(int32_t) + 7) & ~(size_t)7));
    float *v = (float *)(qh + j->ih);
    int32_t s = i32_at(&ix->seq, t);
    int64_t S = (int64_t)i32_at(&ix->pos, t) + 1, m = j->k < S ? j->k : S;
    const float *wt = row_f32(j->w, t); /* [ih] */
    for (int64_t h = 0; h < j->ih; h++)
        qh[h] = row_f32(j->iq, t * j->ih + h);
    for (int64_t p = 0; p < S; p++) {
        int64_t r = (int64_t)block_of(ix, s, p / j->bs) * j->bs + p % j->bs;
        const void *key = row_kv(j->key_pages, r);
        if (j->key_pages->dtype == MC_DT_BF16) /* a cache in bf16: the keys widened */
            mc_dot_many_bf16(qh, (int)j->ih, key, j->id, v); /* [ih] */
        else
            mc_dot_many(qh, (int)j->ih, key, j->id, v);
        float acc = 0;
        for (int64_t h = 0; h < j->ih; h++) {
            float vh = v[h] * j->ss;
            acc += (vh > 0 ? vh : 0) * wt[h] * j->ws;
        }
        score[p] = acc;
    }
    int32_t *out = row_i32(j->sel, t); /* [k] */
    top_m(score, S, m, heap, out);
    for (int64_t i = m; i < j->k; i++)
        out[i] = -1;
}

mc_status mc_cpu_indexer_topk(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                              const mc_tensor *key_pages, const mc_kv_index *ix,
                              const mc_indexer_opts *opt, mc_tensor *sel, mc_err *err)
{
    mc_arena *sa = mc_cpu_scratch(ctx); /* op scratch, given back on return */
    mc_arena_mark mk = mc_arena_mark_get(sa);
    int64_t n = iq->shape[0], ih = iq->shape[1], k = opt->k;
    int64_t n_pages = key_pages->shape[0], bs = key_pages->shape[1], span = 1;
    int id = (int)iq->shape[2];
    if (key_pages->dtype == MC_DT_BF16 && id > MC_BF16_ROW_MAX)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "indexer_topk: BF16 key pages of rows of %d "
                          "values (at most %d)", id, MC_BF16_ROW_MAX);
    double positions = 0;
    for (int64_t t = 0; t < n; t++) { /* all tokens first: nothing is written on refusal */
        if (token_ok(ix, n_pages, bs, t, err) != MC_OK)
            return err ? err->status : MC_ERR_ARG;
        int64_t S = (int64_t)i32_at(&ix->pos, t) + 1;
        span = S > span ? S : span;
        positions += (double)S;
    }
    topk_job j = {.iq = iq, .w = w, .key_pages = key_pages, .sel = sel, .ix = ix, .ih = ih,
                  .k = k, .bs = bs, .span = span, .hm = k < span ? k : span, .id = id,
                  .ss = opt->score_scale, .ws = opt->weight_scale};
    size_t bytes = (((size_t)span * sizeof(float) + (size_t)j.hm * sizeof(int32_t) + 7) &
                    ~(size_t)7) + (size_t)ih * (sizeof(float *) + sizeof(float));
    if (mc_cpu_run_units(sa, n, 1, bytes, positions * (double)ih * id, topk_token, &j) != MC_OK) {
        mc_arena_reset_to(sa, mk);
        return mc_err_set(err, MC_ERR_NOMEM, "indexer_topk: out of memory for %lld scores",
                          (long long)span);
    }
    mc_arena_reset_to(sa, mk);
    return MC_OK;
}
