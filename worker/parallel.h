/* parallel.h - the collectives the layer code calls by name, the
 * communicators of one rank, and the per-layer communication statistics.
 *
 * A rank holds four communicators (all self comms in a single process):
 *   world  every rank (input broadcast, logits to rank 0, agreement, stats)
 *   tp     the tp ranks of its tensor-parallel group (all-reduce, LM-head gather)
 *   ep     the ep ranks sharing one copy of the experts (dispatch / combine)
 *   pp     the ranks at the same place of every stage (activations between stages)
 * The helpers below time every call and count its bytes into the stats row
 * of the layer that made it, so `--stats` can show compute against
 * communication per layer and rank.
 */
#ifndef MC_PARALLEL_H
#define MC_PARALLEL_H

#include "comm.h"
#include "layout.h"
#include "status.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct mc_model;

/* One row of statistics: a layer, or the head / pipeline rows. */
typedef struct {
    uint64_t steps;          /* forward steps that ran this row */
    uint64_t disp_tokens;    /* token-expert pairs this rank dispatched (to any rank) */
    uint64_t disp_remote;    /* ... of them to other ranks */
    uint64_t disp_bytes;     /* dispatch bytes sent to other ranks (counts included) */
    uint64_t expert_tokens;  /* pairs this rank's experts computed */
    uint64_t comb_bytes;     /* combine bytes sent back to other ranks */
    uint64_t ar_bytes;       /* tensor-parallel all-reduce payload */
    uint64_t p2p_bytes;      /* pipeline activations / logits sent */
    double t_total, t_comm;  /* seconds: whole row, inside communication calls */
} mc_stat_row;

/* Stats rows of a model: one per layer, then MC_STAT_HEAD (embedding, final
 * norm, LM head, logits gather) and MC_STAT_PIPE (stage-to-stage sends). */
#define MC_STAT_HEAD(n_layers) (n_layers)
#define MC_STAT_PIPE(n_layers) ((n_layers) + 1)
#define MC_STAT_ROWS(n_layers) ((n_layers) + 2)

double mc_now_s(void);

/* Splits `world` into the tp / ep / pp communicators of layout l (collective
 * over world). On failure every output is NULL. */
mc_status mc_par_comms(mc_comm *world, const mc_layout *l, mc_comm **tp, mc_comm **ep,
                       mc_comm **pp, mc_err *err);

/* The data plane: what carries the collectives of the step executor's
 * tensors (activations between stages, the tp all-reduce, the ep exchange of
 * routed rows). Counts, logits and control stay on the host comms. */
typedef enum {
    MC_PLANE_HOST = 0, /* the backend's memory is host memory: the host comms move it */
    MC_PLANE_STAGED,   /* a device: host copies (download, host comm, upload) */
    MC_PLANE_DIRECT,   /* a device: its addresses passed to the host comms (the CPU
                        * acting as a device; a CUDA-aware MPI would be this) */
    MC_PLANE_NCCL      /* a GPU: NCCL communicators split like tp / ep / pp */
} mc_plane;

/* "host", "staged", "direct", "nccl". */
const char *mc_plane_name(int plane);

/* Collective over m's world, after the model is loaded on every rank:
 * decides m->plane and makes m's dev_* comms. host_memory: the compute
 * backend's (mc_backend_host_memory); cuda_device: its CUDA device, or -1
 * for a backend that is not CUDA. MC_DATA_PLANE picks (the same on every
 * rank, checked):
 *   auto (or unset)  host memory: host; CUDA with tp, ep or pp above 1: nccl,
 *                    or staged with a warning when NCCL refuses the ranks
 *                    (two ranks share a GPU, built without NCCL); another
 *                    device: staged
 *   staged, direct   as named (direct: not on CUDA, whose MPI is not
 *                    CUDA-aware here); host memory stays host
 *   nccl             NCCL or an error (CUDA only)
 * Fails on every rank together (MC_ERR_ARG for a bad or disagreeing value;
 * NCCL's own refusals). */
mc_status mc_par_data_plane(struct mc_model *m, int host_memory, int cuda_device, mc_err *err);
/* Frees what mc_par_data_plane made (NCCL comms); m->plane back to host. */
void mc_par_data_plane_free(struct mc_model *m);

/* Collective over c: succeeds when every rank passed st == MC_OK. Otherwise
 * every rank returns an error; the lowest failing rank keeps its own message
 * (the one to print), the others get status MC_ERR_IO with an empty message
 * (print nothing). */
mc_status mc_par_agree(mc_comm *c, mc_status st, mc_err *err);

/* Collective over c: `bytes` from root's buf to every rank's buf. */
mc_status mc_par_bcast(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err);

/* --- calls made by the layer code, timed into stats row `row` ---------- */

/* Tensor-parallel all-reduce (sum) of buf[count] over m's tp group. */
mc_status mc_tp_all_reduce(struct mc_model *m, int row, float *buf, size_t count, mc_err *err);
/* The same on communicator c (m's tp group on its data plane, m->dev_tp). */
mc_status mc_tp_all_reduce_on(struct mc_model *m, mc_comm *c, int row, float *buf, size_t count,
                              mc_err *err);
/* all_to_all_v over m's ep group, counted as dispatch (is_dispatch) or combine bytes. */
mc_status mc_ep_exchange(struct mc_model *m, int row, bool is_dispatch, const void *send,
                         size_t send_bytes, const size_t *send_counts, const size_t *send_displs,
                         void *recv, size_t recv_bytes, const size_t *recv_counts,
                         const size_t *recv_displs, mc_err *err);
/* The same on communicator c (m's ep group on its data plane, m->dev_ep). */
mc_status mc_ep_exchange_on(struct mc_model *m, mc_comm *c, int row, bool is_dispatch,
                            const void *send, size_t send_bytes, const size_t *send_counts,
                            const size_t *send_displs, void *recv, size_t recv_bytes,
                            const size_t *recv_counts, const size_t *recv_displs, mc_err *err);
/* Point-to-point on communicator c, counted in row `row`. */
mc_status mc_par_send(struct mc_model *m, mc_comm *c, int row, int peer, const void *buf,
                      size_t bytes, mc_err *err);
mc_status mc_par_recv(struct mc_model *m, mc_comm *c, int row, int peer, void *buf, size_t bytes,
                      mc_err *err);

/* --- statistics -------------------------------------------------------- */

/* Starts counting (allocates m's rows); returns MC_ERR_NOMEM on failure. */
mc_status mc_stats_enable(struct mc_model *m, mc_err *err);
/* Collective over m's world: gathers every rank's rows to rank 0, which
 * prints the table (format in docs/parallel.md) to out. */
mc_status mc_stats_report(struct mc_model *m, FILE *out, double wall_s, mc_err *err);

#endif
