/* test_kv_pool.c - the paged KV block pool: counts after alloc and free,
 * running out (an error, the pool unchanged), admission, and random
 * reserve/release runs checked against an independent model of who holds
 * which block (no block handed out twice, tables grow by exactly the blocks
 * needed). Block bytes per layer against hand-computed sizes. */
#include "check.h"
#include "kv_pool.h"

#include <stdlib.h>
#include <string.h>

static void test_counts(void)
{
    mc_kv_pool *p = NULL;
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_kv_pool_init(&p, 10, 4, &err) == MC_OK);
    if (!p)
        return;
    CHECK(mc_kv_pool_n_free(p) == 10 && mc_kv_pool_n_used(p) == 0);
    CHECK(mc_kv_pool_blocks_for(p, 0) == 0 && mc_kv_pool_blocks_for(p, 1) == 1);
    CHECK(mc_kv_pool_blocks_for(p, 4) == 1 && mc_kv_pool_blocks_for(p, 5) == 2);
    CHECK(mc_kv_pool_can_admit(p, 40) && !mc_kv_pool_can_admit(p, 41));

    CHECK(mc_kv_pool_reserve(p, 7, 9, &err) == MC_OK); /* 3 blocks */
    uint32_t n = 0;
    const uint32_t *t = mc_kv_pool_table(p, 7, &n);
    CHECK(t && n == 3);
    if (t && n == 3)
        CHECK(t[0] == 0 && t[1] == 1 && t[2] == 2);
    CHECK(mc_kv_pool_n_used(p) == 3 && mc_kv_pool_n_free(p) == 7 && mc_kv_pool_n_seqs(p) == 1);
    CHECK(mc_kv_pool_blocks_needed(p, 7, 12) == 0);
    CHECK(mc_kv_pool_blocks_needed(p, 7, 13) == 1);
    CHECK(mc_kv_pool_blocks_needed(p, 8, 13) == 4);
    CHECK(mc_kv_pool_reserve(p, 7, 5, &err) == MC_OK); /* never shrinks */
    mc_kv_pool_table(p, 7, &n);
    CHECK(n == 3);

    /* running out: an error naming the sequence, nothing changed */
    CHECK(mc_kv_pool_reserve(p, 8, 28, &err) == MC_OK); /* 7 blocks: pool full */
    CHECK(mc_kv_pool_n_free(p) == 0 && !mc_kv_pool_can_admit(p, 1) && mc_kv_pool_can_admit(p, 0));
    mc_err_clear(&err);
    CHECK(mc_kv_pool_reserve(p, 9, 1, &err) == MC_ERR_NOMEM);
    CHECK(strstr(err.msg, "sequence 9") && strstr(err.msg, "0 of 10 blocks free"));
    CHECK(!strchr(err.msg, '\n'));
    mc_err_clear(&err);
    CHECK(mc_kv_pool_reserve(p, 7, 13, &err) == MC_ERR_NOMEM);
    CHECK(strstr(err.msg, "sequence 7 needs 1 more blocks"));
    CHECK(mc_kv_pool_table(p, 9, &n) == NULL && n == 0);
    mc_kv_pool_table(p, 7, &n);
    CHECK(n == 3 && mc_kv_pool_n_seqs(p) == 2);
    mc_err_clear(&err);
    CHECK(mc_kv_pool_verify(p, &err) == MC_OK);

    /* release: blocks come back and are reused */
    CHECK(mc_kv_pool_release(p, 7, &err) == MC_OK);
    CHECK(mc_kv_pool_n_free(p) == 3 && mc_kv_pool_n_seqs(p) == 1);
    mc_err_clear(&err);
    CHECK(mc_kv_pool_release(p, 7, &err) == MC_ERR_NOT_FOUND && strstr(err.msg, "sequence 7"));
    CHECK(mc_kv_pool_reserve(p, 9, 12, &err) == MC_OK);
    t = mc_kv_pool_table(p, 9, &n);
    CHECK(t && n == 3);
    if (t && n == 3)
        CHECK(t[0] == 0 && t[1] == 1 && t[2] == 2);
    CHECK(mc_kv_pool_verify(p, &err) == MC_OK);
    mc_kv_pool_free(p);

    mc_err_clear(&err);
    p = (mc_kv_pool *)1;
    CHECK(mc_kv_pool_init(&p, 0, 4, &err) == MC_ERR_ARG && p == NULL);
    CHECK(mc_kv_pool_init(&p, 4, 0, &err) == MC_ERR_ARG && p == NULL);
}

/* xorshift64*, so the run is the same everywhere */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 33) % n;
}

/* Model: holder[b] = seq index + 1 or 0, len[s] = tokens reserved. */
enum { N_BLOCKS = 64, N_SEQS = 40, N_OPS = 20000 };

static void test_random(uint32_t block_size)
{
    mc_kv_pool *p = NULL;
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_kv_pool_init(&p, N_BLOCKS, block_size, &err) == MC_OK);
    if (!p)
        return;
    int holder[N_BLOCKS] = {0};
    uint64_t len[N_SEQS] = {0};
    uint32_t nblk[N_SEQS] = {0};
    int live[N_SEQS] = {0};
    int mismatches = 0;
    for (int op = 0; op < N_OPS && mismatches < 5; op++) {
        uint32_t s = rnd(N_SEQS);
        uint64_t id = 1000003ull * s + 17; /* spread ids over the hash */
        int used = 0;
        for (int b = 0; b < N_BLOCKS; b++)
            used += holder[b] != 0;
        if (rnd(4) == 0) {
            mc_err_clear(&err);
            mc_status st = mc_kv_pool_release(p, id, &err);
            if (st != (live[s] ? MC_OK : MC_ERR_NOT_FOUND)) {
                fprintf(stderr, "op %d: release of %u gave %d (%s)\n", op, s, (int)st, err.msg);
                mismatches++;
            }
            for (int b = 0; b < N_BLOCKS; b++)
                if (holder[b] == (int)s + 1)
                    holder[b] = 0;
            live[s] = 0;
            len[s] = 0;
            nblk[s] = 0;
        } else {
            uint64_t tokens = len[s] + 1 + rnd(3 * block_size);
            uint32_t want = (uint32_t)((tokens + block_size - 1) / block_size);
            uint32_t more = want > nblk[s] ? want - nblk[s] : 0;
            int fits = used + (int)more <= N_BLOCKS;
            CHECK(mc_kv_pool_blocks_needed(p, id, tokens) == more);
            mc_err_clear(&err);
            mc_status st = mc_kv_pool_reserve(p, id, tokens, &err);
            if (st != (fits ? MC_OK : MC_ERR_NOMEM)) {
                fprintf(stderr, "op %d: reserve %u +%u blocks (%d used) gave %d (%s)\n", op, s,
                        more, used, (int)st, err.msg);
                mismatches++;
            }
            if (st == MC_OK) {
                uint32_t n = 0;
                const uint32_t *t = mc_kv_pool_table(p, id, &n);
                if (!t || n != want) {
                    fprintf(stderr, "op %d: seq %u has %u blocks, want %u\n", op, s, n, want);
                    mismatches++;
                } else {
                    for (uint32_t j = nblk[s]; j < n; j++) { /* the new ones must be free */
                        if (t[j] >= N_BLOCKS || holder[t[j]]) {
                            fprintf(stderr, "op %d: block %u handed out twice\n", op, t[j]);
                            mismatches++;
                        } else {
                            holder[t[j]] = (int)s + 1;
                        }
                    }
                    for (uint32_t j = 0; j < n; j++) /* and the old ones still ours */
                        if (t[j] >= N_BLOCKS || holder[t[j]] != (int)s + 1)
                            mismatches++;
                }
                live[s] = 1;
                len[s] = tokens;
                nblk[s] = want;
            }
        }
        used = 0;
        for (int b = 0; b < N_BLOCKS; b++)
            used += holder[b] != 0;
        if (mc_kv_pool_n_used(p) != (uint32_t)used) {
            fprintf(stderr, "op %d: pool says %u used, model %d\n", op, mc_kv_pool_n_used(p), used);
            mismatches++;
        }
        mc_err_clear(&err);
        if (op % 97 == 0 && mc_kv_pool_verify(p, &err) != MC_OK) {
            fprintf(stderr, "op %d: %s\n", op, err.msg);
            mismatches++;
        }
    }
    CHECK(mismatches == 0);
    int n_live = 0;
    for (int s = 0; s < N_SEQS; s++)
        n_live += live[s];
    CHECK(mc_kv_pool_n_seqs(p) == (uint32_t)n_live);
    mc_kv_pool_free(p);
}

static void test_block_bytes(void)
{
    mc_err err;
    mc_err_clear(&err);
    mc_model_desc d;
    memset(&d, 0, sizeof d);
    d.n_layers = 4;
    d.attn = MC_ATTN_MLA;
    d.kv_lora_rank = 512;
    d.qk_rope_dim = 64;
    d.family = MC_FAM_DEEPSEEK_V3;
    uint64_t b = 0;
    /* DeepSeek-V3: (512 + 64) * 2 bytes * 16 tokens, the same on every TP rank */
    CHECK(mc_kv_block_bytes(&d, 0, 8, 16, 2, &b, &err) == MC_OK && b == 18432);
    d.family = MC_FAM_DEEPSEEK_V32;
    d.index_topk = 2048;
    d.index_head_dim = 128; /* + the indexer key */
    CHECK(mc_kv_block_bytes(&d, 3, 1, 16, 2, &b, &err) == MC_OK && b == (512 + 64 + 128) * 32);
    d.family = MC_FAM_QWEN3_MOE; /* GQA: 4 KV heads of 128 over tp 8: 1 head per rank */
    d.attn = MC_ATTN_GQA;
    d.n_kv_heads = 4;
    d.head_dim = 128;
    CHECK(mc_kv_block_bytes(&d, 1, 8, 16, 2, &b, &err) == MC_OK && b == 2 * 128 * 2 * 16);
    CHECK(mc_kv_block_bytes(&d, 1, 2, 1, 4, &b, &err) == MC_OK && b == 2 * 2 * 128 * 4);
    CHECK(mc_kv_block_bytes(&d, 4, 1, 16, 2, &b, &err) == MC_ERR_ARG && b == 0);
    d.family = MC_FAM_DEEPSEEK_V4; /* the step executor's V4 pages, the same on every TP rank */
    d.v4.index_head_dim = 64;
    d.v4.layer_attn[0] = MC_V4_ATTN_SLIDING; /* window K=V row */
    d.v4.layer_attn[1] = MC_V4_ATTN_HCA;     /* + compressor kv, gate inputs, entry */
    d.v4.layer_attn[2] = MC_V4_ATTN_CSA;     /* + 2 x 2hd inputs, entry, 2 x 2id indexer inputs, key */
    CHECK(mc_kv_block_bytes(&d, 0, 1, 16, 2, &b, &err) == MC_OK && b == 128 * 2 * 16);
    CHECK(mc_kv_block_bytes(&d, 1, 8, 16, 2, &b, &err) == MC_OK && b == 4 * 128 * 2 * 16);
    CHECK(mc_kv_block_bytes(&d, 2, 1, 16, 2, &b, &err) == MC_OK &&
          b == (6 * 128 + 5 * 64) * 2 * 16);
}

int main(void)
{
    test_counts();
    test_random(1);
    test_random(4);
    test_random(16);
    test_block_bytes();
    return check_report("test_kv_pool");
}
