/* layout.h - which share of the model one rank runs: a pure function of the
 * model description, the rank count and the parallel sizes.
 *
 *   world = pp * tp * dp ranks; rank = stage * (tp*dp) + dp_rank * tp + tp_rank
 *   (the planner's layout, shard/plan.h): the tp ranks of a tensor-parallel
 *   group are consecutive, so they share a node.
 *   pp  pipeline stages: contiguous layers, earlier stages get the extra one.
 *   tp  tensor parallelism inside a stage: query heads (and KV heads, or
 *       copies of one KV head when tp is a multiple of the KV heads), the
 *       dense / shared-expert FFN width and the LM head's vocabulary rows are
 *       split; every split block ends in one all-reduce over the tp group.
 *   dp  = ranks per stage / tp: attention data parallelism, each dp group
 *       runs its own sequences.
 *   ep  expert parallelism: the routed experts are split over ep consecutive
 *       ranks of a stage (ep divides tp*dp; ep_group = local / ep holds one
 *       full copy of the experts); ranks get contiguous blocks of experts,
 *       earlier ranks one more when the count does not divide.
 * Under tp > 1 each rank of a tp group routes and dispatches its own slice
 * of the group's tokens, so no token is sent twice.
 */
#ifndef MC_LAYOUT_H
#define MC_LAYOUT_H

#include "model_config.h"
#include "status.h"

typedef struct {
    int world, rank;
    int tp, ep, pp, dp;
    int stage, tp_rank, dp_rank, ep_rank, ep_group;
    int layer0, layer1;   /* this stage's layers, [layer0, layer1) */
    int expert0, expert1; /* routed experts held, [expert0, expert1) */
    int head0, n_heads;   /* query heads held (MLA and GQA) */
    int kv_head0, n_kv_heads; /* GQA KV heads held */
    int vocab0, n_vocab;  /* LM head rows held (last stage) */
} mc_layout;

/* Balanced split of `total` items into `parts`: part i gets [*begin, *begin + *count),
 * earlier parts one more when it does not divide (mc_split_range of shard/split.h,
 * which plan and shard use, counted in ints). */
void mc_split(int total, int parts, int i, int *begin, int *count);

/* Fills the layout of `rank` among `world` ranks. tp, ep, pp <= 0 mean the
 * defaults: tp 1, pp 1, ep = all ranks of a stage. Refuses, with a message
 * naming what does not divide, layouts the rank count or the model cannot
 * take (and any split of DeepSeek-V4, which runs on one rank for now). */
mc_status mc_layout_make(const mc_model_desc *d, int world, int rank, int tp, int ep, int pp,
                         mc_layout *out, mc_err *err);

/* The single-process layout (everything on rank 0). */
void mc_layout_single(const mc_model_desc *d, mc_layout *out);

/* ep_rank (inside an ep group) that holds routed expert e. */
int mc_layout_expert_owner(const mc_layout *l, int n_experts, int e);

/* World rank of the rank at (stage, dp_rank, tp_rank). */
int mc_layout_world_rank(const mc_layout *l, int stage, int dp_rank, int tp_rank);

#endif
