/* tok_encode.c - mc_tokenizer_encode and mc_tokenizer_decode.
 *
 * Encoding: the text must be valid UTF-8; added tokens are found first
 * (leftmost, then longest; lstrip / rstrip take the ASCII whitespace next to
 * the match with it, single_word requires no ASCII letter, digit or '_' on
 * either side); the text between them is normalized, pre-tokenized and
 * BPE-merged (tok_pretok.c, tok_bpe.c).
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int is_word(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

/* The added token that matches at text[i] (longest first), or NULL; *ms /
 * *me get the span it takes, whitespace included. */
static const tok_added *match_added(const mc_tokenizer *t, const char *s, size_t n, size_t i,
                                    size_t seg_start, size_t *ms, size_t *me)
{
    uint8_t b = (uint8_t)s[i];
    for (int k = 0; k < t->added_count[b]; k++) {
        const tok_added *a = &t->added[t->added_by_byte[t->added_first[b] + k]];
        if (a->len > n - i || memcmp(s + i, a->content, a->len))
            continue;
        size_t e = i + a->len;
        if (a->single_word && ((i > 0 && is_word(s[i - 1])) || (e < n && is_word(s[e]))))
            continue;
        size_t st = i;
        if (a->lstrip)
            while (st > seg_start && is_ws(s[st - 1]))
                st--;
        if (a->rstrip)
            while (e < n && is_ws(s[e]))
                e++;
        *ms = st;
        *me = e;
        return a;
    }
    return NULL;
}

mc_status mc_tokenizer_encode(const mc_tokenizer *t, const char *text, size_t len, int add_special,
                              int32_t **ids_out, size_t *n_out, mc_err *err)
{
    *ids_out = NULL;
    *n_out = 0;
    const unsigned char *u = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        size_t k = mc_utf8_len(u + i, len - i);
        if (!k)
            return mc_err_set(err, MC_ERR_ARG, "invalid UTF-8 at byte offset %zu (byte 0x%02x)", i,
                              u[i]);
        i += k;
    }
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    mc_status st = MC_OK;
    if (add_special)
        for (int k = 0; k < t->n_prefix && st == MC_OK; k++)
            st = tok_push_id(t->prefix[k], &ids, &n, &cap, err);
    size_t seg = 0;
    for (size_t i = 0; i < len && st == MC_OK;) {
        size_t ms, me;
        const tok_added *a =
            t->added_count[u[i]] ? match_added(t, text, len, i, seg, &ms, &me) : NULL;
        if (!a) {
            i += mc_utf8_len(u + i, len - i);
            continue;
        }
        if ((st = tok_encode_text(t, text + seg, ms - seg, &ids, &n, &cap, err)) != MC_OK ||
            (st = tok_push_id(a->id, &ids, &n, &cap, err)) != MC_OK)
            break;
        seg = i = me;
    }
    if (st == MC_OK && seg < len)
        st = tok_encode_text(t, text + seg, len - seg, &ids, &n, &cap, err);
    if (add_special)
        for (int k = 0; k < t->n_suffix && st == MC_OK; k++)
            st = tok_push_id(t->suffix[k], &ids, &n, &cap, err);
    if (st != MC_OK) {
        free(ids);
        return st;
    }
    *ids_out = ids;
    *n_out = n;
    return MC_OK;
}

/* Bytes an invalid sequence at s takes before its U+FFFD (the "maximal
 * subpart" rule Rust's from_utf8_lossy follows): the lead byte and the
 * continuation bytes that could still have made a valid character. */
static size_t invalid_len(const unsigned char *s, size_t avail)
{
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 1;
    size_t k = 1;
    if (k < avail && s[k] >= lo && s[k] <= hi) {
        k++;
        while (k < need && k < avail && (s[k] & 0xC0) == 0x80)
            k++;
    }
    return k;
}

mc_status mc_tokenizer_decode(const mc_tokenizer *t, const int32_t *ids, size_t n_ids, char **text,
                              size_t *len, mc_err *err)
{
    *text = NULL;
    *len = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids || t->tok_off[ids[i]] == UINT64_MAX)
            return mc_err_set(err, MC_ERR_ARG,
                              "unknown token id %lld (at position %zu; the "
                              "vocabulary has ids 0..%d)",
                              (long long)ids[i], i, t->n_ids - 1);
        total += t->tok_len[ids[i]];
    }
    /* every invalid byte may grow into the 3 bytes of U+FFFD */
    if (total > (SIZE_MAX - 1) / 3)
        return mc_err_set(err, MC_ERR_OVERFLOW, "decoded text too large");
    char *raw = malloc((size_t)total + 1), *out = malloc((size_t)total * 3 + 1);
    if (!raw || !out) {
        free(raw);
        free(out);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory decoding %zu ids", n_ids);
    }
    size_t r = 0;
    for (size_t i = 0; i < n_ids; i++) {
        memcpy(raw + r, t->pool + t->tok_off[ids[i]], t->tok_len[ids[i]]);
        r += t->tok_len[ids[i]];
    }
    const unsigned char *u = (const unsigned char *)raw;
    size_t o = 0;
    for (size_t i = 0; i < r;) {
        size_t k = mc_utf8_len(u + i, r - i);
        if (k) {
            memcpy(out + o, raw + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += invalid_len(u + i, r - i);
        }
    }
    out[o] = 0;
    free(raw);
    *text = out;
    *len = o;
    return MC_OK;
}
