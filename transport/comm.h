/* comm.h - the data plane: collectives and point-to-point between ranks.
 *
 * One opaque mc_comm per rank and group, behind a small vtable, so the
 * model code names every collective where it happens and does not care
 * what carries it:
 *   self   one rank, no peers (the single-process engine); collectives are
 *          copies or no-ops.
 *   local  n ranks on n threads of one process, exchanging data through
 *          shared memory (unit tests, simulated clusters).
 *   mpi, nccl  (later) ranks in separate processes / GPUs.
 *
 * Semantics common to every backend:
 *  - Collectives (all_reduce_sum_f32, all_to_all_v, barrier, split) are
 *    called by every rank of the communicator, in the same order.
 *  - send/recv between two ranks match in FIFO order; there are no tags.
 *    The byte count of a recv must equal that of the matching send. A send
 *    may block until the matching recv is posted (it does on local, as on
 *    NCCL), so a ring must order its calls (even ranks send first).
 *    Sending to oneself is refused.
 *  - Send and receive buffers of one call must not overlap.
 *  - Arguments are checked before anything is exchanged (MC_ERR_ARG).
 *    Disagreement between ranks (different collectives, counts that do not
 *    match) and a peer that does not arrive in time fail the call with
 *    MC_ERR_ARG / MC_ERR_IO and a message naming the ranks; after such a
 *    failure the communicator is broken and every later call fails.
 *  - Nothing aborts on input from a peer.
 *
 * Ownership: each mc_comm is freed with mc_comm_free() by the thread or
 * process that uses it; comms created by split are independent of their
 * parent and freed separately (in any order).
 */
#ifndef MC_COMM_H
#define MC_COMM_H

#include <stddef.h>

#include "status.h"

typedef struct mc_comm mc_comm;

/* Largest number of ranks of a local (in-process) communicator. */
#define MC_COMM_LOCAL_MAX_RANKS 256
/* Default time a local rank waits for its peers before it fails the group. */
#define MC_COMM_LOCAL_TIMEOUT_MS 120000

/* split: the color of a rank that wants no sub-communicator (*out = NULL). */
#define MC_COMM_COLOR_NONE (-1)

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

/* In place: buf[i] = sum over ranks of buf[i] (count floats on every rank).
 * The sum is taken in rank order 0, 1, ..., size-1 on every backend that can
 * promise it, so results are bitwise identical on all ranks. */
mc_status mc_comm_all_reduce_sum_f32(mc_comm *c, float *buf, size_t count, mc_err *err);

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

/* Point-to-point, FIFO per (sender, receiver) pair; see the notes above. */
mc_status mc_comm_send(mc_comm *c, int peer, const void *buf, size_t bytes, mc_err *err);
mc_status mc_comm_recv(mc_comm *c, int peer, void *buf, size_t bytes, mc_err *err);

mc_status mc_comm_barrier(mc_comm *c, mc_err *err);

/* Collective: ranks with the same color (>= 0) form a new communicator,
 * ranked by (key, old rank). A rank with color MC_COMM_COLOR_NONE gets
 * *out = NULL. The new comm is freed with mc_comm_free(). */
mc_status mc_comm_split(mc_comm *c, int color, int key, mc_comm **out, mc_err *err);

/* Frees this rank's communicator; NULL is fine. Not a collective. */
void mc_comm_free(mc_comm *c);

#endif
