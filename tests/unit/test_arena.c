/* test_arena.c - the per-step scratch arena (core/arena.h), against exactly
 * known offsets and counts:
 *   - alignment: every pointer is a multiple of its alignment (default 64),
 *     allocations never overlap (each is filled with its own byte and read
 *     back after all the others were written), used counts bytes + padding;
 *   - marks: reset_to gives back exactly what came after the mark, also
 *     across chunks, and the next allocation lands where the mark was;
 *   - reset: the first allocation of every step is the same pointer;
 *   - reuse: a step that repeats an earlier step's requests lands on the
 *     same pointers and allocates no chunk; a bigger step grows once;
 *   - refusal: sizes whose arithmetic overflows, requests past max_bytes or
 *     past MC_ARENA_MAX_BYTES and bad alignments return NULL and leave the
 *     arena as it was; bad init arguments name the field.
 */
#include "arena.h"
#include "check.h"

#include <stdint.h>
#include <string.h>

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

static mc_arena *arena_new(size_t chunk, size_t max)
{
    mc_arena *a = NULL;
    mc_err err;
    mc_err_clear(&err);
    mc_status s = mc_arena_init(chunk, max, &a, &err);
    CHECKF(s == MC_OK && a, "init(%zu, %zu): %s", chunk, max, err.msg);
    return a;
}

static mc_arena_stats stats(const mc_arena *a)
{
    mc_arena_stats st;
    mc_arena_stats_get(a, &st);
    return st;
}

static int aligned(const void *p, size_t align)
{
    return ((uintptr_t)p & (uintptr_t)(align - 1)) == 0;
}

static void test_alignment(void)
{
    mc_arena *a = arena_new(1 << 16, 0);
    if (!a)
        return;
    static const size_t sizes[] = {1, 3, 64, 100, 7, 0, 4096, 33, 1, 513};
    static const size_t aligns[] = {0, 1, 8, 16, 128, 4096, 2, 64, 256, 32};
    enum { N = sizeof sizes / sizeof sizes[0] };
    unsigned char *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = mc_arena_alloc(a, sizes[i], aligns[i]);
        size_t al = aligns[i] ? aligns[i] : MC_ARENA_ALIGN;
        CHECKF(p[i] && aligned(p[i], al), "alloc %d (%zu bytes, align %zu): %p", i, sizes[i], al,
               (void *)p[i]);
        if (p[i])
            memset(p[i], i + 1, sizes[i] ? sizes[i] : 1);
    }
    int bad = 0;
    for (int i = 0; i < N && bad < 3; i++) {
        size_t n = sizes[i] ? sizes[i] : 1;
        for (size_t k = 0; p[i] && k < n; k++)
            if (p[i][k] != (unsigned char)(i + 1)) {
                fprintf(stderr, "alloc %d byte %zu overwritten: %u\n", i, k, p[i][k]);
                bad++;
                break;
            }
    }
    CHECK(bad == 0);
    /* zero-byte requests are distinct */
    CHECK(p[5] != p[4] && p[5] != p[6]);

    /* used = bytes + padding, exactly: a fresh arena's data starts 64-aligned */
    mc_arena_reset(a);
    CHECK(stats(a).used == 0);
    void *q0 = mc_arena_alloc(a, 100, 0); /* [0, 100) */
    CHECK(q0 == p[0]);
    CHECK(stats(a).used == 100);
    mc_arena_alloc(a, 10, 0); /* pad 28: [128, 138) */
    CHECK(stats(a).used == 138);
    mc_arena_alloc(a, 4, 4); /* pad 2: [140, 144) */
    CHECK(stats(a).used == 144);
    char *q3 = mc_arena_alloc(a, 1, 1); /* [144, 145) */
    CHECK(q3 == (char *)q0 + 144);
    CHECK(stats(a).used == 145);

    /* alignment that is not a power of two */
    mc_arena_stats before = stats(a);
    CHECK(mc_arena_alloc(a, 8, 3) == NULL);
    CHECK(mc_arena_alloc(a, 8, 96) == NULL);
    CHECK(stats(a).used == before.used);
    mc_arena_free(a);
}

static void test_marks(void)
{
    mc_arena *a = arena_new(1024, 0);
    if (!a)
        return;
    char *base = mc_arena_alloc(a, 256, 0);
    mc_arena_mark m = mc_arena_mark_get(a);
    char *x = mc_arena_alloc(a, 128, 0);
    CHECK(x == base + 256);
    mc_arena_alloc(a, 512, 0);
    CHECK(stats(a).used == 896);
    mc_arena_reset_to(a, m);
    CHECK(stats(a).used == 256);
    CHECK(mc_arena_alloc(a, 8, 0) == x); /* lands where the mark was */

    /* nested marks, the inner one across a chunk boundary */
    mc_arena_reset_to(a, m);
    mc_arena_mark outer = mc_arena_mark_get(a);
    mc_arena_alloc(a, 512, 0); /* [256, 768) */
    mc_arena_mark inner = mc_arena_mark_get(a);
    char *big = mc_arena_alloc(a, 2000, 0); /* does not fit: a second chunk */
    CHECK(big && stats(a).n_chunks == 2);
    CHECK(stats(a).used == 256 + 512 + 2000);
    size_t peak = stats(a).peak;
    mc_arena_reset_to(a, inner);
    CHECK(stats(a).used == 768);
    CHECK(mc_arena_alloc(a, 64, 0) == base + 768); /* back in the first chunk */
    mc_arena_reset_to(a, outer);
    CHECK(stats(a).used == 256);
    CHECK(mc_arena_alloc(a, 8, 0) == x);
    CHECK(stats(a).peak == peak); /* the high-water mark survives rewinds */
    CHECK(peak == 2768);
    CHECK(stats(a).n_chunks == 2); /* rewinding frees nothing */
    mc_arena_free(a);
}

/* One "step": a fixed list of requests, recorded in ptrs. */
static void run_step(mc_arena *a, int n, const size_t *sizes, void **ptrs)
{
    mc_arena_reset(a);
    for (int i = 0; i < n; i++) {
        ptrs[i] = mc_arena_alloc(a, sizes[i], i % 3 == 2 ? 256 : 0);
        if (ptrs[i])
            memset(ptrs[i], 0xab, sizes[i]);
    }
}

static void test_reuse(void)
{
    enum { N = 40 };
    size_t sizes[N];
    uint32_t r = 12345;
    size_t total = 0;
    for (int i = 0; i < N; i++) {
        r = r * 1664525u + 1013904223u;
        sizes[i] = 1 + (r >> 8) % 3000; /* 1..3000 bytes, against 4 KiB chunks */
        total += sizes[i];
    }
    mc_arena *a = arena_new(4096, 0);
    if (!a)
        return;
    void *first[N], *again[N];
    run_step(a, N, sizes, first);
    mc_arena_stats s1 = stats(a);
    CHECKF(s1.n_chunks > 1, "step needs %zu bytes, held in %d chunks", total, s1.n_chunks);
    CHECK(s1.used >= total && s1.peak == s1.used && s1.reserved >= total);
    for (int i = 0; i < N; i++)
        CHECK(first[i] != NULL);

    for (int step = 0; step < 5; step++) {
        run_step(a, N, sizes, again);
        mc_arena_stats s = stats(a);
        CHECKF(s.n_chunks == s1.n_chunks && s.reserved == s1.reserved,
               "step %d: %d chunks / %zu bytes, first step %d / %zu", step + 2, s.n_chunks,
               s.reserved, s1.n_chunks, s1.reserved);
        CHECK(s.used == s1.used && s.peak == s1.peak);
        int bad = 0;
        for (int i = 0; i < N; i++)
            if (again[i] != first[i] && bad++ < 3)
                fprintf(stderr, "step %d alloc %d: %p, first step %p\n", step + 2, i, again[i],
                        first[i]);
        CHECK(bad == 0);
    }

    /* a step bigger than all that is held grows, then is steady too */
    size_t sizes2[N], total2 = 0;
    void *big[N], *big2[N];
    for (int i = 0; i < N; i++) {
        sizes2[i] = 8 * sizes[i];
        total2 += sizes2[i];
    }
    CHECK(total2 > s1.reserved);
    run_step(a, N, sizes2, big);
    mc_arena_stats s2 = stats(a);
    CHECK(s2.n_chunks > s1.n_chunks && s2.reserved >= total2);
    run_step(a, N, sizes2, big2);
    CHECK(stats(a).n_chunks == s2.n_chunks && stats(a).reserved == s2.reserved);
    CHECK(memcmp(big, big2, sizeof big) == 0);
    /* and the smaller step fits in what is held */
    run_step(a, N, sizes, again);
    CHECK(stats(a).n_chunks == s2.n_chunks);
    mc_arena_free(a);

    /* chunks grow with what is held: logarithmic in the step size */
    a = arena_new(1024, 0);
    if (!a)
        return;
    for (int i = 0; i < 1024; i++)
        mc_arena_alloc(a, 1024, 0);
    CHECKF(stats(a).n_chunks <= 12, "1 MiB in 1 KiB requests took %d chunks", stats(a).n_chunks);
    mc_arena_free(a);
}

static void test_refusal(void)
{
    mc_arena *a = arena_new(4096, 0);
    if (!a)
        return;
    char *p0 = mc_arena_alloc(a, 10, 0);
    mc_arena_stats before = stats(a);
    /* arithmetic that overflows */
    CHECK(mc_arena_alloc(a, SIZE_MAX, 0) == NULL);
    CHECK(mc_arena_alloc(a, SIZE_MAX - 100, 4096) == NULL);
    CHECK(mc_arena_alloc(a, 100, (size_t)1 << 63) == NULL);
    CHECK(mc_arena_alloc_n(a, SIZE_MAX / 2 + 1, 2) == NULL);
    CHECK(mc_arena_alloc_n(a, (size_t)1 << 32, (size_t)1 << 32) == NULL);
    /* huge requests: past the ceiling, refused before any malloc */
    CHECK(mc_arena_alloc(a, MC_ARENA_MAX_BYTES, 0) == NULL);
    CHECK(mc_arena_alloc(a, (size_t)1 << 50, 0) == NULL);
    CHECK(mc_arena_alloc_n(a, (size_t)1 << 30, 1 << 12) == NULL);
    mc_arena_stats after = stats(a);
    CHECK(after.used == before.used && after.reserved == before.reserved &&
          after.n_chunks == before.n_chunks && after.peak == before.peak);
    CHECK(mc_arena_alloc(a, 10, 0) == p0 + 64); /* state unchanged */
    mc_arena_free(a);

    /* a bounded arena: 2 chunks of 4 KiB, then nothing */
    a = arena_new(4096, 8192);
    if (!a)
        return;
    CHECK(mc_arena_alloc(a, 4096, 0) != NULL);
    CHECK(mc_arena_alloc(a, 4097, 0) == NULL); /* would take it to 8193 */
    CHECK(mc_arena_alloc(a, 4096, 0) != NULL);
    CHECK(mc_arena_alloc(a, 1, 0) == NULL);
    CHECK(stats(a).n_chunks == 2 && stats(a).reserved == 8192);
    mc_arena_reset(a);
    CHECK(mc_arena_alloc(a, 4096, 0) != NULL && mc_arena_alloc(a, 4096, 0) != NULL);
    mc_arena_free(a);

    /* bad init arguments name the field */
    mc_arena *b = NULL;
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_arena_init(8192, 4096, &b, &err) == MC_ERR_ARG && b == NULL);
    CHECKF(strstr(err.msg, "chunk_bytes") != NULL, "%s", err.msg);
    mc_err_clear(&err);
    CHECK(mc_arena_init(0, MC_ARENA_MAX_BYTES + 1, &b, &err) == MC_ERR_ARG && b == NULL);
    CHECKF(strstr(err.msg, "max_bytes") != NULL, "%s", err.msg);
    mc_arena_free(NULL);
}

int main(void)
{
    test_alignment();
    test_marks();
    test_reuse();
    test_refusal();
    return check_report("test_arena");
}
