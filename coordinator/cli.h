/* cli.h - subcommands of the moecluster binary and shared argument helpers. */
#ifndef MC_CLI_H
#define MC_CLI_H

#include <stdint.h>

int mc_cmd_score(int argc, char **argv);
int mc_cmd_generate(int argc, char **argv);
int mc_cmd_plan(int argc, char **argv);
int mc_cmd_synth(int argc, char **argv);
int mc_cmd_shard(int argc, char **argv);
int mc_cmd_verify(int argc, char **argv);
int mc_cmd_bench(int argc, char **argv);
int mc_cmd_tokenize(int argc, char **argv);
int mc_cmd_worker(int argc, char **argv);
int mc_cmd_serve(int argc, char **argv);
int mc_cmd_batch(int argc, char **argv);
int mc_cmd_cluster_sim(int argc, char **argv);

/* Strict numeric parsing for flags: the whole string must be a plain number
 * in [lo, hi] (integers: decimal digits, with a leading '-' only when lo < 0;
 * floats: [-]digits[.digits][e[+-]digits]; no spaces, '+', hex, inf or nan);
 * prints "moecluster CMD: --flag: ..." and returns -1 otherwise. */
int mc_arg_int(const char *cmd, const char *flag, const char *s, long long lo, long long hi,
               long long *out);
int mc_arg_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                 double *out);

#endif
