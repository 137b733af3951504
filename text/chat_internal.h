/* chat_internal.h - the chat template interpreter's syntax tree, shared by
 * chat_parse.c (lexer and parser), chat_eval.c (the evaluator) and
 * chat_fn.c (filters, tests, methods, value printing). Not a public header.
 *
 * Values are jansson values (strings, integers, reals, true / false / null,
 * arrays, objects); Jinja's "undefined" is one sentinel object per render.
 */
#ifndef MC_CHAT_INTERNAL_H
#define MC_CHAT_INTERNAL_H

#include "chat.h"
#include "tokenizer.h"

/* Bounds of one render beyond chat.h's: containers built that hold a
 * container (so values nest at most this deep, and freeing or printing them
 * cannot exhaust the stack), and namespace() objects. */
#define MC_CHAT_MAX_NEST 4096
#define MC_CHAT_MAX_NAMESPACES 1024

enum {
    /* statements */
    CN_BODY, /* kids: statements */
    CN_TEXT, /* name: the text (len in n) */
    CN_OUT,  /* kids[0]: expression */
    CN_IF,   /* kids: cond0, body0, cond1, body1, ..., [else body: cond NULL] */
    CN_FOR,  /* names: targets (n of them); kids: iter, filter or NULL, body, else or NULL */
    CN_SET,  /* name: variable; attr: attribute or NULL; kids[0]: value */
    CN_BREAK,
    CN_CONTINUE,
    /* expressions */
    CN_LIT,    /* lit */
    CN_NAME,   /* name */
    CN_ATTR,   /* kids[0]; name */
    CN_ITEM,   /* kids[0], kids[1] */
    CN_SLICE,  /* kids[0], start, stop, step (each may be NULL) */
    CN_CALL,   /* kids[0]: callee (a name or an attribute: a method); args; names: keyword names */
    CN_FILTER, /* name; kids[0]: value, then args; names: keyword names */
    CN_TEST,   /* name; op: negated; kids[0]: value, then args */
    CN_BIN,    /* op; kids[0], kids[1] */
    CN_NOT,    /* kids[0] */
    CN_NEG,    /* kids[0] */
    CN_COND,   /* kids: value, cond, else-value or NULL */
    CN_LIST,   /* kids: items */
    CN_DICT,   /* kids: key, value, key, value, ... */
};

/* binary operators (CN_BIN op) */
enum {
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FLOORDIV,
    OP_MOD,
    OP_CAT,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_IN,
    OP_NOTIN,
    OP_AND,
    OP_OR
};

typedef struct cnode {
    int kind, op;
    int line, col;
    char *name;  /* malloc'd */
    char *attr;  /* malloc'd */
    size_t n;    /* CN_TEXT: length of name; CN_FOR: number of targets */
    json_t *lit; /* owned */
    struct cnode **kids;
    int nkids;
    char **names; /* CN_FOR targets; CN_CALL / CN_FILTER keyword names (NULL: positional) */
    int nnames;
} cnode;

struct mc_chat {
    char *name;  /* for messages */
    cnode *root; /* CN_BODY */
    cnode **all; /* every node, for freeing */
    size_t n_all, cap_all;
    json_t *globals; /* bos_token, eos_token, ... (object) */
};

/* ---- lexer (chat_lex.c) and parser (chat_parse.c) ---- */
enum { T_TEXT, T_OUT, T_BLOCK, T_END, T_NAME, T_STR, T_INT, T_FLOAT, T_OP, T_EOF };

typedef struct {
    int type;
    size_t off;  /* byte offset in the source, for line / column */
    char *s;     /* T_TEXT, T_NAME, T_STR: malloc'd; T_OP: the operator */
    size_t n;    /* length of s */
    long long i; /* T_INT */
    double f;    /* T_FLOAT */
} ctok;

typedef struct cparser {
    mc_chat *c;
    const char *src;
    size_t len;
    ctok *t;
    size_t nt, cap, pos;
    int depth, loops;
    mc_err *err;
    int failed;
} cparser;

/* Lexes p->src into p->t (ends with T_EOF); 0, or -1 with the error set. */
int chat_lex(cparser *p);
int chat_push(cparser *p, int type, size_t off, const char *s, size_t n);
/* Line and column (1-based, in code points) of byte offset off. */
void chat_where(const cparser *p, size_t off, int *line, int *col);
/* Records the first error: "NAME: line L column C: " + fmt with a and b. */
void chat_perr(cparser *p, size_t off, mc_status s, const char *fmt, const char *a, const char *b);

/* Parses `len` bytes of template into c->root (nodes recorded in c->all).
 * Errors name c->name, line and column. */
mc_status chat_parse(mc_chat *c, const char *src, size_t len, mc_err *err);
void chat_nodes_free(mc_chat *c);

/* --- evaluation context (chat_eval.c) --- */
typedef struct {
    const mc_chat *c;
    json_t *undef;      /* the undefined sentinel */
    json_t *namespaces; /* the namespace() objects of this render (assignable) */
    json_t **scopes;    /* innermost last */
    int n_scopes;
    char *out;
    size_t len, cap;
    long iters;
    int depth;
    int brk;    /* 1: break, 2: continue pending */
    long nests; /* containers built holding a container (bounded) */
    mc_err *err;
} chat_ctx;

/* chat_fn.c: new reference or NULL with err set (position of node n). */
json_t *chat_filter(chat_ctx *x, const cnode *n, json_t *v, json_t **args, char **kw, int na);
int chat_test(chat_ctx *x, const cnode *n, json_t *v, json_t **args, int na); /* 0/1, -1 error */
json_t *chat_method(chat_ctx *x, const cnode *n, json_t *obj, const char *m, json_t **args, int na);
/* Appends str(v) as Python / Jinja print it to the output (repr = 1: as an
 * item of a list). Returns 0, or -1 when out of memory or over the bound. */
int chat_emit_value(chat_ctx *x, json_t *v, int repr);
int chat_emit(chat_ctx *x, const char *s, size_t n);
/* str(v) as a new json string (NULL on error). */
json_t *chat_str(chat_ctx *x, json_t *v);
int chat_truthy(chat_ctx *x, json_t *v);
int chat_equal(json_t *a, json_t *b);
json_t *chat_error(chat_ctx *x, const cnode *n, mc_status s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* First occurrence of needle (nn bytes) in hay (hn bytes), or NULL (nn 0:
 * hay). */
const char *chat_find(const char *hay, size_t hn, const char *needle, size_t nn);
/* Number of code points of a valid UTF-8 string. */
size_t chat_u8_count(const char *s, size_t n);
/* Byte offset of code point i (clamped to n). */
size_t chat_u8_offset(const char *s, size_t n, size_t i);

#endif
