/* backend_pair.h - the harness the CUDA op tests share (test_backend_cuda.c,
 * test_backend_cuda_layers.c): a random stream, the two backends ([0] the
 * CPU reference, [1] the device under test) and one tensor held on both
 * with the same bytes. The including file sets rng's seed before use. */
#ifndef MC_TEST_BACKEND_PAIR_H
#define MC_TEST_BACKEND_PAIR_H

#include "backend.h"
#include "dtype.h"

#include "rng.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mc_backend *B[2]; /* [0] the CPU reference, [1] the device under test */
static mc_err err_[2];   /* err_[1]: the device side where a test calls both */

#define OK(call)                                                                                   \
    do {                                                                                           \
        if ((call) != MC_OK) {                                                                     \
            fprintf(stderr, "%s:%d: %s failed: %s%s\n", __FILE__, __LINE__, #call, err_[0].msg,   \
                    err_[1].msg);                                                                  \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* With is_cuda, B[1] replaced by a second CUDA backend started with the
 * environment variable name=value (read at its start; content checks
 * deferred); returns the backend dut_restore gives back. Otherwise B[1]
 * stays. */
static inline mc_backend *dut_swap_env(int is_cuda, const char *name, const char *value)
{
    mc_backend *prev = B[1];
    if (!is_cuda)
        return prev;
    setenv(name, value, 1);
    mc_status st = mc_backend_cuda_init(0, &B[1], err_);
    unsetenv(name);
    OK(st);
    mc_backend_set_sync_checks(B[1], 0);
    return prev;
}

static inline void dut_restore(mc_backend *prev)
{
    if (B[1] != prev) {
        mc_backend_free(B[1]);
        B[1] = prev;
    }
}

/* One tensor on both backends with the same bytes: buffers poisoned with
 * 0xff bytes (NaN as F32), then the packed host rows (if any) uploaded. */
typedef struct {
    mc_buffer *b[2];
    mc_tensor t[2];
} pair;

static inline void pair_new(pair *p, mc_dtype dt, int ndim, const int64_t *shape, int64_t ld,
                            const void *host)
{
    int64_t rows = 1;
    for (int i = 0; i < ndim - 1; i++)
        rows *= shape[i];
    size_t bytes = (size_t)rows * mc_dtype_row_bytes(dt, ld) + 64;
    for (int s = 0; s < 2; s++) {
        OK(mc_buffer_alloc(B[s], bytes, &p->b[s], err_));
        OK(mc_buffer_memset(p->b[s], 0, 0xff, bytes, err_));
        OK(mc_tensor_init_strided(&p->t[s], p->b[s], 0, dt, ndim, shape, ld, err_));
        if (host)
            OK(mc_tensor_upload(&p->t[s], host, err_));
    }
}

static inline void pair_2d(pair *p, mc_dtype dt, int64_t rows, int64_t cols, int64_t ld,
                           const void *host)
{
    pair_new(p, dt, 2, (int64_t[]){rows, cols}, ld, host);
}

static inline void pair_free(pair *p)
{
    mc_buffer_free(p->b[0]);
    mc_buffer_free(p->b[1]);
}

/* n floats uniform in [-scale, scale] (malloc'd; the caller frees). */
static inline float *rnd(size_t n, float scale)
{
    float *x = malloc(n * sizeof *x);
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = runi(-scale, scale);
    return x;
}

/* bytes / 210 random Q6_K blocks at dst (there is no Q6_K quantizer in
 * core): random 6-bit values, int8 scales over their whole range, a small
 * positive d. */
static inline void random_q6_k_blocks(unsigned char *dst, size_t bytes)
{
    for (size_t b = 0; b + sizeof(mc_block_q6_k) <= bytes; b += sizeof(mc_block_q6_k)) {
        mc_block_q6_k blk;
        for (size_t i = 0; i < sizeof blk.ql; i++)
            blk.ql[i] = (uint8_t)rnext();
        for (size_t i = 0; i < sizeof blk.qh; i++)
            blk.qh[i] = (uint8_t)rnext();
        for (size_t i = 0; i < sizeof blk.scales; i++)
            blk.scales[i] = (int8_t)rnext();
        blk.d = mc_f32_to_f16(runi(0.0002f, 0.002f));
        memcpy(dst + b, &blk, sizeof blk);
    }
}

#endif
