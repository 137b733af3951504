/* test_comm_nccl.c - the NCCL transport (transport/comm_nccl.h) on device
 * buffers: all-reduce (f32, bf16), all-to-all-v with ragged and empty
 * regions, bcast, all-gather-v, send / recv around a ring, barrier and a
 * split, each against values known exactly (small integers and halves:
 * every sum is exact, so any reordering or lost byte shows).
 *
 * One rank when started by hand; under mpirun every rank of the world (one
 * GPU each: with more ranks than GPUs on a host the refusal itself is what
 * is checked). Exit 77 (CTest: skipped) with "skipped: built without
 * CUDA/NCCL" or "skipped: no GPU (...)". */
#include "comm.h"
#include "comm_mpi.h"
#include "comm_nccl.h"
#include "cuda/cuda_device.h"
#include "dtype.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MC_HAVE_NCCL

int main(void)
{
    mc_comm *c = NULL;
    mc_err err;
    mc_err_clear(&err);
    (void)mc_comm_nccl_create(NULL, 0, 0, &c, &err); /* links: "built without CUDA/NCCL" */
    printf("skipped: built without CUDA/NCCL\n");
    return 77;
}

#else

#include <cuda_runtime.h>

static int failures = 0, checks = 0;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

/* Device copies of host arrays, and back. */
static void *dev_from(const void *h, size_t n)
{
    void *d = NULL;
    if (cudaMalloc(&d, n ? n : 1) != cudaSuccess)
        return NULL;
    if (n && cudaMemcpy(d, h, n, cudaMemcpyHostToDevice) != cudaSuccess) {
        cudaFree(d);
        return NULL;
    }
    return d;
}

static int to_host(void *h, const void *d, size_t n)
{
    return n == 0 || cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost) == cudaSuccess;
}

/* all_reduce_sum of f32 and bf16: rank r contributes (r + 1) / 2 + i. */
static void test_all_reduce(mc_comm *c, int count)
{
    int me = mc_comm_rank(c), P = mc_comm_size(c);
    mc_err err;
    float *h = malloc((size_t)count * sizeof *h);
    uint16_t *hb = malloc((size_t)count * sizeof *hb);
    for (int i = 0; i < count; i++) {
        h[i] = 0.5f * (float)(me + 1) + (float)(i % 64);
        hb[i] = mc_f32_to_bf16(h[i]);
    }
    float *d = dev_from(h, (size_t)count * sizeof *h);
    uint16_t *db = dev_from(hb, (size_t)count * sizeof *hb);
    CHECK(d && db, "cudaMalloc of %d elements", count);
    if (!d || !db)
        goto done;
    mc_err_clear(&err);
    mc_status st = mc_comm_all_reduce_sum(c, d, (size_t)count, MC_DT_F32, &err);
    CHECK(st == MC_OK, "all_reduce f32 x %d: %s", count, err.msg);
    st = mc_comm_all_reduce_sum(c, db, (size_t)count, MC_DT_BF16, &err);
    CHECK(st == MC_OK, "all_reduce bf16 x %d: %s", count, err.msg);
    CHECK(to_host(h, d, (size_t)count * sizeof *h) && to_host(hb, db, (size_t)count * sizeof *hb),
          "download");
    int bad = 0;
    for (int i = 0; i < count; i++) {
        /* sum over r of (r + 1) / 2 + i%64 = P (P + 1) / 4 + P (i % 64): exact */
        float want = 0.25f * (float)(P * (P + 1)) + (float)P * (float)(i % 64);
        float got_b = mc_bf16_to_f32(hb[i]), want_b = mc_bf16_to_f32(mc_f32_to_bf16(want));
        if ((h[i] != want || got_b != want_b) && bad++ < 5)
            printf("  rank %d all_reduce[%d]: f32 %.9g bf16 %.9g, want %.9g / %.9g\n", me, i,
                   (double)h[i], (double)got_b, (double)want, (double)want_b);
    }
    CHECK(bad == 0, "all_reduce x %d on %d ranks: %d wrong elements", count, P, bad);
done:
    cudaFree(d);
    cudaFree(db);
    free(h);
    free(hb);
}

/* The byte rank `from` sends rank `to` at offset j of their region. */
static unsigned char pat(int from, int to, size_t j)
{
    return (unsigned char)(from * 31 + to * 7 + (int)j * 3 + 1);
}

/* Bytes rank `from` sends rank `to`: ragged, some 0. */
static size_t a2a_count(int from, int to)
{
    /* zero one way only for some pairs (1 -> 2 sends nothing, 2 -> 1 does) */
    return (size_t)(((2 * from + 3 * to) % 4) * 1000 + (from == to ? 17 : 0));
}

static void test_all_to_all(mc_comm *c)
{
    int me = mc_comm_rank(c), P = mc_comm_size(c);
    size_t *sc = calloc((size_t)P * 4, sizeof *sc), *sd = sc + P, *rc = sc + 2 * P, *rd = sc + 3 * P;
    size_t sb = 0, rb = 0;
    for (int p = 0; p < P; p++) {
        sc[p] = a2a_count(me, p);
        sd[p] = sb + 5; /* gaps between regions */
        sb = sd[p] + sc[p];
        rc[p] = a2a_count(p, me);
        rd[p] = rb + 3;
        rb = rd[p] + rc[p];
    }
    unsigned char *hs = calloc(sb + 1, 1), *hr = malloc(rb + 1);
    memset(hr, 0xEE, rb + 1);
    for (int p = 0; p < P; p++)
        for (size_t j = 0; j < sc[p]; j++)
            hs[sd[p] + j] = pat(me, p, j);
    unsigned char *ds = dev_from(hs, sb), *dr = dev_from(hr, rb);
    CHECK(ds && dr, "cudaMalloc");
    mc_err err;
    mc_err_clear(&err);
    mc_status st = ds && dr ? mc_comm_all_to_all_v(c, ds, sb, sc, sd, dr, rb, rc, rd, &err)
                            : MC_ERR_NOMEM;
    CHECK(st == MC_OK, "all_to_all_v: %s", err.msg);
    int bad = 0;
    if (st == MC_OK && to_host(hr, dr, rb))
        for (int p = 0; p < P; p++) {
            for (size_t j = 0; j < rc[p]; j++)
                if (hr[rd[p] + j] != pat(p, me, j) && bad++ < 5)
                    printf("  rank %d from %d byte %zu: %u, want %u\n", me, p, j, hr[rd[p] + j],
                           pat(p, me, j));
            for (size_t j = rd[p] - 3; j < rd[p]; j++) /* the gaps stay untouched */
                if (hr[j] != 0xEE && bad++ < 5)
                    printf("  rank %d gap byte %zu written\n", me, j);
        }
    CHECK(bad == 0, "all_to_all_v on %d ranks: %d wrong bytes", P, bad);
    cudaFree(ds);
    cudaFree(dr);
    free(hs);
    free(hr);
    free(sc);
}

static void test_bcast_gather_ring(mc_comm *c)
{
    int me = mc_comm_rank(c), P = mc_comm_size(c);
    mc_err err;
    mc_err_clear(&err);
    /* bcast from the last rank */
    unsigned char hb[333];
    for (size_t j = 0; j < sizeof hb; j++)
        hb[j] = me == P - 1 ? pat(P - 1, 0, j) : 0;
    unsigned char *db = dev_from(hb, sizeof hb);
    CHECK(db && mc_comm_bcast(c, P - 1, db, sizeof hb, &err) == MC_OK, "bcast: %s", err.msg);
    int bad = 0;
    if (db && to_host(hb, db, sizeof hb))
        for (size_t j = 0; j < sizeof hb; j++)
            bad += hb[j] != pat(P - 1, 0, j);
    CHECK(bad == 0, "bcast: %d wrong bytes", bad);
    cudaFree(db);
    /* all_gather_v: rank p gives 10 * (p + 1) bytes, in place */
    size_t *cnt = calloc((size_t)2 * P, sizeof *cnt), *dis = cnt + P, tot = 0;
    for (int p = 0; p < P; p++) {
        cnt[p] = (size_t)10 * (size_t)(p + 1);
        dis[p] = tot;
        tot += cnt[p];
    }
    unsigned char *hg = calloc(tot, 1);
    for (size_t j = 0; j < cnt[me]; j++)
        hg[dis[me] + j] = pat(me, 99, j);
    unsigned char *dg = dev_from(hg, tot);
    CHECK(dg && mc_comm_all_gather_v(c, dg + dis[me], cnt[me], dg, tot, cnt, dis, &err) == MC_OK,
          "all_gather_v: %s", err.msg);
    bad = 0;
    if (dg && to_host(hg, dg, tot))
        for (int p = 0; p < P; p++)
            for (size_t j = 0; j < cnt[p]; j++)
                bad += hg[dis[p] + j] != pat(p, 99, j);
    CHECK(bad == 0, "all_gather_v: %d wrong bytes", bad);
    cudaFree(dg);
    free(hg);
    free(cnt);
    /* send / recv around the ring (even ranks send first) */
    if (P > 1) {
        int next = (me + 1) % P, prev = (me + P - 1) % P;
        unsigned char hs[257], hr[257];
        for (size_t j = 0; j < sizeof hs; j++)
            hs[j] = pat(me, next, j);
        unsigned char *ds = dev_from(hs, sizeof hs), *dr = dev_from(hr, sizeof hr);
        mc_status st = MC_ERR_NOMEM;
        if (ds && dr) {
            if (me % 2 == 0) {
                st = mc_comm_send(c, next, ds, sizeof hs, &err);
                if (st == MC_OK)
                    st = mc_comm_recv(c, prev, dr, sizeof hr, &err);
            } else {
                st = mc_comm_recv(c, prev, dr, sizeof hr, &err);
                if (st == MC_OK)
                    st = mc_comm_send(c, next, ds, sizeof hs, &err);
            }
        }
        CHECK(st == MC_OK, "send / recv ring: %s", err.msg);
        bad = 0;
        if (st == MC_OK && to_host(hr, dr, sizeof hr))
            for (size_t j = 0; j < sizeof hr; j++)
                bad += hr[j] != pat(prev, me, j);
        CHECK(bad == 0, "send / recv ring: %d wrong bytes", bad);
        cudaFree(ds);
        cudaFree(dr);
    }
    CHECK(mc_comm_barrier(c, &err) == MC_OK, "barrier: %s", err.msg);
}

int main(int argc, char **argv)
{
    mc_err err;
    mc_err_clear(&err);
    mc_comm *world = NULL;
    if (mc_comm_world_init(&argc, &argv, &world, &err) != MC_OK) {
        printf("FAIL: world: %s\n", err.msg);
        return 1;
    }
    int me = mc_comm_rank(world), P = mc_comm_size(world);
    mc_err why;
    mc_err_clear(&why);
    int ndev = mc_cuda_device_count(&why);
    /* every rank decides the same: skip when any rank sees no GPU */
    int32_t mine = ndev, *all = calloc((size_t)P, sizeof *all);
    if (!all || mc_comm_all_gather(world, &mine, sizeof mine, all, &err) != MC_OK) {
        printf("FAIL: all_gather: %s\n", err.msg);
        mc_comm_world_finalize(world);
        return 1;
    }
    int min_dev = all[0];
    for (int p = 1; p < P; p++)
        min_dev = all[p] < min_dev ? all[p] : min_dev;
    free(all);
    if (min_dev <= 0) {
        if (me == 0)
            printf("skipped: no GPU (%s)\n", ndev <= 0 ? why.msg : "on another rank");
        mc_comm_world_finalize(world);
        return 77;
    }
    int local = mc_comm_launcher_local_size();
    mc_comm *c = NULL;
    mc_status st = mc_comm_nccl_create(world, -1, 60000, &c, &err);
    if (local > ndev) { /* more ranks than GPUs on this host: the refusal is the result */
        CHECK(st == MC_ERR_UNSUPPORTED && strstr(err.msg, "share GPU"),
              "%d ranks on %d GPUs must be refused (got %d: %s)", local, ndev, (int)st, err.msg);
        if (me == 0)
            printf("%d ranks on %d GPU(s): refused as expected: %s\n", local, ndev, err.msg);
    } else {
        CHECK(st == MC_OK && c, "nccl create on %d ranks: %s", P, err.msg);
        if (st == MC_OK) {
            CHECK(mc_comm_size(c) == P && mc_comm_rank(c) == me, "rank %d of %d, want %d of %d",
                  mc_comm_rank(c), mc_comm_size(c), me, P);
            CHECK(strcmp(mc_comm_backend(c), "nccl") == 0, "backend %s", mc_comm_backend(c));
            if (me == 0)
                printf("nccl: %d rank(s), rank 0 on device %d\n", P, mc_comm_nccl_device(c));
            test_all_reduce(c, 1);
            test_all_reduce(c, 1000003);
            test_all_to_all(c);
            test_bcast_gather_ring(c);
            /* a split: even and odd ranks, the all-reduce within each */
            mc_comm *sub = NULL;
            CHECK(mc_comm_split(c, me % 2, me, &sub, &err) == MC_OK && sub, "split: %s",
                  err.msg);
            if (sub) {
                CHECK(mc_comm_size(sub) == (P - me % 2 + 1) / 2, "split size %d",
                      mc_comm_size(sub));
                test_all_reduce(sub, 4099);
                mc_comm_free(sub);
            }
            mc_comm_free(c);
        }
    }
    printf("rank %d: %d checks, %d failures\n", me, checks, failures);
    int32_t f = failures, *fs = calloc((size_t)P, sizeof *fs);
    int any = 0;
    if (fs && mc_comm_all_gather(world, &f, sizeof f, fs, &err) == MC_OK)
        for (int p = 0; p < P; p++)
            any |= fs[p] != 0;
    else
        any = 1;
    free(fs);
    mc_comm_world_finalize(world);
    return any ? 1 : 0;
}

#endif
