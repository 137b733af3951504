/* model_tensors.c - name tables. Patterns take the layer then the expert. */
#include "model_tensors.h"

#include "tensors_deepseek_v4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    [MC_T_V4_HC] = "hyper_connection", [MC_T_V4_WKV] = "wkv", [MC_T_V4_KV_NORM] = "kv_norm",
    [MC_T_V4_WO_A] = "wo_a", [MC_T_V4_WO_B] = "wo_b", [MC_T_V4_SINK] = "attn_sink",
    [MC_T_V4_COMP] = "compressor", [MC_T_V4_IDX_COMP] = "indexer_compressor",
    [MC_T_V4_TID2EID] = "tid2eid", [MC_T_EXPERT_GATE] = "expert_gate",
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

mc_tensor_spec *mc_tensor_spec_push(mc_tensor_spec **v, size_t n, size_t *cap)
{
    if (n == *cap) {
        size_t nc = *cap ? 2 * *cap : 256;
        mc_tensor_spec *nv = realloc(*v, nc * sizeof *nv);
        if (!nv)
            return NULL;
        *v = nv;
        *cap = nc;
    }
    memset(&(*v)[n], 0, sizeof **v);
    return &(*v)[n];
}

typedef struct {
    mc_tensor_spec *v;
    size_t n, cap;
    const mc_model_desc *d;
    int bad;
} spec_list;

static void add(spec_list *s, mc_tensor_role role, int layer, int expert, bool linear, int ndim,
                int64_t a, int64_t b, int64_t c)
{
    if (s->bad)
        return;
    mc_tensor_spec *t = mc_tensor_spec_push(&s->v, s->n, &s->cap);
    if (!t) {
        s->bad = 1;
        return;
    }
    if (mc_tensor_name(s->d, role, layer < 0 ? 0 : layer, expert < 0 ? 0 : expert, t->name,
                       sizeof t->name) != 0) {
        s->bad = 2;
        return;
    }
    t->role = role;
    t->layer = layer;
    t->expert = expert;
    t->linear = linear;
    t->ndim = ndim;
    t->shape[0] = a;
    t->shape[1] = b;
    t->shape[2] = c;
    s->n++;
}

#define MAT(role, l, e, r, c) add(&s, role, l, e, true, 2, r, c, 0)
#define VEC(role, l, n) add(&s, role, l, -1, false, 1, n, 0, 0)

mc_status mc_model_tensor_specs(const mc_model_desc *d, mc_tensor_spec **out, size_t *n,
                                mc_err *err)
{
    *out = NULL;
    *n = 0;
    if (d->family == MC_FAM_DEEPSEEK_V4)
        return mc_v4_tensor_specs(d, out, n, err);
    spec_list s = {.d = d};
    int64_t H = d->hidden, V = d->vocab, nh = d->n_heads;
    add(&s, MC_T_EMBED, -1, -1, false, 2, V, H, 0);
    if (!d->tie_embeddings)
        add(&s, MC_T_LM_HEAD, -1, -1, false, 2, V, H, 0);
    VEC(MC_T_FINAL_NORM, -1, H);
    for (int l = 0; l < d->n_layers; l++) {
        VEC(MC_T_ATTN_NORM, l, H);
        VEC(MC_T_FFN_NORM, l, H);
        if (d->attn == MC_ATTN_MLA) {
            int64_t qk = d->qk_nope_dim + d->qk_rope_dim;
            if (d->q_lora_rank > 0) {
                MAT(MC_T_Q_A, l, -1, d->q_lora_rank, H);
                VEC(MC_T_Q_A_NORM, l, d->q_lora_rank);
                MAT(MC_T_Q_B, l, -1, nh * qk, d->q_lora_rank);
            } else {
                MAT(MC_T_Q, l, -1, nh * qk, H);
            }
            MAT(MC_T_KV_A, l, -1, d->kv_lora_rank + d->qk_rope_dim, H);
            VEC(MC_T_KV_A_NORM, l, d->kv_lora_rank);
            MAT(MC_T_KV_B, l, -1, nh * (d->qk_nope_dim + d->v_head_dim), d->kv_lora_rank);
            MAT(MC_T_O, l, -1, H, nh * d->v_head_dim);
            if (d->index_topk > 0) {
                MAT(MC_T_IDX_WQ_B, l, -1, (int64_t)d->index_n_heads * d->index_head_dim,
                    d->q_lora_rank);
                MAT(MC_T_IDX_WK, l, -1, d->index_head_dim, H);
                VEC(MC_T_IDX_K_NORM, l, d->index_head_dim);
                VEC(MC_T_IDX_K_NORM_BIAS, l, d->index_head_dim);
                add(&s, MC_T_IDX_WEIGHTS, l, -1, false, 2, d->index_n_heads, H, 0);
            }
        } else {
            int64_t hd = d->head_dim;
            MAT(MC_T_Q, l, -1, nh * hd, H);
            MAT(MC_T_K, l, -1, d->n_kv_heads * hd, H);
            MAT(MC_T_V, l, -1, d->n_kv_heads * hd, H);
            MAT(MC_T_O, l, -1, H, nh * hd);
            if (d->qk_norm) {
                VEC(MC_T_Q_NORM, l, hd);
                VEC(MC_T_K_NORM, l, hd);
            }
        }
        if (!d->layer_moe[l]) {
            MAT(MC_T_DENSE_GATE, l, -1, d->dense_inter, H);
            MAT(MC_T_DENSE_UP, l, -1, d->dense_inter, H);
            MAT(MC_T_DENSE_DOWN, l, -1, H, d->dense_inter);
            continue;
        }
        add(&s, MC_T_ROUTER, l, -1, false, 2, d->n_experts, H, 0);
        if (d->has_score_bias)
            VEC(MC_T_ROUTER_BIAS, l, d->n_experts);
        if (d->n_shared_experts > 0) {
            MAT(MC_T_SHARED_GATE, l, -1, d->shared_inter, H);
            MAT(MC_T_SHARED_UP, l, -1, d->shared_inter, H);
            MAT(MC_T_SHARED_DOWN, l, -1, H, d->shared_inter);
        }
        int64_t E = d->n_experts, I = d->moe_inter;
        if (d->expert_layout == MC_EXPERTS_FUSED_IO) {
            add(&s, MC_T_EXPERTS_GATE_UP, l, -1, true, 3, E, H, 2 * I);
            add(&s, MC_T_EXPERTS_DOWN, l, -1, true, 3, E, I, H);
        } else if (d->expert_layout == MC_EXPERTS_FUSED_OI) {
            add(&s, MC_T_EXPERTS_GATE_UP, l, -1, true, 3, E, 2 * I, H);
            add(&s, MC_T_EXPERTS_DOWN, l, -1, true, 3, E, H, I);
        } else {
            for (int e = 0; e < E; e++) {
                MAT(MC_T_EXPERT_GATE, l, e, I, H);
                MAT(MC_T_EXPERT_UP, l, e, I, H);
                MAT(MC_T_EXPERT_DOWN, l, e, H, I);
            }
        }
    }
    if (s.bad) {
        free(s.v);
        return s.bad == 1 ? mc_err_set(err, MC_ERR_NOMEM, "out of memory")
                          : mc_err_set(err, MC_ERR_INTERNAL, "tensor name too long or missing");
    }
    *out = s.v;
    *n = s.n;
    return MC_OK;
}
