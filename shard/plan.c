/* plan.c - parameter counts, per-rank memory, verdict and speed estimate.
 * Every weight matrix of a layer is listed once (layer_mats) with its
 * category and tensor role; how parallelism splits it comes from the split
 * table (split.h). Counts, bytes and the estimate all derive from that one
 * list. Formulas: docs/plan.md. */
#include "plan.h"

#include "model_tensors.h"
#include "split.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const wfmt_names[MC_WFMT_COUNT] = {"bf16", "fp8", "q8_0", "q4_k"};
static const char *const wcat_names[MC_CAT_COUNT] = {
    "embedding_head", "attention", "dense", "shared_experts", "routed_experts", "norms_routers",
    "scales"};

const char *mc_wfmt_name(mc_wfmt f) { return (unsigned)f < MC_WFMT_COUNT ? wfmt_names[f] : "?"; }
const char *mc_wcat_name(mc_wcat c) { return (unsigned)c < MC_CAT_COUNT ? wcat_names[c] : "?"; }

int mc_wfmt_from_name(const char *s, mc_wfmt *out)
{
    for (int i = 0; i < MC_WFMT_COUNT; i++)
        if (!strcmp(s, wfmt_names[i])) {
            *out = (mc_wfmt)i;
            return 0;
        }
    return -1;
}

double mc_mat_bytes(int64_t rows, int64_t cols, mc_wfmt f, double *scale_bytes)
{
    double n = (double)rows * (double)cols;
    *scale_bytes = 0;
    switch (f) {
    case MC_WFMT_FP8: /* 1 byte per weight + one f32 scale per 128x128 block */
        *scale_bytes = 4.0 * (double)((rows + 127) / 128) * (double)((cols + 127) / 128);
        return n + *scale_bytes;
    case MC_WFMT_Q4_K: /* 256-weight super-blocks of 144 bytes (16 of them scales/mins) */
        if (cols % 256 == 0) {
            *scale_bytes = n / 256 * 16;
            return n / 256 * 144;
        }
        /* rows that do not split into super-blocks use Q8_0 */
        __attribute__((fallthrough));
    case MC_WFMT_Q8_0: /* 32-weight blocks of 34 bytes (an f16 scale + 32 int8) */
        if (cols % 32 == 0) {
            *scale_bytes = n / 32 * 2;
            return n / 32 * 34;
        }
        return 2 * n;
    default:
        return 2 * n;
    }
}

typedef struct {
    int64_t rows, cols;
    mc_wcat cat;
    mc_tensor_role role; /* its split rule: mc_split_rule_of */
    bool quant;  /* stored in the chosen weight format (else BF16); see quantized() */
    bool expert; /* one routed expert's matrix (there are n_experts of it) */
    bool fp8_only; /* the V3.2 indexer's projections: FP8 as DeepSeek ships them, else BF16 */
    int kind;      /* WK_PLAIN, or a V4 parameter class counted apart */
} wmat;

enum { WK_PLAIN = 0, WK_HC, WK_HASH }; /* WK_HASH: 8-byte integers, never quantized */

/* Whether matrix m takes format f: projections, FFNs and experts take every
 * format; the indexer's projections only FP8 (Q8_0/Q4_K leave them, as the
 * load-time quantizer does). The LM head is handled by the caller. */
static bool quantized(const wmat *m, mc_wfmt f)
{
    return m->quant && f != MC_WFMT_BF16 && (!m->fp8_only || f == MC_WFMT_FP8);
}

#define MAX_MATS 48

/* DeepSeek-V4's layer l (the shapes of tensors_deepseek_v4.c). */
static int v4_layer_mats(const mc_model_desc *d, int l, wmat *m)
{
    const mc_v4_desc *v = &d->v4;
    int n = 0;
    int64_t H = d->hidden, k = v->hc_mult, mix = (2 + k) * k, nh = d->n_heads, hd = d->head_dim;
    int64_t qr = d->q_lora_rank, G = v->o_groups, olr = v->o_lora_rank;
#define ADD(r, c, cat_, role_, q, e) (m[n++] = (wmat){(r), (c), (cat_), (role_), (q), (e), false, WK_PLAIN})
    ADD(1, H, MC_CAT_OTHER, MC_T_ATTN_NORM, false, false);
    ADD(1, H, MC_CAT_OTHER, MC_T_FFN_NORM, false, false);
    for (int i = 0; i < 2; i++) { /* attention and FFN sites: fn, base, scale */
        ADD(mix, k * H, MC_CAT_OTHER, MC_T_V4_HC, false, false);
        m[n - 1].kind = WK_HC;
        ADD(1, mix + 3, MC_CAT_OTHER, MC_T_V4_HC, false, false);
        m[n - 1].kind = WK_HC;
    }
    ADD(qr, H, MC_CAT_ATTN, MC_T_Q_A, true, false);
    ADD(1, qr, MC_CAT_ATTN, MC_T_Q_A_NORM, false, false);
    ADD(nh * hd, qr, MC_CAT_ATTN, MC_T_Q_B, true, false);
    ADD(hd, H, MC_CAT_ATTN, MC_T_V4_WKV, true, false);
    ADD(1, hd + nh, MC_CAT_ATTN, MC_T_V4_KV_NORM, false, false); /* + the sink logits */
    ADD(G * olr, nh * hd / G, MC_CAT_ATTN, MC_T_V4_WO_A, true, false);
    ADD(H, G * olr, MC_CAT_ATTN, MC_T_V4_WO_B, true, false);
    if (v->layer_attn[l] != MC_V4_ATTN_SLIDING) {
        bool csa = v->layer_attn[l] == MC_V4_ATTN_CSA;
        int64_t rate = csa ? v->csa_rate : v->hca_rate, w = (1 + csa) * hd;
        ADD(2 * w, H, MC_CAT_ATTN, MC_T_V4_COMP, true, false); /* wkv, wgate */
        ADD(1, rate * w + hd, MC_CAT_ATTN, MC_T_V4_COMP, false, false); /* ape, norm */
        if (csa) {
            int64_t ihd = v->index_head_dim, iw = 2 * ihd, inh = v->index_n_heads;
            ADD(2 * iw, H, MC_CAT_ATTN, MC_T_V4_IDX_COMP, true, false);
            ADD(1, rate * iw + ihd, MC_CAT_ATTN, MC_T_V4_IDX_COMP, false, false);
            ADD(inh * ihd, qr, MC_CAT_ATTN, MC_T_IDX_WQ_B, true, false);
            ADD(inh, H, MC_CAT_ATTN, MC_T_IDX_WEIGHTS, false, false);
        }
    }
    ADD(d->n_experts, H, MC_CAT_OTHER, MC_T_ROUTER, false, false);
    if (v->layer_hash[l]) {
        ADD(d->vocab, d->n_experts_per_tok, MC_CAT_OTHER, MC_T_V4_TID2EID, false, false);
        m[n - 1].kind = WK_HASH;
    } else {
        ADD(1, d->n_experts, MC_CAT_OTHER, MC_T_ROUTER_BIAS, false, false);
    }
    int64_t I = d->shared_inter;
    ADD(I, H, MC_CAT_SHARED, MC_T_SHARED_GATE, true, false);
    ADD(I, H, MC_CAT_SHARED, MC_T_SHARED_UP, true, false);
    ADD(H, I, MC_CAT_SHARED, MC_T_SHARED_DOWN, true, false);
    I = d->moe_inter;
    ADD(I, H, MC_CAT_ROUTED, MC_T_EXPERT_GATE, true, true);
    ADD(I, H, MC_CAT_ROUTED, MC_T_EXPERT_UP, true, true);
    ADD(H, I, MC_CAT_ROUTED, MC_T_EXPERT_DOWN, true, true);
#undef ADD
    return n;
}

/* The matrices of layer l (vectors as [1, n]). */
static int layer_mats(const mc_model_desc *d, int l, wmat *m)
{
    if (d->family == MC_FAM_DEEPSEEK_V4)
        return v4_layer_mats(d, l, m);
    int n = 0;
    int64_t H = d->hidden, nh = d->n_heads;
#define ADD(r, c, cat_, role_, q, e) (m[n++] = (wmat){(r), (c), (cat_), (role_), (q), (e), false, WK_PLAIN})
    ADD(1, H, MC_CAT_OTHER, MC_T_ATTN_NORM, false, false); /* input norm */
    ADD(1, H, MC_CAT_OTHER, MC_T_FFN_NORM, false, false); /* post-attention norm */
    if (d->attn == MC_ATTN_MLA) {
        int64_t qk = d->qk_nope_dim + d->qk_rope_dim;
        if (d->q_lora_rank > 0) {
            ADD(d->q_lora_rank, H, MC_CAT_ATTN, MC_T_Q_A, true, false);
            ADD(1, d->q_lora_rank, MC_CAT_ATTN, MC_T_Q_A_NORM, false, false);
            ADD(nh * qk, d->q_lora_rank, MC_CAT_ATTN, MC_T_Q_B, true, false);
        } else {
            ADD(nh * qk, H, MC_CAT_ATTN, MC_T_Q, true, false);
        }
        ADD(d->kv_lora_rank + d->qk_rope_dim, H, MC_CAT_ATTN, MC_T_KV_A, true, false);
        ADD(1, d->kv_lora_rank, MC_CAT_ATTN, MC_T_KV_A_NORM, false, false);
        ADD(nh * (d->qk_nope_dim + d->v_head_dim), d->kv_lora_rank, MC_CAT_ATTN, MC_T_KV_B, true,
            false);
        ADD(H, nh * d->v_head_dim, MC_CAT_ATTN, MC_T_O, true, false);
        if (d->index_topk > 0) {
            int64_t ih = d->index_n_heads, id = d->index_head_dim;
            ADD(ih * id, d->q_lora_rank, MC_CAT_ATTN, MC_T_IDX_WQ_B, true, false);
            m[n - 1].fp8_only = true;
            ADD(id, H, MC_CAT_ATTN, MC_T_IDX_WK, true, false);
            m[n - 1].fp8_only = true;
            ADD(1, 2 * id, MC_CAT_ATTN, MC_T_IDX_K_NORM, false, false); /* + its bias */
            ADD(ih, H, MC_CAT_ATTN, MC_T_IDX_WEIGHTS, false, false);
        }
    } else {
        int64_t hd = d->head_dim;
        ADD(nh * hd, H, MC_CAT_ATTN, MC_T_Q, true, false);
        ADD(d->n_kv_heads * hd, H, MC_CAT_ATTN, MC_T_K, true, false);
        ADD(d->n_kv_heads * hd, H, MC_CAT_ATTN, MC_T_V, true, false);
        ADD(H, nh * hd, MC_CAT_ATTN, MC_T_O, true, false);
        if (d->qk_norm)
            ADD(1, 2 * hd, MC_CAT_ATTN, MC_T_Q_NORM, false, false); /* + k_norm */
    }
    if (!d->layer_moe[l]) {
        int64_t I = d->dense_inter;
        ADD(I, H, MC_CAT_DENSE, MC_T_DENSE_GATE, true, false);
        ADD(I, H, MC_CAT_DENSE, MC_T_DENSE_UP, true, false);
        ADD(H, I, MC_CAT_DENSE, MC_T_DENSE_DOWN, true, false);
        return n;
    }
    ADD(d->n_experts, H, MC_CAT_OTHER, MC_T_ROUTER, false, false); /* router */
    if (d->has_score_bias)
        ADD(1, d->n_experts, MC_CAT_OTHER, MC_T_ROUTER_BIAS, false, false);
    if (d->n_shared_experts > 0) {
        int64_t I = d->shared_inter;
        ADD(I, H, MC_CAT_SHARED, MC_T_SHARED_GATE, true, false);
        ADD(I, H, MC_CAT_SHARED, MC_T_SHARED_UP, true, false);
        ADD(H, I, MC_CAT_SHARED, MC_T_SHARED_DOWN, true, false);
    }
    int64_t I = d->moe_inter;
    ADD(I, H, MC_CAT_ROUTED, MC_T_EXPERT_GATE, true, true);
    ADD(I, H, MC_CAT_ROUTED, MC_T_EXPERT_UP, true, true);
    ADD(H, I, MC_CAT_ROUTED, MC_T_EXPERT_DOWN, true, true);
#undef ADD
    return n;
}

void mc_model_params(const mc_model_desc *d, mc_param_counts *p)
{
    memset(p, 0, sizeof *p);
    double VH = (double)d->vocab * d->hidden;
    p->embed = VH;
    p->head = d->tie_embeddings ? 0 : VH;
    p->norms = d->hidden; /* final norm */
    double active = (d->tie_embeddings ? VH : p->head) + d->hidden;
    if (d->family == MC_FAM_DEEPSEEK_V4) { /* the head's hyper-connection: fn [k, k*H], base, scale */
        double k = d->v4.hc_mult;
        p->hc = k * k * d->hidden + k + 1;
        active += p->hc;
    }
    wmat m[MAX_MATS];
    for (int l = 0; l < d->n_layers; l++) {
        int n = layer_mats(d, l, m);
        double expert = 0;
        for (int i = 0; i < n; i++) {
            double c = (double)m[i].rows * m[i].cols;
            if (m[i].kind == WK_HASH) { /* a lookup, like the embedding */
                p->hash += c;
                continue;
            }
            if (m[i].kind == WK_HC) {
                p->hc += c;
                active += c;
                continue;
            }
            if (m[i].expert) {
                expert += c;
                continue;
            }
            active += c;
            switch (m[i].cat) {
            case MC_CAT_ATTN: p->attn += c; break;
            case MC_CAT_DENSE: p->dense += c; break;
            case MC_CAT_SHARED: p->shared += c; break;
            case MC_CAT_OTHER:
                if (m[i].rows == 1 && m[i].cols == d->hidden)
                    p->norms += c;
                else
                    p->router += c;
                break;
            default: break;
            }
        }
        if (expert > 0) {
            p->per_expert = expert;
            p->routed += expert * d->n_experts;
            active += expert * d->n_experts_per_tok;
        }
    }
    p->total = p->embed + p->head + p->attn + p->dense + p->shared + p->routed + p->router +
               p->norms + p->hc + p->hash;
    p->active = active;
}

/* Bytes rank tr of tp holds of matrix m (routed experts: one expert). */
static double rank_mat_bytes(const mc_model_desc *d, const wmat *m, int tp, int tr, mc_wfmt f,
                             double *scales)
{
    int64_t r = m->rows, c = m->cols, b, e;
    int dim = mc_split_tp_slice(d, m->role, tp, tr, &b, &e);
    if (dim == 0)
        r = e - b;
    else if (dim == 1)
        c = e - b;
    if (m->kind == WK_HASH) {
        *scales = 0;
        return 8.0 * (double)r * (double)c;
    }
    if (!quantized(m, f)) {
        *scales = 0;
        return 2.0 * (double)r * (double)c;
    }
    return mc_mat_bytes(r, c, f, scales);
}

/* One compressor of `rate` tokens per entry, entries cd wide: the entries
 * and the pending windows (2*rate rows of projection and gate, (1+overlap)*cd
 * wide), as the worker keeps them. */
static double v4_comp_elems(int64_t len, int rate, int64_t cd, int overlap)
{
    return (double)(len / rate) * (double)cd + 2.0 * 2.0 * rate * (double)((1 + overlap) * cd);
}

double mc_v4_kv_bytes_per_seq(const mc_model_desc *d, int64_t len, int elem)
{
    const mc_v4_desc *v = &d->v4;
    int64_t hd = d->head_dim, win = len < v->sliding_window ? len : v->sliding_window;
    double e = 0;
    for (int l = 0; l < d->n_layers; l++) {
        e += (double)win * (double)hd;
        if (v->layer_attn[l] == MC_V4_ATTN_HCA)
            e += v4_comp_elems(len, v->hca_rate, hd, 0);
        else if (v->layer_attn[l] == MC_V4_ATTN_CSA)
            e += v4_comp_elems(len, v->csa_rate, hd, 1) +
                 v4_comp_elems(len, v->csa_rate, v->index_head_dim, 1);
    }
    return e * elem;
}

static double kv_bytes_per_token_layer(const mc_model_desc *d, int tp, int tr, int elem)
{
    if (d->attn == MC_ATTN_MLA) /* the latent + rope key, the same on every TP rank */
        return (double)(d->kv_lora_rank + d->qk_rope_dim + (d->index_topk > 0 ? d->index_head_dim : 0)) *
               elem;
    int h0, heads; /* fewer KV heads than ranks: copies */
    mc_split_kv_heads(d->n_kv_heads, tp, tr, &h0, &heads);
    return 2.0 * (double)heads * d->head_dim * elem;
}

void mc_plan_free(mc_plan *p)
{
    if (!p)
        return;
    free(p->stage_first_layer);
    free(p->ranks);
    free(p);
}

static double gib(double b) { return b / (1024.0 * 1024.0 * 1024.0); }

/* Time for a ring all-reduce of `bytes` over n ranks on link l. */
static double allreduce_s(double bytes, int n, const mc_link *l)
{
    if (n <= 1)
        return 0;
    return 2.0 * (n - 1) / n * bytes / (l->bandwidth_gbs * 1e9) + 2.0 * (n - 1) * l->latency_us * 1e-6;
}

/* The estimate for batch B per replica on cluster c (the plan's cluster
 * with its measured figures in place, mc_cluster_effective). */
static void estimate_at(const mc_plan *p, const mc_cluster *c, int B, mc_perf *e)
{
    const mc_model_desc *d = &p->d;
    int tp = c->tp, ep = c->ep;
    /* which link a group uses: the inter-node one once it spans nodes */
    const mc_link *tp_link = tp > c->devices_per_node ? &c->inter : &c->intra;
    const mc_link *ep_link = ep > c->devices_per_node ? &c->inter : &c->intra;
    const mc_link *pp_link = c->nodes > 1 && c->pp > 1 ? &c->inter : &c->intra;
    e->batch_per_replica = B;
    snprintf(e->ep_link, sizeof e->ep_link, "%s", ep > 1 && d->n_experts > 0 ? ep_link->kind : "");
    snprintf(e->tp_link, sizeof e->tp_link, "%s", tp > 1 ? tp_link->kind : "");
    e->context = p->o.max_model_len / 2;
    double bw = c->device.memory_bandwidth_gbs * 1e9;
    double peak = c->device.bf16_tflops * 1e12;
    if (p->o.weights == MC_WFMT_FP8 && c->device.fp8_tflops > 0)
        peak = c->device.fp8_tflops * 1e12;
    /* f32 activations on the wire: the data plane sends the expert rows, the
     * all-reduce payload and the stage-to-stage activations as f32
     * (worker/step_block.c, worker/parallel.c) */
    double act_bytes = 4.0;
    double H = d->hidden;
    double step = 0, t_comp = 0, t_mem = 0, t_comm = 0, max_bytes = 0;
    for (int s = 0; s < c->pp; s++) {
        /* the slowest rank of the stage sets its time */
        double stage_t = 0, stage_c = 0, stage_m = 0, stage_n = 0, stage_bytes = 0;
        for (int r = s * p->ranks_per_stage; r < (s + 1) * p->ranks_per_stage; r++) {
            const mc_rank_plan *rp = &p->ranks[r];
            /* routed experts with their quantization scales: only the hit ones are read */
            double routed_total = rp->bytes[MC_CAT_ROUTED] + rp->routed_scale_bytes;
            double local_e = rp->expert_end - rp->expert_begin;
            double moe_layers = 0;
            for (int l = rp->layer_begin; l < rp->layer_end; l++)
                moe_layers += d->layer_moe[l];
            /* tokens reaching this EP group: B per DP replica, ranks_per_stage/ep replicas' worth */
            double T = (double)B * ((double)p->ranks_per_stage / tp) / ((double)p->ranks_per_stage / ep);
            if (T < 1)
                T = 1;
            double frac = d->n_experts > 0 ? 1.0 - pow(1.0 - (double)d->n_experts_per_tok / d->n_experts, T) : 0;
            double routed_read = routed_total * frac;
            double kv_read = (double)B * e->context * rp->kv_bytes_per_token;
            double bytes = rp->weight_bytes - rp->embed_bytes - routed_total + routed_read + kv_read;
            double flops = 0;
            /* dense part: 2 flops per weight per token (weights read = params touched) */
            double scale_bytes_per_param = p->o.weights == MC_WFMT_BF16 ? 2.0 : 1.0;
            flops += 2.0 * B * (rp->weight_bytes - routed_total - rp->bytes[MC_CAT_EMBED_HEAD] * (s == 0 ? 1 : 0)) / scale_bytes_per_param;
            flops += 2.0 * T * d->n_experts_per_tok * (local_e / (d->n_experts > 0 ? d->n_experts : 1)) * moe_layers * 3.0 * H * d->moe_inter;
            /* attention over the context */
            int nh_local = d->n_heads / tp;
            double per_head = d->attn == MC_ATTN_MLA ? 2.0 * (2.0 * d->kv_lora_rank + d->qk_rope_dim) : 4.0 * d->head_dim;
            flops += (double)B * e->context * nh_local * per_head * (rp->layer_end - rp->layer_begin);
            double t_m = bytes / bw, t_c = flops / peak;
            double comm = 0;
            int nl = rp->layer_end - rp->layer_begin;
            double ar_bytes = (double)B * H * act_bytes;
            double t_ar = 2 * allreduce_s(ar_bytes, tp, tp_link);
            comm += nl * t_ar;
            if (t_ar > e->allreduce_s_per_layer)
                e->allreduce_s_per_layer = t_ar;
            if (ep > 1 && d->n_experts > 0) {
                /* each TP rank routes its 1/tp of the replica's tokens (the busiest
                 * ceil(B/tp): the exchange waits for it); a pair goes to
                 * another rank with probability (ep-1)/ep, over the inter-node link
                 * when that rank is on another node ((ep-g)/ep, g = the group's ranks
                 * per node); dispatch and combine are the same size; three exchanges
                 * (expert counts, rows, outputs; Llama 4 also the router weights) */
                double pairs = ceil((double)B / tp) * d->n_experts_per_tok;
                double a2a = 2.0 * pairs * H * act_bytes * (ep - 1) / ep;
                int g = ep < c->devices_per_node ? ep : c->devices_per_node;
                double per_peer = 2.0 * pairs * H * act_bytes / ep; /* to each other rank */
                double t_a2a = per_peer * (ep - 1) / (c->intra.bandwidth_gbs * 1e9);
                if (ep > c->devices_per_node) {
                    double t_in = per_peer * (g - 1) / (c->intra.bandwidth_gbs * 1e9);
                    double t_out = per_peer * (ep - g) / (c->inter.bandwidth_gbs * 1e9);
                    t_a2a = t_in > t_out ? t_in : t_out; /* the two links work at once */
                }
                int exchanges = d->router == MC_ROUTER_LLAMA4 ? 4 : 3;
                t_a2a += exchanges * ep_link->latency_us * 1e-6;
                comm += moe_layers * t_a2a;
                e->a2a_bytes_per_layer = a2a;
                if (moe_layers > 0 && t_a2a > e->a2a_s_per_layer)
                    e->a2a_s_per_layer = t_a2a;
            }
            e->allreduce_bytes_per_layer = tp > 1 ? 2 * ar_bytes : 0;
            if (s + 1 < c->pp)
                comm += ar_bytes / (pp_link->bandwidth_gbs * 1e9) + pp_link->latency_us * 1e-6;
            double t = (t_m > t_c ? t_m : t_c) + comm;
            if (t > stage_t) {
                stage_t = t;
                stage_c = t_c;
                stage_m = t_m;
                stage_n = comm;
            }
            if (bytes > stage_bytes)
                stage_bytes = bytes;
        }
        step += stage_t;
        t_comp += stage_c;
        t_mem += stage_m;
        t_comm += stage_n;
        if (stage_bytes > max_bytes)
            max_bytes = stage_bytes;
    }
    e->decode_step_s = step;
    e->decode_compute_s = t_comp;
    e->decode_memory_s = t_mem;
    e->decode_comm_s = t_comm;
    e->bytes_per_step = max_bytes;
    /* memory-bound stages: splitting the batch into pp micro-batches does not change the
     * bytes each stage reads per token, so throughput is batch / step either way */
    e->decode_tok_s = step > 0 ? (double)B * c->dp / step : 0;
    /* prefill: compute bound over all devices, 2 flops per active parameter per token plus attention */
    double attn_flops = d->attn == MC_ATTN_MLA
                            ? 2.0 * d->n_heads * (d->qk_nope_dim + d->qk_rope_dim + d->v_head_dim) * (p->o.max_model_len / 2.0)
                            : 4.0 * d->n_heads * d->head_dim * (p->o.max_model_len / 2.0);
    double fl = 2.0 * p->params.active + attn_flops * d->n_layers;
    e->prefill_tok_s = peak * p->world / fl;
    e->memory_bandwidth_gbs = c->device.memory_bandwidth_gbs;
    e->peak_tflops = peak / 1e12;
}

static void estimate(mc_plan *p)
{
    mc_cluster eff;
    mc_cluster_effective(&p->c, &eff);
    int64_t seqs = p->ranks[p->worst_rank].seqs;
    int B = (int)(seqs > 0 ? (seqs < p->o.max_num_seqs ? seqs : p->o.max_num_seqs) : 1);
    estimate_at(p, &eff, B, &p->perf);
    mc_perf one; /* one sequence alone: what a single user sees */
    memset(&one, 0, sizeof one);
    estimate_at(p, &eff, 1, &one);
    p->perf.single_step_s = one.decode_step_s;
    p->perf.single_seq_tok_s = one.decode_step_s > 0 ? 1.0 / one.decode_step_s : 0;
}

static mc_status layout_check(const mc_model_desc *d, const mc_cluster *c, const mc_plan_opts *o,
                              mc_err *err)
{
    if (d->family == MC_FAM_DEEPSEEK_V4 && (c->tp > 1 || c->ep > 1 || c->pp > 1))
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "DeepSeek-V4 runs on one rank per replica for now (tp 1, ep 1, pp 1; dp "
                          "copies); this cluster asks tp %d, ep %d, pp %d",
                          c->tp, c->ep, c->pp);
    if (d->family == MC_FAM_DEEPSEEK_V4 && o->weights != MC_WFMT_BF16)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "DeepSeek-V4 runs with BF16 weights only (asked: --weights %s)",
                          mc_wfmt_name(o->weights));
    if (c->tp > 1 && d->n_heads % c->tp != 0)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "tensor parallelism %d does not divide the %d attention heads", c->tp,
                          d->n_heads);
    int kv0, nkv;
    if (c->tp > 1 && d->attn == MC_ATTN_GQA &&
        !mc_split_kv_heads(d->n_kv_heads, c->tp, 0, &kv0, &nkv))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "tensor parallelism %d neither divides nor is a multiple of the %d "
                          "key/value heads (each rank must hold whole KV heads or one copy)",
                          c->tp, d->n_kv_heads);
    if (c->pp > d->n_layers)
        return mc_err_set(err, MC_ERR_CONFIG, "%d pipeline stages for %d layers", c->pp,
                          d->n_layers);
    if (d->n_experts > 0 && c->ep > d->n_experts)
        return mc_err_set(err, MC_ERR_CONFIG, "expert parallelism %d exceeds the %d experts",
                          c->ep, d->n_experts);
    return MC_OK;
}

static mc_status plan_build(const mc_model_desc *d, const mc_cluster *c, const mc_plan_opts *o,
                            bool advise, mc_plan **out, mc_err *err);

/* Would the model fit with these changes? (no advice, no error output) */
static bool fits_with(const mc_plan *p, const mc_cluster *c, const mc_plan_opts *o)
{
    mc_plan *q = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (mc_cluster_check(c, "", &e) != MC_OK || plan_build(&p->d, c, o, false, &q, &e) != MC_OK)
        return false;
    bool f = q->fits;
    mc_plan_free(q);
    return f;
}

static void advise(mc_plan *p)
{
    const mc_rank_plan *w = &p->ranks[p->worst_rank];
    char *v = p->verdict;
    size_t n = sizeof p->verdict, o = 0;
    double g = 1073741824.0;
    if (p->fits) {
        o += (size_t)snprintf(v + o, n - o,
                              "FITS: the fullest rank (%d) holds %.1f GiB of weights + %.1f GiB "
                              "workspace, leaving %.1f GiB for %lld KV tokens = %lld sequences of %d "
                              "tokens",
                              w->rank, w->weight_bytes / g, p->c.workspace_gib,
                              w->kv_budget_bytes / g, (long long)w->kv_tokens,
                              (long long)(w->kv_tokens / p->o.max_model_len), p->o.max_model_len);
        if (w->kv_tokens / p->o.max_model_len > p->o.max_num_seqs)
            o += (size_t)snprintf(v + o, n - o, " (capped at --max-num-seqs %d)", p->o.max_num_seqs);
        snprintf(v + o, n - o, ".");
        return;
    }
    if (w->kv_budget_bytes <= 0)
        o += (size_t)snprintf(v + o, n - o,
                              "DOES NOT FIT: rank %d needs %.1f GiB of weights + %.1f GiB workspace "
                              "but has %.1f GiB.",
                              w->rank, w->weight_bytes / g, p->c.workspace_gib, p->c.device.memory_gib);
    else
        o += (size_t)snprintf(v + o, n - o,
                              "DOES NOT FIT: rank %d has %.2f GiB left for the KV cache, %lld tokens, "
                              "less than one sequence of %d.",
                              w->rank, w->kv_budget_bytes / g, (long long)w->kv_tokens,
                              p->o.max_model_len);
    o += (size_t)snprintf(v + o, n - o, " Would fit:");
    int found = 0;
    static const mc_wfmt order[] = {MC_WFMT_FP8, MC_WFMT_Q8_0, MC_WFMT_Q4_K};
    for (int i = 0; i < 3 && o < n; i++) {
        mc_plan_opts oo = p->o;
        oo.weights = order[i];
        if (order[i] != p->o.weights && fits_with(p, &p->c, &oo)) {
            o += (size_t)snprintf(v + o, n - o, " --weights %s;", mc_wfmt_name(order[i]));
            found++;
        }
    }
    if (w->kv_budget_bytes > 0 && w->kv_bytes_per_token > 0 && w->kv_tokens >= 1 && o < n) {
        o += (size_t)snprintf(v + o, n - o, " --max-model-len %lld or less;", (long long)w->kv_tokens);
        found++;
    }
    for (int nodes = p->c.nodes + 1; nodes <= p->c.nodes * 16 && nodes <= 1024 && o < n; nodes++) {
        mc_cluster c2 = p->c;
        c2.nodes = nodes;
        c2.tp = p->c.tp;
        c2.dp = p->c.dp;
        if ((nodes * c2.devices_per_node) % (c2.tp * c2.dp) != 0)
            continue;
        c2.pp = nodes * c2.devices_per_node / (c2.tp * c2.dp);
        if (c2.pp > p->d.n_layers)
            break;
        if (fits_with(p, &c2, &p->o)) {
            o += (size_t)snprintf(v + o, n - o, " %d nodes of %d devices (tp %d, pp %d);", nodes,
                                  c2.devices_per_node, c2.tp, c2.pp);
            found++;
            break;
        }
    }
    if (!found && o < n)
        snprintf(v + o, n - o, " nothing simple found (try a cluster with more memory).");
}

mc_status mc_plan_build(const mc_model_desc *d, const mc_cluster *c, const mc_plan_opts *o,
                        mc_plan **out, mc_err *err)
{
    return plan_build(d, c, o, true, out, err);
}

static mc_status plan_build(const mc_model_desc *d, const mc_cluster *c, const mc_plan_opts *o,
                            bool want_advice, mc_plan **out, mc_err *err)
{
    *out = NULL;
    mc_status st = layout_check(d, c, o, err);
    if (st != MC_OK)
        return st;
    if (o->max_model_len < 1 || o->max_num_seqs < 1 || o->kv_bytes_per_elem < 1)
        return mc_err_set(err, MC_ERR_ARG, "max-model-len and max-num-seqs must be >= 1");
    mc_plan *p = calloc(1, sizeof *p);
    if (!p)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    p->d = *d;
    p->c = *c;
    p->o = *o;
    mc_model_params(d, &p->params);
    p->world = mc_cluster_world(c);
    p->ranks_per_stage = c->tp * c->dp;
    p->stage_first_layer = calloc((size_t)c->pp + 1, sizeof *p->stage_first_layer);
    p->ranks = calloc((size_t)p->world, sizeof *p->ranks);
    if (!p->stage_first_layer || !p->ranks) {
        mc_plan_free(p);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    }
    /* stages: contiguous layers, sizes differ by at most one (earlier stages get the extra) */
    for (int s = 0; s < c->pp; s++) {
        int64_t b, e;
        mc_split_range(d->n_layers, c->pp, s, &b, &e);
        p->stage_first_layer[s] = (int)b;
        p->stage_first_layer[s + 1] = (int)e;
    }
    double mem = c->device.memory_gib * 1073741824.0, ws = c->workspace_gib * 1073741824.0;
    wmat m[MAX_MATS];
    p->fits = true;
    for (int r = 0; r < p->world; r++) {
        mc_rank_plan *rp = &p->ranks[r];
        rp->rank = r;
        rp->stage = r / p->ranks_per_stage;
        int local = r % p->ranks_per_stage;
        rp->dp_rank = local / c->tp;
        rp->tp_rank = local % c->tp;
        rp->ep_rank = local % c->ep;
        rp->layer_begin = p->stage_first_layer[rp->stage];
        rp->layer_end = p->stage_first_layer[rp->stage + 1];
        int64_t e0, e1, v0, v1;
        mc_split_range(d->n_experts, c->ep, rp->ep_rank, &e0, &e1);
        rp->expert_begin = (int)e0;
        rp->expert_end = (int)e1;
        double sc;
        mc_split_tp_slice(d, MC_T_EMBED, c->tp, rp->tp_rank, &v0, &v1);
        int64_t vrows = v1 - v0;
        double vh = 2.0 * (double)vrows * d->hidden;
        if (rp->stage == 0) {
            rp->bytes[MC_CAT_EMBED_HEAD] += vh;
            /* a lookup reads one row per token, unless the tied table is also the head here */
            if (!(d->tie_embeddings && rp->stage == c->pp - 1))
                rp->embed_bytes = vh;
        }
        if (rp->stage == c->pp - 1 && (!d->tie_embeddings || rp->stage != 0)) {
            /* the LM head takes Q8_0 / Q4_K (not FP8: DeepSeek ships it in BF16) */
            double hb = vh, hs = 0;
            if (o->weights == MC_WFMT_Q8_0 || o->weights == MC_WFMT_Q4_K)
                hb = mc_mat_bytes(vrows, d->hidden, o->weights, &hs);
            rp->bytes[MC_CAT_EMBED_HEAD] += hb - hs + 2.0 * d->hidden;
            rp->bytes[MC_CAT_SCALES] += hs;
        }
        if (rp->stage == c->pp - 1 && d->family == MC_FAM_DEEPSEEK_V4) /* the head's hc */
            rp->bytes[MC_CAT_OTHER] += 2.0 * ((double)d->v4.hc_mult * d->v4.hc_mult * d->hidden +
                                              d->v4.hc_mult + 1);
        for (int l = rp->layer_begin; l < rp->layer_end; l++) {
            int n = layer_mats(d, l, m);
            for (int i = 0; i < n; i++) {
                double b = rank_mat_bytes(d, &m[i], c->tp, rp->tp_rank, o->weights, &sc);
                double mult = m[i].expert ? (double)(rp->expert_end - rp->expert_begin) : 1.0;
                rp->bytes[m[i].cat] += (b - sc) * mult;
                rp->bytes[MC_CAT_SCALES] += sc * mult;
                if (m[i].expert)
                    rp->routed_scale_bytes += sc * mult;
            }
            rp->kv_bytes_per_token +=
                kv_bytes_per_token_layer(d, c->tp, rp->tp_rank, o->kv_bytes_per_elem);
        }
        rp->kv_bytes_per_seq = rp->kv_bytes_per_token * o->max_model_len;
        if (d->family == MC_FAM_DEEPSEEK_V4) { /* not linear in the length: per max_model_len */
            rp->kv_bytes_per_seq = mc_v4_kv_bytes_per_seq(d, o->max_model_len, o->kv_bytes_per_elem);
            rp->kv_bytes_per_token = rp->kv_bytes_per_seq / o->max_model_len;
        }
        for (int k = 0; k < MC_CAT_COUNT; k++)
            rp->weight_bytes += rp->bytes[k];
        rp->kv_budget_bytes = mem - rp->weight_bytes - ws;
        rp->kv_tokens = rp->kv_budget_bytes > 0 && rp->kv_bytes_per_token > 0
                            ? (int64_t)(rp->kv_budget_bytes / rp->kv_bytes_per_token)
                            : 0;
        rp->seqs = rp->kv_tokens / o->max_model_len;
        if (rp->seqs > o->max_num_seqs)
            rp->seqs = o->max_num_seqs;
        if (rp->seqs < 1)
            p->fits = false;
        const mc_rank_plan *w = &p->ranks[p->worst_rank];
        if (rp->kv_budget_bytes - rp->kv_bytes_per_token * o->max_model_len <
            w->kv_budget_bytes - w->kv_bytes_per_token * o->max_model_len)
            p->worst_rank = r;
    }
    estimate(p);
    if (want_advice)
        advise(p);
    *out = p;
    return MC_OK;
}

static void add_json_num(json_t *o, const char *k, double v) { json_object_set_new(o, k, json_real(v)); }

json_t *mc_plan_to_json(const mc_plan *p)
{
    json_t *j = json_object();
    add_json_num(j, "params_total", p->params.total);
    add_json_num(j, "params_active", p->params.active);
    json_t *pc = json_object();
    add_json_num(pc, "embedding", p->params.embed);
    add_json_num(pc, "lm_head", p->params.head);
    add_json_num(pc, "attention", p->params.attn);
    add_json_num(pc, "dense", p->params.dense);
    add_json_num(pc, "shared_experts", p->params.shared);
    add_json_num(pc, "routed_experts", p->params.routed);
    add_json_num(pc, "routers", p->params.router);
    add_json_num(pc, "norms", p->params.norms);
    if (p->d.family == MC_FAM_DEEPSEEK_V4) {
        add_json_num(pc, "hyper_connections", p->params.hc);
        add_json_num(pc, "hash_tables", p->params.hash);
    }
    json_object_set_new(j, "params", pc);
    json_object_set_new(j, "model_type", json_string(p->d.model_type));
    json_object_set_new(j, "weights", json_string(mc_wfmt_name(p->o.weights)));
    json_object_set_new(j, "max_model_len", json_integer(p->o.max_model_len));
    json_object_set_new(j, "max_num_seqs", json_integer(p->o.max_num_seqs));
    json_t *cl = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f}", "name", p->c.name,
                           "backend", p->c.backend == MC_BACKEND_CUDA ? "cuda" : "cpu", "world",
                           p->world, "tp", p->c.tp, "ep", p->c.ep, "pp", p->c.pp, "dp", p->c.dp,
                           "devices_per_node", p->c.devices_per_node, "memory_gib",
                           p->c.device.memory_gib, "workspace_gib", p->c.workspace_gib);
    json_object_set_new(j, "cluster", cl);
    json_t *stages = json_array();
    for (int s = 0; s < p->c.pp; s++)
        json_array_append_new(stages, json_pack("{s:i, s:i}", "first_layer",
                                                p->stage_first_layer[s], "end_layer",
                                                p->stage_first_layer[s + 1]));
    json_object_set_new(j, "stages", stages);
    json_t *ranks = json_array();
    for (int r = 0; r < p->world; r++) {
        const mc_rank_plan *rp = &p->ranks[r];
        json_t *o = json_pack("{s:i, s:i, s:i, s:i, s:i, s:[i,i], s:[i,i]}", "rank", rp->rank,
                              "stage", rp->stage, "tp_rank", rp->tp_rank, "dp_rank", rp->dp_rank,
                              "ep_rank", rp->ep_rank, "layers", rp->layer_begin, rp->layer_end,
                              "experts", rp->expert_begin, rp->expert_end);
        json_t *b = json_object();
        for (int k = 0; k < MC_CAT_COUNT; k++)
            add_json_num(b, mc_wcat_name((mc_wcat)k), rp->bytes[k]);
        json_object_set_new(o, "weight_bytes_by_category", b);
        add_json_num(o, "weight_bytes", rp->weight_bytes);
        add_json_num(o, "kv_bytes_per_token", rp->kv_bytes_per_token);
        if (p->d.family == MC_FAM_DEEPSEEK_V4)
            add_json_num(o, "kv_bytes_per_seq", rp->kv_bytes_per_seq);
        add_json_num(o, "kv_budget_bytes", rp->kv_budget_bytes);
        json_object_set_new(o, "kv_tokens", json_integer(rp->kv_tokens));
        json_object_set_new(o, "sequences", json_integer(rp->seqs));
        json_array_append_new(ranks, o);
    }
    json_object_set_new(j, "ranks", ranks);
    json_object_set_new(j, "fits", json_boolean(p->fits));
    json_object_set_new(j, "verdict", json_string(p->verdict));
    const mc_perf *e = &p->perf;
    json_t *pe = json_object();
    add_json_num(pe, "decode_step_s", e->decode_step_s);
    json_object_set_new(pe, "batch_per_replica", json_integer(e->batch_per_replica));
    json_object_set_new(pe, "context", json_integer(e->context));
    add_json_num(pe, "decode_tok_s", e->decode_tok_s);
    add_json_num(pe, "decode_compute_s", e->decode_compute_s);
    add_json_num(pe, "decode_memory_s", e->decode_memory_s);
    add_json_num(pe, "decode_comm_s", e->decode_comm_s);
    add_json_num(pe, "prefill_tok_s", e->prefill_tok_s);
    add_json_num(pe, "a2a_bytes_per_moe_layer", e->a2a_bytes_per_layer);
    add_json_num(pe, "allreduce_bytes_per_layer", e->allreduce_bytes_per_layer);
    json_object_set_new(pe, "comm_per_layer",
                        json_pack("{s:f, s:s, s:f, s:s}", "dispatch_combine_s", e->a2a_s_per_layer,
                                  "ep_link", e->ep_link, "allreduce_s",
                                  e->allreduce_s_per_layer, "tp_link",
                                  e->tp_link));
    add_json_num(pe, "bytes_read_per_step", e->bytes_per_step);
    add_json_num(pe, "single_seq_step_s", e->single_step_s);
    add_json_num(pe, "single_seq_tok_s", e->single_seq_tok_s);
    add_json_num(pe, "memory_bandwidth_gbs", e->memory_bandwidth_gbs);
    add_json_num(pe, "peak_tflops", e->peak_tflops);
    json_object_set_new(pe, "figures",
                        json_string(mc_cluster_has_measured(&p->c) ? "measured" : "datasheet"));
    json_object_set_new(j, "estimate", pe);
    (void)gib;
    return j;
}
