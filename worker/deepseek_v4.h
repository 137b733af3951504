/* deepseek_v4.h - DeepSeek-V4: its own weights, cache state and forward pass,
 * reached from mc_model_load / mc_kv_create / mc_model_forward when
 * d.family == MC_FAM_DEEPSEEK_V4. */
#ifndef MC_DEEPSEEK_V4_H
#define MC_DEEPSEEK_V4_H

#include "model.h"

/* Binds and checks the V4 tensors; stores its state in m->v4. */
mc_status mc_v4_load(mc_model *m, mc_err *err);
void mc_v4_free(mc_model *m);
/* Creates the V4 cache state in kv->ext (kv->cap tokens). */
mc_status mc_v4_kv_init(const mc_model *m, mc_kv *kv, mc_err *err);
void mc_v4_kv_free(mc_kv *kv);
void mc_v4_kv_reset(mc_kv *kv);
/* Same contract as mc_model_forward. */
mc_status mc_v4_forward(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                        bool last_only, mc_err *err);

#endif
