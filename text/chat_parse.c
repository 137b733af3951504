/* chat_parse.c - the parser of the chat template language (a Jinja2
 * subset; chat_internal.h has the tree, chat_lex.c the tokens). Expression
 * precedence follows Jinja2's parser: conditional expression, or, and, not,
 * comparisons and `in`, + -, ~, * / // %, unary - +, then postfix (. [] ())
 * and filters / tests (| and is). One trailing newline of the template is
 * dropped, as Jinja2 does. Every error names the template, line and column.
 */
#include "chat_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parser ---- */

static cnode *mk(cparser *p, int kind, size_t off) {
    mc_chat *c = p->c;
    if (c->n_all == c->cap_all) {
        size_t nc = c->cap_all ? c->cap_all * 2 : 128;
        cnode **a = realloc(c->all, nc * sizeof *a);
        if (!a) goto nomem;
        c->all = a;
        c->cap_all = nc;
    }
    cnode *n = calloc(1, sizeof *n);
    if (!n) goto nomem;
    c->all[c->n_all++] = n;
    n->kind = kind;
    chat_where(p, off, &n->line, &n->col);
    return n;
nomem:
    if (!p->failed) {
        p->failed = 1;
        mc_err_set(p->err, MC_ERR_NOMEM, "%s: out of memory parsing the template", c->name);
    }
    return NULL;
}

static int add_kid(cparser *p, cnode *n, cnode *k) {
    cnode **a = realloc(n->kids, (size_t)(n->nkids + 1) * sizeof *a);
    if (!a) {
        p->failed = 1;
        mc_err_set(p->err, MC_ERR_NOMEM, "out of memory parsing the template");
        return -1;
    }
    n->kids = a;
    n->kids[n->nkids++] = k;
    return 0;
}

static int add_name(cparser *p, cnode *n, const char *s) {
    char **a = realloc(n->names, (size_t)(n->nnames + 1) * sizeof *a);
    char *d = s ? strdup(s) : NULL;
    if (!a || (s && !d)) {
        free(d);
        if (a) n->names = a;
        p->failed = 1;
        mc_err_set(p->err, MC_ERR_NOMEM, "out of memory parsing the template");
        return -1;
    }
    n->names = a;
    n->names[n->nnames++] = d;
    return 0;
}

static ctok *cur(cparser *p) {
    return &p->t[p->pos];
}
static int is_op(cparser *p, const char *op) {
    ctok *t = cur(p);
    return t->type == T_OP && !strcmp(t->s, op);
}
static int is_name(cparser *p, const char *nm) {
    ctok *t = cur(p);
    return t->type == T_NAME && !strcmp(t->s, nm);
}
static int expect_op(cparser *p, const char *op) {
    if (is_op(p, op)) {
        p->pos++;
        return 0;
    }
    chat_perr(p, cur(p)->off, MC_ERR_FORMAT, "expected '%s'%s", op, NULL);
    return -1;
}
static int expect_end(cparser *p) {
    if (cur(p)->type == T_END) {
        p->pos++;
        return 0;
    }
    chat_perr(p, cur(p)->off, MC_ERR_FORMAT, "expected the end of the tag, found %s%s",
              cur(p)->s ? cur(p)->s : "something else", NULL);
    return -1;
}

static cnode *parse_expr(cparser *p, int nocond);
static cnode *parse_unary(cparser *p, int with_filter);

/* '(' args ')' into n (kids after those already there, names parallel). */
static int parse_args(cparser *p, cnode *n, int named) {
    if (expect_op(p, "(")) return -1;
    while (!is_op(p, ")")) {
        const char *kw = NULL;
        if (cur(p)->type == T_NAME && p->t[p->pos + 1].type == T_OP &&
            !strcmp(p->t[p->pos + 1].s, "=")) {
            kw = cur(p)->s;
            p->pos += 2;
        }
        cnode *a = parse_expr(p, 0);
        if (!a || add_kid(p, n, a) || (named && add_name(p, n, kw))) return -1;
        if (!is_op(p, ",")) break;
        p->pos++;
    }
    return expect_op(p, ")");
}

static cnode *parse_primary(cparser *p) {
    ctok *t = cur(p);
    cnode *n = NULL;
    if (++p->depth > 4 * MC_CHAT_MAX_DEPTH) {
        chat_perr(p, t->off, MC_ERR_UNSUPPORTED, "expression nested too deeply%s%s", NULL, NULL);
        return NULL;
    }
    if (t->type == T_NAME) {
        p->pos++;
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True") || !strcmp(t->s, "false") ||
            !strcmp(t->s, "False") || !strcmp(t->s, "none") || !strcmp(t->s, "None")) {
            if (!(n = mk(p, CN_LIT, t->off))) return NULL;
            n->lit = t->s[0] == 'n' || t->s[0] == 'N'
                         ? json_null()
                         : json_boolean(t->s[0] == 't' || t->s[0] == 'T');
        } else {
            if (!(n = mk(p, CN_NAME, t->off)) || !(n->name = strdup(t->s))) return NULL;
        }
    } else if (t->type == T_STR) {
        size_t total = 0, k = p->pos;
        while (p->t[k].type == T_STR)
            total += p->t[k++].n;
        char *buf = malloc(total + 1);
        if (!buf || !(n = mk(p, CN_LIT, t->off))) {
            free(buf);
            return NULL;
        }
        total = 0;
        while (cur(p)->type == T_STR) {
            memcpy(buf + total, cur(p)->s, cur(p)->n);
            total += cur(p)->n;
            p->pos++;
        }
        n->lit = json_stringn(buf, total);
        free(buf);
        if (!n->lit) {
            chat_perr(p, t->off, MC_ERR_FORMAT, "string literal is not valid UTF-8%s%s", NULL,
                      NULL);
            return NULL;
        }
    } else if (t->type == T_INT || t->type == T_FLOAT) {
        p->pos++;
        if (!(n = mk(p, CN_LIT, t->off))) return NULL;
        n->lit = t->type == T_INT ? json_integer(t->i) : json_real(t->f);
    } else if (is_op(p, "(") || is_op(p, "[")) {
        int paren = is_op(p, "(");
        p->pos++;
        if (paren) {
            n = parse_expr(p, 0);
            if (n && is_op(p, ",")) { /* a tuple: a list */
                cnode *l = mk(p, CN_LIST, t->off);
                if (!l || add_kid(p, l, n)) return NULL;
                while (is_op(p, ",")) {
                    p->pos++;
                    if (is_op(p, ")")) break;
                    cnode *it = parse_expr(p, 0);
                    if (!it || add_kid(p, l, it)) return NULL;
                }
                n = l;
            }
            if (!n || expect_op(p, ")")) return NULL;
        } else {
            if (!(n = mk(p, CN_LIST, t->off))) return NULL;
            while (!is_op(p, "]")) {
                cnode *it = parse_expr(p, 0);
                if (!it || add_kid(p, n, it)) return NULL;
                if (!is_op(p, ",")) break;
                p->pos++;
            }
            if (expect_op(p, "]")) return NULL;
        }
    } else if (is_op(p, "{")) {
        p->pos++;
        if (!(n = mk(p, CN_DICT, t->off))) return NULL;
        while (!is_op(p, "}")) {
            cnode *k = parse_expr(p, 0);
            if (!k || expect_op(p, ":")) return NULL;
            cnode *v = parse_expr(p, 0);
            if (!v || add_kid(p, n, k) || add_kid(p, n, v)) return NULL;
            if (!is_op(p, ",")) break;
            p->pos++;
        }
        if (expect_op(p, "}")) return NULL;
    } else {
        chat_perr(p, t->off, MC_ERR_FORMAT, "expected an expression, found %s%s",
                  t->type == T_END ? "the end of the tag"
                  : t->s           ? t->s
                                   : "a token",
                  NULL);
        return NULL;
    }
    p->depth--;
    return n;
}

static cnode *parse_postfix(cparser *p, cnode *n) {
    while (n) {
        ctok *t = cur(p);
        if (is_op(p, ".")) {
            p->pos++;
            ctok *a = cur(p);
            if (a->type == T_NAME) {
                cnode *m = mk(p, CN_ATTR, t->off);
                if (!m || !(m->name = strdup(a->s)) || add_kid(p, m, n)) return NULL;
                p->pos++;
                n = m;
            } else if (a->type == T_INT) {
                cnode *m = mk(p, CN_ITEM, t->off), *i = mk(p, CN_LIT, a->off);
                if (!m || !i || add_kid(p, m, n) || add_kid(p, m, i)) return NULL;
                i->lit = json_integer(a->i);
                p->pos++;
                n = m;
            } else {
                chat_perr(p, a->off, MC_ERR_FORMAT, "expected an attribute name after '.'%s%s",
                          NULL, NULL);
                return NULL;
            }
        } else if (is_op(p, "[")) {
            p->pos++;
            cnode *parts[3] = {NULL, NULL, NULL};
            int slice = 0;
            if (!is_op(p, ":") && !(parts[0] = parse_expr(p, 0))) return NULL;
            if (is_op(p, ":")) {
                slice = 1;
                p->pos++;
                if (!is_op(p, ":") && !is_op(p, "]") && !(parts[1] = parse_expr(p, 0))) return NULL;
                if (is_op(p, ":")) {
                    p->pos++;
                    if (!is_op(p, "]") && !(parts[2] = parse_expr(p, 0))) return NULL;
                }
            }
            if (expect_op(p, "]")) return NULL;
            cnode *m = mk(p, slice ? CN_SLICE : CN_ITEM, t->off);
            if (!m || add_kid(p, m, n)) return NULL;
            for (int k = 0; k < (slice ? 3 : 1); k++)
                if (add_kid(p, m, parts[k])) return NULL;
            n = m;
        } else if (is_op(p, "(")) {
            cnode *m = mk(p, CN_CALL, t->off);
            if (!m || add_kid(p, m, n) || add_name(p, m, NULL) || parse_args(p, m, 1)) return NULL;
            m->line = n->line; /* errors of a call point at its callee */
            m->col = n->col;
            n = m;
        } else {
            break;
        }
    }
    return n;
}

static int stop_word(const ctok *t) {
    static const char *w[] = {"else", "or", "and", "is", "in", "not", "if"};
    if (t->type != T_NAME) return t->type != T_STR && t->type != T_INT && t->type != T_FLOAT;
    for (size_t i = 0; i < sizeof w / sizeof *w; i++)
        if (!strcmp(t->s, w[i])) return 1;
    return 0;
}

static cnode *parse_filters(cparser *p, cnode *n) {
    while (n) {
        ctok *t = cur(p);
        if (is_op(p, "|")) {
            p->pos++;
            if (cur(p)->type != T_NAME) {
                chat_perr(p, cur(p)->off, MC_ERR_FORMAT, "expected a filter name after '|'%s%s",
                          NULL, NULL);
                return NULL;
            }
            cnode *m = mk(p, CN_FILTER, t->off);
            if (!m || !(m->name = strdup(cur(p)->s)) || add_kid(p, m, n) || add_name(p, m, NULL))
                return NULL;
            p->pos++;
            if (is_op(p, "(") && parse_args(p, m, 1)) return NULL;
            n = m;
        } else if (is_name(p, "is")) {
            p->pos++;
            int neg = 0;
            if (is_name(p, "not")) {
                neg = 1;
                p->pos++;
            }
            if (cur(p)->type != T_NAME) {
                chat_perr(p, cur(p)->off, MC_ERR_FORMAT, "expected a test name after 'is'%s%s",
                          NULL, NULL);
                return NULL;
            }
            cnode *m = mk(p, CN_TEST, t->off);
            if (!m || !(m->name = strdup(cur(p)->s)) || add_kid(p, m, n) || add_name(p, m, NULL))
                return NULL;
            m->op = neg;
            p->pos++;
            if (is_op(p, "(")) {
                if (parse_args(p, m, 1)) return NULL;
            } else if (!stop_word(cur(p))) {
                cnode *a = parse_postfix(p, parse_primary(p));
                if (!a || add_kid(p, m, a) || add_name(p, m, NULL)) return NULL;
            }
            n = m;
        } else {
            break;
        }
    }
    return n;
}

static cnode *parse_unary(cparser *p, int with_filter) {
    cnode *n;
    ctok *t = cur(p);
    if (is_op(p, "-") || is_op(p, "+")) {
        p->pos++;
        cnode *e = parse_unary(p, 0);
        if (!e) return NULL;
        if (t->s[0] == '+')
            n = e;
        else if (!(n = mk(p, CN_NEG, t->off)) || add_kid(p, n, e))
            return NULL;
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    return with_filter ? parse_filters(p, n) : n;
}

static cnode *bin(cparser *p, int op, size_t off, cnode *l, cnode *r) {
    if (!l || !r) return NULL;
    cnode *n = mk(p, CN_BIN, off);
    if (!n || add_kid(p, n, l) || add_kid(p, n, r)) return NULL;
    n->op = op;
    return n;
}

static cnode *parse_math2(cparser *p) {
    cnode *n = parse_unary(p, 1);
    for (;;) {
        ctok *t = cur(p);
        int op = is_op(p, "*")    ? OP_MUL
                 : is_op(p, "/")  ? OP_DIV
                 : is_op(p, "//") ? OP_FLOORDIV
                 : is_op(p, "%")  ? OP_MOD
                                  : -1;
        if (!n || op < 0) return n;
        p->pos++;
        n = bin(p, op, t->off, n, parse_unary(p, 1));
    }
}
static cnode *parse_concat(cparser *p) {
    cnode *n = parse_math2(p);
    while (n && is_op(p, "~")) {
        size_t off = cur(p)->off;
        p->pos++;
        n = bin(p, OP_CAT, off, n, parse_math2(p));
    }
    return n;
}
static cnode *parse_math1(cparser *p) {
    cnode *n = parse_concat(p);
    while (n && (is_op(p, "+") || is_op(p, "-"))) {
        int op = is_op(p, "+") ? OP_ADD : OP_SUB;
        size_t off = cur(p)->off;
        p->pos++;
        n = bin(p, op, off, n, parse_concat(p));
    }
    return n;
}
static cnode *parse_compare(cparser *p) {
    cnode *n = parse_math1(p);
    for (;;) {
        ctok *t = cur(p);
        int op = is_op(p, "==")     ? OP_EQ
                 : is_op(p, "!=")   ? OP_NE
                 : is_op(p, "<")    ? OP_LT
                 : is_op(p, "<=")   ? OP_LE
                 : is_op(p, ">")    ? OP_GT
                 : is_op(p, ">=")   ? OP_GE
                 : is_name(p, "in") ? OP_IN
                                    : -1;
        if (op < 0 && is_name(p, "not") && p->t[p->pos + 1].type == T_NAME &&
            !strcmp(p->t[p->pos + 1].s, "in")) {
            op = OP_NOTIN;
            p->pos++;
        }
        if (!n || op < 0) return n;
        p->pos++;
        n = bin(p, op, t->off, n, parse_math1(p));
    }
}
static cnode *parse_not(cparser *p) {
    if (is_name(p, "not")) {
        size_t off = cur(p)->off;
        p->pos++;
        if (++p->depth > 4 * MC_CHAT_MAX_DEPTH) {
            chat_perr(p, off, MC_ERR_UNSUPPORTED, "expression nested too deeply%s%s", NULL, NULL);
            return NULL;
        }
        cnode *e = parse_not(p), *n;
        p->depth--;
        if (!e || !(n = mk(p, CN_NOT, off)) || add_kid(p, n, e)) return NULL;
        return n;
    }
    return parse_compare(p);
}
static cnode *parse_and(cparser *p) {
    cnode *n = parse_not(p);
    while (n && is_name(p, "and")) {
        size_t off = cur(p)->off;
        p->pos++;
        n = bin(p, OP_AND, off, n, parse_not(p));
    }
    return n;
}
static cnode *parse_or(cparser *p) {
    cnode *n = parse_and(p);
    while (n && is_name(p, "or")) {
        size_t off = cur(p)->off;
        p->pos++;
        n = bin(p, OP_OR, off, n, parse_and(p));
    }
    return n;
}
static cnode *parse_expr(cparser *p, int nocond) {
    cnode *n = parse_or(p);
    if (!n || nocond || !is_name(p, "if")) return n;
    size_t off = cur(p)->off;
    p->pos++;
    cnode *c = mk(p, CN_COND, off), *cond = parse_or(p), *e = NULL;
    if (!c || !cond) return NULL;
    if (is_name(p, "else")) {
        p->pos++;
        if (!(e = parse_expr(p, 0))) return NULL;
    }
    if (add_kid(p, c, n) || add_kid(p, c, cond) || add_kid(p, c, e)) return NULL;
    return c;
}

/* ---- statements ---- */

/* Parses statements until a block tag whose name is in `ends` (not
 * consumed: p->pos is on its name) or the end of the template (an error when
 * ends is non-NULL: the block opened at open_off is unclosed). */
static cnode *parse_body(cparser *p, const char *const *ends, const char *what, size_t open_off);

static cnode *parse_block(cparser *p, size_t off) {
    ctok *t = cur(p);
    if (t->type != T_NAME) {
        chat_perr(p, t->off, MC_ERR_FORMAT, "expected a tag name%s%s", NULL, NULL);
        return NULL;
    }
    const char *nm = t->s;
    p->pos++;
    cnode *n = NULL;
    if (!strcmp(nm, "if")) {
        static const char *const ends[] = {"elif", "else", "endif", NULL};
        if (!(n = mk(p, CN_IF, off))) return NULL;
        for (;;) {
            cnode *cond = parse_expr(p, 0);
            if (!cond || expect_end(p) || add_kid(p, n, cond)) return NULL;
            cnode *body = parse_body(p, ends, "if", off);
            if (!body || add_kid(p, n, body)) return NULL;
            if (is_name(p, "elif")) {
                p->pos++;
                continue;
            }
            if (is_name(p, "else")) {
                p->pos++;
                static const char *const ends2[] = {"endif", NULL};
                if (expect_end(p) || add_kid(p, n, NULL)) return NULL;
                cnode *eb = parse_body(p, ends2, "if", off);
                if (!eb || add_kid(p, n, eb)) return NULL;
            }
            break;
        }
        p->pos++; /* endif */
        return expect_end(p) ? NULL : n;
    }
    if (!strcmp(nm, "for")) {
        static const char *const ends[] = {"else", "endfor", NULL};
        if (!(n = mk(p, CN_FOR, off))) return NULL;
        int paren = is_op(p, "(");
        if (paren) p->pos++;
        for (;;) {
            if (cur(p)->type != T_NAME) {
                chat_perr(p, cur(p)->off, MC_ERR_FORMAT, "expected a loop variable name%s%s", NULL,
                          NULL);
                return NULL;
            }
            if (add_name(p, n, cur(p)->s)) return NULL;
            p->pos++;
            if (!is_op(p, ",")) break;
            p->pos++;
        }
        if (paren && expect_op(p, ")")) return NULL;
        n->n = (size_t)n->nnames;
        if (!is_name(p, "in")) {
            chat_perr(p, cur(p)->off, MC_ERR_FORMAT, "expected 'in' in the for tag%s%s", NULL,
                      NULL);
            return NULL;
        }
        p->pos++;
        cnode *it = parse_expr(p, 1), *filt = NULL;
        if (!it) return NULL;
        if (is_name(p, "if")) {
            p->pos++;
            if (!(filt = parse_expr(p, 1))) return NULL;
        }
        if (is_name(p, "recursive")) {
            chat_perr(p, cur(p)->off, MC_ERR_UNSUPPORTED, "recursive loops are not supported%s%s",
                      NULL, NULL);
            return NULL;
        }
        if (expect_end(p) || add_kid(p, n, it) || add_kid(p, n, filt)) return NULL;
        p->loops++;
        cnode *body = parse_body(p, ends, "for", off), *eb = NULL;
        p->loops--;
        if (!body) return NULL;
        if (is_name(p, "else")) {
            static const char *const ends2[] = {"endfor", NULL};
            p->pos++;
            if (expect_end(p) || !(eb = parse_body(p, ends2, "for", off))) return NULL;
        }
        p->pos++; /* endfor */
        if (add_kid(p, n, body) || add_kid(p, n, eb)) return NULL;
        return expect_end(p) ? NULL : n;
    }
    if (!strcmp(nm, "set")) {
        if (cur(p)->type != T_NAME) {
            chat_perr(p, cur(p)->off, MC_ERR_FORMAT, "expected a variable name after 'set'%s%s",
                      NULL, NULL);
            return NULL;
        }
        if (!(n = mk(p, CN_SET, off)) || !(n->name = strdup(cur(p)->s))) return NULL;
        p->pos++;
        if (is_op(p, ".")) {
            p->pos++;
            if (cur(p)->type != T_NAME) {
                chat_perr(p, cur(p)->off, MC_ERR_FORMAT, "expected an attribute name%s%s", NULL,
                          NULL);
                return NULL;
            }
            if (!(n->attr = strdup(cur(p)->s))) return NULL;
            p->pos++;
        }
        if (cur(p)->type == T_END) {
            chat_perr(p, cur(p)->off, MC_ERR_UNSUPPORTED,
                      "block assignment ({%% set x %%}...{%% endset %%}) is not supported%s%s",
                      NULL, NULL);
            return NULL;
        }
        if (is_op(p, ",")) {
            chat_perr(p, cur(p)->off, MC_ERR_UNSUPPORTED, "tuple assignment is not supported%s%s",
                      NULL, NULL);
            return NULL;
        }
        cnode *v;
        if (expect_op(p, "=") || !(v = parse_expr(p, 0)) || add_kid(p, n, v) || expect_end(p))
            return NULL;
        return n;
    }
    if (!strcmp(nm, "break") || !strcmp(nm, "continue")) {
        if (!p->loops) {
            chat_perr(p, t->off, MC_ERR_FORMAT, "'%s' outside a for loop%s", nm, NULL);
            return NULL;
        }
        if (!(n = mk(p, nm[0] == 'b' ? CN_BREAK : CN_CONTINUE, off))) return NULL;
        return expect_end(p) ? NULL : n;
    }
    if (!strncmp(nm, "end", 3) || !strcmp(nm, "elif") || !strcmp(nm, "else"))
        chat_perr(p, t->off, MC_ERR_FORMAT, "unexpected '%s' (no open block it closes)%s", nm,
                  NULL);
    else
        chat_perr(p, t->off, MC_ERR_UNSUPPORTED, "unknown or unsupported tag '%s'%s", nm, NULL);
    return NULL;
}

static cnode *parse_body(cparser *p, const char *const *ends, const char *what, size_t open_off) {
    cnode *body = mk(p, CN_BODY, cur(p)->off);
    if (!body) return NULL;
    if (++p->depth > MC_CHAT_MAX_DEPTH) {
        chat_perr(p, cur(p)->off, MC_ERR_UNSUPPORTED, "blocks nested more than %s deep%s", "64",
                  NULL);
        return NULL;
    }
    for (;;) {
        ctok *t = cur(p);
        cnode *n = NULL;
        if (t->type == T_EOF) {
            if (ends) {
                chat_perr(p, open_off, MC_ERR_FORMAT,
                          "'%s' block opened here is never closed (end%s)", what, what);
                return NULL;
            }
            break;
        } else if (t->type == T_TEXT) {
            if (!(n = mk(p, CN_TEXT, t->off))) return NULL;
            n->name = t->s;
            n->n = t->n;
            t->s = NULL;
            p->pos++;
        } else if (t->type == T_OUT) {
            p->pos++;
            cnode *e = parse_expr(p, 0);
            if (!e || expect_end(p) || !(n = mk(p, CN_OUT, t->off)) || add_kid(p, n, e))
                return NULL;
        } else if (t->type == T_BLOCK) {
            p->pos++;
            if (ends && cur(p)->type == T_NAME)
                for (int i = 0; ends[i]; i++)
                    if (!strcmp(cur(p)->s, ends[i])) {
                        p->depth--;
                        return body;
                    }
            if (!(n = parse_block(p, t->off))) return NULL;
        } else {
            chat_perr(p, t->off, MC_ERR_INTERNAL, "unexpected token%s%s", NULL, NULL);
            return NULL;
        }
        if (add_kid(p, body, n)) return NULL;
    }
    p->depth--;
    return body;
}

mc_status chat_parse(mc_chat *c, const char *src, size_t len, mc_err *err) {
    cparser p = {.c = c, .src = src, .len = len, .err = err};
    if (len && src[len - 1] == '\n') {
        p.len = --len;
        if (len && src[len - 1] == '\r') p.len = --len;
    }
    mc_status st = MC_OK;
    if (chat_lex(&p) || !(c->root = parse_body(&p, NULL, NULL, 0)) || p.failed) {
        st = err && err->status != MC_OK ? err->status : MC_ERR_NOMEM;
        if (st == MC_ERR_NOMEM) /* only allocation failures leave no message */
            mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory parsing the template", c->name);
        c->root = NULL;
    }
    for (size_t i = 0; i < p.nt; i++)
        free(p.t[i].s);
    free(p.t);
    return st;
}

void chat_nodes_free(mc_chat *c) {
    for (size_t i = 0; i < c->n_all; i++) {
        cnode *n = c->all[i];
        free(n->name);
        free(n->attr);
        json_decref(n->lit);
        free(n->kids);
        for (int k = 0; k < n->nnames; k++)
            free(n->names[k]);
        free(n->names);
        free(n);
    }
    free(c->all);
    c->all = NULL;
    c->n_all = c->cap_all = 0;
}
