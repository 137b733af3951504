/* progress.h - progress of long byte-moving work on stderr: a redrawn bar
 * with bytes, rate and ETA on a terminal, a plain line every few seconds
 * otherwise. */
#ifndef MC_PROGRESS_H
#define MC_PROGRESS_H

#include <stdint.h>

typedef struct {
    const char *label;
    uint64_t total, done;
    double t0, last;
    int mode; /* 0 silent, 1 terminal bar, 2 periodic lines */
} mc_progress;

/* mode -1 chooses: bar if stderr is a terminal, else periodic lines. */
void mc_progress_start(mc_progress *p, const char *label, uint64_t total, int mode);
void mc_progress_add(mc_progress *p, uint64_t bytes);
void mc_progress_finish(mc_progress *p);

#endif
