/* probe.c - machine probes for `moecluster bench`: a read-only memory
 * stream much larger than the last-level cache, and an FMA-only loop,
 * run in the same process as the measurement they are compared with. */
#include "kern.h"
#include "pool.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    const uint64_t *buf;
    size_t words;
    int parts;
    const mc_kops *ops;
    atomic_ullong sink;
} rd_job;

/* Sums a slice with the widest loads of the current path, four independent
 * accumulators: memory, not instructions, is the limit. */
static void rd_task(void *ctx, int task, int thread)
{
    rd_job *j = ctx;
    size_t per = j->words / (size_t)j->parts / 32 * 32; /* 256-byte multiples */
    atomic_fetch_add(&j->sink, j->ops->stream_sum(j->buf + (size_t)task * per, per * 8));
}

double mc_probe_read_gbps(size_t bytes, int threads, double seconds)
{
    size_t words = bytes / 8 / (1u << 18) * (1u << 18); /* whole 2 MiB pages */
    if (words == 0)
        words = 1u << 18;
    uint64_t *buf = aligned_alloc(2u << 20, words * 8);
    if (!buf)
        return -1.0;
#ifdef MADV_HUGEPAGE
    (void)madvise(buf, words * 8, MADV_HUGEPAGE); /* as mc_mat_quantize's weights */
#endif
    for (size_t i = 0; i < words; i++) /* touch every page: no zero-page mapping */
        buf[i] = i;
    int saved = mc_kernels_threads();
    mc_kernels_set_threads(threads);
    /* many slices, handed out dynamically, so every thread streams even if one wakes late */
    rd_job j = {.buf = buf, .words = words, .parts = 16 * (threads < 1 ? 1 : threads),
                .ops = mc_kops_current()};
    atomic_init(&j.sink, 0);
    double best = 0, t_end = now_s() + seconds;
    int passes = 0;
    do {
        double t0 = now_s();
        mc_pool_run(mc_kernels_pool(), j.parts, rd_task, &j);
        double dt = now_s() - t0;
        double gbps = (double)(words / (size_t)j.parts / 32 * 32 * (size_t)j.parts) * 8 / dt / 1e9;
        if (gbps > best)
            best = gbps;
        passes++;
    } while (now_s() < t_end || passes < 3);
    mc_kernels_set_threads(saved);
    free(buf);
    return best;
}

typedef struct {
    double (*burn)(long iters);
    long iters;
    double flops[8 * 1024];
} fma_job;

static void fma_task(void *ctx, int task, int thread)
{
    (void)thread;
    fma_job *j = ctx;
    j->flops[task] = j->burn(j->iters);
}

/* Peak of a burn function (operations per call of `iters` rounds) over
 * `threads` threads, 8 calls a thread per pass, best pass over `seconds`;
 * -1 when it does no operations (this CPU lacks them). */
static double burn_peak(double (*burn)(long), int threads, double seconds)
{
    if (threads < 1)
        threads = 1;
    if (threads > 1024)
        threads = 1024;
    int saved = mc_kernels_threads();
    mc_kernels_set_threads(threads);
    fma_job *j = calloc(1, sizeof *j);
    if (!j) {
        mc_kernels_set_threads(saved);
        return -1.0;
    }
    j->burn = burn;
    j->iters = 1 << 16;
    double best = 0, t_end = now_s() + seconds;
    int passes = 0;
    do {
        double t0 = now_s();
        mc_pool_run(mc_kernels_pool(), 8 * threads, fma_task, j);
        double dt = now_s() - t0;
        double f = 0;
        for (int i = 0; i < 8 * threads; i++)
            f += j->flops[i];
        if (f <= 0) {
            best = -1.0;
            break;
        }
        if (dt < 0.05)
            j->iters *= 2; /* grow until one pass is long enough to time */
        else if (f / dt / 1e9 > best)
            best = f / dt / 1e9;
        passes++;
    } while (now_s() < t_end || best == 0);
    free(j);
    mc_kernels_set_threads(saved);
    return best;
}

double mc_probe_fma_gflops(int threads, double seconds)
{
    return burn_peak(mc_kops_current()->fma_burn, threads, seconds);
}

double mc_probe_int8_gops(int threads, double seconds)
{
    const mc_kops *ops = mc_kops_current();
    return ops->int8_burn ? burn_peak(ops->int8_burn, threads, seconds) : -1.0;
}

double mc_probe_bf16_gflops(int threads, double seconds)
{
    const mc_kops *ops = mc_kops_current();
    return ops->bf16_burn ? burn_peak(ops->bf16_burn, threads, seconds) : -1.0;
}
