/* split.c - the split table and the balanced split (see split.h). */
#include "split.h"

#define RULE(d, u) {MC_SPLIT_##d, MC_UNIT_##u}

/* Indexed by role; roles not listed are replicated ({0, 0}). */
static const mc_split_rule rules[MC_T_ROLE_COUNT] = {
    [MC_T_EMBED] = RULE(VOCAB, ROW),
    [MC_T_LM_HEAD] = RULE(VOCAB, ROW),
    [MC_T_Q_B] = RULE(ROWS, Q_HEAD),
    [MC_T_Q] = RULE(ROWS, Q_HEAD),
    [MC_T_KV_B] = RULE(ROWS, Q_HEAD),
    [MC_T_K] = RULE(ROWS, KV_HEAD),
    [MC_T_V] = RULE(ROWS, KV_HEAD),
    [MC_T_O] = RULE(COLS, Q_HEAD),
    [MC_T_DENSE_GATE] = RULE(ROWS, ROW),
    [MC_T_DENSE_UP] = RULE(ROWS, ROW),
    [MC_T_DENSE_DOWN] = RULE(COLS, ROW),
    [MC_T_SHARED_GATE] = RULE(ROWS, ROW),
    [MC_T_SHARED_UP] = RULE(ROWS, ROW),
    [MC_T_SHARED_DOWN] = RULE(COLS, ROW),
    [MC_T_EXPERTS_GATE_UP] = RULE(EXPERTS, EXPERT),
    [MC_T_EXPERTS_DOWN] = RULE(EXPERTS, EXPERT),
    [MC_T_EXPERT_GATE] = RULE(EXPERTS, EXPERT),
    [MC_T_EXPERT_UP] = RULE(EXPERTS, EXPERT),
    [MC_T_EXPERT_DOWN] = RULE(EXPERTS, EXPERT),
};

#undef RULE

static const char *const dim_names[MC_SPLIT_DIM_COUNT] = {"none", "rows", "columns", "experts",
                                                          "vocab"};

mc_split_rule mc_split_rule_of(mc_tensor_role role)
{
    if ((unsigned)role >= MC_T_ROLE_COUNT)
        return (mc_split_rule){MC_SPLIT_NONE, MC_UNIT_NONE};
    return rules[role];
}

const char *mc_split_dim_str(mc_split_dim dim)
{
    return (unsigned)dim < MC_SPLIT_DIM_COUNT ? dim_names[dim] : "?";
}

void mc_split_range(int64_t n, int parts, int index, int64_t *begin, int64_t *end)
{
    int64_t per = n / parts, extra = n % parts;
    *begin = index * per + (index < extra ? index : extra);
    *end = *begin + per + (index < extra);
}

int mc_split_owner(int64_t n, int parts, int64_t i)
{
    int64_t per = n / parts, extra = n % parts;
    int64_t big = extra * (per + 1); /* items held by the parts with one more */
    return (int)(i < big ? i / (per + 1) : extra + (i - big) / (per > 0 ? per : 1));
}

bool mc_split_kv_heads(int n_kv, int tp, int tr, int *begin, int *count)
{
    if (n_kv > 0 && n_kv % tp == 0) {
        int64_t b, e;
        mc_split_range(n_kv, tp, tr, &b, &e);
        *begin = (int)b;
        *count = (int)(e - b);
        return true;
    }
    if (n_kv > 0 && tp % n_kv == 0) { /* a copy of the head this rank's query heads read */
        *begin = tr / (tp / n_kv);
        *count = 1;
        return true;
    }
    /* no layout the workers run: the largest share, for sizing */
    int c = n_kv > 0 ? (n_kv + tp - 1) / tp : 0;
    int b = tr * c;
    *begin = b + c <= n_kv ? b : n_kv - c;
    *count = c;
    return false;
}

int64_t mc_split_unit_width(const mc_model_desc *d, mc_tensor_role role)
{
    mc_split_rule r = mc_split_rule_of(role);
    bool mla = d->attn == MC_ATTN_MLA;
    switch (r.unit) {
    case MC_UNIT_Q_HEAD:
        if (role == MC_T_KV_B)
            return d->qk_nope_dim + d->v_head_dim;
        if (role == MC_T_O)
            return mla ? d->v_head_dim : d->head_dim;
        return mla ? d->qk_nope_dim + d->qk_rope_dim : d->head_dim; /* q_b, q */
    case MC_UNIT_KV_HEAD:
        return d->head_dim;
    case MC_UNIT_EXPERT:
        return 0;
    default:
        return 1;
    }
}

/* Units a row / column / vocab role has in all. */
static int64_t row_units(const mc_model_desc *d, mc_tensor_role role)
{
    switch (role) {
    case MC_T_EMBED:
    case MC_T_LM_HEAD:
        return d->vocab;
    case MC_T_DENSE_GATE:
    case MC_T_DENSE_UP:
    case MC_T_DENSE_DOWN:
        return d->dense_inter;
    case MC_T_SHARED_GATE:
    case MC_T_SHARED_UP:
    case MC_T_SHARED_DOWN:
        return d->shared_inter;
    default:
        return 0;
    }
}

int mc_split_tp_slice(const mc_model_desc *d, mc_tensor_role role, int tp, int tr,
                      int64_t *begin, int64_t *end)
{
    mc_split_rule r = mc_split_rule_of(role);
    *begin = *end = 0;
    if (r.dim == MC_SPLIT_NONE || r.dim == MC_SPLIT_EXPERTS ||
        (tp == 1 && r.dim != MC_SPLIT_VOCAB))
        return -1;
    int64_t w = mc_split_unit_width(d, role), u0, u1;
    if (r.unit == MC_UNIT_KV_HEAD) {
        int h0, n;
        mc_split_kv_heads(d->n_kv_heads, tp, tr, &h0, &n);
        u0 = h0;
        u1 = (int64_t)h0 + n;
    } else {
        int64_t units = r.unit == MC_UNIT_Q_HEAD ? d->n_heads : row_units(d, role);
        mc_split_range(units, tp, tr, &u0, &u1);
    }
    *begin = u0 * w;
    *end = u1 * w;
    return r.dim == MC_SPLIT_COLS ? 1 : 0;
}

void mc_split_fp8_blocks(int64_t begin, int64_t end, int block, int64_t *sb, int64_t *se)
{
    *sb = begin / block;
    *se = (end + block - 1) / block;
}

bool mc_split_on_blocks(int64_t begin, int64_t end, int64_t full, int block)
{
    return begin % block == 0 && (end % block == 0 || end == full);
}
