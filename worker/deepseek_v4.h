/* deepseek_v4.h - DeepSeek-V4: its own weights, cache state and forward pass,
 * reached from mc_model_load / mc_kv_create / mc_model_forward when
 * d.family == MC_FAM_DEEPSEEK_V4.
 *
 * The architecture, in short:
 *  - Hyper-connections (mHC): the residual is hc_mult parallel streams. Before
 *    each sub-layer a learned mapping of the RMS-normalized streams gives
 *    `pre` (sigmoid weights collapsing the streams into the sub-layer input),
 *    `post` (2*sigmoid, where the sub-layer output is written into each
 *    stream) and `comb` (an hc x hc mixing matrix projected by Sinkhorn onto
 *    the doubly-stochastic matrices): streams'[k] = post[k]*out +
 *    sum_j comb[j][k]*streams[j]. A final HyperHead collapses the streams.
 *  - Attention: MQA with a single K=V head (normed, partial interleaved RoPE
 *    on the trailing dims), q through a LoRA (wq_a, norm, wq_b) and a per-head
 *    unweighted RMSNorm, learned per-head sink logits, a sliding window of
 *    recent tokens, the value's RoPE undone on the output, and a grouped
 *    low-rank output projection (wo_a per group, then wo_b).
 *  - Compressed branches: HCA pools every hca_rate tokens into one entry
 *    (per-channel softmax gate + position bias, RMSNorm, RoPE at the window
 *    start); all complete entries are visible. CSA pools overlapping windows
 *    (2*csa_rate tokens, stride csa_rate) and a lightning indexer (its own
 *    compressor, ReLU scores weighted per head) picks the top index_topk
 *    complete entries per query.
 *  - MoE: sqrt(softplus) router scores, top-k on score + bias (or, in the
 *    first layers, a fixed token-id -> experts table tid2eid), weights
 *    normalized and scaled; SwiGLU experts with clamped gate/up; one shared
 *    expert.
 */
#ifndef MC_DEEPSEEK_V4_H
#define MC_DEEPSEEK_V4_H

#include "model.h"

/* Binds and checks the V4 tensors; stores its state in m->v4. */
mc_status mc_v4_load(mc_model *m, mc_err *err);
void mc_v4_free(mc_model *m);
/* Creates the V4 cache state in kv->ext (kv->cap tokens). */
mc_status mc_v4_kv_init(const mc_model *m, mc_kv *kv, mc_err *err);
void mc_v4_kv_free(mc_kv *kv);
void mc_v4_kv_reset(mc_kv *kv);
/* Same contract as mc_model_forward. */
mc_status mc_v4_forward(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                        bool last_only, mc_err *err);

/* ---- pieces exposed for tests ---- */

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

#endif
