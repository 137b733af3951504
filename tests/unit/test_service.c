/* test_service.c - the serving core (coordinator/service.h) over the
 * in-process runner on qwen3-moe-tiny, driven by client threads:
 *   (a) 8 requests (different prompts, lengths, max_tokens; greedy and
 *       seeded) each run alone through a plain engine (the reference, as
 *       test_engine), alone through the service (must be identical) and
 *       from 8 concurrent client threads (identical, or first differing
 *       at a near-tie of the alone run: top-2 margin within 1e-5);
 *   (b) a cancel mid-way ends with an "abort" event; after the last event
 *       mc_service_req_next answers -1; freeing unfinished handles (before
 *       any event, after one) leaks nothing (ASan) and the service goes on;
 *   (c) refusals: a bad request is MC_ERR_ARG with the engine's line, one
 *       past max_requests is MC_ERR_OVERFLOW;
 *   (d) a runner that fails one step: exactly the requests of that step
 *       end with "error" (their tokens before it a prefix of the alone
 *       run), the others finish with the alone tokens;
 *   (e) the stats: finish reasons, generated tokens and the three
 *       histograms' counts match what the clients saw.
 * The unit tests do not link mc_coordinator: the service's sources join
 * this test (tests/unit/CMakeLists.txt). */
#include "check.h"
#include "engine.h"
#include "service.h"
#include "session.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NREQ 8
#define MAXTOK 96
#define NEAR_TIE 1e-5
#define WAIT_MS 60000 /* one event; a hang fails the test */

typedef struct {
    int32_t prompt[64];
    uint32_t n_prompt, max_tokens;
    bool seeded;
} req_t;

typedef struct {
    int32_t tok[MAXTOK];
    double margin[MAXTOK];
    int n;
    mc_engine_finish fin;
    char msg[512];
    int bad; /* events after the last, timeouts, wrong -1 */
} out_t;

/* ---- the runner wrappers: a gate and an injected failure ---- */

static mc_step_runner RUN;
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open = true;
static int calls, entered, fail_at = -1;
static uint32_t failed_seqs; /* entries of the failed plan */

static mc_status wrap_run(void *ctx, const mc_step_plan *plan, float *logits, mc_err *err) {
    (void)ctx;
    pthread_mutex_lock(&gate_mu);
    int me = calls++;
    entered++;
    pthread_cond_broadcast(&gate_cv);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    bool fail = me == fail_at;
    if (fail) failed_seqs = plan->n_seqs;
    pthread_mutex_unlock(&gate_mu);
    if (fail)
        return mc_err_set(err, MC_ERR_INTERNAL, "injected step failure (step %llu)",
                          (unsigned long long)plan->step_id);
    return RUN.run(RUN.ctx, plan, logits, err);
}

static mc_status wrap_release(void *ctx, uint64_t seq_id, mc_err *err) {
    (void)ctx;
    return RUN.release(RUN.ctx, seq_id, err);
}

static void gate_set(bool open) {
    pthread_mutex_lock(&gate_mu);
    gate_open = open;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* Waits until the runner was entered `n` times in all. */
static void wait_entered(int n) {
    pthread_mutex_lock(&gate_mu);
    while (entered < n)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

static mc_engine_request make_req(const req_t *r) {
    mc_engine_request q = {
        .prompt = r->prompt, .n_prompt = r->n_prompt, .max_tokens = r->max_tokens};
    q.sampling = mc_sampler_defaults();
    q.sampling.logprobs = 2;
    if (r->seeded) {
        q.sampling.temperature = 0.8f;
        q.sampling.top_k = 40;
        q.sampling.top_p = 0.9f;
        q.sampling.presence_penalty = 0.2f;
        q.sampling.seed = 77 + r->n_prompt;
    }
    return q;
}

static void take(out_t *o, int32_t token, bool has_lp, const mc_logprobs *lp, mc_engine_finish fin,
                 const char *msg) {
    if (o->fin != MC_ENGINE_GO_ON) {
        o->bad++;
        return;
    }
    if (token >= 0 && o->n < MAXTOK) {
        o->tok[o->n] = token;
        o->margin[o->n] =
            has_lp && lp->n_top >= 2 ? lp->top_logprobs[0] - lp->top_logprobs[1] : INFINITY;
        o->n++;
    }
    o->fin = fin;
    if (msg) snprintf(o->msg, sizeof o->msg, "%s", msg);
}

/* The reference: r alone through a plain engine on the runner. */
static void engine_alone(const req_t *r, out_t *o) {
    memset(o, 0, sizeof *o);
    mc_err err;
    mc_err_clear(&err);
    mc_engine *e = NULL;
    uint64_t id = 0;
    mc_engine_request q = make_req(r);
    if (mc_engine_init(&RUN, NULL, &e, &err) != MC_OK ||
        mc_engine_submit(e, &q, &id, &err) != MC_OK) {
        fprintf(stderr, "engine: %s\n", err.msg);
        CHECK(0);
        mc_engine_free(e);
        return;
    }
    while (mc_engine_busy(e)) {
        CHECK(mc_engine_step(e, &err) == MC_OK);
        mc_engine_event ev;
        while (mc_engine_next_event(e, &ev))
            take(o, ev.token, ev.has_logprobs, &ev.lp, ev.finish, ev.msg);
    }
    mc_engine_free(e);
}

/* Reads every event of h into o (then the -1 answer); frees h. */
static void read_all(mc_service_req *h, out_t *o) {
    mc_service_event ev;
    for (;;) {
        int got = mc_service_req_next(h, &ev, WAIT_MS);
        if (got != 1) {
            o->bad++;
            break;
        }
        take(o, ev.token, ev.has_logprobs, &ev.lp, ev.finish, ev.msg);
        if (ev.finish != MC_ENGINE_GO_ON) break;
    }
    if (mc_service_req_next(h, &ev, 0) != -1) o->bad++;
    mc_service_req_free(h);
}

static void service_one(mc_service *s, const req_t *r, out_t *o) {
    memset(o, 0, sizeof *o);
    mc_err err;
    mc_err_clear(&err);
    mc_service_req *h = NULL;
    mc_engine_request q = make_req(r);
    if (mc_service_submit(s, &q, &h, &err) != MC_OK) {
        fprintf(stderr, "submit: %s\n", err.msg);
        o->bad++;
        return;
    }
    read_all(h, o);
}

typedef struct {
    mc_service *s;
    const req_t *r;
    out_t *o;
} client_t;

static void *client_main(void *arg) {
    client_t *c = arg;
    service_one(c->s, c->r, c->o);
    return NULL;
}

/* Every request from its own thread at once. */
static void run_clients(mc_service *s, const req_t *reqs, out_t *outs, int n) {
    pthread_t th[NREQ];
    client_t c[NREQ];
    for (int i = 0; i < n; i++) {
        c[i] = (client_t){s, &reqs[i], &outs[i]};
        CHECK(pthread_create(&th[i], NULL, client_main, &c[i]) == 0);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

/* got against want: equal, or first differing at a near-tie of want. */
static int same_tokens(const char *what, int r, const out_t *want, const out_t *got, bool exact) {
    int k = 0;
    while (k < want->n && k < got->n && want->tok[k] == got->tok[k])
        k++;
    if (k == want->n && got->n == want->n && got->fin == want->fin) return 1;
    if (k < want->n && k < got->n) {
        double m = want->margin[k];
        bool ok = !exact && m <= NEAR_TIE;
        fprintf(stderr, "  %s: request %d: token %d differs (want %d, got %d), margin %.3g%s\n",
                what, r, k, want->tok[k], got->tok[k], m, ok ? " (a near-tie: accepted)" : "");
        return ok;
    }
    fprintf(stderr, "  %s: request %d: %d tokens (%s), want %d (%s)\n", what, r, got->n,
            mc_engine_finish_name(got->fin), want->n, mc_engine_finish_name(want->fin));
    return 0;
}

static uint64_t hist_total(const mc_hist *h) {
    uint64_t t = 0;
    for (int i = 0; i <= h->n_bounds; i++)
        t += h->counts[i];
    return t;
}

/* The histograms and counters against what the clients saw (outs[n]). */
static void check_stats(const char *what, mc_service *s, const out_t *outs, int n) {
    mc_service_stats st;
    mc_service_get_stats(s, &st);
    uint64_t toks = 0, with_tok = 0, fin[MC_ENGINE_FINISH_COUNT] = {0};
    for (int i = 0; i < n; i++) {
        toks += (uint64_t)outs[i].n;
        with_tok += outs[i].n > 0;
        fin[outs[i].fin]++;
    }
    int ok = st.engine.generation_tokens_total == toks && st.ttft.count == with_tok &&
             st.itl.count == toks - with_tok && st.e2e.count == (uint64_t)n &&
             hist_total(&st.ttft) == st.ttft.count && hist_total(&st.itl) == st.itl.count &&
             hist_total(&st.e2e) == st.e2e.count && st.engine.running == 0 &&
             st.engine.waiting == 0 && st.engine.kv_blocks_used == 0;
    for (int f = 1; f < MC_ENGINE_FINISH_COUNT; f++)
        ok &= st.engine.requests_finished[f] == fin[f];
    if (!ok)
        fprintf(stderr,
                "  %s: stats: %llu tokens (saw %llu), ttft %llu (want %llu), itl %llu (want "
                "%llu), e2e %llu (want %d), finished stop/length/error/abort %llu/%llu/%llu/%llu "
                "(saw %llu/%llu/%llu/%llu)\n",
                what, (unsigned long long)st.engine.generation_tokens_total,
                (unsigned long long)toks, (unsigned long long)st.ttft.count,
                (unsigned long long)with_tok, (unsigned long long)st.itl.count,
                (unsigned long long)(toks - with_tok), (unsigned long long)st.e2e.count, n,
                (unsigned long long)st.engine.requests_finished[1],
                (unsigned long long)st.engine.requests_finished[2],
                (unsigned long long)st.engine.requests_finished[3],
                (unsigned long long)st.engine.requests_finished[4], (unsigned long long)fin[1],
                (unsigned long long)fin[2], (unsigned long long)fin[3], (unsigned long long)fin[4]);
    CHECK(ok);
}

static mc_service *start(const mc_step_runner *r, const mc_engine_opts *o) {
    mc_err err;
    mc_err_clear(&err);
    mc_service *s = NULL;
    if (mc_service_start_runner(r, o, &s, &err) != MC_OK) {
        fprintf(stderr, "service: %s\n", err.msg);
        CHECK(0);
        return NULL;
    }
    CHECK(mc_service_wait_ready(s, 1000) && mc_service_get_state(s) == MC_SERVICE_READY);
    return s;
}

static void test(mc_session_runner *sr) {
    mc_step_runner_session(sr, &RUN);
    mc_step_runner wrap = RUN;
    wrap.run = wrap_run;
    wrap.release = wrap_release;
    uint32_t V = RUN.vocab;
    static const uint32_t plen[NREQ] = {23, 5, 40, 13, 31, 8, 17, 3};
    static const uint32_t gen[NREQ] = {24, 30, 12, 20, 16, 28, 40, 9};
    req_t reqs[NREQ];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < NREQ; i++) {
        memset(&reqs[i], 0, sizeof reqs[i]);
        reqs[i].n_prompt = plen[i];
        reqs[i].max_tokens = gen[i];
        reqs[i].seeded = i % 3 == 1;
        for (uint32_t j = 0; j < plen[i]; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            reqs[i].prompt[j] = (int32_t)(2 + x % (V - 2));
        }
    }
    out_t ref[NREQ], got[NREQ];
    for (int i = 0; i < NREQ; i++) {
        engine_alone(&reqs[i], &ref[i]);
        CHECK(ref[i].n == (int)gen[i] && ref[i].fin == MC_ENGINE_LENGTH);
    }

    /* (a) alone through the service, then 8 client threads at once */
    mc_service *s = start(&wrap, NULL);
    if (!s) return;
    int ok = 1;
    for (int i = 0; i < NREQ; i++) {
        service_one(s, &reqs[i], &got[i]);
        ok &= same_tokens("service alone", i, &ref[i], &got[i], true) && got[i].bad == 0;
    }
    CHECK(ok);
    check_stats("alone", s, got, NREQ);
    mc_service_stop(s);

    s = start(&wrap, NULL);
    if (!s) return;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run_clients(s, reqs, got, NREQ);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ok = 1;
    long toks = 0;
    for (int i = 0; i < NREQ; i++) {
        ok &= same_tokens("8 clients", i, &ref[i], &got[i], false) && got[i].bad == 0;
        toks += got[i].n;
    }
    CHECK(ok);
    check_stats("8 clients", s, got, NREQ);
    mc_service_stats st;
    mc_service_get_stats(s, &st);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("8 client threads: %ld tokens in %.3f s (%.1f tokens/s), %llu steps; outputs %s the "
           "alone runs; ttft mean %.4f s, itl mean %.5f s, e2e mean %.4f s\n",
           toks, secs, (double)toks / secs, (unsigned long long)st.engine.steps_total,
           ok ? "equal" : "DIFFER FROM", st.ttft.sum / (double)st.ttft.count,
           st.itl.count ? st.itl.sum / (double)st.itl.count : 0.0,
           st.e2e.sum / (double)st.e2e.count);

    /* (b) a cancel mid-way; handles freed unfinished */
    mc_err err;
    mc_err_clear(&err);
    req_t lng = reqs[2];
    lng.max_tokens = 80;
    mc_engine_request q = make_req(&lng);
    mc_service_req *h = NULL;
    CHECK(mc_service_submit(s, &q, &h, &err) == MC_OK && h && mc_service_req_id(h) > 0);
    if (h) {
        out_t o;
        memset(&o, 0, sizeof o);
        mc_service_event ev;
        for (int k = 0; k < 3; k++)
            if (mc_service_req_next(h, &ev, WAIT_MS) == 1)
                take(&o, ev.token, ev.has_logprobs, &ev.lp, ev.finish, ev.msg);
        mc_service_req_cancel(h);
        mc_service_req_cancel(h); /* twice is fine */
        read_all(h, &o);
        CHECK(o.fin == MC_ENGINE_ABORT && o.n >= 3 && o.n < 80 && o.bad == 0);
        printf("cancel after 3 tokens: %d tokens, then \"%s\"\n", o.n,
               mc_engine_finish_name(o.fin));
    }
    mc_service_req *h1 = NULL, *h2 = NULL;
    CHECK(mc_service_submit(s, &q, &h1, &err) == MC_OK);
    CHECK(mc_service_submit(s, &q, &h2, &err) == MC_OK);
    mc_service_req_free(h1); /* before any event */
    if (h2) {
        mc_service_event ev;
        CHECK(mc_service_req_next(h2, &ev, WAIT_MS) == 1);
    }
    mc_service_req_free(h2); /* after one */
    mc_service_req_free(NULL);
    out_t again;
    service_one(s, &reqs[0], &again); /* the service goes on */
    CHECK(same_tokens("after frees", 0, &ref[0], &again, false) && again.bad == 0);
    /* a handle held over mc_service_stop gets the abort */
    gate_set(false);
    calls = entered = 0;
    mc_service_req *held = NULL;
    CHECK(mc_service_submit(s, &q, &held, &err) == MC_OK);
    wait_entered(1);
    mc_service_req *queued = NULL;
    CHECK(mc_service_submit(s, &q, &queued, &err) == MC_OK);
    gate_set(true);
    mc_service_stop(s);
    out_t oh, oq;
    memset(&oh, 0, sizeof oh);
    memset(&oq, 0, sizeof oq);
    if (held) read_all(held, &oh);
    if (queued) read_all(queued, &oq);
    CHECK(oh.fin == MC_ENGINE_ABORT && oq.fin == MC_ENGINE_ABORT && oh.bad == 0 && oq.bad == 0);

    /* (c) refusals */
    mc_engine_opts two = {.max_requests = 2};
    s = start(&wrap, &two);
    if (!s) return;
    gate_set(false);
    calls = entered = 0;
    mc_service_req *a = NULL, *b = NULL, *c = NULL;
    CHECK(mc_service_submit(s, &q, &a, &err) == MC_OK);
    CHECK(mc_service_submit(s, &q, &b, &err) == MC_OK);
    mc_err_clear(&err);
    CHECK(mc_service_submit(s, &q, &c, &err) == MC_ERR_OVERFLOW && !c);
    printf("refused: %s\n", err.msg);
    mc_engine_request badq = q;
    badq.n_prompt = 0;
    mc_err_clear(&err);
    CHECK(mc_service_submit(s, &badq, &c, &err) == MC_ERR_ARG && !c);
    printf("refused: %s\n", err.msg);
    int32_t bad_prompt[3] = {1, (int32_t)V, 2};
    badq = q;
    badq.prompt = bad_prompt;
    badq.n_prompt = 3;
    mc_err_clear(&err);
    CHECK(mc_service_submit(s, &badq, &c, &err) == MC_ERR_ARG && strstr(err.msg, "prompt[1]"));
    printf("refused: %s\n", err.msg);
    badq = q;
    badq.sampling.top_p = 2.0f;
    mc_err_clear(&err);
    CHECK(mc_service_submit(s, &badq, &c, &err) == MC_ERR_ARG && strstr(err.msg, "top_p"));
    gate_set(true);
    mc_service_req_free(a);
    mc_service_req_free(b);
    mc_service_stop(s);

    /* (d) a failed step: the first step holds request 0 alone and fails */
    s = start(&wrap, NULL);
    if (!s) return;
    gate_set(false);
    calls = entered = 0;
    fail_at = 0;
    mc_service_req *hs[NREQ] = {0};
    mc_engine_request q0 = make_req(&reqs[0]);
    CHECK(mc_service_submit(s, &q0, &hs[0], &err) == MC_OK);
    wait_entered(1);
    for (int i = 1; i < NREQ; i++) {
        mc_engine_request qi = make_req(&reqs[i]);
        CHECK(mc_service_submit(s, &qi, &hs[i], &err) == MC_OK);
    }
    gate_set(true);
    ok = 1;
    for (int i = 0; i < NREQ; i++) {
        memset(&got[i], 0, sizeof got[i]);
        if (hs[i]) read_all(hs[i], &got[i]);
        if (i > 0) ok &= same_tokens("after a failed first step", i, &ref[i], &got[i], false);
    }
    CHECK(ok && failed_seqs == 1);
    CHECK(got[0].fin == MC_ENGINE_ERROR && got[0].n == 0 && strstr(got[0].msg, "injected"));
    printf("failed step: request 0 ended \"%s\" (%s); the other 7 finished\n",
           mc_engine_finish_name(got[0].fin), got[0].msg);
    check_stats("failed first step", s, got, NREQ);
    mc_service_stop(s);

    /* (d) a failed step among 8 concurrent clients */
    s = start(&wrap, NULL);
    if (!s) return;
    calls = entered = 0;
    fail_at = 12;
    run_clients(s, reqs, got, NREQ);
    fail_at = -1;
    int n_err = 0;
    ok = 1;
    for (int i = 0; i < NREQ; i++) {
        if (got[i].fin == MC_ENGINE_ERROR) {
            n_err++;
            out_t pre = got[i]; /* its tokens before the error: a prefix of the alone run */
            pre.fin = ref[i].fin;
            out_t r = ref[i];
            r.n = pre.n;
            ok &= same_tokens("before the error", i, &r, &pre, false);
            continue;
        }
        ok &= same_tokens("beside a failed step", i, &ref[i], &got[i], false);
    }
    CHECK(ok && n_err >= 1 && (uint32_t)n_err == failed_seqs);
    printf("failed step 12 of 8 clients: %d requests of that step ended \"error\", %d finished\n",
           n_err, NREQ - n_err);
    check_stats("failed step", s, got, NREQ);
    mc_service_stop(s);
    mc_service_stop(NULL);
}

int main(int argc, char **argv) {
    const char *fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "usage: test_service FIXTURES\n");
        return 2;
    }
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/qwen3-moe-tiny", fx);
    mc_err err;
    mc_err_clear(&err);
    mc_session *ses = NULL;
    mc_session_opts o = {.dir = dir};
    mc_session_runner *sr = NULL;
    if (mc_session_open(NULL, NULL, false, &ses, &err) != MC_OK ||
        mc_session_load(ses, &o, &err) != MC_OK ||
        mc_session_runner_open(ses, 64, 4, 64, &sr, &err) != MC_OK) {
        fprintf(stderr, "qwen3-moe-tiny: %s\n", err.msg);
        CHECK(0);
    } else {
        test(sr);
    }
    mc_session_runner_close(sr);
    mc_session_close(ses, false);
    return check_report("test_service");
}
