/* oai.h - the OpenAI-compatible API over a service (service.h): request
 * bodies in, response bodies out. Shared by the HTTP server (`serve`) and
 * `batch` (docs/serving.md, "HTTP API").
 *
 * The API owns the text side: the model's tokenizer, chat template and end
 * ids (generation_config.json's eos_token_id list), prompt encoding,
 * incremental detokenization, stop strings, and the OpenAI JSON shapes
 * (responses, `usage`, `logprobs`, and errors as
 * {"error": {"message", "type", "param", "code"}}).
 *
 * Thread safety: mc_oai_handle may be called from many threads at once.
 */
#ifndef MC_OAI_H
#define MC_OAI_H

#include "service.h"
#include "status.h"

#include <stddef.h>

typedef struct mc_oai mc_oai;

typedef struct {
    mc_service *service;    /* borrowed; must outlive the API */
    const char *model_dir;  /* tokenizer.json, tokenizer_config.json, generation_config.json */
    const char *model_name; /* the served model id; NULL: model_dir's last component */
} mc_oai_opts;

/* Loads the tokenizer (required), the chat template (optional: without one
 * chat requests get a 400 saying so) and the end ids. MC_ERR_* with one
 * line naming the file. */
mc_status mc_oai_open(const mc_oai_opts *opts, mc_oai **out, mc_err *err);
void mc_oai_close(mc_oai *a); /* NULL is fine */

/* The served model id. */
const char *mc_oai_model_name(const mc_oai *a);

/* One non-streaming request: path "/v1/completions" or
 * "/v1/chat/completions", body (len bytes, need not be NUL-terminated) the
 * JSON request. Returns the HTTP status and sets *out_body (malloc'd, NUL-
 * terminated; the caller frees it) to the response JSON: the completion,
 * or an OpenAI error object for a 4xx / 5xx. A body asking for
 * "stream": true is refused here with a 400 (the HTTP server streams
 * itself). Returns 500 with *out_body NULL only when memory ran out. */
int mc_oai_handle(mc_oai *a, const char *path, const char *body, size_t len, char **out_body);

/* ---- for the HTTP server ---- */

/* A streamed request (server-sent events). */
typedef struct mc_oai_stream mc_oai_stream;

/* Like mc_oai_handle, but a body asking for "stream": true is started and
 * returned as *out_stream (status 200, *out_body NULL; free it with
 * mc_oai_stream_free) instead of being refused. Otherwise *out_stream is
 * NULL and the result is mc_oai_handle's. */
int mc_oai_begin(mc_oai *a, const char *path, const char *body, size_t len,
                 mc_oai_stream **out_stream, char **out_body);

/* The next server-sent events of the stream: blocks until there is news,
 * then returns 1 with *out (malloc'd, the caller frees it; *out_len bytes)
 * holding one or more "data: {chunk}\n\n" events in OpenAI's chunk shapes.
 * The last call that returns 1 ends with "data: [DONE]\n\n"; after it the
 * call returns 0. An error after the start (a failed step, the service
 * stopping) is sent as a data: {"error": ...} event before [DONE]. Returns
 * -1 only when memory ran out. */
int mc_oai_stream_next(mc_oai_stream *s, char **out, size_t *out_len);

/* Frees the stream, cancelling its request when it has not finished (the
 * client went away). NULL is fine. */
void mc_oai_stream_free(mc_oai_stream *s);

/* An OpenAI error body {"error": {"message", "type", "param", "code"}} for
 * status (the type follows it: invalid_request_error for 4xx, ...); param
 * may be NULL. malloc'd (the caller frees it); NULL when memory ran out. */
char *mc_oai_error_body(int status, const char *msg, const char *param);

/* GET /v1/models: {"object": "list", "data": [{"id", "object": "model",
 * "created", "owned_by", "max_model_len"}]}; malloc'd (the caller frees it). */
char *mc_oai_models_body(mc_oai *a);

/* Shutting down: requests waiting on the service give up (a 503, or an
 * error event in a stream) within a second, and new ones get 503. Call it
 * before stopping the HTTP server, then stop the service, then close. */
void mc_oai_shutdown(mc_oai *a);

/* The service the API was opened over (borrowed). */
mc_service *mc_oai_service(mc_oai *a);

#endif
