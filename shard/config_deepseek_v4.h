/* config_deepseek_v4.h - DeepSeek-V4 specific fields of mc_model_desc.
 *
 * The generic fields of mc_model_desc carry what V4 shares with other
 * families: hidden, vocab, n_layers, n_heads (query heads), n_kv_heads (1:
 * one shared K=V head), head_dim, q_lora_rank, qk_rope_dim and rope (the
 * "main" rotary, used by sliding-window-only layers), n_experts,
 * n_experts_per_tok, moe_inter, shared expert width, routed_scale,
 * attn_scale, layer_moe (all true). Everything below is V4 only.
 */
#ifndef MC_CONFIG_DEEPSEEK_V4_H
#define MC_CONFIG_DEEPSEEK_V4_H

#include <stdbool.h>

#define MC_V4_MAX_LAYERS 512 /* == MC_MAX_LAYERS */

/* Attention kind of one layer. */
typedef enum {
    MC_V4_ATTN_SLIDING = 0, /* sliding window only */
    MC_V4_ATTN_CSA,         /* + compressed sparse attention (overlapping windows, indexer) */
    MC_V4_ATTN_HCA          /* + heavily compressed attention (disjoint windows, all visible) */
} mc_v4_attn_kind;

/* Router score: sqrt(softplus(logit)) or sigmoid(logit). */
typedef enum { MC_V4_SCORE_SQRTSOFTPLUS = 0, MC_V4_SCORE_SIGMOID } mc_v4_score;

typedef struct {
    int hc_mult; /* hyper-connection streams; 0 when the model is not V4 */
    int hc_sinkhorn_iters;
    float hc_eps;

    int sliding_window;       /* keys per query in the local branch, query included */
    int csa_rate, hca_rate;   /* tokens per compressed entry */
    int o_groups, o_lora_rank; /* grouped output projection */
    int index_n_heads, index_head_dim, index_topk;
    float swiglu_limit;       /* clamp of the SwiGLU gate (max) and up (both sides) */
    mc_v4_score score;

    /* "compress" rotary: used by CSA/HCA layers (queries, keys, compressed
     * entries, indexer); dim = rope.dim of the main one. theta/scaling only. */
    double compress_theta;
    int compress_yarn;        /* 0: default rope; 1: YaRN (see the fields below) */
    double compress_factor, compress_orig_max_pos, compress_beta_fast, compress_beta_slow;
    double compress_attention_factor; /* always 1 (others are refused) */

    unsigned char layer_attn[MC_V4_MAX_LAYERS]; /* mc_v4_attn_kind */
    bool layer_hash[MC_V4_MAX_LAYERS];          /* hash-routed MoE (tid2eid) */
} mc_v4_desc;

#endif
