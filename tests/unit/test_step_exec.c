/* test_step_exec.c - the step executor (worker/step.h) against the
 * per-sequence forward pass (mc_model_forward) and the fixture's golden
 * logits.
 *
 * Schedule equivalence: a few sequences of different lengths run alone
 * through mc_model_forward give the reference logits of every position.
 * Then random schedules run them through the executor: step budgets from 1
 * token to all of them, block sizes 1, 3, 16 and random, random admission
 * order, prefill chunks and decode tokens of different sequences mixed in
 * one step in random plan order, logits modes ALL / LAST / NONE, pools
 * small enough that sequences wait for blocks and join as others finish.
 * Every row the executor returns must match the reference within 1e-5
 * relative to the row's largest reference logit; the first mismatches are
 * printed. Also: golden logits, plan refusals, a pool too small, the
 * attention variants the executor refuses.
 *
 * Models: Qwen3-MoE (GQA), DeepSeek-V3 (MLA, BF16 and FP8), DeepSeek-V3.2
 * (the indexer's top-k), Mistral 4 (MLA with a per-token query scale) and
 * Llama 4 (NoPE layers, QK L2 norm, top-1 router). Llama 4's fixture has
 * 8192-token chunks and an 8192 temperature floor, longer than the test's
 * sequences: it runs once more with both shortened (against
 * mc_model_forward only; the golden logits are for the fixture's config). */
#include "backend.h"
#include "check.h"
#include "kv_pool.h"
#include "model.h"
#include "ref.h"
#include "safetensors.h"
#include "step.h"
#include "step_plan.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NSEQ 5
/* Schedule equivalence bound, relative to the row's largest logit: 1e-6 on
 * the scalar kernels (MC_KERNELS=scalar: batch shapes do not change any
 * sum's order, and the rows come out identical but for Llama 4's chunked
 * and DeepSeek-V4's attention, measured <= 3.4e-7); 2e-6 on the SIMD paths,
 * whose products sum in an order that depends on the number of tokens in
 * the call (measured <= 1.34e-6, Mistral 4 on AVX-512). */
static double TOL = 2e-6;

typedef struct {
    int len;
    uint32_t tok[64];
    float *ref;     /* (len, V) reference logits */
    int golden_row; /* row of the golden logits this sequence is a prefix of, or -1 */
} seq_t;

static seq_t seqs[NSEQ];
static int V;
static float *golden; /* (3, 32, V) */
static int golden_T;
static double max_err; /* largest relative error seen against the reference */
static int shown;

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* max |a - b| / max |b| over one row of V logits. */
static double row_err(const float *a, const float *b)
{
    double m = 0, d = 0;
    for (int v = 0; v < V; v++) {
        double x = fabs((double)b[v]);
        m = x > m ? x : m;
        double e = fabs((double)a[v] - b[v]);
        d = e > d ? e : d;
    }
    return d / (m > 0 ? m : 1);
}

static int check_row(const char *what, int s, int p, const float *got)
{
    double e = row_err(got, seqs[s].ref + (size_t)p * V);
    max_err = e > max_err ? e : max_err;
    if (e <= TOL)
        return 1;
    if (shown++ < 8)
        fprintf(stderr, "  %s: seq %d pos %d: relative error %.3g (got[0] %.7g ref[0] %.7g)\n",
                what, s, p, e, got[0], seqs[s].ref[(size_t)p * V]);
    return 0;
}

static int load_inputs(const char dir[1024], mc_model *m)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    mc_err e;
    mc_err_clear(&e);
    st_file *f;
    if (st_file_open(path, &f, &e) != MC_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 0;
    }
    const st_tensor *ids = st_file_find(f, "input_ids"), *lg = st_file_find(f, "logits");
    if (!ids || !lg || ids->dtype != MC_DT_I64 || ids->ndim != 2 || lg->ndim != 3 ||
        lg->shape[2] != V || ids->shape[0] < 3 || ids->shape[1] < 32) {
        fprintf(stderr, "golden file: unexpected tensors\n");
        return 0;
    }
    int T = golden_T = (int)ids->shape[1];
    int64_t *in = malloc(ids->nbytes);
    golden = malloc(lg->numel * sizeof *golden);
    memcpy(in, ids->data, ids->nbytes);
    st_tensor_to_f32(lg, golden);
    /* different lengths: golden rows 0..2 (full, a prefix, a prefix), and
     * two sequences of other ids */
    int lens[NSEQ] = {T, 19, 27, 11, 6};
    for (int s = 0; s < NSEQ; s++) {
        seqs[s].len = lens[s];
        seqs[s].golden_row = s < 3 ? s : -1;
        for (int j = 0; j < lens[s]; j++)
            seqs[s].tok[j] =
                s < 3 ? (uint32_t)in[(size_t)s * T + j] : (uint32_t)((37 * s + 101 * j + 5) % V);
    }
    free(in);
    st_file_close(f);
    /* the reference: each sequence alone, every position's logits */
    for (int s = 0; s < NSEQ; s++) {
        mc_kv *kv;
        int64_t t64[64];
        for (int j = 0; j < seqs[s].len; j++)
            t64[j] = seqs[s].tok[j];
        seqs[s].ref = malloc((size_t)seqs[s].len * V * sizeof(float));
        if (mc_kv_create(m, seqs[s].len, &kv, &e) != MC_OK ||
            mc_model_forward(m, kv, t64, seqs[s].len, seqs[s].ref, false, &e) != MC_OK) {
            fprintf(stderr, "reference forward: %s\n", e.msg);
            return 0;
        }
        mc_kv_free(kv);
    }
    return 1;
}

/* Decode-step graphs (MC_STEP_GRAPHS=1) of the schedules of one model. */
static uint64_t graph_launches, graph_captures, graph_refused;

/* One random schedule; returns the number of rows compared (-1 on an error). */
static long run_schedule(mc_model *m, mc_backend *be, uint32_t budget, uint32_t bs, int small_pool,
                         float **golden_rows)
{
    mc_err e;
    mc_err_clear(&e);
    uint32_t need[NSEQ], total = 0, most = 0;
    for (int s = 0; s < NSEQ; s++) {
        need[s] = (seqs[s].len + bs - 1) / bs;
        total += need[s];
        most = need[s] > most ? need[s] : most;
    }
    /* a small pool holds the longest sequence and a bit: the others wait */
    uint32_t nb = small_pool ? most + rnd(most + 1) : total;
    mc_step_exec *ex;
    if (mc_step_exec_init(m, be, nb, bs, budget, &ex, &e) != MC_OK) {
        fprintf(stderr, "init: %s\n", e.msg);
        return -1;
    }
    mc_kv_pool *pool = mc_step_exec_pool(ex);
    int order[NSEQ], n_pending = NSEQ, done[NSEQ] = {0}, prompt[NSEQ], active[NSEQ] = {0};
    for (int s = 0; s < NSEQ; s++) {
        order[s] = s;
        prompt[s] = 1 + (int)rnd((uint32_t)seqs[s].len); /* prefill up to here, then decode */
    }
    for (int s = NSEQ - 1; s > 0; s--) { /* random admission order */
        int j = (int)rnd((uint32_t)s + 1), t = order[s];
        order[s] = order[j];
        order[j] = t;
    }
    long compared = 0;
    int finished = 0, steps = 0, next = 0;
    float *logits = malloc((size_t)budget * V * sizeof *logits);
    while (finished < NSEQ) {
        mc_step_plan plan;
        mc_step_plan_init(&plan);
        int ent_seq[NSEQ], ent_n[NSEQ], ne = 0;
        uint32_t left = budget;
        /* running sequences in random order, then admissions */
        int cand[NSEQ], nc = 0;
        for (int s = 0; s < NSEQ; s++)
            if (active[s] && done[s] < seqs[s].len)
                cand[nc++] = s;
        for (int i = nc - 1; i > 0; i--) {
            int j = (int)rnd((uint32_t)i + 1), t = cand[i];
            cand[i] = cand[j];
            cand[j] = t;
        }
        while (next < NSEQ && nc < NSEQ) {
            int s = order[next];
            if (small_pool) { /* admission by blocks available: all of it up front */
                if (!mc_kv_pool_can_admit(pool, (uint64_t)seqs[s].len))
                    break;
                if (mc_kv_pool_reserve(pool, (uint64_t)s, (uint64_t)seqs[s].len, &e) != MC_OK)
                    return -1;
            }
            active[s] = 1;
            cand[nc++] = s;
            next++;
            n_pending--;
            if (rnd(2)) /* sometimes admit one at a time */
                break;
        }
        for (int i = 0; i < nc && left > 0; i++) {
            int s = cand[i], d = done[s];
            uint32_t c =
                d < prompt[s]
                    ? 1 + rnd((uint32_t)(prompt[s] - d) < left ? (uint32_t)(prompt[s] - d) : left)
                    : 1;
            if (!small_pool && mc_kv_pool_reserve(pool, (uint64_t)s, (uint64_t)d + c, &e) != MC_OK)
                return -1;
            ent_seq[ne] = s;
            ent_n[ne++] = (int)c;
            left -= c;
        }
        /* random plan order */
        for (int i = ne - 1; i > 0; i--) {
            int j = (int)rnd((uint32_t)i + 1), t = ent_seq[i], u = ent_n[i];
            ent_seq[i] = ent_seq[j];
            ent_n[i] = ent_n[j];
            ent_seq[j] = t;
            ent_n[j] = u;
        }
        mc_logits_mode mode[NSEQ];
        for (int i = 0; i < ne; i++) {
            int s = ent_seq[i];
            uint32_t r = rnd(8), n_tab;
            mode[i] = golden_rows || r < 5 ? MC_LOGITS_ALL
                      : r < 7              ? MC_LOGITS_LAST
                                           : MC_LOGITS_NONE;
            const uint32_t *tab = mc_kv_pool_table(pool, (uint64_t)s, &n_tab);
            if (mc_step_plan_add_seq(&plan, (uint64_t)s, (uint32_t)done[s], seqs[s].tok + done[s],
                                     (uint32_t)ent_n[i], tab, n_tab, mode[i], 0, &e) != MC_OK)
                return -1;
        }
        plan.step_id = (uint64_t)steps++;
        if (ne == 0 || mc_step_exec_run(ex, &plan, logits, &e) != MC_OK) {
            fprintf(stderr, "step %d (%d entries): %s\n", steps, ne, ne ? e.msg : "empty step");
            mc_step_plan_free(&plan);
            return -1;
        }
        /* compare the rows in plan order */
        const float *row = logits;
        for (int i = 0; i < ne; i++) {
            int s = ent_seq[i], d = done[s], c = ent_n[i];
            for (int j = 0; j < c; j++) {
                if (mode[i] == MC_LOGITS_ALL || (mode[i] == MC_LOGITS_LAST && j == c - 1)) {
                    CHECK(check_row("schedule", s, d + j, row));
                    if (golden_rows && seqs[s].golden_row >= 0)
                        memcpy(golden_rows[s] + (size_t)(d + j) * V, row, (size_t)V * sizeof *row);
                    row += V;
                    compared++;
                }
            }
            done[s] += c;
            CHECK(mc_step_exec_seq_len(ex, (uint64_t)s) == (uint32_t)done[s]);
        }
        mc_step_plan_free(&plan);
        for (int i = 0; i < ne; i++) { /* finished sequences leave, freeing their blocks */
            int s = ent_seq[i];
            if (done[s] == seqs[s].len) {
                CHECK(mc_step_exec_release(ex, (uint64_t)s, &e) == MC_OK);
                finished++;
            }
        }
    }
    CHECK(mc_kv_pool_n_used(pool) == 0);
    CHECK(mc_kv_pool_verify(pool, &e) == MC_OK);
    uint64_t gl, gc, gf;
    mc_step_exec_graph_counts(ex, &gl, &gc, &gf);
    graph_launches += gl;
    graph_captures += gc;
    graph_refused += gf;
    free(logits);
    mc_step_exec_free(ex);
    return compared;
}

/* Plans the executor must refuse, and a pool too small. */
static void refusals(mc_model *m, mc_backend *be)
{
    mc_err e;
    mc_err_clear(&e);
    mc_step_exec *ex;
    CHECK(mc_step_exec_init(m, be, 0, 4, 8, &ex, &e) == MC_ERR_ARG);
    if (mc_step_exec_init(m, be, 4, 4, 6, &ex, &e) != MC_OK) {
        CHECK(0);
        return;
    }
    mc_kv_pool *pool = mc_step_exec_pool(ex);
    float lg[8 * 1024];
    uint32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b01[2] = {0, 1}, b11[2] = {1, 1}, b9[1] = {9};
    mc_step_plan p;
    /* pool too small: 17 positions need 5 blocks of 4, the pool has 4 */
    mc_err_clear(&e);
    CHECK(mc_kv_pool_reserve(pool, 7, 17, &e) == MC_ERR_NOMEM);
    printf("pool too small: %s\n", e.msg);
    CHECK(strlen(e.msg) > 0);
    /* a block past the pool, a block twice, a too-short table, top_k, too many tokens */
    struct {
        uint32_t start, n, nb;
        const uint32_t *blocks;
        uint32_t top_k;
        mc_status want;
        const char *field;
    } bad[] = {
        {0, 1, 1, b9, 0, MC_ERR_FORMAT, "kv_blocks"},
        {0, 5, 2, b11, 0, MC_ERR_FORMAT, "kv_blocks"},
        {0, 5, 1, b01, 0, MC_ERR_FORMAT, "seqs[0]"},
        {0, 2, 1, b01, 3, MC_ERR_ARG, "top_k"}, /* candidates: mc_step_exec_run_top */
        {0, 8, 2, b01, 0, MC_ERR_FORMAT, "seqs[0]"},
        {3, 1, 1, b01, 0, MC_ERR_FORMAT, "start"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mc_step_plan_init(&p);
        mc_err_clear(&e);
        CHECK(mc_step_plan_add_seq(&p, 1, bad[i].start, tok, bad[i].n, bad[i].blocks, bad[i].nb,
                                   MC_LOGITS_LAST, bad[i].top_k, &e) == MC_OK);
        mc_status st = mc_step_exec_run(ex, &p, lg, &e);
        if (st != bad[i].want || !strstr(e.msg, bad[i].field))
            fprintf(stderr, "  refusal %zu: status %d, message '%s' (want '%s')\n", i, (int)st,
                    e.msg, bad[i].field);
        CHECK(st == bad[i].want);
        CHECK(strstr(e.msg, bad[i].field) != NULL);
        CHECK(mc_step_exec_seq_len(ex, 1) == 0);
        mc_step_plan_free(&p);
    }
    /* candidates: a plan whose top_k is not the step's k, k out of range, no arrays */
    {
        int32_t ci[4];
        float cv[4];
        mc_step_top tk = {.k = 2, .ids = ci, .vals = cv};
        mc_step_plan_init(&p);
        CHECK(mc_step_plan_add_seq(&p, 1, 0, tok, 2, b01, 1, MC_LOGITS_LAST, 3, &e) == MC_OK);
        mc_err_clear(&e);
        CHECK(mc_step_exec_run_top(ex, &p, &tk, &e) == MC_ERR_ARG &&
              strstr(e.msg, "seqs[0].top_k = 3, but this step gives 2"));
        tk.k = 0;
        mc_err_clear(&e);
        CHECK(mc_step_exec_run_top(ex, &p, &tk, &e) == MC_ERR_ARG && strstr(e.msg, "k = 0"));
        mc_step_plan_free(&p);
        mc_step_plan_init(&p);
        CHECK(mc_step_plan_add_seq(&p, 1, 0, tok, 2, b01, 1, MC_LOGITS_LAST, 2, &e) == MC_OK);
        tk = (mc_step_top){.k = 2, .ids = NULL, .vals = cv};
        mc_err_clear(&e);
        CHECK(mc_step_exec_run_top(ex, &p, &tk, &e) == MC_ERR_ARG && strstr(e.msg, "NULL"));
        CHECK(mc_step_exec_seq_len(ex, 1) == 0);
        mc_step_plan_free(&p);
        mc_err_clear(&e);
    }
    /* a good step, then one that does not continue at the known length */
    CHECK(mc_kv_pool_reserve(pool, 1, 8, &e) == MC_OK);
    uint32_t nt;
    const uint32_t *tab = mc_kv_pool_table(pool, 1, &nt);
    mc_step_plan_init(&p);
    CHECK(mc_step_plan_add_seq(&p, 1, 0, tok, 3, tab, nt, MC_LOGITS_LAST, 0, &e) == MC_OK);
    CHECK(mc_step_exec_run(ex, &p, lg, &e) == MC_OK);
    CHECK(mc_step_exec_seq_len(ex, 1) == 3);
    mc_step_plan_free(&p);
    mc_step_plan_init(&p);
    CHECK(mc_step_plan_add_seq(&p, 1, 0, tok, 1, tab, nt, MC_LOGITS_LAST, 0, &e) == MC_OK);
    CHECK(mc_step_exec_run(ex, &p, lg, &e) == MC_ERR_FORMAT);
    mc_step_plan_free(&p);
    CHECK(mc_step_exec_release(ex, 1, &e) == MC_OK);
    CHECK(mc_step_exec_seq_len(ex, 1) == 0);
    CHECK(mc_kv_pool_n_used(pool) == 0);
    CHECK(mc_step_exec_release(ex, 1, &e) == MC_ERR_NOT_FOUND);
    mc_step_exec_free(ex);
}

/* Llama 4 with chunks of 8 positions and a temperature floor of 4, so that
 * the test's sequences (up to 32 tokens) cross chunks and NoPE layers get
 * a query temperature other than 1. */
static void short_chunks(mc_model *m)
{
    m->d.attn_chunk = 8;
    m->d.attn_floor_scale = 4.0;
}

/* kv_b's FP8 scales re-cut into 48 x 40 blocks of new values: the heads'
 * runs of nope = 32 and v = 32 rows then start off the block edges (at 16
 * and 32 past one) and some straddle two blocks (rows 128..159: blocks 2
 * and 3), and the 64 latent columns split 40 + 24; the executor's FP8 copies
 * of W_kb^T and W_vb (bind_kv_b_fp8) against mc_model_forward, which widens
 * kv_b row by row through the same scales. */
static void reblock_kv_b(mc_model *m)
{
    for (int l = 0; l < m->d.n_layers; l++) {
        mc_mat *w = &m->layers[l].kv_b;
        if (w->dtype != MC_DT_F8_E4M3 || !w->scale)
            continue;
        int br = 48, bc = 40, sr = (w->rows + br - 1) / br, sc = (w->cols + bc - 1) / bc;
        float *g = mc_model_own(m, malloc((size_t)sr * sc * sizeof *g));
        if (!g) {
            CHECK(0);
            return;
        }
        for (int r = 0; r < sr; r++) /* the old scale there times 0.75 .. 1.25 */
            for (int c = 0; c < sc; c++)
                g[r * sc + c] = w->scale[(size_t)(r * br / w->block_rows) * w->scale_cols +
                                         c * bc / w->block_cols] *
                                (0.75f + 0.125f * (float)((r * 3 + c + l) % 5));
        w->scale = g;
        w->block_rows = br;
        w->block_cols = bc;
        w->scale_cols = sc;
    }
}

/* Schedule equivalence and golden logits for one fixture model; tweak (or
 * NULL) changes the loaded model's description first, and then only the
 * reference is compared (the golden logits are for the fixture's config). */
static void test_model(const char *fx, const char *name, mc_backend *be, int do_refusals,
                       void (*tweak)(mc_model *))
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", fx, name);
    mc_err e;
    mc_err_clear(&e);
    mc_model *m = NULL;
    if (mc_model_load(dir, &m, &e) != MC_OK) {
        fprintf(stderr, "%s: %s\n", name, e.msg);
        CHECK(0);
        return;
    }
    if (tweak)
        tweak(m);
    V = m->d.vocab;
    max_err = 0;
    shown = 0;
    clock_t t0 = clock();
    if (!load_inputs(dir, m)) {
        CHECK(0);
        mc_model_free(m);
        return;
    }
    /* schedules: budgets 1 .. T, block sizes 1, 3, 16 and random */
    int T = 0;
    for (int s = 0; s < NSEQ; s++)
        T += seqs[s].len;
    struct {
        uint32_t budget, bs;
        int small;
    } sched[] = {{1, 1, 0},           {1, 16, 1},  {2, 3, 1},  {5, 16, 0}, {7, 1, 1},
                 {16, 3, 0},          {23, 16, 1}, {40, 1, 0}, {64, 3, 1}, {(uint32_t)T, 16, 0},
                 {(uint32_t)T, 3, 1}, {0, 0, 1},   {0, 0, 0}};
    float *grows[3];
    for (int s = 0; s < 3; s++)
        grows[s] = calloc((size_t)seqs[s].len * V, sizeof(float));
    long rows = 0;
    graph_launches = graph_captures = graph_refused = 0;
    for (size_t i = 0; i < sizeof sched / sizeof sched[0]; i++) {
        uint32_t budget = sched[i].budget ? sched[i].budget : 1 + rnd((uint32_t)T);
        uint32_t bs = sched[i].bs ? sched[i].bs : 1 + rnd(16);
        int before = check_failures;
        long n = run_schedule(m, be, budget, bs, sched[i].small, i == 3 ? grows : NULL);
        CHECK(n > 0);
        rows += n > 0 ? n : 0;
        if (check_failures != before || n <= 0)
            fprintf(stderr, "  %s: schedule %zu (budget %u, block size %u, %s pool) failed\n", name,
                    i, budget, bs, sched[i].small ? "small" : "full");
    }
    printf("%s%s: schedule equivalence: %zu schedules, %ld rows compared, max relative error "
           "%.3g\n",
           name, tweak ? " (tweaked)" : "", sizeof sched / sizeof sched[0], rows, max_err);
    const char *gv = getenv("MC_STEP_GRAPHS");
    if (gv && !strcmp(gv, "1") && mc_backend_sync_checks(be) == 0) {
        /* the rows above came from graphs too: on every family whose steps
         * can be captured (V3.2's indexer waits: op by op, said) */
        printf("%s: step graphs: %llu captured, %llu launches, %llu shapes op by op\n", name,
               (unsigned long long)graph_captures, (unsigned long long)graph_launches,
               (unsigned long long)graph_refused);
        if (strcmp(name, "deepseek-v32-tiny") != 0)
            CHECK(graph_captures > 0 && graph_launches > graph_captures && graph_refused == 0);
        else
            CHECK(graph_launches == 0 && graph_refused > 0);
    }
    /* golden logits of the reference implementation, for every row of
     * schedule 3 (it asks ALL) */
    double gmax = 0;
    for (int s = 0; s < 3 && !tweak; s++)
        for (int p = 0; p < seqs[s].len; p++) {
            double err = row_err(grows[s] + (size_t)p * V, golden + ((size_t)s * golden_T + p) * V);
            gmax = err > gmax ? err : gmax;
            if (!(err <= 1e-4) && shown++ < 8)
                fprintf(stderr, "  golden: seq %d pos %d: relative error %.3g\n", s, p, err);
        }
    CHECK(gmax <= 1e-4);
    double rmax = 0; /* the reference's own distance to the golden logits */
    for (int s = 0; s < 3 && !tweak; s++)
        for (int p = 0; p < seqs[s].len; p++) {
            double err =
                row_err(seqs[s].ref + (size_t)p * V, golden + ((size_t)s * golden_T + p) * V);
            rmax = err > rmax ? err : rmax;
        }
    if (!tweak)
        printf("%s: golden logits: max relative error %.3g (mc_model_forward: %.3g)\n", name,
               gmax, rmax);
    if (do_refusals)
        refusals(m, be);
    printf("%s: %.2f s\n", name, (double)(clock() - t0) / CLOCKS_PER_SEC);
    for (int s = 0; s < NSEQ; s++) {
        free(seqs[s].ref);
        seqs[s].ref = NULL;
    }
    for (int s = 0; s < 3; s++)
        free(grows[s]);
    free(golden);
    golden = NULL;
    mc_model_free(m);
}

int main(int argc, char **argv)
{
    const char *kp = getenv("MC_KERNELS");
    if (kp && !strcmp(kp, "scalar"))
        TOL = 1e-6;
    const char *fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "usage: test_step_exec FIXTURES\n");
        return 2;
    }
    mc_err e;
    mc_err_clear(&e);
    mc_backend *be = NULL;
    const char *dv = getenv("MC_CPU_AS_DEVICE"); /* the CPU acting as a device (its checks
                                                    deferred, its memory reached by copies) */
    if ((dv && !strcmp(dv, "1") ? mc_backend_cpu_device_init(&be, &e)
                                : mc_backend_cpu_init(&be, &e)) != MC_OK) {
        fprintf(stderr, "test_step_exec: %s\n", e.msg);
        return 1;
    }
    test_model(fx, "qwen3-moe-tiny", be, 1, NULL);   /* GQA, q/k norms, softmax router */
    test_model(fx, "deepseek-v3-tiny", be, 0, NULL); /* MLA, group-limited sigmoid, shared */
    test_model(fx, "deepseek-v3-tiny-fp8", be, 0, NULL); /* FP8 block scales, kv_b as FP8 */
    test_model(fx, "deepseek-v3-tiny-fp8", be, 0, reblock_kv_b); /* kv_b blocks off the heads */
    test_model(fx, "deepseek-v32-tiny", be, 0, NULL);    /* the indexer's top-8 of up to 32 */
    test_model(fx, "mistral4-tiny", be, 0, NULL); /* query scale past 16 positions, YaRN */
    test_model(fx, "llama4-tiny", be, 0, NULL);   /* NoPE, QK L2 norm, top-1 router, shared */
    test_model(fx, "llama4-tiny", be, 0, short_chunks); /* chunks of 8, temperature */
    /* combinations the executor (like mc_model_forward) does not implement
     * are refused at init, naming what is missing: descriptions changed
     * after loading (the refusal comes before any weight is bound) */
    struct {
        const char *model, *want;
        int what;
    } later[] = {{"deepseek-v3-tiny", "MLA with Llama 4", 0},
                 {"deepseek-v32-tiny", "without a query LoRA", 1},
                 {"qwen3-moe-tiny", "GQA with the Mistral 4", 2}};
    for (size_t i = 0; i < sizeof later / sizeof later[0]; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/models/%s", fx, later[i].model);
        mc_model *m = NULL;
        mc_step_exec *ex = NULL;
        mc_err_clear(&e);
        CHECK(mc_model_load(dir, &m, &e) == MC_OK);
        if (!m)
            continue;
        if (later[i].what == 0)
            m->d.attn_chunk = 8;
        else if (later[i].what == 1)
            m->d.q_lora_rank = 0;
        else
            m->d.llama4_beta = 0.1;
        CHECK(mc_step_exec_init(m, be, 8, 4, 8, &ex, &e) == MC_ERR_UNSUPPORTED);
        CHECK(strstr(e.msg, later[i].want) != NULL);
        CHECK(ex == NULL);
        printf("refused: %s\n", e.msg);
        if (ex)
            mc_step_exec_free(ex);
        mc_model_free(m);
    }
    mc_backend_free(be);
    return check_report("test_step_exec");
}
