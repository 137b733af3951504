/* fileio.h - opening input files safely.
 *
 * Every file the engine reads (config.json, params.json, index, safetensors,
 * cluster YAML, manifests) is opened through these: they refuse anything that
 * is not a regular file (a FIFO, a device, a directory, a socket) with a clear
 * message instead of blocking forever on it, and they bound what they read.
 * The descriptor is opened with O_NONBLOCK so that open() itself returns at
 * once on a FIFO; the flag is cleared again once the file is known to be
 * regular.
 */
#ifndef MC_FILEIO_H
#define MC_FILEIO_H

#include "status.h"

#include <stdint.h>
#include <stdio.h>

/* Opens `path` read-only (O_CLOEXEC) and checks it is a regular file.
 * `what` names the file's role in messages ("config", "cluster config", ...),
 * e.g. "model/config.json: config is not a regular file (a FIFO)". On
 * success *fd_out is the descriptor (the caller closes it) and *size_out, if
 * non-NULL, its size in bytes. */
mc_status mc_open_regular(const char *path, const char *what, int *fd_out, uint64_t *size_out,
                          mc_err *err);

/* The same, as a stdio stream opened "rb". */
mc_status mc_fopen_regular(const char *path, const char *what, FILE **out, uint64_t *size_out,
                           mc_err *err);

/* Reads a whole regular file of at most `max` bytes into a NUL-terminated
 * malloc'd buffer (*text, freed by the caller; *len excludes the NUL).
 * Larger files are refused with MC_ERR_FORMAT naming the limit. */
mc_status mc_read_regular(const char *path, const char *what, uint64_t max, char **text,
                          size_t *len, mc_err *err);

/* A short name for a file type ("a FIFO", "a directory", ...), for messages. */
const char *mc_file_kind(unsigned mode);

#endif
