/* model_gguf.c - GGUF files as a model source (model_gguf.h): detection,
 * opening (the description through model_gguf_config.c), and roles -> GGUF
 * tensors -> st_tensor views, with deepseek2's kv_b join. */
#include "model_gguf_internal.h"

#include "dtype.h"

#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool mc_gguf_is_model(const char *path)
{
    struct stat sb;
    if (!path || stat(path, &sb) != 0)
        return false;
    if (S_ISDIR(sb.st_mode)) {
        char p[4200];
        snprintf(p, sizeof p, "%s/config.json", path);
        if (access(p, F_OK) == 0)
            return false;
        snprintf(p, sizeof p, "%s/params.json", path);
        if (access(p, F_OK) == 0)
            return false;
        DIR *d = opendir(path);
        bool any = false;
        struct dirent *e;
        while (d && !any && (e = readdir(d)) != NULL) {
            size_t n = strlen(e->d_name);
            any = n > 5 && !strcmp(e->d_name + n - 5, ".gguf");
        }
        if (d)
            closedir(d);
        return any;
    }
    if (!S_ISREG(sb.st_mode))
        return false;
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".gguf"))
        return true;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return false;
    char magic[4];
    ssize_t r = read(fd, magic, sizeof magic);
    close(fd);
    return r == 4 && !memcmp(magic, "GGUF", 4);
}

/* llama4: what a config.json cannot say for a GGUF file. The experts are
 * stacked per expert (not Hugging Face's fused gate_up_proj), and llama3
 * RoPE scaling is the rope_freqs tensor: F32, one divisor per rotated pair,
 * each finite and positive (absent: no scaling). */
static mc_status llama4_finish(mc_gguf_model *m, mc_model_desc *d, mc_err *err)
{
    d->expert_layout = MC_EXPERTS_SEPARATE;
    const mc_gguf_tensor *t = mc_gguf_find_tensor(m->g, "rope_freqs.weight");
    if (!t)
        return MC_OK;
    int half = d->rope.dim / 2;
    if (t->type != MC_GGML_F32 || t->n_dims != 1 || t->ne[0] != (uint64_t)half)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: rope_freqs.weight must be F32 [%d] (rotated dimensions / 2); it "
                          "is %s with %llu elements",
                          m->path, half, mc_ggml_type_name(t->type) ? mc_ggml_type_name(t->type) : "?",
                          (unsigned long long)t->n_elems);
    if (half > MC_ROPE_MAX_FACTORS)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: rope_freqs.weight has %d factors; at most %d are supported", m->path,
                          half, MC_ROPE_MAX_FACTORS);
    for (int i = 0; i < half; i++) {
        float f;
        memcpy(&f, (const unsigned char *)t->data + 4 * (size_t)i, sizeof f);
        if (!isfinite(f) || f <= 0)
            return mc_err_set(err, MC_ERR_CONFIG,
                              "%s: rope_freqs.weight[%d] is %g; a frequency divisor must be "
                              "finite and positive",
                              m->path, i, (double)f);
        d->rope.freq_factors[i] = f;
    }
    d->rope.scaling = MC_ROPE_SCALE_FACTORS;
    return MC_OK;
}

mc_status mc_gguf_model_open(const char *path, mc_gguf_model **out, mc_model_desc *d,
                             mc_err *err)
{
    *out = NULL;
    json_t *cfg = NULL;
    char *text = NULL;
    mc_gguf_model *m = calloc(1, sizeof *m);
    if (!m)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    snprintf(m->path, sizeof m->path, "%s", path);
    mc_status st = mc_gguf_open(path, &m->g, err);
    if (st != MC_OK)
        goto fail;
    if (!(cfg = json_object())) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((st = mc_gguf_config(m, cfg, err)) != MC_OK)
        goto fail;
    if (!(text = json_dumps(cfg, JSON_COMPACT))) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* the same parser as a checkpoint's config.json */
    if ((st = mc_model_desc_parse(text, strlen(text), path, d, err)) != MC_OK)
        goto fail;
    if (!strcmp(m->arch, "llama4") && (st = llama4_finish(m, d, err)) != MC_OK)
        goto fail;
    free(text);
    json_decref(cfg);
    *out = m;
    return MC_OK;
fail:
    free(text);
    json_decref(cfg);
    mc_gguf_model_close(m);
    return st;
}

/* ---- tensors ---- */

static mc_status dtype_of(const mc_gguf_model *m, const mc_gguf_tensor *t, mc_dtype *dt,
                          mc_err *err)
{
    switch (t->type) {
    case MC_GGML_F32: *dt = MC_DT_F32; return MC_OK;
    case MC_GGML_F16: *dt = MC_DT_F16; return MC_OK;
    case MC_GGML_BF16: *dt = MC_DT_BF16; return MC_OK;
    case MC_GGML_Q8_0: *dt = MC_DT_Q8_0; return MC_OK;
    case MC_GGML_Q4_K: *dt = MC_DT_Q4_K; return MC_OK;
    case MC_GGML_Q6_K: *dt = MC_DT_Q6_K; return MC_OK;
    case MC_GGML_Q5_K: *dt = MC_DT_Q5_K; return MC_OK;
    default: break;
    }
    const char *tn = mc_ggml_type_name(t->type);
    return mc_err_set(err, MC_ERR_UNSUPPORTED,
                      "%s: tensor '%s' has ggml type %s, which the loader does not read (F32, "
                      "F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K)",
                      m->path, t->name, tn ? tn : "?");
}

/* One stored row of n elements of GGUF type `type` as f32 (types dtype_of
 * accepts). */
static void row_f32(uint32_t type, const void *src, int64_t n, float *dst)
{
    const unsigned char *p = src;
    switch (type) {
    case MC_GGML_F32: memcpy(dst, p, (size_t)n * sizeof *dst); break;
    case MC_GGML_F16:
    case MC_GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = type == MC_GGML_F16 ? mc_f16_to_f32(h) : mc_bf16_to_f32(h);
        }
        break;
    case MC_GGML_Q8_0: mc_dequantize_row(MC_DT_Q8_0, p, dst, n); break;
    case MC_GGML_Q4_K: mc_dequantize_row(MC_DT_Q4_K, p, dst, n); break;
    case MC_GGML_Q5_K: mc_dequantize_row_q5_k(p, dst, n); break;
    case MC_GGML_Q6_K: mc_dequantize_row_q6_k(p, dst, n); break;
    default: memset(dst, 0, (size_t)n * sizeof *dst); break; /* refused by dtype_of first */
    }
}

static size_t row_bytes_of(const mc_gguf_tensor *t)
{
    return (size_t)(t->ne[0] / mc_ggml_block_elems(t->type)) * mc_ggml_block_bytes(t->type);
}

/* deepseek2 from newer converters: kv_b_proj [nh*(nope+v), kv_lora] stored
 * as attn_k_b (ne [nope, kv_lora, nh]: each head's k part transposed) and
 * attn_v_b (ne [kv_lora, v, nh]). Joined back into one matrix: in their own
 * element type when both are F32, F16 or BF16 (exact), else in F32 (exact:
 * the dequantized values; 4 bytes a weight). */
static mc_status kv_b_join(mc_gguf_model *m, int layer, gg_view **out, mc_err *err)
{
    char kn[64], vn[64];
    snprintf(kn, sizeof kn, "blk.%d.attn_k_b.weight", layer);
    snprintf(vn, sizeof vn, "blk.%d.attn_v_b.weight", layer);
    const mc_gguf_tensor *k = mc_gguf_find_tensor(m->g, kn), *v = mc_gguf_find_tensor(m->g, vn);
    if (!k || !v)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: GGUF has neither 'blk.%d.attn_kv_b.weight' nor '%s' (needed by the "
                          "deepseek2 metadata: role kv_b)",
                          m->path, layer, k ? vn : kn);
    int nh = m->n_heads, nope = m->qk_nope, vd = m->v_dim, r = m->kv_lora;
    if (k->n_dims != 3 || k->ne[0] != (uint64_t)nope || k->ne[1] != (uint64_t)r ||
        k->ne[2] != (uint64_t)nh)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: tensor '%s' has dims [%llu, %llu, %llu] (GGUF "
                          "order); the metadata implies [%d, %d, %d] (nope, kv_lora, heads)",
                          m->path, kn, (unsigned long long)k->ne[0], (unsigned long long)k->ne[1],
                          (unsigned long long)k->ne[2], nope, r, nh);
    if (v->n_dims != 3 || v->ne[0] != (uint64_t)r || v->ne[1] != (uint64_t)vd ||
        v->ne[2] != (uint64_t)nh)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: tensor '%s' has dims [%llu, %llu, %llu] (GGUF "
                          "order); the metadata implies [%d, %d, %d] (kv_lora, v, heads)",
                          m->path, vn, (unsigned long long)v->ne[0], (unsigned long long)v->ne[1],
                          (unsigned long long)v->ne[2], r, vd, nh);
    mc_dtype dt = MC_DT_F32;
    mc_status st;
    if ((st = dtype_of(m, k, &dt, err)) != MC_OK || (st = dtype_of(m, v, &dt, err)) != MC_OK)
        return st;
    bool keep = k->type == v->type && (k->type == MC_GGML_F32 || k->type == MC_GGML_F16 ||
                                       k->type == MC_GGML_BF16);
    dt = !keep ? MC_DT_F32 : k->type == MC_GGML_F16 ? MC_DT_F16 : k->type == MC_GGML_BF16 ? MC_DT_BF16
                                                                                          : MC_DT_F32;
    size_t es = mc_dtype_size(dt), rows = (size_t)nh * (size_t)(nope + vd);
    gg_view *g = calloc(1, sizeof *g + 64);
    unsigned char *dst = malloc(rows * (size_t)r * es);  /* [nh*(nope+v), kv_lora] */
    float *tmp = malloc((size_t)(nope > r ? nope : r) * sizeof *tmp); /* one source row */
    if (!g || !dst || !tmp) {
        free(g);
        free(dst);
        free(tmp);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory joining %s and %s", kn, vn);
    }
    size_t kr = row_bytes_of(k), vr = row_bytes_of(v);
    for (int h = 0; h < nh; h++) {
        size_t base = (size_t)h * (size_t)(nope + vd); /* first output row of head h */
        for (int c = 0; c < r; c++) { /* k_b[h][c][i] -> row base + i, column c */
            const unsigned char *src = (const unsigned char *)k->data + ((size_t)h * r + c) * kr;
            if (!keep)
                row_f32(k->type, src, nope, tmp);
            for (int i = 0; i < nope; i++) {
                unsigned char *o = dst + ((base + (size_t)i) * (size_t)r + (size_t)c) * es;
                if (keep)
                    memcpy(o, src + (size_t)i * es, es);
                else
                    memcpy(o, &tmp[i], es);
            }
        }
        for (int j = 0; j < vd; j++) { /* v_b[h][j] is row base + nope + j as it is */
            const unsigned char *src = (const unsigned char *)v->data + ((size_t)h * vd + j) * vr;
            unsigned char *o = dst + (base + (size_t)nope + (size_t)j) * (size_t)r * es;
            if (keep) {
                memcpy(o, src, (size_t)r * es);
            } else {
                row_f32(v->type, src, r, tmp);
                memcpy(o, tmp, (size_t)r * es);
            }
        }
    }
    free(tmp);
    snprintf(g->name, 64, "blk.%d.attn_k_b+attn_v_b", layer);
    g->conv = dst;
    g->t.name = g->name;
    g->t.dtype = dt;
    g->t.ndim = 2;
    g->t.shape[0] = (int64_t)rows;
    g->t.shape[1] = r;
    g->t.numel = (uint64_t)rows * (uint64_t)r;
    g->t.nbytes = g->t.numel * es;
    g->t.data = dst;
    g->t.path = k->path;
    *out = g;
    return MC_OK;
}

mc_status mc_gguf_model_find(mc_gguf_model *m, mc_tensor_role role, int layer, int expert,
                             const st_tensor **out, mc_err *err)
{
    *out = NULL;
    if ((unsigned)role >= MC_T_ROLE_COUNT || !m->names[role])
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: GGUF family %s has no tensor for role %s",
                          m->path, m->arch, mc_tensor_role_str(role));
    char name[256];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(name, sizeof name, m->names[role], layer);
#pragma GCC diagnostic pop
    const mc_gguf_tensor *t = mc_gguf_find_tensor(m->g, name);
    if (!t && role == MC_T_KV_B && m->kv_b_split) {
        gg_view *j = NULL;
        mc_status js = kv_b_join(m, layer, &j, err);
        if (js != MC_OK)
            return js;
        j->next = m->views;
        m->views = j;
        *out = &j->t;
        return MC_OK;
    }
    if (!t)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: GGUF has no tensor '%s' (needed by the %s "
                          "metadata: role %s)", m->path, name, m->arch, mc_tensor_role_str(role));
    mc_dtype dt = MC_DT_F32;
    mc_status st = dtype_of(m, t, &dt, err);
    if (st != MC_OK)
        return st;
    bool stacked = (m->stacked >> role) & 1u;
    int64_t cols = (int64_t)t->ne[0], rows = 1;
    size_t off = 0;
    gg_view *v = calloc(1, sizeof *v + strlen(name) + 32);
    if (!v)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    st_tensor *s = &v->t;
    if (stacked) {
        if (t->n_dims != 3 || t->ne[2] != (uint64_t)m->n_experts) {
            free(v);
            return mc_err_set(err, MC_ERR_CONFIG,
                              "%s: stacked expert tensor '%s' has %d dims [%llu, %llu, %llu] "
                              "(GGUF order); %s.expert_count says [in, out, %d]",
                              m->path, name, t->n_dims, (unsigned long long)t->ne[0],
                              (unsigned long long)t->ne[1], (unsigned long long)t->ne[2], m->arch,
                              m->n_experts);
        }
        if (expert < 0 || expert >= m->n_experts) {
            free(v);
            return mc_err_set(err, MC_ERR_INTERNAL, "%s: expert %d out of range", name, expert);
        }
        rows = (int64_t)t->ne[1];
        s->ndim = 2;
        s->shape[0] = rows;
        s->shape[1] = cols;
        snprintf(v->name, strlen(name) + 32, "%s [expert %d]", name, expert);
    } else {
        s->ndim = t->n_dims;
        for (int i = 0; i < t->n_dims; i++)
            s->shape[i] = (int64_t)t->ne[t->n_dims - 1 - i];
        rows = (int64_t)(t->n_elems / t->ne[0]);
        snprintf(v->name, strlen(name) + 32, "%s", name);
    }
    /* bytes of one stored row, as the file holds it */
    size_t in_row = (size_t)(cols / mc_ggml_block_elems(t->type)) * mc_ggml_block_bytes(t->type);
    if (stacked)
        off = (size_t)expert * (size_t)rows * in_row;
    const unsigned char *src = (const unsigned char *)t->data + off;
    s->name = v->name;
    s->dtype = dt;
    s->numel = (uint64_t)rows * (uint64_t)cols;
    s->path = t->path;
    s->data = src;
    s->nbytes = (uint64_t)rows * in_row;
    v->next = m->views;
    m->views = v;
    *out = s;
    return MC_OK;
}

void mc_gguf_model_close(mc_gguf_model *m)
{
    if (!m)
        return;
    for (gg_view *v = m->views, *n; v; v = n) {
        n = v->next;
        free(v->conv);
        free(v);
    }
    mc_gguf_close(m->g);
    free(m);
}
