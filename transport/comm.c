/* comm.c - argument checks in front of every backend, and the "self"
 * backend (one rank: collectives are copies or no-ops). */
#include "comm_impl.h"

#include <stdint.h>
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

mc_status mc_comm_all_reduce_sum_f32(mc_comm *c, float *buf, size_t count, mc_err *err)
{
    CHECK_COMM(c, "all_reduce_sum_f32");
    if (count > SIZE_MAX / sizeof(float))
        return mc_err_set(err, MC_ERR_OVERFLOW, "%s rank %d: all_reduce_sum_f32 of %zu floats",
                          c->ops->name, c->rank, count);
    if (!buf && count > 0)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: all_reduce_sum_f32 on a NULL buffer",
                          c->ops->name, c->rank);
    return c->ops->all_reduce_sum_f32(c, buf, count, err);
}

/* Checks that every region (displs[p], counts[p]) lies inside a buffer of
 * `bytes` bytes and that a NULL buffer only goes with `bytes` == 0. */
static mc_status check_regions(const mc_comm *c, const char *side, const void *buf, size_t bytes,
                               const size_t *counts, const size_t *displs, mc_err *err)
{
    if (!counts || !displs)
        return mc_err_set(err, MC_ERR_ARG, "%s rank %d: all_to_all_v %s counts/displs are NULL",
                          c->ops->name, c->rank, side);
    if (!buf && bytes > 0)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s rank %d: all_to_all_v %s buffer is NULL but has %zu bytes",
                          c->ops->name, c->rank, side, bytes);
    for (int p = 0; p < c->size; p++) {
        size_t end;
        if (__builtin_add_overflow(displs[p], counts[p], &end) || end > bytes)
            return mc_err_set(err, MC_ERR_ARG,
                              "%s rank %d: all_to_all_v %s region for rank %d (offset %zu, %zu "
                              "bytes) exceeds the %zu-byte buffer",
                              c->ops->name, c->rank, side, p, displs[p], counts[p], bytes);
    }
    return MC_OK;
}

mc_status mc_comm_all_to_all_v(mc_comm *c, const void *send, size_t send_bytes,
                               const size_t *send_counts, const size_t *send_displs, void *recv,
                               size_t recv_bytes, const size_t *recv_counts,
                               const size_t *recv_displs, mc_err *err)
{
    CHECK_COMM(c, "all_to_all_v");
    mc_status st = check_regions(c, "send", send, send_bytes, send_counts, send_displs, err);
    if (st != MC_OK)
        return st;
    st = check_regions(c, "recv", recv, recv_bytes, recv_counts, recv_displs, err);
    if (st != MC_OK)
        return st;
    return c->ops->all_to_all_v(c, send, send_counts, send_displs, recv, recv_counts, recv_displs,
                                err);
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

static mc_status self_all_reduce(mc_comm *c, float *buf, size_t count, mc_err *err)
{
    return MC_OK; /* the sum over one rank is the input */
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
    .all_reduce_sum_f32 = self_all_reduce,
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
