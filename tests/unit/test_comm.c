/* test_comm.c - the data-plane collectives on the self communicator and on
 * 1..4 in-process ranks (one thread each), against results known exactly:
 * sums of small integers, all-to-all payloads that encode (sender,
 * receiver, index), a ring of send/recv, barriers, split groups. Then the
 * failure paths: disagreeing ranks and peers that never come fail with a
 * message instead of hanging. Last, the MC_COMM_TIMEOUT grammar and its
 * refusal by mc_comm_world_init (without a launcher: no MPI is started).
 * The typed all-reduce, all-gather, broadcast and asynchronous forms are in
 * test_comm_coll.c. */
#include "check.h"
#include "comm.h"
#include "comm_mpi.h"
#include "comm_ranks.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- all_reduce -------------------------------------------------------- */

/* Input of rank r: small integers, so every partial sum is exact. */
static float ar_input(int r, size_t i) { return (float)((int)(i % 23) * (r + 1) - 7 * r); }

static void check_sum(rank_ctx *t, const float *buf, size_t count, int nranks)
{
    for (size_t i = 0; i < count; i++) {
        float want = 0.0f;
        for (int r = 0; r < nranks; r++)
            want += ar_input(r, i);
        if (buf[i] != want)
            rank_fail(t, "all_reduce[%zu] = %.9g, want %.9g", i, buf[i], want);
    }
}

static void do_all_reduce(rank_ctx *t)
{
    static const size_t counts[] = {0, 1, 7, 1000, 4099};
    float *buf = malloc(4099 * sizeof *buf);
    if (!buf) {
        rank_fail(t, "out of memory");
        return;
    }
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        size_t count = counts[k];
        for (size_t i = 0; i < count; i++)
            buf[i] = ar_input(t->rank, i);
        mc_err err;
        mc_err_clear(&err);
        if (rank_ok(t, mc_comm_all_reduce_sum_f32(t->comm, buf, count, &err), &err, "all_reduce"))
            check_sum(t, buf, count, t->size);
    }
    free(buf);
}

/* ---- all_to_all_v ------------------------------------------------------ */

/* Elements (uint32) rank s sends to rank d: uneven, zero for some pairs. */
static size_t a2a_count(int s, int d) { return (size_t)((s * 3 + d * 5 + s * d) % 4) * 3; }
static uint32_t a2a_value(int s, int d, size_t k)
{
    return (uint32_t)s * 1000000u + (uint32_t)d * 1000u + (uint32_t)k;
}

enum { A2A_GAP = 2 }; /* unused elements between regions: must stay untouched */
static const uint32_t A2A_SENTINEL = 0xdeadbeefu;

static void do_all_to_all_v(rank_ctx *t)
{
    int n = t->size, me = t->rank;
    size_t scount[MAX_RANKS], sdispl[MAX_RANKS], rcount[MAX_RANKS], rdispl[MAX_RANKS];
    uint32_t send[MAX_RANKS * 16], recv[MAX_RANKS * 16];
    /* regions in reverse peer order with gaps, so displacements really matter */
    size_t so = A2A_GAP, ro = A2A_GAP;
    for (int p = n - 1; p >= 0; p--) {
        scount[p] = a2a_count(me, p) * sizeof(uint32_t);
        sdispl[p] = so * sizeof(uint32_t);
        for (size_t k = 0; k < a2a_count(me, p); k++)
            send[so + k] = a2a_value(me, p, k);
        so += a2a_count(me, p) + A2A_GAP;
        rcount[p] = a2a_count(p, me) * sizeof(uint32_t);
        rdispl[p] = ro * sizeof(uint32_t);
        ro += a2a_count(p, me) + A2A_GAP;
    }
    for (size_t i = 0; i < ro; i++)
        recv[i] = A2A_SENTINEL;
    mc_err err;
    mc_err_clear(&err);
    if (!rank_ok(t,
                 mc_comm_all_to_all_v(t->comm, send, so * sizeof(uint32_t), scount, sdispl, recv,
                                      ro * sizeof(uint32_t), rcount, rdispl, &err),
                 &err, "all_to_all_v"))
        return;
    /* element by element, gaps included */
    uint32_t want[MAX_RANKS * 16];
    for (size_t i = 0; i < ro; i++)
        want[i] = A2A_SENTINEL;
    for (int p = 0; p < n; p++)
        for (size_t k = 0; k < a2a_count(p, me); k++)
            want[rdispl[p] / sizeof(uint32_t) + k] = a2a_value(p, me, k);
    for (size_t i = 0; i < ro; i++)
        if (recv[i] != want[i])
            rank_fail(t, "all_to_all_v recv[%zu] = %u, want %u", i, recv[i], want[i]);
}

/* ---- send / recv ring -------------------------------------------------- */

static size_t ring_len(int src) { return 5 + 3 * (size_t)src; }

static void do_ring(rank_ctx *t)
{
    int n = t->size, me = t->rank;
    mc_err err;
    mc_err_clear(&err);
    if (n == 1) {
        char b = 0;
        if (mc_comm_send(t->comm, 0, &b, 1, &err) != MC_ERR_ARG)
            rank_fail(t, "send to itself was not refused");
        return;
    }
    int right = (me + 1) % n, left = (me + n - 1) % n;
    for (int round = 0; round < 3; round++) {
        unsigned char out[64], in[64];
        size_t nout = ring_len(me), nin = ring_len(left);
        for (size_t i = 0; i < nout; i++)
            out[i] = (unsigned char)(me * 31 + round * 7 + (int)i);
        memset(in, 0xee, sizeof in);
        mc_status st1, st2;
        /* a send waits for its recv: even ranks send first, odd ranks receive first */
        if (me % 2 == 0) {
            st1 = mc_comm_send(t->comm, right, out, nout, &err);
            st2 = st1 == MC_OK ? mc_comm_recv(t->comm, left, in, nin, &err) : st1;
        } else {
            st1 = mc_comm_recv(t->comm, left, in, nin, &err);
            st2 = st1 == MC_OK ? mc_comm_send(t->comm, right, out, nout, &err) : st1;
        }
        if (!rank_ok(t, st2, &err, "ring send/recv"))
            return;
        for (size_t i = 0; i < sizeof in; i++) {
            unsigned char want = i < nin ? (unsigned char)(left * 31 + round * 7 + (int)i) : 0xee;
            if (in[i] != want)
                rank_fail(t, "ring round %d: byte %zu from rank %d = %u, want %u", round, i, left,
                          in[i], want);
        }
    }
}

/* ---- barrier ----------------------------------------------------------- */

static void do_barrier(rank_ctx *t)
{
    atomic_int *arrived = t->shared;
    for (int round = 0; round < 20; round++) {
        atomic_fetch_add(arrived, 1);
        mc_err err;
        mc_err_clear(&err);
        if (!rank_ok(t, mc_comm_barrier(t->comm, &err), &err, "barrier"))
            return;
        int seen = atomic_load(arrived);
        if (seen < t->size * (round + 1))
            rank_fail(t, "round %d: past the barrier with %d arrivals, want >= %d", round, seen,
                      t->size * (round + 1));
        if (!rank_ok(t, mc_comm_barrier(t->comm, &err), &err, "barrier"))
            return;
    }
}

/* ---- split ------------------------------------------------------------- */

static void do_split(rank_ctx *t)
{
    int n = t->size, me = t->rank;
    mc_err err;
    mc_err_clear(&err);
    /* two groups by parity, ranked in reverse order of the old ranks */
    mc_comm *sub = NULL;
    if (!rank_ok(t, mc_comm_split(t->comm, me % 2, -me, &sub, &err), &err, "split"))
        return;
    int color = me % 2;
    int want_size = color == 0 ? (n + 1) / 2 : n / 2;
    /* members of my color, largest old rank first */
    int members[MAX_RANKS], m = 0;
    for (int r = n - 1; r >= 0; r--)
        if (r % 2 == color)
            members[m++] = r;
    int want_rank = -1;
    for (int k = 0; k < m; k++)
        if (members[k] == me)
            want_rank = k;
    if (!sub) {
        rank_fail(t, "split returned no communicator");
        return;
    }
    if (mc_comm_size(sub) != want_size || mc_comm_rank(sub) != want_rank)
        rank_fail(t, "split color %d: rank %d of %d, want %d of %d", color, mc_comm_rank(sub),
                  mc_comm_size(sub), want_rank, want_size);
    /* all_reduce inside the group: sum of the old ranks of its members */
    float v[3] = {(float)me, 1.0f, (float)(me * me)};
    float want[3] = {0, 0, 0};
    for (int k = 0; k < m; k++) {
        want[0] += (float)members[k];
        want[1] += 1.0f;
        want[2] += (float)(members[k] * members[k]);
    }
    if (rank_ok(t, mc_comm_all_reduce_sum_f32(sub, v, 3, &err), &err, "group all_reduce"))
        for (int i = 0; i < 3; i++)
            if (v[i] != want[i])
                rank_fail(t, "group %d all_reduce[%d] = %g, want %g", color, i, v[i], want[i]);
    /* a ring step inside the group proves the ranks map to the right peers */
    if (m > 1) {
        int r = mc_comm_rank(sub), s = mc_comm_size(sub);
        int got = -1;
        mc_status st;
        if (r == 0) {
            st = mc_comm_send(sub, 1, &me, sizeof me, &err);
        } else {
            st = mc_comm_recv(sub, r - 1, &got, sizeof got, &err);
            if (st == MC_OK && got != members[r - 1])
                rank_fail(t, "group %d: got %d from group rank %d, want %d", color, got, r - 1,
                          members[r - 1]);
            if (st == MC_OK && r + 1 < s)
                st = mc_comm_send(sub, r + 1, &me, sizeof me, &err);
        }
        rank_ok(t, st, &err, "group send/recv");
    }
    mc_comm_free(sub);

    /* the parent still works after the split; one rank opts out of a second split */
    mc_comm *one = NULL;
    int opt_out = me == n - 1;
    if (!rank_ok(t, mc_comm_split(t->comm, opt_out ? MC_COMM_COLOR_NONE : 0, 0, &one, &err), &err,
                 "split with opt-out"))
        return;
    if (opt_out && one)
        rank_fail(t, "MC_COMM_COLOR_NONE still got a communicator");
    if (!opt_out && (!one || mc_comm_size(one) != n - 1 || mc_comm_rank(one) != me))
        rank_fail(t, "split without rank %d: got rank %d of %d", n - 1, mc_comm_rank(one),
                  mc_comm_size(one));
    if (one && !rank_ok(t, mc_comm_barrier(one, &err), &err, "barrier in subgroup"))
        return;
    mc_comm_free(one);
    rank_ok(t, mc_comm_barrier(t->comm, &err), &err, "parent barrier after split");
}

/* ---- failures ---------------------------------------------------------- */

/* Rank 0 sends 4 bytes to rank 1 which expects 8: both fail, and so does every later call. */
static void do_a2a_mismatch(rank_ctx *t)
{
    uint32_t send[4] = {1, 2, 3, 4}, recv[4] = {0};
    size_t zero[2] = {0, 0}, sc[2] = {0, 0}, rc[2] = {0, 0};
    if (t->rank == 0)
        sc[1] = 4;
    else
        rc[0] = 8;
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_comm_all_to_all_v(t->comm, send, sizeof send, sc, zero, recv, sizeof recv,
                                        rc, zero, &err);
    if (st != MC_ERR_ARG || !strstr(err.msg, "rank 0 sends 4 bytes to rank 1"))
        rank_fail(t, "mismatched all_to_all_v: %s \"%s\"", mc_status_str(st), err.msg);
    mc_err_clear(&err);
    st = mc_comm_barrier(t->comm, &err);
    if (st == MC_OK || !err.msg[0])
        rank_fail(t, "barrier on a failed communicator: %s \"%s\"", mc_status_str(st), err.msg);
}

/* Rank 0 calls barrier, rank 1 all_reduce. */
static void do_op_mismatch(rank_ctx *t)
{
    mc_err err;
    mc_err_clear(&err);
    float v = 1.0f;
    mc_status st = t->rank == 0 ? mc_comm_barrier(t->comm, &err)
                                : mc_comm_all_reduce_sum_f32(t->comm, &v, 1, &err);
    if (st != MC_ERR_ARG || !strstr(err.msg, "collective mismatch"))
        rank_fail(t, "mismatched collectives: %s \"%s\"", mc_status_str(st), err.msg);
}

/* Rank 1 never joins the barrier: rank 0 times out naming it; rank 1's later call fails too. */
static void do_timeout(rank_ctx *t)
{
    mc_err err;
    mc_err_clear(&err);
    atomic_int *rank0_done = t->shared;
    if (t->rank == 0) {
        mc_status st = mc_comm_barrier(t->comm, &err);
        if (st != MC_ERR_IO || !strstr(err.msg, "rank(s) 1"))
            rank_fail(t, "lonely barrier: %s \"%s\"", mc_status_str(st), err.msg);
        atomic_store(rank0_done, 1);
    } else {
        while (!atomic_load(rank0_done))
            ; /* spin until rank 0 gave up */
        char b[4] = {0};
        mc_status st = mc_comm_recv(t->comm, 0, b, sizeof b, &err);
        if (st != MC_ERR_IO || !strstr(err.msg, "waited"))
            rank_fail(t, "recv on a timed-out communicator: %s \"%s\"", mc_status_str(st),
                      err.msg);
    }
}

/* Rank 0 sends 4 bytes, rank 1 receives 8. */
static void do_p2p_mismatch(rank_ctx *t)
{
    mc_err err;
    mc_err_clear(&err);
    char b[8] = {0};
    mc_status st = t->rank == 0 ? mc_comm_send(t->comm, 1, b, 4, &err)
                                : mc_comm_recv(t->comm, 0, b, 8, &err);
    if (st != MC_ERR_ARG || !strstr(err.msg, "expected"))
        rank_fail(t, "mismatched send/recv: %s \"%s\"", mc_status_str(st), err.msg);
}

/* ---- shared memory (mc_comm_shm_alloc) --------------------------------- */

/* Every rank writes its segment, the ranks meet, every rank reads every
 * segment (zero past what was written); mismatched sizes are refused on
 * every rank, 0 bytes too. */
static void do_shm(rank_ctx *t)
{
    enum { BYTES = 5000 };
    mc_err err;
    mc_err_clear(&err);
    mc_comm_shm *s = NULL;
    if (!rank_ok(t, mc_comm_shm_alloc(t->comm, BYTES, &s, &err), &err, "shm_alloc"))
        return;
    unsigned char *mine = mc_comm_shm_seg(s, t->rank);
    if (!mine || ((uintptr_t)mine & 4095) != 0)
        rank_fail(t, "own segment %p: not page-aligned", (void *)mine);
    if (mc_comm_shm_seg(s, -1) || mc_comm_shm_seg(s, t->size))
        rank_fail(t, "a segment for a rank out of range");
    for (int i = 0; mine && i < 1000; i++)
        mine[i] = (unsigned char)(t->rank * 31 + i);
    if (rank_ok(t, mc_comm_barrier(t->comm, &err), &err, "barrier")) {
        for (int p = 0; p < t->size; p++) {
            const unsigned char *seg = mc_comm_shm_seg(s, p);
            int bad = -1;
            for (int i = 0; seg && i < BYTES && bad < 0; i++)
                if (seg[i] != (i < 1000 ? (unsigned char)(p * 31 + i) : 0))
                    bad = i;
            if (!seg || bad >= 0)
                rank_fail(t, "segment of rank %d: byte %d not what rank %d wrote", p, bad, p);
        }
    }
    /* the others are done reading before any segment goes */
    rank_ok(t, mc_comm_barrier(t->comm, &err), &err, "barrier");
    mc_comm_shm_free(s);
    mc_comm_shm *s2 = NULL;
    mc_err_clear(&err);
    mc_status st = mc_comm_shm_alloc(t->comm, t->rank == t->size - 1 ? 4096 : 8192, &s2, &err);
    if (t->size > 1 && (st != MC_ERR_ARG || s2 || !strstr(err.msg, "bytes")))
        rank_fail(t, "mismatched sizes: %s \"%s\"", mc_status_str(st), err.msg);
    if (t->size == 1 && st != MC_OK)
        rank_fail(t, "one rank: %s \"%s\"", mc_status_str(st), err.msg);
    mc_comm_shm_free(s2);
    mc_err_clear(&err);
    if (mc_comm_shm_alloc(t->comm, 0, &s2, &err) != MC_ERR_ARG || s2)
        rank_fail(t, "0 bytes accepted");
}

/* ---- self and argument checks ----------------------------------------- */

static void test_self(void)
{
    mc_comm *c = NULL;
    CHECK(mc_comm_self_create(&c) == MC_OK);
    if (!c)
        return;
    CHECK(mc_comm_rank(c) == 0);
    CHECK(mc_comm_size(c) == 1);
    CHECK(strcmp(mc_comm_backend(c), "self") == 0);
    mc_err err;
    mc_err_clear(&err);
    mc_comm_shm *shm = NULL;
    CHECK(mc_comm_shm_alloc(c, 100, &shm, &err) == MC_OK && mc_comm_shm_seg(shm, 0) != NULL);
    mc_comm_shm_free(shm);
    float v[3] = {1.5f, -2.0f, 3.0f};
    CHECK(mc_comm_all_reduce_sum_f32(c, v, 3, &err) == MC_OK);
    CHECK(v[0] == 1.5f && v[1] == -2.0f && v[2] == 3.0f);
    char send[8] = "abcdefg", recv[8] = "-------";
    size_t sc = 3, sd = 2, rc = 3, rd = 4;
    CHECK(mc_comm_all_to_all_v(c, send, 8, &sc, &sd, recv, 8, &rc, &rd, &err) == MC_OK);
    CHECK(memcmp(recv, "----cde", 8) == 0);
    CHECK(mc_comm_barrier(c, &err) == MC_OK);
    mc_comm *sub = NULL;
    CHECK(mc_comm_split(c, 5, 0, &sub, &err) == MC_OK);
    CHECK(sub && mc_comm_size(sub) == 1 && mc_comm_rank(sub) == 0);
    mc_comm_free(sub);
    CHECK(mc_comm_split(c, MC_COMM_COLOR_NONE, 0, &sub, &err) == MC_OK);
    CHECK(sub == NULL);

    /* arguments refused before anything is exchanged */
    mc_err_clear(&err);
    rc = 4;
    CHECK(mc_comm_all_to_all_v(c, send, 8, &sc, &sd, recv, 8, &rc, &rd, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "sends 3 bytes") != NULL);
    mc_err_clear(&err);
    rd = 6; /* 6 + 4 > 8 */
    CHECK(mc_comm_all_to_all_v(c, send, 8, &sc, &sd, recv, 8, &rc, &rd, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "exceeds") != NULL);
    mc_err_clear(&err);
    sd = SIZE_MAX; /* displacement + count overflows */
    CHECK(mc_comm_all_to_all_v(c, send, 8, &sc, &sd, recv, 8, &sc, &rd, &err) == MC_ERR_ARG);
    mc_err_clear(&err);
    CHECK(mc_comm_all_reduce_sum_f32(c, NULL, 4, &err) == MC_ERR_ARG);
    mc_err_clear(&err);
    CHECK(mc_comm_all_reduce_sum_f32(c, v, SIZE_MAX / 2, &err) == MC_ERR_OVERFLOW);
    mc_err_clear(&err);
    CHECK(mc_comm_send(c, 1, send, 1, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "rank 1 of a 1-rank") != NULL);
    CHECK(mc_comm_recv(c, 0, recv, 1, NULL) == MC_ERR_ARG);
    CHECK(mc_comm_split(c, -5, 0, &sub, NULL) == MC_ERR_ARG);
    CHECK(mc_comm_barrier(NULL, NULL) == MC_ERR_ARG);
    CHECK(mc_comm_local_set_timeout(c, 10) == MC_ERR_ARG);
    mc_comm_free(c);
    mc_comm_free(NULL);

    mc_comm *comms[2];
    CHECK(mc_comm_local_create(0, comms) == MC_ERR_ARG);
    CHECK(mc_comm_local_create(MC_COMM_LOCAL_MAX_RANKS + 1, comms) == MC_ERR_ARG);
}

/* ---- MC_COMM_TIMEOUT ---------------------------------------------------- */

static void test_timeout_parse(void)
{
    static const struct {
        const char *text;
        double want;
    } good[] = {{"0", 0}, {"600", 600}, {"2.5", 2.5}, {"0.001", 0.001}, {"007", 7},
                {"0.0", 0}, {"1000000", 1000000}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        mc_err err;
        mc_err_clear(&err);
        double s = -1;
        mc_status st = mc_comm_timeout_parse(good[i].text, &s, &err);
        if (st != MC_OK || s != good[i].want)
            fprintf(stderr, "MC_COMM_TIMEOUT='%s': %s %g (want %g) %s\n", good[i].text,
                    mc_status_str(st), s, good[i].want, err.msg);
        CHECK(st == MC_OK && s == good[i].want);
    }
    /* the whole string must be seconds: no sign, unit, exponent, spaces,
     * hex, inf/nan, lone dot; not above the maximum nor below 1 ms */
    static const char *const bad[] = {"abc", "-1", "1e999", "5s", "", " 5", "5 ", "+5",
                                      "inf", "nan", "1e3", "0x10", ".", "1.", ".5", "1,5",
                                      "1.2.3", "1000000.5", "0.0001", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mc_err err;
        mc_err_clear(&err);
        double s = -1;
        mc_status st = mc_comm_timeout_parse(bad[i], &s, &err);
        char want[64];
        snprintf(want, sizeof want, "MC_COMM_TIMEOUT='%s'", bad[i]);
        bool ok = st == MC_ERR_ARG && s == -1 && strstr(err.msg, want) && !strchr(err.msg, '\n');
        if (!ok)
            fprintf(stderr, "MC_COMM_TIMEOUT='%s' accepted or badly refused: %s %g \"%s\"\n",
                    bad[i], mc_status_str(st), s, err.msg);
        CHECK(ok);
    }
    /* the world communicator refuses a bad value, also without a launcher */
    if (mc_comm_launcher_rank() < 0) {
        mc_err err;
        mc_err_clear(&err);
        mc_comm *world = NULL;
        setenv("MC_COMM_TIMEOUT", "5s", 1);
        CHECK(mc_comm_world_init(NULL, NULL, &world, &err) == MC_ERR_ARG);
        CHECK(world == NULL && strstr(err.msg, "MC_COMM_TIMEOUT='5s'") != NULL);
        setenv("MC_COMM_TIMEOUT", "2.5", 1);
        mc_err_clear(&err);
        CHECK(mc_comm_world_init(NULL, NULL, &world, &err) == MC_OK);
        CHECK(world && strcmp(mc_comm_backend(world), "self") == 0);
        mc_comm_world_finalize(world);
        unsetenv("MC_COMM_TIMEOUT");
    }
}

int main(void)
{
    test_self();
    for (int n = 1; n <= 4; n++) {
        atomic_int arrived = 0;
        run_ranks("all_reduce", n, do_all_reduce, NULL, 0);
        run_ranks("all_to_all_v", n, do_all_to_all_v, NULL, 0);
        run_ranks("ring", n, do_ring, NULL, 0);
        run_ranks("barrier", n, do_barrier, &arrived, 0);
        run_ranks("split", n, do_split, NULL, 0);
        run_ranks("shm", n, do_shm, NULL, 0);
    }
    run_ranks("a2a_mismatch", 2, do_a2a_mismatch, NULL, 0);
    run_ranks("op_mismatch", 2, do_op_mismatch, NULL, 0);
    run_ranks("p2p_mismatch", 2, do_p2p_mismatch, NULL, 0);
    atomic_int rank0_done = 0;
    run_ranks("timeout", 2, do_timeout, &rank0_done, 200);
    test_timeout_parse();
    return check_report("test_comm");
}
