/* comm_nccl.c - the NCCL backend of the data plane (see comm_nccl.h). */
#include "comm_nccl.h"

#include "comm_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MC_HAVE_NCCL

mc_status mc_comm_nccl_create(mc_comm *boot, int device, int timeout_ms, mc_comm **out,
                              mc_err *err)
{
    (void)boot;
    (void)device;
    (void)timeout_ms;
    *out = NULL;
    return mc_err_set(err, MC_ERR_UNSUPPORTED,
                      "built without CUDA/NCCL (configure with -DMC_CUDA=ON where NCCL is "
                      "installed)");
}

int mc_comm_nccl_device(const mc_comm *c)
{
    (void)c;
    return -1;
}

#else /* MC_HAVE_NCCL */

#include "cuda/comm_sum.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    ncclComm_t comm;     /* NULL once aborted */
    cudaStream_t stream; /* every operation is queued here */
    int device;
    int timeout_ms;
    void *scratch; /* device: the all-gather of all_reduce_sum (> 2 ranks), grown */
    size_t scratch_cap;
    float *one; /* device: the barrier's float */
    char host[64];
} nccl_comm;

static const mc_comm_ops nccl_ops;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static nccl_comm *impl(const mc_comm *c) { return (nccl_comm *)c->impl; }

static void abort_comm(nccl_comm *n)
{
    if (n->comm)
        (void)ncclCommAbort(n->comm);
    n->comm = NULL;
}

/* Waits until comm has no operation in progress (init, split, group):
 * MC_OK, or on an error or after timeout_ms it aborts comm and says so. */
static mc_status wait_comm(ncclComm_t comm, int rank, const char *host, int timeout_ms,
                           const char *what, mc_err *err)
{
    double t0 = now_ms();
    for (;;) {
        ncclResult_t state = ncclInProgress;
        ncclResult_t r = ncclCommGetAsyncError(comm, &state);
        if (r != ncclSuccess)
            state = r;
        if (state == ncclSuccess)
            return MC_OK;
        if (state != ncclInProgress) {
            const char *last = ncclGetLastError(comm);
            (void)ncclCommAbort(comm);
            return mc_err_set(err, MC_ERR_IO, "nccl rank %d (host %s): %s failed: %s (%s)", rank,
                              host, what, ncclGetErrorString(state), last ? last : "");
        }
        if (now_ms() - t0 > (double)timeout_ms) {
            (void)ncclCommAbort(comm);
            return mc_err_set(err, MC_ERR_IO,
                              "nccl rank %d (host %s): %s did not complete in %d ms (a peer is "
                              "dead or hung); communicator aborted",
                              rank, host, what, timeout_ms);
        }
        sched_yield();
    }
}

/* After an operation was queued (r: what the enqueue or ncclGroupEnd
 * returned): waits for the communicator, then for the stream, within the
 * timeout; an error or the timeout aborts the communicator. */
static mc_status finish(mc_comm *c, ncclResult_t r, const char *what, mc_err *err)
{
    nccl_comm *n = impl(c);
    if (r != ncclSuccess && r != ncclInProgress) {
        const char *last = ncclGetLastError(n->comm);
        mc_status st = mc_err_set(err, MC_ERR_IO, "nccl rank %d (host %s): %s: %s (%s)", c->rank,
                                  n->host, what, ncclGetErrorString(r), last ? last : "");
        abort_comm(n);
        return st;
    }
    double t0 = now_ms(); /* one timeout for both waits */
    mc_status st = wait_comm(n->comm, c->rank, n->host, n->timeout_ms, what, err);
    if (st != MC_OK) {
        n->comm = NULL; /* aborted by wait_comm */
        return st;
    }
    for (;;) {
        cudaError_t e = cudaStreamQuery(n->stream);
        if (e == cudaSuccess)
            return MC_OK;
        if (e != cudaErrorNotReady) {
            abort_comm(n);
            return mc_err_set(err, MC_ERR_IO, "nccl rank %d (host %s): %s: CUDA: %s", c->rank,
                              n->host, what, cudaGetErrorString(e));
        }
        ncclResult_t state = ncclSuccess;
        if (ncclCommGetAsyncError(n->comm, &state) == ncclSuccess && state != ncclSuccess &&
            state != ncclInProgress) {
            abort_comm(n);
            return mc_err_set(err, MC_ERR_IO, "nccl rank %d (host %s): %s failed: %s", c->rank,
                              n->host, what, ncclGetErrorString(state));
        }
        if (now_ms() - t0 > (double)n->timeout_ms) {
            abort_comm(n);
            return mc_err_set(err, MC_ERR_IO,
                              "nccl rank %d (host %s): %s did not complete in %d ms (a peer is "
                              "dead or hung); communicator aborted",
                              c->rank, n->host, what, n->timeout_ms);
        }
        sched_yield();
    }
}

/* A rank that leaves an operation on its own (a local error before or
 * after enqueuing) leaves its peers waiting until their timeout aborts
 * theirs: it aborts its own too, so its next operation fails at once
 * instead of waiting out a timeout of its own against aborted peers. */
static mc_status local_fail(mc_comm *c, mc_status st)
{
    abort_comm(impl(c));
    return st;
}

/* Before an operation: the communicator is usable and its device current. */
static mc_status begin(mc_comm *c, const char *what, mc_err *err)
{
    nccl_comm *n = impl(c);
    if (!n->comm)
        return mc_err_set(err, MC_ERR_IO,
                          "nccl rank %d (host %s): %s: the communicator was aborted after an "
                          "earlier failure",
                          c->rank, n->host, what);
    cudaError_t e = cudaSetDevice(n->device);
    if (e != cudaSuccess)
        return local_fail(c, mc_err_set(err, MC_ERR_INTERNAL,
                                        "nccl rank %d: %s: cudaSetDevice(%d): %s", c->rank, what,
                                        n->device, cudaGetErrorString(e)));
    return MC_OK;
}

static mc_status grow_scratch(mc_comm *c, size_t bytes, mc_err *err)
{
    nccl_comm *n = impl(c);
    if (bytes <= n->scratch_cap)
        return MC_OK;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return mc_err_set(err, MC_ERR_NOMEM, "nccl rank %d: no device memory for %zu bytes of "
                          "all-reduce scratch: %s", c->rank, bytes, cudaGetErrorString(e));
    }
    cudaFree(n->scratch);
    n->scratch = p;
    n->scratch_cap = bytes;
    return MC_OK;
}

static mc_status nc_all_reduce(mc_comm *c, void *buf, size_t count, mc_dtype dtype, mc_err *err)
{
    nccl_comm *n = impl(c);
    mc_status st = begin(c, "all_reduce_sum", err);
    if (st != MC_OK || count == 0 || c->size == 1)
        return st;
    int bf16 = dtype == MC_DT_BF16;
    if (c->size == 2) /* one addition per element: the rank-order sum */
        return finish(c,
                      ncclAllReduce(buf, buf, count, bf16 ? ncclBfloat16 : ncclFloat32, ncclSum,
                                    n->comm, n->stream),
                      "all_reduce_sum", err);
    size_t esz = bf16 ? 2 : 4, bytes = count * esz;
    if (bytes > SIZE_MAX / (size_t)c->size)
        return local_fail(c, mc_err_set(err, MC_ERR_OVERFLOW,
                                        "nccl rank %d: all_reduce_sum of %zu elements", c->rank,
                                        count));
    if ((st = grow_scratch(c, bytes * (size_t)c->size, err)) != MC_OK)
        return local_fail(c, st);
    /* scratch [size, count]: every rank's contribution, then the ordered sum */
    ncclResult_t r = ncclAllGather(buf, n->scratch, bytes, ncclInt8, n->comm, n->stream);
    if ((st = finish(c, r, "all_reduce_sum (all-gather)", err)) != MC_OK)
        return st;
    int e = mc_cuda_sum_ranks(n->scratch, buf, count, c->size, bf16, n->stream);
    cudaError_t se = e ? (cudaError_t)e : cudaStreamSynchronize(n->stream);
    if (se != cudaSuccess)
        return local_fail(c, mc_err_set(err, MC_ERR_INTERNAL,
                                        "nccl rank %d: all_reduce_sum: sum kernel: %s", c->rank,
                                        cudaGetErrorString(se)));
    return MC_OK;
}

static mc_status nc_all_gather_v(mc_comm *c, const void *send, size_t send_bytes, void *recv,
                                 const size_t *recv_counts, const size_t *recv_displs,
                                 mc_err *err)
{
    (void)send_bytes;
    nccl_comm *n = impl(c);
    mc_status st = begin(c, "all_gather_v", err);
    if (st != MC_OK)
        return st;
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < c->size && (r == ncclSuccess || r == ncclInProgress); p++) {
        if (recv_counts[p] == 0) /* the same on every rank */
            continue;
        char *dst = (char *)recv + recv_displs[p];
        r = ncclBroadcast(p == c->rank ? send : dst, dst, recv_counts[p], ncclInt8, p, n->comm,
                          n->stream);
    }
    ncclResult_t g = ncclGroupEnd();
    return finish(c, r != ncclSuccess && r != ncclInProgress ? r : g, "all_gather_v", err);
}

static mc_status nc_bcast(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err)
{
    nccl_comm *n = impl(c);
    mc_status st = begin(c, "bcast", err);
    if (st != MC_OK || bytes == 0)
        return st;
    return finish(c, ncclBroadcast(buf, buf, bytes, ncclInt8, root, n->comm, n->stream), "bcast",
                  err);
}

static mc_status nc_all_to_all_v(mc_comm *c, const void *send, const size_t *send_counts,
                                 const size_t *send_displs, void *recv, const size_t *recv_counts,
                                 const size_t *recv_displs, mc_err *err)
{
    nccl_comm *n = impl(c);
    int me = c->rank;
    mc_status st = begin(c, "all_to_all_v", err);
    if (st != MC_OK)
        return st;
    if (send_counts[me] != recv_counts[me])
        return local_fail(c, mc_err_set(err, MC_ERR_ARG,
                                        "nccl rank %d: all_to_all_v: sends itself %zu bytes but "
                                        "expects %zu",
                                        me, send_counts[me], recv_counts[me]));
    if (send_counts[me] > 0) {
        cudaError_t e = cudaMemcpyAsync((char *)recv + recv_displs[me],
                                        (const char *)send + send_displs[me], send_counts[me],
                                        cudaMemcpyDeviceToDevice, n->stream);
        if (e != cudaSuccess)
            return local_fail(c, mc_err_set(err, MC_ERR_INTERNAL,
                                            "nccl rank %d: all_to_all_v: own rows: %s", me,
                                            cudaGetErrorString(e)));
    }
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < c->size && (r == ncclSuccess || r == ncclInProgress); p++) {
        if (p == me)
            continue;
        if (send_counts[p] > 0)
            r = ncclSend((const char *)send + send_displs[p], send_counts[p], ncclInt8, p,
                         n->comm, n->stream);
        if ((r == ncclSuccess || r == ncclInProgress) && recv_counts[p] > 0)
            r = ncclRecv((char *)recv + recv_displs[p], recv_counts[p], ncclInt8, p, n->comm,
                         n->stream);
    }
    ncclResult_t g = ncclGroupEnd();
    return finish(c, r != ncclSuccess && r != ncclInProgress ? r : g, "all_to_all_v", err);
}

static mc_status nc_send(mc_comm *c, int peer, const void *buf, size_t bytes, mc_err *err)
{
    nccl_comm *n = impl(c);
    mc_status st = begin(c, "send", err);
    if (st != MC_OK || bytes == 0)
        return st;
    return finish(c, ncclSend(buf, bytes, ncclInt8, peer, n->comm, n->stream), "send", err);
}

static mc_status nc_recv(mc_comm *c, int peer, void *buf, size_t bytes, mc_err *err)
{
    nccl_comm *n = impl(c);
    mc_status st = begin(c, "recv", err);
    if (st != MC_OK || bytes == 0)
        return st;
    return finish(c, ncclRecv(buf, bytes, ncclInt8, peer, n->comm, n->stream), "recv", err);
}

static mc_status nc_barrier(mc_comm *c, mc_err *err)
{
    nccl_comm *n = impl(c);
    mc_status st = begin(c, "barrier", err);
    if (st != MC_OK || c->size == 1)
        return st;
    return finish(c, ncclAllReduce(n->one, n->one, 1, ncclFloat32, ncclSum, n->comm, n->stream),
                  "barrier", err);
}

static void nc_free(mc_comm *c)
{
    nccl_comm *n = impl(c);
    if (!n)
        return;
    (void)cudaSetDevice(n->device);
    if (n->comm) { /* flush what peers may still read, within the timeout; else abort */
        ncclResult_t r = ncclCommFinalize(n->comm);
        mc_err ignore;
        if ((r == ncclSuccess || r == ncclInProgress) &&
            wait_comm(n->comm, c->rank, n->host, n->timeout_ms, "finalize", &ignore) == MC_OK)
            (void)ncclCommDestroy(n->comm);
        else if (r != ncclSuccess && r != ncclInProgress)
            (void)ncclCommAbort(n->comm);
        /* (wait_comm aborted it on a timeout) */
    }
    if (n->stream)
        (void)cudaStreamDestroy(n->stream);
    cudaFree(n->scratch);
    cudaFree(n->one);
    free(n);
    c->impl = NULL;
}

/* An mc_comm around an initialized NCCL communicator: its stream and
 * scratch. On failure comm is aborted. */
static mc_status wrap(ncclComm_t comm, int device, int timeout_ms, const char *host,
                      mc_comm **out, mc_err *err)
{
    int rank = 0, size = 0;
    nccl_comm *n = calloc(1, sizeof *n);
    mc_status st = MC_OK;
    if (!n) {
        (void)ncclCommAbort(comm);
        return mc_err_set(err, MC_ERR_NOMEM, "nccl: out of memory");
    }
    n->comm = comm;
    n->device = device;
    n->timeout_ms = timeout_ms;
    snprintf(n->host, sizeof n->host, "%s", host);
    cudaError_t e = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&n->one, sizeof(float));
    if (e == cudaSuccess)
        e = cudaMemset(n->one, 0, sizeof(float));
    if (e != cudaSuccess)
        st = mc_err_set(err, MC_ERR_INTERNAL, "nccl: device %d: stream / scratch: %s", device,
                        cudaGetErrorString(e));
    else if (ncclCommUserRank(comm, &rank) != ncclSuccess || ncclCommCount(comm, &size) != ncclSuccess)
        st = mc_err_set(err, MC_ERR_INTERNAL, "nccl: cannot read the communicator's rank / size");
    mc_comm *c = st == MC_OK ? mc_comm_new(&nccl_ops, rank, size, n) : NULL;
    if (st == MC_OK && !c)
        st = mc_err_set(err, MC_ERR_NOMEM, "nccl: out of memory");
    if (st != MC_OK) {
        abort_comm(n);
        if (n->stream)
            (void)cudaStreamDestroy(n->stream);
        cudaFree(n->one);
        free(n);
        return st;
    }
    *out = c;
    return MC_OK;
}

static mc_status nc_split(mc_comm *c, int color, int key, mc_comm **out, mc_err *err)
{
    nccl_comm *n = impl(c);
    *out = NULL;
    mc_status st = begin(c, "split", err);
    if (st != MC_OK)
        return st;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t sub = NULL;
    ncclResult_t r = ncclCommSplit(n->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub,
                                   &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        if (sub)
            (void)ncclCommAbort(sub);
        return mc_err_set(err, MC_ERR_IO, "nccl rank %d (host %s): split: %s", c->rank, n->host,
                          ncclGetErrorString(r));
    }
    /* the parent finishes its part first, then the new communicator (read
     * only after that: the split's job stores it) */
    if ((st = wait_comm(n->comm, c->rank, n->host, n->timeout_ms, "split", err)) != MC_OK) {
        n->comm = NULL;
        /* the parent's abort waited for the split's job, which may have
         * stored a new communicator by then: not left behind */
        if (sub)
            (void)ncclCommAbort(sub);
        return st;
    }
    if (!sub)
        return MC_OK; /* MC_COMM_COLOR_NONE */
    if ((st = wait_comm(sub, c->rank, n->host, n->timeout_ms, "split (new communicator)", err)) !=
        MC_OK)
        return st;
    return wrap(sub, n->device, n->timeout_ms, n->host, out, err);
}

static const mc_comm_ops nccl_ops = {
    .name = "nccl",
    .all_reduce_sum = nc_all_reduce,
    .all_gather_v = nc_all_gather_v,
    .bcast = nc_bcast,
    .all_to_all_v = nc_all_to_all_v,
    .send = nc_send,
    .recv = nc_recv,
    .barrier = nc_barrier,
    .split = nc_split,
    .free = nc_free,
};

/* What every rank tells the others before the id moves. */
typedef struct {
    int32_t ok; /* 1: a device was chosen and set */
    int32_t device;
    char host[64];
    char boot[40]; /* the kernel's boot id: with host, one machine (comm_shm.c's
                    * identity; a container's host name alone may repeat) */
    char bus[32];  /* PCI bus id of the device */
    char why[160]; /* ok == 0: the reason */
} peer_info;

/* The id rank 0 makes, with whether it could. */
typedef struct {
    int32_t ok;
    char why[124];
    ncclUniqueId id;
} boot_id;

static int local_rank_or(int fallback)
{
    const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (!v || !*v || strlen(v) > 9)
            continue;
        char *end = NULL;
        long r = strtol(v, &end, 10);
        if (*end == '\0' && r >= 0)
            return (int)r;
    }
    return fallback;
}

static void pick_device(int want, int rank, peer_info *me)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count <= 0) {
        (void)cudaGetLastError();
        snprintf(me->why, sizeof me->why, "no CUDA device visible (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return;
    }
    int dev = want >= 0 ? want : local_rank_or(rank) % count;
    if (dev >= count) {
        snprintf(me->why, sizeof me->why, "CUDA device %d does not exist (%d visible)", dev, count);
        return;
    }
    if ((e = cudaSetDevice(dev)) != cudaSuccess ||
        (e = cudaDeviceGetPCIBusId(me->bus, (int)sizeof me->bus, dev)) != cudaSuccess) {
        snprintf(me->why, sizeof me->why, "device %d: %s", dev, cudaGetErrorString(e));
        return;
    }
    me->device = dev;
    me->ok = 1;
}

mc_status mc_comm_nccl_create(mc_comm *boot, int device, int timeout_ms, mc_comm **out,
                              mc_err *err)
{
    *out = NULL;
    if (!boot)
        return mc_err_set(err, MC_ERR_ARG, "nccl: the bootstrap communicator is NULL");
    if (boot->ops == &nccl_ops) /* it moves device memory; the bootstrap passes host structs */
        return mc_err_set(err, MC_ERR_ARG, "nccl: the bootstrap communicator must move host "
                          "memory (MPI), not be an nccl one");
    if (timeout_ms <= 0)
        timeout_ms = MC_COMM_NCCL_TIMEOUT_MS;
    int rank = mc_comm_rank(boot), size = mc_comm_size(boot);
    peer_info me, *all = calloc((size_t)size, sizeof *all);
    if (!all)
        return mc_err_set(err, MC_ERR_NOMEM, "nccl: out of memory for %d ranks", size);
    memset(&me, 0, sizeof me);
    me.device = -1;
    if (gethostname(me.host, sizeof me.host - 1) != 0)
        snprintf(me.host, sizeof me.host, "?");
    FILE *bf = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!bf || !fgets(me.boot, sizeof me.boot, bf))
        snprintf(me.boot, sizeof me.boot, "?");
    if (bf)
        fclose(bf);
    pick_device(device, rank, &me);
    /* every rank learns every rank's device: all refuse together */
    mc_status st = mc_comm_all_gather(boot, &me, sizeof me, all, err);
    for (int p = 0; st == MC_OK && p < size; p++) {
        all[p].host[sizeof all[p].host - 1] = all[p].bus[sizeof all[p].bus - 1] = 0;
        all[p].why[sizeof all[p].why - 1] = all[p].boot[sizeof all[p].boot - 1] = 0;
        if (!all[p].ok) {
            st = mc_err_set(err, MC_ERR_UNSUPPORTED, "nccl: rank %d (host %s): %s", p, all[p].host,
                            all[p].why);
            break;
        }
        for (int q = 0; q < p; q++)
            if (!strcmp(all[p].host, all[q].host) && !strcmp(all[p].boot, all[q].boot) &&
                !strcmp(all[p].bus, all[q].bus)) {
                st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                                "nccl: ranks %d and %d share GPU %s on host %s (NCCL needs one GPU "
                                "per rank: start at most one rank per GPU)",
                                q, p, all[p].bus, all[p].host);
                break;
            }
    }
    free(all);
    if (st != MC_OK)
        return st;
    boot_id id;
    memset(&id, 0, sizeof id);
    if (rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id.id);
        id.ok = r == ncclSuccess;
        if (!id.ok)
            snprintf(id.why, sizeof id.why, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    }
    if ((st = mc_comm_bcast_id(boot, 0, &id, sizeof id, err)) != MC_OK)
        return st;
    if (!id.ok) {
        id.why[sizeof id.why - 1] = 0;
        return mc_err_set(err, MC_ERR_IO, "nccl: rank 0 (bootstrap): %s", id.why);
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t comm = NULL;
    ncclResult_t r = ncclCommInitRankConfig(&comm, size, id.id, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        if (comm)
            (void)ncclCommAbort(comm);
        return mc_err_set(err, MC_ERR_IO, "nccl rank %d (host %s): init: %s", rank, me.host,
                          ncclGetErrorString(r));
    }
    if ((st = wait_comm(comm, rank, me.host, timeout_ms, "init", err)) != MC_OK)
        return st;
    return wrap(comm, me.device, timeout_ms, me.host, out, err);
}

int mc_comm_nccl_device(const mc_comm *c)
{
    return c && c->ops == &nccl_ops ? impl(c)->device : -1;
}

#endif /* MC_HAVE_NCCL */
