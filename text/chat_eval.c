/* chat_eval.c - evaluates a parsed chat template (chat_internal.h) over
 * jansson values with Jinja2's semantics: Python truthiness, per-iteration
 * loop scopes (a set inside a loop does not leave it; namespace() objects
 * carry state out), `loop` variables, and / or returning an operand.
 *
 * Every eval_* returns a new reference, or NULL with x->err set. Values the
 * caller passed in (messages, vars) are only read: the only objects ever
 * changed are the namespaces a template makes.
 */
#include "chat_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

json_t *chat_error(chat_ctx *x, const cnode *n, mc_status s, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n)
        mc_err_set(x->err, s, "%s: line %d column %d: %s", x->c->name, n->line, n->col, msg);
    else
        mc_err_set(x->err, s, "%s: %s", x->c->name, msg);
    return NULL;
}

static json_t *eval(chat_ctx *x, const cnode *n);
static int exec(chat_ctx *x, const cnode *body);

static json_t *lookup(chat_ctx *x, const char *name) {
    for (int i = x->n_scopes - 1; i >= 0; i--) {
        json_t *v = json_object_get(x->scopes[i], name);
        if (v) return v;
    }
    return x->undef;
}

static int is_namespace(chat_ctx *x, json_t *v) {
    for (size_t i = 0; i < json_array_size(x->namespaces); i++)
        if (json_array_get(x->namespaces, i) == v) return 1;
    return 0;
}

/* Called before a new container takes `v` as an item: namespaces live only
 * in variables (so no value can ever contain itself), and containers nest at
 * most MC_CHAT_MAX_NEST deep (counted per render: every container holding a
 * container adds one). 0, or -1 with the error set. */
static int hold(chat_ctx *x, const cnode *n, json_t *v) {
    if (json_is_object(v) && is_namespace(x, v)) {
        chat_error(x, n, MC_ERR_UNSUPPORTED, "a namespace() cannot be put inside a value");
        return -1;
    }
    if ((json_is_object(v) || json_is_array(v)) && ++x->nests > MC_CHAT_MAX_NEST) {
        chat_error(x, n, MC_ERR_ARG, "more than %d nested containers built", MC_CHAT_MAX_NEST);
        return -1;
    }
    return 0;
}

static int num(json_t *v, double *d) {
    if (json_is_integer(v))
        *d = (double)json_integer_value(v);
    else if (json_is_real(v))
        *d = json_real_value(v);
    else if (json_is_boolean(v))
        *d = json_is_true(v);
    else
        return 0;
    return 1;
}
static int is_int(json_t *v) {
    return json_is_integer(v) || json_is_boolean(v);
}
static json_int_t ival(json_t *v) {
    return json_is_integer(v) ? json_integer_value(v) : json_is_true(v);
}

static const char *type_name(chat_ctx *x, json_t *v) {
    if (v == x->undef) return "undefined";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "dict";
    case JSON_ARRAY:
        return "list";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "int";
    case JSON_REAL:
        return "float";
    case JSON_TRUE:
    case JSON_FALSE:
        return "bool";
    default:
        return "none";
    }
}

/* Python slice of a list or string; step 0 is an error. */
static json_t *slice(chat_ctx *x, const cnode *n, json_t *v, json_t *a, json_t *b, json_t *s) {
    int str = json_is_string(v);
    if (!str && !json_is_array(v))
        return chat_error(x, n, MC_ERR_ARG, "cannot slice a %s", type_name(x, v));
    for (json_t *p = a; p; p = p == a ? b : p == b ? s : NULL)
        if (p != x->undef && !json_is_null(p) && !is_int(p))
            return chat_error(x, n, MC_ERR_ARG, "slice indices must be integers");
    long long len = str ? (long long)chat_u8_count(json_string_value(v), json_string_length(v))
                        : (long long)json_array_size(v);
    long long step = s && is_int(s) ? ival(s) : 1;
    if (step == 0) return chat_error(x, n, MC_ERR_ARG, "slice step cannot be zero");
    long long lo, hi;
    long long dlo = step > 0 ? 0 : len - 1, dhi = step > 0 ? len : -1;
    lo = a && is_int(a) ? ival(a) : dlo;
    hi = b && is_int(b) ? ival(b) : dhi;
    if (a && is_int(a)) {
        if (lo < 0) lo += len;
        if (lo < 0) lo = step > 0 ? 0 : -1;
        if (lo >= len) lo = step > 0 ? len : len - 1;
    }
    if (b && is_int(b)) {
        if (hi < 0) hi += len;
        if (hi < 0) hi = step > 0 ? 0 : -1;
        if (hi >= len) hi = step > 0 ? len : len - 1;
    }
    json_t *out = str ? NULL : json_array();
    char *buf = NULL;
    size_t blen = 0;
    const char *sv = str ? json_string_value(v) : NULL;
    size_t sn = str ? json_string_length(v) : 0;
    if (str && !(buf = malloc(sn + 1))) return chat_error(x, n, MC_ERR_NOMEM, "out of memory");
    if (!str && !out) return chat_error(x, n, MC_ERR_NOMEM, "out of memory");
    for (long long i = lo; step > 0 ? i < hi : i > hi; i += step) {
        if (str) {
            size_t o = chat_u8_offset(sv, sn, (size_t)i), e = chat_u8_offset(sv, sn, (size_t)i + 1);
            memcpy(buf + blen, sv + o, e - o);
            blen += e - o;
        } else {
            json_array_append(out, json_array_get(v, (size_t)i));
        }
    }
    if (str) {
        out = json_stringn(buf, blen);
        free(buf);
    }
    return out;
}

static json_t *item(chat_ctx *x, const cnode *n, json_t *v, json_t *k) {
    if (v == x->undef)
        return chat_error(x, n, MC_ERR_ARG, "an undefined value has no item or attribute");
    if (json_is_object(v)) {
        if (!json_is_string(k)) return json_incref(x->undef);
        json_t *r = json_object_get(v, json_string_value(k));
        return json_incref(r ? r : x->undef);
    }
    if ((json_is_array(v) || json_is_string(v)) && is_int(k)) {
        long long len = json_is_array(v)
                            ? (long long)json_array_size(v)
                            : (long long)chat_u8_count(json_string_value(v), json_string_length(v));
        long long i = ival(k);
        if (i < 0) i += len;
        if (i < 0 || i >= len) return json_incref(x->undef);
        if (json_is_array(v)) return json_incref(json_array_get(v, (size_t)i));
        const char *s = json_string_value(v);
        size_t sn = json_string_length(v), o = chat_u8_offset(s, sn, (size_t)i);
        return json_stringn(s + o, chat_u8_offset(s, sn, (size_t)i + 1) - o);
    }
    return json_incref(x->undef);
}

static json_t *arith(chat_ctx *x, const cnode *n, int op, json_t *a, json_t *b) {
    if (op == OP_ADD && json_is_string(a) && json_is_string(b)) {
        size_t la = json_string_length(a), lb = json_string_length(b);
        if (la + lb > MC_CHAT_MAX_OUTPUT)
            return chat_error(x, n, MC_ERR_ARG, "string longer than %u bytes", MC_CHAT_MAX_OUTPUT);
        char *buf = malloc(la + lb + 1);
        if (!buf) return chat_error(x, n, MC_ERR_NOMEM, "out of memory");
        memcpy(buf, json_string_value(a), la);
        memcpy(buf + la, json_string_value(b), lb);
        json_t *r = json_stringn_nocheck(buf, la + lb);
        free(buf);
        return r;
    }
    if (op == OP_ADD && json_is_array(a) && json_is_array(b)) {
        if (json_array_size(a) + json_array_size(b) > MC_CHAT_MAX_ITERS)
            return chat_error(x, n, MC_ERR_ARG, "list longer than %d items", MC_CHAT_MAX_ITERS);
        json_t *r = json_copy(a);
        if (r) json_array_extend(r, b);
        return r;
    }
    double da, db;
    if (!num(a, &da) || !num(b, &db))
        return chat_error(x, n, MC_ERR_ARG, "unsupported operand types for the operator: %s and %s",
                          type_name(x, a), type_name(x, b));
    if (is_int(a) && is_int(b) && op != OP_DIV) {
        json_int_t ia = ival(a), ib = ival(b), r = 0;
        int ovf = 0;
        switch (op) {
        case OP_ADD:
            ovf = __builtin_add_overflow(ia, ib, &r);
            break;
        case OP_SUB:
            ovf = __builtin_sub_overflow(ia, ib, &r);
            break;
        case OP_MUL:
            ovf = __builtin_mul_overflow(ia, ib, &r);
            break;
        case OP_FLOORDIV:
        case OP_MOD:
            if (ib == 0) return chat_error(x, n, MC_ERR_ARG, "integer division or modulo by zero");
            if (ib == -1 && ia == INT64_MIN)
                return chat_error(x, n, MC_ERR_ARG, "integer overflow");
            r = op == OP_FLOORDIV ? ia / ib : ia % ib;
            if (op == OP_FLOORDIV && (ia % ib != 0) && ((ia < 0) != (ib < 0))) r--;
            if (op == OP_MOD && r != 0 && ((r < 0) != (ib < 0))) r += ib;
            break;
        }
        if (ovf) return chat_error(x, n, MC_ERR_ARG, "integer overflow");
        return json_integer(r);
    }
    double r = 0;
    switch (op) {
    case OP_ADD:
        r = da + db;
        break;
    case OP_SUB:
        r = da - db;
        break;
    case OP_MUL:
        r = da * db;
        break;
    case OP_DIV:
    case OP_FLOORDIV:
    case OP_MOD:
        if (db == 0) return chat_error(x, n, MC_ERR_ARG, "division by zero");
        r = op == OP_DIV ? da / db : op == OP_FLOORDIV ? floor(da / db) : da - db * floor(da / db);
        break;
    }
    return json_real(r);
}

static int contains(chat_ctx *x, const cnode *n, json_t *needle, json_t *hay) {
    if (json_is_string(hay)) {
        if (!json_is_string(needle)) {
            chat_error(x, n, MC_ERR_ARG, "'in <string>' needs a string on the left, not %s",
                       type_name(x, needle));
            return -1;
        }
        return chat_find(json_string_value(hay), json_string_length(hay), json_string_value(needle),
                         json_string_length(needle)) != NULL;
    }
    if (json_is_array(hay)) {
        for (size_t i = 0; i < json_array_size(hay); i++)
            if (chat_equal(needle, json_array_get(hay, i))) return 1;
        return 0;
    }
    if (json_is_object(hay))
        return json_is_string(needle) && json_object_get(hay, json_string_value(needle)) != NULL;
    if (hay == x->undef) return 0;
    chat_error(x, n, MC_ERR_ARG, "'in' needs a string, list or dict on the right, not %s",
               type_name(x, hay));
    return -1;
}

static json_t *binop(chat_ctx *x, const cnode *n) {
    json_t *a = eval(x, n->kids[0]), *b = NULL, *r = NULL;
    if (!a) return NULL;
    if (n->op == OP_AND || n->op == OP_OR) {
        int t = chat_truthy(x, a);
        if ((n->op == OP_AND) != t) return a;
        json_decref(a);
        return eval(x, n->kids[1]);
    }
    if (!(b = eval(x, n->kids[1]))) goto done;
    switch (n->op) {
    case OP_CAT: {
        json_t *sa = chat_str(x, a), *sb = sa ? chat_str(x, b) : NULL;
        if (sa && sb) r = arith(x, n, OP_ADD, sa, sb);
        json_decref(sa);
        json_decref(sb);
        break;
    }
    case OP_EQ:
        r = json_boolean(chat_equal(a, b));
        break;
    case OP_NE:
        r = json_boolean(!chat_equal(a, b));
        break;
    case OP_IN:
    case OP_NOTIN: {
        int c = contains(x, n, a, b);
        if (c >= 0) r = json_boolean(n->op == OP_IN ? c : !c);
        break;
    }
    case OP_LT:
    case OP_LE:
    case OP_GT:
    case OP_GE: {
        double da, db;
        int cmp;
        if (num(a, &da) && num(b, &db)) {
            cmp = da < db ? -1 : da > db ? 1 : 0;
        } else if (json_is_string(a) && json_is_string(b)) {
            size_t la = json_string_length(a), lb = json_string_length(b);
            cmp = memcmp(json_string_value(a), json_string_value(b), la < lb ? la : lb);
            if (!cmp) cmp = la < lb ? -1 : la > lb;
        } else {
            chat_error(x, n, MC_ERR_ARG, "cannot compare %s and %s", type_name(x, a),
                       type_name(x, b));
            break;
        }
        r = json_boolean(n->op == OP_LT   ? cmp < 0
                         : n->op == OP_LE ? cmp <= 0
                         : n->op == OP_GT ? cmp > 0
                                          : cmp >= 0);
        break;
    }
    default:
        if (n->op == OP_MUL && (json_is_string(a) || json_is_string(b))) {
            json_t *s = json_is_string(a) ? a : b, *k = s == a ? b : a;
            if (!is_int(k)) {
                chat_error(x, n, MC_ERR_ARG, "can only multiply a string by an int");
                break;
            }
            json_int_t cnt = ival(k) < 0 ? 0 : ival(k);
            size_t sl = json_string_length(s);
            if (sl && (size_t)cnt > MC_CHAT_MAX_OUTPUT / sl) {
                chat_error(x, n, MC_ERR_ARG, "string repetition larger than the output bound");
                break;
            }
            char *buf = malloc(sl * (size_t)cnt + 1);
            if (!buf) {
                chat_error(x, n, MC_ERR_NOMEM, "out of memory");
                break;
            }
            for (json_int_t i = 0; i < cnt; i++)
                memcpy(buf + (size_t)i * sl, json_string_value(s), sl);
            r = json_stringn_nocheck(buf, sl * (size_t)cnt);
            free(buf);
            break;
        }
        r = arith(x, n, n->op, a, b);
    }
done:
    json_decref(a);
    json_decref(b);
    return r;
}

/* Global functions: namespace, raise_exception, range, strftime_now, dict. */
static json_t *call_global(chat_ctx *x, const cnode *n, const char *f, json_t **args, int na) {
    if (!strcmp(f, "namespace") || !strcmp(f, "dict")) {
        json_t *o = json_object();
        if (!o) return chat_error(x, n, MC_ERR_NOMEM, "out of memory");
        for (int i = 0; i < na; i++) {
            const char *k = n->names[i + 1];
            if (!k) {
                if (json_is_object(args[i]) && !is_namespace(x, args[i])) {
                    json_object_update(o, args[i]);
                    continue;
                }
                json_decref(o);
                return chat_error(x, n, MC_ERR_ARG, "%s() takes keyword arguments", f);
            }
            if (hold(x, n, args[i])) {
                json_decref(o);
                return NULL;
            }
            json_object_set(o, k, args[i]);
        }
        if (f[0] == 'n') {
            if (json_array_size(x->namespaces) >= MC_CHAT_MAX_NAMESPACES) {
                json_decref(o);
                return chat_error(x, n, MC_ERR_ARG, "more than %d namespace() objects",
                                  MC_CHAT_MAX_NAMESPACES);
            }
            json_array_append(x->namespaces, o);
        }
        return o;
    }
    if (!strcmp(f, "raise_exception")) {
        json_t *s = na ? chat_str(x, args[0]) : json_string("raise_exception() called");
        if (s) chat_error(x, n, MC_ERR_ARG, "template error: %s", json_string_value(s));
        json_decref(s);
        return NULL;
    }
    if (!strcmp(f, "range")) {
        json_int_t a = 0, b = 0, s = 1;
        for (int i = 0; i < na; i++)
            if (!is_int(args[i])) return chat_error(x, n, MC_ERR_ARG, "range() takes integers");
        if (na == 1)
            b = ival(args[0]);
        else if (na >= 2) {
            a = ival(args[0]);
            b = ival(args[1]);
            if (na == 3) s = ival(args[2]);
        }
        if (na < 1 || na > 3 || s == 0)
            return chat_error(x, n, MC_ERR_ARG,
                              "range() takes 1 to 3 arguments and a non-zero step");
        json_t *l = json_array();
        for (json_int_t i = a; s > 0 ? i < b : i > b; i += s) {
            if (json_array_size(l) >= MC_CHAT_MAX_ITERS) {
                json_decref(l);
                return chat_error(x, n, MC_ERR_ARG, "range() longer than %d", MC_CHAT_MAX_ITERS);
            }
            json_array_append_new(l, json_integer(i));
        }
        return l;
    }
    if (!strcmp(f, "strftime_now")) {
        if (na != 1 || !json_is_string(args[0]))
            return chat_error(x, n, MC_ERR_ARG, "strftime_now() takes one format string");
        char buf[256];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t k = strftime(buf, sizeof buf, json_string_value(args[0]), &tm);
        return json_stringn(buf, k);
    }
    return chat_error(x, n, MC_ERR_UNSUPPORTED, "unknown function '%s'", f);
}

/* Evaluates n->kids[from..] into a malloc'd array (new references). */
static json_t **eval_args(chat_ctx *x, const cnode *n, int from) {
    int na = n->nkids - from;
    json_t **a = calloc((size_t)(na > 0 ? na : 1), sizeof *a);
    if (!a) {
        chat_error(x, n, MC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    for (int i = 0; i < na; i++)
        if (!(a[i] = eval(x, n->kids[from + i]))) {
            for (int k = 0; k < i; k++)
                json_decref(a[k]);
            free(a);
            return NULL;
        }
    return a;
}
static void free_args(json_t **a, int na) {
    for (int i = 0; a && i < na; i++)
        json_decref(a[i]);
    free(a);
}

static json_t *call(chat_ctx *x, const cnode *n) {
    const cnode *f = n->kids[0];
    int na = n->nkids - 1;
    json_t **args = NULL, *r = NULL, *obj = NULL;
    if (f->kind == CN_NAME) {
        if (!(args = eval_args(x, n, 1))) return NULL;
        r = call_global(x, n, f->name, args, na);
    } else if (f->kind == CN_ATTR) {
        for (int i = 1; i < n->nnames; i++)
            if (n->names[i])
                return chat_error(x, n, MC_ERR_UNSUPPORTED,
                                  "keyword arguments to methods are not supported");
        if (!(obj = eval(x, f->kids[0])) || !(args = eval_args(x, n, 1))) goto done;
        r = chat_method(x, n, obj, f->name, args, na);
    } else {
        return chat_error(x, n, MC_ERR_UNSUPPORTED,
                          "only named functions and methods can be called");
    }
done:
    json_decref(obj);
    free_args(args, na);
    return r;
}

static json_t *eval(chat_ctx *x, const cnode *n) {
    json_t *r = NULL, *a = NULL, *b = NULL;
    if (++x->depth > 8 * MC_CHAT_MAX_DEPTH) {
        x->depth--;
        return chat_error(x, n, MC_ERR_UNSUPPORTED, "evaluation nested too deeply");
    }
    switch (n->kind) {
    case CN_LIT:
        r = json_incref(n->lit);
        break;
    case CN_NAME:
        r = json_incref(lookup(x, n->name));
        break;
    case CN_ATTR:
        if ((a = eval(x, n->kids[0]))) {
            json_t *k = json_string(n->name);
            r = k ? item(x, n, a, k) : NULL;
            json_decref(k);
        }
        break;
    case CN_ITEM:
        if ((a = eval(x, n->kids[0])) && (b = eval(x, n->kids[1]))) r = item(x, n, a, b);
        break;
    case CN_SLICE: {
        json_t *p[3] = {NULL, NULL, NULL};
        int ok = (a = eval(x, n->kids[0])) != NULL;
        for (int i = 0; ok && i < 3; i++)
            if (n->kids[i + 1] && !(p[i] = eval(x, n->kids[i + 1]))) ok = 0;
        if (ok) r = slice(x, n, a, p[0], p[1], p[2]);
        for (int i = 0; i < 3; i++)
            json_decref(p[i]);
        break;
    }
    case CN_CALL:
        r = call(x, n);
        break;
    case CN_FILTER:
    case CN_TEST: {
        json_t **args = eval_args(x, n, 0);
        if (!args) break;
        if (n->kind == CN_FILTER) {
            r = chat_filter(x, n, args[0], args + 1, n->names + 1, n->nkids - 1);
        } else {
            int t = chat_test(x, n, args[0], args + 1, n->nkids - 1);
            if (t >= 0) r = json_boolean(n->op ? !t : t);
        }
        free_args(args, n->nkids);
        break;
    }
    case CN_BIN:
        r = binop(x, n);
        break;
    case CN_NOT:
        if ((a = eval(x, n->kids[0]))) r = json_boolean(!chat_truthy(x, a));
        break;
    case CN_NEG:
        if ((a = eval(x, n->kids[0]))) {
            json_t *z = json_integer(0);
            r = arith(x, n, OP_SUB, z, a);
            json_decref(z);
        }
        break;
    case CN_COND:
        if ((a = eval(x, n->kids[1])))
            r = chat_truthy(x, a) ? eval(x, n->kids[0])
                : n->kids[2]      ? eval(x, n->kids[2])
                                  : json_incref(x->undef);
        break;
    case CN_LIST:
        if (!(r = json_array())) break;
        for (int i = 0; i < n->nkids; i++) {
            json_t *v = eval(x, n->kids[i]);
            if (!v || hold(x, n, v)) {
                json_decref(v);
                json_decref(r);
                r = NULL;
                break;
            }
            json_array_append_new(r, v);
        }
        break;
    case CN_DICT:
        if (!(r = json_object())) break;
        for (int i = 0; i + 1 < n->nkids; i += 2) {
            json_t *k = eval(x, n->kids[i]), *v = k ? eval(x, n->kids[i + 1]) : NULL;
            if (!v || !json_is_string(k) || hold(x, n, v)) {
                if (k && v && !json_is_string(k))
                    chat_error(x, n, MC_ERR_UNSUPPORTED, "dict keys must be strings");
                json_decref(k);
                json_decref(v);
                json_decref(r);
                r = NULL;
                break;
            }
            json_object_set_new(r, json_string_value(k), v);
            json_decref(k);
        }
        break;
    default:
        chat_error(x, n, MC_ERR_INTERNAL, "not an expression");
    }
    json_decref(a);
    json_decref(b);
    x->depth--;
    return r;
}

/* The items a for loop walks: a new array (dict: its keys; string: its
 * characters; undefined: none). */
static json_t *iter_items(chat_ctx *x, const cnode *n, json_t *v) {
    if (json_is_array(v)) return json_incref(v);
    json_t *l = json_array();
    if (!l) return chat_error(x, n, MC_ERR_NOMEM, "out of memory");
    if (v == x->undef) return l;
    if (json_is_object(v)) {
        const char *k;
        json_t *val;
        json_object_foreach(v, k, val) json_array_append_new(l, json_string(k));
        return l;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t sn = json_string_length(v);
        for (size_t i = 0; i < sn;) {
            size_t k = mc_utf8_len((const unsigned char *)s + i, sn - i);
            if (!k) k = 1;
            json_array_append_new(l, json_stringn(s + i, k));
            i += k;
        }
        return l;
    }
    json_decref(l);
    return chat_error(x, n, MC_ERR_ARG, "cannot loop over a %s", type_name(x, v));
}

static int push_scope(chat_ctx *x, json_t *s) {
    if (x->n_scopes >= MC_CHAT_MAX_DEPTH + 2) {
        json_decref(s);
        chat_error(x, NULL, MC_ERR_UNSUPPORTED, "loops nested too deeply");
        return -1;
    }
    x->scopes[x->n_scopes++] = s;
    return 0;
}
static void pop_scope(chat_ctx *x) {
    json_decref(x->scopes[--x->n_scopes]);
}

static int bind_targets(chat_ctx *x, const cnode *n, json_t *scope, json_t *v) {
    if (n->n == 1) return json_object_set(scope, n->names[0], v);
    if (!json_is_array(v) || json_array_size(v) != n->n) {
        chat_error(x, n, MC_ERR_ARG, "cannot unpack a %s into %zu loop variables", type_name(x, v),
                   n->n);
        return -1;
    }
    for (size_t i = 0; i < n->n; i++)
        json_object_set(scope, n->names[i], json_array_get(v, i));
    return 0;
}

static int exec_for(chat_ctx *x, const cnode *n) {
    json_t *src = eval(x, n->kids[0]), *items = NULL;
    int rc = -1;
    if (!src || !(items = iter_items(x, n, src))) goto done;
    if (n->kids[1]) { /* the loop filter, before loop.length is known */
        json_t *kept = json_array();
        for (size_t i = 0; i < json_array_size(items); i++) {
            json_t *sc = json_object(), *c;
            if (push_scope(x, sc) || bind_targets(x, n, sc, json_array_get(items, i))) {
                if (x->scopes[x->n_scopes - 1] == sc) pop_scope(x);
                json_decref(kept);
                goto done;
            }
            c = eval(x, n->kids[1]);
            pop_scope(x);
            if (!c) {
                json_decref(kept);
                goto done;
            }
            if (chat_truthy(x, c)) json_array_append(kept, json_array_get(items, i));
            json_decref(c);
        }
        json_decref(items);
        items = kept;
    }
    size_t len = json_array_size(items);
    for (size_t i = 0; i < len; i++) {
        if (++x->iters > MC_CHAT_MAX_ITERS) {
            chat_error(x, n, MC_ERR_ARG, "more than %d loop iterations", MC_CHAT_MAX_ITERS);
            goto done;
        }
        json_t *sc = json_object(), *loop = json_object();
        if (!sc || !loop) {
            json_decref(sc);
            json_decref(loop);
            chat_error(x, n, MC_ERR_NOMEM, "out of memory");
            goto done;
        }
        json_object_set_new(loop, "index0", json_integer((json_int_t)i));
        json_object_set_new(loop, "index", json_integer((json_int_t)i + 1));
        json_object_set_new(loop, "revindex0", json_integer((json_int_t)(len - 1 - i)));
        json_object_set_new(loop, "revindex", json_integer((json_int_t)(len - i)));
        json_object_set_new(loop, "first", json_boolean(i == 0));
        json_object_set_new(loop, "last", json_boolean(i + 1 == len));
        json_object_set_new(loop, "length", json_integer((json_int_t)len));
        if (i > 0) json_object_set(loop, "previtem", json_array_get(items, i - 1));
        if (i + 1 < len) json_object_set(loop, "nextitem", json_array_get(items, i + 1));
        json_object_set_new(sc, "loop", loop);
        if (push_scope(x, sc)) goto done;
        int e = bind_targets(x, n, sc, json_array_get(items, i)) ? -1 : exec(x, n->kids[2]);
        pop_scope(x);
        if (e) goto done;
        if (x->brk == 1) {
            x->brk = 0;
            break;
        }
        x->brk = 0;
    }
    if (!len && n->kids[3] && exec(x, n->kids[3])) goto done;
    rc = 0;
done:
    json_decref(src);
    json_decref(items);
    return rc;
}

static int exec(chat_ctx *x, const cnode *body) {
    for (int i = 0; i < body->nkids && !x->brk; i++) {
        const cnode *n = body->kids[i];
        json_t *v = NULL;
        switch (n->kind) {
        case CN_TEXT:
            if (chat_emit(x, n->name, n->n)) return -1;
            break;
        case CN_OUT:
            if (!(v = eval(x, n->kids[0]))) return -1;
            if (chat_emit_value(x, v, 0)) {
                json_decref(v);
                return -1;
            }
            json_decref(v);
            break;
        case CN_IF: {
            int k;
            for (k = 0; k + 1 < n->nkids; k += 2) {
                if (!n->kids[k]) /* else */
                    break;
                if (!(v = eval(x, n->kids[k]))) return -1;
                int t = chat_truthy(x, v);
                json_decref(v);
                if (t) break;
            }
            if (k + 1 < n->nkids && exec(x, n->kids[k + 1])) return -1;
            break;
        }
        case CN_FOR:
            if (exec_for(x, n)) return -1;
            break;
        case CN_SET:
            if (!(v = eval(x, n->kids[0]))) return -1;
            if (n->attr) {
                json_t *ns = lookup(x, n->name);
                if (!is_namespace(x, ns)) {
                    json_decref(v);
                    chat_error(x, n, MC_ERR_ARG,
                               "cannot assign attribute '%s' of '%s': not a namespace()", n->attr,
                               n->name);
                    return -1;
                }
                if (hold(x, n, v)) {
                    json_decref(v);
                    return -1;
                }
                json_object_set_new(ns, n->attr, v);
            } else {
                json_object_set_new(x->scopes[x->n_scopes - 1], n->name, v);
            }
            break;
        case CN_BREAK:
            x->brk = 1;
            break;
        case CN_CONTINUE:
            x->brk = 2;
            break;
        default:
            chat_error(x, n, MC_ERR_INTERNAL, "not a statement");
            return -1;
        }
    }
    return 0;
}

mc_status mc_chat_render(const mc_chat *c, json_t *messages, int add_generation_prompt,
                         json_t *vars, char **text, size_t *len, mc_err *err) {
    json_t *scopes[MC_CHAT_MAX_DEPTH + 2];
    chat_ctx x = {.c = c, .scopes = scopes, .err = err};
    mc_status st = MC_ERR_NOMEM;
    *text = NULL;
    *len = 0;
    if (!c || !c->root || !json_is_array(messages) || (vars && !json_is_object(vars)))
        return mc_err_set(err, MC_ERR_ARG,
                          "chat render: messages must be an array and vars an object");
    x.undef = json_object();
    x.namespaces = json_array();
    json_t *g = json_copy(c->globals), *top = json_object();
    if (!x.undef || !x.namespaces || !g || !top) {
        json_decref(g);
        json_decref(top);
        goto fail;
    }
    json_object_set(g, "messages", messages);
    json_object_set_new(g, "add_generation_prompt", json_boolean(add_generation_prompt));
    if (vars) json_object_update(g, vars);
    scopes[0] = g;
    scopes[1] = top;
    x.n_scopes = 2;
    if (exec(&x, c->root)) {
        st = err && err->status != MC_OK ? err->status : MC_ERR_INTERNAL;
        while (x.n_scopes)
            pop_scope(&x);
        goto fail;
    }
    while (x.n_scopes)
        pop_scope(&x);
    if (chat_emit(&x, "", 0) || !x.out) { /* ensure a buffer for the terminator */
        if (!x.out && !(x.out = malloc(1))) goto fail;
    }
    x.out[x.len] = 0;
    *text = x.out;
    *len = x.len;
    json_decref(x.undef);
    json_decref(x.namespaces);
    return MC_OK;
fail:
    if (st == MC_ERR_NOMEM)
        mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory rendering the template", c->name);
    free(x.out);
    json_decref(x.undef);
    json_decref(x.namespaces);
    return st;
}
