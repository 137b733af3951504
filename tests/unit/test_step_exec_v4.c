/* test_step_exec_v4.c - DeepSeek-V4 on the step executor (worker/step_v4*.c)
 * against the per-sequence forward pass (mc_model_forward, the old V4 path)
 * and the fixture's golden logits.
 *
 * A few sequences of different lengths run alone through mc_model_forward
 * give the reference logits of every position. The reference's CSA indexer
 * pads its score row to the entries its cache can hold (cap / csa_rate),
 * which decides the order among exact ties (every head's ReLU at 0, common
 * in the tiny model); the executor pads to the entries the sequence's block
 * table can hold, so each sequence reserves its blocks at admission and its
 * reference is computed with cap = that capacity.
 * Random schedules then run the sequences through the executor: one step
 * for everything, step budgets from 1 token up, block sizes 1, 3, 4, 5, 16
 * and random (most split the compressor windows of 4 and 16), random
 * admission and plan order, prefill chunks mixed with other sequences'
 * decode tokens, logits modes ALL / LAST / NONE, pools small enough that
 * sequences wait. Every row must match the reference within 1e-5 relative
 * to the row's largest reference logit (the first mismatches are printed,
 * the maximum reported); schedule 0's rows (golden rows reserving the
 * golden length, as the reference implementation's cache) must match the
 * golden logits within 1e-4. */
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
#define MAXLEN 64
/* Schedule equivalence bound, relative to the row's largest logit: 1e-6 on
 * the scalar kernels (MC_KERNELS=scalar: batch shapes do not change any
 * sum's order, and the rows come out identical but for Llama 4's chunked
 * and DeepSeek-V4's attention, measured <= 3.4e-7); 2e-6 on the SIMD paths,
 * whose products sum in an order that depends on the number of tokens in
 * the call (measured <= 1.34e-6, Mistral 4 on AVX-512). */
static double TOL = 2e-6;
#define NREF 128

typedef struct {
    int len;
    uint32_t tok[MAXLEN];
    int golden_row; /* row of the golden logits this sequence is a prefix of, or -1 */
} seq_t;

static seq_t seqs[NSEQ];
static int V;
static float *golden; /* (3, golden_T, V) */
static int golden_T;
static double max_err;
static int shown;

/* references by sequence and the cache capacity they were computed with */
static struct {
    int seq;
    uint32_t cap;
    float *ref; /* (len, V) */
} refs[NREF];
static int n_refs;
static float *ref[NSEQ]; /* the current schedule's, per sequence */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static double row_err(const float *a, const float *b) {
    double m = 0, d = 0;
    for (int v = 0; v < V; v++) {
        double x = fabs((double)b[v]);
        m = x > m ? x : m;
        double e = fabs((double)a[v] - b[v]);
        d = e > d ? e : d;
    }
    return d / (m > 0 ? m : 1);
}

static int check_row(int s, int p, const float *got) {
    double e = row_err(got, ref[s] + (size_t)p * V);
    max_err = e > max_err ? e : max_err;
    if (e <= TOL) return 1;
    if (shown++ < 8)
        fprintf(stderr, "  seq %d pos %d: relative error %.3g (got[0] %.7g ref[0] %.7g)\n", s, p, e,
                got[0], ref[s][(size_t)p * V]);
    return 0;
}

/* The reference logits of sequence s with a cache of cap positions. */
static float *reference(mc_model *m, int s, uint32_t cap) {
    for (int i = 0; i < n_refs; i++)
        if (refs[i].seq == s && refs[i].cap == cap) return refs[i].ref;
    if (n_refs == NREF) return NULL;
    mc_err e;
    mc_err_clear(&e);
    mc_kv *kv;
    int64_t t64[MAXLEN];
    for (int j = 0; j < seqs[s].len; j++)
        t64[j] = seqs[s].tok[j];
    float *r = malloc((size_t)seqs[s].len * V * sizeof(float));
    if (mc_kv_create(m, (int)cap, &kv, &e) != MC_OK ||
        mc_model_forward(m, kv, t64, seqs[s].len, r, false, &e) != MC_OK) {
        fprintf(stderr, "reference forward: %s\n", e.msg);
        free(r);
        return NULL;
    }
    mc_kv_free(kv);
    refs[n_refs].seq = s;
    refs[n_refs].cap = cap;
    return refs[n_refs++].ref = r;
}

static int load_inputs(const char *dir) {
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
        lg->shape[2] != V || ids->shape[0] < 3 || ids->shape[1] < MAXLEN) {
        fprintf(stderr, "golden file: unexpected tensors\n");
        st_file_close(f);
        return 0;
    }
    int T = golden_T = (int)ids->shape[1];
    int64_t *in = malloc(ids->nbytes);
    golden = malloc(lg->numel * sizeof *golden);
    memcpy(in, ids->data, ids->nbytes);
    st_tensor_to_f32(lg, golden);
    int lens[NSEQ] = {MAXLEN, 41, 23, 11, 6};
    for (int s = 0; s < NSEQ; s++) {
        seqs[s].len = lens[s];
        seqs[s].golden_row = s < 3 ? s : -1;
        for (int j = 0; j < lens[s]; j++)
            seqs[s].tok[j] =
                s < 3 ? (uint32_t)in[(size_t)s * T + j] : (uint32_t)((37 * s + 101 * j + 5) % V);
    }
    free(in);
    st_file_close(f);
    return 1;
}

/* One schedule (budget 0: everything in one step); returns the rows compared, -1 on an error. */
static long run_schedule(mc_model *m, mc_backend *be, uint32_t budget, uint32_t bs, int small_pool,
                         float **golden_rows) {
    mc_err e;
    mc_err_clear(&e);
    /* every sequence reserves its blocks at admission: golden_T positions
     * for the golden rows when golden_rows is asked (as the reference's
     * whole-row cache), else its length; the reference's cache is as large */
    uint32_t need[NSEQ], total = 0, most = 0, all = 0, want[NSEQ];
    for (int s = 0; s < NSEQ; s++) {
        want[s] =
            golden_rows && seqs[s].golden_row >= 0 ? (uint32_t)golden_T : (uint32_t)seqs[s].len;
        need[s] = (want[s] + bs - 1) / bs;
        total += need[s];
        most = need[s] > most ? need[s] : most;
        all += (uint32_t)seqs[s].len;
    }
    int one_step = budget == 0;
    if (one_step) budget = all;
    uint32_t nb = small_pool ? most + rnd(most + 1) : total;
    mc_step_exec *ex;
    if (mc_step_exec_init(m, be, nb, bs, budget, &ex, &e) != MC_OK) {
        fprintf(stderr, "init: %s\n", e.msg);
        return -1;
    }
    for (int s = 0; s < NSEQ; s++)
        if (!(ref[s] = reference(m, s, need[s] * bs))) {
            mc_step_exec_free(ex);
            return -1;
        }
    mc_kv_pool *pool = mc_step_exec_pool(ex);
    int order[NSEQ], done[NSEQ] = {0}, prompt[NSEQ], active[NSEQ] = {0};
    for (int s = 0; s < NSEQ; s++) {
        order[s] = s;
        prompt[s] = one_step ? seqs[s].len : 1 + (int)rnd((uint32_t)seqs[s].len);
    }
    for (int s = NSEQ - 1; s > 0; s--) {
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
        int ent_seq[NSEQ], ent_n[NSEQ], ne = 0, cand[NSEQ], nc = 0;
        uint32_t left = budget;
        for (int s = 0; s < NSEQ; s++)
            if (active[s] && done[s] < seqs[s].len) cand[nc++] = s;
        for (int i = nc - 1; i > 0; i--) {
            int j = (int)rnd((uint32_t)i + 1), t = cand[i];
            cand[i] = cand[j];
            cand[j] = t;
        }
        while (next < NSEQ && nc < NSEQ) {
            int s = order[next];
            if (!mc_kv_pool_can_admit(pool, (uint64_t)want[s])) break;
            if (mc_kv_pool_reserve(pool, (uint64_t)s, (uint64_t)want[s], &e) != MC_OK) return -1;
            active[s] = 1;
            cand[nc++] = s;
            next++;
            if (!one_step && rnd(2)) break;
        }
        for (int i = 0; i < nc && left > 0; i++) {
            int s = cand[i], d = done[s];
            uint32_t c =
                one_step ? (uint32_t)seqs[s].len
                : d < prompt[s]
                    ? 1 + rnd((uint32_t)(prompt[s] - d) < left ? (uint32_t)(prompt[s] - d) : left)
                    : 1;
            ent_seq[ne] = s;
            ent_n[ne++] = (int)c;
            left -= c;
        }
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
            mode[i] = golden_rows || one_step || r < 5 ? MC_LOGITS_ALL
                      : r < 7                          ? MC_LOGITS_LAST
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
            free(logits);
            mc_step_exec_free(ex);
            return -1;
        }
        const float *row = logits;
        for (int i = 0; i < ne; i++) {
            int s = ent_seq[i], d = done[s], c = ent_n[i];
            for (int j = 0; j < c; j++)
                if (mode[i] == MC_LOGITS_ALL || (mode[i] == MC_LOGITS_LAST && j == c - 1)) {
                    CHECK(check_row(s, d + j, row));
                    if (golden_rows && seqs[s].golden_row >= 0)
                        memcpy(golden_rows[s] + (size_t)(d + j) * V, row, (size_t)V * sizeof *row);
                    row += V;
                    compared++;
                }
            done[s] += c;
            CHECK(mc_step_exec_seq_len(ex, (uint64_t)s) == (uint32_t)done[s]);
        }
        mc_step_plan_free(&plan);
        for (int i = 0; i < ne; i++) {
            int s = ent_seq[i];
            if (done[s] == seqs[s].len) {
                CHECK(mc_step_exec_release(ex, (uint64_t)s, &e) == MC_OK);
                finished++;
            }
        }
    }
    CHECK(mc_kv_pool_n_used(pool) == 0);
    free(logits);
    mc_step_exec_free(ex);
    return compared;
}

int main(int argc, char **argv) {
    const char *kp = getenv("MC_KERNELS");
    if (kp && !strcmp(kp, "scalar"))
        TOL = 1e-6;
    const char *fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "usage: test_step_exec_v4 FIXTURES\n");
        return 2;
    }
    mc_err e;
    mc_err_clear(&e);
    mc_backend *be = NULL;
    if (mc_backend_cpu_init(&be, &e) != MC_OK) {
        fprintf(stderr, "test_step_exec_v4: %s\n", e.msg);
        return 1;
    }
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/deepseek-v4-tiny", fx);
    mc_model *m = NULL;
    if (mc_model_load(dir, &m, &e) != MC_OK) {
        fprintf(stderr, "deepseek-v4-tiny: %s\n", e.msg);
        mc_backend_free(be);
        return 1;
    }
    V = m->d.vocab;
    clock_t t0 = clock();
    /* the pool's bytes per block match the executor's V4 pages: head_dim 64,
     * index_head_dim 32; layers 0-2 HCA (window, 2 inputs, entry), layer 3
     * CSA (window, 2 inputs of 128, entry, 2 indexer inputs of 64, key) */
    uint64_t bb = 0;
    CHECK(mc_kv_block_bytes(&m->d, 0, 1, 16, 4, &bb, &e) == MC_OK &&
          bb == (uint64_t)4 * 64 * 4 * 16);
    CHECK(mc_kv_block_bytes(&m->d, 3, 1, 16, 4, &bb, &e) == MC_OK &&
          bb == (uint64_t)(64 + 2 * 128 + 64 + 2 * 64 + 32) * 4 * 16);
    if (!load_inputs(dir)) {
        CHECK(0);
        mc_model_free(m);
        mc_backend_free(be);
        return check_report("test_step_exec_v4");
    }
    /* budget 0: every sequence's prefill in one step */
    struct {
        uint32_t budget, bs;
        int small;
    } sched[] = {{0, 16, 0},   {0, 1, 0},   {0, 5, 0},  {1, 1, 0},   {1, 16, 1}, {2, 3, 1},
                 {5, 4, 0},    {7, 1, 1},   {16, 5, 0}, {23, 16, 1}, {40, 1, 0}, {64, 3, 1},
                 {145, 16, 0}, {145, 5, 1}, {9, 0, 1},  {0, 0, 0},   {30, 0, 1}};
    float *grows[3];
    for (int s = 0; s < 3; s++)
        grows[s] = calloc((size_t)seqs[s].len * V, sizeof(float));
    long rows = 0;
    size_t ns = sizeof sched / sizeof sched[0];
    for (size_t i = 0; i < ns; i++) {
        uint32_t bs = sched[i].bs ? sched[i].bs : 1 + rnd(16);
        int before = check_failures;
        long n = run_schedule(m, be, sched[i].budget, bs, sched[i].small, i == 0 ? grows : NULL);
        CHECK(n > 0);
        rows += n > 0 ? n : 0;
        if (check_failures != before || n <= 0)
            fprintf(stderr, "  schedule %zu (budget %u, block size %u, %s pool) failed\n", i,
                    sched[i].budget, bs, sched[i].small ? "small" : "full");
    }
    printf("deepseek-v4-tiny: schedule equivalence: %zu schedules, %ld rows compared, max "
           "relative error %.3g\n",
           ns, rows, max_err);
    double gmax = 0, rmax = 0;
    for (int s = 0; s < 3; s++) /* schedule 0's: caches of golden_T positions */
        ref[s] = reference(m, s, (uint32_t)golden_T);
    for (int s = 0; s < 3; s++)
        for (int p = 0; p < seqs[s].len; p++) {
            const float *g = golden + ((size_t)s * golden_T + p) * V;
            double err = row_err(grows[s] + (size_t)p * V, g),
                   rr = row_err(ref[s] + (size_t)p * V, g);
            gmax = err > gmax ? err : gmax;
            rmax = rr > rmax ? rr : rmax;
            if (!(err <= 1e-4) && shown++ < 8)
                fprintf(stderr, "  golden: seq %d pos %d: relative error %.3g\n", s, p, err);
        }
    CHECK(gmax <= 1e-4);
    printf("deepseek-v4-tiny: golden logits: max relative error %.3g (mc_model_forward: %.3g)\n",
           gmax, rmax);
    printf("deepseek-v4-tiny: %.2f s\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
    for (int i = 0; i < n_refs; i++)
        free(refs[i].ref);
    for (int s = 0; s < 3; s++)
        free(grows[s]);
    free(golden);
    mc_model_free(m);
    mc_backend_free(be);
    return check_report("test_step_exec_v4");
}
