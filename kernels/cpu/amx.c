/* amx.c - the "amx" path: the avx512 table with the Q8_0 / Q4_K matrix
 * products done on AMX INT8 tiles when a product has AMX_MIN_TOKENS tokens
 * or more (prefill), and BF16 products on AMX-BF16 tiles from
 * AMX_BF16_MIN_TOKENS tokens (see "BF16 on AMX-BF16 tiles" below); fewer
 * tokens take the avx512 functions.
 *
 * Tiles (one configuration, loaded per product by each thread, released
 * when the product ends):
 *   tmm0..3  C: 16 weight rows x 16 tokens, int32
 *   tmm4..5  A: 16 weight rows x 32 bytes (one block of 32 weights per row)
 *   tmm6..7  B: 8 rows x 64 bytes, the VNNI layout of 16 tokens x 32
 *            activations: B[k/4][t*4 + k%4] = x[t][k]
 * One tile product per block of 32 (K = 32): the int32 sums are exact; the
 * C tile is stored and folded into 16 f32 accumulators (one zmm per weight
 * row, 16 tokens) with the block's scales, so results differ from the
 * scalar path only in the order of f32 additions.
 *
 * Activations are repacked once per product (pack_qact, before the rows are
 * split over threads) into
 *   tiles [nt][nk][512]   int8 B tiles (nt = ceil(n/16) token tiles, nk = kp/32),
 *                         tokens past n are zero
 *   dx    [nt][nb][16]    f32 activation scales (nb = kp / block), 0 past n
 *   bs    [nt][nk][16]    f32 per-32 sums (Q4_K only)
 * Weights are repacked per panel of 16 rows into a per-thread scratch:
 *   Q8_0: A [nk][16][32] int8, dw [nk][16] f32
 *   Q4_K: A [nb][8][16][32] nibbles as bytes 0..15, sc [nb][8][16] int32
 *         6-bit scales, mn [nb][8][16] f32 6-bit mins, d / dmin [nb][16] f32
 * Rows past the matrix in the last panel are zero and never written out.
 */
#include "avx512_fp8.h"
#include "kern.h"

#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AI static inline __attribute__((always_inline))

/* Fewest tokens for which a product takes the tiles (below: avx512). At 8
 * tokens avx512 is as fast or faster, at 12 it is even, at 16 the tiles win
 * by 1.1-1.3x on expert-sized products (docs/kernels.md). */
#define AMX_MIN_TOKENS 16

mc_kops mc_kops_amx;

/* ---- permission, configuration ---- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_granted;

/* The 64-byte operand of ldtilecfg (palette 1). */
typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) tilecfg;

_Static_assert(sizeof(tilecfg) == 64, "tile configuration is 64 bytes");

/* Loads this thread's tile configuration. The configuration is written
 * field by field and handed to ldtilecfg as a memory operand of the asm
 * itself (with a memory clobber), so the compiler can neither drop nor sink
 * the stores (GCC 12 drops them when the struct only reaches
 * _tile_loadconfig through a pointer). */
static void tiles_configure(void)
{
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 4; i++) { /* C */
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    for (int i = 4; i < 6; i++) { /* A */
        cfg.rows[i] = 16;
        cfg.colsb[i] = 32;
    }
    for (int i = 6; i < 8; i++) { /* B */
        cfg.rows[i] = 8;
        cfg.colsb[i] = 64;
    }
    __asm__ __volatile__("" : : "r"(&cfg) : "memory");
    __asm__ __volatile__("ldtilecfg %0" : : "m"(cfg) : "memory");
}

/* All eight tiles 16 rows x 64 bytes (the BF16 products and the burns),
 * loaded as tiles_configure does. */
static void tiles_configure_all64(void)
{
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    __asm__ __volatile__("" : : "r"(&cfg) : "memory");
    __asm__ __volatile__("ldtilecfg %0" : : "m"(cfg) : "memory");
}

/* ---- activation repack (once per product) ---- */

static int use_tiles(const mc_mat *w, int n)
{
    return n >= AMX_MIN_TOKENS && (w->dtype == MC_DT_Q8_0 || w->dtype == MC_DT_Q4_K);
}

static int blk_of(const mc_mat *w) { return w->dtype == MC_DT_Q8_0 ? MC_QK8_0 : MC_QK_K; }

static size_t pack_bytes(const mc_mat *w, int n)
{
    if (!use_tiles(w, n))
        return 0;
    size_t kp = (size_t)(w->cols + blk_of(w) - 1) / blk_of(w) * blk_of(w);
    size_t nt = (size_t)(n + 15) / 16, nk = kp / 32, nb = kp / blk_of(w);
    return nt * nk * 512 + nt * nb * 64 + (w->dtype == MC_DT_Q4_K ? nt * nk * 64 : 0);
}

static void pack(const mc_mat *w, const mc_qact *a, void *dst)
{
    int nk = a->kp / 32, nb = a->kp / blk_of(w), nt = (a->n + 15) / 16;
    int8_t *tiles = dst;                                      /* (nt, nk, 8, 64) */
    float *dx = (float *)(tiles + (size_t)nt * nk * 512);     /* (nt, nb, 16) */
    float *bs = dx + (size_t)nt * nb * 16;                    /* (nt, nk, 16), Q4_K */
    for (int tt = 0; tt < nt; tt++)
        for (int t = 0; t < 16; t++) {
            int row = tt * 16 + t;
            int8_t *tb = tiles + (size_t)tt * nk * 512 + 4 * t;
            float *dxt = dx + (size_t)tt * nb * 16 + t;
            float *bst = bs + (size_t)tt * nk * 16 + t;
            if (row >= a->n) {
                for (int k = 0; k < nk * 8; k++) /* one dword per (block, group) */
                    memset(tb + (size_t)k * 64, 0, 4);
                for (int b = 0; b < nb; b++)
                    dxt[b * 16] = 0.0f;
                if (w->dtype == MC_DT_Q4_K)
                    for (int k = 0; k < nk; k++)
                        bst[k * 16] = 0.0f;
                continue;
            }
            const int8_t *q = a->q + (size_t)row * a->kp;
            for (int k = 0; k < nk * 8; k++) /* dword k of the row: block k/8, group k%8 */
                memcpy(tb + (size_t)k * 64, q + 4 * k, 4);
            for (int b = 0; b < nb; b++)
                dxt[b * 16] = a->d[(size_t)row * nb + b];
            if (w->dtype == MC_DT_Q4_K)
                for (int k = 0; k < nk; k++)
                    bst[k * 16] = (float)a->bsum[(size_t)row * nk + k];
        }
}

/* Rows of the panel after [p0, p0 + 16) within [.., r1) for prefetching
 * while this panel is computed (the repack reads them next); returns the
 * count (0 for the last panel). */
static int next_panel(const mc_mat *w, int p0, int r1, const unsigned char **rows)
{
    int n = r1 - (p0 + 16);
    n = n < 0 ? 0 : n > 16 ? 16 : n;
    for (int r = 0; r < n; r++)
        rows[r] = mc_row_ptr(w, p0 + 16 + r);
    return n;
}

/* ---- output ---- */

/* y[(t0 + t) * ldy + o0 + r] = acc[r][t] for r < nr, t < ntok. */
AI void write_out(const __m512 *acc, float *y, int ldy, int o0, int nr, int t0, int ntok)
{
    float tmp[16][16] __attribute__((aligned(64)));
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        _mm512_store_ps(tmp[r], acc[r]);
    for (int t = 0; t < ntok; t++)
        for (int r = 0; r < nr; r++)
            y[(size_t)(t0 + t) * ldy + o0 + r] = tmp[r][t];
}

/* ---- Q8_0 ---- */

/* acc[r] += float(C[r]) * dx * dw[r]: one block of 32. */
AI void fold_q8(__m512 *acc, const int32_t *c, const float *dx, const float *dw)
{
    __m512 dxv = _mm512_loadu_ps(dx);
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++) {
        __m512 cf = _mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * r));
        acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(cf, dxv), _mm512_set1_ps(dw[r]), acc[r]);
    }
}

static void rows_q8_0(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nk = a->kp / 32, nt = (a->n + 15) / 16;
    size_t abytes = (size_t)nk * 512;
    unsigned char *buf = a->pack ? mc_kern_scratch(abytes + (size_t)nk * 64 + 4096) : NULL;
    if (!buf) {
        mc_kops_avx512.rows_q8_0(w, a, y, ldy, r0, r1);
        return;
    }
    int8_t *ap = (int8_t *)buf;                /* (nk, 16, 32) */
    float *dw = (float *)(buf + abytes);       /* (nk, 16) */
    int32_t *cb = (int32_t *)(dw + nk * 16);   /* (4, 16, 16) */
    const int8_t *btiles = a->pack;            /* (nt, nk, 8, 64) */
    const float *dxp = (const float *)(btiles + (size_t)nt * nk * 512); /* (nt, nk, 16) */
    tiles_configure();
    for (int p0 = r0; p0 < r1; p0 += 16) {
        int pr = r1 - p0 < 16 ? r1 - p0 : 16;
        for (int r = 0; r < 16; r++) {
            if (r >= pr) {
                for (int b = 0; b < nk; b++) {
                    memset(ap + (size_t)b * 512 + 32 * r, 0, 32);
                    dw[b * 16 + r] = 0.0f;
                }
                continue;
            }
            const unsigned char *row = mc_row_ptr(w, p0 + r);
            for (int b = 0; b < nk; b++) {
                const unsigned char *blk = row + (size_t)b * sizeof(mc_block_q8_0);
                uint16_t h;
                memcpy(&h, blk, 2);
                dw[b * 16 + r] = _cvtsh_ss(h);
                _mm256_store_si256((__m256i *)(ap + (size_t)b * 512 + 32 * r),
                                   _mm256_loadu_si256((const __m256i *)(blk + 2)));
            }
        }
        const unsigned char *nrow[16];
        int npf = next_panel(w, p0, r1, nrow);
        for (int tt = 0; tt < nt; tt++) {
            const int8_t *bt = btiles + (size_t)tt * nk * 512;
            const float *dx = dxp + (size_t)tt * nk * 16;
            int pf = tt == 0 ? npf : 0; /* the next panel's rows, over the first token tile */
            __m512 acc[16];
#pragma GCC unroll 16
            for (int r = 0; r < 16; r++)
                acc[r] = _mm512_setzero_ps();
            int b = 0;
            for (; b + 3 < nk; b += 4) {
                for (int r = 0; r < pf; r++) {
                    const char *pr0 = (const char *)nrow[r] + (size_t)b * sizeof(mc_block_q8_0);
                    _mm_prefetch(pr0, _MM_HINT_T1);
                    _mm_prefetch(pr0 + 64, _MM_HINT_T1);
                }
                _tile_loadd(4, ap + (size_t)b * 512, 32);
                _tile_loadd(6, bt + (size_t)b * 512, 64);
                _tile_zero(0);
                _tile_dpbssd(0, 4, 6);
                _tile_loadd(5, ap + (size_t)(b + 1) * 512, 32);
                _tile_loadd(7, bt + (size_t)(b + 1) * 512, 64);
                _tile_zero(1);
                _tile_dpbssd(1, 5, 7);
                _tile_loadd(4, ap + (size_t)(b + 2) * 512, 32);
                _tile_loadd(6, bt + (size_t)(b + 2) * 512, 64);
                _tile_zero(2);
                _tile_dpbssd(2, 4, 6);
                _tile_loadd(5, ap + (size_t)(b + 3) * 512, 32);
                _tile_loadd(7, bt + (size_t)(b + 3) * 512, 64);
                _tile_zero(3);
                _tile_dpbssd(3, 5, 7);
                _tile_stored(0, cb, 64);
                _tile_stored(1, cb + 256, 64);
                _tile_stored(2, cb + 512, 64);
                _tile_stored(3, cb + 768, 64);
                fold_q8(acc, cb, dx + b * 16, dw + b * 16);
                fold_q8(acc, cb + 256, dx + (b + 1) * 16, dw + (b + 1) * 16);
                fold_q8(acc, cb + 512, dx + (b + 2) * 16, dw + (b + 2) * 16);
                fold_q8(acc, cb + 768, dx + (b + 3) * 16, dw + (b + 3) * 16);
            }
            for (; b < nk; b++) {
                _tile_loadd(4, ap + (size_t)b * 512, 32);
                _tile_loadd(6, bt + (size_t)b * 512, 64);
                _tile_zero(0);
                _tile_dpbssd(0, 4, 6);
                _tile_stored(0, cb, 64);
                fold_q8(acc, cb, dx + b * 16, dw + b * 16);
            }
            int ntok = a->n - tt * 16 < 16 ? a->n - tt * 16 : 16;
            write_out(acc, y, ldy, p0, pr, tt * 16, ntok);
        }
    }
    _tile_release();
}

/* ---- Q4_K ---- */

/* One sub-block j of super-block b: C tile c = A_j (weights) x B_j (tokens). */
#define Q4_SUB(j, c, ta, tb)                                                  \
    do {                                                                      \
        _tile_loadd(ta, ap + ((size_t)b * 8 + (j)) * 512, 32);                \
        _tile_loadd(tb, bt + ((size_t)b * 8 + (j)) * 512, 64);                \
        _tile_zero(c);                                                        \
        _tile_dpbusd(c, ta, tb);                                              \
    } while (0)

static void rows_q4_k(const mc_mat *w, const mc_qact *a, float *y, int ldy, int r0, int r1)
{
    int nk = a->kp / 32, nb = a->kp / MC_QK_K, nt = (a->n + 15) / 16;
    size_t abytes = (size_t)nk * 512;
    unsigned char *buf =
        a->pack ? mc_kern_scratch(abytes + (size_t)nb * (8 * 64 * 2 + 64 * 2) + 8 * 1024) : NULL;
    if (!buf) {
        mc_kops_avx512.rows_q4_k(w, a, y, ldy, r0, r1);
        return;
    }
    uint8_t *ap = buf;                               /* (nb, 8, 16, 32) */
    int32_t *sc = (int32_t *)(buf + abytes);         /* (nb, 8, 16) */
    float *mn = (float *)(sc + (size_t)nb * 128);    /* (nb, 8, 16) */
    float *dd = mn + (size_t)nb * 128;               /* (nb, 16) */
    float *dm = dd + (size_t)nb * 16;                /* (nb, 16) */
    int32_t *cb = (int32_t *)(dm + (size_t)nb * 16); /* (8, 16, 16) */
    const int8_t *btiles = a->pack;                  /* (nt, nk, 8, 64) */
    const float *dxp = (const float *)(btiles + (size_t)nt * nk * 512); /* (nt, nb, 16) */
    const float *bsp = dxp + (size_t)nt * nb * 16;                      /* (nt, nk, 16) */
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    tiles_configure();
    for (int p0 = r0; p0 < r1; p0 += 16) {
        int pr = r1 - p0 < 16 ? r1 - p0 : 16;
        for (int r = 0; r < 16; r++) {
            const unsigned char *row = r < pr ? mc_row_ptr(w, p0 + r) : NULL;
            for (int b = 0; b < nb; b++) {
                uint8_t *ab = ap + (size_t)b * 4096 + 32 * r;
                if (!row) {
                    for (int j = 0; j < 8; j++) {
                        memset(ab + 512 * j, 0, 32);
                        sc[(b * 8 + j) * 16 + r] = 0;
                        mn[(b * 8 + j) * 16 + r] = 0.0f;
                    }
                    dd[b * 16 + r] = dm[b * 16 + r] = 0.0f;
                    continue;
                }
                const unsigned char *blk = row + (size_t)b * sizeof(mc_block_q4_k);
                uint16_t hd, hm;
                memcpy(&hd, blk, 2);
                memcpy(&hm, blk + 2, 2);
                dd[b * 16 + r] = _cvtsh_ss(hd);
                dm[b * 16 + r] = _cvtsh_ss(hm);
                uint8_t sm[16];
                mc_q4_k_unpack(blk + 4, sm);
                for (int j = 0; j < 8; j++) {
                    sc[(b * 8 + j) * 16 + r] = sm[j];
                    mn[(b * 8 + j) * 16 + r] = (float)sm[8 + j];
                }
                for (int c = 0; c < 4; c++) {
                    __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * c));
                    _mm256_store_si256((__m256i *)(ab + 512 * (2 * c)), _mm256_and_si256(q, m4));
                    _mm256_store_si256((__m256i *)(ab + 512 * (2 * c + 1)),
                                       _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
                }
            }
        }
        const unsigned char *nrow[16];
        int npf = next_panel(w, p0, r1, nrow);
        for (int tt = 0; tt < nt; tt++) {
            const int8_t *bt = btiles + (size_t)tt * nk * 512;
            const float *dxt = dxp + (size_t)tt * nb * 16;
            int pf = tt == 0 ? npf : 0; /* the next panel's rows, over the first token tile */
            const float *bst = bsp + (size_t)tt * nk * 16;
            __m512 acc[16];
#pragma GCC unroll 16
            for (int r = 0; r < 16; r++)
                acc[r] = _mm512_setzero_ps();
            for (int b = 0; b < nb; b++) {
                for (int r = 0; r < pf; r++) {
                    const char *pb = (const char *)nrow[r] + (size_t)b * sizeof(mc_block_q4_k);
                    for (int l = 0; l < 3; l++)
                        _mm_prefetch(pb + 64 * l, _MM_HINT_T1);
                }
                Q4_SUB(0, 0, 4, 6);
                Q4_SUB(1, 1, 5, 7);
                Q4_SUB(2, 2, 4, 6);
                Q4_SUB(3, 3, 5, 7);
                _tile_stored(0, cb, 64);
                _tile_stored(1, cb + 256, 64);
                _tile_stored(2, cb + 512, 64);
                _tile_stored(3, cb + 768, 64);
                Q4_SUB(4, 0, 4, 6);
                Q4_SUB(5, 1, 5, 7);
                Q4_SUB(6, 2, 4, 6);
                Q4_SUB(7, 3, 5, 7);
                _tile_stored(0, cb + 1024, 64);
                _tile_stored(1, cb + 1280, 64);
                _tile_stored(2, cb + 1536, 64);
                _tile_stored(3, cb + 1792, 64);
                /* per row: sumi = sum_j sc_j C_j (int32, exact), mins = sum_j m_j bsum_j
                 * (f32, exact: |terms| < 2^18), then one f32 step per super-block */
                __m512 dxv = _mm512_loadu_ps(dxt + b * 16);
                const float *bsb = bst + (size_t)b * 8 * 16;
                const int32_t *scb = sc + (size_t)b * 128;
                const float *mnb = mn + (size_t)b * 128;
#pragma GCC unroll 16
                for (int r = 0; r < 16; r++) {
                    __m512i s = _mm512_setzero_si512();
                    __m512 m = _mm512_setzero_ps();
#pragma GCC unroll 8
                    for (int j = 0; j < 8; j++) {
                        s = _mm512_add_epi32(s, _mm512_mullo_epi32(
                                                    _mm512_load_si512(cb + 256 * j + 16 * r),
                                                    _mm512_set1_epi32(scb[j * 16 + r])));
                        m = _mm512_fmadd_ps(_mm512_set1_ps(mnb[j * 16 + r]),
                                            _mm512_loadu_ps(bsb + 16 * j), m);
                    }
                    __m512 v = _mm512_fmsub_ps(_mm512_set1_ps(dd[b * 16 + r]),
                                               _mm512_cvtepi32_ps(s),
                                               _mm512_mul_ps(_mm512_set1_ps(dm[b * 16 + r]), m));
                    acc[r] = _mm512_fmadd_ps(v, dxv, acc[r]);
                }
            }
            int ntok = a->n - tt * 16 < 16 ? a->n - tt * 16 : 16;
            write_out(acc, y, ldy, p0, pr, tt * 16, ntok);
        }
    }
    _tile_release();
}

/* ---- BF16 on AMX-BF16 tiles ---- */

/* BF16 weights (no scales, not transposed) against f32 activations, for
 * products of AMX_BF16_MIN_TOKENS tokens or more, on CPUs with AMX-BF16;
 * FP8 E4M3 weights the same way (every E4M3 value is exact in bf16: the
 * panel copy converts them), unscaled or with block scales whose blocks
 * are whole 16-row panels and whole blocks of 32 (DeepSeek's 128 x 128):
 * there the C tiles restart per block of columns and are scaled into f32
 * sums, each panel by its own row block's scale. Each
 * activation is split into three bf16 parts by truncation, hi + mid + lo ==
 * x exactly (8 significant bits each: 24 in all; |x| >= 2^-103, below that
 * the tiles' flush of bf16 denormals drops the lowest parts), and every
 * part is multiplied with the bf16 weights by TDPBF16PS (bf16 products are
 * exact in f32, accumulated in f32 with round to nearest even): the result
 * has the f32 path's accuracy, in another order of additions (not bitwise
 * equal to avx512). Infinities and NaN stay whole in the high part.
 *
 * Tiles (all 16 rows x 64 bytes):
 *   tmm0..3  C: 16 weight rows x 16 tokens, f32, over the whole row
 *   tmm4..5  A: 16 weight rows x 32 bf16, read in place (an edge panel:
 *            from a zero-padded copy)
 *   tmm6..7  B: 16 rows of 16 tokens x 2 bf16 (VNNI pairs):
 *            B[kk][2t + j] = part(x[t][32b + 2kk + j])
 * Activations are repacked once per product (pack_f):
 *   [nt][nk][3][16][16][2] bf16: token tile, block of 32, part, B tile,
 * zero past n and past the row. Tokens are swept in blocks whose repack
 * stays within ~1 MiB of L2, and every block against all of a task's rows
 * in pairs of panels x pairs of token tiles (four C tiles). */

static int g_bf16; /* the CPU has AMX-BF16 */

/* Fewest tokens for BF16 tile products: one thread, 768 x 2048 from cache,
 * tiles vs avx512: 2 tokens even, 4 tokens 1.6x, 8 tokens 4x. */
#define AMX_BF16_MIN_TOKENS 4

/* BF16, or FP8 E4M3 (exact in bf16) without scales or with block scales
 * that a 16-row panel and a block of 32 never straddle (DeepSeek's
 * 128 x 128); transposed storage never. */
static int use_bf16_tiles(const mc_mat *w, int n)
{
    if (!g_bf16 || n < AMX_BF16_MIN_TOKENS || w->transposed || w->cols <= 0)
        return 0;
    if (w->dtype == MC_DT_BF16)
        return !w->scale;
    return w->dtype == MC_DT_F8_E4M3 &&
           (!w->scale || (w->block_rows > 0 && w->block_rows % 16 == 0 && w->block_cols > 0 &&
                          w->block_cols % 32 == 0));
}

static size_t pack_f_bytes(const mc_mat *w, int n)
{
    if (!use_bf16_tiles(w, n))
        return 0;
    size_t nk = ((size_t)w->cols + 31) / 32, nt = ((size_t)n + 15) / 16;
    return nt * nk * 3072;
}

/* In-place transpose of a 16 x 16 matrix of 32-bit values, r[i] row i. */
AI void tr16(__m512i *r)
{
    __m512i t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    /* u[4g + j], 128-bit lane L: column 4L + j of rows 4g .. 4g + 3 */
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        __m512i s0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44);
        __m512i s1 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
        __m512i s2 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xee);
        __m512i s3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xee);
        t[j] = _mm512_shuffle_i32x4(s0, s1, 0x88);
        t[4 + j] = _mm512_shuffle_i32x4(s0, s1, 0xdd);
        t[8 + j] = _mm512_shuffle_i32x4(s2, s3, 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(s2, s3, 0xdd);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

/* The three parts of 16 values (f32 with the low 16 bits zero). */
AI void split3(__m512 x, __m512i *hi, __m512i *mid, __m512i *lo)
{
    const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
    const __m512i expo = _mm512_set1_epi32(0x7f800000), mant = _mm512_set1_epi32(0x007fffff);
    __m512i xb = _mm512_castps_si512(x);
    __m512i h = _mm512_and_si512(xb, top);
    __m512 r1 = _mm512_sub_ps(x, _mm512_castsi512_ps(h));
    __m512i m = _mm512_and_si512(_mm512_castps_si512(r1), top);
    __m512 r2 = _mm512_sub_ps(r1, _mm512_castsi512_ps(m));
    __m512i l = _mm512_and_si512(_mm512_castps_si512(r2), top);
    /* Inf and NaN whole in hi (a NaN whose payload was all low bits stays a NaN) */
    __mmask16 nf = _mm512_cmpeq_epi32_mask(_mm512_and_si512(xb, expo), expo);
    __mmask16 nan = nf & _mm512_test_epi32_mask(xb, mant);
    *hi = _mm512_mask_or_epi32(h, nan, h, _mm512_set1_epi32(0x00400000));
    *mid = _mm512_maskz_mov_epi32((__mmask16)~nf, m);
    *lo = _mm512_maskz_mov_epi32((__mmask16)~nf, l);
}

/* The bf16 (upper halves) of a (k 0..15) and b (k 16..31) as 16 VNNI pairs. */
AI __m512i narrow2(__m512i a, __m512i b)
{
    const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35,
                                         33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(a, odd, b);
}

static void pack_f(const mc_mat *w, const float *x, int n, int ldx, void *dst, int tt0, int tt1)
{
    int K = w->cols, nk = (K + 31) / 32;
    for (int tt = tt0; tt < tt1; tt++)
        for (int b = 0; b < nk; b++) {
            int len = K - 32 * b < 32 ? K - 32 * b : 32;
            __mmask16 m0 = len >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << len) - 1);
            __mmask16 m1 = len >= 32 ? (__mmask16)0xffff
                                     : len > 16 ? (__mmask16)((1u << (len - 16)) - 1) : 0;
            __m512i p[3][16];
            for (int t = 0; t < 16; t++) {
                int row = tt * 16 + t;
                if (row >= n) {
                    p[0][t] = p[1][t] = p[2][t] = _mm512_setzero_si512();
                    continue;
                }
                const float *xr = x + (size_t)row * ldx + 32 * b;
                __m512i h0, m0v, l0, h1, m1v, l1;
                split3(_mm512_maskz_loadu_ps(m0, xr), &h0, &m0v, &l0);
                split3(_mm512_maskz_loadu_ps(m1, xr + 16), &h1, &m1v, &l1);
                p[0][t] = narrow2(h0, h1);
                p[1][t] = narrow2(m0v, m1v);
                p[2][t] = narrow2(l0, l1);
            }
            char *out = (char *)dst + ((size_t)tt * nk + b) * 3072;
            for (int part = 0; part < 3; part++) {
                tr16(p[part]); /* row t (token) of pairs kk -> row kk of tokens */
                for (int kk = 0; kk < 16; kk++)
                    _mm512_store_si512((void *)(out + part * 1024 + kk * 64), p[part][kk]);
            }
        }
}

/* y[(t0 + t) * ldy + o0 + r] = c[r][t] for r < nr, t < ntok. */
AI void write_tile(const float *c, float *y, int ldy, int o0, int nr, int t0, int ntok)
{
    __m512i v[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++)
        v[r] = _mm512_load_si512((const void *)(c + 16 * r));
    tr16(v);
    __mmask16 m = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    for (int t = 0; t < ntok; t++)
        _mm512_mask_storeu_ps(y + (size_t)(t0 + t) * ldy + o0, m, _mm512_castsi512_ps(v[t]));
}

/* Rows o .. o + pr - 1 of w into a panel of tiles, dst (nk, 16, 32) bf16,
 * zero past pr rows and past the row's end. */
static void copy_panel(const mc_mat *w, int o, int pr, int nk, uint16_t *dst)
{
    int K = w->cols;
    if (w->dtype == MC_DT_F8_E4M3) { /* E4M3 -> f32 (exact) -> its upper half (exact) */
        for (int r = 0; r < 16; r++) {
            const uint8_t *src = (const uint8_t *)w->data + (size_t)(o + r) * w->row_stride;
            for (int b = 0; b < nk; b++) {
                int len = r < pr ? (K - 32 * b < 32 ? K - 32 * b : 32) : 0;
                __mmask32 m = len >= 32 ? 0xffffffffu : (__mmask32)((1u << len) - 1);
                __m256i v = _mm256_maskz_loadu_epi8(m, src + 32 * b);
                __m512i lo = _mm512_castps_si512(fp8x16(_mm256_castsi256_si128(v)));
                __m512i hi = _mm512_castps_si512(fp8x16(_mm256_extracti128_si256(v, 1)));
                _mm512_store_si512((void *)(dst + (size_t)b * 512 + 32 * r), narrow2(lo, hi));
            }
        }
        return;
    }
    for (int r = 0; r < 16; r++) {
        const uint16_t *src = (const uint16_t *)w->data + (size_t)(o + r) * w->row_stride;
        for (int b = 0; b < nk; b++) {
            int len = r < pr ? (K - 32 * b < 32 ? K - 32 * b : 32) : 0;
            __mmask32 m = len >= 32 ? 0xffffffffu : (__mmask32)((1u << len) - 1);
            _mm512_store_si512((void *)(dst + (size_t)b * 512 + 32 * r),
                               _mm512_maskz_loadu_epi16(m, src + 32 * b));
        }
    }
}

/* Blocks b0 .. b1 - 1 of the C tiles of panels a0 (a1 when np == 2) x
 * token tiles bt0 (bt1 when nt2 == 2): C0 = a0 x bt0, C1 = a0 x bt1,
 * C2 = a1 x bt0, C3 = a1 x bt1, loaded from c (zero when first) and stored
 * back; panels in copy_panel's order. */
AI void bf16_tiles(int np, int nt2, int b0, int b1, int first, float *c, const char *a0,
                   const char *a1, const char *bt0, const char *bt1)
{
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        _tile_loadd(0, c, 64);
        if (nt2 == 2)
            _tile_loadd(1, c + 256, 64);
        if (np == 2)
            _tile_loadd(2, c + 512, 64);
        if (np == 2 && nt2 == 2)
            _tile_loadd(3, c + 768, 64);
    }
    if (np == 2 && nt2 == 2 && b0 < b1) {
        /* each tile reloaded as soon as its last reader has issued: the
         * tiles are not renamed, a load waits for the products reading the
         * old contents */
        _tile_loadd(4, a0 + (size_t)b0 * 1024, 64);
        _tile_loadd(5, a1 + (size_t)b0 * 1024, 64);
        _tile_loadd(6, bt0 + (size_t)b0 * 3072, 64);
        _tile_loadd(7, bt1 + (size_t)b0 * 3072, 64);
        for (int b = b0; b < b1; b++) {
            const char *p0 = bt0 + (size_t)b * 3072, *p1 = bt1 + (size_t)b * 3072;
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            _tile_loadd(6, p0 + 1024, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
            _tile_loadd(7, p1 + 1024, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            _tile_loadd(6, p0 + 2048, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
            _tile_loadd(7, p1 + 2048, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            if (b + 1 < b1)
                _tile_loadd(6, p0 + 3072, 64);
            _tile_dpbf16ps(1, 4, 7);
            if (b + 1 < b1)
                _tile_loadd(4, a0 + (size_t)(b + 1) * 1024, 64);
            _tile_dpbf16ps(3, 5, 7);
            if (b + 1 < b1) {
                _tile_loadd(5, a1 + (size_t)(b + 1) * 1024, 64);
                _tile_loadd(7, p1 + 3072, 64);
            }
        }
        b0 = b1; /* done */
    }
    for (int b = b0; b < b1; b++) {
        _tile_loadd(4, a0 + (size_t)b * 1024, 64);
        if (np == 2)
            _tile_loadd(5, a1 + (size_t)b * 1024, 64);
        const char *p0 = bt0 + (size_t)b * 3072, *p1 = bt1 + (size_t)b * 3072;
#pragma GCC unroll 3
        for (int part = 0; part < 3; part++) {
            _tile_loadd(6, p0 + part * 1024, 64);
            if (nt2 == 2)
                _tile_loadd(7, p1 + part * 1024, 64);
            _tile_dpbf16ps(0, 4, 6);
            if (nt2 == 2)
                _tile_dpbf16ps(1, 4, 7);
            if (np == 2)
                _tile_dpbf16ps(2, 5, 6);
            if (np == 2 && nt2 == 2)
                _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c, 64);
    if (nt2 == 2)
        _tile_stored(1, c + 256, 64);
    if (np == 2)
        _tile_stored(2, c + 512, 64);
    if (np == 2 && nt2 == 2)
        _tile_stored(3, c + 768, 64);
}

/* bf16_tiles with np and nt2 as compile-time constants (each variant
 * issues only its own tile operations). */
static void bf16_tiles_any(int np, int nt2, int b0, int b1, int first, float *c, const char *a0,
                           const char *a1, const char *bt0, const char *bt1)
{
    if (np == 2 && nt2 == 2)
        bf16_tiles(2, 2, b0, b1, first, c, a0, a1, bt0, bt1);
    else if (np == 2)
        bf16_tiles(2, 1, b0, b1, first, c, a0, a1, bt0, bt1);
    else if (nt2 == 2)
        bf16_tiles(1, 2, b0, b1, first, c, a0, a1, bt0, bt1);
    else
        bf16_tiles(1, 1, b0, b1, first, c, a0, a1, bt0, bt1);
}

/* One chunk of block scales (FP8): the C tiles of the chunk from zero into
 * ctmp, then c += ctmp * the scale of each panel's (row block, column
 * block); c is set, not added to, for the first chunk. */
static void bf16_chunk_scaled(const mc_mat *w, int np, int nt2, int kc, int kc1, float *c,
                              float *ctmp, const char *a0, const char *a1, const char *bt0,
                              const char *bt1, int o0, int o1)
{
    bf16_tiles_any(np, nt2, kc, kc1, 1, ctmp, a0, a1, bt0, bt1);
    int cb = kc * 32 / w->block_cols;
    for (int p = 0; p < np; p++) {
        float sv = w->scale[(size_t)((p ? o1 : o0) / w->block_rows) * (size_t)w->scale_cols + cb];
        __m512 s = _mm512_set1_ps(sv);
        for (int k = 0; k < nt2; k++) {
            float *dst = c + 256 * (2 * p + k);
            const float *src = ctmp + 256 * (2 * p + k);
            for (int i = 0; i < 256; i += 16) {
                __m512 v = _mm512_load_ps(src + i);
                _mm512_store_ps(dst + i, kc == 0 ? _mm512_mul_ps(v, s)
                                                 : _mm512_fmadd_ps(v, s, _mm512_load_ps(dst + i)));
            }
        }
    }
}

/* Blocking: rows in groups whose weights stay in L2 (BF16_GROUP_BYTES),
 * each group against a pair of token tiles at a time, the row in chunks of
 * BF16_KC blocks (the chunk's repack, 2 x BF16_KC x 3 KiB, stays in L1)
 * swept over the group's panel pairs, C tiles kept in memory between
 * chunks. */
#define BF16_GROUP_BYTES (512u * 1024u)
#define BF16_KC 4

static void rows_bf16(const mc_mat *w, const void *pack, const float *x, int n, int ldx, float *y,
                      int ldy, int r0, int r1)
{
    int K = w->cols, nk = (K + 31) / 32, nt = (n + 15) / 16;
    int rg = (int)(BF16_GROUP_BYTES / ((size_t)nk * 64)) & ~31;
    rg = rg < 32 ? 32 : rg > 1024 ? 1024 : rg; /* 64 panels at most */
    if (rg > r1 - r0)
        rg = (r1 - r0 + 31) & ~31;
    int npp = rg / 32;                  /* panel pairs of a group */
    size_t panel = (size_t)nk * 1024;   /* a zero-padded panel copy: (nk, 16, 32) bf16 */
    unsigned char *buf = pack ? mc_kern_scratch((size_t)npp * (2 * panel + 4096) + 4096) : NULL;
    if (!buf) {
        mc_kops_avx512.rows_f(w, x, n, ldx, y, ldy, r0, r1);
        return;
    }
    float *cacc = (float *)(buf + (size_t)npp * 2 * panel); /* (npp, 4, 16, 16) */
    float *ctmp = cacc + (size_t)npp * 1024;                 /* (4, 16, 16): a scaled chunk */
    /* FP8 block scales: a chunk is one block of columns, each C tile scaled
     * into the f32 sums */
    int sk = w->scale ? w->block_cols / 32 : 0;
    tiles_configure_all64();
    for (int g0 = r0; g0 < r1; g0 += rg) {
        int g1 = g0 + rg < r1 ? g0 + rg : r1;
        /* the group's panels, copied into tile order (zero past the rows and
         * the row's end): A tiles read in place, 16 rows a page apart, would
         * all fall in one L1 set */
        int np_all = (g1 - g0 + 15) / 16;
        const char *ab[64];
        int pr[64];
        for (int p = 0; p < np_all; p++) {
            int o = g0 + 16 * p;
            pr[p] = g1 - o < 16 ? g1 - o : 16;
            copy_panel(w, o, pr[p], nk, (uint16_t *)(buf + (size_t)p * panel));
            ab[p] = (const char *)(buf + (size_t)p * panel);
        }
        for (int tt = 0; tt < nt; tt += 2) {
            int nt2 = tt + 1 < nt ? 2 : 1;
            const char *bt0 = (const char *)pack + (size_t)tt * nk * 3072;
            const char *bt1 = bt0 + (size_t)nk * 3072;
            /* the first pair streams whole rows (the group's first reads, from
             * memory: one sequential stream per row), the others take chunks */
            int kstep = sk ? sk : tt == 0 ? nk : BF16_KC;
            for (int kc = 0; kc < nk; kc += kstep) {
                int kc1 = kc + kstep < nk ? kc + kstep : nk;
                for (int p = 0; p < np_all; p += 2) {
                    float *c = cacc + (size_t)(p / 2) * 1024;
                    int np = p + 1 < np_all ? 2 : 1, q = np == 2 ? p + 1 : p;
                    if (sk)
                        bf16_chunk_scaled(w, np, nt2, kc, kc1, c, ctmp, ab[p], ab[q], bt0, bt1,
                                          g0 + 16 * p, g0 + 16 * q);
                    else
                        bf16_tiles_any(np, nt2, kc, kc1, kc == 0, c, ab[p], ab[q], bt0, bt1);
                }
            }
            for (int p = 0; p < np_all; p++)
                for (int k = 0; k < nt2; k++) {
                    int t0 = (tt + k) * 16, ntok = n - t0 < 16 ? n - t0 : 16;
                    const float *c = cacc + (size_t)(p / 2) * 1024 + 256 * (2 * (p & 1) + k);
                    write_tile(c, y, ldy, g0 + 16 * p, pr[p], t0, ntok);
                }
        }
    }
    _tile_release();
}

/* ---- the table ---- */

/* Configures all eight tiles 16 x 64 bytes, zeroes C (tmm0..3) and loads
 * zero A and B tiles (tmm4..7) for a burn. */
static void burn_setup(void)
{
    static const int8_t zeros[16 * 64] __attribute__((aligned(64)));
    tiles_configure_all64();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, zeros, 64);
    _tile_loadd(5, zeros, 64);
    _tile_loadd(6, zeros, 64);
    _tile_loadd(7, zeros, 64);
}

/* The INT8 tile peak: `iters` rounds of four independent TDPBSSD (16 x 16
 * int32 += 16 x 64 int8 . 64 x 16 int8, 16384 multiply-adds each) on tiles
 * loaded once. */
static double int8_burn(long iters)
{
    burn_setup();
    for (long i = 0; i < iters; i++) {
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(1, 4, 7);
        _tile_dpbssd(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
    }
    _tile_release();
    return (double)iters * 4.0 * 16 * 16 * 64 * 2;
}

/* The BF16 tile peak: the same with TDPBF16PS (16 x 16 f32 += 16 x 32 bf16
 * . 32 x 16 bf16, 8192 multiply-adds each). */
static double bf16_burn(long iters)
{
    burn_setup();
    for (long i = 0; i < iters; i++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_release();
    return (double)iters * 4.0 * 16 * 16 * 32 * 2;
}

static void init_once(void)
{
    mc_kops_amx = mc_kops_avx512;
    mc_kops_amx.name = "amx";
    mc_kops_amx.rows_q8_0 = rows_q8_0;
    mc_kops_amx.rows_q4_k = rows_q4_k;
    mc_kops_amx.pack_qact_bytes = pack_bytes;
    mc_kops_amx.pack_qact = pack;
    mc_kops_amx.int8_burn = int8_burn;
    mc_kops_amx.packs_q8_0 = 0; /* its tiles read Q8_0 rows as stored */
    mc_kops_amx.packs_q4_k = 0; /* its tiles read Q4_K rows as stored */
    mc_kops_amx.packs_q5_k = 0; /* its pack_qact is its own (as for Q6_K) */
    mc_kops_amx.packs_q6_k = 0; /* its pack_qact is its own (the avx512 repack of Q6_K tokens is not made) */
    {
        unsigned a, b, c, d; /* CPUID.(7,0):EDX[22] AMX-BF16 */
        __cpuid_count(7, 0, a, b, c, d);
        g_bf16 = (d >> 22) & 1;
        (void)a, (void)b, (void)c;
    }
    if (g_bf16) {
        mc_kops_amx.pack_f_bytes = pack_f_bytes;
        mc_kops_amx.pack_f = pack_f;
        mc_kops_amx.rows_f_packed = rows_bf16;
        mc_kops_amx.bf16_burn = bf16_burn;
    }
#if defined(__linux__) && defined(SYS_arch_prctl)
    /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18): per process */
    if (syscall(SYS_arch_prctl, 0x1023, 18) == 0)
        g_granted = 1;
#endif
}

int mc_amx_init(void)
{
    pthread_once(&g_once, init_once);
    return g_granted;
}
