/* demo.h - the demo model `serve` and `batch` use when no --model is given:
 * a small synthetic DeepSeek-V3-shaped checkpoint (random weights, made by
 * the same code as `moecluster synth`) whose vocabulary is the bundled
 * DeepSeek-V3 tokenizer's, with that tokenizer's tokenizer.json,
 * tokenizer_config.json (chat template) and a generation_config.json, so
 * that `moecluster serve` alone works on a fresh machine. Made once and
 * cached (docs/serving.md, "Demo model").
 */
#ifndef MC_DEMO_H
#define MC_DEMO_H

#include "status.h"

#include <stddef.h>

/* Writes the demo model folder's path to out (cap bytes), making the model
 * first when it is not in the cache yet (with a progress line on stderr
 * unless quiet). The cache is $MC_CACHE_DIR, else $XDG_CACHE_HOME/moecluster,
 * else $HOME/.cache/moecluster; a half-made folder is never used (made
 * under a temporary name, then renamed). MC_ERR_* with one line naming
 * the path on failure (no cache folder, disk full, tokenizer files not
 * found). */
mc_status mc_demo_model_dir(char *out, size_t cap, int quiet, mc_err *err);

#endif
