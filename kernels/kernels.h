/* kernels.h - the math the forward pass is built from (CPU).
 *
 * Weights stay in their stored dtype (F32, F16, BF16, F8_E4M3 with block
 * scales, and the block-quantized Q8_0 / Q4_K) and are never widened as a
 * whole. For element types the arithmetic is f32 (weights widened a vector
 * at a time); for Q8_0 / Q4_K the activations are quantized to 8 bits per
 * block and the products are integer dot products, as llama.cpp does
 * (Q8_0: blocks of 32 with an f32 scale; Q4_K: blocks of 256 with an f32
 * scale and per-32 sums for the mins).
 *
 * Paths: portable C ("scalar"), AVX2+FMA+F16C ("avx2"), AVX-512
 * F/BW/DQ/VL/VNNI ("avx512") and avx512 with AMX INT8 tiles for Q8_0 / Q4_K
 * products of many tokens ("amx": needs the kernel's grant of the tile
 * state), chosen at run time from what the CPU has;
 * MC_KERNELS=scalar|avx2|avx512|amx forces one (refused with a warning if
 * the CPU lacks it). Matrix products split their rows over a process-wide
 * thread pool (MC_THREADS, default: one thread per online CPU); a batch of
 * tokens reads each weight row once.
 */
#ifndef MC_KERNELS_H
#define MC_KERNELS_H

#include "dtype.h"
#include "status.h"

#include <stddef.h>

/* A 2-D weight view W[rows, cols] (y = W x: rows = outputs, cols = inputs). Borrowed.
 * Stored row-major: W[o, i] at data[o * row_stride + i]. With `transposed`
 * the storage holds W^T (Llama 4's fused experts, [in, out] row-major):
 * W[o, i] at data[i * row_stride + o]. For Q8_0 / Q4_K, row_stride is a
 * multiple of the block size, stored row o starts at byte
 * o * mc_dtype_row_bytes(dtype, row_stride), a row holds ceil(cols / block)
 * blocks (zero-padded past cols), and `transposed` is not allowed. */
typedef struct {
    mc_dtype dtype;
    int rows, cols;
    size_t row_stride;   /* elements between consecutive stored rows */
    int transposed;
    const void *data;
    /* FP8 block scales (DeepSeek `weight_scale_inv`): scale[(r/br)*scale_cols + c/bc]
     * multiplies the stored value; NULL for unscaled weights. */
    const float *scale;
    int block_rows, block_cols, scale_cols;
    /* The rows' layout: MC_MAT_PACK_NONE (0) as stored, or a kernel path's
     * repack made at load (mc_mat_pack). */
    int pack;
} mc_mat;

/* Q8_0 rows repacked for VNNI dot products (same bytes per row, so row
 * views and strides work unchanged): per row of nb blocks (nb a multiple
 * of 8), first the int8 values as unsigned bytes (w + 128), in groups of
 * 16 blocks (512 bytes) where byte 64k + 4j + c is value 4k + c of the
 * group's block j (k < 8, j < 16, c < 4), the last 8 blocks (when nb is
 * not a multiple of 16) likewise in 256 bytes (32k + 4j + c); then the nb
 * f16 scales in block order. A 512-bit vector of a group holds four values
 * of each of 16 blocks, so one vpdpbusd chain of 8 steps sums 16 blocks
 * at once, with one conversion and one FMA per 512 weights. */
enum {
    MC_MAT_PACK_NONE = 0,
    MC_MAT_PACK_Q8_0_X16 = 1,
    MC_MAT_PACK_Q6_K_X16 = 2,
    MC_MAT_PACK_Q4_K_X16 = 3,
    MC_MAT_PACK_Q5_K_X16 = 4
};
/* MC_MAT_PACK_Q4_K_X16: a row of nb Q4_K super-blocks keeps its 144 nb
 * bytes: first the nibbles, per pair of super-blocks (its 16 sub-blocks of
 * 32, lanes j = 8 x super-block + sub-block) four 64-byte vectors N_p whose
 * byte 4j + c holds value 8p + c of lane j's sub-block in its low nibble
 * and value 8p + 4 + c in its high one; an odd last super-block likewise in
 * four 32-byte vectors (8 lanes); then each super-block's 16-byte header as
 * stored (d, dmin, the 12 bytes of 6-bit scales and mins). */
/* MC_MAT_PACK_Q5_K_X16: a row of nb Q5_K super-blocks keeps its 176 nb
 * bytes: first the low nibbles exactly as MC_MAT_PACK_Q4_K_X16's (128 nb
 * bytes), then the fifth bits as masks, per pair of super-blocks 64 bytes:
 * eight little-endian 64-bit masks, mask 2p + h bit i the fifth bit of the
 * value whose nibble is the low (h 0) or high (h 1) one of byte i of the
 * pair's nibble vector N_p (an odd last super-block: eight 32-bit masks
 * over its 32-byte vectors); then each super-block's 16-byte header (d,
 * dmin, the 12 bytes of scales and mins) as stored. */
/* MC_MAT_PACK_Q6_K_X16: each Q6_K block keeps its 210 bytes and its scales
 * and d in place; its 256 six-bit values are reordered so that, with
 * V_k[4j + c] = value 16j + 4k + c (k < 4: four values of each of the 16
 * sub-blocks j), ql[i] holds the low nibbles of V_0[i] (bits 0-3) and
 * V_1[i] (bits 4-7), ql[64 + i] those of V_2[i] and V_3[i], and qh[i] the
 * high two bits of V_0..V_3[i] in bits 0-1, 2-3, 4-5, 6-7: a few shifts and
 * masks give four vectors whose vpdpbusd leave sub-block j's sum in lane j. */

/* Rewrites w's rows in place into the current kernel path's repacked
 * layout for its dtype when the path reads one (avx512: Q8_0, Q4_K, Q5_K and Q6_K
 * rows of a multiple of 256 columns, contiguous, not transposed) and sets w->pack;
 * returns 1 if it did, 0 if w stays as it is. w->data must be writable
 * memory the caller owns (a copy, not a file mapping). Products and
 * mc_mat_row_f32 give the same results on every path for a packed and an
 * unpacked w (paths without the layout unpack rows as they read them). */
int mc_mat_pack(mc_mat *w);
/* Whether the current path repacks matrices of dtype dt (mc_mat_pack). */
int mc_kernels_packs(mc_dtype dt);

/* Dequantizes (logical) row r of w into dst[w->cols]. */
void mc_mat_row_f32(const mc_mat *w, int r, float *dst);

/* y[t, o] = sum_i W[o, i] * x[t, i] for t < n; x rows ldx apart, y rows ldy apart.
 * Rows are split over the kernel thread pool when the product is large. */
void mc_matmul(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy);

/* One product of mc_matmul_many: y[t, o] = W[o, :] . x[t, :] for t < n. Borrowed. */
typedef struct {
    const mc_mat *w;
    const float *x;
    int n, ldx;
    float *y;
    int ldy;
} mc_matmul_item;

/* The count products of items as one parallel loop (one wait for the
 * threads instead of one per product; each thread streams whole runs of
 * rows of one matrix). Outputs are bitwise equal to calling mc_matmul on
 * each item in turn; no item's y may overlap another item's x or y. */
void mc_matmul_many(const mc_matmul_item *items, int count);

/* Bytes of weight storage one full product reads (data and FP8 scales). */
size_t mc_mat_weight_bytes(const mc_mat *w);

/* Quantizes src (any supported dtype, transposed or not) to target (Q8_0,
 * Q4_K, BF16, F16 or F32) as a new row-major matrix. *owned receives the
 * storage (free() it when dst is no longer used; dst->data points into it).
 * MC_ERR_ARG for an unsupported target; MC_ERR_FORMAT when a block format
 * (Q8_0, Q4_K) is asked for and src holds a NaN or an infinity, which its
 * block scales could not keep. */
mc_status mc_mat_quantize(const mc_mat *src, mc_dtype target, mc_mat *dst, void **owned,
                          mc_err *err);

/* Quantizes n matrices, src[i] to target[i] (as mc_mat_quantize), into ONE
 * buffer: *owned receives it (free() it when no dst is used any more), each
 * dst[i].data points into it, the matrices in order, each on a 64-byte
 * boundary. The buffer is 2 MiB aligned and asks for transparent huge pages
 * whatever the matrices' sizes (a layer's experts: one stream on huge
 * pages). On failure nothing is kept, dst is unspecified and *bad (when not
 * NULL) is the index of the matrix at fault (-1 if none): errors as
 * mc_mat_quantize. */
mc_status mc_mats_quantize(const mc_mat *const *src, const mc_dtype *target, int n, mc_mat *dst,
                           void **owned, int *bad, mc_err *err);

/* Copies n matrices into ONE buffer, each in its stored type, compacted
 * (rows row_bytes(cols) apart; a transposed matrix keeps its orientation,
 * its stored lines `rows` elements apart), each on a 64-byte boundary:
 * *owned receives the buffer (free() it when no dst is used any more),
 * dst[i] describes src[i]'s copy (FP8 block scales stay borrowed from
 * src). The buffer is 2 MiB aligned and asks for transparent huge pages:
 * weights used as a file stores them, read from memory instead of the
 * file's 4 KiB page-cache mapping. Copies run on the kernel thread pool
 * and are bitwise. MC_ERR_ARG for an empty matrix or a transposed block
 * matrix; MC_ERR_NOMEM. */
mc_status mc_mats_copy(const mc_mat *const *src, int n, mc_mat *dst, void **owned, mc_err *err);

/* out[i] = x[i] / rms(x) * w[i] (w NULL: no weight); out may alias x. */
void mc_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void mc_softmax(float *x, int n);
static inline float mc_silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
static inline float mc_sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }
float mc_dot(const float *a, const float *b, int n);
/* y += a * x */
void mc_axpy(float *y, float a, const float *x, int n);
/* out[j] = mc_dot(a[j], b, n) for j < m, bit for bit, with b read once for
 * all m. */
void mc_dot_many(const float *const *a, int m, const float *b, int n, float *out);
/* Weighted sums of S rows of n values for m outputs, the weights of row i
 * at a[i * m .. i * m + m): y[j] = 0, then mc_axpy(y[j], a[i * m + j],
 * rows[i], n) for i = 0 .. S-1 (skip_zero: skipped where the weight is 0),
 * bit for bit, the outputs kept in registers over the rows where the path
 * can (the avx512 path stores them between tiles of rows: no y[j] may
 * overlap a or a row). */
void mc_wsum_rows(float *const *y, int m, const float *a, const float *const *rows, int S, int n,
                  int skip_zero);
/* mc_dot_many and mc_wsum_rows over rows stored as bf16 (a KV cache in
 * bf16): bit for bit the f32 functions over the rows widened to f32 (every
 * bf16 is exact in f32). n <= MC_BF16_ROW_MAX. */
#define MC_BF16_ROW_MAX 4096
void mc_dot_many_bf16(const float *const *a, int m, const uint16_t *b, int n, float *out);
void mc_wsum_rows_bf16(float *const *y, int m, const float *a, const uint16_t *const *rows, int S,
                       int n, int skip_zero);
/* SwiGLU in place: g[i] = silu(g[i]) * u[i]. */
void mc_swiglu(float *g, const float *u, int n);

/* Router helpers shared by the engine's routing and the backends' router op,
 * so both pick the same experts. Index of the largest v[i] with ok[i], the
 * lowest index on ties (a NaN never beats an earlier value); -1 if none. */
int mc_argmax_masked(const float *v, const unsigned char *ok, int n);
/* Sum of the two largest of c[0..n) (n >= 2): a group's score in
 * group-limited routing. */
float mc_top2_sum(const float *c, int n);

/* Rotates the first `dim` entries of v by the angles whose cos/sin are
 * given per pair (dim/2 each). interleaved: pairs (2i, 2i+1); otherwise
 * pairs (i, i + dim/2) (rotate_half). */
void mc_rope_rotate(float *v, int dim, int interleaved, const float *cos, const float *sin);

/* ---- paths and threads ---- */

typedef enum {
    MC_KPATH_SCALAR = 0,
    MC_KPATH_AVX2,
    MC_KPATH_AVX512,
    MC_KPATH_AMX, /* avx512 + AMX tiles for Q8_0 / Q4_K (INT8) and BF16 (AMX-BF16) prefill */
    MC_KPATH_COUNT
} mc_kpath;

const char *mc_kpath_name(mc_kpath p);
/* Parses "scalar" / "avx2" / "avx512" / "amx"; -1 if unknown. */
int mc_kpath_from_name(const char *s, mc_kpath *out);
/* Whether this build has the path and this CPU can run it. */
int mc_kpath_supported(mc_kpath p);
/* The path in use: MC_KERNELS if set and supported, else the best supported. */
mc_kpath mc_kernels_path(void);
/* Forces a path for the whole process (tests, bench); -1 if unsupported.
 * Not to be called while another thread is inside a kernel. */
int mc_kernels_set_path(mc_kpath p);
/* CPU features as one line ("avx2 fma f16c avx512f ..."), for logs and bench. */
const char *mc_cpu_features(void);

/* Threads used by matrix products (the caller counts as one). The default
 * is MC_THREADS or the number of online CPUs; several ranks in one machine
 * should set it (MC_THREADS=1 for one rank per core). */
void mc_kernels_set_threads(int n);
int mc_kernels_threads(void);

/* Activations meeting BF16 weights (every mc_matmul / mc_matmul_many with
 * BF16 weights): 0 (default) as they are, f32, so the product is the exact
 * f32 dot product; 1 rounded to the nearest bf16 first (ties to even;
 * infinities and NaN kept), as llama.cpp and GPU engines compute BF16
 * layers. Every path then computes the exact products of the rounded
 * values (same results to the order of f32 additions); with AVX512-BF16
 * the avx512 path needs a third of the vdpbf16ps per weight in decode and
 * half the instructions per multiply-add in prefill. Process-wide, like the
 * path: not to be changed while another thread is inside a kernel. */
void mc_kernels_set_bf16_acts(int on);
int mc_kernels_bf16_acts(void);
/* x rounded to the nearest bf16 (ties to even), as a float; NaN stays NaN. */
float mc_round_bf16(float x);

/* ---- measurement (bench) ---- */

/* Counts weight bytes read by mc_matmul (mc_mat_weight_bytes per call) and
 * mc_mat_row_f32 (one row per call) from now on (on != 0), from zero. */
void mc_kernels_count_bytes(int on);
uint64_t mc_kernels_bytes_read(void);
/* Multiply-adds done by mc_matmul since counting was switched on. */
uint64_t mc_kernels_macs(void);

/* Read-only stream over a fresh buffer of `bytes` (use >> last-level cache)
 * with `threads` threads for about `seconds`; returns the best pass in GB/s
 * (1e9 bytes/s), or a negative value if the buffer cannot be allocated. */
double mc_probe_read_gbps(size_t bytes, int threads, double seconds);
/* Peak f32 fused multiply-add throughput of the current path with
 * `threads` threads, in GFLOP/s (2 flops per FMA lane). */
double mc_probe_fma_gflops(int threads, double seconds);
/* Peak int8 multiply-add throughput of the current path's quantized
 * products in GOP/s (2 operations per multiply-add), measured as
 * mc_probe_fma_gflops: `amx` its tiles, `avx512` vpdpbusd; -1 on paths
 * without int8 dot products. */
double mc_probe_int8_gops(int threads, double seconds);
/* Peak bf16 multiply-add throughput of the current path's bf16 products in
 * GFLOP/s (2 per multiply-add), as mc_probe_int8_gops: `amx` with AMX-BF16
 * its tiles (tdpbf16ps), else avx512 / amx with AVX512-BF16 vdpbf16ps (what
 * --activations bf16 runs); -1 when the path has neither. */
double mc_probe_bf16_gflops(int threads, double seconds);

#endif
