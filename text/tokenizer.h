/* tokenizer.h - byte-level BPE tokenizers read from a Hugging Face tokenizer.json.
 *
 * Supports the tokenizers of DeepSeek-V3, Qwen3, Llama 3/4, Mistral's HF
 * conversion and GPT-2/GPT-4-style models: model.type "BPE" over the
 * ByteLevel alphabet, added tokens (special and not), the normalizers
 * Sequence / NFC / NFD / NFKC / NFKD / Lowercase / Prepend / Replace (string
 * pattern), the pre-tokenizers Sequence / Split (regex through PCRE2 with UTF
 * and Unicode properties) / ByteLevel / Digits, the ByteLevel decoder, and
 * the post-processors ByteLevel / TemplateProcessing / Sequence. Anything
 * else is refused at load with a message naming the file and the type.
 * docs/tokenizer.md lists what is supported and what is not.
 *
 * An mc_tokenizer is immutable after loading: encode and decode may run from
 * several threads at once.
 */
#ifndef MC_TOKENIZER_H
#define MC_TOKENIZER_H

#include "status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct mc_tokenizer mc_tokenizer;

/* Largest tokenizer.json read (bytes) and largest vocabulary accepted. */
#define MC_TOK_MAX_FILE (512ull << 20)
#define MC_TOK_MAX_VOCAB (1 << 23)
/* Longest token (bytes of its text) in the vocabulary or the added tokens. */
#define MC_TOK_MAX_TOKEN_BYTES 4096

/* Loads `path`: a tokenizer.json, or a folder holding one. A
 * tokenizer_config.json next to it, when present, supplies add_bos_token /
 * add_eos_token with bos_token / eos_token (as transformers does for
 * LlamaTokenizerFast). On success *out is the tokenizer (free with
 * mc_tokenizer_free); on failure err names the file and what is wrong. */
mc_status mc_tokenizer_load(const char *path, mc_tokenizer **out, mc_err *err);

/* Same, from the text of a tokenizer.json in memory (no terminator needed);
 * `name` is used in messages. No tokenizer_config.json is read. */
mc_status mc_tokenizer_load_json(const char *text, size_t len, const char *name, mc_tokenizer **out,
                                 mc_err *err);

void mc_tokenizer_free(mc_tokenizer *t);

/* Encodes `len` bytes of UTF-8 text (invalid UTF-8 is refused, naming the
 * byte offset). With add_special != 0 the post-processor's special tokens
 * (BOS / EOS) are added. *ids is malloc'd (the caller frees it; NULL when
 * *n_ids is 0). */
mc_status mc_tokenizer_encode(const mc_tokenizer *t, const char *text, size_t len, int add_special,
                              int32_t **ids, size_t *n_ids, mc_err *err);

/* Decodes ids to text: every token, special ones included; byte sequences
 * that are not valid UTF-8 become U+FFFD, as Hugging Face's decoder does.
 * An id outside the vocabulary is refused, naming it. *text is malloc'd and
 * NUL-terminated (the caller frees it); *len excludes the NUL. */
mc_status mc_tokenizer_decode(const mc_tokenizer *t, const int32_t *ids, size_t n_ids, char **text,
                              size_t *len, mc_err *err);

/* Number of ids (one more than the largest id of the vocabulary and the
 * added tokens). */
int32_t mc_tokenizer_vocab_size(const mc_tokenizer *t);

/* Id of a token given by its text (an added token's content, or a
 * vocabulary entry as written in tokenizer.json), or -1. */
int32_t mc_tokenizer_token_id(const mc_tokenizer *t, const char *token);

/* The BOS / EOS ids that add_special adds (-1 when none). */
int32_t mc_tokenizer_bos_id(const mc_tokenizer *t);
int32_t mc_tokenizer_eos_id(const mc_tokenizer *t);

/* The ByteLevel alphabet: the character (UTF-8, 1 or 2 bytes, NUL
 * terminated, into out[3]) that stands for byte b in vocabulary entries. */
void mc_tok_byte_to_char(uint8_t b, char out[3]);

/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 when it is
 * not one (overlong, surrogate, past U+10FFFF, truncated). */
size_t mc_utf8_len(const unsigned char *s, size_t avail);

#endif
