/* shard_verify.c - checking a shard set (see shard_out.h): the whole set
 * against its plan and files (`moecluster verify`), and one rank's folder
 * against the manifest when score/generate load it. */
#include "shard_internal.h"
#include "shard_out.h"

#include "fileio.h"
#include "model_config.h"
#include "progress.h"
#include "safetensors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

mc_status mc_shard_json_load(const char *path, const char *what, uint64_t max, json_t **out,
                             mc_err *err)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    mc_status st = mc_read_regular(path, what, max, &text, &len, err);
    if (st != MC_OK)
        return st;
    json_error_t je;
    *out = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!*out)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: %s is not valid JSON: %s (line %d)", path, what,
                          je.text, je.line);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return mc_err_set(err, MC_ERR_FORMAT, "%s: %s is not a JSON object", path, what);
    }
    return MC_OK;
}

void mc_shard_fingerprint(const json_t *plan, char out[17])
{
    json_t *c = json_deep_copy(plan);
    char *s = NULL;
    if (c) {
        json_object_del(c, "fingerprint");
        s = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
    }
    snprintf(out, 17, "%016llx", s ? (unsigned long long)XXH64(s, strlen(s), 0) : 0ull);
    free(s);
    json_decref(c);
}

/* ---- reporting: every problem (verify) or the first one (load) ---- */

typedef struct {
    long bad;
    int print; /* 1: a line per problem on stderr; 0: the first one into err */
    mc_err *err;
} report;

__attribute__((format(printf, 2, 3))) static void problem(report *rp, const char *fmt, ...)
{
    char msg[sizeof rp->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (rp->print)
        fprintf(stderr, "verify: %s\n", msg);
    else if (!rp->bad)
        mc_err_set(rp->err, MC_ERR_FORMAT, "%s", msg);
    rp->bad++;
}

/* stop after the first problem unless printing them all */
#define STOP(rp) (!(rp)->print && (rp)->bad)

/* ---- one rank's tensor list ---- */

typedef struct {
    const char *name, *dtype, *xxh64; /* point into the JSON */
    int ndim;
    int64_t shape[MC_ST_MAX_DIMS];
    int has_origin, dim;
    int64_t begin, end;
    int seen;
} mtensor;

static int cmp_mt(const void *a, const void *b)
{
    return strcmp(((const mtensor *)a)->name, ((const mtensor *)b)->name);
}

static mtensor *find_mt(mtensor *v, size_t n, const char *name)
{
    mtensor key = {.name = name};
    return n ? bsearch(&key, v, n, sizeof *v, cmp_mt) : NULL;
}

static void fmt_shape(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

static int known_dtype(const char *s)
{
    mc_dtype dt;
    return !strcmp(s, "Q8_0") || !strcmp(s, "Q4_K") || mc_dtype_from_name(s, &dt) == 0;
}

static int is_hash(const char *s)
{
    if (strlen(s) != 16)
        return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

static int json_int_in(const json_t *j, long long lo, long long hi, long long *out)
{
    if (!json_is_integer(j) || json_integer_value(j) < lo || json_integer_value(j) > hi)
        return 0;
    *out = json_integer_value(j);
    return 1;
}

/* Parses entry["tensors"] (`where` names it in messages: "FILE: rank R");
 * entries with a problem are reported and left out. *v sorted by name. */
static mc_status parse_list(const char *where, const json_t *entry, mtensor **out, size_t *n,
                            report *rp)
{
    *out = NULL;
    *n = 0;
    const json_t *tl = json_object_get(entry, "tensors");
    if (!json_is_array(tl)) {
        problem(rp, "%s: no 'tensors' list", where);
        return MC_OK;
    }
    size_t cnt = json_array_size(tl);
    if (cnt == 0) {
        problem(rp, "%s: the tensor list is empty", where);
        return MC_OK;
    }
    if (cnt > MC_SHARD_MAX_TENSORS) {
        problem(rp, "%s: %zu tensors (more than %d)", where, cnt, MC_SHARD_MAX_TENSORS);
        return MC_OK;
    }
    mtensor *v = mc_calloc_n(cnt, sizeof *v);
    if (!v)
        return mc_err_set(rp->err, MC_ERR_NOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < cnt && !STOP(rp); i++) {
        const json_t *tj = json_array_get(tl, i);
        mtensor *t = &v[k];
        const json_t *nm = json_object_get(tj, "name"), *dt = json_object_get(tj, "dtype");
        const json_t *sh = json_object_get(tj, "shape"), *hx = json_object_get(tj, "xxh64");
        if (!json_is_string(nm) || json_string_length(nm) == 0 ||
            json_string_length(nm) > MC_ST_MAX_NAME ||
            strlen(json_string_value(nm)) != json_string_length(nm)) {
            problem(rp, "%s: tensor #%zu has no valid name (a string of 1..%d bytes)", where, i,
                    MC_ST_MAX_NAME);
            continue;
        }
        t->name = json_string_value(nm);
        if (!json_is_string(dt) || !known_dtype(json_string_value(dt))) {
            problem(rp, "%s: tensor '%s': dtype is missing or unknown", where, t->name);
            continue;
        }
        t->dtype = json_string_value(dt);
        if (!json_is_string(hx) || !is_hash(json_string_value(hx))) {
            problem(rp, "%s: tensor '%s': xxh64 is not 16 lowercase hex digits", where, t->name);
            continue;
        }
        t->xxh64 = json_string_value(hx);
        int ok = json_is_array(sh) && json_array_size(sh) <= MC_ST_MAX_DIMS;
        t->ndim = ok ? (int)json_array_size(sh) : 0;
        for (int d = 0; ok && d < t->ndim; d++) {
            long long x = 0;
            ok = json_int_in(json_array_get(sh, (size_t)d), 0, 1ll << 40, &x);
            t->shape[d] = x;
        }
        if (!ok) {
            problem(rp, "%s: tensor '%s': shape is not a list of at most %d sizes in [0, 2^40]",
                    where, t->name, MC_ST_MAX_DIMS);
            continue;
        }
        const json_t *og = json_object_get(tj, "origin");
        if (og) {
            long long dim = 0, b = 0, e = 0;
            if (!json_int_in(json_object_get(og, "dim"), -1, t->ndim - 1, &dim) ||
                !json_int_in(json_object_get(og, "begin"), 0, 1ll << 40, &b) ||
                !json_int_in(json_object_get(og, "end"), b, 1ll << 40, &e)) {
                problem(rp, "%s: tensor '%s': origin needs dim in [-1, %d) and 0 <= begin <= end",
                        where, t->name, t->ndim);
                continue;
            }
            t->has_origin = 1;
            t->dim = (int)dim;
            t->begin = b;
            t->end = e;
        }
        k++;
    }
    qsort(v, k, sizeof *v, cmp_mt);
    size_t w = 0;
    for (size_t i = 0; i < k; i++) {
        if (w && !strcmp(v[w - 1].name, v[i].name)) {
            problem(rp, "%s: tensor '%s' is listed twice", where, v[i].name);
            continue;
        }
        v[w++] = v[i];
    }
    *out = v;
    *n = w;
    return MC_OK;
}

/* Compares rank `rank`'s file with its parsed list (see mc_shard_check_entry). */
static void check_file(const char *dir, int rank, const char *listed_in, mtensor *v, size_t n,
                       int progress, report *rp)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/rank-%05d/model.safetensors", dir, rank);
    st_file *f = NULL;
    mc_err e2;
    mc_err_clear(&e2);
    if (st_file_open(path, &f, &e2) != MC_OK) {
        problem(rp, "rank %d: %s", rank, e2.msg);
        return;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < st_file_count(f); i++)
        total += st_file_tensor(f, i)->nbytes;
    char lbl[64];
    snprintf(lbl, sizeof lbl, "verify rank-%05d", rank);
    mc_progress pg;
    mc_progress_start(&pg, lbl, total, progress);
    for (size_t i = 0; i < n && !STOP(rp); i++) {
        const mtensor *m = &v[i];
        const st_tensor *t = st_file_find(f, m->name);
        if (!t) {
            problem(rp, "%s: tensor '%s' listed in %s is not in the file", path, m->name,
                    listed_in);
            continue;
        }
        char a[160], b[160];
        fmt_shape(a, sizeof a, t->ndim, t->shape);
        fmt_shape(b, sizeof b, m->ndim, m->shape);
        if (strcmp(mc_dtype_name(t->dtype), m->dtype)) {
            problem(rp, "%s: tensor '%s' is %s in the file but %s in %s", path, m->name,
                    mc_dtype_name(t->dtype), m->dtype, listed_in);
            continue;
        }
        if (strcmp(a, b)) {
            problem(rp, "%s: tensor '%s' has shape %s in the file but %s in %s", path, m->name, a,
                    b, listed_in);
            continue;
        }
        uint64_t numel = 1, bytes = 0;
        int ovf = 0;
        for (int d = 0; d < m->ndim; d++)
            ovf |= mc_mul_u64(numel, (uint64_t)m->shape[d], &numel);
        int be = mc_dtype_block_elems(t->dtype);
        ovf |= mc_mul_u64(numel / (uint64_t)(be > 0 ? be : 1), mc_dtype_block_bytes(t->dtype),
                          &bytes);
        if (ovf || bytes != t->nbytes) {
            problem(rp, "%s: tensor '%s' holds %llu bytes, %s's dtype and shape make %llu", path,
                    m->name, (unsigned long long)t->nbytes, listed_in, (unsigned long long)bytes);
            continue;
        }
        char got[17];
        snprintf(got, sizeof got, "%016llx",
                 (unsigned long long)XXH64(t->data, (size_t)t->nbytes, 0));
        mc_progress_add(&pg, t->nbytes);
        if (strcmp(got, m->xxh64))
            problem(rp, "%s: tensor '%s' checksum xxh64 %s, %s says %s", path, m->name, got,
                    listed_in, m->xxh64);
    }
    for (size_t i = 0; i < st_file_count(f) && !STOP(rp); i++) {
        const st_tensor *t = st_file_tensor(f, i);
        if (!find_mt(v, n, t->name))
            problem(rp, "%s: tensor '%s' is in the file but not listed in %s", path, t->name,
                    listed_in);
    }
    if (rp->print || pg.last != pg.t0) /* at load: only when lines were printed */
        mc_progress_finish(&pg);
    st_file_close(f);
}

mc_status mc_shard_check_entry(const char *dir, int rank, const json_t *entry,
                               const char *listed_in, int print, int progress, long *bad,
                               mc_err *err)
{
    report rp = {0, print, err};
    char where[4300];
    snprintf(where, sizeof where, "%s/rank-%05d: %s", dir, rank, listed_in);
    mtensor *v = NULL;
    size_t n = 0;
    mc_status st = parse_list(where, entry, &v, &n, &rp);
    if (st == MC_OK && !STOP(&rp))
        check_file(dir, rank, listed_in, v, n, progress, &rp);
    free(v);
    *bad = rp.bad;
    if (st == MC_OK && !print && rp.bad)
        st = err->status ? err->status : MC_ERR_FORMAT;
    return st;
}

/* ---- for score / generate --shards ---- */

static mc_status load_manifest(const char *dir, char *path, size_t len, json_t **m, mc_err *err)
{
    snprintf(path, len, "%s/manifest.json", dir);
    return mc_shard_json_load(path, "shard manifest", MC_SHARD_MAX_MANIFEST, m, err);
}

mc_status mc_shard_rank_dir(const char *dir, int rank, int world, char *out, size_t len,
                            mc_err *err)
{
    char path[4200];
    json_t *m = NULL;
    mc_status st = load_manifest(dir, path, sizeof path, &m, err);
    if (st != MC_OK)
        return st;
    long long mw = -1;
    int ok = json_int_in(json_object_get(m, "world"), 1, MC_SHARD_MAX_WORLD, &mw);
    size_t nr = json_array_size(json_object_get(m, "ranks"));
    json_decref(m);
    if (!ok)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: 'world' is missing or not in [1, %d]", path,
                          MC_SHARD_MAX_WORLD);
    if (nr != (size_t)mw)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: world is %lld but %zu ranks are listed", path,
                          mw, nr);
    if (mw != world)
        return mc_err_set(err, MC_ERR_ARG,
                          "%s holds shards for %lld rank%s but this run has %d (use mpirun "
                          "-np %lld)",
                          dir, mw, mw == 1 ? "" : "s", world, mw);
    if (rank < 0 || rank >= world)
        return mc_err_set(err, MC_ERR_ARG, "rank %d outside [0, %d)", rank, world);
    snprintf(out, len, "%s/rank-%05d", dir, rank);
    return MC_OK;
}

mc_status mc_shard_verify_rank(const char *dir, int rank, int progress, mc_err *err)
{
    char path[4200];
    json_t *m = NULL;
    mc_status st = load_manifest(dir, path, sizeof path, &m, err);
    if (st != MC_OK)
        return st;
    const json_t *e = json_array_get(json_object_get(m, "ranks"), (size_t)rank);
    const char *fp = json_string_value(json_object_get(m, "fingerprint"));
    const char *efp = json_string_value(json_object_get(e, "fingerprint"));
    long long r = -1;
    if (!e || !json_int_in(json_object_get(e, "rank"), 0, MC_SHARD_MAX_WORLD, &r) || r != rank)
        st = mc_err_set(err, MC_ERR_FORMAT, "%s: no entry for rank %d", path, rank);
    else if (!fp || !efp || strcmp(fp, efp))
        st = mc_err_set(err, MC_ERR_FORMAT,
                        "%s: rank %d's entry belongs to another plan (fingerprint %s, the "
                        "set's %s)",
                        path, rank, efp ? efp : "missing", fp ? fp : "missing");
    long bad = 0;
    if (st == MC_OK)
        st = mc_shard_check_entry(dir, rank, e, "manifest.json", 0, progress, &bad, err);
    json_decref(m);
    return st;
}

/* ---- the whole set: `moecluster verify` ---- */

/* The parts of plan.json the split rules read, checked for range; 0 when
 * they cannot be used (reported). */
static int plan_from_json(const char *path, const json_t *pl, const mc_model_desc *d, mc_plan *p,
                          report *rp)
{
    const json_t *c = json_object_get(pl, "cluster");
    long long v[5];
    const char *keys[5] = {"world", "tp", "ep", "pp", "dp"};
    for (int i = 0; i < 5; i++)
        if (!json_int_in(json_object_get(c, keys[i]), 1, MC_SHARD_MAX_WORLD, &v[i])) {
            problem(rp, "%s: cluster.%s is missing or not in [1, %d]", path, keys[i],
                    MC_SHARD_MAX_WORLD);
            return 0;
        }
    if (v[0] != v[1] * v[3] * v[4] || (v[1] * v[4]) % v[2] || v[3] > d->n_layers) {
        problem(rp,
                "%s: cluster world %lld, tp %lld, ep %lld, pp %lld, dp %lld do not fit "
                "together (or more stages than the model's %d layers)",
                path, v[0], v[1], v[2], v[3], v[4], d->n_layers);
        return 0;
    }
    const json_t *ranks = json_object_get(pl, "ranks");
    if (!json_is_array(ranks) || json_array_size(ranks) != (size_t)v[0]) {
        problem(rp, "%s: 'ranks' does not list %lld ranks", path, v[0]);
        return 0;
    }
    p->d = *d;
    p->world = (int)v[0];
    p->c.tp = (int)v[1];
    p->c.ep = (int)v[2];
    p->c.pp = (int)v[3];
    p->c.dp = (int)v[4];
    p->ranks_per_stage = p->world / p->c.pp;
    p->ranks = mc_calloc_n((size_t)p->world, sizeof *p->ranks);
    if (!p->ranks) {
        problem(rp, "out of memory");
        return 0;
    }
    for (int r = 0; r < p->world; r++) {
        const json_t *rj = json_array_get(ranks, (size_t)r);
        const json_t *ly = json_object_get(rj, "layers"), *ex = json_object_get(rj, "experts");
        long long id, stg = 0, tr = 0, lb = 0, le = 0, eb = 0, ee = 0;
        int per = p->ranks_per_stage;
        if (!json_int_in(json_object_get(rj, "rank"), r, r, &id) ||
            !json_int_in(json_object_get(rj, "stage"), r / per, r / per, &stg) ||
            !json_int_in(json_object_get(rj, "tp_rank"), (r % per) % p->c.tp,
                         (r % per) % p->c.tp, &tr) ||
            json_array_size(ly) != 2 || json_array_size(ex) != 2 ||
            !json_int_in(json_array_get(ly, 0), 0, d->n_layers, &lb) ||
            !json_int_in(json_array_get(ly, 1), lb, d->n_layers, &le) ||
            !json_int_in(json_array_get(ex, 0), 0, d->n_experts, &eb) ||
            !json_int_in(json_array_get(ex, 1), eb, d->n_experts, &ee)) {
            problem(rp,
                    "%s: ranks[%d] is not rank %d of stage %d, tp rank %d with layers and experts "
                    "inside the model's %d layers and %d experts",
                    path, r, r, r / per, (r % per) % p->c.tp, d->n_layers, d->n_experts);
            return 0;
        }
        mc_rank_plan *rp2 = &p->ranks[r];
        rp2->rank = r;
        rp2->stage = (int)stg;
        rp2->tp_rank = (int)tr;
        rp2->layer_begin = (int)lb;
        rp2->layer_end = (int)le;
        rp2->expert_begin = (int)eb;
        rp2->expert_end = (int)ee;
    }
    return 1;
}

static int64_t ceil128(int64_t x) { return (x + 127) / 128; }

/* Rank r's list against what the plan assigns it. */
static void check_plan(const char *mpath, const mc_plan *p, int r, const mc_tensor_spec *specs,
                       size_t nspec, mtensor *v, size_t n, report *rp)
{
    for (size_t i = 0; i < n; i++)
        v[i].seen = 0;
    for (size_t i = 0; i < nspec; i++) {
        const mc_tensor_spec *s = &specs[i];
        int dim;
        int64_t b, e, shape[3];
        if (!mc_shard_slice(p, &p->ranks[r], s, &dim, &b, &e))
            continue;
        memcpy(shape, s->shape, sizeof shape);
        if (dim >= 0)
            shape[dim] = e - b;
        mtensor *m = find_mt(v, n, s->name);
        if (!m) {
            problem(rp, "%s: rank %d: tensor '%s' is not listed (the plan assigns it to this rank)",
                    mpath, r, s->name);
            continue;
        }
        m->seen = 1;
        char a[160], want[160];
        fmt_shape(a, sizeof a, m->ndim, m->shape);
        fmt_shape(want, sizeof want, s->ndim, shape);
        if (strcmp(a, want))
            problem(rp, "%s: rank %d: tensor '%s' has shape %s, the plan gives this rank %s",
                    mpath, r, s->name, a, want);
        else if (m->has_origin && (m->dim != dim || (dim >= 0 && (m->begin != b || m->end != e))))
            problem(rp,
                    "%s: rank %d: tensor '%s' has origin dim %d [%lld, %lld), the plan gives "
                    "dim %d [%lld, %lld)",
                    mpath, r, s->name, m->dim, (long long)m->begin, (long long)m->end, dim,
                    (long long)b, (long long)e);
        if (strcmp(m->dtype, "F8_E4M3") || s->ndim != 2)
            continue;
        char sn[300];
        snprintf(sn, sizeof sn, "%s_scale_inv", s->name);
        mtensor *sc = find_mt(v, n, sn);
        int64_t ss[2] = {ceil128(shape[0]), ceil128(shape[1])};
        if (!sc) {
            problem(rp, "%s: rank %d: FP8 tensor '%s' has no '%s' listed", mpath, r, s->name, sn);
            continue;
        }
        sc->seen = 1;
        if (sc->ndim != 2 || sc->shape[0] != ss[0] || sc->shape[1] != ss[1] ||
            strcmp(sc->dtype, "F32"))
            problem(rp, "%s: rank %d: tensor '%s' is not F32 [%lld, %lld]", mpath, r, sn,
                    (long long)ss[0], (long long)ss[1]);
    }
    for (size_t i = 0; i < n; i++)
        if (!v[i].seen)
            problem(rp, "%s: rank %d: tensor '%s' is listed but the plan does not assign it to "
                        "this rank",
                    mpath, r, v[i].name);
}

mc_status mc_shard_verify(const char *dir, int progress, long *bad, mc_err *err)
{
    char mpath[4200], ppath[4200], rdir[4300];
    json_t *m = NULL, *pl = NULL;
    report rp = {0, 1, err};
    mc_plan p;
    memset(&p, 0, sizeof p);
    mc_tensor_spec *specs = NULL;
    size_t nspec = 0;
    *bad = 0;
    mc_status st = load_manifest(dir, mpath, sizeof mpath, &m, err);
    snprintf(ppath, sizeof ppath, "%s/plan.json", dir);
    if (st == MC_OK)
        st = mc_shard_json_load(ppath, "shard plan", MC_SHARD_MAX_JSON, &pl, err);
    if (st != MC_OK)
        goto done;
    /* the plan, its fingerprint, and the manifest's copy of both */
    char fp[17];
    mc_shard_fingerprint(pl, fp);
    const char *pfp = json_string_value(json_object_get(pl, "fingerprint"));
    const char *mfp = json_string_value(json_object_get(m, "fingerprint"));
    if (!pfp || strcmp(pfp, fp))
        problem(&rp, "%s: fingerprint %s does not match its contents (%s): the plan was edited",
                ppath, pfp ? pfp : "missing", fp);
    if (!mfp || strcmp(mfp, fp))
        problem(&rp, "%s: fingerprint %s is not the plan's (%s)", mpath, mfp ? mfp : "missing", fp);
    if (!json_equal(json_object_get(m, "plan"), pl))
        problem(&rp, "%s: its copy of the plan differs from plan.json", mpath);
    const json_t *ranks = json_object_get(m, "ranks");
    long long world = 0;
    if (!json_int_in(json_object_get(m, "world"), 1, MC_SHARD_MAX_WORLD, &world))
        problem(&rp, "%s: 'world' is missing or not in [1, %d]", mpath, MC_SHARD_MAX_WORLD);
    if (!json_is_array(ranks)) {
        problem(&rp, "%s: no 'ranks' list", mpath);
        goto done;
    }
    size_t nr = json_array_size(ranks);
    if (world && nr != (size_t)world)
        problem(&rp, "%s: world is %lld but %zu ranks are listed", mpath, world, nr);
    /* what the plan assigns to each rank (the model from rank 0's config) */
    int plan_ok = 0;
    mc_model_desc d;
    mc_err e2;
    mc_err_clear(&e2);
    snprintf(rdir, sizeof rdir, "%s/rank-00000", dir);
    if (mc_model_desc_load(rdir, &d, &e2) != MC_OK || mc_model_tensor_specs(&d, &specs, &nspec,
                                                                            &e2) != MC_OK)
        problem(&rp, "%s", e2.msg);
    else if (plan_from_json(ppath, pl, &d, &p, &rp)) {
        plan_ok = 1;
        if (world && world != p.world)
            problem(&rp, "%s: world is %lld, the plan's is %d", mpath, world, p.world);
        const char *mt = json_string_value(json_object_get(pl, "model_type"));
        if (!mt || strcmp(mt, d.model_type))
            problem(&rp, "%s: model_type %s, rank-00000's config says %s", ppath,
                    mt ? mt : "missing", d.model_type);
    }
    for (size_t r = 0; r < nr && r < MC_SHARD_MAX_WORLD; r++) {
        if (plan_ok && r >= (size_t)p.world) {
            problem(&rp, "%s: lists ranks %zu to %zu, the plan has only %d", mpath, r, nr - 1,
                    p.world);
            break;
        }
        const json_t *e = json_array_get(ranks, r);
        long long id;
        const char *efp = json_string_value(json_object_get(e, "fingerprint"));
        char where[4400];
        snprintf(where, sizeof where, "%s: rank %zu", mpath, r);
        if (!json_int_in(json_object_get(e, "rank"), (long long)r, (long long)r, &id))
            problem(&rp, "%s: entry #%zu is not rank %zu", mpath, r, r);
        if (!efp || !mfp || strcmp(efp, mfp))
            problem(&rp, "%s: fingerprint %s is not the set's", where, efp ? efp : "missing");
        mtensor *v = NULL;
        size_t n = 0;
        if ((st = parse_list(where, e, &v, &n, &rp)) != MC_OK)
            goto done;
        if (n) {
            check_file(dir, (int)r, "manifest.json", v, n, progress, &rp);
            if (plan_ok)
                check_plan(mpath, &p, (int)r, specs, nspec, v, n, &rp);
        }
        free(v);
    }
    if (plan_ok && nr < (size_t)p.world) {
        if (p.world - (int)nr == 1)
            problem(&rp, "%s: rank %d of the plan is not listed", mpath, (int)nr);
        else
            problem(&rp, "%s: ranks %d to %d of the plan are not listed", mpath, (int)nr,
                    p.world - 1);
    }
done:
    *bad = rp.bad;
    free(p.ranks);
    free(specs);
    json_decref(pl);
    json_decref(m);
    return st;
}
