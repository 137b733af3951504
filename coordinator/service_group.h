/* service_group.h - the worker group under a service (service.h): a local
 * group the service starts (`moecluster worker`, or `mpirun -np N
 * moecluster worker`, in its own process group) or a group it attaches to,
 * and an mc_step_runner over the connection. Private to service.c: every
 * function is called by the service's driver thread only.
 *
 * The runner stays valid across restarts (the engine keeps it): while the
 * group is down its run fails with MC_ERR_IO. Releases the engine asks
 * for are held and sent with the next step (StepPlan.release), or alone
 * by mc_group_tick while idle; only sequences the group ran in a
 * successful step are sent (a restarted group knows none).
 *
 * Ownership: mc_group_init copies what it keeps of the options; free with
 * mc_group_free (which brings the group down first).
 */
#ifndef MC_SERVICE_GROUP_H
#define MC_SERVICE_GROUP_H

#include "engine.h"
#include "service.h"
#include "workers.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct mc_group mc_group;

/* Checks and copies the group options (MC_ERR_ARG naming the option). */
mc_status mc_group_init(const mc_service_opts *o, mc_group **out, mc_err *err);
void mc_group_free(mc_group *g); /* NULL is fine */

/* Called about every 100 ms while mc_group_up waits: false gives up. */
typedef bool (*mc_group_keep_fn)(void *ctx);

/* Starts the local group and connects, or connects to the attached one.
 * Waits at most load_timeout_ms for "listening on" (and for keep).
 * MC_ERR_IO with one line (the child exited with status S, no line within
 * the timeout, the connection failed), MC_ERR_NOMEM. On failure nothing
 * is left running. */
mc_status mc_group_up(mc_group *g, mc_group_keep_fn keep, void *ctx, mc_err *err);

/* Closes the connection and ends the local group: Shutdown first when
 * graceful (answered within a bound), then SIGTERM to its process group,
 * SIGKILL after 2 s, and waitpid. Nothing is left running or unreaped. An
 * attached group is only disconnected (its owner stops it). */
void mc_group_down(mc_group *g, bool graceful);

/* The Hello of the connected group; NULL while down. */
const mc_workers_info *mc_group_info(const mc_group *g);

/* The runner over g (valid while g lives; limits from the last Hello). */
void mc_group_runner(mc_group *g, mc_step_runner *out);

/* True when the group is gone (a transport failure, the child exited);
 * why gets the reason. */
bool mc_group_failed(const mc_group *g, char *why, size_t cap);

/* Housekeeping: notices a child that exited, forwards its stdout to
 * stderr; when idle, a heartbeat (sending the held releases instead when
 * there are some). A failure sets the failed flag and returns MC_ERR_IO. */
mc_status mc_group_tick(mc_group *g, bool idle, mc_err *err);

#endif
