/* cmd_score.c - `moecluster score`: logits for token sequences.
 *
 * IN.safetensors holds input_ids (I64 [B,T]); OUT.safetensors gets logits
 * (F32 [B,T,V]). Each row is an independent sequence at positions 0..T-1.
 * With --decode-from K the first K tokens are prefilled together and the
 * rest are fed one at a time through the KV cache.
 */
#include "cli.h"
#include "log.h"
#include "model.h"
#include "safetensors.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_OUTPUT_BYTES (64ull << 30)

static void score_usage(FILE *out)
{
    fprintf(out,
            "usage: moecluster score --model DIR --input IN.safetensors --output OUT.safetensors\n"
            "                        [--decode-from K]\n\n"
            "  --model DIR        Hugging Face checkpoint folder (config.json + safetensors)\n"
            "  --input FILE       safetensors with input_ids, I64 [B,T]\n"
            "  --output FILE      written: logits, F32 [B,T,V]\n"
            "  --decode-from K    prefill the first K tokens, then decode one token at a time\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int mc_cmd_score(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                          {"input", required_argument, 0, 'i'},
                                          {"output", required_argument, 0, 'o'},
                                          {"decode-from", required_argument, 0, 'k'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    const char *model_dir = NULL, *in_path = NULL, *out_path = NULL;
    long long decode_from = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'i': in_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'k':
            if (mc_arg_int("score", "--decode-from", optarg, 1, 1 << 30, &decode_from))
                return 2;
            break;
        case 'h': score_usage(stdout); return 0;
        default: score_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moecluster score: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!model_dir || !in_path || !out_path) {
        fprintf(stderr, "moecluster score: --model, --input and --output are required\n");
        score_usage(stderr);
        return 2;
    }
    mc_err err;
    mc_err_clear(&err);
    mc_model *m = NULL;
    st_file *in = NULL;
    mc_kv *kv = NULL;
    float *logits = NULL;
    int rc = 1;
    if (st_file_open(in_path, &in, &err) != MC_OK)
        goto fail;
    const st_tensor *ids = st_file_find(in, "input_ids");
    if (!ids) {
        mc_err_set(&err, MC_ERR_FORMAT, "%s: no tensor 'input_ids'", in_path);
        goto fail;
    }
    if (ids->dtype != MC_DT_I64 || ids->ndim != 2 || ids->shape[0] < 1 || ids->shape[1] < 1) {
        mc_err_set(&err, MC_ERR_FORMAT, "%s: 'input_ids' must be I64 [B,T] with B,T >= 1", in_path);
        goto fail;
    }
    int64_t B = ids->shape[0], T = ids->shape[1];
    if (decode_from > T) {
        mc_err_set(&err, MC_ERR_ARG, "--decode-from %lld exceeds the sequence length %lld",
                   decode_from, (long long)T);
        goto fail;
    }
    double t0 = now_s();
    if (mc_model_load(model_dir, &m, &err) != MC_OK)
        goto fail;
    int V = m->d.vocab;
    if (T > m->d.max_pos) {
        mc_err_set(&err, MC_ERR_ARG, "sequence length %lld exceeds max_position_embeddings %d",
                   (long long)T, m->d.max_pos);
        goto fail;
    }
    uint64_t nbytes = (uint64_t)B * (uint64_t)T * (uint64_t)V * sizeof(float);
    if (nbytes > MAX_OUTPUT_BYTES) {
        mc_err_set(&err, MC_ERR_ARG, "output of %llu bytes is too large",
                   (unsigned long long)nbytes);
        goto fail;
    }
    MC_INFO("loaded %s (%s, %d layers) in %.2f s", model_dir, m->d.model_type, m->d.n_layers,
            now_s() - t0);
    logits = malloc((size_t)nbytes);
    int64_t *tok = mc_malloc_n((size_t)T, sizeof *tok);
    if (!logits || !tok) {
        free(tok);
        mc_err_set(&err, MC_ERR_NOMEM, "out of memory for %llu bytes of logits",
                   (unsigned long long)nbytes);
        goto fail;
    }
    if (mc_kv_create(m, (int)T, &kv, &err) != MC_OK) {
        free(tok);
        goto fail;
    }
    double t1 = now_s();
    for (int64_t b = 0; b < B; b++) {
        memcpy(tok, (const uint8_t *)ids->data + (size_t)(b * T) * 8, (size_t)T * 8);
        float *out = logits + (size_t)(b * T) * V;
        mc_kv_reset(kv);
        int K = decode_from > 0 ? (int)decode_from : (int)T;
        if (mc_model_forward(m, kv, tok, K, out, false, &err) != MC_OK) {
            free(tok);
            goto fail;
        }
        for (int t = K; t < T; t++)
            if (mc_model_forward(m, kv, tok + t, 1, out + (size_t)t * V, false, &err) != MC_OK) {
                free(tok);
                goto fail;
            }
    }
    free(tok);
    double el = now_s() - t1;
    MC_INFO("scored %lld x %lld tokens in %.3f s (%.1f tok/s)", (long long)B, (long long)T, el,
            (double)(B * T) / (el > 0 ? el : 1e-9));
    st_write_tensor wt = {.name = "logits", .dtype = MC_DT_F32, .ndim = 3,
                          .shape = {B, T, V}, .data = logits};
    if (st_write(out_path, &wt, 1, &err) != MC_OK)
        goto fail;
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "moecluster score: %s\n", err.msg[0] ? err.msg : "failed");
    free(logits);
    mc_kv_free(kv);
    mc_model_free(m);
    st_file_close(in);
    return rc;
}
