/* backend.h - one interface over a device's memory and the ops the layer
 * code is built from. The CPU backend (kernels/cpu/backend_cpu.c) is the
 * always-built reference; a GPU backend implements the same vtable.
 *
 * Objects and lifetimes:
 *   mc_backend  a device and its ops; mc_backend_free after every buffer
 *               made from it is freed.
 *   mc_buffer   a range of device memory, owned (mc_buffer_alloc: freed by
 *               mc_buffer_free) or borrowed (mc_buffer_wrap_host: host memory
 *               such as a weight file's memory map, read-only, which must
 *               outlive the buffer; mc_buffer_free releases only the handle).
 *   mc_tensor   a plain value describing bytes inside one buffer: dtype,
 *               shape, row stride, FP8 block scales. Copy it freely; it owns
 *               nothing, and the buffers it names must outlive every use.
 *
 * Tensor layout: shape[0..ndim) in C order, shape[ndim-1] the columns. The
 * leading dimensions are collapsed into rows (rows = shape[0] * ... *
 * shape[ndim-2]); row r starts at byte offset + r * mc_dtype_row_bytes(dtype,
 * row_stride) of its buffer and holds the columns contiguously. A view of
 * columns keeps the row stride of its parent (a tensor-parallel column
 * slice); a view of rows moves the offset (a row slice). For Q8_0 / Q4_K the
 * row stride and a column view's start are multiples of the block (32 /
 * 256). A 2-D weight may be `transposed`: its storage holds W^T (Llama 4's
 * fused experts, [in, out] row-major), element [r, c] at byte offset +
 * (c * row_stride + r) * size; element types only, no block scales.
 *
 * Ops: every op takes tensors of the same backend, validates them in the
 * generic front end (backend.c) and returns MC_ERR_ARG with a message that
 * names the argument at fault (`x`, `w`, `y`, ...) before any work is done;
 * contents that only the device sees (token ids, positions) are checked by
 * the backend. Activations are F32. An output may be the very tensor given
 * as an input where the op says "may alias"; any other overlap is refused.
 * Ops are ordered on the device; results are visible to mc_buffer_download
 * (which waits) or after mc_backend_synchronize.
 *
 * Batched tokens: the leading dimension of activations is the token; each
 * token carries its own position (rope takes positions per token), so one
 * call serves many sequences at different positions.
 */
#ifndef MC_BACKEND_H
#define MC_BACKEND_H

#include "dtype.h"
#include "status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct mc_backend mc_backend;
typedef struct mc_buffer mc_buffer;

typedef enum { MC_DEVICE_CPU = 0, MC_DEVICE_GPU, MC_DEVICE_COUNT } mc_device_kind;

#define MC_TENSOR_MAX_DIMS 4

typedef struct {
    mc_buffer *buf;
    size_t offset;          /* bytes from the buffer's start to element 0 */
    mc_dtype dtype;         /* F32, F16, BF16, F8_E4M3, Q8_0, Q4_K, Q5_K, Q6_K, I32, I64 */
    int ndim;               /* 1..MC_TENSOR_MAX_DIMS */
    int64_t shape[MC_TENSOR_MAX_DIMS];
    int64_t row_stride;     /* elements between consecutive rows (>= the columns) */
    int transposed;         /* 2-D weights only (see above) */
    /* F8_E4M3 block scales (DeepSeek `weight_scale_inv`), set by
     * mc_tensor_set_scales: F32 scale[(r / block_rows) * scale_cols + c / block_cols]
     * multiplies stored element [r, c]; scale_buf NULL for unscaled weights. */
    mc_buffer *scale_buf;
    size_t scale_offset;
    int64_t scale_cols;
    int block_rows, block_cols;
    /* The rows' layout (kernels.h MC_MAT_PACK_*): 0 as stored; 1 (Q8_0),
     * 2 (Q6_K), 3 (Q4_K) or 4 (Q5_K) rows repacked for the CPU kernels at load (mc_mat_pack: a 2-D
     * weight, columns a multiple of 256, rows contiguous). Only the CPU
     * backend reads them; row views keep the layout, column views are refused. */
    int pack;
} mc_tensor;

/* ---- backends ---- */

/* The CPU backend: host memory, today's kernels (AVX-512 / AVX2 / portable,
 * chosen at run time, MC_KERNELS to force one) and the process-wide kernel
 * thread pool (MC_THREADS). Free with mc_backend_free. */
mc_status mc_backend_cpu_init(mc_backend **out, mc_err *err);
/* The CPU backend acting as a device, for tests on machines without a GPU:
 * the same kernels, but its memory is reached only through upload and
 * download (mc_buffer_host answers NULL, mc_buffer_wrap_host is refused,
 * repacked rows are refused), as a GPU's is, so a caller's device paths
 * (weights uploaded, collectives staged through host copies, results
 * downloaded) run and can be compared with the CPU backend's results; it
 * has no DeepSeek-V4 entries, so those ops take the front end's host round
 * trip (as the CUDA backend's do with MC_CUDA_V4=host; by default it runs
 * them on its own kernels). Named "cpu-device". */
mc_status mc_backend_cpu_device_init(mc_backend **out, mc_err *err);
/* The CUDA backend on device `device` (0-based; kernels/cuda/, docs/gpu.md):
 * device memory, one stream, its ops checked against the CPU's. Always
 * declared: MC_ERR_UNSUPPORTED "built without CUDA" in builds without it
 * (MC_HAVE_CUDA undefined), and "no CUDA device visible (...)" when the
 * driver shows none; MC_ERR_ARG for a device number past the visible ones.
 * Ops it does not implement yet answer MC_ERR_UNSUPPORTED naming the op.
 * Free with mc_backend_free. */
mc_status mc_backend_cuda_init(int device, mc_backend **out, mc_err *err);
void mc_backend_free(mc_backend *be);
const char *mc_backend_name(const mc_backend *be);
mc_device_kind mc_backend_kind(const mc_backend *be);
/* 1 when the backend's buffers are host memory (mc_buffer_host answers them
 * and the CPU kernels' repacked rows are read), 0 for device memory. */
int mc_backend_host_memory(const mc_backend *be);
/* Waits until every op issued so far has finished. On a backend that defers
 * its content checks (below), also returns the first refusal noted since
 * the last wait. */
mc_status mc_backend_synchronize(mc_backend *be, mc_err *err);
/* Contents only the device sees (rope's positions, the paged ops' sequence,
 * position, block and selection ids, moe_permute's ids, moe_unpermute's
 * slots, grouped_experts' offsets; the V4 ops' window starts, sel entries,
 * hash ids and table entries) are checked by the backend. With `on`
 * (1) an op that finds a fault returns the refusal itself, worded as the
 * CPU op's; on a GPU that costs a wait for the device in each such op. With
 * 0 the op returns at once (its kernels do nothing on a fault) and the
 * first refusal since the last wait is returned by the next call that waits
 * for the device (mc_buffer_download, mc_buffer_upload,
 * mc_backend_synchronize, and so also an op that waits inside: a product
 * loop that reads offsets back, the DeepSeek-V4 ops' host round trip),
 * naming the op and the token or pair: a step then waits once, at its
 * results. Returns the setting before the call.
 * The CPU backends always check at the op (their checks cost no wait):
 * they ignore the call and answer 1. The CUDA backend defers by default
 * (MC_CUDA_SYNC_CHECKS=1: at the op). */
int mc_backend_set_sync_checks(mc_backend *be, int on);
/* 1 when the backend checks contents at the op, 0 when it defers them (the
 * setting mc_backend_set_sync_checks changes). */
int mc_backend_sync_checks(const mc_backend *be);

/* ---- buffers ---- */

/* `bytes` (> 0) of device memory, uninitialized. CPU: 64-byte aligned, 2 MiB
 * aligned with transparent huge pages advised from 4 MiB up. */
mc_status mc_buffer_alloc(mc_backend *be, size_t bytes, mc_buffer **out, mc_err *err);
/* Borrows host memory [host, host + bytes) as a read-only buffer without a
 * copy (weights in a memory map). MC_ERR_UNSUPPORTED on backends whose
 * memory is not host memory: upload into an allocated buffer instead. */
mc_status mc_buffer_wrap_host(mc_backend *be, const void *host, size_t bytes, mc_buffer **out,
                              mc_err *err);
/* Frees an allocated buffer, or only the handle of a wrapped one. NULL is a no-op. */
void mc_buffer_free(mc_buffer *b);
size_t mc_buffer_size(const mc_buffer *b);
mc_backend *mc_buffer_backend(const mc_buffer *b);
int mc_buffer_read_only(const mc_buffer *b);
/* The buffer's memory as a host pointer when the backend's memory is host
 * memory (CPU), else NULL. */
void *mc_buffer_host(const mc_buffer *b);

/* Copies n bytes host -> buffer at byte offset off (refused for read-only buffers). */
mc_status mc_buffer_upload(mc_buffer *b, size_t off, const void *src, size_t n, mc_err *err);
/* Copies n bytes buffer -> host after the ops issued so far have finished. */
mc_status mc_buffer_download(const mc_buffer *b, size_t off, void *dst, size_t n, mc_err *err);
/* Sets n bytes at off to the byte `value`. */
mc_status mc_buffer_memset(mc_buffer *b, size_t off, int value, size_t n, mc_err *err);

/* ---- tensors ---- */

/* A contiguous tensor (row_stride = columns, rounded up to the block for
 * Q8_0 / Q4_K) at byte `offset` of buf; refused unless it fits in buf. */
mc_status mc_tensor_init(mc_tensor *t, mc_buffer *buf, size_t offset, mc_dtype dtype, int ndim,
                         const int64_t *shape, mc_err *err);
/* As mc_tensor_init with an explicit row stride (elements). */
mc_status mc_tensor_init_strided(mc_tensor *t, mc_buffer *buf, size_t offset, mc_dtype dtype,
                                 int ndim, const int64_t *shape, int64_t row_stride, mc_err *err);
/* Shorthand for a contiguous 2-D tensor. */
mc_status mc_tensor_init_2d(mc_tensor *t, mc_buffer *buf, size_t offset, mc_dtype dtype,
                            int64_t rows, int64_t cols, mc_err *err);
int64_t mc_tensor_rows(const mc_tensor *t); /* product of all but the last dimension */
int64_t mc_tensor_cols(const mc_tensor *t); /* the last dimension */
int64_t mc_tensor_nelems(const mc_tensor *t);
/* Bytes from t->offset to one past the last stored byte of t (0 if malformed). */
size_t mc_tensor_extent(const mc_tensor *t);
/* 1 if t describes a well-formed tensor that fits its buffer; else 0 and err names `what`. */
int mc_tensor_check(const mc_tensor *t, const char *what, mc_err *err);

/* Block scales of an F8_E4M3 2-D weight w [R, C]: `scale` is an F32 2-D
 * tensor [ceil(R / block_rows), >= ceil(C / block_cols)] in the same
 * backend (its row stride becomes scale_cols). */
mc_status mc_tensor_set_scales(mc_tensor *w, const mc_tensor *scale, int block_rows, int block_cols,
                               mc_err *err);
/* A 2-D weight W [out_features, in_features] whose bytes hold W^T
 * [in_features, out_features] row-major with `row_stride` (>= out_features)
 * elements between stored rows. Element types only. */
mc_status mc_tensor_init_transposed(mc_tensor *t, mc_buffer *buf, size_t offset, mc_dtype dtype,
                                    int64_t out_features, int64_t in_features, int64_t row_stride,
                                    mc_err *err);

/* Views (share the parent's bytes; out may be src). Rows [r0, r0 + n) of
 * the first dimension; columns [c0, c0 + n) of the last. Refused when out of
 * range, when a block-format column view does not start on a block, and
 * when an FP8 scaled view does not start on a scale block. */
mc_status mc_tensor_view_rows(const mc_tensor *src, int64_t r0, int64_t n, mc_tensor *out,
                              mc_err *err);
mc_status mc_tensor_view_cols(const mc_tensor *src, int64_t c0, int64_t n, mc_tensor *out,
                              mc_err *err);
/* The same bytes with another shape of the same element count; src must be
 * contiguous (row_stride = columns) unless the last dimension is unchanged. */
mc_status mc_tensor_reshape(const mc_tensor *src, int ndim, const int64_t *shape, mc_tensor *out,
                            mc_err *err);

/* Copies between packed host rows (mc_dtype_row_bytes(dtype, cols) bytes
 * each, in the tensor's dtype) and the tensor's rows, honouring its row
 * stride. Not for transposed tensors. */
mc_status mc_tensor_upload(mc_tensor *t, const void *host, mc_err *err);
mc_status mc_tensor_download(const mc_tensor *t, void *host, mc_err *err);

/* ---- ops ---- */

/* y = x W^T: y[t, o] = sum_i W[o, i] x[t, i].
 *   w (O, I) any weight format (F32, F16, BF16, F8_E4M3 with or without block
 *   scales, Q8_0, Q4_K; transposed storage for element types)
 *   x (n, I) F32, y (n, O) F32 (no alias). Q8_0 / Q4_K quantize x to 8 bits
 *   per block and use integer dot products (kernels.h). */
mc_status mc_op_matmul(mc_backend *be, const mc_tensor *w, const mc_tensor *x, mc_tensor *y,
                       mc_err *err);
/* y[r, :] = x[r, :] / rms(x[r, :]) * w[:] for every row; x, y (rows, d) F32,
 * w [d] F32 or NULL (no weight); y may alias x. */
mc_status mc_op_rmsnorm(mc_backend *be, const mc_tensor *x, const mc_tensor *w, float eps,
                        mc_tensor *y, mc_err *err);
/* Rotary embedding in place on x (n, d) or (n, heads, d) F32 (a column view
 * selects the rotated dims of each head): token t is at position pos[t]
 * (I32 [n]), its angles' cos / sin are rows pos[t] of cs, sn (P, d/2) F32
 * (attention factor included). interleaved: pairs (2i, 2i+1); otherwise
 * pairs (i, i + d/2) (rotate_half). A position past P is MC_ERR_ARG. */
mc_status mc_op_rope(mc_backend *be, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                     const mc_tensor *sn, int interleaved, mc_err *err);
/* y = silu(g) * u element-wise; g, u, y (rows, d) F32; y may alias g or u. */
mc_status mc_op_swiglu(mc_backend *be, const mc_tensor *g, const mc_tensor *u, mc_tensor *y,
                       mc_err *err);
/* y = a + b element-wise (residual add); same shapes, F32; y may alias a or b. */
mc_status mc_op_add(mc_backend *be, const mc_tensor *a, const mc_tensor *b, mc_tensor *y,
                    mc_err *err);
/* Softmax of every row; x, y (rows, d) F32; y may alias x. */
mc_status mc_op_softmax(mc_backend *be, const mc_tensor *x, mc_tensor *y, mc_err *err);
/* Embedding gather: y[t, :] = table[ids[t] - id0, :] dequantized, or zeros
 * when ids[t] - id0 is outside the table's rows (a tensor-parallel vocab
 * slice starting at id0). table (V, H) any weight format, not transposed;
 * ids I32 or I64 [n]; y (n, H) F32. */
mc_status mc_op_embed(mc_backend *be, const mc_tensor *table, const mc_tensor *ids, int64_t id0,
                      mc_tensor *y, mc_err *err);

/* ---- MoE block and LayerNorm ----
 *
 * One routed MoE layer on a device:
 *   router_topk        logits (n, E) -> ids (n, k), weights (n, k)
 *   moe_permute        x (n, H), ids -> xp (n*k, H) grouped by expert, slot (n, k), offsets
 *   grouped_experts    xp -> yp (n*k, H): every expert's SwiGLU FFN on its rows
 *   moe_unpermute_weighted   yp, slot, weights -> y (n, H)
 * (under expert parallelism the dispatch / combine all-to-all sits between
 * router and experts, and the receiver permutes what it got). */

/* How a router turns logits into the values it chooses by (choice) and the
 * values its weights come from (score s). bias (e_score_correction_bias) is
 * added to the choice only. */
typedef enum {
    MC_ROUTE_SOFTMAX = 0,   /* s = softmax of the row; choice = s + bias (Qwen3, Mistral) */
    MC_ROUTE_SIGMOID,       /* s = sigmoid(logit); choice = s + bias (DeepSeek noaux_tc) */
    MC_ROUTE_SQRTSOFTPLUS,  /* s = sqrt(softplus(logit)), softplus(x) = x past 20
                               (DeepSeek-V4); choice = s + bias */
    MC_ROUTE_LOGIT_SIGMOID, /* choice = logit + bias, s = sigmoid(logit) (Llama 4) */
    MC_ROUTE_COUNT
} mc_route_score;

typedef struct {
    mc_route_score score;
    int k;          /* experts per token, 1..E */
    int n_group;    /* group-limited choice when n_group > 1 and topk_group < n_group: */
    int topk_group; /* E / n_group (>= 2) experts per group; a group scores the sum of its two
                       best choice values; only the topk_group best groups' experts are chosen */
    int renorm;     /* weights /= (sum of the k chosen s, in double) + norm_eps */
    float norm_eps; /* the reference: 1e-20 for sigmoid / sqrtsoftplus, 0 for softmax */
    float scale;    /* routed_scaling_factor, multiplies every weight last (1: none) */
} mc_router_opts;

/* Router top-k of every token: ids[t, 0..k) are the k experts with the
 * largest choice values, in descending order, ties to the lower expert (and
 * group) index as the reference (tests/ref/ref_moe.c); weights[t, j] = s[ids[t, j]], renormalized
 * and scaled as opts says. logits (n, E) F32; bias [E] F32 or NULL; ids
 * (n, k) I32; weights (n, k) F32. Today's routers map as:
 *   topk router:  score softmax / sigmoid, renorm = norm_topk_prob, scale =
 *                 routed_scaling_factor, groups as the config;
 *   Llama 4:      LOGIT_SIGMOID, k = 1, no bias, no groups, renorm 0, scale 1;
 *   DeepSeek-V4:  SQRTSOFTPLUS (or SIGMOID), renorm 1, norm_eps 1e-20, no
 *                 groups; its reference breaks exact ties at the k-th place
 *                 as torch.topk does (the reference's mc_v4_route), which this op
 *                 does not reproduce; hash-routed layers need no router. */
mc_status mc_op_router_topk(mc_backend *be, const mc_tensor *logits, const mc_tensor *bias,
                            const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                            mc_err *err);

/* Groups token-expert pairs by expert: pair (t, j) (expert ids[t, j]) gets
 * permuted row slot[t, j]; rows are ordered by expert, and within an expert
 * by pair index t * k + j (stable, as tests/ref/ref_moe.c); xp[slot[t, j], :] =
 * x[t, :]; the rows of expert e are offsets[e] .. offsets[e + 1].
 * x (n, H) F32; ids (n, k) I32 with values in [0, E) (checked by the
 * backend); xp (n * k, H) F32; slot (n, k) I32; offsets I32 [E + 1]. */
mc_status mc_op_moe_permute(mc_backend *be, const mc_tensor *x, const mc_tensor *ids,
                            mc_tensor *xp, mc_tensor *slot, mc_tensor *offsets, mc_err *err);

/* y[t, :] = sum_j weights[t, j] * yp[slot[t, j], :], the products added in
 * ascending slot order (expert order, as tests/ref/ref_moe.c combines) from zero;
 * weights NULL: all 1. yp (m, H) F32; slot (n, k) I32 with values in
 * [0, m) (checked by the backend); weights (n, k) F32; y (n, H) F32. */
mc_status mc_op_moe_unpermute_weighted(mc_backend *be, const mc_tensor *yp, const mc_tensor *slot,
                                       const mc_tensor *weights, mc_tensor *y, mc_err *err);

typedef struct {
    /* F32 [m]: each row's router weight, or NULL. weight_input: the row's
     * input is scaled by it before the FFN (Llama 4); otherwise the FFN's
     * output is. NULL: y is unweighted (the unpermute weights it). */
    const mc_tensor *row_weight;
    int weight_input;
    /* > 0: DeepSeek-V4's clamp, silu(min(g, L)) * clamp(u, -L, L); 0: plain SwiGLU */
    float swiglu_limit;
} mc_experts_opts;

/* Every local expert of a layer in one call: for each e < n_experts, rows
 * offsets[e] .. offsets[e + 1] of x go through
 *   y = down_e (silu(gate_e x) * up_e x)
 * (an expert with no rows costs nothing). x (m, H) F32, y (m, H) F32 (no
 * alias); offsets I32 [n_experts + 1], 0 first, non-decreasing, m last
 * (checked by the backend); gate[e], up[e] (I_e, H) and down[e] (H, I_e) any
 * weight format, including views of fused or transposed slabs (Llama 4's
 * gate_up_proj [E, H, 2I]: mc_tensor_init_transposed then mc_tensor_view_rows).
 * opts NULL: unweighted, no clamp. Scratch is the backend's own. */
mc_status mc_op_grouped_experts(mc_backend *be, const mc_tensor *x, const mc_tensor *offsets,
                                int n_experts, const mc_tensor *gate, const mc_tensor *up,
                                const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                                mc_err *err);

/* y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * w + b (population
 * variance); x, y (rows, d) F32, w and b [d] F32 or NULL (1 / 0); y may
 * alias x. */
mc_status mc_op_layernorm(mc_backend *be, const mc_tensor *x, const mc_tensor *w,
                          const mc_tensor *b, float eps, mc_tensor *y, mc_err *err);

/* The first NaN or infinity of x (rows, d) F32 in row-major order: *row and
 * *col its place, or both -1 when every value is finite. Waits for the ops
 * issued before (the answer is on the host). The step executor checks the
 * residual stream with it after every block and names the weight at fault
 * (worker/nonfinite.h). */
mc_status mc_op_find_nonfinite(mc_backend *be, const mc_tensor *x, int64_t *row, int64_t *col,
                               mc_err *err);

/* A NaN or infinity noted by mc_op_note_nonfinite. */
typedef struct {
    int64_t tag;      /* the tag of the call that noted it; -1: nothing noted */
    int64_t row, col; /* its place in that call's x */
    float value;      /* NaN, +Inf or -Inf */
} mc_nonfinite_note;

/* mc_op_find_nonfinite without a wait: the first NaN or infinity of x
 * (rows, d) F32 in row-major order is noted with `tag` (>= 0, the caller's
 * name for the place of the check), unless a note is kept already (the
 * first in issue order wins) or a deferred content refusal is pending (the
 * refused op wrote nothing: what comes after may read stale rows, and the
 * refusal is the news); mc_backend_take_nonfinite hands it to the host. On a device the check is a kernel that leaves its note in device
 * memory, so a step can check its activations after every block and learn
 * of a fault once, at its end (the step executor does so when the backend
 * defers its content checks, mc_backend_sync_checks 0); the CPU backends
 * find it at once. */
mc_status mc_op_note_nonfinite(mc_backend *be, const mc_tensor *x, int64_t tag, mc_err *err);
/* The note of mc_op_note_nonfinite kept since the last take (note->tag -1
 * when none), then none is kept. Waits for the device when a note may have
 * been made since its last wait; a content refusal that wait meets is
 * returned as by mc_backend_synchronize (the note is still filled in). */
mc_status mc_backend_take_nonfinite(mc_backend *be, mc_nonfinite_note *note, mc_err *err);

/* Most candidates a row gives (mc_op_topk's k). */
#define MC_TOPK_MAX 64
/* The k largest values of each row of x (r, V) F32, best first, ties to the
 * lower column, NaN after every number: ids (r, k) I32 their columns plus
 * id0 (a vocabulary slice's first id), vals (r, k) F32 their values; and
 * unless lse is NULL, lse (r, 2) F32 each row's log-sum-exp, max + log(sum
 * of exp(x - max)) in double, as a pair hi = the double rounded to float,
 * lo = the rest rounded (hi + lo in double carries it to ~1e-14; the sum's
 * order is the backend's). 1 <= k <= MC_TOPK_MAX, k <= V; ids, vals and
 * lse overlap neither x nor each other. The step executor's candidates
 * (top_k plans: a greedy pick, or logprobs, without moving whole rows). */
mc_status mc_op_topk(mc_backend *be, const mc_tensor *x, int k, int64_t id0, mc_tensor *ids,
                     mc_tensor *vals, mc_tensor *lse, mc_err *err);

/* ---- paged KV cache and attention over it ----
 *
 * One layer's cache of one kind is an F32 tensor of pages (kv_pool.h's
 * blocks), dimension 0 the block id, dimension 1 the slot in the block:
 *   GQA K and V      (n_blocks, block_size, n_kv_heads, head_dim) each
 *   MLA latent       (n_blocks, block_size, kv_lora_rank)
 *   MLA rope key     (n_blocks, block_size, qk_rope_dim)
 *   V3.2 indexer key (n_blocks, block_size, index_head_dim)
 * Position p of a sequence lives in block table[p / block_size], slot
 * p % block_size. The n tokens of a batch (any mix of sequences, prefill
 * chunks and decode tokens) find their place through an mc_kv_index, which
 * the step executor builds from a step plan: block_table row i = blocks of
 * plan entry i, and for each new token its entry i and start_pos + j. */
typedef struct {
    mc_tensor block_table; /* I32 (n_seqs, max_blocks): block ids of each sequence; entries
                              past a sequence's table are never read */
    mc_tensor seq;         /* I32 [n]: token t's row of block_table */
    mc_tensor pos;         /* I32 [n]: token t's position in its sequence */
} mc_kv_index;

/* How scores become weights: w = softmax(scale * q_scale[t] * q . k) over
 * the positions token t sees, causal: [lo, pos[t]] of its own sequence,
 * lo = 0, or with chunk > 0 lo = pos[t] - pos[t] % chunk (Llama 4 chunked
 * layers). Per-token query factors the caller computes from positions go
 * in q_scale (Llama 4 NoPE temperature, Mistral 4 position scaling); the
 * final softmax scale, YaRN mscale included, in scale. Query / key norms
 * (Qwen3 q/k norms, Llama 4 QK L2 norm = mc_op_rmsnorm without weight) and
 * RoPE are applied by the caller before mc_op_kv_write and the attention. */
typedef struct {
    float scale;
    int chunk;                /* >= 0; 0 = the whole prefix */
    const mc_tensor *q_scale; /* NULL or F32 [n] */
    /* NULL, or (mc_op_mla_decode only) I32 (n, k): the positions token t
     * keeps (DeepSeek-V3.2 sparse attention, mc_op_indexer_topk's sel);
     * -1 = unused. Its softmax runs over the kept positions only; a position
     * kept twice counts once. Refused by the backend (naming the token)
     * when an entry is outside [lo, pos[t]] or a token keeps none. */
    const mc_tensor *sel;
} mc_attn_opts;

/* Writes token t's row(s) src[t] to the slot of position pos[t] of its
 * sequence: src (n, ..., W) F32 with as many elements per token as one slot
 * of pages (n_blocks, block_size, ..., W) F32, or BF16 where the backend
 * has kv_bf16 (each value rounded to nearest even; a column view of src is
 * fine: the MLA latent and rope key out of one fused projection). Refused
 * by the backend, before anything is written, when a token's seq is past the
 * table, its position past the table's capacity or its block id past
 * n_blocks (the message names the token and the field). Two tokens of one
 * call must not share a slot (a step plan with a block listed twice is
 * refused by mc_step_plan_check). */
mc_status mc_op_kv_write(mc_backend *be, const mc_kv_index *ix, const mc_tensor *src,
                         mc_tensor *pages, mc_err *err);

/* GQA attention over the paged cache: y[t, h] = sum_p w[t, h, p] v[p, g],
 * w from scores q[t, h] . k[p, g] (mc_attn_opts), g = h / (nh / nkv).
 *   q (n, nh, hd), k_pages (n_blocks, block_size, nkv, hd), v_pages
 *   (n_blocks, block_size, nkv, vd), y (n, nh, vd), all F32 (the pages
 *   BF16 too, both the same, where the backend has kv_bf16: the result is
 *   then the one over the pages widened to f32), nh a multiple of nkv; y
 *   overlaps nothing. Every position a token sees must have been
 *   written (the tokens of this step by an mc_op_kv_write issued before).
 * Content refusals as mc_op_kv_write, for every block a token reads. */
mc_status mc_op_attention(mc_backend *be, const mc_tensor *q, const mc_tensor *k_pages,
                          const mc_tensor *v_pages, const mc_kv_index *ix,
                          const mc_attn_opts *opt, mc_tensor *y, mc_err *err);

/* MLA in absorbed form over the latent cache (DeepSeek-V3 decode; prefill
 * tokens too): score[t, h, p] = q_lat[t, h] . latent[p] + q_pe[t, h] .
 * k_rope[p], weights as mc_attn_opts, y[t, h] = sum_p w[t, h, p] latent[p].
 *   q_lat (n, nh, kv_lora) = q_nope with W_kb absorbed, q_pe (n, nh, rd)
 *   rotated, lat_pages (n_blocks, block_size, kv_lora), pe_pages (n_blocks,
 *   block_size, rd), y (n, nh, kv_lora) F32 (the pages BF16, both, as
 *   mc_op_attention's), y overlapping nothing. The
 *   caller applies W_vb to y. Content refusals as mc_op_attention.
 *   opt->sel restricts each token to the positions it keeps (V3.2). */
mc_status mc_op_mla_decode(mc_backend *be, const mc_tensor *q_lat, const mc_tensor *q_pe,
                           const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                           const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                           mc_err *err);

/* The DeepSeek-V3.2 lightning indexer's scale factors (as tests/ref/ref_attention.c). */
typedef struct {
    int k;              /* positions kept per token, >= 1 (index_topk) */
    float score_scale;  /* multiplies iq . key before the ReLU: 1 / sqrt(index_head_dim) */
    float weight_scale; /* multiplies every head weight: 1 / sqrt(index_n_heads) */
} mc_indexer_opts;

/* The V3.2 indexer's top-k over the paged indexer-key cache. Token t sees
 * the positions p in [0, pos[t]] of its sequence and scores them as the
 * engine does, in F32 in this order:
 *   score(p) = sum over h = 0.. of relu((iq[t, h] . key[p]) * score_scale)
 *                                  * w[t, h] * weight_scale
 * sel[t, 0..m) are the m = min(k, pos[t] + 1) positions with the highest
 * scores, highest first, an exact tie to the lower position (the
 * reference's mc_topk_indices keeps the same set); sel[t, m..k) = -1 (fewer positions
 * visible than k). A NaN score's rank is unspecified.
 *   iq (n, ih, id) F32, rotated as the engine does (unscaled); w (n, ih) F32
 *   (the idx_weights projection); key_pages (n_blocks, block_size, id) F32
 *   (or BF16, as mc_op_attention's pages; layer-normed, rotated keys,
 *   written with mc_op_kv_write); sel (n, k)
 *   I32, overlapping nothing. Content refusals as mc_op_attention. */
mc_status mc_op_indexer_topk(mc_backend *be, const mc_tensor *iq, const mc_tensor *w,
                             const mc_tensor *key_pages, const mc_kv_index *ix,
                             const mc_indexer_opts *opt, mc_tensor *sel, mc_err *err);

/* ---- DeepSeek-V4 ----
 *
 * The pieces of DeepSeek-V4 (reference: tests/ref/ref_deepseek_v4*.c) that
 * no op above covers. Its paged caches (one layer's, all F32, dimension 0
 * the block id, 1 the slot):
 *   window K=V        (n_blocks, block_size, head_dim): every position's
 *                     normed, rotated K=V row (the window reads the last ones)
 *   compressor input  (n_blocks, block_size, W) twice: every position's raw
 *                     kv and gate projections, W = (1 + overlap) * cd
 *   compressed entry  (n_blocks, block_size, cd): entry w (window w) at the
 *                     slot of its last position (w + 1) * rate - 1
 * so a sequence's state is its block table and its length, whatever chunks
 * its positions arrived in. */

/* Hyper-connection mapping (mHC) of one site. */
typedef struct {
    int hc;     /* streams (hc_mult), 1..64 */
    int iters;  /* Sinkhorn iterations (column steps in all) */
    float eps;  /* hc_eps */
} mc_v4_hc_opts;

/* For every token t, with H = cols(y), x[t] = hc streams of H, m = mix[t]
 * (the site's fn applied to the RMS-normalized streams):
 *   pre_j  = sigmoid(m[j] * scale[0] + base[j]) + eps
 *   y[t]   = sum_j pre_j * x[t, j]                     (from zero, j ascending)
 * and, unless post and comb are NULL (the final HyperHead: mix (n, hc),
 * base [hc], scale [1]),
 *   post[t, j] = 2 * sigmoid(m[hc + j] * scale[1] + base[hc + j])
 *   comb[t]    = Sinkhorn of the (hc, hc) logits m[2hc + i] * scale[2] + base[2hc + i]
 *                (row softmax + eps, then alternating column / row
 *                normalization, as mc_v4_sinkhorn).
 * x (n, hc*H), mix (n, (2+hc)*hc) or (n, hc), y (n, H), post (n, hc), comb
 * (n, hc*hc), base, scale F32 vectors; outputs overlap nothing. */
mc_status mc_op_v4_hc_pre(mc_backend *be, const mc_tensor *x, const mc_tensor *mix,
                          const mc_tensor *base, const mc_tensor *scale, const mc_v4_hc_opts *o,
                          mc_tensor *post, mc_tensor *comb, mc_tensor *y, mc_err *err);

/* Writes a sub-layer's output y (n, H) into the streams x (n, hc*H), in place:
 *   x'[t, k] = post[t, k] * y[t] + sum_j comb[t, j, k] * x[t, j]   (j ascending)
 * post (n, hc), comb (n, hc*hc); x overlaps no input. */
mc_status mc_op_v4_hc_post(mc_backend *be, mc_tensor *x, const mc_tensor *post,
                           const mc_tensor *comb, const mc_tensor *y, mc_err *err);

typedef struct {
    int rate;    /* positions per window, >= 1 */
    int overlap; /* 1: CSA (entry w mixes window w - 1's first half and w's second) */
    float eps;   /* RMSNorm eps of the entry */
} mc_v4_comp_opts;

/* The compressor's entries completed by this step's tokens: for each token
 * t whose position p has (p + 1) % rate == 0, window w = (p + 1) / rate - 1
 * is pooled per channel c < cd:
 *   sources: (overlap, w > 0) positions (w-1)*rate + j, columns c, then
 *            positions w*rate + j, columns (overlap ? cd : 0) + c, j < rate
 *   e[c] = sum softmax(gate + ape[pos % rate]) * kv over the sources
 * then e = rmsnorm(e) * norm, its trailing rd = 2 * cols(cs) dims rotated
 * (interleaved pairs) at position w * rate (rows of cs, sn), and e is
 * written to out_pages at the slot of p. Other tokens write nothing.
 *   kv_pages, gate_pages (n_blocks, block_size, W) with every source
 *   position written (mc_op_kv_write, the step's own before); ape (rate, W);
 *   norm [cd]; cs, sn (P, rd / 2); out_pages (n_blocks, block_size, cd),
 *   W = (1 + overlap) * cd. Content refusals as mc_op_attention. */
mc_status mc_op_v4_compress(mc_backend *be, const mc_tensor *kv_pages,
                            const mc_tensor *gate_pages, const mc_tensor *ape,
                            const mc_tensor *norm, const mc_tensor *cs, const mc_tensor *sn,
                            const mc_kv_index *ix, const mc_v4_comp_opts *o, mc_tensor *out_pages,
                            mc_err *err);

typedef struct {
    int rate;          /* the entries' compress rate: token at p sees entries w < (p + 1) / rate */
    int k;             /* entries kept per token (index_topk), >= 1 */
    /* NULL, or I32 [n]: token t's score row length when longer than its visible
     * entries (the reference pads its row with -inf to the entries its cache
     * can hold, which decides the order among exact ties) */
    const mc_tensor *n_row;
    float score_scale; /* 1 / sqrt(index_head_dim) */
    float weight_scale; /* 1 / sqrt(index_n_heads), multiplies w first */
} mc_v4_index_opts;

/* V4's lightning indexer over compressed keys: token t (position p) scores
 * the nv = (p + 1) / rate visible entries w (key at the slot of
 * (w + 1) * rate - 1) as the worker does, in F32 in this order:
 *   score(w) = sum over h of relu(iq[t, h] . key[w]) * score_scale * (w[t, h] * weight_scale)
 * pads the row with -inf to max(n_row[t], nv), keeps the top min(k, row) with
 * the reference's tie order (mc_v4_select_topk: torch.topk on CPU), and
 * writes the visible ones to sel[t, 0..), -1 after.
 *   iq (n, ih, id), w (n, ih), key_pages (n_blocks, block_size, id) F32;
 *   sel (n, k) I32. Content refusals as mc_op_attention. */
mc_status mc_op_v4_index_topk(mc_backend *be, const mc_tensor *iq, const mc_tensor *w,
                              const mc_tensor *key_pages, const mc_kv_index *ix,
                              const mc_v4_index_opts *o, mc_tensor *sel, mc_err *err);

typedef struct {
    int window;  /* sliding window, query included, >= 1 */
    int rate;    /* compressed entries' rate (when comp_pages is given) */
    float scale; /* softmax scale */
} mc_v4_attn_opts;

/* V4 attention with one K=V head and per-head sink logits: token t at p,
 * head h scores the window positions [max(0, p - window + 1), p] of
 * kv_pages and the compressed entries of comp_pages it sees (sel NULL: all
 * w < (p + 1) / rate; else the entries sel[t, j] >= 0), each q . row *
 * scale; w = exp(score - mx) / (exp(sink[h] - mx) + sum exp(... - mx)),
 * y[t, h] = sum w * row (window first, then the entries in order).
 *   q (n, nh, hd), kv_pages and comp_pages (n_blocks, block_size, hd),
 *   sinks [nh], sel (n, k) I32 or NULL, y (n, nh, hd) overlapping nothing.
 * Content refusals as mc_op_attention; a sel entry outside [0, (p+1)/rate)
 * is refused naming the token. */
mc_status mc_op_v4_attention(mc_backend *be, const mc_tensor *q, const mc_tensor *kv_pages,
                             const mc_tensor *comp_pages, const mc_tensor *sinks,
                             const mc_tensor *sel, const mc_kv_index *ix,
                             const mc_v4_attn_opts *o, mc_tensor *y, mc_err *err);

/* Hash routing (V4's first layers): ids[t] = table[tok[t]] (k experts),
 * weights[t, j] = s(logits[t, ids[t, j]]) / (sum over j in F32 + norm_eps)
 * * scale, s as opts->score (SQRTSOFTPLUS or SIGMOID); opts->k = k, other
 * fields unused. logits (n, E) F32; tok I32 [n] (each < rows(table),
 * checked by the backend); table I32 (V, k) with values in [0, E) (checked
 * by the backend); ids (n, k) I32; weights (n, k) F32. */
mc_status mc_op_v4_hash_route(mc_backend *be, const mc_tensor *logits, const mc_tensor *tok,
                              const mc_tensor *table, const mc_router_opts *opts, mc_tensor *ids,
                              mc_tensor *weights, mc_err *err);

/* To come (next steps of the execution core):
 *   lm head = mc_op_matmul on a vocab slice.
 */

/* ---- probes and counters (bench) ---- */

/* Name of the code path in use ("amx", "avx512", "avx2", "scalar"; a GPU's arch),
 * and a one-line description of the device's features. */
const char *mc_backend_path(const mc_backend *be);
const char *mc_backend_features(const mc_backend *be);
/* Forces a code path by name (MC_ERR_ARG if unknown or unsupported here).
 * CPU: the path and the thread count are process-wide (kernels.h), shared
 * by every CPU backend; not to be changed while another thread runs an op. */
mc_status mc_backend_set_path(mc_backend *be, const char *name, mc_err *err);
/* Threads the ops use (CPU: the process-wide kernel pool; n < 1: default). */
int mc_backend_threads(const mc_backend *be);
void mc_backend_set_threads(mc_backend *be, int n);

typedef struct {
    uint64_t bytes_read; /* weight bytes read by matmul and embed */
    uint64_t macs;       /* multiply-adds done by matmul */
} mc_backend_counters;

/* Counters from zero, counting while on != 0. */
void mc_backend_count(mc_backend *be, int on);
void mc_backend_counters_get(const mc_backend *be, mc_backend_counters *out);
/* Best read-stream bandwidth over `bytes` of fresh memory in GB/s (1e9 B/s)
 * and peak FMA throughput of the current path in GFLOP/s, each measured for
 * about `seconds` with `threads` threads; negative if it cannot run. */
double mc_backend_probe_read_gbps(mc_backend *be, size_t bytes, int threads, double seconds);
double mc_backend_probe_fma_gflops(mc_backend *be, int threads, double seconds);
/* Peak int8 matrix throughput of the current path in GOP/s (CPU: AMX INT8
 * tiles), measured the same way; negative when the backend has none. */
double mc_backend_probe_int8_gops(mc_backend *be, int threads, double seconds);
/* Peak bf16 matrix throughput in GFLOP/s (CPU: AMX-BF16 tiles), the same
 * way; negative when the backend has none. */
double mc_backend_probe_bf16_gflops(mc_backend *be, int threads, double seconds);

/* ---- graphs ----
 *
 * The ops issued between mc_backend_capture_begin and mc_backend_capture_end
 * are not run: they become a graph that mc_graph_launch issues again, as
 * often as wanted, with the tensors (buffers, offsets, shapes, strides) and
 * scalar arguments of the capture, reading what those buffers hold at the
 * launch. On the CUDA backend a graph is a CUDA graph (one launch for a
 * whole decode step); other backends record the calls and issue them again
 * (no time saved: it holds the caller to the same rules, so the CPU acting
 * as a device tests a graph's caller without a GPU). The rules:
 *   - nothing that waits for the device or allocates may be called while
 *     capturing: uploads, downloads, mc_backend_synchronize,
 *     mc_backend_take_nonfinite, mc_op_find_nonfinite, mc_op_indexer_topk,
 *     the DeepSeek-V4 ops (whatever the backend: their host round trip
 *     waits, and the executor's V4 steps upload inside), buffer allocations, an op that
 *     waits inside (the CUDA experts' per-expert loop, a scratch that must
 *     grow); such a call fails (MC_ERR_UNSUPPORTED) and so does the capture's
 *     end (no graph; nothing captured has run);
 *   - the caller keeps every buffer a graph uses alive and in place, and
 *     frees the graph before them;
 *   - a backend's graph goes stale when the backend replaces memory it
 *     captured (its scratch grew for a larger op since): mc_graph_stale
 *     says so, and its launch is refused; capture it again. */
typedef struct mc_graph mc_graph;
mc_status mc_backend_capture_begin(mc_backend *be, mc_err *err);
/* *out the graph, or NULL with the first call that could not be captured
 * in err. */
mc_status mc_backend_capture_end(mc_backend *be, mc_graph **out, mc_err *err);
int mc_backend_capturing(const mc_backend *be);
/* 1: the backend's own graphs (a launch is one call), 0: recorded calls. */
int mc_backend_graphs_native(const mc_backend *be);
mc_status mc_graph_launch(mc_graph *g, mc_err *err);
int mc_graph_stale(const mc_graph *g);
/* Calls a recorded graph holds (0 for a backend's own). */
size_t mc_graph_ops(const mc_graph *g);
void mc_graph_free(mc_graph *g);

/* ---- implementing a backend ----
 *
 * A backend fills one mc_backend_i and calls mc_backend_new. The front end
 * has validated every argument (dtypes, shapes, ranges, aliasing, buffers of
 * this backend, outputs writable) before an op entry is called, so entries
 * only do math. Device memory is reached through mc_buffer_mem(t->buf) +
 * t->offset. Every entry is required except wrap_host (NULL: borrowing host
 * memory is unsupported). */
typedef struct {
    const char *name;
    mc_device_kind kind;
    void (*free)(void *ctx);
    /* memory: mem is the device address the buffer holds */
    mc_status (*buf_alloc)(void *ctx, size_t bytes, void **mem, mc_err *err);
    void (*buf_free)(void *ctx, void *mem, size_t bytes);
    mc_status (*wrap_host)(void *ctx, const void *host, size_t bytes, void **mem, mc_err *err);
    int host_memory; /* 1: mem is a host pointer (mc_buffer_host returns it) */
    /* 1: kv_write, attention, mla_decode and indexer_topk take BF16 pages
     * (a KV cache in bf16) as well as F32; 0: F32 pages only */
    int kv_bf16;
    mc_status (*upload)(void *ctx, void *mem, size_t off, const void *src, size_t n, mc_err *err);
    mc_status (*download)(void *ctx, const void *mem, size_t off, void *dst, size_t n,
                          mc_err *err);
    mc_status (*memset)(void *ctx, void *mem, size_t off, int value, size_t n, mc_err *err);
    mc_status (*synchronize)(void *ctx, mc_err *err);
    /* optional (NULL: checks at the op always): mc_backend_set_sync_checks,
     * mc_backend_sync_checks */
    int (*set_sync_checks)(void *ctx, int on);
    int (*sync_checks)(void *ctx);
    /* ops, arguments as the mc_op_* of the same name */
    mc_status (*matmul)(void *ctx, const mc_tensor *w, const mc_tensor *x, mc_tensor *y,
                        mc_err *err);
    mc_status (*rmsnorm)(void *ctx, const mc_tensor *x, const mc_tensor *w, float eps,
                         mc_tensor *y, mc_err *err);
    mc_status (*rope)(void *ctx, mc_tensor *x, const mc_tensor *pos, const mc_tensor *cs,
                      const mc_tensor *sn, int interleaved, mc_err *err);
    mc_status (*swiglu)(void *ctx, const mc_tensor *g, const mc_tensor *u, mc_tensor *y,
                        mc_err *err);
    mc_status (*add)(void *ctx, const mc_tensor *a, const mc_tensor *b, mc_tensor *y,
                     mc_err *err);
    mc_status (*softmax)(void *ctx, const mc_tensor *x, mc_tensor *y, mc_err *err);
    mc_status (*embed)(void *ctx, const mc_tensor *table, const mc_tensor *ids, int64_t id0,
                       mc_tensor *y, mc_err *err);
    mc_status (*kv_write)(void *ctx, const mc_kv_index *ix, const mc_tensor *src,
                          mc_tensor *pages, mc_err *err);
    mc_status (*attention)(void *ctx, const mc_tensor *q, const mc_tensor *k_pages,
                           const mc_tensor *v_pages, const mc_kv_index *ix,
                           const mc_attn_opts *opt, mc_tensor *y, mc_err *err);
    mc_status (*mla_decode)(void *ctx, const mc_tensor *q_lat, const mc_tensor *q_pe,
                            const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                            const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                            mc_err *err);
    mc_status (*indexer_topk)(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                              const mc_tensor *key_pages, const mc_kv_index *ix,
                              const mc_indexer_opts *opt, mc_tensor *sel, mc_err *err);
    /* MoE block and LayerNorm */
    mc_status (*router_topk)(void *ctx, const mc_tensor *logits, const mc_tensor *bias,
                             const mc_router_opts *opts, mc_tensor *ids, mc_tensor *weights,
                             mc_err *err);
    mc_status (*moe_permute)(void *ctx, const mc_tensor *x, const mc_tensor *ids, mc_tensor *xp,
                             mc_tensor *slot, mc_tensor *offsets, mc_err *err);
    mc_status (*moe_unpermute_weighted)(void *ctx, const mc_tensor *yp, const mc_tensor *slot,
                                        const mc_tensor *weights, mc_tensor *y, mc_err *err);
    mc_status (*grouped_experts)(void *ctx, const mc_tensor *x, const mc_tensor *offsets,
                                 int n_experts, const mc_tensor *gate, const mc_tensor *up,
                                 const mc_tensor *down, const mc_experts_opts *opts, mc_tensor *y,
                                 mc_err *err);
    mc_status (*layernorm)(void *ctx, const mc_tensor *x, const mc_tensor *w, const mc_tensor *b,
                           float eps, mc_tensor *y, mc_err *err);
    mc_status (*find_nonfinite)(void *ctx, const mc_tensor *x, int64_t *row, int64_t *col,
                                mc_err *err);
    /* required: mc_op_note_nonfinite, mc_backend_take_nonfinite */
    mc_status (*note_nonfinite)(void *ctx, const mc_tensor *x, int64_t tag, mc_err *err);
    mc_status (*take_nonfinite)(void *ctx, mc_nonfinite_note *note, mc_err *err);
    /* lse may be NULL */
    mc_status (*topk)(void *ctx, const mc_tensor *x, int k, int64_t id0, mc_tensor *ids,
                      mc_tensor *vals, mc_tensor *lse, mc_err *err);
    /* probes and counters */
    const char *(*path)(void *ctx);
    const char *(*features)(void *ctx);
    mc_status (*set_path)(void *ctx, const char *name, mc_err *err);
    int (*threads)(void *ctx);
    void (*set_threads)(void *ctx, int n);
    void (*count)(void *ctx, int on);
    void (*counters)(void *ctx, mc_backend_counters *out);
    double (*probe_read_gbps)(void *ctx, size_t bytes, int threads, double seconds);
    double (*probe_fma_gflops)(void *ctx, int threads, double seconds);
    double (*probe_int8_gops)(void *ctx, int threads, double seconds); /* optional */
    double (*probe_bf16_gflops)(void *ctx, int threads, double seconds); /* optional */
    /* DeepSeek-V4 (optional: NULL entries are refused with MC_ERR_UNSUPPORTED) */
    mc_status (*v4_hc_pre)(void *ctx, const mc_tensor *x, const mc_tensor *mix,
                           const mc_tensor *base, const mc_tensor *scale, const mc_v4_hc_opts *o,
                           mc_tensor *post, mc_tensor *comb, mc_tensor *y, mc_err *err);
    mc_status (*v4_hc_post)(void *ctx, mc_tensor *x, const mc_tensor *post, const mc_tensor *comb,
                            const mc_tensor *y, mc_err *err);
    mc_status (*v4_compress)(void *ctx, const mc_tensor *kv_pages, const mc_tensor *gate_pages,
                             const mc_tensor *ape, const mc_tensor *norm, const mc_tensor *cs,
                             const mc_tensor *sn, const mc_kv_index *ix, const mc_v4_comp_opts *o,
                             mc_tensor *out_pages, mc_err *err);
    mc_status (*v4_index_topk)(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                               const mc_tensor *key_pages, const mc_kv_index *ix,
                               const mc_v4_index_opts *o, mc_tensor *sel, mc_err *err);
    mc_status (*v4_attention)(void *ctx, const mc_tensor *q, const mc_tensor *kv_pages,
                              const mc_tensor *comp_pages, const mc_tensor *sinks,
                              const mc_tensor *sel, const mc_kv_index *ix,
                              const mc_v4_attn_opts *o, mc_tensor *y, mc_err *err);
    mc_status (*v4_hash_route)(void *ctx, const mc_tensor *logits, const mc_tensor *tok,
                               const mc_tensor *table, const mc_router_opts *opts, mc_tensor *ids,
                               mc_tensor *weights, mc_err *err);
    /* graphs of the backend's own (optional: NULL capture_begin, the front
     * end records the calls); capture_end gives the graph or fails */
    mc_status (*capture_begin)(void *ctx, mc_err *err);
    mc_status (*capture_end)(void *ctx, void **graph, mc_err *err);
    mc_status (*graph_launch)(void *ctx, void *graph, mc_err *err);
    int (*graph_stale)(void *ctx, const void *graph);
    void (*graph_free)(void *ctx, void *graph);
} mc_backend_i;

/* Wraps an implementation; ctx is freed by iface->free in mc_backend_free.
 * NULL when out of memory (ctx is then still the caller's). */
mc_backend *mc_backend_new(const mc_backend_i *iface, void *ctx);
/* The device address held by a buffer (for implementations, and for a data
 * plane that moves device memory itself: NCCL, or the MPI of the CPU acting
 * as a device; worker/parallel.h mc_plane). */
void *mc_buffer_mem(const mc_buffer *b);

#endif
