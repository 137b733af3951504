/* config_mistral.c - Mistral's native params.json (as Mistral Large 3 is
 * published, with consolidated-*.safetensors) -> mc_model_desc.
 *
 * Keys: dim, n_layers, n_heads, n_kv_heads, hidden_dim, norm_eps, vocab_size,
 * rope_theta, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim,
 * v_head_dim, max_position_embeddings | max_seq_len, tied_embeddings,
 * yarn {factor, original_max_position_embeddings, beta_fast | beta,
 *       beta_slow | alpha, mscale, mscale_all_dim, apply_scale},
 * llama_4_scaling {original_max_position_embeddings, beta},
 * moe {num_experts, num_experts_per_tok, num_shared_experts, expert_hidden_dim,
 *      first_k_dense_replace, routed_scale, num_expert_groups,
 *      num_expert_groups_per_tok}.
 * Routing is Mistral 4's: softmax scores, group-limited top-k, renormalized.
 * YaRN: mscale and mscale_all_dim default to 1 (the softmax scale then
 * carries YaRN's mscale^2 as in Mistral 4's Hugging Face config);
 * "apply_scale": false drops that correction.
 */
#include "config_internal.h"

#include <math.h>
#include <string.h>

static void parse_params(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    snprintf(m->model_type, sizeof m->model_type, "mistral4");
    m->family = MC_FAM_MISTRAL4;
    m->naming = MC_NAMES_MISTRAL;
    m->attn = MC_ATTN_MLA;
    for (int l = 0; l < MC_MAX_LAYERS; l++)
        m->layer_rope[l] = true;
    m->hidden = CFG_INT(c, r, "dim", 0, true, 1, 1 << 20);
    m->n_layers = CFG_INT(c, r, "n_layers", 0, true, 1, MC_MAX_LAYERS);
    m->n_heads = CFG_INT(c, r, "n_heads", 0, true, 1, 1 << 12);
    m->n_kv_heads = CFG_INT(c, r, "n_kv_heads", m->n_heads, false, 1, 1 << 12);
    m->dense_inter = CFG_INT(c, r, "hidden_dim", 0, true, 1, 1 << 20);
    double eps = mc_cfg_num(c, r, "norm_eps", 1e-5, false);
    m->norm_eps = (float)eps;
    mc_cfg_need(c, eps < 1 && m->norm_eps > 0, "", "norm_eps", eps, "in (0, 1)");
    m->vocab = CFG_INT(c, r, "vocab_size", 0, true, 1, 1 << 24);
    int maxpos = CFG_INT(c, r, "max_seq_len", 4096, false, 1, 1 << 30);
    m->max_pos = CFG_INT(c, r, "max_position_embeddings", maxpos, false, 1, 1 << 30);
    m->tie_embeddings = mc_cfg_bool(c, r, "tied_embeddings", false);
    m->bos_id = 1;
    m->eos_id = 2;
    m->q_lora_rank = CFG_INT(c, r, "q_lora_rank", 0, false, 0, 1 << 16);
    m->kv_lora_rank = CFG_INT(c, r, "kv_lora_rank", 0, true, 1, 1 << 16);
    m->qk_nope_dim = CFG_INT(c, r, "qk_nope_head_dim", 0, true, 0, 1 << 12);
    m->qk_rope_dim = CFG_INT(c, r, "qk_rope_head_dim", 0, true, 2, 1 << 12);
    m->v_head_dim = CFG_INT(c, r, "v_head_dim", 0, true, 1, 1 << 12);
    m->head_dim = m->qk_nope_dim + m->qk_rope_dim;
    mc_cfg_need(c, m->qk_rope_dim % 2 == 0, "", "qk_rope_head_dim", m->qk_rope_dim, "even");

    mc_rope_desc *rp = &m->rope;
    rp->style = MC_ROPE_INTERLEAVED;
    rp->dim = m->qk_rope_dim;
    rp->theta = mc_cfg_num(c, r, "rope_theta", 10000.0, false);
    mc_cfg_need(c, rp->theta > 1, "", "rope_theta", rp->theta, "greater than 1");
    rp->attention_factor = 1.0;
    m->attn_scale = (float)(1.0 / sqrt((double)m->head_dim));
    json_t *y = mc_cfg_get(c, r, "yarn");
    if (json_is_object(y)) {
        rp->scaling = MC_ROPE_SCALE_YARN;
        rp->factor = mc_cfg_num(c, y, "factor", 1.0, true);
        rp->orig_max_pos = mc_cfg_num(c, y, "original_max_position_embeddings", 0, true);
        rp->beta_fast = mc_cfg_num(c, y, "beta_fast", mc_cfg_num(c, y, "beta", 32.0, false), false);
        rp->beta_slow = mc_cfg_num(c, y, "beta_slow", mc_cfg_num(c, y, "alpha", 1.0, false), false);
        rp->mscale = mc_cfg_num(c, y, "mscale", 1.0, false);
        rp->mscale_all_dim = mc_cfg_num(c, y, "mscale_all_dim", 1.0, false);
        if (!mc_cfg_bool(c, y, "apply_scale", true))
            rp->mscale_all_dim = 0;
        if (rp->mscale != 0 && rp->mscale_all_dim != 0)
            rp->attention_factor = mc_yarn_get_mscale(rp->factor, rp->mscale) /
                                   mc_yarn_get_mscale(rp->factor, rp->mscale_all_dim);
        else if (rp->mscale_all_dim == 0)
            rp->attention_factor = 1.0;
        if (rp->mscale_all_dim != 0) {
            double ms = mc_yarn_get_mscale(rp->factor, rp->mscale_all_dim);
            m->attn_scale = (float)(m->attn_scale * ms * ms);
        }
        mc_cfg_check_rope(c, rp, "yarn.");
    } else if (y && !json_is_null(y) && c->st == MC_OK) {
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: 'yarn' must be an object", c->path);
    }
    json_t *l4 = mc_cfg_get(c, r, "llama_4_scaling");
    if (json_is_object(l4)) {
        m->llama4_beta = mc_cfg_num(c, l4, "beta", 0.0, true);
        mc_cfg_need(c, m->llama4_beta >= 0, "llama_4_scaling.", "beta", m->llama4_beta,
                    "zero or positive");
        m->llama4_orig_max = mc_cfg_num(c, l4, "original_max_position_embeddings", 0.0, true);
        mc_cfg_need(c, m->llama4_orig_max > 0, "llama_4_scaling.",
                    "original_max_position_embeddings", m->llama4_orig_max, "positive");
    }

    json_t *moe = mc_cfg_get(c, r, "moe");
    m->n_group = m->topk_group = 1;
    m->routed_scale = 1.0f;
    m->score_func = MC_SCORE_SOFTMAX;
    m->norm_topk_prob = true;
    m->expert_layout = MC_EXPERTS_SEPARATE;
    if (json_is_object(moe)) {
        m->n_experts = CFG_INT(c, moe, "num_experts", 0, true, 1, 4096);
        m->n_experts_per_tok = CFG_INT(c, moe, "num_experts_per_tok", 0, true, 1, 4096);
        m->n_shared_experts = CFG_INT(c, moe, "num_shared_experts", 0, false, 0, 1 << 10);
        m->moe_inter = CFG_INT(c, moe, "expert_hidden_dim", 0, true, 1, 1 << 20);
        m->shared_inter = m->moe_inter * m->n_shared_experts;
        m->routed_scale = (float)mc_cfg_num(c, moe, "routed_scale", 1.0, false);
        mc_cfg_need(c, isfinite(m->routed_scale) && m->routed_scale > 0, "moe.", "routed_scale",
                    m->routed_scale, "positive");
        m->n_group = CFG_INT(c, moe, "num_expert_groups", 1, false, 1, 4096);
        m->topk_group = CFG_INT(c, moe, "num_expert_groups_per_tok", 1, false, 1, 4096);
        if (m->n_experts_per_tok > m->n_experts)
            mc_cfg_fail(c, MC_ERR_CONFIG,
                        "moe.num_experts_per_tok (%d) exceeds moe.num_experts (%d)",
                        m->n_experts_per_tok, m->n_experts);
        if (m->n_experts % m->n_group)
            mc_cfg_fail(c, MC_ERR_CONFIG,
                        "moe.num_expert_groups (%d) does not divide moe.num_experts (%d)",
                        m->n_group, m->n_experts);
        if (m->topk_group > m->n_group)
            mc_cfg_fail(c, MC_ERR_CONFIG,
                        "moe.num_expert_groups_per_tok (%d) exceeds moe.num_expert_groups (%d)",
                        m->topk_group, m->n_group);
        int first_dense = CFG_INT(c, moe, "first_k_dense_replace", 0, false, 0, MC_MAX_LAYERS);
        for (int l = 0; l < m->n_layers; l++)
            m->layer_moe[l] = l >= first_dense;
    } else if (moe && !json_is_null(moe) && c->st == MC_OK) {
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: 'moe' must be an object", c->path);
    }
    if (mc_cfg_get(c, r, "quantization") && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: quantized Mistral native checkpoints are not supported yet", c->path);
}

mc_status mc_model_desc_parse_mistral(const char *json_text, size_t len, const char *path,
                                      mc_model_desc *out, mc_err *err)
{
    memset(out, 0, sizeof *out);
    mc_cfg_ctx c;
    if (mc_cfg_open(json_text, len, path, &c, err) == MC_OK)
        parse_params(&c, out);
    if (c.st == MC_OK)
        c.st = mc_model_desc_check(out, path, err);
    json_decref(c.root);
    return c.st;
}
