/* test_deepseek_v4.c - DeepSeek-V4 pieces: Sinkhorn projection, sqrtsoftplus
 * scores, hash and top-k routing, the reference's top-k tie behaviour,
 * config parsing / refusals, and chunked prefill == full forward. */
#include "check.h"
#include "model.h"
#include "model_config.h"
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_sinkhorn(void)
{
    const int hc = 4;
    float lg[16], comb[16];
    unsigned s = 12345;
    for (int i = 0; i < 16; i++) {
        s = s * 1103515245u + 12345u;
        lg[i] = ((float)((s >> 8) & 0xffff) / 65535.0f - 0.5f) * 6.0f;
    }
    mc_v4_sinkhorn(lg, hc, 20, 1e-6f, comb);
    for (int j = 0; j < hc; j++) {
        double r = 0, c = 0;
        for (int k = 0; k < hc; k++) {
            CHECK(comb[j * hc + k] > 0);
            r += comb[j * hc + k];
            c += comb[k * hc + j];
        }
        CHECK_NEAR(r, 1.0, 1e-3);
        CHECK_NEAR(c, 1.0, 1e-5); /* the last step normalizes columns */
    }
    /* one iteration = row softmax (+eps) then one column normalization */
    float z[4] = {0, 0, 0, 0};
    mc_v4_sinkhorn(z, 2, 1, 0.0f, comb);
    for (int i = 0; i < 4; i++)
        CHECK_NEAR(comb[i], 0.5, 1e-7);
}

static void test_scores(void)
{
    CHECK_NEAR(mc_v4_router_score(MC_V4_SCORE_SQRTSOFTPLUS, 0.0f), sqrt(log(2.0)), 1e-6);
    CHECK_NEAR(mc_v4_router_score(MC_V4_SCORE_SQRTSOFTPLUS, 30.0f), sqrt(30.0), 1e-5);
    CHECK_NEAR(mc_v4_router_score(MC_V4_SCORE_SQRTSOFTPLUS, 1.5f), sqrt(log1p(exp(1.5))), 1e-6);
    CHECK_NEAR(mc_v4_router_score(MC_V4_SCORE_SQRTSOFTPLUS, -30.0f), sqrt(log1p(exp(-30.0))), 1e-9);
    CHECK_NEAR(mc_v4_router_score(MC_V4_SCORE_SIGMOID, 0.0f), 0.5, 1e-7);
}

static void v4_desc(mc_model_desc *d, int E, int k)
{
    memset(d, 0, sizeof *d);
    d->family = MC_FAM_DEEPSEEK_V4;
    d->n_experts = E;
    d->n_experts_per_tok = k;
    d->routed_scale = 1.5f;
    d->v4.score = MC_V4_SCORE_SQRTSOFTPLUS;
}

static double ssp(double x) { return sqrt(log1p(exp(x))); }

static void test_routing(void)
{
    mc_model_desc d;
    v4_desc(&d, 8, 2);
    float logits[8] = {0.1f, -1.0f, 0.3f, 2.0f, -0.5f, 1.0f, 0.0f, -2.0f};
    int idx[2];
    float w[2];
    /* hash: the table decides, the scores only weight */
    int32_t row[2] = {7, 1};
    mc_v4_route(&d, logits, NULL, row, idx, w);
    CHECK(idx[0] == 7 && idx[1] == 1);
    double s7 = ssp(-2.0), s1 = ssp(-1.0);
    CHECK_NEAR(w[0], s7 / (s7 + s1) * 1.5, 1e-6);
    CHECK_NEAR(w[1], s1 / (s7 + s1) * 1.5, 1e-6);
    /* top-k on the scores: experts 3 and 5 */
    mc_v4_route(&d, logits, NULL, NULL, idx, w);
    CHECK((idx[0] == 3 && idx[1] == 5) || (idx[0] == 5 && idx[1] == 3));
    CHECK_NEAR(w[0] + w[1], 1.5, 1e-6);
    /* the bias moves the choice, not the weights */
    float bias[8] = {0, 0, 0, 0, 0, 0, 0, 10.0f};
    mc_v4_route(&d, logits, bias, NULL, idx, w);
    int i7 = idx[0] == 7 ? 0 : idx[1] == 7 ? 1 : -1;
    CHECK(i7 >= 0 && idx[1 - i7] == 3);
    if (i7 >= 0)
        CHECK_NEAR(w[i7], ssp(-2.0) / (ssp(-2.0) + ssp(2.0)) * 1.5, 1e-6);
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void test_topk(void)
{
    /* property: the first k hold the k largest values */
    unsigned s = 99;
    for (int trial = 0; trial < 200; trial++) {
        int n = 1 + trial % 37, k = 1 + (trial * 7) % n;
        mc_v4_sel q[40];
        float sorted[40];
        for (int i = 0; i < n; i++) {
            s = s * 1103515245u + 12345u;
            q[i].v = (float)((s >> 16) % 9) - 4.0f; /* many ties */
            q[i].i = i;
            sorted[i] = q[i].v;
        }
        mc_v4_select_topk(q, n, k);
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_desc);
        float got[40];
        int seen[40] = {0}, ok = 1;
        for (int j = 0; j < n; j++) {
            ok &= q[j].i >= 0 && q[j].i < n && !seen[q[j].i];
            if (q[j].i >= 0 && q[j].i < n)
                seen[q[j].i] = 1;
        }
        for (int j = 0; j < k; j++)
            got[j] = q[j].v;
        qsort(got, (size_t)k, sizeof *got, cmp_desc);
        for (int j = 0; j < k; j++)
            ok &= got[j] == sorted[j];
        CHECK(ok);
    }
    /* A row of the fixture's indexer (sequence 0, position 55, layer 3):
     * three clear winners, then five entries tied at 0 (every head's ReLU
     * is 0) for the last slot, and -inf for entries not yet visible. The
     * reference (torch.topk on CPU) keeps entry 6, not the lowest index 5;
     * the golden logits depend on it. */
    float v[16] = {-0.224336f, -0.631973f, -0.381686f, -0.370619f, 0.0430906f, 0, 0, 0,
                   0.590475f, -0.655473f, 0.483237f, 0, 0, -0.124736f, -INFINITY, -INFINITY};
    mc_v4_sel q[16];
    for (int i = 0; i < 16; i++) {
        q[i].v = v[i];
        q[i].i = i;
    }
    mc_v4_select_topk(q, 16, 4);
    int has[16] = {0};
    for (int j = 0; j < 4; j++)
        has[q[j].i] = 1;
    CHECK(has[4] && has[8] && has[10] && has[6]);
}

/* ---- config ---- */

static const char *base_cfg =
    "{\"model_type\": \"deepseek_v4\", \"vocab_size\": 1024, \"hidden_size\": 256,"
    " \"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"num_key_value_heads\": 1,"
    " \"head_dim\": 64, \"q_lora_rank\": 96, \"moe_intermediate_size\": 64,"
    " \"n_routed_experts\": 16, \"num_experts_per_tok\": 4, \"hc_mult\": 4,"
    " \"index_topk\": 4, \"partial_rotary_factor\": 0.25, \"o_groups\": 2, \"o_lora_rank\": 64,"
    " \"index_n_heads\": 4, \"index_head_dim\": 32, \"sliding_window\": 8,"
    " \"scoring_func\": \"sqrtsoftplus\","
    " \"compress_rates\": {\"compressed_sparse_attention\": 4, \"heavily_compressed_attention\": 16},"
    " \"layer_types\": [\"heavily_compressed_attention\", \"heavily_compressed_attention\","
    " \"sliding_attention\", \"compressed_sparse_attention\"],"
    " \"mlp_layer_types\": [\"hash_moe\", \"hash_moe\", \"moe\", \"moe\"]}";

/* Parses base_cfg with `from` replaced by `to` (from must occur). */
static mc_status parse_with(const char *from, const char *to, mc_model_desc *d, mc_err *e)
{
    char buf[4096];
    const char *p = from ? strstr(base_cfg, from) : NULL;
    if (from && !p) {
        fprintf(stderr, "test bug: '%s' not in the base config\n", from);
        check_failures++;
        return MC_ERR_INTERNAL;
    }
    if (p)
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - base_cfg), base_cfg, to, p + strlen(from));
    else
        snprintf(buf, sizeof buf, "%s", base_cfg);
    mc_err_clear(e);
    return mc_model_desc_parse(buf, strlen(buf), "config.json", d, e);
}

static void refused(const char *from, const char *to, const char *needle)
{
    mc_model_desc d;
    mc_err e;
    mc_status st = parse_with(from, to, &d, &e);
    CHECK(st != MC_OK);
    if (st != MC_OK && !strstr(e.msg, needle)) {
        fprintf(stderr, "message for %s -> %s lacks '%s': %s\n", from, to, needle, e.msg);
        check_failures++;
    }
}

static void test_config(void)
{
    mc_model_desc d;
    mc_err e;
    CHECK(parse_with(NULL, NULL, &d, &e) == MC_OK);
    CHECK(d.family == MC_FAM_DEEPSEEK_V4 && d.v4.hc_mult == 4 && d.v4.hc_sinkhorn_iters == 20);
    CHECK(d.rope.dim == 16 && d.v4.csa_rate == 4 && d.v4.hca_rate == 16);
    CHECK(d.v4.layer_attn[0] == MC_V4_ATTN_HCA && d.v4.layer_attn[2] == MC_V4_ATTN_SLIDING &&
          d.v4.layer_attn[3] == MC_V4_ATTN_CSA);
    CHECK(d.v4.layer_hash[0] && d.v4.layer_hash[1] && !d.v4.layer_hash[2]);
    CHECK_NEAR(d.v4.compress_theta, 160000.0, 0);
    CHECK_NEAR(d.rope.theta, 10000.0, 0);
    CHECK_NEAR(d.attn_scale, 0.125, 1e-7);
    /* legacy spellings */
    CHECK(parse_with("\"layer_types\"", "\"compress_ratios\": [128, 0, 4, 4], \"x_layer_types\"", &d,
                     &e) == MC_OK);
    CHECK(d.v4.layer_attn[0] == MC_V4_ATTN_HCA && d.v4.layer_attn[1] == MC_V4_ATTN_SLIDING &&
          d.v4.layer_attn[2] == MC_V4_ATTN_CSA);
    CHECK(parse_with("\"mlp_layer_types\"", "\"num_hash_layers\": 1, \"x_mlp\"", &d, &e) == MC_OK);
    CHECK(d.v4.layer_hash[0] && !d.v4.layer_hash[1]);

    refused("\"hc_mult\": 4", "\"hc_mult\": 0", "hc_mult");
    refused("\"index_topk\": 4", "\"index_topk\": 0", "index_topk");
    refused("\"index_topk\": 4", "\"index_topk\": -3", "index_topk");
    refused("\"num_key_value_heads\": 1", "\"num_key_value_heads\": 2", "num_key_value_heads");
    refused("\"scoring_func\": \"sqrtsoftplus\"", "\"scoring_func\": \"softmax\"", "scoring_func");
    refused("\"sliding_attention\"", "\"full_attention\"", "layer_types");
    refused("\"moe\", \"moe\"]", "\"moe\", \"dense\"]", "mlp_layer_types");
    refused("\"o_groups\": 2", "\"o_groups\": 3", "o_groups");
    refused("\"partial_rotary_factor\": 0.25", "\"partial_rotary_factor\": 0.7", "rotary");
    refused("\"head_dim\": 64", "\"head_dim\": 64, \"quantization_config\": {\"quant_method\": \"fp8\"}",
            "quantized");
    refused("\"hc_mult\": 4", "\"hc_mult\": 4, \"n_shared_experts\": 2", "shared");
    refused("\"sliding_window\": 8", "\"sliding_window\": 0", "sliding_window");
    refused("\"heavily_compressed_attention\": 16", "\"heavily_compressed_attention\": 0",
            "heavily_compressed_attention");
}

/* ---- forward: chunked prefill equals one full forward ---- */

static void test_chunked(const char *fx)
{
    char dir[4200];
    if (snprintf(dir, sizeof dir, "%.4096s/models/deepseek-v4-tiny", fx) >= (int)sizeof dir)
        return;
    mc_model *m = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (mc_model_load(dir, &m, &e) != MC_OK) {
        fprintf(stderr, "load %s: %s\n", dir, e.msg);
        check_failures++;
        return;
    }
    enum { T = 40 };
    int V = m->d.vocab;
    int64_t tok[T];
    for (int t = 0; t < T; t++)
        tok[t] = (t * 37 + 11) % V;
    float *full = malloc(sizeof(float) * T * V), *inc = malloc(sizeof(float) * T * V);
    mc_kv *kv = NULL;
    CHECK(full && inc && mc_kv_create(m, T, &kv, &e) == MC_OK);
    if (full && inc && kv) {
        CHECK(mc_model_forward(m, kv, tok, T, full, false, &e) == MC_OK);
        mc_kv_reset(kv);
        /* chunks straddling the sliding window and the compressor windows */
        int cuts[] = {0, 3, 10, 11, 17, 30, 31, T};
        for (int c = 0; c + 1 < (int)(sizeof cuts / sizeof cuts[0]); c++)
            CHECK(mc_model_forward(m, kv, tok + cuts[c], cuts[c + 1] - cuts[c],
                                   inc + (size_t)cuts[c] * V, false, &e) == MC_OK);
        double num = 0, den = 0;
        for (size_t i = 0; i < (size_t)T * V; i++) {
            num += (double)(full[i] - inc[i]) * (full[i] - inc[i]);
            den += (double)full[i] * full[i];
        }
        CHECK(sqrt(num / den) < 1e-6);
        /* the cache refuses to overflow */
        mc_err_clear(&e);
        CHECK(mc_model_forward(m, kv, tok, 1, NULL, false, &e) != MC_OK);
    }
    /* tiny caches: shorter than the sliding window and the HCA rate */
    mc_kv *small = NULL;
    CHECK(mc_kv_create(m, 5, &small, &e) == MC_OK);
    if (small && full && inc) {
        CHECK(mc_model_forward(m, small, tok, 5, full, false, &e) == MC_OK);
        mc_kv_reset(small);
        for (int t = 0; t < 5; t++)
            CHECK(mc_model_forward(m, small, tok + t, 1, inc + (size_t)t * V, false, &e) == MC_OK);
        int same = 1;
        for (size_t i = 0; i < (size_t)5 * V; i++)
            same &= fabsf(full[i] - inc[i]) <= 1e-5f * (1.0f + fabsf(full[i])) && isfinite(inc[i]);
        CHECK(same);
    }
    mc_kv_free(small);
    free(full);
    free(inc);
    mc_kv_free(kv);
    mc_model_free(m);
}

int main(int argc, char **argv)
{
    const char *fx0 = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    char fxbuf[4096];
    const char *fx = fx0 && realpath(fx0, fxbuf) ? fxbuf : fx0;
    test_sinkhorn();
    test_scores();
    test_routing();
    test_topk();
    test_config();
    if (fx) {
        test_chunked(fx);
    } else {
        fprintf(stderr, "no fixtures folder given\n");
        check_failures++;
    }
    return check_report("test_deepseek_v4");
}
