/* cpu/avx512_vbmi.c - FP8 (E4M3) weights with block scales against one
 * token (decode of DeepSeek's checkpoints as published) and against several
 * (avx512_fp8_rows.h's loop with this lookup), compiled with the
 * avx512 path's flags plus -mavx512vbmi and called by that path's
 * fp8_scaled_rows1 (avx512.c) when the CPU has AVX512-VBMI (mc_kern_vbmi).
 *
 * Every E4M3 value is exact in bf16 (8 exponent bits hold E4M3's range,
 * subnormal codes included), so a code's 7 magnitude bits index a table of
 * the bf16's two bytes: two vpermt2b (64 codes in, 64 bytes out, 128-entry
 * tables in two registers each) give the high and low bytes, one bit select
 * puts the sign back, two in-lane unpacks pair them into 16-bit words, and
 * a shift or a mask makes each word the f32 it is the top of. The widening
 * of fp8_scaled_rows1 (f16 bits, cross-lane widening to 16-bit lanes, four
 * vcvtph2ps per 64) took about twice the operations. The unpacks leave the
 * 64 weights of a step in a fixed order of their own; the token is put in
 * that order once per call and multiplied by the scales of the current row
 * block (once per 128 rows), so each weight meets its scaled token value in
 * one FMA, in one of four chains: each product is w * (x * s) where the
 * scalar path has (w * s) * x (one rounding either way), summed in another
 * order. The table's entry for 0x7f is a NaN, so a row holding a NaN code
 * (0x7f / 0xff) sums to NaN, as the scalar path's does. */
#include "kern.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Slot s of a 64-weight step holds column fp8_col[s] of the step. Slots
 * 16q .. 16q + 15 are the q-th f32 vector: q = 0 the even words of the low
 * unpack (128-bit lane L, dword d: column 16L + 2d), q = 1 their odd words,
 * q = 2 and 3 the same for the high unpack (columns 16L + 8 + 2d, + 1). */
static int fp8_col(int s)
{
    int q = s / 16, lane = (s % 16) / 4, d = s % 4;
    return 16 * lane + 8 * (q / 2) + 2 * d + (q % 2);
}

/* The bf16 bytes of magnitude codes 0..127; 0x7f (NaN) as a quiet NaN, so
 * a row that holds one sums to NaN as the scalar path's does. Built once. */
static unsigned char fp8_hi[128], fp8_lo[128];
static pthread_once_t fp8_tab_once = PTHREAD_ONCE_INIT;

static void fp8_tab_init(void)
{
    for (int c = 0; c < 128; c++) {
        float f = c == 0x7f ? NAN : mc_fp8_e4m3_to_f32((unsigned char)c);
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        fp8_hi[c] = (unsigned char)(u >> 24);
        fp8_lo[c] = (unsigned char)(u >> 16);
    }
}

int mc_avx512vbmi_fp8_rows1(const mc_mat *w, const float *x, float *y, int r0, int r1)
{
    int K = w->cols, bc = w->block_cols, K64 = K / 64 * 64;
    float *xp = aligned_alloc(64, 2 * (size_t)K64 * sizeof *xp + 64);
    if (!xp)
        return 0; /* the caller's widening loop needs no memory */
    float *xs = xp + K64; /* xp times the current row block's scales */
    int col[64];
    for (int s = 0; s < 64; s++)
        col[s] = fp8_col(s);
    for (int k = 0; k < K64; k += 64)
        for (int s = 0; s < 64; s++)
            xp[k + s] = x[k + col[s]];
    pthread_once(&fp8_tab_once, fp8_tab_init);
    const __m512i h0 = _mm512_loadu_si512((const void *)fp8_hi), h1 = _mm512_loadu_si512((const void *)(fp8_hi + 64));
    const __m512i l0 = _mm512_loadu_si512((const void *)fp8_lo), l1 = _mm512_loadu_si512((const void *)(fp8_lo + 64));
    const __m512i m80 = _mm512_set1_epi8((char)0x80), top = _mm512_set1_epi32((int)0xffff0000u);
    int64_t rb = -1;
    for (int o = r0; o < r1; o++) {
        const unsigned char *p = (const unsigned char *)w->data + (size_t)o * w->row_stride;
        const float *srow = w->scale + (size_t)(o / w->block_rows) * (size_t)w->scale_cols;
        if (o / w->block_rows != rb) { /* a new row block: its scales onto the token */
            rb = o / w->block_rows;
            for (int k = 0; k < K64; k += 64) {
                __m512 sc = _mm512_set1_ps(srow[k / bc]);
                for (int s = 0; s < 64; s += 16)
                    _mm512_store_ps(xs + k + s, _mm512_mul_ps(_mm512_load_ps(xp + k + s), sc));
            }
        }
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < K64; k += 64) {
            /* the row stream into L2, each line asked for twice (kern.h, PF_L2_BYTES) */
            _mm_prefetch((const char *)p + k + PF_L2_BYTES, _MM_HINT_T1);
            _mm_prefetch((const char *)p + k + PF_L2_BYTES / 2, _MM_HINT_T1);
            __m512i v = _mm512_loadu_si512((const void *)(p + k));
            /* 0xF8: a | (b & c), the sign bit of each code onto its high byte */
            __m512i vh = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(h0, v, h1), v, m80, 0xF8);
            __m512i vl = _mm512_permutex2var_epi8(l0, v, l1);
            __m512i u0 = _mm512_unpacklo_epi8(vl, vh), u1 = _mm512_unpackhi_epi8(vl, vh);
            const float *xk = xs + k;
            a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(u0, 16)), _mm512_load_ps(xk), a0);
            a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(u0, top)), _mm512_load_ps(xk + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(u1, 16)), _mm512_load_ps(xk + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(u1, top)), _mm512_load_ps(xk + 48), a3);
        }
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        for (int k = K64; k < K; k++)
            s += mc_fp8_e4m3_to_f32(p[k]) * srow[k / bc] * x[k];
        y[o] = s;
    }
    free(xp);
    return 1;
}

/* ---- several tokens (avx512_fp8_rows.h, with the table lookup) ---- */

typedef struct {
    __m512i h0, h1, l0, l1, m80, top;
} fp8_tabs;

static void fp8_tabs_init(fp8_tabs *tb)
{
    pthread_once(&fp8_tab_once, fp8_tab_init);
    tb->h0 = _mm512_loadu_si512((const void *)fp8_hi);
    tb->h1 = _mm512_loadu_si512((const void *)(fp8_hi + 64));
    tb->l0 = _mm512_loadu_si512((const void *)fp8_lo);
    tb->l1 = _mm512_loadu_si512((const void *)(fp8_lo + 64));
    tb->m80 = _mm512_set1_epi8((char)0x80);
    tb->top = _mm512_set1_epi32((int)0xffff0000u);
}

/* 64 codes as two vectors of bf16 pairs (u[0]: the low unpack, u[1]: the
 * high one); a NaN code looks up a NaN, so no mask is needed */
static inline __attribute__((always_inline)) __mmask64 fp8_step(const fp8_tabs *tb, __m512i v,
                                                                __m512i u[2])
{
    /* 0xF8: a | (b & c), the sign bit of each code onto its high byte */
    __m512i vh = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(tb->h0, v, tb->h1), v, tb->m80,
                                           0xF8);
    __m512i vl = _mm512_permutex2var_epi8(tb->l0, v, tb->l1);
    u[0] = _mm512_unpacklo_epi8(vl, vh);
    u[1] = _mm512_unpackhi_epi8(vl, vh);
    return 0;
}

/* slot vector q (< 4) of a step: the even or odd words of u[q / 2] as f32 */
static inline __attribute__((always_inline)) __m512 fp8_vec(const fp8_tabs *tb, const __m512i u[2],
                                                            int q)
{
    return _mm512_castsi512_ps(q % 2 ? _mm512_and_si512(u[q / 2], tb->top)
                                     : _mm512_slli_epi32(u[q / 2], 16));
}

#define FP8_ROWS_COL(s) fp8_col(s)
#define FP8_ROWS_PERMUTED
#define FP8_ROWS_UNIT 1.0f
#include "avx512_fp8_rows.h"

int mc_avx512vbmi_fp8_rows(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy,
                           int r0, int r1)
{
    return fp8_rows(w, x, n, ldx, y, ldy, r0, r1);
}
