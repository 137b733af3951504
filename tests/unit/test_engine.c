/* test_engine.c - the coordinator's serving engine (coordinator/engine.h)
 * over the in-process runner (worker/session.h's mc_session_runner), on
 * qwen3-moe-tiny (GQA) and deepseek-v3-tiny (MLA):
 *   (a) the greedy output of every request run alone equals its output
 *       among 7 concurrent requests of different lengths arriving at
 *       different steps, under a pool small enough to force preemption and
 *       a step budget small enough to force chunked prefill; a mismatch is
 *       accepted only at a near-tie (top-2 logprob margin of the alone run
 *       within 1e-5), and printed either way;
 *   (b) every request ends with the right reason: max_tokens -> "length"
 *       with exactly that many tokens, a stop id -> "stop" at its first
 *       occurrence, the context -> "length", a cancel -> "abort", a failed
 *       step -> "error" for its requests while the others go on unchanged;
 *   (c) the engine's bookkeeping is consistent after every step
 *       (mc_engine_verify) and the pool is empty at the end;
 *   (d) a prompt that leaves no room in the context, a token past the
 *       vocabulary and bad sampling parameters are refused at submit;
 *   (e) seeded sampling (temperature, top-k, top-p, a frequency penalty)
 *       gives the same tokens alone and batched;
 *   (f) greedy requests without logprobs are answered with the runner's
 *       candidates (one id a row, run_top; counted in steps_top) and give
 *       the tokens of the full rows (the same requests with logprobs, and
 *       a runner without run_top);
 *   (g) seeded sampling with top_k 20 / 40 / 60 and top-p beside greedy
 *       requests, without penalties or logprobs: answered with 60
 *       candidates a row, the tokens of the whole rows (a runner without
 *       run_top) draw for draw;
 *   (h) seeded top-p / min-p sampling without a top_k beside greedy
 *       requests: the runner's draws (run_draw: mc_sampler_pick on its rows
 *       with the request's stream), the tokens of the whole rows draw for
 *       draw; a failed draw step ends its requests, the others go on.
 * The batched run's generated tokens per second are printed. The unit
 * tests do not link mc_coordinator: engine.c and sampler.c are compiled
 * into this test (tests/unit/CMakeLists.txt). */
#include "check.h"
#include "engine.h"
#include "session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NREQ 7
#define MAXTOK 64
#define NEAR_TIE 1e-5

typedef struct {
    int32_t prompt[64];
    uint32_t n_prompt;
    uint32_t max_tokens;
    int32_t stop_id; /* -1: none */
    int arrive;      /* step before which it is submitted */
    bool seeded;     /* sampled with a seed, else greedy */
} req_t;

typedef struct {
    uint64_t id;
    int32_t tok[MAXTOK];
    double margin[MAXTOK]; /* top-1 minus top-2 logprob at each pick */
    int n;
    mc_engine_finish fin;
    int events_after_finish;
} out_t;

static mc_step_runner RUN;
static bool plain; /* greedy requests without logprobs (make_req) */
static bool topk_sampling; /* with plain: seeded requests sample with a top_k <= 64, no penalty */
static bool topp_sampling; /* with plain: seeded requests sample without a top_k, no penalty */
static int fail_at = -1; /* the runner's call that fails (-1: none) */
static int calls;

/* A runner over the in-process one that fails its fail_at-th call. */
static mc_status flaky_run(void *ctx, const mc_step_plan *plan, float *logits, mc_err *err) {
    (void)ctx;
    if (calls++ == fail_at)
        return mc_err_set(err, MC_ERR_INTERNAL, "injected step failure (step %llu)",
                          (unsigned long long)plan->step_id);
    return RUN.run(RUN.ctx, plan, logits, err);
}

/* The runner's draws (run_draw) as a worker makes them: the in-process
 * runner's whole rows, then mc_sampler_pick_draw with each entry's draw; fails
 * its fail_at-th call. */
static float *draw_rows;
static size_t draw_cap;
static mc_sample_scratch *draw_scr;
static mc_status test_run_draw(void *ctx, const mc_step_plan *plan, int32_t *tokens,
                               uint64_t *states, mc_err *err) {
    (void)ctx;
    if (calls++ == fail_at)
        return mc_err_set(err, MC_ERR_INTERNAL, "injected step failure (step %llu)",
                          (unsigned long long)plan->step_id);
    size_t rows = (size_t)mc_step_plan_logit_rows(plan), V = RUN.vocab;
    if (rows * V > draw_cap) {
        float *b = realloc(draw_rows, rows * V * sizeof *b);
        if (!b) return mc_err_set(err, MC_ERR_NOMEM, "test: out of memory for rows");
        draw_rows = b;
        draw_cap = rows * V;
    }
    mc_status st = RUN.run(RUN.ctx, plan, draw_rows, err);
    if (st == MC_OK && !draw_scr) st = mc_sample_scratch_init((int)V, &draw_scr, err);
    size_t row = 0;
    for (uint32_t i = 0; i < plan->n_seqs && st == MC_OK; i++) {
        const mc_step_seq *e = &plan->seqs[i];
        if (e->logits == MC_LOGITS_NONE) continue;
        if (!e->has_draw || e->logits != MC_LOGITS_LAST)
            return mc_err_set(err, MC_ERR_ARG, "test: seqs[%u] has logits but no draw", i);
        st = mc_sampler_pick_draw(&e->draw, draw_rows + row * V, (int)V, draw_scr, &tokens[row],
                                  &states[row], err);
        row++;
    }
    return st;
}

static mc_status flaky_release(void *ctx, uint64_t seq_id, mc_err *err) {
    (void)ctx;
    return RUN.release(RUN.ctx, seq_id, err);
}

static mc_engine_request make_req(const req_t *r) {
    mc_engine_request q = {
        .prompt = r->prompt, .n_prompt = r->n_prompt, .max_tokens = r->max_tokens};
    q.sampling = mc_sampler_defaults();
    q.sampling.logprobs = plain ? -1 : 2;
    if (r->seeded) {
        q.sampling.temperature = 0.9f;
        q.sampling.top_k = 50;
        q.sampling.top_p = 0.95f;
        q.sampling.frequency_penalty = 0.3f;
        q.sampling.seed = 1234;
        q.sampling.logprobs = -1;
    }
    if (topk_sampling && (r->seeded || r->n_prompt % 2)) {
        q.sampling.temperature = 0.9f;
        q.sampling.top_k = 20 + 20 * (int)(r->n_prompt % 3);
        q.sampling.top_p = 0.9f;
        q.sampling.frequency_penalty = 0.0f;
        q.sampling.seed = 77 + r->n_prompt;
    }
    if (topp_sampling && (r->seeded || r->n_prompt % 2)) {
        q.sampling.temperature = 0.8f + 0.1f * (float)(r->n_prompt % 3);
        q.sampling.top_k = 0;
        q.sampling.top_p = r->n_prompt % 2 ? 0.9f : 1.0f;
        q.sampling.min_p = r->n_prompt % 3 ? 0.02f : 0.0f;
        q.sampling.frequency_penalty = 0.0f;
        q.sampling.seed = 91 + r->n_prompt;
    }
    if (r->stop_id >= 0) {
        q.stop_ids = &r->stop_id;
        q.n_stop_ids = 1;
    }
    return q;
}

/* Takes every event into outs (by id). */
static void drain(mc_engine *e, out_t *outs, int n) {
    mc_engine_event ev;
    while (mc_engine_next_event(e, &ev)) {
        out_t *o = NULL;
        for (int i = 0; i < n; i++)
            if (outs[i].id == ev.id) o = &outs[i];
        CHECK(o != NULL);
        if (!o) continue;
        if (o->fin != MC_ENGINE_GO_ON) {
            o->events_after_finish++;
            continue;
        }
        if (ev.token >= 0 && o->n < MAXTOK) {
            o->tok[o->n] = ev.token;
            o->margin[o->n] = ev.has_logprobs && ev.lp.n_top >= 2
                                  ? ev.lp.top_logprobs[0] - ev.lp.top_logprobs[1]
                                  : INFINITY;
            o->n++;
        }
        o->fin = ev.finish;
        if (ev.finish == MC_ENGINE_ERROR) CHECK(ev.msg && ev.msg[0]);
    }
}

/* Runs reqs[n] through a fresh engine with opts; outs[n] get the tokens.
 * cancel_id >= 0: request cancel_id is cancelled before step cancel_step.
 * Returns the engine's stats; *secs the wall time of the steps. */
static mc_engine_stats run_engine(const mc_step_runner *runner, const mc_engine_opts *opts,
                                  const req_t *reqs, int n, out_t *outs, int cancel_id,
                                  int cancel_step, double *secs) {
    mc_engine_stats st;
    memset(&st, 0, sizeof st);
    memset(outs, 0, (size_t)n * sizeof *outs);
    mc_err err;
    mc_err_clear(&err);
    mc_engine *e = NULL;
    if (mc_engine_init(runner, opts, &e, &err) != MC_OK) {
        fprintf(stderr, "engine init: %s\n", err.msg);
        CHECK(0);
        return st;
    }
    int submitted = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int step = 0; step < 5000; step++) {
        for (int i = 0; i < n; i++)
            if (reqs[i].arrive == step) {
                mc_engine_request q = make_req(&reqs[i]);
                CHECK(mc_engine_submit(e, &q, &outs[i].id, &err) == MC_OK);
                submitted++;
            }
        if (cancel_id >= 0 && step == cancel_step)
            CHECK(mc_engine_cancel(e, outs[cancel_id].id, &err) == MC_OK);
        if (submitted == n && !mc_engine_busy(e)) break;
        mc_err_clear(&err);
        if (mc_engine_step(e, &err) != MC_OK) {
            fprintf(stderr, "engine step: %s\n", err.msg);
            CHECK(0);
            break;
        }
        drain(e, outs, n);
        mc_err_clear(&err);
        if (mc_engine_verify(e, &err) != MC_OK) {
            fprintf(stderr, "step %d: %s\n", step, err.msg);
            CHECK(0);
            break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    drain(e, outs, n);
    *secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    CHECK(!mc_engine_busy(e));
    mc_engine_stats_get(e, &st);
    CHECK(st.kv_blocks_used == 0 && st.running == 0 && st.waiting == 0); /* (c) */
    for (int i = 0; i < n; i++) {
        CHECK(outs[i].fin != MC_ENGINE_GO_ON);
        CHECK(outs[i].events_after_finish == 0);
    }
    mc_engine_free(e);
    return st;
}

/* The batched output against the alone one: equal up to want_n tokens, or
 * differing first at a near-tie of the alone run. Returns 1 when fine. */
static int same_tokens(const char *what, int r, const out_t *alone, const out_t *got, int want_n) {
    int k = 0;
    while (k < want_n && k < got->n && alone->tok[k] == got->tok[k])
        k++;
    if (k == want_n && got->n == want_n) return 1;
    if (k < want_n && k < got->n && alone->tok[k] != got->tok[k]) {
        double m = alone->margin[k];
        fprintf(stderr,
                "  %s: request %d: token %d differs (alone %d, batched %d), top-2 "
                "margin %.3g%s\n",
                what, r, k, alone->tok[k], got->tok[k], m,
                m <= NEAR_TIE ? " (a near-tie: accepted)" : "");
        return m <= NEAR_TIE;
    }
    fprintf(stderr, "  %s: request %d: %d tokens, expected %d\n", what, r, got->n, want_n);
    return 0;
}

static void test_model(mc_session *s, const char *name) {
    mc_err err;
    mc_err_clear(&err);
    mc_session_runner *sr = NULL;
    /* the runner: 64 blocks of 4 positions, steps of up to 64 tokens */
    if (mc_session_runner_open(s, 64, 4, 64, &sr, &err) != MC_OK) {
        fprintf(stderr, "%s: runner: %s\n", name, err.msg);
        CHECK(0);
        return;
    }
    mc_step_runner_session(sr, &RUN);
    uint32_t V = RUN.vocab;
    CHECK(RUN.block_size == 4 && RUN.n_blocks == 64 && RUN.max_pos == 256);

    /* 7 requests: prompt lengths, output lengths, arrival steps */
    static const uint32_t plen[NREQ] = {23, 5, 40, 13, 31, 8, 17};
    static const uint32_t gen[NREQ] = {24, 30, 12, 20, 16, 28, 40};
    static const int arrive[NREQ] = {2, 0, 0, 1, 3, 5, 9};
    req_t reqs[NREQ];
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (int i = 0; i < NREQ; i++) {
        memset(&reqs[i], 0, sizeof reqs[i]);
        reqs[i].n_prompt = plen[i];
        reqs[i].max_tokens = gen[i];
        reqs[i].stop_id = -1;
        reqs[i].arrive = arrive[i];
        reqs[i].seeded = i == 5; /* (e) */
        for (uint32_t j = 0; j < plen[i]; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            reqs[i].prompt[j] = (int32_t)(2 + x % (V - 2));
        }
    }
    /* each alone, on the runner's whole pool and budget */
    out_t alone[NREQ], got[NREQ];
    double secs;
    for (int i = 0; i < NREQ; i++) {
        req_t r = reqs[i];
        r.arrive = 0;
        run_engine(&RUN, NULL, &r, 1, &alone[i], -1, -1, &secs);
        CHECK(alone[i].n == (int)gen[i] && alone[i].fin == MC_ENGINE_LENGTH);
    }
    /* (b) request 6 stops at its alone output's 6th token */
    reqs[6].stop_id = alone[6].tok[5];
    int stop_n = 1;
    while (alone[6].tok[stop_n - 1] != reqs[6].stop_id)
        stop_n++;

    /* (a) together: 24 blocks of 4 (96 positions) for 7 requests of up to
     * 57 positions, 7 tokens per step */
    mc_engine_opts small = {.n_blocks = 24, .max_batch_tokens = 7};
    mc_engine_stats st = run_engine(&RUN, &small, reqs, NREQ, got, -1, -1, &secs);
    int ok = 1;
    long toks = 0;
    for (int i = 0; i < NREQ; i++) {
        int want = i == 6 ? stop_n : (int)gen[i];
        ok &= same_tokens(name, i, &alone[i], &got[i], want);
        CHECK(got[i].fin == (i == 6 ? MC_ENGINE_STOP : MC_ENGINE_LENGTH));
        toks += got[i].n;
    }
    CHECK(ok);
    CHECK(st.preemptions_total > 0); /* the small pool forced preemption */
    CHECK(st.generation_tokens_total == (uint64_t)toks);
    uint64_t ptoks = 0;
    for (int i = 0; i < NREQ; i++)
        ptoks += plen[i];
    CHECK(st.prompt_tokens_total == ptoks);
    printf("%s: 7 requests batched (24 blocks of 4, 7 tokens per step): %ld tokens in %llu "
           "steps, %llu preemptions, %.1f generated tokens/s; outputs %s the alone runs\n",
           name, toks, (unsigned long long)st.steps_total, (unsigned long long)st.preemptions_total,
           (double)toks / secs, ok ? "equal" : "DIFFER FROM");

    /* a roomy batched run (no preemption, one step holds them all) */
    mc_engine_opts roomy = {.max_batch_tokens = 64};
    st = run_engine(&RUN, &roomy, reqs, NREQ, got, -1, -1, &secs);
    ok = 1;
    for (int i = 0; i < NREQ; i++)
        ok &= same_tokens(name, i, &alone[i], &got[i], i == 6 ? stop_n : (int)gen[i]);
    CHECK(ok);
    CHECK(st.preemptions_total == 0);
    printf("%s: 7 requests batched (64 blocks, 64 tokens per step): %.1f generated tokens/s\n",
           name, (double)st.generation_tokens_total / secs);

    /* (f) plain greedy requests: candidates, the full rows' tokens */
    CHECK(st.steps_top == 0); /* every request above asked for logprobs */
    plain = true;
    st = run_engine(&RUN, &small, reqs, NREQ, got, -1, -1, &secs);
    ok = st.steps_top > 0;
    for (int i = 0; i < NREQ; i++)
        if (!reqs[i].seeded) ok &= same_tokens("candidates", i, &alone[i], &got[i],
                                               i == 6 ? stop_n : (int)gen[i]);
    CHECK(ok);
    printf("%s: plain greedy: %llu of %llu steps answered with candidates\n", name,
           (unsigned long long)st.steps_top, (unsigned long long)st.steps_total);
    mc_step_runner rows_only = RUN;
    rows_only.run_top = NULL;
    st = run_engine(&rows_only, &small, reqs, NREQ, got, -1, -1, &secs);
    ok = st.steps_top == 0;
    for (int i = 0; i < NREQ; i++)
        if (!reqs[i].seeded) ok &= same_tokens("rows only", i, &alone[i], &got[i],
                                               i == 6 ? stop_n : (int)gen[i]);
    CHECK(ok);

    /* (g) top-k sampling beside greedy: candidates decide every pick */
    topk_sampling = true;
    out_t cand[NREQ];
    mc_engine_stats sc = run_engine(&RUN, &small, reqs, NREQ, cand, -1, -1, &secs);
    st = run_engine(&rows_only, &small, reqs, NREQ, got, -1, -1, &secs);
    ok = sc.steps_top > 0 && st.steps_top == 0;
    int sampled = 0;
    for (int i = 0; i < NREQ; i++) {
        ok &= cand[i].n == got[i].n && cand[i].fin == got[i].fin;
        for (int t = 0; t < cand[i].n && t < got[i].n; t++)
            if (cand[i].tok[t] != got[i].tok[t]) {
                fprintf(stderr, "%s: request %d token %d: %d from candidates, %d from rows\n",
                        name, i, t, (int)cand[i].tok[t], (int)got[i].tok[t]);
                ok = 0;
                break;
            }
        sampled += reqs[i].seeded || reqs[i].n_prompt % 2 ? cand[i].n : 0;
    }
    CHECK(ok && sampled > 0);
    printf("%s: top-k sampling beside greedy: %llu of %llu steps answered with candidates, %d "
           "sampled tokens equal the whole rows'\n",
           name, (unsigned long long)sc.steps_top, (unsigned long long)sc.steps_total, sampled);
    topk_sampling = false;

    /* (h) top-p / min-p sampling without a top_k beside greedy: the
     * runner's draws (run_draw), the tokens of the whole rows draw for draw;
     * a failed draw step ends its requests, the others go on */
    topp_sampling = true;
    mc_step_runner drawing = RUN;
    drawing.run_top = NULL;
    drawing.run_draw = test_run_draw;
    calls = 0;
    out_t drawn[NREQ];
    sc = run_engine(&drawing, &small, reqs, NREQ, drawn, -1, -1, &secs);
    st = run_engine(&rows_only, &small, reqs, NREQ, got, -1, -1, &secs);
    ok = sc.steps_draw > 0 && sc.steps_top == 0 && st.steps_draw == 0;
    sampled = 0;
    for (int i = 0; i < NREQ; i++) {
        ok &= drawn[i].n == got[i].n && drawn[i].fin == got[i].fin;
        for (int t = 0; t < drawn[i].n && t < got[i].n; t++)
            if (drawn[i].tok[t] != got[i].tok[t]) {
                fprintf(stderr, "%s: request %d token %d: %d drawn by the runner, %d from rows\n",
                        name, i, t, (int)drawn[i].tok[t], (int)got[i].tok[t]);
                ok = 0;
                break;
            }
        sampled += reqs[i].seeded || reqs[i].n_prompt % 2 ? drawn[i].n : 0;
    }
    CHECK(ok && sampled > 0);
    printf("%s: top-p sampling beside greedy: %llu of %llu steps drawn by the runner, %d sampled "
           "tokens equal the whole rows'\n",
           name, (unsigned long long)sc.steps_draw, (unsigned long long)sc.steps_total, sampled);
    calls = 0;
    fail_at = 5;
    sc = run_engine(&drawing, &small, reqs, NREQ, drawn, -1, -1, &secs);
    fail_at = -1;
    int n_derr = 0;
    for (int i = 0; i < NREQ; i++)
        if (drawn[i].fin == MC_ENGINE_ERROR) n_derr++;
        else CHECK(drawn[i].n == got[i].n && memcmp(drawn[i].tok, got[i].tok,
                                                     (size_t)got[i].n * sizeof got[i].tok[0]) == 0);
    CHECK(n_derr >= 1 && n_derr < NREQ && sc.steps_failed == 1);
    topp_sampling = false;
    plain = false;

    /* (b) a failed step: its requests end with "error", the others go on */
    mc_step_runner flaky = RUN;
    flaky.run = flaky_run;
    flaky.run_top = NULL;
    flaky.release = flaky_release;
    calls = 0;
    fail_at = 6;
    st = run_engine(&flaky, &small, reqs, NREQ, got, -1, -1, &secs);
    fail_at = -1;
    int n_err = 0;
    for (int i = 0; i < NREQ; i++) {
        if (got[i].fin == MC_ENGINE_ERROR) {
            n_err++;
            continue;
        }
        CHECK(same_tokens("after a failed step", i, &alone[i], &got[i],
                          i == 6 ? stop_n : (int)gen[i]));
    }
    CHECK(n_err >= 1 && n_err < NREQ && st.steps_failed == 1);
    CHECK(st.requests_finished[MC_ENGINE_ERROR] == (uint64_t)n_err);

    /* (b) a cancel: "abort", its blocks back */
    st = run_engine(&RUN, &small, reqs, NREQ, got, 2, 8, &secs);
    CHECK(got[2].fin == MC_ENGINE_ABORT && st.requests_finished[MC_ENGINE_ABORT] == 1);

    /* (b) the context: max_model_len 30, prompt 25, max_tokens 0 -> 5 tokens */
    mc_engine_opts ctx30 = {.max_model_len = 30};
    req_t r = reqs[4];
    r.n_prompt = 25;
    r.max_tokens = 0;
    r.arrive = 0;
    run_engine(&RUN, &ctx30, &r, 1, got, -1, -1, &secs);
    CHECK(got[0].n == 5 && got[0].fin == MC_ENGINE_LENGTH);

    /* (d) refusals at submit */
    mc_engine *e = NULL;
    CHECK(mc_engine_init(&RUN, &ctx30, &e, &err) == MC_OK);
    if (e) {
        int32_t big[40] = {0};
        mc_engine_request q = {.prompt = big, .n_prompt = 30};
        q.sampling = mc_sampler_defaults();
        uint64_t id;
        mc_err_clear(&err);
        CHECK(mc_engine_submit(e, &q, &id, &err) == MC_ERR_ARG && id == 0);
        CHECK(strstr(err.msg, "maximum context length is 30") != NULL);
        printf("%s: refused: %s\n", name, err.msg);
        q.n_prompt = 40;
        CHECK(mc_engine_submit(e, &q, &id, &err) == MC_ERR_ARG);
        q.n_prompt = 29; /* the longest that fits */
        CHECK(mc_engine_submit(e, &q, &id, &err) == MC_OK && id != 0);
        CHECK(mc_engine_cancel(e, id, &err) == MC_OK);
        CHECK(mc_engine_cancel(e, id, &err) == MC_ERR_NOT_FOUND);
        big[3] = (int32_t)V;
        q.n_prompt = 5;
        mc_err_clear(&err);
        CHECK(mc_engine_submit(e, &q, &id, &err) == MC_ERR_ARG && strstr(err.msg, "prompt[3]"));
        big[3] = 0;
        q.sampling.top_p = 1.5f;
        mc_err_clear(&err);
        CHECK(mc_engine_submit(e, &q, &id, &err) == MC_ERR_ARG && strstr(err.msg, "top_p"));
        q.sampling.top_p = 1.0f;
        q.n_prompt = 0;
        CHECK(mc_engine_submit(e, &q, &id, &err) == MC_ERR_ARG);
        mc_engine_event ev;
        CHECK(mc_engine_next_event(e, &ev) && ev.finish == MC_ENGINE_ABORT && ev.token == -1);
        CHECK(!mc_engine_next_event(e, &ev));
        mc_engine_free(e);
    }
    mc_engine_opts bad = {.n_blocks = 65};
    e = NULL;
    CHECK(mc_engine_init(&RUN, &bad, &e, &err) == MC_ERR_ARG && !e);
    bad = (mc_engine_opts){.max_model_len = 257};
    CHECK(mc_engine_init(&RUN, &bad, &e, &err) == MC_ERR_ARG && !e);
    mc_session_runner_close(sr);
}

int main(int argc, char **argv) {
    const char *fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "usage: test_engine FIXTURES\n");
        return 2;
    }
    const char *models[] = {"qwen3-moe-tiny", "deepseek-v3-tiny"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/models/%s", fx, models[i]);
        mc_err err;
        mc_err_clear(&err);
        mc_session *s = NULL;
        mc_session_opts o = {.dir = dir};
        if (mc_session_open(NULL, NULL, false, &s, &err) != MC_OK ||
            mc_session_load(s, &o, &err) != MC_OK) {
            fprintf(stderr, "%s: %s\n", models[i], err.msg);
            CHECK(0);
            mc_session_close(s, false);
            continue;
        }
        /* a world of more than one rank is refused by the runner; here one */
        test_model(s, models[i]);
        mc_session_close(s, false);
    }
    free(draw_rows);
    mc_sample_scratch_free(draw_scr);
    return check_report("test_engine");
}
