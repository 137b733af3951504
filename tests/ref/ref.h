/* ref.h - the per-call reference forward, kept for tests only.
 *
 * The engine runs every model on the step executor (worker/step*.c over the
 * paged KV pool). This library is the old per-call path it replaced: one
 * sequence at a time over its own contiguous KV cache (mc_kv), host float
 * loops over the kernels.h primitives. It matches the fixtures' golden
 * logits to about 1e-6 and so stays as the independent numerical reference
 * the tests compare the executor and the backend ops against. Built as the
 * static library mc_ref (tests/ref/CMakeLists.txt); nothing in worker/ or
 * kernels/ links it.
 *
 * It runs on a model loaded by mc_model_load (a single process: every
 * communicator a one-rank self comm). The files:
 *   ref_forward.c           decoder stack: embed, blocks, final norm, LM head
 *   ref_attention.c         MLA (absorbed, with the V3.2 indexer) and GQA
 *   ref_moe.c               router, SwiGLU FFN, routed and shared experts
 *   ref_deepseek_v4.c       DeepSeek-V4 cache state, hyper-connections, MoE,
 *                           decoder stack
 *   ref_deepseek_v4_attn.c  DeepSeek-V4 attention, compressors, indexer
 *   ref_kv.c                the per-sequence KV cache
 */
#ifndef MC_REF_H
#define MC_REF_H

#include "model.h"

#include <stdbool.h>
#include <stdint.h>

/* Per-sequence KV cache of the model's layers. MLA caches the normalized
 * latent (kv_lora_rank) and the rotated rope key (qk_rope_dim) per token;
 * GQA caches K and V of the KV heads the model holds. */
typedef struct {
    int cap, len, n_layers;
    int k_width, v_width, aux_width; /* floats per token per layer */
    float **k, **v;       /* [n_layers][cap * width] */
    float **aux;          /* DeepSeek-V3.2 indexer keys [n_layers][cap * aux_width], else NULL */
    void *ext;            /* family-specific cache state (DeepSeek-V4), else NULL */
} mc_kv;

/* A cache of cap tokens for m (*out owned by the caller: mc_kv_free);
 * mc_kv_reset empties it for a new sequence. */
mc_status mc_kv_create(const mc_model *m, int cap, mc_kv **out, mc_err *err);
void mc_kv_reset(mc_kv *kv);
void mc_kv_free(mc_kv *kv); /* NULL is a no-op */

/* Runs n tokens at positions kv->len .. kv->len+n-1 (causal over the cache),
 * appends them to the cache, and writes logits [n, vocab] if logits != NULL
 * (only the last row if last_only; caller's buffer). n >= 1. */
mc_status mc_model_forward(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                           bool last_only, mc_err *err);

/* One rank's part of a forward step (pipeline stages, tp and ep collectives
 * on the model's communicators; self comms in a single process). The first
 * stage embeds `tokens`; the last computes the logits when want_logits and
 * mc_model_is_output ranks receive them in logits [n or 1, vocab]. n may be
 * 0 (an idle dp group: it still joins the expert exchange). */
mc_status mc_forward_step(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, bool want_logits,
                          bool last_only, float *logits, mc_err *err);

/* Routing for one token. logits[E] are router outputs; writes k expert ids
 * (ascending score order not guaranteed) and weights. Ties break toward the
 * lower expert (and group) index. */
void mc_route_token(const mc_model_desc *d, const float *logits, const float *bias, int *idx,
                    float *weight);

/* What candidate tests hold a logits row x[n] against: its k largest values
 * descending in best[k], the largest |x| in *maxabs and the row's
 * log-sum-exp, max + log(sum of exp(x - max)) in double, in *lse. */
void mc_ref_row_stats(const float *x, int n, int k, double *best, double *maxabs, double *lse);

/* Top-k selection of the sparse-attention indexer: writes min(k, n)
 * indices of the largest v[i] to sel (highest first; an exact tie goes to
 * the lower index, i.e. the earlier token). taken is n bytes of scratch. */
int mc_topk_indices(const float *v, int n, int k, int *sel, unsigned char *taken);

/* Multi-head latent attention (DeepSeek MLA), absorbed form, of layer
 * `layer` on n tokens: caches the normalized latent and the rotated rope
 * key; x [n, H] -> y [n, H]; cs/sn [n, rope.dim/2] (mc_rope_tables). */
mc_status mc_attn_mla(const mc_model *m, const mc_layer_w *w, mc_kv *kv, int layer, const float *x,
                      int n, const float *cs, const float *sn, float *y, mc_err *err);

/* Grouped-query attention with optional per-head q/k RMSNorm (Qwen3). */
mc_status mc_attn_gqa(const mc_model *m, const mc_layer_w *w, mc_kv *kv, int layer, const float *x,
                      int n, const float *cs, const float *sn, float *y, mc_err *err);

/* ---- DeepSeek-V4 pieces ---- */

/* Sinkhorn projection of the hyper-connection mixing logits [hc, hc]:
 * row softmax + eps, then alternating column / row normalization (iters
 * column steps in all), as the reference does. */
void mc_v4_sinkhorn(const float *logits, int hc, int iters, float eps, float *comb);
/* Router score of one logit. */
float mc_v4_router_score(mc_v4_score f, float logit);
/* Routes one token: hash_row (tid2eid[token], k ids) when non-NULL, else the
 * top-k of score + bias (ties as torch.topk on CPU breaks them); weights are the
 * chosen scores normalized to sum 1, times routed_scaling_factor. */
void mc_v4_route(const mc_model_desc *d, const float *logits, const float *bias,
                 const int32_t *hash_row, int *idx, float *weight);

/* Top-k selection with the reference's tie behaviour (torch.topk on CPU:
 * libstdc++ nth_element with "greater"): rearranges q[0..n) so that q[0..k)
 * hold k largest values (NaN counts as largest); no order among them. */
typedef struct {
    float v;
    int i;
} mc_v4_sel;
void mc_v4_select_topk(mc_v4_sel *q, int n, int k);

#endif
