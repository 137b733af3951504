/* step_v4.c - DeepSeek-V4 on the step executor (not yet: refused). */
#include "step_internal.h"

mc_status mc_step_v4_supported(const mc_model *m, mc_err *err)
{
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "step executor: DeepSeek-V4 (%s) is not supported yet",
                      m->d.model_type);
}

mc_status mc_step_v4_init(mc_step_exec *ex, mc_err *err)
{
    return mc_step_v4_supported(ex->m, err);
}

void mc_step_v4_free(mc_step_exec *ex)
{
    (void)ex;
}

mc_status mc_step_v4_forward(mc_step_exec *ex, const mc_step_host_ix *hx, float *logits,
                             mc_err *err)
{
    (void)hx;
    (void)logits;
    return mc_step_v4_supported(ex->m, err);
}
