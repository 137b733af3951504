/* split.h - the one table of split rules and the one balanced split.
 *
 * Every tensor role has one rule: along which dimension a parallel layout
 * cuts it and in which unit. `plan` (bytes per rank), the shard writer
 * (what each rank's file holds), the worker's binder (which view each rank
 * binds) and the worker layout (its head, KV head, expert, layer and vocab
 * ranges) all read it, so they cannot disagree.
 *
 *   role                          dim      unit (elements per unit)
 *   q_b, q (MLA)                  rows     query head (qk_nope + qk_rope)
 *   kv_b (MLA)                    rows     query head (qk_nope + v_head_dim)
 *   o (MLA)                       columns  query head (v_head_dim)
 *   q (GQA)                       rows     query head (head_dim)
 *   k, v (GQA)                    rows     KV head (head_dim); tp a multiple of
 *                                          the KV heads: each rank a copy of the
 *                                          head its query heads read
 *   o (GQA)                       columns  query head (head_dim)
 *   dense / shared gate, up       rows     one row
 *   dense / shared down           columns  one column
 *   expert gate, up, down         experts  one expert (the whole tensor), by ep
 *   fused experts (Llama 4)       experts  one expert (a slab of dim 0), by ep
 *   embedding, LM head            vocab    one row
 *   everything else               none     norms, routers and their bias, MLA
 *                                          q_a / kv_a, the V3.2 indexer
 *
 * Query heads, KV heads, rows and vocab rows are split over the tp ranks of
 * a stage, experts over the ep ranks, layers over the pp stages, all with
 * mc_split_range. FP8 `_scale_inv` tensors follow their weight in
 * 128-blocks (mc_split_fp8_blocks). Mistral names map onto the same roles
 * (model_tensors.c). DeepSeek-V4's own roles (MC_T_V4_*) are not listed, so
 * replicated: V4 runs unsplit on one rank per replica (mc_layout_make and
 * plan refuse its tp / ep / pp layouts).
 */
#ifndef MC_SPLIT_H
#define MC_SPLIT_H

#include "model_config.h"
#include "model_tensors.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    MC_SPLIT_NONE = 0, /* every rank holds all of it */
    MC_SPLIT_ROWS,     /* output features (dim 0), over tp */
    MC_SPLIT_COLS,     /* input features (dim 1), over tp */
    MC_SPLIT_EXPERTS,  /* whole routed experts, over ep */
    MC_SPLIT_VOCAB,    /* vocabulary rows (dim 0), over tp */
    MC_SPLIT_DIM_COUNT
} mc_split_dim;

typedef enum {
    MC_UNIT_NONE = 0,
    MC_UNIT_ROW,     /* one row (or column) */
    MC_UNIT_Q_HEAD,  /* one query head's rows / columns */
    MC_UNIT_KV_HEAD, /* one GQA KV head's rows */
    MC_UNIT_EXPERT,  /* one routed expert */
    MC_UNIT_COUNT
} mc_split_unit;

typedef struct {
    mc_split_dim dim;
    mc_split_unit unit;
} mc_split_rule;

/* The rule of a role (MC_SPLIT_NONE for roles out of range). */
mc_split_rule mc_split_rule_of(mc_tensor_role role);
const char *mc_split_dim_str(mc_split_dim dim);

/* Balanced split of n items into `parts` contiguous ranges: part `index`
 * gets [*begin, *end); the first n % parts parts get one more. */
void mc_split_range(int64_t n, int parts, int index, int64_t *begin, int64_t *end);

/* The part (of mc_split_range(n, parts, ...)) that holds item i. */
int mc_split_owner(int64_t n, int parts, int64_t i);

/* KV heads of tp rank tr: [*begin, *begin + *count). The heads split evenly
 * when tp divides them; when tp is a multiple of them each rank holds one
 * copy, of head tr / (tp / n_kv). Returns false for any other tp (a layout
 * the workers refuse), and then gives every rank ceil(n_kv / tp) heads, the
 * largest share, which is what `plan` sizes. */
bool mc_split_kv_heads(int n_kv, int tp, int tr, int *begin, int *count);

/* Elements per unit of role's split (1 for rows, vocab and none; 0 for
 * experts, which are whole tensors or slabs). */
int64_t mc_split_unit_width(const mc_model_desc *d, mc_tensor_role role);

/* The slice of role's tensor that tp rank tr of tp holds, in elements
 * along the cut dimension. Returns the dimension (0 rows, 1 columns) with
 * [*begin, *end), or -1 (*begin = *end = 0) when the rank holds all of it:
 * replicated roles, expert roles (split by ep, see mc_split_range), and
 * row / column roles at tp 1. Vocab roles answer 0 at every tp (rows
 * [0, vocab) at tp 1), as shard manifests record them. */
int mc_split_tp_slice(const mc_model_desc *d, mc_tensor_role role, int tp, int tr,
                      int64_t *begin, int64_t *end);

/* Blocks [*sb, *se) of an FP8 weight's block scales (block rows or
 * columns of `block` elements) that cover the slice [begin, end). */
void mc_split_fp8_blocks(int64_t begin, int64_t end, int block, int64_t *sb, int64_t *se);

/* Whether the slice [begin, end) of a dimension of `full` elements starts
 * and ends on block boundaries (or at the end), so FP8 scales can be cut
 * without re-quantizing. */
bool mc_split_on_blocks(int64_t begin, int64_t end, int64_t full, int block);

#endif
