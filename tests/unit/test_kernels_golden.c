/* test_kernels_golden.c - the golden fixtures under every kernel path: each
 * model's reference input through mc_model_forward with the path forced
 * (as MC_KERNELS would), logits compared with the reference logits at the
 * golden tests' tolerance (1e-4 relative per sequence, 99% argmax), and
 * with 1 and 2 kernel threads. Prints the figures of each run. */
#include "check.h"
#include "kernels.h"
#include "model.h"
#include "ref.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

static void run_fixture(const char *fixtures, const char *name)
{
    char dir[1024], gpath[1100];
    snprintf(dir, sizeof dir, "%s/models/%s", fixtures, name);
    snprintf(gpath, sizeof gpath, "%s/golden.safetensors", dir);
    mc_err err;
    mc_err_clear(&err);
    st_file *g = NULL;
    mc_model *m = NULL;
    if (st_file_open(gpath, &g, &err) != MC_OK || mc_model_load(dir, &m, &err) != MC_OK) {
        fprintf(stderr, "%s: %s\n", name, err.msg);
        check_failures++;
        st_file_close(g);
        return;
    }
    const st_tensor *ti = st_file_find(g, "input_ids"), *tl = st_file_find(g, "logits");
    CHECK(ti && tl && ti->ndim == 2 && tl->ndim == 3);
    if (!ti || !tl || ti->ndim != 2 || tl->ndim != 3) {
        st_file_close(g);
        mc_model_free(m);
        return;
    }
    int B = (int)ti->shape[0], T = (int)ti->shape[1], V = (int)tl->shape[2];
    int64_t *ids = malloc((size_t)B * T * sizeof *ids);
    float *ref = malloc((size_t)tl->numel * sizeof *ref), *out = malloc((size_t)T * V * sizeof *out);
    memcpy(ids, ti->data, (size_t)B * T * sizeof *ids);
    st_tensor_to_f32(tl, ref);
    for (int p = 0; p < MC_KPATH_COUNT; p++) {
        if (!mc_kpath_supported((mc_kpath)p))
            continue;
        for (int th = 1; th <= 2; th++) {
            mc_kernels_set_path((mc_kpath)p);
            mc_kernels_set_threads(th);
            double worst = 0;
            int worst_agree = T;
            for (int b = 0; b < B; b++) {
                mc_kv *kv = NULL;
                if (mc_kv_create(m, T, &kv, &err) != MC_OK ||
                    mc_model_forward(m, kv, ids + (size_t)b * T, T, out, false, &err) != MC_OK) {
                    fprintf(stderr, "%s [%s]: %s\n", name, mc_kpath_name((mc_kpath)p), err.msg);
                    check_failures++;
                    mc_kv_free(kv);
                    break;
                }
                mc_kv_free(kv);
                double num = 0, den = 0;
                int agree = 0;
                for (int t = 0; t < T; t++) {
                    const float *o = out + (size_t)t * V, *r = ref + ((size_t)b * T + t) * V;
                    for (int v = 0; v < V; v++) {
                        num += ((double)o[v] - r[v]) * ((double)o[v] - r[v]);
                        den += (double)r[v] * r[v];
                    }
                    agree += argmax(o, V) == argmax(r, V);
                }
                double rel = sqrt(num / den);
                if (rel > worst)
                    worst = rel;
                if (agree < worst_agree)
                    worst_agree = agree;
            }
            printf("  %-22s %-6s %d thread%s: worst rel err %.3e, argmax %d/%d\n", name,
                   mc_kpath_name((mc_kpath)p), th, th > 1 ? "s" : " ", worst, worst_agree, T);
            CHECK(worst <= 1e-4);
            CHECK(worst_agree >= 0.99 * T);
        }
    }
    free(ids);
    free(ref);
    free(out);
    st_file_close(g);
    mc_model_free(m);
}

int main(int argc, char **argv)
{
    const char *fixtures = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fixtures) {
        fprintf(stderr, "usage: test_kernels_golden FIXTURES_DIR\n");
        return 2;
    }
    static const char *models[] = {"qwen3-moe-tiny",    "deepseek-v3-tiny", "deepseek-v3-tiny-fp8",
                                   "deepseek-v32-tiny", "llama4-tiny",      "mistral4-tiny",
                                   "deepseek-v4-tiny"};
    printf("golden logits under every kernel path (tolerance 1e-4, argmax 99%%):\n");
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        run_fixture(fixtures, models[i]);
    return check_report("test_kernels_golden");
}
