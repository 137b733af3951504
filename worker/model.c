/* model.c - binds one rank's share of a checkpoint to the model
 * description and checks it; the MC_FAULT_INJECT hook the executor calls
 * per layer. */
#include "model.h"

#include "family.h"
#include "log.h"
#include "comm_mpi.h"
#include "fileio.h"
#include "model_gguf.h"
#include "model_tensors.h"
#include "parallel.h"
#include "shard_out.h"
#include "split.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *mc_model_own(mc_model *m, void *p)
{
    if (!p)
        return NULL;
    if (m->n_owned == m->cap_owned) {
        size_t nc = m->cap_owned ? 2 * m->cap_owned : 64;
        void **n = realloc(m->owned, nc * sizeof *n);
        if (!n) {
            free(p);
            return NULL;
        }
        m->owned = n;
        m->cap_owned = nc;
    }
    m->owned[m->n_owned++] = p;
    return p;
}

void mc_model_free(mc_model *m)
{
    if (!m)
        return;
    mc_family_ops_of(m->d.family)->unbind(m);
    for (size_t i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->stats);
    st_checkpoint_close(m->ckpt);
    mc_gguf_model_close(m->gguf);
    mc_par_data_plane_free(m);
    mc_comm_free(m->tp_comm);
    mc_comm_free(m->ep_comm);
    mc_comm_free(m->pp_comm);
    if (m->owns_world)
        mc_comm_free(m->world);
    free(m);
}

bool mc_model_is_output(const mc_model *m)
{
    return m->lay.stage == m->lay.pp - 1 && m->lay.tp_rank == 0;
}

void mc_fault_check(const mc_model *m, int l)
{
    if (m->fault.rank != m->lay.rank || m->fault.layer != l)
        return;
    const char *host = mc_comm_host();
    fprintf(stderr, "moecluster: rank %d (host %s): MC_FAULT_INJECT: %s at layer %d\n",
            m->lay.rank, host, m->fault.mode, l);
    fflush(stderr);
    if (!strcmp(m->fault.mode, "crash"))
        raise(SIGSEGV);
    if (!strcmp(m->fault.mode, "hang"))
        for (;;)
            pause();
    _exit(3);
}

static void shape_str(const st_tensor *t, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < t->ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

static mc_status find(mc_model *m, mc_tensor_role role, int layer, int expert, const st_tensor **t,
                      char *name, size_t nlen, mc_err *err)
{
    if (m->gguf) { /* a GGUF file: its own names (model_gguf.h) */
        mc_status st = mc_gguf_model_find(m->gguf, role, layer, expert, t, err);
        if (st == MC_OK)
            snprintf(name, nlen, "%s", (*t)->name);
        return st;
    }
    if (mc_tensor_name(&m->d, role, layer, expert, name, nlen) != 0)
        return mc_err_set(err, MC_ERR_INTERNAL, "no tensor name for role %s in family %s",
                          mc_tensor_role_str(role), m->d.model_type);
    *t = st_checkpoint_find(m->ckpt, name);
    if (!*t)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "checkpoint has no tensor '%s' (needed by the %s config: role %s)", name,
                          m->d.model_type, mc_tensor_role_str(role));
    return MC_OK;
}

static mc_status check_shape(const st_tensor *t, int ndim, const int64_t *want, const char *why,
                             mc_err *err)
{
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == want[i];
    if (ok)
        return MC_OK;
    char have[128], exp[128];
    shape_str(t, have, sizeof have);
    size_t o = (size_t)snprintf(exp, sizeof exp, "[");
    for (int i = 0; i < ndim && o < sizeof exp; i++)
        o += (size_t)snprintf(exp + o, sizeof exp - o, "%s%lld", i ? "," : "", (long long)want[i]);
    if (o < sizeof exp)
        snprintf(exp + o, sizeof exp - o, "]");
    return mc_err_set(err, MC_ERR_CONFIG,
                      "%s: tensor '%s' has shape %s but the config implies %s (%s)", t->path,
                      t->name, have, exp, why);
}

/* Binds a [rows, cols] matrix, with FP8 block scales when stored as F8_E4M3. */
static mc_status bind_mat(mc_model *m, mc_tensor_role role, int layer, int expert, int rows,
                          int cols, const char *why, mc_mat *out, mc_err *err)
{
    char name[512];
    const st_tensor *t;
    mc_status st = find(m, role, layer, expert, &t, name, sizeof name, err);
    if (st != MC_OK)
        return st;
    int64_t want[2] = {rows, cols};
    if ((st = check_shape(t, 2, want, why, err)) != MC_OK)
        return st;
    memset(out, 0, sizeof *out);
    out->dtype = t->dtype;
    out->rows = rows;
    out->cols = cols;
    out->row_stride = (size_t)cols;
    out->data = t->data;
    switch (t->dtype) {
    case MC_DT_F32:
    case MC_DT_F16:
    case MC_DT_BF16:
    case MC_DT_Q8_0: /* pre-quantized shards (moecluster shard --weights q8_0|q4_k) */
    case MC_DT_Q4_K:
    case MC_DT_Q5_K: /* GGUF files (llama.cpp's Q5_K_S / Q5_K_M) */
    case MC_DT_Q6_K: /* GGUF files (llama.cpp's Q4_K_M keeps some matrices in it) */
        return MC_OK;
    case MC_DT_F8_E4M3:
        break;
    default:
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s, not a weight type",
                          t->path, t->name, mc_dtype_name(t->dtype));
    }
    if (!m->d.fp8_block)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: tensor '%s' is F8_E4M3 but config.json has no fp8 "
                          "quantization_config with weight_block_size",
                          t->path, t->name);
    char sname[560];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    const st_tensor *s = st_checkpoint_find(m->ckpt, sname);
    if (!s)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: FP8 tensor '%s' has no block scales '%s'",
                          t->path, t->name, sname);
    int br = m->d.fp8_block_rows, bc = m->d.fp8_block_cols;
    int64_t sw[2] = {(rows + br - 1) / br, (cols + bc - 1) / bc};
    if ((st = check_shape(s, 2, sw, "one scale per weight_block_size block", err)) != MC_OK)
        return st;
    if (s->dtype != MC_DT_F32 && s->dtype != MC_DT_BF16 && s->dtype != MC_DT_F16)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: scale tensor '%s' has dtype %s", s->path,
                          s->name, mc_dtype_name(s->dtype));
    float *sc = mc_model_own(m, mc_malloc_n((size_t)s->numel, sizeof *sc));
    if (!sc)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    st_tensor_to_f32(s, sc);
    out->scale = sc;
    out->block_rows = br;
    out->block_cols = bc;
    out->scale_cols = (int)sw[1];
    return MC_OK;
}

/* Rows [r0, r0+n) of w (output features) as a view. FP8 block scales stay
 * shared when r0 is block-aligned; otherwise the slice gets its own scales
 * with one row of blocks per row (block_rows = 1), which is exact. */
static mc_status mat_rows(mc_model *m, mc_mat *w, int r0, int n, mc_err *err)
{
    if (r0 == 0 && n == w->rows)
        return MC_OK;
    if (mc_dtype_is_block(w->dtype) && !w->transposed) { /* whole stored rows of blocks */
        w->data = (const unsigned char *)w->data +
                  (size_t)r0 * mc_dtype_row_bytes(w->dtype, (int64_t)w->row_stride);
        w->rows = n;
        return MC_OK;
    }
    size_t es = mc_dtype_size(w->dtype);
    if (es == 0)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "cannot slice a %s matrix for tensor parallelism",
                          mc_dtype_name(w->dtype));
    const unsigned char *p = w->data;
    w->data = w->transposed ? p + (size_t)r0 * es : p + (size_t)r0 * w->row_stride * es;
    if (w->scale) {
        if (r0 % w->block_rows == 0) {
            w->scale += (size_t)(r0 / w->block_rows) * (size_t)w->scale_cols;
        } else {
            float *sc = mc_model_own(m, mc_malloc_n((size_t)n * (size_t)w->scale_cols, sizeof *sc));
            if (!sc)
                return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
            for (int r = 0; r < n; r++)
                memcpy(sc + (size_t)r * w->scale_cols,
                       w->scale + (size_t)((r0 + r) / w->block_rows) * w->scale_cols,
                       (size_t)w->scale_cols * sizeof *sc);
            w->scale = sc;
            w->block_rows = 1;
        }
    }
    w->rows = n;
    return MC_OK;
}

/* Columns [c0, c0+n) of w (input features) as a view; FP8 scales as in
 * mat_rows (block_cols = 1 when c0 is not block-aligned). */
static mc_status mat_cols(mc_model *m, mc_mat *w, int c0, int n, mc_err *err)
{
    if (c0 == 0 && n == w->cols)
        return MC_OK;
    int blk = mc_dtype_block_elems(w->dtype);
    if (mc_dtype_is_block(w->dtype) && w->dtype != MC_DT_Q8_0 && !w->transposed &&
        (c0 % blk != 0 || (n % blk != 0 && c0 + n != w->cols)) && c0 % MC_QK8_0 == 0 &&
        (n % MC_QK8_0 == 0 || c0 + n == w->cols)) {
        /* a K-quant (256-weight blocks) cut inside its blocks: this rank's matrix becomes
         * Q8_0 (each row decoded, then the Q8_0 reference quantizer), which cuts at 32 */
        mc_mat q;
        void *store;
        mc_status st = mc_mat_quantize(w, MC_DT_Q8_0, &q, &store, err);
        if (st != MC_OK)
            return st;
        if (!mc_model_own(m, store))
            return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        static int told; /* once a process: one such matrix a layer is common */
        if (!told++)
            MC_INFO("a %s matrix (%d x %d) cut at column %d for tensor parallelism is held as "
                    "Q8_0, as is every such cut (its 256-weight blocks do not split there)",
                    mc_dtype_name(w->dtype), w->rows, w->cols, c0);
        *w = q;
        blk = MC_QK8_0;
    }
    if (mc_dtype_is_block(w->dtype) && !w->transposed && blk > 0 && c0 % blk == 0 &&
        (n % blk == 0 || c0 + n == w->cols)) { /* whole blocks of each row; stride kept */
        w->data = (const unsigned char *)w->data + (size_t)(c0 / blk) * mc_dtype_block_bytes(w->dtype);
        w->cols = n;
        return MC_OK;
    }
    size_t es = mc_dtype_size(w->dtype);
    if (es == 0)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "cannot slice a %s matrix for tensor parallelism: a rank's %d of its %d "
                          "input columns (from column %d) are not whole %d-weight blocks (fewer "
                          "tensor-parallel ranks, or a Q8_0 file, would split)",
                          mc_dtype_name(w->dtype), n, w->cols, c0, blk);
    const unsigned char *p = w->data;
    w->data = w->transposed ? p + (size_t)c0 * w->row_stride * es : p + (size_t)c0 * es;
    if (w->scale) {
        if (c0 % w->block_cols == 0) {
            w->scale += c0 / w->block_cols;
        } else {
            int rb = (w->rows + w->block_rows - 1) / w->block_rows;
            float *sc = mc_model_own(m, mc_malloc_n((size_t)rb * (size_t)n, sizeof *sc));
            if (!sc)
                return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
            for (int b = 0; b < rb; b++)
                for (int c = 0; c < n; c++)
                    sc[(size_t)b * n + c] =
                        w->scale[(size_t)b * w->scale_cols + (size_t)((c0 + c) / w->block_cols)];
            w->scale = sc;
            w->scale_cols = n;
            w->block_cols = 1;
        }
    }
    w->cols = n;
    return MC_OK;
}

/* Binds the part [b, b+n) along dimension dim (0 rows, 1 columns, -1 all)
 * of a [rows, cols] matrix: a view into the original checkpoint, or the
 * tensor of a shard set, which `moecluster shard` stored already cut. */
static mc_status bind_part(mc_model *m, mc_tensor_role role, int layer, int expert, int rows,
                           int cols, int dim, int b, int n, const char *why, mc_mat *out,
                           mc_err *err)
{
    mc_status st;
    if (m->shards)
        return bind_mat(m, role, layer, expert, dim == 0 ? n : rows, dim == 1 ? n : cols, why,
                        out, err);
    if ((st = bind_mat(m, role, layer, expert, rows, cols, why, out, err)) != MC_OK)
        return st;
    return dim == 0 ? mat_rows(m, out, b, n, err) : dim == 1 ? mat_cols(m, out, b, n, err) : MC_OK;
}

/* Binds role's [rows, cols] matrix cut as the split table says for this tp
 * rank (split.h): its head, KV head, row or vocabulary slice, or all of it. */
static mc_status bind_split(mc_model *m, mc_tensor_role role, int layer, int expert, int rows,
                            int cols, const char *why, mc_mat *out, mc_err *err)
{
    int64_t b, e;
    int dim = mc_split_tp_slice(&m->d, role, m->lay.tp, m->lay.tp_rank, &b, &e);
    return bind_part(m, role, layer, expert, rows, cols, dim, (int)b, (int)(e - b), why, out, err);
}

/* Binds a 1-D tensor of n elements as an owned f32 copy. */
static mc_status bind_vec(mc_model *m, mc_tensor_role role, int layer, int n, const char *why,
                          float **out, mc_err *err)
{
    char name[512];
    const st_tensor *t;
    mc_status st = find(m, role, layer, 0, &t, name, sizeof name, err);
    if (st != MC_OK)
        return st;
    int64_t want[1] = {n};
    if ((st = check_shape(t, 1, want, why, err)) != MC_OK)
        return st;
    if (t->dtype != MC_DT_F32 && t->dtype != MC_DT_BF16 && t->dtype != MC_DT_F16)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (want F32/F16/BF16)",
                          t->path, t->name, mc_dtype_name(t->dtype));
    float *v = mc_model_own(m, mc_malloc_n((size_t)n, sizeof *v));
    if (!v)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    st_tensor_to_f32(t, v);
    *out = v;
    return MC_OK;
}

/* A SwiGLU FFN of width `inter` (roles gate, gate + 1 = up, gate + 2 =
 * down), cut by the split table: dense and shared FFNs column-then-row over
 * the tp ranks (gate/up keep rows [i0, i0+ni), down the same columns), a
 * routed expert whole. */
static mc_status bind_ffn(mc_model *m, int layer, int expert, mc_tensor_role gate, int inter,
                          const char *why, mc_ffn_w *f, mc_err *err)
{
    int H = m->d.hidden;
    mc_status st;
    if ((st = bind_split(m, gate, layer, expert, inter, H, why, &f->gate, err)) != MC_OK ||
        (st = bind_split(m, gate + 1, layer, expert, inter, H, why, &f->up, err)) != MC_OK ||
        (st = bind_split(m, gate + 2, layer, expert, H, inter, why, &f->down, err)) != MC_OK)
        return st;
    return MC_OK;
}

/* Binds fused expert tensors as per-expert views. OI: gate_up [E,2I,H] and
 * down [E,H,I] (rows are outputs). IO: gate_up [E,H,2I] and down [E,I,H]
 * (rows are inputs; views are transposed). */
static mc_status bind_fused_experts(mc_model *m, int l, mc_ffn_w *experts, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    /* a shard holds only this rank's experts: [expert1 - expert0, ...] */
    int e_base = m->shards ? m->lay.expert0 : 0;
    int E = m->shards ? m->lay.expert1 - m->lay.expert0 : d->n_experts;
    int I = d->moe_inter, H = d->hidden;
    bool io = d->expert_layout == MC_EXPERTS_FUSED_IO;
    char name[512];
    const st_tensor *gu, *dn;
    mc_status st;
    if ((st = find(m, MC_T_EXPERTS_GATE_UP, l, 0, &gu, name, sizeof name, err)) != MC_OK ||
        (st = find(m, MC_T_EXPERTS_DOWN, l, 0, &dn, name, sizeof name, err)) != MC_OK)
        return st;
    int64_t want_gu[3] = {E, io ? H : 2 * I, io ? 2 * I : H};
    int64_t want_dn[3] = {E, io ? I : H, io ? H : I};
    const char *why = io ? "[experts, hidden, 2*intermediate] / [experts, intermediate, hidden]"
                         : "[experts, 2*moe_intermediate, hidden] / [experts, hidden, moe_intermediate]";
    if ((st = check_shape(gu, 3, want_gu, why, err)) != MC_OK ||
        (st = check_shape(dn, 3, want_dn, why, err)) != MC_OK)
        return st;
    const st_tensor *ts[2] = {gu, dn};
    for (int i = 0; i < 2; i++)
        if (ts[i]->dtype != MC_DT_F32 && ts[i]->dtype != MC_DT_F16 && ts[i]->dtype != MC_DT_BF16)
            return mc_err_set(err, MC_ERR_UNSUPPORTED,
                              "%s: fused expert tensor '%s' has dtype %s (F32/F16/BF16 supported)",
                              ts[i]->path, ts[i]->name, mc_dtype_name(ts[i]->dtype));
    size_t es = mc_dtype_size(gu->dtype), esd = mc_dtype_size(dn->dtype);
    size_t slab = (size_t)2 * I * H, dslab = (size_t)H * I;
    for (int e = m->lay.expert0; e < m->lay.expert1; e++) {
        const unsigned char *g0 = (const unsigned char *)gu->data + (size_t)(e - e_base) * slab * es;
        const unsigned char *d0 = (const unsigned char *)dn->data + (size_t)(e - e_base) * dslab * esd;
        mc_mat g = {.dtype = gu->dtype, .rows = I, .cols = H, .transposed = io};
        mc_mat u = g;
        if (io) { /* stored [H, 2I]: gate columns [0, I), up columns [I, 2I) */
            g.row_stride = u.row_stride = (size_t)2 * I;
            g.data = g0;
            u.data = g0 + (size_t)I * es;
        } else { /* stored [2I, H]: gate rows [0, I), up rows [I, 2I) */
            g.row_stride = u.row_stride = (size_t)H;
            g.data = g0;
            u.data = g0 + (size_t)I * H * es;
        }
        mc_mat dw = {.dtype = dn->dtype, .rows = H, .cols = I, .transposed = io,
                     .row_stride = io ? (size_t)H : (size_t)I, .data = d0};
        experts[e].gate = g;
        experts[e].up = u;
        experts[e].down = dw;
    }
    return MC_OK;
}

/* Binds layer l's tensors of this rank's share, cut by the split table:
 * its head slice of the attention (q / kv_b / KV heads rows, wo columns),
 * its slice of the dense and shared-expert FFN width, and only its routed
 * experts. */
static mc_status bind_layer(mc_model *m, int l, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_layout *lay = &m->lay;
    mc_layer_w *w = &m->layers[l];
    int H = d->hidden, nh = d->n_heads;
    mc_status st;
#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((st = (x)) != MC_OK)                                                                   \
            return st;                                                                             \
    } while (0)
    TRY(bind_vec(m, MC_T_ATTN_NORM, l, H, "hidden_size", &w->attn_norm, err));
    TRY(bind_vec(m, MC_T_FFN_NORM, l, H, "hidden_size", &w->ffn_norm, err));
    if (d->attn == MC_ATTN_MLA) {
        int qk = d->qk_nope_dim + d->qk_rope_dim, kvb = d->qk_nope_dim + d->v_head_dim;
        if (d->q_lora_rank > 0) {
            TRY(bind_split(m, MC_T_Q_A, l, 0, d->q_lora_rank, H, "q_lora_rank x hidden_size",
                           &w->q_a, err));
            TRY(bind_vec(m, MC_T_Q_A_NORM, l, d->q_lora_rank, "q_lora_rank", &w->q_a_norm, err));
            TRY(bind_split(m, MC_T_Q_B, l, 0, nh * qk, d->q_lora_rank,
                           "heads*(qk_nope+qk_rope) x q_lora_rank", &w->q_b, err));
        } else {
            TRY(bind_split(m, MC_T_Q, l, 0, nh * qk, H, "heads*(qk_nope+qk_rope) x hidden_size",
                           &w->q_proj, err));
        }
        /* the latent (kv_a) is shared by all heads: every tp rank computes it */
        TRY(bind_split(m, MC_T_KV_A, l, 0, d->kv_lora_rank + d->qk_rope_dim, H,
                       "(kv_lora_rank+qk_rope_head_dim) x hidden_size", &w->kv_a, err));
        TRY(bind_vec(m, MC_T_KV_A_NORM, l, d->kv_lora_rank, "kv_lora_rank", &w->kv_a_norm, err));
        TRY(bind_split(m, MC_T_KV_B, l, 0, nh * kvb, d->kv_lora_rank,
                       "heads*(qk_nope+v_head_dim) x kv_lora_rank", &w->kv_b, err));
        TRY(bind_split(m, MC_T_O, l, 0, H, nh * d->v_head_dim, "hidden_size x heads*v_head_dim",
                       &w->wo, err));
        if (d->index_topk > 0) { /* the indexer picks tokens for all heads: not split */
            int ih = d->index_n_heads, id = d->index_head_dim;
            TRY(bind_split(m, MC_T_IDX_WQ_B, l, 0, ih * id, d->q_lora_rank,
                           "index_n_heads*index_head_dim x q_lora_rank", &w->idx_wq_b, err));
            TRY(bind_split(m, MC_T_IDX_WK, l, 0, id, H, "index_head_dim x hidden_size",
                           &w->idx_wk, err));
            TRY(bind_vec(m, MC_T_IDX_K_NORM, l, id, "index_head_dim", &w->idx_k_norm, err));
            TRY(bind_vec(m, MC_T_IDX_K_NORM_BIAS, l, id, "index_head_dim", &w->idx_k_bias, err));
            TRY(bind_split(m, MC_T_IDX_WEIGHTS, l, 0, ih, H, "index_n_heads x hidden_size",
                           &w->idx_weights, err));
        }
    } else {
        int hd = d->head_dim, nkv = d->n_kv_heads;
        TRY(bind_split(m, MC_T_Q, l, 0, nh * hd, H, "heads*head_dim x hidden_size", &w->wq, err));
        TRY(bind_split(m, MC_T_K, l, 0, nkv * hd, H, "kv_heads*head_dim x hidden_size", &w->wk,
                       err));
        TRY(bind_split(m, MC_T_V, l, 0, nkv * hd, H, "kv_heads*head_dim x hidden_size", &w->wv,
                       err));
        TRY(bind_split(m, MC_T_O, l, 0, H, nh * hd, "hidden_size x heads*head_dim", &w->wo, err));
        if (d->qk_norm) {
            TRY(bind_vec(m, MC_T_Q_NORM, l, hd, "head_dim", &w->q_norm, err));
            TRY(bind_vec(m, MC_T_K_NORM, l, hd, "head_dim", &w->k_norm, err));
        }
    }
    w->moe = d->layer_moe[l];
    if (!w->moe) {
        TRY(bind_ffn(m, l, 0, MC_T_DENSE_GATE, d->dense_inter, "intermediate_size", &w->dense,
                     err));
        return MC_OK;
    }
    TRY(bind_split(m, MC_T_ROUTER, l, 0, d->n_experts, H, "n_experts x hidden_size", &w->router,
                   err));
    if (d->has_score_bias)
        TRY(bind_vec(m, MC_T_ROUTER_BIAS, l, d->n_experts, "n_routed_experts", &w->score_bias, err));
    /* indexed by global expert id; only [expert0, expert1) are bound */
    w->experts = mc_model_own(m, mc_calloc_n((size_t)d->n_experts, sizeof *w->experts));
    if (!w->experts)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    if (d->expert_layout == MC_EXPERTS_SEPARATE) {
        for (int e = lay->expert0; e < lay->expert1; e++)
            TRY(bind_ffn(m, l, e, MC_T_EXPERT_GATE, d->moe_inter, "moe_intermediate_size",
                         &w->experts[e], err));
    } else {
        TRY(bind_fused_experts(m, l, w->experts, err));
    }
    if (d->n_shared_experts > 0) {
        w->has_shared = true;
        TRY(bind_ffn(m, l, 0, MC_T_SHARED_GATE, d->shared_inter,
                     "moe_intermediate_size*n_shared_experts", &w->shared, err));
    }
#undef TRY
    return MC_OK;
}

/* MC_FAULT_INJECT=RANK:LAYER:MODE (exit | crash | hang): failure tests make
 * one rank fail when it reaches a layer (mc_fault_check). */
static void parse_fault(mc_model *m)
{
    m->fault.rank = -1;
    const char *env = getenv("MC_FAULT_INJECT");
    int r, l;
    char mode[8];
    if (env && sscanf(env, "%d:%d:%7s", &r, &l, mode) == 3) {
        m->fault.rank = r;
        m->fault.layer = l;
        snprintf(m->fault.mode, sizeof m->fault.mode, "%s", mode);
    }
}

/* Opens the checkpoint and binds this rank's share (m->lay, m->d set) the
 * way its family does (family.h). */
static mc_status bind_share(mc_model *m, const char *dir, mc_err *err)
{
    mc_status st = m->gguf ? MC_OK : st_checkpoint_open(dir, &m->ckpt, err);
    return st != MC_OK ? st : mc_family_ops_of(m->d.family)->bind(m, err);
}

mc_status mc_model_bind_decoder(mc_model *m, mc_err *err)
{
    const mc_model_desc *d = &m->d;
    const mc_layout *lay = &m->lay;
    mc_status st;
    bool first = lay->stage == 0, last = lay->stage == lay->pp - 1;
    /* embedding and LM head: this tp rank's vocabulary rows */
    if (first && (st = bind_split(m, MC_T_EMBED, 0, 0, d->vocab, d->hidden,
                                  "vocab_size x hidden_size", &m->embed, err)) != MC_OK)
        return st;
    if (last) {
        st = bind_split(m, d->tie_embeddings ? MC_T_EMBED : MC_T_LM_HEAD, 0, 0, d->vocab,
                        d->hidden, "vocab_size x hidden_size", &m->lm_head, err);
        if (st != MC_OK)
            return st;
        if ((st = bind_vec(m, MC_T_FINAL_NORM, 0, d->hidden, "hidden_size", &m->final_norm,
                           err)) != MC_OK)
            return st;
    }
    m->layers = mc_model_own(m, mc_calloc_n((size_t)d->n_layers, sizeof *m->layers));
    m->inv_freq = mc_model_own(m, mc_calloc_n((size_t)d->rope.dim / 2 + 1, sizeof *m->inv_freq));
    if (!m->layers || !m->inv_freq)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    mc_rope_inv_freq(&d->rope, m->inv_freq);
    for (int l = lay->layer0; l < lay->layer1; l++)
        if ((st = bind_layer(m, l, err)) != MC_OK)
            return st;
    return MC_OK;
}

/* Whether loading a shard set checks each rank's file against the manifest. */
static bool g_verify_shards = true;

void mc_model_verify_shards(bool on) { g_verify_shards = on; }

/* A shard set (`moecluster shard`): DIR/manifest.json and DIR/plan.json. */
bool mc_is_shard_set(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    return access(path, F_OK) == 0;
}

/* The layout a shard set was cut for (plan.json: cluster.tp/ep/pp), and a
 * check that the plan's entry for `rank` holds what mc_layout_make says. */
static mc_status shard_layout(const char *dir, const mc_layout *l, int *tp, int *ep, int *pp,
                              mc_err *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/plan.json", dir);
    json_error_t je;
    char *text;
    size_t tlen;
    /* regular files only: a FIFO would block */
    mc_status rs = mc_read_regular(path, "shard plan", 64u << 20, &text, &tlen, err);
    if (rs != MC_OK)
        return rs;
    json_t *p = json_loadb(text, tlen, 0, &je);
    free(text);
    if (!p)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: %s (line %d)", path, je.text, je.line);
    json_t *c = json_object_get(p, "cluster");
    int v[3] = {0, 0, 0};
    const char *keys[3] = {"tp", "ep", "pp"};
    mc_status st = MC_OK;
    for (int i = 0; i < 3 && st == MC_OK; i++) {
        json_t *x = json_object_get(c, keys[i]);
        if (!json_is_integer(x) || json_integer_value(x) < 1 || json_integer_value(x) > (1 << 20))
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: cluster.%s is missing or not a positive integer",
                            path, keys[i]);
        else
            v[i] = (int)json_integer_value(x);
    }
    if (st == MC_OK && l) { /* second pass: the plan's entry for this rank */
        json_t *r = json_array_get(json_object_get(p, "ranks"), (size_t)l->rank);
        json_t *ly = json_object_get(r, "layers"), *ex = json_object_get(r, "experts");
        long long lb = json_integer_value(json_array_get(ly, 0));
        long long le = json_integer_value(json_array_get(ly, 1));
        long long eb = json_integer_value(json_array_get(ex, 0));
        long long ee = json_integer_value(json_array_get(ex, 1));
        if (lb != l->layer0 || le != l->layer1 || (l->expert1 > l->expert0 && (eb != l->expert0 ||
                                                                              ee != l->expert1)))
            st = mc_err_set(err, MC_ERR_CONFIG,
                            "%s: rank %d holds layers [%lld, %lld) and experts [%lld, %lld) in the "
                            "plan, but the workers' layout gives layers [%d, %d) and experts [%d, "
                            "%d); re-run `moecluster shard`",
                            path, l->rank, lb, le, eb, ee, l->layer0, l->layer1, l->expert0,
                            l->expert1);
    }
    json_decref(p);
    *tp = v[0];
    *ep = v[1];
    *pp = v[2];
    return st;
}

/* Several ranks on one host share its cores: unless MC_THREADS says
 * otherwise, each rank's matrix products get cores / local ranks threads. */
static void share_cores(int world)
{
    int local = mc_comm_launcher_local_size();
    if (world <= 1 || local <= 1 || getenv("MC_THREADS"))
        return;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int t = cpus > local ? (int)(cpus / local) : 1;
    mc_kernels_set_threads(t);
    MC_DEBUG("%d ranks on this host, %ld cores: %d thread(s) per rank", local, cpus, t);
}

/* Loads this rank's share; collective over world when world has several
 * ranks (agreement before the communicator splits and after binding). */
static mc_status load(const char *dir, mc_comm *world, bool owns_world, int tp, int ep, int pp,
                      mc_model **out, mc_err *err)
{
    *out = NULL;
    mc_model *m = calloc(1, sizeof *m);
    int rank = mc_comm_rank(world), n = mc_comm_size(world);
    char rdir[4300];
    snprintf(rdir, sizeof rdir, "%s", dir);
    mc_status st = m ? MC_OK : mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    if (m) {
        parse_fault(m);
        m->world = world;
        m->owns_world = owns_world;
        m->shards = mc_is_shard_set(dir);
    }
    if (st == MC_OK && m->shards) {
        /* a shard set decides the layout; options may only repeat it */
        int stp = 0, sep = 0, spp = 0;
        st = mc_shard_rank_dir(dir, rank, n, rdir, sizeof rdir, err);
        if (st == MC_OK)
            st = shard_layout(dir, NULL, &stp, &sep, &spp, err);
        if (st == MC_OK && ((tp > 0 && tp != stp) || (ep > 0 && ep != sep) || (pp > 0 && pp != spp)))
            st = mc_err_set(err, MC_ERR_ARG,
                            "%s was cut for --tp %d --ep %d --pp %d; leave the options out or "
                            "repeat them",
                            dir, stp, sep, spp);
        if (st == MC_OK && g_verify_shards) /* this rank's folder only; lines if it is slow */
            st = mc_shard_verify_rank(dir, rank, rank == 0 ? 2 : 0, err);
        tp = stp;
        ep = sep;
        pp = spp;
    }
    if (st == MC_OK && !m->shards && mc_gguf_is_model(dir)) /* llama.cpp's file (or parts) */
        st = mc_gguf_model_open(dir, &m->gguf, &m->d, err);
    else if (st == MC_OK)
        st = mc_model_desc_load(rdir, &m->d, err);
    if (st == MC_OK)
        st = mc_layout_make(&m->d, n, rank, tp, ep, pp, &m->lay, err);
    if (st == MC_OK && m->shards) {
        int a, b, c;
        st = shard_layout(dir, &m->lay, &a, &b, &c, err);
    }
    /* every rank must reach the splits below, or none */
    if ((st = mc_par_agree(world, st, err)) != MC_OK)
        goto fail;
    share_cores(n);
    if ((st = mc_par_comms(world, &m->lay, &m->tp_comm, &m->ep_comm, &m->pp_comm, err)) != MC_OK)
        goto fail;
    st = bind_share(m, rdir, err);
    if ((st = mc_par_agree(world, st, err)) != MC_OK)
        goto fail;
    const mc_layout *l = &m->lay;
    MC_DEBUG("rank %d: stage %d (layers %d..%d), tp %d/%d, dp %d/%d, ep %d/%d (experts %d..%d), "
             "heads %d..%d, vocab %d..%d%s",
             l->rank, l->stage, l->layer0, l->layer1 - 1, l->tp_rank, l->tp, l->dp_rank, l->dp,
             l->ep_rank, l->ep, l->expert0, l->expert1 - 1, l->head0, l->head0 + l->n_heads - 1,
             l->vocab0, l->vocab0 + l->n_vocab - 1, m->shards ? " (shard set)" : "");
    *out = m;
    return MC_OK;
fail:
    if (!m && owns_world)
        mc_comm_free(world);
    mc_model_free(m); /* frees an owned world */
    return st;
}

mc_status mc_model_load(const char *dir, mc_model **out, mc_err *err)
{
    mc_comm *self = NULL;
    *out = NULL;
    if (mc_comm_self_create(&self) != MC_OK)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    return load(dir, self, true, 0, 0, 0, out, err);
}

mc_status mc_model_load_dist(const char *dir, mc_comm *world, int tp, int ep, int pp,
                             mc_model **out, mc_err *err)
{
    return load(dir, world, false, tp, ep, pp, out, err);
}
