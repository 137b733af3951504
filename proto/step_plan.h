/* step_plan.h - one engine step as a plain C struct, and its validation.
 *
 * A step plan says which sequences advance in one step and by which tokens:
 * for each sequence its id, its new token ids (a prefill chunk or one decode
 * token), the position of the first of them, its KV block table and which
 * positions need logits. It is the C side of `StepPlan` in control.proto,
 * field for field (proto/control.h converts both ways); the coordinator's
 * scheduler fills one, the worker's step executor runs it.
 *
 * Where it lives: here in proto/, below both users. The coordinator (which
 * builds plans) and the worker (which checks and runs them) both link
 * mc_proto; proto uses only core, so the struct, its check and its wire
 * conversion sit together without an arrow pointing up.
 *
 * Positions and blocks: entry i covers positions start_pos .. start_pos +
 * n_tokens - 1 of its sequence. Block j of its table holds positions
 * j * block_size .. (j + 1) * block_size - 1, so the table must have at
 * least ceil((start_pos + n_tokens) / block_size) blocks; it may have more
 * (blocks reserved ahead). The whole table is listed every step, earlier
 * positions included, since attention reads them.
 *
 * Ownership: a plan built with mc_step_plan_add_seq() or decoded by
 * mc_control_unpack_step() owns its arrays; release it with
 * mc_step_plan_free(). A plan whose arrays the caller points at borrowed
 * memory must not be passed to mc_step_plan_free().
 */
#ifndef MC_STEP_PLAN_H
#define MC_STEP_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Hard bounds of one step, checked before anything is allocated from a
 * peer's counts (a 64 MiB message could otherwise claim far more). */
#define MC_STEP_MAX_SEQS 16384u       /* sequences in one step */
#define MC_STEP_MAX_TOKENS (1u << 22) /* new tokens in one step, all sequences */
#define MC_STEP_MAX_BLOCKS (1u << 24) /* block-table entries in one step, all sequences */

/* Which positions of an entry need logits (LogitsMode in control.proto). */
typedef enum {
    MC_LOGITS_NONE = 0, /* a prefill chunk that is not the last one */
    MC_LOGITS_LAST = 1, /* the last token of the entry (generate) */
    MC_LOGITS_ALL = 2,  /* every token of the entry (score) */
    MC_LOGITS_COUNT
} mc_logits_mode;

/* A pick the worker makes for the coordinator (Draw in control.proto): the
 * sampler's parameters without penalties, bias or logprobs, and its random
 * stream before the pick. */
typedef struct {
    float temperature; /* >= 0, finite; below MC_SAMPLER_GREEDY_EPS greedy */
    int32_t top_k;     /* >= -1; -1 or 0: off */
    float top_p;       /* (0, 1] */
    float min_p;       /* [0, 1] */
    uint64_t state;    /* the stream before the pick */
} mc_step_draw;

typedef struct {
    uint64_t seq_id;
    uint32_t start_pos; /* position of tokens[0] in the sequence */
    uint32_t n_tokens;  /* >= 1 */
    uint32_t *tokens;   /* (n_tokens) token ids */
    uint32_t n_blocks;
    uint32_t *blocks; /* (n_blocks) block table: block ids of the pool */
    mc_logits_mode logits;
    uint32_t top_k; /* with logits: 0 = full logits, else the top_k candidates */
    /* has_draw: the worker picks this entry's next token from its row
     * (logits LAST, top_k 0) and answers with the token instead of the row */
    int has_draw;
    mc_step_draw draw;
} mc_step_seq;

typedef struct {
    uint64_t step_id; /* increases by one per step */
    uint32_t n_seqs;
    mc_step_seq *seqs; /* (n_seqs) */
    uint32_t cap_seqs; /* entries allocated by mc_step_plan_add_seq(); 0 if borrowed */
} mc_step_plan;

/* Known length of a sequence (positions already in the KV cache). Returns 1
 * and sets *len when seq_id is known, 0 for a sequence not seen yet. */
typedef int (*mc_step_len_fn)(void *ctx, uint64_t seq_id, uint32_t *len);

/* What a plan is checked against. */
typedef struct {
    uint32_t vocab;            /* token ids and top_k must be < vocab / <= vocab; >= 1 */
    uint32_t n_blocks;         /* pool size: block ids must be < n_blocks; >= 1 */
    uint32_t block_size;       /* tokens per block; >= 1 */
    uint32_t max_pos;          /* context: start_pos + n_tokens <= max_pos; >= 1 */
    uint32_t max_batch_tokens; /* budget of new tokens in one step; 0 = MC_STEP_MAX_TOKENS */
    uint32_t max_seqs;         /* sequences in one step; 0 = MC_STEP_MAX_SEQS */
    /* Optional (NULL = not tracked): when set, a known sequence must start
     * at its known length and an unknown one at position 0. */
    mc_step_len_fn known_len;
    void *known_ctx;
} mc_step_limits;

/* Zeroes *plan (no sequences). */
void mc_step_plan_init(mc_step_plan *plan);

/* Frees the arrays a plan owns and zeroes it; NULL is fine. */
void mc_step_plan_free(mc_step_plan *plan);

/* Appends one entry, copying tokens (n_tokens) and blocks (n_blocks).
 * Refuses counts past the MC_STEP_MAX_* bounds (MC_ERR_ARG) and fails with
 * MC_ERR_NOMEM; the plan is unchanged on failure. Content is not checked
 * here: that is mc_step_plan_check(). */
mc_status mc_step_plan_add_seq(mc_step_plan *plan, uint64_t seq_id, uint32_t start_pos,
                               const uint32_t *tokens, uint32_t n_tokens, const uint32_t *blocks,
                               uint32_t n_blocks, mc_logits_mode logits, uint32_t top_k,
                               mc_err *err);

/* Gives the last entry added a draw (mc_step_seq.has_draw); MC_ERR_ARG on
 * an empty plan. Checked by mc_step_plan_check. */
mc_status mc_step_plan_set_draw(mc_step_plan *plan, const mc_step_draw *draw, mc_err *err);

/* Checks a plan against the limits. Refuses (MC_ERR_FORMAT, one line naming
 * the field, e.g. "step plan: seqs[3].kv_blocks[2]: block 9000 is past the
 * pool (4096 blocks)"): no sequences, too many sequences, a duplicate seq
 * id, an empty token list, a token id past the vocabulary, a logits mode
 * out of range, top_k past the vocabulary, a length past the context, a
 * start position other than the known length, a block table too short for
 * start_pos + n_tokens, a block id past the pool, a block listed twice
 * (within one table or across sequences), more new tokens than the step
 * budget, a draw on an entry without LAST logits or with top_k, a draw's
 * parameter out of its range. Bad limits are MC_ERR_ARG. Allocates one bit per pool block for
 * the duplicate-block test (MC_ERR_NOMEM if that fails). */
mc_status mc_step_plan_check(const mc_step_plan *plan, const mc_step_limits *lim, mc_err *err);

/* Number of positions of the plan that get logits (the rows of the step's
 * logits output): n_tokens for ALL, 1 for LAST, 0 for NONE, summed. */
uint64_t mc_step_plan_logit_rows(const mc_step_plan *plan);

/* Total new tokens of the plan. */
uint64_t mc_step_plan_tokens(const mc_step_plan *plan);

/* "none", "last", "all" (or "?" out of range), for logs. */
const char *mc_logits_mode_name(mc_logits_mode m);

#endif
