/* synth.c - see synth.h. Values: linear weights, embeddings and routers
 * uniform with standard deviation 0.02, norms 1, biases 0; every tensor has
 * its own stream seeded from (seed, name), so a tensor does not depend on
 * the file split or on the other tensors. */
#include "synth.h"

#include "dtype.h"
#include "fp8_block.h"
#include "model_config.h"
#include "model_tensors.h"
#include "outfile.h"
#include "progress.h"
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FP8_BLOCK MC_FP8_BLOCK

typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [-a, a) */
static float rng_uniform(rng *r, float a)
{
    return (float)((double)(rng_next(r) >> 11) * (2.0 / 9007199254740992.0) - 1.0) * a;
}

static uint64_t hash_name(uint64_t seed, const char *s)
{
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* ---- config handling ---- */

static json_t *text_root(json_t *root)
{
    json_t *tc = json_object_get(root, "text_config");
    return json_is_object(tc) ? tc : root;
}

static void trim_array(json_t *o, const char *key, int n)
{
    json_t *a = json_object_get(o, key);
    if (json_is_array(a))
        while ((int)json_array_size(a) > n)
            json_array_remove(a, json_array_size(a) - 1);
}

/* Cuts the config to `layers` layers (full width); Llama 4's moe_layers keeps
 * the indices that remain. */
static void cut_layers(json_t *root, int mistral, int layers)
{
    json_t *r = text_root(root);
    json_object_set_new(r, mistral ? "n_layers" : "num_hidden_layers", json_integer(layers));
    trim_array(r, "layer_types", layers);
    trim_array(r, "mlp_layer_types", layers);
    trim_array(r, "compress_ratios", layers); /* DeepSeek-V4's legacy spelling */
    trim_array(r, "no_rope_layers", layers);
    json_t *ml = json_object_get(r, "moe_layers");
    if (json_is_array(ml))
        for (size_t i = json_array_size(ml); i-- > 0;) {
            json_t *e = json_array_get(ml, i);
            if (json_is_integer(e) && json_integer_value(e) >= layers)
                json_array_remove(ml, i);
        }
    if (json_object_get(r, "num_nextn_predict_layers"))
        json_object_set_new(r, "num_nextn_predict_layers", json_integer(0));
}

typedef struct {
    st_write_tensor w; /* data unused */
    int spec;          /* index into specs, or -1 */
    int scale_of;      /* for a scale tensor: the spec whose scales it holds */
    uint64_t bytes;
} item;

static uint64_t item_bytes(const st_write_tensor *t)
{
    uint64_t n = mc_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++)
        n *= (uint64_t)t->shape[d];
    return n;
}

#define CHUNK 65536

/* DeepSeek-V4's hash routing table [vocab, k] (I64): each token's k
 * distinct experts of n_experts, drawn uniformly (partial shuffle). */
static mc_status emit_tid2eid(st_writer *w, const st_write_tensor *t, int n_experts, rng *r,
                              mc_progress *pg, mc_err *err)
{
    int64_t rows = t->shape[0], k = t->shape[1];
    int *perm = malloc((size_t)n_experts * sizeof *perm);
    int64_t *row = malloc((size_t)k * sizeof *row);
    mc_status st = MC_OK;
    if (!perm || !row)
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for %s", t->name);
    for (int e = 0; perm && e < n_experts; e++)
        perm[e] = e;
    for (int64_t i = 0; i < rows && st == MC_OK; i++) {
        for (int64_t j = 0; j < k; j++) {
            int64_t pick = j + (int64_t)(rng_next(r) % (uint64_t)(n_experts - j));
            int tmp = perm[j];
            perm[j] = perm[pick];
            perm[pick] = tmp;
            row[j] = perm[j];
        }
        st = st_writer_write(w, row, (size_t)k * sizeof *row, err);
        mc_progress_add(pg, (uint64_t)k * sizeof *row);
    }
    free(perm);
    free(row);
    return st;
}

/* Generates one tensor's bytes into w; for an FP8 weight also its block
 * scales into *scales (malloc'd). Values: see the top of the file; V4's
 * sink logits 0, its hyper-connection vectors like weights. */
static mc_status emit(st_writer *w, const mc_tensor_spec *s, const st_write_tensor *t,
                      const mc_model_desc *md, uint64_t seed, float **scales, mc_progress *pg,
                      mc_err *err)
{
    rng r = {hash_name(seed, s->name)};
    if (s->role == MC_T_V4_TID2EID)
        return emit_tid2eid(w, t, md->n_experts, &r, pg, err);
    const float a = 0.02f * 1.7320508f; /* uniform with std 0.02 */
    mc_status st = MC_OK;
    uint64_t numel = 1;
    for (int k = 0; k < t->ndim; k++)
        numel *= (uint64_t)t->shape[k];
    int is_zero = s->role == MC_T_ROUTER_BIAS || s->role == MC_T_IDX_K_NORM_BIAS ||
                  s->role == MC_T_V4_SINK;
    int is_norm = !s->linear && t->ndim == 1 && !is_zero && s->role != MC_T_V4_HC;
    if (t->dtype == MC_DT_BF16) {
        uint16_t buf[CHUNK];
        for (uint64_t i = 0; i < numel && st == MC_OK;) {
            size_t n = numel - i < CHUNK ? (size_t)(numel - i) : CHUNK;
            for (size_t j = 0; j < n; j++)
                buf[j] = mc_f32_to_bf16(is_norm ? 1.0f : is_zero ? 0.0f : rng_uniform(&r, a));
            st = st_writer_write(w, buf, n * 2, err);
            mc_progress_add(pg, n * 2);
            i += n;
        }
        return st;
    }
    /* F8_E4M3 [R, C]: 128-row bands, one scale per 128x128 block */
    int64_t R = t->shape[0], C = t->shape[1];
    int64_t sr = (R + FP8_BLOCK - 1) / FP8_BLOCK, sc = (C + FP8_BLOCK - 1) / FP8_BLOCK;
    float *band = malloc((size_t)FP8_BLOCK * (size_t)C * sizeof *band);
    uint8_t *q = malloc((size_t)FP8_BLOCK * (size_t)C);
    float *scl = malloc((size_t)(sr * sc) * sizeof *scl);
    if (!band || !q || !scl) {
        free(band);
        free(q);
        free(scl);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory for FP8 tensor %s", s->name);
    }
    for (int64_t b = 0; b < sr && st == MC_OK; b++) {
        int64_t rows = R - b * FP8_BLOCK < FP8_BLOCK ? R - b * FP8_BLOCK : FP8_BLOCK;
        for (int64_t i = 0; i < rows * C; i++)
            band[i] = rng_uniform(&r, a);
        mc_fp8_quantize_band(band, rows, C, q, scl + b * sc);
        st = st_writer_write(w, q, (size_t)(rows * C), err);
        mc_progress_add(pg, (uint64_t)(rows * C));
    }
    free(band);
    free(q);
    if (st != MC_OK) {
        free(scl);
        return st;
    }
    *scales = scl;
    return MC_OK;
}

/* Through a temporary file and a checked rename, like the weights. */
static mc_status write_json(const char *path, json_t *j, mc_err *err)
{
    char *text = j ? json_dumps(j, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
    if (!text)
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
    mc_status st = mc_write_file(path, "output", text, strlen(text), err);
    free(text);
    return st;
}

mc_status mc_synth(const mc_synth_opts *o, mc_err *err)
{
    mc_status st;
    char *text = NULL, *dumped = NULL;
    size_t len = 0;
    json_t *root = NULL, *weight_map = NULL;
    mc_tensor_spec *specs = NULL;
    item *items = NULL;
    size_t nspec = 0, nitems = 0;
    float **scales = NULL;
    char path[4096];
    if ((st = mc_config_read(o->config_path, &text, &len, err)) != MC_OK)
        return st;
    json_error_t jerr;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        st = mc_err_set(err, MC_ERR_CONFIG, "%s: not a JSON object (%s)", o->config_path,
                        root ? "wrong type" : jerr.text);
        goto done;
    }
    int mistral = mc_config_is_mistral(o->config_path, text, len);
    mc_model_desc d;
    /* validate the original first, so --layers can be range-checked */
    st = mc_model_desc_parse_any(text, len, o->config_path, &d, err);
    if (st != MC_OK)
        goto done;
    if (o->layers < 0 || o->layers > d.n_layers) {
        st = mc_err_set(err, MC_ERR_ARG, "--layers %d: the model has %d layers", o->layers,
                        d.n_layers);
        goto done;
    }
    if (o->layers > 0)
        cut_layers(root, mistral, o->layers);
    if (o->fp8) {
        if (d.family == MC_FAM_DEEPSEEK_V4) {
            st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                            "--weights fp8: DeepSeek-V4 checkpoints are written in BF16 only (the "
                            "engine reads V4 in BF16)");
            goto done;
        }
        if (mistral || d.expert_layout != MC_EXPERTS_SEPARATE || d.family == MC_FAM_LLAMA4) {
            st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                            "--weights fp8 is written only in DeepSeek's block format for "
                            "per-expert checkpoints (DeepSeek, Qwen3-MoE); %s is not",
                            d.model_type);
            goto done;
        }
        json_object_set_new(root, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:[i,i]}", "quant_method", "fp8", "fmt",
                                      "e4m3", "activation_scheme", "dynamic", "weight_block_size",
                                      FP8_BLOCK, FP8_BLOCK));
    }
    dumped = json_dumps(root, JSON_INDENT(1) | JSON_SORT_KEYS);
    if (!dumped) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto done;
    }
    st = mistral ? mc_model_desc_parse_mistral(dumped, strlen(dumped), o->config_path, &d, err)
                 : mc_model_desc_parse(dumped, strlen(dumped), o->config_path, &d, err);
    if (st != MC_OK || (st = mc_model_tensor_specs(&d, &specs, &nspec, err)) != MC_OK)
        goto done;
    /* tensors in write order; an FP8 weight is followed by its scales */
    items = calloc(2 * nspec, sizeof *items);
    scales = calloc(nspec, sizeof *scales);
    if (!items || !scales) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto done;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < nspec; i++) {
        const mc_tensor_spec *s = &specs[i];
        item *it = &items[nitems++];
        it->spec = (int)i;
        it->scale_of = -1;
        it->w.name = s->name;
        it->w.ndim = s->ndim;
        memcpy(it->w.shape, s->shape, sizeof s->shape);
        it->w.dtype = s->role == MC_T_V4_TID2EID ? MC_DT_I64
                      : o->fp8 && s->linear        ? MC_DT_F8_E4M3
                                                   : MC_DT_BF16;
        it->bytes = item_bytes(&it->w);
        total += it->bytes;
        if (it->w.dtype == MC_DT_F8_E4M3) {
            item *sc = &items[nitems++];
            char *nm = malloc(strlen(s->name) + 16);
            if (!nm) {
                st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
                goto done;
            }
            sprintf(nm, "%s_scale_inv", s->name);
            sc->w.name = nm;
            sc->spec = -1;
            sc->scale_of = (int)i;
            sc->w.dtype = MC_DT_F32;
            sc->w.ndim = 2;
            sc->w.shape[0] = (s->shape[0] + FP8_BLOCK - 1) / FP8_BLOCK;
            sc->w.shape[1] = (s->shape[1] + FP8_BLOCK - 1) / FP8_BLOCK;
            sc->bytes = item_bytes(&sc->w);
            total += sc->bytes;
        }
    }
    /* files: consecutive items up to max_file_bytes (an FP8 weight stays with its scales) */
    uint64_t cap = o->max_file_bytes ? o->max_file_bytes : (4ull << 30);
    int nfiles = 0;
    int *file_of = calloc(nitems, sizeof *file_of);
    if (!file_of) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0, acc = 0; i < nitems; i++) {
        if (acc > 0 && items[i].scale_of < 0 && acc + items[i].bytes > cap) {
            nfiles++;
            acc = 0;
        }
        file_of[i] = nfiles;
        acc += items[i].bytes;
    }
    nfiles++;
    /* never into the folder holding the config (it would be overwritten), never a non-folder */
    if ((st = mc_out_check_dir(o->out_dir, o->config_path, "config", false, err)) != MC_OK) {
        free(file_of);
        goto done;
    }
    if (mkdir(o->out_dir, 0777) != 0 && errno != EEXIST) {
        st = mc_err_set(err, MC_ERR_IO, "%s: cannot create: %s", o->out_dir, strerror(errno));
        free(file_of);
        goto done;
    }
    snprintf(path, sizeof path, "%s/%s", o->out_dir, mistral ? "params.json" : "config.json");
    json_t *cfg_out = json_loads(dumped, 0, NULL);
    st = write_json(path, cfg_out, err);
    json_decref(cfg_out);
    if (st != MC_OK) {
        free(file_of);
        goto done;
    }
    mc_progress pg;
    mc_progress_start(&pg, "synth", total, o->progress);
    weight_map = json_object();
    for (int f = 0, i0 = 0; f < nfiles && st == MC_OK; f++) {
        int i1 = i0;
        while (i1 < (int)nitems && file_of[i1] == f)
            i1++;
        char fname[128];
        snprintf(fname, sizeof fname, "%s-%05d-of-%05d.safetensors",
                 mistral ? "consolidated" : "model", f + 1, nfiles);
        snprintf(path, sizeof path, "%s/%s", o->out_dir, fname);
        st_write_tensor *ws = calloc((size_t)(i1 - i0), sizeof *ws);
        if (!ws) {
            st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
            break;
        }
        for (int i = i0; i < i1; i++) {
            ws[i - i0] = items[i].w;
            json_object_set_new(weight_map, items[i].w.name, json_string(fname));
        }
        st_writer *w = NULL;
        st = st_writer_open(path, ws, (size_t)(i1 - i0), &w, err);
        free(ws);
        for (int i = i0; i < i1 && st == MC_OK; i++) {
            if (items[i].scale_of >= 0) {
                st = st_writer_write(w, scales[items[i].scale_of], items[i].bytes, err);
                mc_progress_add(&pg, items[i].bytes);
            } else {
                st = emit(w, &specs[items[i].spec], &items[i].w, &d, o->seed,
                          &scales[items[i].spec], &pg, err);
            }
        }
        if (w)
            st = st == MC_OK ? st_writer_close(w, err) : (st_writer_abort(w), st);
        i0 = i1;
    }
    free(file_of);
    if (st == MC_OK) {
        mc_progress_finish(&pg);
        json_t *idx = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)total,
                                "weight_map", weight_map);
        snprintf(path, sizeof path, "%s/%s", o->out_dir,
                 mistral ? "consolidated.safetensors.index.json" : "model.safetensors.index.json");
        st = write_json(path, idx, err);
        json_decref(idx);
    }
done:
    for (size_t i = 0; items && i < nitems; i++)
        if (items[i].scale_of >= 0)
            free((char *)items[i].w.name);
    for (size_t i = 0; scales && i < nspec; i++)
        free(scales[i]);
    free(scales);
    free(items);
    free(specs);
    json_decref(weight_map);
    json_decref(root);
    free(dumped);
    free(text);
    return st;
}
