/* gguf.c - strict GGUF reader: one file (see gguf.h for the bytes and the
 * checks). Split folders are put together in gguf_split.c. */
#define _GNU_SOURCE
#include "gguf.h"
#include "gguf_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---- ggml types ---------------------------------------------------------- */

typedef struct {
    uint32_t type;
    const char *name;
    uint32_t blk, bytes; /* elements per block, bytes per block */
} ggml_info;

static const ggml_info ggml_types[] = {
    {MC_GGML_F32, "F32", 1, 4},       {MC_GGML_F16, "F16", 1, 2},
    {MC_GGML_Q4_0, "Q4_0", 32, 18},   {MC_GGML_Q4_1, "Q4_1", 32, 20},
    {MC_GGML_Q5_0, "Q5_0", 32, 22},   {MC_GGML_Q5_1, "Q5_1", 32, 24},
    {MC_GGML_Q8_0, "Q8_0", 32, 34},   {MC_GGML_Q8_1, "Q8_1", 32, 36},
    {MC_GGML_Q2_K, "Q2_K", 256, 84},  {MC_GGML_Q3_K, "Q3_K", 256, 110},
    {MC_GGML_Q4_K, "Q4_K", 256, 144}, {MC_GGML_Q5_K, "Q5_K", 256, 176},
    {MC_GGML_Q6_K, "Q6_K", 256, 210}, {MC_GGML_Q8_K, "Q8_K", 256, 292},
    {MC_GGML_I8, "I8", 1, 1},         {MC_GGML_I16, "I16", 1, 2},
    {MC_GGML_I32, "I32", 1, 4},       {MC_GGML_I64, "I64", 1, 8},
    {MC_GGML_F64, "F64", 1, 8},       {MC_GGML_BF16, "BF16", 1, 2},
};

static const ggml_info *ggml_find(uint32_t type)
{
    for (size_t i = 0; i < sizeof ggml_types / sizeof ggml_types[0]; i++)
        if (ggml_types[i].type == type)
            return &ggml_types[i];
    return NULL;
}

const char *mc_ggml_type_name(uint32_t type)
{
    const ggml_info *t = ggml_find(type);
    return t ? t->name : NULL;
}
uint32_t mc_ggml_block_elems(uint32_t type)
{
    const ggml_info *t = ggml_find(type);
    return t ? t->blk : 0;
}
uint32_t mc_ggml_block_bytes(uint32_t type)
{
    const ggml_info *t = ggml_find(type);
    return t ? t->bytes : 0;
}

static const char *const value_type_names[MC_GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};
/* bytes of a fixed-size value; 0 for string and array */
static const uint8_t value_type_size[MC_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *mc_gguf_type_name(uint32_t type)
{
    return type < MC_GGUF_TYPE_COUNT ? value_type_names[type] : "?";
}

/* ---- bounded little-endian reading ---------------------------------------- */

typedef struct {
    const uint8_t *p;
    uint64_t len, pos;
    const char *path;
    mc_err *err;
} rd;

/* "PATH: byte AT: CTX: message" */
static mc_status bad(rd *r, uint64_t at, const char *ctx, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static mc_status bad(rd *r, uint64_t at, const char *ctx, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mc_err_set(r->err, MC_ERR_FORMAT, "%s: byte %llu: %s%s%s", r->path,
                      (unsigned long long)at, ctx ? ctx : "", ctx ? ": " : "", msg);
}

static uint64_t left(const rd *r) { return r->len - r->pos; }

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static mc_status rd_int(rd *r, int n, uint64_t *out, const char *ctx, const char *what)
{
    *out = 0;
    if (left(r) < (uint64_t)n)
        return bad(r, r->pos, ctx, "file ends inside the %s (%d bytes needed, %llu left)", what, n,
                   (unsigned long long)left(r));
    *out = le(r->p + r->pos, n);
    r->pos += (uint64_t)n;
    return MC_OK;
}

/* A string: u64 length (at most max) + bytes, which stay in the file. */
static mc_status rd_str(rd *r, uint64_t max, mc_gguf_str *out, const char *ctx, const char *what)
{
    uint64_t at = r->pos, n;
    mc_status st = rd_int(r, 8, &n, ctx, what);
    if (st != MC_OK)
        return st;
    if (n > max)
        return bad(r, at, ctx, "%s length %llu is over the limit of %llu bytes", what,
                   (unsigned long long)n, (unsigned long long)max);
    if (n > left(r))
        return bad(r, at, ctx, "%s of %llu bytes runs past the end of the file (%llu bytes left)",
                   what, (unsigned long long)n, (unsigned long long)left(r));
    out->p = (const char *)r->p + r->pos;
    out->len = n;
    r->pos += n;
    return MC_OK;
}

/* NUL-terminated copy of a key or name: non-empty, no NUL inside. */
static mc_status name_copy(rd *r, uint64_t at, const mc_gguf_str *s, const char *ctx,
                           const char *what, char **out)
{
    *out = NULL;
    if (s->len == 0)
        return bad(r, at, ctx, "empty %s", what);
    if (memchr(s->p, 0, (size_t)s->len))
        return bad(r, at, ctx, "%s '%.*s' contains a NUL byte", what, (int)strnlen(s->p, 200),
                   s->p);
    char *c = malloc((size_t)s->len + 1);
    if (!c)
        return mc_err_set(r->err, MC_ERR_NOMEM, "%s: out of memory", r->path);
    memcpy(c, s->p, (size_t)s->len);
    c[s->len] = '\0';
    *out = c;
    return MC_OK;
}

/* Grows *arr (of elem-sized items, *cap of them) to hold n + 1. */
static int grow(void **arr, uint64_t *cap, uint64_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    uint64_t nc = *cap ? *cap * 2 : 16;
    void *na = mc_calloc_n((size_t)nc, elem);
    if (!na)
        return -1;
    if (*arr)
        memcpy(na, *arr, (size_t)n * elem);
    free(*arr);
    *arr = na;
    *cap = nc;
    return 0;
}

/* ---- metadata values ------------------------------------------------------- */

/* smallest encoding of one value of each type (arrays: type + count) */
static uint64_t min_size(uint32_t type)
{
    return type == MC_GGUF_STR ? 8 : type == MC_GGUF_ARR ? 12 : value_type_size[type];
}

static mc_status rd_type(rd *r, uint32_t *out, const char *ctx, const char *what)
{
    *out = 0;
    uint64_t at = r->pos, t;
    mc_status st = rd_int(r, 4, &t, ctx, what);
    if (st != MC_OK)
        return st;
    if (t >= MC_GGUF_TYPE_COUNT)
        return bad(r, at, ctx, "unknown %s %llu (0..12 are defined)", what, (unsigned long long)t);
    *out = (uint32_t)t;
    return MC_OK;
}

/* The elements of an array (after its type and count). Strings are
 * collected into *strs (allocated here) when strs is non-NULL; nested
 * arrays are walked to check them, nothing is kept. */
static mc_status rd_array(rd *r, uint32_t elem, uint64_t n, int depth, const char *ctx,
                          mc_gguf_str **strs)
{
    uint64_t at = r->pos;
    if (n > left(r) / min_size(elem))
        return bad(r, at, ctx, "array of %llu %s elements cannot fit in the %llu bytes left",
                   (unsigned long long)n, value_type_names[elem], (unsigned long long)left(r));
    if (elem != MC_GGUF_STR && elem != MC_GGUF_ARR) {
        if (elem == MC_GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (r->p[r->pos + i] > 1)
                    return bad(r, r->pos + i, ctx, "bool array element %llu is %u, not 0 or 1",
                               (unsigned long long)i, r->p[r->pos + i]);
        r->pos += n * value_type_size[elem];
        return MC_OK;
    }
    if (elem == MC_GGUF_STR) {
        mc_gguf_str *s = NULL;
        uint64_t cap = 0;
        for (uint64_t i = 0; i < n; i++) {
            mc_gguf_str one;
            mc_status st = rd_str(r, MC_GGUF_MAX_STR, &one, ctx, "array string");
            if (st == MC_OK && strs && grow((void **)&s, &cap, i, sizeof *s))
                st = mc_err_set(r->err, MC_ERR_NOMEM, "%s: out of memory", r->path);
            if (st != MC_OK) {
                free(s);
                return st;
            }
            if (strs)
                s[i] = one;
        }
        if (strs)
            *strs = s;
        return MC_OK;
    }
    if (depth >= MC_GGUF_MAX_DEPTH)
        return bad(r, at, ctx, "arrays nested deeper than %d levels", MC_GGUF_MAX_DEPTH);
    for (uint64_t i = 0; i < n; i++) {
        uint32_t et;
        uint64_t en;
        mc_status st = rd_type(r, &et, ctx, "array element type");
        if (st == MC_OK)
            st = rd_int(r, 8, &en, ctx, "array count");
        if (st == MC_OK)
            st = rd_array(r, et, en, depth + 1, ctx, NULL);
        if (st != MC_OK)
            return st;
    }
    return MC_OK;
}

static void kv_free(mc_gguf_kv *kv)
{
    free((char *)kv->key);
    free((char *)kv->str);
    free((void *)kv->arr_strs);
}

/* One key-value entry. ctx is a buffer for "key 'NAME'". */
static mc_status rd_kv(rd *r, mc_gguf_kv *kv, char *ctx, size_t ctx_len)
{
    memset(kv, 0, sizeof *kv);
    kv->offset = r->pos;
    snprintf(ctx, ctx_len, "metadata entry at byte %llu", (unsigned long long)r->pos);
    mc_gguf_str k;
    mc_status st = rd_str(r, MC_GGUF_MAX_KEY, &k, ctx, "key");
    if (st == MC_OK)
        st = name_copy(r, kv->offset, &k, ctx, "key", (char **)&kv->key);
    if (st != MC_OK)
        return st;
    snprintf(ctx, ctx_len, "key '%.200s'", kv->key);
    uint32_t t;
    st = rd_type(r, &t, ctx, "value type");
    if (st != MC_OK)
        return st;
    kv->type = (mc_gguf_type)t;
    uint64_t at = r->pos, v;
    switch (kv->type) {
    case MC_GGUF_STR: {
        mc_gguf_str s;
        st = rd_str(r, MC_GGUF_MAX_STR, &s, ctx, "string value");
        if (st != MC_OK)
            return st;
        char *c = malloc((size_t)s.len + 1);
        if (!c)
            return mc_err_set(r->err, MC_ERR_NOMEM, "%s: out of memory", r->path);
        memcpy(c, s.p, (size_t)s.len);
        c[s.len] = '\0';
        kv->str = c;
        kv->str_len = s.len;
        return MC_OK;
    }
    case MC_GGUF_ARR: {
        st = rd_type(r, &t, ctx, "array element type");
        if (st == MC_OK)
            st = rd_int(r, 8, &kv->arr_n, ctx, "array count");
        if (st != MC_OK)
            return st;
        kv->arr_type = (mc_gguf_type)t;
        kv->arr_data = r->p + r->pos;
        return rd_array(r, t, kv->arr_n, 1, ctx, (mc_gguf_str **)&kv->arr_strs);
    }
    default:
        st = rd_int(r, value_type_size[t], &v, ctx, "value");
        if (st != MC_OK)
            return st;
        switch (kv->type) {
        case MC_GGUF_I8: kv->v.i = (int8_t)v; break;
        case MC_GGUF_I16: kv->v.i = (int16_t)v; break;
        case MC_GGUF_I32: kv->v.i = (int32_t)v; break;
        case MC_GGUF_I64: kv->v.i = (int64_t)v; break;
        case MC_GGUF_F32: {
            uint32_t u = (uint32_t)v;
            float f;
            memcpy(&f, &u, sizeof f);
            kv->v.f = f;
            break;
        }
        case MC_GGUF_F64: memcpy(&kv->v.f, &v, sizeof v); break;
        case MC_GGUF_BOOL:
            if (v > 1)
                return bad(r, at, ctx, "bool value is %llu, not 0 or 1", (unsigned long long)v);
            kv->v.u = v;
            break;
        default: kv->v.u = v; break;
        }
        return MC_OK;
    }
}

/* ---- one file ---------------------------------------------------------------- */

void mc_gguf_part_free(mc_gguf_part *p)
{
    if (!p)
        return;
    for (uint64_t i = 0; i < p->n_kv; i++)
        kv_free(&p->kvs[i]);
    free(p->kvs);
    free(p->kv_sorted);
    for (uint64_t i = 0; i < p->n_tensors; i++)
        free((char *)p->tensors[i].name);
    free(p->tensors);
    free(p->info_at);
    if (p->map) {
        mc_sigbus_unregister(p->map);
        munmap(p->map, (size_t)p->map_len);
    }
    free(p->path);
    free(p);
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp((*(const mc_gguf_kv *const *)a)->key, (*(const mc_gguf_kv *const *)b)->key);
}

int mc_gguf_cmp_tensor_name(const void *a, const void *b)
{
    return strcmp((*(const mc_gguf_tensor *const *)a)->name,
                  (*(const mc_gguf_tensor *const *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const mc_gguf_tensor *x = *(const mc_gguf_tensor *const *)a;
    const mc_gguf_tensor *y = *(const mc_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : 0;
}

const mc_gguf_kv *mc_gguf_part_find_kv(const mc_gguf_part *p, const char *key)
{
    size_t lo = 0, hi = (size_t)p->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, p->kv_sorted[mid]->key);
        if (c == 0)
            return p->kv_sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* general.alignment: a u32 power of two when present */
static mc_status read_alignment(rd *r, mc_gguf_part *p)
{
    p->alignment = MC_GGUF_DEFAULT_ALIGNMENT;
    const mc_gguf_kv *kv = mc_gguf_part_find_kv(p, "general.alignment");
    if (!kv)
        return MC_OK;
    if (kv->type != MC_GGUF_U32)
        return bad(r, kv->offset, "key 'general.alignment'", "has type %s, not u32",
                   value_type_names[kv->type]);
    if (kv->v.u == 0 || (kv->v.u & (kv->v.u - 1)))
        return bad(r, kv->offset, "key 'general.alignment'", "%llu is not a power of two",
                   (unsigned long long)kv->v.u);
    p->alignment = (uint32_t)kv->v.u;
    return MC_OK;
}

/* One tensor info. */
static mc_status rd_tensor(rd *r, mc_gguf_tensor *t, char *ctx, size_t ctx_len)
{
    uint64_t at = r->pos, v;
    snprintf(ctx, ctx_len, "tensor info at byte %llu", (unsigned long long)at);
    mc_gguf_str s;
    mc_status st = rd_str(r, MC_GGUF_MAX_NAME, &s, ctx, "tensor name");
    if (st == MC_OK)
        st = name_copy(r, at, &s, ctx, "tensor name", (char **)&t->name);
    if (st != MC_OK)
        return st;
    snprintf(ctx, ctx_len, "tensor '%.200s'", t->name);
    if ((st = rd_int(r, 4, &v, ctx, "n_dims")) != MC_OK)
        return st;
    if (v < 1 || v > MC_GGUF_MAX_DIMS)
        return bad(r, r->pos - 4, ctx, "n_dims %llu is not in 1..%d", (unsigned long long)v,
                   MC_GGUF_MAX_DIMS);
    t->n_dims = (int)v;
    t->n_elems = 1;
    for (int d = 0; d < MC_GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims)
            continue;
        if ((st = rd_int(r, 8, &t->ne[d], ctx, "dimension")) != MC_OK)
            return st;
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
            return bad(r, r->pos - 8, ctx, "dimension %d is %llu (must be 1..2^63-1)", d,
                       (unsigned long long)t->ne[d]);
        if (mc_mul_u64(t->n_elems, t->ne[d], &t->n_elems) || t->n_elems > (uint64_t)INT64_MAX)
            return bad(r, r->pos - 8, ctx, "element count overflows at dimension %d", d);
    }
    uint64_t type_at = r->pos;
    if ((st = rd_int(r, 4, &v, ctx, "ggml type")) != MC_OK)
        return st;
    const ggml_info *gi = ggml_find((uint32_t)v);
    if (!gi)
        return bad(r, type_at, ctx, "unknown or unsupported ggml type %llu", (unsigned long long)v);
    t->type = gi->type;
    if (t->ne[0] % gi->blk)
        return bad(r, type_at, ctx, "%s rows of %llu elements are not whole blocks of %u",
                   gi->name, (unsigned long long)t->ne[0], gi->blk);
    if (mc_mul_u64(t->ne[0] / gi->blk, gi->bytes, &t->nbytes) ||
        mc_mul_u64(t->nbytes, t->n_elems / t->ne[0], &t->nbytes))
        return bad(r, type_at, ctx, "byte size overflows");
    return rd_int(r, 8, &t->offset, ctx, "data offset"); /* relative until placed */
}

/* After the infos: place the data section and every tensor in it. */
static mc_status place_tensors(rd *r, mc_gguf_part *p)
{
    uint64_t a = p->alignment, end = r->pos, start;
    if (mc_add_u64(end, (a - end % a) % a, &start))
        return bad(r, end, NULL, "data section start overflows");
    p->data_start = start;
    if (p->n_tensors == 0)
        return MC_OK;
    char ctx[256];
    for (uint64_t i = 0; i < p->n_tensors; i++) {
        mc_gguf_tensor *t = &p->tensors[i];
        snprintf(ctx, sizeof ctx, "tensor '%.200s'", t->name);
        uint64_t rel = t->offset, abs_, stop;
        if (rel % a)
            return bad(r, p->info_at[i], ctx, "data offset %llu is not a multiple of the alignment %llu",
                       (unsigned long long)rel, (unsigned long long)a);
        if (mc_add_u64(start, rel, &abs_) || mc_add_u64(abs_, t->nbytes, &stop))
            return bad(r, p->info_at[i], ctx, "data offset %llu + %llu bytes overflows",
                       (unsigned long long)rel, (unsigned long long)t->nbytes);
        if (stop > r->len)
            return bad(r, p->info_at[i], ctx,
                       "data at bytes %llu..%llu (offset %llu) runs past the end of the file "
                       "(%llu bytes)",
                       (unsigned long long)abs_, (unsigned long long)stop,
                       (unsigned long long)rel, (unsigned long long)r->len);
        t->offset = abs_;
        t->data = r->p + abs_;
        t->path = p->path;
    }
    const mc_gguf_tensor **by = mc_calloc_n((size_t)p->n_tensors, sizeof *by);
    if (!by)
        return mc_err_set(r->err, MC_ERR_NOMEM, "%s: out of memory", r->path);
    for (uint64_t i = 0; i < p->n_tensors; i++)
        by[i] = &p->tensors[i];
    mc_status st = MC_OK;
    qsort(by, (size_t)p->n_tensors, sizeof *by, mc_gguf_cmp_tensor_name);
    for (uint64_t i = 1; i < p->n_tensors && st == MC_OK; i++)
        if (strcmp(by[i - 1]->name, by[i]->name) == 0)
            st = bad(r, p->info_at[by[i] - p->tensors], NULL, "duplicate tensor name '%.200s'",
                     by[i]->name);
    qsort(by, (size_t)p->n_tensors, sizeof *by, cmp_tensor_offset);
    for (uint64_t i = 1; i < p->n_tensors && st == MC_OK; i++)
        if (by[i - 1]->offset + by[i - 1]->nbytes > by[i]->offset)
            st = bad(r, p->info_at[by[i] - p->tensors], NULL,
                     "tensor '%.200s' (data at byte %llu) overlaps tensor '%.200s' (bytes %llu..%llu)",
                     by[i]->name, (unsigned long long)by[i]->offset, by[i - 1]->name,
                     (unsigned long long)by[i - 1]->offset,
                     (unsigned long long)(by[i - 1]->offset + by[i - 1]->nbytes));
    free(by);
    return st;
}

mc_status mc_gguf_part_parse(const uint8_t *buf, uint64_t len, const char *path,
                             mc_gguf_part **out, mc_err *err)
{
    *out = NULL;
    mc_gguf_part *p = calloc(1, sizeof *p);
    char *pc = strdup(path ? path : "(gguf)");
    if (!p || !pc) {
        free(p);
        free(pc);
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
    }
    p->path = pc;
    rd r = {.p = buf, .len = len, .pos = 0, .path = p->path, .err = err};
    mc_status st;
    uint64_t v, n_tensors = 0, n_kv = 0, cap = 0;
    char ctx[256];
    if (len < 4 || memcmp(buf, "GGUF", 4) != 0) {
        st = len < 4 ? bad(&r, 0, NULL, "file of %llu bytes is too short for a GGUF header",
                           (unsigned long long)len)
                     : bad(&r, 0, NULL, "bad magic (not a GGUF file)");
        goto fail;
    }
    r.pos = 4;
    if ((st = rd_int(&r, 4, &v, "header", "version")) != MC_OK)
        goto fail;
    if (v != 2 && v != 3) {
        st = bad(&r, 4, "header", v == 0x03000000u || v == 0x02000000u
                                      ? "version %llu: a big-endian GGUF file (not supported)"
                                      : "version %llu is not supported (2 and 3 are)",
                 (unsigned long long)v);
        goto fail;
    }
    p->version = (uint32_t)v;
    if ((st = rd_int(&r, 8, &n_tensors, "header", "tensor count")) != MC_OK ||
        (st = rd_int(&r, 8, &n_kv, "header", "metadata count")) != MC_OK)
        goto fail;
    /* smallest entries (an empty name is refused later, with its own
     * message): a kv 8+4+1 bytes, a tensor info 8+4+8+4+8 */
    if (n_kv > left(&r) / 13 || n_tensors > left(&r) / 32 ||
        n_kv * 13 + n_tensors * 32 > left(&r)) {
        st = bad(&r, 8, "header", "%llu tensors and %llu metadata entries cannot fit in the %llu "
                 "bytes left", (unsigned long long)n_tensors, (unsigned long long)n_kv,
                 (unsigned long long)left(&r));
        goto fail;
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        if (grow((void **)&p->kvs, &cap, i, sizeof *p->kvs)) {
            st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", p->path);
            goto fail;
        }
        st = rd_kv(&r, &p->kvs[i], ctx, sizeof ctx);
        p->n_kv = i + 1; /* freed on failure too */
        if (st != MC_OK)
            goto fail;
    }
    if (n_kv && !(p->kv_sorted = mc_calloc_n((size_t)n_kv, sizeof *p->kv_sorted))) {
        st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", p->path);
        goto fail;
    }
    for (uint64_t i = 0; i < n_kv; i++)
        p->kv_sorted[i] = &p->kvs[i];
    if (n_kv)
        qsort(p->kv_sorted, (size_t)n_kv, sizeof *p->kv_sorted, cmp_kv);
    for (uint64_t i = 1; i < n_kv; i++) {
        const mc_gguf_kv *a = p->kv_sorted[i - 1], *b = p->kv_sorted[i];
        if (strcmp(a->key, b->key) == 0) {
            const mc_gguf_kv *later = a->offset > b->offset ? a : b;
            st = bad(&r, later->offset, NULL, "duplicate metadata key '%.200s'", later->key);
            goto fail;
        }
    }
    if ((st = read_alignment(&r, p)) != MC_OK)
        goto fail;
    cap = 0;
    uint64_t cap_at = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if (grow((void **)&p->tensors, &cap, i, sizeof *p->tensors) ||
            grow((void **)&p->info_at, &cap_at, i, sizeof *p->info_at)) {
            st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", p->path);
            goto fail;
        }
        p->info_at[i] = r.pos;
        st = rd_tensor(&r, &p->tensors[i], ctx, sizeof ctx);
        p->n_tensors = i + 1;
        if (st != MC_OK)
            goto fail;
    }
    if ((st = place_tensors(&r, p)) != MC_OK)
        goto fail;
    *out = p;
    return MC_OK;
fail:
    mc_gguf_part_free(p);
    return st;
}
