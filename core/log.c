#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int g_rank = 0;
static mc_log_level g_level = MC_LOG_INFO;
static char g_host[64] = "";

void mc_log_init(int rank)
{
    g_rank = rank;
    if (gethostname(g_host, sizeof g_host - 1) != 0)
        snprintf(g_host, sizeof g_host, "?");
    g_host[sizeof g_host - 1] = '\0';
    g_level = rank == 0 ? MC_LOG_INFO : MC_LOG_WARN;
    const char *env = getenv("MC_LOG");
    if (env) {
        if (!strcmp(env, "error"))
            g_level = MC_LOG_ERROR;
        else if (!strcmp(env, "warn"))
            g_level = MC_LOG_WARN;
        else if (!strcmp(env, "info"))
            g_level = MC_LOG_INFO;
        else if (!strcmp(env, "debug"))
            g_level = MC_LOG_DEBUG;
    }
}

void mc_log_set_level(mc_log_level lvl) { g_level = lvl; }

void mc_log(mc_log_level lvl, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if (lvl > g_level)
        return;
    if (!g_host[0])
        mc_log_init(g_rank);
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%s:%d] %s: %s\n", g_host, g_rank, names[lvl], line);
}
