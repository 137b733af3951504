/* fuzz_safetensors.c - libFuzzer target for the safetensors reader.
 *
 * Feeds the input to st_file_parse. A rejected input must come back with a
 * NULL file and a message; an accepted one must describe only bytes inside
 * the input, with consistent sizes, sorted unique names and no overlaps.
 * Any violation aborts, so the fuzzer (or tests/fuzz/fuzz_driver.c in
 * builds without libFuzzer) reports it like a crash. */
#include "safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *name)
{
    fprintf(stderr, "fuzz_safetensors: invariant violated: %s (tensor '%.200s')\n", what,
            name ? name : "");
    abort();
}

static void check_file(const st_file *f, const uint8_t *data, size_t size)
{
    size_t n = st_file_count(f);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | data[i];
    const uint8_t *region = data + 8 + hlen, *end = data + size;
    if (hlen > MC_ST_MAX_HEADER || hlen > size - 8)
        fail("accepted a header that does not fit", NULL);
    if (st_file_tensor(f, n) != NULL)
        fail("st_file_tensor past the end is not NULL", NULL);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_file_tensor(f, i);
        if (!t || !t->name || !t->name[0] || strlen(t->name) > MC_ST_MAX_NAME)
            fail("bad name", t ? t->name : NULL);
        if (i && strcmp(st_file_tensor(f, i - 1)->name, t->name) >= 0)
            fail("names not sorted and unique", t->name);
        if (st_file_find(f, t->name) != t)
            fail("st_file_find does not find the tensor", t->name);
        if ((unsigned)t->dtype >= MC_DT_COUNT || t->ndim < 0 || t->ndim > MC_ST_MAX_DIMS)
            fail("bad dtype or rank", t->name);
        uint64_t numel = 1, nbytes;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || mc_mul_u64(numel, (uint64_t)t->shape[d], &numel))
                fail("bad shape", t->name);
        }
        if (numel != t->numel || mc_mul_u64(numel, mc_dtype_size(t->dtype), &nbytes) ||
            nbytes != t->nbytes)
            fail("numel / nbytes disagree with the shape", t->name);
        const uint8_t *p = t->data;
        if (t->nbytes && (!p || p < region || p > end || t->nbytes > (uint64_t)(end - p)))
            fail("tensor data outside the data region", t->name);
        if (!t->path)
            fail("no path", t->name);
        /* pairwise overlap, for small files */
        for (size_t j = 0; j < i && n <= 64; j++) {
            const st_tensor *u = st_file_tensor(f, j);
            const uint8_t *q = u->data;
            if (t->nbytes && u->nbytes && p < q + u->nbytes && q < p + t->nbytes)
                fail("tensors overlap", t->name);
        }
        /* read every element, so a sanitizer sees any stray pointer */
        if (t->numel <= 4096) {
            float buf[4096];
            st_tensor_to_f32(t, buf);
        }
    }
    (void)st_file_metadata(f, "format");
    (void)st_file_find(f, "");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file *f = (st_file *)&f; /* non-NULL, must be cleared */
    mc_err err;
    mc_err_clear(&err);
    mc_status st = st_file_parse(data, size, "fuzz.safetensors", &f, &err);
    if (st != MC_OK) {
        if (f != NULL)
            fail("output not NULL after a failure", NULL);
        if (err.status != st || !err.msg[0] || !strstr(err.msg, "fuzz.safetensors"))
            fail("failure without a proper message", NULL);
        return 0;
    }
    if (!f)
        fail("success without a file", NULL);
    check_file(f, data, size);
    st_file_close(f);
    return 0;
}
