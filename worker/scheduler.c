/* scheduler.c - the scheduler of `score` (see scheduler.h). */
#include "scheduler.h"

#include "parallel.h"

#include <stdlib.h>
#include <string.h>

/* Where a sequence of this dp group is. */
typedef enum { SEQ_WAIT = 0, SEQ_RUN, SEQ_DONE } seq_state;

typedef struct {
    int b;        /* row of the job */
    uint32_t len; /* tokens it runs */
    uint32_t K;   /* of which the first K are prefill, the rest one per step */
    uint32_t pos; /* tokens already in the cache */
    seq_state state;
    float *out; /* [T, V] its logits on an output rank, else NULL */
} sched_seq;

static uint32_t seq_len_of(const mc_sched_job *job, int b) {
    return job->lengths ? (uint32_t)job->lengths[b] : (uint32_t)job->T;
}

uint32_t mc_sched_pool_blocks(const mc_model *m, const mc_sched_job *job, uint32_t block_size,
                              uint64_t budget_bytes) {
    int dp = m->lay.dp > 0 ? m->lay.dp : 1;
    uint64_t busiest = 0, longest = 0;
    for (int g = 0; g < dp; g++) {
        uint64_t sum = 0;
        for (int b = g; b < job->B; b += dp) {
            uint64_t nb = ((uint64_t)seq_len_of(job, b) + block_size - 1) / block_size;
            sum += nb;
            longest = nb > longest ? nb : longest;
        }
        busiest = sum > busiest ? sum : busiest;
    }
    /* bytes of one block over every layer; no cap when a family has no rule */
    uint64_t per_block = 0;
    for (int l = 0; l < m->d.n_layers; l++) {
        uint64_t by = 0;
        mc_err e;
        mc_err_clear(&e);
        if (mc_kv_block_bytes(&m->d, l, m->lay.tp > 0 ? m->lay.tp : 1, block_size,
                              (uint32_t)mc_dtype_size(m->kv_dtype), &by, &e) != MC_OK) {
            per_block = 0;
            break;
        }
        per_block += by;
    }
    uint64_t n = busiest;
    if (per_block > 0 && n > budget_bytes / per_block) n = budget_bytes / per_block;
    if (n < longest) n = longest;
    if (n < 1) n = 1;
    return n > MC_KV_POOL_MAX_BLOCKS ? MC_KV_POOL_MAX_BLOCKS : (uint32_t)n;
}

/* Every sequence of the job (all groups, so every rank agrees) fits an empty pool. */
static mc_status check_fit(mc_step_exec *ex, const mc_sched_job *job, mc_err *err) {
    mc_kv_pool *pool = mc_step_exec_pool(ex);
    mc_step_limits lim;
    mc_step_exec_limits(ex, &lim);
    for (int b = 0; b < job->B; b++) {
        uint32_t len = seq_len_of(job, b);
        uint64_t need = mc_kv_pool_blocks_for(pool, len);
        if (need > mc_kv_pool_n_blocks(pool) || len > lim.max_pos)
            return mc_err_set(err, MC_ERR_ARG,
                              "score: sequence %d of %u tokens needs %llu KV blocks of %u "
                              "positions, but the pool has %u blocks (context %u)",
                              b, len, (unsigned long long)need, mc_kv_pool_block_size(pool),
                              mc_kv_pool_n_blocks(pool), lim.max_pos);
    }
    return MC_OK;
}

/* Appends tokens pos .. pos + n - 1 of q to plan (its table from the pool). */
static mc_status add_entry(mc_step_exec *ex, const mc_sched_job *job, const sched_seq *q,
                           uint32_t n, uint32_t *tmp, mc_step_plan *plan, mc_err *err) {
    const int64_t *src = job->ids + (size_t)q->b * (size_t)job->T + q->pos;
    for (uint32_t i = 0; i < n; i++)
        tmp[i] = (uint32_t)src[i];
    uint32_t nb = 0;
    const uint32_t *bt = mc_kv_pool_table(mc_step_exec_pool(ex), (uint64_t)q->b, &nb);
    return mc_step_plan_add_seq(plan, (uint64_t)q->b, q->pos, tmp, n, bt, nb, MC_LOGITS_ALL, 0,
                                err);
}

/* This group's next plan: decode tokens, prefill chunks, then admissions,
 * within the token budget. *n_admit counts how many waiting sequences
 * (from *next_wait on) were admitted. */
static mc_status build_plan(mc_step_exec *ex, const mc_sched_job *job, sched_seq *seqs, int n,
                            int *next_wait, uint32_t *tmp, mc_step_plan *plan, mc_err *err) {
    uint32_t left = job->max_batch_tokens;
    mc_status st = MC_OK;
    /* 1. one token to every running sequence in its decode phase */
    for (int i = 0; i < *next_wait && left > 0 && plan->n_seqs < MC_STEP_MAX_SEQS; i++) {
        sched_seq *q = &seqs[i];
        if (q->state != SEQ_RUN || q->pos < q->K) continue;
        if ((st = add_entry(ex, job, q, 1, tmp, plan, err)) != MC_OK) return st;
        left--;
    }
    /* 2. the prefill chunks of running sequences */
    for (int i = 0; i < *next_wait && left > 0 && plan->n_seqs < MC_STEP_MAX_SEQS; i++) {
        sched_seq *q = &seqs[i];
        if (q->state != SEQ_RUN || q->pos >= q->K) continue;
        uint32_t c = q->K - q->pos < left ? q->K - q->pos : left;
        if ((st = add_entry(ex, job, q, c, tmp, plan, err)) != MC_OK) return st;
        left -= c;
    }
    /* 3. admissions, first come first served, while budget and blocks last */
    mc_kv_pool *pool = mc_step_exec_pool(ex);
    while (*next_wait < n && left > 0 && plan->n_seqs < MC_STEP_MAX_SEQS) {
        sched_seq *q = &seqs[*next_wait];
        if (!mc_kv_pool_can_admit(pool, q->len)) break;
        if ((st = mc_kv_pool_reserve(pool, (uint64_t)q->b, q->len, err)) != MC_OK) return st;
        q->state = SEQ_RUN;
        (*next_wait)++;
        uint32_t c = q->K < left ? q->K : left;
        if ((st = add_entry(ex, job, q, c, tmp, plan, err)) != MC_OK) return st;
        left -= c;
    }
    return MC_OK;
}

/* After a step: positions advance, logits rows go to their sequences,
 * finished sequences give their blocks back. */
static mc_status finish_step(mc_step_exec *ex, const mc_step_plan *plan, sched_seq *seqs, int dp,
                             int g, int V, const float *rows, mc_err *err) {
    size_t r = 0;
    for (uint32_t e = 0; e < plan->n_seqs; e++) {
        const mc_step_seq *p = &plan->seqs[e];
        sched_seq *q = &seqs[((int)p->seq_id - g) / dp];
        if (q->out && rows)
            memcpy(q->out + (size_t)p->start_pos * V, rows + r * (size_t)V,
                   (size_t)p->n_tokens * V * sizeof *rows);
        r += p->n_tokens;
        q->pos += p->n_tokens;
        if (q->pos == q->len) {
            q->state = SEQ_DONE;
            mc_status st = mc_step_exec_release(ex, (uint64_t)q->b, err);
            if (st != MC_OK) return st;
        }
    }
    return MC_OK;
}

/* World rank that receives the logits of dp group g: the last stage's tp rank 0. */
static int output_rank(const mc_model *m, int g) {
    return mc_layout_world_rank(&m->lay, m->lay.pp - 1, g, 0);
}

mc_status mc_sched_gather(mc_model *m, int B, size_t seq_floats, const float *own, float *logits,
                          mc_err *err) {
    int dp = m->lay.dp > 0 ? m->lay.dp : 1, me = m->lay.rank;
    /* logits to rank 0, sequence by sequence; the output ranks kept theirs
     * until now so that the pipeline never waits on rank 0 */
    for (int b = 0; b < B; b++) {
        int src = output_rank(m, b % dp);
        mc_status st = MC_OK;
        if (src == 0) continue;
        if (me == 0)
            st = mc_par_recv(m, m->world, MC_STAT_HEAD(m->d.n_layers), src,
                             logits + (size_t)b * seq_floats, seq_floats * sizeof(float), err);
        else if (me == src)
            st = mc_par_send(m, m->world, MC_STAT_HEAD(m->d.n_layers), 0,
                             own + (size_t)(b / dp) * seq_floats, seq_floats * sizeof(float), err);
        if (st != MC_OK) return st;
    }
    return MC_OK;
}

mc_status mc_sched_score(mc_model *m, mc_step_exec *ex, const mc_sched_job *job, float *logits,
                         mc_err *err) {
    const mc_layout *lay = &m->lay;
    int V = m->d.vocab, dp = lay->dp > 0 ? lay->dp : 1, g = lay->dp_rank, me = lay->rank;
    int B = job->B, T = job->T, n = 0;
    for (int b = g; b < B; b += dp)
        n++;
    size_t seq_floats = (size_t)T * V;
    bool out_rank = mc_model_is_output(m);
    sched_seq *seqs = calloc((size_t)(n > 0 ? n : 1), sizeof *seqs);
    uint32_t *tmp = mc_malloc_n((size_t)T, sizeof *tmp); /* (T) one entry's ids */
    float *rows = NULL; /* (max_batch_tokens, V) one step's logits */
    float *own = NULL;  /* (n, T, V) this output rank's sequences, when it is not rank 0 */
    mc_step_plan plan;
    mc_step_plan_init(&plan);
    mc_status st = MC_OK;
    if (!seqs || !tmp) {
        st = mc_err_set(err, MC_ERR_NOMEM, "score: out of memory for the schedule");
        goto done;
    }
    if (out_rank && !(rows = mc_malloc_n((size_t)job->max_batch_tokens * V, sizeof *rows))) {
        st = mc_err_set(err, MC_ERR_NOMEM, "score: out of memory for the logits of %u tokens",
                        job->max_batch_tokens);
        goto done;
    }
    if (out_rank && me != 0 && n > 0 && !(own = calloc((size_t)n * seq_floats, sizeof *own))) {
        st =
            mc_err_set(err, MC_ERR_NOMEM, "score: out of memory for the logits of %d sequences", n);
        goto done;
    }
    if (me == 0 && logits)
        memset(logits, 0, (size_t)B * seq_floats * sizeof *logits); /* past each length: 0 */
    for (int i = 0; i < n; i++) {
        sched_seq *q = &seqs[i];
        q->b = g + i * dp;
        q->len = seq_len_of(job, q->b);
        q->K = job->decode_from > 0 && (uint32_t)job->decode_from < q->len
                   ? (uint32_t)job->decode_from
                   : q->len;
        if (out_rank)
            q->out = me == 0 ? logits + (size_t)q->b * seq_floats : own + (size_t)i * seq_floats;
    }
    if (m->world && mc_comm_size(m->world) > 1) /* a local allocation may have failed */
        st = mc_par_agree(m->world, st, err);
    if (st != MC_OK || (st = check_fit(ex, job, err)) != MC_OK) goto done;
    int next_wait = 0, n_done = 0;
    uint64_t step = 0;
    for (;;) {
        /* the groups step in lockstep until none has work left */
        float left = n_done < n ? 1.0f : 0.0f;
        if (m->world && dp > 1 &&
            (st = mc_comm_all_reduce_sum_f32(m->world, &left, 1, err)) != MC_OK)
            goto done;
        if (left == 0.0f) break;
        mc_step_plan_free(&plan);
        if (n_done < n && (st = build_plan(ex, job, seqs, n, &next_wait, tmp, &plan, err)) != MC_OK)
            goto done;
        if (n_done < n && plan.n_seqs == 0) { /* unreachable after check_fit */
            st = mc_err_set(err, MC_ERR_INTERNAL, "score: the schedule made no progress");
            goto done;
        }
        plan.step_id = step++;
        if ((st = mc_step_exec_run(ex, &plan, out_rank ? rows : NULL, err)) != MC_OK ||
            (st = finish_step(ex, &plan, seqs, dp, g, V, out_rank ? rows : NULL, err)) != MC_OK)
            goto done;
        n_done = 0;
        for (int i = 0; i < n; i++)
            n_done += seqs[i].state == SEQ_DONE;
    }
    st = mc_sched_gather(m, B, seq_floats, own, logits, err);
done:
    mc_step_plan_free(&plan);
    free(own);
    free(rows);
    free(tmp);
    free(seqs);
    return st;
}
