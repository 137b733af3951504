/* engine.h - the coordinator's serving engine: continuous batching of many
 * requests over one step runner (vLLM's scheduler, recompute preemption),
 * with sampling and end-of-sequence handling.
 *
 * A request is a prompt of token ids, sampling parameters (sampler.h),
 * max_tokens and stop ids. The engine owns the paged KV block tables (its
 * own mc_kv_pool, kv_pool.h) and turns the requests into step plans
 * (proto/step_plan.h) that a runner executes: in this process over a
 * session's step executor (mc_step_runner_session), or later over the
 * control plane to a worker group. One call to mc_engine_step is one step:
 *
 *   1. running requests in their decode phase get one token each, in
 *      admission order, while the step budget lasts; a decode that crosses
 *      into a new block takes one from the pool, and when none is free the
 *      most recently admitted running request is preempted (its blocks
 *      freed, its sequence released in the runner, and it goes back to the
 *      front of the waiting queue to recompute its prompt and the tokens
 *      generated so far later; it may be the request itself);
 *   2. running requests still in prefill continue with chunks of the
 *      remaining budget;
 *   3. waiting requests are admitted first come, first served while the
 *      budget, max_running and the free blocks allow (admission reserves
 *      the blocks of the whole prompt, or prompt + generated tokens after a
 *      preemption; the first one that does not fit stops admission, and
 *      nothing is admitted in a step that preempted).
 *
 * The step's LAST rows are sampled with each request's sampler (seeded
 * stream, penalty counts) and every sampled token is an event: (request
 * id, token, logprobs when asked, finish reason). A request ends on a stop
 * id ("stop"), max_tokens or the context ("length"), a failed step
 * ("error": every request of that step, with the runner's message; the
 * engine goes on with the others) or mc_engine_cancel ("abort").
 *
 * Bounds: max_requests held at once (waiting + running), max_running in a
 * step, prompts shorter than the context (max_model_len, itself at most
 * the runner's max_pos and the pool's n_blocks * block_size, so a request
 * alone always fits the pool); mc_engine_submit refuses the rest with one
 * line naming the sizes.
 *
 * Not thread-safe: one thread drives an engine.
 *
 * Ownership: mc_engine_init returns an engine the caller frees with
 * mc_engine_free; the runner (and what its ctx points at) is borrowed and
 * must outlive it. Submitted requests are copied (prompt, stop ids,
 * logit_bias). Events are copied out; an error event's msg is borrowed and
 * valid until the next mc_engine_step or mc_engine_free.
 */
#ifndef MC_ENGINE_H
#define MC_ENGINE_H

#include "sampler.h"
#include "status.h"
#include "step_plan.h"

#include <stdbool.h>
#include <stdint.h>

/* What executes step plans. run: logits rows as mc_step_exec_run returns
 * them (per entry in plan order; LAST -> 1 row of vocab floats), and a
 * failed run changes no sequence's length. release: forget a sequence (a
 * sequence the runner never saw may be refused with MC_ERR_NOT_FOUND; the
 * engine ignores that). The limits are the runner's: the engine's pool may
 * be smaller, never larger, and its block ids are < n_blocks. */
typedef struct {
    void *ctx;
    mc_status (*run)(void *ctx, const mc_step_plan *plan, float *logits, mc_err *err);
    /* optional: a plan whose entries with logits all ask for top_k = k
     * candidates; per row top_ids / top_lp / top_lg get the k most likely
     * ids (best first, ties to the lower id), their log-probabilities and
     * their logits. The engine asks for them in steps whose every pick the
     * candidates decide (mc_sampler_top_k: greedy, or sampling with a
     * top_k <= 64, without penalties, biases or logprobs), k the largest
     * such top_k of the step, so a row never crosses whole. */
    mc_status (*run_top)(void *ctx, const mc_step_plan *plan, int32_t *top_ids, float *top_lp,
                         float *top_lg, mc_err *err);
    /* optional: a plan whose entries with logits all have draws
     * (mc_step_plan_set_draw: the sampler's parameters and random stream);
     * the runner picks each token from its row as mc_sampler_pick does and
     * returns, per such entry in plan order, the token and the stream after
     * the pick. The engine asks for them in steps whose picks need whole
     * rows but no penalties, biases or logprobs (a draw without a top_k of
     * at most 64), so the rows stay where they were computed. */
    mc_status (*run_draw)(void *ctx, const mc_step_plan *plan, int32_t *tokens, uint64_t *states,
                          mc_err *err);
    mc_status (*release)(void *ctx, uint64_t seq_id, mc_err *err);
    uint32_t vocab, n_blocks, block_size, max_pos, max_batch_tokens;
} mc_step_runner;

/* The in-process runner over a session's executor (worker/session.h's
 * mc_session_runner, borrowed by *out: it must outlive the engine). */
typedef struct mc_session_runner mc_session_runner;
void mc_step_runner_session(mc_session_runner *sr, mc_step_runner *out);

#define MC_ENGINE_DEFAULT_MAX_REQUESTS 1024u
#define MC_ENGINE_DEFAULT_MAX_RUNNING 256u /* vLLM's max_num_seqs */
#define MC_ENGINE_MAX_STOP_IDS 64u         /* stop ids of one request */

/* Engine options; 0 = the default named. */
typedef struct {
    uint32_t max_requests;     /* held at once; MC_ENGINE_DEFAULT_MAX_REQUESTS */
    uint32_t max_running;      /* sequences in one step; MC_ENGINE_DEFAULT_MAX_RUNNING */
    uint32_t max_batch_tokens; /* new tokens per step; the runner's (never more) */
    uint32_t max_model_len;    /* context; min(runner max_pos, n_blocks * block_size) */
    uint32_t n_blocks;         /* the engine's pool; the runner's (never more) */
} mc_engine_opts;

typedef struct {
    const int32_t *prompt; /* (n_prompt) token ids, 1 <= n_prompt < max_model_len */
    uint32_t n_prompt;
    mc_sampler_params sampling; /* checked at submit (mc_sampler_params_check) */
    uint32_t max_tokens;        /* generated tokens at most; 0 = until the context */
    const int32_t *stop_ids;    /* (n_stop_ids) end ids: the model's and the request's */
    uint32_t n_stop_ids;        /* <= MC_ENGINE_MAX_STOP_IDS */
} mc_engine_request;

typedef enum {
    MC_ENGINE_GO_ON = 0, /* not finished */
    MC_ENGINE_STOP,      /* a stop id */
    MC_ENGINE_LENGTH,    /* max_tokens or the context */
    MC_ENGINE_ERROR,     /* a failed step */
    MC_ENGINE_ABORT,     /* mc_engine_cancel */
    MC_ENGINE_FINISH_COUNT
} mc_engine_finish;

/* "", "stop", "length", "error", "abort" (OpenAI's finish_reason words). */
const char *mc_engine_finish_name(mc_engine_finish f);

typedef struct {
    uint64_t id;       /* the request */
    int32_t token;     /* the new token; -1 when none (error, abort) */
    bool has_logprobs; /* lp filled (the request asked for logprobs) */
    mc_logprobs lp;
    mc_engine_finish finish;
    const char *msg; /* ERROR: the reason (borrowed, see above); else NULL */
} mc_engine_event;

typedef struct {
    uint32_t running, waiting;
    uint32_t kv_blocks_used, kv_blocks;
    double kv_usage;                  /* used / total blocks, 0..1 */
    uint64_t prompt_tokens_total;     /* prompt tokens prefilled (first time only) */
    uint64_t generation_tokens_total; /* tokens sampled */
    uint64_t preemptions_total;
    uint64_t steps_total, steps_failed;
    uint64_t steps_top;  /* steps answered with candidates (greedy picks) instead of rows */
    uint64_t steps_draw; /* steps whose picks the runner made (run_draw) instead of rows */
    uint64_t requests_finished[MC_ENGINE_FINISH_COUNT]; /* by reason */
} mc_engine_stats;

typedef struct mc_engine mc_engine;

/* Makes an engine over runner (borrowed). MC_ERR_ARG for options past the
 * runner's limits or a runner without run / release, MC_ERR_NOMEM. */
mc_status mc_engine_init(const mc_step_runner *runner, const mc_engine_opts *opts, mc_engine **out,
                         mc_err *err);
void mc_engine_free(mc_engine *e); /* NULL is fine; releases its sequences in the runner */

/* Queues a request (copied) and sets *id. MC_ERR_ARG with one line for a
 * bad request (empty prompt, a token past the vocabulary, a prompt that
 * leaves no room in the context, bad sampling parameters, too many stop
 * ids), MC_ERR_OVERFLOW when max_requests are held already (the caller
 * answers 429 / 503), MC_ERR_NOMEM. */
mc_status mc_engine_submit(mc_engine *e, const mc_engine_request *req, uint64_t *id, mc_err *err);

/* The checks of mc_engine_submit that need no engine, for an engine of
 * that vocabulary and context (max_model_len): MC_ERR_ARG with the same
 * one line. Thread-safe (reads only req). */
mc_status mc_engine_check_request(const mc_engine_request *req, uint32_t vocab, uint32_t max_len,
                                  mc_err *err);

/* Ends every running request now with an "error" event carrying msg
 * (copied; NULL or "" says the runner failed) and gives its blocks back
 * WITHOUT calling the runner (for a runner that is gone: a dead worker
 * group). Waiting requests stay queued. MC_ERR_NOMEM when the events find
 * no room (nothing changed). */
mc_status mc_engine_fail_running(mc_engine *e, const char *msg, mc_err *err);

/* Ends a request now with an "abort" event; MC_ERR_NOT_FOUND when it is
 * not held (finished already, or never submitted). */
mc_status mc_engine_cancel(mc_engine *e, uint64_t id, mc_err *err);

/* One step (see the header comment). A failed run fails the requests of
 * the step ("error" events) and still returns MC_OK. Returns an error only
 * for the engine's own trouble (MC_ERR_NOMEM building the plan: nothing
 * changed but reservations, the step may be retried) or MC_ERR_ARG when
 * more than max_requests events are waiting to be read. Nothing to do
 * (no request held) is MC_OK, no step. */
mc_status mc_engine_step(mc_engine *e, mc_err *err);

/* True while requests are held (waiting or running). */
bool mc_engine_busy(const mc_engine *e);

/* Takes the oldest event: true and *ev filled, false when none. */
bool mc_engine_next_event(mc_engine *e, mc_engine_event *ev);

void mc_engine_stats_get(const mc_engine *e, mc_engine_stats *out);

/* Consistency, for tests: the pool (mc_kv_pool_verify), every running
 * request's table covering its computed positions, the used blocks being
 * exactly the running requests' tables, the counts. MC_ERR_INTERNAL. */
mc_status mc_engine_verify(const mc_engine *e, mc_err *err);

/* The context the engine serves (max_model_len after the defaults). */
uint32_t mc_engine_max_model_len(const mc_engine *e);

#endif
