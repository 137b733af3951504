/* sampler.h - token sampling from logits: greedy, temperature, top-k, top-p. */
#ifndef MC_SAMPLER_H
#define MC_SAMPLER_H

#include <stdint.h>

typedef struct {
    float temperature; /* <= 0: greedy */
    int top_k;         /* <= 0: off */
    float top_p;       /* >= 1: off */
    uint64_t seed;
} mc_sampler_params;

typedef struct {
    mc_sampler_params p;
    uint64_t state;
} mc_sampler;

void mc_sampler_init(mc_sampler *s, const mc_sampler_params *p);
/* Picks a token from logits[vocab]; `work` holds 2*vocab floats/ints of scratch
 * (vocab floats + vocab ints). Greedy ties go to the lowest id. */
int mc_sampler_pick(mc_sampler *s, const float *logits, int vocab, float *work_f, int *work_i);
/* Uniform double in [0,1) from the sampler's stream (splitmix64). */
double mc_sampler_uniform(mc_sampler *s);

#endif
