/* model_config.c - Hugging Face config.json -> mc_model_desc. */
#include "model_config.h"
#include "config_internal.h"
#include "fileio.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CONFIG_BYTES (16u * 1024u * 1024u)

/* Field readers: record the first error in ctx and return a default, so a
 * parse function reads like a list of fields and checks ctx->st once. */
json_t *mc_cfg_get(mc_cfg_ctx *c, json_t *obj, const char *key)
{
    return obj ? json_object_get(obj, key) : NULL;
}

long long mc_cfg_int(mc_cfg_ctx *c, json_t *obj, const char *key, long long dflt, bool required)
{
    json_t *v = mc_cfg_get(c, obj, key);
    if (!v || json_is_null(v)) {
        if (required && c->st == MC_OK)
            c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: missing required field '%s'", c->path, key);
        return dflt;
    }
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
        fabs(json_real_value(v)) < 1e15)
        return (long long)json_real_value(v);
    if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: field '%s' must be an integer", c->path, key);
    return dflt;
}

double mc_cfg_num(mc_cfg_ctx *c, json_t *obj, const char *key, double dflt, bool required)
{
    json_t *v = mc_cfg_get(c, obj, key);
    if (!v || json_is_null(v)) {
        if (required && c->st == MC_OK)
            c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: missing required field '%s'", c->path, key);
        return dflt;
    }
    if (json_is_number(v) && isfinite(json_number_value(v)))
        return json_number_value(v);
    if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: field '%s' must be a finite number", c->path,
                           key);
    return dflt;
}

bool mc_cfg_bool(mc_cfg_ctx *c, json_t *obj, const char *key, bool dflt)
{
    json_t *v = mc_cfg_get(c, obj, key);
    if (!v || json_is_null(v))
        return dflt;
    if (json_is_boolean(v))
        return json_is_true(v);
    if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: field '%s' must be true or false", c->path, key);
    return dflt;
}

const char *mc_cfg_str(mc_cfg_ctx *c, json_t *obj, const char *key)
{
    json_t *v = mc_cfg_get(c, obj, key);
    if (!v || json_is_null(v))
        return NULL;
    if (json_is_string(v))
        return json_string_value(v);
    if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: field '%s' must be a string", c->path, key);
    return NULL;
}

/* Range check helper: lo <= v <= hi. An out-of-range value is recorded and
 * replaced by the nearest bound, so the rest of the parse never divides by,
 * loops over or allocates from a value already refused. */
int mc_cfg_range(mc_cfg_ctx *c, const char *key, long long v, long long lo, long long hi)
{
    if (v >= lo && v <= hi)
        return (int)v;
    if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: field '%s' = %lld is outside [%lld, %lld]",
                           c->path, key, v, lo, hi);
    return (int)(v < lo ? lo : hi);
}

void mc_cfg_fail(mc_cfg_ctx *c, mc_status s, const char *fmt, ...)
{
    if (c->st != MC_OK)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->st = mc_err_set(c->err, s, "%s: %s", c->path, msg);
}

bool mc_cfg_need(mc_cfg_ctx *c, bool ok, const char *prefix, const char *key, double v,
                 const char *rule)
{
    if (!ok)
        mc_cfg_fail(c, MC_ERR_CONFIG, "%s%s (%g) must be %s", prefix, key, v, rule);
    return ok;
}

void mc_cfg_check_rope(mc_cfg_ctx *c, const mc_rope_desc *r, const char *pre)
{
    if (r->scaling == MC_ROPE_SCALE_NONE)
        return;
    mc_cfg_need(c, isfinite(r->factor) && r->factor >= 1, pre, "factor", r->factor,
                "at least 1");
    mc_cfg_need(c, isfinite(r->orig_max_pos) && r->orig_max_pos > 0, pre,
                "original_max_position_embeddings", r->orig_max_pos, "positive");
    if (r->scaling == MC_ROPE_SCALE_LLAMA3) {
        mc_cfg_need(c, r->low_freq_factor > 0, pre, "low_freq_factor", r->low_freq_factor,
                    "positive");
        if (r->high_freq_factor < r->low_freq_factor)
            mc_cfg_fail(c, MC_ERR_CONFIG,
                        "%shigh_freq_factor (%g) must be at least low_freq_factor (%g)", pre,
                        r->high_freq_factor, r->low_freq_factor);
        return;
    }
    mc_cfg_need(c, r->beta_fast > 0, pre, "beta_fast", r->beta_fast, "positive");
    mc_cfg_need(c, r->beta_slow > 0, pre, "beta_slow", r->beta_slow, "positive");
    if (r->beta_fast == r->beta_slow)
        mc_cfg_fail(c, MC_ERR_CONFIG, "%sbeta_fast (%g) must differ from beta_slow (%g)", pre,
                    r->beta_fast, r->beta_slow);
    else if (r->beta_fast < r->beta_slow)
        mc_cfg_fail(c, MC_ERR_CONFIG, "%sbeta_fast (%g) must be greater than beta_slow (%g)", pre,
                    r->beta_fast, r->beta_slow);
    mc_cfg_need(c, r->mscale >= 0, pre, "mscale", r->mscale, "zero or positive");
    mc_cfg_need(c, r->mscale_all_dim >= 0, pre, "mscale_all_dim", r->mscale_all_dim,
                "zero or positive");
    mc_cfg_need(c, isfinite(r->attention_factor) && r->attention_factor > 0, pre,
                "attention_factor", r->attention_factor, "positive");
}


/* ---- pieces shared by families ---- */

double mc_yarn_get_mscale(double scale, double mscale)
{
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* Reads rope_theta and rope scaling from either `rope_parameters`
 * (transformers >= 5) or `rope_theta` + `rope_scaling` (older configs). */
void mc_cfg_parse_rope(mc_cfg_ctx *c, mc_model_desc *m, int head_dim_for_partial)
{
    json_t *root = c->root;
    json_t *rp = mc_cfg_get(c, root, "rope_parameters");
    json_t *rs = mc_cfg_get(c, root, "rope_scaling");
    if (rp && !json_is_object(rp) && !json_is_null(rp) && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: 'rope_parameters' must be an object", c->path);
    if (rs && !json_is_object(rs) && !json_is_null(rs) && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: 'rope_scaling' must be an object", c->path);
    json_t *p = json_is_object(rp) ? rp : json_is_object(rs) ? rs : NULL;
    const char *pre = p == rp ? "rope_parameters." : "rope_scaling.";
    mc_rope_desc *r = &m->rope;
    r->theta = mc_cfg_num(c, root, "rope_theta", 10000.0, false);
    if (p && mc_cfg_get(c, p, "rope_theta"))
        r->theta = mc_cfg_num(c, p, "rope_theta", r->theta, false);
    double partial = mc_cfg_num(c, root, "partial_rotary_factor", 1.0, false);
    if (p && mc_cfg_get(c, p, "partial_rotary_factor"))
        partial = mc_cfg_num(c, p, "partial_rotary_factor", 1.0, false);
    if (mc_cfg_need(c, partial > 0 && partial <= 1, "", "partial_rotary_factor", partial,
                    "in (0, 1]") &&
        head_dim_for_partial > 0) {
        r->dim = (int)(head_dim_for_partial * partial);
        if (r->dim < 2 || r->dim % 2)
            mc_cfg_fail(c, MC_ERR_CONFIG,
                        "head_dim (%d) x partial_rotary_factor (%g) = %d rotary dimensions must "
                        "be even and at least 2",
                        head_dim_for_partial, partial, r->dim);
    }
    mc_cfg_need(c, r->theta > 1, "", "rope_theta", r->theta, "greater than 1");
    r->scaling = MC_ROPE_SCALE_NONE;
    r->attention_factor = 1.0;
    if (!p)
        return;
    const char *type = mc_cfg_str(c, p, "rope_type");
    if (!type)
        type = mc_cfg_str(c, p, "type");
    if (!type || !strcmp(type, "default"))
        return;
    r->factor = mc_cfg_num(c, p, "factor", 1.0, true);
    r->orig_max_pos = mc_cfg_num(c, p, "original_max_position_embeddings", m->max_pos, false);
    if (!strcmp(type, "yarn")) {
        r->scaling = MC_ROPE_SCALE_YARN;
        r->beta_fast = mc_cfg_num(c, p, "beta_fast", 32.0, false);
        r->beta_slow = mc_cfg_num(c, p, "beta_slow", 1.0, false);
        r->mscale = mc_cfg_num(c, p, "mscale", 0.0, false);
        r->mscale_all_dim = mc_cfg_num(c, p, "mscale_all_dim", 0.0, false);
        json_t *af = mc_cfg_get(c, p, "attention_factor");
        if (af && !json_is_null(af)) /* given: used as is (checked below) */
            r->attention_factor = mc_cfg_num(c, p, "attention_factor", 0.0, false);
        else if (r->mscale != 0 && r->mscale_all_dim != 0)
            r->attention_factor = mc_yarn_get_mscale(r->factor, r->mscale) /
                                  mc_yarn_get_mscale(r->factor, r->mscale_all_dim);
        else
            r->attention_factor = mc_yarn_get_mscale(r->factor, 1.0);
    } else if (!strcmp(type, "llama3")) {
        r->scaling = MC_ROPE_SCALE_LLAMA3;
        r->low_freq_factor = mc_cfg_num(c, p, "low_freq_factor", 1.0, true);
        r->high_freq_factor = mc_cfg_num(c, p, "high_freq_factor", 4.0, true);
    } else if (c->st == MC_OK) {
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: rope scaling type '%.32s' is not supported (default, yarn, llama3)",
                           c->path, type);
    }
    mc_cfg_check_rope(c, r, pre);
}

void mc_cfg_parse_common(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    m->vocab = CFG_INT(c, r, "vocab_size", 0, true, 1, 1 << 24);
    m->hidden = CFG_INT(c, r, "hidden_size", 0, true, 1, 1 << 20);
    m->n_layers = CFG_INT(c, r, "num_hidden_layers", 0, true, 1, MC_MAX_LAYERS);
    m->n_heads = CFG_INT(c, r, "num_attention_heads", 0, true, 1, 1 << 12);
    m->n_kv_heads = CFG_INT(c, r, "num_key_value_heads", m->n_heads, false, 1, 1 << 12);
    m->max_pos = CFG_INT(c, r, "max_position_embeddings", 4096, false, 1, 1 << 30);
    double eps = mc_cfg_num(c, r, "rms_norm_eps", 1e-6, false);
    m->norm_eps = (float)eps;
    mc_cfg_need(c, eps < 1 && m->norm_eps > 0, "", "rms_norm_eps", eps, "in (0, 1)");
    m->tie_embeddings = mc_cfg_bool(c, r, "tie_word_embeddings", false);
    m->bos_id = CFG_INT(c, r, "bos_token_id", -1, false, -1, 1 << 24);
    m->eos_id = -1;
    json_t *eos = mc_cfg_get(c, r, "eos_token_id");
    if (json_is_array(eos) && json_array_size(eos) > 0)
        eos = json_array_get(eos, 0);
    if (json_is_integer(eos))
        m->eos_id = (int)json_integer_value(eos);
    const char *act = mc_cfg_str(c, r, "hidden_act");
    if (act && strcmp(act, "silu") && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: hidden_act '%.32s' is not supported (silu)", c->path, act);
    if (mc_cfg_bool(c, r, "attention_bias", false) && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED, "%s: attention_bias=true is not supported",
                           c->path);
    m->n_group = m->topk_group = 1;
    m->routed_scale = 1.0f;
    for (int l = 0; l < MC_MAX_LAYERS; l++)
        m->layer_rope[l] = true;
}

void mc_cfg_parse_fp8(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *q = mc_cfg_get(c, c->root, "quantization_config");
    if (!q || json_is_null(q))
        return;
    const char *method = mc_cfg_str(c, q, "quant_method");
    json_t *bs = mc_cfg_get(c, q, "weight_block_size");
    if (!method || strcmp(method, "fp8") || !json_is_array(bs) || json_array_size(bs) != 2) {
        if (c->st == MC_OK)
            c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                               "%s: quantization_config is supported only as quant_method 'fp8' "
                               "with a two-element weight_block_size",
                               c->path);
        return;
    }
    const char *fmt = mc_cfg_str(c, q, "fmt");
    if (fmt && strcmp(fmt, "e4m3") && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED, "%s: fp8 fmt '%.16s' is not supported (e4m3)",
                           c->path, fmt);
    m->fp8_block = true;
    json_t *b0 = json_array_get(bs, 0), *b1 = json_array_get(bs, 1);
    if (!json_is_integer(b0) || !json_is_integer(b1) || json_integer_value(b0) <= 0 ||
        json_integer_value(b1) <= 0 || json_integer_value(b0) > 65536 ||
        json_integer_value(b1) > 65536) {
        if (c->st == MC_OK)
            c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                               "%s: weight_block_size must hold two positive integers", c->path);
        return;
    }
    m->fp8_block_rows = (int)json_integer_value(b0);
    m->fp8_block_cols = (int)json_integer_value(b1);
}

/* ---- families ---- */

/* MLA attention + DeepSeek-style MoE fields shared by DeepSeek-V3/V3.2 and
 * Mistral 4; the callers then set what differs. */
static void parse_mla_moe(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    mc_cfg_parse_common(c, m);
    m->attn = MC_ATTN_MLA;
    m->q_lora_rank = CFG_INT(c, r, "q_lora_rank", 0, false, 0, 1 << 16);
    m->kv_lora_rank = CFG_INT(c, r, "kv_lora_rank", 0, true, 1, 1 << 16);
    m->qk_nope_dim = CFG_INT(c, r, "qk_nope_head_dim", 0, true, 0, 1 << 12);
    m->qk_rope_dim = CFG_INT(c, r, "qk_rope_head_dim", 0, true, 2, 1 << 12);
    m->v_head_dim = CFG_INT(c, r, "v_head_dim", 0, true, 1, 1 << 12);
    m->head_dim = m->qk_nope_dim + m->qk_rope_dim;
    mc_cfg_need(c, m->qk_rope_dim % 2 == 0, "", "qk_rope_head_dim", m->qk_rope_dim, "even");
    m->rope.style = mc_cfg_bool(c, r, "rope_interleave", true) ? MC_ROPE_INTERLEAVED : MC_ROPE_HALF;
    mc_cfg_parse_rope(c, m, 0);
    m->rope.dim = m->qk_rope_dim;
    m->dense_inter = CFG_INT(c, r, "intermediate_size", 0, true, 1, 1 << 20);
    m->moe_inter = CFG_INT(c, r, "moe_intermediate_size", 0, true, 1, 1 << 20);
    m->n_experts = CFG_INT(c, r, "n_routed_experts", 0, false, 0, 4096);
    m->n_experts_per_tok = CFG_INT(c, r, "num_experts_per_tok", 0, m->n_experts > 0, 0, 4096);
    m->n_shared_experts = CFG_INT(c, r, "n_shared_experts", 0, false, 0, 1 << 10);
    m->shared_inter = m->moe_inter * m->n_shared_experts;
    m->norm_topk_prob = mc_cfg_bool(c, r, "norm_topk_prob", false);
    m->routed_scale = (float)mc_cfg_num(c, r, "routed_scaling_factor", 1.0, false);
    mc_cfg_need(c, isfinite(m->routed_scale) && m->routed_scale > 0, "", "routed_scaling_factor",
                m->routed_scale, "positive");
    m->n_group = CFG_INT(c, r, "n_group", 1, false, 1, 4096);
    m->topk_group = CFG_INT(c, r, "topk_group", 1, false, 1, 4096);
    int first_dense = CFG_INT(c, r, "first_k_dense_replace", 0, false, 0, MC_MAX_LAYERS);
    int freq = CFG_INT(c, r, "moe_layer_freq", 1, false, 1, MC_MAX_LAYERS);
    for (int l = 0; l < m->n_layers && l < MC_MAX_LAYERS; l++)
        m->layer_moe[l] = m->n_experts > 0 && l >= first_dense && l % freq == 0;
    /* num_nextn_predict_layers: MTP layers are not part of the text model's forward pass */
    CFG_INT(c, r, "num_nextn_predict_layers", 0, false, 0, 64);
    m->attn_scale = (float)(1.0 / sqrt((double)m->head_dim));
    if (m->rope.scaling == MC_ROPE_SCALE_YARN && m->rope.mscale_all_dim != 0) {
        double ms = mc_yarn_get_mscale(m->rope.factor, m->rope.mscale_all_dim);
        m->attn_scale = (float)(m->attn_scale * ms * ms);
    }
    mc_cfg_parse_fp8(c, m);
}

static void parse_deepseek_router(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    const char *sf = mc_cfg_str(c, r, "scoring_func");
    if (!sf || !strcmp(sf, "sigmoid"))
        m->score_func = MC_SCORE_SIGMOID;
    else if (!strcmp(sf, "softmax"))
        m->score_func = MC_SCORE_SOFTMAX;
    else if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: scoring_func '%.32s' is not supported (sigmoid, softmax)", c->path, sf);
    const char *tm = mc_cfg_str(c, r, "topk_method");
    if (!tm || !strcmp(tm, "noaux_tc"))
        m->has_score_bias = true;
    else if (!strcmp(tm, "greedy"))
        m->n_group = m->topk_group = 1;
    else if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: topk_method '%.32s' is not supported (noaux_tc, greedy)", c->path, tm);
}

static void parse_deepseek_v3(mc_cfg_ctx *c, mc_model_desc *m)
{
    parse_mla_moe(c, m);
    parse_deepseek_router(c, m);
}

/* Reads a list of per-layer strings (layer_types, mlp_layer_types); returns
 * the array or NULL if absent, recording an error if malformed. */
static json_t *layer_list(mc_cfg_ctx *c, json_t *obj, const char *key, int n_layers)
{
    json_t *a = mc_cfg_get(c, obj, key);
    if (!a || json_is_null(a))
        return NULL;
    if (!json_is_array(a) || (int)json_array_size(a) != n_layers) {
        if (c->st == MC_OK)
            c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                               "%s: '%s' must be an array of num_hidden_layers (%d) entries", c->path,
                               key, n_layers);
        return NULL;
    }
    return a;
}

static void parse_deepseek_v32(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    parse_mla_moe(c, m);
    parse_deepseek_router(c, m);
    m->rope.style = MC_ROPE_INTERLEAVED; /* V3.2 has no rope_interleave switch */
    if (m->q_lora_rank <= 0 && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                           "%s: deepseek_v32 needs q_lora_rank (the indexer reads the query latent)",
                           c->path);
    m->index_n_heads = CFG_INT(c, r, "index_n_heads", 64, false, 1, 1 << 12);
    m->index_head_dim = CFG_INT(c, r, "index_head_dim", 128, false, 2, 1 << 12);
    m->index_topk = CFG_INT(c, r, "index_topk", 2048, false, 1, 1 << 30);
    if (m->index_head_dim < m->qk_rope_dim && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                           "%s: index_head_dim (%d) is smaller than qk_rope_head_dim (%d)", c->path,
                           m->index_head_dim, m->qk_rope_dim);
    json_t *mlt = layer_list(c, r, "mlp_layer_types", m->n_layers);
    for (int l = 0; mlt && l < m->n_layers; l++) {
        const char *s = json_string_value(json_array_get(mlt, (size_t)l));
        if (s && !strcmp(s, "dense"))
            m->layer_moe[l] = false;
        else if (s && !strcmp(s, "sparse"))
            m->layer_moe[l] = m->n_experts > 0;
        else if (c->st == MC_OK)
            c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                               "%s: mlp_layer_types[%d] must be \"dense\" or \"sparse\"", c->path, l);
    }
    json_t *lt = layer_list(c, r, "layer_types", m->n_layers);
    for (int l = 0; lt && l < m->n_layers; l++) {
        const char *s = json_string_value(json_array_get(lt, (size_t)l));
        if ((!s || strcmp(s, "deepseek_sparse_attention")) && c->st == MC_OK)
            c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                               "%s: layer_types[%d] '%.40s' is not supported "
                               "(deepseek_sparse_attention)",
                               c->path, l, s ? s : "?");
    }
}

static void parse_mistral4(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    parse_mla_moe(c, m);
    m->score_func = MC_SCORE_SOFTMAX;
    m->has_score_bias = false;
    m->expert_layout = MC_EXPERTS_FUSED_OI;
    json_t *rp = mc_cfg_get(c, r, "rope_parameters");
    if (!json_is_object(rp))
        rp = mc_cfg_get(c, r, "rope_scaling");
    if (json_is_object(rp)) {
        m->llama4_beta = mc_cfg_num(c, rp, "llama_4_scaling_beta", 0.0, false);
        m->llama4_orig_max =
            mc_cfg_num(c, rp, "original_max_position_embeddings", m->rope.orig_max_pos, false);
        mc_cfg_need(c, m->llama4_beta >= 0, "rope_parameters.", "llama_4_scaling_beta",
                    m->llama4_beta, "zero or positive");
        if (m->llama4_beta != 0)
            mc_cfg_need(c, m->llama4_orig_max > 0, "llama_4_scaling_beta: ",
                        "original_max_position_embeddings", m->llama4_orig_max, "positive");
    }
}

/* Llama 4: the text model's config is the root (llama4_text) or its
 * text_config (llama4, the multimodal checkpoint with language_model.*). */
static void parse_llama4(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    if (!strcmp(m->model_type, "llama4")) {
        json_t *tc = mc_cfg_get(c, r, "text_config");
        if (!json_is_object(tc)) {
            if (c->st == MC_OK)
                c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                                   "%s: model_type llama4 needs a 'text_config' object", c->path);
            return;
        }
        c->root = r = tc;
        snprintf(m->tensor_prefix, sizeof m->tensor_prefix, "language_model.");
    }
    mc_cfg_parse_common(c, m);
    m->naming = MC_NAMES_LLAMA4;
    m->attn = MC_ATTN_GQA;
    int hd_default = m->n_heads > 0 ? m->hidden / m->n_heads : 0;
    m->head_dim = CFG_INT(c, r, "head_dim", hd_default, false, 2, 1 << 12);
    m->rope.style = MC_ROPE_INTERLEAVED; /* complex pairs */
    mc_cfg_parse_rope(c, m, m->head_dim);
    m->qk_l2norm = mc_cfg_bool(c, r, "use_qk_norm", false);
    m->attn_temp_tuning = mc_cfg_bool(c, r, "attn_temperature_tuning", false);
    m->attn_floor_scale = mc_cfg_num(c, r, "floor_scale", 8192.0, false);
    m->attn_temp_scale = mc_cfg_num(c, r, "attn_scale", 0.1, false);
    if (m->attn_temp_tuning) {
        mc_cfg_need(c, m->attn_floor_scale > 0, "", "floor_scale", m->attn_floor_scale, "positive");
        mc_cfg_need(c, m->attn_temp_scale >= 0, "", "attn_scale", m->attn_temp_scale,
                    "zero or positive");
    }
    json_t *chunk = mc_cfg_get(c, r, "attention_chunk_size"); /* absent or null: no chunking */
    if (chunk && !json_is_null(chunk))
        m->attn_chunk = CFG_INT(c, r, "attention_chunk_size", 0, false, 1, 1 << 30);
    m->moe_inter = CFG_INT(c, r, "intermediate_size", 0, true, 1, 1 << 20);
    m->dense_inter = CFG_INT(c, r, "intermediate_size_mlp", 0, true, 1, 1 << 20);
    m->n_experts = CFG_INT(c, r, "num_local_experts", 0, true, 1, 4096);
    m->n_experts_per_tok = CFG_INT(c, r, "num_experts_per_tok", 1, false, 1, 4096);
    m->n_shared_experts = 1;
    m->shared_inter = m->moe_inter;
    m->router = MC_ROUTER_LLAMA4;
    m->score_func = MC_SCORE_SIGMOID;
    m->expert_layout = MC_EXPERTS_FUSED_IO;
    int interval = CFG_INT(c, r, "no_rope_layer_interval", 4, false, 1, MC_MAX_LAYERS);
    json_t *nrl = mc_cfg_get(c, r, "no_rope_layers");
    if (json_is_array(nrl) && json_array_size(nrl) > 0) {
        if ((int)json_array_size(nrl) != m->n_layers && c->st == MC_OK)
            c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                               "%s: 'no_rope_layers' must have num_hidden_layers (%d) entries",
                               c->path, m->n_layers);
        for (int l = 0; l < m->n_layers && l < (int)json_array_size(nrl); l++) {
            json_t *e = json_array_get(nrl, (size_t)l);
            if (!json_is_integer(e) && !json_is_boolean(e) && c->st == MC_OK)
                c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: no_rope_layers[%d] must be 0 or 1",
                                   c->path, l);
            m->layer_rope[l] = json_is_integer(e) ? json_integer_value(e) != 0 : json_is_true(e);
        }
    } else {
        for (int l = 0; l < m->n_layers; l++)
            m->layer_rope[l] = (l + 1) % interval != 0;
    }
    json_t *ml = mc_cfg_get(c, r, "moe_layers");
    if (json_is_array(ml)) {
        for (size_t i = 0; i < json_array_size(ml); i++) {
            json_t *e = json_array_get(ml, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) >= m->n_layers) {
                if (c->st == MC_OK)
                    c->st = mc_err_set(c->err, MC_ERR_CONFIG,
                                       "%s: moe_layers[%zu] is not a layer index", c->path, i);
                break;
            }
            m->layer_moe[json_integer_value(e)] = true;
        }
    } else {
        int step = CFG_INT(c, r, "interleave_moe_layer_step", 1, false, 1, MC_MAX_LAYERS);
        for (int l = step - 1; l < m->n_layers; l += step)
            m->layer_moe[l] = true;
    }
    m->attn_scale = (float)(1.0 / sqrt((double)m->head_dim));
    if (mc_cfg_get(c, r, "quantization_config") && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: quantized Llama 4 checkpoints are not supported yet", c->path);
}

static void parse_qwen3_moe(mc_cfg_ctx *c, mc_model_desc *m)
{
    json_t *r = c->root;
    mc_cfg_parse_common(c, m);
    m->attn = MC_ATTN_GQA;
    m->qk_norm = true;
    int hd_default = m->n_heads > 0 ? m->hidden / m->n_heads : 0;
    m->head_dim = CFG_INT(c, r, "head_dim", hd_default, false, 2, 1 << 12);
    m->rope.style = MC_ROPE_HALF;
    mc_cfg_parse_rope(c, m, m->head_dim);
    m->dense_inter = CFG_INT(c, r, "intermediate_size", 0, true, 1, 1 << 20);
    m->moe_inter = CFG_INT(c, r, "moe_intermediate_size", 0, true, 1, 1 << 20);
    m->n_experts = CFG_INT(c, r, "num_experts", 0, true, 0, 4096);
    m->n_experts_per_tok = CFG_INT(c, r, "num_experts_per_tok", 0, m->n_experts > 0, 0, 4096);
    m->norm_topk_prob = mc_cfg_bool(c, r, "norm_topk_prob", false);
    m->score_func = MC_SCORE_SOFTMAX;
    if (mc_cfg_bool(c, r, "use_sliding_window", false) && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED, "%s: use_sliding_window=true is not supported",
                           c->path);
    int step = CFG_INT(c, r, "decoder_sparse_step", 1, false, 1, MC_MAX_LAYERS);
    json_t *only = mc_cfg_get(c, r, "mlp_only_layers");
    if (only && !json_is_array(only) && c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_CONFIG, "%s: 'mlp_only_layers' must be an array", c->path);
    for (int l = 0; l < m->n_layers && l < MC_MAX_LAYERS; l++) {
        bool dense_only = false;
        for (size_t i = 0; json_is_array(only) && i < json_array_size(only); i++) {
            json_t *e = json_array_get(only, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0) /* past the end: no effect */
                mc_cfg_fail(c, MC_ERR_CONFIG, "mlp_only_layers[%zu] is not a layer index", i);
            else if (json_integer_value(e) == l)
                dense_only = true;
        }
        m->layer_moe[l] = !dense_only && m->n_experts > 0 && (l + 1) % step == 0;
    }
    m->attn_scale = (float)(1.0 / sqrt((double)m->head_dim));
    mc_cfg_parse_fp8(c, m);
}

typedef struct {
    const char *model_type;
    mc_family family;
    void (*parse)(mc_cfg_ctx *, mc_model_desc *);
} family_entry;

static const family_entry families[] = {
    {"deepseek_v3", MC_FAM_DEEPSEEK_V3, parse_deepseek_v3},
    {"deepseek_v32", MC_FAM_DEEPSEEK_V32, parse_deepseek_v32},
    {"qwen3_moe", MC_FAM_QWEN3_MOE, parse_qwen3_moe},
    {"llama4_text", MC_FAM_LLAMA4, parse_llama4},
    {"llama4", MC_FAM_LLAMA4, parse_llama4},
    {"mistral4", MC_FAM_MISTRAL4, parse_mistral4},
    {"deepseek_v4", MC_FAM_DEEPSEEK_V4, mc_cfg_parse_deepseek_v4},
};

const char *mc_family_name(mc_family f)
{
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (families[i].family == f)
            return families[i].model_type;
    return "?";
}

const char *mc_supported_model_types(void)
{
    return "deepseek_v3, deepseek_v32, deepseek_v4, qwen3_moe, llama4, llama4_text, mistral4 "
           "(and Mistral params.json)";
}

/* Checks the description against itself once a family filled it. */
mc_status mc_model_desc_check(const mc_model_desc *m, const char *p, mc_err *e)
{
    mc_cfg_ctx cc = {.path = p, .err = e, .st = MC_OK}, *c = &cc;
    /* sizes every formula divides by (the readers refuse them first; this
     * guards descriptions filled any other way) */
    if (m->hidden < 1 || m->vocab < 1 || m->n_layers < 1 || m->n_layers > MC_MAX_LAYERS ||
        m->n_heads < 1 || m->n_kv_heads < 1 || m->head_dim < 1 || m->n_group < 1 ||
        m->topk_group < 1 || (m->n_experts > 0 && m->moe_inter < 1))
        c->st = mc_err_set(e, MC_ERR_CONFIG,
                           "%s: a size (hidden %d, vocab %d, layers %d, heads %d/%d, head_dim %d, "
                           "groups %d/%d, moe_intermediate_size %d) is out of range",
                           p, m->hidden, m->vocab, m->n_layers, m->n_heads, m->n_kv_heads,
                           m->head_dim, m->n_group, m->topk_group, m->moe_inter);
    else if (!(m->norm_eps > 0 && m->norm_eps < 1) || !(m->attn_scale > 0) ||
             !isfinite(m->attn_scale) || !(m->routed_scale > 0) || !isfinite(m->routed_scale) ||
             !(m->rope.theta > 1) || !isfinite(m->rope.theta))
        c->st = mc_err_set(e, MC_ERR_CONFIG,
                           "%s: rms_norm_eps (%g), softmax scale (%g), routed_scaling_factor (%g) "
                           "or rope_theta (%g) is out of range",
                           p, m->norm_eps, m->attn_scale, m->routed_scale, m->rope.theta);
    else if (m->attn == MC_ATTN_GQA && m->n_heads % m->n_kv_heads != 0)
        c->st = mc_err_set(e, MC_ERR_CONFIG,
                           "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                           p, m->n_heads, m->n_kv_heads);
    else if (m->rope.dim <= 0 || m->rope.dim % 2 || m->rope.dim > m->head_dim)
        c->st = mc_err_set(e, MC_ERR_CONFIG, "%s: rotary dimension %d must be even and within the head (%d)",
                           p, m->rope.dim, m->head_dim);
    else if (m->n_experts > 0 && (m->n_experts_per_tok < 1 || m->n_experts_per_tok > m->n_experts))
        c->st = mc_err_set(e, MC_ERR_CONFIG, "%s: num_experts_per_tok (%d) must be in [1, %d]", p,
                           m->n_experts_per_tok, m->n_experts);
    else if (m->n_experts > 0 && m->n_experts % m->n_group != 0)
        c->st = mc_err_set(e, MC_ERR_CONFIG, "%s: n_routed_experts (%d) is not a multiple of n_group (%d)",
                           p, m->n_experts, m->n_group);
    else if (m->topk_group > m->n_group)
        c->st = mc_err_set(e, MC_ERR_CONFIG, "%s: topk_group (%d) exceeds n_group (%d)", p,
                           m->topk_group, m->n_group);
    else if (m->n_experts > 0 && m->n_group > 1 &&
             m->n_experts_per_tok > m->topk_group * (m->n_experts / m->n_group))
        c->st = mc_err_set(e, MC_ERR_CONFIG,
                           "%s: num_experts_per_tok (%d) exceeds the experts in topk_group groups (%d)",
                           p, m->n_experts_per_tok, m->topk_group * (m->n_experts / m->n_group));
    else if (m->n_experts > 0 && m->n_group > 1 && m->n_experts / m->n_group < 2)
        c->st = mc_err_set(e, MC_ERR_CONFIG, "%s: group-limited routing needs at least 2 experts per group",
                           p);
    return c->st;
}

mc_status mc_cfg_open(const char *json_text, size_t len, const char *path, mc_cfg_ctx *c,
                      mc_err *err)
{
    json_error_t jerr;
    *c = (mc_cfg_ctx){.path = path, .err = err, .st = MC_OK};
    c->root = json_loadb(json_text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!c->root)
        return c->st = mc_err_set(err, MC_ERR_CONFIG, "%s: not valid JSON: %s (line %d)", path,
                                  jerr.text, jerr.line);
    if (!json_is_object(c->root))
        c->st = mc_err_set(err, MC_ERR_CONFIG, "%s: top level is not a JSON object", path);
    return c->st;
}

mc_status mc_model_desc_parse(const char *json_text, size_t len, const char *path,
                              mc_model_desc *out, mc_err *err)
{
    memset(out, 0, sizeof *out);
    mc_cfg_ctx c;
    mc_status opened = mc_cfg_open(json_text, len, path, &c, err);
    json_t *root = c.root; /* kept: Llama 4's parser moves c.root to text_config */
    if (opened != MC_OK)
        goto done;
    const char *mt = mc_cfg_str(&c, root, "model_type");
    if (!mt) {
        if (c.st == MC_OK)
            c.st = mc_err_set(err, MC_ERR_CONFIG, "%s: missing 'model_type'", path);
        goto done;
    }
    const family_entry *fe = NULL;
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (!strcmp(families[i].model_type, mt))
            fe = &families[i];
    if (!fe) {
        c.st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: model_type '%.64s' is not supported (supported: %s)", path, mt,
                          mc_supported_model_types());
        goto done;
    }
    snprintf(out->model_type, sizeof out->model_type, "%s", mt);
    out->family = fe->family;
    fe->parse(&c, out);
    if (c.st == MC_OK)
        c.st = mc_model_desc_check(out, path, err);
done:
    json_decref(root);
    return c.st;
}

mc_status mc_config_read(const char *path, char **text, size_t *len, mc_err *err)
{
    *text = NULL;
    *len = 0;
    /* a FIFO, device or directory is refused at once instead of blocking */
    return mc_read_regular(path, "config", MAX_CONFIG_BYTES, text, len, err);
}

int mc_config_is_mistral(const char *path, const char *text, size_t len)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!strcmp(base, "params.json"))
        return 1;
    json_t *probe = json_loadb(text, len, 0, NULL);
    int m = json_is_object(probe) && !json_object_get(probe, "model_type") &&
            json_object_get(probe, "dim");
    json_decref(probe);
    return m;
}

mc_status mc_model_desc_parse_any(const char *text, size_t len, const char *path,
                                  mc_model_desc *out, mc_err *err)
{
    return mc_config_is_mistral(path, text, len)
               ? mc_model_desc_parse_mistral(text, len, path, out, err)
               : mc_model_desc_parse(text, len, path, out, err);
}

mc_status mc_model_desc_load(const char *path, mc_model_desc *out, mc_err *err)
{
    char file[4200];
    struct stat sb;
    if (stat(path, &sb) != 0)
        return mc_err_set(err, MC_ERR_IO, "%s: no such file or directory", path);
    if (S_ISDIR(sb.st_mode)) {
        snprintf(file, sizeof file, "%s/config.json", path);
        if (stat(file, &sb) != 0)
            snprintf(file, sizeof file, "%s/params.json", path);
        if (stat(file, &sb) != 0)
            return mc_err_set(err, MC_ERR_IO, "%s: no config.json or params.json", path);
    } else {
        snprintf(file, sizeof file, "%s", path);
    }
    char *text;
    size_t len;
    mc_status st = mc_config_read(file, &text, &len, err);
    if (st != MC_OK)
        return st;
    st = mc_model_desc_parse_any(text, len, file, out, err);
    free(text);
    return st;
}

/* ---- RoPE frequencies ---- */

static double yarn_correction_dim(double n_rot, int dim, double base, double max_pos)
{
    return (dim * log(max_pos / (n_rot * 2.0 * M_PI))) / (2.0 * log(base));
}

void mc_rope_inv_freq(const mc_rope_desc *r, double *inv_freq)
{
    int half = r->dim / 2;
    for (int i = 0; i < half; i++)
        inv_freq[i] = 1.0 / pow(r->theta, (2.0 * i) / r->dim);
    if (r->scaling == MC_ROPE_SCALE_YARN) {
        double low = floor(yarn_correction_dim(r->beta_fast, r->dim, r->theta, r->orig_max_pos));
        double high = ceil(yarn_correction_dim(r->beta_slow, r->dim, r->theta, r->orig_max_pos));
        if (low < 0)
            low = 0;
        if (high > r->dim - 1)
            high = r->dim - 1;
        if (low == high)
            high += 0.001;
        for (int i = 0; i < half; i++) {
            double ramp = (i - low) / (high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double extrap = 1.0 - ramp; /* weight of the unscaled frequency */
            double interp = inv_freq[i] / r->factor;
            inv_freq[i] = interp * (1.0 - extrap) + inv_freq[i] * extrap;
        }
    } else if (r->scaling == MC_ROPE_SCALE_FACTORS) {
        for (int i = 0; i < half && i < MC_ROPE_MAX_FACTORS; i++)
            inv_freq[i] /= (double)r->freq_factors[i];
    } else if (r->scaling == MC_ROPE_SCALE_LLAMA3) {
        double low_wl = r->orig_max_pos / r->low_freq_factor;
        double high_wl = r->orig_max_pos / r->high_freq_factor;
        for (int i = 0; i < half; i++) {
            double wl = 2.0 * M_PI / inv_freq[i];
            if (wl > low_wl) {
                inv_freq[i] /= r->factor;
            } else if (wl >= high_wl && r->high_freq_factor > r->low_freq_factor) {
                double smooth = (r->orig_max_pos / wl - r->low_freq_factor) /
                                (r->high_freq_factor - r->low_freq_factor);
                inv_freq[i] = (1.0 - smooth) * inv_freq[i] / r->factor + smooth * inv_freq[i];
            }
        }
    }
}
