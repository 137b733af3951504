/* test_service_group.c - the serving core over a real worker group
 * (coordinator/service.h, mc_service_start): `moecluster worker` alone, or
 * under mpirun with more ranks.
 *
 * usage: test_service_group MOECLUSTER FIXTURES RANKS [WORKER_ARGS...]
 *
 *   1. greedy and seeded requests sent together give the tokens of the
 *      same requests through an in-process service on this process's own
 *      session (same pool and budget); a difference is accepted only at a
 *      near-tie of the reference (top-2 logprob margin within 1e-5);
 *   2. rank 0's worker is SIGKILLed while requests run: every one ends
 *      with "error" within a bound (printed), the state goes DOWN and back
 *      to READY within a bound (printed), restarts == 1, and the requests
 *      then give the reference tokens again;
 *   3. rank 0 is SIGSTOPped while requests run: the step times out
 *      (step_timeout_ms 3000), the requests end with "error", the group is
 *      restarted (restarts == 2) and serves again;
 *   4. after mc_service_stop no process of the group is left (every
 *      process that carries this run's tag in its environment is gone)
 *      and this process has no child;
 *   5. (one rank only) a group that cannot start (a missing model folder)
 *      leaves the service FAILED after MC_SERVICE_MAX_RESTARTS tries, with
 *      the reason in mc_service_last_error;
 *   6. (one rank only) attaching to a worker started here: the reference
 *      tokens; the worker killed -> DOWN (submit refused); a new worker on
 *      the same address -> READY again, the same tokens, restarts == 1;
 *      the attached worker still runs after mc_service_stop.
 */
#include "check.h"
#include "engine.h"
#include "service.h"
#include "session.h"

#include <dirent.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NREQ 4
#define MAXTOK 512
#define NEAR_TIE 1e-5
#define KV_BLOCKS 96
#define KV_BS 8
#define BUDGET 64
#define ERROR_BOUND_S 10.0   /* kill -> every request's error event */
#define RESTART_BOUND_S 90.0 /* kill -> READY again */

typedef struct {
    int32_t tok[MAXTOK];
    double margin[MAXTOK];
    int n;
    mc_engine_finish fin;
    char msg[512];
    double t_end; /* CLOCK_MONOTONIC of the last event */
} out_t;

static char TAG[64]; /* MC_TEST_SERVICE_TAG=<pid>: marks this run's group */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void make_reqs(uint32_t V, int32_t prompts[NREQ][32], mc_engine_request *q, uint32_t gen) {
    static const uint32_t plen[NREQ] = {11, 5, 23, 17};
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (int i = 0; i < NREQ; i++) {
        for (uint32_t j = 0; j < plen[i]; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            prompts[i][j] = (int32_t)(2 + x % (V - 2));
        }
        q[i] = (mc_engine_request){
            .prompt = prompts[i], .n_prompt = plen[i], .max_tokens = gen + 4u * (uint32_t)i};
        q[i].sampling = mc_sampler_defaults();
        q[i].sampling.logprobs = 2;
        if (i == 1) {
            q[i].sampling.temperature = 0.7f;
            q[i].sampling.top_p = 0.9f;
            q[i].sampling.seed = 99;
        }
    }
}

/* Submits q[n] at once, reads every handle to its end. false when a
 * submit failed or an event did not come within 60 s. */
static bool run_reqs(mc_service *s, const mc_engine_request *q, int n, out_t *outs,
                     mc_service_req **keep) {
    mc_service_req *h[NREQ] = {0};
    bool ok = true;
    memset(outs, 0, (size_t)n * sizeof *outs);
    for (int i = 0; i < n; i++) {
        mc_err err;
        mc_err_clear(&err);
        if (mc_service_submit(s, &q[i], &h[i], &err) != MC_OK) {
            fprintf(stderr, "submit %d: %s\n", i, err.msg);
            ok = false;
        }
    }
    if (keep) { /* the caller reads them */
        memcpy(keep, h, (size_t)n * sizeof *h);
        return ok;
    }
    for (int i = 0; i < n; i++) {
        mc_service_event ev;
        while (h[i]) {
            int got = mc_service_req_next(h[i], &ev, 60000);
            if (got != 1) {
                fprintf(stderr, "request %d: no event within 60 s (%d)\n", i, got);
                ok = false;
                break;
            }
            out_t *o = &outs[i];
            if (ev.token >= 0 && o->n < MAXTOK) {
                o->margin[o->n] = ev.has_logprobs && ev.lp.n_top >= 2
                                      ? ev.lp.top_logprobs[0] - ev.lp.top_logprobs[1]
                                      : INFINITY;
                o->tok[o->n++] = ev.token;
            }
            if (ev.finish != MC_ENGINE_GO_ON) {
                o->fin = ev.finish;
                snprintf(o->msg, sizeof o->msg, "%s", ev.msg);
                o->t_end = now_s();
                break;
            }
        }
        mc_service_req_free(h[i]);
    }
    return ok;
}

static int same(const char *what, int r, const out_t *want, const out_t *got) {
    int k = 0;
    while (k < want->n && k < got->n && want->tok[k] == got->tok[k])
        k++;
    if (k == want->n && got->n == want->n && got->fin == want->fin) return 1;
    if (k < want->n && k < got->n) {
        double m = want->margin[k];
        fprintf(stderr, "  %s: request %d: token %d differs (want %d, got %d), margin %.3g%s\n",
                what, r, k, want->tok[k], got->tok[k], m,
                m <= NEAR_TIE ? " (a near-tie: accepted)" : "");
        return m <= NEAR_TIE;
    }
    fprintf(stderr, "  %s: request %d: %d tokens (%s: %s), want %d (%s)\n", what, r, got->n,
            mc_engine_finish_name(got->fin), got->msg, want->n, mc_engine_finish_name(want->fin));
    return 0;
}

/* Processes whose environment carries TAG (this run's workers), and this
 * process's children; prints them. */
static int leftovers(void) {
    int n = 0;
    DIR *d = opendir("/proc");
    if (!d) return 0;
    struct dirent *de;
    pid_t me = getpid();
    while ((de = readdir(d))) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0 || pid == me) continue;
        char path[64], buf[8192];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *rp = strrchr(buf, ')');
        char state = 0;
        long ppid = 0;
        if (!rp || sscanf(rp + 1, " %c %ld", &state, &ppid) != 2) continue;
        bool child = ppid == me;
        bool tagged = false;
        snprintf(path, sizeof path, "/proc/%ld/environ", pid);
        if ((f = fopen(path, "r"))) {
            len = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            for (size_t i = 0; i < len; i += strlen(buf + i) + 1) {
                buf[len] = '\0';
                if (!strcmp(buf + i, TAG)) tagged = true;
            }
        }
        if (child || tagged) {
            fprintf(stderr, "  left over: pid %ld (state %c, parent %ld)%s\n", pid, state, ppid,
                    child ? " (our child)" : "");
            n++;
        }
    }
    closedir(d);
    return n;
}

/* Starts `EXE worker` listening on listen (its own process group); the
 * address it prints goes to addr. Returns its pid, or -1. */
static pid_t spawn_worker(const char *exe, const char *model, const char *listen, char *addr,
                          size_t cap) {
    int p[2];
    if (pipe(p) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execl(exe, exe, "worker", "--model", model, "--listen", listen, "--kv-blocks", "96",
              "--kv-block-size", "8", "--max-batch-tokens", "64", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    addr[0] = '\0';
    char line[512];
    size_t n = 0;
    double t0 = now_s();
    while (pid > 0 && !addr[0] && now_s() - t0 < 60) {
        struct pollfd pf = {p[0], POLLIN, 0};
        if (poll(&pf, 1, 200) <= 0) continue;
        char c;
        if (read(p[0], &c, 1) != 1) break;
        if (c != '\n' && n < sizeof line - 1) {
            line[n++] = c;
            continue;
        }
        line[n] = '\0';
        n = 0;
        if (!strncmp(line, "listening on ", 13)) snprintf(addr, cap, "%.200s", line + 13);
    }
    close(p[0]); /* (the worker prints nothing more) */
    return addr[0] ? pid : -1;
}

static void reap(pid_t pid, int sig) {
    if (pid <= 0) return;
    kill(-pid, sig);
    waitpid(pid, NULL, 0);
}

/* An attached group: tokens as the reference; a killed worker -> errors,
 * DOWN; a new worker on the same address -> READY again (reconnected). */
static void attach_test(const char *exe, const char *model, const mc_engine_request *q,
                        const out_t *ref) {
    char addr[256], addr2[256];
    pid_t w = spawn_worker(exe, model, "tcp://127.0.0.1:*", addr, sizeof addr);
    CHECK(w > 0);
    if (w <= 0) return;
    mc_service_opts o = {.workers_addr = addr, .step_timeout_ms = 3000, .quiet = true};
    mc_err err;
    mc_err_clear(&err);
    mc_service *s = NULL;
    CHECK(mc_service_start(&o, &s, &err) == MC_OK);
    if (!s) {
        reap(w, SIGKILL);
        return;
    }
    CHECK(mc_service_wait_ready(s, 30000));
    out_t got[NREQ];
    CHECK(run_reqs(s, q, NREQ, got, NULL));
    int ok = 1;
    for (int i = 0; i < NREQ; i++)
        ok &= same("attached", i, &ref[i], &got[i]);
    CHECK(ok);
    reap(w, SIGKILL);
    double t0 = now_s();
    while (mc_service_get_state(s) == MC_SERVICE_READY && now_s() - t0 < 10)
        usleep(10000); /* the idle heartbeat notices (step timeout 3 s) */
    double t_down = now_s() - t0;
    CHECK(mc_service_get_state(s) == MC_SERVICE_DOWN);
    mc_service_req *h = NULL;
    mc_err_clear(&err);
    CHECK(mc_service_submit(s, &q[0], &h, &err) == MC_ERR_IO && !h);
    pid_t w2 = spawn_worker(exe, model, addr, addr2, sizeof addr2);
    CHECK(w2 > 0 && !strcmp(addr, addr2));
    CHECK(mc_service_wait_ready(s, 30000));
    double t_up = now_s() - t0;
    CHECK(run_reqs(s, q, NREQ, got, NULL));
    ok = 1;
    for (int i = 0; i < NREQ; i++)
        ok &= same("reattached", i, &ref[i], &got[i]);
    CHECK(ok);
    mc_service_stats st;
    mc_service_get_stats(s, &st);
    CHECK(st.restarts == 1);
    printf("6. attached to %s: same tokens; worker killed: DOWN after %.2f s; a new worker on "
           "the same address: READY after %.2f s, same tokens, restarts %llu\n",
           addr, t_down, t_up, (unsigned long long)st.restarts);
    mc_service_stop(s);
    /* the attached worker is the user's: still serving after stop */
    CHECK(kill(w2, 0) == 0 && waitpid(w2, NULL, WNOHANG) == 0);
    reap(w2, SIGTERM);
}

/* The reference: the same requests through an in-process service. */
static bool reference(const char *fx, const mc_engine_request *q, out_t *ref) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/qwen3-moe-tiny", fx);
    mc_err err;
    mc_err_clear(&err);
    mc_session *ses = NULL;
    mc_session_opts o = {.dir = dir};
    mc_session_runner *sr = NULL;
    mc_service *s = NULL;
    bool ok = false;
    if (mc_session_open(NULL, NULL, false, &ses, &err) != MC_OK ||
        mc_session_load(ses, &o, &err) != MC_OK ||
        mc_session_runner_open(ses, KV_BLOCKS, KV_BS, BUDGET, &sr, &err) != MC_OK) {
        fprintf(stderr, "reference: %s\n", err.msg);
    } else {
        mc_step_runner r;
        mc_step_runner_session(sr, &r);
        if (mc_service_start_runner(&r, NULL, &s, &err) != MC_OK)
            fprintf(stderr, "reference service: %s\n", err.msg);
        else
            ok = run_reqs(s, q, NREQ, ref, NULL);
        mc_service_stop(s);
    }
    mc_session_runner_close(sr);
    mc_session_close(ses, false);
    return ok;
}

/* Sends requests, waits for their first tokens, applies sig to rank 0, and
 * checks that every one ends with "error" and that the group comes back.
 * Returns the seconds from the signal to the last error event. */
static double fault(mc_service *s, const mc_engine_request *q, int sig, uint64_t restarts_want) {
    mc_service_stats st;
    mc_service_get_stats(s, &st);
    pid_t victim = (pid_t)st.worker_pid;
    mc_engine_request longq[NREQ];
    memcpy(longq, q, sizeof longq);
    for (int i = 0; i < NREQ; i++)
        longq[i].max_tokens = 600;
    mc_service_req *h[NREQ];
    out_t o[NREQ];
    CHECK(run_reqs(s, longq, NREQ, o, h));
    for (int i = 0; i < NREQ; i++) { /* each has started */
        mc_service_event ev;
        CHECK(h[i] && mc_service_req_next(h[i], &ev, 60000) == 1 && ev.token >= 0);
    }
    double t0 = now_s(), last = t0;
    CHECK(victim > 0 && kill(victim, sig) == 0);
    int n_err = 0;
    bool saw_down = false;
    for (int i = 0; i < NREQ; i++) {
        mc_service_event ev;
        int got;
        while ((got = mc_service_req_next(h[i], &ev, 60000)) == 1 && ev.finish == MC_ENGINE_GO_ON)
            ;
        if (got == 1 && ev.finish == MC_ENGINE_ERROR) {
            n_err++;
            if (i == 0) printf("  error event: %s\n", ev.msg);
        }
        last = now_s();
        mc_service_req_free(h[i]);
    }
    double to_err = last - t0;
    CHECK(n_err == NREQ && to_err < ERROR_BOUND_S);
    while (now_s() - t0 < RESTART_BOUND_S) {
        mc_service_state ss = mc_service_get_state(s);
        saw_down |= ss == MC_SERVICE_DOWN;
        if (ss == MC_SERVICE_READY) break;
        if (ss == MC_SERVICE_FAILED) break;
        usleep(5000);
    }
    double to_ready = now_s() - t0;
    mc_service_get_stats(s, &st);
    char why[512];
    mc_service_last_error(s, why, sizeof why);
    printf("  %s rank 0 (pid %d): %d of %d requests ended \"error\" %.2f s later; READY again "
           "after %.2f s (DOWN seen: %s), restarts %llu, new rank 0 pid %u; last error: %s\n",
           sig == SIGKILL ? "SIGKILL" : "SIGSTOP", (int)victim, n_err, NREQ, to_err, to_ready,
           saw_down ? "yes" : "no", (unsigned long long)st.restarts, st.worker_pid, why);
    CHECK(st.state == MC_SERVICE_READY && st.restarts == restarts_want);
    CHECK(st.worker_pid != 0 && (pid_t)st.worker_pid != victim);
    CHECK(st.engine.running == 0 && st.engine.kv_blocks_used == 0);
    return to_err;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: test_service_group MOECLUSTER FIXTURES RANKS [WORKER_ARGS...]\n");
        return 2;
    }
    const char *exe = argv[1], *fx = argv[2];
    uint32_t ranks = (uint32_t)atoi(argv[3]);
    snprintf(TAG, sizeof TAG, "MC_TEST_SERVICE_TAG=%d", (int)getpid());
    setenv("MC_TEST_SERVICE_TAG", TAG + strlen("MC_TEST_SERVICE_TAG="), 1);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0);
    setenv("MC_LOG", "warn", 0);
    signal(SIGPIPE, SIG_IGN);

    int32_t prompts[NREQ][32];
    mc_engine_request q[NREQ];
    make_reqs(1024, prompts, q, 24); /* qwen3-moe-tiny's vocabulary: 1024 */
    out_t ref[NREQ], got[NREQ];
    CHECK(reference(fx, q, ref));

    char model[1024];
    snprintf(model, sizeof model, "%s/models/qwen3-moe-tiny", fx);
    mc_service_opts o = {.model_dir = model,
                         .ranks = ranks,
                         .worker_args = (const char *const *)(argv + 4),
                         .n_worker_args = (size_t)(argc - 4),
                         .exe = exe,
                         .kv_blocks = KV_BLOCKS,
                         .kv_block_size = KV_BS,
                         .max_batch_tokens = BUDGET,
                         .load_timeout_ms = 120000,
                         .step_timeout_ms = 3000};
    mc_err err;
    mc_err_clear(&err);
    mc_service *s = NULL;
    double t0 = now_s();
    if (mc_service_start(&o, &s, &err) != MC_OK) {
        fprintf(stderr, "start: %s\n", err.msg);
        CHECK(0);
        return check_report("test_service_group");
    }
    CHECK(mc_service_get_state(s) == MC_SERVICE_LOADING ||
          mc_service_get_state(s) == MC_SERVICE_READY);
    mc_service_req *h = NULL;
    mc_err_clear(&err);
    if (mc_service_get_state(s) == MC_SERVICE_LOADING) {
        CHECK(mc_service_submit(s, &q[0], &h, &err) == MC_ERR_IO && !h);
        printf("while loading: refused: %s\n", err.msg);
    }
    bool ready = mc_service_wait_ready(s, 120000);
    CHECK(ready);
    mc_service_stats st;
    mc_service_get_stats(s, &st);
    printf("%u rank(s) ready after %.2f s: rank 0 pid %u, vocab %u, context %u\n", st.world_size,
           now_s() - t0, st.worker_pid, st.vocab, st.max_model_len);
    CHECK(st.world_size == ranks && st.worker_pid > 0 && st.vocab == 1024);
    if (ready) {
        /* 1. the reference tokens */
        CHECK(run_reqs(s, q, NREQ, got, NULL));
        int ok = 1;
        for (int i = 0; i < NREQ; i++)
            ok &= same("group", i, &ref[i], &got[i]);
        CHECK(ok);
        printf("1. %d requests through the group: %s the in-process service\n", NREQ,
               ok ? "equal to" : "DIFFERENT FROM");
        /* 2. a killed rank 0 */
        printf("2. a killed worker:\n");
        fault(s, q, SIGKILL, 1);
        CHECK(run_reqs(s, q, NREQ, got, NULL));
        ok = 1;
        for (int i = 0; i < NREQ; i++)
            ok &= same("after the restart", i, &ref[i], &got[i]);
        CHECK(ok);
        printf("   after the restart: %s\n", ok ? "the same tokens" : "DIFFERENT tokens");
        /* 3. a hung rank 0 */
        printf("3. a stopped worker (step timeout 3000 ms):\n");
        double t = fault(s, q, SIGSTOP, 2);
        CHECK(t >= 2.5); /* the timeout, not a faster path */
        CHECK(run_reqs(s, q, NREQ, got, NULL));
        ok = 1;
        for (int i = 0; i < NREQ; i++)
            ok &= same("after the second restart", i, &ref[i], &got[i]);
        CHECK(ok);
    }
    mc_service_get_stats(s, &st);
    printf("stats: %llu steps (%llu failed), %llu tokens, finished length %llu error %llu; "
           "ttft n %llu mean %.4f s, itl n %llu mean %.5f s, e2e n %llu\n",
           (unsigned long long)st.engine.steps_total, (unsigned long long)st.engine.steps_failed,
           (unsigned long long)st.engine.generation_tokens_total,
           (unsigned long long)st.engine.requests_finished[MC_ENGINE_LENGTH],
           (unsigned long long)st.engine.requests_finished[MC_ENGINE_ERROR],
           (unsigned long long)st.ttft.count, st.ttft.count ? st.ttft.sum / st.ttft.count : 0.0,
           (unsigned long long)st.itl.count, st.itl.count ? st.itl.sum / st.itl.count : 0.0,
           (unsigned long long)st.e2e.count);
    double ts = now_s();
    mc_service_stop(s);
    printf("4. stopped in %.2f s\n", now_s() - ts);
    usleep(200000); /* mpirun's ranks are reaped by mpirun, which is gone */
    CHECK(leftovers() == 0);

    /* 5. a group that cannot start */
    if (ranks <= 1) {
        mc_service_opts bad = o;
        bad.model_dir = "no-such-model-folder";
        bad.quiet = true;
        mc_err_clear(&err);
        s = NULL;
        ts = now_s();
        CHECK(mc_service_start(&bad, &s, &err) == MC_OK);
        if (s) {
            CHECK(!mc_service_wait_ready(s, 60000));
            char why[512];
            mc_service_last_error(s, why, sizeof why);
            printf("5. a missing model: state %s after %.1f s: %s\n",
                   mc_service_state_name(mc_service_get_state(s)), now_s() - ts, why);
            CHECK(mc_service_get_state(s) == MC_SERVICE_FAILED && strstr(why, "5 times"));
            mc_service_stop(s);
        }
        mc_service_opts none = {.ranks = 1};
        CHECK(mc_service_start(&none, &s, &err) == MC_ERR_ARG);
        printf("   no model: %s\n", err.msg);
        attach_test(exe, model, q, ref);
        CHECK(leftovers() == 0);
    }
    return check_report("test_service_group");
}
