/* test_kernels.c - every SIMD path against the portable path on random
 * inputs: widening of each element type (every FP8 code, f16 specials),
 * matrix products of every weight type (F32, F16, BF16, FP8 with partial
 * scale blocks, Q8_0, Q4_K, transposed) over sizes that are not multiples
 * of the vector width and token counts 1..13 (Q8_0 / Q4_K on the scalar
 * and avx2 paths: each token bitwise as alone), the thread split (bitwise
 * equal to one thread), the element-wise kernels, and the AMX tile
 * products at 16..64 tokens. Prints the first mismatches of each case. */
#include "check.h"
#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x243F6A8885A308D3ull;
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

/* Compares got against want with |got - want| <= atol + rtol * |ref_mag|;
 * prints up to 5 mismatches with their index. Returns the mismatch count. */
static int compare(const char *what, const float *got, const float *want, const float *mag,
                   size_t n, double rtol, double atol)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double tol = atol + rtol * (mag ? mag[i] : fabs(want[i]));
        int ok = (isnan(got[i]) && isnan(want[i])) || fabs((double)got[i] - want[i]) <= tol ||
                 (isinf(got[i]) && got[i] == want[i]);
        if (!ok) {
            if (bad < 5)
                fprintf(stderr, "  %s: [%zu] got %.9g want %.9g (tol %.3g)\n", what, i, got[i],
                        want[i], tol);
            bad++;
        }
    }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %d of %zu values differ\n", what, bad, n);
    }
    return bad;
}

static mc_kpath paths[MC_KPATH_COUNT];
static int n_paths;

/* ---- widening ---- */

static void test_widen(mc_kpath p)
{
    enum { N = 300 };
    unsigned char raw[N * 4];
    float want[N], got[N], row[N];
    char what[96];
    mc_dtype types[] = {MC_DT_F32, MC_DT_F16, MC_DT_BF16, MC_DT_F8_E4M3};
    for (size_t ti = 0; ti < 4; ti++) {
        mc_dtype dt = types[ti];
        size_t es = mc_dtype_size(dt);
        for (int i = 0; i < N; i++) {
            if (dt == MC_DT_F8_E4M3) {
                raw[i] = (unsigned char)(i < 256 ? (uint64_t)i : rnext()); /* every code, NaN included */
            } else if (dt == MC_DT_F32) {
                float f = runi(-1e3f, 1e3f);
                memcpy(raw + 4 * i, &f, 4);
            } else { /* f16/bf16: random bit patterns, denormals, inf and NaN included */
                uint16_t h = (uint16_t)rnext();
                if (i < 6) {
                    static const uint16_t sp[6] = {0x0001, 0x8001, 0x7c00, 0xfc00, 0x7e00, 0x03ff};
                    h = sp[i];
                }
                memcpy(raw + 2 * i, &h, 2);
            }
        }
        mc_mat w = {.dtype = dt, .rows = 1, .cols = N, .row_stride = N, .data = raw};
        for (int n = 1; n <= N; n += n < 40 ? 1 : 37) {
            w.cols = n;
            mc_kernels_set_path(MC_KPATH_SCALAR);
            mc_mat_row_f32(&w, 0, want);
            mc_kernels_set_path(p);
            mc_mat_row_f32(&w, 0, got);
            snprintf(what, sizeof what, "%s widen %s n=%d", mc_kpath_name(p), mc_dtype_name(dt), n);
            /* exact, NaN for NaN */
            compare(what, got, want, NULL, (size_t)n, 0, 0);
        }
        (void)es;
        (void)row;
    }
}

/* ---- matrix products ---- */

typedef struct {
    mc_mat w;
    void *store;   /* quantized storage (mc_mat_quantize) or raw data */
    float *scale;
} test_mat;

/* A rows x cols matrix of type dt with random values (FP8 with 128x128
 * or odd-sized block scales), transposed storage when asked. */
static void make_mat(test_mat *m, mc_dtype dt, int rows, int cols, int transposed, int fp8_block)
{
    memset(m, 0, sizeof *m);
    int sr = transposed ? cols : rows, sc = transposed ? rows : cols;
    float *f = malloc((size_t)rows * cols * sizeof *f);
    fill(f, (size_t)rows * cols, 1.0f);
    if (dt == MC_DT_Q8_0 || dt == MC_DT_Q4_K) {
        mc_mat src = {.dtype = MC_DT_F32, .rows = rows, .cols = cols, .row_stride = (size_t)cols,
                      .data = f};
        mc_err err;
        mc_err_clear(&err);
        if (mc_mat_quantize(&src, dt, &m->w, &m->store, &err) != MC_OK) {
            fprintf(stderr, "mc_mat_quantize: %s\n", err.msg);
            check_failures++;
        }
        free(f);
        return;
    }
    size_t es = mc_dtype_size(dt);
    unsigned char *raw = malloc((size_t)rows * cols * es + 64);
    for (size_t i = 0; i < (size_t)sr * sc; i++) {
        float v = f[i];
        if (dt == MC_DT_F32)
            memcpy(raw + 4 * i, &v, 4);
        else if (dt == MC_DT_BF16) {
            uint16_t h = mc_f32_to_bf16(v);
            memcpy(raw + 2 * i, &h, 2);
        } else if (dt == MC_DT_F16) {
            uint16_t h = mc_f32_to_f16(v);
            memcpy(raw + 2 * i, &h, 2);
        } else {
            raw[i] = mc_f32_to_fp8_e4m3(v * 300.0f);
        }
    }
    free(f);
    m->store = raw;
    m->w = (mc_mat){.dtype = dt, .rows = rows, .cols = cols, .row_stride = (size_t)sc,
                    .transposed = transposed, .data = raw};
    if (dt == MC_DT_F8_E4M3 && fp8_block > 0) {
        int br = fp8_block, bc = fp8_block == 128 ? 128 : fp8_block + 3;
        int srows = (rows + br - 1) / br, scols = (cols + bc - 1) / bc;
        m->scale = malloc((size_t)srows * scols * sizeof *m->scale);
        for (int i = 0; i < srows * scols; i++)
            m->scale[i] = runi(0.5f, 2.0f) / 300.0f;
        m->w.scale = m->scale;
        m->w.block_rows = br;
        m->w.block_cols = bc;
        m->w.scale_cols = scols;
    }
}

static void free_mat(test_mat *m)
{
    free(m->store);
    free(m->scale);
}

/* y for path p and `threads` threads */
static void run_matmul(mc_kpath p, int threads, const mc_mat *w, const float *x, int n, int ldx,
                       float *y, int ldy)
{
    mc_kernels_set_path(p);
    mc_kernels_set_threads(threads);
    for (size_t i = 0; i < (size_t)n * ldy; i++)
        y[i] = NAN; /* every output must be written */
    mc_matmul(w, x, n, ldx, y, ldy);
}

static void test_matmul_case(mc_kpath p, mc_dtype dt, int rows, int cols, int n, int transposed,
                             int fp8_block)
{
    test_mat m;
    make_mat(&m, dt, rows, cols, transposed, fp8_block);
    int ldx = cols + 3, ldy = rows + 1;
    float *x = malloc((size_t)n * ldx * sizeof *x);
    float *want = malloc((size_t)n * ldy * sizeof *want), *got = malloc((size_t)n * ldy * sizeof *got);
    float *mag = calloc((size_t)n * ldy, sizeof *mag), *row = malloc((size_t)cols * sizeof *row);
    float *ref = calloc((size_t)n * ldy, sizeof *ref);
    fill(x, (size_t)n * ldx, 2.0f);
    for (int o = 0; o < rows; o++) { /* sum |w||x| bounds the rounding of any summation order */
        mc_kernels_set_path(MC_KPATH_SCALAR);
        mc_mat_row_f32(&m.w, o, row);
        for (int t = 0; t < n; t++) {
            double s = 0, r = 0;
            for (int i = 0; i < cols; i++) {
                s += fabs((double)row[i] * x[(size_t)t * ldx + i]);
                r += (double)row[i] * x[(size_t)t * ldx + i];
            }
            mag[(size_t)t * ldy + o] = (float)s;
            ref[(size_t)t * ldy + o] = (float)r;
        }
    }
    run_matmul(MC_KPATH_SCALAR, 1, &m.w, x, n, ldx, want, ldy);
    run_matmul(p, 1, &m.w, x, n, ldx, got, ldy);
    char what[128];
    snprintf(what, sizeof what, "%s %s%s %dx%d n=%d%s", mc_kpath_name(p), mc_dtype_name(dt),
             transposed ? "^T" : "", rows, cols, n, m.w.scale ? " scaled" : "");
    /* pad columns of y (o >= rows) are not outputs */
    for (int t = 0; t < n; t++) {
        want[(size_t)t * ldy + rows] = got[(size_t)t * ldy + rows] = 0;
        mag[(size_t)t * ldy + rows] = ref[(size_t)t * ldy + rows] = 0;
    }
    compare(what, got, want, mag, (size_t)n * ldy, 2e-6, 1e-30);
    if (mc_dtype_is_block(dt) && n > 1 && (p == MC_KPATH_SCALAR || p == MC_KPATH_AVX2)) {
        /* a token's outputs bitwise those of the token alone (the avx2
         * path's passes of 1..4 tokens and token groups of 8 do the same
         * arithmetic per token) */
        float *one = malloc((size_t)ldy * sizeof *one);
        int bad = 0;
        for (int t = 0; t < n; t++) {
            run_matmul(p, 1, &m.w, x + (size_t)t * ldx, 1, ldx, one, ldy);
            for (int o = 0; o < rows; o++)
                if (memcmp(&one[o], &got[(size_t)t * ldy + o], sizeof *one) != 0 && bad++ < 5)
                    fprintf(stderr, "  %s: [t %d, row %d] %.9g with the others, %.9g alone\n",
                            what, t, o, got[(size_t)t * ldy + o], one[o]);
        }
        CHECK(bad == 0);
        free(one);
    }
    if (!mc_dtype_is_block(dt)) { /* the scalar path (front end included) against a
                                   * double sum of the dequantized rows */
        char rw[160];
        snprintf(rw, sizeof rw, "%s (scalar vs double)", what);
        compare(rw, want, ref, mag, (size_t)n * ldy, 2e-6, 1e-30);
    }
    free(ref);
    free(x);
    free(want);
    free(got);
    free(mag);
    free(row);
    free_mat(&m);
}

static void test_matmul(mc_kpath p)
{
    static const int rows_l[] = {1, 3, 5, 17, 64};
    static const int cols_l[] = {1, 7, 15, 16, 17, 33, 100, 256, 300, 513};
    static const int n_l[] = {1, 2, 3, 4, 5, 6, 7, 9, 13};
    mc_dtype types[] = {MC_DT_F32, MC_DT_F16, MC_DT_BF16, MC_DT_F8_E4M3, MC_DT_Q8_0, MC_DT_Q4_K};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t ri = 0; ri < sizeof rows_l / sizeof rows_l[0]; ri++)
            for (size_t ci = 0; ci < sizeof cols_l / sizeof cols_l[0]; ci++) {
                int n = n_l[(ri * 7 + ci * 3 + ti) % (sizeof n_l / sizeof n_l[0])];
                mc_dtype dt = types[ti];
                test_matmul_case(p, dt, rows_l[ri], cols_l[ci], n, 0, 0);
                if (dt == MC_DT_F8_E4M3) {
                    test_matmul_case(p, dt, rows_l[ri], cols_l[ci], n, 0, 128);
                    test_matmul_case(p, dt, rows_l[ri], cols_l[ci], n, 0, 5);
                }
                if (dt == MC_DT_BF16 || dt == MC_DT_F32)
                    test_matmul_case(p, dt, rows_l[ri], cols_l[ci], n, 1, 0);
            }
    /* one token (decode kernels) over even and odd block counts */
    static const int c1[] = {1, 31, 32, 33, 95, 513, 2049};
    for (size_t ci = 0; ci < sizeof c1 / sizeof c1[0]; ci++) {
        test_matmul_case(p, MC_DT_Q8_0, 7, c1[ci], 1, 0, 0);
        test_matmul_case(p, MC_DT_Q4_K, 7, c1[ci], 1, 0, 0);
        test_matmul_case(p, MC_DT_F8_E4M3, 130, c1[ci], 1, 0, 128); /* two row blocks */
    }
    /* products larger than one L2 row block of the avx512 tiles (~256 KiB
     * of weights): the row-block loop and its edges */
    static const int nb_l[] = {1, 5, 9, 17};
    for (size_t i = 0; i < sizeof nb_l / sizeof nb_l[0]; i++) {
        test_matmul_case(p, MC_DT_Q8_0, 300, 4096, nb_l[i], 0, 0);
        test_matmul_case(p, MC_DT_Q4_K, 300, 4096, nb_l[i], 0, 0);
        test_matmul_case(p, MC_DT_Q8_0, 130, 18432, nb_l[i], 0, 0);
        test_matmul_case(p, MC_DT_Q4_K, 130, 18432, nb_l[i], 0, 0);
    }
    /* FP8 with 128 x 128 scales against several tokens (avx512 with VBMI:
     * table lookups, rows in L2 chunks of ~128 KiB, tokens 8 at a time and
     * 64 per repack): several chunks, the 64-token edge, a 12-column tail */
    static const int f8_n[] = {2, 8, 9, 17, 64, 65, 70};
    for (size_t i = 0; i < sizeof f8_n / sizeof f8_n[0]; i++)
        test_matmul_case(p, MC_DT_F8_E4M3, 301, 1100, f8_n[i], 0, 128);
    test_matmul_case(p, MC_DT_F8_E4M3, 130, 18432, 9, 0, 128);
    /* transposed storage copied in blocks of 64 outputs from 8 tokens on
     * (several blocks, a partial one), in place below */
    for (int n = 7; n <= 17; n += 5) {
        test_matmul_case(p, MC_DT_BF16, 150, 37, n, 1, 0);
        test_matmul_case(p, MC_DT_F32, 130, 300, n, 1, 0);
    }
    /* BF16 rows read as stored by the avx512 tiles from 4 tokens on (tokens
     * split into even and odd columns; partial 32-column chunks, 4-row and
     * 4-token remainders; the cases above cover 4..13 tokens), more tokens,
     * and past one token block (44 tokens of 2053 columns) */
    static const int bn[] = {17, 18, 19, 20, 23, 37};
    static const int bc[] = {1, 31, 32, 33, 100, 2053};
    for (size_t i = 0; i < sizeof bn / sizeof bn[0]; i++)
        for (size_t j = 0; j < sizeof bc / sizeof bc[0]; j++)
            test_matmul_case(p, MC_DT_BF16, rows_l[(i + j) % 5], bc[j], bn[i], 0, 0);
    test_matmul_case(p, MC_DT_BF16, 9, 2053, 50, 0, 0);
    test_matmul_case(p, MC_DT_BF16, 6, 2053, 97, 0, 0);
    /* every token count through the tile remainders, and a long row */
    for (int n = 1; n <= 13; n++) {
        test_matmul_case(p, MC_DT_BF16, 9, 2053, n, 0, 0);
        test_matmul_case(p, MC_DT_Q4_K, 5, 1024 + 37, n, 0, 0);
        test_matmul_case(p, MC_DT_Q8_0, 5, 1024 + 37, n, 0, 0);
    }
}

/* mag[t * rows + o] = sum_i |W[o, i] x[t, i]| (rows of x w->cols apart),
 * the rows dequantized by the scalar path: the rounding bound of any
 * summation order. */
static void sum_abs(const mc_mat *w, const float *x, int n, float *mag)
{
    float *row = malloc((size_t)w->cols * sizeof *row);
    mc_kernels_set_path(MC_KPATH_SCALAR);
    for (int o = 0; o < w->rows; o++) {
        mc_mat_row_f32(w, o, row);
        for (int t = 0; t < n; t++) {
            double a = 0;
            for (int i = 0; i < w->cols; i++)
                a += fabs((double)row[i] * x[(size_t)t * w->cols + i]);
            mag[(size_t)t * w->rows + o] = (float)a;
        }
    }
    free(row);
}

/* FP8 with 128 x 128 block scales holding every subnormal code and NaN
 * codes (0x7f in the 64-wide steps, 0xff in the tail) against 1 and 10
 * tokens: the rows with a NaN code give NaN, the others the scalar path's
 * sums (the decode kernels widen through f16 bits and check NaN per row). */
static void test_fp8_codes(mc_kpath p)
{
    enum { R = 9, C = 300, N = 10 };
    test_mat m;
    make_mat(&m, MC_DT_F8_E4M3, R, C, 0, 128);
    unsigned char *raw = m.store;
    for (int i = 0; i < 16; i++) /* row 1: the subnormals 0x01..0x07, 0x81..0x87, zeros */
        raw[1 * C + 3 + i] = (unsigned char)((i & 8 ? 0x80 : 0) | (i & 7));
    raw[2 * C + 10] = 0x7f;
    raw[5 * C + 290] = 0xff;
    float x[N * C], want[N * R], got[N * R], mag[N * R];
    fill(x, (size_t)N * C, 1.0f);
    sum_abs(&m.w, x, N, mag);
    for (int n = 1; n <= N; n += N - 1) {
        run_matmul(MC_KPATH_SCALAR, 1, &m.w, x, n, C, want, R);
        run_matmul(p, 1, &m.w, x, n, C, got, R);
        CHECK(isnan(want[2]) && isnan(want[5]) && !isnan(want[1]));
        char what[96];
        snprintf(what, sizeof what, "%s F8_E4M3 NaN and subnormal codes n=%d", mc_kpath_name(p), n);
        compare(what, got, want, mag, (size_t)n * R, 2e-6, 1e-30);
    }
    free_mat(&m);
}

/* A column view of a block matrix (starting on a block boundary inside wider
 * rows) reads only its own blocks: equal to the view's dequantized rows. */
static void test_block_view(mc_kpath p)
{
    mc_dtype types[2] = {MC_DT_Q8_0, MC_DT_Q4_K};
    for (int ti = 0; ti < 2; ti++) {
        int blk = mc_dtype_block_elems(types[ti]);
        test_mat m;
        make_mat(&m, types[ti], 7, 4 * blk, 0, 0);
        mc_mat v = m.w;
        v.data = (const unsigned char *)m.w.data + mc_dtype_row_bytes(types[ti], blk);
        v.cols = 2 * blk; /* blocks 1..2 of each 4-block row */
        enum { N = 3 };
        float x[N * 512], want[N * 7], got[N * 7], mag[N * 7], row[512];
        fill(x, (size_t)N * 512, 1.0f);
        mc_kernels_set_path(MC_KPATH_SCALAR);
        for (int o = 0; o < 7; o++) {
            mc_mat_row_f32(&v, o, row);
            for (int t = 0; t < N; t++) {
                double s = 0, a = 0;
                for (int i = 0; i < v.cols; i++) {
                    s += (double)row[i] * x[t * 512 + i];
                    a += fabs((double)row[i] * x[t * 512 + i]);
                }
                want[t * 7 + o] = (float)s;
                mag[t * 7 + o] = (float)a;
            }
        }
        run_matmul(p, 1, &v, x, N, 512, got, 7);
        char what[96];
        snprintf(what, sizeof what, "%s %s column view", mc_kpath_name(p), mc_dtype_name(types[ti]));
        compare(what, got, want, mag, (size_t)N * 7, 2e-2, 0); /* 8-bit activations */
        CHECK(mc_mat_weight_bytes(&v) == 7 * mc_dtype_row_bytes(types[ti], 2 * blk));
        free_mat(&m);
    }
}

/* The thread split changes who computes a row, never how: bitwise equal. */
static void test_threads(mc_kpath p)
{
    mc_dtype types[] = {MC_DT_BF16, MC_DT_Q8_0, MC_DT_Q4_K, MC_DT_F32};
    for (size_t ti = 0; ti < 4; ti++)
        for (int n = 1; n <= 9; n += 4) {
            test_mat m;
            make_mat(&m, types[ti], 333, 512, 0, 0);
            float *x = malloc((size_t)n * 512 * sizeof *x);
            float *a = malloc((size_t)n * 333 * sizeof *a), *b = malloc((size_t)n * 333 * sizeof *b);
            fill(x, (size_t)n * 512, 1.0f);
            run_matmul(p, 1, &m.w, x, n, 512, a, 333);
            run_matmul(p, 3, &m.w, x, n, 512, b, 333);
            char what[96];
            snprintf(what, sizeof what, "%s %s threads 3 vs 1 n=%d", mc_kpath_name(p),
                     mc_dtype_name(types[ti]), n);
            compare(what, b, a, NULL, (size_t)n * 333, 0, 0);
            free(x);
            free(a);
            free(b);
            free_mat(&m);
        }
    mc_kernels_set_threads(1);
}

/* mc_matmul_many: several products of different types, shapes and token
 * counts (1..64) as one loop, bitwise equal to mc_matmul per product at 1
 * thread, with 1 and 3 threads (the split into per-product row runs). */
static void test_many(mc_kpath p)
{
    enum { NI = 6 };
    static const mc_dtype types[NI] = {MC_DT_BF16, MC_DT_Q8_0, MC_DT_Q4_K,
                                       MC_DT_F32,  MC_DT_F16,  MC_DT_F8_E4M3};
    static const int rows_l[NI] = {333, 17, 129, 1, 64, 45};
    static const int cols_l[NI] = {512, 1061, 768, 300, 513, 257};
    static const int n_l[] = {1, 2, 5, 8, 9, 16, 17, 33, 64};
    for (size_t ni = 0; ni < sizeof n_l / sizeof n_l[0]; ni++) {
        test_mat m[NI];
        mc_matmul_item it[NI];
        float *x[NI], *want[NI], *got[NI];
        for (int i = 0; i < NI; i++) {
            /* odd token counts per item around n; one F32 item is transposed */
            int n = n_l[ni] - (i % 3 == 1 && n_l[ni] > 1 ? 1 : 0);
            make_mat(&m[i], types[i], rows_l[i], cols_l[i], types[i] == MC_DT_F32,
                     types[i] == MC_DT_F8_E4M3 ? 5 : 0);
            int ldx = cols_l[i] + 1, ldy = rows_l[i] + 2;
            x[i] = malloc((size_t)n * ldx * sizeof *x[i]);
            want[i] = malloc((size_t)n * ldy * sizeof *want[i]);
            got[i] = malloc((size_t)n * ldy * sizeof *got[i]);
            fill(x[i], (size_t)n * ldx, 1.0f);
            it[i] = (mc_matmul_item){&m[i].w, x[i], n, ldx, got[i], ldy};
            run_matmul(p, 1, &m[i].w, x[i], n, ldx, want[i], ldy);
            for (int t = 0; t < n; t++) /* pad columns are not outputs */
                want[i][(size_t)t * ldy + rows_l[i]] = want[i][(size_t)t * ldy + rows_l[i] + 1] = 0;
        }
        for (int threads = 1; threads <= 3; threads += 2) {
            mc_kernels_set_path(p);
            mc_kernels_set_threads(threads);
            for (int i = 0; i < NI; i++)
                for (size_t k = 0; k < (size_t)it[i].n * it[i].ldy; k++)
                    got[i][k] = NAN; /* every output must be written */
            mc_matmul_many(it, NI);
            for (int i = 0; i < NI; i++) {
                for (int t = 0; t < it[i].n; t++)
                    got[i][(size_t)t * it[i].ldy + rows_l[i]] =
                        got[i][(size_t)t * it[i].ldy + rows_l[i] + 1] = 0;
                char what[128];
                snprintf(what, sizeof what, "%s matmul_many %s %dx%d n=%d threads %d",
                         mc_kpath_name(p), mc_dtype_name(types[i]), rows_l[i], cols_l[i],
                         it[i].n, threads);
                compare(what, got[i], want[i], NULL, (size_t)it[i].n * it[i].ldy, 0, 0);
            }
        }
        for (int i = 0; i < NI; i++) {
            free(x[i]);
            free(want[i]);
            free(got[i]);
            free_mat(&m[i]);
        }
    }
    mc_kernels_set_threads(1);
}

/* mc_mats_quantize: each matrix of a group is stored byte for byte as
 * mc_mat_quantize stores it alone, in order, on 64-byte boundaries of one
 * 2 MiB aligned buffer; a bad target or a NaN names the matrix at fault. */
static void test_mats_quantize(void)
{
    enum { NM = 5 };
    static const mc_dtype tg[NM] = {MC_DT_Q8_0, MC_DT_Q4_K, MC_DT_BF16, MC_DT_Q8_0, MC_DT_F16};
    static const int rows_l[NM] = {3, 17, 5, 1, 7};
    static const int cols_l[NM] = {1061, 512, 33, 64, 300};
    test_mat f[NM];
    const mc_mat *src[NM];
    for (int i = 0; i < NM; i++) {
        make_mat(&f[i], i == 2 ? MC_DT_BF16 : MC_DT_F32, rows_l[i], cols_l[i], i == 4, 0);
        src[i] = &f[i].w;
    }
    mc_mat dst[NM];
    void *owned = NULL;
    int bad = 99;
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_mats_quantize(src, tg, NM, dst, &owned, &bad, &err) == MC_OK && bad == -1);
    CHECK(owned && ((uintptr_t)owned & ((2u << 20) - 1)) == 0);
    const unsigned char *at = owned;
    for (int i = 0; owned && i < NM; i++) {
        mc_mat one;
        void *store = NULL;
        CHECK(mc_mat_quantize(src[i], tg[i], &one, &store, &err) == MC_OK);
        size_t bytes = mc_mat_weight_bytes(&one);
        CHECK(dst[i].data == at && ((uintptr_t)dst[i].data & 63) == 0);
        CHECK(dst[i].dtype == one.dtype && dst[i].rows == one.rows && dst[i].cols == one.cols &&
              dst[i].row_stride == one.row_stride && !dst[i].transposed);
        if (memcmp(dst[i].data, one.data, bytes) != 0) {
            fprintf(stderr, "mats_quantize: matrix %d (%s %dx%d) differs from mc_mat_quantize\n",
                    i, mc_dtype_name(tg[i]), rows_l[i], cols_l[i]);
            check_failures++;
        }
        at += (bytes + 63) & ~(size_t)63;
        free(store);
    }
    free(owned);
    /* a target no format has, then a NaN in the fourth matrix */
    mc_dtype tb[NM];
    memcpy(tb, tg, sizeof tb);
    tb[2] = MC_DT_F8_E4M3;
    CHECK(mc_mats_quantize(src, tb, NM, dst, &owned, &bad, &err) == MC_ERR_ARG && bad == 2 &&
          owned == NULL);
    ((float *)f[3].store)[40] = NAN;
    mc_err_clear(&err); /* the first error of an mc_err wins */
    CHECK(mc_mats_quantize(src, tg, NM, dst, &owned, &bad, &err) == MC_ERR_FORMAT && bad == 3 &&
          owned == NULL && strstr(err.msg, "column 40"));
    CHECK(mc_mats_quantize(src, tg, 0, dst, &owned, &bad, &err) == MC_ERR_ARG);
    for (int i = 0; i < NM; i++)
        free_mat(&f[i]);
}

/* ---- AMX tiles ---- */

/* One product on a thread of its own (test_amx). */
typedef struct {
    const mc_mat *w;
    const float *x;
    int n, ldx, ldy;
    float *y;
} amx_thread_arg;

static void *amx_thread(void *p)
{
    const amx_thread_arg *a = p;
    mc_matmul(a->w, a->x, a->n, a->ldx, a->y, a->ldy);
    return NULL;
}

/* BF16 tile products of special activations: infinities give the infinite
 * sums the scalar path gives, NaN gives NaN, values whose three parts reach
 * the last bit of f32 (2^24 - 1 times a power of two) and tiny ones (down
 * to 2^-100) keep f32 accuracy. 24 tokens: tiles on amx with AMX-BF16. */
/* BF16 rows against 24 tokens (the amx tiles; the avx512 tiles reading
 * the stored rows) with infinities, NaN, a token using every mantissa bit
 * and tiny tokens, against the scalar path. */
static void test_bf16_special(mc_kpath p)
{
    enum { R = 19, C = 96, N = 24 };
    test_mat m;
    make_mat(&m, MC_DT_BF16, R, C, 0, 0);
    float x[N * C], want[N * R], got[N * R], mag[N * R];
    fill(x, (size_t)N * C, 1.0f);
    x[0 * C + 5] = INFINITY;
    x[1 * C + 40] = -INFINITY;
    x[2 * C + 7] = NAN;
    for (int i = 0; i < C; i++) {
        x[3 * C + i] = ldexpf((float)((1 << 24) - 1 - 2 * i), -24 - (i % 5)); /* every bit */
        x[4 * C + i] = ldexpf(x[4 * C + i], -100);
    }
    sum_abs(&m.w, x, N, mag);
    run_matmul(MC_KPATH_SCALAR, 1, &m.w, x, N, C, want, R);
    run_matmul(p, 1, &m.w, x, N, C, got, R);
    for (int o = 0; o < R; o++) /* the non-finite rows: same class as scalar */
        for (int t = 0; t < 3; t++) {
            float a = want[t * R + o], b = got[t * R + o];
            check_count++;
            if (!((isnan(a) && isnan(b)) || a == b)) {
                check_failures++;
                fprintf(stderr, "%s bf16 special token %d row %d: got %g want %g\n",
                        mc_kpath_name(p), t, o, b, a);
            }
            want[t * R + o] = got[t * R + o] = mag[t * R + o] = 0;
        }
    char what[64];
    snprintf(what, sizeof what, "%s bf16 special values", mc_kpath_name(p));
    compare(what, got, want, mag, (size_t)N * R, 2e-6, 1e-30);
    free_mat(&m);
}

/* One-token BF16 products on the avx512 path (with AVX512-BF16: vdpbf16ps
 * on the token split in three exact bf16 parts) against the scalar path:
 * an infinity, a NaN, a token using every mantissa bit, tiny values; the
 * non-finite ones in the same class, the others within rounding. */
static void test_bf16_decode_special(void)
{
    enum { R = 19, C = 100 };
    if (!mc_kpath_supported(MC_KPATH_AVX512))
        return;
    test_mat m;
    make_mat(&m, MC_DT_BF16, R, C, 0, 0);
    float x[5][C], want[R], got[R], mag[R];
    for (int t = 0; t < 5; t++)
        fill(x[t], C, 1.0f);
    x[0][5] = INFINITY;
    x[1][40] = -INFINITY;
    x[2][7] = NAN;
    for (int i = 0; i < C; i++) {
        x[3][i] = ldexpf((float)((1 << 24) - 1 - 2 * i), -24 - (i % 5)); /* every bit */
        x[4][i] = ldexpf(x[4][i], -100);
    }
    for (int t = 0; t < 5; t++) {
        sum_abs(&m.w, x[t], 1, mag);
        run_matmul(MC_KPATH_SCALAR, 1, &m.w, x[t], 1, C, want, R);
        run_matmul(MC_KPATH_AVX512, 1, &m.w, x[t], 1, C, got, R);
        char what[64];
        snprintf(what, sizeof what, "avx512 bf16 one token, special token %d", t);
        if (t < 3) {
            for (int o = 0; o < R; o++) {
                check_count++;
                if (!((isnan(want[o]) && isnan(got[o])) || want[o] == got[o])) {
                    check_failures++;
                    fprintf(stderr, "%s row %d: got %g want %g\n", what, o, got[o], want[o]);
                }
            }
        } else {
            compare(what, got, want, mag, R, 2e-6, 1e-30);
        }
    }
    free_mat(&m);
}

/* The amx path's tile products (Q8_0 / Q4_K, 16 tokens or more) against
 * the scalar path over odd row counts (partial 16-row panels), columns up
 * to 2048 and token counts that leave partial 16-token tiles; that they are
 * taken at all (the result differs bitwise from the avx512 path's, whose
 * summation order differs, while 15 tokens or fewer equal avx512 exactly);
 * and the pool threads (each loads its own tile configuration). */
static void test_amx(void)
{
    if (!mc_kpath_supported(MC_KPATH_AMX)) {
        printf("amx: not supported here, skipped\n");
        return;
    }
    static const int rows_l[] = {1, 17, 33, 100};
    static const int q8_cols[] = {32, 96, 544, 1061, 2048};
    static const int q4_cols[] = {256, 768, 1061, 2048};
    static const int bf_cols[] = {1, 31, 32, 64, 100, 1061, 2048};
    static const int n_l[] = {16, 17, 31, 33, 47, 64};
    int cases = 0;
    for (size_t ri = 0; ri < sizeof rows_l / sizeof rows_l[0]; ri++) {
        for (size_t ci = 0; ci < sizeof q8_cols / sizeof q8_cols[0]; ci++, cases++)
            test_matmul_case(MC_KPATH_AMX, MC_DT_Q8_0, rows_l[ri], q8_cols[ci],
                             n_l[(ri * 5 + ci) % 6], 0, 0);
        for (size_t ci = 0; ci < sizeof q4_cols / sizeof q4_cols[0]; ci++, cases++)
            test_matmul_case(MC_KPATH_AMX, MC_DT_Q4_K, rows_l[ri], q4_cols[ci],
                             n_l[(ri * 3 + ci + 2) % 6], 0, 0);
        /* BF16 (AMX-BF16 tiles; avx512 where the CPU lacks them): rows read
         * in place or (edge panels, rows of no whole 32) from a padded copy */
        for (size_t ci = 0; ci < sizeof bf_cols / sizeof bf_cols[0]; ci++, cases++)
            test_matmul_case(MC_KPATH_AMX, MC_DT_BF16, rows_l[ri], bf_cols[ci],
                             n_l[(ri * 2 + ci + 1) % 6], 0, 0);
    }
    /* BF16 from 4 tokens (one partial token tile); several row groups (rows
     * past one group's 512 KiB at K = 4096) and token tile pairs */
    static const int bf_n[] = {4, 5, 7, 13};
    for (size_t i = 0; i < sizeof bf_n / sizeof bf_n[0]; i++, cases += 2) {
        test_matmul_case(MC_KPATH_AMX, MC_DT_BF16, 17, 100, bf_n[i], 0, 0);
        test_matmul_case(MC_KPATH_AMX, MC_DT_BF16, 33, 2048, bf_n[i], 0, 0);
    }
    for (int n = 64; n <= 97; n += 33, cases++)
        test_matmul_case(MC_KPATH_AMX, MC_DT_BF16, 150, 4096, n, 0, 0);
    /* FP8 E4M3 on the same tiles: 128 x 128 block scales over several row and
     * column blocks (a partial last one of each), without scales, and odd
     * blocks (5 x 8: not tiles, the avx512 code) */
    static const int f8_n[] = {4, 17, 40};
    for (size_t i = 0; i < sizeof f8_n / sizeof f8_n[0]; i++, cases += 4) {
        test_matmul_case(MC_KPATH_AMX, MC_DT_F8_E4M3, 300, 640, f8_n[i], 0, 128);
        test_matmul_case(MC_KPATH_AMX, MC_DT_F8_E4M3, 150, 4096 + 100, f8_n[i], 0, 128);
        test_matmul_case(MC_KPATH_AMX, MC_DT_F8_E4M3, 33, 100, f8_n[i], 0, 0);
        test_matmul_case(MC_KPATH_AMX, MC_DT_F8_E4M3, 33, 100, f8_n[i], 0, 5);
    }
    test_bf16_special(MC_KPATH_AMX);
    /* the tiles are taken from 16 tokens on (BF16: from 4), and only there */
    int bf16_tiles = strstr(mc_cpu_features(), "amx_bf16") != NULL;
    mc_dtype types[4] = {MC_DT_Q8_0, MC_DT_Q4_K, MC_DT_BF16, MC_DT_F8_E4M3};
    for (int ti = 0; ti < 2 + 2 * bf16_tiles; ti++)
        for (int n0 = ti >= 2 ? 3 : 15, n = n0; n <= n0 + 1; n++) {
            test_mat m;
            make_mat(&m, types[ti], 40, 2048, 0, types[ti] == MC_DT_F8_E4M3 ? 128 : 0);
            float *x = malloc((size_t)n * 2048 * sizeof *x);
            float *a = malloc((size_t)n * 40 * sizeof *a), *b = malloc((size_t)n * 40 * sizeof *b);
            fill(x, (size_t)n * 2048, 1.0f);
            run_matmul(MC_KPATH_AVX512, 1, &m.w, x, n, 2048, a, 40);
            run_matmul(MC_KPATH_AMX, 1, &m.w, x, n, 2048, b, 40);
            int differ = 0;
            for (int i = 0; i < n * 40; i++)
                differ += memcmp(&a[i], &b[i], sizeof *a) != 0;
            int want_tiles = n > n0;
            check_count++;
            if (want_tiles ? differ == 0 : differ != 0) {
                check_failures++;
                fprintf(stderr,
                        "amx %s n=%d: %d of %d outputs differ bitwise from avx512 (expected %s)\n",
                        mc_dtype_name(types[ti]), n, differ, n * 40,
                        want_tiles ? "some: the tile code was not taken" : "none");
            }
            free(x);
            free(a);
            free(b);
            free_mat(&m);
        }
    /* pool threads: 3 threads bitwise equal to 1 (a thread without its own tile
     * configuration would fault), and that shape against the scalar path */
    /* FP8 with 128 x 128 scales on 560 rows: 3 threads cut tasks of 48 rows,
     * so some pairs of 16-row panels straddle a row block (each panel takes
     * its own block's scale) */
    for (int ti = 0; ti < 4; ti++)
        for (int n = 16; n <= 40; n += 24) {
            int R = types[ti] == MC_DT_F8_E4M3 ? 560 : 333;
            int fb = types[ti] == MC_DT_F8_E4M3 ? 128 : 0;
            test_mat m;
            make_mat(&m, types[ti], R, 1024, 0, fb);
            float *x = malloc((size_t)n * 1024 * sizeof *x);
            float *a = malloc((size_t)n * R * sizeof *a), *b = malloc((size_t)n * R * sizeof *b);
            fill(x, (size_t)n * 1024, 1.0f);
            run_matmul(MC_KPATH_AMX, 1, &m.w, x, n, 1024, a, R);
            run_matmul(MC_KPATH_AMX, 3, &m.w, x, n, 1024, b, R);
            char what[96];
            snprintf(what, sizeof what, "amx %s threads 3 vs 1 n=%d", mc_dtype_name(types[ti]), n);
            compare(what, b, a, NULL, (size_t)n * R, 0, 0);
            free(x);
            free(a);
            free(b);
            free_mat(&m);
            test_matmul_case(MC_KPATH_AMX, types[ti], R, 1024, n, 0, fb); /* 1 thread vs scalar */
        }
    /* three threads of our own, each running its own product at once (kernel
     * threads: 1): each loads its configuration; equal to the same product on
     * this thread */
    mc_kernels_set_path(MC_KPATH_AMX);
    mc_kernels_set_threads(1);
    {
        enum { NT = 3, R = 100, C = 2048, N = 48 };
        test_mat m[NT];
        float *x = malloc((size_t)N * C * sizeof *x);
        float *want[NT], *got[NT];
        pthread_t th[NT];
        amx_thread_arg args[NT];
        int started[NT];
        fill(x, (size_t)N * C, 1.0f);
        for (int i = 0; i < NT; i++) {
            make_mat(&m[i], types[i % 3], R, C, 0, 0);
            want[i] = malloc((size_t)N * R * sizeof *want[i]);
            got[i] = malloc((size_t)N * R * sizeof *got[i]);
            run_matmul(MC_KPATH_AMX, 1, &m[i].w, x, N, C, want[i], R);
            for (int k = 0; k < N * R; k++)
                got[i][k] = NAN;
            args[i] = (amx_thread_arg){&m[i].w, x, N, C, R, got[i]};
        }
        for (int i = 0; i < NT; i++)
            started[i] = pthread_create(&th[i], NULL, amx_thread, &args[i]) == 0;
        for (int i = 0; i < NT; i++) {
            CHECK(started[i]);
            if (started[i])
                pthread_join(th[i], NULL);
            char what[96];
            snprintf(what, sizeof what, "amx %s on thread %d of %d", mc_dtype_name(types[i % 3]),
                     i + 1, NT);
            compare(what, got[i], want[i], NULL, (size_t)N * R, 0, 0);
            free(want[i]);
            free(got[i]);
            free_mat(&m[i]);
        }
        free(x);
    }
    printf("amx: %d tile products vs scalar, dispatch and 3 threads checked\n", cases);
}

/* ---- element-wise ---- */

static void test_elementwise(mc_kpath p)
{
    enum { N = 700 };
    float a[N], b[N], w[N], y0[N], y1[N], cs[N / 2], sn[N / 2];
    char what[96];
    static const int sizes[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 130, 257, 700};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int n = sizes[si];
        fill(a, N, 3.0f);
        fill(b, N, 3.0f);
        fill(w, N, 2.0f);
        /* dot */
        mc_kernels_set_path(MC_KPATH_SCALAR);
        float d0 = mc_dot(a, b, n);
        mc_kernels_set_path(p);
        float d1 = mc_dot(a, b, n);
        double mag = 0;
        for (int i = 0; i < n; i++)
            mag += fabs((double)a[i] * b[i]);
        snprintf(what, sizeof what, "%s dot n=%d", mc_kpath_name(p), n);
        float mg = (float)mag;
        compare(what, &d1, &d0, &mg, 1, 2e-6, 0);
        /* axpy */
        memcpy(y0, b, sizeof y0);
        memcpy(y1, b, sizeof y1);
        mc_kernels_set_path(MC_KPATH_SCALAR);
        mc_axpy(y0, 0.37f, a, n);
        mc_kernels_set_path(p);
        mc_axpy(y1, 0.37f, a, n);
        snprintf(what, sizeof what, "%s axpy n=%d", mc_kpath_name(p), n);
        compare(what, y1, y0, NULL, N, 1e-6, 1e-6);
        /* rmsnorm, with and without weight, in place */
        for (int wi = 0; wi < 2; wi++) {
            memcpy(y1, a, sizeof y1);
            mc_kernels_set_path(MC_KPATH_SCALAR);
            mc_rmsnorm(y0, a, wi ? w : NULL, n, 1e-6f);
            mc_kernels_set_path(p);
            mc_rmsnorm(y1, y1, wi ? w : NULL, n, 1e-6f);
            snprintf(what, sizeof what, "%s rmsnorm%s n=%d", mc_kpath_name(p), wi ? "" : " (no w)", n);
            compare(what, y1, y0, NULL, (size_t)n, 1e-6, 1e-7);
        }
        /* softmax with a -inf (masked) entry and a wide range */
        for (int i = 0; i < n; i++)
            y0[i] = y1[i] = a[i] * 10.0f;
        if (n > 2)
            y0[1] = y1[1] = -INFINITY;
        if (n > 5)
            y0[4] = y1[4] = -200.0f;
        mc_kernels_set_path(MC_KPATH_SCALAR);
        mc_softmax(y0, n);
        mc_kernels_set_path(p);
        mc_softmax(y1, n);
        snprintf(what, sizeof what, "%s softmax n=%d", mc_kpath_name(p), n);
        compare(what, y1, y0, NULL, (size_t)n, 2e-6, 1e-37);
        /* swiglu, with arguments out to where silu saturates */
        for (int i = 0; i < n; i++)
            y0[i] = y1[i] = a[i] * 40.0f;
        mc_kernels_set_path(MC_KPATH_SCALAR);
        mc_swiglu(y0, b, n);
        mc_kernels_set_path(p);
        mc_swiglu(y1, b, n);
        snprintf(what, sizeof what, "%s swiglu n=%d", mc_kpath_name(p), n);
        compare(what, y1, y0, NULL, (size_t)n, 2e-6, 1e-30);
        /* RoPE, both layouts, dims that are not multiples of the width */
        if (n % 2 == 0 || n == 1) {
            int dim = n == 1 ? 2 : n;
            for (int i = 0; i < dim / 2; i++) {
                float ang = runi(-6.0f, 6.0f);
                cs[i] = cosf(ang);
                sn[i] = sinf(ang);
            }
            for (int il = 0; il < 2; il++) {
                memcpy(y0, a, sizeof y0);
                memcpy(y1, a, sizeof y1);
                mc_kernels_set_path(MC_KPATH_SCALAR);
                mc_rope_rotate(y0, dim, il, cs, sn);
                mc_kernels_set_path(p);
                mc_rope_rotate(y1, dim, il, cs, sn);
                snprintf(what, sizeof what, "%s rope%s dim=%d", mc_kpath_name(p),
                         il ? " interleaved" : "", dim);
                compare(what, y1, y0, NULL, N, 1e-6, 3e-6);
            }
        }
    }
}

/* ---- Q8_0 rows repacked at load (mc_mat_pack, MC_MAT_PACK_Q8_0_X16) ---- */

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* A copy of a Q8_0 matrix repacked by the avx512 path; NULL data when that
 * path is not here. */
static mc_mat packed_copy(const mc_mat *w, void **store)
{
    size_t bytes = (size_t)w->rows * mc_dtype_row_bytes(w->dtype, w->cols);
    mc_mat c = *w;
    *store = malloc(bytes);
    memcpy(*store, w->data, bytes);
    c.data = *store;
    mc_kernels_set_path(MC_KPATH_AVX512);
    if (!mc_mat_pack(&c)) {
        free(*store);
        *store = NULL;
        c.data = NULL;
    }
    return c;
}

/* Every path's product with the repacked rows (Q8_0 or Q4_K) against the scalar path's
 * with the rows as stored: bitwise where the path unpacks them (scalar,
 * avx2, amx), within rounding where it reads them (avx512); each path's
 * thread split bitwise equal to one thread; rows read back (mc_mat_row_f32)
 * bitwise equal to the stored rows'. */
static void test_packed_case(mc_dtype dt, int rows, int cols, int n)
{
    test_mat m;
    make_mat(&m, dt, rows, cols, 0, 0);
    void *pstore;
    mc_mat pw = packed_copy(&m.w, &pstore);
    char what[128];
    snprintf(what, sizeof what, "%s x16 %dx%d n=%d", mc_dtype_name(dt), rows, cols, n);
    int layout = dt == MC_DT_Q8_0 ? MC_MAT_PACK_Q8_0_X16 : MC_MAT_PACK_Q4_K_X16;
    CHECK_MSG(pw.data && pw.pack == layout, "%s: mc_mat_pack refused", what);
    if (!pw.data) {
        free_mat(&m);
        return;
    }
    int ldx = cols + 3, ldy = rows + 1;
    size_t ny = (size_t)n * ldy;
    float *x = malloc((size_t)n * ldx * sizeof *x), *want = malloc(ny * sizeof *want);
    float *got = malloc(ny * sizeof *got), *one = malloc(ny * sizeof *one);
    float *mag = calloc(ny, sizeof *mag), *row = malloc((size_t)cols * sizeof *row),
          *prow = malloc((size_t)cols * sizeof *prow);
    fill(x, (size_t)n * ldx, 2.0f);
    mc_kernels_set_path(MC_KPATH_SCALAR);
    for (int o = 0; o < rows; o++) {
        mc_mat_row_f32(&m.w, o, row);
        mc_mat_row_f32(&pw, o, prow);
        if (memcmp(row, prow, (size_t)cols * sizeof *row) != 0) {
            CHECK_MSG(0, "%s: mc_mat_row_f32 of row %d differs", what, o);
            break;
        }
        for (int t = 0; t < n; t++) {
            double a = 0;
            for (int i = 0; i < cols; i++)
                a += fabs((double)row[i] * x[(size_t)t * ldx + i]);
            mag[(size_t)t * ldy + o] = (float)a;
        }
    }
    for (int t = 0; t < n; t++)
        mag[(size_t)t * ldy + rows] = 0;
    run_matmul(MC_KPATH_SCALAR, 1, &m.w, x, n, ldx, want, ldy);
    for (int t = 0; t < n; t++)
        want[(size_t)t * ldy + rows] = 0;
    for (int i = -1; i < n_paths; i++) {
        mc_kpath p = i < 0 ? MC_KPATH_SCALAR : paths[i];
        char w2[160];
        run_matmul(p, 1, &pw, x, n, ldx, one, ldy);
        for (int t = 0; t < n; t++)
            one[(size_t)t * ldy + rows] = 0;
        snprintf(w2, sizeof w2, "%s %s", mc_kpath_name(p), what);
        if (p == MC_KPATH_AVX512) {
            compare(w2, one, want, mag, ny, 2e-6, 1e-30);
        } else { /* unpacked as they are read: the stored rows' products */
            float *plain = malloc(ny * sizeof *plain);
            run_matmul(p, 1, &m.w, x, n, ldx, plain, ldy);
            for (int t = 0; t < n; t++)
                plain[(size_t)t * ldy + rows] = 0;
            compare(w2, one, plain, NULL, ny, 0, 0);
            free(plain);
        }
        run_matmul(p, 3, &pw, x, n, ldx, got, ldy);
        for (int t = 0; t < n; t++)
            got[(size_t)t * ldy + rows] = 0;
        snprintf(w2, sizeof w2, "%s %s 3 threads vs 1", mc_kpath_name(p), what);
        compare(w2, got, one, NULL, ny, 0, 0);
    }
    mc_kernels_set_threads(1);
    free(x);
    free(want);
    free(got);
    free(one);
    free(mag);
    free(row);
    free(prow);
    free(pstore);
    free_mat(&m);
}

static void test_packed(void)
{
    if (!mc_kpath_supported(MC_KPATH_AVX512)) {
        printf("Q8_0 x16 layout: no avx512 path here, skipped\n");
        return;
    }
    /* Q8_0: 8 (one half group), 16, 24 (16 + 8), 64, 136 (8 x 16 + 8) blocks;
     * Q4_K: 1 (the odd last block alone), 2 (a pair), 3, 8, 17 super-blocks */
    static const int cols_l[] = {256, 512, 768, 2048, 4352};
    static const int rows_l[] = {1, 5, 17, 70};
    static const int n_l[] = {1, 2, 3, 4, 5, 9, 16, 33, 64};
    static const mc_dtype dts[] = {MC_DT_Q8_0, MC_DT_Q4_K};
    for (size_t d = 0; d < 2; d++)
        for (size_t c = 0; c < sizeof cols_l / sizeof cols_l[0]; c++)
            for (size_t r = 0; r < sizeof rows_l / sizeof rows_l[0]; r++)
                for (size_t k = 0; k < sizeof n_l / sizeof n_l[0]; k++)
                    if (cols_l[c] * rows_l[r] * n_l[k] <= (1 << 22))
                        test_packed_case(dts[d], rows_l[r], cols_l[c], n_l[k]);
    /* what is not repacked: other paths, other widths, strided rows, other dtypes */
    test_mat m;
    make_mat(&m, MC_DT_Q8_0, 4, 512, 0, 0);
    mc_mat w = m.w;
    mc_kernels_set_path(MC_KPATH_SCALAR);
    CHECK(!mc_kernels_packs(MC_DT_Q8_0) && mc_mat_pack(&w) == 0 && w.pack == 0);
    mc_kernels_set_path(MC_KPATH_AVX512);
    CHECK(mc_kernels_packs(MC_DT_Q8_0) && mc_kernels_packs(MC_DT_Q4_K) &&
          !mc_kernels_packs(MC_DT_BF16));
    w.cols = 480; /* 15 blocks of a 16-block row */
    CHECK(mc_mat_pack(&w) == 0 && w.pack == 0);
    free_mat(&m);
    make_mat(&m, MC_DT_Q8_0, 4, 300, 0, 0);
    w = m.w;
    CHECK(mc_mat_pack(&w) == 0 && w.pack == 0);
    free_mat(&m);
    make_mat(&m, MC_DT_BF16, 4, 512, 0, 0);
    w = m.w;
    CHECK(mc_mat_pack(&w) == 0 && w.pack == 0);
    free_mat(&m);
}

/* x to 8 significant bits, ties to even, by frexp / nearbyint (the
 * default rounding mode): independent of mc_round_bf16's bit arithmetic;
 * finite x inside bf16's normal range. */
static double ref_round_bf16(float x)
{
    int e;
    double m = frexp((double)x, &e); /* x = m 2^e, 0.5 <= |m| < 1 */
    return ldexp(nearbyint(ldexp(m, 8)), e - 8);
}

/* mc_kernels_set_bf16_acts: known roundings (ties to even, carries into the
 * exponent, past the largest finite value, NaN payloads in the low bits
 * only), then BF16 products of every path against a double sum over the
 * rounded activations (1..97 tokens: the decode rows, the widening loops,
 * the direct tiles; odd column counts), mc_matmul_many bitwise equal to
 * mc_matmul, and the rounding visible (results move off the f32 product). */
static void test_bf16_acts(void)
{
    static const struct {
        float x, want;
    } known[] = {
        {1.0f, 1.0f},
        {1.0f + 0x1p-8f, 1.0f},                      /* tie: down to even */
        {1.0f + 0x1p-7f + 0x1p-8f, 1.0f + 0x1p-6f},  /* tie: up to even */
        {1.0f + 0x1p-8f + 0x1p-20f, 1.0f + 0x1p-7f}, /* past the tie */
        {-(2.0f - 0x1p-9f), -2.0f},                  /* carry into the exponent */
        {0x1.fffffep127f, INFINITY},                 /* past the largest bf16 */
        {0x1.fep127f, 0x1.fep127f},                  /* the largest bf16 */
        {-INFINITY, -INFINITY},
        {0x1p-130f, 0x1p-130f}, /* a denormal bf16 */
        {0x1p-140f, 0.0f},      /* under half of the least bf16 (2^-133) */
        {0.0f, 0.0f},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        float got = mc_round_bf16(known[i].x);
        if (got != known[i].want) {
            fprintf(stderr, "mc_round_bf16(%a) = %a, want %a\n", known[i].x, got, known[i].want);
            check_failures++;
        }
        check_count++;
    }
    uint32_t nan_bits = 0x7f800001u; /* payload in the low 16 bits only: truncating gives inf */
    float nan;
    memcpy(&nan, &nan_bits, sizeof nan);
    CHECK(isnan(mc_round_bf16(nan)));
    CHECK(isnan(mc_round_bf16(-NAN)));

    static const int n_l[] = {1, 2, 3, 4, 5, 7, 13, 17, 37, 97};
    static const int c_l[] = {1, 31, 32, 33, 100, 2053};
    static const int r_l[] = {1, 5, 9, 17};
    mc_kpath all[MC_KPATH_COUNT];
    int na = 0;
    all[na++] = MC_KPATH_SCALAR;
    for (int i = 0; i < n_paths; i++)
        all[na++] = paths[i];
    for (int pi = 0; pi < na; pi++) {
        int before = check_failures, moved = 0, outs = 0;
        for (size_t ni = 0; ni < sizeof n_l / sizeof n_l[0]; ni++) {
            int n = n_l[ni], cols = c_l[(ni + (size_t)pi) % 6], rows = r_l[ni % 4];
            if (ni == 0 || ni == 7)
                cols = 2048 + 37; /* decode rows past their 128-column steps */
            test_mat m;
            make_mat(&m, MC_DT_BF16, rows, cols, (int)ni == 4, 0);
            int ldx = cols + 3, ldy = rows + 1;
            float *x = malloc((size_t)n * ldx * sizeof *x), *row = malloc((size_t)cols * sizeof *row);
            float *got = malloc((size_t)n * ldy * sizeof *got), *exact = malloc((size_t)n * ldy * sizeof *exact);
            float *ref = calloc((size_t)n * ldy, sizeof *ref), *mag = calloc((size_t)n * ldy, sizeof *mag);
            fill(x, (size_t)n * ldx, 2.0f);
            mc_kernels_set_path(MC_KPATH_SCALAR);
            for (int o = 0; o < rows; o++) {
                mc_mat_row_f32(&m.w, o, row);
                for (int t = 0; t < n; t++) {
                    double sum = 0, a = 0;
                    for (int i = 0; i < cols; i++) {
                        double v = row[i] * ref_round_bf16(x[(size_t)t * ldx + i]);
                        sum += v;
                        a += fabs(v);
                    }
                    ref[(size_t)t * ldy + o] = (float)sum;
                    mag[(size_t)t * ldy + o] = (float)a;
                }
            }
            mc_kernels_set_bf16_acts(0);
            run_matmul(all[pi], 1, &m.w, x, n, ldx, exact, ldy);
            mc_kernels_set_bf16_acts(1);
            run_matmul(all[pi], 1, &m.w, x, n, ldx, got, ldy);
            float *many = malloc((size_t)2 * n * ldy * sizeof *many), *many2 = many + (size_t)n * ldy;
            for (size_t k = 0; k < (size_t)2 * n * ldy; k++)
                many[k] = NAN;
            mc_matmul_item it[2] = {{&m.w, x, n, ldx, many, ldy}, {&m.w, x, n, ldx, many2, ldy}};
            mc_kernels_set_threads(2);
            mc_matmul_many(it, 2); /* the same product twice */
            mc_kernels_set_threads(1);
            mc_kernels_set_bf16_acts(0);
            for (int t = 0; t < n; t++) {
                size_t pad = (size_t)t * ldy + rows;
                got[pad] = ref[pad] = mag[pad] = exact[pad] = many[pad] = many2[pad] = 0;
                for (int o = 0; o < rows; o++, outs++)
                    moved += fabs((double)exact[(size_t)t * ldy + o] - ref[(size_t)t * ldy + o]) >
                             4e-6 * mag[(size_t)t * ldy + o];
            }
            char what[160];
            snprintf(what, sizeof what, "%s bf16 activations %dx%d%s n=%d", mc_kpath_name(all[pi]),
                     rows, cols, (int)ni == 4 ? "^T" : "", n);
            compare(what, got, ref, mag, (size_t)n * ldy, 2e-6, 1e-30);
            char mw[200];
            snprintf(mw, sizeof mw, "%s (matmul_many, 2 threads)", what);
            compare(mw, many, got, NULL, (size_t)n * ldy, 0, 0);
            compare(mw, many2, got, NULL, (size_t)n * ldy, 0, 0);
            free(many);
            free(x);
            free(row);
            free(got);
            free(exact);
            free(ref);
            free(mag);
            free_mat(&m);
        }
        /* the f32 products must not pass for the rounded ones */
        if (moved * 2 < outs) {
            fprintf(stderr, "%s: only %d of %d exact f32 products differ from the rounded ones\n",
                    mc_kpath_name(all[pi]), moved, outs);
            check_failures++;
        }
        check_count++;
        printf("path %s, bf16 activations: %s (%d of %d outputs moved by the rounding)\n",
               mc_kpath_name(all[pi]), check_failures == before ? "ok" : "MISMATCH", moved, outs);
    }
}

int main(void)
{
    printf("cpu features: %s\n", mc_cpu_features());
    printf("default path: %s\n", mc_kpath_name(mc_kernels_path()));
    for (int p = 1; p < MC_KPATH_COUNT; p++) {
        if (mc_kpath_supported((mc_kpath)p))
            paths[n_paths++] = (mc_kpath)p;
        else
            printf("path %s: not supported here, skipped\n", mc_kpath_name((mc_kpath)p));
    }
    CHECK(mc_kernels_set_path(MC_KPATH_SCALAR) == 0);
    mc_kpath q;
    CHECK(mc_kpath_from_name("avx512", &q) == 0 && q == MC_KPATH_AVX512);
    CHECK(mc_kpath_from_name("sse9", &q) == -1);
    for (int i = 0; i < n_paths; i++) {
        int before = check_failures;
        test_widen(paths[i]);
        test_matmul(paths[i]);
        test_threads(paths[i]);
        test_many(paths[i]);
        test_block_view(paths[i]);
        test_fp8_codes(paths[i]);
        test_elementwise(paths[i]);
        printf("path %s vs scalar: %s\n", mc_kpath_name(paths[i]),
               check_failures == before ? "ok" : "MISMATCH");
    }
    /* the portable path splits over threads too */
    test_threads(MC_KPATH_SCALAR);
    test_many(MC_KPATH_SCALAR);
    test_block_view(MC_KPATH_SCALAR);
    test_mats_quantize();
    test_packed();
    test_bf16_decode_special();
    test_bf16_acts();
    if (mc_kpath_supported(MC_KPATH_AVX512))
        test_bf16_special(MC_KPATH_AVX512);
    test_amx();
    return check_report("test_kernels");
}
