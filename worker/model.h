/* model.h - a loaded model: the normalized description plus weight views
 * bound to the memory-mapped checkpoint, and this rank's share of it. The
 * forward pass is the step executor's (step.h); the per-call reference
 * forward kept for tests is in tests/ref/.
 *
 * A model is one rank's share (layout.h): the layers of its pipeline stage,
 * its routed experts, its slice of the attention heads, of the dense and
 * shared-expert FFN width and of the LM head's vocabulary. Only those
 * tensors are bound (and so only their pages of the mapping are ever read).
 * In a single process the share is the whole model and every communicator
 * is a one-rank self comm.
 *
 * Lifetimes: mc_model owns the checkpoint mapping (or the GGUF source and
 * its joined kv_b copies), the small f32 copies
 * (norm weights, biases, FP8 scales) and its tp/ep/pp communicators; the
 * world communicator of a distributed model is borrowed from the caller.
 * Weight matrices are borrowed views into the mapping.
 */
#ifndef MC_MODEL_H
#define MC_MODEL_H

#include "comm.h"
#include "kernels.h"
#include "layout.h"
#include "model_config.h"
#include "parallel.h"
#include "safetensors.h"
#include "status.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    mc_mat gate, up, down; /* gate/up [inter, hidden], down [hidden, inter] */
} mc_ffn_w;

typedef struct {
    float *attn_norm, *ffn_norm; /* [hidden] */
    /* MLA */
    mc_mat q_a, q_b, q_proj, kv_a, kv_b; /* q_a [q_lora, H], q_b [nh*qk, q_lora] or q_proj [nh*qk, H],
                                            kv_a [kv_lora+rope, H], kv_b [nh*(nope+v), kv_lora] */
    float *q_a_norm, *kv_a_norm;
    /* GQA */
    mc_mat wq, wk, wv;   /* [nh*hd, H], [nkv*hd, H], [nkv*hd, H] */
    float *q_norm, *k_norm; /* [hd] (Qwen3 per-head norms) */
    mc_mat wo;           /* [H, nh*v] */
    /* DeepSeek-V3.2 lightning indexer */
    mc_mat idx_wq_b;     /* [idx_heads*idx_hd, q_lora] */
    mc_mat idx_wk;       /* [idx_hd, H] */
    float *idx_k_norm, *idx_k_bias; /* LayerNorm [idx_hd] */
    mc_mat idx_weights;  /* [idx_heads, H] */
    /* feed-forward */
    bool moe;
    mc_ffn_w dense;
    mc_mat router;       /* [E, H] */
    float *score_bias;   /* [E] or NULL */
    mc_ffn_w *experts;   /* [E] */
    bool has_shared;
    mc_ffn_w shared;
} mc_layer_w;

typedef struct mc_model {
    mc_model_desc d;
    st_checkpoint *ckpt;  /* safetensors checkpoint, or NULL when loaded from GGUF */
    struct mc_gguf_model *gguf; /* GGUF source (model_gguf.h), or NULL */
    mc_mat embed;        /* [V, H] */
    mc_mat lm_head;      /* [V, H] */
    float *final_norm;   /* [H] */
    mc_layer_w *layers;  /* [n_layers] */
    double *inv_freq;    /* [rope.dim/2] */
    struct mc_v4_model *v4; /* DeepSeek-V4 weights (deepseek_v4.c), else NULL */
    void **owned;        /* f32 copies to free */
    size_t n_owned, cap_owned;
    /* this rank's share and its communicators (parallel.h) */
    mc_layout lay;
    mc_comm *world;      /* borrowed from mc_model_load_dist's caller, or owned (single process) */
    mc_comm *tp_comm, *ep_comm, *pp_comm; /* owned */
    bool owns_world;
    /* the data plane of a device backend's tensors (mc_par_data_plane):
     * MC_PLANE_HOST / STAGED move host memory over tp/ep/pp_comm; DIRECT
     * passes device addresses to those same comms (dev_* alias them);
     * NCCL to dev_* split from a world communicator (not kept: dev_world
     * NULL), owned */
    int plane; /* mc_plane */
    mc_comm *dev_world, *dev_tp, *dev_ep, *dev_pp;
    bool shards;         /* loaded from a `moecluster shard` set: tensors stored pre-cut */
    mc_stat_row *stats;  /* MC_STAT_ROWS(n_layers) rows, NULL unless enabled */
    /* the step executor's KV cache: MC_DT_F32 (the default, 0) or MC_DT_BF16
     * (--kv-cache-dtype bf16; GQA and MLA caches on the CPU backend) */
    mc_dtype kv_dtype;
    /* the weights go to a device backend (mc_backend_host_memory 0): load-time
     * copies keep the stored row layout (no mc_mat_pack, which only the CPU
     * kernels read) */
    bool stored_layout;
    struct { int rank, layer; char mode[8]; } fault; /* MC_FAULT_INJECT, rank -1 = off */
} mc_model;

/* Loads DIR/config.json and the checkpoint in DIR, checks every tensor the
 * description implies (presence, shape, dtype, FP8 scales). The whole model,
 * one process (DIR may also be a shard set cut for one rank, or a GGUF
 * file or a folder of split GGUF parts: model_gguf.h). */
mc_status mc_model_load(const char *dir, mc_model **out, mc_err *err);

/* Collective over world: every rank loads its share of the model under the
 * layout (tp, ep, pp; <= 0 = default, see mc_layout_make) and binds only
 * its own tensors. DIR is a checkpoint (each rank reads only its tensors
 * from it) or a shard set written by `moecluster shard` (DIR/plan.json,
 * DIR/rank-NNNNN/: each rank reads its own folder; the layout is the
 * plan's, and tp/ep/pp given here must agree with it). Fails on every rank
 * when it fails on any (see mc_par_agree for which rank keeps the message).
 * world must outlive the model. */
mc_status mc_model_load_dist(const char *dir, mc_comm *world, int tp, int ep, int pp,
                             mc_model **out, mc_err *err);
void mc_model_free(mc_model *m);

/* Whether this rank receives the full logits of its dp group from a step
 * (mc_step_exec_run): the last stage's tp rank 0. */
bool mc_model_is_output(const mc_model *m);

/* MC_FAULT_INJECT (parsed at load): this rank fails on reaching layer l,
 * as the failure tests ask (exit, crash or hang); otherwise nothing. */
void mc_fault_check(const mc_model *m, int l);

/* The decoder families' binder (family.h's row for DeepSeek-V3 / V3.2,
 * Qwen3-MoE, Llama 4, Mistral 4): this rank's share (checkpoint open,
 * layout set): the embedding on the first stage, the final norm and the LM
 * head's vocabulary slice on the last, and the stage's layers. */
mc_status mc_model_bind_decoder(mc_model *m, mc_err *err);

/* Hands p (malloc'd) to the model, freed by mc_model_free; returns p, or
 * NULL (and frees p) when p is NULL or the list cannot grow. */
void *mc_model_own(mc_model *m, void *p);

/* True when DIR is a shard set written by `moecluster shard` (DIR/manifest.json). */
bool mc_is_shard_set(const char *dir);

/* Loading a shard set checks this rank's tensors against the manifest's
 * dtypes, shapes and xxh64 checksums (mc_shard_verify_rank) unless turned
 * off (--no-verify). Process-wide; on by default. */
void mc_model_verify_shards(bool on);

#endif
