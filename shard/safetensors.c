/* safetensors.c - see safetensors.h for the byte layout and the checks. */
#include "safetensors.h"
#include "outfile.h"
#include "fileio.h"
#include "sigbus.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct st_file {
    char *path;
    void *map;          /* non-NULL when we own an mmap */
    uint64_t map_len;
    st_tensor *tensors; /* sorted by name */
    size_t n;
    json_t *meta;       /* __metadata__ object or NULL */
};

struct st_checkpoint {
    st_file **files;
    size_t nfiles;
    const st_tensor **index; /* all tensors of all files, sorted by name */
    size_t n;
};

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
    return px < py ? -1 : px > py ? 1 : 0;
}

void st_file_close(st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    if (f->meta)
        json_decref(f->meta);
    if (f->map) {
        mc_sigbus_unregister(f->map);
        munmap(f->map, f->map_len);
    }
    free(f->path);
    free(f);
}

static void shape_str(const st_tensor *t, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int d = 0; d < t->ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* Parses one header entry into t (name already set). */
static mc_status parse_entry(const char *path, const char *name, json_t *v, const uint8_t *data,
                             uint64_t data_len, st_tensor *t, mc_err *err)
{
    if (!json_is_object(v))
        return mc_err_set(err, MC_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object",
                          path, name);
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val)
    {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return mc_err_set(err, MC_ERR_FORMAT, "%s: tensor '%s': unexpected key '%.64s'", path,
                              name, key);
    }
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return mc_err_set(err, MC_ERR_FORMAT, "%s: tensor '%s': missing or non-string 'dtype'",
                          path, name);
    const char *dts = json_string_value(jd);
    if (!strcmp(dts, "Q8_0"))
        t->dtype = MC_DT_Q8_0;
    else if (!strcmp(dts, "Q4_K"))
        t->dtype = MC_DT_Q4_K;
    else if (mc_dtype_from_name(dts, &t->dtype) != 0)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: tensor '%s': unknown or unsupported dtype '%.32s' (supported: F32, "
                          "F16, BF16, F8_E4M3, I64, I32, U8, and our Q8_0, Q4_K)",
                          path, name, dts);
    if (!json_is_array(js))
        return mc_err_set(err, MC_ERR_FORMAT, "%s: tensor '%s': missing or non-array 'shape'",
                          path, name);
    size_t nd = json_array_size(js);
    if (nd > MC_ST_MAX_DIMS)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: tensor '%s': rank %zu exceeds the limit of %d",
                          path, name, nd, MC_ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t d = 0; d < nd; d++) {
        json_t *e = json_array_get(js, d);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                              name, d);
        t->shape[d] = (int64_t)json_integer_value(e);
        if (mc_mul_u64(numel, (uint64_t)t->shape[d], &numel))
            return mc_err_set(err, MC_ERR_OVERFLOW,
                              "%s: tensor '%s': element count of the shape overflows 64 bits",
                              path, name);
    }
    t->numel = numel;
    if (mc_dtype_is_block(t->dtype)) {
        /* block formats: rows of whole blocks along the last dimension */
        int be = mc_dtype_block_elems(t->dtype);
        if (nd < 1 || t->shape[nd - 1] % be != 0)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: tensor '%s': %s needs a last dimension that is a multiple of %d",
                              path, name, mc_dtype_name(t->dtype), be);
        uint64_t blocks = numel / (uint64_t)be;
        if (mc_mul_u64(blocks, mc_dtype_block_bytes(t->dtype), &t->nbytes))
            return mc_err_set(err, MC_ERR_OVERFLOW, "%s: tensor '%s': byte size overflows 64 bits",
                              path, name);
    } else if (mc_mul_u64(numel, mc_dtype_size(t->dtype), &t->nbytes))
        return mc_err_set(err, MC_ERR_OVERFLOW, "%s: tensor '%s': byte size overflows 64 bits",
                          path, name);
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return mc_err_set(err, MC_ERR_FORMAT,
                          "%s: tensor '%s': 'data_offsets' must be an array of two integers", path,
                          name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%lld, %lld] are not an ordered range",
                          path, name, (long long)b, (long long)e);
    if ((uint64_t)e > data_len)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%lld, %lld] run past the end of the "
                          "data region (%llu bytes)",
                          path, name, (long long)b, (long long)e, (unsigned long long)data_len);
    if ((uint64_t)(e - b) != t->nbytes) {
        char sh[160];
        shape_str(t, sh, sizeof sh);
        return mc_err_set(err, MC_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets span %llu bytes but %s %s needs %llu",
                          path, name, (unsigned long long)(e - b), mc_dtype_name(t->dtype), sh,
                          (unsigned long long)t->nbytes);
    }
    t->data = data + b;
    return MC_OK;
}

mc_status st_file_parse(const uint8_t *buf, uint64_t len, const char *path, st_file **out,
                        mc_err *err)
{
    mc_status st = MC_OK;
    json_t *root = NULL;
    const st_tensor **by_off = NULL;
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path ? path : "?"))) {
        free(f);
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
    }
    path = f->path;
    if (len < 8) {
        st = mc_err_set(err, MC_ERR_FORMAT,
                        "%s: file is %llu bytes, too short for the 8-byte header length", path,
                        (unsigned long long)len);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (hlen > MC_ST_MAX_HEADER) {
        st = mc_err_set(err, MC_ERR_FORMAT,
                        "%s: header length %llu exceeds the limit of %u bytes", path,
                        (unsigned long long)hlen, MC_ST_MAX_HEADER);
        goto fail;
    }
    if (hlen < 2 || hlen > len - 8) {
        st = mc_err_set(err, MC_ERR_FORMAT,
                        "%s: header length %llu does not fit the file (%llu bytes)", path,
                        (unsigned long long)hlen, (unsigned long long)len);
        goto fail;
    }
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    json_error_t jerr;
    root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        st = mc_err_set(err, MC_ERR_FORMAT, "%s: header is not valid JSON: %s (line %d, column %d)",
                        path, jerr.text, jerr.line, jerr.column);
        goto fail;
    }
    if (!json_is_object(root)) {
        st = mc_err_set(err, MC_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto fail;
    }
    size_t nkeys = json_object_size(root);
    f->tensors = mc_calloc_n(nkeys ? nkeys : 1, sizeof *f->tensors);
    if (!f->tensors) {
        st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory for %zu tensors", path, nkeys);
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) {
                st = mc_err_set(err, MC_ERR_FORMAT, "%s: __metadata__ is not a JSON object", path);
                goto fail;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv)
            {
                if (!json_is_string(mv)) {
                    st = mc_err_set(err, MC_ERR_FORMAT,
                                    "%s: __metadata__ value of '%.64s' is not a string", path, mk);
                    goto fail;
                }
            }
            f->meta = json_incref(val);
            continue;
        }
        size_t klen = strlen(key);
        if (klen == 0 || klen > MC_ST_MAX_NAME) {
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: tensor name of %zu bytes (allowed 1..%d)",
                            path, klen, MC_ST_MAX_NAME);
            goto fail;
        }
        st_tensor *t = &f->tensors[f->n];
        st = parse_entry(path, key, val, data, data_len, t, err);
        if (st != MC_OK)
            goto fail;
        if (!(t->name = strdup(key))) {
            st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        t->path = f->path;
        f->n++;
    }
    /* No two tensors may share bytes. */
    by_off = mc_calloc_n(f->n ? f->n : 1, sizeof *by_off);
    if (!by_off) {
        st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < f->n; i++)
        by_off[i] = &f->tensors[i];
    qsort(by_off, f->n, sizeof *by_off, cmp_tensor_offset);
    const st_tensor *prev = NULL;
    for (size_t i = 0; i < f->n; i++) {
        const st_tensor *t = by_off[i];
        if (t->nbytes == 0)
            continue;
        if (prev && (const uint8_t *)t->data < (const uint8_t *)prev->data + prev->nbytes) {
            st = mc_err_set(err, MC_ERR_FORMAT, "%s: tensor '%s' overlaps tensor '%s' in the data region",
                            path, t->name, prev->name);
            goto fail;
        }
        prev = t;
    }
    free(by_off);
    by_off = NULL;
    qsort(f->tensors, f->n, sizeof *f->tensors, cmp_tensor_name);
    json_decref(root);
    *out = f;
    return MC_OK;
fail:
    free(by_off);
    if (root)
        json_decref(root);
    st_file_close(f);
    return st;
}

mc_status st_file_open(const char *path, st_file **out, mc_err *err)
{
    *out = NULL;
    int fd;
    uint64_t len = 0;
    /* regular files only: a FIFO would block open() and read() forever */
    mc_status st = mc_open_regular(path, "safetensors file", &fd, &len, err);
    if (st != MC_OK) {
        if (st == MC_ERR_NOT_FOUND && err && err->status == MC_ERR_NOT_FOUND)
            err->status = MC_ERR_IO; /* a missing file stays an I/O error for callers */
        return st == MC_ERR_NOT_FOUND ? MC_ERR_IO : st;
    }
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return mc_err_set(err, MC_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
        }
    }
    close(fd);
    static const uint8_t empty[1];
    st_file *f;
    /* parsing reads the header pages: the file may shrink already */
    if (map)
        (void)mc_sigbus_register(map, (size_t)len, path);
    st = st_file_parse(map ? map : empty, len, path, &f, err);
    if (map)
        mc_sigbus_unregister(map);
    if (st != MC_OK) {
        if (map)
            munmap(map, (size_t)len);
        return st;
    }
    f->map = map;
    f->map_len = len;
    /* a file truncated while mapped: one line naming it, not a bare SIGBUS */
    if (map)
        (void)mc_sigbus_register(map, (size_t)len, f->path);
    *out = f;
    return MC_OK;
}

size_t st_file_count(const st_file *f) { return f->n; }
const st_tensor *st_file_tensor(const st_file *f, size_t i) { return i < f->n ? &f->tensors[i] : NULL; }

const st_tensor *st_file_find(const st_file *f, const char *name)
{
    st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n, sizeof *f->tensors, cmp_tensor_name);
}

const char *st_file_metadata(const st_file *f, const char *key)
{
    if (!f->meta)
        return NULL;
    return json_string_value(json_object_get(f->meta, key));
}

/* ---- checkpoints ---- */

void st_checkpoint_close(st_checkpoint *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nfiles; i++)
        st_file_close(c->files[i]);
    free(c->files);
    free(c->index);
    free(c);
}

static int cmp_tensor_ptr_name(const void *a, const void *b)
{
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

static mc_status add_file(st_checkpoint *c, const char *path, mc_err *err)
{
    st_file **nf = realloc(c->files, (c->nfiles + 1) * sizeof *nf);
    if (!nf)
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
    c->files = nf;
    st_file *f;
    mc_status st = st_file_open(path, &f, err);
    if (st != MC_OK)
        return st;
    c->files[c->nfiles++] = f;
    return MC_OK;
}

static mc_status build_index(st_checkpoint *c, mc_err *err)
{
    size_t total = 0;
    for (size_t i = 0; i < c->nfiles; i++)
        total += c->files[i]->n;
    c->index = mc_calloc_n(total ? total : 1, sizeof *c->index);
    if (!c->index)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory indexing %zu tensors", total);
    for (size_t i = 0; i < c->nfiles; i++)
        for (size_t j = 0; j < c->files[i]->n; j++)
            c->index[c->n++] = &c->files[i]->tensors[j];
    qsort(c->index, c->n, sizeof *c->index, cmp_tensor_ptr_name);
    for (size_t i = 1; i < c->n; i++)
        if (!strcmp(c->index[i]->name, c->index[i - 1]->name))
            return mc_err_set(err, MC_ERR_FORMAT, "tensor '%s' appears in both %s and %s",
                              c->index[i]->name, c->index[i - 1]->path, c->index[i]->path);
    return MC_OK;
}

static int is_bare_filename(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= 255 && !strchr(s, '/') && s[0] != '.';
}

static mc_status open_indexed(st_checkpoint *c, const char *dir, const char *index_path, mc_err *err)
{
    char *text = NULL;
    size_t len = 0;
    /* regular files only (a FIFO would block), at most MC_ST_MAX_INDEX_BYTES */
    mc_status st =
        mc_read_regular(index_path, "checkpoint index", MC_ST_MAX_INDEX_BYTES, &text, &len, err);
    if (st != MC_OK)
        return st;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", index_path,
                          jerr.text, jerr.line);
    json_t *wm = json_object_get(root, "weight_map");
    const char *name;
    json_t *v;
    char path[4096];
    if (!json_is_object(wm)) {
        st = mc_err_set(err, MC_ERR_FORMAT, "%s: missing 'weight_map' object", index_path);
        goto done;
    }
    /* Open each distinct shard once, in order of first mention. */
    json_object_foreach(wm, name, v)
    {
        if (!json_is_string(v) || !is_bare_filename(json_string_value(v))) {
            st = mc_err_set(err, MC_ERR_FORMAT,
                            "%s: tensor '%.200s' maps to something that is not a plain file name",
                            index_path, name);
            goto done;
        }
        snprintf(path, sizeof path, "%s/%s", dir, json_string_value(v));
        int seen = 0;
        for (size_t i = 0; i < c->nfiles && !seen; i++)
            seen = !strcmp(c->files[i]->path, path);
        if (!seen && (st = add_file(c, path, err)) != MC_OK)
            goto done;
    }
    if ((st = build_index(c, err)) != MC_OK)
        goto done;
    json_object_foreach(wm, name, v)
    {
        snprintf(path, sizeof path, "%s/%s", dir, json_string_value(v));
        const st_tensor *t = st_checkpoint_find(c, name);
        if (!t || strcmp(t->path, path)) {
            st = mc_err_set(err, MC_ERR_FORMAT,
                            "%s: tensor '%.200s' is listed in %s but that file does not contain it",
                            index_path, name, path);
            goto done;
        }
    }
done:
    json_decref(root);
    return st;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

mc_status st_checkpoint_open(const char *path, st_checkpoint **out, mc_err *err)
{
    *out = NULL;
    st_checkpoint *c = calloc(1, sizeof *c);
    if (!c)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    mc_status st;
    struct stat sb;
    char buf[4096];
    if (stat(path, &sb) != 0) {
        st = mc_err_set(err, MC_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(sb.st_mode)) {
        if ((st = add_file(c, path, err)) != MC_OK || (st = build_index(c, err)) != MC_OK)
            goto fail;
        *out = c;
        return MC_OK;
    }
    snprintf(buf, sizeof buf, "%s/model.safetensors.index.json", path);
    if (stat(buf, &sb) == 0) {
        if ((st = open_indexed(c, path, buf, err)) != MC_OK)
            goto fail;
        *out = c;
        return MC_OK;
    }
    snprintf(buf, sizeof buf, "%s/consolidated.safetensors.index.json", path);
    if (stat(buf, &sb) == 0) {
        if ((st = open_indexed(c, path, buf, err)) != MC_OK)
            goto fail;
        *out = c;
        return MC_OK;
    }
    /* No index: every consolidated*.safetensors (Mistral) or else every
     * model*.safetensors file, in name order. */
    static const char *const prefixes[] = {"consolidated", "model"};
    for (int pi = 0; pi < 2 && c->nfiles == 0; pi++) {
        struct dirent **names = NULL;
        int nn = scandir(path, &names, NULL, alphasort);
        if (nn < 0) {
            st = mc_err_set(err, MC_ERR_IO, "%s: cannot list: %s", path, strerror(errno));
            goto fail;
        }
        st = MC_OK;
        for (int i = 0; i < nn; i++) {
            const char *nm = names[i]->d_name;
            if (st == MC_OK && !strncmp(nm, prefixes[pi], strlen(prefixes[pi])) &&
                has_suffix(nm, ".safetensors")) {
                snprintf(buf, sizeof buf, "%s/%s", path, nm);
                st = add_file(c, buf, err);
            }
            free(names[i]);
        }
        free(names);
        if (st != MC_OK)
            goto fail;
    }
    if (c->nfiles == 0) {
        st = mc_err_set(err, MC_ERR_NOT_FOUND,
                        "%s: no model.safetensors.index.json and no model*.safetensors or "
                        "consolidated*.safetensors files",
                        path);
        goto fail;
    }
    if ((st = build_index(c, err)) != MC_OK)
        goto fail;
    *out = c;
    return MC_OK;
fail:
    st_checkpoint_close(c);
    return st;
}

size_t st_checkpoint_count(const st_checkpoint *c) { return c->n; }
const st_tensor *st_checkpoint_tensor(const st_checkpoint *c, size_t i)
{
    return i < c->n ? c->index[i] : NULL;
}

const st_tensor *st_checkpoint_find(const st_checkpoint *c, const char *name)
{
    st_tensor key = {.name = name};
    const st_tensor *kp = &key;
    const st_tensor **hit = bsearch(&kp, c->index, c->n, sizeof *c->index, cmp_tensor_ptr_name);
    return hit ? *hit : NULL;
}

/* ---- writer ---- */

/* Written through mc_outfile: PATH.partial, then flush, fsync, close and a
 * checked rename; a target that is not a regular file is never replaced. */
struct st_writer {
    mc_outfile *f;
    uint64_t expected, written;
};

void st_writer_abort(st_writer *w)
{
    if (!w)
        return;
    mc_outfile_abort(w->f);
    free(w);
}

mc_status st_writer_open(const char *path, const st_write_tensor *tensors, size_t n,
                         st_writer **out, mc_err *err)
{
    *out = NULL;
    json_t *root = json_object();
    mc_status st = MC_OK;
    char *hdr = NULL;
    uint64_t off = 0;
    st_writer *w = calloc(1, sizeof *w);
    if (!root || !w) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const st_write_tensor *t = &tensors[i];
        uint64_t numel = 1, nb;
        size_t nl = t->name ? strlen(t->name) : 0;
        if (nl == 0 || nl > MC_ST_MAX_NAME || !strcmp(t->name, "__metadata__") ||
            t->ndim < 0 || t->ndim > MC_ST_MAX_DIMS || (mc_dtype_block_elems(t->dtype) == 0)) {
            st = mc_err_set(err, MC_ERR_ARG, "%s: tensor %zu: bad name, rank or dtype", path, i);
            goto done;
        }
        if (json_object_get(root, t->name)) {
            st = mc_err_set(err, MC_ERR_ARG, "%s: duplicate tensor name '%s'", path, t->name);
            goto done;
        }
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) {
            json_array_append_new(shape, json_integer(t->shape[d]));
            if (t->shape[d] < 0 || mc_mul_u64(numel, (uint64_t)t->shape[d], &numel)) {
                json_decref(shape);
                st = mc_err_set(err, MC_ERR_ARG, "%s: tensor '%s': bad shape", path, t->name);
                goto done;
            }
        }
        int be = mc_dtype_block_elems(t->dtype);
        if (be > 1 && (t->ndim < 1 || t->shape[t->ndim - 1] % be != 0)) {
            json_decref(shape);
            st = mc_err_set(err, MC_ERR_ARG, "%s: tensor '%s': rows are not whole blocks", path,
                            t->name);
            goto done;
        }
        if (mc_mul_u64(be > 1 ? numel / (uint64_t)be : numel, mc_dtype_block_bytes(t->dtype), &nb) ||
            mc_add_u64(off, nb, &off)) {
            json_decref(shape);
            st = mc_err_set(err, MC_ERR_OVERFLOW, "%s: tensor '%s': size overflow", path, t->name);
            goto done;
        }
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", mc_dtype_name(t->dtype), "shape",
                              shape, "data_offsets", (json_int_t)(off - nb), (json_int_t)off);
        if (!e || json_object_set_new(root, t->name, e)) {
            st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    hdr = json_dumps(root, JSON_COMPACT);
    if (!hdr) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = mc_outfile_open(path, "output", &w->f, err)) != MC_OK)
        goto done;
    size_t hl = strlen(hdr);
    size_t padded = (hl + 7) & ~(size_t)7;
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "       ";
    if ((st = mc_outfile_write(w->f, lenb, 8, err)) != MC_OK ||
        (st = mc_outfile_write(w->f, hdr, hl, err)) != MC_OK ||
        (st = mc_outfile_write(w->f, spaces, padded - hl, err)) != MC_OK)
        goto done;
    w->expected = off;
done:
    free(hdr);
    json_decref(root);
    if (st != MC_OK)
        st_writer_abort(w);
    else
        *out = w;
    return st;
}

mc_status st_writer_write(st_writer *w, const void *data, size_t len, mc_err *err)
{
    if (len > w->expected - w->written)
        return mc_err_set(err, MC_ERR_ARG, "%s: more data than the header announced",
                          mc_outfile_path(w->f));
    mc_status st = mc_outfile_write(w->f, data, len, err);
    if (st != MC_OK)
        return st;
    w->written += len;
    return MC_OK;
}

mc_status st_writer_close(st_writer *w, mc_err *err)
{
    if (w->written != w->expected) {
        mc_status st = mc_err_set(err, MC_ERR_ARG, "%s: %llu of %llu data bytes written",
                                  mc_outfile_path(w->f), (unsigned long long)w->written,
                                  (unsigned long long)w->expected);
        st_writer_abort(w);
        return st;
    }
    mc_status st = mc_outfile_commit(w->f, err); /* frees the outfile, even on failure */
    free(w);
    return st;
}

mc_status st_write(const char *path, const st_write_tensor *tensors, size_t n, mc_err *err)
{
    st_writer *w;
    mc_status st = st_writer_open(path, tensors, n, &w, err);
    if (st != MC_OK)
        return st;
    for (size_t i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++)
            numel *= (uint64_t)tensors[i].shape[d];
        int be = mc_dtype_block_elems(tensors[i].dtype);
        size_t nb = (size_t)(numel / (uint64_t)(be > 0 ? be : 1) * mc_dtype_block_bytes(tensors[i].dtype));
        if ((st = st_writer_write(w, tensors[i].data, nb, err)) != MC_OK) {
            st_writer_abort(w);
            return st;
        }
    }
    return st_writer_close(w, err);
}

void st_tensor_to_f32(const st_tensor *t, float *dst)
{
    if (mc_dtype_is_block(t->dtype)) {
        int64_t cols = t->ndim ? t->shape[t->ndim - 1] : 0;
        size_t rb = mc_dtype_row_bytes(t->dtype, cols);
        for (uint64_t r = 0; cols > 0 && r < t->numel / (uint64_t)cols; r++)
            mc_dequantize_row(t->dtype, (const uint8_t *)t->data + r * rb, dst + r * (uint64_t)cols,
                              cols);
        return;
    }
    const uint8_t *p = t->data;
    size_t es = mc_dtype_size(t->dtype);
    for (uint64_t i = 0; i < t->numel; i++, p += es) {
        switch (t->dtype) {
        case MC_DT_F32: memcpy(&dst[i], p, 4); break;
        case MC_DT_F16: { uint16_t h; memcpy(&h, p, 2); dst[i] = mc_f16_to_f32(h); } break;
        case MC_DT_BF16: { uint16_t h; memcpy(&h, p, 2); dst[i] = mc_bf16_to_f32(h); } break;
        case MC_DT_F8_E4M3: dst[i] = mc_fp8_e4m3_to_f32(*p); break;
        case MC_DT_I64: { int64_t v; memcpy(&v, p, 8); dst[i] = (float)v; } break;
        case MC_DT_I32: { int32_t v; memcpy(&v, p, 4); dst[i] = (float)v; } break;
        case MC_DT_U8: dst[i] = (float)*p; break;
        default: dst[i] = 0; break;
        }
    }
}
