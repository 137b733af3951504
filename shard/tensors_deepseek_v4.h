/* tensors_deepseek_v4.h - the tensors of a DeepSeek-V4 checkpoint, from its
 * description (the names and shapes worker/deepseek_v4.c binds).
 *
 * Names are V4's own ("model.layers.<l>.attn.wq_a.weight", "head.weight",
 * ...); roles reuse the generic ones where the tensor is one (embedding, LM
 * head, norms, q_a / q_b, the indexer's wq_b and weights_proj, router and
 * bias, shared and routed experts) and MC_T_V4_* otherwise. Every V4 role
 * is replicated in the split table: V4 runs on one rank.
 */
#ifndef MC_TENSORS_DEEPSEEK_V4_H
#define MC_TENSORS_DEEPSEEK_V4_H

#include "model_tensors.h"

/* Lists every tensor of the model (hash layers' ffn.gate.tid2eid is I64
 * in the checkpoint; every other tensor is a float tensor). *out is
 * malloc'd; the caller frees it. */
mc_status mc_v4_tensor_specs(const mc_model_desc *d, mc_tensor_spec **out, size_t *n, mc_err *err);

#endif
