/* tensors_deepseek_v4.c - see tensors_deepseek_v4.h. Shapes, per layer l
 * (H hidden, k hc_mult, nh heads, hd head_dim, qr q_lora_rank, G o_groups,
 * olr o_lora_rank, E experts, I moe_intermediate_size):
 *
 *   attn_norm.weight, ffn_norm.weight        [H]
 *   hc_{attn,ffn}_fn                         [(2+k)*k, k*H]
 *   hc_{attn,ffn}_base                       [(2+k)*k]
 *   hc_{attn,ffn}_scale                      [3]
 *   attn.wq_a.weight [qr, H]  attn.q_norm.weight [qr]  attn.wq_b.weight [nh*hd, qr]
 *   attn.wkv.weight [hd, H]   attn.norm.weight [hd]    attn.attn_sink [nh]
 *   attn.wo_a.weight [G*olr, nh*hd/G]  attn.wo_b.weight [H, G*olr]
 *   HCA: attn.compressor.{wkv,wgate}.weight [hd, H], .ape [rate_hca, hd], .norm.weight [hd]
 *   CSA: attn.compressor.{wkv,wgate}.weight [2*hd, H], .ape [rate_csa, 2*hd], .norm.weight [hd]
 *        attn.indexer.compressor.* the same with index_head_dim (ihd) for hd
 *        attn.indexer.wq_b.weight [inh*ihd, qr]  attn.indexer.weights_proj.weight [inh, H]
 *   ffn.gate.weight [E, H]; hash layers ffn.gate.tid2eid [vocab, top-k] (I64),
 *   other layers ffn.gate.bias [E]
 *   ffn.shared_experts.w{1,3}.weight [I, H], w2 [H, I]; ffn.experts.<e>.w{1,2,3} the same
 *
 * and once: model.embed_tokens.weight [V, H], head.weight [V, H] (unless
 * tied), model.norm.weight [H], model.hc_head.hc_fn [k, k*H], hc_base [k],
 * hc_scale [1].
 */
#include "tensors_deepseek_v4.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    mc_tensor_spec *v;
    size_t n, cap;
    int bad; /* 1 out of memory, 2 name too long */
} list;

#if defined(__GNUC__)
__attribute__((format(printf, 7, 8)))
#endif
static void add(list *s, mc_tensor_role role, int layer, int expert, bool linear,
                const int64_t *shape, const char *fmt, ...)
{
    if (s->bad)
        return;
    mc_tensor_spec *t = mc_tensor_spec_push(&s->v, s->n, &s->cap);
    if (!t) {
        s->bad = 1;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof t->name) {
        s->bad = 2;
        return;
    }
    t->role = role;
    t->layer = layer;
    t->expert = expert;
    t->linear = linear;
    t->ndim = shape[1] > 0 ? 2 : 1;
    t->shape[0] = shape[0];
    t->shape[1] = shape[1] > 0 ? shape[1] : 0;
    s->n++;
}

/* [r, c] (c = 0: a vector of r) */
#define SH(r, c) ((const int64_t[2]){(r), (c)})
#define LP "model.layers.%d."

static void add_comp(list *s, mc_tensor_role role, int l, const char *pre, int64_t rate, int64_t cd,
                     int overlap, int64_t H)
{
    int64_t w = (1 + overlap) * cd;
    add(s, role, l, -1, true, SH(w, H), LP "%s.wkv.weight", l, pre);
    add(s, role, l, -1, true, SH(w, H), LP "%s.wgate.weight", l, pre);
    add(s, role, l, -1, false, SH(rate, w), LP "%s.ape", l, pre);
    add(s, role, l, -1, false, SH(cd, 0), LP "%s.norm.weight", l, pre);
}

/* gate (w1), up (w3), down (w2) of the shared expert (e < 0) or routed expert e */
static void add_ffn(list *s, int l, int e, const char *pre, int64_t I, int64_t H)
{
    bool r = e >= 0;
    add(s, r ? MC_T_EXPERT_GATE : MC_T_SHARED_GATE, l, e, true, SH(I, H), "%s.w1.weight", pre);
    add(s, r ? MC_T_EXPERT_UP : MC_T_SHARED_UP, l, e, true, SH(I, H), "%s.w3.weight", pre);
    add(s, r ? MC_T_EXPERT_DOWN : MC_T_SHARED_DOWN, l, e, true, SH(H, I), "%s.w2.weight", pre);
}

mc_status mc_v4_tensor_specs(const mc_model_desc *d, mc_tensor_spec **out, size_t *n, mc_err *err)
{
    *out = NULL;
    *n = 0;
    const mc_v4_desc *v = &d->v4;
    if (d->family != MC_FAM_DEEPSEEK_V4 || v->hc_mult < 1)
        return mc_err_set(err, MC_ERR_INTERNAL,
                          "mc_v4_tensor_specs: not a DeepSeek-V4 description");
    list s = {0};
    int64_t H = d->hidden, V = d->vocab, k = v->hc_mult, nh = d->n_heads, hd = d->head_dim;
    int64_t qr = d->q_lora_rank, G = v->o_groups, olr = v->o_lora_rank, E = d->n_experts;
    int64_t mix = (2 + k) * k, ihd = v->index_head_dim, inh = v->index_n_heads;
    add(&s, MC_T_EMBED, -1, -1, false, SH(V, H), "model.embed_tokens.weight");
    if (!d->tie_embeddings)
        add(&s, MC_T_LM_HEAD, -1, -1, false, SH(V, H), "head.weight");
    add(&s, MC_T_FINAL_NORM, -1, -1, false, SH(H, 0), "model.norm.weight");
    add(&s, MC_T_V4_HC, -1, -1, false, SH(k, k * H), "model.hc_head.hc_fn");
    add(&s, MC_T_V4_HC, -1, -1, false, SH(k, 0), "model.hc_head.hc_base");
    add(&s, MC_T_V4_HC, -1, -1, false, SH(1, 0), "model.hc_head.hc_scale");
    for (int l = 0; l < d->n_layers; l++) {
        add(&s, MC_T_ATTN_NORM, l, -1, false, SH(H, 0), LP "attn_norm.weight", l);
        add(&s, MC_T_FFN_NORM, l, -1, false, SH(H, 0), LP "ffn_norm.weight", l);
        static const char *const site[2] = {"attn", "ffn"};
        for (int i = 0; i < 2; i++) {
            add(&s, MC_T_V4_HC, l, -1, false, SH(mix, k * H), LP "hc_%s_fn", l, site[i]);
            add(&s, MC_T_V4_HC, l, -1, false, SH(mix, 0), LP "hc_%s_base", l, site[i]);
            add(&s, MC_T_V4_HC, l, -1, false, SH(3, 0), LP "hc_%s_scale", l, site[i]);
        }
        add(&s, MC_T_Q_A, l, -1, true, SH(qr, H), LP "attn.wq_a.weight", l);
        add(&s, MC_T_Q_A_NORM, l, -1, false, SH(qr, 0), LP "attn.q_norm.weight", l);
        add(&s, MC_T_Q_B, l, -1, true, SH(nh * hd, qr), LP "attn.wq_b.weight", l);
        add(&s, MC_T_V4_WKV, l, -1, true, SH(hd, H), LP "attn.wkv.weight", l);
        add(&s, MC_T_V4_KV_NORM, l, -1, false, SH(hd, 0), LP "attn.norm.weight", l);
        add(&s, MC_T_V4_WO_A, l, -1, true, SH(G * olr, nh * hd / G), LP "attn.wo_a.weight", l);
        add(&s, MC_T_V4_WO_B, l, -1, true, SH(H, G * olr), LP "attn.wo_b.weight", l);
        add(&s, MC_T_V4_SINK, l, -1, false, SH(nh, 0), LP "attn.attn_sink", l);
        if (v->layer_attn[l] == MC_V4_ATTN_HCA)
            add_comp(&s, MC_T_V4_COMP, l, "attn.compressor", v->hca_rate, hd, 0, H);
        if (v->layer_attn[l] == MC_V4_ATTN_CSA) {
            add_comp(&s, MC_T_V4_COMP, l, "attn.compressor", v->csa_rate, hd, 1, H);
            add_comp(&s, MC_T_V4_IDX_COMP, l, "attn.indexer.compressor", v->csa_rate, ihd, 1, H);
            add(&s, MC_T_IDX_WQ_B, l, -1, true, SH(inh * ihd, qr), LP "attn.indexer.wq_b.weight",
                l);
            add(&s, MC_T_IDX_WEIGHTS, l, -1, false, SH(inh, H),
                LP "attn.indexer.weights_proj.weight", l);
        }
        add(&s, MC_T_ROUTER, l, -1, false, SH(E, H), LP "ffn.gate.weight", l);
        if (v->layer_hash[l])
            add(&s, MC_T_V4_TID2EID, l, -1, false, SH(V, d->n_experts_per_tok),
                LP "ffn.gate.tid2eid", l);
        else
            add(&s, MC_T_ROUTER_BIAS, l, -1, false, SH(E, 0), LP "ffn.gate.bias", l);
        char pre[128];
        snprintf(pre, sizeof pre, "model.layers.%d.ffn.shared_experts", l);
        add_ffn(&s, l, -1, pre, d->shared_inter, H);
        for (int e = 0; e < E; e++) {
            snprintf(pre, sizeof pre, "model.layers.%d.ffn.experts.%d", l, e);
            add_ffn(&s, l, e, pre, d->moe_inter, H);
        }
    }
    if (s.bad) {
        free(s.v);
        return s.bad == 1 ? mc_err_set(err, MC_ERR_NOMEM, "out of memory")
                          : mc_err_set(err, MC_ERR_INTERNAL, "tensor name too long");
    }
    *out = s.v;
    *n = s.n;
    return MC_OK;
}
