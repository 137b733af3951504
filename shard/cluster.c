/* cluster.c - YAML cluster configs via libcyaml, with the path of any
 * offending field in the error. */
#include "cluster.h"

#include "fileio.h"

#include <cyaml/cyaml.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* Numbers are read as text and converted here: libcyaml 1.3 takes the
 * leading digits of "2.9" or "8abc" as an integer and "0.5x" as a float.
 * An absent optional field is NULL, so that "tp: 0" is not "no tp". */
typedef char *y_num;

typedef struct {
    char *kind;
    y_num bandwidth_gbs, latency_us;
} y_link;

typedef struct {
    y_num bf16, fp8, int8;
} y_tflops;

typedef struct {
    char *name;
    y_num memory_gib, memory_bandwidth_gbs;
    y_tflops tflops;
} y_device;

typedef struct {
    y_link intra_node, inter_node;
} y_links;

typedef struct {
    y_num tp, ep, pp, dp;
} y_parallel;

typedef struct {
    char *source, *date;
    y_num memory_bandwidth_gbs;
    y_tflops tflops;
    y_links links;
} y_measured;

typedef struct {
    char *name;
    int backend;
    y_num nodes, devices_per_node;
    y_device device;
    y_links links;
    y_parallel parallel;
    y_num workspace_gib;
    y_measured measured;
} y_cluster;

static const cyaml_strval_t backend_strings[] = {
    {"cpu", MC_BACKEND_CPU},
    {"cuda", MC_BACKEND_CUDA},
};

#define Y_STR(key, flags, st, member, max)                                                         \
    CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_POINTER | (flags), st, member, 0, max)
#define Y_NUM(key, flags, st, member) Y_STR(key, flags, st, member, 64)

static const cyaml_schema_field_t link_fields[] = {
    Y_STR("kind", CYAML_FLAG_OPTIONAL, y_link, kind, 31),
    Y_NUM("bandwidth_gbs", CYAML_FLAG_DEFAULT, y_link, bandwidth_gbs),
    Y_NUM("latency_us", CYAML_FLAG_OPTIONAL, y_link, latency_us),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t tflops_fields[] = {
    Y_NUM("bf16", CYAML_FLAG_DEFAULT, y_tflops, bf16),
    Y_NUM("fp8", CYAML_FLAG_OPTIONAL, y_tflops, fp8),
    Y_NUM("int8", CYAML_FLAG_OPTIONAL, y_tflops, int8),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t device_fields[] = {
    Y_STR("name", CYAML_FLAG_OPTIONAL, y_device, name, 63),
    Y_NUM("memory_gib", CYAML_FLAG_DEFAULT, y_device, memory_gib),
    Y_NUM("memory_bandwidth_gbs", CYAML_FLAG_DEFAULT, y_device, memory_bandwidth_gbs),
    CYAML_FIELD_MAPPING("tflops", CYAML_FLAG_DEFAULT, y_device, tflops, tflops_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t links_fields[] = {
    CYAML_FIELD_MAPPING("intra_node", CYAML_FLAG_DEFAULT, y_links, intra_node, link_fields),
    CYAML_FIELD_MAPPING("inter_node", CYAML_FLAG_OPTIONAL, y_links, inter_node, link_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t parallel_fields[] = {
    Y_NUM("tp", CYAML_FLAG_OPTIONAL, y_parallel, tp),
    Y_NUM("ep", CYAML_FLAG_OPTIONAL, y_parallel, ep),
    Y_NUM("pp", CYAML_FLAG_OPTIONAL, y_parallel, pp),
    Y_NUM("dp", CYAML_FLAG_OPTIONAL, y_parallel, dp),
    CYAML_FIELD_END,
};

/* measured: every figure optional (at least one is checked for later) */
static const cyaml_schema_field_t m_tflops_fields[] = {
    Y_NUM("bf16", CYAML_FLAG_OPTIONAL, y_tflops, bf16),
    Y_NUM("fp8", CYAML_FLAG_OPTIONAL, y_tflops, fp8),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t m_links_fields[] = {
    CYAML_FIELD_MAPPING("intra_node", CYAML_FLAG_OPTIONAL, y_links, intra_node, link_fields),
    CYAML_FIELD_MAPPING("inter_node", CYAML_FLAG_OPTIONAL, y_links, inter_node, link_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t measured_fields[] = {
    Y_STR("source", CYAML_FLAG_DEFAULT, y_measured, source, 31),
    Y_STR("date", CYAML_FLAG_DEFAULT, y_measured, date, 10),
    Y_NUM("memory_bandwidth_gbs", CYAML_FLAG_OPTIONAL, y_measured, memory_bandwidth_gbs),
    CYAML_FIELD_MAPPING("tflops", CYAML_FLAG_OPTIONAL, y_measured, tflops, m_tflops_fields),
    CYAML_FIELD_MAPPING("links", CYAML_FLAG_OPTIONAL, y_measured, links, m_links_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t cluster_fields[] = {
    Y_STR("name", CYAML_FLAG_OPTIONAL, y_cluster, name, 63),
    /* strict: only the names, not a number in their place */
    CYAML_FIELD_ENUM("backend", CYAML_FLAG_STRICT, y_cluster, backend, backend_strings,
                     CYAML_ARRAY_LEN(backend_strings)),
    Y_NUM("nodes", CYAML_FLAG_DEFAULT, y_cluster, nodes),
    Y_NUM("devices_per_node", CYAML_FLAG_DEFAULT, y_cluster, devices_per_node),
    CYAML_FIELD_MAPPING("device", CYAML_FLAG_DEFAULT, y_cluster, device, device_fields),
    CYAML_FIELD_MAPPING("links", CYAML_FLAG_DEFAULT, y_cluster, links, links_fields),
    CYAML_FIELD_MAPPING("parallel", CYAML_FLAG_OPTIONAL, y_cluster, parallel, parallel_fields),
    Y_NUM("workspace_gib", CYAML_FLAG_OPTIONAL, y_cluster, workspace_gib),
    CYAML_FIELD_MAPPING("measured", CYAML_FLAG_OPTIONAL, y_cluster, measured, measured_fields),
    CYAML_FIELD_END,
};

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
    for (char *q = line; *q; q++) /* values quoted into the message stay on one line */
        if ((unsigned char)*q < 0x20 || *q == 0x7f)
            *q = '?';
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
        /* numbers are read as strings (see y_num): say what is meant */
        if (!strncmp(p, "Expecting STRING, got event: ", 29))
            snprintf(l->msg, sizeof l->msg, "expected a number or a name, got %s%s",
                     strstr(p, "SEQUENCE")  ? "a sequence"
                     : strstr(p, "MAPPING") ? "a mapping"
                                            : "",
                     strstr(p, "(line") ? strstr(p, " (line") : "");
        else
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

int mc_cluster_has_measured(const mc_cluster *c) { return c->measured.source[0] != '\0'; }

/* A measured link replaces the datasheet one; an unmeasured latency (< 0)
 * keeps the datasheet latency. */
static void effective_link(const mc_link *m, mc_link *l)
{
    if (!(m->bandwidth_gbs > 0))
        return;
    l->bandwidth_gbs = m->bandwidth_gbs;
    if (m->latency_us >= 0)
        l->latency_us = m->latency_us;
}

void mc_cluster_effective(const mc_cluster *c, mc_cluster *eff)
{
    *eff = *c;
    const mc_measured *m = &c->measured;
    if (!mc_cluster_has_measured(c))
        return;
    if (m->memory_bandwidth_gbs > 0)
        eff->device.memory_bandwidth_gbs = m->memory_bandwidth_gbs;
    if (m->bf16_tflops > 0)
        eff->device.bf16_tflops = m->bf16_tflops;
    if (m->fp8_tflops > 0)
        eff->device.fp8_tflops = m->fp8_tflops;
    effective_link(&m->intra, &eff->intra);
    effective_link(&m->inter, &eff->inter);
}

/* A number field: finite and in [lo, hi) (lo itself allowed when lo_ok). */
static mc_status num_field(double v, double lo, int lo_ok, double hi, const char *src,
                           const char *field, mc_err *err)
{
    if (isfinite(v) && (v > lo || (lo_ok && v == lo)) && v < hi)
        return MC_OK;
    return mc_err_set(err, MC_ERR_CONFIG, "%s: %s: %g must be %s %g and below %g", src, field, v,
                      lo_ok ? ">=" : ">", lo, hi);
}

/* "YYYY-MM-DD", a real calendar day of the years 1970-9999. */
static int valid_date(const char *d)
{
    if (strlen(d) != 10 || d[4] != '-' || d[7] != '-')
        return 0;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (d[i] < '0' || d[i] > '9'))
            return 0;
    int y = atoi(d), m = atoi(d + 5), day = atoi(d + 8);
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || m < 1 || m > 12 || day < 1 || day > mdays[m - 1])
        return 0;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return !(m == 2 && day == 29 && !leap);
}

/* The source: 1-31 letters, digits, spaces and ._-+/() (it is printed). */
static int valid_source(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 31 || s[0] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || strchr(" ._-+/()", s[i])))
            return 0;
    return 1;
}

/* A measured figure: 0 = not measured, else finite, > 0 and below hi. */
static mc_status measured_num(double v, double hi, const char *src, const char *field,
                              mc_err *err)
{
    if (v == 0 || (isfinite(v) && v > 0 && v < hi))
        return MC_OK;
    return mc_err_set(err, MC_ERR_CONFIG,
                      "%s: measured.%s: %g must be > 0 and below %g (leave it out when not "
                      "measured)",
                      src, field, v, hi);
}

static mc_status measured_link(const mc_link *l, const char *src, const char *name, mc_err *err)
{
    char f[64];
    snprintf(f, sizeof f, "links.%s.bandwidth_gbs", name);
    mc_status st = measured_num(l->bandwidth_gbs, 1e9, src, f, err);
    if (st == MC_OK && l->bandwidth_gbs > 0 && !(l->latency_us < 0) &&
        !(isfinite(l->latency_us) && l->latency_us < 1e9))
        st = mc_err_set(err, MC_ERR_CONFIG,
                        "%s: measured.links.%s.latency_us: %g must be >= 0 and below 1e+09", src,
                        name, l->latency_us);
    return st;
}

static mc_status measured_check(const mc_measured *m, const char *src, mc_err *err)
{
    if (!m->source[0]) {
        if (m->memory_bandwidth_gbs != 0 || m->bf16_tflops != 0 || m->fp8_tflops != 0 ||
            m->intra.bandwidth_gbs != 0 || m->inter.bandwidth_gbs != 0)
            return mc_err_set(err, MC_ERR_CONFIG, "%s: measured: figures without a source", src);
        return MC_OK;
    }
    if (!valid_source(m->source))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: measured.source: must be 1-31 letters, digits, spaces or ._-+/() "
                          "(it names the tool, e.g. bench)",
                          src);
    if (!valid_date(m->date))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: measured.date: must be a calendar date YYYY-MM-DD (when the "
                          "figures were measured)",
                          src);
    mc_status st;
    if ((st = measured_num(m->memory_bandwidth_gbs, 1e6, src, "memory_bandwidth_gbs", err)) ||
        (st = measured_num(m->bf16_tflops, 1e6, src, "tflops.bf16", err)) ||
        (st = measured_num(m->fp8_tflops, 1e6, src, "tflops.fp8", err)) ||
        (st = measured_link(&m->intra, src, "intra_node", err)) ||
        (st = measured_link(&m->inter, src, "inter_node", err)))
        return st;
    if (!(m->memory_bandwidth_gbs > 0) && !(m->bf16_tflops > 0) && !(m->fp8_tflops > 0) &&
        !(m->intra.bandwidth_gbs > 0) && !(m->inter.bandwidth_gbs > 0))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: measured: no figures (give memory_bandwidth_gbs, tflops.bf16, "
                          "tflops.fp8 or links.intra_node / inter_node.bandwidth_gbs)",
                          src);
    return MC_OK;
}

mc_status mc_cluster_check(const mc_cluster *c, const char *src, mc_err *err)
{
    if (c->nodes < 1 || c->nodes > 100000)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: nodes: %d is outside [1, 100000]", src,
                          c->nodes);
    if (c->devices_per_node < 1 || c->devices_per_node > 1024)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: devices_per_node: %d is outside [1, 1024]", src,
                          c->devices_per_node);
    const double big = 1e9;
    mc_status st = MC_OK;
    if ((st = num_field(c->device.memory_gib, 0, 0, 1e6, src, "device.memory_gib", err)) ||
        (st = num_field(c->device.memory_bandwidth_gbs, 0, 0, 1e6, src,
                        "device.memory_bandwidth_gbs", err)) ||
        (st = num_field(c->device.bf16_tflops, 0, 0, 1e6, src, "device.tflops.bf16", err)))
        return st;
    if ((st = num_field(c->device.fp8_tflops, 0, 1, 1e6, src, "device.tflops.fp8", err)) ||
        (st = num_field(c->device.int8_tops, 0, 1, 1e6, src, "device.tflops.int8", err)))
        return st;
    if ((st = num_field(c->intra.bandwidth_gbs, 0, 0, big, src, "links.intra_node.bandwidth_gbs",
                        err)) ||
        (st = num_field(c->intra.latency_us, 0, 1, big, src, "links.intra_node.latency_us", err)))
        return st;
    if (c->nodes > 1 && !(c->inter.bandwidth_gbs > 0))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: links.inter_node: needed with %d nodes (bandwidth must be positive)",
                          src, c->nodes);
    /* checked even with one node, where it is unused */
    if ((st = num_field(c->inter.bandwidth_gbs, 0, 1, big, src, "links.inter_node.bandwidth_gbs",
                        err)) ||
        (st = num_field(c->inter.latency_us, 0, 1, big, src, "links.inter_node.latency_us", err)))
        return st;
    int world = mc_cluster_world(c);
    if (c->tp < 1 || c->pp < 1 || c->dp < 1 || c->ep < 1)
        return mc_err_set(
            err, MC_ERR_CONFIG,
            "%s: parallel: tp, ep, pp and dp must be >= 1 (tp %d, ep %d, pp %d, dp %d)", src, c->tp,
            c->ep, c->pp, c->dp);
    /* each is at most the world size, so the product below cannot overflow */
    if (c->tp > world || c->pp > world || c->dp > world ||
        (long long)c->tp * c->pp * c->dp != world)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: parallel: tp*pp*dp = %d*%d*%d but the cluster has %d devices "
                          "(nodes*devices_per_node)",
                          src, c->tp, c->pp, c->dp, world);
    if ((c->tp * c->dp) % c->ep != 0)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: parallel.ep: %d does not divide tp*dp = %d (the ranks of one "
                          "pipeline stage)",
                          src, c->ep, c->tp * c->dp);
    if (!isfinite(c->workspace_gib) || c->workspace_gib < 0 ||
        c->workspace_gib >= c->device.memory_gib)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: workspace_gib: %g must be in [0, memory_gib)",
                          src, c->workspace_gib);
    return measured_check(&c->measured, src, err);
}

/* The shape of a YAML stream, read with libyaml before libcyaml sees it
 * (libcyaml reads only the first document, and an empty stream gives it no
 * value at all). */
typedef enum { TOP_NONE, TOP_NULL, TOP_SCALAR, TOP_SEQUENCE, TOP_MAPPING } top_kind;

/* Collections nested deeper than this are refused before libcyaml reads
 * them: a cluster config needs 4 levels, and libyaml's scanner slows down
 * with the square of the nesting of flow collections ("[[[[..."). */
#define MC_CLUSTER_MAX_DEPTH 16

/* Returns the number of documents (counting stops at 2), -1 when libyaml
 * cannot parse the text (libcyaml then reports where), -2 when the nesting
 * is deeper than MC_CLUSTER_MAX_DEPTH or -3 for a mapping key that is not a
 * scalar (*line says where for both). *top is the kind of the first
 * document's top-level node. Stops at the first problem, so the time is
 * linear in the input. */
static int yaml_documents(const char *text, size_t len, top_kind *top, size_t *line)
{
    yaml_parser_t ps;
    *top = TOP_NONE;
    *line = 0;
    if (!yaml_parser_initialize(&ps))
        return -1;
    yaml_parser_set_input_string(&ps, (const unsigned char *)text, len);
    /* per open collection: 0 a sequence, 1 a mapping expecting a key, 2 a
     * mapping expecting a value */
    unsigned char open[MC_CLUSTER_MAX_DEPTH + 2];
    int docs = 0, want_top = 0, depth = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&ps, &ev)) {
            docs = -1;
            break;
        }
        yaml_event_type_t t = ev.type;
        int node = t == YAML_SCALAR_EVENT || t == YAML_ALIAS_EVENT ||
                   t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT;
        if (t == YAML_DOCUMENT_START_EVENT) {
            docs++;
            want_top = docs == 1;
        } else if (want_top) {
            want_top = 0;
            if (t == YAML_MAPPING_START_EVENT)
                *top = TOP_MAPPING;
            else if (t == YAML_SEQUENCE_START_EVENT)
                *top = TOP_SEQUENCE;
            else if (t == YAML_SCALAR_EVENT) {
                const char *v = (const char *)ev.data.scalar.value;
                int plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
                *top = plain && (!v[0] || !strcmp(v, "~") || !strcmp(v, "null") ||
                                 !strcmp(v, "Null") || !strcmp(v, "NULL"))
                           ? TOP_NULL
                           : TOP_SCALAR;
            }
        }
        if (node && depth > 0 && open[depth - 1]) {
            if (open[depth - 1] == 1 && t != YAML_SCALAR_EVENT && docs != -2) {
                *line = ev.start_mark.line + 1;
                docs = -3;
            }
            open[depth - 1] = open[depth - 1] == 1 ? 2 : 1;
        }
        if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT) {
            if (depth > MC_CLUSTER_MAX_DEPTH) {
                *line = ev.start_mark.line + 1;
                docs = -2;
            } else {
                open[depth] = t == YAML_MAPPING_START_EVENT;
            }
            depth++;
        } else if ((t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT) && depth > 0) {
            depth--;
        }
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT || docs > 1 || docs < -1)
            break;
    }
    yaml_parser_delete(&ps);
    return docs;
}

/* libcyaml's error, rewritten as "NAME: a.b.c: message (line L, column C)". */
static mc_status yaml_error(const ylog *lg, cyaml_err_t e, const char *name, mc_err *err)
{
    char fp2[512] = "";
    size_t o = 0;
    const char *mk = strstr(lg->msg, "Missing required mapping field: ");
    /* a missing field is reported after its last sibling was read: drop that one */
    int innermost = mk ? 1 : 0;
    for (int i = lg->nfields - 1; i >= innermost && o < sizeof fp2; i--)
        o += (size_t)snprintf(fp2 + o, sizeof fp2 - o, "%s%s", o ? "." : "", lg->fields[i]);
    /* an unexpected key names itself: "Unexpected key: foo" */
    const char *uk = strstr(lg->msg, "Unexpected key: ");
    if (uk && o < sizeof fp2)
        snprintf(fp2 + o, sizeof fp2 - o, "%s%s", o ? "." : "", uk + 16);
    if (mk)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: %s%s%s: missing required field", name, fp2,
                          fp2[0] ? "." : "", mk + 32);
    return mc_err_set(err, MC_ERR_CONFIG, "%s: %s: %s %s", name, fp2[0] ? fp2 : "(top level)",
                      lg->msg[0] ? lg->msg : cyaml_strerror(e), lg->where);
}

/* `v` for a one-line message: control characters (a quoted "\n") become '?'. */
static const char *shown(const char *v, char *buf, size_t n)
{
    size_t i = 0;
    for (; v[i] && i + 1 < n; i++)
        buf[i] = (unsigned char)v[i] < 0x20 || v[i] == 0x7f ? '?' : v[i];
    buf[i] = '\0';
    return buf;
}

/* An integer field: decimal digits with an optional sign, in int range.
 * Absent (NULL) gives `dflt`. */
static mc_status get_int(const char *v, int dflt, const char *name, const char *field, int *out,
                         mc_err *err)
{
    if (!v) {
        *out = dflt;
        return MC_OK;
    }
    const char *p = v + (*v == '+' || *v == '-');
    int ok = *p != '\0';
    for (; *p; p++)
        ok &= *p >= '0' && *p <= '9';
    long long x = 0;
    if (ok) {
        errno = 0;
        x = strtoll(v, NULL, 10);
        ok = errno == 0 && x >= INT_MIN && x <= INT_MAX;
    }
    char b[80];
    if (!ok)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: %s: '%s' is not a decimal integer in int range",
                          name, field, shown(v, b, sizeof b));
    *out = (int)x;
    return MC_OK;
}

/* A count that may be absent (then `dflt`) but not 0 or negative. */
static mc_status get_count(const char *v, int dflt, const char *name, const char *field, int *out,
                           mc_err *err)
{
    mc_status st = get_int(v, dflt, name, field, out, err);
    if (st == MC_OK && v && *out < 1)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: %s: %d must be >= 1 (omit it for the default)",
                          name, field, *out);
    return st;
}

/* A decimal number ("12", "-0.5", "1.5e3"); absent gives 0. */
static mc_status get_num(const char *v, const char *name, const char *field, double *out,
                         mc_err *err)
{
    *out = 0;
    if (!v)
        return MC_OK;
    int ok = strspn(v, "0123456789") > 0 || (v[0] && strchr("+-.", v[0]) && v[1]);
    for (const char *p = v; *p && ok; p++)
        ok = strchr("0123456789+-.eE", *p) != NULL;
    char *end = NULL;
    if (ok) {
        errno = 0;
        *out = strtod(v, &end);
        ok = end && *end == '\0' && end != v && isfinite(*out) && errno != ERANGE;
    }
    if (!ok) {
        *out = 0;
        char b[80];
        return mc_err_set(err, MC_ERR_CONFIG, "%s: %s: '%s' is not a finite decimal number", name,
                          field, shown(v, b, sizeof b));
    }
    return MC_OK;
}

static mc_status get_link(const y_link *y, const char *dflt_kind, const char *name,
                          const char *field, mc_link *l, mc_err *err)
{
    char f[64];
    snprintf(l->kind, sizeof l->kind, "%s", y->kind ? y->kind : dflt_kind);
    snprintf(f, sizeof f, "%s.bandwidth_gbs", field);
    mc_status st = get_num(y->bandwidth_gbs, name, f, &l->bandwidth_gbs, err);
    snprintf(f, sizeof f, "%s.latency_us", field);
    return st ? st : get_num(y->latency_us, name, f, &l->latency_us, err);
}

/* A measured number: absent gives 0 (not measured); given, it must be > 0. */
static mc_status get_measured(const char *v, const char *name, const char *field, double *out,
                              mc_err *err)
{
    char f[80];
    snprintf(f, sizeof f, "measured.%s", field);
    mc_status st = get_num(v, name, f, out, err);
    if (st == MC_OK && v && !(*out > 0))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: %s: %g must be > 0 (leave it out when not measured)", name, f,
                          *out);
    return st;
}

static mc_status measured_link_from_yaml(const y_link *y, const char *name, const char *which,
                                         mc_link *l, mc_err *err)
{
    char f[64];
    if (!y->bandwidth_gbs) /* the mapping is absent (bandwidth_gbs is required in it) */
        return MC_OK;
    snprintf(l->kind, sizeof l->kind, "%s", y->kind ? y->kind : "measured");
    snprintf(f, sizeof f, "links.%s.bandwidth_gbs", which);
    mc_status st = get_measured(y->bandwidth_gbs, name, f, &l->bandwidth_gbs, err);
    l->latency_us = -1; /* not measured: the datasheet latency stands */
    if (st == MC_OK && y->latency_us) {
        snprintf(f, sizeof f, "measured.links.%s.latency_us", which);
        st = get_num(y->latency_us, name, f, &l->latency_us, err);
        if (st == MC_OK && l->latency_us < 0)
            st = mc_err_set(err, MC_ERR_CONFIG, "%s: %s: %g must be >= 0", name, f,
                            l->latency_us);
    }
    return st;
}

static mc_status measured_from_yaml(const y_measured *y, const char *name, mc_measured *m,
                                    mc_err *err)
{
    if (!y->source) /* no measured block (source is required in it) */
        return MC_OK;
    char b[80];
    if (!valid_source(y->source))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: measured.source: '%s' must be 1-31 letters, digits, spaces or "
                          "._-+/() (it names the tool, e.g. bench)",
                          name, shown(y->source, b, sizeof b));
    if (!y->date || !valid_date(y->date))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: measured.date: '%s' is not a calendar date YYYY-MM-DD (when the "
                          "figures were measured)",
                          name, y->date ? shown(y->date, b, sizeof b) : "");
    snprintf(m->source, sizeof m->source, "%s", y->source);
    snprintf(m->date, sizeof m->date, "%s", y->date);
    mc_status st;
    if ((st = get_measured(y->memory_bandwidth_gbs, name, "memory_bandwidth_gbs",
                           &m->memory_bandwidth_gbs, err)) ||
        (st = get_measured(y->tflops.bf16, name, "tflops.bf16", &m->bf16_tflops, err)) ||
        (st = get_measured(y->tflops.fp8, name, "tflops.fp8", &m->fp8_tflops, err)) ||
        (st = measured_link_from_yaml(&y->links.intra_node, name, "intra_node", &m->intra, err)) ||
        (st = measured_link_from_yaml(&y->links.inter_node, name, "inter_node", &m->inter, err)))
        return st;
    return MC_OK;
}

static mc_status from_yaml(const y_cluster *y, const char *name, mc_cluster *c, mc_err *err)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", y->name ? y->name : "cluster");
    c->backend = (mc_backend_kind)y->backend;
    snprintf(c->device.name, sizeof c->device.name, "%s",
             y->device.name ? y->device.name : "device");
    const y_device *d = &y->device;
    const y_parallel *p = &y->parallel;
    mc_status st;
    if ((st = get_int(y->nodes, 0, name, "nodes", &c->nodes, err)) ||
        (st = get_int(y->devices_per_node, 0, name, "devices_per_node", &c->devices_per_node,
                      err)) ||
        (st = get_num(d->memory_gib, name, "device.memory_gib", &c->device.memory_gib, err)) ||
        (st = get_num(d->memory_bandwidth_gbs, name, "device.memory_bandwidth_gbs",
                      &c->device.memory_bandwidth_gbs, err)) ||
        (st = get_num(d->tflops.bf16, name, "device.tflops.bf16", &c->device.bf16_tflops, err)) ||
        (st = get_num(d->tflops.fp8, name, "device.tflops.fp8", &c->device.fp8_tflops, err)) ||
        (st = get_num(d->tflops.int8, name, "device.tflops.int8", &c->device.int8_tops, err)) ||
        (st = get_link(&y->links.intra_node, "intra", name, "links.intra_node", &c->intra, err)) ||
        (st = get_link(&y->links.inter_node, "none", name, "links.inter_node", &c->inter, err)) ||
        (st = get_num(y->workspace_gib, name, "workspace_gib", &c->workspace_gib, err)))
        return st;
    if ((st = measured_from_yaml(&y->measured, name, &c->measured, err)))
        return st;
    if (!p->tp && !p->pp && !p->dp) {
        /* no layout given: TP inside a node, PP across nodes */
        c->tp = c->devices_per_node;
        c->pp = c->nodes;
        c->dp = 1;
    } else if ((st = get_count(p->tp, 1, name, "parallel.tp", &c->tp, err)) ||
               (st = get_count(p->pp, 1, name, "parallel.pp", &c->pp, err)) ||
               (st = get_count(p->dp, 1, name, "parallel.dp", &c->dp, err))) {
        return st;
    }
    /* a missing ep is every rank of a stage (tp * dp); the product is
     * checked against the world size later, so only keep it in range here */
    long long stage = (long long)c->tp * c->dp;
    return get_count(p->ep, stage >= 1 && stage <= INT_MAX ? (int)stage : 1, name, "parallel.ep",
                     &c->ep, err);
}

mc_status mc_cluster_parse(const char *text, size_t len, const char *name, mc_cluster *out,
                           mc_err *err)
{
    if (!name)
        name = "cluster config";
    memset(out, 0, sizeof *out);
    if (!text && len)
        return mc_err_set(err, MC_ERR_ARG, "%s: no cluster config text", name);
    if (!text)
        text = ""; /* libyaml asserts on a NULL input */
    if (len > MC_CLUSTER_MAX_BYTES)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: cluster config larger than %d bytes", name,
                          MC_CLUSTER_MAX_BYTES);
    top_kind top;
    size_t line;
    int docs = yaml_documents(text, len, &top, &line);
    if (docs == -2)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: (top level): mappings and sequences nested deeper than %d levels "
                          "(line %zu)",
                          name, MC_CLUSTER_MAX_DEPTH, line);
    if (docs == -3)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: (top level): a mapping key that is not a plain name (line %zu)",
                          name, line);
    if (docs == 0 || (docs == 1 && top == TOP_NULL))
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: empty cluster config (expected a YAML mapping with backend, nodes, "
                          "devices_per_node, device and links)",
                          name);
    if (docs > 1)
        return mc_err_set(err, MC_ERR_CONFIG,
                          "%s: more than one YAML document; a cluster config is a single mapping",
                          name);
    if (docs == 1 && top != TOP_MAPPING)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: (top level): %s, not a YAML mapping", name,
                          top == TOP_SEQUENCE ? "a sequence" : "a scalar");
    ylog lg;
    memset(&lg, 0, sizeof lg);
    cyaml_config_t cfg = {
        .log_fn = ylog_fn,
        .log_ctx = &lg,
        .mem_fn = cyaml_mem,
        .log_level = CYAML_LOG_ERROR,
        .flags = CYAML_CFG_NO_ALIAS,
    };
    y_cluster *y = NULL;
    cyaml_err_t e = cyaml_load_data((const uint8_t *)text, len, &cfg, &cluster_schema,
                                    (cyaml_data_t **)&y, NULL);
    if (e != CYAML_OK) {
        if (y)
            cyaml_free(&cfg, &cluster_schema, y, 0);
        return yaml_error(&lg, e, name, err);
    }
    if (!y)
        return mc_err_set(err, MC_ERR_CONFIG, "%s: (top level): not a YAML mapping", name);
    mc_status st = from_yaml(y, name, out, err);
    cyaml_free(&cfg, &cluster_schema, y, 0);
    if (st == MC_OK)
        st = mc_cluster_check(out, name, err);
    if (st != MC_OK)
        memset(out, 0, sizeof *out);
    return st;
}

mc_status mc_cluster_load(const char *path, mc_cluster *out, mc_err *err)
{
    char *text = NULL;
    size_t len = 0;
    mc_status st = mc_read_regular(path, "cluster config", MC_CLUSTER_MAX_BYTES, &text, &len, err);
    if (st != MC_OK) {
        memset(out, 0, sizeof *out);
        return st;
    }
    st = mc_cluster_parse(text, len, path, out, err);
    free(text);
    return st;
}
