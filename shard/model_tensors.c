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
    [MC_T_EXPERT_GATE] = L "mlp.experts.%d.gate_proj.weight",
    [MC_T_EXPERT_UP] = L "mlp.experts.%d.up_proj.weight",
    [MC_T_EXPERT_DOWN] = L "mlp.experts.%d.down_proj.weight",
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
    [MC_T_SHARED_DOWN] = "shared_down", [MC_T_EXPERT_GATE] = "expert_gate",
    [MC_T_EXPERT_UP] = "expert_up", [MC_T_EXPERT_DOWN] = "expert_down",
};

const char *mc_tensor_role_str(mc_tensor_role role)
{
    return (unsigned)role < MC_T_ROLE_COUNT ? role_names[role] : "?";
}

static const char *const *family_table(mc_family fam)
{
    switch (fam) {
    case MC_FAM_DEEPSEEK_V3:
    case MC_FAM_QWEN3_MOE:
        return hf_names;
    default:
        return NULL;
    }
}

int mc_tensor_name(mc_family fam, mc_tensor_role role, int layer, int expert, char *buf,
                   size_t len)
{
    const char *const *t = family_table(fam);
    if (!t || (unsigned)role >= MC_T_ROLE_COUNT || !t[role])
        return -1;
    int n;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    if (role >= MC_T_EXPERT_GATE)
        n = snprintf(buf, len, t[role], layer, expert);
    else if (role >= MC_T_ATTN_NORM)
        n = snprintf(buf, len, t[role], layer);
    else
        n = snprintf(buf, len, "%s", t[role]);
#pragma GCC diagnostic pop
    return n < 0 || (size_t)n >= len ? -1 : 0;
}
