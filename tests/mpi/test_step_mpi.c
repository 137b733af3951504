/* test_step_mpi.c - the step executor under a parallel layout (mpirun):
 * random schedules of several sequences, spread over the dp groups, give
 * every position the logits the sequence gets alone in one process
 * (mc_model_forward on the whole model, computed by every rank).
 *
 * usage: mpirun -np N test_step_mpi FIXTURES MODEL TP EP PP
 *
 * Every rank runs the same loop: each dp group schedules its own sequences
 * (sequence s belongs to group s % dp) with a random step budget, block
 * size, prefill chunks and decode tokens mixed, and the ranks of a group
 * build identical plans from one random stream; a group that has finished
 * runs empty plans while others work, so every rank calls mc_step_exec_run
 * the same number of times. The output rank of each group compares the
 * rows it receives; rank 0 reports the verdict of all of them. Every
 * other schedule asks for TOPK candidates a row instead
 * (mc_step_exec_run_top; under tp each rank's vocabulary slice gives its
 * own and the output rank merges them): each candidate's logit is the
 * reference's at its id (TOL), they descend, and they are a top-k of the
 * reference row up to that noise; the log-sum-exp is the reference row's. */
#include "backend.h"
#include "comm.h"
#include "comm_mpi.h"
#include "model.h"
#include "ref.h"
#include "step.h"
#include "step_plan.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NSEQ 7
#define MAXLEN 40
#define TOL 2e-6 /* as unit.test_step_exec on the SIMD paths; measured <= 4.4e-7 */
#define TOPK 5

static int g_fail, g_rank;
static int V;
static double g_max_err;
static int g_shown;

typedef struct {
    int len;
    uint32_t tok[MAXLEN];
    float *ref; /* (len, V) */
} seq_t;
static seq_t seqs[NSEQ];

static uint64_t rng;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "rank %d: ", g_rank);                                                      \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        g_fail++;                                                                                  \
    } while (0)

static void check_row(int s, int p, const float *got)
{
    const float *ref = seqs[s].ref + (size_t)p * V;
    double m = 0, d = 0;
    int at = 0;
    for (int v = 0; v < V; v++) {
        double x = fabs((double)ref[v]), e = fabs((double)got[v] - ref[v]);
        m = x > m ? x : m;
        if (e > d) {
            d = e;
            at = v;
        }
    }
    double rel = d / (m > 0 ? m : 1);
    g_max_err = rel > g_max_err ? rel : g_max_err;
    if (rel > TOL) {
        g_fail++;
        if (g_shown++ < 6)
            fprintf(stderr, "rank %d: seq %d pos %d: relative error %.3g at logit %d (got %.7g, "
                    "want %.7g)\n", g_rank, s, p, rel, at, got[at], ref[at]);
    }
}

static void check_top_row(int s, int p, const int32_t *ids, const float *vals, double lse)
{
    const float *ref = seqs[s].ref + (size_t)p * V;
    double best[TOPK], m, want_lse;
    mc_ref_row_stats(ref, V, TOPK, best, &m, &want_lse);
    double tol = TOL * (m > 0 ? m : 1);
    for (int j = 0; j < TOPK; j++) {
        int id = ids[j];
        int ok = id >= 0 && id < V && fabs((double)vals[j] - ref[id]) <= tol &&
                 (j == 0 || (vals[j] <= vals[j - 1] && ids[j] != ids[j - 1])) &&
                 ref[id] >= best[TOPK - 1] - 2 * tol;
        if (!ok) {
            g_fail++;
            if (g_shown++ < 6)
                fprintf(stderr, "rank %d: seq %d pos %d: candidate %d is id %d (%.7g), the "
                        "reference has %.7g there and its %d best end at %.7g\n", g_rank, s, p, j,
                        id, vals[j], id >= 0 && id < V ? ref[id] : NAN, TOPK, best[TOPK - 1]);
        }
    }
    if (!(fabs(lse - want_lse) <= 4 * tol)) {
        g_fail++;
        if (g_shown++ < 6)
            fprintf(stderr, "rank %d: seq %d pos %d: log-sum-exp %.9g, the reference's %.9g\n",
                    g_rank, s, p, lse, want_lse);
    }
}

/* One random schedule of this rank's dp group; collective. */
static int run_schedule(mc_model *m, mc_backend *be, mc_comm *world, int sched)
{
    const mc_layout *lay = &m->lay;
    int dp = lay->dp, g = lay->dp_rank;
    mc_err e;
    mc_err_clear(&e);
    /* the same budget and block size everywhere, then a stream per group */
    rng = 0x9E3779B97F4A7C15ull * (uint64_t)(sched + 1);
    uint32_t bs = 1 + rnd(16), budget = 1 + rnd(48);
    rng ^= 0xD1B54A32D192ED03ull * (uint64_t)(g + 1);
    uint32_t nb = 0;
    for (int s = g; s < NSEQ; s += dp)
        nb += (uint32_t)(seqs[s].len + bs - 1) / bs;
    mc_step_exec *ex = NULL;
    mc_status st = mc_step_exec_init(m, be, nb ? nb : 1, bs, budget, &ex, &e);
    if (mc_par_agree(world, st, &e) != MC_OK) {
        FAIL("init: %s", e.msg);
        return 0;
    }
    mc_kv_pool *pool = mc_step_exec_pool(ex);
    int done[NSEQ] = {0}, prompt[NSEQ], admitted[NSEQ] = {0};
    for (int s = 0; s < NSEQ; s++)
        prompt[s] = 1 + (int)rnd((uint32_t)seqs[s].len);
    float *logits = malloc((size_t)budget * V * sizeof *logits);
    int top = sched % 2 == 1 && V >= TOPK; /* candidates instead of logits */
    int32_t *cid = malloc((size_t)budget * TOPK * sizeof *cid);
    float *cval = malloc((size_t)budget * TOPK * sizeof *cval);
    double *clse = malloc((size_t)budget * sizeof *clse);
    int steps = 0;
    for (;;) {
        /* this group's plan: running sequences continue (prefill chunk or one
         * token), new ones join while the budget lasts */
        mc_step_plan plan;
        mc_step_plan_init(&plan);
        int ent[NSEQ], cnt[NSEQ], ne = 0;
        uint32_t left = budget;
        for (int s = g; s < NSEQ && left > 0; s += dp) {
            if (done[s] == seqs[s].len)
                continue;
            if (!admitted[s]) {
                if (rnd(3) == 0 && ne > 0)
                    continue; /* joins a later step */
                if (mc_kv_pool_reserve(pool, (uint64_t)s, (uint64_t)seqs[s].len, &e) != MC_OK) {
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
            uint32_t n_tab;
            const uint32_t *tab = mc_kv_pool_table(pool, (uint64_t)s, &n_tab);
            if (mc_step_plan_add_seq(&plan, (uint64_t)s, (uint32_t)d, seqs[s].tok + d, c, tab,
                                     n_tab, MC_LOGITS_ALL, top ? TOPK : 0, &e) != MC_OK) {
                FAIL("plan: %s", e.msg);
                break;
            }
            ent[ne] = s;
            cnt[ne++] = (int)c;
            left -= c;
        }
        /* anyone left to run? */
        float work = (float)ne;
        if (mc_comm_all_reduce_sum_f32(world, &work, 1, &e) != MC_OK) {
            FAIL("all-reduce: %s", e.msg);
            mc_step_plan_free(&plan);
            break;
        }
        if (work == 0) {
            mc_step_plan_free(&plan);
            break;
        }
        plan.step_id = (uint64_t)steps++;
        mc_step_top tk = {.k = TOPK, .ids = cid, .vals = cval, .lse = clse};
        st = top ? mc_step_exec_run_top(ex, &plan, &tk, &e)
                 : mc_step_exec_run(ex, &plan, mc_model_is_output(m) ? logits : NULL, &e);
        if (st != MC_OK) {
            FAIL("step %d (%d entries): %s", steps, ne, e.msg);
            mc_step_plan_free(&plan);
            free(logits);
            free(cid);
            free(cval);
            free(clse);
            return 0; /* the peers are stuck in a collective: the caller aborts */
        }
        const float *row = logits;
        int r = 0;
        for (int i = 0; i < ne; i++) {
            int s = ent[i];
            for (int j = 0; j < cnt[i]; j++, row += V, r++)
                if (mc_model_is_output(m) && top)
                    check_top_row(s, done[s] + j, cid + (size_t)r * TOPK, cval + (size_t)r * TOPK,
                                  clse[r]);
                else if (mc_model_is_output(m))
                    check_row(s, done[s] + j, row);
            done[s] += cnt[i];
            if (mc_step_exec_seq_len(ex, (uint64_t)s) != (uint32_t)done[s])
                FAIL("seq %d: known length %u, want %d", s, mc_step_exec_seq_len(ex, (uint64_t)s),
                     done[s]);
            if (done[s] == seqs[s].len && mc_step_exec_release(ex, (uint64_t)s, &e) != MC_OK)
                FAIL("release: %s", e.msg);
        }
        mc_step_plan_free(&plan);
    }
    if (mc_kv_pool_n_used(pool) != 0)
        FAIL("%u blocks still used", mc_kv_pool_n_used(pool));
    free(logits);
    free(cid);
    free(cval);
    free(clse);
    mc_step_exec_free(ex);
    return 1;
}

int main(int argc, char **argv)
{
    mc_err e;
    mc_err_clear(&e);
    mc_comm *world = NULL;
    if (mc_comm_world_init(&argc, &argv, &world, &e) != MC_OK) {
        fprintf(stderr, "test_step_mpi: %s\n", e.msg);
        return 1;
    }
    g_rank = mc_comm_rank(world);
    if (argc != 6) {
        fprintf(stderr, "usage: test_step_mpi FIXTURES MODEL TP EP PP\n");
        mc_comm_world_finalize(world);
        return 2;
    }
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", argv[1], argv[2]);
    int tp = atoi(argv[3]), ep = atoi(argv[4]), pp = atoi(argv[5]);
    mc_model *ref = NULL, *m = NULL;
    mc_backend *be = NULL;
    if (mc_model_load(dir, &ref, &e) != MC_OK) {
        fprintf(stderr, "rank %d: %s\n", g_rank, e.msg);
        mc_comm_world_abort(world, 1);
    }
    V = ref->d.vocab;
    /* sequences of different lengths, each alone through the whole model */
    int lens[NSEQ] = {MAXLEN, 19, 27, 11, 6, 33, 2};
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
            fprintf(stderr, "rank %d: reference: %s\n", g_rank, e.msg);
            mc_comm_world_abort(world, 1);
        }
        mc_kv_free(kv);
    }
    mc_model_free(ref);
    if (mc_model_load_dist(dir, world, tp, ep, pp, &m, &e) != MC_OK) {
        if (e.msg[0])
            fprintf(stderr, "rank %d: %s\n", g_rank, e.msg);
        mc_comm_world_finalize(world);
        return 1;
    }
    if (mc_backend_cpu_init(&be, &e) != MC_OK) {
        fprintf(stderr, "rank %d: %s\n", g_rank, e.msg);
        mc_comm_world_abort(world, 1);
    }
    int schedules = 6;
    for (int i = 0; i < schedules; i++)
        if (!run_schedule(m, be, world, i))
            mc_comm_world_abort(world, 1);
    float bad = (float)g_fail;
    mc_comm_all_reduce_sum_f32(world, &bad, 1, &e);
    if (mc_model_is_output(m))
        printf("rank %d (dp group %d): max relative error %.3g\n", g_rank, m->lay.dp_rank,
               g_max_err);
    fflush(stdout);
    mc_comm_barrier(world, &e);
    if (g_rank == 0)
        printf("test_step_mpi %s tp %d ep %d pp %d on %d ranks: %d schedules, %s\n", argv[2], tp,
               ep, pp, mc_comm_size(world), schedules, bad == 0 ? "all passed" : "FAILURES");
    for (int s = 0; s < NSEQ; s++)
        free(seqs[s].ref);
    mc_model_free(m);
    mc_backend_free(be);
    mc_comm_world_finalize(world);
    return bad == 0 ? 0 : 1;
}
