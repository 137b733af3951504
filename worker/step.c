/* step.c - the step executor (step.h): one step plan through the decoder
 * stack with backend ops over a paged KV cache.
 *
 * Host code here only builds small index arrays (token ids, sequence rows,
 * positions, block tables, the rows that want logits) and uploads them; all
 * math on activations, weights and the cache is an mc_op_* call, so the
 * same code runs on any backend. */
#include "step_internal.h"

#include "family.h"
#include "log.h"
#include "nonfinite.h"
#include "rope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- known lengths ---- */

static void gr_drop(mc_step_graph *e, int forget);

static size_t len_home(const mc_step_exec *ex, uint64_t id)
{
    uint64_t h = id * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (ex->lens_cap - 1);
}

static mc_step_len *len_find(const mc_step_exec *ex, uint64_t id)
{
    for (size_t i = len_home(ex, id);; i = (i + 1) & (ex->lens_cap - 1)) {
        if (!ex->lens[i].used)
            return NULL;
        if (ex->lens[i].id == id)
            return &ex->lens[i];
    }
}

static mc_status len_grow(mc_step_exec *ex, mc_err *err)
{
    size_t cap = ex->lens_cap * 2;
    mc_step_len *old = ex->lens, *n = calloc(cap, sizeof *n);
    if (!n)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for %zu sequence lengths", cap);
    size_t old_cap = ex->lens_cap;
    ex->lens = n;
    ex->lens_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].used) {
            size_t j = len_home(ex, old[i].id);
            while (n[j].used)
                j = (j + 1) & (cap - 1);
            n[j] = old[i];
        }
    free(old);
    return MC_OK;
}

/* Room for `more` new ids (done before a step changes anything). */
static mc_status len_reserve(mc_step_exec *ex, size_t more, mc_err *err)
{
    while (2 * (ex->lens_n + more) > ex->lens_cap)
        if (len_grow(ex, err) != MC_OK)
            return err->status;
    return MC_OK;
}

static void len_set(mc_step_exec *ex, uint64_t id, uint32_t len)
{
    mc_step_len *s = len_find(ex, id);
    if (!s) {
        size_t i = len_home(ex, id);
        while (ex->lens[i].used)
            i = (i + 1) & (ex->lens_cap - 1);
        s = &ex->lens[i];
        s->used = 1;
        s->id = id;
        ex->lens_n++;
    }
    s->len = len;
}

/* Removes id, shifting back the entries of its probe run. */
static int len_del(mc_step_exec *ex, uint64_t id)
{
    mc_step_len *s = len_find(ex, id);
    if (!s)
        return 0;
    size_t mask = ex->lens_cap - 1, i = (size_t)(s - ex->lens);
    for (size_t j = (i + 1) & mask; ex->lens[j].used; j = (j + 1) & mask) {
        size_t h = len_home(ex, ex->lens[j].id);
        /* entry j may move to hole i when its home is not in (i, j] */
        if (((j - h) & mask) >= ((j - i) & mask)) {
            ex->lens[i] = ex->lens[j];
            i = j;
        }
    }
    ex->lens[i].used = 0;
    ex->lens_n--;
    return 1;
}

static int known_len(void *ctx, uint64_t seq_id, uint32_t *len)
{
    const mc_step_len *s = len_find(ctx, seq_id);
    if (!s)
        return 0;
    *len = s->len;
    return 1;
}

/* ---- buffers and weights ---- */

mc_status mc_step_keep(mc_step_exec *ex, mc_buffer *b, mc_err *err)
{
    if (ex->n_bufs == ex->cap_bufs) {
        size_t nc = ex->cap_bufs ? 2 * ex->cap_bufs : 256;
        mc_buffer **n = realloc(ex->bufs, nc * sizeof *n);
        if (!n) {
            mc_buffer_free(b);
            return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for buffer handles");
        }
        ex->bufs = n;
        ex->cap_bufs = nc;
    }
    ex->bufs[ex->n_bufs++] = b;
    return MC_OK;
}

/* Host bytes [p, p + bytes) as a buffer: borrowed where the backend can,
 * else copied into device memory. */
mc_status mc_step_wrap(mc_step_exec *ex, const void *p, size_t bytes, mc_buffer **out, mc_err *err)
{
    mc_buffer *b = NULL;
    mc_status st = mc_buffer_wrap_host(ex->be, p, bytes, &b, err);
    if (st == MC_ERR_UNSUPPORTED) {
        mc_err_clear(err);
        if (ex->up_bytes == 0)
            ex->up_t0 = ex->up_last = mc_now_s();
        if ((st = mc_buffer_alloc(ex->be, bytes, &b, err)) == MC_OK &&
            (st = mc_buffer_upload(b, 0, p, bytes, err)) != MC_OK) {
            mc_buffer_free(b);
            return st;
        }
        ex->up_bytes += bytes;
    }
    if (st != MC_OK)
        return st;
    *out = b;
    return mc_step_keep(ex, b, err);
}

#define UPLOAD_PROGRESS_S 5.0 /* seconds between two progress lines */

void mc_step_upload_progress(mc_step_exec *ex, int l, int n)
{
    if (ex->up_bytes == 0)
        return;
    double now = mc_now_s(), dt = now - ex->up_t0;
    double gib = (double)ex->up_bytes / (1024.0 * 1024.0 * 1024.0);
    double gbps = dt > 0 ? (double)ex->up_bytes / dt / 1e9 : 0;
    if (l + 1 >= n) {
        if (dt >= 1.0)
            MC_INFO("weights uploaded to the %s backend: %.2f GiB in %.1f s (%.1f GB/s)",
                    mc_backend_name(ex->be), gib, dt, gbps);
    } else if (now - ex->up_last >= UPLOAD_PROGRESS_S) {
        MC_INFO("uploading weights to the %s backend: layer %d of %d, %.2f GiB, %.1f GB/s",
                mc_backend_name(ex->be), l + 1, n, gib, gbps);
        ex->up_last = now;
    }
}

/* A bound weight matrix as a tensor over its own bytes. */
mc_status mc_step_mat(mc_step_exec *ex, const mc_mat *w, const char *what, mc_tensor *t,
                            mc_err *err)
{
    if (!w->data || w->rows < 1 || w->cols < 1)
        return mc_err_set(err, MC_ERR_INTERNAL, "step: weight %s is not bound", what);
    memset(t, 0, sizeof *t);
    t->dtype = w->dtype;
    t->ndim = 2;
    t->shape[0] = w->rows;
    t->shape[1] = w->cols;
    t->row_stride = (int64_t)w->row_stride;
    t->transposed = w->transposed;
    t->pack = w->pack;
    size_t bytes = mc_tensor_extent(t);
    if (bytes == 0)
        return mc_err_set(err, MC_ERR_INTERNAL, "step: weight %s (%s, %d x %d) has no extent", what,
                          mc_dtype_name(w->dtype), w->rows, w->cols);
    mc_status st = mc_step_wrap(ex, w->data, bytes, &t->buf, err);
    if (st != MC_OK || !w->scale)
        return st;
    /* FP8 block scales: (ceil(R / br), ceil(C / bc)) F32, rows scale_cols apart */
    int64_t sr = (w->rows + w->block_rows - 1) / w->block_rows;
    int64_t sc = (w->cols + w->block_cols - 1) / w->block_cols;
    size_t sbytes = ((size_t)(sr - 1) * (size_t)w->scale_cols + (size_t)sc) * sizeof(float);
    mc_buffer *sb;
    mc_tensor s;
    int64_t shape[2] = {sr, sc};
    if ((st = mc_step_wrap(ex, w->scale, sbytes, &sb, err)) != MC_OK ||
        (st = mc_tensor_init_strided(&s, sb, 0, MC_DT_F32, 2, shape, w->scale_cols, err)) != MC_OK)
        return st;
    return mc_tensor_set_scales(t, &s, w->block_rows, w->block_cols, err);
}

/* An F32 vector the model holds (norm weights, biases). */
mc_status mc_step_vec(mc_step_exec *ex, const float *v, int64_t n, const char *what,
                            mc_tensor *t, mc_err *err)
{
    if (!v)
        return mc_err_set(err, MC_ERR_INTERNAL, "step: vector %s is not bound", what);
    mc_buffer *b;
    mc_status st = mc_step_wrap(ex, v, (size_t)n * sizeof *v, &b, err);
    return st != MC_OK ? st : mc_tensor_init(t, b, 0, MC_DT_F32, 1, &n, err);
}

static mc_status bind_ffn(mc_step_exec *ex, const mc_ffn_w *f, mc_step_ffn *o, mc_err *err)
{
    mc_status st;
    if ((st = mc_step_mat(ex, &f->gate, "gate", &o->gate, err)) != MC_OK ||
        (st = mc_step_mat(ex, &f->up, "up", &o->up, err)) != MC_OK)
        return st;
    return mc_step_mat(ex, &f->down, "down", &o->down, err);
}

static mc_status bind_layer(mc_step_exec *ex, int l, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    const mc_layer_w *w = &ex->m->layers[l];
    mc_step_layer *o = &ex->layers[l];
    int H = d->hidden, E = d->n_experts;
    mc_status st;
    if ((st = mc_step_vec(ex, w->attn_norm, H, "attn_norm", &o->attn_norm, err)) != MC_OK ||
        (st = mc_step_vec(ex, w->ffn_norm, H, "ffn_norm", &o->ffn_norm, err)) != MC_OK ||
        (st = mc_step_mat(ex, &w->wo, "wo", &o->wo, err)) != MC_OK)
        return st;
    if ((st = mc_step_bind_attn(ex, l, err)) != MC_OK)
        return st;
    o->moe = w->moe;
    if (!w->moe)
        return bind_ffn(ex, &w->dense, &o->dense, err);
    if ((st = mc_step_mat(ex, &w->router, "router", &o->router, err)) != MC_OK)
        return st;
    o->has_bias = w->score_bias != NULL;
    if (o->has_bias &&
        (st = mc_step_vec(ex, w->score_bias, E, "score_bias", &o->bias, err)) != MC_OK)
        return st;
    /* this rank's routed experts [expert0, expert1), indexed from 0 */
    int e0 = ex->m->lay.expert0, ne = ex->m->lay.expert1 - e0;
    o->gate = calloc((size_t)3 * (ne > 0 ? ne : 1), sizeof *o->gate);
    if (!o->gate)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for layer %d's experts", l);
    o->up = o->gate + ne;
    o->down = o->gate + 2 * ne;
    for (int e = 0; e < ne; e++) {
        const mc_ffn_w *f = &w->experts[e0 + e];
        if ((st = mc_step_mat(ex, &f->gate, "expert gate", &o->gate[e], err)) != MC_OK ||
            (st = mc_step_mat(ex, &f->up, "expert up", &o->up[e], err)) != MC_OK ||
            (st = mc_step_mat(ex, &f->down, "expert down", &o->down[e], err)) != MC_OK)
            return st;
    }
    o->has_shared = w->has_shared;
    return w->has_shared ? bind_ffn(ex, &w->shared, &o->shared, err) : MC_OK;
}

/* What the decoder stack runs; anything else is named and refused. */
mc_status mc_step_decoder_supported(const mc_model *m, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    if (d->router == MC_ROUTER_LLAMA4 && d->n_experts_per_tok != 1)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "step executor: the Llama 4 router with %d experts per token (%s; "
                          "only 1 is supported)",
                          d->n_experts_per_tok, d->model_type);
    return mc_step_attn_supported(m, err);
}

/* ---- scratch ---- */

void mc_step_carve(mc_step_carver *c, mc_tensor *t, mc_dtype dt, int ndim, int64_t a, int64_t b, int64_t cc,
                  mc_err *err)
{
    int64_t shape[3] = {a, b, cc};
    size_t n = (size_t)a * (size_t)(ndim > 1 ? b : 1) * (size_t)(ndim > 2 ? cc : 1);
    size_t bytes = n * mc_dtype_size(dt);
    if (c->buf && c->st == MC_OK)
        c->st = mc_tensor_init(t, c->buf, c->off, dt, ndim, shape, err);
    c->off += (bytes + 63) & ~(size_t)63;
}

static void carve_all(mc_step_exec *ex, mc_step_carver *c, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int64_t T = ex->max_tokens, H = d->hidden, E = d->n_experts > 0 ? d->n_experts : 1;
    int64_t k = d->n_experts_per_tok > 0 ? d->n_experts_per_tok : 1;
    int64_t I = d->dense_inter > d->shared_inter ? d->dense_inter : d->shared_inter;
    int64_t R = T < MC_STEP_HEAD_ROWS ? T : MC_STEP_HEAD_ROWS;
    mc_step_carve(c, &ex->x, MC_DT_F32, 2, T, H, 0, err);
    mc_step_carve(c, &ex->xn, MC_DT_F32, 2, T, H, 0, err);
    mc_step_carve(c, &ex->tmp, MC_DT_F32, 2, T, H, 0, err);
    mc_step_carve_attn(ex, c, err);
    mc_step_carve(c, &ex->rlog, MC_DT_F32, 2, T, E, 0, err);
    mc_step_carve(c, &ex->ids, MC_DT_I32, 2, T, k, 0, err);
    mc_step_carve(c, &ex->slot, MC_DT_I32, 2, T, k, 0, err);
    mc_step_carve(c, &ex->wts, MC_DT_F32, 2, T, k, 0, err);
    mc_step_carve(c, &ex->offsets, MC_DT_I32, 1, E + 1, 0, 0, err);
    mc_step_carve(c, &ex->xp, MC_DT_F32, 2, T * k, H, 0, err);
    mc_step_carve(c, &ex->yp, MC_DT_F32, 2, T * k, H, 0, err);
    mc_step_carve(c, &ex->wp, MC_DT_F32, 2, T * k, 1, 0, err);
    mc_step_carve(c, &ex->g, MC_DT_F32, 2, T, I > 0 ? I : 1, 0, err);
    mc_step_carve(c, &ex->u, MC_DT_F32, 2, T, I > 0 ? I : 1, 0, err);
    mc_step_carve(c, &ex->hx, MC_DT_F32, 2, R, H, 0, err);
    mc_step_carve(c, &ex->hlog, MC_DT_F32, 2, R, d->vocab, 0, err);
    mc_step_carve(c, &ex->tok, MC_DT_I32, 1, T, 0, 0, err);
    mc_step_carve(c, &ex->seq, MC_DT_I32, 1, T, 0, 0, err);
    mc_step_carve(c, &ex->pos, MC_DT_I32, 1, T, 0, 0, err);
    mc_step_carve(c, &ex->rows, MC_DT_I32, 1, T, 0, 0, err);
}

mc_status mc_step_alloc_buf(mc_step_exec *ex, size_t bytes, const char *what, mc_buffer **out,
                           mc_err *err)
{
    mc_status st = mc_buffer_alloc(ex->be, bytes, out, err);
    if (st != MC_OK) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        mc_err_clear(err); /* the first error wins: replace it with one naming what */
        return mc_err_set(err, st, "step: cannot allocate %zu bytes for %s: %s", bytes, what, why);
    }
    return mc_step_keep(ex, *out, err);
}

/* KV pages of every layer and the RoPE tables. */
static mc_status alloc_cache(mc_step_exec *ex, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_status st;
    for (int l = ex->m->lay.layer0; l < ex->m->lay.layer1; l++)
        if ((st = mc_step_alloc_attn_pages(ex, l, err)) != MC_OK)
            return st;
    int half = d->rope.dim / 2;
    size_t nt = (size_t)ex->max_pos * (size_t)half;
    float *cs = mc_malloc_n(2 * nt, sizeof *cs); /* (max_pos, half) cos, then sin */
    if (!cs)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for RoPE tables");
    mc_rope_tables(ex->m, 0, (int)ex->max_pos, cs, cs + nt);
    mc_buffer *b;
    if ((st = mc_step_alloc_buf(ex, 2 * nt * sizeof *cs, "RoPE tables", &b, err)) == MC_OK &&
        (st = mc_buffer_upload(b, 0, cs, 2 * nt * sizeof *cs, err)) == MC_OK &&
        (st = mc_tensor_init_2d(&ex->cs, b, 0, MC_DT_F32, ex->max_pos, half, err)) == MC_OK)
        st = mc_tensor_init_2d(&ex->sn, b, nt * sizeof *cs, MC_DT_F32, ex->max_pos, half, err);
    free(cs);
    return st;
}

/* The decoder stack's weights as tensors, its KV pages and scratch. */
mc_status mc_step_decoder_init(mc_step_exec *ex, mc_err *err)
{
    mc_model *m = ex->m;
    const mc_model_desc *d = &m->d;
    mc_status st;
    /* this rank's share: the embedding on the first stage, the final norm
     * and the LM head's vocabulary slice on the last, the stage's layers */
    ex->first = m->lay.stage == 0;
    ex->last = m->lay.stage == m->lay.pp - 1;
    if (ex->first && (st = mc_step_mat(ex, &m->embed, "embed", &ex->embed, err)) != MC_OK)
        return st;
    if (ex->last &&
        ((st = mc_step_mat(ex, &m->lm_head, "lm_head", &ex->lm_head, err)) != MC_OK ||
         (st = mc_step_vec(ex, m->final_norm, d->hidden, "final_norm", &ex->final_norm, err)) !=
             MC_OK))
        return st;
    for (int l = m->lay.layer0; l < m->lay.layer1; l++) {
        if ((st = bind_layer(ex, l, err)) != MC_OK)
            return st;
        mc_step_upload_progress(ex, l - m->lay.layer0, m->lay.layer1 - m->lay.layer0);
    }
    if ((st = alloc_cache(ex, err)) != MC_OK)
        return st;
    mc_step_carver c = {0};
    carve_all(ex, &c, err);
    if ((st = mc_step_alloc_buf(ex, c.off, "activations", &c.buf, err)) != MC_OK)
        return st;
    c.off = 0;
    carve_all(ex, &c, err);
    if ((st = c.st) != MC_OK)
        return st;
    return MC_OK;
}

void mc_step_decoder_free(mc_step_exec *ex)
{
    if (ex->layers)
        for (int l = 0; l < ex->m->d.n_layers; l++) {
            free(ex->layers[l].gate);
            free(ex->layers[l].kb);
        }
}

mc_status mc_step_exec_init(mc_model *m, mc_backend *be, uint32_t n_blocks, uint32_t block_size,
                            uint32_t max_batch_tokens, mc_step_exec **out, mc_err *err)
{
    *out = NULL;
    if (n_blocks < 1 || block_size < 1 || max_batch_tokens < 1 ||
        max_batch_tokens > MC_STEP_MAX_TOKENS)
        return mc_err_set(err, MC_ERR_ARG,
                          "step executor: n_blocks %u, block_size %u and "
                          "max_batch_tokens %u must be >= 1 (max_batch_tokens <= %u)",
                          n_blocks, block_size, max_batch_tokens, MC_STEP_MAX_TOKENS);
    const mc_family_ops *fam = mc_family_ops_of(m->d.family);
    mc_status st = fam->exec_supported(m, err);
    if (st != MC_OK)
        return st;
    const mc_model_desc *d = &m->d;
    mc_step_exec *ex = calloc(1, sizeof *ex);
    if (!ex)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory");
    ex->m = m;
    ex->be = be;
    ex->fam = fam;
    ex->n_blocks = n_blocks;
    ex->block_size = block_size;
    const char *gv = getenv("MC_STEP_GRAPHS");
    ex->graphs = gv && strcmp(gv, "1") == 0;
    if (ex->graphs) /* room for the most dummy tokens a padded step has */
        ex->n_trash = (MC_STEP_PAD_MAX + block_size - 1) / block_size;
    ex->max_tokens = max_batch_tokens;
    ex->nh = m->lay.n_heads;
    ex->nkv = d->attn == MC_ATTN_GQA ? m->lay.n_kv_heads : 1;
    uint64_t cap = (uint64_t)n_blocks * block_size;
    if (cap > INT32_MAX)
        cap = INT32_MAX;
    /* the context, bounded by what the pool can hold */
    ex->max_pos =
        d->max_pos > 0 && (uint64_t)d->max_pos < cap ? (uint32_t)d->max_pos : (uint32_t)cap;
    ex->lens_cap = 64;
    ex->lens = calloc(ex->lens_cap, sizeof *ex->lens);
    ex->layers = calloc((size_t)d->n_layers, sizeof *ex->layers);
    if (!ex->lens || !ex->layers) {
        st = mc_err_set(err, MC_ERR_NOMEM, "step: out of memory");
        goto fail;
    }
    if ((st = mc_kv_pool_init(&ex->pool, n_blocks, block_size, err)) != MC_OK ||
        (st = mc_arena_init(0, 0, &ex->arena, err)) != MC_OK)
        goto fail;
    /* the family's weights, caches and scratch */
    if ((st = fam->exec_init(ex, err)) != MC_OK)
        goto fail;
    *out = ex;
    return MC_OK;
fail:
    mc_step_exec_free(ex);
    return st;
}

void mc_step_exec_free(mc_step_exec *ex)
{
    if (!ex)
        return;
    if (ex->graphs)
        MC_INFO("step graphs: %llu captured, %llu launched, %llu shapes of step op by op",
                (unsigned long long)ex->gr_captures, (unsigned long long)ex->gr_launches,
                (unsigned long long)ex->gr_failed);
    for (int i = 0; i < MC_STEP_GRAPHS_MAX; i++) /* before the buffers they use */
        gr_drop(&ex->gr[i], 1);
    if (ex->fam)
        ex->fam->exec_free(ex);
    for (size_t i = ex->n_bufs; i > 0; i--)
        mc_buffer_free(ex->bufs[i - 1]);
    free(ex->bufs);
    for (size_t i = 0; i < ex->n_host; i++)
        free(ex->host[i]);
    free(ex->host);
    free(ex->layers);
    free(ex->nf_sites);
    mc_buffer_free(ex->bt_buf);
    mc_buffer_free(ex->top_buf);
    mc_buffer_free(ex->ep_buf);
    mc_comm_shm_free(ex->ep_shm);
    mc_kv_pool_free(ex->pool);
    mc_arena_free(ex->arena);
    free(ex->lens);
    free(ex);
}

mc_kv_pool *mc_step_exec_pool(mc_step_exec *ex)
{
    return ex->pool;
}

void mc_step_exec_limits(const mc_step_exec *ex, mc_step_limits *lim)
{
    memset(lim, 0, sizeof *lim);
    lim->vocab = (uint32_t)ex->m->d.vocab;
    lim->n_blocks = ex->n_blocks;
    lim->block_size = ex->block_size;
    lim->max_pos = ex->max_pos;
    lim->max_batch_tokens = ex->max_tokens;
    lim->known_len = known_len;
    lim->known_ctx = (void *)ex;
}

uint32_t mc_step_exec_seq_len(const mc_step_exec *ex, uint64_t seq_id)
{
    const mc_step_len *s = len_find(ex, seq_id);
    return s ? s->len : 0;
}

mc_status mc_step_exec_release(mc_step_exec *ex, uint64_t seq_id, mc_err *err)
{
    int known = len_del(ex, seq_id);
    uint32_t nb;
    if (mc_kv_pool_table(ex->pool, seq_id, &nb))
        return mc_kv_pool_release(ex->pool, seq_id, err);
    if (!known)
        return mc_err_set(err, MC_ERR_NOT_FOUND, "step: release of unknown sequence %llu",
                          (unsigned long long)seq_id);
    return MC_OK;
}

/* ---- one step ---- */

/* ---- decode-step graphs ---- */

/* Drops an entry's graph: back to warm (captured again on its next step),
 * or with forget to free. */
static void gr_drop(mc_step_graph *e, int forget)
{
    mc_graph_free(e->g);
    e->g = NULL;
    free(e->sites);
    e->sites = NULL;
    e->n_sites = 0;
    if (forget || e->state == 2)
        e->state = forget ? 0 : 1;
}

void mc_step_exec_graph_counts(const mc_step_exec *ex, uint64_t *launches, uint64_t *captures,
                               uint64_t *refused)
{
    *launches = ex->gr_launches;
    *captures = ex->gr_captures;
    *refused = ex->gr_failed;
}

/* The entry of this step's shape: found, or a free or the least recently
 * used one claimed (state 0). */
static mc_step_graph *gr_entry(mc_step_exec *ex, const mc_step_host_ix *hx, uint32_t mb)
{
    int k = ex->top ? ex->top->k : 0, lse = ex->top && ex->top->lse;
    mc_step_graph *lru = NULL; /* a free entry, else the least recently used */
    for (int i = 0; i < MC_STEP_GRAPHS_MAX; i++) {
        mc_step_graph *e = &ex->gr[i];
        if (e->state != 0 && e->n == hx->n && e->nl == hx->nl && e->ns == hx->ns &&
            e->maxb == mb && e->k == k && e->lse == lse)
            return e;
        if (lru && lru->state == 0)
            continue;
        if (!lru || e->state == 0 || e->used < lru->used)
            lru = e;
    }
    gr_drop(lru, 1);
    *lru = (mc_step_graph){.n = hx->n, .nl = hx->nl, .ns = hx->ns, .maxb = mb, .k = k, .lse = lse};
    return lru;
}

/* The size a step of n tokens (or n logit rows) is padded to for a graph:
 * 1, 2, 4, 8, then multiples of 8 to 64, of 16 to 256, of 32 to 512; as
 * it is past 512 (at most MC_STEP_PAD_MAX - 1 added). */
static int64_t gr_bucket(int64_t n)
{
    if (n <= 4)
        return n <= 1 ? 1 : n <= 2 ? 2 : 4;
    int64_t q = n <= 64 ? 8 : n <= 256 ? 16 : n <= 512 ? 32 : 1;
    return (n + q - 1) / q * q;
}

/* Whether a step of n tokens and nl logit rows is padded (the executor runs
 * graphs, and the step would qualify for one: gr_eligible). */
static int gr_pad_ok(const mc_step_exec *ex, int64_t n, int64_t nl)
{
    const mc_model *m = ex->m;
    /* (V3.2's indexer waits: never a graph, so never padded; the dummy
     * positions within the RoPE tables) */
    return ex->graphs && ex->fam->exec_forward == mc_step_decoder_forward && ex->nf_defer &&
           !m->stats && m->fault.rank < 0 && m->lay.tp == 1 && m->lay.ep == 1 &&
           m->lay.pp == 1 && m->d.index_topk <= 0 && n <= 512 &&
           gr_bucket(n) - n <= (int64_t)ex->max_pos && gr_bucket(nl) <= ex->hx.shape[0];
}

/* Whether this step may run as a graph: a decoder rank without collectives
 * inside its step, with deferred checks (a graph holds no wait), no
 * timers or injected faults, the head's rows in one chunk. */
static int gr_eligible(const mc_step_exec *ex, const mc_step_host_ix *hx)
{
    const mc_model *m = ex->m;
    return ex->graphs && ex->nf_defer && !m->stats && m->fault.rank < 0 && m->lay.tp == 1 &&
           m->lay.ep == 1 && m->lay.pp == 1 && hx->nl <= ex->hx.shape[0];
}

static mc_status graph_stack(mc_step_exec *ex, mc_step_views *s, const mc_step_host_ix *hx,
                             float *logits, mc_err *err);

mc_status mc_step_grow(mc_step_exec *ex, mc_buffer **buf, size_t *cap, size_t need,
                       mc_err *err)
{
    if (need <= *cap)
        return MC_OK;
    /* the graphs hold the buffer being replaced */
    for (int i = 0; i < MC_STEP_GRAPHS_MAX; i++)
        gr_drop(&ex->gr[i], 0);
    size_t c = need > 2 * *cap ? need : 2 * *cap;
    mc_buffer *b;
    mc_status st = mc_buffer_alloc(ex->be, c, &b, err);
    if (st != MC_OK)
        return st;
    mc_buffer_free(*buf);
    *buf = b;
    *cap = c;
    return MC_OK;
}

/* The block table (ns, width) on the device: hx->bt, padded with zeros
 * past hx->maxb (entries past a sequence's table are never read). */
static mc_status table_tensor(mc_step_exec *ex, const mc_step_host_ix *hx, uint32_t width,
                              mc_tensor *out, mc_err *err)
{
    size_t bytes = (size_t)hx->ns * (size_t)width * sizeof *hx->bt;
    const int32_t *bt = hx->bt;
    if (width != hx->maxb) {
        int32_t *p = mc_arena_alloc_n(ex->arena, (size_t)hx->ns * width, sizeof *p);
        if (!p)
            return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for the block table");
        memset(p, 0, bytes);
        for (uint32_t i = 0; i < hx->ns; i++)
            memcpy(p + (size_t)i * width, hx->bt + (size_t)i * hx->maxb,
                   (size_t)hx->maxb * sizeof *p);
        bt = p;
    }
    mc_status st;
    if ((st = mc_step_grow(ex, &ex->bt_buf, &ex->bt_cap, bytes, err)) != MC_OK ||
        (st = mc_buffer_upload(ex->bt_buf, 0, bt, bytes, err)) != MC_OK)
        return st;
    return mc_tensor_init_2d(out, ex->bt_buf, 0, MC_DT_I32, hx->ns, width, err);
}

mc_status mc_step_table_tensor(mc_step_exec *ex, const mc_step_host_ix *hx, mc_tensor *out,
                               mc_err *err)
{
    return table_tensor(ex, hx, hx->maxb, out, err);
}

/* The decoder stack of this rank's stage on the step's n tokens: embed (the
 * first stage; a vocabulary slice completed by the tp all-reduce) or the
 * previous stage's activations, the stage's blocks, then the next stage or
 * the final norm and LM head. Every collective is named here or in
 * step_block.c. */
static mc_status stack(mc_step_exec *ex, mc_step_views *s, int64_t nl, float *logits, mc_err *err)
{
    mc_model *m = ex->m;
    const mc_layout *lay = &m->lay;
    int L = m->d.n_layers;
    size_t nH = (size_t)s->n * (size_t)m->d.hidden;
    mc_status st;
    if (ex->first) {
        double t = m->stats ? mc_now_s() : 0;
        if ((st = mc_op_embed(ex->be, &ex->embed, &s->tok, lay->vocab0, &s->x, err)) != MC_OK ||
            (lay->tp > 1 &&
             (st = mc_step_tp_all_reduce(ex, MC_STAT_HEAD(L), &s->x, nH, err)) != MC_OK))
            return st;
        if ((st = mc_step_nf(ex, MC_NF_INPUT, 0, &s->x, s->hx->pos, s->hx->tok, err)) != MC_OK)
            return st;
        if (m->stats)
            m->stats[MC_STAT_HEAD(L)].t_total += mc_now_s() - t;
    } else if ((st = mc_step_pp_recv(ex, MC_STAT_PIPE(L), lay->stage - 1, &s->x,
                                     nH * sizeof(float), err)) != MC_OK) {
        return st;
    }
    for (int l = lay->layer0; l < lay->layer1; l++) {
        double t = m->stats ? mc_now_s() : 0;
        mc_fault_check(m, l);
        if ((st = mc_step_block(ex, l, s, err)) != MC_OK)
            return st;
        if (m->stats) {
            m->stats[l].t_total += mc_now_s() - t;
            m->stats[l].steps++;
        }
    }
    if (!ex->last)
        return mc_step_pp_send(ex, MC_STAT_PIPE(L), lay->stage + 1, &s->x, nH * sizeof(float),
                               err);
    if (nl == 0)
        return MC_OK;
    double t = m->stats ? mc_now_s() : 0;
    st = mc_step_head(ex, s, nl, logits, err);
    if (m->stats) {
        m->stats[MC_STAT_HEAD(L)].t_total += mc_now_s() - t;
        m->stats[MC_STAT_HEAD(L)].steps++;
    }
    return st;
}

/* An empty plan: this dp group has nothing to run, but its stage's expert
 * exchange waits for every rank of the ep group. */
mc_status mc_step_decoder_idle(mc_step_exec *ex, mc_err *err)
{
    const mc_layout *lay = &ex->m->lay;
    mc_status st;
    if (lay->ep == 1)
        return MC_OK;
    for (int l = lay->layer0; l < lay->layer1; l++)
        if (ex->layers[l].moe && (st = mc_step_moe_idle(ex, l, err)) != MC_OK)
            return st;
    return MC_OK;
}

static mc_status idle_step(mc_step_exec *ex, mc_err *err)
{
    const mc_layout *lay = &ex->m->lay;
    for (int l = lay->layer0; l < lay->layer1; l++) /* failure tests reach idle ranks too */
        mc_fault_check(ex->m, l);
    return ex->fam->exec_idle(ex, err);
}

/* One step of the decoder stack: the index tensors, then this rank's stage. */
mc_status mc_step_decoder_forward(mc_step_exec *ex, const mc_step_host_ix *hx, float *logits,
                                  mc_err *err)
{
    mc_status st;
    mc_step_views s;
    int graph = gr_eligible(ex, hx);
    uint32_t width = hx->maxb; /* a graph's: the next power of two, fewer shapes */
    while (graph && (width & (width - 1)) != 0)
        width += width & -width;
    if ((st = mc_step_views_make(ex, hx->n, &s, err)) != MC_OK ||
        (st = table_tensor(ex, hx, width, &s.ix.block_table, err)) != MC_OK ||
        (st = mc_tensor_upload(&s.tok, hx->tok, err)) != MC_OK ||
        (st = mc_tensor_upload(&s.ix.seq, hx->seq, err)) != MC_OK ||
        (st = mc_tensor_upload(&s.ix.pos, hx->pos, err)) != MC_OK)
        return st;
    mc_tensor rv;
    if (hx->nl > 0 && ((st = mc_tensor_view_rows(&ex->rows, 0, hx->nl, &rv, err)) != MC_OK ||
                   (st = mc_tensor_upload(&rv, hx->rows, err)) != MC_OK))
        return st;
    s.hx = hx;
    if ((st = mc_step_attn_index(ex, hx, &s, err)) != MC_OK)
        return st;
    if (graph)
        return graph_stack(ex, &s, hx, logits, err);
    return stack(ex, &s, hx->nl, logits, err);
}

/* The stack as this shape's graph: the shape's first step runs op by op
 * (scratch and buffers grow to its size), its second is captured (nothing
 * runs while capturing) and launched, later ones launch the graph; the
 * head's results come down after the launch. A capture that fails (an op
 * that waits) leaves the shape op by op, said once. */
static mc_status graph_stack(mc_step_exec *ex, mc_step_views *s, const mc_step_host_ix *hx,
                             float *logits, mc_err *err)
{
    mc_step_graph *e = gr_entry(ex, hx, (uint32_t)s->ix.block_table.shape[1]);
    e->used = ++ex->gr_clock;
    if (e->state == 2 && mc_graph_stale(e->g))
        gr_drop(e, 0);
    if (e->state == 0 || e->state == 3) {
        mc_status st = stack(ex, s, hx->nl, logits, err);
        if (st == MC_OK && e->state == 0)
            e->state = 1;
        return st;
    }
    if (e->state == 1) {
        mc_err ce;
        mc_err_clear(&ce);
        ex->nf_n = 0;
        mc_status st = mc_backend_capture_begin(ex->be, &ce);
        if (st == MC_OK) {
            ex->head_later = 1;
            st = stack(ex, s, hx->nl, NULL, &ce);
            ex->head_later = 0;
            mc_graph *g = NULL;
            mc_status s2 = mc_backend_capture_end(ex->be, &g, st == MC_OK ? &ce : NULL);
            st = st == MC_OK ? s2 : st;
            e->sites = st == MC_OK && ex->nf_n > 0 ? malloc(ex->nf_n * sizeof *e->sites) : NULL;
            if (st == MC_OK && ex->nf_n > 0 && !e->sites)
                st = mc_err_set(&ce, MC_ERR_NOMEM, "out of memory");
            if (st == MC_OK) {
                if (ex->nf_n > 0)
                    memcpy(e->sites, ex->nf_sites, ex->nf_n * sizeof *e->sites);
                e->n_sites = ex->nf_n;
                e->g = g;
                e->state = 2;
                ex->gr_captures++;
            } else {
                mc_graph_free(g);
            }
        }
        if (st != MC_OK) { /* nothing of the capture ran: the step op by op */
            if (st == MC_ERR_UNSUPPORTED) { /* an op that waits: for good */
                e->state = 3;
                ex->gr_failed++;
                MC_INFO("step graphs: steps of %lld tokens (%u sequences) run op by op, their "
                        "capture failed: %s", (long long)hx->n, hx->ns, ce.msg);
            } else {
                MC_DEBUG("step graphs: a capture failed (tried again): %s", ce.msg);
            }
            ex->nf_n = 0;
            return stack(ex, s, hx->nl, logits, err);
        }
    }
    /* the graph's checks, named by this step's index */
    if (e->n_sites > ex->nf_cap) {
        mc_step_nf_site *p = realloc(ex->nf_sites, e->n_sites * sizeof *p);
        if (!p)
            return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory");
        ex->nf_sites = p;
        ex->nf_cap = e->n_sites;
    }
    if (e->n_sites > 0)
        memcpy(ex->nf_sites, e->sites, e->n_sites * sizeof *e->sites);
    ex->nf_n = e->n_sites;
    mc_status st = mc_graph_launch(e->g, err);
    if (st != MC_OK)
        return st;
    ex->gr_launches++;
    return mc_step_head_fetch(ex, hx->nl, logits, err);
}

static mc_status run(mc_step_exec *ex, const mc_step_plan *plan, float *logits, mc_err *err);

mc_status mc_step_exec_run(mc_step_exec *ex, const mc_step_plan *plan, float *logits, mc_err *err)
{
    ex->top = NULL;
    return run(ex, plan, logits, err);
}

mc_status mc_step_exec_run_top(mc_step_exec *ex, const mc_step_plan *plan, mc_step_top *top,
                               mc_err *err)
{
    if (!top || top->k < 1 || top->k > MC_TOPK_MAX)
        return mc_err_set(err, MC_ERR_ARG, "step: top-k candidates: k = %d is not in 1..%d",
                          top ? top->k : 0, MC_TOPK_MAX);
    /* every tp rank takes k from its vocabulary slice: k at most the smallest
     * (the same answer on every rank: the model's sizes) */
    int nv_min = ex->m->d.vocab;
    for (int p = 0; p < ex->m->lay.tp; p++) {
        int v0, nv;
        mc_split(ex->m->d.vocab, ex->m->lay.tp, p, &v0, &nv);
        nv_min = nv < nv_min ? nv : nv_min;
    }
    if (top->k > nv_min && ex->m->lay.tp > 1)
        return mc_err_set(err, MC_ERR_ARG, "step: top-k candidates: k = %d is past a tp rank's "
                          "vocabulary slice (%d of %d)", top->k, nv_min, ex->m->d.vocab);
    if (top->k > nv_min)
        return mc_err_set(err, MC_ERR_ARG, "step: top-k candidates: k = %d is past the "
                          "vocabulary (%d)", top->k, ex->m->d.vocab);
    for (uint32_t i = 0; plan && i < plan->n_seqs; i++) {
        const mc_step_seq *q = &plan->seqs[i];
        if (q->logits != MC_LOGITS_NONE && q->top_k != (uint32_t)top->k)
            return mc_err_set(err, MC_ERR_ARG, "step plan: seqs[%u].top_k = %u, but this step "
                              "gives %d candidates a row", i, q->top_k, top->k);
    }
    if (plan && mc_step_plan_logit_rows(plan) > 0 && mc_model_is_output(ex->m) &&
        (!top->ids || !top->vals))
        return mc_err_set(err, MC_ERR_ARG, "step: the candidates' ids or vals is NULL");
    ex->top = top;
    mc_status st = run(ex, plan, NULL, err);
    ex->top = NULL;
    return st;
}

static mc_status run(mc_step_exec *ex, const mc_step_plan *plan, float *logits, mc_err *err)
{
    mc_step_limits lim;
    mc_step_exec_limits(ex, &lim);
    /* non-finite checks noted on the device and read at the step's end when
     * the backend defers its checks (a note left by a failed step dropped) */
    ex->nf_defer = !mc_backend_sync_checks(ex->be);
    ex->nf_n = 0;
    ex->cur_hx = NULL;
    if (ex->nf_defer) {
        mc_nonfinite_note stale;
        (void)mc_backend_take_nonfinite(ex->be, &stale, NULL);
    }
    if (plan && plan->n_seqs == 0) /* a dp group with nothing to run */
        return mc_step_nf_settle(ex, idle_step(ex, err), err);
    mc_status st = mc_step_plan_check(plan, &lim, err);
    if (st != MC_OK)
        return st;
    uint32_t ns = plan->n_seqs, maxb = 0;
    for (uint32_t i = 0; i < ns; i++) {
        const mc_step_seq *q = &plan->seqs[i];
        if (q->logits != MC_LOGITS_NONE && q->top_k > 0 && !ex->top)
            return mc_err_set(err, MC_ERR_ARG,
                              "step plan: seqs[%u].top_k = %u: top-k candidates come from "
                              "mc_step_exec_run_top (0 = full logits)",
                              i, q->top_k);
        maxb = q->n_blocks > maxb ? q->n_blocks : maxb;
    }
    int64_t n = (int64_t)mc_step_plan_tokens(plan), nl = (int64_t)mc_step_plan_logit_rows(plan);
    if (nl > 0 && !logits && !ex->top && mc_model_is_output(ex->m))
        return mc_err_set(err, MC_ERR_ARG, "step: logits is NULL but the plan wants %lld rows",
                          (long long)nl);
    if ((st = len_reserve(ex, ns, err)) != MC_OK)
        return st;
    /* a step that may run as a graph is padded to a bucket of tokens and of
     * logit rows, so that batches of any size share a few graphs: dummy
     * tokens (the step's first token again) of a dummy sequence (table row
     * ns) at positions 0.. in the trash blocks past the pool, extra logit
     * rows repeating row 0 (computed, not brought back); the table's rows
     * padded likewise */
    int64_t nb = n, nlb = nl;
    uint32_t nsb = ns, maxbb = maxb;
    if (gr_pad_ok(ex, n, nl)) {
        nb = gr_bucket(n) <= (int64_t)ex->max_tokens ? gr_bucket(n) : n;
        nlb = nl > 0 ? gr_bucket(nl) : 0;
        nsb = (uint32_t)gr_bucket((int64_t)ns + (nb > n));
        if (nb > n && maxbb < ex->n_trash)
            maxbb = ex->n_trash;
    }
    /* the per-token index on the host: (nb) token ids, rows, positions;
     * (nlb) token rows with logits; (nsb, maxbb) block table */
    mc_arena_reset(ex->arena);
    int32_t *tok = mc_arena_alloc_n(ex->arena, (size_t)nb, sizeof *tok);
    int32_t *seq = mc_arena_alloc_n(ex->arena, (size_t)nb, sizeof *seq);
    int32_t *pos = mc_arena_alloc_n(ex->arena, (size_t)nb, sizeof *pos);
    int32_t *rows = mc_arena_alloc_n(ex->arena, (size_t)(nlb > 0 ? nlb : 1), sizeof *rows);
    int32_t *bt = mc_arena_alloc_n(ex->arena, (size_t)nsb * maxbb, sizeof *bt);
    uint32_t *nblk = mc_arena_alloc_n(ex->arena, (size_t)nsb, sizeof *nblk);
    if (!tok || !seq || !pos || !rows || !bt || !nblk)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for the index of %lld tokens",
                          (long long)nb);
    memset(bt, 0, (size_t)nsb * maxbb * sizeof *bt);
    memset(nblk, 0, (size_t)nsb * sizeof *nblk);
    int64_t t = 0, r = 0;
    for (uint32_t i = 0; i < ns; i++) {
        const mc_step_seq *q = &plan->seqs[i];
        for (uint32_t j = 0; j < q->n_blocks; j++)
            bt[(size_t)i * maxbb + j] = (int32_t)q->blocks[j];
        nblk[i] = q->n_blocks;
        for (uint32_t j = 0; j < q->n_tokens; j++, t++) {
            tok[t] = (int32_t)q->tokens[j];
            seq[t] = (int32_t)i;
            pos[t] = (int32_t)(q->start_pos + j);
            if (q->logits == MC_LOGITS_ALL || (q->logits == MC_LOGITS_LAST && j + 1 == q->n_tokens))
                rows[r++] = (int32_t)t;
        }
    }
    if (nb > n) { /* the dummy sequence */
        for (uint32_t j = 0; j < ex->n_trash; j++)
            bt[(size_t)ns * maxbb + j] = (int32_t)(ex->n_blocks + j);
        nblk[ns] = ex->n_trash;
    }
    for (; t < nb; t++) {
        tok[t] = tok[0]; /* a token the step has: its embedding is checked anyway */
        seq[t] = (int32_t)ns;
        pos[t] = (int32_t)(t - n);
    }
    for (; r < nlb; r++)
        rows[r] = rows[0];
    mc_step_host_ix hx = {.n = nb, .nl = nlb, .ns = nsb, .maxb = maxbb, .nl_out = nl,
                          .tok = tok, .seq = seq, .pos = pos, .rows = rows, .bt = bt, .nblk = nblk};
    ex->head_out = nl;
    ex->cur_hx = &hx; /* the non-finite checks name rows by it (until the step ends) */
    /* a device that defers its content checks reports a refusal at a wait:
     * wait here, so that it fails this step (a step without logit rows, a
     * prefill chunk, has waited nowhere) before the lengths move; likewise
     * a non-finite value noted on the device */
    if ((st = ex->fam->exec_forward(ex, &hx, logits, err)) == MC_OK)
        st = mc_backend_synchronize(ex->be, err);
    st = mc_step_nf_settle(ex, st, err);
    ex->cur_hx = NULL;
    if (st != MC_OK)
        return st;
    for (uint32_t i = 0; i < ns; i++)
        len_set(ex, plan->seqs[i].seq_id, plan->seqs[i].start_pos + plan->seqs[i].n_tokens);
    return MC_OK;
}
