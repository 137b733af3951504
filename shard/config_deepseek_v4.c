/* config_deepseek_v4.c - config.json of model_type deepseek_v4.
 *
 * Accepts both spellings transformers accepts: the current one
 * (layer_types, mlp_layer_types, compress_rates, rope_parameters nested as
 * {"main": ..., "compress": ...}) and the legacy one of the original
 * checkpoints (compress_ratios per layer, num_hash_layers, compress_rate_csa /
 * compress_rate_hca, qk_rope_head_dim, rope_scaling for the compress rotary).
 */
#include "config_internal.h"

#include <math.h>
#include <string.h>

/* Records the first error (printf-style, the path first). */
#define FAIL(c, s, fmt, ...)                                                                       \
    do {                                                                                           \
        if ((c)->st == MC_OK)                                                                      \
            (c)->st = mc_err_set((c)->err, s, "%s: " fmt, (c)->path, __VA_ARGS__);                 \
    } while (0)

/* Reads one rotary sub-object (or the flat legacy fields) into theta / yarn;
 * `where` names the object in messages ("rope_parameters.compress."). */
static void parse_rope_obj(mc_cfg_ctx *c, json_t *p, const char *label, const char *where,
                           double *theta, double *partial, mc_v4_desc *v, bool compress)
{
    if (!p)
        return;
    if (!json_is_object(p)) {
        FAIL(c, MC_ERR_CONFIG, "rope_parameters.%s must be an object", label);
        return;
    }
    if (mc_cfg_get(c, p, "rope_theta"))
        *theta = mc_cfg_num(c, p, "rope_theta", *theta, false);
    if (mc_cfg_get(c, p, "partial_rotary_factor"))
        *partial = mc_cfg_num(c, p, "partial_rotary_factor", *partial, false);
    const char *type = mc_cfg_str(c, p, "rope_type");
    if (!type)
        type = mc_cfg_str(c, p, "type");
    if (!type || !strcmp(type, "default"))
        return;
    if (!strcmp(type, "yarn") && compress) {
        v->compress_yarn = 1;
        v->compress_factor = mc_cfg_num(c, p, "factor", 1.0, true);
        v->compress_orig_max_pos = mc_cfg_num(c, p, "original_max_position_embeddings", 0, true);
        v->compress_beta_fast = mc_cfg_num(c, p, "beta_fast", 32.0, false);
        v->compress_beta_slow = mc_cfg_num(c, p, "beta_slow", 1.0, false);
        /* The V4 reference does not scale cos/sin by YaRN's mscale. */
        v->compress_attention_factor = mc_cfg_num(c, p, "attention_factor", 1.0, false);
        if (v->compress_attention_factor != 1.0)
            FAIL(c, MC_ERR_UNSUPPORTED, "%s rope: yarn attention_factor other than 1 is not supported",
                 label);
        if (mc_cfg_get(c, p, "truncate") && !mc_cfg_bool(c, p, "truncate", true))
            FAIL(c, MC_ERR_UNSUPPORTED, "%s rope: truncate=false is not supported", label);
        mc_rope_desc y = {.scaling = MC_ROPE_SCALE_YARN,
                          .factor = v->compress_factor,
                          .orig_max_pos = v->compress_orig_max_pos,
                          .beta_fast = v->compress_beta_fast,
                          .beta_slow = v->compress_beta_slow,
                          .attention_factor = 1.0};
        mc_cfg_check_rope(c, &y, where);
        return;
    }
    if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: deepseek_v4 %s rope_type '%.32s' is not supported (%s)", c->path,
                           label, type, compress ? "default, yarn" : "default");
}

static void parse_rope(mc_cfg_ctx *c, mc_model_desc *m, mc_v4_desc *v)
{
    json_t *r = c->root;
    double main_theta = mc_cfg_num(c, r, "rope_theta", 10000.0, false);
    double comp_theta = mc_cfg_num(c, r, "compress_rope_theta", 160000.0, false);
    double partial = -1;
    if (mc_cfg_get(c, r, "partial_rotary_factor"))
        partial = mc_cfg_num(c, r, "partial_rotary_factor", -1, false);
    else if (mc_cfg_get(c, r, "qk_rope_head_dim"))
        partial = (double)mc_cfg_int(c, r, "qk_rope_head_dim", 0, false) / m->head_dim;
    if (partial != -1)
        mc_cfg_need(c, partial > 0 && partial <= 1, "", "partial_rotary_factor", partial,
                    "in (0, 1]");
    double main_partial = partial, comp_partial = partial;
    v->compress_attention_factor = 1.0;
    json_t *rp = mc_cfg_get(c, r, "rope_parameters");
    json_t *rs = mc_cfg_get(c, r, "rope_scaling");
    json_t *mainp = json_is_object(rp) ? json_object_get(rp, "main") : NULL;
    json_t *compp = json_is_object(rp) ? json_object_get(rp, "compress") : NULL;
    if (rp && !json_is_null(rp) && !json_is_object(rp))
        FAIL(c, MC_ERR_CONFIG, "'%s' must be an object", "rope_parameters");
    if (mainp || compp) {
        parse_rope_obj(c, mainp, "main", "rope_parameters.main.", &main_theta, &main_partial, v,
                       false);
        parse_rope_obj(c, compp, "compress", "rope_parameters.compress.", &comp_theta,
                       &comp_partial, v, true);
    } else {
        /* Flat: the scaling (if any) applies to the compress rotary only. */
        json_t *p = json_is_object(rp) ? rp : json_is_object(rs) ? rs : NULL;
        if (p) {
            double ignored = comp_theta;
            parse_rope_obj(c, p, "compress", p == rp ? "rope_parameters." : "rope_scaling.",
                           &ignored, &comp_partial, v, true);
        }
    }
    mc_cfg_need(c, main_partial == -1 || (main_partial > 0 && main_partial <= 1),
                "rope_parameters.main.", "partial_rotary_factor", main_partial, "in (0, 1]");
    mc_cfg_need(c, comp_partial == -1 || (comp_partial > 0 && comp_partial <= 1),
                "rope_parameters.compress.", "partial_rotary_factor", comp_partial, "in (0, 1]");
    if (c->st != MC_OK)
        return;
    if (main_partial < 0)
        main_partial = 64.0 / 512.0; /* transformers' default qk_rope_head_dim / head_dim */
    if (comp_partial < 0)
        comp_partial = main_partial;
    int dim = (int)(m->head_dim * main_partial);
    if ((int)(m->head_dim * comp_partial) != dim && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: main and compress rotary dimensions differ (%d vs %d)", c->path,
                           dim, (int)(m->head_dim * comp_partial));
    mc_cfg_need(c, main_theta > 1, "", "rope_theta", main_theta, "greater than 1");
    mc_cfg_need(c, comp_theta > 1, "", "compress_rope_theta", comp_theta, "greater than 1");
    m->rope.style = MC_ROPE_INTERLEAVED;
    m->rope.scaling = MC_ROPE_SCALE_NONE;
    m->rope.theta = main_theta;
    m->rope.dim = dim;
    m->rope.attention_factor = 1.0;
    m->qk_rope_dim = dim;
    v->compress_theta = comp_theta;
}

/* layer_types (names) or compress_ratios (0 / 4 / 128, as transformers maps them). */
static void parse_layer_types(mc_cfg_ctx *c, mc_model_desc *m, mc_v4_desc *v)
{
    json_t *r = c->root;
    int n = m->n_layers;
    json_t *lt = mc_cfg_get(c, r, "layer_types");
    json_t *cr = mc_cfg_get(c, r, "compress_ratios");
    if (lt && !json_is_null(lt)) {
        if (!json_is_array(lt) || (int)json_array_size(lt) < n) {
            FAIL(c, MC_ERR_CONFIG, "'%s' must be an array with one entry per layer (%d)",
                 "layer_types", n);
            return;
        }
        for (int l = 0; l < n; l++) {
            const char *s = json_string_value(json_array_get(lt, (size_t)l));
            if (s && !strcmp(s, "sliding_attention"))
                v->layer_attn[l] = MC_V4_ATTN_SLIDING;
            else if (s && !strcmp(s, "compressed_sparse_attention"))
                v->layer_attn[l] = MC_V4_ATTN_CSA;
            else if (s && !strcmp(s, "heavily_compressed_attention"))
                v->layer_attn[l] = MC_V4_ATTN_HCA;
            else
                FAIL(c, MC_ERR_CONFIG,
                     "layer_types entry %d is not one of sliding_attention, "
                     "compressed_sparse_attention, heavily_compressed_attention",
                     l);
        }
    } else if (cr && !json_is_null(cr)) {
        if (!json_is_array(cr) || (int)json_array_size(cr) < n) {
            FAIL(c, MC_ERR_CONFIG, "'%s' must be an array with one entry per layer (%d)",
                 "compress_ratios", n);
            return;
        }
        for (int l = 0; l < n; l++) {
            json_t *e = json_array_get(cr, (size_t)l);
            long long x = json_is_integer(e) ? json_integer_value(e) : -1;
            if (x == 0)
                v->layer_attn[l] = MC_V4_ATTN_SLIDING;
            else if (x == 4)
                v->layer_attn[l] = MC_V4_ATTN_CSA;
            else if (x == 128)
                v->layer_attn[l] = MC_V4_ATTN_HCA;
            else
                FAIL(c, MC_ERR_CONFIG, "compress_ratios entry %d is not 0, 4 or 128", l);
        }
    } else {
        /* transformers' default: 2 HCA, then alternating HCA / CSA */
        for (int l = 0; l < n; l++)
            v->layer_attn[l] = l < 2 || (l - 2) % 2 == 0 ? MC_V4_ATTN_HCA : MC_V4_ATTN_CSA;
    }
}

static void parse_mlp_types(mc_cfg_ctx *c, mc_model_desc *m, mc_v4_desc *v)
{
    json_t *r = c->root;
    int n = m->n_layers;
    json_t *mt = mc_cfg_get(c, r, "mlp_layer_types");
    if (mt && !json_is_null(mt)) {
        if (!json_is_array(mt) || (int)json_array_size(mt) < n) {
            FAIL(c, MC_ERR_CONFIG, "'%s' must be an array with one entry per layer (%d)",
                 "mlp_layer_types", n);
            return;
        }
        for (int l = 0; l < n; l++) {
            const char *s = json_string_value(json_array_get(mt, (size_t)l));
            if (s && !strcmp(s, "hash_moe"))
                v->layer_hash[l] = true;
            else if (s && !strcmp(s, "moe"))
                v->layer_hash[l] = false;
            else
                FAIL(c, MC_ERR_CONFIG, "mlp_layer_types entry %d is not 'hash_moe' or 'moe'", l);
        }
    } else {
        int nh = CFG_INT(c, r, "num_hash_layers", 3, false, 0, MC_MAX_LAYERS);
        for (int l = 0; l < n; l++)
            v->layer_hash[l] = l < nh;
    }
}

void mc_cfg_parse_deepseek_v4(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    mc_v4_desc *v = &m->v4;
    mc_cfg_parse_common(c, m);
    if (c->st != MC_OK)
        return;
    if (mc_cfg_get(c, r, "quantization_config") && !json_is_null(mc_cfg_get(c, r, "quantization_config"))) {
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: quantized deepseek_v4 checkpoints (quantization_config: FP8 / FP4 "
                           "weights) are not supported; use a BF16/F32 checkpoint",
                           c->path);
        return;
    }
    m->attn = MC_ATTN_GQA;
    m->head_dim = CFG_INT(c, r, "head_dim", 0, true, 2, 1 << 12);
    if (m->n_kv_heads != 1 && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: deepseek_v4 needs num_key_value_heads = 1 (one shared K=V head), got %d",
                           c->path, m->n_kv_heads);
    m->q_lora_rank = CFG_INT(c, r, "q_lora_rank", 0, true, 1, 1 << 16);
    m->attn_scale = (float)(1.0 / sqrt((double)(m->head_dim > 0 ? m->head_dim : 1)));
    parse_rope(c, m, v);

    m->moe_inter = CFG_INT(c, r, "moe_intermediate_size", 0, true, 1, 1 << 20);
    m->n_experts = CFG_INT(c, r, "n_routed_experts", 0, true, 1, 4096);
    m->n_experts_per_tok = CFG_INT(c, r, "num_experts_per_tok", 0, true, 1, 4096);
    m->n_shared_experts = CFG_INT(c, r, "n_shared_experts", 1, false, 0, 1 << 10);
    if (m->n_shared_experts != 1 && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: deepseek_v4 has exactly one shared expert; n_shared_experts = %d is "
                           "not supported",
                           c->path, m->n_shared_experts);
    m->shared_inter = m->moe_inter;
    m->dense_inter = 0;
    m->norm_topk_prob = mc_cfg_bool(c, r, "norm_topk_prob", true);
    if (!m->norm_topk_prob && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: deepseek_v4 with norm_topk_prob=false is not supported (the "
                           "reference always normalizes the top-k weights)",
                           c->path);
    m->routed_scale = (float)mc_cfg_num(c, r, "routed_scaling_factor", 1.5, false);
    mc_cfg_need(c, isfinite(m->routed_scale) && m->routed_scale > 0, "", "routed_scaling_factor",
                m->routed_scale, "positive");
    m->has_score_bias = true;
    m->n_group = m->topk_group = 1;
    for (int l = 0; l < m->n_layers; l++)
        m->layer_moe[l] = true;
    const char *sf = mc_cfg_str(c, r, "scoring_func");
    if (!sf || !strcmp(sf, "sqrtsoftplus"))
        v->score = MC_V4_SCORE_SQRTSOFTPLUS;
    else if (!strcmp(sf, "sigmoid"))
        v->score = MC_V4_SCORE_SIGMOID;
    else if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: scoring_func '%.32s' is not supported by deepseek_v4 (sqrtsoftplus, sigmoid)",
                           c->path, sf);
    m->score_func = MC_SCORE_SIGMOID; /* generic field; V4 routing reads v4.score */
    if (mc_cfg_bool(c, r, "mlp_bias", false) && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED, "%s: mlp_bias=true is not supported", c->path);

    v->hc_mult = CFG_INT(c, r, "hc_mult", 4, false, 1, 64);
    v->hc_sinkhorn_iters = CFG_INT(c, r, "hc_sinkhorn_iters", 20, false, 1, 1000);
    v->hc_eps = (float)mc_cfg_num(c, r, "hc_eps", 1e-6, false);
    v->sliding_window = CFG_INT(c, r, "sliding_window", 128, false, 1, 1 << 20);
    v->o_groups = CFG_INT(c, r, "o_groups", 8, false, 1, 1 << 12);
    v->o_lora_rank = CFG_INT(c, r, "o_lora_rank", 1024, false, 1, 1 << 16);
    v->index_n_heads = CFG_INT(c, r, "index_n_heads", 64, false, 1, 1 << 12);
    v->index_head_dim = CFG_INT(c, r, "index_head_dim", 128, false, 2, 1 << 12);
    v->index_topk = CFG_INT(c, r, "index_topk", 512, false, 1, 1 << 24);
    v->swiglu_limit = (float)mc_cfg_num(c, r, "swiglu_limit", 10.0, false);
    v->csa_rate = 4;
    v->hca_rate = 128;
    json_t *rates = mc_cfg_get(c, r, "compress_rates");
    if (rates && !json_is_null(rates)) {
        if (!json_is_object(rates))
            FAIL(c, MC_ERR_CONFIG, "'%s' must be an object", "compress_rates");
        v->csa_rate = CFG_INT(c, rates, "compressed_sparse_attention", 4, false, 1, 1 << 16);
        v->hca_rate = CFG_INT(c, rates, "heavily_compressed_attention", 128, false, 1, 1 << 16);
    }
    if (mc_cfg_get(c, r, "compress_rate_csa"))
        v->csa_rate = CFG_INT(c, r, "compress_rate_csa", 4, false, 1, 1 << 16);
    if (mc_cfg_get(c, r, "compress_rate_hca"))
        v->hca_rate = CFG_INT(c, r, "compress_rate_hca", 128, false, 1, 1 << 16);
    if (c->st != MC_OK)
        return;
    parse_layer_types(c, m, v);
    parse_mlp_types(c, m, v);
    if (c->st != MC_OK)
        return;

    /* ranges the forward pass relies on */
    const char *p = c->path;
    if (!(v->hc_eps >= 0 && v->hc_eps < 1))
        c->st =
            mc_err_set(c->err, MC_ERR_CONFIG, "%s: hc_eps (%g) must be in [0, 1)", p, v->hc_eps);
    else if (!(v->swiglu_limit > 0) || !isfinite(v->swiglu_limit))
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: swiglu_limit (%g) must be positive", p,
                           v->swiglu_limit);
    else if (m->rope.dim <= 0 || m->rope.dim % 2 || m->rope.dim > m->head_dim)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                           "%s: rotary dimension %d must be even, positive and within head_dim %d", p,
                           m->rope.dim, m->head_dim);
    else if (m->rope.dim > v->index_head_dim)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                           "%s: rotary dimension %d exceeds index_head_dim %d", p, m->rope.dim,
                           v->index_head_dim);
    else if ((m->n_heads * m->head_dim) % v->o_groups || m->n_heads % v->o_groups)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                           "%s: num_attention_heads (%d) must be a multiple of o_groups (%d)", p,
                           m->n_heads, v->o_groups);
    else if (m->n_experts_per_tok > m->n_experts)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: num_experts_per_tok (%d) exceeds n_routed_experts (%d)",
                           p, m->n_experts_per_tok, m->n_experts);
    else if (!isfinite(m->routed_scale))
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: routed_scaling_factor must be finite", p);
}
