/* family.h - one table of per-family operations: how a family's weights are
 * bound into a loaded model and how its stack runs on the step executor.
 *
 * Two kinds of stack exist today: the decoder shared by DeepSeek-V3 / V3.2,
 * Qwen3-MoE, Llama 4 and Mistral 4 (GQA or MLA attention, dense or MoE
 * feed-forward; model.c binds it, step.c / step_attn.c / step_block.c run
 * it), and DeepSeek-V4 (hyper-connections, compressed attention, hash
 * routing; deepseek_v4.c binds it, step_v4.c / step_v4_fwd.c run it).
 * worker/model.c and worker/step.c call through this table and name no
 * family; a new family adds a row here.
 *
 * Every entry is required; arguments and errors are those of the functions
 * the rows point at (model.h, step.h).
 */
#ifndef MC_FAMILY_H
#define MC_FAMILY_H

#include "model_config.h"
#include "status.h"

struct mc_model;
struct mc_step_exec;
struct mc_step_host_ix_s;

typedef struct {
    const char *stack; /* "decoder" or "deepseek-v4", for messages */
    /* model.c: binds this rank's share (checkpoint open, layout set) */
    mc_status (*bind)(struct mc_model *m, mc_err *err);
    /* frees what bind kept outside the model's owned list */
    void (*unbind)(struct mc_model *m);
    /* step.c: MC_OK when the executor runs this model and layout, else
     * MC_ERR_UNSUPPORTED naming what is missing */
    mc_status (*exec_supported)(const struct mc_model *m, mc_err *err);
    /* weights as backend tensors, KV pages, scratch (the executor's common
     * fields, pool and arena are set) */
    mc_status (*exec_init)(struct mc_step_exec *ex, mc_err *err);
    void (*exec_free)(struct mc_step_exec *ex);
    /* one step's tokens through this rank's stage, logits of the rows that
     * want them (the host index is built and checked) */
    mc_status (*exec_forward)(struct mc_step_exec *ex, const struct mc_step_host_ix_s *hx,
                              float *logits, mc_err *err);
    /* an empty plan: this rank's part of the collectives a step makes */
    mc_status (*exec_idle)(struct mc_step_exec *ex, mc_err *err);
} mc_family_ops;

/* The row of family f (never NULL: an unknown value gets the decoder's). */
const mc_family_ops *mc_family_ops_of(mc_family f);

#endif
