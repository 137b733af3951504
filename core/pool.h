/* pool.h - a fixed set of worker threads that run one parallel loop at a time.
 *
 * mc_pool_run(p, n_tasks, fn, ctx) calls fn(ctx, task, thread) once for every
 * task in [0, n_tasks), spread over the pool's threads and the calling thread
 * (thread is 0 for the caller, 1..n_threads-1 for workers), and returns when
 * all have finished. Tasks are handed out in order from a shared counter, so
 * uneven tasks balance themselves.
 *
 * One loop runs at a time: a call made while another thread is running a loop
 * on the same pool (ranks as threads of one process) runs its tasks inline on
 * the caller instead of waiting. Workers spin briefly after a loop (the next
 * matrix product is usually microseconds away), then sleep on a condition
 * variable. The pool is owned by its creator; mc_pool_free joins the threads.
 */
#ifndef MC_POOL_H
#define MC_POOL_H

typedef struct mc_pool mc_pool;
typedef void (*mc_pool_fn)(void *ctx, int task, int thread);

/* n_threads >= 1 counts the caller (1: no worker threads). NULL on failure. */
mc_pool *mc_pool_create(int n_threads);
void mc_pool_free(mc_pool *p);
int mc_pool_threads(const mc_pool *p);
void mc_pool_run(mc_pool *p, int n_tasks, mc_pool_fn fn, void *ctx);

/* Number of online CPUs (at least 1). */
int mc_cpu_count(void);

#endif
