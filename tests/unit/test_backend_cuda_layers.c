/* test_backend_cuda_layers.c - the CUDA backend's paged-KV-cache, MoE and
 * DeepSeek-V4 ops (kernels/cuda/backend_cuda_attn.c, _moe.c, _v4.c) against
 * the CPU backend:
 * both given the same bytes (buffers poisoned with NaN first), odd sizes,
 * ragged sequences (decode tokens, prefill chunks, a span of several
 * hundred positions) over block tables whose block ids are shuffled.
 * Tolerances, relative to the largest |value| of the reference's row:
 *   exact  kv_write's pages, moe_permute's rows, slots and offsets,
 *          moe_unpermute's sums (the same rounded products in the same
 *          order), the router's and the indexers' ids, V3.2's and V4's
 *          (their inputs are small integers and powers of two, so every
 *          score is exact on both sides and the many exact ties test the tie
 *          order: V4's the CPU's introselect), v4_hash_route's ids;
 *   1e-5   attention, mla_decode, the router's weights, grouped_experts on
 *          the F32-accumulating product paths, the other V4 ops;
 *   1e-2   grouped_experts on the per-expert loop with more than 8 rows an
 *          expert for BF16 weights, and on a GPU more than 32 for FP8
 *          (unless MC_CUDA_FP8=gemv): cuBLAS with the activations rounded to
 *          BF16, as matmul;
 *   1e-5   block-format experts, with up to an eighth of the rows within
 *          1e-2 (cmp_pair_q: an activation on a quantization boundary), and
 *          on a GPU the loop's rows exactly the grouped launch's.
 * grouped_experts runs twice on the GPU: as the backend chooses (all
 * experts in two launches for element types with one intermediate width,
 * FP8 block scales included, and for Q8_0 / Q4_K / Q6_K, the activations
 * quantized first; the per-expert loop otherwise) and with the loop forced
 * (MC_CUDA_EXPERTS=loop).
 * Refusals (a bad sequence, block id, position, selection, expert id, slot)
 * must come back as MC_ERR_ARG with the CPU's message word for word and
 * leave the outputs untouched. Prints the first mismatches.
 *
 * Exit 77 (CTest's skip) with "skipped: built without CUDA" or "skipped: no
 * GPU (...)"; MC_CUDA_TEST_ON_CPU=1 runs the harness with the CPU acting as
 * the device under test (mc_backend_cpu_device_init; CTest's
 * unit.test_backend_cuda_layers.cpu_device: checks this file, not the CUDA
 * code). */
#include "backend.h"
#include "backend_pair.h"
#include "check.h"
#include "dtype.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rint_(int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(rnext() % (uint64_t)(hi - lo + 1));
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        exit(1);
    return p;
}

static void pair_1d(pair *p, mc_dtype dt, int64_t n, const void *host)
{
    pair_new(p, dt, 1, (int64_t[]){n}, n, host);
}

static void pair_zero(pair *p)
{
    for (int s = 0; s < 2; s++)
        OK(mc_buffer_memset(p->b[s], 0, 0, mc_buffer_size(p->b[s]), err_));
}

/* Both sides of p to the host (packed rows, 4-byte elements): h[0] the reference. */
static void pair_get(const pair *p, void *h[2])
{
    size_t n = (size_t)mc_tensor_nelems(&p->t[0]);
    for (int s = 0; s < 2; s++) {
        h[s] = xmalloc(n * 4);
        OK(mc_tensor_download(&p->t[s], h[s], err_));
    }
}

/* F32 rows: |got - want| <= rtol * max |want| of the row (rtol 0: equal). */
static void cmp_pair(const char *what, const pair *p, double rtol)
{
    int64_t rows = mc_tensor_rows(&p->t[0]), cols = mc_tensor_cols(&p->t[0]), bad = 0;
    void *h[2];
    pair_get(p, h);
    const float *want = h[0], *got = h[1];
    for (int64_t r = 0; r < rows; r++) {
        double mx = 0;
        for (int64_t i = 0; i < cols; i++)
            mx = fmax(mx, fabs(want[r * cols + i]));
        for (int64_t i = 0; i < cols; i++) {
            double g = got[r * cols + i], w = want[r * cols + i];
            if (!(fabs(g - w) <= rtol * mx) && !(g == w)) {
                if (bad < 5)
                    fprintf(stderr, "  %s: [%lld, %lld] got %.9g want %.9g (tol %.3g)\n", what,
                            (long long)r, (long long)i, g, w, rtol * mx);
                bad++;
            }
        }
    }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %lld of %lld values differ\n", what, (long long)bad,
                (long long)(rows * cols));
    }
    free(h[0]);
    free(h[1]);
}

/* Block-format experts against the CPU: two quantizations (x, then h) of
 * values whose sums the two sides take in another order, so an h value
 * within an ulp of a code's rounding boundary may take the next code on one
 * side (measured on these cases' data: a Q6_K h of 5.50000048 on the CPU,
 * 5.4999986 in the GPU's order), which moves that token's row by ~1e-3 of
 * its largest value. Rows: within rtol, or at most an eighth of them (and
 * one at least) within one code's step (1e-2); every row counted. */
static void cmp_pair_q(const char *what, const pair *p, double rtol)
{
    int64_t rows = mc_tensor_rows(&p->t[0]), cols = mc_tensor_cols(&p->t[0]), off = 0, bad = 0;
    void *h[2];
    pair_get(p, h);
    const float *want = h[0], *got = h[1];
    for (int64_t r = 0; r < rows; r++) {
        double mx = 0, d = 0;
        for (int64_t i = 0; i < cols; i++)
            mx = fmax(mx, fabs(want[r * cols + i]));
        for (int64_t i = 0; i < cols; i++) {
            double e = fabs((double)got[r * cols + i] - want[r * cols + i]);
            d = e > d || e != e ? e : d;
        }
        if (d <= rtol * mx)
            continue;
        off++;
        if (!(d <= 1e-2 * mx))
            bad++;
        if (off <= 3)
            fprintf(stderr, "  %s: row %lld differs by %.3g of its largest value%s\n", what,
                    (long long)r, d / (mx > 0 ? mx : 1), d <= 1e-2 * mx ? " (a code step)" : "");
    }
    check_count++;
    int64_t allowed = rows / 8 > 1 ? rows / 8 : 1;
    if (bad || off > allowed) {
        check_failures++;
        fprintf(stderr, "%s: %lld of %lld rows past %g (%lld allowed within 1e-2), %lld past "
                "1e-2\n", what, (long long)off, (long long)rows, rtol, (long long)allowed,
                (long long)bad);
    } else if (off) {
        printf("%s: %lld of %lld rows within a code step (1e-2), not %g\n", what, (long long)off,
               (long long)rows, rtol);
    }
    free(h[0]);
    free(h[1]);
}

/* I32 tensors: equal. */
static void cmp_i32(const char *what, const pair *p)
{
    int64_t n = mc_tensor_nelems(&p->t[0]), cols = mc_tensor_cols(&p->t[0]), bad = 0;
    void *h[2];
    pair_get(p, h);
    const int32_t *want = h[0], *got = h[1];
    for (int64_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            if (bad < 5)
                fprintf(stderr, "  %s: [%lld, %lld] got %d want %d\n", what, (long long)(i / cols),
                        (long long)(i % cols), (int)got[i], (int)want[i]);
            bad++;
        }
    check_count++;
    if (bad) {
        check_failures++;
        fprintf(stderr, "%s: %lld of %lld ids differ\n", what, (long long)bad, (long long)n);
    }
    free(h[0]);
    free(h[1]);
}

/* Both refused with MC_ERR_ARG and the same message. */
static void same_refusal(const char *what, const mc_status st[2])
{
    check_count++;
    if (st[0] != MC_ERR_ARG || st[1] != MC_ERR_ARG || strcmp(err_[0].msg, err_[1].msg) != 0) {
        check_failures++;
        fprintf(stderr, "%s: want both MC_ERR_ARG with one message, got %s \"%s\" (reference) and "
                "%s \"%s\"\n", what, mc_status_str(st[0]), err_[0].msg, mc_status_str(st[1]),
                err_[1].msg);
    }
    mc_err_clear(&err_[0]);
    mc_err_clear(&err_[1]);
}

/* The same refusal on the device under test with its content checks
 * deferred (the CUDA backend's default, which every other case here runs
 * with; refusals compared with the CPU's words run at the op,
 * mc_backend_set_sync_checks): the op (answer st) returns MC_OK and the
 * next wait returns MC_ERR_ARG naming `op`, once. A backend that checks at
 * the op refuses at once, and so may one that deferred nothing
 * (may_be_at_op: grouped_experts' per-expert loop reads the offsets on the
 * host). Leaves the checks deferred. */
static void deferred_refusal(const char *what, const char *op, mc_status st, int may_be_at_op)
{
    int defers = mc_backend_set_sync_checks(B[1], 1) == 0;
    mc_status w = st;
    int at_op = st != MC_OK;
    if (!at_op)
        w = mc_backend_synchronize(B[1], &err_[1]);
    check_count++;
    int ok = w == MC_ERR_ARG && strncmp(err_[1].msg, op, strlen(op)) == 0 &&
             (!defers || !at_op || may_be_at_op);
    char msg[sizeof err_[1].msg];
    snprintf(msg, sizeof msg, "%s", err_[1].msg);
    mc_err_clear(&err_[1]);
    mc_status again = mc_backend_synchronize(B[1], &err_[1]); /* reported once */
    if (!ok || again != MC_OK) {
        check_failures++;
        fprintf(stderr, "%s, deferred: want MC_OK then MC_ERR_ARG \"%s: ...\" at the next wait, "
                "then MC_OK; got %s, then %s \"%s\", then %s \"%s\"\n", what, op,
                mc_status_str(st), mc_status_str(w), msg, mc_status_str(again), err_[1].msg);
    }
    mc_err_clear(&err_[1]);
    mc_backend_set_sync_checks(B[1], 0);
}

/* Runs `call` (an op on B[1]) with deferred content checks and expects the
 * refusal at the next wait (deferred_refusal). */
#define DEFERRED(what, op, may_be_at_op, call)                                                     \
    do {                                                                                           \
        mc_backend_set_sync_checks(B[1], 0);                                                       \
        mc_status st_ = (call);                                                                    \
        deferred_refusal(what, op, st_, may_be_at_op);                                             \
    } while (0)

/* ---- a step over paged caches: ragged sequences, shuffled block ids ---- */

#define NSEQ 4
static const int seq_prefix[NSEQ] = {13, 0, 290, 40}; /* positions cached before the step */
static const int seq_new[NSEQ] = {1, 6, 3, 1};        /* this step's tokens */

typedef struct {
    int bs, n_pages, max_blocks, n, n_pre;
    pair bt, seq, pos, pseq, ppos; /* block table; the step's and the prefix's tokens */
    int32_t *h_bt, *h_seq, *h_pos;
} layout;

static void layout_new(layout *L, int bs)
{
    L->bs = bs;
    int total = 0, mb = 0;
    for (int s = 0; s < NSEQ; s++) {
        int nb = (seq_prefix[s] + seq_new[s] + bs - 1) / bs;
        total += nb;
        mb = nb > mb ? nb : mb;
    }
    L->n_pages = total + 3; /* some blocks never used */
    L->max_blocks = mb + 1;
    int32_t *ids = xmalloc((size_t)L->n_pages * sizeof *ids);
    for (int i = 0; i < L->n_pages; i++)
        ids[i] = i;
    for (int i = L->n_pages - 1; i > 0; i--) {
        int j = rint_(0, i);
        int32_t t = ids[i];
        ids[i] = ids[j];
        ids[j] = t;
    }
    L->h_bt = xmalloc((size_t)NSEQ * L->max_blocks * sizeof *L->h_bt);
    int used = 0;
    for (int s = 0; s < NSEQ; s++) {
        int nb = (seq_prefix[s] + seq_new[s] + bs - 1) / bs;
        for (int j = 0; j < L->max_blocks; j++)
            L->h_bt[s * L->max_blocks + j] = j < nb ? ids[used++] : -7; /* never read */
    }
    free(ids);
    L->n = L->n_pre = 0;
    for (int s = 0; s < NSEQ; s++) {
        L->n += seq_new[s];
        L->n_pre += seq_prefix[s];
    }
    L->h_seq = xmalloc((size_t)L->n * sizeof(int32_t));
    L->h_pos = xmalloc((size_t)L->n * sizeof(int32_t));
    int32_t *ps = xmalloc((size_t)L->n_pre * sizeof(int32_t)),
            *pp = xmalloc((size_t)L->n_pre * sizeof(int32_t));
    int t = 0, q = 0;
    for (int s = NSEQ - 1; s >= 0; s--) /* not in sequence order */
        for (int j = 0; j < seq_new[s]; j++, t++) {
            L->h_seq[t] = s;
            L->h_pos[t] = seq_prefix[s] + j;
        }
    for (int s = 0; s < NSEQ; s++)
        for (int j = 0; j < seq_prefix[s]; j++, q++) {
            ps[q] = s;
            pp[q] = j;
        }
    pair_2d(&L->bt, MC_DT_I32, NSEQ, L->max_blocks, L->max_blocks, L->h_bt);
    pair_1d(&L->seq, MC_DT_I32, L->n, L->h_seq);
    pair_1d(&L->pos, MC_DT_I32, L->n, L->h_pos);
    pair_1d(&L->pseq, MC_DT_I32, L->n_pre, ps);
    pair_1d(&L->ppos, MC_DT_I32, L->n_pre, pp);
    free(ps);
    free(pp);
}

static void layout_free(layout *L)
{
    pair *all[] = {&L->bt, &L->seq, &L->pos, &L->pseq, &L->ppos};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(L->h_bt);
    free(L->h_seq);
    free(L->h_pos);
}

/* L's block table with one block id past the cache: sequence 2's block 7,
 * a block of its long prefix, which every token of sequence 2 reaches when
 * it sees its whole prefix; rows ld apart. */
static void bad_table(const layout *L, int64_t ld, pair *p)
{
    int32_t *bt = xmalloc((size_t)NSEQ * L->max_blocks * sizeof *bt);
    memcpy(bt, L->h_bt, (size_t)NSEQ * L->max_blocks * sizeof *bt);
    bt[2 * L->max_blocks + 7] = L->n_pages + 2;
    pair_2d(p, MC_DT_I32, NSEQ, L->max_blocks, ld, bt);
    free(bt);
}

static mc_kv_index ix_step(const layout *L, int s)
{
    return (mc_kv_index){.block_table = L->bt.t[s], .seq = L->seq.t[s], .pos = L->pos.t[s]};
}

static mc_kv_index ix_prefix(const layout *L, int s)
{
    return (mc_kv_index){.block_table = L->bt.t[s], .seq = L->pseq.t[s], .pos = L->ppos.t[s]};
}

/* Writes random rows (W columns per slot row, rps rows per slot; `integer`:
 * small integers) for the prefix, then the step's tokens (rows ld = W + 3
 * apart), into pages on both backends. */
static void fill_pages(const layout *L, pair *pages, int rps, int W, int integer)
{
    for (int part = 0; part < 2; part++) {
        int n = part ? L->n : L->n_pre;
        if (!n)
            continue;
        float *h = rnd((size_t)n * rps * W, 1.0f);
        if (integer)
            for (size_t i = 0; i < (size_t)n * rps * W; i++)
                h[i] = (float)rint_(-3, 3);
        pair src;
        pair_new(&src, MC_DT_F32, 3, (int64_t[]){n, rps, W}, W + 3, h);
        for (int s = 0; s < 2; s++) {
            mc_kv_index ix = part ? ix_step(L, s) : ix_prefix(L, s);
            OK(mc_op_kv_write(B[s], &ix, &src.t[s], &pages->t[s], &err_[s]));
        }
        pair_free(&src);
        free(h);
    }
}

/* ---- kv_write and GQA attention ---- */

static void attention_case(int bs, int nh, int nkv, int hd, int vd, int chunk, int with_qs)
{
    layout L;
    layout_new(&L, bs);
    pair kp, vp, q, y, qs;
    pair_new(&kp, MC_DT_F32, 4, (int64_t[]){L.n_pages, bs, nkv, hd}, hd, NULL);
    pair_new(&vp, MC_DT_F32, 4, (int64_t[]){L.n_pages, bs, nkv, vd}, vd, NULL);
    pair_zero(&kp);
    pair_zero(&vp);
    fill_pages(&L, &kp, nkv, hd, 0);
    fill_pages(&L, &vp, nkv, vd, 0);
    char what[160];
    snprintf(what, sizeof what, "kv_write K bs=%d nkv=%d hd=%d", bs, nkv, hd);
    cmp_pair(what, &kp, 0);
    float *qh = rnd((size_t)L.n * nh * hd, 1.0f), *qsh = rnd((size_t)L.n, 1.0f);
    for (int t = 0; t < L.n; t++)
        qsh[t] = 1.0f + 0.5f * qsh[t];
    pair_new(&q, MC_DT_F32, 3, (int64_t[]){L.n, nh, hd}, hd + 1, qh);
    pair_new(&y, MC_DT_F32, 3, (int64_t[]){L.n, nh, vd}, vd, NULL);
    pair_1d(&qs, MC_DT_F32, L.n, qsh);
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = ix_step(&L, s);
        mc_attn_opts o = {.scale = 1.0f / sqrtf((float)hd), .chunk = chunk,
                          .q_scale = with_qs ? &qs.t[s] : NULL};
        OK(mc_op_attention(B[s], &q.t[s], &kp.t[s], &vp.t[s], &ix, &o, &y.t[s], &err_[s]));
    }
    snprintf(what, sizeof what, "attention bs=%d nh=%d nkv=%d hd=%d vd=%d chunk=%d q_scale=%d", bs,
             nh, nkv, hd, vd, chunk, with_qs);
    cmp_pair(what, &y, 1e-5);

    /* refusals: a token's sequence past the table (kv_write), a block id past
     * the cache (attention); nothing written */
    int32_t *bad = xmalloc((size_t)L.n * sizeof *bad);
    memcpy(bad, L.h_seq, (size_t)L.n * sizeof *bad);
    bad[L.n - 2] = NSEQ;
    pair bseq, bbt, src;
    pair_1d(&bseq, MC_DT_I32, L.n, bad);
    bad_table(&L, L.max_blocks, &bbt);
    float *sh = rnd((size_t)L.n * nkv * hd, 1.0f);
    pair_new(&src, MC_DT_F32, 3, (int64_t[]){L.n, nkv, hd}, hd, sh);
    mc_status st[2];
    mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = {.block_table = L.bt.t[s], .seq = bseq.t[s], .pos = L.pos.t[s]};
        st[s] = mc_op_kv_write(B[s], &ix, &src.t[s], &kp.t[s], &err_[s]);
    }
    same_refusal("kv_write, a bad seq", st);
    {
        mc_kv_index ix = {.block_table = L.bt.t[1], .seq = bseq.t[1], .pos = L.pos.t[1]};
        DEFERRED("kv_write, a bad seq", "kv_write", 0,
                 mc_op_kv_write(B[1], &ix, &src.t[1], &kp.t[1], &err_[1]));
    }
    cmp_pair("kv_write refused: K pages untouched", &kp, 0);
    mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = {.block_table = bbt.t[s], .seq = L.seq.t[s], .pos = L.pos.t[s]};
        mc_attn_opts o = {.scale = 0.1f, .chunk = chunk};
        st[s] = mc_op_attention(B[s], &q.t[s], &kp.t[s], &vp.t[s], &ix, &o, &y.t[s], &err_[s]);
    }
    if (chunk == 0) { /* with chunks, sequence 2's tokens may not reach block 7 */
        same_refusal("attention, a bad block id", st);
        mc_kv_index ix = {.block_table = bbt.t[1], .seq = L.seq.t[1], .pos = L.pos.t[1]};
        mc_attn_opts o = {.scale = 0.1f, .chunk = chunk};
        DEFERRED("attention, a bad block id", "attention", 0,
                 mc_op_attention(B[1], &q.t[1], &kp.t[1], &vp.t[1], &ix, &o, &y.t[1], &err_[1]));
    }
    mc_backend_set_sync_checks(B[1], 0);
    mc_err_clear(&err_[0]);
    mc_err_clear(&err_[1]);
    cmp_pair("attention refused: y untouched", &y, 1e-5);
    pair *all[] = {&kp, &vp, &q, &y, &qs, &bseq, &bbt, &src};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(qh);
    free(qsh);
    free(bad);
    free(sh);
    layout_free(&L);
}

/* ---- MLA, with and without V3.2's selection ---- */

static void mla_case(int bs, int nh, int lr, int rd, int chunk, int k)
{
    layout L;
    layout_new(&L, bs);
    pair lp, pp, fused, ql, qp, y, sel;
    pair_new(&lp, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, lr}, lr, NULL);
    pair_new(&pp, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, rd}, rd, NULL);
    pair_zero(&lp);
    pair_zero(&pp);
    /* the prefix by plain rows, the step's tokens through column views of one fused row */
    for (int part = 0; part < 2; part++) {
        int n = part ? L.n : L.n_pre;
        float *h = rnd((size_t)n * (lr + rd), 1.0f);
        pair_2d(&fused, MC_DT_F32, n, lr + rd, lr + rd, h);
        for (int s = 0; s < 2; s++) {
            mc_kv_index ix = part ? ix_step(&L, s) : ix_prefix(&L, s);
            mc_tensor tl, tp;
            OK(mc_tensor_view_cols(&fused.t[s], 0, lr, &tl, &err_[s]));
            OK(mc_tensor_view_cols(&fused.t[s], lr, rd, &tp, &err_[s]));
            OK(mc_op_kv_write(B[s], &ix, &tl, &lp.t[s], &err_[s]));
            OK(mc_op_kv_write(B[s], &ix, &tp, &pp.t[s], &err_[s]));
        }
        pair_free(&fused);
        free(h);
    }
    cmp_pair("kv_write MLA latent (column view)", &lp, 0);
    cmp_pair("kv_write MLA rope key (column view)", &pp, 0);
    float *qlh = rnd((size_t)L.n * nh * lr, 1.0f), *qph = rnd((size_t)L.n * nh * rd, 1.0f);
    pair_new(&ql, MC_DT_F32, 3, (int64_t[]){L.n, nh, lr}, lr, qlh);
    pair_new(&qp, MC_DT_F32, 3, (int64_t[]){L.n, nh, rd}, rd + 2, qph);
    pair_new(&y, MC_DT_F32, 3, (int64_t[]){L.n, nh, lr}, lr, NULL);
    int32_t *sh = NULL;
    if (k) { /* kept positions in [lo, pos]: repeats, -1 holes, never none */
        sh = xmalloc((size_t)L.n * k * sizeof *sh);
        for (int t = 0; t < L.n; t++) {
            int pos = L.h_pos[t], lo = chunk > 0 ? pos - pos % chunk : 0;
            for (int j = 0; j < k; j++)
                sh[t * k + j] = j > 0 && rint_(0, 4) == 0 ? -1 : rint_(lo, pos);
            if (k > 2)
                sh[t * k + 2] = sh[t * k]; /* a repeat counts once */
        }
        pair_2d(&sel, MC_DT_I32, L.n, k, k, sh);
    }
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = ix_step(&L, s);
        mc_attn_opts o = {.scale = 0.125f, .chunk = chunk, .sel = k ? &sel.t[s] : NULL};
        OK(mc_op_mla_decode(B[s], &ql.t[s], &qp.t[s], &lp.t[s], &pp.t[s], &ix, &o, &y.t[s],
                            &err_[s]));
    }
    char what[128];
    snprintf(what, sizeof what, "mla_decode bs=%d nh=%d lr=%d rd=%d chunk=%d sel k=%d", bs, nh, lr,
             rd, chunk, k);
    cmp_pair(what, &y, 1e-5);
    if (k) { /* refusals: an entry past the token's position; a token keeping none */
        mc_status st[2];
        for (int pass = 0; pass < 2; pass++) {
            int t = L.n - 1;
            for (int j = 0; j < k; j++)
                sh[t * k + j] = pass ? -1 : L.h_pos[t] + 1 + j;
            mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
            for (int s = 0; s < 2; s++) {
                OK(mc_tensor_upload(&sel.t[s], sh, &err_[s]));
                mc_kv_index ix = ix_step(&L, s);
                mc_attn_opts o = {.scale = 0.125f, .chunk = chunk, .sel = &sel.t[s]};
                st[s] = mc_op_mla_decode(B[s], &ql.t[s], &qp.t[s], &lp.t[s], &pp.t[s], &ix, &o,
                                         &y.t[s], &err_[s]);
            }
            same_refusal(pass ? "mla_decode, a token keeping none" : "mla_decode, a bad sel", st);
            mc_kv_index ix = ix_step(&L, 1);
            mc_attn_opts o = {.scale = 0.125f, .chunk = chunk, .sel = &sel.t[1]};
            DEFERRED(pass ? "mla_decode, a token keeping none" : "mla_decode, a bad sel",
                     "mla_decode", 0,
                     mc_op_mla_decode(B[1], &ql.t[1], &qp.t[1], &lp.t[1], &pp.t[1], &ix, &o,
                                      &y.t[1], &err_[1]));
        }
        cmp_pair("mla_decode refused: y untouched", &y, 1e-5);
        pair_free(&sel);
        free(sh);
    }
    pair *all[] = {&lp, &pp, &ql, &qp, &y};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(qlh);
    free(qph);
    layout_free(&L);
}

/* ---- V3.2 indexer top-k: exact scores, many exact ties ---- */

static void indexer_case(int bs, int ih, int id, int k)
{
    layout L;
    layout_new(&L, bs);
    pair kp, iq, w, sel;
    pair_new(&kp, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, id}, id, NULL);
    pair_zero(&kp);
    fill_pages(&L, &kp, 1, id, 1);
    float *iqh = xmalloc((size_t)L.n * ih * id * sizeof *iqh), *wh = xmalloc((size_t)L.n * ih * 4);
    for (int i = 0; i < L.n * ih * id; i++)
        iqh[i] = (float)rint_(-3, 3);
    for (int i = 0; i < L.n * ih; i++)
        wh[i] = 0.25f * (float)rint_(-8, 8);
    pair_new(&iq, MC_DT_F32, 3, (int64_t[]){L.n, ih, id}, id + 1, iqh);
    pair_2d(&w, MC_DT_F32, L.n, ih, ih + 2, wh);
    pair_2d(&sel, MC_DT_I32, L.n, k, k, NULL);
    mc_indexer_opts o = {.k = k, .score_scale = 0.125f, .weight_scale = 0.5f};
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = ix_step(&L, s);
        OK(mc_op_indexer_topk(B[s], &iq.t[s], &w.t[s], &kp.t[s], &ix, &o, &sel.t[s], &err_[s]));
    }
    char what[96];
    snprintf(what, sizeof what, "indexer_topk bs=%d ih=%d id=%d k=%d", bs, ih, id, k);
    cmp_i32(what, &sel);
    /* refusal: a position past the table's capacity */
    int32_t *bad = xmalloc((size_t)L.n * sizeof *bad);
    memcpy(bad, L.h_pos, (size_t)L.n * sizeof *bad);
    bad[1] = L.max_blocks * bs;
    pair bpos;
    pair_1d(&bpos, MC_DT_I32, L.n, bad);
    mc_status st[2];
    mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = {.block_table = L.bt.t[s], .seq = L.seq.t[s], .pos = bpos.t[s]};
        st[s] = mc_op_indexer_topk(B[s], &iq.t[s], &w.t[s], &kp.t[s], &ix, &o, &sel.t[s],
                                   &err_[s]);
    }
    same_refusal("indexer_topk, a bad pos", st);
    mc_backend_set_sync_checks(B[1], 0);
    cmp_i32("indexer_topk refused: sel untouched", &sel);
    pair *all[] = {&kp, &iq, &w, &sel, &bpos};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(iqh);
    free(wh);
    free(bad);
    layout_free(&L);
}

/* ---- DeepSeek-V4 ---- */

/* The device under test answers V4 refusals at the op: the CPU acting as a
 * device and MC_CUDA_V4=host take the front end's host round trip. */
static int v4_at_op;
static int dut_is_cuda;

static void v4_hc_case(int n, int hc, int H, int iters)
{
    int mw = (2 + hc) * hc;
    float *xh = rnd((size_t)n * hc * H, 2.0f), *mh = rnd((size_t)n * mw, 3.0f),
          *bh = rnd((size_t)mw, 1.0f), *yh = rnd((size_t)n * H, 1.0f);
    float sc[3] = {0.7f, 1.3f, 0.9f};
    pair x, mix, base, scale, y, post, comb, y2, base1, scale1;
    pair_2d(&x, MC_DT_F32, n, (int64_t)hc * H, (int64_t)hc * H + 3, xh);
    pair_2d(&mix, MC_DT_F32, n, mw, mw + 1, mh);
    pair_1d(&base, MC_DT_F32, mw, bh);
    pair_1d(&scale, MC_DT_F32, 3, sc);
    pair_1d(&base1, MC_DT_F32, hc, bh);
    pair_1d(&scale1, MC_DT_F32, 1, sc);
    pair_2d(&y, MC_DT_F32, n, H, H, NULL);
    pair_2d(&post, MC_DT_F32, n, hc, hc + 2, NULL);
    pair_2d(&comb, MC_DT_F32, n, (int64_t)hc * hc, (int64_t)hc * hc, NULL);
    pair_2d(&y2, MC_DT_F32, n, H, H + 1, yh);
    mc_v4_hc_opts o = {.hc = hc, .iters = iters, .eps = 1e-6f};
    for (int s = 0; s < 2; s++)
        OK(mc_op_v4_hc_pre(B[s], &x.t[s], &mix.t[s], &base.t[s], &scale.t[s], &o, &post.t[s],
                           &comb.t[s], &y.t[s], &err_[s]));
    char what[96];
    snprintf(what, sizeof what, "v4_hc_pre y n=%d hc=%d H=%d iters=%d", n, hc, H, iters);
    cmp_pair(what, &y, 1e-5);
    snprintf(what, sizeof what, "v4_hc_pre post n=%d hc=%d", n, hc);
    cmp_pair(what, &post, 1e-5);
    snprintf(what, sizeof what, "v4_hc_pre comb (Sinkhorn) n=%d hc=%d iters=%d", n, hc, iters);
    cmp_pair(what, &comb, 1e-5);
    for (int s = 0; s < 2; s++) { /* the final HyperHead: mix (n, hc) as a column view */
        mc_tensor m1;
        OK(mc_tensor_view_cols(&mix.t[s], 0, hc, &m1, &err_[s]));
        OK(mc_op_v4_hc_pre(B[s], &x.t[s], &m1, &base1.t[s], &scale1.t[s], &o, NULL, NULL, &y.t[s],
                           &err_[s]));
    }
    snprintf(what, sizeof what, "v4_hc_pre head n=%d hc=%d H=%d", n, hc, H);
    cmp_pair(what, &y, 1e-5);
    for (int s = 0; s < 2; s++)
        OK(mc_op_v4_hc_post(B[s], &x.t[s], &post.t[s], &comb.t[s], &y2.t[s], &err_[s]));
    snprintf(what, sizeof what, "v4_hc_post n=%d hc=%d H=%d", n, hc, H);
    cmp_pair(what, &x, 1e-5);
    pair *all[] = {&x, &mix, &base, &scale, &y, &post, &comb, &y2, &base1, &scale1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(xh);
    free(mh);
    free(bh);
    free(yh);
}

/* cos / sin tables (P, half) of a rotation. */
static void v4_tables(pair *cs, pair *sn, int P, int half)
{
    float *c = xmalloc((size_t)P * half * sizeof *c), *s = xmalloc((size_t)P * half * sizeof *s);
    for (int p = 0; p < P; p++)
        for (int i = 0; i < half; i++) {
            c[p * half + i] = cosf(0.05f * (float)p * (float)(i + 1));
            s[p * half + i] = sinf(0.05f * (float)p * (float)(i + 1));
        }
    pair_2d(cs, MC_DT_F32, P, half, half + 1, c);
    pair_2d(sn, MC_DT_F32, P, half, half, s);
    free(c);
    free(s);
}

static void v4_compress_case(int bs, int R, int overlap, int cd, int rd)
{
    layout L;
    layout_new(&L, bs);
    int W = (1 + overlap) * cd;
    pair kp, gp, op, ape, norm, cs, sn;
    pair_new(&kp, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, W}, W, NULL);
    pair_new(&gp, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, W}, W + 2, NULL);
    pair_new(&op, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, cd}, cd, NULL);
    pair_zero(&kp);
    pair_zero(&gp);
    pair_zero(&op);
    fill_pages(&L, &kp, 1, W, 0);
    fill_pages(&L, &gp, 1, W, 0);
    float *ah = rnd((size_t)R * W, 1.0f), *nh = rnd((size_t)cd, 1.0f);
    pair_2d(&ape, MC_DT_F32, R, W, W, ah);
    pair_1d(&norm, MC_DT_F32, cd, nh);
    v4_tables(&cs, &sn, 300, rd / 2);
    mc_v4_comp_opts o = {.rate = R, .overlap = overlap, .eps = 1e-6f};
    for (int part = 0; part < 2; part++) /* the prefix's windows, then the step's */
        for (int s = 0; s < 2; s++) {
            mc_kv_index ix = part ? ix_step(&L, s) : ix_prefix(&L, s);
            OK(mc_op_v4_compress(B[s], &kp.t[s], &gp.t[s], &ape.t[s], &norm.t[s], &cs.t[s],
                                 &sn.t[s], &ix, &o, &op.t[s], &err_[s]));
        }
    char what[112];
    snprintf(what, sizeof what, "v4_compress bs=%d rate=%d overlap=%d cd=%d rd=%d", bs, R, overlap,
             cd, rd);
    cmp_pair(what, &op, 1e-5);
    /* refusal: a window starting past the rows of cs (sequence 2's windows
     * near position 290 against 100 rows); nothing written */
    pair cs2, sn2;
    v4_tables(&cs2, &sn2, 100, rd / 2);
    pair_zero(&op);
    mc_status st[2];
    mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = ix_step(&L, s);
        st[s] = mc_op_v4_compress(B[s], &kp.t[s], &gp.t[s], &ape.t[s], &norm.t[s], &cs2.t[s],
                                  &sn2.t[s], &ix, &o, &op.t[s], &err_[s]);
    }
    same_refusal("v4_compress, a window past cs", st);
    {
        mc_kv_index ix = ix_step(&L, 1);
        DEFERRED("v4_compress, a window past cs", "v4_compress", v4_at_op,
                 mc_op_v4_compress(B[1], &kp.t[1], &gp.t[1], &ape.t[1], &norm.t[1], &cs2.t[1],
                                   &sn2.t[1], &ix, &o, &op.t[1], &err_[1]));
    }
    cmp_pair("v4_compress refused: out pages untouched", &op, 0);
    pair *all[] = {&kp, &gp, &op, &ape, &norm, &cs, &sn, &cs2, &sn2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(ah);
    free(nh);
    layout_free(&L);
}

/* Integer keys and queries, weights of quarters: every score exact on both
 * sides, many exact ties (zeros from the ReLU), so the kept entries and
 * their order test the CPU's introselect step for step. */
static void v4_index_case(int bs, int R, int ih, int id, int k, int with_rows)
{
    layout L;
    layout_new(&L, bs);
    pair kp, iq, w, sel, nrow;
    pair_new(&kp, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, id}, id, NULL);
    pair_zero(&kp);
    fill_pages(&L, &kp, 1, id, 1);
    float *iqh = xmalloc((size_t)L.n * ih * id * sizeof *iqh), *wh = xmalloc((size_t)L.n * ih * 4);
    for (int i = 0; i < L.n * ih * id; i++)
        iqh[i] = (float)rint_(-3, 3);
    for (int i = 0; i < L.n * ih; i++)
        wh[i] = 0.25f * (float)rint_(-8, 8);
    int32_t *rh = xmalloc((size_t)L.n * sizeof *rh); /* as the executor: the sequence's blocks */
    for (int t = 0; t < L.n; t++) {
        int s = L.h_seq[t], nb = (seq_prefix[s] + seq_new[s] + bs - 1) / bs;
        rh[t] = nb * bs / R;
    }
    pair_new(&iq, MC_DT_F32, 3, (int64_t[]){L.n, ih, id}, id + 1, iqh);
    pair_2d(&w, MC_DT_F32, L.n, ih, ih + 2, wh);
    pair_2d(&sel, MC_DT_I32, L.n, k, k + 1, NULL);
    pair_1d(&nrow, MC_DT_I32, L.n, rh);
    mc_v4_index_opts o = {.rate = R, .k = k, .score_scale = 0.125f, .weight_scale = 0.5f};
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = ix_step(&L, s);
        o.n_row = with_rows ? &nrow.t[s] : NULL;
        OK(mc_op_v4_index_topk(B[s], &iq.t[s], &w.t[s], &kp.t[s], &ix, &o, &sel.t[s], &err_[s]));
    }
    char what[112];
    snprintf(what, sizeof what, "v4_index_topk bs=%d rate=%d ih=%d id=%d k=%d n_row=%d", bs, R, ih,
             id, k, with_rows);
    cmp_i32(what, &sel);
    /* refusal: a position past the table's capacity; sel untouched */
    int32_t *bad = xmalloc((size_t)L.n * sizeof *bad);
    memcpy(bad, L.h_pos, (size_t)L.n * sizeof *bad);
    bad[2] = L.max_blocks * bs;
    pair bpos;
    pair_1d(&bpos, MC_DT_I32, L.n, bad);
    mc_status st[2];
    mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = {.block_table = L.bt.t[s], .seq = L.seq.t[s], .pos = bpos.t[s]};
        o.n_row = with_rows ? &nrow.t[s] : NULL;
        st[s] = mc_op_v4_index_topk(B[s], &iq.t[s], &w.t[s], &kp.t[s], &ix, &o, &sel.t[s],
                                    &err_[s]);
    }
    same_refusal("v4_index_topk, a bad pos", st);
    {
        mc_kv_index ix = {.block_table = L.bt.t[1], .seq = L.seq.t[1], .pos = bpos.t[1]};
        o.n_row = with_rows ? &nrow.t[1] : NULL;
        DEFERRED("v4_index_topk, a bad pos", "v4_index_topk", v4_at_op,
                 mc_op_v4_index_topk(B[1], &iq.t[1], &w.t[1], &kp.t[1], &ix, &o, &sel.t[1],
                                     &err_[1]));
    }
    cmp_i32("v4_index_topk refused: sel untouched", &sel);
    /* refusal: a block id past the cache (sequence 2, a block of its long prefix) */
    pair bbt;
    bad_table(&L, L.max_blocks + 1, &bbt); /* a strided table */
    mc_backend_set_sync_checks(B[1], 1);
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = {.block_table = bbt.t[s], .seq = L.seq.t[s], .pos = L.pos.t[s]};
        o.n_row = with_rows ? &nrow.t[s] : NULL;
        st[s] = mc_op_v4_index_topk(B[s], &iq.t[s], &w.t[s], &kp.t[s], &ix, &o, &sel.t[s],
                                    &err_[s]);
    }
    same_refusal("v4_index_topk, a bad block id", st);
    mc_backend_set_sync_checks(B[1], 0);
    if (with_rows && dut_is_cuda && !v4_at_op) {
        /* the CUDA backend's own limit: an n_row longer than the block table
         * holds is refused (the CPU takes it), but never in place of the
         * CPU's refusal of a later token */
        int32_t *r2 = xmalloc((size_t)L.n * sizeof *r2);
        memcpy(r2, rh, (size_t)L.n * sizeof *r2);
        r2[1] = L.max_blocks * bs / R + 1;
        pair nrow2;
        pair_1d(&nrow2, MC_DT_I32, L.n, r2);
        mc_backend_set_sync_checks(B[1], 1);
        mc_kv_index ix = ix_step(&L, 1);
        o.n_row = &nrow2.t[1];
        mc_status s1 = mc_op_v4_index_topk(B[1], &iq.t[1], &w.t[1], &kp.t[1], &ix, &o, &sel.t[1],
                                           &err_[1]);
        check_count++;
        if (s1 != MC_ERR_UNSUPPORTED || !strstr(err_[1].msg, "n_row")) {
            check_failures++;
            fprintf(stderr, "v4_index_topk, n_row past the table: want MC_ERR_UNSUPPORTED naming "
                    "n_row, got %s \"%s\"\n", mc_status_str(s1), err_[1].msg);
        }
        mc_err_clear(&err_[1]);
        for (int s = 0; s < 2; s++) { /* with a block id the CPU refuses (token 2 on) */
            mc_kv_index ixb = {.block_table = bbt.t[s], .seq = L.seq.t[s], .pos = L.pos.t[s]};
            o.n_row = s ? &nrow2.t[1] : &nrow.t[0];
            st[s] = mc_op_v4_index_topk(B[s], &iq.t[s], &w.t[s], &kp.t[s], &ixb, &o, &sel.t[s],
                                        &err_[s]);
        }
        same_refusal("v4_index_topk, a bad block id after an n_row past the table", st);
        mc_backend_set_sync_checks(B[1], 0);
        pair_free(&nrow2);
        free(r2);
    }
    cmp_i32("v4_index_topk refused: sel untouched (2)", &sel);
    pair_free(&bbt);
    pair *all[] = {&kp, &iq, &w, &sel, &nrow, &bpos};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(iqh);
    free(wh);
    free(rh);
    free(bad);
    layout_free(&L);
}

/* mode 0: the window only; 1: the window and every compressed entry; 2:
 * the window and the entries of a selection (-1 holes, repeats). */
static void v4_attention_case(int bs, int nh, int hd, int W, int R, int mode, int ksel)
{
    layout L;
    layout_new(&L, bs);
    pair kp, cp, q, y, sinks, sel;
    pair_new(&kp, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, hd}, hd, NULL);
    pair_new(&cp, MC_DT_F32, 3, (int64_t[]){L.n_pages, bs, hd}, hd + 1, NULL);
    pair_zero(&kp);
    pair_zero(&cp);
    fill_pages(&L, &kp, 1, hd, 0);
    fill_pages(&L, &cp, 1, hd, 0);
    float *qh = rnd((size_t)L.n * nh * hd, 1.0f), *skh = rnd((size_t)nh, 2.0f);
    pair_new(&q, MC_DT_F32, 3, (int64_t[]){L.n, nh, hd}, hd + 1, qh);
    pair_new(&y, MC_DT_F32, 3, (int64_t[]){L.n, nh, hd}, hd, NULL);
    pair_1d(&sinks, MC_DT_F32, nh, skh);
    int32_t *sh = NULL;
    if (mode == 2) {
        sh = xmalloc((size_t)L.n * ksel * sizeof *sh);
        for (int t = 0; t < L.n; t++) {
            int nv = (L.h_pos[t] + 1) / R;
            for (int j = 0; j < ksel; j++)
                sh[t * ksel + j] = nv == 0 || rint_(0, 4) == 0 ? -1 : rint_(0, nv - 1);
        }
        pair_2d(&sel, MC_DT_I32, L.n, ksel, ksel + 2, sh);
    }
    mc_v4_attn_opts o = {.window = W, .rate = R, .scale = 1.0f / sqrtf((float)hd)};
    for (int s = 0; s < 2; s++) {
        mc_kv_index ix = ix_step(&L, s);
        OK(mc_op_v4_attention(B[s], &q.t[s], &kp.t[s], mode ? &cp.t[s] : NULL, &sinks.t[s],
                              mode == 2 ? &sel.t[s] : NULL, &ix, &o, &y.t[s], &err_[s]));
    }
    char what[112];
    snprintf(what, sizeof what, "v4_attention bs=%d nh=%d hd=%d window=%d rate=%d mode=%d k=%d", bs,
             nh, hd, W, R, mode, ksel);
    cmp_pair(what, &y, 1e-5);
    if (mode == 1) { /* refusal: a token's sequence past the table; y untouched */
        int32_t *bad = xmalloc((size_t)L.n * sizeof *bad);
        memcpy(bad, L.h_seq, (size_t)L.n * sizeof *bad);
        bad[L.n - 2] = NSEQ;
        pair bseq;
        pair_1d(&bseq, MC_DT_I32, L.n, bad);
        mc_status st[2];
        mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
        for (int s = 0; s < 2; s++) {
            mc_kv_index ix = {.block_table = L.bt.t[s], .seq = bseq.t[s], .pos = L.pos.t[s]};
            st[s] = mc_op_v4_attention(B[s], &q.t[s], &kp.t[s], &cp.t[s], &sinks.t[s], NULL, &ix,
                                       &o, &y.t[s], &err_[s]);
        }
        same_refusal("v4_attention, a bad seq", st);
        mc_kv_index ix = {.block_table = L.bt.t[1], .seq = bseq.t[1], .pos = L.pos.t[1]};
        DEFERRED("v4_attention, a bad seq", "v4_attention", v4_at_op,
                 mc_op_v4_attention(B[1], &q.t[1], &kp.t[1], &cp.t[1], &sinks.t[1], NULL, &ix, &o,
                                    &y.t[1], &err_[1]));
        cmp_pair("v4_attention refused: y untouched", &y, 1e-5);
        pair_free(&bseq);
        free(bad);
    }
    if (mode == 2) { /* refusal: an entry the token does not see yet; y untouched */
        int t = L.n - 1;
        sh[t * ksel + ksel - 1] = (L.h_pos[t] + 1) / R;
        mc_status st[2];
        mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
        for (int s = 0; s < 2; s++) {
            OK(mc_tensor_upload(&sel.t[s], sh, &err_[s]));
            mc_kv_index ix = ix_step(&L, s);
            st[s] = mc_op_v4_attention(B[s], &q.t[s], &kp.t[s], &cp.t[s], &sinks.t[s], &sel.t[s],
                                       &ix, &o, &y.t[s], &err_[s]);
        }
        same_refusal("v4_attention, a bad sel", st);
        mc_kv_index ix = ix_step(&L, 1);
        DEFERRED("v4_attention, a bad sel", "v4_attention", v4_at_op,
                 mc_op_v4_attention(B[1], &q.t[1], &kp.t[1], &cp.t[1], &sinks.t[1], &sel.t[1],
                                    &ix, &o, &y.t[1], &err_[1]));
        cmp_pair("v4_attention refused: y untouched", &y, 1e-5);
        pair_free(&sel);
        free(sh);
    }
    pair *all[] = {&kp, &cp, &q, &y, &sinks};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(qh);
    free(skh);
    layout_free(&L);
}

static void v4_hash_case(int n, int E, int V, int k, int score)
{
    float *lh = rnd((size_t)n * E, 4.0f);
    int32_t *th = xmalloc((size_t)n * sizeof *th), *tb = xmalloc((size_t)V * k * sizeof *tb);
    for (int t = 0; t < n; t++)
        th[t] = rint_(0, V - 1);
    for (int i = 0; i < V * k; i++)
        tb[i] = rint_(0, E - 1);
    pair lg, tok, table, ids, wts;
    pair_2d(&lg, MC_DT_F32, n, E, E + 1, lh);
    pair_1d(&tok, MC_DT_I32, n, th);
    pair_2d(&table, MC_DT_I32, V, k, k + 1, tb);
    pair_2d(&ids, MC_DT_I32, n, k, k, NULL);
    pair_2d(&wts, MC_DT_F32, n, k, k + 3, NULL);
    mc_router_opts o = {.score = score, .k = k, .norm_eps = 1e-20f, .scale = 2.5f};
    for (int s = 0; s < 2; s++)
        OK(mc_op_v4_hash_route(B[s], &lg.t[s], &tok.t[s], &table.t[s], &o, &ids.t[s], &wts.t[s],
                               &err_[s]));
    char what[96];
    snprintf(what, sizeof what, "v4_hash_route ids n=%d E=%d V=%d k=%d score=%d", n, E, V, k,
             score);
    cmp_i32(what, &ids);
    snprintf(what, sizeof what, "v4_hash_route weights n=%d E=%d k=%d score=%d", n, E, k, score);
    cmp_pair(what, &wts, 1e-5);
    /* refusals: a token id past the table, then a table entry past the experts */
    for (int pass = 0; pass < 2; pass++) {
        pair bt, bb;
        int32_t *t2 = xmalloc((size_t)n * sizeof *t2), *b2 = xmalloc((size_t)V * k * sizeof *b2);
        memcpy(t2, th, (size_t)n * sizeof *t2);
        memcpy(b2, tb, (size_t)V * k * sizeof *b2);
        if (pass == 0)
            t2[n / 2] = V;
        else
            b2[th[n - 1] * k + k - 1] = E;
        pair_1d(&bt, MC_DT_I32, n, t2);
        pair_2d(&bb, MC_DT_I32, V, k, k + 1, b2);
        mc_status st[2];
        mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
        for (int s = 0; s < 2; s++)
            st[s] = mc_op_v4_hash_route(B[s], &lg.t[s], &bt.t[s], &bb.t[s], &o, &ids.t[s],
                                        &wts.t[s], &err_[s]);
        const char *w2 = pass ? "v4_hash_route, a bad table entry" : "v4_hash_route, a bad id";
        same_refusal(w2, st);
        DEFERRED(w2, "v4_hash_route", v4_at_op,
                 mc_op_v4_hash_route(B[1], &lg.t[1], &bt.t[1], &bb.t[1], &o, &ids.t[1],
                                     &wts.t[1], &err_[1]));
        pair_free(&bt);
        pair_free(&bb);
        free(t2);
        free(b2);
    }
    cmp_i32("v4_hash_route refused: ids untouched", &ids);
    pair *all[] = {&lg, &tok, &table, &ids, &wts};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(lh);
    free(th);
    free(tb);
}

/* The CUDA backend's hc_post mixes at most 64 streams (the CPU any):
 * refused as unsupported, x untouched. */
static void v4_hc_post_wide(void)
{
    enum { n = 2, hc = 65, H = 8 };
    float *xh = rnd((size_t)n * hc * H, 1.0f), *ph = rnd((size_t)n * hc, 1.0f),
          *ch = rnd((size_t)n * hc * hc, 1.0f), *yh = rnd((size_t)n * H, 1.0f);
    pair x, post, comb, y;
    pair_2d(&x, MC_DT_F32, n, hc * H, hc * H, xh);
    pair_2d(&post, MC_DT_F32, n, hc, hc, ph);
    pair_2d(&comb, MC_DT_F32, n, hc * hc, hc * hc, ch);
    pair_2d(&y, MC_DT_F32, n, H, H, yh);
    mc_status st = mc_op_v4_hc_post(B[1], &x.t[1], &post.t[1], &comb.t[1], &y.t[1], &err_[1]);
    check_count++;
    if (st != MC_ERR_UNSUPPORTED) {
        check_failures++;
        fprintf(stderr, "v4_hc_post, 65 streams: want MC_ERR_UNSUPPORTED, got %s \"%s\"\n",
                mc_status_str(st), err_[1].msg);
    }
    mc_err_clear(&err_[1]);
    float *got = xmalloc((size_t)n * hc * H * sizeof *got);
    OK(mc_tensor_download(&x.t[1], got, &err_[1]));
    CHECK(memcmp(got, xh, (size_t)n * hc * H * sizeof *got) == 0);
    pair *all[] = {&x, &post, &comb, &y};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(xh);
    free(ph);
    free(ch);
    free(yh);
    free(got);
}

static void test_v4(void)
{
    v4_hc_case(5, 4, 24, 3);
    v4_hc_case(3, 7, 300, 20);
    v4_hc_case(2, 64, 33, 2);
    v4_compress_case(5, 4, 0, 24, 8);
    v4_compress_case(16, 2, 1, 40, 16);
    v4_compress_case(3, 1, 0, 16, 4);
    v4_compress_case(4, 4, 1, 512, 64); /* V4's width: several channels a thread */
    v4_index_case(5, 4, 3, 8, 5, 1);
    v4_index_case(16, 2, 2, 16, 64, 1);
    v4_index_case(5, 1, 4, 12, 7, 0);
    /* a CUDA backend scoring its tokens in chunks of ~2 */
    mc_backend *dut = dut_swap_env(dut_is_cuda, "MC_CUDA_V4_INDEX_BYTES", "1000");
    v4_index_case(5, 4, 3, 8, 5, 1);
    dut_restore(dut);
    v4_attention_case(5, 3, 40, 8, 4, 0, 0);
    v4_attention_case(16, 2, 64, 128, 4, 1, 0);
    v4_attention_case(5, 4, 33, 4, 2, 2, 9);
    v4_attention_case(7, 2, 24, 300, 1, 2, 200); /* spans of several tiles */
    v4_attention_case(5, 2, 512, 128, 4, 2, 64);   /* V4's head width */
    v4_hash_case(9, 16, 50, 3, MC_ROUTE_SQRTSOFTPLUS);
    v4_hash_case(33, 64, 7, 6, MC_ROUTE_SIGMOID);
    if (dut_is_cuda && !v4_at_op)
        v4_hc_post_wide();
}

/* ---- router ---- */

static void router_case(const char *name, int n, int E, mc_router_opts o, int with_bias,
                        int integer_logits)
{
    float *lh = rnd((size_t)n * E, 4.0f), *bh = rnd((size_t)E, 0.5f);
    if (integer_logits) /* exact ties everywhere: the lower expert wins */
        for (int i = 0; i < n * E; i++)
            lh[i] = (float)rint_(-2, 2);
    pair lg, bias, ids, w;
    pair_2d(&lg, MC_DT_F32, n, E, E + 3, lh);
    pair_1d(&bias, MC_DT_F32, E, bh);
    pair_2d(&ids, MC_DT_I32, n, o.k, o.k, NULL);
    pair_2d(&w, MC_DT_F32, n, o.k, o.k + 1, NULL);
    for (int s = 0; s < 2; s++)
        OK(mc_op_router_topk(B[s], &lg.t[s], with_bias ? &bias.t[s] : NULL, &o, &ids.t[s],
                             &w.t[s], &err_[s]));
    char what[128];
    snprintf(what, sizeof what, "router_topk %s ids (n=%d E=%d k=%d)", name, n, E, o.k);
    cmp_i32(what, &ids);
    snprintf(what, sizeof what, "router_topk %s weights (n=%d E=%d k=%d)", name, n, E, o.k);
    cmp_pair(what, &w, 1e-5);
    pair *all[] = {&lg, &bias, &ids, &w};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(lh);
    free(bh);
}

static void test_router(void)
{
    router_case("softmax renorm", 37, 60, (mc_router_opts){MC_ROUTE_SOFTMAX, 6, 1, 1, 1, 0, 1},
                0, 0);
    router_case("softmax plain", 5, 128, (mc_router_opts){MC_ROUTE_SOFTMAX, 8, 1, 1, 0, 0, 1}, 0,
                0);
    router_case("sigmoid groups bias scale", 41, 64,
                (mc_router_opts){MC_ROUTE_SIGMOID, 8, 8, 3, 1, 1e-20f, 2.5f}, 1, 0);
    router_case("sigmoid groups 256", 9, 256,
                (mc_router_opts){MC_ROUTE_SIGMOID, 8, 8, 4, 1, 1e-20f, 2.827f}, 1, 0);
    router_case("sqrtsoftplus", 23, 72,
                (mc_router_opts){MC_ROUTE_SQRTSOFTPLUS, 6, 1, 1, 1, 1e-20f, 1.5f}, 1, 0);
    router_case("logit-sigmoid ties", 31, 16,
                (mc_router_opts){MC_ROUTE_LOGIT_SIGMOID, 1, 1, 1, 0, 0, 1}, 0, 1);
    router_case("logit-sigmoid ties k=5 groups", 31, 16,
                (mc_router_opts){MC_ROUTE_LOGIT_SIGMOID, 5, 4, 2, 1, 0, 1}, 1, 1);
}

/* ---- permutation by expert and back ---- */

static void permute_case(int n, int k, int E, int H)
{
    int32_t *idh = xmalloc((size_t)n * k * sizeof *idh);
    for (int i = 0; i < n * k; i++)
        idh[i] = rint_(0, E - 1) % (E > 3 ? E - 2 : E); /* some experts get nothing */
    float *xh = rnd((size_t)n * H, 1.0f), *ypf = rnd((size_t)n * k * H, 1.0f),
          *wh = rnd((size_t)n * k, 1.0f);
    pair x, ids, xp, slot, off, yp, w, y;
    pair_2d(&x, MC_DT_F32, n, H, H + 5, xh);
    pair_2d(&ids, MC_DT_I32, n, k, k, idh);
    pair_2d(&xp, MC_DT_F32, n * k, H, H, NULL);
    pair_2d(&slot, MC_DT_I32, n, k, k + 1, NULL);
    pair_1d(&off, MC_DT_I32, E + 1, NULL);
    pair_2d(&yp, MC_DT_F32, n * k, H, H + 1, ypf);
    pair_2d(&w, MC_DT_F32, n, k, k, wh);
    pair_2d(&y, MC_DT_F32, n, H, H, NULL);
    for (int s = 0; s < 2; s++)
        OK(mc_op_moe_permute(B[s], &x.t[s], &ids.t[s], &xp.t[s], &slot.t[s], &off.t[s],
                             &err_[s]));
    char what[96];
    snprintf(what, sizeof what, "moe_permute n=%d k=%d E=%d H=%d", n, k, E, H);
    cmp_pair(what, &xp, 0);
    cmp_i32("moe_permute slot", &slot);
    cmp_i32("moe_permute offsets", &off);
    for (int pass = 0; pass < 2; pass++) {
        for (int s = 0; s < 2; s++)
            OK(mc_op_moe_unpermute_weighted(B[s], &yp.t[s], &slot.t[s], pass ? NULL : &w.t[s],
                                            &y.t[s], &err_[s]));
        snprintf(what, sizeof what, "moe_unpermute_weighted%s n=%d k=%d H=%d",
                 pass ? " (no weights)" : "", n, k, H);
        cmp_pair(what, &y, 0);
    }
    /* refusals: an expert id past the offsets, a slot past yp; nothing written */
    mc_status st[2];
    idh[(n / 2) * k + k - 1] = E;
    int32_t *slh = xmalloc((size_t)n * k * sizeof *slh);
    mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
    for (int s = 0; s < 2; s++) {
        OK(mc_tensor_upload(&ids.t[s], idh, &err_[s]));
        st[s] = mc_op_moe_permute(B[s], &x.t[s], &ids.t[s], &xp.t[s], &slot.t[s], &off.t[s],
                                  &err_[s]);
    }
    same_refusal("moe_permute, a bad expert id", st);
    DEFERRED("moe_permute, a bad expert id", "moe_permute", 0,
             mc_op_moe_permute(B[1], &x.t[1], &ids.t[1], &xp.t[1], &slot.t[1], &off.t[1],
                               &err_[1]));
    cmp_i32("moe_permute refused: slot untouched", &slot);
    cmp_i32("moe_permute refused: offsets untouched", &off);
    OK(mc_tensor_download(&slot.t[0], slh, &err_[0]));
    slh[n * k - 1] = n * k;
    mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
    for (int s = 0; s < 2; s++) {
        OK(mc_tensor_upload(&slot.t[s], slh, &err_[s]));
        st[s] = mc_op_moe_unpermute_weighted(B[s], &yp.t[s], &slot.t[s], &w.t[s], &y.t[s],
                                             &err_[s]);
    }
    same_refusal("moe_unpermute, a bad slot", st);
    DEFERRED("moe_unpermute, a bad slot", "moe_unpermute", 0,
             mc_op_moe_unpermute_weighted(B[1], &yp.t[1], &slot.t[1], &w.t[1], &y.t[1],
                                          &err_[1]));
    cmp_pair("moe_unpermute refused: y untouched", &y, 0);
    pair *all[] = {&x, &ids, &xp, &slot, &off, &yp, &w, &y};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(idh);
    free(slh);
    free(xh);
    free(ypf);
    free(wh);
}

/* ---- grouped experts ---- */

/* A weight W [O, I] of dtype dt on both backends from uniform values in
 * [-a, a]; `tr`: stored transposed (W^T [I, O + 2]). */
static void weight_pair(pair *p, mc_dtype dt, int O, int I, int tr, float a)
{
    int64_t srows = tr ? I : O, scols = tr ? O + 2 : I;
    size_t rb = mc_dtype_row_bytes(dt, scols);
    unsigned char *h = xmalloc((size_t)srows * rb);
    float *row = xmalloc((size_t)scols * sizeof *row);
    for (int64_t r = 0; r < srows; r++) {
        unsigned char *o = h + (size_t)r * rb;
        for (int64_t i = 0; i < scols; i++)
            row[i] = runi(-a, a);
        if (dt == MC_DT_Q6_K) {
            random_q6_k_blocks(o, rb);
            continue;
        }
        if (mc_dtype_is_block(dt)) {
            mc_quantize_row(dt, row, o, scols);
            continue;
        }
        for (int64_t i = 0; i < scols; i++) {
            if (dt == MC_DT_F32)
                memcpy(o + 4 * i, &row[i], 4);
            else if (dt == MC_DT_BF16 || dt == MC_DT_F16) {
                uint16_t v = dt == MC_DT_BF16 ? mc_f32_to_bf16(row[i]) : mc_f32_to_f16(row[i]);
                memcpy(o + 2 * i, &v, 2);
            } else
                o[i] = mc_f32_to_fp8_e4m3(row[i]);
        }
    }
    size_t bytes = (size_t)srows * rb;
    for (int s = 0; s < 2; s++) {
        OK(mc_buffer_alloc(B[s], bytes, &p->b[s], &err_[s]));
        OK(mc_buffer_upload(p->b[s], 0, h, bytes, &err_[s]));
        if (tr)
            OK(mc_tensor_init_transposed(&p->t[s], p->b[s], 0, dt, O, I, O + 2, &err_[s]));
        else
            OK(mc_tensor_init_strided(&p->t[s], p->b[s], 0, dt, 2, (int64_t[]){O, I}, scols,
                                      &err_[s]));
    }
    free(h);
    free(row);
}

#define GE_MAX 6

/* FP8 block scales (block x block, values in [0.5, 2]) on both sides of w
 * (O x I), their storage in *sc (freed by the caller). */
static void scales_pair(pair *w, pair *sc, int O, int I, int block)
{
    int sr = (O + block - 1) / block, scn = (I + block - 1) / block;
    float *sh = xmalloc((size_t)sr * scn * sizeof *sh);
    for (int i = 0; i < sr * scn; i++)
        sh[i] = runi(0.5f, 2.0f);
    pair_2d(sc, MC_DT_F32, sr, scn, scn, sh);
    for (int s = 0; s < 2; s++)
        OK(mc_tensor_set_scales(&w->t[s], &sc->t[s], block, block, &err_[s]));
    free(sh);
}

/* n_e experts (rows per expert from rows[]), H columns, inter sizes I + 8 * e
 * (element types, unless `uniform`: I for all, as models have, the CUDA
 * backend's grouped launch) or I; weighting: 0 none, 1 output, 2 input;
 * limit: the V4 clamp; scale_block > 0: FP8 block scales of that size. */
/* The CUDA backend's block-format experts are compared with themselves:
 * test_experts runs twice on a GPU, grouped (pass 0) and with the loop
 * forced (pass 1), on the same data (the random stream restored); the
 * loop's rows must be the grouped launch's bit for bit (the same row
 * products, cuda/qdot.cuh). */
#define TWINS 32
static int twin_pass, twin_n;
static float *twin_y[TWINS];
static size_t twin_len[TWINS];

static void loop_twin(const char *what, const pair *y)
{
    size_t n = (size_t)mc_tensor_nelems(&y->t[1]);
    float *h = xmalloc(n * sizeof *h);
    OK(mc_tensor_download(&y->t[1], h, &err_[1]));
    int i = twin_n++;
    if (i >= TWINS) {
        free(h);
        return;
    }
    if (twin_pass == 0) {
        twin_y[i] = h;
        twin_len[i] = n;
        return;
    }
    check_count++;
    if (!twin_y[i] || twin_len[i] != n || memcmp(twin_y[i], h, n * sizeof *h) != 0) {
        check_failures++;
        size_t k = 0;
        while (twin_y[i] && k < n && k < twin_len[i] && twin_y[i][k] == h[k])
            k++;
        fprintf(stderr, "%s: the per-expert loop differs from the grouped launch (first at "
                "element %zu: %.9g vs %.9g)\n", what, k, k < n ? h[k] : 0.0,
                twin_y[i] && k < twin_len[i] ? twin_y[i][k] : 0.0);
    }
    free(twin_y[i]);
    twin_y[i] = NULL;
    free(h);
}

/* ddt: the down projections' type (Q4_K_M files: Q4_K gate / up, Q6_K down). */
static void experts_case_xd(mc_dtype dt, mc_dtype ddt, int tr, int H, int I, int n_e,
                            const int *rows, int weighting, float limit, double rtol, int uniform,
                            int scale_block)
{
    int32_t offh[GE_MAX + 1] = {0};
    for (int e = 0; e < n_e; e++)
        offh[e + 1] = offh[e] + rows[e];
    int m = offh[n_e];
    int blk = mc_dtype_is_block(dt) ? mc_dtype_block_elems(dt) : 1;
    pair g[GE_MAX], u[GE_MAX], d[GE_MAX], x, y, off, rw, sc[3 * GE_MAX];
    mc_tensor gt[2][GE_MAX], ut[2][GE_MAX], dtn[2][GE_MAX];
    for (int e = 0; e < n_e; e++) {
        int Ie = blk > 1 || uniform ? I : I + 8 * e; /* block formats: whole blocks per row */
        weight_pair(&g[e], dt, Ie, H, tr, 0.2f);
        weight_pair(&u[e], dt, Ie, H, tr, 0.2f);
        weight_pair(&d[e], ddt, H, Ie, tr, 0.2f);
        if (scale_block) {
            scales_pair(&g[e], &sc[3 * e], Ie, H, scale_block);
            scales_pair(&u[e], &sc[3 * e + 1], Ie, H, scale_block);
            scales_pair(&d[e], &sc[3 * e + 2], H, Ie, scale_block);
        }
        for (int s = 0; s < 2; s++) {
            gt[s][e] = g[e].t[s];
            ut[s][e] = u[e].t[s];
            dtn[s][e] = d[e].t[s];
        }
    }
    float *xh = rnd((size_t)(m ? m : 1) * H, 1.0f), *rwh = rnd((size_t)(m ? m : 1), 1.0f);
    pair_2d(&x, MC_DT_F32, m, H, H + 3, xh);
    pair_2d(&y, MC_DT_F32, m, H, H + 1, NULL);
    pair_1d(&off, MC_DT_I32, n_e + 1, offh);
    pair_1d(&rw, MC_DT_F32, m ? m : 1, rwh);
    for (int s = 0; s < 2; s++) {
        mc_experts_opts o = {.row_weight = weighting ? &rw.t[s] : NULL,
                             .weight_input = weighting == 2, .swiglu_limit = limit};
        OK(mc_op_grouped_experts(B[s], &x.t[s], &off.t[s], n_e, gt[s], ut[s], dtn[s], &o, &y.t[s],
                                 &err_[s]));
    }
    char what[160];
    snprintf(what, sizeof what, "grouped_experts %s%s%s%s%s%s H=%d I=%d experts=%d rows=%d "
             "weighting=%d limit=%g", mc_dtype_name(dt), ddt != dt ? " down " : "",
             ddt != dt ? mc_dtype_name(ddt) : "", tr ? " transposed" : "",
             uniform ? " uniform" : "", scale_block ? " scaled" : "", H, I, n_e, m, weighting,
             (double)limit);
    if (mc_dtype_is_block(dt) || mc_dtype_is_block(ddt))
        cmp_pair_q(what, &y, rtol);
    else
        cmp_pair(what, &y, rtol);
    if (dut_is_cuda && mc_dtype_is_block(dt)) /* the grouped launch against the loop, exactly */
        loop_twin(what, &y);
    if (n_e > 2) { /* refusal: offsets out of order */
        int32_t bad[GE_MAX + 1];
        memcpy(bad, offh, sizeof bad);
        bad[2] = bad[1] - 1 >= 0 ? bad[1] - 1 : 0;
        if (bad[2] < bad[1]) {
            mc_status st[2];
            mc_backend_set_sync_checks(B[1], 1); /* at the op: the CPU's words */
            for (int s = 0; s < 2; s++) {
                OK(mc_tensor_upload(&off.t[s], bad, &err_[s]));
                st[s] = mc_op_grouped_experts(B[s], &x.t[s], &off.t[s], n_e, gt[s], ut[s], dtn[s],
                                              NULL, &y.t[s], &err_[s]);
            }
            same_refusal("grouped_experts, offsets out of order", st);
            DEFERRED("grouped_experts, offsets out of order", "grouped_experts", 1,
                     mc_op_grouped_experts(B[1], &x.t[1], &off.t[1], n_e, gt[1], ut[1], dtn[1],
                                           NULL, &y.t[1], &err_[1]));
            snprintf(what, sizeof what, "grouped_experts refused: y untouched (%s H=%d I=%d "
                     "E=%d)", mc_dtype_name(dt), H, I, n_e);
            cmp_pair(what, &y, rtol);
        }
    }
    for (int e = 0; e < n_e; e++) {
        pair_free(&g[e]);
        pair_free(&u[e]);
        pair_free(&d[e]);
        for (int k = 0; scale_block && k < 3; k++)
            pair_free(&sc[3 * e + k]);
    }
    pair *all[] = {&x, &y, &off, &rw};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pair_free(all[i]);
    free(xh);
    free(rwh);
}

static void experts_case_x(mc_dtype dt, int tr, int H, int I, int n_e, const int *rows,
                           int weighting, float limit, double rtol, int uniform, int scale_block)
{
    experts_case_xd(dt, dt, tr, H, I, n_e, rows, weighting, limit, rtol, uniform, scale_block);
}

static void experts_case(mc_dtype dt, int tr, int H, int I, int n_e, const int *rows,
                         int weighting, float limit, double rtol)
{
    experts_case_x(dt, tr, H, I, n_e, rows, weighting, limit, rtol, 0, 0);
}

/* FP8 experts on the per-expert loop with more than 32 rows: cuBLAS on rows
 * widened to BF16 on a GPU (matmul's path), the F32 kernels on the CPU
 * device or with MC_CUDA_FP8=gemv */
static double fp8_many_rtol(void)
{
    const char *f8 = getenv("MC_CUDA_FP8");
    return dut_is_cuda && !(f8 && strcmp(f8, "gemv") == 0) ? 1e-2 : 1e-5;
}

static void test_experts(void)
{
    static const int few[5] = {3, 0, 8, 1, 5}, many[4] = {13, 0, 40, 9};
    static const int one[6] = {1, 0, 1, 1, 0, 1}; /* batch-1 decode: a row per chosen expert */
    /* one intermediate width for all experts (the models' shape): the CUDA
     * backend's grouped launch for element types (BF16 / F32 while <= 8 rows
     * an expert on average), FP8 with 32 x 32 block scales too; 9 rows and
     * more per expert in passes of 8 */
    static const mc_dtype el[] = {MC_DT_F32, MC_DT_F16, MC_DT_BF16, MC_DT_F8_E4M3};
    static const int two[4] = {2, 0, 2, 1}; /* batch-2 decode: the 2-token pass */
    for (size_t i = 0; i < sizeof el / sizeof el[0]; i++) {
        experts_case_x(el[i], 0, 96, 64, 6, one, 0, 0, 1e-5, 1, 0);
        experts_case_x(el[i], 0, 64, 32, 4, two, (int)(i % 3), 0, 1e-5, 1, 0);
        experts_case_x(el[i], 0, 104, 48, 5, few, (int)((i + 1) % 3), i == 2 ? 0.75f : 0.0f,
                       1e-5, 1, 0);
    }
    experts_case_x(MC_DT_F8_E4M3, 0, 96, 64, 5, few, 1, 0, 1e-5, 1, 32);
    experts_case_x(MC_DT_F8_E4M3, 0, 160, 80, 4, many, 2, 0, 1e-5, 1, 32);
    experts_case_x(MC_DT_F16, 0, 72, 40, 4, many, 1, 0, 1e-5, 1, 0);
    /* rows not on 16 bytes (BF16 x 100): the per-expert loop */
    experts_case_x(MC_DT_BF16, 0, 100, 56, 5, few, 0, 0, 1e-5, 1, 0);
    static const mc_dtype types[] = {MC_DT_F32, MC_DT_F16, MC_DT_BF16, MC_DT_F8_E4M3};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        experts_case(types[i], 0, 72, 40, 5, few, (int)(i % 3), i == 3 ? 0.75f : 0.0f, 1e-5);
    experts_case(MC_DT_Q8_0, 0, 96, 64, 5, few, 1, 0, 1e-5);
    experts_case(MC_DT_Q4_K, 0, 256, 256, 5, few, 2, 0, 1e-5);
    experts_case(MC_DT_Q6_K, 0, 256, 256, 5, few, 1, 0, 1e-5);
    /* block formats on the CUDA backend's grouped launch (any rows an expert):
     * batch-1 and batch-2 decode, the weightings, the clamp, 9+ rows in
     * passes of 8, and Q4_K_M's mix of Q4_K gate / up with Q6_K down */
    experts_case_x(MC_DT_Q8_0, 0, 96, 64, 6, one, 0, 0, 1e-5, 1, 0);
    experts_case_x(MC_DT_Q4_K, 0, 256, 256, 6, one, 1, 0, 1e-5, 1, 0);
    experts_case_x(MC_DT_Q6_K, 0, 256, 512, 4, two, 2, 0, 1e-5, 1, 0);
    experts_case_xd(MC_DT_Q4_K, MC_DT_Q6_K, 0, 256, 256, 5, few, 1, 0.75f, 1e-5, 1, 0);
    experts_case_xd(MC_DT_Q4_K, MC_DT_Q8_0, 0, 512, 256, 4, many, 2, 0, 1e-5, 1, 0);
    experts_case_x(MC_DT_Q8_0, 0, 64, 96, 4, many, 2, 0.5f, 1e-5, 1, 0);
    experts_case_xd(MC_DT_Q8_0, MC_DT_Q4_K, 0, 256, 256, 4, few, 0, 0, 1e-5, 1, 0);
    experts_case_xd(MC_DT_Q6_K, MC_DT_Q8_0, 0, 256, 64, 6, one, 2, 0, 1e-5, 1, 0);
    experts_case(MC_DT_BF16, 1, 72, 40, 5, few, 2, 0, 1e-5); /* Llama 4's transposed slabs */
    /* more than 8 rows per expert: cuBLAS for F32 (F32 rounding) and BF16 (activations rounded) */
    experts_case(MC_DT_F32, 0, 72, 40, 4, many, 1, 0, 1e-5);
    experts_case(MC_DT_BF16, 0, 72, 40, 4, many, 1, 0, 1e-2);
    experts_case(MC_DT_Q8_0, 0, 64, 96, 4, many, 0, 0, 1e-5);
    /* FP8 without scales on the loop (widths differ), an expert of 40 rows:
     * cuBLAS on widened rows (GPU), the others the GEMV kernel */
    experts_case(MC_DT_F8_E4M3, 0, 72, 40, 4, many, 2, 0, fp8_many_rtol());
}

int main(void)
{
    rng = 0x9E3779B97F4A7C15ull;
    mc_err_clear(&err_[0]);
    mc_err_clear(&err_[1]);
    int on_cpu = getenv("MC_CUDA_TEST_ON_CPU") && strcmp(getenv("MC_CUDA_TEST_ON_CPU"), "1") == 0;
    mc_status st = on_cpu ? mc_backend_cpu_device_init(&B[1], err_) : mc_backend_cuda_init(0, &B[1], err_);
    if (st == MC_ERR_UNSUPPORTED) {
#ifdef MC_HAVE_CUDA
        printf("test_backend_cuda_layers: skipped: no GPU (%s)\n", err_[0].msg);
#else
        printf("test_backend_cuda_layers: skipped: built without CUDA\n");
#endif
        return 77;
    }
    if (st != MC_OK) {
        fprintf(stderr, "test_backend_cuda_layers: %s\n", err_[0].msg);
        return 1;
    }
    dut_is_cuda = !on_cpu;
    /* content checks deferred (the CUDA default): every op's answer is read
     * at the comparisons' downloads; refusals are compared with the CPU's
     * words at the op, and deferred beside them (deferred_refusal) */
    mc_backend_set_sync_checks(B[1], 0);
    OK(mc_backend_cpu_init(&B[0], err_));
    printf("device under test: %s (%s)\n", mc_backend_name(B[1]), mc_backend_features(B[1]));
    attention_case(5, 6, 2, 40, 24, 0, 0);
    attention_case(16, 4, 4, 64, 64, 0, 1);
    attention_case(5, 8, 1, 33, 17, 64, 1); /* MQA, chunked (Llama 4) */
    mla_case(5, 3, 72, 16, 0, 0);
    mla_case(16, 2, 512, 64, 0, 0);
    mla_case(5, 3, 72, 16, 0, 9);
    mla_case(7, 2, 40, 8, 0, 300); /* more kept entries than a tile */
    indexer_case(5, 4, 24, 7);
    indexer_case(16, 3, 32, 64);
    test_router();
    permute_case(29, 4, 13, 70);
    permute_case(1, 1, 3, 5);
    permute_case(200, 8, 64, 33);
    uint64_t rng_experts = rng;
    test_experts();
    const char *v4 = getenv("MC_CUDA_V4");
    v4_at_op = on_cpu || (v4 && strcmp(v4, "host") == 0);
    test_v4();
    if (!on_cpu) { /* again with the per-expert loop forced (the grouped launch's alternative) */
        mc_backend_free(B[1]);
        setenv("MC_CUDA_EXPERTS", "loop", 1);
        OK(mc_backend_cuda_init(0, &B[1], err_));
        printf("grouped_experts again with MC_CUDA_EXPERTS=loop\n");
        rng = rng_experts; /* the same data: the loop's block-format rows against the launch's */
        twin_pass = 1;
        twin_n = 0;
        test_experts();
    }
    mc_backend_free(B[0]);
    mc_backend_free(B[1]);
    return check_report("test_backend_cuda_layers");
}
