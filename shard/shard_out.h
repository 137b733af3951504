/* shard_out.h - cutting a checkpoint into per-rank folders, and checking them.
 *
 * OUT/plan.json            the plan, the output format, the source's identity (each
 *                          source file's name, size, mtime and ctime, xxh64 of the
 *                          config and of the tensor table) and their fingerprint
 * OUT/rank-NNNNN/          one folder per rank, itself a loadable checkpoint:
 *     config.json | params.json   the model config (quantization_config adjusted)
 *     model.safetensors    only this rank's tensors, original names, TP slices pre-cut
 *     tensors.json         written when the rank is complete: the fingerprint, each
 *                          tensor's origin (source tensor, slice) and xxh64 checksum
 * OUT/manifest.json        written last: plan fingerprint, source, all ranks' tensors
 *
 * The source is streamed once, stage by stage (a source tensor belongs to
 * one pipeline stage); within a stage every rank's file is appended in
 * source order. A rerun with the same fingerprint (same plan, format and
 * unchanged source) skips the ranks whose tensors.json carries that
 * fingerprint and whose file still matches it (tensors and checksums), and
 * redoes the rest; another fingerprint in OUT is refused unless `restart`.
 * manifest.json is removed before anything is written, so a set being
 * rewritten is never taken for a finished one.
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
    int restart;  /* redo every rank even when OUT holds another plan or source */
} mc_shard_opts;

mc_status mc_shard_write(const mc_shard_opts *o, mc_err *err);

/* Checks a whole set (`moecluster verify`): manifest.json against plan.json
 * (fingerprints, world, one entry per rank of the plan and no other, every
 * tensor the plan assigns to a rank listed with the shape and slice the
 * plan gives it, and nothing else) and against the files (each listed
 * tensor in its rank's model.safetensors with the listed dtype, shape, byte
 * size and xxh64; no unlisted tensor). *bad counts the problems, one line
 * each on stderr naming the rank, file and tensor. Returns an error only
 * when the manifest or plan cannot be read at all. */
mc_status mc_shard_verify(const char *dir, int progress, long *bad, mc_err *err);

/* The load-time check of one rank (score / generate --shards; each rank
 * checks only its own folder): its model.safetensors holds exactly the
 * tensors the manifest lists for `rank`, with their dtypes, shapes and
 * xxh64 checksums (reads the whole file once). The first problem is the
 * error, naming the rank folder, file, tensor and both checksums.
 * progress: mc_progress mode; a line only every few seconds. */
mc_status mc_shard_verify_rank(const char *dir, int rank, int progress, mc_err *err);

/* The folder of `rank` in a shard set made for `world` ranks; refuses a
 * set made for another world size or an incomplete set. */
mc_status mc_shard_rank_dir(const char *dir, int rank, int world, char *out, size_t len,
                            mc_err *err);

#endif
