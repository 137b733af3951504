/* test_comm_coll.c - the typed all-reduce (f32, bf16), all-gather(_v),
 * broadcast, bcast_id and the asynchronous forms on the self communicator
 * and on 1, 2, 3, 4 and 7 in-process ranks, on inputs whose results are
 * known exactly (nccl-tests "verifiable" style): small integers whose sums
 * are exact in bf16, payloads that encode (rank, index), a 128-byte id that
 * every rank can regenerate. Then refusals: bad arguments before anything is
 * exchanged, ranks that disagree (dtype, root, length, count) named in the
 * message, a peer that never comes. */
#include "check.h"
#include "comm.h"
#include "comm_ranks.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const int rank_counts[] = {1, 2, 3, 4, 7};

/* ---- all_reduce_sum ---------------------------------------------------- */

/* Input of rank r: small integers; any sum over <= 8 ranks is below 256 in
 * magnitude, so exact in bf16 as in f32. */
static float ar_input(int r, size_t i) { return (float)((int)(i % 9) - r); }

static void do_all_reduce_typed(rank_ctx *t)
{
    static const size_t counts[] = {0, 1, 7, 1000, 4099};
    float *f = malloc(4099 * sizeof *f);
    uint16_t *h = malloc(4099 * sizeof *h);
    if (!f || !h) {
        rank_fail(t, "out of memory");
        goto done;
    }
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        size_t count = counts[k];
        for (size_t i = 0; i < count; i++) {
            f[i] = ar_input(t->rank, i);
            h[i] = mc_f32_to_bf16(ar_input(t->rank, i));
        }
        mc_err err;
        mc_err_clear(&err);
        if (!rank_ok(t, mc_comm_all_reduce_sum(t->comm, f, count, MC_DT_F32, &err), &err,
                     "all_reduce f32") ||
            !rank_ok(t, mc_comm_all_reduce_sum(t->comm, h, count, MC_DT_BF16, &err), &err,
                     "all_reduce bf16"))
            goto done;
        for (size_t i = 0; i < count; i++) {
            int want = 0;
            for (int r = 0; r < t->size; r++)
                want += (int)(i % 9) - r;
            if (f[i] != (float)want || mc_bf16_to_f32(h[i]) != (float)want) {
                rank_fail(t, "count %zu: [%zu] = %g (f32), %g (bf16), want %d", count, i, f[i],
                          mc_bf16_to_f32(h[i]), want);
                break;
            }
        }
    }
done:
    free(f);
    free(h);
}

/* bf16 inputs that need rounding: the result must be the f32 sum of the
 * widened inputs in rank order, rounded once, and the same bits on every
 * rank (rank 0's result is broadcast and compared). */
static float round_input(int r, size_t i) { return 1.0f + (float)(r + 1) / 128.0f + (float)i; }

static void do_all_reduce_bf16_rounding(rank_ctx *t)
{
    enum { N = 64 };
    uint16_t h[N], mine[N];
    for (size_t i = 0; i < N; i++)
        h[i] = mc_f32_to_bf16(round_input(t->rank, i));
    mc_err err;
    mc_err_clear(&err);
    if (!rank_ok(t, mc_comm_all_reduce_sum(t->comm, h, N, MC_DT_BF16, &err), &err, "bf16"))
        return;
    for (size_t i = 0; i < N; i++) {
        float sum = 0.0f;
        for (int r = 0; r < t->size; r++)
            sum += mc_bf16_to_f32(mc_f32_to_bf16(round_input(r, i)));
        uint16_t want = mc_f32_to_bf16(sum);
        if (h[i] != want) {
            rank_fail(t, "bf16 rounding [%zu] = 0x%04x, want 0x%04x", i, h[i], want);
            return;
        }
    }
    memcpy(mine, h, sizeof h);
    if (rank_ok(t, mc_comm_bcast(t->comm, 0, h, sizeof h, &err), &err, "bcast") &&
        memcmp(h, mine, sizeof h) != 0)
        rank_fail(t, "bf16 sums differ from rank 0's");
}

/* ---- all_gather, all_gather_v ------------------------------------------ */

static uint32_t ag_value(int r, size_t k) { return (uint32_t)r * 1000u + (uint32_t)k; }
/* all_gather_v: elements of rank r, zero for some ranks */
static size_t agv_count(int r) { return (size_t)((r * 2 + 1) % 5); }
static const uint32_t SENTINEL = 0xdeadbeefu;

static void do_all_gather(rank_ctx *t)
{
    enum { K = 5 };
    int n = t->size, me = t->rank;
    uint32_t send[K], recv[MAX_RANKS * K + 1];
    mc_err err;
    mc_err_clear(&err);
    for (int in_place = 0; in_place < 2; in_place++) {
        for (size_t i = 0; i < sizeof recv / sizeof recv[0]; i++)
            recv[i] = SENTINEL;
        uint32_t *src = in_place ? recv + (size_t)me * K : send;
        for (size_t k = 0; k < K; k++)
            src[k] = ag_value(me, k);
        if (!rank_ok(t, mc_comm_all_gather(t->comm, src, sizeof send, recv, &err), &err,
                     "all_gather"))
            return;
        for (size_t i = 0; i < (size_t)n * K + 1; i++) {
            uint32_t want = i < (size_t)n * K ? ag_value((int)(i / K), i % K) : SENTINEL;
            if (recv[i] != want) {
                rank_fail(t, "all_gather (in place %d) recv[%zu] = %u, want %u", in_place, i,
                          recv[i], want);
                return;
            }
        }
    }
    /* zero bytes, NULL buffers */
    rank_ok(t, mc_comm_all_gather(t->comm, NULL, 0, NULL, &err), &err, "empty all_gather");
}

static void do_all_gather_v(rank_ctx *t)
{
    enum { GAP = 2 };
    int n = t->size, me = t->rank;
    size_t counts[MAX_RANKS], displs[MAX_RANKS], off = GAP;
    uint32_t send[8], recv[MAX_RANKS * 8];
    /* regions in reverse rank order with gaps, so displacements matter */
    for (int p = n - 1; p >= 0; p--) {
        counts[p] = agv_count(p) * sizeof(uint32_t);
        displs[p] = off * sizeof(uint32_t);
        off += agv_count(p) + GAP;
    }
    for (size_t i = 0; i < off; i++)
        recv[i] = SENTINEL;
    for (size_t k = 0; k < agv_count(me); k++)
        send[k] = ag_value(me, k);
    mc_err err;
    mc_err_clear(&err);
    if (!rank_ok(t,
                 mc_comm_all_gather_v(t->comm, send, counts[me], recv, off * sizeof(uint32_t),
                                      counts, displs, &err),
                 &err, "all_gather_v"))
        return;
    uint32_t want[MAX_RANKS * 8];
    for (size_t i = 0; i < off; i++)
        want[i] = SENTINEL;
    for (int p = 0; p < n; p++)
        for (size_t k = 0; k < agv_count(p); k++)
            want[displs[p] / sizeof(uint32_t) + k] = ag_value(p, k);
    for (size_t i = 0; i < off; i++)
        if (recv[i] != want[i]) {
            rank_fail(t, "all_gather_v recv[%zu] = %u, want %u", i, recv[i], want[i]);
            return;
        }
}

/* ---- bcast, bcast_id --------------------------------------------------- */

static void do_bcast(rank_ctx *t)
{
    enum { B = 37 };
    for (int root = 0; root < t->size; root++) {
        unsigned char buf[B];
        for (size_t i = 0; i < B; i++)
            buf[i] = t->rank == root ? (unsigned char)(root * 7 + (int)i) : 0xee;
        mc_err err;
        mc_err_clear(&err);
        if (!rank_ok(t, mc_comm_bcast(t->comm, root, buf, B, &err), &err, "bcast"))
            return;
        for (size_t i = 0; i < B; i++)
            if (buf[i] != (unsigned char)(root * 7 + (int)i)) {
                rank_fail(t, "bcast from %d: byte %zu = %u", root, i, buf[i]);
                return;
            }
        if (!rank_ok(t, mc_comm_bcast(t->comm, root, NULL, 0, &err), &err, "empty bcast"))
            return;
    }
}

/* 128 pseudo-random bytes (xorshift), regenerated by every rank to check. */
static void id_bytes(unsigned char *id, size_t len, uint32_t seed)
{
    uint32_t x = seed;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        id[i] = (unsigned char)(x >> 24);
    }
}

static void do_bcast_id(rank_ctx *t)
{
    unsigned char id[128], want[128];
    int root = t->size - 1;
    id_bytes(want, sizeof want, 0x9e3779b9u);
    if (t->rank == root)
        memcpy(id, want, sizeof id);
    else
        memset(id, 0, sizeof id);
    mc_err err;
    mc_err_clear(&err);
    if (rank_ok(t, mc_comm_bcast_id(t->comm, root, id, sizeof id, &err), &err, "bcast_id") &&
        memcmp(id, want, sizeof id) != 0)
        rank_fail(t, "bcast_id: the id differs from root %d's", root);
}

/* ---- asynchronous forms ------------------------------------------------ */

/* Each i-form started back to back, then waited for, equals its sync form. */
static void do_async(rank_ctx *t)
{
    enum { N = 300 };
    int n = t->size, me = t->rank;
    float fa[N], fs[N];
    uint16_t ha[N], hs[N];
    uint32_t ga[MAX_RANKS * 3], gs[MAX_RANKS * 3], mine[3] = {ag_value(me, 0), ag_value(me, 1), 7};
    unsigned char ba[16], bs[16];
    uint32_t a2a_send[MAX_RANKS], a2a_a[MAX_RANKS], a2a_s[MAX_RANKS];
    size_t cnt[MAX_RANKS], dsp[MAX_RANKS];
    for (size_t i = 0; i < N; i++) {
        fa[i] = fs[i] = ar_input(me, i) * 0.5f;
        ha[i] = hs[i] = mc_f32_to_bf16(ar_input(me, i));
    }
    for (int i = 0; i < 16; i++)
        ba[i] = bs[i] = me == 0 ? (unsigned char)(i * 3 + 1) : 0;
    for (int p = 0; p < n; p++) {
        a2a_send[p] = ag_value(me, (size_t)p);
        cnt[p] = sizeof(uint32_t);
        dsp[p] = (size_t)p * sizeof(uint32_t);
    }
    size_t a2a_bytes = (size_t)n * sizeof(uint32_t);
    mc_comm_req *req[5] = {NULL};
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_comm_iall_reduce_sum(t->comm, fa, N, MC_DT_F32, NULL, &req[0], &err);
    if (st == MC_OK)
        st = mc_comm_iall_reduce_sum(t->comm, ha, N, MC_DT_BF16, NULL, &req[1], &err);
    if (st == MC_OK)
        st = mc_comm_iall_gather(t->comm, mine, sizeof mine, ga, NULL, &req[2], &err);
    if (st == MC_OK)
        st = mc_comm_ibcast(t->comm, 0, ba, sizeof ba, NULL, &req[3], &err);
    if (st == MC_OK)
        st = mc_comm_iall_to_all_v(t->comm, a2a_send, a2a_bytes, cnt, dsp, a2a_a, a2a_bytes, cnt,
                                   dsp, NULL, &req[4], &err);
    for (int i = 0; i < 5; i++) {
        mc_status w = req[i] ? mc_comm_wait(req[i], &err) : MC_OK;
        if (st == MC_OK)
            st = w;
    }
    if (!rank_ok(t, st, &err, "async"))
        return;
    st = mc_comm_all_reduce_sum(t->comm, fs, N, MC_DT_F32, &err);
    if (st == MC_OK)
        st = mc_comm_all_reduce_sum(t->comm, hs, N, MC_DT_BF16, &err);
    if (st == MC_OK)
        st = mc_comm_all_gather(t->comm, mine, sizeof mine, gs, &err);
    if (st == MC_OK)
        st = mc_comm_bcast(t->comm, 0, bs, sizeof bs, &err);
    if (st == MC_OK)
        st = mc_comm_all_to_all_v(t->comm, a2a_send, a2a_bytes, cnt, dsp, a2a_s, a2a_bytes, cnt,
                                  dsp, &err);
    if (!rank_ok(t, st, &err, "sync"))
        return;
    if (memcmp(fa, fs, sizeof fa) || memcmp(ha, hs, sizeof ha) ||
        memcmp(ga, gs, (size_t)n * sizeof mine) || memcmp(ba, bs, sizeof ba) ||
        memcmp(a2a_a, a2a_s, a2a_bytes))
        rank_fail(t, "an asynchronous result differs from the synchronous one");
    for (int p = 0; p < n; p++)
        if (a2a_a[p] != ag_value(p, (size_t)me))
            rank_fail(t, "ialltoallv from %d = %u, want %u", p, a2a_a[p], ag_value(p, (size_t)me));
}

/* ---- disagreement and absent peers ------------------------------------- */

/* Checks st/err against the expected refusal; then the comm must be broken
 * (`broken`) or still work. */
static void expect_refusal(rank_ctx *t, mc_status st, const mc_err *err, mc_status want,
                           const char *needle, int broken)
{
    if (st != want || !strstr(err->msg, needle))
        rank_fail(t, "want %s with \"%s\": got %s \"%s\"", mc_status_str(want), needle,
                  mc_status_str(st), err->msg);
    mc_err e2;
    mc_err_clear(&e2);
    mc_status b = mc_comm_barrier(t->comm, &e2);
    if ((b != MC_OK) != broken)
        rank_fail(t, "barrier after the refusal: %s \"%s\"", mc_status_str(b), e2.msg);
}

/* Rank 1 passes a 64-byte id, the others 128: every rank refuses, naming rank 1. */
static void do_bcast_id_len_mismatch(rank_ctx *t)
{
    unsigned char id[128] = {0};
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_comm_bcast_id(t->comm, 0, id, t->rank == 1 ? 64 : 128, &err);
    expect_refusal(t, st, &err, MC_ERR_ARG, "rank 1 root 0 and len 64", 0);
    if (!strstr(err.msg, "rank(s) differing from rank 0: 1)"))
        rank_fail(t, "bcast_id refusal does not list exactly rank 1: \"%s\"", err.msg);
}

/* Ranks 1 and 2 name a different root. */
static void do_bcast_id_root_mismatch(rank_ctx *t)
{
    unsigned char id[16] = {0};
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_comm_bcast_id(t->comm, t->rank == 0 ? 0 : 1, id, sizeof id, &err);
    expect_refusal(t, st, &err, MC_ERR_ARG, "rank(s) differing from rank 0: 1, 2", 0);
}

static void do_bcast_root_mismatch(rank_ctx *t)
{
    char b[4] = {0};
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_comm_bcast(t->comm, t->rank, b, sizeof b, &err);
    expect_refusal(t, st, &err, MC_ERR_ARG, "rank 0 passes root 0 and 4 bytes, rank 1 root 1", 1);
}

static void do_dtype_mismatch(rank_ctx *t)
{
    float f[4] = {0};
    mc_err err;
    mc_err_clear(&err);
    mc_status st =
        mc_comm_all_reduce_sum(t->comm, f, 4, t->rank == 0 ? MC_DT_F32 : MC_DT_BF16, &err);
    expect_refusal(t, st, &err, MC_ERR_ARG, "rank 0 reduces 4 F32 elements, rank 1 reduces 4 BF16",
                   1);
}

static void do_gather_count_mismatch(rank_ctx *t)
{
    char send[8] = {0}, recv[16];
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_comm_all_gather(t->comm, send, t->rank == 0 ? 4 : 8, recv, &err);
    expect_refusal(t, st, &err, MC_ERR_ARG,
                   "all_gather: rank 1 contributes 8 bytes, rank 0 expects 4 bytes from it", 1);
}

/* Rank 1 never joins the broadcast: rank 0 times out naming it. */
static void do_bcast_timeout(rank_ctx *t)
{
    if (t->rank != 0)
        return;
    char b[4] = {0};
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_comm_bcast(t->comm, 0, b, sizeof b, &err);
    if (st != MC_ERR_IO || !strstr(err.msg, "bcast: rank 0 waited") ||
        !strstr(err.msg, "rank(s) 1"))
        rank_fail(t, "lonely bcast: %s \"%s\"", mc_status_str(st), err.msg);
}

/* ---- arguments, refused before anything is exchanged ------------------- */

static void expect_arg(mc_status st, const mc_err *err, mc_status want, const char *needle)
{
    int ok = st == want && strstr(err->msg, needle) != NULL;
    if (!ok)
        fprintf(stderr, "want %s with \"%s\": got %s \"%s\"\n", mc_status_str(want), needle,
                mc_status_str(st), err->msg);
    CHECK(ok);
}

static void test_args(void)
{
    mc_comm *c = NULL, *two[2] = {NULL, NULL};
    CHECK(mc_comm_self_create(&c) == MC_OK);
    CHECK(mc_comm_local_create(2, two) == MC_OK);
    if (!c || !two[0])
        return;
    mc_err err;
    float f[4] = {1, 2, 3, 4};
    unsigned char id[MC_COMM_ID_MAX + 1] = {0};
    size_t cnt[2] = {4, 4}, dsp[2] = {0, 4};
    mc_comm_req *req = (mc_comm_req *)&err; /* must be reset to NULL */
#define TRY(call, want, needle)                                                                    \
    do {                                                                                           \
        mc_err_clear(&err);                                                                        \
        expect_arg((call), &err, want, needle);                                                    \
    } while (0)
    TRY(mc_comm_all_reduce_sum(c, f, 4, MC_DT_I64, &err), MC_ERR_ARG, "dtype I64");
    TRY(mc_comm_all_reduce_sum(c, f, SIZE_MAX / 2 + 1, MC_DT_BF16, &err), MC_ERR_OVERFLOW,
        "all_reduce_sum of");
    TRY(mc_comm_all_reduce_sum(c, NULL, 4, MC_DT_BF16, &err), MC_ERR_ARG, "buf is NULL");
    TRY(mc_comm_all_gather(two[0], f, SIZE_MAX / 2 + 1, f, &err), MC_ERR_OVERFLOW,
        "all_gather of");
    TRY(mc_comm_all_gather(c, f, 4, NULL, &err), MC_ERR_ARG, "recv is NULL");
    TRY(mc_comm_all_gather_v(two[0], f, 8, f, 16, cnt, dsp, &err), MC_ERR_ARG,
        "send_bytes is 8 but recv_counts[0] is 4");
    dsp[1] = 14;
    TRY(mc_comm_all_gather_v(two[0], f, 4, f, 16, cnt, dsp, &err), MC_ERR_ARG,
        "recv region for rank 1 (offset 14, 4 bytes) exceeds");
    TRY(mc_comm_all_gather_v(two[0], f, 4, f, 16, NULL, dsp, &err), MC_ERR_ARG,
        "recv_counts/recv_displs are NULL");
    TRY(mc_comm_bcast(c, 1, f, 4, &err), MC_ERR_ARG, "root 1 of a 1-rank");
    TRY(mc_comm_bcast(two[1], -1, f, 4, &err), MC_ERR_ARG, "root -1 of a 2-rank");
    TRY(mc_comm_bcast(c, 0, NULL, 4, &err), MC_ERR_ARG, "buf is NULL");
    TRY(mc_comm_bcast_id(c, 0, id, 0, &err), MC_ERR_ARG, "len 0 (want 1..1024");
    TRY(mc_comm_bcast_id(c, 0, id, MC_COMM_ID_MAX + 1, &err), MC_ERR_ARG, "len 1025");
    TRY(mc_comm_bcast_id(c, 0, NULL, 16, &err), MC_ERR_ARG, "id is NULL");
    TRY(mc_comm_bcast_id(two[0], 2, id, 16, &err), MC_ERR_ARG, "root 2 of a 2-rank");
    TRY(mc_comm_iall_reduce_sum(c, f, 4, MC_DT_F32, NULL, NULL, &err), MC_ERR_ARG,
        "req is NULL");
    TRY(mc_comm_iall_reduce_sum(c, f, 4, MC_DT_F16, NULL, &req, &err), MC_ERR_ARG, "dtype F16");
    CHECK(req == NULL);
    TRY(mc_comm_ibcast(c, 3, f, 4, NULL, &req, &err), MC_ERR_ARG, "root 3");
    TRY(mc_comm_iall_gather(c, NULL, 4, f, NULL, &req, &err), MC_ERR_ARG, "send is NULL");
    TRY(mc_comm_iall_to_all_v(c, f, 2, cnt, dsp, f, 4, cnt, dsp, NULL, &req, &err), MC_ERR_ARG,
        "exceeds");
    TRY(mc_comm_wait(NULL, &err), MC_ERR_ARG, "req is NULL");
    TRY(mc_comm_bcast(NULL, 0, f, 4, &err), MC_ERR_ARG, "communicator is NULL");
#undef TRY

    /* self: everything is a copy or a no-op */
    mc_err_clear(&err);
    uint16_t h[2] = {mc_f32_to_bf16(1.5f), mc_f32_to_bf16(-3.0f)};
    CHECK(mc_comm_all_reduce_sum(c, h, 2, MC_DT_BF16, &err) == MC_OK);
    CHECK(h[0] == mc_f32_to_bf16(1.5f) && h[1] == mc_f32_to_bf16(-3.0f));
    uint32_t g[3] = {SENTINEL, SENTINEL, SENTINEL}, v = 42;
    CHECK(mc_comm_all_gather(c, &v, sizeof v, g + 1, &err) == MC_OK);
    CHECK(g[0] == SENTINEL && g[1] == 42 && g[2] == SENTINEL);
    CHECK(mc_comm_all_gather(c, g + 1, sizeof v, g + 1, &err) == MC_OK && g[1] == 42);
    unsigned char want[128];
    id_bytes(want, sizeof want, 7u);
    memcpy(id, want, sizeof want);
    CHECK(mc_comm_bcast_id(c, 0, id, sizeof want, &err) == MC_OK);
    CHECK(memcmp(id, want, sizeof want) == 0);
    CHECK(mc_comm_ibcast(c, 0, id, 8, NULL, &req, &err) == MC_OK && req != NULL);
    CHECK(mc_comm_wait(req, &err) == MC_OK);
    mc_comm_free(c);
    mc_comm_free(two[0]);
    mc_comm_free(two[1]);
}

int main(void)
{
    test_args();
    for (size_t k = 0; k < sizeof rank_counts / sizeof rank_counts[0]; k++) {
        int n = rank_counts[k];
        run_ranks("all_reduce_typed", n, do_all_reduce_typed, NULL, 0);
        run_ranks("bf16_rounding", n, do_all_reduce_bf16_rounding, NULL, 0);
        run_ranks("all_gather", n, do_all_gather, NULL, 0);
        run_ranks("all_gather_v", n, do_all_gather_v, NULL, 0);
        run_ranks("bcast", n, do_bcast, NULL, 0);
        run_ranks("bcast_id", n, do_bcast_id, NULL, 0);
        run_ranks("async", n, do_async, NULL, 0);
    }
    run_ranks("bcast_id_len_mismatch", 3, do_bcast_id_len_mismatch, NULL, 0);
    run_ranks("bcast_id_root_mismatch", 4, do_bcast_id_root_mismatch, NULL, 0);
    run_ranks("bcast_root_mismatch", 2, do_bcast_root_mismatch, NULL, 0);
    run_ranks("dtype_mismatch", 2, do_dtype_mismatch, NULL, 0);
    run_ranks("gather_count_mismatch", 2, do_gather_count_mismatch, NULL, 0);
    run_ranks("bcast_timeout", 2, do_bcast_timeout, NULL, 200);
    return check_report("test_comm_coll");
}
