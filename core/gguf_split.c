/* gguf_split.c - opening GGUF files and folders of split parts, and the
 * public lookups (see gguf.h). One file is parsed by gguf.c. */
#define _GNU_SOURCE
#include "gguf.h"
#include "fileio.h"
#include "gguf_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct mc_gguf {
    mc_gguf_part **parts;            /* n_parts, in split order */
    uint32_t n_parts;
    const mc_gguf_tensor **all;      /* n, part order then file order */
    const mc_gguf_tensor **by_name;  /* n, sorted by name */
    uint64_t n;
};

void mc_gguf_close(mc_gguf *g)
{
    if (!g)
        return;
    for (uint32_t i = 0; i < g->n_parts; i++)
        mc_gguf_part_free(g->parts[i]);
    free(g->parts);
    free(g->all);
    free(g->by_name);
    free(g);
}

/* Takes ownership of parts[0..n) (freed on failure too); one tensor table,
 * names unique across parts. */
static mc_status build(mc_gguf_part **parts, uint32_t n_parts, mc_gguf **out, mc_err *err)
{
    *out = NULL;
    mc_status st = MC_OK;
    mc_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        for (uint32_t i = 0; i < n_parts; i++)
            mc_gguf_part_free(parts[i]);
        free(parts);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory opening a GGUF model");
    }
    g->parts = parts;
    g->n_parts = n_parts;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n_parts; i++)
        total += parts[i]->n_tensors; /* each bounded by its file's size */
    if (total) {
        g->all = mc_calloc_n((size_t)total, sizeof *g->all);
        g->by_name = mc_calloc_n((size_t)total, sizeof *g->by_name);
        if (!g->all || !g->by_name) {
            st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", parts[0]->path);
            goto fail;
        }
    }
    for (uint32_t i = 0; i < n_parts; i++)
        for (uint64_t j = 0; j < parts[i]->n_tensors; j++) {
            parts[i]->tensors[j].part = i;
            g->all[g->n] = g->by_name[g->n] = &parts[i]->tensors[j];
            g->n++;
        }
    if (g->n)
        qsort(g->by_name, (size_t)g->n, sizeof *g->by_name, mc_gguf_cmp_tensor_name);
    for (uint64_t i = 1; i < g->n; i++)
        if (strcmp(g->by_name[i - 1]->name, g->by_name[i]->name) == 0) {
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: tensor '%.200s' is also in %s",
                            g->by_name[i]->path, g->by_name[i]->name, g->by_name[i - 1]->path);
            goto fail;
        }
    *out = g;
    return MC_OK;
fail:
    mc_gguf_close(g);
    return st;
}

mc_status mc_gguf_parse(const uint8_t *buf, uint64_t len, const char *path, mc_gguf **out,
                        mc_err *err)
{
    *out = NULL;
    mc_gguf_part *p;
    mc_status st = mc_gguf_part_parse(buf, len, path, &p, err);
    if (st != MC_OK)
        return st;
    mc_gguf_part **parts = malloc(sizeof *parts);
    if (!parts) {
        mc_gguf_part_free(p);
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
    }
    parts[0] = p;
    return build(parts, 1, out, err);
}

/* Maps and parses one regular file; the part owns the map. */
static mc_status open_part(const char *path, mc_gguf_part **out, mc_err *err)
{
    *out = NULL;
    int fd;
    uint64_t len = 0;
    mc_status st = mc_open_regular(path, "GGUF file", &fd, &len, err);
    if (st != MC_OK)
        return st;
    if (len == 0) {
        close(fd);
        return mc_err_set(err, MC_ERR_FORMAT, "%s: byte 0: empty file (not a GGUF file)", path);
    }
    void *map = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return mc_err_set(err, MC_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
    /* parsing reads the header pages: the file may shrink already */
    (void)mc_sigbus_register(map, (size_t)len, path);
    st = mc_gguf_part_parse(map, len, path, out, err);
    mc_sigbus_unregister(map);
    if (st != MC_OK) {
        munmap(map, (size_t)len);
        return st;
    }
    (*out)->map = map;
    (*out)->map_len = len;
    /* a file truncated while mapped: one line naming it, not a bare SIGBUS */
    (void)mc_sigbus_register(map, (size_t)len, (*out)->path);
    return MC_OK;
}

/* An integer split key: MC_OK with *present = 0 when absent. */
static mc_status part_int(const mc_gguf_part *p, const char *key, int64_t *v, int *present,
                          mc_err *err)
{
    const mc_gguf_kv *kv = mc_gguf_part_find_kv(p, key);
    *present = kv != NULL;
    if (!kv)
        return MC_OK;
    switch (kv->type) {
    case MC_GGUF_U8: case MC_GGUF_U16: case MC_GGUF_U32: case MC_GGUF_U64:
        if (kv->v.u > (uint64_t)INT64_MAX)
            break;
        *v = (int64_t)kv->v.u;
        return MC_OK;
    case MC_GGUF_I8: case MC_GGUF_I16: case MC_GGUF_I32: case MC_GGUF_I64:
        *v = kv->v.i;
        return MC_OK;
    default: break;
    }
    return mc_err_set(err, MC_ERR_FORMAT, "%s: byte %llu: key '%s': has type %s, not an integer "
                      "that fits", p->path, (unsigned long long)kv->offset, key,
                      mc_gguf_type_name(kv->type));
}

/* "PREFIX-NNNNN-of-MMMMM.gguf": 1 with the prefix length, number and count */
static int split_name(const char *name, size_t *prefix, unsigned *no, unsigned *count)
{
    size_t n = strlen(name);
    if (n <= 20)
        return 0;
    const char *s = name + n - 20;
    if (s[0] != '-' || memcmp(s + 6, "-of-", 4) != 0 || strcmp(s + 15, ".gguf") != 0)
        return 0;
    unsigned a = 0, b = 0;
    for (int i = 0; i < 5; i++) {
        if (s[1 + i] < '0' || s[1 + i] > '9' || s[10 + i] < '0' || s[10 + i] > '9')
            return 0;
        a = a * 10 + (unsigned)(s[1 + i] - '0');
        b = b * 10 + (unsigned)(s[10 + i] - '0');
    }
    *prefix = n - 20;
    *no = a;
    *count = b;
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The checks between the parts of a split model (parts in file-name order). */
static mc_status check_split(mc_gguf_part **parts, uint32_t n, mc_err *err)
{
    int64_t tensors_all = -1, total = 0;
    for (uint32_t i = 0; i < n; i++) {
        const mc_gguf_part *p = parts[i];
        int64_t no, count, tc;
        int h1, h2, h3;
        mc_status st = part_int(p, "split.no", &no, &h1, err);
        if (st == MC_OK)
            st = part_int(p, "split.count", &count, &h2, err);
        if (st == MC_OK)
            st = part_int(p, "split.tensors.count", &tc, &h3, err);
        if (st != MC_OK)
            return st;
        if (!h1 || !h2 || !h3)
            return mc_err_set(err, MC_ERR_FORMAT, "%s: split part without the key '%s'", p->path,
                              !h1 ? "split.no" : !h2 ? "split.count" : "split.tensors.count");
        if (no != (int64_t)i)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: split.no is %lld but the file name makes it part %u (0-based)",
                              p->path, (long long)no, i);
        if (count != (int64_t)n)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: split.count is %lld but the folder holds %u parts", p->path,
                              (long long)count, n);
        if (tensors_all >= 0 && tc != tensors_all)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: split.tensors.count is %lld but %s says %lld", p->path,
                              (long long)tc, parts[0]->path, (long long)tensors_all);
        tensors_all = tc;
        total += (int64_t)p->n_tensors;
    }
    if (total != tensors_all)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "%s: split.tensors.count is %lld but the %u parts hold %lld tensors",
                          parts[0]->path, (long long)tensors_all, n, (long long)total);
    return MC_OK;
}

/* The .gguf files of a folder, sorted (names freed by the caller). */
static mc_status list_folder(const char *dir, char ***names_out, uint32_t *n_out, mc_err *err)
{
    *names_out = NULL;
    *n_out = 0;
    DIR *d = opendir(dir);
    if (!d)
        return mc_err_set(err, MC_ERR_IO, "%s: cannot open folder: %s", dir, strerror(errno));
    char **names = NULL;
    uint32_t n = 0;
    mc_status st = MC_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".gguf") != 0)
            continue;
        if (n == MC_GGUF_MAX_PARTS) {
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: more than %d .gguf files in the folder", dir,
                            MC_GGUF_MAX_PARTS);
            break;
        }
        char **nn = realloc(names, (n + 1) * sizeof *names);
        char *full = NULL;
        if (nn) {
            names = nn;
            if (asprintf(&full, "%s/%s", dir, de->d_name) < 0)
                full = NULL;
        }
        if (!full) {
            st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        names[n++] = full;
    }
    closedir(d);
    if (st == MC_OK && n == 0)
        st = mc_err_set(err, MC_ERR_NOT_FOUND, "%s: no .gguf file in the folder", dir);
    if (st != MC_OK) {
        for (uint32_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
        return st;
    }
    qsort(names, n, sizeof *names, cmp_str);
    *names_out = names;
    *n_out = n;
    return MC_OK;
}

static mc_status open_single(const char *path, mc_gguf **out, mc_err *err)
{
    mc_gguf_part *p;
    mc_status st = open_part(path, &p, err);
    if (st != MC_OK)
        return st;
    int64_t count;
    int has;
    st = part_int(p, "split.count", &count, &has, err);
    if (st == MC_OK && has && count != 1)
        st = mc_err_set(err, MC_ERR_FORMAT,
                        "%s: the file is one part of a split model of %lld parts: open the "
                        "folder holding all of them", path, (long long)count);
    mc_gguf_part **parts = st == MC_OK ? malloc(sizeof *parts) : NULL;
    if (st == MC_OK && !parts)
        st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
    if (st != MC_OK) {
        mc_gguf_part_free(p);
        return st;
    }
    parts[0] = p;
    return build(parts, 1, out, err);
}

mc_status mc_gguf_open(const char *path, mc_gguf **out, mc_err *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return open_single(path, out, err); /* reports a missing file, a FIFO, ... */
    char **names;
    uint32_t n;
    mc_status st = list_folder(path, &names, &n, err);
    if (st != MC_OK)
        return st;
    mc_gguf_part **parts = NULL;
    uint32_t n_open = 0;
    size_t pre0 = 0;
    unsigned no, count0 = 0;
    const char *base0 = strrchr(names[0], '/') + 1;
    if (n == 1 && !split_name(base0, &pre0, &no, &count0)) {
        st = open_single(names[0], out, err);
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        const char *base = strrchr(names[i], '/') + 1;
        size_t pre;
        unsigned count;
        if (!split_name(base, &pre, &no, &count)) {
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: the folder holds several .gguf files and "
                            "%s is not named as a split part (NAME-00001-of-00003.gguf)",
                            path, base);
            goto done;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        const char *base = strrchr(names[i], '/') + 1;
        size_t pre;
        unsigned count;
        (void)split_name(base, &pre, &no, &count);
        if (i == 0)
            pre0 = pre, count0 = count;
        if (pre != pre0 || memcmp(base, base0, pre) != 0 || count != count0)
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: split parts of different models: %s and %s",
                            path, base0, base);
        else if (count != n)
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: %s is one of %u parts but the folder "
                            "holds %u", path, base, count, n);
        else if (no != i + 1)
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: split part %u of %u is missing (%s "
                            "follows part %u)", path, i + 1, n, base, i);
        if (st != MC_OK)
            goto done;
    }
    parts = mc_calloc_n(n, sizeof *parts);
    if (!parts) {
        st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (; n_open < n; n_open++)
        if ((st = open_part(names[n_open], &parts[n_open], err)) != MC_OK)
            goto done;
    if ((st = check_split(parts, n, err)) != MC_OK)
        goto done;
    st = build(parts, n, out, err);
    parts = NULL; n_open = 0; /* owned by build now */
done:
    for (uint32_t i = 0; i < n_open; i++)
        mc_gguf_part_free(parts[i]);
    free(parts);
    for (uint32_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return st;
}

/* ---- lookups ------------------------------------------------------------------- */

uint32_t mc_gguf_version(const mc_gguf *g) { return g->parts[0]->version; }
uint32_t mc_gguf_alignment(const mc_gguf *g) { return g->parts[0]->alignment; }
uint32_t mc_gguf_n_parts(const mc_gguf *g) { return g->n_parts; }
uint64_t mc_gguf_n_kv(const mc_gguf *g) { return g->parts[0]->n_kv; }

const mc_gguf_kv *mc_gguf_kv_at(const mc_gguf *g, uint64_t i)
{
    return i < g->parts[0]->n_kv ? &g->parts[0]->kvs[i] : NULL;
}

const mc_gguf_kv *mc_gguf_find_kv(const mc_gguf *g, const char *key)
{
    return key ? mc_gguf_part_find_kv(g->parts[0], key) : NULL;
}

uint64_t mc_gguf_n_tensors(const mc_gguf *g) { return g->n; }

const mc_gguf_tensor *mc_gguf_tensor_at(const mc_gguf *g, uint64_t i)
{
    return i < g->n ? g->all[i] : NULL;
}

const mc_gguf_tensor *mc_gguf_find_tensor(const mc_gguf *g, const char *name)
{
    if (!name || !g->n)
        return NULL;
    mc_gguf_tensor key = {.name = name};
    const mc_gguf_tensor *kp = &key;
    const mc_gguf_tensor **hit =
        bsearch(&kp, g->by_name, (size_t)g->n, sizeof *g->by_name, mc_gguf_cmp_tensor_name);
    return hit ? *hit : NULL;
}

static int is_uint(mc_gguf_type t)
{
    return t == MC_GGUF_U8 || t == MC_GGUF_U16 || t == MC_GGUF_U32 || t == MC_GGUF_U64;
}
static int is_sint(mc_gguf_type t)
{
    return t == MC_GGUF_I8 || t == MC_GGUF_I16 || t == MC_GGUF_I32 || t == MC_GGUF_I64;
}

/* The entry, or NOT_FOUND naming the key. */
static mc_status lookup(const mc_gguf *g, const char *key, const mc_gguf_kv **kv, mc_err *err)
{
    *kv = mc_gguf_find_kv(g, key);
    if (!*kv)
        return mc_err_set(err, MC_ERR_NOT_FOUND, "%s: no metadata key '%.200s'",
                          g->parts[0]->path, key ? key : "(null)");
    return MC_OK;
}

static mc_status wrong(const mc_gguf *g, const mc_gguf_kv *kv, const char *want, mc_err *err)
{
    return mc_err_set(err, MC_ERR_FORMAT, "%s: byte %llu: key '%.200s': has type %s, %s",
                      g->parts[0]->path, (unsigned long long)kv->offset, kv->key,
                      mc_gguf_type_name(kv->type), want);
}

/* any integer type into [lo, hi] */
static mc_status get_int(const mc_gguf *g, const char *key, int neg_ok, uint64_t hi,
                         int64_t *s, uint64_t *u, mc_err *err)
{
    const mc_gguf_kv *kv;
    mc_status st = lookup(g, key, &kv, err);
    if (st != MC_OK)
        return st;
    if (is_uint(kv->type) && kv->v.u <= hi) {
        *u = kv->v.u;
        *s = (int64_t)kv->v.u;
        return MC_OK;
    }
    if (is_sint(kv->type) && (kv->v.i >= 0 || neg_ok) && (kv->v.i < 0 || (uint64_t)kv->v.i <= hi)) {
        *s = kv->v.i;
        *u = (uint64_t)kv->v.i;
        return MC_OK;
    }
    return wrong(g, kv, neg_ok ? "not an integer in range" : "not an unsigned integer in range",
                 err);
}

mc_status mc_gguf_get_u32(const mc_gguf *g, const char *key, uint32_t *out, mc_err *err)
{
    int64_t s = 0;
    uint64_t u = 0;
    mc_status st = get_int(g, key, 0, UINT32_MAX, &s, &u, err);
    if (st == MC_OK)
        *out = (uint32_t)u;
    return st;
}

mc_status mc_gguf_get_u64(const mc_gguf *g, const char *key, uint64_t *out, mc_err *err)
{
    int64_t s = 0;
    return get_int(g, key, 0, UINT64_MAX, &s, out, err);
}

mc_status mc_gguf_get_i64(const mc_gguf *g, const char *key, int64_t *out, mc_err *err)
{
    uint64_t u = 0;
    return get_int(g, key, 1, (uint64_t)INT64_MAX, out, &u, err);
}

mc_status mc_gguf_get_f32(const mc_gguf *g, const char *key, float *out, mc_err *err)
{
    const mc_gguf_kv *kv;
    mc_status st = lookup(g, key, &kv, err);
    if (st != MC_OK)
        return st;
    if (kv->type != MC_GGUF_F32 && kv->type != MC_GGUF_F64)
        return wrong(g, kv, "not f32 or f64", err);
    *out = (float)kv->v.f;
    return MC_OK;
}

mc_status mc_gguf_get_bool(const mc_gguf *g, const char *key, bool *out, mc_err *err)
{
    const mc_gguf_kv *kv;
    mc_status st = lookup(g, key, &kv, err);
    if (st != MC_OK)
        return st;
    if (kv->type != MC_GGUF_BOOL)
        return wrong(g, kv, "not bool", err);
    *out = kv->v.u != 0;
    return MC_OK;
}

mc_status mc_gguf_get_str(const mc_gguf *g, const char *key, const char **s, uint64_t *len,
                          mc_err *err)
{
    const mc_gguf_kv *kv;
    mc_status st = lookup(g, key, &kv, err);
    if (st != MC_OK)
        return st;
    if (kv->type != MC_GGUF_STR)
        return wrong(g, kv, "not string", err);
    *s = kv->str;
    if (len)
        *len = kv->str_len;
    return MC_OK;
}

mc_status mc_gguf_get_arr(const mc_gguf *g, const char *key, mc_gguf_type elem,
                          const mc_gguf_kv **out, mc_err *err)
{
    const mc_gguf_kv *kv;
    mc_status st = lookup(g, key, &kv, err);
    if (st != MC_OK)
        return st;
    if (kv->type != MC_GGUF_ARR)
        return wrong(g, kv, "not array", err);
    if (elem != MC_GGUF_TYPE_COUNT && kv->arr_type != elem)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "%s: byte %llu: key '%.200s': an array of %s, not of %s",
                          g->parts[0]->path, (unsigned long long)kv->offset, kv->key,
                          mc_gguf_type_name(kv->arr_type), mc_gguf_type_name(elem));
    *out = kv;
    return MC_OK;
}

static uint64_t elem_le(const mc_gguf_kv *kv, uint64_t i, int n)
{
    const uint8_t *p = (const uint8_t *)kv->arr_data + i * (uint64_t)n;
    uint64_t v = 0;
    for (int b = n - 1; b >= 0; b--)
        v = (v << 8) | p[b];
    return v;
}

int mc_gguf_arr_int(const mc_gguf_kv *kv, uint64_t i, int64_t *out)
{
    if (!kv || kv->type != MC_GGUF_ARR || i >= kv->arr_n)
        return -1;
    switch (kv->arr_type) {
    case MC_GGUF_U8: case MC_GGUF_BOOL: *out = (int64_t)elem_le(kv, i, 1); return 0;
    case MC_GGUF_I8: *out = (int8_t)elem_le(kv, i, 1); return 0;
    case MC_GGUF_U16: *out = (int64_t)elem_le(kv, i, 2); return 0;
    case MC_GGUF_I16: *out = (int16_t)elem_le(kv, i, 2); return 0;
    case MC_GGUF_U32: *out = (int64_t)elem_le(kv, i, 4); return 0;
    case MC_GGUF_I32: *out = (int32_t)elem_le(kv, i, 4); return 0;
    case MC_GGUF_I64: *out = (int64_t)elem_le(kv, i, 8); return 0;
    case MC_GGUF_U64: {
        uint64_t v = elem_le(kv, i, 8);
        if (v > (uint64_t)INT64_MAX)
            return -1;
        *out = (int64_t)v;
        return 0;
    }
    default: return -1;
    }
}

int mc_gguf_arr_float(const mc_gguf_kv *kv, uint64_t i, double *out)
{
    if (!kv || kv->type != MC_GGUF_ARR || i >= kv->arr_n)
        return -1;
    if (kv->arr_type == MC_GGUF_F32) {
        uint32_t u = (uint32_t)elem_le(kv, i, 4);
        float f;
        memcpy(&f, &u, sizeof f);
        *out = f;
        return 0;
    }
    if (kv->arr_type == MC_GGUF_F64) {
        uint64_t u = elem_le(kv, i, 8);
        memcpy(out, &u, sizeof *out);
        return 0;
    }
    return -1;
}

int mc_gguf_arr_str(const mc_gguf_kv *kv, uint64_t i, mc_gguf_str *out)
{
    if (!kv || kv->type != MC_GGUF_ARR || kv->arr_type != MC_GGUF_STR || i >= kv->arr_n ||
        !kv->arr_strs)
        return -1;
    *out = kv->arr_strs[i];
    return 0;
}
