/* outfile.h - writing output files safely.
 *
 * Every file the engine writes goes through these: the bytes go to a
 * temporary file (PATH.partial, created exclusively, never through a link)
 * in the target's own folder, which is flushed, fsync'ed, closed and then
 * renamed over PATH, so PATH is either the old file or the complete new one.
 * A target that exists and is not a regular file (a device such as
 * /dev/full, a FIFO, a directory) is refused, never replaced, and every
 * write, flush, sync, close and rename is checked (a full disk is an error).
 *
 * The overlap checks refuse an output that is one of the inputs, or lies in
 * the model's folder, before anything is computed. Paths are compared after
 * resolving links (realpath); an output that does not exist yet is resolved
 * through its parent folder.
 */
#ifndef MC_OUTFILE_H
#define MC_OUTFILE_H

#include "status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct mc_outfile mc_outfile;

/* Checks that `path` can be written as `what` ("output", "config", ...):
 * it does not exist or is a regular file, and its folder exists. */
mc_status mc_out_check_target(const char *path, const char *what, mc_err *err);

/* Starts writing `path` (mc_out_check_target first). */
mc_status mc_outfile_open(const char *path, const char *what, mc_outfile **out, mc_err *err);
/* Appends len bytes; any short write is an error naming the file. */
mc_status mc_outfile_write(mc_outfile *f, const void *data, size_t len, mc_err *err);
/* Flushes, syncs, closes and renames the temporary file to the target;
 * frees f whatever the outcome (on failure the temporary file is removed). */
mc_status mc_outfile_commit(mc_outfile *f, mc_err *err);
/* Closes and removes the temporary file; frees f. NULL is a no-op. */
void mc_outfile_abort(mc_outfile *f);
/* The target path, for messages. */
const char *mc_outfile_path(const mc_outfile *f);

/* A whole file in one call (open + write + commit). */
mc_status mc_write_file(const char *path, const char *what, const void *data, size_t len,
                        mc_err *err);

/* Refuses an output file `out` that is the input `in` (a file: same path or
 * same inode) or lies inside it (a folder), e.g. "out.st: output is inside
 * the model folder m/; write it elsewhere". `in_role` names the input.
 * An input that does not exist is not an overlap (reading it fails later). */
mc_status mc_out_check_file(const char *out, const char *in, const char *in_role, mc_err *err);

/* For an output folder: refuses `out_dir` if it exists and is not a
 * directory, if it is the folder `src` (or, for a file, the folder holding
 * it), and when `refuse_inside` if it lies inside that folder. */
mc_status mc_out_check_dir(const char *out_dir, const char *src, const char *src_role,
                           bool refuse_inside, mc_err *err);

/* Flushes stdout and reports any earlier or present write error on it
 * (a full disk, /dev/full, a closed pipe): 0 if all is well, else -1 and
 * errno-style text in *why. */
int mc_stdout_flush(const char **why);

#endif
