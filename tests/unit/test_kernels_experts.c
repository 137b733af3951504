/* test_kernels_experts.c - the CPU backend's grouped_experts runs the
 * experts with rows as passes of at most 8 Mi floats of gate/up scratch,
 * each pass as two mc_matmul_many loops. Here a case large enough for two
 * passes (three experts of 1100 rows x 1280, an empty expert, a small one)
 * must give, bit for bit, what one expert at a time through mc_matmul gives
 * (same kernels, same rows, same order of operations), on every kernel path
 * and with 1 and 2 threads; also with an output row weight. Prints the first
 * mismatches. */
#include "backend.h"
#include "check.h"
#include "kernels.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NE = 5, H = 16, I = 1280 };
static const int counts[NE] = {1100, 0, 1100, 1100, 7};

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float runi(float lo, float hi)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) / 16777216.0);
}

static mc_backend *be;
static mc_buffer *bufs[32];
static int n_bufs;

/* A (rows, cols) tensor of dt in a fresh buffer holding host (or garbage). Exits on failure. */
static mc_tensor tens(mc_dtype dt, int64_t rows, int64_t cols, const void *host)
{
    mc_err e;
    mc_err_clear(&e);
    size_t bytes = mc_dtype_row_bytes(dt, cols) * (size_t)rows;
    mc_buffer *b = NULL;
    mc_tensor t;
    if (n_bufs == 32 || mc_buffer_alloc(be, bytes, &b, &e) != MC_OK ||
        (host && mc_buffer_upload(b, 0, host, bytes, &e) != MC_OK) ||
        mc_tensor_init_2d(&t, b, 0, dt, rows, cols, &e) != MC_OK) {
        fprintf(stderr, "tensor: %s\n", e.msg);
        exit(1);
    }
    bufs[n_bufs++] = b;
    return t;
}

/* counts bitwise differences, printing the first 5 */
static void same(const char *what, const float *got, const float *want, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof got[i]) != 0 && bad++ < 5)
            fprintf(stderr, "  %s: [%zu] got %.9g want %.9g\n", what, i, got[i], want[i]);
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %d of %zu values differ\n", what, bad, n);
    }
}

int main(void)
{
    mc_err e;
    mc_err_clear(&e);
    if (mc_backend_cpu_init(&be, &e) != MC_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    int m = 0, off[NE + 1] = {0};
    for (int k = 0; k < NE; k++)
        off[k + 1] = m += counts[k];
    /* weights: BF16 gate/up (I, H) and down (H, I) per expert, host copies kept */
    uint16_t *w[NE][3];
    mc_mat mat[NE][3];
    mc_tensor gate[NE], up[NE], dn[NE];
    for (int k = 0; k < NE; k++)
        for (int j = 0; j < 3; j++) {
            int rows = j < 2 ? I : H, cols = j < 2 ? H : I;
            w[k][j] = malloc((size_t)rows * cols * sizeof(uint16_t));
            for (size_t i = 0; i < (size_t)rows * cols; i++)
                w[k][j][i] = mc_f32_to_bf16(runi(-0.5f, 0.5f));
            mat[k][j] = (mc_mat){.dtype = MC_DT_BF16, .rows = rows, .cols = cols,
                                 .row_stride = (size_t)cols, .data = w[k][j]};
            mc_tensor t = tens(MC_DT_BF16, rows, cols, w[k][j]);
            *(j == 0 ? &gate[k] : j == 1 ? &up[k] : &dn[k]) = t;
        }
    float *x = malloc((size_t)m * H * sizeof *x), *y = malloc((size_t)m * H * sizeof *y);
    float *want = malloc((size_t)m * H * sizeof *want), rw[3307];
    float *g = malloc((size_t)1100 * I * sizeof *g), *u = malloc((size_t)1100 * I * sizeof *u);
    if (m > 3307)
        return 1;
    for (size_t i = 0; i < (size_t)m * H; i++)
        x[i] = runi(-1.0f, 1.0f);
    for (int r = 0; r < m; r++)
        rw[r] = runi(0.1f, 1.0f);
    mc_tensor tx = tens(MC_DT_F32, m, H, x), ty = tens(MC_DT_F32, m, H, NULL);
    mc_tensor to = tens(MC_DT_I32, 1, NE + 1, off), trw = tens(MC_DT_F32, 1, m, rw);
    for (int p = 0; p < MC_KPATH_COUNT; p++) {
        if (!mc_kpath_supported((mc_kpath)p))
            continue;
        mc_kernels_set_path((mc_kpath)p);
        for (int weighted = 0; weighted < 2; weighted++) {
            /* one expert at a time, one thread: the order the reference uses */
            mc_kernels_set_threads(1);
            for (int k = 0; k < NE; k++) {
                int ne = counts[k];
                if (ne == 0)
                    continue;
                mc_matmul(&mat[k][0], x + (size_t)off[k] * H, ne, H, g, I); /* (ne, I) */
                mc_matmul(&mat[k][1], x + (size_t)off[k] * H, ne, H, u, I); /* (ne, I) */
                for (size_t i = 0; i < (size_t)ne * I; i++)
                    g[i] = mc_silu(g[i]) * u[i];
                mc_matmul(&mat[k][2], g, ne, I, want + (size_t)off[k] * H, H); /* (ne, H) */
            }
            if (weighted)
                for (int r = 0; r < m; r++)
                    for (int h = 0; h < H; h++)
                        want[(size_t)r * H + h] = rw[r] * want[(size_t)r * H + h];
            mc_experts_opts o = {.row_weight = weighted ? &trw : NULL};
            for (int threads = 1; threads <= 2; threads++) {
                mc_kernels_set_threads(threads);
                mc_err_clear(&e);
                CHECK(mc_op_grouped_experts(be, &tx, &to, NE, gate, up, dn, &o, &ty, &e) == MC_OK);
                mc_err_clear(&e);
                CHECK(mc_tensor_download(&ty, y, &e) == MC_OK);
                char what[96];
                snprintf(what, sizeof what, "%s grouped_experts, 2 passes, %d threads%s",
                         mc_kpath_name((mc_kpath)p), threads, weighted ? ", row weight" : "");
                same(what, y, want, (size_t)m * H);
            }
        }
    }
    mc_kernels_set_threads(1);
    while (n_bufs > 0)
        mc_buffer_free(bufs[--n_bufs]);
    mc_backend_free(be);
    for (int k = 0; k < NE; k++)
        for (int j = 0; j < 3; j++)
            free(w[k][j]);
    free(x);
    free(y);
    free(want);
    free(g);
    free(u);
    return check_report("test_kernels_experts");
}
