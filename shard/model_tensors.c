/* model_tensors.c - name tables. Patterns take the layer then the expert. */
#include "model_tensors.h"

#include <stdio.h>

#define L "model.layers.%d."

static const char *const hf_names[MC_T_ROLE_COUNT] = {
    [MC_T_EMBED] = "model.embed_tokens.weight",
    [MC_T_LM_HEAD] = "lm_head.weight",
    [MC_T_FINAL_NORM] = "model.norm.weight",
    [MC_T_ATTN_NORM] = L "input_layernorm.weight",
    [MC_T_FFN_NORM] = L "post_attention_layernorm.weight",
    [MC_T_Q_A] = L "self_attn.q_a_proj.weight",
    [MC_T_Q_A_NORM] = L "self_attn.q_a_layernorm.weight",
    [MC_T_Q_B] = L "self_attn.q_b_proj.weight",
    [MC_T_Q] = L "self_attn.q_proj.weight",
    [MC_T_KV_A] = L "self_attn.kv_a_proj_with_mqa.weight",
    [MC_T_KV_A_NORM] = L "self_attn.kv_a_layernorm.weight",
    [MC_T_KV_B] = L "self_attn.kv_b_proj.weight",
    [MC_T_K] = L "self_attn.k_proj.weight",
    [MC_T_V] = L "self_attn.v_proj.weight",
    [MC_T_Q_NORM] = L "self_attn.q_norm.weight",
    [MC_T_K_NORM] = L "self_attn.k_norm.weight",
    [MC_T_O] = L "self_attn.o_proj.weight",
    [MC_T_DENSE_GATE] = L "mlp.gate_proj.weight",
    [MC_T_DENSE_UP] = L "mlp.up_proj.weight",
    [MC_T_DENSE_DOWN] = L "mlp.down_proj.weight",
    [MC_T_ROUTER] = L "mlp.gate.weight",
    [MC_T_ROUTER_BIAS] = L "mlp.gate.e_score_correction_bias",
    [MC_T_SHARED_GATE] = L "mlp.shared_experts.gate_proj.weight",
    [MC_T_SHARED_UP] = L "mlp.shared_experts.up_proj.weight",
    [MC_T_SHARED_DOWN] = L "mlp.shared_experts.down_proj.weight",
    [MC_T_EXPERTS_GATE_UP] = L "mlp.experts.gate_up_proj",
    [MC_T_EXPERTS_DOWN] = L "mlp.experts.down_proj",
    [MC_T_IDX_WQ_B] = L "self_attn.indexer.wq_b.weight",
    [MC_T_IDX_WK] = L "self_attn.indexer.wk.weight",
    [MC_T_IDX_K_NORM] = L "self_attn.indexer.k_norm.weight",
    [MC_T_IDX_K_NORM_BIAS] = L "self_attn.indexer.k_norm.bias",
    [MC_T_IDX_WEIGHTS] = L "self_attn.indexer.weights_proj.weight",
    [MC_T_EXPERT_GATE] = L "mlp.experts.%d.gate_proj.weight",
    [MC_T_EXPERT_UP] = L "mlp.experts.%d.up_proj.weight",
    [MC_T_EXPERT_DOWN] = L "mlp.experts.%d.down_proj.weight",
};

/* Llama 4 (llama4_text; the multimodal checkpoint adds "language_model."). */
static const char *const llama4_names[MC_T_ROLE_COUNT] = {
    [MC_T_EMBED] = "model.embed_tokens.weight",
    [MC_T_LM_HEAD] = "lm_head.weight",
    [MC_T_FINAL_NORM] = "model.norm.weight",
    [MC_T_ATTN_NORM] = L "input_layernorm.weight",
    [MC_T_FFN_NORM] = L "post_attention_layernorm.weight",
    [MC_T_Q] = L "self_attn.q_proj.weight",
    [MC_T_K] = L "self_attn.k_proj.weight",
    [MC_T_V] = L "self_attn.v_proj.weight",
    [MC_T_O] = L "self_attn.o_proj.weight",
    [MC_T_DENSE_GATE] = L "feed_forward.gate_proj.weight",
    [MC_T_DENSE_UP] = L "feed_forward.up_proj.weight",
    [MC_T_DENSE_DOWN] = L "feed_forward.down_proj.weight",
    [MC_T_ROUTER] = L "feed_forward.router.weight",
    [MC_T_SHARED_GATE] = L "feed_forward.shared_expert.gate_proj.weight",
    [MC_T_SHARED_UP] = L "feed_forward.shared_expert.up_proj.weight",
    [MC_T_SHARED_DOWN] = L "feed_forward.shared_expert.down_proj.weight",
    [MC_T_EXPERTS_GATE_UP] = L "feed_forward.experts.gate_up_proj",
    [MC_T_EXPERTS_DOWN] = L "feed_forward.experts.down_proj",
};

#define ML "layers.%d."
/* Mistral native (consolidated-*.safetensors): w1 = gate, w3 = up, w2 = down. */
static const char *const mistral_names[MC_T_ROLE_COUNT] = {
    [MC_T_EMBED] = "tok_embeddings.weight",
    [MC_T_LM_HEAD] = "output.weight",
    [MC_T_FINAL_NORM] = "norm.weight",
    [MC_T_ATTN_NORM] = ML "attention_norm.weight",
    [MC_T_FFN_NORM] = ML "ffn_norm.weight",
    [MC_T_Q_A] = ML "attention.wq_a.weight",
    [MC_T_Q_A_NORM] = ML "attention.q_a_norm.weight",
    [MC_T_Q_B] = ML "attention.wq_b.weight",
    [MC_T_Q] = ML "attention.wq.weight",
    [MC_T_KV_A] = ML "attention.wkv_a_with_mqa.weight",
    [MC_T_KV_A_NORM] = ML "attention.kv_a_norm.weight",
    [MC_T_KV_B] = ML "attention.wkv_b.weight",
    [MC_T_O] = ML "attention.wo.weight",
    [MC_T_DENSE_GATE] = ML "feed_forward.w1.weight",
    [MC_T_DENSE_UP] = ML "feed_forward.w3.weight",
    [MC_T_DENSE_DOWN] = ML "feed_forward.w2.weight",
    [MC_T_ROUTER] = ML "gate.weight",
    [MC_T_SHARED_GATE] = ML "shared_experts.w1.weight",
    [MC_T_SHARED_UP] = ML "shared_experts.w3.weight",
    [MC_T_SHARED_DOWN] = ML "shared_experts.w2.weight",
    [MC_T_EXPERT_GATE] = ML "experts.%d.w1.weight",
    [MC_T_EXPERT_UP] = ML "experts.%d.w3.weight",
    [MC_T_EXPERT_DOWN] = ML "experts.%d.w2.weight",
};

static const char *const role_names[MC_T_ROLE_COUNT] = {
    [MC_T_EMBED] = "embedding", [MC_T_LM_HEAD] = "lm_head", [MC_T_FINAL_NORM] = "final_norm",
    [MC_T_ATTN_NORM] = "attn_norm", [MC_T_FFN_NORM] = "ffn_norm", [MC_T_Q_A] = "q_a",
    [MC_T_Q_A_NORM] = "q_a_norm", [MC_T_Q_B] = "q_b", [MC_T_Q] = "q", [MC_T_KV_A] = "kv_a",
    [MC_T_KV_A_NORM] = "kv_a_norm", [MC_T_KV_B] = "kv_b", [MC_T_K] = "k", [MC_T_V] = "v",
    [MC_T_Q_NORM] = "q_norm", [MC_T_K_NORM] = "k_norm", [MC_T_O] = "o",
    [MC_T_DENSE_GATE] = "dense_gate", [MC_T_DENSE_UP] = "dense_up",
    [MC_T_DENSE_DOWN] = "dense_down", [MC_T_ROUTER] = "router", [MC_T_ROUTER_BIAS] = "router_bias",
    [MC_T_SHARED_GATE] = "shared_gate", [MC_T_SHARED_UP] = "shared_up",
    [MC_T_SHARED_DOWN] = "shared_down", [MC_T_EXPERTS_GATE_UP] = "experts_gate_up",
    [MC_T_EXPERTS_DOWN] = "experts_down", [MC_T_IDX_WQ_B] = "indexer_wq_b",
    [MC_T_IDX_WK] = "indexer_wk", [MC_T_IDX_K_NORM] = "indexer_k_norm",
    [MC_T_IDX_K_NORM_BIAS] = "indexer_k_norm_bias", [MC_T_IDX_WEIGHTS] = "indexer_weights",
    [MC_T_EXPERT_GATE] = "expert_gate",
    [MC_T_EXPERT_UP] = "expert_up", [MC_T_EXPERT_DOWN] = "expert_down",
};

const char *mc_tensor_role_str(mc_tensor_role role)
{
    return (unsigned)role < MC_T_ROLE_COUNT ? role_names[role] : "?";
}

static const char *const *naming_table(mc_naming n)
{
    switch (n) {
    case MC_NAMES_HF:
        return hf_names;
    case MC_NAMES_LLAMA4:
        return llama4_names;
    case MC_NAMES_MISTRAL:
        return mistral_names;
    default:
        return NULL;
    }
}

int mc_tensor_name(const mc_model_desc *d, mc_tensor_role role, int layer, int expert, char *buf,
                   size_t len)
{
    const char *const *t = naming_table(d->naming);
    if (!t || (unsigned)role >= MC_T_ROLE_COUNT || !t[role])
        return -1;
    int p = snprintf(buf, len, "%s", d->tensor_prefix);
    if (p < 0 || (size_t)p >= len)
        return -1;
    int n;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    if (role >= MC_T_EXPERT_GATE)
        n = snprintf(buf + p, len - (size_t)p, t[role], layer, expert);
    else if (role >= MC_T_ATTN_NORM)
        n = snprintf(buf + p, len - (size_t)p, t[role], layer);
    else
        n = snprintf(buf + p, len - (size_t)p, "%s", t[role]);
#pragma GCC diagnostic pop
    return n < 0 || (size_t)n >= len - (size_t)p ? -1 : 0;
}
