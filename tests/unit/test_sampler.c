/* test_sampler.c - the coordinator's sampler (coordinator/sampler.h) on
 * crafted logits whose results are known exactly:
 *   - greedy: argmax, ties to the lowest id, NaN ignored; top_k = 1 equals
 *     greedy on random vectors with ties;
 *   - filters: top-k, top-p (on the renormalised top-k set), min-p keep
 *     exactly the expected ids over 20000 seeds, and the frequencies match
 *     the renormalised probabilities within 5 sigma; temperature scaling
 *     likewise;
 *   - penalties: repetition, frequency, presence and logit_bias change the
 *     logits exactly as the formulas say (read back through logprobs);
 *   - logprobs equal a log_softmax computed here in long double within
 *     1e-6, in both modes, top ids sorted with ties to the lowest id;
 *   - the same seed gives the same ids;
 *   - bad parameters are refused with the field's name;
 *   - stop ids / max_tokens, and the stop-string scanner: a stop string
 *     split over tokens, a held-back partial match, several and overlapping
 *     stop strings, and byte-by-byte streaming equal to one scan.
 * The unit tests do not link mc_coordinator, so the sampler's one source
 * file is compiled into this test. */
#include "../../coordinator/sampler.c"
#include "check.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

#define NDRAW 20000

static uint64_t rng = 12345;
static double urand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}

static int32_t pick1(const mc_sampler_params *p, const float *logits, int V, const mc_seq_tokens *h,
                     mc_logprobs *lp)
{
    mc_sampler s = {0};
    mc_sample_scratch *w = NULL;
    mc_err err;
    mc_err_clear(&err);
    int32_t id = -1;
    if (mc_sampler_init(&s, p, V, &err) != MC_OK || mc_sample_scratch_init(V, &w, &err) != MC_OK ||
        mc_sampler_pick(&s, logits, V, h, w, &id, lp, &err) != MC_OK)
        fprintf(stderr, "pick1: %s\n", err.msg);
    mc_sample_scratch_free(w);
    return id;
}

/* draws NDRAW tokens, one per seed 0..NDRAW-1; every id with want[i] == 0
 * must never appear, the others within 5 sigma of NDRAW * want[i] */
static void check_freq(const char *what, mc_sampler_params p, const float *logits, int V,
                       const double *want)
{
    mc_sample_scratch *w = NULL;
    mc_err err;
    mc_err_clear(&err);
    if (mc_sample_scratch_init(V, &w, &err) != MC_OK) {
        CHECKF(0, "%s: %s", what, err.msg);
        return;
    }
    long cnt[64] = {0};
    for (int i = 0; i < NDRAW; i++) {
        p.seed = (uint64_t)i;
        mc_sampler s = {0};
        int32_t id = -1;
        if (mc_sampler_init(&s, &p, V, &err) != MC_OK ||
            mc_sampler_pick(&s, logits, V, NULL, w, &id, NULL, &err) != MC_OK) {
            CHECKF(0, "%s: %s", what, err.msg);
            break;
        }
        if (id >= 0 && id < V)
            cnt[id]++;
    }
    for (int i = 0; i < V; i++) {
        double e = NDRAW * want[i], sd = sqrt(NDRAW * want[i] * (1 - want[i]));
        if (want[i] == 0)
            CHECKF(cnt[i] == 0, "%s: id %d drawn %ld times, expected never", what, i, cnt[i]);
        else
            CHECKF(fabs(cnt[i] - e) <= 5 * sd + 1e-9,
                   "%s: id %d drawn %ld times, expected %.1f +- %.1f", what, i, cnt[i], e, 5 * sd);
    }
    mc_sample_scratch_free(w);
}

/* the probabilities below, in a shuffled id order */
static const double P5[5] = {0.4, 0.3, 0.15, 0.1, 0.05};
static const int ID5[5] = {3, 0, 4, 1, 2}; /* P5[j] is the probability of id ID5[j] */

static void want_from(const int *keep, int nkeep, double *want)
{
    double s = 0;
    for (int i = 0; i < 5; i++)
        want[i] = 0;
    for (int j = 0; j < nkeep; j++)
        s += P5[keep[j]];
    for (int j = 0; j < nkeep; j++)
        want[ID5[keep[j]]] = P5[keep[j]] / s;
}

static void test_filters(void)
{
    float lg[5];
    for (int j = 0; j < 5; j++)
        lg[ID5[j]] = (float)log(P5[j]) + 1.75f; /* an offset changes nothing */
    double want[5];
    mc_sampler_params p = mc_sampler_defaults();
    p.temperature = 1.0f;

    int all[5] = {0, 1, 2, 3, 4};
    want_from(all, 5, want);
    check_freq("plain", p, lg, 5, want);

    p.top_k = 2;
    want_from(all, 2, want);
    check_freq("top_k=2", p, lg, 5, want);

    p = mc_sampler_defaults();
    p.temperature = 1.0f;
    p.top_p = 0.8f; /* mass before the 3rd is 0.7 < 0.8, before the 4th 0.85 */
    want_from(all, 3, want);
    check_freq("top_p=0.8", p, lg, 5, want);
    p.top_p = 0.35f; /* the top one alone reaches it */
    want_from(all, 1, want);
    check_freq("top_p=0.35", p, lg, 5, want);

    /* top-p on the renormalised top-k set: of 0.95, the first two hold
     * 0.737 >= 0.72 (without renormalising, 0.7 < 0.72 would keep three) */
    p.top_k = 4;
    p.top_p = 0.72f;
    want_from(all, 2, want);
    check_freq("top_k=4 top_p=0.72", p, lg, 5, want);

    p = mc_sampler_defaults();
    p.temperature = 1.0f;
    p.min_p = 0.3f; /* threshold 0.12: keeps 0.4, 0.3, 0.15 */
    want_from(all, 3, want);
    check_freq("min_p=0.3", p, lg, 5, want);
    p.min_p = 0.5f; /* threshold 0.2 */
    want_from(all, 2, want);
    check_freq("min_p=0.5", p, lg, 5, want);
    p.top_p = 0.9f; /* top-p keeps 4, then min-p 2 */
    check_freq("top_p=0.9 min_p=0.5", p, lg, 5, want);

    /* temperature: probabilities proportional to P5^(1/T) */
    for (int t = 0; t < 2; t++) {
        float T = t ? 0.5f : 2.0f;
        p = mc_sampler_defaults();
        p.temperature = T;
        double s = 0;
        for (int j = 0; j < 5; j++)
            s += pow(P5[j], 1.0 / T);
        for (int j = 0; j < 5; j++)
            want[ID5[j]] = pow(P5[j], 1.0 / T) / s;
        check_freq(t ? "temperature=0.5" : "temperature=2", p, lg, 5, want);
    }
}

/* the filters the plain way (long double, selection order with ties to the
 * lowest id) into want[] (V <= 64), for the pruned / unpruned paths */
static void ref_want(const float *lg, int V, float T, int top_k, float top_p, float min_p,
                     double *want)
{
    int order[64];
    bool used[64] = {false};
    long double e[64], sum = 0, m = -INFINITY;
    for (int i = 0; i < V; i++)
        m = (long double)(lg[i] / T) > m ? (long double)(lg[i] / T) : m;
    for (int j = 0; j < V; j++) {
        int b = -1;
        for (int i = 0; i < V; i++)
            if (!used[i] && (b < 0 || lg[i] / T > lg[b] / T))
                b = i;
        used[b] = true;
        order[j] = b;
        e[j] = expl((long double)(lg[b] / T) - m);
    }
    int n = top_k > 0 && top_k < V ? top_k : V;
    for (int j = 0; j < n; j++)
        sum += e[j];
    long double acc = 0;
    int keep = 0;
    while (keep < n && (keep == 0 || acc < (long double)top_p * sum))
        acc += e[keep++];
    n = keep;
    keep = 1;
    while (keep < n && e[keep] >= min_p)
        keep++;
    n = keep;
    sum = 0;
    for (int j = 0; j < n; j++)
        sum += e[j];
    for (int i = 0; i < V; i++)
        want[i] = 0;
    for (int j = 0; j < n; j++)
        want[order[j]] = (double)(e[j] / sum);
}

/* heavy tails below the sampler's pruning bound, where the filters' prefix
 * lies beyond or within the ids it sorts */
static void test_tails(void)
{
    enum { V = 12 };
    float lg[V];
    double want[V];
    struct {
        const char *name;
        float second, T;
        int top_k;
        float top_p, min_p;
    } cases[] = {
        {"tail: top_p past the pruned ids", -20, 1.0f, -1, 0.9995f, 0},
        {"tail: top_k past the pruned ids", -20, 1.0f, 3, 1.0f, 0},
        {"tail: top_p within the pruned ids", -0.5f, 1.0f, -1, 0.9f, 0},
        {"tail: top_k within", -0.5f, 1.0f, 2, 1.0f, 0},
        {"tail: top_k + top_p + min_p", -0.5f, 2.0f, 6, 0.99999f, 0.02f},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        lg[0] = 0;
        lg[1] = cases[c].second;
        for (int i = 2; i < V; i++)
            lg[i] = -9.5f + 0.01f * (float)(i % 3); /* exp < 1e-4, some tied */
        if (cases[c].second < -10)
            lg[1] = -9.5f;
        mc_sampler_params p = mc_sampler_defaults();
        p.temperature = cases[c].T;
        p.top_k = cases[c].top_k;
        p.top_p = cases[c].top_p;
        p.min_p = cases[c].min_p;
        ref_want(lg, V, p.temperature, p.top_k, p.top_p, p.min_p, want);
        int kept = 0;
        for (int i = 0; i < V; i++)
            kept += want[i] > 0;
        check_freq(cases[c].name, p, lg, V, want);
        /* the exact set, from the sampler's own filter (sampler.c is
         * compiled in): tails this thin are not seen in 20000 draws */
        mc_sample_scratch *w = NULL;
        mc_err err;
        mc_err_clear(&err);
        if (mc_sample_scratch_init(V, &w, &err) != MC_OK) {
            CHECKF(0, "%s", err.msg);
            continue;
        }
        float x[V];
        for (int i = 0; i < V; i++)
            x[i] = lg[i] / p.temperature;
        const int32_t *order;
        int n = filter(&p, x, lg, V, x[argmax(lg, V)], w, &order);
        bool in[V] = {false};
        for (int j = 0; j < n; j++)
            in[order ? order[j] : j] = order || w->e[j] > 0;
        int got = 0;
        for (int i = 0; i < V; i++) {
            got += in[i];
            CHECKF(in[i] == (want[i] > 0), "%s: id %d kept %d, reference %d", cases[c].name, i,
                   (int)in[i], want[i] > 0);
        }
        printf("%s: %d ids kept (reference %d)\n", cases[c].name, got, kept);
        mc_sample_scratch_free(w);
    }
}

static void test_greedy(void)
{
    mc_sampler_params p = mc_sampler_defaults();
    float a[6] = {1, 3, 3, 2, -1, 3};
    CHECK(pick1(&p, a, 6, NULL, NULL) == 1);
    float b[4] = {NAN, 0.5f, NAN, 0.25f};
    CHECK(pick1(&p, b, 4, NULL, NULL) == 1);
    float c[3] = {-INFINITY, -INFINITY, -INFINITY};
    CHECK(pick1(&p, c, 3, NULL, NULL) == 0);
    p.temperature = 1.0f;
    CHECK(pick1(&p, c, 3, NULL, NULL) == 0);
    float d[4] = {0.5f, INFINITY, 1.0f, INFINITY};
    CHECK(pick1(&p, d, 4, NULL, NULL) == 1);
    p.temperature = 5e-6f; /* below vLLM's epsilon: greedy */
    CHECK(pick1(&p, a, 6, NULL, NULL) == 1);

    /* top_k = 1 equals greedy, ties included (values on a coarse grid) */
    enum { V = 300 };
    float l[V];
    int bad = 0;
    for (int r = 0; r < 200; r++) {
        for (int i = 0; i < V; i++)
            l[i] = (float)floor(urand() * 20) * 0.5f;
        mc_sampler_params g = mc_sampler_defaults(), k1 = mc_sampler_defaults();
        k1.temperature = 0.8f;
        k1.top_k = 1;
        k1.seed = (uint64_t)r;
        int32_t x = pick1(&g, l, V, NULL, NULL), y = pick1(&k1, l, V, NULL, NULL);
        if (x != y && bad++ < 5)
            fprintf(stderr, "round %d: greedy %d, top_k=1 %d\n", r, x, y);
    }
    CHECKF(bad == 0, "%d of 200 rounds differ", bad);
}

/* log_softmax in long double, the plain way */
static void ref_logsoftmax(const double *x, int n, double *out)
{
    long double m = -INFINITY, s = 0;
    for (int i = 0; i < n; i++)
        if (x[i] > m)
            m = x[i];
    for (int i = 0; i < n; i++)
        s += expl((long double)x[i] - m);
    for (int i = 0; i < n; i++)
        out[i] = (double)((long double)x[i] - m - logl(s));
}

/* lp against the reference logprobs ref (n ids): token's value and the top
 * n_top, ordered by descending value with ties to the lowest id */
static void check_lp(const char *what, const mc_logprobs *lp, const double *ref, int n, int n_top)
{
    CHECKF(lp->n_top == n_top, "%s: n_top %d, want %d", what, lp->n_top, n_top);
    CHECKF(fabs(lp->token_logprob - ref[lp->token]) <= 1e-6, "%s: token %d logprob %.9g, want %.9g",
           what, (int)lp->token, lp->token_logprob, ref[lp->token]);
    int shown = 0;
    for (int k = 0; k < lp->n_top && k < n_top; k++) {
        /* the reference's k-th: count the ids that come before it */
        int id = lp->top_ids[k], before = 0;
        for (int i = 0; i < n; i++)
            before += ref[i] > ref[id] || (ref[i] == ref[id] && i < id);
        bool ok = before == k && fabs(lp->top_logprobs[k] - ref[id]) <= 1e-6;
        CHECKF(ok || shown > 3, "%s: top[%d] = id %d (%.9g), reference rank %d value %.9g", what, k,
               id, lp->top_logprobs[k], before, ref[id]);
        shown += !ok;
    }
}

static void test_penalties_logprobs(void)
{
    enum { V = 8 };
    const float lg[V] = {2.0f, 1.5f, -0.5f, 0.75f, 0.0f, -1.25f, 3.0f, 0.25f};
    const int32_t prompt[2] = {1, 2};
    const int32_t out[4] = {2, 3, 3, 5};
    mc_seq_tokens *h = NULL;
    mc_err err;
    mc_err_clear(&err);
    if (mc_seq_tokens_init(V, &h, &err) != MC_OK) {
        CHECKF(0, "%s", err.msg);
        return;
    }
    CHECK(mc_seq_tokens_add_prompt(h, prompt, 2, &err) == MC_OK);
    for (int i = 0; i < 4; i++)
        CHECK(mc_seq_tokens_add(h, out[i], &err) == MC_OK);
    CHECK(mc_seq_tokens_count(h, 3) == 2 && mc_seq_tokens_count(h, 1) == 0);
    CHECK(mc_seq_tokens_in_prompt(h, 1) && !mc_seq_tokens_in_prompt(h, 3));
    int cnt[V] = {0, 0, 1, 2, 0, 1, 0, 0};
    bool seen[V] = {false, true, true, true, false, true, false, false};

    const mc_logit_bias bias[2] = {{7, 2.5f}, {0, -1.0f}};
    struct {
        const char *name;
        float rep, freq, pres, temp;
        int bias;
    } cases[] = {
        {"repetition 1.5", 1.5f, 0, 0, 1.0f, 0},
        {"repetition 0.8", 0.8f, 0, 0, 1.0f, 0},
        {"frequency 0.5", 1, 0.5f, 0, 1.0f, 0},
        {"presence 0.7", 1, 0, 0.7f, 1.0f, 0},
        {"presence -2", 1, 0, -2.0f, 1.0f, 0},
        {"all, T=0.7", 1.3f, 0.4f, 0.6f, 0.7f, 0},
        {"all + bias, greedy", 1.3f, -0.4f, 1.1f, 0.0f, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        mc_sampler_params p = mc_sampler_defaults();
        p.repetition_penalty = cases[c].rep;
        p.frequency_penalty = cases[c].freq;
        p.presence_penalty = cases[c].pres;
        p.temperature = cases[c].temp;
        p.logprobs = V;
        p.seed = 7;
        if (cases[c].bias) {
            p.logit_bias = bias;
            p.n_logit_bias = 2;
        }
        /* the formulas, applied here in double */
        double x[V], ref[V];
        for (int i = 0; i < V; i++) {
            x[i] = lg[i];
            for (int b = 0; cases[c].bias && b < 2; b++)
                if (bias[b].id == i)
                    x[i] += bias[b].bias;
            if (seen[i])
                x[i] = x[i] > 0 ? x[i] / cases[c].rep : x[i] * cases[c].rep;
            x[i] -= cases[c].freq * cnt[i] + cases[c].pres * (cnt[i] > 0);
            if (cases[c].temp > 0)
                x[i] /= cases[c].temp;
        }
        ref_logsoftmax(x, V, ref);
        mc_logprobs lp;
        memset(&lp, 0, sizeof lp);
        int32_t id = pick1(&p, lg, V, h, &lp);
        CHECKF(id == lp.token, "%s: token %d, logprobs say %d", cases[c].name, (int)id,
               (int)lp.token);
        check_lp(cases[c].name, &lp, ref, V, V);
        if (cases[c].temp == 0) {
            int best = 0;
            for (int i = 1; i < V; i++)
                best = x[i] > x[best] ? i : best;
            CHECKF(id == best, "%s: greedy %d, want %d", cases[c].name, (int)id, best);
        }
    }
    /* raw mode ignores penalties and temperature */
    mc_sampler_params p = mc_sampler_defaults();
    p.repetition_penalty = 2.0f;
    p.temperature = 0.5f;
    p.logprobs = 3;
    p.logprobs_mode = MC_LOGPROBS_RAW;
    double x[V], ref[V];
    for (int i = 0; i < V; i++)
        x[i] = lg[i];
    ref_logsoftmax(x, V, ref);
    mc_logprobs lp;
    pick1(&p, lg, V, h, &lp);
    check_lp("raw", &lp, ref, V, 3);
    /* a penalty without the history is refused */
    mc_sampler s = {0};
    mc_sample_scratch *w = NULL;
    int32_t id;
    p.logprobs_mode = MC_LOGPROBS_PROCESSED;
    CHECK(mc_sampler_init(&s, &p, V, &err) == MC_OK);
    CHECK(mc_sample_scratch_init(V, &w, &err) == MC_OK);
    mc_err_clear(&err);
    CHECK(mc_sampler_pick(&s, lg, V, NULL, w, &id, NULL, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "penalties") != NULL);
    mc_err_clear(&err);
    CHECK(mc_sampler_pick(&s, lg, V - 1, h, w, &id, NULL, &err) == MC_ERR_ARG);
    mc_err_clear(&err);
    CHECK(mc_seq_tokens_add(h, V, &err) == MC_ERR_ARG && strstr(err.msg, "outside"));
    mc_seq_tokens_reset(h);
    CHECK(mc_seq_tokens_count(h, 3) == 0 && !mc_seq_tokens_in_prompt(h, 1));
    mc_sample_scratch_free(w);
    mc_seq_tokens_free(h);

    /* logprobs on a larger random vector with ties, against the reference;
     * one scratch for all, the greedy pick after the sampled ones */
    enum { N = 1000 };
    static float big[N];
    static double bx[N], bref[N];
    for (int i = 0; i < N; i++)
        big[i] = (float)(floor(urand() * 400) * 0.03 - 6);
    if (mc_sample_scratch_init(N, &w, &err) != MC_OK) {
        CHECKF(0, "%s", err.msg);
        return;
    }
    const char *names[3] = {"N=1000 T=0.7", "N=1000 T=1.9", "N=1000 greedy"};
    for (int t = 0; t < 3; t++) {
        float T = t == 0 ? 0.7f : t == 1 ? 1.9f : 0.0f;
        mc_sampler_params q = mc_sampler_defaults();
        q.temperature = T;
        q.top_p = 0.5f; /* filtering does not change logprobs */
        q.logprobs = MC_LOGPROBS_MAX;
        q.seed = 99;
        for (int i = 0; i < N; i++)
            bx[i] = T > 0 ? (double)(big[i] / T) : big[i];
        ref_logsoftmax(bx, N, bref);
        mc_logprobs l2 = {0};
        CHECK(mc_sampler_init(&s, &q, N, &err) == MC_OK);
        CHECK(mc_sampler_pick(&s, big, N, NULL, w, &id, &l2, &err) == MC_OK);
        check_lp(names[t], &l2, bref, N, MC_LOGPROBS_MAX);
        if (t == 1) /* the next pick's logits differ from the filter's last */
            for (int i = 0; i < N; i++)
                big[i] *= 0.5f;
    }
    mc_sample_scratch_free(w);
}

static void test_determinism(void)
{
    enum { V = 500, STEPS = 200 };
    static float l[V];
    for (int i = 0; i < V; i++)
        l[i] = (float)(urand() * 4);
    mc_sampler_params p = mc_sampler_defaults();
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.top_k = 50;
    p.min_p = 0.01f;
    int32_t a[2][STEPS], b[STEPS];
    mc_sample_scratch *w = NULL;
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_sample_scratch_init(V, &w, &err) == MC_OK);
    for (int run = 0; run < 3; run++) {
        mc_sampler s = {0};
        p.seed = run == 2 ? 43 : 42;
        CHECK(mc_sampler_init(&s, &p, V, &err) == MC_OK);
        for (int i = 0; i < STEPS; i++)
            mc_sampler_pick(&s, l, V, NULL, w, run == 2 ? &b[i] : &a[run][i], NULL, &err);
    }
    CHECK(memcmp(a[0], a[1], sizeof a[0]) == 0);
    int same = 0;
    for (int i = 0; i < STEPS; i++)
        same += a[0][i] == b[i];
    CHECKF(same < STEPS / 2, "seed 43 repeats seed 42 at %d of %d steps", same, STEPS);
    mc_sample_scratch_free(w);
}

static void expect_bad(const char *field, mc_sampler_params p, int vocab)
{
    mc_err err;
    mc_err_clear(&err);
    mc_sampler s = {0};
    mc_status st = mc_sampler_init(&s, &p, vocab, &err);
    CHECKF(st == MC_ERR_ARG && strstr(err.msg, field), "%s: status %d, message '%s'", field,
           (int)st, err.msg);
}

static void test_validation(void)
{
    mc_sampler_params d = mc_sampler_defaults(), p;
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_sampler_params_check(&d, 10, &err) == MC_OK);
    p = d, p.temperature = -0.1f, expect_bad("temperature", p, 10);
    p = d, p.temperature = INFINITY, expect_bad("temperature", p, 10);
    p = d, p.temperature = NAN, expect_bad("temperature", p, 10);
    p = d, p.top_k = -2, expect_bad("top_k", p, 10);
    p = d, p.top_p = 0.0f, expect_bad("top_p", p, 10);
    p = d, p.top_p = 1.01f, expect_bad("top_p", p, 10);
    p = d, p.top_p = NAN, expect_bad("top_p", p, 10);
    p = d, p.min_p = -0.01f, expect_bad("min_p", p, 10);
    p = d, p.min_p = 1.5f, expect_bad("min_p", p, 10);
    p = d, p.repetition_penalty = 0.0f, expect_bad("repetition_penalty", p, 10);
    p = d, p.presence_penalty = 2.5f, expect_bad("presence_penalty", p, 10);
    p = d, p.frequency_penalty = -2.01f, expect_bad("frequency_penalty", p, 10);
    p = d, p.logprobs = 21, expect_bad("logprobs", p, 10);
    mc_logit_bias b1 = {10, 1.0f}, b2 = {3, 101.0f}, b3 = {3, -100.0f};
    p = d, p.logit_bias = &b1, p.n_logit_bias = 1, expect_bad("logit_bias", p, 10);
    p = d, p.logit_bias = &b2, p.n_logit_bias = 1, expect_bad("logit_bias", p, 10);
    p = d, p.logit_bias = &b3, p.n_logit_bias = 1;
    CHECK(mc_sampler_params_check(&p, 10, &err) == MC_OK);
    p = d, p.top_k = -1, p.top_p = 1.0f, p.min_p = 1.0f, p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f, p.logprobs = 20;
    CHECK(mc_sampler_params_check(&p, 10, &err) == MC_OK);
}

static void test_stop_token(void)
{
    const int32_t eos[3] = {1, 7, 9};
    CHECK(mc_stop_token(7, 1, eos, 3, 0) == MC_FINISH_STOP);
    CHECK(mc_stop_token(4, 1000, eos, 3, 0) == MC_FINISH_NONE);
    CHECK(mc_stop_token(4, 4, eos, 3, 5) == MC_FINISH_NONE);
    CHECK(mc_stop_token(4, 5, eos, 3, 5) == MC_FINISH_LENGTH);
    CHECK(mc_stop_token(9, 5, eos, 3, 5) == MC_FINISH_STOP);
    CHECK(mc_stop_token(9, 5, NULL, 0, 5) == MC_FINISH_LENGTH);
}

/* feeds text in the given chunks (lengths), as a streaming server would;
 * returns the stop index, the final text length and checks that the
 * streamed length never shrinks */
static int stream(const char *text, const int *chunks, int nchunks, const char *const *stops,
                  int nstops, size_t *out_len)
{
    size_t len = 0, checked = 0, safe = 0, prev_safe = 0, at = 0;
    for (int c = 0; c < nchunks; c++) {
        len += (size_t)chunks[c];
        int k = mc_stop_str_scan(text, len, checked, stops, nstops, &safe, &at);
        CHECKF(safe >= prev_safe, "'%s': streamed length went from %zu to %zu", text, prev_safe,
               safe);
        prev_safe = safe;
        if (k >= 0) {
            *out_len = at;
            return k;
        }
        checked = len;
    }
    *out_len = safe;
    return -1;
}

static void test_stop_strings(void)
{
    size_t safe, at;
    /* split over two tokens: "Hel" "lo\n\nUs" "er: hi" */
    const char *t1 = "Hello\n\nUser: hi";
    const char *s1[] = {"\n\nUser:"};
    CHECK(mc_stop_str_scan(t1, 3, 0, s1, 1, &safe, &at) == -1 && safe == 3);
    CHECK(mc_stop_str_scan(t1, 9, 3, s1, 1, &safe, &at) == -1 && safe == 5); /* holds "\n\nUs" */
    CHECK(mc_stop_str_scan(t1, 15, 9, s1, 1, &safe, &at) == 0 && at == 5 && safe == 5);
    /* a partial match held back, then not completed */
    const char *t2 = "a #b";
    const char *s2[] = {"##"};
    CHECK(mc_stop_str_scan(t2, 3, 0, s2, 1, &safe, &at) == -1 && safe == 2);
    CHECK(mc_stop_str_scan(t2, 4, 3, s2, 1, &safe, &at) == -1 && safe == 4 && at == 4);
    /* several stop strings: the one that ends first */
    const char *t3 = "xxSTOPyyEND";
    const char *s3[] = {"END", "STOP"};
    CHECK(mc_stop_str_scan(t3, strlen(t3), 0, s3, 2, &safe, &at) == 1 && at == 2);
    /* overlap: both end together, the longer one wins; an inner one that
     * ends first wins over an outer one */
    const char *s4[] = {"b", "ab"};
    CHECK(mc_stop_str_scan("aab", 3, 0, s4, 2, &safe, &at) == 1 && at == 1);
    const char *s5[] = {"abcd", "c"};
    CHECK(mc_stop_str_scan("abcd", 4, 0, s5, 2, &safe, &at) == 1 && at == 2);
    /* self-overlapping stop string */
    const char *s6[] = {"aab"};
    int one[4] = {1, 1, 1, 1};
    size_t len;
    CHECK(stream("aaab", one, 4, s6, 1, &len) == 0 && len == 1);
    CHECK(mc_stop_str_scan("aaa", 3, 2, s6, 1, &safe, &at) == -1 && safe == 1);
    /* at the very start; empty and NULL stop strings are ignored */
    const char *s7[] = {"", NULL, "Hi"};
    CHECK(mc_stop_str_scan("Hi there", 8, 0, s7, 3, &safe, &at) == 2 && at == 0);
    CHECK(mc_stop_str_scan("", 0, 0, s7, 3, &safe, &at) == -1 && safe == 0);

    /* property: any chunking gives the result of one scan over the whole
     * text, and the streamed text never contains a stop string */
    const char *pool[] = {"ab", "aab", "ba", "bb", "abab", "b\nb", "x"};
    int bad = 0;
    for (int r = 0; r < 3000; r++) {
        char text[41];
        int n = 1 + (int)(urand() * 40);
        for (int i = 0; i < n; i++)
            text[i] = "ab\nx"[(int)(urand() * 3.3)];
        text[n] = 0;
        const char *stops[3];
        int ns = 1 + (int)(urand() * 3);
        for (int k = 0; k < ns; k++)
            stops[k] = pool[(int)(urand() * 7)];
        size_t whole_safe, whole_at;
        int whole = mc_stop_str_scan(text, (size_t)n, 0, stops, ns, &whole_safe, &whole_at);
        int chunks[40], nc = 0, left = n;
        while (left > 0) {
            int c = 1 + (int)(urand() * 4);
            chunks[nc++] = c < left ? c : left;
            left -= chunks[nc - 1];
        }
        size_t got_len;
        int got = stream(text, chunks, nc, stops, ns, &got_len);
        size_t want_len = whole >= 0 ? whole_at : whole_safe;
        bool ok = got == whole && got_len == want_len;
        for (int k = 0; k < ns && ok; k++) {
            size_t sl = strlen(stops[k]);
            for (size_t st = 0; st + sl <= got_len; st++)
                ok = ok && memcmp(text + st, stops[k], sl) != 0;
        }
        if (!ok && bad++ < 5)
            fprintf(stderr, "text '%s': streamed stop %d at %zu, whole %d at %zu\n", text, got,
                    got_len, whole, want_len);
    }
    CHECKF(bad == 0, "%d of 3000 random streams differ", bad);
}

/* one pick at DeepSeek-V3's vocabulary size, for the record (not a bound) */
static void time_big_vocab(void)
{
    enum { V = 129280, REPS = 20 };
    float *l = malloc(V * sizeof *l);
    mc_sample_scratch *w = NULL;
    mc_seq_tokens *h = NULL;
    mc_err err;
    mc_err_clear(&err);
    if (!l || mc_sample_scratch_init(V, &w, &err) != MC_OK ||
        mc_seq_tokens_init(V, &h, &err) != MC_OK) {
        CHECKF(0, "%s", err.msg);
        goto done;
    }
    for (int i = 0; i < V; i++)
        l[i] = (float)(urand() * 20 - 10);
    for (int i = 0; i < 300; i++)
        mc_seq_tokens_add(h, (int32_t)(urand() * V), &err);
    mc_sampler_params p = mc_sampler_defaults();
    p.temperature = 0.8f;
    p.top_p = 0.9f;
    p.top_k = -1;
    p.repetition_penalty = 1.1f;
    p.frequency_penalty = 0.2f;
    p.logprobs = 5;
    mc_sampler s = {0};
    CHECK(mc_sampler_init(&s, &p, V, &err) == MC_OK);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < REPS; r++) {
        int32_t id;
        mc_logprobs lp;
        CHECK(mc_sampler_pick(&s, l, V, h, w, &id, &lp, &err) == MC_OK);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("vocab %d, top_p 0.9 + penalties + 5 logprobs: %.2f ms per pick\n", V,
           ((b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6) / REPS);
done:
    free(l);
    mc_sample_scratch_free(w);
    mc_seq_tokens_free(h);
}

/* a row's best k as the backends' top-k gives them: by value, -0 as +0,
 * NaN after every number, ties to the lower id */
static int cand_before(float a, int ia, float b, int ib)
{
    if (isnan(a) || isnan(b))
        return isnan(a) != isnan(b) ? !isnan(a) : ia < ib;
    if (a != b)
        return a > b;
    return ia < ib;
}

static void top_candidates(const float *lg, int V, int k, int32_t *ids, float *vals)
{
    int n = 0;
    for (int i = 0; i < V; i++) {
        int j = n < k ? n++ : k;
        if (j == k && !cand_before(lg[i], i, vals[k - 1], ids[k - 1]))
            continue;
        if (j == k)
            j = k - 1;
        while (j > 0 && cand_before(lg[i], i, vals[j - 1], ids[j - 1])) {
            ids[j] = ids[j - 1];
            vals[j] = vals[j - 1];
            j--;
        }
        ids[j] = i;
        vals[j] = lg[i];
    }
}

/* picks from a row's best candidates (mc_sampler_pick_top) against picks
 * from the whole row (mc_sampler_pick), with one seed each: the same tokens
 * draw after draw, over random rows full of ties (coarse values, +0 and -0,
 * a NaN, a temperature that rounds neighbours together) and every filter */
static void test_candidates(void)
{
    enum { V = 300, DRAWS = 40 };
    static const float temps[] = {0.0f, 0.3f, 1.0f, 1.7f, 3.0f, 7.0f};
    static const int ks[] = {1, 2, 5, 17, 40, 64};
    static const float tps[] = {1.0f, 0.9f, 0.5f};
    static const float mps[] = {0.0f, 0.05f};
    mc_sample_scratch *w = NULL;
    mc_err err;
    mc_err_clear(&err);
    if (mc_sample_scratch_init(V, &w, &err) != MC_OK) {
        CHECKF(0, "%s", err.msg);
        return;
    }
    float lg[V];
    int32_t ids[MC_SAMPLER_TOP_MAX];
    float vals[MC_SAMPLER_TOP_MAX];
    int cases = 0, differ = 0;
    for (int row = 0; row < 24; row++) {
        for (int i = 0; i < V; i++) {
            int u = (int)(urand() * 41.0);
            lg[i] = row % 3 == 0 ? (float)(u - 20) * 0.25f /* many exact ties */
                    : row % 3 == 1 ? 7.9f + (float)u * 4.76837158e-7f /* ulps apart: T 1.7 merges neighbours */
                                   : (float)(u - 20) * 0.37f;
        }
        lg[row % V] = row % 2 ? 0.0f : -0.0f;
        lg[(row * 7 + 3) % V] = -0.0f;
        if (row % 4 == 3)
            lg[(row * 13 + 5) % V] = NAN;
        top_candidates(lg, V, MC_SAMPLER_TOP_MAX, ids, vals);
        for (size_t a = 0; a < sizeof temps / sizeof temps[0]; a++)
            for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++)
                for (size_t c = 0; c < sizeof tps / sizeof tps[0]; c++)
                    for (size_t d = 0; d < sizeof mps / sizeof mps[0]; d++) {
                        mc_sampler_params p = mc_sampler_defaults();
                        p.temperature = temps[a];
                        p.top_k = ks[b];
                        p.top_p = tps[c];
                        p.min_p = mps[d];
                        p.seed = (uint64_t)(row * 1000 + cases);
                        int need = mc_sampler_top_k(&p, V);
                        CHECKF(need == (temps[a] == 0.0f ? 1 : ks[b]), "top_k need %d", need);
                        mc_sampler sf, sc;
                        if (mc_sampler_init(&sf, &p, V, &err) != MC_OK ||
                            mc_sampler_init(&sc, &p, V, &err) != MC_OK) {
                            CHECKF(0, "%s", err.msg);
                            continue;
                        }
                        cases++;
                        for (int t = 0; t < DRAWS; t++) {
                            int32_t full = -1, cand = -2;
                            mc_status s1 = mc_sampler_pick(&sf, lg, V, NULL, w, &full, NULL, &err);
                            mc_status s2 = mc_sampler_pick_top(&sc, ids, vals,
                                                               MC_SAMPLER_TOP_MAX, V, &cand, &err);
                            if (s1 != MC_OK || s2 != MC_OK || full != cand) {
                                if (differ++ < 5)
                                    fprintf(stderr, "  row %d T %g top_k %d top_p %g min_p %g "
                                            "draw %d: whole row %d, candidates %d (%s)\n", row,
                                            (double)p.temperature, p.top_k, (double)p.top_p,
                                            (double)p.min_p, t, (int)full, (int)cand, err.msg);
                            }
                        }
                    }
    }
    CHECKF(differ == 0, "%d picks from candidates differ from the whole row's", differ);
    /* what candidates cannot decide: the whole row */
    mc_sampler_params p = mc_sampler_defaults();
    p.temperature = 1.0f;
    CHECKF(mc_sampler_top_k(&p, V) == 0, "top_k off: the whole row");
    p.top_k = 65;
    CHECKF(mc_sampler_top_k(&p, V) == 0, "top_k 65: the whole row");
    p.top_k = V;
    CHECKF(mc_sampler_top_k(&p, V) == 0, "top_k = vocab: the whole row");
    p.top_k = 5;
    p.logprobs = 0;
    CHECKF(mc_sampler_top_k(&p, V) == 0, "logprobs: the whole row");
    p.logprobs = -1;
    p.presence_penalty = 0.5f;
    CHECKF(mc_sampler_top_k(&p, V) == 0, "a penalty: the whole row");
    p.presence_penalty = 0.0f;
    mc_logit_bias bias = {.id = 3, .bias = 1.0f};
    p.logit_bias = &bias;
    p.n_logit_bias = 1;
    CHECKF(mc_sampler_top_k(&p, V) == 0, "a logit bias: the whole row");
    p.n_logit_bias = 0;
    p.logit_bias = NULL;
    mc_sampler sc;
    int32_t tok = -1;
    if (mc_sampler_init(&sc, &p, V, &err) == MC_OK) {
        CHECKF(mc_sampler_pick_top(&sc, ids, vals, 4, V, &tok, &err) == MC_ERR_ARG,
               "4 candidates for top_k 5 refused");
        ids[0] = V;
        CHECKF(mc_sampler_pick_top(&sc, ids, vals, 64, V, &tok, &err) == MC_ERR_ARG,
               "a candidate past the vocabulary refused");
    }
    printf("candidates: %d requests x %d draws, the whole row's tokens from the best %d\n",
           cases, DRAWS, MC_SAMPLER_TOP_MAX);
    mc_sample_scratch_free(w);
}

int main(void)
{
    test_validation();
    test_greedy();
    test_filters();
    test_tails();
    test_penalties_logprobs();
    test_determinism();
    test_candidates();
    test_stop_token();
    test_stop_strings();
    time_big_vocab();
    return check_report("test_sampler");
}
