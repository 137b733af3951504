/* deepseek_v4_internal.h - weights, cache state and helpers shared by the
 * DeepSeek-V4 files (deepseek_v4.c: loading, hyper-connections, MoE, the
 * decoder stack; deepseek_v4_attn.c: attention, compressors, indexer). */
#ifndef MC_DEEPSEEK_V4_INTERNAL_H
#define MC_DEEPSEEK_V4_INTERNAL_H

#include "deepseek_v4.h"

/* A KV compressor: every `rate` source tokens become one entry of width cd.
 * overlap (CSA): projections are 2*cd wide, entry w mixes the first half of
 * window w-1 with the second half of window w (2*rate slots). */
typedef struct {
    int rate, cd, overlap;
    mc_mat wkv, wgate; /* [(1+overlap)*cd, H] */
    float *ape;        /* [rate, (1+overlap)*cd] position bias added to the gate */
    float *norm;       /* [cd] RMSNorm of the pooled entry */
} mc_v4_comp;

/* Hyper-connection mapping of one site: fn [(2+hc)*hc, hc*H], base, scale[3]. */
typedef struct {
    mc_mat fn;
    float *base, *scale;
} mc_v4_hc;

typedef struct {
    int kind;              /* mc_v4_attn_kind */
    bool hash;
    float *attn_norm, *ffn_norm;
    mc_v4_hc hc_attn, hc_ffn;
    /* attention */
    mc_mat wq_a, wq_b, wkv, wo_a, wo_b;
    float *q_norm, *kv_norm, *sinks;
    mc_v4_comp comp;       /* CSA / HCA */
    mc_v4_comp icomp;      /* CSA: the indexer's own compressor */
    mc_mat idx_wq_b;       /* [index_n_heads*index_head_dim, q_lora] */
    mc_mat idx_wproj;      /* [index_n_heads, H] */
    /* MoE */
    mc_mat gate;           /* [E, H] */
    float *gate_bias;      /* [E] or NULL */
    int32_t *tid2eid;      /* [vocab, k] (hash layers) */
    mc_ffn_w *experts;     /* [E] */
    mc_ffn_w shared;
} mc_v4_layer;

typedef struct mc_v4_model {
    mc_v4_layer *layers;
    mc_mat hc_head_fn;     /* [hc, hc*H] */
    float *hc_head_base, *hc_head_scale;
    double *inv_main, *inv_comp; /* [rope.dim/2] */
} mc_v4_model;

/* Per-layer incremental state of one compressor. */
typedef struct {
    float *ring_kv, *ring_gate; /* [2*rate, (1+overlap)*cd]: raw projections (gate + ape) by pos % (2*rate) */
    float *entries;             /* [max_entries, cd]: pooled, normed, rotated */
    int n_entries, max_entries;
} mc_v4_comp_state;

typedef struct {
    float *win;                 /* [window, head_dim]: rotated K=V by pos % window */
    mc_v4_comp_state comp, icomp;
} mc_v4_layer_state;

typedef struct {
    int n_layers;
    mc_v4_layer_state *layers;
} mc_v4_kv;

/* Top-k selection with the reference's tie behaviour (torch.topk on CPU:
 * libstdc++ nth_element with "greater"): rearranges q[0..n) so that q[0..k)
 * hold k largest values (NaN counts as largest); no order among them. */
typedef struct {
    float v;
    int i;
} mc_v4_sel;
void mc_v4_select_topk(mc_v4_sel *q, int n, int k);

/* cos/sin of the rotary angles at `pos` for dim/2 pairs (float like the reference). */
void mc_v4_rope_cs(const double *inv_freq, int half, int pos, float *cs, float *sn);
/* Rotates the trailing `rd` dims of v (interleaved pairs). */
void mc_v4_rope_tail(float *v, int dim, int rd, const float *cs, const float *sn);

/* Attention sub-layer of layer l on n tokens at positions kv->len..: x [n, H]
 * (already normed), q_res scratch-free; y [n, H]. Updates the layer's cache. */
mc_status mc_v4_attention(const mc_model *m, int l, mc_kv *kv, const float *x, int n, float *y,
                          mc_err *err);

#endif
