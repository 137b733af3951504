/* test_kernels_exact.c - kernel entries that must equal a reference bit
 * for bit, on every kernel path the CPU has:
 *   - the activation quantization (mc_kops.quantize_act) against the
 *     portable mc_quantize_act_row, byte for byte: the products of all
 *     paths read the same quantized activations, so any difference here
 *     would be a difference in logits. Rows of many lengths (tails inside
 *     a block, rows shorter than a block), blocks of 32 (Q8_0) and 256
 *     (Q4_K / Q6_K) with sums per 32 and 16, and values chosen to hit the
 *     edges: exact halves after scaling (round to even), all-zero blocks,
 *     denormals, one huge value, negative zero, NaN and infinities;
 *   - mc_dot_many / mc_wsum_rows (attention heads sharing a key or value
 *     row) against mc_dot once per vector and mc_axpy once per row (zero
 *     weights skipped or not), for 1..19 vectors and lengths 1..300.
 * Prints the first mismatches. */
#include "check.h"
#include "cpu/kern.h"
#include "kernels.h"
#include "rng.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* One row of `cols` values of kind `kind`. */
static void make_row(float *x, int cols, int kind)
{
    for (int i = 0; i < cols; i++)
        x[i] = runi(-3.0f, 3.0f);
    switch (kind) {
    case 1: /* halves: amax 127 makes is = 1, so k + 0.5 are exact ties */
        for (int i = 0; i < cols; i++)
            x[i] = (float)((int)(rnext() % 254) - 127) + ((rnext() & 1) ? 0.5f : 0.0f);
        for (int i = 0; i < cols; i += 32)
            x[i] = 127.0f;
        break;
    case 2: /* zero blocks and negative zeros */
        for (int i = 0; i < cols; i++)
            x[i] = (i / 32) % 2 ? -0.0f : 0.0f;
        break;
    case 3: /* denormals and tiny values */
        for (int i = 0; i < cols; i++)
            x[i] = runi(-1.0f, 1.0f) * 1e-39f;
        break;
    case 4: /* one huge value per 97 */
        for (int i = 0; i < cols; i += 97)
            x[i] = 3e38f;
        break;
    case 5: /* NaN and infinities here and there */
        for (int i = 5; i < cols; i += 41)
            x[i] = NAN;
        for (int i = 17; i < cols; i += 300)
            x[i] = (i & 1) ? INFINITY : -INFINITY;
        break;
    default:
        break;
    }
}

static int compare_row(const char *path, int cols, int blk, int sub, int kind)
{
    int kp = (cols + blk - 1) / blk * blk, nb = kp / blk, ns = sub ? kp / sub : 0;
    float *x = malloc((size_t)cols * sizeof *x);
    int8_t *q0 = malloc((size_t)kp), *q1 = malloc((size_t)kp);
    float *d0 = malloc((size_t)nb * sizeof *d0), *d1 = malloc((size_t)nb * sizeof *d1);
    int16_t *s0 = malloc((size_t)(ns + 1) * sizeof *s0), *s1 = malloc((size_t)(ns + 1) * sizeof *s1);
    if (!x || !q0 || !q1 || !d0 || !d1 || !s0 || !s1) {
        CHECK(!"out of memory");
        return 1;
    }
    make_row(x, cols, kind);
    memset(q1, 0x55, (size_t)kp); /* every byte must be written */
    mc_quantize_act_row(x, cols, kp, blk, q0, d0, sub ? s0 : NULL, sub ? sub : 32);
    mc_kops_current()->quantize_act(x, cols, kp, blk, q1, d1, sub ? s1 : NULL, sub ? sub : 32);
    int bad = 0;
    for (int i = 0; i < kp; i++)
        if (q0[i] != q1[i] && bad++ < 3)
            fprintf(stderr, "  %s cols %d blk %d kind %d: q[%d] = %d, want %d (x = %.9g, d = %.9g)\n",
                    path, cols, blk, kind, i, q1[i], q0[i], i < cols ? x[i] : 0.0, d0[i / blk]);
    for (int b = 0; b < nb; b++)
        if (memcmp(&d0[b], &d1[b], sizeof d0[b]) != 0 && bad++ < 3)
            fprintf(stderr, "  %s cols %d blk %d kind %d: d[%d] = %.9g, want %.9g\n", path, cols,
                    blk, kind, b, d1[b], d0[b]);
    for (int j = 0; j < ns; j++)
        if (s0[j] != s1[j] && bad++ < 3)
            fprintf(stderr, "  %s cols %d blk %d sub %d kind %d: bsum[%d] = %d, want %d\n", path,
                    cols, blk, sub, kind, j, s1[j], s0[j]);
    free(x);
    free(q0);
    free(q1);
    free(d0);
    free(d1);
    free(s0);
    free(s1);
    return bad;
}

/* mc_dot_many against one mc_dot per vector; mc_wsum_rows against mc_axpy per row. */
static int compare_many(const char *path, int m, int n)
{
    float *a = malloc((size_t)m * n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
    float *y0 = malloc((size_t)m * n * sizeof *y0), *y1 = malloc((size_t)m * n * sizeof *y1);
    float got[32] = {0}, want[32] = {0};
    const float *ap[32] = {0};
    float *p0[32] = {0}, *p1[32] = {0};
    if (!a || !b || !y0 || !y1) {
        CHECK(!"out of memory");
        return 1;
    }
    for (int i = 0; i < m * n; i++)
        a[i] = runi(-2.0f, 2.0f);
    for (int i = 0; i < n; i++)
        b[i] = runi(-2.0f, 2.0f);
    for (int j = 0; j < m; j++) {
        ap[j] = a + (size_t)j * n;
        p0[j] = y0 + (size_t)j * n;
        p1[j] = y1 + (size_t)j * n;
    }
    mc_dot_many(ap, m, b, n, got);
    for (int j = 0; j < m; j++)
        want[j] = mc_dot(ap[j], b, n);
    int bad = 0;
    for (int j = 0; j < m; j++)
        if (memcmp(&got[j], &want[j], sizeof got[j]) != 0 && bad++ < 3)
            fprintf(stderr, "  %s m %d n %d: dot_many[%d] = %.9g, mc_dot %.9g\n", path, m, n, j,
                    got[j], want[j]);
    /* mc_wsum_rows: m outputs over S = n % 23 + 1 rows of length n and over
     * 150 + 3 (n % 97) rows (several of the avx512 path's tiles of rows, the
     * last one partial; the rows are slices of a), weights with zeros,
     * against zeroing + mc_axpy */
    static const float *rows[450];
    int S_of[2] = {n % 23 + 1, 150 + 3 * (n % 97)};
    for (int si = 0; si < 2; si++) {
        int S = S_of[si];
        float *wt = malloc((size_t)m * S * sizeof *wt);
        for (int i = 0; i < S; i++)
            rows[i] = a + (size_t)((i * 7) % m) * n;
        for (int i = 0; wt && i < m * S; i++)
            wt[i] = i % 7 == 2 ? 0.0f : i % 11 == 5 ? -0.0f : runi(-1.0f, 1.0f);
        for (int skip = 0; wt && skip <= 1; skip++) {
            for (int j = 0; j < m; j++) {
                memset(p0[j], 0, (size_t)n * sizeof *y0);
                for (int i = 0; i < S; i++)
                    if (!skip || wt[i * m + j] != 0.0f)
                        mc_axpy(p0[j], wt[i * m + j], rows[i], n);
            }
            memset(y1, 0x7f, (size_t)m * n * sizeof *y1); /* every value must be written */
            mc_wsum_rows(p1, m, wt, rows, S, n, skip);
            for (int i = 0; i < m * n; i++)
                if (memcmp(&y0[i], &y1[i], sizeof y0[i]) != 0 && bad++ < 3)
                    fprintf(stderr, "  %s m %d n %d S %d skip %d: wsum_rows output %d [%d] = "
                            "%.9g, axpy %.9g\n", path, m, n, S, skip, i / n, i % n, y1[i], y0[i]);
        }
        CHECK(wt != NULL);
        /* the bf16 row variants (a KV cache in bf16): the rows rounded to
         * bf16, against the f32 functions over the same rows widened */
        uint16_t *ah = malloc((size_t)m * n * sizeof *ah);
        float *aw = malloc((size_t)m * n * sizeof *aw);
        static const uint16_t *hrows[450];
        static const float *wrows[450];
        for (int i = 0; ah && aw && i < m * n; i++) {
            ah[i] = mc_f32_to_bf16(a[i]);
            aw[i] = mc_bf16_to_f32(ah[i]);
        }
        for (int j = 0; ah && aw && j < m; j++) { /* a bf16 row against the f32 queries a */
            mc_dot_many_bf16(ap + j, m - j, ah + (size_t)j * n, n, got);
            mc_dot_many(ap + j, m - j, aw + (size_t)j * n, n, want);
            for (int k = 0; k < m - j; k++)
                if (memcmp(&got[k], &want[k], sizeof got[k]) != 0 && bad++ < 3)
                    fprintf(stderr, "  %s m %d n %d: dot_many_bf16[%d] = %.9g, over widened "
                            "rows %.9g\n", path, m - j, n, k, got[k], want[k]);
        }
        for (int i = 0; ah && aw && wt && i < S; i++) {
            size_t off = (size_t)(rows[i] - a);
            hrows[i] = ah + off;
            wrows[i] = aw + off;
        }
        for (int skip = 0; ah && aw && wt && skip <= 1; skip++) {
            memset(y0, 0x7f, (size_t)m * n * sizeof *y0);
            memset(y1, 0x7f, (size_t)m * n * sizeof *y1);
            mc_wsum_rows(p0, m, wt, wrows, S, n, skip);
            mc_wsum_rows_bf16(p1, m, wt, hrows, S, n, skip);
            for (int i = 0; i < m * n; i++)
                if (memcmp(&y0[i], &y1[i], sizeof y0[i]) != 0 && bad++ < 3)
                    fprintf(stderr, "  %s m %d n %d S %d skip %d: wsum_rows_bf16 output %d [%d] "
                            "= %.9g, over widened rows %.9g\n", path, m, n, S, skip, i / n,
                            i % n, y1[i], y0[i]);
        }
        CHECK(ah != NULL && aw != NULL);
        free(ah);
        free(aw);
        free(wt);
    }
    free(a);
    free(b);
    free(y0);
    free(y1);
    return bad;
}

int main(void)
{
    rng = 0x9E3779B97F4A7C15ull;
    static const int cols[] = {1, 15, 16, 17, 31, 32, 33, 63, 64, 100, 255, 256, 257, 511, 768, 1000, 2048, 2050};
    int paths = 0;
    for (int p = 0; p < MC_KPATH_COUNT; p++) {
        if (!mc_kpath_supported((mc_kpath)p) || mc_kernels_set_path((mc_kpath)p) != 0)
            continue;
        paths++;
        const char *name = mc_kpath_name((mc_kpath)p);
        int bad = 0, rows = 0;
        for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++)
            for (int kind = 0; kind <= 5; kind++)
                for (int rep = 0; rep < 4; rep++) {
                    bad += compare_row(name, cols[c], 32, 0, kind);        /* Q8_0 */
                    bad += compare_row(name, cols[c], 256, 32, kind);      /* Q4_K */
                    bad += compare_row(name, cols[c], 256, 16, kind);      /* Q6_K */
                    rows += 3;
                }
        check_count++;
        if (bad) {
            check_failures++;
            fprintf(stderr, "path %s: %d differences over %d rows\n", name, bad, rows);
        } else {
            printf("path %s: %d rows equal to mc_quantize_act_row\n", name, rows);
        }
        static const int lens[] = {1, 7, 16, 17, 63, 64, 65, 128, 130, 192, 300};
        bad = 0;
        for (int m = 1; m <= 19; m++)
            for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
                bad += compare_many(name, m, lens[l]);
        check_count++;
        if (bad) {
            check_failures++;
            fprintf(stderr, "path %s: dot_many / wsum_rows: %d differences\n", name, bad);
        } else {
            printf("path %s: dot_many / wsum_rows equal to mc_dot / mc_axpy; their bf16-row "
                   "variants to them over the widened rows\n", name);
        }
    }
    CHECK(paths >= 1);
    return check_report("test_kernels_exact");
}
