/* parallel.c - communicators of a rank, agreement, broadcast, the timed
 * collectives of the layer code, and the statistics table. */
#include "parallel.h"

#include "comm_mpi.h"
#include "comm_nccl.h"
#include "log.h"
#include "model.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double mc_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

mc_status mc_par_comms(mc_comm *world, const mc_layout *l, mc_comm **tp, mc_comm **ep,
                       mc_comm **pp, mc_err *err)
{
    *tp = *ep = *pp = NULL;
    int S = l->tp * l->dp, local = l->rank % S;
    mc_status st;
    /* tp: same stage and dp group; ep: same stage and expert group; pp: same place in every stage */
    if ((st = mc_comm_split(world, l->stage * l->dp + l->dp_rank, l->tp_rank, tp, err)) != MC_OK ||
        (st = mc_comm_split(world, l->stage * (S / l->ep) + l->ep_group, l->ep_rank, ep, err)) !=
            MC_OK ||
        (st = mc_comm_split(world, local, l->stage, pp, err)) != MC_OK) {
        mc_comm_free(*tp);
        mc_comm_free(*ep);
        mc_comm_free(*pp);
        *tp = *ep = *pp = NULL;
        return st;
    }
    if (mc_comm_size(*tp) != l->tp || mc_comm_size(*ep) != l->ep || mc_comm_size(*pp) != l->pp ||
        mc_comm_rank(*tp) != l->tp_rank || mc_comm_rank(*ep) != l->ep_rank ||
        mc_comm_rank(*pp) != l->stage) {
        mc_comm_free(*tp);
        mc_comm_free(*ep);
        mc_comm_free(*pp);
        *tp = *ep = *pp = NULL;
        return mc_err_set(err, MC_ERR_INTERNAL, "rank %d: communicator split disagrees with the layout",
                          l->rank);
    }
    return MC_OK;
}

mc_status mc_par_agree(mc_comm *c, mc_status st, mc_err *err)
{
    int n = mc_comm_size(c), me = mc_comm_rank(c);
    if (n <= 1)
        return st;
    float *fail = calloc((size_t)n, sizeof *fail);
    mc_err e2;
    mc_err_clear(&e2);
    if (!fail)
        return mc_err_set(err, MC_ERR_NOMEM, "out of memory");
    fail[me] = st != MC_OK ? 1.0f : 0.0f;
    mc_status cst = mc_comm_all_reduce_sum_f32(c, fail, (size_t)n, &e2);
    int first = -1;
    for (int p = 0; p < n && first < 0; p++)
        if (fail[p] != 0.0f)
            first = p;
    free(fail);
    if (cst != MC_OK) {
        if (st == MC_OK)
            *err = e2;
        return st != MC_OK ? st : cst;
    }
    if (first < 0)
        return MC_OK;
    if (first == me)
        return st; /* this rank's message is the one to print */
    err->status = st != MC_OK ? st : MC_ERR_IO;
    err->msg[0] = '\0';
    return err->status;
}

mc_status mc_par_bcast(mc_comm *c, int root, void *buf, size_t bytes, mc_err *err)
{
    if (mc_comm_size(c) <= 1)
        return MC_OK;
    return mc_comm_bcast(c, root, buf, bytes, err);
}

/* ---- timed calls of the layer code ------------------------------------ */

mc_status mc_tp_all_reduce(mc_model *m, int row, float *buf, size_t count, mc_err *err)
{
    return mc_tp_all_reduce_on(m, m->tp_comm, row, buf, count, err);
}

mc_status mc_tp_all_reduce_on(mc_model *m, mc_comm *c, int row, float *buf, size_t count,
                              mc_err *err)
{
    if (m->lay.tp == 1)
        return MC_OK;
    double t = m->stats ? mc_now_s() : 0;
    mc_status st = mc_comm_all_reduce_sum_f32(c, buf, count, err);
    if (m->stats) {
        m->stats[row].t_comm += mc_now_s() - t;
        m->stats[row].ar_bytes += count * sizeof(float);
    }
    return st;
}

mc_status mc_ep_exchange(mc_model *m, int row, bool is_dispatch, const void *send,
                         size_t send_bytes, const size_t *send_counts, const size_t *send_displs,
                         void *recv, size_t recv_bytes, const size_t *recv_counts,
                         const size_t *recv_displs, mc_err *err)
{
    return mc_ep_exchange_on(m, m->ep_comm, row, is_dispatch, send, send_bytes, send_counts,
                             send_displs, recv, recv_bytes, recv_counts, recv_displs, err);
}

mc_status mc_ep_exchange_on(mc_model *m, mc_comm *c, int row, bool is_dispatch, const void *send,
                            size_t send_bytes, const size_t *send_counts,
                            const size_t *send_displs, void *recv, size_t recv_bytes,
                            const size_t *recv_counts, const size_t *recv_displs, mc_err *err)
{
    double t = m->stats ? mc_now_s() : 0;
    mc_status st = mc_comm_all_to_all_v(c, send, send_bytes, send_counts, send_displs,
                                        recv, recv_bytes, recv_counts, recv_displs, err);
    if (m->stats) {
        mc_stat_row *r = &m->stats[row];
        r->t_comm += mc_now_s() - t;
        uint64_t remote = 0;
        for (int p = 0; p < m->lay.ep; p++)
            if (p != m->lay.ep_rank)
                remote += send_counts[p];
        if (is_dispatch)
            r->disp_bytes += remote;
        else
            r->comb_bytes += remote;
    }
    return st;
}

mc_status mc_par_send(mc_model *m, mc_comm *c, int row, int peer, const void *buf, size_t bytes,
                      mc_err *err)
{
    double t = m->stats ? mc_now_s() : 0;
    mc_status st = mc_comm_send(c, peer, buf, bytes, err);
    if (m->stats) { /* called outside any timed row section: counts into the row's total too */
        double dt = mc_now_s() - t;
        m->stats[row].t_comm += dt;
        m->stats[row].t_total += dt;
        m->stats[row].p2p_bytes += bytes;
    }
    return st;
}

mc_status mc_par_recv(mc_model *m, mc_comm *c, int row, int peer, void *buf, size_t bytes,
                      mc_err *err)
{
    double t = m->stats ? mc_now_s() : 0;
    mc_status st = mc_comm_recv(c, peer, buf, bytes, err);
    if (m->stats) {
        double dt = mc_now_s() - t;
        m->stats[row].t_comm += dt;
        m->stats[row].t_total += dt;
    }
    return st;
}

/* ---- statistics -------------------------------------------------------- */

mc_status mc_stats_enable(mc_model *m, mc_err *err)
{
    if (m->stats)
        return MC_OK;
    m->stats = calloc((size_t)MC_STAT_ROWS(m->d.n_layers), sizeof *m->stats);
    return m->stats ? MC_OK : mc_err_set(err, MC_ERR_NOMEM, "out of memory");
}

/* Rows travel as doubles: 8 counters then 2 times. */
enum { STAT_FIELDS = 10 };

static void row_pack(const mc_stat_row *r, double *v)
{
    v[0] = (double)r->steps;
    v[1] = (double)r->disp_tokens;
    v[2] = (double)r->disp_remote;
    v[3] = (double)r->disp_bytes;
    v[4] = (double)r->expert_tokens;
    v[5] = (double)r->comb_bytes;
    v[6] = (double)r->ar_bytes;
    v[7] = (double)r->p2p_bytes;
    v[8] = r->t_total;
    v[9] = r->t_comm;
}

static void print_row(FILE *out, const char *layer, const char *rank, const double *v)
{
    double comm = v[9], total = v[8] > v[9] ? v[8] : v[9];
    fprintf(out, "%-6s %4s %10.0f %10.0f %12.0f %10.0f %12.0f %12.0f %12.0f %10.2f %10.2f %6.1f\n",
            layer, rank, v[1], v[2], v[3], v[4], v[5], v[6], v[7], (total - comm) * 1e3,
            comm * 1e3, total > 0 ? 100.0 * comm / total : 0.0);
}

mc_status mc_stats_report(mc_model *m, FILE *out, double wall_s, mc_err *err)
{
    int n = mc_comm_size(m->world), me = mc_comm_rank(m->world);
    int R = MC_STAT_ROWS(m->d.n_layers);
    size_t per = (size_t)R * STAT_FIELDS;
    double *mine = calloc(per, sizeof *mine);
    double *all = me == 0 ? calloc(per * (size_t)n, sizeof *all) : NULL;
    size_t *cnt = calloc((size_t)4 * n, sizeof *cnt);
    mc_status st = MC_OK;
    if (!mine || (me == 0 && !all) || !cnt) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for the statistics");
        goto done;
    }
    if (m->stats)
        for (int r = 0; r < R; r++)
            row_pack(&m->stats[r], mine + (size_t)r * STAT_FIELDS);
    /* gather to rank 0: an all_to_all_v where only rank 0 receives */
    size_t *sc = cnt, *sd = cnt + n, *rc = cnt + 2 * n, *rd = cnt + 3 * n;
    sc[0] = per * sizeof(double);
    if (me == 0) {
        for (int p = 0; p < n; p++) {
            rc[p] = per * sizeof(double);
            rd[p] = (size_t)p * per * sizeof(double);
        }
    }
    if ((st = mc_comm_all_to_all_v(m->world, mine, per * sizeof(double), sc, sd, all,
                                   all ? per * n * sizeof(double) : 0, rc, rd, err)) != MC_OK ||
        me != 0)
        goto done;
    const mc_layout *l = &m->lay;
    fprintf(out,
            "moecluster stats: %d rank%s (tp %d, ep %d, pp %d, dp %d), wall %.3f s; per layer and "
            "rank: disp_tok = token-expert pairs dispatched, remote_tok = of them to other ranks, "
            "*_bytes = bytes sent to other ranks\n",
            n, n == 1 ? "" : "s", l->tp, l->ep, l->pp, l->dp, wall_s);
    fprintf(out, "%-6s %4s %10s %10s %12s %10s %12s %12s %12s %10s %10s %6s\n", "layer", "rank",
            "disp_tok", "remote_tok", "disp_bytes", "expert_tok", "comb_bytes", "allred_bytes",
            "p2p_bytes", "compute_ms", "comm_ms", "comm%");
    double *tot = calloc((size_t)n * STAT_FIELDS, sizeof *tot);
    if (!tot) {
        st = mc_err_set(err, MC_ERR_NOMEM, "out of memory for the statistics");
        goto done;
    }
    for (int r = 0; r < R; r++) {
        char name[16];
        if (r < m->d.n_layers)
            snprintf(name, sizeof name, "%d", r);
        else
            snprintf(name, sizeof name, "%s", r == MC_STAT_HEAD(m->d.n_layers) ? "head" : "pipe");
        for (int p = 0; p < n; p++) {
            const double *v = all + (size_t)p * per + (size_t)r * STAT_FIELDS;
            for (int f = 0; f < STAT_FIELDS; f++)
                tot[(size_t)p * STAT_FIELDS + f] += v[f];
            char rk[16];
            snprintf(rk, sizeof rk, "%d", p);
            if (v[0] > 0 || v[8] > 0 || v[9] > 0)
                print_row(out, name, rk, v);
        }
    }
    double sum[STAT_FIELDS] = {0};
    for (int p = 0; p < n; p++) {
        char rk[16];
        snprintf(rk, sizeof rk, "%d", p);
        print_row(out, "total", rk, tot + (size_t)p * STAT_FIELDS);
        for (int f = 0; f < STAT_FIELDS; f++)
            sum[f] += tot[(size_t)p * STAT_FIELDS + f];
    }
    print_row(out, "all", "-", sum);
    free(tot);
done:
    free(mine);
    free(all);
    free(cnt);
    return st;
}

/* ---- the data plane --------------------------------------------------- */

const char *mc_plane_name(int plane)
{
    switch (plane) {
    case MC_PLANE_HOST: return "host";
    case MC_PLANE_STAGED: return "staged";
    case MC_PLANE_DIRECT: return "direct";
    case MC_PLANE_NCCL: return "nccl";
    }
    return "?";
}

void mc_par_data_plane_free(mc_model *m)
{
    if (m->plane == MC_PLANE_NCCL) { /* split from a world communicator freed after: owned */
        mc_comm_free(m->dev_tp);
        mc_comm_free(m->dev_ep);
        mc_comm_free(m->dev_pp);
        mc_comm_free(m->dev_world);
    }
    m->dev_world = m->dev_tp = m->dev_ep = m->dev_pp = NULL;
    m->plane = MC_PLANE_HOST;
}

/* MC_DATA_PLANE: 0 auto, else 1 + the mc_plane asked for; -1 not a value. */
static int plane_asked(const char **v)
{
    *v = getenv("MC_DATA_PLANE");
    if (!*v || !**v || strcmp(*v, "auto") == 0)
        return 0;
    if (strcmp(*v, "staged") == 0)
        return 1 + MC_PLANE_STAGED;
    if (strcmp(*v, "direct") == 0)
        return 1 + MC_PLANE_DIRECT;
    if (strcmp(*v, "nccl") == 0)
        return 1 + MC_PLANE_NCCL;
    return -1;
}

/* How long one NCCL operation may wait for its peers: MPI's watchdog
 * setting (MC_COMM_TIMEOUT, checked when the world started; 0: no limit),
 * so a hung peer is given up on after the same time on either plane. */
static int nccl_timeout_ms(void)
{
    double s = MC_COMM_MPI_TIMEOUT_S;
    const char *t = getenv("MC_COMM_TIMEOUT");
    mc_err e;
    mc_err_clear(&e);
    if (t && mc_comm_timeout_parse(t, &s, &e) != MC_OK)
        s = MC_COMM_MPI_TIMEOUT_S;
    if (s <= 0 || s * 1000.0 >= (double)INT_MAX)
        return INT_MAX;
    return s * 1000.0 < 1.0 ? 1 : (int)(s * 1000.0);
}

static mc_status plane_nccl(mc_model *m, int cuda_device, mc_err *err)
{
    mc_comm *w = NULL, *tp = NULL, *ep = NULL, *pp = NULL;
    mc_status st = mc_comm_nccl_create(m->world, cuda_device, nccl_timeout_ms(), &w, err);
    if (st != MC_OK)
        return st;
    st = mc_par_comms(w, &m->lay, &tp, &ep, &pp, err);
    /* the splits stand alone: the world's communicator (a proxy thread and
     * device buffers) is not kept */
    mc_comm_free(w);
    if (st != MC_OK)
        return st;
    m->dev_world = NULL;
    m->dev_tp = tp;
    m->dev_ep = ep;
    m->dev_pp = pp;
    m->plane = MC_PLANE_NCCL;
    return MC_OK;
}

mc_status mc_par_data_plane(mc_model *m, int host_memory, int cuda_device, mc_err *err)
{
    mc_par_data_plane_free(m);
    const char *v;
    int asked = plane_asked(&v), n = mc_comm_size(m->world);
    mc_status st = MC_OK;
    if (asked < 0)
        st = mc_err_set(err, MC_ERR_ARG, "MC_DATA_PLANE: '%.32s' is not auto, staged, direct or "
                        "nccl", v);
    else if (asked == 1 + MC_PLANE_NCCL && cuda_device < 0)
        st = mc_err_set(err, MC_ERR_ARG, "MC_DATA_PLANE=nccl: the compute backend is not CUDA "
                        "(--device cuda)");
    else if (asked == 1 + MC_PLANE_DIRECT && cuda_device >= 0)
        st = mc_err_set(err, MC_ERR_UNSUPPORTED, "MC_DATA_PLANE=direct: device addresses to MPI "
                        "need a CUDA-aware MPI, which this build does not use; nccl or staged "
                        "instead");
    int all_cuda = cuda_device >= 0;
    if (n > 1) { /* every rank must ask for the same (a split plane would hang) */
        float votes[7] = {0}; /* by asked + 1; [6]: ranks on CUDA */
        votes[asked + 1] = 1.0f;
        votes[6] = cuda_device >= 0 ? 1.0f : 0.0f;
        mc_err e2;
        mc_err_clear(&e2);
        mc_status cst = mc_comm_all_reduce_sum_f32(m->world, votes, 7, &e2);
        if (cst != MC_OK)
            return st != MC_OK ? st : (*err = e2, cst);
        if (st == MC_OK && votes[asked + 1] != (float)n)
            st = mc_err_set(err, MC_ERR_ARG, "MC_DATA_PLANE: the ranks were given different "
                            "values (rank %d: '%.32s')", m->lay.rank, v ? v : "");
        /* NCCL needs every rank on CUDA (a rank on the CPU, e.g. one that saw no GPU under
         * --device auto, keeps MPI: then every rank does) */
        all_cuda = votes[6] == (float)n;
        if (st == MC_OK && asked == 1 + MC_PLANE_NCCL && !all_cuda)
            st = mc_err_set(err, MC_ERR_ARG, "MC_DATA_PLANE=nccl: %d of the %d ranks are not on "
                            "CUDA (--device cuda on every rank)", n - (int)votes[6], n);
        if ((st = mc_par_agree(m->world, st, err)) != MC_OK)
            return st;
    } else if (st != MC_OK) {
        return st;
    }
    int want = asked > 0 ? asked - 1 : -1;
    if (host_memory) {
        m->plane = MC_PLANE_HOST;
    } else if (want == MC_PLANE_DIRECT) {
        m->dev_world = m->world;
        m->dev_tp = m->tp_comm;
        m->dev_ep = m->ep_comm;
        m->dev_pp = m->pp_comm;
        m->plane = MC_PLANE_DIRECT;
    } else if (want == MC_PLANE_STAGED || cuda_device < 0 || !all_cuda ||
               (want < 0 && m->lay.tp * m->lay.ep * m->lay.pp == 1)) {
        /* (auto: no tensor collectives at all, e.g. data-parallel ranks: no NCCL) */
        m->plane = MC_PLANE_STAGED;
    } else { /* CUDA: nccl asked, or auto with peers */
        mc_err e2;
        mc_err_clear(&e2);
        st = plane_nccl(m, cuda_device, &e2);
        if (st == MC_ERR_UNSUPPORTED && want < 0) { /* refused on every rank together */
            if (m->lay.rank == 0)
                MC_WARN("data plane: collectives staged through host memory over MPI (%s)",
                        e2.msg);
            m->plane = MC_PLANE_STAGED;
            st = MC_OK;
        } else if (st != MC_OK) {
            *err = e2;
        }
    }
    if (n > 1 && (st = mc_par_agree(m->world, st, err)) != MC_OK) {
        mc_par_data_plane_free(m);
        return st;
    }
    if (st != MC_OK)
        return st;
    if (n > 1 && m->lay.rank == 0)
        MC_INFO("data plane: %s (%d ranks)", mc_plane_name(m->plane), n);
    return MC_OK;
}
