/* attention.h - attention variants over a per-sequence KV cache. */
#ifndef MC_ATTENTION_H
#define MC_ATTENTION_H

#include "model.h"

/* cos/sin tables for n positions starting at pos0: [n, rope.dim/2] each,
 * YaRN's attention factor folded in. */
void mc_rope_tables(const mc_model *m, int pos0, int n, float *cs, float *sn);

/* Multi-head latent attention (DeepSeek MLA), absorbed form: caches the
 * normalized latent and the rotated rope key; x [n, H] -> y [n, H]. */
mc_status mc_attn_mla(const mc_model *m, const mc_layer_w *w, mc_kv *kv, int layer, const float *x,
                      int n, const float *cs, const float *sn, float *y, mc_err *err);

/* Grouped-query attention with optional per-head q/k RMSNorm (Qwen3). */
mc_status mc_attn_gqa(const mc_model *m, const mc_layer_w *w, mc_kv *kv, int layer, const float *x,
                      int n, const float *cs, const float *sn, float *y, mc_err *err);

/* Top-k selection used by the sparse-attention indexer: writes min(k, n)
 * indices of the largest v[i] to sel (highest first; an exact tie goes to
 * the lower index, i.e. the earlier token). taken is n bytes of scratch. */
int mc_topk_indices(const float *v, int n, int k, int *sel, unsigned char *taken);

#endif
