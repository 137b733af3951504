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
    MC_FAM_DEEPSEEK_V32,
    MC_FAM_QWEN3_MOE,
    MC_FAM_LLAMA4,
    MC_FAM_MISTRAL4,
    MC_FAM_DEEPSEEK_V4,
    MC_FAM_COUNT
} mc_family;

/* Which tensor-name table the checkpoint uses. */
typedef enum { MC_NAMES_HF = 0, MC_NAMES_LLAMA4, MC_NAMES_MISTRAL } mc_naming;

/* How routed expert weights are stored. */
typedef enum {
    MC_EXPERTS_SEPARATE = 0, /* experts.E.{gate,up,down}_proj [I,H],[I,H],[H,I] */
    MC_EXPERTS_FUSED_IO,     /* gate_up_proj [E,H,2I], down_proj [E,I,H] (Llama 4) */
    MC_EXPERTS_FUSED_OI      /* gate_up_proj [E,2I,H], down_proj [E,H,I] (Mistral 4) */
} mc_expert_layout;

/* How a token's experts and weights are chosen. */
typedef enum {
    MC_ROUTER_TOPK = 0, /* scores -> (group-limited) top-k -> optional renormalization */
    MC_ROUTER_LLAMA4    /* top-k of the logits, sigmoid of those, scaling the expert input */
} mc_router_kind;

typedef enum { MC_ATTN_MLA = 0, MC_ATTN_GQA } mc_attn_kind;

/* How rotary pairs are laid out inside the rotated part of a head:
 * INTERLEAVED pairs (2i, 2i+1) (DeepSeek, Llama 4's complex form);
 * HALF pairs (i, i + d/2) (rotate_half: Qwen, Llama). */
typedef enum { MC_ROPE_INTERLEAVED = 0, MC_ROPE_HALF } mc_rope_style;

/* FACTORS: per-frequency divisors given as numbers (llama.cpp's
 * rope_freqs tensor in a GGUF file: how llama3 scaling is stored there). */
typedef enum {
    MC_ROPE_SCALE_NONE = 0,
    MC_ROPE_SCALE_YARN,
    MC_ROPE_SCALE_LLAMA3,
    MC_ROPE_SCALE_FACTORS
} mc_rope_scaling;

#define MC_ROPE_MAX_FACTORS 512 /* rotated dimensions / 2 with FACTORS */

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
    float freq_factors[MC_ROPE_MAX_FACTORS];  /* FACTORS: inv_freq[i] / freq_factors[i], i < dim/2 */
} mc_rope_desc;

typedef struct {
    char model_type[64];
    mc_family family;
    mc_naming naming;
    char tensor_prefix[32]; /* e.g. "language_model." for the multimodal Llama 4 checkpoint */
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
    bool layer_rope[MC_MAX_LAYERS];    /* false = NoPE layer (Llama 4) */
    int attn_chunk;                    /* chunked attention on RoPE layers; 0 = off */
    bool qk_l2norm;                    /* weightless RMS norm of q, k after RoPE (Llama 4) */
    bool attn_temp_tuning;             /* Llama 4 NoPE-layer query temperature */
    double attn_floor_scale, attn_temp_scale;
    double llama4_beta, llama4_orig_max; /* Mistral 4 position-dependent query scale; 0 = off */
    /* DeepSeek-V3.2 lightning indexer (index_topk 0 = dense attention) */
    int index_n_heads, index_head_dim, index_topk;

    /* feed-forward */
    int dense_inter;                   /* dense layer FFN width */
    int moe_inter;                     /* routed expert FFN width */
    int n_experts, n_experts_per_tok;
    int n_shared_experts;
    int shared_inter;                  /* total width of the shared expert(s) */
    mc_expert_layout expert_layout;
    mc_router_kind router;
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
/* Parses a Mistral native params.json text. */
mc_status mc_model_desc_parse_mistral(const char *json_text, size_t len, const char *path,
                                      mc_model_desc *out, mc_err *err);
/* Reads a config file (a regular file of at most 16 MiB: a FIFO or device is
 * refused without blocking) into a malloc'd, NUL-terminated text. */
mc_status mc_config_read(const char *path, char **text, size_t *len, mc_err *err);
/* True for a Mistral params.json: named so, or a JSON object with "dim" and
 * no "model_type". */
int mc_config_is_mistral(const char *path, const char *text, size_t len);
/* mc_model_desc_parse or mc_model_desc_parse_mistral, whichever the text is. */
mc_status mc_model_desc_parse_any(const char *text, size_t len, const char *path,
                                  mc_model_desc *out, mc_err *err);
/* PATH is a checkpoint folder (its config.json, else params.json) or a config file. */
mc_status mc_model_desc_load(const char *dir, mc_model_desc *out, mc_err *err);
/* Checks a filled description for internal consistency (heads vs KV heads,
 * rotary dims, expert counts and groups); `path` names the source in messages. */
mc_status mc_model_desc_check(const mc_model_desc *m, const char *path, mc_err *err);
const char *mc_family_name(mc_family f);
/* Comma-separated list of the model_type values we accept, for messages. */
const char *mc_supported_model_types(void);

/* RoPE inverse frequencies for dims/2 pairs, with YaRN / llama3 applied. */
void mc_rope_inv_freq(const mc_rope_desc *r, double *inv_freq);

#endif
