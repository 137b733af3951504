/* fuzz_step_plan.c - libFuzzer target for the step-plan decoder.
 *
 * Feeds the input to mc_control_unpack_step (bytes -> ControlMessage ->
 * mc_step_plan) and, when it decodes, to mc_step_plan_check against fixed
 * limits. A refusal must come back as one line (no control characters) with
 * the status it returned and an empty plan; an accepted plan must hold what
 * the check promises (tokens inside the vocabulary, blocks inside the pool,
 * tables long enough, positions inside the context, the token budget kept)
 * and survive a pack/unpack round trip unchanged. Any violation aborts, so
 * the fuzzer (or fuzz_driver.c) reports it like a crash; leaks show up under
 * the address sanitizer. */
#include "control.h"
#include "step_plan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_step_plan: invariant violated: %s (%.300s)\n", what, msg);
    abort();
}

static void one_line(const mc_err *err, mc_status st)
{
    if (err->status != st || !err->msg[0])
        fail("failure without a message", err->msg);
    for (const char *q = err->msg; *q; q++)
        if ((unsigned char)*q < 0x20)
            fail("control character in the message", err->msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const mc_step_limits lim = {
        .vocab = 1000, .n_blocks = 256, .block_size = 4, .max_pos = 512, .max_batch_tokens = 256};
    mc_step_plan plan;
    memset(&plan, 0x5a, sizeof plan);
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_control_unpack_step(data, size, &plan, &err);
    if (st != MC_OK) {
        one_line(&err, st);
        if (plan.n_seqs || plan.seqs)
            fail("plan not empty after a failure", err.msg);
        return 0;
    }
    mc_err_clear(&err);
    st = mc_step_plan_check(&plan, &lim, &err);
    if (st != MC_OK) {
        one_line(&err, st);
        if (!strstr(err.msg, "seqs"))
            fail("refusal that names no field", err.msg);
        mc_step_plan_free(&plan);
        return 0;
    }
    uint64_t tokens = 0;
    for (uint32_t i = 0; i < plan.n_seqs; i++) {
        const mc_step_seq *s = &plan.seqs[i];
        uint64_t end = (uint64_t)s->start_pos + s->n_tokens;
        if (!s->n_tokens || end > lim.max_pos ||
            s->n_blocks < (end + lim.block_size - 1) / lim.block_size)
            fail("accepted an entry whose positions do not fit", "");
        for (uint32_t t = 0; t < s->n_tokens; t++)
            if (s->tokens[t] >= lim.vocab)
                fail("accepted a token past the vocabulary", "");
        for (uint32_t b = 0; b < s->n_blocks; b++)
            if (s->blocks[b] >= lim.n_blocks)
                fail("accepted a block past the pool", "");
        tokens += s->n_tokens;
    }
    if (tokens > lim.max_batch_tokens)
        fail("accepted a plan over the token budget", "");

    /* round trip: the accepted plan packs and decodes to itself */
    uint8_t *buf = NULL;
    size_t len = 0;
    mc_step_plan back;
    if (mc_control_pack_step(&plan, &buf, &len, &err) != MC_OK)
        fail("accepted plan does not pack", err.msg);
    if (mc_control_unpack_step(buf, len, &back, &err) != MC_OK)
        fail("packed plan does not decode", err.msg);
    int same = back.step_id == plan.step_id && back.n_seqs == plan.n_seqs;
    for (uint32_t i = 0; same && i < plan.n_seqs; i++) {
        const mc_step_seq *x = &plan.seqs[i], *y = &back.seqs[i];
        same = x->seq_id == y->seq_id && x->start_pos == y->start_pos &&
               x->n_tokens == y->n_tokens && x->n_blocks == y->n_blocks && x->logits == y->logits &&
               x->top_k == y->top_k &&
               !memcmp(x->tokens, y->tokens, x->n_tokens * sizeof *x->tokens) &&
               !memcmp(x->blocks, y->blocks, x->n_blocks * sizeof *x->blocks);
    }
    if (!same)
        fail("round trip changed the plan", "");
    free(buf);
    mc_step_plan_free(&back);
    mc_step_plan_free(&plan);
    return 0;
}
