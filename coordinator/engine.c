/* engine.c - continuous batching over a step runner (see engine.h). */
#include "engine.h"

#include "kv_pool.h"
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hard bound of max_requests (slots are allocated up front). */
#define ENGINE_MAX_REQUESTS (1u << 20)

typedef enum { RQ_FREE = 0, RQ_WAITING, RQ_RUNNING } rq_state;

typedef struct {
    rq_state state;
    uint64_t id;
    uint64_t seq_id;     /* in the pool and the runner while running; fresh per admission */
    uint32_t *tokens;    /* (cap) the prompt, then the generated ids */
    uint32_t cap;        /* min(n_prompt + max_tokens, max_model_len) */
    uint32_t n_prompt;   /* prompt tokens */
    uint32_t n_tokens;   /* prompt + generated */
    uint32_t n_computed; /* positions in the KV cache (0 while waiting) */
    uint32_t max_tokens; /* 0 = until the context */
    int32_t stop_ids[MC_ENGINE_MAX_STOP_IDS];
    uint32_t n_stop;
    mc_logit_bias *bias; /* (sampler.p.n_logit_bias) owned copy the sampler points at */
    mc_sampler sampler;
    mc_seq_tokens *hist; /* owned; only when a penalty is on */
    bool prompt_counted; /* its prompt is in prompt_tokens_total */
} request;

/* One entry of the step being built. */
typedef struct {
    uint32_t slot, n;
} sched_entry;

struct mc_engine {
    mc_step_runner r;
    mc_kv_pool *pool; /* owned: the block tables of the plans */
    uint32_t max_requests, max_running, budget, max_len, vocab;
    request *rq;       /* (max_requests) slots */
    uint32_t n_held;   /* slots not free */
    uint32_t *waiting; /* (max_requests) ring of slots, FCFS */
    uint32_t w_head, n_waiting;
    uint32_t *running; /* (max_running) slots in admission order */
    uint32_t n_running;
    sched_entry *sched; /* (max_running) this step's entries, in plan order */
    uint32_t n_sched;
    float *logits; /* (min(max_running, budget), vocab) this step's LAST rows */
    /* (min(max_running, budget), MC_SAMPLER_TOP_MAX) their candidates
     * (runner's run_top, top_k a row): ids, log-probabilities, logits */
    int32_t *top_ids;
    float *top_lp, *top_lg;
    uint64_t *draw_state; /* (rows) the streams after the runner's picks (run_draw; the
                           * tokens go to top_ids) */
    mc_sample_scratch *scratch;
    mc_engine_event *ev; /* (ev_cap) ring of undelivered events */
    uint32_t ev_head, n_ev, ev_cap;
    uint64_t next_id, next_seq, step_id;
    char msg[sizeof(((mc_err *)0)->msg)];      /* the last failed step's reason */
    char fail_msg[sizeof(((mc_err *)0)->msg)]; /* mc_engine_fail_running's */
    mc_engine_stats st;
};

const char *mc_engine_finish_name(mc_engine_finish f) {
    static const char *const names[] = {"", "stop", "length", "error", "abort"};
    return (unsigned)f < MC_ENGINE_FINISH_COUNT ? names[f] : "?";
}

/* ---- the in-process runner ---- */

static mc_status session_run(void *ctx, const mc_step_plan *plan, float *logits, mc_err *err) {
    return mc_session_runner_run(ctx, plan, logits, err);
}

static mc_status session_run_top(void *ctx, const mc_step_plan *plan, int32_t *top_ids,
                                 float *top_lp, float *top_lg, mc_err *err) {
    return mc_session_runner_run_top(ctx, plan, top_ids, top_lp, top_lg, err);
}

static mc_status session_release(void *ctx, uint64_t seq_id, mc_err *err) {
    return mc_session_runner_release(ctx, seq_id, err);
}

void mc_step_runner_session(mc_session_runner *sr, mc_step_runner *out) {
    mc_session_runner_limits lim;
    mc_session_runner_get_limits(sr, &lim);
    *out = (mc_step_runner){.ctx = sr,
                            .run = session_run,
                            .run_top = session_run_top,
                            .release = session_release,
                            .vocab = lim.vocab,
                            .n_blocks = lim.n_blocks,
                            .block_size = lim.block_size,
                            .max_pos = lim.max_pos,
                            .max_batch_tokens = lim.max_batch_tokens};
}

/* ---- events ---- */

/* Room for `more` events (the ring doubles; nothing lost on failure). */
static mc_status ev_reserve(mc_engine *e, uint32_t more, mc_err *err) {
    uint64_t need = (uint64_t)e->n_ev + more;
    if (need <= e->ev_cap) return MC_OK;
    uint64_t cap = e->ev_cap ? e->ev_cap : 64;
    while (cap < need)
        cap *= 2;
    if (cap > UINT32_MAX) return mc_err_set(err, MC_ERR_OVERFLOW, "engine: too many events");
    mc_engine_event *n = mc_malloc_n((size_t)cap, sizeof *n); /* (cap) */
    if (!n) return mc_err_set(err, MC_ERR_NOMEM, "engine: out of memory for events");
    for (uint32_t i = 0; i < e->n_ev; i++)
        n[i] = e->ev[(e->ev_head + i) % e->ev_cap];
    free(e->ev);
    e->ev = n;
    e->ev_head = 0;
    e->ev_cap = (uint32_t)cap;
    return MC_OK;
}

/* Appends an event; room was reserved before. */
static void ev_push(mc_engine *e, const mc_engine_event *ev) {
    e->ev[(e->ev_head + e->n_ev) % e->ev_cap] = *ev;
    e->n_ev++;
}

bool mc_engine_next_event(mc_engine *e, mc_engine_event *ev) {
    if (!e->n_ev) return false;
    *ev = e->ev[e->ev_head];
    e->ev_head = (e->ev_head + 1) % e->ev_cap;
    e->n_ev--;
    return true;
}

/* ---- queues ---- */

static void waiting_push_back(mc_engine *e, uint32_t slot) {
    e->waiting[(e->w_head + e->n_waiting) % e->max_requests] = slot;
    e->n_waiting++;
}

static void waiting_push_front(mc_engine *e, uint32_t slot) {
    e->w_head = (e->w_head + e->max_requests - 1) % e->max_requests;
    e->waiting[e->w_head] = slot;
    e->n_waiting++;
}

static uint32_t waiting_at(const mc_engine *e, uint32_t k) {
    return e->waiting[(e->w_head + k) % e->max_requests];
}

static void waiting_remove(mc_engine *e, uint32_t slot) {
    uint32_t k = 0;
    while (k < e->n_waiting && waiting_at(e, k) != slot)
        k++;
    if (k == e->n_waiting) return;
    for (; k + 1 < e->n_waiting; k++)
        e->waiting[(e->w_head + k) % e->max_requests] = waiting_at(e, k + 1);
    e->n_waiting--;
}

static void running_remove(mc_engine *e, uint32_t slot) {
    for (uint32_t i = 0; i < e->n_running; i++)
        if (e->running[i] == slot) {
            memmove(e->running + i, e->running + i + 1,
                    (e->n_running - i - 1) * sizeof *e->running);
            e->n_running--;
            return;
        }
}

/* Gives a running request's blocks back and forgets its sequence in the
 * runner (a sequence the runner never ran is not an error). */
static void release_seq(mc_engine *e, request *q) {
    mc_err ignore;
    mc_err_clear(&ignore);
    (void)mc_kv_pool_release(e->pool, q->seq_id, &ignore);
    mc_err_clear(&ignore);
    (void)e->r.release(e->r.ctx, q->seq_id, &ignore);
}

/* A release that does nothing (mc_engine_fail_running). */
static mc_status forget_nothing(void *ctx, uint64_t seq_id, mc_err *err) {
    (void)ctx, (void)seq_id, (void)err;
    return MC_OK;
}

static void request_clear(request *q) {
    free(q->tokens);
    free(q->bias);
    mc_seq_tokens_free(q->hist);
    memset(q, 0, sizeof *q);
}

/* Ends request `slot`: one event (room reserved), its blocks and sequence
 * released, its slot freed. */
static void finish(mc_engine *e, uint32_t slot, mc_engine_finish why, int32_t token,
                   const mc_logprobs *lp, const char *msg) {
    request *q = &e->rq[slot];
    mc_engine_event ev = {.id = q->id, .token = token, .finish = why, .msg = msg};
    if (lp) {
        ev.has_logprobs = true;
        ev.lp = *lp;
    }
    ev_push(e, &ev);
    if (q->state == RQ_RUNNING) {
        release_seq(e, q);
        running_remove(e, slot);
    } else if (q->state == RQ_WAITING) {
        waiting_remove(e, slot);
    }
    request_clear(q);
    e->n_held--;
    e->st.requests_finished[why]++;
}

/* Recompute preemption of the most recently admitted running request: its
 * blocks go back, its runner sequence is forgotten, and it waits at the
 * front of the queue with its prompt and generated tokens. */
static void preempt_last(mc_engine *e) {
    uint32_t slot = e->running[e->n_running - 1];
    request *q = &e->rq[slot];
    release_seq(e, q);
    e->n_running--;
    q->state = RQ_WAITING;
    q->n_computed = 0;
    waiting_push_front(e, slot);
    e->st.preemptions_total++;
}

/* ---- init / free ---- */

mc_status mc_engine_init(const mc_step_runner *runner, const mc_engine_opts *opts, mc_engine **out,
                         mc_err *err) {
    *out = NULL;
    const mc_step_runner *r = runner;
    if (!r->run || !r->release || !r->vocab || !r->n_blocks || !r->block_size || !r->max_pos ||
        !r->max_batch_tokens || r->vocab > INT32_MAX)
        return mc_err_set(err, MC_ERR_ARG, "engine: the runner lacks a function or a limit");
    mc_engine_opts o = opts ? *opts : (mc_engine_opts){0};
    uint32_t n_blocks = o.n_blocks ? o.n_blocks : r->n_blocks;
    uint32_t budget = o.max_batch_tokens ? o.max_batch_tokens : r->max_batch_tokens;
    if (n_blocks > r->n_blocks)
        return mc_err_set(err, MC_ERR_ARG, "engine: %u KV blocks, the runner has %u", n_blocks,
                          r->n_blocks);
    if (budget > r->max_batch_tokens)
        return mc_err_set(err, MC_ERR_ARG, "engine: max_batch_tokens %u, the runner takes %u",
                          budget, r->max_batch_tokens);
    uint64_t room = (uint64_t)n_blocks * r->block_size;
    uint32_t ctx = room < r->max_pos ? (uint32_t)room : r->max_pos;
    uint32_t max_len = o.max_model_len ? o.max_model_len : ctx;
    if (max_len < 2 || max_len > ctx)
        return mc_err_set(err, MC_ERR_ARG,
                          "engine: max_model_len %u must be in 2..%u (the runner's context %u, "
                          "%u blocks of %u)",
                          max_len, ctx, r->max_pos, n_blocks, r->block_size);
    uint32_t max_req = o.max_requests ? o.max_requests : MC_ENGINE_DEFAULT_MAX_REQUESTS;
    uint32_t max_run = o.max_running ? o.max_running : MC_ENGINE_DEFAULT_MAX_RUNNING;
    if (max_req > ENGINE_MAX_REQUESTS || max_run > MC_STEP_MAX_SEQS)
        return mc_err_set(err, MC_ERR_ARG,
                          "engine: max_requests %u (at most %u), max_running %u "
                          "(at most %u)",
                          max_req, ENGINE_MAX_REQUESTS, max_run, MC_STEP_MAX_SEQS);
    mc_engine *e = calloc(1, sizeof *e);
    if (!e) return mc_err_set(err, MC_ERR_NOMEM, "engine: out of memory");
    e->r = *r;
    e->max_requests = max_req;
    e->max_running = max_run;
    e->budget = budget;
    e->max_len = max_len;
    e->vocab = r->vocab;
    e->next_id = 1;
    e->next_seq = 1;
    size_t rows = max_run < budget ? max_run : budget;
    mc_status st;
    if ((st = mc_kv_pool_init(&e->pool, n_blocks, r->block_size, err)) != MC_OK) goto fail;
    if ((st = mc_sample_scratch_init((int)e->vocab, &e->scratch, err)) != MC_OK) goto fail;
    e->rq = mc_calloc_n(max_req, sizeof *e->rq);
    e->waiting = mc_calloc_n(max_req, sizeof *e->waiting);
    e->running = mc_calloc_n(max_run, sizeof *e->running);
    e->sched = mc_calloc_n(max_run, sizeof *e->sched);
    e->logits = mc_malloc_n(rows, (size_t)e->vocab * sizeof(float)); /* (rows, vocab) */
    e->top_ids = mc_malloc_n(rows, MC_SAMPLER_TOP_MAX * sizeof *e->top_ids);
    e->top_lp = mc_malloc_n(rows, MC_SAMPLER_TOP_MAX * sizeof *e->top_lp);
    e->top_lg = mc_malloc_n(rows, MC_SAMPLER_TOP_MAX * sizeof *e->top_lg);
    e->draw_state = mc_malloc_n(rows, sizeof *e->draw_state);
    if (!e->rq || !e->waiting || !e->running || !e->sched || !e->logits || !e->top_ids ||
        !e->top_lp || !e->top_lg || !e->draw_state) {
        st = mc_err_set(err, MC_ERR_NOMEM, "engine: out of memory for %u requests", max_req);
        goto fail;
    }
    if ((st = ev_reserve(e, max_run, err)) != MC_OK) goto fail;
    *out = e;
    return MC_OK;
fail:
    mc_engine_free(e);
    return st;
}

void mc_engine_free(mc_engine *e) {
    if (!e) return;
    for (uint32_t i = 0; e->rq && i < e->max_requests; i++) {
        if (e->rq[i].state == RQ_RUNNING) release_seq(e, &e->rq[i]);
        request_clear(&e->rq[i]);
    }
    mc_kv_pool_free(e->pool);
    mc_sample_scratch_free(e->scratch);
    free(e->rq);
    free(e->waiting);
    free(e->running);
    free(e->sched);
    free(e->logits);
    free(e->top_ids);
    free(e->top_lp);
    free(e->top_lg);
    free(e->draw_state);
    free(e->ev);
    free(e);
}

/* ---- requests ---- */

mc_status mc_engine_check_request(const mc_engine_request *req, uint32_t vocab, uint32_t max_len,
                                  mc_err *err) {
    if (!req->prompt || req->n_prompt < 1)
        return mc_err_set(err, MC_ERR_ARG, "the prompt is empty");
    if (req->n_prompt >= max_len)
        return mc_err_set(err, MC_ERR_ARG,
                          "this model's maximum context length is %u tokens; the prompt has %u "
                          "(at most %u, leaving room for one generated token)",
                          max_len, req->n_prompt, max_len - 1);
    for (uint32_t i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || (uint32_t)req->prompt[i] >= vocab)
            return mc_err_set(err, MC_ERR_ARG,
                              "prompt[%u]: token id %d is outside the vocabulary "
                              "(%u)",
                              i, req->prompt[i], vocab);
    if (req->n_stop_ids > MC_ENGINE_MAX_STOP_IDS || (req->n_stop_ids && !req->stop_ids))
        return mc_err_set(err, MC_ERR_ARG, "%u stop ids (at most %u)", req->n_stop_ids,
                          MC_ENGINE_MAX_STOP_IDS);
    return mc_sampler_params_check(&req->sampling, (int)vocab, err);
}

mc_status mc_engine_submit(mc_engine *e, const mc_engine_request *req, uint64_t *id, mc_err *err) {
    *id = 0;
    mc_status st = mc_engine_check_request(req, e->vocab, e->max_len, err);
    if (st != MC_OK) return st;
    if (e->n_held >= e->max_requests || e->n_ev >= 2 * (uint64_t)e->max_requests)
        return mc_err_set(err, MC_ERR_OVERFLOW, "engine: %u requests held already (the most)",
                          e->n_held);
    uint32_t slot = 0;
    while (e->rq[slot].state != RQ_FREE)
        slot++;
    request *q = &e->rq[slot];
    uint64_t want = (uint64_t)req->n_prompt + (req->max_tokens ? req->max_tokens : e->max_len);
    q->cap = want < e->max_len ? (uint32_t)want : e->max_len;
    q->tokens = mc_malloc_n(q->cap, sizeof *q->tokens); /* (cap) */
    mc_sampler_params p = req->sampling;
    if (p.n_logit_bias > 0) {
        q->bias = mc_malloc_n((size_t)p.n_logit_bias, sizeof *q->bias);
        if (q->bias) memcpy(q->bias, p.logit_bias, (size_t)p.n_logit_bias * sizeof *q->bias);
        p.logit_bias = q->bias;
    }
    if (!q->tokens || (p.n_logit_bias > 0 && !q->bias)) {
        st = mc_err_set(err, MC_ERR_NOMEM, "engine: out of memory for a request");
        goto fail;
    }
    if ((st = mc_sampler_init(&q->sampler, &p, (int)e->vocab, err)) != MC_OK) goto fail;
    if (mc_sampler_needs_history(&p)) {
        if ((st = mc_seq_tokens_init((int)e->vocab, &q->hist, err)) != MC_OK) goto fail;
        if ((st = mc_seq_tokens_add_prompt(q->hist, req->prompt, (int)req->n_prompt, err)) != MC_OK)
            goto fail;
    }
    for (uint32_t i = 0; i < req->n_prompt; i++)
        q->tokens[i] = (uint32_t)req->prompt[i];
    q->n_prompt = q->n_tokens = req->n_prompt;
    q->max_tokens = req->max_tokens;
    q->n_stop = req->n_stop_ids;
    if (q->n_stop) memcpy(q->stop_ids, req->stop_ids, q->n_stop * sizeof *q->stop_ids);
    q->id = e->next_id++;
    q->state = RQ_WAITING;
    waiting_push_back(e, slot);
    e->n_held++;
    *id = q->id;
    return MC_OK;
fail:
    request_clear(q);
    return st;
}

static int find_slot(const mc_engine *e, uint64_t id) {
    for (uint32_t i = 0; i < e->max_requests; i++)
        if (e->rq[i].state != RQ_FREE && e->rq[i].id == id) return (int)i;
    return -1;
}

mc_status mc_engine_cancel(mc_engine *e, uint64_t id, mc_err *err) {
    int slot = id ? find_slot(e, id) : -1;
    if (slot < 0)
        return mc_err_set(err, MC_ERR_NOT_FOUND, "engine: no request %llu", (unsigned long long)id);
    mc_status st = ev_reserve(e, 1, err);
    if (st != MC_OK) return st;
    finish(e, (uint32_t)slot, MC_ENGINE_ABORT, -1, NULL, NULL);
    return MC_OK;
}

mc_status mc_engine_fail_running(mc_engine *e, const char *msg, mc_err *err) {
    mc_status st = ev_reserve(e, e->n_running, err);
    if (st != MC_OK) return st;
    snprintf(e->fail_msg, sizeof e->fail_msg, "%s", msg && msg[0] ? msg : "the step runner failed");
    mc_step_runner r = e->r;
    e->r.release = forget_nothing; /* the runner's sequences are gone with it */
    while (e->n_running > 0)
        finish(e, e->running[e->n_running - 1], MC_ENGINE_ERROR, -1, NULL, e->fail_msg);
    e->r = r;
    return MC_OK;
}

/* ---- one step ---- */

/* Chooses this step's entries (e->sched): decodes, prefill chunks,
 * admissions; reserves their blocks, preempting when decodes run out. */
static mc_status schedule(mc_engine *e, mc_err *err) {
    uint32_t budget = e->budget;
    bool preempted = false;
    mc_status st;
    e->n_sched = 0;
    /* 1. decodes, in admission order; a missing block preempts the newest */
    for (uint32_t i = 0; i < e->n_running && budget > 0; i++) {
        uint32_t slot = e->running[i];
        request *q = &e->rq[slot];
        if (q->n_tokens - q->n_computed != 1) continue;
        while (i < e->n_running && mc_kv_pool_blocks_needed(e->pool, q->seq_id, q->n_tokens) >
                                       mc_kv_pool_n_free(e->pool)) {
            preempt_last(e); /* q itself when it is the newest */
            preempted = true;
        }
        if (i == e->n_running) break; /* q was preempted: nothing after it runs */
        if ((st = mc_kv_pool_reserve(e->pool, q->seq_id, q->n_tokens, err)) != MC_OK) return st;
        e->sched[e->n_sched++] = (sched_entry){slot, 1};
        budget--;
    }
    /* 2. prefill chunks of running requests (their blocks are reserved) */
    for (uint32_t i = 0; i < e->n_running && budget > 0; i++) {
        uint32_t slot = e->running[i];
        request *q = &e->rq[slot];
        uint32_t left = q->n_tokens - q->n_computed;
        if (left < 2) continue;
        uint32_t c = left < budget ? left : budget;
        e->sched[e->n_sched++] = (sched_entry){slot, c};
        budget -= c;
    }
    /* 3. admissions, FCFS, the whole prompt's blocks each */
    while (!preempted && budget > 0 && e->n_waiting > 0 && e->n_running < e->max_running) {
        uint32_t slot = waiting_at(e, 0);
        request *q = &e->rq[slot];
        if (!mc_kv_pool_can_admit(e->pool, q->n_tokens)) break;
        uint64_t seq = e->next_seq++;
        if ((st = mc_kv_pool_reserve(e->pool, seq, q->n_tokens, err)) != MC_OK) return st;
        q->seq_id = seq;
        q->n_computed = 0;
        q->state = RQ_RUNNING;
        e->w_head = (e->w_head + 1) % e->max_requests;
        e->n_waiting--;
        e->running[e->n_running++] = slot;
        uint32_t c = q->n_tokens < budget ? q->n_tokens : budget;
        e->sched[e->n_sched++] = (sched_entry){slot, c};
        budget -= c;
    }
    return MC_OK;
}

/* Samples the LAST row of a request that finished its chunk (or, when row
 * is NULL, picks from the runner's k candidates cid / clg: the whole row's
 * pick, mc_sampler_pick_top; or, with k = 0, takes the runner's pick
 * *cid, run_draw) and emits the event; ends the request on a stop id, its
 * length or the context. */
static void sample_one(mc_engine *e, uint32_t slot, const float *row, const int32_t *cid,
                       const float *clg, int k) {
    request *q = &e->rq[slot];
    if (!q->prompt_counted) {
        e->st.prompt_tokens_total += q->n_prompt;
        q->prompt_counted = true;
    }
    int32_t tok = -1;
    mc_logprobs lp;
    bool want_lp = q->sampler.p.logprobs >= 0;
    mc_err serr;
    mc_err_clear(&serr);
    mc_status st = MC_OK;
    if (row)
        st = mc_sampler_pick(&q->sampler, row, (int)e->vocab, q->hist, e->scratch, &tok,
                             want_lp ? &lp : NULL, &serr);
    else if (k == 0 && (*cid < 0 || (uint32_t)*cid >= e->vocab)) /* the runner's pick */
        st = mc_err_set(&serr, MC_ERR_FORMAT, "the runner drew token %d, past the vocabulary "
                        "(%u)", (int)*cid, e->vocab);
    else if (k == 0)
        tok = *cid;
    else
        st = mc_sampler_pick_top(&q->sampler, cid, clg, k, (int)e->vocab, &tok, &serr);
    if (st == MC_OK && q->hist) st = mc_seq_tokens_add(q->hist, tok, &serr);
    if (st != MC_OK) {
        if (!e->msg[0]) snprintf(e->msg, sizeof e->msg, "%s", serr.msg);
        finish(e, slot, MC_ENGINE_ERROR, -1, NULL, e->msg);
        return;
    }
    q->tokens[q->n_tokens++] = (uint32_t)tok;
    e->st.generation_tokens_total++;
    long n_gen = (long)(q->n_tokens - q->n_prompt);
    mc_finish f = mc_stop_token(tok, n_gen, q->stop_ids, (int)q->n_stop, (long)q->max_tokens);
    mc_engine_finish why = f == MC_FINISH_STOP     ? MC_ENGINE_STOP
                           : f == MC_FINISH_LENGTH ? MC_ENGINE_LENGTH
                           : q->n_tokens >= q->cap ? MC_ENGINE_LENGTH
                                                   : MC_ENGINE_GO_ON;
    if (why != MC_ENGINE_GO_ON) {
        finish(e, slot, why, tok, want_lp ? &lp : NULL, NULL);
        return;
    }
    mc_engine_event ev = {.id = q->id, .token = tok, .has_logprobs = want_lp};
    if (want_lp) ev.lp = lp;
    ev_push(e, &ev);
}

mc_status mc_engine_step(mc_engine *e, mc_err *err) {
    e->msg[0] = '\0';
    if (e->n_ev > e->max_requests)
        return mc_err_set(err, MC_ERR_ARG, "engine: %u events not read (mc_engine_next_event)",
                          e->n_ev);
    if (!e->n_held) return MC_OK;
    mc_status st = ev_reserve(e, e->max_running, err);
    if (st != MC_OK) return st;
    if ((st = schedule(e, err)) != MC_OK) return st;
    if (!e->n_sched)
        return MC_OK; /* every decode waits for the budget: cannot happen, budget >= 1 */
    mc_step_plan plan;
    mc_step_plan_init(&plan);
    plan.step_id = e->step_id + 1;
    /* candidates when the step has picks and they decide every one
     * (mc_sampler_top_k): k the most any pick needs; else the runner's
     * picks when every pick needs only its row (mc_sampler_row_only); else
     * whole rows */
    bool top = e->r.run_top != NULL, draw = e->r.run_draw != NULL, picks = false;
    int top_k = 0;
    for (uint32_t k = 0; k < e->n_sched && (top || draw); k++) {
        const request *q = &e->rq[e->sched[k].slot];
        if (q->n_computed + e->sched[k].n != q->n_tokens) continue;
        picks = true;
        int need = mc_sampler_top_k(&q->sampler.p, (int)e->vocab);
        top = top && need > 0;
        top_k = need > top_k ? need : top_k;
        draw = draw && mc_sampler_row_only(&q->sampler.p);
    }
    top = top && picks;
    draw = draw && picks && !top;
    for (uint32_t k = 0; k < e->n_sched; k++) {
        const request *q = &e->rq[e->sched[k].slot];
        uint32_t n = e->sched[k].n, nb = 0;
        const uint32_t *table = mc_kv_pool_table(e->pool, q->seq_id, &nb);
        mc_logits_mode mode = q->n_computed + n == q->n_tokens ? MC_LOGITS_LAST : MC_LOGITS_NONE;
        uint32_t kq = top && mode == MC_LOGITS_LAST ? (uint32_t)top_k : 0;
        if ((st = mc_step_plan_add_seq(&plan, q->seq_id, q->n_computed, q->tokens + q->n_computed,
                                       n, table, nb, mode, kq, err)) == MC_OK &&
            draw && mode == MC_LOGITS_LAST) {
            mc_step_draw d = mc_sampler_draw_of(&q->sampler);
            st = mc_step_plan_set_draw(&plan, &d, err);
        }
        if (st != MC_OK) {
            mc_step_plan_free(&plan);
            return st; /* reservations only: the next step schedules them again */
        }
    }
    e->step_id++;
    e->st.steps_total++;
    mc_err rerr;
    mc_err_clear(&rerr);
    st = top    ? e->r.run_top(e->r.ctx, &plan, e->top_ids, e->top_lp, e->top_lg, &rerr)
         : draw ? e->r.run_draw(e->r.ctx, &plan, e->top_ids, e->draw_state, &rerr)
                : e->r.run(e->r.ctx, &plan, e->logits, &rerr);
    if (top && st == MC_OK) e->st.steps_top++;
    if (draw && st == MC_OK) e->st.steps_draw++;
    mc_step_plan_free(&plan);
    if (st != MC_OK) { /* the step's requests fail; the engine goes on */
        snprintf(e->msg, sizeof e->msg, "%s", rerr.msg[0] ? rerr.msg : mc_status_str(st));
        e->st.steps_failed++;
        for (uint32_t k = 0; k < e->n_sched; k++)
            finish(e, e->sched[k].slot, MC_ENGINE_ERROR, -1, NULL, e->msg);
        return MC_OK;
    }
    size_t row = 0;
    for (uint32_t k = 0; k < e->n_sched; k++) {
        request *q = &e->rq[e->sched[k].slot];
        q->n_computed += e->sched[k].n;
        if (q->n_computed == q->n_tokens) {
            if (top) {
                sample_one(e, e->sched[k].slot, NULL, e->top_ids + row * (size_t)top_k,
                           e->top_lg + row * (size_t)top_k, top_k);
            } else if (draw) { /* the runner's pick, and the stream after it */
                q->sampler.state = e->draw_state[row];
                sample_one(e, e->sched[k].slot, NULL, e->top_ids + row, NULL, 0);
            } else
                sample_one(e, e->sched[k].slot, e->logits + row * e->vocab, NULL, NULL, 0);
            row++;
        }
    }
    return MC_OK;
}

bool mc_engine_busy(const mc_engine *e) {
    return e->n_held > 0;
}

void mc_engine_stats_get(const mc_engine *e, mc_engine_stats *out) {
    *out = e->st;
    out->running = e->n_running;
    out->waiting = e->n_waiting;
    out->kv_blocks = mc_kv_pool_n_blocks(e->pool);
    out->kv_blocks_used = mc_kv_pool_n_used(e->pool);
    out->kv_usage = out->kv_blocks ? (double)out->kv_blocks_used / out->kv_blocks : 0;
}

uint32_t mc_engine_max_model_len(const mc_engine *e) {
    return e->max_len;
}

mc_status mc_engine_verify(const mc_engine *e, mc_err *err) {
    mc_status st = mc_kv_pool_verify(e->pool, err);
    if (st != MC_OK) return st;
    uint64_t blocks = 0;
    uint32_t held = 0;
    for (uint32_t i = 0; i < e->max_requests; i++) {
        const request *q = &e->rq[i];
        if (q->state == RQ_FREE) continue;
        held++;
        uint32_t nb = 0;
        const uint32_t *t = mc_kv_pool_table(e->pool, q->seq_id, &nb);
        if (q->state == RQ_WAITING && q->n_computed)
            return mc_err_set(err, MC_ERR_INTERNAL,
                              "engine: waiting request %llu has %u "
                              "positions computed",
                              (unsigned long long)q->id, q->n_computed);
        if (q->state == RQ_RUNNING && (!t || mc_kv_pool_blocks_for(e->pool, q->n_computed) > nb))
            return mc_err_set(err, MC_ERR_INTERNAL,
                              "engine: request %llu: %u blocks for %u "
                              "positions",
                              (unsigned long long)q->id, nb, q->n_computed);
        blocks += q->state == RQ_RUNNING ? nb : 0;
    }
    if (held != e->n_held || held != e->n_running + e->n_waiting ||
        blocks != mc_kv_pool_n_used(e->pool))
        return mc_err_set(err, MC_ERR_INTERNAL,
                          "engine: %u requests held (%u running, %u "
                          "waiting, counted %u), %llu blocks in tables, %u used",
                          e->n_held, e->n_running, e->n_waiting, held, (unsigned long long)blocks,
                          mc_kv_pool_n_used(e->pool));
    return MC_OK;
}
