/* cluster.c - YAML cluster configs via libcyaml, with the path of any
 * offending field in the error. */
#include "cluster.h"

#include <cyaml/cyaml.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    char *kind;
    double bandwidth_gbs, latency_us;
} y_link;

typedef struct {
    double bf16, fp8, int8;
} y_tflops;

typedef struct {
    char *name;
    double memory_gib, memory_bandwidth_gbs;
    y_tflops tflops;
} y_device;

typedef struct {
    y_link intra_node, inter_node;
} y_links;

typedef struct {
    int tp, ep, pp, dp;
} y_parallel;

typedef struct {
    char *name;
    int backend;
    int nodes, devices_per_node;
    y_device device;
    y_links links;
    y_parallel parallel;
    double workspace_gib;
} y_cluster;

static const cyaml_strval_t backend_strings[] = {
    {"cpu", MC_BACKEND_CPU},
    {"cuda", MC_BACKEND_CUDA},
};

static const cyaml_schema_field_t link_fields[] = {
    CYAML_FIELD_STRING_PTR("kind", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, y_link, kind, 0, 31),
    CYAML_FIELD_FLOAT("bandwidth_gbs", CYAML_FLAG_DEFAULT, y_link, bandwidth_gbs),
    CYAML_FIELD_FLOAT("latency_us", CYAML_FLAG_OPTIONAL, y_link, latency_us),
    CYAML_FIELD_END};

static const cyaml_schema_field_t tflops_fields[] = {
    CYAML_FIELD_FLOAT("bf16", CYAML_FLAG_DEFAULT, y_tflops, bf16),
    CYAML_FIELD_FLOAT("fp8", CYAML_FLAG_OPTIONAL, y_tflops, fp8),
    CYAML_FIELD_FLOAT("int8", CYAML_FLAG_OPTIONAL, y_tflops, int8),
    CYAML_FIELD_END};

static const cyaml_schema_field_t device_fields[] = {
    CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, y_device, name, 0, 63),
    CYAML_FIELD_FLOAT("memory_gib", CYAML_FLAG_DEFAULT, y_device, memory_gib),
    CYAML_FIELD_FLOAT("memory_bandwidth_gbs", CYAML_FLAG_DEFAULT, y_device, memory_bandwidth_gbs),
    CYAML_FIELD_MAPPING("tflops", CYAML_FLAG_DEFAULT, y_device, tflops, tflops_fields),
    CYAML_FIELD_END};

static const cyaml_schema_field_t links_fields[] = {
    CYAML_FIELD_MAPPING("intra_node", CYAML_FLAG_DEFAULT, y_links, intra_node, link_fields),
    CYAML_FIELD_MAPPING("inter_node", CYAML_FLAG_OPTIONAL, y_links, inter_node, link_fields),
    CYAML_FIELD_END};

static const cyaml_schema_field_t parallel_fields[] = {
    CYAML_FIELD_INT("tp", CYAML_FLAG_OPTIONAL, y_parallel, tp),
    CYAML_FIELD_INT("ep", CYAML_FLAG_OPTIONAL, y_parallel, ep),
    CYAML_FIELD_INT("pp", CYAML_FLAG_OPTIONAL, y_parallel, pp),
    CYAML_FIELD_INT("dp", CYAML_FLAG_OPTIONAL, y_parallel, dp),
    CYAML_FIELD_END};

static const cyaml_schema_field_t cluster_fields[] = {
    CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, y_cluster, name, 0, 63),
    CYAML_FIELD_ENUM("backend", CYAML_FLAG_DEFAULT, y_cluster, backend, backend_strings,
                     CYAML_ARRAY_LEN(backend_strings)),
    CYAML_FIELD_INT("nodes", CYAML_FLAG_DEFAULT, y_cluster, nodes),
    CYAML_FIELD_INT("devices_per_node", CYAML_FLAG_DEFAULT, y_cluster, devices_per_node),
    CYAML_FIELD_MAPPING("device", CYAML_FLAG_DEFAULT, y_cluster, device, device_fields),
    CYAML_FIELD_MAPPING("links", CYAML_FLAG_DEFAULT, y_cluster, links, links_fields),
    CYAML_FIELD_MAPPING("parallel", CYAML_FLAG_OPTIONAL, y_cluster, parallel, parallel_fields),
    CYAML_FIELD_FLOAT("workspace_gib", CYAML_FLAG_OPTIONAL, y_cluster, workspace_gib),
    CYAML_FIELD_END};

static const cyaml_schema_value_t cluster_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, y_cluster, cluster_fields),
};

/* Collects libcyaml's error and its backtrace ("in mapping field 'x'"
 * lines, innermost first) into "a.b.c: message (line L, column C)". */
typedef struct {
    char msg[512];
    char fields[8][64];
    int nfields;
    char where[64];
} ylog;

static void ylog_fn(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
    ylog *l = ctx;
    if (level < CYAML_LOG_ERROR)
        return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, args);
    line[strcspn(line, "\n")] = '\0';
    const char *p = line;
    if (!strncmp(p, "Load: ", 6))
        p += 6;
    const char *f = strstr(p, "in mapping field '");
    if (f) {
        f += strlen("in mapping field '");
        const char *e = strchr(f, '\'');
        if (e && l->nfields < 8) {
            snprintf(l->fields[l->nfields], sizeof l->fields[0], "%.*s", (int)(e - f), f);
            if (!l->where[0] && strstr(e, "(line"))
                snprintf(l->where, sizeof l->where, "%s", strstr(e, "(line"));
            l->nfields++;
        }
    } else if (strstr(p, "in mapping") || strstr(p, "in sequence")) {
        if (!l->where[0] && strstr(p, "(line"))
            snprintf(l->where, sizeof l->where, "%s", strstr(p, "(line"));
    } else if (strncmp(p, "Backtrace", 9) && !l->msg[0]) {
        snprintf(l->msg, sizeof l->msg, "%s", p);
    }
}

void mc_cluster_single_cpu(mc_cluster *c, double memory_gib)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "single-cpu");
    c->backend = MC_BACKEND_CPU;
    c->nodes = c->devices_per_node = 1;
    snprintf(c->device.name, sizeof c->device.name, "cpu");
    c->device.memory_gib = memory_gib;
    c->device.memory_bandwidth_gbs = 20;
    c->device.bf16_tflops = 0.1;
    snprintf(c->intra.kind, sizeof c->intra.kind, "shm");
    c->intra.bandwidth_gbs = 10;
    c->intra.latency_us = 1;
    c->inter = c->intra;
    c->tp = c->ep = c->pp = c->dp = 1;
    c->workspace_gib = 0.5;
}

int mc_cluster_world(const mc_cluster *c) { return c->nodes * c->devices_per_node; }

mc_status mc_cluster_check(const mc_cluster *c, const char *src, mc_err *err)
{
#define BAD(path, ...)                                                                             \
    return mc_err_set(err, MC_ERR_CONFIG, "%s: %s: " path, src, #path, __VA_ARGS__)
    if (c->nodes < 1 || c->nodes > 100000)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: nodes: %d is outside [1, 100000]", src, c->nodes);
    if (c->devices_per_node < 1 || c->devices_per_node > 1024)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: devices_per_node: %d is outside [1, 1024]", src,
                          c->devices_per_node);
    if (!(c->device.memory_gib > 0 && c->device.memory_gib < 1e6))
        return mc_err_set(err, MC_ERR_CONFIG, "%s: device.memory_gib: must be positive", src);
    if (!(c->device.memory_bandwidth_gbs > 0 && c->device.memory_bandwidth_gbs < 1e6))
        return mc_err_set(err, MC_ERR_CONFIG, "%s: device.memory_bandwidth_gbs: must be positive",
                          src);
    if (!(c->device.bf16_tflops > 0 && c->device.bf16_tflops < 1e6))
        return mc_err_set(err, MC_ERR_CONFIG, "%s: device.tflops.bf16: must be positive", src);
    if (c->device.fp8_tflops < 0 || c->device.int8_tops < 0)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: device.tflops: values must not be negative", src);
    if (!(c->intra.bandwidth_gbs > 0) || c->intra.latency_us < 0)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: links.intra_node: bandwidth must be positive, latency >= 0", src);
    if (c->nodes > 1 && (!(c->inter.bandwidth_gbs > 0) || c->inter.latency_us < 0))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: links.inter_node: needed with %d nodes (bandwidth must be positive)",
                          src, c->nodes);
    if (c->tp < 1 || c->pp < 1 || c->dp < 1 || c->ep < 1)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: parallel: tp, ep, pp and dp must be >= 1", src);
    int world = mc_cluster_world(c);
    if ((long long)c->tp * c->pp * c->dp != world)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: parallel: tp*pp*dp = %d*%d*%d = %lld but the cluster has %d devices "
                          "(nodes*devices_per_node)",
                          src, c->tp, c->pp, c->dp, (long long)c->tp * c->pp * c->dp, world);
    if ((c->tp * c->dp) % c->ep != 0)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: parallel.ep: %d does not divide tp*dp = %d (the ranks of one "
                          "pipeline stage)",
                          src, c->ep, c->tp * c->dp);
    if (c->workspace_gib < 0 || c->workspace_gib >= c->device.memory_gib)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: workspace_gib: %.2f must be in [0, memory_gib)",
                          src, c->workspace_gib);
#undef BAD
    return MC_OK;
}

mc_status mc_cluster_load(const char *path, mc_cluster *out, mc_err *err)
{
    ylog lg;
    memset(&lg, 0, sizeof lg);
    cyaml_config_t cfg = {
        .log_fn = ylog_fn,
        .log_ctx = &lg,
        .mem_fn = cyaml_mem,
        .log_level = CYAML_LOG_ERROR,
        .flags = CYAML_CFG_NO_ALIAS,
    };
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return mc_err_set(err, MC_ERR_IO, "%s: cannot open cluster config", path);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fclose(fp);
    if (size < 0 || size > (1 << 20))
        return mc_err_set(err, MC_ERR_CONFIG, "%s: cluster config larger than 1 MiB", path);
    y_cluster *y = NULL;
    cyaml_err_t e = cyaml_load_file(path, &cfg, &cluster_schema, (cyaml_data_t **)&y, NULL);
    if (e != CYAML_OK) {
        char fp2[512] = "";
        size_t o = 0;
        const char *mk = strstr(lg.msg, "Missing required mapping field: ");
        /* a missing field is reported after its last sibling was read: drop that one */
        int innermost = mk ? 1 : 0;
        for (int i = lg.nfields - 1; i >= innermost && o < sizeof fp2; i--)
            o += (size_t)snprintf(fp2 + o, sizeof fp2 - o, "%s%s", o ? "." : "", lg.fields[i]);
        /* an unexpected key names itself: "Unexpected key: foo" */
        const char *uk = strstr(lg.msg, "Unexpected key: ");
        if (uk && o < sizeof fp2)
            snprintf(fp2 + o, sizeof fp2 - o, "%s%s", o ? "." : "", uk + 16);
        if (mk)
            return mc_err_set(err, MC_ERR_CONFIG, "%s: %s%s%s: missing required field", path, fp2,
                              fp2[0] ? "." : "", mk + 32);
        return mc_err_set(err, MC_ERR_CONFIG, "%s: %s%s%s %s", path, fp2[0] ? fp2 : "(top level)",
                          ": ", lg.msg[0] ? lg.msg : cyaml_strerror(e), lg.where);
    }
    mc_cluster *c = out;
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", y->name ? y->name : "cluster");
    c->backend = (mc_backend_kind)y->backend;
    c->nodes = y->nodes;
    c->devices_per_node = y->devices_per_node;
    snprintf(c->device.name, sizeof c->device.name, "%s", y->device.name ? y->device.name : "device");
    c->device.memory_gib = y->device.memory_gib;
    c->device.memory_bandwidth_gbs = y->device.memory_bandwidth_gbs;
    c->device.bf16_tflops = y->device.tflops.bf16;
    c->device.fp8_tflops = y->device.tflops.fp8;
    c->device.int8_tops = y->device.tflops.int8;
    snprintf(c->intra.kind, sizeof c->intra.kind, "%s",
             y->links.intra_node.kind ? y->links.intra_node.kind : "intra");
    c->intra.bandwidth_gbs = y->links.intra_node.bandwidth_gbs;
    c->intra.latency_us = y->links.intra_node.latency_us;
    snprintf(c->inter.kind, sizeof c->inter.kind, "%s",
             y->links.inter_node.kind ? y->links.inter_node.kind : "none");
    c->inter.bandwidth_gbs = y->links.inter_node.bandwidth_gbs;
    c->inter.latency_us = y->links.inter_node.latency_us;
    c->tp = y->parallel.tp ? y->parallel.tp : 1;
    c->pp = y->parallel.pp ? y->parallel.pp : 1;
    c->dp = y->parallel.dp ? y->parallel.dp : 1;
    c->ep = y->parallel.ep ? y->parallel.ep : c->tp * c->dp;
    c->workspace_gib = y->workspace_gib;
    if (!y->parallel.tp && !y->parallel.pp && !y->parallel.dp) {
        /* no layout given: TP inside a node, PP across nodes */
        c->tp = c->devices_per_node;
        c->pp = c->nodes;
        c->dp = 1;
        if (!y->parallel.ep)
            c->ep = c->tp;
    }
    cyaml_free(&cfg, &cluster_schema, y, 0);
    return mc_cluster_check(c, path, err);
}
