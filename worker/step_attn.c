/* step_attn.c - the step executor's attention: binding each family's
 * attention weights, its KV pages, its scratch, and the attention sub-layer
 * of one step (GQA or MLA over the paged cache) as backend ops only:
 * Qwen3 q/k norms; Llama 4's NoPE layers, chunked attention, QK L2 norm and
 * NoPE-layer query temperature; Mistral 4's position-dependent query scale;
 * DeepSeek-V3.2's lightning indexer choosing the positions MLA keeps.
 *
 * Head counts are this rank's (ex->nh query heads, ex->nkv KV heads): under
 * tensor parallelism the model binds only its heads' rows and columns. */
#include "step_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static mc_status flat(const mc_tensor *t, int64_t a, int64_t b, mc_tensor *out, mc_err *err)
{
    int64_t shape[2] = {a, b};
    return mc_tensor_reshape(t, 2, shape, out, err);
}

/* Keeps p (malloc'ed) until the executor is freed; frees it and fails when
 * the list cannot grow. */
static mc_status keep_host(mc_step_exec *ex, void *p, mc_err *err)
{
    void **h = p ? realloc(ex->host, (ex->n_host + 1) * sizeof *h) : NULL;
    if (!h) {
        free(p);
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for a copy of kv_b");
    }
    ex->host = h;
    ex->host[ex->n_host++] = p;
    return MC_OK;
}

static int gcd_int(int a, int b)
{
    while (b) {
        int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* The block edge along a run of rows [r0, r0 + n) of a weight cut in blocks
 * of br rows such that no block of the run straddles two of the weight's:
 * br when r0 is on a block edge, else gcd(br, r0 mod br). */
static int run_block(int r0, int br)
{
    return r0 % br ? gcd_int(br, r0 % br) : br;
}

/* Cells of the scale grid of a rows x cols weight in br x bc blocks. */
static size_t grid_cells(int rows, int cols, int br, int bc)
{
    return (size_t)((rows + br - 1) / br) * (size_t)((cols + bc - 1) / bc);
}

/* The FP8 codes (rows, cols) at byte c of b as a weight whose br x bc
 * block scales lie at byte g of b. */
static mc_status fp8_view(mc_buffer *b, size_t c, size_t g, int rows, int cols, int br, int bc,
                          mc_tensor *t, mc_err *err)
{
    mc_tensor s;
    mc_status st;
    if ((st = mc_tensor_init_2d(t, b, c, MC_DT_F8_E4M3, rows, cols, err)) != MC_OK ||
        (st = mc_tensor_init_2d(&s, b, g, MC_DT_F32, (rows + br - 1) / br, (cols + bc - 1) / bc,
                                err)) != MC_OK)
        return st;
    return mc_tensor_set_scales(t, &s, br, bc, err);
}

/* An FP8 kv_b with block scales (DeepSeek's checkpoints): each head's
 * W_kb[h]^T (lr, nope) and W_vb[h] (vd, lr) copied as FP8 codes, the first
 * transposed, each with its own grid of the weight's scales (blocks of the
 * copy never straddle two of the weight's: run_block), so the products stay
 * FP8 times a block scale (1 byte a weight, the FP8 tile and decode kernels)
 * instead of an F32 copy (4 bytes a weight, the scale rounded into each). */
static mc_status bind_kv_b_fp8(mc_step_exec *ex, const mc_mat *kvb, mc_step_layer *o, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int nh = ex->nh, nope = d->qk_nope_dim, vd = d->v_head_dim, lr = d->kv_lora_rank;
    int br = kvb->block_rows, bc = kvb->block_cols;
    const unsigned char *src = kvb->data;
    /* per head: codes kb (lr * nope) then vb (vd * lr); then every grid */
    size_t codes = (size_t)nh * (size_t)(nope + vd) * (size_t)lr;
    size_t nscale = 0;
    for (int h = 0; h < nh; h++) {
        int h0 = h * (nope + vd);
        nscale += grid_cells(lr, nope, bc, run_block(h0, br)) +
                  grid_cells(vd, lr, run_block(h0 + nope, br), bc);
    }
    size_t soff = (codes + 63) & ~(size_t)63, bytes = soff + nscale * sizeof(float);
    unsigned char *mem = malloc(bytes);
    mc_status st;
    if ((st = keep_host(ex, mem, err)) != MC_OK)
        return st;
    float *grid = (float *)(mem + soff);
    mc_buffer *b;
    if (!(o->kb = calloc((size_t)2 * nh, sizeof *o->kb)))
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for kv_b views");
    o->vb = o->kb + nh;
    /* fill everything first: a backend may take a copy when wrapping */
    size_t c = 0, g = 0;
    for (int h = 0; h < nh; h++) {
        int h0 = h * (nope + vd), v0 = h0 + nope;
        int gk = run_block(h0, br), gv = run_block(v0, br);
        int scb = (lr + bc - 1) / bc;
        for (int i = 0; i < lr; i++) /* kb[h]^T[i][j] = kv_b[h0 + j][i] */
            for (int j = 0; j < nope; j++)
                mem[c + (size_t)i * nope + j] = src[(size_t)(h0 + j) * kvb->row_stride + i];
        c += (size_t)lr * nope;
        for (int a = 0; a < scb; a++) /* rows: blocks of bc over kv_b's columns */
            for (int j = 0; j < (nope + gk - 1) / gk; j++)
                grid[g++] = kvb->scale[(size_t)((h0 + j * gk) / br) * kvb->scale_cols + a];
        for (int r = 0; r < vd; r++)
            memcpy(mem + c + (size_t)r * lr, src + (size_t)(v0 + r) * kvb->row_stride, (size_t)lr);
        c += (size_t)vd * lr;
        for (int r = 0; r < (vd + gv - 1) / gv; r++)
            for (int a = 0; a < scb; a++)
                grid[g++] = kvb->scale[(size_t)((v0 + r * gv) / br) * kvb->scale_cols + a];
    }
    if ((st = mc_step_wrap(ex, mem, bytes, &b, err)) != MC_OK)
        return st;
    c = 0;
    g = soff;
    for (int h = 0; h < nh; h++) {
        int gk = run_block(h * (nope + vd), br), gv = run_block(h * (nope + vd) + nope, br);
        if ((st = fp8_view(b, c, g, lr, nope, bc, gk, &o->kb[h], err)) != MC_OK)
            return st;
        c += (size_t)lr * nope;
        g += grid_cells(lr, nope, bc, gk) * sizeof(float);
        if ((st = fp8_view(b, c, g, vd, lr, gv, bc, &o->vb[h], err)) != MC_OK)
            return st;
        c += (size_t)vd * lr;
        g += grid_cells(vd, lr, gv, bc) * sizeof(float);
    }
    return MC_OK;
}

/* W_kb[h]^T (lr, nope) and W_vb[h] (vd, lr) of every head, out of kv_b
 * (nh * (nope + vd), lr): views of the weight itself when it is an element
 * type; FP8 with block scales: FP8 copies (bind_kv_b_fp8); else views of an
 * F32 copy made once here (block formats have no transposed storage). */
static mc_status bind_kv_b(mc_step_exec *ex, const mc_mat *kvb, mc_step_layer *o, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int nh = ex->nh, nope = d->qk_nope_dim, vd = d->v_head_dim, lr = d->kv_lora_rank;
    mc_tensor full; /* (nh * (nope + vd), lr) */
    mc_status st;
    if (kvb->dtype == MC_DT_F8_E4M3 && kvb->scale && !kvb->transposed && kvb->block_rows > 0 &&
        kvb->block_cols > 0 && kvb->cols == lr && kvb->rows == nh * (nope + vd))
        return bind_kv_b_fp8(ex, kvb, o, err);
    if (kvb->scale || mc_dtype_is_block(kvb->dtype) || kvb->transposed) {
        size_t n = (size_t)kvb->rows * (size_t)lr;
        float *f = mc_malloc_n(n, sizeof *f);
        if ((st = keep_host(ex, f, err)) != MC_OK)
            return st;
        for (int r = 0; r < kvb->rows; r++)
            mc_mat_row_f32(kvb, r, f + (size_t)r * lr);
        mc_buffer *b;
        if ((st = mc_step_wrap(ex, f, n * sizeof *f, &b, err)) != MC_OK ||
            (st = mc_tensor_init_2d(&full, b, 0, MC_DT_F32, kvb->rows, lr, err)) != MC_OK)
            return st;
    } else if ((st = mc_step_mat(ex, kvb, "kv_b", &full, err)) != MC_OK) {
        return st;
    }
    o->kb = calloc((size_t)2 * nh, sizeof *o->kb);
    if (!o->kb)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for kv_b views");
    o->vb = o->kb + nh;
    size_t es = mc_dtype_size(full.dtype);
    for (int h = 0; h < nh; h++) {
        size_t off = full.offset + (size_t)h * (nope + vd) * (size_t)full.row_stride * es;
        if ((st = mc_tensor_init_transposed(&o->kb[h], full.buf, off, full.dtype, lr, nope,
                                            full.row_stride, err)) != MC_OK ||
            (st = mc_tensor_view_rows(&full, (int64_t)h * (nope + vd) + nope, vd, &o->vb[h],
                                      err)) != MC_OK)
            return st;
    }
    return MC_OK;
}

static mc_status bind_mla(mc_step_exec *ex, const mc_layer_w *w, mc_step_layer *o, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_status st;
    o->has_q_lora = d->q_lora_rank > 0;
    if (o->has_q_lora) {
        if ((st = mc_step_mat(ex, &w->q_a, "q_a", &o->q_a, err)) != MC_OK ||
            (st = mc_step_vec(ex, w->q_a_norm, d->q_lora_rank, "q_a_norm", &o->q_a_norm, err)) !=
                MC_OK ||
            (st = mc_step_mat(ex, &w->q_b, "q_b", &o->q_b, err)) != MC_OK)
            return st;
    } else if ((st = mc_step_mat(ex, &w->q_proj, "q_proj", &o->q_proj, err)) != MC_OK) {
        return st;
    }
    if ((st = mc_step_mat(ex, &w->kv_a, "kv_a", &o->kv_a, err)) != MC_OK ||
        (st = mc_step_vec(ex, w->kv_a_norm, d->kv_lora_rank, "kv_a_norm", &o->kv_a_norm, err)) !=
            MC_OK)
        return st;
    if (d->index_topk > 0 &&
        ((st = mc_step_mat(ex, &w->idx_wq_b, "idx_wq_b", &o->idx_wq_b, err)) != MC_OK ||
         (st = mc_step_mat(ex, &w->idx_wk, "idx_wk", &o->idx_wk, err)) != MC_OK ||
         (st = mc_step_vec(ex, w->idx_k_norm, d->index_head_dim, "idx_k_norm", &o->idx_k_norm,
                           err)) != MC_OK ||
         (st = mc_step_vec(ex, w->idx_k_bias, d->index_head_dim, "idx_k_bias", &o->idx_k_bias,
                           err)) != MC_OK ||
         (st = mc_step_mat(ex, &w->idx_weights, "idx_weights", &o->idx_weights, err)) != MC_OK))
        return st;
    return bind_kv_b(ex, &w->kv_b, o, err);
}

mc_status mc_step_attn_supported(const mc_model *m, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const char *why = NULL;
    int nope_layers = 0;
    for (int l = 0; l < d->n_layers; l++)
        nope_layers |= !d->layer_rope[l];
    /* the combinations the per-sequence path does not implement either */
    if (d->attn == MC_ATTN_MLA && d->index_topk > 0 && d->q_lora_rank <= 0)
        why = "the DeepSeek-V3.2 indexer without a query LoRA";
    else if (d->attn == MC_ATTN_MLA &&
             (d->attn_chunk > 0 || d->qk_l2norm || d->attn_temp_tuning || nope_layers))
        why = "MLA with Llama 4 attention variants (chunks, QK L2 norm, NoPE layers)";
    else if (d->attn == MC_ATTN_GQA && (d->llama4_beta != 0 || d->index_topk > 0))
        why = "GQA with the Mistral 4 query scale or the DeepSeek-V3.2 indexer";
    if (why)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "step executor: %s (%s) is not supported yet",
                          why, d->model_type);
    return MC_OK;
}

mc_status mc_step_attn_index(mc_step_exec *ex, const mc_step_host_ix *hx, mc_step_views *s,
                             mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    if (d->llama4_beta == 0 && !d->attn_temp_tuning)
        return MC_OK;
    /* (n) query scales from the positions, as the reference (tests/ref/ref_attention.c) computes them */
    float *qs = mc_arena_alloc_n(ex->arena, (size_t)hx->n, sizeof *qs);
    if (!qs)
        return mc_err_set(err, MC_ERR_NOMEM, "step: out of memory for %lld query scales",
                          (long long)hx->n);
    for (int64_t t = 0; t < hx->n; t++) {
        double p = hx->pos[t];
        qs[t] = d->attn == MC_ATTN_MLA /* Mistral 4: the whole query, every layer */
                    ? (float)(1.0 + d->llama4_beta * log(1.0 + floor(p / d->llama4_orig_max)))
                    /* Llama 4: NoPE layers' temperature */
                    : (float)(log1p(floor((p + 1.0) / d->attn_floor_scale)) * d->attn_temp_scale +
                              1.0);
    }
    return mc_tensor_upload(&s->qscale, qs, err);
}

mc_status mc_step_bind_attn(mc_step_exec *ex, int l, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    const mc_layer_w *w = &ex->m->layers[l];
    mc_step_layer *o = &ex->layers[l];
    int hd = d->head_dim;
    mc_status st;
    if (d->attn == MC_ATTN_MLA) {
        if ((st = bind_mla(ex, w, o, err)) != MC_OK)
            return st;
    } else {
        if ((st = mc_step_mat(ex, &w->wq, "wq", &o->wq, err)) != MC_OK ||
            (st = mc_step_mat(ex, &w->wk, "wk", &o->wk, err)) != MC_OK ||
            (st = mc_step_mat(ex, &w->wv, "wv", &o->wv, err)) != MC_OK)
            return st;
        if ((w->q_norm != NULL) != (w->k_norm != NULL))
            return mc_err_set(err, MC_ERR_UNSUPPORTED,
                              "step: layer %d has only one of q_norm, k_norm", l);
        o->has_qk_norm = w->q_norm != NULL;
        if (o->has_qk_norm &&
            ((st = mc_step_vec(ex, w->q_norm, hd, "q_norm", &o->q_norm, err)) != MC_OK ||
             (st = mc_step_vec(ex, w->k_norm, hd, "k_norm", &o->k_norm, err)) != MC_OK))
            return st;
    }
    return MC_OK;
}

/* One layer's pages: two tensors of one kind (GQA K and V, MLA latent and
 * rope key) of w0 and w1 elements per slot, back to back in one buffer. */
static mc_status alloc_pages(mc_step_exec *ex, int ndim, const int64_t *s0, const int64_t *s1,
                             mc_tensor *t0, mc_tensor *t1, mc_err *err)
{
    size_t e0 = 1, e1 = 1;
    for (int i = 0; i < ndim; i++) {
        e0 *= (size_t)s0[i];
        e1 *= (size_t)s1[i];
    }
    mc_buffer *b;
    mc_status st;
    mc_dtype dt = ex->m->kv_dtype; /* F32, or BF16 (--kv-cache-dtype) */
    size_t es = mc_dtype_size(dt);
    if ((st = mc_step_alloc_buf(ex, (e0 + e1) * es, "KV pages", &b, err)) != MC_OK ||
        (st = mc_tensor_init(t0, b, 0, dt, ndim, s0, err)) != MC_OK)
        return st;
    return mc_tensor_init(t1, b, e0 * es, dt, ndim, s1, err);
}

mc_status mc_step_alloc_attn_pages(mc_step_exec *ex, int l, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int64_t nb = (int64_t)ex->n_blocks + ex->n_trash, bs = ex->block_size;
    int64_t kv[4] = {nb, bs, ex->nkv, d->head_dim};
    int64_t lat[3] = {nb, bs, d->kv_lora_rank}, pe[3] = {nb, bs, d->qk_rope_dim};
    mc_step_layer *o = &ex->layers[l];
    if (d->attn != MC_ATTN_MLA)
        return alloc_pages(ex, 4, kv, kv, &o->k_pages, &o->v_pages, err);
    mc_status st = alloc_pages(ex, 3, lat, pe, &o->lat_pages, &o->pe_pages, err);
    if (st != MC_OK || d->index_topk <= 0)
        return st;
    /* V3.2 indexer keys (n_blocks, block_size, id) */
    int64_t ik[3] = {nb, bs, d->index_head_dim};
    mc_buffer *b;
    mc_dtype dt = ex->m->kv_dtype;
    if ((st = mc_step_alloc_buf(ex, (size_t)(nb * bs * ik[2]) * mc_dtype_size(dt),
                                "indexer key pages", &b, err)) != MC_OK)
        return st;
    return mc_tensor_init(&o->idx_pages, b, 0, dt, 3, ik, err);
}

void mc_step_carve_attn(mc_step_exec *ex, mc_step_carver *c, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int64_t T = ex->max_tokens, nh = ex->nh, nkv = ex->nkv, hd = d->head_dim;
    if (d->attn == MC_ATTN_GQA) {
        mc_step_carve(c, &ex->q, MC_DT_F32, 3, T, nh, hd, err);
        mc_step_carve(c, &ex->attn, MC_DT_F32, 3, T, nh, hd, err);
        mc_step_carve(c, &ex->k, MC_DT_F32, 3, T, nkv, hd, err);
        mc_step_carve(c, &ex->v, MC_DT_F32, 3, T, nkv, hd, err);
    } else {
        int64_t lr = d->kv_lora_rank, rd = d->qk_rope_dim;
        mc_step_carve(c, &ex->q, MC_DT_F32, 3, T, nh, d->qk_nope_dim + rd, err);
        mc_step_carve(c, &ex->attn, MC_DT_F32, 3, T, nh, d->v_head_dim, err);
        mc_step_carve(c, &ex->qa, MC_DT_F32, 2, T, d->q_lora_rank > 0 ? d->q_lora_rank : 1, 0, err);
        mc_step_carve(c, &ex->kva, MC_DT_F32, 2, T, lr + rd, 0, err);
        mc_step_carve(c, &ex->lat, MC_DT_F32, 2, T, lr, 0, err);
        mc_step_carve(c, &ex->qlat, MC_DT_F32, 3, T, nh, lr, err);
        mc_step_carve(c, &ex->olat, MC_DT_F32, 3, T, nh, lr, err);
        if (d->index_topk > 0) {
            int64_t ih = d->index_n_heads, id = d->index_head_dim;
            mc_step_carve(c, &ex->iq, MC_DT_F32, 3, T, ih, id, err);
            mc_step_carve(c, &ex->ik, MC_DT_F32, 2, T, id, 0, err);
            mc_step_carve(c, &ex->iw, MC_DT_F32, 2, T, ih, 0, err);
            mc_step_carve(c, &ex->isel, MC_DT_I32, 2, T, d->index_topk, 0, err);
        }
    }
    if (d->llama4_beta != 0 || d->attn_temp_tuning)
        mc_step_carve(c, &ex->qscale, MC_DT_F32, 1, T, 0, 0, err);
}

mc_status mc_step_views_attn(mc_step_exec *ex, int64_t n, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    int64_t nh = ex->nh, nkv = ex->nkv, hd = d->head_dim;
    mc_status st;
    TRY(mc_tensor_view_rows(&ex->q, 0, n, &s->q, err));
    TRY(mc_tensor_view_rows(&ex->attn, 0, n, &s->attn, err));
    TRY(flat(&s->q, n, nh * s->q.shape[2], &s->q2, err));
    TRY(flat(&s->attn, n, nh * s->attn.shape[2], &s->attn2, err));
    if (d->attn == MC_ATTN_GQA) {
        TRY(mc_tensor_view_rows(&ex->k, 0, n, &s->k, err));
        TRY(mc_tensor_view_rows(&ex->v, 0, n, &s->v, err));
        TRY(flat(&s->q, n * nh, hd, &s->qh, err));
        TRY(flat(&s->k, n, nkv * hd, &s->k2, err));
        TRY(flat(&s->v, n, nkv * hd, &s->v2, err));
        TRY(flat(&s->k, n * nkv, hd, &s->kh, err));
    } else {
        int64_t lr = d->kv_lora_rank;
        TRY(mc_tensor_view_rows(&ex->qa, 0, n, &s->qa, err));
        TRY(mc_tensor_view_rows(&ex->kva, 0, n, &s->kva, err));
        TRY(mc_tensor_view_rows(&ex->lat, 0, n, &s->lat, err));
        TRY(mc_tensor_view_rows(&ex->qlat, 0, n, &s->qlat, err));
        TRY(mc_tensor_view_rows(&ex->olat, 0, n, &s->olat, err));
        TRY(flat(&s->qlat, n, nh * lr, &s->qlat2, err));
        TRY(flat(&s->olat, n, nh * lr, &s->olat2, err));
        if (d->index_topk > 0) {
            TRY(mc_tensor_view_rows(&ex->iq, 0, n, &s->iq, err));
            TRY(flat(&s->iq, n, s->iq.shape[1] * s->iq.shape[2], &s->iq2, err));
            TRY(mc_tensor_view_rows(&ex->ik, 0, n, &s->ik, err));
            TRY(mc_tensor_view_rows(&ex->iw, 0, n, &s->iw, err));
            TRY(mc_tensor_view_rows(&ex->isel, 0, n, &s->isel, err));
        }
    }
    if (d->llama4_beta != 0 || d->attn_temp_tuning)
        TRY(mc_tensor_view_rows(&ex->qscale, 0, n, &s->qscale, err));
fail:
    return st;
}

/* tmp = GQA attention of xn, layer l: q/k/v, per-head q/k norms, rope (not
 * on NoPE layers), Llama 4's weightless QK norm (RoPE layers), write K and V
 * to the pages, attention over them (chunked on Llama 4's RoPE layers, the
 * query temperature on its NoPE layers), o. */
static mc_status attn_gqa(mc_step_exec *ex, int l, mc_step_layer *w, mc_step_views *s,
                          mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_backend *be = ex->be;
    int inter = d->rope.style == MC_ROPE_INTERLEAVED, rope = d->layer_rope[l];
    mc_attn_opts ao = {.scale = d->attn_scale,
                       .chunk = rope ? d->attn_chunk : 0,
                       .q_scale = d->attn_temp_tuning && !rope ? &s->qscale : NULL};
    mc_tensor qr = s->q, kr = s->k; /* the rotated dims of each head */
    mc_status st;
    TRY(mc_op_matmul(be, &w->wq, &s->xn, &s->q2, err));
    TRY(mc_op_matmul(be, &w->wk, &s->xn, &s->k2, err));
    TRY(mc_op_matmul(be, &w->wv, &s->xn, &s->v2, err));
    if (w->has_qk_norm) {
        TRY(mc_op_rmsnorm(be, &s->qh, &w->q_norm, d->norm_eps, &s->qh, err));
        TRY(mc_op_rmsnorm(be, &s->kh, &w->k_norm, d->norm_eps, &s->kh, err));
    }
    if (rope) {
        if (d->rope.dim != d->head_dim) {
            TRY(mc_tensor_view_cols(&s->q, 0, d->rope.dim, &qr, err));
            TRY(mc_tensor_view_cols(&s->k, 0, d->rope.dim, &kr, err));
        }
        TRY(mc_op_rope(be, &qr, &s->ix.pos, &ex->cs, &ex->sn, inter, err));
        TRY(mc_op_rope(be, &kr, &s->ix.pos, &ex->cs, &ex->sn, inter, err));
        if (d->qk_l2norm) {
            TRY(mc_op_rmsnorm(be, &s->qh, NULL, d->norm_eps, &s->qh, err));
            TRY(mc_op_rmsnorm(be, &s->kh, NULL, d->norm_eps, &s->kh, err));
        }
    }
    TRY(mc_op_kv_write(be, &s->ix, &s->k, &w->k_pages, err));
    TRY(mc_op_kv_write(be, &s->ix, &s->v, &w->v_pages, err));
    TRY(mc_op_attention(be, &s->q, &w->k_pages, &w->v_pages, &s->ix, &ao, &s->attn, err));
    TRY(mc_op_matmul(be, &w->wo, &s->attn2, &s->tmp, err));
fail:
    return st;
}

/* DeepSeek-V3.2's lightning indexer on the step's tokens (s->qa already
 * normalized): queries from the query LoRA, keys LayerNormed and both
 * rotated (rotate-half on the first rope dims, whatever the model's style),
 * keys to the layer's indexer pages, the kept positions into s->isel. */
static mc_status indexer(mc_step_exec *ex, mc_step_layer *w, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_backend *be = ex->be;
    int64_t rd = d->qk_rope_dim;
    mc_indexer_opts io = {.k = d->index_topk,
                          .score_scale = 1.0f / sqrtf((float)d->index_head_dim),
                          .weight_scale = 1.0f / sqrtf((float)d->index_n_heads)};
    mc_tensor iqr, ikr; /* (n, ih, rd), (n, rd): the rotated dims */
    mc_status st;
    TRY(mc_op_matmul(be, &w->idx_wq_b, &s->qa, &s->iq2, err));
    TRY(mc_op_matmul(be, &w->idx_wk, &s->xn, &s->ik, err));
    TRY(mc_op_matmul(be, &w->idx_weights, &s->xn, &s->iw, err));
    TRY(mc_op_layernorm(be, &s->ik, &w->idx_k_norm, &w->idx_k_bias, 1e-6f, &s->ik, err));
    TRY(mc_tensor_view_cols(&s->ik, 0, rd, &ikr, err));
    TRY(mc_tensor_view_cols(&s->iq, 0, rd, &iqr, err));
    TRY(mc_op_rope(be, &ikr, &s->ix.pos, &ex->cs, &ex->sn, 0, err));
    TRY(mc_op_rope(be, &iqr, &s->ix.pos, &ex->cs, &ex->sn, 0, err));
    TRY(mc_op_kv_write(be, &s->ix, &s->ik, &w->idx_pages, err));
    TRY(mc_op_indexer_topk(be, &s->iq, &s->iw, &w->idx_pages, &s->ix, &io, &s->isel, err));
fail:
    return st;
}

/* tmp = MLA attention of xn in absorbed form: queries (through the q
 * LoRA), latent + rope key (normalized, rotated) to the pages, V3.2's
 * indexer choosing the positions each token keeps, W_kb absorbed into the
 * query per head, attention over the latent cache (Mistral 4's per-token
 * query scale), W_vb per head, o. */
static mc_status attn_mla(mc_step_exec *ex, mc_step_layer *w, mc_step_views *s, mc_err *err)
{
    const mc_model_desc *d = &ex->m->d;
    mc_backend *be = ex->be;
    int64_t nh = ex->nh, nope = d->qk_nope_dim, rd = d->qk_rope_dim, qk = nope + rd;
    int64_t lr = d->kv_lora_rank, vd = d->v_head_dim;
    int inter = d->rope.style == MC_ROPE_INTERLEAVED;
    mc_attn_opts ao = {.scale = d->attn_scale,
                       .chunk = 0,
                       .q_scale = d->llama4_beta != 0 ? &s->qscale : NULL};
    mc_tensor kl, kpe, qpe; /* (n, lr), (n, rd) views of kva; (n, nh, rd) view of q */
    mc_status st;
    if (w->has_q_lora) {
        TRY(mc_op_matmul(be, &w->q_a, &s->xn, &s->qa, err));
        TRY(mc_op_rmsnorm(be, &s->qa, &w->q_a_norm, d->norm_eps, &s->qa, err));
        TRY(mc_op_matmul(be, &w->q_b, &s->qa, &s->q2, err));
    } else {
        TRY(mc_op_matmul(be, &w->q_proj, &s->xn, &s->q2, err));
    }
    TRY(mc_op_matmul(be, &w->kv_a, &s->xn, &s->kva, err));
    TRY(mc_tensor_view_cols(&s->kva, 0, lr, &kl, err));
    TRY(mc_tensor_view_cols(&s->kva, lr, rd, &kpe, err));
    TRY(mc_tensor_view_cols(&s->q, nope, rd, &qpe, err));
    TRY(mc_op_rmsnorm(be, &kl, &w->kv_a_norm, d->norm_eps, &s->lat, err));
    TRY(mc_op_rope(be, &kpe, &s->ix.pos, &ex->cs, &ex->sn, inter, err));
    TRY(mc_op_rope(be, &qpe, &s->ix.pos, &ex->cs, &ex->sn, inter, err));
    TRY(mc_op_kv_write(be, &s->ix, &s->lat, &w->lat_pages, err));
    TRY(mc_op_kv_write(be, &s->ix, &kpe, &w->pe_pages, err));
    if (d->index_topk > 0) {
        TRY(indexer(ex, w, s, err));
        ao.sel = &s->isel;
    }
    for (int64_t h = 0; h < nh; h++) { /* qlat[t, h] = W_kb[h]^T q_nope[t, h] */
        mc_tensor qn, ql;              /* (n, nope), (n, lr) */
        TRY(mc_tensor_view_cols(&s->q2, h * qk, nope, &qn, err));
        TRY(mc_tensor_view_cols(&s->qlat2, h * lr, lr, &ql, err));
        TRY(mc_op_matmul(be, &w->kb[h], &qn, &ql, err));
    }
    TRY(mc_op_mla_decode(be, &s->qlat, &qpe, &w->lat_pages, &w->pe_pages, &s->ix, &ao, &s->olat,
                         err));
    for (int64_t h = 0; h < nh; h++) { /* attn[t, h] = W_vb[h] olat[t, h] */
        mc_tensor ol, av;              /* (n, lr), (n, vd) */
        TRY(mc_tensor_view_cols(&s->olat2, h * lr, lr, &ol, err));
        TRY(mc_tensor_view_cols(&s->attn2, h * vd, vd, &av, err));
        TRY(mc_op_matmul(be, &w->vb[h], &ol, &av, err));
    }
    TRY(mc_op_matmul(be, &w->wo, &s->attn2, &s->tmp, err));
fail:
    return st;
}

mc_status mc_step_attention(mc_step_exec *ex, int l, mc_step_views *s, mc_err *err)
{
    mc_step_layer *w = &ex->layers[l];
    return ex->m->d.attn == MC_ATTN_MLA ? attn_mla(ex, w, s, err) : attn_gqa(ex, l, w, s, err);
}
