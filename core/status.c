#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static const char *const status_names[MC_STATUS_COUNT] = {
    [MC_OK] = "ok",
    [MC_ERR_IO] = "I/O error",
    [MC_ERR_FORMAT] = "malformed input",
    [MC_ERR_UNSUPPORTED] = "unsupported",
    [MC_ERR_CONFIG] = "configuration error",
    [MC_ERR_NOT_FOUND] = "not found",
    [MC_ERR_NOMEM] = "out of memory",
    [MC_ERR_ARG] = "invalid argument",
    [MC_ERR_OVERFLOW] = "size overflow",
    [MC_ERR_INTERNAL] = "internal error",
};

const char *mc_status_str(mc_status s)
{
    if ((unsigned)s >= MC_STATUS_COUNT)
        return "unknown status";
    return status_names[s];
}

void mc_err_clear(mc_err *e)
{
    if (e) {
        e->status = MC_OK;
        e->msg[0] = '\0';
    }
}

mc_status mc_err_set(mc_err *e, mc_status s, const char *fmt, ...)
{
    if (e && e->status == MC_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        /* one line, whatever the input quoted in it holds */
        for (char *c = e->msg; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = '?';
        e->status = s;
    }
    return s;
}

void *mc_calloc_n(size_t n, size_t size)
{
    if (n == 0 || size == 0)
        return calloc(1, 1);
    size_t total;
    if (__builtin_mul_overflow(n, size, &total))
        return NULL;
    return calloc(n, size);
}

void *mc_malloc_n(size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total))
        return NULL;
    return malloc(total ? total : 1);
}
