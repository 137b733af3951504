/* backend.c - the generic front end of backend.h: backends and buffers as
 * handles over an implementation's vtable, tensor descriptors and views.
 * The validation of every op's arguments before dispatch is in
 * backend_ops.c. */
#include "backend.h"
#include "backend_impl.h"
#include "backend_ops_internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* ---- backends ---- */

mc_backend *mc_backend_new(const mc_backend_i *iface, void *ctx)
{
    mc_backend *be = calloc(1, sizeof *be);
    if (!be)
        return NULL;
    be->iface = *iface;
    be->ctx = ctx;
    return be;
}

void mc_backend_free(mc_backend *be)
{
    if (!be)
        return;
    if (be->capturing) { /* a capture never ended: drop what it holds */
        mc_graph *g = NULL;
        (void)mc_backend_capture_end(be, &g, NULL);
        mc_graph_free(g);
    }
    if (be->iface.free)
        be->iface.free(be->ctx);
    mc_backend_free(be->host);
    free(be);
}

const char *mc_backend_name(const mc_backend *be) { return be->iface.name; }
mc_device_kind mc_backend_kind(const mc_backend *be) { return be->iface.kind; }

mc_status mc_backend_synchronize(mc_backend *be, mc_err *err)
{
    if (be->capturing)
        return mc_graph_refuse(be, "synchronize", err);
    return be->iface.synchronize(be->ctx, err);
}

int mc_backend_set_sync_checks(mc_backend *be, int on)
{
    return be->iface.set_sync_checks ? be->iface.set_sync_checks(be->ctx, on) : 1;
}

int mc_backend_sync_checks(const mc_backend *be)
{
    return be->iface.sync_checks ? be->iface.sync_checks(be->ctx) : 1;
}

mc_status mc_backend_take_nonfinite(mc_backend *be, mc_nonfinite_note *note, mc_err *err)
{
    if (!note)
        return mc_err_set(err, MC_ERR_ARG, "take_nonfinite: note is NULL");
    *note = (mc_nonfinite_note){.tag = -1, .row = -1, .col = -1, .value = 0};
    if (be->capturing)
        return mc_graph_refuse(be, "take_nonfinite", err);
    return be->iface.take_nonfinite(be->ctx, note, err);
}

const char *mc_backend_path(const mc_backend *be) { return be->iface.path(be->ctx); }
const char *mc_backend_features(const mc_backend *be) { return be->iface.features(be->ctx); }

mc_status mc_backend_set_path(mc_backend *be, const char *name, mc_err *err)
{
    if (!name)
        return mc_err_set(err, MC_ERR_ARG, "set_path: name is NULL");
    return be->iface.set_path(be->ctx, name, err);
}

int mc_backend_threads(const mc_backend *be) { return be->iface.threads(be->ctx); }
void mc_backend_set_threads(mc_backend *be, int n) { be->iface.set_threads(be->ctx, n); }
void mc_backend_count(mc_backend *be, int on)
{
    if (be->capturing) /* (a reset the graph would hold) */
        mc_graph_refuse(be, "count", NULL);
    be->iface.count(be->ctx, on);
}

void mc_backend_counters_get(const mc_backend *be, mc_backend_counters *out)
{
    if (be->capturing) { /* (the device's counts are read with a wait) */
        memset(out, 0, sizeof *out);
        mc_graph_refuse((mc_backend *)be, "counters", NULL);
        return;
    }
    be->iface.counters(be->ctx, out);
}

double mc_backend_probe_read_gbps(mc_backend *be, size_t bytes, int threads, double seconds)
{
    return be->iface.probe_read_gbps(be->ctx, bytes, threads, seconds);
}

double mc_backend_probe_fma_gflops(mc_backend *be, int threads, double seconds)
{
    return be->iface.probe_fma_gflops(be->ctx, threads, seconds);
}

double mc_backend_probe_int8_gops(mc_backend *be, int threads, double seconds)
{
    return be->iface.probe_int8_gops ? be->iface.probe_int8_gops(be->ctx, threads, seconds)
                                     : -1.0;
}

double mc_backend_probe_bf16_gflops(mc_backend *be, int threads, double seconds)
{
    return be->iface.probe_bf16_gflops ? be->iface.probe_bf16_gflops(be->ctx, threads, seconds)
                                       : -1.0;
}

/* ---- buffers ---- */

mc_status mc_buffer_alloc(mc_backend *be, size_t bytes, mc_buffer **out, mc_err *err)
{
    *out = NULL;
    if (bytes == 0)
        return mc_err_set(err, MC_ERR_ARG, "buffer_alloc: bytes is 0");
    if (be->capturing)
        return mc_graph_refuse(be, "buffer_alloc", err);
    mc_buffer *b = calloc(1, sizeof *b);
    if (!b)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for a buffer handle");
    mc_status st = be->iface.buf_alloc(be->ctx, bytes, &b->mem, err);
    if (st != MC_OK) {
        free(b);
        return st;
    }
    b->be = be;
    b->size = bytes;
    *out = b;
    return MC_OK;
}

mc_status mc_buffer_wrap_host(mc_backend *be, const void *host, size_t bytes, mc_buffer **out,
                              mc_err *err)
{
    *out = NULL;
    if (be->capturing)
        return mc_graph_refuse(be, "buffer_wrap_host", err);
    if (!be->iface.wrap_host)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "buffer_wrap_host: the %s backend cannot borrow host memory",
                          be->iface.name);
    if (!host || bytes == 0)
        return mc_err_set(err, MC_ERR_ARG, "buffer_wrap_host: %s", host ? "bytes is 0"
                                                                         : "host is NULL");
    mc_buffer *b = calloc(1, sizeof *b);
    if (!b)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for a buffer handle");
    mc_status st = be->iface.wrap_host(be->ctx, host, bytes, &b->mem, err);
    if (st != MC_OK) {
        free(b);
        return st;
    }
    b->be = be;
    b->size = bytes;
    b->borrowed = 1;
    *out = b;
    return MC_OK;
}

void mc_buffer_free(mc_buffer *b)
{
    if (!b)
        return;
    if (b->be->capturing) /* the graph may hold it */
        mc_graph_refuse(b->be, "buffer_free", NULL);
    if (!b->borrowed)
        b->be->iface.buf_free(b->be->ctx, b->mem, b->size);
    free(b);
}

size_t mc_buffer_size(const mc_buffer *b) { return b->size; }
mc_backend *mc_buffer_backend(const mc_buffer *b) { return b->be; }
int mc_buffer_read_only(const mc_buffer *b) { return b->borrowed; }
void *mc_buffer_mem(const mc_buffer *b) { return b->mem; }
void *mc_buffer_host(const mc_buffer *b) { return b->be->iface.host_memory ? b->mem : NULL; }

int mc_backend_host_memory(const mc_backend *be) { return be->iface.host_memory; }

static mc_status range_ok(const mc_buffer *b, const char *op, size_t off, size_t n, mc_err *err)
{
    if (!b)
        return mc_err_set(err, MC_ERR_ARG, "%s: buffer is NULL", op);
    if (off > b->size || n > b->size - off)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s: bytes [%zu, %zu + %zu) are past the buffer's %zu bytes", op, off,
                          off, n, b->size);
    return MC_OK;
}

mc_status mc_buffer_upload(mc_buffer *b, size_t off, const void *src, size_t n, mc_err *err)
{
    mc_status st = range_ok(b, "upload", off, n, err);
    if (st != MC_OK)
        return st;
    if (b->borrowed)
        return mc_err_set(err, MC_ERR_ARG, "upload: buffer is read-only (borrowed host memory)");
    if (n == 0)
        return MC_OK;
    if (b->be->capturing)
        return mc_graph_refuse(b->be, "upload", err);
    return b->be->iface.upload(b->be->ctx, b->mem, off, src, n, err);
}

mc_status mc_buffer_download(const mc_buffer *b, size_t off, void *dst, size_t n, mc_err *err)
{
    mc_status st = range_ok(b, "download", off, n, err);
    if (st != MC_OK || n == 0)
        return st;
    if (b->be->capturing)
        return mc_graph_refuse(b->be, "download", err);
    return b->be->iface.download(b->be->ctx, b->mem, off, dst, n, err);
}

mc_status mc_buffer_memset(mc_buffer *b, size_t off, int value, size_t n, mc_err *err)
{
    mc_status st = range_ok(b, "memset", off, n, err);
    if (st != MC_OK)
        return st;
    if (b->borrowed)
        return mc_err_set(err, MC_ERR_ARG, "memset: buffer is read-only (borrowed host memory)");
    if (n == 0)
        return MC_OK;
    if (b->be->rec)
        return mc_rec_memset(b->be, b, off, value, n, err);
    return b->be->iface.memset(b->be->ctx, b->mem, off, value, n, err);
}

/* ---- tensors ---- */

static int dtype_known(mc_dtype dt)
{
    return (dt >= MC_DT_F32 && dt < MC_DT_COUNT) || mc_dtype_is_block(dt);
}

int mc_backend_is_weight_dtype(mc_dtype dt)
{
    return dt == MC_DT_F32 || dt == MC_DT_F16 || dt == MC_DT_BF16 || dt == MC_DT_F8_E4M3 ||
           mc_dtype_is_block(dt);
}

int64_t mc_tensor_cols(const mc_tensor *t) { return t->shape[t->ndim - 1]; }

int64_t mc_tensor_rows(const mc_tensor *t)
{
    int64_t r = 1;
    for (int i = 0; i + 1 < t->ndim; i++)
        r *= t->shape[i];
    return r;
}

int64_t mc_tensor_nelems(const mc_tensor *t) { return mc_tensor_rows(t) * mc_tensor_cols(t); }

/* Bytes from offset to the end of t, or 0 with err naming `what` if t is malformed. */
static size_t extent_or_err(const mc_tensor *t, const char *what, mc_err *err)
{
    if (!dtype_known(t->dtype)) {
        mc_err_set(err, MC_ERR_ARG, "%s: unknown dtype %d", what, (int)t->dtype);
        return 0;
    }
    if (t->ndim < 1 || t->ndim > MC_TENSOR_MAX_DIMS) {
        mc_err_set(err, MC_ERR_ARG, "%s: %d dimensions (want 1..%d)", what, t->ndim,
                   MC_TENSOR_MAX_DIMS);
        return 0;
    }
    uint64_t rows = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 1 || t->shape[i] > INT_MAX) {
            mc_err_set(err, MC_ERR_ARG, "%s: shape[%d] = %lld is outside [1, %d]", what, i,
                       (long long)t->shape[i], INT_MAX);
            return 0;
        }
        if (i + 1 < t->ndim && mc_mul_u64(rows, (uint64_t)t->shape[i], &rows)) {
            mc_err_set(err, MC_ERR_OVERFLOW, "%s: element count overflows", what);
            return 0;
        }
    }
    uint64_t cols = (uint64_t)mc_tensor_cols(t), ext, tmp;
    int blk = mc_dtype_block_elems(t->dtype);
    if (t->transposed) {
        size_t es = mc_dtype_size(t->dtype);
        if (t->ndim != 2 || mc_dtype_is_block(t->dtype) || t->scale_buf) {
            mc_err_set(err, MC_ERR_ARG, "%s: transposed storage is for 2-D unscaled element-type "
                       "weights", what);
            return 0;
        }
        if (t->row_stride < t->shape[0]) {
            mc_err_set(err, MC_ERR_ARG, "%s: row_stride %lld is less than the %lld outputs of "
                       "transposed storage", what, (long long)t->row_stride,
                       (long long)t->shape[0]);
            return 0;
        }
        /* stored rows are the cols inputs, each row_stride elements apart */
        if (mc_mul_u64(cols - 1, (uint64_t)t->row_stride, &tmp) ||
            mc_add_u64(tmp, rows, &tmp) || mc_mul_u64(tmp, es, &ext)) {
            mc_err_set(err, MC_ERR_OVERFLOW, "%s: byte size overflows", what);
            return 0;
        }
        return (size_t)ext;
    }
    if (t->row_stride < (int64_t)cols || t->row_stride > INT_MAX || t->row_stride % blk != 0) {
        mc_err_set(err, MC_ERR_ARG, "%s: row_stride %lld is not a multiple of %d in [%llu, %d]",
                   what, (long long)t->row_stride, blk, (unsigned long long)cols, INT_MAX);
        return 0;
    }
    size_t rb = mc_dtype_row_bytes(t->dtype, t->row_stride);
    if (mc_mul_u64(rows - 1, rb, &tmp) ||
        mc_add_u64(tmp, mc_dtype_row_bytes(t->dtype, (int64_t)cols), &ext)) {
        mc_err_set(err, MC_ERR_OVERFLOW, "%s: byte size overflows", what);
        return 0;
    }
    return (size_t)ext;
}

size_t mc_tensor_extent(const mc_tensor *t) { return extent_or_err(t, "tensor", NULL); }

static uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

/* Bytes of scale storage t's view reads, from scale_offset. */
static uint64_t scale_extent(const mc_tensor *t)
{
    uint64_t sr = ceil_div((uint64_t)t->shape[0], (uint64_t)t->block_rows);
    uint64_t sc = ceil_div((uint64_t)t->shape[1], (uint64_t)t->block_cols);
    return ((sr - 1) * (uint64_t)t->scale_cols + sc) * sizeof(float);
}

int mc_tensor_check(const mc_tensor *t, const char *what, mc_err *err)
{
    if (!t) {
        mc_err_set(err, MC_ERR_ARG, "%s: tensor is NULL", what);
        return 0;
    }
    if (!t->buf) {
        mc_err_set(err, MC_ERR_ARG, "%s: no buffer", what);
        return 0;
    }
    size_t ext = extent_or_err(t, what, err);
    if (ext == 0)
        return 0;
    if (t->offset > t->buf->size || ext > t->buf->size - t->offset) {
        mc_err_set(err, MC_ERR_ARG, "%s: bytes [%zu, %zu + %zu) are past its buffer's %zu bytes",
                   what, t->offset, t->offset, ext, t->buf->size);
        return 0;
    }
    if (t->scale_buf) {
        if (t->dtype != MC_DT_F8_E4M3 || t->ndim != 2 || t->block_rows < 1 ||
            t->block_cols < 1 ||
            t->scale_cols < (int64_t)ceil_div((uint64_t)t->shape[1], (uint64_t)t->block_cols)) {
            mc_err_set(err, MC_ERR_ARG, "%s: block scales need a 2-D F8_E4M3 weight, blocks >= 1 "
                       "and scale_cols covering its columns", what);
            return 0;
        }
        uint64_t se = scale_extent(t);
        if (t->scale_buf->be != t->buf->be || t->scale_offset > t->scale_buf->size ||
            se > t->scale_buf->size - t->scale_offset) {
            mc_err_set(err, MC_ERR_ARG, "%s: block scales are past their buffer or on another "
                       "backend", what);
            return 0;
        }
    }
    if (t->pack != 0 &&
        ((t->pack != 1 || t->dtype != MC_DT_Q8_0) && (t->pack != 2 || t->dtype != MC_DT_Q6_K) &&
         (t->pack != 3 || t->dtype != MC_DT_Q4_K) && (t->pack != 4 || t->dtype != MC_DT_Q5_K))) {
        mc_err_set(err, MC_ERR_ARG, "%s: repacked rows (layout %d) on a %s tensor (layout 1 is "
                   "Q8_0's, 2 Q6_K's, 3 Q4_K's, 4 Q5_K's)", what, t->pack, mc_dtype_name(t->dtype));
        return 0;
    }
    if (t->pack != 0 && !t->buf->be->iface.host_memory) {
        mc_err_set(err, MC_ERR_ARG, "%s: repacked rows (layout %d) are read by the CPU kernels "
                   "only; the %s backend reads weights as stored", what, t->pack,
                   t->buf->be->iface.name);
        return 0;
    }
    if (t->pack != 0 && (t->ndim != 2 || t->transposed || t->shape[1] % 256 != 0 ||
                         t->row_stride != t->shape[1])) {
        mc_err_set(err, MC_ERR_ARG, "%s: repacked rows (layout %d) need a 2-D weight, not "
                   "transposed, columns a multiple of 256 and rows contiguous", what, t->pack);
        return 0;
    }
    return 1;
}

mc_status mc_tensor_init_strided(mc_tensor *t, mc_buffer *buf, size_t offset, mc_dtype dtype,
                                 int ndim, const int64_t *shape, int64_t row_stride, mc_err *err)
{
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > MC_TENSOR_MAX_DIMS)
        return mc_err_set(err, MC_ERR_ARG, "tensor_init: ndim = %d (want 1..%d)", ndim,
                          MC_TENSOR_MAX_DIMS);
    t->buf = buf;
    t->offset = offset;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->row_stride = row_stride;
    if (!mc_tensor_check(t, "tensor_init", err))
        return err ? err->status : MC_ERR_ARG;
    return MC_OK;
}

mc_status mc_tensor_init(mc_tensor *t, mc_buffer *buf, size_t offset, mc_dtype dtype, int ndim,
                         const int64_t *shape, mc_err *err)
{
    int64_t cols = ndim >= 1 && ndim <= MC_TENSOR_MAX_DIMS ? shape[ndim - 1] : 0;
    int blk = mc_dtype_block_elems(dtype);
    int64_t stride = blk > 0 && cols > 0 ? (cols + blk - 1) / blk * blk : cols;
    return mc_tensor_init_strided(t, buf, offset, dtype, ndim, shape, stride, err);
}

mc_status mc_tensor_init_2d(mc_tensor *t, mc_buffer *buf, size_t offset, mc_dtype dtype,
                            int64_t rows, int64_t cols, mc_err *err)
{
    int64_t shape[2] = {rows, cols};
    return mc_tensor_init(t, buf, offset, dtype, 2, shape, err);
}

mc_status mc_tensor_init_transposed(mc_tensor *t, mc_buffer *buf, size_t offset, mc_dtype dtype,
                                    int64_t out_features, int64_t in_features, int64_t row_stride,
                                    mc_err *err)
{
    *t = (mc_tensor){.buf = buf, .offset = offset, .dtype = dtype, .ndim = 2,
                     .shape = {out_features, in_features}, .row_stride = row_stride,
                     .transposed = 1};
    if (!mc_tensor_check(t, "tensor_init_transposed", err))
        return err ? err->status : MC_ERR_ARG;
    return MC_OK;
}

mc_status mc_tensor_set_scales(mc_tensor *w, const mc_tensor *scale, int block_rows, int block_cols,
                               mc_err *err)
{
    if (!mc_tensor_check(w, "w", err) || !mc_tensor_check(scale, "scale", err))
        return err ? err->status : MC_ERR_ARG;
    if (w->dtype != MC_DT_F8_E4M3 || w->ndim != 2 || w->transposed)
        return mc_err_set(err, MC_ERR_ARG, "set_scales: w is %s with %d dimensions (want a 2-D "
                          "F8_E4M3 weight)", mc_dtype_name(w->dtype), w->ndim);
    if (scale->dtype != MC_DT_F32 || scale->ndim != 2)
        return mc_err_set(err, MC_ERR_ARG, "set_scales: scale is %s with %d dimensions (want 2-D "
                          "F32)", mc_dtype_name(scale->dtype), scale->ndim);
    if (block_rows < 1 || block_cols < 1)
        return mc_err_set(err, MC_ERR_ARG, "set_scales: block %dx%d is empty", block_rows,
                          block_cols);
    uint64_t sr = ceil_div((uint64_t)w->shape[0], (uint64_t)block_rows);
    uint64_t sc = ceil_div((uint64_t)w->shape[1], (uint64_t)block_cols);
    if ((uint64_t)scale->shape[0] != sr || (uint64_t)scale->shape[1] < sc)
        return mc_err_set(err, MC_ERR_ARG, "set_scales: scale is [%lld, %lld], a %lldx%lld "
                          "weight in %dx%d blocks needs [%llu, >= %llu]",
                          (long long)scale->shape[0], (long long)scale->shape[1],
                          (long long)w->shape[0], (long long)w->shape[1], block_rows, block_cols,
                          (unsigned long long)sr, (unsigned long long)sc);
    if (scale->buf->be != w->buf->be)
        return mc_err_set(err, MC_ERR_ARG, "set_scales: scale is on another backend");
    w->scale_buf = scale->buf;
    w->scale_offset = scale->offset;
    w->scale_cols = scale->row_stride;
    w->block_rows = block_rows;
    w->block_cols = block_cols;
    return MC_OK;
}

static mc_status view_range(const mc_tensor *src, int dim, int64_t s0, int64_t n,
                            const char *what, mc_err *err)
{
    if (!mc_tensor_check(src, what, err))
        return err ? err->status : MC_ERR_ARG;
    int64_t len = src->shape[dim];
    if (s0 < 0 || n < 1 || s0 > len || n > len - s0)
        return mc_err_set(err, MC_ERR_ARG, "%s: [%lld, %lld + %lld) is outside [0, %lld)", what,
                          (long long)s0, (long long)s0, (long long)n, (long long)len);
    return MC_OK;
}

mc_status mc_tensor_view_rows(const mc_tensor *src, int64_t r0, int64_t n, mc_tensor *out,
                              mc_err *err)
{
    mc_status st = view_range(src, 0, r0, n, "view_rows", err);
    if (st != MC_OK)
        return st;
    if (src->ndim == 1)
        return mc_tensor_view_cols(src, r0, n, out, err);
    if (src->scale_buf && r0 % src->block_rows != 0)
        return mc_err_set(err, MC_ERR_ARG, "view_rows: r0 = %lld does not start a %d-row scale "
                          "block", (long long)r0, src->block_rows);
    mc_tensor v = *src;
    if (src->transposed) {
        v.offset += (size_t)r0 * mc_dtype_size(src->dtype);
    } else {
        int64_t inner = mc_tensor_rows(src) / src->shape[0];
        v.offset += (size_t)(r0 * inner) * mc_dtype_row_bytes(src->dtype, src->row_stride);
    }
    if (src->scale_buf)
        v.scale_offset += (size_t)(r0 / src->block_rows * src->scale_cols) * sizeof(float);
    v.shape[0] = n;
    *out = v;
    return MC_OK;
}

mc_status mc_tensor_view_cols(const mc_tensor *src, int64_t c0, int64_t n, mc_tensor *out,
                              mc_err *err)
{
    mc_status st = view_range(src, src ? src->ndim - 1 : 0, c0, n, "view_cols", err);
    if (st != MC_OK)
        return st;
    if (src->pack != 0 && (c0 != 0 || n != src->shape[src->ndim - 1]))
        return mc_err_set(err, MC_ERR_ARG, "view_cols: the rows are repacked (layout %d): only "
                          "whole rows can be viewed", src->pack);
    int blk = mc_dtype_block_elems(src->dtype);
    if (c0 % blk != 0)
        return mc_err_set(err, MC_ERR_ARG, "view_cols: c0 = %lld does not start a %s block of %d",
                          (long long)c0, mc_dtype_name(src->dtype), blk);
    if (src->scale_buf && c0 % src->block_cols != 0)
        return mc_err_set(err, MC_ERR_ARG, "view_cols: c0 = %lld does not start a %d-column scale "
                          "block", (long long)c0, src->block_cols);
    mc_tensor v = *src;
    if (src->transposed)
        v.offset += (size_t)c0 * (size_t)src->row_stride * mc_dtype_size(src->dtype);
    else
        v.offset += mc_dtype_row_bytes(src->dtype, c0);
    if (src->scale_buf)
        v.scale_offset += (size_t)(c0 / src->block_cols) * sizeof(float);
    v.shape[src->ndim - 1] = n;
    *out = v;
    return MC_OK;
}

mc_status mc_tensor_reshape(const mc_tensor *src, int ndim, const int64_t *shape, mc_tensor *out,
                            mc_err *err)
{
    if (!mc_tensor_check(src, "reshape", err))
        return err ? err->status : MC_ERR_ARG;
    if (ndim < 1 || ndim > MC_TENSOR_MAX_DIMS)
        return mc_err_set(err, MC_ERR_ARG, "reshape: ndim = %d (want 1..%d)", ndim,
                          MC_TENSOR_MAX_DIMS);
    if (src->transposed || src->scale_buf)
        return mc_err_set(err, MC_ERR_ARG, "reshape: src is a transposed or block-scaled weight");
    mc_tensor v = *src;
    v.ndim = ndim;
    memset(v.shape, 0, sizeof v.shape);
    memcpy(v.shape, shape, (size_t)ndim * sizeof *shape);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 1)
            return mc_err_set(err, MC_ERR_ARG, "reshape: shape[%d] = %lld", i,
                              (long long)shape[i]);
    /* compare element counts without overflow: both sides checked against INT64 range */
    double ne = 1;
    for (int i = 0; i < ndim; i++)
        ne *= (double)shape[i];
    if (ne != (double)mc_tensor_nelems(src) || ne > 9e18)
        return mc_err_set(err, MC_ERR_ARG, "reshape: %lld elements cannot take the new shape",
                          (long long)mc_tensor_nelems(src));
    int64_t cols = mc_tensor_cols(src);
    if (v.shape[ndim - 1] != cols) {
        if (src->row_stride != cols || mc_dtype_is_block(src->dtype))
            return mc_err_set(err, MC_ERR_ARG, "reshape: src is strided or block-quantized; only "
                              "its leading dimensions can change");
        v.row_stride = v.shape[ndim - 1];
    }
    if (!mc_tensor_check(&v, "reshape", err))
        return err ? err->status : MC_ERR_ARG;
    *out = v;
    return MC_OK;
}

static mc_status tensor_copy(const mc_tensor *t, void *host, int up, mc_err *err)
{
    const char *what = up ? "tensor_upload" : "tensor_download";
    if (!mc_tensor_check(t, what, err))
        return err ? err->status : MC_ERR_ARG;
    if (t->transposed)
        return mc_err_set(err, MC_ERR_ARG, "%s: tensor is transposed storage", what);
    int64_t rows = mc_tensor_rows(t);
    size_t rb = mc_dtype_row_bytes(t->dtype, mc_tensor_cols(t));
    size_t sb = mc_dtype_row_bytes(t->dtype, t->row_stride);
    if (rb == sb) /* contiguous: one copy */
        return up ? mc_buffer_upload(t->buf, t->offset, host, (size_t)rows * rb, err)
                  : mc_buffer_download(t->buf, t->offset, host, (size_t)rows * rb, err);
    for (int64_t r = 0; r < rows; r++) {
        size_t off = t->offset + (size_t)r * sb;
        unsigned char *h = (unsigned char *)host + (size_t)r * rb;
        mc_status st = up ? mc_buffer_upload(t->buf, off, h, rb, err)
                          : mc_buffer_download(t->buf, off, h, rb, err);
        if (st != MC_OK)
            return st;
    }
    return MC_OK;
}

mc_status mc_tensor_upload(mc_tensor *t, const void *host, mc_err *err)
{
    return tensor_copy(t, (void *)host, 1, err);
}

mc_status mc_tensor_download(const mc_tensor *t, void *host, mc_err *err)
{
    return tensor_copy(t, host, 0, err);
}
