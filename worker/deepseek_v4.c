/* deepseek_v4.c - DeepSeek-V4 forward pass (not implemented yet: the config
 * parser refuses deepseek_v4, so these are never reached). */
#include "deepseek_v4.h"

mc_status mc_v4_load(mc_model *m, mc_err *err)
{
    (void)m;
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "deepseek_v4 is not supported yet");
}

void mc_v4_free(mc_model *m) { (void)m; }

mc_status mc_v4_kv_init(const mc_model *m, mc_kv *kv, mc_err *err)
{
    (void)m;
    (void)kv;
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "deepseek_v4 is not supported yet");
}

void mc_v4_kv_free(mc_kv *kv) { (void)kv; }
void mc_v4_kv_reset(mc_kv *kv) { (void)kv; }

mc_status mc_v4_forward(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                        bool last_only, mc_err *err)
{
    (void)m;
    (void)kv;
    (void)tokens;
    (void)n;
    (void)logits;
    (void)last_only;
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "deepseek_v4 is not supported yet");
}
