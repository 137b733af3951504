/* rope.c - rotary position tables (see rope.h). */
#include "rope.h"

#include <math.h>

void mc_rope_tables(const mc_model *m, int pos0, int n, float *cs, float *sn)
{
    int half = m->d.rope.dim / 2;
    double af = m->d.rope.attention_factor;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < half; i++) {
            double ang = (double)(pos0 + t) * m->inv_freq[i];
            cs[(size_t)t * half + i] = (float)(cos(ang) * af);
            sn[(size_t)t * half + i] = (float)(sin(ang) * af);
        }
}

void mc_v4_rope_cs(const double *inv_freq, int half, int pos, float *cs, float *sn)
{
    for (int i = 0; i < half; i++) {
        float a = (float)inv_freq[i] * (float)pos;
        cs[i] = (float)cos((double)a);
        sn[i] = (float)sin((double)a);
    }
}
