/* cuda/cuda_ops.h - the CUDA kernels' launchers (cuda/ops.cu, cuda/matmul.cu, cuda/attn.cu,
 * cuda/moe.cu, cuda/probe.cu), callable from C (cuda/backend_cuda*.c). Each launcher
 * queues its kernel(s) on `stream` and returns cudaGetLastError() after the
 * launch (cudaSuccess when nothing was launched because there is no work);
 * it allocates nothing and frees nothing: every pointer is device memory the
 * caller owns and keeps alive until the stream has run the kernel.
 *
 * Activations are F32 rows `ld` elements apart (backend.h's row stride).
 * Dtype codes are mc_dtype's values (core/dtype.h; checked at compile time
 * in cuda/backend_cuda.c), repeated here because the device code is C++ and
 * does not include the C headers. */
#ifndef MC_CUDA_OPS_H
#define MC_CUDA_OPS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    MCK_DT_F32 = 0,
    MCK_DT_F16 = 1,
    MCK_DT_BF16 = 2,
    MCK_DT_F8_E4M3 = 3,
    MCK_DT_I64 = 4,
    MCK_DT_I32 = 5,
    MCK_DT_Q8_0 = 32,
    MCK_DT_Q4_K = 33,
    MCK_DT_Q6_K = 34,
};

#define MCK_Q8_0_BYTES 34  /* f16 d | int8 qs[32] */
#define MCK_Q4_K_BYTES 144 /* f16 d | f16 dmin | u8 scales[12] | u8 qs[128] */
#define MCK_Q6_K_BYTES 210 /* u8 ql[128] | u8 qh[64] | int8 scales[16] | f16 d */

#ifdef __CUDACC__
#define MCK_HD __host__ __device__
#else
#define MCK_HD
#endif

/* A block format's geometry: *blk weights a block, *sub the width of the
 * quantized activations' sums (Q4_K's mins: 32, Q6_K's -32 offset: 16; none
 * for Q8_0: 32), *bytes a block; 0 for element types. */
static inline MCK_HD int mck_q_geom(int dt, int *blk, int *sub, int *bytes)
{
    if (dt != MCK_DT_Q8_0 && dt != MCK_DT_Q4_K && dt != MCK_DT_Q6_K)
        return 0;
    *blk = dt == MCK_DT_Q8_0 ? 32 : 256;
    *sub = dt == MCK_DT_Q6_K ? 16 : 32;
    *bytes = dt == MCK_DT_Q8_0   ? MCK_Q8_0_BYTES
             : dt == MCK_DT_Q4_K ? MCK_Q4_K_BYTES
                                 : MCK_Q6_K_BYTES;
    return 1;
}

/* A 2-D weight W[rows, cols] in device memory (as kernels.h's mc_mat).
 * Element types: W[o, i] at element o * row_stride + i of data, or with
 * `transposed` at i * row_stride + o. Q8_0 / Q4_K: stored row o starts at
 * byte o * row_bytes and holds whole blocks (never transposed). FP8: scale
 * (or NULL) [(o / block_rows) * scale_cols + i / block_cols] multiplies the
 * stored value. */
typedef struct {
    int dtype;
    int rows, cols;
    long long row_stride; /* elements */
    size_t row_bytes;     /* bytes of one stored row (block formats) */
    int transposed;
    const void *data;
    const float *scale;
    int block_rows, block_cols;
    long long scale_cols;
} mck_mat;

/* ---- element-wise and row ops (cuda/ops.cu) ---- */

/* y[r] = x[r] / rms(x[r]) * w (w NULL: no weight); y may be x. */
cudaError_t mck_rmsnorm(cudaStream_t s, const float *x, long long ldx, const float *w, float *y,
                        long long ldy, long long rows, int d, float eps);
/* y[r] = (x[r] - mean) / sqrt(var + eps) * w + b (w, b NULL: 1, 0); y may be x. */
cudaError_t mck_layernorm(cudaStream_t s, const float *x, long long ldx, const float *w,
                          const float *b, float *y, long long ldy, long long rows, int d,
                          float eps);
/* y[r] = softmax(x[r]); y may be x. */
cudaError_t mck_softmax(cudaStream_t s, const float *x, long long ldx, float *y, long long ldy,
                        long long rows, int d);
/* y = a + b; y may be a or b. */
cudaError_t mck_add(cudaStream_t s, const float *a, long long lda, const float *b, long long ldb,
                    float *y, long long ldy, long long rows, int d);
/* y = silu(g) * u; y may be g or u. */
cudaError_t mck_swiglu(cudaStream_t s, const float *g, long long ldg, const float *u,
                       long long ldu, float *y, long long ldy, long long rows, int d);
/* Deferred content checks (docs/gpu.md): a check kernel given rec (3
 * device long longs) sets rec[0..3) = {op, the index at fault, k} when it
 * finds a fault and rec[0] < 0 (the first refusal since the host last read
 * rec); rec NULL: the host reads the answer itself (checks at the op). */
typedef struct {
    long long *rec;
    int op;
    long long k;
} mck_defer;
/* *bad = the first t < n with pos[t] outside [0, P), or -1 (bad: one device int). */
cudaError_t mck_rope_check(cudaStream_t s, const int32_t *pos, long long n, long long P, int *bad,
                           mck_defer d);
/* Rotates x (n * heads rows of d columns; row t * heads + h) in place by rows
 * pos[t] of cs, sn (rows ldc / lds apart); does nothing when *bad >= 0. */
cudaError_t mck_rope(cudaStream_t s, float *x, long long ldx, long long n, long long heads, int d,
                     const int32_t *pos, const float *cs, long long ldc, const float *sn,
                     long long lds, int interleaved, const int *bad);
/* *first = min over non-finite x[r, c] of r * d + c; the caller sets it to
 * ~0 before (one device unsigned long long). */
cudaError_t mck_find_nonfinite(cudaStream_t s, const float *x, long long ldx, long long rows,
                               int d, unsigned long long *first);
/* mc_op_note_nonfinite: mck_find_nonfinite into *first (~0 on entry, left
 * ~0), then one thread notes rec[3..7) = {tag, row, col, value's bits}
 * unless rec[3] >= 0 (a note is kept already) or rec[0] >= 0 (a refusal is
 * noted: rec is the deferred refusal's record too). No wait. */
cudaError_t mck_note_nonfinite(cudaStream_t s, const float *x, long long ldx, long long rows,
                               int d, long long tag, unsigned long long *first, long long *rec);
/* mc_op_topk on rows x (rows, V): ids / vals (rows, k), lse (rows, 2) or
 * NULL; rows <= 2^31 - 1 (one block each). k <= 64. passes: 1 makes k
 * passes over the row (the kernel for small k), 0 picks: k passes for
 * k < MCK_TOPK_RADIX_MIN, else a radix select (four 8-bit digit passes to
 * the k-th key, one pass gathering the k, whatever k is). */
#define MCK_TOPK_RADIX_MIN 6
cudaError_t mck_topk(cudaStream_t s, const float *x, long long ldx, long long rows, long long V,
                     int k, long long id0, int32_t *ids, long long ldi, float *vals, long long ldv,
                     float *lse, long long ldl, int passes);
/* y[t] = row ids[t] - id0 of the table dequantized, zeros outside it; ids
 * I32 (ids32) or I64 (ids64, the other NULL). */
cudaError_t mck_embed(cudaStream_t s, const mck_mat *table, const int32_t *ids32,
                      const int64_t *ids64, long long n, long long id0, float *y, long long ldy);

/* ---- matrix products (cuda/matmul.cu) ---- */

/* y[t, o] = sum_i W[o, i] x[t, i] for element-type weights (F32, F16, BF16,
 * F8_E4M3 with or without scales, transposed or not), F32 accumulation;
 * each weight element is read once per 8 tokens. */
cudaError_t mck_matmul_f(cudaStream_t s, const mck_mat *w, const float *x, long long ldx, int n,
                         float *y, long long ldy);
/* The activations of a block-format product as the CPU quantizes them
 * (kernels/cpu/ops.c quantize_act_row): q (n, kp) int8, d (n, kp / blk)
 * F32 scales, and bsum (n, kp / sub) int16 sums of sub values (Q4_K: 32,
 * Q6_K: 16; NULL for Q8_0). */
cudaError_t mck_quantize_act(cudaStream_t s, const float *x, long long ldx, int n, int cols,
                             int kp, int blk, int sub, int8_t *q, float *d, int16_t *bsum);
/* y = W x for Q8_0 / Q4_K / Q6_K weights from the quantized activations
 * above (integer products per block, as the CPU kernels). */
cudaError_t mck_matmul_q(cudaStream_t s, const mck_mat *w, const int8_t *q, const float *d,
                         const int16_t *bsum, int kp, int n, float *y, long long ldy);
/* out (n, cols) BF16 contiguous = x rounded to nearest even. */
cudaError_t mck_f32_to_bf16(cudaStream_t s, const float *x, long long ldx, int n, int cols,
                            uint16_t *out);
/* out (rows, w->cols) BF16 contiguous = rows r0 .. r0 + rows - 1 of an FP8
 * weight (row-major, not transposed), each code times its block scale (when
 * w->scale) rounded to nearest even. */
cudaError_t mck_fp8_to_bf16(cudaStream_t s, const mck_mat *w, int r0, int rows, uint16_t *out);

/* ---- paged KV cache and attention (cuda/attn.cu) ---- */

/* One call's mc_kv_index and the geometry of the pages it addresses:
 * position p of sequence s lives in block bt[s * bt_ld + p / block_size],
 * slot p % block_size, i.e. pages row (block * block_size + slot) * rps + r
 * for the rps rows of a slot. */
typedef struct {
    const int32_t *bt;  /* (n_seqs, bt_ld) block ids */
    long long bt_ld;
    int n_seqs, max_blocks;
    const int32_t *seq, *pos; /* [n] each */
    long long n;
    long long n_pages;
    int block_size;
} mck_kv;

/* info[0..3) (device long long) = the first token whose sequence, position
 * or block ids of [lo, pos] (lo = pos when `write`, else 0 or the chunk's
 * start) are out of range, or whose sel row (NULL: none; (n, sel_k) I32,
 * rows sel_ld apart) holds an entry outside [lo, pos] or keeps nothing;
 * -1 when every token is fine | the longest span pos - lo + 1 | the sum of
 * the spans (0 and 0 when a token is bad). One block. */
cudaError_t mck_kv_check(cudaStream_t s, const mck_kv *kv, int chunk, int write,
                         const int32_t *sel, long long sel_ld, int sel_k, long long *info,
                         mck_defer d);
/* pages row slot(t) * rps + r = src row t * rps + r (W columns each) for
 * every token t, r < rps; nothing when info[0] >= 0. */
cudaError_t mck_kv_write(cudaStream_t s, const mck_kv *kv, const float *src, long long ld_src,
                         int rps, int W, float *pages, long long ld_pages, const long long *info);

/* Where attention reads a position's key and value rows: row slot * rps +
 * h / grp of ka (da columns), of kb (db columns; kb NULL: db = 0) and of v
 * (dv columns); the score is q_a . ka + q_b . kb. */
typedef struct {
    const float *ka, *kb, *v;
    long long lda, ldb, ldv;
    int da, db, dv;
    int rps, grp;
} mck_attn_src;

/* For every token t (n rows of sel, sel_ld apart, k entries): out[t, 0..)
 * = its distinct entries >= 0 in ascending order, then -1 (k columns,
 * rows k apart). k <= MCK_SEL_MAX. */
#define MCK_SEL_MAX 8192
cudaError_t mck_sel_sorted(cudaStream_t s, const int32_t *sel, long long sel_ld, long long n,
                           int k, int32_t *out);
/* y[t, h] (row t * nh + h, dv columns) = softmax-weighted sum of the v rows
 * of the positions token t sees: [lo, pos[t]], or with `list` ((n, k)
 * ascending positions, -1 after) those; score = (q_a . ka [+ q_b . kb]) *
 * scale * (q_scale ? q_scale[t] : 1). One block per (token, head), an online
 * softmax over tiles of positions, F32. Nothing when info[0] >= 0. */
cudaError_t mck_attention(cudaStream_t s, const mck_kv *kv, const mck_attn_src *src,
                          const float *qa, long long ldqa, const float *qb, long long ldqb,
                          int nh, float *y, long long ldy, float scale, const float *q_scale,
                          int chunk, const int32_t *list, int k, const long long *info);
/* The V3.2 indexer's top-k (backend.h's mc_op_indexer_topk) for tokens
 * whose spans total `total` (< 2^31) and are at most max_span long: scores
 * as the CPU computes them, each with its position packed into one 64-bit
 * key (descending score, then ascending position), a segmented radix sort
 * per token, the first min(k, span) positions to sel (n, k; rows sel_ld
 * apart), -1 after. scratch NULL: *scratch_bytes = what it needs, nothing
 * queued. iq rows (t * ih + h) ldq apart, w rows ldw apart, keys rows ldk
 * apart. */
cudaError_t mck_indexer_topk(cudaStream_t s, const mck_kv *kv, const float *iq, long long ldq,
                             int ih, int id, const float *w, long long ldw, const float *keys,
                             long long ldk, float score_scale, float weight_scale, int k,
                             long long max_span, long long total, int32_t *sel, long long sel_ld,
                             void *scratch, size_t *scratch_bytes);

/* ---- MoE block (cuda/moe.cu) ---- */

/* backend.h's mc_op_router_topk, one block per token: scores, bias, groups
 * and the serial selection exactly as the CPU (kernels/cpu/backend_cpu_moe.c),
 * score: 0 softmax, 1 sigmoid, 2 sqrt-softplus, 3 logit-sigmoid. */
cudaError_t mck_router_topk(cudaStream_t s, const float *logits, long long ldl, long long n,
                            int E, const float *bias, int score, int k, int n_group,
                            int topk_group, int renorm, float norm_eps, float scale, int32_t *ids,
                            long long ld_ids, float *w, long long ld_w);
/* *bad (device int) = the first pair index t * k + j whose ids[t, j] is
 * outside [0, E), or -1; when none, offsets (E + 1, contiguous) and slot
 * (n, k) as the CPU's stable counting sort. One block. */
cudaError_t mck_moe_route(cudaStream_t s, const int32_t *ids, long long ld_ids, long long n,
                          int k, int E, int32_t *offsets, int32_t *slot, long long ld_slot,
                          int *bad, mck_defer d);
/* xp[slot[t, j]] = x[t] (H columns); nothing when *bad >= 0. */
cudaError_t mck_moe_scatter(cudaStream_t s, const float *x, long long ldx, long long n, int k,
                            int H, const int32_t *slot, long long ld_slot, float *xp,
                            long long ldxp, const int *bad);
/* *bad = the first pair index whose slot is outside [0, m), or -1. */
cudaError_t mck_slot_check(cudaStream_t s, const int32_t *slot, long long ld_slot, long long n,
                           int k, long long m, int *bad, mck_defer d);
/* y[t] = sum over the pairs of t in ascending (slot, j) of w[t, j] * yp[slot]
 * (w NULL: 1), each product rounded before it is added, from zero; nothing
 * when *bad >= 0. */
cudaError_t mck_moe_gather(cudaStream_t s, const float *yp, long long ldyp, const int32_t *slot,
                           long long ld_slot, const float *w, long long ld_w, long long n, int k,
                           int H, float *y, long long ldy, const int *bad);
/* y[r] = rw(r0 + r) * x[r] (d columns, rows) with rw(i) = rw[(i / rw_cols) *
 * rw_ld + i % rw_cols]; y may be x. */
cudaError_t mck_row_scale(cudaStream_t s, const float *x, long long ldx, const float *rw,
                          long long rw_ld, long long rw_cols, long long r0, float *y,
                          long long ldy, long long rows, int d);
/* g = silu(min(g, L)) * clamp(u, -L, L) in place (L > 0), as the CPU's
 * DeepSeek-V4 clamp; L <= 0: silu(g) * u. */
cudaError_t mck_swiglu_limit(cudaStream_t s, float *g, long long ldg, const float *u,
                             long long ldu, long long rows, int d, float limit);

/* grouped_experts in two launches over all experts (cuda/experts.cu): the
 * experts' pair rows are x rows off[e]..off[e + 1] (off on the device,
 * checked by mck_offsets_check first); gate / up (I x H) and down (H x I)
 * of every expert are row-major element types of one dtype, rows on 16
 * bytes. h is (m, I) scratch. Row weights rw (NULL: none) scale the input
 * when w_in, else the output. count (NULL: not counting) gets the weight
 * bytes ([0]) and multiply-adds ([1]) of the experts with rows added. */
typedef struct {
    int dtype;
    const mck_mat *gate, *up, *down; /* [n_experts] each, in device memory */
    const int32_t *off;              /* [n_experts + 1], device */
    int n_experts, I, H;
    const float *x;
    long long ldx;
    const float *rw;
    long long rw_ld, rw_cols;
    int w_in;
    float *h;
    long long ldh;
    float *y;
    long long ldy;
    float lim;
    unsigned long long *count;
    const int *bad; /* mck_offsets_check's answer (device): nothing is done when >= 0 */
} mck_experts;
/* *bad (device) = -1 when off[0] == 0, off[n_experts] == m and off never
 * decreases, else the first index at fault. */
cudaError_t mck_offsets_check(cudaStream_t s, const int32_t *off, int n_experts, long long m,
                              int *bad, mck_defer d);
cudaError_t mck_experts_run(cudaStream_t s, const mck_experts *p);
/* grouped_experts over all experts for block-format weights (gate and up
 * of one of Q8_0 / Q4_K / Q6_K, down of one, maybe another): x (m rows)
 * scaled by its row weights into xs first when w_in, quantized as the CPU
 * quantizes a product's activations (mck_quantize_act) into qx / dx / bx,
 * one launch for gate and up (h = the clamped SwiGLU), h quantized into
 * qh / dh / bh, one launch for down (times the row weights unless w_in).
 * The row products are matmul's (cuda/qdot.cuh): the same bits as the
 * per-expert loop. Same ranges, counts and gate (bad) as mck_experts. */
typedef struct {
    int dt_gu, dt_down;
    const mck_mat *gate, *up, *down; /* [n_experts] each, in device memory */
    const int32_t *off;              /* [n_experts + 1], device */
    int n_experts, I, H;
    long long m;
    const float *x;
    long long ldx;
    const float *rw;
    long long rw_ld, rw_cols;
    int w_in;             /* rw weighs the input, else (rw given) the output */
    float *xs;            /* (m, H) scratch when w_in */
    int8_t *qx;           /* (m, kpx) */
    float *dx;            /* (m, kpx / block) */
    int16_t *bx;          /* (m, kpx / sub) unless Q8_0 */
    int kpx;              /* H rounded up to gate's block */
    float *h;             /* (m, I), rows ldh apart */
    long long ldh;
    int8_t *qh;
    float *dh;
    int16_t *bh;
    int kph;              /* I rounded up to down's block */
    float *y;
    long long ldy;
    float lim;
    unsigned long long *count;
    const int *bad;
} mck_experts_q;
cudaError_t mck_experts_run_q(cudaStream_t s, const mck_experts_q *p);

/* ---- DeepSeek-V4 (cuda/v4.cu; backend.h's mc_op_v4_*) ---- */

/* The content check of a V4 op, as the CPU op's (kernels/cpu/backend_cpu_v4.c)
 * in its order: kind MCK_V4_COMPRESS / _INDEX / _ATTENTION check each
 * token's sequence, position and the block ids of the positions it reads
 * (compress: only tokens that complete a window, from (w - overlap) *
 * rate; attention: from pos - window + 1 without comp pages, else 0;
 * index: 0), then compress: the window start w * rate < P (rows of cs);
 * attention: every sel entry in [-1, (pos + 1) / rate); index (this
 * backend's limit, not the CPU's, reported only when no token fails the
 * CPU's checks): n_row[t] <= cap, the entries the block table holds.
 * MCK_V4_HASH: tok[t] in [0, V), then table[tok[t], j] in [0, E). */
enum { MCK_V4_COMPRESS = 1, MCK_V4_INDEX, MCK_V4_ATTENTION, MCK_V4_HASH };
/* What was wrong with the first token refused (info[1]), with its values
 * info[2..5): */
enum {
    MCK_V4_BAD_SEQ = 1, /* seq */
    MCK_V4_BAD_POS,     /* pos */
    MCK_V4_BAD_BLOCK,   /* seq, j, block id */
    MCK_V4_BAD_WINDOW,  /* the window's start w * rate */
    MCK_V4_BAD_SEL,     /* j, sel[t, j], the entries the token sees */
    MCK_V4_BAD_NROW,    /* n_row[t], cap */
    MCK_V4_BAD_ID,      /* tok[t] */
    MCK_V4_BAD_TABLE    /* tok[t], j, table[tok[t], j] */
};
typedef struct {
    int kind;
    mck_kv kv;                 /* paged kinds */
    int rate, overlap, window; /* compress, index, attention */
    int has_comp;              /* attention: comp pages given */
    long long P;               /* compress: rows of cs */
    const int32_t *n_row;      /* index: [n] or NULL */
    long long cap;             /* index: the table's entries, max_blocks * block_size / rate */
    const int32_t *sel;        /* attention: (n, sel_k) rows sel_ld apart, or NULL */
    long long sel_ld;
    int sel_k;
    const int32_t *tok, *table; /* hash: tok [n], table (V, k) rows table_ld apart */
    long long table_ld, V;
    int k, E;
} mck_v4_chk;
/* info[0..5) (device long long) = {the first token refused or -1, its
 * MCK_V4_BAD_*, its values}; with d.rec the refusal is also noted for the
 * next wait. One block over the n tokens. */
cudaError_t mck_v4_check(cudaStream_t s, const mck_v4_chk *c, long long n, long long *info,
                         mck_defer d);
/* mc_op_v4_hc_pre for n tokens, hc <= 64 (post, comb NULL: y only). */
cudaError_t mck_v4_hc_pre(cudaStream_t s, const float *x, long long ldx, const float *mix,
                          long long ldm, const float *base, const float *scale, int hc, int iters,
                          float eps, int H, long long n, float *post, long long ldp, float *comb,
                          long long ldc, float *y, long long ldy);
/* mc_op_v4_hc_post in place on x (n, hc * H), hc <= 64. */
cudaError_t mck_v4_hc_post(cudaStream_t s, float *x, long long ldx, const float *post,
                           long long ldp, const float *comb, long long ldc, const float *y,
                           long long ldy, int hc, int H, long long n);
/* mc_op_v4_compress (one block per token; cd <= 8192 for its shared row);
 * nothing when info[0] >= 0. */
cudaError_t mck_v4_compress(cudaStream_t s, const mck_kv *kv, const float *kvp, long long ldk,
                            const float *gp, long long ldg, const float *ape, long long lda,
                            const float *norm, const float *cs, long long ldcs, const float *sn,
                            long long ldsn, int rate, int overlap, int cd, int rd, float eps,
                            float *out, long long ldo, const long long *info);
/* One score of mc_op_v4_index_topk's row and its entry (the CPU's sel_t). */
typedef struct {
    float v;
    int i;
} mck_v4_sel;
/* mc_op_v4_index_topk for tokens t0 .. t0 + nt - 1 of kv: each token's
 * score row (visible entries scored, -inf up to n_row) in scratch rows of
 * cap entries (nt * cap mck_v4_sel), then per token the CPU's introselect
 * (one thread each: the reference's order among ties) and the visible
 * entries kept to sel rows t (k columns, rows sel_ld apart), -1 after.
 * Nothing when info[0] >= 0. */
cudaError_t mck_v4_index_topk(cudaStream_t s, const mck_kv *kv, long long t0, long long nt,
                              const float *iq, long long ldq, int ih, int id, const float *w,
                              long long ldw, const float *keys, long long ldk, int rate,
                              const int32_t *n_row, float score_scale, float weight_scale, int k,
                              long long cap, mck_v4_sel *scratch, int32_t *sel, long long sel_ld,
                              const long long *info);
/* mc_op_v4_attention, one block per (token, head) (2 hd floats of shared
 * memory, hd <= 5120): an online softmax started at the head's sink over
 * the window positions, then the compressed entries (all, or sel's in
 * order); comp NULL: the window only. Nothing when info[0] >= 0. */
cudaError_t mck_v4_attention(cudaStream_t s, const mck_kv *kv, const float *q, long long ldq,
                             int nh, int hd, const float *kvp, long long ldk, const float *comp,
                             long long ldc, const float *sinks, const int32_t *sel,
                             long long sel_ld, int ksel, int window, int rate, float scale,
                             float *y, long long ldy, const long long *info);
/* mc_op_v4_hash_route (sigmoid: 1 for MC_ROUTE_SIGMOID, else sqrt-softplus);
 * nothing when info[0] >= 0. */
cudaError_t mck_v4_hash_route(cudaStream_t s, const float *logits, long long ldl, long long n,
                              const int32_t *tok, const int32_t *table, long long ldt, int k,
                              int sigmoid, float norm_eps, float scale, int32_t *ids,
                              long long ldi, float *w, long long ldw, const long long *info);

/* ---- probes (cuda/probe.cu) ---- */

/* Reads `bytes` (a multiple of 16) of buf once, 16 bytes per load; sink
 * (one device unsigned long long) receives a value depending on every byte. */
cudaError_t mck_probe_read(cudaStream_t s, const void *buf, size_t bytes, int blocks,
                           unsigned long long *sink);
/* blocks x threads threads each run `iters` rounds of 8 independent FMA
 * chains: 16 * iters flops per thread. */
cudaError_t mck_probe_fma(cudaStream_t s, int blocks, int threads, int iters, float *sink);
/* Fills bytes (a multiple of 4) with a pattern (probe input, never zeros). */
cudaError_t mck_fill_pattern(cudaStream_t s, void *buf, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
