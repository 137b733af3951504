/* ref_internal.h - what the reference's files share among themselves (not
 * for tests: they use ref.h). */
#ifndef MC_REF_INTERNAL_H
#define MC_REF_INTERNAL_H

#include "deepseek_v4_internal.h"
#include "ref.h"

/* y[n, H] = down(silu(gate x) * up x); scratch holds 2*n*inter floats. */
void mc_ffn(const mc_ffn_w *f, const float *x, int n, int ldx, float *y, int ldy, float *scratch);

/* Routed experts of layer l (dispatched to the ranks holding them over the
 * ep group, grouped per expert, weighted, combined) plus this rank's share
 * of the shared experts. x and y are [n, hidden] and must not alias. Under
 * tp > 1, y holds partial sums the caller all-reduces over the tp group.
 * Collective over the ep group (also for n = 0). */
mc_status mc_moe(mc_model *m, int l, const mc_layer_w *w, const float *x, int n, float *y,
                 mc_err *err);

/* ---- DeepSeek-V4 ---- */

/* Per-layer incremental state of one compressor. */
typedef struct {
    float *ring_kv, *ring_gate; /* [2*rate, (1+overlap)*cd]: raw projections (gate + ape) by pos % (2*rate) */
    float *entries;             /* [max_entries, cd]: pooled, normed, rotated */
    int n_entries, max_entries;
} mc_v4_comp_state;

typedef struct {
    float *win;                 /* [window, head_dim]: rotated K=V by pos % window */
    mc_v4_comp_state comp, icomp;
} mc_v4_layer_state;

typedef struct {
    int n_layers;
    mc_v4_layer_state *layers;
} mc_v4_kv;

/* Creates the V4 cache state in kv->ext (kv->cap tokens), freed by
 * mc_v4_kv_free (mc_kv_free calls it); mc_v4_kv_reset empties it. */
mc_status mc_v4_kv_init(const mc_model *m, mc_kv *kv, mc_err *err);
void mc_v4_kv_free(mc_kv *kv);
void mc_v4_kv_reset(mc_kv *kv);
/* Same contract as mc_model_forward (one process). */
mc_status mc_v4_forward(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                        bool last_only, mc_err *err);

/* Rotates the trailing `rd` dims of v (interleaved pairs). */
void mc_v4_rope_tail(float *v, int dim, int rd, const float *cs, const float *sn);

/* Attention sub-layer of layer l on n tokens at positions kv->len..: x [n, H]
 * (already normed); y [n, H]. Updates the layer's cache. */
mc_status mc_v4_attention(const mc_model *m, int l, mc_kv *kv, const float *x, int n, float *y,
                          mc_err *err);

#endif
