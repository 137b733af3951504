/* step.h - the step executor: runs one step plan (proto/step_plan.h), any
 * mix of prefill chunks and decode tokens of many sequences, through the
 * decoder stack with backend ops only, over a paged KV cache.
 *
 * What it holds:
 *   - the model's weights as backend tensors over the loaded model's memory
 *     (mc_buffer_wrap_host: no copy on the CPU; uploaded into device buffers
 *     on a backend that cannot borrow host memory);
 *   - the KV pages of every layer, F32, in backend buffers: GQA K and V
 *     (n_blocks, block_size, n_kv_heads, head_dim), or the MLA latent
 *     (n_blocks, block_size, kv_lora_rank) and rope key (n_blocks,
 *     block_size, qk_rope_dim);
 *   - the block pool (kv_pool.h) that hands out their block ids, and the
 *     known length of every sequence with positions in the cache;
 *   - RoPE cos / sin tables for positions 0 .. max_pos - 1, max_pos = the
 *     model's context bounded by the pool (n_blocks * block_size);
 *   - activation scratch for max_batch_tokens tokens, allocated once in a
 *     backend buffer and cut into per-step views, and a host arena for the
 *     small per-token index arrays each step builds and uploads.
 *
 * One step (mc_step_exec_run):
 *   check the plan (mc_step_plan_check: vocabulary, pool, block size,
 *   context, the step budget, and that every sequence continues at its known
 *   length), build the per-token index (token id, sequence row, position,
 *   block table), then per layer rmsnorm, attention (GQA: q/k/v matmuls,
 *   q/k norms, rope, kv_write, paged attention; MLA: q LoRA, latent + rope
 *   key to the pages, W_kb absorbed per head, mla_decode, W_vb per head),
 *   o matmul, residual add, rmsnorm, router top-k, permute, grouped experts,
 *   unpermute weighted (shared experts or a dense FFN as matmuls and
 *   swiglu), residual add; last, the rows that want logits are gathered,
 *   normalized and multiplied by the LM head, HEAD_ROWS at a time, into the
 *   caller's array.
 *
 * Scheduling is the caller's: it reserves blocks for a sequence in the pool
 * (mc_step_exec_pool, mc_kv_pool_reserve), lists the sequence's table in the
 * plan, and calls mc_step_exec_release when the sequence is finished. Which
 * sequence owns which block is the scheduler's to keep: beyond
 * mc_step_plan_check (no block twice in one step) the executor trusts the
 * plan's tables.
 *
 * Scope: every family (DeepSeek-V3 / V3.2 with its indexer / V4 with its
 * own stack in step_v4*.c, Qwen3-MoE, Llama 4 with chunked and NoPE layers
 * and its top-1 router, Mistral 4), every weight format, and every parallel
 * layout of the model's share (tp, ep, pp, dp; see the collective contract
 * of mc_step_exec_run). After every attention and FFN block, and on the
 * embedded input and the logits, a NaN or infinity stops the step with a
 * message naming the layer, the position and the weight at fault
 * (nonfinite.h). Refused with MC_ERR_UNSUPPORTED naming what is missing:
 * combinations no model has (e.g. the V3.2 indexer without a query LoRA),
 * parallel layouts on a backend without host memory, top-k candidates.
 *
 * Ownership: mc_step_exec_init returns an executor the caller frees with
 * mc_step_exec_free before the model and the backend, both borrowed and
 * required to outlive it.
 */
#ifndef MC_STEP_H
#define MC_STEP_H

#include "kv_pool.h"
#include "model.h"
#include "status.h"
#include "step_plan.h"

#include <stdint.h>

typedef struct mc_backend mc_backend;
typedef struct mc_step_exec mc_step_exec;

/* Binds m's weights on backend be, allocates n_blocks KV blocks of
 * block_size positions for every layer and scratch for steps of up to
 * max_batch_tokens new tokens. MC_ERR_ARG for a zero count or a pool past
 * MC_KV_POOL_MAX_BLOCKS, MC_ERR_UNSUPPORTED for a model or layout the
 * executor does not run yet, MC_ERR_NOMEM. */
mc_status mc_step_exec_init(mc_model *m, mc_backend *be, uint32_t n_blocks, uint32_t block_size,
                            uint32_t max_batch_tokens, mc_step_exec **out, mc_err *err);
void mc_step_exec_free(mc_step_exec *ex); /* NULL is fine */

/* The block pool of the executor's KV pages (borrowed: valid until
 * mc_step_exec_free). The scheduler reserves sequences' blocks here. */
mc_kv_pool *mc_step_exec_pool(mc_step_exec *ex);

/* The limits plans are checked against (known lengths included). */
void mc_step_exec_limits(const mc_step_exec *ex, mc_step_limits *lim);

/* Positions in the cache of seq_id (0 for a sequence not seen yet). */
uint32_t mc_step_exec_seq_len(const mc_step_exec *ex, uint64_t seq_id);

/* Runs one step. logits receives mc_step_plan_logit_rows(plan) rows of
 * vocab floats: per entry in plan order, its last token's row (LAST) or
 * every token's row (ALL), nothing for NONE. logits may be NULL when the
 * plan asks for none. A refused plan (MC_ERR_FORMAT naming the field, or
 * MC_ERR_ARG for top_k > 0: mc_step_exec_run_top takes those) changes nothing; after a
 * failure in the ops the known lengths are unchanged, so the same plan may
 * run again. On success every entry's sequence is known at start_pos +
 * n_tokens positions.
 *
 * Under a parallel layout the call is collective over the model's world:
 * every rank calls it the same number of times; the ranks of one dp group
 * pass the same plan (tokens included), and a dp group with nothing to do
 * passes an empty plan (n_seqs = 0: an idle step that still takes part in
 * its stage's expert exchange). The logits land on the output rank of each
 * dp group (mc_model_is_output: the last stage's tp rank 0); other ranks
 * may pass NULL. In one process every plan is the only group's and the
 * logits land in the caller's array. */
mc_status mc_step_exec_run(mc_step_exec *ex, const mc_step_plan *plan, float *logits, mc_err *err);

/* Candidates in place of logits (mc_step_exec_run_top): for each row that
 * wants logits (plan order, the rows of mc_step_exec_run's logits), the k
 * most likely token ids, best first (ties to the lower id), their logits,
 * and unless lse is NULL the row's log-sum-exp over the whole vocabulary
 * (max + log(sum of exp(x - max)), in double; the sum's order is the
 * backend's and, under tp, the slices' log-sum-exps are combined). A greedy
 * pick is ids[0]; log-probabilities are vals - lse. The rows never leave
 * the device whole (mc_op_topk there; under tp each rank's slice gives k
 * candidates and the output rank keeps the best k). */
typedef struct mc_step_top {
    int k;        /* 1..MC_TOPK_MAX (backend.h); every entry's top_k equals it */
    int32_t *ids; /* (rows, k) */
    float *vals;  /* (rows, k) */
    double *lse;  /* (rows), or NULL: not computed */
} mc_step_top;

/* mc_step_exec_run for a plan whose entries with logits all ask for top_k
 * = top->k candidates (MC_ERR_ARG otherwise), into top on the output rank
 * (other ranks may pass NULL arrays; top itself is required). The same
 * collective contract as mc_step_exec_run. */
mc_status mc_step_exec_run_top(mc_step_exec *ex, const mc_step_plan *plan, mc_step_top *top,
                               mc_err *err);

/* Forgets seq_id and gives its blocks back to the pool. MC_ERR_NOT_FOUND
 * when neither the executor nor the pool knows it. */
mc_status mc_step_exec_release(mc_step_exec *ex, uint64_t seq_id, mc_err *err);

/* Decode-step graphs (MC_STEP_GRAPHS=1; docs/gpu.md "Graphs"): on a backend
 * that defers its checks, a rank without tp / ep / pp collectives pads a
 * step of up to 512 tokens to a bucket (dummy tokens in trash KV blocks past
 * the pool, extra logit rows not brought back) and runs a step of a shape it
 * has seen before (padded tokens, block-table width rounded up to a power of
 * two, padded logit rows, candidates) as one graph of the ops of the whole
 * stack, captured on the shape's second step; a shape that cannot be
 * captured (an op that waits, V3.2's indexer) runs op by op. Counts since
 * init: graphs launched, captured, shapes refused. */
void mc_step_exec_graph_counts(const mc_step_exec *ex, uint64_t *launches, uint64_t *captures,
                               uint64_t *refused);

#endif
