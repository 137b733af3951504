/* test_split.c - the split table and the balanced split (shard/split.c):
 * every small (n, parts) split checked exhaustively; the table's slices for
 * the tiny fixture models against expectations written out by hand from
 * their configs; and, for every tensor of every fixture, the tp slices of
 * all ranks tiling the tensor's cut dimension (or copying whole KV heads). */
#include "check.h"
#include "model_config.h"
#include "model_tensors.h"
#include "split.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fx;

static int load(const char *name, mc_model_desc *d)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/models/%s", fx, name);
    mc_err e;
    mc_err_clear(&e);
    if (mc_model_desc_load(path, d, &e) != MC_OK) {
        fprintf(stderr, "  %s: %s\n", path, e.msg);
        return -1;
    }
    return 0;
}

/* contiguous, covering [0, n), sizes differing by at most one, larger first;
 * mc_split_owner the inverse */
static void test_range(void)
{
    int bad = 0;
    for (int n = 0; n <= 40; n++)
        for (int parts = 1; parts <= 12; parts++) {
            int64_t prev_end = 0, prev_size = -1;
            for (int i = 0; i < parts; i++) {
                int64_t b, e;
                mc_split_range(n, parts, i, &b, &e);
                int64_t size = e - b, want = n / parts + (i < n % parts ? 1 : 0);
                int ok = b == prev_end && size == want && (prev_size < 0 || size <= prev_size);
                for (int64_t k = b; ok && k < e; k++)
                    ok = mc_split_owner(n, parts, k) == i;
                if (!ok && bad++ < 5)
                    fprintf(stderr, "  n %d parts %d part %d: [%lld, %lld), want size %lld\n", n,
                            parts, i, (long long)b, (long long)e, (long long)want);
                CHECK(ok);
                prev_end = e;
                prev_size = size;
            }
            CHECK(prev_end == n);
        }
    int64_t b, e;
    mc_split_range(16, 3, 0, &b, &e);
    CHECK(b == 0 && e == 6);
    mc_split_range(16, 3, 2, &b, &e);
    CHECK(b == 11 && e == 16);
}

static void test_kv_heads(void)
{
    int b, n;
    CHECK(mc_split_kv_heads(8, 4, 3, &b, &n) && b == 6 && n == 2); /* split */
    CHECK(mc_split_kv_heads(2, 8, 5, &b, &n) && b == 1 && n == 1); /* copies: ranks 4..7 head 1 */
    CHECK(mc_split_kv_heads(4, 8, 0, &b, &n) && b == 0 && n == 1);
    CHECK(mc_split_kv_heads(4, 8, 7, &b, &n) && b == 3 && n == 1);
    CHECK(!mc_split_kv_heads(3, 2, 1, &b, &n) && n == 2 && b == 1); /* refused; sized as 2 */
    CHECK(mc_split_kv_heads(5, 1, 0, &b, &n) && b == 0 && n == 5);
}

static void test_rules(void)
{
    CHECK(mc_split_rule_of(MC_T_Q_B).dim == MC_SPLIT_ROWS);
    CHECK(mc_split_rule_of(MC_T_O).dim == MC_SPLIT_COLS);
    CHECK(mc_split_rule_of(MC_T_K).unit == MC_UNIT_KV_HEAD);
    CHECK(mc_split_rule_of(MC_T_DENSE_DOWN).dim == MC_SPLIT_COLS);
    CHECK(mc_split_rule_of(MC_T_EXPERTS_GATE_UP).dim == MC_SPLIT_EXPERTS);
    CHECK(mc_split_rule_of(MC_T_EXPERT_DOWN).dim == MC_SPLIT_EXPERTS);
    CHECK(mc_split_rule_of(MC_T_LM_HEAD).dim == MC_SPLIT_VOCAB);
    static const mc_tensor_role repl[] = {MC_T_FINAL_NORM, MC_T_ATTN_NORM, MC_T_Q_A, MC_T_KV_A,
                                          MC_T_KV_A_NORM, MC_T_ROUTER, MC_T_ROUTER_BIAS,
                                          MC_T_Q_NORM, MC_T_IDX_WQ_B, MC_T_IDX_WK,
                                          MC_T_IDX_WEIGHTS, MC_T_IDX_K_NORM_BIAS};
    for (size_t i = 0; i < sizeof repl / sizeof repl[0]; i++) {
        CHECK(mc_split_rule_of(repl[i]).dim == MC_SPLIT_NONE);
        if (mc_split_rule_of(repl[i]).dim != MC_SPLIT_NONE)
            fprintf(stderr, "  %s is split\n", mc_tensor_role_str(repl[i]));
    }
    CHECK(mc_split_rule_of(MC_T_ROLE_COUNT).dim == MC_SPLIT_NONE);
    CHECK(!strcmp(mc_split_dim_str(MC_SPLIT_VOCAB), "vocab"));
}

static void expect(const mc_model_desc *d, mc_tensor_role role, int tp, int tr, int dim, int64_t b,
                   int64_t e)
{
    int64_t gb, ge;
    int gd = mc_split_tp_slice(d, role, tp, tr, &gb, &ge);
    int ok = gd == dim && gb == b && ge == e;
    CHECK(ok);
    if (!ok)
        fprintf(stderr, "  %s %s tp %d rank %d: dim %d [%lld, %lld), want dim %d [%lld, %lld)\n",
                d->model_type, mc_tensor_role_str(role), tp, tr, gd, (long long)gb,
                (long long)ge, dim, (long long)b, (long long)e);
}

/* Expectations written from the tiny configs' numbers, not from the table. */
static void test_families(void)
{
    mc_model_desc d;
    if (load("deepseek-v3-tiny", &d) == 0) { /* MLA */
        int64_t h = d.n_heads / 2, qk = d.qk_nope_dim + d.qk_rope_dim;
        expect(&d, MC_T_Q_B, 2, 1, 0, h * qk, 2 * h * qk);
        expect(&d, MC_T_KV_B, 2, 0, 0, 0, h * (d.qk_nope_dim + d.v_head_dim));
        expect(&d, MC_T_O, 2, 1, 1, h * d.v_head_dim, 2 * h * d.v_head_dim);
        expect(&d, MC_T_KV_A, 2, 1, -1, 0, 0);
        expect(&d, MC_T_Q_B, 1, 0, -1, 0, 0);
        int64_t I = d.dense_inter, half = (I + 1) / 2;
        expect(&d, MC_T_DENSE_UP, 2, 0, 0, 0, half);
        expect(&d, MC_T_DENSE_DOWN, 2, 1, 1, half, I);
        int64_t S = d.shared_inter;
        expect(&d, MC_T_SHARED_GATE, 2, 1, 0, (S + 1) / 2, S);
        int64_t V = d.vocab;
        expect(&d, MC_T_EMBED, 1, 0, 0, 0, V);
        expect(&d, MC_T_LM_HEAD, 2, 1, 0, (V + 1) / 2, V);
        expect(&d, MC_T_EXPERT_GATE, 2, 1, -1, 0, 0);
    }
    if (load("qwen3-moe-tiny", &d) == 0) { /* GQA, qk norms */
        int64_t hd = d.head_dim, nkv = d.n_kv_heads, nh = d.n_heads;
        expect(&d, MC_T_Q, 2, 1, 0, nh / 2 * hd, nh * hd);
        expect(&d, MC_T_O, 2, 0, 1, 0, nh / 2 * hd);
        if (nkv % 2 == 0)
            expect(&d, MC_T_K, 2, 1, 0, nkv / 2 * hd, nkv * hd);
        int tp = (int)nkv * 2; /* two ranks per KV head: copies */
        if (nh % tp == 0)
            expect(&d, MC_T_V, tp, tp - 1, 0, (nkv - 1) * hd, nkv * hd);
        expect(&d, MC_T_Q_NORM, 2, 1, -1, 0, 0);
    }
    if (load("deepseek-v32-tiny", &d) == 0) /* the indexer is replicated */
        expect(&d, MC_T_IDX_WQ_B, 2, 1, -1, 0, 0);
    if (load("llama4-tiny", &d) == 0) /* fused experts: split by ep, not tp */
        expect(&d, MC_T_EXPERTS_GATE_UP, 2, 1, -1, 0, 0);
}

/* For every tensor of each fixture and every tp dividing its heads: the
 * ranks' slices tile the cut dimension of the tensor's shape in order, or,
 * for KV heads copied over ranks, each slice is one whole head. */
static void test_tiling(const char *name)
{
    mc_model_desc d;
    if (load(name, &d) != 0) {
        CHECK(0);
        return;
    }
    mc_tensor_spec *specs = NULL;
    size_t n = 0;
    mc_err e;
    mc_err_clear(&e);
    CHECK(mc_model_tensor_specs(&d, &specs, &n, &e) == MC_OK);
    int bad = 0;
    for (int tp = 1; tp <= 8; tp++) {
        if (d.n_heads % tp)
            continue;
        int kv_copies = d.attn == MC_ATTN_GQA && d.n_kv_heads % tp != 0;
        for (size_t i = 0; i < n; i++) {
            const mc_tensor_spec *s = &specs[i];
            int64_t next = 0;
            int dim0 = -2;
            for (int r = 0; r < tp; r++) {
                int64_t b, en;
                int dim = mc_split_tp_slice(&d, s->role, tp, r, &b, &en);
                int ok = dim0 == -2 || dim == dim0;
                if (dim >= 0 && kv_copies && mc_split_rule_of(s->role).unit == MC_UNIT_KV_HEAD)
                    ok = ok && en - b == d.head_dim && b % d.head_dim == 0 &&
                         en <= s->shape[dim];
                else if (dim >= 0)
                    ok = ok && b == next && en >= b && (r < tp - 1 || en == s->shape[dim]);
                if (!ok && bad++ < 5)
                    fprintf(stderr,
                            "  %s tp %d rank %d %s: dim %d [%lld, %lld), shape [%lld, %lld]\n",
                            name, tp, r, s->name, dim, (long long)b, (long long)en,
                            (long long)s->shape[0], (long long)s->shape[1]);
                CHECK(ok);
                dim0 = dim;
                next = en;
            }
        }
    }
    free(specs);
}

int main(int argc, char **argv)
{
    fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "no fixtures folder\n");
        return 1;
    }
    test_range();
    test_kv_heads();
    test_rules();
    test_families();
    static const char *const models[] = {"deepseek-v3-tiny", "deepseek-v32-tiny", "llama4-tiny",
                                         "mistral4-tiny", "qwen3-moe-tiny"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        test_tiling(models[i]);
    return check_report("test_split");
}
