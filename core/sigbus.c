/* sigbus.c - SIGBUS on a registered file map -> one line naming the file
 * (see sigbus.h). The handler only reads the table (atomics), calls
 * write(2), sigaction(2), raise(3) and _exit(2): all async-signal-safe. */
#define _GNU_SOURCE
#include "sigbus.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    _Atomic uintptr_t base; /* 0: free */
    _Atomic size_t len;     /* rounded up to whole pages */
    const char *_Atomic path;
} mc_sigbus_slot;

static mc_sigbus_slot g_slots[MC_SIGBUS_SLOTS];
static _Atomic int g_hi;    /* slots [0, g_hi) may be in use */
static _Atomic int g_count; /* slots in use */
static bool g_installed;
static struct sigaction g_old; /* the disposition before ours */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static void put(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    uintptr_t a = (uintptr_t)si->si_addr;
    int hi = atomic_load_explicit(&g_hi, memory_order_acquire);
    for (int i = 0; i < hi && si->si_code > 0; i++) {
        uintptr_t b = atomic_load_explicit(&g_slots[i].base, memory_order_acquire);
        if (!b || a < b || a - b >= atomic_load_explicit(&g_slots[i].len, memory_order_relaxed))
            continue;
        const char *p = atomic_load_explicit(&g_slots[i].path, memory_order_relaxed);
        put("moecluster: ");
        put(p ? p : "a mapped file");
        put(": the file shrank while mapped (truncated or replaced by another process?); "
            "stopping\n");
        _exit(1);
    }
    /* Not one of ours: the disposition from before takes over. A fault
     * happens again when the access is retried on return; a SIGBUS sent by
     * kill(2) or raise(3) is sent again. */
    sigaction(sig, &g_old, NULL);
    if (si->si_code <= 0)
        raise(sig);
}

/* with g_lock held */
static int install(void)
{
    if (g_installed)
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &g_old) != 0)
        return -1;
    g_installed = true;
    return 0;
}

int mc_sigbus_register(const void *base, size_t len, const char *path)
{
    if (!base || len == 0)
        return -1;
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    size_t span = len + (page - len % page) % page;
    if (span < len)
        span = len;
    pthread_mutex_lock(&g_lock);
    int rc = install();
    int hi = atomic_load_explicit(&g_hi, memory_order_relaxed), i = 0;
    while (rc == 0 && i < hi && atomic_load_explicit(&g_slots[i].base, memory_order_relaxed))
        i++;
    if (rc == 0 && i == MC_SIGBUS_SLOTS)
        rc = -1;
    if (rc == 0) {
        atomic_store_explicit(&g_slots[i].path, path, memory_order_relaxed);
        atomic_store_explicit(&g_slots[i].len, span, memory_order_relaxed);
        atomic_store_explicit(&g_slots[i].base, (uintptr_t)base, memory_order_release);
        if (i == hi)
            atomic_store_explicit(&g_hi, hi + 1, memory_order_release);
        atomic_fetch_add(&g_count, 1);
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

void mc_sigbus_unregister(const void *base)
{
    if (!base)
        return;
    pthread_mutex_lock(&g_lock);
    int hi = atomic_load_explicit(&g_hi, memory_order_relaxed);
    for (int i = 0; i < hi; i++) {
        if (atomic_load_explicit(&g_slots[i].base, memory_order_relaxed) != (uintptr_t)base)
            continue;
        atomic_store_explicit(&g_slots[i].base, 0, memory_order_release);
        atomic_store_explicit(&g_slots[i].path, NULL, memory_order_relaxed);
        atomic_fetch_sub(&g_count, 1);
        break;
    }
    while (hi > 0 && !atomic_load_explicit(&g_slots[hi - 1].base, memory_order_relaxed))
        hi--;
    atomic_store_explicit(&g_hi, hi, memory_order_release);
    pthread_mutex_unlock(&g_lock);
}

int mc_sigbus_count(void) { return atomic_load(&g_count); }
