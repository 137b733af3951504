/* test_cluster_bad.c - degenerate and hostile cluster configs.
 *
 * Every case must come back as an error naming the file and the field at
 * fault (never a crash, a hang, or a config silently filled with defaults),
 * and counts given explicitly must be taken as given. The expected layouts
 * are written out by hand from cluster-configs/README.md. */
#define _GNU_SOURCE
#include "check.h"
#include "cluster.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *fx;

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* A valid 2-rank CPU cluster without a parallel section. */
#define BASE                                                                                       \
    "backend: cpu\nnodes: 1\ndevices_per_node: 2\n"                                                \
    "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {bf16: 1}}\n"                       \
    "links: {intra_node: {bandwidth_gbs: 5}}\n"

static int all_zero(const mc_cluster *c)
{
    static const mc_cluster zero;
    return !memcmp(c, &zero, sizeof zero);
}

/* Parses `text` and expects a refusal whose message holds `needle`. */
static void refuse_text(const char *what, const char *text, size_t len, const char *needle)
{
    mc_cluster c;
    memset(&c, 0x5a, sizeof c);
    mc_err e;
    mc_err_clear(&e);
    mc_status st = mc_cluster_parse(text, len, "inline.yaml", &c, &e);
    CHECKF(st != MC_OK, "%s: accepted (tp %d pp %d dp %d ep %d)", what, c.tp, c.pp, c.dp, c.ep);
    if (st == MC_OK)
        return;
    CHECKF(e.status == st && strstr(e.msg, "inline.yaml") && strstr(e.msg, needle),
           "%s: message '%s' does not name inline.yaml and '%s'", what, e.msg, needle);
    int ctl = 0;
    for (const char *q = e.msg; *q; q++)
        ctl |= (unsigned char)*q < 0x20;
    CHECKF(!ctl, "%s: control character in the message: '%s'", what, e.msg);
    CHECKF(all_zero(&c), "%s: output not cleared after a failure", what);
    printf("  refused %-28s %s\n", what, e.msg);
}

static void refuse(const char *what, const char *text, const char *needle)
{
    refuse_text(what, text, strlen(text), needle);
}

static void accept(const char *what, const char *text, int tp, int pp, int dp, int ep)
{
    mc_cluster c;
    mc_err e;
    mc_err_clear(&e);
    mc_status st = mc_cluster_parse(text, strlen(text), "inline.yaml", &c, &e);
    CHECKF(st == MC_OK, "%s: refused: %s", what, e.msg);
    CHECKF(st != MC_OK || (c.tp == tp && c.pp == pp && c.dp == dp && c.ep == ep),
           "%s: tp %d pp %d dp %d ep %d, expected %d %d %d %d", what, c.tp, c.pp, c.dp, c.ep, tp,
           pp, dp, ep);
}

static void test_degenerate_documents(void)
{
    refuse("empty", "", "empty cluster config");
    refuse("blank lines", "\n\n  \n", "empty cluster config");
    refuse("comment only", "# nothing here\n   # still nothing\n", "empty cluster config");
    refuse("bare document marker", "---\n", "empty cluster config");
    refuse("document end only", "---\n...\n", "empty cluster config");
    refuse("null", "null\n", "empty cluster config");
    refuse("tilde", "~\n", "empty cluster config");
    refuse("scalar", "cpu\n", "a scalar, not a YAML mapping");
    refuse("quoted null", "'null'\n", "a scalar, not a YAML mapping");
    refuse("number", "42\n", "a scalar, not a YAML mapping");
    refuse("block scalar", "--- |\n  backend: cpu\n", "a scalar, not a YAML mapping");
    refuse("flow list", "[1, 2]\n", "a sequence, not a YAML mapping");
    refuse("block list", "- backend: cpu\n- nodes: 1\n", "a sequence, not a YAML mapping");
    refuse("empty mapping", "{}\n", "backend: missing required field");
    refuse("two documents", BASE "---\n" BASE, "more than one YAML document");
    refuse("second document empty", BASE "---\n", "more than one YAML document");
    refuse("mapping as key", "{{}: 1}\n", "mapping key that is not a plain name");
    refuse("list as key", "? [a]\n: 1\n", "mapping key that is not a plain name");
    refuse("alias", "backend: cpu\nnodes: &n 1\ndevices_per_node: *n\n", "alias");
    refuse("duplicate key", BASE "nodes: 1\n", "nodes");
    refuse("unterminated", "backend: cpu\nnodes: [1\n", "inline.yaml");
    refuse("nested empty mappings",
           "backend: cpu\nnodes: 1\ndevices_per_node: 2\ndevice: {}\nlinks: {intra_node: {}}\n",
           "device.memory_gib: missing required field");
    refuse("empty tflops",
           "backend: cpu\nnodes: 1\ndevices_per_node: 2\n"
           "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}}\n",
           "device.tflops.bf16: missing required field");
    refuse("null device", "backend: cpu\nnodes: 1\ndevices_per_node: 2\ndevice:\n", "device");
    refuse("nodes is a list", "backend: cpu\nnodes: []\n", "nodes");
    refuse("backend as number", "backend: 1\n", "backend");
    refuse("newline in a number", BASE "parallel: {tp: \"2\\n\"}\n", "parallel.tp: '2?'");
    refuse("CR in a number", BASE "workspace_gib: \"0\\r1\"\n", "workspace_gib: '0?1'");
    refuse("tab in a name",
           "name: \"a\\tb"
           "0123456789012345678901234567890123456789012345678901234567890123\"\n",
           "name");
    refuse_text("NULL text", NULL, 0, "empty cluster config");
    const char nul[] = "backend: cpu\0\nnodes: 1\n";
    refuse_text("NUL byte", nul, sizeof nul - 1, "inline.yaml");
    refuse_text("invalid UTF-8", "backend: \xc3\x28\n", 13, "inline.yaml");
    /* the length is honoured: BASE cut before its links line */
    refuse_text("length honoured", BASE,
                strlen(BASE) - strlen("links: {intra_node: {bandwidth_gbs: 5}}\n"),
                "links: missing required field");
}

static void test_numbers(void)
{
    /* 0 or negative counts are refused, not taken as "absent" */
    refuse("tp 0", BASE "parallel: {tp: 0}\n", "parallel.tp: 0 must be >= 1");
    refuse("pp 0", BASE "parallel: {pp: 0}\n", "parallel.pp: 0 must be >= 1");
    refuse("dp 0", BASE "parallel: {dp: 0}\n", "parallel.dp: 0 must be >= 1");
    refuse("ep 0", BASE "parallel: {ep: 0}\n", "parallel.ep: 0 must be >= 1");
    refuse("ep 0 with tp", BASE "parallel: {tp: 2, ep: 0}\n", "parallel.ep: 0 must be >= 1");
    refuse("tp -2", BASE "parallel: {tp: -2}\n", "parallel.tp: -2 must be >= 1");
    refuse("dp -0", BASE "parallel: {tp: 2, dp: -0}\n", "parallel.dp: 0 must be >= 1");
    refuse("nodes 0",
           "backend: cpu\nnodes: 0\ndevices_per_node: 2\n"
           "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {bf16: 1}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}}\n",
           "nodes: 0");
    refuse("devices_per_node -1",
           "backend: cpu\nnodes: 1\ndevices_per_node: -1\n"
           "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {bf16: 1}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}}\n",
           "devices_per_node: -1");
    /* numbers that libcyaml would cut short */
    refuse("tp 2.9", BASE "parallel: {tp: 2.9}\n", "parallel.tp: '2.9' is not a decimal integer");
    refuse("tp 2abc", BASE "parallel: {tp: 2abc}\n", "parallel.tp: '2abc'");
    refuse("tp 2e0", BASE "parallel: {tp: 2e0}\n", "parallel.tp: '2e0'");
    refuse("tp 0x2", BASE "parallel: {tp: 0x2}\n", "parallel.tp: '0x2'");
    refuse("tp true", BASE "parallel: {tp: true}\n", "parallel.tp: 'true'");
    refuse("tp null", BASE "parallel: {tp: null}\n", "parallel.tp: 'null'");
    refuse("tp ~", BASE "parallel: {tp: ~}\n", "parallel.tp: '~'");
    refuse("tp empty", BASE "parallel: {tp: }\n", "parallel.tp: ''");
    refuse("tp 2^31", BASE "parallel: {tp: 2147483648}\n", "parallel.tp: '2147483648'");
    refuse("tp 1e20", BASE "parallel: {tp: 99999999999999999999}\n", "parallel.tp");
    refuse("huge tp*pp", BASE "parallel: {tp: 2147483647, pp: 2147483647, dp: 2147483647}\n",
           "parallel: tp*pp*dp");
    refuse("nodes 1.9",
           "backend: cpu\nnodes: 1.9\ndevices_per_node: 2\n"
           "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {bf16: 1}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}}\n",
           "nodes: '1.9'");
    refuse("workspace 0.1x", BASE "workspace_gib: 0.1x\n", "workspace_gib: '0.1x'");
    refuse("workspace hex", BASE "workspace_gib: 0x1\n", "workspace_gib: '0x1'");
    refuse("workspace nan", BASE "workspace_gib: .nan\n", "workspace_gib: '.nan'");
    refuse("workspace nan text", BASE "workspace_gib: nan\n", "workspace_gib: 'nan'");
    refuse("workspace inf", BASE "workspace_gib: .inf\n", "workspace_gib: '.inf'");
    refuse("workspace 1e999", BASE "workspace_gib: 1e999\n", "workspace_gib: '1e999'");
    refuse("workspace 1e300", BASE "workspace_gib: 1e300\n", "workspace_gib");
    refuse("memory 1e308",
           "backend: cpu\nnodes: 1\ndevices_per_node: 2\n"
           "device: {memory_gib: 1e308, memory_bandwidth_gbs: 10, tflops: {bf16: 1}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}}\n",
           "device.memory_gib: 1e+308 must be > 0 and below");
    refuse("bf16 0",
           "backend: cpu\nnodes: 1\ndevices_per_node: 2\n"
           "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {bf16: 0}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}}\n",
           "device.tflops.bf16: 0 must be > 0");
    refuse("memory 1_0",
           "backend: cpu\nnodes: 1\ndevices_per_node: 2\n"
           "device: {memory_gib: 1_0, memory_bandwidth_gbs: 10, tflops: {bf16: 1}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}}\n",
           "device.memory_gib: '1_0'");
    refuse("fp8 nan",
           "backend: cpu\nnodes: 1\ndevices_per_node: 2\n"
           "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {bf16: 1, fp8: .nan}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}}\n",
           "device.tflops.fp8");
    refuse("latency nan",
           "backend: cpu\nnodes: 1\ndevices_per_node: 2\n"
           "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {bf16: 1}}\n"
           "links: {intra_node: {bandwidth_gbs: 5, latency_us: .nan}}\n",
           "links.intra_node.latency_us");
    refuse("inter negative",
           "backend: cpu\nnodes: 1\ndevices_per_node: 2\n"
           "device: {memory_gib: 1, memory_bandwidth_gbs: 10, tflops: {bf16: 1}}\n"
           "links: {intra_node: {bandwidth_gbs: 5}, inter_node: {bandwidth_gbs: -1}}\n",
           "links.inter_node.bandwidth_gbs");
    refuse(
        "long number",
        BASE
        "workspace_gib: 0.000000000000000000000000000000000000000000000000000000000000000000001\n",
        "workspace_gib");

    /* absent counts take the documented defaults; given ones are kept */
    accept("no parallel", BASE, 2, 1, 1, 2);
    accept("empty parallel", BASE "parallel: {}\n", 2, 1, 1, 2);
    accept("ep only", BASE "parallel: {ep: 1}\n", 2, 1, 1, 1);
    accept("dp only", BASE "parallel: {dp: 2}\n", 1, 1, 2, 2);
    accept("tp, ep", BASE "parallel: {tp: 2, ep: 1}\n", 2, 1, 1, 1);
    accept("pp", BASE "parallel: {pp: 2}\n", 1, 2, 1, 1);
    accept("signed and padded", BASE "parallel: {tp: +2, dp: 01}\n", 2, 1, 1, 2);
    accept("quoted", BASE "parallel: {tp: '2'}\nworkspace_gib: \"0.25\"\n", 2, 1, 1, 2);
}

/* The `measured:` block: parsed as given, used by mc_cluster_effective in
 * place of the datasheet figures, bad values refused like the others. */
static void test_measured(void)
{
#define MEAS(x) BASE "measured: {source: bench, date: 2026-11-30" x "}\n"
    mc_cluster c, eff;
    mc_err e;
    mc_err_clear(&e);
    const char *good = BASE "measured:\n  source: bench\n  date: 2024-02-29\n"
                            "  memory_bandwidth_gbs: 7.5\n  tflops: {bf16: 0.5}\n"
                            "  links: {intra_node: {bandwidth_gbs: 3}}\n";
    CHECKF(mc_cluster_parse(good, strlen(good), "inline.yaml", &c, &e) == MC_OK, "%s", e.msg);
    CHECKF(mc_cluster_has_measured(&c) && !strcmp(c.measured.source, "bench") &&
               !strcmp(c.measured.date, "2024-02-29"),
           "source '%s' date '%s'", c.measured.source, c.measured.date);
    CHECKF(c.measured.memory_bandwidth_gbs == 7.5 && c.measured.bf16_tflops == 0.5 &&
               c.measured.fp8_tflops == 0 && c.measured.intra.bandwidth_gbs == 3 &&
               c.measured.intra.latency_us < 0 && c.measured.inter.bandwidth_gbs == 0,
           "measured figures %g %g %g %g %g", c.measured.memory_bandwidth_gbs,
           c.measured.bf16_tflops, c.measured.fp8_tflops, c.measured.intra.bandwidth_gbs,
           c.measured.intra.latency_us);
    /* the datasheet figures stay as written; the effective ones are the measured */
    CHECKF(c.device.memory_bandwidth_gbs == 10 && c.device.bf16_tflops == 1 &&
               c.intra.bandwidth_gbs == 5,
           "datasheet figures changed: %g %g %g", c.device.memory_bandwidth_gbs,
           c.device.bf16_tflops, c.intra.bandwidth_gbs);
    mc_cluster_effective(&c, &eff);
    CHECKF(eff.device.memory_bandwidth_gbs == 7.5 && eff.device.bf16_tflops == 0.5 &&
               eff.intra.bandwidth_gbs == 3 && eff.intra.latency_us == c.intra.latency_us &&
               eff.device.memory_gib == 1,
           "effective %g %g %g %g", eff.device.memory_bandwidth_gbs, eff.device.bf16_tflops,
           eff.intra.bandwidth_gbs, eff.intra.latency_us);
    /* without a block: nothing measured, effective == datasheet */
    mc_err_clear(&e);
    CHECKF(mc_cluster_parse(BASE, strlen(BASE), "inline.yaml", &c, &e) == MC_OK, "%s", e.msg);
    mc_cluster_effective(&c, &eff);
    CHECKF(!mc_cluster_has_measured(&c) && !memcmp(&c, &eff, sizeof c), "no block: differs");
    accept("measured latency", MEAS(", links: {inter_node: {bandwidth_gbs: 1, latency_us: 0}}"), 2,
           1, 1, 2);

    refuse("measured empty", BASE "measured: {}\n", "measured.source: missing required field");
    refuse("measured scalar", BASE "measured: yes\n", "measured");
    refuse("measured no date", BASE "measured: {source: bench, memory_bandwidth_gbs: 5}\n",
           "measured.date: missing required field");
    refuse("measured no figures", MEAS(""), "measured: no figures");
    refuse("measured unknown key", MEAS(", bandwidth: 5"), "measured.bandwidth");
    refuse("measured date month 13", BASE "measured: {source: b, date: 2026-13-01, "
                                          "memory_bandwidth_gbs: 5}\n",
           "measured.date: '2026-13-01' is not a calendar date");
    refuse("measured date 2025-02-29", BASE "measured: {source: b, date: 2025-02-29, "
                                            "memory_bandwidth_gbs: 5}\n",
           "measured.date: '2025-02-29'");
    refuse("measured date 2026-04-31", BASE "measured: {source: b, date: 2026-04-31, "
                                            "memory_bandwidth_gbs: 5}\n",
           "measured.date");
    refuse("measured date order", BASE "measured: {source: b, date: 30.11.2026, "
                                       "memory_bandwidth_gbs: 5}\n",
           "measured.date: '30.11.2026'");
    refuse("measured date short", BASE "measured: {source: b, date: 2026-1-30, "
                                       "memory_bandwidth_gbs: 5}\n",
           "measured.date");
    refuse("measured date long", BASE "measured: {source: b, date: 2026-11-300, "
                                      "memory_bandwidth_gbs: 5}\n",
           "measured.date");
    refuse("measured source empty", BASE "measured: {source: '', date: 2026-11-30, "
                                         "memory_bandwidth_gbs: 5}\n",
           "measured.source");
    refuse("measured source newline", BASE "measured: {source: \"a\\nb\", date: 2026-11-30, "
                                           "memory_bandwidth_gbs: 5}\n",
           "measured.source: 'a?b'");
    refuse("measured source long", BASE "measured: {source: "
                                        "abcdefghijklmnopqrstuvwxyz0123456789, date: 2026-11-30, "
                                        "memory_bandwidth_gbs: 5}\n",
           "measured.source");
    refuse("measured bandwidth 0", MEAS(", memory_bandwidth_gbs: 0"),
           "measured.memory_bandwidth_gbs: 0 must be > 0");
    refuse("measured bandwidth -5", MEAS(", memory_bandwidth_gbs: -5"),
           "measured.memory_bandwidth_gbs: -5 must be > 0");
    refuse("measured bandwidth unit", MEAS(", memory_bandwidth_gbs: 38.2GB"),
           "measured.memory_bandwidth_gbs: '38.2GB' is not a finite decimal number");
    refuse("measured bandwidth nan", MEAS(", memory_bandwidth_gbs: .nan"),
           "measured.memory_bandwidth_gbs: '.nan'");
    refuse("measured bandwidth huge", MEAS(", memory_bandwidth_gbs: 1e7"),
           "measured.memory_bandwidth_gbs: 1e+07 must be > 0 and below");
    refuse("measured bf16 0", MEAS(", tflops: {bf16: 0}"), "measured.tflops.bf16: 0 must be > 0");
    refuse("measured fp8 text", MEAS(", tflops: {fp8: fast}"), "measured.tflops.fp8: 'fast'");
    refuse("measured int8", MEAS(", tflops: {int8: 5}"), "measured.tflops.int8");
    refuse("measured link 0", MEAS(", links: {intra_node: {bandwidth_gbs: 0}}"),
           "measured.links.intra_node.bandwidth_gbs: 0 must be > 0");
    refuse("measured link no bandwidth", MEAS(", links: {inter_node: {latency_us: 3}}"),
           "measured.links.inter_node.bandwidth_gbs: missing required field");
    refuse("measured latency -1",
           MEAS(", links: {inter_node: {bandwidth_gbs: 1, latency_us: -1}}"),
           "measured.links.inter_node.latency_us: -1 must be >= 0");
    refuse("measured latency inf",
           MEAS(", links: {inter_node: {bandwidth_gbs: 1, latency_us: .inf}}"),
           "measured.links.inter_node.latency_us");
#undef MEAS
    /* mc_cluster_check on a filled description (after overrides) */
    mc_err_clear(&e);
    CHECKF(mc_cluster_parse(good, strlen(good), "inline.yaml", &c, &e) == MC_OK, "%s", e.msg);
    c.measured.memory_bandwidth_gbs = -1;
    mc_err_clear(&e);
    CHECKF(mc_cluster_check(&c, "checked", &e) != MC_OK &&
               strstr(e.msg, "measured.memory_bandwidth_gbs"),
           "check after override: '%s'", e.msg);
    c.measured.memory_bandwidth_gbs = 7.5;
    c.measured.source[0] = '\0';
    mc_err_clear(&e);
    CHECKF(mc_cluster_check(&c, "checked", &e) != MC_OK && strstr(e.msg, "without a source"),
           "figures without a source: '%s'", e.msg);
}

static void refuse_file(const char *file, const char *needle)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/clusters/%s", fx, file);
    mc_cluster c;
    memset(&c, 0x5a, sizeof c);
    mc_err e;
    mc_err_clear(&e);
    mc_status st = mc_cluster_load(path, &c, &e);
    CHECKF(st != MC_OK, "%s: accepted (tp %d pp %d dp %d ep %d)", file, c.tp, c.pp, c.dp, c.ep);
    CHECKF(st == MC_OK || (strstr(e.msg, file) && strstr(e.msg, needle)),
           "%s: message '%s' does not name the file and '%s'", file, e.msg, needle);
    CHECKF(st == MC_OK || all_zero(&c), "%s: output not cleared after a failure", file);
    printf("  refused %-28s %s\n", file, e.msg);
}

static void test_fixture_files(void)
{
    refuse_file("bad-empty.yaml", "empty cluster config");
    refuse_file("bad-comment-only.yaml", "empty cluster config");
    refuse_file("bad-null.yaml", "empty cluster config");
    refuse_file("bad-scalar.yaml", "not a YAML mapping");
    refuse_file("bad-list.yaml", "not a YAML mapping");
    refuse_file("bad-two-docs.yaml", "more than one YAML document");
    refuse_file("bad-empty-mappings.yaml", "device.memory_gib");
    refuse_file("bad-tp-zero.yaml", "parallel.tp");
    refuse_file("bad-pp-zero.yaml", "parallel.pp");
    refuse_file("bad-ep-zero.yaml", "parallel.ep");
    refuse_file("bad-dp-zero.yaml", "parallel.dp");
    refuse_file("bad-dp-negative.yaml", "parallel.dp");
    refuse_file("bad-nodes-zero.yaml", "nodes");
    refuse_file("bad-tp-fraction.yaml", "parallel.tp");
    refuse_file("bad-tp-huge.yaml", "parallel.tp");
    refuse_file("bad-nan.yaml", "workspace_gib");
    refuse_file("bad-deep.yaml", "nested deeper");
    refuse_file("bad-measured-date.yaml", "measured.date: '2026-02-30'");
    refuse_file("bad-measured-zero.yaml", "measured.memory_bandwidth_gbs: 0 must be > 0");
    refuse_file("bad-measured-empty.yaml", "measured: no figures");
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "test_cluster_bad: timed out (blocked on a FIFO or slow input)\n";
    ssize_t w = write(2, m, sizeof m - 1);
    (void)w;
    _exit(1);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void test_not_regular_and_big(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/mc-cluster-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        CHECKF(0, "cannot make a temporary folder in %s", dir);
        return;
    }
    char fifo[4200], big[4200];
    snprintf(fifo, sizeof fifo, "%s/fifo.yaml", dir);
    snprintf(big, sizeof big, "%s/big.yaml", dir);
    mc_cluster c;
    mc_err e;
    signal(SIGALRM, on_alarm);
    alarm(20); /* the old loader blocked in open() on a FIFO forever */
    if (mkfifo(fifo, 0600) == 0) {
        mc_err_clear(&e);
        CHECK(mc_cluster_load(fifo, &c, &e) != MC_OK);
        CHECKF(strstr(e.msg, fifo) && strstr(e.msg, "FIFO"), "FIFO message: '%s'", e.msg);
        printf("  refused FIFO: %s\n", e.msg);
        unlink(fifo);
    }
    mc_err_clear(&e);
    CHECK(mc_cluster_load(dir, &c, &e) != MC_OK);
    CHECKF(strstr(e.msg, dir) && strstr(e.msg, "directory"), "directory message: '%s'", e.msg);
    mc_err_clear(&e);
    CHECK(mc_cluster_load("/nonexistent/cluster.yaml", &c, &e) != MC_OK);
    CHECKF(strstr(e.msg, "/nonexistent/cluster.yaml"), "missing file message: '%s'", e.msg);

    /* 1 MiB of deeply nested brackets: refused at once (libyaml alone
     * takes time growing with the square of the depth) */
    size_t n = MC_CLUSTER_MAX_BYTES;
    char *buf = malloc(n + 1);
    CHECK(buf != NULL);
    if (buf) {
        const char *pat[] = {"[", "{", "{a: ", "- ", "a:\n "};
        for (size_t k = 0; k < sizeof pat / sizeof pat[0]; k++) {
            size_t pl = strlen(pat[k]);
            for (size_t i = 0; i < n; i++)
                buf[i] = pat[k][i % pl];
            double t0 = now();
            mc_err_clear(&e);
            CHECKF(mc_cluster_parse(buf, n, "deep.yaml", &c, &e) != MC_OK, "pattern %zu accepted",
                   k);
            double dt = now() - t0;
            /* linear work takes at most ~0.7 s here under ASan (pattern 4,
             * read through by libyaml); quadratic work on 1 MiB takes hours
             * (5 s at 32 KiB): the bound leaves room for a loaded machine */
            CHECKF(dt < 10.0, "1 MiB of pattern %zu took %.2f s", k, dt);
            printf("  1 MiB of pattern %zu: %.3f s: %s\n", k, dt, e.msg);
        }
        /* one byte over the limit is refused by the loader */
        memset(buf, '#', n + 1);
        FILE *fp = fopen(big, "wb");
        CHECK(fp != NULL);
        if (fp) {
            CHECK(fwrite(buf, 1, n + 1, fp) == n + 1);
            fclose(fp);
            mc_err_clear(&e);
            CHECK(mc_cluster_load(big, &c, &e) != MC_OK);
            CHECKF(strstr(e.msg, big) && strstr(e.msg, "limit"), "big file message: '%s'", e.msg);
            unlink(big);
        }
        free(buf);
    }
    alarm(0);
    rmdir(dir);
}

/* Every shipped config parses the same from memory as from its file. */
static void test_shipped_from_memory(void)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/../../cluster-configs", fx);
    DIR *dp = opendir(dir);
    CHECK(dp != NULL);
    int n = 0;
    struct dirent *de;
    while (dp && (de = readdir(dp))) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 5, ".yaml"))
            continue;
        char path[8400];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *fp = fopen(path, "rb");
        char text[65536];
        size_t len = fp ? fread(text, 1, sizeof text, fp) : 0;
        if (fp)
            fclose(fp);
        mc_cluster a, b;
        mc_err e;
        mc_err_clear(&e);
        CHECKF(mc_cluster_load(path, &a, &e) == MC_OK, "%s", e.msg);
        mc_err_clear(&e);
        CHECKF(mc_cluster_parse(text, len, path, &b, &e) == MC_OK, "%s", e.msg);
        CHECKF(!memcmp(&a, &b, sizeof a), "%s: file and memory parses differ", de->d_name);
        CHECKF(a.tp >= 1 && a.pp >= 1 && a.dp >= 1 && a.ep >= 1 &&
                   a.tp * a.pp * a.dp == a.nodes * a.devices_per_node,
               "%s: layout tp %d pp %d dp %d ep %d", de->d_name, a.tp, a.pp, a.dp, a.ep);
        n++;
    }
    if (dp)
        closedir(dp);
    CHECK(n >= 14); /* 7 data-centre / simulated + 7 machines people own */
}

int main(int argc, char **argv)
{
    fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "no fixtures folder\n");
        return 1;
    }
    test_degenerate_documents();
    test_numbers();
    test_measured();
    test_fixture_files();
    test_not_regular_and_big();
    test_shipped_from_memory();
    return check_report("test_cluster_bad");
}
