/* sampler.c - token sampling (see sampler.h for the order of operations). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct mc_seq_tokens {
    int vocab;
    uint32_t *count; /* (vocab): bit 31 = in the prompt, bits 0..30 = generated count */
};

struct mc_sample_scratch {
    int vocab;
    float *x;      /* (vocab) logits after bias and penalties: the filters' order */
    float *xt;     /* (vocab) x / T (sampling only) */
    uint32_t *key; /* (2, vocab) radix sort keys, ping-pong */
    int32_t *idx;  /* (2, vocab) ids riding with the keys */
    double *e;     /* (vocab) exp(x - max), in the order the pick walks */
    double all;    /* sum of exp(x - max) over every id from the last filter; < 0: none */
};

#define PROMPT_BIT 0x80000000u
#define COUNT_MASK 0x7fffffffu

mc_sampler_params mc_sampler_defaults(void)
{
    mc_sampler_params p = {.temperature = 0.0f,
                           .top_k = -1,
                           .top_p = 1.0f,
                           .min_p = 0.0f,
                           .repetition_penalty = 1.0f,
                           .presence_penalty = 0.0f,
                           .frequency_penalty = 0.0f,
                           .seed = 0,
                           .logprobs = -1,
                           .logprobs_mode = MC_LOGPROBS_PROCESSED,
                           .logit_bias = NULL,
                           .n_logit_bias = 0};
    return p;
}

mc_status mc_sampler_params_check(const mc_sampler_params *p, int vocab, mc_err *err)
{
    if (vocab <= 0)
        return mc_err_set(err, MC_ERR_ARG, "vocab must be > 0, got %d", vocab);
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return mc_err_set(err, MC_ERR_ARG, "temperature must be >= 0 and finite, got %g",
                          (double)p->temperature);
    if (p->top_k < -1)
        return mc_err_set(err, MC_ERR_ARG, "top_k must be -1 (off) or >= 0, got %d", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return mc_err_set(err, MC_ERR_ARG, "top_p must be in (0, 1], got %g", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return mc_err_set(err, MC_ERR_ARG, "min_p must be in [0, 1], got %g", (double)p->min_p);
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return mc_err_set(err, MC_ERR_ARG, "repetition_penalty must be > 0 and finite, got %g",
                          (double)p->repetition_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return mc_err_set(err, MC_ERR_ARG, "presence_penalty must be in [-2, 2], got %g",
                          (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return mc_err_set(err, MC_ERR_ARG, "frequency_penalty must be in [-2, 2], got %g",
                          (double)p->frequency_penalty);
    if (p->logprobs > MC_LOGPROBS_MAX)
        return mc_err_set(err, MC_ERR_ARG, "logprobs must be at most %d, got %d", MC_LOGPROBS_MAX,
                          p->logprobs);
    if (p->logprobs_mode != MC_LOGPROBS_PROCESSED && p->logprobs_mode != MC_LOGPROBS_RAW)
        return mc_err_set(err, MC_ERR_ARG, "logprobs_mode %d is unknown", (int)p->logprobs_mode);
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias))
        return mc_err_set(err, MC_ERR_ARG, "logit_bias: %d entries but no table", p->n_logit_bias);
    for (int i = 0; i < p->n_logit_bias; i++) {
        const mc_logit_bias *b = &p->logit_bias[i];
        if (b->id < 0 || b->id >= vocab)
            return mc_err_set(err, MC_ERR_ARG, "logit_bias: token id %d is outside [0, %d)",
                              (int)b->id, vocab);
        if (!(b->bias >= -100.0f && b->bias <= 100.0f))
            return mc_err_set(err, MC_ERR_ARG,
                              "logit_bias: bias for token %d must be in [-100, 100], got %g",
                              (int)b->id, (double)b->bias);
    }
    return MC_OK;
}

mc_status mc_sampler_init(mc_sampler *s, const mc_sampler_params *p, int vocab, mc_err *err)
{
    mc_status st = mc_sampler_params_check(p, vocab, err);
    if (st != MC_OK)
        return st;
    s->p = *p;
    s->state = p->seed ^ 0x9e3779b97f4a7c15ull;
    return MC_OK;
}

bool mc_sampler_needs_history(const mc_sampler_params *p)
{
    return p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

bool mc_sampler_row_only(const mc_sampler_params *p)
{
    return !mc_sampler_needs_history(p) && p->n_logit_bias == 0 && p->logprobs < 0;
}

mc_step_draw mc_sampler_draw_of(const mc_sampler *s)
{
    mc_step_draw d = {.temperature = s->p.temperature,
                      .top_k = s->p.top_k,
                      .top_p = s->p.top_p,
                      .min_p = s->p.min_p,
                      .state = s->state};
    return d;
}

double mc_sampler_uniform(mc_sampler *s)
{
    uint64_t z = (s->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- per-sequence token counts ---- */

mc_status mc_seq_tokens_init(int vocab, mc_seq_tokens **out, mc_err *err)
{
    *out = NULL;
    if (vocab <= 0)
        return mc_err_set(err, MC_ERR_ARG, "vocab must be > 0, got %d", vocab);
    mc_seq_tokens *t = calloc(1, sizeof *t);
    if (!t)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory (token counts)");
    t->vocab = vocab;
    t->count = mc_calloc_n((size_t)vocab, sizeof *t->count);
    if (!t->count) {
        free(t);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory (token counts for %d ids)", vocab);
    }
    *out = t;
    return MC_OK;
}

mc_status mc_seq_tokens_add_prompt(mc_seq_tokens *t, const int32_t *ids, int n, mc_err *err)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->vocab)
            return mc_err_set(err, MC_ERR_ARG,
                              "prompt token id %d at position %d is outside [0, %d)", (int)ids[i],
                              i, t->vocab);
    for (int i = 0; i < n; i++)
        t->count[ids[i]] |= PROMPT_BIT;
    return MC_OK;
}

mc_status mc_seq_tokens_add(mc_seq_tokens *t, int32_t id, mc_err *err)
{
    if (id < 0 || id >= t->vocab)
        return mc_err_set(err, MC_ERR_ARG, "generated token id %d is outside [0, %d)", (int)id,
                          t->vocab);
    if ((t->count[id] & COUNT_MASK) != COUNT_MASK) /* saturates at 2^31 - 1 */
        t->count[id]++;
    return MC_OK;
}

int mc_seq_tokens_count(const mc_seq_tokens *t, int32_t id)
{
    return id >= 0 && id < t->vocab ? (int)(t->count[id] & COUNT_MASK) : 0;
}

bool mc_seq_tokens_in_prompt(const mc_seq_tokens *t, int32_t id)
{
    return id >= 0 && id < t->vocab && (t->count[id] & PROMPT_BIT);
}

void mc_seq_tokens_reset(mc_seq_tokens *t)
{
    memset(t->count, 0, (size_t)t->vocab * sizeof *t->count);
}

void mc_seq_tokens_free(mc_seq_tokens *t)
{
    if (!t)
        return;
    free(t->count);
    free(t);
}

/* ---- scratch ---- */

mc_status mc_sample_scratch_init(int vocab, mc_sample_scratch **out, mc_err *err)
{
    *out = NULL;
    if (vocab <= 0)
        return mc_err_set(err, MC_ERR_ARG, "vocab must be > 0, got %d", vocab);
    mc_sample_scratch *w = calloc(1, sizeof *w);
    if (!w)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory (sampler scratch)");
    w->vocab = vocab;
    w->x = mc_malloc_n((size_t)vocab, sizeof *w->x);
    w->xt = mc_malloc_n((size_t)vocab, sizeof *w->xt);
    w->key = mc_malloc_n(2 * (size_t)vocab, sizeof *w->key);
    w->idx = mc_malloc_n(2 * (size_t)vocab, sizeof *w->idx);
    w->e = mc_malloc_n((size_t)vocab, sizeof *w->e);
    if (!w->x || !w->xt || !w->key || !w->idx || !w->e) {
        mc_sample_scratch_free(w);
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory (sampler scratch for %d ids)", vocab);
    }
    *out = w;
    return MC_OK;
}

void mc_sample_scratch_free(mc_sample_scratch *w)
{
    if (!w)
        return;
    free(w->x);
    free(w->xt);
    free(w->key);
    free(w->idx);
    free(w->e);
    free(w);
}

/* ---- the pick ---- */

/* x[i] = logit after bias and penalties; NaN becomes -inf, -0 becomes +0 */
static void apply_penalties(const mc_sampler_params *p, const float *logits, int vocab,
                            const mc_seq_tokens *hist, float *x)
{
    for (int i = 0; i < vocab; i++)
        x[i] = isnan(logits[i]) ? -INFINITY : logits[i] + 0.0f;
    for (int b = 0; b < p->n_logit_bias; b++)
        x[p->logit_bias[b].id] += p->logit_bias[b].bias;
    if (!hist)
        return;
    float rp = p->repetition_penalty, fp = p->frequency_penalty, pp = p->presence_penalty;
    for (int i = 0; i < vocab; i++) {
        uint32_t c = hist->count[i];
        if (!c)
            continue;
        uint32_t n = c & COUNT_MASK;
        if (rp != 1.0f)
            x[i] = x[i] > 0.0f ? x[i] / rp : x[i] * rp;
        if (n)
            x[i] -= fp * (float)n + pp;
    }
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* top n of x (descending, ties to the lowest id) with log-softmax values
 * lse-normalised in double; also the token's own logprob. known: the sum of
 * exp(x - max x) when the filter already computed it, else < 0 */
static void fill_logprobs(const float *x, int vocab, int n, int32_t token, double known,
                          mc_logprobs *lp)
{
    double m = x[argmax(x, vocab)], sum = known;
    if (m == -INFINITY)
        m = 0; /* every id impossible: all logprobs -inf */
    if (!(sum > 0)) {
        sum = 0;
        for (int i = 0; i < vocab; i++)
            sum += exp((double)x[i] - m);
    }
    double lse = m + log(sum); /* log-sum-exp in double */
    lp->token = token;
    lp->token_logprob = (double)x[token] - lse;
    lp->n_top = 0;
    for (int i = 0; i < vocab && n > 0; i++) {
        int k = lp->n_top;
        if (k == n && !(x[i] > x[lp->top_ids[n - 1]]))
            continue;
        if (k < n)
            lp->n_top++;
        else
            k = n - 1;
        while (k > 0 && x[i] > x[lp->top_ids[k - 1]]) {
            lp->top_ids[k] = lp->top_ids[k - 1];
            k--;
        }
        lp->top_ids[k] = i;
    }
    for (int k = 0; k < lp->n_top; k++)
        lp->top_logprobs[k] = (double)x[lp->top_ids[k]] - lse;
}

/* key whose ascending order is descending float order */
static uint32_t desc_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* ascending order of f */
    return ~u;
}

/* the ids ids[0..n) (ascending) sorted by descending x[id], ties to the
 * lowest id (stable LSD radix sort, 4 passes of 8 bits); key (2, n) and
 * idx (2, n) are the ping-pong buffers, ids may be idx itself; returns the
 * buffer holding the result */
static int32_t *sort_desc(const float *x, const int32_t *ids, int n, uint32_t *key, int32_t *idx)
{
    uint32_t *ka = key, *kb = key + n;
    int32_t *ia = idx, *ib = idx + n;
    for (int i = 0; i < n; i++) {
        ia[i] = ids[i];
        ka[i] = desc_key(x[ids[i]]);
    }
    for (int shift = 0; shift < 32; shift += 8) {
        size_t cnt[257] = {0};
        for (int i = 0; i < n; i++)
            cnt[((ka[i] >> shift) & 0xffu) + 1]++;
        if (cnt[((ka[0] >> shift) & 0xffu) + 1] == (size_t)n)
            continue; /* every key has this byte: the pass would not move anything */
        for (int b = 0; b < 256; b++)
            cnt[b + 1] += cnt[b];
        for (int i = 0; i < n; i++) {
            size_t d = cnt[(ka[i] >> shift) & 0xffu]++;
            kb[d] = ka[i];
            ib[d] = ia[i];
        }
        uint32_t *tk = ka;
        ka = kb;
        kb = tk;
        int32_t *ti = ia;
        ia = ib;
        ib = ti;
    }
    return ia;
}

/* A filter keeps a prefix of the ids by descending probability. Sorting
 * only the ids with exp(x - max) >= PRUNE is exact when that prefix lies
 * among them: when they hold at least top_k ids (top-k on), or at least
 * top_p of the mass (top-k off). Otherwise every id is sorted. */
#define PRUNE 1e-4

/* e of the j-th id in the filters' order: e[order[j]], or e[j] without one */
static inline double e_at(const double *e, const int32_t *order, int j)
{
    return e[order ? order[j] : j];
}

/* top-p, then min-p, over the n ids left by top-k (e in descending order,
 * sum their total): how many survive */
static int keep_prefix(const mc_sampler_params *p, const double *e, const int32_t *order, int n,
                       double sum)
{
    if (p->top_p < 1.0f) {
        /* keep j while the mass before it is below top_p (vLLM drops the
         * tail whose cumulative mass is <= 1 - top_p); j = 0 always stays */
        double target = (double)p->top_p * sum, acc = e_at(e, order, 0);
        int keep = 1;
        while (keep < n && acc < target)
            acc += e_at(e, order, keep++);
        n = keep;
    }
    double lo = (double)p->min_p;
    int keep = 1; /* min-p: a prefix, as e descends from e = 1 */
    while (keep < n && e_at(e, order, keep) >= lo)
        keep++;
    return keep;
}

/* The draw over the n survivors (in order; e 0 skipped): the index into e
 * of the one r falls on, else of the last possible one (last: when none) */
static int draw(mc_sampler *s, const double *e, const int32_t *order, int n, int last)
{
    double sum = 0, acc = 0;
    for (int j = 0; j < n; j++)
        sum += e_at(e, order, j);
    double r = mc_sampler_uniform(s) * sum;
    for (int j = 0; j < n; j++) {
        int id = order ? order[j] : j;
        if (e[id] == 0.0)
            continue;
        acc += e[id];
        last = id;
        if (r < acc)
            return id;
    }
    return last;
}

/* top-k, top-p, min-p over x (already / T, max x finite): fills w->e with
 * exp(x - max) by id and returns how many ids survive. *order is the
 * survivors by descending pre (x before the temperature: the same order,
 * except that two logits the division rounds to one x keep theirs; ties to
 * the lowest id, as the backends' top-k candidates), or NULL when no sort
 * was needed: then the survivors are the ids with w->e > 0 (e zeroed below
 * min-p), n = vocab. */
static int filter(const mc_sampler_params *p, const float *x, const float *pre, int vocab,
                  double m, mc_sample_scratch *w, const int32_t **order_out)
{
    double *e = w->e;             /* (vocab) exp(x - m), by id */
    double lo = (double)p->min_p; /* min-p: keep e >= min_p */
    bool top_k = p->top_k > 0 && p->top_k < vocab;
    bool sorted = top_k || p->top_p < 1.0f;
    double sum = 0, big = 0, all = 0;
    int nbig = 0;
    int32_t *cand = w->idx; /* (vocab) ids with e >= PRUNE, ascending */
    for (int i = 0; i < vocab; i++) {
        e[i] = exp((double)x[i] - m);
        all += e[i];
        if (!sorted && e[i] < lo)
            e[i] = 0.0;
        sum += e[i];
        if (sorted && e[i] >= PRUNE) {
            cand[nbig++] = i;
            big += e[i];
        }
    }
    *order_out = NULL;
    w->all = all;
    if (!sorted)
        return vocab;
    /* (the margin keeps rounding in the two sums' orders from mattering) */
    bool pruned = top_k ? nbig >= p->top_k : big >= (double)p->top_p * sum * (1 + 1e-9);
    if (!pruned) {
        nbig = vocab;
        for (int i = 0; i < vocab; i++)
            cand[i] = i;
    }
    int32_t *order = sort_desc(pre, cand, nbig, w->key, w->idx); /* (nbig) */
    int n = nbig;
    if (top_k && p->top_k < n)
        n = p->top_k;
    if (top_k) {
        sum = 0;
        for (int j = 0; j < n; j++)
            sum += e[order[j]];
    }
    *order_out = order;
    return keep_prefix(p, e, order, n, sum);
}

/* one draw over x (pre / T) after top-k, top-p, min-p */
static int32_t sample(mc_sampler *s, const float *x, const float *pre, int vocab,
                      mc_sample_scratch *w)
{
    int best = argmax(pre, vocab);
    double m = x[best];
    if (isinf(m))
        return best; /* -inf: nothing possible; +inf: it outweighs all (as greedy) */
    const int32_t *order;
    int n = filter(&s->p, x, pre, vocab, m, w, &order);
    return draw(s, w->e, order, n, best);
}

mc_status mc_sampler_pick(mc_sampler *s, const float *logits, int vocab, const mc_seq_tokens *hist,
                          mc_sample_scratch *w, int32_t *token, mc_logprobs *lp, mc_err *err)
{
    const mc_sampler_params *p = &s->p;
    if (!w || w->vocab != vocab)
        return mc_err_set(err, MC_ERR_ARG, "sampler scratch is for %d ids, logits have %d",
                          w ? w->vocab : 0, vocab);
    bool penalties = mc_sampler_needs_history(p);
    if (penalties && (!hist || hist->vocab != vocab))
        return mc_err_set(err, MC_ERR_ARG,
                          "penalties need the sequence's token counts for %d ids (have %d)", vocab,
                          hist ? hist->vocab : 0);
    float *x = w->x; /* (vocab) */
    apply_penalties(p, logits, vocab, penalties ? hist : NULL, x);
    bool greedy = p->temperature < MC_SAMPLER_GREEDY_EPS;
    const float *xs = x; /* the processed logits: x / T, or x when greedy */
    if (!greedy) {
        float t = p->temperature, *xt = w->xt;
        for (int i = 0; i < vocab; i++)
            xt[i] = x[i] / t;
        xs = xt;
    }
    w->all = -1;
    int32_t id = greedy ? argmax(x, vocab) : sample(s, xs, x, vocab, w);
    *token = id;
    if (lp && p->logprobs >= 0) {
        double known = w->all; /* the filter's sum over the same x */
        if (p->logprobs_mode == MC_LOGPROBS_RAW) {
            known = -1;
            /* the model's logits, NaN as -inf: reuse x */
            for (int i = 0; i < vocab; i++)
                x[i] = isnan(logits[i]) ? -INFINITY : logits[i];
            xs = x;
        }
        fill_logprobs(xs, vocab, p->logprobs, id, known, lp);
    }
    return MC_OK;
}

mc_status mc_sampler_pick_draw(const mc_step_draw *d, const float *row, int vocab,
                               mc_sample_scratch *w, int32_t *token, uint64_t *state,
                               mc_err *err)
{
    mc_sampler_params p = mc_sampler_defaults();
    p.temperature = d->temperature;
    p.top_k = d->top_k;
    p.top_p = d->top_p;
    p.min_p = d->min_p;
    mc_sampler s;
    mc_status st = mc_sampler_init(&s, &p, vocab, err);
    if (st != MC_OK)
        return st;
    s.state = d->state;
    st = mc_sampler_pick(&s, row, vocab, NULL, w, token, NULL, err);
    *state = s.state;
    return st;
}

int mc_sampler_top_k(const mc_sampler_params *p, int vocab)
{
    if (mc_sampler_needs_history(p) || p->n_logit_bias != 0 || p->logprobs >= 0)
        return 0;
    if (p->temperature < MC_SAMPLER_GREEDY_EPS)
        return 1;
    return p->top_k > 0 && p->top_k < vocab && p->top_k <= MC_SAMPLER_TOP_MAX ? p->top_k : 0;
}

mc_status mc_sampler_pick_top(mc_sampler *s, const int32_t *ids, const float *logits, int k,
                              int vocab, int32_t *token, mc_err *err)
{
    const mc_sampler_params *p = &s->p;
    int need = mc_sampler_top_k(p, vocab);
    if (need <= 0 || need > k)
        return mc_err_set(err, MC_ERR_ARG, "sampler: %d candidates do not determine this pick "
                          "(it needs %s)", k, need <= 0 ? "the whole row" : "more");
    for (int j = 0; j < need; j++)
        if (ids[j] < 0 || ids[j] >= vocab)
            return mc_err_set(err, MC_ERR_ARG, "sampler: candidate id %d is outside [0, %d)",
                              (int)ids[j], vocab);
    if (p->temperature < MC_SAMPLER_GREEDY_EPS) {
        *token = ids[0];
        return MC_OK;
    }
    /* the whole row's steps (sample, filter) over its top_k ids, which the
     * candidates are in the filter's order: x = pre / T, e = exp(x - max) */
    int n = p->top_k;
    float t = p->temperature;
    double e[MC_SAMPLER_TOP_MAX];
    double m = (double)((isnan(logits[0]) ? -INFINITY : logits[0] + 0.0f) / t);
    if (isinf(m)) {
        *token = ids[0];
        return MC_OK;
    }
    double sum = 0;
    for (int j = 0; j < n; j++) {
        float x = (isnan(logits[j]) ? -INFINITY : logits[j] + 0.0f) / t;
        e[j] = exp((double)x - m);
        sum += e[j];
    }
    n = keep_prefix(p, e, NULL, n, sum);
    *token = ids[draw(s, e, NULL, n, 0)];
    return MC_OK;
}

/* ---- stop conditions ---- */

mc_finish mc_stop_token(int32_t token, long n_generated, const int32_t *stop_ids, int n_stop_ids,
                        long max_tokens)
{
    for (int i = 0; i < n_stop_ids; i++)
        if (stop_ids[i] == token)
            return MC_FINISH_STOP;
    if (max_tokens > 0 && n_generated >= max_tokens)
        return MC_FINISH_LENGTH;
    return MC_FINISH_NONE;
}

int mc_stop_str_scan(const char *text, size_t len, size_t checked, const char *const *stops,
                     int n_stops, size_t *safe_len, size_t *stop_at)
{
    if (checked > len)
        checked = 0;
    int which = -1;
    size_t best_end = 0, best_start = 0;
    for (int k = 0; k < n_stops; k++) {
        size_t sl = stops[k] ? strlen(stops[k]) : 0;
        if (sl == 0 || sl > len)
            continue;
        /* only occurrences ending after `checked` are new */
        size_t from = checked >= sl ? checked - sl + 1 : 0;
        for (size_t st = from; st + sl <= len; st++) {
            size_t end = st + sl;
            if (which >= 0 && end > best_end)
                break;
            if (memcmp(text + st, stops[k], sl) != 0)
                continue;
            if (which < 0 || end < best_end || (end == best_end && st < best_start)) {
                which = k;
                best_end = end;
                best_start = st;
            }
            break; /* the first occurrence of this string ends first */
        }
    }
    if (which >= 0) {
        *stop_at = best_start;
        *safe_len = best_start;
        return which;
    }
    /* hold back the longest tail that is a proper prefix of a stop string */
    size_t hold = 0;
    for (int k = 0; k < n_stops; k++) {
        size_t sl = stops[k] ? strlen(stops[k]) : 0;
        for (size_t h = sl > 0 ? sl - 1 : 0; h > hold; h--)
            if (h <= len && memcmp(text + len - h, stops[k], h) == 0) {
                hold = h;
                break;
            }
    }
    *stop_at = len;
    *safe_len = len - hold;
    return -1;
}
