/* safetensors.h - strict, zero-copy reader (and a small writer) for the
 * safetensors format and for sharded checkpoints.
 *
 * Bytes of one file:
 *   [0, 8)        N: unsigned 64-bit little-endian length of the header
 *   [8, 8+N)      header: a UTF-8 JSON object. Each key is a tensor name
 *                 mapping to {"dtype": "BF16", "shape": [d0, d1, ...],
 *                 "data_offsets": [begin, end]}; the optional key
 *                 "__metadata__" maps to an object of string values.
 *                 Writers may pad the JSON with trailing spaces.
 *   [8+N, EOF)    data region; begin/end are byte offsets into it, end
 *                 exclusive, tensors stored row-major, little-endian.
 *
 * A sharded checkpoint is a directory with model.safetensors.index.json:
 *   {"metadata": {...}, "weight_map": {"tensor.name": "model-00001-of-00003.safetensors", ...}}
 *
 * Everything is validated before any tensor is handed out: header length
 * (at most MC_ST_MAX_HEADER and inside the file), JSON syntax (duplicate
 * keys rejected), known dtype, rank <= MC_ST_MAX_DIMS, shape products and
 * byte sizes with overflow-checked arithmetic, offsets inside the data
 * region, no two tensors overlapping, every tensor named by the index
 * present in the file the index names, no tensor name in two files.
 * Errors name the file and the tensor.
 *
 * Lifetimes: tensors (names, shapes and data pointers) are owned by the
 * st_file / st_checkpoint and live until it is closed; data points into a
 * read-only memory map, nothing is copied.
 */
#ifndef MC_SAFETENSORS_H
#define MC_SAFETENSORS_H

#include "dtype.h"
#include "status.h"

#include <stdint.h>

#define MC_ST_MAX_DIMS 8
#define MC_ST_MAX_HEADER (100u * 1024u * 1024u)
#define MC_ST_MAX_NAME 1024
#define MC_ST_MAX_INDEX_BYTES (64u * 1024u * 1024u)

typedef struct {
    const char *name;
    mc_dtype dtype;
    int ndim;
    int64_t shape[MC_ST_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;
    const void *data;  /* may be unaligned; read with memcpy-style loads */
    const char *path;  /* file holding the tensor */
} st_tensor;

typedef struct st_file st_file;
typedef struct st_checkpoint st_checkpoint;

/* Parses and validates a whole safetensors image held in memory (buf, len).
 * `path` is only used in messages. Tensors point into buf, which must
 * outlive the result. This is the fuzzing entry point. */
mc_status st_file_parse(const uint8_t *buf, uint64_t len, const char *path, st_file **out,
                        mc_err *err);
/* Memory-maps and validates one file. */
mc_status st_file_open(const char *path, st_file **out, mc_err *err);
void st_file_close(st_file *f);
size_t st_file_count(const st_file *f);
const st_tensor *st_file_tensor(const st_file *f, size_t i);
const st_tensor *st_file_find(const st_file *f, const char *name);
/* Value of a __metadata__ key, or NULL. */
const char *st_file_metadata(const st_file *f, const char *key);

/* Opens a checkpoint: a directory with model.safetensors.index.json (or
 * Mistral's consolidated.safetensors.index.json); without an index, all
 * consolidated*.safetensors files of the directory, or else all
 * model*.safetensors files; or a single .safetensors file. */
mc_status st_checkpoint_open(const char *path, st_checkpoint **out, mc_err *err);
void st_checkpoint_close(st_checkpoint *c);
size_t st_checkpoint_count(const st_checkpoint *c);
const st_tensor *st_checkpoint_tensor(const st_checkpoint *c, size_t i); /* sorted by name */
const st_tensor *st_checkpoint_find(const st_checkpoint *c, const char *name);

/* Writing: one call writes a whole file (header aligned to 8 bytes). */
typedef struct {
    const char *name;
    mc_dtype dtype;
    int ndim;
    int64_t shape[MC_ST_MAX_DIMS];
    const void *data; /* numel * dtype size bytes */
} st_write_tensor;

mc_status st_write(const char *path, const st_write_tensor *tensors, size_t n, mc_err *err);

/* Streaming writer for files larger than memory: the header (from the
 * tensors' names, dtypes and shapes; their data pointers are ignored) is
 * written at open, then the tensors' bytes are appended in order with
 * st_writer_write in chunks of any size. The file is written as PATH.partial
 * and renamed to PATH by st_writer_close once every byte arrived, so a
 * complete PATH is never a truncated file. */
typedef struct st_writer st_writer;
mc_status st_writer_open(const char *path, const st_write_tensor *tensors, size_t n,
                         st_writer **out, mc_err *err);
mc_status st_writer_write(st_writer *w, const void *data, size_t len, mc_err *err);
mc_status st_writer_close(st_writer *w, mc_err *err);
/* Closes and deletes the partial file. */
void st_writer_abort(st_writer *w);

/* Reads a tensor's elements as f32 (F32/F16/BF16/F8_E4M3 without scales,
 * I64/I32/U8 converted); dst holds t->numel floats. */
void st_tensor_to_f32(const st_tensor *t, float *dst);

#endif
