/* kern.h - internal interface between the kernel front end (ops.c) and the
 * per-instruction-set paths (ref.c, avx2.c, avx512.c, amx.c).
 *
 * Every path implements the same table. Matrix products arrive with rows
 * [r0, r1) of one thread's share; for Q8_0 / Q4_K weights the activations
 * were quantized once by the front end (mc_qact, identical for all paths,
 * so paths differ only in the order of float additions).
 */
#ifndef MC_KERN_H
#define MC_KERN_H

#include "kernels.h"

#include <stdint.h>
#include <string.h>

/* Activations quantized for block weights: n rows of kp int8 values
 * (kp = cols rounded up to the block, zero-padded past cols).
 *   Q8_0: d[t*(kp/32) + b] scales block b of row t.
 *   Q4_K: d[t*(kp/256) + b] scales super-block b; bsum[t*(kp/32) + j] is
 *         the sum of the int8 values of sub-block j (for the mins).
 *   Q6_K: d as Q4_K's; bsum16[t*(kp/16) + j] is the sum of the int8 values
 *         of the 16-value sub-block j (for the -32 offset); bsum is NULL. */
typedef struct {
    int n, kp;
    const int8_t *q;
    const float *d;
    const int16_t *bsum;
    const int16_t *bsum16;
    /* A path's own repack of the same values (mc_kops.pack_qact), NULL when
     * the path has none or declined this product. Borrowed. */
    const void *pack;
} mc_qact;

typedef struct {
    const char *name;
    /* n elements of element type dt at p -> f32 */
    void (*widen)(mc_dtype dt, const void *p, int n, float *dst);
    /* Non-transposed element-type weights (F32/F16/BF16/F8_E4M3 with or
     * without scales): y[t*ldy + o] = W[o,:] . x[t*ldx + :] for o in [r0, r1). */
    void (*rows_f)(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy, int r0,
                   int r1);
    /* Q8_0 / Q4_K weights against quantized activations. */
    void (*rows_q8_0)(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1);
    void (*rows_q4_k)(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1);
    void (*rows_q6_k)(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1);
    /* Q5_K: the activations of Q4_K (d per 256, bsum per 32) */
    void (*rows_q5_k)(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1);
    /* Optional (NULL in most paths): bytes of a repack of the quantized
     * activations of a product of w with n tokens (0: none wanted), and the
     * repack itself into dst (those bytes, 64-byte aligned, owned by the
     * front end), called once per product before the rows are split. */
    size_t (*pack_qact_bytes)(const mc_mat *w, int n);
    void (*pack_qact)(const mc_mat *w, const mc_qact *a, void *dst);
    /* Optional (NULL in most paths), the same for element-type weights:
     * bytes of a repack of the f32 activations of a product of w with n
     * tokens (0: none wanted); the repack of token tiles [tt0, tt1) of
     * MC_FPACK_TOKENS tokens each into dst (those bytes, 64-byte aligned,
     * owned by the front end; the tiles may be packed in parts on several
     * threads), before the rows are split; rows_f_packed is then called
     * instead of rows_f, with the repack and the activations. */
    size_t (*pack_f_bytes)(const mc_mat *w, int n);
    void (*pack_f)(const mc_mat *w, const float *x, int n, int ldx, void *dst, int tt0, int tt1);
    void (*rows_f_packed)(const mc_mat *w, const void *pack, const float *x, int n, int ldx,
                          float *y, int ldy, int r0, int r1);
    /* One activation row for block weights, as mc_quantize_act_row to the
     * bit (the products of every path read the same mc_qact). */
    void (*quantize_act)(const float *x, int cols, int kp, int blk, int8_t *q, float *d,
                         int16_t *bsum, int sub);
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float *y, float a, const float *x, int n);
    /* Optional (NULL: dot once per vector): out[j] = dot(a[j], b, n) for
     * j < m, each bit for bit as the path's dot (b read once for all m:
     * attention heads sharing a key row). */
    void (*dot_many)(const float *const *a, int m, const float *b, int n, float *out);
    /* Optional (NULL: the loop of mc_wsum_rows in ops.c): y[j] = sum over
     * i < S of a[i * m + j] * rows[i], as zeroing y[j] and calling axpy
     * for i = 0, 1, ... (skip_zero: not for a weight of 0), bit for bit. */
    void (*wsum_rows)(float *const *y, int m, const float *a, const float *const *rows, int S,
                      int n, int skip_zero);
    /* Optional (NULL: rows widened into a buffer, then dot_many / the
     * axpy loop): the same over bf16 rows (mc_dot_many_bf16), bit for bit. */
    void (*dot_many_bf16)(const float *const *a, int m, const uint16_t *b, int n, float *out);
    void (*wsum_rows_bf16)(float *const *y, int m, const float *a, const uint16_t *const *rows,
                           int S, int n, int skip_zero);
    void (*rmsnorm)(float *out, const float *x, const float *w, int n, float eps);
    void (*softmax)(float *x, int n);
    void (*rope)(float *v, int dim, int interleaved, const float *cos, const float *sin);
    void (*swiglu)(float *g, const float *u, int n);
    /* `iters` rounds of independent FMAs on registers; returns flops done */
    double (*fma_burn)(long iters);
    /* `iters` rounds of independent int8 products (amx: tiles; avx512:
     * vpdpbusd; else NULL); returns int8 operations done (2 per multiply-add) */
    double (*int8_burn)(long iters);
    /* the same with bf16 products: amx with AMX-BF16 its tiles, avx512 (and
     * amx without AMX-BF16) vdpbf16ps, none (0 flops) without AVX512-BF16;
     * else NULL; returns flops done (2 per multiply-add) */
    double (*bf16_burn)(long iters);
    /* sum of the 64-bit words of p[bytes] (bytes a multiple of 256): a read stream */
    uint64_t (*stream_sum)(const void *p, size_t bytes);
    /* 1: rows_q8_0 reads MC_MAT_PACK_Q8_0_X16 rows itself, and load-time
     * copies of Q8_0 matrices are repacked so (mc_mat_pack); 0: the front
     * end hands it unpacked copies of such rows. */
    int packs_q8_0;
    /* the same for Q6_K rows (MC_MAT_PACK_Q6_K_X16, rows_q6_k) and Q4_K
     * rows (MC_MAT_PACK_Q4_K_X16, rows_q4_k) */
    int packs_q6_k, packs_q4_k;
    /* and Q5_K rows (MC_MAT_PACK_Q5_K_X16, rows_q5_k) */
    int packs_q5_k;
} mc_kops;

/* Byte offset of value i (< 32) of block j in a MC_MAT_PACK_Q8_0_X16 row
 * of nb blocks (kernels.h); the scales follow at 32 * nb. */
static inline size_t mc_x16_at(int nb, int j, int i)
{
    int full = nb / 16 * 16;
    if (j < full)
        return (size_t)(j / 16) * 512 + (size_t)(i / 4) * 64 + (size_t)(j % 16) * 4 + (size_t)(i % 4);
    return (size_t)full * 32 + (size_t)(i / 4) * 32 + (size_t)(j - full) * 4 + (size_t)(i % 4);
}

/* One row of nb Q8_0 blocks (34 bytes each: f16 scale, 32 int8) into the
 * X16 layout and back (nb a multiple of 8; src and dst do not overlap). */
void mc_q8_0_x16_pack_row(const unsigned char *src, int nb, unsigned char *dst);
void mc_q8_0_x16_unpack_row(const unsigned char *src, int nb, unsigned char *dst);
/* The same for a row of nb Q6_K blocks (210 bytes each) and
 * MC_MAT_PACK_Q6_K_X16. */
/* The same for a row of nb Q5_K blocks (176 bytes each) and
 * MC_MAT_PACK_Q5_K_X16. */
void mc_q5_k_x16_pack_row(const unsigned char *src, int nb, unsigned char *dst);
void mc_q5_k_x16_unpack_row(const unsigned char *src, int nb, unsigned char *dst);
void mc_q6_k_x16_pack_row(const unsigned char *src, int nb, unsigned char *dst);
void mc_q6_k_x16_unpack_row(const unsigned char *src, int nb, unsigned char *dst);
/* ... and a row of nb Q4_K blocks (144 bytes each) and MC_MAT_PACK_Q4_K_X16. */
void mc_q4_k_x16_pack_row(const unsigned char *src, int nb, unsigned char *dst);
void mc_q4_k_x16_unpack_row(const unsigned char *src, int nb, unsigned char *dst);

extern const mc_kops mc_kops_scalar;
#ifdef MC_HAVE_AVX2
extern const mc_kops mc_kops_avx2;
#endif
#ifdef MC_HAVE_AVX512
extern const mc_kops mc_kops_avx512;
/* Q6_K products of the avx512 / avx2 tables (avx512_q6k.c, avx2_q6k.c). */
void mc_avx512_rows_q6_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1);
/* Its tokens' repack for MC_MAT_PACK_Q6_K_X16 rows (pack_qact of the avx512 table). */
size_t mc_avx512_q6_k_x16_act_bytes(const mc_mat *w, int n);
void mc_avx512_q6_k_x16_act(const mc_mat *w, const mc_qact *a, void *dst);
#endif
#ifdef MC_HAVE_AVX512BF16
/* BF16 rows [r0, r1) (not transposed, no scales) against one token with
 * vdpbf16ps, the token split exactly in three bf16 parts (avx512_bf16.c);
 * 0 when out of memory (nothing written). Only when mc_kern_bf16dp. */
int mc_avx512bf16_rows1(const mc_mat *w, const float *x, float *y, int r0, int r1);
/* With mc_kern_bf16_acts, the avx512 path's pack_f / rows_f_packed: tokens
 * [16 tt0, 16 tt1) (< n) as bf16 (their top halves; zeros past K), token t
 * at t * k32 values (k32: K rounded up to 32), and the rows read as stored
 * in 4 x 4 tiles of vdpbf16ps (avx512_bf16.c). */
void mc_avx512bf16_pack_tokens(const mc_mat *w, const float *x, int n, int ldx, void *dst,
                               int tt0, int tt1);
void mc_avx512bf16_rows_direct(const mc_mat *w, const void *pack, int n, float *y, int ldy,
                               int r0, int r1);
/* 12 independent vdpbf16ps chains (32 multiply-adds each), as the paths'
 * int8_burn; returns flops (2 per multiply-add), 0 without mc_kern_bf16dp
 * (the avx512 table's bf16_burn). */
double mc_avx512bf16_burn(long iters);
#endif
#ifdef MC_HAVE_AVX512VBMI
/* FP8 rows [r0, r1) with block scales (block_cols a multiple of 64, not
 * transposed) against one token, widened by table lookups (avx512_vbmi.c);
 * 0 when out of memory (nothing written). Only when mc_kern_vbmi. */
int mc_avx512vbmi_fp8_rows1(const mc_mat *w, const float *x, float *y, int r0, int r1);
/* The same against n tokens (x rows ldx apart, y rows ldy apart), each
 * step looked up once per 8 tokens. */
int mc_avx512vbmi_fp8_rows(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy,
                           int r0, int r1);
#endif
/* 1 when the CPU has AVX512-BF16 and this build its kernel (set with the path). */
extern int mc_kern_bf16dp;
/* 1 when the CPU has AVX512-VBMI and this build its kernel (MC_NO_VBMI=1: 0). */
extern int mc_kern_vbmi;
/* mc_kernels_set_bf16_acts: the activations of BF16 products arrive rounded
 * to bf16 (the front end rounds them for every path) */
extern int mc_kern_bf16_acts;
/* This thread's scratch (ops.c): at least `bytes`, 64-byte aligned, kept
 * and grown per thread (freed at thread exit); NULL when out of memory. */
void *mc_kern_scratch(size_t bytes);
#ifdef MC_HAVE_AVX2
void mc_avx2_rows_q6_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1);
#endif
#ifdef MC_HAVE_AMX
/* The avx512 table with AMX products for Q8_0 / Q4_K at many tokens; filled
 * by mc_amx_init. mc_amx_init asks the kernel once per process for the
 * tile data state (arch_prctl) and returns 1 when granted (the CPU and OS
 * support were checked by the caller), 0 when refused. */
extern mc_kops mc_kops_amx;
int mc_amx_init(void);
#endif

/* x[cols] -> q[kp] (zero past cols) with one scale per block of `blk`
 * values: d = amax / 127, q = x * (127 / amax) rounded to nearest even and
 * clamped to [-127, 127] (amax 0: d = 0, q = 0); with bsum, the sum of each
 * `sub` values of q. The reference of every path's quantize_act. */
void mc_quantize_act_row(const float *x, int cols, int kp, int blk, int8_t *q, float *d,
                         int16_t *bsum, int sub);

/* Tokens per tile of a pack_f repack. */
#define MC_FPACK_TOKENS 16

/* BF16 rows read as stored against the tokens split into even and odd
 * columns (the avx2 and avx512 paths' pack_f / rows_f_packed; avx512.c
 * says how). BF16 products of MC_BF16_DIRECT_MIN_TOKENS tokens or more
 * take it; on the 2-core Zen 4, BF16 GGUF of the 4-layer Qwen3-30B-A3B
 * shape, decode at batch 8 (the experts' products mostly 1-3 tokens,
 * attention and the LM head 8), avx512: 17 -> 4 took 72.9 / 78.7 to 99.4 /
 * 95.9 tok/s; 2 measured the same as 4. */
#define MC_BF16_DIRECT_MIN_TOKENS 4
/* Bytes of the repack of n tokens of w, columns padded to a multiple of kc
 * (the path's chunk: 16 or 32); 0 when w or n do not take the path. */
size_t mc_bf16_direct_bytes(const mc_mat *w, int n, int kc);
/* One path's tile: 4 stored BF16 rows (wr; the first R stored into y) x T
 * tokens of the repack (xp, kpad floats apart), y[t * ldy + r]. */
typedef void (*mc_bf16_tile_fn)(int T, const uint16_t *const *wr, int R, const float *xp,
                                size_t kpad, int K, float *y, int ldy);
/* Rows [r0, r1) x n tokens of the repack xp (columns padded to kpad) in
 * tiles of 4 rows x tt tokens, tokens blocked to keep their repack within
 * ~384 KiB of L2. */
void mc_bf16_direct_rows(const mc_mat *w, const float *xp, size_t kpad, int n, int tt,
                         mc_bf16_tile_fn tile, float *y, int ldy, int r0, int r1);

const mc_kops *mc_kops_current(void);
/* The process-wide pool of mc_kernels_threads() threads, NULL when 1. */
struct mc_pool *mc_kernels_pool(void);

/* Exact f16 -> f32 by bit manipulation (denormals, inf, NaN). */
static inline float mc_kf16(uint16_t h)
{
    const uint32_t shifted_exp = 0x7c00u << 13;
    uint32_t o = ((uint32_t)h & 0x7fffu) << 13;
    uint32_t exp = shifted_exp & o;
    float f;
    o += (uint32_t)(127 - 15) << 23;
    if (exp == shifted_exp) {
        o += (uint32_t)(128 - 16) << 23;
    } else if (exp == 0) {
        o += 1u << 23;
        memcpy(&f, &o, sizeof f);
        f -= 6.103515625e-05f;
        memcpy(&o, &f, sizeof o);
    }
    o |= ((uint32_t)h & 0x8000u) << 16;
    memcpy(&f, &o, sizeof f);
    return f;
}

/* Value rows per tile of the paths' wsum_rows (attention's weighted sums):
 * about 16 KiB of them, so that a tile and the next one (asked into L1
 * while the tile is summed) stay in L1; the tile three ahead is asked
 * into L2 at the same time. */
static inline int mc_wsum_tile(int n)
{
    int t = (16 << 10) / (n * (int)sizeof(float));
    return t < 4 ? 4 : t > 64 ? 64 : t;
}

/* Decode (one token) streams each thread's rows once; a software prefetch
 * this many bytes ahead in the row stream measured +20-45% of read
 * bandwidth per thread here (BF16, Q8_0, Q4_K; 4 KiB: less, 16 KiB: less)
 * over the hardware prefetchers alone. Prefetches never fault. */
#define PF_BYTES 8192
/* The AVX512-BF16 decode and the one-token kernel of Q6_K rows repacked
 * at load prefetch their row stream this many bytes ahead into L2
 * (prefetcht1). On a 2-core Zen 4 (AMD EPYC), one thread reading a 622 MB
 * matrix from memory: BF16 14-20 -> 18-21 GB/s (2 threads 20-33 -> 25-36;
 * prefetcht0 at 8 KiB 13-19 / 23), Q6_K 17-18.5 -> 20-23 GB/s (docs/kernels.md).
 * (Prefetching a whole row at its start instead measured slower for BF16:
 * 64 prefetches in a burst.) The BF16 rows ask for each line a second time
 * at half the distance: a prefetch the full miss buffers dropped is sent
 * again (the LM-head shape at 2 threads, alternated in one process with
 * the single prefetch, 2026-12-02: 28.6-30.5 -> 31.7-32.4 GB/s where a
 * stream over the same bytes read 31.4-32.7, and 38.7 -> 46.6 where it read
 * 49.8; at 16 KiB instead of 4 a little less). Q6_K measured no gain from
 * it. */
#define PF_L2_BYTES 8192
/* The repacked Q8_0 and Q4_K decode rows (avx512) prefetch into L2 at the
 * start of each row all of its bytes this far ahead (Q8_0: 2176 bytes a
 * row of 2048 columns, Q4_K: 1152). A product of 151936 x 2048 alternated
 * 15 times in one process at 2 threads against the same matrix without it
 * and a read-only stream over the same bytes, median GB/s (2026-12-02, the
 * 2-core Zen 4): Q8_0 25.1-26.5 -> 30.8-32.0 (the stream 32.5-33.4), Q4_K
 * 23.6-24.9 -> 29.6-31.6 (the stream 31.5-32.3). Q8_0 at 8 KiB 3-5% less,
 * Q4_K at 4 KiB 3-7% less, 2 KiB slower than none; prefetcht0 no gain;
 * the in-loop prefetch of the other rows found none here before. Q8_0
 * then asks for the row again at twice the distance: where the stream read
 * 48-56 GB/s (this VM's fast phase) 36.3-41.9 -> 43.1-49.5 GB/s, for the
 * LM head and for 96 expert-sized matrices (768 x 2048) alike; where it
 * read ~32 the same. Q4_K measured no gain from the second one. */
#define PF_Q8_0_ROW 4096
#define PF_Q4_K_ROW 8192

/* Byte address of stored row r of a row-major matrix. */
static inline const unsigned char *mc_row_ptr(const mc_mat *w, int r)
{
    return (const unsigned char *)w->data + (size_t)r * mc_dtype_row_bytes(w->dtype, (int64_t)w->row_stride);
}

/* The 8 scales and 8 mins of a Q4_K block as bytes (llama.cpp's kmask unpacking):
 * out[0..7] = scales, out[8..15] = mins. */
static inline void mc_q4_k_unpack(const uint8_t *scales, uint8_t out[16])
{
    uint32_t u[4];
    memcpy(u, scales, 12);
    const uint32_t km1 = 0x3f3f3f3f, km2 = 0x0f0f0f0f, km3 = 0x03030303;
    u[3] = ((u[2] >> 4) & km2) | (((u[1] >> 6) & km3) << 4);
    const uint32_t aux = u[1] & km1;
    u[1] = (u[2] & km2) | (((u[0] >> 6) & km3) << 4);
    u[2] = aux;
    u[0] &= km1;
    memcpy(out, u, 16);
}

#endif
