/* test_layout.c - one rank's share of the model (worker/layout.c): balanced
 * splits, expert owners for counts that do not divide, KV heads split or
 * copied, refusals with messages that name what does not divide, and
 * agreement with the planner (shard/plan.c), which `moecluster shard` uses
 * to cut the checkpoint the workers then load, and with the split table
 * (shard/split.c) the binder cuts by. */
#include "check.h"
#include "layout.h"
#include "plan.h"
#include "split.h"

#include <string.h>

static void desc(mc_model_desc *d, int layers, int heads, int kv_heads, int experts)
{
    memset(d, 0, sizeof *d);
    snprintf(d->model_type, sizeof d->model_type, "test_moe");
    d->family = MC_FAM_QWEN3_MOE;
    d->attn = MC_ATTN_GQA;
    d->vocab = 1003;
    d->hidden = 64;
    d->n_layers = layers;
    d->max_pos = 4096;
    d->n_heads = heads;
    d->n_kv_heads = kv_heads;
    d->head_dim = 16;
    d->n_experts = experts;
    d->n_experts_per_tok = 2;
    d->moe_inter = 32;
    d->dense_inter = 64;
    for (int l = 0; l < layers; l++)
        d->layer_moe[l] = true;
}

static void test_split(void)
{
    int b, n, total = 0;
    for (int i = 0; i < 3; i++) {
        mc_split(16, 3, i, &b, &n);
        CHECK(b == total);
        CHECK(n == (i == 0 ? 6 : 5)); /* earlier parts get the extra one */
        total += n;
    }
    CHECK(total == 16);
    mc_split(2, 4, 3, &b, &n);
    CHECK(b == 2 && n == 0);
}

static void test_owner(void)
{
    mc_model_desc d;
    for (int E = 4; E <= 19; E++)
        for (int ep = 1; ep <= 4 && ep <= E; ep++) {
            desc(&d, 4, 8, 2, E);
            int count[4] = {0};
            for (int r = 0; r < ep; r++) {
                mc_layout l;
                mc_err err;
                mc_err_clear(&err);
                CHECK(mc_layout_make(&d, ep, r, 0, ep, 0, &l, &err) == MC_OK);
                for (int e = l.expert0; e < l.expert1; e++) {
                    CHECK(mc_layout_expert_owner(&l, E, e) == r);
                    count[r]++;
                }
            }
            int sum = 0;
            for (int r = 0; r < ep; r++) {
                sum += count[r];
                CHECK(count[r] == E / ep || count[r] == E / ep + 1);
            }
            CHECK(sum == E);
        }
}

static void test_kv_heads(void)
{
    mc_model_desc d;
    desc(&d, 4, 8, 2, 16);
    mc_err err;
    mc_layout l;
    /* tp 2: one KV head each; tp 4: two ranks share a copy of each KV head */
    for (int r = 0; r < 2; r++) {
        CHECK(mc_layout_make(&d, 2, r, 2, 0, 0, &l, &err) == MC_OK);
        CHECK(l.head0 == 4 * r && l.n_heads == 4 && l.kv_head0 == r && l.n_kv_heads == 1);
    }
    for (int r = 0; r < 4; r++) {
        CHECK(mc_layout_make(&d, 4, r, 4, 0, 0, &l, &err) == MC_OK);
        CHECK(l.head0 == 2 * r && l.n_heads == 2 && l.kv_head0 == r / 2 && l.n_kv_heads == 1);
        /* the query heads read their own group's KV head */
        CHECK((l.head0 / (d.n_heads / d.n_kv_heads)) == l.kv_head0);
    }
}

static void refused(const mc_model_desc *d, int world, int tp, int ep, int pp, const char *needle)
{
    mc_layout l;
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_layout_make(d, world, 0, tp, ep, pp, &l, &err);
    CHECK(st != MC_OK);
    CHECK(strstr(err.msg, needle) != NULL);
    if (st == MC_OK || !strstr(err.msg, needle))
        fprintf(stderr, "  world %d tp %d ep %d pp %d: '%s' (want '%s')\n", world, tp, ep, pp,
                err.msg, needle);
}

static void test_refusals(void)
{
    mc_model_desc d;
    desc(&d, 3, 8, 2, 16);
    refused(&d, 3, 3, 0, 0, "the 8 attention (query) heads of test_moe");
    refused(&d, 6, 6, 0, 0, "the 8 attention (query) heads");
    refused(&d, 4, 3, 0, 0, "4 ranks cannot be split");
    refused(&d, 1, 2, 0, 0, "start the command with mpirun");
    refused(&d, 4, 0, 3, 0, "--ep 3 does not divide the 4 ranks");
    refused(&d, 4, 0, 0, 4, "more pipeline stages than the 3 layers");
    desc(&d, 4, 12, 3, 16);
    refused(&d, 2, 2, 0, 0, "the 3 KV heads");
    desc(&d, 4, 8, 2, 2);
    refused(&d, 4, 0, 4, 0, "--ep 4 exceeds the 2 routed experts");
    desc(&d, 4, 8, 2, 16);
    d.family = MC_FAM_DEEPSEEK_V4;
    refused(&d, 2, 0, 2, 0, "DeepSeek-V4 runs only with --tp 1 --ep 1 --pp 1");
    mc_layout l;
    mc_err err;
    CHECK(mc_layout_make(&d, 2, 1, 0, 0, 0, &l, &err) == MC_OK); /* data parallel is fine */
    CHECK(l.dp == 2 && l.ep == 1 && l.dp_rank == 1);
}

/* Every rank's share equals the planner's for the same cluster layout. */
static void test_matches_plan(void)
{
    static const int layouts[][4] = {/* world, tp, ep, pp */
                                     {1, 1, 1, 1}, {2, 1, 2, 1}, {3, 1, 3, 1}, {4, 1, 4, 1},
                                     {4, 2, 4, 1}, {4, 1, 2, 2}, {4, 4, 4, 1}, {8, 2, 4, 2},
                                     {6, 2, 3, 1}, {6, 1, 2, 3}, {4, 2, 2, 1}};
    mc_model_desc d;
    desc(&d, 7, 8, 2, 13);
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        int world = layouts[i][0], tp = layouts[i][1], ep = layouts[i][2], pp = layouts[i][3];
        mc_cluster c;
        mc_cluster_single_cpu(&c, 64);
        c.devices_per_node = world;
        c.tp = tp;
        c.ep = ep;
        c.pp = pp;
        c.dp = world / (tp * pp);
        mc_plan_opts o = {.weights = MC_WFMT_BF16, .max_model_len = 128, .max_num_seqs = 1,
                          .kv_bytes_per_elem = 2};
        mc_plan *p = NULL;
        mc_err err;
        mc_err_clear(&err);
        CHECK(mc_plan_build(&d, &c, &o, &p, &err) == MC_OK);
        if (!p) {
            fprintf(stderr, "  plan world %d tp %d ep %d pp %d: %s\n", world, tp, ep, pp, err.msg);
            continue;
        }
        for (int r = 0; r < world; r++) {
            mc_layout l;
            CHECK(mc_layout_make(&d, world, r, tp, ep, pp, &l, &err) == MC_OK);
            const mc_rank_plan *rp = &p->ranks[r];
            int same = l.stage == rp->stage && l.tp_rank == rp->tp_rank &&
                       l.dp_rank == rp->dp_rank && l.ep_rank == rp->ep_rank &&
                       l.layer0 == rp->layer_begin && l.layer1 == rp->layer_end &&
                       l.expert0 == rp->expert_begin && l.expert1 == rp->expert_end;
            CHECK(same);
            CHECK(mc_layout_world_rank(&l, l.stage, l.dp_rank, l.tp_rank) == r);
            if (!same)
                fprintf(stderr,
                        "  world %d tp %d ep %d pp %d rank %d: layout stage %d tp %d dp %d ep %d "
                        "layers [%d,%d) experts [%d,%d); plan stage %d tp %d dp %d ep %d layers "
                        "[%d,%d) experts [%d,%d)\n",
                        world, tp, ep, pp, r, l.stage, l.tp_rank, l.dp_rank, l.ep_rank, l.layer0,
                        l.layer1, l.expert0, l.expert1, rp->stage, rp->tp_rank, rp->dp_rank,
                        rp->ep_rank, rp->layer_begin, rp->layer_end, rp->expert_begin,
                        rp->expert_end);
        }
        mc_plan_free(p);
    }
}

/* The layout's head, KV head and vocab ranges are the split table's slices
 * (shard/split.h), which the binder and the shard writer cut by. */
static void test_matches_table(void)
{
    mc_model_desc d;
    desc(&d, 4, 8, 2, 16);
    for (int tp = 1; tp <= 8; tp *= 2)
        for (int r = 0; r < tp; r++) {
            mc_layout l;
            mc_err err;
            CHECK(mc_layout_make(&d, tp, r, tp, 0, 0, &l, &err) == MC_OK);
            int64_t qb, qe, kb, ke, vb, ve;
            int qd = mc_split_tp_slice(&d, MC_T_Q, tp, r, &qb, &qe);
            int kd = mc_split_tp_slice(&d, MC_T_K, tp, r, &kb, &ke);
            mc_split_tp_slice(&d, MC_T_LM_HEAD, tp, r, &vb, &ve);
            int hd = d.head_dim;
            int same = tp == 1 ? qd == -1 && kd == -1
                               : qd == 0 && qb == l.head0 * hd && qe - qb == l.n_heads * hd &&
                                     kd == 0 && kb == l.kv_head0 * hd &&
                                     ke - kb == l.n_kv_heads * hd;
            same = same && vb == l.vocab0 && ve - vb == l.n_vocab;
            CHECK(same);
            if (!same)
                fprintf(stderr, "  tp %d rank %d: layout heads %d+%d kv %d+%d vocab %d+%d; table q "
                        "[%lld,%lld) k [%lld,%lld) vocab [%lld,%lld)\n", tp, r, l.head0,
                        l.n_heads, l.kv_head0, l.n_kv_heads, l.vocab0, l.n_vocab, (long long)qb,
                        (long long)qe, (long long)kb, (long long)ke, (long long)vb,
                        (long long)ve);
        }
}

int main(void)
{
    test_split();
    test_owner();
    test_kv_heads();
    test_refusals();
    test_matches_plan();
    test_matches_table();
    return check_report("test_layout");
}
