/* family.c - the family table (family.h): which binder and which executor
 * stack each model family uses. The only place in worker/ that maps a
 * family to its code. */
#include "family.h"

#include "deepseek_v4.h"
#include "model.h"
#include "step_internal.h"

static void no_unbind(mc_model *m)
{
    (void)m;
}

static mc_status no_idle(mc_step_exec *ex, mc_err *err)
{
    (void)ex;
    (void)err;
    return MC_OK; /* one rank per replica: no collective inside a step */
}

static const mc_family_ops decoder = {
    .stack = "decoder",
    .bind = mc_model_bind_decoder,
    .unbind = no_unbind,
    .exec_supported = mc_step_decoder_supported,
    .exec_init = mc_step_decoder_init,
    .exec_free = mc_step_decoder_free,
    .exec_forward = mc_step_decoder_forward,
    .exec_idle = mc_step_decoder_idle,
};

static const mc_family_ops deepseek_v4 = {
    .stack = "deepseek-v4",
    .bind = mc_v4_load,
    .unbind = mc_v4_free,
    .exec_supported = mc_step_v4_supported,
    .exec_init = mc_step_v4_init,
    .exec_free = mc_step_v4_free,
    .exec_forward = mc_step_v4_forward,
    .exec_idle = no_idle,
};

const mc_family_ops *mc_family_ops_of(mc_family f)
{
    static const mc_family_ops *const table[MC_FAM_COUNT] = {
        [MC_FAM_DEEPSEEK_V3] = &decoder, [MC_FAM_DEEPSEEK_V32] = &decoder,
        [MC_FAM_QWEN3_MOE] = &decoder,   [MC_FAM_LLAMA4] = &decoder,
        [MC_FAM_MISTRAL4] = &decoder,    [MC_FAM_DEEPSEEK_V4] = &deepseek_v4,
    };
    return (unsigned)f < MC_FAM_COUNT && table[f] ? table[f] : &decoder;
}
