/* cpu/backend_cpu_attn.h - the CPU backend's paged-KV-cache ops
 * (backend_cpu_attn.c), entries of its vtable (backend_cpu.c). Arguments as
 * mc_op_kv_write / mc_op_attention / mc_op_mla_decode in backend.h, already
 * validated by the front end; ctx is unused. Internal to kernels/. */
#ifndef MC_BACKEND_CPU_ATTN_H
#define MC_BACKEND_CPU_ATTN_H

#include "backend.h"

mc_status mc_cpu_kv_write(void *ctx, const mc_kv_index *ix, const mc_tensor *src,
                          mc_tensor *pages, mc_err *err);
mc_status mc_cpu_attention(void *ctx, const mc_tensor *q, const mc_tensor *k_pages,
                           const mc_tensor *v_pages, const mc_kv_index *ix,
                           const mc_attn_opts *opt, mc_tensor *y, mc_err *err);
mc_status mc_cpu_mla_decode(void *ctx, const mc_tensor *q_lat, const mc_tensor *q_pe,
                            const mc_tensor *lat_pages, const mc_tensor *pe_pages,
                            const mc_kv_index *ix, const mc_attn_opts *opt, mc_tensor *y,
                            mc_err *err);

#endif
