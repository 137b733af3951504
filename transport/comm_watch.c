/* comm_watch.c - the MPI backend's watchdog thread, the per-host progress
 * board, and the MC_COMM_TIMEOUT parser. See comm_watch.h. */
#include "comm_watch.h"
#include "comm_mpi.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BOARD_MAGIC 0x3164726f4263634dULL /* "MccBord1" */
/* How often the thread looks (at most): launcher, heartbeat, timeout. */
#define TICK_MAX_NS 250000000LL
#define TICK_MIN_NS 10000000LL
/* A heartbeat older than this (and half the timeout) means "not responding". */
#define STALE_MIN_NS 2000000000LL
/* Ranks named in one message before "...". */
#define LIST_MAX 16

typedef struct {
    _Atomic int64_t pid; /* 0: no rank of this host */
    _Atomic int64_t heartbeat_ns;
    _Atomic int64_t busy_since; /* like g_busy_since, for the other ranks */
    _Atomic uint64_t comm_id[MC_WATCH_COMMS]; /* 0: free entry */
    _Atomic uint64_t calls[MC_WATCH_COMMS];
} board_slot;

typedef struct {
    uint64_t magic;
    uint64_t world_size;
    board_slot slot[];
} board_head;

static board_head *g_board = NULL;
static board_slot *g_me = NULL; /* this rank's slot */
static size_t g_board_bytes = 0;
static int g_rank = 0;
static long long g_timeout_ns = 0;
static long g_launcher = 0;

/* While the rank is inside an MPI call: when it started (ns, monotonic),
 * the call, its communicator and peer. Written by the rank, read here. */
static _Atomic long long g_busy_since = 0;
static _Atomic(const char *) g_busy_op = NULL;
static _Atomic(mc_watch_comm *) g_busy_comm = NULL;
static _Atomic int g_busy_peer = -1;
/* Held while a report reads a communicator, and while one is untracked. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static pthread_t g_thread;
static bool g_running = false;
static _Atomic int g_stop = 0;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- MC_COMM_TIMEOUT --------------------------------------------------- */

mc_status mc_comm_timeout_parse(const char *text, double *seconds, mc_err *err)
{
    const char *p = text ? text : "";
    size_t whole = 0, frac = 0;
    for (; *p >= '0' && *p <= '9'; p++)
        whole++;
    bool dot = *p == '.';
    if (dot)
        for (p++; *p >= '0' && *p <= '9'; p++)
            frac++;
    bool ok = whole > 0 && *p == '\0' && (!dot || frac > 0) && whole <= 12;
    double v = ok ? strtod(text, NULL) : 0.0;
    if (ok && (v > MC_COMM_TIMEOUT_MAX_S || (v > 0.0 && v < 0.001)))
        ok = false;
    if (!ok)
        return mc_err_set(err, MC_ERR_ARG,
                          "MC_COMM_TIMEOUT='%.80s' is not a timeout: want seconds from 0.001 to "
                          "%d (e.g. 600 or 2.5), or 0 to turn the watchdog off",
                          text ? text : "", MC_COMM_TIMEOUT_MAX_S);
    *seconds = v;
    return MC_OK;
}

/* ---- board ------------------------------------------------------------- */

static size_t board_bytes(int world_size)
{
    return sizeof(board_head) + (size_t)world_size * sizeof(board_slot);
}

static board_slot *slot_of(int world_rank)
{
    if (!g_board || world_rank < 0 || (uint64_t)world_rank >= g_board->world_size)
        return NULL;
    board_slot *s = &g_board->slot[world_rank];
    return atomic_load(&s->pid) ? s : NULL;
}

static mc_status board_map(int fd, int world_rank, int world_size, bool create, const char *name,
                           mc_err *err)
{
    size_t bytes = board_bytes(world_size);
    struct stat sb;
    if (fstat(fd, &sb) != 0 || (size_t)sb.st_size != bytes)
        return mc_err_set(err, MC_ERR_IO, "progress board %s: %zu bytes, want %zu", name,
                          (size_t)sb.st_size, bytes);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return mc_err_set(err, MC_ERR_IO, "progress board %s: mmap: %s", name, strerror(errno));
    board_head *h = p;
    if (create) {
        h->world_size = (uint64_t)world_size;
        h->magic = BOARD_MAGIC;
    } else if (h->magic != BOARD_MAGIC || h->world_size != (uint64_t)world_size) {
        munmap(p, bytes);
        return mc_err_set(err, MC_ERR_FORMAT, "progress board %s: not made for %d ranks", name,
                          world_size);
    }
    g_board = h;
    g_board_bytes = bytes;
    g_rank = world_rank;
    g_me = &h->slot[world_rank];
    atomic_store(&h->slot[world_rank].heartbeat_ns, now_ns());
    atomic_store(&h->slot[world_rank].pid, (int64_t)getpid());
    return MC_OK;
}

mc_status mc_watch_board_create(int world_rank, int world_size, char name[MC_WATCH_NAME],
                                mc_err *err)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        snprintf(name, MC_WATCH_NAME, "/moecluster-%ld-%llx-%d", (long)getpid(),
                 (unsigned long long)now_ns(), attempt);
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd < 0 && errno == EEXIST)
            continue;
        if (fd < 0)
            return mc_err_set(err, MC_ERR_IO, "progress board %s: shm_open: %s", name,
                              strerror(errno));
        mc_status st = MC_OK;
        if (ftruncate(fd, (off_t)board_bytes(world_size)) != 0)
            st = mc_err_set(err, MC_ERR_IO, "progress board %s: ftruncate: %s", name,
                            strerror(errno));
        else
            st = board_map(fd, world_rank, world_size, true, name, err);
        close(fd);
        if (st != MC_OK)
            shm_unlink(name);
        return st;
    }
    return mc_err_set(err, MC_ERR_IO, "progress board: no free name");
}

mc_status mc_watch_board_attach(int world_rank, int world_size, const char *name, mc_err *err)
{
    int fd = shm_open(name, O_RDWR, 0600);
    if (fd < 0)
        return mc_err_set(err, MC_ERR_IO, "progress board %s: shm_open: %s", name,
                          strerror(errno));
    mc_status st = board_map(fd, world_rank, world_size, false, name, err);
    close(fd);
    return st;
}

void mc_watch_board_unlink(const char *name) { shm_unlink(name); }

/* ---- tracking (the rank's own thread) ---------------------------------- */

void mc_watch_track(mc_watch_comm *w)
{
    w->entry = -1;
    atomic_store(&w->calls, 0);
    board_slot *s = slot_of(g_rank);
    if (!s)
        return;
    for (int e = 0; e < MC_WATCH_COMMS; e++)
        if (atomic_load(&s->comm_id[e]) == 0) {
            atomic_store(&s->calls[e], 0);
            atomic_store(&s->comm_id[e], w->id);
            w->entry = e;
            return;
        }
}

void mc_watch_untrack(mc_watch_comm *w)
{
    pthread_mutex_lock(&g_lock);
    board_slot *s = slot_of(g_rank);
    if (s && w->entry >= 0)
        atomic_store(&s->comm_id[w->entry], 0);
    w->entry = -1;
    if (atomic_load(&g_busy_comm) == w)
        atomic_store(&g_busy_comm, NULL);
    pthread_mutex_unlock(&g_lock);
}

void mc_watch_collective(mc_watch_comm *w)
{
    uint64_t n = atomic_fetch_add(&w->calls, 1) + 1;
    board_slot *s = w->entry >= 0 ? slot_of(g_rank) : NULL;
    if (s)
        atomic_store_explicit(&s->calls[w->entry], n, memory_order_release);
}

void mc_watch_enter(mc_watch_comm *w, const char *op, int peer)
{
    if (!g_timeout_ns)
        return;
    atomic_store(&g_busy_op, op);
    atomic_store(&g_busy_comm, w);
    atomic_store(&g_busy_peer, peer);
    long long now = now_ns();
    atomic_store(&g_busy_since, now);
    if (g_me)
        atomic_store_explicit(&g_me->busy_since, now, memory_order_relaxed);
}

void mc_watch_leave(void)
{
    if (!g_timeout_ns)
        return;
    atomic_store(&g_busy_since, 0);
    if (g_me)
        atomic_store_explicit(&g_me->busy_since, 0, memory_order_relaxed);
}

/* ---- reports (the watchdog thread) ------------------------------------- */

typedef struct {
    char text[1024];
    size_t len;
    int count;
    int ranks[LIST_MAX];
} rank_list;

static bool list_has(const rank_list *l, int rank)
{
    for (int i = 0; i < l->count && i < LIST_MAX; i++)
        if (l->ranks[i] == rank)
            return true;
    return false;
}

static void list_add(rank_list *l, int rank, const char *note)
{
    if (l->count < LIST_MAX)
        l->ranks[l->count] = rank;
    if (l->count++ >= LIST_MAX) {
        if (l->count == LIST_MAX + 1 && l->len < sizeof l->text - 8)
            l->len += (size_t)snprintf(l->text + l->len, sizeof l->text - l->len, ", ...");
        return;
    }
    if (l->len >= sizeof l->text - 1)
        return;
    int k = snprintf(l->text + l->len, sizeof l->text - l->len, "%s%d%s%s%s", l->len ? ", " : "",
                     rank, note ? " (" : "", note ? note : "", note ? ")" : "");
    if (k > 0)
        l->len += (size_t)k < sizeof l->text - l->len ? (size_t)k : sizeof l->text - 1 - l->len;
}

/* The state letter of /proc/PID/stat ('R', 'S', 'T', 'Z', ...), 'X' when
 * the process is gone, 0 when unknown. */
static char proc_state(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return errno == ENOENT ? 'X' : 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')'); /* the command name may hold spaces */
    return paren && paren[1] == ' ' ? paren[2] : 0;
}

/* Why a rank of this host cannot make progress, or NULL when it seems to. */
static const char *stuck_note(board_slot *s, long long now)
{
    if (s == g_me)
        return NULL;
    char st = proc_state((long)atomic_load(&s->pid));
    if (st == 'T' || st == 't')
        return "stopped";
    if (st == 'Z' || st == 'X')
        return "exited";
    long long stale = g_timeout_ns / 2 > STALE_MIN_NS ? g_timeout_ns / 2 : STALE_MIN_NS;
    long long hb = atomic_load(&s->heartbeat_ns);
    return hb && now - hb > stale ? "not responding" : NULL;
}

/* stuck_note, or whether the rank is itself waiting in an MPI call. */
static const char *busy_note(board_slot *s, long long now)
{
    const char *note = stuck_note(s, now);
    if (!note && atomic_load_explicit(&s->busy_since, memory_order_relaxed))
        note = "itself waiting in an MPI call";
    return note;
}

static void report_timeout(long long since, long long now)
{
    pthread_mutex_lock(&g_lock);
    if (atomic_load(&g_busy_since) != since) { /* the call ended meanwhile */
        pthread_mutex_unlock(&g_lock);
        return;
    }
    const char *op = atomic_load(&g_busy_op);
    mc_watch_comm *w = atomic_load(&g_busy_comm);
    int peer = atomic_load(&g_busy_peer);
    rank_list missing = {.len = 0}, unknown = {.len = 0};
    if (w && peer >= 0 && peer < w->size) { /* send / recv: the peer */
        int g = w->world[peer];
        board_slot *s = slot_of(g);
        list_add(&missing, g, s ? busy_note(s, now) : NULL);
    } else if (w) { /* collective: members behind this rank, or stuck */
        uint64_t mine = atomic_load(&w->calls);
        for (int i = 0; i < w->size; i++) {
            int g = w->world[i];
            board_slot *s = i == w->rank ? NULL : slot_of(g);
            int e = -1;
            for (int k = 0; s && k < MC_WATCH_COMMS && e < 0; k++)
                if (atomic_load(&s->comm_id[k]) == w->id)
                    e = k;
            if (i == w->rank)
                continue;
            if (e < 0) { /* on another host, or this comm is not on its slot */
                list_add(&unknown, g, s ? "untracked" : NULL);
                continue;
            }
            const char *note = stuck_note(s, now);
            bool behind = atomic_load_explicit(&s->calls[e], memory_order_acquire) < mine;
            if (behind && !note)
                note = busy_note(s, now);
            if (behind || note)
                list_add(&missing, g, note);
        }
    }
    /* any rank of this host that cannot progress may be what holds the
     * missing ones up (they may wait for it in another call) */
    rank_list stuck = {.len = 0};
    for (int g = 0; g_board && (uint64_t)g < g_board->world_size; g++) {
        board_slot *s = slot_of(g);
        const char *note = s && !list_has(&missing, g) ? stuck_note(s, now) : NULL;
        if (note)
            list_add(&stuck, g, note);
    }
    char size[32] = "";
    if (w)
        snprintf(size, sizeof size, " on a %d-rank communicator", w->size);
    /* ranks without a slot here: on other hosts (or no board at all) */
    const char *where = g_board ? "on other hosts" : "no progress board";
    char who[2304];
    if (missing.count)
        snprintf(who, sizeof who, "for rank(s) %s, which did not arrive%s%s%s%s%s", missing.text,
                 unknown.count ? "; rank(s) " : "", unknown.text, unknown.count ? " (" : "",
                 unknown.count ? where : "", unknown.count ? ") are not known to have arrived" : "");
    else if (unknown.count)
        snprintf(who, sizeof who, "for rank(s) %s (%s), not known to have arrived", unknown.text,
                 where);
    else if (w)
        snprintf(who, sizeof who, "for its peers, which all entered the call");
    else
        snprintf(who, sizeof who, "for its peers");
    fprintf(stderr,
            "moecluster: rank %d (host %s): %s%s has waited %.0f s %s%s%s%s; ending the job "
            "(MC_COMM_TIMEOUT=%g)\n",
            g_rank, mc_comm_host(), op ? op : "an MPI call", size, (double)(now - since) / 1e9,
            who, stuck.count ? "; rank(s) " : "", stuck.text,
            stuck.count ? " on this host cannot progress" : "", (double)g_timeout_ns / 1e9);
    fflush(stderr);
    _exit(MC_WATCH_EXIT);
}

static void *watch_main(void *arg)
{
    (void)arg;
    /* signals are for the rank's own threads; and a report written to the
     * pipe of a killed mpirun fails with EPIPE instead of raising SIGPIPE */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    long long tick = TICK_MAX_NS;
    if (g_timeout_ns && g_timeout_ns / 8 < tick)
        tick = g_timeout_ns / 8 > TICK_MIN_NS ? g_timeout_ns / 8 : TICK_MIN_NS;
    long long last = now_ns();
    while (!atomic_load(&g_stop)) {
        struct timespec ts = {.tv_sec = tick / 1000000000LL, .tv_nsec = tick % 1000000000LL};
        nanosleep(&ts, NULL);
        long long now = now_ns(), gap = now - last - tick;
        last = now;
        board_slot *me = slot_of(g_rank);
        if (me)
            atomic_store(&me->heartbeat_ns, now);
        if (g_launcher > 1 && (long)getppid() != g_launcher) {
            fprintf(stderr, "moecluster: rank %d (host %s): the launcher (pid %ld) is gone; "
                            "exiting\n",
                    g_rank, mc_comm_host(), g_launcher);
            fflush(stderr);
            _exit(MC_WATCH_EXIT);
        }
        long long since = atomic_load(&g_busy_since);
        /* this process itself was stopped (SIGSTOP) for a while: that time
         * was not spent waiting for the peers, so it moves the deadline */
        if (since && gap > STALE_MIN_NS / 2 &&
            atomic_compare_exchange_strong(&g_busy_since, &since, since + gap))
            continue;
        if (g_timeout_ns && since && now - since > g_timeout_ns)
            report_timeout(since, now);
    }
    return NULL;
}

mc_status mc_watch_start(int world_rank, double timeout_s, long launcher_pid, mc_err *err)
{
    g_rank = world_rank;
    g_timeout_ns = timeout_s > 0 ? (long long)(timeout_s * 1e9) : 0;
    g_launcher = launcher_pid;
    (void)mc_comm_host(); /* fills its cache before the thread may read it */
    atomic_store(&g_stop, 0);
    atomic_store(&g_busy_since, 0);
    int rc = pthread_create(&g_thread, NULL, watch_main, NULL);
    if (rc != 0) {
        g_timeout_ns = 0;
        return mc_err_set(err, MC_ERR_IO, "rank %d (host %s): cannot start the watchdog: %s",
                          world_rank, mc_comm_host(), strerror(rc));
    }
    g_running = true;
    return MC_OK;
}

void mc_watch_stop(void)
{
    if (g_running) {
        atomic_store(&g_stop, 1);
        pthread_join(g_thread, NULL);
        g_running = false;
    }
    g_timeout_ns = 0;
    if (g_board) {
        munmap(g_board, g_board_bytes);
        g_board = NULL;
        g_me = NULL;
    }
}
