/* gguf_internal.h - one parsed GGUF file, shared by gguf.c (parsing) and
 * gguf_split.c (opening files and folders, the public lookups). */
#ifndef MC_GGUF_INTERNAL_H
#define MC_GGUF_INTERNAL_H

#include "gguf.h"
#include "sigbus.h"

typedef struct {
    char *path;
    void *map;                /* non-NULL when we own an mmap */
    uint64_t map_len;
    uint32_t version, alignment;
    uint64_t data_start;      /* absolute offset of the data section */
    mc_gguf_kv *kvs;          /* n_kv, file order */
    const mc_gguf_kv **kv_sorted; /* n_kv, by key */
    uint64_t n_kv;
    mc_gguf_tensor *tensors;  /* n_tensors, file order; offset is absolute */
    uint64_t *info_at;        /* n_tensors: byte offset of each tensor info */
    uint64_t n_tensors;
} mc_gguf_part;

/* Parses one image (see mc_gguf_parse); the part owns nothing of buf.
 * Free with mc_gguf_part_free (which also unmaps p->map when set). */
mc_status mc_gguf_part_parse(const uint8_t *buf, uint64_t len, const char *path,
                             mc_gguf_part **out, mc_err *err);
void mc_gguf_part_free(mc_gguf_part *p);
const mc_gguf_kv *mc_gguf_part_find_kv(const mc_gguf_part *p, const char *key);
/* qsort comparator on (const mc_gguf_tensor *) elements, by name */
int mc_gguf_cmp_tensor_name(const void *a, const void *b);

#endif
