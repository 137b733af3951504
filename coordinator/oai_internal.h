/* oai_internal.h - shared between oai.c (opening, request parsing) and
 * oai_run.c (running a request: detokenization, stop strings, the
 * response and chunk shapes). Not a public header. */
#ifndef MC_OAI_INTERNAL_H
#define MC_OAI_INTERNAL_H

#include "chat.h"
#include "engine.h"
#include "oai.h"
#include "sampler.h"
#include "service.h"
#include "tokenizer.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define OAI_MAX_STOPS 4           /* stop strings of one request (OpenAI's bound) */
#define OAI_MAX_STOP_BYTES 256    /* one stop string */
#define OAI_MAX_LOGIT_BIAS 1024   /* logit_bias entries */
#define OAI_DEFAULT_MAX_TOKENS 16 /* completions, as OpenAI */

struct mc_oai {
    mc_service *service; /* borrowed */
    mc_tokenizer *tok;
    mc_chat *chat; /* NULL: no chat template */
    char chat_err[768];
    int32_t eos[MC_CHAT_MAX_EOS]; /* (n_eos) the model's end ids */
    size_t n_eos;
    char name[256];
    int64_t created;
    atomic_uint_fast64_t next_id;
    atomic_bool stopping; /* mc_oai_shutdown was called */
};

/* A failure to answer: the HTTP status and the error object's fields. */
typedef struct {
    int status; /* 0: none */
    char msg[768];
    char param[64]; /* "" -> null */
} oai_fail;

/* Sets f (the first failure wins) and returns -1. */
int oai_failf(oai_fail *f, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A parsed, checked request. */
typedef struct {
    bool chat;
    int32_t *prompt; /* (n_prompt) malloc'd */
    uint32_t n_prompt;
    mc_sampler_params sp;
    mc_logit_bias *bias; /* (n_bias) malloc'd; sp.logit_bias points here */
    int n_bias;
    uint32_t max_tokens; /* 0: until the context */
    bool max_given;      /* max_tokens / max_completion_tokens was in the body */
    int32_t stop_ids[MC_ENGINE_MAX_STOP_IDS];
    uint32_t n_stop_ids;
    char *stops[OAI_MAX_STOPS]; /* malloc'd */
    int n_stops;
    int logprobs; /* < 0 off; else top n (0: the chosen token only) */
    bool stream, include_usage;
} oai_req;

/* Parses and checks body for path (chat or not) into *q (free with
 * oai_req_free, also after a failure). -1 with f set on a bad request. */
int oai_req_parse(mc_oai *a, bool chat, const char *body, size_t len, oai_req *q, oai_fail *f);
void oai_req_free(oai_req *q);

/* The error body for f; malloc'd, NULL when memory ran out. */
char *oai_fail_body(const oai_fail *f);

/* Serialises j (stolen: decref'd here) compactly; malloc'd or NULL. */
char *oai_dump(json_t *j);

#endif
