/* moe.h - feed-forward blocks: SwiGLU FFN and the routed MoE layer. */
#ifndef MC_MOE_H
#define MC_MOE_H

#include "model.h"

/* y[n, H] = down(silu(gate x) * up x); scratch holds 2*n*inter floats. */
void mc_ffn(const mc_ffn_w *f, const float *x, int n, int ldx, float *y, int ldy, float *scratch);

/* Routed experts (grouped per expert, weighted) plus shared experts. x and y
 * are [n, hidden] and must not alias. */
mc_status mc_moe(const mc_model *m, const mc_layer_w *w, const float *x, int n, float *y,
                 mc_err *err);

#endif
