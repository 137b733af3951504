/* test_outfile.c - output files (core/outfile.h):
 *   - a whole file arrives through PATH.partial and a rename; an existing
 *     regular file is replaced, a FIFO, a folder or a link named PATH.partial
 *     is never written through or replaced;
 *   - the overlap checks refuse the input itself (by path, through a link,
 *     by inode), anything inside a model folder, and output folders that are
 *     files or the source folder, and accept unrelated paths.
 * Each case compares the file system afterwards with what it was before.
 */
#define _GNU_SOURCE
#include "check.h"
#include "outfile.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

static char dir[256];

static const char *at(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static char *slurp(const char *path)
{
    static char buf[256];
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    return buf;
}

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static mc_status refused(mc_status st, mc_err *e, const char *needle)
{
    CHECKF(st != MC_OK && strstr(e->msg, needle), "expected '%s', got status %d '%s'", needle, st,
           e->msg);
    mc_err_clear(e);
    return st;
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/mc_test_outfile_%d", (int)getpid());
    CHECK(mkdir(dir, 0700) == 0);
    mc_err e;
    mc_err_clear(&e);
    struct stat sb;

    /* a new file, then a replaced one; no temporary file left */
    CHECK(mc_write_file(at("a.txt"), "output", "one", 3, &e) == MC_OK);
    CHECKF(slurp(at("a.txt")) && !strcmp(slurp(at("a.txt")), "one"), "%s", e.msg);
    CHECK(mc_write_file(at("a.txt"), "output", "two!", 4, &e) == MC_OK);
    CHECK(!strcmp(slurp(at("a.txt")), "two!"));
    CHECK(access(at("a.txt.partial"), F_OK) != 0);
    /* a stale regular PATH.partial of an interrupted run is replaced */
    put(at("a.txt.partial"), "stale");
    CHECK(mc_write_file(at("a.txt"), "output", "three", 5, &e) == MC_OK);
    CHECK(!strcmp(slurp(at("a.txt")), "three") && access(at("a.txt.partial"), F_OK) != 0);

    /* never replace a FIFO or a folder, never write through a link */
    CHECK(mkfifo(at("fifo"), 0600) == 0);
    refused(mc_write_file(at("fifo"), "output", "x", 1, &e), &e, "a FIFO, not a regular file");
    CHECK(stat(at("fifo"), &sb) == 0 && S_ISFIFO(sb.st_mode));
    CHECK(mkdir(at("sub"), 0700) == 0);
    refused(mc_write_file(at("sub"), "output", "x", 1, &e), &e, "a directory");
    CHECK(stat(at("sub"), &sb) == 0 && S_ISDIR(sb.st_mode));
    put(at("victim"), "keep");
    CHECK(symlink(at("victim"), at("b.txt.partial")) == 0);
    refused(mc_write_file(at("b.txt"), "output", "x", 1, &e), &e, "a symbolic link");
    CHECK(!strcmp(slurp(at("victim")), "keep") && access(at("b.txt"), F_OK) != 0);
    refused(mc_write_file(at("nowhere/c.txt"), "output", "x", 1, &e), &e, "cannot create");

    /* streaming: a failed write is reported and abort leaves nothing behind */
    mc_outfile *f = NULL;
    CHECK(mc_outfile_open(at("d.txt"), "output", &f, &e) == MC_OK);
    CHECK(f && mc_outfile_write(f, "abc", 3, &e) == MC_OK);
    mc_outfile_abort(f);
    CHECK(access(at("d.txt"), F_OK) != 0 && access(at("d.txt.partial"), F_OK) != 0);

    /* output against inputs */
    put(at("in.st"), "input");
    CHECK(mkdir(at("model"), 0700) == 0);
    put(at("model/w.st"), "weights");
    CHECK(symlink(at("in.st"), at("in-link.st")) == 0);
    CHECK(link(at("in.st"), at("in-hard.st")) == 0);
    refused(mc_out_check_file(at("in.st"), at("in.st"), "input", &e), &e, "is the input");
    refused(mc_out_check_file(at("in-link.st"), at("in.st"), "input", &e), &e, "is the input");
    refused(mc_out_check_file(at("in-hard.st"), at("in.st"), "input", &e), &e, "is the input");
    refused(mc_out_check_file(at("model/w.st"), at("model"), "model folder", &e), &e,
            "inside the model folder");
    refused(mc_out_check_file(at("model/new.st"), at("model"), "model folder", &e), &e,
            "inside the model folder");
    refused(mc_out_check_file(at("sub/../model/x"), at("model"), "model folder", &e), &e,
            "inside the model folder");
    CHECK(mc_out_check_file(at("out.st"), at("in.st"), "input", &e) == MC_OK);
    CHECK(mc_out_check_file(at("out.st"), at("model"), "model folder", &e) == MC_OK);
    CHECK(mc_out_check_file(at("model2.st"), at("model"), "model folder", &e) == MC_OK);

    /* output folders */
    refused(mc_out_check_dir(at("model"), at("model"), "model folder", true, &e), &e,
            "is the model folder");
    refused(mc_out_check_dir(at("model/s"), at("model"), "model folder", true, &e), &e,
            "inside the model folder");
    CHECK(mc_out_check_dir(at("model/s"), at("model/w.st"), "config", false, &e) == MC_OK);
    refused(mc_out_check_dir(at("model"), at("model/w.st"), "config", false, &e), &e,
            "folder of the config");
    refused(mc_out_check_dir(at("in.st"), at("model"), "model folder", true, &e), &e,
            "not a directory");
    CHECK(mc_out_check_dir(at("shards"), at("model"), "model folder", true, &e) == MC_OK);
    CHECK(mc_out_check_dir(at("model-shards"), at("model"), "model folder", true, &e) == MC_OK);

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return check_report("test_outfile");
}
