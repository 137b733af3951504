/* deepseek_v4_internal.h - the DeepSeek-V4 weights bound by deepseek_v4.c
 * (m->v4), read by the step executor (step_v4.c, step_v4_fwd.c) and by the
 * test reference (tests/ref/). All views and copies are owned by the model. */
#ifndef MC_DEEPSEEK_V4_INTERNAL_H
#define MC_DEEPSEEK_V4_INTERNAL_H

#include "deepseek_v4.h"
#include "rope.h"

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

#endif
