/* test_config_bad.c - the config readers refuse absurd values instead of
 * crashing or computing a wrong answer, and still accept every good config.
 *
 * - Every FAMILY__FIELD__CASE.json in malformed/configs/ (written by
 *   make_bad_configs.py there) is refused with one line naming the file and
 *   FIELD. Each load runs in a child process under alarm(), so a crash
 *   (SIGFPE) or a hang is reported as a failure instead of ending the test.
 * - The two reported SIGFPEs (decoder_sparse_step 0, moe_layer_freq 0), as a
 *   checkpoint folder, go through what `moecluster plan --model DIR` does
 *   (mc_model_desc_load + mc_plan_build) and end in a refusal, not a signal.
 * - Every good fixture config (the configs folder, models/NAME/config.json, and a
 *   Mistral params.json) is accepted.
 * - A FIFO named config.json is refused at once instead of blocking.
 */
#include "check.h"
#include "cluster.h"
#include "model_config.h"
#include "plan.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *fx;

/* Exit codes of a child running one load. */
enum { R_REFUSED_OK = 10, R_ACCEPTED, R_BAD_MESSAGE };

/* Loads `path` (a file or folder) in a child; with `plan`, also builds a plan
 * for one CPU rank as `moecluster plan` does. The child checks the message
 * holds `want` and `file` and is one line. Returns the child's exit code, or
 * 128 + the signal that ended it; `msg` receives the error line. */
static int run_child(const char *path, int plan, const char *want, const char *file, char *msg,
                     size_t msg_size)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(fds[0]);
        alarm(5); /* a hang becomes SIGALRM */
        mc_err e;
        mc_err_clear(&e);
        mc_model_desc d;
        mc_status st = mc_model_desc_load(path, &d, &e);
        if (st == MC_OK && plan) {
            mc_cluster cl;
            mc_cluster_single_cpu(&cl, 64);
            mc_plan_opts o = {.weights = MC_WFMT_BF16,
                              .max_model_len = d.max_pos < 8192 ? d.max_pos : 8192,
                              .max_num_seqs = 16,
                              .kv_bytes_per_elem = 2};
            mc_plan *p = NULL;
            st = mc_plan_build(&d, &cl, &o, &p, &e);
            mc_plan_free(p);
        }
        ssize_t wr = write(fds[1], e.msg, strlen(e.msg));
        (void)wr;
        if (st == MC_OK)
            _exit(R_ACCEPTED);
        if (strchr(e.msg, '\n') || !strstr(e.msg, want) || !strstr(e.msg, file))
            _exit(R_BAD_MESSAGE);
        _exit(R_REFUSED_OK);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < msg_size && (r = read(fds[0], msg + n, msg_size - 1 - n)) > 0)
        n += (size_t)r;
    msg[n] = '\0';
    close(fds[0]);
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void expect_refused(const char *path, int plan, const char *field, const char *file)
{
    char msg[1024];
    int rc = run_child(path, plan, field, file, msg, sizeof msg);
    check_count++;
    if (rc == R_REFUSED_OK)
        return;
    check_failures++;
    if (rc == R_ACCEPTED)
        fprintf(stderr, "FAIL %s: accepted (expected a refusal naming '%s')\n", path, field);
    else if (rc == R_BAD_MESSAGE)
        fprintf(stderr, "FAIL %s: message does not name '%s' and the file on one line: %s\n",
                path, field, msg);
    else if (rc > 128)
        fprintf(stderr, "FAIL %s: killed by signal %d (%s)\n", path, rc - 128,
                strsignal(rc - 128));
    else
        fprintf(stderr, "FAIL %s: child ended with %d\n", path, rc);
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

/* FAMILY__FIELD__CASE.json -> FIELD */
static int field_of(const char *name, char *field, size_t size)
{
    const char *a = strstr(name, "__");
    const char *b = a ? strstr(a + 2, "__") : NULL;
    if (!b || (size_t)(b - a - 2) >= size || b == a + 2)
        return -1;
    memcpy(field, a + 2, (size_t)(b - a - 2));
    field[b - a - 2] = '\0';
    return 0;
}

static void test_malformed(void)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/malformed/configs", fx);
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    if (!d)
        return;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!has_suffix(de->d_name, ".json"))
            continue;
        char field[256], path[4500];
        if (field_of(de->d_name, field, sizeof field) != 0) {
            check_count++, check_failures++;
            fprintf(stderr, "FAIL %s: name is not FAMILY__FIELD__CASE.json\n", de->d_name);
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        expect_refused(path, 0, field, de->d_name);
        n++;
    }
    closedir(d);
    printf("malformed configs: %d refused as expected or reported above\n", n);
    CHECK(n >= 60); /* the folder is there and holds the generated cases */
}

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[8192];
    size_t n;
    int ok = in && out;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

/* The reported SIGFPEs, as `plan --model DIR` meets them. */
static void test_plan_refuses(const char *tmp)
{
    static const char *cases[][2] = {
        {"qwen3_moe__decoder_sparse_step__zero.json", "decoder_sparse_step"},
        {"deepseek_v3__moe_layer_freq__zero.json", "moe_layer_freq"},
        {"llama4__interleave_moe_layer_step__zero.json", "interleave_moe_layer_step"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char src[4200], mdir[4200], cfg[4300];
        snprintf(src, sizeof src, "%s/malformed/configs/%s", fx, cases[i][0]);
        snprintf(mdir, sizeof mdir, "%s/model%zu", tmp, i);
        snprintf(cfg, sizeof cfg, "%s/config.json", mdir);
        CHECK(mkdir(mdir, 0755) == 0);
        CHECK(copy_file(src, cfg) == 0);
        expect_refused(mdir, 1, cases[i][1], "config.json");
        unlink(cfg);
        rmdir(mdir);
    }
}

static void expect_accepted(const char *path)
{
    mc_err e;
    mc_err_clear(&e);
    mc_model_desc d;
    mc_status st = mc_model_desc_load(path, &d, &e);
    CHECK(st == MC_OK);
    if (st != MC_OK)
        fprintf(stderr, "FAIL %s: a good config was refused: %s\n", path, e.msg);
}

static void test_good(const char *tmp)
{
    static const char *configs[] = {"deepseek-v3.config.json", "deepseek-v3.2.config.json",
                                    "llama4-maverick.config.json", "qwen3-235b-a22b.config.json"};
    char path[4500];
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
        snprintf(path, sizeof path, "%s/configs/%s", fx, configs[i]);
        expect_accepted(path);
    }
    char models[4200];
    snprintf(models, sizeof models, "%s/models", fx);
    DIR *d = opendir(models);
    CHECK(d != NULL);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s/config.json", models, de->d_name);
        if (access(path, F_OK) == 0) {
            expect_accepted(path);
            n++;
        }
    }
    if (d)
        closedir(d);
    CHECK(n >= 7);
    /* Mistral's native format (the model of models/mistral4-tiny) */
    snprintf(path, sizeof path, "%s/params.json", tmp);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"dim\": 256, \"n_layers\": 3, \"n_heads\": 4, \"n_kv_heads\": 4, \"hidden_dim\": "
              "512, \"norm_eps\": 1e-06, \"vocab_size\": 1024, \"rope_theta\": 10000.0, "
              "\"q_lora_rank\": 96, \"kv_lora_rank\": 64, \"qk_nope_head_dim\": 32, "
              "\"qk_rope_head_dim\": 16, \"v_head_dim\": 32, \"max_position_embeddings\": 4096, "
              "\"yarn\": {\"factor\": 128.0, \"original_max_position_embeddings\": 16, "
              "\"beta\": 32.0, \"alpha\": 1.0}, \"llama_4_scaling\": "
              "{\"original_max_position_embeddings\": 16, \"beta\": 0.1}, \"moe\": "
              "{\"num_experts\": 16, \"num_experts_per_tok\": 4, \"num_shared_experts\": 1, "
              "\"expert_hidden_dim\": 64, \"num_expert_groups\": 1, "
              "\"num_expert_groups_per_tok\": 1}}\n",
              f);
        fclose(f);
        expect_accepted(path);
        unlink(path);
    }
}

/* Llama 4 ships low_freq_factor == high_freq_factor (1.0): accepted, and the
 * frequencies are each either the unscaled one or it divided by factor (the
 * smoothing band is empty), all finite. */
static void test_llama3_equal_factors(void)
{
    mc_rope_desc r = {.style = MC_ROPE_INTERLEAVED,
                      .scaling = MC_ROPE_SCALE_LLAMA3,
                      .dim = 32,
                      .theta = 500000.0,
                      .factor = 16.0,
                      .orig_max_pos = 8192,
                      .low_freq_factor = 1.0,
                      .high_freq_factor = 1.0};
    double f[16];
    mc_rope_inv_freq(&r, f);
    int bad = 0;
    for (int i = 0; i < 16; i++) {
        double base = 1.0 / pow(500000.0, 2.0 * i / 32);
        if (!isfinite(f[i]) ||
            (fabs(f[i] - base) > 1e-12 * base && fabs(f[i] - base / 16) > 1e-12 * base)) {
            fprintf(stderr, "FAIL llama3 inv_freq[%d] = %g (unscaled %g)\n", i, f[i], base);
            bad = 1;
        }
    }
    CHECK(!bad);
}

static void test_fifo(const char *tmp)
{
    char mdir[4200], cfg[4300];
    snprintf(mdir, sizeof mdir, "%s/fifo_model", tmp);
    snprintf(cfg, sizeof cfg, "%s/config.json", mdir);
    CHECK(mkdir(mdir, 0755) == 0);
    CHECK(mkfifo(cfg, 0644) == 0);
    /* as a folder and as the file itself (mc_model_desc_load reads both with
     * mc_config_read, as synth does); nobody ever writes to the FIFO */
    expect_refused(mdir, 0, "FIFO", "config.json");
    expect_refused(cfg, 0, "FIFO", "config.json");
    unlink(cfg);
    rmdir(mdir);
}

int main(int argc, char **argv)
{
    fx = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!fx) {
        fprintf(stderr, "usage: test_config_bad FIXTURES_DIR\n");
        return 2;
    }
    alarm(120); /* the whole test, should anything in this process block */
    char tmp[] = "/tmp/mc_config_bad_XXXXXX";
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 2;
    }
    test_malformed();
    test_plan_refuses(tmp);
    test_good(tmp);
    test_llama3_equal_factors();
    test_fifo(tmp);
    rmdir(tmp);
    return check_report("test_config_bad");
}
