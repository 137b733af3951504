/* cmd_shard.c - `moecluster shard` (cut a checkpoint into per-rank folders)
 * and `moecluster verify` (re-check their checksums). */
#include "cli.h"
#include "cluster.h"
#include "outfile.h"
#include "shard_out.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void shard_usage(FILE *out)
{
    fprintf(out,
            "usage: moecluster shard --model DIR --cluster FILE --out DIR\n"
            "                        [--weights bf16|fp8|q8_0|q4_k] [--restart]\n\n"
            "  --model    Hugging Face or Mistral checkpoint folder\n"
            "  --cluster  cluster YAML (cluster-configs/): the plan decides who holds what\n"
            "  --out      output folder: plan.json, rank-NNNNN/ per rank, manifest.json\n"
            "  --weights  convert the linear weights: bf16 (dequantize FP8), fp8 (DeepSeek\n"
            "             128x128 blocks), q8_0 or q4_k (llama.cpp blocks; rows that do not\n"
            "             split into blocks fall back as plan counts); default: keep as stored\n"
            "  --restart  redo every rank, even when --out holds another plan or shards of a\n"
            "             source that changed since\n"
            "Rerunning with the same plan, format and unchanged source resumes: complete ranks\n"
            "whose files still match their checksums are kept. Another plan, format or source\n"
            "in --out is refused unless --restart.\n");
}

int mc_cmd_shard(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                          {"cluster", required_argument, 0, 'c'},
                                          {"out", required_argument, 0, 'o'},
                                          {"weights", required_argument, 0, 'w'},
                                          {"restart", no_argument, 0, 'r'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    mc_shard_opts o = {.fmt = MC_SHARD_KEEP, .progress = -1};
    const char *cluster = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case 'c': cluster = optarg; break;
        case 'o': o.out_dir = optarg; break;
        case 'r': o.restart = 1; break;
        case 'w':
            if (!strcmp(optarg, "bf16"))
                o.fmt = MC_SHARD_BF16;
            else if (!strcmp(optarg, "fp8"))
                o.fmt = MC_SHARD_FP8;
            else if (!strcmp(optarg, "q8_0"))
                o.fmt = MC_SHARD_Q8_0;
            else if (!strcmp(optarg, "q4_k"))
                o.fmt = MC_SHARD_Q4_K;
            else {
                fprintf(stderr, "moecluster shard: --weights: '%s' is not bf16, fp8, q8_0 or q4_k\n",
                        optarg);
                return 2;
            }
            break;
        case 'h': shard_usage(stdout); return 0;
        default: shard_usage(stderr); return 2;
        }
    }
    if (optind < argc || !o.model_dir || !cluster || !o.out_dir) {
        fprintf(stderr, "moecluster shard: --model, --cluster and --out are required\n");
        shard_usage(stderr);
        return 2;
    }
    mc_err err;
    mc_err_clear(&err);
    mc_cluster cl;
    if (mc_cluster_load(cluster, &cl, &err) != MC_OK) {
        fprintf(stderr, "moecluster shard: %s\n", err.msg);
        return 1;
    }
    o.cluster = &cl;
    /* the output folder: a directory (or new), never the model folder or inside it */
    if (mc_out_check_dir(o.out_dir, o.model_dir, "model folder", true, &err) != MC_OK) {
        fprintf(stderr, "moecluster shard: %s\n", err.msg);
        return 1;
    }
    if (mc_shard_write(&o, &err) != MC_OK) {
        fprintf(stderr, "moecluster shard: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "moecluster shard: wrote %d rank folders to %s\n", mc_cluster_world(&cl),
            o.out_dir);
    return 0;
}

/* The one usage text of verify: printed by --help and on usage errors. */
static const char verify_usage_text[] = "usage: moecluster verify --shards DIR\n";

int mc_cmd_verify(int argc, char **argv)
{
    static const struct option opts[] = {{"shards", required_argument, 0, 's'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    const char *dir = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': dir = optarg; break;
        case 'h': fputs(verify_usage_text, stdout); return 0;
        default: fputs(verify_usage_text, stderr); return 2;
        }
    }
    if (optind < argc || !dir) {
        fputs(verify_usage_text, stderr);
        return 2;
    }
    mc_err err;
    mc_err_clear(&err);
    long bad = 0;
    if (mc_shard_verify(dir, -1, &bad, &err) != MC_OK) {
        fprintf(stderr, "moecluster verify: %s\n", err.msg);
        return 1;
    }
    if (bad) {
        fprintf(stderr, "moecluster verify: %ld problem%s found (listed above)\n", bad,
                bad == 1 ? "" : "s");
        return 1;
    }
    printf("moecluster verify: the manifest matches the plan and the files; all checksums match\n");
    return 0;
}
