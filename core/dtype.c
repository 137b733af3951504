#include "dtype.h"

#include <math.h>
#include <strings.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[MC_DT_COUNT] = {
    [MC_DT_F32] = {"F32", 4},    [MC_DT_F16] = {"F16", 2}, [MC_DT_BF16] = {"BF16", 2},
    [MC_DT_F8_E4M3] = {"F8_E4M3", 1}, [MC_DT_I64] = {"I64", 8}, [MC_DT_I32] = {"I32", 4},
    [MC_DT_U8] = {"U8", 1},
};

size_t mc_dtype_size(mc_dtype dt) { return (unsigned)dt < MC_DT_COUNT ? dtype_info[dt].size : 0; }

const char *mc_dtype_name(mc_dtype dt)
{
    if (dt == MC_DT_Q8_0)
        return "Q8_0";
    if (dt == MC_DT_Q4_K)
        return "Q4_K";
    if (dt == MC_DT_Q5_K)
        return "Q5_K";
    if (dt == MC_DT_Q6_K)
        return "Q6_K";
    return (unsigned)dt < MC_DT_COUNT ? dtype_info[dt].name : "?";
}

int mc_dtype_from_name(const char *s, mc_dtype *out)
{
    for (int i = 0; i < MC_DT_COUNT; i++) {
        if (!strcmp(s, dtype_info[i].name)) {
            *out = (mc_dtype)i;
            return 0;
        }
    }
    return -1;
}

float mc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) & 1u;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    float v;
    if (exp == 0)
        v = ldexpf((float)man, -24);
    else if (exp == 31)
        v = man ? NAN : INFINITY;
    else
        v = ldexpf((float)(man | 0x400u), (int)exp - 25);
    return sign ? -v : v;
}

uint16_t mc_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    if (isnan(f))
        return sign | 0x7e00u;
    float a = fabsf(f);
    if (a >= 65520.0f)
        return sign | 0x7c00u;
    if (a < 6.103515625e-05f) { /* subnormal: units of 2^-24, round to nearest even */
        float q = a * 16777216.0f;
        return sign | (uint16_t)lrintf(q);
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5,1) */
    uint32_t man = (uint32_t)lrintf(m * 2048.0f); /* 11 bits incl. implicit */
    if (man == 2048u) {
        man = 1024u;
        e++;
    }
    uint32_t exp = (uint32_t)(e + 14);
    if (exp >= 31)
        return sign | 0x7c00u;
    return sign | (uint16_t)((exp << 10) | (man & 0x3ffu));
}

float mc_fp8_e4m3_decode(uint8_t v)
{
    int sign = v >> 7;
    int exp = (v >> 3) & 0xf;
    int man = v & 0x7;
    float r;
    if (exp == 0xf && man == 0x7)
        r = NAN;
    else if (exp == 0)
        r = ldexpf((float)man, -9); /* subnormal: man/8 * 2^-6 */
    else
        r = ldexpf((float)(8 + man), exp - 10); /* (1+man/8) * 2^(exp-7) */
    return sign ? -r : r;
}

uint8_t mc_f32_to_fp8_e4m3(float f)
{
    if (isnan(f))
        return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f)
        return sign | 0x7e;
    /* brute force nearest, ties to even code: small table, fine for tools/tests */
    int best = 0;
    float bestd = INFINITY;
    for (int c = 0; c < 0x7f; c++) {
        float d = fabsf(mc_fp8_e4m3_decode((uint8_t)c) - a);
        if (d < bestd || (d == bestd && (c & 1) == 0 && (best & 1))) {
            bestd = d;
            best = c;
        }
    }
    return sign | (uint8_t)best;
}

/* ---- block formats ---- */

int mc_weight_format_from_name(const char *s, mc_dtype *out)
{
    static const struct {
        const char *name;
        mc_dtype dt;
    } fmts[] = {{"q8_0", MC_DT_Q8_0}, {"q4_k", MC_DT_Q4_K}, {"bf16", MC_DT_BF16},
                {"f16", MC_DT_F16},   {"f32", MC_DT_F32}};
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++)
        if (!strcasecmp(s, fmts[i].name)) {
            *out = fmts[i].dt;
            return 0;
        }
    return -1;
}

mc_dtype mc_quant_format_for(mc_dtype target, int64_t cols)
{
    if (target == MC_DT_Q4_K && cols % MC_QK_K != 0)
        target = MC_DT_Q8_0;
    if (target == MC_DT_Q8_0 && cols % MC_QK8_0 != 0)
        return MC_DT_COUNT;
    return target;
}

/* llama.cpp's nearest_int: round half to even through the f32 mantissa
 * (valid for |f| < 2^22), kept identical so blocks match bit for bit. */
static inline int nearest_int(float f)
{
    float v = f + 12582912.f;
    int i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* Copies block b of a row of n elements into buf[be], zero-padding past n. */
static const float *block_src(const float *x, int64_t n, int64_t b, int be, float *buf)
{
    int64_t i0 = b * be;
    if (i0 + be <= n)
        return x + i0;
    for (int i = 0; i < be; i++)
        buf[i] = i0 + i < n ? x[i0 + i] : 0.0f;
    return buf;
}

void mc_quantize_row_q8_0(const float *x, void *dst, int64_t n)
{
    mc_block_q8_0 *y = dst;
    float buf[MC_QK8_0];
    int64_t nb = (n + MC_QK8_0 - 1) / MC_QK8_0;
    for (int64_t b = 0; b < nb; b++) {
        const float *v = block_src(x, n, b, MC_QK8_0, buf);
        /* fmaxf and roundf as inline arithmetic (the library calls cost
         * most of the load-time quantization): a NaN never wins the max,
         * as with fmaxf; for |t| < 2^23 truncation and the exact remainder
         * round half away from zero, as roundf does */
        float amax = 0.0f;
        for (int j = 0; j < MC_QK8_0; j++) {
            float a = fabsf(v[j]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f;
        float id = d ? 1.0f / d : 0.0f;
        mc_block_q8_0 blk;
        blk.d = mc_f32_to_f16(d);
        for (int j = 0; j < MC_QK8_0; j++) {
            float t = v[j] * id;
            if (!(fabsf(t) < 8388608.0f)) { /* NaN, Inf, huge: the library's answer */
                blk.qs[j] = (int8_t)roundf(t);
                continue;
            }
            int i = (int)t;
            float r = t - (float)i;
            i += r >= 0.5f ? 1 : r <= -0.5f ? -1 : 0;
            blk.qs[j] = (int8_t)i;
        }
        memcpy(&y[b], &blk, sizeof blk);
    }
}

void mc_dequantize_row_q8_0(const void *src, float *y, int64_t n)
{
    const unsigned char *p = src;
    for (int64_t i0 = 0; i0 < n; i0 += MC_QK8_0, p += sizeof(mc_block_q8_0)) {
        mc_block_q8_0 blk;
        memcpy(&blk, p, sizeof blk);
        float d = mc_f16_to_f32(blk.d);
        for (int j = 0; j < MC_QK8_0 && i0 + j < n; j++)
            y[i0 + j] = d * (float)blk.qs[j];
    }
}

/* llama.cpp's make_qkx2_quants: asymmetric n-level quantization of x[n]
 * with importance weights, searching nstep scales around the min/max fit.
 * Returns the scale and writes -min to *the_min and the levels to L. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep)
{
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i)
            L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        float diff = scale * L[i] + min - x[i];
        diff = diff * diff;
        best_error += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i)
                    L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

static void quantize_block_q4_k(const float *x, mc_block_q4_k *y)
{
    uint8_t L[MC_QK_K], Laux[32];
    float weights[32], mins[MC_QK_K / 32], scales[MC_QK_K / 32];
    float max_scale = 0, max_min = 0; /* the min is subtracted: scales are positive */
    for (int j = 0; j < MC_QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l)
            weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f,
                                     0.1f, 20);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(y->scales, 0, sizeof y->scales);
    for (int j = 0; j < MC_QK_K / 32; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            y->scales[j] = ls;
            y->scales[j + 4] = lm;
        } else {
            y->scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            y->scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
            y->scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    y->d = mc_f32_to_f16(max_scale / 63.f);
    y->dmin = mc_f32_to_f16(max_min / 63.f);
    for (int j = 0; j < MC_QK_K / 32; ++j) {
        uint8_t sc, m;
        mc_q4_k_scale_min(j, y->scales, &sc, &m);
        const float d = mc_f16_to_f32(y->d) * sc;
        if (!d)
            continue;
        const float dm = mc_f16_to_f32(y->dmin) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)(l < 0 ? 0 : l > 15 ? 15 : l);
        }
    }
    uint8_t *q = y->qs;
    for (int j = 0; j < MC_QK_K; j += 64, q += 32)
        for (int l = 0; l < 32; ++l)
            q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

void mc_quantize_row_q4_k(const float *x, void *dst, int64_t n)
{
    unsigned char *p = dst;
    float buf[MC_QK_K];
    int64_t nb = (n + MC_QK_K - 1) / MC_QK_K;
    for (int64_t b = 0; b < nb; b++, p += sizeof(mc_block_q4_k)) {
        mc_block_q4_k blk;
        quantize_block_q4_k(block_src(x, n, b, MC_QK_K, buf), &blk);
        memcpy(p, &blk, sizeof blk);
    }
}

void mc_dequantize_row_q4_k(const void *src, float *y, int64_t n)
{
    const unsigned char *p = src;
    for (int64_t i0 = 0; i0 < n; i0 += MC_QK_K, p += sizeof(mc_block_q4_k)) {
        mc_block_q4_k blk;
        memcpy(&blk, p, sizeof blk);
        const float d = mc_f16_to_f32(blk.d), min = mc_f16_to_f32(blk.dmin);
        for (int j = 0; j < MC_QK_K / 32; j++) {
            uint8_t sc, m;
            mc_q4_k_scale_min(j, blk.scales, &sc, &m);
            const float dj = d * sc, mj = min * m;
            const uint8_t *q = blk.qs + 32 * (j / 2);
            for (int l = 0; l < 32; l++) {
                int64_t i = i0 + 32 * j + l;
                if (i < n)
                    y[i] = dj * (float)((j & 1) ? q[l] >> 4 : q[l] & 0xF) - mj;
            }
        }
    }
}

void mc_dequantize_row_q6_k(const void *src, float *y, int64_t n)
{
    const uint8_t *p = (const uint8_t *)src;
    for (int64_t b = 0; b * MC_QK_K < n; b++, p += sizeof(mc_block_q6_k)) {
        mc_block_q6_k blk; /* (210 bytes) unaligned source: copy */
        memcpy(&blk, p, sizeof blk);
        const float d = mc_f16_to_f32(blk.d);
        float out[MC_QK_K]; /* (256,) this block */
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk.ql + 64 * h, *qh = blk.qh + 32 * h;
            const int8_t *sc = blk.scales + 8 * h;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                out[128 * h + l + 0] = d * (float)sc[is + 0] * (float)q1;
                out[128 * h + l + 32] = d * (float)sc[is + 2] * (float)q2;
                out[128 * h + l + 64] = d * (float)sc[is + 4] * (float)q3;
                out[128 * h + l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
        int64_t m = n - b * MC_QK_K < MC_QK_K ? n - b * MC_QK_K : MC_QK_K;
        memcpy(y + b * MC_QK_K, out, (size_t)m * sizeof *y);
    }
}

void mc_dequantize_row_q5_k(const void *src, float *y, int64_t n)
{
    const unsigned char *p = src;
    for (int64_t b = 0; b * MC_QK_K < n; b++, p += sizeof(mc_block_q5_k)) {
        mc_block_q5_k blk; /* (176 bytes) unaligned source: copy */
        memcpy(&blk, p, sizeof blk);
        const float d = mc_f16_to_f32(blk.d), dmin = mc_f16_to_f32(blk.dmin);
        float out[MC_QK_K]; /* (256,) this block */
        for (int c = 0; c < 4; c++) {
            uint8_t sc, m;
            mc_q4_k_scale_min(2 * c, blk.scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            mc_q4_k_scale_min(2 * c + 1, blk.scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            const uint8_t *ql = blk.qs + 32 * c;
            for (int l = 0; l < 32; l++) {
                int h1 = (blk.qh[l] >> (2 * c)) & 1, h2 = (blk.qh[l] >> (2 * c + 1)) & 1;
                out[64 * c + l] = d1 * (float)((ql[l] & 0xF) | h1 << 4) - m1;
                out[64 * c + 32 + l] = d2 * (float)((ql[l] >> 4) | h2 << 4) - m2;
            }
        }
        int64_t m = n - b * MC_QK_K < MC_QK_K ? n - b * MC_QK_K : MC_QK_K;
        memcpy(y + b * MC_QK_K, out, (size_t)m * sizeof *y);
    }
}

int mc_quantize_row(mc_dtype dt, const float *x, void *dst, int64_t n)
{
    if (dt == MC_DT_Q8_0)
        mc_quantize_row_q8_0(x, dst, n);
    else if (dt == MC_DT_Q4_K)
        mc_quantize_row_q4_k(x, dst, n);
    else
        return -1;
    return 0;
}

int mc_dequantize_row(mc_dtype dt, const void *src, float *y, int64_t n)
{
    if (dt == MC_DT_Q8_0)
        mc_dequantize_row_q8_0(src, y, n);
    else if (dt == MC_DT_Q4_K)
        mc_dequantize_row_q4_k(src, y, n);
    else if (dt == MC_DT_Q5_K)
        mc_dequantize_row_q5_k(src, y, n);
    else if (dt == MC_DT_Q6_K)
        mc_dequantize_row_q6_k(src, y, n);
    else
        return -1;
    return 0;
}
