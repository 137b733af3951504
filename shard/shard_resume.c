/* shard_resume.c - what ties a shard folder to its source, so that a rerun
 * of `moecluster shard` resumes only work of the same plan, format and
 * unchanged source (see shard_out.h). */
#include "shard_internal.h"

#include "fileio.h"
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

static const char *rel_name(const char *model_dir, const char *path)
{
    size_t n = strlen(model_dir);
    if (!strncmp(path, model_dir, n) && path[n] == '/')
        return path + n + 1;
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

static long long ns(struct timespec t) { return (long long)t.tv_sec * 1000000000ll + t.tv_nsec; }

/* {name, size, mtime_ns, ctime_ns}; 0 when the file does not exist. */
static int add_file(json_t *files, const char *model_dir, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return 0;
    json_array_append_new(files, json_pack("{s:s, s:I, s:I, s:I}", "name",
                                           rel_name(model_dir, path), "size",
                                           (json_int_t)sb.st_size, "mtime_ns",
                                           (json_int_t)ns(sb.st_mtim), "ctime_ns",
                                           (json_int_t)ns(sb.st_ctim)));
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

mc_status mc_shard_source_identity(const char *model_dir, const st_checkpoint *ck, json_t **out,
                                   mc_err *err)
{
    char path[4200];
    *out = NULL;
    const char *cfg = "config.json";
    struct stat sb;
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    if (stat(path, &sb) != 0) {
        cfg = "params.json";
        snprintf(path, sizeof path, "%s/params.json", model_dir);
    }
    char *text = NULL;
    size_t len = 0;
    mc_status st = mc_read_regular(path, "config", MC_SHARD_MAX_CONFIG, &text, &len, err);
    if (st != MC_OK)
        return st;
    char ch[17], th[17];
    snprintf(ch, sizeof ch, "%016llx", (unsigned long long)XXH64(text, len, 0));
    free(text);
    json_t *files = json_array();
    size_t n = st_checkpoint_count(ck);
    const char **paths = mc_calloc_n(n + 1, sizeof *paths);
    XXH64_state_t *h = XXH64_createState();
    if (!files || !paths || !h) {
        json_decref(files);
        free(paths);
        XXH64_freeState(h);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    }
    add_file(files, model_dir, path);
    static const char *const idx[] = {"model.safetensors.index.json",
                                      "consolidated.safetensors.index.json"};
    for (size_t i = 0; i < sizeof idx / sizeof *idx; i++) {
        snprintf(path, sizeof path, "%s/%s", model_dir, idx[i]);
        add_file(files, model_dir, path);
    }
    /* the tensor table (names, dtypes, shapes, files) and the distinct files */
    XXH64_reset(h, 0);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_checkpoint_tensor(ck, i);
        const char *f = rel_name(model_dir, t->path);
        int32_t meta[2] = {(int32_t)t->dtype, t->ndim};
        XXH64_update(h, t->name, strlen(t->name) + 1);
        XXH64_update(h, meta, sizeof meta);
        XXH64_update(h, t->shape, (size_t)t->ndim * sizeof t->shape[0]);
        XXH64_update(h, f, strlen(f) + 1);
        paths[i] = t->path;
    }
    snprintf(th, sizeof th, "%016llx", (unsigned long long)XXH64_digest(h));
    XXH64_freeState(h);
    qsort(paths, n, sizeof *paths, cmp_str);
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(paths[i], paths[i - 1]))
            add_file(files, model_dir, paths[i]);
    free(paths);
    *out = json_pack("{s:s, s:s, s:s, s:o}", "config", cfg, "config_xxh64", ch, "tensors_xxh64",
                     th, "files", files);
    return *out ? MC_OK : mc_err_set(err, MC_ERR_NOMEM, "out of memory");
}

void mc_shard_describe_change(const json_t *old, const json_t *now, char *buf, size_t len)
{
    const json_t *os = json_object_get(old, "source"), *ns_ = json_object_get(now, "source");
    const char *of = json_string_value(json_object_get(old, "shard_format"));
    const char *nf = json_string_value(json_object_get(now, "shard_format"));
    snprintf(buf, len, "a different plan");
    if (!os) {
        snprintf(buf, len, "a different plan (or an older version without a source record)");
        return;
    }
    if (of && nf && strcmp(of, nf)) {
        snprintf(buf, len, "a different plan (weights '%s', this run '%s')", of, nf);
        return;
    }
    if (json_equal(os, ns_))
        return;
    const json_t *ofl = json_object_get(os, "files"), *nfl = json_object_get(ns_, "files");
    size_t i, j;
    const json_t *a, *b;
    json_array_foreach(nfl, i, a)
    {
        const char *name = json_string_value(json_object_get(a, "name"));
        const json_t *match = NULL;
        json_array_foreach(ofl, j, b)
        {
            const char *bn = json_string_value(json_object_get(b, "name"));
            if (name && bn && !strcmp(name, bn))
                match = b;
        }
        if (!match) {
            snprintf(buf, len, "another source (%s is new)", name ? name : "?");
            return;
        }
        if (!json_equal(a, match)) {
            long long s0 = json_integer_value(json_object_get(match, "size"));
            long long s1 = json_integer_value(json_object_get(a, "size"));
            if (s0 != s1)
                snprintf(buf, len, "another source (%s was %lld bytes, now %lld)", name, s0, s1);
            else
                snprintf(buf, len, "another source (%s was modified since: mtime/ctime differ)",
                         name);
            return;
        }
    }
    if (json_array_size(ofl) != json_array_size(nfl)) {
        snprintf(buf, len, "another source (files were removed)");
        return;
    }
    snprintf(buf, len, "another source (its config or tensor table differs)");
}

int mc_shard_rank_reusable(const char *out_dir, int rank, const char *fingerprint,
                           const st_write_tensor *want, size_t n, char *why, size_t len)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/rank-%05d/tensors.json", out_dir, rank);
    json_t *rj = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (mc_shard_json_load(path, "rank tensor list", MC_SHARD_MAX_JSON, &rj, &e) != MC_OK) {
        snprintf(why, len, "%s", e.msg);
        return 0;
    }
    int ok = 0;
    const char *fp = json_string_value(json_object_get(rj, "fingerprint"));
    const json_t *tl = json_object_get(rj, "tensors");
    if (!fp || strcmp(fp, fingerprint)) {
        snprintf(why, len, "left by a run with fingerprint %s, this run %s", fp ? fp : "missing",
                 fingerprint);
        goto out;
    }
    if (json_array_size(tl) != n) {
        snprintf(why, len, "%s lists %zu tensors, the plan %zu", path, json_array_size(tl), n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *t = json_array_get(tl, i), *sh = json_object_get(t, "shape");
        const char *name = json_string_value(json_object_get(t, "name"));
        const char *dt = json_string_value(json_object_get(t, "dtype"));
        int same = name && dt && !strcmp(name, want[i].name) &&
                   !strcmp(dt, mc_dtype_name(want[i].dtype)) &&
                   json_array_size(sh) == (size_t)want[i].ndim;
        for (int d = 0; same && d < want[i].ndim; d++)
            same = json_integer_value(json_array_get(sh, (size_t)d)) == want[i].shape[d];
        if (!same) {
            snprintf(why, len, "%s: tensor #%zu is not '%s' as the plan says", path, i,
                     want[i].name);
            goto out;
        }
    }
    long bad = 0;
    if (mc_shard_check_entry(out_dir, rank, rj, "tensors.json", 0, 0, &bad, &e) != MC_OK) {
        snprintf(why, len, "%s", e.msg);
        goto out;
    }
    ok = 1;
out:
    json_decref(rj);
    return ok;
}
