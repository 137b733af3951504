/* config_deepseek_v4.c - config.json of model_type deepseek_v4. */
#include "config_internal.h"

void mc_cfg_parse_deepseek_v4(mc_cfg_ctx *c, mc_model_desc *m)
{
    (void)m;
    if (c->st == MC_OK)
        c->st = mc_err_set(c->err, MC_ERR_UNSUPPORTED,
                           "%s: model_type 'deepseek_v4' (hyper-connections, compressed sparse "
                           "attention) is recognized but not supported yet",
                           c->path);
}
