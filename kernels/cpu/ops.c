/* cpu/ops.c - portable reference kernels. */
#include "kernels.h"

#include <math.h>
#include <string.h>

/* Widens n consecutive stored elements at p into dst. */
static void widen(mc_dtype dt, const unsigned char *p, int n, float *dst)
{
    switch (dt) {
    case MC_DT_F32:
        memcpy(dst, p, (size_t)n * 4);
        break;
    case MC_DT_BF16:
        for (int i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * (size_t)i, 2);
            dst[i] = mc_bf16_to_f32(h);
        }
        break;
    case MC_DT_F16:
        for (int i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * (size_t)i, 2);
            dst[i] = mc_f16_to_f32(h);
        }
        break;
    case MC_DT_F8_E4M3:
        for (int i = 0; i < n; i++)
            dst[i] = mc_fp8_e4m3_to_f32(p[i]);
        break;
    default:
        memset(dst, 0, (size_t)n * sizeof *dst);
        break;
    }
}

/* Dequantizes columns [c0, c0+n) of stored row r into dst[n]. */
static void mat_row_span(const mc_mat *w, int r, int c0, int n, float *dst)
{
    size_t es = mc_dtype_size(w->dtype);
    widen(w->dtype, (const unsigned char *)w->data + ((size_t)r * w->row_stride + (size_t)c0) * es,
          n, dst);
    if (w->scale) {
        const float *srow = w->scale + (size_t)(r / w->block_rows) * (size_t)w->scale_cols;
        for (int i = 0; i < n; i++)
            dst[i] *= srow[(c0 + i) / w->block_cols];
    }
}

void mc_mat_row_f32(const mc_mat *w, int r, float *dst)
{
    if (!w->transposed) {
        mat_row_span(w, r, 0, w->cols, dst);
        return;
    }
    size_t es = mc_dtype_size(w->dtype);
    for (int i = 0; i < w->cols; i++)
        widen(w->dtype, (const unsigned char *)w->data + ((size_t)i * w->row_stride + (size_t)r) * es,
              1, dst + i);
}

float mc_dot(const float *a, const float *b, int n)
{
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

void mc_axpy(float *y, float a, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

#define MATMUL_CHUNK 2048

/* Transposed storage: stream stored rows (one per input i) and accumulate
 * y[t, :] += x[t, i] * Wt[i, :]. */
static void matmul_transposed(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy)
{
    float row[MATMUL_CHUNK];
    size_t es = mc_dtype_size(w->dtype);
    for (int t = 0; t < n; t++)
        memset(y + (size_t)t * ldy, 0, (size_t)w->rows * sizeof *y);
    for (int i = 0; i < w->cols; i++)
        for (int o0 = 0; o0 < w->rows; o0 += MATMUL_CHUNK) {
            int len = w->rows - o0 < MATMUL_CHUNK ? w->rows - o0 : MATMUL_CHUNK;
            widen(w->dtype,
                  (const unsigned char *)w->data + ((size_t)i * w->row_stride + (size_t)o0) * es,
                  len, row);
            for (int t = 0; t < n; t++)
                mc_axpy(y + (size_t)t * ldy + o0, x[(size_t)t * ldx + i], row, len);
        }
}

void mc_matmul(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy)
{
    float row[MATMUL_CHUNK];
    if (w->transposed) {
        matmul_transposed(w, x, n, ldx, y, ldy);
        return;
    }
    for (int o = 0; o < w->rows; o++) {
        for (int t = 0; t < n; t++)
            y[(size_t)t * ldy + o] = 0.0f;
        for (int c0 = 0; c0 < w->cols; c0 += MATMUL_CHUNK) {
            int len = w->cols - c0 < MATMUL_CHUNK ? w->cols - c0 : MATMUL_CHUNK;
            mat_row_span(w, o, c0, len, row);
            for (int t = 0; t < n; t++)
                y[(size_t)t * ldy + o] += mc_dot(row, x + (size_t)t * ldx + c0, len);
        }
    }
}

void mc_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = w ? x[i] * inv * w[i] : x[i] * inv;
}

void mc_softmax(float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        s += x[i];
    }
    float inv = (float)(1.0 / s);
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

void mc_rope_rotate(float *v, int dim, int interleaved, const float *cos, const float *sin)
{
    int half = dim / 2;
    for (int i = 0; i < half; i++) {
        int a = interleaved ? 2 * i : i;
        int b = interleaved ? 2 * i + 1 : i + half;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * cos[i] - x1 * sin[i];
        v[b] = x1 * cos[i] + x0 * sin[i];
    }
}
