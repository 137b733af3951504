/* fuzz_tokenizer.c - libFuzzer target for the tokenizer's encoder and decoder.
 *
 * Encodes the input bytes with the gpt4-bpe-2k tokenizer of
 * tests/fixtures/tokenizers (its path from the MC_FUZZ_TOKENIZER environment
 * variable, else the one compiled in). Invariants: invalid UTF-8 is refused
 * with MC_ERR_ARG and a one-line message; valid UTF-8 encodes to ids inside
 * the vocabulary that decode back to exactly the input (byte-level BPE is
 * lossless). The input read as little-endian 16-bit ids must decode, or be
 * refused as an unknown id. Any violation aborts. */
#include "tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MC_FUZZ_TOKENIZER_JSON
#define MC_FUZZ_TOKENIZER_JSON "tests/fixtures/tokenizers/gpt4-bpe-2k/tokenizer.json"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_tokenizer: invariant violated: %s (%.300s)\n", what, msg);
    abort();
}

static mc_tokenizer *tok;

static int valid_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = mc_utf8_len(s + i, n - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mc_err err;
    if (!tok) {
        const char *path = getenv("MC_FUZZ_TOKENIZER");
        mc_err_clear(&err);
        if (mc_tokenizer_load(path ? path : MC_FUZZ_TOKENIZER_JSON, &tok, &err) != MC_OK) {
            fprintf(stderr, "fuzz_tokenizer: cannot load the tokenizer: %s\n", err.msg);
            abort();
        }
    }
    int32_t *ids = NULL;
    size_t n = 0;
    mc_err_clear(&err);
    mc_status st = mc_tokenizer_encode(tok, (const char *)data, size, 0, &ids, &n, &err);
    if (!valid_utf8(data, size)) {
        if (st != MC_ERR_ARG || !strstr(err.msg, "UTF-8") || strchr(err.msg, '\n'))
            fail("invalid UTF-8 not refused with a message", err.msg);
    } else {
        if (st != MC_OK)
            fail("valid UTF-8 refused", err.msg);
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= mc_tokenizer_vocab_size(tok))
                fail("id outside the vocabulary", "");
        char *text = NULL;
        size_t len = 0;
        mc_err_clear(&err);
        if (mc_tokenizer_decode(tok, ids, n, &text, &len, &err) != MC_OK)
            fail("own ids do not decode", err.msg);
        if (len != size || (size && memcmp(text, data, size)))
            fail("decode(encode(x)) != x", "");
        free(text);
    }
    free(ids);

    /* arbitrary ids */
    size_t m = size / 2;
    int32_t *raw = malloc((m ? m : 1) * sizeof *raw);
    if (!raw)
        return 0;
    for (size_t i = 0; i < m; i++)
        raw[i] = (int32_t)(data[2 * i] | (data[2 * i + 1] << 8)) - 8;
    char *text = NULL;
    size_t len = 0;
    mc_err_clear(&err);
    st = mc_tokenizer_decode(tok, raw, m, &text, &len, &err);
    if (st != MC_OK && (st != MC_ERR_ARG || !strstr(err.msg, "unknown token id")))
        fail("decode failed without naming the id", err.msg);
    if (st == MC_OK && (!text || strlen(text) != len || !valid_utf8((const uint8_t *)text, len)))
        fail("decoded text is not NUL-terminated valid UTF-8", "");
    free(text);
    free(raw);
    return 0;
}
