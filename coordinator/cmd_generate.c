/* cmd_generate.c - `moecluster generate`: token ids in, token ids out, or
 * text in (--prompt, with the model folder's tokenizer.json), text out.
 *
 * Under mpirun every rank runs the steps of its share of the model; rank 0
 * tokenizes the prompt and broadcasts its ids, gets the last position's
 * logits, samples, prints, and broadcasts the next token (and whether to
 * stop) to every rank. Rank 0 reports the prompt and decode speeds and the
 * time to first token on stderr.
 */
#include "chat.h"
#include "cli.h"
#include "log.h"
#include "par_args.h"
#include "parallel.h"
#include "sampler.h"
#include "session.h"
#include "tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROMPT 1000000

/* The one usage text: printed by --help and on usage errors. */
static const char gen_usage_text[] =
    "usage: moecluster generate --model DIR|--shards DIR --prompt-ids 1,2,3|--prompt TEXT\n"
    "                           [-n N] [--temperature T] [--top-p P] [--top-k K] [--seed S]\n"
    "                           [--ignore-eos] [--tp N] [--ep N] [--pp N] [--stats]\n"
    "                           [--weights q8_0|q4_k|bf16] [--no-mmap] [--no-verify]\n"
    "                           [--activations f32|bf16] [--kv-cache-dtype f32|bf16]\n"
    "                           [--device cpu|cuda]\n\n"
    "  --model DIR        Hugging Face checkpoint folder, a shard set, or a .gguf file\n"
    "  --shards DIR       a shard set written by `moecluster shard`\n"
    "  --prompt-ids LIST  comma-separated prompt token ids: decimal digits only, no spaces\n"
    "                     or signs, each in [0, vocab), at most 1000000\n"
    "  -p, --prompt TEXT  prompt text, encoded with the model folder's tokenizer.json (a BOS\n"
    "                     token first when its tokenizer_config.json says add_bos_token);\n"
    "                     the output is then text\n"
    "  -n, --max-tokens N tokens to generate (default 16)\n"
    "  --temperature T    0 = greedy (default)\n"
    "  --top-p P          nucleus sampling mass (default 1 = off)\n"
    "  --top-k K          keep the K most likely tokens (default 0 = off)\n"
    "  --seed S           sampling seed (default 0)\n"
    "  --ignore-eos       keep generating after an end token (config.json's eos_token_id\n"
    "                     and every id of generation_config.json's)\n"
    MC_DEVICE_USAGE MC_PAR_USAGE
    "Prints the generated ids, comma-separated, on one line (--prompt-ids), or the\n"
    "generated text as it comes, end token left out, and a newline (--prompt). Prompt\n"
    "and decode tokens/s and the time to first token go to stderr.\n";

static void gen_usage(FILE *out) { fputs(gen_usage_text, out); }

/* Strict: decimal digits separated by single commas; no spaces, signs,
 * empty items or trailing comma; at most MAX_PROMPT ids, each below 2^62
 * (the vocabulary bound is checked once the model is known). On a refusal
 * *why says what is wrong. */
static int parse_ids(const char *s, int64_t **out, int *n, const char **why)
{
    *why = "empty";
    int cnt = 0;
    for (const char *p = s; *p; p++) {
        if (*p == ',')
            continue;
        if (*p < '0' || *p > '9') {
            *why = "only digits and commas are allowed (no spaces or signs)";
            return -1;
        }
    }
    for (const char *p = s;; p++) {
        if (*p == ',' || !*p) {
            if (p == s || p[-1] == ',') {
                *why = "an empty item (leading, trailing or doubled comma)";
                return -1;
            }
            if (++cnt > MAX_PROMPT) {
                *why = "more than 1000000 ids";
                return -1;
            }
        }
        if (!*p)
            break;
    }
    int64_t *v = malloc((size_t)cnt * sizeof *v);
    if (!v) {
        *why = "out of memory";
        return -1;
    }
    const char *p = s;
    for (int i = 0; i < cnt; i++) {
        int64_t x = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (x > (INT32_MAX - (*p - '0')) / 10) { /* ids are ints; checked before it overflows */
                free(v);
                *why = "an id is too large";
                return -1;
            }
            x = x * 10 + (*p - '0');
        }
        v[i] = x;
        p++; /* the comma (or the terminating NUL on the last item) */
    }
    *out = v;
    *n = cnt;
    return 0;
}

/* Prints len bytes of a piece of the result; a failed write (full disk,
 * /dev/full, a closed pipe) stops the run instead of generating into the void. */
static mc_status put_out_n(mc_err *err, const char *text, size_t len)
{
    errno = 0;
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0)
        return mc_err_set(err, MC_ERR_IO, "cannot write to standard output: %s",
                          errno ? strerror(errno) : "write error");
    return MC_OK;
}

static mc_status put_out(mc_err *err, const char *text)
{
    return put_out_n(err, text, strlen(text));
}

/* The text printer of --prompt (rank 0): generated ids are decoded and
 * printed as soon as they end on a whole character. The tokenizer decodes
 * bytes (ByteLevel), so printing the decode of each run of ids that ends on
 * a character boundary prints exactly the decode of all the ids; a run
 * ending in U+FFFD (an incomplete character, or a real U+FFFD) waits for
 * the next id or the end. */
typedef struct {
    const mc_tokenizer *tok; /* borrowed */
    int32_t *ids;            /* (cap) the ids of the run not printed yet */
    size_t n, cap;
} text_out;

/* Adds id (or nothing when id < 0) and prints the run when it ends on a
 * character, or whatever it is when final. An id past the tokenizer's
 * vocabulary (a model vocabulary padded past it, as DeepSeek-V3's 129,280
 * over 128,815 ids) has no text and is skipped, as Hugging Face does. */
static mc_status text_push(text_out *t, int32_t id, bool final, mc_err *err)
{
    if (id >= 0 && id < mc_tokenizer_vocab_size(t->tok)) {
        if (t->n == t->cap) {
            size_t cap = t->cap ? 2 * t->cap : 16;
            int32_t *v = realloc(t->ids, cap * sizeof *v);
            if (!v)
                return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
            t->ids = v;
            t->cap = cap;
        }
        t->ids[t->n++] = id;
    }
    if (!t->n)
        return MC_OK;
    char *text = NULL;
    size_t len = 0;
    mc_status st = mc_tokenizer_decode(t->tok, t->ids, t->n, &text, &len, err);
    if (st != MC_OK)
        return st;
    if (final || len < 3 || memcmp(text + len - 3, "\xef\xbf\xbd", 3)) {
        st = put_out_n(err, text, len);
        t->n = 0;
    }
    free(text);
    return st;
}

/* Rank 0 of --prompt: loads DIR/tokenizer.json (with its
 * tokenizer_config.json) into *tok and encodes text with the special
 * tokens the tokenizer adds (BOS for DeepSeek-V3) into *ids (malloc'd, the
 * caller frees both). */
static mc_status encode_prompt(const char *dir, const char *text, mc_tokenizer **tok,
                               int64_t **ids, int *n, mc_err *err)
{
    char path[4096];
    int w = snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (w < 0 || (size_t)w >= sizeof path)
        return mc_err_set(err, MC_ERR_ARG, "model path is too long");
    if (access(path, R_OK) != 0)
        return mc_err_set(err, MC_ERR_NOT_FOUND,
                          "%s has no tokenizer.json: use --prompt-ids", dir);
    mc_status st = mc_tokenizer_load(path, tok, err);
    if (st != MC_OK)
        return st;
    int32_t *v = NULL;
    size_t nv = 0;
    st = mc_tokenizer_encode(*tok, text, strlen(text), 1, &v, &nv, err);
    if (st != MC_OK)
        return st;
    if (nv == 0 || nv > MAX_PROMPT) {
        free(v);
        return mc_err_set(err, MC_ERR_ARG, "--prompt: %zu tokens (1 to %d allowed)", nv,
                          MAX_PROMPT);
    }
    *ids = malloc(nv * sizeof **ids);
    if (!*ids) {
        free(v);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < nv; i++)
        (*ids)[i] = v[i];
    *n = (int)nv;
    free(v);
    return MC_OK;
}

/* Rank 0: the model folder's end ids (generation_config.json's
 * eos_token_id list; none when the file or the key is missing). */
static mc_status end_ids(const char *dir, int32_t *ids, size_t *n, mc_err *err)
{
    char path[4096];
    *n = 0;
    int w = snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (w < 0 || (size_t)w >= sizeof path)
        return mc_err_set(err, MC_ERR_ARG, "model path is too long");
    if (access(path, F_OK) != 0)
        return MC_OK;
    mc_err e2;
    mc_err_clear(&e2);
    mc_status st = mc_chat_eos_ids(path, ids, MC_CHAT_MAX_EOS, n, &e2);
    if (st == MC_ERR_NOT_FOUND) {
        *n = 0;
        return MC_OK;
    }
    if (st != MC_OK)
        return mc_err_set(err, st, "%s", e2.msg);
    return MC_OK;
}

int mc_cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                          {"prompt-ids", required_argument, 0, 'i'},
                                          {"prompt", required_argument, 0, 'p'},
                                          {"max-tokens", required_argument, 0, 'n'},
                                          {"temperature", required_argument, 0, 't'},
                                          {"top-p", required_argument, 0, 'P'},
                                          {"top-k", required_argument, 0, 'K'},
                                          {"seed", required_argument, 0, 's'},
                                          {"ignore-eos", no_argument, 0, 'e'},
                                          {"help", no_argument, 0, 'h'},
                                          MC_PAR_OPTIONS,
                                          MC_DEVICE_OPTIONS,
                                          {0, 0, 0, 0}};
    const char *model_dir = NULL, *prompt = NULL, *text = NULL;
    mc_par_args par = MC_PAR_ARGS_INIT;
    long long n_gen = 16, top_k = 0, seed = 0;
    double temp = 0.0, top_p = 1.0;
    int ignore_eos = 0, c;
    mc_quiet quiet = mc_quiet_begin(); /* under mpirun, rank 0 alone prints usage errors */
#define PARSE_RETURN(x)                                                                            \
    do {                                                                                           \
        mc_quiet_end(quiet);                                                                       \
        return (x);                                                                                \
    } while (0)
    optind = 1;
    while ((c = getopt_long(argc, argv, "n:p:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'i': prompt = optarg; break;
        case 'p': text = optarg; break;
        case 'n':
            if (mc_arg_int("generate", "-n", optarg, 0, 1 << 24, &n_gen))
                PARSE_RETURN(2);
            break;
        case 't':
            if (mc_arg_float("generate", "--temperature", optarg, 0.0, 100.0, &temp))
                PARSE_RETURN(2);
            break;
        case 'P':
            if (mc_arg_float("generate", "--top-p", optarg, 0.0, 1.0, &top_p) || top_p <= 0.0) {
                if (top_p <= 0.0)
                    fprintf(stderr, "moecluster generate: --top-p must be in (0, 1]\n");
                PARSE_RETURN(2);
            }
            break;
        case 'K':
            if (mc_arg_int("generate", "--top-k", optarg, 0, 1 << 24, &top_k))
                PARSE_RETURN(2);
            break;
        case 's':
            if (mc_arg_int("generate", "--seed", optarg, 0, INT64_MAX, &seed))
                PARSE_RETURN(2);
            break;
        case 'e': ignore_eos = 1; break;
        case 'h': gen_usage(stdout); PARSE_RETURN(0);
        default: {
            int r = mc_par_option(&par, "generate", c, optarg);
            if (r == 0)
                break;
            if (r > 0)
                gen_usage(stderr);
            PARSE_RETURN(2);
        }
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moecluster generate: unexpected argument '%s'\n", argv[optind]);
        PARSE_RETURN(2);
    }
    if (par.shards)
        model_dir = par.shards; /* the shard set is the model */
    if (!model_dir || (!prompt && !text)) {
        fprintf(stderr, "moecluster generate: --model and --prompt-ids or --prompt are required\n");
        gen_usage(stderr);
        PARSE_RETURN(2);
    }
    if (prompt && text) {
        fprintf(stderr, "moecluster generate: give --prompt-ids or --prompt, not both\n");
        PARSE_RETURN(2);
    }
    int64_t *ids = NULL;
    int n_prompt = 0;
    const char *why = NULL;
    if (prompt && parse_ids(prompt, &ids, &n_prompt, &why)) {
        fprintf(stderr,
                "moecluster generate: --prompt-ids: '%.80s' is not a comma-separated list of "
                "token ids: %s\n",
                prompt, why);
        PARSE_RETURN(2);
    }
    mc_quiet_end(quiet);
#undef PARSE_RETURN
    mc_err err;
    mc_err_clear(&err);
    mc_session *ses = NULL;
    float *logits = NULL;
    mc_sample_scratch *scratch = NULL;
    mc_tokenizer *tok = NULL;
    text_out tout = {0};
    int32_t eos[MC_CHAT_MAX_EOS + 1];
    size_t n_eos = 0;
    int rc = 1;
    bool fatal = false; /* a failure after the ranks started working together */
    if (mc_session_open(&argc, &argv, true, &ses, &err) != MC_OK) {
        fprintf(stderr, "moecluster generate: %s\n", err.msg);
        free(ids);
        return 1;
    }
    int me = mc_session_rank(ses);
    mc_status st = MC_OK;
    if (me == 0) /* the end ids, and the prompt's: rank 0 alone reads the text files */
        st = end_ids(model_dir, eos, &n_eos, &err);
    if (text && me == 0 && st == MC_OK)
        st = encode_prompt(model_dir, text, &tok, &ids, &n_prompt, &err);
    if (mc_session_agree(ses, st, &err) != MC_OK)
        goto fail;
    if (text) { /* every rank learns the prompt's ids */
        int64_t np = n_prompt;
        if (mc_session_bcast(ses, 0, &np, sizeof np, &err) != MC_OK)
            goto fail;
        st = MC_OK;
        if (me != 0) {
            n_prompt = (int)np;
            ids = malloc((size_t)np * sizeof *ids);
            if (!ids)
                st = mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
        }
        if (mc_session_agree(ses, st, &err) != MC_OK ||
            mc_session_bcast(ses, 0, ids, (size_t)np * sizeof *ids, &err) != MC_OK)
            goto fail;
    }
    mc_session_opts lo = {.dir = model_dir, .tp = par.tp, .ep = par.ep, .pp = par.pp,
                          .layout_given = par.given, .weights_given = par.weights_given,
                          .weights = par.weights, .no_verify = par.no_verify,
                          .stats = par.stats, .device = mc_par_device(&par),
                          .resident = par.resident, .bf16_acts = par.bf16_acts,
                          .kv_dtype = par.kv_dtype};
    st = mc_session_load(ses, &lo, &err);
    if (st != MC_OK)
        goto fail; /* every rank failed together (mc_par_agree) */
    const mc_model_desc *d = mc_session_desc(ses);
    int V = d->vocab;
    if (d->eos_id >= 0) /* config.json's, as before generation_config.json */
        eos[n_eos++] = (int32_t)d->eos_id;
    long long total = n_prompt + n_gen;
    if (total > d->max_pos)
        st = mc_err_set(&err, MC_ERR_ARG,
                        "prompt (%d) + new tokens (%lld) exceed max_position_embeddings %d",
                        n_prompt, n_gen, d->max_pos);
    for (int i = 0; st == MC_OK && i < n_prompt; i++)
        if (ids[i] >= V)
            st = mc_err_set(&err, MC_ERR_ARG, "token id %lld at position %d is outside [0, %d)",
                            (long long)ids[i], i, V);
    if (st == MC_OK)
        st = mc_session_seq_init(ses, (int)(total > 0 ? total : 1), &err);
    if (st == MC_OK) {
        logits = mc_malloc_n((size_t)V, sizeof *logits);
        if (!logits)
            st = mc_err_set(&err, MC_ERR_NOMEM, "out of memory");
        else
            st = mc_sample_scratch_init(V, &scratch, &err);
    }
    if (mc_session_agree(ses, st, &err) != MC_OK)
        goto fail;
    mc_sampler_params sp = mc_sampler_defaults();
    sp.temperature = (float)temp;
    sp.top_k = (int)top_k;
    sp.top_p = (float)top_p;
    sp.seed = (uint64_t)seed;
    mc_sampler smp;
    if (mc_sampler_init(&smp, &sp, V, &err) != MC_OK) /* the flags' ranges were checked */
        goto fail;
    tout.tok = tok;
    /* greedy: the device gives the best id of the last row (its logits never
     * leave it: mc_session_seq_last_top), bitwise the sampler's argmax */
    bool greedy = sp.temperature < MC_SAMPLER_GREEDY_EPS;
    int32_t best = 0;
    float best_v = 0;
#define LAST(toks, n)                                                                              \
    (greedy ? mc_session_seq_last_top(ses, (toks), (n), 1, &best, &best_v, NULL, &err)             \
            : mc_session_seq_last(ses, (toks), (n), logits, &err))
    double a = mc_now_s(), t_first = a, t_last = a;
    long long n_out = 0;
    fatal = true;
    if (n_gen > 0 && LAST(ids, n_prompt) != MC_OK)
        goto fail;
    for (long long i = 0; i < n_gen; i++) {
        /* rank 0 samples; every rank learns the token and whether to go on */
        int64_t msg[2] = {0, 0}; /* next token, 1 = stop */
        if (me == 0) {
            int32_t pick = best;
            if (!greedy && mc_sampler_pick(&smp, logits, V, NULL, scratch, &pick, NULL, &err) != MC_OK)
                goto fail;
            t_last = mc_now_s();
            if (i == 0)
                t_first = t_last;
            n_out++;
            bool end = false;
            for (size_t k = 0; k < n_eos && !ignore_eos; k++)
                end = end || pick == eos[k];
            if (text) {
                if (!end && text_push(&tout, pick, false, &err) != MC_OK)
                    goto fail;
            } else {
                char num[32];
                snprintf(num, sizeof num, "%s%lld", i ? "," : "", (long long)pick);
                if (put_out(&err, num) != MC_OK)
                    goto fail;
            }
            msg[0] = pick;
            msg[1] = end || i + 1 == n_gen;
        }
        if (mc_session_bcast(ses, 0, msg, sizeof msg, &err) != MC_OK)
            goto fail;
        if (msg[1])
            break;
        if (LAST(&msg[0], 1) != MC_OK) {
            if (me == 0)
                printf("\n");
            goto fail;
        }
    }
#undef LAST
    if (me == 0 && text && text_push(&tout, -1, true, &err) != MC_OK)
        goto fail;
    if (me == 0 && put_out(&err, "\n") != MC_OK)
        goto fail;
    double el = mc_now_s() - a;
    MC_INFO("generated in %.3f s", el);
    if (me == 0 && n_out > 0) {
        double pre = t_first - a, dec = t_last - t_first;
        fprintf(stderr,
                "prompt: %d tokens, %.1f tok/s; time to first token: %.1f ms; decode: %lld "
                "tokens, %.1f tok/s\n",
                n_prompt, pre > 0 ? n_prompt / pre : 0.0, 1e3 * pre, n_out,
                n_out > 1 && dec > 0 ? (double)(n_out - 1) / dec : 0.0);
    }
    if (par.stats && mc_session_stats_report(ses, stderr, el, &err) != MC_OK)
        goto fail;
    rc = 0;
fail:
    if (rc)
        mc_cli_report("generate", mc_session_world(ses), &err);
    free(ids);
    free(logits);
    free(tout.ids);
    mc_tokenizer_free(tok);
    mc_sample_scratch_free(scratch);
    mc_session_close(ses, rc && fatal); /* aborts the peers after a fatal failure */
    return rc;
}
