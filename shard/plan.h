/* plan.h - the partition plan: a pure function of (model description,
 * cluster description, options). It says which layers each pipeline stage
 * holds, which experts each rank holds, how attention / dense / LM head are
 * split under tensor parallelism, what memory each rank needs, whether the
 * model fits, and a first-order speed estimate. `plan` prints it, `shard`
 * writes it, workers load it. Formulas: docs/plan.md.
 *
 * Rank layout: rank = stage * (tp*dp) + dp_rank * tp + tp_rank; within a
 * stage, ep_rank = (dp_rank * tp + tp_rank) % ep.
 */
#ifndef MC_PLAN_H
#define MC_PLAN_H

#include "cluster.h"
#include "model_config.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef enum { MC_WFMT_BF16 = 0, MC_WFMT_FP8, MC_WFMT_Q8_0, MC_WFMT_Q4_K, MC_WFMT_COUNT } mc_wfmt;

const char *mc_wfmt_name(mc_wfmt f);
int mc_wfmt_from_name(const char *s, mc_wfmt *out);

typedef enum {
    MC_CAT_EMBED_HEAD = 0, /* embedding table + LM head (+ final norm) */
    MC_CAT_ATTN,           /* attention projections, their norms, the V3.2 indexer */
    MC_CAT_DENSE,          /* dense-layer FFN */
    MC_CAT_SHARED,         /* shared experts */
    MC_CAT_ROUTED,         /* routed experts */
    MC_CAT_OTHER,          /* layer norms, routers and their biases */
    MC_CAT_SCALES,         /* quantization scales (FP8 block scales, Q8_0/Q4_K block scales) */
    MC_CAT_COUNT
} mc_wcat;

const char *mc_wcat_name(mc_wcat c);

/* Parameter counts of the text model (no multi-token-prediction layers, no
 * vision encoder). active = everything one token touches except the
 * embedding table (and V4's hash-routing tables, lookups like it).
 * DeepSeek-V4: attn includes the compressors, the indexer, the q / kv norms
 * and the sink logits; hc is every hyper-connection tensor (per layer and
 * the head's); hash the tid2eid tables (integers, counted as stored). */
typedef struct {
    double total, active;
    double embed, head, attn, dense, shared, routed, router, norms;
    double hc, hash;   /* DeepSeek-V4 only (0 otherwise) */
    double per_expert; /* one routed expert (gate+up+down) */
} mc_param_counts;

void mc_model_params(const mc_model_desc *d, mc_param_counts *out);

/* DeepSeek-V4: KV-cache bytes of one sequence of `len` tokens over all
 * layers, `elem` bytes per cached value: the sliding window (min(window,
 * len) K=V rows of head_dim), the compressed entries (len / rate of them,
 * head_dim wide; CSA layers also index_head_dim for the indexer) and each
 * compressor's pending windows (fixed per sequence). docs/plan.md. */
double mc_v4_kv_bytes_per_seq(const mc_model_desc *d, int64_t len, int elem);

typedef struct {
    mc_wfmt weights;
    int max_model_len; /* tokens per sequence */
    int max_num_seqs;
    int kv_bytes_per_elem; /* 2 = bf16 cache */
} mc_plan_opts;

typedef struct {
    int rank, stage, tp_rank, dp_rank, ep_rank;
    int layer_begin, layer_end;   /* [begin, end) */
    int expert_begin, expert_end; /* routed experts held, [begin, end) in every MoE layer */
    double bytes[MC_CAT_COUNT];
    double weight_bytes;
    double routed_scale_bytes;    /* the routed experts' share of bytes[MC_CAT_SCALES] */
    double embed_bytes;           /* the embedding table when only looked up (not the LM head) */
    double kv_bytes_per_token;    /* DeepSeek-V4: kv_bytes_per_seq / max_model_len */
    double kv_bytes_per_seq;      /* one sequence of max_model_len tokens */
    double kv_budget_bytes;       /* memory - weights - workspace (may be negative) */
    int64_t kv_tokens;            /* tokens of KV cache that fit */
    int64_t seqs;                 /* sequences of max_model_len that fit, capped at max_num_seqs */
} mc_rank_plan;

typedef struct {
    double decode_step_s;          /* one decode step, batch_per_replica sequences per DP replica */
    int batch_per_replica;
    int context;                   /* tokens of context assumed per sequence */
    double decode_tok_s;           /* whole cluster */
    double decode_compute_s, decode_memory_s, decode_comm_s; /* per step, summed over stages */
    double prefill_tok_s;          /* whole cluster, long prompt, compute bound */
    double a2a_bytes_per_layer;    /* EP dispatch + combine bytes sent per rank per MoE layer */
    double allreduce_bytes_per_layer; /* TP all-reduce payload per rank per layer */
    double a2a_s_per_layer;        /* EP dispatch + combine time per MoE layer (slowest rank) */
    double allreduce_s_per_layer;  /* both TP all-reduces of one layer (slowest rank) */
    char ep_link[32], tp_link[32]; /* the link kind each group crosses ("" when not used) */
    double bytes_per_step;         /* weight + KV bytes read per rank per step (max over ranks) */
    double single_step_s;          /* one decode step with one sequence per replica */
    double single_seq_tok_s;       /* decode tokens/s that one sequence alone sees */
    double memory_bandwidth_gbs, peak_tflops; /* the figures used (measured where given) */
} mc_perf;

typedef struct {
    mc_model_desc d;
    mc_cluster c;
    mc_plan_opts o;
    mc_param_counts params;
    int world, ranks_per_stage;
    int *stage_first_layer; /* [pp + 1] */
    mc_rank_plan *ranks;    /* [world] */
    bool fits;
    int worst_rank;
    char verdict[1024];     /* one paragraph: fits / what would make it fit */
    mc_perf perf;
} mc_plan;

/* Builds the plan; refuses layouts the model cannot take (heads not
 * divisible by tp, more stages than layers, ...) with a clear message.
 * DeepSeek-V4 runs on one rank per replica (tp = ep = pp = 1; dp copies)
 * with BF16 weights; other layouts and formats are refused. */
mc_status mc_plan_build(const mc_model_desc *d, const mc_cluster *c, const mc_plan_opts *o,
                        mc_plan **out, mc_err *err);
void mc_plan_free(mc_plan *p);
/* The plan as one JSON object (params_total, params_active at the top level). */
json_t *mc_plan_to_json(const mc_plan *p);

/* Bytes of a [rows, cols] matrix stored in format f; *scale_bytes receives
 * the part that is scales. Exposed for tests. */
double mc_mat_bytes(int64_t rows, int64_t cols, mc_wfmt f, double *scale_bytes);

#endif
