/* nonfinite.h - NaN and infinity in the forward pass: a cheap check of the
 * activations at a few points of every step, and, once one fails, a scan of
 * the weights that could have produced the values so that the error names
 * the tensor and element at fault.
 *
 * A NaN or an infinity in a weight spreads through every later layer and
 * ends as all-NaN logits, from which sampling picks token 0 without a word.
 * The forward pass checks the embedded input, the residual stream after each
 * attention and FFN / MoE block, and the logits (one pass over values it has
 * just written; see docs for the measured cost), and fails the step with a
 * message such as
 *   layer 2: non-finite activations (NaN) after the MoE block at position 0;
 *   tensor model.layers.2.mlp.experts.3.up_proj.weight holds NaN at element 17
 */
#ifndef MC_NONFINITE_H
#define MC_NONFINITE_H

#include "model.h"
#include "safetensors.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Index of the first NaN or infinity among x[0, n), or -1 when all finite. */
int64_t mc_first_nonfinite(const float *x, size_t n);

/* Whether tensor t stores a NaN or an infinity (F32, F16, BF16, F8_E4M3,
 * Q8_0 and Q4_K; integer tensors never do). On true, *elem is the first
 * such element's index and *what "NaN", "+Inf" or "-Inf". */
bool mc_tensor_nonfinite(const st_tensor *t, uint64_t *elem, const char **what);

typedef enum {
    MC_NF_INPUT, /* the embedded input tokens */
    MC_NF_ATTN,  /* the residual stream after a layer's attention block */
    MC_NF_FFN,   /* ... after its FFN or MoE block */
    MC_NF_EXPERTS, /* the outputs of this rank's routed experts (expert parallel) */
    MC_NF_HEAD,  /* the logits (final norm and LM head) */
} mc_nf_where;

/* Checks x [rows, width] (rows at positions pos0, pos0 + 1, ...); MC_OK when
 * every value is finite. Otherwise scans the checkpoint tensors behind
 * `where` (of `layer`; the embedding for the input, the final norm and LM
 * head for the logits) and fails with MC_ERR_FORMAT naming the first
 * non-finite weight, or MC_ERR_INTERNAL when the weights are all finite
 * (the activations overflowed). tokens (the step's ids, or NULL) are named
 * for the input. */
mc_status mc_nf_check(const mc_model *m, mc_nf_where where, int layer, const float *x, int rows,
                      size_t width, int pos0, const int64_t *tokens, mc_err *err);

/* The error for a matrix view (data: a pointer into the tensor, as bound)
 * that could not be quantized (`why`, the kernel's message): names the
 * checkpoint tensor holding it and its first non-finite element. */
mc_status mc_nf_blame_mat(const mc_model *m, const void *data, const char *why, mc_err *err);

#endif
