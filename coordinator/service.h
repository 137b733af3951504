/* service.h - the serving core shared by `serve` and `batch`: one engine
 * (engine.h) driven by one thread over a worker group, with a thread-safe
 * front for many client threads (docs/serving.md, "Coordinator").
 *
 * The worker group is either started by the service (a local group:
 * `moecluster worker` alone for one rank, `mpirun -np N moecluster worker`
 * for N ranks, listening on a loopback port it picks; the service reads
 * the "listening on ADDR" line, connects with workers.h and wraps the
 * connection as an mc_step_runner) or attached to (`--workers ADDR`: a group
 * a user started with mpirun; the service only connects). For tests, a
 * service may also run over a runner the caller gives (no group).
 *
 * The driver thread: takes newly submitted requests and cancellations,
 * runs mc_engine_step while the engine is busy, and hands each event to its
 * request's handle (waking the thread that waits on it); while idle it
 * sends a heartbeat every second. When a step or heartbeat fails with a
 * transport error (the group died, or a step outlived step_timeout_ms),
 * every running request ends with an MC_ENGINE_ERROR event naming the
 * failure, the state goes to DOWN (submit refuses with MC_ERR_IO, /health
 * answers 503), the local group is killed (its whole process group) and
 * started again, and the state returns to READY; waiting requests that
 * never ran stay queued and run after the restart. An attached group is
 * reconnected to every few seconds instead. A group that fails to start
 * MC_SERVICE_MAX_RESTARTS times in a row leaves the service FAILED.
 *
 * Thread safety: every function here may be called from any thread; a
 * request handle is used by one thread at a time.
 */
#ifndef MC_SERVICE_H
#define MC_SERVICE_H

#include "engine.h"
#include "status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MC_SERVICE_MAX_RESTARTS 5

typedef enum {
    MC_SERVICE_LOADING = 0, /* the group is starting (or restarting the first time) */
    MC_SERVICE_READY,       /* serving */
    MC_SERVICE_DOWN,        /* the group failed; restarting or reconnecting */
    MC_SERVICE_FAILED,      /* gave up (see mc_service_last_error) */
    MC_SERVICE_STOPPED,     /* mc_service_stop was called */
} mc_service_state;

const char *mc_service_state_name(mc_service_state s); /* "loading", "ready", ... */

typedef struct {
    /* The group. Exactly one of model_dir / shards_dir for a local group;
     * workers_addr attaches instead (model_dir / shards_dir then unused). */
    const char *model_dir;
    const char *shards_dir;
    const char *workers_addr;       /* tcp://HOST:PORT of a running group's rank 0 */
    uint32_t ranks;                 /* local group size; 0 or 1: one worker, no mpirun */
    const char *const *worker_args; /* more `worker` flags (--tp 2, --weights q8_0, ...) */
    size_t n_worker_args;
    const char *exe;    /* the moecluster binary; NULL: /proc/self/exe */
    const char *mpirun; /* NULL: "mpirun" from PATH */
    /* Sizes: 0 = the default named. */
    uint32_t kv_blocks;        /* worker --kv-blocks; worker's default */
    uint32_t kv_block_size;    /* worker --kv-block-size; worker's default */
    uint32_t max_batch_tokens; /* worker --max-batch-tokens and the engine's budget */
    uint32_t max_num_seqs;     /* engine max_running; MC_ENGINE_DEFAULT_MAX_RUNNING */
    uint32_t max_requests;     /* engine max_requests (waiting + running) */
    uint32_t max_model_len;    /* engine context; the group's limit */
    int load_timeout_ms;       /* start-up until "listening on"; default 600000 */
    int step_timeout_ms;       /* one step or heartbeat; default 120000 */
    bool quiet;                /* no progress lines on stderr */
} mc_service_opts;

/* One token (or the end) of one request, copied out of the engine's event. */
typedef struct {
    int32_t token; /* -1 when none (error, abort) */
    bool has_logprobs;
    mc_logprobs lp;
    mc_engine_finish finish; /* MC_ENGINE_GO_ON until the last event */
    char msg[512];           /* MC_ENGINE_ERROR: why; else "" */
} mc_service_event;

/* A Prometheus histogram: cumulative counts per upper bound, plus +Inf. */
#define MC_HIST_MAX_BUCKETS 24
typedef struct {
    int n_bounds;
    double bounds[MC_HIST_MAX_BUCKETS]; /* ascending upper bounds, seconds */
    uint64_t counts[MC_HIST_MAX_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
    double sum;
    uint64_t count;
} mc_hist;

typedef struct {
    mc_service_state state;
    mc_engine_stats engine;    /* running, waiting, kv usage, token counters, ... */
    uint64_t restarts;         /* group restarts so far */
    mc_hist ttft;              /* submit -> first token, seconds */
    mc_hist itl;               /* between consecutive tokens of a request */
    mc_hist e2e;               /* submit -> last event */
    uint32_t world_size;       /* of the group; 0 while none */
    uint32_t vocab, max_model_len;
    uint32_t worker_pid;       /* rank 0's pid (from its Hello); 0 while none */
} mc_service_stats;

typedef struct mc_service mc_service;
typedef struct mc_service_req mc_service_req;

/* Starts the driver thread and the group (in the background: the state is
 * LOADING until the group answers). MC_ERR_ARG for bad options (one line
 * naming the option), MC_ERR_NOMEM, MC_ERR_IO when the thread cannot start. */
mc_status mc_service_start(const mc_service_opts *opts, mc_service **out, mc_err *err);

/* A service over a runner the caller owns (tests, one process): no group,
 * no restarts; READY at once. runner must outlive the service. */
mc_status mc_service_start_runner(const mc_step_runner *runner, const mc_engine_opts *eopts,
                                  mc_service **out, mc_err *err);

/* Waits until the state is READY (true) or FAILED / STOPPED or timeout_ms
 * passed (false; timeout_ms < 0 waits without bound). */
bool mc_service_wait_ready(mc_service *s, int timeout_ms);

/* Stops the driver (every held request ends with an ABORT event), shuts
 * a local group down (Shutdown, then kill after a grace period; an
 * attached group is only disconnected: its owner stops it) and frees the
 * service. Handles still held by callers stay valid until freed: their
 * next events are the abort. A step in flight is waited for (bounded by
 * step_timeout_ms). NULL is fine. */
void mc_service_stop(mc_service *s);

mc_service_state mc_service_get_state(const mc_service *s);
/* The reason of the last failure ("" when none); copied into buf. */
void mc_service_last_error(const mc_service *s, char *buf, size_t cap);
void mc_service_get_stats(const mc_service *s, mc_service_stats *out);

/* Queues a request (copied, as mc_engine_submit) and returns its handle.
 * MC_ERR_ARG: a bad request (the engine's one line); MC_ERR_OVERFLOW: too
 * many held (answer 429); MC_ERR_IO: not READY (answer 503, the message
 * says the state); MC_ERR_NOMEM. */
mc_status mc_service_submit(mc_service *s, const mc_engine_request *req, mc_service_req **out,
                            mc_err *err);

/* The next event of the request: 1 with *ev filled; 0 when none came
 * within timeout_ms (< 0: wait without bound); -1 when the request ended
 * already and every event was taken. Events come in order; the last one
 * has finish != MC_ENGINE_GO_ON. */
int mc_service_req_next(mc_service_req *r, mc_service_event *ev, int timeout_ms);

/* Asks for the request to end (an ABORT event follows unless it finished
 * first). Use it when the client went away or a stop string matched. */
void mc_service_req_cancel(mc_service_req *r);

/* Frees the handle, cancelling the request when it has not finished. NULL
 * is fine. */
void mc_service_req_free(mc_service_req *r);

/* The request's id: unique in the service, from 1 in submit order (for
 * logs and response ids; the engine's own id stays inside the service). */
uint64_t mc_service_req_id(const mc_service_req *r);

#endif
