/* tokenizer.c - loading a Hugging Face tokenizer.json; encode and decode.
 *
 * The file (JSON, at most MC_TOK_MAX_FILE bytes) as this reader uses it:
 *
 *   added_tokens    [{id, content, special, lstrip, rstrip, single_word,
 *                     normalized}]  matched on the raw text before anything
 *                   else, leftmost and then longest first
 *   normalizer      null | {type: Sequence|NFC|NFD|NFKC|NFKD|Prepend|Replace}
 *   pre_tokenizer   null | {type: Sequence|Split|ByteLevel|Digits}  (tok_pretok.c)
 *   model           {type: "BPE", vocab: {token: id}, merges: ["a b" | [a, b]],
 *                    ignore_merges, byte_fallback: false, dropout: null}
 *   post_processor  null | {type: ByteLevel|TemplateProcessing|RobertaProcessing|Sequence}
 *   decoder         {type: ByteLevel} | {type: Sequence, decoders: [ByteLevel...]}
 *   truncation, padding: not applied
 *
 * Vocabulary entries are written in the ByteLevel alphabet; ids are
 * 0..MC_TOK_MAX_VOCAB-1 and tokens at most MC_TOK_MAX_TOKEN_BYTES long.
 */
#include "fileio.h"
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CONFIG_FILE (16u << 20)

/* Appends n bytes to the pool; *off gets where they start. */
static mc_status pool_add(mc_tokenizer *t, const char *s, size_t n, uint64_t *off, mc_err *err)
{
    if (t->pool_len + n > t->pool_cap) {
        uint64_t nc = t->pool_cap ? t->pool_cap : 1 << 16;
        while (nc < t->pool_len + n)
            nc *= 2;
        char *p = realloc(t->pool, nc);
        if (!p)
            return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", t->name);
        t->pool = p;
        t->pool_cap = nc;
    }
    memcpy(t->pool + t->pool_len, s, n);
    *off = t->pool_len;
    t->pool_len += n;
    return MC_OK;
}

static mc_status get_id(const mc_tokenizer *t, json_t *v, const char *what, int32_t *id,
                        mc_err *err)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) >= MC_TOK_MAX_VOCAB)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: %s: the id must be an integer in 0..%d", t->name,
                          what, MC_TOK_MAX_VOCAB - 1);
    *id = (int32_t)json_integer_value(v);
    return MC_OK;
}

/* First pass: the largest id, to size the tables. */
static mc_status count_ids(mc_tokenizer *t, json_t *vocab, json_t *added, mc_err *err)
{
    const char *key;
    json_t *v;
    int32_t top = -1, id = 0;
    json_object_foreach(vocab, key, v)
    {
        if (get_id(t, v, "model.vocab", &id, err) != MC_OK)
            return err->status;
        if (id > top)
            top = id;
    }
    size_t i;
    json_array_foreach(added, i, v)
    {
        if (get_id(t, json_object_get(v, "id"), "added_tokens", &id, err) != MC_OK)
            return err->status;
        if (id > top)
            top = id;
    }
    if (top < 0)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: the vocabulary is empty", t->name);
    t->n_ids = top + 1;
    t->tok_off = mc_malloc_n((size_t)t->n_ids, sizeof *t->tok_off);
    t->tok_len = mc_calloc_n((size_t)t->n_ids, sizeof *t->tok_len);
    t->is_vocab = mc_calloc_n((size_t)t->n_ids, 1);
    if (!t->tok_off || !t->tok_len || !t->is_vocab)
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory for %d ids", t->name, t->n_ids);
    memset(t->tok_off, 0xFF, (size_t)t->n_ids * sizeof *t->tok_off);
    return MC_OK;
}

static uint32_t pow2_above(size_t n)
{
    uint32_t c = 16;
    while (c < 2 * n)
        c *= 2;
    return c;
}

static mc_status parse_vocab(mc_tokenizer *t, json_t *vocab, mc_err *err)
{
    size_t n = json_object_size(vocab);
    char buf[MC_TOK_MAX_TOKEN_BYTES];
    t->vocab.mask = pow2_above(n) - 1;
    t->vocab.slots = mc_malloc_n((size_t)t->vocab.mask + 1, sizeof(int32_t));
    if (!t->vocab.slots)
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory for the vocabulary", t->name);
    memset(t->vocab.slots, 0xFF, ((size_t)t->vocab.mask + 1) * sizeof(int32_t));
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v)
    {
        int32_t id = (int32_t)json_integer_value(v);
        size_t klen = strlen(key);
        if (klen == 0 || klen > MC_TOK_MAX_TOKEN_BYTES)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: model.vocab: token %d has %zu bytes (1..%d allowed)", t->name,
                              id, klen, MC_TOK_MAX_TOKEN_BYTES);
        if (t->tok_off[id] != UINT64_MAX)
            return mc_err_set(err, MC_ERR_FORMAT, "%s: model.vocab: id %d is used twice", t->name,
                              id);
        long bl = tok_bytelevel_decode(key, klen, buf);
        /* an entry outside the ByteLevel alphabet (e.g. a special token
         * listed in the vocabulary too) decodes to its own text and is not
         * reachable by merges */
        const char *src = bl >= 0 ? buf : key;
        size_t len = bl >= 0 ? (size_t)bl : klen;
        if (pool_add(t, src, len, &t->tok_off[id], err) != MC_OK)
            return err->status;
        t->tok_len[id] = (uint32_t)len;
        if (bl < 0 || tok_vocab_find(t, buf, len) >= 0)
            continue;
        t->is_vocab[id] = 1;
        uint32_t i = tok_hash(buf, len) & t->vocab.mask;
        while (t->vocab.slots[i] >= 0)
            i = (i + 1) & t->vocab.mask;
        t->vocab.slots[i] = id;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = tok_vocab_find(t, &c, 1);
    }
    return MC_OK;
}

/* The id of a merge side written in the ByteLevel alphabet; -1 if none. */
static int32_t side_id(const mc_tokenizer *t, const char *s, size_t n, char *buf, size_t *blen)
{
    long bl = n <= MC_TOK_MAX_TOKEN_BYTES ? tok_bytelevel_decode(s, n, buf) : -1;
    if (bl < 0)
        return -1;
    *blen = (size_t)bl;
    return tok_vocab_find(t, buf, (size_t)bl);
}

static mc_status parse_merges(mc_tokenizer *t, json_t *merges, mc_err *err)
{
    size_t n = json_array_size(merges);
    if (n > MC_TOK_MAX_VOCAB)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: model.merges has %zu entries (at most %d)",
                          t->name, n, MC_TOK_MAX_VOCAB);
    tok_pairmap *m = &t->merges;
    m->mask = pow2_above(n) - 1;
    size_t cap = (size_t)m->mask + 1;
    m->keys = mc_malloc_n(cap, sizeof *m->keys);
    m->rank = mc_malloc_n(cap, sizeof *m->rank);
    m->merged = mc_malloc_n(cap, sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged)
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory for the merges", t->name);
    memset(m->keys, 0xFF, cap * sizeof *m->keys);
    char *buf = malloc(3 * MC_TOK_MAX_TOKEN_BYTES);
    if (!buf)
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", t->name);
    mc_status st = MC_OK;
    size_t i;
    json_t *v;
    json_array_foreach(merges, i, v)
    {
        const char *l, *r;
        size_t ll, rl;
        if (json_is_string(v)) {
            l = json_string_value(v);
            const char *sp = strchr(l, ' ');
            if (!sp || strchr(sp + 1, ' ') || sp == l || !sp[1]) {
                st = mc_err_set(err, MC_ERR_FORMAT, "%s: model.merges[%zu] is not \"a b\"", t->name,
                                i);
                goto fail;
            }
            ll = (size_t)(sp - l);
            r = sp + 1;
            rl = strlen(r);
        } else if (json_is_array(v) && json_array_size(v) == 2 &&
                   json_is_string(json_array_get(v, 0)) && json_is_string(json_array_get(v, 1))) {
            l = json_string_value(json_array_get(v, 0));
            r = json_string_value(json_array_get(v, 1));
            ll = strlen(l);
            rl = strlen(r);
        } else {
            st = mc_err_set(err, MC_ERR_FORMAT,
                            "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", t->name,
                            i);
            goto fail;
        }
        size_t bl, br;
        int32_t il = side_id(t, l, ll, buf, &bl);
        int32_t ir = il >= 0 ? side_id(t, r, rl, buf + bl, &br) : -1;
        int32_t im = ir >= 0 ? tok_vocab_find(t, buf, bl + br) : -1;
        if (im < 0) {
            st = mc_err_set(err, MC_ERR_FORMAT,
                            "%s: model.merges[%zu]: '%.60s' + '%.60s' (or one of them) is not in "
                            "the vocabulary",
                            t->name, i, l, r);
            goto fail;
        }
        tok_pair_insert(m, il, ir, (int32_t)i, im); /* a repeat keeps its first rank */
    }
fail:
    free(buf);
    return st;
}

static int cmp_added(const void *a, const void *b)
{
    const tok_added *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int jbool(json_t *o, const char *k)
{
    return json_is_true(json_object_get(o, k));
}

static mc_status parse_added(mc_tokenizer *t, json_t *added, mc_err *err)
{
    size_t n = json_array_size(added);
    if (!n)
        return MC_OK;
    t->added = mc_calloc_n(n, sizeof *t->added);
    t->added_by_byte = mc_malloc_n(n, sizeof *t->added_by_byte);
    if (!t->added || !t->added_by_byte)
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", t->name);
    char *buf = malloc(MC_TOK_MAX_TOKEN_BYTES);
    if (!buf)
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", t->name);
    mc_status st = MC_OK;
    size_t i;
    json_t *v;
    json_array_foreach(added, i, v)
    {
        json_t *c = json_object_get(v, "content");
        size_t len = json_is_string(c) ? json_string_length(c) : 0;
        if (!len || len > MC_TOK_MAX_TOKEN_BYTES || strlen(json_string_value(c)) != len) {
            st = mc_err_set(err, MC_ERR_FORMAT,
                            "%s: added_tokens[%zu]: content must be a string of 1..%d bytes",
                            t->name, i, MC_TOK_MAX_TOKEN_BYTES);
            goto fail;
        }
        tok_added *a = &t->added[t->n_added++];
        a->id = (int32_t)json_integer_value(json_object_get(v, "id"));
        a->len = (uint32_t)len;
        if (!(a->content = strdup(json_string_value(c)))) {
            st = mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", t->name);
            goto fail;
        }
        a->special = (uint8_t)jbool(v, "special");
        a->lstrip = (uint8_t)jbool(v, "lstrip");
        a->rstrip = (uint8_t)jbool(v, "rstrip");
        a->single_word = (uint8_t)jbool(v, "single_word");
        a->normalized = (uint8_t)jbool(v, "normalized");
        if (t->is_vocab[a->id])
            continue; /* the vocabulary's entry decodes the same way */
        /* decoded like Hugging Face's ByteLevel decoder: through the
         * alphabet when every character is in it, else as written */
        long bl = tok_bytelevel_decode(a->content, len, buf);
        if ((st = pool_add(t, bl >= 0 ? buf : a->content, bl >= 0 ? (size_t)bl : len,
                           &t->tok_off[a->id], err)) != MC_OK)
            goto fail;
        t->tok_len[a->id] = (uint32_t)(bl >= 0 ? (size_t)bl : len);
    }
    qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    int k = 0;
    for (int b = 0; b < 256; b++) {
        t->added_first[b] = k;
        for (int j = 0; j < t->n_added; j++)
            if ((uint8_t)t->added[j].content[0] == b)
                t->added_by_byte[k++] = j;
        t->added_count[b] = k - t->added_first[b];
    }
fail:
    free(buf);
    return st;
}

/* The special token named `name` in a TemplateProcessing's special_tokens. */
static mc_status template_ids(mc_tokenizer *t, json_t *specials, const char *name, int32_t *out,
                              int *n_out, mc_err *err)
{
    json_t *ids = json_object_get(json_object_get(specials, name), "ids");
    size_t i;
    json_t *v;
    if (!json_is_array(ids))
        return mc_err_set(err, MC_ERR_FORMAT,
                          "%s: post_processor: special token '%.60s' has no ids", t->name, name);
    json_array_foreach(ids, i, v)
    {
        int32_t id = 0;
        if (get_id(t, v, "post_processor", &id, err) != MC_OK)
            return err->status;
        if (id >= t->n_ids || *n_out >= TOK_MAX_SPECIAL)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: post_processor: too many special tokens, or id %d unknown",
                              t->name, id);
        out[(*n_out)++] = id;
    }
    return MC_OK;
}

static mc_status parse_post(mc_tokenizer *t, json_t *p, int depth, mc_err *err)
{
    if (json_is_null(p) || !p)
        return MC_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: post_processor has no type", t->name);
    if (!strcmp(type, "ByteLevel"))
        return MC_OK;
    if (!strcmp(type, "Sequence") && depth < 4) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(p, "processors"), i, v)
        {
            if (parse_post(t, v, depth + 1, err) != MC_OK)
                return err->status;
        }
        return MC_OK;
    }
    if (!strcmp(type, "RobertaProcessing")) {
        int32_t cls = 0, sep = 0;
        if (get_id(t, json_array_get(json_object_get(p, "cls"), 1), "post_processor.cls", &cls,
                   err) != MC_OK ||
            get_id(t, json_array_get(json_object_get(p, "sep"), 1), "post_processor.sep", &sep,
                   err) != MC_OK)
            return err->status;
        t->n_prefix = t->n_suffix = 1;
        t->prefix[0] = cls;
        t->suffix[0] = sep;
        return MC_OK;
    }
    if (!strcmp(type, "TemplateProcessing")) {
        json_t *single = json_object_get(p, "single"),
               *specials = json_object_get(p, "special_tokens");
        size_t i;
        json_t *v;
        int seen_a = 0;
        t->n_prefix = t->n_suffix = 0;
        json_array_foreach(single, i, v)
        {
            json_t *sp = json_object_get(v, "SpecialToken");
            if (json_object_get(v, "Sequence")) {
                seen_a = 1;
            } else if (json_is_string(json_object_get(sp, "id"))) {
                const char *name = json_string_value(json_object_get(sp, "id"));
                if (template_ids(t, specials, name, seen_a ? t->suffix : t->prefix,
                                 seen_a ? &t->n_suffix : &t->n_prefix, err) != MC_OK)
                    return err->status;
            } else {
                return mc_err_set(err, MC_ERR_FORMAT,
                                  "%s: post_processor.single[%zu] is neither a Sequence nor a "
                                  "SpecialToken",
                                  t->name, i);
            }
        }
        return MC_OK;
    }
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: post_processor type '%.60s' is not supported",
                      t->name, type);
}

static mc_status check_decoder(mc_tokenizer *t, json_t *d, int depth, mc_err *err)
{
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!type)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: decoder must be ByteLevel (a byte-level BPE tokenizer)", t->name);
    if (!strcmp(type, "ByteLevel"))
        return MC_OK;
    if (!strcmp(type, "Sequence") && depth < 4) {
        size_t i;
        json_t *v;
        json_t *list = json_object_get(d, "decoders");
        if (!json_array_size(list))
            return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: decoder: an empty Sequence", t->name);
        json_array_foreach(list, i, v)
        {
            if (check_decoder(t, v, depth + 1, err) != MC_OK)
                return err->status;
        }
        return MC_OK;
    }
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: decoder type '%.60s' is not supported", t->name,
                      type);
}

static mc_status check_model(mc_tokenizer *t, json_t *model, mc_err *err)
{
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model) || (type && strcmp(type, "BPE")))
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: model type '%.60s' is not supported "
                          "(only BPE)",
                          t->name, type ? type : "?");
    if (!json_is_object(json_object_get(model, "vocab")) ||
        !json_is_array(json_object_get(model, "merges")))
        return mc_err_set(err, MC_ERR_FORMAT, "%s: model needs a vocab object and a merges array",
                          t->name);
    if (json_object_size(json_object_get(model, "vocab")) > MC_TOK_MAX_VOCAB)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: model.vocab has more than %d entries", t->name,
                          MC_TOK_MAX_VOCAB);
    if (jbool(model, "byte_fallback"))
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: model.byte_fallback is not supported",
                          t->name);
    json_t *dr = json_object_get(model, "dropout");
    if (dr && !json_is_null(dr) && json_number_value(dr) != 0.0)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: model.dropout is not supported", t->name);
    const char *keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(model, keys[i]);
        if (v && !json_is_null(v) && !(json_is_string(v) && !json_string_length(v)))
            return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: model.%s is not supported", t->name,
                              keys[i]);
    }
    t->ignore_merges = jbool(model, "ignore_merges");
    return MC_OK;
}

static mc_status load_root(mc_tokenizer *t, json_t *root, mc_err *err)
{
    if (!json_is_object(root))
        return mc_err_set(err, MC_ERR_FORMAT, "%s: not a JSON object", t->name);
    json_t *model = json_object_get(root, "model");
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added))
        return mc_err_set(err, MC_ERR_FORMAT, "%s: added_tokens is not an array", t->name);
    if (json_array_size(added) > MC_TOK_MAX_VOCAB)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: too many added_tokens", t->name);
    mc_status st;
    if ((st = check_model(t, model, err)) != MC_OK ||
        (st = check_decoder(t, json_object_get(root, "decoder"), 0, err)) != MC_OK ||
        (st = count_ids(t, json_object_get(model, "vocab"), added, err)) != MC_OK ||
        (st = parse_vocab(t, json_object_get(model, "vocab"), err)) != MC_OK ||
        (st = parse_merges(t, json_object_get(model, "merges"), err)) != MC_OK ||
        (st = parse_added(t, added, err)) != MC_OK ||
        (st = tok_parse_normalizer(t, json_object_get(root, "normalizer"), err)) != MC_OK ||
        (st = tok_parse_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), err)) != MC_OK ||
        (st = parse_post(t, json_object_get(root, "post_processor"), 0, err)) != MC_OK)
        return st;
    return MC_OK;
}

mc_status mc_tokenizer_load_json(const char *text, size_t len, const char *name, mc_tokenizer **out,
                                 mc_err *err)
{
    *out = NULL;
    if (len > MC_TOK_MAX_FILE)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: larger than %llu bytes", name,
                          (unsigned long long)MC_TOK_MAX_FILE);
    mc_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", name);
    }
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    mc_status st;
    if (!root) {
        st = mc_err_set(err, MC_ERR_FORMAT, "%s: invalid JSON at line %d: %s", name, je.line,
                        je.text);
        goto fail;
    }
    st = load_root(t, root, err);
    json_decref(root);
    if (st != MC_OK)
        goto fail;
    *out = t;
    return MC_OK;
fail:
    mc_tokenizer_free(t);
    return st;
}

/* tokenizer_config.json's add_bos_token / add_eos_token (transformers'
 * LlamaTokenizerFast rewrites the post-processor from them). */
static mc_status load_config(mc_tokenizer *t, const char *dir, mc_err *err)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/tokenizer_config.json", dir) >= sizeof path)
        return MC_OK;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return MC_OK;
    char *text = NULL;
    size_t len = 0;
    mc_status st = mc_read_regular(path, "tokenizer config", MAX_CONFIG_FILE, &text, &len, err);
    if (st != MC_OK)
        return st;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    free(text);
    if (!json_is_object(root)) {
        json_decref(root);
        return mc_err_set(err, MC_ERR_FORMAT, "%s: invalid JSON at line %d: %s", path, je.line,
                          je.text);
    }
    const char *flag[2] = {"add_bos_token", "add_eos_token"};
    const char *tokname[2] = {"bos_token", "eos_token"};
    const char *cls = json_string_value(json_object_get(root, "tokenizer_class"));
    int llama = cls && !strcmp(cls, "LlamaTokenizerFast");
    int templated = t->n_prefix || t->n_suffix;
    for (int k = 0; k < 2 && (llama || !templated); k++) {
        json_t *f = json_object_get(root, flag[k]);
        if (!json_is_boolean(f))
            continue;
        int *n = k ? &t->n_suffix : &t->n_prefix;
        *n = 0;
        if (!json_is_true(f))
            continue;
        json_t *tok = json_object_get(root, tokname[k]);
        if (json_is_object(tok))
            tok = json_object_get(tok, "content");
        int32_t id = json_is_string(tok) ? mc_tokenizer_token_id(t, json_string_value(tok)) : -1;
        if (id < 0) {
            json_decref(root);
            return mc_err_set(err, MC_ERR_FORMAT, "%s: %s is set but %s is not a known token", path,
                              flag[k], tokname[k]);
        }
        (k ? t->suffix : t->prefix)[0] = id;
        *n = 1;
    }
    json_decref(root);
    return MC_OK;
}

mc_status mc_tokenizer_load(const char *path, mc_tokenizer **out, mc_err *err)
{
    *out = NULL;
    char file[4096], dir[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if ((size_t)snprintf(file, sizeof file, "%s/tokenizer.json", path) >= sizeof file)
            return mc_err_set(err, MC_ERR_ARG, "%s: path too long", path);
        snprintf(dir, sizeof dir, "%s", path);
    } else {
        if ((size_t)snprintf(file, sizeof file, "%s", path) >= sizeof file)
            return mc_err_set(err, MC_ERR_ARG, "%s: path too long", path);
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof dir, ".");
    }
    char *text = NULL;
    size_t len = 0;
    mc_status st = mc_read_regular(file, "tokenizer", MC_TOK_MAX_FILE, &text, &len, err);
    if (st != MC_OK)
        return st;
    st = mc_tokenizer_load_json(text, len, file, out, err);
    free(text);
    if (st == MC_OK && (st = load_config(*out, dir, err)) != MC_OK) {
        mc_tokenizer_free(*out);
        *out = NULL;
    }
    return st;
}

void mc_tokenizer_free(mc_tokenizer *t)
{
    if (!t)
        return;
    tok_free_steps(t);
    for (int i = 0; i < t->n_added; i++)
        free(t->added[i].content);
    free(t->added);
    free(t->added_by_byte);
    free(t->vocab.slots);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t->tok_off);
    free(t->tok_len);
    free(t->is_vocab);
    free(t->pool);
    free(t->name);
    free(t);
}

int32_t mc_tokenizer_vocab_size(const mc_tokenizer *t)
{
    return t->n_ids;
}
int32_t mc_tokenizer_bos_id(const mc_tokenizer *t)
{
    return t->n_prefix ? t->prefix[0] : -1;
}
int32_t mc_tokenizer_eos_id(const mc_tokenizer *t)
{
    return t->n_suffix ? t->suffix[t->n_suffix - 1] : -1;
}

int32_t mc_tokenizer_token_id(const mc_tokenizer *t, const char *token)
{
    size_t n = strlen(token);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].content, token, n))
            return t->added[i].id;
    if (n > MC_TOK_MAX_TOKEN_BYTES)
        return -1;
    char buf[MC_TOK_MAX_TOKEN_BYTES];
    long bl = tok_bytelevel_decode(token, n, buf);
    return bl < 0 ? -1 : tok_vocab_find(t, buf, (size_t)bl);
}
