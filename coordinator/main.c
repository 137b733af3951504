/* main.c - the moecluster binary: git-style subcommands. */
#include "cli.h"
#include "log.h"
#include "outfile.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MC_VERSION
#define MC_VERSION "0.0.0"
#endif

typedef struct {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} command;

static const command commands[] = {
    {"score", mc_cmd_score, "logits for every position of token sequences (safetensors in/out)"},
    {"generate", mc_cmd_generate, "generate token ids from a prompt"},
    {"plan", mc_cmd_plan, "does a model fit a cluster: layout, memory per rank, speed estimate"},
    {"synth", mc_cmd_synth, "write a random-weight checkpoint of a real model's shape"},
    {"shard", mc_cmd_shard, "cut a checkpoint into per-rank folders following the plan"},
    {"verify", mc_cmd_verify, "re-check the checksums of a shard folder"},
    {"bench", mc_cmd_bench, "prefill/decode speed, weight bytes per step, bandwidth and FMA probes"},
    {"tokenize", mc_cmd_tokenize, "text to token ids (or back, --decode) with a tokenizer.json"},
    {"worker", mc_cmd_worker, "serve step plans to a coordinator over ZeroMQ (under mpirun)"},
    {"serve", mc_cmd_serve, "OpenAI-compatible HTTP server over a worker group"},
    {"batch", mc_cmd_batch, "run an OpenAI batch file (JSONL) through a worker group"},
    {"cluster-sim", mc_cmd_cluster_sim, "emulated nodes in network namespaces over shaped TCP links"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: moecluster <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "  %-10s %s\n", "version", "print the version");
    fprintf(out, "\nRun 'moecluster <command> --help' for a command's options.\n");
}

/* Digits only, with a leading '-' where negatives are allowed: strtoll and
 * strtod alone would take leading spaces, '+', hex and "inf". */
static int plain_int(const char *s, int neg_ok)
{
    if (neg_ok && *s == '-')
        s++;
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* [-]digits[.digits] or [-].digits, then an optional exponent e[+-]digits. */
static int plain_float(const char *s, int neg_ok)
{
    if (neg_ok && *s == '-')
        s++;
    int digits = 0;
    for (; *s >= '0' && *s <= '9'; s++)
        digits++;
    if (*s == '.')
        for (s++; *s >= '0' && *s <= '9'; s++)
            digits++;
    if (!digits)
        return 0;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (*s < '0' || *s > '9')
            return 0;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    return *s == 0;
}

int mc_arg_int(const char *cmd, const char *flag, const char *s, long long lo, long long hi,
               long long *out)
{
    char *end = NULL;
    long long v = 0;
    int ok = plain_int(s, lo < 0);
    if (ok) {
        errno = 0;
        v = strtoll(s, &end, 10);
        ok = !errno && !*end && v >= lo && v <= hi;
    }
    if (!ok) {
        fprintf(stderr, "moecluster %s: %s: '%s' is not an integer in [%lld, %lld]\n", cmd, flag, s,
                lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int mc_arg_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                 double *out)
{
    char *end = NULL;
    double v = 0;
    int ok = plain_float(s, lo < 0);
    if (ok) {
        errno = 0;
        v = strtod(s, &end);
        ok = !errno && !*end && isfinite(v) && v >= lo && v <= hi;
    }
    if (!ok) {
        fprintf(stderr, "moecluster %s: %s: '%s' is not a number in [%g, %g]\n", cmd, flag, s, lo,
                hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* Everything a command printed must have reached stdout: a full disk or
 * /dev/full is an error, not exit 0 with the results lost. */
static int finish_stdout(const char *cmd, int rc)
{
    const char *why = NULL;
    int bad = mc_stdout_flush(&why);
    errno = 0;
    if (fclose(stdout) != 0 && !bad) {
        bad = 1;
        why = errno ? strerror(errno) : "write error";
    }
    if (bad && rc == 0) { /* (a command that failed has said why already) */
        fprintf(stderr, "moecluster%s%s: cannot write to standard output: %s\n", cmd ? " " : "",
                cmd ? cmd : "", why);
        return 1;
    }
    return rc;
}

int main(int argc, char **argv)
{
    mc_log_init(0);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return finish_stdout(NULL, 0);
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("moecluster %s\n", MC_VERSION);
        return finish_stdout("version", 0);
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name))
            return finish_stdout(commands[i].name, commands[i].run(argc - 1, argv + 1));
    fprintf(stderr, "moecluster: '%s' is not a command\n\n", cmd);
    usage(stderr);
    return 2;
}
