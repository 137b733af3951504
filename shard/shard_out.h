/* shard_out.h - cutting a checkpoint into per-rank folders, and checking them.
 *
 * OUT/plan.json            the plan (+ fingerprint): identifies what OUT holds
 * OUT/rank-NNNNN/          one folder per rank, itself a loadable checkpoint:
 *     config.json | params.json   the model config (quantization_config adjusted)
 *     model.safetensors    only this rank's tensors, original names, TP slices pre-cut
 *     tensors.json         written when the rank is complete: each tensor's origin
 *                          (source tensor, slice) and xxh64 checksum
 * OUT/manifest.json        written last: plan fingerprint, source, all ranks' tensors
 *
 * The source is streamed once, stage by stage (a source tensor belongs to
 * one pipeline stage); within a stage every rank's file is appended in
 * source order. A rerun with the same plan skips complete ranks and redoes
 * the rest; a different plan in OUT is refused.
 */
#ifndef MC_SHARD_OUT_H
#define MC_SHARD_OUT_H

#include "plan.h"
#include "status.h"

typedef enum { MC_SHARD_KEEP = 0, MC_SHARD_BF16, MC_SHARD_FP8, MC_SHARD_Q8_0, MC_SHARD_Q4_K } mc_shard_fmt;

typedef struct {
    const char *model_dir;
    const mc_cluster *cluster;
    const char *out_dir;
    mc_shard_fmt fmt;
    int progress; /* -1 auto, 0 none, 1 bar, 2 lines */
} mc_shard_opts;

mc_status mc_shard_write(const mc_shard_opts *o, mc_err *err);

/* Re-reads every rank's file and compares each tensor's checksum with the
 * manifest; *bad counts mismatching or missing tensors (messages on stderr). */
mc_status mc_shard_verify(const char *dir, int progress, long *bad, mc_err *err);

/* The folder of `rank` in a shard set made for `world` ranks; refuses a
 * set made for another world size or an incomplete set. */
mc_status mc_shard_rank_dir(const char *dir, int rank, int world, char *out, size_t len,
                            mc_err *err);

#endif
