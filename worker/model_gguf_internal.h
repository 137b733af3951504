/* model_gguf_internal.h - shared by model_gguf.c (files, tensors,
 * conversions) and model_gguf_config.c (metadata -> config.json, the name
 * tables). Not part of the interface: see model_gguf.h. */
#ifndef MC_MODEL_GGUF_INTERNAL_H
#define MC_MODEL_GGUF_INTERNAL_H

#include "gguf.h"
#include "model_gguf.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* One handed-out view; name (GGUF's, with " [expert E]" for a slice) and
 * any converted data live with it. */
typedef struct gg_view {
    st_tensor t;
    void *conv;        /* a joined kv_b, or NULL */
    struct gg_view *next;
    char name[];
} gg_view;

struct mc_gguf_model {
    mc_gguf *g;
    char path[4096];
    const char *arch;
    const char *const *names; /* role -> GGUF name pattern (%d = layer), NULL = none */
    uint64_t stacked;         /* bit r: role r is a stacked [E, out, in] tensor */
    int n_experts;
    bool kv_b_split;          /* deepseek2: kv_b may come as attn_k_b + attn_v_b */
    int n_heads, qk_nope, v_dim, kv_lora; /* deepseek2: to join them */
    gg_view *views;
};

/* Reads general.architecture and the family's metadata of m->g into cfg (a
 * config.json object; the caller owns it) and sets m's arch, name table,
 * stacked roles and dims. An unknown architecture or a missing or mistyped
 * key is refused naming it. */
mc_status mc_gguf_config(mc_gguf_model *m, json_t *cfg, mc_err *err);

#endif
