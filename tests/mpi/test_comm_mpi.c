/* test_comm_mpi.c - the MPI data plane (run under mpirun with 1..4 ranks)
 * on inputs whose results are known exactly: all-reduce of small integers
 * (and bitwise agreement with a rank-order sum), all-to-all-v payloads that
 * encode (sender, receiver, index) with zero and uneven counts, a ring of
 * send/recv (empty and multi-megabyte messages), barrier, split into
 * sub-communicators (and a color that opts out), size mismatches on recv
 * reported as errors, and the worker's broadcast and agreement helpers.
 *
 * `test_comm_mpi spin` instead runs collectives until the job is ended
 * (failure tests of run_mpi.py stop or kill processes of it): each rank
 * prints "rank R spinning (pid P)" once, then loops. */
#include "comm.h"
#include "comm_mpi.h"
#include "parallel.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int g_rank = 0, g_fail = 0, g_checks = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        g_checks++;                                                                                \
        if (!(cond) && g_fail++ < 10)                                                              \
            fprintf(stderr, "rank %d: %s:%d: CHECK failed: %s\n", g_rank, __FILE__, __LINE__,      \
                    #cond);                                                                        \
    } while (0)

#define OK(call)                                                                                   \
    do {                                                                                           \
        mc_err_clear(&err);                                                                        \
        mc_status st_ = (call);                                                                    \
        g_checks++;                                                                                \
        if (st_ != MC_OK && g_fail++ < 10)                                                         \
            fprintf(stderr, "rank %d: %s:%d: %s failed: %s\n", g_rank, __FILE__, __LINE__, #call,  \
                    err.msg);                                                                      \
    } while (0)

static float ar_input(int r, size_t i) { return (float)((int)(i % 23) * (r + 1) - 7 * r); }

static void test_all_reduce(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    size_t sizes[] = {0, 1, 3, 1000, 100003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t cnt = sizes[s];
        float *b = malloc((cnt ? cnt : 1) * sizeof *b);
        for (size_t i = 0; i < cnt; i++)
            b[i] = ar_input(r, i);
        OK(mc_comm_all_reduce_sum_f32(c, b, cnt, &err));
        int bad = 0;
        for (size_t i = 0; i < cnt; i++) {
            float want = 0; /* rank order, as comm.h promises */
            for (int p = 0; p < n; p++)
                want += ar_input(p, i);
            bad += b[i] != want;
        }
        CHECK(bad == 0);
        free(b);
    }
    /* non-integer values: every rank must get bitwise the same sums */
    size_t cnt = 4097;
    float *b = malloc(cnt * sizeof *b), *ref = malloc(cnt * sizeof *ref);
    for (size_t i = 0; i < cnt; i++)
        b[i] = 1.0f / (float)(3 + i + 7 * r) + 1e-3f * (float)r;
    OK(mc_comm_all_reduce_sum_f32(c, b, cnt, &err));
    memcpy(ref, b, cnt * sizeof *b);
    /* broadcast rank 0's result and compare */
    OK(mc_par_bcast(c, 0, ref, cnt * sizeof *ref, &err));
    CHECK(memcmp(ref, b, cnt * sizeof *b) == 0);
    free(b);
    free(ref);
}

static size_t a2a_count(int s, int d) { return (size_t)((s * 3 + d * 5 + s * d) % 4) * 3; }
static uint32_t a2a_value(int s, int d, size_t k) { return (uint32_t)(s << 20 | d << 10 | k); }

static void test_all_to_all_v(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    size_t *sc = calloc((size_t)n, sizeof *sc), *sd = calloc((size_t)n, sizeof *sd);
    size_t *rc = calloc((size_t)n, sizeof *rc), *rd = calloc((size_t)n, sizeof *rd);
    size_t so = 0, ro = 0;
    for (int p = 0; p < n; p++) {
        sc[p] = a2a_count(r, p) * 4;
        sd[p] = so;
        so += sc[p];
        rc[p] = a2a_count(p, r) * 4;
        rd[p] = ro + 4; /* leave a gap before each block */
        ro += rc[p] + 4;
    }
    uint32_t *sb = malloc(so + 4), *rb = malloc(ro + 4);
    for (int p = 0; p < n; p++)
        for (size_t k = 0; k < a2a_count(r, p); k++)
            sb[sd[p] / 4 + k] = a2a_value(r, p, k);
    for (size_t i = 0; i < ro / 4; i++)
        rb[i] = 0xdeadbeefu;
    OK(mc_comm_all_to_all_v(c, so ? sb : NULL, so, sc, sd, ro ? rb : NULL, ro, rc, rd, &err));
    int bad = 0;
    for (int p = 0; p < n; p++) {
        bad += rb[rd[p] / 4 - 1] != 0xdeadbeefu; /* gap untouched */
        for (size_t k = 0; k < a2a_count(p, r); k++)
            bad += rb[rd[p] / 4 + k] != a2a_value(p, r, k);
    }
    CHECK(bad == 0);
    free(sb);
    free(rb);
    free(sc);
    free(sd);
    free(rc);
    free(rd);
}

static void test_ring(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    if (n < 2)
        return;
    size_t lens[] = {0, 5, (size_t)3 << 20};
    for (size_t li = 0; li < 3; li++) {
        size_t len = lens[li];
        unsigned char *s = malloc(len + 1), *d = malloc(len + 1);
        for (size_t i = 0; i < len; i++)
            s[i] = (unsigned char)(i * 7 + r);
        int to = (r + 1) % n, from = (r - 1 + n) % n;
        if (r % 2 == 0) {
            OK(mc_comm_send(c, to, s, len, &err));
            OK(mc_comm_recv(c, from, d, len, &err));
        } else {
            OK(mc_comm_recv(c, from, d, len, &err));
            OK(mc_comm_send(c, to, s, len, &err));
        }
        int bad = 0;
        for (size_t i = 0; i < len; i++)
            bad += d[i] != (unsigned char)(i * 7 + from);
        CHECK(bad == 0);
        free(s);
        free(d);
    }
    /* a receiver that expects a different size gets an error, not a crash */
    if (r < 2) {
        char buf[16] = {0};
        mc_err_clear(&err);
        if (r == 0) {
            OK(mc_comm_send(c, 1, buf, 8, &err));
            OK(mc_comm_send(c, 1, buf, 16, &err));
        } else {
            CHECK(mc_comm_recv(c, 0, buf, 16, &err) == MC_ERR_ARG); /* peer sent fewer */
            CHECK(strstr(err.msg, "peer sent 8") != NULL);
            mc_err_clear(&err);
            CHECK(mc_comm_recv(c, 0, buf, 8, &err) == MC_ERR_ARG); /* peer sent more */
            CHECK(strstr(err.msg, "sent more") != NULL);
        }
    }
}

static void test_split(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    mc_comm *sub = NULL, *none = NULL;
    /* two groups (even / odd), ranked in reverse */
    OK(mc_comm_split(c, r % 2, -r, &sub, &err));
    CHECK(sub != NULL);
    if (sub) {
        int members = (n - r % 2 + 1) / 2;
        CHECK(mc_comm_size(sub) == members);
        float v = (float)r;
        OK(mc_comm_all_reduce_sum_f32(sub, &v, 1, &err));
        float want = 0;
        for (int p = r % 2; p < n; p += 2)
            want += (float)p;
        CHECK(v == want);
        OK(mc_comm_barrier(sub, &err));
        CHECK(!strcmp(mc_comm_backend(sub), "mpi"));
    }
    /* rank 0 opts out */
    OK(mc_comm_split(c, r == 0 ? MC_COMM_COLOR_NONE : 1, r, &none, &err));
    CHECK((none == NULL) == (r == 0));
    mc_comm_free(sub);
    mc_comm_free(none);
}

static void test_agree(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    mc_err_clear(&err);
    CHECK(mc_par_agree(c, MC_OK, &err) == MC_OK);
    if (n < 2)
        return;
    /* ranks 1.. fail; only rank 1 keeps its message */
    mc_err_clear(&err);
    mc_status st = r >= 1 ? mc_err_set(&err, MC_ERR_CONFIG, "rank %d failed", r) : MC_OK;
    st = mc_par_agree(c, st, &err);
    CHECK(st != MC_OK);
    if (r == 1)
        CHECK(!strcmp(err.msg, "rank 1 failed"));
    else
        CHECK(err.msg[0] == '\0');
}

/* Collectives forever, on the world and on a split of it; returns 1 when
 * one fails (it should not: the watchdog or the launcher ends the job). */
static int spin(mc_comm *world)
{
    mc_err err;
    mc_err_clear(&err);
    mc_comm *half = NULL;
    if (mc_comm_split(world, g_rank % 2, g_rank, &half, &err) != MC_OK) {
        fprintf(stderr, "rank %d: split: %s\n", g_rank, err.msg);
        return 1;
    }
    printf("rank %d spinning (pid %ld)\n", g_rank, (long)getpid());
    fflush(stdout);
    float buf[256];
    for (;;) {
        for (int i = 0; i < 256; i++)
            buf[i] = (float)i;
        if (mc_comm_all_reduce_sum_f32(world, buf, 256, &err) != MC_OK ||
            mc_comm_barrier(half, &err) != MC_OK || mc_comm_barrier(world, &err) != MC_OK) {
            fprintf(stderr, "rank %d: %s\n", g_rank, err.msg);
            return 1;
        }
    }
}

int main(int argc, char **argv)
{
    mc_err err;
    mc_err_clear(&err);
    mc_comm *world = NULL;
    if (mc_comm_world_init(&argc, &argv, &world, &err) != MC_OK) {
        fprintf(stderr, "test_comm_mpi: %s\n", err.msg);
        return 1;
    }
    g_rank = mc_comm_rank(world);
    if (!mc_comm_mpi_active()) {
        fprintf(stderr, "test_comm_mpi: not started by mpirun\n");
        mc_comm_world_finalize(world);
        return 1;
    }
    CHECK(!strcmp(mc_comm_backend(world), "mpi"));
    if (argc > 1 && !strcmp(argv[1], "spin"))
        return spin(world);
    test_all_reduce(world);
    test_all_to_all_v(world);
    test_ring(world);
    test_split(world);
    test_agree(world);
    OK(mc_comm_barrier(world, &err));
    /* everyone's verdict: rank 0 reports */
    float bad = (float)g_fail;
    mc_comm_all_reduce_sum_f32(world, &bad, 1, &err);
    if (g_rank == 0)
        printf("test_comm_mpi: %d ranks, %d checks per rank, %s\n", mc_comm_size(world), g_checks,
               bad == 0 ? "all passed" : "FAILURES");
    mc_comm_world_finalize(world);
    return bad == 0 ? 0 : 1;
}
