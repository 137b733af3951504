/* par_args.h - the parallel-layout options shared by `score` and `generate`
 * (and later `serve`), and how a command reports an error under mpirun.
 * Header-only: small helpers for the commands' getopt loops. */
#ifndef MC_PAR_ARGS_H
#define MC_PAR_ARGS_H

#include "cli.h"
#include "comm.h"
#include "comm_mpi.h"
#include "dtype.h"
#include "session.h"
#include "status.h"

#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    long long tp, ep, pp; /* 0 = default (see mc_layout_make) */
    bool given;           /* any of them was given */
    bool stats;
    bool weights_given;   /* --weights: quantize / re-store the weights at load time */
    mc_dtype weights;
    const char *shards;   /* --shards DIR: a shard set, used instead of --model */
    bool no_verify;       /* --no-verify: skip the shard set's load-time checksum check */
    const char *device;   /* --device cpu|cuda (MC_DEVICE_OPTIONS); NULL = auto */
    bool resident;        /* --no-mmap: weights used as stored copied into RAM (huge pages) */
    bool bf16_acts;       /* --activations bf16 (mc_kernels_set_bf16_acts) */
    mc_dtype kv_dtype;    /* --kv-cache-dtype f32|bf16 (mc_session_opts.kv_dtype) */
} mc_par_args;

#define MC_PAR_ARGS_INIT                                                                           \
    {0, 0, 0, false, false, false, MC_DT_BF16, NULL, false, NULL, false, false, MC_DT_F32}

enum { MC_OPT_TP = 1000, MC_OPT_EP, MC_OPT_PP, MC_OPT_STATS, MC_OPT_WEIGHTS, MC_OPT_SHARDS,
       MC_OPT_NO_VERIFY, MC_OPT_DEVICE, MC_OPT_NO_MMAP, MC_OPT_ACTS, MC_OPT_KV_DTYPE };

/* --device, separate from MC_PAR_OPTIONS: a command takes it only where it
 * runs the model itself (score, generate, bench, worker) or forwards it to
 * its workers. mc_par_option checks the value; mc_par_device gives what
 * mc_session_opts.device wants. */
#define MC_DEVICE_OPTIONS {"device", required_argument, 0, MC_OPT_DEVICE}

#define MC_DEVICE_USAGE                                                                            \
    "  --device cpu|cuda                 compute backend (default: cuda when this build has\n"    \
    "                                    CUDA and a GPU is visible, else cpu; under mpirun\n"     \
    "                                    each rank takes GPU local-rank mod GPUs)\n"

/* For `serve` and `batch`, which start their workers on this host: --device
 * cuda where this build or host has no GPU is refused before any worker
 * starts (1, the workers' one line printed under cmd's name: each start of
 * the group would refuse it), else 0. */
static inline int mc_par_device_here(const char *cmd, const mc_par_args *a)
{
    mc_err why;
    mc_err_clear(&why);
    if (mc_session_device_usable(a->device, &why) == MC_OK)
        return 0;
    fprintf(stderr, "moecluster %s: %s\n", cmd, why.msg);
    return 1;
}

/* The session's device name for the parsed arguments ("auto" when not given). */
static inline const char *mc_par_device(const mc_par_args *a)
{
    return a->device ? a->device : "auto";
}

/* getopt_long entries (put them before the terminating {0, 0, 0, 0}). */
#define MC_PAR_OPTIONS                                                                             \
    {"tp", required_argument, 0, MC_OPT_TP},                                                       \
        {"tensor-parallel-size", required_argument, 0, MC_OPT_TP},                                 \
        {"ep", required_argument, 0, MC_OPT_EP},                                                   \
        {"expert-parallel-size", required_argument, 0, MC_OPT_EP},                                 \
        {"pp", required_argument, 0, MC_OPT_PP},                                                   \
        {"pipeline-parallel-size", required_argument, 0, MC_OPT_PP},                               \
        {"stats", no_argument, 0, MC_OPT_STATS},                                                   \
        {"weights", required_argument, 0, MC_OPT_WEIGHTS},                                         \
        {"shards", required_argument, 0, MC_OPT_SHARDS},                                           \
        {"no-verify", no_argument, 0, MC_OPT_NO_VERIFY},                                         \
        {"no-mmap", no_argument, 0, MC_OPT_NO_MMAP},                                             \
        {"activations", required_argument, 0, MC_OPT_ACTS},                                     \
        {"kv-cache-dtype", required_argument, 0, MC_OPT_KV_DTYPE}

#define MC_ACTS_USAGE                                                                              \
    "  --activations f32|bf16            on cpu, activations meeting BF16 weights: f32 as\n"      \
    "                                    they are (default; exact f32 products) or rounded\n"    \
    "                                    to bf16 first, as llama.cpp and GPU engines do\n"      \
    "                                    (faster with AVX512-BF16)\n"                          \
    "  --kv-cache-dtype f32|bf16         on cpu, the KV cache's values: f32 (default; exact)\n"   \
    "                                    or bf16 (rounded at the write: half the memory and\n"   \
    "                                    the bytes attention reads; not DeepSeek-V4)\n"

#define MC_PAR_USAGE                                                                               \
    "  --tp, --tensor-parallel-size N    split attention heads, dense FFN and LM head over N\n"   \
    "                                    ranks (default 1)\n"                                      \
    "  --ep, --expert-parallel-size N    split the routed experts over N ranks of a stage\n"       \
    "                                    (default: all ranks of a stage)\n"                        \
    "  --pp, --pipeline-parallel-size N  split the layers into N pipeline stages (default 1)\n"    \
    "  --stats                           print tokens, bytes and compute/communication time\n"    \
    "                                    per layer and rank (stderr)\n"                            \
    "  --weights q8_0|q4_k|bf16          quantize the projections, FFNs, experts and LM head\n"   \
    "                                    at load time (llama.cpp blocks; bf16 copies to RAM)\n"    \
    "  --no-mmap                         without --weights, on cpu: copy the matrices into RAM\n" \
    "                                    on huge pages at load, as stored (default: read in\n"    \
    "                                    place from the file mapping)\n"                           \
    MC_ACTS_USAGE                                                                                  \
    "  --no-verify                       with --shards: skip checking each rank's tensors\n"   \
    "                                    against the manifest's xxh64 checksums at load\n"        \
    "Run under mpirun for more than one rank: mpirun -np 4 moecluster ... --ep 4\n"

/* Handles one getopt result: 0 = consumed, 1 = not a parallel option,
 * -1 = bad value (message printed). */
static inline int mc_par_option(mc_par_args *a, const char *cmd, int c, const char *arg)
{
    switch (c) {
    case MC_OPT_TP:
        a->given = true;
        return mc_arg_int(cmd, "--tp", arg, 1, 1 << 20, &a->tp) ? -1 : 0;
    case MC_OPT_EP:
        a->given = true;
        return mc_arg_int(cmd, "--ep", arg, 1, 1 << 20, &a->ep) ? -1 : 0;
    case MC_OPT_PP:
        a->given = true;
        return mc_arg_int(cmd, "--pp", arg, 1, 1 << 20, &a->pp) ? -1 : 0;
    case MC_OPT_STATS:
        a->stats = true;
        return 0;
    case MC_OPT_WEIGHTS:
        if (mc_weight_format_from_name(arg, &a->weights) != 0) {
            fprintf(stderr, "moecluster %s: --weights: '%s' is not q8_0, q4_k, bf16, f16 or f32\n",
                    cmd, arg);
            return -1;
        }
        a->weights_given = true;
        return 0;
    case MC_OPT_SHARDS: /* a shard set from `moecluster shard`: each rank reads its own folder */
        if (!mc_session_is_shard_set(arg)) {
            fprintf(stderr,
                    "moecluster %s: --shards %s: no manifest.json and plan.json there (make one "
                    "with moecluster shard)\n",
                    cmd, arg);
            return -1;
        }
        a->shards = arg;
        return 0;
    case MC_OPT_DEVICE:
        if (strcmp(arg, "cpu") != 0 && strcmp(arg, "cuda") != 0) {
            fprintf(stderr, "moecluster %s: --device: '%s' is not cpu or cuda\n", cmd, arg);
            return -1;
        }
        a->device = arg;
        return 0;
    case MC_OPT_ACTS: /* mc_session_opts.bf16_acts */
        if (strcmp(arg, "f32") != 0 && strcmp(arg, "bf16") != 0) {
            fprintf(stderr, "moecluster %s: --activations: '%s' is not f32 or bf16\n", cmd, arg);
            return -1;
        }
        a->bf16_acts = strcmp(arg, "bf16") == 0;
        return 0;
    case MC_OPT_KV_DTYPE: /* mc_session_opts.kv_dtype */
        if (strcmp(arg, "f32") != 0 && strcmp(arg, "bf16") != 0) {
            fprintf(stderr, "moecluster %s: --kv-cache-dtype: '%s' is not f32 or bf16\n", cmd, arg);
            return -1;
        }
        a->kv_dtype = strcmp(arg, "bf16") == 0 ? MC_DT_BF16 : MC_DT_F32;
        return 0;
    case MC_OPT_NO_MMAP: /* weights copied into RAM at load (mc_session_opts.resident) */
        a->resident = true;
        return 0;
    case MC_OPT_NO_VERIFY: /* load a shard set without checking it against its manifest */
        a->no_verify = true; /* applied by mc_session_load */
        return 0;
    default:
        return 1;
    }
}

/* Under mpirun every rank parses the same arguments: ranks other than 0
 * send what parsing prints (usage, --help, bad values) to /dev/null, so it
 * appears once. mc_quiet_begin returns what mc_quiet_end needs. */
typedef struct {
    int out, err;
} mc_quiet;

static inline mc_quiet mc_quiet_begin(void)
{
    mc_quiet q = {-1, -1};
    if (mc_comm_launcher_rank() <= 0)
        return q;
    int null = open("/dev/null", O_WRONLY);
    if (null < 0)
        return q;
    fflush(stdout);
    fflush(stderr);
    q.out = dup(1);
    q.err = dup(2);
    dup2(null, 1);
    dup2(null, 2);
    close(null);
    return q;
}

static inline void mc_quiet_end(mc_quiet q)
{
    fflush(stdout);
    fflush(stderr);
    if (q.out >= 0) {
        dup2(q.out, 1);
        close(q.out);
    }
    if (q.err >= 0) {
        dup2(q.err, 2);
        close(q.err);
    }
}

/* Prints a command's error: "moecluster CMD: MSG" in a single process;
 * under mpirun with the rank and host, and only on the rank that holds the
 * message (mc_par_agree leaves the others' empty). */
static inline void mc_cli_report(const char *cmd, const mc_comm *world, const mc_err *err)
{
    if (!world || mc_comm_size(world) <= 1) {
        fprintf(stderr, "moecluster %s: %s\n", cmd, err->msg[0] ? err->msg : "failed");
        return;
    }
    if (err->msg[0])
        fprintf(stderr, "moecluster %s: rank %d (host %s): %s\n", cmd, mc_comm_rank(world),
                mc_comm_host(), err->msg);
}

#endif
