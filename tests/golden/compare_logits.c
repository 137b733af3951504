/* compare_logits - checks `moecluster score` output against reference logits.
 *
 * usage: compare_logits OUT.safetensors GOLDEN.safetensors [MAX_REL] [MIN_ARGMAX]
 * Per sequence b: rel = ||out_b - ref_b|| / ||ref_b|| must be <= MAX_REL
 * (default 1e-4) and the share of positions whose argmax agrees must be
 * >= MIN_ARGMAX (default 0.99). Prints the figures and the first mismatches.
 */
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

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s OUT GOLDEN [MAX_REL] [MIN_ARGMAX]\n", argv[0]);
        return 2;
    }
    double max_rel = argc > 3 ? atof(argv[3]) : 1e-4;
    double min_arg = argc > 4 ? atof(argv[4]) : 0.99;
    mc_err err;
    mc_err_clear(&err);
    st_file *fo = NULL, *fg = NULL;
    if (st_file_open(argv[1], &fo, &err) != MC_OK || st_file_open(argv[2], &fg, &err) != MC_OK) {
        fprintf(stderr, "compare_logits: %s\n", err.msg);
        return 2;
    }
    const st_tensor *o = st_file_find(fo, "logits"), *g = st_file_find(fg, "logits");
    if (!o || !g || o->dtype != MC_DT_F32 || g->dtype != MC_DT_F32 || o->ndim != 3 ||
        g->ndim != 3 || memcmp(o->shape, g->shape, 3 * sizeof o->shape[0])) {
        fprintf(stderr, "compare_logits: missing logits or shape/dtype mismatch\n");
        return 1;
    }
    int B = (int)g->shape[0], T = (int)g->shape[1], V = (int)g->shape[2];
    float *ov = malloc(o->numel * sizeof *ov), *gv = malloc(g->numel * sizeof *gv);
    if (!ov || !gv)
        return 2;
    st_tensor_to_f32(o, ov);
    st_tensor_to_f32(g, gv);
    int fail = 0;
    for (int b = 0; b < B; b++) {
        double num = 0, den = 0;
        int agree = 0, shown = 0;
        for (int t = 0; t < T; t++) {
            const float *x = ov + ((size_t)b * T + t) * V, *y = gv + ((size_t)b * T + t) * V;
            double pn = 0, pd = 0;
            for (int v = 0; v < V; v++) {
                double dd = (double)x[v] - y[v];
                pn += dd * dd;
                pd += (double)y[v] * y[v];
            }
            num += pn;
            den += pd;
            int ax = argmax(x, V), ay = argmax(y, V);
            agree += ax == ay;
            if ((ax != ay || !(sqrt(pn / (pd > 0 ? pd : 1)) <= max_rel)) && shown < 5) {
                shown++;
                fprintf(stderr,
                        "  seq %d pos %d: argmax out %d (%.6f) ref %d (%.6f), rel err %.3g\n", b, t,
                        ax, x[ax], ay, y[ay], sqrt(pn / (pd > 0 ? pd : 1)));
            }
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        double share = (double)agree / T;
        int ok = rel <= max_rel && share >= min_arg;
        printf("seq %d: rel err %.3e (max %.1e), argmax agreement %d/%d = %.3f (min %.2f) %s\n", b,
               rel, max_rel, agree, T, share, min_arg, ok ? "ok" : "FAIL");
        fail |= !ok;
    }
    free(ov);
    free(gv);
    st_file_close(fo);
    st_file_close(fg);
    return fail;
}
