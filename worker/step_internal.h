/* step_internal.h - the step executor's state, shared by its files (step.c:
 * lifetime, binding, plans; step_attn.c, step_block.c: the decoder stack as
 * backend ops; step_v4*.c: DeepSeek-V4's stack) and the family table
 * (family.c). Not for use elsewhere. */
#ifndef MC_STEP_INTERNAL_H
#define MC_STEP_INTERNAL_H

#include "arena.h"
#include "backend.h"
#include "family.h"
#include "step.h"

#include <stdint.h>

/* Rows of the LM head computed per call: bounds its scratch at
 * HEAD_ROWS x vocab floats whatever the step's size. */
#define MC_STEP_HEAD_ROWS 64

#define TRY(call)                                                                                  \
    do {                                                                                           \
        if ((st = (call)) != MC_OK)                                                                \
            goto fail;                                                                             \
    } while (0)

typedef struct {
    mc_tensor gate, up, down; /* gate, up (I, H); down (H, I) */
} mc_step_ffn;

/* One layer's weights as tensors, and its KV pages. Shapes: H hidden, nh
 * query heads, nkv KV heads, hd head dim (GQA); qk = nope + rd, lr the
 * latent rank, vd the value dim (MLA). */
typedef struct {
    mc_tensor attn_norm, ffn_norm; /* [H] */
    mc_tensor wo;                  /* (H, nh * hd) GQA, (H, nh * vd) MLA */
    /* GQA */
    mc_tensor wq, wk, wv;     /* (nh*hd, H), (nkv*hd, H), (nkv*hd, H) */
    mc_tensor q_norm, k_norm; /* [hd] (Qwen3), when has_qk_norm */
    int has_qk_norm;
    mc_tensor k_pages, v_pages; /* (n_blocks, block_size, nkv, hd) F32 each */
    /* MLA */
    int has_q_lora;
    mc_tensor q_a, q_b, q_proj; /* (q_lora, H), (nh*qk, q_lora) or (nh*qk, H) */
    mc_tensor q_a_norm;         /* [q_lora] */
    mc_tensor kv_a;             /* (lr + rd, H) */
    mc_tensor kv_a_norm;        /* [lr] */
    mc_tensor *kb;              /* [nh]: W_kb[h]^T (lr, nope), transposed storage */
    mc_tensor *vb;              /* [nh]: W_vb[h] (vd, lr) */
    mc_tensor lat_pages;        /* (n_blocks, block_size, lr) */
    mc_tensor pe_pages;         /* (n_blocks, block_size, rd) */
    /* DeepSeek-V3.2 lightning indexer: ih heads of id dims */
    mc_tensor idx_wq_b;               /* (ih * id, q_lora) */
    mc_tensor idx_wk;                 /* (id, H) */
    mc_tensor idx_k_norm, idx_k_bias; /* [id] LayerNorm */
    mc_tensor idx_weights;            /* (ih, H) */
    mc_tensor idx_pages;              /* (n_blocks, block_size, id) indexer keys */
    /* feed-forward */
    int moe;
    mc_step_ffn dense;
    mc_tensor router; /* (E, H) */
    mc_tensor bias;   /* [E], when has_bias */
    int has_bias;
    mc_tensor *gate, *up, *down; /* [E] each */
    int has_shared;
    mc_step_ffn shared;
} mc_step_layer;

/* Known lengths: open addressing on the sequence id. */
typedef struct {
    uint64_t id;
    uint32_t len;
    int used;
} mc_step_len;

/* Where a check of the running step looked (mc_step_nf with the backend's
 * content checks deferred: the check notes the first NaN or infinity on the
 * device under the site's index, mc_op_note_nonfinite, and the step reads
 * the note once, at its end, mc_step_nf_settle). Rows are named through the
 * running step's host index (ex->cur_hx), so a graph's sites (step.c) hold
 * for every step it is launched in. */
typedef struct {
    int where, layer;
    int pos, tok;     /* 1: row r's position / token id from the step's index; 0: rows of
                         another kind (no position), no token */
    int64_t rows_off; /* -1: row r is token r; else token hx->rows[rows_off + r] */
} mc_step_nf_site;

/* One shape of step and its graph (MC_STEP_GRAPHS=1, step.c). */
typedef struct {
    int64_t n, nl;
    uint32_t ns, maxb;
    int k, lse;          /* candidates a row (0: logits), with the log-sum-exp */
    int state;           /* 0 free, 1 run once (warm), 2 graph, 3 not capturable */
    struct mc_graph *g;
    mc_step_nf_site *sites; /* the checks the graph holds */
    size_t n_sites;
    uint64_t used;
} mc_step_graph;
#define MC_STEP_GRAPHS_MAX 16
/* Most dummy tokens a step padded for a graph gets, plus one (step.c gr_bucket). */
#define MC_STEP_PAD_MAX 32

struct mc_step_exec {
    mc_model *m;
    mc_backend *be;
    mc_kv_pool *pool;
    uint32_t n_blocks, block_size, max_tokens, max_pos;
    int64_t nh, nkv; /* this rank's query heads and KV heads (m->lay) */
    int first, last; /* this rank's stage embeds / runs the LM head */
    mc_buffer **bufs; /* every buffer made here, freed at the end */
    size_t n_bufs, cap_bufs;
    void **host; /* host copies made at init (dequantized kv_b), freed at the end */
    size_t n_host;
    /* weights copied to a device backend at init (mc_step_wrap), for the
     * progress lines (mc_step_upload_progress) */
    uint64_t up_bytes;
    double up_t0, up_last;
    mc_tensor embed, lm_head; /* (V, H) */
    mc_tensor final_norm;     /* [H] */
    mc_tensor cs, sn;         /* (max_pos, rope_dim / 2) */
    mc_step_layer *layers;    /* [n_layers] */
    /* activations for up to T = max_tokens tokens, views cut per step */
    mc_tensor x, xn, tmp;    /* (T, H) */
    mc_tensor q;             /* (T, nh, hd) GQA, (T, nh, qk) MLA */
    mc_tensor attn;          /* (T, nh, hd) GQA, (T, nh, vd) MLA */
    mc_tensor k, v;          /* (T, nkv, hd) GQA */
    mc_tensor qa;            /* (T, q_lora) MLA */
    mc_tensor kva;           /* (T, lr + rd) MLA */
    mc_tensor lat;           /* (T, lr) MLA */
    mc_tensor qlat, olat;    /* (T, nh, lr) MLA */
    mc_tensor qscale;        /* [T] per-token query scale (Mistral 4, Llama 4 NoPE layers) */
    mc_tensor iq;            /* (T, ih, id) V3.2 indexer queries */
    mc_tensor ik;            /* (T, id) V3.2 indexer keys */
    mc_tensor iw;            /* (T, ih) V3.2 indexer head weights */
    mc_tensor isel;          /* (T, index_topk) I32 V3.2 kept positions */
    mc_tensor rlog;          /* (T, E) router logits */
    mc_tensor ids, slot;     /* (T, k) I32 */
    mc_tensor wts;           /* (T, k) */
    mc_tensor offsets;       /* [E + 1] I32 */
    mc_tensor xp, yp;        /* (T * k, H) */
    mc_tensor wp;            /* (T * k, 1) router weights permuted (Llama 4) */
    mc_tensor g, u;          /* (T, I_max) dense / shared FFN */
    mc_tensor hx;            /* (HEAD_ROWS, H) */
    mc_tensor hlog;          /* (HEAD_ROWS, V) */
    mc_tensor tok, seq, pos; /* [T] I32 */
    mc_tensor rows;          /* [T] I32: token rows that want logits */
    mc_buffer *bt_buf;       /* block table of the step, grown on demand */
    size_t bt_cap;
    /* candidates in place of logits for the step running (mc_step_exec_run_top), else NULL;
     * the head's topk outputs on the device, grown on demand */
    struct mc_step_top *top;
    mc_buffer *top_buf;
    size_t top_cap;
    mc_arena *arena; /* host staging of the index arrays, reset per step */
    /* non-finite checks of the running step: deferred (nf_defer: the
     * backend defers its content checks) at nf_n sites so far */
    int nf_defer;
    mc_step_nf_site *nf_sites;
    size_t nf_n, nf_cap;
    const struct mc_step_host_ix_s *cur_hx; /* the running step's index, else NULL */
    /* decode-step graphs (MC_STEP_GRAPHS=1): one per shape of step, the head's
     * downloads after the launch (head_later) */
    int graphs, head_later;
    /* trash KV blocks past the pool's (ids n_blocks..): the dummy tokens
     * that pad a step to its graph's size write there */
    uint32_t n_trash;
    int64_t head_out; /* the running step's hx->nl_out (mc_step_head) */
    mc_step_graph gr[MC_STEP_GRAPHS_MAX];
    uint64_t gr_clock;
    uint64_t gr_launches, gr_captures, gr_failed;
    mc_step_len *lens;
    size_t lens_cap, lens_n;
    const mc_family_ops *fam; /* the family's stack (family.h) */
    struct mc_step_v4 *v4; /* DeepSeek-V4's state (step_v4.c), else NULL */
    /* expert parallelism: tokens received from the ep group, grown on demand */
    mc_buffer *ep_buf;
    size_t ep_cap;
    /* the ep group's shared memory when its ranks share a host (step_block.c,
     * ep_experts_shm; NULL: the all-to-all), decided once (ep_shm_tried) */
    struct mc_comm_shm *ep_shm;
    bool ep_shm_tried;
};

/* The step's views of the scratch, n tokens (names as in mc_step_exec). */
typedef struct {
    int64_t n;
    mc_tensor x, xn, tmp;
    mc_tensor q, attn;
    mc_tensor q2, attn2; /* (n, nh * hd or qk), (n, nh * hd or vd) */
    mc_tensor qh, kh;    /* (n * nh, hd), (n * nkv, hd) GQA */
    mc_tensor k, v;
    mc_tensor k2, v2; /* (n, nkv * hd) GQA */
    mc_tensor qa, kva, lat, qlat, olat;
    mc_tensor qlat2, olat2; /* (n, nh * lr) MLA */
    mc_tensor qscale;       /* [n] per-token query scale, when the family has one */
    mc_tensor iq, iq2;      /* (n, ih, id), (n, ih * id) V3.2 indexer */
    mc_tensor ik, iw, isel; /* (n, id), (n, ih), (n, index_topk) I32 V3.2 indexer */
    mc_tensor rlog, ids, slot, wts;
    mc_tensor xp, yp, wp;
    mc_tensor ys; /* (n, H): rows of xp, the shared experts' output */
    mc_tensor tok;
    mc_kv_index ix; /* block_table filled by the caller */
    const struct mc_step_host_ix_s *hx; /* the step's index on the host */
} mc_step_views;

/* ---- shared by step.c, step_attn.c, step_block.c ---- */

/* Keeps b to be freed with the executor. */
mc_status mc_step_keep(mc_step_exec *ex, mc_buffer *b, mc_err *err);
/* Host bytes [p, p + bytes) as a buffer: borrowed where the backend can,
 * else copied into device memory; kept. */
mc_status mc_step_wrap(mc_step_exec *ex, const void *p, size_t bytes, mc_buffer **out,
                       mc_err *err);
/* After layer l of the n this rank binds: on a backend the weights are
 * copied to (a GPU), a progress line every few seconds ("uploading weights
 * to the <backend> backend: layer l + 1 of n, X GiB, Y GB/s") and, at the
 * last, the total when it took a second or more. Nothing on the CPU. */
void mc_step_upload_progress(mc_step_exec *ex, int l, int n);
/* A bound weight matrix (FP8 block scales included) as a tensor. */
mc_status mc_step_mat(mc_step_exec *ex, const mc_mat *w, const char *what, mc_tensor *t,
                      mc_err *err);
/* An F32 vector the model holds (norm weights, biases) as a tensor. */
mc_status mc_step_vec(mc_step_exec *ex, const float *v, int64_t n, const char *what, mc_tensor *t,
                      mc_err *err);
/* A new device buffer, kept; the error names `what`. */
mc_status mc_step_alloc_buf(mc_step_exec *ex, size_t bytes, const char *what, mc_buffer **out,
                            mc_err *err);

/* Carves tensors out of one buffer: a first pass (buf NULL) only counts. */
typedef struct {
    mc_buffer *buf;
    size_t off;
    mc_status st;
} mc_step_carver;
void mc_step_carve(mc_step_carver *c, mc_tensor *t, mc_dtype dt, int ndim, int64_t a, int64_t b,
                   int64_t cc, mc_err *err);

/* The step's per-token index on the host (arena memory, valid during one
 * mc_step_exec_run): n tokens, ns plan entries, nl rows with logits. */
typedef struct mc_step_host_ix_s {
    int64_t n, nl;
    uint32_t ns, maxb;
    /* logit rows brought to the host: nl, or (a step padded for a graph,
     * step.c) the plan's, the first of the nl */
    int64_t nl_out;
    const int32_t *tok;  /* [n] token ids */
    const int32_t *seq;  /* [n] plan entry of each token */
    const int32_t *pos;  /* [n] position of each token in its sequence */
    const int32_t *rows; /* [nl] token rows that want logits, in plan order */
    const int32_t *bt;   /* (ns, maxb) block tables, 0 past an entry's table */
    const uint32_t *nblk; /* [ns] length of each entry's block table */
} mc_step_host_ix;

/* ---- attention (step_attn.c) ---- */

/* MC_OK when the attention of m's family is implemented, else
 * MC_ERR_UNSUPPORTED naming what is missing. */
mc_status mc_step_attn_supported(const mc_model *m, mc_err *err);
/* Per-token attention data of one step (e.g. query scales computed from the
 * positions), uploaded into the executor's scratch; called after the index
 * tensors of s are uploaded and before the first layer. */
mc_status mc_step_attn_index(mc_step_exec *ex, const mc_step_host_ix *hx, mc_step_views *s,
                             mc_err *err);

/* Binds layer l's attention weights (not wo, not the norms). */
mc_status mc_step_bind_attn(mc_step_exec *ex, int l, mc_err *err);
/* Allocates layer l's KV pages. */
mc_status mc_step_alloc_attn_pages(mc_step_exec *ex, int l, mc_err *err);
/* Carves the attention scratch for max_tokens tokens. */
void mc_step_carve_attn(mc_step_exec *ex, mc_step_carver *c, mc_err *err);
/* Cuts the attention views of n tokens. */
mc_status mc_step_views_attn(mc_step_exec *ex, int64_t n, mc_step_views *s, mc_err *err);
/* s->tmp = attention of s->xn, layer l (before the tp all-reduce). */
mc_status mc_step_attention(mc_step_exec *ex, int l, mc_step_views *s, mc_err *err);

/* ---- block and head (step_block.c) ---- */

/* Grows a buffer the executor keeps (*buf, *cap bytes) to hold need bytes
 * (doubling); its old contents are not kept. */
mc_status mc_step_grow(mc_step_exec *ex, mc_buffer **buf, size_t *cap, size_t need,
                       mc_err *err);
/* The step's block tables as an (ns, maxb) I32 tensor in ex->bt_buf. */
mc_status mc_step_table_tensor(mc_step_exec *ex, const mc_step_host_ix *hx, mc_tensor *out,
                               mc_err *err);

/* Host address of t's first element on a host-memory backend, else NULL:
 * the collectives move activations through host memory, staged through
 * host copies on a device backend (step_block.c's stage_in / stage_out). */
void *mc_step_host(const mc_tensor *t);
/* The collectives of step.c on tensors that may live on a device: staged
 * through host copies where the backend has no host memory (step_block.c). */
mc_status mc_step_tp_all_reduce(mc_step_exec *ex, int row, mc_tensor *t, size_t count,
                                mc_err *err);
mc_status mc_step_pp_send(mc_step_exec *ex, int row, int peer, const mc_tensor *t, size_t bytes,
                          mc_err *err);
mc_status mc_step_pp_recv(mc_step_exec *ex, int row, int peer, mc_tensor *t, size_t bytes,
                          mc_err *err);
/* NaN / Inf in t (rows = the step's tokens, or rows of another kind with
 * row_pos NULL): MC_OK when all finite, else the error of mc_nf_check
 * (worker/nonfinite.h) naming the layer, the position and the weight at
 * fault. row_pos / row_tok, when given, are the running step's hx->pos /
 * hx->tok (rows are named through ex->cur_hx). With the checks deferred
 * (ex->nf_defer) it notes and returns MC_OK at once: mc_step_nf_settle
 * gives the error at the step's end. */
mc_status mc_step_nf(mc_step_exec *ex, int where, int layer, const mc_tensor *t,
                     const int32_t *row_pos, const int32_t *row_tok, mc_err *err);
/* The same for logit rows: row r is token hx->rows[rows_off + r]. */
mc_status mc_step_nf_rows(mc_step_exec *ex, int where, const mc_tensor *t, int64_t rows_off,
                          mc_err *err);
/* The end of a step (its answer st so far): with deferred checks, the note
 * of its first non-finite value (an error naming the layer, the position and
 * the weight at fault, in place of st), else st. */
mc_status mc_step_nf_settle(mc_step_exec *ex, mc_status st, mc_err *err);
/* A MoE layer's part of the expert exchange for a rank with no tokens. */
mc_status mc_step_moe_idle(mc_step_exec *ex, int l, mc_err *err);

/* Cuts the views of n tokens (1 <= n <= max_tokens). */
mc_status mc_step_views_make(mc_step_exec *ex, int64_t n, mc_step_views *s, mc_err *err);
/* x += attn(norm(x)); x += ffn(norm(x)) on the step's tokens, layer l. */
mc_status mc_step_block(mc_step_exec *ex, int l, mc_step_views *s, mc_err *err);
/* Final norm and LM head on the nl rows listed in ex->rows into host
 * logits (nl, V). */
mc_status mc_step_head(mc_step_exec *ex, mc_step_views *s, int64_t nl, float *logits, mc_err *err);
/* With ex->head_later (tp 1, nl <= MC_STEP_HEAD_ROWS) mc_step_head leaves
 * its results on the device (a graph holds no download): this brings them
 * to logits or ex->top. */
mc_status mc_step_head_fetch(mc_step_exec *ex, int64_t nl, float *logits, mc_err *err);
/* ex->top's candidates of the nr rows of logits hl (nr, V), the whole
 * vocabulary (tp 1), for rows r0.. of the step's logits rows. */
mc_status mc_step_top_rows(mc_step_exec *ex, const mc_tensor *hl, int64_t r0, mc_err *err);

/* ---- the decoder stack (step.c): the family table's rows for DeepSeek-V3 /
 * V3.2, Qwen3-MoE, Llama 4, Mistral 4 (family.c) ---- */

mc_status mc_step_decoder_supported(const mc_model *m, mc_err *err);
mc_status mc_step_decoder_init(mc_step_exec *ex, mc_err *err);
void mc_step_decoder_free(mc_step_exec *ex);
mc_status mc_step_decoder_forward(mc_step_exec *ex, const mc_step_host_ix *hx, float *logits,
                                  mc_err *err);
mc_status mc_step_decoder_idle(mc_step_exec *ex, mc_err *err);

/* ---- DeepSeek-V4 (step_v4.c): its own stack, state in ex->v4 ---- */

/* One compressor of a V4 layer: weights and its three page kinds. */
typedef struct {
    int rate, cd, overlap;
    mc_tensor wkv, wgate;           /* (W, H), W = (1 + overlap) * cd */
    mc_tensor ape;                  /* (rate, W) */
    mc_tensor norm;                 /* [cd] */
    mc_tensor kv_pages, gate_pages; /* (n_blocks, block_size, W): raw projections per position */
    mc_tensor entry_pages; /* (n_blocks, block_size, cd): entry w at the slot of (w+1)*rate-1 */
} mc_step_v4_comp;

typedef struct {
    int kind, hash;                             /* mc_v4_attn_kind; hash-routed MoE */
    mc_tensor attn_norm, ffn_norm;              /* [H] */
    mc_tensor hca_fn, hca_base, hca_scale;      /* attention site: ((2+k)*k, k*H), [(2+k)*k], [3] */
    mc_tensor hcf_fn, hcf_base, hcf_scale;      /* FFN site */
    mc_tensor wq_a, q_norm, wq_b, wkv, kv_norm; /* (qr, H), [qr], (nh*hd, qr), (hd, H), [hd] */
    mc_tensor wo_a, wo_b, sinks;                /* (G*olr, nh*hd/G), (H, G*olr), [nh] */
    mc_step_v4_comp comp, icomp;                /* HCA / CSA; CSA's indexer */
    mc_tensor idx_wq_b, idx_wproj;              /* (ih*id, qr), (ih, H) */
    mc_tensor win_pages;                        /* (n_blocks, block_size, hd) */
    mc_tensor gate, bias;                       /* (E, H), [E] (non-hash layers) */
    mc_tensor tid2eid;                          /* I32 (vocab, k) (hash layers) */
    mc_tensor *eg, *eu, *ed;                    /* [E] each, one allocation at eg */
    mc_tensor sg, su, sd;                       /* the shared expert */
} mc_step_v4_layer;

/* DeepSeek-V4's executor state (step_v4.c binds, step_v4_fwd.c runs). */
struct mc_step_v4 {
    mc_step_v4_layer *layers;                 /* [n_layers] */
    mc_tensor head_fn, head_base, head_scale; /* (k, k*H), [k], [1] */
    mc_tensor cs[2], sn[2], nsn[2]; /* (max_pos, rd/2): 0 main, 1 compress rotary; nsn = -sn */
    mc_tensor irow; /* I32 [T]: token t's CSA indexer score row, its table's capacity / csa_rate */
    /* scratch for T tokens (k streams, mw = (2+k)*k, cw the widest compressor input) */
    mc_tensor X, flat;               /* (T, k*H) */
    mc_tensor mix, mixh, post, comb; /* (T, mw), (T, k), (T, k), (T, k*k) */
    mc_tensor col, xn, y, ys;        /* (T, H) */
    mc_tensor qres;                  /* (T, qr) */
    mc_tensor q, o;                  /* (T, nh, hd) */
    mc_tensor kvn;                   /* (T, hd) */
    mc_tensor oa;                    /* (T, G*olr) */
    mc_tensor cp1, cp2;              /* (T, cw) */
    mc_tensor iq;                    /* (T, ih, id) */
    mc_tensor iw;                    /* (T, ih) */
    mc_tensor sel;                   /* (T, index_topk) I32 */
    mc_tensor rlog;                  /* (T, E) */
    mc_tensor ids, slot, wts;        /* (T, k_e) I32, I32, F32 */
    mc_tensor offsets, off1;         /* I32 [E + 1], [2] */
    mc_tensor xp, yp;                /* (T * k_e, H) */
    mc_tensor tok, seq, pos, rows;   /* I32 [T] */
    mc_tensor hx, hlog;              /* (R, H), (R, V), R = min(T, HEAD_ROWS) */
};

/* MC_OK when the V4 model m can run on the executor. */
mc_status mc_step_v4_supported(const mc_model *m, mc_err *err);
/* Binds V4's weights, allocates its caches and scratch (called by
 * mc_step_exec_init instead of the generic binding). */
mc_status mc_step_v4_init(mc_step_exec *ex, mc_err *err);
void mc_step_v4_free(mc_step_exec *ex);
/* The whole stack on one step: embed, the layers, the head into logits
 * (hx->nl rows of vocab floats). */
mc_status mc_step_v4_forward(mc_step_exec *ex, const mc_step_host_ix *hx, float *logits,
                             mc_err *err);

#endif
