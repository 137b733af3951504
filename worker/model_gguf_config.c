/* model_gguf_config.c - GGUF metadata -> the config.json a Hugging Face
 * checkpoint of the same model holds (parsed by mc_model_desc_parse), and
 * the role -> GGUF tensor name tables, per family (docs/gguf.md). */
#include "model_gguf_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* qwen3moe: gguf.constants MODEL_TENSORS[MODEL_ARCH.QWEN3MOE] with
 * TENSOR_NAMES (TOKEN_EMBD, OUTPUT_NORM, OUTPUT, ATTN_NORM, ATTN_Q,
 * ATTN_Q_NORM, ATTN_K, ATTN_K_NORM, ATTN_V, ATTN_OUT, FFN_NORM,
 * FFN_GATE_INP, FFN_GATE_EXP, FFN_DOWN_EXP, FFN_UP_EXP), the HF tensor each
 * comes from per gguf.tensor_mapping. */
static const char *const qwen3moe_names[MC_T_ROLE_COUNT] = {
    [MC_T_EMBED] = "token_embd.weight",
    [MC_T_LM_HEAD] = "output.weight",
    [MC_T_FINAL_NORM] = "output_norm.weight",
    [MC_T_ATTN_NORM] = "blk.%d.attn_norm.weight",
    [MC_T_FFN_NORM] = "blk.%d.ffn_norm.weight",
    [MC_T_Q] = "blk.%d.attn_q.weight",
    [MC_T_K] = "blk.%d.attn_k.weight",
    [MC_T_V] = "blk.%d.attn_v.weight",
    [MC_T_O] = "blk.%d.attn_output.weight",
    [MC_T_Q_NORM] = "blk.%d.attn_q_norm.weight",
    [MC_T_K_NORM] = "blk.%d.attn_k_norm.weight",
    [MC_T_ROUTER] = "blk.%d.ffn_gate_inp.weight",
    [MC_T_EXPERT_GATE] = "blk.%d.ffn_gate_exps.weight",
    [MC_T_EXPERT_UP] = "blk.%d.ffn_up_exps.weight",
    [MC_T_EXPERT_DOWN] = "blk.%d.ffn_down_exps.weight",
};

/* deepseek2: MODEL_TENSORS[MODEL_ARCH.DEEPSEEK2]: TOKEN_EMBD, OUTPUT_NORM,
 * OUTPUT, ATTN_NORM, ATTN_Q (no q_lora), ATTN_Q_A, ATTN_Q_A_NORM, ATTN_Q_B,
 * ATTN_KV_A_MQA, ATTN_KV_A_NORM, ATTN_KV_B (older converters) or ATTN_K_B +
 * ATTN_V_B (newer ones: kv_b_proj split per head, k_b transposed; joined
 * back at load, see kv_b_join), ATTN_OUT, FFN_NORM, FFN_GATE/UP/DOWN
 * (leading dense layers), FFN_GATE_INP, FFN_EXP_PROBS_B (.bias:
 * e_score_correction_bias), FFN_*_EXP (stacked), FFN_*_SHEXP. */
static const char *const deepseek2_names[MC_T_ROLE_COUNT] = {
    [MC_T_EMBED] = "token_embd.weight",
    [MC_T_LM_HEAD] = "output.weight",
    [MC_T_FINAL_NORM] = "output_norm.weight",
    [MC_T_ATTN_NORM] = "blk.%d.attn_norm.weight",
    [MC_T_FFN_NORM] = "blk.%d.ffn_norm.weight",
    [MC_T_Q] = "blk.%d.attn_q.weight",
    [MC_T_Q_A] = "blk.%d.attn_q_a.weight",
    [MC_T_Q_A_NORM] = "blk.%d.attn_q_a_norm.weight",
    [MC_T_Q_B] = "blk.%d.attn_q_b.weight",
    [MC_T_KV_A] = "blk.%d.attn_kv_a_mqa.weight",
    [MC_T_KV_A_NORM] = "blk.%d.attn_kv_a_norm.weight",
    [MC_T_KV_B] = "blk.%d.attn_kv_b.weight",
    [MC_T_O] = "blk.%d.attn_output.weight",
    [MC_T_DENSE_GATE] = "blk.%d.ffn_gate.weight",
    [MC_T_DENSE_UP] = "blk.%d.ffn_up.weight",
    [MC_T_DENSE_DOWN] = "blk.%d.ffn_down.weight",
    [MC_T_ROUTER] = "blk.%d.ffn_gate_inp.weight",
    [MC_T_ROUTER_BIAS] = "blk.%d.exp_probs_b.bias",
    [MC_T_SHARED_GATE] = "blk.%d.ffn_gate_shexp.weight",
    [MC_T_SHARED_UP] = "blk.%d.ffn_up_shexp.weight",
    [MC_T_SHARED_DOWN] = "blk.%d.ffn_down_shexp.weight",
    [MC_T_EXPERT_GATE] = "blk.%d.ffn_gate_exps.weight",
    [MC_T_EXPERT_UP] = "blk.%d.ffn_up_exps.weight",
    [MC_T_EXPERT_DOWN] = "blk.%d.ffn_down_exps.weight",
};

/* llama4: MODEL_TENSORS[MODEL_ARCH.LLAMA4]: TOKEN_EMBD, OUTPUT_NORM, OUTPUT,
 * ROPE_FREQS (llama3 scaling as per-frequency divisors, read at open),
 * ATTN_NORM, ATTN_Q/K/V/OUT (not permuted: the converter's undo_permute is
 * off for Llama 4), FFN_NORM, FFN_GATE/UP/DOWN (dense layers), FFN_GATE_INP,
 * FFN_*_EXP (stacked; the converter splits and transposes gate_up_proj and
 * transposes down_proj, so they are per expert [out, in] as qwen3moe's),
 * FFN_*_SHEXP. */
static const char *const llama4_names[MC_T_ROLE_COUNT] = {
    [MC_T_EMBED] = "token_embd.weight",
    [MC_T_LM_HEAD] = "output.weight",
    [MC_T_FINAL_NORM] = "output_norm.weight",
    [MC_T_ATTN_NORM] = "blk.%d.attn_norm.weight",
    [MC_T_FFN_NORM] = "blk.%d.ffn_norm.weight",
    [MC_T_Q] = "blk.%d.attn_q.weight",
    [MC_T_K] = "blk.%d.attn_k.weight",
    [MC_T_V] = "blk.%d.attn_v.weight",
    [MC_T_O] = "blk.%d.attn_output.weight",
    [MC_T_DENSE_GATE] = "blk.%d.ffn_gate.weight",
    [MC_T_DENSE_UP] = "blk.%d.ffn_up.weight",
    [MC_T_DENSE_DOWN] = "blk.%d.ffn_down.weight",
    [MC_T_ROUTER] = "blk.%d.ffn_gate_inp.weight",
    [MC_T_SHARED_GATE] = "blk.%d.ffn_gate_shexp.weight",
    [MC_T_SHARED_UP] = "blk.%d.ffn_up_shexp.weight",
    [MC_T_SHARED_DOWN] = "blk.%d.ffn_down_shexp.weight",
    [MC_T_EXPERT_GATE] = "blk.%d.ffn_gate_exps.weight",
    [MC_T_EXPERT_UP] = "blk.%d.ffn_up_exps.weight",
    [MC_T_EXPERT_DOWN] = "blk.%d.ffn_down_exps.weight",
};

#define STACKED_EXPERTS                                                                            \
    ((1ull << MC_T_EXPERT_GATE) | (1ull << MC_T_EXPERT_UP) | (1ull << MC_T_EXPERT_DOWN))

_Static_assert(MC_T_ROLE_COUNT <= 64, "role bits fit the stacked mask");

/* ---- metadata -> config.json ---- */

typedef struct {
    mc_gguf_model *m;
    json_t *cfg;
    mc_status st;
    mc_err *err;
} cfg_ctx;

/* A failed metadata lookup: the context keeps the status; a missing key
 * becomes a config error saying which family needs it. */
static void lookup_failed(cfg_ctx *c, mc_status st, const char *key)
{
    c->st = st == MC_ERR_NOT_FOUND ? MC_ERR_CONFIG : st;
    if (st == MC_ERR_NOT_FOUND) {
        mc_err_clear(c->err); /* this message says why the key is needed */
        mc_err_set(c->err, MC_ERR_CONFIG, "%s: GGUF metadata has no '%s' (needed by %s)",
                   c->m->path, key, c->m->arch);
    }
}

static void key_of(const cfg_ctx *c, const char *suffix, char *buf, size_t len)
{
    snprintf(buf, len, "%s.%s", c->m->arch, suffix);
}

/* ARCH.suffix as an integer into cfg[field]; `need`: refuse when absent. */
static int64_t put_int(cfg_ctx *c, const char *suffix, const char *field, bool need, int64_t def)
{
    char key[256];
    key_of(c, suffix, key, sizeof key);
    uint32_t v = 0;
    if (c->st != MC_OK)
        return def;
    mc_status st = mc_gguf_get_u32(c->m->g, key, &v, c->err);
    if (st == MC_ERR_NOT_FOUND && !need) {
        mc_err_clear(c->err);
        if (field && def >= 0)
            json_object_set_new(c->cfg, field, json_integer(def));
        return def;
    }
    if (st != MC_OK) {
        lookup_failed(c, st, key);
        return def;
    }
    if (field)
        json_object_set_new(c->cfg, field, json_integer((json_int_t)v));
    return v;
}

static double put_real(cfg_ctx *c, const char *suffix, const char *field, bool need, double def)
{
    char key[256];
    key_of(c, suffix, key, sizeof key);
    float v = 0;
    if (c->st != MC_OK)
        return def;
    mc_status st = mc_gguf_get_f32(c->m->g, key, &v, c->err);
    if (st == MC_ERR_NOT_FOUND && !need) {
        mc_err_clear(c->err);
        json_object_set_new(c->cfg, field, json_real(def));
        return def;
    }
    if (st != MC_OK) {
        lookup_failed(c, st, key);
        return def;
    }
    json_object_set_new(c->cfg, field, json_real((double)v));
    return v;
}

/* An optional top-level u32 (token ids) into cfg[field]. */
static void put_opt_id(cfg_ctx *c, const char *key, const char *field)
{
    uint32_t v;
    if (c->st != MC_OK)
        return;
    mc_status st = mc_gguf_get_u32(c->m->g, key, &v, c->err);
    if (st == MC_ERR_NOT_FOUND) {
        mc_err_clear(c->err);
        return;
    }
    if (st != MC_OK) {
        c->st = st;
        return;
    }
    json_object_set_new(c->cfg, field, json_integer((json_int_t)v));
}

/* vocab_size: ARCH.vocab_size, else the length of tokenizer.ggml.tokens
 * (llama.cpp's converter pads the token list to the model's vocab_size). */
static void put_vocab(cfg_ctx *c)
{
    char key[256];
    key_of(c, "vocab_size", key, sizeof key);
    uint32_t v;
    const mc_gguf_kv *kv;
    if (c->st != MC_OK)
        return;
    mc_status st = mc_gguf_get_u32(c->m->g, key, &v, c->err);
    if (st == MC_OK) {
        json_object_set_new(c->cfg, "vocab_size", json_integer((json_int_t)v));
        return;
    }
    if (st != MC_ERR_NOT_FOUND) {
        c->st = st;
        return;
    }
    mc_err_clear(c->err);
    st = mc_gguf_get_arr(c->m->g, "tokenizer.ggml.tokens", MC_GGUF_STR, &kv, c->err);
    if (st == MC_ERR_NOT_FOUND) {
        mc_err_clear(c->err);
        c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                           "%s: GGUF metadata has neither '%s' nor 'tokenizer.ggml.tokens': the "
                           "vocabulary size is unknown",
                           c->m->path, key);
        return;
    }
    if (st != MC_OK) {
        c->st = st;
        return;
    }
    json_object_set_new(c->cfg, "vocab_size", json_integer((json_int_t)kv->arr_n));
}

/* ARCH.rope.scaling.*: none (or absent), or yarn with factor and
 * original_context_length, as config.json's rope_scaling. */
static void put_rope_scaling(cfg_ctx *c)
{
    char key[256];
    const char *type;
    uint64_t tlen;
    if (c->st != MC_OK)
        return;
    key_of(c, "rope.scaling.type", key, sizeof key);
    mc_status st = mc_gguf_get_str(c->m->g, key, &type, &tlen, c->err);
    if (st == MC_ERR_NOT_FOUND) {
        mc_err_clear(c->err);
        return;
    }
    if (st != MC_OK) {
        c->st = st;
        return;
    }
    if (tlen == 4 && !memcmp(type, "none", 4))
        return;
    if (!(tlen == 4 && !memcmp(type, "yarn", 4))) {
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: '%s' is '%.*s'; only none and yarn are supported", c->m->path, key,
                           (int)(tlen > 32 ? 32 : tlen), type);
        return;
    }
    json_t *rs = json_object();
    json_t *saved = c->cfg;
    c->cfg = rs;
    json_object_set_new(rs, "rope_type", json_string("yarn"));
    put_real(c, "rope.scaling.factor", "factor", true, 1.0);
    put_int(c, "rope.scaling.original_context_length", "original_max_position_embeddings", true,
            0);
    c->cfg = saved;
    json_object_set_new(c->cfg, "rope_scaling", rs);
}

/* qwen3moe -> a Qwen3MoeForCausalLM config.json. llama.cpp's qwen3moe graph
 * has MoE in every layer and renormalizes the top-k weights. */
static void qwen3moe_config(cfg_ctx *c)
{
    json_t *cfg = c->cfg;
    json_object_set_new(cfg, "model_type", json_string("qwen3_moe"));
    put_vocab(c);
    int64_t H = put_int(c, "embedding_length", "hidden_size", true, 0);
    put_int(c, "block_count", "num_hidden_layers", true, 0);
    int64_t nh = put_int(c, "attention.head_count", "num_attention_heads", true, 0);
    put_int(c, "attention.head_count_kv", "num_key_value_heads", false, nh);
    int64_t hd = put_int(c, "attention.key_length", "head_dim", false, nh > 0 ? H / nh : 0);
    int64_t vd = put_int(c, "attention.value_length", NULL, false, hd);
    if (c->st == MC_OK && vd != hd)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: %s.attention.value_length (%lld) differs from key_length (%lld)",
                           c->m->path, c->m->arch, (long long)vd, (long long)hd);
    put_int(c, "context_length", "max_position_embeddings", true, 0);
    int64_t mi = put_int(c, "expert_feed_forward_length", "moe_intermediate_size", true, 0);
    put_int(c, "feed_forward_length", "intermediate_size", false, mi);
    int64_t E = put_int(c, "expert_count", "num_experts", true, 0);
    put_int(c, "expert_used_count", "num_experts_per_tok", true, 0);
    put_real(c, "attention.layer_norm_rms_epsilon", "rms_norm_eps", true, 1e-6);
    put_real(c, "rope.freq_base", "rope_theta", false, 10000.0);
    put_rope_scaling(c);
    bool norm = true;
    char key[256];
    key_of(c, "expert_weights_norm", key, sizeof key);
    if (c->st == MC_OK) {
        mc_status st = mc_gguf_get_bool(c->m->g, key, &norm, c->err);
        if (st == MC_ERR_NOT_FOUND)
            mc_err_clear(c->err);
        else if (st != MC_OK)
            c->st = st;
    }
    json_object_set_new(cfg, "norm_topk_prob", json_boolean(norm));
    json_object_set_new(cfg, "tie_word_embeddings",
                        json_boolean(!mc_gguf_find_tensor(c->m->g, "output.weight")));
    put_opt_id(c, "tokenizer.ggml.bos_token_id", "bos_token_id");
    put_opt_id(c, "tokenizer.ggml.eos_token_id", "eos_token_id");
    c->m->names = qwen3moe_names;
    c->m->stacked = STACKED_EXPERTS;
    c->m->n_experts = (int)E;
}

/* An optional ARCH.suffix (u32) or -1. */
static int64_t opt_u32(cfg_ctx *c, const char *suffix)
{
    char key[256];
    uint32_t v;
    if (c->st != MC_OK)
        return -1;
    key_of(c, suffix, key, sizeof key);
    mc_status st = mc_gguf_get_u32(c->m->g, key, &v, c->err);
    if (st == MC_ERR_NOT_FOUND) {
        mc_err_clear(c->err);
        return -1;
    }
    if (st != MC_OK) {
        c->st = st;
        return -1;
    }
    return v;
}

/* deepseek2 -> a DeepseekV3ForCausalLM config.json (llama.cpp's converter
 * writes MLA as MQA: head_count_kv 1, key_length kv_lora + rope; the head
 * sizes are in key_length_mla / value_length_mla, or, from older
 * converters, in key_length / value_length). */
static void deepseek2_config(cfg_ctx *c)
{
    json_t *cfg = c->cfg;
    mc_gguf_model *m = c->m;
    json_object_set_new(cfg, "model_type", json_string("deepseek_v3"));
    put_vocab(c);
    put_int(c, "embedding_length", "hidden_size", true, 0);
    int64_t L = put_int(c, "block_count", "num_hidden_layers", true, 0);
    int64_t nh = put_int(c, "attention.head_count", "num_attention_heads", true, 0);
    json_object_set_new(cfg, "num_key_value_heads", json_integer((json_int_t)nh));
    int64_t ql = opt_u32(c, "attention.q_lora_rank");
    if (ql > 0)
        json_object_set_new(cfg, "q_lora_rank", json_integer((json_int_t)ql));
    int64_t kvl = put_int(c, "attention.kv_lora_rank", "kv_lora_rank", true, 0);
    int64_t rope = put_int(c, "rope.dimension_count", "qk_rope_head_dim", true, 0);
    int64_t kl = opt_u32(c, "attention.key_length_mla"), vl = opt_u32(c, "attention.value_length_mla");
    if (kl < 0)
        kl = put_int(c, "attention.key_length", NULL, true, 0);
    if (vl < 0)
        vl = put_int(c, "attention.value_length", NULL, true, 0);
    if (c->st == MC_OK && kl < rope)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                           "%s: deepseek2 key length %lld is less than rope.dimension_count %lld",
                           m->path, (long long)kl, (long long)rope);
    json_object_set_new(cfg, "qk_nope_head_dim", json_integer((json_int_t)(kl - rope)));
    json_object_set_new(cfg, "v_head_dim", json_integer((json_int_t)vl));
    put_int(c, "context_length", "max_position_embeddings", true, 0);
    put_int(c, "feed_forward_length", "intermediate_size", true, 0);
    put_int(c, "expert_feed_forward_length", "moe_intermediate_size", true, 0);
    int64_t E = put_int(c, "expert_count", "n_routed_experts", true, 0);
    put_int(c, "expert_used_count", "num_experts_per_tok", true, 0);
    put_int(c, "expert_shared_count", "n_shared_experts", false, 0);
    int64_t dense = put_int(c, "leading_dense_block_count", "first_k_dense_replace", false, 0);
    put_int(c, "expert_group_count", "n_group", false, 1);
    put_int(c, "expert_group_used_count", "topk_group", false, 1);
    put_real(c, "expert_weights_scale", "routed_scaling_factor", false, 1.0);
    put_real(c, "attention.layer_norm_rms_epsilon", "rms_norm_eps", true, 1e-6);
    put_real(c, "rope.freq_base", "rope_theta", false, 10000.0);
    put_rope_scaling(c);
    json_t *rs = json_object_get(cfg, "rope_scaling");
    char key[256];
    float lm = 0;
    key_of(c, "rope.scaling.yarn_log_multiplier", key, sizeof key);
    if (rs && c->st == MC_OK && mc_gguf_get_f32(m->g, key, &lm, c->err) == MC_OK) {
        /* written as 0.1 * mscale_all_dim; mscale is not stored: llama.cpp
         * takes it equal (DeepSeek-V2/V3 ship mscale == mscale_all_dim) */
        double ms = round((double)lm * 10.0 * 1e6) / 1e6;
        json_object_set_new(rs, "mscale_all_dim", json_real(ms));
        json_object_set_new(rs, "mscale", json_real(ms));
    } else {
        mc_err_clear(c->err);
    }
    bool norm = false;
    int64_t gate = opt_u32(c, "expert_gating_func"); /* 1 softmax, 2 sigmoid; absent: softmax */
    key_of(c, "expert_weights_norm", key, sizeof key);
    if (c->st == MC_OK && mc_gguf_get_bool(m->g, key, &norm, c->err) != MC_OK)
        mc_err_clear(c->err);
    json_object_set_new(cfg, "norm_topk_prob", json_boolean(norm));
    if (c->st == MC_OK && gate != -1 && gate != 1 && gate != 2)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: %s.expert_gating_func %lld is not supported (1 softmax, 2 sigmoid)",
                           m->path, m->arch, (long long)gate);
    json_object_set_new(cfg, "scoring_func", json_string(gate == 2 ? "sigmoid" : "softmax"));
    char bias[64];
    snprintf(bias, sizeof bias, "blk.%lld.exp_probs_b.bias", (long long)(dense < 0 ? 0 : dense));
    json_object_set_new(cfg, "topk_method",
                        json_string(mc_gguf_find_tensor(m->g, bias) ? "noaux_tc" : "greedy"));
    json_object_set_new(cfg, "tie_word_embeddings",
                        json_boolean(!mc_gguf_find_tensor(m->g, "output.weight")));
    put_opt_id(c, "tokenizer.ggml.bos_token_id", "bos_token_id");
    put_opt_id(c, "tokenizer.ggml.eos_token_id", "eos_token_id");
    (void)L;
    m->names = deepseek2_names;
    m->kv_b_split = true;
    m->stacked = STACKED_EXPERTS;
    m->n_experts = (int)E;
    m->n_heads = (int)nh;
    m->qk_nope = (int)(kl - rope);
    m->v_dim = (int)vl;
    m->kv_lora = (int)kvl;
}

/* llama4 -> a Llama4ForCausalLM (llama4_text) config.json, with the
 * settings llama.cpp's llama4 graph takes for a file that does not state them
 * (src/models/llama4.cpp): unless `sliding_window` is 0, chunked attention
 * of 8192 on the RoPE layers, every 4th layer without RoPE, the NoPE layers'
 * query temperature (scale 0.1, floor 8192); the weightless q/k norm unless
 * the model has 128 experts (llama.cpp's rule: Maverick has none, Scout has
 * it). RoPE is the complex-pair form; its llama3 scaling comes from the
 * rope_freqs tensor (mc_gguf_model_open). */
static void llama4_config(cfg_ctx *c)
{
    json_t *cfg = c->cfg;
    json_object_set_new(cfg, "model_type", json_string("llama4_text"));
    put_vocab(c);
    int64_t H = put_int(c, "embedding_length", "hidden_size", true, 0);
    int64_t L = put_int(c, "block_count", "num_hidden_layers", true, 0);
    int64_t nh = put_int(c, "attention.head_count", "num_attention_heads", true, 0);
    put_int(c, "attention.head_count_kv", "num_key_value_heads", false, nh);
    int64_t hd = opt_u32(c, "attention.key_length");
    if (hd < 0)
        hd = opt_u32(c, "rope.dimension_count");
    if (hd < 0)
        hd = nh > 0 ? H / nh : 0;
    json_object_set_new(cfg, "head_dim", json_integer((json_int_t)hd));
    int64_t vd = opt_u32(c, "attention.value_length"), rd = opt_u32(c, "rope.dimension_count");
    if (c->st == MC_OK && ((vd >= 0 && vd != hd) || (rd >= 0 && rd != hd)))
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: llama4 value_length (%lld) and rope.dimension_count (%lld) must "
                           "equal the head size (%lld)",
                           c->m->path, (long long)vd, (long long)rd, (long long)hd);
    put_int(c, "context_length", "max_position_embeddings", true, 0);
    put_int(c, "feed_forward_length", "intermediate_size_mlp", true, 0);
    put_int(c, "expert_feed_forward_length", "intermediate_size", true, 0);
    int64_t E = put_int(c, "expert_count", "num_local_experts", true, 0);
    put_int(c, "expert_used_count", "num_experts_per_tok", true, 0);
    put_int(c, "interleave_moe_layer_step", "interleave_moe_layer_step", true, 0);
    put_real(c, "attention.layer_norm_rms_epsilon", "rms_norm_eps", true, 1e-5);
    put_real(c, "rope.freq_base", "rope_theta", false, 10000.0);
    int64_t swa = opt_u32(c, "attention.sliding_window");
    if (swa == 0) { /* every layer full attention with RoPE */
        json_t *nrl = json_array();
        for (int64_t l = 0; l < L && l < 4096; l++)
            json_array_append_new(nrl, json_integer(1));
        json_object_set_new(cfg, "no_rope_layers", nrl);
    } else {
        json_object_set_new(cfg, "attention_chunk_size", json_integer(8192));
        json_object_set_new(cfg, "no_rope_layer_interval", json_integer(4));
        json_object_set_new(cfg, "attn_temperature_tuning", json_true());
        json_object_set_new(cfg, "floor_scale", json_integer(8192));
        json_object_set_new(cfg, "attn_scale", json_real(0.1));
    }
    json_object_set_new(cfg, "use_qk_norm", json_boolean(E != 128));
    json_object_set_new(cfg, "tie_word_embeddings",
                        json_boolean(!mc_gguf_find_tensor(c->m->g, "output.weight")));
    put_opt_id(c, "tokenizer.ggml.bos_token_id", "bos_token_id");
    put_opt_id(c, "tokenizer.ggml.eos_token_id", "eos_token_id");
    c->m->names = llama4_names;
    c->m->stacked = STACKED_EXPERTS;
    c->m->n_experts = (int)E;
}

typedef struct {
    const char *arch;
    void (*config)(cfg_ctx *);
} gg_family;

static const gg_family families[] = {
    {"qwen3moe", qwen3moe_config},
    {"deepseek2", deepseek2_config},
    {"llama4", llama4_config},
};

mc_status mc_gguf_config(mc_gguf_model *m, json_t *cfg, mc_err *err)
{
    uint64_t alen = 0;
    const char *arch;
    mc_status st = mc_gguf_get_str(m->g, "general.architecture", &arch, &alen, err);
    if (st == MC_ERR_NOT_FOUND) {
        mc_err_clear(err);
        return mc_err_set(err, MC_ERR_FORMAT, "%s: GGUF metadata has no 'general.architecture'",
                          m->path);
    }
    if (st != MC_OK)
        return st;
    const gg_family *fam = NULL;
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (strlen(families[i].arch) == alen && !memcmp(families[i].arch, arch, alen))
            fam = &families[i];
    if (!fam)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: general.architecture '%.*s' is not supported (GGUF families: "
                          "qwen3moe, deepseek2, llama4)",
                          m->path, (int)(alen > 64 ? 64 : alen), arch);
    m->arch = fam->arch; /* NUL-terminated */
    cfg_ctx c = {.m = m, .cfg = cfg, .st = MC_OK, .err = err};
    fam->config(&c);
    return c.st;
}
