/* rope.h - rotary position tables of the step executor (step.c, step_v4.c). */
#ifndef MC_ROPE_H
#define MC_ROPE_H

#include "model.h"

/* cos/sin tables for n positions starting at pos0: cs and sn [n, rope.dim/2]
 * each (caller's buffers), YaRN's attention factor folded in. */
void mc_rope_tables(const mc_model *m, int pos0, int n, float *cs, float *sn);

/* DeepSeek-V4: cos/sin of the rotary angles at `pos` for half pairs, the
 * angle computed in float as the reference does; cs and sn [half] (caller's). */
void mc_v4_rope_cs(const double *inv_freq, int half, int pos, float *cs, float *sn);

#endif
