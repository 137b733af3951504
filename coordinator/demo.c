/* demo.c - the demo model (demo.h): a small random-weight DeepSeek-V3-shaped
 * checkpoint with the bundled DeepSeek-V3 tokenizer, made once per recipe
 * and cached.
 *
 * Folder layout (CACHE/demo-deepseek-v3-v1-HHHHHHHH, about 75 MB):
 *   config.json, model-00001-of-00001.safetensors, model.safetensors.index.json
 *                        written by mc_synth from DEMO_CONFIG (seed 0, bf16)
 *   tokenizer.json, tokenizer_config.json   copied from the tokenizer folder
 *   generation_config.json                  {"bos_token_id": 0, "eos_token_id": [1]}
 * HHHHHHHH is a hash of the recipe (DEMO_CONFIG, the generation config and
 * DEMO_VERSION), so a changed recipe makes a new folder next to the old one.
 * The folder is made as NAME.tmp-PID and renamed when complete; a NAME.tmp-PID
 * left by a process that died is removed by the next one.
 *
 * The tokenizer folder: $MC_DATA_DIR/tokenizers/deepseek-v3 when MC_DATA_DIR
 * is set (nothing else is tried then), else the installed copy
 * (MC_DEMO_TOK_INSTALLED, share/moecluster/tokenizers/deepseek-v3 under the
 * install prefix), else the source tree's (MC_DEMO_TOK_SOURCE,
 * tests/fixtures/tokenizers/deepseek-v3); both paths come from CMake.
 */
#define _GNU_SOURCE /* nftw */
#include "demo.h"
#include "synth.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef MC_DEMO_TOK_INSTALLED
#define MC_DEMO_TOK_INSTALLED ""
#endif
#ifndef MC_DEMO_TOK_SOURCE
#define MC_DEMO_TOK_SOURCE ""
#endif

#define DEMO_VERSION "demo-deepseek-v3-v1"
#define DEMO_PATH_MAX 4096

/* DeepSeek-V3's layout (MLA, sigmoid-routed grouped experts, one dense
 * layer first) at a tiny width; the vocabulary is the tokenizer's: 128,000
 * BPE entries and added tokens up to id 128,814, padded to 129,280 as the
 * real model is. Weights: 2 x 129280 x 128 bf16 for the embedding and the
 * head (63 MiB) and about 1 MiB for the two layers. */
static const char DEMO_CONFIG[] =
    "{\n"
    " \"architectures\": [\"DeepseekV3ForCausalLM\"],\n"
    " \"model_type\": \"deepseek_v3\",\n"
    " \"vocab_size\": 129280,\n"
    " \"hidden_size\": 128,\n"
    " \"intermediate_size\": 256,\n"
    " \"moe_intermediate_size\": 64,\n"
    " \"num_hidden_layers\": 2,\n"
    " \"num_attention_heads\": 2,\n"
    " \"num_key_value_heads\": 2,\n"
    " \"n_shared_experts\": 1,\n"
    " \"n_routed_experts\": 8,\n"
    " \"routed_scaling_factor\": 2.5,\n"
    " \"kv_lora_rank\": 32,\n"
    " \"q_lora_rank\": 48,\n"
    " \"qk_rope_head_dim\": 16,\n"
    " \"v_head_dim\": 32,\n"
    " \"qk_nope_head_dim\": 32,\n"
    " \"n_group\": 4,\n"
    " \"topk_group\": 2,\n"
    " \"num_experts_per_tok\": 2,\n"
    " \"first_k_dense_replace\": 1,\n"
    " \"norm_topk_prob\": true,\n"
    " \"hidden_act\": \"silu\",\n"
    " \"max_position_embeddings\": 4096,\n"
    " \"rms_norm_eps\": 1e-06,\n"
    " \"rope_theta\": 10000.0,\n"
    " \"scoring_func\": \"sigmoid\",\n"
    " \"topk_method\": \"noaux_tc\",\n"
    " \"moe_layer_freq\": 1,\n"
    " \"ep_size\": 1,\n"
    " \"num_nextn_predict_layers\": 0,\n"
    " \"bos_token_id\": 0,\n"
    " \"eos_token_id\": 1,\n"
    " \"tie_word_embeddings\": false,\n"
    " \"attention_bias\": false,\n"
    " \"torch_dtype\": \"bfloat16\"\n"
    "}\n";

/* <｜end▁of▁sentence｜> is id 1, <｜begin▁of▁sentence｜> id 0 (tokenizer_config.json). */
static const char DEMO_GEN_CONFIG[] = "{\n \"bos_token_id\": 0,\n \"eos_token_id\": [1]\n}\n";

static const char *const TOK_FILES[] = {"tokenizer.json", "tokenizer_config.json"};

/* out = a b c; -1 when it does not fit in DEMO_PATH_MAX. */
static int path3(char *out, const char *a, const char *b, const char *c)
{
    int n = snprintf(out, DEMO_PATH_MAX, "%s%s%s", a, b, c);
    return n < 0 || n >= DEMO_PATH_MAX ? -1 : 0;
}

static uint32_t fnv1a(uint32_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* mkdir -p of path (modified in place and restored). */
static mc_status mkdirs(char *path, mc_err *err)
{
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p)
            continue;
        char c = *p;
        *p = 0;
        int r = mkdir(path, 0755);
        int e = errno;
        *p = c;
        if (r != 0 && e != EEXIST)
            return mc_err_set(err, MC_ERR_IO, "cannot create the cache folder %s: %s", path,
                              strerror(e));
        if (!c)
            break;
    }
    if (!is_dir(path))
        return mc_err_set(err, MC_ERR_IO, "cache folder %s is not a directory", path);
    return MC_OK;
}

/* The cache folder (demo.h) into out; NOT_FOUND when no variable names one. */
static mc_status cache_dir(char *out, size_t cap, mc_err *err)
{
    const char *v = getenv("MC_CACHE_DIR");
    int n;
    if (v && *v)
        n = snprintf(out, cap, "%s", v);
    else if ((v = getenv("XDG_CACHE_HOME")) && *v)
        n = snprintf(out, cap, "%s/moecluster", v);
    else if ((v = getenv("HOME")) && *v)
        n = snprintf(out, cap, "%s/.cache/moecluster", v);
    else
        return mc_err_set(err, MC_ERR_NOT_FOUND,
                          "no cache folder for the demo model: set MC_CACHE_DIR or HOME");
    if (n < 0 || (size_t)n >= cap)
        return mc_err_set(err, MC_ERR_ARG, "cache folder path is too long (%d bytes)", n);
    while (n > 1 && out[n - 1] == '/')
        out[--n] = 0;
    return mkdirs(out, err);
}

static int has_tokenizer(const char *dir)
{
    char p[DEMO_PATH_MAX];
    for (size_t i = 0; i < sizeof TOK_FILES / sizeof *TOK_FILES; i++) {
        if (path3(p, dir, "/", TOK_FILES[i]) || !is_file(p))
            return 0;
    }
    return 1;
}

/* The folder holding the DeepSeek-V3 tokenizer files (see the top). */
static mc_status tokenizer_dir(char *out, size_t cap, mc_err *err)
{
    const char *data = getenv("MC_DATA_DIR");
    if (data && *data) {
        int n = snprintf(out, cap, "%s/tokenizers/deepseek-v3", data);
        if (n < 0 || (size_t)n >= cap)
            return mc_err_set(err, MC_ERR_ARG, "MC_DATA_DIR is too long");
        if (!has_tokenizer(out))
            return mc_err_set(err, MC_ERR_NOT_FOUND,
                              "no tokenizer.json and tokenizer_config.json in %s (MC_DATA_DIR)",
                              out);
        return MC_OK;
    }
    const char *cand[] = {MC_DEMO_TOK_INSTALLED, MC_DEMO_TOK_SOURCE};
    for (size_t i = 0; i < 2; i++) {
        if (!*cand[i] || !has_tokenizer(cand[i]))
            continue;
        int n = snprintf(out, cap, "%s", cand[i]);
        if (n < 0 || (size_t)n >= cap)
            return mc_err_set(err, MC_ERR_ARG, "tokenizer folder path is too long");
        return MC_OK;
    }
    return mc_err_set(err, MC_ERR_NOT_FOUND,
                      "the DeepSeek-V3 tokenizer for the demo model is neither in %s nor in %s: "
                      "install moecluster or set MC_DATA_DIR",
                      *cand[0] ? cand[0] : "(no install path)",
                      *cand[1] ? cand[1] : "(no source path)");
}

static mc_status write_file(const char *path, const char *data, size_t len, mc_err *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return mc_err_set(err, MC_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    size_t w = fwrite(data, 1, len, f);
    int e = errno;
    if (fclose(f) != 0 || w != len)
        return mc_err_set(err, MC_ERR_IO, "cannot write %s: %s", path,
                          strerror(e ? e : errno ? errno : EIO));
    return MC_OK;
}

static mc_status copy_file(const char *from, const char *to, mc_err *err)
{
    mc_status st = MC_OK;
    char buf[1 << 16];
    FILE *in = fopen(from, "rb"), *out = NULL;
    if (!in)
        return mc_err_set(err, MC_ERR_IO, "cannot open %s: %s", from, strerror(errno));
    out = fopen(to, "wb");
    if (!out) {
        st = mc_err_set(err, MC_ERR_IO, "cannot create %s: %s", to, strerror(errno));
        goto fail;
    }
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) {
            st = mc_err_set(err, MC_ERR_IO, "cannot write %s: %s", to, strerror(errno));
            goto fail;
        }
    if (ferror(in))
        st = mc_err_set(err, MC_ERR_IO, "cannot read %s", from);
fail:
    fclose(in);
    if (out && fclose(out) != 0 && st == MC_OK)
        st = mc_err_set(err, MC_ERR_IO, "cannot write %s: %s", to, strerror(errno));
    return st;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

/* Removes a folder this module made (files and the folder; no links followed). */
static void rm_tree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Removes PREFIX.tmp-PID folders in dir whose process is gone. */
static void rm_stale(const char *dir, const char *name)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    size_t nl = strlen(name);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, name, nl) || strncmp(e->d_name + nl, ".tmp-", 5))
            continue;
        char *end;
        long pid = strtol(e->d_name + nl + 5, &end, 10);
        if (*end || pid <= 0 || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* alive (or not ours to judge) */
        char p[DEMO_PATH_MAX];
        if (!path3(p, dir, "/", e->d_name))
            rm_tree(p);
    }
    closedir(d);
}

/* Makes the folder `final` (see the top) through tmp. */
static mc_status make_demo(const char *tmp, const char *final, const char *tokdir, int quiet,
                           mc_err *err)
{
    char p[DEMO_PATH_MAX], q[DEMO_PATH_MAX];
    mc_status st;
    if (mkdir(tmp, 0755) != 0)
        return mc_err_set(err, MC_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    /* synth refuses to write into the folder holding its config: keep it beside */
    if (path3(p, tmp, ".config.json", "")) {
        st = mc_err_set(err, MC_ERR_ARG, "path %s is too long", tmp);
        goto fail;
    }
    st = write_file(p, DEMO_CONFIG, sizeof DEMO_CONFIG - 1, err);
    if (st != MC_OK)
        goto fail;
    if (!quiet)
        fprintf(stderr, "moecluster: making the demo model (about 75 MB, once) in %s\n", final);
    mc_synth_opts so = {.config_path = p, .out_dir = tmp, .seed = 0,
                        .max_file_bytes = 4ull << 30, .progress = 0};
    st = mc_synth(&so, err);
    unlink(p);
    if (st != MC_OK)
        goto fail;
    for (size_t i = 0; i < sizeof TOK_FILES / sizeof *TOK_FILES; i++) {
        if (path3(p, tokdir, "/", TOK_FILES[i]) || path3(q, tmp, "/", TOK_FILES[i])) {
            st = mc_err_set(err, MC_ERR_ARG, "path %s is too long", tmp);
            goto fail;
        }
        if ((st = copy_file(p, q, err)) != MC_OK)
            goto fail;
    }
    if (path3(q, tmp, "/generation_config.json", "")) {
        st = mc_err_set(err, MC_ERR_ARG, "path %s is too long", tmp);
        goto fail;
    }
    if ((st = write_file(q, DEMO_GEN_CONFIG, sizeof DEMO_GEN_CONFIG - 1, err)) != MC_OK)
        goto fail;
    if (rename(tmp, final) != 0) {
        if ((errno == EEXIST || errno == ENOTEMPTY) && is_dir(final)) {
            rm_tree(tmp); /* another process finished first: use its folder */
            return MC_OK;
        }
        st = mc_err_set(err, MC_ERR_IO, "cannot rename %s to %s: %s", tmp, final,
                        strerror(errno));
        goto fail;
    }
    return MC_OK;
fail:
    rm_tree(tmp);
    return st;
}

mc_status mc_demo_model_dir(char *out, size_t cap, int quiet, mc_err *err)
{
    char cache[DEMO_PATH_MAX], name[64], final[DEMO_PATH_MAX], tmp[DEMO_PATH_MAX];
    char tokdir[DEMO_PATH_MAX];
    mc_status st = cache_dir(cache, sizeof cache, err);
    if (st != MC_OK)
        return st;
    uint32_t h = fnv1a(fnv1a(fnv1a(2166136261u, DEMO_VERSION), DEMO_CONFIG), DEMO_GEN_CONFIG);
    snprintf(name, sizeof name, "%s-%08x", DEMO_VERSION, (unsigned)h);
    char pid[32];
    snprintf(pid, sizeof pid, ".tmp-%ld", (long)getpid());
    if (path3(final, cache, "/", name) || path3(tmp, final, pid, ""))
        return mc_err_set(err, MC_ERR_ARG, "cache folder path %s is too long", cache);
    if (!is_dir(final)) {
        if ((st = tokenizer_dir(tokdir, sizeof tokdir - 64, err)) != MC_OK)
            return st;
        rm_stale(cache, name);
        if ((st = make_demo(tmp, final, tokdir, quiet, err)) != MC_OK)
            return st;
    }
    size_t n = strlen(final);
    if (n >= cap)
        return mc_err_set(err, MC_ERR_ARG, "demo model path %s does not fit in %zu bytes", final,
                          cap);
    memcpy(out, final, n + 1);
    return MC_OK;
}
