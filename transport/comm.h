/* comm.h - the data plane: collectives and point-to-point between ranks.
 *
 * One opaque mc_comm per rank and group, behind a small vtable, so the
 * model code names every collective where it happens and does not care
 * what carries it:
 *   self   one rank, no peers (the single-process engine); collectives are
 *          copies or no-ops.
 *   local  n ranks on n threads of one process, exchanging data through
 *          shared memory (unit tests, simulated clusters).
 *   mpi    ranks in separate processes (comm_mpi.h), host memory.
 *   nccl   (later) ranks on GPUs, bootstrapped through the world with
 *          mc_comm_bcast_id.
 *
 * Semantics common to every backend:
 *  - Collectives (all_reduce_sum, all_gather(_v), bcast, bcast_id,
 *    all_to_all_v, barrier, split) are called by every rank of the
 *    communicator, in the same order.
 *  - all_reduce_sum adds in rank order 0, 1, ..., size-1, so every rank gets
 *    bitwise the same result, on every backend: f32 in f32; bf16 is widened
 *    to f32, added in f32 in rank order, and rounded once (to nearest even)
 *    to bf16 at the end. bf16 results therefore do not depend on how the
 *    backend splits the work, and equal the f32 sum of the widened inputs
 *    rounded once.
 *  - send/recv between two ranks match in FIFO order; there are no tags.
 *    The byte count of a recv must equal that of the matching send. A send
 *    may block until the matching recv is posted (it does on local, as on
 *    NCCL), so a ring must order its calls (even ranks send first).
 *    Sending to oneself is refused.
 *  - Send and receive buffers of one call must not overlap (all_gather may
 *    run in place, see there).
 *  - Arguments are checked before anything is exchanged (MC_ERR_ARG naming
 *    the argument, MC_ERR_OVERFLOW for sizes that do not fit).
 *    Disagreement between ranks (different collectives, counts, dtypes,
 *    roots or lengths that do not match) and a peer that does not arrive in
 *    time fail the call with MC_ERR_ARG / MC_ERR_IO and a message naming the
 *    ranks. After such a failure a local communicator is broken and every
 *    later call fails. MPI checks agreement only with MC_COMM_CHECK=1 (the
 *    communicator then stays usable), and a peer that does not arrive ends
 *    the job through its watchdog (comm_mpi.h). bcast_id always checks, on
 *    every backend, and leaves the communicator usable.
 *  - Asynchronous forms (mc_comm_i*) start an operation and return a
 *    request; mc_comm_wait completes it and frees it. Until wait returns,
 *    the operation's buffers (and count/displacement arrays) must be neither
 *    read nor written nor freed. Every request is waited for exactly once;
 *    other calls may come between an i-call and its wait (issued in the
 *    same order on every rank, like every collective). A `stream` names the
 *    device stream the operation is ordered on (GPU backends; NULL: the
 *    default); the CPU backends ignore it and complete the operation before
 *    the i-call returns, so wait only reports.
 *  - Nothing aborts on input from a peer.
 *
 * Ownership: each mc_comm is freed with mc_comm_free() by the thread or
 * process that uses it; comms created by split are independent of their
 * parent and freed separately (in any order). Requests are freed by
 * mc_comm_wait().
 */
#ifndef MC_COMM_H
#define MC_COMM_H

#include <stddef.h>

#include "dtype.h"
#include "status.h"

typedef struct mc_comm mc_comm;
/* An operation started by an mc_comm_i* call; freed by mc_comm_wait(). */
typedef struct mc_comm_req mc_comm_req;
/* A device stream (e.g. a cudaStream_t behind the NCCL backend); never
 * dereferenced by the CPU backends. */
typedef struct mc_comm_stream mc_comm_stream;

/* Largest number of ranks of a local (in-process) communicator. */
#define MC_COMM_LOCAL_MAX_RANKS 256
/* Default time a local rank waits for its peers before it fails the group. */
#define MC_COMM_LOCAL_TIMEOUT_MS 120000

/* split: the color of a rank that wants no sub-communicator (*out = NULL). */
#define MC_COMM_COLOR_NONE (-1)

/* Largest id mc_comm_bcast_id carries, in bytes (NCCL's unique id is 128). */
#define MC_COMM_ID_MAX 1024

/* A size-1 communicator. Returns MC_ERR_ARG or MC_ERR_NOMEM on failure. */
mc_status mc_comm_self_create(mc_comm **out);

/* n in-process communicators, comms[0..n-1] with ranks 0..n-1, one per
 * thread. Each is freed separately with mc_comm_free(). On failure comms[]
 * is all NULL. */
mc_status mc_comm_local_create(int n, mc_comm **comms);

/* Local comms only: sets how long every rank of c's group waits for its
 * peers (ms > 0; 0 = forever) before failing the group with MC_ERR_IO.
 * Call before the threads start. Returns MC_ERR_ARG on other backends. */
mc_status mc_comm_local_set_timeout(mc_comm *c, int ms);

int mc_comm_rank(const mc_comm *c);
int mc_comm_size(const mc_comm *c);
/* "self", "local", ... for logs. */
const char *mc_comm_backend(const mc_comm *c);

/* In place: buf[i] = sum over ranks of buf[i], count elements of dtype
 * MC_DT_F32 (float) or MC_DT_BF16 (uint16_t bits) on every rank, added in
 * rank order as described above. Other dtypes are MC_ERR_ARG. */
mc_status mc_comm_all_reduce_sum(mc_comm *c, void *buf, size_t count, mc_dtype dtype, mc_err *err);
/* = mc_comm_all_reduce_sum(c, buf, count, MC_DT_F32, err). */
mc_status mc_comm_all_reduce_sum_f32(mc_comm *c, float *buf, size_t count, mc_err *err);

/* Every rank contributes `bytes` bytes (the same on every rank); recv
 * (size * bytes) receives rank p's bytes at recv + p * bytes. In place when
 * send == recv + rank * bytes. */
mc_status mc_comm_all_gather(mc_comm *c, const void *send, size_t bytes, void *recv, mc_err *err);

/* Rank p contributes send_bytes_p bytes, which land at recv +
 * recv_displs[p] on every rank; recv_counts[p] must equal rank p's
 * send_bytes. Arrays have mc_comm_size() entries, recv_bytes is the size of
 * recv and every region must lie inside it. In place when send == recv +
 * recv_displs[rank]. */
mc_status mc_comm_all_gather_v(mc_comm *c, const void *send, size_t send_bytes, void *recv,
                               size_t recv_bytes, const size_t *recv_counts,
                               const size_t *recv_displs, mc_err *err);

/* buf (bytes) on every rank = buf on rank root; root and bytes are the same
 * on every rank. */
mc_status mc_comm_bcast(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err);

/* Bootstrap of a second communicator (e.g. NCCL's unique id): id (len
 * bytes, 1..MC_COMM_ID_MAX) on every rank = id on rank root. Always checks
 * that every rank passed the same root and len, and refuses otherwise
 * (MC_ERR_ARG naming the ranks) on every rank, before the id moves; the
 * communicator stays usable after such a refusal. */
mc_status mc_comm_bcast_id(mc_comm *c, int root, void *id, size_t len, mc_err *err);

/* Every rank sends send_counts[p] bytes starting at send + send_displs[p] to
 * rank p, and receives recv_counts[p] bytes from rank p at recv +
 * recv_displs[p]. Arrays have mc_comm_size() entries; send_bytes and
 * recv_bytes are the sizes of the two buffers, and every region must lie
 * inside its buffer. send_counts[q] on rank p must equal recv_counts[p] on
 * rank q. Counts may be zero; buffers may be NULL when their size is 0. */
mc_status mc_comm_all_to_all_v(mc_comm *c, const void *send, size_t send_bytes,
                               const size_t *send_counts, const size_t *send_displs, void *recv,
                               size_t recv_bytes, const size_t *recv_counts,
                               const size_t *recv_displs, mc_err *err);

/* Asynchronous forms of the collectives above (same arguments, same
 * checks), see the notes on requests above. On success *req is the request
 * to pass to mc_comm_wait(); an argument error (or no memory for the
 * request) returns the error at once with *req = NULL. A failure of the
 * exchange itself may be reported by the i-call or by mc_comm_wait. */
mc_status mc_comm_iall_reduce_sum(mc_comm *c, void *buf, size_t count, mc_dtype dtype,
                                  mc_comm_stream *stream, mc_comm_req **req, mc_err *err);
mc_status mc_comm_iall_gather(mc_comm *c, const void *send, size_t bytes, void *recv,
                              mc_comm_stream *stream, mc_comm_req **req, mc_err *err);
mc_status mc_comm_ibcast(mc_comm *c, int root, void *buf, size_t bytes, mc_comm_stream *stream,
                         mc_comm_req **req, mc_err *err);
mc_status mc_comm_iall_to_all_v(mc_comm *c, const void *send, size_t send_bytes,
                                const size_t *send_counts, const size_t *send_displs, void *recv,
                                size_t recv_bytes, const size_t *recv_counts,
                                const size_t *recv_displs, mc_comm_stream *stream,
                                mc_comm_req **req, mc_err *err);
/* A barrier in two halves: this rank arrives now, and mc_comm_wait(req)
 * returns once every rank has arrived, so the caller can compute in
 * between (MPI: MPI_Ibarrier, then MPI_Wait under the watchdog; the other
 * backends run the whole barrier in mc_comm_wait). */
mc_status mc_comm_ibarrier(mc_comm *c, mc_comm_req **req, mc_err *err);

/* Completes req (blocks until its buffers may be used again), frees it and
 * returns the operation's status. NULL is MC_ERR_ARG. */
mc_status mc_comm_wait(mc_comm_req *req, mc_err *err);

/* Point-to-point, FIFO per (sender, receiver) pair; see the notes above. */
mc_status mc_comm_send(mc_comm *c, int peer, const void *buf, size_t bytes, mc_err *err);
mc_status mc_comm_recv(mc_comm *c, int peer, void *buf, size_t bytes, mc_err *err);

mc_status mc_comm_barrier(mc_comm *c, mc_err *err);

/* Collective: ranks with the same color (>= 0) form a new communicator,
 * ranked by (key, old rank). A rank with color MC_COMM_COLOR_NONE gets
 * *out = NULL. The new comm is freed with mc_comm_free(). */
mc_status mc_comm_split(mc_comm *c, int color, int key, mc_comm **out, mc_err *err);

/* Host memory shared by the ranks of c when they all run on one host (the
 * same host name and kernel boot): every rank asks for `bytes` (the same
 * on every rank), and every rank can read and write every rank's segment
 * (mc_comm_shm_seg; page-aligned, zeroed at first). Collective; every rank
 * gets the same status: MC_ERR_UNSUPPORTED when the ranks span hosts or c
 * moves device memory (nccl), MC_ERR_IO when the memory cannot be made
 * (e.g. /dev/shm too small; the message says which call failed).
 * Ordering between ranks is the caller's: write, then a collective (e.g.
 * mc_comm_barrier) before another rank reads. */
typedef struct mc_comm_shm mc_comm_shm;
mc_status mc_comm_shm_alloc(mc_comm *c, size_t bytes, mc_comm_shm **out, mc_err *err);
/* Rank r's segment in this process (NULL for a bad rank). */
void *mc_comm_shm_seg(const mc_comm_shm *s, int rank);
/* Unmaps this rank's view; NULL is fine. Not a collective. */
void mc_comm_shm_free(mc_comm_shm *s);

/* Frees this rank's communicator; NULL is fine. Not a collective. */
void mc_comm_free(mc_comm *c);

#endif
