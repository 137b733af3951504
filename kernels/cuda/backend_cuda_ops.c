/* cuda/backend_cuda_ops.c - the CUDA backend's op entries: arguments were
 * validated by the front end (backend_ops.c); each entry makes the device
 * current, queues kernels (the .cu files) or cuBLAS on the backend's stream and
 * checks the launch, naming the op. The DeepSeek-V4 ops are not written
 * yet and answer MC_ERR_UNSUPPORTED naming the op.
 *
 * Matrix product paths (precision against the CPU backend):
 *   - up to 8 tokens (FP8: up to 32), and every batch for F16, Q8_0, Q4_K,
 *     Q6_K and transposed FP8 weights: our kernels, F32 accumulation of the stored weights
 *     (FP8 times its block scale) with F32 activations; Q8_0 / Q4_K / Q6_K quantize the
 *     activations as the CPU does and take the same integer block products.
 *     Agrees with the CPU to F32 rounding (~1e-6 of the row's largest value).
 *   - more than 8 tokens, BF16 weights: cuBLAS (cublasGemmEx) with the
 *     activations rounded to BF16, F32 accumulation: ~1e-2 relative (the
 *     activations' rounding).
 *   - more than 32 tokens, FP8 weights (row-major, block scales or none):
 *     the same cuBLAS product on the weights widened to BF16 a chunk of rows
 *     at a time (code times block scale, rounded once; at most
 *     128 MiB of device scratch, never the whole matrix): ~1e-2
 *     relative (the activations' and the scaled weights' rounding). The
 *     widening moves 5 bytes a weight, what the kernel above reads for 33-40
 *     tokens (once per 8), so fewer tokens stay on the kernel.
 *   - more than 8 tokens, F32 weights: cublasSgemm (F32, no TF32 unless the
 *     NVIDIA_TF32_OVERRIDE environment asks for it). */
#include "backend.h"
#include "cuda/backend_cuda_internal.h"
#include "dtype.h"

#include <stdio.h>
#include <string.h>

#define GEMV_MAX_TOKENS 8

mck_mat mc_cuda_mck(const mc_tensor *t)
{
    mck_mat m = {.dtype = (int)t->dtype, .rows = (int)t->shape[0], .cols = (int)t->shape[1],
                 .row_stride = (long long)t->row_stride,
                 .row_bytes = mc_dtype_row_bytes(t->dtype, t->row_stride),
                 .transposed = t->transposed, .data = mc_cuda_at(t)};
    if (t->scale_buf) {
        m.scale = (const float *)((const unsigned char *)mc_buffer_mem(t->scale_buf) +
                                  t->scale_offset);
        m.block_rows = t->block_rows;
        m.block_cols = t->block_cols;
        m.scale_cols = (long long)t->scale_cols;
    }
    return m;
}

uint64_t mc_cuda_weight_bytes(const mc_tensor *w, int64_t rows)
{
    uint64_t b = mc_dtype_is_block(w->dtype)
                     ? (uint64_t)rows * mc_dtype_row_bytes(w->dtype, w->shape[1])
                     : (uint64_t)rows * (uint64_t)w->shape[1] * mc_dtype_size(w->dtype);
    if (w->scale_buf)
        b += (uint64_t)((rows + w->block_rows - 1) / w->block_rows) * (uint64_t)w->scale_cols * 4;
    return b;
}

static mc_status launched(cudaError_t e, const char *op, mc_err *err)
{
    return mc_cuda_check(e, op, err);
}

/* ---- matmul ---- */

static mc_status blas_failed(cublasStatus_t bs, const mc_tensor *w, int n, const char *op,
                             mc_err *err)
{
    return mc_err_set(err, MC_ERR_INTERNAL, "cuda backend: %s: cuBLAS %s (%s weights %lld x "
                      "%lld, %d tokens)", op, cublasGetStatusString(bs), mc_dtype_name(w->dtype),
                      (long long)w->shape[0], (long long)w->shape[1], n);
}

static mc_status matmul_blas(mc_cuda_ctx *c, const mc_tensor *w, const float *x, long long ldx,
                             float *y, long long ldy, int n, const char *op, mc_err *err)
{
    const float one = 1.0f, zero = 0.0f;
    int O = (int)w->shape[0], I = (int)w->shape[1];
    /* y^T (O x n, column-major, ld ldy) = W (O x I) x^T (I x n); W's storage
     * is W^T column-major (op T) or, transposed, W itself (op N) */
    cublasOperation_t opa = w->transposed ? CUBLAS_OP_N : CUBLAS_OP_T;
    cublasStatus_t bs;
    if (w->dtype == MC_DT_F32) {
        bs = cublasSgemm(c->blas, opa, CUBLAS_OP_N, O, n, I, &one, (const float *)mc_cuda_at(w),
                         (int)w->row_stride, x, (int)ldx, &zero, y, (int)ldy);
    } else {
        void *xb = NULL;
        mc_status st = mc_cuda_scratch(c, (size_t)n * (size_t)I * 2, &xb, op, err);
        if (st != MC_OK)
            return st;
        st = launched(mck_f32_to_bf16(c->stream, x, ldx, n, I, xb), op, err);
        if (st != MC_OK)
            return st;
        bs = cublasGemmEx(c->blas, opa, CUBLAS_OP_N, O, n, I, &one, mc_cuda_at(w), CUDA_R_16BF,
                          (int)w->row_stride, xb, CUDA_R_16BF, I, &zero, y, CUDA_R_32F, (int)ldy,
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
    if (bs != CUBLAS_STATUS_SUCCESS)
        return blas_failed(bs, w, n, op, err);
    return launched(cudaGetLastError(), op, err);
}

/* FP8 weights (row-major) against more than 32 tokens: the activations
 * rounded to BF16 once, then per chunk of rows the rows widened to BF16
 * (mck_fp8_to_bf16) and one cublasGemmEx writing those outputs. */
static mc_status matmul_fp8_blas(mc_cuda_ctx *c, const mc_tensor *w, const float *x,
                                 long long ldx, float *y, long long ldy, int n, const char *op,
                                 mc_err *err)
{
    const float one = 1.0f, zero = 0.0f;
    int O = (int)w->shape[0], I = (int)w->shape[1];
    size_t row_b = (size_t)I * 2;
    size_t chunk = c->fp8_chunk_bytes / row_b;
    chunk = chunk < 1 ? 1 : chunk > (size_t)O ? (size_t)O : chunk;
    void *xb = NULL, *wb = NULL;
    mc_status st = mc_cuda_scratch(c, (size_t)n * row_b, &xb, op, err);
    if (st == MC_OK)
        st = mc_cuda_wscratch(c, chunk * row_b, &wb, op, err);
    if (st == MC_OK)
        st = launched(mck_f32_to_bf16(c->stream, x, ldx, n, I, xb), op, err);
    mck_mat m = mc_cuda_mck(w);
    for (int r0 = 0; r0 < O && st == MC_OK; r0 += (int)chunk) {
        int rr = O - r0 < (int)chunk ? O - r0 : (int)chunk;
        st = launched(mck_fp8_to_bf16(c->stream, &m, r0, rr, wb), op, err);
        if (st != MC_OK)
            break;
        /* y^T rows r0 .. r0 + rr - 1 (column-major, ld ldy) = Wb (rr x I) x^T */
        cublasStatus_t bs = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, rr, n, I, &one, wb,
                                         CUDA_R_16BF, I, xb, CUDA_R_16BF, I, &zero, y + r0,
                                         CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);
        if (bs != CUBLAS_STATUS_SUCCESS)
            return blas_failed(bs, w, n, op, err);
        st = launched(cudaGetLastError(), op, err);
    }
    return st;
}

static size_t align256(size_t b)
{
    return (b + 255) & ~(size_t)255;
}

size_t mc_cuda_qact_layout(int dt, int64_t n, int cols, void *p, mc_cuda_qact *a)
{
    int blk, sub, bb;
    if (!mck_q_geom(dt, &blk, &sub, &bb))
        return 0;
    int kp = (cols + blk - 1) / blk * blk;
    size_t N = (size_t)n, nq = align256(N * (size_t)kp), nd = align256(N * (size_t)(kp / blk) * 4),
           ns = dt == MC_DT_Q8_0 ? 0 : align256(N * (size_t)(kp / sub) * 2);
    if (a) {
        unsigned char *b = p;
        *a = (mc_cuda_qact){.q = (int8_t *)b, .d = (float *)(b + nq),
                            .bsum = ns ? (int16_t *)(b + nq + nd) : NULL, .kp = kp, .blk = blk,
                            .sub = sub};
    }
    return nq + nd + ns;
}

static mc_status matmul_block(mc_cuda_ctx *c, const mck_mat *m, const float *x, long long ldx,
                              float *y, long long ldy, int n, const char *op, mc_err *err)
{
    void *s = NULL;
    mc_cuda_qact a;
    mc_status st = mc_cuda_scratch(c, mc_cuda_qact_layout(m->dtype, n, m->cols, NULL, NULL), &s,
                                   op, err);
    if (st != MC_OK)
        return st;
    mc_cuda_qact_layout(m->dtype, n, m->cols, s, &a);
    st = launched(mck_quantize_act(c->stream, x, ldx, n, m->cols, a.kp, a.blk, a.sub, a.q, a.d,
                                   a.bsum), op, err);
    if (st != MC_OK)
        return st;
    return launched(mck_matmul_q(c->stream, m, a.q, a.d, a.bsum, a.kp, n, y, ldy), op, err);
}

mc_status mc_cuda_weight_dtype_ok(mc_dtype dt, const char *op, mc_err *err)
{
    if (dt == MC_DT_F32 || dt == MC_DT_F16 || dt == MC_DT_BF16 || dt == MC_DT_F8_E4M3 ||
        dt == MC_DT_Q8_0 || dt == MC_DT_Q4_K || dt == MC_DT_Q6_K)
        return MC_OK;
    return mc_err_set(err, MC_ERR_UNSUPPORTED,
                      "cuda backend: %s: no kernels for %s weights (F32, F16, BF16, F8_E4M3, Q8_0, "
                      "Q4_K and Q6_K; a model's Q5_K matrices are converted to Q8_0 at load)", op,
                      mc_dtype_name(dt));
}

mc_status mc_cuda_matmul_raw(mc_cuda_ctx *c, const mc_tensor *w, const float *x, long long ldx,
                             int n, float *y, long long ldy, const char *op, mc_err *err)
{
    mc_status st = mc_cuda_weight_dtype_ok(w->dtype, op, err);
    if (st != MC_OK)
        return st;
    if (n > GEMV_MAX_TOKENS && !w->scale_buf &&
        (w->dtype == MC_DT_BF16 || w->dtype == MC_DT_F32))
        return matmul_blas(c, w, x, ldx, y, ldy, n, op, err);
    if (n > MC_CUDA_FP8_WIDEN_TOKENS && w->dtype == MC_DT_F8_E4M3 && !w->transposed &&
        !c->fp8_gemv)
        return matmul_fp8_blas(c, w, x, ldx, y, ldy, n, op, err);
    mck_mat m = mc_cuda_mck(w);
    if (mc_dtype_is_block(w->dtype))
        return matmul_block(c, &m, x, ldx, y, ldy, n, op, err);
    return launched(mck_matmul_f(c->stream, &m, x, ldx, n, y, ldy), op, err);
}

mc_status mc_cuda_matmul(void *ctx, const mc_tensor *w, const mc_tensor *x, mc_tensor *y,
                         mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "matmul", err);
    if (st != MC_OK)
        return st;
    int n = (int)mc_tensor_rows(x);
    if (c->counting) {
        c->counters.bytes_read += mc_cuda_weight_bytes(w, w->shape[0]);
        c->counters.macs += (uint64_t)w->shape[0] * (uint64_t)w->shape[1] * (uint64_t)n;
    }
    return mc_cuda_matmul_raw(c, w, (const float *)mc_cuda_at(x), x->row_stride, n,
                              (float *)mc_cuda_at(y), y->row_stride, "matmul", err);
}

/* ---- row and element-wise ops ---- */

#define F32(t) ((float *)mc_cuda_at(t))

mc_status mc_cuda_rmsnorm(void *ctx, const mc_tensor *x, const mc_tensor *w, float eps,
                          mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "rmsnorm", err);
    if (st != MC_OK)
        return st;
    return launched(mck_rmsnorm(c->stream, F32(x), x->row_stride, w ? F32(w) : NULL, F32(y),
                                y->row_stride, mc_tensor_rows(x), (int)mc_tensor_cols(x), eps),
                    "rmsnorm", err);
}

mc_status mc_cuda_layernorm(void *ctx, const mc_tensor *x, const mc_tensor *w, const mc_tensor *b,
                            float eps, mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "layernorm", err);
    if (st != MC_OK)
        return st;
    return launched(mck_layernorm(c->stream, F32(x), x->row_stride, w ? F32(w) : NULL,
                                  b ? F32(b) : NULL, F32(y), y->row_stride, mc_tensor_rows(x),
                                  (int)mc_tensor_cols(x), eps),
                    "layernorm", err);
}

mc_status mc_cuda_softmax(void *ctx, const mc_tensor *x, mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "softmax", err);
    if (st != MC_OK)
        return st;
    return launched(mck_softmax(c->stream, F32(x), x->row_stride, F32(y), y->row_stride,
                                mc_tensor_rows(x), (int)mc_tensor_cols(x)),
                    "softmax", err);
}

mc_status mc_cuda_add(void *ctx, const mc_tensor *a, const mc_tensor *b, mc_tensor *y,
                      mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "add", err);
    if (st != MC_OK)
        return st;
    return launched(mck_add(c->stream, F32(a), a->row_stride, F32(b), b->row_stride, F32(y),
                            y->row_stride, mc_tensor_rows(a), (int)mc_tensor_cols(a)),
                    "add", err);
}

mc_status mc_cuda_swiglu(void *ctx, const mc_tensor *g, const mc_tensor *u, mc_tensor *y,
                         mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "swiglu", err);
    if (st != MC_OK)
        return st;
    return launched(mck_swiglu(c->stream, F32(g), g->row_stride, F32(u), u->row_stride, F32(y),
                               y->row_stride, mc_tensor_rows(g), (int)mc_tensor_cols(g)),
                    "swiglu", err);
}

/* Positions live on the device: a check kernel finds the first one outside
 * the tables and the rotation kernel does nothing then; the answer is noted
 * for the next wait (deferred checks), or read back at once (sync_checks:
 * one stream synchronization, the CPU's message). */
mc_status mc_cuda_rope(void *ctx, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                       const mc_tensor *sn, int interleaved, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "rope", err);
    if (st != MC_OK)
        return st;
    int64_t n = x->shape[0], heads = mc_tensor_rows(x) / n, P = mc_tensor_rows(cs);
    const int32_t *p = (const int32_t *)mc_cuda_at(pos);
    st = launched(mck_rope_check(c->stream, p, n, P, c->d_flag,
                                 mc_cuda_defer_of(c, MC_CUDA_CHK_ROPE, 0)),
                  "rope (position check)", err);
    if (st == MC_OK)
        st = launched(mck_rope(c->stream, F32(x), x->row_stride, n, heads, (int)mc_tensor_cols(x),
                               p, F32(cs), cs->row_stride, F32(sn), sn->row_stride, interleaved,
                               c->d_flag),
                      "rope", err);
    if (st != MC_OK || !c->sync_checks) /* deferred: the check kernel left its note */
        return st;
    if (st == MC_OK)
        st = mc_cuda_check(cudaMemcpyAsync(c->h_flag, c->d_flag, sizeof *c->h_flag,
                                           cudaMemcpyDeviceToHost, c->stream), "rope", err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaStreamSynchronize(c->stream), "rope", err);
    if (st != MC_OK || *c->h_flag < 0)
        return st;
    int64_t t = *c->h_flag;
    int32_t bad = 0;
    st = mc_cuda_check(cudaMemcpy(&bad, p + t, sizeof bad, cudaMemcpyDeviceToHost), "rope", err);
    if (st != MC_OK)
        return st;
    return mc_err_set(err, MC_ERR_ARG, "rope: pos[%lld] = %d is outside the cos/sin tables' %lld "
                      "positions", (long long)t, (int)bad, (long long)P);
}

mc_status mc_cuda_find_nonfinite(void *ctx, const mc_tensor *x, int64_t *row, int64_t *col,
                                 mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "find_nonfinite";
    mc_status st = mc_cuda_use(c, op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMemsetAsync(c->d_first, 0xff, sizeof *c->d_first, c->stream), op,
                           err);
    int d = (int)mc_tensor_cols(x);
    if (st == MC_OK)
        st = launched(mck_find_nonfinite(c->stream, F32(x), x->row_stride, mc_tensor_rows(x), d,
                                         c->d_first), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaMemcpyAsync(c->h_first, c->d_first, sizeof *c->h_first,
                                           cudaMemcpyDeviceToHost, c->stream), op, err);
    if (st == MC_OK)
        st = mc_cuda_check(cudaStreamSynchronize(c->stream), op, err);
    if (st == MC_OK && *c->h_first != ~0ull && d > 0) {
        *row = (int64_t)(*c->h_first / (unsigned long long)d);
        *col = (int64_t)(*c->h_first % (unsigned long long)d);
    }
    return st;
}

mc_status mc_cuda_note_nonfinite(void *ctx, const mc_tensor *x, int64_t tag, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "note_nonfinite";
    mc_status st = mc_cuda_use(c, op, err);
    /* a note on the host already: the first is kept (a graph always holds the kernels) */
    if (st != MC_OK || (c->nf.tag >= 0 && !c->capturing))
        return st;
    c->nf_noted = 1;
    return launched(mck_note_nonfinite(c->stream, F32(x), x->row_stride, mc_tensor_rows(x),
                                       (int)mc_tensor_cols(x), tag, c->d_nf_first, c->d_rec),
                    op, err);
}

mc_status mc_cuda_topk(void *ctx, const mc_tensor *x, int k, int64_t id0, mc_tensor *ids,
                       mc_tensor *vals, mc_tensor *lse, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    const char *op = "topk";
    mc_status st = mc_cuda_use(c, op, err);
    int64_t rows = mc_tensor_rows(x);
    if (st == MC_OK && rows > 0x7fffffffLL)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "topk: %lld rows (one block each; at most "
                          "2^31 - 1)", (long long)rows);
    if (st == MC_OK)
        st = launched(mck_topk(c->stream, F32(x), x->row_stride, rows, mc_tensor_cols(x), k, id0,
                               (int32_t *)mc_cuda_at(ids), ids->row_stride, F32(vals),
                               vals->row_stride, lse ? F32(lse) : NULL, lse ? lse->row_stride : 0,
                               c->topk_passes),
                      op, err);
    return st;
}

mc_status mc_cuda_embed(void *ctx, const mc_tensor *table, const mc_tensor *ids, int64_t id0,
                        mc_tensor *y, mc_err *err)
{
    mc_cuda_ctx *c = ctx;
    mc_status st = mc_cuda_use(c, "embed", err);
    if (st != MC_OK || (st = mc_cuda_weight_dtype_ok(table->dtype, "embed", err)) != MC_OK)
        return st;
    int64_t n = ids->shape[0];
    if (c->counting)
        c->counters.bytes_read += (uint64_t)n * mc_cuda_weight_bytes(table, 1);
    mck_mat m = mc_cuda_mck(table);
    const void *ip = mc_cuda_at(ids);
    return launched(mck_embed(c->stream, &m, ids->dtype == MC_DT_I32 ? ip : NULL,
                              ids->dtype == MC_DT_I64 ? ip : NULL, n, id0, F32(y), y->row_stride),
                    "embed", err);
}
