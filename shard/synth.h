/* synth.h - random-weight checkpoints of a real model's shape, in the
 * family's on-disk format (tensor names, fused or per-expert experts,
 * sharded files with an index, FP8 block scales), so capacity and scaling
 * tests can run on a real shape without downloading it. */
#ifndef MC_SYNTH_H
#define MC_SYNTH_H

#include "status.h"

#include <stdint.h>

typedef struct {
    const char *config_path; /* config.json or params.json */
    const char *out_dir;
    int layers;              /* 0 = all; else keep full width and cut depth */
    int fp8;                 /* FP8 e4m3 weights with 128x128 block scales */
    uint64_t seed;
    uint64_t max_file_bytes; /* split into files of at most this many bytes */
    int progress;            /* 0 none, 1 terminal bar, 2 plain periodic lines */
} mc_synth_opts;

/* Writes the checkpoint; prints progress to stderr when asked. */
mc_status mc_synth(const mc_synth_opts *o, mc_err *err);

#endif
