/* cpu/ops.c - kernel front end: path selection, the thread pool split of
 * matrix products, activation quantization for block weights, transposed
 * weights, and the public element-wise entry points. */
#include "kern.h"
#include "log.h"
#include "pool.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define MC_X86 1
#endif

/* ---- CPU features and path selection ---- */

typedef struct {
    int avx2, fma, f16c, avx512f, avx512bw, avx512dq, avx512vl, avx512vnni, avx512bf16,
        avx512vbmi;
    int amx_tile, amx_int8, amx_bf16; /* the OS must enable the tile state in XCR0 */
    int amx_refused; /* the kernel refused the tile data (arch_prctl) */
} cpu_feat;

static cpu_feat g_feat;
static char g_feat_str[192];
static atomic_int g_path = -1;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static const char *const path_names[MC_KPATH_COUNT] = {"scalar", "avx2", "avx512", "amx"};

#ifdef MC_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static void detect(void)
{
#ifdef MC_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    int ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (!avx || !ymm_os)
        return;
    g_feat.fma = (c >> 12) & 1;
    g_feat.f16c = (c >> 29) & 1;
    if (__get_cpuid_max(0, NULL) < 7)
        return;
    __cpuid_count(7, 0, a, b, c, d);
    g_feat.avx2 = (b >> 5) & 1;
    if (zmm_os) {
        g_feat.avx512f = (b >> 16) & 1;
        g_feat.avx512dq = (b >> 17) & 1;
        g_feat.avx512bw = (b >> 30) & 1;
        g_feat.avx512vl = (b >> 31) & 1;
        g_feat.avx512vnni = (c >> 11) & 1;
        g_feat.avx512vbmi = (c >> 1) & 1;
        if ((xcr0 & 0x60000) == 0x60000) { /* XTILECFG and XTILEDATA */
            g_feat.amx_bf16 = (d >> 22) & 1;
            g_feat.amx_tile = (d >> 24) & 1;
            g_feat.amx_int8 = (d >> 25) & 1;
        }
        __cpuid_count(7, 1, a, b, c, d);
        g_feat.avx512bf16 = (a >> 5) & 1;
    }
#endif
}

int mc_kpath_supported(mc_kpath p)
{
    switch (p) {
    case MC_KPATH_SCALAR:
        return 1;
    case MC_KPATH_AVX2:
#ifdef MC_HAVE_AVX2
        return g_feat.avx2 && g_feat.fma && g_feat.f16c;
#else
        return 0;
#endif
    case MC_KPATH_AVX512:
#ifdef MC_HAVE_AVX512
        return g_feat.avx2 && g_feat.fma && g_feat.f16c && g_feat.avx512f && g_feat.avx512bw &&
               g_feat.avx512dq && g_feat.avx512vl && g_feat.avx512vnni;
#else
        return 0;
#endif
    case MC_KPATH_AMX:
#ifdef MC_HAVE_AMX
        /* the permission is asked once per process (mc_amx_init), only on CPUs with the tiles */
        return mc_kpath_supported(MC_KPATH_AVX512) && g_feat.amx_tile && g_feat.amx_int8 &&
               !g_feat.amx_refused;
#else
        return 0;
#endif
    default:
        return 0;
    }
}

int mc_kern_bf16dp;
int mc_kern_vbmi;
int mc_kern_bf16_acts;

void mc_kernels_set_bf16_acts(int on) { mc_kern_bf16_acts = on != 0; }

int mc_kernels_bf16_acts(void) { return mc_kern_bf16_acts; }

float mc_round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u |= 0x00400000u; /* NaN: quiet, so that its top 16 bits are still a NaN */
    else
        u += 0x7fffu + ((u >> 16) & 1u); /* to nearest, ties to even; past the largest: inf */
    u &= 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The activations of a product with BF16 weights rounded to bf16
 * (mc_kernels_set_bf16_acts), n rows of w->cols values, or NULL when out of
 * memory. The caller frees it. */
static float *round_acts_bf16(const mc_mat *w, const float *x, int n, int ldx)
{
    size_t cols = (size_t)w->cols;
    if (n <= 0 || cols == 0 || cols > SIZE_MAX / sizeof(float) / (size_t)n)
        return NULL;
    float *r = malloc(cols * (size_t)n * sizeof *r);
    if (!r) {
        MC_ERROR("out of memory rounding %d activations to bf16", n);
        return NULL;
    }
    for (int t = 0; t < n; t++)
        for (size_t i = 0; i < cols; i++)
            r[(size_t)t * cols + i] = mc_round_bf16(x[(size_t)t * ldx + i]);
    return r;
}

static int rounds_acts(const mc_mat *w) { return mc_kern_bf16_acts && w->dtype == MC_DT_BF16; }

static void init_once(void)
{
    detect();
#ifdef MC_HAVE_AVX512BF16
    mc_kern_bf16dp = g_feat.avx512bf16 && mc_kpath_supported(MC_KPATH_AVX512) &&
                     !getenv("MC_NO_BF16DP");
#endif
#ifdef MC_HAVE_AVX512VBMI
    mc_kern_vbmi = g_feat.avx512vbmi && mc_kpath_supported(MC_KPATH_AVX512) &&
                   !getenv("MC_NO_VBMI");
#endif
#ifdef MC_HAVE_AMX
    if (mc_kpath_supported(MC_KPATH_AVX512) && g_feat.amx_tile && g_feat.amx_int8 &&
        !mc_amx_init())
        g_feat.amx_refused = 1;
#endif
    size_t o = 0;
    static const struct {
        const char *name;
        size_t off;
    } names[] = {
        {"avx2", offsetof(cpu_feat, avx2)},           {"fma", offsetof(cpu_feat, fma)},
        {"f16c", offsetof(cpu_feat, f16c)},           {"avx512f", offsetof(cpu_feat, avx512f)},
        {"avx512bw", offsetof(cpu_feat, avx512bw)},   {"avx512dq", offsetof(cpu_feat, avx512dq)},
        {"avx512vl", offsetof(cpu_feat, avx512vl)},   {"avx512vnni", offsetof(cpu_feat, avx512vnni)},
        {"avx512bf16", offsetof(cpu_feat, avx512bf16)}, {"avx512vbmi", offsetof(cpu_feat, avx512vbmi)},
        {"amx_tile", offsetof(cpu_feat, amx_tile)},   {"amx_int8", offsetof(cpu_feat, amx_int8)},
        {"amx_bf16", offsetof(cpu_feat, amx_bf16)},
        {"amx_refused_by_kernel", offsetof(cpu_feat, amx_refused)},
    };
    g_feat_str[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int on;
        memcpy(&on, (const char *)&g_feat + names[i].off, sizeof on);
        if (on && o < sizeof g_feat_str)
            o += (size_t)snprintf(g_feat_str + o, sizeof g_feat_str - o, "%s%s", o ? " " : "",
                                  names[i].name);
    }
    int best = MC_KPATH_SCALAR;
    for (int p = MC_KPATH_COUNT - 1; p > 0; p--)
        if (mc_kpath_supported((mc_kpath)p)) {
            best = p;
            break;
        }
    const char *env = getenv("MC_KERNELS");
    if (env && *env && strcasecmp(env, "auto") != 0) {
        mc_kpath want;
        if (mc_kpath_from_name(env, &want) != 0)
            MC_WARN("MC_KERNELS=%s is not one of scalar|avx2|avx512|amx|auto; using %s", env,
                    path_names[best]);
        else if (want == MC_KPATH_AMX && g_feat.amx_refused)
            MC_WARN("MC_KERNELS=%s: the kernel refused the AMX tile state (arch_prctl "
                    "ARCH_REQ_XCOMP_PERM); using %s", env, path_names[best]);
        else if (!mc_kpath_supported(want))
            MC_WARN("MC_KERNELS=%s: this CPU or build lacks it; using %s", env, path_names[best]);
        else
            best = want;
    }
    atomic_store(&g_path, best);
}

const char *mc_kpath_name(mc_kpath p)
{
    return (unsigned)p < MC_KPATH_COUNT ? path_names[p] : "?";
}

int mc_kpath_from_name(const char *s, mc_kpath *out)
{
    for (int p = 0; p < MC_KPATH_COUNT; p++)
        if (!strcasecmp(s, path_names[p])) {
            *out = (mc_kpath)p;
            return 0;
        }
    return -1;
}

mc_kpath mc_kernels_path(void)
{
    pthread_once(&g_once, init_once);
    return (mc_kpath)atomic_load_explicit(&g_path, memory_order_relaxed);
}

int mc_kernels_set_path(mc_kpath p)
{
    pthread_once(&g_once, init_once);
    if (!mc_kpath_supported(p))
        return -1;
    atomic_store(&g_path, (int)p);
    return 0;
}

const char *mc_cpu_features(void)
{
    pthread_once(&g_once, init_once);
    return g_feat_str;
}

const mc_kops *mc_kops_current(void)
{
    switch (mc_kernels_path()) {
#ifdef MC_HAVE_AMX
    case MC_KPATH_AMX:
        return &mc_kops_amx;
#endif
#ifdef MC_HAVE_AVX512
    case MC_KPATH_AVX512:
        return &mc_kops_avx512;
#endif
#ifdef MC_HAVE_AVX2
    case MC_KPATH_AVX2:
        return &mc_kops_avx2;
#endif
    default:
        return &mc_kops_scalar;
    }
}

/* ---- threads ---- */

static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static mc_pool *g_pool;
static int g_threads; /* 0: not decided yet */

static int default_threads(void)
{
    const char *env = getenv("MC_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == 0 && v >= 1 && v <= 1024)
            return (int)v;
        MC_WARN("MC_THREADS=%s is not a thread count in [1, 1024]; using the CPU count", env);
    }
    return mc_cpu_count();
}

void mc_kernels_set_threads(int n)
{
    pthread_mutex_lock(&g_pool_mu);
    if (n < 1)
        n = default_threads();
    if (n != g_threads || !g_pool) {
        mc_pool_free(g_pool);
        g_pool = n > 1 ? mc_pool_create(n) : NULL;
        g_threads = g_pool ? n : 1;
    }
    pthread_mutex_unlock(&g_pool_mu);
}

int mc_kernels_threads(void)
{
    pthread_mutex_lock(&g_pool_mu);
    int n = g_threads;
    pthread_mutex_unlock(&g_pool_mu);
    if (n == 0) {
        mc_kernels_set_threads(0);
        return mc_kernels_threads();
    }
    return n;
}

mc_pool *mc_kernels_pool(void)
{
    if (mc_kernels_threads() <= 1)
        return NULL;
    return g_pool;
}

/* ---- bytes read (bench) ---- */

static atomic_int g_count_on;
static atomic_ullong g_bytes, g_macs;

void mc_kernels_count_bytes(int on)
{
    atomic_store(&g_bytes, 0);
    atomic_store(&g_macs, 0);
    atomic_store(&g_count_on, on);
}

uint64_t mc_kernels_bytes_read(void) { return atomic_load(&g_bytes); }
uint64_t mc_kernels_macs(void) { return atomic_load(&g_macs); }

static inline void count(size_t b)
{
    if (atomic_load_explicit(&g_count_on, memory_order_relaxed))
        atomic_fetch_add_explicit(&g_bytes, b, memory_order_relaxed);
}

/* ---- matrix products ---- */

typedef struct {
    const mc_kops *ops;
    const mc_mat *w;
    const float *x;
    int n, ldx, ldy;
    float *y;
    const mc_qact *qa;
    const void *fpack; /* the path's repack of x (element-type weights), or NULL */
    int chunk; /* rows per task */
} mm_job;

/* Outputs [c0, c0 + len) of input i of transposed w (Wt[i, c0:c0+len]),
 * widened to f32 into dst. */
static void widen_trun(const mc_kops *ops, const mc_mat *w, int i, int c0, int len, float *dst)
{
    ops->widen(w->dtype,
               (const unsigned char *)w->data +
                   ((size_t)i * w->row_stride + (size_t)c0) * mc_dtype_size(w->dtype),
               len, dst);
}

/* Transposed storage (rows of Wt are inputs): stream Wt[i, o0:o1] and
 * accumulate y[t, o0:o1] += x[t, i] * Wt[i, o0:o1], i ascending. */
static void rows_transposed(const mc_kops *ops, const mc_mat *w, const float *x, int n, int ldx,
                            float *y, int ldy, int o0, int o1)
{
    enum { TCHUNK = 1024 };
    float row[TCHUNK];
    for (int t = 0; t < n; t++)
        memset(y + (size_t)t * ldy + o0, 0, (size_t)(o1 - o0) * sizeof *y);
    for (int c0 = o0; c0 < o1; c0 += TCHUNK) {
        int len = o1 - c0 < TCHUNK ? o1 - c0 : TCHUNK;
        for (int i = 0; i < w->cols; i++) {
            widen_trun(ops, w, i, c0, len, row);
            for (int t = 0; t < n; t++)
                ops->axpy(y + (size_t)t * ldy + c0, x[(size_t)t * ldx + i], row, len);
        }
    }
}

/* Transposed storage against TRANS_COPY_MIN_TOKENS tokens or more: blocks
 * of TRANS_COPY_ROWS outputs widened into a row-major f32 copy, then the
 * path's rows_f on the copy (its tiles reuse each weight over the tokens;
 * rows_transposed re-reads every output row once per input). Per output
 * the same sum whatever the rows of a task (the thread count). Not on the
 * scalar path, whose sums keep one order whatever the number of tokens
 * (the step tests' schedule equivalence relies on it). */
#define TRANS_COPY_MIN_TOKENS 8
#define TRANS_COPY_ROWS 64

static void rows_transposed_copy(const mc_kops *ops, const mc_mat *w, const float *x, int n,
                                 int ldx, float *y, int ldy, int o0, int o1)
{
    float *buf = malloc((size_t)TRANS_COPY_ROWS * (size_t)w->cols * sizeof *buf);
    if (!buf) { /* the in-place loop needs no copy */
        rows_transposed(ops, w, x, n, ldx, y, ldy, o0, o1);
        return;
    }
    float line[TRANS_COPY_ROWS];
    for (int b0 = o0; b0 < o1; b0 += TRANS_COPY_ROWS) {
        int nb = o1 - b0 < TRANS_COPY_ROWS ? o1 - b0 : TRANS_COPY_ROWS;
        for (int i = 0; i < w->cols; i++) {
            widen_trun(ops, w, i, b0, nb, line);
            for (int r = 0; r < nb; r++)
                buf[(size_t)r * w->cols + i] = line[r];
        }
        mc_mat t = {.dtype = MC_DT_F32, .rows = nb, .cols = w->cols, .row_stride = (size_t)w->cols,
                    .data = buf};
        ops->rows_f(&t, x, n, ldx, y + b0, ldy, 0, nb);
    }
    free(buf);
}

/* ---- repacked rows (kernels.h: mc_mat_pack) ---- */

void mc_q8_0_x16_pack_row(const unsigned char *src, int nb, unsigned char *dst)
{
    int full = nb / 16 * 16;
    for (int b = 0; b < nb; b += 16) {
        int g = b < full ? 16 : 8; /* blocks in the group */
        unsigned char *grp = dst + (size_t)b * 32;
        for (int j = 0; j < g; j++) {
            const unsigned char *blk = src + (size_t)(b + j) * 34;
            memcpy(dst + (size_t)32 * nb + (size_t)2 * (b + j), blk, 2);
            for (int k = 0; k < 8; k++) {
                uint32_t v;
                memcpy(&v, blk + 2 + 4 * k, 4);
                v ^= 0x80808080u;
                memcpy(grp + (size_t)(k * g + j) * 4, &v, 4);
            }
        }
    }
}

void mc_q8_0_x16_unpack_row(const unsigned char *src, int nb, unsigned char *dst)
{
    for (int j = 0; j < nb; j++) {
        unsigned char *b = dst + (size_t)j * 34;
        memcpy(b, src + (size_t)32 * nb + (size_t)2 * j, 2);
        for (int i = 0; i < 32; i++)
            b[2 + i] = (unsigned char)(src[mc_x16_at(nb, j, i)] ^ 0x80u);
    }
}

/* The 256 six-bit values u[e] of a stored Q6_K block (dtype.c's order),
 * and back. */
static void q6_k_get(const mc_block_q6_k *b, uint8_t u[256])
{
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *ql = b->ql + 64 * h, qh = b->qh[32 * h + l];
            u[128 * h + l] = (uint8_t)((ql[l] & 0xF) | ((qh & 3) << 4));
            u[128 * h + l + 32] = (uint8_t)((ql[l + 32] & 0xF) | (((qh >> 2) & 3) << 4));
            u[128 * h + l + 64] = (uint8_t)((ql[l] >> 4) | (((qh >> 4) & 3) << 4));
            u[128 * h + l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh >> 6) & 3) << 4));
        }
}

static void q6_k_set(mc_block_q6_k *b, const uint8_t u[256])
{
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            uint8_t *ql = b->ql + 64 * h;
            const uint8_t *v = u + 128 * h + l;
            ql[l] = (uint8_t)((v[0] & 0xF) | (v[64] & 0xF) << 4);
            ql[l + 32] = (uint8_t)((v[32] & 0xF) | (v[96] & 0xF) << 4);
            b->qh[32 * h + l] =
                (uint8_t)((v[0] >> 4) | (v[32] >> 4) << 2 | (v[64] >> 4) << 4 | (v[96] >> 4) << 6);
        }
}

/* X16 order: V_k[i] (k < 4, i < 64) is value 16 (i / 4) + 4k + i % 4 */
static int q6_x16_elem(int k, int i) { return 16 * (i / 4) + 4 * k + i % 4; }

void mc_q6_k_x16_pack_row(const unsigned char *src, int nb, unsigned char *dst)
{
    for (int b = 0; b < nb; b++) {
        mc_block_q6_k in, out;
        uint8_t u[256];
        memcpy(&in, src + (size_t)b * sizeof in, sizeof in);
        q6_k_get(&in, u);
        out = in; /* scales and d in place */
        for (int i = 0; i < 64; i++) {
            uint8_t v0 = u[q6_x16_elem(0, i)], v1 = u[q6_x16_elem(1, i)];
            uint8_t v2 = u[q6_x16_elem(2, i)], v3 = u[q6_x16_elem(3, i)];
            out.ql[i] = (uint8_t)((v0 & 0xF) | (v1 & 0xF) << 4);
            out.ql[64 + i] = (uint8_t)((v2 & 0xF) | (v3 & 0xF) << 4);
            out.qh[i] = (uint8_t)((v0 >> 4) | (v1 >> 4) << 2 | (v2 >> 4) << 4 | (v3 >> 4) << 6);
        }
        memcpy(dst + (size_t)b * sizeof out, &out, sizeof out);
    }
}

void mc_q6_k_x16_unpack_row(const unsigned char *src, int nb, unsigned char *dst)
{
    for (int b = 0; b < nb; b++) {
        mc_block_q6_k in, out;
        uint8_t u[256];
        memcpy(&in, src + (size_t)b * sizeof in, sizeof in);
        for (int i = 0; i < 64; i++) {
            uint8_t lo = in.ql[i], hi = in.ql[64 + i], qh = in.qh[i];
            u[q6_x16_elem(0, i)] = (uint8_t)((lo & 0xF) | (qh & 3) << 4);
            u[q6_x16_elem(1, i)] = (uint8_t)((lo >> 4) | ((qh >> 2) & 3) << 4);
            u[q6_x16_elem(2, i)] = (uint8_t)((hi & 0xF) | ((qh >> 4) & 3) << 4);
            u[q6_x16_elem(3, i)] = (uint8_t)((hi >> 4) | ((qh >> 6) & 3) << 4);
        }
        out = in;
        q6_k_set(&out, u);
        memcpy(dst + (size_t)b * sizeof out, &out, sizeof out);
    }
}

/* Byte of the X16 nibbles holding value i (< 32) of sub-block s of
 * super-block b in a row of nb blocks, and whether it is the high nibble. */
static size_t q4_x16_at(int nb, int b, int s, int i, int *high)
{
    int k = i / 4, c = i % 4; /* chunk of 4 values */
    *high = k & 1;
    if (b < nb / 2 * 2) /* a pair: lanes 8 (b % 2) + s, 64-byte vectors */
        return (size_t)(b / 2) * 256 + (size_t)(k / 2) * 64 + (size_t)(8 * (b % 2) + s) * 4 + (size_t)c;
    return (size_t)(nb / 2) * 256 + (size_t)(k / 2) * 32 + (size_t)s * 4 + (size_t)c;
}

void mc_q4_k_x16_pack_row(const unsigned char *src, int nb, unsigned char *dst)
{
    memset(dst, 0, (size_t)nb * 128);
    for (int b = 0; b < nb; b++) {
        const unsigned char *blk = src + (size_t)b * sizeof(mc_block_q4_k);
        memcpy(dst + (size_t)nb * 128 + (size_t)b * 16, blk, 16); /* d, dmin, scales */
        for (int s = 0; s < 8; s++)
            for (int i = 0; i < 32; i++) {
                uint8_t q = blk[16 + 32 * (s / 2) + i];
                int high;
                size_t at = q4_x16_at(nb, b, s, i, &high);
                dst[at] |= (uint8_t)(((s & 1) ? q >> 4 : q & 0xF) << (high ? 4 : 0));
            }
    }
}

void mc_q4_k_x16_unpack_row(const unsigned char *src, int nb, unsigned char *dst)
{
    for (int b = 0; b < nb; b++) {
        unsigned char *blk = dst + (size_t)b * sizeof(mc_block_q4_k);
        memcpy(blk, src + (size_t)nb * 128 + (size_t)b * 16, 16);
        memset(blk + 16, 0, 128);
        for (int s = 0; s < 8; s++)
            for (int i = 0; i < 32; i++) {
                int high;
                size_t at = q4_x16_at(nb, b, s, i, &high); /* (sets high) */
                uint8_t v = (uint8_t)((src[at] >> (high ? 4 : 0)) & 0xF);
                blk[16 + 32 * (s / 2) + i] |= (uint8_t)(v << ((s & 1) ? 4 : 0));
            }
    }
}

/* Where the fifth bit of value i of sub-block s of Q5_K super-block b goes
 * in a MC_MAT_PACK_Q5_K_X16 row of nb (kernels.h): *byte from the row's
 * start, *bit within it. */
static void q5_x16_bit(int nb, int b, int s, int i, size_t *byte, int *bit)
{
    int high;
    size_t at = q4_x16_at(nb, b, s, i, &high), base, pos;
    if (b < nb / 2 * 2) { /* a pair: 64-bit masks over 64-byte vectors */
        size_t rel = at - (size_t)(b / 2) * 256;
        base = (size_t)nb * 128 + (size_t)(b / 2) * 64 + (rel / 64 * 2 + (size_t)high) * 8;
        pos = rel % 64;
    } else { /* the odd last one: 32-bit masks over 32-byte vectors */
        size_t rel = at - (size_t)(nb / 2) * 256;
        base = (size_t)nb * 128 + (size_t)(nb / 2) * 64 + (rel / 32 * 2 + (size_t)high) * 4;
        pos = rel % 32;
    }
    *byte = base + pos / 8;
    *bit = (int)(pos % 8);
}

void mc_q5_k_x16_pack_row(const unsigned char *src, int nb, unsigned char *dst)
{
    /* q4_x16_at and q5_x16_bit written out per super-block (the load-time repack of a
     * Q5_K_M file's experts is this loop; the unpack below keeps the plain form, which
     * test_kernels_kq reads every packed row back with) */
    memset(dst, 0, (size_t)nb * 160);
    for (int b = 0; b < nb; b++) {
        const unsigned char *blk = src + (size_t)b * sizeof(mc_block_q5_k);
        const unsigned char *qh = blk + 16, *qs = blk + 48;
        memcpy(dst + (size_t)nb * 160 + (size_t)b * 16, blk, 16); /* d, dmin, scales */
        int pair = b < nb / 2 * 2;
        size_t vbytes = pair ? 64 : 32, mbytes = pair ? 8 : 4;
        unsigned char *nib = dst + (size_t)(pair ? b / 2 : nb / 2) * 256;
        unsigned char *msk = dst + (size_t)nb * 128 + (size_t)(b / 2) * 64;
        int lane0 = pair ? 8 * (b % 2) : 0;
        for (int s = 0; s < 8; s++)
            for (int i = 0; i < 32; i++) {
                uint8_t q = qs[32 * (s / 2) + i];
                int p = i / 8, high = (i / 4) & 1, pos = (lane0 + s) * 4 + i % 4;
                nib[(size_t)p * vbytes + (size_t)pos] |=
                    (uint8_t)(((s & 1) ? q >> 4 : q & 0xF) << (high ? 4 : 0));
                msk[(size_t)(2 * p + high) * mbytes + (size_t)pos / 8] |=
                    (uint8_t)(((qh[i] >> s) & 1) << (pos % 8));
            }
    }
}

void mc_q5_k_x16_unpack_row(const unsigned char *src, int nb, unsigned char *dst)
{
    for (int b = 0; b < nb; b++) {
        unsigned char *blk = dst + (size_t)b * sizeof(mc_block_q5_k);
        memcpy(blk, src + (size_t)nb * 160 + (size_t)b * 16, 16);
        memset(blk + 16, 0, 160);
        for (int s = 0; s < 8; s++)
            for (int i = 0; i < 32; i++) {
                int high, bit;
                size_t at = q4_x16_at(nb, b, s, i, &high), byte; /* (sets high) */
                uint8_t v = (uint8_t)((src[at] >> (high ? 4 : 0)) & 0xF);
                blk[48 + 32 * (s / 2) + i] |= (uint8_t)(v << ((s & 1) ? 4 : 0));
                q5_x16_bit(nb, b, s, i, &byte, &bit);
                blk[16 + i] |= (uint8_t)(((src[byte] >> bit) & 1) << s);
            }
    }
}

size_t mc_bf16_direct_bytes(const mc_mat *w, int n, int kc)
{
    if (w->dtype != MC_DT_BF16 || w->scale || w->transposed || w->cols <= 0 ||
        n < MC_BF16_DIRECT_MIN_TOKENS)
        return 0;
    size_t kpad = ((size_t)w->cols + (size_t)kc - 1) / (size_t)kc * (size_t)kc;
    size_t nt = ((size_t)n + MC_FPACK_TOKENS - 1) / MC_FPACK_TOKENS * MC_FPACK_TOKENS;
    if (kpad > SIZE_MAX / sizeof(float) / nt)
        return 0; /* no repack: rows_f reads the rows */
    return nt * kpad * sizeof(float);
}

void mc_bf16_direct_rows(const mc_mat *w, const float *xp, size_t kpad, int n, int tt,
                         mc_bf16_tile_fn tile, float *y, int ldy, int r0, int r1)
{
    int tb = (int)((384u * 1024u) / (kpad * 4));
    tb = tb < tt ? tt : tb / tt * tt;
    for (int t0b = 0; t0b < n; t0b += tb) {
        int tn = n - t0b < tb ? n - t0b : tb;
        for (int o = r0; o < r1; o += 4) {
            int R = r1 - o < 4 ? r1 - o : 4;
            const uint16_t *wr[4];
            for (int r = 0; r < 4; r++) /* rows past r1 repeat the first (not stored) */
                wr[r] = (const uint16_t *)w->data + (size_t)(o + (r < R ? r : 0)) * w->row_stride;
            for (int t0 = 0; t0 < tn; t0 += tt)
                tile(tn - t0 < tt ? tn - t0 : tt, wr, R, xp + (size_t)(t0b + t0) * kpad, kpad,
                     w->cols, y + (size_t)(t0b + t0) * ldy + o, ldy);
        }
    }
}

/* Whether `ops` reads repacked rows of dtype dt itself (each layout
 * belongs to one dtype, kernels.h). */
static int ops_packs(const mc_kops *ops, mc_dtype dt)
{
    return (dt == MC_DT_Q8_0 && ops->packs_q8_0) || (dt == MC_DT_Q6_K && ops->packs_q6_k) ||
           (dt == MC_DT_Q4_K && ops->packs_q4_k) || (dt == MC_DT_Q5_K && ops->packs_q5_k);
}

int mc_kernels_packs(mc_dtype dt) { return ops_packs(mc_kops_current(), dt); }

/* The repacked layout of a dtype, its block and a row's repack / unpack. */
typedef struct {
    int layout, blk;
    size_t block_bytes;
    void (*pack)(const unsigned char *src, int nb, unsigned char *dst);
    void (*unpack)(const unsigned char *src, int nb, unsigned char *dst);
} pack_fmt;

static const pack_fmt *pack_fmt_of(int layout_or_0, mc_dtype dt)
{
    static const pack_fmt q8 = {MC_MAT_PACK_Q8_0_X16, MC_QK8_0, 34, mc_q8_0_x16_pack_row,
                                mc_q8_0_x16_unpack_row};
    static const pack_fmt q6 = {MC_MAT_PACK_Q6_K_X16, MC_QK_K, sizeof(mc_block_q6_k),
                                mc_q6_k_x16_pack_row, mc_q6_k_x16_unpack_row};
    if (layout_or_0 == MC_MAT_PACK_Q8_0_X16 || (!layout_or_0 && dt == MC_DT_Q8_0))
        return &q8;
    static const pack_fmt q4 = {MC_MAT_PACK_Q4_K_X16, MC_QK_K, sizeof(mc_block_q4_k),
                                mc_q4_k_x16_pack_row, mc_q4_k_x16_unpack_row};
    if (layout_or_0 == MC_MAT_PACK_Q6_K_X16 || (!layout_or_0 && dt == MC_DT_Q6_K))
        return &q6;
    if (layout_or_0 == MC_MAT_PACK_Q4_K_X16 || (!layout_or_0 && dt == MC_DT_Q4_K))
        return &q4;
    static const pack_fmt q5 = {MC_MAT_PACK_Q5_K_X16, MC_QK_K, sizeof(mc_block_q5_k),
                                mc_q5_k_x16_pack_row, mc_q5_k_x16_unpack_row};
    if (layout_or_0 == MC_MAT_PACK_Q5_K_X16 || (!layout_or_0 && dt == MC_DT_Q5_K))
        return &q5;
    return NULL;
}

typedef struct {
    unsigned char *p, *tmp; /* the matrix; a row of scratch per task */
    const pack_fmt *f;
    int rows, nb, chunk;
} pack_job;

static void pack_task(void *ctx, int task, int thread)
{
    (void)thread;
    const pack_job *j = ctx;
    size_t rb = (size_t)j->nb * j->f->block_bytes;
    unsigned char *tmp = j->tmp + (size_t)task * rb;
    int r1 = (task + 1) * j->chunk < j->rows ? (task + 1) * j->chunk : j->rows;
    for (int r = task * j->chunk; r < r1; r++) {
        unsigned char *at = j->p + (size_t)r * rb;
        memcpy(tmp, at, rb);
        j->f->pack(tmp, j->nb, at);
    }
}

int mc_mat_pack(mc_mat *w)
{
    if (!w->data || w->pack != MC_MAT_PACK_NONE || w->transposed || !mc_kernels_packs(w->dtype) ||
        w->rows <= 0 || w->cols <= 0 || w->cols % 256 != 0 || w->row_stride != (size_t)w->cols)
        return 0;
    const pack_fmt *f = pack_fmt_of(0, w->dtype);
    mc_pool *pool = mc_kernels_pool();
    int nt = pool ? mc_pool_threads(pool) : 1;
    /* the caller's own copy (see kernels.h) */
    pack_job j = {.p = (unsigned char *)w->data, .f = f, .rows = w->rows, .nb = w->cols / f->blk};
    j.chunk = (w->rows + 4 * nt - 1) / (4 * nt);
    int tasks = (w->rows + j.chunk - 1) / j.chunk;
    if (!(j.tmp = malloc((size_t)tasks * (size_t)j.nb * f->block_bytes)))
        return 0; /* stays as stored: every path reads that too */
    mc_pool_run(pool, tasks, pack_task, &j);
    free(j.tmp);
    w->pack = f->layout;
    return 1;
}

/* Rows UNPACK_ROWS at a time of a repacked matrix unpacked into a scratch
 * copy for a path that does not read the layout (same products as on the
 * unpacked matrix). */
#define UNPACK_ROWS 16

static void rows_unpacked(const mc_kops *ops, const mc_mat *w, const mc_qact *qa, float *y,
                          int ldy, int r0, int r1)
{
    const pack_fmt *f = pack_fmt_of(w->pack, w->dtype);
    int nb = w->cols / f->blk;
    size_t rb = (size_t)nb * f->block_bytes;
    unsigned char *buf = malloc(rb * UNPACK_ROWS);
    if (!buf) { /* no error channel: the rows read as zero */
        MC_ERROR("out of memory unpacking %d %s rows", UNPACK_ROWS, mc_dtype_name(w->dtype));
        for (int t = 0; t < qa->n; t++)
            memset(y + (size_t)t * ldy + r0, 0, (size_t)(r1 - r0) * sizeof *y);
        return;
    }
    for (int c0 = r0; c0 < r1; c0 += UNPACK_ROWS) {
        int nr = r1 - c0 < UNPACK_ROWS ? r1 - c0 : UNPACK_ROWS;
        for (int r = 0; r < nr; r++)
            f->unpack(mc_row_ptr(w, c0 + r), nb, buf + (size_t)r * rb);
        mc_mat t = *w;
        t.rows = nr;
        t.data = buf;
        t.pack = MC_MAT_PACK_NONE;
        if (w->dtype == MC_DT_Q6_K)
            ops->rows_q6_k(&t, qa, y + c0, ldy, 0, nr);
        else if (w->dtype == MC_DT_Q4_K)
            ops->rows_q4_k(&t, qa, y + c0, ldy, 0, nr);
        else if (w->dtype == MC_DT_Q5_K)
            ops->rows_q5_k(&t, qa, y + c0, ldy, 0, nr);
        else
            ops->rows_q8_0(&t, qa, y + c0, ldy, 0, nr);
    }
    free(buf);
}

static void mm_task(void *ctx, int task, int thread)
{
    const mm_job *j = ctx;
    int r0 = task * j->chunk, r1 = r0 + j->chunk;
    if (r1 > j->w->rows)
        r1 = j->w->rows;
    if (r0 >= r1)
        return;
    if (j->w->pack != MC_MAT_PACK_NONE && !ops_packs(j->ops, j->w->dtype)) {
        rows_unpacked(j->ops, j->w, j->qa, j->y, j->ldy, r0, r1);
        return;
    }
    if (j->w->transposed && j->n >= TRANS_COPY_MIN_TOKENS && !j->w->scale &&
        j->ops != &mc_kops_scalar)
        rows_transposed_copy(j->ops, j->w, j->x, j->n, j->ldx, j->y, j->ldy, r0, r1);
    else if (j->w->transposed)
        rows_transposed(j->ops, j->w, j->x, j->n, j->ldx, j->y, j->ldy, r0, r1);
    else if (j->w->dtype == MC_DT_Q8_0)
        j->ops->rows_q8_0(j->w, j->qa, j->y, j->ldy, r0, r1);
    else if (j->w->dtype == MC_DT_Q4_K)
        j->ops->rows_q4_k(j->w, j->qa, j->y, j->ldy, r0, r1);
    else if (j->w->dtype == MC_DT_Q6_K)
        j->ops->rows_q6_k(j->w, j->qa, j->y, j->ldy, r0, r1);
    else if (j->w->dtype == MC_DT_Q5_K)
        j->ops->rows_q5_k(j->w, j->qa, j->y, j->ldy, r0, r1);
    else if (j->fpack)
        j->ops->rows_f_packed(j->w, j->fpack, j->x, j->n, j->ldx, j->y, j->ldy, r0, r1);
    else
        j->ops->rows_f(j->w, j->x, j->n, j->ldx, j->y, j->ldy, r0, r1);
}

/* Products smaller than this many weight-element x token operations, and
 * of fewer than MM_PARALLEL_MIN_BYTES of weights, run on the calling
 * thread: waking workers costs more than they would save. The bytes count
 * for decode, where a product is a read of its weights: Qwen3-30B-A3B's
 * F32 router (128 x 2048, 1 MB, 0.26 M operations) from memory took 71 us
 * on one thread, 58 us on two (2-core Zen 4 VM, medians of 41). */
#define MM_PARALLEL_MIN (1 << 20)
#define MM_PARALLEL_MIN_BYTES ((size_t)512 << 10)

static void count_product(const mc_mat *w, int n)
{
    count(mc_mat_weight_bytes(w));
    if (atomic_load_explicit(&g_count_on, memory_order_relaxed))
        atomic_fetch_add_explicit(&g_macs, (uint64_t)w->rows * (uint64_t)w->cols * (uint64_t)n,
                                  memory_order_relaxed);
}

typedef struct {
    const mc_kops *ops;
    const mc_mat *w;
    const float *x;
    int ldx, kp, blk, chunk;
    mc_qact *qa;
} qrows_job;

/* Activation rows [task * chunk, +chunk) of a qrows_job. */
static void qrows_task(void *ctx, int task, int thread)
{
    const qrows_job *j = ctx;
    const mc_qact *qa = j->qa;
    int t1 = (task + 1) * j->chunk < qa->n ? (task + 1) * j->chunk : qa->n;
    int q6 = j->w->dtype == MC_DT_Q6_K, sub = q6 ? 16 : 32;
    int nd = j->kp / j->blk, ns = j->kp / sub;
    int16_t *bs = (int16_t *)(q6 ? qa->bsum16 : j->w->dtype != MC_DT_Q8_0 ? qa->bsum : NULL);
    for (int t = task * j->chunk; t < t1; t++)
        j->ops->quantize_act(j->x + (size_t)t * j->ldx, j->w->cols, j->kp, j->blk,
                             (int8_t *)qa->q + (size_t)t * j->kp, (float *)qa->d + (size_t)t * nd,
                             bs ? bs + (size_t)t * ns : NULL, sub);
}

/* ---- per-thread scratch ---- */

static pthread_once_t g_scratch_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_scratch_key; /* its destructor frees a thread's scratch */
static int g_scratch_ok;
static _Thread_local void *t_scratch;
static _Thread_local size_t t_scratch_cap;

static void scratch_once(void) { g_scratch_ok = pthread_key_create(&g_scratch_key, free) == 0; }

void *mc_kern_scratch(size_t bytes)
{
    if (bytes <= t_scratch_cap)
        return t_scratch;
    pthread_once(&g_scratch_once, scratch_once);
    size_t cap = (bytes + 4095) & ~(size_t)4095;
    void *p = g_scratch_ok && cap >= bytes ? aligned_alloc(64, cap) : NULL;
    if (!p)
        return NULL;
    free(t_scratch);
    t_scratch = p;
    t_scratch_cap = cap;
    pthread_setspecific(g_scratch_key, p);
    return p;
}

/* Activation values quantized on the calling thread below this (waking the
 * pool costs more). */
#define QUANT_PARALLEL_MIN (1 << 18)

/* Quantizes the n activation rows of a product with block weights into
 * *qa, plus the path's own repack when it wants one (ops->pack_qact); rows
 * split over `pool` (NULL: this thread) when there are many. Returns the
 * storage behind *qa, repack included (the caller frees it), or NULL when
 * out of memory. */
static void *quantize_acts(const mc_kops *ops, const mc_mat *w, const float *x, int n, int ldx,
                           mc_qact *qa, mc_pool *pool)
{
    int blk = w->dtype == MC_DT_Q8_0 ? MC_QK8_0 : MC_QK_K;
    /* the blocks that hold cols (a view may start inside a wider row: row_stride only
     * places the rows) */
    int kp = (w->cols + blk - 1) / blk * blk;
    /* the sums: per 32 values (Q4_K's mins), per 16 (Q6_K's offset) */
    size_t nq = (size_t)n * kp, nd = (size_t)n * (kp / blk),
           ns = (size_t)n * (kp / (w->dtype == MC_DT_Q6_K ? 16 : 32));
    size_t npack = ops->pack_qact_bytes ? ops->pack_qact_bytes(w, n) : 0;
    /* (q | d | bsum), then the repack on a 64-byte boundary */
    size_t base = (nq + nd * sizeof(float) + ns * sizeof(int16_t) + 16 + 63) & ~(size_t)63;
    void *qbuf = npack ? aligned_alloc(64, (base + npack + 63) & ~(size_t)63)
                       : malloc(nq + nd * sizeof(float) + ns * sizeof(int16_t) + 16);
    if (!qbuf) { /* out of memory mid-product: no error channel; the caller zeroes y */
        MC_ERROR("out of memory quantizing %d activations for a %s product", n,
                 mc_dtype_name(w->dtype));
        return NULL;
    }
    float *d = (float *)((char *)qbuf + ((nq + 3) & ~(size_t)3));
    int16_t *bs = (int16_t *)(d + nd);
    *qa = (mc_qact){.n = n, .kp = kp, .q = qbuf, .d = d};
    if (w->dtype == MC_DT_Q6_K)
        qa->bsum16 = bs;
    else
        qa->bsum = bs;
    qrows_job j = {.ops = ops, .w = w, .x = x, .ldx = ldx, .kp = kp, .blk = blk, .chunk = n, .qa = qa};
    if (pool && nq >= QUANT_PARALLEL_MIN && n >= 8) {
        j.chunk = (n + 4 * mc_pool_threads(pool) - 1) / (4 * mc_pool_threads(pool));
        mc_pool_run(pool, (n + j.chunk - 1) / j.chunk, qrows_task, &j);
    } else {
        qrows_task(&j, 0, 0);
    }
    if (npack) {
        ops->pack_qact(w, qa, (char *)qbuf + base);
        qa->pack = (char *)qbuf + base;
    }
    return qbuf;
}

typedef struct {
    const mc_kops *ops;
    const mc_mat *w;
    const float *x;
    int n, ldx, nt, per; /* token tiles in all, per task */
    void *dst;
} fpack_job;

static void fpack_task(void *ctx, int task, int thread)
{
    (void)thread;
    const fpack_job *j = ctx;
    int tt0 = task * j->per, tt1 = tt0 + j->per < j->nt ? tt0 + j->per : j->nt;
    if (tt0 < tt1)
        j->ops->pack_f(j->w, j->x, j->n, j->ldx, j->dst, tt0, tt1);
}

/* The path's repack of the f32 activations of a product with element-type
 * weights (ops->pack_f), split over `pool` by token tiles when large; NULL
 * when the path wants none for this product, or when out of memory (rows_f
 * needs no repack). The caller frees it. */
static void *pack_acts_f(const mc_kops *ops, const mc_mat *w, const float *x, int n, int ldx,
                         mc_pool *pool)
{
    size_t bytes = ops->pack_f_bytes ? ops->pack_f_bytes(w, n) : 0;
    void *buf = bytes ? aligned_alloc(64, (bytes + 63) & ~(size_t)63) : NULL;
    if (!buf)
        return NULL;
    int nt = (n + MC_FPACK_TOKENS - 1) / MC_FPACK_TOKENS;
    fpack_job j = {.ops = ops, .w = w, .x = x, .n = n, .ldx = ldx, .nt = nt, .per = nt, .dst = buf};
    if (pool && (size_t)n * (size_t)w->cols >= QUANT_PARALLEL_MIN && nt >= 2) {
        int th = mc_pool_threads(pool);
        j.per = (nt + 2 * th - 1) / (2 * th);
        mc_pool_run(pool, (nt + j.per - 1) / j.per, fpack_task, &j);
    } else {
        fpack_task(&j, 0, 0);
    }
    return buf;
}

static void zero_out(const mc_mat *w, int n, float *y, int ldy)
{
    for (int t = 0; t < n; t++)
        memset(y + (size_t)t * ldy, 0, (size_t)w->rows * sizeof *y);
}

void mc_matmul(const mc_mat *w, const float *x, int n, int ldx, float *y, int ldy)
{
    if (n <= 0 || w->rows <= 0)
        return;
    count_product(w, n);
    const mc_kops *ops = mc_kops_current();
    float *xr = NULL;
    if (rounds_acts(w)) {
        if (!(xr = round_acts_bf16(w, x, n, ldx))) {
            zero_out(w, n, y, ldy);
            return;
        }
        x = xr;
        ldx = w->cols;
    }
    mm_job j = {.ops = ops, .w = w, .x = x, .n = n, .ldx = ldx, .ldy = ldy, .y = y};
    mc_qact qa;
    void *qbuf = NULL;
    double work = (double)w->rows * w->cols * n;
    mc_pool *pool = work >= MM_PARALLEL_MIN || mc_mat_weight_bytes(w) >= MM_PARALLEL_MIN_BYTES
                        ? mc_kernels_pool()
                        : NULL;
    if (mc_dtype_is_block(w->dtype)) {
        if (!(qbuf = quantize_acts(ops, w, x, n, ldx, &qa, pool))) {
            zero_out(w, n, y, ldy);
            return;
        }
        j.qa = &qa;
    } else {
        j.fpack = qbuf = pack_acts_f(ops, w, x, n, ldx, pool);
    }
    int nt = pool ? mc_pool_threads(pool) : 1;
    if (nt <= 1) {
        j.chunk = w->rows;
        mm_task(&j, 0, 0);
    } else {
        /* a few tasks per thread, in multiples of 16 rows */
        int chunk = (w->rows + 4 * nt - 1) / (4 * nt);
        chunk = (chunk + 15) & ~15;
        j.chunk = chunk;
        mc_pool_run(pool, (w->rows + chunk - 1) / chunk, mm_task, &j);
    }
    free(qbuf);
    free(xr);
}

/* ---- several products as one parallel loop ---- */

typedef struct {
    mm_job *jobs;    /* [count] */
    int *first;      /* [count + 1]: task index of each job's first row chunk */
    int count;
} many_job;

static void many_task(void *ctx, int task, int thread)
{
    const many_job *m = ctx;
    int lo = 0, hi = m->count - 1; /* the job whose task range holds `task` */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (m->first[mid] <= task)
            lo = mid;
        else
            hi = mid - 1;
    }
    mm_task(&m->jobs[lo], task - m->first[lo], thread);
}

typedef struct {
    mm_job *jobs;  /* [n] */
    mc_qact *qas;  /* [n] */
    void **qbufs;  /* [n], NULL where no block weights or out of memory */
    float **xrs;   /* [n], activations rounded to bf16 (rounds_acts), else NULL */
} quant_many;

/* Quantizes the activations of job `task` when its weights are blocks,
 * else makes the path's repack of them if it wants one. */
static void quant_many_task(void *ctx, int task, int thread)
{
    const quant_many *q = ctx;
    mm_job *j = &q->jobs[task];
    if (rounds_acts(j->w)) {
        if (!(q->xrs[task] = round_acts_bf16(j->w, j->x, j->n, j->ldx)))
            return; /* dropped by the caller */
        j->x = q->xrs[task];
        j->ldx = j->w->cols;
    }
    if (!mc_dtype_is_block(j->w->dtype)) {
        j->fpack = q->qbufs[task] = pack_acts_f(j->ops, j->w, j->x, j->n, j->ldx, NULL);
        return;
    }
    q->qbufs[task] = quantize_acts(j->ops, j->w, j->x, j->n, j->ldx, &q->qas[task], NULL);
    j->qa = q->qbufs[task] ? &q->qas[task] : NULL;
}

/* Each product keeps its own rows-per-task (a multiple of 16, as
 * mc_matmul's split) so that a task streams one contiguous run of one
 * matrix; every output is computed by the same kernel over the same rows as
 * in mc_matmul, so results are bitwise equal to calling it per item. */
void mc_matmul_many(const mc_matmul_item *items, int count)
{
    if (count <= 0)
        return;
    if (count == 1) {
        mc_matmul(items[0].w, items[0].x, items[0].n, items[0].ldx, items[0].y, items[0].ldy);
        return;
    }
    mm_job *jobs = malloc((size_t)count * sizeof *jobs);
    mc_qact *qas = malloc((size_t)count * sizeof *qas);
    void **qbufs = calloc((size_t)count, sizeof *qbufs);
    float **xrs = calloc((size_t)count, sizeof *xrs);
    int *first = malloc(((size_t)count + 1) * sizeof *first);
    if (!jobs || !qas || !qbufs || !xrs || !first) { /* no error channel: one at a time */
        free(jobs);
        free(qas);
        free(qbufs);
        free(xrs);
        free(first);
        for (int i = 0; i < count; i++)
            mc_matmul(items[i].w, items[i].x, items[i].n, items[i].ldx, items[i].y, items[i].ldy);
        return;
    }
    const mc_kops *ops = mc_kops_current();
    double total = 0, qtotal = 0;
    int nj = 0;
    for (int i = 0; i < count; i++) {
        const mc_matmul_item *it = &items[i];
        if (it->n <= 0 || it->w->rows <= 0)
            continue;
        count_product(it->w, it->n);
        jobs[nj] = (mm_job){.ops = ops, .w = it->w, .x = it->x, .n = it->n, .ldx = it->ldx,
                            .ldy = it->ldy, .y = it->y, .chunk = it->w->rows};
        if (mc_dtype_is_block(it->w->dtype) || ops->pack_f_bytes)
            qtotal += (double)it->n * it->w->cols;
        total += (double)it->w->rows * it->w->cols * it->n;
        nj++;
    }
    mc_pool *pool = total >= MM_PARALLEL_MIN ? mc_kernels_pool() : NULL;
    /* the activations of the block products, one task per product */
    quant_many qm = {.jobs = jobs, .qas = qas, .qbufs = qbufs, .xrs = xrs};
    if (pool && qtotal >= QUANT_PARALLEL_MIN)
        mc_pool_run(pool, nj, quant_many_task, &qm);
    else
        for (int i = 0; i < nj; i++)
            quant_many_task(&qm, i, 0);
    int kept = 0; /* drop the products whose activations could not be quantized or rounded */
    for (int i = 0; i < nj; i++) {
        if ((mc_dtype_is_block(jobs[i].w->dtype) && !qbufs[i]) ||
            (rounds_acts(jobs[i].w) && !xrs[i])) {
            zero_out(jobs[i].w, jobs[i].n, jobs[i].y, jobs[i].ldy);
            total -= (double)jobs[i].w->rows * jobs[i].w->cols * jobs[i].n;
            free(qbufs[i]);
            continue;
        }
        jobs[kept] = jobs[i];
        qbufs[kept] = qbufs[i];
        xrs[kept] = xrs[i];
        qas[kept] = qas[i];
        if (jobs[kept].qa)
            jobs[kept].qa = &qas[kept];
        kept++;
    }
    for (int i = kept; i < nj; i++)
        qbufs[i] = NULL, xrs[i] = NULL;
    nj = kept;
    int nt = pool ? mc_pool_threads(pool) : 1;
    first[0] = 0;
    for (int i = 0; i < nj; i++) {
        int tasks = 1;
        if (nt > 1) {
            /* its share of about 4 tasks per thread over all products */
            const mc_mat *w = jobs[i].w;
            double share = (double)w->rows * w->cols * jobs[i].n / total * 4.0 * nt;
            int want = share < 1.0 ? 1 : share > w->rows ? w->rows : (int)(share + 0.5);
            int chunk = (w->rows + want - 1) / want;
            chunk = (chunk + 15) & ~15;
            jobs[i].chunk = chunk;
            tasks = (w->rows + chunk - 1) / chunk;
        }
        first[i + 1] = first[i] + tasks;
    }
    many_job m = {.jobs = jobs, .first = first, .count = nj};
    if (nj > 0) {
        if (nt <= 1)
            for (int t = 0; t < first[nj]; t++)
                many_task(&m, t, 0);
        else
            mc_pool_run(pool, first[nj], many_task, &m);
    }
    for (int i = 0; i < nj; i++) {
        free(qbufs[i]);
        free(xrs[i]);
    }
    free(jobs);
    free(qas);
    free(qbufs);
    free(xrs);
    free(first);
}

void mc_mat_row_f32(const mc_mat *w, int r, float *dst)
{
    const mc_kops *ops = mc_kops_current();
    count(mc_dtype_is_block(w->dtype) ? mc_dtype_row_bytes(w->dtype, w->cols)
                                      : (size_t)w->cols * mc_dtype_size(w->dtype));
    if (w->pack != MC_MAT_PACK_NONE) {
        const pack_fmt *f = pack_fmt_of(w->pack, w->dtype);
        int nb = w->cols / f->blk;
        unsigned char *row = malloc((size_t)nb * f->block_bytes);
        if (!row) { /* no error channel */
            MC_ERROR("out of memory unpacking a %s row", mc_dtype_name(w->dtype));
            memset(dst, 0, (size_t)w->cols * sizeof *dst);
            return;
        }
        f->unpack(mc_row_ptr(w, r), nb, row);
        mc_dequantize_row(w->dtype, row, dst, w->cols);
        free(row);
        return;
    }
    if (mc_dtype_is_block(w->dtype)) {
        mc_dequantize_row(w->dtype, mc_row_ptr(w, r), dst, w->cols);
        return;
    }
    size_t es = mc_dtype_size(w->dtype);
    if (!w->transposed) {
        ops->widen(w->dtype, (const unsigned char *)w->data + (size_t)r * w->row_stride * es,
                   w->cols, dst);
        if (w->scale) {
            const float *srow = w->scale + (size_t)(r / w->block_rows) * (size_t)w->scale_cols;
            for (int i = 0; i < w->cols; i++)
                dst[i] *= srow[i / w->block_cols];
        }
        return;
    }
    for (int i = 0; i < w->cols; i++)
        ops->widen(w->dtype, (const unsigned char *)w->data + ((size_t)i * w->row_stride + (size_t)r) * es,
                   1, dst + i);
}

size_t mc_mat_weight_bytes(const mc_mat *w)
{
    size_t b;
    if (mc_dtype_is_block(w->dtype))
        b = (size_t)w->rows * mc_dtype_row_bytes(w->dtype, w->cols);
    else
        b = (size_t)w->rows * (size_t)w->cols * mc_dtype_size(w->dtype);
    if (w->scale)
        b += (size_t)((w->rows + w->block_rows - 1) / w->block_rows) * (size_t)w->scale_cols *
             sizeof(float);
    return b;
}

/* ---- element-wise ---- */

float mc_dot(const float *a, const float *b, int n) { return mc_kops_current()->dot(a, b, n); }

void mc_axpy(float *y, float a, const float *x, int n) { mc_kops_current()->axpy(y, a, x, n); }

void mc_dot_many(const float *const *a, int m, const float *b, int n, float *out)
{
    const mc_kops *ops = mc_kops_current();
    if (ops->dot_many) {
        ops->dot_many(a, m, b, n, out);
        return;
    }
    for (int j = 0; j < m; j++)
        out[j] = ops->dot(a[j], b, n);
}

void mc_wsum_rows(float *const *y, int m, const float *a, const float *const *rows, int S, int n,
                  int skip_zero)
{
    const mc_kops *ops = mc_kops_current();
    if (ops->wsum_rows) {
        ops->wsum_rows(y, m, a, rows, S, n, skip_zero);
        return;
    }
    for (int j = 0; j < m; j++) {
        memset(y[j], 0, (size_t)n * sizeof *y[j]);
        for (int i = 0; i < S; i++)
            if (!skip_zero || a[(size_t)i * m + j] != 0.0f)
                ops->axpy(y[j], a[(size_t)i * m + j], rows[i], n);
    }
}

static void widen_bf16(const uint16_t *b, int n, float *out)
{
    for (int i = 0; i < n; i++)
        out[i] = mc_bf16_to_f32(b[i]);
}

void mc_dot_many_bf16(const float *const *a, int m, const uint16_t *b, int n, float *out)
{
    const mc_kops *ops = mc_kops_current();
    if (ops->dot_many_bf16) {
        ops->dot_many_bf16(a, m, b, n, out);
        return;
    }
    float f[MC_BF16_ROW_MAX];
    widen_bf16(b, n, f);
    mc_dot_many(a, m, f, n, out);
}

void mc_wsum_rows_bf16(float *const *y, int m, const float *a, const uint16_t *const *rows, int S,
                       int n, int skip_zero)
{
    const mc_kops *ops = mc_kops_current();
    if (ops->wsum_rows_bf16) {
        ops->wsum_rows_bf16(y, m, a, rows, S, n, skip_zero);
        return;
    }
    /* each y[j] sees the rows in order, as mc_wsum_rows' loop: the same bits */
    float f[MC_BF16_ROW_MAX];
    for (int j = 0; j < m; j++)
        memset(y[j], 0, (size_t)n * sizeof *y[j]);
    for (int i = 0; i < S; i++) {
        widen_bf16(rows[i], n, f);
        for (int j = 0; j < m; j++)
            if (!skip_zero || a[(size_t)i * m + j] != 0.0f)
                ops->axpy(y[j], a[(size_t)i * m + j], f, n);
    }
}

void mc_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    mc_kops_current()->rmsnorm(out, x, w, n, eps);
}

void mc_softmax(float *x, int n) { mc_kops_current()->softmax(x, n); }

void mc_swiglu(float *g, const float *u, int n) { mc_kops_current()->swiglu(g, u, n); }

int mc_argmax_masked(const float *v, const unsigned char *ok, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (ok[i] && (best < 0 || v[i] > v[best]))
            best = i;
    return best;
}

float mc_top2_sum(const float *c, int n)
{
    int a = 0;
    for (int i = 1; i < n; i++)
        if (c[i] > c[a])
            a = i;
    int b = a == 0 ? 1 : 0;
    for (int i = 0; i < n; i++)
        if (i != a && c[i] > c[b])
            b = i;
    return c[a] + c[b];
}

void mc_rope_rotate(float *v, int dim, int interleaved, const float *cos, const float *sin)
{
    mc_kops_current()->rope(v, dim, interleaved, cos, sin);
}
