/* fuzz_config.c - libFuzzer target for the model config readers.
 *
 * Feeds the input as the text of a config.json (mc_model_desc_parse_any,
 * which picks the Hugging Face or the Mistral reader) and as a Mistral
 * params.json (mc_model_desc_parse_mistral). A rejected input must come
 * back with a message naming the file; an accepted one must pass
 * mc_model_desc_check and stay inside the engine's limits. Any violation
 * aborts, so the fuzzer (or fuzz_driver.c) reports it like a crash. */
#include "model_config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *path, const char *msg)
{
    fprintf(stderr, "fuzz_config: invariant violated: %s (%s: %.300s)\n", what, path, msg);
    abort();
}

static void one(mc_status (*parse)(const char *, size_t, const char *, mc_model_desc *, mc_err *),
                const char *text, size_t size, const char *path)
{
    mc_model_desc *d = malloc(sizeof *d);
    if (!d)
        return;
    mc_err err;
    mc_err_clear(&err);
    mc_status st = parse(text, size, path, d, &err);
    if (st != MC_OK) {
        if (err.status != st || !err.msg[0] || !strstr(err.msg, path))
            fail("failure without a message naming the file", path, err.msg);
        if (strchr(err.msg, '\n'))
            fail("message spans lines", path, err.msg);
        free(d);
        return;
    }
    mc_err_clear(&err);
    if (mc_model_desc_check(d, path, &err) != MC_OK)
        fail("accepted a description that mc_model_desc_check refuses", path, err.msg);
    if (d->n_layers < 1 || d->n_layers > MC_MAX_LAYERS || d->hidden < 1 || d->vocab < 1 ||
        d->n_heads < 1)
        fail("accepted a description outside the limits", path, "");
    free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the readers take a length; give them no terminator to lean on */
    const char *text = (const char *)data;
    one(mc_model_desc_parse_any, text, size, "fuzz/config.json");
    one(mc_model_desc_parse_mistral, text, size, "fuzz/params.json");
    return 0;
}
