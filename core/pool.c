/* pool.c - pthread worker pool (see pool.h). */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* Spin iterations (pause instructions, ~40 ns each) before a worker sleeps. */
#define POOL_SPIN 20000

struct mc_pool {
    int n_threads;
    pthread_t *tids;
    pthread_mutex_t run_mu; /* held by the thread running a loop */
    pthread_mutex_t mu;     /* guards sleeping / waking */
    pthread_cond_t cv;
    /* the current loop: fn and ctx stay fixed until all its tasks are done */
    mc_pool_fn fn;
    void *ctx;
    /* generation (20 bits) | task count (22 bits) | next task (22 bits), one
     * word: a task is claimed by a CAS on all three, so a worker waking late
     * for an earlier loop can never claim (or miscount) a task of another */
    atomic_ullong state;
    atomic_int done; /* tasks of the current loop finished */
    atomic_int stop;
    int sleepers;
};

typedef struct {
    mc_pool *p;
    int id;
} worker_arg;

#define ST_BITS 22
#define ST_MASK ((1ull << ST_BITS) - 1)
#define ST_GEN(s) ((uint32_t)((s) >> (2 * ST_BITS)))
#define ST_COUNT(s) ((uint32_t)(((s) >> ST_BITS) & ST_MASK))
#define ST_NEXT(s) ((uint32_t)((s) & ST_MASK))
#define MC_POOL_MAX_TASKS ((int)ST_MASK)

static void run_tasks(mc_pool *p, uint32_t gen, int thread)
{
    for (;;) {
        unsigned long long s = atomic_load_explicit(&p->state, memory_order_acquire);
        if (ST_GEN(s) != gen || ST_NEXT(s) >= ST_COUNT(s))
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        p->fn(p->ctx, (int)ST_NEXT(s), thread);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static uint32_t gen_of(mc_pool *p)
{
    return ST_GEN(atomic_load_explicit(&p->state, memory_order_acquire));
}

static void *worker_main(void *a)
{
    worker_arg wa = *(worker_arg *)a;
    free(a);
    mc_pool *p = wa.p;
    uint32_t seen = 0; /* the generation at creation: a loop may start before this thread runs */
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = gen_of(p)) == seen && !atomic_load(&p->stop)) {
            if (++spins < POOL_SPIN) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (gen_of(p) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = g;
        run_tasks(p, g, wa.id);
    }
}

int mc_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

mc_pool *mc_pool_create(int n_threads)
{
    if (n_threads < 1)
        n_threads = 1;
    mc_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->state, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->stop, 0);
    if (n_threads > 1) {
        p->tids = calloc((size_t)n_threads - 1, sizeof *p->tids);
        if (!p->tids)
            goto fail;
        for (int i = 1; i < n_threads; i++) {
            worker_arg *a = malloc(sizeof *a);
            if (!a || (a->p = p, a->id = i, pthread_create(&p->tids[i - 1], NULL, worker_main, a))) {
                free(a);
                p->n_threads = i; /* join the ones already started */
                goto fail;
            }
        }
    }
    return p;
fail:
    mc_pool_free(p);
    return NULL;
}

void mc_pool_free(mc_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; p->tids && i < p->n_threads; i++)
        pthread_join(p->tids[i - 1], NULL);
    free(p->tids);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    free(p);
}

int mc_pool_threads(const mc_pool *p) { return p ? p->n_threads : 1; }

void mc_pool_run(mc_pool *p, int n_tasks, mc_pool_fn fn, void *ctx)
{
    if (n_tasks <= 0)
        return;
    if (!p || p->n_threads == 1 || n_tasks == 1 || n_tasks > MC_POOL_MAX_TASKS ||
        pthread_mutex_trylock(&p->run_mu) != 0) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint32_t gen = (gen_of(p) + 1) & ((1u << (64 - 2 * ST_BITS)) - 1);
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->state,
                          ((unsigned long long)gen << (2 * ST_BITS)) |
                              ((unsigned long long)n_tasks << ST_BITS),
                          memory_order_release);
    if (p->sleepers)
        pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, gen, 0);
    /* wait only for tasks that were claimed: a worker that never woke owes nothing */
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks; spins++) {
        if (spins < POOL_SPIN)
            cpu_relax();
        else
            sched_yield(); /* a worker holding a task was descheduled */
    }
    pthread_mutex_unlock(&p->run_mu);
}
