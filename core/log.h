/* log.h - one line per event, prefixed with host and rank.
 * Level from MC_LOG (error|warn|info|debug), default info on rank 0 and warn elsewhere. */
#ifndef MC_LOG_H
#define MC_LOG_H

typedef enum { MC_LOG_ERROR = 0, MC_LOG_WARN, MC_LOG_INFO, MC_LOG_DEBUG } mc_log_level;

void mc_log_init(int rank);
void mc_log_set_level(mc_log_level lvl);
void mc_log(mc_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define MC_ERROR(...) mc_log(MC_LOG_ERROR, __VA_ARGS__)
#define MC_WARN(...) mc_log(MC_LOG_WARN, __VA_ARGS__)
#define MC_INFO(...) mc_log(MC_LOG_INFO, __VA_ARGS__)
#define MC_DEBUG(...) mc_log(MC_LOG_DEBUG, __VA_ARGS__)

#endif
