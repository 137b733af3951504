/* fuzz_chat.c - libFuzzer target for the chat template interpreter
 * (text/chat.h).
 *
 * The input is a template. It must either be refused with a non-OK status
 * and a one-line message, or compile; a compiled template is rendered with a
 * fixed conversation (system, user, an assistant turn with tool calls, a
 * tool result) and a tools list. A render either fails the same way or
 * gives a NUL-terminated text within MC_CHAT_MAX_OUTPUT. Any violation
 * (or a crash, a leak, a hang under the bounds) aborts. */
#include "chat.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_chat: invariant violated: %s (%.300s)\n", what, msg);
    abort();
}

static void check_err(mc_status st, const mc_err *err) {
    if (st == MC_OK || err->status == MC_OK || !err->msg[0])
        fail("a failure without a status and a message", err->msg);
    if (strchr(err->msg, '\n')) fail("an error message of more than one line", err->msg);
}

static const char conversation[] =
    "{\"messages\": ["
    "{\"role\": \"system\", \"content\": \"Be brief.\"},"
    "{\"role\": \"user\", \"content\": \"What is 2+3? \\u00e9\"},"
    "{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\": \"function\","
    " \"function\": {\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 2, \\\"b\\\": 3}\"}}]},"
    "{\"role\": \"tool\", \"content\": \"5\"},"
    "{\"role\": \"assistant\", \"content\": \"<think>sum</think>5\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"add\","
    " \"parameters\": {\"type\": \"object\"}}}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static json_t *vars;
    if (!vars) {
        json_error_t je;
        if (!(vars = json_loads(conversation, 0, &je)))
            fail("the conversation does not parse", je.text);
    }
    mc_err err;
    mc_err_clear(&err);
    mc_chat *c = NULL;
    mc_status st = mc_chat_load_template((const char *)data, size, "<s>", "</s>", "fuzz", &c, &err);
    if (st != MC_OK) {
        check_err(st, &err);
        if (c) fail("a template returned with an error", err.msg);
        return 0;
    }
    for (int agp = 0; agp < 2; agp++) {
        char *text = NULL;
        size_t len = 0;
        mc_err_clear(&err);
        st = mc_chat_render(c, json_object_get(vars, "messages"), agp, vars, &text, &len, &err);
        if (st != MC_OK) {
            check_err(st, &err);
            if (text) fail("a text returned with an error", err.msg);
            continue;
        }
        if (!text || len > MC_CHAT_MAX_OUTPUT || text[len] != 0)
            fail("a rendered text out of bounds or not terminated", "");
        free(text);
    }
    mc_chat_free(c);
    return 0;
}
