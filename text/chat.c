/* chat.c - chat templates from tokenizer_config.json and end ids from
 * generation_config.json (chat.h). The template language is in
 * chat_parse.c (syntax), chat_eval.c (evaluation) and chat_fn.c (filters,
 * tests, methods).
 *
 * tokenizer_config.json: "chat_template" is a string, or a list of
 * {"name", "template"} objects of which "default" is taken; "bos_token",
 * "eos_token", "unk_token", "pad_token" are strings or {"content": ...}
 * objects and become template variables of the same names.
 * generation_config.json: "eos_token_id" is an int or a list of ints.
 */
#include "chat_internal.h"
#include "fileio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CONFIG_FILE (16u << 20)

void mc_chat_free(mc_chat *c) {
    if (!c) return;
    chat_nodes_free(c);
    json_decref(c->globals);
    free(c->name);
    free(c);
}

static mc_status chat_new(const char *name, mc_chat **out, mc_err *err) {
    mc_chat *c = calloc(1, sizeof *c);
    if (!c || !(c->name = strdup(name)) || !(c->globals = json_object())) {
        mc_chat_free(c);
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", name);
    }
    *out = c;
    return MC_OK;
}

static mc_status chat_compile(mc_chat *c, const char *text, size_t len, mc_err *err) {
    if (len > MC_CHAT_MAX_TEMPLATE)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: chat template longer than %u bytes",
                          c->name, MC_CHAT_MAX_TEMPLATE);
    if (memchr(text, 0, len))
        return mc_err_set(err, MC_ERR_FORMAT, "%s: chat template holds a NUL byte", c->name);
    return chat_parse(c, text, len, err);
}

mc_status mc_chat_load_template(const char *text, size_t len, const char *bos, const char *eos,
                                const char *name, mc_chat **out, mc_err *err) {
    mc_chat *c = NULL;
    *out = NULL;
    mc_status st = chat_new(name ? name : "chat template", &c, err);
    if (st != MC_OK) return st;
    if ((bos && json_object_set_new(c->globals, "bos_token", json_string(bos))) ||
        (eos && json_object_set_new(c->globals, "eos_token", json_string(eos)))) {
        st = mc_err_set(err, MC_ERR_ARG, "%s: bos / eos token is not valid UTF-8", c->name);
        goto fail;
    }
    if ((st = chat_compile(c, text, len, err)) != MC_OK) goto fail;
    *out = c;
    return MC_OK;
fail:
    mc_chat_free(c);
    return st;
}

/* path, or path/name when path is a folder, into buf. */
static mc_status resolve(const char *path, const char *name, char *buf, size_t cap, mc_err *err) {
    struct stat sb;
    int dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    if ((size_t)snprintf(buf, cap, dir ? "%s/%s" : "%s", path, name) >= cap)
        return mc_err_set(err, MC_ERR_ARG, "%s: path too long", path);
    return MC_OK;
}

static mc_status read_json(const char *file, const char *what, json_t **root, mc_err *err) {
    char *text = NULL;
    size_t len = 0;
    struct stat sb;
    *root = NULL;
    if (stat(file, &sb) != 0) return mc_err_set(err, MC_ERR_NOT_FOUND, "%s: no such file", file);
    mc_status st = mc_read_regular(file, what, MAX_CONFIG_FILE, &text, &len, err);
    if (st != MC_OK) return st;
    json_error_t je;
    *root = json_loadb(text, len, 0, &je);
    free(text);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return mc_err_set(err, MC_ERR_FORMAT, "%s: invalid JSON at line %d: %s", file, je.line,
                          je.text);
    }
    return MC_OK;
}

mc_status mc_chat_load(const char *path, mc_chat **out, mc_err *err) {
    char file[4096];
    json_t *root = NULL;
    mc_chat *c = NULL;
    *out = NULL;
    mc_status st = resolve(path, "tokenizer_config.json", file, sizeof file, err);
    if (st != MC_OK) return st;
    struct stat sb;
    if (stat(file, &sb) != 0)
        return mc_err_set(
            err, MC_ERR_NOT_FOUND,
            "no chat template in %s (no tokenizer_config.json): serve completions only", path);
    if ((st = read_json(file, "tokenizer config", &root, err)) != MC_OK) return st;
    json_t *tpl = json_object_get(root, "chat_template");
    if (json_is_array(tpl)) {
        json_t *pick = NULL;
        for (size_t i = 0; i < json_array_size(tpl); i++) {
            json_t *e = json_array_get(tpl, i);
            const char *nm = json_string_value(json_object_get(e, "name"));
            if (nm && !strcmp(nm, "default")) pick = json_object_get(e, "template");
        }
        tpl = pick;
    }
    if (!json_is_string(tpl)) {
        st = mc_err_set(err, MC_ERR_NOT_FOUND, "no chat template in %s: serve completions only",
                        file);
        goto fail;
    }
    if ((st = chat_new(file, &c, err)) != MC_OK) goto fail;
    static const char *const toks[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (size_t i = 0; i < sizeof toks / sizeof *toks; i++) {
        json_t *t = json_object_get(root, toks[i]);
        if (json_is_object(t)) t = json_object_get(t, "content");
        if (json_is_string(t)) json_object_set(c->globals, toks[i], t);
    }
    if ((st = chat_compile(c, json_string_value(tpl), json_string_length(tpl), err)) != MC_OK)
        goto fail;
    json_decref(root);
    *out = c;
    return MC_OK;
fail:
    mc_chat_free(c);
    json_decref(root);
    return st;
}

mc_status mc_chat_eos_ids(const char *path, int32_t *ids, size_t cap, size_t *n, mc_err *err) {
    char file[4096];
    json_t *root = NULL;
    *n = 0;
    if (cap > MC_CHAT_MAX_EOS) cap = MC_CHAT_MAX_EOS;
    mc_status st = resolve(path, "generation_config.json", file, sizeof file, err);
    if (st != MC_OK || (st = read_json(file, "generation config", &root, err)) != MC_OK) return st;
    json_t *e = json_object_get(root, "eos_token_id");
    size_t cnt = json_is_array(e) ? json_array_size(e) : 1;
    if (!e || json_is_null(e)) {
        st = mc_err_set(err, MC_ERR_NOT_FOUND, "%s: no eos_token_id", file);
        goto done;
    }
    if (cnt > cap) {
        st = mc_err_set(err, MC_ERR_FORMAT, "%s: eos_token_id lists %zu ids, more than %zu", file,
                        cnt, cap);
        goto done;
    }
    for (size_t i = 0; i < cnt; i++) {
        json_t *v = json_is_array(e) ? json_array_get(e, i) : e;
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            st = mc_err_set(err, MC_ERR_FORMAT,
                            "%s: eos_token_id must be a non-negative integer or a list of them",
                            file);
            goto done;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    *n = cnt;
done:
    json_decref(root);
    return st;
}
