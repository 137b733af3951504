/* cmd_bench.c - `moecluster bench`: prefill and decode speed of a model on
 * this machine, the weight bytes a decode step reads, and the memory
 * bandwidth and FMA peak probed in the same process, so the achieved
 * fraction of each is measured, not assumed (docs/kernels.md).
 *
 * Prefill: one sequence of --prompt-len tokens in one forward pass (logits
 * of the last position). Decode: --gen-len steps of --batch tokens each,
 * appended to that sequence in one forward pass per step (logits for all
 * of them): a step reads every weight it needs once for the whole batch,
 * exactly as a batch of independent sequences would; only the attention
 * over the cache differs (one sequence instead of B).
 *
 * Each measurement is repeated (--repeat, default 3: prefill from an empty
 * cache each time, decode as consecutive windows of --gen-len steps) and
 * the fastest is reported, as the probes report their fastest pass: on a
 * shared machine other processes only ever slow a run down. */
#include "cli.h"
#include "log.h"
#include "session.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The one usage text: printed by --help and on usage errors. */
static const char bench_usage_text[] =
    "usage: moecluster bench --model DIR [--batch B] [--prompt-len N] [--gen-len M]\n"
    "                        [--threads T] [--weights q8_0|q4_k|bf16]\n"
    "                        [--kernels scalar|avx2|avx512] [--probe-mib S] [--repeat R]\n"
    "                        [--json]\n\n"
    "  --model       checkpoint folder (config.json + safetensors), or a .gguf file\n"
    "  --batch       tokens per decode step (default 1)\n"
    "  --prompt-len  prefill length (default 128)\n"
    "  --gen-len     decode steps (default 32)\n"
    "  --threads     threads for the matrix products (default: MC_THREADS or all CPUs)\n"
    "  --weights     quantize expert and dense matrices at load time (default: as stored)\n"
    "  --kernels     scalar | avx2 | avx512 (default: MC_KERNELS or the best the CPU has)\n"
    "  --probe-mib   buffer of the bandwidth probe in MiB (default 1024)\n"
    "  --repeat      runs of each measurement, the fastest reported (default 3)\n"
    "  --json        one JSON object instead of text\n";

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

/* s as a JSON string literal (quotes and escapes included), malloc'd. */
static char *json_str(const char *s)
{
    json_t *j = json_string(s);
    char *out = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    return out;
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
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    const char *dir = NULL;
    long long batch = 1, plen = 128, glen = 32, threads = 0, probe_mib = 1024, reps = 3;
    int json = 0, have_fmt = 0;
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
            if (mc_arg_int("bench", "--batch", optarg, 1, 4096, &batch))
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
            if (mc_arg_int("bench", "--repeat", optarg, 1, 100, &reps))
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
                fprintf(stderr, "moecluster bench: --kernels: '%s' is not scalar, avx2 or avx512\n",
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
        case 'h': bench_usage(stdout); PARSE_RETURN(0);
        default: bench_usage(stderr); PARSE_RETURN(2);
        }
    }
    if (optind < argc || !dir) {
        fprintf(stderr, "moecluster bench: %s\n", dir ? "unexpected argument" : "--model is required");
        bench_usage(stderr);
        PARSE_RETURN(2);
    }
#undef PARSE_RETURN
    mc_session_set_threads(ses, (int)threads); /* 0: MC_THREADS or the CPU count */
    int nthreads = mc_session_threads(ses);
    float *logits = NULL;
    int64_t *tok = NULL;
    int rc = 1;
    double t0 = now_s();
    mc_session_opts lo = {.dir = dir};
    if (mc_session_load(ses, &lo, &err) != MC_OK)
        goto fail;
    const mc_model_desc *d = mc_session_desc(ses);
    if (d->family == MC_FAM_DEEPSEEK_V4) {
        mc_err_set(&err, MC_ERR_UNSUPPORTED, "bench does not run DeepSeek-V4 models yet");
        goto fail;
    }
    if (have_fmt) {
        MC_INFO("bench: quantizing expert and dense weights to %s", mc_dtype_name(fmt));
        if (mc_session_quantize(ses, fmt, &err) != MC_OK)
            goto fail;
    }
    mc_session_warm(ses);
    double t_load = now_s() - t0;
    int V = d->vocab;
    if ((double)plen + (double)batch * (double)(glen * reps + 1) > (double)d->max_pos * 64) {
        mc_err_set(&err, MC_ERR_ARG,
                   "prompt + batch x gen-len x repeat is longer than the model allows");
        goto fail;
    }
    int cap = (int)(plen + batch * (glen * reps + 1));
    if (mc_session_seq_init(ses, cap, &err) != MC_OK)
        goto fail;
    logits = malloc((size_t)batch * V * sizeof *logits);
    tok = malloc((size_t)(plen > batch ? plen : batch) * sizeof *tok);
    if (!logits || !tok) {
        mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
        goto fail;
    }

    /* probes, in this process and with these threads */
    double probe_gbps = mc_session_probe_read_gbps(ses, (size_t)probe_mib << 20, nthreads, 2.0);
    double peak_gflops = mc_session_probe_fma_gflops(ses, nthreads, 1.0);
    if (probe_gbps <= 0) {
        mc_err_set(&err, MC_ERR_NOMEM, "no memory for the %lld MiB bandwidth probe", probe_mib);
        goto fail;
    }

    /* prefill */
    uint64_t seed = 12345;
    for (long long i = 0; i < plen; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int64_t)((seed >> 33) % (uint64_t)V);
    }
    double t_prefill = 1e30, prefill_macs = 0;
    for (long long r = 0; r < reps; r++) {
        mc_session_seq_reset(ses);
        mc_session_count(ses, true);
        t0 = now_s();
        if (mc_session_forward(ses, tok, (int)plen, logits, true, &err) != MC_OK)
            goto fail;
        double t = now_s() - t0;
        if (t < t_prefill)
            t_prefill = t;
        mc_session_counters cnt;
        mc_session_counters_get(ses, &cnt);
        prefill_macs = (double)cnt.macs;
    }
    int next = argmax(logits, V);

    /* decode: one untimed step (first-touch of the KV and scratch), then glen timed steps */
    for (long long b = 0; b < batch; b++)
        tok[b] = (next + b * 7919) % V;
    if (mc_session_forward(ses, tok, (int)batch, logits, false, &err) != MC_OK)
        goto fail;
    mc_session_count(ses, true);
    double t_decode = 1e30;
    /* (the probe runs again after decode; the faster of the two counts) */
    for (long long r = 0; r < reps; r++) {
        t0 = now_s();
        for (long long s = 0; s < glen; s++) {
            for (long long b = 0; b < batch; b++)
                tok[b] = argmax(logits + (size_t)b * V, V);
            if (mc_session_forward(ses, tok, (int)batch, logits, false, &err) != MC_OK)
                goto fail;
        }
        double t = now_s() - t0;
        if (t < t_decode)
            t_decode = t;
    }
    mc_session_counters cnt;
    mc_session_counters_get(ses, &cnt);
    double bytes_step = (double)cnt.bytes_read / (double)(glen * reps);
    mc_session_count(ses, false);
    double probe_before = probe_gbps;
    double probe_after = mc_session_probe_read_gbps(ses, (size_t)probe_mib << 20, nthreads, 2.0);
    if (probe_after > probe_gbps)
        probe_gbps = probe_after;

    long huge_mib = anon_huge_mib();
    double prefill_tok_s = (double)plen / t_prefill;
    double prefill_gflops = 2.0 * prefill_macs / t_prefill / 1e9;
    double decode_tok_s = (double)(batch * glen) / t_decode;
    double achieved = bytes_step * (double)glen / t_decode / 1e9;
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    const char *wname = have_fmt ? mc_dtype_name(fmt) : "stored";
    const char *path = mc_session_kernels(ses);
    if (json) {
        /* strings from outside (the path, the CPU name) are escaped by jansson */
        char *jdir = json_str(dir), *jcpu = json_str(cpu);
        if (!jdir || !jcpu) {
            free(jdir);
            free(jcpu);
            mc_err_set(&err, MC_ERR_ARG, "--json: the model path or CPU name is not UTF-8");
            goto fail;
        }
        printf("{\"model\": %s, \"model_type\": \"%s\", \"layers\": %d, \"weights\": \"%s\", "
               "\"kernels\": \"%s\", \"threads\": %d, \"batch\": %lld, \"prompt_len\": %lld, "
               "\"gen_len\": %lld, \"prefill_tok_s\": %.4g, \"prefill_gflops\": %.4g, "
               "\"fma_peak_gflops\": %.4g, \"prefill_fma_ratio\": %.4f, \"decode_tok_s\": %.4g, "
               "\"bytes_per_step\": %.0f, \"bytes_per_token\": %.0f, \"achieved_gbps\": %.4g, "
               "\"probe_gbps\": %.4g, \"probe_gbps_before\": %.4g, \"probe_gbps_after\": %.4g, "
               "\"bandwidth_ratio\": %.4f, \"load_s\": %.3g, \"repeat\": %lld, \"anon_huge_mib\": %ld, "
               "\"cpu\": %s, \"cpu_features\": \"%s\"}\n",
               jdir, d->model_type, d->n_layers, wname, path, nthreads, batch, plen, glen,
               prefill_tok_s, prefill_gflops, peak_gflops, prefill_gflops / peak_gflops,
               decode_tok_s, bytes_step, bytes_step / (double)batch, achieved, probe_gbps,
               probe_before, probe_after, achieved / probe_gbps, t_load, reps, huge_mib, jcpu,
               mc_session_features(ses));
        free(jdir);
        free(jcpu);
    } else {
        printf("model    %s (%s, %d layers), weights %s, kernels %s, %d threads\n", dir,
               d->model_type, d->n_layers, wname, path, nthreads);
        printf("cpu      %s [%s]; %ld MiB on huge pages\n", cpu, mc_session_features(ses), huge_mib);
        printf("probe    read stream %lld MiB: %.2f GB/s (before %.2f, after %.2f); FMA peak (f32, "
               "%s): %.1f GFLOP/s\n",
               probe_mib, probe_gbps, probe_before, probe_after, path, peak_gflops);
        printf("prefill  %lld tokens: %.1f tok/s, %.1f GFLOP/s in matrix products = %.2f of the "
               "FMA peak\n",
               plen, prefill_tok_s, prefill_gflops, prefill_gflops / peak_gflops);
        printf("decode   batch %lld x %lld steps: %.2f tok/s, %.1f MB of weights per step, "
               "%.2f GB/s = %.2f of the probe\n",
               batch, glen, decode_tok_s, bytes_step / 1e6, achieved, achieved / probe_gbps);
    }
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "moecluster bench: %s\n", err.msg);
    free(logits);
    free(tok);
    mc_session_close(ses, false);
    return rc;
}
