/* status.h - error values shared by every module.
 *
 * Functions that can fail return mc_status and, when given one, fill an
 * mc_err with a single human-readable line naming the file / tensor / field
 * at fault. Only main() turns a status into an exit code.
 */
#ifndef MC_STATUS_H
#define MC_STATUS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MC_OK = 0,
    MC_ERR_IO,          /* open/read/mmap/write failed */
    MC_ERR_FORMAT,      /* malformed file contents */
    MC_ERR_UNSUPPORTED, /* valid input we do not handle (dtype, model type) */
    MC_ERR_CONFIG,      /* config disagrees with itself or with the tensors */
    MC_ERR_NOT_FOUND,   /* missing tensor / key / file */
    MC_ERR_NOMEM,       /* allocation failed */
    MC_ERR_ARG,         /* bad command-line or API argument */
    MC_ERR_OVERFLOW,    /* size arithmetic overflowed */
    MC_ERR_INTERNAL,
    MC_STATUS_COUNT
} mc_status;

const char *mc_status_str(mc_status s);

/* One error message. Fill with mc_err_set(); the first error wins so the
 * innermost, most precise message survives the unwinding. */
typedef struct {
    mc_status status;
    char msg[768];
} mc_err;

void mc_err_clear(mc_err *e);
/* Records status + printf-style message (if e is non-NULL and still clear)
 * and returns the status, so callers can write `return mc_err_set(...)`.
 * Control characters (e.g. a newline quoted from the input) become '?', so
 * the message stays one line. */
mc_status mc_err_set(mc_err *e, mc_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Overflow-checked size arithmetic: return 0 on success, -1 on overflow. */
static inline int mc_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int mc_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

/* Allocation helpers that never return NULL silently: they return NULL and
 * the caller reports MC_ERR_NOMEM. mc_calloc_n checks n*size for overflow. */
void *mc_calloc_n(size_t n, size_t size);
void *mc_malloc_n(size_t n, size_t size);

#endif
