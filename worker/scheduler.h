/* scheduler.h - the scheduler of `score`: B sequences turned into step plans
 * (proto/step_plan.h) run by the step executor (step.h).
 *
 * Policy (vLLM-like, deterministic, so every rank of a dp group builds the
 * same plans from the same inputs):
 *   - sequence b belongs to dp group b % dp; each group serves its own
 *     sequences first come, first served;
 *   - each step first gives one token to every running sequence in its
 *     decode phase, then continues the prefill chunks of running sequences,
 *     then admits waiting sequences, all while the step's token budget
 *     (max_batch_tokens) lasts; a sequence is admitted only when the pool's
 *     free blocks hold its whole length (reserved at admission: lengths are
 *     known), and admission stops at the first one that does not fit;
 *   - with decode_from K the first K tokens of a sequence are prefilled
 *     (in chunks of the budget), the rest fed one token per step (teacher
 *     forcing); every position gets logits (MC_LOGITS_ALL);
 *   - a finished sequence gives its blocks back (mc_step_exec_release), so
 *     waiting sequences join;
 *   - the groups step in lockstep: each step the world sums a "work left"
 *     flag, and a group with nothing left passes an empty plan, until no
 *     group has work. Every rank thus calls mc_step_exec_run the same
 *     number of times.
 *
 * Ownership: nothing is kept between calls; the executor is borrowed.
 */
#ifndef MC_SCHED_H
#define MC_SCHED_H

#include "model.h"
#include "step.h"

#include <stdint.h>

/* One scoring job: B sequences of T tokens each. */
typedef struct {
    int B, T;
    const int64_t *ids;        /* [B, T] token ids, on every rank of a group that runs them */
    const int64_t *lengths;    /* [B] tokens each sequence runs, 1..T; NULL = all T */
    int decode_from;           /* <= 0 or >= a sequence's length: all of it as prefill */
    uint32_t max_batch_tokens; /* the step's token budget, >= 1 */
} mc_sched_job;

/* KV blocks of block_size positions every rank's pool gets for job (the same
 * on every rank): blocks for all sequences of the busiest dp group, capped
 * by budget_bytes of KV (mc_kv_block_bytes over the layers, in m->kv_dtype), but at
 * least the longest sequence's blocks. Never more than
 * MC_KV_POOL_MAX_BLOCKS. */
uint32_t mc_sched_pool_blocks(const mc_model *m, const mc_sched_job *job, uint32_t block_size,
                              uint64_t budget_bytes);

/* Collective over the model's world: runs job on ex (made with
 * job->max_batch_tokens or more as its budget) and writes the logits
 * [B, T, V] on world rank 0 (`logits` may be NULL elsewhere); positions at
 * or past a sequence's length are 0. MC_ERR_ARG (on every rank alike) when
 * a sequence does not fit the empty pool, naming the sizes. */
mc_status mc_sched_score(mc_model *m, mc_step_exec *ex, const mc_sched_job *job, float *logits,
                         mc_err *err);

/* Collective over the model's world: the logits [T, V] (seq_floats floats)
 * of each of B sequences to world rank 0's logits [B, T, V]: sequence b
 * from its dp group's (b % dp) output rank (mc_model_is_output), which
 * holds it in own at row b / dp (own: that rank's sequences when it is not
 * rank 0, borrowed; NULL elsewhere). Nothing is kept or freed. */
mc_status mc_sched_gather(mc_model *m, int B, size_t seq_floats, const float *own, float *logits,
                          mc_err *err);

#endif
