/* http.c - the HTTP server of `serve` (http.h) on libmicrohttpd: one thread
 * per connection, routes, the API key, bodies read up to MC_HTTP_MAX_BODY,
 * server-sent events for streams, /health and /metrics (Prometheus text).
 */
#define _GNU_SOURCE /* open_memstream, getaddrinfo, sigaction, strdup */
#include "http.h"

#include "service.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct mc_http {
    struct MHD_Daemon *d;
    mc_oai *api;
    char key[512]; /* "Bearer KEY", "" when none */
    size_t key_len;
};

/* One request's body as it arrives. */
typedef struct {
    char *body; /* (len, cap) */
    size_t len, cap;
    bool refused; /* a response was queued already (413, 401) */
} req_ctx;

/* One stream's pending bytes. */
typedef struct {
    mc_oai_stream *st;
    char *buf; /* (n) malloc'd; off bytes sent */
    size_t n, off;
} sse_ctx;

/* Queues body (malloc'd, taken; NULL: out of memory -> 500) with its
 * type, and an Allow header when allow is not NULL. */
static enum MHD_Result reply_allow(struct MHD_Connection *c, unsigned status, char *body,
                                   const char *type, const char *allow) {
    static const char oom[] = "{\"error\": {\"message\": \"out of memory\", \"type\": "
                              "\"server_error\", \"param\": null, \"code\": null}}";
    struct MHD_Response *r =
        body ? MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    if (!body) status = 500;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *body,
                             const char *type) {
    return reply_allow(c, status, body, type, NULL);
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *msg) {
    return reply(c, status, mc_oai_error_body((int)status, msg, NULL), "application/json");
}

/* Constant-time: the header equals "Bearer KEY". */
static bool authorized(const mc_http *h, struct MHD_Connection *c) {
    if (!h->key_len) return true;
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!v) return false;
    size_t n = strlen(v);
    unsigned char diff = (unsigned char)(n != h->key_len);
    for (size_t i = 0; i < h->key_len; i++)
        diff |= (unsigned char)(h->key[i] ^ (i < n ? v[i] : 0));
    return diff == 0;
}

/* ---- /health, /metrics ---- */

static enum MHD_Result health(mc_http *h, struct MHD_Connection *c) {
    mc_service *s = mc_oai_service(h->api);
    mc_service_stats ss;
    mc_service_get_stats(s, &ss);
    char why[512] = "";
    if (ss.state != MC_SERVICE_READY) mc_service_last_error(s, why, sizeof why);
    json_t *j = json_pack("{s:s, s:I, s:I, s:I}", "status", mc_service_state_name(ss.state),
                          "worker_pid", (json_int_t)ss.worker_pid, "world_size",
                          (json_int_t)ss.world_size, "restarts", (json_int_t)ss.restarts);
    if (j && why[0]) json_object_set_new(j, "error", json_string(why));
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return reply(c, ss.state == MC_SERVICE_READY ? 200 : 503, body, "application/json");
}

static void hist(FILE *f, const char *name, const char *help, const mc_hist *hs) {
    fprintf(f, "# HELP moecluster:%s %s\n# TYPE moecluster:%s histogram\n", name, help, name);
    uint64_t cum = 0;
    int nb = hs->n_bounds < 0                     ? 0
             : hs->n_bounds > MC_HIST_MAX_BUCKETS ? MC_HIST_MAX_BUCKETS
                                                  : hs->n_bounds;
    for (int i = 0; i < nb; i++) {
        cum += hs->counts[i];
        fprintf(f, "moecluster:%s_bucket{le=\"%g\"} %llu\n", name, hs->bounds[i],
                (unsigned long long)cum);
    }
    cum += hs->counts[nb];
    fprintf(f, "moecluster:%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    fprintf(f, "moecluster:%s_sum %.9g\nmoecluster:%s_count %llu\n", name, hs->sum, name,
            (unsigned long long)hs->count);
}

static void gauge(FILE *f, const char *name, const char *help, double v) {
    fprintf(f, "# HELP moecluster:%s %s\n# TYPE moecluster:%s gauge\nmoecluster:%s %.9g\n", name,
            help, name, name, v);
}

static void counter(FILE *f, const char *name, const char *help, uint64_t v) {
    fprintf(f, "# HELP moecluster:%s %s\n# TYPE moecluster:%s counter\nmoecluster:%s %llu\n", name,
            help, name, name, (unsigned long long)v);
}

static enum MHD_Result metrics(mc_http *h, struct MHD_Connection *c) {
    mc_service_stats ss;
    mc_service_get_stats(mc_oai_service(h->api), &ss);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return reply(c, 500, NULL, "application/json");
    gauge(f, "num_requests_running", "Requests running on the workers.", ss.engine.running);
    gauge(f, "num_requests_waiting", "Requests waiting to run.", ss.engine.waiting);
    gauge(f, "kv_cache_usage_perc", "Fraction of KV cache blocks in use (0..1).",
          ss.engine.kv_usage);
    gauge(f, "service_ready", "1 when serving, 0 while loading, restarting or failed.",
          ss.state == MC_SERVICE_READY);
    gauge(f, "worker_pid", "Process id of the worker group's rank 0 (0 while none).",
          ss.worker_pid);
    counter(f, "prompt_tokens_total", "Prompt tokens prefilled.", ss.engine.prompt_tokens_total);
    counter(f, "generation_tokens_total", "Tokens generated.", ss.engine.generation_tokens_total);
    counter(f, "num_preemptions_total", "Requests preempted (recomputed later).",
            ss.engine.preemptions_total);
    counter(f, "worker_restarts_total", "Worker group restarts.", ss.restarts);
    counter(f, "engine_steps_total", "Steps the engine ran on the workers.", ss.engine.steps_total);
    counter(f, "candidate_steps_total",
            "Steps answered with the rows' best candidates (greedy picks, or top_k <= 64 draws) "
            "instead of whole logit rows.",
            ss.engine.steps_top);
    counter(f, "draw_steps_total",
            "Steps whose draws the workers made from their rows (no top_k; no penalties, bias "
            "or logprobs) instead of sending whole logit rows.",
            ss.engine.steps_draw);
    fprintf(f, "# HELP moecluster:request_success_total Requests finished, by reason.\n"
               "# TYPE moecluster:request_success_total counter\n");
    for (int r = MC_ENGINE_STOP; r < MC_ENGINE_FINISH_COUNT; r++)
        fprintf(f, "moecluster:request_success_total{finished_reason=\"%s\"} %llu\n",
                mc_engine_finish_name((mc_engine_finish)r),
                (unsigned long long)ss.engine.requests_finished[r]);
    hist(f, "time_to_first_token_seconds", "Time to first token.", &ss.ttft);
    hist(f, "inter_token_latency_seconds", "Time between consecutive tokens of a request.",
         &ss.itl);
    hist(f, "e2e_request_latency_seconds", "Submit to the last token.", &ss.e2e);
    if (fclose(f) != 0 || !text) {
        free(text);
        return reply(c, 500, NULL, "application/json");
    }
    return reply(c, 200, text, "text/plain; version=0.0.4; charset=utf-8");
}

/* ---- completions ---- */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    sse_ctx *s = cls;
    if (s->off == s->n) {
        free(s->buf);
        s->buf = NULL;
        s->n = s->off = 0;
        int r = mc_oai_stream_next(s->st, &s->buf, &s->n);
        if (r == 0) return MHD_CONTENT_READER_END_OF_STREAM;
        if (r < 0 || s->n == 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t k = s->n - s->off < max ? s->n - s->off : max;
    memcpy(buf, s->buf + s->off, k);
    s->off += k;
    return (ssize_t)k;
}

static void sse_free(void *cls) {
    sse_ctx *s = cls;
    mc_oai_stream_free(s->st); /* cancels the request when the client went away */
    free(s->buf);
    free(s);
}

static enum MHD_Result completion(mc_http *h, struct MHD_Connection *c, const char *url,
                                  const req_ctx *rq) {
    mc_oai_stream *st = NULL;
    char *body = NULL;
    int status = mc_oai_begin(h->api, url, rq->body ? rq->body : "", rq->len, &st, &body);
    if (!st) return reply(c, (unsigned)status, body, "application/json");
    sse_ctx *s = calloc(1, sizeof *s);
    if (!s) {
        mc_oai_stream_free(st);
        return reply(c, 500, NULL, "application/json");
    }
    s->st = st;
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, s, sse_free);
    if (!r) {
        sse_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ok;
}

/* ---- routing ---- */

typedef enum { R_NONE, R_COMPLETIONS, R_MODELS, R_HEALTH, R_METRICS } route_kind;

static route_kind route(const char *url, bool *post) {
    *post = false;
    if (strcmp(url, "/v1/completions") == 0 || strcmp(url, "/v1/chat/completions") == 0) {
        *post = true;
        return R_COMPLETIONS;
    }
    if (strcmp(url, "/v1/models") == 0) return R_MODELS;
    if (strcmp(url, "/health") == 0) return R_HEALTH;
    if (strcmp(url, "/metrics") == 0) return R_METRICS;
    return R_NONE;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls) {
    (void)version;
    mc_http *h = cls;
    req_ctx *rq = *con_cls;
    bool post;
    route_kind rk = route(url, &post);
    if (!rq) { /* the headers are in: check what can be checked before the body */
        rq = calloc(1, sizeof *rq);
        if (!rq) return MHD_NO;
        *con_cls = rq;
        if (rk == R_NONE) {
            rq->refused = true;
            char msg[256];
            snprintf(msg, sizeof msg, "unknown path '%.100s'", url);
            return reply_error(c, 404, msg);
        }
        bool is_post = strcmp(method, "POST") == 0, is_get = strcmp(method, "GET") == 0;
        if ((post && !is_post) || (!post && !is_get)) {
            rq->refused = true;
            char msg[256];
            snprintf(msg, sizeof msg, "method %.20s is not allowed on %s (use %s)", method, url,
                     post ? "POST" : "GET");
            return reply_allow(c, 405, mc_oai_error_body(405, msg, NULL), "application/json",
                               post ? "POST" : "GET");
        }
        if (rk != R_HEALTH && !authorized(h, c)) {
            rq->refused = true;
            return reply_error(c, 401, "a valid API key is needed (Authorization: Bearer KEY)");
        }
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > MC_HTTP_MAX_BODY) {
            rq->refused = true;
            return reply_error(c, 413, "the request body is larger than 8 MiB");
        }
        return MHD_YES;
    }
    if (*upload_size) { /* more of the body */
        size_t n = *upload_size;
        *upload_size = 0;
        if (rq->refused) return MHD_YES;
        if (rq->len + n > MC_HTTP_MAX_BODY) {
            rq->refused = true;
            return reply_error(c, 413, "the request body is larger than 8 MiB");
        }
        if (rq->len + n + 1 > rq->cap) {
            size_t cap = rq->cap ? rq->cap : 4096;
            while (cap < rq->len + n + 1)
                cap *= 2;
            char *b = realloc(rq->body, cap);
            if (!b) return MHD_NO;
            rq->body = b;
            rq->cap = cap;
        }
        memcpy(rq->body + rq->len, upload, n);
        rq->len += n;
        rq->body[rq->len] = 0;
        return MHD_YES;
    }
    if (rq->refused) return MHD_YES; /* answered already */
    switch (rk) {
    case R_COMPLETIONS:
        return completion(h, c, url, rq);
    case R_MODELS:
        return reply(c, 200, mc_oai_models_body(h->api), "application/json");
    case R_HEALTH:
        return health(h, c);
    case R_METRICS:
        return metrics(h, c);
    default:
        return reply_error(c, 404, "unknown path");
    }
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode why) {
    (void)cls;
    (void)c;
    (void)why;
    req_ctx *rq = *con_cls;
    if (rq) {
        free(rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

mc_status mc_http_start(const mc_http_opts *o, mc_http **out, uint16_t *bound_port, mc_err *err) {
    *out = NULL;
    const char *host = o->host && o->host[0] ? o->host : "127.0.0.1";
    if (o->api_key && strlen(o->api_key) > 400)
        return mc_err_set(err, MC_ERR_ARG, "--api-key is longer than 400 bytes");
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%u", (unsigned)o->port);
    int gr = getaddrinfo(host, port, &hints, &ai);
    if (gr != 0 || !ai) return mc_err_set(err, MC_ERR_ARG, "--host %s: %s", host, gai_strerror(gr));
    mc_http *h = calloc(1, sizeof *h);
    if (!h) {
        freeaddrinfo(ai);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory starting the HTTP server");
    }
    h->api = o->api;
    if (o->api_key && o->api_key[0]) {
        snprintf(h->key, sizeof h->key, "Bearer %s", o->api_key);
        h->key_len = strlen(h->key);
    }
    struct sockaddr_storage sa;
    memcpy(&sa, ai->ai_addr, ai->ai_addrlen < sizeof sa ? ai->ai_addrlen : sizeof sa);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    freeaddrinfo(ai);
    h->d =
        MHD_start_daemon(flags, o->port, NULL, NULL, handler, h, MHD_OPTION_SOCK_ADDR,
                         (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)MC_HTTP_MAX_CONNECTIONS, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                         (size_t)MC_HTTP_MEMORY_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                         MHD_OPTION_NOTIFY_COMPLETED, completed, h, MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return mc_err_set(err, MC_ERR_IO, "cannot listen on %s port %u (in use?)", host,
                          (unsigned)o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    *bound_port = o->port;
    if (di && getsockname(di->listen_fd, (struct sockaddr *)&got, &gl) == 0)
        *bound_port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                      : ((struct sockaddr_in *)&got)->sin_port);
    *out = h;
    return MC_OK;
}

void mc_http_stop(mc_http *h) {
    if (!h) return;
    if (h->d) MHD_stop_daemon(h->d);
    free(h);
}
