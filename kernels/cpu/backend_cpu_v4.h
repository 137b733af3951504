/* cpu/backend_cpu_v4.h - internal to the CPU backend: its DeepSeek-V4
 * entries (backend_cpu_v4.c), arguments as the mc_op_v4_* of backend.h,
 * validated by the front end; ctx is unused. */
#ifndef MC_BACKEND_CPU_V4_H
#define MC_BACKEND_CPU_V4_H

#include "backend.h"

mc_status mc_cpu_v4_hc_pre(void *ctx, const mc_tensor *x, const mc_tensor *mix,
                           const mc_tensor *base, const mc_tensor *scale, const mc_v4_hc_opts *o,
                           mc_tensor *post, mc_tensor *comb, mc_tensor *y, mc_err *err);
mc_status mc_cpu_v4_hc_post(void *ctx, mc_tensor *x, const mc_tensor *post, const mc_tensor *comb,
                            const mc_tensor *y, mc_err *err);
mc_status mc_cpu_v4_compress(void *ctx, const mc_tensor *kv_pages, const mc_tensor *gate_pages,
                             const mc_tensor *ape, const mc_tensor *norm, const mc_tensor *cs,
                             const mc_tensor *sn, const mc_kv_index *ix, const mc_v4_comp_opts *o,
                             mc_tensor *out_pages, mc_err *err);
mc_status mc_cpu_v4_index_topk(void *ctx, const mc_tensor *iq, const mc_tensor *w,
                               const mc_tensor *key_pages, const mc_kv_index *ix,
                               const mc_v4_index_opts *o, mc_tensor *sel, mc_err *err);
mc_status mc_cpu_v4_attention(void *ctx, const mc_tensor *q, const mc_tensor *kv_pages,
                              const mc_tensor *comp_pages, const mc_tensor *sinks,
                              const mc_tensor *sel, const mc_kv_index *ix, const mc_v4_attn_opts *o,
                              mc_tensor *y, mc_err *err);
mc_status mc_cpu_v4_hash_route(void *ctx, const mc_tensor *logits, const mc_tensor *tok,
                               const mc_tensor *table, const mc_router_opts *opts, mc_tensor *ids,
                               mc_tensor *weights, mc_err *err);

#endif
