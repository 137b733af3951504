/* sampler.h - picking the next token from a step's logits, as vLLM and the
 * OpenAI API define the request parameters (see docs/serving.md).
 *
 * Three kinds of state, sized for a serving loop:
 *   mc_sampler          per request: the checked parameters and the seeded
 *                       random stream (small, caller-owned, no heap);
 *   mc_seq_tokens       per sequence, only when a penalty is on: how often
 *                       each token id occurred in the prompt and the output
 *                       (4 bytes per vocabulary entry);
 *   mc_sample_scratch   per thread: the buffers one pick needs (32 bytes per
 *                       vocabulary entry), so a pick allocates nothing.
 *
 * One pick, in vLLM's order:
 *   1. logit_bias is added, then penalties are applied to the logits:
 *      repetition (ids in the prompt or the output: l / r if l > 0 else
 *      l * r), then frequency and presence (output ids only:
 *      l -= frequency * count + presence * (count > 0));
 *   2. temperature: l / T; T < MC_SAMPLER_GREEDY_EPS means greedy (argmax,
 *      ties to the lowest id);
 *   3. filtering: top-k (exactly k ids, by the logits of step 1 - the same
 *      order as after step 2, except that two logits the division rounds to
 *      one value keep their order - ties to the lowest id), then top-p
 *      over the renormalised top-k set (keep the shortest prefix, by
 *      descending probability, whose mass reaches top_p), then min-p (drop
 *      ids with probability < min_p * the top probability);
 *   4. one draw from the renormalised survivors.
 * Logprobs come from the distribution after step 2 (temperature 1 when
 * greedy), before filtering: vLLM's "processed_logprobs" mode. vLLM's own
 * default, "raw_logprobs" (the model's logits as they came), is available
 * with logprobs_mode = MC_LOGPROBS_RAW.
 *
 * Stop handling: mc_stop_token checks stop ids and max_tokens; stop strings
 * are matched on text by the serving code with mc_stop_str_scan.
 */
#ifndef MC_SAMPLER_H
#define MC_SAMPLER_H

#include "status.h"
#include "step_plan.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MC_SAMPLER_GREEDY_EPS 1e-5f /* temperatures below this are greedy (vLLM) */
#define MC_LOGPROBS_MAX 20          /* OpenAI's bound on top logprobs */

typedef enum {
    MC_LOGPROBS_PROCESSED = 0, /* after bias, penalties and temperature, before filtering */
    MC_LOGPROBS_RAW,           /* the logits as the model returned them */
} mc_logprobs_mode;

typedef struct {
    int32_t id;
    float bias; /* added to the logit, [-100, 100] as OpenAI */
} mc_logit_bias;

typedef struct {
    float temperature;        /* >= 0, finite; 0: greedy */
    int top_k;                /* >= -1; -1 or 0: off */
    float top_p;              /* (0, 1]; 1: off */
    float min_p;              /* [0, 1]; 0: off */
    float repetition_penalty; /* > 0; 1: off */
    float presence_penalty;   /* [-2, 2]; 0: off */
    float frequency_penalty;  /* [-2, 2]; 0: off */
    uint64_t seed;
    int logprobs; /* < 0: off; 0: the chosen token's only; n <= 20: top n */
    mc_logprobs_mode logprobs_mode;
    const mc_logit_bias *logit_bias; /* (n_logit_bias), borrowed for the sampler's life */
    int n_logit_bias;
} mc_sampler_params;

typedef struct {
    mc_sampler_params p;
    uint64_t state; /* splitmix64 */
} mc_sampler;

/* Log-probabilities of one pick (see the header comment for which
 * distribution). top is sorted by descending logprob, ties to the lowest id. */
typedef struct {
    int32_t token;
    double token_logprob;
    int n_top;
    int32_t top_ids[MC_LOGPROBS_MAX];
    double top_logprobs[MC_LOGPROBS_MAX];
} mc_logprobs;

/* The neutral parameters: greedy, every filter and penalty off, logprobs off. */
mc_sampler_params mc_sampler_defaults(void);

/* Checks every field against its range; the error names the field as the
 * OpenAI / vLLM request does ("top_p must be in (0, 1], got 1.5").
 * vocab bounds the logit_bias ids. */
mc_status mc_sampler_params_check(const mc_sampler_params *p, int vocab, mc_err *err);

/* Checks p (mc_sampler_params_check) and seeds the stream. Nothing to free;
 * p->logit_bias stays borrowed. */
mc_status mc_sampler_init(mc_sampler *s, const mc_sampler_params *p, int vocab, mc_err *err);

/* True when a penalty is on, i.e. the pick needs an mc_seq_tokens. */
bool mc_sampler_needs_history(const mc_sampler_params *p);

/* True when a pick needs nothing but the row, the parameters and the
 * stream (no penalty, logit bias or logprobs): whoever holds the row can
 * make it (a worker, mc_step_draw), bit for bit, given the stream. */
bool mc_sampler_row_only(const mc_sampler_params *p);

/* The draw a worker makes for this request (mc_step_draw: the parameters
 * mc_sampler_row_only requests pick with, and the stream as it stands). */
mc_step_draw mc_sampler_draw_of(const mc_sampler *s);

/* Uniform double in [0,1) from the sampler's stream. */
double mc_sampler_uniform(mc_sampler *s);

/* ---- per-sequence token counts ---- */
typedef struct mc_seq_tokens mc_seq_tokens;

/* Allocates counts for `vocab` ids, all zero; free with mc_seq_tokens_free. */
mc_status mc_seq_tokens_init(int vocab, mc_seq_tokens **out, mc_err *err);
/* Records prompt ids (repetition penalty only) / one generated id (all
 * penalties). Ids outside [0, vocab) are refused, naming the position. */
mc_status mc_seq_tokens_add_prompt(mc_seq_tokens *t, const int32_t *ids, int n, mc_err *err);
mc_status mc_seq_tokens_add(mc_seq_tokens *t, int32_t id, mc_err *err);
/* How often id was generated so far; whether it is in the prompt. */
int mc_seq_tokens_count(const mc_seq_tokens *t, int32_t id);
bool mc_seq_tokens_in_prompt(const mc_seq_tokens *t, int32_t id);
/* Forgets everything (a preempted sequence restarting), O(vocab). */
void mc_seq_tokens_reset(mc_seq_tokens *t);
void mc_seq_tokens_free(mc_seq_tokens *t);

/* ---- per-thread scratch ---- */
typedef struct mc_sample_scratch mc_sample_scratch;

/* Allocates a pick's buffers for `vocab` ids; free with mc_sample_scratch_free.
 * One scratch serves any number of requests, one pick at a time. */
mc_status mc_sample_scratch_init(int vocab, mc_sample_scratch **out, mc_err *err);
void mc_sample_scratch_free(mc_sample_scratch *w);

/* Picks the next token from logits (vocab) into *token. hist may be NULL
 * when no penalty is on (mc_sampler_needs_history); lp may be NULL, and is
 * filled when p.logprobs >= 0. logits are not modified; NaN
 * logits count as -inf. Fails (MC_ERR_ARG) only when vocab disagrees with
 * the scratch or the history, or a needed history is missing. */
mc_status mc_sampler_pick(mc_sampler *s, const float *logits, int vocab, const mc_seq_tokens *hist,
                          mc_sample_scratch *w, int32_t *token, mc_logprobs *lp, mc_err *err);

/* Makes draw d on row (vocab) as mc_sampler_pick makes it for the request
 * d came from: *token, and *state the stream after the pick. MC_ERR_ARG
 * for parameters out of range (mc_sampler_params_check) or a scratch of
 * another vocabulary. */
mc_status mc_sampler_pick_draw(const mc_step_draw *d, const float *row, int vocab,
                               mc_sample_scratch *w, int32_t *token, uint64_t *state,
                               mc_err *err);

/* Picks from a row's best candidates instead of the whole row (the
 * backends' top-k: ids best first by logit, ties to the lowest id, with
 * their logits), giving the token mc_sampler_pick gives on the whole row,
 * bit for bit, random stream included, for requests mc_sampler_top_k
 * accepts. */
#define MC_SAMPLER_TOP_MAX 64 /* the most candidates a row carries (MC_TOPK_MAX) */

/* How many candidates a row needs for this request's pick: 1 when greedy,
 * top_k when sampling with 1 <= top_k <= MC_SAMPLER_TOP_MAX (and top_k <
 * vocab); 0 (the whole row) with penalties, a logit bias or logprobs, or
 * without such a top_k. */
int mc_sampler_top_k(const mc_sampler_params *p, int vocab);

/* The pick from k candidates (ids / logits, best first; k >= what
 * mc_sampler_top_k asks). MC_ERR_ARG when they cannot give it. */
mc_status mc_sampler_pick_top(mc_sampler *s, const int32_t *ids, const float *logits, int k,
                              int vocab, int32_t *token, mc_err *err);

/* ---- stop conditions ---- */
typedef enum {
    MC_FINISH_NONE = 0, /* go on */
    MC_FINISH_STOP,     /* a stop id (or, from the serving code, a stop string) */
    MC_FINISH_LENGTH,   /* max_tokens reached */
} mc_finish;

/* After generating `token` as the n_generated-th output token (1-based):
 * STOP when token is one of stop_ids (n_stop_ids of them: the model's end
 * ids, e.g. generation_config's eos_token_id list, plus the request's
 * stop_token_ids), else LENGTH when max_tokens > 0 and n_generated >=
 * max_tokens, else NONE. A stop id wins over the length. */
mc_finish mc_stop_token(int32_t token, long n_generated, const int32_t *stop_ids, int n_stop_ids,
                        long max_tokens);

/* Stop strings, for streaming. Contract: text (len bytes) is the output text
 * detokenized so far, append-only between calls (the caller holds back an
 * incomplete UTF-8 tail itself); `checked` is the len of the previous call
 * that matched nothing (0 the first time), so only new text is searched.
 * Empty stop strings are ignored.
 *
 * Returns the index of the stop string that ended first in the text (ties:
 * the longest, i.e. the one starting first), with *stop_at its start: the
 * request is finished and its text is text[0, *stop_at) (plus the stop
 * string itself when the request includes it). Returns -1 when none
 * occurs; then *safe_len is how much of text may be streamed now: len less
 * the longest tail that is a proper prefix of some stop string, so streamed
 * text never shows a stop string's beginning that later completes. safe_len
 * never decreases between calls on growing text. On a match *safe_len =
 * *stop_at. Chunking does not change the result: feeding the text byte by
 * byte or at once gives the same answer. */
int mc_stop_str_scan(const char *text, size_t len, size_t checked, const char *const *stops,
                     int n_stops, size_t *safe_len, size_t *stop_at);

#endif
