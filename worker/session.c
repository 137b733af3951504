/* session.c - the commands' one lifecycle (see session.h). */
#include "session.h"

#include "backend.h"
#include "comm_mpi.h"
#include "cuda/cuda_device.h"
#include "kernels.h"
#include "log.h"
#include "model.h"
#include "model_quant.h"
#include "parallel.h"
#include "scheduler.h"
#include "step.h"

#include <stdlib.h>
#include <string.h>

/* KV memory a `score` pool may take per rank (see mc_sched_pool_blocks). */
#define SCORE_KV_BUDGET (4ull << 30)
/* Block size and step budget of the session's one sequence (_seq_*). */
#define SEQ_BLOCK_SIZE 16u
#define SEQ_BATCH_TOKENS 2048u
/* The sequence id of _seq_* in its executor. */
#define SEQ_ID 0u

struct mc_session {
    mc_comm *world;      /* owned; NULL in a session without a world */
    mc_backend *be;      /* owned: the compute backend (probes, counters, path) */
    mc_model *m;         /* owned once loaded */
    mc_step_exec *ex;    /* owned: the executor of the sequence of _seq_* / _forward */
    uint32_t seq_cap;    /* tokens reserved for that sequence */
    uint32_t seq_budget; /* its executor's step budget */
    mc_step_exec *srv;   /* owned: the serving executor (mc_session_exec_*) */
    bool cuda;           /* be is the CUDA backend */
    int cuda_dev;        /* ... on this device */
};

/* The CPU backend, or with MC_CPU_AS_DEVICE=1 the CPU acting as a device
 * (mc_backend_cpu_device_init: memory reached only by upload / download), so
 * that the tests run the executor's device paths on machines without a GPU. */
static mc_status cpu_backend(mc_backend **be, mc_err *err) {
    const char *v = getenv("MC_CPU_AS_DEVICE");
    if (!v || strcmp(v, "1") != 0) return mc_backend_cpu_init(be, err);
    MC_DEBUG("MC_CPU_AS_DEVICE=1: the CPU backend acts as a device (weights uploaded, "
            "collectives staged through host copies)");
    return mc_backend_cpu_device_init(be, err);
}

mc_status mc_session_open(int *argc, char ***argv, bool with_world, mc_session **out, mc_err *err) {
    *out = NULL;
    mc_session *s = calloc(1, sizeof *s);
    if (!s) return mc_err_set(err, MC_ERR_NOMEM, "out of memory for the session");
    mc_status st;
    if (with_world) {
        if ((st = mc_comm_world_init(argc, argv, &s->world, err)) != MC_OK) goto fail;
        mc_log_init(mc_comm_rank(s->world));
    }
    if ((st = cpu_backend(&s->be, err)) != MC_OK) goto fail;
    *out = s;
    return MC_OK;
fail:
    mc_session_close(s, false);
    return st;
}

void mc_session_close(mc_session *s, bool abort_peers) {
    if (!s) return;
    if (abort_peers && s->world && mc_comm_size(s->world) > 1)
        mc_comm_world_abort(s->world, 1); /* peers may be blocked in a collective */
    mc_step_exec_free(s->srv);
    mc_step_exec_free(s->ex);
    mc_model_free(s->m); /* frees its tp/ep/pp comms; borrows the world */
    mc_backend_free(s->be);
    mc_comm_world_finalize(s->world);
    free(s);
}

/* ---- the world ---- */

int mc_session_rank(const mc_session *s) {
    return s->world ? mc_comm_rank(s->world) : 0;
}

int mc_session_size(const mc_session *s) {
    return s->world ? mc_comm_size(s->world) : 1;
}

const mc_comm *mc_session_world(const mc_session *s) {
    return s->world;
}

mc_status mc_session_bcast(mc_session *s, int root, void *buf, size_t bytes, mc_err *err) {
    return s->world ? mc_par_bcast(s->world, root, buf, bytes, err) : MC_OK;
}

mc_status mc_session_agree(mc_session *s, mc_status st, mc_err *err) {
    return s->world ? mc_par_agree(s->world, st, err) : st;
}

/* ---- the model ---- */

mc_status mc_session_load(mc_session *s, const mc_session_opts *o, mc_err *err) {
    mc_status st;
    if (s->m) return mc_err_set(err, MC_ERR_ARG, "session: a model is already loaded");
    if (o->device && (st = mc_session_agree(s, mc_session_set_device(s, o->device, err), err)) !=
                         MC_OK)
        return st;
    if (o->bf16_acts && s->cuda)
        return mc_session_agree(
            s, mc_err_set(err, MC_ERR_ARG, "--activations bf16 is for the CPU kernels (device cuda)"),
            err);
    mc_kernels_set_bf16_acts(o->bf16_acts);
    if (o->kv_dtype != MC_DT_F32 && o->kv_dtype != MC_DT_BF16)
        return mc_session_agree(
            s, mc_err_set(err, MC_ERR_ARG, "--kv-cache-dtype: %s is not f32 or bf16",
                          mc_dtype_name(o->kv_dtype)), err);
    if (o->kv_dtype == MC_DT_BF16 && s->cuda)
        return mc_session_agree(
            s, mc_err_set(err, MC_ERR_ARG, "--kv-cache-dtype bf16 is for the CPU backend (device "
                          "cuda keeps an f32 cache)"), err);
    if (o->no_verify) mc_model_verify_shards(false);
    if (!s->world || (mc_comm_size(s->world) == 1 && !o->layout_given))
        st = mc_model_load(o->dir, &s->m, err);
    else
        st = mc_model_load_dist(o->dir, s->world, (int)o->tp, (int)o->ep, (int)o->pp, &s->m,
                                err); /* every rank failed together (mc_par_agree) */
    if (st != MC_OK) return st;
    if (o->kv_dtype == MC_DT_BF16 && s->m->d.family == MC_FAM_DEEPSEEK_V4)
        return mc_session_agree(
            s, mc_err_set(err, MC_ERR_UNSUPPORTED, "--kv-cache-dtype bf16: DeepSeek-V4's caches "
                          "(window, compressor, indexer) are f32 only"), err);
    s->m->kv_dtype = o->kv_dtype;
    /* what carries the executor's collectives (agreed by every rank) */
    if (s->world && mc_comm_size(s->world) > 1 &&
        (st = mc_par_data_plane(s->m, mc_backend_host_memory(s->be), s->cuda ? s->cuda_dev : -1,
                                err)) != MC_OK)
        return st;
    s->m->stored_layout = !mc_backend_host_memory(s->be); /* a device reads rows as stored */
    /* --weights: every rank converts the share it bound (same inputs, same outcome) */
    if (o->weights_given && (st = mc_session_quantize(s, o->weights, err)) != MC_OK) return st;
    /* Q5_K (GGUF files: what --weights left in it, the embedding at least): the CPU
     * kernels read it, a device gets Q8_0 rows */
    if (s->m->stored_layout &&
        (st = mc_session_agree(s, mc_model_convert(s->m, MC_DT_Q5_K, MC_DT_Q8_0, err), err)) !=
            MC_OK)
        return st;
    /* --no-mmap: as stored, into RAM on huge pages (a GPU backend uploads anyway); also
     * by default when the CPU kernels read Q8_0, Q4_K, Q5_K or Q6_K repacked (mc_mat_pack) and the
     * model stores such matrices: the copies are made in that layout. Every rank agrees, each
     * on its own share (whether one copies need not be the same everywhere). */
    if (!o->weights_given && !s->m->stored_layout) {
        static const mc_dtype packed[] = {MC_DT_Q8_0, MC_DT_Q4_K, MC_DT_Q5_K, MC_DT_Q6_K};
        bool copy = o->resident;
        for (size_t i = 0; i < sizeof packed / sizeof packed[0] && !copy; i++)
            copy = mc_kernels_packs(packed[i]) && mc_model_maps_dtype(s->m, packed[i]);
        if ((st = mc_session_agree(s, copy ? mc_model_resident(s->m, err) : MC_OK, err)) != MC_OK)
            return st;
    }
    int p8 = mc_model_count_mats(s->m, mc_model_packed_, MC_MAT_PACK_Q8_0_X16);
    int p6 = mc_model_count_mats(s->m, mc_model_packed_, MC_MAT_PACK_Q6_K_X16);
    int p4 = mc_model_count_mats(s->m, mc_model_packed_, MC_MAT_PACK_Q4_K_X16);
    int p5 = mc_model_count_mats(s->m, mc_model_packed_, MC_MAT_PACK_Q5_K_X16);
    if (p8 + p6 + p5 + p4 > 0)
        MC_INFO("weights: %d Q8_0, %d Q4_K, %d Q5_K and %d Q6_K matrices repacked at load for "
                "the %s kernels", p8, p4, p5, p6, mc_kpath_name(mc_kernels_path()));
    if (o->stats) /* agreed: a rank that cannot count must not leave the others in a step */
        return mc_session_agree(s, mc_stats_enable(s->m, err), err);
    return MC_OK;
}

mc_status mc_session_quantize(mc_session *s, mc_dtype fmt, mc_err *err) {
    if (!s->m) return mc_err_set(err, MC_ERR_ARG, "session: no model loaded");
    return mc_model_quantize(s->m, fmt, err);
}

const mc_model_desc *mc_session_desc(const mc_session *s) {
    return s->m ? &s->m->d : NULL;
}

bool mc_session_is_shard_set(const char *dir) {
    return mc_is_shard_set(dir);
}

/* One byte per page of a matrix. */
static unsigned warm_mat(const mc_mat *w) {
    if (!w->data || w->rows <= 0) return 0;
    size_t bytes = mc_mat_weight_bytes(w);
    if (w->transposed) /* a view into a fused tensor: the span it covers */
        bytes = (size_t)w->cols * w->row_stride * mc_dtype_size(w->dtype);
    const volatile unsigned char *p = w->data;
    unsigned sum = 0;
    for (size_t i = 0; i < bytes; i += 4096)
        sum += p[i];
    return sum;
}

static unsigned warm_ffn(const mc_ffn_w *f) {
    return warm_mat(&f->gate) + warm_mat(&f->up) + warm_mat(&f->down);
}

void mc_session_warm(const mc_session *s) {
    const mc_model *m = s->m;
    if (!m) return;
    unsigned sum = warm_mat(&m->lm_head);
    for (int l = 0; m->layers && l < m->d.n_layers; l++) {
        const mc_layer_w *w = &m->layers[l];
        const mc_mat *mats[] = {&w->q_a, &w->q_b, &w->q_proj, &w->kv_a, &w->kv_b,
                                &w->wq,  &w->wk,  &w->wv,     &w->wo,   &w->router};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            sum += warm_mat(mats[i]);
        if (!w->moe) sum += warm_ffn(&w->dense);
        for (int e = 0; w->moe && w->experts && e < m->d.n_experts; e++)
            sum += warm_ffn(&w->experts[e]);
        if (w->has_shared) sum += warm_ffn(&w->shared);
    }
    volatile unsigned sink = sum;
    (void)sink;
}

/* ---- running ---- */

static mc_status need_model(const mc_session *s, mc_err *err) {
    return s->m ? MC_OK : mc_err_set(err, MC_ERR_ARG, "session: no model loaded");
}

mc_status mc_session_score_opts(mc_session *s, const int64_t *ids, int B, int T,
                                const mc_score_opts *o, float *logits, mc_err *err) {
    mc_status st = need_model(s, err);
    if (st != MC_OK) return st;
    uint32_t bs = o->kv_block_size ? o->kv_block_size : MC_SCORE_DEFAULT_BLOCK_SIZE;
    mc_sched_job job = {.B = B,
                        .T = T,
                        .ids = ids,
                        .lengths = o->lengths,
                        .decode_from = o->decode_from,
                        .max_batch_tokens = o->max_batch_tokens ? o->max_batch_tokens
                                                                : MC_SCORE_DEFAULT_BATCH_TOKENS};
    /* no step can hold more than the busiest group's tokens: scratch for no more */
    int dp = s->m->lay.dp > 0 ? s->m->lay.dp : 1;
    uint64_t busiest = 0;
    for (int g = 0; g < dp; g++) {
        uint64_t sum = 0;
        for (int b = g; b < B; b += dp)
            sum += o->lengths ? (uint64_t)o->lengths[b] : (uint64_t)T;
        busiest = sum > busiest ? sum : busiest;
    }
    if (busiest >= 1 && busiest < job.max_batch_tokens) job.max_batch_tokens = (uint32_t)busiest;
    /* a family or layout the executor does not run (MC_ERR_UNSUPPORTED, the
     * same on every rank) fails here like any other error, with its reason */
    mc_step_exec *ex = NULL;
    st = mc_step_exec_init(s->m, s->be, mc_sched_pool_blocks(s->m, &job, bs, SCORE_KV_BUDGET), bs,
                           job.max_batch_tokens, &ex, err);
    if ((st = mc_session_agree(s, st, err)) != MC_OK) {
        mc_step_exec_free(ex);
        return st;
    }
    st = mc_sched_score(s->m, ex, &job, logits, err);
    mc_step_exec_free(ex);
    return st;
}

mc_status mc_session_score(mc_session *s, const int64_t *ids, int B, int T, int decode_from,
                           float *logits, mc_err *err) {
    mc_score_opts o = {.decode_from = decode_from};
    return mc_session_score_opts(s, ids, B, T, &o, logits, err);
}

mc_status mc_session_seq_init(mc_session *s, int cap, mc_err *err) {
    mc_status st = need_model(s, err);
    if (st != MC_OK) return st;
    if (cap < 1) return mc_err_set(err, MC_ERR_ARG, "session: a sequence of %d tokens", cap);
    mc_step_exec_free(s->ex);
    s->ex = NULL;
    s->seq_cap = (uint32_t)cap;
    s->seq_budget = s->seq_cap < SEQ_BATCH_TOKENS ? s->seq_cap : SEQ_BATCH_TOKENS;
    uint32_t n_blocks = (s->seq_cap + SEQ_BLOCK_SIZE - 1) / SEQ_BLOCK_SIZE;
    if ((st = mc_step_exec_init(s->m, s->be, n_blocks, SEQ_BLOCK_SIZE, s->seq_budget, &s->ex,
                                err)) != MC_OK)
        return st;
    st = mc_kv_pool_reserve(mc_step_exec_pool(s->ex), SEQ_ID, s->seq_cap, err);
    if (st != MC_OK) {
        mc_step_exec_free(s->ex);
        s->ex = NULL;
    }
    return st;
}

void mc_session_seq_reset(mc_session *s) {
    if (!s->ex) return;
    mc_err e;
    mc_err_clear(&e);
    /* the blocks go back and are taken again: the pool holds exactly them */
    (void)mc_step_exec_release(s->ex, SEQ_ID, &e);
    (void)mc_kv_pool_reserve(mc_step_exec_pool(s->ex), SEQ_ID, s->seq_cap, &e);
}

static mc_status need_seq(const mc_session *s, mc_err *err) {
    return s->ex ? MC_OK
                 : mc_err_set(err, MC_ERR_ARG, "session: no sequence (mc_session_seq_init)");
}

/* n tokens of the sequence through the executor, in steps of at most the
 * budget; active = false runs the same number of empty steps (an idle dp
 * group). Logits: last_only, the last token's row [V] into logits; else
 * every token's rows [n, V]. logits may be NULL when not an output rank. */
static mc_status seq_steps(mc_session *s, const int64_t *tokens, int n, bool active, bool last_only,
                           float *logits, const mc_step_top *top, mc_err *err) {
    uint32_t budget = s->seq_budget, chunk = (uint32_t)n < budget ? (uint32_t)n : budget;
    size_t V = (size_t)s->m->d.vocab;
    uint32_t *tmp = mc_malloc_n(chunk ? chunk : 1, sizeof *tmp); /* (chunk) token ids */
    if (!tmp) return mc_err_set(err, MC_ERR_NOMEM, "session: out of memory");
    mc_step_plan plan;
    mc_step_plan_init(&plan);
    mc_status st = MC_OK;
    for (uint32_t done = 0; done < (uint32_t)n;) {
        uint32_t c = (uint32_t)n - done < budget ? (uint32_t)n - done : budget;
        bool last = done + c == (uint32_t)n;
        mc_step_plan_free(&plan);
        if (active) {
            uint32_t start = mc_step_exec_seq_len(s->ex, SEQ_ID), nb = 0;
            const uint32_t *bt = mc_kv_pool_table(mc_step_exec_pool(s->ex), SEQ_ID, &nb);
            for (uint32_t i = 0; i < c; i++)
                tmp[i] = (uint32_t)tokens[done + i];
            mc_logits_mode mode = !last_only ? MC_LOGITS_ALL
                                  : last     ? MC_LOGITS_LAST
                                             : MC_LOGITS_NONE;
            if ((st = mc_step_plan_add_seq(&plan, SEQ_ID, start, tmp, c, bt, nb, mode,
                                           top ? (uint32_t)top->k : 0, err)) != MC_OK)
                break;
        }
        if (top) { /* candidates: the rows of this chunk at their place */
            mc_step_top t = *top;
            size_t at = last_only ? 0 : (size_t)done;
            if (t.ids) t.ids += at * (size_t)t.k;
            if (t.vals) t.vals += at * (size_t)t.k;
            if (t.lse) t.lse += at;
            if ((st = mc_step_exec_run_top(s->ex, &plan, &t, err)) != MC_OK) break;
            done += c;
            continue;
        }
        float *out = !logits ? NULL : last_only ? logits : logits + (size_t)done * V;
        if ((st = mc_step_exec_run(s->ex, &plan, out, err)) != MC_OK) break;
        done += c;
    }
    mc_step_plan_free(&plan);
    free(tmp);
    return st;
}

mc_status mc_session_seq_last(mc_session *s, const int64_t *tokens, int n, float *logits,
                              mc_err *err) {
    mc_status st = need_seq(s, err);
    if (st != MC_OK) return st;
    /* dp group 0 runs the sequence, the others idle in lockstep */
    const mc_model *m = s->m;
    bool active = m->lay.dp_rank == 0, out_rank = active && mc_model_is_output(m);
    int me = m->lay.rank;
    float *buf = NULL; /* [V] the output rank's row when it is not rank 0 */
    if (out_rank && me != 0 && !(buf = mc_malloc_n((size_t)m->d.vocab, sizeof *buf)))
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    st = seq_steps(s, tokens, n, active, true, !out_rank ? NULL : me == 0 ? logits : buf, NULL,
                   err);
    if (st == MC_OK) st = mc_sched_gather(s->m, 1, (size_t)m->d.vocab, buf, logits, err);
    free(buf);
    return st;
}

mc_status mc_session_seq_last_top(mc_session *s, const int64_t *tokens, int n, int k,
                                  int32_t *ids, float *vals, double *lse, mc_err *err) {
    mc_status st = need_seq(s, err);
    if (st != MC_OK) return st;
    if (k < 1 || k > MC_TOPK_MAX)
        return mc_err_set(err, MC_ERR_ARG, "session: k = %d candidates is not in 1..%d", k,
                          MC_TOPK_MAX);
    const mc_model *m = s->m;
    bool active = m->lay.dp_rank == 0, out_rank = active && mc_model_is_output(m);
    int me = m->lay.rank;
    /* the output rank's row as 2k + 2 words (ids, vals, lse's bytes) when it is not rank 0 */
    size_t W = 2 * (size_t)k + 2;
    float *buf = NULL, *got = NULL;
    int32_t *bi = NULL;
    float *bv = NULL;
    double bl = 0;
    if (out_rank && me != 0 &&
        (!(buf = mc_malloc_n(W, sizeof *buf)) || !(bi = mc_malloc_n((size_t)k, sizeof *bi)) ||
         !(bv = mc_malloc_n((size_t)k, sizeof *bv))))
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    if (st == MC_OK && me == 0 && !out_rank && !(got = mc_malloc_n(W, sizeof *got)))
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    if ((st = mc_session_agree(s, st, err)) == MC_OK) {
        mc_step_top top = {.k = k};
        if (out_rank) {
            top.ids = me == 0 ? ids : bi;
            top.vals = me == 0 ? vals : bv;
            top.lse = me == 0 ? lse : &bl;
        }
        st = seq_steps(s, tokens, n, active, true, NULL, &top, err);
    }
    if (st == MC_OK && buf) {
        memcpy(buf, bi, (size_t)k * 4);
        memcpy(buf + k, bv, (size_t)k * 4);
        memcpy(buf + 2 * (size_t)k, &bl, 8);
    }
    if (st == MC_OK) st = mc_sched_gather(s->m, 1, W, buf, got, err);
    if (st == MC_OK && got) {
        memcpy(ids, got, (size_t)k * 4);
        memcpy(vals, got + k, (size_t)k * 4);
        if (lse) memcpy(lse, got + 2 * (size_t)k, 8);
    }
    free(buf);
    free(got);
    free(bi);
    free(bv);
    return st;
}

mc_status mc_session_forward(mc_session *s, const int64_t *tokens, int n, float *logits,
                             bool last_only, mc_err *err) {
    mc_status st = need_seq(s, err);
    if (st != MC_OK) return st;
    return seq_steps(s, tokens, n, true, last_only, logits, NULL, err);
}

mc_status mc_session_forward_top(mc_session *s, const int64_t *tokens, int n, int k,
                                 int32_t *ids, float *vals, double *lse, bool last_only,
                                 mc_err *err) {
    mc_status st = need_seq(s, err);
    if (st != MC_OK) return st;
    mc_step_top top = {.k = k, .ids = ids, .vals = vals, .lse = lse};
    return seq_steps(s, tokens, n, true, last_only, NULL, &top, err);
}

/* ---- serving ---- */

mc_status mc_session_exec_open(mc_session *s, uint32_t n_blocks, uint32_t block_size,
                               uint32_t max_batch_tokens, mc_err *err) {
    mc_status st = need_model(s, err);
    if (st != MC_OK) return st;
    mc_step_exec_free(s->srv);
    s->srv = NULL;
    st = mc_step_exec_init(s->m, s->be, n_blocks, block_size, max_batch_tokens, &s->srv, err);
    if ((st = mc_session_agree(s, st, err)) != MC_OK) {
        mc_step_exec_free(s->srv);
        s->srv = NULL;
        return st;
    }
    return MC_OK;
}

void mc_session_exec_info_get(const mc_session *s, mc_session_exec_info *out) {
    *out = (mc_session_exec_info){.dp = 1};
    if (!s->m) return;
    out->vocab = (uint32_t)s->m->d.vocab;
    out->n_layers = (uint32_t)s->m->d.n_layers;
    out->dp = s->m->lay.dp > 0 ? s->m->lay.dp : 1;
    if (!s->srv) return;
    mc_step_limits lim;
    mc_step_exec_limits(s->srv, &lim);
    out->n_blocks = lim.n_blocks;
    out->block_size = lim.block_size;
    out->max_batch_tokens = lim.max_batch_tokens;
    out->max_pos = lim.max_pos;
}

/* Known lengths as they will be once the releases are applied. */
typedef struct {
    mc_step_len_fn inner;
    void *inner_ctx;
    const uint64_t *release;
    size_t n_release;
} release_view;

static int released_len(void *ctx, uint64_t seq_id, uint32_t *len) {
    const release_view *v = ctx;
    for (size_t i = 0; i < v->n_release; i++)
        if (v->release[i] == seq_id) return 0;
    return v->inner ? v->inner(v->inner_ctx, seq_id, len) : 0;
}

mc_status mc_session_exec_check(const mc_session *s, const mc_step_plan *plan,
                                const uint64_t *release, size_t n_release,
                                size_t max_logit_bytes, mc_err *err) {
    if (!s->srv) return mc_err_set(err, MC_ERR_ARG, "session: no serving executor");
    for (size_t i = 0; i < n_release; i++) {
        if (mc_step_exec_seq_len(s->srv, release[i]) == 0)
            return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: release[%zu]: sequence %llu "
                              "is not known to the worker",
                              (unsigned long long)plan->step_id, i,
                              (unsigned long long)release[i]);
        for (size_t j = 0; j < i; j++)
            if (release[j] == release[i])
                return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: release[%zu]: sequence "
                                  "%llu is listed twice",
                                  (unsigned long long)plan->step_id, i,
                                  (unsigned long long)release[i]);
    }
    if (plan->n_seqs == 0) {
        if (n_release > 0) return MC_OK;
        return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: no sequences and nothing to "
                          "release", (unsigned long long)plan->step_id);
    }
    int k = mc_session_plan_top_k(plan);
    if (k < 0)
        return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: the entries with logits ask for "
                          "different top_k (one step gives every row the same: full logits or k "
                          "candidates)", (unsigned long long)plan->step_id);
    if (k > MC_TOPK_MAX)
        return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: top_k %d is past the %d "
                          "candidates a row can have", (unsigned long long)plan->step_id, k,
                          MC_TOPK_MAX);
    mc_step_limits lim;
    mc_step_exec_limits(s->srv, &lim);
    release_view v = {lim.known_len, lim.known_ctx, release, n_release};
    lim.known_len = released_len;
    lim.known_ctx = &v;
    mc_status st = mc_step_plan_check(plan, &lim, err);
    if (st != MC_OK) return st;
    uint64_t bytes = mc_step_plan_logit_rows(plan) * mc_session_row_words(s, k) * sizeof(float);
    if (bytes > max_logit_bytes)
        return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: %llu logit rows of %d floats "
                          "(%llu bytes) do not fit one answer (%zu bytes)",
                          (unsigned long long)plan->step_id,
                          (unsigned long long)mc_step_plan_logit_rows(plan), s->m->d.vocab,
                          (unsigned long long)bytes, max_logit_bytes);
    return MC_OK;
}

mc_status mc_session_exec_run(mc_session *s, const mc_step_plan *plan, const uint64_t *release,
                              size_t n_release, float *logits, mc_err *err) {
    mc_status st = s->srv ? MC_OK : mc_err_set(err, MC_ERR_ARG, "session: no serving executor");
    for (size_t i = 0; st == MC_OK && i < n_release; i++)
        st = mc_step_exec_release(s->srv, release[i], err);
    if ((st = mc_session_agree(s, st, err)) != MC_OK || plan->n_seqs == 0) return st;
    const mc_model *m = s->m;
    bool out_rank = mc_model_is_output(m);
    int me = m->lay.rank;
    int k = mc_session_plan_top_k(plan);
    if (k < 0 || k > MC_TOPK_MAX) /* rank 0 checked it (mc_session_exec_check) */
        st = mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: top_k differs between entries or "
                        "is past %d", (unsigned long long)plan->step_id, MC_TOPK_MAX);
    size_t rows = (size_t)mc_step_plan_logit_rows(plan), V = (size_t)m->d.vocab;
    size_t W = (size_t)mc_session_row_words(s, k > 0 ? k : 0); /* words a row */
    float *buf = NULL; /* (rows, W) the output rank's rows when it is not rank 0 */
    int32_t *ci = NULL; /* candidates: (rows, k) ids and vals, (rows) lse */
    float *cv = NULL;
    double *cl = NULL;
    if (st == MC_OK && out_rank && me != 0 && rows && !(buf = mc_malloc_n(rows * W, sizeof *buf)))
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for %zu logit rows", rows);
    if (st == MC_OK && k > 0 && out_rank && rows &&
        (!(ci = mc_malloc_n(rows * (size_t)k, sizeof *ci)) ||
         !(cv = mc_malloc_n(rows * (size_t)k, sizeof *cv)) || !(cl = mc_malloc_n(rows, sizeof *cl))))
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for %zu candidate rows", rows);
    if ((st = mc_session_agree(s, st, err)) != MC_OK) {
        free(buf);
        free(ci);
        free(cv);
        free(cl);
        return st;
    }
    float *mine = !out_rank ? NULL : me == 0 ? logits : buf;
    if (k > 0) {
        mc_step_top top = {.k = k, .ids = ci, .vals = cv, .lse = cl};
        st = mc_step_exec_run_top(s->srv, plan, &top, err);
        for (size_t r = 0; st == MC_OK && mine && r < rows; r++) { /* packed rows */
            float *row = mine + r * W;
            memcpy(row, ci + r * (size_t)k, (size_t)k * 4);
            memcpy(row + k, cv + r * (size_t)k, (size_t)k * 4);
            memcpy(row + 2 * (size_t)k, cl + r, 8);
        }
    } else {
        st = mc_step_exec_run(s->srv, plan, mine, err);
    }
    st = mc_session_agree(s, st, err);
    if (st == MC_OK && rows && s->world && mc_comm_size(s->world) > 1)
        st = mc_sched_gather(s->m, 1, rows * W, buf, logits, err);
    free(buf);
    free(ci);
    free(cv);
    free(cl);
    (void)V;
    return st;
}

int mc_session_plan_top_k(const mc_step_plan *plan) {
    int k = -2;
    for (uint32_t i = 0; i < plan->n_seqs; i++) {
        if (plan->seqs[i].logits == MC_LOGITS_NONE) continue;
        int ki = plan->seqs[i].top_k > (uint32_t)INT32_MAX ? INT32_MAX : (int)plan->seqs[i].top_k;
        if (k != -2 && ki != k) return -1;
        k = ki;
    }
    return k < 0 ? 0 : k;
}

uint32_t mc_session_row_words(const mc_session *s, int k) {
    return k > 0 ? 2u * (uint32_t)k + 2u : (uint32_t)(s->m ? s->m->d.vocab : 0);
}

mc_status mc_session_stats_report(mc_session *s, FILE *out, double wall_s, mc_err *err) {
    mc_status st = need_model(s, err);
    return st != MC_OK ? st : mc_stats_report(s->m, out, wall_s, err);
}

/* ---- the backend ---- */

/* This process's rank among the ranks of its host, as the MPI launcher
 * says (Open MPI, MPICH); 0 without one or on a value that is no rank. */
static int local_rank(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (!v || !*v || strlen(v) > 9) continue;
        char *end = NULL;
        long r = strtol(v, &end, 10);
        if (*end == '\0' && r >= 0) return (int)r;
    }
    return 0;
}

mc_status mc_session_device_usable(const char *device, mc_err *err) {
    if (!device || strcmp(device, "cuda") != 0) return MC_OK;
    mc_err why;
    mc_err_clear(&why);
    if (mc_cuda_device_count(&why) > 0) return MC_OK;
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "--device cuda: %s", why.msg);
}

mc_status mc_session_set_device(mc_session *s, const char *device, mc_err *err) {
    if (s->ex || s->srv || s->m)
        return mc_err_set(err, MC_ERR_ARG, "--device: the session has already loaded a model");
    bool want_cuda = device && strcmp(device, "cuda") == 0;
    bool is_auto = !device || strcmp(device, "auto") == 0;
    if (!want_cuda && !is_auto && strcmp(device, "cpu") != 0)
        return mc_err_set(err, MC_ERR_ARG, "--device: '%.64s' is not cpu or cuda", device);
    mc_backend *be = NULL;
    int dev = 0;
    mc_status st;
    if (want_cuda && (st = mc_session_device_usable(device, err)) != MC_OK) return st;
    if (want_cuda || is_auto) {
        mc_err why;
        mc_err_clear(&why);
        int n = mc_cuda_device_count(&why);
        want_cuda = n > 0; /* auto: a visible device in a CUDA build */
        if (want_cuda && !s->cuda) {
            dev = local_rank() % n;
            if ((st = mc_backend_cuda_init(dev, &be, &why)) != MC_OK)
                return mc_err_set(err, st, "--device cuda: device %d: %s", dev, why.msg);
        }
    }
    if (want_cuda == s->cuda) return MC_OK; /* the backend it has (a --kernels choice stays) */
    if (!want_cuda && (st = cpu_backend(&be, err)) != MC_OK) return st;
    mc_backend_free(s->be);
    s->be = be;
    s->cuda = want_cuda;
    s->cuda_dev = dev;
    return MC_OK;
}

const char *mc_session_device(const mc_session *s) {
    return s->cuda ? "cuda" : "cpu";
}

const char *mc_session_kernels(const mc_session *s) {
    return mc_backend_path(s->be);
}

const char *mc_session_features(const mc_session *s) {
    return mc_backend_features(s->be);
}

mc_status mc_session_set_kernels(mc_session *s, const char *name, mc_err *err) {
    mc_kpath p;
    if (mc_kpath_from_name(name, &p) != 0)
        return mc_err_set(err, MC_ERR_ARG, "kernels: '%s' is not scalar, avx2 or avx512", name);
    mc_err be_err;
    mc_err_clear(&be_err);
    if (mc_backend_set_path(s->be, name, &be_err) != MC_OK)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "kernels %s: this CPU or build lacks it", name);
    return MC_OK;
}

int mc_session_threads(const mc_session *s) {
    return mc_backend_threads(s->be);
}

void mc_session_set_threads(mc_session *s, int n) {
    mc_backend_set_threads(s->be, n);
}

void mc_session_count(mc_session *s, bool on) {
    mc_backend_count(s->be, on ? 1 : 0);
}

void mc_session_counters_get(const mc_session *s, mc_session_counters *out) {
    mc_backend_counters c = {0, 0};
    mc_backend_counters_get(s->be, &c);
    out->bytes_read = c.bytes_read;
    out->macs = c.macs;
}

double mc_session_probe_read_gbps(mc_session *s, size_t bytes, int threads, double seconds) {
    return mc_backend_probe_read_gbps(s->be, bytes, threads, seconds);
}

double mc_session_probe_int8_gops(mc_session *s, int threads, double seconds) {
    return mc_backend_probe_int8_gops(s->be, threads, seconds);
}

double mc_session_probe_bf16_gflops(mc_session *s, int threads, double seconds) {
    return mc_backend_probe_bf16_gflops(s->be, threads, seconds);
}

double mc_session_probe_fma_gflops(mc_session *s, int threads, double seconds) {
    return mc_backend_probe_fma_gflops(s->be, threads, seconds);
}

/* ---- the in-process step runner ----
 *
 * A view of the session's serving executor (mc_session_exec_*): the same
 * executor `worker` serves plans with, reached without the collectives. */

struct mc_session_runner {
    mc_session *s; /* borrowed; s->srv is the executor */
    mc_session_runner_limits lim;
};

mc_status mc_session_runner_open(mc_session *s, uint32_t n_blocks, uint32_t block_size,
                                 uint32_t max_batch_tokens, mc_session_runner **out, mc_err *err) {
    *out = NULL;
    mc_status st = need_model(s, err);
    if (st != MC_OK) return st;
    if (mc_session_size(s) > 1)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "session runner: one process only (a world of %d ranks)",
                          mc_session_size(s));
    if (!n_blocks || !block_size || !max_batch_tokens)
        return mc_err_set(err, MC_ERR_ARG,
                          "session runner: %u blocks of %u, %u tokens per step (all must be >= 1)",
                          n_blocks, block_size, max_batch_tokens);
    if (s->srv)
        return mc_err_set(err, MC_ERR_ARG, "session runner: the session has a serving executor "
                          "already (one per session)");
    mc_session_runner *r = calloc(1, sizeof *r);
    if (!r) return mc_err_set(err, MC_ERR_NOMEM, "session runner: out of memory");
    if ((st = mc_session_exec_open(s, n_blocks, block_size, max_batch_tokens, err)) != MC_OK) {
        free(r);
        return st;
    }
    mc_session_exec_info info;
    mc_session_exec_info_get(s, &info);
    r->s = s;
    r->lim = (mc_session_runner_limits){.vocab = info.vocab,
                                        .n_blocks = info.n_blocks,
                                        .block_size = info.block_size,
                                        .max_pos = info.max_pos,
                                        .max_batch_tokens = info.max_batch_tokens};
    *out = r;
    return MC_OK;
}

void mc_session_runner_close(mc_session_runner *r) {
    if (!r) return;
    mc_step_exec_free(r->s->srv);
    r->s->srv = NULL;
    free(r);
}

void mc_session_runner_get_limits(const mc_session_runner *r, mc_session_runner_limits *out) {
    *out = r->lim;
}

mc_status mc_session_runner_run(mc_session_runner *r, const mc_step_plan *plan, float *logits,
                                mc_err *err) {
    return mc_step_exec_run(r->s->srv, plan, logits, err);
}

mc_status mc_session_runner_run_top(mc_session_runner *r, const mc_step_plan *plan,
                                    int32_t *top_ids, float *top_lp, float *top_lg, mc_err *err) {
    int k = mc_session_plan_top_k(plan);
    if (k <= 0 || k > MC_TOPK_MAX)
        return mc_err_set(err, MC_ERR_ARG, "session runner: the plan's top_k is %s",
                          k < 0 ? "not the same for every entry" : "not in 1..64");
    size_t rows = (size_t)mc_step_plan_logit_rows(plan);
    double *lse = mc_malloc_n(rows ? rows : 1, sizeof *lse);
    if (!lse) return mc_err_set(err, MC_ERR_NOMEM, "session runner: out of memory");
    mc_step_top top = {.k = k, .ids = top_ids, .vals = top_lp, .lse = lse};
    mc_status st = mc_step_exec_run_top(r->s->srv, plan, &top, err);
    for (size_t i = 0; st == MC_OK && i < rows * (size_t)k; i++) {
        if (top_lg)
            top_lg[i] = top_lp[i];
        top_lp[i] = (float)((double)top_lp[i] - lse[i / (size_t)k]);
    }
    free(lse);
    return st;
}

mc_status mc_session_runner_release(mc_session_runner *r, uint64_t seq_id, mc_err *err) {
    return mc_step_exec_release(r->s->srv, seq_id, err);
}
