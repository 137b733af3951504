/* backend_impl.h - private to kernels/backend*.c: the handles behind
 * mc_backend and mc_buffer, shared by the front end (backend.c) and the op
 * argument checks (backend_ops.c). Backends themselves see only the vtable
 * in backend.h. */
#ifndef MC_BACKEND_IMPL_H
#define MC_BACKEND_IMPL_H

#include "backend.h"

struct mc_backend {
    mc_backend_i iface;
    void *ctx;
    /* the CPU backend the host round trip of ops this (device) backend does
     * not implement runs on (backend_ops_v4.c); made on first use */
    struct mc_backend *host;
    /* between mc_backend_capture_begin and _end; rec: the calls recorded
     * (a backend without graphs of its own), backend_graph.c */
    int capturing;
    struct mc_graph_rec *rec;
    mc_status cap_failed; /* the first call refused while capturing, */
    mc_err cap_why;       /* its message (the capture's end returns it) */
};

/* While capturing: a call that cannot be in a graph fails, and makes the
 * capture fail (backend_graph.c). */
mc_status mc_graph_refuse(mc_backend *be, const char *what, mc_err *err);

struct mc_buffer {
    mc_backend *be;
    void *mem; /* device address (host pointer on the CPU) */
    size_t size;
    int borrowed; /* wrapped host memory: read-only, not freed */
};

/* F32, F16, BF16, F8_E4M3, Q8_0 or Q4_K: a format matmul and embed read. */
int mc_backend_is_weight_dtype(mc_dtype dt);

#endif
