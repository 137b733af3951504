/* comm.c - argument checks in front of every backend, and the "self"
 * backend (one rank: collectives are copies or no-ops). */
#include "comm_impl.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mc_comm *mc_comm_new(const mc_comm_ops *ops, int rank, int size, void *impl)
{
    mc_comm *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ops = ops;
    c->rank = rank;
    c->size = size;
    c->impl = impl;
    return c;
}

int mc_comm_rank(const mc_comm *c) { return c ? c->rank : -1; }
int mc_comm_size(const mc_comm *c) { return c ? c->size : 0; }
const char *mc_comm_backend(const mc_comm *c) { return c ? c->ops->name : "none"; }

void mc_comm_free(mc_comm *c)
{
    if (!c)
        return;
    if (c->ops->free)
        c->ops->free(c);
    free(c);
}

#define CHECK_COMM(c, what)                                                                        \
    do {                                                                                           \
        if (!(c))                                                                                  \
            return mc_err_set(err, MC_ERR_ARG, "%s: communicator is NULL", what);                 \
    } while (0)

mc_status mc_comm_all_reduce_sum(mc_comm *c, void *buf, size_t count, mc_dtype dtype, mc_err *err)
{
    CHECK_COMM(c, "all_reduce_sum");
    if (dtype != MC_DT_F32 && dtype != MC_DT_BF16)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s rank %d: all_reduce_sum: dtype %s is not summed (F32 or BF16)",
                          c->ops->name, c->rank, mc_dtype_name(dtype));
    if (count > SIZE_MAX / mc_dtype_size(dtype))
        return mc_err_set(err, MC_ERR_OVERFLOW, "%s rank %d: all_reduce_sum of %zu %s elements",
                          c->ops->name, c->rank, count, mc_dtype_name(dtype));
    if (!buf && count > 0)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: all_reduce_sum: buf is NULL",
                          c->ops->name, c->rank);
    return c->ops->all_reduce_sum(c, buf, count, dtype, err);
}

mc_status mc_comm_all_reduce_sum_f32(mc_comm *c, float *buf, size_t count, mc_err *err)
{
    return mc_comm_all_reduce_sum(c, buf, count, MC_DT_F32, err);
}

/* Checks that every region (displs[p], counts[p]) lies inside a buffer of
 * `bytes` bytes and that a NULL buffer only goes with `bytes` == 0. */
static mc_status check_regions(const mc_comm *c, const char *what, const char *side,
                               const void *buf, size_t bytes, const size_t *counts,
                               const size_t *displs, mc_err *err)
{
    if (!counts || !displs)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: %s %s_counts/%s_displs are NULL",
                          c->ops->name, c->rank, what, side, side);
    if (!buf && bytes > 0)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: %s %s buffer is NULL but has %zu bytes",
                          c->ops->name, c->rank, what, side, bytes);
    for (int p = 0; p < c->size; p++) {
        size_t end;
        if (__builtin_add_overflow(displs[p], counts[p], &end) || end > bytes)
            return mc_err_set(err, MC_ERR_ARG,
                              "%s rank %d: %s %s region for rank %d (offset %zu, %zu "
                              "bytes) exceeds the %zu-byte buffer",
                              c->ops->name, c->rank, what, side, p, displs[p], counts[p], bytes);
    }
    return MC_OK;
}

mc_status mc_comm_all_to_all_v(mc_comm *c, const void *send, size_t send_bytes,
                               const size_t *send_counts, const size_t *send_displs, void *recv,
                               size_t recv_bytes, const size_t *recv_counts,
                               const size_t *recv_displs, mc_err *err)
{
    CHECK_COMM(c, "all_to_all_v");
    mc_status st =
        check_regions(c, "all_to_all_v", "send", send, send_bytes, send_counts, send_displs, err);
    if (st != MC_OK)
        return st;
    st = check_regions(c, "all_to_all_v", "recv", recv, recv_bytes, recv_counts, recv_displs, err);
    if (st != MC_OK)
        return st;
    return c->ops->all_to_all_v(c, send, send_counts, send_displs, recv, recv_counts, recv_displs,
                                err);
}

mc_status mc_comm_all_gather_v(mc_comm *c, const void *send, size_t send_bytes, void *recv,
                               size_t recv_bytes, const size_t *recv_counts,
                               const size_t *recv_displs, mc_err *err)
{
    CHECK_COMM(c, "all_gather_v");
    if (!send && send_bytes > 0)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s rank %d: all_gather_v: send is NULL but has %zu bytes", c->ops->name,
                          c->rank, send_bytes);
    mc_status st =
        check_regions(c, "all_gather_v", "recv", recv, recv_bytes, recv_counts, recv_displs, err);
    if (st != MC_OK)
        return st;
    if (recv_counts[c->rank] != send_bytes)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s rank %d: all_gather_v: send_bytes is %zu but recv_counts[%d] is %zu",
                          c->ops->name, c->rank, send_bytes, c->rank, recv_counts[c->rank]);
    return c->ops->all_gather_v(c, send, send_bytes, recv, recv_counts, recv_displs, err);
}

mc_status mc_comm_all_gather(mc_comm *c, const void *send, size_t bytes, void *recv, mc_err *err)
{
    CHECK_COMM(c, "all_gather");
    size_t total;
    if (__builtin_mul_overflow(bytes, (size_t)c->size, &total))
        return mc_err_set(err, MC_ERR_OVERFLOW, "%s rank %d: all_gather of %zu bytes from %d ranks",
                          c->ops->name, c->rank, bytes, c->size);
    if ((!send || !recv) && bytes > 0)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: all_gather: %s is NULL", c->ops->name,
                          c->rank, send ? "recv" : "send");
    size_t *cd = malloc(2 * (size_t)c->size * sizeof *cd); /* counts (size), displs (size) */
    if (!cd)
        return mc_err_set(err, MC_ERR_NOMEM, "%s rank %d: all_gather: out of memory",
                          c->ops->name, c->rank);
    for (int p = 0; p < c->size; p++) {
        cd[p] = bytes;
        cd[c->size + p] = (size_t)p * bytes;
    }
    mc_status st = c->ops->all_gather_v(c, send, bytes, recv, cd, cd + c->size, err);
    free(cd);
    return st;
}

mc_status mc_comm_bcast(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err)
{
    CHECK_COMM(c, "bcast");
    if (root < 0 || root >= c->size)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: bcast: root %d of a %d-rank communicator",
                          c->ops->name, c->rank, root, c->size);
    if (!buf && bytes > 0)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: bcast: buf is NULL but has %zu bytes",
                          c->ops->name, c->rank, bytes);
    return c->ops->bcast(c, root, buf, bytes, err);
}

/* Ranks named in a bcast_id refusal before "...". */
#define ID_LIST_MAX 8

mc_status mc_comm_bcast_id(mc_comm *c, int root, void *id, size_t len, mc_err *err)
{
    CHECK_COMM(c, "bcast_id");
    if (root < 0 || root >= c->size)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s rank %d: bcast_id: root %d of a %d-rank communicator", c->ops->name,
                          c->rank, root, c->size);
    if (len == 0 || len > MC_COMM_ID_MAX)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: bcast_id: len %zu (want 1..%d bytes)",
                          c->ops->name, c->rank, len, MC_COMM_ID_MAX);
    if (!id)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: bcast_id: id is NULL", c->ops->name,
                          c->rank);
    /* every rank learns every rank's (root, len) and so reaches the same verdict */
    uint64_t mine[2] = {(uint64_t)root, (uint64_t)len};
    uint64_t *all = malloc(2 * (size_t)c->size * sizeof *all); /* (size, 2) */
    if (!all)
        return mc_err_set(err, MC_ERR_NOMEM, "%s rank %d: bcast_id: out of memory", c->ops->name,
                          c->rank);
    mc_status st = mc_comm_all_gather(c, mine, sizeof mine, all, err);
    if (st != MC_OK) {
        free(all);
        return st;
    }
    char list[96] = "";
    size_t used = 0;
    int differ = 0, first = -1;
    for (int p = 1; p < c->size; p++) {
        if (all[2 * p] == all[0] && all[2 * p + 1] == all[1])
            continue;
        if (first < 0)
            first = p;
        if (differ++ < ID_LIST_MAX)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%d", used ? ", " : "", p);
        else if (differ == ID_LIST_MAX + 1)
            snprintf(list + used, sizeof list - used, ", ...");
    }
    if (first >= 0) {
        st = mc_err_set(err, MC_ERR_ARG,
                        "%s rank %d: bcast_id: ranks disagree: rank 0 passed root %llu and len "
                        "%llu, rank %d root %llu and len %llu (rank(s) differing from rank 0: %s)",
                        c->ops->name, c->rank, (unsigned long long)all[0],
                        (unsigned long long)all[1], first, (unsigned long long)all[2 * first],
                        (unsigned long long)all[2 * first + 1], list);
        free(all);
        return st;
    }
    free(all);
    return c->ops->bcast(c, root, id, len, err);
}

/* ---- asynchronous forms ------------------------------------------------ */

/* On the CPU backends the operation has completed when the request is made;
 * the request only carries its status to mc_comm_wait. A barrier
 * (mc_comm_ibarrier) is the exception: it completes in mc_comm_wait. */
struct mc_comm_req {
    mc_status status;
    mc_comm *barrier; /* a barrier to complete in mc_comm_wait, or NULL */
    void *handle;     /* its backend handle (ops->ibarrier), or NULL: the whole barrier */
};

/* Makes the request of an operation that ended with st (MC_OK only: a
 * failure is returned by the i-call itself, with no request). */
static mc_status req_done(mc_status st, mc_comm_req **req, mc_err *err)
{
    if (st != MC_OK)
        return st;
    mc_comm_req *r = malloc(sizeof *r);
    if (!r)
        return mc_err_set(err, MC_ERR_NOMEM, "comm: out of memory for a request");
    r->status = st;
    r->barrier = NULL;
    r->handle = NULL;
    *req = r;
    return MC_OK;
}

#define CHECK_REQ(what)                                                                            \
    do {                                                                                           \
        if (!req)                                                                                  \
            return mc_err_set(err, MC_ERR_ARG, "%s: req is NULL", what);                           \
        *req = NULL;                                                                               \
    } while (0)

mc_status mc_comm_iall_reduce_sum(mc_comm *c, void *buf, size_t count, mc_dtype dtype,
                                  mc_comm_stream *stream, mc_comm_req **req, mc_err *err)
{
    (void)stream; /* CPU backends: no device stream */
    CHECK_REQ("iall_reduce_sum");
    return req_done(mc_comm_all_reduce_sum(c, buf, count, dtype, err), req, err);
}

mc_status mc_comm_iall_gather(mc_comm *c, const void *send, size_t bytes, void *recv,
                              mc_comm_stream *stream, mc_comm_req **req, mc_err *err)
{
    (void)stream;
    CHECK_REQ("iall_gather");
    return req_done(mc_comm_all_gather(c, send, bytes, recv, err), req, err);
}

mc_status mc_comm_ibcast(mc_comm *c, int root, void *buf, size_t bytes, mc_comm_stream *stream,
                         mc_comm_req **req, mc_err *err)
{
    (void)stream;
    CHECK_REQ("ibcast");
    return req_done(mc_comm_bcast(c, root, buf, bytes, err), req, err);
}

mc_status mc_comm_iall_to_all_v(mc_comm *c, const void *send, size_t send_bytes,
                                const size_t *send_counts, const size_t *send_displs, void *recv,
                                size_t recv_bytes, const size_t *recv_counts,
                                const size_t *recv_displs, mc_comm_stream *stream,
                                mc_comm_req **req, mc_err *err)
{
    (void)stream;
    CHECK_REQ("iall_to_all_v");
    return req_done(mc_comm_all_to_all_v(c, send, send_bytes, send_counts, send_displs, recv,
                                         recv_bytes, recv_counts, recv_displs, err),
                    req, err);
}

mc_status mc_comm_ibarrier(mc_comm *c, mc_comm_req **req, mc_err *err)
{
    CHECK_REQ("ibarrier");
    CHECK_COMM(c, "ibarrier");
    void *h = NULL;
    if (c->ops->ibarrier) {
        mc_status st = c->ops->ibarrier(c, &h, err);
        if (st != MC_OK)
            return st;
    }
    mc_comm_req *r = malloc(sizeof *r);
    if (!r) { /* the barrier must still happen on this rank: the others are in it */
        mc_status st = h ? c->ops->barrier_wait(c, h, err) : c->ops->barrier(c, err);
        return st != MC_OK ? st : mc_err_set(err, MC_ERR_NOMEM, "comm: out of memory for a request");
    }
    *r = (mc_comm_req){.status = MC_OK, .barrier = c, .handle = h};
    *req = r;
    return MC_OK;
}

mc_status mc_comm_wait(mc_comm_req *req, mc_err *err)
{
    if (!req)
        return mc_err_set(err, MC_ERR_ARG, "wait: req is NULL");
    mc_status st = req->status;
    if (req->barrier)
        st = req->handle ? req->barrier->ops->barrier_wait(req->barrier, req->handle, err)
                         : req->barrier->ops->barrier(req->barrier, err);
    free(req);
    return st;
}

static mc_status check_peer(const mc_comm *c, const char *what, int peer, const void *buf,
                            size_t bytes, mc_err *err)
{
    if (peer < 0 || peer >= c->size)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: %s with rank %d of a %d-rank communicator",
                          c->ops->name, c->rank, what, peer, c->size);
    if (peer == c->rank)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: %s with itself is not supported",
                          c->ops->name, c->rank, what);
    if (!buf && bytes > 0)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: %s of %zu bytes from a NULL buffer",
                          c->ops->name, c->rank, what, bytes);
    return MC_OK;
}

mc_status mc_comm_send(mc_comm *c, int peer, const void *buf, size_t bytes, mc_err *err)
{
    CHECK_COMM(c, "send");
    mc_status st = check_peer(c, "send", peer, buf, bytes, err);
    if (st != MC_OK)
        return st;
    return c->ops->send(c, peer, buf, bytes, err);
}

mc_status mc_comm_recv(mc_comm *c, int peer, void *buf, size_t bytes, mc_err *err)
{
    CHECK_COMM(c, "recv");
    mc_status st = check_peer(c, "recv", peer, buf, bytes, err);
    if (st != MC_OK)
        return st;
    return c->ops->recv(c, peer, buf, bytes, err);
}

mc_status mc_comm_barrier(mc_comm *c, mc_err *err)
{
    CHECK_COMM(c, "barrier");
    return c->ops->barrier(c, err);
}

mc_status mc_comm_split(mc_comm *c, int color, int key, mc_comm **out, mc_err *err)
{
    if (out)
        *out = NULL;
    CHECK_COMM(c, "split");
    if (!out)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: split with out == NULL", c->ops->name,
                          c->rank);
    if (color < 0 && color != MC_COMM_COLOR_NONE)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s rank %d: split color %d (colors are >= 0 or MC_COMM_COLOR_NONE)",
                          c->ops->name, c->rank, color);
    return c->ops->split(c, color, key, out, err);
}

/* ---- self: one rank ---------------------------------------------------- */

static mc_status self_all_reduce(mc_comm *c, void *buf, size_t count, mc_dtype dtype,
                                 mc_err *err)
{
    return MC_OK; /* the sum over one rank is the input (a bf16 rounds to itself) */
}

static mc_status self_all_gather_v(mc_comm *c, const void *send, size_t send_bytes, void *recv,
                                   const size_t *recv_counts, const size_t *recv_displs,
                                   mc_err *err)
{
    if (send_bytes > 0) /* recv_counts[0] == send_bytes, checked; maybe in place */
        memmove((char *)recv + recv_displs[0], send, send_bytes);
    return MC_OK;
}

static mc_status self_bcast(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err)
{
    return MC_OK;
}

static mc_status self_all_to_all_v(mc_comm *c, const void *send, const size_t *send_counts,
                                   const size_t *send_displs, void *recv,
                                   const size_t *recv_counts, const size_t *recv_displs,
                                   mc_err *err)
{
    if (send_counts[0] != recv_counts[0])
        return mc_err_set(err, MC_ERR_ARG,
                          "self rank 0: all_to_all_v sends %zu bytes to itself but receives %zu",
                          send_counts[0], recv_counts[0]);
    if (send_counts[0] > 0)
        memmove((char *)recv + recv_displs[0], (const char *)send + send_displs[0],
                send_counts[0]);
    return MC_OK;
}

static mc_status self_p2p(mc_comm *c, int peer, const void *buf, size_t bytes, mc_err *err)
{
    /* unreachable: check_peer() refuses every peer of a one-rank comm */
    return mc_err_set(err, MC_ERR_ARG, "self: no peers to exchange with");
}

static mc_status self_recv(mc_comm *c, int peer, void *buf, size_t bytes, mc_err *err)
{
    return self_p2p(c, peer, buf, bytes, err);
}

static mc_status self_barrier(mc_comm *c, mc_err *err) { return MC_OK; }

static mc_status self_split(mc_comm *c, int color, int key, mc_comm **out, mc_err *err)
{
    if (color == MC_COMM_COLOR_NONE)
        return MC_OK;
    if (mc_comm_self_create(out) != MC_OK)
        return mc_err_set(err, MC_ERR_NOMEM, "self: split: out of memory");
    return MC_OK;
}

static const mc_comm_ops self_ops = {
    .name = "self",
    .all_reduce_sum = self_all_reduce,
    .all_gather_v = self_all_gather_v,
    .bcast = self_bcast,
    .all_to_all_v = self_all_to_all_v,
    .send = self_p2p,
    .recv = self_recv,
    .barrier = self_barrier,
    .split = self_split,
    .free = NULL,
};

mc_status mc_comm_self_create(mc_comm **out)
{
    if (!out)
        return MC_ERR_ARG;
    *out = mc_comm_new(&self_ops, 0, 1, NULL);
    return *out ? MC_OK : MC_ERR_NOMEM;
}
