/* test_control.c - control-plane framing: every message kind survives a
 * pack/unpack round trip field by field; other versions, truncated bytes,
 * garbage and oversized input are refused with a message. */
#include "check.h"
#include "control.h"

#include <stdlib.h>
#include <string.h>

/* Packs msg and unpacks it again; returns the copy (NULL on failure). */
static ControlMessage *round_trip(const ControlMessage *msg)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    mc_status st = mc_control_pack(msg, &buf, &len);
    CHECK(st == MC_OK);
    if (st != MC_OK)
        return NULL;
    ControlMessage *out = NULL;
    mc_err err;
    mc_err_clear(&err);
    st = mc_control_unpack(buf, len, &out, &err);
    if (st != MC_OK)
        fprintf(stderr, "unpack of %s failed: %s\n", mc_control_body_name(msg), err.msg);
    CHECK(st == MC_OK);
    CHECK(out != NULL);
    free(buf);
    if (out) {
        CHECK(out->version == MC_CONTROL_VERSION);
        CHECK(out->body_case == msg->body_case);
        CHECK(strcmp(mc_control_body_name(out), mc_control_body_name(msg)) == 0);
    }
    return out;
}

static void test_hello(void)
{
    uint8_t fp[16];
    for (int i = 0; i < 16; i++)
        fp[i] = (uint8_t)(0xa0 + i);
    Hello hello = HELLO__INIT;
    hello.rank = 3;
    hello.world_size = 8;
    hello.host = "node-07";
    hello.model_fingerprint.data = fp;
    hello.model_fingerprint.len = sizeof fp;
    hello.pid = 4242;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_HELLO;
    msg.hello = &hello;

    ControlMessage *out = round_trip(&msg);
    if (!out)
        return;
    CHECK(out->hello->rank == 3);
    CHECK(out->hello->world_size == 8);
    CHECK(strcmp(out->hello->host, "node-07") == 0);
    CHECK(out->hello->model_fingerprint.len == sizeof fp);
    CHECK(out->hello->model_fingerprint.len == sizeof fp &&
          memcmp(out->hello->model_fingerprint.data, fp, sizeof fp) == 0);
    CHECK(out->hello->pid == 4242);
    mc_control_free(out);
}

static void test_step(void)
{
    uint32_t prefill[5] = {1, 2, 3, 4, 151643};
    uint32_t decode[1] = {77};
    uint32_t blocks[3] = {9, 10, 11};
    SeqEntry a = SEQ_ENTRY__INIT, b = SEQ_ENTRY__INIT;
    a.seq_id = 100;
    a.n_token_ids = 5;
    a.token_ids = prefill;
    a.start_pos = 0;
    a.want_logits = 0;
    a.n_kv_blocks = 3;
    a.kv_blocks = blocks;
    b.seq_id = (uint64_t)1 << 40;
    b.n_token_ids = 1;
    b.token_ids = decode;
    b.start_pos = 4095;
    b.want_logits = 1;
    b.top_k = 20;
    SeqEntry *seqs[2] = {&a, &b};
    StepPlan step = STEP_PLAN__INIT;
    step.step_id = 123456789012ull;
    step.n_seqs = 2;
    step.seqs = seqs;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_STEP;
    msg.step = &step;

    ControlMessage *out = round_trip(&msg);
    if (!out)
        return;
    const StepPlan *s = out->step;
    CHECK(s->step_id == 123456789012ull);
    CHECK(s->n_seqs == 2);
    if (s->n_seqs == 2) {
        const SeqEntry *x = s->seqs[0], *y = s->seqs[1];
        CHECK(x->seq_id == 100);
        CHECK(x->n_token_ids == 5 && memcmp(x->token_ids, prefill, sizeof prefill) == 0);
        CHECK(x->start_pos == 0);
        CHECK(!x->want_logits);
        CHECK(x->n_kv_blocks == 3 && memcmp(x->kv_blocks, blocks, sizeof blocks) == 0);
        CHECK(y->seq_id == (uint64_t)1 << 40);
        CHECK(y->n_token_ids == 1 && y->token_ids[0] == 77);
        CHECK(y->start_pos == 4095);
        CHECK(y->want_logits);
        CHECK(y->top_k == 20);
        CHECK(y->n_kv_blocks == 0);
    }
    mc_control_free(out);
}

static void test_result(void)
{
    enum { VOCAB = 1000 };
    float *logits = malloc(VOCAB * sizeof *logits);
    CHECK(logits != NULL);
    if (!logits)
        return;
    for (int i = 0; i < VOCAB; i++)
        logits[i] = (float)(i % 37) * 0.25f - 4.0f;
    uint32_t ids[3] = {5, 17, 999};
    float lps[3] = {-0.125f, -1.5f, -7.75f};
    SeqResult top = SEQ_RESULT__INIT, full = SEQ_RESULT__INIT;
    top.seq_id = 1;
    top.n_top_token_ids = 3;
    top.top_token_ids = ids;
    top.n_top_logprobs = 3;
    top.top_logprobs = lps;
    full.seq_id = 2;
    full.n_logits = VOCAB;
    full.logits = logits;
    SeqResult *seqs[2] = {&top, &full};
    StepResult res = STEP_RESULT__INIT;
    res.step_id = 42;
    res.rank = 7;
    res.n_seqs = 2;
    res.seqs = seqs;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_RESULT;
    msg.result = &res;

    ControlMessage *out = round_trip(&msg);
    if (out) {
        const StepResult *r = out->result;
        CHECK(r->step_id == 42);
        CHECK(r->rank == 7);
        CHECK(r->n_seqs == 2);
        if (r->n_seqs == 2) {
            const SeqResult *x = r->seqs[0], *y = r->seqs[1];
            CHECK(x->seq_id == 1);
            CHECK(x->n_top_token_ids == 3 && memcmp(x->top_token_ids, ids, sizeof ids) == 0);
            CHECK(x->n_top_logprobs == 3 && memcmp(x->top_logprobs, lps, sizeof lps) == 0);
            CHECK(x->n_logits == 0);
            CHECK(y->seq_id == 2);
            CHECK(y->n_logits == VOCAB);
            int bad = 0;
            for (size_t i = 0; i < y->n_logits && i < VOCAB; i++)
                if (memcmp(&y->logits[i], &logits[i], sizeof(float)) != 0 && bad++ < 5)
                    fprintf(stderr, "logits[%zu]: got %.9g, want %.9g\n", i, y->logits[i],
                            logits[i]);
            CHECK(bad == 0);
        }
        mc_control_free(out);
    }

    /* a result whose ids and logprobs disagree in count is refused */
    top.n_top_logprobs = 2;
    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK(mc_control_pack(&msg, &buf, &len) == MC_OK);
    mc_err err;
    mc_err_clear(&err);
    out = NULL;
    CHECK(mc_control_unpack(buf, len, &out, &err) == MC_ERR_FORMAT);
    CHECK(out == NULL);
    CHECK(strstr(err.msg, "logprobs") != NULL);
    free(buf);
    free(logits);
}

static void test_heartbeat_shutdown_error(void)
{
    Heartbeat hb = HEARTBEAT__INIT;
    hb.rank = 1;
    hb.unix_time_ms = 1732700000123ull;
    hb.load = 0.75f;
    hb.last_step_id = 99;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &hb;
    ControlMessage *out = round_trip(&msg);
    if (out) {
        CHECK(out->heartbeat->rank == 1);
        CHECK(out->heartbeat->unix_time_ms == 1732700000123ull);
        CHECK(out->heartbeat->load == 0.75f);
        CHECK(out->heartbeat->last_step_id == 99);
        mc_control_free(out);
    }

    Shutdown sd = SHUTDOWN__INIT;
    sd.reason = "coordinator exiting";
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_SHUTDOWN;
    msg.shutdown = &sd;
    out = round_trip(&msg);
    if (out) {
        CHECK(strcmp(out->shutdown->reason, "coordinator exiting") == 0);
        mc_control_free(out);
    }

    /* an empty Shutdown is a valid message: the body is present, with no fields */
    Shutdown empty = SHUTDOWN__INIT;
    msg.shutdown = &empty;
    out = round_trip(&msg);
    if (out) {
        CHECK(out->shutdown->reason != NULL && out->shutdown->reason[0] == '\0');
        mc_control_free(out);
    }

    Error e = ERROR__INIT;
    e.code = MC_ERR_IO;
    e.message = "cannot map shard 3: No such file or directory";
    e.rank = 5;
    e.host = "gpu-node-2";
    e.step_id = 17;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_ERROR;
    msg.error = &e;
    out = round_trip(&msg);
    if (out) {
        CHECK(out->error->code == MC_ERR_IO);
        CHECK(strcmp(out->error->message, e.message) == 0);
        CHECK(out->error->rank == 5);
        CHECK(strcmp(out->error->host, "gpu-node-2") == 0);
        CHECK(out->error->step_id == 17);
        mc_control_free(out);
    }
}

/* Expects unpack to refuse (buf, len) with status want and a message containing word. */
static void expect_refused(const char *what, const uint8_t *buf, size_t len, mc_status want,
                           const char *word)
{
    ControlMessage *out = (ControlMessage *)&out; /* must be reset to NULL */
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_control_unpack(buf, len, &out, &err);
    if (st != want || out != NULL || err.status != want || !err.msg[0] ||
        (word && !strstr(err.msg, word)))
        fprintf(stderr, "%s (%zu bytes): status %s, want %s; message \"%s\"\n", what, len,
                mc_status_str(st), mc_status_str(want), err.msg);
    CHECK(st == want);
    CHECK(out == NULL);
    CHECK(err.msg[0] != '\0');
    if (word)
        CHECK(strstr(err.msg, word) != NULL);
    if (st == MC_OK)
        mc_control_free(out);
}

static void test_refused(void)
{
    Heartbeat hb = HEARTBEAT__INIT;
    hb.rank = 2;
    hb.unix_time_ms = 1;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &hb;

    /* pack refuses what unpack would refuse */
    uint8_t *buf = (uint8_t *)&buf;
    size_t len = 1;
    ControlMessage nobody;
    mc_control_init(&nobody);
    CHECK(mc_control_pack(&nobody, &buf, &len) == MC_ERR_ARG);
    CHECK(buf == NULL && len == 0);
    msg.version = MC_CONTROL_VERSION + 1;
    CHECK(mc_control_pack(&msg, &buf, &len) == MC_ERR_ARG);
    CHECK(buf == NULL);
    CHECK(mc_control_pack(NULL, &buf, &len) == MC_ERR_ARG);

    /* another version, encoded by the generated code directly */
    uint8_t wire[256];
    size_t n = control_message__get_packed_size(&msg);
    CHECK(n <= sizeof wire);
    if (n > sizeof wire)
        return;
    control_message__pack(&msg, wire);
    expect_refused("version+1", wire, n, MC_ERR_UNSUPPORTED, "version");
    msg.version = 0xffffffffu;
    n = control_message__pack(&msg, wire);
    expect_refused("version 0xffffffff", wire, n, MC_ERR_UNSUPPORTED, "version");
    msg.version = 0; /* proto3 omits it: no version field at all */
    n = control_message__pack(&msg, wire);
    expect_refused("version absent", wire, n, MC_ERR_FORMAT, "version");

    /* every strict prefix of a good message is refused */
    msg.version = MC_CONTROL_VERSION;
    CHECK(mc_control_pack(&msg, &buf, &len) == MC_OK);
    int accepted = 0;
    for (size_t cut = 0; cut < len; cut++) {
        ControlMessage *out = NULL;
        mc_err err;
        mc_err_clear(&err);
        mc_status st = mc_control_unpack(buf, cut, &out, &err);
        if (st == MC_OK) {
            if (accepted++ < 5)
                fprintf(stderr, "prefix of %zu of %zu bytes was accepted\n", cut, len);
            mc_control_free(out);
        } else if (!err.msg[0]) {
            accepted++;
            fprintf(stderr, "prefix of %zu bytes refused without a message\n", cut);
        }
    }
    CHECK(accepted == 0);
    free(buf);

    /* garbage */
    static const uint8_t ff[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    expect_refused("0xff bytes", ff, sizeof ff, MC_ERR_FORMAT, NULL);
    static const uint8_t text[] = "GET / HTTP/1.1\r\n";
    expect_refused("text", text, sizeof text - 1, MC_ERR_FORMAT, NULL);
    /* right version, then a body whose length runs past the end */
    static const uint8_t long_body[] = {0x08, MC_CONTROL_VERSION, 0x2a, 0x7f, 0x08, 0x01};
    expect_refused("body past end", long_body, sizeof long_body, MC_ERR_FORMAT, "decode");
    /* right version, unknown body field 15 (a newer kind) */
    static const uint8_t unknown[] = {0x08, MC_CONTROL_VERSION, 0x7a, 0x00};
    expect_refused("unknown body", unknown, sizeof unknown, MC_ERR_FORMAT, "no body");
    /* version varint that never ends */
    static const uint8_t endless[12] = {0x08, 0x80, 0x80, 0x80, 0x80, 0x80,
                                        0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
    expect_refused("endless varint", endless, sizeof endless, MC_ERR_FORMAT, NULL);
    /* hello claiming a rank outside its world */
    static const uint8_t bad_hello[] = {0x08, MC_CONTROL_VERSION, 0x12, 0x04,
                                        0x08, 0x05, 0x10, 0x02};
    expect_refused("hello rank 5 of 2", bad_hello, sizeof bad_hello, MC_ERR_FORMAT, "rank 5");
    /* pseudo-random bytes, fixed seed */
    uint8_t noise[512];
    uint32_t x = 12345;
    for (int trial = 0; trial < 200; trial++) {
        size_t nb = 1 + (size_t)(x % sizeof noise);
        for (size_t i = 0; i < nb; i++) {
            x = x * 1664525u + 1013904223u;
            noise[i] = (uint8_t)(x >> 24);
        }
        ControlMessage *out = NULL;
        mc_err err;
        mc_err_clear(&err);
        mc_status st = mc_control_unpack(noise, nb, &out, &err);
        CHECK(st != MC_OK || out != NULL);
        CHECK(st == MC_OK || (out == NULL && err.msg[0]));
        mc_control_free(out);
    }

    /* over the size bound: refused before a single byte is read */
    expect_refused("oversized", ff, MC_CONTROL_MAX_BYTES + 1, MC_ERR_FORMAT, "limit");

    /* bad arguments */
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_control_unpack(NULL, 4, &(ControlMessage *){NULL}, &err) == MC_ERR_ARG);
    CHECK(mc_control_unpack(ff, 4, NULL, NULL) == MC_ERR_ARG);
}

int main(void)
{
    test_hello();
    test_step();
    test_result();
    test_heartbeat_shutdown_error();
    test_refused();
    return check_report("test_control");
}
