/* session.h - the one lifecycle of the commands that run a model (`score`,
 * `generate`, `bench`): open the world, load the model, run, close.
 *
 *   mc_session_open    the world communicator (MPI under mpirun, else one
 *                      rank) or none (a single-process session: bench), and
 *                      the compute backend (probes, counters, code path)
 *   mc_session_load    the model or this rank's share of it, the options
 *                      applied (--weights, --no-verify, --stats); fails on
 *                      every rank together when it fails on any
 *   mc_session_score(_opts) / _seq_* / _forward   the schedules the commands run
 *   mc_session_close   frees everything in order, finalizes MPI last
 *
 * The session hides the model's and the kernels' types: a command needs
 * only this header (plus comm.h for error reports), so nothing in
 * coordinator/ sees kernels/. Errors follow mc_par_agree: after a collective
 * failure the lowest failing rank holds the message, the others an empty one.
 */
#ifndef MC_SESSION_H
#define MC_SESSION_H

#include "comm.h"
#include "dtype.h"
#include "model_config.h"
#include "status.h"
#include "step_plan.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct mc_session mc_session;

/* How to load a model (mc_session_load). */
typedef struct {
    const char *dir;      /* checkpoint folder or shard set (borrowed) */
    long long tp, ep, pp; /* layout; <= 0 = default (mc_layout_make) */
    bool layout_given;    /* load under a layout even in a one-rank world */
    bool weights_given;   /* --weights: quantize / re-store the matrices at load */
    mc_dtype weights;
    bool no_verify; /* --no-verify: skip the shard set's checksum check */
    bool stats;     /* --stats: count per-layer statistics */
    /* --device: "cpu", "cuda" or "auto" (cuda when the build has CUDA and a
     * GPU is visible, else cpu), applied before loading (mc_session_set_device);
     * NULL keeps the session's backend (the CPU one mc_session_open made) */
    const char *device;
    /* --no-mmap: weights used as stored (no --weights) are copied into RAM
     * on huge pages at load on the CPU (mc_model_resident) instead of being
     * read through the file mapping */
    bool resident;
    /* --activations bf16: on the CPU, activations meeting BF16 weights are
     * rounded to bf16 first (mc_kernels_set_bf16_acts, process-wide); refused
     * on cuda */
    bool bf16_acts;
    /* --kv-cache-dtype: the step executor's KV cache, MC_DT_F32 (default, 0)
     * or MC_DT_BF16 (values rounded at the write; CPU only, not DeepSeek-V4) */
    mc_dtype kv_dtype;
} mc_session_opts;

/* Opens a session. with_world: the world communicator (MPI when an MPI
 * launcher started this process, else one rank; argc/argv as MPI_Init);
 * without: a single process that never touches MPI (argc/argv unused).
 * Also makes the compute backend. Close with mc_session_close. */
mc_status mc_session_open(int *argc, char ***argv, bool with_world, mc_session **out, mc_err *err);

/* Frees the model, the sequence cache and the backend, then the world
 * (finalizing MPI when it was started). abort_peers: the failure came after
 * the ranks started working together, so peers may be blocked in a
 * collective: a world of more than one rank is aborted (does not return).
 * NULL is a no-op. */
void mc_session_close(mc_session *s, bool abort_peers);

/* ---- the world ---- */

int mc_session_rank(const mc_session *s);
int mc_session_size(const mc_session *s);
/* The world communicator (NULL in a session without one); borrowed. */
const mc_comm *mc_session_world(const mc_session *s);
/* Collective: bytes from root's buf to every rank's buf (a no-op in one rank). */
mc_status mc_session_bcast(mc_session *s, int root, void *buf, size_t bytes, mc_err *err);
/* Collective: MC_OK on every rank when every rank passed st == MC_OK (mc_par_agree). */
mc_status mc_session_agree(mc_session *s, mc_status st, mc_err *err);

/* ---- the model ---- */

/* Collective over the world: loads o->dir whole (one rank, no layout given,
 * or a session without a world) or this rank's share under the layout, then
 * applies --no-verify (before loading), --weights and --stats. */
mc_status mc_session_load(mc_session *s, const mc_session_opts *o, mc_err *err);
/* Quantizes / re-stores the loaded share's matrices (see model_quant.h). */
mc_status mc_session_quantize(mc_session *s, mc_dtype fmt, mc_err *err);
/* The loaded model's description (NULL before mc_session_load); borrowed. */
const mc_model_desc *mc_session_desc(const mc_session *s);
/* Reads one byte per page of every bound weight, so that page faults of
 * the mapping happen before a clock starts. */
void mc_session_warm(const mc_session *s);

/* True when DIR is a shard set written by `moecluster shard`. */
bool mc_session_is_shard_set(const char *dir);

/* ---- running ---- */

/* Defaults of `score`'s step budget (--max-batch-tokens, as vLLM's
 * max_num_batched_tokens) and KV block size (--kv-block-size). */
#define MC_SCORE_DEFAULT_BATCH_TOKENS 2048u
#define MC_SCORE_DEFAULT_BLOCK_SIZE 16u

/* How to score (mc_session_score_opts). */
typedef struct {
    const int64_t *lengths; /* [B] tokens each sequence runs, 1..T (borrowed); NULL = all T */
    int decode_from;        /* prefill the first K, the rest one token per step; <= 0: all */
    uint32_t max_batch_tokens; /* new tokens per step; 0 = MC_SCORE_DEFAULT_BATCH_TOKENS */
    uint32_t kv_block_size;    /* positions per KV block; 0 = MC_SCORE_DEFAULT_BLOCK_SIZE */
} mc_score_opts;

/* Collective: logits [B, T, V] of B sequences of T tokens (ids [B, T] on
 * every rank), scheduled into steps of the step executor (scheduler.h: per dp
 * group, FCFS, chunked prefill within the budget, paged KV). Positions at
 * or past a sequence's length are 0. The pool holds the blocks of every
 * sequence of the busiest dp group, capped at 4 GiB of KV per rank, but at
 * least the longest sequence. A family or layout the executor does not run
 * fails with MC_ERR_UNSUPPORTED on every rank, naming what is missing.
 * logits is written on rank 0 only (NULL elsewhere is fine). */
mc_status mc_session_score_opts(mc_session *s, const int64_t *ids, int B, int T,
                                const mc_score_opts *o, float *logits, mc_err *err);
/* = mc_session_score_opts with decode_from and the defaults otherwise. */
mc_status mc_session_score(mc_session *s, const int64_t *ids, int B, int T, int decode_from,
                           float *logits, mc_err *err);

/* One sequence held by the session: a step executor with blocks for cap
 * tokens (replaces an earlier one; MC_ERR_UNSUPPORTED, naming what is
 * missing, where the executor does not run the model), emptied again by
 * _seq_reset. Not collective: callers agree on the outcome. */
mc_status mc_session_seq_init(mc_session *s, int cap, mc_err *err);
void mc_session_seq_reset(mc_session *s);
/* Collective: n tokens of the sequence through every rank's share; the
 * logits [V] of the last one land on rank 0. */
mc_status mc_session_seq_last(mc_session *s, const int64_t *tokens, int n, float *logits,
                              mc_err *err);
/* Collective, as _seq_last, but the last token's k (1..MC_TOPK_MAX) most
 * likely ids (best first, ties to the lower id), their logits and (lse not
 * NULL) the row's log-sum-exp land on rank 0 instead of its logits: the
 * row never leaves the device whole (worker/step.h mc_step_top). ids[0]
 * is the greedy pick, bitwise the argmax of the row _seq_last gives. */
mc_status mc_session_seq_last_top(mc_session *s, const int64_t *tokens, int n, int k,
                                  int32_t *ids, float *vals, double *lse, mc_err *err);
/* Single process: n tokens of the sequence, logits [n, V] (or [1, V] of the
 * last when last_only) written to logits. */
mc_status mc_session_forward(mc_session *s, const int64_t *tokens, int n, float *logits,
                             bool last_only, mc_err *err);
/* The same with k candidates a row in place of the logits: ids and vals
 * [n, k] (or [1, k]), lse [n] (or [1]) or NULL (mc_session_seq_last_top). */
mc_status mc_session_forward_top(mc_session *s, const int64_t *tokens, int n, int k,
                                 int32_t *ids, float *vals, double *lse, bool last_only,
                                 mc_err *err);

/* ---- serving: one step executor driven by step plans (`moecluster worker`) ----
 *
 * The coordinator owns the block tables (its own pool); the executor's pool
 * is not used. Every rank makes the executor and runs every plan (the ranks
 * of one dp group; serving runs dp == 1 only), rank 0 gets the logits. */

/* What the serving executor serves, for the control plane's Hello. */
typedef struct {
    uint32_t vocab, n_layers;
    uint32_t n_blocks, block_size, max_batch_tokens, max_pos;
    int dp; /* dp groups of the loaded layout (1 in one process) */
} mc_session_exec_info;

/* Collective: makes the serving executor (n_blocks KV blocks of block_size
 * positions, steps of up to max_batch_tokens new tokens); replaces an
 * earlier one. Fails on every rank together (mc_session_agree). */
mc_status mc_session_exec_open(mc_session *s, uint32_t n_blocks, uint32_t block_size,
                               uint32_t max_batch_tokens, mc_err *err);
/* Facts of the loaded model and the serving executor (zeros before). */
void mc_session_exec_info_get(const mc_session *s, mc_session_exec_info *out);
/* Not collective (rank 0, before it hands a plan to every rank): would the
 * plan run after the sequences in release[n_release] are forgotten? Checks
 * the release ids (known, no duplicates), the plan against the executor's
 * limits and known lengths, top_k (the same for every entry with logits,
 * at most MC_TOPK_MAX) and that the rows fit max_logit_bytes. An empty plan
 * with releases is fine. */
mc_status mc_session_exec_check(const mc_session *s, const mc_step_plan *plan,
                                const uint64_t *release, size_t n_release,
                                size_t max_logit_bytes, mc_err *err);
/* Collective: forgets the released sequences, then runs the plan (skipped
 * when it has no entries); mc_step_plan_logit_rows rows land in logits on
 * rank 0 (NULL elsewhere is fine), each mc_session_row_words(s, k) words:
 * with top_k 0 the vocab floats of the row, with top_k = k > 0 its
 * candidates instead (worker/step.h mc_step_top), packed as k int32 ids,
 * k float logits and the row's log-sum-exp as a double (8 bytes). The
 * outcome is agreed: every rank returns the same status. */
mc_status mc_session_exec_run(mc_session *s, const mc_step_plan *plan, const uint64_t *release,
                              size_t n_release, float *logits, mc_err *err);
/* The top_k every entry with logits asks for (0: full rows; also for a plan
 * without such entries), or -1 when they differ. */
int mc_session_plan_top_k(const mc_step_plan *plan);
/* 4-byte words of one row of mc_session_exec_run's output: vocab for k 0,
 * else 2k + 2. */
uint32_t mc_session_row_words(const mc_session *s, int k);

/* Collective: gathers --stats rows to rank 0, which prints them to out. */
mc_status mc_session_stats_report(mc_session *s, FILE *out, double wall_s, mc_err *err);

/* ---- the backend: code path, threads, counters, probes ---- */

/* Replaces the session's compute backend (borrowed name):
 *   "cpu"   the CPU backend;
 *   "cuda"  the CUDA backend on device (local rank mod visible devices), the
 *           local rank from OMPI_COMM_WORLD_LOCAL_RANK / MPI_LOCALRANKID
 *           (0 without a launcher); MC_ERR_UNSUPPORTED "--device cuda: built
 *           without CUDA ..." or "--device cuda: no CUDA device visible ...";
 *   "auto"  cuda when the build has CUDA and a device is visible, else cpu.
 * Anything else is MC_ERR_ARG. Not collective (mc_session_load agrees on
 * the outcome). Refused (MC_ERR_ARG) once a model is loaded: its weights,
 * executors and data plane (mc_par_data_plane) belong to the old backend.
 * On failure the old backend stays. */
mc_status mc_session_set_device(mc_session *s, const char *device, mc_err *err);
/* Whether this process could open `device` (as mc_session_set_device
 * names it; NULL = "auto") without opening it: MC_OK, or the same
 * MC_ERR_UNSUPPORTED "--device cuda: ..." set_device would give. For
 * commands that start workers on this host and want to refuse first. */
mc_status mc_session_device_usable(const char *device, mc_err *err);
/* "cpu" or "cuda": the backend in use. */
const char *mc_session_device(const mc_session *s);

/* Code path in use ("amx", "avx512", "avx2", "scalar") and the device's features. */
const char *mc_session_kernels(const mc_session *s);
const char *mc_session_features(const mc_session *s);
/* Forces a code path by name: MC_ERR_ARG when unknown, MC_ERR_UNSUPPORTED
 * when this CPU or build lacks it. */
mc_status mc_session_set_kernels(mc_session *s, const char *name, mc_err *err);
int mc_session_threads(const mc_session *s);
void mc_session_set_threads(mc_session *s, int n); /* n < 1: the default */

typedef struct {
    uint64_t bytes_read; /* weight bytes read by matrix products and embedding */
    uint64_t macs;       /* multiply-adds done by matrix products */
} mc_session_counters;

/* Counters from zero, counting while on. */
void mc_session_count(mc_session *s, bool on);
void mc_session_counters_get(const mc_session *s, mc_session_counters *out);
/* Read-stream bandwidth (GB/s) over `bytes` of fresh memory and FMA peak
 * (GFLOP/s) of the current path, each for about `seconds`; negative if
 * they cannot run. */
double mc_session_probe_read_gbps(mc_session *s, size_t bytes, int threads, double seconds);
double mc_session_probe_fma_gflops(mc_session *s, int threads, double seconds);
/* Peak int8 matrix throughput (GOP/s: AMX INT8 tiles on the amx path); < 0: none. */
double mc_session_probe_int8_gops(mc_session *s, int threads, double seconds);
/* Peak bf16 matrix throughput (GFLOP/s: AMX-BF16 tiles on the amx path); < 0: none. */
double mc_session_probe_bf16_gflops(mc_session *s, int threads, double seconds);

/* ---- the in-process step runner (the serving engine's, coordinator/engine.h) ---- */

/* A step executor over the session's loaded model that the coordinator's
 * engine drives with its own step plans and block tables (the executor
 * trusts the plans' tables; its own pool stays unused). One process only:
 * a session whose world has more than one rank is refused
 * (MC_ERR_UNSUPPORTED; a worker group is reached over the control plane).
 * The runner is a view of the session's serving executor (the one
 * mc_session_exec_open makes): one per session, and a session that has one
 * already is refused (MC_ERR_ARG). Close with mc_session_runner_close
 * (which frees the executor) before mc_session_close. */
typedef struct mc_session_runner mc_session_runner;

typedef struct {
    uint32_t vocab, n_blocks, block_size, max_pos, max_batch_tokens;
} mc_session_runner_limits;

/* n_blocks KV blocks of block_size positions, steps of up to
 * max_batch_tokens new tokens (all >= 1, else MC_ERR_ARG); MC_ERR_UNSUPPORTED
 * where the executor does not run the model, naming what is missing. */
mc_status mc_session_runner_open(mc_session *s, uint32_t n_blocks, uint32_t block_size,
                                 uint32_t max_batch_tokens, mc_session_runner **out, mc_err *err);
void mc_session_runner_close(mc_session_runner *r); /* NULL is fine */
void mc_session_runner_get_limits(const mc_session_runner *r, mc_session_runner_limits *out);
/* mc_step_exec_run: logits rows per entry in plan order (LAST: 1 row). */
mc_status mc_session_runner_run(mc_session_runner *r, const mc_step_plan *plan, float *logits,
                                mc_err *err);
/* mc_step_exec_run_top with the plan's k (mc_session_plan_top_k): per row
 * top_ids, top_lp and top_lg (rows of k; top_lg may be NULL) get the
 * candidates, their log-probabilities (logit - log-sum-exp) and logits. */
mc_status mc_session_runner_run_top(mc_session_runner *r, const mc_step_plan *plan,
                                    int32_t *top_ids, float *top_lp, float *top_lg, mc_err *err);
/* mc_step_exec_release: forgets a sequence (MC_ERR_NOT_FOUND if unknown). */
mc_status mc_session_runner_release(mc_session_runner *r, uint64_t seq_id, mc_err *err);

#endif
