/* model_tensors.h - checkpoint tensor names per family, as a table.
 *
 * A role is what a tensor is for (the attention's query down-projection,
 * expert e's up-projection, ...); each family maps roles to name patterns
 * with the layer (%d) and expert (%d) filled in. The loader, the planner and
 * the shard writer all go through this table.
 */
#ifndef MC_MODEL_TENSORS_H
#define MC_MODEL_TENSORS_H

#include "model_config.h"

#include "status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    MC_T_EMBED = 0,
    MC_T_LM_HEAD,
    MC_T_FINAL_NORM,
    /* per layer */
    MC_T_ATTN_NORM,
    MC_T_FFN_NORM,
    MC_T_Q_A,      /* MLA */
    MC_T_Q_A_NORM,
    MC_T_Q_B,
    MC_T_Q,        /* MLA without q_lora, or GQA */
    MC_T_KV_A,
    MC_T_KV_A_NORM,
    MC_T_KV_B,
    MC_T_K,        /* GQA */
    MC_T_V,
    MC_T_Q_NORM,
    MC_T_K_NORM,
    MC_T_O,
    MC_T_DENSE_GATE,
    MC_T_DENSE_UP,
    MC_T_DENSE_DOWN,
    MC_T_ROUTER,
    MC_T_ROUTER_BIAS,
    MC_T_SHARED_GATE,
    MC_T_SHARED_UP,
    MC_T_SHARED_DOWN,
    MC_T_EXPERTS_GATE_UP, /* fused: all experts' gate and up projections in one tensor */
    MC_T_EXPERTS_DOWN,    /* fused: all experts' down projections */
    MC_T_IDX_WQ_B,        /* DeepSeek-V3.2 lightning indexer */
    MC_T_IDX_WK,
    MC_T_IDX_K_NORM,
    MC_T_IDX_K_NORM_BIAS,
    MC_T_IDX_WEIGHTS,
    MC_T_V4_HC,           /* DeepSeek-V4 (tensors_deepseek_v4.c): hyper-connection fn/base/scale */
    MC_T_V4_WKV,          /* the single K=V head's projection */
    MC_T_V4_KV_NORM,
    MC_T_V4_WO_A,         /* grouped output projection */
    MC_T_V4_WO_B,
    MC_T_V4_SINK,         /* per-head attention sink logits */
    MC_T_V4_COMP,         /* KV compressor: wkv, wgate, ape, norm */
    MC_T_V4_IDX_COMP,     /* the CSA indexer's own compressor */
    MC_T_V4_TID2EID,      /* hash routing table [vocab, k], I64 */
    /* per layer and expert */
    MC_T_EXPERT_GATE,
    MC_T_EXPERT_UP,
    MC_T_EXPERT_DOWN,
    MC_T_ROLE_COUNT
} mc_tensor_role;

/* Writes the tensor name for (role, layer, expert) of the model's naming
 * scheme (with its prefix) into buf; returns 0, or -1 if the scheme has no
 * such tensor or buf is too small. */
int mc_tensor_name(const mc_model_desc *d, mc_tensor_role role, int layer, int expert, char *buf,
                   size_t len);
const char *mc_tensor_role_str(mc_tensor_role role);

/* One tensor the model description implies (FP8 scale tensors not listed:
 * every `linear` weight stored as F8_E4M3 has a `<name>_scale_inv`). */
typedef struct {
    char name[256];
    mc_tensor_role role;
    int layer, expert; /* -1 when not per layer / per expert */
    int ndim;
    int64_t shape[3];
    bool linear; /* a projection matrix (quantizable); false for embeddings, head, norms,
                    routers and biases */
} mc_tensor_spec;

/* Lists every tensor of the text model in the checkpoint's naming and
 * layout (fused or per-expert experts). *out is malloc'd; caller frees.
 * DeepSeek-V4's list comes from tensors_deepseek_v4.c (its own names). */
mc_status mc_model_tensor_specs(const mc_model_desc *d, mc_tensor_spec **out, size_t *n,
                                mc_err *err);

/* For the spec builders (model_tensors.c, tensors_deepseek_v4.c): a zeroed
 * slot n of the growing array *v (capacity *cap, doubled as needed), or
 * NULL when out of memory (the array is left as it was). */
mc_tensor_spec *mc_tensor_spec_push(mc_tensor_spec **v, size_t n, size_t *cap);

#endif
