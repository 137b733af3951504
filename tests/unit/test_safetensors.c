/* test_safetensors.c - the strict safetensors reader against the malformed
 * fixtures (tests/fixtures/malformed, made by make_malformed.py), the valid
 * fixtures, the writer (round trip) and the tiny model checkpoints. */
#include "check.h"
#include "safetensors.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

static const char *g_fixtures;

static void fixture_path(char *buf, size_t len, const char *rel)
{
    snprintf(buf, len, "%s/%s", g_fixtures, rel);
}

/* Reads a whole file into an exactly sized heap buffer (so a sanitized build
 * catches any read past its end). */
static uint8_t *slurp(const char *path, uint64_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0) {
        fclose(fp);
        return NULL;
    }
    size_t n = (size_t)sb.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (buf && n && fread(buf, 1, n, fp) != n) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    *len = n;
    return buf;
}

/* ---------------------------------------------------------------------- */
/* Malformed fixtures                                                      */
/* ---------------------------------------------------------------------- */

typedef struct {
    const char *name;    /* file or folder under malformed/ */
    int is_dir;          /* sharded checkpoint folder */
    mc_status status;    /* expected status */
    const char *tensor;  /* tensor at fault (must be named), or NULL */
    const char *also[2]; /* further words the message must hold (other tensor, shard) */
    const char *what;    /* a word that tells which check fired */
} bad_case;

#define FILE_CASE(n, st, t, a0, a1, w) {n ".safetensors", 0, st, t, {a0, a1}, w}
#define DIR_CASE(n, st, t, a0, a1, w) {n, 1, st, t, {a0, a1}, w}

static const bad_case bad_cases[] = {
    /* framing */
    FILE_CASE("empty_file", MC_ERR_FORMAT, NULL, NULL, NULL, "too short"),
    FILE_CASE("short_5_bytes", MC_ERR_FORMAT, NULL, NULL, NULL, "too short"),
    FILE_CASE("header_len_past_eof", MC_ERR_FORMAT, NULL, NULL, NULL, "does not fit"),
    FILE_CASE("header_len_one_past_eof", MC_ERR_FORMAT, NULL, NULL, NULL, "does not fit"),
    FILE_CASE("header_len_over_limit", MC_ERR_FORMAT, NULL, NULL, NULL, "limit"),
    FILE_CASE("header_len_u64_max", MC_ERR_FORMAT, NULL, NULL, NULL, "limit"),
    FILE_CASE("header_len_zero", MC_ERR_FORMAT, NULL, NULL, NULL, "header length"),
    /* header syntax */
    FILE_CASE("header_not_json", MC_ERR_FORMAT, NULL, NULL, NULL, "JSON"),
    FILE_CASE("header_trailing_garbage", MC_ERR_FORMAT, NULL, NULL, NULL, "JSON"),
    FILE_CASE("header_invalid_utf8", MC_ERR_FORMAT, NULL, NULL, NULL, "JSON"),
    FILE_CASE("header_nul_byte", MC_ERR_FORMAT, NULL, NULL, NULL, "JSON"),
    FILE_CASE("header_is_array", MC_ERR_FORMAT, NULL, NULL, NULL, "object"),
    FILE_CASE("duplicate_tensor_key", MC_ERR_FORMAT, "dup.weight", NULL, NULL, "duplicate"),
    FILE_CASE("shape_int_too_big", MC_ERR_FORMAT, NULL, "99999999999999999999", NULL, "JSON"),
    /* tensor entries */
    FILE_CASE("entry_not_object", MC_ERR_FORMAT, "arr.entry", NULL, NULL, "object"),
    FILE_CASE("entry_unexpected_key", MC_ERR_FORMAT, "extra.key", "scale", NULL, "key"),
    FILE_CASE("dtype_missing", MC_ERR_FORMAT, "nodtype.w", NULL, NULL, "dtype"),
    FILE_CASE("dtype_not_string", MC_ERR_FORMAT, "numdtype.w", NULL, NULL, "dtype"),
    FILE_CASE("dtype_f64", MC_ERR_UNSUPPORTED, "double.w", "F64", NULL, "dtype"),
    FILE_CASE("dtype_q9", MC_ERR_UNSUPPORTED, "quant.w", "Q9", NULL, "dtype"),
    FILE_CASE("dtype_lowercase", MC_ERR_UNSUPPORTED, "lower.w", "bf16", NULL, "dtype"),
    FILE_CASE("shape_not_array", MC_ERR_FORMAT, "scalar.shape", NULL, NULL, "shape"),
    FILE_CASE("shape_missing", MC_ERR_FORMAT, "noshape.w", NULL, NULL, "shape"),
    FILE_CASE("shape_negative_dim", MC_ERR_FORMAT, "neg.dim", NULL, NULL, "shape[1]"),
    FILE_CASE("shape_float_dim", MC_ERR_FORMAT, "float.dim", NULL, NULL, "shape[0]"),
    FILE_CASE("shape_numel_overflow", MC_ERR_OVERFLOW, "numel.overflow", NULL, NULL, "overflow"),
    FILE_CASE("shape_bytes_overflow", MC_ERR_OVERFLOW, "bytes.overflow", NULL, NULL, "overflow"),
    FILE_CASE("rank_9", MC_ERR_FORMAT, "rank.nine", NULL, NULL, "rank"),
    FILE_CASE("offsets_missing", MC_ERR_FORMAT, "nooffs.w", NULL, NULL, "data_offsets"),
    FILE_CASE("offsets_one_int", MC_ERR_FORMAT, "one.offset", NULL, NULL, "data_offsets"),
    FILE_CASE("offsets_three_ints", MC_ERR_FORMAT, "three.offsets", NULL, NULL, "data_offsets"),
    FILE_CASE("offsets_strings", MC_ERR_FORMAT, "string.offsets", NULL, NULL, "data_offsets"),
    FILE_CASE("offsets_negative", MC_ERR_FORMAT, "neg.offset", NULL, NULL, "order"),
    FILE_CASE("offsets_reversed", MC_ERR_FORMAT, "rev.offsets", NULL, NULL, "order"),
    FILE_CASE("offsets_past_end", MC_ERR_FORMAT, "past.end", NULL, NULL, "end"),
    FILE_CASE("offsets_far_past_end", MC_ERR_FORMAT, "far.end", NULL, NULL, "end"),
    FILE_CASE("span_mismatch", MC_ERR_FORMAT, "span.short", NULL, NULL, "span"),
    FILE_CASE("span_nonzero_for_empty", MC_ERR_FORMAT, "empty.span", NULL, NULL, "span"),
    FILE_CASE("overlap_partial", MC_ERR_FORMAT, "second.w", "first.w", NULL, "overlap"),
    FILE_CASE("overlap_identical", MC_ERR_FORMAT, "twin.a", "twin.b", NULL, "overlap"),
    FILE_CASE("overlap_contained", MC_ERR_FORMAT, "inner.w", "outer.w", NULL, "overlap"),
    FILE_CASE("metadata_non_string", MC_ERR_FORMAT, NULL, "epoch", NULL, "__metadata__"),
    FILE_CASE("metadata_not_object", MC_ERR_FORMAT, NULL, NULL, NULL, "__metadata__"),
    FILE_CASE("empty_name", MC_ERR_FORMAT, NULL, NULL, NULL, "name"),
    FILE_CASE("name_too_long", MC_ERR_FORMAT, NULL, "1025", NULL, "name"),
    /* sharded checkpoints */
    DIR_CASE("ckpt_missing_tensor", MC_ERR_FORMAT, "ghost.b", "model-00001-of-00002.safetensors",
             "index.json", "contain"),
    DIR_CASE("ckpt_path_escape", MC_ERR_FORMAT, "small.weight", "index.json", NULL, "file name"),
    DIR_CASE("ckpt_absolute_path", MC_ERR_FORMAT, "abs.weight", "index.json", NULL, "file name"),
    DIR_CASE("ckpt_duplicate_tensor", MC_ERR_FORMAT, "shared.b",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "both"),
    DIR_CASE("ckpt_noindex_duplicate", MC_ERR_FORMAT, "both.w",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "both"),
    DIR_CASE("ckpt_wrong_shard", MC_ERR_FORMAT, "moved.a", "model-00002-of-00002.safetensors",
             "index.json", "contain"),
    DIR_CASE("ckpt_missing_shard", MC_ERR_IO, NULL, "model-00002-of-00002.safetensors", NULL,
             "open"),
    DIR_CASE("ckpt_bad_shard", MC_ERR_FORMAT, "clash.y", "clash.x",
             "model-00002-of-00002.safetensors", "overlap"),
    DIR_CASE("ckpt_index_not_json", MC_ERR_FORMAT, NULL, "index.json", NULL, "JSON"),
    DIR_CASE("ckpt_index_no_weight_map", MC_ERR_FORMAT, NULL, "index.json", NULL, "weight_map"),
    DIR_CASE("ckpt_weight_map_not_string", MC_ERR_FORMAT, "numbered.b", "index.json", NULL,
             "file name"),
};
#define N_BAD (sizeof bad_cases / sizeof bad_cases[0])

/* Checks one failure: status, cleared output, and the words of the message. */
static void check_failure(const bad_case *bc, const char *api, mc_status st, int out_null,
                          const mc_err *err)
{
    CHECKF(st != MC_OK, "%s(%s) accepted a malformed input", api, bc->name);
    if (st == MC_OK)
        return;
    CHECKF(st == bc->status, "%s(%s): status %d (%s), expected %d (%s): %s", api, bc->name, st,
           mc_status_str(st), bc->status, mc_status_str(bc->status), err->msg);
    CHECKF(err->status == st, "%s(%s): err.status %d != returned %d", api, bc->name, err->status,
           st);
    CHECKF(out_null, "%s(%s): output not NULL after a failure", api, bc->name);
    CHECKF(err->msg[0] != '\0', "%s(%s): empty message", api, bc->name);
    CHECKF(strstr(err->msg, bc->name) != NULL, "%s(%s): message does not name the file: %s", api,
           bc->name, err->msg);
    if (bc->tensor)
        CHECKF(strstr(err->msg, bc->tensor) != NULL,
               "%s(%s): message does not name tensor '%s': %s", api, bc->name, bc->tensor,
               err->msg);
    for (int i = 0; i < 2; i++)
        if (bc->also[i])
            CHECKF(strstr(err->msg, bc->also[i]) != NULL, "%s(%s): message lacks '%s': %s", api,
                   bc->name, bc->also[i], err->msg);
    CHECKF(strstr(err->msg, bc->what) != NULL, "%s(%s): message lacks '%s' (wrong check?): %s",
           api, bc->name, bc->what, err->msg);
}

static void test_malformed_cases(void)
{
    char path[4096];
    for (size_t i = 0; i < N_BAD; i++) {
        const bad_case *bc = &bad_cases[i];
        snprintf(path, sizeof path, "%s/malformed/%s", g_fixtures, bc->name);
        mc_err err;
        mc_status st;
        st_checkpoint *c = (st_checkpoint *)&err; /* non-NULL sentinel */
        if (!bc->is_dir) {
            /* 1. memory-mapped file */
            st_file *f = (st_file *)&err;
            mc_err_clear(&err);
            st = st_file_open(path, &f, &err);
            printf("  %-36s %s\n", bc->name, st ? err.msg : "(accepted!)");
            check_failure(bc, "st_file_open", st, f == NULL, &err);
            if (st == MC_OK)
                st_file_close(f);
            char first[sizeof err.msg];
            memcpy(first, err.msg, sizeof first);

            /* 2. the same bytes from an exactly sized heap buffer */
            uint64_t len = 0;
            uint8_t *buf = slurp(path, &len);
            CHECKF(buf != NULL, "cannot read %s", path);
            if (buf) {
                f = (st_file *)&err;
                mc_err_clear(&err);
                st = st_file_parse(buf, len, path, &f, &err);
                check_failure(bc, "st_file_parse", st, f == NULL, &err);
                if (st == MC_OK)
                    st_file_close(f);
                else
                    CHECKF(!strcmp(first, err.msg), "%s: parse and open disagree: '%s' vs '%s'",
                           bc->name, err.msg, first);
                free(buf);
            }
        }
        /* 3. as a checkpoint (a single file or a sharded folder) */
        mc_err_clear(&err);
        st = st_checkpoint_open(path, &c, &err);
        if (bc->is_dir)
            printf("  %-36s %s\n", bc->name, st ? err.msg : "(accepted!)");
        check_failure(bc, "st_checkpoint_open", st, c == NULL, &err);
        if (st == MC_OK)
            st_checkpoint_close(c);
    }
}

/* Every fixture in malformed/ is either valid_* or listed in bad_cases, so a
 * new fixture cannot go untested; and all listed ones exist. */
static void test_malformed_listing(void)
{
    char dir[4096];
    fixture_path(dir, sizeof dir, "malformed");
    DIR *d = opendir(dir);
    CHECKF(d != NULL, "cannot list %s", dir);
    if (!d)
        return;
    int seen[N_BAD] = {0};
    int n_valid = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        /* configs/ holds malformed config.json files (test_config_bad.c) */
        if (n[0] == '.' || !strcmp(n, "make_malformed.py") || !strcmp(n, "configs"))
            continue;
        if (!strncmp(n, "valid_", 6)) {
            n_valid++;
            continue;
        }
        size_t k = 0;
        while (k < N_BAD && strcmp(bad_cases[k].name, n))
            k++;
        CHECKF(k < N_BAD, "fixture malformed/%s is not covered by bad_cases", n);
        if (k < N_BAD)
            seen[k] = 1;
    }
    closedir(d);
    CHECKF(n_valid == 3, "expected 3 valid_* fixtures, found %d", n_valid);
    for (size_t k = 0; k < N_BAD; k++)
        CHECKF(seen[k], "bad_cases names missing fixture malformed/%s", bad_cases[k].name);
}

/* Header-length bound on a buffer big enough that only the bound can fail. */
static void test_header_bound(void)
{
    size_t len = 8 + (size_t)MC_ST_MAX_HEADER + 8;
    uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECKF(buf != MAP_FAILED, "mmap of %zu bytes failed", len);
    if (buf == MAP_FAILED)
        return;
    memset(buf + 8, ' ', MC_ST_MAX_HEADER + 8);
    buf[8] = '{';
    buf[9] = '}';
    st_file *f;
    mc_err err;

    uint64_t hlen = (uint64_t)MC_ST_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hlen >> (8 * i));
    mc_err_clear(&err);
    mc_status st = st_file_parse(buf, len, "bound.safetensors", &f, &err);
    CHECKF(st == MC_ERR_FORMAT && strstr(err.msg, "limit") && strstr(err.msg, "bound.safetensors"),
           "header of MAX+1 bytes: status %d: %s", st, err.msg);
    if (st == MC_OK)
        st_file_close(f);

    hlen = MC_ST_MAX_HEADER; /* exactly at the bound: '{}' + spaces, no tensors */
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hlen >> (8 * i));
    mc_err_clear(&err);
    st = st_file_parse(buf, 8 + hlen, "bound.safetensors", &f, &err);
    CHECKF(st == MC_OK, "header of exactly MAX bytes rejected: %s", err.msg);
    if (st == MC_OK) {
        CHECK(st_file_count(f) == 0);
        st_file_close(f);
    }
    munmap(buf, len);
}

/* ---------------------------------------------------------------------- */
/* Valid fixtures                                                          */
/* ---------------------------------------------------------------------- */

typedef struct {
    const char *name;
    mc_dtype dtype;
    int ndim;
    int64_t shape[3];
    uint64_t offset; /* in the data region */
    uint64_t nbytes;
    const void *raw;
    float f32[9]; /* st_tensor_to_f32 of the first (up to 9) elements */
} want_tensor;

static const float mixed_f32[6] = {1.5f, -2.25f, 0.0f, 1e-3f, 65504.0f, -0.0f};
static const uint16_t mixed_bf16[4] = {0x3F80, 0xC000, 0x7F80, 0x0001};
static const uint16_t mixed_f16[4] = {0x3C00, 0xC000, 0x7BFF, 0x0001};
static const uint8_t mixed_fp8[9] = {0x00, 0x01, 0x08, 0x38, 0x40, 0x7E, 0xFE, 0xB8, 0x39};
static const int64_t mixed_i64[3] = {-1, ((int64_t)1 << 40) + 5, INT64_MAX};
static const int32_t mixed_i32[2] = {-123456, 2147483647};
static const uint8_t mixed_u8[5] = {0, 1, 127, 128, 255};
static const int32_t mixed_scalar[1] = {7};

/* sorted by name, as the reader hands them out */
static const want_tensor mixed_want[] = {
    {"a.bf16", MC_DT_BF16, 2, {2, 2}, 24, 8, mixed_bf16, {1.0f, -2.0f, INFINITY, 0x1p-133f}},
    {"empty", MC_DT_F32, 2, {0, 4}, 86, 0, NULL, {0}},
    {"fp8.w", MC_DT_F8_E4M3, 2, {3, 3}, 40, 9, mixed_fp8,
     {0.0f, 0x1p-9f, 0x1p-6f, 1.0f, 2.0f, 448.0f, -448.0f, -1.0f, 1.125f}},
    {"i32", MC_DT_I32, 1, {2}, 73, 8, mixed_i32, {-123456.0f, 2147483648.0f}},
    {"idx.i64", MC_DT_I64, 1, {3}, 49, 24, mixed_i64,
     {-1.0f, 1099511627776.0f, 9223372036854775808.0f}},
    {"m.f16", MC_DT_F16, 1, {4}, 32, 8, mixed_f16, {1.0f, -2.0f, 65504.0f, 0x1p-24f}},
    {"scalar", MC_DT_I32, 0, {0}, 86, 4, mixed_scalar, {7.0f}},
    {"u8", MC_DT_U8, 1, {5}, 81, 5, mixed_u8, {0.0f, 1.0f, 127.0f, 128.0f, 255.0f}},
    {"z.f32", MC_DT_F32, 2, {2, 3}, 0, 24, mixed_f32,
     {1.5f, -2.25f, 0.0f, 1e-3f, 65504.0f, -0.0f}},
};

static char long_name[1025];
static const uint16_t small_bf16[4] = {0x3F80, 0x4000, 0x4040, 0x4080};
static const float small_f32[1] = {0.5f};
static const uint8_t small_u8[1] = {42};
static want_tensor small_want[] = {
    {"emb.\xc3\xa9", MC_DT_F32, 1, {1}, 8, 4, small_f32, {0.5f}},
    {long_name, MC_DT_U8, 1, {1}, 12, 1, small_u8, {42.0f}},
    {"small.weight", MC_DT_BF16, 2, {2, 2}, 0, 8, small_bf16, {1.0f, 2.0f, 3.0f, 4.0f}},
};

static uint64_t header_len(const uint8_t *buf)
{
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = (h << 8) | buf[i];
    return h;
}

static int same_float_bits(float a, float b) { return !memcmp(&a, &b, sizeof a); }

/* Checks a parsed file against the expected tensors; base = start of the
 * data region when known (parse from memory), else NULL. */
static void check_tensors(const char *file, const st_file *f, const want_tensor *want, size_t n,
                          const uint8_t *base)
{
    CHECKF(st_file_count(f) == n, "%s: %zu tensors, expected %zu", file, st_file_count(f), n);
    if (st_file_count(f) != n)
        return;
    CHECK(st_file_tensor(f, n) == NULL);
    for (size_t i = 0; i < n; i++) {
        const want_tensor *w = &want[i];
        const st_tensor *t = st_file_tensor(f, i);
        CHECKF(!strcmp(t->name, w->name), "%s: tensor %zu is '%.40s', expected '%.40s'", file, i,
               t->name, w->name);
        CHECKF(st_file_find(f, w->name) == t, "%s: st_file_find('%.40s') misses", file, w->name);
        CHECKF(t->dtype == w->dtype, "%s: '%s' dtype %s, expected %s", file, w->name,
               mc_dtype_name(t->dtype), mc_dtype_name(w->dtype));
        CHECKF(t->ndim == w->ndim, "%s: '%s' ndim %d, expected %d", file, w->name, t->ndim,
               w->ndim);
        uint64_t numel = 1;
        for (int d = 0; d < w->ndim && d < t->ndim; d++) {
            CHECKF(t->shape[d] == w->shape[d], "%s: '%s' shape[%d] = %lld, expected %lld", file,
                   w->name, d, (long long)t->shape[d], (long long)w->shape[d]);
            numel *= (uint64_t)w->shape[d];
        }
        CHECKF(t->numel == numel, "%s: '%s' numel %llu, expected %llu", file, w->name,
               (unsigned long long)t->numel, (unsigned long long)numel);
        CHECKF(t->nbytes == w->nbytes, "%s: '%s' nbytes %llu, expected %llu", file, w->name,
               (unsigned long long)t->nbytes, (unsigned long long)w->nbytes);
        CHECKF(t->path && strstr(t->path, file), "%s: '%s' path '%s'", file, w->name,
               t->path ? t->path : "(null)");
        if (base && w->nbytes)
            CHECKF((const uint8_t *)t->data == base + w->offset,
                   "%s: '%s' data at offset %lld, expected %llu", file, w->name,
                   (long long)((const uint8_t *)t->data - base), (unsigned long long)w->offset);
        if (w->nbytes && t->nbytes == w->nbytes) {
            const uint8_t *a = t->data, *b = w->raw;
            size_t bad = 0;
            for (size_t k = 0; k < w->nbytes; k++)
                if (a[k] != b[k] && bad++ < 4)
                    fprintf(stderr, "  %s '%s' byte %zu: 0x%02x, expected 0x%02x\n", file,
                            w->name, k, a[k], b[k]);
            CHECKF(bad == 0, "%s: '%s' has %zu wrong bytes", file, w->name, bad);
        }
        if (t->numel == numel && numel <= 9) {
            float got[10];
            for (int k = 0; k < 10; k++)
                got[k] = -12345.0f;
            st_tensor_to_f32(t, got);
            for (uint64_t k = 0; k < numel; k++)
                CHECKF(same_float_bits(got[k], w->f32[k]), "%s: '%s' f32[%llu] = %.9g, expected %.9g",
                       file, w->name, (unsigned long long)k, got[k], w->f32[k]);
            CHECKF(got[numel] == -12345.0f, "%s: '%s' st_tensor_to_f32 wrote past numel", file,
                   w->name);
        }
    }
}

static void test_valid_files(void)
{
    memset(long_name, 'n', 1024);
    long_name[1024] = '\0';
    char path[4096];
    mc_err err;
    st_file *f;

    /* valid_mixed: every dtype, a zero-size tensor, a scalar, metadata */
    fixture_path(path, sizeof path, "malformed/valid_mixed.safetensors");
    mc_err_clear(&err);
    mc_status st = st_file_open(path, &f, &err);
    CHECKF(st == MC_OK, "st_file_open(valid_mixed): %s", err.msg);
    if (st == MC_OK) {
        check_tensors("valid_mixed.safetensors", f, mixed_want,
                      sizeof mixed_want / sizeof mixed_want[0], NULL);
        const char *fmt = st_file_metadata(f, "format"), *note = st_file_metadata(f, "note");
        CHECKF(fmt && !strcmp(fmt, "pt"), "metadata format = %s", fmt ? fmt : "(null)");
        CHECKF(note && !strcmp(note, "valid fixture"), "metadata note = %s", note ? note : "(null)");
        CHECK(st_file_metadata(f, "missing") == NULL);
        CHECK(st_file_find(f, "nope") == NULL);
        CHECK(st_file_find(f, "") == NULL);
        CHECK(st_file_find(f, "z.f3") == NULL);
        st_file_close(f);
    }
    uint64_t len;
    uint8_t *buf = slurp(path, &len);
    CHECKF(buf && len > 8, "cannot read %s", path);
    if (buf && len > 8) {
        uint64_t hlen = header_len(buf);
        CHECKF((8 + hlen) % 8 == 0, "valid_mixed header not padded to 8 (%llu)",
               (unsigned long long)hlen);
        mc_err_clear(&err);
        st = st_file_parse(buf, len, "valid_mixed.safetensors", &f, &err);
        CHECKF(st == MC_OK, "st_file_parse(valid_mixed): %s", err.msg);
        if (st == MC_OK) {
            check_tensors("valid_mixed.safetensors", f, mixed_want,
                          sizeof mixed_want / sizeof mixed_want[0], buf + 8 + hlen);
            st_file_close(f);
        }
    }
    free(buf);

    /* valid_small: unpadded header, UTF-8 name, longest allowed name, no metadata */
    fixture_path(path, sizeof path, "malformed/valid_small.safetensors");
    buf = slurp(path, &len);
    CHECKF(buf && len > 8, "cannot read %s", path);
    if (buf && len > 8) {
        mc_err_clear(&err);
        st = st_file_parse(buf, len, path, &f, &err);
        CHECKF(st == MC_OK, "st_file_parse(valid_small): %s", err.msg);
        if (st == MC_OK) {
            check_tensors("valid_small.safetensors", f, small_want, 3, buf + 8 + header_len(buf));
            CHECK(st_file_metadata(f, "format") == NULL);
            st_file_close(f);
        }
    }
    free(buf);

    /* valid_ckpt: a two-shard checkpoint */
    st_checkpoint *c;
    fixture_path(path, sizeof path, "malformed/valid_ckpt");
    mc_err_clear(&err);
    st = st_checkpoint_open(path, &c, &err);
    CHECKF(st == MC_OK, "st_checkpoint_open(valid_ckpt): %s", err.msg);
    if (st == MC_OK) {
        static const char *const names[3] = {"embed", "layers.0.w", "layers.1.w"};
        static const char *const shard[3] = {"model-00001-of-00002", "model-00001-of-00002",
                                             "model-00002-of-00002"};
        static const float vals[3][2] = {{1.0f, 0}, {1.0f, 2.0f}, {3.0f, 4.0f}};
        CHECKF(st_checkpoint_count(c) == 3, "valid_ckpt: %zu tensors", st_checkpoint_count(c));
        for (size_t i = 0; i < 3 && st_checkpoint_count(c) == 3; i++) {
            const st_tensor *t = st_checkpoint_tensor(c, i);
            CHECKF(!strcmp(t->name, names[i]), "valid_ckpt tensor %zu is %s", i, t->name);
            CHECKF(st_checkpoint_find(c, names[i]) == t, "find(%s)", names[i]);
            CHECKF(strstr(t->path, shard[i]) != NULL, "%s comes from %s", names[i], t->path);
            float v[2] = {0, 0};
            if (t->numel <= 2)
                st_tensor_to_f32(t, v);
            CHECKF(v[0] == vals[i][0] && v[1] == vals[i][1], "%s = [%g, %g]", names[i], v[0],
                   v[1]);
        }
        CHECK(st_checkpoint_tensor(c, 3) == NULL);
        CHECK(st_checkpoint_find(c, "layers.2.w") == NULL);
        st_checkpoint_close(c);
    }

    /* a single file through st_checkpoint_open */
    fixture_path(path, sizeof path, "malformed/valid_mixed.safetensors");
    mc_err_clear(&err);
    st = st_checkpoint_open(path, &c, &err);
    CHECKF(st == MC_OK, "st_checkpoint_open(valid_mixed file): %s", err.msg);
    if (st == MC_OK) {
        CHECK(st_checkpoint_count(c) == 9);
        const st_tensor *t = st_checkpoint_find(c, "fp8.w");
        CHECK(t && t->dtype == MC_DT_F8_E4M3 && t->numel == 9);
        st_checkpoint_close(c);
    }
}

/* Every strict prefix of a valid file must be rejected (and not crash). */
static void test_truncations(const char *rel)
{
    char path[4096];
    fixture_path(path, sizeof path, rel);
    uint64_t len;
    uint8_t *whole = slurp(path, &len);
    CHECKF(whole != NULL, "cannot read %s", path);
    if (!whole)
        return;
    size_t accepted = 0;
    for (uint64_t n = 0; n < len; n++) {
        uint8_t *cut = malloc(n ? n : 1);
        if (!cut)
            break;
        memcpy(cut, whole, n);
        st_file *f;
        mc_err err;
        mc_err_clear(&err);
        mc_status st = st_file_parse(cut, n, rel, &f, &err);
        if (st == MC_OK) {
            if (accepted++ < 3)
                fprintf(stderr, "  %s: prefix of %llu bytes accepted\n", rel, (unsigned long long)n);
            st_file_close(f);
        } else if (!err.msg[0] || !strstr(err.msg, rel)) {
            CHECKF(0, "%s prefix %llu: bad message '%s'", rel, (unsigned long long)n, err.msg);
        }
        free(cut);
    }
    CHECKF(accepted == 0, "%s: %zu strict prefixes accepted", rel, accepted);
    free(whole);
}

static void test_open_errors(void)
{
    char path[4096];
    mc_err err;
    st_file *f;
    st_checkpoint *c;

    fixture_path(path, sizeof path, "malformed/no_such_file.safetensors");
    mc_err_clear(&err);
    mc_status st = st_file_open(path, &f, &err);
    CHECKF(st == MC_ERR_IO && strstr(err.msg, "no_such_file.safetensors"), "missing file: %d %s",
           st, err.msg);
    mc_err_clear(&err);
    st = st_checkpoint_open(path, &c, &err);
    CHECKF(st == MC_ERR_IO && strstr(err.msg, "no_such_file.safetensors"),
           "missing checkpoint: %d %s", st, err.msg);

    fixture_path(path, sizeof path, "malformed/valid_ckpt");
    mc_err_clear(&err);
    st = st_file_open(path, &f, &err);
    CHECKF(st != MC_OK && strstr(err.msg, "valid_ckpt"), "st_file_open(directory): %d %s", st,
           err.msg);
    if (st == MC_OK)
        st_file_close(f);

    /* malformed/ itself: no index and many *.safetensors files */
    fixture_path(path, sizeof path, "malformed");
    mc_err_clear(&err);
    st = st_checkpoint_open(path, &c, &err);
    CHECKF(st == MC_ERR_NOT_FOUND && strstr(err.msg, "malformed"), "folder of many files: %d %s",
           st, err.msg);
    if (st == MC_OK)
        st_checkpoint_close(c);
    printf("  %-36s %s\n", "(folder without an index)", err.msg);
}

/* ---------------------------------------------------------------------- */
/* Writer round trip                                                       */
/* ---------------------------------------------------------------------- */

static void test_round_trip(void)
{
    char path[] = "/tmp/mc_test_st_XXXXXX";
    int fd = mkstemp(path);
    CHECKF(fd >= 0, "mkstemp failed");
    if (fd < 0)
        return;
    close(fd);

    float f32[12];
    uint32_t nan_payload = 0x7fa00001u; /* a signalling NaN: must survive bit for bit */
    for (int i = 0; i < 12; i++)
        f32[i] = (float)i * 0.37f - 2.0f;
    memcpy(&f32[5], &nan_payload, 4);
    uint16_t bf16[5] = {0x3f80, 0xff80, 0x7fc1, 0x0001, 0x8000};
    uint16_t f16[6] = {0x3c00, 0x7bff, 0xfc00, 0x7e01, 0x0001, 0x3555};
    uint8_t fp8[7] = {0x00, 0x7e, 0xfe, 0x7f, 0x01, 0x80, 0x39};
    int64_t i64[2] = {INT64_MIN, INT64_MAX};
    int32_t i32[1] = {-5};
    uint8_t none[1] = {0};
    float scalar = 3.25f;
    uint8_t rank8[2] = {9, 8};
    const st_write_tensor in[] = {
        {"w.f32", MC_DT_F32, 2, {3, 4}, f32},
        {"b.bf16", MC_DT_BF16, 1, {5}, bf16},
        {"h.f16", MC_DT_F16, 2, {2, 3}, f16},
        {"q.fp8", MC_DT_F8_E4M3, 1, {7}, fp8},
        {"i.i64", MC_DT_I64, 1, {2}, i64},
        {"j.i32", MC_DT_I32, 1, {1}, i32},
        {"e.empty", MC_DT_U8, 2, {4, 0}, none},
        {"s.scalar", MC_DT_F32, 0, {0}, &scalar},
        {"r.rank8", MC_DT_U8, 8, {1, 1, 1, 1, 1, 1, 2, 1}, rank8},
        {"\xc3\xa9.utf8", MC_DT_U8, 1, {1}, rank8},
    };
    const size_t n = sizeof in / sizeof in[0];
    mc_err err;
    mc_err_clear(&err);
    mc_status st = st_write(path, in, n, &err);
    CHECKF(st == MC_OK, "st_write: %s", err.msg);

    uint64_t len = 0, total = 0;
    uint8_t *raw = slurp(path, &len);
    for (size_t i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < in[i].ndim; d++)
            numel *= (uint64_t)in[i].shape[d];
        total += numel * mc_dtype_size(in[i].dtype);
    }
    if (raw && len >= 8) {
        uint64_t hlen = header_len(raw);
        CHECKF(hlen % 8 == 0, "header length %llu not a multiple of 8", (unsigned long long)hlen);
        CHECKF(len == 8 + hlen + total, "file is %llu bytes, expected 8 + %llu + %llu",
               (unsigned long long)len, (unsigned long long)hlen, (unsigned long long)total);
    } else {
        CHECKF(0, "cannot read back %s", path);
    }
    free(raw);

    st_file *f;
    mc_err_clear(&err);
    st = st_file_open(path, &f, &err);
    CHECKF(st == MC_OK, "reading back: %s", err.msg);
    if (st == MC_OK) {
        CHECKF(st_file_count(f) == n, "read back %zu tensors of %zu", st_file_count(f), n);
        for (size_t i = 0; i < n; i++) {
            const st_tensor *t = st_file_find(f, in[i].name);
            CHECKF(t != NULL, "tensor '%s' lost", in[i].name);
            if (!t)
                continue;
            CHECKF(t->dtype == in[i].dtype && t->ndim == in[i].ndim, "'%s': %s rank %d", t->name,
                   mc_dtype_name(t->dtype), t->ndim);
            uint64_t numel = 1;
            for (int d = 0; d < in[i].ndim && d < t->ndim; d++) {
                CHECKF(t->shape[d] == in[i].shape[d], "'%s' shape[%d] %lld != %lld", t->name, d,
                       (long long)t->shape[d], (long long)in[i].shape[d]);
                numel *= (uint64_t)in[i].shape[d];
            }
            uint64_t nb = numel * mc_dtype_size(in[i].dtype);
            CHECKF(t->nbytes == nb, "'%s' nbytes %llu != %llu", t->name,
                   (unsigned long long)t->nbytes, (unsigned long long)nb);
            if (t->nbytes == nb && nb)
                CHECKF(!memcmp(t->data, in[i].data, nb), "'%s' bytes differ", t->name);
        }
        st_file_close(f);
    }

    /* errors: a negative dimension, an unwritable path */
    const st_write_tensor neg = {"neg.dim", MC_DT_F32, 2, {2, -3}, f32};
    mc_err_clear(&err);
    st = st_write(path, &neg, 1, &err);
    CHECKF(st == MC_ERR_ARG && strstr(err.msg, "neg.dim"), "negative dim: %d %s", st, err.msg);
    mc_err_clear(&err);
    st = st_write("/nonexistent-dir-mc/x.safetensors", in, 1, &err);
    CHECKF(st == MC_ERR_IO && strstr(err.msg, "x.safetensors"), "unwritable path: %d %s", st,
           err.msg);

    /* no tensors at all still makes a readable file */
    mc_err_clear(&err);
    st = st_write(path, NULL, 0, &err);
    CHECKF(st == MC_OK, "st_write of nothing: %s", err.msg);
    mc_err_clear(&err);
    st = st_file_open(path, &f, &err);
    CHECKF(st == MC_OK, "reading an empty file back: %s", err.msg);
    if (st == MC_OK) {
        CHECK(st_file_count(f) == 0);
        st_file_close(f);
    }
    unlink(path);
}

/* ---------------------------------------------------------------------- */
/* The tiny model checkpoints                                              */
/* ---------------------------------------------------------------------- */

static size_t index_entries(const char *dir)
{
    char path[4096 + 64];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    size_t n = root ? json_object_size(json_object_get(root, "weight_map")) : 0;
    json_decref(root);
    return n;
}

static void check_model(const char *rel)
{
    char dir[4096];
    fixture_path(dir, sizeof dir, rel);
    st_checkpoint *c;
    mc_err err;
    mc_err_clear(&err);
    mc_status st = st_checkpoint_open(dir, &c, &err);
    CHECKF(st == MC_OK, "st_checkpoint_open(%s): %s", rel, err.msg);
    if (st != MC_OK)
        return;
    size_t n = st_checkpoint_count(c), want = index_entries(dir);
    CHECKF(n > 0 && n == want, "%s: %zu tensors, index lists %zu", rel, n, want);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_checkpoint_tensor(c, i);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++)
            numel *= (uint64_t)t->shape[d];
        int ok = t->numel == numel && t->nbytes == numel * mc_dtype_size(t->dtype) &&
                 st_checkpoint_find(c, t->name) == t &&
                 (i == 0 || strcmp(st_checkpoint_tensor(c, i - 1)->name, t->name) < 0);
        if (!ok && bad++ < 4)
            fprintf(stderr, "  %s: inconsistent tensor '%s'\n", rel, t->name);
    }
    CHECKF(bad == 0, "%s: %zu inconsistent tensors", rel, bad);
    CHECK(st_checkpoint_tensor(c, n) == NULL);
    printf("  %-36s %zu tensors\n", rel, n);
    st_checkpoint_close(c);
}

static void test_models(void)
{
    check_model("models/qwen3-moe-tiny");
    check_model("models/deepseek-v3-tiny");
    check_model("models/deepseek-v3-tiny-fp8");

    char dir[4096];
    fixture_path(dir, sizeof dir, "models/qwen3-moe-tiny");
    st_checkpoint *c;
    mc_err err;
    mc_err_clear(&err);
    if (st_checkpoint_open(dir, &c, &err) != MC_OK)
        return; /* already reported */
    const st_tensor *t = st_checkpoint_find(c, "lm_head.weight");
    CHECKF(t != NULL, "qwen3-moe-tiny has no lm_head.weight");
    if (t) {
        CHECKF(t->dtype == MC_DT_BF16 && t->ndim == 2 && t->shape[0] == 1024 &&
                   t->shape[1] == 256 && t->nbytes == 1024u * 256u * 2u,
               "lm_head.weight is %s rank %d [%lld, %lld]", mc_dtype_name(t->dtype), t->ndim,
               (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : -1));
        /* a real weight matrix: finite, not all zero */
        size_t nonzero = 0, nonfinite = 0;
        const uint8_t *p = t->data;
        for (uint64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            float v = mc_bf16_to_f32(h);
            nonzero += v != 0.0f;
            nonfinite += !isfinite(v);
        }
        CHECKF(nonzero > t->numel / 2 && nonfinite == 0, "lm_head.weight: %zu nonzero, %zu non-finite",
               nonzero, nonfinite);
    }
    st_checkpoint_close(c);
}

int main(int argc, char **argv)
{
    g_fixtures = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!g_fixtures) {
        fprintf(stderr, "usage: %s FIXTURES_DIR (or set MC_FIXTURES)\n", argv[0]);
        return 2;
    }
    printf("malformed fixtures:\n");
    test_malformed_cases();
    test_malformed_listing();
    test_header_bound();
    test_open_errors();
    test_valid_files();
    test_truncations("malformed/valid_mixed.safetensors");
    test_truncations("malformed/valid_small.safetensors");
    test_round_trip();
    printf("model checkpoints:\n");
    test_models();
    return check_report("test_safetensors");
}
