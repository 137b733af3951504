/* nonfinite.c - finding NaN / infinity in activations and the weights behind
 * them (see nonfinite.h). */
#include "nonfinite.h"

#include "comm.h"
#include "model_gguf.h"
#include "model_tensors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static bool f32_bad(uint32_t u) { return (u & 0x7f800000u) == 0x7f800000u; }

static const char *f32_kind(uint32_t u)
{
    return (u & 0x007fffffu) ? "NaN" : (u >> 31) ? "-Inf" : "+Inf";
}

int64_t mc_first_nonfinite(const float *x, size_t n)
{
    /* |x| as bits is at least 0x7f800000 exactly for Inf and NaN, so adding
     * 0x00800000 sets bit 31 exactly for them: OR-ed over fixed-width steps
     * (which the compiler turns into vector code); the element is located
     * only when there is one. */
    uint32_t lane[8] = {0}, acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint32_t u[8];
        memcpy(u, &x[i], sizeof u);
        for (int j = 0; j < 8; j++)
            lane[j] |= (u[j] & 0x7fffffffu) + 0x00800000u;
    }
    for (; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        acc |= (u & 0x7fffffffu) + 0x00800000u;
    }
    for (int j = 0; j < 8; j++)
        acc |= lane[j];
    if (!(acc & 0x80000000u))
        return -1;
    for (i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        if (f32_bad(u))
            return (int64_t)i;
    }
    return -1;
}

static const char *float_kind(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return f32_kind(u);
}

bool mc_tensor_nonfinite(const st_tensor *t, uint64_t *elem, const char **what)
{
    const uint8_t *p = t->data;
    if (mc_dtype_is_block(t->dtype)) {
        int64_t cols = t->ndim ? t->shape[t->ndim - 1] : 0;
        if (cols <= 0)
            return false;
        size_t rb = mc_dtype_row_bytes(t->dtype, cols);
        float *row = malloc((size_t)cols * sizeof *row);
        bool hit = false;
        for (uint64_t r = 0; row && !hit && r < t->numel / (uint64_t)cols; r++) {
            mc_dequantize_row(t->dtype, p + r * rb, row, cols);
            int64_t i = mc_first_nonfinite(row, (size_t)cols);
            if (i >= 0) {
                *elem = r * (uint64_t)cols + (uint64_t)i;
                *what = float_kind(row[i]);
                hit = true;
            }
        }
        free(row);
        return hit;
    }
    for (uint64_t i = 0; i < t->numel; i++) {
        switch (t->dtype) {
        case MC_DT_F32: {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            if (!f32_bad(u))
                continue;
            *what = f32_kind(u);
            break;
        }
        case MC_DT_BF16:
        case MC_DT_F16: {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            bool bf = t->dtype == MC_DT_BF16;
            uint16_t e = bf ? 0x7f80u : 0x7c00u;
            if ((h & e) != e)
                continue;
            *what = (h & (uint16_t)~(e | 0x8000u)) ? "NaN" : (h >> 15) ? "-Inf" : "+Inf";
            break;
        }
        case MC_DT_F8_E4M3: /* no infinities; S.1111.111 is NaN */
            if ((p[i] & 0x7f) != 0x7f)
                continue;
            *what = "NaN";
            break;
        default:
            return false; /* integers are always finite */
        }
        *elem = i;
        return true;
    }
    return false;
}

typedef struct {
    const st_tensor *t;
    uint64_t elem;
    const char *what;
} nf_hit;

/* Scans tensor `name` and its FP8 block scales, when the checkpoint has them. */
static bool scan_name(const mc_model *m, const char *name, nf_hit *h)
{
    if (!m->ckpt) /* a GGUF model: no safetensors checkpoint to name from */
        return false;
    char sname[600];
    const st_tensor *t = st_checkpoint_find(m->ckpt, name);
    if (t && mc_tensor_nonfinite(t, &h->elem, &h->what)) {
        h->t = t;
        return true;
    }
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    t = st_checkpoint_find(m->ckpt, sname);
    if (t && mc_tensor_nonfinite(t, &h->elem, &h->what)) {
        h->t = t;
        return true;
    }
    return false;
}

static bool scan_role(const mc_model *m, mc_tensor_role role, int layer, int expert, nf_hit *h)
{
    if (!m->ckpt && m->gguf) {
        /* a GGUF model: the loader's view of the role's tensor (roles the
         * family does not have are refused by the lookup and skipped) */
        const st_tensor *t = NULL;
        mc_err e = {0};
        if (mc_gguf_model_find(m->gguf, role, layer, expert, &t, &e) != MC_OK || !t)
            return false;
        if (mc_tensor_nonfinite(t, &h->elem, &h->what)) {
            h->t = t;
            return true;
        }
        return false;
    }
    char name[512];
    return mc_tensor_name(&m->d, role, layer, expert, name, sizeof name) == 0 &&
           scan_name(m, name, h);
}

/* The tensors of the family's naming table that feed `where`, in the order
 * the block uses them. */
static bool scan_roles(const mc_model *m, mc_nf_where where, int layer, nf_hit *h)
{
    static const mc_tensor_role attn[] = {
        MC_T_ATTN_NORM, MC_T_Q_A, MC_T_Q_A_NORM, MC_T_Q_B, MC_T_Q, MC_T_KV_A, MC_T_KV_A_NORM,
        MC_T_KV_B, MC_T_K, MC_T_V, MC_T_Q_NORM, MC_T_K_NORM, MC_T_O, MC_T_IDX_WQ_B, MC_T_IDX_WK,
        MC_T_IDX_K_NORM, MC_T_IDX_K_NORM_BIAS, MC_T_IDX_WEIGHTS};
    static const mc_tensor_role ffn[] = {
        MC_T_FFN_NORM, MC_T_DENSE_GATE, MC_T_DENSE_UP, MC_T_DENSE_DOWN, MC_T_ROUTER,
        MC_T_ROUTER_BIAS, MC_T_SHARED_GATE, MC_T_SHARED_UP, MC_T_SHARED_DOWN,
        MC_T_EXPERTS_GATE_UP, MC_T_EXPERTS_DOWN};
    switch (where) {
    case MC_NF_INPUT: return scan_role(m, MC_T_EMBED, 0, 0, h);
    case MC_NF_HEAD:
        return scan_role(m, MC_T_FINAL_NORM, 0, 0, h) ||
               scan_role(m, m->d.tie_embeddings ? MC_T_EMBED : MC_T_LM_HEAD, 0, 0, h);
    case MC_NF_ATTN:
        for (size_t i = 0; i < sizeof attn / sizeof *attn; i++)
            if (scan_role(m, attn[i], layer, 0, h))
                return true;
        return false;
    case MC_NF_FFN:
    case MC_NF_EXPERTS:
        for (size_t i = 0; i < sizeof ffn / sizeof *ffn; i++)
            if (scan_role(m, ffn[i], layer, 0, h))
                return true;
        for (int e = 0; e < m->d.n_experts; e++)
            for (int r = MC_T_EXPERT_GATE; r <= MC_T_EXPERT_DOWN; r++)
                if (scan_role(m, (mc_tensor_role)r, layer, e, h))
                    return true;
        return false;
    }
    return false;
}

/* Whether `name` has the segment "layers.<layer>." (at its start or after a '.'). */
static bool in_layer(const char *name, int layer)
{
    char seg[32];
    snprintf(seg, sizeof seg, "layers.%d.", layer);
    for (const char *s = strstr(name, seg); s; s = strstr(s + 1, seg))
        if (s == name || s[-1] == '.')
            return true;
    return false;
}

static bool in_any_layer(const char *name)
{
    for (const char *s = strstr(name, "layers."); s; s = strstr(s + 1, "layers."))
        if ((s == name || s[-1] == '.') && s[7] >= '0' && s[7] <= '9')
            return true;
    return false;
}

/* Fallback for names outside the table (DeepSeek-V4, extra tensors): every
 * tensor of the layer, or for the input the embedding-like tensors and for
 * the logits every tensor outside the layers. */
static bool scan_fallback(const mc_model *m, mc_nf_where where, int layer, nf_hit *h)
{
    size_t n = m->ckpt ? st_checkpoint_count(m->ckpt) : 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < n; i++) {
            const st_tensor *t = st_checkpoint_tensor(m->ckpt, i);
            bool want;
            if (where == MC_NF_ATTN || where == MC_NF_FFN || where == MC_NF_EXPERTS)
                want = pass == 0 && in_layer(t->name, layer);
            else if (where == MC_NF_INPUT)
                want = pass == 0 && strstr(t->name, "embed") && !in_any_layer(t->name);
            else /* head: non-embedding tensors first, then the (maybe tied) embedding */
                want = !in_any_layer(t->name) && (pass == 1) == (strstr(t->name, "embed") != NULL);
            if (want && mc_tensor_nonfinite(t, &h->elem, &h->what)) {
                h->t = t;
                return true;
            }
        }
    return false;
}

mc_status mc_nf_check(const mc_model *m, mc_nf_where where, int layer, const float *x, int rows,
                      size_t width, int pos0, const int64_t *tokens, mc_err *err)
{
    if (rows <= 0 || width == 0)
        return MC_OK;
    int64_t i = mc_first_nonfinite(x, (size_t)rows * width);
    if (i < 0)
        return MC_OK;
    int r = (int)((size_t)i / width);
    const char *kind = float_kind(x[i]);
    char at[256];
    const char *whose;
    switch (where) {
    case MC_NF_INPUT:
        if (tokens)
            snprintf(at, sizeof at,
                     "input: non-finite embedding (%s) of token id %lld at position %d", kind,
                     (long long)tokens[r], pos0 + r);
        else
            snprintf(at, sizeof at, "input: non-finite embedding (%s) at position %d", kind,
                     pos0 + r);
        whose = "the embedding";
        break;
    case MC_NF_ATTN:
        snprintf(at, sizeof at,
                 "layer %d: non-finite activations (%s) after the attention block at position %d",
                 layer, kind, pos0 + r);
        whose = "the attention block";
        break;
    case MC_NF_FFN: {
        bool moe = m->d.family == MC_FAM_DEEPSEEK_V4 || m->d.layer_moe[layer];
        snprintf(at, sizeof at,
                 "layer %d: non-finite activations (%s) after the %s block at position %d", layer,
                 kind, moe ? "MoE" : "FFN", pos0 + r);
        whose = moe ? "the MoE block" : "the FFN block";
        break;
    }
    case MC_NF_EXPERTS:
        snprintf(at, sizeof at,
                 "layer %d: non-finite output (%s) of the routed experts on this rank", layer,
                 kind);
        whose = "the MoE block";
        break;
    default:
        snprintf(at, sizeof at, "logits: non-finite value (%s) at position %d", kind, pos0 + r);
        whose = "the final norm and LM head";
        break;
    }
    nf_hit h = {0};
    if (scan_roles(m, where, layer, &h) || scan_fallback(m, where, layer, &h))
        return mc_err_set(err, MC_ERR_FORMAT, "%s; tensor %s holds %s at element %llu (%s)", at,
                          h.t->name, h.what, (unsigned long long)h.elem, h.t->path);
    bool several = m->world && mc_comm_size(m->world) > 1;
    if (several) {
        /* The weight at fault may be in another rank's files (a shard set):
         * give that rank, which sees the same values, time to name it
         * before this error aborts the job. Only on the way out. */
        struct timespec ts = {2, 0};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        return mc_err_set(err, MC_ERR_INTERNAL,
                          "%s; the weights of %s in this rank's files are all finite (another "
                          "rank's are not, or the activations overflowed)",
                          at, whose);
    }
    return mc_err_set(err, MC_ERR_INTERNAL,
                      "%s; the weights of %s are all finite (the activations overflowed?)", at,
                      whose);
}

mc_status mc_nf_blame_mat(const mc_model *m, const void *data, const char *why, mc_err *err)
{
    const unsigned char *p = data;
    size_t n = m->ckpt ? st_checkpoint_count(m->ckpt) : 0;
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_checkpoint_tensor(m->ckpt, i);
        const unsigned char *b = t->data;
        nf_hit h = {t, 0, ""};
        if (p < b || p >= b + t->nbytes)
            continue;
        if (mc_tensor_nonfinite(t, &h.elem, &h.what))
            return mc_err_set(err, MC_ERR_FORMAT,
                              "tensor %s holds %s at element %llu (%s): it cannot be quantized",
                              t->name, h.what, (unsigned long long)h.elem, t->path);
        return mc_err_set(err, MC_ERR_FORMAT, "tensor %s (%s): %s", t->name, t->path, why);
    }
    return mc_err_set(err, MC_ERR_FORMAT, "%s", why);
}
