/* cmd_bench.c - `moecluster bench`: prefill and decode speed of a model on
 * this machine, the weight bytes a decode step reads, and the memory
 * bandwidth and FMA peak probed in the same process, so the achieved
 * fraction of each is measured, not assumed (docs/kernels.md).
 *
 * Prefill: one sequence of --prompt-len tokens in one forward pass (logits
 * of the last position). Decode: --gen-len steps of --batch tokens each
 * (several batch sizes in one run: --batch 1,8,64; each after the same
 * prompt, the model loaded once),
 * appended to that sequence in one forward pass per step (for all of
 * them the greedy next token, picked where the logits are: mc_session_forward_top
 * with k = 1, so a GPU sends back one id a row, not the row): a step reads every weight it needs once for the whole batch,
 * exactly as a batch of independent sequences would; only the attention
 * over the cache differs (one sequence instead of B).
 *
 * Each measurement is repeated (--repeat, default 3: prefill from an empty
 * cache each time, decode as consecutive windows of --gen-len steps) and
 * the fastest is reported, as the probes report their fastest pass: on a
 * shared machine other processes only ever slow a run down. */
#include "cli.h"
#include "gguf.h"
#include "log.h"
#include "model_gguf.h"
#include "session.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The one usage text: printed by --help and on usage errors. */
static const char bench_usage_text[] =
    "usage: moecluster bench --model DIR [--batch B] [--prompt-len N] [--gen-len M]\n"
    "                        [--threads T] [--weights q8_0|q4_k|bf16] [--no-mmap]\n"
    "                        [--kernels scalar|avx2|avx512|amx] [--probe-mib S] [--repeat R]\n"
    "                        [--activations f32|bf16] [--kv-cache-dtype f32|bf16] [--json]\n"
    "                        [--device cpu|cuda]\n\n"
    "  --model       checkpoint folder (config.json + safetensors), or a .gguf file\n"
    "  --batch       tokens per decode step (default 1); a comma list (up to 8, e.g.\n"
    "                1,8,64,256) measures each after the same prompt, one load\n"
    "  --prompt-len  prefill length (default 128)\n"
    "  --gen-len     decode steps (default 32)\n"
    "  --threads     threads for the matrix products (default: MC_THREADS or all CPUs)\n"
    "  --weights     quantize expert and dense matrices at load time (default: as stored)\n"
    "  --no-mmap     without --weights: copy the matrices into RAM on huge pages at load\n"
    "                (default: read in place from the file mapping)\n"
    "  --kernels     scalar | avx2 | avx512 | amx (default: MC_KERNELS or the best the CPU has)\n"
    "  --activations f32 | bf16: activations meeting BF16 weights as they are (default;\n"
    "                exact f32 products) or rounded to bf16 first, as llama.cpp does\n"
    "  --kv-cache-dtype f32 | bf16: the KV cache's values (default f32, exact; bf16 halves\n"
    "                its memory and what attention reads)\n"
    "  --probe-mib   buffer of the bandwidth probe in MiB (default 1024)\n"
    "  --repeat      runs of each measurement, the fastest reported (default 3)\n"
    "  --json        one JSON object instead of text (\"decode\": one entry per batch)\n"
    "  --device      cpu | cuda (default: cuda when this build has CUDA and a GPU is\n"
    "                visible, else cpu); the probes run on it too\n";

static void bench_usage(FILE *out) { fputs(bench_usage_text, out); }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void cpu_model(char *buf, size_t len)
{
    snprintf(buf, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                c++;
                while (*c == ' ')
                    c++;
                c[strcspn(c, "\n")] = 0;
                snprintf(buf, len, "%s", c);
            }
            break;
        }
    fclose(f);
}

/* MiB of this process's anonymous memory on transparent huge pages (weights
 * copied or quantized at load and the probe buffer ask for them; whether
 * the kernel grants them changes the bandwidth by up to 2x), -1 if unknown. */
static long anon_huge_mib(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb < 0 ? -1 : kb / 1024;
}

/* A JSON number, or null when v is not finite (JSON has no NaN or inf). New
 * reference, NULL only when out of memory. */
static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* v rounded to a JSON integer (byte counts), null when not finite or out
 * of range. New reference, NULL only when out of memory. */
static json_t *jcount(double v)
{
    return isfinite(v) && fabs(v) < 9e18 ? json_integer((json_int_t)llround(v)) : json_null();
}

/* Sets o[key] = v, stealing v; false when v is NULL (out of memory, or a
 * string that is not UTF-8) or the set failed. */
static bool jput(json_t *o, const char *key, json_t *v)
{
    return v && json_object_set_new(o, key, v) == 0;
}

/* llama.cpp's general.file_type values (llama.h's llama_ftype): the name
 * its tools print, or NULL for a value not in this table. */
static const char *gguf_ftype_name(uint32_t t)
{
    static const char *const names[] = {
        [0] = "F32",      [1] = "F16",      [2] = "Q4_0",     [3] = "Q4_1",
        [7] = "Q8_0",     [8] = "Q5_0",     [9] = "Q5_1",     [10] = "Q2_K",
        [11] = "Q3_K_S",  [12] = "Q3_K_M",  [13] = "Q3_K_L",  [14] = "Q4_K_S",
        [15] = "Q4_K_M",  [16] = "Q5_K_S",  [17] = "Q5_K_M",  [18] = "Q6_K",
        [19] = "IQ2_XXS", [20] = "IQ2_XS",  [21] = "Q2_K_S",  [22] = "IQ3_XS",
        [23] = "IQ3_XXS", [24] = "IQ1_S",   [25] = "IQ4_NL",  [26] = "IQ3_S",
        [27] = "IQ3_M",   [28] = "IQ2_S",   [29] = "IQ2_M",   [30] = "IQ4_XS",
        [31] = "IQ1_M",   [32] = "BF16",    [36] = "TQ1_0",   [37] = "TQ2_0",
        [38] = "MXFP4_MOE"};
    return t < sizeof names / sizeof names[0] ? names[t] : NULL;
}

/* The GGUF file behind a model path (a .gguf file or a folder of split
 * parts) as a JSON object: file (the last path component), parts,
 * file_type (general.file_type, null when absent) and its name, name
 * (general.name, null when absent or not UTF-8) and tensor_types (ggml
 * type name -> tensor count). *out is a new reference the caller frees
 * with json_decref. */
static mc_status gguf_info(const char *path, json_t **out, mc_err *err)
{
    *out = NULL;
    mc_gguf *g = NULL;
    json_t *o = json_object(), *types = json_object();
    mc_status st = mc_gguf_open(path, &g, err);
    if (st != MC_OK)
        goto fail;
    st = MC_ERR_NOMEM;
    if (!o || !types) {
        mc_err_set(err, st, "out of memory");
        goto fail;
    }
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--; /* "dir/" names dir */
    size_t start = len;
    while (start > 0 && path[start - 1] != '/')
        start--;
    uint32_t ft = 0;
    mc_err ignored;
    bool have_ft = mc_gguf_get_u32(g, "general.file_type", &ft, &ignored) == MC_OK;
    const char *ftn = have_ft ? gguf_ftype_name(ft) : NULL;
    const mc_gguf_kv *nm = mc_gguf_find_kv(g, "general.name");
    json_t *name = nm && nm->type == MC_GGUF_STR ? json_stringn(nm->str, nm->str_len) : NULL;
    bool ok = jput(o, "file", json_stringn(path + start, len - start)) &&
              jput(o, "parts", json_integer(mc_gguf_n_parts(g))) &&
              jput(o, "file_type", have_ft ? json_integer(ft) : json_null()) &&
              jput(o, "file_type_name", ftn ? json_string(ftn) : json_null()) &&
              jput(o, "name", name ? name : json_null());
    for (uint64_t i = 0; ok && i < mc_gguf_n_tensors(g); i++) {
        const char *tn = mc_ggml_type_name(mc_gguf_tensor_at(g, i)->type);
        json_t *n = json_object_get(types, tn);
        ok = n ? json_integer_set(n, json_integer_value(n) + 1) == 0
               : jput(types, tn, json_integer(1));
    }
    if (ok) {
        ok = jput(o, "tensor_types", types);
        types = NULL; /* stolen, even when the set failed */
    }
    if (!ok) {
        mc_err_set(err, st, "%s: the GGUF summary: out of memory or a file name that is not UTF-8",
                   path);
        goto fail;
    }
    mc_gguf_close(g);
    *out = o;
    return MC_OK;
fail:
    json_decref(types);
    json_decref(o);
    mc_gguf_close(g);
    return st;
}

#define MAX_REPEAT 100 /* --repeat's bound */
#define MAX_BATCHES 8  /* values of --batch */

/* --batch: a comma list of 1..4096, at most MAX_BATCHES values; 0, or 2 after
 * printing why. */
static int parse_batches(const char *arg, long long *b, int *nb)
{
    char buf[128];
    if (strlen(arg) >= sizeof buf) {
        fprintf(stderr, "moecluster bench: --batch: '%.40s...' is too long\n", arg);
        return 2;
    }
    strcpy(buf, arg);
    *nb = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*nb == MAX_BATCHES) {
            fprintf(stderr, "moecluster bench: --batch: more than %d values\n", MAX_BATCHES);
            return 2;
        }
        if (mc_arg_int("bench", "--batch", t, 1, 4096, &b[(*nb)++]))
            return 2;
    }
    /* an empty piece (",8", "1,,8", "8,") is not a batch size */
    if (*nb == 0 || arg[0] == ',' || arg[strlen(arg) - 1] == ',' || strstr(arg, ",,")) {
        fprintf(stderr, "moecluster bench: --batch: '%s' is not a comma list of batch sizes\n",
                arg);
        return 2;
    }
    return 0;
}

/* One decode measurement (one batch size). */
typedef struct {
    long long batch;
    double tok_s, bytes_step, achieved, paired_ratio, paired_probe;
} decode_row;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n) (1 <= n <= MAX_REPEAT, no NaN; v is left as it was). */
static double median(const double *v, int n)
{
    double s[MAX_REPEAT];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static int argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

int mc_cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                          {"batch", required_argument, 0, 'b'},
                                          {"prompt-len", required_argument, 0, 'p'},
                                          {"gen-len", required_argument, 0, 'g'},
                                          {"threads", required_argument, 0, 't'},
                                          {"weights", required_argument, 0, 'w'},
                                          {"kernels", required_argument, 0, 'k'},
                                          {"probe-mib", required_argument, 0, 'P'},
                                          {"repeat", required_argument, 0, 'r'},
                                          {"json", no_argument, 0, 'j'},
                                          {"device", required_argument, 0, 'D'},
                                          {"no-mmap", no_argument, 0, 'M'},
                                          {"activations", required_argument, 0, 'A'},
                                          {"kv-cache-dtype", required_argument, 0, 'K'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    const char *dir = NULL, *device = NULL; /* --device; NULL = auto */
    long long batches[MAX_BATCHES] = {1}, plen = 128, glen = 32, threads = 0, probe_mib = 1024,
              reps = 3;
    int nb = 1;
    decode_row rows[MAX_BATCHES];
    int json = 0, have_fmt = 0, resident = 0, bf16_acts = 0, bf16_kv = 0;
    mc_dtype fmt = MC_DT_BF16;
    int c;
    mc_err err;
    mc_err_clear(&err);
    mc_session *ses = NULL; /* one process, no world: the backend is known before parsing */
    if (mc_session_open(NULL, NULL, false, &ses, &err) != MC_OK) {
        fprintf(stderr, "moecluster bench: %s\n", err.msg);
        return 1;
    }
#define PARSE_RETURN(x)                                                                            \
    do {                                                                                           \
        mc_session_close(ses, false);                                                              \
        return (x);                                                                                \
    } while (0)
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case 'b':
            if (parse_batches(optarg, batches, &nb))
                PARSE_RETURN(2);
            break;
        case 'p':
            if (mc_arg_int("bench", "--prompt-len", optarg, 1, 1 << 20, &plen))
                PARSE_RETURN(2);
            break;
        case 'g':
            if (mc_arg_int("bench", "--gen-len", optarg, 1, 1 << 20, &glen))
                PARSE_RETURN(2);
            break;
        case 't':
            if (mc_arg_int("bench", "--threads", optarg, 1, 1024, &threads))
                PARSE_RETURN(2);
            break;
        case 'P':
            if (mc_arg_int("bench", "--probe-mib", optarg, 1, 1 << 20, &probe_mib))
                PARSE_RETURN(2);
            break;
        case 'r':
            if (mc_arg_int("bench", "--repeat", optarg, 1, MAX_REPEAT, &reps))
                PARSE_RETURN(2);
            break;
        case 'w':
            if (mc_weight_format_from_name(optarg, &fmt) != 0) {
                fprintf(stderr, "moecluster bench: --weights: '%s' is not q8_0, q4_k, bf16, f16 or f32\n",
                        optarg);
                PARSE_RETURN(2);
            }
            have_fmt = 1;
            break;
        case 'k': {
            mc_status ks = mc_session_set_kernels(ses, optarg, &err);
            if (ks == MC_ERR_ARG) {
                fprintf(stderr, "moecluster bench: --kernels: '%s' is not scalar, avx2, avx512 or amx\n",
                        optarg);
                PARSE_RETURN(2);
            }
            if (ks != MC_OK) {
                fprintf(stderr, "moecluster bench: --kernels %s: this CPU or build lacks it\n",
                        optarg);
                PARSE_RETURN(2);
            }
            break;
        }
        case 'j': json = 1; break;
        case 'D':
            if (strcmp(optarg, "cpu") != 0 && strcmp(optarg, "cuda") != 0) {
                fprintf(stderr, "moecluster bench: --device: '%s' is not cpu or cuda\n", optarg);
                PARSE_RETURN(2);
            }
            device = optarg;
            break;
        case 'M': resident = 1; break;
        case 'A': /* f32 | bf16 */
        case 'K':
            if (strcmp(optarg, "f32") != 0 && strcmp(optarg, "bf16") != 0) {
                fprintf(stderr, "moecluster bench: --%s: '%s' is not f32 or bf16\n",
                        c == 'A' ? "activations" : "kv-cache-dtype", optarg);
                PARSE_RETURN(2);
            }
            *(c == 'A' ? &bf16_acts : &bf16_kv) = strcmp(optarg, "bf16") == 0;
            break;
        case 'h': bench_usage(stdout); PARSE_RETURN(0);
        default: bench_usage(stderr); PARSE_RETURN(2);
        }
    }
    if (optind < argc || !dir) {
        fprintf(stderr, "moecluster bench: %s\n", dir ? "unexpected argument" : "--model is required");
        bench_usage(stderr);
        PARSE_RETURN(2);
    }
    /* the device before anything runs (a --kernels choice stays on cpu) */
    if (mc_session_set_device(ses, device ? device : "auto", &err) != MC_OK) {
        fprintf(stderr, "moecluster bench: %s\n", err.msg);
        PARSE_RETURN(1);
    }
#undef PARSE_RETURN
    mc_session_set_threads(ses, (int)threads); /* 0: MC_THREADS or the CPU count */
    int nthreads = mc_session_threads(ses);
    float *logits = NULL;
    int64_t *tok = NULL, *tok_prompt = NULL;
    int32_t *pick = NULL; /* (batch) each decode row's greedy next token */
    float *pickv = NULL;
    int rc = 1;
    double t0 = now_s();
    /* --weights converts at load; without it the weights are used as stored
     * (--no-mmap: copied into RAM on huge pages) */
    mc_session_opts lo = {.dir = dir, .weights_given = have_fmt, .weights = fmt,
                          .resident = resident, .bf16_acts = bf16_acts,
                          .kv_dtype = bf16_kv ? MC_DT_BF16 : MC_DT_F32};
    if (have_fmt)
        MC_INFO("bench: quantizing expert and dense weights to %s", mc_dtype_name(fmt));
    if (mc_session_load(ses, &lo, &err) != MC_OK)
        goto fail;
    const mc_model_desc *d = mc_session_desc(ses);
    if (d->family == MC_FAM_DEEPSEEK_V4) {
        mc_err_set(&err, MC_ERR_UNSUPPORTED, "bench does not run DeepSeek-V4 models yet");
        goto fail;
    }
    mc_session_warm(ses);
    double t_load = now_s() - t0;
    int V = d->vocab;
    long long batch = 1; /* the largest */
    for (int i = 0; i < nb; i++)
        batch = batches[i] > batch ? batches[i] : batch;
    if ((double)plen + (double)batch * (double)(glen * reps + 1) > (double)d->max_pos * 64) {
        mc_err_set(&err, MC_ERR_ARG,
                   "prompt + batch x gen-len x repeat is longer than the model allows");
        goto fail;
    }
    int cap = (int)(plen + batch * (glen * reps + 1));
    if (mc_session_seq_init(ses, cap, &err) != MC_OK)
        goto fail;
    logits = malloc((size_t)V * sizeof *logits); /* prefill: the last row */
    pick = malloc((size_t)batch * sizeof *pick);
    pickv = malloc((size_t)batch * sizeof *pickv);
    tok = malloc((size_t)batch * sizeof *tok);
    tok_prompt = malloc((size_t)plen * sizeof *tok_prompt);
    if (!logits || !tok || !tok_prompt || !pick || !pickv) {
        mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
        goto fail;
    }

    /* probes, in this process and with these threads */
    double probe_gbps = mc_session_probe_read_gbps(ses, (size_t)probe_mib << 20, nthreads, 2.0);
    double peak_gflops = mc_session_probe_fma_gflops(ses, nthreads, 1.0);
    /* the amx path's INT8 tile peak (what its quantized prefill products use); < 0: none */
    double int8_gops = mc_session_probe_int8_gops(ses, nthreads, 1.0);
    /* its BF16 tile peak (BF16 prefill products: three tile products per
     * multiply-add, the f32 activations split in three bf16 parts) */
    double bf16_gflops = mc_session_probe_bf16_gflops(ses, nthreads, 1.0);
    if (probe_gbps <= 0) {
        mc_err_set(&err, MC_ERR_NOMEM, "no memory for the %lld MiB bandwidth probe", probe_mib);
        goto fail;
    }

    /* prefill */
    uint64_t seed = 12345;
    for (long long i = 0; i < plen; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        tok_prompt[i] = (int64_t)((seed >> 33) % (uint64_t)V);
    }
    double t_prefill = 1e30, prefill_macs = 0;
    for (long long r = 0; r < reps; r++) {
        mc_session_seq_reset(ses);
        mc_session_count(ses, true);
        t0 = now_s();
        if (mc_session_forward(ses, tok_prompt, (int)plen, logits, true, &err) != MC_OK)
            goto fail;
        double t = now_s() - t0;
        if (t < t_prefill)
            t_prefill = t;
        mc_session_counters cnt;
        mc_session_counters_get(ses, &cnt);
        prefill_macs = (double)cnt.macs;
    }
    int next = argmax(logits, V);

    mc_session_count(ses, true);
    for (int bi = 0; bi < nb; bi++) {
        decode_row *row = &rows[bi];
        long long B = row->batch = batches[bi];
        if (bi > 0) { /* the same prompt again (untimed): each batch size decodes after it */
            mc_session_seq_reset(ses);
            if (mc_session_forward(ses, tok_prompt, (int)plen, logits, true, &err) != MC_OK)
                goto fail;
        }
        /* one untimed step (first-touch of the KV and scratch), then glen timed steps */
        for (long long b = 0; b < B; b++)
            tok[b] = (next + b * 7919) % V;
        if (mc_session_forward_top(ses, tok, (int)B, 1, pick, pickv, NULL, false, &err) != MC_OK)
            goto fail;
        mc_session_counters cnt0;
        mc_session_counters_get(ses, &cnt0);
        double t_decode = 1e30;
        /* A short probe (three passes, the best) also runs before the first
         * and after every repetition, so each repetition has a bound measured
         * right beside it: where the machine's bandwidth moves from second to
         * second (a shared VM), the best pass over 2 s can be a moment decode
         * never had. (The long probe runs again after decode; the faster of
         * the two counts.) */
        double side_prev = mc_session_probe_read_gbps(ses, (size_t)probe_mib << 20, nthreads, 0.0);
        double t_rep[MAX_REPEAT], side[MAX_REPEAT];
        bool paired_ok = side_prev > 0; /* a probe without memory: no paired figures */
        for (long long r = 0; r < reps; r++) {
            t0 = now_s();
            for (long long st = 0; st < glen; st++) {
                for (long long b = 0; b < B; b++)
                    tok[b] = pick[b];
                if (mc_session_forward_top(ses, tok, (int)B, 1, pick, pickv, NULL, false, &err) !=
                    MC_OK)
                    goto fail;
            }
            double t = now_s() - t0;
            if (t < t_decode)
                t_decode = t;
            t_rep[r] = t;
            double side_next =
                mc_session_probe_read_gbps(ses, (size_t)probe_mib << 20, nthreads, 0.0);
            paired_ok = paired_ok && side_next > 0;
            side[r] = (side_prev + side_next) / 2; /* (stream reads: not counted as weight bytes) */
            side_prev = side_next;
        }
        mc_session_counters cnt;
        mc_session_counters_get(ses, &cnt);
        row->bytes_step = (double)(cnt.bytes_read - cnt0.bytes_read) / (double)(glen * reps);
        /* per repetition: its GB/s over the probes beside it; the median
         * repetition (NaN, printed as null / nan, when a short probe found no memory) */
        row->paired_ratio = row->paired_probe = NAN;
        if (paired_ok) {
            double ratio_rep[MAX_REPEAT];
            for (long long r = 0; r < reps; r++)
                ratio_rep[r] = row->bytes_step * (double)glen / t_rep[r] / 1e9 / side[r];
            row->paired_ratio = median(ratio_rep, (int)reps);
            row->paired_probe = median(side, (int)reps);
        }
        row->tok_s = (double)(B * glen) / t_decode;
        row->achieved = row->bytes_step * (double)glen / t_decode / 1e9;
    }
    mc_session_count(ses, false);
    double probe_before = probe_gbps;
    double probe_after = mc_session_probe_read_gbps(ses, (size_t)probe_mib << 20, nthreads, 2.0);
    if (probe_after > probe_gbps)
        probe_gbps = probe_after;

    long huge_mib = anon_huge_mib();
    double prefill_tok_s = (double)plen / t_prefill;
    double prefill_gflops = 2.0 * prefill_macs / t_prefill / 1e9;
    double decode_tok_s = rows[0].tok_s, bytes_step = rows[0].bytes_step;
    double achieved = rows[0].achieved, paired_ratio = rows[0].paired_ratio;
    double paired_probe = rows[0].paired_probe;
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    const char *wname = have_fmt ? mc_dtype_name(fmt) : resident ? "stored (in RAM)" : "stored";
    const char *path = mc_session_kernels(ses);
    /* what the int8 peak measures: amx's tiles, avx512's vpdpbusd */
    const char *int8_kind = strcmp(path, "amx") == 0 ? "tile" : "vpdpbusd";
    /* and the bf16 one: amx's tiles with AMX-BF16, else vdpbf16ps (avx512 / amx);
     * on cuda a cuBLAS BF16 product (the call its BF16 prefill products make) */
    const char *bf16_kind =
        strcmp(path, "cuda") == 0 ? "cuBLAS"
        : strcmp(path, "amx") == 0 && strstr(mc_session_features(ses), "amx_bf16") ? "tile"
                                                                                  : "vdpbf16ps";
    if (json) {
        /* everything through jansson: strings from outside (the path, the
         * CPU name, GGUF metadata) are escaped, non-finite numbers are null */
        json_t *gg = json_null(), *o = json_object();
        if (mc_gguf_is_model(dir)) {
            json_decref(gg);
            if (gguf_info(dir, &gg, &err) != MC_OK) {
                json_decref(o);
                goto fail;
            }
        }
        bool ok = o && jput(o, "model", json_string(dir)) &&
                  jput(o, "model_type", json_string(d->model_type)) &&
                  jput(o, "layers", json_integer(d->n_layers)) &&
                  jput(o, "weights", json_string(wname)) && jput(o, "kernels", json_string(path)) &&
                  jput(o, "activations", json_string(bf16_acts ? "bf16" : "f32")) &&
                  jput(o, "kv_cache_dtype", json_string(bf16_kv ? "bf16" : "f32")) &&
                  jput(o, "threads", json_integer(nthreads)) &&
                  jput(o, "batch", json_integer(batches[0])) &&
                  jput(o, "prompt_len", json_integer(plen)) &&
                  jput(o, "gen_len", json_integer(glen)) &&
                  jput(o, "prefill_tok_s", jnum(prefill_tok_s)) &&
                  jput(o, "prefill_gflops", jnum(prefill_gflops)) &&
                  jput(o, "fma_peak_gflops", jnum(peak_gflops)) &&
                  jput(o, "prefill_fma_ratio", jnum(prefill_gflops / peak_gflops)) &&
                  jput(o, "int8_peak_gops", int8_gops > 0 ? jnum(int8_gops) : json_null()) &&
                  jput(o, "prefill_int8_ratio",
                       int8_gops > 0 ? jnum(prefill_gflops / int8_gops) : json_null()) &&
                  jput(o, "bf16_peak_gflops", bf16_gflops > 0 ? jnum(bf16_gflops) : json_null()) &&
                  jput(o, "prefill_bf16_ratio",
                       bf16_gflops > 0 ? jnum(prefill_gflops / bf16_gflops) : json_null()) &&
                  jput(o, "decode_tok_s", jnum(decode_tok_s)) &&
                  jput(o, "bytes_per_step", jcount(bytes_step)) &&
                  jput(o, "bytes_per_token", jcount(bytes_step / (double)batches[0])) &&
                  jput(o, "achieved_gbps", jnum(achieved)) &&
                  jput(o, "probe_gbps", jnum(probe_gbps)) &&
                  jput(o, "probe_gbps_before", jnum(probe_before)) &&
                  jput(o, "probe_gbps_after", jnum(probe_after)) &&
                  jput(o, "bandwidth_ratio", jnum(achieved / probe_gbps)) &&
                  jput(o, "probe_gbps_paired", jnum(paired_probe)) &&
                  jput(o, "bandwidth_ratio_paired", jnum(paired_ratio)) &&
                  jput(o, "load_s", jnum(t_load)) && jput(o, "repeat", json_integer(reps)) &&
                  jput(o, "anon_huge_mib", json_integer(huge_mib)) &&
                  jput(o, "cpu", json_string(cpu)) &&
                  jput(o, "cpu_features", json_string(mc_session_features(ses)));
        if (ok)
            ok = jput(o, "gguf", gg); /* steals gg */
        else
            json_decref(gg);
        json_t *dec = ok ? json_array() : NULL; /* every batch size, the first as above */
        for (int i = 0; dec && i < nb; i++) {
            const decode_row *r = &rows[i];
            json_t *e = json_object();
            if (!e || !jput(e, "batch", json_integer(r->batch)) ||
                !jput(e, "decode_tok_s", jnum(r->tok_s)) ||
                !jput(e, "bytes_per_step", jcount(r->bytes_step)) ||
                !jput(e, "bytes_per_token", jcount(r->bytes_step / (double)r->batch)) ||
                !jput(e, "achieved_gbps", jnum(r->achieved)) ||
                !jput(e, "bandwidth_ratio", jnum(r->achieved / probe_gbps)) ||
                !jput(e, "probe_gbps_paired", jnum(r->paired_probe)) ||
                !jput(e, "bandwidth_ratio_paired", jnum(r->paired_ratio)) ||
                json_array_append_new(dec, e) != 0) {
                json_decref(e);
                json_decref(dec);
                dec = NULL;
            }
        }
        ok = ok && dec && jput(o, "decode", dec);
        if (!ok) {
            json_decref(o);
            mc_err_set(&err, MC_ERR_ARG, "--json: the model path or CPU name is not UTF-8");
            goto fail;
        }
        json_dumpf(o, stdout, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
        putchar('\n');
        json_decref(o);
    } else {
        printf("model    %s (%s, %d layers), weights %s, kernels %s, %d threads%s%s\n", dir,
               d->model_type, d->n_layers, wname, path, nthreads,
               bf16_acts ? ", activations rounded to bf16" : "", bf16_kv ? ", KV cache in bf16" : "");
        printf("cpu      %s [%s]; %ld MiB on huge pages\n", cpu, mc_session_features(ses), huge_mib);
        printf("probe    read stream %lld MiB: %.2f GB/s (before %.2f, after %.2f); FMA peak (f32, "
               "%s): %.1f GFLOP/s",
               probe_mib, probe_gbps, probe_before, probe_after, path, peak_gflops);
        if (int8_gops > 0)
            printf("; INT8 %s peak: %.1f GOP/s", int8_kind, int8_gops);
        if (bf16_gflops > 0)
            printf("; BF16 %s peak: %.1f GFLOP/s", bf16_kind, bf16_gflops);
        printf("\nprefill  %lld tokens: %.1f tok/s, %.1f GFLOP/s in matrix products = %.2f of the "
               "FMA peak",
               plen, prefill_tok_s, prefill_gflops, prefill_gflops / peak_gflops);
        if (int8_gops > 0)
            printf(", %.3f of the INT8 %s peak", prefill_gflops / int8_gops, int8_kind);
        if (bf16_gflops > 0)
            printf(", %.3f of the BF16 %s peak", prefill_gflops / bf16_gflops, bf16_kind);
        printf("\n");
        for (int i = 0; i < nb; i++) {
            const decode_row *r = &rows[i];
            printf("decode   batch %lld x %lld steps: %.2f tok/s, %.1f MB of weights per step "
                   "(%.1f MB a token), %.2f GB/s = %.2f of the probe; %.2f of the probes beside "
                   "each repetition (median; %.2f GB/s)\n",
                   r->batch, glen, r->tok_s, r->bytes_step / 1e6,
                   r->bytes_step / 1e6 / (double)r->batch, r->achieved, r->achieved / probe_gbps,
                   r->paired_ratio, r->paired_probe);
        }
    }
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "moecluster bench: %s\n", err.msg);
    free(logits);
    free(pick);
    free(pickv);
    free(tok);
    free(tok_prompt);
    mc_session_close(ses, false);
    return rc;
}
