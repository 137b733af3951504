/* shard_out.c - see shard_out.h. */
#include "shard_out.h"

#include "dtype.h"
#include "fp8_block.h"
#include "model_config.h"
#include "model_tensors.h"
#include "progress.h"
#include "safetensors.h"
#include "shard_internal.h"
#include "split.h"

#include "fileio.h"
#include "outfile.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* One tensor of one rank's file. */
typedef struct {
    int spec;              /* source spec index */
    int scale;             /* 1: the FP8 scales of the preceding weight item */
    int dim;               /* -1 whole, else the sliced dimension */
    int64_t begin, end;    /* slice along dim */
    st_write_tensor out;   /* name, dtype, shape (data unused) */
    uint64_t bytes;
    uint64_t hash;
} item;

typedef struct {
    item *v;
    size_t n, cap;
} item_list;

typedef struct {
    const st_tensor *src, *src_scale; /* scale: FP8 sources only */
} source;

static int push(item_list *l, const item *it)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? 2 * l->cap : 64;
        item *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv)
            return -1;
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = *it;
    return 0;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Which part of spec s rank rp holds: 0 = none, 1 = [begin, end) along *dim
 * (*dim = -1: all of it). The pipeline stage decides whether the rank holds
 * the tensor at all; the split table (split.h) decides which part. */
static int slice_for(const mc_plan *p, const mc_rank_plan *rp, const mc_tensor_spec *s, int *dim,
                     int64_t *b, int64_t *e)
{
    *dim = -1;
    *b = *e = 0;
    if (s->layer < 0) {
        if (s->role == MC_T_EMBED && rp->stage != 0)
            return 0;
        if ((s->role == MC_T_LM_HEAD || s->role == MC_T_FINAL_NORM) && rp->stage != p->c.pp - 1)
            return 0;
    } else if (s->layer < rp->layer_begin || s->layer >= rp->layer_end) {
        return 0;
    }
    if (mc_split_rule_of(s->role).dim == MC_SPLIT_EXPERTS) {
        if (s->expert >= 0) /* one expert's tensor: all of it, or none */
            return s->expert >= rp->expert_begin && s->expert < rp->expert_end;
        *dim = 0; /* fused: this rank's experts' slabs */
        *b = rp->expert_begin;
        *e = rp->expert_end;
        return 1;
    }
    *dim = mc_split_tp_slice(&p->d, s->role, p->c.tp, rp->tp_rank, b, e);
    return 1;
}

int mc_shard_slice(const mc_plan *p, const mc_rank_plan *rp, const mc_tensor_spec *s, int *dim,
                   int64_t *b, int64_t *e)
{
    return slice_for(p, rp, s, dim, b, e);
}

static int spec_stage(const mc_plan *p, const mc_tensor_spec *s)
{
    if (s->layer < 0)
        return s->role == MC_T_EMBED ? 0 : p->c.pp - 1;
    for (int st = 0; st < p->c.pp; st++)
        if (s->layer < p->stage_first_layer[st + 1])
            return st;
    return p->c.pp - 1;
}

static const source *g_sources;
static int cmp_src_order(const void *a, const void *b)
{
    const source *x = &g_sources[*(const int *)a], *y = &g_sources[*(const int *)b];
    int c = strcmp(x->src->path, y->src->path);
    if (c)
        return c;
    uintptr_t px = (uintptr_t)x->src->data, py = (uintptr_t)y->src->data;
    return px < py ? -1 : px > py;
}

/* ---- writing one item ---- */

typedef struct {
    st_writer *w;
    XXH64_state_t *h;
    mc_progress *pg;
    mc_err *err;
} sink;

static mc_status put(sink *k, const void *data, size_t len)
{
    XXH64_update(k->h, data, len);
    mc_progress_add(k->pg, len);
    return st_writer_write(k->w, data, len, k->err);
}

/* Reads element range [c0, c1) of row r of a 2-D (or row-major N-D viewed as
 * [rows, cols]) source into f32, applying FP8 block scales when given. */
static void read_row_f32(const st_tensor *t, const float *scale, int64_t cols, int64_t r, int64_t c0,
                         int64_t c1, float *dst)
{
    size_t es = mc_dtype_size(t->dtype);
    const uint8_t *p = (const uint8_t *)t->data + ((size_t)r * (size_t)cols + (size_t)c0) * es;
    int64_t sc = ceil_div(cols, MC_FP8_BLOCK);
    for (int64_t j = 0; j < c1 - c0; j++, p += es) {
        float v;
        switch (t->dtype) {
        case MC_DT_F32: memcpy(&v, p, 4); break;
        case MC_DT_F16: { uint16_t h; memcpy(&h, p, 2); v = mc_f16_to_f32(h); } break;
        case MC_DT_BF16: { uint16_t h; memcpy(&h, p, 2); v = mc_bf16_to_f32(h); } break;
        case MC_DT_F8_E4M3: v = mc_fp8_e4m3_to_f32(*p); break;
        default: v = 0; break;
        }
        if (scale)
            v *= scale[(r / MC_FP8_BLOCK) * sc + (c0 + j) / MC_FP8_BLOCK];
        dst[j] = v;
    }
}

/* Writes the slice of `it` from source `s`; converts per the item's dtype. */
/* Conversions must not turn NaN/Inf into finite numbers (Q8_0/Q4_K/FP8
 * scales would): the first non-finite source value stops the cut. */
static mc_status check_finite_row(const st_tensor *t, const float *row, int64_t n, int64_t r,
                                  int64_t c0, mc_err *err)
{
    for (int64_t j = 0; j < n; j++)
        if (!isfinite(row[j]))
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: tensor '%s' holds %s at row %lld, column %lld: it cannot be "
                              "converted to another format",
                              t->path, t->name, isnan(row[j]) ? "NaN" : "Inf", (long long)r,
                              (long long)(c0 + j));
    return MC_OK;
}

static mc_status write_item(sink *k, const item *it, const source *s, const float *src_scale_f32,
                            float **fp8_scales_out)
{
    const st_tensor *t = it->scale ? s->src_scale : s->src;
    size_t es = mc_dtype_size(t->dtype);
    int64_t rows = t->shape[0], cols = 1;
    for (int dd = 1; dd < t->ndim; dd++)
        cols *= t->shape[dd];
    if (t->ndim == 1) {
        rows = 1;
        cols = t->shape[0];
    }
    int64_t r0 = 0, r1 = rows, c0 = 0, c1 = cols;
    if (it->dim == 0) {
        r0 = it->begin;
        r1 = it->end;
        if (t->ndim == 3) { /* fused experts: rows are experts, each expert a slab */
            cols = t->shape[1] * t->shape[2];
            c1 = cols;
        }
    } else if (it->dim == 1) {
        c0 = it->begin;
        c1 = it->end;
    }
    if (it->scale) { /* scale slice of an FP8 weight sliced on a block boundary */
        if (it->dim == 0)
            mc_split_fp8_blocks(it->begin, it->end, MC_FP8_BLOCK, &r0, &r1);
        else if (it->dim == 1)
            mc_split_fp8_blocks(it->begin, it->end, MC_FP8_BLOCK, &c0, &c1);
    }
    mc_status st = MC_OK;
    if (it->out.dtype == t->dtype) { /* plain copy */
        const uint8_t *base = t->data;
        if (c0 == 0 && c1 == cols)
            return put(k, base + (size_t)r0 * (size_t)cols * es, (size_t)(r1 - r0) * (size_t)cols * es);
        for (int64_t r = r0; r < r1 && st == MC_OK; r++)
            st = put(k, base + ((size_t)r * (size_t)cols + (size_t)c0) * es, (size_t)(c1 - c0) * es);
        return st;
    }
    int64_t w = c1 - c0;
    float *row = malloc((size_t)w * sizeof *row * MC_FP8_BLOCK);
    uint16_t *bf = malloc((size_t)w * sizeof *bf);
    uint8_t *q = malloc((size_t)w * MC_FP8_BLOCK);
    if (!row || !bf || !q) {
        free(row);
        free(bf);
        free(q);
        return mc_err_set(k->err, MC_ERR_NOMEM, "out of memory");
    }
    if (mc_dtype_is_block(it->out.dtype)) { /* Q8_0 / Q4_K, row by row */
        size_t rb = mc_dtype_row_bytes(it->out.dtype, w);
        uint8_t *qb = malloc(rb);
        if (!qb)
            st = mc_err_set(k->err, MC_ERR_NOMEM, "out of memory");
        for (int64_t r = r0; r < r1 && st == MC_OK; r++) {
            read_row_f32(t, src_scale_f32, cols, r, c0, c1, row);
            if ((st = check_finite_row(t, row, w, r, c0, k->err)) != MC_OK)
                break;
            mc_quantize_row(it->out.dtype, row, qb, w);
            st = put(k, qb, rb);
        }
        free(qb);
    } else if (it->out.dtype == MC_DT_BF16) { /* widen / dequantize */
        for (int64_t r = r0; r < r1 && st == MC_OK; r++) {
            read_row_f32(t, src_scale_f32, cols, r, c0, c1, row);
            if ((st = check_finite_row(t, row, w, r, c0, k->err)) != MC_OK)
                break;
            for (int64_t j = 0; j < w; j++)
                bf[j] = mc_f32_to_bf16(row[j]);
            st = put(k, bf, (size_t)w * 2);
        }
    } else { /* quantize to FP8 in 128-row bands of the slice */
        int64_t sr = ceil_div(r1 - r0, MC_FP8_BLOCK), sc = ceil_div(w, MC_FP8_BLOCK);
        float *scl = malloc((size_t)(sr * sc) * sizeof *scl);
        if (!scl)
            st = mc_err_set(k->err, MC_ERR_NOMEM, "out of memory");
        for (int64_t b = 0; b < sr && st == MC_OK; b++) {
            int64_t n = (r1 - r0) - b * MC_FP8_BLOCK < MC_FP8_BLOCK ? (r1 - r0) - b * MC_FP8_BLOCK
                                                                    : MC_FP8_BLOCK;
            for (int64_t i = 0; i < n && st == MC_OK; i++) {
                int64_t r = r0 + b * MC_FP8_BLOCK + i;
                read_row_f32(t, src_scale_f32, cols, r, c0, c1, row + i * w);
                st = check_finite_row(t, row + i * w, w, r, c0, k->err);
            }
            if (st != MC_OK)
                break;
            mc_fp8_quantize_band(row, n, w, q, scl + b * sc);
            st = put(k, q, (size_t)(n * w));
        }
        if (st == MC_OK)
            *fp8_scales_out = scl;
        else
            free(scl);
    }
    free(row);
    free(bf);
    free(q);
    return st;
}

/* ---- the whole job ---- */

/* temporary file, fsync, rename; never over a non-regular file (outfile.h) */
static mc_status write_text(const char *path, const char *text, mc_err *err)
{
    return mc_write_file(path, "output", text, strlen(text), err);
}

static mc_status write_json_file(const char *path, json_t *j, mc_err *err)
{
    char *s = json_dumps(j, JSON_INDENT(1) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    if (!s)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    mc_status st = write_text(path, s, err);
    free(s);
    return st;
}


static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* The model config for a rank folder: the source's, with
 * quantization_config following the output weights. */
static mc_status rank_config(const char *model_dir, const char *rank_dir, int fp8_out, int fp8_in,
                             mc_err *err)
{
    char src[4200], dst[8400];
    snprintf(src, sizeof src, "%s/config.json", model_dir);
    const char *name = "config.json";
    if (!file_exists(src)) {
        snprintf(src, sizeof src, "%s/params.json", model_dir);
        name = "params.json";
    }
    json_t *j = NULL;
    mc_status st = mc_shard_json_load(src, "config", MC_SHARD_MAX_CONFIG, &j, err);
    if (st != MC_OK)
        return st;
    if (fp8_out && !fp8_in)
        json_object_set_new(j, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:[i,i]}", "quant_method", "fp8", "fmt",
                                      "e4m3", "activation_scheme", "dynamic", "weight_block_size",
                                      MC_FP8_BLOCK, MC_FP8_BLOCK));
    else if (!fp8_out)
        json_object_del(j, "quantization_config");
    snprintf(dst, sizeof dst, "%s/%s", rank_dir, name);
    st = write_json_file(dst, j, err);
    json_decref(j);
    return st;
}

static uint64_t tensor_bytes(const st_write_tensor *t)
{
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (uint64_t)t->shape[d];
    int be = mc_dtype_block_elems(t->dtype);
    return n / (uint64_t)(be > 0 ? be : 1) * mc_dtype_block_bytes(t->dtype);
}

mc_status mc_shard_write(const mc_shard_opts *o, mc_err *err)
{
    mc_status st;
    mc_model_desc d;
    st_checkpoint *ck = NULL;
    mc_plan *plan = NULL;
    mc_tensor_spec *specs = NULL;
    size_t nspec = 0;
    source *srcs = NULL;
    int *order = NULL;
    item_list *lists = NULL;
    float **src_scales = NULL;
    json_t *pj = NULL, *manifest = NULL;
    char path[8400];
    int world = 0;
    if ((st = mc_model_desc_load(o->model_dir, &d, err)) != MC_OK ||
        (st = st_checkpoint_open(o->model_dir, &ck, err)) != MC_OK)
        goto done;
    int fp8_in = d.fp8_block;
    int fp8_out = o->fmt == MC_SHARD_FP8 || (o->fmt == MC_SHARD_KEEP && fp8_in);
    if (fp8_in && (d.fp8_block_rows != MC_FP8_BLOCK || d.fp8_block_cols != MC_FP8_BLOCK)) {
        st = mc_err_set(err, MC_ERR_UNSUPPORTED, "FP8 blocks of %dx%d (only 128x128 are supported)",
                        d.fp8_block_rows, d.fp8_block_cols);
        goto done;
    }
    int qfmt = o->fmt == MC_SHARD_Q8_0 || o->fmt == MC_SHARD_Q4_K;
    if (qfmt && d.expert_layout != MC_EXPERTS_SEPARATE) {
        st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                        "--weights %s shards are written for per-expert checkpoints; %s stores "
                        "its experts fused (quantize at load time with score/generate --weights)",
                        o->fmt == MC_SHARD_Q8_0 ? "q8_0" : "q4_k", d.model_type);
        goto done;
    }
    if (o->fmt == MC_SHARD_FP8 && !fp8_in &&
        (d.expert_layout != MC_EXPERTS_SEPARATE || d.naming != MC_NAMES_HF)) {
        st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                        "--weights fp8 is written in DeepSeek's block format, for per-expert "
                        "Hugging Face checkpoints only (not %s)",
                        d.model_type);
        goto done;
    }
    mc_plan_opts po = {.weights = o->fmt == MC_SHARD_Q8_0   ? MC_WFMT_Q8_0
                                  : o->fmt == MC_SHARD_Q4_K ? MC_WFMT_Q4_K
                                  : fp8_out                 ? MC_WFMT_FP8
                                                            : MC_WFMT_BF16,
                       .max_model_len = d.max_pos < 4096 ? d.max_pos : 4096,
                       .max_num_seqs = 1,
                       .kv_bytes_per_elem = 2};
    if ((st = mc_plan_build(&d, o->cluster, &po, &plan, err)) != MC_OK ||
        (st = mc_model_tensor_specs(&d, &specs, &nspec, err)) != MC_OK)
        goto done;
    world = plan->world;
    srcs = calloc(nspec, sizeof *srcs);
    order = calloc(nspec, sizeof *order);
    src_scales = calloc(nspec, sizeof *src_scales);
    lists = calloc((size_t)world, sizeof *lists);
    if (!srcs || !order || !lists || !src_scales) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto done;
    }
    /* every tensor the config implies, with the shape it implies */
    for (size_t i = 0; i < nspec; i++) {
        const mc_tensor_spec *s = &specs[i];
        const st_tensor *t = st_checkpoint_find(ck, s->name);
        if (!t) {
            st = mc_err_set(err, MC_ERR_CONFIG, "%s: checkpoint has no tensor '%s'", o->model_dir,
                            s->name);
            goto done;
        }
        int ok = t->ndim == s->ndim;
        for (int k = 0; ok && k < s->ndim; k++)
            ok = t->shape[k] == s->shape[k];
        if (!ok) {
            st = mc_err_set(err, MC_ERR_CONFIG, "%s: tensor '%s' does not have the shape the config implies",
                            t->path, t->name);
            goto done;
        }
        srcs[i].src = t;
        if (t->dtype == MC_DT_F8_E4M3) {
            char sn[300];
            snprintf(sn, sizeof sn, "%s_scale_inv", s->name);
            srcs[i].src_scale = st_checkpoint_find(ck, sn);
            if (!srcs[i].src_scale || srcs[i].src_scale->ndim != 2) {
                st = mc_err_set(err, MC_ERR_CONFIG, "%s: FP8 tensor '%s' has no 2-D '%s'", t->path,
                                t->name, sn);
                goto done;
            }
        }
        order[i] = (int)i;
    }
    g_sources = srcs;
    qsort(order, nspec, sizeof *order, cmp_src_order);
    /* each rank's items, in source order */
    uint64_t total = 0;
    for (int r = 0; r < world; r++) {
        const mc_rank_plan *rp = &plan->ranks[r];
        for (size_t oi = 0; oi < nspec; oi++) {
            int i = order[oi];
            const mc_tensor_spec *s = &specs[i];
            item it = {.spec = i};
            if (!slice_for(plan, rp, s, &it.dim, &it.begin, &it.end))
                continue;
            const st_tensor *t = srcs[i].src;
            int is_fp8 = t->dtype == MC_DT_F8_E4M3;
            mc_dtype od = t->dtype;
            if (s->linear && o->fmt == MC_SHARD_BF16)
                od = MC_DT_BF16;
            else if (s->linear && o->fmt == MC_SHARD_FP8 && s->ndim == 2)
                od = MC_DT_F8_E4M3;
            else if (qfmt && s->ndim == 2 &&
                     ((s->linear && s->role != MC_T_IDX_WQ_B && s->role != MC_T_IDX_WK) ||
                      s->role == MC_T_LM_HEAD)) {
                /* the set load-time --weights quantizes: projections, FFNs, experts, LM head */
                int64_t cols = it.dim == 1 ? it.end - it.begin : t->shape[1];
                mc_dtype q = mc_quant_format_for(o->fmt == MC_SHARD_Q8_0 ? MC_DT_Q8_0 : MC_DT_Q4_K,
                                                 cols);
                od = q != MC_DT_COUNT ? q : is_fp8 ? MC_DT_BF16 : t->dtype;
            }
            if (is_fp8 && od == MC_DT_F8_E4M3 && it.dim >= 0) {
                if (!mc_split_on_blocks(it.begin, it.end, t->shape[it.dim], MC_FP8_BLOCK)) {
                    st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                                    "cannot cut FP8 tensor '%s' at [%lld, %lld) along dim %d: not "
                                    "on a 128 block boundary (use --weights bf16)",
                                    s->name, (long long)it.begin, (long long)it.end, it.dim);
                    goto done;
                }
            }
            it.out.name = s->name;
            it.out.dtype = od;
            it.out.ndim = t->ndim;
            memcpy(it.out.shape, t->shape, sizeof t->shape);
            if (it.dim >= 0)
                it.out.shape[it.dim] = it.end - it.begin;
            it.bytes = tensor_bytes(&it.out);
            total += it.bytes;
            if (push(&lists[r], &it)) {
                st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
                goto done;
            }
            if (od == MC_DT_F8_E4M3) { /* the weight's block scales follow it */
                item sc = it;
                sc.scale = 1;
                char *nm = malloc(strlen(s->name) + 16);
                if (!nm) {
                    st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
                    goto done;
                }
                sprintf(nm, "%s_scale_inv", s->name);
                sc.out.name = nm;
                sc.out.dtype = MC_DT_F32;
                sc.out.ndim = 2;
                sc.out.shape[0] = ceil_div(it.out.shape[0], MC_FP8_BLOCK);
                sc.out.shape[1] = ceil_div(it.out.shape[1], MC_FP8_BLOCK);
                sc.bytes = tensor_bytes(&sc.out);
                total += sc.bytes;
                if (push(&lists[r], &sc)) {
                    free(nm);
                    st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
                    goto done;
                }
            }
        }
    }
    /* what OUT holds: the plan and its fingerprint; refuse another plan */
    pj = mc_plan_to_json(plan);
    json_object_del(pj, "estimate");
    json_object_del(pj, "verdict");
    static const char *const fmt_names[] = {"keep", "bf16", "fp8", "q8_0", "q4_k"};
    json_object_set_new(pj, "shard_format", json_string(fmt_names[o->fmt]));
    json_object_set_new(pj, "source_tensors", json_integer((json_int_t)st_checkpoint_count(ck)));
    json_t *src_id = NULL;
    if ((st = mc_shard_source_identity(o->model_dir, ck, &src_id, err)) != MC_OK)
        goto done;
    json_object_set_new(pj, "source", src_id);
    char fps[17];
    mc_shard_fingerprint(pj, fps);
    json_object_set_new(pj, "fingerprint", json_string(fps));
    if (mkdir(o->out_dir, 0777) != 0 && errno != EEXIST) {
        st = mc_err_set(err, MC_ERR_IO, "%s: cannot create: %s", o->out_dir, strerror(errno));
        goto done;
    }
    snprintf(path, sizeof path, "%s/plan.json", o->out_dir);
    json_t *old = NULL;
    mc_err e2;
    mc_err_clear(&e2);
    mc_status ost = mc_shard_json_load(path, "shard plan", MC_SHARD_MAX_JSON, &old, &e2);
    const char *ofp = old ? json_string_value(json_object_get(old, "fingerprint")) : NULL;
    int same = ofp && !strcmp(ofp, fps);
    if (ost != MC_OK && ost != MC_ERR_NOT_FOUND && !o->restart) {
        st = mc_err_set(err, ost, "%s; use another --out, or --restart to redo every rank", e2.msg);
    } else if (old && !same && !o->restart) {
        char why[600];
        mc_shard_describe_change(old, pj, why, sizeof why);
        st = mc_err_set(err, MC_ERR_ARG,
                        "%s already holds shards of %s (fingerprint %s, this run %s); use another "
                        "--out, or --restart to redo every rank",
                        o->out_dir, why, ofp ? ofp : "missing", fps);
    }
    json_decref(old);
    if (st != MC_OK)
        goto done;
    /* from here on OUT is being (re)written: no manifest until it is whole again */
    snprintf(path, sizeof path, "%s/manifest.json", o->out_dir);
    if (unlink(path) != 0 && errno != ENOENT) {
        st = mc_err_set(err, MC_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
        goto done;
    }
    snprintf(path, sizeof path, "%s/plan.json", o->out_dir);
    if (!same && (st = write_json_file(path, pj, err)) != MC_OK)
        goto done;
    mc_progress pg;
    mc_progress_start(&pg, "shard", total, o->progress);
    /* stage by stage; every source tensor belongs to one stage */
    int per = plan->ranks_per_stage;
    st_writer **ws = calloc((size_t)per, sizeof *ws);
    size_t *cursor = calloc((size_t)per, sizeof *cursor);
    int *done_rank = calloc((size_t)world, sizeof *done_rank);
    XXH64_state_t *h = XXH64_createState();
    if (!ws || !cursor || !done_rank || !h) {
        free(ws);
        free(cursor);
        free(done_rank);
        XXH64_freeState(h);
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto done;
    }
    const char *fail_env = getenv("MC_SHARD_FAIL_AFTER_BYTES"); /* tests: simulate a crash */
    uint64_t fail_after = fail_env ? strtoull(fail_env, NULL, 10) : 0;
    for (int s = 0; s < plan->c.pp && st == MC_OK; s++) {
        int any = 0;
        for (int k = 0; k < per && st == MC_OK; k++) {
            int r = s * per + k;
            char rd[4200], tj[4300];
            snprintf(rd, sizeof rd, "%s/rank-%05d", o->out_dir, r);
            snprintf(tj, sizeof tj, "%s/tensors.json", rd);
            snprintf(path, sizeof path, "%s/model.safetensors", rd);
            if (file_exists(tj)) {
                /* complete in an earlier run of this fingerprint, and still intact? */
                char why[800];
                st_write_tensor *want = calloc(lists[r].n + 1, sizeof *want);
                for (size_t i = 0; want && i < lists[r].n; i++)
                    want[i] = lists[r].v[i].out;
                int reuse = want && mc_shard_rank_reusable(o->out_dir, r, fps, want, lists[r].n,
                                                           why, sizeof why);
                free(want);
                if (reuse) {
                    done_rank[r] = 1;
                    for (size_t i = 0; i < lists[r].n; i++)
                        mc_progress_add(&pg, lists[r].v[i].bytes);
                    continue;
                }
                fprintf(stderr, "moecluster shard: %s: rewriting it: %s\n", rd,
                        want ? why : "out of memory");
                if (unlink(tj) != 0 && errno != ENOENT) {
                    st = mc_err_set(err, MC_ERR_IO, "%s: cannot remove: %s", tj, strerror(errno));
                    break;
                }
            }
            if (mkdir(rd, 0777) != 0 && errno != EEXIST) {
                st = mc_err_set(err, MC_ERR_IO, "%s: cannot create: %s", rd, strerror(errno));
                break;
            }
            st_write_tensor *wt = calloc(lists[r].n + 1, sizeof *wt);
            if (!wt) {
                st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
                break;
            }
            for (size_t i = 0; i < lists[r].n; i++)
                wt[i] = lists[r].v[i].out;
            st = st_writer_open(path, wt, lists[r].n, &ws[k], err);
            free(wt);
            if (st == MC_OK)
                st = rank_config(o->model_dir, rd, fp8_out, fp8_in, err);
            cursor[k] = 0;
            any = 1;
        }
        /* stream the stage's source tensors in order, appending to each rank */
        for (size_t oi = 0; oi < nspec && st == MC_OK && any; oi++) {
            int i = order[oi];
            if (spec_stage(plan, &specs[i]) != s)
                continue;
            float *sscale = NULL;
            if (srcs[i].src_scale) {
                sscale = malloc(srcs[i].src_scale->numel * sizeof *sscale);
                if (!sscale) {
                    st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
                    break;
                }
                st_tensor_to_f32(srcs[i].src_scale, sscale);
            }
            for (int k = 0; k < per && st == MC_OK; k++) {
                int r = s * per + k;
                if (!ws[k])
                    continue;
                item_list *L = &lists[r];
                while (cursor[k] < L->n && L->v[cursor[k]].spec == i && st == MC_OK) {
                    item *it = &L->v[cursor[k]];
                    sink sk = {ws[k], h, &pg, err};
                    XXH64_reset(h, 0);
                    float *computed = NULL;
                    if (it->scale && !srcs[i].src_scale) {
                        st = put(&sk, src_scales[i], (size_t)it->bytes); /* quantized above */
                    } else {
                        st = write_item(&sk, it, &srcs[i], it->out.dtype == MC_DT_F8_E4M3 ? NULL : sscale,
                                        &computed);
                        if (computed) {
                            free(src_scales[i]);
                            src_scales[i] = computed;
                        }
                    }
                    it->hash = XXH64_digest(h);
                    cursor[k]++;
                    if (fail_after && pg.done >= fail_after) {
                        st = mc_err_set(err, MC_ERR_IO, "stopped after %llu bytes (MC_SHARD_FAIL_AFTER_BYTES)",
                                        (unsigned long long)pg.done);
                        for (int kk = 0; kk < per; kk++) /* leave the partial files, like a crash */
                            ws[kk] = NULL;
                    }
                }
                free(src_scales[i]);
                src_scales[i] = NULL;
            }
            free(sscale);
        }
        for (int k = 0; k < per; k++) {
            int r = s * per + k;
            if (!ws[k])
                continue;
            if (st != MC_OK) {
                st_writer_abort(ws[k]);
                ws[k] = NULL;
                continue;
            }
            st = st_writer_close(ws[k], err);
            ws[k] = NULL;
            if (st != MC_OK)
                break;
            json_t *tl = json_array();
            for (size_t i = 0; i < lists[r].n; i++) {
                const item *it = &lists[r].v[i];
                char hs[32];
                snprintf(hs, sizeof hs, "%016llx", (unsigned long long)it->hash);
                json_t *shape = json_array();
                for (int dd = 0; dd < it->out.ndim; dd++)
                    json_array_append_new(shape, json_integer(it->out.shape[dd]));
                json_t *e = json_pack("{s:s, s:s, s:o, s:s, s:{s:s, s:i, s:I, s:I}}", "name",
                                      it->out.name, "dtype", mc_dtype_name(it->out.dtype), "shape",
                                      shape, "xxh64", hs, "origin", "tensor",
                                      it->scale ? it->out.name : specs[it->spec].name,
                                      "dim", it->dim, "begin", (json_int_t)it->begin, "end",
                                      (json_int_t)it->end);
                json_array_append_new(tl, e);
            }
            char tj[4300];
            snprintf(tj, sizeof tj, "%s/rank-%05d/tensors.json", o->out_dir, r);
            json_t *rj = json_pack("{s:i, s:s, s:o}", "rank", r, "fingerprint", fps, "tensors", tl);
            st = write_json_file(tj, rj, err);
            json_decref(rj);
            done_rank[r] = 1;
        }
    }
    free(ws);
    free(cursor);
    XXH64_freeState(h);
    if (st == MC_OK) {
        mc_progress_finish(&pg);
        manifest = json_pack("{s:s, s:i, s:s, s:O, s:[]}", "fingerprint", fps, "world", world,
                             "source", o->model_dir, "plan", pj, "ranks");
        json_t *ra = json_object_get(manifest, "ranks");
        for (int r = 0; r < world && st == MC_OK; r++) {
            snprintf(path, sizeof path, "%s/rank-%05d/tensors.json", o->out_dir, r);
            json_t *rj = NULL;
            if ((st = mc_shard_json_load(path, "rank tensor list", MC_SHARD_MAX_JSON, &rj, err)) !=
                MC_OK)
                break;
            json_array_append_new(ra, rj);
        }
        snprintf(path, sizeof path, "%s/manifest.json", o->out_dir);
        if (st == MC_OK)
            st = write_json_file(path, manifest, err);
    }
    free(done_rank);
done:
    for (int r = 0; lists && r < world; r++) {
        for (size_t i = 0; i < lists[r].n; i++)
            if (lists[r].v[i].scale)
                free((char *)lists[r].v[i].out.name);
        free(lists[r].v);
    }
    for (size_t i = 0; src_scales && i < nspec; i++)
        free(src_scales[i]);
    free(src_scales);
    free(lists);
    free(order);
    free(srcs);
    free(specs);
    json_decref(pj);
    json_decref(manifest);
    mc_plan_free(plan);
    st_checkpoint_close(ck);
    return st;
}
