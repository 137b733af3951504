/* layout.c - one rank's share of the model (see layout.h). Every range
 * comes from the split rules of shard/split.h, the ones `plan` and `shard`
 * use. */
#include "layout.h"

#include "split.h"

void mc_split(int total, int parts, int i, int *begin, int *count)
{
    int64_t b, e;
    mc_split_range(total, parts, i, &b, &e);
    *begin = (int)b;
    *count = (int)(e - b);
}

int mc_layout_expert_owner(const mc_layout *l, int n_experts, int e)
{
    return mc_split_owner(n_experts, l->ep, e);
}

int mc_layout_world_rank(const mc_layout *l, int stage, int dp_rank, int tp_rank)
{
    return stage * (l->tp * l->dp) + dp_rank * l->tp + tp_rank;
}

static void fill_ranges(const mc_model_desc *d, mc_layout *l)
{
    int S = l->tp * l->dp, local = l->rank % S;
    l->stage = l->rank / S;
    l->dp_rank = local / l->tp;
    l->tp_rank = local % l->tp;
    l->ep_rank = local % l->ep;
    l->ep_group = local / l->ep;
    int n;
    mc_split(d->n_layers, l->pp, l->stage, &l->layer0, &n);
    l->layer1 = l->layer0 + n;
    if (d->n_experts > 0) {
        mc_split(d->n_experts, l->ep, l->ep_rank, &l->expert0, &n);
        l->expert1 = l->expert0 + n;
    }
    mc_split(d->n_heads, l->tp, l->tp_rank, &l->head0, &l->n_heads);
    /* split, or (tp a multiple of the KV heads) a copy of the group's head */
    int nkv = d->n_kv_heads > 0 ? d->n_kv_heads : d->n_heads;
    mc_split_kv_heads(nkv, l->tp, l->tp_rank, &l->kv_head0, &l->n_kv_heads);
    mc_split(d->vocab, l->tp, l->tp_rank, &l->vocab0, &l->n_vocab);
}

void mc_layout_single(const mc_model_desc *d, mc_layout *out)
{
    *out = (mc_layout){.world = 1, .rank = 0, .tp = 1, .ep = 1, .pp = 1, .dp = 1};
    fill_ranges(d, out);
}

mc_status mc_layout_make(const mc_model_desc *d, int world, int rank, int tp, int ep, int pp,
                         mc_layout *out, mc_err *err)
{
    if (world < 1 || rank < 0 || rank >= world)
        return mc_err_set(err, MC_ERR_ARG, "rank %d of %d ranks", rank, world);
    if (tp <= 0)
        tp = 1;
    if (pp <= 0)
        pp = 1;
    if (world % (tp * pp) != 0)
        return mc_err_set(err, MC_ERR_ARG,
                          "%d rank%s cannot be split into --pp %d pipeline stages of --tp %d "
                          "tensor-parallel ranks (need a multiple of %d ranks%s)",
                          world, world == 1 ? "" : "s", pp, tp, tp * pp,
                          world == 1 ? "; start the command with mpirun -np N" : "");
    int S = world / pp;
    if (ep <= 0)
        ep = d->family == MC_FAM_DEEPSEEK_V4 ? 1 : S;
    if (S % ep != 0)
        return mc_err_set(err, MC_ERR_ARG,
                          "--ep %d does not divide the %d ranks of a pipeline stage (%d ranks / "
                          "--pp %d)",
                          ep, S, world, pp);
    if (d->family == MC_FAM_DEEPSEEK_V4 && (tp != 1 || ep != 1 || pp != 1))
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "%s: DeepSeek-V4 runs only with --tp 1 --ep 1 --pp 1 for now (asked: "
                          "--tp %d --ep %d --pp %d); its parallel layouts are not implemented",
                          d->model_type, tp, ep, pp);
    if (pp > d->n_layers)
        return mc_err_set(err, MC_ERR_ARG, "--pp %d: more pipeline stages than the %d layers of %s",
                          pp, d->n_layers, d->model_type);
    if (tp > 1 && d->n_heads % tp != 0)
        return mc_err_set(err, MC_ERR_ARG,
                          "--tp %d: the %d attention (query) heads of %s do not split evenly over "
                          "%d tensor-parallel ranks; use a --tp that divides %d",
                          tp, d->n_heads, d->model_type, tp, d->n_heads);
    int kv0, nkv;
    if (tp > 1 && d->attn == MC_ATTN_GQA && !mc_split_kv_heads(d->n_kv_heads, tp, 0, &kv0, &nkv))
        return mc_err_set(err, MC_ERR_ARG,
                          "--tp %d: the %d KV heads of %s neither split evenly over %d ranks nor "
                          "can be copied evenly (tp a multiple of the KV heads)",
                          tp, d->n_kv_heads, d->model_type, tp);
    if (ep > 1 && ep > d->n_experts)
        return mc_err_set(err, MC_ERR_ARG, "--ep %d exceeds the %d routed experts of %s", ep,
                          d->n_experts, d->model_type);
    *out = (mc_layout){.world = world, .rank = rank, .tp = tp, .ep = ep, .pp = pp,
                       .dp = S / tp};
    fill_ranges(d, out);
    return MC_OK;
}
