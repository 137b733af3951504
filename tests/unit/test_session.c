/* test_session.c - the commands' lifecycle (worker/session.h): a session's
 * score, sequence steps and single-process forward against the per-call
 * reference forward (tests/ref) on a separately loaded copy; the backend's counters through
 * the session against the kernels' process-wide counters; errors named. */
#include "backend.h"
#include "check.h"
#include "kernels.h"
#include "model.h"
#include "ref.h"
#include "session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define B 2
#define T 5

/* Counts mismatches beyond tol (relative to 1 + |ref|), prints the first few. */
static int compare(const char *what, const float *got, const float *ref, size_t n, double tol) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= tol * (1.0 + fabs((double)ref[i])))) {
            if (bad < 5)
                fprintf(stderr, "%s[%zu]: got %.9g, reference %.9g\n", what, i, got[i], ref[i]);
            bad++;
        }
    }
    return bad;
}

static void test_run(const char *dir) {
    mc_err err;
    mc_err_clear(&err);
    mc_session *s = NULL;
    mc_model *ref = NULL;
    mc_kv *kv = NULL;
    float *got = NULL, *want = NULL;
    CHECK(mc_session_open(NULL, NULL, true, &s, &err) == MC_OK);
    if (!s) return;
    CHECK(mc_session_rank(s) == 0 && mc_session_size(s) == 1);
    CHECK(mc_session_desc(s) == NULL);
    mc_session_opts o = {.dir = dir, .stats = true};
    CHECK(mc_session_load(s, &o, &err) == MC_OK);
    CHECK(mc_model_load(dir, &ref, &err) == MC_OK);
    if (!ref || !mc_session_desc(s)) goto done;
    int V = mc_session_desc(s)->vocab;
    CHECK(V == ref->d.vocab);
    int64_t ids[B * T];
    for (int i = 0; i < B * T; i++)
        ids[i] = (i * 37 + 11) % V;
    got = calloc((size_t)B * T * V, sizeof *got);
    want = calloc((size_t)B * T * V, sizeof *want);
    CHECK(mc_kv_create(ref, T, &kv, &err) == MC_OK);
    if (!got || !want || !kv) goto done;
    for (int b = 0; b < B; b++) { /* reference: each row alone, all positions at once */
        mc_kv_reset(kv);
        CHECK(mc_model_forward(ref, kv, ids + b * T, T, want + (size_t)b * T * V, false, &err) ==
              MC_OK);
    }
    /* score, prefill of 2 then one token at a time */
    CHECK(mc_session_score(s, ids, B, T, 2, got, &err) == MC_OK);
    CHECK(compare("score", got, want, (size_t)B * T * V, 1e-5) == 0);

    /* a sequence: the prompt, then one step; the last logits each time */
    CHECK(mc_session_seq_init(s, T, &err) == MC_OK);
    CHECK(mc_session_seq_last(s, ids, T - 1, got, &err) == MC_OK);
    CHECK(compare("seq_last prompt", got, want + (size_t)(T - 2) * V, (size_t)V, 1e-5) == 0);
    CHECK(mc_session_seq_last(s, ids + T - 1, 1, got, &err) == MC_OK);
    CHECK(compare("seq_last step", got, want + (size_t)(T - 1) * V, (size_t)V, 1e-5) == 0);

    /* single-process forward with counters, as bench runs it */
    mc_session_seq_reset(s);
    mc_session_count(s, true);
    CHECK(mc_session_forward(s, ids + T, T, got, false, &err) == MC_OK);
    mc_session_counters c;
    mc_session_counters_get(s, &c);
    CHECK(c.bytes_read > 0 && c.macs > 0);
    CHECK(c.bytes_read == mc_kernels_bytes_read() && c.macs == mc_kernels_macs());
    mc_session_count(s, false);
    CHECK(compare("forward", got, want + (size_t)T * V, (size_t)T * V, 1e-5) == 0);

    /* candidates in place of logits: the k best of the very rows forward gives (bitwise),
     * ties to the lower id, and the row's log-sum-exp in double */
    {
        enum { K = 6 };
        int32_t cid[T * K];
        float cval[T * K];
        double clse[T];
        mc_session_seq_reset(s);
        CHECK(mc_session_forward_top(s, ids + T, T, K, cid, cval, clse, false, &err) == MC_OK);
        int bad = 0;
        for (int r = 0; r < T; r++) {
            const float *row = got + (size_t)r * V;
            char used[4096] = {0};
            for (int j = 0; j < K && V <= 4096; j++) {
                int b = -1;
                for (int v = 0; v < V; v++)
                    if (!used[v] && (b < 0 || row[v] > row[b]))
                        b = v;
                used[b] = 1;
                if (cid[r * K + j] != b || cval[r * K + j] != row[b]) {
                    if (bad++ < 5)
                        fprintf(stderr, "top row %d pick %d: got %d (%.9g), want %d (%.9g)\n", r,
                                j, cid[r * K + j], cval[r * K + j], b, row[b]);
                }
            }
            double m = cval[r * K], sum = 0;
            for (int v = 0; v < V; v++)
                sum += exp((double)row[v] - m);
            if (fabs(clse[r] - (m + log(sum))) > 1e-12 * fabs(m + log(sum)) && bad++ < 5)
                fprintf(stderr, "top row %d: lse %.17g, want %.17g\n", r, clse[r], m + log(sum));
        }
        CHECK(V <= 4096 && bad == 0);
        /* the last row only, k = 1: the argmax of seq_last's row */
        mc_session_seq_reset(s);
        CHECK(mc_session_seq_last(s, ids, T - 1, got, &err) == MC_OK);
        int am = 0;
        for (int v = 1; v < V; v++)
            am = got[v] > got[am] ? v : am;
        mc_session_seq_reset(s);
        int32_t one = -1;
        float onev = 0;
        CHECK(mc_session_seq_last_top(s, ids, T - 1, 1, &one, &onev, NULL, &err) == MC_OK);
        CHECK(one == am && onev == got[am]);
        mc_session_seq_reset(s);
        CHECK(mc_session_seq_last_top(s, ids, T - 1, 0, &one, &onev, NULL, &err) == MC_ERR_ARG &&
              strstr(err.msg, "k = 0"));
        mc_err_clear(&err);
        CHECK(mc_session_forward_top(s, ids, T - 1, MC_TOPK_MAX + 1, cid, cval, NULL, true, &err) ==
                  MC_ERR_ARG && strstr(err.msg, "k = 65"));
        mc_err_clear(&err);
    }
done:
    mc_kv_free(kv);
    mc_model_free(ref);
    free(got);
    free(want);
    mc_session_close(s, false);
}

static void test_backend_and_errors(const char *dir) {
    mc_err err;
    mc_err_clear(&err);
    mc_session *s = NULL;
    CHECK(mc_session_open(NULL, NULL, false, &s, &err) == MC_OK);
    if (!s) return;
    mc_kpath saved = mc_kernels_path();
    CHECK(mc_session_world(s) == NULL && mc_session_size(s) == 1);
    CHECK(strcmp(mc_session_kernels(s), mc_kpath_name(mc_kernels_path())) == 0);
    CHECK(strcmp(mc_session_features(s), mc_cpu_features()) == 0);
    mc_session_set_threads(s, 1);
    CHECK(mc_session_threads(s) == 1 && mc_kernels_threads() == 1);
    mc_session_set_threads(s, 0);
    CHECK(mc_session_set_kernels(s, "avx3", &err) == MC_ERR_ARG && strstr(err.msg, "avx3"));
    mc_err_clear(&err);
    CHECK(mc_session_set_kernels(s, "scalar", &err) == MC_OK);
    CHECK(strcmp(mc_session_kernels(s), "scalar") == 0);
    CHECK(mc_session_probe_fma_gflops(s, 1, 0.01) > 0);
    CHECK(mc_session_probe_read_gbps(s, 1 << 20, 1, 0.01) > 0);
    /* running before loading, a sequence before seq_init: named, no crash */
    float l[4];
    int64_t t = 0;
    CHECK(mc_session_seq_init(s, 4, &err) == MC_ERR_ARG && strstr(err.msg, "no model"));
    mc_err_clear(&err);
    CHECK(mc_session_forward(s, &t, 1, l, true, &err) == MC_ERR_ARG && strstr(err.msg, "sequence"));
    char missing[4200];
    snprintf(missing, sizeof missing, "%.4000s/no-such-model", dir);
    mc_session_opts o = {.dir = missing};
    mc_err_clear(&err);
    CHECK(mc_session_load(s, &o, &err) != MC_OK && strstr(err.msg, "no-such-model"));
    CHECK(mc_session_desc(s) == NULL);
    mc_session_close(s, false);
    mc_session_close(NULL, false);
    mc_kernels_set_path(saved);
}

int main(int argc, char **argv) {
    const char *fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "usage: test_session FIXTURES\n");
        return 2;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/qwen3-moe-tiny", fx);
    test_run(dir);
    test_backend_and_errors(dir);
    return check_report("test_session");
}
