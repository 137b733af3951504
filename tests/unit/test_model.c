/* test_model.c - routing (ties, groups, bias), indexer top-k ties, config
 * parsing and refusal, config/tensor disagreement, YaRN / llama3 factors. */
#include "check.h"
#include "model.h"
#include "model_config.h"
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

static void base_desc(mc_model_desc *d, int E, int k)
{
    memset(d, 0, sizeof *d);
    d->n_experts = E;
    d->n_experts_per_tok = k;
    d->n_group = d->topk_group = 1;
    d->routed_scale = 1.0f;
}

static int has(const int *idx, int k, int e)
{
    for (int j = 0; j < k; j++)
        if (idx[j] == e)
            return 1;
    return 0;
}

static void test_routing_groups(void)
{
    /* 8 experts in 4 groups of 2; keep 2 groups; choose 3 experts. */
    mc_model_desc d;
    base_desc(&d, 8, 3);
    d.score_func = MC_SCORE_SIGMOID;
    d.n_group = 4;
    d.topk_group = 2;
    d.norm_topk_prob = true;
    d.routed_scale = 2.5f;
    /* group sums of sigmoid scores: g0 = s0+s1, ...; make g3 and g1 the best
     * even though expert 4 (group 2) has the single highest score. */
    float logits[8] = {-2.0f, -2.0f, 1.0f, 1.0f, 3.0f, -4.0f, 1.5f, 1.2f};
    int idx[3];
    float w[3];
    mc_route_token(&d, logits, NULL, idx, w);
    /* groups: g0 = 2*s(-2)=.238, g1 = 2*s(1)=1.462, g2 = s(3)+s(-4)=.971, g3 = s(1.5)+s(1.2)=1.585 */
    CHECK(has(idx, 3, 6) && has(idx, 3, 7) && (has(idx, 3, 2) || has(idx, 3, 3)));
    CHECK(!has(idx, 3, 4));
    /* experts 2 and 3 tie: the lower index wins */
    CHECK(has(idx, 3, 2) && !has(idx, 3, 3));
    float sum = sigm(1.5f) + sigm(1.2f) + sigm(1.0f);
    for (int j = 0; j < 3; j++)
        CHECK_NEAR(w[j], sigm(logits[idx[j]]) / sum * 2.5f, 1e-6);

    /* the correction bias changes the choice but not the weights */
    float bias[8] = {0, 0, 0, 0, 0, 5.0f, 0, 0};
    mc_route_token(&d, logits, bias, idx, w);
    /* with bias, group 2 = s(3) + s(-4)+5 is the best group; then g3 */
    CHECK(has(idx, 3, 5) && has(idx, 3, 4));
    for (int j = 0; j < 3; j++)
        if (idx[j] == 5)
            CHECK_NEAR(w[j], sigm(-4.0f) / (sigm(-4.0f) + sigm(3.0f) + sigm(1.5f)) * 2.5f, 1e-6);
}

static void test_routing_all_tied(void)
{
    mc_model_desc d;
    base_desc(&d, 8, 2);
    d.score_func = MC_SCORE_SIGMOID;
    d.n_group = 4;
    d.topk_group = 2;
    d.norm_topk_prob = true;
    float logits[8] = {0};
    int idx[2];
    float w[2];
    mc_route_token(&d, logits, NULL, idx, w);
    CHECK(idx[0] == 0 && idx[1] == 1);
    CHECK_NEAR(w[0], 0.5, 1e-6);
    CHECK_NEAR(w[1], 0.5, 1e-6);
}

static void test_routing_softmax(void)
{
    mc_model_desc d;
    base_desc(&d, 4, 2);
    d.score_func = MC_SCORE_SOFTMAX;
    float logits[4] = {0.1f, 2.0f, -1.0f, 1.0f};
    int idx[2];
    float w[2];
    double z = exp(0.1) + exp(2.0) + exp(-1.0) + exp(1.0);
    mc_route_token(&d, logits, NULL, idx, w);
    CHECK(idx[0] == 1 && idx[1] == 3);
    CHECK_NEAR(w[0], exp(2.0) / z, 1e-6);
    CHECK_NEAR(w[1], exp(1.0) / z, 1e-6);
    d.norm_topk_prob = true;
    mc_route_token(&d, logits, NULL, idx, w);
    CHECK_NEAR(w[0], exp(2.0) / (exp(2.0) + exp(1.0)), 1e-6);
    CHECK_NEAR(w[0] + w[1], 1.0, 1e-6);
}

static void test_routing_llama4(void)
{
    mc_model_desc d;
    base_desc(&d, 4, 1);
    d.router = MC_ROUTER_LLAMA4;
    float logits[4] = {0.5f, -1.0f, 0.5f, 0.25f};
    int idx[1];
    float w[1];
    mc_route_token(&d, logits, NULL, idx, w);
    CHECK(idx[0] == 0); /* tie 0/2: lower index */
    CHECK_NEAR(w[0], sigm(0.5f), 1e-6);
}

static void test_topk_ties(void)
{
    float v[6] = {1, 3, 3, 2, 3, -INFINITY};
    int sel[6];
    unsigned char taken[6];
    int n = mc_topk_indices(v, 6, 2, sel, taken);
    CHECK(n == 2 && sel[0] == 1 && sel[1] == 2);
    n = mc_topk_indices(v, 6, 4, sel, taken);
    CHECK(n == 4 && sel[2] == 4 && sel[3] == 3);
    n = mc_topk_indices(v, 3, 8, sel, taken); /* k >= n: everything */
    CHECK(n == 3 && sel[0] == 0 && sel[2] == 2);
}

static mc_status parse(const char *json, mc_model_desc *d, mc_err *e)
{
    mc_err_clear(e);
    return mc_model_desc_parse(json, strlen(json), "test/config.json", d, e);
}

static void test_config_refusals(void)
{
    mc_model_desc d;
    mc_err e;
    CHECK(parse("{\"model_type\": \"gpt_oss\"}", &d, &e) == MC_ERR_UNSUPPORTED);
    CHECK(strstr(e.msg, "gpt_oss") && strstr(e.msg, "test/config.json"));
    printf("  refused: %s\n", e.msg);
    CHECK(parse("[1,2]", &d, &e) == MC_ERR_CONFIG);
    CHECK(parse("{\"model_type\": \"qwen3_moe\", \"vocab_size\": 10}", &d, &e) == MC_ERR_CONFIG);
    CHECK(strstr(e.msg, "hidden_size") != NULL);
    printf("  refused: %s\n", e.msg);
    const char *qwen_bad_heads =
        "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 10, \"hidden_size\": 64, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 6, \"num_key_value_heads\": 4, "
        "\"head_dim\": 16, \"intermediate_size\": 32, \"moe_intermediate_size\": 16, "
        "\"num_experts\": 4, \"num_experts_per_tok\": 2}";
    CHECK(parse(qwen_bad_heads, &d, &e) == MC_ERR_CONFIG);
    CHECK(strstr(e.msg, "num_key_value_heads") != NULL);
    printf("  refused: %s\n", e.msg);
    const char *qwen_bad_type =
        "{\"model_type\": \"qwen3_moe\", \"vocab_size\": \"many\", \"hidden_size\": 64}";
    CHECK(parse(qwen_bad_type, &d, &e) == MC_ERR_CONFIG);
    CHECK(strstr(e.msg, "vocab_size") != NULL);
    const char *ds_bad_k =
        "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 10, \"hidden_size\": 64, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"kv_lora_rank\": 8, "
        "\"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 4, \"v_head_dim\": 8, "
        "\"intermediate_size\": 32, \"moe_intermediate_size\": 16, \"n_routed_experts\": 8, "
        "\"num_experts_per_tok\": 6, \"n_group\": 4, \"topk_group\": 2}";
    CHECK(parse(ds_bad_k, &d, &e) == MC_ERR_CONFIG);
    CHECK(strstr(e.msg, "topk_group") != NULL);
    printf("  refused: %s\n", e.msg);
    CHECK(parse("{\"model_type\": \"llama4_text\", \"vocab_size\": 10, \"hidden_size\": 64, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"intermediate_size\": 8, "
                "\"intermediate_size_mlp\": 16, \"num_local_experts\": 4, \"moe_layers\": [7]}",
                &d, &e) == MC_ERR_CONFIG);
    CHECK(strstr(e.msg, "moe_layers") != NULL);
    printf("  refused: %s\n", e.msg);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

static void test_config_fixtures(const char *fx)
{
    char path[4200];
    mc_model_desc d;
    mc_err e;
    mc_err_clear(&e);
    snprintf(path, sizeof path, "%s/models/mistral4-tiny", fx);
    CHECK(mc_model_desc_load(path, &d, &e) == MC_OK);
    /* YaRN: softmax scale carries mscale(factor, mscale_all_dim)^2 */
    double ms = 0.1 * 1.0 * log(128.0) + 1.0;
    CHECK_NEAR(d.attn_scale, 1.0 / sqrt(48.0) * ms * ms, 1e-6);
    CHECK_NEAR(d.rope.attention_factor, 1.0, 1e-12);
    CHECK(d.rope.dim == 16 && d.rope.scaling == MC_ROPE_SCALE_YARN);
    CHECK_NEAR(d.llama4_beta, 0.1, 1e-12);
    CHECK(d.expert_layout == MC_EXPERTS_FUSED_OI && d.score_func == MC_SCORE_SOFTMAX);
    snprintf(path, sizeof path, "%s/models/llama4-tiny", fx);
    CHECK(mc_model_desc_load(path, &d, &e) == MC_OK);
    CHECK(d.layer_rope[0] && d.layer_rope[2] && !d.layer_rope[3]);
    CHECK(!d.layer_moe[0] && d.layer_moe[1] && !d.layer_moe[2] && d.layer_moe[3]);
    CHECK(d.rope.scaling == MC_ROPE_SCALE_LLAMA3 && d.qk_l2norm && d.attn_chunk == 8192);
    snprintf(path, sizeof path, "%s/models/deepseek-v3-tiny", fx);
    CHECK(mc_model_desc_load(path, &d, &e) == MC_OK);
    CHECK(!d.layer_moe[0] && d.layer_moe[1] && d.has_score_bias && d.n_group == 4);
    snprintf(path, sizeof path, "%s/models/deepseek-v3-tiny-fp8", fx);
    CHECK(mc_model_desc_load(path, &d, &e) == MC_OK);
    CHECK(d.fp8_block && d.fp8_block_rows == 128 && d.fp8_block_cols == 128);
    if (e.status != MC_OK)
        fprintf(stderr, "  %s\n", e.msg);
}

/* A config that disagrees with the tensors must be refused naming both. */
static void test_config_vs_tensors(const char *fx)
{
    char dir[] = "/tmp/mc_test_model_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0);
        return;
    }
    char src[4200], dst[4200];
    const char *files[] = {"model.safetensors.index.json", "model-00001-of-00003.safetensors",
                           "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"};
    for (int i = 0; i < 4; i++) {
        snprintf(src, sizeof src, "%s/models/qwen3-moe-tiny/%s", fx, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        CHECK(symlink(src, dst) == 0);
    }
    snprintf(src, sizeof src, "%s/models/qwen3-moe-tiny/config.json", fx);
    size_t len = 0;
    char *cfg = read_file(src, &len);
    CHECK(cfg != NULL);
    if (cfg) {
        char *p = strstr(cfg, "\"moe_intermediate_size\": 64");
        CHECK(p != NULL);
        if (p)
            memcpy(p, "\"moe_intermediate_size\": 32", 27);
        snprintf(dst, sizeof dst, "%s/config.json", dir);
        FILE *f = fopen(dst, "wb");
        if (f) {
            fwrite(cfg, 1, len, f);
            fclose(f);
        }
        free(cfg);
        mc_model *m = NULL;
        mc_err e;
        mc_err_clear(&e);
        CHECK(mc_model_load(dir, &m, &e) == MC_ERR_CONFIG);
        CHECK(strstr(e.msg, "experts.0.gate_proj") && strstr(e.msg, "[64,256]") &&
              strstr(e.msg, "[32,256]"));
        printf("  refused: %s\n", e.msg);
        mc_model_free(m);
        unlink(dst);
    }
    for (int i = 0; i < 4; i++) {
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        unlink(dst);
    }
    rmdir(dir);
}

static void test_forward_errors(const char *fx)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/models/qwen3-moe-tiny", fx);
    mc_model *m = NULL;
    mc_kv *kv = NULL;
    mc_err e;
    mc_err_clear(&e);
    CHECK(mc_model_load(path, &m, &e) == MC_OK);
    if (!m)
        return;
    CHECK(mc_kv_create(m, 4, &kv, &e) == MC_OK);
    int64_t bad[2] = {5, 5000};
    float logits[2 * 1024];
    CHECK(mc_model_forward(m, kv, bad, 2, logits, false, &e) == MC_ERR_ARG);
    CHECK(strstr(e.msg, "5000") != NULL);
    mc_err_clear(&e);
    int64_t many[5] = {1, 2, 3, 4, 5};
    CHECK(mc_model_forward(m, kv, many, 5, logits, false, &e) == MC_ERR_ARG);
    CHECK(kv->len == 0);
    mc_kv_free(kv);
    mc_model_free(m);
}

int main(int argc, char **argv)
{
    const char *fx0 = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    char fxbuf[4096];
    const char *fx = fx0 && realpath(fx0, fxbuf) ? fxbuf : fx0; /* symlinks need absolute paths */
    test_routing_groups();
    test_routing_all_tied();
    test_routing_softmax();
    test_routing_llama4();
    test_topk_ties();
    test_config_refusals();
    if (fx) {
        test_config_fixtures(fx);
        test_config_vs_tensors(fx);
        test_forward_errors(fx);
    } else {
        fprintf(stderr, "no fixtures folder given\n");
        check_failures++;
    }
    return check_report("test_model");
}
