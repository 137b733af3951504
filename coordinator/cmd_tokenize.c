/* cmd_tokenize.c - `moecluster tokenize`: text to token ids and back.
 *
 * Reads UTF-8 text on stdin and prints one JSON array of ids (and a
 * newline); with --decode reads a JSON array of ids on stdin and prints the
 * text exactly (no newline added). No special tokens are added unless
 * --add-special-tokens asks (the post-processor's BOS / EOS).
 *
 * With --chat, stdin holds a JSON object {"messages": [...],
 * "add_generation_prompt": bool, ...} (other keys, e.g. "tools", become
 * template variables); the chat template of the folder's
 * tokenizer_config.json renders it, and the text is printed exactly, or with
 * --ids its token ids (special tokens in the text match as added tokens; no
 * BOS / EOS is added beyond what the template writes).
 */
#include "chat.h"
#include "cli.h"
#include "tokenizer.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_STDIN (256u << 20)
#define MAX_IDS (64u << 20)

int mc_cmd_tokenize(int argc, char **argv);

static const char tokenize_usage_text[] =
    "usage: moecluster tokenize --tokenizer FILE_OR_DIR [--decode] [--add-special-tokens]\n"
    "                           [--chat [--ids]]\n\n"
    "  --tokenizer PATH      a Hugging Face tokenizer.json, or a folder holding one (and\n"
    "                        optionally tokenizer_config.json)\n"
    "  --decode              read a JSON array of ids on stdin and print their text\n"
    "  --add-special-tokens  add the tokenizer's BOS / EOS as its post-processor says\n"
    "                        (default: none)\n"
    "  --chat                read a JSON object {\"messages\": [...], \"add_generation_prompt\":\n"
    "                        bool} on stdin and print the text the model's chat template\n"
    "                        (tokenizer_config.json) renders\n"
    "  --ids                 with --chat: print the ids of the rendered text instead\n"
    "Without --decode, reads UTF-8 text on stdin and prints one JSON array of ids.\n";

static void tokenize_usage(FILE *out)
{
    fputs(tokenize_usage_text, out);
}

/* Reads all of stdin (at most MAX_STDIN bytes) into a malloc'd buffer
 * (the caller frees it). */
static int read_stdin(char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -1;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_STDIN) {
                free(buf);
                fprintf(stderr, "moecluster tokenize: standard input is larger than %u bytes\n",
                        MAX_STDIN);
                return -1;
            }
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                return -1;
            }
            buf = p;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0) {
            if (ferror(stdin)) {
                free(buf);
                fprintf(stderr, "moecluster tokenize: cannot read standard input\n");
                return -1;
            }
            break;
        }
    }
    *out = buf;
    *len = n;
    return 0;
}

static int do_encode(const mc_tokenizer *tok, const char *text, size_t len, int add_special)
{
    int32_t *ids = NULL;
    size_t n = 0;
    mc_err err;
    mc_err_clear(&err);
    if (mc_tokenizer_encode(tok, text, len, add_special, &ids, &n, &err) != MC_OK) {
        fprintf(stderr, "moecluster tokenize: standard input: %s\n", err.msg);
        return 1;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf(i ? ", %d" : "%d", ids[i]);
    fputs("]\n", stdout);
    free(ids);
    return 0;
}

static int do_decode(const mc_tokenizer *tok, const char *text, size_t len)
{
    json_error_t je;
    json_t *arr = json_loadb(text, len, JSON_DECODE_ANY, &je);
    int rc = 1;
    int32_t *ids = NULL;
    if (!json_is_array(arr)) {
        fprintf(stderr,
                "moecluster tokenize: --decode: standard input is not a JSON array of ids%s%s\n",
                arr ? "" : ": ", arr ? "" : je.text);
        goto done;
    }
    size_t n = json_array_size(arr);
    if (n > MAX_IDS) {
        fprintf(stderr, "moecluster tokenize: --decode: more than %u ids\n", MAX_IDS);
        goto done;
    }
    if (!(ids = mc_malloc_n(n ? n : 1, sizeof *ids))) {
        fprintf(stderr, "moecluster tokenize: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            if (json_is_integer(v))
                fprintf(stderr,
                        "moecluster tokenize: --decode: unknown token id %lld (at position "
                        "%zu)\n",
                        (long long)json_integer_value(v), i);
            else
                fprintf(stderr, "moecluster tokenize: --decode: element %zu is not an integer id\n",
                        i);
            goto done;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    char *out = NULL;
    size_t olen = 0;
    mc_err err;
    mc_err_clear(&err);
    if (mc_tokenizer_decode(tok, ids, n, &out, &olen, &err) != MC_OK) {
        fprintf(stderr, "moecluster tokenize: --decode: %s\n", err.msg);
        goto done;
    }
    fwrite(out, 1, olen, stdout);
    free(out);
    rc = 0;
done:
    free(ids);
    json_decref(arr);
    return rc;
}

/* The folder of `path` (itself when it is a folder) into dir. */
static int tok_dir(const char *path, char *dir, size_t cap)
{
    struct stat sb;
    if ((size_t)snprintf(dir, cap, "%s", path) >= cap)
        return -1;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return 0;
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, cap, ".");
    return 0;
}

/* --chat: renders the request on stdin with the chat template of `path`
 * and prints the text, or (ids != 0) its ids. */
static int do_chat(const char *path, const char *text, size_t len, int ids)
{
    char dir[4096];
    json_error_t je;
    mc_err err;
    mc_err_clear(&err);
    mc_chat *chat = NULL;
    mc_tokenizer *tok = NULL;
    char *out = NULL;
    size_t olen = 0;
    int rc = 1;
    json_t *req = json_loadb(text, len, 0, &je), *vars = NULL;
    json_t *msgs = json_object_get(req, "messages");
    json_t *agp = json_object_get(req, "add_generation_prompt");
    if (!json_is_object(req) || !json_is_array(msgs) || (agp && !json_is_boolean(agp))) {
        fprintf(stderr,
                "moecluster tokenize: --chat: standard input is not a JSON object with a "
                "\"messages\" array (and a boolean \"add_generation_prompt\")%s%s\n",
                req ? "" : ": ", req ? "" : je.text);
        goto done;
    }
    if (tok_dir(path, dir, sizeof dir)) {
        fprintf(stderr, "moecluster tokenize: %s: path too long\n", path);
        goto done;
    }
    if (mc_chat_load(dir, &chat, &err) != MC_OK) {
        fprintf(stderr, "moecluster tokenize: %s\n", err.msg);
        goto done;
    }
    vars = json_deep_copy(req);
    json_object_del(vars, "messages");
    json_object_del(vars, "add_generation_prompt");
    if (mc_chat_render(chat, msgs, json_is_true(agp), vars, &out, &olen, &err) != MC_OK) {
        fprintf(stderr, "moecluster tokenize: --chat: %s\n", err.msg);
        goto done;
    }
    if (!ids) {
        fwrite(out, 1, olen, stdout);
        rc = 0;
        goto done;
    }
    if (mc_tokenizer_load(path, &tok, &err) != MC_OK) {
        fprintf(stderr, "moecluster tokenize: %s\n", err.msg);
        goto done;
    }
    rc = do_encode(tok, out, olen, 0);
done:
    free(out);
    mc_tokenizer_free(tok);
    mc_chat_free(chat);
    json_decref(vars);
    json_decref(req);
    return rc;
}

int mc_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {{"tokenizer", required_argument, 0, 't'},
                                         {"decode", no_argument, 0, 'd'},
                                         {"add-special-tokens", no_argument, 0, 'a'},
                                         {"chat", no_argument, 0, 'c'},
                                         {"ids", no_argument, 0, 'i'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *path = NULL;
    int decode = 0, add_special = 0, chat = 0, ids = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': path = optarg; break;
        case 'd': decode = 1; break;
        case 'a': add_special = 1; break;
        case 'c': chat = 1; break;
        case 'i': ids = 1; break;
        case 'h': tokenize_usage(stdout); return 0;
        default: tokenize_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moecluster tokenize: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!path) {
        fprintf(stderr, "moecluster tokenize: --tokenizer is required\n");
        tokenize_usage(stderr);
        return 2;
    }
    if (decode && add_special) {
        fprintf(stderr, "moecluster tokenize: --add-special-tokens has no meaning with --decode\n");
        return 2;
    }
    if (ids && !chat) {
        fprintf(stderr, "moecluster tokenize: --ids goes with --chat\n");
        return 2;
    }
    if (chat && (decode || add_special)) {
        fprintf(stderr, "moecluster tokenize: --chat does not go with --%s (the template writes "
                        "its own special tokens)\n", decode ? "decode" : "add-special-tokens");
        return 2;
    }
    if (chat) {
        char *in = NULL;
        size_t len = 0;
        int rc = read_stdin(&in, &len) == 0 ? do_chat(path, in, len, ids) : 1;
        free(in);
        return rc;
    }
    mc_err err;
    mc_err_clear(&err);
    mc_tokenizer *tok = NULL;
    if (mc_tokenizer_load(path, &tok, &err) != MC_OK) {
        fprintf(stderr, "moecluster tokenize: %s\n", err.msg);
        return 1;
    }
    char *in = NULL;
    size_t len = 0;
    int rc = 1;
    if (read_stdin(&in, &len) == 0)
        rc = decode ? do_decode(tok, in, len) : do_encode(tok, in, len, add_special);
    free(in);
    mc_tokenizer_free(tok);
    return rc;
}
