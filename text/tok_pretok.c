/* tok_pretok.c - normalizers and pre-tokenizers of a tokenizer.json.
 *
 *   normalizer:    null | Sequence{normalizers} | NFC | NFD | NFKC | NFKD
 *                  (utf8proc) | Prepend{prepend} | Replace{pattern: {String}, content}
 *   pre_tokenizer: Sequence{pretokenizers} | Split{pattern: {Regex}|{String},
 *                  behavior, invert} | ByteLevel{add_prefix_space, use_regex} |
 *                  Digits{individual_digits}
 *
 * Regexes are compiled by PCRE2 with UTF and UCP (\p{L}, \s and friends are
 * Unicode-aware, as in Oniguruma which Hugging Face uses), JIT when possible.
 * A pre-tokenizer turns a list of pieces into a finer one; pieces are spans
 * of one work buffer.
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>
#ifdef MC_HAVE_UTF8PROC
#include <utf8proc.h>
#endif

/* GPT-2's pattern, used by ByteLevel with use_regex */
static const char gpt2_re[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

#define MAX_PATTERN 65536

static mc_status compile(mc_tokenizer *t, const char *pat, size_t len, int literal,
                         pcre2_code **out, mc_err *err)
{
    int ec;
    PCRE2_SIZE eo;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* UCP is no literal's */
    if (len > MAX_PATTERN)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: a pattern of %zu bytes is too long", t->name,
                          len);
    *out = pcre2_compile((PCRE2_SPTR)pat, len, opt, &ec, &eo, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return mc_err_set(err, MC_ERR_FORMAT, "%s: pattern '%.80s' does not compile at %zu: %s",
                          t->name, pat, (size_t)eo, (const char *)msg);
    }
    (void)pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
    return MC_OK;
}

static const char *type_of(json_t *j)
{
    return json_string_value(json_object_get(j, "type"));
}

static mc_status add_norm(mc_tokenizer *t, json_t *j, int depth, mc_err *err)
{
    if (!j || json_is_null(j))
        return MC_OK;
    const char *type = type_of(j);
    if (!type)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: a normalizer has no type", t->name);
    if (!strcmp(type, "Sequence") && depth < 4) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(j, "normalizers"), i, v)
        {
            if (add_norm(t, v, depth + 1, err) != MC_OK)
                return err->status;
        }
        return MC_OK;
    }
    if (t->n_norm >= TOK_MAX_STEPS)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: more than %d normalizers", t->name,
                          TOK_MAX_STEPS);
    tok_norm *n = &t->norm[t->n_norm];
    const char *a = NULL, *b = NULL;
    if (!strcmp(type, "NFC") || !strcmp(type, "NFD") || !strcmp(type, "NFKC") ||
        !strcmp(type, "NFKD")) {
#ifndef MC_HAVE_UTF8PROC
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: normalizer %s needs utf8proc, which this build lacks", t->name,
                          type);
#endif
        n->kind = !strcmp(type, "NFC")    ? NORM_NFC
                  : !strcmp(type, "NFD")  ? NORM_NFD
                  : !strcmp(type, "NFKC") ? NORM_NFKC
                                          : NORM_NFKD;
    } else if (!strcmp(type, "Prepend")) {
        n->kind = NORM_PREPEND;
        a = json_string_value(json_object_get(j, "prepend"));
        if (!a)
            return mc_err_set(err, MC_ERR_FORMAT, "%s: normalizer Prepend without 'prepend'",
                              t->name);
    } else if (!strcmp(type, "Replace")) {
        n->kind = NORM_REPLACE;
        a = json_string_value(json_object_get(json_object_get(j, "pattern"), "String"));
        b = json_string_value(json_object_get(j, "content"));
        if (!a || !*a || !b)
            return mc_err_set(err, MC_ERR_UNSUPPORTED,
                              "%s: normalizer Replace is supported with a non-empty String "
                              "pattern and a content only",
                              t->name);
    } else {
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: normalizer type '%.60s' is not supported",
                          t->name, type);
    }
    if (a && (strlen(a) > MC_TOK_MAX_TOKEN_BYTES || (b && strlen(b) > MC_TOK_MAX_TOKEN_BYTES)))
        return mc_err_set(err, MC_ERR_FORMAT, "%s: normalizer %s: string too long", t->name, type);
    if ((a && !(n->a = strdup(a))) || (b && !(n->b = strdup(b))))
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", t->name);
    t->n_norm++;
    return MC_OK;
}

mc_status tok_parse_normalizer(mc_tokenizer *t, json_t *j, mc_err *err)
{
    return add_norm(t, j, 0, err);
}

static mc_status add_pre(mc_tokenizer *t, json_t *j, int depth, mc_err *err)
{
    const char *type = type_of(j);
    if (!type)
        return mc_err_set(err, MC_ERR_FORMAT, "%s: a pre_tokenizer has no type", t->name);
    if (!strcmp(type, "Sequence") && depth < 4) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(j, "pretokenizers"), i, v)
        {
            if (add_pre(t, v, depth + 1, err) != MC_OK)
                return err->status;
        }
        return MC_OK;
    }
    if (t->n_pre >= TOK_MAX_STEPS)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: more than %d pre_tokenizers", t->name,
                          TOK_MAX_STEPS);
    tok_pre *p = &t->pre[t->n_pre];
    if (!strcmp(type, "Split")) {
        json_t *pat = json_object_get(j, "pattern");
        json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        if (!json_is_string(re) && !json_is_string(lit))
            return mc_err_set(err, MC_ERR_FORMAT,
                              "%s: pre_tokenizer Split needs a pattern {Regex} or {String}",
                              t->name);
        json_t *s = json_is_string(re) ? re : lit;
        if (!json_string_length(s))
            return mc_err_set(err, MC_ERR_FORMAT, "%s: pre_tokenizer Split: empty pattern",
                              t->name);
        const char *beh = json_string_value(json_object_get(j, "behavior"));
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        p->behavior = -1;
        for (int i = 0; beh && i < 5; i++)
            if (!strcmp(beh, names[i]))
                p->behavior = i;
        if (p->behavior < 0)
            return mc_err_set(err, MC_ERR_UNSUPPORTED,
                              "%s: pre_tokenizer Split: behavior '%.40s' is not supported", t->name,
                              beh ? beh : "(none)");
        p->invert = json_is_true(json_object_get(j, "invert"));
        p->kind = PRE_SPLIT;
        t->n_pre++; /* counted first, so that tok_free_steps frees the code */
        return compile(t, json_string_value(s), json_string_length(s), s == lit, &p->re, err);
    }
    if (!strcmp(type, "ByteLevel")) {
        p->kind = PRE_BYTELEVEL;
        p->behavior = SPLIT_ISOLATED; /* of GPT-2's pattern, with use_regex */
        p->add_prefix_space = json_is_true(json_object_get(j, "add_prefix_space"));
        json_t *ur = json_object_get(j, "use_regex");
        t->n_pre++;
        if (!ur || json_is_true(ur))
            return compile(t, gpt2_re, strlen(gpt2_re), 0, &p->re, err);
        return MC_OK;
    }
    if (!strcmp(type, "Digits")) {
        /* Hugging Face splits at char::is_numeric (Nd, Nl, No): \p{N} */
        p->kind = PRE_SPLIT;
        p->behavior = json_is_true(json_object_get(j, "individual_digits")) ? SPLIT_ISOLATED
                                                                           : SPLIT_CONTIGUOUS;
        p->invert = 0;
        t->n_pre++;
        return compile(t, "\\p{N}", 5, 0, &p->re, err);
    }
    return mc_err_set(err, MC_ERR_UNSUPPORTED, "%s: pre_tokenizer type '%.60s' is not supported",
                      t->name, type);
}

mc_status tok_parse_pre_tokenizer(mc_tokenizer *t, json_t *j, mc_err *err)
{
    if (!j || json_is_null(j))
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: no pre_tokenizer: a byte-level BPE tokenizer needs a ByteLevel "
                          "pre_tokenizer",
                          t->name);
    if (add_pre(t, j, 0, err) != MC_OK)
        return err->status;
    for (int i = 0; i < t->n_pre; i++)
        if (t->pre[i].kind == PRE_BYTELEVEL)
            return MC_OK;
    return mc_err_set(err, MC_ERR_UNSUPPORTED,
                      "%s: the pre_tokenizer has no ByteLevel step: not a byte-level BPE "
                      "tokenizer",
                      t->name);
}

void tok_free_steps(mc_tokenizer *t)
{
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    for (int i = 0; i < t->n_pre; i++)
        pcre2_code_free(t->pre[i].re);
    t->n_norm = t->n_pre = 0;
}

/* ---- encoding ---- */

typedef struct {
    size_t off, len;
} span;

typedef struct {
    char *buf; /* the work buffer every span points into */
    size_t blen, bcap;
    span *a, *b; /* current pieces and the next step's */
    size_t na, nb, cap_a, cap_b;
    struct seg *segs; /* one piece's segments (split_piece) */
    size_t nseg, cap_seg;
    pcre2_match_data *md;
    mc_err *err;
} work;

static mc_status buf_add(work *w, const char *s, size_t n, size_t *off)
{
    if (w->blen + n > w->bcap) {
        size_t nc = w->bcap ? w->bcap : 4096;
        while (nc < w->blen + n)
            nc *= 2;
        char *p = realloc(w->buf, nc);
        if (!p)
            return mc_err_set(w->err, MC_ERR_NOMEM, "tokenizer: out of memory");
        w->buf = p;
        w->bcap = nc;
    }
    if (n && s)
        memcpy(w->buf + w->blen, s, n);
    *off = w->blen;
    w->blen += n;
    return MC_OK;
}

static mc_status emit(work *w, size_t off, size_t len)
{
    if (!len)
        return MC_OK;
    if (w->nb == w->cap_b) {
        size_t nc = w->cap_b ? w->cap_b * 2 : 256;
        span *p = realloc(w->b, nc * sizeof *p);
        if (!p)
            return mc_err_set(w->err, MC_ERR_NOMEM, "tokenizer: out of memory");
        w->b = p;
        w->cap_b = nc;
    }
    w->b[w->nb++] = (span){off, len};
    return MC_OK;
}

/* One segment of a piece: [s, e) and whether it is a match. */
typedef struct seg {
    size_t s, e;
    int match;
} seg;

static mc_status seg_push(work *w, size_t s, size_t e, int match)
{
    if (w->nseg == w->cap_seg) {
        size_t nc = w->cap_seg ? w->cap_seg * 2 : 256;
        seg *p = realloc(w->segs, nc * sizeof *p);
        if (!p)
            return mc_err_set(w->err, MC_ERR_NOMEM, "tokenizer: out of memory");
        w->segs = p;
        w->cap_seg = nc;
    }
    w->segs[w->nseg++] = (seg){s, e, match};
    return MC_OK;
}

/* Splits piece [off, off+len) at the matches of p->re and emits the
 * parts the behavior keeps, as Hugging Face's NormalizedString::split. */
static mc_status split_piece(work *w, const tok_pre *p, size_t off, size_t len)
{
    int behavior = p->behavior, invert = p->invert;
    size_t pos = 0, prev = 0;
    mc_status st;
    w->nseg = 0;
    /* the piece covered by (start, end, is_match), as Pattern::find_matches */
    while (pos < len) {
        size_t ms, me;
        int rc = pcre2_match(p->re, (PCRE2_SPTR)(w->buf + off), len, pos, PCRE2_NO_UTF_CHECK,
                             w->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its stack on the heap */
            rc = pcre2_match(p->re, (PCRE2_SPTR)(w->buf + off), len, pos,
                             PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, w->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return mc_err_set(w->err, MC_ERR_ARG,
                              "tokenizer: the pre-tokenizer regex failed on a piece of %zu "
                              "bytes: %s",
                              len, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        ms = ov[0];
        me = ov[1];
        if (me <= ms) { /* an empty match: step one character on */
            size_t k = mc_utf8_len((const unsigned char *)w->buf + off + ms, len - ms);
            pos = ms + (k ? k : 1);
            continue;
        }
        if (ms > prev && (st = seg_push(w, prev, ms, invert)) != MC_OK)
            return st;
        if ((st = seg_push(w, ms, me, !invert)) != MC_OK)
            return st;
        prev = pos = me;
    }
    if (prev < len && (st = seg_push(w, prev, len, invert)) != MC_OK)
        return st;

    /* combine by behavior, in place (the kept parts have match = 0) */
    size_t n = w->nseg, k = 0;
    seg *v = w->segs;
    int prev_match = 0;
    switch (behavior) {
    case SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++)
            if (!v[i].match)
                v[k++] = v[i];
        break;
    case SPLIT_ISOLATED: k = n; break;
    case SPLIT_PREV:
        for (size_t i = 0; i < n; i++) {
            if (v[i].match && !prev_match && k)
                v[k - 1].e = v[i].e;
            else
                v[k++] = v[i];
            prev_match = v[i].match;
        }
        break;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n; i++) {
            int m = v[i].match;
            if (k && m == prev_match)
                v[k - 1].e = v[i].e;
            else
                v[k++] = v[i];
            prev_match = m;
        }
        break;
    case SPLIT_NEXT: /* the mirror image of SPLIT_PREV, folded from the end */
        k = n;
        {
            size_t out = n;
            for (size_t i = n; i-- > 0;) {
                int m = v[i].match;
                if (m && !prev_match && out < n)
                    v[out].s = v[i].s;
                else
                    v[--out] = v[i];
                prev_match = m;
            }
            for (size_t i = out; i < n; i++)
                v[i - out] = v[i];
            k = n - out;
        }
        break;
    default: return mc_err_set(w->err, MC_ERR_INTERNAL, "tokenizer: bad split behavior");
    }
    for (size_t i = 0; i < k; i++)
        if ((st = emit(w, off + v[i].s, v[i].e - v[i].s)) != MC_OK)
            return st;
    return MC_OK;
}

static mc_status run_pre(work *w, const tok_pre *p)
{
    mc_status st = MC_OK;
    w->nb = 0;
    for (size_t i = 0; i < w->na && st == MC_OK; i++) {
        size_t off = w->a[i].off, len = w->a[i].len;
        switch (p->kind) {
        case PRE_SPLIT: st = split_piece(w, p, off, len); break;
        case PRE_BYTELEVEL:
            if (p->add_prefix_space && w->buf[off] != ' ') {
                size_t o1 = 0, o2 = 0;
                /* room first: the piece is copied from the buffer itself */
                if ((st = buf_add(w, NULL, len + 1, &o1)) != MC_OK)
                    break;
                w->blen = o1;
                if ((st = buf_add(w, " ", 1, &o1)) != MC_OK ||
                    (st = buf_add(w, w->buf + off, len, &o2)) != MC_OK)
                    break;
                off = o1;
                len++;
            }
            st = p->re ? split_piece(w, p, off, len) : emit(w, off, len);
            break;
        }
    }
    /* the new list becomes the current one */
    span *ts = w->a;
    size_t tc = w->cap_a;
    w->a = w->b;
    w->na = w->nb;
    w->cap_a = w->cap_b;
    w->b = ts;
    w->cap_b = tc;
    w->nb = 0;
    return st;
}

/* Applies the normalizers to [s, s+n); the result goes into the work
 * buffer as the one initial piece. */
static mc_status normalize(const mc_tokenizer *t, work *w, const char *s, size_t n)
{
    char *cur = NULL; /* malloc'd current text, NULL while it is still s */
    size_t cn = n;
    mc_status st = MC_OK;
    for (int i = 0; i < t->n_norm; i++) {
        const tok_norm *nm = &t->norm[i];
        const char *src = cur ? cur : s;
        char *next = NULL;
        size_t nn = 0;
        if (nm->kind == NORM_PREPEND) {
            if (!cn)
                continue;
            size_t al = strlen(nm->a);
            if (!(next = malloc(al + cn + 1)))
                goto nomem;
            memcpy(next, nm->a, al);
            memcpy(next + al, src, cn);
            nn = al + cn;
        } else if (nm->kind == NORM_REPLACE) {
            size_t al = strlen(nm->a), bl = strlen(nm->b);
            uint64_t cap = cn + 1; /* at most cn / al replacements grow the text */
            if (bl > al && (mc_mul_u64(cn / al, bl - al, &cap) || mc_add_u64(cap, cn + 1, &cap) ||
                            cap > SIZE_MAX))
                goto nomem;
            if (!(next = malloc((size_t)cap)))
                goto nomem;
            for (size_t j = 0; j < cn;) {
                if (j + al <= cn && !memcmp(src + j, nm->a, al)) {
                    memcpy(next + nn, nm->b, bl);
                    nn += bl;
                    j += al;
                } else {
                    next[nn++] = src[j++];
                }
            }
        } else {
#ifdef MC_HAVE_UTF8PROC
            int opt = UTF8PROC_STABLE |
                      (nm->kind == NORM_NFC || nm->kind == NORM_NFKC ? UTF8PROC_COMPOSE
                                                                     : UTF8PROC_DECOMPOSE);
            if (nm->kind == NORM_NFKC || nm->kind == NORM_NFKD)
                opt |= UTF8PROC_COMPAT;
            utf8proc_uint8_t *o = NULL;
            utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)src, (utf8proc_ssize_t)cn,
                                              &o, (utf8proc_option_t)opt);
            if (r < 0) {
                free(cur);
                return mc_err_set(w->err, MC_ERR_ARG, "tokenizer: normalization failed: %s",
                                  utf8proc_errmsg(r));
            }
            next = (char *)o;
            nn = (size_t)r;
#else
            goto nomem; /* refused at load */
#endif
        }
        free(cur);
        cur = next;
        cn = nn;
    }
    size_t off = 0;
    st = buf_add(w, cur ? cur : s, cn, &off);
    free(cur);
    w->na = 0;
    if (st == MC_OK && cn) {
        if (!w->cap_a) {
            if (!(w->a = malloc(64 * sizeof *w->a)))
                return mc_err_set(w->err, MC_ERR_NOMEM, "tokenizer: out of memory");
            w->cap_a = 64;
        }
        w->a[w->na++] = (span){off, cn};
    }
    return st;
nomem:
    free(cur);
    return mc_err_set(w->err, MC_ERR_NOMEM, "tokenizer: out of memory");
}

mc_status tok_encode_text(const mc_tokenizer *t, const char *s, size_t n, int32_t **ids,
                          size_t *n_ids, size_t *cap, mc_err *err)
{
    if (!n)
        return MC_OK;
    work w = {.err = err};
    mc_status st = MC_OK;
    if (!(w.md = pcre2_match_data_create(4, NULL))) {
        st = mc_err_set(err, MC_ERR_NOMEM, "tokenizer: out of memory");
        goto fail;
    }
    if ((st = normalize(t, &w, s, n)) != MC_OK)
        goto fail;
    for (int i = 0; i < t->n_pre; i++)
        if ((st = run_pre(&w, &t->pre[i])) != MC_OK)
            goto fail;
    for (size_t i = 0; i < w.na; i++)
        if ((st = tok_bpe_piece(t, w.buf + w.a[i].off, w.a[i].len, ids, n_ids, cap, err)) != MC_OK)
            goto fail;
fail:
    pcre2_match_data_free(w.md);
    free(w.buf);
    free(w.a);
    free(w.b);
    free(w.segs);
    return st;
}
