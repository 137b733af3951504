/* test_worker.c - the control plane end to end: a client (coordinator/
 * workers.h) drives a running `moecluster worker` (started by
 * run_worker.py, one rank or several under mpirun) and checks every logits
 * row it gets against the reference forward (tests/ref: mc_model_forward
 * of each sequence alone, whole model, in this process).
 *
 * usage: test_worker run ADDR FIXTURES MODEL
 *        test_worker kill ADDR
 *
 * run: connect (waiting for the load), check the Hello against the model;
 *      schedules of several sequences (block tables from a pool this test
 *      owns, prefill chunks mixed with decode tokens, LAST / ALL / NONE
 *      logits, finished sequences released, and an id reused after its
 *      release in the same plan; one schedule asks for TOPK candidates a
 *      row instead: valid best ids of the reference row up to its noise,
 *      their log-probabilities the reference's; one for the workers' draws:
 *      greedy ones a best id, top-p ones an id of the reference's nucleus,
 *      up to its noise, and the random stream handed back one draw on);
 *      then refusals that must leave the worker
 *      serving: bytes that do not decode, another version, a request of the
 *      wrong kind, a block past the pool, a start position other than the
 *      known length, releasing an unknown sequence, entries asking for
 *      different top_k, a top_k past 64; a heartbeat; Shutdown.
 * kill: connect, run one step, SIGKILL the worker's rank 0 (the pid of its
 *      Hello), and check that the next step fails within the timeout with
 *      MC_ERR_IO naming the address.
 */
#include "control.h"
#include "kv_pool.h"
#include "model.h"
#include "ref.h"
#include "workers.h"

#include <math.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define NSEQ 6
#define MAXLEN 40
#define TOL 2e-6 /* as test_step_mpi: the executor against the reference forward */
#define LOAD_MS 120000
#define TOPK 4
#define KILL_MS 3000

static int g_fail, g_shown, V;
static double g_max_err;
static uint64_t g_rows;

typedef struct {
    int len;
    uint32_t tok[MAXLEN];
    float *ref; /* (len, V) */
} seq_t;
static seq_t seqs[NSEQ];

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "FAIL: ");                                                                 \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        g_fail++;                                                                                  \
    } while (0)

static uint64_t rng;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Row p of sequence s against the reference, relative to its largest logit. */
static void check_row(int s, int p, const float *got)
{
    const float *ref = seqs[s].ref + (size_t)p * V;
    double m = 0, d = 0;
    int at = 0;
    for (int v = 0; v < V; v++) {
        double x = fabs((double)ref[v]), e = fabs((double)got[v] - ref[v]);
        m = x > m ? x : m;
        if (!(e <= d)) { /* NaN counts */
            d = e;
            at = v;
        }
    }
    double rel = d / (m > 0 ? m : 1);
    g_rows++;
    g_max_err = rel > g_max_err || rel != rel ? rel : g_max_err;
    if (!(rel <= TOL)) {
        g_fail++;
        if (g_shown++ < 6)
            fprintf(stderr, "FAIL: seq %d pos %d: relative error %.3g at logit %d (got %.7g, "
                    "want %.7g)\n", s, p, rel, at, got[at], ref[at]);
    }
}

/* One random schedule on the worker over sequence ids base + s. A sequence
 * that finishes is released by the next plan (with its entries, or alone).
 * hold: the last finished ids are not released but handed back in carry;
 * a schedule given carry ids releases them in its first plan, which may
 * restart the same ids at position 0. */
/* A candidate row: ids[TOPK] and their log-probabilities against the
 * reference row of sequence s at position p. */
static void check_top(int s, int p, const int32_t *ids, const float *lp, const float *lg)
{
    const float *ref = seqs[s].ref + (size_t)p * V;
    double best[TOPK], m, lse;
    mc_ref_row_stats(ref, V, TOPK, best, &m, &lse);
    double tol = 4 * TOL * (m > 0 ? m : 1) + 1e-6, kth = best[TOPK - 1];
    for (int j = 0; j < TOPK; j++) {
        int id = ids[j];
        int ok = id >= 0 && id < V && fabs((double)lp[j] - (ref[id] - lse)) <= tol &&
                 fabs((double)lg[j] - ref[id]) <= tol && ref[id] >= kth - tol &&
                 (j == 0 || (lp[j] <= lp[j - 1] && lg[j] <= lg[j - 1] && ids[j] != ids[j - 1]));
        g_rows += j == 0;
        if (!ok) {
            g_fail++;
            if (g_shown++ < 6)
                fprintf(stderr, "FAIL: seq %d pos %d: candidate %d is id %d (logprob %.7g, logit "
                        "%.7g), the reference's logprob there %.7g, logit %.7g, its %d best end "
                        "at %.7g\n", s, p, j, id, lp[j], lg[j],
                        id >= 0 && id < V ? ref[id] - lse : NAN, id >= 0 && id < V ? ref[id] : NAN,
                        TOPK, kth);
        }
    }
}

/* The draw a schedule of draws gives sequence s at its pick: greedy for
 * even s, else temperature 0.7 and top_p 0.5 (no top_k). */
static mc_step_draw draw_for(int s, int pos)
{
    mc_step_draw d = {.temperature = s % 2 ? 0.7f : 0.0f, .top_k = 0, .top_p = s % 2 ? 0.5f : 1.0f,
                      .min_p = 0.0f, .state = 0x5DEECE66Dull * (uint64_t)(s + 1) + (uint64_t)pos};
    return d;
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The worker's pick (tok, and its stream after) for draw d from sequence
 * s's row at p, against the reference row: greedy, a best id up to the
 * noise and the stream untouched; sampling, an id of the reference's top-p
 * nucleus up to the noise and the stream one draw on (splitmix64's step). */
static void check_draw(int s, int p, const mc_step_draw *d, int32_t tok, uint64_t after)
{
    const float *ref = seqs[s].ref + (size_t)p * V;
    double best[1], m, lse;
    mc_ref_row_stats(ref, V, 1, best, &m, &lse);
    double tol = 4 * TOL * (m > 0 ? m : 1) + 1e-6, bound = best[0];
    uint64_t want = d->temperature > 0 ? d->state + 0x9e3779b97f4a7c15ull : d->state;
    if (d->temperature > 0) { /* the nucleus' smallest logit: its lower bound */
        double *x = malloc((size_t)V * sizeof *x), sum = 0, acc = 0;
        for (int v = 0; v < V; v++)
            x[v] = ref[v];
        qsort(x, (size_t)V, sizeof *x, cmp_desc);
        for (int v = 0; v < V; v++)
            sum += exp((x[v] - x[0]) / d->temperature);
        for (int v = 0; v < V; v++) {
            acc += exp((x[v] - x[0]) / d->temperature);
            bound = x[v];
            if (acc >= d->top_p * sum)
                break;
        }
        free(x);
    }
    int ok = tok >= 0 && tok < V && ref[tok] >= bound - tol && after == want;
    g_rows++;
    if (!ok) {
        g_fail++;
        if (g_shown++ < 6)
            fprintf(stderr, "FAIL: seq %d pos %d: drew id %d (reference logit %.7g, the draw's "
                    "bound %.7g), stream %llx after, want %llx\n", s, p, tok,
                    tok >= 0 && tok < V ? ref[tok] : NAN, bound, (unsigned long long)after,
                    (unsigned long long)want);
    }
}

static void run_schedule(mc_workers *w, int sched, uint64_t base, bool hold, uint64_t *carry,
                         size_t *n_carry)
{
    bool top = sched == 4; /* candidates instead of logits rows */
    bool drw = sched == 5; /* the workers' draws instead of logits rows (LAST only) */
    const mc_workers_info *info = mc_workers_get_info(w);
    mc_err e;
    mc_err_clear(&e);
    rng = 0x9E3779B97F4A7C15ull * (uint64_t)(sched + 1);
    uint32_t budget = 1 + rnd(info->max_batch_tokens < 48 ? info->max_batch_tokens : 48);
    mc_kv_pool *pool = NULL;
    if (mc_kv_pool_init(&pool, info->n_blocks, info->block_size, &e) != MC_OK) {
        FAIL("pool: %s", e.msg);
        return;
    }
    int done[NSEQ] = {0}, prompt[NSEQ], admitted[NSEQ] = {0};
    mc_logits_mode mode[NSEQ];
    for (int s = 0; s < NSEQ; s++) {
        prompt[s] = 1 + (int)rnd((uint32_t)seqs[s].len);
        mode[s] = rnd(2) && !drw ? MC_LOGITS_ALL : MC_LOGITS_LAST;
    }
    int32_t dtok[NSEQ];
    uint64_t dstate[NSEQ];
    float *logits = malloc((size_t)budget * V * sizeof *logits);
    int32_t *cid = malloc((size_t)budget * TOPK * sizeof *cid);
    float *clp = malloc((size_t)budget * TOPK * sizeof *clp);
    float *clg = malloc((size_t)budget * TOPK * sizeof *clg);
    uint64_t rel[NSEQ];
    size_t n_rel = *n_carry;
    memcpy(rel, carry, n_rel * sizeof *rel);
    *n_carry = 0;
    for (int step = 0;; step++) {
        mc_step_plan plan;
        mc_step_plan_init(&plan);
        int ent[NSEQ], cnt[NSEQ], ne = 0;
        uint32_t left = budget;
        for (int s = 0; s < NSEQ && left > 0; s++) {
            if (done[s] == seqs[s].len)
                continue;
            if (!admitted[s]) {
                if (rnd(3) == 0 && ne > 0)
                    continue;
                if (mc_kv_pool_reserve(pool, base + (uint64_t)s, (uint64_t)seqs[s].len, &e) !=
                    MC_OK) {
                    FAIL("reserve: %s", e.msg);
                    break;
                }
                admitted[s] = 1;
            }
            int d = done[s];
            uint32_t c = d < prompt[s] ? 1 + rnd((uint32_t)(prompt[s] - d) < left
                                                     ? (uint32_t)(prompt[s] - d)
                                                     : left)
                                       : 1;
            /* a prompt's last chunk and decode tokens want logits; ALL: every token */
            mc_logits_mode lm = mode[s] == MC_LOGITS_ALL ? MC_LOGITS_ALL
                                : d + (int)c >= prompt[s] ? MC_LOGITS_LAST
                                                          : MC_LOGITS_NONE;
            uint32_t n_tab;
            const uint32_t *tab = mc_kv_pool_table(pool, base + (uint64_t)s, &n_tab);
            if (mc_step_plan_add_seq(&plan, base + (uint64_t)s, (uint32_t)d, seqs[s].tok + d, c,
                                     tab, n_tab, lm, top && lm != MC_LOGITS_NONE ? TOPK : 0,
                                     &e) != MC_OK) {
                FAIL("plan: %s", e.msg);
                break;
            }
            mc_step_draw dr = draw_for(s, d + (int)c - 1);
            if (drw && lm == MC_LOGITS_LAST && mc_step_plan_set_draw(&plan, &dr, &e) != MC_OK) {
                FAIL("plan: %s", e.msg);
                break;
            }
            ent[ne] = s;
            cnt[ne++] = (int)c;
            left -= c;
        }
        if (ne == 0 && (n_rel == 0 || hold)) {
            memcpy(carry, rel, n_rel * sizeof *rel);
            *n_carry = n_rel;
            mc_step_plan_free(&plan);
            break;
        }
        plan.step_id = (uint64_t)sched * 1000 + (uint64_t)step;
        mc_status st = top   ? mc_workers_run_release_top(w, &plan, rel, n_rel, cid, clp, clg, &e)
                       : drw ? mc_workers_run_release_draw(w, &plan, rel, n_rel, dtok, dstate, &e)
                             : mc_workers_run_release(w, &plan, rel, n_rel, logits, &e);
        n_rel = 0;
        if (st != MC_OK) {
            FAIL("step %llu (%d entries): %s", (unsigned long long)plan.step_id, ne, e.msg);
            mc_step_plan_free(&plan);
            break;
        }
        const float *row = logits;
        size_t tr = 0; /* candidate rows, or draws */
        for (int i = 0; i < ne; i++) {
            int s = ent[i];
            mc_logits_mode lm = plan.seqs[i].logits;
            if (drw && lm == MC_LOGITS_LAST) {
                check_draw(s, done[s] + cnt[i] - 1, &plan.seqs[i].draw, dtok[tr], dstate[tr]);
                tr++;
            } else if (top && lm != MC_LOGITS_NONE) {
                int first = lm == MC_LOGITS_ALL ? 0 : cnt[i] - 1;
                for (int j = first; j < cnt[i]; j++, tr++)
                    check_top(s, done[s] + j, cid + tr * TOPK, clp + tr * TOPK, clg + tr * TOPK);
            } else if (lm == MC_LOGITS_ALL)
                for (int j = 0; j < cnt[i]; j++, row += V)
                    check_row(s, done[s] + j, row);
            else if (lm == MC_LOGITS_LAST) {
                check_row(s, done[s] + cnt[i] - 1, row);
                row += V;
            }
            done[s] += cnt[i];
            if (done[s] == seqs[s].len) {
                if (mc_kv_pool_release(pool, base + (uint64_t)s, &e) != MC_OK)
                    FAIL("pool release: %s", e.msg);
                rel[n_rel++] = base + (uint64_t)s;
            }
        }
        mc_step_plan_free(&plan);
    }
    free(logits);
    free(cid);
    free(clp);
    free(clg);
    mc_kv_pool_free(pool);
}

/* A request that must be refused with an Error answer naming `want`. */
static void expect_refusal(mc_workers *w, const char *what, mc_status st, const mc_err *e,
                           const char *want)
{
    if (st == MC_OK || st == MC_ERR_IO || !strstr(e->msg, want))
        FAIL("%s: want a refusal naming '%s', got %s: %s", what, want, mc_status_str(st), e->msg);
    else
        printf("ok: %s refused: %s\n", what, e->msg);
}

static void raw_refusal(mc_workers *w, const char *what, const uint8_t *bytes, size_t len,
                        const char *want)
{
    mc_err e;
    mc_err_clear(&e);
    ControlMessage *reply = NULL;
    mc_status st = mc_workers_request_raw(w, bytes, len, &reply, &e);
    if (st != MC_OK)
        FAIL("%s: no answer: %s", what, e.msg);
    else if (reply->body_case != CONTROL_MESSAGE__BODY_ERROR || !reply->error->message ||
             !strstr(reply->error->message, want))
        FAIL("%s: want an Error naming '%s', got a %s", what, want,
             mc_control_body_name(reply));
    else
        printf("ok: %s refused: %s\n", what, reply->error->message);
    mc_control_free(reply);
}

static int still_serves(mc_workers *w, const char *after)
{
    mc_err e;
    mc_err_clear(&e);
    uint64_t last = 0;
    if (mc_workers_heartbeat(w, &last, &e) != MC_OK) {
        FAIL("after %s the worker does not answer a heartbeat: %s", after, e.msg);
        return 0;
    }
    return 1;
}

static void refusals(mc_workers *w)
{
    const mc_workers_info *info = mc_workers_get_info(w);
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0x01, 0x02};
    raw_refusal(w, "bytes that do not decode", garbage, sizeof garbage, "does not decode");
    still_serves(w, "garbage");
    static const uint8_t v99[] = {0x08, 99, 0x2a, 0x00};
    raw_refusal(w, "version 99", v99, sizeof v99, "version 99");
    still_serves(w, "another version");
    /* a StepResult is not a request */
    StepResult r = STEP_RESULT__INIT;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_RESULT;
    msg.result = &r;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (mc_control_pack(&msg, &buf, &len) == MC_OK)
        raw_refusal(w, "a StepResult sent to the worker", buf, len, "not a request");
    free(buf);

    mc_err e;
    mc_err_clear(&e);
    uint32_t tok[2] = {1, 2}, blocks[1] = {info->n_blocks}; /* past the pool */
    mc_step_plan p;
    mc_step_plan_init(&p);
    mc_step_plan_add_seq(&p, 777, 0, tok, 2, blocks, 1, MC_LOGITS_LAST, 0, &e);
    p.step_id = 9001;
    expect_refusal(w, "a block past the pool", mc_workers_run(w, &p, NULL, &e), &e, "kv_blocks");
    mc_step_plan_free(&p);
    blocks[0] = 0;
    mc_step_plan_add_seq(&p, 778, 5, tok, 2, blocks, 1, MC_LOGITS_LAST, 0, &e);
    p.step_id = 9002;
    mc_err_clear(&e);
    expect_refusal(w, "a start position past the known length", mc_workers_run(w, &p, NULL, &e),
                   &e, "seqs[0]");
    mc_step_plan_free(&p);
    /* candidates: one k for the step, at most 64 */
    uint32_t tok3[3] = {1, 2, 3};
    mc_step_plan_add_seq(&p, 779, 0, tok, 2, blocks, 1, MC_LOGITS_LAST, 2, &e);
    mc_step_plan_add_seq(&p, 780, 0, tok3, 3, (uint32_t[]){1}, 1, MC_LOGITS_LAST, 3, &e);
    p.step_id = 9003;
    mc_err_clear(&e);
    int32_t ci[8];
    float cl[8];
    expect_refusal(w, "entries asking for different top_k",
                   mc_workers_run_release_top(w, &p, NULL, 0, ci, cl, NULL, &e), &e,
                   "different top_k");
    mc_step_plan_free(&p);
    if (info->vocab > 65) {
        mc_step_plan_add_seq(&p, 781, 0, tok, 2, blocks, 1, MC_LOGITS_LAST, 65, &e);
        p.step_id = 9004;
        mc_err_clear(&e);
        expect_refusal(w, "top_k 65", mc_workers_run_release_top(w, &p, NULL, 0, ci, cl, NULL, &e),
                       &e, "top_k 65");
        mc_step_plan_free(&p);
    }
    uint64_t unknown = 123456789;
    mc_err_clear(&e);
    expect_refusal(w, "releasing an unknown sequence", mc_workers_release(w, &unknown, 1, &e), &e,
                   "not known");
    still_serves(w, "refused plans");
}

static int do_kill(const char *addr)
{
    mc_err e;
    mc_err_clear(&e);
    mc_workers *w = NULL;
    if (mc_workers_connect(addr, LOAD_MS, &w, &e) != MC_OK) { /* waits for the load */
        fprintf(stderr, "FAIL: connect: %s\n", e.msg);
        return 1;
    }
    mc_workers_close(w);
    if (mc_workers_connect(addr, KILL_MS, &w, &e) != MC_OK) {
        fprintf(stderr, "FAIL: connect with %d ms: %s\n", KILL_MS, e.msg);
        return 1;
    }
    const mc_workers_info *info = mc_workers_get_info(w);
    uint32_t tok[3] = {1, 2, 3}, block = 0;
    mc_step_plan p;
    mc_step_plan_init(&p);
    mc_step_plan_add_seq(&p, 1, 0, tok, 3, &block, 1, MC_LOGITS_LAST, 0, &e);
    float *logits = malloc((size_t)info->vocab * sizeof *logits);
    int rc = 0;
    if (mc_workers_run(w, &p, logits, &e) != MC_OK) {
        fprintf(stderr, "FAIL: a step before the kill: %s\n", e.msg);
        rc = 1;
    }
    printf("killing the worker's rank 0 (pid %u)\n", info->pid);
    fflush(stdout);
    kill((pid_t)info->pid, SIGKILL);
    mc_step_plan_free(&p);
    mc_step_plan_add_seq(&p, 1, 3, tok, 1, &block, 1, MC_LOGITS_LAST, 0, &e);
    double t0 = now_s();
    mc_err_clear(&e);
    mc_status st = mc_workers_run(w, &p, logits, &e);
    double dt = now_s() - t0;
    if (st != MC_ERR_IO || !strstr(e.msg, addr) || dt > KILL_MS / 1000.0 + 2.0) {
        fprintf(stderr, "FAIL: after the kill: %s in %.2f s: %s\n", mc_status_str(st), dt, e.msg);
        rc = 1;
    } else {
        printf("ok: a killed worker fails the step in %.2f s (timeout %d ms): %s\n", dt, KILL_MS,
               e.msg);
    }
    mc_err_clear(&e);
    st = mc_workers_heartbeat(w, NULL, &e);
    if (st != MC_ERR_IO) {
        fprintf(stderr, "FAIL: the broken connection answers %s\n", mc_status_str(st));
        rc = 1;
    }
    mc_step_plan_free(&p);
    free(logits);
    mc_workers_close(w);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "kill"))
        return do_kill(argv[2]);
    if (argc != 5 || strcmp(argv[1], "run")) {
        fprintf(stderr, "usage: test_worker run ADDR FIXTURES MODEL | test_worker kill ADDR\n");
        return 2;
    }
    const char *addr = argv[2];
    mc_err e;
    mc_err_clear(&e);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", argv[3], argv[4]);
    mc_model *ref = NULL;
    if (mc_model_load(dir, &ref, &e) != MC_OK) {
        fprintf(stderr, "FAIL: %s\n", e.msg);
        return 1;
    }
    V = ref->d.vocab;
    int lens[NSEQ] = {MAXLEN, 19, 27, 11, 6, 2};
    for (int s = 0; s < NSEQ; s++) {
        seqs[s].len = lens[s];
        for (int j = 0; j < lens[s]; j++)
            seqs[s].tok[j] = (uint32_t)((37 * s + 101 * j + 7 * j * j + 5) % V);
        int64_t t64[MAXLEN];
        for (int j = 0; j < lens[s]; j++)
            t64[j] = seqs[s].tok[j];
        mc_kv *kv = NULL;
        seqs[s].ref = malloc((size_t)lens[s] * V * sizeof(float));
        if (!seqs[s].ref || mc_kv_create(ref, lens[s], &kv, &e) != MC_OK ||
            mc_model_forward(ref, kv, t64, lens[s], seqs[s].ref, false, &e) != MC_OK) {
            fprintf(stderr, "FAIL: reference: %s\n", e.msg);
            return 1;
        }
        mc_kv_free(kv);
    }
    mc_workers *w = NULL;
    double t0 = now_s();
    if (mc_workers_connect(addr, LOAD_MS, &w, &e) != MC_OK) {
        fprintf(stderr, "FAIL: connect: %s\n", e.msg);
        return 1;
    }
    const mc_workers_info *info = mc_workers_get_info(w);
    printf("connected to %s in %.2f s: %u rank(s), %s, vocab %u, %u layers, %u blocks of %u, "
           "budget %u, context %u\n",
           addr, now_s() - t0, info->world_size, info->model_type, info->vocab, info->n_layers,
           info->n_blocks, info->block_size, info->max_batch_tokens, info->max_pos);
    if ((int)info->vocab != V || (int)info->n_layers != ref->d.n_layers ||
        strcmp(info->model_type, ref->d.model_type) != 0)
        FAIL("Hello: vocab %u, %u layers, %s; the model has %d, %d, %s", info->vocab,
             info->n_layers, info->model_type, V, ref->d.n_layers, ref->d.model_type);
    mc_model_free(ref);

    uint64_t carry[NSEQ];
    size_t n_carry = 0;
    int schedules = 6;
    for (int i = 0; i < schedules && !g_fail; i++) {
        /* schedule 2 holds back its last releases; schedule 3 reuses its ids
         * and releases them in its first plan; schedule 4 asks for candidates,
         * schedule 5 for the workers' draws */
        uint64_t base = i == 3 ? 300 : 100 * (uint64_t)(i + 1);
        run_schedule(w, i, base, i == 2, carry, &n_carry);
    }
    printf("%llu logit rows checked, max relative error %.3g (tolerance %.1g)\n",
           (unsigned long long)g_rows, g_max_err, TOL);
    if (!g_fail)
        refusals(w);
    if (mc_workers_shutdown(w, &e) != MC_OK)
        FAIL("shutdown: %s", e.msg);
    mc_workers_close(w);
    for (int s = 0; s < NSEQ; s++)
        free(seqs[s].ref);
    printf("test_worker %s: %s\n", argv[4], g_fail ? "FAILURES" : "all passed");
    return g_fail ? 1 : 0;
}
