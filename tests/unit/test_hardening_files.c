/* test_hardening_files.c - input files that are not what they seem:
 *   - a FIFO, a directory or a device where a safetensors file or a
 *     checkpoint index is expected is refused at once (a child process with
 *     an alarm turns a regression into a failure instead of a hang);
 *   - a mapped checkpoint file truncated by another process ends the
 *     process with one line naming the file and status 1, not a bare SIGBUS;
 *     a SIGBUS elsewhere still kills the process with the signal;
 *   - the non-finite scans find NaN / Inf in every stored dtype at the
 *     element where they were put.
 */
#define _GNU_SOURCE
#include "check.h"
#include "dtype.h"
#include "nonfinite.h"
#include "safetensors.h"
#include "sigbus.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);                                  \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

static char g_tmp[256];
static const char *g_fixtures;

static void copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    size_t n;
    while (a && b && (n = fread(buf, 1, sizeof buf, a)) > 0)
        fwrite(buf, 1, n, b);
    if (a)
        fclose(a);
    if (b)
        fclose(b);
}

/* A copy of the tiny Qwen3-MoE checkpoint folder in DIR. */
static void copy_model(const char *dir)
{
    static const char *files[] = {"config.json", "model.safetensors.index.json",
                                  "model-00001-of-00003.safetensors",
                                  "model-00002-of-00003.safetensors",
                                  "model-00003-of-00003.safetensors"};
    mkdir(dir, 0755);
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/models/qwen3-moe-tiny/%s", g_fixtures, files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        copy_file(a, b);
    }
}

/* Runs fn(arg) in a child with stderr captured and an alarm of `secs`;
 * returns the wait status and the child's stderr in msg. */
static int in_child(int (*fn)(const char *), const char *arg, int secs, char *msg, size_t mlen)
{
    int pfd[2];
    msg[0] = '\0';
    if (pipe(pfd) != 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        dup2(pfd[1], 2);
        alarm((unsigned)secs);
        _exit(fn(arg));
    }
    close(pfd[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < mlen && (r = read(pfd[0], msg + n, mlen - 1 - n)) > 0)
        n += (size_t)r;
    msg[n] = '\0';
    close(pfd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

/* ---- non-regular files ---- */

/* child: opening ARG as a checkpoint must fail (0) with a message saying
 * what the file is */
static int open_ckpt_child(const char *path)
{
    st_checkpoint *c = NULL;
    mc_err err;
    mc_err_clear(&err);
    mc_status st = st_checkpoint_open(path, &c, &err);
    fprintf(stderr, "%s\n", err.msg);
    st_checkpoint_close(c);
    return st == MC_OK ? 2 : 0;
}

static int open_file_child(const char *path)
{
    st_file *f = NULL;
    mc_err err;
    mc_err_clear(&err);
    mc_status st = st_file_open(path, &f, &err);
    fprintf(stderr, "%s\n", err.msg);
    st_file_close(f);
    return st == MC_OK ? 2 : 0;
}

static void expect_refused(int (*fn)(const char *), const char *path, const char *needle,
                           const char *what)
{
    char msg[2048];
    int status = in_child(fn, path, 5, msg, sizeof msg);
    bool hung = WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM;
    bool refused = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    CHECKF(refused && strstr(msg, needle), "%s: %s (status %#x), message '%s' should contain '%s'",
           what,
           hung      ? "HUNG (killed by the alarm)"
           : refused ? "refused without saying what the file is"
                     : "accepted or crashed",
           status, msg, needle);
}

static void test_non_regular(void)
{
    char dir[512], p[1024];
    /* a FIFO as a single safetensors file */
    snprintf(p, sizeof p, "%s/lone.safetensors", g_tmp);
    CHECK(mkfifo(p, 0600) == 0);
    expect_refused(open_file_child, p, "FIFO", "st_file_open on a FIFO");
    expect_refused(open_ckpt_child, p, "FIFO", "st_checkpoint_open on a FIFO");
    /* a directory named like a safetensors file */
    snprintf(p, sizeof p, "%s/dir.safetensors", g_tmp);
    CHECK(mkdir(p, 0755) == 0);
    expect_refused(open_file_child, p, "directory", "st_file_open on a directory");
    /* a character device */
    expect_refused(open_file_child, "/dev/null", "character device", "st_file_open on /dev/null");

    /* the index is a FIFO */
    snprintf(dir, sizeof dir, "%s/index-fifo", g_tmp);
    copy_model(dir);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    unlink(p);
    CHECK(mkfifo(p, 0600) == 0);
    expect_refused(open_ckpt_child, dir, "model.safetensors.index.json: checkpoint index is a FIFO",
                   "index is a FIFO");
    /* the index is a directory */
    unlink(p);
    CHECK(mkdir(p, 0755) == 0);
    expect_refused(open_ckpt_child, dir, "checkpoint index is a directory", "index is a directory");

    /* a shard named by the index is a FIFO, then a directory */
    snprintf(dir, sizeof dir, "%s/shard-fifo", g_tmp);
    copy_model(dir);
    snprintf(p, sizeof p, "%s/model-00002-of-00003.safetensors", dir);
    unlink(p);
    CHECK(mkfifo(p, 0600) == 0);
    expect_refused(open_ckpt_child, dir,
                   "model-00002-of-00003.safetensors: safetensors file is a FIFO",
                   "shard is a FIFO");
    unlink(p);
    CHECK(mkdir(p, 0755) == 0);
    expect_refused(open_ckpt_child, dir, "safetensors file is a directory", "shard is a directory");

    /* no index: the folder's model*.safetensors include a FIFO */
    snprintf(dir, sizeof dir, "%s/noindex-fifo", g_tmp);
    copy_model(dir);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/model-00003-of-00003.safetensors", dir);
    unlink(p);
    CHECK(mkfifo(p, 0600) == 0);
    expect_refused(open_ckpt_child, dir, "safetensors file is a FIFO", "unindexed FIFO");

    /* a missing file is still an I/O error naming it */
    snprintf(p, sizeof p, "%s/absent.safetensors", g_tmp);
    st_file *f;
    mc_err err;
    mc_err_clear(&err);
    mc_status st = st_file_open(p, &f, &err);
    CHECKF(st == MC_ERR_IO && err.status == MC_ERR_IO && strstr(err.msg, "absent.safetensors"),
           "missing file: status %d/%d, '%s'", st, err.status, err.msg);
}

/* ---- a mapped file that shrinks ---- */

static char g_victim[1024];

/* child: opens the checkpoint file ARG, truncates it, then reads every
 * tensor (which must not return) */
static int truncate_child(const char *path)
{
    st_file *f;
    mc_err err;
    mc_err_clear(&err);
    if (st_file_open(path, &f, &err) != MC_OK) {
        fprintf(stderr, "open failed: %s\n", err.msg);
        return 3;
    }
    int fd = open(path, O_WRONLY);
    if (fd < 0 || ftruncate(fd, 8) != 0) {
        fprintf(stderr, "truncate failed: %s\n", strerror(errno));
        return 4;
    }
    close(fd);
    volatile unsigned sum = 0;
    for (size_t i = 0; i < st_file_count(f); i++) {
        const st_tensor *t = st_file_tensor(f, i);
        for (uint64_t b = 0; b < t->nbytes; b++)
            sum += ((const volatile unsigned char *)t->data)[b];
    }
    fprintf(stderr, "read every tensor after the truncation (sum %u)\n", sum);
    return 5;
}

/* child: a registered file exists, but the fault is in a map of our own */
static int foreign_map_child(const char *path)
{
    /* the disposition before ours: the default (a sanitizer's would report
     * and exit instead) */
    signal(SIGBUS, SIG_DFL);
    st_file *f;
    mc_err err;
    mc_err_clear(&err);
    if (st_file_open(g_victim, &f, &err) != MC_OK) {
        fprintf(stderr, "open failed: %s\n", err.msg);
        return 3;
    }
    int fd = open(path, O_RDWR);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0)
        return 4;
    const volatile unsigned char *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED || ftruncate(fd, 0) != 0)
        return 4;
    volatile unsigned sum = 0;
    for (off_t b = 0; b < sb.st_size; b += 4096)
        sum += p[b];
    fprintf(stderr, "read the truncated map (sum %u)\n", sum);
    return 5;
}

static void test_shrunk_map(void)
{
    char src[1024], msg[4096], other[1024];
    snprintf(src, sizeof src, "%s/models/qwen3-moe-tiny/model-00001-of-00003.safetensors",
             g_fixtures);
    snprintf(g_victim, sizeof g_victim, "%s/victim.safetensors", g_tmp);
    copy_file(src, g_victim);
    int status = in_child(truncate_child, g_victim, 20, msg, sizeof msg);
    char want[1200];
    snprintf(want, sizeof want,
             "moecluster: %s: the file shrank while mapped (truncated or replaced by another "
             "process?); stopping\n",
             g_victim);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 1 && strstr(msg, want),
           "truncated map: status %#x (%s), stderr '%s', want exit 1 and '%s'", status,
           WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "exited", msg, want);

    copy_file(src, g_victim);
    snprintf(other, sizeof other, "%s/other.bin", g_tmp);
    copy_file(src, other);
    status = in_child(foreign_map_child, other, 20, msg, sizeof msg);
    CHECKF(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS && !strstr(msg, "shrank"),
           "SIGBUS outside registered maps: status %#x, stderr '%s' (want death by SIGBUS)",
           status, msg);

    /* the registry follows open / close */
    int before = mc_sigbus_count();
    st_file *f;
    mc_err err;
    mc_err_clear(&err);
    CHECK(st_file_open(g_victim, &f, &err) == MC_OK);
    CHECKF(mc_sigbus_count() == before + 1, "registered maps after open: %d, want %d",
           mc_sigbus_count(), before + 1);
    st_file_close(f);
    CHECKF(mc_sigbus_count() == before, "registered maps after close: %d, want %d",
           mc_sigbus_count(), before);
}

/* ---- non-finite scans ---- */

static void expect_scan(const st_tensor *t, bool want_hit, uint64_t want_elem,
                        const char *want_what, const char *what)
{
    uint64_t elem = 0;
    const char *kind = "";
    bool hit = mc_tensor_nonfinite(t, &elem, &kind);
    CHECKF(hit == want_hit && (!want_hit || (elem == want_elem && !strcmp(kind, want_what))),
           "%s: hit %d at %llu (%s), want %d at %llu (%s)", what, hit, (unsigned long long)elem,
           kind, want_hit, (unsigned long long)want_elem, want_what);
}

static void test_scans(void)
{
    enum { N = 96 };
    float f[N];
    uint16_t h[N];
    uint8_t b[N];
    for (int i = 0; i < N; i++)
        f[i] = (float)(i % 7) - 3.0f + 1e-30f * (float)i;
    CHECK(mc_first_nonfinite(f, N) == -1);
    f[61] = -HUGE_VALF;
    CHECK(mc_first_nonfinite(f, N) == 61);
    f[40] = NAN;
    CHECK(mc_first_nonfinite(f, N) == 40);
    f[40] = f[61] = 1.0f;

    st_tensor t = {.name = "w", .ndim = 2, .shape = {8, 12}, .numel = N};
    /* F32: the largest finite value is not flagged */
    t.dtype = MC_DT_F32;
    t.data = f;
    f[5] = 3.4028235e38f;
    expect_scan(&t, false, 0, "", "F32 finite");
    f[77] = HUGE_VALF;
    expect_scan(&t, true, 77, "+Inf", "F32 +Inf");
    f[30] = NAN;
    expect_scan(&t, true, 30, "NaN", "F32 NaN");
    f[30] = f[77] = 0.5f;
    /* BF16 and F16 from the same values */
    t.dtype = MC_DT_BF16;
    t.data = h;
    for (int i = 0; i < N; i++)
        h[i] = mc_f32_to_bf16(i == 5 ? 1.0f : f[i]);
    h[5] = 0x7f7f; /* the largest finite */
    expect_scan(&t, false, 0, "", "BF16 finite");
    h[90] = 0xff80; /* -Inf */
    expect_scan(&t, true, 90, "-Inf", "BF16 -Inf");
    h[3] = 0x7fc1;
    expect_scan(&t, true, 3, "NaN", "BF16 NaN");
    t.dtype = MC_DT_F16;
    for (int i = 0; i < N; i++)
        h[i] = mc_f32_to_f16((float)(i % 5));
    h[7] = 0x7bff; /* 65504, the largest finite */
    expect_scan(&t, false, 0, "", "F16 finite");
    h[50] = 0x7c00;
    expect_scan(&t, true, 50, "+Inf", "F16 +Inf");
    /* F8_E4M3: 0x7e (448) is finite, 0x7f / 0xff are NaN */
    t.dtype = MC_DT_F8_E4M3;
    t.data = b;
    for (int i = 0; i < N; i++)
        b[i] = (uint8_t)(i == 9 ? 0x7e : i & 0x3f);
    expect_scan(&t, false, 0, "", "F8 finite");
    b[66] = 0xff;
    expect_scan(&t, true, 66, "NaN", "F8 NaN");
    /* Q8_0: a NaN block scale spoils its 32 elements */
    float q[64];
    for (int i = 0; i < 64; i++)
        q[i] = (float)i / 8.0f;
    uint8_t qb[2 * 34];
    mc_quantize_row_q8_0(q, qb, 64);
    t = (st_tensor){.name = "q", .dtype = MC_DT_Q8_0, .ndim = 2, .shape = {1, 64}, .numel = 64,
                    .data = qb};
    expect_scan(&t, false, 0, "", "Q8_0 finite");
    uint16_t nan16 = 0x7e00;
    memcpy(qb + 34, &nan16, 2); /* the second block's scale */
    expect_scan(&t, true, 32, "NaN", "Q8_0 NaN scale");
    /* integers are never flagged */
    int64_t ids[4] = {-1, 0, 1, INT64_MAX};
    t = (st_tensor){.name = "i", .dtype = MC_DT_I64, .ndim = 1, .shape = {4}, .numel = 4,
                    .data = ids};
    expect_scan(&t, false, 0, "", "I64");
}

int main(int argc, char **argv)
{
    g_fixtures = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    if (!g_fixtures) {
        fprintf(stderr, "usage: test_hardening_files FIXTURES_DIR\n");
        return 2;
    }
    const char *td = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/mc-hardening-XXXXXX", td && *td ? td : "/tmp");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 2;
    }
    test_non_regular();
    test_shrunk_map();
    test_scans();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_tmp);
    return check_report("test_hardening_files");
}
