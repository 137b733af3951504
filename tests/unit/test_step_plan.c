/* test_step_plan.c - step plans: C struct -> control message bytes -> C
 * struct gives the same plan field by field; a valid plan mixing prefill
 * chunks and decode tokens is accepted; every malformed plan is refused
 * with a one-line message naming its field; hostile counts in a message are
 * refused before anything is copied. */
#include "check.h"
#include "control.h"
#include "step_plan.h"

#include <stdlib.h>
#include <string.h>

/* A valid plan against LIMITS: seq 11 prefill chunk 0..5 (blocks of 4),
 * seq 12 decode at 9, seq 13 score of 3 tokens, seq 14 decode at 0. */
static const mc_step_limits LIMITS = {
    .vocab = 100, .n_blocks = 32, .block_size = 4, .max_pos = 64, .max_batch_tokens = 16};

static void make_plan(mc_step_plan *p)
{
    mc_err err;
    mc_err_clear(&err);
    mc_step_plan_init(p);
    p->step_id = 77;
    const uint32_t t0[] = {1, 2, 3, 4, 5, 6}, b0[] = {3, 4};
    const uint32_t t1[] = {42}, b1[] = {0, 1, 2};
    const uint32_t t2[] = {7, 8, 99}, b2[] = {9, 10, 11};
    const uint32_t t3[] = {0}, b3[] = {31};
    CHECK(mc_step_plan_add_seq(p, 11, 0, t0, 6, b0, 2, MC_LOGITS_NONE, 0, &err) == MC_OK);
    CHECK(mc_step_plan_add_seq(p, 12, 9, t1, 1, b1, 3, MC_LOGITS_LAST, 5, &err) == MC_OK);
    CHECK(mc_step_plan_add_seq(p, 13, 4, t2, 3, b2, 3, MC_LOGITS_ALL, 0, &err) == MC_OK);
    CHECK(mc_step_plan_add_seq(p, 14, 0, t3, 1, b3, 1, MC_LOGITS_LAST, 0, &err) == MC_OK);
    /* seq 14's worker picks its token (a draw) */
    mc_step_draw d = {.temperature = 0.7f, .top_k = -1, .top_p = 0.9f, .min_p = 0.05f,
                      .state = 0x9e3779b97f4a7c15ull};
    CHECK(mc_step_plan_set_draw(p, &d, &err) == MC_OK);
}

static int plans_equal(const mc_step_plan *a, const mc_step_plan *b)
{
    if (a->step_id != b->step_id || a->n_seqs != b->n_seqs)
        return 0;
    for (uint32_t i = 0; i < a->n_seqs; i++) {
        const mc_step_seq *x = &a->seqs[i], *y = &b->seqs[i];
        if (x->seq_id != y->seq_id || x->start_pos != y->start_pos || x->n_tokens != y->n_tokens ||
            x->n_blocks != y->n_blocks || x->logits != y->logits || x->top_k != y->top_k ||
            x->has_draw != y->has_draw ||
            (x->has_draw && (x->draw.temperature != y->draw.temperature ||
                             x->draw.top_k != y->draw.top_k || x->draw.top_p != y->draw.top_p ||
                             x->draw.min_p != y->draw.min_p || x->draw.state != y->draw.state)) ||
            memcmp(x->tokens, y->tokens, x->n_tokens * sizeof *x->tokens) ||
            memcmp(x->blocks, y->blocks, x->n_blocks * sizeof *x->blocks)) {
            fprintf(stderr, "plans differ at seqs[%u] (seq %llu vs %llu)\n", i,
                    (unsigned long long)x->seq_id, (unsigned long long)y->seq_id);
            return 0;
        }
    }
    return 1;
}

static void test_round_trip(void)
{
    mc_step_plan p, q;
    make_plan(&p);
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_step_plan_check(&p, &LIMITS, &err) == MC_OK);
    if (err.msg[0])
        fprintf(stderr, "valid plan refused: %s\n", err.msg);
    CHECK(mc_step_plan_tokens(&p) == 11);
    CHECK(mc_step_plan_logit_rows(&p) == 5);

    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK(mc_control_pack_step(&p, &buf, &len, &err) == MC_OK);
    CHECK(mc_control_unpack_step(buf, len, &q, &err) == MC_OK);
    CHECK(plans_equal(&p, &q));

    /* the generic unpack sees a version-2 step with want_logits mirrored */
    ControlMessage *m = NULL;
    CHECK(mc_control_unpack(buf, len, &m, &err) == MC_OK);
    if (m) {
        CHECK(m->version == MC_CONTROL_VERSION && m->body_case == CONTROL_MESSAGE__BODY_STEP);
        CHECK(m->step->n_seqs == 4);
        if (m->step->n_seqs == 4) {
            CHECK(!m->step->seqs[0]->want_logits && m->step->seqs[1]->want_logits);
            CHECK(m->step->seqs[2]->logits == LOGITS_MODE__LOGITS_ALL);
        }
        mc_control_free(m);
    }
    free(buf);
    mc_step_plan_free(&q);
    CHECK(q.n_seqs == 0 && q.seqs == NULL);

    /* want_logits alone (a sender that leaves logits unset) means "last" */
    SeqEntry e = SEQ_ENTRY__INIT;
    uint32_t tok = 5, blk = 0;
    e.seq_id = 3;
    e.n_token_ids = 1;
    e.token_ids = &tok;
    e.n_kv_blocks = 1;
    e.kv_blocks = &blk;
    e.want_logits = 1;
    SeqEntry *ep = &e;
    StepPlan sp = STEP_PLAN__INIT;
    sp.n_seqs = 1;
    sp.seqs = &ep;
    CHECK(mc_control_step_to_plan(&sp, &q, &err) == MC_OK);
    CHECK(q.n_seqs == 1 && q.seqs[0].logits == MC_LOGITS_LAST);
    mc_step_plan_free(&q);
    e.logits = (LogitsMode)7; /* unknown mode */
    mc_err_clear(&err);
    CHECK(mc_control_step_to_plan(&sp, &q, &err) == MC_ERR_FORMAT);
    CHECK(strstr(err.msg, "seqs[0].logits") != NULL && q.n_seqs == 0);
    /* a hostile count: refused before copying */
    e.logits = LOGITS_MODE__LOGITS_LAST;
    e.n_token_ids = (size_t)MC_STEP_MAX_TOKENS + 1;
    mc_err_clear(&err);
    CHECK(mc_control_step_to_plan(&sp, &q, &err) == MC_ERR_FORMAT);
    CHECK(strstr(err.msg, "seqs[0].token_ids") != NULL && q.n_seqs == 0);
    e.n_token_ids = 1;
    e.n_kv_blocks = (size_t)MC_STEP_MAX_BLOCKS + 1;
    mc_err_clear(&err);
    CHECK(mc_control_step_to_plan(&sp, &q, &err) == MC_ERR_FORMAT);
    CHECK(strstr(err.msg, "seqs[0].kv_blocks") != NULL && q.n_seqs == 0);
    sp.n_seqs = (size_t)MC_STEP_MAX_SEQS + 1;
    mc_err_clear(&err);
    CHECK(mc_control_step_to_plan(&sp, &q, &err) == MC_ERR_FORMAT);
    CHECK(strstr(err.msg, "seqs:") != NULL);

    /* another body is not a step plan */
    Heartbeat hb = HEARTBEAT__INIT;
    ControlMessage msg;
    mc_control_init(&msg);
    msg.body_case = CONTROL_MESSAGE__BODY_HEARTBEAT;
    msg.heartbeat = &hb;
    CHECK(mc_control_pack(&msg, &buf, &len) == MC_OK);
    mc_err_clear(&err);
    CHECK(mc_control_unpack_step(buf, len, &q, &err) == MC_ERR_FORMAT);
    CHECK(strstr(err.msg, "heartbeat") != NULL);
    free(buf);
    mc_step_plan_free(&p);
}

/* Known lengths for the out-of-order case: seq 12 has 9 positions. */
static int known(void *ctx, uint64_t id, uint32_t *len)
{
    (void)ctx;
    if (id == 12 || id == 13) {
        *len = id == 12 ? 9 : 4;
        return 1;
    }
    return 0;
}

typedef void (*breaker)(mc_step_plan *p, mc_step_limits *l);

static void b_empty_step(mc_step_plan *p, mc_step_limits *l) { p->n_seqs = 0; }
static void b_too_many(mc_step_plan *p, mc_step_limits *l) { l->max_seqs = 3; }
static void b_dup_seq(mc_step_plan *p, mc_step_limits *l) { p->seqs[3].seq_id = 12; }
static void b_no_tokens(mc_step_plan *p, mc_step_limits *l) { p->seqs[1].n_tokens = 0; }
static void b_vocab(mc_step_plan *p, mc_step_limits *l) { p->seqs[2].tokens[2] = 100; }
static void b_mode(mc_step_plan *p, mc_step_limits *l) { p->seqs[1].logits = MC_LOGITS_COUNT; }
static void b_top_k(mc_step_plan *p, mc_step_limits *l) { p->seqs[1].top_k = 101; }
static void b_context(mc_step_plan *p, mc_step_limits *l) { l->max_pos = 5; }
static void b_order(mc_step_plan *p, mc_step_limits *l)
{
    l->known_len = known;
    p->seqs[1].start_pos = 8;
}
static void b_new_seq(mc_step_plan *p, mc_step_limits *l)
{
    l->known_len = known;
    p->seqs[0].start_pos = 2;
}
static void b_short_table(mc_step_plan *p, mc_step_limits *l) { p->seqs[2].n_blocks = 1; }
static void b_past_pool(mc_step_plan *p, mc_step_limits *l) { p->seqs[2].blocks[1] = 9000; }
static void b_twice_within(mc_step_plan *p, mc_step_limits *l) { p->seqs[1].blocks[2] = 0; }
static void b_twice_across(mc_step_plan *p, mc_step_limits *l) { p->seqs[3].blocks[0] = 10; }
static void b_budget(mc_step_plan *p, mc_step_limits *l) { l->max_batch_tokens = 9; }

static void b_draw_none(mc_step_plan *p, mc_step_limits *l)
{
    p->seqs[0].has_draw = 1;
    p->seqs[0].draw = p->seqs[3].draw;
}
static void b_draw_top_k(mc_step_plan *p, mc_step_limits *l)
{
    p->seqs[1].has_draw = 1;
    p->seqs[1].draw = p->seqs[3].draw;
}
static void b_draw_temp(mc_step_plan *p, mc_step_limits *l) { p->seqs[3].draw.temperature = -1; }
static void b_draw_k(mc_step_plan *p, mc_step_limits *l) { p->seqs[3].draw.top_k = -2; }
static void b_draw_p(mc_step_plan *p, mc_step_limits *l) { p->seqs[3].draw.top_p = 0; }
static void b_draw_min_p(mc_step_plan *p, mc_step_limits *l) { p->seqs[3].draw.min_p = 1.5f; }

static void test_refusals(void)
{
    static const struct {
        const char *name;
        breaker brk;
        const char *want; /* must appear in the message */
    } cases[] = {
        {"empty step", b_empty_step, "seqs: empty"},
        {"too many sequences", b_too_many, "seqs: 4 sequences, at most 3"},
        {"duplicate seq id", b_dup_seq, "seqs[3].seq_id: 12 is also seqs[1]"},
        {"no tokens", b_no_tokens, "seqs[1].token_ids: empty"},
        {"token past vocab", b_vocab, "seqs[2].token_ids[2]: token 100 is past the vocabulary"},
        {"logits mode", b_mode, "seqs[1].logits: unknown mode"},
        {"top_k", b_top_k, "seqs[1].top_k: 101"},
        {"past the context", b_context, "seqs[0].start_pos: positions 0..5 are past the context"},
        {"out of order", b_order, "seqs[1].start_pos: 8, but sequence 12 has 9 positions"},
        {"new sequence not at 0", b_new_seq, "seqs[0].start_pos: 2, but sequence 11 is new"},
        {"table too short", b_short_table, "seqs[2].kv_blocks: 1 blocks, positions 0..6 need 2"},
        {"block past pool", b_past_pool,
         "seqs[2].kv_blocks[1]: block 9000 is past the pool (32 blocks)"},
        {"block twice in a table", b_twice_within,
         "seqs[1].kv_blocks[2]: block 0 is also seqs[1].kv_blocks[0]"},
        {"block twice across", b_twice_across,
         "seqs[3].kv_blocks[0]: block 10 is also seqs[2].kv_blocks[1]"},
        {"draw without last logits", b_draw_none,
         "seqs[0].draw: a draw needs the last token's logits and top_k 0 (have none, top_k 0)"},
        {"draw with candidates", b_draw_top_k,
         "seqs[1].draw: a draw needs the last token's logits and top_k 0 (have last, top_k 5)"},
        {"draw temperature", b_draw_temp, "seqs[3].draw.temperature: -1 is not a finite value"},
        {"draw top_k", b_draw_k, "seqs[3].draw.top_k: -2 (want >= -1)"},
        {"draw top_p", b_draw_p, "seqs[3].draw.top_p: 0 is not in (0, 1]"},
        {"draw min_p", b_draw_min_p, "seqs[3].draw.min_p: 1.5 is not in [0, 1]"},
        {"over the budget", b_budget,
         "seqs[2].token_ids: 10 new tokens up to here, over the step "
         "budget of 9 (max_batch_tokens)"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        mc_step_plan p;
        make_plan(&p);
        mc_step_limits lim = LIMITS;
        uint32_t n_seqs = p.n_seqs, n_tok1 = p.seqs[1].n_tokens;
        cases[c].brk(&p, &lim);
        mc_err err;
        mc_err_clear(&err);
        mc_status st = mc_step_plan_check(&p, &lim, &err);
        if (st != MC_ERR_FORMAT || !strstr(err.msg, cases[c].want) || strchr(err.msg, '\n')) {
            fprintf(stderr, "%s: status %d, message \"%s\", expected \"%s\"\n", cases[c].name,
                    (int)st, err.msg, cases[c].want);
            CHECK(0);
        }
        /* the message also survives as the wire round trip sees it: the same
         * plan, packed and unpacked, is refused the same way */
        if (p.n_seqs) {
            uint8_t *buf = NULL;
            size_t len = 0;
            mc_step_plan q;
            mc_err e2;
            mc_err_clear(&e2);
            if (mc_control_pack_step(&p, &buf, &len, &e2) == MC_OK &&
                mc_control_unpack_step(buf, len, &q, &e2) == MC_OK) {
                mc_err e3;
                mc_err_clear(&e3);
                CHECK(mc_step_plan_check(&q, &lim, &e3) == st);
                CHECK(strcmp(e3.msg, err.msg) == 0);
                mc_step_plan_free(&q);
            } else {
                /* an unknown logits mode does not come back from the wire */
                CHECK(strstr(e2.msg, "logits") != NULL);
            }
            free(buf);
        }
        p.n_seqs = n_seqs; /* undo what would confuse free */
        p.seqs[1].n_tokens = n_tok1;
        mc_step_plan_free(&p);
    }

    /* known lengths that agree, and bad limits */
    mc_step_plan p;
    make_plan(&p);
    mc_step_limits lim = LIMITS;
    lim.known_len = known;
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_step_plan_check(&p, &lim, &err) == MC_OK);
    lim.block_size = 0;
    CHECK(mc_step_plan_check(&p, &lim, &err) == MC_ERR_ARG);
    mc_step_plan_free(&p);
}

int main(void)
{
    test_round_trip();
    test_refusals();
    return check_report("test_step_plan");
}
