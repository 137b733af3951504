/* http.h - the HTTP server of `serve`: libmicrohttpd over the OpenAI API
 * (oai.h), with /health and /metrics (docs/serving.md, "HTTP API").
 *
 * One thread per connection (a handler may block on the service), a
 * bounded number of connections, bounded request headers (the connection's
 * memory pool) and bodies (413 past MC_HTTP_MAX_BODY). Routes: POST
 * /v1/completions and /v1/chat/completions (stream: true as server-sent
 * events), GET /v1/models, /health, /metrics; 404 for other paths, 405 for
 * other methods. With an API key every route but /health needs
 * "Authorization: Bearer KEY" (401 otherwise).
 */
#ifndef MC_HTTP_H
#define MC_HTTP_H

#include "oai.h"
#include "status.h"

#include <stdint.h>

#define MC_HTTP_MAX_BODY (8u << 20)      /* request body bytes */
#define MC_HTTP_MEMORY_LIMIT (64u << 10) /* per connection: request line + headers */
#define MC_HTTP_MAX_CONNECTIONS 256u     /* open at once (a thread each) */

typedef struct {
    mc_oai *api;         /* borrowed; must outlive the server */
    const char *host;    /* NULL: 127.0.0.1 */
    uint16_t port;       /* 0: any free port */
    const char *api_key; /* NULL or "": no key */
} mc_http_opts;

typedef struct mc_http mc_http;

/* Starts listening (the server runs in its own threads). *bound_port is the
 * port it listens on. MC_ERR_ARG for a host that does not resolve, MC_ERR_IO
 * when it cannot listen (one line naming host and port). Free with
 * mc_http_stop. */
mc_status mc_http_start(const mc_http_opts *opts, mc_http **out, uint16_t *bound_port, mc_err *err);

/* Stops listening, waits for the connection threads and frees the server.
 * Streams in progress end (their requests are cancelled). NULL is fine. */
void mc_http_stop(mc_http *h);

#endif
