/* comm_local.c - n ranks on n threads of one process, exchanging data
 * through shared memory (unit tests, simulated clusters on one machine).
 *
 * All ranks of a group share one local_group: a mutex, one condition
 * variable, one "post" per rank and one point-to-point slot per ordered
 * pair of ranks.
 *
 * A collective is two rendezvous:
 *   1. every rank posts its arguments (pointers into its own buffers) and
 *      waits; the last rank to arrive checks that all posts agree (same
 *      collective, matching counts) and, for split, builds the new groups,
 *      all under the mutex, before it wakes the others;
 *   2. each rank copies what it needs straight out of its peers' buffers
 *      (they are parked until step 2 ends), then all wait once more so no
 *      buffer is released while a peer still reads it.
 * all_reduce adds the inputs in rank order 0..n-1 on every rank (bf16:
 * widened to f32, added in f32, rounded once at the end), so every rank
 * gets bitwise the same sums. all_gather and bcast copy straight from the
 * contributing rank's buffer.
 *
 * send/recv is a rendezvous per (sender, receiver) slot: the sender posts
 * its buffer and waits until the receiver has copied it (as on NCCL, a send
 * does not complete without its recv).
 *
 * Waits for peers time out (MC_COMM_LOCAL_TIMEOUT_MS by default) instead of
 * hanging; a timeout or a disagreement marks the group failed, wakes
 * everyone, and from then on every call on the group fails with the first
 * message. The second rendezvous of a collective never times out: once all
 * ranks passed the first, all of them are known to be alive and copying.
 */
#include "comm_impl.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef enum {
    OP_ALL_REDUCE,
    OP_ALL_GATHER,
    OP_BCAST,
    OP_ALL_TO_ALL_V,
    OP_BARRIER,
    OP_SPLIT,
    OP_COUNT
} local_op;

static const char *const op_names[OP_COUNT] = {
    [OP_ALL_REDUCE] = "all_reduce_sum",
    [OP_ALL_GATHER] = "all_gather",
    [OP_BCAST] = "bcast",
    [OP_ALL_TO_ALL_V] = "all_to_all_v",
    [OP_BARRIER] = "barrier",
    [OP_SPLIT] = "split",
};

/* One rank's arguments to the collective in progress. */
typedef struct {
    local_op op;
    int nomem;           /* this rank could not allocate its scratch */
    size_t count;       /* all_reduce: elements */
    mc_dtype dtype;     /* all_reduce */
    const void *values; /* all_reduce: input (count) of dtype */
    const char *send;   /* all_to_all_v, all_gather: send; bcast: buf */
    size_t bytes;       /* all_gather: send bytes; bcast: bytes */
    int root;           /* bcast */
    const size_t *send_counts, *send_displs, *recv_counts; /* recv_counts also all_gather */
    int color, key; /* split */
    mc_comm *out;   /* split: this rank's new comm, built by the last arriver */
} local_post;

typedef enum { SLOT_EMPTY, SLOT_POSTED, SLOT_COPYING, SLOT_DONE, SLOT_MISMATCH } slot_state;

/* send/recv from one rank to another. */
typedef struct {
    slot_state state;
    const void *buf;
    size_t bytes;      /* posted by the sender */
    size_t recv_bytes; /* what the receiver expected, on SLOT_MISMATCH */
} local_slot;

typedef struct local_group {
    int n;
    int refs; /* comms of this group not yet freed */
    int timeout_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* rendezvous */
    int sync_count;
    unsigned long long sync_gen;
    unsigned char *arrived; /* (n) who is waiting in the current rendezvous */
    local_post *posts;      /* (n) */
    local_slot *slots;      /* (n, n): [src * n + dst] */
    /* failure: first one wins, every later call reports it */
    int failed;
    mc_status fail_status;
    char fail_msg[512];
} local_group;

typedef struct {
    local_group *g;
    float *scratch; /* all_reduce sums, (scratch_cap) floats */
    size_t scratch_cap;
} local_comm;

static const mc_comm_ops local_ops;

/* ---- group ------------------------------------------------------------- */

static void group_destroy(local_group *g)
{
    if (!g)
        return;
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g->arrived);
    free(g->posts);
    free(g->slots);
    free(g);
}

static local_group *group_new(int n, int timeout_ms)
{
    local_group *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->n = n;
    g->timeout_ms = timeout_ms;
    g->arrived = calloc((size_t)n, sizeof *g->arrived);
    g->posts = calloc((size_t)n, sizeof *g->posts);
    g->slots = calloc((size_t)n * (size_t)n, sizeof *g->slots);
    if (!g->arrived || !g->posts || !g->slots) {
        free(g->arrived);
        free(g->posts);
        free(g->slots);
        free(g);
        return NULL;
    }
    pthread_condattr_t ca;
    int ok = pthread_condattr_init(&ca) == 0;
    if (ok) {
        ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
             pthread_cond_init(&g->cv, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (ok && pthread_mutex_init(&g->mu, NULL) != 0) {
        pthread_cond_destroy(&g->cv);
        ok = 0;
    }
    if (!ok) {
        free(g->arrived);
        free(g->posts);
        free(g->slots);
        free(g);
        return NULL;
    }
    return g;
}

/* Marks the group failed (first message wins) and wakes every waiter.
 * Called with g->mu held. */
static void group_fail(local_group *g, mc_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void group_fail(local_group *g, mc_status st, const char *fmt, ...)
{
    if (!g->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->fail_msg, sizeof g->fail_msg, fmt, ap);
        va_end(ap);
        g->failed = 1;
        g->fail_status = st;
    }
    pthread_cond_broadcast(&g->cv);
}

/* The error a rank reports once its group has failed. */
static mc_status group_err(const local_group *g, int rank, mc_err *err)
{
    return mc_err_set(err, g->fail_status, "local rank %d/%d: %s", rank, g->n, g->fail_msg);
}

/* Deadline for a wait starting now; returns NULL when waits never time out. */
static const struct timespec *deadline_in(const local_group *g, struct timespec *ts)
{
    if (g->timeout_ms <= 0)
        return NULL;
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += g->timeout_ms / 1000;
    ts->tv_nsec += (long)(g->timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Waits on the group's condition variable; returns 1 when the deadline passed. */
static int group_wait(local_group *g, const struct timespec *deadline)
{
    if (!deadline) {
        pthread_cond_wait(&g->cv, &g->mu);
        return 0;
    }
    return pthread_cond_timedwait(&g->cv, &g->mu, deadline) == ETIMEDOUT;
}

static void complete_posts(local_group *g);

/* Rendezvous of all ranks, g->mu held. The last rank to arrive runs
 * complete_posts() (first rendezvous of a collective only) before it wakes
 * the others. The first rendezvous fails on a failed group or a timeout; the
 * second (`second` = 1) always completes, since every rank is past the first. */
static mc_status group_sync(local_group *g, int rank, local_op op, int second, mc_err *err)
{
    if (!second && g->failed)
        return group_err(g, rank, err);
    unsigned long long gen = g->sync_gen;
    g->arrived[rank] = 1;
    if (++g->sync_count == g->n) {
        if (!second)
            complete_posts(g);
        g->sync_count = 0;
        memset(g->arrived, 0, (size_t)g->n);
        g->sync_gen++;
        pthread_cond_broadcast(&g->cv);
        return MC_OK;
    }
    struct timespec ts;
    const struct timespec *deadline = second ? NULL : deadline_in(g, &ts);
    while (g->sync_gen == gen) {
        if (!second && g->failed)
            break;
        if (group_wait(g, deadline) && g->sync_gen == gen && !g->failed) {
            char missing[160] = "";
            size_t used = 0;
            for (int q = 0; q < g->n && used < sizeof missing - 16; q++)
                if (!g->arrived[q])
                    used += (size_t)snprintf(missing + used, sizeof missing - used, "%s%d",
                                             used ? ", " : "", q);
            group_fail(g, MC_ERR_IO,
                       "%s: rank %d waited %d ms for rank(s) %s, which did not arrive "
                       "(deadlocked, exited, or in a different call)",
                       op_names[op], rank, g->timeout_ms, missing);
        }
    }
    if (g->sync_gen != gen)
        return MC_OK;
    /* left by failure: withdraw from the rendezvous that will never complete */
    g->arrived[rank] = 0;
    g->sync_count--;
    return group_err(g, rank, err);
}

/* ---- split: build the new groups (last arriver, g->mu held) ------------ */

/* Frees the comms built so far by build_split(). */
static void unbuild_split(local_group *g)
{
    for (int i = 0; i < g->n; i++) {
        mc_comm_free(g->posts[i].out);
        g->posts[i].out = NULL;
    }
}

static void build_split(local_group *g)
{
    int n = g->n; /* 1..MC_COMM_LOCAL_MAX_RANKS */
    int *members = calloc((size_t)(unsigned)n, sizeof *members);
    unsigned char *done = calloc((size_t)(unsigned)n, 1);
    if (!members || !done)
        goto nomem;
    for (int i = 0; i < n; i++) {
        if (done[i] || g->posts[i].color == MC_COMM_COLOR_NONE)
            continue;
        /* members of color posts[i].color, sorted by (key, old rank) */
        int m = 0;
        for (int j = i; j < n; j++) {
            if (done[j] || g->posts[j].color != g->posts[i].color)
                continue;
            done[j] = 1;
            int k = m++;
            while (k > 0 && g->posts[members[k - 1]].key > g->posts[j].key) {
                members[k] = members[k - 1];
                k--;
            }
            members[k] = j;
        }
        local_group *child = group_new(m, g->timeout_ms);
        if (!child)
            goto nomem;
        for (int k = 0; k < m; k++) {
            local_comm *lc = calloc(1, sizeof *lc);
            mc_comm *c = lc ? mc_comm_new(&local_ops, k, m, lc) : NULL;
            if (!c) {
                free(lc);
                if (child->refs == 0)
                    group_destroy(child);
                goto nomem;
            }
            lc->g = child;
            child->refs++;
            g->posts[members[k]].out = c;
        }
    }
    free(members);
    free(done);
    return;

nomem:
    free(members);
    free(done);
    unbuild_split(g);
    group_fail(g, MC_ERR_NOMEM, "split: out of memory building the new communicators");
}

/* Checks that all ranks posted the same collective with matching
 * arguments, and builds split results. Last arriver, g->mu held. */
static void complete_posts(local_group *g)
{
    const local_post *p0 = &g->posts[0];
    for (int q = 1; q < g->n; q++)
        if (g->posts[q].op != p0->op) {
            group_fail(g, MC_ERR_ARG, "collective mismatch: rank 0 called %s, rank %d called %s",
                       op_names[p0->op], q, op_names[g->posts[q].op]);
            return;
        }
    for (int q = 0; q < g->n; q++)
        if (g->posts[q].nomem) {
            group_fail(g, MC_ERR_NOMEM, "%s: rank %d ran out of memory", op_names[p0->op], q);
            return;
        }
    switch (p0->op) {
    case OP_ALL_REDUCE:
        for (int q = 1; q < g->n; q++)
            if (g->posts[q].count != p0->count || g->posts[q].dtype != p0->dtype) {
                group_fail(g, MC_ERR_ARG,
                           "all_reduce_sum: rank 0 reduces %zu %s elements, rank %d reduces %zu "
                           "%s elements",
                           p0->count, mc_dtype_name(p0->dtype), q, g->posts[q].count,
                           mc_dtype_name(g->posts[q].dtype));
                return;
            }
        break;
    case OP_ALL_GATHER:
        for (int p = 0; p < g->n; p++)
            for (int q = 0; q < g->n; q++)
                if (g->posts[p].recv_counts[q] != g->posts[q].bytes) {
                    group_fail(g, MC_ERR_ARG,
                               "all_gather: rank %d contributes %zu bytes, rank %d expects %zu "
                               "bytes from it",
                               q, g->posts[q].bytes, p, g->posts[p].recv_counts[q]);
                    return;
                }
        break;
    case OP_BCAST:
        for (int q = 1; q < g->n; q++)
            if (g->posts[q].root != p0->root || g->posts[q].bytes != p0->bytes) {
                group_fail(g, MC_ERR_ARG,
                           "bcast: rank 0 passes root %d and %zu bytes, rank %d root %d and %zu "
                           "bytes",
                           p0->root, p0->bytes, q, g->posts[q].root, g->posts[q].bytes);
                return;
            }
        break;
    case OP_ALL_TO_ALL_V:
        for (int p = 0; p < g->n; p++)
            for (int q = 0; q < g->n; q++) {
                size_t sent = g->posts[p].send_counts[q];
                size_t expected = g->posts[q].recv_counts[p];
                if (sent != expected) {
                    group_fail(g, MC_ERR_ARG,
                               "all_to_all_v: rank %d sends %zu bytes to rank %d, which expects "
                               "%zu bytes from it",
                               p, sent, q, expected);
                    return;
                }
            }
        break;
    case OP_SPLIT:
        build_split(g);
        break;
    default:
        break;
    }
}

/* ---- collectives ------------------------------------------------------- */

/* First rendezvous: publishes *post for this rank. On MC_OK the caller
 * still holds no lock and must call collective_end() after its copies;
 * `*agreed` is 0 when the posts disagreed (the caller skips its copies). */
static mc_status collective_begin(mc_comm *c, const local_post *post, int *agreed, mc_err *err)
{
    local_group *g = ((local_comm *)c->impl)->g;
    pthread_mutex_lock(&g->mu);
    if (g->failed) {
        mc_status st = group_err(g, c->rank, err);
        pthread_mutex_unlock(&g->mu);
        return st;
    }
    g->posts[c->rank] = *post;
    g->posts[c->rank].out = NULL;
    mc_status st = group_sync(g, c->rank, post->op, 0, err);
    *agreed = !g->failed; /* the group was good on entry: a failure now is this call's */
    pthread_mutex_unlock(&g->mu);
    return st;
}

/* Second rendezvous; returns the collective's verdict. */
static mc_status collective_end(mc_comm *c, local_op op, mc_err *err)
{
    local_group *g = ((local_comm *)c->impl)->g;
    pthread_mutex_lock(&g->mu);
    group_sync(g, c->rank, op, 1, err);
    mc_status st = g->failed ? group_err(g, c->rank, err) : MC_OK;
    pthread_mutex_unlock(&g->mu);
    return st;
}

static mc_status local_all_reduce(mc_comm *c, void *buf, size_t count, mc_dtype dtype,
                                  mc_err *err)
{
    local_comm *lc = c->impl;
    local_post post = {.op = OP_ALL_REDUCE, .count = count, .dtype = dtype, .values = buf};
    if (count > lc->scratch_cap) {
        float *s = realloc(lc->scratch, count * sizeof *s);
        if (s) {
            lc->scratch = s;
            lc->scratch_cap = count;
        } else {
            post.nomem = 1; /* join anyway so every rank fails alike */
        }
    }
    int agreed = 0;
    mc_status st = collective_begin(c, &post, &agreed, err);
    if (st != MC_OK)
        return st;
    if (agreed && count > 0) {
        const local_post *posts = lc->g->posts;
        float *sum = lc->scratch; /* (count), in f32 for both dtypes */
        if (dtype == MC_DT_F32) {
            memcpy(sum, posts[0].values, count * sizeof *sum);
            for (int q = 1; q < c->size; q++) {
                const float *v = posts[q].values;
                for (size_t i = 0; i < count; i++)
                    sum[i] += v[i];
            }
        } else {
            const uint16_t *v0 = posts[0].values;
            for (size_t i = 0; i < count; i++)
                sum[i] = mc_bf16_to_f32(v0[i]);
            for (int q = 1; q < c->size; q++) {
                const uint16_t *v = posts[q].values;
                for (size_t i = 0; i < count; i++)
                    sum[i] += mc_bf16_to_f32(v[i]);
            }
        }
    }
    st = collective_end(c, OP_ALL_REDUCE, err);
    if (st != MC_OK || count == 0)
        return st;
    /* peers are done reading buf */
    if (dtype == MC_DT_F32) {
        memcpy(buf, lc->scratch, count * sizeof(float));
    } else {
        uint16_t *out = buf; /* (count) bf16 */
        for (size_t i = 0; i < count; i++)
            out[i] = mc_f32_to_bf16(lc->scratch[i]);
    }
    return MC_OK;
}

static mc_status local_all_gather_v(mc_comm *c, const void *send, size_t send_bytes, void *recv,
                                    const size_t *recv_counts, const size_t *recv_displs,
                                    mc_err *err)
{
    local_comm *lc = c->impl;
    local_post post = {
        .op = OP_ALL_GATHER, .send = send, .bytes = send_bytes, .recv_counts = recv_counts};
    int agreed = 0;
    mc_status st = collective_begin(c, &post, &agreed, err);
    if (st != MC_OK)
        return st;
    if (agreed) {
        const local_post *posts = lc->g->posts;
        for (int q = 0; q < c->size; q++) {
            char *dst = (char *)recv + recv_displs[q];
            /* in place, my own block is already there (and peers read it now) */
            if (recv_counts[q] > 0 && dst != posts[q].send) /* == posts[q].bytes, checked */
                memcpy(dst, posts[q].send, recv_counts[q]);
        }
    }
    return collective_end(c, OP_ALL_GATHER, err);
}

static mc_status local_bcast(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err)
{
    local_comm *lc = c->impl;
    local_post post = {.op = OP_BCAST, .send = buf, .bytes = bytes, .root = root};
    int agreed = 0;
    mc_status st = collective_begin(c, &post, &agreed, err);
    if (st != MC_OK)
        return st;
    if (agreed && c->rank != root && bytes > 0)
        memcpy(buf, lc->g->posts[root].send, bytes);
    return collective_end(c, OP_BCAST, err);
}

static mc_status local_all_to_all_v(mc_comm *c, const void *send, const size_t *send_counts,
                                    const size_t *send_displs, void *recv,
                                    const size_t *recv_counts, const size_t *recv_displs,
                                    mc_err *err)
{
    local_comm *lc = c->impl;
    local_post post = {.op = OP_ALL_TO_ALL_V,
                       .send = send,
                       .send_counts = send_counts,
                       .send_displs = send_displs,
                       .recv_counts = recv_counts};
    int agreed = 0;
    mc_status st = collective_begin(c, &post, &agreed, err);
    if (st != MC_OK)
        return st;
    if (agreed) {
        const local_post *posts = lc->g->posts;
        for (int q = 0; q < c->size; q++) {
            size_t n = recv_counts[q]; /* == posts[q].send_counts[rank], checked */
            if (n > 0)
                memcpy((char *)recv + recv_displs[q], posts[q].send + posts[q].send_displs[c->rank],
                       n);
        }
    }
    return collective_end(c, OP_ALL_TO_ALL_V, err);
}

static mc_status local_barrier(mc_comm *c, mc_err *err)
{
    local_post post = {.op = OP_BARRIER};
    int agreed = 0;
    mc_status st = collective_begin(c, &post, &agreed, err);
    if (st != MC_OK)
        return st;
    return collective_end(c, OP_BARRIER, err);
}

static mc_status local_split(mc_comm *c, int color, int key, mc_comm **out, mc_err *err)
{
    local_group *g = ((local_comm *)c->impl)->g;
    local_post post = {.op = OP_SPLIT, .color = color, .key = key};
    int agreed = 0;
    mc_status st = collective_begin(c, &post, &agreed, err);
    if (st != MC_OK)
        return st;
    pthread_mutex_lock(&g->mu);
    mc_comm *mine = g->posts[c->rank].out;
    g->posts[c->rank].out = NULL;
    pthread_mutex_unlock(&g->mu);
    st = collective_end(c, OP_SPLIT, err);
    if (st != MC_OK) {
        mc_comm_free(mine);
        return st;
    }
    *out = mine;
    return MC_OK;
}

/* ---- send / recv ------------------------------------------------------- */

static mc_status local_send(mc_comm *c, int peer, const void *buf, size_t bytes, mc_err *err)
{
    local_group *g = ((local_comm *)c->impl)->g;
    local_slot *s = &g->slots[(size_t)c->rank * (size_t)g->n + (size_t)peer];
    mc_status st = MC_OK;
    pthread_mutex_lock(&g->mu);
    if (g->failed || s->state != SLOT_EMPTY) {
        st = g->failed ? group_err(g, c->rank, err)
                       : mc_err_set(err, MC_ERR_INTERNAL, "local rank %d: send slot to %d busy",
                                    c->rank, peer);
        goto out;
    }
    s->buf = buf;
    s->bytes = bytes;
    s->state = SLOT_POSTED;
    pthread_cond_broadcast(&g->cv);
    struct timespec ts;
    const struct timespec *deadline = deadline_in(g, &ts);
    for (;;) {
        if (s->state == SLOT_DONE)
            break;
        if (s->state == SLOT_MISMATCH) {
            st = mc_err_set(err, MC_ERR_ARG,
                            "local rank %d/%d: sent %zu bytes to rank %d, which expected %zu",
                            c->rank, g->n, bytes, peer, s->recv_bytes);
            break;
        }
        if (s->state == SLOT_POSTED && g->failed) {
            st = group_err(g, c->rank, err);
            break;
        }
        /* while the receiver copies, wait without deadline: it is alive */
        int timed_out = group_wait(g, s->state == SLOT_POSTED ? deadline : NULL);
        if (timed_out && s->state == SLOT_POSTED && !g->failed)
            group_fail(g, MC_ERR_IO,
                       "send: rank %d waited %d ms for rank %d to receive %zu bytes "
                       "(deadlocked, exited, or in a different call)",
                       c->rank, g->timeout_ms, peer, bytes);
    }
    s->state = SLOT_EMPTY;
    s->buf = NULL;
out:
    pthread_mutex_unlock(&g->mu);
    return st;
}

static mc_status local_recv(mc_comm *c, int peer, void *buf, size_t bytes, mc_err *err)
{
    local_group *g = ((local_comm *)c->impl)->g;
    local_slot *s = &g->slots[(size_t)peer * (size_t)g->n + (size_t)c->rank];
    mc_status st = MC_OK;
    pthread_mutex_lock(&g->mu);
    struct timespec ts;
    const struct timespec *deadline = deadline_in(g, &ts);
    while (s->state != SLOT_POSTED) {
        if (g->failed) {
            st = group_err(g, c->rank, err);
            goto out;
        }
        if (group_wait(g, deadline) && s->state != SLOT_POSTED && !g->failed)
            group_fail(g, MC_ERR_IO,
                       "recv: rank %d waited %d ms for rank %d to send %zu bytes "
                       "(deadlocked, exited, or in a different call)",
                       c->rank, g->timeout_ms, peer, bytes);
    }
    if (s->bytes != bytes) {
        s->recv_bytes = bytes;
        s->state = SLOT_MISMATCH;
        group_fail(g, MC_ERR_ARG, "recv: rank %d expected %zu bytes from rank %d, which sent %zu",
                   c->rank, bytes, peer, s->bytes);
        st = group_err(g, c->rank, err);
        goto out;
    }
    s->state = SLOT_COPYING;
    pthread_mutex_unlock(&g->mu);
    if (bytes > 0)
        memcpy(buf, s->buf, bytes);
    pthread_mutex_lock(&g->mu);
    s->state = SLOT_DONE;
    pthread_cond_broadcast(&g->cv);
out:
    pthread_mutex_unlock(&g->mu);
    return st;
}

/* ---- lifetime ---------------------------------------------------------- */

static void local_free(mc_comm *c)
{
    local_comm *lc = c->impl;
    if (!lc)
        return;
    local_group *g = lc->g;
    pthread_mutex_lock(&g->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last)
        group_destroy(g);
    free(lc->scratch);
    free(lc);
    c->impl = NULL;
}

static const mc_comm_ops local_ops = {
    .name = "local",
    .all_reduce_sum = local_all_reduce,
    .all_gather_v = local_all_gather_v,
    .bcast = local_bcast,
    .all_to_all_v = local_all_to_all_v,
    .send = local_send,
    .recv = local_recv,
    .barrier = local_barrier,
    .split = local_split,
    .free = local_free,
};

mc_status mc_comm_local_create(int n, mc_comm **comms)
{
    if (!comms || n < 1 || n > MC_COMM_LOCAL_MAX_RANKS)
        return MC_ERR_ARG;
    for (int i = 0; i < n; i++)
        comms[i] = NULL;
    local_group *g = group_new(n, MC_COMM_LOCAL_TIMEOUT_MS);
    if (!g)
        return MC_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        local_comm *lc = calloc(1, sizeof *lc);
        comms[i] = lc ? mc_comm_new(&local_ops, i, n, lc) : NULL;
        if (!comms[i]) {
            free(lc);
            break;
        }
        lc->g = g;
        g->refs++;
    }
    if (!comms[n - 1]) {
        if (g->refs == 0)
            group_destroy(g);
        for (int i = 0; i < n; i++) {
            mc_comm_free(comms[i]); /* the last one destroys the group */
            comms[i] = NULL;
        }
        return MC_ERR_NOMEM;
    }
    return MC_OK;
}

mc_status mc_comm_local_set_timeout(mc_comm *c, int ms)
{
    if (!c || c->ops != &local_ops || ms < 0)
        return MC_ERR_ARG;
    local_group *g = ((local_comm *)c->impl)->g;
    pthread_mutex_lock(&g->mu);
    g->timeout_ms = ms;
    pthread_mutex_unlock(&g->mu);
    return MC_OK;
}
