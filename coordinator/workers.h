/* workers.h - the coordinator's client of a worker group (`moecluster
 * worker`): one ZeroMQ REQ connection to the group's rank 0, one request
 * and one answer at a time (docs/serving.md, "Control plane").
 *
 * Every wait is bounded by the connection's timeout: a dead or hung worker
 * fails the call with MC_ERR_IO naming the address and the timeout, never a
 * hang. After such a failure (or any transport failure) the connection is
 * broken: every later call fails at once with MC_ERR_IO; close it and
 * connect again. An Error answer of the worker (a refused plan, a failed
 * step) fails the call with the worker's code and message, and the
 * connection stays usable.
 *
 * Ownership: mc_workers_connect returns a connection the caller frees with
 * mc_workers_close; the strings of mc_workers_info are owned by it.
 * Not thread-safe: one thread uses a connection at a time.
 */
#ifndef MC_WORKERS_H
#define MC_WORKERS_H

#include "control.h"
#include "status.h"
#include "step_plan.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mc_workers mc_workers;

/* What the worker group said in its Hello. */
typedef struct {
    uint32_t world_size;
    char model_type[64];
    char host[256];
    uint32_t pid; /* of rank 0 */
    uint32_t vocab, n_layers;
    uint32_t n_blocks, block_size; /* KV pool: block ids < n_blocks */
    uint32_t max_batch_tokens;     /* new tokens per step */
    uint32_t max_pos;              /* start_pos + n_tokens <= max_pos */
} mc_workers_info;

/* Connects to addr (tcp://HOST:PORT or ipc://PATH) and exchanges Hellos.
 * timeout_ms (>= 1) bounds every later wait too (a step included).
 * MC_ERR_IO naming addr when no Hello comes in time, MC_ERR_ARG for bad
 * arguments, MC_ERR_FORMAT for an answer that is not a sane Hello. */
mc_status mc_workers_connect(const char *addr, int timeout_ms, mc_workers **out, mc_err *err);

/* The group's Hello (borrowed, valid until mc_workers_close). */
const mc_workers_info *mc_workers_get_info(const mc_workers *w);
const char *mc_workers_addr(const mc_workers *w);

/* Runs one step plan on the group. logits_out receives
 * mc_step_plan_logit_rows(plan) rows of vocab floats, per entry in plan
 * order (as mc_step_exec_run writes them); NULL when the plan asks for
 * none. Answers that do not match the plan (step id, sequences, row
 * counts) are MC_ERR_FORMAT. */
mc_status mc_workers_run(mc_workers *w, const mc_step_plan *plan, float *logits_out, mc_err *err);

/* Runs plan after releasing ids[n] (StepPlan.release: the worker forgets
 * those sequences first). plan may have no entries (release only). */
mc_status mc_workers_run_release(mc_workers *w, const mc_step_plan *plan, const uint64_t *ids,
                                 size_t n, float *logits_out, mc_err *err);
/* The same for a plan whose entries with logits ask for top_k = k
 * candidates (one k for the step): per row, top_ids, top_lp and top_lg
 * (top_lg may be NULL) receive the k most likely ids (best first, ties to
 * the lower id), their log-probabilities (logit - the row's log-sum-exp)
 * and their logits; ids past the vocabulary are MC_ERR_FORMAT. */
mc_status mc_workers_run_release_top(mc_workers *w, const mc_step_plan *plan, const uint64_t *ids,
                                     size_t n, int32_t *top_ids, float *top_lp, float *top_lg,
                                     mc_err *err);
/* The same for a plan whose entries with logits all have draws
 * (mc_step_plan_set_draw): the workers pick those tokens from their rows
 * with the request's sampler (mc_sampler_pick) and send the picks instead
 * of the rows; tokens and states get, per entry with a draw in plan order,
 * the token and the random stream after the pick. A pick past the
 * vocabulary is MC_ERR_FORMAT. */
mc_status mc_workers_run_release_draw(mc_workers *w, const mc_step_plan *plan,
                                      const uint64_t *ids, size_t n, int32_t *tokens,
                                      uint64_t *states, mc_err *err);

/* The worker forgets the finished sequences ids[n] (n >= 1); their blocks
 * are the caller's to give back to its pool. An id the worker does not
 * know is refused (MC_ERR_FORMAT) and nothing is released. */
mc_status mc_workers_release(mc_workers *w, const uint64_t *ids, size_t n, mc_err *err);

/* A Heartbeat round trip; *last_step (may be NULL) gets the last step the
 * group finished. */
mc_status mc_workers_heartbeat(mc_workers *w, uint64_t *last_step, mc_err *err);

/* Asks every rank of the group to exit 0 and waits for the answer. */
mc_status mc_workers_shutdown(mc_workers *w, mc_err *err);

/* Sends len raw bytes as a request and returns the unpacked answer in *reply
 * (release with mc_control_free from control.h), for tests of the worker's
 * refusals. Same timeout rules. */
mc_status mc_workers_request_raw(mc_workers *w, const void *bytes, size_t len,
                                 ControlMessage **reply, mc_err *err);

/* A check while a call waits for its answer (every 100 ms): when gone(ctx)
 * returns true (the caller's worker process exited, say) the call fails at
 * once with MC_ERR_IO and the connection is broken, instead of waiting out
 * the timeout. gone NULL removes it. ctx is borrowed. */
void mc_workers_set_watch(mc_workers *w, bool (*gone)(void *ctx), void *ctx);

/* Closes the connection; NULL is fine. */
void mc_workers_close(mc_workers *w);

#endif
