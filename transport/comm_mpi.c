/* comm_mpi.c - the data plane over MPI (host memory) and the world
 * communicator; the watchdog is in comm_watch.c. See comm_mpi.h for the
 * algorithms. */
#include "comm_impl.h"
#include "comm_mpi.h"
#include "comm_watch.h"
#include "log.h"

#include <limits.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Largest piece of one message (bytes); keeps MPI's int counts in range. */
#define PIECE_BYTES ((size_t)1 << 30)
/* Largest all_reduce segment (floats) handled by one reduce-scatter round. */
#define AR_SEGMENT ((size_t)1 << 28)

typedef struct {
    MPI_Comm comm;
    mc_watch_comm watch; /* what the watchdog knows of it */
    char *scratch; /* all_reduce: (chunk) f32 sums, then (size, chunk) elements received;
                      all_gather_v check: (size) uint64 */
    size_t scratch_cap; /* bytes */
    int *ic; /* 4 * size ints: counts and displacements for MPI calls */
} mpi_comm;

static const mc_comm_ops mpi_ops;

static bool g_mpi_active = false;
static int g_world_rank = 0;
static char g_host[256] = "";
static bool g_check = false;

/* ---- host, launcher ---------------------------------------------------- */

const char *mc_comm_host(void)
{
    if (!g_host[0]) {
        if (gethostname(g_host, sizeof g_host - 1) != 0)
            snprintf(g_host, sizeof g_host, "?");
        g_host[sizeof g_host - 1] = '\0';
    }
    return g_host;
}

int mc_comm_launcher_rank(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            char *end;
            long r = strtol(v, &end, 10);
            if (!*end && r >= 0 && r < INT_MAX)
                return (int)r;
        }
    }
    return -1;
}

int mc_comm_launcher_local_size(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                                       "PMIX_LOCAL_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            char *end;
            long n = strtol(v, &end, 10);
            if (!*end && n >= 1 && n < INT_MAX)
                return (int)n;
        }
    }
    return -1;
}

bool mc_comm_mpi_active(void) { return g_mpi_active; }

/* ---- errors ------------------------------------------------------------ */

static mc_status mpi_fail(const mc_comm *c, const char *what, int rc, mc_err *err)
{
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return mc_err_set(err, MC_ERR_IO, "mpi rank %d (host %s): %s on a %d-rank communicator failed: %s",
                      g_world_rank, mc_comm_host(), what, c->size, msg);
}

/* One blocking MPI call under the watchdog; peer: -1 in a collective. */
#define MPI_TRY_PEER(c, what, peer, call)                                                          \
    do {                                                                                           \
        mc_watch_enter(watch_of(c), what, peer);                                                   \
        int rc_ = (call);                                                                          \
        mc_watch_leave();                                                                          \
        if (rc_ != MPI_SUCCESS)                                                                    \
            return mpi_fail(c, what, rc_, err);                                                    \
    } while (0)
#define MPI_TRY(c, what, call) MPI_TRY_PEER(c, what, -1, call)

static MPI_Comm comm_of(const mc_comm *c) { return ((const mpi_comm *)c->impl)->comm; }
static mc_watch_comm *watch_of(mc_comm *c) { return &((mpi_comm *)c->impl)->watch; }

/* ---- all_reduce -------------------------------------------------------- */

static bool fits_int(const size_t *a, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i] > (size_t)INT_MAX)
            return false;
    return true;
}


static void chunk_range(size_t count, int parts, int i, size_t *begin, size_t *len)
{
    size_t per = count / (size_t)parts, extra = count % (size_t)parts;
    *begin = (size_t)i * per + ((size_t)i < extra ? (size_t)i : extra);
    *len = per + ((size_t)i < extra);
}

static mc_status reserve_scratch(mpi_comm *mc, size_t bytes, const mc_comm *c, mc_err *err)
{
    if (bytes <= mc->scratch_cap)
        return MC_OK;
    char *s = realloc(mc->scratch, bytes);
    if (!s)
        return mc_err_set(err, MC_ERR_NOMEM, "mpi rank %d (host %s): out of memory for %zu bytes",
                          g_world_rank, mc_comm_host(), bytes);
    mc->scratch = s;
    mc->scratch_cap = bytes;
    return MC_OK;
}

/* MC_COMM_CHECK: whether every rank passed the same v[0..k-1] (k <= 3), by
 * one small all-reduce of (max v, max ~v); every rank gets the same answer. */
static mc_status check_same(mc_comm *c, const char *what, const unsigned long long *v, int k,
                            bool *same, mc_err *err)
{
    unsigned long long mine[6], all[6];
    for (int i = 0; i < k; i++) {
        mine[2 * i] = v[i];
        mine[2 * i + 1] = ~v[i];
    }
    MPI_TRY(c, what, MPI_Allreduce(mine, all, 2 * k, MPI_UNSIGNED_LONG_LONG, MPI_MAX, comm_of(c)));
    *same = true;
    for (int i = 0; i < k; i++)
        *same = *same && all[2 * i] == v[i] && ~all[2 * i + 1] == v[i];
    return MC_OK;
}

static mc_status mpi_all_reduce(mc_comm *c, void *buf, size_t count, mc_dtype dtype, mc_err *err)
{
    mpi_comm *mc = c->impl;
    int n = c->size, me = c->rank;
    mc_status st;
    mc_watch_collective(&mc->watch);
    if (g_check) {
        unsigned long long v[2] = {count, (unsigned long long)dtype};
        bool same = false;
        if ((st = check_same(c, "MPI_Allreduce (count check)", v, 2, &same, err)) != MC_OK)
            return st;
        if (!same)
            return mc_err_set(err, MC_ERR_ARG,
                              "mpi rank %d (host %s): all_reduce_sum of %zu %s elements, but "
                              "another rank of the %d-rank communicator passed a different count "
                              "or dtype",
                              g_world_rank, mc_comm_host(), count, mc_dtype_name(dtype), c->size);
    }
    if (n == 1 || count == 0)
        return MC_OK;
    bool bf16 = dtype == MC_DT_BF16;
    size_t esz = bf16 ? sizeof(uint16_t) : sizeof(float);
    MPI_Datatype mt = bf16 ? MPI_UINT16_T : MPI_FLOAT;
    int *sc = mc->ic, *sd = mc->ic + n, *rc = mc->ic + 2 * n, *rd = mc->ic + 3 * n;
    for (size_t s0 = 0; s0 < count; s0 += AR_SEGMENT) {
        size_t seg = count - s0 < AR_SEGMENT ? count - s0 : AR_SEGMENT;
        char *b = (char *)buf + s0 * esz;
        size_t my0, mylen;
        chunk_range(seg, n, me, &my0, &mylen);
        size_t m = mylen ? mylen : 1;
        if ((st = reserve_scratch(mc, m * sizeof(float) + (size_t)n * m * esz, c, err)) != MC_OK)
            return st;
        float *acc = (float *)mc->scratch;          /* (mylen) f32 sums */
        char *got = mc->scratch + m * sizeof(float); /* (n, mylen) elements */
        for (int p = 0; p < n; p++) {
            size_t b0, len;
            chunk_range(seg, n, p, &b0, &len);
            sc[p] = (int)len; /* chunk p of my buffer goes to its owner p */
            sd[p] = (int)b0;
            rc[p] = (int)mylen; /* everyone's copy of my chunk, in rank order */
            rd[p] = (int)((size_t)p * mylen);
        }
        MPI_TRY(c, "MPI_Alltoallv (all_reduce)",
                MPI_Alltoallv(b, sc, sd, mt, got, rc, rd, mt, comm_of(c)));
        /* my chunk = sum over ranks in rank order 0, 1, ..., n-1, in f32 */
        if (!bf16) {
            float *out = (float *)b + my0;
            memcpy(out, got, mylen * sizeof *out);
            for (int p = 1; p < n; p++) {
                const float *src = (const float *)got + (size_t)p * mylen;
                for (size_t i = 0; i < mylen; i++)
                    out[i] += src[i];
            }
        } else {
            const uint16_t *g16 = (const uint16_t *)got;
            for (size_t i = 0; i < mylen; i++)
                acc[i] = mc_bf16_to_f32(g16[i]);
            for (int p = 1; p < n; p++)
                for (size_t i = 0; i < mylen; i++)
                    acc[i] += mc_bf16_to_f32(g16[(size_t)p * mylen + i]);
            uint16_t *out = (uint16_t *)b + my0;
            for (size_t i = 0; i < mylen; i++)
                out[i] = mc_f32_to_bf16(acc[i]); /* rounded once */
        }
        for (int p = 0; p < n; p++) {
            size_t b0, len;
            chunk_range(seg, n, p, &b0, &len);
            rc[p] = (int)len;
            rd[p] = (int)b0;
        }
        MPI_TRY(c, "MPI_Allgatherv (all_reduce)",
                MPI_Allgatherv(MPI_IN_PLACE, 0, mt, b, rc, rd, mt, comm_of(c)));
    }
    return MC_OK;
}

/* ---- bcast, all_gather_v ----------------------------------------------- */

/* MPI_Bcast in pieces; no watchdog bookkeeping (callers do it). */
static mc_status bcast_pieces(mc_comm *c, int root, char *buf, size_t bytes, mc_err *err)
{
    for (size_t off = 0; off < bytes; off += PIECE_BYTES) {
        int len = (int)(bytes - off < PIECE_BYTES ? bytes - off : PIECE_BYTES);
        MPI_TRY(c, "MPI_Bcast", MPI_Bcast(buf + off, len, MPI_BYTE, root, comm_of(c)));
    }
    return MC_OK;
}

static mc_status mpi_bcast(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err)
{
    mc_watch_collective(watch_of(c));
    if (g_check) {
        unsigned long long v[2] = {(unsigned long long)root, bytes};
        bool same = false;
        mc_status st = check_same(c, "MPI_Allreduce (bcast check)", v, 2, &same, err);
        if (st != MC_OK)
            return st;
        if (!same)
            return mc_err_set(err, MC_ERR_ARG,
                              "mpi rank %d (host %s): bcast from root %d of %zu bytes, but another "
                              "rank of the %d-rank communicator passed a different root or size",
                              g_world_rank, mc_comm_host(), root, bytes, c->size);
    }
    return bcast_pieces(c, root, buf, bytes, err);
}

/* MC_COMM_CHECK: every rank's recv_counts against every rank's send_bytes. */
static mc_status check_gather(mc_comm *c, size_t send_bytes, const size_t *recv_counts,
                              mc_err *err)
{
    mpi_comm *mc = c->impl;
    int n = c->size;
    mc_status st = reserve_scratch(mc, (size_t)n * sizeof(unsigned long long), c, err);
    if (st != MC_OK)
        return st;
    unsigned long long mine = send_bytes, *sent = (unsigned long long *)mc->scratch; /* (n) */
    MPI_TRY(c, "MPI_Allgather (all_gather check)",
            MPI_Allgather(&mine, 1, MPI_UNSIGNED_LONG_LONG, sent, 1, MPI_UNSIGNED_LONG_LONG,
                          comm_of(c)));
    /* the first (receiver, sender) pair that disagrees, as receiver * n + sender */
    unsigned long long bad = ULLONG_MAX, first = ULLONG_MAX;
    for (int q = 0; q < n && bad == ULLONG_MAX; q++)
        if (recv_counts[q] != sent[q])
            bad = (unsigned long long)c->rank * (unsigned long long)n + (unsigned long long)q;
    MPI_TRY(c, "MPI_Allreduce (all_gather check)",
            MPI_Allreduce(&bad, &first, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, comm_of(c)));
    if (first == ULLONG_MAX)
        return MC_OK;
    int p = (int)(first / (unsigned long long)n), q = (int)(first % (unsigned long long)n);
    return mc_err_set(err, MC_ERR_ARG,
                      "mpi rank %d (host %s): all_gather: rank %d contributes %llu bytes, rank %d "
                      "expects a different count from it",
                      g_world_rank, mc_comm_host(), q, sent[q], p);
}

static mc_status mpi_all_gather_v(mc_comm *c, const void *send, size_t send_bytes, void *recv,
                                  const size_t *recv_counts, const size_t *recv_displs,
                                  mc_err *err)
{
    mpi_comm *mc = c->impl;
    int n = c->size, me = c->rank;
    mc_status st;
    mc_watch_collective(&mc->watch);
    if (g_check && (st = check_gather(c, send_bytes, recv_counts, err)) != MC_OK)
        return st;
    char *mine = recv ? (char *)recv + recv_displs[me] : NULL;
    bool in_place = send && send == mine;
    if (!fits_int(recv_counts, n) || !fits_int(recv_displs, n)) {
        /* beyond MPI's int range: each rank's region from its owner, in pieces */
        if (!in_place && send_bytes > 0)
            memmove(mine, send, send_bytes);
        for (int p = 0; p < n; p++)
            if ((st = bcast_pieces(c, p, (char *)recv + recv_displs[p], recv_counts[p], err)) !=
                MC_OK)
                return st;
        return MC_OK;
    }
    int *rc = mc->ic, *rd = mc->ic + n;
    for (int p = 0; p < n; p++) {
        rc[p] = (int)recv_counts[p];
        rd[p] = (int)recv_displs[p];
    }
    static char dummy[1]; /* MPI wants valid pointers even when every count is zero */
    MPI_TRY(c, "MPI_Allgatherv",
            MPI_Allgatherv(in_place ? MPI_IN_PLACE : send ? send : dummy, (int)send_bytes,
                           MPI_BYTE, recv ? recv : dummy, rc, rd, MPI_BYTE, comm_of(c)));
    return MC_OK;
}

/* ---- all_to_all_v ------------------------------------------------------ */

/* Pairwise exchange in pieces for counts beyond MPI's int range. */
static mc_status a2a_pairwise(mc_comm *c, const char *send, const size_t *send_counts,
                              const size_t *send_displs, char *recv, const size_t *recv_counts,
                              const size_t *recv_displs, mc_err *err)
{
    int n = c->size, me = c->rank;
    if (send_counts[me] != recv_counts[me])
        return mc_err_set(err, MC_ERR_ARG,
                          "mpi rank %d (host %s): all_to_all_v sends %zu bytes to itself but "
                          "receives %zu",
                          g_world_rank, mc_comm_host(), send_counts[me], recv_counts[me]);
    if (send_counts[me])
        memmove(recv + recv_displs[me], send + send_displs[me], send_counts[me]);
    for (int k = 1; k < n; k++) {
        int to = (me + k) % n, from = (me - k + n) % n;
        size_t so = 0, ro = 0, sn = send_counts[to], rn = recv_counts[from];
        while (so < sn || ro < rn) {
            int sl = (int)(sn - so < PIECE_BYTES ? sn - so : PIECE_BYTES);
            int rl = (int)(rn - ro < PIECE_BYTES ? rn - ro : PIECE_BYTES);
            MPI_Status stt;
            MPI_TRY(c, "MPI_Sendrecv (all_to_all_v)",
                    MPI_Sendrecv(send + send_displs[to] + so, sl, MPI_BYTE, to, 1,
                                 recv + recv_displs[from] + ro, rl, MPI_BYTE, from, 1, comm_of(c),
                                 &stt));
            so += (size_t)sl;
            ro += (size_t)rl;
        }
    }
    return MC_OK;
}

static mc_status mpi_all_to_all_v(mc_comm *c, const void *send, const size_t *send_counts,
                                  const size_t *send_displs, void *recv,
                                  const size_t *recv_counts, const size_t *recv_displs,
                                  mc_err *err)
{
    mpi_comm *mc = c->impl;
    int n = c->size;
    mc_watch_collective(&mc->watch);
    if (!fits_int(send_counts, n) || !fits_int(send_displs, n) || !fits_int(recv_counts, n) ||
        !fits_int(recv_displs, n))
        return a2a_pairwise(c, send, send_counts, send_displs, recv, recv_counts, recv_displs,
                            err);
    int *sc = mc->ic, *sd = mc->ic + n, *rc = mc->ic + 2 * n, *rd = mc->ic + 3 * n;
    for (int p = 0; p < n; p++) {
        sc[p] = (int)send_counts[p];
        sd[p] = (int)send_displs[p];
        rc[p] = (int)recv_counts[p];
        rd[p] = (int)recv_displs[p];
    }
    /* MPI wants valid pointers even when every count is zero */
    static char dummy[1];
    MPI_TRY(c, "MPI_Alltoallv",
            MPI_Alltoallv(send ? send : dummy, sc, sd, MPI_BYTE, recv ? recv : dummy, rc, rd,
                          MPI_BYTE, comm_of(c)));
    return MC_OK;
}

/* ---- send / recv ------------------------------------------------------- */

static mc_status mpi_send(mc_comm *c, int peer, const void *buf, size_t bytes, mc_err *err)
{
    const char *p = buf;
    size_t off = 0;
    do { /* a zero-byte message still goes, so the recv side matches it */
        int len = (int)(bytes - off < PIECE_BYTES ? bytes - off : PIECE_BYTES);
        MPI_TRY_PEER(c, "MPI_Send", peer,
                     MPI_Send(p ? p + off : NULL, len, MPI_BYTE, peer, 0, comm_of(c)));
        off += (size_t)len;
    } while (off < bytes);
    return MC_OK;
}

static mc_status mpi_recv(mc_comm *c, int peer, void *buf, size_t bytes, mc_err *err)
{
    char *p = buf;
    size_t off = 0;
    do {
        int len = (int)(bytes - off < PIECE_BYTES ? bytes - off : PIECE_BYTES);
        MPI_Status stt;
        mc_watch_enter(watch_of(c), "MPI_Recv", peer);
        int rc = MPI_Recv(p ? p + off : NULL, len, MPI_BYTE, peer, 0, comm_of(c), &stt);
        mc_watch_leave();
        if (rc == MPI_ERR_TRUNCATE ||
            (rc == MPI_ERR_IN_STATUS && stt.MPI_ERROR == MPI_ERR_TRUNCATE))
            return mc_err_set(err, MC_ERR_ARG,
                              "mpi rank %d (host %s): recv of %zu bytes from rank %d, but the "
                              "peer sent more",
                              g_world_rank, mc_comm_host(), bytes, peer);
        if (rc != MPI_SUCCESS)
            return mpi_fail(c, "MPI_Recv", rc, err);
        int got = 0;
        MPI_Get_count(&stt, MPI_BYTE, &got);
        if (got != len)
            return mc_err_set(err, MC_ERR_ARG,
                              "mpi rank %d (host %s): recv of %zu bytes from rank %d, but the "
                              "peer sent %zu",
                              g_world_rank, mc_comm_host(), bytes, peer, off + (size_t)got);
        off += (size_t)len;
    } while (off < bytes);
    return MC_OK;
}

static mc_status mpi_barrier(mc_comm *c, mc_err *err)
{
    mc_watch_collective(watch_of(c));
    MPI_TRY(c, "MPI_Barrier", MPI_Barrier(comm_of(c)));
    return MC_OK;
}

/* MPI_Ibarrier: arrives now (counted as a collective entered, as the
 * blocking one), completed by mpi_barrier_wait; the wait runs under the
 * watchdog like any blocking call. */
static mc_status mpi_ibarrier(mc_comm *c, void **h, mc_err *err)
{
    MPI_Request *r = malloc(sizeof *r);
    if (!r)
        return mc_err_set(err, MC_ERR_NOMEM, "mpi rank %d: out of memory for a request",
                          g_world_rank);
    mc_watch_collective(watch_of(c));
    int rc = MPI_Ibarrier(comm_of(c), r);
    if (rc != MPI_SUCCESS) {
        free(r);
        return mpi_fail(c, "MPI_Ibarrier", rc, err);
    }
    *h = r;
    return MC_OK;
}

static mc_status mpi_barrier_wait(mc_comm *c, void *h, mc_err *err)
{
    MPI_Request *r = h;
    mc_watch_enter(watch_of(c), "MPI_Wait (barrier)", -1);
    int rc = MPI_Wait(r, MPI_STATUS_IGNORE);
    mc_watch_leave();
    free(r);
    return rc == MPI_SUCCESS ? MC_OK : mpi_fail(c, "MPI_Wait (barrier)", rc, err);
}

/* ---- communicators ----------------------------------------------------- */

/* Communicators this rank has made (their ids: see wrap). */
static uint64_t g_comm_serial = 0;

/* Wraps a new MPI communicator (and owns it, also on failure). For the
 * watchdog it learns the members' world ranks and an id that its members
 * agree on: (world rank + 1 of its rank 0, that rank's serial). */
static mc_status wrap(MPI_Comm comm, mc_comm **out, mc_err *err)
{
    int rank, size;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    mpi_comm *mc = calloc(1, sizeof *mc);
    int *ic = mc ? calloc((size_t)size * 4, sizeof *ic) : NULL;
    int *world = ic ? calloc((size_t)size, sizeof *world) : NULL;
    mc_comm *c = world ? mc_comm_new(&mpi_ops, rank, size, mc) : NULL;
    if (!c) {
        free(world);
        free(ic);
        free(mc);
        MPI_Comm_free(&comm);
        return mc_err_set(err, MC_ERR_NOMEM, "mpi rank %d (host %s): out of memory",
                          g_world_rank, mc_comm_host());
    }
    mc->comm = comm;
    mc->ic = ic;
    mc->watch.size = size;
    mc->watch.rank = rank;
    mc->watch.world = world;
    mc->watch.entry = -1;
    for (int i = 0; i < size; i++)
        ic[i] = i;
    MPI_Group g = MPI_GROUP_NULL, wg = MPI_GROUP_NULL;
    int rc = MPI_Comm_group(comm, &g);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_group(MPI_COMM_WORLD, &wg);
    if (rc == MPI_SUCCESS)
        rc = MPI_Group_translate_ranks(g, size, ic, wg, world);
    if (g != MPI_GROUP_NULL)
        MPI_Group_free(&g);
    if (wg != MPI_GROUP_NULL)
        MPI_Group_free(&wg);
    uint64_t id = (uint64_t)(g_world_rank + 1) << 32 | ++g_comm_serial;
    if (rc == MPI_SUCCESS) {
        mc_watch_enter(NULL, "MPI_Bcast (communicator id)", -1);
        rc = MPI_Bcast(&id, 1, MPI_UINT64_T, 0, comm);
        mc_watch_leave();
    }
    if (rc != MPI_SUCCESS) {
        mc_status st = mpi_fail(c, "setting up a communicator", rc, err);
        mc_comm_free(c);
        return st;
    }
    mc->watch.id = id;
    mc_watch_track(&mc->watch);
    *out = c;
    return MC_OK;
}

static mc_status mpi_split(mc_comm *c, int color, int key, mc_comm **out, mc_err *err)
{
    MPI_Comm nc = MPI_COMM_NULL;
    mc_watch_collective(watch_of(c));
    MPI_TRY(c, "MPI_Comm_split",
            MPI_Comm_split(comm_of(c), color == MC_COMM_COLOR_NONE ? MPI_UNDEFINED : color, key,
                           &nc));
    if (nc == MPI_COMM_NULL)
        return MC_OK;
    return wrap(nc, out, err);
}

static void mpi_free(mc_comm *c)
{
    mpi_comm *mc = c->impl;
    if (!mc)
        return;
    mc_watch_untrack(&mc->watch);
    if (g_mpi_active && mc->comm != MPI_COMM_NULL) {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin)
            MPI_Comm_free(&mc->comm);
    }
    free(mc->scratch);
    free(mc->ic);
    free(mc->watch.world);
    free(mc);
}

static const mc_comm_ops mpi_ops = {
    .name = "mpi",
    .all_reduce_sum = mpi_all_reduce,
    .all_gather_v = mpi_all_gather_v,
    .bcast = mpi_bcast,
    .all_to_all_v = mpi_all_to_all_v,
    .send = mpi_send,
    .recv = mpi_recv,
    .barrier = mpi_barrier,
    .ibarrier = mpi_ibarrier,
    .barrier_wait = mpi_barrier_wait,
    .split = mpi_split,
    .free = mpi_free,
};

/* ---- world ------------------------------------------------------------- */

/* The progress board of this host (comm_watch.h): the host's first rank
 * creates it, the others attach, and once all have it mapped it is
 * unlinked, so no name is left behind whatever happens later. A failure
 * only leaves the board off: timeout messages then name fewer ranks. */
static void board_setup(int world_size)
{
    MPI_Comm node = MPI_COMM_NULL;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS)
        return;
    MPI_Comm_set_errhandler(node, MPI_ERRORS_RETURN);
    int me = 0;
    MPI_Comm_rank(node, &me);
    char name[MC_WATCH_NAME] = "";
    mc_err e;
    mc_err_clear(&e);
    if (me == 0 && mc_watch_board_create(g_world_rank, world_size, name, &e) != MC_OK)
        name[0] = '\0';
    if (MPI_Bcast(name, MC_WATCH_NAME, MPI_CHAR, 0, node) == MPI_SUCCESS && me != 0 && name[0])
        mc_watch_board_attach(g_world_rank, world_size, name, &e);
    MPI_Barrier(node);
    if (me == 0 && name[0])
        mc_watch_board_unlink(name);
    MPI_Comm_free(&node);
    if (e.msg[0])
        MC_WARN("%s; a waiting rank will not name its peers", e.msg);
}

mc_status mc_comm_world_init(int *argc, char ***argv, mc_comm **out, mc_err *err)
{
    *out = NULL;
    /* a bad timeout is refused on every rank, before anything waits */
    double timeout_s = MC_COMM_MPI_TIMEOUT_S;
    const char *tenv = getenv("MC_COMM_TIMEOUT");
    int lrank = mc_comm_launcher_rank();
    if (tenv) {
        mc_err pe;
        mc_err_clear(&pe);
        if (mc_comm_timeout_parse(tenv, &timeout_s, &pe) != MC_OK) {
            if (lrank < 0)
                return mc_err_set(err, pe.status, "%s", pe.msg);
            return mc_err_set(err, pe.status, "rank %d (host %s): %s", lrank, mc_comm_host(),
                              pe.msg);
        }
    }
    /* the launcher (mpirun or its daemon): the parent before MPI_Init */
    long launcher = (long)getppid();
    if (lrank < 0) {
        if (mc_comm_self_create(out) != MC_OK)
            return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        return MC_OK;
    }
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return mc_err_set(err, MC_ERR_IO, "host %s: MPI_Init failed", mc_comm_host());
    }
    g_mpi_active = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_world_rank);
    int world_size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    const char *chk = getenv("MC_COMM_CHECK");
    g_check = chk && !strcmp(chk, "1");
    MPI_Comm dup;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    if (rc != MPI_SUCCESS)
        return mc_err_set(err, MC_ERR_IO, "mpi rank %d (host %s): MPI_Comm_dup failed",
                          g_world_rank, mc_comm_host());
    board_setup(world_size);
    mc_status st = wrap(dup, out, err);
    if (st == MC_OK && (st = mc_watch_start(g_world_rank, timeout_s, launcher, err)) != MC_OK) {
        mc_comm_free(*out);
        *out = NULL;
    }
    return st;
}

void mc_comm_world_finalize(mc_comm *world)
{
    mc_comm_free(world);
    if (!g_mpi_active)
        return;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin)
        MPI_Finalize();
    /* stopped after MPI_Finalize, which waits for the peers: a launcher
     * killed meanwhile still ends this rank */
    mc_watch_stop();
    g_mpi_active = false;
}

void mc_comm_world_abort(mc_comm *world, int code)
{
    fflush(stdout);
    fflush(stderr);
    if (g_mpi_active)
        MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}
