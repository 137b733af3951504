/* test_gguf.c - the GGUF reader (core/gguf.h) against files written here
 * byte by byte: well-formed ones read back exactly (every metadata type,
 * arrays, alignments 32 and 64, every ggml type's byte size from the
 * spec's block layouts), malformed ones refused with the expected message,
 * every truncation of a valid file refused, split folders checked. Also
 * checks the committed fixtures in tests/fixtures/gguf (the fuzz seeds),
 * and the scalar Q6_K dequantization (core/dtype.h: mc_dequantize_row_q6_k) on blocks packed
 * here from chosen 6-bit values, against values computed by hand. */
#define _GNU_SOURCE
#include "check.h"
#include "dtype.h"
#include "gguf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- a byte writer ------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} wb;

static void put(wb *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t nc = (b->n + n) * 2 + 64;
        uint8_t *np = realloc(b->p, nc);
        if (!np)
            abort(); /* test harness: out of memory */
        b->p = np;
        b->cap = nc;
    }
    if (n)
        memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void u8_(wb *b, uint8_t v) { put(b, &v, 1); }
static void le_(wb *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        u8_(b, (uint8_t)(v >> (8 * i)));
}
static void u32_(wb *b, uint32_t v) { le_(b, v, 4); }
static void u64_(wb *b, uint64_t v) { le_(b, v, 8); }
static void str_(wb *b, const char *s)
{
    u64_(b, strlen(s));
    put(b, s, strlen(s));
}
static void hdr(wb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    put(b, "GGUF", 4);
    u32_(b, version);
    u64_(b, n_tensors);
    u64_(b, n_kv);
}
static void kv_u32(wb *b, const char *k, uint32_t v)
{
    str_(b, k);
    u32_(b, MC_GGUF_U32);
    u32_(b, v);
}
static void kv_str(wb *b, const char *k, const char *v)
{
    str_(b, k);
    u32_(b, MC_GGUF_STR);
    str_(b, v);
}
/* tensor info with up to 4 dims */
static void tinfo(wb *b, const char *name, int nd, const uint64_t *ne, uint32_t type, uint64_t off)
{
    str_(b, name);
    u32_(b, (uint32_t)nd);
    for (int d = 0; d < nd; d++)
        u64_(b, ne[d]);
    u32_(b, type);
    u64_(b, off);
}
static void pad(wb *b, size_t a)
{
    while (b->n % a)
        u8_(b, 0);
}
/* n data bytes: (i * 7 + seed) & 255 */
static void data_(wb *b, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        u8_(b, (uint8_t)(i * 7 + seed));
}

/* ---- helpers ----------------------------------------------------------------- */

static mc_gguf *parse(const wb *b, mc_err *err)
{
    /* an exactly sized copy, so a sanitizer catches reads past the end */
    uint8_t *copy = malloc(b->n ? b->n : 1);
    if (!copy)
        abort();
    if (b->n)
        memcpy(copy, b->p, b->n);
    mc_gguf *g = NULL;
    mc_err_clear(err);
    mc_status st = mc_gguf_parse(copy, b->n, "test.gguf", &g, err);
    if (st == MC_OK) {
        /* keep the copy alive with the result: leak-free via a side table */
        mc_gguf_close(g);
        g = NULL;
        mc_err_clear(err);
        st = mc_gguf_parse(b->p, b->n, "test.gguf", &g, err);
    }
    free(copy);
    return st == MC_OK ? g : NULL;
}

static int expect_fail(const char *what, const wb *b, const char *fragment)
{
    mc_err err;
    mc_gguf *g = parse(b, &err);
    int ok = !g && err.status != MC_OK && strstr(err.msg, fragment) && strstr(err.msg, "test.gguf");
    if (!ok)
        fprintf(stderr, "  %s: expected a failure with '%s', got %s: %s\n", what, fragment,
                g ? "success" : "failure", g ? "" : err.msg);
    else
        printf("  %-28s -> %s\n", what, err.msg);
    mc_gguf_close(g);
    CHECK(ok);
    return ok;
}

/* the spec's bytes per block and elements per block, written out from the
 * block layouts (ggml-common.h), independent of the reader's table */
typedef struct {
    uint32_t type, blk, bytes;
} spec_type;
static const spec_type spec_types[] = {
    {0, 1, 4},            /* F32 */
    {1, 1, 2},            /* F16 */
    {2, 32, 2 + 16},      /* Q4_0: d + 32 nibbles */
    {3, 32, 2 + 2 + 16},  /* Q4_1: d, m + nibbles */
    {6, 32, 2 + 4 + 16},  /* Q5_0: d, qh[4], qs[16] */
    {7, 32, 2 + 2 + 4 + 16}, /* Q5_1 */
    {8, 32, 2 + 32},      /* Q8_0 */
    {9, 32, 2 + 2 + 32},  /* Q8_1: d, s, qs */
    {10, 256, 16 + 64 + 2 + 2},        /* Q2_K: scales, qs, d, dmin */
    {11, 256, 32 + 64 + 12 + 2},       /* Q3_K: hmask, qs, scales, d */
    {12, 256, 2 + 2 + 12 + 128},       /* Q4_K */
    {13, 256, 2 + 2 + 12 + 32 + 128},  /* Q5_K: + qh */
    {14, 256, 128 + 64 + 16 + 2},      /* Q6_K: ql, qh, scales, d */
    {15, 256, 4 + 256 + 16 * 2},       /* Q8_K: f32 d, qs, bsums */
    {24, 1, 1}, {25, 1, 2}, {26, 1, 4}, {27, 1, 8}, {28, 1, 8},
    {30, 1, 2},           /* BF16 */
};
#define N_SPEC (sizeof spec_types / sizeof spec_types[0])

/* ---- well-formed files --------------------------------------------------------- */

/* Every metadata type, then one tensor of each ggml type (ne = [2 blocks, 3]). */
static void write_full(wb *b, uint32_t version, uint32_t align)
{
    int n_kv = 17 + (align ? 1 : 0);
    hdr(b, version, N_SPEC, (uint64_t)n_kv);
    if (align)
        kv_u32(b, "general.alignment", align);
    kv_str(b, "general.architecture", "qwen3moe");
    str_(b, "t.u8"); u32_(b, MC_GGUF_U8); u8_(b, 200);
    str_(b, "t.i8"); u32_(b, MC_GGUF_I8); u8_(b, (uint8_t)-5);
    str_(b, "t.u16"); u32_(b, MC_GGUF_U16); le_(b, 60000, 2);
    str_(b, "t.i16"); u32_(b, MC_GGUF_I16); le_(b, (uint16_t)-30000, 2);
    kv_u32(b, "t.u32", 4000000000u);
    str_(b, "t.i32"); u32_(b, MC_GGUF_I32); u32_(b, (uint32_t)-2000000000);
    str_(b, "t.f32"); u32_(b, MC_GGUF_F32); u32_(b, 0x3fc00000u); /* 1.5 */
    str_(b, "t.bool"); u32_(b, MC_GGUF_BOOL); u8_(b, 1);
    str_(b, "t.u64"); u32_(b, MC_GGUF_U64); u64_(b, 0xfedcba9876543210ull);
    str_(b, "t.i64"); u32_(b, MC_GGUF_I64); u64_(b, (uint64_t)-1234567890123ll);
    str_(b, "t.f64"); u32_(b, MC_GGUF_F64); u64_(b, 0x400921fb54442d18ull); /* pi */
    str_(b, "t.arr_u32"); u32_(b, MC_GGUF_ARR); u32_(b, MC_GGUF_U32); u64_(b, 3);
    u32_(b, 1); u32_(b, 2); u32_(b, 0xffffffffu);
    str_(b, "t.arr_str"); u32_(b, MC_GGUF_ARR); u32_(b, MC_GGUF_STR); u64_(b, 3);
    str_(b, "a"); str_(b, "bc"); str_(b, "");
    str_(b, "t.arr_f32"); u32_(b, MC_GGUF_ARR); u32_(b, MC_GGUF_F32); u64_(b, 2);
    u32_(b, 0xbf800000u); u32_(b, 0x40000000u); /* -1, 2 */
    /* [[1, 2], [-3]] of i16 */
    str_(b, "t.nested"); u32_(b, MC_GGUF_ARR); u32_(b, MC_GGUF_ARR); u64_(b, 2);
    u32_(b, MC_GGUF_I16); u64_(b, 2); le_(b, 1, 2); le_(b, 2, 2);
    u32_(b, MC_GGUF_I16); u64_(b, 1); le_(b, (uint16_t)-3, 2);
    str_(b, "t.arr_empty"); u32_(b, MC_GGUF_ARR); u32_(b, MC_GGUF_I8); u64_(b, 0);
    uint32_t a = align ? align : 32;
    uint64_t off = 0;
    for (size_t i = 0; i < N_SPEC; i++) {
        char name[32];
        snprintf(name, sizeof name, "blk.%zu.w", i);
        uint64_t ne[2] = {2 * (uint64_t)spec_types[i].blk, 3};
        tinfo(b, name, 2, ne, spec_types[i].type, off);
        uint64_t nb = 2ull * spec_types[i].bytes * 3;
        off += (nb + a - 1) / a * a;
    }
    pad(b, a);
    size_t start = b->n;
    for (size_t i = 0; i < N_SPEC; i++) {
        pad(b, a);
        data_(b, 2ull * spec_types[i].bytes * 3, (unsigned)i);
    }
    (void)start;
}

static void check_full(mc_gguf *g, const uint8_t *base, uint32_t version, uint32_t align)
{
    uint32_t a = align ? align : 32;
    CHECK(mc_gguf_version(g) == version);
    CHECK(mc_gguf_alignment(g) == a);
    CHECK(mc_gguf_n_parts(g) == 1);
    CHECK(mc_gguf_n_kv(g) == (uint64_t)(17 + (align ? 1 : 0)));
    mc_err e;
    mc_err_clear(&e);
    uint32_t u32 = 0;
    uint64_t u64 = 0;
    int64_t i64 = 0;
    float f = 0;
    bool bo = false;
    const char *s = NULL;
    uint64_t sl = 0;
    CHECK(mc_gguf_get_str(g, "general.architecture", &s, &sl, &e) == MC_OK && sl == 8 &&
          strcmp(s, "qwen3moe") == 0);
    CHECK(mc_gguf_get_u32(g, "t.u8", &u32, &e) == MC_OK && u32 == 200);
    CHECK(mc_gguf_get_i64(g, "t.i8", &i64, &e) == MC_OK && i64 == -5);
    CHECK(mc_gguf_get_u32(g, "t.u16", &u32, &e) == MC_OK && u32 == 60000);
    CHECK(mc_gguf_get_i64(g, "t.i16", &i64, &e) == MC_OK && i64 == -30000);
    CHECK(mc_gguf_get_u32(g, "t.u32", &u32, &e) == MC_OK && u32 == 4000000000u);
    CHECK(mc_gguf_get_i64(g, "t.i32", &i64, &e) == MC_OK && i64 == -2000000000);
    CHECK(mc_gguf_get_f32(g, "t.f32", &f, &e) == MC_OK && f == 1.5f);
    CHECK(mc_gguf_get_bool(g, "t.bool", &bo, &e) == MC_OK && bo);
    CHECK(mc_gguf_get_u64(g, "t.u64", &u64, &e) == MC_OK && u64 == 0xfedcba9876543210ull);
    CHECK(mc_gguf_get_i64(g, "t.i64", &i64, &e) == MC_OK && i64 == -1234567890123ll);
    const mc_gguf_kv *kv = mc_gguf_find_kv(g, "t.f64");
    CHECK(kv && kv->type == MC_GGUF_F64 && kv->v.f == 3.141592653589793);
    CHECK(mc_gguf_get_f32(g, "t.f64", &f, &e) == MC_OK && f == 3.14159265f);
    /* arrays */
    CHECK(mc_gguf_get_arr(g, "t.arr_u32", MC_GGUF_U32, &kv, &e) == MC_OK && kv->arr_n == 3);
    CHECK(mc_gguf_arr_int(kv, 0, &i64) == 0 && i64 == 1);
    CHECK(mc_gguf_arr_int(kv, 2, &i64) == 0 && i64 == 0xffffffffll);
    CHECK(mc_gguf_arr_int(kv, 3, &i64) == -1);
    mc_gguf_str str;
    CHECK(mc_gguf_get_arr(g, "t.arr_str", MC_GGUF_STR, &kv, &e) == MC_OK && kv->arr_n == 3);
    CHECK(mc_gguf_arr_str(kv, 1, &str) == 0 && str.len == 2 && memcmp(str.p, "bc", 2) == 0);
    CHECK(mc_gguf_arr_str(kv, 2, &str) == 0 && str.len == 0);
    double d;
    CHECK(mc_gguf_get_arr(g, "t.arr_f32", MC_GGUF_F32, &kv, &e) == MC_OK);
    CHECK(mc_gguf_arr_float(kv, 0, &d) == 0 && d == -1.0);
    CHECK(mc_gguf_arr_float(kv, 1, &d) == 0 && d == 2.0);
    CHECK(mc_gguf_get_arr(g, "t.nested", MC_GGUF_ARR, &kv, &e) == MC_OK && kv->arr_n == 2);
    CHECK(mc_gguf_get_arr(g, "t.arr_empty", MC_GGUF_I8, &kv, &e) == MC_OK && kv->arr_n == 0);
    /* wrong types and absent keys are errors naming the key */
    mc_err_clear(&e);
    CHECK(mc_gguf_get_u32(g, "t.i8", &u32, &e) == MC_ERR_FORMAT && strstr(e.msg, "'t.i8'"));
    mc_err_clear(&e);
    CHECK(mc_gguf_get_u32(g, "t.u64", &u32, &e) == MC_ERR_FORMAT);
    mc_err_clear(&e);
    CHECK(mc_gguf_get_str(g, "t.u8", &s, &sl, &e) == MC_ERR_FORMAT && strstr(e.msg, "has type u8"));
    mc_err_clear(&e);
    CHECK(mc_gguf_get_arr(g, "t.arr_u32", MC_GGUF_STR, &kv, &e) == MC_ERR_FORMAT);
    mc_err_clear(&e);
    CHECK(mc_gguf_get_u32(g, "no.such", &u32, &e) == MC_ERR_NOT_FOUND && strstr(e.msg, "no.such"));
    /* iteration in file order */
    CHECK(strcmp(mc_gguf_kv_at(g, align ? 1 : 0)->key, "general.architecture") == 0);
    CHECK(mc_gguf_kv_at(g, mc_gguf_n_kv(g)) == NULL);
    /* tensors: sizes from the spec, data where it was written */
    CHECK(mc_gguf_n_tensors(g) == N_SPEC);
    for (size_t i = 0; i < N_SPEC; i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        char name[32];
        snprintf(name, sizeof name, "blk.%zu.w", i);
        uint64_t nb = 2ull * spec_types[i].bytes * 3;
        int ok = t && strcmp(t->name, name) == 0 && t->type == spec_types[i].type &&
                 t->n_dims == 2 && t->ne[0] == 2ull * spec_types[i].blk && t->ne[1] == 3 &&
                 t->ne[2] == 1 && t->ne[3] == 1 && t->nbytes == nb &&
                 t->n_elems == 6ull * spec_types[i].blk && mc_gguf_find_tensor(g, name) == t &&
                 (size_t)((const uint8_t *)t->data - base) % a == 0 &&
                 mc_ggml_block_bytes(t->type) == spec_types[i].bytes &&
                 mc_ggml_block_elems(t->type) == spec_types[i].blk;
        for (uint64_t k = 0; ok && k < nb; k++)
            ok = ((const uint8_t *)t->data)[k] == (uint8_t)(k * 7 + i);
        if (!ok)
            fprintf(stderr, "  tensor %zu (ggml type %u) read back wrong: nbytes %llu want %llu\n",
                    i, spec_types[i].type, t ? (unsigned long long)t->nbytes : 0ull,
                    (unsigned long long)nb);
        CHECK(ok);
    }
    CHECK(mc_gguf_find_tensor(g, "blk.99.w") == NULL);
    CHECK(mc_gguf_tensor_at(g, N_SPEC) == NULL);
}

static void test_well_formed(void)
{
    printf("well-formed files:\n");
    static const uint32_t aligns[] = {0, 32, 64};
    for (int v = 2; v <= 3; v++)
        for (size_t k = 0; k < 3; k++) {
            wb b = {0};
            write_full(&b, (uint32_t)v, aligns[k]);
            mc_err e;
            mc_gguf *g = parse(&b, &e);
            if (!g)
                fprintf(stderr, "  v%d align %u: %s\n", v, aligns[k], e.msg);
            CHECK(g != NULL);
            if (g) {
                check_full(g, b.p, (uint32_t)v, aligns[k]);
                printf("  version %d, alignment %s: %zu bytes, %llu tensors, %llu keys read back\n",
                       v, aligns[k] == 0 ? "32 (default)" : aligns[k] == 32 ? "32" : "64", b.n, (unsigned long long)mc_gguf_n_tensors(g),
                       (unsigned long long)mc_gguf_n_kv(g));
            }
            mc_gguf_close(g);
            free(b.p);
        }
}

/* A small valid file: 2 keys, 2 tensors, the file ending at the last
 * tensor's last byte (so every truncation loses something). */
static void write_small(wb *b)
{
    hdr(b, 3, 2, 2);
    kv_str(b, "general.architecture", "llama");
    kv_u32(b, "general.alignment", 32);
    uint64_t ne0[2] = {4, 2}, ne1[1] = {32};
    tinfo(b, "a", 2, ne0, MC_GGML_F32, 0);
    tinfo(b, "b", 1, ne1, MC_GGML_Q8_0, 32);
    pad(b, 32);
    data_(b, 32, 1);
    data_(b, 34, 2);
}

/* arrays nested 4 deep (the limit) are accepted; 5 deep are refused in test_malformed */
static void test_nesting_limit(void)
{
    wb b = {0};
    hdr(&b, 3, 0, 1);
    str_(&b, "k");
    u32_(&b, MC_GGUF_ARR);
    for (int i = 0; i < 3; i++) {
        u32_(&b, MC_GGUF_ARR);
        u64_(&b, 1);
    }
    u32_(&b, MC_GGUF_U8);
    u64_(&b, 2);
    u8_(&b, 7);
    u8_(&b, 9);
    mc_err e;
    mc_gguf *g = parse(&b, &e);
    if (!g)
        fprintf(stderr, "  4-deep arrays: %s\n", e.msg);
    CHECK(g && mc_gguf_find_kv(g, "k") && mc_gguf_find_kv(g, "k")->arr_n == 1);
    mc_gguf_close(g);
    free(b.p);
}

static void test_truncations(void)
{
    wb b = {0};
    write_small(&b);
    mc_err e;
    mc_gguf *g = parse(&b, &e);
    CHECK(g != NULL);
    mc_gguf_close(g);
    int refused = 0;
    size_t full = b.n;
    for (size_t k = 0; k < full; k++) {
        b.n = k;
        g = parse(&b, &e);
        if (!g && strstr(e.msg, "test.gguf") && strstr(e.msg, "byte "))
            refused++;
        else
            fprintf(stderr, "  truncated to %zu bytes: %s\n", k, g ? "accepted" : e.msg);
        mc_gguf_close(g);
    }
    printf("truncations: %d of %zu refused with a message naming the file and a byte\n", refused,
           full);
    CHECK(refused == (int)full);
    free(b.p);
}

#define CASE(what, frag, ...)                                                                     \
    do {                                                                                           \
        wb b = {0};                                                                                \
        __VA_ARGS__;                                                                               \
        expect_fail(what, &b, frag);                                                               \
        free(b.p);                                                                                 \
    } while (0)

static void test_malformed(void)
{
    printf("malformed files:\n");
    uint64_t v2[2] = {32, 2}, v1[1] = {32};
    CASE("empty", "too short", (void)0);
    CASE("bad magic", "bad magic", put(&b, "GGUG", 4); u32_(&b, 3); u64_(&b, 0); u64_(&b, 0));
    CASE("version 1", "version 1 is not supported", hdr(&b, 1, 0, 0));
    CASE("version 4", "version 4 is not supported", hdr(&b, 4, 0, 0));
    CASE("big-endian", "big-endian", hdr(&b, 0x03000000u, 0, 0));
    CASE("10 bytes", "file ends inside the tensor count", put(&b, "GGUF", 4); u32_(&b, 3);
         le_(&b, 0, 2));
    CASE("2^60 tensors", "cannot fit", hdr(&b, 3, 1ull << 60, 0));
    CASE("2^60 keys", "cannot fit", hdr(&b, 3, 0, 1ull << 60); kv_u32(&b, "x", 1));
    CASE("u64 max keys", "cannot fit", hdr(&b, 3, UINT64_MAX, UINT64_MAX));
    CASE("huge key length", "key length 9223372036854775808 is over the limit",
         hdr(&b, 3, 0, 1); u64_(&b, 1ull << 63); data_(&b, 32, 0));
    CASE("key past EOF", "runs past the end", hdr(&b, 3, 0, 1); u64_(&b, 100); data_(&b, 20, 0));
    CASE("huge string value", "string value length 1099511627776 is over the limit",
         hdr(&b, 3, 0, 1); str_(&b, "k"); u32_(&b, MC_GGUF_STR); u64_(&b, 1ull << 40));
    CASE("empty key", "empty key", hdr(&b, 3, 0, 1); str_(&b, ""); u32_(&b, 0); u8_(&b, 0));
    CASE("NUL in key", "contains a NUL", hdr(&b, 3, 0, 1); u64_(&b, 3); put(&b, "a\0b", 3);
         u32_(&b, 0); u8_(&b, 0));
    CASE("value type 13", "key 'k': unknown value type 13", hdr(&b, 3, 0, 1); str_(&b, "k");
         u32_(&b, 13); u64_(&b, 0));
    CASE("bool 2", "bool value is 2", hdr(&b, 3, 0, 1); str_(&b, "k"); u32_(&b, MC_GGUF_BOOL);
         u8_(&b, 2));
    CASE("huge array", "array of 1152921504606846976 u32 elements cannot fit",
         hdr(&b, 3, 0, 1); str_(&b, "k"); u32_(&b, MC_GGUF_ARR); u32_(&b, MC_GGUF_U32);
         u64_(&b, 1ull << 60); data_(&b, 16, 0));
    CASE("array elem type 99", "unknown array element type 99", hdr(&b, 3, 0, 1); str_(&b, "k");
         u32_(&b, MC_GGUF_ARR); u32_(&b, 99); u64_(&b, 0));
    CASE("nesting too deep", "nested deeper than 4", hdr(&b, 3, 0, 1); str_(&b, "k");
         u32_(&b, MC_GGUF_ARR); for (int i = 0; i < 4; i++) { u32_(&b, MC_GGUF_ARR); u64_(&b, 1); }
         u32_(&b, MC_GGUF_U8); u64_(&b, 0));
    CASE("duplicate key", "duplicate metadata key 'k'", hdr(&b, 3, 0, 2); kv_u32(&b, "k", 1);
         kv_u32(&b, "k", 2));
    CASE("alignment 48", "48 is not a power of two", hdr(&b, 3, 0, 1);
         kv_u32(&b, "general.alignment", 48));
    CASE("alignment 0", "0 is not a power of two", hdr(&b, 3, 0, 1);
         kv_u32(&b, "general.alignment", 0));
    CASE("alignment as u64", "has type u64, not u32", hdr(&b, 3, 0, 1);
         str_(&b, "general.alignment"); u32_(&b, MC_GGUF_U64); u64_(&b, 32));
    CASE("n_dims 0", "n_dims 0 is not in 1..4", hdr(&b, 3, 1, 0); tinfo(&b, "t", 0, v1, 0, 0);
         data_(&b, 64, 0));
    CASE("n_dims 5", "n_dims 5 is not in 1..4", hdr(&b, 3, 1, 0); str_(&b, "t"); u32_(&b, 5);
         data_(&b, 64, 0));
    CASE("dim 0", "tensor 't': dimension 1 is 0", uint64_t z[2] = {32, 0};
         hdr(&b, 3, 1, 0); tinfo(&b, "t", 2, z, 0, 0); data_(&b, 64, 0));
    CASE("dims overflow", "element count overflows", uint64_t o[3] = {1ull << 32, 1ull << 32, 2};
         hdr(&b, 3, 1, 0); tinfo(&b, "t", 3, o, 0, 0); data_(&b, 64, 0));
    CASE("bytes overflow", "byte size overflows", uint64_t o[2] = {1ull << 40, 1ull << 22};
         hdr(&b, 3, 1, 0); tinfo(&b, "t", 2, o, 0, 0); data_(&b, 64, 0));
    CASE("ggml type 4", "tensor 't': unknown or unsupported ggml type 4", hdr(&b, 3, 1, 0);
         tinfo(&b, "t", 1, v1, 4, 0); data_(&b, 64, 0));
    CASE("ggml type 99", "ggml type 99", hdr(&b, 3, 1, 0); tinfo(&b, "t", 1, v1, 99, 0);
         data_(&b, 64, 0));
    CASE("partial block", "Q4_K rows of 100 elements are not whole blocks of 256",
         uint64_t q[1] = {100}; hdr(&b, 3, 1, 0); tinfo(&b, "t", 1, q, MC_GGML_Q4_K, 0);
         data_(&b, 200, 0));
    CASE("empty tensor name", "empty tensor name", hdr(&b, 3, 1, 0); tinfo(&b, "", 1, v1, 0, 0);
         data_(&b, 200, 0));
    CASE("misaligned offset", "byte 57: tensor 'b'", hdr(&b, 3, 2, 0); tinfo(&b, "a", 1, v1, 0, 0);
         tinfo(&b, "b", 1, v1, 0, 130); pad(&b, 32); data_(&b, 300, 0));
    CASE("misaligned offset msg", "data offset 130 is not a multiple of the alignment 32",
         hdr(&b, 3, 2, 0); tinfo(&b, "a", 1, v1, 0, 0); tinfo(&b, "b", 1, v1, 0, 130);
         pad(&b, 32); data_(&b, 300, 0));
    CASE("overlap", "tensor 'b' (data at byte", hdr(&b, 3, 2, 0); tinfo(&b, "a", 2, v2, 0, 0);
         tinfo(&b, "b", 1, v1, 0, 128); pad(&b, 32); data_(&b, 256, 0));
    CASE("identical", "overlaps tensor", hdr(&b, 3, 2, 0); tinfo(&b, "a", 1, v1, 0, 0);
         tinfo(&b, "b", 1, v1, 0, 0); pad(&b, 32); data_(&b, 128, 0));
    CASE("past EOF", "tensor 'b': data at bytes 224..352 (offset 128) runs past", hdr(&b, 3, 2, 0); tinfo(&b, "a", 1, v1, 0, 0);
         tinfo(&b, "b", 1, v1, 0, 128); pad(&b, 32); data_(&b, 255, 0));
    CASE("offset near 2^64", "overflows", hdr(&b, 3, 1, 0);
         tinfo(&b, "a", 1, v1, 0, UINT64_MAX - 31); pad(&b, 32); data_(&b, 128, 0));
    CASE("no data section", "runs past the end", hdr(&b, 3, 1, 0); tinfo(&b, "a", 1, v1, 0, 0));
    CASE("duplicate tensor", "duplicate tensor name 'a'", hdr(&b, 3, 2, 0);
         tinfo(&b, "a", 1, v1, 0, 0); tinfo(&b, "a", 1, v1, 0, 128); pad(&b, 32);
         data_(&b, 256, 0));
}

/* ---- files, folders, split parts ---------------------------------------------------- */

static char g_dir[64];

static void write_file(const char *name, const wb *b)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *fp = fopen(path, "wb");
    CHECK(fp != NULL);
    if (!fp)
        return;
    fwrite(b->p, 1, b->n, fp);
    fclose(fp);
}

static void rm_all(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s/*", g_dir);
    CHECK(system(cmd) == 0);
}

/* part `no` (0-based) of n, holding tensor NAME (32 f32); split keys as given */
static void write_part(const char *file, int64_t no, int64_t count, int64_t total,
                       const char *tname)
{
    wb b = {0};
    uint64_t ne[1] = {32};
    hdr(&b, 3, 1, 3);
    str_(&b, "split.no"); u32_(&b, MC_GGUF_U16); le_(&b, (uint64_t)no, 2);
    str_(&b, "split.count"); u32_(&b, MC_GGUF_U16); le_(&b, (uint64_t)count, 2);
    str_(&b, "split.tensors.count"); u32_(&b, MC_GGUF_I32); u32_(&b, (uint32_t)total);
    tinfo(&b, tname, 1, ne, MC_GGML_F32, 0);
    pad(&b, 32);
    data_(&b, 128, (unsigned)no);
    write_file(file, &b);
    free(b.p);
}

static int open_fails(const char *what, const char *path, const char *fragment)
{
    mc_gguf *g = NULL;
    mc_err e;
    mc_err_clear(&e);
    mc_status st = mc_gguf_open(path, &g, &e);
    int ok = st != MC_OK && !g && strstr(e.msg, fragment);
    if (!ok)
        fprintf(stderr, "  %s: expected '%s', got %s\n", what, fragment, st == MC_OK ? "success" : e.msg);
    else
        printf("  %-28s -> %s\n", what, e.msg);
    mc_gguf_close(g);
    CHECK(ok);
    return ok;
}

static void test_files(void)
{
    printf("files and split folders:\n");
    char path[256];
    /* one file, through mmap */
    wb b = {0};
    write_full(&b, 3, 64);
    write_file("one.gguf", &b);
    snprintf(path, sizeof path, "%s/one.gguf", g_dir);
    mc_gguf *g = NULL;
    mc_err e;
    mc_err_clear(&e);
    CHECK(mc_gguf_open(path, &g, &e) == MC_OK);
    if (g) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, 0);
        CHECK(t && strcmp(t->path, path) == 0 && ((uintptr_t)t->data % 64) == 0);
        CHECK(t && memcmp(t->data, b.p + t->offset, (size_t)t->nbytes) == 0);
        mc_gguf_close(g);
    }
    /* the folder holding just that file */
    g = NULL;
    CHECK(mc_gguf_open(g_dir, &g, &e) == MC_OK && g && mc_gguf_n_tensors(g) == N_SPEC);
    mc_gguf_close(g);
    free(b.p);
    rm_all();
    open_fails("empty folder", g_dir, "no .gguf file");
    snprintf(path, sizeof path, "%s/missing.gguf", g_dir);
    open_fails("missing file", path, "cannot open GGUF file");
    snprintf(path, sizeof path, "%s/fifo.gguf", g_dir);
    CHECK(mkfifo(path, 0600) == 0);
    open_fails("FIFO", path, "is a FIFO, not a regular file");
    rm_all();

    /* a good split of 3 */
    write_part("m-00001-of-00003.gguf", 0, 3, 3, "x.0");
    write_part("m-00002-of-00003.gguf", 1, 3, 3, "x.1");
    write_part("m-00003-of-00003.gguf", 2, 3, 3, "x.2");
    g = NULL;
    mc_err_clear(&e);
    mc_status st = mc_gguf_open(g_dir, &g, &e);
    if (st != MC_OK)
        fprintf(stderr, "  split of 3: %s\n", e.msg);
    CHECK(st == MC_OK);
    if (g) {
        CHECK(mc_gguf_n_parts(g) == 3 && mc_gguf_n_tensors(g) == 3);
        for (int i = 0; i < 3; i++) {
            char n[16];
            snprintf(n, sizeof n, "x.%d", i);
            const mc_gguf_tensor *t = mc_gguf_find_tensor(g, n);
            CHECK(t && t->part == (uint32_t)i && ((const uint8_t *)t->data)[1] == 7 + i);
            CHECK(t && strstr(t->path, "-of-00003.gguf"));
        }
        int64_t no = -1;
        CHECK(mc_gguf_get_i64(g, "split.no", &no, &e) == MC_OK && no == 0);
        printf("  split of 3 parts: %llu tensors in one table\n",
               (unsigned long long)mc_gguf_n_tensors(g));
        mc_gguf_close(g);
    }
    snprintf(path, sizeof path, "%s/m-00002-of-00003.gguf", g_dir);
    open_fails("one part alone", path, "one part of a split model of 3 parts");

    write_part("m-00002-of-00003.gguf", 2, 3, 3, "x.1");
    open_fails("split.no wrong", g_dir, "split.no is 2 but the file name makes it part 1");
    write_part("m-00002-of-00003.gguf", 1, 4, 3, "x.1");
    open_fails("split.count wrong", g_dir, "split.count is 4 but the folder holds 3 parts");
    write_part("m-00002-of-00003.gguf", 1, 3, 5, "x.1");
    open_fails("tensors.count differs", g_dir, "split.tensors.count is 5 but");
    write_part("m-00001-of-00003.gguf", 0, 3, 4, "x.0");
    write_part("m-00002-of-00003.gguf", 1, 3, 4, "x.1");
    write_part("m-00003-of-00003.gguf", 2, 3, 4, "x.2");
    open_fails("tensors.count vs tensors", g_dir, "the 3 parts hold 3 tensors");
    write_part("m-00001-of-00003.gguf", 0, 3, 3, "x.0");
    write_part("m-00002-of-00003.gguf", 1, 3, 3, "x.0");
    write_part("m-00003-of-00003.gguf", 2, 3, 3, "x.2");
    open_fails("tensor in two parts", g_dir, "tensor 'x.0' is also in");
    write_part("m-00002-of-00003.gguf", 1, 3, 3, "x.1");
    snprintf(path, sizeof path, "%s/m-00002-of-00003.gguf", g_dir);
    CHECK(unlink(path) == 0);
    open_fails("missing part", g_dir, "holds 2");
    write_part("m-00002-of-00004.gguf", 1, 3, 3, "x.1");
    open_fails("parts of two counts", g_dir, "split parts of different models");
    rm_all();
    write_part("m-00001-of-00002.gguf", 0, 2, 2, "x.0");
    write_part("m-00003-of-00002.gguf", 1, 2, 2, "x.1");
    open_fails("part number gap", g_dir, "split part 2 of 2 is missing");
    write_part("other.gguf", 1, 2, 2, "x.1");
    open_fails("stray file", g_dir, "other.gguf is not named as a split part");
    rm_all();
    /* a part without split keys */
    write_part("m-00001-of-00002.gguf", 0, 2, 2, "x.0");
    wb nb = {0};
    write_small(&nb);
    write_file("m-00002-of-00002.gguf", &nb);
    free(nb.p);
    open_fails("part without split keys", g_dir, "split part without the key 'split.no'");
    rm_all();
}

/* the committed fixtures (fuzz seeds, written by make_gguf.py: a second,
 * independent writer) read back with their values */
static mc_gguf *open_fixture(const char *fixtures, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/gguf/%s", fixtures, name);
    mc_gguf *g = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (mc_gguf_open(path, &g, &e) != MC_OK)
        fprintf(stderr, "  fixture %s: %s\n", name, e.msg);
    CHECK(g != NULL);
    if (g)
        printf("fixture %s: %llu tensors, %llu keys\n", name,
               (unsigned long long)mc_gguf_n_tensors(g), (unsigned long long)mc_gguf_n_kv(g));
    return g;
}

static void test_fixtures(const char *fixtures)
{
    mc_err e;
    mc_err_clear(&e);
    mc_gguf *g = open_fixture(fixtures, "small_f32_q8_0.gguf");
    const mc_gguf_tensor *t = g ? mc_gguf_find_tensor(g, "b") : NULL;
    CHECK(t && t->type == MC_GGML_Q8_0 && t->nbytes == 34 && t->offset % 32 == 0);
    mc_gguf_close(g);

    g = open_fixture(fixtures, "all_types_align64.gguf");
    uint64_t u64 = 0;
    int64_t i64 = 0;
    CHECK(g && mc_gguf_n_tensors(g) == N_SPEC && mc_gguf_alignment(g) == 64);
    CHECK(g && mc_gguf_get_u64(g, "t.u64", &u64, &e) == MC_OK && u64 == UINT64_MAX);
    CHECK(g && mc_gguf_get_i64(g, "t.i64", &i64, &e) == MC_OK && i64 == INT64_MIN);
    CHECK(g && mc_gguf_get_i64(g, "t.u64", &i64, &e) == MC_ERR_FORMAT); /* does not fit */
    for (size_t i = 0; g && i < N_SPEC; i++) {
        t = mc_gguf_tensor_at(g, i);
        CHECK(t && t->type == spec_types[i].type && t->nbytes == 6ull * spec_types[i].bytes &&
              t->offset % 64 == 0);
    }
    mc_gguf_close(g);

    g = open_fixture(fixtures, "tokenizer_like.gguf");
    const mc_gguf_kv *kv = NULL;
    mc_gguf_str s;
    double d;
    int64_t v;
    CHECK(g && mc_gguf_version(g) == 2);
    CHECK(g && mc_gguf_get_arr(g, "tokenizer.ggml.tokens", MC_GGUF_STR, &kv, &e) == MC_OK &&
          kv->arr_n == 6 && mc_gguf_arr_str(kv, 5, &s) == 0 && s.len == 2 &&
          memcmp(s.p, "\xc3\xa9", 2) == 0);
    CHECK(g && mc_gguf_get_arr(g, "tokenizer.ggml.scores", MC_GGUF_F32, &kv, &e) == MC_OK &&
          mc_gguf_arr_float(kv, 3, &d) == 0 && d == -2.0);
    CHECK(g && mc_gguf_get_arr(g, "tokenizer.ggml.token_type", MC_GGUF_I32, &kv, &e) == MC_OK &&
          mc_gguf_arr_int(kv, 0, &v) == 0 && v == 3);
    t = g ? mc_gguf_find_tensor(g, "token_embd.weight") : NULL;
    CHECK(t && t->type == MC_GGML_BF16 && t->ne[0] == 8 && t->ne[1] == 6 && t->nbytes == 96);
    mc_gguf_close(g);
}

/* ---- Q6_K dequantization ------------------------------------------------------- */

/* Packs 256 6-bit values q (0..63), 16 scales and an f16 d into one block,
 * following the byte layout of dtype.h's Q6_K comment (the inverse of the
 * dequantization, written independently of it). */
static void pack_q6_k(const uint8_t *q, const int8_t *sc, uint16_t d, uint8_t *out)
{
    memset(out, 0, sizeof(mc_block_q6_k));
    for (int e = 0; e < 256; e++) {
        int h = e / 128, g = (e % 128) / 32, l = e % 32;
        uint8_t *ql = &out[64 * h + 32 * (g & 1) + l];
        *ql |= (uint8_t)((q[e] & 0xF) << (g < 2 ? 0 : 4));
        out[128 + 32 * h + l] |= (uint8_t)(((q[e] >> 4) & 3) << (2 * g));
    }
    memcpy(out + 192, sc, 16);
    out[208] = (uint8_t)d;
    out[209] = (uint8_t)(d >> 8);
}

static void test_q6_k(void)
{
    uint8_t q[2][256];
    int8_t sc[2][16];
    for (int b = 0; b < 2; b++) {
        for (int e = 0; e < 256; e++)
            q[b][e] = (uint8_t)((e * 37 + 11 + b * 5) % 64);
        for (int j = 0; j < 16; j++)
            sc[b][j] = (int8_t)(j * 9 - 70 + b);
    }
    /* block 0: chosen values at a few places, checked against numbers
     * worked out by hand below (d = 0.5, scales j*9-70) */
    q[0][0] = 63, q[0][37] = 0, q[0][100] = 32, q[0][200] = 5, q[0][255] = 1;
    uint8_t raw[1 + 2 * sizeof(mc_block_q6_k)]; /* one byte in: an unaligned source */
    pack_q6_k(q[0], sc[0], 0x3800 /* 0.5 */, raw + 1);
    pack_q6_k(q[1], sc[1], 0xae66 /* -0.0999755859375 */, raw + 1 + sizeof(mc_block_q6_k));
    float y[512];
    mc_dequantize_row_q6_k(raw + 1, y, 512);
    /* by hand: 0.5 * scale[e/16] * (q - 32) */
    CHECK(y[0] == -1085.0f);   /* 0.5 * -70 * 31 */
    CHECK(y[37] == 832.0f);    /* 0.5 * -52 * -32 */
    CHECK(y[100] == 0.0f);     /* q = 32 */
    CHECK(y[200] == -513.0f);  /* 0.5 * 38 * -27 */
    CHECK(y[255] == -1007.5f); /* 0.5 * 65 * -31 */
    /* every weight of both blocks: (d * scale) * (q - 32), rounded as llama.cpp does */
    int bad_n = 0;
    for (int b = 0; b < 2; b++) {
        float d = b ? -0.0999755859375f : 0.5f;
        for (int e = 0; e < 256; e++) {
            float want = d * (float)sc[b][e / 16] * (float)(q[b][e] - 32);
            if (y[256 * b + e] != want && bad_n++ < 8)
                fprintf(stderr, "  Q6_K block %d weight %d: got %.9g, want %.9g\n", b, e,
                        y[256 * b + e], want);
        }
    }
    printf("Q6_K: 512 weights of 2 blocks dequantized, %d mismatches\n", bad_n);
    CHECK(bad_n == 0);
}

int main(int argc, char **argv)
{
    const char *fixtures = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fixtures) {
        fprintf(stderr, "usage: %s FIXTURES_DIR (or set MC_FIXTURES)\n", argv[0]);
        return 2;
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/mc_test_gguf_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_well_formed();
    test_nesting_limit();
    test_truncations();
    test_malformed();
    test_files();
    test_fixtures(fixtures);
    test_q6_k();
    rmdir(g_dir);
    return check_report("test_gguf");
}
