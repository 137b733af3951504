/* outfile.c - output files written through a temporary file and a checked
 * rename, and the checks that keep outputs away from the inputs (see
 * outfile.h). */
#define _GNU_SOURCE
#include "outfile.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct mc_outfile {
    FILE *fp;
    char *path, *tmp;
    const char *what;
};

/* The folder part of a path ("." for a bare name) in buf. */
static void parent_of(const char *path, char *buf, size_t len)
{
    snprintf(buf, len, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = 0;
    char *slash = strrchr(buf, '/');
    if (!slash)
        snprintf(buf, len, ".");
    else if (slash == buf)
        buf[1] = 0;
    else
        *slash = 0;
}

/* The absolute, link-free form of path; a path that does not exist yet is
 * resolved through its parent folder. 0 on success. */
static int resolve(const char *path, char out[PATH_MAX])
{
    if (realpath(path, out))
        return 0;
    if (errno != ENOENT)
        return -1;
    char dir[PATH_MAX], pdir[PATH_MAX];
    parent_of(path, dir, sizeof dir);
    const char *base = path + strlen(path);
    while (base > path && base[-1] == '/')
        base--;
    const char *end = base;
    while (base > path && base[-1] != '/')
        base--;
    size_t bl = (size_t)(end - base);
    if (bl == 0 || (bl == 1 && base[0] == '.') || (bl == 2 && !strncmp(base, "..", 2)))
        return -1;
    if (!realpath(dir, pdir))
        return -1;
    int n = snprintf(out, PATH_MAX, "%s/%.*s", strcmp(pdir, "/") ? pdir : "", (int)bl, base);
    return n > 0 && n < PATH_MAX ? 0 : -1;
}

/* child == dir, or child lies below dir (both resolved). */
static bool same_or_inside(const char *child, const char *dir, bool *same)
{
    size_t n = strlen(dir);
    *same = !strcmp(child, dir);
    if (*same)
        return true;
    if (n == 1 && dir[0] == '/')
        return true;
    return !strncmp(child, dir, n) && child[n] == '/';
}

mc_status mc_out_check_target(const char *path, const char *what, mc_err *err)
{
    if (!what)
        what = "output";
    if (!path || !path[0])
        return mc_err_set(err, MC_ERR_ARG, "the %s path is empty", what);
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return mc_err_set(err, MC_ERR_IO,
                          "%s: the %s is %s, not a regular file; refusing to replace it", path,
                          what, mc_file_kind(sb.st_mode));
    char dir[PATH_MAX];
    parent_of(path, dir, sizeof dir);
    if (stat(dir, &sb) != 0)
        return mc_err_set(err, MC_ERR_IO, "%s: cannot create the %s: folder %s: %s", path, what,
                          dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return mc_err_set(err, MC_ERR_IO, "%s: cannot create the %s: %s is %s, not a folder",
                          path, what, dir, mc_file_kind(sb.st_mode));
    return MC_OK;
}

const char *mc_outfile_path(const mc_outfile *f) { return f->path; }

void mc_outfile_abort(mc_outfile *f)
{
    if (!f)
        return;
    if (f->fp)
        fclose(f->fp);
    if (f->tmp)
        unlink(f->tmp);
    free(f->path);
    free(f->tmp);
    free(f);
}

mc_status mc_outfile_open(const char *path, const char *what, mc_outfile **out, mc_err *err)
{
    *out = NULL;
    if (!what)
        what = "output";
    mc_status st = mc_out_check_target(path, what, err);
    if (st != MC_OK)
        return st;
    mc_outfile *f = calloc(1, sizeof *f);
    size_t n = strlen(path);
    if (!f || !(f->path = strdup(path)) || !(f->tmp = malloc(n + 16))) {
        mc_outfile_abort(f);
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory", path);
    }
    f->what = what;
    snprintf(f->tmp, n + 16, "%s.partial", path);
    /* a leftover of an interrupted run is ours to replace; anything else is not */
    struct stat sb;
    if (lstat(f->tmp, &sb) == 0) {
        if (!S_ISREG(sb.st_mode)) {
            st = mc_err_set(err, MC_ERR_IO,
                            "%s: the temporary file %s is %s; remove it or write elsewhere", path,
                            f->tmp, mc_file_kind(sb.st_mode));
            free(f->tmp);
            f->tmp = NULL;
            mc_outfile_abort(f);
            return st;
        }
        unlink(f->tmp);
    }
    int fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0) {
        st = mc_err_set(err, MC_ERR_IO, "%s: cannot create the %s: %s", path, what,
                        strerror(errno));
        free(f->tmp);
        f->tmp = NULL; /* not ours: do not unlink */
        mc_outfile_abort(f);
        return st;
    }
    if (!(f->fp = fdopen(fd, "wb"))) {
        st = mc_err_set(err, MC_ERR_IO, "%s: cannot create the %s: %s", path, what,
                        strerror(errno));
        close(fd);
        mc_outfile_abort(f);
        return st;
    }
    *out = f;
    return MC_OK;
}

mc_status mc_outfile_write(mc_outfile *f, const void *data, size_t len, mc_err *err)
{
    errno = 0;
    if (len && fwrite(data, 1, len, f->fp) != len)
        return mc_err_set(err, MC_ERR_IO, "%s: writing the %s failed: %s", f->path, f->what,
                          errno ? strerror(errno) : "short write");
    return MC_OK;
}

mc_status mc_outfile_commit(mc_outfile *f, mc_err *err)
{
    mc_status st = MC_OK;
    errno = 0;
    if (fflush(f->fp) != 0 || ferror(f->fp))
        st = mc_err_set(err, MC_ERR_IO, "%s: writing the %s failed: %s", f->path, f->what,
                        errno ? strerror(errno) : "write error");
    else if (fsync(fileno(f->fp)) != 0)
        st = mc_err_set(err, MC_ERR_IO, "%s: syncing the %s failed: %s", f->path, f->what,
                        strerror(errno));
    int rc = fclose(f->fp);
    f->fp = NULL;
    if (rc != 0 && st == MC_OK)
        st = mc_err_set(err, MC_ERR_IO, "%s: closing the %s failed: %s", f->path, f->what,
                        strerror(errno));
    /* the target may have changed while we wrote: still never replace a non-file */
    if (st == MC_OK)
        st = mc_out_check_target(f->path, f->what, err);
    if (st == MC_OK && rename(f->tmp, f->path) != 0)
        st = mc_err_set(err, MC_ERR_IO, "%s: cannot rename the finished %s into place: %s",
                        f->path, f->what, strerror(errno));
    if (st == MC_OK) {
        free(f->tmp);
        f->tmp = NULL;
        char dir[PATH_MAX];
        parent_of(f->path, dir, sizeof dir);
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) { /* make the rename durable; some filesystems cannot sync a folder */
            (void)fsync(dfd);
            close(dfd);
        }
    }
    mc_outfile_abort(f);
    return st;
}

mc_status mc_write_file(const char *path, const char *what, const void *data, size_t len,
                        mc_err *err)
{
    mc_outfile *f;
    mc_status st = mc_outfile_open(path, what, &f, err);
    if (st != MC_OK)
        return st;
    if ((st = mc_outfile_write(f, data, len, err)) != MC_OK) {
        mc_outfile_abort(f);
        return st;
    }
    return mc_outfile_commit(f, err);
}

mc_status mc_out_check_file(const char *out, const char *in, const char *in_role, mc_err *err)
{
    char rin[PATH_MAX], rout[PATH_MAX];
    struct stat si, so;
    if (!in || !realpath(in, rin) || stat(rin, &si) != 0)
        return MC_OK; /* a missing input is reported by whoever reads it */
    if (resolve(out, rout) != 0)
        return MC_OK; /* an unreachable output is reported by the writer */
    bool same;
    if (S_ISDIR(si.st_mode)) {
        if (same_or_inside(rout, rin, &same))
            return mc_err_set(err, MC_ERR_ARG, "%s: the output is %s the %s %s; write it elsewhere",
                              out, same ? "the same path as" : "inside", in_role, in);
        return MC_OK;
    }
    if (!strcmp(rin, rout) ||
        (stat(rout, &so) == 0 && so.st_dev == si.st_dev && so.st_ino == si.st_ino))
        return mc_err_set(err, MC_ERR_ARG, "%s: the output is the %s %s; write it elsewhere", out,
                          in_role, in);
    return MC_OK;
}

mc_status mc_out_check_dir(const char *out_dir, const char *src, const char *src_role,
                           bool refuse_inside, mc_err *err)
{
    struct stat sb;
    if (!out_dir || !out_dir[0])
        return mc_err_set(err, MC_ERR_ARG, "the output folder path is empty");
    if (stat(out_dir, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return mc_err_set(err, MC_ERR_ARG, "%s: the output folder is %s, not a directory",
                          out_dir, mc_file_kind(sb.st_mode));
    char rsrc[PATH_MAX], rout[PATH_MAX];
    if (!src || !realpath(src, rsrc) || stat(rsrc, &sb) != 0)
        return MC_OK;
    bool is_dir = S_ISDIR(sb.st_mode);
    if (!is_dir) { /* a file: the folder holding it */
        char dir[PATH_MAX];
        parent_of(rsrc, dir, sizeof dir);
        memcpy(rsrc, dir, sizeof dir);
    }
    if (resolve(out_dir, rout) != 0)
        return MC_OK;
    bool same;
    if (same_or_inside(rout, rsrc, &same) && (same || refuse_inside))
        return mc_err_set(err, MC_ERR_ARG, "%s: the output folder is %s %s%s %s; write it elsewhere",
                          out_dir, same ? "the" : "inside the", is_dir ? "" : "folder of the ",
                          src_role, src);
    return MC_OK;
}

int mc_stdout_flush(const char **why)
{
    errno = 0;
    int bad = fflush(stdout) != 0;
    int e = errno;
    if (bad || ferror(stdout)) {
        *why = e ? strerror(e) : "write error";
        return -1;
    }
    return 0;
}
