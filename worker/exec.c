/* exec.c - score and generation schedules (see exec.h). */
#include "exec.h"

#include <stdlib.h>
#include <string.h>

/* World rank that receives the logits of dp group g: the last stage's tp rank 0. */
static int output_rank(const mc_model *m, int g)
{
    return mc_layout_world_rank(&m->lay, m->lay.pp - 1, g, 0);
}

mc_status mc_exec_gather(mc_model *m, int B, size_t seq_floats, const float *own,
                         float *logits, mc_err *err)
{
    int dp = m->lay.dp, me = m->lay.rank;
    /* logits to rank 0, sequence by sequence; the output ranks kept theirs
     * until now so that the pipeline never waits on rank 0 */
    for (int b = 0; b < B; b++) {
        int src = output_rank(m, b % dp);
        mc_status st = MC_OK;
        if (src == 0)
            continue;
        if (me == 0)
            st = mc_par_recv(m, m->world, MC_STAT_HEAD(m->d.n_layers), src,
                             logits + (size_t)b * seq_floats, seq_floats * sizeof(float), err);
        else if (me == src)
            st = mc_par_send(m, m->world, MC_STAT_HEAD(m->d.n_layers), 0,
                             own + (size_t)(b / dp) * seq_floats, seq_floats * sizeof(float), err);
        if (st != MC_OK)
            return st;
    }
    return MC_OK;
}

mc_status mc_exec_score(mc_model *m, const int64_t *ids, int B, int T, int decode_from,
                        float *logits, mc_err *err)
{
    const mc_layout *lay = &m->lay;
    int V = m->d.vocab, dp = lay->dp, g = lay->dp_rank, me = lay->rank;
    int K = decode_from > 0 && decode_from < T ? decode_from : T;
    int rounds = (B + dp - 1) / dp, mine = 0;
    for (int b = g; b < B; b += dp)
        mine++;
    size_t seq_floats = (size_t)T * V;
    bool out_rank = mc_model_is_output(m);
    mc_kv *kv = NULL;
    float *own = NULL; /* this output rank's sequences, when it is not rank 0 */
    mc_status st = mc_kv_create(m, T, &kv, err);
    if (st != MC_OK)
        return st;
    if (out_rank && me != 0 && mine > 0 &&
        !(own = mc_malloc_n((size_t)mine * seq_floats, sizeof *own))) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for the logits of %d sequences", mine);
        goto done;
    }
    for (int r = 0; r < rounds; r++) {
        int b = r * dp + g;
        bool has = b < B;
        const int64_t *tok = has && ids ? ids + (size_t)b * T : NULL;
        float *out = NULL;
        if (has && out_rank)
            out = me == 0 ? logits + (size_t)b * seq_floats : own + (size_t)r * seq_floats;
        mc_kv_reset(kv);
        /* prefill, then one token per step: every rank runs the same steps */
        if ((st = mc_forward_step(m, kv, tok, has ? K : 0, true, false, out, err)) != MC_OK)
            goto done;
        for (int t = K; t < T; t++)
            if ((st = mc_forward_step(m, kv, tok ? tok + t : NULL, has ? 1 : 0, true, false,
                                      out ? out + (size_t)t * V : NULL, err)) != MC_OK)
                goto done;
    }
    st = mc_exec_gather(m, B, seq_floats, own, logits, err);
done:
    free(own);
    mc_kv_free(kv);
    return st;
}

mc_status mc_exec_last(mc_model *m, mc_kv *kv, const int64_t *tokens, int n, float *logits,
                       mc_err *err)
{
    const mc_layout *lay = &m->lay;
    int V = m->d.vocab, me = lay->rank, src = output_rank(m, 0);
    bool active = lay->dp_rank == 0;
    float *buf = NULL;
    if (active && mc_model_is_output(m) && me != 0 &&
        !(buf = mc_malloc_n((size_t)V, sizeof *buf)))
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    mc_status st = mc_forward_step(m, kv, tokens, active ? n : 0, true, true,
                                   me == 0 ? logits : buf, err);
    if (st == MC_OK && src != 0) {
        if (me == 0)
            st = mc_par_recv(m, m->world, MC_STAT_HEAD(m->d.n_layers), src, logits,
                             (size_t)V * sizeof(float), err);
        else if (me == src)
            st = mc_par_send(m, m->world, MC_STAT_HEAD(m->d.n_layers), 0, buf,
                             (size_t)V * sizeof(float), err);
    }
    free(buf);
    return st;
}
