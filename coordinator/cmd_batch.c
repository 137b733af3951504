/* cmd_batch.c - `moecluster batch`: an OpenAI batch file (JSONL) through a
 * worker group (docs/serving.md, "Batch files").
 *
 * In, one request a line:
 *   {"custom_id": "a1", "method": "POST", "url": "/v1/completions", "body": {...}}
 * ("/v1/chat/completions" too). Out, one result a line, in the order they
 * finish, id "batch_req_<input line number>":
 *   {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}
 * A body the API refuses is answered like any other (status_code 400, the
 * error body). A line that is not a request (not JSON, custom_id missing or
 * used before, method not POST, another url, body not an object, longer
 * than MAX_LINE) gets
 *   {"id", "custom_id" (null when unknown), "response": null, "error": {"code", "message"}}
 * and the run goes on.
 *
 * Restart: OUT is read first (a torn last line, from a run that was killed,
 * is cut off); a request line whose custom_id has a response in OUT, and a
 * bad line whose id is in OUT, are not done again. Each result is appended
 * with one write of the whole line. The service (service.h) and the API
 * (oai.h) run the requests; CONCURRENCY threads call mc_oai_handle.
 */
#include "cli.h"
#include "demo.h"
#include "oai.h"
#include "par_args.h"
#include "service.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <threads.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (16u << 20)  /* bytes of one input line */
#define MAX_LINES 1000000     /* lines of the input */
#define MAX_CUSTOM_ID 512     /* bytes of a custom_id */
#define MAX_OUT (1ull << 34)  /* bytes of an existing output read back */
#define MAX_WARGS 16

static const char batch_usage_text[] =
    "usage: moecluster batch --input IN.jsonl --output OUT.jsonl [--model DIR|--shards DIR]\n"
    "                        [--ranks N] [--workers ADDR] [--served-model-name NAME]\n"
    "                        [--max-num-seqs N] [--max-model-len N] [--concurrency N]\n"
    "                        [--tp N] [--ep N] [--pp N] [--weights q8_0|q4_k|bf16]\n"
    "                        [--no-mmap] [--no-verify] [--stats] [--activations f32|bf16]\n"
    "                        [--kv-cache-dtype f32|bf16]\n"
    "                        [--device cpu|cuda]\n\n"
    "  --input FILE             OpenAI batch requests, one JSON object a line: custom_id,\n"
    "                           method POST, url /v1/completions or /v1/chat/completions,\n"
    "                           body\n"
    "  --output FILE            results, one a line, appended; lines already answered in it\n"
    "                           are not done again (restart a killed run with the same\n"
    "                           command); never the input\n"
    "  --model DIR              Hugging Face checkpoint folder with tokenizer.json; without\n"
    "                           --model, --shards or --workers the demo model\n"
    "  --shards DIR             a shard set written by `moecluster shard` (the tokenizer\n"
    "                           from --model when given, else from this folder)\n"
    "  --ranks N                run the local worker group as mpirun -np N (default: one\n"
    "                           worker, no mpirun)\n"
    "  --workers ADDR           attach to a group started with mpirun (tcp://HOST:PORT of\n"
    "                           its rank 0); --model is still needed for the tokenizer\n"
    "  --served-model-name NAME the model id the bodies may name (default: the model\n"
    "                           folder's name)\n"
    "  --max-num-seqs N         sequences in one step (default 256)\n"
    "  --max-model-len N        context length (default: the model's, within the KV pool)\n"
    "  --concurrency N          requests in flight (default: --max-num-seqs, else 16)\n"
    MC_DEVICE_USAGE MC_PAR_USAGE
    "Progress on stderr every 2 s. Exit 0 when every line was answered (error entries\n"
    "included), 1 when the file could not be processed, 2 on usage errors.\n";

static void batch_usage(FILE *out)
{
    fputs(batch_usage_text, out);
}

/* ---- arguments ---- */

typedef struct {
    const char *in, *out, *model, *shards, *workers, *name;
    long long ranks, max_seqs, max_len, conc;
    const char *wargs[MAX_WARGS];
    size_t n_wargs;
} batch_args;

static void add_warg(batch_args *a, const char *flag, const char *val)
{
    if (a->n_wargs + 2 <= MAX_WARGS) {
        a->wargs[a->n_wargs++] = flag;
        if (val)
            a->wargs[a->n_wargs++] = val;
    }
}

enum { O_IN = 1, O_OUT, O_MODEL, O_RANKS, O_WORKERS, O_NAME, O_SEQS, O_LEN, O_CONC };

/* Parses argv with the getopt table opts into *a: 0 to go on, -1 after
 * --help, else the exit code. */
static int parse(int argc, char **argv, const struct option *opts, batch_args *a)
{
    mc_par_args par = MC_PAR_ARGS_INIT;
    const char *B = "batch";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int pr = mc_par_option(&par, B, c, optarg);
        if (pr < 0)
            return 2;
        if (pr == 0) { /* forwarded to the workers */
            switch (c) {
            case MC_OPT_TP: add_warg(a, "--tp", optarg); break;
            case MC_OPT_EP: add_warg(a, "--ep", optarg); break;
            case MC_OPT_PP: add_warg(a, "--pp", optarg); break;
            case MC_OPT_WEIGHTS: add_warg(a, "--weights", optarg); break;
            case MC_OPT_STATS: add_warg(a, "--stats", NULL); break;
            case MC_OPT_NO_MMAP: add_warg(a, "--no-mmap", NULL); break;
            case MC_OPT_ACTS: add_warg(a, "--activations", optarg); break;
            case MC_OPT_KV_DTYPE: add_warg(a, "--kv-cache-dtype", optarg); break;
            case MC_OPT_NO_VERIFY: add_warg(a, "--no-verify", NULL); break;
            case MC_OPT_DEVICE: add_warg(a, "--device", optarg); break;
            case MC_OPT_SHARDS: a->shards = optarg; break;
            default: break;
            }
            continue;
        }
        int bad = 0;
        switch (c) {
        case O_IN: a->in = optarg; break;
        case O_OUT: a->out = optarg; break;
        case O_MODEL: a->model = optarg; break;
        case O_WORKERS: a->workers = optarg; break;
        case O_NAME: a->name = optarg; break;
        case O_RANKS: bad = mc_arg_int(B, "--ranks", optarg, 1, 4096, &a->ranks); break;
        case O_SEQS: bad = mc_arg_int(B, "--max-num-seqs", optarg, 1, 1 << 16, &a->max_seqs); break;
        case O_LEN: bad = mc_arg_int(B, "--max-model-len", optarg, 2, 1 << 24, &a->max_len); break;
        case O_CONC: bad = mc_arg_int(B, "--concurrency", optarg, 1, 4096, &a->conc); break;
        case 'h': batch_usage(stdout); return -1;
        default: batch_usage(stderr); return 2;
        }
        if (bad)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "moecluster batch: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!a->in || !a->out) {
        fprintf(stderr, "moecluster batch: --input and --output are required\n");
        batch_usage(stderr);
        return 2;
    }
    if (a->workers && !a->model) {
        fprintf(stderr, "moecluster batch: --workers needs --model DIR too: the coordinator "
                        "reads the tokenizer (tokenizer.json) from it\n");
        return 2;
    }
    if (a->workers && (a->shards || a->ranks || a->n_wargs)) {
        fprintf(stderr, "moecluster batch: --workers attaches to a running group: --shards, "
                        "--ranks and the layout flags belong to its `moecluster worker` command\n");
        return 2;
    }
    if (a->workers && strncmp(a->workers, "tcp://", 6) != 0 &&
        strncmp(a->workers, "ipc://", 6) != 0) {
        fprintf(stderr, "moecluster batch: --workers %s: want tcp://HOST:PORT\n", a->workers);
        return 2;
    }
    struct stat st;
    if (a->model && (stat(a->model, &st) != 0 || !S_ISDIR(st.st_mode))) {
        fprintf(stderr, "moecluster batch: --model %s: no such folder\n", a->model);
        return 2;
    }
    if (mc_par_device_here(B, &par))
        return 1;
    if (!a->conc)
        a->conc = a->max_seqs ? (a->max_seqs < 4096 ? a->max_seqs : 4096) : 16;
    return 0;
}

/* ---- a set of strings (custom_ids) ---- */

typedef struct {
    char **slot; /* (cap) borrowed strings, NULL = empty */
    size_t n, cap;
} str_set;

static uint64_t str_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static bool set_has(const str_set *s, const char *k)
{
    if (!s->cap)
        return false;
    for (size_t i = str_hash(k) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (!s->slot[i])
            return false;
        if (!strcmp(s->slot[i], k))
            return true;
    }
}

/* Adds k (borrowed: must outlive the set); 0, or -1 when memory ran out. */
static int set_add(str_set *s, char *k)
{
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        char **v = calloc(cap, sizeof *v);
        if (!v)
            return -1;
        for (size_t j = 0; j < s->cap; j++) {
            if (!s->slot[j])
                continue;
            size_t i = str_hash(s->slot[j]) & (cap - 1);
            while (v[i])
                i = (i + 1) & (cap - 1);
            v[i] = s->slot[j];
        }
        free(s->slot);
        s->slot = v;
        s->cap = cap;
    }
    size_t i = str_hash(k) & (s->cap - 1);
    while (s->slot[i])
        i = (i + 1) & (s->cap - 1);
    s->slot[i] = k;
    s->n++;
    return 0;
}

/* ---- the input ---- */

typedef struct {
    long line;        /* 1-based line number of the input: the id */
    char *custom_id;  /* NULL when unknown */
    const char *url;  /* a good line: one of URLS */
    char *body;       /* a good line: the body, compact JSON */
    const char *code; /* a bad line: the error code; NULL for a good line */
    char *msg;        /* a bad line: why */
} batch_item;

static const char *const URLS[] = {"/v1/completions", "/v1/chat/completions"};

static void item_free(batch_item *it)
{
    free(it->custom_id);
    free(it->body);
    free(it->msg);
}

/* A bad line: code and a printf message (one line). */
static void item_bad(batch_item *it, const char *code, const char *fmt, const char *arg)
{
    char m[512];
    snprintf(m, sizeof m, fmt, arg);
    it->code = code;
    it->msg = strdup(m);
}

/* Reads one line (without its '\n') into *buf; bytes past MAX_LINE are
 * dropped and *too_long set. 2: a line ended by '\n'; 1: the last line,
 * ended by the end of the file; 0: end of file; -1: read error or out of
 * memory (errno says which). */
static int read_line(FILE *f, char **buf, size_t *cap, size_t *len, bool *too_long)
{
    *len = 0;
    *too_long = false;
    int ch;
    bool any = false;
    while ((ch = getc(f)) != EOF) {
        any = true;
        if (ch == '\n')
            return 2;
        if (*len >= MAX_LINE) {
            *too_long = true;
            continue;
        }
        if (*len + 1 >= *cap) {
            size_t nc = *cap ? 2 * *cap : 4096;
            char *v = realloc(*buf, nc);
            if (!v) {
                errno = ENOMEM;
                return -1;
            }
            *buf = v;
            *cap = nc;
        }
        (*buf)[(*len)++] = (char)ch;
    }
    if (ferror(f))
        return -1;
    return any ? 1 : 0;
}

/* One input line into *it (good or bad). -1 only when memory ran out. */
static int parse_item(const char *text, size_t len, bool too_long, str_set *seen, batch_item *it)
{
    if (too_long) {
        item_bad(it, "line_too_long", "the line is longer than %s bytes", "16777216");
        return it->msg ? 0 : -1;
    }
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    if (!j || !json_is_object(j)) {
        item_bad(it, "invalid_json", j ? "the line is not a JSON object%s" : "the line is not JSON: %s",
                 j ? "" : je.text);
        json_decref(j);
        return it->msg ? 0 : -1;
    }
    json_t *cid = json_object_get(j, "custom_id"), *m = json_object_get(j, "method");
    json_t *u = json_object_get(j, "url"), *b = json_object_get(j, "body");
    const char *cs = json_string_value(cid);
    if (!cs || !*cs || strlen(cs) > MAX_CUSTOM_ID || json_string_length(cid) != strlen(cs)) {
        item_bad(it, "missing_custom_id", "custom_id must be a non-empty string of at most %s bytes",
                 "512");
        goto done;
    }
    if (!(it->custom_id = strdup(cs)))
        goto nomem;
    if (set_has(seen, cs)) {
        item_bad(it, "duplicate_custom_id", "custom_id '%.200s' is used by an earlier line", cs);
        goto done;
    }
    if (set_add(seen, it->custom_id))
        goto nomem;
    if (!json_is_string(m) || strcmp(json_string_value(m), "POST")) {
        item_bad(it, "invalid_method", "method must be \"POST\"%s", "");
        goto done;
    }
    for (size_t i = 0; i < 2 && json_is_string(u); i++)
        if (!strcmp(json_string_value(u), URLS[i]))
            it->url = URLS[i];
    if (!it->url) {
        item_bad(it, "invalid_url", "url must be \"/v1/completions\" or \"/v1/chat/completions\"%s",
                 "");
        goto done;
    }
    if (!json_is_object(b)) {
        it->url = NULL;
        item_bad(it, "invalid_body", "body must be a JSON object (the request)%s", "");
        goto done;
    }
    if (!(it->body = json_dumps(b, JSON_COMPACT)))
        goto nomem;
done:
    json_decref(j);
    return it->code && !it->msg ? -1 : 0;
nomem:
    json_decref(j);
    return -1;
}

/* ---- the output ---- */

/* Appends one line (text + '\n') with one write; -1 with errno on failure. */
static int write_line(int fd, const char *text)
{
    size_t n = strlen(text);
    char *buf = malloc(n + 1);
    if (!buf) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(buf, text, n);
    buf[n] = '\n';
    size_t off = 0;
    while (off < n + 1) {
        ssize_t w = write(fd, buf + off, n + 1 - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            free(buf);
            if (w == 0)
                errno = EIO;
            return -1;
        }
        off += (size_t)w;
    }
    free(buf);
    return 0;
}

/* Reads the existing output (fd, opened read-write): cuts a torn last line
 * off, and collects the custom_ids answered with a response into *answered
 * (strings owned by *keep) and the line numbers of the ids into done[]
 * (n_done entries, 1-based). */
static mc_status read_output(int fd, const char *path, str_set *answered, json_t *keep,
                             bool *done, long n_done, mc_err *err)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return mc_err_set(err, MC_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
    if ((uint64_t)st.st_size > MAX_OUT)
        return mc_err_set(err, MC_ERR_FORMAT, "%s is larger than 16 GiB", path);
    int fd2 = dup(fd);
    FILE *f = fd2 >= 0 ? fdopen(fd2, "rb") : NULL;
    if (!f) {
        if (fd2 >= 0)
            close(fd2);
        return mc_err_set(err, MC_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    }
    mc_status s = MC_OK;
    char *buf = NULL;
    size_t cap = 0, len = 0;
    bool too_long;
    long no = 0;
    off_t good_end = 0;
    int r;
    while ((r = read_line(f, &buf, &cap, &len, &too_long)) == 2) {
        no++;
        if (len == 0) { /* a blank line */
            good_end = ftello(f);
            continue;
        }
        json_error_t je;
        json_t *j = too_long ? NULL : json_loadb(buf, len, 0, &je);
        const char *id = json_string_value(json_object_get(j, "id"));
        if (!json_is_object(j) || !id || strncmp(id, "batch_req_", 10)) {
            json_decref(j);
            s = mc_err_set(err, MC_ERR_FORMAT,
                           "%s line %ld is not a batch result line: not appending to it", path,
                           no);
            goto fail;
        }
        char *end;
        long n = strtol(id + 10, &end, 10);
        if (!*end && n >= 1 && n <= n_done)
            done[n - 1] = true;
        json_t *cid = json_object_get(j, "custom_id");
        json_t *resp = json_object_get(j, "response");
        if (json_is_string(cid) && json_is_object(resp)) {
            json_t *c2 = json_string(json_string_value(cid));
            if (!c2 || json_array_append_new(keep, c2) ||
                set_add(answered, (char *)json_string_value(c2))) {
                json_decref(j);
                s = mc_err_set(err, MC_ERR_NOMEM, "out of memory");
                goto fail;
            }
        }
        json_decref(j);
        good_end = ftello(f);
    }
    if (r < 0) {
        s = mc_err_set(err, MC_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        goto fail;
    }
    if (good_end < st.st_size) {
        fprintf(stderr, "moecluster batch: %s: cutting off a torn last line (%lld bytes)\n", path,
                (long long)(st.st_size - good_end));
        if (ftruncate(fd, good_end) != 0)
            s = mc_err_set(err, MC_ERR_IO, "cannot cut the torn last line of %s: %s", path,
                           strerror(errno));
    }
fail:
    free(buf);
    fclose(f);
    return s;
}

/* ---- the run ---- */

typedef struct {
    mc_oai *api;
    mc_service *svc;
    int fd; /* the output, O_APPEND */
    const char *out_path;
    batch_item *const *todo; /* (n_todo) the good lines to run */
    size_t n_todo;
    mtx_t mu; /* guards what follows, and the writes to fd */
    size_t next;        /* the next todo index to take */
    size_t done, errors;
    bool abort; /* stop taking lines; results that come back are not written */
    mc_err err; /* why the run stopped */
} batch_run;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    (void)sig;
    got_signal = 1;
}

/* Writes one entry (JSON object, stolen) to the output. */
static void put_entry(batch_run *r, json_t *e, bool is_error)
{
    char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    mtx_lock(&r->mu);
    if (!text) {
        mc_err_set(&r->err, MC_ERR_NOMEM, "out of memory");
        r->abort = true;
    } else if (!r->abort) {
        if (write_line(r->fd, text) != 0) {
            mc_err_set(&r->err, MC_ERR_IO, "cannot write %s: %s", r->out_path, strerror(errno));
            r->abort = true;
        } else {
            r->done++;
            r->errors += is_error;
        }
    }
    mtx_unlock(&r->mu);
    free(text);
}

static json_t *error_entry(const batch_item *it)
{
    char id[48];
    snprintf(id, sizeof id, "batch_req_%ld", it->line);
    return json_pack("{s:s, s:s?, s:n, s:{s:s, s:s}}", "id", id, "custom_id", it->custom_id,
                     "response", "error", "code", it->code, "message", it->msg);
}

static bool aborted(batch_run *r)
{
    mtx_lock(&r->mu);
    bool a = r->abort;
    mtx_unlock(&r->mu);
    return a;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Runs one good line: mc_oai_handle, retried on 429 (after a pause) and on
 * a 5xx while the group restarts (up to 3 times), then the entry written.
 * When the service gave up (or the run is stopping) nothing is written: a
 * later run does the line. */
static void run_item(batch_run *r, const batch_item *it)
{
    char *resp = NULL;
    int code = 0;
    for (int tries = 0, busy = 0;;) {
        free(resp);
        resp = NULL;
        code = mc_oai_handle(r->api, it->url, it->body, strlen(it->body), &resp);
        if (aborted(r) || got_signal)
            goto out;
        if (code == 429 && busy++ < 60000) {
            sleep_ms(10);
            continue;
        }
        if (code < 500 || !resp)
            break;
        mc_service_state st = mc_service_get_state(r->svc);
        if (st == MC_SERVICE_FAILED || st == MC_SERVICE_STOPPED) {
            char why[512];
            mc_service_last_error(r->svc, why, sizeof why);
            mtx_lock(&r->mu);
            mc_err_set(&r->err, MC_ERR_IO, "the worker group failed: %s", why);
            r->abort = true;
            mtx_unlock(&r->mu);
            goto out;
        }
        if (tries++ >= 3)
            break;
        mc_service_wait_ready(r->svc, 600000);
    }
    char id[48];
    snprintf(id, sizeof id, "batch_req_%ld", it->line);
    json_t *e;
    if (!resp) { /* 500 without a body: out of memory */
        e = json_pack("{s:s, s:s, s:n, s:{s:s, s:s}}", "id", id, "custom_id", it->custom_id,
                      "response", "error", "code", "internal_error", "message", "out of memory");
    } else {
        json_error_t je;
        json_t *body = json_loads(resp, 0, &je);
        if (!body)
            body = json_string(resp); /* not expected: the API answers JSON */
        const char *rid = json_string_value(json_object_get(body, "id"));
        e = json_pack("{s:s, s:s, s:{s:i, s:s, s:o}, s:n}", "id", id, "custom_id", it->custom_id,
                      "response", "status_code", code, "request_id", rid ? rid : id, "body", body,
                      "error");
    }
    put_entry(r, e, code >= 400 || !resp);
out:
    free(resp);
}

static int batch_thread(void *arg)
{
    batch_run *r = arg;
    for (;;) {
        mtx_lock(&r->mu);
        size_t i = r->next;
        bool stop = r->abort || i >= r->n_todo;
        if (!stop)
            r->next++;
        mtx_unlock(&r->mu);
        if (stop || got_signal)
            return 0;
        run_item(r, r->todo[i]);
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Starts the group and the API, runs the lines on a.conc threads with a
 * progress line every 2 s; the output's errors and the service's failures
 * end up in r->err. */
static mc_status run_lines(const batch_args *a, const char *tok_dir, batch_run *r, mc_err *err)
{
    mc_service_opts so = {.model_dir = a->shards ? NULL : a->model,
                          .shards_dir = a->shards,
                          .workers_addr = a->workers,
                          .ranks = (uint32_t)a->ranks,
                          .worker_args = a->wargs,
                          .n_worker_args = a->n_wargs,
                          .max_num_seqs = (uint32_t)a->max_seqs,
                          .max_model_len = (uint32_t)a->max_len};
    mc_status st = mc_service_start(&so, &r->svc, err);
    if (st != MC_OK)
        return st;
    mc_oai_opts oo = {.service = r->svc, .model_dir = tok_dir, .model_name = a->name};
    if ((st = mc_oai_open(&oo, &r->api, err)) != MC_OK)
        return st;
    fprintf(stderr, "moecluster batch: waiting for the worker group of %s\n",
            mc_oai_model_name(r->api));
    while (!mc_service_wait_ready(r->svc, 500)) {
        mc_service_state s = mc_service_get_state(r->svc);
        if (got_signal)
            return mc_err_set(err, MC_ERR_IO, "interrupted while the workers were starting");
        if (s == MC_SERVICE_FAILED || s == MC_SERVICE_STOPPED) {
            char why[512];
            mc_service_last_error(r->svc, why, sizeof why);
            return mc_err_set(err, MC_ERR_IO, "the worker group did not start: %s", why);
        }
    }
    size_t nt = (size_t)a->conc < r->n_todo ? (size_t)a->conc : r->n_todo;
    thrd_t *th = calloc(nt, sizeof *th);
    if (!th)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    size_t started = 0;
    for (; started < nt; started++)
        if (thrd_create(&th[started], batch_thread, r) != thrd_success)
            break;
    if (!started) {
        free(th);
        return mc_err_set(err, MC_ERR_IO, "cannot start a thread");
    }
    double t0 = now_s(), last = t0;
    for (;;) {
        sleep_ms(200);
        mtx_lock(&r->mu);
        size_t done = r->done, errors = r->errors;
        bool finished = r->abort || (r->next >= r->n_todo && done >= r->n_todo);
        if (got_signal && !r->abort) {
            mc_err_set(&r->err, MC_ERR_IO, "interrupted");
            r->abort = true;
        }
        mc_service_state ss = mc_service_get_state(r->svc);
        if ((ss == MC_SERVICE_FAILED || ss == MC_SERVICE_STOPPED) && !r->abort) {
            char why[512];
            mc_service_last_error(r->svc, why, sizeof why);
            mc_err_set(&r->err, MC_ERR_IO, "the worker group failed: %s", why);
            r->abort = true;
        }
        bool stop = finished || r->abort;
        mtx_unlock(&r->mu);
        double t = now_s();
        if (t - last >= 2.0 || finished) {
            fprintf(stderr, "moecluster batch: %zu/%zu done, %zu errors, %.1f req/s\n", done,
                    r->n_todo, errors, done / (t - t0 > 0 ? t - t0 : 1));
            last = t;
        }
        if (stop)
            break;
    }
    if (got_signal || aborted(r))
        mc_oai_shutdown(r->api); /* handlers waiting on requests give up */
    for (size_t i = 0; i < started; i++)
        thrd_join(th[i], NULL);
    free(th);
    return MC_OK;
}

int mc_cmd_batch(int argc, char **argv)
{
    static const struct option opts[] = {{"input", required_argument, 0, O_IN},
                                          {"output", required_argument, 0, O_OUT},
                                          {"model", required_argument, 0, O_MODEL},
                                          {"ranks", required_argument, 0, O_RANKS},
                                          {"workers", required_argument, 0, O_WORKERS},
                                          {"served-model-name", required_argument, 0, O_NAME},
                                          {"max-num-seqs", required_argument, 0, O_SEQS},
                                          {"max-model-len", required_argument, 0, O_LEN},
                                          {"concurrency", required_argument, 0, O_CONC},
                                          {"help", no_argument, 0, 'h'},
                                          MC_PAR_OPTIONS,
                                          MC_DEVICE_OPTIONS,
                                          {0, 0, 0, 0}};
    batch_args a = {0};
    int rc = parse(argc, argv, opts, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    mc_err err;
    mc_err_clear(&err);
    batch_item *items = NULL;
    batch_item **todo = NULL;
    size_t n_items = 0, cap_items = 0, n_todo = 0, n_skip = 0, n_bad = 0;
    str_set seen = {0}, answered = {0};
    json_t *keep = json_array();
    bool *done = NULL;
    char *buf = NULL, demo[4096];
    size_t cap = 0, len = 0;
    FILE *in = NULL;
    batch_run r = {.fd = -1, .out_path = a.out};
    mtx_init(&r.mu, mtx_plain);
    mc_err_clear(&r.err);
    rc = 1;
    if (!keep) {
        mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* the input, and the output: never the same file */
    in = fopen(a.in, "rb");
    if (!in) {
        mc_err_set(&err, MC_ERR_IO, "cannot read %s: %s", a.in, strerror(errno));
        goto fail;
    }
    struct stat si, so;
    if (fstat(fileno(in), &si) != 0 || S_ISDIR(si.st_mode)) {
        mc_err_set(&err, MC_ERR_IO, "cannot read %s: not a file", a.in);
        goto fail;
    }
    if (stat(a.out, &so) == 0 && so.st_dev == si.st_dev && so.st_ino == si.st_ino) {
        fprintf(stderr, "moecluster batch: --output %s is the input file\n", a.out);
        rc = 2;
        goto fail;
    }
    r.fd = open(a.out, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0644);
    if (r.fd < 0 || fstat(r.fd, &so) != 0) {
        mc_err_set(&err, MC_ERR_IO, "cannot open %s for writing: %s", a.out, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(so.st_mode)) { /* a FIFO, a device: no restart, no torn-line repair */
        mc_err_set(&err, MC_ERR_IO, "%s is not a regular file", a.out);
        goto fail;
    }
    /* every input line */
    bool too_long;
    int got;
    long line = 0;
    while ((got = read_line(in, &buf, &cap, &len, &too_long)) > 0) {
        line++;
        size_t k = 0;
        while (k < len && (buf[k] == ' ' || buf[k] == '\t' || buf[k] == '\r'))
            k++;
        if (k == len && !too_long)
            continue; /* a blank line */
        if (n_items >= MAX_LINES) {
            mc_err_set(&err, MC_ERR_FORMAT, "%s has more than %d requests", a.in, MAX_LINES);
            goto fail;
        }
        if (n_items == cap_items) {
            size_t nc = cap_items ? 2 * cap_items : 256;
            batch_item *v = realloc(items, nc * sizeof *v);
            if (!v) {
                mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
                goto fail;
            }
            items = v;
            cap_items = nc;
        }
        batch_item *it = &items[n_items++];
        memset(it, 0, sizeof *it);
        it->line = line;
        if (parse_item(buf, len, too_long, &seen, it) != 0) {
            mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
            goto fail;
        }
    }
    if (got < 0) {
        mc_err_set(&err, MC_ERR_IO, "cannot read %s: %s", a.in, strerror(errno));
        goto fail;
    }
    /* what the output holds already */
    done = calloc((size_t)line + 1, sizeof *done);
    todo = calloc(n_items + 1, sizeof *todo);
    if (!done || !todo) {
        mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (read_output(r.fd, a.out, &answered, keep, done, line, &err) != MC_OK)
        goto fail;
    if (!a.model && !a.shards && !a.workers) { /* made now when not cached */
        if (mc_demo_model_dir(demo, sizeof demo, 0, &err) != MC_OK)
            goto fail;
        a.model = demo;
        if (!a.name) a.name = "moecluster-demo";
    }
    for (size_t i = 0; i < n_items; i++) {
        batch_item *it = &items[i];
        bool skip = it->code ? done[it->line - 1] : set_has(&answered, it->custom_id);
        if (skip)
            n_skip++;
        else if (it->code) { /* a bad line: its entry now */
            n_bad++;
            put_entry(&r, error_entry(it), true);
        } else
            todo[n_todo++] = it;
    }
    if (r.abort) {
        mc_err_set(&err, r.err.status, "%s", r.err.msg);
        goto fail;
    }
    fprintf(stderr, "moecluster batch: %zu requests in %s: %zu to run, %zu bad lines, %zu done "
                    "before\n", n_items, a.in, n_todo, n_bad, n_skip);
    r.todo = todo;
    r.n_todo = n_todo;
    r.done = r.errors = 0;
    if (n_todo) {
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (run_lines(&a, a.model ? a.model : a.shards, &r, &err) != MC_OK)
            goto fail;
        if (r.abort || r.done < n_todo) {
            mc_err_set(&err, r.err.status ? r.err.status : MC_ERR_IO, "%s; %zu of %zu lines not "
                       "answered: run the same command again to finish", r.err.msg[0] ?
                       r.err.msg : "stopped", n_todo - r.done, n_todo);
            goto fail;
        }
    }
    if (fsync(r.fd) != 0 && errno != EINVAL) {
        mc_err_set(&err, MC_ERR_IO, "cannot write %s: %s", a.out, strerror(errno));
        goto fail;
    }
    fprintf(stderr, "moecluster batch: done: %zu answered (%zu with errors), %zu bad lines; "
                    "results in %s\n", r.done, r.errors, n_bad, a.out);
    rc = 0;
fail:
    if (rc == 1)
        fprintf(stderr, "moecluster batch: %s\n", err.msg[0] ? err.msg : "failed");
    if (r.api)
        mc_oai_shutdown(r.api);
    mc_service_stop(r.svc);
    mc_oai_close(r.api);
    if (r.fd >= 0)
        close(r.fd);
    if (in)
        fclose(in);
    for (size_t i = 0; i < n_items; i++)
        item_free(&items[i]);
    free(items);
    free(todo);
    free(done);
    free(buf);
    free(seen.slot);
    free(answered.slot);
    json_decref(keep);
    mtx_destroy(&r.mu);
    return rc;
}
