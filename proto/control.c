/* control.c - size bound, version check and body check around protoc-c's
 * generated ControlMessage code.
 *
 * Bytes: a ControlMessage encoding starts with its version field when the
 * version is non-zero (protobuf-c writes fields in field-number order):
 *   0x08                      key: field 1, wire type 0 (varint)
 *   varint                    version, 1..10 bytes
 *   key + length + bytes      the one body field (2..7, wire type 2)
 * mc_control_unpack() reads that leading version before decoding the body,
 * so a peer of another version gets "version N" rather than "garbage".
 */
#include "control.h"

#include <stdlib.h>

void mc_control_init(ControlMessage *msg)
{
    control_message__init(msg);
    msg->version = MC_CONTROL_VERSION;
}

const char *mc_control_body_name(const ControlMessage *msg)
{
    if (!msg)
        return "none";
    switch (msg->body_case) {
    case CONTROL_MESSAGE__BODY_HELLO:
        return "hello";
    case CONTROL_MESSAGE__BODY_STEP:
        return "step";
    case CONTROL_MESSAGE__BODY_RESULT:
        return "result";
    case CONTROL_MESSAGE__BODY_HEARTBEAT:
        return "heartbeat";
    case CONTROL_MESSAGE__BODY_SHUTDOWN:
        return "shutdown";
    case CONTROL_MESSAGE__BODY_ERROR:
        return "error";
    default:
        return "none";
    }
}

/* The body pointer of the current oneof case (NULL when the case is set but
 * the pointer is not, which protobuf-c would otherwise dereference). */
static const void *body_ptr(const ControlMessage *msg)
{
    switch (msg->body_case) {
    case CONTROL_MESSAGE__BODY_HELLO:
        return msg->hello;
    case CONTROL_MESSAGE__BODY_STEP:
        return msg->step;
    case CONTROL_MESSAGE__BODY_RESULT:
        return msg->result;
    case CONTROL_MESSAGE__BODY_HEARTBEAT:
        return msg->heartbeat;
    case CONTROL_MESSAGE__BODY_SHUTDOWN:
        return msg->shutdown;
    case CONTROL_MESSAGE__BODY_ERROR:
        return msg->error;
    default:
        return NULL;
    }
}

mc_status mc_control_pack(const ControlMessage *msg, uint8_t **buf, size_t *len)
{
    if (!buf || !len)
        return MC_ERR_ARG;
    *buf = NULL;
    *len = 0;
    if (!msg || msg->version != MC_CONTROL_VERSION || !body_ptr(msg))
        return MC_ERR_ARG;

    size_t n = control_message__get_packed_size(msg);
    if (n > MC_CONTROL_MAX_BYTES)
        return MC_ERR_OVERFLOW;
    uint8_t *out = malloc(n ? n : 1);
    if (!out)
        return MC_ERR_NOMEM;
    size_t written = control_message__pack(msg, out);
    if (written != n) {
        free(out);
        return MC_ERR_INTERNAL;
    }
    *buf = out;
    *len = n;
    return MC_OK;
}

/* Reads the leading version field if the message starts with one.
 * Returns 1 and sets *version when it does, 0 otherwise (absent or cut off). */
static int peek_version(const uint8_t *buf, size_t len, uint64_t *version)
{
    if (len < 2 || buf[0] != 0x08)
        return 0;
    uint64_t v = 0;
    for (size_t i = 1; i < len && i <= 10; i++) {
        v |= (uint64_t)(buf[i] & 0x7f) << (7 * (i - 1));
        if (!(buf[i] & 0x80)) {
            *version = v;
            return 1;
        }
    }
    return 0;
}

/* Checks that fields which go together agree, so consumers can index them. */
static mc_status check_body(const ControlMessage *m, mc_err *err)
{
    switch (m->body_case) {
    case CONTROL_MESSAGE__BODY_HELLO:
        if (m->hello->world_size == 0 || m->hello->rank >= m->hello->world_size)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "control message: hello from rank %u of world size %u",
                              m->hello->rank, m->hello->world_size);
        break;
    case CONTROL_MESSAGE__BODY_RESULT:
        for (size_t i = 0; i < m->result->n_seqs; i++) {
            const SeqResult *s = m->result->seqs[i];
            if (s->n_top_token_ids != s->n_top_logprobs)
                return mc_err_set(err, MC_ERR_FORMAT,
                                  "control message: step %llu result for sequence %llu has %zu "
                                  "top token ids but %zu logprobs",
                                  (unsigned long long)m->result->step_id,
                                  (unsigned long long)s->seq_id, s->n_top_token_ids,
                                  s->n_top_logprobs);
        }
        break;
    default:
        break;
    }
    return MC_OK;
}

mc_status mc_control_unpack(const uint8_t *buf, size_t len, ControlMessage **out, mc_err *err)
{
    if (!out)
        return mc_err_set(err, MC_ERR_ARG, "mc_control_unpack: out is NULL");
    *out = NULL;
    if (!buf && len > 0)
        return mc_err_set(err, MC_ERR_ARG, "mc_control_unpack: NULL buffer of %zu bytes", len);
    if (len > MC_CONTROL_MAX_BYTES)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "control message of %zu bytes exceeds the limit of %zu bytes", len,
                          MC_CONTROL_MAX_BYTES);

    uint64_t peeked;
    if (peek_version(buf, len, &peeked) && peeked != MC_CONTROL_VERSION)
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "control message version %llu, this build speaks version %u "
                          "(coordinator and workers from different builds?)",
                          (unsigned long long)peeked, MC_CONTROL_VERSION);

    static const uint8_t empty[1];
    ControlMessage *m = control_message__unpack(NULL, len, buf ? buf : empty);
    if (!m)
        return mc_err_set(err, MC_ERR_FORMAT,
                          "control message of %zu bytes does not decode "
                          "(truncated, corrupt or not a ControlMessage)",
                          len);

    mc_status st = MC_OK;
    if (m->version == 0) {
        st = mc_err_set(err, MC_ERR_FORMAT,
                        "control message of %zu bytes has no version field (expected version %u)",
                        len, MC_CONTROL_VERSION);
        goto fail;
    }
    if (m->version != MC_CONTROL_VERSION) {
        st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                        "control message version %u, this build speaks version %u "
                        "(coordinator and workers from different builds?)",
                        m->version, MC_CONTROL_VERSION);
        goto fail;
    }
    if (!body_ptr(m)) {
        st = mc_err_set(err, MC_ERR_FORMAT,
                        "control message of %zu bytes has no body (truncated, or a message "
                        "kind this build does not know)",
                        len);
        goto fail;
    }
    st = check_body(m, err);
    if (st != MC_OK)
        goto fail;
    *out = m;
    return MC_OK;

fail:
    control_message__free_unpacked(m, NULL);
    return st;
}

void mc_control_free(ControlMessage *msg)
{
    if (msg)
        control_message__free_unpacked(msg, NULL);
}

/* ---- step plans: mc_step_plan <-> StepPlan ---- */

mc_status mc_control_pack_step(const mc_step_plan *plan, uint8_t **buf, size_t *len, mc_err *err)
{
    return mc_control_pack_step_release(plan, NULL, 0, buf, len, err);
}

mc_status mc_control_pack_step_release(const mc_step_plan *plan, const uint64_t *release,
                                       size_t n_release, uint8_t **buf, size_t *len, mc_err *err)
{
    if (!buf || !len)
        return mc_err_set(err, MC_ERR_ARG, "mc_control_pack_step: NULL output");
    *buf = NULL;
    *len = 0;
    if (!plan || (plan->n_seqs && !plan->seqs))
        return mc_err_set(err, MC_ERR_ARG, "mc_control_pack_step: NULL plan");
    if ((n_release && !release) || n_release > MC_STEP_MAX_SEQS)
        return mc_err_set(err, MC_ERR_ARG, "mc_control_pack_step: %zu release ids (at most %u)",
                          n_release, MC_STEP_MAX_SEQS);

    /* The generated structs take non-const arrays; packing only reads them. */
    size_t n = plan->n_seqs;
    SeqEntry *entries = malloc((n ? n : 1) * sizeof *entries);
    SeqEntry **ptrs = malloc((n ? n : 1) * sizeof *ptrs);
    Draw *draws = malloc((n ? n : 1) * sizeof *draws);
    mc_status st = MC_OK;
    if (!entries || !ptrs || !draws) {
        st = mc_err_set(err, MC_ERR_NOMEM, "step plan: out of memory packing %zu sequences", n);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const mc_step_seq *s = &plan->seqs[i];
        SeqEntry *e = &entries[i];
        seq_entry__init(e);
        e->seq_id = s->seq_id;
        e->n_token_ids = s->n_tokens;
        e->token_ids = s->tokens;
        e->start_pos = s->start_pos;
        e->want_logits = s->logits != MC_LOGITS_NONE;
        e->logits = (LogitsMode)s->logits;
        e->top_k = s->top_k;
        e->n_kv_blocks = s->n_blocks;
        e->kv_blocks = s->blocks;
        if (s->has_draw) {
            draw__init(&draws[i]);
            draws[i].temperature = s->draw.temperature;
            draws[i].top_k = s->draw.top_k;
            draws[i].top_p = s->draw.top_p;
            draws[i].min_p = s->draw.min_p;
            draws[i].state = s->draw.state;
            e->draw = &draws[i];
        }
        ptrs[i] = e;
    }
    StepPlan step = STEP_PLAN__INIT;
    step.step_id = plan->step_id;
    step.n_seqs = n;
    step.seqs = ptrs;
    step.n_release = n_release;
    step.release = (uint64_t *)release; /* read only by the packer */
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_STEP;
    msg.step = &step;
    st = mc_control_pack(&msg, buf, len);
    if (st != MC_OK)
        st = mc_err_set(err, st,
                        st == MC_ERR_OVERFLOW ? "step plan %llu: encoding is over %zu bytes"
                                              : "step plan %llu: packing failed (limit %zu bytes)",
                        (unsigned long long)plan->step_id, MC_CONTROL_MAX_BYTES);
fail:
    free(entries);
    free(ptrs);
    free(draws);
    return st;
}

mc_status mc_control_step_to_plan(const StepPlan *msg, mc_step_plan *out, mc_err *err)
{
    if (!out)
        return mc_err_set(err, MC_ERR_ARG, "mc_control_step_to_plan: out is NULL");
    mc_step_plan_init(out);
    if (!msg)
        return mc_err_set(err, MC_ERR_ARG, "mc_control_step_to_plan: msg is NULL");
    if (msg->n_release > MC_STEP_MAX_SEQS)
        return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: release: %zu ids, at most %u",
                          (unsigned long long)msg->step_id, msg->n_release, MC_STEP_MAX_SEQS);
    if (msg->n_seqs > MC_STEP_MAX_SEQS)
        return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: seqs: %zu entries, at most %u",
                          (unsigned long long)msg->step_id, msg->n_seqs, MC_STEP_MAX_SEQS);
    /* bound every count before the first allocation */
    uint64_t tokens = 0, blocks = 0;
    for (size_t i = 0; i < msg->n_seqs; i++) {
        const SeqEntry *e = msg->seqs[i];
        if (!e)
            return mc_err_set(err, MC_ERR_FORMAT, "step plan %llu: seqs[%zu]: missing entry",
                              (unsigned long long)msg->step_id, i);
        tokens += e->n_token_ids;
        blocks += e->n_kv_blocks;
        if (tokens > MC_STEP_MAX_TOKENS)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "step plan %llu: seqs[%zu].token_ids: %llu tokens up to here, at "
                              "most %u per step",
                              (unsigned long long)msg->step_id, i, (unsigned long long)tokens,
                              MC_STEP_MAX_TOKENS);
        if (blocks > MC_STEP_MAX_BLOCKS)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "step plan %llu: seqs[%zu].kv_blocks: %llu block ids up to here, at "
                              "most %u per step",
                              (unsigned long long)msg->step_id, i, (unsigned long long)blocks,
                              MC_STEP_MAX_BLOCKS);
        if ((unsigned)e->logits >= MC_LOGITS_COUNT)
            return mc_err_set(err, MC_ERR_FORMAT,
                              "step plan %llu: seqs[%zu].logits: unknown mode %d",
                              (unsigned long long)msg->step_id, i, (int)e->logits);
    }
    out->step_id = msg->step_id;
    for (size_t i = 0; i < msg->n_seqs; i++) {
        const SeqEntry *e = msg->seqs[i];
        mc_logits_mode mode = (mc_logits_mode)e->logits;
        if (mode == MC_LOGITS_NONE && e->want_logits)
            mode = MC_LOGITS_LAST; /* want_logits alone: the last token */
        mc_status st = mc_step_plan_add_seq(out, e->seq_id, e->start_pos, e->token_ids,
                                            (uint32_t)e->n_token_ids, e->kv_blocks,
                                            (uint32_t)e->n_kv_blocks, mode, e->top_k, err);
        if (st == MC_OK && e->draw) {
            mc_step_draw d = {.temperature = e->draw->temperature,
                              .top_k = e->draw->top_k,
                              .top_p = e->draw->top_p,
                              .min_p = e->draw->min_p,
                              .state = e->draw->state};
            st = mc_step_plan_set_draw(out, &d, err);
        }
        if (st != MC_OK) {
            mc_step_plan_free(out);
            return st;
        }
    }
    return MC_OK;
}

mc_status mc_control_unpack_step(const uint8_t *buf, size_t len, mc_step_plan *out, mc_err *err)
{
    if (!out)
        return mc_err_set(err, MC_ERR_ARG, "mc_control_unpack_step: out is NULL");
    mc_step_plan_init(out);
    ControlMessage *m = NULL;
    mc_status st = mc_control_unpack(buf, len, &m, err);
    if (st != MC_OK)
        return st;
    if (m->body_case != CONTROL_MESSAGE__BODY_STEP)
        st = mc_err_set(err, MC_ERR_FORMAT, "control message: expected a step plan, got %s",
                        mc_control_body_name(m));
    else
        st = mc_control_step_to_plan(m->step, out, err);
    mc_control_free(m);
    return st;
}
