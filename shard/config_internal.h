/* config_internal.h - config.json field readers shared by the family parsers
 * (model_config.c and one config_<family>.c per family that needs its own file).
 *
 * Readers record the first error in the context and return a default, so a
 * parse function reads like a list of fields and its caller checks c->st once.
 */
#ifndef MC_CONFIG_INTERNAL_H
#define MC_CONFIG_INTERNAL_H

#include "model_config.h"

#include <jansson.h>

typedef struct {
    json_t *root;
    const char *path;
    mc_err *err;
    mc_status st;
} mc_cfg_ctx;

/* Parses the text into c->root (a JSON object) or records why not; the
 * caller json_decref()s c->root (NULL-safe) in either case. */
mc_status mc_cfg_open(const char *json_text, size_t len, const char *path, mc_cfg_ctx *c,
                      mc_err *err);
json_t *mc_cfg_get(mc_cfg_ctx *c, json_t *obj, const char *key);
long long mc_cfg_int(mc_cfg_ctx *c, json_t *obj, const char *key, long long dflt, bool required);
double mc_cfg_num(mc_cfg_ctx *c, json_t *obj, const char *key, double dflt, bool required);
bool mc_cfg_bool(mc_cfg_ctx *c, json_t *obj, const char *key, bool dflt);
const char *mc_cfg_str(mc_cfg_ctx *c, json_t *obj, const char *key);
/* Returns v, recording an error unless lo <= v <= hi. */
int mc_cfg_range(mc_cfg_ctx *c, const char *key, long long v, long long lo, long long hi);
/* Records "path: <printf message>" as the error unless one is recorded already. */
void mc_cfg_fail(mc_cfg_ctx *c, mc_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Unless ok, records "path: <prefix><key> (<v>) must be <rule>"; returns ok. */
bool mc_cfg_need(mc_cfg_ctx *c, bool ok, const char *prefix, const char *key, double v,
                 const char *rule);
/* Checks a filled rope scaling (YaRN / llama3) for values its formulas cannot
 * take (factor, original_max_position_embeddings, betas, mscales, frequency
 * factors); `prefix` names the object in messages, e.g. "rope_scaling.". */
void mc_cfg_check_rope(mc_cfg_ctx *c, const mc_rope_desc *r, const char *prefix);
#define CFG_INT(c, obj, key, dflt, req, lo, hi)                                                    \
    mc_cfg_range(c, key, mc_cfg_int(c, obj, key, dflt, req), lo, hi)

double mc_yarn_get_mscale(double scale, double mscale);
/* vocab, hidden, layers, heads, eps, tie, bos/eos, hidden_act check. */
void mc_cfg_parse_common(mc_cfg_ctx *c, mc_model_desc *m);
/* rope_theta + rope_parameters / rope_scaling; sets rope.dim from
 * head_dim_for_partial * partial_rotary_factor when head_dim_for_partial > 0. */
void mc_cfg_parse_rope(mc_cfg_ctx *c, mc_model_desc *m, int head_dim_for_partial);
/* quantization_config (fp8 blocks). */
void mc_cfg_parse_fp8(mc_cfg_ctx *c, mc_model_desc *m);

/* Family parsers living in their own files. */
void mc_cfg_parse_deepseek_v4(mc_cfg_ctx *c, mc_model_desc *m);

#endif
