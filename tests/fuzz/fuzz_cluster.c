/* fuzz_cluster.c - libFuzzer target for the cluster YAML reader.
 *
 * Feeds the input to mc_cluster_parse. A rejected input must come back with
 * a one-line message (no control characters) naming the file and a zeroed
 * description; an accepted one must pass mc_cluster_check and have a layout
 * that adds up (every count >= 1, tp * pp * dp = the device count, ep
 * dividing tp * dp) and finite numbers. Any violation aborts, so the fuzzer
 * (or fuzz_driver.c) reports it like a crash. */
#include "cluster.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_cluster: invariant violated: %s (%.300s)\n", what, msg);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const mc_cluster zero;
    mc_cluster c;
    memset(&c, 0x5a, sizeof c);
    mc_err err;
    mc_err_clear(&err);
    mc_status st = mc_cluster_parse((const char *)data, size, "fuzz.yaml", &c, &err);
    if (st != MC_OK) {
        if (err.status != st || !strstr(err.msg, "fuzz.yaml"))
            fail("failure without a message naming the file", err.msg);
        for (const char *q = err.msg; *q; q++)
            if ((unsigned char)*q < 0x20)
                fail("control character in the message", err.msg);
        if (memcmp(&c, &zero, sizeof c))
            fail("description not cleared after a failure", err.msg);
        return 0;
    }
    mc_err_clear(&err);
    if (mc_cluster_check(&c, "fuzz.yaml", &err) != MC_OK)
        fail("accepted a description that mc_cluster_check refuses", err.msg);
    long long world = (long long)c.nodes * c.devices_per_node;
    if (c.tp < 1 || c.pp < 1 || c.dp < 1 || c.ep < 1 || (long long)c.tp * c.pp * c.dp != world ||
        (c.tp * c.dp) % c.ep)
        fail("accepted a layout that does not add up", c.name);
    if (!memchr(c.name, 0, sizeof c.name) || !memchr(c.device.name, 0, sizeof c.device.name) ||
        !memchr(c.intra.kind, 0, sizeof c.intra.kind) ||
        !memchr(c.inter.kind, 0, sizeof c.inter.kind))
        fail("unterminated name", "");
    const double nums[] = {c.device.memory_gib,  c.device.memory_bandwidth_gbs,
                           c.device.bf16_tflops, c.device.fp8_tflops,
                           c.device.int8_tops,   c.intra.bandwidth_gbs,
                           c.intra.latency_us,   c.inter.bandwidth_gbs,
                           c.inter.latency_us,   c.workspace_gib};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        if (!isfinite(nums[i]) || nums[i] < 0)
            fail("accepted a number that is not finite and >= 0", c.name);
    return 0;
}
