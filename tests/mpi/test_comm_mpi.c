/* test_comm_mpi.c - the MPI data plane (run under mpirun with 1..4 ranks)
 * on inputs whose results are known exactly: all-reduce of small integers
 * (and bitwise agreement with a rank-order sum), all-to-all-v payloads that
 * encode (sender, receiver, index) with zero and uneven counts, a ring of
 * send/recv (empty and multi-megabyte messages), barrier, split into
 * sub-communicators (and a color that opts out), size mismatches on recv
 * reported as errors, and the worker's broadcast and agreement helpers.
 * Then the calls the GPU backends need: all-reduce in bf16 (small integers,
 * exact; rounding once; bitwise agreement), all-gather(_v) with in-place and
 * zero counts, broadcast from every root (also multi-megabyte), bcast_id of
 * 128 bytes, the asynchronous forms equal to the synchronous ones, and
 * refusals: bad arguments, a bcast_id whose ranks disagree on the length,
 * and with MC_COMM_CHECK=1 disagreeing dtypes, roots and counts.
 *
 * `test_comm_mpi spin` instead runs collectives until the job is ended
 * (failure tests of run_mpi.py stop or kill processes of it): each rank
 * prints "rank R spinning (pid P)" once, then loops.
 * `test_comm_mpi lonely OP` (OP: bcast_id, bcast, iall_reduce) has every
 * rank but rank 1 call OP while rank 1 sleeps: the watchdog must end the
 * job, naming rank 1 (run_mpi.py lonely). */
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

/* ---- typed all-reduce, all-gather, broadcast, bcast_id, async ---------- */

static void test_all_reduce_bf16(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    size_t sizes[] = {0, 1, 5, 100003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t cnt = sizes[s];
        uint16_t *h = malloc((cnt ? cnt : 1) * sizeof *h);
        for (size_t i = 0; i < cnt; i++) /* sums below 256 in magnitude: exact in bf16 */
            h[i] = mc_f32_to_bf16((float)((int)(i % 9) - r));
        OK(mc_comm_all_reduce_sum(c, h, cnt, MC_DT_BF16, &err));
        int bad = 0;
        for (size_t i = 0; i < cnt; i++) {
            int want = 0;
            for (int p = 0; p < n; p++)
                want += (int)(i % 9) - p;
            bad += mc_bf16_to_f32(h[i]) != (float)want;
        }
        CHECK(bad == 0);
        free(h);
    }
    /* rounding: f32 sum of the widened inputs in rank order, rounded once;
     * the same bits on every rank */
    size_t cnt = 3001;
    uint16_t *h = malloc(cnt * sizeof *h), *ref = malloc(cnt * sizeof *ref);
    int bad = 0;
    for (size_t i = 0; i < cnt; i++)
        h[i] = mc_f32_to_bf16(1.0f + (float)(r + 1) / 128.0f + (float)(i % 97));
    OK(mc_comm_all_reduce_sum(c, h, cnt, MC_DT_BF16, &err));
    for (size_t i = 0; i < cnt; i++) {
        float sum = 0.0f;
        for (int p = 0; p < n; p++)
            sum += mc_bf16_to_f32(mc_f32_to_bf16(1.0f + (float)(p + 1) / 128.0f +
                                                 (float)(i % 97)));
        bad += h[i] != mc_f32_to_bf16(sum);
    }
    CHECK(bad == 0);
    memcpy(ref, h, cnt * sizeof *h);
    OK(mc_comm_bcast(c, 0, ref, cnt * sizeof *ref, &err));
    CHECK(memcmp(ref, h, cnt * sizeof *h) == 0);
    free(h);
    free(ref);
}

static uint32_t ag_value(int r, size_t k) { return (uint32_t)r << 20 | (uint32_t)k; }
static size_t agv_count(int r) { return (size_t)((r * 2 + 1) % 5); }

static void test_all_gather(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    enum { K = 1000 };
    uint32_t *send = malloc(K * sizeof *send), *recv = malloc(((size_t)n * K + 1) * sizeof *recv);
    for (int in_place = 0; in_place < 2; in_place++) {
        for (size_t i = 0; i < (size_t)n * K + 1; i++)
            recv[i] = 0xdeadbeefu;
        uint32_t *src = in_place ? recv + (size_t)r * K : send;
        for (size_t k = 0; k < K; k++)
            src[k] = ag_value(r, k);
        OK(mc_comm_all_gather(c, src, K * sizeof *src, recv, &err));
        int bad = recv[(size_t)n * K] != 0xdeadbeefu;
        for (size_t i = 0; i < (size_t)n * K; i++)
            bad += recv[i] != ag_value((int)(i / K), i % K);
        CHECK(bad == 0);
    }
    OK(mc_comm_all_gather(c, NULL, 0, NULL, &err));
    /* all_gather_v: uneven and zero counts, regions in reverse order with gaps */
    size_t *cnt = calloc((size_t)n, sizeof *cnt), *dsp = calloc((size_t)n, sizeof *dsp), off = 1;
    for (int p = n - 1; p >= 0; p--) {
        cnt[p] = agv_count(p) * 4;
        dsp[p] = off * 4;
        off += agv_count(p) + 1;
    }
    for (size_t i = 0; i < off; i++)
        recv[i] = 0xdeadbeefu;
    for (size_t k = 0; k < agv_count(r); k++)
        send[k] = ag_value(r, k);
    OK(mc_comm_all_gather_v(c, send, cnt[r], recv, off * 4, cnt, dsp, &err));
    int bad = 0;
    for (int p = 0; p < n; p++) {
        bad += recv[dsp[p] / 4 - 1] != 0xdeadbeefu;
        for (size_t k = 0; k < agv_count(p); k++)
            bad += recv[dsp[p] / 4 + k] != ag_value(p, k);
    }
    CHECK(bad == 0);
    free(cnt);
    free(dsp);
    free(send);
    free(recv);
}

static void test_bcast(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    size_t lens[] = {0, 37, (size_t)3 << 20};
    for (int root = 0; root < n; root++)
        for (size_t li = 0; li < 3; li++) {
            size_t len = lens[li];
            unsigned char *b = malloc(len + 1);
            for (size_t i = 0; i < len; i++)
                b[i] = r == root ? (unsigned char)(i * 13 + (size_t)root) : 0xee;
            OK(mc_comm_bcast(c, root, len ? b : NULL, len, &err));
            int bad = 0;
            for (size_t i = 0; i < len; i++)
                bad += b[i] != (unsigned char)(i * 13 + (size_t)root);
            CHECK(bad == 0);
            free(b);
        }
}

static void id_bytes(unsigned char *id, size_t len, uint32_t x)
{
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        id[i] = (unsigned char)(x >> 24);
    }
}

static void test_bcast_id(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    unsigned char id[128], want[128];
    id_bytes(want, sizeof want, 0x9e3779b9u);
    if (r == n - 1)
        memcpy(id, want, sizeof id);
    else
        memset(id, 0, sizeof id);
    OK(mc_comm_bcast_id(c, n - 1, id, sizeof id, &err));
    CHECK(memcmp(id, want, sizeof id) == 0);
    /* refused on every rank before anything moves */
    mc_err_clear(&err);
    CHECK(mc_comm_bcast_id(c, n, id, sizeof id, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "bcast_id: root") != NULL);
    mc_err_clear(&err);
    CHECK(mc_comm_bcast_id(c, 0, id, MC_COMM_ID_MAX + 1, &err) == MC_ERR_ARG);
    if (n < 2)
        return;
    /* rank 1 passes 64 bytes, the others 128: every rank refuses, naming rank 1 */
    mc_err_clear(&err);
    CHECK(mc_comm_bcast_id(c, 0, id, r == 1 ? 64 : 128, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "rank 1 root 0 and len 64 (rank(s) differing from rank 0: 1)") != NULL);
    OK(mc_comm_barrier(c, &err)); /* the communicator still works */
}

static void test_async(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    enum { N = 513 };
    float fa[N], fs[N];
    uint16_t ha[N], hs[N];
    unsigned char ba[64], bs[64];
    uint32_t mine[2] = {ag_value(r, 0), ag_value(r, 1)};
    uint32_t *ga = malloc((size_t)n * sizeof mine), *gs = malloc((size_t)n * sizeof mine);
    uint32_t *as = malloc((size_t)n * 4), *aa = malloc((size_t)n * 4), *ad = malloc((size_t)n * 4);
    size_t *cnt = calloc((size_t)n, sizeof *cnt), *dsp = calloc((size_t)n, sizeof *dsp);
    for (size_t i = 0; i < N; i++) {
        fa[i] = fs[i] = 0.25f * (float)((int)(i % 11) - r);
        ha[i] = hs[i] = mc_f32_to_bf16((float)((int)(i % 7) + r));
    }
    for (size_t i = 0; i < sizeof ba; i++)
        ba[i] = bs[i] = r == 0 ? (unsigned char)(3 * i + 1) : 0;
    for (int p = 0; p < n; p++) {
        as[p] = ag_value(r, (size_t)p);
        cnt[p] = 4;
        dsp[p] = (size_t)p * 4;
    }
    mc_comm_req *q[5] = {NULL};
    OK(mc_comm_iall_reduce_sum(c, fa, N, MC_DT_F32, NULL, &q[0], &err));
    OK(mc_comm_iall_reduce_sum(c, ha, N, MC_DT_BF16, NULL, &q[1], &err));
    OK(mc_comm_iall_gather(c, mine, sizeof mine, ga, NULL, &q[2], &err));
    OK(mc_comm_ibcast(c, 0, ba, sizeof ba, NULL, &q[3], &err));
    OK(mc_comm_iall_to_all_v(c, as, (size_t)n * 4, cnt, dsp, aa, (size_t)n * 4, cnt, dsp, NULL,
                             &q[4], &err));
    for (int i = 0; i < 5; i++) {
        CHECK(q[i] != NULL);
        if (q[i])
            OK(mc_comm_wait(q[i], &err));
    }
    OK(mc_comm_all_reduce_sum(c, fs, N, MC_DT_F32, &err));
    OK(mc_comm_all_reduce_sum(c, hs, N, MC_DT_BF16, &err));
    OK(mc_comm_all_gather(c, mine, sizeof mine, gs, &err));
    OK(mc_comm_bcast(c, 0, bs, sizeof bs, &err));
    OK(mc_comm_all_to_all_v(c, as, (size_t)n * 4, cnt, dsp, ad, (size_t)n * 4, cnt, dsp, &err));
    CHECK(memcmp(fa, fs, sizeof fa) == 0 && memcmp(ha, hs, sizeof ha) == 0);
    CHECK(memcmp(ga, gs, (size_t)n * sizeof mine) == 0 && memcmp(ba, bs, sizeof ba) == 0);
    CHECK(memcmp(aa, ad, (size_t)n * 4) == 0);
    int bad = 0;
    for (int p = 0; p < n; p++)
        bad += aa[p] != ag_value(p, (size_t)r) || ga[2 * p] != ag_value(p, 0);
    for (size_t i = 0; i < sizeof ba; i++)
        bad += ba[i] != (unsigned char)(3 * i + 1);
    CHECK(bad == 0);
    mc_err_clear(&err);
    CHECK(mc_comm_iall_reduce_sum(c, fa, N, MC_DT_I32, NULL, &q[0], &err) == MC_ERR_ARG);
    CHECK(q[0] == NULL);
    free(ga);
    free(gs);
    free(as);
    free(aa);
    free(ad);
    free(cnt);
    free(dsp);
}

/* MC_COMM_CHECK=1: ranks that disagree are refused on every rank by the
 * check, before the exchange itself. */
static void test_disagree(mc_comm *c)
{
    mc_err err;
    int n = mc_comm_size(c), r = mc_comm_rank(c);
    if (n < 2)
        return;
    float f[4] = {0};
    mc_err_clear(&err);
    CHECK(mc_comm_all_reduce_sum(c, f, 4, r == 1 ? MC_DT_BF16 : MC_DT_F32, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "different count or dtype") != NULL);
    mc_err_clear(&err);
    CHECK(mc_comm_bcast(c, r == 1 ? 1 : 0, f, sizeof f, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "different root or size") != NULL);
    char send[8] = {0}, *recv = calloc((size_t)n, 8);
    mc_err_clear(&err);
    CHECK(mc_comm_all_gather(c, send, r == 1 ? 8 : 4, recv, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "all_gather: rank 1 contributes 8 bytes, rank 0 expects a different") !=
          NULL);
    free(recv);
    OK(mc_comm_barrier(c, &err)); /* nothing was exchanged: the communicator still works */
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

/* Every rank but 1 calls op; returns only when the call fails (it should
 * not: the watchdog ends the job first). */
static int lonely(mc_comm *world, const char *op)
{
    mc_err err;
    mc_err_clear(&err);
    unsigned char buf[128] = {0};
    mc_status st = MC_OK;
    if (g_rank == 1) {
        sleep(60);
        return 1;
    }
    if (!strcmp(op, "bcast_id")) {
        st = mc_comm_bcast_id(world, 0, buf, sizeof buf, &err);
    } else if (!strcmp(op, "bcast")) {
        st = mc_comm_bcast(world, 1, buf, sizeof buf, &err); /* everyone waits for root 1 */
    } else if (!strcmp(op, "iall_reduce")) {
        mc_comm_req *req = NULL;
        st = mc_comm_iall_reduce_sum(world, buf, 64, MC_DT_BF16, NULL, &req, &err);
        if (st == MC_OK)
            st = mc_comm_wait(req, &err);
    } else {
        fprintf(stderr, "rank %d: lonely: unknown op '%s'\n", g_rank, op);
        return 1;
    }
    fprintf(stderr, "rank %d: lonely %s returned: %s %s\n", g_rank, op, mc_status_str(st),
            err.msg);
    return 1;
}

/* Shared memory over the MPI ranks of this host: each rank's bytes, seen by
 * every rank after a barrier; a split communicator gets its own. */
static void test_shm(mc_comm *c)
{
    mc_err err;
    mc_comm_shm *s = NULL;
    int n = mc_comm_size(c), me = mc_comm_rank(c);
    OK(mc_comm_shm_alloc(c, 3 * 4096 + 1, &s, &err));
    if (!s)
        return;
    uint32_t *mine = mc_comm_shm_seg(s, me);
    for (int i = 0; i < 3 * 1024; i++)
        mine[i] = (uint32_t)(me * 100000 + i);
    OK(mc_comm_barrier(c, &err));
    for (int p = 0; p < n; p++) {
        const uint32_t *seg = mc_comm_shm_seg(s, p);
        int bad = 0;
        for (int i = 0; i < 3 * 1024; i++)
            bad += seg[i] != (uint32_t)(p * 100000 + i);
        CHECK(bad == 0);
    }
    OK(mc_comm_barrier(c, &err));
    mc_comm_shm_free(s);
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
    if (argc > 2 && !strcmp(argv[1], "lonely"))
        return lonely(world, argv[2]);
    test_all_reduce(world);
    test_all_to_all_v(world);
    test_ring(world);
    test_split(world);
    test_agree(world);
    test_all_reduce_bf16(world);
    test_all_gather(world);
    test_bcast(world);
    test_bcast_id(world);
    test_async(world);
    test_shm(world);
    const char *chk = getenv("MC_COMM_CHECK");
    if (chk && !strcmp(chk, "1"))
        test_disagree(world);
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
