/* gguf.h - strict, zero-copy reader for llama.cpp's GGUF files (one file or
 * a folder of split parts).
 *
 * Bytes of one file (all integers little-endian; version 2 and 3):
 *   "GGUF"                     magic, 4 bytes
 *   u32 version                2 or 3
 *   u64 tensor_count
 *   u64 metadata_kv_count
 *   metadata_kv_count x { string key; u32 value_type; value }
 *   tensor_count x {
 *       string name; u32 n_dims (1..4); u64 ne[n_dims] (ne[0] varies fastest);
 *       u32 ggml_type; u64 offset (into the data section, a multiple of the
 *       alignment) }
 *   padding up to a multiple of the alignment
 *   data section: the tensors' bytes, at data_start + offset
 * where a string is { u64 length; length bytes, no NUL }, and a value is one
 * of the types of mc_gguf_type: fixed-size numbers and bool (1 byte, 0 or 1),
 * a string, or an array { u32 element type; u64 count; count elements }
 * (arrays may nest). The alignment is general.alignment (u32, a power of two)
 * or 32 when absent. A tensor's bytes: ne[0] / block * block_bytes per row
 * (ne[0] a multiple of the block) times ne[1] * ne[2] * ne[3].
 *
 * Everything is validated before anything is handed out: each count and
 * length against the bytes left in the file before anything is allocated,
 * lengths capped (MC_GGUF_MAX_KEY, MC_GGUF_MAX_STR, MC_GGUF_MAX_NAME),
 * array nesting at most MC_GGUF_MAX_DEPTH, no duplicate key, no duplicate
 * tensor name, known ggml types only, dims >= 1 and their products without
 * overflow, offsets aligned, every tensor inside the file and no two
 * overlapping. Errors name the file, the key or tensor and the byte offset.
 *
 * Split models (llama.cpp's gguf-split): files PREFIX-00001-of-00003.gguf,
 * each with split.no (0-based), split.count and split.tensors.count; the
 * parts are checked to agree (numbers, counts, names, no tensor in two
 * parts) and present one tensor table. Metadata lookups read the first part.
 *
 * Lifetimes: everything returned (keys, strings, tensors, data pointers)
 * is owned by the mc_gguf and lives until mc_gguf_close; tensor data points
 * into a read-only memory map, nothing is copied. Strings from the file are
 * NOT NUL-terminated unless said so: use the lengths.
 */
#ifndef MC_GGUF_H
#define MC_GGUF_H

#include "status.h"

#include <stdbool.h>
#include <stdint.h>

#define MC_GGUF_MAX_DIMS 4
#define MC_GGUF_MAX_KEY 1024           /* bytes of a metadata key */
#define MC_GGUF_MAX_NAME 1024          /* bytes of a tensor name */
#define MC_GGUF_MAX_STR (1u << 20)     /* bytes of a string value (chat templates) */
#define MC_GGUF_MAX_DEPTH 4            /* arrays inside arrays */
#define MC_GGUF_MAX_PARTS 1024         /* split parts */
#define MC_GGUF_DEFAULT_ALIGNMENT 32

/* metadata value types, numbered as in the file */
typedef enum {
    MC_GGUF_U8 = 0,
    MC_GGUF_I8 = 1,
    MC_GGUF_U16 = 2,
    MC_GGUF_I16 = 3,
    MC_GGUF_U32 = 4,
    MC_GGUF_I32 = 5,
    MC_GGUF_F32 = 6,
    MC_GGUF_BOOL = 7,
    MC_GGUF_STR = 8,
    MC_GGUF_ARR = 9,
    MC_GGUF_U64 = 10,
    MC_GGUF_I64 = 11,
    MC_GGUF_F64 = 12,
    MC_GGUF_TYPE_COUNT
} mc_gguf_type;

/* ggml tensor types this reader knows the size of, numbered as in ggml.h */
typedef enum {
    MC_GGML_F32 = 0,
    MC_GGML_F16 = 1,
    MC_GGML_Q4_0 = 2,
    MC_GGML_Q4_1 = 3,
    MC_GGML_Q5_0 = 6,
    MC_GGML_Q5_1 = 7,
    MC_GGML_Q8_0 = 8,
    MC_GGML_Q8_1 = 9,
    MC_GGML_Q2_K = 10,
    MC_GGML_Q3_K = 11,
    MC_GGML_Q4_K = 12,
    MC_GGML_Q5_K = 13,
    MC_GGML_Q6_K = 14,
    MC_GGML_Q8_K = 15,
    MC_GGML_I8 = 24,
    MC_GGML_I16 = 25,
    MC_GGML_I32 = 26,
    MC_GGML_I64 = 27,
    MC_GGML_F64 = 28,
    MC_GGML_BF16 = 30,
} mc_ggml_type;

/* "Q6_K", ...; NULL for a type this reader does not know. */
const char *mc_ggml_type_name(uint32_t type);
/* Elements per block and bytes per block; 0 for an unknown type. */
uint32_t mc_ggml_block_elems(uint32_t type);
uint32_t mc_ggml_block_bytes(uint32_t type);
/* "u32", "string", "array", ...; "?" for a bad value. */
const char *mc_gguf_type_name(uint32_t type);

/* A string inside the file (not NUL-terminated). */
typedef struct {
    const char *p;
    uint64_t len;
} mc_gguf_str;

/* One metadata entry, read-only. */
typedef struct {
    const char *key;      /* NUL-terminated copy */
    mc_gguf_type type;
    uint64_t offset;      /* byte offset of the entry (its key) in the file */
    union {
        uint64_t u;       /* U8, U16, U32, U64, BOOL (0 or 1) */
        int64_t i;        /* I8, I16, I32, I64 */
        double f;         /* F32, F64 */
    } v;
    const char *str;      /* STR: NUL-terminated copy (may hold NULs: use str_len) */
    uint64_t str_len;
    mc_gguf_type arr_type; /* ARR: element type */
    uint64_t arr_n;        /* ARR: element count */
    const void *arr_data;  /* ARR: the elements' bytes in the file (unaligned; for
                              nested arrays, the first inner array's header) */
    const mc_gguf_str *arr_strs; /* ARR of STR: arr_n strings, else NULL */
} mc_gguf_kv;

/* One tensor, read-only. */
typedef struct {
    const char *name;     /* NUL-terminated copy */
    uint32_t type;        /* mc_ggml_type */
    int n_dims;
    uint64_t ne[MC_GGUF_MAX_DIMS]; /* ne[0] fastest; unused dims are 1 */
    uint64_t n_elems;
    uint64_t nbytes;
    const void *data;     /* aligned to the file's alignment within the map */
    uint64_t offset;      /* absolute byte offset of the data in its file */
    const char *path;     /* the file (part) holding it */
    uint32_t part;        /* index of that part (0 for a single file) */
} mc_gguf_tensor;

typedef struct mc_gguf mc_gguf;

/* Parses and validates one GGUF image held in memory (buf, len). `path` is
 * used in messages only. Tensors point into buf, which must outlive the
 * result. This is the fuzzing entry point. On failure *out is NULL. */
mc_status mc_gguf_parse(const uint8_t *buf, uint64_t len, const char *path, mc_gguf **out,
                        mc_err *err);

/* Opens `path`: one .gguf file (memory-mapped, regular files only, covered
 * by the SIGBUS registry), or a folder holding either one .gguf file or the
 * parts PREFIX-NNNNN-of-MMMMM.gguf of one split model. A file whose
 * split.count is more than 1 is refused (open its folder instead). Free
 * with mc_gguf_close. */
mc_status mc_gguf_open(const char *path, mc_gguf **out, mc_err *err);
void mc_gguf_close(mc_gguf *g);

uint32_t mc_gguf_version(const mc_gguf *g);   /* of the first part */
uint32_t mc_gguf_alignment(const mc_gguf *g); /* of the first part */
uint32_t mc_gguf_n_parts(const mc_gguf *g);

/* Metadata of the first part, in file order. */
uint64_t mc_gguf_n_kv(const mc_gguf *g);
const mc_gguf_kv *mc_gguf_kv_at(const mc_gguf *g, uint64_t i);
const mc_gguf_kv *mc_gguf_find_kv(const mc_gguf *g, const char *key);

/* Typed getters. MC_ERR_NOT_FOUND when the key is absent, MC_ERR_FORMAT
 * when it holds another type or a value out of range (integers of any
 * integer type are accepted when the value fits; f32 accepts F32 and F64).
 * Messages name the key. Strings and arrays are borrowed. */
mc_status mc_gguf_get_u32(const mc_gguf *g, const char *key, uint32_t *out, mc_err *err);
mc_status mc_gguf_get_u64(const mc_gguf *g, const char *key, uint64_t *out, mc_err *err);
mc_status mc_gguf_get_i64(const mc_gguf *g, const char *key, int64_t *out, mc_err *err);
mc_status mc_gguf_get_f32(const mc_gguf *g, const char *key, float *out, mc_err *err);
mc_status mc_gguf_get_bool(const mc_gguf *g, const char *key, bool *out, mc_err *err);
mc_status mc_gguf_get_str(const mc_gguf *g, const char *key, const char **s, uint64_t *len,
                          mc_err *err);
/* An array whose elements have type `elem` (MC_GGUF_TYPE_COUNT: any). */
mc_status mc_gguf_get_arr(const mc_gguf *g, const char *key, mc_gguf_type elem,
                          const mc_gguf_kv **out, mc_err *err);

/* Element i of an array entry: integers (any integer type or bool; -1 when
 * the type differs, i is out of range or a U64 exceeds INT64_MAX), floats
 * (F32/F64), strings. Return 0 on success. */
int mc_gguf_arr_int(const mc_gguf_kv *kv, uint64_t i, int64_t *out);
int mc_gguf_arr_float(const mc_gguf_kv *kv, uint64_t i, double *out);
int mc_gguf_arr_str(const mc_gguf_kv *kv, uint64_t i, mc_gguf_str *out);

/* Tensors of all parts, in part order then file order. */
uint64_t mc_gguf_n_tensors(const mc_gguf *g);
const mc_gguf_tensor *mc_gguf_tensor_at(const mc_gguf *g, uint64_t i);
const mc_gguf_tensor *mc_gguf_find_tensor(const mc_gguf *g, const char *name);

#endif
