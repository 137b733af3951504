/* cmd_worker.c - `moecluster worker`: the worker side of the control plane.
 *
 * Every rank loads its share of the model and makes a step executor. Rank
 * 0 binds a ZeroMQ REP socket and answers one request at a time
 * (docs/serving.md, "Control plane"):
 *   Hello      -> Hello with what is served (world size, model, pool, budget)
 *   StepPlan   -> StepResult (full logits per entry that asked) or Error
 *   Heartbeat  -> Heartbeat
 *   Shutdown   -> Shutdown, then every rank exits 0
 *   other, malformed, another version -> Error; the worker keeps serving.
 *
 * Lockstep: the other ranks wait in a broadcast of a command header
 * {kind, bytes}. Rank 0 checks a plan against its executor (which every
 * rank's equals: same plans, same order) before it broadcasts it, so a bad
 * plan costs one Error reply and no collective; a plan that passes is
 * broadcast as its packed bytes and run by every rank, and the outcome is
 * agreed. While idle, rank 0 broadcasts a tick every TICK_MS so that no
 * rank waits in one MPI call long enough for the watchdog (MC_COMM_TIMEOUT).
 */
#include "cli.h"
#include "control.h"
#include "log.h"
#include "par_args.h"
#include "sampler.h"
#include "session.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <zmq.h>

#define DEFAULT_LISTEN "tcp://127.0.0.1:5557"
#define DEFAULT_BLOCKS 1024u
#define TICK_MS 5000 /* idle ranks hear from rank 0 at least this often */
/* Room in an answer for everything but the logits floats. */
#define RESULT_SLACK ((size_t)1 << 20)

/* What rank 0 broadcasts to the others before each command. */
enum { CMD_TICK = 1, CMD_STEP = 2, CMD_SHUTDOWN = 3 };

static const char worker_usage_text[] =
    "usage: moecluster worker --model DIR|--shards DIR [--listen ADDR] [--kv-block-size N]\n"
    "                         [--kv-blocks N] [--max-batch-tokens N] [--tp N] [--ep N] [--pp N]\n"
    "                         [--weights q8_0|q4_k|bf16] [--no-mmap] [--no-verify] [--stats]\n"
    "                         [--activations f32|bf16] [--kv-cache-dtype f32|bf16]\n"
    "                         [--device cpu|cuda]\n\n"
    "  --model DIR            Hugging Face checkpoint folder, a shard set, or a .gguf file\n"
    "  --shards DIR           a shard set written by `moecluster shard`\n"
    "  --listen ADDR          ZeroMQ endpoint rank 0 binds (default " DEFAULT_LISTEN ");\n"
    "                         tcp://127.0.0.1:* picks a free port. Give a non-loopback\n"
    "                         address only on a trusted network: there is no authentication\n"
    "  --kv-block-size N      positions per KV block (default 16)\n"
    "  --kv-blocks N          KV blocks per layer (default 1024)\n"
    "  --max-batch-tokens N   new tokens per step (default 2048)\n" MC_DEVICE_USAGE MC_PAR_USAGE
    "Prints \"listening on ADDR\" on stdout once every rank has loaded, then serves\n"
    "step plans from a coordinator until it sends Shutdown. dp > 1 is not served yet.\n";

static void worker_usage(FILE *out) { fputs(worker_usage_text, out); }

/* ---- answers ---- */

/* Packs msg and sends it on sock; a failure is logged (the client times out). */
static void send_msg(void *sock, const ControlMessage *msg)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    mc_status st = mc_control_pack(msg, &buf, &len);
    if (st != MC_OK) {
        MC_WARN("worker: cannot pack the %s answer (%s)", mc_control_body_name(msg),
                mc_status_str(st));
        return;
    }
    if (zmq_send(sock, buf, len, 0) < 0)
        MC_WARN("worker: send failed: %s", zmq_strerror(errno));
    free(buf);
}

static void send_error(void *sock, mc_status code, const char *text, uint64_t step_id)
{
    Error e = ERROR__INIT;
    e.code = (uint32_t)code;
    e.message = (char *)(uintptr_t)text; /* read only by the packer */
    e.rank = 0;
    e.host = (char *)(uintptr_t)mc_comm_host();
    e.step_id = step_id;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_ERROR;
    msg.error = &e;
    send_msg(sock, &msg);
}

static void send_hello(void *sock, mc_session *ses)
{
    mc_session_exec_info info;
    mc_session_exec_info_get(ses, &info);
    Hello h = HELLO__INIT;
    h.rank = 0;
    h.world_size = (uint32_t)mc_session_size(ses);
    h.host = (char *)(uintptr_t)mc_comm_host();
    h.pid = (uint32_t)getpid();
    h.model_type = (char *)(uintptr_t)mc_session_desc(ses)->model_type;
    h.vocab = info.vocab;
    h.n_layers = info.n_layers;
    h.n_blocks = info.n_blocks;
    h.block_size = info.block_size;
    h.max_batch_tokens = info.max_batch_tokens;
    h.max_pos = info.max_pos;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_HELLO;
    msg.hello = &h;
    send_msg(sock, &msg);
}

static void send_heartbeat(void *sock, uint64_t last_step)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    Heartbeat hb = HEARTBEAT__INIT;
    hb.rank = 0;
    hb.unix_time_ms = (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
    hb.last_step_id = last_step;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &hb;
    send_msg(sock, &msg);
}

/* The pick of an entry with a draw (mc_step_seq.draw) from its row, as the
 * coordinator would make it (mc_sampler_pick_draw); the scratch is made at
 * the first draw and kept (*scr). */
static mc_status draw_row(const mc_step_draw *d, const float *row, uint32_t V,
                          mc_sample_scratch **scr, int32_t *token, uint64_t *state, mc_err *err)
{
    mc_status st = *scr ? MC_OK : mc_sample_scratch_init((int)V, scr, err);
    return st == MC_OK ? mc_sampler_pick_draw(d, row, (int)V, *scr, token, state, err) : st;
}

/* The StepResult of plan: one SeqResult per entry with logits, pointing
 * into logits (rows of V floats in plan order), or its pick (Drawn) when
 * the entry has a draw (draw_row), or with k > 0 candidates
 * (rows of 2k + 2 words: mc_session_exec_run): the k ids as top_token_ids,
 * their logits as top_logits and their log-probabilities (logit - the
 * row's log-sum-exp) as top_logprobs. */
static void send_result(void *sock, const mc_step_plan *plan, const float *logits, uint32_t V,
                        int k, mc_sample_scratch **scr)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < plan->n_seqs; i++)
        n += plan->seqs[i].logits != MC_LOGITS_NONE;
    SeqResult *res = calloc(n ? n : 1, sizeof *res);
    SeqResult **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    Drawn *drawn = calloc(n ? n : 1, sizeof *drawn);
    size_t rows_all = (size_t)mc_step_plan_logit_rows(plan);
    uint32_t *tid = k > 0 ? calloc(rows_all * (size_t)k + 1, sizeof *tid) : NULL;
    float *tlp = k > 0 ? calloc(rows_all * (size_t)k + 1, sizeof *tlp) : NULL;
    float *tlg = k > 0 ? calloc(rows_all * (size_t)k + 1, sizeof *tlg) : NULL;
    uint8_t *buf = NULL;
    if (!res || !ptrs || !drawn || (k > 0 && (!tid || !tlp || !tlg))) {
        send_error(sock, MC_ERR_NOMEM, "worker: out of memory for the step result", plan->step_id);
        goto done;
    }
    size_t row = 0;
    uint32_t j = 0;
    for (uint32_t i = 0; i < plan->n_seqs; i++) {
        const mc_step_seq *e = &plan->seqs[i];
        if (e->logits == MC_LOGITS_NONE)
            continue;
        size_t rows = e->logits == MC_LOGITS_ALL ? e->n_tokens : 1;
        seq_result__init(&res[j]);
        res[j].seq_id = e->seq_id;
        if (k > 0) {
            size_t W = 2 * (size_t)k + 2;
            for (size_t r = 0; r < rows; r++) {
                const float *w = logits + (row + r) * W;
                double lse;
                memcpy(&lse, w + 2 * (size_t)k, 8);
                for (int c = 0; c < k; c++) {
                    int32_t id;
                    memcpy(&id, w + c, 4);
                    tid[(row + r) * (size_t)k + (size_t)c] = (uint32_t)id;
                    tlg[(row + r) * (size_t)k + (size_t)c] = w[k + c];
                    tlp[(row + r) * (size_t)k + (size_t)c] = (float)((double)w[k + c] - lse);
                }
            }
            res[j].n_top_token_ids = res[j].n_top_logprobs = res[j].n_top_logits =
                rows * (size_t)k;
            res[j].top_token_ids = tid + row * (size_t)k;
            res[j].top_logprobs = tlp + row * (size_t)k;
            res[j].top_logits = tlg + row * (size_t)k;
        } else if (e->has_draw) { /* (logits LAST, checked: one row) */
            mc_err de;
            mc_err_clear(&de);
            int32_t tok = -1;
            uint64_t state = 0;
            mc_status ds = draw_row(&e->draw, logits + row * V, V, scr, &tok, &state, &de);
            if (ds != MC_OK) {
                send_error(sock, ds, de.msg, plan->step_id);
                goto done;
            }
            drawn__init(&drawn[j]);
            drawn[j].token = (uint32_t)tok;
            drawn[j].state = state;
            res[j].drawn = &drawn[j];
        } else {
            res[j].n_logits = rows * V;
            res[j].logits = (float *)(uintptr_t)(logits + row * V); /* read only by the packer */
        }
        ptrs[j] = &res[j];
        row += rows;
        j++;
    }
    StepResult r = STEP_RESULT__INIT;
    r.step_id = plan->step_id;
    r.rank = 0;
    r.n_seqs = n;
    r.seqs = ptrs;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_RESULT;
    msg.result = &r;
    size_t len = 0;
    mc_status st = mc_control_pack(&msg, &buf, &len);
    if (st != MC_OK)
        send_error(sock, st, "worker: the step result does not fit one message", plan->step_id);
    else if (zmq_send(sock, buf, len, 0) < 0)
        MC_WARN("worker: send failed: %s", zmq_strerror(errno));
done:
    free(buf);
    free(res);
    free(ptrs);
    free(drawn);
    free(tid);
    free(tlp);
    free(tlg);
}

/* ---- the lockstep ---- */

/* Collective: the command header from rank 0 (hdr[0] kind, hdr[1] bytes). */
static mc_status bcast_header(mc_session *ses, uint64_t hdr[2], mc_err *err)
{
    mc_status st = mc_session_bcast(ses, 0, hdr, 2 * sizeof hdr[0], err);
    if (st == MC_OK && hdr[1] > MC_CONTROL_MAX_BYTES)
        st = mc_err_set(err, MC_ERR_FORMAT, "worker: a command of %llu bytes (limit %zu)",
                        (unsigned long long)hdr[1], MC_CONTROL_MAX_BYTES);
    return st;
}

/* Collective: every rank runs the step whose packed message (len bytes)
 * every rank holds in buf. Rank 0 passes its checked plan and receives the
 * logits; the other ranks unpack their own. Returns the agreed status. */
static mc_status run_step(mc_session *ses, const uint8_t *buf, size_t len, const mc_step_plan *p0,
                          float *logits, mc_err *err)
{
    mc_step_plan own;
    mc_step_plan_init(&own);
    ControlMessage *m = NULL;
    mc_status st = mc_control_unpack(buf, len, &m, err);
    if (st == MC_OK && m->body_case != CONTROL_MESSAGE__BODY_STEP)
        st = mc_err_set(err, MC_ERR_FORMAT, "worker: broadcast a %s, not a step",
                        mc_control_body_name(m));
    if (st == MC_OK && !p0)
        st = mc_control_step_to_plan(m->step, &own, err);
    if ((st = mc_session_agree(ses, st, err)) == MC_OK)
        st = mc_session_exec_run(ses, p0 ? p0 : &own, m->step->release, m->step->n_release,
                                 logits, err);
    mc_step_plan_free(&own);
    mc_control_free(m);
    return st;
}

/* Ranks other than 0: follow rank 0's commands until Shutdown. */
static mc_status follow(mc_session *ses, mc_err *err)
{
    for (;;) {
        uint64_t hdr[2] = {0, 0};
        mc_status st = bcast_header(ses, hdr, err);
        if (st != MC_OK)
            return st;
        if (hdr[0] == CMD_SHUTDOWN)
            return MC_OK;
        if (hdr[0] != CMD_STEP)
            continue;
        uint8_t *buf = malloc(hdr[1] ? hdr[1] : 1);
        if (!buf) /* the broadcast must still happen: the world is lost anyway */
            return mc_err_set(err, MC_ERR_NOMEM, "worker: out of memory for a %llu-byte step",
                              (unsigned long long)hdr[1]);
        st = mc_session_bcast(ses, 0, buf, hdr[1], err);
        if (st == MC_OK) {
            mc_err e;
            mc_err_clear(&e);
            (void)run_step(ses, buf, hdr[1], NULL, NULL, &e); /* rank 0 reports */
        }
        free(buf);
        if (st != MC_OK)
            return st;
    }
}

/* Rank 0, one StepPlan request (buf, len): check, broadcast, run, answer. */
static mc_status serve_step(mc_session *ses, void *sock, const ControlMessage *msg,
                            const uint8_t *buf, size_t len, uint64_t *last_step,
                            mc_sample_scratch **scr, mc_err *err)
{
    mc_err e;
    mc_err_clear(&e);
    mc_step_plan plan;
    mc_session_exec_info info;
    mc_session_exec_info_get(ses, &info);
    mc_status st = mc_control_step_to_plan(msg->step, &plan, &e);
    if (st == MC_OK)
        st = mc_session_exec_check(ses, &plan, msg->step->release, msg->step->n_release,
                                   MC_CONTROL_MAX_BYTES - RESULT_SLACK, &e);
    if (st != MC_OK) { /* refused before any rank hears of it */
        send_error(sock, st, e.msg, msg->step->step_id);
        mc_step_plan_free(&plan);
        return MC_OK;
    }
    size_t rows = (size_t)mc_step_plan_logit_rows(&plan);
    int k = mc_session_plan_top_k(&plan); /* checked: 0..MC_TOPK_MAX */
    size_t W = mc_session_row_words(ses, k);
    float *logits = rows ? mc_malloc_n(rows * W, sizeof *logits) : NULL; /* (rows, W) */
    if (rows && !logits) {
        send_error(sock, MC_ERR_NOMEM, "worker: out of memory for the logits", plan.step_id);
        mc_step_plan_free(&plan);
        return MC_OK;
    }
    uint64_t hdr[2] = {CMD_STEP, len};
    uint8_t *copy = (uint8_t *)(uintptr_t)buf; /* bcast reads it on the root */
    if ((st = bcast_header(ses, hdr, err)) == MC_OK &&
        (st = mc_session_bcast(ses, 0, copy, len, err)) == MC_OK) {
        mc_status run = run_step(ses, buf, len, &plan, logits, &e);
        if (run == MC_OK) {
            send_result(sock, &plan, logits, info.vocab, k, scr);
            *last_step = plan.step_id;
        } else {
            send_error(sock, run, e.msg[0] ? e.msg : "step failed on another rank",
                       plan.step_id);
        }
    }
    free(logits);
    mc_step_plan_free(&plan);
    return st; /* only a broken world ends the loop */
}

/* Rank 0: serve requests on sock until Shutdown (MC_OK) or a broken world. */
static mc_status lead_loop(mc_session *ses, void *sock, mc_sample_scratch **scr, mc_err *err);

static mc_status lead(mc_session *ses, void *sock, mc_err *err)
{
    mc_sample_scratch *scr = NULL; /* the workers' draws (draw_row) */
    mc_status st = lead_loop(ses, sock, &scr, err);
    mc_sample_scratch_free(scr);
    return st;
}

static mc_status lead_loop(mc_session *ses, void *sock, mc_sample_scratch **scr, mc_err *err)
{
    uint64_t last_step = 0;
    for (;;) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        int r = zmq_poll(&it, 1, TICK_MS);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return mc_err_set(err, MC_ERR_IO, "worker: poll: %s", zmq_strerror(errno));
        if (r == 0) { /* idle: keep the other ranks' watchdogs quiet */
            uint64_t hdr[2] = {CMD_TICK, 0};
            mc_status st = bcast_header(ses, hdr, err);
            if (st != MC_OK)
                return st;
            continue;
        }
        zmq_msg_t in;
        zmq_msg_init(&in);
        if (zmq_msg_recv(&in, sock, 0) < 0) {
            zmq_msg_close(&in);
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return mc_err_set(err, MC_ERR_IO, "worker: receive: %s", zmq_strerror(errno));
        }
        const uint8_t *buf = zmq_msg_data(&in);
        size_t len = zmq_msg_size(&in);
        mc_err e;
        mc_err_clear(&e);
        ControlMessage *msg = NULL;
        mc_status st = mc_control_unpack(buf, len, &msg, &e);
        bool stop = false;
        if (st != MC_OK) {
            send_error(sock, st, e.msg, 0);
        } else {
            switch (msg->body_case) {
            case CONTROL_MESSAGE__BODY_HELLO:
                send_hello(sock, ses);
                break;
            case CONTROL_MESSAGE__BODY_HEARTBEAT:
                send_heartbeat(sock, last_step);
                break;
            case CONTROL_MESSAGE__BODY_STEP:
                st = serve_step(ses, sock, msg, buf, len, &last_step, scr, err);
                break;
            case CONTROL_MESSAGE__BODY_SHUTDOWN: {
                uint64_t hdr[2] = {CMD_SHUTDOWN, 0};
                st = bcast_header(ses, hdr, err);
                Shutdown sd = SHUTDOWN__INIT;
                ControlMessage ans;
                mc_control_init(&ans);
                ans.body_case = CONTROL_MESSAGE__BODY_SHUTDOWN;
                ans.shutdown = &sd;
                send_msg(sock, &ans);
                stop = true;
                break;
            }
            default:
                mc_err_set(&e, MC_ERR_FORMAT, "worker: a %s is not a request (send hello, "
                           "step, heartbeat or shutdown)", mc_control_body_name(msg));
                send_error(sock, MC_ERR_FORMAT, e.msg, 0);
                break;
            }
        }
        mc_control_free(msg);
        zmq_msg_close(&in);
        if (st != MC_OK && msg)
            return st;
        if (stop)
            return MC_OK;
    }
}

/* Rank 0: a REP socket bound to addr (*sock, *ctx; NULL on failure). The
 * bound endpoint (a picked port filled in) goes to bound. */
static mc_status bind_socket(const char *addr, void **ctx, void **sock, char *bound, size_t cap,
                             mc_err *err)
{
    *ctx = zmq_ctx_new();
    *sock = *ctx ? zmq_socket(*ctx, ZMQ_REP) : NULL;
    if (!*sock)
        return mc_err_set(err, MC_ERR_IO, "worker: cannot make a ZeroMQ socket: %s",
                          zmq_strerror(errno));
    int64_t max = (int64_t)MC_CONTROL_MAX_BYTES;
    int linger = 0;
    zmq_setsockopt(*sock, ZMQ_MAXMSGSIZE, &max, sizeof max);
    zmq_setsockopt(*sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(*sock, addr) != 0)
        return mc_err_set(err, MC_ERR_IO, "worker: cannot listen on %s: %s", addr,
                          zmq_strerror(errno));
    size_t n = cap;
    if (zmq_getsockopt(*sock, ZMQ_LAST_ENDPOINT, bound, &n) != 0)
        snprintf(bound, cap, "%s", addr);
    return MC_OK;
}

int mc_cmd_worker(int argc, char **argv)
{
    mc_par_args par = MC_PAR_ARGS_INIT;
    const char *model = NULL, *listen = DEFAULT_LISTEN;
    long long bs = MC_SCORE_DEFAULT_BLOCK_SIZE, nblocks = DEFAULT_BLOCKS,
              budget = MC_SCORE_DEFAULT_BATCH_TOKENS;
    enum { OPT_MODEL = 1, OPT_LISTEN, OPT_BS, OPT_BLOCKS, OPT_BUDGET, OPT_HELP };
    static const struct option opts[] = {
        {"model", required_argument, 0, OPT_MODEL},
        {"listen", required_argument, 0, OPT_LISTEN},
        {"kv-block-size", required_argument, 0, OPT_BS},
        {"kv-blocks", required_argument, 0, OPT_BLOCKS},
        {"max-batch-tokens", required_argument, 0, OPT_BUDGET},
        {"help", no_argument, 0, 'h'},
        MC_PAR_OPTIONS,
        MC_DEVICE_OPTIONS,
        {0, 0, 0, 0}};
    mc_quiet q = mc_quiet_begin();
    int c, bad = 0;
    optind = 1;
    while (!bad && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int pr = mc_par_option(&par, "worker", c, optarg);
        if (pr == 0)
            continue;
        if (pr < 0) {
            bad = 2;
            break;
        }
        switch (c) {
        case OPT_MODEL:
            model = optarg;
            break;
        case OPT_LISTEN:
            listen = optarg;
            break;
        case OPT_BS:
            bad = mc_arg_int("worker", "--kv-block-size", optarg, 1, 1 << 16, &bs) ? 2 : 0;
            break;
        case OPT_BLOCKS:
            bad = mc_arg_int("worker", "--kv-blocks", optarg, 1, 1 << 24, &nblocks) ? 2 : 0;
            break;
        case OPT_BUDGET:
            bad = mc_arg_int("worker", "--max-batch-tokens", optarg, 1, 1 << 22, &budget) ? 2 : 0;
            break;
        case 'h':
            worker_usage(stdout);
            mc_quiet_end(q);
            return 0;
        default:
            worker_usage(stderr);
            bad = 2;
            break;
        }
    }
    if (!bad && optind < argc) {
        fprintf(stderr, "moecluster worker: unexpected argument '%s'\n", argv[optind]);
        bad = 2;
    }
    if (!bad && (!model) == (!par.shards)) {
        fprintf(stderr, "moecluster worker: give one of --model DIR or --shards DIR\n\n");
        worker_usage(stderr);
        bad = 2;
    }
    if (!bad && strncmp(listen, "tcp://", 6) != 0 && strncmp(listen, "ipc://", 6) != 0) {
        fprintf(stderr, "moecluster worker: --listen %s: want tcp://HOST:PORT or ipc://PATH\n",
                listen);
        bad = 2;
    }
    mc_quiet_end(q);
    if (bad)
        return bad;

    mc_err err;
    mc_err_clear(&err);
    mc_session *ses = NULL;
    void *ctx = NULL, *sock = NULL;
    int rc = 1;
    bool fatal = false;
    if (mc_session_open(&argc, &argv, true, &ses, &err) != MC_OK) {
        fprintf(stderr, "moecluster worker: %s\n", err.msg);
        return 1;
    }
    int me = mc_session_rank(ses);
    mc_session_opts so = {.dir = par.shards ? par.shards : model,
                          .tp = par.tp, .ep = par.ep, .pp = par.pp,
                          .layout_given = par.given,
                          .weights_given = par.weights_given, .weights = par.weights,
                          .no_verify = par.no_verify, .stats = par.stats, .resident = par.resident,
                          .bf16_acts = par.bf16_acts,
                          .kv_dtype = par.kv_dtype,
                          .device = mc_par_device(&par)};
    if (mc_session_load(ses, &so, &err) != MC_OK)
        goto fail;
    mc_session_exec_info info;
    mc_session_exec_info_get(ses, &info);
    if (info.dp > 1) { /* the same on every rank */
        mc_err_set(&err, MC_ERR_UNSUPPORTED,
                   "the layout has %d data-parallel groups; the worker serves dp = 1 only for "
                   "now (give --ep / --tp / --pp so that tp * pp = the number of ranks)",
                   info.dp);
        if (me != 0)
            err.msg[0] = 0;
        goto fail;
    }
    if (mc_session_exec_open(ses, (uint32_t)nblocks, (uint32_t)bs, (uint32_t)budget, &err) !=
        MC_OK)
        goto fail;
    mc_session_exec_info_get(ses, &info); /* the executor's facts, now that it exists */
    char bound[256] = "";
    mc_status st = me == 0 ? bind_socket(listen, &ctx, &sock, bound, sizeof bound, &err) : MC_OK;
    if (mc_session_agree(ses, st, &err) != MC_OK)
        goto fail;
    fatal = true; /* from here a rank that fails leaves the others in a broadcast */
    if (me == 0) {
        printf("listening on %s\n", bound);
        fflush(stdout);
        MC_INFO("worker: %d rank(s), %u KV blocks of %u, budget %u tokens, serving on %s",
                mc_session_size(ses), info.n_blocks, info.block_size, info.max_batch_tokens,
                bound);
    }
    st = me == 0 ? lead(ses, sock, &err) : follow(ses, &err);
    if (st != MC_OK)
        goto fail;
    if (par.stats && mc_session_stats_report(ses, stderr, 0.0, &err) != MC_OK)
        goto fail;
    rc = 0;
fail:
    if (rc)
        mc_cli_report("worker", mc_session_world(ses), &err);
    if (sock)
        zmq_close(sock);
    if (ctx)
        zmq_ctx_term(ctx);
    mc_session_close(ses, rc && fatal);
    return rc;
}
