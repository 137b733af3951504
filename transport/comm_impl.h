/* comm_impl.h - private to transport/: the mc_comm vtable that each backend
 * (comm.c: self, comm_local.c: local, later MPI and NCCL) fills in.
 *
 * The public wrappers in comm.c check every argument (NULL pointers, peer
 * ranks, regions inside their buffers, overflow) before calling a backend,
 * so backends may rely on them. comm.c also builds what needs no backend
 * of its own: mc_comm_bcast_id (all_gather of the arguments, then bcast)
 * and the asynchronous forms, which on the CPU backends run the synchronous
 * call at once and keep its result for mc_comm_wait (a GPU backend will add
 * enqueue hooks here).
 */
#ifndef MC_COMM_IMPL_H
#define MC_COMM_IMPL_H

#include "comm.h"

typedef struct {
    const char *name;
    /* dtype: MC_DT_F32 or MC_DT_BF16 (checked) */
    mc_status (*all_reduce_sum)(mc_comm *c, void *buf, size_t count, mc_dtype dtype, mc_err *err);
    /* all_gather is all_gather_v with equal counts */
    mc_status (*all_gather_v)(mc_comm *c, const void *send, size_t send_bytes, void *recv,
                              const size_t *recv_counts, const size_t *recv_displs, mc_err *err);
    mc_status (*bcast)(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err);
    mc_status (*all_to_all_v)(mc_comm *c, const void *send, const size_t *send_counts,
                              const size_t *send_displs, void *recv, const size_t *recv_counts,
                              const size_t *recv_displs, mc_err *err);
    mc_status (*send)(mc_comm *c, int peer, const void *buf, size_t bytes, mc_err *err);
    mc_status (*recv)(mc_comm *c, int peer, void *buf, size_t bytes, mc_err *err);
    mc_status (*barrier)(mc_comm *c, mc_err *err);
    /* optional: a barrier that starts now (*h: the backend's handle) and is
     * completed by barrier_wait; without them mc_comm_ibarrier runs the
     * whole barrier in mc_comm_wait */
    mc_status (*ibarrier)(mc_comm *c, void **h, mc_err *err);
    mc_status (*barrier_wait)(mc_comm *c, void *h, mc_err *err);
    mc_status (*split)(mc_comm *c, int color, int key, mc_comm **out, mc_err *err);
    void (*free)(mc_comm *c); /* frees impl; comm.c frees the mc_comm itself */
} mc_comm_ops;

struct mc_comm {
    const mc_comm_ops *ops;
    int rank;
    int size;
    void *impl; /* backend state, owned by the backend */
};

/* Allocates an mc_comm for a backend (NULL on out of memory). */
mc_comm *mc_comm_new(const mc_comm_ops *ops, int rank, int size, void *impl);

#endif
