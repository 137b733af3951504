#include "sampler.h"

#include <math.h>
#include <stdlib.h>

void mc_sampler_init(mc_sampler *s, const mc_sampler_params *p)
{
    s->p = *p;
    s->state = p->seed ^ 0x9e3779b97f4a7c15ull;
}

double mc_sampler_uniform(mc_sampler *s)
{
    uint64_t z = (s->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static const float *g_sort_vals;

static int cmp_desc(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    float vx = g_sort_vals[x], vy = g_sort_vals[y];
    if (vx != vy)
        return vx > vy ? -1 : 1;
    return x - y;
}

int mc_sampler_pick(mc_sampler *s, const float *logits, int vocab, float *work_f, int *work_i)
{
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    if (s->p.temperature <= 0.0f)
        return best;
    /* candidates sorted by logit, descending */
    for (int i = 0; i < vocab; i++)
        work_i[i] = i;
    g_sort_vals = logits;
    qsort(work_i, (size_t)vocab, sizeof *work_i, cmp_desc);
    int n = vocab;
    if (s->p.top_k > 0 && s->p.top_k < n)
        n = s->p.top_k;
    double mx = logits[work_i[0]], sum = 0;
    for (int j = 0; j < n; j++) {
        work_f[j] = (float)exp((logits[work_i[j]] - mx) / s->p.temperature);
        sum += work_f[j];
    }
    if (s->p.top_p > 0.0f && s->p.top_p < 1.0f) {
        double acc = 0;
        int keep = n;
        for (int j = 0; j < n; j++) {
            acc += work_f[j] / sum;
            if (acc >= s->p.top_p) {
                keep = j + 1;
                break;
            }
        }
        n = keep;
        sum = 0;
        for (int j = 0; j < n; j++)
            sum += work_f[j];
    }
    double r = mc_sampler_uniform(s) * sum, acc = 0;
    for (int j = 0; j < n; j++) {
        acc += work_f[j];
        if (r < acc)
            return work_i[j];
    }
    return work_i[n - 1];
}
