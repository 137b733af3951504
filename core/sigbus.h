/* sigbus.h - a clear message instead of a silent SIGBUS when a mapped file
 * shrinks.
 *
 * Weights are read through read-only memory maps. When another process
 * truncates a mapped file, touching a page past its new end raises SIGBUS,
 * which would kill the process without a word. Files registered here are
 * covered by a SIGBUS handler (installed on the first registration) that
 * prints one line naming the file,
 *   "moecluster: FILE: the file shrank while mapped (truncated or replaced by
 *    another process?); stopping"
 * and ends the process with status 1 (with _exit: the process state cannot
 * be trusted any more). A SIGBUS at an address outside every registered map
 * is handed to the disposition that was in place before (by default, the
 * process dies of SIGBUS as it would have without this handler).
 *
 * The registry is a fixed table (MC_SIGBUS_SLOTS); when it is full a map is
 * simply not covered. Registration and removal may be called from any thread.
 */
#ifndef MC_SIGBUS_H
#define MC_SIGBUS_H

#include <stddef.h>

#define MC_SIGBUS_SLOTS 4096

/* Covers the map [base, base + len) of the file `path`; `path` must stay
 * valid until mc_sigbus_unregister(base). Returns 0, or -1 when the table is
 * full or the handler cannot be installed (the map is then not covered). */
int mc_sigbus_register(const void *base, size_t len, const char *path);

/* Stops covering the map starting at base (a no-op for unknown maps). Call
 * before munmap. */
void mc_sigbus_unregister(const void *base);

/* Number of maps covered now (for tests). */
int mc_sigbus_count(void);

#endif
