/* tok_internal.h - the fields of mc_tokenizer, shared by text/tok_*.c only.
 *
 * Vocabulary entries are kept in the byte domain: the ByteLevel characters
 * of tokenizer.json ("Ġthe") are turned back into the bytes they stand for
 * (" the") at load time, so the BPE merges run on bytes and decoding is a
 * concatenation.
 */
#ifndef MC_TOK_INTERNAL_H
#define MC_TOK_INTERNAL_H

#include "tokenizer.h"

#include <jansson.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Open-addressing map: byte string -> id, strings borrowed from the
 * tokenizer's token table. */
typedef struct {
    uint32_t mask;  /* capacity - 1 (capacity a power of two) */
    int32_t *slots; /* (capacity) id, or -1 for empty */
} tok_strmap;

/* Open-addressing map: (left id, right id) -> merge rank and merged id. */
typedef struct {
    uint32_t mask;
    uint64_t *keys;  /* (capacity) left << 32 | right, UINT64_MAX when empty */
    int32_t *rank;   /* (capacity) */
    int32_t *merged; /* (capacity) */
} tok_pairmap;

typedef struct {
    char *content; /* malloc'd, NUL terminated; matched on the raw text */
    uint32_t len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} tok_added;

enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_PREPEND, NORM_REPLACE };
typedef struct {
    int kind;
    char *a, *b; /* Prepend: a; Replace: a -> b (malloc'd) */
} tok_norm;

enum { PRE_SPLIT, PRE_BYTELEVEL }; /* Digits is a Split on \p{N} */
enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_PREV, SPLIT_NEXT, SPLIT_CONTIGUOUS };
typedef struct {
    int kind;
    pcre2_code *re; /* Split, and ByteLevel with use_regex */
    int behavior, invert;
    int add_prefix_space;  /* ByteLevel */
} tok_pre;

#define TOK_MAX_STEPS 32
#define TOK_MAX_SPECIAL 8

struct mc_tokenizer {
    char *name;    /* file name for messages */
    int32_t n_ids; /* one past the largest id */
    /* per id: the bytes a token stands for (decode), in one pool */
    uint64_t *tok_off; /* (n_ids) offset into pool, UINT64_MAX for no token */
    uint32_t *tok_len; /* (n_ids) */
    uint8_t *is_vocab; /* (n_ids) 1: a model.vocab entry (reachable by BPE) */
    char *pool;
    uint64_t pool_len, pool_cap;
    tok_strmap vocab; /* byte string -> id, model.vocab entries only */
    tok_pairmap merges;
    int32_t byte_id[256]; /* id of each single byte, -1 if none */
    int ignore_merges;

    tok_added *added; /* (n_added) sorted by length, longest first */
    int n_added;
    int added_first[256]; /* first index in `added_by_byte` of each first byte */
    int added_count[256];
    int *added_by_byte; /* (n_added) indices into `added`, bucketed by first byte */

    tok_norm norm[TOK_MAX_STEPS];
    int n_norm;
    tok_pre pre[TOK_MAX_STEPS];
    int n_pre;

    int32_t prefix[TOK_MAX_SPECIAL], suffix[TOK_MAX_SPECIAL]; /* added by add_special */
    int n_prefix, n_suffix;
};

/* tok_bpe.c */
uint32_t tok_hash(const char *s, size_t n);
/* Id of the vocabulary entry with exactly these bytes, or -1. */
int32_t tok_vocab_find(const mc_tokenizer *t, const char *s, size_t n);
/* Appends the ids of one pre-tokenized piece to *ids (growing *cap). */
mc_status tok_bpe_piece(const mc_tokenizer *t, const char *s, size_t n, int32_t **ids,
                        size_t *n_ids, size_t *cap, mc_err *err);
/* Adds a merge unless the pair has one already (the map has room). */
void tok_pair_insert(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
mc_status tok_push_id(int32_t id, int32_t **ids, size_t *n_ids, size_t *cap, mc_err *err);
/* Byte-level character -> byte (the inverse of mc_tok_byte_to_char); the
 * code point in, -1 when it is not in the alphabet. */
int tok_char_to_byte(uint32_t cp);
/* Decodes a UTF-8 string of ByteLevel characters into bytes (out holds at
 * least n bytes); returns the byte count, or -1 when a character is not in
 * the alphabet. */
long tok_bytelevel_decode(const char *s, size_t n, char *out);

/* tok_pretok.c */
/* Parses "normalizer" / "pre_tokenizer" of tokenizer.json (j may be JSON
 * null) into t. */
mc_status tok_parse_normalizer(mc_tokenizer *t, json_t *j, mc_err *err);
mc_status tok_parse_pre_tokenizer(mc_tokenizer *t, json_t *j, mc_err *err);
void tok_free_steps(mc_tokenizer *t);
/* Normalizes, pre-tokenizes and BPE-encodes one stretch of text without
 * added tokens, appending to *ids. */
mc_status tok_encode_text(const mc_tokenizer *t, const char *s, size_t n, int32_t **ids,
                          size_t *n_ids, size_t *cap, mc_err *err);

#endif
