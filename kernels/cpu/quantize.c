/* quantize.c - whole-matrix conversion to Q8_0 / Q4_K (or BF16 / F16 / F32)
 * at load time, rows spread over the kernel thread pool. */
#include "kern.h"
#include "pool.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

typedef struct {
    const mc_mat *src;
    mc_dtype target;
    unsigned char *dst;
    size_t row_bytes;
    int chunk;
    int failed;
    int bad, bad_row, bad_col; /* a NaN / Inf that a block format would lose */
    float bad_val;
} q_job;

static void q_task(void *ctx, int task, int thread)
{
    q_job *j = ctx;
    const mc_mat *s = j->src;
    float *buf = malloc((size_t)s->cols * sizeof *buf);
    if (!buf) {
        j->failed = 1;
        return;
    }
    int r0 = task * j->chunk, r1 = r0 + j->chunk < s->rows ? r0 + j->chunk : s->rows;
    for (int r = r0; r < r1; r++) {
        unsigned char *out = j->dst + (size_t)r * j->row_bytes;
        mc_mat_row_f32(s, r, buf);
        switch (j->target) {
        case MC_DT_Q8_0:
        case MC_DT_Q4_K:
            /* block scales would turn a NaN / Inf into some finite value */
            for (int i = 0; i < s->cols; i++)
                if (!isfinite(buf[i]) && !__atomic_exchange_n(&j->bad, 1, __ATOMIC_RELAXED)) {
                    j->bad_row = r;
                    j->bad_col = i;
                    j->bad_val = buf[i];
                }
            mc_quantize_row(j->target, buf, out, s->cols);
            break;
        case MC_DT_BF16:
            for (int i = 0; i < s->cols; i++) {
                uint16_t h = mc_f32_to_bf16(buf[i]);
                memcpy(out + 2 * (size_t)i, &h, 2);
            }
            break;
        case MC_DT_F16:
            for (int i = 0; i < s->cols; i++) {
                uint16_t h = mc_f32_to_f16(buf[i]);
                memcpy(out + 2 * (size_t)i, &h, 2);
            }
            break;
        default:
            memcpy(out, buf, (size_t)s->cols * sizeof *buf);
            break;
        }
    }
    free(buf);
}

static mc_status check_target(const mc_mat *src, mc_dtype target, mc_err *err)
{
    if (target != MC_DT_Q8_0 && target != MC_DT_Q4_K && target != MC_DT_BF16 &&
        target != MC_DT_F16 && target != MC_DT_F32)
        return mc_err_set(err, MC_ERR_ARG, "cannot quantize weights to %s (want Q8_0, Q4_K, "
                          "BF16, F16 or F32)", mc_dtype_name(target));
    if (src->rows <= 0 || src->cols <= 0)
        return mc_err_set(err, MC_ERR_ARG, "cannot quantize an empty %dx%d matrix", src->rows,
                          src->cols);
    return MC_OK;
}

/* Row stride (elements) and bytes of src stored as target. */
static size_t stored_bytes(const mc_mat *src, mc_dtype target, size_t *stride)
{
    int be = mc_dtype_block_elems(target);
    *stride = ((size_t)src->cols + (size_t)be - 1) / (size_t)be * (size_t)be;
    return (size_t)src->rows * mc_dtype_row_bytes(target, (int64_t)*stride);
}

/* Writes src as target at p (stored_bytes of it); dst describes it. */
static mc_status quantize_into(const mc_mat *src, mc_dtype target, unsigned char *p, mc_mat *dst,
                               mc_err *err)
{
    size_t stride;
    (void)stored_bytes(src, target, &stride);
    q_job j = {.src = src, .target = target, .dst = p,
               .row_bytes = mc_dtype_row_bytes(target, (int64_t)stride)};
    mc_pool *pool = mc_kernels_pool();
    int nt = pool ? mc_pool_threads(pool) : 1;
    j.chunk = (src->rows + 4 * nt - 1) / (4 * nt);
    if (j.chunk < 1)
        j.chunk = 1;
    mc_pool_run(pool, (src->rows + j.chunk - 1) / j.chunk, q_task, &j);
    if (j.failed)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory quantizing weights");
    if (j.bad)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "weight at row %d, column %d is %s and cannot be quantized to %s",
                          j.bad_row, j.bad_col,
                          isnan(j.bad_val) ? "NaN" : j.bad_val > 0 ? "+Inf" : "-Inf",
                          mc_dtype_name(target));
    *dst = (mc_mat){.dtype = target, .rows = src->rows, .cols = src->cols, .row_stride = stride,
                    .data = p};
    return MC_OK;
}

/* 2 MiB aligned storage advised for transparent huge pages (fewer TLB
 * misses while streaming weights; the advice is only a hint). huge: whether
 * to align and advise at all. free() it. */
static unsigned char *weights_alloc(size_t total, int huge)
{
    size_t align = huge ? (2u << 20) : 64;
    size_t alloc = (total + align - 1) & ~(align - 1);
    unsigned char *p = aligned_alloc(align, alloc);
#ifdef MADV_HUGEPAGE
    if (p && huge)
        (void)madvise(p, alloc, MADV_HUGEPAGE);
#endif
    return p;
}

mc_status mc_mat_quantize(const mc_mat *src, mc_dtype target, mc_mat *dst, void **owned,
                          mc_err *err)
{
    *owned = NULL;
    mc_status st = check_target(src, target, err);
    if (st != MC_OK)
        return st;
    size_t stride, total = stored_bytes(src, target, &stride);
    /* huge pages only where they do not waste much: a group of matrices
     * (mc_mats_quantize) shares them whatever the sizes */
    unsigned char *p = weights_alloc(total, total >= (4u << 20));
    if (!p)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for %zu bytes of %s weights", total,
                          mc_dtype_name(target));
    if ((st = quantize_into(src, target, p, dst, err)) != MC_OK) {
        free(p);
        return st;
    }
    *owned = p;
    return MC_OK;
}

/* Start of each matrix in a group: a cache line, so that no two matrices share one. */
#define GROUP_ALIGN 64

/* total + b, rounded up to GROUP_ALIGN, into *total; 0 when size_t overflows. */
static int group_add(size_t *total, size_t b)
{
    if (*total > SIZE_MAX - b - GROUP_ALIGN)
        return 0;
    *total = (*total + b + GROUP_ALIGN - 1) & ~(size_t)(GROUP_ALIGN - 1);
    return 1;
}

mc_status mc_mats_quantize(const mc_mat *const *src, const mc_dtype *target, int n, mc_mat *dst,
                           void **owned, int *bad, mc_err *err)
{
    *owned = NULL;
    if (bad)
        *bad = -1;
    if (n <= 0)
        return mc_err_set(err, MC_ERR_ARG, "mc_mats_quantize: %d matrices (want 1 or more)", n);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        mc_status st = check_target(src[i], target[i], err);
        if (st != MC_OK) {
            if (bad)
                *bad = i;
            return st;
        }
        size_t stride;
        if (!group_add(&total, stored_bytes(src[i], target[i], &stride)))
            return mc_err_set(err, MC_ERR_NOMEM, "%d matrices of weights overflow size_t", n);
    }
    unsigned char *p = weights_alloc(total, 1);
    if (!p)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for %zu bytes of weights (%d "
                          "matrices)", total, n);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t stride, b = stored_bytes(src[i], target[i], &stride);
        mc_status st = quantize_into(src[i], target[i], p + at, &dst[i], err);
        if (st != MC_OK) {
            if (bad)
                *bad = i;
            free(p);
            return st;
        }
        (void)group_add(&at, b); /* (within total) */
    }
    *owned = p;
    return MC_OK;
}

/* ---- copies in the stored type (mc_mats_copy) ---- */

/* A matrix's stored lines: `lines` of `line_bytes` each, `pitch` bytes
 * apart in the source; *stride the copy's row_stride (elements). */
typedef struct {
    const unsigned char *src;
    unsigned char *dst;
    size_t pitch, line_bytes;
    int lines, chunk;
} c_job;

static void c_task(void *ctx, int task, int thread)
{
    (void)thread;
    c_job *j = ctx;
    int l0 = task * j->chunk, l1 = l0 + j->chunk < j->lines ? l0 + j->chunk : j->lines;
    for (int l = l0; l < l1; l++)
        memcpy(j->dst + (size_t)l * j->line_bytes, j->src + (size_t)l * j->pitch, j->line_bytes);
}

static mc_status copy_shape(const mc_mat *w, int *lines, size_t *line_bytes, size_t *pitch,
                            size_t *stride, mc_err *err)
{
    if (w->rows <= 0 || w->cols <= 0 || !w->data)
        return mc_err_set(err, MC_ERR_ARG, "cannot copy an empty %dx%d matrix", w->rows, w->cols);
    if (w->transposed) {
        if (mc_dtype_is_block(w->dtype))
            return mc_err_set(err, MC_ERR_ARG, "a transposed %s matrix cannot be copied",
                              mc_dtype_name(w->dtype));
        size_t es = mc_dtype_size(w->dtype);
        *lines = w->cols;
        *stride = (size_t)w->rows;
        *line_bytes = (size_t)w->rows * es;
        *pitch = w->row_stride * es;
        return MC_OK;
    }
    size_t be = (size_t)mc_dtype_block_elems(w->dtype);
    *lines = w->rows;
    *stride = ((size_t)w->cols + be - 1) / be * be;
    *line_bytes = mc_dtype_row_bytes(w->dtype, (int64_t)*stride);
    *pitch = mc_dtype_row_bytes(w->dtype, (int64_t)w->row_stride);
    return MC_OK;
}

mc_status mc_mats_copy(const mc_mat *const *src, int n, mc_mat *dst, void **owned, mc_err *err)
{
    *owned = NULL;
    if (n <= 0)
        return mc_err_set(err, MC_ERR_ARG, "mc_mats_copy: %d matrices (want 1 or more)", n);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        int lines = 0;
        size_t lb = 0, pitch = 0, stride = 0;
        mc_status st = copy_shape(src[i], &lines, &lb, &pitch, &stride, err);
        if (st != MC_OK)
            return st;
        if (!group_add(&total, (size_t)lines * lb))
            return mc_err_set(err, MC_ERR_NOMEM, "%d matrices of weights overflow size_t", n);
    }
    unsigned char *p = weights_alloc(total, 1);
    if (!p)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for %zu bytes of weights (%d "
                          "matrices)", total, n);
    mc_pool *pool = mc_kernels_pool();
    int nt = pool ? mc_pool_threads(pool) : 1;
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        c_job j = {.src = src[i]->data, .dst = p + at};
        size_t stride = 0;
        (void)copy_shape(src[i], &j.lines, &j.line_bytes, &j.pitch, &stride, err);
        j.chunk = (j.lines + 4 * nt - 1) / (4 * nt);
        mc_pool_run(pool, (j.lines + j.chunk - 1) / j.chunk, c_task, &j);
        dst[i] = *src[i];
        dst[i].data = p + at;
        dst[i].row_stride = stride;
        (void)group_add(&at, (size_t)j.lines * j.line_bytes); /* (within total) */
    }
    *owned = p;
    return MC_OK;
}
