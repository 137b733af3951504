/* test_plan.c - parameter counts against published figures and the
 * reference's own counts, per-rank memory checked by hand, cluster configs
 * refused with the path of the offending field. */
#include "check.h"
#include "cluster.h"
#include "model_config.h"
#include "plan.h"
#include "safetensors.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fx;

static int load(const char *rel, mc_model_desc *d)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", fx, rel);
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    mc_err e;
    mc_err_clear(&e);
    if (mc_model_desc_parse(buf, n, path, d, &e) != MC_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return -1;
    }
    return 0;
}

/* Published configs: total / active within 1% of the known figures. */
static void test_published(void)
{
    static const struct {
        const char *file;
        double total, active; /* billions */
    } cases[] = {
        {"configs/deepseek-v3.config.json", 671.0, 36.6},
        {"configs/deepseek-v3.2.config.json", 671.9, 37.5},
        {"configs/qwen3-235b-a22b.config.json", 235.1, 21.6},
        {"configs/llama4-maverick.config.json", 400.7, 16.2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mc_model_desc d;
        CHECK(load(cases[i].file, &d) == 0);
        mc_param_counts p;
        mc_model_params(&d, &p);
        printf("  %s: %.2f B total, %.2f B active\n", cases[i].file, p.total / 1e9, p.active / 1e9);
        CHECK_NEAR(p.total / 1e9, cases[i].total, cases[i].total * 0.01);
        CHECK_NEAR(p.active / 1e9, cases[i].active, cases[i].active * 0.01);
    }
}

/* The reference counted the fixture models' parameters (report.json n_params). */
static void test_fixture_counts(void)
{
    static const struct {
        const char *model;
        double n_params;
    } cases[] = {
        /* + 3 MoE layers x 16 e_score_correction_bias values, a buffer (not a parameter) there */
        {"deepseek-v3-tiny", 3890048 + 3 * 16},
        {"qwen3-moe-tiny", 3389376},
    };
    for (size_t i = 0; i < 2; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "models/%s/config.json", cases[i].model);
        mc_model_desc d;
        CHECK(load(rel, &d) == 0);
        mc_param_counts p;
        mc_model_params(&d, &p);
        CHECK_NEAR(p.total, cases[i].n_params, 0.5);
    }
}

/* qwen3-moe-tiny on 2 CPU ranks (tp 1, dp 2, ep 2), BF16; every figure by hand:
 *   embedding + head: 2 * 1024*256 * 2 B + final norm 256 * 2 B          = 1049088
 *   attention per layer: (q 256*256 + k 64*256 + v 64*256 + o 256*256
 *                         + q/k norms 2*32) * 2 B = 163904 * 2           = 327808 -> x3 = 983424
 *   norms + router per layer: (2*256 + 16*256) * 2 B                     = 9216   -> x3 = 27648
 *   routed experts: 8 of 16 per rank, 3 * 64*256 params * 2 B = 98304 each
 *                   = 786432 per layer                                     -> x3 = 2359296
 *   total                                                                 = 4419456
 *   KV per token: K and V, 2 heads * 32 * 2 B * 3 layers                  = 768
 *   KV budget: 1 GiB - 0.5 GiB - 4419456 = 532451456 -> 693296 tokens -> 169 seqs of 4096
 */
static void test_memory_by_hand(void)
{
    mc_model_desc d;
    CHECK(load("models/qwen3-moe-tiny/config.json", &d) == 0);
    char path[4200];
    snprintf(path, sizeof path, "%s/clusters/tiny-2ranks.yaml", fx);
    mc_cluster c;
    mc_err e;
    mc_err_clear(&e);
    CHECK(mc_cluster_load(path, &c, &e) == MC_OK);
    if (e.status != MC_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return;
    }
    mc_plan_opts o = {.weights = MC_WFMT_BF16, .max_model_len = 4096, .max_num_seqs = 256,
                      .kv_bytes_per_elem = 2};
    mc_plan *p = NULL;
    CHECK(mc_plan_build(&d, &c, &o, &p, &e) == MC_OK);
    if (!p)
        return;
    CHECK(p->world == 2);
    for (int r = 0; r < 2; r++) {
        const mc_rank_plan *rp = &p->ranks[r];
        CHECK_NEAR(rp->bytes[MC_CAT_EMBED_HEAD], 1049088, 0);
        CHECK_NEAR(rp->bytes[MC_CAT_ATTN], 983424, 0);
        CHECK_NEAR(rp->bytes[MC_CAT_OTHER], 27648, 0);
        CHECK_NEAR(rp->bytes[MC_CAT_ROUTED], 2359296, 0);
        CHECK_NEAR(rp->bytes[MC_CAT_SCALES], 0, 0);
        CHECK_NEAR(rp->weight_bytes, 4419456, 0);
        CHECK_NEAR(rp->kv_bytes_per_token, 768, 0);
        CHECK(rp->kv_tokens == 693296);
        CHECK(rp->seqs == 169);
        CHECK(rp->expert_begin == 8 * r && rp->expert_end == 8 * r + 8);
    }
    CHECK(p->fits);
    json_t *j = mc_plan_to_json(p);
    CHECK(json_is_number(json_object_get(j, "params_total")) &&
          json_number_value(json_object_get(j, "params_total")) == 3389376);
    CHECK(json_is_number(json_object_get(j, "params_active")));
    json_decref(j);
    mc_plan_free(p);

    /* Q8_0: quantized matrices take 34 bytes per 32 weights, 2 of them scales.
     * Routed experts per layer: 8 experts * 3 * 64*256 / 32 blocks * 32 B
     *   = 8 * 1536 * 32 = 393216 (+ 8 * 1536 * 2 = 24576 of scales) */
    o.weights = MC_WFMT_Q8_0;
    CHECK(mc_plan_build(&d, &c, &o, &p, &e) == MC_OK);
    if (p) {
        CHECK_NEAR(p->ranks[0].bytes[MC_CAT_ROUTED], 3 * 393216.0, 0);
        /* attention: (65536+16384+16384+65536)/32 blocks * 32 B + q/k norms 64 * 2 B */
        CHECK_NEAR(p->ranks[0].bytes[MC_CAT_ATTN], 3 * (5120.0 * 32 + 128), 0);
        /* + the LM head, 1024*256/32 blocks: 8192 * 32 B payload, 8192 * 2 B scales */
        CHECK_NEAR(p->ranks[0].bytes[MC_CAT_SCALES], 3 * (24576.0 + 5120 * 2) + 16384, 0);
        CHECK_NEAR(p->ranks[0].bytes[MC_CAT_EMBED_HEAD], 524288.0 + 8192 * 32 + 512, 0);
        mc_plan_free(p);
    }
    /* KV heads a tp split cannot share out (3 KV heads over tp 2): refused, naming them */
    {
        mc_model_desc odd = d;
        mc_cluster c2 = c;
        odd.n_kv_heads = 3;
        c2.tp = 2; /* 2 ranks: tp 2, dp 1 */
        c2.ep = 2;
        c2.dp = 1;
        mc_err_clear(&e);
        CHECK(mc_plan_build(&odd, &c2, &o, &p, &e) == MC_ERR_CONFIG);
        CHECK(strstr(e.msg, "3 key/value heads") != NULL);
        printf("  refused: %s\n", e.msg);
        odd.n_kv_heads = 2; /* divides: fine */
        p = NULL;
        CHECK(mc_plan_build(&odd, &c2, &o, &p, &e) == MC_OK);
        mc_plan_free(p);
    }
    /* Too small: 1 GiB devices cannot hold 8192-token sequences of DeepSeek-V3 */
    mc_model_desc big;
    CHECK(load("configs/deepseek-v3.config.json", &big) == 0);
    p = NULL;
    o.weights = MC_WFMT_FP8;
    CHECK(mc_plan_build(&big, &c, &o, &p, &e) == MC_OK);
    if (p) {
        CHECK(!p->fits && strstr(p->verdict, "DOES NOT FIT"));
        printf("  %s\n", p->verdict);
        mc_plan_free(p);
    }
}

static void test_mat_bytes(void)
{
    double sc;
    CHECK_NEAR(mc_mat_bytes(256, 512, MC_WFMT_BF16, &sc), 262144, 0);
    CHECK_NEAR(mc_mat_bytes(80, 256, MC_WFMT_FP8, &sc), 80 * 256 + 4 * 1 * 2, 0); /* partial block */
    CHECK_NEAR(sc, 8, 0);
    CHECK_NEAR(mc_mat_bytes(2, 512, MC_WFMT_Q4_K, &sc), 2 * 2 * 144, 0);
    CHECK_NEAR(sc, 2 * 2 * 16, 0);
    CHECK_NEAR(mc_mat_bytes(2, 96, MC_WFMT_Q4_K, &sc), 2 * 3 * 34, 0); /* falls back to Q8_0 */
    CHECK_NEAR(mc_mat_bytes(2, 20, MC_WFMT_Q8_0, &sc), 2 * 20 * 2, 0); /* falls back to BF16 */
}

static void test_cluster_configs(void)
{
    static const struct {
        const char *file, *needle;
    } bad[] = {
        {"bad-unknown-key.yaml", "parallel.tq"},
        {"bad-type.yaml", "device.memory_gib"},
        {"bad-missing.yaml", "device"},
        {"bad-backend.yaml", "backend"},
        {"bad-world.yaml", "parallel"},
        {"bad-ep.yaml", "parallel.ep"},
        {"bad-inter.yaml", "links.inter_node"},
        {"bad-negative.yaml", "device.memory_gib"},
        {"bad-syntax.yaml", "bad-syntax.yaml"},
        {"bad-empty.yaml", "empty cluster config"},
        {"bad-comment-only.yaml", "empty cluster config"},
        {"bad-two-docs.yaml", "more than one YAML document"},
        {"bad-tp-zero.yaml", "parallel.tp"},
        {"bad-ep-zero.yaml", "parallel.ep"},
        {"does-not-exist.yaml", "does-not-exist.yaml"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/clusters/%s", fx, bad[i].file);
        mc_cluster c;
        mc_err e;
        mc_err_clear(&e);
        CHECK(mc_cluster_load(path, &c, &e) != MC_OK);
        CHECK(strstr(e.msg, bad[i].needle) != NULL);
        printf("  refused: %s\n", e.msg);
    }
    /* every shipped config loads */
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/../../cluster-configs", fx);
    DIR *dp = opendir(dir);
    CHECK(dp != NULL);
    int n = 0;
    struct dirent *de;
    while (dp && (de = readdir(dp))) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 5, ".yaml"))
            continue;
        char path[8400];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        mc_cluster c;
        mc_err e;
        mc_err_clear(&e);
        CHECK(mc_cluster_load(path, &c, &e) == MC_OK);
        if (e.status)
            fprintf(stderr, "  %s\n", e.msg);
        n++;
    }
    if (dp)
        closedir(dp);
    CHECK(n >= 7);
}

/* DeepSeek-V4 tiny: plan's counts against the fixture checkpoint's own
 * tensors (numel, summed by a categorization of the names), its weight
 * bytes against the files' bytes, the KV formula by hand, and the layouts
 * V4 does not run refused. */
static void test_v4_fixture(void)
{
    mc_model_desc d;
    CHECK(load("models/deepseek-v4-tiny/config.json", &d) == 0);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/models/deepseek-v4-tiny", fx);
    st_checkpoint *ck = NULL;
    mc_err e;
    mc_err_clear(&e);
    CHECK(st_checkpoint_open(dir, &ck, &e) == MC_OK);
    if (!ck)
        return;
    /* embed, head, attn, shared, routed, router, norms, hc, hash */
    double want[9] = {0}, total = 0, bytes = 0;
    for (size_t i = 0; i < st_checkpoint_count(ck); i++) {
        const st_tensor *t = st_checkpoint_tensor(ck, i);
        const char *n = t->name;
        int c = !strcmp(n, "model.embed_tokens.weight") ? 0
                : !strcmp(n, "head.weight")            ? 1
                : strstr(n, "hc_")                     ? 7
                : strstr(n, "tid2eid")                 ? 8
                : strstr(n, ".ffn.experts.")           ? 4
                : strstr(n, ".shared_experts.")        ? 3
                : strstr(n, ".ffn.gate.")              ? 5
                : strstr(n, ".attn.")                  ? 2
                : strstr(n, "norm.weight")             ? 6
                                                       : -1;
        if (c < 0) {
            printf("  uncategorized tensor %s\n", n);
            CHECK(0);
            continue;
        }
        want[c] += (double)t->numel;
        total += (double)t->numel;
        bytes += (double)t->nbytes;
    }
    st_checkpoint_close(ck);
    mc_param_counts p;
    mc_model_params(&d, &p);
    const double have[9] = {p.embed, p.head, p.attn, p.shared, p.routed, p.router, p.norms, p.hc, p.hash};
    static const char *const names[9] = {"embed", "head", "attn", "shared", "routed", "router",
                                         "norms", "hc", "hash"};
    printf("  deepseek-v4-tiny: %.0f parameters (checkpoint %.0f), active %.0f\n", p.total, total,
           p.active);
    CHECK(p.total == total);
    CHECK(p.dense == 0);
    for (int k = 0; k < 9; k++)
        if (have[k] != want[k]) {
            printf("  %s: plan %.0f, checkpoint %.0f\n", names[k], have[k], want[k]);
            CHECK(0);
        }
    /* active: all but the embedding, the hash tables and 12 of 16 experts per layer */
    CHECK(p.active == total - p.embed - p.hash - p.routed * 12 / 16);

    /* one rank: the weights are the checkpoint's bytes (BF16, tid2eid I64) */
    char path[4200];
    snprintf(path, sizeof path, "%s/../../cluster-configs/cpu-1rank.yaml", fx);
    mc_cluster c;
    mc_err_clear(&e);
    CHECK(mc_cluster_load(path, &c, &e) == MC_OK);
    mc_plan_opts o = {.weights = MC_WFMT_BF16, .max_model_len = 4096, .max_num_seqs = 1,
                      .kv_bytes_per_elem = 2};
    mc_plan *pl = NULL;
    CHECK(mc_plan_build(&d, &c, &o, &pl, &e) == MC_OK);
    if (pl) {
        CHECK(pl->ranks[0].weight_bytes == bytes);
        /* KV of one 4096-token sequence, elements (head_dim 64, window 8, index_head_dim 32):
         *   window: 4 layers x 8 x 64                                          =   2048
         *   HCA (layers 0-2, rate 16): 4096/16 x 64 + pending 2x2x16x64 = 20480 x 3 = 61440
         *   CSA (layer 3, rate 4): 1024 x 64 + 2x2x4x128 = 67584;
         *       its indexer: 1024 x 32 + 2x2x4x64 = 33792                      = 101376
         *   total 164864 elements x 2 bytes                                    = 329728 */
        CHECK_NEAR(pl->ranks[0].kv_bytes_per_seq, 329728, 0);
        CHECK_NEAR(pl->ranks[0].kv_bytes_per_token, 329728.0 / 4096, 1e-9);
        mc_plan_free(pl);
    }
    /* 5 tokens: a part-filled window, no HCA entry yet, one CSA entry (and its indexer key) */
    CHECK_NEAR(mc_v4_kv_bytes_per_seq(&d, 5, 4),
               4.0 * (4 * 5 * 64 + 3 * (2 * 2 * 16 * 64) + 64 + 2 * 2 * 4 * 128 + 32 +
                      2 * 2 * 4 * 64),
               0);
    /* V4 does not run split, nor from other weight formats */
    mc_cluster c2 = c;
    c2.ep = 2;
    c2.dp = 2;
    c2.devices_per_node = 2;
    mc_err_clear(&e);
    CHECK(mc_plan_build(&d, &c2, &o, &pl, &e) == MC_ERR_UNSUPPORTED);
    CHECK(strstr(e.msg, "one rank") != NULL);
    mc_plan_opts o8 = o;
    o8.weights = MC_WFMT_Q8_0;
    mc_err_clear(&e);
    CHECK(mc_plan_build(&d, &c, &o8, &pl, &e) == MC_ERR_UNSUPPORTED);
    CHECK(strstr(e.msg, "BF16") != NULL);
}

int main(int argc, char **argv)
{
    fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "no fixtures folder\n");
        return 1;
    }
    test_published();
    test_fixture_counts();
    test_memory_by_hand();
    test_mat_bytes();
    test_cluster_configs();
    test_v4_fixture();
    return check_report("test_plan");
}
