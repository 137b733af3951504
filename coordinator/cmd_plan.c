/* cmd_plan.c - `moecluster plan`: does this model fit this cluster, who
 * holds what, and how fast might it run. Reads only config.json /
 * params.json (and safetensors headers when a directory is given). */
#include "cli.h"
#include "cluster.h"
#include "model_config.h"
#include "plan.h"
#include "safetensors.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The one usage text: printed by --help and on usage errors. */
static const char plan_usage_text[] =
    "usage: moecluster plan --model DIR|CONFIG_FILE [--cluster FILE]\n"
    "                       [--weights bf16|fp8|q8_0|q4_k] [--max-model-len N]\n"
    "                       [--max-num-seqs N] [--json]\n\n"
    "  --model         checkpoint folder, or a config.json / params.json file\n"
    "  --cluster       cluster YAML (cluster-configs/); default: this machine as one CPU rank\n"
    "  --weights       storage format of the linear weights (default bf16)\n"
    "  --max-model-len tokens per sequence (default min(max_position_embeddings, 8192))\n"
    "  --max-num-seqs  concurrent sequences at most (default 256)\n"
    "  --json          print the plan as one JSON object\n\n"
    "The last line, `summary`, tries bf16, fp8, q8_0 and q4_k whatever --weights says and\n"
    "names the best that fits, the KV cache beside it and the decode speed.\n";

static void plan_usage(FILE *out) { fputs(plan_usage_text, out); }

static double gibf(double b) { return b / 1073741824.0; }

static void print_params(const mc_plan *p)
{
    const mc_param_counts *c = &p->params;
    printf("params     %.1f B total, %.1f B active per token (text model, no MTP layers)\n",
           c->total / 1e9, c->active / 1e9);
    printf("           embedding %.2f B, lm_head %.2f B, attention %.2f B, dense %.2f B, shared "
           "experts %.2f B, routed experts %.2f B, routers %.3f B, norms %.4f B\n",
           c->embed / 1e9, c->head / 1e9, c->attn / 1e9, c->dense / 1e9, c->shared / 1e9,
           c->routed / 1e9, c->router / 1e9, c->norms / 1e9);
}

static void print_layout(const mc_plan *p)
{
    const mc_model_desc *d = &p->d;
    const mc_cluster *c = &p->c;
    printf("layout     world %d = pp %d x tp %d x dp %d; ep %d\n", p->world, c->pp, c->tp, c->dp,
           c->ep);
    for (int s = 0; s < c->pp; s++) {
        int a = p->stage_first_layer[s], b = p->stage_first_layer[s + 1];
        int moe = 0;
        for (int l = a; l < b; l++)
            moe += d->layer_moe[l];
        printf("  stage %d: layers %d-%d (%d layers, %d MoE), ranks %d-%d%s%s\n", s, a, b - 1,
               b - a, moe, s * p->ranks_per_stage, (s + 1) * p->ranks_per_stage - 1,
               s == 0 ? ", embedding" : "", s == c->pp - 1 ? ", final norm + LM head" : "");
    }
    if (d->n_experts > 0) {
        int per = d->n_experts / c->ep, extra = d->n_experts % c->ep;
        printf("  experts: %d routed per MoE layer over ep %d -> %d%s per rank", d->n_experts, c->ep,
               per, extra ? "-" : "");
        if (extra)
            printf("%d (ep ranks 0-%d hold one more)", per + 1, extra - 1);
        printf("; ep rank r holds a contiguous range, e.g. rank 0: %d-%d",
               p->ranks[0].expert_begin, p->ranks[0].expert_end - 1);
        if (d->n_shared_experts)
            printf("; shared experts on every rank (tp-split)");
        printf("\n");
    }
    if (c->tp > 1) {
        printf("  tensor parallel %d: %d query heads -> %d per rank", c->tp, d->n_heads,
               d->n_heads / c->tp);
        if (d->attn == MC_ATTN_MLA)
            printf(" (q_b, kv_b column-split, o row-split; q_a, kv_a and the latent cache "
                   "replicated)");
        else
            printf(", %d KV heads -> %s", d->n_kv_heads,
                   d->n_kv_heads >= c->tp ? "split" : "replicated (fewer KV heads than ranks)");
        printf("; dense FFN %d -> %d per rank (gate/up column, down row, one all-reduce); "
               "embedding and LM head vocab-split %d -> %d per rank\n",
               d->dense_inter, (d->dense_inter + c->tp - 1) / c->tp, d->vocab,
               (d->vocab + c->tp - 1) / c->tp);
    }
}

static int same_row(const mc_rank_plan *a, const mc_rank_plan *b)
{
    if (a->stage != b->stage || a->kv_bytes_per_token != b->kv_bytes_per_token)
        return 0;
    for (int k = 0; k < MC_CAT_COUNT; k++)
        if (a->bytes[k] != b->bytes[k])
            return 0;
    return 1;
}

static void print_memory(const mc_plan *p)
{
    printf("memory per rank, GiB (weights as %s, KV cache bf16):\n", mc_wfmt_name(p->o.weights));
    printf("  %-9s %8s %7s %7s %7s %8s %7s %7s %8s %9s %9s %10s %6s\n", "ranks", "emb/head",
           "attn", "dense", "shared", "routed", "other", "scales", "weights", "KV B/tok",
           "KV budget", "KV tokens", "seqs");
    for (int r = 0; r < p->world;) {
        int e = r;
        while (e + 1 < p->world && same_row(&p->ranks[r], &p->ranks[e + 1]))
            e++;
        const mc_rank_plan *rp = &p->ranks[r];
        char ranks[32];
        if (e > r)
            snprintf(ranks, sizeof ranks, "%d-%d", r, e);
        else
            snprintf(ranks, sizeof ranks, "%d", r);
        printf("  %-9s %8.2f %7.2f %7.2f %7.2f %8.2f %7.3f %7.3f %8.2f %9.0f %9.2f %10lld %6lld\n",
               ranks, gibf(rp->bytes[MC_CAT_EMBED_HEAD]), gibf(rp->bytes[MC_CAT_ATTN]),
               gibf(rp->bytes[MC_CAT_DENSE]), gibf(rp->bytes[MC_CAT_SHARED]),
               gibf(rp->bytes[MC_CAT_ROUTED]), gibf(rp->bytes[MC_CAT_OTHER]),
               gibf(rp->bytes[MC_CAT_SCALES]), gibf(rp->weight_bytes), rp->kv_bytes_per_token,
               gibf(rp->kv_budget_bytes), (long long)rp->kv_tokens, (long long)rp->seqs);
        r = e + 1;
    }
    printf("  (budget = %.1f GiB device memory - weights - %.1f GiB workspace; seqs = KV tokens / "
           "%d, at most %d)\n",
           p->c.device.memory_gib, p->c.workspace_gib, p->o.max_model_len, p->o.max_num_seqs);
}

static void print_estimate(const mc_plan *p)
{
    const mc_perf *e = &p->perf;
    printf("estimate   first order, from bytes moved, FLOPs and link traffic (docs/plan.md):\n");
    printf("  decode:  batch %d per replica, %d tokens of context: step %.2f ms (memory %.2f, "
           "compute %.2f, communication %.2f, summed over %d stage%s) -> %.0f tokens/s\n",
           e->batch_per_replica, e->context, e->decode_step_s * 1e3, e->decode_memory_s * 1e3,
           e->decode_compute_s * 1e3, e->decode_comm_s * 1e3, p->c.pp, p->c.pp > 1 ? "s" : "",
           e->decode_tok_s);
    printf("  one sequence alone: step %.2f ms -> %.1f tokens/s\n", e->single_step_s * 1e3,
           e->single_seq_tok_s);
    printf("  prefill: %.0f tokens/s (compute bound at peak)\n", e->prefill_tok_s);
    printf("  traffic per rank and step: %.2f GiB read; all-to-all %.2f MB per MoE layer; TP "
           "all-reduce %.2f MB per layer\n",
           gibf(e->bytes_per_step), e->a2a_bytes_per_layer / 1e6,
           e->allreduce_bytes_per_layer / 1e6);
    /* only the groups that communicate (ep_link / tp_link are "" otherwise) */
    if (*e->ep_link || *e->tp_link) {
        printf("  communication per layer and step:");
        if (*e->ep_link)
            printf(" dispatch + combine %.3f ms per MoE layer over %s%s", e->a2a_s_per_layer * 1e3,
                   e->ep_link, *e->tp_link ? ";" : "");
        if (*e->tp_link)
            printf(" TP all-reduce %.3f ms per layer over %s", e->allreduce_s_per_layer * 1e3,
                   e->tp_link);
        printf("\n");
    }
}

/* "(datasheet)" or "(measured, bench 2026-11-30)" for one figure. */
static const char *fig_src(const mc_cluster *c, int measured, char *buf, size_t n)
{
    if (measured)
        snprintf(buf, n, "(measured, %s %s)", c->measured.source, c->measured.date);
    else
        snprintf(buf, n, "(datasheet)");
    return buf;
}

/* The figures the estimate uses and where each comes from. */
static void print_figures(const mc_cluster *cl, const mc_plan *p)
{
    mc_cluster e;
    mc_cluster_effective(cl, &e);
    const mc_measured *m = &cl->measured;
    char a[96], b[96], c[96], d[96];
    printf("figures    memory bandwidth %g GB/s %s; compute %g TFLOP/s %s %s; link %s %g "
           "GB/s %s",
           e.device.memory_bandwidth_gbs, fig_src(cl, m->memory_bandwidth_gbs > 0, a, sizeof a),
           p->perf.peak_tflops,
           p->o.weights == MC_WFMT_FP8 && e.device.fp8_tflops > 0 ? "fp8" : "bf16",
           fig_src(cl,
                   p->o.weights == MC_WFMT_FP8 && e.device.fp8_tflops > 0 ? m->fp8_tflops > 0
                                                                          : m->bf16_tflops > 0,
                   b, sizeof b),
           e.intra.kind, e.intra.bandwidth_gbs, fig_src(cl, m->intra.bandwidth_gbs > 0, c, sizeof c));
    if (cl->nodes > 1)
        printf("; between nodes %s %g GB/s %s", e.inter.kind, e.inter.bandwidth_gbs,
               fig_src(cl, m->inter.bandwidth_gbs > 0, d, sizeof d));
    printf("\n");
}

/* The one-line answer: the best weight format that fits (bf16, fp8, q8_0,
 * q4_k in order of quality), the KV cache beside it and the decode speed. */
typedef struct {
    int fits;
    mc_wfmt wf;          /* the best format that fits; else the smallest that could be planned */
    double weight_gib;   /* the fullest rank's weights */
    int64_t kv_tokens;   /* tokens of KV cache on the fullest rank (one replica's worth) */
    double tok_s_one;    /* decode tokens/s for one sequence */
    double tok_s_batch;  /* decode tokens/s of the whole cluster at `batch` per replica */
    int batch;
    char line[768];
} plan_summary;

static const char *rate(double t, char *buf, size_t n)
{
    snprintf(buf, n, t < 10 ? "%.1f" : "%.0f", t);
    return buf;
}

/* Fills *s; a layout any format refuses comes back as the error. */
static mc_status summarize(const mc_model_desc *d, const mc_cluster *c, const mc_plan_opts *o,
                           plan_summary *s, mc_err *err)
{
    static const mc_wfmt order[] = {MC_WFMT_BF16, MC_WFMT_FP8, MC_WFMT_Q8_0, MC_WFMT_Q4_K};
    memset(s, 0, sizeof *s);
    mc_plan *last = NULL;
    mc_status st = MC_OK;
    char tried[64] = ""; /* the formats planned, "bf16, fp8, ..." */
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        mc_plan_opts oo = *o;
        oo.weights = order[i];
        mc_plan *q = NULL;
        mc_err e2;
        mc_err_clear(&e2);
        st = mc_plan_build(d, c, &oo, &q, &e2);
        if (st == MC_ERR_UNSUPPORTED) /* DeepSeek-V4 takes BF16 only */
            continue;
        if (st != MC_OK) {
            *err = e2;
            mc_plan_free(last);
            return st;
        }
        mc_plan_free(last);
        last = q;
        size_t tl = strlen(tried);
        snprintf(tried + tl, sizeof tried - tl, "%s%s", tl ? ", " : "", mc_wfmt_name(order[i]));
        if (q->fits)
            break;
    }
    if (!last)
        return mc_err_set(err, MC_ERR_UNSUPPORTED, "no weight format can be planned");
    const mc_rank_plan *w = &last->ranks[last->worst_rank];
    const double g = 1073741824.0;
    char r1[32], r2[32];
    s->fits = last->fits;
    s->wf = last->o.weights;
    s->weight_gib = w->weight_bytes / g;
    s->kv_tokens = w->kv_tokens;
    s->tok_s_one = last->perf.single_seq_tok_s;
    s->tok_s_batch = last->perf.decode_tok_s;
    s->batch = last->perf.batch_per_replica;
    char figs[128];
    if (mc_cluster_has_measured(c))
        snprintf(figs, sizeof figs, "measured figures from %s %s where given, else datasheet",
                 c->measured.source, c->measured.date);
    else
        snprintf(figs, sizeof figs, "datasheet figures");
    if (s->fits)
        snprintf(s->line, sizeof s->line,
                 "FITS at %s (the best of bf16, fp8, q8_0, q4_k that fits): %.1f GiB of weights "
                 "per device, KV cache for %lld tokens (%lld sequences of %d); decode ~%s tok/s "
                 "for one sequence, ~%s tok/s at batch %d (%s)",
                 mc_wfmt_name(s->wf), s->weight_gib, (long long)s->kv_tokens,
                 (long long)(s->kv_tokens / o->max_model_len), o->max_model_len,
                 rate(s->tok_s_one, r1, sizeof r1), rate(s->tok_s_batch, r2, sizeof r2), s->batch,
                 figs);
    else if (w->kv_budget_bytes <= 0 || w->kv_tokens < 1)
        snprintf(s->line, sizeof s->line,
                 "DOES NOT FIT in %s: at %s the fullest device needs %.1f GiB of weights + %.1f "
                 "GiB workspace and has %.1f GiB",
                 tried, mc_wfmt_name(s->wf), s->weight_gib, c->workspace_gib, c->device.memory_gib);
    else
        snprintf(s->line, sizeof s->line,
                 "DOES NOT FIT with %d tokens of context: at %s the weights (%.1f GiB per device) "
                 "leave KV cache for %lld tokens (--max-model-len %lld would fit; decode ~%s "
                 "tok/s for one sequence, %s)",
                 o->max_model_len, mc_wfmt_name(s->wf), s->weight_gib, (long long)s->kv_tokens,
                 (long long)s->kv_tokens, rate(s->tok_s_one, r1, sizeof r1), figs);
    mc_plan_free(last);
    return MC_OK;
}

static json_t *summary_json(const plan_summary *s, const mc_cluster *c, const mc_plan_opts *o)
{
    json_t *j = json_object();
    json_object_set_new(j, "fits", json_boolean(s->fits));
    json_object_set_new(j, "weights", s->fits ? json_string(mc_wfmt_name(s->wf)) : json_null());
    json_object_set_new(j, "tried_weights", json_string(mc_wfmt_name(s->wf)));
    json_object_set_new(j, "weight_gib_per_device", json_real(s->weight_gib));
    json_object_set_new(j, "kv_tokens", json_integer(s->kv_tokens));
    json_object_set_new(j, "max_model_len", json_integer(o->max_model_len));
    json_object_set_new(j, "decode_tok_s_one_sequence", json_real(s->tok_s_one));
    json_object_set_new(j, "decode_tok_s_batch", json_real(s->tok_s_batch));
    json_object_set_new(j, "batch_per_replica", json_integer(s->batch));
    json_object_set_new(j, "figures",
                        json_string(mc_cluster_has_measured(c) ? "measured" : "datasheet"));
    json_object_set_new(j, "line", json_string(s->line));
    return j;
}

/* Sums the safetensors headers of a checkpoint folder (no weights read). */
static void print_checkpoint(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return;
    st_checkpoint *ck = NULL;
    mc_err e;
    mc_err_clear(&e);
    if (st_checkpoint_open(dir, &ck, &e) != MC_OK) {
        printf("checkpoint (could not read the safetensors headers: %s)\n", e.msg);
        return;
    }
    double bytes[MC_DT_COUNT] = {0};
    double total = 0;
    for (size_t i = 0; i < st_checkpoint_count(ck); i++) {
        const st_tensor *t = st_checkpoint_tensor(ck, i);
        bytes[t->dtype] += (double)t->nbytes;
        total += (double)t->nbytes;
    }
    printf("checkpoint %zu tensors, %.2f GiB on disk:", st_checkpoint_count(ck), gibf(total));
    for (int k = 0; k < MC_DT_COUNT; k++)
        if (bytes[k] > 0)
            printf(" %s %.2f GiB", mc_dtype_name((mc_dtype)k), gibf(bytes[k]));
    printf("\n");
    st_checkpoint_close(ck);
}

int mc_cmd_plan(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                          {"cluster", required_argument, 0, 'c'},
                                          {"weights", required_argument, 0, 'w'},
                                          {"max-model-len", required_argument, 0, 'l'},
                                          {"max-num-seqs", required_argument, 0, 's'},
                                          {"json", no_argument, 0, 'j'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
    const char *model = NULL, *cluster = NULL;
    long long max_len = 0, max_seqs = 256;
    int json = 0, c;
    mc_wfmt wf = MC_WFMT_BF16;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'c': cluster = optarg; break;
        case 'w':
            if (mc_wfmt_from_name(optarg, &wf)) {
                fprintf(stderr, "moecluster plan: --weights: '%s' is not one of bf16, fp8, q8_0, q4_k\n",
                        optarg);
                return 2;
            }
            break;
        case 'l':
            if (mc_arg_int("plan", "--max-model-len", optarg, 1, 1 << 30, &max_len))
                return 2;
            break;
        case 's':
            if (mc_arg_int("plan", "--max-num-seqs", optarg, 1, 1 << 24, &max_seqs))
                return 2;
            break;
        case 'j': json = 1; break;
        case 'h': plan_usage(stdout); return 0;
        default: plan_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moecluster plan: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!model) {
        fprintf(stderr, "moecluster plan: --model is required\n");
        plan_usage(stderr);
        return 2;
    }
    mc_err err;
    mc_err_clear(&err);
    mc_model_desc d;
    mc_cluster cl;
    mc_plan *p = NULL;
    if (mc_model_desc_load(model, &d, &err) != MC_OK)
        goto fail;
    if (cluster) {
        if (mc_cluster_load(cluster, &cl, &err) != MC_OK)
            goto fail;
    } else {
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        mc_cluster_single_cpu(&cl, pages > 0 && psz > 0 ? (double)pages * psz / 1073741824.0 : 16);
    }
    mc_plan_opts o = {.weights = wf,
                      .max_model_len = (int)(max_len ? max_len : (d.max_pos < 8192 ? d.max_pos : 8192)),
                      .max_num_seqs = (int)max_seqs,
                      .kv_bytes_per_elem = 2};
    if (mc_plan_build(&d, &cl, &o, &p, &err) != MC_OK)
        goto fail;
    plan_summary sum;
    if (summarize(&d, &cl, &o, &sum, &err) != MC_OK)
        goto fail;
    if (json) {
        json_t *j = mc_plan_to_json(p);
        json_object_set_new(j, "summary", summary_json(&sum, &cl, &o));
        char *s = json_dumps(j, JSON_INDENT(1) | JSON_REAL_PRECISION(10));
        printf("%s\n", s ? s : "{}");
        free(s);
        json_decref(j);
    } else {
        printf("model      %s: %d layers, hidden %d, %d heads (%s), %d routed experts top-%d, "
               "%d shared, vocab %d\n",
               d.model_type, d.n_layers, d.hidden, d.n_heads,
               d.attn == MC_ATTN_MLA ? "MLA" : "GQA", d.n_experts, d.n_experts_per_tok,
               d.n_shared_experts, d.vocab);
        print_params(p);
        print_checkpoint(model);
        printf("cluster    %s: %d node%s x %d %s (%s), %.0f GiB, %.0f GB/s, %.0f bf16 TFLOP/s%s; "
               "links %s %.0f GB/s%s%s\n",
               cl.name, cl.nodes, cl.nodes > 1 ? "s" : "", cl.devices_per_node, cl.device.name,
               cl.backend == MC_BACKEND_CUDA ? "cuda" : "cpu", cl.device.memory_gib,
               cl.device.memory_bandwidth_gbs, cl.device.bf16_tflops,
               cl.device.fp8_tflops > 0 ? "" : "", cl.intra.kind, cl.intra.bandwidth_gbs,
               cl.nodes > 1 ? ", between nodes " : "", cl.nodes > 1 ? cl.inter.kind : "");
        print_figures(&cl, p);
        printf("weights    %s; max-model-len %d, max-num-seqs %d\n", mc_wfmt_name(wf),
               o.max_model_len, o.max_num_seqs);
        print_layout(p);
        print_memory(p);
        printf("verdict    %s\n", p->verdict);
        print_estimate(p);
        printf("summary    %s\n", sum.line);
    }
    mc_plan_free(p);
    return 0;
fail:
    fprintf(stderr, "moecluster plan: %s\n", err.msg);
    mc_plan_free(p);
    return 1;
}
