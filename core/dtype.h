/* dtype.h - element types as stored in checkpoints, and scalar conversions.
 *
 * BF16: upper 16 bits of an IEEE f32. F16: IEEE half. F8_E4M3: the "fn"
 * variant used by DeepSeek/NVIDIA (1 sign, 4 exponent bits with bias 7,
 * 3 mantissa bits, no infinities, S.1111.111 is NaN, max finite 448).
 *
 * Block-quantized weight formats, byte for byte the blocks of llama.cpp's
 * GGUF (ggml-common.h); a matrix row is a sequence of whole blocks:
 *
 *   Q8_0  32 weights in 34 bytes:  f16 d | int8 qs[32]          w = d * q
 *   Q4_K 256 weights in 144 bytes: f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
 *         8 sub-blocks of 32 with 6-bit scale sc_j and min m_j packed in
 *         scales[] (see mc_q4_k_scale_min); w = d*sc_j*q - dmin*m_j, q in 0..15.
 *         qs[32*c + l] holds element 64*c + l in its low nibble and element
 *         64*c + 32 + l in its high nibble (c = 0..3).
 *   Q6_K 256 weights in 210 bytes: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
 *         16 sub-blocks of 16 with an int8 scale; weight e (h = e / 128,
 *         g = (e % 128) / 32, l = e % 32) is q = (nibble g / 2 of
 *         ql[64h + 32(g & 1) + l]) | ((qh[32h + l] >> 2g) & 3) << 4, 0..63,
 *         and w = d * scales[e / 16] * (q - 32). Read from GGUF files only
 *         (llama.cpp's Q4_K_M keeps some matrices in it); never a --weights
 *         target.
 *   Q5_K 256 weights in 176 bytes: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
 *         Q4_K's scales, mins and nibbles, plus a fifth bit per weight:
 *         element 64*c + l takes bit 2c of qh[l] and element 64*c + 32 + l
 *         bit 2c + 1 (c = 0..3, l < 32) as 16; q in 0..31. Read from GGUF
 *         files only (llama.cpp's Q5_K_S / Q5_K_M); never a --weights target.
 *
 * A row of n weights takes ceil(n / block) blocks (mc_dtype_row_bytes); when
 * n is not a multiple of the block the tail is quantized as zeros, so rows
 * whose length is a multiple of the block (every real model) match GGUF's
 * bytes exactly. These formats have no per-element size (mc_dtype_size is 0)
 * and are never named by a safetensors header (mc_dtype_from_name refuses
 * them): their values lie past MC_DT_COUNT.
 */
#ifndef MC_DTYPE_H
#define MC_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    MC_DT_F32 = 0,
    MC_DT_F16,
    MC_DT_BF16,
    MC_DT_F8_E4M3,
    MC_DT_I64,
    MC_DT_I32,
    MC_DT_U8,
    MC_DT_COUNT, /* element types a safetensors header may name */
    /* block-quantized weight formats (not safetensors element types) */
    MC_DT_Q8_0 = 32,
    MC_DT_Q4_K = 33,
    MC_DT_Q6_K = 34,
    MC_DT_Q5_K = 35,
} mc_dtype;

#define MC_QK8_0 32 /* weights per Q8_0 block */
#define MC_QK_K 256 /* weights per Q4_K super-block */

typedef struct {
    uint16_t d; /* f16 scale */
    int8_t qs[MC_QK8_0];
} mc_block_q8_0;

typedef struct {
    uint16_t d, dmin;     /* f16 super-block scales of the sub-block scales and mins */
    uint8_t scales[12];   /* 8 x (6-bit scale, 6-bit min) */
    uint8_t qs[MC_QK_K / 2];
} mc_block_q4_k;

typedef struct {
    uint8_t ql[MC_QK_K / 2];  /* low 4 bits */
    uint8_t qh[MC_QK_K / 4];  /* high 2 bits */
    int8_t scales[MC_QK_K / 16];
    uint16_t d;               /* f16 super-block scale */
} mc_block_q6_k;

typedef struct {
    uint16_t d, dmin;         /* as Q4_K's */
    uint8_t scales[12];       /* as Q4_K's */
    uint8_t qh[MC_QK_K / 8];  /* the fifth bits */
    uint8_t qs[MC_QK_K / 2];  /* the low nibbles, as Q4_K's */
} mc_block_q5_k;

_Static_assert(sizeof(mc_block_q5_k) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(mc_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(mc_block_q6_k) == 210, "Q6_K block is 210 bytes");
_Static_assert(sizeof(mc_block_q4_k) == 144, "Q4_K block is 144 bytes");

/* Size of one element in bytes; 0 for block formats and unknown values. */
size_t mc_dtype_size(mc_dtype dt);
/* safetensors spelling ("BF16", "F8_E4M3", ...); "Q8_0", "Q4_K", "Q5_K", "Q6_K" for the
 * block formats. */
const char *mc_dtype_name(mc_dtype dt);
/* Parses a safetensors dtype string; returns -1 if unknown (and for block formats). */
int mc_dtype_from_name(const char *s, mc_dtype *out);

/* True for Q8_0 / Q4_K / Q5_K / Q6_K. */
static inline int mc_dtype_is_block(mc_dtype dt)
{
    return dt == MC_DT_Q8_0 || dt == MC_DT_Q4_K || dt == MC_DT_Q5_K || dt == MC_DT_Q6_K;
}
/* Elements per block (1 for element types, 0 if unknown) and bytes per
 * block. Inline: decode works out a row's address per row. */
static inline int mc_dtype_block_elems(mc_dtype dt)
{
    if (dt == MC_DT_Q8_0)
        return MC_QK8_0;
    if (dt == MC_DT_Q4_K || dt == MC_DT_Q5_K || dt == MC_DT_Q6_K)
        return MC_QK_K;
    return mc_dtype_size(dt) ? 1 : 0;
}
static inline size_t mc_dtype_block_bytes(mc_dtype dt)
{
    if (dt == MC_DT_Q8_0)
        return sizeof(mc_block_q8_0);
    if (dt == MC_DT_Q4_K)
        return sizeof(mc_block_q4_k);
    if (dt == MC_DT_Q5_K)
        return sizeof(mc_block_q5_k);
    if (dt == MC_DT_Q6_K)
        return sizeof(mc_block_q6_k);
    return mc_dtype_size(dt);
}
/* Exact bytes of one stored row of n elements: n * size, or whole blocks
 * (ceil(n / block) * block bytes). 0 for an unknown dtype or n < 0. */
static inline size_t mc_dtype_row_bytes(mc_dtype dt, int64_t n)
{
    int be = mc_dtype_block_elems(dt);
    if (be == 0 || n < 0)
        return 0;
    return (size_t)((n + be - 1) / be) * mc_dtype_block_bytes(dt);
}
/* Parses a --weights value: "q8_0", "q4_k", "bf16", "f16", "f32" (any case). -1 if unknown. */
int mc_weight_format_from_name(const char *s, mc_dtype *out);

/* The format a matrix with rows of `cols` weights takes when `target` is
 * asked for (the rule `plan` counts with, as llama.cpp does): Q4_K needs
 * cols % 256 == 0, else Q8_0; Q8_0 needs cols % 32 == 0, else the matrix
 * keeps its stored type (returned as MC_DT_COUNT). Other targets as given. */
mc_dtype mc_quant_format_for(mc_dtype target, int64_t cols);

/* Reference quantizers (llama.cpp's quantize_row_*_ref, bit for bit on
 * whole blocks) and dequantizers for one row of n elements; dst holds
 * mc_dtype_row_bytes(dt, n) bytes. */
void mc_quantize_row_q8_0(const float *x, void *dst, int64_t n);
void mc_quantize_row_q4_k(const float *x, void *dst, int64_t n);
void mc_dequantize_row_q8_0(const void *src, float *y, int64_t n);
void mc_dequantize_row_q4_k(const void *src, float *y, int64_t n);
/* Q6_K: rounded as llama.cpp's dequantize_row_q6_K, (d * scale) * (q - 32)
 * in f32, so the floats are the same bit for bit. */
void mc_dequantize_row_q6_k(const void *src, float *y, int64_t n);
/* Q5_K: rounded as llama.cpp's dequantize_row_q5_K, (d * sc) * q - (dmin * m)
 * in f32. */
void mc_dequantize_row_q5_k(const void *src, float *y, int64_t n);
/* Dispatch on dt (quantize: Q8_0 or Q4_K; dequantize: also Q5_K, Q6_K); returns
 * -1 for other dtypes. */
int mc_quantize_row(mc_dtype dt, const float *x, void *dst, int64_t n);
int mc_dequantize_row(mc_dtype dt, const void *src, float *y, int64_t n);

/* Sub-block j (0..7) scale and min of a Q4_K block's packed scales[12]. */
static inline void mc_q4_k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static inline float mc_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round-to-nearest-even, NaN preserved. */
static inline uint16_t mc_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mc_f16_to_f32(uint16_t h);
uint16_t mc_f32_to_f16(float f);

/* Exact for all 256 codes (bit manipulation; normal codes map directly onto
 * the f32 exponent, subnormals are man * 2^-9). */
static inline float mc_fp8_e4m3_to_f32(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t exp = (v >> 3) & 0xfu, man = v & 0x7u;
    float r;
    if (exp == 0) {
        r = (float)man * (1.0f / 512.0f);
        uint32_t u;
        memcpy(&u, &r, sizeof u);
        u |= sign;
        memcpy(&r, &u, sizeof r);
    } else if (exp == 0xf && man == 0x7) {
        uint32_t u = sign | 0x7fc00000u;
        memcpy(&r, &u, sizeof r);
    } else {
        uint32_t u = sign | ((exp + 120u) << 23) | (man << 20);
        memcpy(&r, &u, sizeof r);
    }
    return r;
}
float mc_fp8_e4m3_decode(uint8_t v); /* arithmetic reference, for tests */
uint8_t mc_f32_to_fp8_e4m3(float f); /* round-to-nearest-even, saturating to +-448 */

#endif
