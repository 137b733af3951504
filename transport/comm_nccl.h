/* comm_nccl.h - the NCCL backend of the data plane (comm.h): ranks on GPUs,
 * every buffer in device memory of the rank's GPU.
 *
 * Bootstrap: collective over a host communicator `boot` (the MPI world, or
 * any comm.h communicator of host memory whose ranks are the NCCL ranks;
 * an nccl one is refused): each rank picks its device and checks it, the
 * ranks all-gather (host, boot id, PCI bus id) and refuse together when two
 * share a GPU (NCCL does not allow it) or when any rank has none; rank 0 makes the unique id (ncclGetUniqueId), bcast_id
 * carries it, and every rank joins with ncclCommInitRankConfig on a
 * non-blocking communicator, polling ncclCommGetAsyncError until it is
 * ready or the timeout passes (then ncclCommAbort, MC_ERR_IO naming the
 * rank, its host and what it waited for).
 *
 * Operations (each queued on the communicator's own stream and completed
 * before the call returns, polled with the same timeout and abort):
 *   all_reduce_sum  two ranks: ncclAllReduce (one addition per element: the
 *                   rank-order sum of comm.h, bf16 rounded once); more: an
 *                   all-gather into device scratch, then a kernel adding the
 *                   contributions in rank order 0..n-1 (kernels/cuda/comm_sum.h),
 *                   so every rank gets bitwise the same sums as on MPI
 *   all_gather(_v)  grouped ncclBroadcast, one per rank (in place works)
 *   bcast           ncclBroadcast of bytes
 *   all_to_all_v    grouped ncclSend / ncclRecv; the rank's own region is a
 *                   device-to-device copy
 *   send / recv     ncclSend / ncclRecv (no size check: a recv whose size
 *                   differs from the send's is undefined in NCCL; the
 *                   timeout ends it)
 *   barrier         an all-reduce of one float
 *   split           ncclCommSplit (non-blocking, the same timeout)
 * Any failure aborts the rank's communicator: one that failed before its
 * peers could finish (out of device memory, a bad own-region size) leaves
 * them to their timeout, and its own next operation fails at once.
 * Arguments are checked by comm.c as for every backend; agreement between
 * ranks is not checked (as MPI without MC_COMM_CHECK).
 *
 * Built with MC_CUDA when NCCL is found (MC_HAVE_NCCL); otherwise
 * mc_comm_nccl_create answers MC_ERR_UNSUPPORTED "built without NCCL".
 */
#ifndef MC_COMM_NCCL_H
#define MC_COMM_NCCL_H

#include "comm.h"

/* Default time one NCCL operation (or the bootstrap) may take, in ms. */
#define MC_COMM_NCCL_TIMEOUT_MS 120000

/* Collective over every rank of boot: an NCCL communicator with boot's
 * ranks. device: this rank's CUDA device, or < 0 for the local rank
 * (OMPI_COMM_WORLD_LOCAL_RANK / MPI_LOCALRANKID, else boot's rank) modulo
 * the visible devices. timeout_ms: per operation (<= 0:
 * MC_COMM_NCCL_TIMEOUT_MS). Fails on every rank together when any rank has
 * no GPU or two ranks share one (MC_ERR_UNSUPPORTED naming them); after the
 * id has moved, a rank that fails to join fails alone (its peers time out).
 * *out is freed with mc_comm_free (collective-free: it aborts nothing). */
mc_status mc_comm_nccl_create(mc_comm *boot, int device, int timeout_ms, mc_comm **out,
                              mc_err *err);

/* The CUDA device of an NCCL communicator (-1 for another backend). */
int mc_comm_nccl_device(const mc_comm *c);

#endif
