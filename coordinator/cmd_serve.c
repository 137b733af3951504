/* cmd_serve.c - `moecluster serve`: the OpenAI-compatible HTTP server over a
 * worker group (service.h for the group and the engine, oai.h for the API,
 * http.h for the server). Started without a model it serves the demo model
 * (demo.h). SIGINT / SIGTERM stop it cleanly (exit 0).
 */
#define _GNU_SOURCE /* open_memstream, getaddrinfo, sigaction, strdup */
#include "cli.h"
#include "demo.h"
#include "http.h"
#include "oai.h"
#include "par_args.h"
#include "service.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_WORKER_ARGS 16

static const char serve_usage_text[] =
    "usage: moecluster serve [--model DIR|--shards DIR] [--ranks N] [--workers ADDR]\n"
    "                        [--host H] [--port P] [--api-key KEY] [--served-model-name NAME]\n"
    "                        [--max-num-seqs N] [--max-requests N] [--max-model-len N]\n"
    "                        [--max-batch-tokens N] [--kv-blocks N] [--kv-block-size N]\n"
    "                        [--step-timeout S] [--tp N] [--ep N] [--pp N]\n"
    "                        [--weights q8_0|q4_k|bf16] [--no-mmap] [--no-verify] [--stats]\n"
    "                        [--activations f32|bf16] [--kv-cache-dtype f32|bf16]\n"
    "                        [--device cpu|cuda]\n\n"
    "  --model DIR              Hugging Face checkpoint folder with tokenizer.json (and\n"
    "                           tokenizer_config.json for chat, generation_config.json for\n"
    "                           the end ids); without --model, --shards or --workers the\n"
    "                           demo model (made on first start and cached)\n"
    "  --shards DIR             a shard set written by `moecluster shard` (the tokenizer\n"
    "                           from --model when given, else from this folder)\n"
    "  --ranks N                start the local worker group as mpirun -np N (default: one\n"
    "                           worker, no mpirun)\n"
    "  --workers ADDR           attach to a group started with mpirun (tcp://HOST:PORT of\n"
    "                           its rank 0); --model is still needed for the tokenizer\n"
    "  --host H                 address to listen on (default 127.0.0.1)\n"
    "  --port P                 port (default 8000; 0 picks a free one)\n"
    "  --api-key KEY            require Authorization: Bearer KEY on every route but /health\n"
    "  --served-model-name NAME the model id of the API (default: the model folder's name)\n"
    "  --max-num-seqs N         sequences in one step (default 256)\n"
    "  --max-requests N         requests held at once, running and waiting; more get 429\n"
    "                           (default 1024)\n"
    "  --max-model-len N        context length (default: the model's, within the KV pool)\n"
    "  --max-batch-tokens N     new tokens per step (default: the worker's)\n"
    "  --kv-blocks N            KV cache blocks per worker (default: the worker's)\n"
    "  --kv-block-size N        positions per KV block (default: the worker's)\n"
    "  --step-timeout S         seconds one step may take before the group counts as hung\n"
    "                           (default 120)\n" MC_DEVICE_USAGE MC_PAR_USAGE
    "Prints \"serving MODEL on http://HOST:PORT\" once listening. Routes: POST\n"
    "/v1/completions, /v1/chat/completions; GET /v1/models, /health, /metrics\n"
    "(docs/serving.md, \"HTTP API\").\n";

static void serve_usage(FILE *out) {
    fputs(serve_usage_text, out);
}

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
    (void)sig;
    int e = errno;
    char b = 1;
    if (write(sig_pipe[1], &b, 1) < 0) { /* nothing to do: a byte is already there */
    }
    errno = e;
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

typedef struct {
    const char *model, *shards, *workers, *host, *api_key, *name;
    long long ranks, port, max_seqs, max_requests, max_len, max_batch, kv_blocks, kv_bs, step_s;
    const char *wargs[MAX_WORKER_ARGS];
    size_t n_wargs;
} serve_args;

static void add_warg(serve_args *a, const char *flag, const char *val) {
    if (a->n_wargs + 2 <= MAX_WORKER_ARGS) {
        a->wargs[a->n_wargs++] = flag;
        if (val) a->wargs[a->n_wargs++] = val;
    }
}

enum {
    O_MODEL = 1,
    O_RANKS,
    O_WORKERS,
    O_HOST,
    O_PORT,
    O_KEY,
    O_NAME,
    O_SEQS,
    O_REQS,
    O_LEN,
    O_BATCH,
    O_BLOCKS,
    O_BS,
    O_STEP
};

static int parse(int argc, char **argv, serve_args *a);

int mc_cmd_serve(int argc, char **argv) {
    serve_args a = {.port = 8000};
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    mc_err err;
    mc_err_clear(&err);
    char demo[4096];
    if (!a.model && !a.shards && !a.workers) {
        if (mc_demo_model_dir(demo, sizeof demo, 0, &err) != MC_OK) {
            fprintf(stderr, "moecluster serve: the demo model: %s\n", err.msg);
            return 1;
        }
        a.model = demo;
        if (!a.name) a.name = "moecluster-demo";
    }
    const char *tok_dir = a.model ? a.model : a.shards;
    mc_service *svc = NULL;
    mc_oai *api = NULL;
    mc_http *http = NULL;
    rc = 1;
    if (pipe(sig_pipe) != 0) {
        fprintf(stderr, "moecluster serve: pipe: %s\n", strerror(errno));
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    mc_service_opts so = {.model_dir = a.shards ? NULL : a.model,
                          .shards_dir = a.shards,
                          .workers_addr = a.workers,
                          .ranks = (uint32_t)a.ranks,
                          .worker_args = a.wargs,
                          .n_worker_args = a.n_wargs,
                          .kv_blocks = (uint32_t)a.kv_blocks,
                          .kv_block_size = (uint32_t)a.kv_bs,
                          .max_batch_tokens = (uint32_t)a.max_batch,
                          .max_num_seqs = (uint32_t)a.max_seqs,
                          .max_requests = (uint32_t)a.max_requests,
                          .max_model_len = (uint32_t)a.max_len,
                          .step_timeout_ms = (int)(a.step_s * 1000)};
    if (mc_service_start(&so, &svc, &err) != MC_OK) goto fail;
    mc_oai_opts oo = {.service = svc, .model_dir = tok_dir, .model_name = a.name};
    if (mc_oai_open(&oo, &api, &err) != MC_OK) goto fail;
    mc_http_opts ho = {.api = api, .host = a.host, .port = (uint16_t)a.port, .api_key = a.api_key};
    uint16_t port = 0;
    if (mc_http_start(&ho, &http, &port, &err) != MC_OK) goto fail;
    const char *host = a.host ? a.host : "127.0.0.1";
    bool v6 = strchr(host, ':') != NULL;
    printf("serving %s on http://%s%s%s:%u\n", mc_oai_model_name(api), v6 ? "[" : "", host,
           v6 ? "]" : "", (unsigned)port);
    fflush(stdout);
    for (;;) { /* until a signal, or the service gives up */
        struct pollfd p = {.fd = sig_pipe[0], .events = POLLIN};
        int n = poll(&p, 1, 1000);
        if (n > 0) break;
        if (mc_service_get_state(svc) == MC_SERVICE_FAILED) {
            char why[512];
            mc_service_last_error(svc, why, sizeof why);
            mc_err_set(&err, MC_ERR_IO, "the worker group failed: %s", why);
            goto fail;
        }
    }
    fprintf(stderr, "moecluster serve: stopping\n");
    rc = 0;
fail:
    if (rc) fprintf(stderr, "moecluster serve: %s\n", err.msg[0] ? err.msg : "failed");
    if (api) mc_oai_shutdown(api); /* waiting handlers give up... */
    mc_http_stop(http);            /* ... so that the connection threads end */
    mc_service_stop(svc);
    mc_oai_close(api);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    return rc;
}

/* Parses argv into *a: 0 to go on, else the exit code (usage printed). */
static int parse(int argc, char **argv, serve_args *a) {
    static const struct option opts[] = {{"model", required_argument, 0, O_MODEL},
                                         {"ranks", required_argument, 0, O_RANKS},
                                         {"workers", required_argument, 0, O_WORKERS},
                                         {"host", required_argument, 0, O_HOST},
                                         {"port", required_argument, 0, O_PORT},
                                         {"api-key", required_argument, 0, O_KEY},
                                         {"served-model-name", required_argument, 0, O_NAME},
                                         {"max-num-seqs", required_argument, 0, O_SEQS},
                                         {"max-requests", required_argument, 0, O_REQS},
                                         {"max-model-len", required_argument, 0, O_LEN},
                                         {"max-batch-tokens", required_argument, 0, O_BATCH},
                                         {"kv-blocks", required_argument, 0, O_BLOCKS},
                                         {"kv-block-size", required_argument, 0, O_BS},
                                         {"step-timeout", required_argument, 0, O_STEP},
                                         {"help", no_argument, 0, 'h'},
                                         MC_PAR_OPTIONS,
                                         MC_DEVICE_OPTIONS,
                                         {0, 0, 0, 0}};
    mc_par_args par = MC_PAR_ARGS_INIT;
    const char *S = "serve";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int pr = mc_par_option(&par, S, c, optarg);
        if (pr < 0) return 2;
        if (pr == 0) { /* forwarded to the workers */
            switch (c) {
            case MC_OPT_TP:
                add_warg(a, "--tp", optarg);
                break;
            case MC_OPT_EP:
                add_warg(a, "--ep", optarg);
                break;
            case MC_OPT_PP:
                add_warg(a, "--pp", optarg);
                break;
            case MC_OPT_WEIGHTS:
                add_warg(a, "--weights", optarg);
                break;
            case MC_OPT_NO_MMAP:
                add_warg(a, "--no-mmap", NULL);
                break;
            case MC_OPT_ACTS:
                add_warg(a, "--activations", optarg);
                break;
            case MC_OPT_KV_DTYPE:
                add_warg(a, "--kv-cache-dtype", optarg);
                break;
            case MC_OPT_STATS:
                add_warg(a, "--stats", NULL);
                break;
            case MC_OPT_DEVICE:
                add_warg(a, "--device", optarg);
                break;
            case MC_OPT_NO_VERIFY:
                add_warg(a, "--no-verify", NULL);
                break;
            case MC_OPT_SHARDS:
                a->shards = optarg;
                break;
            default:
                break;
            }
            continue;
        }
        int bad = 0;
        switch (c) {
        case O_MODEL:
            a->model = optarg;
            break;
        case O_WORKERS:
            a->workers = optarg;
            break;
        case O_HOST:
            a->host = optarg;
            break;
        case O_KEY:
            a->api_key = optarg;
            break;
        case O_NAME:
            a->name = optarg;
            break;
        case O_RANKS:
            bad = mc_arg_int(S, "--ranks", optarg, 1, 4096, &a->ranks);
            break;
        case O_PORT:
            bad = mc_arg_int(S, "--port", optarg, 0, 65535, &a->port);
            break;
        case O_SEQS:
            bad = mc_arg_int(S, "--max-num-seqs", optarg, 1, 1 << 16, &a->max_seqs);
            break;
        case O_REQS:
            bad = mc_arg_int(S, "--max-requests", optarg, 1, 1 << 20, &a->max_requests);
            break;
        case O_LEN:
            bad = mc_arg_int(S, "--max-model-len", optarg, 2, 1 << 24, &a->max_len);
            break;
        case O_BATCH:
            bad = mc_arg_int(S, "--max-batch-tokens", optarg, 1, 1 << 22, &a->max_batch);
            break;
        case O_BLOCKS:
            bad = mc_arg_int(S, "--kv-blocks", optarg, 1, 1 << 24, &a->kv_blocks);
            break;
        case O_BS:
            bad = mc_arg_int(S, "--kv-block-size", optarg, 1, 1 << 16, &a->kv_bs);
            break;
        case O_STEP:
            bad = mc_arg_int(S, "--step-timeout", optarg, 1, 86400, &a->step_s);
            break;
        case 'h':
            serve_usage(stdout);
            return -1;
        default:
            serve_usage(stderr);
            return 2;
        }
        if (bad) return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "moecluster serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (a->model && a->shards && !a->workers) {
        /* both: the shards run, the model folder gives the tokenizer */
    }
    if (a->workers && !a->model) {
        fprintf(stderr, "moecluster serve: --workers needs --model DIR too: the coordinator "
                        "reads the tokenizer (tokenizer.json) from it\n");
        return 2;
    }
    if (a->workers && (a->shards || a->ranks || a->n_wargs || a->kv_blocks || a->kv_bs)) {
        fprintf(stderr, "moecluster serve: --workers attaches to a running group: --shards, "
                        "--ranks, --kv-blocks, --kv-block-size and the layout flags belong to "
                        "its `moecluster worker` command\n");
        return 2;
    }
    if (a->workers && strncmp(a->workers, "tcp://", 6) != 0 &&
        strncmp(a->workers, "ipc://", 6) != 0) {
        fprintf(stderr, "moecluster serve: --workers %s: want tcp://HOST:PORT\n", a->workers);
        return 2;
    }
    if (a->model && !is_dir(a->model)) {
        fprintf(stderr, "moecluster serve: --model %s: no such folder\n", a->model);
        return 2;
    }
    if (mc_par_device_here(S, &par))
        return 1;
    return 0;
}
