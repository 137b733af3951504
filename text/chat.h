/* chat.h - chat templates: the Jinja2 template of a model's
 * tokenizer_config.json ("chat_template"), rendered as Hugging Face
 * transformers renders it (trim_blocks and lstrip_blocks on, the trailing
 * newline of the template dropped), and the end ids of generation_config.json.
 *
 * The interpreter covers the subset of Jinja2 that the chat templates of
 * DeepSeek-V3, Qwen3, Llama 4 and Mistral use; anything else is refused with
 * a message naming the template line and column (docs/tokenizer.md, "Chat
 * templates"). Rendering is bounded: nesting depth, loop iterations and
 * output size.
 *
 * An mc_chat is immutable after loading: renders may run from several
 * threads at once.
 */
#ifndef MC_CHAT_H
#define MC_CHAT_H

#include "status.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mc_chat mc_chat;

/* Largest template (bytes), rendered output (bytes), loop iterations of one
 * render (all loops together) and nesting depth (blocks and expressions). */
#define MC_CHAT_MAX_TEMPLATE (1u << 20)
#define MC_CHAT_MAX_OUTPUT (64u << 20)
#define MC_CHAT_MAX_ITERS 1000000
#define MC_CHAT_MAX_DEPTH 64
/* Most end ids read from generation_config.json. */
#define MC_CHAT_MAX_EOS 16

/* Loads the chat template of `path`: a tokenizer_config.json, or a folder
 * holding one. chat_template may be a string or a list of {name, template}
 * (the one named "default" is taken). bos_token / eos_token (strings or
 * {"content": ...} objects) and the other special tokens become template
 * variables. A folder or file without a template gives MC_ERR_NOT_FOUND
 * ("no chat template in ...: serve completions only"); a template outside
 * the supported subset gives MC_ERR_UNSUPPORTED naming line and column.
 * *out is freed with mc_chat_free. */
mc_status mc_chat_load(const char *path, mc_chat **out, mc_err *err);

/* Same, from a template's text (len bytes, no terminator needed);
 * bos / eos may be NULL (the variables are then undefined). `name` is used
 * in messages. */
mc_status mc_chat_load_template(const char *text, size_t len, const char *bos, const char *eos,
                                const char *name, mc_chat **out, mc_err *err);

void mc_chat_free(mc_chat *c);

/* Renders `messages` (a JSON array of objects with "role", "content" and,
 * when present, "tool_calls" etc.; borrowed) with add_generation_prompt.
 * `vars` (a JSON object or NULL; borrowed) adds or overrides variables, e.g.
 * "tools" or Qwen3's "enable_thinking". *text is malloc'd and NUL-terminated
 * (the caller frees it); *len excludes the NUL. raise_exception(msg) in the
 * template fails with MC_ERR_ARG and the message. */
mc_status mc_chat_render(const mc_chat *c, json_t *messages, int add_generation_prompt,
                         json_t *vars, char **text, size_t *len, mc_err *err);

/* The end ids of `path` (a generation_config.json, or a folder holding
 * one): eos_token_id as an int or a list (Llama 4 has three), at most `cap`
 * (<= MC_CHAT_MAX_EOS) ids into ids[], the count in *n. A missing file or
 * key gives MC_ERR_NOT_FOUND; a negative or non-integer id, or more than
 * cap, MC_ERR_FORMAT. */
mc_status mc_chat_eos_ids(const char *path, int32_t *ids, size_t cap, size_t *n, mc_err *err);

#endif
