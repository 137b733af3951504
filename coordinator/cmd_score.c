/* cmd_score.c - `moecluster score`: logits for token sequences.
 *
 * IN.safetensors holds input_ids (I64 [B,T]) and optionally lengths (I64
 * [B], each 1..T: a ragged batch, row b runs its first lengths[b] tokens);
 * OUT.safetensors gets logits (F32 [B,T,V], 0 past each row's length). Each
 * row is an independent sequence at positions 0..T-1. The rows are
 * scheduled into steps of at most --max-batch-tokens new tokens over a
 * paged KV cache of --kv-block-size positions per block (worker/scheduler.h).
 * With --decode-from K the first K tokens are prefilled (in chunks of the
 * budget) and the rest are fed one at a time through the KV cache.
 *
 * Under mpirun every rank runs this command: rank 0 reads the input and
 * broadcasts it, every rank loads its share of the model (--tp/--ep/--pp)
 * and runs the same steps, and rank 0 writes the output. Started by hand it
 * is the single-process engine.
 */
#include "cli.h"
#include "log.h"
#include "outfile.h"
#include "par_args.h"
#include "parallel.h"
#include "safetensors.h"
#include "session.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OUTPUT_BYTES (64ull << 30)
/* Largest --max-batch-tokens (the step plan's bound, MC_STEP_MAX_TOKENS). */
#define MC_STEP_MAX_TOKENS_CLI (1 << 22)

/* The one usage text: printed by --help and on usage errors. */
static const char score_usage_text[] =
    "usage: moecluster score --model DIR|--shards DIR --input IN.safetensors\n"
    "                        --output OUT.safetensors [--decode-from K]\n"
    "                        [--max-batch-tokens N] [--kv-block-size N] [--tp N] [--ep N]\n"
    "                        [--pp N] [--stats] [--weights q8_0|q4_k|bf16] [--no-mmap]\n"
    "                        [--no-verify] [--activations f32|bf16] [--kv-cache-dtype f32|bf16]\n"
    "                        [--device cpu|cuda]\n\n"
    "  --model DIR        Hugging Face checkpoint folder (config.json + safetensors), a\n"
    "                     shard set, or a llama.cpp .gguf file (or a folder of split parts)\n"
    "  --shards DIR       a shard set written by `moecluster shard` (each rank reads its own\n"
    "                     rank-NNNNN folder; run under mpirun -np <ranks of the plan>)\n"
    "  --input FILE       safetensors with input_ids, I64 [B,T], and optionally lengths,\n"
    "                     I64 [B], each 1..T (row b runs its first lengths[b] tokens)\n"
    "  --output FILE      written (a new regular file, or one replaced whole): logits,\n"
    "                     F32 [B,T,V], 0 past each row's length; never the input or a file\n"
    "                     in the model folder\n"
    "  --decode-from K    prefill the first K tokens, then decode one token at a time\n"
    "  --max-batch-tokens N  new tokens per engine step, all sequences together\n"
    "                     (default 2048; >= 1)\n"
    "  --kv-block-size N  positions per block of the paged KV cache (default 16; 1..1024)\n"
    MC_DEVICE_USAGE MC_PAR_USAGE;

static void score_usage(FILE *out) { fputs(score_usage_text, out); }

/* What rank 0 tells the others about the input before anything else. */
typedef struct {
    int32_t status; /* MC_OK, or the input was refused (rank 0 prints why) */
    int32_t has_lengths; /* 1: a lengths tensor follows the ids */
    int64_t B, T;
} input_header;

/* Rank 0: the optional 'lengths' tensor, I64 [B], each 1..T; *lengths
 * (malloc'd, the caller frees) stays NULL when the file has none. */
static mc_status read_lengths(st_file *in, const char *in_path, int64_t B, int64_t T,
                              int64_t **lengths, mc_err *err)
{
    const st_tensor *t = st_file_find(in, "lengths");
    if (!t)
        return MC_OK;
    if (t->dtype != MC_DT_I64 || t->ndim != 1 || t->shape[0] != B)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: 'lengths' must be I64 [B] with B = %lld",
                          in_path, (long long)B);
    /* copied first: the tensor's bytes in the file need not be 8-byte aligned */
    int64_t *v = mc_malloc_n((size_t)B, sizeof *v);
    if (!v)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    memcpy(v, t->data, (size_t)B * sizeof *v);
    for (int64_t b = 0; b < B; b++)
        if (v[b] < 1 || v[b] > T) {
            mc_status st = mc_err_set(err, MC_ERR_FORMAT,
                                      "%s: 'lengths'[%lld] = %lld is outside 1..%lld (T)",
                                      in_path, (long long)b, (long long)v[b], (long long)T);
            free(v);
            return st;
        }
    *lengths = v;
    return MC_OK;
}

/* Rank 0: opens and checks the input; fills ids (malloc'd), lengths
 * (malloc'd, or NULL without the tensor) and B, T. */
static mc_status read_input(const char *in_path, long long decode_from, int64_t **ids,
                            int64_t **lengths, int64_t *B, int64_t *T, mc_err *err)
{
    st_file *in = NULL;
    mc_status st = st_file_open(in_path, &in, err);
    if (st != MC_OK)
        return st;
    const st_tensor *t = st_file_find(in, "input_ids");
    if (!t) {
        st = mc_err_set(err, MC_ERR_FORMAT, "%s: no tensor 'input_ids'", in_path);
        goto done;
    }
    if (t->dtype != MC_DT_I64 || t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1) {
        st = mc_err_set(err, MC_ERR_FORMAT, "%s: 'input_ids' must be I64 [B,T] with B,T >= 1",
                        in_path);
        goto done;
    }
    *B = t->shape[0];
    *T = t->shape[1];
    if (decode_from > *T) {
        st = mc_err_set(err, MC_ERR_ARG, "--decode-from %lld exceeds the sequence length %lld",
                        decode_from, (long long)*T);
        goto done;
    }
    if (*T > (1 << 30) || *B > (1 << 30) || !(*ids = mc_malloc_n((size_t)(*B * *T), 8))) {
        st = mc_err_set(err, MC_ERR_NOMEM, "%s: input of %lld x %lld ids is too large", in_path,
                        (long long)*B, (long long)*T);
        goto done;
    }
    memcpy(*ids, t->data, (size_t)(*B * *T) * 8);
    st = read_lengths(in, in_path, *B, *T, lengths, err);
done:
    st_file_close(in);
    return st;
}

/* Rank 0, before any work: the output must not destroy an input (the
 * input file, a file of the model or shard set) and must be a path we may
 * replace (not a device, FIFO or folder). Only rank 0 ever writes it. */
static mc_status check_output(const char *out_path, const char *in_path, const char *model_dir,
                              mc_err *err)
{
    mc_status st = mc_out_check_file(out_path, in_path, "input", err);
    if (st == MC_OK)
        st = mc_out_check_file(out_path, model_dir, "model folder", err);
    if (st == MC_OK)
        st = mc_out_check_target(out_path, "output", err);
    return st;
}

/* Rank 0: token ids in range and the output size. */
static mc_status check_run(const mc_model_desc *d, const int64_t *ids, int64_t B, int64_t T,
                           mc_err *err)
{
    int V = d->vocab;
    if (T > d->max_pos)
        return mc_err_set(err, MC_ERR_ARG, "sequence length %lld exceeds max_position_embeddings %d",
                          (long long)T, d->max_pos);
    uint64_t nbytes = (uint64_t)B * (uint64_t)T * (uint64_t)V * sizeof(float);
    if (nbytes > MAX_OUTPUT_BYTES)
        return mc_err_set(err, MC_ERR_ARG, "output of %llu bytes is too large",
                          (unsigned long long)nbytes);
    for (int64_t i = 0; i < B * T; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return mc_err_set(err, MC_ERR_ARG, "token id %lld at position %lld is outside [0, %d)",
                              (long long)ids[i], (long long)(i % T), V);
    return MC_OK;
}

int mc_cmd_score(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                          {"input", required_argument, 0, 'i'},
                                          {"output", required_argument, 0, 'o'},
                                          {"decode-from", required_argument, 0, 'k'},
                                          {"max-batch-tokens", required_argument, 0, 'M'},
                                          {"kv-block-size", required_argument, 0, 'K'},
                                          {"help", no_argument, 0, 'h'},
                                          MC_PAR_OPTIONS,
                                          MC_DEVICE_OPTIONS,
                                          {0, 0, 0, 0}};
    const char *model_dir = NULL, *in_path = NULL, *out_path = NULL;
    long long decode_from = -1, max_batch_tokens = MC_SCORE_DEFAULT_BATCH_TOKENS,
              kv_block_size = MC_SCORE_DEFAULT_BLOCK_SIZE;
    mc_par_args par = MC_PAR_ARGS_INIT;
    int c;
    mc_quiet quiet = mc_quiet_begin(); /* under mpirun, rank 0 alone prints usage errors */
#define PARSE_RETURN(x)                                                                            \
    do {                                                                                           \
        mc_quiet_end(quiet);                                                                       \
        return (x);                                                                                \
    } while (0)
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'i': in_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 'k':
            if (mc_arg_int("score", "--decode-from", optarg, 1, 1 << 30, &decode_from))
                PARSE_RETURN(2);
            break;
        case 'M':
            if (mc_arg_int("score", "--max-batch-tokens", optarg, 1, MC_STEP_MAX_TOKENS_CLI,
                           &max_batch_tokens))
                PARSE_RETURN(2);
            break;
        case 'K':
            if (mc_arg_int("score", "--kv-block-size", optarg, 1, 1024, &kv_block_size))
                PARSE_RETURN(2);
            break;
        case 'h': score_usage(stdout); PARSE_RETURN(0);
        default: {
            int r = mc_par_option(&par, "score", c, optarg);
            if (r == 0)
                break;
            if (r > 0)
                score_usage(stderr);
            PARSE_RETURN(2);
        }
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moecluster score: unexpected argument '%s'\n", argv[optind]);
        PARSE_RETURN(2);
    }
    if (par.shards)
        model_dir = par.shards; /* the shard set is the model */
    if (!model_dir || !in_path || !out_path) {
        fprintf(stderr, "moecluster score: --model, --input and --output are required\n");
        score_usage(stderr);
        PARSE_RETURN(2);
    }
    mc_quiet_end(quiet);
#undef PARSE_RETURN
    mc_err err;
    mc_err_clear(&err);
    mc_session *ses = NULL;
    int64_t *ids = NULL, *lengths = NULL;
    float *logits = NULL;
    int rc = 1;
    bool fatal = false; /* a failure after the ranks started working together */
    if (mc_session_open(&argc, &argv, true, &ses, &err) != MC_OK) {
        fprintf(stderr, "moecluster score: %s\n", err.msg);
        return 1;
    }
    int me = mc_session_rank(ses);
    /* rank 0 reads the input; everyone learns B, T (or that it was refused) */
    input_header hdr = {.status = MC_OK};
    if (me == 0) {
        int64_t B = 0, T = 0;
        hdr.status = read_input(in_path, decode_from, &ids, &lengths, &B, &T, &err);
        hdr.has_lengths = lengths != NULL;
        if (hdr.status == MC_OK)
            hdr.status = check_output(out_path, in_path, model_dir, &err);
        hdr.B = B;
        hdr.T = T;
    }
    if (mc_session_bcast(ses, 0, &hdr, sizeof hdr, &err) != MC_OK) {
        fatal = true;
        goto fail;
    }
    if (hdr.status != MC_OK)
        goto fail;
    int64_t B = hdr.B, T = hdr.T;
    if (me != 0 && !(ids = mc_malloc_n((size_t)(B * T), sizeof *ids))) {
        mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
        fatal = true;
        goto fail;
    }
    if (mc_session_bcast(ses, 0, ids, (size_t)(B * T) * sizeof *ids, &err) != MC_OK) {
        fatal = true;
        goto fail;
    }
    if (hdr.has_lengths && me != 0 && !(lengths = mc_malloc_n((size_t)B, sizeof *lengths))) {
        mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
        fatal = true;
        goto fail;
    }
    if (hdr.has_lengths &&
        mc_session_bcast(ses, 0, lengths, (size_t)B * sizeof *lengths, &err) != MC_OK) {
        fatal = true;
        goto fail;
    }
    double t0 = mc_now_s();
    mc_session_opts lo = {.dir = model_dir, .tp = par.tp, .ep = par.ep, .pp = par.pp,
                          .layout_given = par.given, .weights_given = par.weights_given,
                          .weights = par.weights, .no_verify = par.no_verify,
                          .stats = par.stats, .device = mc_par_device(&par),
                          .resident = par.resident, .bf16_acts = par.bf16_acts,
                          .kv_dtype = par.kv_dtype};
    if (mc_session_load(ses, &lo, &err) != MC_OK)
        goto fail; /* every rank failed together (mc_par_agree) */
    const mc_model_desc *d = mc_session_desc(ses);
    MC_INFO("loaded %s (%s, %d layers) in %.2f s", model_dir, d->model_type, d->n_layers,
            mc_now_s() - t0);
    mc_status st = MC_OK;
    if (me == 0) {
        st = check_run(d, ids, B, T, &err);
        if (st == MC_OK && !(logits = malloc((size_t)B * (size_t)T * d->vocab * sizeof(float))))
            st = mc_err_set(&err, MC_ERR_NOMEM,
                            "out of memory for %lld x %lld x %d logits", (long long)B,
                            (long long)T, d->vocab);
    }
    if (mc_session_agree(ses, st, &err) != MC_OK)
        goto fail;
    double t1 = mc_now_s();
    mc_score_opts so = {.lengths = lengths, .decode_from = (int)decode_from,
                        .max_batch_tokens = (uint32_t)max_batch_tokens,
                        .kv_block_size = (uint32_t)kv_block_size};
    if (mc_session_score_opts(ses, ids, (int)B, (int)T, &so, logits, &err) != MC_OK) {
        fatal = true;
        goto fail;
    }
    double el = mc_now_s() - t1;
    MC_INFO("scored %lld x %lld tokens in %.3f s (%.1f tok/s)", (long long)B, (long long)T, el,
            (double)(B * T) / (el > 0 ? el : 1e-9));
    if (par.stats && mc_session_stats_report(ses, stderr, el, &err) != MC_OK) {
        fatal = true;
        goto fail;
    }
    st = MC_OK;
    if (me == 0) {
        st_write_tensor wt = {.name = "logits", .dtype = MC_DT_F32, .ndim = 3,
                              .shape = {B, T, d->vocab}, .data = logits};
        st = st_write(out_path, &wt, 1, &err);
    }
    if (mc_session_agree(ses, st, &err) != MC_OK)
        goto fail;
    rc = 0;
fail:
    if (rc)
        mc_cli_report("score", mc_session_world(ses), &err);
    free(ids);
    free(lengths);
    free(logits);
    mc_session_close(ses, rc && fatal); /* aborts the peers after a fatal failure */
    return rc;
}
