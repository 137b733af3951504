/* test_backend_cuda.c - the CUDA backend (kernels/cuda/) against the CPU
 * backend: every implemented op on fresh random inputs of odd sizes (rows
 * 1..64, columns not multiples of 32 where the format allows), both
 * backends given the same bytes, outputs poisoned with NaN first so that an
 * unwritten element fails. Tolerances, relative to the largest |value| of
 * the reference's row:
 *   1e-5  every F32-accumulating path (element-type and Q8_0 / Q4_K / Q6_K
 *         products, which quantize the activations exactly as the CPU does,
 *         and the row / element-wise ops);
 *   1e-2  the cuBLAS paths (BF16 weights, more than 8 tokens: activations
 *         rounded to BF16; row-major FP8 weights, more than 32 tokens:
 *         widened to BF16 a chunk of rows at a time, code times block scale rounded once - the harness
 *         sets MC_CUDA_FP8_CHUNK_BYTES to 16 KiB so most FP8 cases take
 *         several chunks; MC_CUDA_FP8=gemv keeps them on the kernel, 1e-5);
 *   1e-6  embed (a gather of dequantized weights);
 *   exact topk's ids and values (its log-sum-exp to 1e-12).
 * The DeepSeek-V4 ops through the front end's host round trip (the CPU
 * acting as a device; CUDA with MC_CUDA_V4=host, in place of its own
 * kernels, which test_backend_cuda_layers.c compares): v4_hash_route must
 * give the CPU's answer and refusal to the bit. Prints the first mismatches. The paged-KV-cache and MoE ops
 * are test_backend_cuda_layers.c's.
 *
 * Exit 77 (CTest's skip) with "skipped: built without CUDA" in builds
 * without the backend and "skipped: no GPU" where no device is visible.
 * MC_CUDA_TEST_ON_CPU=1 runs the whole harness with the CPU acting as the
 * device under test (mc_backend_cpu_device_init: its memory reached only by
 * upload / download; a self-check of this file on machines without a GPU,
 * CTest's unit.test_backend_cuda.cpu_device).
 *
 * `test_backend_cuda --bench` instead prints the GPU benchmark table that
 * scripts/gpu-check.sh shows (docs/gpu.md); `--bench-smoke` runs the same
 * code on small shapes (a check of the benchmark code, not a measurement). */
#include "backend.h"
#include "backend_pair.h"
#include "check.h"
#include "dtype.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int dut_is_cuda;

/* got (the device) against want (the reference), rows x cols: |got - want|
 * <= rtol * max |want| of the row; prints the first 5 mismatches. */
static void cmp_rows(const char *what, const float *got, const float *want, int64_t rows,
                     int64_t cols, double rtol)
{
    int64_t bad = 0;
    for (int64_t r = 0; r < rows; r++) {
        double mx = 0;
        for (int64_t i = 0; i < cols; i++)
            mx = fmax(mx, fabs(want[r * cols + i]));
        double tol = rtol * mx;
        for (int64_t i = 0; i < cols; i++) {
            double g = got[r * cols + i], w = want[r * cols + i];
            if (!(fabs(g - w) <= tol) && !(g == w)) {
                if (bad < 5)
                    fprintf(stderr, "  %s: [%lld, %lld] got %.9g want %.9g (tol %.3g)\n", what,
                            (long long)r, (long long)i, g, w, tol);
                bad++;
            }
        }
    }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %lld of %lld values differ\n", what, (long long)bad,
                (long long)(rows * cols));
    }
}

/* Downloads both sides of p (F32) and compares them. */
static void cmp_pair(const char *what, const pair *p, double rtol)
{
    int64_t rows = mc_tensor_rows(&p->t[0]), cols = mc_tensor_cols(&p->t[0]);
    float *h[2];
    for (int s = 0; s < 2; s++) {
        h[s] = malloc((size_t)(rows * cols) * sizeof(float));
        OK(mc_tensor_download(&p->t[s], h[s], err_));
    }
    cmp_rows(what, h[1], h[0], rows, cols, rtol);
    free(h[0]);
    free(h[1]);
}

/* ---- matmul ---- */

/* Host bytes of a weight [O, I] (packed rows of I, or for `tr` the stored
 * W^T [I, ld]) in dtype dt from uniform values. Freed by the caller. */
static void *weight_bytes(mc_dtype dt, int O, int I, int tr, int64_t ld)
{
    int64_t srows = tr ? I : O, scols = tr ? ld : I;
    size_t rb = mc_dtype_row_bytes(dt, scols);
    unsigned char *h = calloc((size_t)srows, rb);
    float *row = rnd((size_t)scols, dt == MC_DT_F8_E4M3 ? 2.0f : 1.0f);
    for (int64_t r = 0; r < srows; r++) {
        unsigned char *o = h + (size_t)r * rb;
        for (int64_t i = 0; i < scols; i++)
            row[i] = runi(dt == MC_DT_F8_E4M3 ? -2.0f : -1.0f, dt == MC_DT_F8_E4M3 ? 2.0f : 1.0f);
        if (dt == MC_DT_Q6_K) {
            random_q6_k_blocks(o, rb);
            continue;
        }
        if (mc_dtype_is_block(dt)) {
            mc_quantize_row(dt, row, o, scols);
            continue;
        }
        for (int64_t i = 0; i < scols; i++) {
            if (dt == MC_DT_F32)
                memcpy(o + 4 * i, &row[i], 4);
            else if (dt == MC_DT_BF16 || dt == MC_DT_F16) {
                uint16_t v = dt == MC_DT_BF16 ? mc_f32_to_bf16(row[i]) : mc_f32_to_f16(row[i]);
                memcpy(o + 2 * i, &v, 2);
            } else
                o[i] = mc_f32_to_fp8_e4m3(row[i]);
        }
    }
    free(row);
    return h;
}

/* One product of n tokens through W [O, I] on both backends; x rows ldx
 * apart, y rows ldy apart; scale_block > 0: FP8 block scales of that size. */
static void matmul_case(mc_dtype dt, int O, int I, int n, int tr, int scale_block, int ldx_pad,
                        int ldy_pad)
{
    int64_t ld = tr ? O + 2 : I;
    void *wh = weight_bytes(dt, O, I, tr, ld);
    pair w, x, y, sc;
    float *xh = rnd((size_t)n * I, 1.0f);
    pair_new(&x, MC_DT_F32, 2, (int64_t[]){n, I}, I + ldx_pad, xh);
    pair_new(&y, MC_DT_F32, 2, (int64_t[]){n, O}, O + ldy_pad, NULL);
    if (tr) {
        size_t bytes = (size_t)I * mc_dtype_row_bytes(dt, ld);
        for (int s = 0; s < 2; s++) {
            OK(mc_buffer_alloc(B[s], bytes, &w.b[s], err_));
            OK(mc_buffer_upload(w.b[s], 0, wh, bytes, err_));
            OK(mc_tensor_init_transposed(&w.t[s], w.b[s], 0, dt, O, I, ld, err_));
        }
    } else {
        pair_2d(&w, dt, O, I, mc_dtype_is_block(dt) ? (I + mc_dtype_block_elems(dt) - 1) /
                                   mc_dtype_block_elems(dt) * mc_dtype_block_elems(dt) : I, wh);
    }
    if (scale_block) {
        int sr = (O + scale_block - 1) / scale_block, scn = (I + scale_block - 1) / scale_block;
        float *sh = malloc((size_t)sr * scn * sizeof *sh);
        for (int i = 0; i < sr * scn; i++)
            sh[i] = runi(0.5f, 2.0f);
        pair_2d(&sc, MC_DT_F32, sr, scn, scn, sh);
        for (int s = 0; s < 2; s++)
            OK(mc_tensor_set_scales(&w.t[s], &sc.t[s], scale_block, scale_block, err_));
        free(sh);
    }
    for (int s = 0; s < 2; s++)
        OK(mc_op_matmul(B[s], &w.t[s], &x.t[s], &y.t[s], err_));
    char what[128];
    snprintf(what, sizeof what, "matmul %s%s%s W[%d, %d] n=%d ldx+%d ldy+%d", mc_dtype_name(dt),
             tr ? " transposed" : "", scale_block ? " scaled" : "", O, I, n, ldx_pad, ldy_pad);
    const char *f8 = getenv("MC_CUDA_FP8");
    int fp8_blas = dut_is_cuda && dt == MC_DT_F8_E4M3 && !tr && !(f8 && strcmp(f8, "gemv") == 0);
    int blas = (n > 8 && !scale_block && dt == MC_DT_BF16) || (n > 32 && fp8_blas);
    cmp_pair(what, &y, blas ? 1e-2 : 1e-5);
    pair_free(&x);
    pair_free(&y);
    pair_free(&w);
    if (scale_block)
        pair_free(&sc);
    free(xh);
    free(wh);
}

static void test_matmul(void)
{
    static const int ns[] = {1, 3, 8, 13, 64};
    static const struct {
        mc_dtype dt;
        int O, I, scale_block, tr;
    } cases[] = {
        {MC_DT_F32, 37, 77, 0, 0},     {MC_DT_F32, 200, 301, 0, 0},   {MC_DT_F16, 37, 77, 0, 0},
        {MC_DT_F16, 130, 1000, 0, 0},  {MC_DT_BF16, 37, 77, 0, 0},    {MC_DT_BF16, 200, 301, 0, 0},
        {MC_DT_BF16, 130, 1000, 0, 0}, {MC_DT_F8_E4M3, 37, 77, 0, 0},
        {MC_DT_F8_E4M3, 200, 301, 128, 0},
        {MC_DT_F8_E4M3, 37, 77, 16, 0}, {MC_DT_Q8_0, 37, 96, 0, 0},   {MC_DT_Q8_0, 200, 301, 0, 0},
        {MC_DT_Q4_K, 37, 256, 0, 0},   {MC_DT_Q4_K, 20, 300, 0, 0},   {MC_DT_Q4_K, 64, 512, 0, 0},
        {MC_DT_Q6_K, 37, 256, 0, 0},   {MC_DT_Q6_K, 20, 300, 0, 0},   {MC_DT_Q6_K, 64, 512, 0, 0},
        {MC_DT_F32, 37, 77, 0, 1},     {MC_DT_F16, 37, 77, 0, 1},     {MC_DT_BF16, 200, 301, 0, 1},
        {MC_DT_F8_E4M3, 37, 77, 0, 1},
        /* rows of a multiple of 16 bytes: the 16-byte load path (with its unrolled loop) */
        {MC_DT_F32, 130, 1000, 0, 0},  {MC_DT_F8_E4M3, 130, 1024, 128, 0},
        {MC_DT_F8_E4M3, 67, 2048, 0, 0}, {MC_DT_BF16, 1000, 520, 0, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
            matmul_case(cases[c].dt, cases[c].O, cases[c].I, ns[k], cases[c].tr,
                        cases[c].scale_block, (int)(k % 2) * 3, (int)(k % 3 == 1) * 5);
}

/* ---- row and element-wise ops ---- */

static void test_rows(void)
{
    static const int shapes[][2] = {{1, 77}, {5, 1000}, {33, 31}, {64, 4099}};
    char what[96];
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int R = shapes[k][0], d = shapes[k][1];
        float *xh = rnd((size_t)R * d, 3.0f), *uh = rnd((size_t)R * d, 3.0f);
        float *wh = rnd((size_t)d, 1.5f), *bh = rnd((size_t)d, 1.0f);
        pair x, u, y, w, b;
        pair_2d(&x, MC_DT_F32, R, d, d + 3, xh);
        pair_2d(&u, MC_DT_F32, R, d, d, uh);
        pair_2d(&y, MC_DT_F32, R, d, d + 1, NULL);
        pair_new(&w, MC_DT_F32, 1, (int64_t[]){d}, d, wh);
        pair_new(&b, MC_DT_F32, 1, (int64_t[]){d}, d, bh);
        for (int wi = 0; wi < 2; wi++) {
            for (int s = 0; s < 2; s++)
                OK(mc_op_rmsnorm(B[s], &x.t[s], wi ? &w.t[s] : NULL, 1e-6f, &y.t[s], err_));
            snprintf(what, sizeof what, "rmsnorm (%d, %d)%s", R, d, wi ? " weighted" : "");
            cmp_pair(what, &y, 1e-5);
            for (int s = 0; s < 2; s++)
                OK(mc_op_layernorm(B[s], &x.t[s], wi ? &w.t[s] : NULL, wi ? &b.t[s] : NULL, 1e-5f,
                                   &y.t[s], err_));
            snprintf(what, sizeof what, "layernorm (%d, %d)%s", R, d, wi ? " w, b" : "");
            cmp_pair(what, &y, 1e-5);
        }
        for (int s = 0; s < 2; s++)
            OK(mc_op_softmax(B[s], &x.t[s], &y.t[s], err_));
        snprintf(what, sizeof what, "softmax (%d, %d)", R, d);
        cmp_pair(what, &y, 1e-5);
        for (int s = 0; s < 2; s++)
            OK(mc_op_swiglu(B[s], &x.t[s], &u.t[s], &y.t[s], err_));
        snprintf(what, sizeof what, "swiglu (%d, %d)", R, d);
        cmp_pair(what, &y, 1e-5);
        for (int s = 0; s < 2; s++) /* in place: y is u */
            OK(mc_op_swiglu(B[s], &x.t[s], &u.t[s], &u.t[s], err_));
        snprintf(what, sizeof what, "swiglu in place (%d, %d)", R, d);
        cmp_pair(what, &u, 1e-5);
        for (int s = 0; s < 2; s++)
            OK(mc_op_add(B[s], &x.t[s], &u.t[s], &y.t[s], err_));
        snprintf(what, sizeof what, "add (%d, %d)", R, d);
        cmp_pair(what, &y, 1e-5);
        for (int s = 0; s < 2; s++) { /* in place on x: softmax, then rmsnorm */
            OK(mc_op_softmax(B[s], &x.t[s], &x.t[s], err_));
            OK(mc_op_rmsnorm(B[s], &x.t[s], &w.t[s], 1e-6f, &x.t[s], err_));
        }
        snprintf(what, sizeof what, "softmax + rmsnorm in place (%d, %d)", R, d);
        cmp_pair(what, &x, 1e-5);
        /* find_nonfinite: none, then an infinity and a later NaN */
        int64_t rc[2][2];
        for (int s = 0; s < 2; s++)
            OK(mc_op_find_nonfinite(B[s], &y.t[s], &rc[s][0], &rc[s][1], err_));
        CHECK(rc[1][0] == -1 && rc[1][1] == -1 && rc[0][0] == -1);
        float inf = INFINITY, nan = NAN;
        int64_t r0 = R / 2, c0 = d - 1 - d / 3;
        for (int s = 0; s < 2; s++) {
            size_t rb = (size_t)y.t[s].row_stride * 4;
            if (R > 1)
                OK(mc_buffer_upload(y.b[s], (size_t)(R - 1) * rb + 4, &nan, 4, err_));
            OK(mc_buffer_upload(y.b[s], (size_t)r0 * rb + (size_t)c0 * 4, &inf, 4, err_));
            OK(mc_op_find_nonfinite(B[s], &y.t[s], &rc[s][0], &rc[s][1], err_));
        }
        CHECK(rc[0][0] == r0 && rc[0][1] == c0);
        if (rc[1][0] != rc[0][0] || rc[1][1] != rc[0][1]) {
            check_failures++;
            fprintf(stderr, "find_nonfinite (%d, %d): got (%lld, %lld), want (%lld, %lld)\n", R, d,
                    (long long)rc[1][0], (long long)rc[1][1], (long long)rc[0][0],
                    (long long)rc[0][1]);
        }
        /* note_nonfinite: the first note kept (the device's without a wait), its value */
        mc_nonfinite_note nn[2];
        for (int s = 0; s < 2; s++) {
            OK(mc_op_note_nonfinite(B[s], &x.t[s], 3, err_)); /* finite */
            OK(mc_op_note_nonfinite(B[s], &y.t[s], 5, err_));
            OK(mc_op_note_nonfinite(B[s], &y.t[s], 9, err_)); /* not kept */
            OK(mc_backend_take_nonfinite(B[s], &nn[s], err_));
        }
        CHECK(nn[0].tag == 5 && nn[0].row == r0 && nn[0].col == c0 && isinf(nn[0].value));
        if (nn[1].tag != nn[0].tag || nn[1].row != nn[0].row || nn[1].col != nn[0].col ||
            memcmp(&nn[1].value, &nn[0].value, sizeof nn[0].value) != 0) {
            check_failures++;
            fprintf(stderr, "note_nonfinite (%d, %d): got tag %lld (%lld, %lld) %g, want tag %lld "
                    "(%lld, %lld) %g\n", R, d, (long long)nn[1].tag, (long long)nn[1].row,
                    (long long)nn[1].col, nn[1].value, (long long)nn[0].tag,
                    (long long)nn[0].row, (long long)nn[0].col, nn[0].value);
        }
        for (int s = 0; s < 2; s++) {
            OK(mc_backend_take_nonfinite(B[s], &nn[s], err_));
            CHECK(nn[s].tag == -1);
        }
        pair_free(&x);
        pair_free(&u);
        pair_free(&y);
        pair_free(&w);
        pair_free(&b);
        free(xh);
        free(uh);
        free(wh);
        free(bh);
    }
}

static void rope_case(int interleaved, int n, int heads, int hd, int c0, int rd)
{
    enum { P = 40 };
    int half = rd / 2;
    float *xh = rnd((size_t)n * heads * hd, 2.0f), *ch = malloc(P * (size_t)half * 4),
          *sh = malloc(P * (size_t)half * 4);
    int32_t pos[64];
    for (int p = 0; p < P; p++)
        for (int i = 0; i < half; i++) {
            double ang = p * pow(10000.0, -2.0 * i / rd);
            ch[p * half + i] = (float)cos(ang);
            sh[p * half + i] = (float)sin(ang);
        }
    for (int t = 0; t < n; t++)
        pos[t] = (int32_t)((t * 13 + 7) % P);
    pair x, pt, cs, sn;
    mc_tensor xv[2];
    pair_new(&x, MC_DT_F32, 3, (int64_t[]){n, heads, hd}, hd, xh);
    pair_new(&pt, MC_DT_I32, 1, (int64_t[]){n}, n, pos);
    pair_2d(&cs, MC_DT_F32, P, half, half, ch);
    pair_2d(&sn, MC_DT_F32, P, half, half, sh);
    for (int s = 0; s < 2; s++) {
        OK(mc_tensor_view_cols(&x.t[s], c0, rd, &xv[s], err_));
        OK(mc_op_rope(B[s], &xv[s], &pt.t[s], &cs.t[s], &sn.t[s], interleaved, err_));
    }
    char what[96];
    snprintf(what, sizeof what, "rope %s n=%d heads=%d cols [%d, %d) of %d",
             interleaved ? "interleaved" : "rotate-half", n, heads, c0, c0 + rd, hd);
    cmp_pair(what, &x, 1e-5);
    /* a position past the tables is refused, nothing rotated */
    float *before = malloc((size_t)n * heads * hd * 4), *after = malloc((size_t)n * heads * hd * 4);
    OK(mc_tensor_download(&x.t[1], before, err_));
    int32_t good = pos[n - 1];
    pos[n - 1] = P;
    OK(mc_tensor_upload(&pt.t[1], pos, err_));
    mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
    mc_status st = mc_op_rope(B[1], &xv[1], &pt.t[1], &cs.t[1], &sn.t[1], interleaved, err_);
    CHECK(st == MC_ERR_ARG && strstr(err_->msg, "pos[") != NULL);
    mc_err_clear(err_);
    /* deferred (the CUDA backend's default): MC_OK, then the refusal at the
     * next wait, once; a backend that checks at the op refuses at once */
    mc_backend_set_sync_checks(B[1], 0);
    int defers = mc_backend_set_sync_checks(B[1], 0) == 0;
    st = mc_op_rope(B[1], &xv[1], &pt.t[1], &cs.t[1], &sn.t[1], interleaved, err_);
    if (defers) {
        CHECK(st == MC_OK);
        st = mc_backend_synchronize(B[1], err_);
    }
    CHECK(st == MC_ERR_ARG && strncmp(err_->msg, "rope: pos[", 10) == 0);
    mc_err_clear(err_);
    CHECK(mc_backend_synchronize(B[1], err_) == MC_OK);
    OK(mc_tensor_download(&x.t[1], after, err_));
    CHECK(memcmp(before, after, (size_t)n * heads * hd * 4) == 0);
    /* the note was cleared: a good call after it is no refusal */
    pos[n - 1] = good;
    OK(mc_tensor_upload(&pt.t[1], pos, err_));
    OK(mc_op_rope(B[1], &xv[1], &pt.t[1], &cs.t[1], &sn.t[1], interleaved, err_));
    CHECK(mc_backend_synchronize(B[1], err_) == MC_OK);
    mc_err_clear(err_);
    pair_free(&x);
    pair_free(&pt);
    pair_free(&cs);
    pair_free(&sn);
    free(xh);
    free(ch);
    free(sh);
    free(before);
    free(after);
}

static void test_embed(void)
{
    static const mc_dtype types[] = {MC_DT_F32, MC_DT_F16, MC_DT_BF16, MC_DT_F8_E4M3, MC_DT_Q8_0,
                                     MC_DT_Q4_K, MC_DT_Q6_K};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        mc_dtype dt = types[k];
        int V = 50, H = dt == MC_DT_Q4_K || dt == MC_DT_Q6_K ? 300 : 77, n = 9;
        void *th = weight_bytes(dt, V, H, 0, H);
        pair tab, sc, y, ids;
        int blk = mc_dtype_block_elems(dt);
        pair_2d(&tab, dt, V, H, (H + blk - 1) / blk * blk, th);
        if (dt == MC_DT_F8_E4M3) {
            float sh[4 * 3];
            for (int i = 0; i < 12; i++)
                sh[i] = runi(0.5f, 2.0f);
            pair_2d(&sc, MC_DT_F32, 4, 3, 3, sh);
            for (int s = 0; s < 2; s++)
                OK(mc_tensor_set_scales(&tab.t[s], &sc.t[s], 16, 32, err_));
        }
        /* a vocabulary slice starting at 10: ids outside it give zeros */
        int64_t id64[9] = {10, 59, 60, 5, 33, -3, 100000, 11, 42};
        int32_t id32[9];
        for (int i = 0; i < n; i++)
            id32[i] = (int32_t)id64[i];
        for (int w64 = 0; w64 < 2; w64++) {
            pair_new(&ids, w64 ? MC_DT_I64 : MC_DT_I32, 1, (int64_t[]){n}, n,
                     w64 ? (const void *)id64 : (const void *)id32);
            pair_2d(&y, MC_DT_F32, n, H, H + 2, NULL);
            for (int s = 0; s < 2; s++)
                OK(mc_op_embed(B[s], &tab.t[s], &ids.t[s], 10, &y.t[s], err_));
            char what[64];
            snprintf(what, sizeof what, "embed %s ids %s", mc_dtype_name(dt), w64 ? "I64" : "I32");
            cmp_pair(what, &y, 1e-6);
            pair_free(&ids);
            pair_free(&y);
        }
        if (dt == MC_DT_F8_E4M3)
            pair_free(&sc);
        pair_free(&tab);
        free(th);
    }
}

/* The DeepSeek-V4 ops on the host through copies (backend_ops_v4.c: a
 * device backend without the entries; CUDA made with MC_CUDA_V4=host):
 * v4_hash_route gives the CPU's ids and weights bit for bit, its refusal the
 * CPU's message with the outputs untouched. (test_backend_v4.c checks the
 * ops themselves; test_backend_cuda_layers.c compares the CUDA kernels.) */
static void test_v4_host_trip(void)
{
    /* a second CUDA backend without its V4 kernels */
    mc_backend *dut = dut_swap_env(dut_is_cuda, "MC_CUDA_V4", "host");
    enum { n = 3, E = 6, K = 2, V = 5 };
    float *lh = rnd(n * E, 1.0f);
    int32_t tok[n] = {4, 0, 2}, tab[V * K] = {0, 1, 2, 3, 4, 5, 1, 3, 5, 0};
    pair lg, tk, tb, ids, wts;
    pair_2d(&lg, MC_DT_F32, n, E, E, lh);
    pair_new(&tk, MC_DT_I32, 1, (int64_t[]){n}, n, tok);
    pair_2d(&tb, MC_DT_I32, V, K, K, tab);
    pair_2d(&ids, MC_DT_I32, n, K, K + 1, NULL); /* a strided view: the gaps stay */
    pair_2d(&wts, MC_DT_F32, n, K, K, NULL);
    mc_router_opts ro = {.score = MC_ROUTE_SQRTSOFTPLUS, .k = K, .n_group = 1, .topk_group = 1,
                         .renorm = 1, .norm_eps = 1e-20f, .scale = 1};
    for (int s = 0; s < 2; s++)
        OK(mc_op_v4_hash_route(B[s], &lg.t[s], &tk.t[s], &tb.t[s], &ro, &ids.t[s], &wts.t[s],
                               err_));
    int32_t gi[2][n * (K + 1)];
    float gw[2][n * K];
    for (int s = 0; s < 2; s++) {
        OK(mc_buffer_download(ids.b[s], 0, gi[s], sizeof gi[s], err_));
        OK(mc_tensor_download(&wts.t[s], gw[s], err_));
    }
    int same = memcmp(gi[0], gi[1], sizeof gi[0]) == 0 && memcmp(gw[0], gw[1], sizeof gw[0]) == 0;
    if (!same)
        fprintf(stderr, "v4_hash_route on %s: ids[0] %d / %d, weights[0] %.9g / %.9g (CPU / "
                "device)\n", mc_backend_name(B[1]), gi[0][0], gi[1][0], gw[0][0], gw[1][0]);
    CHECK(same);
    /* a token id past the table: the CPU's refusal, the outputs as they were */
    int32_t bad[n] = {4, 7, 2};
    mc_status st[2];
    for (int s = 0; s < 2; s++) {
        OK(mc_tensor_upload(&tk.t[s], bad, err_));
        mc_err_clear(&err_[s]);
        st[s] = mc_op_v4_hash_route(B[s], &lg.t[s], &tk.t[s], &tb.t[s], &ro, &ids.t[s],
                                    &wts.t[s], &err_[s]);
    }
    check_count++;
    if (st[0] != MC_ERR_ARG || st[1] != MC_ERR_ARG || strcmp(err_[0].msg, err_[1].msg) != 0) {
        check_failures++;
        fprintf(stderr, "v4_hash_route refusal: %s \"%s\" (CPU) vs %s \"%s\"\n",
                mc_status_str(st[0]), err_[0].msg, mc_status_str(st[1]), err_[1].msg);
    }
    int32_t after[n * (K + 1)];
    OK(mc_buffer_download(ids.b[1], 0, after, sizeof after, err_));
    CHECK(memcmp(after, gi[1], sizeof after) == 0);
    mc_err_clear(&err_[0]);
    mc_err_clear(&err_[1]);
    pair *all[] = {&lg, &tk, &tb, &ids, &wts};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(lh);
    dut_restore(dut);
}

static void test_device(void)
{
    printf("device: %s, path %s: %s\n", mc_backend_name(B[1]), mc_backend_path(B[1]),
           mc_backend_features(B[1]));
    double gbps = mc_backend_probe_read_gbps(B[1], (size_t)64 << 20, 0, 0.05);
    CHECK(gbps > 0);
    mc_backend_counters cn;
    pair w, x, y;
    void *wh = weight_bytes(MC_DT_BF16, 16, 64, 0, 64);
    float *xh = rnd(2 * 64, 1.0f);
    pair_2d(&w, MC_DT_BF16, 16, 64, 64, wh);
    pair_2d(&x, MC_DT_F32, 2, 64, 64, xh);
    pair_2d(&y, MC_DT_F32, 2, 16, 16, NULL);
    CHECK(mc_buffer_host(x.b[1]) == NULL); /* device memory (the CPU stands in as cpu-device) */
    mc_backend_count(B[1], 1);
    OK(mc_op_matmul(B[1], &w.t[1], &x.t[1], &y.t[1], err_));
    mc_backend_counters_get(B[1], &cn);
    mc_backend_count(B[1], 0);
    CHECK(cn.bytes_read == 16 * 64 * 2 && cn.macs == 16 * 64 * 2);
    pair_free(&w);
    pair_free(&x);
    pair_free(&y);
    free(wh);
    free(xh);
    if (dut_is_cuda) {
        mc_backend *bad = NULL;
        mc_status st = mc_backend_cuda_init(1 << 20, &bad, err_);
        CHECK(st == MC_ERR_ARG && bad == NULL);
        mc_err_clear(err_);
        CHECK(strcmp(mc_backend_path(B[1]), "cuda") == 0);
    }
}

/* topk on the device against the CPU's: rows of V values (a vocabulary's
 * width, fewer than a block's threads, k itself) with many ties, a NaN and
 * an infinity, a row of one value, a row of NaN but three values, a row
 * whose best are +0 and -0 (one value: ties by column) and denormals;
 * k = 1 and 5 (the CUDA kernel of k passes) and 6, 20 and 64 (its radix
 * select), a row stride past the row (a view), an id offset; ids and values
 * exact, the log-sum-exp to 1e-12 (the sum's order differs). */
static void test_topk(int64_t V)
{
    const int64_t R = 12, ld = V + 3;
    float *x = malloc((size_t)R * ld * sizeof *x);
    for (int64_t i = 0; i < R * ld; i++)
        x[i] = (float)((int)(rnext() % 2001) - 1000) / 64.0f; /* many ties */
    x[1 * ld + 5] = NAN;
    x[2 * ld + 77 % V] = INFINITY;
    x[3 * ld + 100 % V] = 1e30f;
    for (int64_t i = 0; i < V; i++) {
        x[9 * ld + i] = 1.5f;
        x[10 * ld + i] = NAN;
        int r = (int)(rnext() % 4);
        x[11 * ld + i] = r == 0 ? 0.0f : r == 1 ? -0.0f : -(float)(1 + rnext() % 100);
    }
    x[10 * ld + 0] = x[10 * ld + V / 3] = 2.0f;
    x[10 * ld + V - 1] = -1.0f;
    x[11 * ld + 3] = 1e-40f; /* denormals beside the zeros */
    x[11 * ld + 4] = -1e-40f;
    static const int ks[] = {1, 5, 6, 20, 64};
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
        int k = ks[ki];
        if (k > V)
            continue;
        pair xp, ip, vp, lp;
        pair_2d(&xp, MC_DT_F32, R, V, ld, x);
        pair_2d(&ip, MC_DT_I32, R, k, k, NULL);
        pair_2d(&vp, MC_DT_F32, R, k, k, NULL);
        pair_2d(&lp, MC_DT_F32, R, 2, 2, NULL);
        int32_t *ids[2];
        float *vals[2], *lse[2];
        for (int s = 0; s < 2; s++) {
            OK(mc_op_topk(B[s], &xp.t[s], k, 7, &ip.t[s], &vp.t[s], &lp.t[s], err_ + s));
            ids[s] = malloc((size_t)R * k * 4);
            vals[s] = malloc((size_t)R * k * 4);
            lse[s] = malloc((size_t)R * 2 * 4);
            OK(mc_tensor_download(&ip.t[s], ids[s], err_));
            OK(mc_tensor_download(&vp.t[s], vals[s], err_));
            OK(mc_tensor_download(&lp.t[s], lse[s], err_));
        }
        int bad = 0;
        for (int64_t i = 0; i < R * k; i++) {
            int same = ids[0][i] == ids[1][i] &&
                       ((vals[0][i] == vals[1][i] && signbit(vals[0][i]) == signbit(vals[1][i])) ||
                        (isnan(vals[0][i]) && isnan(vals[1][i])));
            if (!same && bad++ < 5)
                fprintf(stderr, "  topk k=%d [%lld, %lld]: got id %d (%.9g) want %d (%.9g)\n", k,
                        (long long)(i / k), (long long)(i % k), ids[1][i], vals[1][i], ids[0][i],
                        vals[0][i]);
        }
        for (int64_t r = 0; r < R; r++) {
            double w = (double)lse[0][2 * r] + lse[0][2 * r + 1];
            double g = (double)lse[1][2 * r] + lse[1][2 * r + 1];
            int same = w == g || (isnan(w) && isnan(g)) || fabs(g - w) <= 1e-12 * fabs(w);
            if (!same && bad++ < 5)
                fprintf(stderr, "  topk k=%d row %lld lse: got %.17g want %.17g\n", k, (long long)r,
                        g, w);
        }
        check_count++;
        if (bad) {
            check_failures++;
            fprintf(stderr, "topk k=%d: %d mismatches\n", k, bad);
        }
        for (int s = 0; s < 2; s++) {
            free(ids[s]);
            free(vals[s]);
            free(lse[s]);
        }
        pair_free(&xp);
        pair_free(&ip);
        pair_free(&vp);
        pair_free(&lp);
    }
    free(x);
}

/* Uploads and downloads large enough to go through the CUDA backend's
 * pinned staging buffers (two of 16 MiB: several chunks, a short last one,
 * odd offsets) and small ones beside them, byte for byte. */
static void test_copies(void)
{
    const size_t n = ((size_t)49 << 20) + 12347, off = 3, mid = ((size_t)1 << 20) + 5;
    const size_t mlen = ((size_t)17 << 20) + 3;
    unsigned char *src = malloc(n), *back = malloc(n);
    mc_buffer *b = NULL;
    if (!src || !back) {
        CHECK(!"out of memory");
        free(src);
        free(back);
        return;
    }
    for (size_t i = 0; i < n; i++)
        src[i] = (unsigned char)(rnext() >> 56);
    OK(mc_buffer_alloc(B[1], n, &b, err_));
    if (!b) {
        free(src);
        free(back);
        return;
    }
    OK(mc_buffer_upload(b, 0, src, off, err_));                /* small */
    OK(mc_buffer_upload(b, off, src + off, n - off, err_));    /* staged, 4 chunks */
    memset(back, 0xA5, n);
    OK(mc_buffer_download(b, 0, back, n, err_));
    size_t bad = 0, first = n;
    for (size_t i = 0; i < n; i++)
        if (back[i] != src[i] && bad++ == 0)
            first = i;
    if (bad)
        fprintf(stderr, "  copies: %zu of %zu bytes differ after the round trip, first at %zu "
                "(got %u want %u)\n", bad, n, first, back[first], src[first]);
    CHECK(bad == 0);
    memset(back, 0xA5, n);
    OK(mc_buffer_download(b, mid, back, mlen, err_));         /* staged, 2 chunks */
    CHECK(memcmp(back, src + mid, mlen) == 0 && back[mlen] == 0xA5);
    OK(mc_buffer_download(b, n - 100, back, 100, err_));      /* small */
    CHECK(memcmp(back, src + n - 100, 100) == 0);
    mc_buffer_free(b);
    free(src);
    free(back);
}

/* ---- --bench: the table scripts/gpu-check.sh prints ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One product shape: nw copies of the weight (together well past the L2
 * cache) used in turn; the median of 7 trials of `reps` calls each, the
 * stream drained before and after every trial. Seconds per call, or -1. */
static double bench_case(mc_backend *be, mc_dtype dt, int O, int I, int n, int scale_block)
{
    void *wh = weight_bytes(dt, O, I, 0, I);
    size_t wbytes = (size_t)O * mc_dtype_row_bytes(dt, I);
    int nw = (int)(((size_t)512 << 20) / wbytes) + 1;
    nw = nw < 2 ? 2 : nw > 64 ? 64 : nw;
    mc_buffer *wb[64] = {0}, *xb = NULL, *yb = NULL, *sb = NULL;
    mc_tensor w[64], x, y, sc;
    float *xh = rnd((size_t)n * I, 1.0f);
    double res = -1, t[7];
    int sr = scale_block ? (O + scale_block - 1) / scale_block : 0;
    int scn = scale_block ? (I + scale_block - 1) / scale_block : 0;
    if (mc_buffer_alloc(be, (size_t)n * I * 4, &xb, err_) != MC_OK ||
        mc_buffer_alloc(be, (size_t)n * O * 4, &yb, err_) != MC_OK ||
        mc_tensor_init_2d(&x, xb, 0, MC_DT_F32, n, I, err_) != MC_OK ||
        mc_tensor_init_2d(&y, yb, 0, MC_DT_F32, n, O, err_) != MC_OK ||
        mc_tensor_upload(&x, xh, err_) != MC_OK)
        goto out;
    if (scale_block) {
        float *sh = rnd((size_t)sr * scn, 1.0f);
        mc_status st = mc_buffer_alloc(be, (size_t)sr * scn * 4, &sb, err_);
        if (st == MC_OK)
            st = mc_tensor_init_2d(&sc, sb, 0, MC_DT_F32, sr, scn, err_);
        if (st == MC_OK)
            st = mc_tensor_upload(&sc, sh, err_);
        free(sh);
        if (st != MC_OK)
            goto out;
    }
    for (int i = 0; i < nw; i++)
        if (mc_buffer_alloc(be, wbytes, &wb[i], err_) != MC_OK ||
            mc_tensor_init_2d(&w[i], wb[i], 0, dt, O, I, err_) != MC_OK ||
            mc_tensor_upload(&w[i], wh, err_) != MC_OK ||
            (scale_block && mc_tensor_set_scales(&w[i], &sc, scale_block, scale_block, err_)))
            goto out;
    for (int i = 0; i < 3; i++) /* warm-up: module load, cuBLAS heuristics */
        if (mc_op_matmul(be, &w[i % nw], &x, &y, err_) != MC_OK)
            goto out;
    /* calls per trial: about 20 ms of work */
    if (mc_backend_synchronize(be, err_) != MC_OK)
        goto out;
    double c0 = now_s();
    if (mc_op_matmul(be, &w[0], &x, &y, err_) != MC_OK || mc_backend_synchronize(be, err_) != MC_OK)
        goto out;
    double one = now_s() - c0;
    int reps = one > 0 ? (int)(0.02 / one) : 500;
    reps = reps < 1 ? 1 : reps > 500 ? 500 : reps;
    for (int k = 0; k < 7; k++) {
        if (mc_backend_synchronize(be, err_) != MC_OK)
            goto out;
        double t0 = now_s();
        for (int r = 0; r < reps; r++)
            if (mc_op_matmul(be, &w[r % nw], &x, &y, err_) != MC_OK)
                goto out;
        if (mc_backend_synchronize(be, err_) != MC_OK)
            goto out;
        t[k] = (now_s() - t0) / reps;
    }
    qsort(t, 7, sizeof t[0], cmp_d);
    res = t[3];
out:
    if (res < 0)
        fprintf(stderr, "bench %s [%d, %d] n=%d: %s\n", mc_dtype_name(dt), O, I, n, err_->msg);
    mc_err_clear(err_);
    for (int i = 0; i < nw; i++)
        mc_buffer_free(wb[i]);
    mc_buffer_free(xb);
    mc_buffer_free(yb);
    mc_buffer_free(sb);
    free(xh);
    free(wh);
    return res;
}

/* Median seconds of one mc_op_topk call over `rows` rows of V random values
 * (with lse), or -1 on a failure. */
static double bench_topk(mc_backend *be, int64_t rows, int64_t V, int k)
{
    double res = -1, t[7];
    float *xh = rnd((size_t)(rows * V), 4.0f);
    mc_buffer *b[4] = {NULL, NULL, NULL, NULL};
    mc_tensor x, ids, vals, lse;
    if (mc_buffer_alloc(be, (size_t)(rows * V) * 4, &b[0], err_) != MC_OK ||
        mc_buffer_alloc(be, (size_t)rows * k * 4, &b[1], err_) != MC_OK ||
        mc_buffer_alloc(be, (size_t)rows * k * 4, &b[2], err_) != MC_OK ||
        mc_buffer_alloc(be, (size_t)rows * 8, &b[3], err_) != MC_OK ||
        mc_tensor_init_2d(&x, b[0], 0, MC_DT_F32, rows, V, err_) != MC_OK ||
        mc_tensor_init_2d(&ids, b[1], 0, MC_DT_I32, rows, k, err_) != MC_OK ||
        mc_tensor_init_2d(&vals, b[2], 0, MC_DT_F32, rows, k, err_) != MC_OK ||
        mc_tensor_init_2d(&lse, b[3], 0, MC_DT_F32, rows, 2, err_) != MC_OK ||
        mc_tensor_upload(&x, xh, err_) != MC_OK)
        goto out;
    for (int i = 0; i < 3; i++)
        if (mc_op_topk(be, &x, k, 0, &ids, &vals, &lse, err_) != MC_OK)
            goto out;
    for (int r = 0; r < 7; r++) {
        if (mc_backend_synchronize(be, err_) != MC_OK)
            goto out;
        double t0 = now_s();
        for (int i = 0; i < 10; i++)
            if (mc_op_topk(be, &x, k, 0, &ids, &vals, &lse, err_) != MC_OK)
                goto out;
        if (mc_backend_synchronize(be, err_) != MC_OK)
            goto out;
        t[r] = (now_s() - t0) / 10;
    }
    qsort(t, 7, sizeof t[0], cmp_d);
    res = t[3];
out:
    if (res < 0)
        fprintf(stderr, "bench topk %lld x %lld k=%d: %s\n", (long long)rows, (long long)V, k,
                err_->msg);
    mc_err_clear(err_);
    for (int i = 0; i < 4; i++)
        mc_buffer_free(b[i]);
    free(xh);
    return res;
}

/* The topk table: a vocabulary's rows (1 and 64 of them) for k = 1, 20, 64;
 * `how` names the kernel choice (MC_CUDA_TOPK). Returns 1 on a failure. */
static int bench_topk_table(mc_backend *be, const char *how, int smoke)
{
    static const int ks[] = {1, 20, 64};
    int64_t V = smoke ? 4099 : 151936;
    int failed = 0;
    for (int ri = 0; ri < 2; ri++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            int64_t rows = ri ? 64 : 1;
            double sec = bench_topk(be, rows, V, ks[ki]);
            if (sec <= 0) {
                failed = 1;
                printf("| topk (%s) | %lld x %lld | %d | failed | |\n", how, (long long)rows,
                       (long long)V, ks[ki]);
                continue;
            }
            printf("| topk (%s) | %lld x %lld | %d | %.1f | %.0f |\n", how, (long long)rows,
                   (long long)V, ks[ki], sec * 1e6, (double)rows * V * 4 / sec * 1e-9);
        }
    return failed;
}

typedef struct {
    const char *what;
    mc_dtype dt;
    int O, I, n, scale_block;
} bench_shape;

/* smoke: small shapes only (a check of this code on a CPU, not a benchmark) */
static int bench_main(mc_backend *be, int smoke)
{
    static const bench_shape smoke_cases[] = {
        {"gemv", MC_DT_BF16, 256, 320, 1, 0}, {"gemv", MC_DT_F8_E4M3, 256, 320, 1, 128},
        {"cublas", MC_DT_BF16, 256, 320, 40, 0}, {"cublas", MC_DT_F8_E4M3, 256, 320, 40, 128}};
    static const bench_shape full_cases[] = {
        {"gemv", MC_DT_BF16, 4096, 4096, 1, 0},    {"gemv", MC_DT_BF16, 7168, 2048, 1, 0},
        {"gemv", MC_DT_BF16, 2048, 7168, 1, 0},    {"gemv", MC_DT_BF16, 4096, 4096, 8, 0},
        {"gemv", MC_DT_F8_E4M3, 7168, 2048, 1, 128}, {"gemv", MC_DT_Q8_0, 4096, 4096, 1, 0},
        {"cublas", MC_DT_BF16, 4096, 4096, 512, 0}, {"cublas", MC_DT_BF16, 4096, 4096, 4096, 0},
        {"cublas", MC_DT_BF16, 7168, 2048, 512, 0},
        {"cublas", MC_DT_F8_E4M3, 7168, 2048, 512, 128},
        {"cublas", MC_DT_F8_E4M3, 18432, 7168, 2048, 128},
    };
    const bench_shape *cases = smoke ? smoke_cases : full_cases;
    size_t ncases = smoke ? sizeof smoke_cases / sizeof smoke_cases[0]
                          : sizeof full_cases / sizeof full_cases[0];
    double read = mc_backend_probe_read_gbps(be, smoke ? (size_t)64 << 20 : (size_t)2 << 30, 0,
                                             smoke ? 0.05 : 0.5);
    double fma = mc_backend_probe_fma_gflops(be, 0, smoke ? 0.05 : 0.3);
    printf("\ndevice: %s (%s)\n", mc_backend_features(be), mc_backend_path(be));
    printf("| case | weights | W [out, in] | tokens | us / call | GB/s | of read probe "
           "| TFLOP/s |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    printf("| probe: device read | - | %s | - | - | %.0f | 100%% | - |\n",
           smoke ? "64 MiB" : "2 GiB", read);
    printf("| probe: F32 FMA | - | - | - | - | - | - | %.1f |\n", fma * 1e-3);
    int failed = 0;
    for (size_t k = 0; k < ncases; k++) {
        double s = bench_case(be, cases[k].dt, cases[k].O, cases[k].I, cases[k].n,
                              cases[k].scale_block);
        if (s <= 0) {
            failed = 1;
            printf("| %s | %s | %d x %d | %d | failed | | | |\n", cases[k].what,
                   mc_dtype_name(cases[k].dt), cases[k].O, cases[k].I, cases[k].n);
            continue;
        }
        double bytes = (double)cases[k].O * (double)mc_dtype_row_bytes(cases[k].dt, cases[k].I);
        double gbps = bytes / s * 1e-9;
        double tflops = 2.0 * cases[k].O * (double)cases[k].I * cases[k].n / s * 1e-12;
        printf("| %s | %s%s | %d x %d | %d | %.1f | %.0f | %.0f%% | %.2f |\n", cases[k].what,
               mc_dtype_name(cases[k].dt), cases[k].scale_block ? " (128x128 scales)" : "",
               cases[k].O, cases[k].I, cases[k].n, s * 1e6, gbps,
               read > 0 ? 100.0 * gbps / read : 0.0, tflops);
    }
    /* topk with the kernel choice of this backend (MC_CUDA_TOPK as set), then
     * with k passes forced (a second backend: the choice is read at init) */
    char tk[32];
    snprintf(tk, sizeof tk, "%s", getenv("MC_CUDA_TOPK") ? getenv("MC_CUDA_TOPK") : "default");
    printf("\n| topk | rows x V | k | us / call | GB/s of the rows |\n| --- | --- | --- | --- | --- |\n");
    failed |= bench_topk_table(be, tk, smoke);
    if (dut_is_cuda && strcmp(tk, "passes") != 0) {
        mc_backend *bp = NULL;
        setenv("MC_CUDA_TOPK", "passes", 1);
        if (mc_backend_cuda_init(0, &bp, err_) == MC_OK)
            failed |= bench_topk_table(bp, "passes", smoke);
        else
            failed = 1;
        mc_backend_free(bp);
        if (strcmp(tk, "default") == 0)
            unsetenv("MC_CUDA_TOPK");
        else
            setenv("MC_CUDA_TOPK", tk, 1);
    }
    return failed;
}

/* ---- graphs (mc_backend_capture_begin): a product, a norm, a sum, a
 * top-k and a non-finite note captured on both backends (the CPU records
 * the calls, CUDA captures a CUDA graph), launched three times with new
 * inputs in the same buffers: each launch gives what the ops give run one
 * by one (the CPU's recorded graph bit for bit); a download or an upload
 * while capturing is refused, and so is that capture's end. */
static void test_graphs(void)
{
    enum { R = 5, H = 96, O = 70, K = 4 };
    float *wh = rnd((size_t)O * H, 1.0f), *nh = rnd(O, 1.0f);
    pair w, nw, x, y, z, ids, vals;
    pair_2d(&w, MC_DT_F32, O, H, H, wh);
    pair_2d(&nw, MC_DT_F32, 1, O, O, nh);
    pair_2d(&x, MC_DT_F32, R, H, H + 3, NULL);
    pair_2d(&y, MC_DT_F32, R, O, O, NULL);
    pair_2d(&z, MC_DT_F32, R, O, O + 1, NULL);
    pair_2d(&ids, MC_DT_I32, R, K, K, NULL);
    pair_2d(&vals, MC_DT_F32, R, K, K, NULL);
    mc_tensor nv[2];
    for (int s = 0; s < 2; s++)
        OK(mc_tensor_reshape(&nw.t[s], 1, (int64_t[]){O}, &nv[s], err_));
    mc_graph *g[2] = {NULL, NULL};
    for (int s = 0; s < 2; s++) {
        OK(mc_backend_capture_begin(B[s], err_));
        CHECK(mc_backend_capturing(B[s]));
        OK(mc_op_matmul(B[s], &w.t[s], &x.t[s], &y.t[s], err_));
        OK(mc_op_rmsnorm(B[s], &y.t[s], &nv[s], 1e-6f, &z.t[s], err_));
        OK(mc_op_add(B[s], &z.t[s], &y.t[s], &z.t[s], err_));
        OK(mc_op_note_nonfinite(B[s], &z.t[s], 11, err_));
        OK(mc_op_topk(B[s], &z.t[s], K, 0, &ids.t[s], &vals.t[s], NULL, err_));
        OK(mc_backend_capture_end(B[s], &g[s], err_));
        CHECK(g[s] != NULL && !mc_backend_capturing(B[s]) && !mc_graph_stale(g[s]));
    }
    CHECK(mc_graph_ops(g[0]) == 5);
    float *zh = malloc((size_t)R * O * sizeof *zh), *zg = malloc((size_t)R * O * sizeof *zg);
    for (int round = 0; round < 3; round++) {
        float *xh = rnd((size_t)R * H, 2.0f);
        if (round == 2)
            xh[3 * H + 7] = NAN; /* row 3 of z is NaN: the note, in the graph */
        for (int s = 0; s < 2; s++) {
            OK(mc_tensor_upload(&x.t[s], xh, err_));
            OK(mc_graph_launch(g[s], err_));
        }
        char what[64];
        snprintf(what, sizeof what, "graph launch %d: z", round);
        if (round < 2) /* (round 2's row 3 is NaN on both) */
            cmp_pair(what, &z, 1e-5);
        mc_nonfinite_note nn[2];
        for (int s = 0; s < 2; s++)
            OK(mc_backend_take_nonfinite(B[s], &nn[s], err_));
        if (round < 2)
            CHECK(nn[0].tag == -1 && nn[1].tag == -1);
        else
            CHECK(nn[0].tag == 11 && nn[0].row == 3 && nn[0].col == 0 && nn[1].tag == 11 &&
                  nn[1].row == 3 && nn[1].col == 0);
        if (round < 2) {
            int32_t ih[2][R * K];
            for (int s = 0; s < 2; s++)
                OK(mc_tensor_download(&ids.t[s], ih[s], err_));
            CHECK(memcmp(ih[0], ih[1], sizeof ih[0]) == 0);
        }
        /* the CPU's graph against its ops one by one: bit for bit */
        OK(mc_tensor_download(&z.t[0], zg, err_));
        OK(mc_op_matmul(B[0], &w.t[0], &x.t[0], &y.t[0], err_));
        OK(mc_op_rmsnorm(B[0], &y.t[0], &nv[0], 1e-6f, &z.t[0], err_));
        OK(mc_op_add(B[0], &z.t[0], &y.t[0], &z.t[0], err_));
        OK(mc_tensor_download(&z.t[0], zh, err_));
        CHECK(memcmp(zh, zg, (size_t)R * O * sizeof *zh) == 0);
        free(xh);
    }
    /* what a graph cannot hold */
    for (int s = 0; s < 2; s++) {
        mc_graph *bad = NULL;
        float one = 0;
        OK(mc_backend_capture_begin(B[s], err_));
        OK(mc_op_matmul(B[s], &w.t[s], &x.t[s], &y.t[s], err_));
        mc_err e1;
        mc_err_clear(&e1);
        CHECK(mc_buffer_download(y.b[s], 0, &one, sizeof one, &e1) == MC_ERR_UNSUPPORTED &&
              strstr(e1.msg, "download while a graph is captured"));
        mc_err_clear(&e1);
        CHECK(mc_buffer_upload(y.b[s], 0, &one, sizeof one, &e1) == MC_ERR_UNSUPPORTED);
        mc_err_clear(&e1);
        CHECK(mc_backend_capture_begin(B[s], &e1) == MC_ERR_ARG &&
              strstr(e1.msg, "capturing already"));
        mc_err e2;
        mc_err_clear(&e2);
        CHECK(mc_backend_capture_end(B[s], &bad, &e2) == MC_ERR_UNSUPPORTED && bad == NULL &&
              strstr(e2.msg, "download while a graph is captured"));
        OK(mc_backend_synchronize(B[s], err_));
    }
    mc_graph_free(g[0]);
    mc_graph_free(g[1]);
    free(zh);
    free(zg);
    free(wh);
    free(nh);
    pair_free(&w);
    pair_free(&nw);
    pair_free(&x);
    pair_free(&y);
    pair_free(&z);
    pair_free(&ids);
    pair_free(&vals);
}

int main(int argc, char **argv)
{
    rng = 0x2545F4914F6CDD1Dull;
    mc_err_clear(err_);
    int bench = argc > 1 && strcmp(argv[1], "--bench") == 0;
    int smoke = argc > 1 && strcmp(argv[1], "--bench-smoke") == 0;
    int on_cpu = getenv("MC_CUDA_TEST_ON_CPU") && strcmp(getenv("MC_CUDA_TEST_ON_CPU"), "1") == 0;
    /* FP8 products of > 8 tokens widen 16 KiB of rows per cuBLAS call: several
     * chunks for most cases (read when the backend starts) */
    if (!bench && !smoke)
        setenv("MC_CUDA_FP8_CHUNK_BYTES", "16384", 0);
    mc_status st = on_cpu ? mc_backend_cpu_device_init(&B[1], err_) : mc_backend_cuda_init(0, &B[1], err_);
    if (st == MC_ERR_UNSUPPORTED) {
#ifdef MC_HAVE_CUDA
        printf("test_backend_cuda: skipped: no GPU (%s)\n", err_->msg);
#else
        printf("test_backend_cuda: skipped: built without CUDA\n");
#endif
        return 77;
    }
    if (st != MC_OK) {
        fprintf(stderr, "test_backend_cuda: %s\n", err_->msg);
        return 1;
    }
    dut_is_cuda = !on_cpu;
    if (bench || smoke) {
        int rc = bench_main(B[1], smoke);
        mc_backend_free(B[1]);
        return rc;
    }
    /* content checks deferred (the CUDA default); refusals compared with
     * the CPU's words run at the op, and deferred beside them */
    mc_backend_set_sync_checks(B[1], 0);
    OK(mc_backend_cpu_init(&B[0], err_));
    test_device();
    test_copies();
    test_matmul();
    test_rows();
    test_graphs();
    for (int il = 0; il < 2; il++) {
        rope_case(il, 5, 1, 64, 0, 64);
        rope_case(il, 7, 3, 48, 16, 32);
        rope_case(il, 64, 2, 130, 2, 126);
    }
    test_embed();
    test_topk(151937);
    test_topk(200); /* less than a block's threads */
    test_topk(64);  /* k = 64 = V: the whole row */
    test_v4_host_trip();
    mc_backend_free(B[0]);
    mc_backend_free(B[1]);
    return check_report("test_backend_cuda");
}
