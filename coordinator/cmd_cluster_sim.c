/* cmd_cluster_sim.c - `moecluster cluster-sim`: emulated nodes on one Linux
 * machine. Each node is a network namespace (PREFIX-node1..N) with one veth
 * link to a bridge in the root namespace (PREFIX-br0), an address on a
 * private test subnet (node i = base + i), loopback up, and, with
 * --link-gbps, `tbf` shaping on both ends of its link. mpirun runs inside
 * node 1 and reaches the other nodes through an rsh agent script doing
 * `ip netns exec NODE`; Open MPI's TCP transport then carries every byte
 * between nodes across a real network stack (docs/cluster-sim.md).
 *
 * Nothing on the host is touched beyond what `up` made: the bridge has no
 * address (so no host route), the namespaces and veths are new, and every
 * name and the subnet are checked against what exists first. `up` records
 * each object in STATE_DIR/state as soon as it exists; `down` removes
 * exactly those (ending the processes left in the namespaces) and is
 * idempotent. `ip` / `tc` run through fork + exec with argument vectors.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "status.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIM_MAX_NODES 64
#define SIM_MAX_ARGS 32
#define SIM_OUT_CAP 8192 /* bytes of a child's output kept for messages and parsing */

static const char sim_usage_text[] =
    "usage: moecluster cluster-sim up|down|run --nodes N [--ranks-per-node R]\n"
    "                              [--link-gbps G] [--subnet A.B.C.D/L] [--name PREFIX]\n"
    "                              [--state-dir DIR] [--mpirun PATH] [-- COMMAND...]\n\n"
    "  up                create the emulated nodes (network namespaces PREFIX-node1..N on a\n"
    "                    bridge PREFIX-br0), the hostfile and the rsh agent; needs root\n"
    "  down              remove exactly what up made (safe to repeat)\n"
    "  run               up, mpirun -np N*R COMMAND across the nodes, down (also after a\n"
    "                    failure, Ctrl-C or SIGTERM); exits with COMMAND's status\n"
    "  --nodes           emulated nodes, 1 to 64 (up, run)\n"
    "  --ranks-per-node  MPI ranks on each node (default 1)\n"
    "  --link-gbps       shape each node's link to G Gbit/s in both directions (tbf);\n"
    "                    default unshaped\n"
    "  --subnet          private subnet for the node addresses, /16 to /29, used only inside\n"
    "                    the namespaces (default 10.77.0.0/24); refused if it overlaps a route\n"
    "  --name            prefix of every name made, 1-8 of [a-z0-9], a letter first\n"
    "                    (default mcsim)\n"
    "  --state-dir       where the state, hostfile and agent go (default\n"
    "                    /run/moecluster-sim/PREFIX)\n"
    "  --mpirun          the mpirun to start (default: mpirun from PATH)\n";

typedef struct {
    char prefix[9];
    int nodes, rpn;
    double gbps;      /* 0: unshaped */
    uint32_t net;     /* subnet base, host order */
    int plen;         /* prefix length */
    char subnet[32];  /* "A.B.C.D/L", canonical */
    char dir[256];    /* state folder */
    const char *mpirun;
} sim_cfg;

static volatile sig_atomic_t sim_signal; /* SIGINT / SIGTERM / SIGHUP received */

static void sim_on_signal(int sig) { sim_signal = sig; }

/* Runs argv (argv[0] looked up in PATH) with stdin from /dev/null and stdout +
 * stderr captured into out (NUL-terminated, at most cap-1 bytes kept; the rest
 * is read and dropped). Returns the exit status, 128+signal when killed, or -1
 * when it could not start (out then says why). Nothing to free. */
static int sim_exec(char *const argv[], char *out, size_t cap)
{
    int fd[2];
    out[0] = 0;
    if (pipe(fd) != 0) {
        snprintf(out, cap, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(out, cap, "fork: %s", strerror(errno));
        close(fd[0]);
        close(fd[1]);
        return -1;
    }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        dup2(fd[1], 1);
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        execvp(argv[0], argv);
        dprintf(2, "cannot run %s: %s", argv[0], strerror(errno));
        _exit(127);
    }
    close(fd[1]);
    size_t n = 0;
    char drop[1024];
    for (;;) {
        ssize_t r = n + 1 < cap ? read(fd[0], out + n, cap - 1 - n) : read(fd[0], drop, sizeof drop);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (n + 1 < cap)
            n += (size_t)r;
    }
    out[n] = 0;
    close(fd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Runs argv (NULL-terminated); on a non-zero status records the command line,
 * its status and the first line of its output in e. Returns MC_OK or
 * MC_ERR_IO. */
static mc_status sim_cmd(char *const argv[], mc_err *e)
{
    char out[SIM_OUT_CAP];
    int rc = sim_exec(argv, out, sizeof out);
    if (rc == 0)
        return MC_OK;
    char line[512] = "";
    size_t k = 0;
    for (int i = 0; argv[i] && k + 2 < sizeof line; i++)
        k += (size_t)snprintf(line + k, sizeof line - k, "%s%s", i ? " " : "", argv[i]);
    out[strcspn(out, "\n")] = 0;
    return mc_err_set(e, MC_ERR_IO, "`%s` failed (exit %d): %s", line, rc,
                      out[0] ? out : "no message");
}

/* Splits buf in place at '\x1f' into argv (at most SIM_MAX_ARGS-1 words,
 * NULL-terminated; pointers into buf), so that no value is ever split at a
 * space or interpreted by a shell. */
static void sim_split(char *buf, char **argv)
{
    int k = 0;
    char *p = buf;
    while (k < SIM_MAX_ARGS - 1) {
        argv[k++] = p;
        char *s = strchr(p, '\x1f');
        if (!s)
            break;
        *s = 0;
        p = s + 1;
    }
    argv[k] = NULL;
}

/* Words of a command are joined with this separator in sim_run_fmt. */
#define W "\x1f"

/* Runs the command formatted from fmt (words joined by W). */
static mc_status sim_run_fmt(mc_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static mc_status sim_run_fmt(mc_err *e, const char *fmt, ...)
{
    char buf[1024], *argv[SIM_MAX_ARGS];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf)
        return mc_err_set(e, MC_ERR_INTERNAL, "command line too long");
    sim_split(buf, argv);
    return sim_cmd(argv, e);
}

static int sim_exists(const char *dir, const char *name)
{
    char p[320];
    struct stat st;
    snprintf(p, sizeof p, "%s/%.40s", dir, name);
    return lstat(p, &st) == 0;
}
static int sim_link_exists(const char *name) { return sim_exists("/sys/class/net", name); }
static int sim_netns_exists(const char *name) { return sim_exists("/run/netns", name); }

/* "A.B.C.D/L" -> base (host order, must have no host bits) and L in [16, 29]. */
static mc_status sim_parse_subnet(const char *s, uint32_t *net, int *plen, mc_err *e)
{
    char ip[20];
    const char *slash = strchr(s, '/');
    long long l;
    if (!slash || (size_t)(slash - s) >= sizeof ip)
        return mc_err_set(e, MC_ERR_ARG, "--subnet: '%s' is not A.B.C.D/L", s);
    memcpy(ip, s, (size_t)(slash - s));
    ip[slash - s] = 0;
    struct in_addr a;
    if (inet_pton(AF_INET, ip, &a) != 1 || mc_arg_int("cluster-sim", "--subnet", slash + 1, 16, 29, &l))
        return mc_err_set(e, MC_ERR_ARG, "--subnet: '%s' is not A.B.C.D/L with L in 16..29", s);
    uint32_t base = ntohl(a.s_addr), mask = ~0u << (32 - l);
    if (base & ~mask)
        return mc_err_set(e, MC_ERR_ARG, "--subnet: '%s' has host bits set", s);
    int private = (base >> 24) == 10 || (base >> 20) == (172u << 4 | 1) ||
                  (base >> 16) == (192u << 8 | 168);
    if (!private)
        return mc_err_set(e, MC_ERR_ARG,
                          "--subnet: '%s' is not in a private range (10/8, 172.16/12, 192.168/16)", s);
    *net = base;
    *plen = (int)l;
    return MC_OK;
}

/* Refuses a subnet that overlaps any IPv4 route of the root namespace (all
 * tables) other than a default route. */
static mc_status sim_check_routes(const sim_cfg *c, mc_err *e)
{
    char out[SIM_OUT_CAP * 4];
    char *argv[] = {"ip", "-4", "route", "show", "table", "all", NULL};
    int rc = sim_exec(argv, out, sizeof out);
    if (rc != 0)
        return mc_err_set(e, MC_ERR_IO, "`ip -4 route show table all` failed (exit %d): %.200s",
                          rc, out);
    static const char *types[] = {"local", "broadcast", "unicast", "unreachable", "blackhole",
                                  "prohibit", "multicast", "anycast", "throw", "nat"};
    uint32_t mask = ~0u << (32 - c->plen);
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        char w1[64] = "", w2[64] = "";
        for (size_t n = strlen(line); n && (line[n - 1] == ' ' || line[n - 1] == '\t');)
            line[--n] = 0;
        if (sscanf(line, "%63s %63s", w1, w2) < 1)
            continue;
        char *dst = w1;
        for (size_t i = 0; i < sizeof types / sizeof *types; i++)
            if (!strcmp(w1, types[i]))
                dst = w2;
        if (!strcmp(dst, "default"))
            continue;
        char ip[64];
        snprintf(ip, sizeof ip, "%s", dst);
        int l = 32;
        char *sl = strchr(ip, '/');
        if (sl) {
            *sl = 0;
            l = atoi(sl + 1);
        }
        struct in_addr a;
        if (inet_pton(AF_INET, ip, &a) != 1 || l < 0 || l > 32)
            continue;
        uint32_t r = ntohl(a.s_addr), rmask = l ? ~0u << (32 - l) : 0;
        uint32_t m = mask & rmask; /* the shorter of the two prefixes */
        if ((r & m) == (c->net & m))
            return mc_err_set(e, MC_ERR_ARG,
                              "--subnet %s overlaps the existing route '%.120s' (choose another "
                              "--subnet)",
                              c->subnet, line);
    }
    return MC_OK;
}

static void sim_ip_str(uint32_t host_order, char *buf, size_t cap)
{
    struct in_addr a = {htonl(host_order)};
    inet_ntop(AF_INET, &a, buf, (socklen_t)cap);
}

/* Appends one "kind name" line to the state file (created by sim_up). */
static mc_status sim_record(const sim_cfg *c, const char *kind, const char *name, mc_err *e)
{
    char p[300];
    snprintf(p, sizeof p, "%s/state", c->dir);
    FILE *f = fopen(p, "a");
    if (!f)
        return mc_err_set(e, MC_ERR_IO, "cannot write %s: %s", p, strerror(errno));
    int bad = fprintf(f, "%s %s\n", kind, name) < 0;
    bad |= fclose(f) != 0;
    return bad ? mc_err_set(e, MC_ERR_IO, "cannot write %s", p) : MC_OK;
}

/* Writes text to DIR/name with the given mode. */
static mc_status sim_write(const sim_cfg *c, const char *name, const char *text, mode_t mode,
                           mc_err *e)
{
    char p[300];
    snprintf(p, sizeof p, "%s/%s", c->dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode);
    if (fd < 0)
        return mc_err_set(e, MC_ERR_IO, "cannot write %s: %s", p, strerror(errno));
    size_t n = strlen(text);
    int bad = write(fd, text, n) != (ssize_t)n;
    bad |= close(fd) != 0;
    return bad ? mc_err_set(e, MC_ERR_IO, "cannot write %s", p) : MC_OK;
}

/* Refusals before anything is made: root, names and subnet free, `ip` works.
 * Returns MC_ERR_UNSUPPORTED when this machine cannot host namespaces. */
static mc_status sim_preflight(const sim_cfg *c, mc_err *e)
{
    if (geteuid() != 0)
        return mc_err_set(e, MC_ERR_UNSUPPORTED,
                          "cannot create network namespaces: not root (needs root for ip netns)");
    FILE *f = fopen("/proc/self/status", "r");
    char l[256];
    unsigned long long eff = ~0ull; /* unknown: let the first ip command tell */
    while (f && fgets(l, sizeof l, f))
        if (!strncmp(l, "CapEff:", 7))
            eff = strtoull(l + 7, NULL, 16);
    if (f)
        fclose(f);
    if (!(eff >> 12 & 1) || !(eff >> 21 & 1)) /* CAP_NET_ADMIN, CAP_SYS_ADMIN */
        return mc_err_set(e, MC_ERR_UNSUPPORTED, "cannot create network namespaces: no %s",
                          !(eff >> 12 & 1) ? "CAP_NET_ADMIN" : "CAP_SYS_ADMIN");
    char out[256];
    char *argv[] = {"ip", "netns", "list", NULL};
    int rc = sim_exec(argv, out, sizeof out);
    if (rc != 0)
        return mc_err_set(e, MC_ERR_UNSUPPORTED,
                          "cannot create network namespaces: `ip netns list` failed (exit %d): "
                          "%.120s (needs iproute2)",
                          rc, out);
    if (sim_exists(c->dir, "state"))
        return mc_err_set(e, MC_ERR_ARG,
                          "%s/state exists: the cluster '%s' is up (run `moecluster cluster-sim "
                          "down --name %s` first)",
                          c->dir, c->prefix, c->prefix);
    char name[32];
    snprintf(name, sizeof name, "%s-br0", c->prefix);
    if (sim_link_exists(name))
        return mc_err_set(e, MC_ERR_ARG, "an interface named %s exists already (use --name)", name);
    for (int i = 1; i <= c->nodes; i++) {
        snprintf(name, sizeof name, "%s-node%d", c->prefix, i);
        if (sim_netns_exists(name))
            return mc_err_set(e, MC_ERR_ARG, "a network namespace named %s exists already (use "
                                             "--name)", name);
        snprintf(name, sizeof name, "%s-v%d", c->prefix, i);
        if (sim_link_exists(name))
            return mc_err_set(e, MC_ERR_ARG, "an interface named %s exists already (use --name)",
                              name);
    }
    return sim_check_routes(c, e);
}

static mc_status sim_mkdirs(const char *dir, mc_err *e)
{
    char p[256];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || !*s) {
            char k = *s;
            *s = 0;
            if (mkdir(p, 0700) != 0 && errno != EEXIST)
                return mc_err_set(e, MC_ERR_IO, "cannot create %s: %s", p, strerror(errno));
            *s = k;
            if (!k)
                break;
        }
    }
    return MC_OK;
}

/* The tbf arguments for the configured rate: burst at least one timer tick
 * at that rate (250 Hz) and at least 128 KiB (veth passes 64 KiB GSO
 * packets), a 50 ms queue. */
static void sim_tbf(const sim_cfg *c, char *rate, size_t rcap, char *burst, size_t bcap)
{
    double bps = c->gbps * 1e9;
    double b = bps / 8 / 250;
    if (b < 131072)
        b = 131072;
    snprintf(rate, rcap, "%.0fbit", bps);
    snprintf(burst, bcap, "%.0f", b);
}

static mc_status sim_down(const sim_cfg *c, int quiet, mc_err *e);

/* Creates everything; on failure removes what it made. */
static mc_status sim_up(const sim_cfg *c, mc_err *e)
{
    mc_status st = sim_preflight(c, e);
    if (st != MC_OK)
        return st;
    if ((st = sim_mkdirs(c->dir, e)) != MC_OK)
        return st;
    if ((st = sim_write(c, "state", "", 0600, e)) != MC_OK)
        return st;
    char br[32], ns[32], v[32], ip[20], addr[40], rate[32], burst[32];
    char text[SIM_MAX_NODES * 48 + 64];
    size_t k = 0;
    snprintf(br, sizeof br, "%s-br0", c->prefix);
    /* the bridge: no address, so no route on the host */
    if ((st = sim_record(c, "link", br, e)))
        goto fail;
    if ((st = sim_run_fmt(e, "ip" W "link" W "add" W "%s" W "type" W "bridge", br))) {
        e->status = st = MC_ERR_UNSUPPORTED; /* the first thing made: this machine cannot */
        goto fail;
    }
    if ((st = sim_run_fmt(e, "ip" W "link" W "set" W "%s" W "up", br)))
        goto fail;
    if (c->gbps > 0)
        sim_tbf(c, rate, sizeof rate, burst, sizeof burst);
    for (int i = 1; i <= c->nodes && !sim_signal; i++) {
        snprintf(ns, sizeof ns, "%s-node%d", c->prefix, i);
        snprintf(v, sizeof v, "%s-v%d", c->prefix, i);
        sim_ip_str(c->net + (uint32_t)i, ip, sizeof ip);
        snprintf(addr, sizeof addr, "%s/%d", ip, c->plen);
        if ((st = sim_record(c, "netns", ns, e)))
            goto fail;
        if ((st = sim_run_fmt(e, "ip" W "netns" W "add" W "%s", ns))) {
            if (i == 1)
                e->status = st = MC_ERR_UNSUPPORTED; /* the first namespace: this machine cannot */
            goto fail;
        }
        if ((st = sim_record(c, "link", v, e)) ||
            (st = sim_run_fmt(e, "ip" W "link" W "add" W "%s" W "type" W "veth" W "peer" W "name" W
                                 "eth0" W "netns" W "%s", v, ns)) ||
            (st = sim_run_fmt(e, "ip" W "link" W "set" W "%s" W "master" W "%s", v, br)) ||
            (st = sim_run_fmt(e, "ip" W "link" W "set" W "%s" W "up", v)) ||
            (st = sim_run_fmt(e, "ip" W "-n" W "%s" W "link" W "set" W "lo" W "up", ns)) ||
            (st = sim_run_fmt(e, "ip" W "-n" W "%s" W "addr" W "add" W "%s" W "dev" W "eth0", ns,
                              addr)) ||
            (st = sim_run_fmt(e, "ip" W "-n" W "%s" W "link" W "set" W "eth0" W "up", ns)))
            goto fail;
        if (c->gbps > 0 &&
            ((st = sim_run_fmt(e, "tc" W "qdisc" W "add" W "dev" W "%s" W "root" W "tbf" W "rate" W
                                  "%s" W "burst" W "%s" W "latency" W "50ms", v, rate, burst)) ||
             (st = sim_run_fmt(e, "tc" W "-n" W "%s" W "qdisc" W "add" W "dev" W "eth0" W "root" W
                                  "tbf" W "rate" W "%s" W "burst" W "%s" W "latency" W "50ms",
                               ns, rate, burst))))
            goto fail;
        k += (size_t)snprintf(text + k, sizeof text - k, "%s slots=%d\n", ns, c->rpn);
        char tmp[300];
        snprintf(tmp, sizeof tmp, "%s/tmp-%s", c->dir, ns);
        if ((st = sim_mkdirs(tmp, e)))
            goto fail;
    }
    if (sim_signal) {
        st = mc_err_set(e, MC_ERR_IO, "interrupted by signal %d", (int)sim_signal);
        goto fail;
    }
    if ((st = sim_write(c, "hostfile", text, 0644, e)))
        goto fail;
    /* the rsh agent mpirun calls as `AGENT NODE COMMAND...`: the node's own
     * hostname (a UTS namespace) and its own TMPDIR (Open MPI's session dirs) */
    char agent[2048];
    snprintf(agent, sizeof agent,
             "#!/bin/sh\n"
             "# written by moecluster cluster-sim up: runs a command on an emulated node\n"
             "node=$1\nshift\n"
             "case \"$node\" in\n  %s-node[0-9]*) ;;\n"
             "  *) echo \"cluster-sim agent: '$node' is not a node of this cluster\" >&2; exit 1;;\n"
             "esac\n"
             "exec ip netns exec \"$node\" unshare --uts sh -c "
             "'hostname \"$0\" && TMPDIR=\"$1/tmp-$0\" && export TMPDIR && exec sh -c \"$2\"' "
             "\"$node\" '%s' \"$*\"\n",
             c->prefix, c->dir);
    if ((st = sim_write(c, "agent", agent, 0755, e)))
        goto fail;
    return MC_OK;
fail:;
    mc_err ignored;
    mc_err_clear(&ignored);
    sim_down(c, 1, &ignored);
    return st;
}

/* Ends the processes still inside namespace ns: SIGTERM, up to 2 s, SIGKILL. */
static void sim_end_pids(const char *ns)
{
    for (int round = 0; round < 3; round++) {
        char out[SIM_OUT_CAP];
        char *argv[] = {"ip", "netns", "pids", (char *)ns, NULL};
        if (sim_exec(argv, out, sizeof out) != 0)
            return;
        int any = 0;
        for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n")) {
            long long pid;
            char *end;
            pid = strtoll(l, &end, 10);
            if (*end || pid <= 1 || pid == getpid())
                continue;
            kill((pid_t)pid, round < 2 ? SIGTERM : SIGKILL);
            any = 1;
        }
        if (!any)
            return;
        for (int t = 0; t < 20; t++) {
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
    }
}

/* Removes what the state file lists (names checked against the prefix), then
 * the files of the state folder and the folder. Missing objects are not
 * errors (idempotent). */
static mc_status sim_down(const sim_cfg *c, int quiet, mc_err *e)
{
    char p[300], line[128];
    snprintf(p, sizeof p, "%s/state", c->dir);
    FILE *f = fopen(p, "r");
    if (!f) {
        if (errno == ENOENT) {
            if (!quiet)
                fprintf(stderr, "moecluster cluster-sim: '%s' is not up (no %s); nothing to do\n",
                        c->prefix, p);
            return MC_OK;
        }
        return mc_err_set(e, MC_ERR_IO, "cannot read %s: %s", p, strerror(errno));
    }
    char names[2 * SIM_MAX_NODES + 2][32];
    int kinds[2 * SIM_MAX_NODES + 2], n = 0;
    size_t plen = strlen(c->prefix);
    while (fgets(line, sizeof line, f) && n < 2 * SIM_MAX_NODES + 2) {
        char kind[16], name[32];
        if (sscanf(line, "%15s %31s", kind, name) != 2 || strncmp(name, c->prefix, plen) ||
            name[plen] != '-' || strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789-") !=
                                     strlen(name))
            continue; /* never act on a name this cluster could not have made */
        snprintf(names[n], sizeof names[n], "%s", name);
        kinds[n++] = !strcmp(kind, "netns");
    }
    fclose(f);
    mc_status st = MC_OK;
    for (int i = 0; i < n; i++)
        if (kinds[i] && sim_netns_exists(names[i]))
            sim_end_pids(names[i]);
    for (int i = 0; i < n; i++) /* veths and the bridge (a namespace's end goes with it) */
        if (!kinds[i] && sim_link_exists(names[i]) &&
            sim_run_fmt(e, "ip" W "link" W "del" W "%s", names[i]) != MC_OK)
            st = MC_ERR_IO;
    for (int i = 0; i < n; i++)
        if (kinds[i] && sim_netns_exists(names[i]) &&
            sim_run_fmt(e, "ip" W "netns" W "del" W "%s", names[i]) != MC_OK)
            st = MC_ERR_IO;
    if (st != MC_OK)
        return st; /* keep the state so that down can be repeated */
    static const char *files[] = {"hostfile", "agent", "state"};
    for (int i = 0; i < n; i++)
        if (kinds[i]) {
            snprintf(p, sizeof p, "%s/tmp-%.31s", c->dir, names[i]);
            char *argv[] = {"rm", "-rf", "--one-file-system", p, NULL};
            char out[256];
            sim_exec(argv, out, sizeof out);
        }
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(p, sizeof p, "%s/%s", c->dir, files[i]);
        unlink(p);
    }
    rmdir(c->dir);
    return MC_OK;
}

/* Starts mpirun inside node 1 (its namespace, hostname and TMPDIR) with the
 * cluster's hostfile and agent, waits for it, turning any SIGINT / SIGTERM /
 * SIGHUP of ours into a SIGTERM for it; after that it gets 15 s
 * before SIGKILL. Returns its exit status (128+signal when killed). */
static int sim_mpirun(const sim_cfg *c, int cargc, char **cargv, mc_err *e)
{
    char host[300], agent[300], np[16], tmp[300], ns[32], nsp[64];
    snprintf(host, sizeof host, "%s/hostfile", c->dir);
    snprintf(agent, sizeof agent, "%s/agent", c->dir);
    snprintf(ns, sizeof ns, "%s-node1", c->prefix);
    snprintf(nsp, sizeof nsp, "/run/netns/%s", ns);
    snprintf(tmp, sizeof tmp, "%s/tmp-%s", c->dir, ns);
    snprintf(np, sizeof np, "%d", c->nodes * c->rpn);
    const char *pre[] = {c->mpirun, "--hostfile", host, "--mca", "plm_rsh_agent", agent,
                         "--mca", "oob_tcp_if_include", c->subnet, "--mca", "btl", "self,tcp",
                         "--mca", "btl_tcp_if_include", c->subnet, "--oversubscribe",
                         "--bind-to", "none", "--allow-run-as-root", "-np", np};
    size_t npre = sizeof pre / sizeof *pre;
    char **argv = mc_calloc_n(npre + (size_t)cargc + 1, sizeof *argv);
    if (!argv)
        return mc_err_set(e, MC_ERR_NOMEM, "out of memory"), -1;
    for (size_t i = 0; i < npre; i++)
        argv[i] = (char *)pre[i];
    for (int i = 0; i < cargc; i++)
        argv[npre + (size_t)i] = cargv[i];
    pid_t pid = fork();
    if (pid < 0) {
        free(argv);
        return mc_err_set(e, MC_ERR_IO, "fork: %s", strerror(errno)), -1;
    }
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        int fd = open(nsp, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) != 0 || unshare(CLONE_NEWUTS) != 0 ||
            sethostname(ns, strlen(ns)) != 0 || setenv("TMPDIR", tmp, 1) != 0) {
            dprintf(2, "moecluster cluster-sim: cannot enter %s: %s\n", ns, strerror(errno));
            _exit(126);
        }
        close(fd);
        execvp(argv[0], argv);
        dprintf(2, "moecluster cluster-sim: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    free(argv);
    int st = 0, forwarded = 0;
    struct timespec t0 = {0, 0}, now;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return mc_err_set(e, MC_ERR_IO, "waitpid: %s", strerror(errno)), -1;
        if (sim_signal && !forwarded) {
            kill(pid, SIGTERM);
            forwarded = 1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
        }
        if (forwarded) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - t0.tv_sec >= 15)
                kill(pid, SIGKILL);
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int sim_valid_prefix(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 8 && s[0] >= 'a' && s[0] <= 'z' &&
           strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789") == n;
}

int mc_cmd_cluster_sim(int argc, char **argv)
{
    static const struct option opts[] = {{"nodes", required_argument, 0, 'n'},
                                          {"ranks-per-node", required_argument, 0, 'r'},
                                          {"link-gbps", required_argument, 0, 'g'},
                                          {"subnet", required_argument, 0, 's'},
                                          {"name", required_argument, 0, 'p'},
                                          {"state-dir", required_argument, 0, 'd'},
                                          {"mpirun", required_argument, 0, 'm'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    sim_cfg c = {.rpn = 1, .mpirun = "mpirun"};
    const char *action = NULL, *subnet = "10.77.0.0/24", *dir = NULL;
    long long nodes = 0, rpn = 1;
    snprintf(c.prefix, sizeof c.prefix, "mcsim");
    int off = 0;
    if (argc > 1 && argv[1][0] != '-') {
        action = argv[1];
        off = 1;
    }
    int ac = argc - off, ch;
    char **av = argv + off;
    optind = 1;
    while ((ch = getopt_long(ac, av, "+h", opts, NULL)) != -1) {
        switch (ch) {
        case 'n':
            if (mc_arg_int("cluster-sim", "--nodes", optarg, 1, SIM_MAX_NODES, &nodes))
                return 2;
            break;
        case 'r':
            if (mc_arg_int("cluster-sim", "--ranks-per-node", optarg, 1, 256, &rpn))
                return 2;
            break;
        case 'g':
            if (mc_arg_float("cluster-sim", "--link-gbps", optarg, 0.001, 400, &c.gbps))
                return 2;
            break;
        case 's': subnet = optarg; break;
        case 'p':
            if (!sim_valid_prefix(optarg)) {
                fprintf(stderr, "moecluster cluster-sim: --name: '%s' is not 1-8 of [a-z0-9] "
                                "starting with a letter\n", optarg);
                return 2;
            }
            snprintf(c.prefix, sizeof c.prefix, "%s", optarg);
            break;
        case 'd': dir = optarg; break;
        case 'm': c.mpirun = optarg; break;
        case 'h': fputs(sim_usage_text, stdout); return 0;
        default: fputs(sim_usage_text, stderr); return 2;
        }
    }
    if (!action && optind < ac && strcmp(av[optind - 1], "--"))
        action = av[optind++];
    if (!action || (strcmp(action, "up") && strcmp(action, "down") && strcmp(action, "run"))) {
        fprintf(stderr, "moecluster cluster-sim: %s%s%s\n",
                action ? "'" : "an action is required: up, down or run", action ? action : "",
                action ? "' is not up, down or run" : "");
        fputs(sim_usage_text, stderr);
        return 2;
    }
    int is_run = !strcmp(action, "run");
    if (is_run && optind >= ac) {
        fprintf(stderr, "moecluster cluster-sim: run needs a command after -- "
                        "(e.g. -- moecluster score ...)\n");
        return 2;
    }
    if (!is_run && optind < ac) {
        fprintf(stderr, "moecluster cluster-sim: unexpected argument '%s'\n", av[optind]);
        return 2;
    }
    if (strcmp(action, "down") && nodes == 0) {
        fprintf(stderr, "moecluster cluster-sim: %s needs --nodes N\n", action);
        return 2;
    }
    c.nodes = (int)nodes;
    c.rpn = (int)rpn;
    mc_err err;
    mc_err_clear(&err);
    if (sim_parse_subnet(subnet, &c.net, &c.plen, &err) != MC_OK) {
        fprintf(stderr, "moecluster cluster-sim: %s\n", err.msg);
        return 2;
    }
    if ((uint64_t)c.nodes + 2 > (1ull << (32 - c.plen))) {
        fprintf(stderr, "moecluster cluster-sim: --subnet %s has no room for %d nodes\n", subnet,
                c.nodes);
        return 2;
    }
    char ip[20];
    sim_ip_str(c.net, ip, sizeof ip);
    snprintf(c.subnet, sizeof c.subnet, "%s/%d", ip, c.plen);
    if (dir && (strlen(dir) >= 200 || dir[0] != '/' ||
                strspn(dir, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-") !=
                    strlen(dir))) {
        fprintf(stderr, "moecluster cluster-sim: --state-dir: '%s' must be an absolute path of "
                        "at most 199 of [A-Za-z0-9/._-]\n", dir);
        return 2;
    }
    snprintf(c.dir, sizeof c.dir, "%s%s%s", dir ? dir : "/run/moecluster-sim",
             dir ? "" : "/", dir ? "" : c.prefix);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sim_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    mc_status st;
    if (!strcmp(action, "down")) {
        if (geteuid() != 0) {
            fprintf(stderr, "moecluster cluster-sim: down needs root\n");
            return 3;
        }
        st = sim_down(&c, 0, &err);
        if (st != MC_OK)
            fprintf(stderr, "moecluster cluster-sim: down: %s\n", err.msg);
        return st == MC_OK ? 0 : 1;
    }
    st = sim_up(&c, &err);
    if (st != MC_OK) {
        fprintf(stderr, "moecluster cluster-sim: %s\n", err.msg);
        return st == MC_ERR_UNSUPPORTED ? 3 : 1;
    }
    if (!is_run) {
        printf("cluster '%s' up: %d node(s) x %d rank(s), subnet %s, links %s; hostfile %s/hostfile, "
               "agent %s/agent\n",
               c.prefix, c.nodes, c.rpn, c.subnet, c.gbps > 0 ? "shaped" : "unshaped", c.dir,
               c.dir);
        if (c.gbps > 0)
            printf("links shaped to %g Gbit/s each way\n", c.gbps);
        return 0;
    }
    int rc = sim_mpirun(&c, ac - optind, av + optind, &err);
    if (rc < 0)
        fprintf(stderr, "moecluster cluster-sim: %s\n", err.msg);
    mc_err derr;
    mc_err_clear(&derr);
    if (sim_down(&c, 1, &derr) != MC_OK) {
        fprintf(stderr, "moecluster cluster-sim: down after run: %s\n", derr.msg);
        if (rc == 0)
            rc = 1;
    }
    if (sim_signal)
        rc = 128 + sim_signal; /* the shell's convention for "ended by this signal" */
    return rc < 0 ? 1 : rc;
}
