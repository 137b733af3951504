/* chat_lex.c - the lexer of the chat template language: splits a template
 * into text and tag tokens and tokenizes the inside of tags.
 *
 * Whitespace follows transformers' environment: trim_blocks (the first
 * newline after a block or comment tag is dropped), lstrip_blocks (spaces
 * and tabs from the start of a line to a block or comment tag are dropped),
 * '-' on a tag side strips all whitespace on that side, '+' disables
 * lstrip / trim. Every error names the template, line and column.
 */
#include "chat_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void chat_where(const cparser *p, size_t off, int *line, int *col) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < p->len; i++) {
        if (p->src[i] == '\n') {
            l++;
            c = 1;
        } else if (((unsigned char)p->src[i] & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

void chat_perr(cparser *p, size_t off, mc_status s, const char *fmt, const char *a, const char *b) {
    if (p->failed) return;
    p->failed = 1;
    int line, col;
    chat_where(p, off, &line, &col);
    char msg[400];
    snprintf(msg, sizeof msg, fmt, a ? a : "", b ? b : "");
    mc_err_set(p->err, s, "%s: line %d column %d: %s", p->c->name, line, col, msg);
}

int chat_push(cparser *p, int type, size_t off, const char *s, size_t n) {
    if (p->nt == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 256;
        ctok *t = realloc(p->t, nc * sizeof *t);
        if (!t) return -1;
        p->t = t;
        p->cap = nc;
    }
    ctok *t = &p->t[p->nt++];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->off = off;
    if (s) {
        if (!(t->s = malloc(n + 1))) return -1;
        memcpy(t->s, s, n);
        t->s[n] = 0;
        t->n = n;
    }
    return 0;
}

static int is_ws(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}
static int is_id(char ch, int first) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
           (!first && ch >= '0' && ch <= '9');
}

/* Lexes a string literal at p->src[*i] (a quote); appends T_STR. */
static int lex_string(cparser *p, size_t *i) {
    char q = p->src[*i];
    size_t start = *i, k = *i + 1;
    char *buf = malloc(p->len - start + 1);
    size_t n = 0;
    if (!buf) return -1;
    while (k < p->len && p->src[k] != q) {
        char ch = p->src[k];
        if (ch == '\\' && k + 1 < p->len) {
            char e = p->src[k + 1];
            k += 2;
            switch (e) {
            case 'n':
                buf[n++] = '\n';
                break;
            case 't':
                buf[n++] = '\t';
                break;
            case 'r':
                buf[n++] = '\r';
                break;
            case '\\':
                buf[n++] = '\\';
                break;
            case '\'':
                buf[n++] = '\'';
                break;
            case '"':
                buf[n++] = '"';
                break;
            case '\n':
                break;
            default:
                buf[n++] = '\\';
                buf[n++] = e;
                break;
            }
            continue;
        }
        buf[n++] = ch;
        k++;
    }
    if (k >= p->len) {
        free(buf);
        chat_perr(p, start, MC_ERR_FORMAT, "unterminated string literal%s%s", NULL, NULL);
        return -1;
    }
    int rc = chat_push(p, T_STR, start, buf, n);
    free(buf);
    *i = k + 1;
    return rc;
}

/* Lexes the inside of a tag from *i up to its end ("}}" or "%}", with an
 * optional '-' / '+'); *rstrip: 1 for '-', 2 for '+', 0 otherwise. */
static int lex_tag(cparser *p, size_t *i, char close, size_t open_off, int *rstrip) {
    static const char *ops2[] = {"==", "!=", "<=", ">=", "//", "**"};
    size_t k = *i;
    for (;;) {
        while (k < p->len && is_ws(p->src[k]))
            k++;
        if (k >= p->len) {
            chat_perr(p, open_off, MC_ERR_FORMAT, "tag opened here is never closed%s%s", NULL,
                      NULL);
            return -1;
        }
        const char *s = p->src + k;
        size_t rest = p->len - k;
        if ((s[0] == '-' || s[0] == '+') && rest >= 3 && s[1] == close && s[2] == '}') {
            *rstrip = s[0] == '-' ? 1 : 2;
            *i = k + 3;
            return chat_push(p, T_END, k, NULL, 0);
        }
        if (rest >= 2 && s[0] == close && s[1] == '}') {
            *rstrip = 0;
            *i = k + 2;
            return chat_push(p, T_END, k, NULL, 0);
        }
        if (is_id(s[0], 1)) {
            size_t e = k;
            while (e < p->len && is_id(p->src[e], 0))
                e++;
            if (chat_push(p, T_NAME, k, s, e - k)) return -1;
            k = e;
        } else if (s[0] >= '0' && s[0] <= '9') {
            size_t e = k;
            int isf = 0;
            while (e < p->len && ((p->src[e] >= '0' && p->src[e] <= '9') || p->src[e] == '_'))
                e++;
            if (e + 1 < p->len && p->src[e] == '.' && p->src[e + 1] >= '0' &&
                p->src[e + 1] <= '9') {
                isf = 1;
                e++;
                while (e < p->len && p->src[e] >= '0' && p->src[e] <= '9')
                    e++;
            }
            if (e < p->len && (p->src[e] == 'e' || p->src[e] == 'E')) { /* exponent */
                size_t x = e + 1;
                if (x < p->len && (p->src[x] == '+' || p->src[x] == '-')) x++;
                if (x < p->len && p->src[x] >= '0' && p->src[x] <= '9') {
                    isf = 1;
                    e = x;
                    while (e < p->len && p->src[e] >= '0' && p->src[e] <= '9')
                        e++;
                }
            }
            char num[64];
            size_t m = 0;
            for (size_t j = k; j < e && m < sizeof num - 1; j++)
                if (p->src[j] != '_') num[m++] = p->src[j];
            num[m] = 0;
            if (chat_push(p, isf ? T_FLOAT : T_INT, k, NULL, 0)) return -1;
            if (isf)
                p->t[p->nt - 1].f = strtod(num, NULL);
            else
                p->t[p->nt - 1].i = strtoll(num, NULL, 10);
            k = e;
        } else if (s[0] == '\'' || s[0] == '"') {
            if (lex_string(p, &k)) return -1;
        } else {
            size_t n = 0;
            for (size_t j = 0; j < sizeof ops2 / sizeof *ops2; j++)
                if (rest >= 2 && s[0] == ops2[j][0] && s[1] == ops2[j][1]) n = 2;
            if (!n && strchr("+-*/%~<>=()[]{}.,:|", s[0])) n = 1;
            if (!n) {
                char ch[2] = {s[0], 0};
                chat_perr(p, k, MC_ERR_UNSUPPORTED, "unexpected character '%s'%s", ch, NULL);
                return -1;
            }
            if (chat_push(p, T_OP, k, s, n)) return -1;
            k += n;
        }
    }
}

/* Splits the template into text and tag tokens, applying whitespace control. */
int chat_lex(cparser *p) {
    size_t pos = 0;
    int pending = 0; /* 1: strip all leading whitespace; 2: drop one newline */
    for (;;) {
        size_t k = pos;
        const char *open = NULL;
        while (k + 1 < p->len) {
            if (p->src[k] == '{' &&
                (p->src[k + 1] == '{' || p->src[k + 1] == '%' || p->src[k + 1] == '#')) {
                open = p->src + k;
                break;
            }
            k++;
        }
        size_t tstart = pos, tend = open ? k : p->len;
        if (pending == 1)
            while (tstart < tend && is_ws(p->src[tstart]))
                tstart++;
        else if (pending == 2 && tstart < tend) {
            if (p->src[tstart] == '\n')
                tstart++;
            else if (p->src[tstart] == '\r' && tstart + 1 < tend && p->src[tstart + 1] == '\n')
                tstart += 2;
        }
        int line_start = tstart == 0 || p->src[tstart - 1] == '\n';
        if (open) {
            char kind = open[1], mod = k + 2 < p->len ? open[2] : 0;
            if (mod == '-') {
                while (tend > tstart && is_ws(p->src[tend - 1]))
                    tend--;
            } else if (mod != '+' && kind != '{') {
                size_t e = tend;
                while (e > tstart && (p->src[e - 1] == ' ' || p->src[e - 1] == '\t'))
                    e--;
                if ((e > tstart && p->src[e - 1] == '\n') || (e == tstart && line_start)) tend = e;
            }
        }
        if (tend > tstart && chat_push(p, T_TEXT, tstart, p->src + tstart, tend - tstart))
            return -1;
        if (!open) return chat_push(p, T_EOF, p->len, NULL, 0);
        char kind = open[1];
        size_t i = k + 2;
        if (i < p->len && (p->src[i] == '-' || p->src[i] == '+')) i++;
        int rstrip = 0;
        if (kind == '#') {
            const char *e = NULL;
            for (size_t j = i; j + 1 < p->len; j++)
                if (p->src[j] == '#' && p->src[j + 1] == '}') {
                    e = p->src + j;
                    break;
                }
            if (!e) {
                chat_perr(p, k, MC_ERR_FORMAT, "comment opened here is never closed%s%s", NULL,
                          NULL);
                return -1;
            }
            size_t j = (size_t)(e - p->src);
            rstrip = j > i && (p->src[j - 1] == '-' || p->src[j - 1] == '+')
                         ? (p->src[j - 1] == '-' ? 1 : 2)
                         : 0;
            pos = j + 2;
        } else {
            if (chat_push(p, kind == '{' ? T_OUT : T_BLOCK, k, NULL, 0)) return -1;
            if (lex_tag(p, &i, kind == '{' ? '}' : '%', k, &rstrip)) return -1;
            pos = i;
        }
        pending = rstrip == 1 ? 1 : (rstrip == 0 && kind != '{') ? 2 : 0;
    }
}
