/* comm_mpi.h - the MPI backend of the data plane (comm.h) and the world
 * communicator of a process.
 *
 * A process started by mpirun (or another MPI launcher) gets an MPI world;
 * a process started by hand gets the one-rank "self" communicator and never
 * touches MPI, so the single-process engine behaves exactly as without MPI.
 *
 * The MPI backend moves host memory with MPI_BYTE / MPI_FLOAT / MPI_UINT16_T
 * messages:
 *   all_reduce_sum      reduce-scatter (MPI_Alltoallv of 1/size chunks),
 *                       each chunk summed in f32 in rank order 0..size-1 by
 *                       the rank that owns it (bf16: widened, summed, then
 *                       rounded once), then MPI_Allgatherv: every rank gets
 *                       bitwise the same sums, in the order comm.h promises.
 *   all_gather(_v)      MPI_Allgatherv on bytes (MPI_IN_PLACE when in place;
 *                       one MPI_Bcast per rank, in 1 GiB pieces, when a count
 *                       exceeds INT_MAX).
 *   bcast               MPI_Bcast in 1 GiB pieces; bcast_id is comm.c's
 *                       all_gather of (root, len) followed by bcast.
 *   all_to_all_v        MPI_Alltoallv on bytes (pairwise MPI_Sendrecv in
 *                       1 GiB pieces when a count exceeds INT_MAX).
 *   send / recv         MPI_Send / MPI_Recv in 1 GiB pieces; a size that
 *                       differs from the sender's is reported.
 *   split               MPI_Comm_split.
 *   i-forms             the blocking call, completed before the i-call
 *                       returns (comm.c); mc_comm_wait only reports.
 * Every communicator returns MPI errors (MPI_ERRORS_RETURN) instead of
 * aborting; they come back as MC_ERR_IO with the world rank, the host and
 * MPI's own message.
 *
 * Agreement between ranks (same collective, matching counts) is not checked
 * by MPI; set MC_COMM_CHECK=1 to check, with one or two extra small
 * collectives per call, the count and dtype of all_reduce_sum, the root and
 * size of bcast, and every rank's recv_counts against the senders' sizes in
 * all_gather(_v): a disagreement is then MC_ERR_ARG on every rank, before the
 * exchange, and the communicator stays usable. bcast_id always checks.
 *
 * Watchdog (comm_watch.h): with MC_COMM_TIMEOUT=S (seconds, default 600,
 * 0 = off; any other value is refused at init) a rank that has waited S
 * seconds inside one MPI call prints which call, its rank and host and the
 * rank(s) that did not arrive, and exits non-zero, which makes mpirun end
 * the whole job; a rank that exits or crashes is caught by mpirun itself.
 * A rank whose launcher (mpirun) was killed exits within a second. So no
 * rank stays blocked forever.
 */
#ifndef MC_COMM_MPI_H
#define MC_COMM_MPI_H

#include "comm.h"

#include <stdbool.h>

/* Default watchdog timeout in seconds (MC_COMM_TIMEOUT overrides). */
#define MC_COMM_MPI_TIMEOUT_S 600
/* Largest MC_COMM_TIMEOUT accepted, in seconds. */
#define MC_COMM_TIMEOUT_MAX_S 1000000

/* Parses an MC_COMM_TIMEOUT value: the whole string must be seconds as
 * digits with an optional decimal part ("600", "2.5"), 0 (= off) or from
 * 0.001 to MC_COMM_TIMEOUT_MAX_S; no sign, exponent, unit or spaces.
 * Anything else (also "") is MC_ERR_ARG naming the variable and value. */
mc_status mc_comm_timeout_parse(const char *text, double *seconds, mc_err *err);

/* The rank an MPI launcher assigned to this process (from its environment:
 * OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK), or -1 when the process was
 * not started by one. Usable before initialization (e.g. to print usage
 * errors on rank 0 only). */
int mc_comm_launcher_rank(void);

/* How many ranks of the job the launcher started on this host (from
 * OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS or PMIX_LOCAL_SIZE), or -1. */
int mc_comm_launcher_local_size(void);

/* The world communicator of this process: MPI's (after MPI_Init) when a
 * launcher started it, else a one-rank self communicator. Also starts the
 * watchdog under MPI. Fails (MC_ERR_ARG, before MPI_Init) when
 * MC_COMM_TIMEOUT is set to anything mc_comm_timeout_parse refuses, with or
 * without a launcher. Free with mc_comm_world_finalize(). */
mc_status mc_comm_world_init(int *argc, char ***argv, mc_comm **out, mc_err *err);

/* Frees the world communicator and finalizes MPI when it was initialized.
 * Every other communicator must have been freed before. */
void mc_comm_world_finalize(mc_comm *world);

/* Ends the whole job now: MPI_Abort under MPI, exit(code) otherwise. */
void mc_comm_world_abort(mc_comm *world, int code) __attribute__((noreturn));

/* Whether MPI was initialized by mc_comm_world_init. */
bool mc_comm_mpi_active(void);

/* This host's name, for messages. */
const char *mc_comm_host(void);

#endif
