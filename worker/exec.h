/* exec.h - step schedules run by every rank of a job: scoring a batch of
 * sequences and the steps of generation.
 *
 * Sequences are spread over the dp groups (sequence b to dp group b % dp);
 * all groups step in lockstep (a group with nothing left runs empty steps,
 * so the expert exchange of its stage still completes). Under pipeline
 * parallelism each step is a micro-batch: a stage sends it on and starts
 * the next one while the later stages work, so stages overlap across the
 * sequences (and across the one-token steps of --decode-from).
 */
#ifndef MC_EXEC_H
#define MC_EXEC_H

#include "model.h"

/* Logits [B, T, V] of B sequences of T tokens (ids [B, T], needed on the
 * first stage's ranks; NULL elsewhere is fine). The first decode_from
 * tokens of each sequence are run as one step (all T when decode_from <= 0),
 * the rest one token at a time through the KV cache. The logits land on
 * world rank 0 (`logits` may be NULL on other ranks). Collective. */
mc_status mc_exec_score(mc_model *m, const int64_t *ids, int B, int T, int decode_from,
                        float *logits, mc_err *err);

/* Collective: the logits [T, V] (seq_floats floats) of each of B sequences
 * to world rank 0's logits [B, T, V]: sequence b from its dp group's (b % dp)
 * output rank, which holds it in own at row b / dp (own: this rank's
 * sequences, when it is an output rank other than 0; borrowed). */
mc_status mc_exec_gather(mc_model *m, int B, size_t seq_floats, const float *own,
                         float *logits, mc_err *err);

/* One step of a single sequence (dp group 0 runs it, the others idle in
 * lockstep): n tokens through kv, the logits [V] of the last one land on
 * world rank 0. Collective. */
mc_status mc_exec_last(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                       mc_err *err);

#endif
