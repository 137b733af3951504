/* session.c - the commands' one lifecycle (see session.h). */
#include "session.h"

#include "backend.h"
#include "comm_mpi.h"
#include "exec.h"
#include "kernels.h"
#include "log.h"
#include "model.h"
#include "model_quant.h"
#include "parallel.h"

#include <stdlib.h>

struct mc_session {
    mc_comm *world; /* owned; NULL in a session without a world */
    mc_backend *be; /* owned: the compute backend (probes, counters, path) */
    mc_model *m;    /* owned once loaded */
    mc_kv *kv;      /* owned: the sequence of _seq_* / _forward */
};

mc_status mc_session_open(int *argc, char ***argv, bool with_world, mc_session **out, mc_err *err) {
    *out = NULL;
    mc_session *s = calloc(1, sizeof *s);
    if (!s) return mc_err_set(err, MC_ERR_NOMEM, "out of memory for the session");
    mc_status st;
    if (with_world) {
        if ((st = mc_comm_world_init(argc, argv, &s->world, err)) != MC_OK) goto fail;
        mc_log_init(mc_comm_rank(s->world));
    }
    if ((st = mc_backend_cpu_init(&s->be, err)) != MC_OK) goto fail;
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
    mc_kv_free(s->kv);
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
    if (o->no_verify) mc_model_verify_shards(false);
    if (!s->world || (mc_comm_size(s->world) == 1 && !o->layout_given))
        st = mc_model_load(o->dir, &s->m, err);
    else
        st = mc_model_load_dist(o->dir, s->world, (int)o->tp, (int)o->ep, (int)o->pp, &s->m,
                                err); /* every rank failed together (mc_par_agree) */
    if (st != MC_OK) return st;
    /* --weights: every rank converts the share it bound (same inputs, same outcome) */
    if (o->weights_given && (st = mc_session_quantize(s, o->weights, err)) != MC_OK) return st;
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

mc_status mc_session_score(mc_session *s, const int64_t *ids, int B, int T, int decode_from,
                           float *logits, mc_err *err) {
    mc_status st = need_model(s, err);
    return st != MC_OK ? st : mc_exec_score(s->m, ids, B, T, decode_from, logits, err);
}

mc_status mc_session_seq_init(mc_session *s, int cap, mc_err *err) {
    mc_status st = need_model(s, err);
    if (st != MC_OK) return st;
    mc_kv_free(s->kv);
    s->kv = NULL;
    return mc_kv_create(s->m, cap, &s->kv, err);
}

void mc_session_seq_reset(mc_session *s) {
    if (s->kv) mc_kv_reset(s->kv);
}

static mc_status need_seq(const mc_session *s, mc_err *err) {
    return s->kv ? MC_OK
                 : mc_err_set(err, MC_ERR_ARG, "session: no sequence (mc_session_seq_init)");
}

mc_status mc_session_seq_last(mc_session *s, const int64_t *tokens, int n, float *logits,
                              mc_err *err) {
    mc_status st = need_seq(s, err);
    return st != MC_OK ? st : mc_exec_last(s->m, s->kv, tokens, n, logits, err);
}

mc_status mc_session_forward(mc_session *s, const int64_t *tokens, int n, float *logits,
                             bool last_only, mc_err *err) {
    mc_status st = need_seq(s, err);
    return st != MC_OK ? st : mc_model_forward(s->m, s->kv, tokens, n, logits, last_only, err);
}

mc_status mc_session_stats_report(mc_session *s, FILE *out, double wall_s, mc_err *err) {
    mc_status st = need_model(s, err);
    return st != MC_OK ? st : mc_stats_report(s->m, out, wall_s, err);
}

/* ---- the backend ---- */

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

double mc_session_probe_fma_gflops(mc_session *s, int threads, double seconds) {
    return mc_backend_probe_fma_gflops(s->be, threads, seconds);
}
