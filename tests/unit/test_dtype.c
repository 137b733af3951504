/* test_dtype.c - scalar conversions (BF16, F16, FP8 E4M3), FP8 block
 * dequantization through mc_mat, RoPE rotation and RoPE frequencies
 * (default, YaRN, llama3), each against an independent computation. */
#include "check.h"
#include "dtype.h"
#include "kernels.h"
#include "model_config.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* Counts mismatches of a loop and prints only the first few. */
#define MISMATCH(counter, ...)                                                                     \
    do {                                                                                           \
        if ((counter)++ < 5) {                                                                     \
            fprintf(stderr, "  mismatch: ");                                                       \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static float f_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_next(void)
{
    uint64_t x = rng_state; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}
static float rng_uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rng_next() >> 40) * (1.0 / 16777216.0));
}

/* ---- dtype table ---- */

static void test_dtype_table(void)
{
    static const struct {
        const char *name;
        size_t size;
    } want[MC_DT_COUNT] = {{"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1},
                           {"I64", 8}, {"I32", 4}, {"U8", 1}};
    for (int i = 0; i < MC_DT_COUNT; i++) {
        mc_dtype dt = (mc_dtype)-1;
        CHECKF(!strcmp(mc_dtype_name((mc_dtype)i), want[i].name), "name of %d: %s", i,
               mc_dtype_name((mc_dtype)i));
        CHECKF(mc_dtype_size((mc_dtype)i) == want[i].size, "size of %s", want[i].name);
        CHECKF(mc_dtype_from_name(want[i].name, &dt) == 0 && dt == (mc_dtype)i, "parse %s",
               want[i].name);
    }
    static const char *const bad[] = {"F64", "Q9", "bf16", "", "F8_E5M2", "BF16 ", "BOOL"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mc_dtype dt;
        CHECKF(mc_dtype_from_name(bad[i], &dt) == -1, "'%s' accepted", bad[i]);
    }
    CHECK(mc_dtype_size(MC_DT_COUNT) == 0);
}

/* ---- BF16 ---- */

/* Reference f32 -> bf16: pick the nearer of the two bf16 neighbours by
 * exact double arithmetic, ties to the even code; the code above the
 * largest finite bf16 counts as 2^128 (it rounds to infinity). */
static uint16_t ref_f32_to_bf16(float f)
{
    uint32_t u = bits_of(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t mag = u & 0x7fffffffu;
    if (mag >= 0x7f800000u) /* inf / NaN handled by the caller */
        return (uint16_t)(sign | (mag >> 16));
    uint16_t lo = (uint16_t)(mag >> 16), hi = (uint16_t)(lo + 1);
    double x = fabs((double)f);
    double vlo = (double)f_from_bits((uint32_t)lo << 16);
    double vhi = hi == 0x7f80 ? ldexp(1.0, 128) : (double)f_from_bits((uint32_t)hi << 16);
    uint16_t r;
    if (x - vlo < vhi - x)
        r = lo;
    else if (x - vlo > vhi - x)
        r = hi;
    else
        r = (lo & 1) ? hi : lo;
    return (uint16_t)(sign | r);
}

static void test_bf16(void)
{
    /* exact cases */
    static const struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x3f800000u, 0x3f80}, /* 1.0 */
        {0x3f808000u, 0x3f80}, /* halfway, even below */
        {0x3f818000u, 0x3f82}, /* halfway, even above */
        {0x3f808001u, 0x3f81}, /* just above halfway */
        {0x3f807fffu, 0x3f80}, /* just below halfway */
        {0xbf808000u, 0xbf80}, /* negative halfway */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to infinity */
        {0x7f7f7fffu, 0x7f7f}, /* stays finite */
        {0x7f800000u, 0x7f80}, /* +inf */
        {0xff800000u, 0xff80}, /* -inf */
        {0x00008000u, 0x0000}, /* subnormal halfway to even 0 */
        {0x00018000u, 0x0002}, /* subnormal halfway to even 2 */
        {0x80000000u, 0x8000}, /* -0 */
        {0x40490fdbu, 0x4049}, /* pi */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = mc_f32_to_bf16(f_from_bits(cases[i].in));
        CHECKF(got == cases[i].out, "bf16(0x%08x) = 0x%04x, expected 0x%04x", cases[i].in, got,
               cases[i].out);
    }
    /* NaN stays NaN (never becomes infinity), sign kept */
    static const uint32_t nans[] = {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu,
                                    0x7f80ffffu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = mc_f32_to_bf16(f_from_bits(nans[i]));
        CHECKF((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0 && (h & 0x8000) == ((nans[i] >> 16) & 0x8000),
               "bf16(NaN 0x%08x) = 0x%04x", nans[i], h);
        CHECKF(isnan(mc_bf16_to_f32(h)), "bf16 0x%04x does not decode to NaN", h);
    }
    /* all 65536 codes: decode is the upper half of the f32; encode(decode) is identity */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = mc_bf16_to_f32((uint16_t)h);
        if (bits_of(f) != h << 16)
            MISMATCH(bad, "bf16 0x%04x decodes to 0x%08x", h, bits_of(f));
        if (isnan(f))
            continue;
        uint16_t back = mc_f32_to_bf16(f);
        if (back != h)
            MISMATCH(bad, "bf16 0x%04x -> %g -> 0x%04x", h, f, back);
    }
    CHECKF(bad == 0, "%d bf16 round-trip mismatches", bad);
    /* random f32 against the reference rounding */
    bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)rng_next();
        if (i & 1) /* also concentrate on exact and near halfway points */
            u = (u & 0xffff0000u) | (0x8000u + (uint32_t)(i % 5) - 2u);
        float f = f_from_bits(u);
        if (isnan(f))
            continue;
        uint16_t got = mc_f32_to_bf16(f), want = ref_f32_to_bf16(f);
        if (got != want)
            MISMATCH(bad, "bf16(0x%08x) = 0x%04x, reference 0x%04x", u, got, want);
    }
    CHECKF(bad == 0, "%d random bf16 mismatches", bad);
}

/* ---- F16 ---- */

/* Reference decode from the IEEE half layout. */
static double ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0)
        v = ldexp(m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static void test_f16(void)
{
    static const struct {
        uint16_t h;
        double v;
    } known[] = {
        {0x3c00, 1.0},           {0xc000, -2.0},           {0x7bff, 65504.0},
        {0x0400, 0x1p-14},       {0x0001, 0x1p-24},        {0x03ff, 1023 * 0x1p-24},
        {0x3555, 0.333251953125}, {0x4248, 3.140625},      {0x3800, 0.5},
        {0xfbff, -65504.0},      {0x7c00, INFINITY},       {0xfc00, -INFINITY},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        float f = mc_f16_to_f32(known[i].h);
        CHECKF((double)f == known[i].v, "f16 0x%04x = %.17g, expected %.17g", known[i].h, f,
               known[i].v);
        uint16_t back = mc_f32_to_f16((float)known[i].v);
        CHECKF(back == known[i].h, "encode %.17g = 0x%04x, expected 0x%04x", known[i].v, back,
               known[i].h);
    }
    CHECK(signbit(mc_f16_to_f32(0x8000)) && mc_f16_to_f32(0x8000) == 0.0f);
    CHECK(mc_f32_to_f16(-0.0f) == 0x8000);
    CHECK(isnan(mc_f16_to_f32(0x7e00)) && isnan(mc_f16_to_f32(0x7c01)) &&
          isnan(mc_f16_to_f32(0xfe00)));
    uint16_t hn = mc_f32_to_f16(NAN);
    CHECKF((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff), "encode NaN = 0x%04x", hn);

    /* rounding: ties to even, overflow, subnormals */
    static const struct {
        float f;
        uint16_t h;
    } enc[] = {
        {1.0f + 0x1p-11f, 0x3c00},       /* tie -> even 0x3c00 */
        {1.0f + 3 * 0x1p-11f, 0x3c02},   /* tie -> even 0x3c02 */
        {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01},
        {65519.0f, 0x7bff},              /* below the overflow tie */
        {65520.0f, 0x7c00},              /* the tie rounds to infinity */
        {1e9f, 0x7c00},
        {-1e9f, 0xfc00},
        {INFINITY, 0x7c00},
        {0x1p-25f, 0x0000},              /* tie between 0 and the smallest subnormal */
        {0x1p-25f + 0x1p-40f, 0x0001},
        {3 * 0x1p-25f, 0x0002},          /* 1.5 ulp: tie -> even 2 */
        {1023.5f * 0x1p-24f, 0x0400},    /* largest subnormal tie -> smallest normal */
        {1e-10f, 0x0000},
        {-1e-10f, 0x8000},
    };
    for (size_t i = 0; i < sizeof enc / sizeof enc[0]; i++) {
        uint16_t got = mc_f32_to_f16(enc[i].f);
        CHECKF(got == enc[i].h, "f16(%.9g) = 0x%04x, expected 0x%04x", enc[i].f, got, enc[i].h);
    }

    /* all 65536 codes: decode matches the reference; encode(decode) is identity */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = mc_f16_to_f32((uint16_t)h);
        double r = ref_f16((uint16_t)h);
        if (isnan(r)) {
            if (!isnan(f))
                MISMATCH(bad, "f16 0x%04x should be NaN, got %g", h, f);
            continue;
        }
        if ((double)f != r || !signbit(f) != !signbit(r))
            MISMATCH(bad, "f16 0x%04x decodes to %.9g, expected %.9g", h, f, r);
        uint16_t back = mc_f32_to_f16(f);
        if (back != h)
            MISMATCH(bad, "f16 0x%04x -> %.9g -> 0x%04x", h, f, back);
    }
    CHECKF(bad == 0, "%d f16 decode / round-trip mismatches", bad);

    /* every rounding boundary between adjacent positive codes: the midpoint
     * (exact in f32) goes to the even code, its neighbours to the near side */
    bad = 0;
    for (uint32_t c = 0; c < 0x7c00; c++) {
        double lo = ref_f16((uint16_t)c);
        double hi = c + 1 == 0x7c00 ? 65536.0 : ref_f16((uint16_t)(c + 1));
        float mid = (float)((lo + hi) / 2);
        uint16_t even = (c & 1) ? (uint16_t)(c + 1) : (uint16_t)c;
        uint16_t g0 = mc_f32_to_f16(nextafterf(mid, 0.0f)), g1 = mc_f32_to_f16(mid),
                 g2 = mc_f32_to_f16(nextafterf(mid, INFINITY));
        if (g0 != c || g1 != even || g2 != c + 1)
            MISMATCH(bad, "boundary 0x%04x/0x%04x: below 0x%04x, at 0x%04x, above 0x%04x", c,
                     c + 1, g0, g1, g2);
        uint16_t n1 = mc_f32_to_f16(-mid);
        if (n1 != (0x8000 | even))
            MISMATCH(bad, "negative boundary 0x%04x: 0x%04x", c, n1);
    }
    CHECKF(bad == 0, "%d f16 rounding-boundary mismatches", bad);
}

/* ---- FP8 E4M3 ---- */

static double ref_fp8(uint8_t v)
{
    int s = v >> 7, e = (v >> 3) & 0xf, m = v & 7;
    double r;
    if (e == 15 && m == 7)
        return NAN;
    if (e == 0)
        r = (m / 8.0) * ldexp(1.0, -6);
    else
        r = (1.0 + m / 8.0) * ldexp(1.0, e - 7);
    return s ? -r : r;
}

static void test_fp8(void)
{
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        float a = mc_fp8_e4m3_to_f32((uint8_t)c), b = mc_fp8_e4m3_decode((uint8_t)c);
        double r = ref_fp8((uint8_t)c);
        if (isnan(r)) {
            if (!isnan(a) || !isnan(b))
                MISMATCH(bad, "fp8 0x%02x: %g / %g, expected NaN", c, a, b);
            continue;
        }
        if (bits_of(a) != bits_of(b))
            MISMATCH(bad, "fp8 0x%02x: to_f32 %.9g (0x%08x) != decode %.9g (0x%08x)", c, a,
                     bits_of(a), b, bits_of(b));
        if ((double)a != r || !signbit(a) != !signbit(r))
            MISMATCH(bad, "fp8 0x%02x: %.9g, reference %.9g", c, a, r);
    }
    CHECKF(bad == 0, "%d fp8 decode mismatches", bad);

    static const struct {
        uint8_t c;
        float v;
    } known[] = {{0x7e, 448.0f}, {0xfe, -448.0f}, {0x08, 0x1p-6f}, {0x01, 0x1p-9f},
                 {0x07, 7 * 0x1p-9f}, {0x38, 1.0f}, {0x39, 1.125f}, {0x40, 2.0f},
                 {0x00, 0.0f}, {0x77, 240.0f}, {0x7d, 416.0f}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        CHECKF(mc_fp8_e4m3_to_f32(known[i].c) == known[i].v, "fp8 0x%02x = %.9g, expected %.9g",
               known[i].c, mc_fp8_e4m3_to_f32(known[i].c), known[i].v);
        CHECKF(mc_fp8_e4m3_decode(known[i].c) == known[i].v, "decode 0x%02x = %.9g",
               known[i].c, mc_fp8_e4m3_decode(known[i].c));
    }
    CHECK(isnan(mc_fp8_e4m3_to_f32(0x7f)) && isnan(mc_fp8_e4m3_to_f32(0xff)));
    CHECK(isnan(mc_fp8_e4m3_decode(0x7f)) && isnan(mc_fp8_e4m3_decode(0xff)));
    CHECK(signbit(mc_fp8_e4m3_to_f32(0x80)) && mc_fp8_e4m3_to_f32(0x80) == 0.0f);

    /* encode(decode(c)) == c for all finite codes, -0 included */
    bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f)
            continue;
        uint8_t back = mc_f32_to_fp8_e4m3(mc_fp8_e4m3_to_f32((uint8_t)c));
        if (back != c)
            MISMATCH(bad, "fp8 0x%02x -> %g -> 0x%02x", c, mc_fp8_e4m3_to_f32((uint8_t)c), back);
    }
    CHECKF(bad == 0, "%d fp8 round-trip mismatches", bad);

    /* rounding between neighbours: midpoint to the even code */
    bad = 0;
    for (int c = 0; c < 0x7e; c++) {
        double lo = ref_fp8((uint8_t)c), hi = ref_fp8((uint8_t)(c + 1));
        float mid = (float)((lo + hi) / 2);
        uint8_t even = (c & 1) ? (uint8_t)(c + 1) : (uint8_t)c;
        uint8_t g0 = mc_f32_to_fp8_e4m3(nextafterf(mid, 0.0f)), g1 = mc_f32_to_fp8_e4m3(mid),
                g2 = mc_f32_to_fp8_e4m3(nextafterf(mid, INFINITY));
        if (g0 != c || g1 != even || g2 != c + 1)
            MISMATCH(bad, "fp8 boundary 0x%02x/0x%02x: 0x%02x 0x%02x 0x%02x", c, c + 1, g0, g1, g2);
    }
    CHECKF(bad == 0, "%d fp8 rounding-boundary mismatches", bad);
    /* saturation and NaN */
    CHECK(mc_f32_to_fp8_e4m3(448.0f) == 0x7e);
    CHECK(mc_f32_to_fp8_e4m3(464.0f) == 0x7e);
    CHECK(mc_f32_to_fp8_e4m3(1e30f) == 0x7e);
    CHECK(mc_f32_to_fp8_e4m3(INFINITY) == 0x7e);
    CHECK(mc_f32_to_fp8_e4m3(-INFINITY) == 0xfe);
    CHECK(mc_f32_to_fp8_e4m3(-1000.0f) == 0xfe);
    CHECK((mc_f32_to_fp8_e4m3(NAN) & 0x7f) == 0x7f);
    CHECK(mc_f32_to_fp8_e4m3(0x1p-11f) == 0x00); /* below half the smallest subnormal */
    CHECK(mc_f32_to_fp8_e4m3(-0x1p-9f) == 0x81);
}

/* ---- FP8 block dequantization through mc_mat ---- */

static void test_fp8_blocks(void)
{
    enum { R = 5, C = 7, STRIDE = 8, BR = 2, BC = 3, SR = 3, SC = 3, NT = 3, LDX = 9, LDY = 6 };
    uint8_t w[R * STRIDE];
    for (int i = 0; i < R * STRIDE; i++) {
        uint8_t c = (uint8_t)((i * 37 + 11) & 0xff);
        if ((c & 0x7f) == 0x7f)
            c ^= 0x08; /* no NaN codes */
        w[i] = c;
    }
    /* distinct scales, so a wrong block index shows */
    const float scale[SR * SC] = {0.5f, 2.0f, 1.5f, 0.25f, 3.0f, 0.75f, 4.0f, 0.125f, 1.25f};
    mc_mat m = {.dtype = MC_DT_F8_E4M3, .rows = R, .cols = C, .row_stride = STRIDE, .data = w,
                .scale = scale, .block_rows = BR, .block_cols = BC, .scale_cols = SC};
    float ref[R][C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            ref[r][c] = (float)ref_fp8(w[r * STRIDE + c]) * scale[(r / BR) * SC + (c / BC)];

    int bad = 0;
    for (int r = 0; r < R; r++) {
        float row[C + 1];
        row[C] = -777.0f;
        mc_mat_row_f32(&m, r, row);
        for (int c = 0; c < C; c++)
            if (bits_of(row[c]) != bits_of(ref[r][c]))
                MISMATCH(bad, "W[%d][%d] = %.9g, expected %.9g (code 0x%02x, scale %g)", r, c,
                         row[c], ref[r][c], w[r * STRIDE + c], scale[(r / BR) * SC + c / BC]);
        if (row[C] != -777.0f)
            MISMATCH(bad, "mc_mat_row_f32 wrote past cols in row %d", r);
    }
    CHECKF(bad == 0, "%d FP8 block dequantization mismatches", bad);

    float x[NT * LDX], y[NT * LDY];
    for (int i = 0; i < NT * LDX; i++)
        x[i] = (i % LDX) < C ? rng_uniform(-1.0f, 1.0f) : 1e30f; /* padding must be ignored */
    for (int i = 0; i < NT * LDY; i++)
        y[i] = -777.0f;
    mc_matmul(&m, x, NT, LDX, y, LDY);
    bad = 0;
    for (int t = 0; t < NT; t++) {
        for (int o = 0; o < R; o++) {
            double s = 0, mag = 0;
            for (int c = 0; c < C; c++) {
                s += (double)ref[o][c] * x[t * LDX + c];
                mag += fabs((double)ref[o][c] * x[t * LDX + c]);
            }
            float got = y[t * LDY + o];
            if (!(fabs(got - s) <= 1e-6 * mag + 1e-30))
                MISMATCH(bad, "y[%d][%d] = %.9g, expected %.9g", t, o, got, s);
        }
        if (y[t * LDY + R] != -777.0f)
            MISMATCH(bad, "mc_matmul wrote y padding of token %d", t);
    }
    CHECKF(bad == 0, "%d FP8 block matmul mismatches", bad);

    /* a row longer than the matmul chunk, with a block size that does not
     * divide it: the scale index must follow the absolute column */
    enum { R2 = 3, C2 = 4100, B2 = 128, SC2 = (C2 + B2 - 1) / B2 };
    uint8_t *w2 = malloc(R2 * C2);
    float *s2 = malloc(sizeof(float) * SC2);
    float *x2 = malloc(sizeof(float) * C2);
    float *row2 = malloc(sizeof(float) * C2);
    float y2[R2];
    if (!w2 || !s2 || !x2 || !row2) {
        CHECKF(0, "out of memory");
        goto out;
    }
    for (int i = 0; i < R2 * C2; i++)
        w2[i] = (uint8_t)(rng_next() % 0x7e);
    for (int i = 0; i < SC2; i++)
        s2[i] = 0.5f + (float)i / 8.0f;
    for (int i = 0; i < C2; i++)
        x2[i] = rng_uniform(-1.0f, 1.0f);
    mc_mat m2 = {.dtype = MC_DT_F8_E4M3, .rows = R2, .cols = C2, .row_stride = C2, .data = w2,
                 .scale = s2, .block_rows = B2, .block_cols = B2, .scale_cols = SC2};
    mc_matmul(&m2, x2, 1, C2, y2, R2);
    bad = 0;
    for (int r = 0; r < R2; r++) {
        mc_mat_row_f32(&m2, r, row2);
        double s = 0, mag = 0;
        for (int c = 0; c < C2; c++) {
            float e = (float)ref_fp8(w2[r * C2 + c]) * s2[c / B2];
            if (bits_of(row2[c]) != bits_of(e))
                MISMATCH(bad, "wide W[%d][%d] = %.9g, expected %.9g", r, c, row2[c], e);
            s += (double)e * x2[c];
            mag += fabs((double)e * x2[c]);
        }
        if (!(fabs(y2[r] - s) <= 1e-5 * mag))
            MISMATCH(bad, "wide y[%d] = %.9g, expected %.9g", r, y2[r], s);
    }
    CHECKF(bad == 0, "%d wide FP8 matmul mismatches", bad);
out:
    free(w2);
    free(s2);
    free(x2);
    free(row2);

    /* unscaled BF16 / F16 views with a stride */
    uint16_t hb[2 * 4] = {0x3f80, 0x4000, 0xc040, 0xdead, 0x3f00, 0x0000, 0x4080, 0xbeef};
    mc_mat mb = {.dtype = MC_DT_BF16, .rows = 2, .cols = 3, .row_stride = 4, .data = hb};
    float rb[3];
    mc_mat_row_f32(&mb, 1, rb);
    CHECKF(rb[0] == 0.5f && rb[1] == 0.0f && rb[2] == 4.0f, "bf16 row 1 = %g %g %g", rb[0],
           rb[1], rb[2]);
    uint16_t hh[3] = {0x3c00, 0xc000, 0x3555};
    mc_mat mh = {.dtype = MC_DT_F16, .rows = 1, .cols = 3, .row_stride = 3, .data = hh};
    mc_mat_row_f32(&mh, 0, rb);
    CHECKF(rb[0] == 1.0f && rb[1] == -2.0f && rb[2] == 0.333251953125f, "f16 row = %g %g %g",
           rb[0], rb[1], rb[2]);

    /* transposed storage (W^T row-major): W[o][i] at data[i * row_stride + o] */
    enum { TR = 5, TC = 7, TS = 6 };
    uint16_t wt[TC * TS];
    for (int i = 0; i < TC * TS; i++)
        wt[i] = (i % TS) < TR ? mc_f32_to_bf16(rng_uniform(-2.0f, 2.0f)) : 0x7fc0; /* pad: NaN */
    mc_mat mt = {.dtype = MC_DT_BF16, .rows = TR, .cols = TC, .row_stride = TS, .transposed = 1,
                 .data = wt};
    bad = 0;
    for (int r = 0; r < TR; r++) {
        float row[TC];
        mc_mat_row_f32(&mt, r, row);
        for (int c = 0; c < TC; c++)
            if (bits_of(row[c]) != bits_of(mc_bf16_to_f32(wt[c * TS + r])))
                MISMATCH(bad, "transposed W[%d][%d] = %.9g, stored %.9g", r, c, row[c],
                         mc_bf16_to_f32(wt[c * TS + r]));
    }
    float yt[NT * LDY];
    for (int i = 0; i < NT * LDY; i++)
        yt[i] = -777.0f;
    mc_matmul(&mt, x, NT, LDX, yt, LDY);
    for (int t = 0; t < NT; t++) {
        for (int o = 0; o < TR; o++) {
            double s = 0, mag = 0;
            for (int c = 0; c < TC; c++) {
                double term = (double)mc_bf16_to_f32(wt[c * TS + o]) * x[t * LDX + c];
                s += term;
                mag += fabs(term);
            }
            if (!(fabs(yt[t * LDY + o] - s) <= 1e-6 * mag + 1e-30))
                MISMATCH(bad, "transposed y[%d][%d] = %.9g, expected %.9g", t, o,
                         yt[t * LDY + o], s);
        }
        if (yt[t * LDY + TR] != -777.0f)
            MISMATCH(bad, "transposed mc_matmul wrote y padding of token %d", t);
    }
    CHECKF(bad == 0, "%d transposed BF16 mismatches", bad);
}

/* ---- RoPE rotation ---- */

static void test_rope_rotate(void)
{
    /* dim 8, angles pi/2, pi, pi/3, 0 (worked out by hand below) */
    const float cs[4] = {(float)cos(M_PI / 2), (float)cos(M_PI), 0.5f, 1.0f};
    const float sn[4] = {(float)sin(M_PI / 2), (float)sin(M_PI), 0.86602540378f, 0.0f};
    /* interleaved pairs (0,1) (2,3) (4,5) (6,7):
     * (1,2)@pi/2 -> (-2,1); (3,4)@pi -> (-3,-4);
     * (5,6)@pi/3 -> (2.5-3*sqrt3, 3+2.5*sqrt3) = (-2.6961524, 7.3301270); (7,8)@0 */
    const float want_il[10] = {-2, 1, -3, -4, -2.6961524227f, 7.3301270189f, 7, 8, 9, 10};
    /* half pairs (0,4) (1,5) (2,6) (3,7):
     * (1,5)@pi/2 -> (-5,1); (2,6)@pi -> (-2,-6);
     * (3,7)@pi/3 -> (1.5-3.5*sqrt3, 3.5+1.5*sqrt3) = (-4.5621778, 6.0980762); (4,8)@0 */
    const float want_half[10] = {-5, -2, -4.5621778265f, 4, 1, -6, 6.0980762114f, 8, 9, 10};
    for (int il = 0; il < 2; il++) {
        float v[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}; /* 9, 10 lie beyond dim */
        mc_rope_rotate(v, 8, il, cs, sn);
        const float *want = il ? want_il : want_half;
        int bad = 0;
        for (int i = 0; i < 10; i++)
            if (!(fabsf(v[i] - want[i]) <= 2e-6f))
                MISMATCH(bad, "%s v[%d] = %.9g, expected %.9g", il ? "interleaved" : "half", i,
                         v[i], want[i]);
        CHECKF(bad == 0, "rope %s layout", il ? "interleaved" : "half");
    }

    /* norm preserved, and rotating back by -angle restores the vector */
    enum { D = 64 };
    for (int il = 0; il < 2; il++) {
        float v[D], v0[D], c[D / 2], s[D / 2], ns[D / 2];
        for (int i = 0; i < D; i++)
            v[i] = v0[i] = rng_uniform(-3.0f, 3.0f);
        for (int i = 0; i < D / 2; i++) {
            double a = rng_uniform(-10.0f, 10.0f);
            c[i] = (float)cos(a);
            s[i] = (float)sin(a);
            ns[i] = -s[i];
        }
        double n0 = 0, n1 = 0;
        for (int i = 0; i < D; i++)
            n0 += (double)v[i] * v[i];
        mc_rope_rotate(v, D, il, c, s);
        for (int i = 0; i < D; i++)
            n1 += (double)v[i] * v[i];
        CHECKF(fabs(sqrt(n1) - sqrt(n0)) <= 1e-5 * sqrt(n0), "%s: norm %.9g -> %.9g",
               il ? "interleaved" : "half", sqrt(n0), sqrt(n1));
        /* each pair keeps its own norm */
        mc_rope_rotate(v, D, il, c, ns);
        double err = 0;
        for (int i = 0; i < D; i++)
            err = fmax(err, fabs(v[i] - v0[i]));
        CHECKF(err <= 1e-5, "%s: rotate back leaves error %g", il ? "interleaved" : "half", err);
    }
}

/* ---- RoPE frequencies ---- */

static int check_freqs(const char *what, const double *got, const double *want, int n)
{
    int bad = 0;
    for (int i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= 1e-12 * fabs(want[i])))
            MISMATCH(bad, "%s inv_freq[%d] = %.17g, expected %.17g", what, i, got[i], want[i]);
    CHECKF(bad == 0, "%s: %d inverse frequencies differ", what, bad);
    return bad;
}

static void test_rope_freqs(void)
{
    double got[128], want[128];

    /* default: theta^(-2i/d) */
    mc_rope_desc r = {.style = MC_ROPE_HALF, .scaling = MC_ROPE_SCALE_NONE, .dim = 64,
                      .theta = 10000.0};
    mc_rope_inv_freq(&r, got);
    for (int i = 0; i < 32; i++)
        want[i] = exp(-log(10000.0) * (2.0 * i) / 64.0);
    check_freqs("default", got, want, 32);
    CHECK_NEAR(got[0], 1.0, 0.0);
    CHECK_NEAR(got[16], 0.01, 1e-15); /* 10000^(-1/2) */

    /* YaRN with DeepSeek-V3's numbers */
    struct {
        int dim;
        double theta, factor, orig, beta_fast, beta_slow;
        int want_low, want_high; /* worked out by hand, see below */
    } yc[] = {
        /* low = floor(64 ln(4096/(32*2pi)) / (2 ln 1e4)) = floor(10.47) = 10,
         * high = ceil(64 ln(4096/(1*2pi)) / (2 ln 1e4)) = ceil(22.51) = 23 */
        {64, 10000.0, 40.0, 4096.0, 32.0, 1.0, 10, 23},
        /* both clamps: low = floor(16 ln(4096/(1000*2pi)) / (2 ln 100)) = floor(-0.74) -> 0,
         * high = ceil(16 ln(4096/(0.1*2pi)) / (2 ln 100)) = ceil(15.25) = 16 -> 15 */
        {16, 100.0, 4.0, 4096.0, 1000.0, 0.1, 0, 15},
    };
    for (size_t k = 0; k < sizeof yc / sizeof yc[0]; k++) {
        int d = yc[k].dim;
        mc_rope_desc y = {.style = MC_ROPE_INTERLEAVED, .scaling = MC_ROPE_SCALE_YARN, .dim = d,
                          .theta = yc[k].theta, .factor = yc[k].factor, .orig_max_pos = yc[k].orig,
                          .beta_fast = yc[k].beta_fast, .beta_slow = yc[k].beta_slow,
                          .mscale = 1.0, .mscale_all_dim = 1.0, .attention_factor = 1.0};
        double lnb = log(yc[k].theta);
        double low = floor(d * log(yc[k].orig / (yc[k].beta_fast * 2 * M_PI)) / (2 * lnb));
        double high = ceil(d * log(yc[k].orig / (yc[k].beta_slow * 2 * M_PI)) / (2 * lnb));
        low = fmax(low, 0.0);
        high = fmin(high, d - 1.0);
        CHECKF(low == yc[k].want_low && high == yc[k].want_high,
               "YaRN case %zu: low %g high %g, expected %d %d", k, low, high, yc[k].want_low,
               yc[k].want_high);
        for (int i = 0; i < d / 2; i++) {
            double base = pow(yc[k].theta, -(2.0 * i) / d);
            double ramp = (i - low) / (high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            want[i] = base / yc[k].factor * ramp + base * (1 - ramp);
        }
        mc_rope_inv_freq(&y, got);
        char what[32];
        snprintf(what, sizeof what, "yarn case %zu", k);
        check_freqs(what, got, want, d / 2);
        /* the ends: high frequencies untouched, low ones divided by the factor */
        CHECK_NEAR(got[0], 1.0, 1e-15);
        if (high < d / 2)
            CHECK_NEAR(got[d / 2 - 1] * yc[k].factor, pow(yc[k].theta, -(d - 2.0) / d), 1e-15);
    }

    /* llama3: Llama 3.1's numbers */
    mc_rope_desc l3 = {.style = MC_ROPE_HALF, .scaling = MC_ROPE_SCALE_LLAMA3, .dim = 128,
                       .theta = 500000.0, .factor = 8.0, .orig_max_pos = 8192.0,
                       .low_freq_factor = 1.0, .high_freq_factor = 4.0};
    int n_keep = 0, n_div = 0, n_mid = 0;
    for (int i = 0; i < 64; i++) {
        double base = pow(500000.0, -(2.0 * i) / 128.0);
        double wavelen = 2 * M_PI / base;
        if (wavelen < 8192.0 / 4.0) { /* short wavelengths: unchanged */
            want[i] = base;
            n_keep++;
        } else if (wavelen > 8192.0 / 1.0) { /* long wavelengths: divided by the factor */
            want[i] = base / 8.0;
            n_div++;
        } else { /* in between: blend by how many periods fit the original context */
            double s = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
            want[i] = base * ((1 - s) / 8.0 + s);
            n_mid++;
        }
    }
    CHECKF(n_keep > 0 && n_div > 0 && n_mid > 0, "llama3 regions %d/%d/%d", n_keep, n_mid, n_div);
    mc_rope_inv_freq(&l3, got);
    check_freqs("llama3", got, want, 64);
}

int main(void)
{
    test_dtype_table();
    test_bf16();
    test_f16();
    test_fp8();
    test_fp8_blocks();
    test_rope_rotate();
    test_rope_freqs();
    return check_report("test_dtype");
}
