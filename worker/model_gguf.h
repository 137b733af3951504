/* model_gguf.h - llama.cpp's GGUF files as a model source: the model
 * description from the file's metadata (instead of config.json) and the
 * tensors the loader asks for by role (instead of by Hugging Face name).
 *
 * Families (general.architecture): "qwen3moe", "deepseek2". The description is built as
 * the config.json Hugging Face would hold for the same model and parsed by
 * the same code (mc_model_desc_parse), so both paths give one description.
 * Tensor names follow the `gguf` Python package's constants (TENSOR_NAMES,
 * MODEL_TENSORS); docs/gguf.md lists the table.
 *
 * Tensors are handed out as st_tensor views (PyTorch dim order: GGUF ne
 * reversed) into the file's read-only mapping: F32, F16, BF16, Q8_0, Q4_K,
 * Q5_K and Q6_K as stored (the kernels' blocks are llama.cpp's, byte for
 * byte; a device session converts Q5_K to Q8_0 after the load,
 * mc_model_convert). A stacked expert tensor (ne [in, out, E]) gives
 * one expert's [out, in] slice per request. Other ggml types are refused
 * by name.
 *
 * Lifetimes: the source owns the GGUF mapping, the st_tensor views and the
 * joined kv_b copies; all live until mc_gguf_model_close.
 */
#ifndef MC_MODEL_GGUF_H
#define MC_MODEL_GGUF_H

#include "model_config.h"
#include "model_tensors.h"
#include "safetensors.h"
#include "status.h"

#include <stdbool.h>

typedef struct mc_gguf_model mc_gguf_model;

/* True when PATH is a GGUF model: a regular file named *.gguf or starting
 * with the bytes "GGUF", or a folder with a *.gguf file and neither
 * config.json nor params.json. Reads at most 4 bytes; never blocks on a
 * FIFO (non-regular files are not GGUF here; the reader refuses them). */
bool mc_gguf_is_model(const char *path);

/* Opens PATH (a .gguf file or a folder of split parts, core/gguf.h) and
 * fills *d from its metadata. Unknown architectures, missing or mistyped
 * keys are refused naming the key. Free *out with mc_gguf_model_close. */
mc_status mc_gguf_model_open(const char *path, mc_gguf_model **out, mc_model_desc *d,
                             mc_err *err);

/* The tensor for (role, layer, expert) as a view owned by g. Missing
 * tensors, stacked tensors whose expert count disagrees with the metadata
 * and unsupported ggml types are refused naming the GGUF tensor; shapes are
 * checked by the caller (the names in its messages are GGUF's). */
mc_status mc_gguf_model_find(mc_gguf_model *g, mc_tensor_role role, int layer, int expert,
                             const st_tensor **out, mc_err *err);

void mc_gguf_model_close(mc_gguf_model *g);

#endif
