/* arena.h - per-step scratch memory: bump allocation from kept chunks.
 *
 * A step takes its temporaries (activations, attention scores, routed token
 * buffers) from one arena and gives them all back at once with
 * mc_arena_reset() when the step ends; nothing is freed one by one. Scoped
 * scratch inside a step (one layer's temporaries) uses a mark:
 *
 *     mc_arena_mark m = mc_arena_mark_get(a);
 *     float *scores = mc_arena_alloc_n(a, n_tok * n_ctx, sizeof(float)); // (n_tok, n_ctx)
 *     ...
 *     mc_arena_reset_to(a, m);          // scores is gone, the memory is reused
 *
 * Growth policy: the arena holds a list of chunks. The first one
 * (chunk_bytes) is allocated by mc_arena_init. When a request does not fit in
 * the rest of the current chunk, the arena moves on to the next kept chunk
 * that can hold it (the tail of the skipped chunk stays unused until the next
 * reset) or, past the last one, allocates a new chunk of at least the request,
 * at least chunk_bytes, and at least the bytes already held (so the number of
 * chunks grows logarithmically with the largest step). Chunks are never given
 * back before mc_arena_free: mc_arena_reset and mc_arena_reset_to only rewind.
 * A step that makes the same requests as an earlier one therefore lands on the
 * same chunks at the same offsets and calls malloc zero times; a workload
 * whose steps vary allocates only when a step needs more than any before it.
 * To size an arena up front, run a representative step and read peak.
 *
 * Pointers are aligned to the requested power of two (0 means
 * MC_ARENA_ALIGN = 64 bytes, one cache line / one AVX-512 vector). Memory is
 * not zeroed. A pointer stays valid until a reset rewinds past it.
 *
 * Failure: mc_arena_alloc returns NULL (the caller reports MC_ERR_NOMEM,
 * naming what it was allocating) when malloc fails, when the size arithmetic
 * overflows, when the request would take the arena past its max_bytes, or past
 * MC_ARENA_MAX_BYTES in all. A failed request leaves the arena as it was.
 *
 * Not thread-safe: one arena per thread (or per rank when ranks are threads).
 * The arena is owned by whoever called mc_arena_init and freed with
 * mc_arena_free, which frees every chunk and so every pointer handed out.
 */
#ifndef MC_ARENA_H
#define MC_ARENA_H

#include "status.h"

#include <stddef.h>

#define MC_ARENA_ALIGN 64                        /* default alignment (bytes) */
#define MC_ARENA_DEFAULT_CHUNK ((size_t)1 << 20) /* chunk_bytes 0 means this */
#define MC_ARENA_MAX_BYTES ((size_t)1 << 39)     /* ceiling on all chunks together */

typedef struct mc_arena mc_arena;

/* A position in the arena, for mc_arena_reset_to. Treat as opaque. A mark is
 * valid until the arena is rewound to a point before it. */
typedef struct {
    void *chunk;
    size_t off;
    size_t used;
} mc_arena_mark;

typedef struct {
    size_t used;     /* bytes handed out since the last reset, alignment padding included */
    size_t peak;     /* largest used since init (for sizing chunk_bytes) */
    size_t reserved; /* bytes held in chunks (what malloc gave, less chunk headers) */
    int n_chunks;    /* chunks held; each one was one malloc */
} mc_arena_stats;

/* Creates an arena with a first chunk of chunk_bytes (0: MC_ARENA_DEFAULT_CHUNK)
 * and a ceiling of max_bytes on all chunks together (0: MC_ARENA_MAX_BYTES).
 * A fixed-capacity arena is chunk_bytes == max_bytes. Errors: MC_ERR_ARG
 * (chunk_bytes above max_bytes, or either above MC_ARENA_MAX_BYTES),
 * MC_ERR_NOMEM. The caller frees *out with mc_arena_free. */
mc_status mc_arena_init(size_t chunk_bytes, size_t max_bytes, mc_arena **out, mc_err *err);
/* Frees every chunk. NULL is a no-op. */
void mc_arena_free(mc_arena *a);

/* bytes of scratch aligned to align (a power of two, 0: MC_ARENA_ALIGN), or
 * NULL (see above; also NULL for an align that is not a power of two). A
 * request of 0 bytes returns a distinct valid pointer, as for 1 byte. */
void *mc_arena_alloc(mc_arena *a, size_t bytes, size_t align);
/* n * size bytes aligned to MC_ARENA_ALIGN; NULL when n * size overflows. */
void *mc_arena_alloc_n(mc_arena *a, size_t n, size_t size);

mc_arena_mark mc_arena_mark_get(const mc_arena *a);
/* Rewinds to m: everything allocated after mc_arena_mark_get returned m is
 * given back (kept for reuse, not freed). */
void mc_arena_reset_to(mc_arena *a, mc_arena_mark m);
/* Rewinds to empty, keeping every chunk: call once per step. */
void mc_arena_reset(mc_arena *a);

void mc_arena_stats_get(const mc_arena *a, mc_arena_stats *out);

#endif
