/* test_backend.c - the backend interface (kernels/backend.h) on the CPU
 * backend, every op against a reference computed here in double precision
 * over weights dequantized here (scalar conversions of core/dtype.h, the
 * reference block dequantizers), on every kernel path this machine runs:
 *   - buffers: upload / download / memset round trips, offsets, alignment,
 *     borrowed host memory (read-only), ranges refused;
 *   - tensors: views of rows / columns (tensor-parallel slices) and reshapes
 *     read the parent's bytes; strided upload / download;
 *   - matmul for F32, F16, BF16, FP8 with 128x128 block scales, Q8_0, Q4_K,
 *     transposed storage, weight and activation views; the tolerance of the
 *     8-bit formats is derived from the activation quantization step;
 *   - rmsnorm, rope (interleaved and rotate-half, positions per token,
 *     partial rotation through a column view), swiglu, add, softmax, embed;
 *   - topk: ties to the lower column, NaN last, an id offset, the row's
 *     log-sum-exp, its refusals;
 *   - refusals: MC_ERR_ARG naming the argument for shape, dtype, range and
 *     aliasing errors;
 *   - probes and counters;
 *   - the CPU acting as a device (mc_backend_cpu_device_init): no host
 *     pointers or borrowing, repacked rows refused, the same products.
 * Prints the first mismatches of each case. */
#include "backend.h"
#include "check.h"
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnext(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float runi(float lo, float hi) { return lo + (hi - lo) * (float)((rnext() >> 40) / 16777216.0); }

static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = runi(-scale, scale);
}

static mc_backend *be;
static const char *path_now = "";

/* |got - want| <= tol[i] (or atol + rtol |want| when tol is NULL); prints
 * up to 5 mismatches. */
static void compare(const char *what, const float *got, const double *want, const double *tol,
                    size_t n, double rtol, double atol)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double t = tol ? tol[i] : atol + rtol * fabs(want[i]);
        if (!(fabs((double)got[i] - want[i]) <= t)) {
            if (bad < 5)
                fprintf(stderr, "  [%s] %s: [%zu] got %.9g want %.9g (tol %.3g)\n", path_now,
                        what, i, got[i], want[i], t);
            bad++;
        }
    }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "[%s] %s: %d of %zu values differ\n", path_now, what, bad, n);
    }
}

/* st must be `want` with a message that contains `needle`. */
static void expect_err(mc_status st, mc_err *err, mc_status want, const char *needle, int line)
{
    check_count++;
    if (st != want || !strstr(err->msg, needle)) {
        check_failures++;
        fprintf(stderr, "line %d: got %s '%s', want %s naming '%s'\n", line, mc_status_str(st),
                err->msg, mc_status_str(want), needle);
    }
    mc_err_clear(err);
}
#define EXPECT_ERR(call, want, needle)                                                             \
    do {                                                                                           \
        mc_err e_;                                                                                 \
        mc_err_clear(&e_);                                                                         \
        mc_err *err_ = &e_;                                                                        \
        (void)err_;                                                                                \
        expect_err((call), &e_, (want), (needle), __LINE__);                                       \
    } while (0)

#define OK(call)                                                                                   \
    do {                                                                                           \
        mc_err e_;                                                                                 \
        mc_err_clear(&e_);                                                                         \
        mc_err *err_ = &e_;                                                                        \
        mc_status s_ = (call);                                                                     \
        check_count++;                                                                             \
        if (s_ != MC_OK) {                                                                         \
            check_failures++;                                                                      \
            fprintf(stderr, "line %d: %s failed: %s\n", __LINE__, #call, e_.msg);                  \
        }                                                                                          \
    } while (0)

/* A buffer holding a copy of host bytes; freed by the caller. */
static mc_buffer *buf_from(const void *host, size_t bytes)
{
    mc_buffer *b = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (mc_buffer_alloc(be, bytes, &b, &e) != MC_OK || mc_buffer_upload(b, 0, host, bytes, &e)) {
        fprintf(stderr, "buffer: %s\n", e.msg);
        exit(1);
    }
    return b;
}

static mc_buffer *buf_new(size_t bytes)
{
    mc_buffer *b = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (mc_buffer_alloc(be, bytes, &b, &e) != MC_OK) {
        fprintf(stderr, "buffer: %s\n", e.msg);
        exit(1);
    }
    return b;
}

/* ---- buffers and tensors ---- */

static void test_buffers(void)
{
    enum { N = 1000 };
    unsigned char src[N], got[N];
    for (int i = 0; i < N; i++)
        src[i] = (unsigned char)rnext();
    mc_buffer *b = buf_new(N);
    CHECK(((uintptr_t)mc_buffer_host(b) & 63) == 0);
    CHECK(mc_buffer_size(b) == N && mc_buffer_backend(b) == be && !mc_buffer_read_only(b));
    OK(mc_buffer_upload(b, 0, src, N, err_));
    OK(mc_buffer_upload(b, 17, src, 100, err_)); /* at an offset */
    OK(mc_buffer_memset(b, 500, 0xAB, 30, err_));
    OK(mc_buffer_download(b, 0, got, N, err_));
    int bad = 0;
    for (int i = 0; i < N; i++) {
        unsigned char want = i >= 17 && i < 117 ? src[i - 17]
                             : i >= 500 && i < 530 ? 0xAB
                                                   : src[i];
        if (got[i] != want && bad++ < 5)
            fprintf(stderr, "buffer round trip: byte %d got %d want %d\n", i, got[i], want);
    }
    CHECK(bad == 0);
    EXPECT_ERR(mc_buffer_upload(b, 990, src, 11, err_), MC_ERR_ARG, "past the buffer");
    EXPECT_ERR(mc_buffer_download(b, N + 1, got, 0, err_), MC_ERR_ARG, "past the buffer");
    EXPECT_ERR(mc_buffer_memset(b, 0, 0, N + 1, err_), MC_ERR_ARG, "past the buffer");
    mc_buffer *tmp = NULL;
    EXPECT_ERR(mc_buffer_alloc(be, 0, &tmp, err_), MC_ERR_ARG, "bytes");
    mc_buffer_free(b);

    mc_buffer *big = buf_new(5u << 20); /* huge-page alignment from 4 MiB */
    CHECK(((uintptr_t)mc_buffer_host(big) & ((2u << 20) - 1)) == 0);
    mc_buffer_free(big);

    /* borrowed host memory: read without a copy, never written */
    mc_buffer *w = NULL;
    OK(mc_buffer_wrap_host(be, src, N, &w, err_));
    CHECK(mc_buffer_host(w) == (void *)src && mc_buffer_read_only(w));
    OK(mc_buffer_download(w, 3, got, 10, err_));
    CHECK(memcmp(got, src + 3, 10) == 0);
    EXPECT_ERR(mc_buffer_upload(w, 0, got, 1, err_), MC_ERR_ARG, "read-only");
    EXPECT_ERR(mc_buffer_memset(w, 0, 0, 1, err_), MC_ERR_ARG, "read-only");
    mc_buffer_free(w);
}

static void test_tensors(void)
{
    enum { R = 6, C = 10 };
    float h[R * C], got[R * C];
    for (int i = 0; i < R * C; i++)
        h[i] = (float)i;
    mc_buffer *b = buf_new(4096);
    mc_tensor t, v, v2;
    OK(mc_tensor_init_2d(&t, b, 64, MC_DT_F32, R, C, err_));
    OK(mc_tensor_upload(&t, h, err_));
    CHECK(mc_tensor_rows(&t) == R && mc_tensor_cols(&t) == C && mc_tensor_nelems(&t) == R * C);
    /* rows [2, 5), then columns [3, 7) of those: a strided 3x4 view */
    OK(mc_tensor_view_rows(&t, 2, 3, &v, err_));
    OK(mc_tensor_view_cols(&v, 3, 4, &v2, err_));
    OK(mc_tensor_download(&v2, got, err_));
    int bad = 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            if (got[r * 4 + c] != h[(2 + r) * C + 3 + c] && bad++ < 5)
                fprintf(stderr, "view [%d,%d] got %g\n", r, c, got[r * 4 + c]);
    CHECK(bad == 0);
    /* strided upload writes only the view's bytes */
    float z[12] = {0};
    OK(mc_tensor_upload(&v2, z, err_));
    OK(mc_tensor_download(&t, got, err_));
    bad = 0;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            int in = r >= 2 && r < 5 && c >= 3 && c < 7;
            if (got[r * C + c] != (in ? 0.0f : h[r * C + c]) && bad++ < 5)
                fprintf(stderr, "strided upload [%d,%d] got %g\n", r, c, got[r * C + c]);
        }
    CHECK(bad == 0);
    /* reshape (6, 10) -> (3, 2, 10) -> (60) */
    int64_t s3[3] = {3, 2, 10}, s1[1] = {60};
    OK(mc_tensor_reshape(&t, 3, s3, &v, err_));
    CHECK(v.ndim == 3 && mc_tensor_rows(&v) == 6 && v.row_stride == 10);
    OK(mc_tensor_reshape(&t, 1, s1, &v, err_));
    CHECK(mc_tensor_cols(&v) == 60 && v.row_stride == 60);
    EXPECT_ERR(mc_tensor_reshape(&v2, 2, (int64_t[]){4, 3}, &v, err_), MC_ERR_ARG, "strided");
    EXPECT_ERR(mc_tensor_reshape(&t, 1, (int64_t[]){59}, &v, err_), MC_ERR_ARG, "elements");
    /* out of range */
    EXPECT_ERR(mc_tensor_view_rows(&t, 4, 3, &v, err_), MC_ERR_ARG, "view_rows");
    EXPECT_ERR(mc_tensor_view_cols(&t, -1, 2, &v, err_), MC_ERR_ARG, "view_cols");
    EXPECT_ERR(mc_tensor_init_2d(&v, b, 4000, MC_DT_F32, 2, 30, err_), MC_ERR_ARG, "past its buffer");
    EXPECT_ERR(mc_tensor_init_2d(&v, b, 0, MC_DT_F32, 0, 3, err_), MC_ERR_ARG, "shape[0]");
    EXPECT_ERR(mc_tensor_init_strided(&v, b, 0, MC_DT_F32, 2, (int64_t[]){2, 8}, 7, err_),
               MC_ERR_ARG, "row_stride");
    /* block formats: column views start on a block */
    mc_tensor q;
    OK(mc_tensor_init_2d(&q, b, 0, MC_DT_Q4_K, 2, 512, err_));
    EXPECT_ERR(mc_tensor_view_cols(&q, 32, 256, &v, err_), MC_ERR_ARG, "Q4_K block");
    OK(mc_tensor_view_cols(&q, 256, 256, &v, err_));
    CHECK(v.offset == 144 && v.row_stride == 512);
    /* Q8_0 rows repacked for the CPU kernels (pack 1): row views keep the layout, column
     * views other than the whole row are refused, as is the layout on anything else */
    OK(mc_tensor_init_2d(&q, b, 0, MC_DT_Q8_0, 4, 256, err_));
    q.pack = 1;
    OK(mc_tensor_view_rows(&q, 1, 2, &v, err_));
    CHECK(v.pack == 1 && v.offset == 272);
    OK(mc_tensor_view_cols(&q, 0, 256, &v, err_));
    EXPECT_ERR(mc_tensor_view_cols(&q, 0, 128, &v, err_), MC_ERR_ARG, "repacked");
    EXPECT_ERR(mc_tensor_view_cols(&q, 32, 224, &v, err_), MC_ERR_ARG, "repacked");
    mc_tensor ids, ys;
    int32_t one = 0;
    mc_buffer *ib = buf_from(&one, sizeof one), *yb = buf_new(256 * 4);
    OK(mc_tensor_init(&ids, ib, 0, MC_DT_I32, 1, (int64_t[]){1}, err_));
    OK(mc_tensor_init_2d(&ys, yb, 0, MC_DT_F32, 1, 256, err_));
    EXPECT_ERR(mc_op_embed(be, &q, &ids, 0, &ys, err_), MC_ERR_ARG, "repacked");
    q.pack = 2;
    EXPECT_ERR(mc_op_embed(be, &q, &ids, 0, &ys, err_), MC_ERR_ARG, "layout 2");
    OK(mc_tensor_init_2d(&q, b, 0, MC_DT_Q4_K, 2, 512, err_));
    q.pack = 1;
    EXPECT_ERR(mc_op_embed(be, &q, &ids, 0, &ys, err_), MC_ERR_ARG, "on a Q4_K tensor");
    q.pack = 3; /* Q4_K's own layout: still no embedding table */
    EXPECT_ERR(mc_op_embed(be, &q, &ids, 0, &ys, err_), MC_ERR_ARG, "repacked");
    OK(mc_tensor_init_2d(&q, b, 0, MC_DT_Q8_0, 2, 480, err_));
    q.pack = 1;
    EXPECT_ERR(mc_op_embed(be, &q, &ids, 0, &ys, err_), MC_ERR_ARG, "multiple of 256");
    mc_buffer_free(ib);
    mc_buffer_free(yb);
    mc_buffer_free(b);
}

/* ---- matrix products ---- */

/* A weight under test: its stored bytes in a buffer and, for the reference,
 * W[o, i] dequantized here. */
typedef struct {
    mc_tensor w;
    mc_buffer *buf, *sbuf;
    double *ref; /* [O, I] */
} wmat;

static double decode(mc_dtype dt, const unsigned char *p, size_t i)
{
    uint16_t h;
    switch (dt) {
    case MC_DT_F32: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    case MC_DT_BF16:
        memcpy(&h, p + 2 * i, 2);
        return mc_bf16_to_f32(h);
    case MC_DT_F16:
        memcpy(&h, p + 2 * i, 2);
        return mc_f16_to_f32(h);
    default:
        return mc_fp8_e4m3_decode(p[i]);
    }
}

/* Random O x I weight of dtype dt (FP8: 128x128 block scales; transposed
 * storage when asked; wrapped host memory when borrow). */
static void make_w(wmat *m, mc_dtype dt, int O, int I, int transposed, int borrow, void **host)
{
    memset(m, 0, sizeof *m);
    float *f = malloc((size_t)O * I * sizeof *f);
    fill(f, (size_t)O * I, 1.0f);
    m->ref = malloc((size_t)O * I * sizeof *m->ref);
    mc_err e;
    mc_err_clear(&e);
    if (mc_dtype_is_block(dt)) {
        mc_mat src = {.dtype = MC_DT_F32, .rows = O, .cols = I, .row_stride = (size_t)I, .data = f};
        mc_mat q;
        void *store;
        if (mc_mat_quantize(&src, dt, &q, &store, &e) != MC_OK) {
            fprintf(stderr, "quantize: %s\n", e.msg);
            exit(1);
        }
        size_t rb = mc_dtype_row_bytes(dt, (int64_t)q.row_stride);
        float *row = malloc(q.row_stride * sizeof *row);
        for (int o = 0; o < O; o++) { /* the core reference dequantizer */
            mc_dequantize_row(dt, (const unsigned char *)store + (size_t)o * rb, row, I);
            for (int i = 0; i < I; i++)
                m->ref[(size_t)o * I + i] = row[i];
        }
        free(row);
        m->buf = buf_from(store, (size_t)O * rb);
        free(store);
        OK(mc_tensor_init_2d(&m->w, m->buf, 0, dt, O, I, err_));
        free(f);
        return;
    }
    size_t es = mc_dtype_size(dt), n = (size_t)O * I;
    unsigned char *raw = malloc(n * es);
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++) {
            size_t k = transposed ? (size_t)i * O + o : (size_t)o * I + i; /* storage index */
            float v = f[(size_t)o * I + i];
            if (dt == MC_DT_F32)
                memcpy(raw + 4 * k, &v, 4);
            else if (dt == MC_DT_BF16) {
                uint16_t h = mc_f32_to_bf16(v);
                memcpy(raw + 2 * k, &h, 2);
            } else if (dt == MC_DT_F16) {
                uint16_t h = mc_f32_to_f16(v);
                memcpy(raw + 2 * k, &h, 2);
            } else {
                raw[k] = mc_f32_to_fp8_e4m3(v * 300.0f);
            }
            m->ref[(size_t)o * I + i] = decode(dt, raw, k);
        }
    if (borrow) {
        OK(mc_buffer_wrap_host(be, raw, n * es, &m->buf, err_));
        *host = raw;
    } else {
        m->buf = buf_from(raw, n * es);
        free(raw);
    }
    if (transposed)
        OK(mc_tensor_init_transposed(&m->w, m->buf, 0, dt, O, I, O, err_));
    else
        OK(mc_tensor_init_2d(&m->w, m->buf, 0, dt, O, I, err_));
    if (dt == MC_DT_F8_E4M3) {
        int sr = (O + 127) / 128, sc = (I + 127) / 128;
        float *s = malloc((size_t)sr * sc * sizeof *s);
        for (int i = 0; i < sr * sc; i++)
            s[i] = runi(0.5f, 2.0f) / 300.0f;
        for (int o = 0; o < O; o++)
            for (int i = 0; i < I; i++) /* the kernels scale the widened f32 in f32 */
                m->ref[(size_t)o * I + i] =
                    (float)m->ref[(size_t)o * I + i] * s[(o / 128) * sc + i / 128];
        m->sbuf = buf_from(s, (size_t)sr * sc * sizeof *s);
        mc_tensor st;
        OK(mc_tensor_init_2d(&st, m->sbuf, 0, MC_DT_F32, sr, sc, err_));
        OK(mc_tensor_set_scales(&m->w, &st, 128, 128, err_));
        free(s);
    }
    free(f);
}

static void free_w(wmat *m)
{
    mc_buffer_free(m->buf);
    mc_buffer_free(m->sbuf);
    free(m->ref);
}

/* y = x W^T over rows [r0, r0+nr) and columns [c0, c0+nc) of m (a view),
 * n tokens, x and y strided views; checked against the double reference. */
static void matmul_case(const wmat *m, int I_full, int r0, int nr, int c0, int nc, int n,
                        const char *what)
{
    mc_tensor wv = m->w;
    if (nr != wv.shape[0] || r0)
        OK(mc_tensor_view_rows(&wv, r0, nr, &wv, err_));
    if (nc != wv.shape[1] || c0)
        OK(mc_tensor_view_cols(&wv, c0, nc, &wv, err_));
    int ldx = nc + 5, ldy = nr + 3;
    float *x = malloc((size_t)n * ldx * sizeof *x), *y = malloc((size_t)n * nr * sizeof *y);
    fill(x, (size_t)n * ldx, 2.0f);
    mc_buffer *xb = buf_from(x, (size_t)n * ldx * sizeof *x);
    mc_buffer *yb = buf_new((size_t)n * ldy * sizeof *y);
    OK(mc_buffer_memset(yb, 0, 0xff, (size_t)n * ldy * sizeof *y, err_)); /* NaN: all written */
    mc_tensor xt, yt;
    OK(mc_tensor_init_strided(&xt, xb, 0, MC_DT_F32, 2, (int64_t[]){n, nc}, ldx, err_));
    OK(mc_tensor_init_strided(&yt, yb, 0, MC_DT_F32, 2, (int64_t[]){n, nr}, ldy, err_));
    OK(mc_op_matmul(be, &wv, &xt, &yt, err_));
    OK(mc_tensor_download(&yt, y, err_));
    double *want = malloc((size_t)n * nr * sizeof *want), *tol = malloc((size_t)n * nr * sizeof *tol);
    int blk = m->w.dtype == MC_DT_Q8_0 ? 32 : m->w.dtype == MC_DT_Q4_K ? 256 : 0;
    for (int t = 0; t < n; t++)
        for (int o = 0; o < nr; o++) {
            const double *wr = m->ref + (size_t)(r0 + o) * I_full + c0;
            const float *xr = x + (size_t)t * ldx;
            double s = 0, mag = 0, qerr = 0;
            for (int i = 0; i < nc; i++) {
                s += wr[i] * xr[i];
                mag += fabs(wr[i] * xr[i]);
            }
            if (blk) { /* x is rounded to amax/127 steps per block: |error| <= amax/254 */
                for (int b0 = 0; b0 < nc; b0 += blk) {
                    double amax = 0, wsum = 0;
                    for (int i = b0; i < nc && i < b0 + blk; i++) {
                        amax = fmax(amax, fabs(xr[i]));
                        wsum += fabs(wr[i]);
                    }
                    qerr += wsum * amax / 254.0 * 1.0001;
                }
            }
            want[(size_t)t * nr + o] = s;
            tol[(size_t)t * nr + o] = qerr + 2e-6 * mag + 1e-6;
        }
    compare(what, y, want, tol, (size_t)n * nr, 0, 0);
    free(x);
    free(y);
    free(want);
    free(tol);
    mc_buffer_free(xb);
    mc_buffer_free(yb);
}

static void test_matmul(void)
{
    static const mc_dtype types[] = {MC_DT_F32, MC_DT_F16,  MC_DT_BF16,
                                     MC_DT_F8_E4M3, MC_DT_Q8_0, MC_DT_Q4_K};
    char what[96];
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        mc_dtype dt = types[k];
        int O = 200, I = dt == MC_DT_Q4_K ? 512 : 300;
        wmat m;
        void *host = NULL;
        make_w(&m, dt, O, I, 0, dt == MC_DT_BF16, &host);
        for (int n = 1; n <= 7; n += 6) {
            snprintf(what, sizeof what, "matmul %s n=%d", mc_dtype_name(dt), n);
            matmul_case(&m, I, 0, O, 0, I, n, what);
        }
        /* tensor-parallel slices: rows from 128 (a scale block), columns from a block */
        int c0 = dt == MC_DT_Q4_K ? 256 : 128, nc = I - c0;
        snprintf(what, sizeof what, "matmul %s row view", mc_dtype_name(dt));
        matmul_case(&m, I, 128, O - 128, 0, I, 3, what);
        snprintf(what, sizeof what, "matmul %s column view", mc_dtype_name(dt));
        matmul_case(&m, I, 0, O, c0, nc, 3, what);
        free_w(&m);
        free(host);
    }
    /* transposed storage (Llama 4 fused experts) */
    static const mc_dtype tt[] = {MC_DT_F32, MC_DT_BF16};
    for (int k = 0; k < 2; k++) {
        wmat m;
        make_w(&m, tt[k], 70, 90, 1, 0, NULL);
        snprintf(what, sizeof what, "matmul %s transposed", mc_dtype_name(tt[k]));
        matmul_case(&m, 90, 0, 70, 0, 90, 4, what);
        snprintf(what, sizeof what, "matmul %s transposed view", mc_dtype_name(tt[k]));
        matmul_case(&m, 90, 10, 50, 20, 60, 2, what);
        free_w(&m);
    }
}

/* ---- element-wise ops ---- */

/* An F32 tensor (rows, cols) holding host values, rows `ld` apart. */
static mc_buffer *act(mc_tensor *t, const float *h, int rows, int cols, int ld)
{
    mc_buffer *b = buf_new((size_t)rows * ld * sizeof(float));
    OK(mc_tensor_init_strided(t, b, 0, MC_DT_F32, 2, (int64_t[]){rows, cols}, ld, err_));
    OK(mc_tensor_upload(t, h, err_));
    return b;
}

static void test_rmsnorm_softmax(void)
{
    enum { R = 5, D = 67 };
    float x[R * D], w[D], y[R * D];
    double want[R * D];
    fill(x, R * D, 3.0f);
    fill(w, D, 1.5f);
    mc_tensor xt, wt, yt;
    mc_buffer *xb = act(&xt, x, R, D, D + 4), *wb = act(&wt, w, 1, D, D), *yb = act(&yt, x, R, D, D);
    for (int with_w = 0; with_w < 2; with_w++)
        for (int in_place = 0; in_place < 2; in_place++) {
            OK(mc_tensor_upload(&xt, x, err_));
            mc_tensor *out = in_place ? &xt : &yt;
            OK(mc_op_rmsnorm(be, &xt, with_w ? &wt : NULL, 1e-5f, out, err_));
            OK(mc_tensor_download(out, y, err_));
            for (int r = 0; r < R; r++) {
                double ss = 0;
                for (int i = 0; i < D; i++)
                    ss += (double)x[r * D + i] * x[r * D + i];
                double inv = 1.0 / sqrt(ss / D + 1e-5);
                for (int i = 0; i < D; i++)
                    want[r * D + i] = x[r * D + i] * inv * (with_w ? w[i] : 1.0);
            }
            compare(with_w ? "rmsnorm w" : "rmsnorm", y, want, NULL, R * D, 2e-6, 1e-6);
        }
    OK(mc_tensor_upload(&xt, x, err_));
    OK(mc_op_softmax(be, &xt, &yt, err_));
    OK(mc_tensor_download(&yt, y, err_));
    for (int r = 0; r < R; r++) {
        double mx = -INFINITY, s = 0;
        for (int i = 0; i < D; i++)
            mx = fmax(mx, x[r * D + i]);
        for (int i = 0; i < D; i++)
            s += exp(x[r * D + i] - mx);
        for (int i = 0; i < D; i++)
            want[r * D + i] = exp(x[r * D + i] - mx) / s;
    }
    compare("softmax", y, want, NULL, R * D, 2e-6, 1e-7);
    OK(mc_op_softmax(be, &xt, &xt, err_)); /* in place */
    OK(mc_tensor_download(&xt, y, err_));
    compare("softmax in place", y, want, NULL, R * D, 2e-6, 1e-7);
    mc_buffer_free(xb);
    mc_buffer_free(wb);
    mc_buffer_free(yb);
}

static void test_swiglu_add(void)
{
    enum { R = 3, D = 45 };
    float g[R * D], u[R * D], y[R * D];
    double want[R * D];
    fill(g, R * D, 4.0f);
    fill(u, R * D, 2.0f);
    for (int i = 0; i < R * D; i++)
        want[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    for (int mode = 0; mode < 3; mode++) { /* y separate, y = g, y = u */
        mc_tensor gt, ut, yt;
        mc_buffer *gb = act(&gt, g, R, D, D + 1), *ub = act(&ut, u, R, D, D),
                  *yb = act(&yt, g, R, D, D + 2);
        mc_tensor *out = mode == 0 ? &yt : mode == 1 ? &gt : &ut;
        OK(mc_op_swiglu(be, &gt, &ut, out, err_));
        OK(mc_tensor_download(out, y, err_));
        compare(mode == 0 ? "swiglu" : mode == 1 ? "swiglu y=g" : "swiglu y=u", y, want, NULL,
                R * D, 2e-6, 1e-7);
        /* residual add, exact: y = a + b in f32 */
        OK(mc_tensor_upload(&gt, g, err_));
        OK(mc_tensor_upload(&ut, u, err_));
        OK(mc_op_add(be, &gt, &ut, out, err_));
        OK(mc_tensor_download(out, y, err_));
        double sum[R * D];
        for (int i = 0; i < R * D; i++)
            sum[i] = (float)(g[i] + u[i]);
        compare("add", y, sum, NULL, R * D, 0, 0);
        mc_buffer_free(gb);
        mc_buffer_free(ub);
        mc_buffer_free(yb);
    }
}

/* Rotates x (n, heads, hd) at columns [c0, c0 + rd) of each head, token t
 * at pos[t], and compares with a double-precision rotation. */
static void rope_case(int interleaved, int n, int heads, int hd, int c0, int rd)
{
    enum { P = 40 };
    int half = rd / 2;
    float *x = malloc((size_t)n * heads * hd * sizeof *x), *y = malloc((size_t)n * heads * hd * 4);
    float cs[P * 64], sn[P * 64];
    double *want = malloc((size_t)n * heads * hd * sizeof *want);
    int32_t pos[16];
    fill(x, (size_t)n * heads * hd, 1.0f);
    for (int p = 0; p < P; p++)
        for (int i = 0; i < half; i++) {
            double ang = p * pow(10000.0, -2.0 * i / rd);
            cs[p * half + i] = (float)cos(ang);
            sn[p * half + i] = (float)sin(ang);
        }
    for (int t = 0; t < n; t++) /* sequences at different positions, not in order */
        pos[t] = (int32_t)((t * 13 + 7) % P);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++) {
            const float *v = x + ((size_t)t * heads + h) * hd;
            double *o = want + ((size_t)t * heads + h) * hd;
            for (int i = 0; i < hd; i++)
                o[i] = v[i];
            for (int i = 0; i < half; i++) {
                int a = c0 + (interleaved ? 2 * i : i), b = c0 + (interleaved ? 2 * i + 1 : i + half);
                double c = cs[pos[t] * half + i], s = sn[pos[t] * half + i];
                o[a] = v[a] * c - v[b] * s;
                o[b] = v[a] * s + v[b] * c;
            }
        }
    mc_tensor xt, xv, pt, ct, st;
    mc_buffer *xb = buf_from(x, (size_t)n * heads * hd * 4), *pb = buf_from(pos, (size_t)n * 4);
    mc_buffer *cb = buf_from(cs, sizeof cs), *sb = buf_from(sn, sizeof sn);
    OK(mc_tensor_init(&xt, xb, 0, MC_DT_F32, 3, (int64_t[]){n, heads, hd}, err_));
    OK(mc_tensor_view_cols(&xt, c0, rd, &xv, err_));
    OK(mc_tensor_init(&pt, pb, 0, MC_DT_I32, 1, (int64_t[]){n}, err_));
    OK(mc_tensor_init_2d(&ct, cb, 0, MC_DT_F32, P, half, err_));
    OK(mc_tensor_init_2d(&st, sb, 0, MC_DT_F32, P, half, err_));
    OK(mc_op_rope(be, &xv, &pt, &ct, &st, interleaved, err_));
    OK(mc_tensor_download(&xt, y, err_));
    char what[80];
    snprintf(what, sizeof what, "rope %s heads=%d cols [%d, %d)",
             interleaved ? "interleaved" : "rotate-half", heads, c0, c0 + rd);
    compare(what, y, want, NULL, (size_t)n * heads * hd, 1e-6, 1e-6);
    /* a position past the tables is refused before anything is rotated */
    pos[n - 1] = P;
    OK(mc_buffer_upload(pb, 0, pos, (size_t)n * 4, err_));
    EXPECT_ERR(mc_op_rope(be, &xv, &pt, &ct, &st, interleaved, err_), MC_ERR_ARG, "pos[");
    OK(mc_tensor_download(&xt, x, err_));
    check_count++;
    if (memcmp(x, y, (size_t)n * heads * hd * 4) != 0) {
        check_failures++;
        fprintf(stderr, "rope refusal changed x\n");
    }
    mc_buffer_free(xb);
    mc_buffer_free(pb);
    mc_buffer_free(cb);
    mc_buffer_free(sb);
    free(x);
    free(y);
    free(want);
}

static void test_embed(void)
{
    static const mc_dtype types[] = {MC_DT_F32, MC_DT_BF16, MC_DT_F8_E4M3, MC_DT_Q8_0, MC_DT_Q4_K};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        int V = 150, H = types[k] == MC_DT_Q4_K ? 256 : 96, n = 6;
        wmat m;
        make_w(&m, types[k], V, H, 0, 0, NULL);
        /* a vocabulary slice [100, 250) of a larger vocabulary */
        int64_t id0 = 100, ids64[6] = {100, 249, 5, 250, 180, 100};
        int32_t ids32[6];
        for (int i = 0; i < n; i++)
            ids32[i] = (int32_t)ids64[i];
        for (int wide = 0; wide < 2; wide++) {
            mc_buffer *ib = wide ? buf_from(ids64, sizeof ids64) : buf_from(ids32, sizeof ids32);
            mc_buffer *yb = buf_new((size_t)n * H * 4);
            mc_tensor it, yt;
            OK(mc_tensor_init(&it, ib, 0, wide ? MC_DT_I64 : MC_DT_I32, 1, (int64_t[]){n}, err_));
            OK(mc_tensor_init_2d(&yt, yb, 0, MC_DT_F32, n, H, err_));
            OK(mc_op_embed(be, &m.w, &it, id0, &yt, err_));
            float *y = malloc((size_t)n * H * 4);
            double *want = calloc((size_t)n * H, sizeof *want);
            OK(mc_tensor_download(&yt, y, err_));
            for (int t = 0; t < n; t++)
                if (ids64[t] >= id0 && ids64[t] < id0 + V)
                    for (int i = 0; i < H; i++)
                        want[(size_t)t * H + i] = m.ref[(size_t)(ids64[t] - id0) * H + i];
            char what[64];
            snprintf(what, sizeof what, "embed %s ids %s", mc_dtype_name(types[k]),
                     wide ? "I64" : "I32");
            compare(what, y, want, NULL, (size_t)n * H, 0, 0);
            free(y);
            free(want);
            mc_buffer_free(ib);
            mc_buffer_free(yb);
        }
        free_w(&m);
    }
}

/* topk against a selection made here: rows with ties (many equal values,
 * the lower column first), a NaN (after every number), -inf, k = 1, 7, 64
 * and k = the row's length, an id offset; lse against the double sum. */
static void test_topk(void)
{
    const int R = 5, V = 300;
    float *x = malloc((size_t)R * V * sizeof *x);
    for (int i = 0; i < R * V; i++)
        x[i] = (float)((int)(rnext() % 41) - 20) / 4.0f; /* many ties */
    x[1 * V + 7] = NAN;
    x[1 * V + 8] = 1e30f;
    x[2 * V + 299] = INFINITY; /* a row whose lse is +inf */
    x[3 * V + 0] = -INFINITY;
    for (int i = 0; i < V; i++)
        x[4 * V + i] = 2.5f; /* all equal: the first k columns */
    static const int ks[] = {1, 7, 64, 300};
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
        int k = ks[ki] > MC_TOPK_MAX ? MC_TOPK_MAX : ks[ki];
        int64_t cols = ks[ki] > MC_TOPK_MAX ? k : V; /* k = V: a view of the first k columns */
        mc_buffer *xb = buf_from(x, (size_t)R * V * sizeof *x);
        mc_buffer *ib = buf_new((size_t)R * k * 4), *vb = buf_new((size_t)R * k * 4);
        mc_buffer *lb = buf_new((size_t)R * 2 * 4);
        mc_tensor xt, xv, it, vt, lt;
        OK(mc_tensor_init_2d(&xt, xb, 0, MC_DT_F32, R, V, err_));
        OK(mc_tensor_view_cols(&xt, 0, cols, &xv, err_));
        OK(mc_tensor_init_2d(&it, ib, 0, MC_DT_I32, R, k, err_));
        OK(mc_tensor_init_2d(&vt, vb, 0, MC_DT_F32, R, k, err_));
        OK(mc_tensor_init_2d(&lt, lb, 0, MC_DT_F32, R, 2, err_));
        OK(mc_op_topk(be, &xv, k, 1000, &it, &vt, &lt, err_));
        int32_t *ids = malloc((size_t)R * k * 4);
        float *vals = malloc((size_t)R * k * 4), lse[2 * 5];
        OK(mc_tensor_download(&it, ids, err_));
        OK(mc_tensor_download(&vt, vals, err_));
        OK(mc_tensor_download(&lt, lse, err_));
        int bad = 0;
        for (int r = 0; r < R; r++) {
            /* the reference: k times the first best column not taken yet */
            char taken[300] = {0};
            const float *xr = x + (size_t)r * V;
            for (int j = 0; j < k; j++) {
                int b = -1;
                for (int i = 0; i < cols; i++) {
                    if (taken[i])
                        continue;
                    int better = b < 0 || (isnan(xr[b]) ? !isnan(xr[i]) : !isnan(xr[i]) && xr[i] > xr[b]);
                    if (better)
                        b = i;
                }
                taken[b] = 1;
                float got = vals[r * k + j];
                if (ids[r * k + j] != b + 1000 ||
                    !(got == xr[b] || (isnan(got) && isnan(xr[b])))) {
                    if (bad++ < 5)
                        fprintf(stderr, "  topk k=%d row %d pick %d: got id %d (%g), want %d (%g)\n",
                                k, r, j, ids[r * k + j], got, b + 1000, xr[b]);
                }
            }
            double m = -INFINITY, sum = 0;
            for (int i = 0; i < cols; i++)
                m = !isnan(xr[i]) && xr[i] > m ? xr[i] : m;
            for (int i = 0; i < cols; i++)
                sum += exp((double)xr[i] - m);
            double want = m + log(sum), got = (double)lse[2 * r] + (double)lse[2 * r + 1];
            int same = (isnan(want) && isnan(got)) || want == got ||
                       fabs(got - want) <= 1e-13 * fabs(want);
            if (!same && bad++ < 5)
                fprintf(stderr, "  topk k=%d row %d lse: got %.17g want %.17g\n", k, r, got, want);
        }
        check_count++;
        if (bad) {
            check_failures++;
            fprintf(stderr, "topk k=%d: %d mismatches\n", k, bad);
        }
        OK(mc_op_topk(be, &xv, k, 0, &it, &vt, NULL, err_)); /* lse optional */
        EXPECT_ERR(mc_op_topk(be, &xv, 0, 0, &it, &vt, NULL, err_), MC_ERR_ARG, "k = 0");
        EXPECT_ERR(mc_op_topk(be, &xv, MC_TOPK_MAX + 1, 0, &it, &vt, NULL, err_), MC_ERR_ARG,
                   "is not in 1..64");
        EXPECT_ERR(mc_op_topk(be, &xv, k, INT32_MAX, &it, &vt, NULL, err_), MC_ERR_ARG,
                   "do not fit I32");
        EXPECT_ERR(mc_op_topk(be, &xv, k, 0, &vt, &vt, NULL, err_), MC_ERR_ARG, "ids is F32");
        free(ids);
        free(vals);
        mc_buffer_free(xb);
        mc_buffer_free(ib);
        mc_buffer_free(vb);
        mc_buffer_free(lb);
    }
    free(x);
}

/* ---- refusals ---- */

static void test_refusals(void)
{
    mc_buffer *b = buf_new(1 << 16);
    mc_tensor w, x, y, xi, yb16, pos64, cs, t;
    OK(mc_tensor_init_2d(&w, b, 0, MC_DT_F32, 8, 16, err_));     /* bytes [0, 512) */
    OK(mc_tensor_init_2d(&x, b, 1024, MC_DT_F32, 3, 16, err_));  /* [1024, 1216) */
    OK(mc_tensor_init_2d(&y, b, 2048, MC_DT_F32, 3, 8, err_));   /* [2048, 2144) */
    OK(mc_tensor_init_2d(&xi, b, 4096, MC_DT_I32, 3, 16, err_));
    OK(mc_tensor_init_2d(&yb16, b, 8192, MC_DT_BF16, 3, 16, err_));
    OK(mc_tensor_init(&pos64, b, 12288, MC_DT_I64, 1, (int64_t[]){3}, err_));
    OK(mc_tensor_init_2d(&cs, b, 16384, MC_DT_F32, 10, 8, err_));
    OK(mc_buffer_memset(b, 0, 0, 1 << 16, err_));
    /* shapes */
    OK(mc_tensor_view_cols(&x, 0, 15, &t, err_));
    EXPECT_ERR(mc_op_matmul(be, &w, &t, &y, err_), MC_ERR_ARG, "matmul: x has 15 columns");
    OK(mc_tensor_view_cols(&y, 0, 7, &t, err_));
    EXPECT_ERR(mc_op_matmul(be, &w, &x, &t, err_), MC_ERR_ARG, "matmul: y");
    EXPECT_ERR(mc_op_add(be, &x, &y, &y, err_), MC_ERR_ARG, "add: b");
    EXPECT_ERR(mc_op_rmsnorm(be, &x, &w, 1e-5f, &x, err_), MC_ERR_ARG, "rmsnorm: w");
    EXPECT_ERR(mc_op_embed(be, &w, &x, 0, &y, err_), MC_ERR_ARG, "embed: ids");
    /* dtypes an op does not take */
    EXPECT_ERR(mc_op_matmul(be, &xi, &x, &y, err_), MC_ERR_ARG, "matmul: w");
    EXPECT_ERR(mc_op_matmul(be, &w, &xi, &y, err_), MC_ERR_ARG, "matmul: x");
    EXPECT_ERR(mc_op_rmsnorm(be, &yb16, NULL, 1e-5f, &yb16, err_), MC_ERR_ARG, "rmsnorm: x");
    EXPECT_ERR(mc_op_softmax(be, &x, &yb16, err_), MC_ERR_ARG, "softmax: y");
    EXPECT_ERR(mc_op_swiglu(be, &x, &xi, &x, err_), MC_ERR_ARG, "swiglu: u");
    EXPECT_ERR(mc_op_rope(be, &x, &pos64, &cs, &cs, 0, err_), MC_ERR_ARG, "rope: pos");
    /* aliasing: an output that overlaps an input it may not be */
    OK(mc_tensor_view_cols(&x, 0, 8, &t, err_));
    EXPECT_ERR(mc_op_matmul(be, &w, &x, &t, err_), MC_ERR_ARG, "overlaps");
    OK(mc_tensor_view_rows(&x, 1, 2, &t, err_));
    mc_tensor t2;
    OK(mc_tensor_view_rows(&x, 0, 2, &t2, err_));
    EXPECT_ERR(mc_op_add(be, &t, &t, &t2, err_), MC_ERR_ARG, "add: y: output overlaps");
    /* views and malformed tensors */
    EXPECT_ERR(mc_tensor_view_rows(&w, 6, 3, &t, err_), MC_ERR_ARG, "view_rows: [6, 6 + 3)");
    t = x;
    t.offset = (1 << 16) - 8;
    EXPECT_ERR(mc_op_softmax(be, &t, &y, err_), MC_ERR_ARG, "softmax: x: bytes");
    t = x;
    t.ndim = 5;
    EXPECT_ERR(mc_op_softmax(be, &x, &t, err_), MC_ERR_ARG, "softmax: y: 5 dimensions");
    EXPECT_ERR(mc_op_softmax(be, NULL, &y, err_), MC_ERR_ARG, "softmax: x: tensor is NULL");
    /* FP8 scaled views start on a scale block */
    mc_tensor f8, sc;
    OK(mc_tensor_init_2d(&f8, b, 0, MC_DT_F8_E4M3, 256, 200, err_));
    OK(mc_tensor_init_2d(&sc, b, 60000, MC_DT_F32, 2, 2, err_));
    EXPECT_ERR(mc_tensor_set_scales(&f8, &sc, 128, 64, err_), MC_ERR_ARG, "set_scales: scale");
    OK(mc_tensor_set_scales(&f8, &sc, 128, 128, err_));
    EXPECT_ERR(mc_tensor_view_rows(&f8, 64, 64, &t, err_), MC_ERR_ARG, "scale block");
    EXPECT_ERR(mc_tensor_view_cols(&f8, 100, 100, &t, err_), MC_ERR_ARG, "scale block");
    /* read-only output; a tensor of another backend */
    mc_buffer *ro = NULL;
    static float host[64];
    OK(mc_buffer_wrap_host(be, host, sizeof host, &ro, err_));
    OK(mc_tensor_init_2d(&t, ro, 0, MC_DT_F32, 3, 8, err_));
    EXPECT_ERR(mc_op_matmul(be, &w, &x, &t, err_), MC_ERR_ARG, "read-only");
    mc_backend *other = NULL;
    OK(mc_backend_cpu_init(&other, err_));
    mc_buffer *ob = NULL;
    OK(mc_buffer_alloc(other, 1024, &ob, err_));
    OK(mc_tensor_init_2d(&t, ob, 0, MC_DT_F32, 3, 16, err_));
    EXPECT_ERR(mc_op_matmul(be, &w, &t, &y, err_), MC_ERR_ARG, "matmul: x: tensor is on");
    mc_buffer_free(ob);
    mc_backend_free(other);
    mc_buffer_free(ro);
    EXPECT_ERR(mc_backend_set_path(be, "sse9", err_), MC_ERR_ARG, "sse9");
    mc_buffer_free(b);
}

/* ---- probes and counters ---- */

static void test_probes(void)
{
    wmat m;
    make_w(&m, MC_DT_Q8_0, 64, 128, 0, 0, NULL);
    mc_buffer *xb = buf_new(4 * 128 * 4), *yb = buf_new(4 * 64 * 4);
    OK(mc_buffer_memset(xb, 0, 0, 4 * 128 * 4, err_));
    mc_tensor x, y;
    OK(mc_tensor_init_2d(&x, xb, 0, MC_DT_F32, 4, 128, err_));
    OK(mc_tensor_init_2d(&y, yb, 0, MC_DT_F32, 4, 64, err_));
    mc_backend_count(be, 1);
    OK(mc_op_matmul(be, &m.w, &x, &y, err_));
    mc_backend_counters c;
    mc_backend_counters_get(be, &c);
    mc_backend_count(be, 0);
    CHECK(c.bytes_read == 64 * mc_dtype_row_bytes(MC_DT_Q8_0, 128));
    CHECK(c.macs == 64ull * 128 * 4);
    CHECK(mc_backend_threads(be) >= 1);
    CHECK(strlen(mc_backend_path(be)) > 0 && mc_backend_features(be) != NULL);
    CHECK(strcmp(mc_backend_name(be), "cpu") == 0 && mc_backend_kind(be) == MC_DEVICE_CPU);
    CHECK(mc_backend_probe_read_gbps(be, 8u << 20, 1, 0.01) > 0);
    CHECK(mc_backend_probe_fma_gflops(be, 1, 0.01) > 0);
    OK(mc_backend_synchronize(be, err_));
    mc_buffer_free(xb);
    mc_buffer_free(yb);
    free_w(&m);
}

/* ---- the CPU acting as a device (mc_backend_cpu_device_init) ----
 * Its memory is reached only by upload / download (no host pointer, no
 * borrowing), the CPU kernels' repacked rows are refused, and otherwise its
 * ops are the CPU backend's: the same bytes give the same results bit for
 * bit. */
static void test_cpu_device(void)
{
    enum { O = 5, I = 256, N = 3 };
    mc_backend *dev = NULL;
    OK(mc_backend_cpu_device_init(&dev, err_));
    if (!dev)
        return;
    CHECK(strcmp(mc_backend_name(dev), "cpu-device") == 0);
    CHECK(mc_backend_host_memory(dev) == 0 && mc_backend_host_memory(be) == 1);
    float wf[O * I], x[N * I], yh[N * O], yd[N * O];
    fill(wf, O * I, 1.0f);
    fill(x, N * I, 2.0f);
    mc_mat src = {.dtype = MC_DT_F32, .rows = O, .cols = I, .row_stride = I, .data = wf}, q;
    void *store = NULL;
    OK(mc_mat_quantize(&src, MC_DT_Q8_0, &q, &store, err_));
    size_t wbytes = (size_t)O * mc_dtype_row_bytes(MC_DT_Q8_0, I);
    mc_buffer *wb[2] = {NULL, NULL}, *xb[2] = {NULL, NULL}, *yb[2] = {NULL, NULL};
    mc_backend *bs[2] = {be, dev};
    for (int k = 0; k < 2; k++) {
        OK(mc_buffer_alloc(bs[k], wbytes, &wb[k], err_));
        OK(mc_buffer_alloc(bs[k], sizeof x, &xb[k], err_));
        OK(mc_buffer_alloc(bs[k], sizeof yh, &yb[k], err_));
        OK(mc_buffer_upload(wb[k], 0, q.data, wbytes, err_));
        OK(mc_buffer_upload(xb[k], 0, x, sizeof x, err_));
        OK(mc_buffer_memset(yb[k], 0, 0xff, sizeof yh, err_)); /* NaN: every output written */
    }
    CHECK(mc_buffer_host(wb[1]) == NULL && mc_buffer_host(xb[1]) == NULL);
    mc_buffer *w = NULL;
    EXPECT_ERR(mc_buffer_wrap_host(dev, x, sizeof x, &w, err_), MC_ERR_UNSUPPORTED,
               "cpu-device backend cannot borrow host memory");
    mc_tensor tw[2], tx[2], ty[2];
    for (int k = 0; k < 2; k++) {
        OK(mc_tensor_init_2d(&tw[k], wb[k], 0, MC_DT_Q8_0, O, I, err_));
        OK(mc_tensor_init_2d(&tx[k], xb[k], 0, MC_DT_F32, N, I, err_));
        OK(mc_tensor_init_2d(&ty[k], yb[k], 0, MC_DT_F32, N, O, err_));
        OK(mc_op_matmul(bs[k], &tw[k], &tx[k], &ty[k], err_));
    }
    OK(mc_buffer_download(yb[0], 0, yh, sizeof yh, err_));
    OK(mc_buffer_download(yb[1], 0, yd, sizeof yd, err_));
    int same = memcmp(yh, yd, sizeof yh) == 0, finite = 1;
    for (int i = 0; i < N * O; i++)
        finite &= isfinite(yd[i]);
    if (!same || !finite)
        fprintf(stderr, "cpu-device matmul: y[0] %.9g vs the CPU backend's %.9g\n", yd[0], yh[0]);
    CHECK(same && finite);
    /* repacked rows (as mc_mat_pack leaves them) are the CPU kernels' only: refused, y kept */
    OK(mc_buffer_memset(yb[1], 0, 0xff, sizeof yd, err_));
    tw[1].pack = 1;
    EXPECT_ERR(mc_op_matmul(dev, &tw[1], &tx[1], &ty[1], err_), MC_ERR_ARG,
               "are read by the CPU kernels only; the cpu-device backend reads weights as stored");
    uint32_t poison[N * O];
    OK(mc_buffer_download(yb[1], 0, poison, sizeof poison, err_));
    int kept = 1;
    for (int i = 0; i < N * O; i++)
        kept &= poison[i] == 0xffffffffu;
    CHECK(kept);
    for (int k = 0; k < 2; k++) {
        mc_buffer_free(wb[k]);
        mc_buffer_free(xb[k]);
        mc_buffer_free(yb[k]);
    }
    free(store);
    mc_backend_free(dev);
}

/* ---- non-finite values noted without a wait (mc_op_note_nonfinite) ----
 * On both CPU backends: nothing noted over finite rows; the first NaN or
 * infinity in row-major order of a strided view, with its value; a second
 * call's note is not kept over the first; the take hands it over once. */
static void test_note_nonfinite(void)
{
    enum { R = 4, D = 37, LD = 41 };
    mc_backend *dev = NULL;
    OK(mc_backend_cpu_device_init(&dev, err_));
    if (!dev)
        return;
    CHECK(mc_backend_sync_checks(be) == 1 && mc_backend_sync_checks(dev) == 0);
    CHECK(mc_backend_set_sync_checks(dev, 1) == 0 && mc_backend_sync_checks(dev) == 1);
    CHECK(mc_backend_set_sync_checks(dev, 0) == 1 && mc_backend_sync_checks(dev) == 0);
    mc_backend *bs[2] = {be, dev};
    float h[R * LD];
    fill(h, R * LD, 1.0f);
    h[0 * LD + D] = NAN; /* past the view's columns: not seen */
    h[2 * LD + 30] = -INFINITY;
    h[3 * LD + 1] = NAN;
    for (int k = 0; k < 2; k++) {
        mc_buffer *b = NULL;
        OK(mc_buffer_alloc(bs[k], sizeof h, &b, err_));
        if (!b)
            continue;
        OK(mc_buffer_upload(b, 0, h, sizeof h, err_));
        mc_tensor all, top, bot;
        OK(mc_tensor_init_strided(&all, b, 0, MC_DT_F32, 2, (int64_t[]){R, D}, LD, err_));
        OK(mc_tensor_view_rows(&all, 0, 2, &top, err_));
        OK(mc_tensor_view_rows(&all, 3, 1, &bot, err_));
        mc_nonfinite_note nn;
        OK(mc_op_note_nonfinite(bs[k], &top, 4, err_)); /* finite: nothing noted */
        OK(mc_backend_take_nonfinite(bs[k], &nn, err_));
        CHECK(nn.tag == -1);
        OK(mc_op_note_nonfinite(bs[k], &top, 5, err_));
        OK(mc_op_note_nonfinite(bs[k], &all, 6, err_));
        OK(mc_op_note_nonfinite(bs[k], &bot, 7, err_)); /* not kept: 6's is first */
        OK(mc_backend_take_nonfinite(bs[k], &nn, err_));
        CHECK(nn.tag == 6 && nn.row == 2 && nn.col == 30 && isinf(nn.value) && nn.value < 0);
        OK(mc_backend_take_nonfinite(bs[k], &nn, err_)); /* taken once */
        CHECK(nn.tag == -1);
        OK(mc_op_note_nonfinite(bs[k], &bot, 8, err_));
        OK(mc_backend_take_nonfinite(bs[k], &nn, err_));
        CHECK(nn.tag == 8 && nn.row == 0 && nn.col == 1 && isnan(nn.value));
        if (k == 1) { /* the device, checks deferred: a refusal and a note in one step */
            float cs[4] = {1, 1, 1, 1}, sn[4] = {0, 0, 0, 0};
            int32_t bad = 7; /* past the 2 positions of the tables */
            mc_buffer *pb = NULL, *cb = NULL;
            OK(mc_buffer_alloc(dev, sizeof cs + sizeof sn + 4, &cb, err_));
            if (!cb)
                continue;
            OK(mc_buffer_upload(cb, 0, cs, sizeof cs, err_));
            OK(mc_buffer_upload(cb, sizeof cs, sn, sizeof sn, err_));
            OK(mc_buffer_upload(cb, sizeof cs + sizeof sn, &bad, 4, err_));
            pb = cb;
            mc_tensor ct, st, pt, xr, xv;
            OK(mc_tensor_init_2d(&ct, cb, 0, MC_DT_F32, 2, 2, err_));
            OK(mc_tensor_init_2d(&st, cb, sizeof cs, MC_DT_F32, 2, 2, err_));
            OK(mc_tensor_init(&pt, pb, sizeof cs + sizeof sn, MC_DT_I32, 1, (int64_t[]){1}, err_));
            OK(mc_tensor_view_rows(&all, 1, 1, &xr, err_));
            OK(mc_tensor_view_cols(&xr, 0, 4, &xv, err_));
            /* the refusal first: no note after it (its op wrote nothing); the
             * take waits, as a device's, and its wait has the refusal, once */
            OK(mc_op_rope(dev, &xv, &pt, &ct, &st, 0, err_));
            OK(mc_op_note_nonfinite(dev, &all, 9, err_));
            EXPECT_ERR(mc_backend_take_nonfinite(dev, &nn, err_), MC_ERR_ARG, "rope: pos[0]");
            CHECK(nn.tag == -1);
            OK(mc_backend_synchronize(dev, err_));
            /* the note first: the take gives it and the refusal its wait met */
            OK(mc_op_note_nonfinite(dev, &all, 10, err_));
            OK(mc_op_rope(dev, &xv, &pt, &ct, &st, 0, err_));
            EXPECT_ERR(mc_backend_take_nonfinite(dev, &nn, err_), MC_ERR_ARG, "rope: pos[0]");
            CHECK(nn.tag == 10 && nn.row == 2 && nn.col == 30);
            OK(mc_backend_synchronize(dev, err_)); /* once */
            /* no note call since the last wait: the take does not wait */
            OK(mc_op_rope(dev, &xv, &pt, &ct, &st, 0, err_));
            OK(mc_backend_take_nonfinite(dev, &nn, err_));
            CHECK(nn.tag == -1);
            EXPECT_ERR(mc_backend_synchronize(dev, err_), MC_ERR_ARG, "rope: pos[0]");
            mc_buffer_free(cb);
        }
        EXPECT_ERR(mc_op_note_nonfinite(bs[k], &all, -1, err_), MC_ERR_ARG, "tag -1 is negative");
        EXPECT_ERR(mc_backend_take_nonfinite(bs[k], NULL, err_), MC_ERR_ARG, "note is NULL");
        mc_buffer_free(b);
    }
    mc_backend_free(dev);
}

int main(void)
{
    mc_err e;
    mc_err_clear(&e);
    if (mc_backend_cpu_init(&be, &e) != MC_OK) {
        fprintf(stderr, "cpu backend: %s\n", e.msg);
        return 1;
    }
    printf("backend %s, default path %s, %d threads\n", mc_backend_name(be), mc_backend_path(be),
           mc_backend_threads(be));
    test_buffers();
    test_tensors();
    test_refusals();
    test_probes();
    test_cpu_device();
    test_note_nonfinite();
    test_topk();
    static const char *const paths[] = {"scalar", "avx2", "avx512", "amx"};
    for (int p = 0; p < 4; p++) {
        mc_kpath kp;
        if (mc_kpath_from_name(paths[p], &kp) != 0 || !mc_kpath_supported(kp))
            continue;
        if (mc_backend_set_path(be, paths[p], &e) != MC_OK) {
            fprintf(stderr, "set_path: %s\n", e.msg);
            return 1;
        }
        path_now = paths[p];
        for (int threads = 1; threads <= 2; threads++) {
            mc_backend_set_threads(be, threads);
            test_matmul();
        }
        test_rmsnorm_softmax();
        test_swiglu_add();
        rope_case(1, 5, 3, 16, 0, 16);
        rope_case(0, 5, 3, 16, 0, 16);
        rope_case(0, 4, 2, 24, 0, 8);    /* partial rotary: the first dims of each head */
        rope_case(1, 4, 2, 24, 16, 8);   /* MLA: the rope dims after the nope dims */
        rope_case(0, 7, 1, 64, 0, 64);
        test_embed();
        printf("path %s: done\n", paths[p]);
    }
    mc_backend_set_threads(be, 0);
    mc_backend_free(be);
    return check_report("test_backend");
}
