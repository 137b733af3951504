/* oai.c - the OpenAI-compatible API (oai.h): opening over a model folder,
 * and parsing / checking request bodies into engine requests. Running a
 * request and the response shapes are in oai_run.c.
 *
 * Parameters (docs/serving.md, "HTTP API"): model (the served id or
 * absent), prompt (a string or an array of token ids) or messages (chat,
 * rendered by the model's template), max_tokens / max_completion_tokens,
 * temperature, top_p, top_k, min_p, seed, stop (a string or <= 4 strings),
 * stop_token_ids, repetition / presence / frequency_penalty, logit_bias,
 * logprobs (completions: int; chat: bool + top_logprobs), n (1 only),
 * stream, stream_options.include_usage, ignore_eos (vLLM's); echo / best_of / suffix / tools
 * are refused unless they have their default. Unknown keys are ignored.
 */
#define _GNU_SOURCE /* open_memstream, getaddrinfo, sigaction, strdup */
#include "oai_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int oai_failf(oai_fail *f, int status, const char *param, const char *fmt, ...) {
    if (f->status) return -1;
    f->status = status;
    snprintf(f->param, sizeof f->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    return -1;
}

char *oai_dump(json_t *j) {
    if (!j) return NULL;
    char *s = json_dumps(j, JSON_COMPACT); /* UTF-8 as it is */
    json_decref(j);
    return s;
}

static const char *error_type(int status) {
    switch (status) {
    case 401:
        return "authentication_error";
    case 404:
        return "not_found_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static const char *error_code(int status) {
    switch (status) {
    case 401:
        return "invalid_api_key";
    case 404:
        return "not_found";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_exceeded";
    default:
        return NULL;
    }
}

char *mc_oai_error_body(int status, const char *msg, const char *param) {
    json_t *e =
        json_pack("{s:s, s:s, s:o, s:o}", "message", msg ? msg : "", "type", error_type(status),
                  "param", param && param[0] ? json_string(param) : json_null(), "code",
                  error_code(status) ? json_string(error_code(status)) : json_null());
    return oai_dump(e ? json_pack("{s:o}", "error", e) : NULL);
}

char *oai_fail_body(const oai_fail *f) {
    return mc_oai_error_body(f->status ? f->status : 500, f->msg, f->param);
}

/* ---- opening ---- */

mc_status mc_oai_open(const mc_oai_opts *opts, mc_oai **out, mc_err *err) {
    *out = NULL;
    if (!opts || !opts->service || !opts->model_dir)
        return mc_err_set(err, MC_ERR_ARG, "mc_oai_open: a service and a model folder are needed");
    mc_oai *a = calloc(1, sizeof *a);
    if (!a) return mc_err_set(err, MC_ERR_NOMEM, "out of memory opening the API");
    a->service = opts->service;
    a->created = (int64_t)time(NULL);
    atomic_init(&a->next_id, 1);
    atomic_init(&a->stopping, false);
    mc_status st = mc_tokenizer_load(opts->model_dir, &a->tok, err);
    if (st != MC_OK) goto fail;
    mc_err cerr;
    mc_err_clear(&cerr);
    st = mc_chat_load(opts->model_dir, &a->chat, &cerr);
    if (st == MC_ERR_NOT_FOUND || st == MC_ERR_UNSUPPORTED) { /* completions only */
        a->chat = NULL; /* clients are told why, without the server's paths */
        snprintf(a->chat_err, sizeof a->chat_err, "%s",
                 st == MC_ERR_NOT_FOUND
                     ? "no chat_template in its tokenizer_config.json"
                     : "its chat template uses Jinja2 features this server does not support");
    } else if (st != MC_OK) {
        mc_err_set(err, st, "%s", cerr.msg);
        goto fail;
    }
    mc_err_clear(&cerr);
    st = mc_chat_eos_ids(opts->model_dir, a->eos, MC_CHAT_MAX_EOS, &a->n_eos, &cerr);
    if (st == MC_ERR_NOT_FOUND) { /* no generation_config.json: the tokenizer's EOS */
        a->n_eos = 0;
        if (mc_tokenizer_eos_id(a->tok) >= 0) a->eos[a->n_eos++] = mc_tokenizer_eos_id(a->tok);
    } else if (st != MC_OK) {
        mc_err_set(err, st, "%s", cerr.msg);
        goto fail;
    }
    if (opts->model_name && opts->model_name[0]) {
        snprintf(a->name, sizeof a->name, "%s", opts->model_name);
    } else {
        size_t n = strlen(opts->model_dir);
        while (n > 1 && opts->model_dir[n - 1] == '/')
            n--;
        size_t b = n;
        while (b > 0 && opts->model_dir[b - 1] != '/')
            b--;
        snprintf(a->name, sizeof a->name, "%.*s", (int)(n - b), opts->model_dir + b);
    }
    *out = a;
    return MC_OK;
fail:
    mc_oai_close(a);
    return st;
}

void mc_oai_close(mc_oai *a) {
    if (!a) return;
    mc_tokenizer_free(a->tok);
    mc_chat_free(a->chat);
    free(a);
}

const char *mc_oai_model_name(const mc_oai *a) {
    return a->name;
}

void mc_oai_shutdown(mc_oai *a) {
    atomic_store(&a->stopping, true);
}

mc_service *mc_oai_service(mc_oai *a) {
    return a->service;
}

char *mc_oai_models_body(mc_oai *a) {
    mc_service_stats ss;
    mc_service_get_stats(a->service, &ss);
    json_t *m = json_pack("{s:s, s:s, s:I, s:s, s:I}", "id", a->name, "object", "model", "created",
                          (json_int_t)a->created, "owned_by", "moecluster", "max_model_len",
                          (json_int_t)ss.max_model_len);
    return oai_dump(m ? json_pack("{s:s, s:[o]}", "object", "list", "data", m) : NULL);
}

/* ---- parsing ---- */

void oai_req_free(oai_req *q) {
    free(q->prompt);
    free(q->bias);
    for (int i = 0; i < q->n_stops; i++)
        free(q->stops[i]);
    memset(q, 0, sizeof *q);
}

/* The value of key, or NULL when absent or null. */
static json_t *opt(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static int get_num(json_t *o, const char *key, double *out, oai_fail *f) {
    json_t *v = opt(o, key);
    if (!v) return 0;
    if (!json_is_number(v)) return oai_failf(f, 400, key, "%s must be a number", key);
    *out = json_number_value(v);
    if (!isfinite(*out)) return oai_failf(f, 400, key, "%s must be finite", key);
    return 1;
}

static int get_int(json_t *o, const char *key, long long lo, long long hi, long long *out,
                   oai_fail *f) {
    json_t *v = opt(o, key);
    if (!v) return 0;
    if (!json_is_integer(v)) return oai_failf(f, 400, key, "%s must be an integer", key);
    *out = json_integer_value(v);
    if (*out < lo || *out > hi)
        return oai_failf(f, 400, key, "%s must be in [%lld, %lld], got %lld", key, lo, hi, *out);
    return 1;
}

static int get_bool(json_t *o, const char *key, bool *out, oai_fail *f) {
    json_t *v = opt(o, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) return oai_failf(f, 400, key, "%s must be a boolean", key);
    *out = json_is_true(v);
    return 1;
}

/* The prompt of a completion: a string (encoded with the tokenizer's
 * special tokens, as vLLM does) or an array of token ids. */
static int parse_prompt(mc_oai *a, json_t *body, oai_req *q, oai_fail *f) {
    json_t *p = opt(body, "prompt");
    if (!p) return oai_failf(f, 400, "prompt", "prompt is required");
    if (json_is_string(p)) {
        mc_err e;
        mc_err_clear(&e);
        size_t n = 0;
        if (mc_tokenizer_encode(a->tok, json_string_value(p), json_string_length(p), 1, &q->prompt,
                                &n, &e) != MC_OK)
            return oai_failf(f, e.status == MC_ERR_NOMEM ? 500 : 400, "prompt", "prompt: %s",
                             e.msg);
        if (n > UINT32_MAX)
            return oai_failf(f, 400, "prompt", "prompt is too long (%zu tokens)", n);
        q->n_prompt = (uint32_t)n;
        return 0;
    }
    if (!json_is_array(p))
        return oai_failf(f, 400, "prompt", "prompt must be a string or an array of token ids");
    size_t n = json_array_size(p);
    if (n == 0) return oai_failf(f, 400, "prompt", "prompt is empty");
    if (n > (size_t)1 << 24)
        return oai_failf(f, 400, "prompt", "prompt is too long (%zu tokens)", n);
    for (size_t i = 0; i < n; i++)
        if (!json_is_integer(json_array_get(p, i)))
            return oai_failf(f, 400, "prompt",
                             "prompt must be a string or an array of token ids (element %zu is "
                             "not an integer; lists of prompts are not supported)",
                             i);
    q->prompt = mc_malloc_n(n, sizeof *q->prompt);
    if (!q->prompt) return oai_failf(f, 500, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_int_t id = json_integer_value(json_array_get(p, i));
        if (id < 0 || id >= INT32_MAX)
            return oai_failf(f, 400, "prompt", "prompt: token id %lld at %zu is out of range",
                             (long long)id, i);
        q->prompt[i] = (int32_t)id;
    }
    q->n_prompt = (uint32_t)n;
    return 0;
}

/* A chat's messages, with text-part arrays joined into strings, rendered
 * with the template and encoded without added special tokens (the
 * template writes them). */
static int parse_messages(mc_oai *a, json_t *body, oai_req *q, oai_fail *f) {
    if (!a->chat)
        return oai_failf(f, 400, "messages",
                         "this model has no chat template to use (%.500s); use /v1/completions",
                         a->chat_err);
    json_t *m = opt(body, "messages");
    if (!json_is_array(m) || json_array_size(m) == 0)
        return oai_failf(f, 400, "messages", "messages must be a non-empty array of messages");
    json_t *msgs = json_deep_copy(m);
    if (!msgs) return oai_failf(f, 500, NULL, "out of memory");
    int rc = -1;
    char *text = NULL;
    size_t i;
    json_t *msg;
    json_array_foreach(msgs, i, msg) {
        json_t *role = json_object_get(msg, "role");
        if (!json_is_object(msg) || !json_is_string(role)) {
            oai_failf(f, 400, "messages", "messages[%zu] must be an object with a string role", i);
            goto out;
        }
        json_t *c = json_object_get(msg, "content");
        if (json_is_array(c)) { /* [{"type": "text", "text": ...}, ...] -> one string */
            size_t cap = 1, len = 0, k;
            json_t *part;
            json_array_foreach(c, k, part) cap += json_string_length(json_object_get(part, "text"));
            char *s = malloc(cap);
            if (!s) {
                oai_failf(f, 500, NULL, "out of memory");
                goto out;
            }
            json_array_foreach(c, k, part) {
                json_t *t = json_object_get(part, "text");
                if (!json_is_string(json_object_get(part, "type")) ||
                    strcmp(json_string_value(json_object_get(part, "type")), "text") != 0 ||
                    !json_is_string(t)) {
                    free(s);
                    oai_failf(f, 400, "messages",
                              "messages[%zu].content[%zu]: only text parts are supported", i, k);
                    goto out;
                }
                memcpy(s + len, json_string_value(t), json_string_length(t));
                len += json_string_length(t);
            }
            json_t *js = json_stringn(s, len);
            free(s);
            if (!js || json_object_set_new(msg, "content", js) != 0) {
                oai_failf(f, 400, "messages", "messages[%zu].content is not valid UTF-8", i);
                goto out;
            }
        } else if (c && !json_is_string(c) && !json_is_null(c)) {
            oai_failf(f, 400, "messages",
                      "messages[%zu].content must be a string or an array of text parts", i);
            goto out;
        }
    }
    mc_err e;
    mc_err_clear(&e);
    size_t len = 0, n = 0;
    if (mc_chat_render(a->chat, msgs, 1, NULL, &text, &len, &e) != MC_OK) {
        oai_failf(f, e.status == MC_ERR_NOMEM ? 500 : 400, "messages", "chat template: %s", e.msg);
        goto out;
    }
    if (mc_tokenizer_encode(a->tok, text, len, 0, &q->prompt, &n, &e) != MC_OK) {
        oai_failf(f, e.status == MC_ERR_NOMEM ? 500 : 400, "messages", "messages: %s", e.msg);
        goto out;
    }
    if (n > UINT32_MAX) {
        oai_failf(f, 400, "messages", "messages are too long (%zu tokens)", n);
        goto out;
    }
    q->n_prompt = (uint32_t)n;
    rc = 0;
out:
    free(text);
    json_decref(msgs);
    return rc;
}

static int parse_stops(json_t *body, oai_req *q, oai_fail *f) {
    json_t *s = opt(body, "stop");
    if (!s) return 0;
    json_t *one[1] = {s};
    size_t n = json_is_string(s) ? 1 : json_is_array(s) ? json_array_size(s) : 0;
    if (!json_is_string(s) && !json_is_array(s))
        return oai_failf(f, 400, "stop", "stop must be a string or an array of strings");
    if (n > OAI_MAX_STOPS)
        return oai_failf(f, 400, "stop", "stop: at most %d strings, got %zu", OAI_MAX_STOPS, n);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_is_string(s) ? one[0] : json_array_get(s, i);
        if (!json_is_string(v)) return oai_failf(f, 400, "stop", "stop[%zu] must be a string", i);
        if (json_string_length(v) > OAI_MAX_STOP_BYTES)
            return oai_failf(f, 400, "stop", "stop[%zu] is longer than %d bytes", i,
                             OAI_MAX_STOP_BYTES);
        if (json_string_length(v) == 0) continue;
        q->stops[q->n_stops] = strdup(json_string_value(v));
        if (!q->stops[q->n_stops]) return oai_failf(f, 500, NULL, "out of memory");
        q->n_stops++;
    }
    return 0;
}

static int parse_stop_ids(mc_oai *a, json_t *body, oai_req *q, oai_fail *f) {
    bool ignore_eos = false; /* vLLM's extension: generate past the end ids */
    if (get_bool(body, "ignore_eos", &ignore_eos, f) < 0) return -1;
    for (size_t i = 0; i < a->n_eos && !ignore_eos; i++)
        q->stop_ids[q->n_stop_ids++] = a->eos[i];
    json_t *s = opt(body, "stop_token_ids");
    if (!s) return 0;
    if (!json_is_array(s))
        return oai_failf(f, 400, "stop_token_ids", "stop_token_ids must be an array of token ids");
    for (size_t i = 0; i < json_array_size(s); i++) {
        json_t *v = json_array_get(s, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= INT32_MAX)
            return oai_failf(f, 400, "stop_token_ids",
                             "stop_token_ids[%zu] must be a non-negative token id", i);
        if (q->n_stop_ids >= MC_ENGINE_MAX_STOP_IDS)
            return oai_failf(f, 400, "stop_token_ids", "stop_token_ids: at most %u ids",
                             MC_ENGINE_MAX_STOP_IDS - (unsigned)a->n_eos);
        q->stop_ids[q->n_stop_ids++] = (int32_t)json_integer_value(v);
    }
    return 0;
}

static int parse_bias(json_t *body, oai_req *q, oai_fail *f) {
    json_t *b = opt(body, "logit_bias");
    if (!b) return 0;
    if (!json_is_object(b))
        return oai_failf(f, 400, "logit_bias", "logit_bias must be an object {token id: bias}");
    size_t n = json_object_size(b);
    if (n > OAI_MAX_LOGIT_BIAS)
        return oai_failf(f, 400, "logit_bias", "logit_bias: at most %d entries",
                         OAI_MAX_LOGIT_BIAS);
    if (n == 0) return 0;
    q->bias = mc_calloc_n(n, sizeof *q->bias);
    if (!q->bias) return oai_failf(f, 500, NULL, "out of memory");
    const char *key;
    json_t *v;
    json_object_foreach(b, key, v) {
        char *end = NULL;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (!key[0] || key[0] == '-' || key[0] == '+' || key[0] == ' ' || *end || errno ||
            id >= INT32_MAX)
            return oai_failf(f, 400, "logit_bias", "logit_bias: key '%.40s' is not a token id",
                             key);
        if (!json_is_number(v))
            return oai_failf(f, 400, "logit_bias", "logit_bias[%s] must be a number", key);
        q->bias[q->n_bias].id = (int32_t)id;
        q->bias[q->n_bias].bias = (float)json_number_value(v);
        q->n_bias++;
    }
    q->sp.logit_bias = q->bias;
    q->sp.n_logit_bias = q->n_bias;
    return 0;
}

/* Parameters we refuse unless they have their default. */
static int refuse_non_default(json_t *body, bool chat, oai_fail *f) {
    json_t *v;
    long long n = 1;
    if (get_int(body, "n", INT32_MIN, INT32_MAX, &n, f) < 0) return -1;
    if (n != 1) return oai_failf(f, 400, "n", "n must be 1 (one choice per request), got %lld", n);
    if (!chat) {
        if (get_int(body, "best_of", INT32_MIN, INT32_MAX, &n, f) < 0) return -1;
        if (n != 1) return oai_failf(f, 400, "best_of", "best_of is not supported (must be 1)");
        bool echo = false;
        if (get_bool(body, "echo", &echo, f) < 0) return -1;
        if (echo) return oai_failf(f, 400, "echo", "echo is not supported");
        if ((v = opt(body, "suffix")) && !(json_is_string(v) && json_string_length(v) == 0))
            return oai_failf(f, 400, "suffix", "suffix is not supported");
    } else {
        if ((v = opt(body, "tools")) && !(json_is_array(v) && json_array_size(v) == 0))
            return oai_failf(f, 400, "tools", "tools are not supported");
        if ((v = opt(body, "response_format")) &&
            !(json_is_object(v) && json_is_string(json_object_get(v, "type")) &&
              strcmp(json_string_value(json_object_get(v, "type")), "text") == 0))
            return oai_failf(f, 400, "response_format", "only response_format text is supported");
    }
    return 0;
}

/* A seed for a request without one: the clock mixed with a counter
 * (splitmix64's finalizer), so two requests never share a stream. */
static uint64_t fresh_seed(void) {
    static atomic_uint_fast64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t z = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec +
                 0x9E3779B97F4A7C15ull * (atomic_fetch_add(&counter, 1) + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A float parameter: left as it is when absent. */
static int num_field(json_t *o, const char *key, float *dst, oai_fail *f) {
    double d = 0;
    int r = get_num(o, key, &d, f);
    if (r > 0) *dst = (float)d;
    return r < 0 ? -1 : 0;
}

static int parse_sampling(json_t *body, bool chat, oai_req *q, oai_fail *f) {
    mc_sampler_params *p = &q->sp;
    long long i = 0;
    p->temperature = 1.0f; /* OpenAI's default */
    if (num_field(body, "temperature", &p->temperature, f) < 0 ||
        num_field(body, "top_p", &p->top_p, f) < 0 || num_field(body, "min_p", &p->min_p, f) < 0 ||
        num_field(body, "repetition_penalty", &p->repetition_penalty, f) < 0 ||
        num_field(body, "presence_penalty", &p->presence_penalty, f) < 0 ||
        num_field(body, "frequency_penalty", &p->frequency_penalty, f) < 0)
        return -1;
    int r = get_int(body, "top_k", INT32_MIN, INT32_MAX, &i, f);
    if (r < 0) return -1;
    if (r) p->top_k = (int)i;
    r = get_int(body, "seed", INT64_MIN, INT64_MAX, &i, f);
    if (r < 0) return -1;
    if (r)
        p->seed = (uint64_t)i;
    else /* no seed: a different stream each request */
        p->seed = fresh_seed();
    /* logprobs: completions an int (top n), chat a bool + top_logprobs */
    q->logprobs = -1;
    if (!chat) {
        r = get_int(body, "logprobs", 0, MC_LOGPROBS_MAX, &i, f);
        if (r < 0) return -1;
        if (r) q->logprobs = (int)i;
    } else {
        bool lp = false;
        if (get_bool(body, "logprobs", &lp, f) < 0) return -1;
        long long top = 0;
        int has_top = get_int(body, "top_logprobs", 0, MC_LOGPROBS_MAX, &top, f);
        if (has_top < 0) return -1;
        if (has_top && !lp)
            return oai_failf(f, 400, "top_logprobs", "top_logprobs needs logprobs: true");
        if (lp) q->logprobs = (int)top;
    }
    p->logprobs = q->logprobs;
    return parse_bias(body, q, f);
}

int oai_req_parse(mc_oai *a, bool chat, const char *body, size_t len, oai_req *q, oai_fail *f) {
    memset(q, 0, sizeof *q);
    q->chat = chat;
    q->sp = mc_sampler_defaults();
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        return oai_failf(f, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)",
                         je.text, je.line, je.column);
    int rc = -1;
    if (!json_is_object(j)) {
        oai_failf(f, 400, NULL, "the body must be a JSON object");
        goto out;
    }
    json_t *m = opt(j, "model");
    if (m && !json_is_string(m)) {
        oai_failf(f, 400, "model", "model must be a string");
        goto out;
    }
    if (m && strcmp(json_string_value(m), a->name) != 0) {
        oai_failf(f, 404, "model", "the model '%.200s' does not exist (this server serves '%s')",
                  json_string_value(m), a->name);
        goto out;
    }
    if (get_bool(j, "stream", &q->stream, f) < 0) goto out;
    json_t *so = opt(j, "stream_options");
    if (so && !json_is_object(so)) {
        oai_failf(f, 400, "stream_options", "stream_options must be an object");
        goto out;
    }
    if (so && get_bool(so, "include_usage", &q->include_usage, f) < 0) goto out;
    if (refuse_non_default(j, chat, f) < 0 || parse_sampling(j, chat, q, f) < 0 ||
        parse_stops(j, q, f) < 0 || parse_stop_ids(a, j, q, f) < 0)
        goto out;
    long long mt = 0;
    const char *mt_key =
        chat && opt(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    int has_mt = get_int(j, mt_key, INT64_MIN, INT64_MAX, &mt, f);
    if (has_mt < 0) goto out;
    if (has_mt && (mt <= 0 || mt > UINT32_MAX)) {
        oai_failf(f, 400, mt_key, "%s must be a positive integer, got %lld", mt_key, mt);
        goto out;
    }
    q->max_given = has_mt > 0;
    q->max_tokens = has_mt ? (uint32_t)mt : chat ? 0 : OAI_DEFAULT_MAX_TOKENS;
    if ((chat ? parse_messages(a, j, q, f) : parse_prompt(a, j, q, f)) < 0) goto out;
    if (q->n_prompt == 0) {
        oai_failf(f, 400, chat ? "messages" : "prompt", "the prompt is empty (0 tokens)");
        goto out;
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}
