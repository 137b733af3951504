/* cmd_synth.c - `moecluster synth`: a random-weight checkpoint of a real
 * model's shape in its on-disk format. */
#include "cli.h"
#include "synth.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

/* The one usage text: printed by --help and on usage errors. */
static const char synth_usage_text[] =
    "usage: moecluster synth --config CONFIG_FILE --out DIR [--layers N]\n"
    "                        [--weights bf16|fp8] [--seed S] [--max-file-gib G]\n\n"
    "  --config        a Hugging Face config.json or a Mistral params.json\n"
    "  --out           folder to write (config, sharded safetensors, index); created if\n"
    "                  missing, never the folder holding --config\n"
    "  --layers        keep the full width, keep only the first N layers\n"
    "  --weights       bf16 (default) or fp8 (DeepSeek's e4m3 with 128x128 block scales)\n"
    "  --seed          random seed (default 0)\n"
    "  --max-file-gib  split the weights into files of at most this size (default 4)\n";

static void synth_usage(FILE *out) { fputs(synth_usage_text, out); }

int mc_cmd_synth(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                          {"out", required_argument, 0, 'o'},
                                          {"layers", required_argument, 0, 'l'},
                                          {"weights", required_argument, 0, 'w'},
                                          {"seed", required_argument, 0, 's'},
                                          {"max-file-gib", required_argument, 0, 'f'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    mc_synth_opts o = {.progress = -1};
    long long layers = 0, seed = 0;
    double gib = 4;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': o.config_path = optarg; break;
        case 'o': o.out_dir = optarg; break;
        case 'l':
            if (mc_arg_int("synth", "--layers", optarg, 1, 4096, &layers))
                return 2;
            break;
        case 'w':
            if (!strcmp(optarg, "fp8"))
                o.fp8 = 1;
            else if (strcmp(optarg, "bf16")) {
                fprintf(stderr, "moecluster synth: --weights: '%s' is not bf16 or fp8\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (mc_arg_int("synth", "--seed", optarg, 0, INT64_MAX, &seed))
                return 2;
            break;
        case 'f':
            if (mc_arg_float("synth", "--max-file-gib", optarg, 0.0001, 1024, &gib))
                return 2;
            break;
        case 'h': synth_usage(stdout); return 0;
        default: synth_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moecluster synth: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o.config_path || !o.out_dir) {
        fprintf(stderr, "moecluster synth: --config and --out are required\n");
        synth_usage(stderr);
        return 2;
    }
    o.layers = (int)layers;
    o.seed = (uint64_t)seed;
    o.max_file_bytes = (uint64_t)(gib * 1073741824.0);
    mc_err err;
    mc_err_clear(&err);
    if (mc_synth(&o, &err) != MC_OK) {
        fprintf(stderr, "moecluster synth: %s\n", err.msg);
        return 1;
    }
    return 0;
}
