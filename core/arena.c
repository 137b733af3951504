/* arena.c - per-step scratch arena (see arena.h for the growth policy).
 *
 * Each chunk is one posix_memalign block: a header padded to MC_ARENA_ALIGN
 * bytes, then cap bytes of data starting on an MC_ARENA_ALIGN boundary. The
 * arena keeps the chunks in a list in allocation order; (cur, off) is the
 * next free byte. Requests with align <= MC_ARENA_ALIGN need no padding at a
 * chunk's start; larger ones at most align - MC_ARENA_ALIGN bytes.
 */
#include "arena.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t cap; /* data bytes after the header */
} arena_chunk;

#define CHUNK_HDR ((size_t)MC_ARENA_ALIGN)
_Static_assert(sizeof(arena_chunk) <= CHUNK_HDR, "chunk header fits its padding");
_Static_assert((MC_ARENA_ALIGN & (MC_ARENA_ALIGN - 1)) == 0, "alignment is a power of two");

struct mc_arena {
    arena_chunk *head; /* first chunk; never NULL after init */
    arena_chunk *cur;  /* chunk holding the next free byte */
    size_t off;        /* next free byte in cur */
    size_t used;       /* bytes handed out since the last reset, padding included */
    size_t peak;
    size_t reserved; /* sum of cap over all chunks */
    size_t chunk_bytes;
    size_t max_bytes;
    int n_chunks;
};

static char *chunk_data(arena_chunk *c)
{
    return (char *)c + CHUNK_HDR;
}

static arena_chunk *chunk_new(size_t cap)
{
    void *p = NULL;
    /* cap <= MC_ARENA_MAX_BYTES, so the sum cannot overflow */
    if (posix_memalign(&p, MC_ARENA_ALIGN, CHUNK_HDR + cap) != 0)
        return NULL;
    arena_chunk *c = p;
    c->next = NULL;
    c->cap = cap;
    return c;
}

mc_status mc_arena_init(size_t chunk_bytes, size_t max_bytes, mc_arena **out, mc_err *err)
{
    *out = NULL;
    if (chunk_bytes == 0)
        chunk_bytes = MC_ARENA_DEFAULT_CHUNK;
    if (max_bytes == 0)
        max_bytes = MC_ARENA_MAX_BYTES;
    if (max_bytes > MC_ARENA_MAX_BYTES)
        return mc_err_set(err, MC_ERR_ARG, "arena: max_bytes %zu is above the ceiling of %zu",
                          max_bytes, MC_ARENA_MAX_BYTES);
    if (chunk_bytes > max_bytes)
        return mc_err_set(err, MC_ERR_ARG, "arena: chunk_bytes %zu is above max_bytes %zu",
                          chunk_bytes, max_bytes);
    mc_arena *a = calloc(1, sizeof *a);
    if (!a)
        return mc_err_set(err, MC_ERR_NOMEM, "arena: out of memory for the arena");
    a->head = chunk_new(chunk_bytes);
    if (!a->head) {
        free(a);
        return mc_err_set(err, MC_ERR_NOMEM, "arena: out of memory for a first chunk of %zu bytes",
                          chunk_bytes);
    }
    a->cur = a->head;
    a->reserved = chunk_bytes;
    a->chunk_bytes = chunk_bytes;
    a->max_bytes = max_bytes;
    a->n_chunks = 1;
    *out = a;
    return MC_OK;
}

void mc_arena_free(mc_arena *a)
{
    if (!a)
        return;
    for (arena_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

/* Places bytes at align in c from offset off: 0 and *start, or -1 when it
 * does not fit. No arithmetic here can overflow: every term is <= cap. */
static int chunk_fit(arena_chunk *c, size_t off, size_t bytes, size_t align, size_t *start)
{
    uintptr_t addr = (uintptr_t)(chunk_data(c) + off);
    size_t pad = (size_t)(-addr & (uintptr_t)(align - 1));
    if (off > c->cap || pad > c->cap - off || bytes > c->cap - off - pad)
        return -1;
    *start = off + pad;
    return 0;
}

static void *take(mc_arena *a, arena_chunk *c, size_t from, size_t start, size_t bytes)
{
    a->cur = c;
    a->off = start + bytes;
    a->used += a->off - from; /* <= reserved, so no overflow */
    if (a->used > a->peak)
        a->peak = a->used;
    return chunk_data(c) + start;
}

void *mc_arena_alloc(mc_arena *a, size_t bytes, size_t align)
{
    if (align == 0)
        align = MC_ARENA_ALIGN;
    if (align & (align - 1))
        return NULL;
    if (bytes == 0)
        bytes = 1;

    /* the current chunk, then the kept chunks after it */
    arena_chunk *last = a->cur;
    for (arena_chunk *c = a->cur; c; c = c->next) {
        size_t from = c == a->cur ? a->off : 0, start = 0;
        if (chunk_fit(c, from, bytes, align, &start) == 0)
            return take(a, c, from, start, bytes);
        last = c;
    }

    /* a new chunk: the request with its worst-case padding, at least
     * chunk_bytes, at least what is held already, within max_bytes */
    size_t need;
    if (__builtin_add_overflow(bytes, align > MC_ARENA_ALIGN ? align - MC_ARENA_ALIGN : 0, &need))
        return NULL;
    size_t room = a->max_bytes - a->reserved; /* reserved <= max_bytes always */
    if (need > room)
        return NULL;
    size_t cap = need;
    if (cap < a->chunk_bytes)
        cap = a->chunk_bytes;
    if (cap < a->reserved)
        cap = a->reserved;
    if (cap > room)
        cap = room;
    arena_chunk *c = chunk_new(cap);
    if (!c && cap > need) { /* the growth was too greedy: try the request alone */
        cap = need;
        c = chunk_new(cap);
    }
    if (!c)
        return NULL;
    last->next = c;
    a->reserved += cap;
    a->n_chunks++;
    size_t start = 0;
    int fit = chunk_fit(c, 0, bytes, align, &start);
    assert(fit == 0); /* need covers the worst-case padding */
    (void)fit;
    return take(a, c, 0, start, bytes);
}

void *mc_arena_alloc_n(mc_arena *a, size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes))
        return NULL;
    return mc_arena_alloc(a, bytes, 0);
}

mc_arena_mark mc_arena_mark_get(const mc_arena *a)
{
    return (mc_arena_mark){.chunk = a->cur, .off = a->off, .used = a->used};
}

void mc_arena_reset_to(mc_arena *a, mc_arena_mark m)
{
    /* a mark from before the last rewind past it is a programming error */
    assert(m.chunk != NULL && m.used <= a->used);
    a->cur = m.chunk;
    a->off = m.off;
    a->used = m.used;
}

void mc_arena_reset(mc_arena *a)
{
    a->cur = a->head;
    a->off = 0;
    a->used = 0;
}

void mc_arena_stats_get(const mc_arena *a, mc_arena_stats *out)
{
    out->used = a->used;
    out->peak = a->peak;
    out->reserved = a->reserved;
    out->n_chunks = a->n_chunks;
}
