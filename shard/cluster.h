/* cluster.h - a cluster description (YAML, schema in cluster-configs/README.md).
 *
 * Devices are GPUs (backend cuda) or CPU ranks (backend cpu); every device
 * of a cluster is alike. The parallel layout: world = pp * tp * dp ranks, one
 * per device; experts are split over `ep` ranks, which must divide tp * dp
 * (the ranks of one pipeline stage).
 */
#ifndef MC_CLUSTER_H
#define MC_CLUSTER_H

#include "status.h"

#include <stddef.h>

typedef enum { MC_BACKEND_CPU = 0, MC_BACKEND_CUDA } mc_backend_kind;

typedef struct {
    char kind[32];
    double bandwidth_gbs; /* per device, one direction, GB/s (1e9 bytes) */
    double latency_us;
} mc_link;

/* Figures measured on the machine (`measured:` in the YAML; `moecluster
 * bench`, the scaling benchmark). A figure of 0 was not measured: the
 * datasheet one stands. `source` and `date` say where the numbers come
 * from and are printed next to them. */
typedef struct {
    char source[32];             /* e.g. "bench"; "" when there is no measured block */
    char date[11];               /* YYYY-MM-DD */
    double memory_bandwidth_gbs; /* GB/s per device, e.g. bench's achieved_gbps */
    double bf16_tflops, fp8_tflops; /* per device, e.g. bench's fma_peak_gflops / 1000 */
    mc_link intra, inter;        /* bandwidth_gbs 0: not measured (latency then unused) */
} mc_measured;

typedef struct {
    char name[64];
    mc_backend_kind backend;
    int nodes, devices_per_node;
    struct {
        char name[64];
        double memory_gib;                         /* usable memory per device */
        double memory_bandwidth_gbs;               /* GB/s */
        double bf16_tflops, fp8_tflops, int8_tops; /* dense peak per device */
    } device;
    mc_link intra, inter;
    int tp, ep, pp, dp;
    double workspace_gib; /* reserved per device for activations and buffers */
    mc_measured measured; /* all zero without a `measured:` block */
} mc_cluster;

/* Largest cluster config read (bytes). */
#define MC_CLUSTER_MAX_BYTES (1 << 20)

/* Reads the YAML file at `path` (a regular file of at most
 * MC_CLUSTER_MAX_BYTES; a FIFO or a directory is refused at once) and
 * parses it with mc_cluster_parse. */
mc_status mc_cluster_load(const char *path, mc_cluster *out, mc_err *err);
/* Parses a cluster config from memory (`len` bytes, need not be
 * NUL-terminated) and validates it with mc_cluster_check; `name` names it in
 * messages. A document that is empty, not a single mapping, misses a required
 * field or has a count of 0 or less is refused; on failure *out is zeroed. */
mc_status mc_cluster_parse(const char *text, size_t len, const char *name, mc_cluster *out,
                           mc_err *err);
/* Validates a filled description (also used after command-line overrides);
 * `src` names it in messages. */
mc_status mc_cluster_check(const mc_cluster *c, const char *src, mc_err *err);
/* A single CPU rank with `memory_gib` of memory (used when no --cluster is given). */
void mc_cluster_single_cpu(mc_cluster *c, double memory_gib);
int mc_cluster_world(const mc_cluster *c);
/* Whether c carries any measured figure. */
int mc_cluster_has_measured(const mc_cluster *c);
/* *eff = *c with every measured figure in place of the datasheet one (what
 * the planner's speed estimate uses). Nothing to free. */
void mc_cluster_effective(const mc_cluster *c, mc_cluster *eff);

#endif
