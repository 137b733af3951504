/* fileio.c - regular-file-only opens with bounded reads (see fileio.h). */
#define _GNU_SOURCE
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *mc_file_kind(unsigned mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFIFO: return "a FIFO";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    case S_IFSOCK: return "a socket";
    case S_IFLNK: return "a symbolic link";
    default: return "not a regular file";
    }
}

mc_status mc_open_regular(const char *path, const char *what, int *fd_out, uint64_t *size_out,
                          mc_err *err)
{
    *fd_out = -1;
    if (!what)
        what = "file";
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return mc_err_set(err, errno == ENOENT ? MC_ERR_NOT_FOUND : MC_ERR_IO,
                          "%s: cannot open %s: %s", path, what, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return mc_err_set(err, MC_ERR_IO, "%s: cannot stat %s: %s", path, what, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return mc_err_set(err, MC_ERR_IO, "%s: %s is %s, not a regular file", path, what,
                          mc_file_kind(sb.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    if (size_out)
        *size_out = (uint64_t)sb.st_size;
    return MC_OK;
}

mc_status mc_fopen_regular(const char *path, const char *what, FILE **out, uint64_t *size_out,
                           mc_err *err)
{
    *out = NULL;
    int fd;
    mc_status st = mc_open_regular(path, what, &fd, size_out, err);
    if (st != MC_OK)
        return st;
    FILE *fp = fdopen(fd, "rb");
    if (!fp) {
        int e = errno;
        close(fd);
        return mc_err_set(err, MC_ERR_IO, "%s: cannot open %s: %s", path, what ? what : "file",
                          strerror(e));
    }
    *out = fp;
    return MC_OK;
}

mc_status mc_read_regular(const char *path, const char *what, uint64_t max, char **text,
                          size_t *len, mc_err *err)
{
    *text = NULL;
    *len = 0;
    if (!what)
        what = "file";
    int fd;
    uint64_t size;
    mc_status st = mc_open_regular(path, what, &fd, &size, err);
    if (st != MC_OK)
        return st;
    if (size > max) {
        close(fd);
        return mc_err_set(err, MC_ERR_FORMAT, "%s: %s is larger than the limit of %llu bytes", path,
                          what, (unsigned long long)max);
    }
    /* read up to max+1 bytes: the file may have grown since fstat */
    char *buf = malloc((size_t)max + 1 < (size_t)size + 1 ? (size_t)max + 1 : (size_t)size + 1);
    size_t cap = (size_t)size;
    if (!buf) {
        close(fd);
        return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory reading %s", path, what);
    }
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                /* probe one byte past the limit */
                char c;
                ssize_t r = read(fd, &c, 1);
                if (r > 0) {
                    free(buf);
                    close(fd);
                    return mc_err_set(err, MC_ERR_FORMAT,
                                      "%s: %s is larger than the limit of %llu bytes", path, what,
                                      (unsigned long long)max);
                }
                break;
            }
            size_t ncap = cap ? cap * 2 : 4096;
            if (ncap > max)
                ncap = (size_t)max;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                free(buf);
                close(fd);
                return mc_err_set(err, MC_ERR_NOMEM, "%s: out of memory reading %s", path, what);
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            close(fd);
            return mc_err_set(err, MC_ERR_IO, "%s: cannot read %s: %s", path, what, strerror(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return MC_OK;
}
