#include "progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void mc_progress_start(mc_progress *p, const char *label, uint64_t total, int mode)
{
    p->label = label;
    p->total = total;
    p->done = 0;
    p->t0 = p->last = now_s();
    p->mode = mode >= 0 ? mode : (isatty(2) ? 1 : 2);
}

static void draw(mc_progress *p, double t, int final)
{
    double el = t - p->t0, rate = el > 0 ? (double)p->done / el : 0;
    double frac = p->total ? (double)p->done / (double)p->total : 1;
    double eta = rate > 0 ? (double)(p->total - p->done) / rate : 0;
    if (p->mode == 1) {
        char bar[31];
        int fill = (int)(frac * 30);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%s [%s] %5.1f%% %8.2f / %.2f GiB  %7.1f MB/s  ETA %4.0f s%s", p->label,
                bar, frac * 100, p->done / 1073741824.0, p->total / 1073741824.0, rate / 1e6, eta,
                final ? "\n" : "");
    } else {
        fprintf(stderr, "%s: %.1f%% %.2f / %.2f GiB, %.1f MB/s, ETA %.0f s%s\n", p->label,
                frac * 100, p->done / 1073741824.0, p->total / 1073741824.0, rate / 1e6, eta,
                final ? " (done)" : "");
    }
    fflush(stderr);
}

void mc_progress_add(mc_progress *p, uint64_t bytes)
{
    p->done += bytes;
    if (!p->mode)
        return;
    double t = now_s();
    if (t - p->last >= (p->mode == 1 ? 0.2 : 5.0)) {
        p->last = t;
        draw(p, t, 0);
    }
}

void mc_progress_finish(mc_progress *p)
{
    if (p->mode)
        draw(p, now_s(), 1);
}
