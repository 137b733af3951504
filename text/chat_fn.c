/* chat_fn.c - the chat template interpreter's library: filters, tests,
 * string and dict methods, Python truthiness and equality, and values
 * printed as Python / Jinja print them (str() and, inside lists and dicts,
 * repr()). Case changes (upper, lower, title, capitalize) are ASCII-only.
 */
#include "chat_internal.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *chat_find(const char *hay, size_t hn, const char *needle, size_t nn) {
    if (!nn) return hay;
    for (size_t i = 0; i + nn <= hn; i++)
        if (hay[i] == needle[0] && !memcmp(hay + i, needle, nn)) return hay + i;
    return NULL;
}

size_t chat_u8_count(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

size_t chat_u8_offset(const char *s, size_t n, size_t i) {
    size_t c = 0;
    for (size_t k = 0; k < n; k++)
        if (((unsigned char)s[k] & 0xC0) != 0x80 && c++ == i) return k;
    return n;
}

int chat_emit(chat_ctx *x, const char *s, size_t n) {
    if (x->len + n > MC_CHAT_MAX_OUTPUT) {
        chat_error(x, NULL, MC_ERR_ARG, "rendered text longer than %u bytes", MC_CHAT_MAX_OUTPUT);
        return -1;
    }
    if (x->len + n + 1 > x->cap) {
        size_t nc = x->cap ? x->cap : 4096;
        while (nc < x->len + n + 1)
            nc *= 2;
        char *o = realloc(x->out, nc);
        if (!o) {
            chat_error(x, NULL, MC_ERR_NOMEM, "out of memory");
            return -1;
        }
        x->out = o;
        x->cap = nc;
    }
    memcpy(x->out + x->len, s, n);
    x->len += n;
    return 0;
}

static int emit_repr_str(chat_ctx *x, const char *s, size_t n) {
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    if (chat_emit(x, &q, 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        const char *e = NULL;
        if (ch == '\\')
            e = "\\\\";
        else if (ch == (unsigned char)q)
            e = q == '\'' ? "\\'" : "\\\"";
        else if (ch == '\n')
            e = "\\n";
        else if (ch == '\r')
            e = "\\r";
        else if (ch == '\t')
            e = "\\t";
        else if (ch < 0x20 || ch == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", ch);
            e = esc;
        }
        if (e ? chat_emit(x, e, strlen(e)) : chat_emit(x, s + i, 1)) return -1;
    }
    return chat_emit(x, &q, 1);
}

static void fmt_real(double d, char *buf, size_t cap) {
    if (isnan(d)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    /* Python's repr: the shortest digits that read back, in positional
     * notation for exponents -4..15 and scientific otherwise */
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d) break;
    }
    const char *e = strchr(buf, 'e');
    int exp = e ? atoi(e + 1) : 0;
    if (exp >= -4 && exp < 16) {
        int decimals = prec - 1 - exp;
        snprintf(buf, cap, "%.*f", decimals > 0 ? decimals : 0, d);
        if (decimals <= 0) strncat(buf, ".0", cap - strlen(buf) - 1);
    }
}

int chat_emit_value(chat_ctx *x, json_t *v, int repr) {
    char buf[64];
    if (v == x->undef) /* nothing; inside a list or dict, Jinja2's repr */
        return repr ? chat_emit(x, "Undefined", 9) : 0;
    switch (json_typeof(v)) {
    case JSON_STRING:
        return repr ? emit_repr_str(x, json_string_value(v), json_string_length(v))
                    : chat_emit(x, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        return chat_emit(x, buf, strlen(buf));
    case JSON_REAL:
        fmt_real(json_real_value(v), buf, sizeof buf);
        return chat_emit(x, buf, strlen(buf));
    case JSON_TRUE:
        return chat_emit(x, "True", 4);
    case JSON_FALSE:
        return chat_emit(x, "False", 5);
    case JSON_NULL:
        return chat_emit(x, "None", 4);
    case JSON_ARRAY:
        if (chat_emit(x, "[", 1)) return -1;
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((i && chat_emit(x, ", ", 2)) || chat_emit_value(x, json_array_get(v, i), 1))
                return -1;
        return chat_emit(x, "]", 1);
    case JSON_OBJECT: {
        const char *k;
        json_t *val;
        int first = 1;
        if (chat_emit(x, "{", 1)) return -1;
        json_object_foreach(v, k, val) {
            if ((!first && chat_emit(x, ", ", 2)) || emit_repr_str(x, k, strlen(k)) ||
                chat_emit(x, ": ", 2) || chat_emit_value(x, val, 1))
                return -1;
            first = 0;
        }
        return chat_emit(x, "}", 1);
    }
    }
    return 0;
}

json_t *chat_str(chat_ctx *x, json_t *v) {
    if (json_is_string(v)) return json_incref(v);
    chat_ctx y = {.c = x->c, .undef = x->undef, .err = x->err};
    if (chat_emit_value(&y, v, 0)) {
        free(y.out);
        return NULL;
    }
    json_t *s = json_stringn_nocheck(y.out ? y.out : "", y.len);
    free(y.out);
    if (!s) chat_error(x, NULL, MC_ERR_NOMEM, "out of memory");
    return s;
}

int chat_truthy(chat_ctx *x, json_t *v) {
    if (v == x->undef) return 0;
    switch (json_typeof(v)) {
    case JSON_STRING:
        return json_string_length(v) > 0;
    case JSON_INTEGER:
        return json_integer_value(v) != 0;
    case JSON_REAL:
        return json_real_value(v) != 0;
    case JSON_TRUE:
        return 1;
    case JSON_ARRAY:
        return json_array_size(v) > 0;
    case JSON_OBJECT:
        return json_object_size(v) > 0;
    default:
        return 0;
    }
}

int chat_equal(json_t *a, json_t *b) {
    if (a == b) return 1;
    if (json_is_number(a) && json_is_number(b)) return json_number_value(a) == json_number_value(b);
    if ((json_is_number(a) && json_is_boolean(b)) || (json_is_boolean(a) && json_is_number(b)))
        return (json_is_number(a) ? json_number_value(a) : json_is_true(a)) ==
               (json_is_number(b) ? json_number_value(b) : json_is_true(b));
    return json_equal(a, b);
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* strip / lstrip / rstrip: which = 1 left, 2 right, 3 both; chars NULL:
 * whitespace. */
static json_t *strip(json_t *s, int which, json_t *chars) {
    const char *p = json_string_value(s),
               *cs = chars && json_is_string(chars) ? json_string_value(chars) : NULL;
    size_t a = 0, b = json_string_length(s);
    while ((which & 1) && a < b && (cs ? (p[a] && strchr(cs, p[a]) != NULL) : is_space(p[a])))
        a++;
    while ((which & 2) && b > a &&
           (cs ? (p[b - 1] && strchr(cs, p[b - 1]) != NULL) : is_space(p[b - 1])))
        b--;
    return json_stringn(p + a, b - a);
}

static json_t *recase(json_t *s, int mode) /* 0 lower, 1 upper, 2 title, 3 capitalize */
{
    size_t n = json_string_length(s);
    char *b = malloc(n + 1);
    if (!b) return NULL;
    memcpy(b, json_string_value(s), n);
    int start = 1;
    for (size_t i = 0; i < n; i++) {
        char c = b[i];
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        int up = mode == 1 || (mode == 2 && start) || (mode == 3 && i == 0);
        if (alpha) b[i] = up ? (char)(c & ~0x20) : (char)(c | 0x20);
        start = !alpha;
    }
    json_t *r = json_stringn_nocheck(b, n);
    free(b);
    return r;
}

static json_t *split(chat_ctx *x, const cnode *n, json_t *s, json_t *sep, json_t *maxs) {
    const char *p = json_string_value(s);
    size_t len = json_string_length(s);
    long long max = maxs && json_is_integer(maxs) ? json_integer_value(maxs) : -1;
    json_t *l = json_array();
    if (!l) return chat_error(x, n, MC_ERR_NOMEM, "out of memory");
    if (!sep || json_is_null(sep)) {
        size_t i = 0;
        while (i < len) {
            while (i < len && is_space(p[i]))
                i++;
            if (i >= len) break;
            size_t e = i;
            if (max >= 0 && (long long)json_array_size(l) >= max)
                e = len;
            else
                while (e < len && !is_space(p[e]))
                    e++;
            size_t ee = e;
            while (max >= 0 && ee > i && e == len && is_space(p[ee - 1]))
                ee--;
            json_array_append_new(l, json_stringn(p + i, ee - i));
            i = e;
        }
        return l;
    }
    if (!json_is_string(sep) || !json_string_length(sep)) {
        json_decref(l);
        return chat_error(x, n, MC_ERR_ARG, "split() needs a non-empty string separator");
    }
    const char *sp = json_string_value(sep);
    size_t sl = json_string_length(sep), i = 0;
    for (;;) {
        const char *hit = (max < 0 || (long long)json_array_size(l) < max)
                              ? chat_find(p + i, len - i, sp, sl)
                              : NULL;
        size_t e = hit ? (size_t)(hit - p) : len;
        json_array_append_new(l, json_stringn(p + i, e - i));
        if (!hit) break;
        i = e + sl;
    }
    return l;
}

static json_t *replace(json_t *s, json_t *a, json_t *b, long long count) {
    const char *p = json_string_value(s), *ap = json_string_value(a), *bp = json_string_value(b);
    size_t n = json_string_length(s), an = json_string_length(a), bn = json_string_length(b);
    size_t cap = n + 1, len = 0;
    char *o = malloc(cap);
    if (!o || !an) {
        free(o);
        return an ? NULL : json_incref(s);
    }
    for (size_t i = 0; i < n;) {
        const char *hit = count != 0 ? chat_find(p + i, n - i, ap, an) : NULL;
        size_t e = hit ? (size_t)(hit - p) : n;
        size_t need = len + (e - i) + (hit ? bn : 0) + 1;
        if (need > cap) {
            if (need > MC_CHAT_MAX_OUTPUT) {
                free(o);
                return NULL;
            }
            cap = need * 2;
            char *q = realloc(o, cap);
            if (!q) {
                free(o);
                return NULL;
            }
            o = q;
        }
        memcpy(o + len, p + i, e - i);
        len += e - i;
        if (!hit) break;
        memcpy(o + len, bp, bn);
        len += bn;
        i = e + an;
        if (count > 0) count--;
    }
    json_t *r = json_stringn_nocheck(o, len);
    free(o);
    return r;
}

json_t *chat_method(chat_ctx *x, const cnode *n, json_t *obj, const char *m, json_t **args,
                    int na) {
    if (json_is_string(obj)) {
        json_t *a0 = na > 0 ? args[0] : NULL;
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip"))
            return strip(obj, m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3, a0);
        if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "title") ||
            !strcmp(m, "capitalize"))
            return recase(obj, m[0] == 'l' ? 0 : m[0] == 'u' ? 1 : m[0] == 't' ? 2 : 3);
        if (!strcmp(m, "split")) return split(x, n, obj, a0, na > 1 ? args[1] : NULL);
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            json_t *list = json_is_array(a0) ? a0 : NULL;
            size_t cnt = list ? json_array_size(list) : 1;
            for (size_t i = 0; i < cnt; i++) {
                json_t *pre = list ? json_array_get(list, i) : a0;
                if (!json_is_string(pre))
                    return chat_error(x, n, MC_ERR_ARG, "%s() needs a string", m);
                size_t pl = json_string_length(pre), sl = json_string_length(obj);
                if (pl <= sl && !memcmp(json_string_value(obj) + (m[0] == 's' ? 0 : sl - pl),
                                        json_string_value(pre), pl))
                    return json_true();
            }
            return json_false();
        }
        if (!strcmp(m, "replace") && na >= 2 && json_is_string(args[0]) &&
            json_is_string(args[1])) {
            json_t *r =
                replace(obj, args[0], args[1],
                        na > 2 && json_is_integer(args[2]) ? json_integer_value(args[2]) : -1);
            return r ? r : chat_error(x, n, MC_ERR_NOMEM, "replace(): out of memory or too long");
        }
        if ((!strcmp(m, "find") || !strcmp(m, "count")) && na == 1 && json_is_string(a0)) {
            const char *p = json_string_value(obj), *q = json_string_value(a0);
            size_t pn = json_string_length(obj), qn = json_string_length(a0);
            if (m[0] == 'f') {
                const char *h = chat_find(p, pn, q, qn);
                return json_integer(h ? (json_int_t)chat_u8_count(p, (size_t)(h - p)) : -1);
            }
            json_int_t c = 0;
            for (const char *h; qn && (h = chat_find(p, pn, q, qn));
                 pn -= (size_t)(h - p) + qn, p = h + qn)
                c++;
            return json_integer(c);
        }
    } else if (json_is_object(obj)) {
        if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values")) {
            json_t *l = json_array();
            const char *k;
            json_t *v;
            json_object_foreach(obj, k, v) {
                if (m[0] == 'k')
                    json_array_append_new(l, json_string(k));
                else if (m[0] == 'v')
                    json_array_append(l, v);
                else
                    json_array_append_new(l, json_pack("[sO]", k, v));
            }
            return l;
        }
        if (!strcmp(m, "get") && na >= 1) {
            json_t *v =
                json_is_string(args[0]) ? json_object_get(obj, json_string_value(args[0])) : NULL;
            return json_incref(v ? v : na > 1 ? args[1] : json_null());
        }
    }
    return chat_error(x, n, MC_ERR_UNSUPPORTED, "unknown method '%s' of a %s value", m,
                      obj == x->undef       ? "undefined"
                      : json_is_string(obj) ? "string"
                      : json_is_object(obj) ? "dict"
                      : json_is_array(obj)  ? "list"
                                            : "scalar");
}

static json_t *kwarg(json_t **args, char **kw, int na, const char *name, int pos) {
    for (int i = 0; i < na; i++)
        if (kw[i] && !strcmp(kw[i], name)) return args[i];
    int k = 0;
    for (int i = 0; i < na; i++)
        if (!kw[i] && k++ == pos) return args[i];
    return NULL;
}

/* selectattr / rejectattr: items whose attribute passes the test. */
static json_t *select_attr(chat_ctx *x, const cnode *n, json_t *v, json_t **args, int na,
                           int reject) {
    if (!json_is_array(v) || na < 1 || !json_is_string(args[0]))
        return chat_error(x, n, MC_ERR_ARG, "%s needs a list and an attribute name", n->name);
    json_t *out = json_array();
    cnode tn = *n;
    tn.name = na > 1 && json_is_string(args[1]) ? (char *)json_string_value(args[1]) : "true";
    if (na == 1) tn.name = NULL;
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *it = json_array_get(v, i);
        json_t *a = json_is_object(it) ? json_object_get(it, json_string_value(args[0])) : NULL;
        int t;
        if (!tn.name)
            t = a && chat_truthy(x, a);
        else if ((t = chat_test(x, &tn, a ? a : x->undef, args + 2, na - 2)) < 0) {
            json_decref(out);
            return NULL;
        }
        if (t != reject) json_array_append(out, it);
    }
    return out;
}

json_t *chat_filter(chat_ctx *x, const cnode *n, json_t *v, json_t **args, char **kw, int na) {
    const char *f = n->name;
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        json_t *def = kwarg(args, kw, na, "default_value", 0),
               *b = kwarg(args, kw, na, "boolean", 1);
        int use = v == x->undef || (b && chat_truthy(x, b) && !chat_truthy(x, v));
        if (use && !def) return json_string("");
        return json_incref(use ? def : v);
    }
    if (!strcmp(f, "safe")) return json_incref(v);
    if (!strcmp(f, "string")) return chat_str(x, v);
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        if (json_is_string(v))
            return json_integer(
                (json_int_t)chat_u8_count(json_string_value(v), json_string_length(v)));
        if (json_is_array(v)) return json_integer((json_int_t)json_array_size(v));
        if (json_is_object(v)) return json_integer((json_int_t)json_object_size(v));
        if (v == x->undef) return json_integer(0);
        return chat_error(x, n, MC_ERR_ARG, "length of a value that has none");
    }
    if (!strcmp(f, "tojson")) {
        json_t *ind = kwarg(args, kw, na, "indent", 0);
        size_t flags = JSON_ENCODE_ANY;
        if (ind && json_is_integer(ind) && json_integer_value(ind) > 0)
            flags |= JSON_INDENT(json_integer_value(ind) > 31 ? 31 : json_integer_value(ind));
        if (v == x->undef) return chat_error(x, n, MC_ERR_ARG, "tojson of an undefined value");
        char *s = json_dumps(v, flags);
        json_t *r = s ? json_string(s) : NULL;
        free(s);
        return r ? r : chat_error(x, n, MC_ERR_NOMEM, "tojson: out of memory");
    }
    if (!strcmp(f, "join")) {
        json_t *sep = kwarg(args, kw, na, "d", 0), *attr = kwarg(args, kw, na, "attribute", 1);
        if (!json_is_array(v)) return chat_error(x, n, MC_ERR_ARG, "join needs a list");
        chat_ctx y = {.c = x->c, .undef = x->undef, .err = x->err};
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *it = json_array_get(v, i);
            if (attr && json_is_string(attr))
                it = json_is_object(it) ? json_object_get(it, json_string_value(attr)) : NULL;
            if ((i && sep && json_is_string(sep) &&
                 chat_emit(&y, json_string_value(sep), json_string_length(sep))) ||
                (it && chat_emit_value(&y, it, 0))) {
                free(y.out);
                return NULL;
            }
        }
        json_t *r = json_stringn_nocheck(y.out ? y.out : "", y.len);
        free(y.out);
        return r;
    }
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        if (json_is_array(v)) {
            size_t k = json_array_size(v);
            return json_incref(k ? json_array_get(v, f[0] == 'f' ? 0 : k - 1) : x->undef);
        }
        if (json_is_string(v)) {
            json_t *r = NULL;
            const char *s = json_string_value(v);
            size_t sn = json_string_length(v), cnt = chat_u8_count(s, sn);
            if (cnt) {
                size_t o = chat_u8_offset(s, sn, f[0] == 'f' ? 0 : cnt - 1);
                r = json_stringn(s + o, chat_u8_offset(s, sn, f[0] == 'f' ? 1 : cnt) - o);
            }
            return r ? r : json_incref(x->undef);
        }
        return chat_error(x, n, MC_ERR_ARG, "%s needs a list or a string", f);
    }
    if (!strcmp(f, "list")) {
        if (json_is_array(v)) return json_incref(v);
        return chat_error(x, n, MC_ERR_UNSUPPORTED, "list of a non-list value");
    }
    if (!strcmp(f, "reverse")) {
        if (!json_is_array(v))
            return chat_error(x, n, MC_ERR_UNSUPPORTED, "reverse of a non-list value");
        json_t *r = json_array();
        for (size_t i = json_array_size(v); i-- > 0;)
            json_array_append(r, json_array_get(v, i));
        return r;
    }
    if (!strcmp(f, "items")) {
        if (!json_is_object(v)) return chat_error(x, n, MC_ERR_ARG, "items needs a dict");
        return chat_method(x, n, v, "items", NULL, 0);
    }
    if (!strcmp(f, "selectattr") || !strcmp(f, "rejectattr"))
        return select_attr(x, n, v, args, na, f[0] == 'r');
    if (!strcmp(f, "map")) {
        json_t *attr = kwarg(args, kw, na, "attribute", -1);
        if (!json_is_array(v) || !attr || !json_is_string(attr))
            return chat_error(x, n, MC_ERR_UNSUPPORTED,
                              "only map(attribute='name') over a list is supported");
        json_t *r = json_array();
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *it = json_array_get(v, i);
            json_t *a = json_is_object(it) ? json_object_get(it, json_string_value(attr)) : NULL;
            json_array_append(r, a ? a : x->undef);
        }
        return r;
    }
    if (!strcmp(f, "int") || !strcmp(f, "float")) {
        double d = 0;
        if (json_is_number(v))
            d = json_number_value(v);
        else if (json_is_string(v))
            d = strtod(json_string_value(v), NULL);
        return f[0] == 'i' ? json_integer((json_int_t)d) : json_real(d);
    }
    if (!strcmp(f, "abs") && json_is_number(v))
        return json_is_integer(v) ? json_integer(llabs(json_integer_value(v)))
                                  : json_real(fabs(json_real_value(v)));
    if (json_is_string(v)) {
        if (!strcmp(f, "trim")) return strip(v, 3, kwarg(args, kw, na, "chars", 0));
        if (!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "title") ||
            !strcmp(f, "capitalize"))
            return chat_method(x, n, v, f, NULL, 0);
        if (!strcmp(f, "replace") && na >= 2) return chat_method(x, n, v, "replace", args, na);
    }
    static const char *const known[] = {"trim",       "upper",   "lower", "title",
                                        "capitalize", "replace", "abs"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (!strcmp(f, known[i]))
            return chat_error(x, n, MC_ERR_ARG, "filter '%s' cannot take this value", f);
    return chat_error(x, n, MC_ERR_UNSUPPORTED, "unknown filter '%s'", f);
}

int chat_test(chat_ctx *x, const cnode *n, json_t *v, json_t **args, int na) {
    const char *t = n->name;
    json_t *a0 = na > 0 ? args[0] : NULL;
    double d;
    if (!strcmp(t, "defined")) return v != x->undef;
    if (!strcmp(t, "undefined")) return v == x->undef;
    if (!strcmp(t, "none")) return v != x->undef && json_is_null(v);
    if (!strcmp(t, "string")) return v != x->undef && json_is_string(v);
    if (!strcmp(t, "number")) return v != x->undef && json_is_number(v);
    if (!strcmp(t, "integer")) return v != x->undef && json_is_integer(v);
    if (!strcmp(t, "float")) return v != x->undef && json_is_real(v);
    if (!strcmp(t, "boolean")) return v != x->undef && json_is_boolean(v);
    if (!strcmp(t, "true")) return v != x->undef && json_is_true(v);
    if (!strcmp(t, "false")) return v != x->undef && json_is_false(v);
    if (!strcmp(t, "mapping")) return v != x->undef && json_is_object(v);
    if (!strcmp(t, "sequence") || !strcmp(t, "iterable"))
        return v != x->undef && (json_is_array(v) || json_is_string(v) || json_is_object(v));
    if (!strcmp(t, "callable")) return 0;
    if (!strcmp(t, "even") || !strcmp(t, "odd")) {
        if (!json_is_integer(v)) {
            chat_error(x, n, MC_ERR_ARG, "'%s' needs an integer", t);
            return -1;
        }
        return (json_integer_value(v) % 2 != 0) == (t[0] == 'o');
    }
    if (!strcmp(t, "divisibleby")) {
        if (!json_is_integer(v) || !a0 || !json_is_integer(a0) || !json_integer_value(a0)) {
            chat_error(x, n, MC_ERR_ARG, "'divisibleby' needs integers");
            return -1;
        }
        return json_integer_value(v) % json_integer_value(a0) == 0;
    }
    if (a0 &&
        (!strcmp(t, "equalto") || !strcmp(t, "eq") || !strcmp(t, "==") || !strcmp(t, "sameas")))
        return chat_equal(v, a0);
    if (a0 && (!strcmp(t, "ne") || !strcmp(t, "!="))) return !chat_equal(v, a0);
    if (a0 && (!strcmp(t, "lt") || !strcmp(t, "gt") || !strcmp(t, "le") || !strcmp(t, "ge"))) {
        double e;
        if (!json_is_number(v) || !json_is_number(a0)) {
            chat_error(x, n, MC_ERR_ARG, "'%s' needs numbers", t);
            return -1;
        }
        d = json_number_value(v);
        e = json_number_value(a0);
        return t[0] == 'l' ? (t[1] == 't' ? d < e : d <= e) : (t[1] == 't' ? d > e : d >= e);
    }
    if (a0 && !strcmp(t, "in")) {
        if (json_is_array(a0)) {
            for (size_t i = 0; i < json_array_size(a0); i++)
                if (chat_equal(v, json_array_get(a0, i))) return 1;
            return 0;
        }
        if (json_is_object(a0))
            return json_is_string(v) && json_object_get(a0, json_string_value(v)) != NULL;
        if (json_is_string(a0) && json_is_string(v))
            return chat_find(json_string_value(a0), json_string_length(a0), json_string_value(v),
                             json_string_length(v)) != NULL;
    }
    chat_error(x, n, MC_ERR_UNSUPPORTED, "unknown test '%s'", t);
    return -1;
}
