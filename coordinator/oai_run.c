/* oai_run.c - running one API request over the service (oai.h):
 * submitting, incremental detokenization (an incomplete UTF-8 tail is held
 * back), stop strings (mc_stop_str_scan: on a match the request is
 * cancelled and the text cut), and OpenAI's shapes: text_completion /
 * chat.completion, their stream chunks, `usage`, `logprobs`, errors.
 */
#define _GNU_SOURCE /* open_memstream, getaddrinfo, sigaction, strdup */
#include "oai_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HOLD_MAX_TOKENS 16 /* pending tokens whose text ends in U+FFFD, held at most */

/* One generated token's logprobs. */
typedef struct {
    int32_t token;
    double lp;
    int n_top;
    int32_t top_ids[MC_LOGPROBS_MAX];
    double top_lp[MC_LOGPROBS_MAX];
} gen_lp;

/* The state of one running request. */
typedef struct {
    mc_oai *a;
    oai_req q;
    mc_service_req *r;
    char id[48];
    int64_t created;
    int32_t *ids;                /* (n_ids, cap_ids) generated tokens, stop id included */
    size_t n_ids, cap_ids, pend; /* ids[pend..] are not in text yet */
    gen_lp *lps;                 /* (n_lps) when logprobs are on */
    size_t n_lps, cap_lps, lp_sent;
    char *text; /* (len, cap) the output text so far (NUL-terminated) */
    size_t len, cap, checked, safe, sent;
    mc_engine_finish finish; /* GO_ON until done */
    bool done, started, finished_sent, over;
    oai_fail err; /* set when the request ended with an error */
} gen;

struct mc_oai_stream {
    gen g;
};

static bool is_stop_id(const gen *g, int32_t t) {
    for (uint32_t i = 0; i < g->q.n_stop_ids; i++)
        if (g->q.stop_ids[i] == t) return true;
    return false;
}

/* Decodes ids (n) into a malloc'd string, dropping ids the tokenizer does
 * not know (a model vocabulary padded past the tokenizer's). */
static char *decode(const mc_oai *a, const int32_t *ids, size_t n, size_t *len) {
    int32_t v = mc_tokenizer_vocab_size(a->tok);
    int32_t *k = mc_malloc_n(n ? n : 1, sizeof *k);
    if (!k) return NULL;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < v) k[m++] = ids[i];
    char *s = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (mc_tokenizer_decode(a->tok, k, m, &s, len, &e) != MC_OK) s = NULL;
    free(k);
    return s;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *n = realloc(*p, c * elem);
    if (!n) return -1;
    *p = n;
    *cap = c;
    return 0;
}

static bool ends_fffd(const char *s, size_t n) {
    return n >= 3 && memcmp(s + n - 3, "\xEF\xBF\xBD", 3) == 0;
}

static int append_text(gen *g, const char *s, size_t n) {
    if (grow((void **)&g->text, &g->cap, g->len + n + 1, 1) < 0) return -1;
    memcpy(g->text + g->len, s, n);
    g->len += n;
    g->text[g->len] = 0;
    return 0;
}

/* Moves the pending ids into the text: all of them when final or when
 * their text does not end in U+FFFD (an incomplete character may still
 * complete; vLLM's rule). A run of HOLD_MAX_TOKENS pending tokens that
 * still ends in U+FFFD is cut at the last split whose two halves decode
 * to the text of the whole, and the first half goes out. */
static int flush_text(gen *g, bool final) {
    size_t np = g->n_ids - g->pend, n = 0;
    if (np == 0) return 0;
    char *s = decode(g->a, g->ids + g->pend, np, &n);
    if (!s) return -1;
    int rc = 0;
    if (final || !ends_fffd(s, n)) {
        rc = append_text(g, s, n);
        g->pend = g->n_ids;
    } else if (np >= HOLD_MAX_TOKENS) {
        size_t k = np - 1;
        for (; k >= 1; k--) {
            size_t la = 0, lb = 0;
            char *a = decode(g->a, g->ids + g->pend, k, &la);
            char *b = a ? decode(g->a, g->ids + g->pend + k, np - k, &lb) : NULL;
            bool same = b && la + lb == n && memcmp(a, s, la) == 0 && memcmp(b, s + la, lb) == 0;
            if (!a || !b)
                rc = -1;
            else if (same)
                rc = append_text(g, a, la);
            free(a);
            free(b);
            if (same || rc < 0) break;
        }
        if (k == 0 && rc == 0) { /* no split keeps the text: let it all go */
            rc = append_text(g, s, n);
            g->pend = g->n_ids;
        } else if (rc == 0) {
            g->pend += k;
        }
    }
    free(s);
    return rc;
}

/* Takes one event into the state. */
static int take_event(gen *g, const mc_service_event *ev) {
    if (g->done) return 0; /* e.g. the abort after a stop string */
    if (ev->token >= 0) {
        if (grow((void **)&g->ids, &g->cap_ids, g->n_ids + 1, sizeof *g->ids) < 0) return -1;
        bool eos = ev->finish == MC_ENGINE_STOP && is_stop_id(g, ev->token);
        g->ids[g->n_ids++] = ev->token;
        if (eos) /* counted, but its text is not part of the output (as vLLM) */
            g->pend = g->n_ids;
        if (ev->has_logprobs && g->q.logprobs >= 0 && !eos) {
            if (grow((void **)&g->lps, &g->cap_lps, g->n_lps + 1, sizeof *g->lps) < 0) return -1;
            gen_lp *l = &g->lps[g->n_lps++];
            l->token = ev->token;
            l->lp = ev->lp.token_logprob;
            l->n_top = ev->lp.n_top < g->q.logprobs ? ev->lp.n_top : g->q.logprobs;
            memcpy(l->top_ids, ev->lp.top_ids, sizeof l->top_ids);
            memcpy(l->top_lp, ev->lp.top_logprobs, sizeof l->top_lp);
        }
    }
    bool final = ev->finish != MC_ENGINE_GO_ON;
    if (flush_text(g, final) < 0) return -1;
    if (g->q.n_stops > 0) {
        size_t stop_at = 0, safe = 0;
        int k = mc_stop_str_scan(g->text ? g->text : "", g->len, g->checked,
                                 (const char *const *)g->q.stops, g->q.n_stops, &safe, &stop_at);
        if (k >= 0) {
            g->len = stop_at;
            g->text[g->len] = 0;
            g->safe = g->len;
            g->finish = MC_ENGINE_STOP;
            g->done = true;
            mc_service_req_cancel(g->r);
            return 0;
        }
        g->checked = g->len;
        g->safe = safe;
    } else {
        g->safe = g->len;
    }
    if (final) {
        g->safe = g->len;
        g->finish = ev->finish;
        g->done = true;
        if (ev->finish == MC_ENGINE_ERROR)
            oai_failf(&g->err, 500, NULL, "the request failed: %s",
                      ev->msg[0] ? ev->msg : "a step failed");
        else if (ev->finish == MC_ENGINE_ABORT)
            oai_failf(&g->err, 503, NULL, "the request was aborted (the service is stopping)");
    }
    return 0;
}

/* Waits for the next event (blocking), then takes every event already
 * there. -1 when memory ran out. */
static int pump(gen *g) {
    mc_service_event ev;
    int got;
    while ((got = mc_service_req_next(g->r, &ev, 250)) == 0)
        if (atomic_load(&g->a->stopping)) {
            mc_service_req_cancel(g->r);
            g->done = true;
            g->finish = MC_ENGINE_ABORT;
            oai_failf(&g->err, 503, NULL, "the server is shutting down");
            return 0;
        }
    while (got == 1) {
        if (take_event(g, &ev) < 0) return -1;
        if (g->done) return 0;
        got = mc_service_req_next(g->r, &ev, 0);
    }
    if (got < 0 && !g->done) { /* ended without a last event: should not happen */
        g->done = true;
        g->finish = MC_ENGINE_ERROR;
        oai_failf(&g->err, 500, NULL, "the request ended without a result");
    }
    return 0;
}

static void gen_free(gen *g) {
    mc_service_req_free(g->r);
    oai_req_free(&g->q);
    free(g->ids);
    free(g->lps);
    free(g->text);
}

/* Parses, checks against the service and submits. Returns 0, or -1 with f
 * set. */
static int gen_start(mc_oai *a, const char *path, const char *body, size_t len, gen *g,
                     oai_fail *f) {
    memset(g, 0, sizeof *g);
    g->a = a;
    bool chat;
    if (path && strcmp(path, "/v1/completions") == 0)
        chat = false;
    else if (path && strcmp(path, "/v1/chat/completions") == 0)
        chat = true;
    else
        return oai_failf(f, 404, NULL, "unknown path '%.100s'", path ? path : "");
    if (oai_req_parse(a, chat, body, len, &g->q, f) < 0) return -1;
    if (atomic_load(&a->stopping)) return oai_failf(f, 503, NULL, "the server is shutting down");
    mc_service_stats ss;
    mc_service_get_stats(a->service, &ss);
    if (ss.state != MC_SERVICE_READY)
        return oai_failf(f, 503, NULL, "the service is %s; try again later",
                         mc_service_state_name(ss.state));
    const char *pp = chat ? "messages" : "prompt";
    if (ss.max_model_len && g->q.n_prompt >= ss.max_model_len)
        return oai_failf(f, 400, pp,
                         "this model's maximum context length is %u tokens; the prompt has %u "
                         "(no room to generate)",
                         ss.max_model_len, g->q.n_prompt);
    uint32_t room = ss.max_model_len - g->q.n_prompt;
    const char *mt = chat ? "max_completion_tokens" : "max_tokens";
    if (g->q.max_tokens > room) {
        if (g->q.max_given)
            return oai_failf(f, 400, mt,
                             "this model's maximum context length is %u tokens; %u in the "
                             "prompt leave %u, and %u were asked for",
                             ss.max_model_len, g->q.n_prompt, room, g->q.max_tokens);
        g->q.max_tokens = room; /* the default 16 past the context */
    }
    mc_err e;
    mc_err_clear(&e);
    if (mc_sampler_params_check(&g->q.sp, (int)ss.vocab, &e) != MC_OK) {
        char param[64] = "";
        sscanf(e.msg, "%63[a-z_]", param);
        return oai_failf(f, 400, param[0] ? param : NULL, "%s", e.msg);
    }
    mc_engine_request er = {.prompt = g->q.prompt,
                            .n_prompt = g->q.n_prompt,
                            .sampling = g->q.sp,
                            .max_tokens = g->q.max_tokens,
                            .stop_ids = g->q.stop_ids,
                            .n_stop_ids = g->q.n_stop_ids};
    mc_status st = mc_service_submit(a->service, &er, &g->r, &e);
    if (st != MC_OK) {
        int code = st == MC_ERR_ARG        ? 400
                   : st == MC_ERR_OVERFLOW ? 429
                   : st == MC_ERR_IO       ? 503
                                           : 500;
        return oai_failf(f, code, NULL, "%s", e.msg[0] ? e.msg : mc_status_str(st));
    }
    unsigned long long n = atomic_fetch_add(&a->next_id, 1);
    snprintf(g->id, sizeof g->id, "%s-%llu", chat ? "chatcmpl" : "cmpl", n);
    g->created = (int64_t)time(NULL);
    return 0;
}

/* ---- shapes ---- */

/* A token's text (malloc'd JSON string), or "" when it has none. */
static json_t *tok_text(const mc_oai *a, int32_t id) {
    size_t n = 0;
    char *s = decode(a, &id, 1, &n);
    json_t *j = s ? json_stringn(s, n) : NULL;
    free(s);
    return j ? j : json_string("");
}

static json_t *bytes_of(json_t *str) {
    json_t *b = json_array();
    const unsigned char *s = (const unsigned char *)json_string_value(str);
    for (size_t i = 0; b && s && i < json_string_length(str); i++)
        json_array_append_new(b, json_integer(s[i]));
    return b;
}

/* logprobs of entries [from, to): completions' {tokens, token_logprobs,
 * top_logprobs, text_offset} or chat's {content: [...]}. off is the text
 * offset of entry `from`. */
static json_t *logprobs_json(const gen *g, size_t from, size_t to, size_t off) {
    if (g->q.logprobs < 0) return json_null();
    if (g->q.chat) {
        json_t *content = json_array();
        for (size_t i = from; content && i < to; i++) {
            const gen_lp *l = &g->lps[i];
            json_t *t = tok_text(g->a, l->token), *tops = json_array();
            for (int k = 0; tops && k < l->n_top; k++) {
                json_t *tt = tok_text(g->a, l->top_ids[k]);
                json_array_append_new(tops, json_pack("{s:O, s:f, s:o}", "token", tt, "logprob",
                                                      l->top_lp[k], "bytes", bytes_of(tt)));
                json_decref(tt);
            }
            json_array_append_new(content,
                                  json_pack("{s:O, s:f, s:o, s:o}", "token", t, "logprob", l->lp,
                                            "bytes", bytes_of(t), "top_logprobs", tops));
            json_decref(t);
        }
        return json_pack("{s:o}", "content", content);
    }
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (size_t i = from; i < to; i++) {
        const gen_lp *l = &g->lps[i];
        json_t *t = tok_text(g->a, l->token), *top = json_object();
        for (int k = 0; top && k < l->n_top; k++) {
            json_t *tt = tok_text(g->a, l->top_ids[k]);
            json_object_set_new(top, json_string_value(tt), json_real(l->top_lp[k]));
            json_decref(tt);
        }
        json_array_append_new(offs, json_integer((json_int_t)off));
        off += json_string_length(t);
        json_array_append_new(toks, t);
        json_array_append_new(lps, json_real(l->lp));
        json_array_append_new(tops, top);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", toks, "token_logprobs", lps, "top_logprobs",
                     tops, "text_offset", offs);
}

static json_t *usage_json(const gen *g) {
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)g->q.n_prompt,
                     "completion_tokens", (json_int_t)g->n_ids, "total_tokens",
                     (json_int_t)(g->q.n_prompt + g->n_ids));
}

static const char *finish_word(mc_engine_finish f) {
    return f == MC_ENGINE_LENGTH ? "length" : "stop";
}

/* The non-streamed response of a finished request. */
static char *response_body(const gen *g) {
    json_t *text = json_stringn(g->text ? g->text : "", g->len);
    if (!text) text = json_string("");
    json_t *lp = logprobs_json(g, 0, g->n_lps, 0), *choice;
    if (g->q.chat)
        choice =
            json_pack("{s:i, s:{s:s, s:o}, s:o, s:s}", "index", 0, "message", "role", "assistant",
                      "content", text, "logprobs", lp, "finish_reason", finish_word(g->finish));
    else
        choice = json_pack("{s:i, s:o, s:o, s:s}", "index", 0, "text", text, "logprobs", lp,
                           "finish_reason", finish_word(g->finish));
    return oai_dump(json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", g->id, "object",
                              g->q.chat ? "chat.completion" : "text_completion", "created",
                              (json_int_t)g->created, "model", g->a->name, "choices", choice,
                              "usage", usage_json(g)));
}

int mc_oai_begin(mc_oai *a, const char *path, const char *body, size_t len,
                 mc_oai_stream **out_stream, char **out_body) {
    *out_body = NULL;
    if (out_stream) *out_stream = NULL;
    oai_fail f = {0};
    mc_oai_stream *s = calloc(1, sizeof *s);
    if (!s) return 500;
    gen *g = &s->g;
    if (gen_start(a, path, body ? body : "", body ? len : 0, g, &f) < 0) goto fail;
    if (g->q.stream) {
        if (!out_stream) {
            oai_failf(&f, 400, "stream", "stream: true is not supported here");
            goto fail;
        }
        *out_stream = s;
        return 200;
    }
    while (!g->done)
        if (pump(g) < 0) {
            oai_failf(&f, 500, NULL, "out of memory");
            goto fail;
        }
    if (g->err.status) {
        f = g->err;
        goto fail;
    }
    *out_body = response_body(g);
    gen_free(g);
    free(s);
    return *out_body ? 200 : 500;
fail:
    *out_body = oai_fail_body(&f);
    gen_free(g);
    free(s);
    return f.status ? f.status : 500;
}

int mc_oai_handle(mc_oai *a, const char *path, const char *body, size_t len, char **out_body) {
    return mc_oai_begin(a, path, body, len, NULL, out_body);
}

/* ---- streaming ---- */

/* Appends "data: TEXT\n\n" to (buf, n, cap); TEXT (malloc'd) is freed. */
static int sse(char **buf, size_t *n, size_t *cap, char *text) {
    if (!text) return -1;
    size_t t = strlen(text);
    if (grow((void **)buf, cap, *n + t + 9, 1) < 0) {
        free(text);
        return -1;
    }
    memcpy(*buf + *n, "data: ", 6);
    memcpy(*buf + *n + 6, text, t);
    memcpy(*buf + *n + 6 + t, "\n\n", 2);
    *n += t + 8;
    (*buf)[*n] = 0;
    free(text);
    return 0;
}

/* A chunk: delta text (n bytes at t; chat's first chunk also has the role),
 * logprobs of entries [from, to), the finish reason when finish. */
static char *chunk(const gen *g, const char *t, size_t n, bool role, size_t from, size_t to,
                   bool finish, size_t off) {
    json_t *text = json_stringn(t ? t : "", n);
    if (!text) text = json_string("");
    json_t *lp = from < to ? logprobs_json(g, from, to, off) : json_null();
    json_t *fr = finish ? json_string(finish_word(g->finish)) : json_null(), *choice;
    if (g->q.chat) {
        json_t *delta = role ? json_pack("{s:s, s:o}", "role", "assistant", "content", text)
                        : (finish && n == 0) ? (json_decref(text), json_object())
                                             : json_pack("{s:o}", "content", text);
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "delta", delta, "logprobs", lp,
                           "finish_reason", fr);
    } else {
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "text", text, "logprobs", lp,
                           "finish_reason", fr);
    }
    json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", g->id, "object",
                          g->q.chat ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)g->created, "model", g->a->name, "choices", choice);
    if (c && g->q.include_usage) json_object_set_new(c, "usage", json_null());
    return oai_dump(c);
}

int mc_oai_stream_next(mc_oai_stream *s, char **out, size_t *out_len) {
    gen *g = &s->g;
    *out = NULL;
    *out_len = 0;
    if (g->over) return 0;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (!g->started && g->q.chat) { /* the role first, at once */
        g->started = true;
        if (sse(&buf, &n, &cap, chunk(g, "", 0, true, 0, 0, false, 0)) < 0) goto nomem;
        *out = buf;
        *out_len = n;
        return 1;
    }
    g->started = true;
    while (!g->done && g->safe == g->sent && g->lp_sent == g->n_lps)
        if (pump(g) < 0) goto nomem;
    if (g->done && g->err.status) {
        if (sse(&buf, &n, &cap, oai_fail_body(&g->err)) < 0) goto nomem;
    } else {
        size_t off = g->sent, upto = g->n_lps; /* logprobs go with their step's text */
        if (g->safe > g->sent || upto > g->lp_sent || g->done) {
            if (sse(&buf, &n, &cap,
                    chunk(g, g->text + g->sent, g->safe - g->sent, false, g->lp_sent, upto, g->done,
                          off)) < 0)
                goto nomem;
            g->sent = g->safe;
            g->lp_sent = upto;
        }
        if (g->done && g->q.include_usage) {
            json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", g->id, "object",
                                  g->q.chat ? "chat.completion.chunk" : "text_completion",
                                  "created", (json_int_t)g->created, "model", g->a->name, "choices",
                                  "usage", usage_json(g));
            if (sse(&buf, &n, &cap, oai_dump(c)) < 0) goto nomem;
        }
    }
    if (g->done) {
        if (sse(&buf, &n, &cap, strdup("[DONE]")) < 0) goto nomem;
        g->over = true;
    }
    *out = buf;
    *out_len = n;
    return 1;
nomem:
    free(buf);
    return -1;
}

void mc_oai_stream_free(mc_oai_stream *s) {
    if (!s) return;
    gen_free(&s->g);
    free(s);
}
