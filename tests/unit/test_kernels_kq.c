/* test_kernels_kq.c - products of Q6_K, Q5_K and Q4_K weights (llama.cpp's
 * blocks, read from GGUF files as stored) on every kernel path:
 *
 * - the scalar path against an f64 product of the dequantized weights
 *   (mc_dequantize_row_q6_k / _q5_k, llama.cpp's rounding) and the
 *   activations quantized here as the kernels' front end documents it (per
 *   256 values: scale amax / 127, round half to even, clamp to +-127):
 *   within 1e-5 of sum |w| |x| per output (the kernels sum exact integers
 *   and round d x scale once; a wrong bit of the unpacking gives O(1)); the
 *   error against the unquantized activations is printed, not judged;
 * - every SIMD path against the scalar path within 2e-6 of sum |w| |x| per
 *   output (the products are exact integers; only f32 additions differ);
 * - rows {1, 3, 17, 64} x cols {256, 512, 2048, 2304} (1, 2, 8 and 9
 *   super-blocks: the repacked layouts' odd last one; the avx2 Q6_K rows
 *   keep 8 blocks' sums a vector from 8 blocks on) x 1..13, 16, 33, 64 tokens, random
 *   blocks (every bit pattern of the values; Q6_K scales of both signs,
 *   Q5_K 6-bit scales and mins over their whole range);
 * - a column view (a tensor-parallel slice: rows 2 blocks apart, starting at
 *   the second block) against its dequantized rows;
 * - on the scalar and avx2 paths each token's outputs bitwise those of the
 *   token alone (the avx2 path's passes of 1..4 tokens and token groups of
 *   8 do the same arithmetic per token);
 * - 3 threads bitwise equal to 1 on a product the pool splits;
 * - the same blocks repacked as the avx512 path does at load (mc_mat_pack,
 *   MC_MAT_PACK_Q6_K_X16 / _Q5_K_X16): read back bitwise, every path's
 *   products within 2e-6 of the scalar path's (bitwise where a path unpacks
 *   them as it reads), threads bitwise.
 * Prints the first 5 mismatches of a case. */
#include "check.h"
#include "dtype.h"
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint32_t rbits(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float runi(float lo, float hi) { return lo + (hi - lo) * (float)((rbits() >> 8) / 16777216.0); }

/* rows x cols of random blocks of dt (Q6_K, Q5_K or Q4_K; cols a multiple of 256) */
static unsigned char *random_blocks(mc_dtype dt, int rows, int cols)
{
    size_t rb = mc_dtype_row_bytes(dt, cols), bb = mc_dtype_block_bytes(dt);
    unsigned char *p = malloc(rb * (size_t)rows);
    for (size_t b = 0; b < rb * (size_t)rows / bb; b++) {
        if (dt == MC_DT_Q6_K) {
            mc_block_q6_k blk;
            for (size_t i = 0; i < sizeof blk.ql; i++)
                blk.ql[i] = (uint8_t)rbits();
            for (size_t i = 0; i < sizeof blk.qh; i++)
                blk.qh[i] = (uint8_t)rbits();
            for (size_t i = 0; i < sizeof blk.scales; i++)
                blk.scales[i] = (int8_t)(rbits() & 0xff);
            blk.d = mc_f32_to_f16(runi(1e-4f, 2e-3f) * (rbits() & 1 ? -1.0f : 1.0f));
            memcpy(p + b * bb, &blk, sizeof blk);
        } else { /* Q4_K / Q5_K: d, dmin, then every byte random (6-bit scales and mins 0..63) */
            uint16_t dd[2];
            for (size_t i = sizeof dd; i < bb; i++)
                p[b * bb + i] = (uint8_t)rbits();
            for (int k = 0; k < 2; k++)
                dd[k] = mc_f32_to_f16(runi(1e-4f, 2e-3f) * (rbits() & 1 ? -1.0f : 1.0f));
            memcpy(p + b * bb, dd, sizeof dd);
        }
    }
    return p;
}

static void random_x(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = runi(-1.0f, 1.0f) * (rbits() % 61 == 0 ? 20.0f : 1.0f); /* some outliers */
}

/* x[n][cols] as the Q6_K / Q5_K products see it: per 256 values (zero-padded)
 * q = round_half_even(x * 127 / amax), clamped, times amax / 127 */
static float *quantized(const float *x, int n, int cols)
{
    float *o = malloc(sizeof *o * (size_t)n * cols);
    for (int t = 0; t < n; t++)
        for (int b0 = 0; b0 < cols; b0 += 256) {
            const float *v = x + (size_t)t * cols + b0;
            int len = cols - b0 < 256 ? cols - b0 : 256;
            float amax = 0;
            for (int i = 0; i < len; i++)
                amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
            float d = amax / 127.0f, is = amax > 0 ? 127.0f / amax : 0.0f;
            for (int i = 0; i < len; i++) {
                float q = nearbyintf(v[i] * is);
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                o[(size_t)t * cols + b0 + i] = q * d;
            }
        }
    return o;
}

/* the dequantized rows of w (stride-aware) */
static float *dequant(const mc_mat *w)
{
    float *f = malloc(sizeof *f * (size_t)w->rows * (size_t)w->cols);
    for (int r = 0; r < w->rows; r++)
        mc_mat_row_f32(w, r, f + (size_t)r * w->cols);
    return f;
}

/* One case on the current path: the product against the f64 reference
 * (scalar path: the relative error) or against want (other paths: per
 * output within 2e-6 of sum |w| |x|). Returns the product (caller frees). */
static float *run_case(const char *what, const mc_mat *w, const float *wf, const float *x, int n,
                       const float *want)
{
    float *y = malloc(sizeof *y * (size_t)n * (size_t)w->rows);
    for (size_t i = 0; i < (size_t)n * (size_t)w->rows; i++)
        y[i] = NAN; /* every output must be written */
    mc_matmul(w, x, n, w->cols, y, w->rows);
    float *xq = quantized(x, n, w->cols);
    int bad = 0;
    for (int t = 0; t < n; t++)
        for (int o = 0; o < w->rows; o++) {
            double ref = 0, mag = 0;
            for (int i = 0; i < w->cols; i++) {
                double p = (double)wf[(size_t)o * w->cols + i] * xq[(size_t)t * w->cols + i];
                ref += p;
                mag += fabs(p);
            }
            float got = y[(size_t)t * w->rows + o];
            double tol = want ? 2e-6 * mag : 1e-5 * mag;
            double exp = want ? want[(size_t)t * w->rows + o] : ref;
            if (!(fabs((double)got - exp) <= tol) && bad++ < 5)
                fprintf(stderr, "  %s: [t %d, row %d] got %.9g want %.9g (%s, tol %.3g)\n", what,
                        t, o, got, exp, want ? "the scalar path" : "f64 product", tol);
        }
    free(xq);
    CHECK(bad == 0);
    if (bad)
        fprintf(stderr, "FAILED: %s\n", what);
    return y;
}

/* The scalar and avx2 paths: each token's outputs bitwise those of the
 * token alone (a token's sums do not depend on the tokens beside it in a
 * pass: decode, prefill and batches give the same bits). */
static void alone_case(const char *what, const mc_mat *w, const float *x, int n, const float *y)
{
    float *y1 = malloc(sizeof *y1 * (size_t)w->rows);
    int bad = 0;
    for (int t = 0; t < n; t++) {
        mc_matmul(w, x + (size_t)t * w->cols, 1, w->cols, y1, w->rows);
        for (int o = 0; o < w->rows; o++)
            if (memcmp(&y1[o], &y[(size_t)t * w->rows + o], sizeof *y1) != 0 && bad++ < 5)
                fprintf(stderr, "  %s: [t %d, row %d] %.9g with the others, %.9g alone\n", what,
                        t, o, y[(size_t)t * w->rows + o], y1[o]);
    }
    CHECK(bad == 0);
    free(y1);
}

static void run_format(mc_dtype dt)
{
    const char *fn = mc_dtype_name(dt);
    int layout = dt == MC_DT_Q6_K   ? MC_MAT_PACK_Q6_K_X16
                 : dt == MC_DT_Q4_K ? MC_MAT_PACK_Q4_K_X16
                                    : MC_MAT_PACK_Q5_K_X16;
    size_t bb = mc_dtype_block_bytes(dt);
    static const int rows_set[] = {1, 3, 17, 64}, cols_set[] = {256, 512, 2048, 2304};
    static const int tok_set[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 33, 64};
    mc_kernels_set_threads(1);
    double worst = 0;
    for (size_t ri = 0; ri < sizeof rows_set / sizeof *rows_set; ri++)
        for (size_t ci = 0; ci < sizeof cols_set / sizeof *cols_set; ci++) {
            int rows = rows_set[ri], cols = cols_set[ci];
            unsigned char *data = random_blocks(dt, rows, cols);
            mc_mat w = {.dtype = dt, .rows = rows, .cols = cols,
                        .row_stride = (size_t)cols, .data = data};
            float *wf = dequant(&w);
            /* the rows repacked as the avx512 path does at load (mc_mat_pack) */
            unsigned char *pdata = malloc(mc_dtype_row_bytes(dt, cols) * (size_t)rows);
            memcpy(pdata, data, mc_dtype_row_bytes(dt, cols) * (size_t)rows);
            mc_mat pw = w;
            pw.data = pdata;
            int packed = 0;
            if (!mc_kpath_supported(MC_KPATH_AVX512) && ri == 0 && ci == 0)
                printf("%s: no avx512 path on this CPU: the repacked rows are not tested\n", fn);
            if (mc_kpath_supported(MC_KPATH_AVX512)) {
                mc_kernels_set_path(MC_KPATH_AVX512);
                packed = mc_mat_pack(&pw);
                CHECK(packed && pw.pack == layout);
                float *pf = dequant(&pw); /* read back as stored */
                CHECK(memcmp(pf, wf, sizeof *pf * (size_t)rows * cols) == 0);
                free(pf);
            }
            for (size_t ti = 0; ti < sizeof tok_set / sizeof *tok_set; ti++) {
                int n = tok_set[ti];
                float *x = malloc(sizeof *x * (size_t)n * (size_t)cols);
                random_x(x, (size_t)n * cols);
                float *want = NULL;
                for (int p = 0; p < MC_KPATH_COUNT; p++) {
                    if (!mc_kpath_supported((mc_kpath)p))
                        continue;
                    mc_kernels_set_path((mc_kpath)p);
                    char what[128];
                    snprintf(what, sizeof what, "%s %s %dx%d, %d tokens",
                             mc_kpath_name((mc_kpath)p), fn, rows, cols, n);
                    float *y = run_case(what, &w, wf, x, n, p == MC_KPATH_SCALAR ? NULL : want);
                    if (n > 1 && (p == MC_KPATH_SCALAR || p == MC_KPATH_AVX2))
                        alone_case(what, &w, x, n, y);
                    if (packed) { /* the repacked rows: the same products */
                        snprintf(what, sizeof what, "%s %s x16 %dx%d, %d tokens",
                                 mc_kpath_name((mc_kpath)p), fn, rows, cols, n);
                        float *yp = run_case(what, &pw, wf, x, n, p == MC_KPATH_SCALAR ? NULL : want ? want : y);
                        if (p != MC_KPATH_AVX512) /* unpacked as read: bitwise */
                            CHECK(memcmp(yp, y, sizeof *y * (size_t)n * rows) == 0);
                        free(yp);
                    }
                    if (p == MC_KPATH_SCALAR) {
                        want = y;
                        double num = 0, den = 0;
                        for (int t = 0; t < n; t++)
                            for (int o = 0; o < rows; o++) {
                                double ref = 0;
                                for (int i = 0; i < cols; i++)
                                    ref += (double)wf[(size_t)o * cols + i] * x[(size_t)t * cols + i];
                                double d = y[(size_t)t * rows + o] - ref;
                                num += d * d;
                                den += ref * ref;
                            }
                        if (den > 0 && sqrt(num / den) > worst)
                            worst = sqrt(num / den);
                    } else {
                        free(y);
                    }
                }
                free(want);
                free(x);
            }
            free(wf);
            free(data);
            free(pdata);
        }
    printf("scalar %s products: worst relative error %.3g against the f64 product with the "
           "unquantized activations (the 8-bit activations' share, not judged)\n", fn, worst);

    /* a column view: 2 blocks of 4 per row, starting at the second block */
    {
        int rows = 19, full = 1024;
        unsigned char *data = random_blocks(dt, rows, full);
        mc_mat v = {.dtype = dt, .rows = rows, .cols = 512, .row_stride = (size_t)full,
                    .data = data + bb};
        float *vf = dequant(&v), *all = malloc(sizeof *all * (size_t)full);
        /* the view's rows are columns 256..767 of the full rows */
        mc_mat w = {.dtype = dt, .rows = rows, .cols = full, .row_stride = (size_t)full,
                    .data = data};
        int vbad = 0;
        for (int r = 0; r < rows; r++) {
            mc_mat_row_f32(&w, r, all);
            if (memcmp(all + 256, vf + (size_t)r * 512, 512 * sizeof *all) != 0 && vbad++ < 5)
                fprintf(stderr, "  column view: row %d differs from columns 256..767\n", r);
        }
        CHECK(vbad == 0);
        float *x = malloc(sizeof *x * 7 * 512);
        random_x(x, 7 * 512);
        for (int p = 0; p < MC_KPATH_COUNT; p++) {
            if (!mc_kpath_supported((mc_kpath)p))
                continue;
            mc_kernels_set_path((mc_kpath)p);
            char what[96];
            snprintf(what, sizeof what, "%s %s column view", mc_kpath_name((mc_kpath)p), fn);
            free(run_case(what, &v, vf, x, 7, NULL));
        }
        free(x);
        free(all);
        free(vf);
        free(data);
    }

    /* threads: 3 bitwise equal to 1 on a product the pool splits */
    {
        int rows = 640, cols = 2048, n = 9;
        unsigned char *data = random_blocks(dt, rows, cols);
        mc_mat w = {.dtype = dt, .rows = rows, .cols = cols, .row_stride = (size_t)cols,
                    .data = data};
        float *x = malloc(sizeof *x * (size_t)n * cols);
        float *y1 = malloc(sizeof *y1 * (size_t)n * rows), *y3 = malloc(sizeof *y3 * (size_t)n * rows);
        random_x(x, (size_t)n * cols);
        unsigned char *pdata = malloc(mc_dtype_row_bytes(dt, cols) * (size_t)rows);
        memcpy(pdata, data, mc_dtype_row_bytes(dt, cols) * (size_t)rows);
        mc_mat pw = w; /* repacked (avx512), when that path is here */
        pw.data = pdata;
        if (mc_kpath_supported(MC_KPATH_AVX512)) {
            mc_kernels_set_path(MC_KPATH_AVX512);
            CHECK(mc_mat_pack(&pw) == 1);
        }
        for (int p = 0; p < MC_KPATH_COUNT; p++) {
            if (!mc_kpath_supported((mc_kpath)p))
                continue;
            mc_kernels_set_path((mc_kpath)p);
            for (int k = 0; k < 2; k++)
                for (int nt = 1; nt <= 9; nt += 8) { /* 1 token and 9 */
                    const mc_mat *m = k ? &pw : &w;
                    mc_kernels_set_threads(1);
                    mc_matmul(m, x, nt, cols, y1, rows);
                    mc_kernels_set_threads(3);
                    mc_matmul(m, x, nt, cols, y3, rows);
                    int bad = 0;
                    for (int i = 0; i < nt * rows; i++)
                        if (memcmp(&y1[i], &y3[i], sizeof *y1) != 0 && bad++ < 5)
                            fprintf(stderr, "  %s %s threads%s, %d tokens: [%d] 3 threads %.9g, 1 "
                                    "thread %.9g\n", mc_kpath_name((mc_kpath)p), fn,
                                    k ? " (repacked rows)" : "", nt, i, y3[i], y1[i]);
                    CHECK(bad == 0);
                }
        }
        free(pdata);
        mc_kernels_set_threads(1);
        free(x);
        free(y1);
        free(y3);
        free(data);
    }
}

int main(void)
{
    run_format(MC_DT_Q6_K);
    run_format(MC_DT_Q5_K);
    run_format(MC_DT_Q4_K);
    return check_report("test_kernels_kq");
}
