/* workers.c - the client of a worker group over ZeroMQ (see workers.h). */
#include "workers.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define WATCH_MS 100 /* how often a watch is asked during a wait */

struct mc_workers {
    void *ctx, *sock; /* owned: the context and its REQ socket */
    char addr[256];
    int timeout_ms;
    bool broken; /* a request went unanswered: the REQ state is lost */
    bool (*gone)(void *ctx); /* mc_workers_set_watch; NULL: none */
    void *gone_ctx;
    mc_workers_info info;
};

static mc_status broken_err(const mc_workers *w, mc_err *err)
{
    return mc_err_set(err, MC_ERR_IO,
                      "worker %s: the connection is broken by an earlier failure (connect again)",
                      w->addr);
}

/* Sends len bytes and waits for the answer (unpacked into *reply). A wait
 * past the timeout or a transport failure breaks the connection. */
static mc_status request(mc_workers *w, const void *bytes, size_t len, ControlMessage **reply,
                         mc_err *err)
{
    *reply = NULL;
    if (w->broken)
        return broken_err(w, err);
    if (zmq_send(w->sock, bytes, len, 0) < 0) {
        w->broken = true;
        return mc_err_set(err, MC_ERR_IO, "worker %s: send failed within %d ms: %s", w->addr,
                          w->timeout_ms, zmq_strerror(errno));
    }
    zmq_pollitem_t it = {w->sock, 0, ZMQ_POLLIN, 0};
    int r, left = w->timeout_ms;
    for (;;) { /* slices of WATCH_MS while a watch is set */
        int slice = w->gone && left > WATCH_MS ? WATCH_MS : left;
        r = zmq_poll(&it, 1, slice);
        if (r < 0 && errno == EINTR)
            continue; /* (a signal restarts the slice: bounded by signals) */
        if (r != 0 || (left -= slice) <= 0)
            break;
        if (w->gone && w->gone(w->gone_ctx)) {
            w->broken = true;
            return mc_err_set(err, MC_ERR_IO, "worker %s: the worker group exited", w->addr);
        }
    }
    if (r <= 0) {
        w->broken = true;
        if (r == 0)
            return mc_err_set(err, MC_ERR_IO,
                              "worker %s: no answer within %d ms (the worker is dead, hung or "
                              "still loading)",
                              w->addr, w->timeout_ms);
        return mc_err_set(err, MC_ERR_IO, "worker %s: poll: %s", w->addr, zmq_strerror(errno));
    }
    zmq_msg_t in;
    zmq_msg_init(&in);
    if (zmq_msg_recv(&in, w->sock, 0) < 0) {
        zmq_msg_close(&in);
        w->broken = true;
        return mc_err_set(err, MC_ERR_IO, "worker %s: receive: %s", w->addr, zmq_strerror(errno));
    }
    mc_err e;
    mc_err_clear(&e);
    mc_status st = mc_control_unpack(zmq_msg_data(&in), zmq_msg_size(&in), reply, &e);
    zmq_msg_close(&in);
    if (st != MC_OK)
        return mc_err_set(err, st, "worker %s: its answer: %s", w->addr, e.msg);
    return MC_OK;
}

/* Packs msg and runs request(). */
static mc_status request_msg(mc_workers *w, const ControlMessage *msg, ControlMessage **reply,
                             mc_err *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    mc_status st = mc_control_pack(msg, &buf, &len);
    if (st != MC_OK)
        return mc_err_set(err, st, "worker %s: cannot pack a %s request (%s)", w->addr,
                          mc_control_body_name(msg), mc_status_str(st));
    st = request(w, buf, len, reply, err);
    free(buf);
    return st;
}

/* The worker's Error answer as this call's error; MC_ERR_FORMAT for an
 * answer of another kind than want. */
static mc_status expect(const mc_workers *w, const ControlMessage *m,
                        ControlMessage__BodyCase want, mc_err *err)
{
    if (m->body_case == want)
        return MC_OK;
    if (m->body_case == CONTROL_MESSAGE__BODY_ERROR) {
        const Error *x = m->error;
        mc_status code = x->code > MC_OK && x->code <= MC_ERR_INTERNAL ? (mc_status)x->code
                                                                        : MC_ERR_INTERNAL;
        return mc_err_set(err, code, "worker %s: rank %u (host %s): %s", w->addr, x->rank,
                          x->host ? x->host : "?", x->message ? x->message : "failed");
    }
    return mc_err_set(err, MC_ERR_FORMAT, "worker %s: answered a %s", w->addr,
                      mc_control_body_name(m));
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

mc_status mc_workers_connect(const char *addr, int timeout_ms, mc_workers **out, mc_err *err)
{
    if (!out)
        return mc_err_set(err, MC_ERR_ARG, "mc_workers_connect: out is NULL");
    *out = NULL;
    if (!addr || timeout_ms < 1 || strlen(addr) >= sizeof((mc_workers *)0)->addr)
        return mc_err_set(err, MC_ERR_ARG, "mc_workers_connect: bad address or timeout %d ms",
                          timeout_ms);
    mc_workers *w = calloc(1, sizeof *w);
    if (!w)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    copy_str(w->addr, sizeof w->addr, addr);
    w->timeout_ms = timeout_ms;
    mc_status st = MC_OK;
    ControlMessage *reply = NULL;
    w->ctx = zmq_ctx_new();
    w->sock = w->ctx ? zmq_socket(w->ctx, ZMQ_REQ) : NULL;
    if (!w->sock) {
        st = mc_err_set(err, MC_ERR_IO, "worker %s: cannot make a socket: %s", addr,
                        zmq_strerror(errno));
        goto fail;
    }
    int linger = 0;
    int64_t max = (int64_t)MC_CONTROL_MAX_BYTES;
    zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(w->sock, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(w->sock, ZMQ_MAXMSGSIZE, &max, sizeof max);
    if (zmq_connect(w->sock, addr) != 0) {
        st = mc_err_set(err, MC_ERR_IO, "worker %s: cannot connect: %s", addr,
                        zmq_strerror(errno));
        goto fail;
    }
    Hello h = HELLO__INIT;
    h.rank = 0;
    h.world_size = 1;
    h.pid = (uint32_t)getpid();
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_HELLO;
    msg.hello = &h;
    if ((st = request_msg(w, &msg, &reply, err)) != MC_OK)
        goto fail;
    if ((st = expect(w, reply, CONTROL_MESSAGE__BODY_HELLO, err)) != MC_OK)
        goto fail;
    const Hello *a = reply->hello;
    if (a->vocab == 0 || a->n_blocks == 0 || a->block_size == 0 || a->max_batch_tokens == 0 ||
        a->max_pos == 0) {
        st = mc_err_set(err, MC_ERR_FORMAT,
                        "worker %s: its Hello says vocab %u, %u blocks of %u, budget %u, "
                        "context %u (a worker of another build?)",
                        addr, a->vocab, a->n_blocks, a->block_size, a->max_batch_tokens,
                        a->max_pos);
        goto fail;
    }
    mc_workers_info *i = &w->info;
    i->world_size = a->world_size;
    copy_str(i->model_type, sizeof i->model_type, a->model_type);
    copy_str(i->host, sizeof i->host, a->host);
    i->pid = a->pid;
    i->vocab = a->vocab;
    i->n_layers = a->n_layers;
    i->n_blocks = a->n_blocks;
    i->block_size = a->block_size;
    i->max_batch_tokens = a->max_batch_tokens;
    i->max_pos = a->max_pos;
    mc_control_free(reply);
    *out = w;
    return MC_OK;
fail:
    mc_control_free(reply);
    mc_workers_close(w);
    return st;
}

const mc_workers_info *mc_workers_get_info(const mc_workers *w)
{
    return &w->info;
}

const char *mc_workers_addr(const mc_workers *w)
{
    return w->addr;
}

/* Checks a StepResult against the plan and copies its rows to logits_out,
 * or (entries with top_k = k > 0) its candidates to top_ids / top_lp /
 * top_lg (rows of k; top_lg may be NULL), or (entries with a draw) the
 * workers' picks to draw_tok / draw_state (one per such entry, in plan
 * order). */
static mc_status take_result(const mc_workers *w, const mc_step_plan *plan, const StepResult *r,
                             float *logits_out, int32_t *top_ids, float *top_lp, float *top_lg,
                             int32_t *draw_tok, uint64_t *draw_state, mc_err *err)
{
    size_t V = w->info.vocab, want = 0;
    for (uint32_t i = 0; i < plan->n_seqs; i++)
        want += plan->seqs[i].logits != MC_LOGITS_NONE;
    if (r->step_id != plan->step_id || r->n_seqs != want)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "worker %s: answered step %llu with %zu sequences, want step %llu with "
                          "%zu",
                          w->addr, (unsigned long long)r->step_id, r->n_seqs,
                          (unsigned long long)plan->step_id, want);
    size_t k = 0, row = 0, trow = 0, drow = 0;
    for (uint32_t i = 0; i < plan->n_seqs; i++) {
        const mc_step_seq *e = &plan->seqs[i];
        if (e->logits == MC_LOGITS_NONE)
            continue;
        const SeqResult *s = r->seqs[k++];
        size_t rows = e->logits == MC_LOGITS_ALL ? e->n_tokens : 1;
        if (!e->has_draw && s->drawn)
            return mc_err_set(err, MC_ERR_FORMAT, "worker %s: step %llu: result %zu (sequence "
                              "%llu) has a pick the plan did not ask for", w->addr,
                              (unsigned long long)plan->step_id, k - 1,
                              (unsigned long long)s->seq_id);
        if (e->has_draw) { /* the worker's pick: a token of the vocabulary and the stream */
            const char *why = s->seq_id != e->seq_id ? "is another sequence"
                              : !s->drawn            ? "has no pick"
                              : s->n_logits || s->n_top_token_ids || s->n_top_logprobs ||
                                      s->n_top_logits
                                  ? "has rows or candidates beside its pick"
                                  : NULL;
            if (why)
                return mc_err_set(err, MC_ERR_FORMAT,
                                  "worker %s: step %llu: result %zu (sequence %llu) %s; want "
                                  "sequence %llu's pick",
                                  w->addr, (unsigned long long)plan->step_id, k - 1,
                                  (unsigned long long)s->seq_id, why,
                                  (unsigned long long)e->seq_id);
            if (s->drawn->token >= V)
                return mc_err_set(err, MC_ERR_FORMAT, "worker %s: step %llu: picked token %u is "
                                  "past the vocabulary (%zu)", w->addr,
                                  (unsigned long long)plan->step_id, s->drawn->token, V);
            if (!draw_tok || !draw_state)
                return mc_err_set(err, MC_ERR_ARG, "mc_workers_run: the plan has draws, "
                                  "draw_tok or draw_state is NULL");
            draw_tok[drow] = (int32_t)s->drawn->token;
            draw_state[drow] = s->drawn->state;
            drow++;
            continue;
        }
        if (e->top_k > 0) { /* candidates: rows x top_k ids in the vocabulary, and logprobs */
            size_t n = rows * e->top_k;
            if (s->seq_id != e->seq_id || s->n_logits != 0 || s->n_top_token_ids != n ||
                s->n_top_logprobs != n || s->n_top_logits != n)
                return mc_err_set(err, MC_ERR_FORMAT,
                                  "worker %s: step %llu: result %zu is sequence %llu with %zu "
                                  "candidates, want sequence %llu with %zu",
                                  w->addr, (unsigned long long)plan->step_id, k - 1,
                                  (unsigned long long)s->seq_id, s->n_top_token_ids,
                                  (unsigned long long)e->seq_id, n);
            for (size_t c = 0; c < n; c++)
                if (s->top_token_ids[c] >= V)
                    return mc_err_set(err, MC_ERR_FORMAT, "worker %s: step %llu: candidate id %u "
                                      "is past the vocabulary (%zu)", w->addr,
                                      (unsigned long long)plan->step_id, s->top_token_ids[c], V);
            if (!top_ids || !top_lp)
                return mc_err_set(err, MC_ERR_ARG, "mc_workers_run: the plan wants candidates, "
                                  "top_ids or top_lp is NULL");
            for (size_t c = 0; c < n; c++) {
                top_ids[trow * e->top_k + c] = (int32_t)s->top_token_ids[c];
                top_lp[trow * e->top_k + c] = s->top_logprobs[c];
                if (top_lg)
                    top_lg[trow * e->top_k + c] = s->top_logits[c];
            }
            trow += rows;
            continue;
        }
        if (s->seq_id != e->seq_id || s->n_logits != rows * V)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "worker %s: step %llu: result %zu is sequence %llu with %zu logits, "
                              "want sequence %llu with %zu",
                              w->addr, (unsigned long long)plan->step_id, k - 1,
                              (unsigned long long)s->seq_id, s->n_logits,
                              (unsigned long long)e->seq_id, rows * V);
        if (logits_out)
            memcpy(logits_out + row * V, s->logits, rows * V * sizeof(float));
        row += rows;
    }
    if (row && !logits_out)
        return mc_err_set(err, MC_ERR_ARG, "mc_workers_run: the plan wants logits, logits_out "
                          "is NULL");
    return MC_OK;
}

static mc_status run_release(mc_workers *w, const mc_step_plan *plan, const uint64_t *ids,
                             size_t n, float *logits_out, int32_t *top_ids, float *top_lp,
                             float *top_lg, int32_t *draw_tok, uint64_t *draw_state, mc_err *err)
{
    if (!w || !plan)
        return mc_err_set(err, MC_ERR_ARG, "mc_workers_run: NULL connection or plan");
    if (w->broken)
        return broken_err(w, err);
    uint8_t *buf = NULL;
    size_t len = 0;
    ControlMessage *reply = NULL;
    mc_status st = mc_control_pack_step_release(plan, ids, n, &buf, &len, err);
    if (st != MC_OK)
        return st;
    if ((st = request(w, buf, len, &reply, err)) == MC_OK &&
        (st = expect(w, reply, CONTROL_MESSAGE__BODY_RESULT, err)) == MC_OK)
        st = take_result(w, plan, reply->result, logits_out, top_ids, top_lp, top_lg, draw_tok,
                         draw_state, err);
    mc_control_free(reply);
    free(buf);
    return st;
}

mc_status mc_workers_run_release(mc_workers *w, const mc_step_plan *plan, const uint64_t *ids,
                                 size_t n, float *logits_out, mc_err *err)
{
    return run_release(w, plan, ids, n, logits_out, NULL, NULL, NULL, NULL, NULL, err);
}

mc_status mc_workers_run_release_top(mc_workers *w, const mc_step_plan *plan, const uint64_t *ids,
                                     size_t n, int32_t *top_ids, float *top_lp, float *top_lg,
                                     mc_err *err)
{
    return run_release(w, plan, ids, n, NULL, top_ids, top_lp, top_lg, NULL, NULL, err);
}

mc_status mc_workers_run_release_draw(mc_workers *w, const mc_step_plan *plan,
                                      const uint64_t *ids, size_t n, int32_t *tokens,
                                      uint64_t *states, mc_err *err)
{
    return run_release(w, plan, ids, n, NULL, NULL, NULL, NULL, tokens, states, err);
}

mc_status mc_workers_run(mc_workers *w, const mc_step_plan *plan, float *logits_out, mc_err *err)
{
    return mc_workers_run_release(w, plan, NULL, 0, logits_out, err);
}

mc_status mc_workers_release(mc_workers *w, const uint64_t *ids, size_t n, mc_err *err)
{
    if (!ids || n == 0)
        return mc_err_set(err, MC_ERR_ARG, "mc_workers_release: no ids");
    mc_step_plan empty;
    mc_step_plan_init(&empty);
    return mc_workers_run_release(w, &empty, ids, n, NULL, err);
}

mc_status mc_workers_heartbeat(mc_workers *w, uint64_t *last_step, mc_err *err)
{
    Heartbeat hb = HEARTBEAT__INIT;
    ControlMessage msg, *reply = NULL;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &hb;
    mc_status st = request_msg(w, &msg, &reply, err);
    if (st == MC_OK && (st = expect(w, reply, CONTROL_MESSAGE__BODY_HEARTBEAT, err)) == MC_OK &&
        last_step)
        *last_step = reply->heartbeat->last_step_id;
    mc_control_free(reply);
    return st;
}

mc_status mc_workers_shutdown(mc_workers *w, mc_err *err)
{
    Shutdown sd = SHUTDOWN__INIT;
    ControlMessage msg, *reply = NULL;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_SHUTDOWN;
    msg.shutdown = &sd;
    mc_status st = request_msg(w, &msg, &reply, err);
    if (st == MC_OK)
        st = expect(w, reply, CONTROL_MESSAGE__BODY_SHUTDOWN, err);
    mc_control_free(reply);
    return st;
}

mc_status mc_workers_request_raw(mc_workers *w, const void *bytes, size_t len,
                                 ControlMessage **reply, mc_err *err)
{
    return request(w, bytes, len, reply, err);
}

void mc_workers_set_watch(mc_workers *w, bool (*gone)(void *ctx), void *ctx)
{
    w->gone = gone;
    w->gone_ctx = ctx;
}

void mc_workers_close(mc_workers *w)
{
    if (!w)
        return;
    if (w->sock)
        zmq_close(w->sock);
    if (w->ctx)
        zmq_ctx_term(w->ctx);
    free(w);
}
