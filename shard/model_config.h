/* model_config.h - one normalized description of a decoder-only MoE model,
 * built from a Hugging Face config.json (and, later, Mistral params.json).
 *
 * Every family fills the same struct; the forward pass reads only this.
 * Adding a family = one row in the table in model_config.c plus a parse
 * function (and a tensor-name table in model_tensors.c if its names differ).
 */
#ifndef MC_MODEL_CONFIG_H
#define MC_MODEL_CONFIG_H

#include "config_deepseek_v4.h"
#include "status.h"

#include <stdbool.h>

#define MC_MAX_LAYERS 512

typedef enum {
    MC_FAM_DEEPSEEK_V3 = 0,
    MC_FAM_QWEN3_MOE,
    MC_FAM_DEEPSEEK_V4,
    MC_FAM_COUNT
} mc_family;

typedef enum { MC_ATTN_MLA = 0, MC_ATTN_GQA } mc_attn_kind;

/* How rotary pairs are laid out inside the rotated part of a head:
 * INTERLEAVED pairs (2i, 2i+1) (DeepSeek, Llama 4's complex form);
 * HALF pairs (i, i + d/2) (rotate_half: Qwen, Llama). */
typedef enum { MC_ROPE_INTERLEAVED = 0, MC_ROPE_HALF } mc_rope_style;

typedef enum { MC_ROPE_SCALE_NONE = 0, MC_ROPE_SCALE_YARN, MC_ROPE_SCALE_LLAMA3 } mc_rope_scaling;

typedef enum { MC_SCORE_SOFTMAX = 0, MC_SCORE_SIGMOID } mc_score_func;

typedef struct {
    mc_rope_style style;
    mc_rope_scaling scaling;
    int dim;              /* rotated dimensions per head (even) */
    double theta;
    double factor;        /* YaRN / llama3 scaling factor */
    double orig_max_pos;  /* original_max_position_embeddings */
    double beta_fast, beta_slow;         /* YaRN */
    double mscale, mscale_all_dim;       /* YaRN (DeepSeek flavour); 0 = absent */
    double attention_factor;             /* YaRN: multiplies cos/sin */
    double low_freq_factor, high_freq_factor; /* llama3 */
} mc_rope_desc;

typedef struct {
    char model_type[64];
    mc_family family;
    int vocab;
    int hidden;
    int n_layers;
    int max_pos;
    float norm_eps;
    bool tie_embeddings;
    int bos_id, eos_id; /* -1 if absent */

    /* attention */
    mc_attn_kind attn;
    int n_heads, n_kv_heads, head_dim; /* GQA */
    bool qk_norm;                      /* per-head RMSNorm on q and k (Qwen3) */
    int q_lora_rank;                   /* MLA; 0 = plain q_proj */
    int kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim; /* MLA */
    float attn_scale;                  /* softmax scale incl. YaRN mscale^2 */
    mc_rope_desc rope;

    /* feed-forward */
    int dense_inter;                   /* dense layer FFN width */
    int moe_inter;                     /* routed expert FFN width */
    int n_experts, n_experts_per_tok;
    int n_shared_experts;
    int shared_inter;                  /* total width of the shared expert(s) */
    mc_score_func score_func;
    bool norm_topk_prob;
    bool has_score_bias;               /* e_score_correction_bias (choice only) */
    int n_group, topk_group;           /* group-limited top-k; 1/1 = off */
    float routed_scale;
    bool layer_moe[MC_MAX_LAYERS];

    /* FP8 block quantization (quantization_config.weight_block_size) */
    bool fp8_block;
    int fp8_block_rows, fp8_block_cols;

    mc_v4_desc v4; /* DeepSeek-V4 only */
} mc_model_desc;

/* Parses a config.json text. `path` names the file in messages. */
mc_status mc_model_desc_parse(const char *json_text, size_t len, const char *path,
                              mc_model_desc *out, mc_err *err);
/* Reads DIR/config.json. */
mc_status mc_model_desc_load(const char *dir, mc_model_desc *out, mc_err *err);
const char *mc_family_name(mc_family f);
/* Comma-separated list of the model_type values we accept, for messages. */
const char *mc_supported_model_types(void);

/* RoPE inverse frequencies for dims/2 pairs, with YaRN / llama3 applied. */
void mc_rope_inv_freq(const mc_rope_desc *r, double *inv_freq);

#endif
