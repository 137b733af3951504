/* step_plan.c - building, freeing and checking step plans (step_plan.h). */
#include "step_plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void mc_step_plan_init(mc_step_plan *plan) { memset(plan, 0, sizeof *plan); }

void mc_step_plan_free(mc_step_plan *plan)
{
    if (!plan)
        return;
    for (uint32_t i = 0; i < plan->n_seqs; i++) {
        free(plan->seqs[i].tokens);
        free(plan->seqs[i].blocks);
    }
    free(plan->seqs);
    memset(plan, 0, sizeof *plan);
}

const char *mc_logits_mode_name(mc_logits_mode m)
{
    switch (m) {
    case MC_LOGITS_NONE:
        return "none";
    case MC_LOGITS_LAST:
        return "last";
    case MC_LOGITS_ALL:
        return "all";
    default:
        return "?";
    }
}

mc_status mc_step_plan_add_seq(mc_step_plan *plan, uint64_t seq_id, uint32_t start_pos,
                               const uint32_t *tokens, uint32_t n_tokens, const uint32_t *blocks,
                               uint32_t n_blocks, mc_logits_mode logits, uint32_t top_k,
                               mc_err *err)
{
    if (!plan || (n_tokens && !tokens) || (n_blocks && !blocks))
        return mc_err_set(err, MC_ERR_ARG, "mc_step_plan_add_seq: NULL argument");
    if (plan->n_seqs >= MC_STEP_MAX_SEQS)
        return mc_err_set(err, MC_ERR_ARG, "step plan: more than %u sequences", MC_STEP_MAX_SEQS);
    if (n_tokens > MC_STEP_MAX_TOKENS || n_blocks > MC_STEP_MAX_BLOCKS)
        return mc_err_set(
            err, MC_ERR_ARG,
            "step plan: sequence %llu has %u tokens and %u blocks (at most %u and %u)",
            (unsigned long long)seq_id, n_tokens, n_blocks, MC_STEP_MAX_TOKENS, MC_STEP_MAX_BLOCKS);
    if (plan->n_seqs == plan->cap_seqs) {
        uint32_t cap = plan->cap_seqs ? 2 * plan->cap_seqs : 8;
        if (cap > MC_STEP_MAX_SEQS)
            cap = MC_STEP_MAX_SEQS;
        mc_step_seq *seqs = realloc(plan->seqs, cap * sizeof *seqs);
        if (!seqs)
            return mc_err_set(err, MC_ERR_NOMEM, "step plan: out of memory for %u sequences", cap);
        plan->seqs = seqs;
        plan->cap_seqs = cap;
    }
    uint32_t *t = malloc((n_tokens ? n_tokens : 1) * sizeof *t);
    uint32_t *b = malloc((n_blocks ? n_blocks : 1) * sizeof *b);
    if (!t || !b) {
        free(t);
        free(b);
        return mc_err_set(err, MC_ERR_NOMEM,
                          "step plan: out of memory for sequence %llu (%u tokens, %u blocks)",
                          (unsigned long long)seq_id, n_tokens, n_blocks);
    }
    if (n_tokens)
        memcpy(t, tokens, n_tokens * sizeof *t);
    if (n_blocks)
        memcpy(b, blocks, n_blocks * sizeof *b);
    mc_step_seq *s = &plan->seqs[plan->n_seqs++];
    s->seq_id = seq_id;
    s->start_pos = start_pos;
    s->n_tokens = n_tokens;
    s->tokens = t;
    s->n_blocks = n_blocks;
    s->blocks = b;
    s->logits = logits;
    s->top_k = top_k;
    s->has_draw = 0;
    memset(&s->draw, 0, sizeof s->draw);
    return MC_OK;
}

mc_status mc_step_plan_set_draw(mc_step_plan *plan, const mc_step_draw *draw, mc_err *err)
{
    if (!plan || !draw || plan->n_seqs == 0)
        return mc_err_set(err, MC_ERR_ARG, "mc_step_plan_set_draw: no entry to give a draw");
    plan->seqs[plan->n_seqs - 1].has_draw = 1;
    plan->seqs[plan->n_seqs - 1].draw = *draw;
    return MC_OK;
}

uint64_t mc_step_plan_tokens(const mc_step_plan *plan)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < plan->n_seqs; i++)
        n += plan->seqs[i].n_tokens;
    return n;
}

uint64_t mc_step_plan_logit_rows(const mc_step_plan *plan)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < plan->n_seqs; i++) {
        const mc_step_seq *s = &plan->seqs[i];
        n += s->logits == MC_LOGITS_ALL ? s->n_tokens : s->logits == MC_LOGITS_LAST ? 1 : 0;
    }
    return n;
}

/* Sequence checks that need nothing but the entry and the limits. */
static mc_status check_seq(const mc_step_seq *s, uint32_t i, const mc_step_limits *lim, mc_err *err)
{
    if (s->n_tokens == 0 || !s->tokens)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "step plan: seqs[%u].token_ids: empty (sequence %llu)", i,
                          (unsigned long long)s->seq_id);
    for (uint32_t t = 0; t < s->n_tokens; t++)
        if (s->tokens[t] >= lim->vocab)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "step plan: seqs[%u].token_ids[%u]: token %u is past the vocabulary "
                              "(%u tokens)",
                              i, t, s->tokens[t], lim->vocab);
    if ((unsigned)s->logits >= MC_LOGITS_COUNT)
        return mc_err_set(err, MC_ERR_FORMAT, "step plan: seqs[%u].logits: unknown mode %u", i,
                          (unsigned)s->logits);
    if (s->top_k > lim->vocab)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "step plan: seqs[%u].top_k: %u is past the vocabulary (%u tokens)", i,
                          s->top_k, lim->vocab);
    if (s->has_draw) {
        const mc_step_draw *d = &s->draw;
        if (s->logits != MC_LOGITS_LAST || s->top_k != 0)
            return mc_err_set(err, MC_ERR_FORMAT, "step plan: seqs[%u].draw: a draw needs the "
                              "last token's logits and top_k 0 (have %s, top_k %u)", i,
                              mc_logits_mode_name(s->logits), s->top_k);
        if (!(d->temperature >= 0.0f) || isinf(d->temperature))
            return mc_err_set(err, MC_ERR_FORMAT, "step plan: seqs[%u].draw.temperature: %g is "
                              "not a finite value >= 0", i, (double)d->temperature);
        if (d->top_k < -1)
            return mc_err_set(err, MC_ERR_FORMAT, "step plan: seqs[%u].draw.top_k: %d (want "
                              ">= -1)", i, (int)d->top_k);
        if (!(d->top_p > 0.0f && d->top_p <= 1.0f))
            return mc_err_set(err, MC_ERR_FORMAT, "step plan: seqs[%u].draw.top_p: %g is not in "
                              "(0, 1]", i, (double)d->top_p);
        if (!(d->min_p >= 0.0f && d->min_p <= 1.0f))
            return mc_err_set(err, MC_ERR_FORMAT, "step plan: seqs[%u].draw.min_p: %g is not in "
                              "[0, 1]", i, (double)d->min_p);
    }
    uint64_t end = (uint64_t)s->start_pos + s->n_tokens;
    if (end > lim->max_pos)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "step plan: seqs[%u].start_pos: positions %u..%llu are past the context "
                          "(%u positions)",
                          i, s->start_pos, (unsigned long long)(end - 1), lim->max_pos);
    if (lim->known_len) {
        uint32_t known = 0;
        if (lim->known_len(lim->known_ctx, s->seq_id, &known)) {
            if (s->start_pos != known)
                return mc_err_set(err, MC_ERR_FORMAT,
                                  "step plan: seqs[%u].start_pos: %u, but sequence %llu has %u "
                                  "positions (out of order)",
                                  i, s->start_pos, (unsigned long long)s->seq_id, known);
        } else if (s->start_pos != 0) {
            return mc_err_set(err, MC_ERR_FORMAT,
                              "step plan: seqs[%u].start_pos: %u, but sequence %llu is new (starts "
                              "at 0)",
                              i, s->start_pos, (unsigned long long)s->seq_id);
        }
    }
    uint64_t need = (end + lim->block_size - 1) / lim->block_size;
    if (s->n_blocks < need || (s->n_blocks && !s->blocks))
        return mc_err_set(err, MC_ERR_FORMAT,
                          "step plan: seqs[%u].kv_blocks: %u blocks, positions 0..%llu need %llu "
                          "(block size %u)",
                          i, s->n_blocks, (unsigned long long)(end - 1), (unsigned long long)need,
                          lim->block_size);
    for (uint32_t b = 0; b < s->n_blocks; b++)
        if (s->blocks[b] >= lim->n_blocks)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "step plan: seqs[%u].kv_blocks[%u]: block %u is past the pool (%u "
                              "blocks)",
                              i, b, s->blocks[b], lim->n_blocks);
    return MC_OK;
}

typedef struct {
    uint64_t id;
    uint32_t idx;
} id_at;

static int cmp_id_at(const void *a, const void *b)
{
    const id_at *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Duplicate seq ids: sorts (id, index) pairs; names the later entry of the
 * first duplicate in plan order. */
static mc_status check_seq_ids(const mc_step_plan *plan, mc_err *err)
{
    uint32_t n = plan->n_seqs;
    id_at *v = malloc(n * sizeof *v);
    if (!v)
        return mc_err_set(err, MC_ERR_NOMEM, "step plan: out of memory checking %u seq ids", n);
    for (uint32_t i = 0; i < n; i++) {
        v[i].id = plan->seqs[i].seq_id;
        v[i].idx = i;
    }
    qsort(v, n, sizeof *v, cmp_id_at);
    /* within a run of equal ids the indices ascend: the run's second entry
     * is its first repeat; report the repeat that comes first in the plan */
    uint32_t first = UINT32_MAX, later = UINT32_MAX;
    for (uint32_t i = 1; i < n; i++)
        if (v[i].id == v[i - 1].id && (i < 2 || v[i - 2].id != v[i].id) && v[i].idx < later) {
            first = v[i - 1].idx;
            later = v[i].idx;
        }
    free(v);
    if (first != UINT32_MAX)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "step plan: seqs[%u].seq_id: %llu is also seqs[%u] (one entry per "
                          "sequence and step)",
                          later, (unsigned long long)plan->seqs[later].seq_id, first);
    return MC_OK;
}

/* A block in two places: one bit per pool block. Names the second use and
 * where the block was seen first. */
static mc_status check_blocks_once(const mc_step_plan *plan, uint32_t n_pool, mc_err *err)
{
    uint8_t *seen = calloc(((size_t)n_pool + 7) / 8, 1);
    if (!seen)
        return mc_err_set(err, MC_ERR_NOMEM, "step plan: out of memory for a %u-block bitmap",
                          n_pool);
    mc_status st = MC_OK;
    for (uint32_t i = 0; i < plan->n_seqs && st == MC_OK; i++) {
        const mc_step_seq *s = &plan->seqs[i];
        for (uint32_t b = 0; b < s->n_blocks; b++) {
            uint32_t id = s->blocks[b];
            if (!(seen[id / 8] & (1u << (id % 8)))) {
                seen[id / 8] |= (uint8_t)(1u << (id % 8));
                continue;
            }
            /* error path only: find the first use */
            uint32_t fi = i, fb = 0;
            for (uint32_t j = 0; j <= i; j++) {
                const mc_step_seq *o = &plan->seqs[j];
                uint32_t lim = j == i ? b : o->n_blocks;
                uint32_t k = 0;
                while (k < lim && o->blocks[k] != id)
                    k++;
                if (k < lim) {
                    fi = j;
                    fb = k;
                    break;
                }
            }
            st = mc_err_set(err, MC_ERR_FORMAT,
                            "step plan: seqs[%u].kv_blocks[%u]: block %u is also "
                            "seqs[%u].kv_blocks[%u] (a block used twice)",
                            i, b, id, fi, fb);
            break;
        }
    }
    free(seen);
    return st;
}

mc_status mc_step_plan_check(const mc_step_plan *plan, const mc_step_limits *lim, mc_err *err)
{
    if (!plan || !lim)
        return mc_err_set(err, MC_ERR_ARG, "mc_step_plan_check: NULL argument");
    if (lim->vocab == 0 || lim->n_blocks == 0 || lim->block_size == 0 || lim->max_pos == 0)
        return mc_err_set(err, MC_ERR_ARG,
                          "mc_step_plan_check: limits vocab %u, n_blocks %u, block_size %u, "
                          "max_pos %u must all be >= 1",
                          lim->vocab, lim->n_blocks, lim->block_size, lim->max_pos);
    uint32_t max_seqs =
        lim->max_seqs && lim->max_seqs < MC_STEP_MAX_SEQS ? lim->max_seqs : MC_STEP_MAX_SEQS;
    uint32_t budget = lim->max_batch_tokens && lim->max_batch_tokens < MC_STEP_MAX_TOKENS
                          ? lim->max_batch_tokens
                          : MC_STEP_MAX_TOKENS;
    if (plan->n_seqs == 0 || !plan->seqs)
        return mc_err_set(err, MC_ERR_FORMAT, "step plan: seqs: empty (step %llu)",
                          (unsigned long long)plan->step_id);
    if (plan->n_seqs > max_seqs)
        return mc_err_set(err, MC_ERR_FORMAT, "step plan: seqs: %u sequences, at most %u per step",
                          plan->n_seqs, max_seqs);

    uint64_t tokens = 0, blocks = 0;
    for (uint32_t i = 0; i < plan->n_seqs; i++) {
        const mc_step_seq *s = &plan->seqs[i];
        mc_status st = check_seq(s, i, lim, err);
        if (st != MC_OK)
            return st;
        tokens += s->n_tokens;
        blocks += s->n_blocks;
        if (tokens > budget)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "step plan: seqs[%u].token_ids: %llu new tokens up to here, over the "
                              "step budget of %u (max_batch_tokens)",
                              i, (unsigned long long)tokens, budget);
        if (blocks > MC_STEP_MAX_BLOCKS)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "step plan: seqs[%u].kv_blocks: %llu blocks up to here, at most %u "
                              "per step",
                              i, (unsigned long long)blocks, MC_STEP_MAX_BLOCKS);
    }
    mc_status st = check_seq_ids(plan, err);
    if (st != MC_OK)
        return st;
    return check_blocks_once(plan, lim->n_blocks, err);
}
