/* rng.h - the xorshift random stream of the unit tests that share it: the
 * including file sets rng to a non-zero seed before use. */
#ifndef MC_TEST_RNG_H
#define MC_TEST_RNG_H

#include <stdint.h>

static uint64_t rng; /* xorshift state */
static inline uint64_t rnext(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
/* Uniform in [lo, hi) from the top 24 bits. */
static inline float runi(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rnext() >> 40) / 16777216.0);
}

#endif
