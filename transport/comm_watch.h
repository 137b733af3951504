/* comm_watch.h - private to transport/: the watchdog of the MPI backend.
 * It uses no MPI itself (comm_mpi.c sets it up), so it never competes with
 * the rank's own MPI calls.
 *
 * One thread per process, started by mc_comm_world_init() under MPI:
 *  - launcher: the process records its parent (mpirun, or mpirun's daemon
 *    on other nodes) before MPI_Init; when the parent changes, the launcher
 *    was killed and the process was handed to init: it prints
 *    "moecluster: rank R (host H): the launcher (pid P) is gone; exiting"
 *    and exits with MC_WATCH_EXIT, so no rank outlives a killed mpirun.
 *  - timeout: a rank that has waited MC_COMM_TIMEOUT seconds inside one MPI
 *    call prints which call and which rank(s) it waits for, and exits with
 *    MC_WATCH_EXIT; mpirun then ends the job.
 *  - heartbeat: stamps the time into this rank's slot of the board.
 *
 * The board: one small shared-memory segment per host (POSIX shm, unlinked
 * as soon as every rank of the host has mapped it, so nothing is left
 * behind), one slot per world rank with its pid, its heartbeat and, for
 * each communicator it belongs to, how many collectives it has entered.
 * A waiting rank compares those counts with its own and reads the process
 * state of the ranks of its host, so it names the ranks that did not
 * arrive (or are stopped) without their cooperation. Ranks on other hosts
 * are named as "not known to have arrived".
 */
#ifndef MC_COMM_WATCH_H
#define MC_COMM_WATCH_H

#include <stdatomic.h>
#include <stdint.h>

#include "status.h"

/* Communicators a rank tracks on the board at once (others are untracked). */
#define MC_WATCH_COMMS 16
/* Exit status of a rank ended by the watchdog. */
#define MC_WATCH_EXIT 75
/* Longest board name, with the NUL. */
#define MC_WATCH_NAME 64

/* A communicator as the watchdog sees it (owned by comm_mpi.c). */
typedef struct {
    uint64_t id;            /* the same on every member, unique in the job */
    int size, rank;         /* of the communicator */
    int *world;             /* world rank of each member */
    int entry;              /* index in this rank's board slot, -1: untracked */
    _Atomic uint64_t calls; /* collectives this rank has entered on it */
} mc_watch_comm;

/* Starts the thread. timeout_s = 0 turns the timeout off; launcher_pid <= 1
 * turns the launcher check off. */
mc_status mc_watch_start(int world_rank, double timeout_s, long launcher_pid, mc_err *err);
/* Stops and joins the thread; forgets the board. */
void mc_watch_stop(void);

/* Board, set up collectively by comm_mpi.c: the first rank of a host
 * creates it (name filled in), the others attach by name, then the creator
 * unlinks it. Failures leave the board off (messages then know less). */
mc_status mc_watch_board_create(int world_rank, int world_size, char name[MC_WATCH_NAME],
                                mc_err *err);
mc_status mc_watch_board_attach(int world_rank, int world_size, const char *name, mc_err *err);
void mc_watch_board_unlink(const char *name);

/* Tracks / untracks a communicator on this rank's slot. untrack waits for a
 * report in progress, so w may be freed afterwards. */
void mc_watch_track(mc_watch_comm *w);
void mc_watch_untrack(mc_watch_comm *w);

/* Called once per collective (all_reduce, all_gather_v, bcast, all_to_all_v,
 * barrier, split), before its first MPI call. */
void mc_watch_collective(mc_watch_comm *w);
/* Around every blocking MPI call: op names it; peer is the communicator
 * rank of the other side of a send or receive, -1 in a collective. */
void mc_watch_enter(mc_watch_comm *w, const char *op, int peer);
void mc_watch_leave(void);

#endif
