/* shard_internal.h - shared by shard_out.c (writing a shard set) and
 * shard_verify.c (checking one). Not part of the library's interface. */
#ifndef MC_SHARD_INTERNAL_H
#define MC_SHARD_INTERNAL_H

#include "model_tensors.h"
#include "plan.h"
#include "safetensors.h"
#include "status.h"

#include <jansson.h>
#include <stdint.h>

#define MC_SHARD_MAX_MANIFEST (1024ull << 20) /* manifest.json: every rank's tensor list */
#define MC_SHARD_MAX_JSON (256ull << 20)      /* plan.json, tensors.json */
#define MC_SHARD_MAX_CONFIG (16ull << 20)     /* config.json / params.json */
#define MC_SHARD_MAX_WORLD (1 << 20)
#define MC_SHARD_MAX_TENSORS (1 << 24) /* per rank */

/* Reads a JSON file through mc_read_regular (regular files of at most max
 * bytes); `what` names its role in messages. Duplicate keys are refused. */
mc_status mc_shard_json_load(const char *path, const char *what, uint64_t max, json_t **out,
                             mc_err *err);

/* Which part of spec s rank rp holds: 0 = none, 1 = [begin, end) along
 * *dim (*dim = -1: all of it). The plan's split rules. */
int mc_shard_slice(const mc_plan *p, const mc_rank_plan *rp, const mc_tensor_spec *s, int *dim,
                   int64_t *b, int64_t *e);

/* The fingerprint of a plan object (its "fingerprint" key left out): xxh64
 * of its compact, key-sorted text, as 16 hex digits. */
void mc_shard_fingerprint(const json_t *plan, char out[17]);

/* Checks rank `rank`'s folder DIR/rank-NNNNN/model.safetensors against
 * `entry` (its manifest or tensors.json entry, named by listed_in in
 * messages): every listed tensor present with the listed dtype, shape,
 * byte size and xxh64, and no other tensor.
 * print: one line per problem on stderr, counted in *bad; else the first
 * problem goes to err and the check stops. progress: mc_progress mode. */
mc_status mc_shard_check_entry(const char *dir, int rank, const json_t *entry,
                               const char *listed_in, int print, int progress, long *bad,
                               mc_err *err);

/* The source's identity for the plan's fingerprint: each source file's
 * name (relative to model_dir), size, mtime and ctime (config, index,
 * tensor files), the config's xxh64 and that of the tensor table. */
mc_status mc_shard_source_identity(const char *model_dir, const st_checkpoint *ck, json_t **out,
                                   mc_err *err);

/* One phrase for what differs between an old plan.json and this run's
 * ("another source (model-00001.safetensors was modified since ...)"). */
void mc_shard_describe_change(const json_t *old, const json_t *now, char *buf, size_t len);

/* Whether rank `rank`'s folder in out_dir is complete work of this run:
 * its tensors.json carries `fingerprint` and lists exactly `want` (names,
 * dtypes, shapes, in order), and its model.safetensors matches it,
 * checksums included. If not, *why says why. */
int mc_shard_rank_reusable(const char *out_dir, int rank, const char *fingerprint,
                           const st_write_tensor *want, size_t n, char *why, size_t len);

#endif
