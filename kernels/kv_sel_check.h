/* kv_sel_check.h - the check of one token's MLA selection (mc_attn_opts.sel:
 * a row of k positions, -1 for none), shared by the backends so that each
 * refuses with the same message: every entry -1 or a position the token
 * sees, [lo, pos] with lo the start of its attention chunk (0 without
 * chunks), and at least one kept. */
#ifndef MC_KV_SEL_CHECK_H
#define MC_KV_SEL_CHECK_H

#include "status.h"

#include <stdint.h>

static inline mc_status mc_kv_sel_row_ok(const int32_t *st, int64_t k, int32_t pos, int chunk,
                                         int64_t t, mc_err *err)
{
    int32_t lo = chunk > 0 ? pos - pos % chunk : 0;
    int64_t kept = 0;
    for (int64_t j = 0; j < k; j++) {
        if (st[j] == -1)
            continue;
        if (st[j] < lo || st[j] > pos)
            return mc_err_set(err, MC_ERR_ARG, "mla_decode: token %lld: opt.sel[%lld][%lld] = %d "
                              "is outside the positions it sees [%d, %d]", (long long)t,
                              (long long)t, (long long)j, (int)st[j], (int)lo, (int)pos);
        kept++;
    }
    if (!kept)
        return mc_err_set(err, MC_ERR_ARG, "mla_decode: token %lld: opt.sel[%lld] keeps no "
                          "position", (long long)t, (long long)t);
    return MC_OK;
}

#endif
