/* moe.h - feed-forward blocks: SwiGLU FFN and the routed MoE layer. */
#ifndef MC_MOE_H
#define MC_MOE_H

#include "model.h"

/* y[n, H] = down(silu(gate x) * up x); scratch holds 2*n*inter floats. */
void mc_ffn(const mc_ffn_w *f, const float *x, int n, int ldx, float *y, int ldy, float *scratch);

/* Routed experts of layer l (dispatched to the ranks holding them over the
 * ep group, grouped per expert, weighted, combined) plus this rank's share
 * of the shared experts. x and y are [n, hidden] and must not alias. Under
 * tp > 1, y holds partial sums the caller all-reduces over the tp group.
 * Collective over the ep group (also for n = 0). */
mc_status mc_moe(mc_model *m, int l, const mc_layer_w *w, const float *x, int n, float *y,
                 mc_err *err);

#endif
