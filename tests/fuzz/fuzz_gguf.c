/* fuzz_gguf.c - libFuzzer target for the GGUF reader (core/gguf.h).
 *
 * Feeds the input to mc_gguf_parse. A rejected input must come back with a
 * NULL result and a message naming the file; an accepted one must describe
 * only bytes inside the input: every tensor's data inside it and aligned,
 * its byte size what its type and dims say, names unique and found, no two
 * tensors overlapping, every metadata entry found by its key and every array
 * element readable. Any violation aborts, so the fuzzer (or
 * tests/fuzz/fuzz_driver.c in builds without libFuzzer) reports it like a
 * crash. Seeds: tests/fixtures/gguf/ (made by make_gguf.py). */
#include "gguf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *name)
{
    fprintf(stderr, "fuzz_gguf: invariant violated: %s ('%.200s')\n", what, name ? name : "");
    abort();
}

static volatile uint64_t sink;

static void check_kvs(const mc_gguf *g, const uint8_t *data, size_t size)
{
    uint64_t n = mc_gguf_n_kv(g);
    if (mc_gguf_kv_at(g, n) != NULL)
        fail("mc_gguf_kv_at past the end is not NULL", NULL);
    for (uint64_t i = 0; i < n; i++) {
        const mc_gguf_kv *kv = mc_gguf_kv_at(g, i);
        if (!kv || !kv->key || !kv->key[0] || strlen(kv->key) > MC_GGUF_MAX_KEY)
            fail("bad key", kv ? kv->key : NULL);
        if (mc_gguf_find_kv(g, kv->key) != kv)
            fail("mc_gguf_find_kv does not find the entry", kv->key);
        if ((unsigned)kv->type >= MC_GGUF_TYPE_COUNT || kv->offset >= size)
            fail("bad type or offset", kv->key);
        if (kv->type == MC_GGUF_STR) {
            if (!kv->str || kv->str_len > MC_GGUF_MAX_STR || kv->str[kv->str_len] != '\0')
                fail("bad string value", kv->key);
            for (uint64_t k = 0; k < kv->str_len; k++)
                sink += (uint8_t)kv->str[k];
        }
        if (kv->type != MC_GGUF_ARR)
            continue;
        const uint8_t *p = kv->arr_data;
        if (!p || p < data || p > data + size)
            fail("array data outside the input", kv->key);
        for (uint64_t k = 0; k < kv->arr_n; k++) {
            int64_t v = 0;
            double d;
            mc_gguf_str s;
            switch (kv->arr_type) {
            case MC_GGUF_STR:
                if (mc_gguf_arr_str(kv, k, &s) != 0 || s.len > MC_GGUF_MAX_STR ||
                    (s.len && ((const uint8_t *)s.p < data ||
                               s.len > (uint64_t)(data + size - (const uint8_t *)s.p))))
                    fail("array string outside the input", kv->key);
                for (uint64_t c = 0; c < s.len; c++)
                    sink += (uint8_t)s.p[c];
                break;
            case MC_GGUF_F32:
            case MC_GGUF_F64:
                if (mc_gguf_arr_float(kv, k, &d) != 0)
                    fail("float array element unreadable", kv->key);
                break;
            case MC_GGUF_ARR: k = kv->arr_n; break;
            default:
                if (mc_gguf_arr_int(kv, k, &v) != 0 && kv->arr_type != MC_GGUF_U64)
                    fail("integer array element unreadable", kv->key);
                sink += (uint64_t)v;
                break;
            }
        }
    }
    uint32_t u;
    mc_err e;
    mc_err_clear(&e);
    (void)mc_gguf_get_u32(g, "general.alignment", &u, &e);
    if (!mc_gguf_alignment(g) || (mc_gguf_alignment(g) & (mc_gguf_alignment(g) - 1)))
        fail("alignment not a power of two", NULL);
}

static void check_tensors(const mc_gguf *g, const uint8_t *data, size_t size)
{
    uint64_t n = mc_gguf_n_tensors(g);
    uint32_t a = mc_gguf_alignment(g);
    if (mc_gguf_tensor_at(g, n) != NULL)
        fail("mc_gguf_tensor_at past the end is not NULL", NULL);
    for (uint64_t i = 0; i < n; i++) {
        const mc_gguf_tensor *t = mc_gguf_tensor_at(g, i);
        if (!t || !t->name || !t->name[0] || strlen(t->name) > MC_GGUF_MAX_NAME)
            fail("bad name", t ? t->name : NULL);
        if (mc_gguf_find_tensor(g, t->name) != t)
            fail("mc_gguf_find_tensor does not find the tensor", t->name);
        uint32_t blk = mc_ggml_block_elems(t->type), bb = mc_ggml_block_bytes(t->type);
        if (!blk || t->n_dims < 1 || t->n_dims > MC_GGUF_MAX_DIMS || t->ne[0] % blk)
            fail("bad type, rank or row length", t->name);
        uint64_t numel = 1, nbytes;
        for (int d = 0; d < MC_GGUF_MAX_DIMS; d++)
            if (t->ne[d] == 0 || (d >= t->n_dims && t->ne[d] != 1) ||
                mc_mul_u64(numel, t->ne[d], &numel))
                fail("bad dims", t->name);
        if (numel != t->n_elems || mc_mul_u64(numel / blk, bb, &nbytes) || nbytes != t->nbytes)
            fail("n_elems / nbytes disagree with the dims", t->name);
        const uint8_t *p = t->data;
        if (!p || p < data || t->offset != (uint64_t)(p - data) || t->offset > size ||
            t->nbytes > size - t->offset)
            fail("tensor data outside the input", t->name);
        if (t->offset % a)
            fail("tensor data not aligned", t->name);
        for (uint64_t j = 0; j < i && n <= 64; j++) {
            const mc_gguf_tensor *u = mc_gguf_tensor_at(g, j);
            if (t->offset < u->offset + u->nbytes && u->offset < t->offset + t->nbytes)
                fail("tensors overlap", t->name);
        }
        /* read every byte, so a sanitizer sees any stray pointer */
        for (uint64_t k = 0; k < t->nbytes && k < 65536; k++)
            sink += p[k];
    }
    (void)mc_gguf_find_tensor(g, "");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mc_gguf *g = (mc_gguf *)&g; /* non-NULL, must be cleared */
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_gguf_parse(data, size, "fuzz.gguf", &g, &err);
    if (st != MC_OK) {
        if (g != NULL)
            fail("output not NULL after a failure", NULL);
        if (err.status != st || !err.msg[0] || !strstr(err.msg, "fuzz.gguf"))
            fail("failure without a proper message", NULL);
        return 0;
    }
    if (!g)
        fail("success without a result", NULL);
    check_kvs(g, data, size);
    check_tensors(g, data, size);
    mc_gguf_close(g);
    return 0;
}
