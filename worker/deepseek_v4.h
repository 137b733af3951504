/* deepseek_v4.h - DeepSeek-V4: binding its own weights, reached from
 * mc_model_load when d.family == MC_FAM_DEEPSEEK_V4. The forward pass runs
 * on the step executor (step_v4.c, step_v4_fwd.c); the per-call reference
 * kept for tests is in tests/ref/.
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

/* Binds and checks the V4 tensors; stores them in m->v4 (the arrays go on
 * the model's owned list). mc_v4_free frees m->v4; mc_model_free calls it. */
mc_status mc_v4_load(mc_model *m, mc_err *err);
void mc_v4_free(mc_model *m);

#endif
