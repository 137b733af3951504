/* comm_ranks.h - test harness for the data-plane tests: runs one function
 * on n ranks of a fresh local communicator, one thread each.
 *
 * CHECK is not thread-safe, so rank threads count their own failures
 * (rank_fail) and run_ranks CHECKs the counts after joining. */
#ifndef MC_TEST_COMM_RANKS_H
#define MC_TEST_COMM_RANKS_H

#include "check.h"
#include "comm.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

enum { MAX_RANKS = 8, MAX_REPORTS = 5 };

typedef struct rank_ctx rank_ctx;
typedef void (*rank_fn)(rank_ctx *t);

struct rank_ctx {
    mc_comm *comm;
    int rank, size;
    int failures;
    const char *test;
    void *shared; /* per-test state shared by the ranks */
};

/* Records a failure of this rank; prints the first few. */
static inline void rank_fail(rank_ctx *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void rank_fail(rank_ctx *t, const char *fmt, ...)
{
    if (t->failures++ >= MAX_REPORTS)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s n=%d rank %d: %s\n", t->test, t->size, t->rank, line);
}

/* Fails the rank unless st == MC_OK. Returns 1 when it was. */
static inline int rank_ok(rank_ctx *t, mc_status st, const mc_err *err, const char *what)
{
    if (st == MC_OK)
        return 1;
    rank_fail(t, "%s: %s: %s", what, mc_status_str(st), err->msg);
    return 0;
}

typedef struct {
    rank_fn fn;
    rank_ctx *ctx;
} thread_arg;

static inline void *rank_main(void *arg)
{
    thread_arg *a = arg;
    a->fn(a->ctx);
    return NULL;
}

/* Runs fn on n ranks of a fresh local communicator, one thread each, and
 * CHECKs that no rank failed. timeout_ms > 0 shortens the peer timeout. */
static inline void run_ranks(const char *test, int n, rank_fn fn, void *shared, int timeout_ms)
{
    mc_comm *comms[MAX_RANKS];
    rank_ctx ctx[MAX_RANKS];
    thread_arg args[MAX_RANKS];
    pthread_t th[MAX_RANKS];
    mc_status st = mc_comm_local_create(n, comms);
    CHECK(st == MC_OK);
    if (st != MC_OK)
        return;
    if (timeout_ms > 0)
        CHECK(mc_comm_local_set_timeout(comms[0], timeout_ms) == MC_OK);
    for (int r = 0; r < n; r++) {
        ctx[r] = (rank_ctx){.comm = comms[r], .rank = r, .size = n, .test = test,
                            .shared = shared};
        args[r] = (thread_arg){.fn = fn, .ctx = &ctx[r]};
        CHECK(mc_comm_rank(comms[r]) == r);
        CHECK(mc_comm_size(comms[r]) == n);
    }
    for (int r = 0; r < n; r++)
        CHECK(pthread_create(&th[r], NULL, rank_main, &args[r]) == 0);
    int failures = 0;
    for (int r = 0; r < n; r++) {
        pthread_join(th[r], NULL);
        failures += ctx[r].failures;
    }
    for (int r = 0; r < n; r++)
        mc_comm_free(comms[r]);
    if (failures)
        fprintf(stderr, "%s n=%d: %d failures\n", test, n, failures);
    CHECK(failures == 0);
}

#endif
