/* comm_shm.c - host memory shared by the ranks of a communicator that all
 * run on one host (see comm.h, mc_comm_shm_alloc): one POSIX shared-memory
 * object made by rank 0, opened and mapped by every rank, unlinked as soon
 * as all have mapped it. Built on the communicator's own collectives, so
 * it works for MPI ranks and for the threads of the local backend alike. */
#include "comm_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct mc_comm_shm {
    unsigned char *map;
    size_t len, seg;
    int n;
};

/* What makes two ranks share memory: the host name and this boot of its
 * kernel (a container's host name alone may repeat across machines). */
typedef struct {
    char host[64];
    char boot[40];
    uint64_t bytes;
} shm_ident;

static void ident_make(shm_ident *id, size_t bytes)
{
    memset(id, 0, sizeof *id);
    if (gethostname(id->host, sizeof id->host - 1) != 0)
        snprintf(id->host, sizeof id->host, "?");
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f || !fgets(id->boot, sizeof id->boot, f))
        snprintf(id->boot, sizeof id->boot, "?");
    if (f)
        fclose(f);
    id->bytes = (uint64_t)bytes;
}

static atomic_ullong g_serial;

mc_status mc_comm_shm_alloc(mc_comm *c, size_t bytes, mc_comm_shm **out, mc_err *err)
{
    if (out)
        *out = NULL;
    if (!c || !out || bytes == 0)
        return mc_err_set(err, MC_ERR_ARG, "shared memory: %s", !c ? "communicator is NULL"
                                                                   : !out ? "out is NULL"
                                                                          : "0 bytes");
    if (strcmp(c->ops->name, "nccl") == 0) /* device buffers: not host memory */
        return mc_err_set(err, MC_ERR_UNSUPPORTED,
                          "shared memory: an nccl communicator moves device memory");
    int n = c->size, me = c->rank;
    shm_ident mine, *all = calloc((size_t)n, sizeof *all);
    if (!all)
        return mc_err_set(err, MC_ERR_NOMEM, "shared memory: out of memory");
    ident_make(&mine, bytes);
    mc_status st = mc_comm_all_gather(c, &mine, sizeof mine, all, err);
    if (st != MC_OK) {
        free(all);
        return st;
    }
    for (int p = 0; p < n && st == MC_OK; p++) {
        if (strncmp(all[p].host, all[0].host, sizeof mine.host) != 0 ||
            strncmp(all[p].boot, all[0].boot, sizeof mine.boot) != 0)
            st = mc_err_set(err, MC_ERR_UNSUPPORTED,
                            "shared memory: ranks 0 and %d run on different hosts (%.63s, %.63s)",
                            p, all[0].host, all[p].host);
        else if (all[p].bytes != all[0].bytes)
            st = mc_err_set(err, MC_ERR_ARG,
                            "shared memory: rank 0 asked for %llu bytes, rank %d for %llu",
                            (unsigned long long)all[0].bytes, p, (unsigned long long)all[p].bytes);
    }
    free(all);
    if (st != MC_OK)
        return st;
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    size_t seg = (bytes + page - 1) / page * page;
    if (seg < bytes || seg > SIZE_MAX / (size_t)n)
        return mc_err_set(err, MC_ERR_ARG, "shared memory: %d x %zu bytes overflow size_t", n,
                          bytes);
    size_t len = seg * (size_t)n;
    /* rank 0 makes the object (its whole size reserved now: a tmpfs that is
     * too small fails here, not with SIGBUS on first touch) and says its name */
    char name[64] = "", why[160] = "";
    int fd = -1;
    if (me == 0) {
        snprintf(name, sizeof name, "/moecluster-shm-%ld-%llu", (long)getpid(),
                 (unsigned long long)atomic_fetch_add(&g_serial, 1));
        fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        int rc = fd < 0 ? errno : posix_fallocate(fd, 0, (off_t)len);
        if (rc != 0) {
            snprintf(why, sizeof why, "%s of %zu bytes: %s", fd < 0 ? "shm_open" : "posix_fallocate",
                     len, strerror(rc));
            if (fd >= 0) {
                close(fd);
                shm_unlink(name);
                fd = -1;
            }
            name[0] = '\0';
        }
    }
    st = mc_comm_bcast(c, 0, name, sizeof name, err);
    if (st != MC_OK) {
        if (fd >= 0) {
            close(fd);
            shm_unlink(name);
        }
        return st;
    }
    unsigned char *map = NULL;
    if (name[0]) {
        if (me != 0 && (fd = shm_open(name, O_RDWR, 0)) < 0)
            snprintf(why, sizeof why, "shm_open %s: %s", name, strerror(errno));
        if (fd >= 0) {
            void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (p == MAP_FAILED)
                snprintf(why, sizeof why, "mmap of %zu bytes: %s", len, strerror(errno));
            else
                map = p;
            close(fd);
        }
    }
    /* every rank learns whether all mapped it (a sum of failures), then the
     * name goes: the memory lives as long as some rank maps it */
    float failed = map ? 0.0f : 1.0f;
    mc_err e2;
    mc_err_clear(&e2);
    mc_status st2 = mc_comm_all_reduce_sum_f32(c, &failed, 1, &e2);
    if (me == 0 && name[0])
        shm_unlink(name);
    if (st2 != MC_OK || failed > 0.0f) {
        if (map)
            munmap(map, len);
        if (st2 != MC_OK)
            return mc_err_set(err, st2, "%s", e2.msg);
        return mc_err_set(err, MC_ERR_IO, "shared memory for %d ranks: %s", n,
                          why[0] ? why : "another rank could not map it");
    }
    mc_comm_shm *s = malloc(sizeof *s);
    if (!s) { /* (the others keep theirs; this rank reports) */
        munmap(map, len);
        return mc_err_set(err, MC_ERR_NOMEM, "shared memory: out of memory");
    }
    *s = (mc_comm_shm){.map = map, .len = len, .seg = seg, .n = n};
    *out = s;
    return MC_OK;
}

void *mc_comm_shm_seg(const mc_comm_shm *s, int rank)
{
    if (!s || rank < 0 || rank >= s->n)
        return NULL;
    return s->map + (size_t)rank * s->seg;
}

void mc_comm_shm_free(mc_comm_shm *s)
{
    if (!s)
        return;
    munmap(s->map, s->len);
    free(s);
}
