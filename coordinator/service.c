/* service.c - the serving core: one driver thread over an engine, a
 * thread-safe front for the clients (see service.h; the worker group is
 * service_group.c).
 *
 * Locks: the service's mutex (mu) guards the inbox, the state, the stats
 * and the held count; each handle's own mutex guards its events and its
 * two references (the client's, the driver's). A thread holding a
 * handle's mutex may take mu (cancel, free); the driver never takes a
 * handle's mutex while it holds mu. The handle outlives the service when
 * the client still holds it: the driver drops its reference (and the
 * handle's pointer to the service) with the last event.
 */
#include "service.h"

#include "service_group.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HEARTBEAT_MS 1000        /* idle heartbeat period */
#define RETRY_MS 2000            /* between failed starts / reconnects */
#define MAX_LOGIT_BIAS (1 << 20) /* entries of one request's logit_bias */

struct mc_service_req {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mc_service *s;        /* NULL once the driver let go */
    bool client_ref;      /* the client has not freed it */
    bool driver_ref;      /* the request is held by the service */
    bool cancel_queued;   /* on the service's cancel list */
    bool cancel_wanted;   /* cancel asked (the driver acts on it) */
    bool ended;           /* the last event was queued */
    bool drained;         /* ... and taken */
    uint64_t id;          /* service id (the engine's id is engine_id) */
    uint64_t engine_id;   /* 0 until the driver submitted it */
    mc_service_event *ev; /* (ev_cap) ring */
    size_t ev_head, n_ev, ev_cap;
    /* owned copies of the request (driver reads them at submit) */
    mc_engine_request req;
    int32_t *prompt;         /* (n_prompt) */
    int32_t *stop_ids;       /* (n_stop_ids) */
    mc_logit_bias *bias;     /* (n_logit_bias) */
    double t_submit, t_last; /* CLOCK_MONOTONIC seconds */
    bool got_token;
    char refusal[512];           /* why the engine refused it (driver) */
    mc_service_req *next_in;     /* inbox link */
    mc_service_req *next_cancel; /* cancel list link */
};

struct mc_service {
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* the driver's wakeup: inbox, cancels, stop */
    pthread_cond_t state_cv; /* state changes (mc_service_wait_ready) */
    pthread_t thread;
    atomic_bool stop;
    mc_service_state state;
    char last_error[512];
    mc_service_req *in_head, *in_tail; /* submitted, not yet given to the engine */
    mc_service_req *cancels;           /* cancel asked */
    uint32_t n_held, max_requests;
    uint32_t vocab, max_len; /* the engine's (for submit's checks); 0 while none */
    uint64_t next_id;
    mc_service_stats st;
    mc_engine_stats past; /* counters of replaced engines and of requests ended here */
    /* driver thread only */
    mc_engine *engine;
    mc_engine_opts eopts;
    mc_step_runner runner;
    mc_group *group;      /* NULL: a runner the caller gave */
    mc_service_req **map; /* (map_cap) open addressing by engine id: held requests */
    size_t map_cap, map_n;
    const char *abort_msg; /* set: cancels end as ERROR with this message */
    bool quiet, opts_attach;
};

const char *mc_service_state_name(mc_service_state s) {
    static const char *const names[] = {"loading", "ready", "down", "failed", "stopped"};
    return (unsigned)s <= MC_SERVICE_STOPPED ? names[s] : "?";
}

/* Copies src into dst[cap], cut at cap - 1 bytes. */
static void copy_str(char *dst, size_t cap, const char *src) {
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = '\0';
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* An absolute CLOCK_MONOTONIC deadline ms from now (condvars use it). */
static struct timespec deadline_ms(long ms) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* A mutex and one or two condition variables on CLOCK_MONOTONIC (cv2 may
 * be NULL). False when one cannot be made (none is left made). */
static bool locks_init(pthread_mutex_t *mu, pthread_cond_t *cv, pthread_cond_t *cv2) {
    pthread_condattr_t a;
    if (pthread_condattr_init(&a)) return false;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    bool m = !pthread_mutex_init(mu, NULL), c = !pthread_cond_init(cv, &a);
    bool c2 = !cv2 || !pthread_cond_init(cv2, &a);
    pthread_condattr_destroy(&a);
    if (m && c && c2) return true;
    if (m) pthread_mutex_destroy(mu);
    if (c) pthread_cond_destroy(cv);
    if (cv2 && c2) pthread_cond_destroy(cv2);
    return false;
}

/* ---- histograms (vLLM's buckets) ---- */

static const double TTFT_BOUNDS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
                                     0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
static const double ITL_BOUNDS[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                    0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double E2E_BOUNDS[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                    5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

static void hist_init(mc_hist *h, const double *b, int n) {
    memset(h, 0, sizeof *h);
    h->n_bounds = n;
    memcpy(h->bounds, b, (size_t)n * sizeof *b);
}

static void hist_add(mc_hist *h, double v) {
    int k = 0;
    while (k < h->n_bounds && v > h->bounds[k])
        k++;
    h->counts[k]++;
    h->sum += v;
    h->count++;
}

/* ---- handles ---- */

static void req_destroy(mc_service_req *r) {
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->ev);
    free(r->prompt);
    free(r->stop_ids);
    free(r->bias);
    free(r);
}

/* Queues an event on r (r->mu held); dropped when the client let go.
 * MC_ERR_NOMEM loses a token event only (the last one always has room:
 * one slot is kept free for it). */
static void req_push(mc_service_req *r, const mc_service_event *ev) {
    if (!r->client_ref) return;
    bool last = ev->finish != MC_ENGINE_GO_ON;
    if (r->n_ev + 1 >= r->ev_cap) {
        size_t cap = r->ev_cap ? 2 * r->ev_cap : 16;
        mc_service_event *n = mc_malloc_n(cap, sizeof *n); /* (cap) */
        if (n) {
            for (size_t i = 0; i < r->n_ev; i++)
                n[i] = r->ev[(r->ev_head + i) % r->ev_cap];
            free(r->ev);
            r->ev = n;
            r->ev_head = 0;
            r->ev_cap = cap;
        } else if (!last || r->n_ev >= r->ev_cap) {
            return;
        }
    }
    r->ev[(r->ev_head + r->n_ev) % r->ev_cap] = *ev;
    r->n_ev++;
    if (last) r->ended = true;
    pthread_cond_broadcast(&r->cv);
}

int mc_service_req_next(mc_service_req *r, mc_service_event *ev, int timeout_ms) {
    pthread_mutex_lock(&r->mu);
    struct timespec until = deadline_ms(timeout_ms > 0 ? timeout_ms : 0);
    while (r->n_ev == 0 && !r->drained) {
        if (timeout_ms == 0) break;
        int rc = timeout_ms < 0 ? pthread_cond_wait(&r->cv, &r->mu)
                                : pthread_cond_timedwait(&r->cv, &r->mu, &until);
        if (rc == ETIMEDOUT) break;
    }
    int got = 0;
    if (r->n_ev > 0) {
        *ev = r->ev[r->ev_head];
        r->ev_head = (r->ev_head + 1) % r->ev_cap;
        r->n_ev--;
        if (ev->finish != MC_ENGINE_GO_ON) r->drained = true;
        got = 1;
    } else if (r->drained) {
        got = -1;
    }
    pthread_mutex_unlock(&r->mu);
    return got;
}

/* Puts r on the service's cancel list (r->mu held, the driver holds r). */
static void cancel_locked(mc_service_req *r) {
    if (r->cancel_wanted || !r->driver_ref || !r->s) return;
    r->cancel_wanted = true;
    mc_service *s = r->s;
    pthread_mutex_lock(&s->mu);
    if (!r->cancel_queued) {
        r->cancel_queued = true;
        r->next_cancel = s->cancels;
        s->cancels = r;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
}

void mc_service_req_cancel(mc_service_req *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    cancel_locked(r);
    pthread_mutex_unlock(&r->mu);
}

void mc_service_req_free(mc_service_req *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->client_ref = false;
    r->n_ev = 0; /* events not taken are dropped */
    cancel_locked(r);
    bool last = !r->driver_ref;
    pthread_mutex_unlock(&r->mu);
    if (last) req_destroy(r);
}

uint64_t mc_service_req_id(const mc_service_req *r) {
    return r ? r->id : 0;
}

/* The driver lets go of r after its last event (no lock held): no cancel
 * can queue it any more, it leaves the cancel list, then the driver's
 * reference goes (the client may free it from then on). */
static void driver_release(mc_service *s, mc_service_req *r) {
    pthread_mutex_lock(&r->mu);
    r->s = NULL; /* cancel_locked does nothing from here */
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_lock(&s->mu);
    s->n_held--;
    if (r->cancel_queued) {
        mc_service_req **p = &s->cancels;
        while (*p && *p != r)
            p = &(*p)->next_cancel;
        if (*p) *p = r->next_cancel;
        r->cancel_queued = false;
    }
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&r->mu);
    r->driver_ref = false;
    bool last = !r->client_ref;
    pthread_mutex_unlock(&r->mu);
    if (last) req_destroy(r);
}

/* ---- submit ---- */

mc_status mc_service_submit(mc_service *s, const mc_engine_request *req, mc_service_req **out,
                            mc_err *err) {
    *out = NULL;
    mc_service_req *r = calloc(1, sizeof *r);
    if (!r) return mc_err_set(err, MC_ERR_NOMEM, "service: out of memory for a request");
    if (!locks_init(&r->mu, &r->cv, NULL)) {
        free(r);
        return mc_err_set(err, MC_ERR_NOMEM, "service: cannot make a mutex for a request");
    }
    mc_status st = MC_OK;
    r->client_ref = r->driver_ref = true;
    r->req = *req;
    /* copies of what the request points at (checked below, before use) */
    if (req->prompt && req->n_prompt > 0 && req->n_prompt <= UINT32_MAX / 4) {
        r->prompt = mc_malloc_n(req->n_prompt, sizeof *r->prompt);
        if (!r->prompt) goto nomem;
        memcpy(r->prompt, req->prompt, req->n_prompt * sizeof *r->prompt);
        r->req.prompt = r->prompt;
    }
    if (req->stop_ids && req->n_stop_ids > 0 && req->n_stop_ids <= MC_ENGINE_MAX_STOP_IDS) {
        r->stop_ids = mc_malloc_n(req->n_stop_ids, sizeof *r->stop_ids);
        if (!r->stop_ids) goto nomem;
        memcpy(r->stop_ids, req->stop_ids, req->n_stop_ids * sizeof *r->stop_ids);
        r->req.stop_ids = r->stop_ids;
    }
    const mc_sampler_params *p = &req->sampling;
    if (p->n_logit_bias > MAX_LOGIT_BIAS) {
        st = mc_err_set(err, MC_ERR_ARG, "logit_bias: %d entries (at most %d)", p->n_logit_bias,
                        MAX_LOGIT_BIAS);
        goto fail;
    }
    if (p->logit_bias && p->n_logit_bias > 0) {
        r->bias = mc_malloc_n((size_t)p->n_logit_bias, sizeof *r->bias);
        if (!r->bias) goto nomem;
        memcpy(r->bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof *r->bias);
        r->req.sampling.logit_bias = r->bias;
    }
    pthread_mutex_lock(&s->mu);
    if (s->state != MC_SERVICE_READY) {
        st = mc_err_set(err, MC_ERR_IO, "the model is not ready (state %s)",
                        mc_service_state_name(s->state));
    } else if ((st = mc_engine_check_request(&r->req, s->vocab, s->max_len, err)) != MC_OK) {
        /* the engine's one line */
    } else if (s->n_held >= s->max_requests) {
        st = mc_err_set(err, MC_ERR_OVERFLOW, "too many requests (%u held, the most)", s->n_held);
    } else {
        r->id = s->next_id++;
        r->s = s;
        r->t_submit = now_s();
        if (s->in_tail)
            s->in_tail->next_in = r;
        else
            s->in_head = r;
        s->in_tail = r;
        s->n_held++;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (st != MC_OK) goto fail;
    *out = r;
    return MC_OK;
nomem:
    st = mc_err_set(err, MC_ERR_NOMEM, "service: out of memory for a request");
fail:
    req_destroy(r);
    return st;
}

/* ---- the driver's map: engine id -> handle ---- */

static size_t map_slot(const mc_service *s, uint64_t id) {
    size_t k = (size_t)(id * 0x9e3779b97f4a7c15ull) & (s->map_cap - 1);
    while (s->map[k] && s->map[k]->engine_id != id)
        k = (k + 1) & (s->map_cap - 1);
    return k;
}

static mc_service_req *map_get(const mc_service *s, uint64_t id) {
    return s->map[map_slot(s, id)];
}

static void map_put(mc_service *s, mc_service_req *r) {
    s->map[map_slot(s, r->engine_id)] = r;
    s->map_n++;
}

/* Removes id (backward-shift deletion keeps the probe chains whole). */
static void map_del(mc_service *s, uint64_t id) {
    size_t m = s->map_cap - 1, i = map_slot(s, id);
    if (!s->map[i]) return;
    s->map[i] = NULL;
    s->map_n--;
    for (size_t j = (i + 1) & m; s->map[j]; j = (j + 1) & m) {
        size_t home = (size_t)(s->map[j]->engine_id * 0x9e3779b97f4a7c15ull) & m;
        /* move j to i when its home is not cyclically in (i, j] */
        if (((j - home) & m) >= ((j - i) & m)) {
            s->map[i] = s->map[j];
            s->map[j] = NULL;
            i = j;
        }
    }
}

/* ---- the driver ---- */

static void set_state(mc_service *s, mc_service_state st, const char *why) {
    pthread_mutex_lock(&s->mu);
    if (st == MC_SERVICE_DOWN && s->state == MC_SERVICE_READY) s->st.restarts++;
    s->state = st;
    if (why) copy_str(s->last_error, sizeof s->last_error, why);
    pthread_cond_broadcast(&s->state_cv);
    pthread_mutex_unlock(&s->mu);
}

/* Ends r now with one event (no engine involved): a request that never
 * reached the engine. */
static void end_direct(mc_service *s, mc_service_req *r, mc_engine_finish why, const char *msg) {
    mc_service_event ev = {.token = -1, .finish = why};
    copy_str(ev.msg, sizeof ev.msg, msg ? msg : "");
    pthread_mutex_lock(&r->mu);
    req_push(r, &ev);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_lock(&s->mu);
    s->past.requests_finished[why]++;
    hist_add(&s->st.e2e, now_s() - r->t_submit);
    pthread_mutex_unlock(&s->mu);
    driver_release(s, r);
}

/* Adds the counters of b to a (engines replaced, requests ended here). */
static void stats_add(mc_engine_stats *a, const mc_engine_stats *b) {
    a->prompt_tokens_total += b->prompt_tokens_total;
    a->generation_tokens_total += b->generation_tokens_total;
    a->preemptions_total += b->preemptions_total;
    a->steps_total += b->steps_total;
    a->steps_failed += b->steps_failed;
    a->steps_top += b->steps_top;
    a->steps_draw += b->steps_draw;
    for (int i = 0; i < MC_ENGINE_FINISH_COUNT; i++)
        a->requests_finished[i] += b->requests_finished[i];
}

/* Copies the engine's stats into the shared ones. */
static void publish_stats(mc_service *s) {
    mc_engine_stats es;
    memset(&es, 0, sizeof es);
    if (s->engine) mc_engine_stats_get(s->engine, &es);
    pthread_mutex_lock(&s->mu);
    stats_add(&es, &s->past);
    s->st.engine = es;
    pthread_mutex_unlock(&s->mu);
}

/* Hands every engine event to its handle. */
static void deliver(mc_service *s) {
    publish_stats(s); /* before the clients wake: the counters include these events */
    mc_engine_event e;
    while (mc_engine_next_event(s->engine, &e)) {
        mc_service_req *r = map_get(s, e.id);
        if (!r) continue; /* cannot happen: every held request is mapped */
        mc_service_event ev = {
            .token = e.token, .has_logprobs = e.has_logprobs, .lp = e.lp, .finish = e.finish};
        if (e.finish == MC_ENGINE_ABORT && s->abort_msg) {
            ev.finish = MC_ENGINE_ERROR;
            copy_str(ev.msg, sizeof ev.msg, s->abort_msg);
        } else if (e.msg) {
            copy_str(ev.msg, sizeof ev.msg, e.msg);
        }
        double t = now_s();
        pthread_mutex_lock(&s->mu);
        if (ev.token >= 0) {
            if (!r->got_token)
                hist_add(&s->st.ttft, t - r->t_submit);
            else
                hist_add(&s->st.itl, t - r->t_last);
        }
        if (ev.finish != MC_ENGINE_GO_ON) hist_add(&s->st.e2e, t - r->t_submit);
        pthread_mutex_unlock(&s->mu);
        if (ev.token >= 0) {
            r->got_token = true;
            r->t_last = t;
        }
        pthread_mutex_lock(&r->mu);
        req_push(r, &ev);
        pthread_mutex_unlock(&r->mu);
        if (ev.finish != MC_ENGINE_GO_ON) {
            map_del(s, e.id);
            driver_release(s, r);
        }
    }
}

/* Gives the inbox to the engine and acts on the cancels, then delivers. */
static void take_inbox(mc_service *s) {
    pthread_mutex_lock(&s->mu);
    mc_service_req *in = s->in_head, *cancels = s->cancels, *refused = NULL;
    s->in_head = s->in_tail = NULL;
    s->cancels = NULL;
    for (mc_service_req *c = cancels; c; c = c->next_cancel)
        c->cancel_queued = false;
    pthread_mutex_unlock(&s->mu);
    /* the cancel list is detached: a handle on it cannot go away before the
     * driver releases it, which happens below at the earliest */
    while (in) {
        mc_service_req *r = in;
        in = in->next_in;
        r->next_in = NULL;
        mc_err err;
        mc_err_clear(&err);
        mc_status st = s->engine ? mc_engine_submit(s->engine, &r->req, &r->engine_id, &err)
                                 : mc_err_set(&err, MC_ERR_IO, "no engine");
        if (st != MC_OK) { /* ended after the cancels (which may name it) */
            copy_str(r->refusal, sizeof r->refusal, err.msg);
            r->next_in = refused;
            refused = r;
            continue;
        }
        map_put(s, r);
    }
    for (mc_service_req *c = cancels; c; c = c->next_cancel) {
        mc_err err;
        mc_err_clear(&err);
        if (c->engine_id && s->engine)
            (void)mc_engine_cancel(s->engine, c->engine_id, &err); /* NOT_FOUND: it ended */
    }
    while (refused) {
        mc_service_req *r = refused;
        refused = refused->next_in;
        end_direct(s, r, MC_ENGINE_ERROR, r->refusal);
    }
    if (s->engine) deliver(s);
}

/* Ends every held request (engine and inbox) with ERROR msg, or ABORT when
 * msg is NULL. */
static void end_held(mc_service *s, const char *msg) {
    take_inbox(s);
    s->abort_msg = msg;
    while (s->map_n > 0) {
        uint64_t ids[64];
        size_t n = 0;
        for (size_t k = 0; k < s->map_cap && n < 64; k++)
            if (s->map[k]) ids[n++] = s->map[k]->engine_id;
        for (size_t i = 0; i < n; i++) {
            mc_err err;
            mc_err_clear(&err);
            if (mc_engine_cancel(s->engine, ids[i], &err) != MC_OK) { /* cannot happen */
                mc_service_req *r = map_get(s, ids[i]);
                map_del(s, ids[i]);
                end_direct(s, r, msg ? MC_ENGINE_ERROR : MC_ENGINE_ABORT, msg);
            }
        }
        deliver(s);
    }
    s->abort_msg = NULL;
    publish_stats(s);
}

static bool stopping(const mc_service *s) {
    return atomic_load(&s->stop);
}

/* mc_group_up's keep callback: cancels still act while the group starts. */
static bool keep_waiting(void *ctx) {
    mc_service *s = ctx;
    take_inbox(s);
    return !stopping(s);
}

/* Sleeps ms (the driver's cv), acting on cancels; false when stopping. */
static bool pause_ms(mc_service *s, long ms) {
    struct timespec until = deadline_ms(ms);
    pthread_mutex_lock(&s->mu);
    while (!stopping(s) && pthread_cond_timedwait(&s->cv, &s->mu, &until) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&s->mu);
    take_inbox(s);
    return !stopping(s);
}

/* Makes (or keeps) the engine over the group's Hello. MC_ERR_ARG when the
 * options do not fit the group (not worth a retry). */
static mc_status engine_for_group(mc_service *s, mc_err *err) {
    mc_step_runner r;
    mc_group_runner(s->group, &r);
    if (s->engine && (r.vocab != s->runner.vocab || r.n_blocks != s->runner.n_blocks ||
                      r.block_size != s->runner.block_size || r.max_pos != s->runner.max_pos ||
                      r.max_batch_tokens != s->runner.max_batch_tokens)) {
        /* another group answered (attached): the old engine's tables mean nothing */
        end_held(s, "the worker group changed (another model or pool); the request was dropped");
        mc_engine_stats old;
        mc_engine_stats_get(s->engine, &old);
        pthread_mutex_lock(&s->mu);
        stats_add(&s->past, &old);
        pthread_mutex_unlock(&s->mu);
        mc_engine_free(s->engine);
        s->engine = NULL;
    }
    s->runner = r;
    if (!s->engine) {
        mc_status st = mc_engine_init(&s->runner, &s->eopts, &s->engine, err);
        if (st != MC_OK) return st;
    }
    const mc_workers_info *wi = mc_group_info(s->group);
    pthread_mutex_lock(&s->mu);
    s->vocab = r.vocab;
    s->max_len = mc_engine_max_model_len(s->engine);
    s->st.vocab = s->vocab;
    s->st.max_model_len = s->max_len;
    s->st.world_size = wi ? wi->world_size : 0;
    s->st.worker_pid = wi ? wi->pid : 0;
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

/* Starts (or restarts) the group until it serves: READY, or FAILED after
 * MC_SERVICE_MAX_RESTARTS failed starts of a local group (an attached one
 * is retried without end). False when stopping or FAILED. */
static bool bring_up(mc_service *s) {
    bool attach = s->opts_attach;
    for (int fails = 0;;) {
        mc_err err;
        mc_err_clear(&err);
        mc_status st = mc_group_up(s->group, keep_waiting, s, &err);
        if (st == MC_OK && (st = engine_for_group(s, &err)) == MC_OK) {
            set_state(s, MC_SERVICE_READY, NULL);
            if (!s->quiet)
                fprintf(stderr, "moecluster: the worker group is ready (%u ranks)\n",
                        s->st.world_size);
            return true;
        }
        if (stopping(s)) return false;
        mc_group_down(s->group, false);
        fails++;
        char why[600];
        copy_str(why, sizeof why, err.msg);
        if (st == MC_ERR_ARG || (!attach && fails >= MC_SERVICE_MAX_RESTARTS)) {
            if (st != MC_ERR_ARG)
                snprintf(why, sizeof why, "the worker group failed to start %d times; last: %.400s",
                         fails, err.msg);
            set_state(s, MC_SERVICE_FAILED, why);
            if (s->engine) end_held(s, why);
            if (!s->quiet) fprintf(stderr, "moecluster: %s\n", why);
            return false;
        }
        pthread_mutex_lock(&s->mu);
        copy_str(s->last_error, sizeof s->last_error, why);
        pthread_mutex_unlock(&s->mu);
        if (!s->quiet) fprintf(stderr, "moecluster: %s (retrying)\n", why);
        if (!pause_ms(s, RETRY_MS)) return false;
    }
}

/* The group died: its running requests fail, it starts again. */
static bool group_died(mc_service *s, const char *why) {
    char msg[600];
    snprintf(msg, sizeof msg, "the worker group failed: %.500s", why);
    set_state(s, MC_SERVICE_DOWN, msg); /* before the clients hear of it */
    mc_err err;
    mc_err_clear(&err);
    if (mc_engine_fail_running(s->engine, msg, &err) != MC_OK) end_held(s, msg);
    deliver(s);
    if (!s->quiet) fprintf(stderr, "moecluster: %s; restarting it\n", msg);
    mc_group_down(s->group, false);
    return bring_up(s);
}

static void *driver_main(void *arg) {
    mc_service *s = arg;
    bool up = s->group ? bring_up(s) : true;
    double last_hb = now_s();
    while (!stopping(s)) {
        take_inbox(s);
        if (up && mc_engine_busy(s->engine)) {
            mc_err err;
            mc_err_clear(&err);
            if (mc_engine_step(s->engine, &err) != MC_OK) { /* the engine's own trouble */
                end_held(s, err.msg);
                pause_ms(s, 100);
            }
            char why[512] = "";
            mc_err_clear(&err);
            if (s->group && (mc_group_failed(s->group, why, sizeof why) ||
                             mc_group_tick(s->group, false, &err) != MC_OK)) {
                if (!why[0]) copy_str(why, sizeof why, err.msg);
                up = group_died(s, why); /* DOWN before the step's errors go out */
                last_hb = now_s();
            }
            deliver(s);
            continue;
        }
        publish_stats(s);
        /* idle: wait for work, a heartbeat period at most */
        long wait = HEARTBEAT_MS - (long)((now_s() - last_hb) * 1000);
        struct timespec until = deadline_ms(wait > 0 ? wait : 0);
        pthread_mutex_lock(&s->mu);
        while (!stopping(s) && !s->in_head && !s->cancels &&
               pthread_cond_timedwait(&s->cv, &s->mu, &until) != ETIMEDOUT)
            ;
        pthread_mutex_unlock(&s->mu);
        if (up && s->group && now_s() - last_hb >= HEARTBEAT_MS / 1000.0) {
            last_hb = now_s();
            mc_err err;
            mc_err_clear(&err);
            if (mc_group_tick(s->group, true, &err) != MC_OK) up = group_died(s, err.msg);
        }
    }
    /* stop: every held request ends with "abort" */
    if (s->engine) end_held(s, NULL);
    pthread_mutex_lock(&s->mu);
    mc_service_req *in = s->in_head;
    s->in_head = s->in_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (in) {
        mc_service_req *r = in;
        in = in->next_in;
        end_direct(s, r, MC_ENGINE_ABORT, NULL);
    }
    if (s->group) mc_group_down(s->group, true);
    set_state(s, MC_SERVICE_STOPPED, NULL);
    return NULL;
}

/* ---- start / stop ---- */

static void service_free(mc_service *s) {
    if (!s) return;
    mc_engine_free(s->engine);
    mc_group_free(s->group);
    free(s->map);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->state_cv);
    free(s);
}

/* The common part: the service struct with its locks, map and stats. */
static mc_status service_new(const mc_engine_opts *eo, mc_service **out, mc_err *err) {
    *out = NULL;
    mc_service *s = calloc(1, sizeof *s);
    if (!s) return mc_err_set(err, MC_ERR_NOMEM, "service: out of memory");
    if (!locks_init(&s->mu, &s->cv, &s->state_cv)) {
        free(s);
        return mc_err_set(err, MC_ERR_NOMEM, "service: cannot make its mutex");
    }
    atomic_init(&s->stop, false);
    s->eopts = eo ? *eo : (mc_engine_opts){0};
    s->max_requests =
        s->eopts.max_requests ? s->eopts.max_requests : MC_ENGINE_DEFAULT_MAX_REQUESTS;
    s->next_id = 1;
    s->map_cap = 16;
    while (s->map_cap < 2 * (size_t)s->max_requests)
        s->map_cap *= 2;
    s->map = mc_calloc_n(s->map_cap, sizeof *s->map); /* (map_cap) */
    if (!s->map) {
        uint32_t n = s->max_requests;
        service_free(s);
        return mc_err_set(err, MC_ERR_NOMEM, "service: out of memory for %u requests", n);
    }
    hist_init(&s->st.ttft, TTFT_BOUNDS, (int)(sizeof TTFT_BOUNDS / sizeof TTFT_BOUNDS[0]));
    hist_init(&s->st.itl, ITL_BOUNDS, (int)(sizeof ITL_BOUNDS / sizeof ITL_BOUNDS[0]));
    hist_init(&s->st.e2e, E2E_BOUNDS, (int)(sizeof E2E_BOUNDS / sizeof E2E_BOUNDS[0]));
    *out = s;
    return MC_OK;
}

static mc_status start_thread(mc_service *s, mc_err *err) {
    int rc = pthread_create(&s->thread, NULL, driver_main, s);
    if (rc != 0)
        return mc_err_set(err, MC_ERR_IO, "service: cannot start the driver thread: %s",
                          strerror(rc));
    return MC_OK;
}

mc_status mc_service_start_runner(const mc_step_runner *runner, const mc_engine_opts *eopts,
                                  mc_service **out, mc_err *err) {
    if (!out) return mc_err_set(err, MC_ERR_ARG, "mc_service_start_runner: out is NULL");
    *out = NULL;
    if (!runner) return mc_err_set(err, MC_ERR_ARG, "mc_service_start_runner: no runner");
    mc_service *s = NULL;
    mc_status st = service_new(eopts, &s, err);
    if (st != MC_OK) return st;
    s->runner = *runner;
    s->quiet = true;
    if ((st = mc_engine_init(&s->runner, &s->eopts, &s->engine, err)) != MC_OK) goto fail;
    s->vocab = s->st.vocab = runner->vocab;
    s->max_len = s->st.max_model_len = mc_engine_max_model_len(s->engine);
    s->st.world_size = 1;
    s->state = MC_SERVICE_READY;
    if ((st = start_thread(s, err)) != MC_OK) goto fail;
    *out = s;
    return MC_OK;
fail:
    service_free(s);
    return st;
}

mc_status mc_service_start(const mc_service_opts *opts, mc_service **out, mc_err *err) {
    if (!out) return mc_err_set(err, MC_ERR_ARG, "mc_service_start: out is NULL");
    *out = NULL;
    if (!opts) return mc_err_set(err, MC_ERR_ARG, "mc_service_start: no options");
    mc_engine_opts eo = {.max_requests = opts->max_requests,
                         .max_running = opts->max_num_seqs,
                         .max_batch_tokens = opts->max_batch_tokens,
                         .max_model_len = opts->max_model_len};
    if (eo.max_running > MC_STEP_MAX_SEQS)
        return mc_err_set(err, MC_ERR_ARG, "max_num_seqs %u: at most %u", eo.max_running,
                          MC_STEP_MAX_SEQS);
    if (eo.max_requests > (1u << 20))
        return mc_err_set(err, MC_ERR_ARG, "max_requests %u: at most %u", eo.max_requests,
                          1u << 20);
    mc_service *s = NULL;
    mc_status st = service_new(&eo, &s, err);
    if (st != MC_OK) return st;
    s->quiet = opts->quiet;
    s->opts_attach = opts->workers_addr != NULL;
    if ((st = mc_group_init(opts, &s->group, err)) != MC_OK) goto fail;
    s->state = MC_SERVICE_LOADING;
    if ((st = start_thread(s, err)) != MC_OK) goto fail;
    *out = s;
    return MC_OK;
fail:
    service_free(s);
    return st;
}

void mc_service_stop(mc_service *s) {
    if (!s) return;
    atomic_store(&s->stop, true);
    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    service_free(s);
}

bool mc_service_wait_ready(mc_service *s, int timeout_ms) {
    struct timespec until = deadline_ms(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&s->mu);
    while (s->state != MC_SERVICE_READY && s->state != MC_SERVICE_FAILED &&
           s->state != MC_SERVICE_STOPPED) {
        int rc = timeout_ms < 0 ? pthread_cond_wait(&s->state_cv, &s->mu)
                                : pthread_cond_timedwait(&s->state_cv, &s->mu, &until);
        if (rc == ETIMEDOUT) break;
    }
    bool ready = s->state == MC_SERVICE_READY;
    pthread_mutex_unlock(&s->mu);
    return ready;
}

mc_service_state mc_service_get_state(const mc_service *s) {
    mc_service *m = (mc_service *)(uintptr_t)s; /* the lock is not part of the value */
    pthread_mutex_lock(&m->mu);
    mc_service_state st = m->state;
    pthread_mutex_unlock(&m->mu);
    return st;
}

void mc_service_last_error(const mc_service *s, char *buf, size_t cap) {
    if (!buf || !cap) return;
    mc_service *m = (mc_service *)(uintptr_t)s;
    pthread_mutex_lock(&m->mu);
    snprintf(buf, cap, "%s", m->last_error);
    pthread_mutex_unlock(&m->mu);
}

void mc_service_get_stats(const mc_service *s, mc_service_stats *out) {
    mc_service *m = (mc_service *)(uintptr_t)s;
    pthread_mutex_lock(&m->mu);
    *out = m->st;
    out->state = m->state;
    pthread_mutex_unlock(&m->mu);
}
