/* test_kernels_pool.c - the kernels' thread pool (core/pool.c): every task
 * of every loop runs exactly once, loops follow each other with no gap for
 * late workers to fall into, several threads may call mc_pool_run at once
 * (ranks as threads), and more threads than cores still finish. */
#include "check.h"
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAXT = 97 };

typedef struct {
    atomic_int hits[MAXT];
    int loop;
    atomic_int bad;
} job;

static void task(void *ctx, int t, int thread)
{
    job *j = ctx;
    if (t < 0 || t >= MAXT || thread < 0)
        atomic_fetch_add(&j->bad, 1);
    else
        atomic_fetch_add(&j->hits[t], 1);
    if ((t * 7 + j->loop) % 13 == 0) /* uneven tasks */
        for (volatile int i = 0; i < 2000; i++)
            ;
}

static int run_loops(mc_pool *p, int loops, unsigned seed)
{
    int errors = 0;
    job *j = calloc(1, sizeof *j);
    for (int l = 0; l < loops; l++) {
        seed = seed * 1103515245u + 12345u;
        int n = 1 + (int)((seed >> 16) % MAXT);
        for (int i = 0; i < MAXT; i++)
            atomic_store(&j->hits[i], 0);
        j->loop = l;
        mc_pool_run(p, n, task, j);
        for (int i = 0; i < MAXT; i++) {
            int want = i < n ? 1 : 0, got = atomic_load(&j->hits[i]);
            if (got != want && errors++ < 5)
                fprintf(stderr, "  loop %d (%d tasks): task %d ran %d times\n", l, n, i, got);
        }
    }
    errors += atomic_load(&j->bad);
    free(j);
    return errors;
}

typedef struct {
    mc_pool *p;
    unsigned seed;
    int errors;
} caller_arg;

static void *caller(void *a)
{
    caller_arg *c = a;
    c->errors = run_loops(c->p, 3000, c->seed);
    return NULL;
}

int main(void)
{
    for (int nt = 1; nt <= 5; nt++) {
        mc_pool *p = mc_pool_create(nt);
        CHECK(p != NULL);
        CHECK(mc_pool_threads(p) == nt);
        int e = run_loops(p, 20000, 7u + (unsigned)nt);
        printf("pool of %d: 20000 loops, %d errors\n", nt, e);
        CHECK(e == 0);
        /* two callers at once share the pool or run inline */
        pthread_t th[2];
        caller_arg ca[2] = {{p, 11, 0}, {p, 13, 0}};
        for (int i = 0; i < 2; i++)
            pthread_create(&th[i], NULL, caller, &ca[i]);
        for (int i = 0; i < 2; i++)
            pthread_join(th[i], NULL);
        printf("pool of %d: two concurrent callers x 3000 loops, %d + %d errors\n", nt, ca[0].errors,
               ca[1].errors);
        CHECK(ca[0].errors == 0 && ca[1].errors == 0);
        mc_pool_free(p);
    }
    CHECK(mc_cpu_count() >= 1);
    mc_pool_run(NULL, 3, task, &(job){0}); /* no pool: inline */
    return check_report("test_kernels_pool");
}
