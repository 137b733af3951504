/* service_group.c - the worker group under a service (see service_group.h).
 *
 * A local group is one child process in its own process group: `EXE
 * worker ... --listen tcp://127.0.0.1:*` for one rank, or `MPIRUN -np N
 * [Open MPI flags] EXE worker ...` for N. Its stdout comes through a pipe
 * (the "listening on ADDR" line, then anything else is forwarded to
 * stderr); its stderr is ours. Ending it: SIGTERM (and SIGCONT, for a
 * stopped member) to the whole process group, SIGKILL 2 s later, waitpid.
 */
#include "service_group.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_WORKER_ARGS 64
#define MAX_ARG_LEN 4096
#define MAX_LINE 1024          /* a line of the child's stdout */
#define TERM_GRACE_MS 2000     /* SIGTERM -> SIGKILL */
#define SHUTDOWN_WAIT_MS 10000 /* after an answered Shutdown */
#define MPI_ABORT_WAIT_MS 5000 /* mpirun ending a job whose rank 0 died */
#define DEFAULT_LOAD_MS 600000
#define DEFAULT_STEP_MS 120000
#define MPI_ENV "OMPI_MCA_btl_vader_single_copy_mechanism=none"

struct mc_group {
    /* the options (owned copies) */
    char *exe, *mpirun, *model_dir, *shards_dir, *attach;
    char **args; /* (n_args) more worker flags */
    size_t n_args;
    uint32_t ranks, kv_blocks, kv_block_size, max_batch_tokens;
    int load_ms, step_ms;
    bool quiet;
    /* the live group */
    pid_t pid;  /* the child, leader of its process group; 0: none */
    int status; /* its wait status once reaped (pid then 0, reaped true) */
    bool reaped;
    int out_fd; /* its stdout; -1 */
    char line[MAX_LINE];
    size_t line_n;
    mc_workers *w;
    mc_workers_info info; /* the last Hello (the runner's limits) */
    bool failed;
    char why[512];
    uint64_t *live; /* (cap_live) sequences the group ran in a successful step */
    size_t n_live, cap_live;
    uint64_t *pending; /* (cap_pending) releases to send */
    size_t n_pending, cap_pending;
};

/* Copies src into dst[cap], cut at cap - 1 bytes. */
static void copy_str(char *dst, size_t cap, const char *src) {
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = '\0';
}

static long ms_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)(t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

static char *dup_or_null(const char *s) {
    return s ? strdup(s) : NULL;
}

/* ---- init / free ---- */

mc_status mc_group_init(const mc_service_opts *o, mc_group **out, mc_err *err) {
    *out = NULL;
    bool attach = o->workers_addr != NULL;
    if (!attach && !o->model_dir == !o->shards_dir)
        return mc_err_set(err, MC_ERR_ARG,
                          "service: give exactly one of a model folder, a shard set or a "
                          "worker group address");
    if (attach && (strlen(o->workers_addr) >= 256 || (strncmp(o->workers_addr, "tcp://", 6) &&
                                                      strncmp(o->workers_addr, "ipc://", 6))))
        return mc_err_set(err, MC_ERR_ARG, "--workers %.64s: want tcp://HOST:PORT or ipc://PATH",
                          o->workers_addr);
    if (o->n_worker_args > MAX_WORKER_ARGS || (o->n_worker_args && !o->worker_args))
        return mc_err_set(err, MC_ERR_ARG, "service: %zu worker arguments (at most %d)",
                          o->n_worker_args, MAX_WORKER_ARGS);
    for (size_t i = 0; i < o->n_worker_args; i++)
        if (!o->worker_args[i] || strlen(o->worker_args[i]) > MAX_ARG_LEN)
            return mc_err_set(err, MC_ERR_ARG,
                              "service: worker argument %zu is missing or "
                              "longer than %d bytes",
                              i, MAX_ARG_LEN);
    if (o->ranks > 4096)
        return mc_err_set(err, MC_ERR_ARG, "service: %u ranks (at most 4096)", o->ranks);
    if (o->load_timeout_ms < 0 || o->step_timeout_ms < 0)
        return mc_err_set(err, MC_ERR_ARG, "service: negative timeout (load %d ms, step %d ms)",
                          o->load_timeout_ms, o->step_timeout_ms);
    mc_group *g = calloc(1, sizeof *g);
    if (!g) return mc_err_set(err, MC_ERR_NOMEM, "service: out of memory");
    g->out_fd = -1;
    g->ranks = o->ranks ? o->ranks : 1;
    g->kv_blocks = o->kv_blocks;
    g->kv_block_size = o->kv_block_size;
    g->max_batch_tokens = o->max_batch_tokens;
    g->load_ms = o->load_timeout_ms ? o->load_timeout_ms : DEFAULT_LOAD_MS;
    g->step_ms = o->step_timeout_ms ? o->step_timeout_ms : DEFAULT_STEP_MS;
    g->quiet = o->quiet;
    bool nomem = false;
    if (attach) {
        nomem |= !(g->attach = strdup(o->workers_addr));
    } else {
        char self[4096];
        ssize_t n = o->exe ? 0 : readlink("/proc/self/exe", self, sizeof self - 1);
        if (!o->exe && n <= 0) {
            mc_group_free(g);
            return mc_err_set(err, MC_ERR_ARG,
                              "service: cannot find this program (/proc/self/"
                              "exe): give the moecluster binary");
        }
        if (!o->exe) self[n] = '\0';
        nomem |= !(g->exe = strdup(o->exe ? o->exe : self));
        nomem |= !(g->mpirun = strdup(o->mpirun ? o->mpirun : "mpirun"));
        nomem |= (o->model_dir && !(g->model_dir = dup_or_null(o->model_dir))) ||
                 (o->shards_dir && !(g->shards_dir = dup_or_null(o->shards_dir)));
        g->args = calloc(o->n_worker_args + 1, sizeof *g->args);
        nomem |= !g->args;
        for (size_t i = 0; g->args && i < o->n_worker_args; i++) {
            nomem |= !(g->args[i] = strdup(o->worker_args[i]));
            g->n_args = i + 1;
        }
    }
    if (nomem) {
        mc_group_free(g);
        return mc_err_set(err, MC_ERR_NOMEM, "service: out of memory");
    }
    *out = g;
    return MC_OK;
}

void mc_group_free(mc_group *g) {
    if (!g) return;
    mc_group_down(g, true);
    free(g->exe);
    free(g->mpirun);
    free(g->model_dir);
    free(g->shards_dir);
    free(g->attach);
    for (size_t i = 0; g->args && i < g->n_args; i++)
        free(g->args[i]);
    free(g->args);
    free(g->live);
    free(g->pending);
    free(g);
}

/* ---- the child ---- */

/* Reaps the child when it exited (no wait). True when it is gone. */
static bool child_gone(mc_group *g) {
    if (!g->pid || g->reaped) return g->reaped;
    int st = 0;
    pid_t r = waitpid(g->pid, &st, WNOHANG);
    if (r == g->pid || (r < 0 && errno == ECHILD)) {
        g->status = r == g->pid ? st : 0;
        g->reaped = true;
        return true;
    }
    return false;
}

/* mc_workers_set_watch's check. */
static bool watch_gone(void *ctx) {
    mc_group *g = ctx;
    if (!g->pid) return false;
    if (child_gone(g)) return true;
    /* under mpirun rank 0 is a grandchild on this machine: gone when no
     * such process is left (mpirun reaps it at once) */
    return g->ranks > 1 && g->info.pid && kill((pid_t)g->info.pid, 0) != 0 && errno == ESRCH;
}

static void describe_exit(const mc_group *g, char *buf, size_t cap) {
    if (WIFSIGNALED(g->status))
        snprintf(buf, cap, "killed by signal %d", WTERMSIG(g->status));
    else
        snprintf(buf, cap, "exit status %d", WEXITSTATUS(g->status));
}

/* Ends the process group: SIGTERM (+SIGCONT), SIGKILL after the grace,
 * and reaps the leader. */
static void kill_group(mc_group *g) {
    if (!g->pid) return;
    pid_t pg = g->pid;
    if (g->ranks > 1 && g->info.pid && kill((pid_t)g->info.pid, 0) != 0 && errno == ESRCH) {
        /* rank 0 died: mpirun is ending the job already (a signal in the
         * middle of its abort crashes it); a moment for that */
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        while (!child_gone(g) && ms_since(&t0) < MPI_ABORT_WAIT_MS)
            sleep_ms(20);
    }
    if (!child_gone(g)) {
        if (g->ranks > 1) { /* mpirun ends its job itself (SIGCONT, SIGTERM, SIGKILL) */
            kill(pg, SIGTERM);
        } else {
            kill(-pg, SIGTERM);
            kill(-pg, SIGCONT); /* a stopped worker gets its SIGTERM */
        }
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        while (!child_gone(g) && ms_since(&t0) < TERM_GRACE_MS)
            sleep_ms(20);
    }
    kill(-pg, SIGKILL); /* the members that outlived the leader, if any */
    if (!g->reaped) {
        int st = 0;
        while (waitpid(pg, &st, 0) < 0 && errno == EINTR)
            ;
        g->status = st;
        g->reaped = true;
    }
    g->pid = 0;
}

/* Forwards complete lines of the child's stdout to stderr; a line that
 * says "listening on ADDR" copies ADDR to addr (when addr is not NULL).
 * Returns -1 at EOF, else 0. */
static int read_lines(mc_group *g, char *addr, size_t cap) {
    for (;;) {
        char buf[512];
        ssize_t n = read(g->out_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) return -1;
        if (n < 0) return 0; /* EAGAIN */
        for (ssize_t i = 0; i < n; i++) {
            bool end = buf[i] == '\n';
            if (!end && g->line_n < sizeof g->line - 1) g->line[g->line_n++] = buf[i];
            if (!end) continue;
            g->line[g->line_n] = '\0';
            const char *key = "listening on ";
            if (addr && !addr[0] && !strncmp(g->line, key, strlen(key)))
                snprintf(addr, cap, "%s", g->line + strlen(key));
            else if (!g->quiet)
                fprintf(stderr, "%s\n", g->line);
            g->line_n = 0;
        }
    }
}

/* Finds prog in PATH (as execvp would) into buf; false when not found. */
static bool find_in_path(const char *prog, char *buf, size_t cap) {
    if (strchr(prog, '/')) {
        snprintf(buf, cap, "%s", prog);
        return access(buf, X_OK) == 0;
    }
    const char *path = getenv("PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t len = colon ? (size_t)(colon - path) : strlen(path);
        if ((size_t)snprintf(buf, cap, "%.*s/%s", (int)len, path, prog) < cap &&
            access(buf, X_OK) == 0)
            return true;
        path += len + (colon != NULL);
    }
    return false;
}

static void num_arg(const char **argv, int *argc, char (*num)[16], int *k, const char *flag,
                    uint32_t v) {
    if (!v) return;
    snprintf(num[*k], sizeof num[*k], "%u", v);
    argv[(*argc)++] = flag;
    argv[(*argc)++] = num[(*k)++];
}

/* Forks and execs the group's command; the child leads its process group
 * and writes its stdout into g->out_fd. */
static mc_status spawn(mc_group *g, mc_err *err) {
    char path[4096], num[3][16];
    const char *argv[MAX_WORKER_ARGS + 32];
    int argc = 0, k = 0;
    bool mpi = g->ranks > 1;
    char np[16];
    snprintf(np, sizeof np, "%u", g->ranks);
    if (mpi) {
        if (!find_in_path(g->mpirun, path, sizeof path))
            return mc_err_set(err, MC_ERR_IO, "service: %s: not found (give the mpirun to use)",
                              g->mpirun);
        argv[argc++] = g->mpirun;
        argv[argc++] = "-np";
        argv[argc++] = np;
        argv[argc++] = "--oversubscribe";
        argv[argc++] = "--bind-to";
        argv[argc++] = "none";
        if (geteuid() == 0) argv[argc++] = "--allow-run-as-root";
    } else {
        copy_str(path, sizeof path, g->exe);
        if (access(path, X_OK) != 0)
            return mc_err_set(err, MC_ERR_IO, "service: %s: cannot run it: %s", g->exe,
                              strerror(errno));
    }
    argv[argc++] = g->exe;
    argv[argc++] = "worker";
    argv[argc++] = g->model_dir ? "--model" : "--shards";
    argv[argc++] = g->model_dir ? g->model_dir : g->shards_dir;
    argv[argc++] = "--listen";
    argv[argc++] = "tcp://127.0.0.1:*";
    num_arg(argv, &argc, num, &k, "--kv-blocks", g->kv_blocks);
    num_arg(argv, &argc, num, &k, "--kv-block-size", g->kv_block_size);
    num_arg(argv, &argc, num, &k, "--max-batch-tokens", g->max_batch_tokens);
    for (size_t i = 0; i < g->n_args; i++)
        argv[argc++] = g->args[i];
    argv[argc] = NULL;
    /* the environment, built before fork (only async-signal-safe calls after) */
    size_t n_env = 0;
    bool has_mpi_env = false;
    for (char **e = environ; e && *e; e++, n_env++)
        has_mpi_env |= !strncmp(*e, MPI_ENV, strcspn(MPI_ENV, "=") + 1);
    const char **envp = calloc(n_env + 2, sizeof *envp);
    if (!envp) return mc_err_set(err, MC_ERR_NOMEM, "service: out of memory");
    for (size_t i = 0; i < n_env; i++)
        envp[i] = environ[i];
    if (mpi && !has_mpi_env) envp[n_env++] = MPI_ENV;
    int p[2];
    if (pipe(p) != 0 || fcntl(p[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(p[1], F_SETFD, FD_CLOEXEC) != 0) {
        free((void *)envp);
        return mc_err_set(err, MC_ERR_IO, "service: pipe: %s", strerror(errno));
    }
    long max_fd = sysconf(_SC_OPEN_MAX);
    if (max_fd < 0 || max_fd > 65536) max_fd = 65536;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) { /* the child: its own process group, stdout into the pipe */
        setpgid(0, 0);
        /* the group ends with the coordinator, even one killed with SIGKILL
         * (mpirun passes the SIGTERM on to its ranks); the signal comes when
         * the forking thread (the service's driver, alive as long as the
         * service) exits */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(126);
        if (dup2(p[1], 1) < 0) _exit(127);
        for (int fd = 3; fd < max_fd; fd++)
            close(fd);
        execve(path, (char *const *)(uintptr_t)argv, (char *const *)(uintptr_t)envp);
        static const char msg[] = "moecluster: cannot start the worker group\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    int fork_errno = errno;
    free((void *)envp);
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return mc_err_set(err, MC_ERR_IO, "service: fork: %s", strerror(fork_errno));
    }
    setpgid(pid, pid); /* (also in the child: whichever runs first) */
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    g->pid = pid;
    g->reaped = false;
    g->status = 0;
    g->out_fd = p[0];
    g->line_n = 0;
    if (!g->quiet)
        fprintf(stderr, "moecluster: starting the worker group: %s%s ... (pid %d)\n",
                mpi ? "mpirun -np " : g->exe, mpi ? np : " worker", (int)pid);
    return MC_OK;
}

/* Waits for "listening on ADDR" (bounded), watching the child and keep. */
static mc_status wait_listening(mc_group *g, mc_group_keep_fn keep, void *ctx, char *addr,
                                size_t cap, mc_err *err) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    addr[0] = '\0';
    bool eof = false;
    while (!addr[0]) {
        if (ms_since(&t0) > g->load_ms)
            return mc_err_set(err, MC_ERR_IO,
                              "the worker group printed no \"listening on\" line within %d ms",
                              g->load_ms);
        if (keep && !keep(ctx)) return mc_err_set(err, MC_ERR_IO, "stopped while loading");
        if (!eof) {
            struct pollfd pf = {g->out_fd, POLLIN, 0};
            if (poll(&pf, 1, 100) > 0 && read_lines(g, addr, cap) < 0) eof = true;
        } else {
            sleep_ms(100);
        }
        if (!addr[0] && child_gone(g)) {
            char how[64];
            describe_exit(g, how, sizeof how);
            return mc_err_set(err, MC_ERR_IO,
                              "the worker group exited before it was ready (%s; its stderr "
                              "says why)",
                              how);
        }
    }
    return MC_OK;
}

/* ---- up / down ---- */

mc_status mc_group_up(mc_group *g, mc_group_keep_fn keep, void *ctx, mc_err *err) {
    mc_group_down(g, false);
    char addr[300];
    mc_status st = MC_OK;
    if (g->attach) {
        copy_str(addr, sizeof addr, g->attach);
    } else {
        if ((st = spawn(g, err)) != MC_OK) return st;
        if ((st = wait_listening(g, keep, ctx, addr, sizeof addr, err)) != MC_OK) goto fail;
    }
    if ((st = mc_workers_connect(addr, g->step_ms, &g->w, err)) != MC_OK) goto fail;
    if (g->pid) mc_workers_set_watch(g->w, watch_gone, g);
    g->info = *mc_workers_get_info(g->w);
    g->failed = false;
    g->why[0] = '\0';
    g->n_live = g->n_pending = 0;
    return MC_OK;
fail:
    mc_group_down(g, false);
    return st;
}

void mc_group_down(mc_group *g, bool graceful) {
    bool answered = false;
    if (g->w) {
        mc_err e;
        mc_err_clear(&e);
        if (graceful && g->pid && !g->failed && !child_gone(g)) /* not an attached group */
            answered = mc_workers_shutdown(g->w, &e) == MC_OK;
        mc_workers_close(g->w);
        g->w = NULL;
    }
    if (g->pid) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        while (answered && !child_gone(g) && ms_since(&t0) < SHUTDOWN_WAIT_MS)
            sleep_ms(20);
        kill_group(g);
    }
    if (g->out_fd >= 0) {
        (void)read_lines(g, NULL, 0);
        close(g->out_fd);
        g->out_fd = -1;
    }
    g->n_live = g->n_pending = 0;
}

const mc_workers_info *mc_group_info(const mc_group *g) {
    return g->w ? &g->info : NULL;
}

bool mc_group_failed(const mc_group *g, char *why, size_t cap) {
    if (g->failed && why && cap) snprintf(why, cap, "%s", g->why);
    return g->failed;
}

static mc_status set_failed(mc_group *g, const char *why, mc_err *err) {
    if (!g->failed) {
        g->failed = true;
        copy_str(g->why, sizeof g->why, why);
    }
    return mc_err_set(err, MC_ERR_IO, "%s", g->why);
}

/* ---- the runner ---- */

static bool ids_push(uint64_t **a, size_t *n, size_t *cap, uint64_t id) {
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 64;
        uint64_t *b = realloc(*a, c * sizeof *b); /* (c) */
        if (!b) return false;
        *a = b;
        *cap = c;
    }
    (*a)[(*n)++] = id;
    return true;
}

static mc_status group_step(mc_group *g, const mc_step_plan *plan, float *logits, int32_t *top_ids,
                            float *top_lp, float *top_lg, int32_t *draw_tok,
                            uint64_t *draw_state, mc_err *err) {
    if (!g->w || g->failed)
        return mc_err_set(err, MC_ERR_IO, "the worker group is down%s%s", g->why[0] ? ": " : "",
                          g->why);
    mc_status st = draw_tok  ? mc_workers_run_release_draw(g->w, plan, g->pending, g->n_pending,
                                                           draw_tok, draw_state, err)
                   : top_ids ? mc_workers_run_release_top(g->w, plan, g->pending, g->n_pending,
                                                          top_ids, top_lp, top_lg, err)
                             : mc_workers_run_release(g->w, plan, g->pending, g->n_pending,
                                                      logits, err);
    if (st == MC_OK) {
        g->n_pending = 0;
        for (uint32_t i = 0; i < plan->n_seqs; i++) {
            uint64_t id = plan->seqs[i].seq_id;
            size_t k = 0;
            while (k < g->n_live && g->live[k] != id)
                k++;
            if (k == g->n_live && !ids_push(&g->live, &g->n_live, &g->cap_live, id))
                return set_failed(g, "out of memory for the sequence list", err);
        }
        return MC_OK;
    }
    if (st == MC_ERR_IO) return set_failed(g, err->msg, err);
    /* the group refused the step or failed it: the releases were applied
     * or not; send them alone (a refusal means they were) */
    if (g->n_pending) {
        mc_err e;
        mc_err_clear(&e);
        if (mc_workers_release(g->w, g->pending, g->n_pending, &e) == MC_ERR_IO)
            set_failed(g, e.msg, &e);
        g->n_pending = 0;
    }
    return st;
}

static mc_status group_run(void *ctx, const mc_step_plan *plan, float *logits, mc_err *err) {
    return group_step(ctx, plan, logits, NULL, NULL, NULL, NULL, NULL, err);
}

static mc_status group_run_top(void *ctx, const mc_step_plan *plan, int32_t *top_ids,
                               float *top_lp, float *top_lg, mc_err *err) {
    return group_step(ctx, plan, NULL, top_ids, top_lp, top_lg, NULL, NULL, err);
}

static mc_status group_run_draw(void *ctx, const mc_step_plan *plan, int32_t *tokens,
                                uint64_t *states, mc_err *err) {
    return group_step(ctx, plan, NULL, NULL, NULL, NULL, tokens, states, err);
}

static mc_status group_release(void *ctx, uint64_t seq_id, mc_err *err) {
    mc_group *g = ctx;
    for (size_t k = 0; k < g->n_live; k++)
        if (g->live[k] == seq_id) {
            g->live[k] = g->live[--g->n_live];
            if (!ids_push(&g->pending, &g->n_pending, &g->cap_pending, seq_id))
                return mc_err_set(err, MC_ERR_NOMEM, "out of memory for a release");
            return MC_OK;
        }
    return mc_err_set(err, MC_ERR_NOT_FOUND, "sequence %llu: the group never ran it",
                      (unsigned long long)seq_id);
}

void mc_group_runner(mc_group *g, mc_step_runner *out) {
    /* MC_WORKER_DRAWS=0: whole rows instead of the workers' draws (comparisons) */
    const char *wd = getenv("MC_WORKER_DRAWS");
    bool draws = !(wd && strcmp(wd, "0") == 0);
    *out = (mc_step_runner){.ctx = g,
                            .run = group_run,
                            .run_top = group_run_top,
                            .run_draw = draws ? group_run_draw : NULL,
                            .release = group_release,
                            .vocab = g->info.vocab,
                            .n_blocks = g->info.n_blocks,
                            .block_size = g->info.block_size,
                            .max_pos = g->info.max_pos,
                            .max_batch_tokens = g->info.max_batch_tokens};
}

mc_status mc_group_tick(mc_group *g, bool idle, mc_err *err) {
    if (g->failed) return mc_err_set(err, MC_ERR_IO, "%s", g->why);
    if (g->out_fd >= 0) (void)read_lines(g, NULL, 0);
    if (g->pid && child_gone(g)) {
        char how[64], why[128];
        describe_exit(g, how, sizeof how);
        snprintf(why, sizeof why, "the worker group exited (%s)", how);
        return set_failed(g, why, err);
    }
    if (!idle || !g->w) return MC_OK;
    mc_err e;
    mc_err_clear(&e);
    mc_status st;
    if (g->n_pending) {
        st = mc_workers_release(g->w, g->pending, g->n_pending, &e);
        g->n_pending = 0; /* released, or refused (then unknown there) */
    } else {
        st = mc_workers_heartbeat(g->w, NULL, &e);
    }
    if (st == MC_ERR_IO) return set_failed(g, e.msg, err);
    return MC_OK;
}
