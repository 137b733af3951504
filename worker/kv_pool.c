/* kv_pool.c - block ids of the paged KV cache (kv_pool.h).
 *
 * Free blocks are a stack (free_ids[0 .. n_free-1]); a fresh pool hands out
 * 0, 1, 2, ... Sequences are records in a dense array (seqs[0 .. n_seqs-1])
 * found through an open-addressing index keyed by seq id (linear probing,
 * backward-shift deletion, load factor at most 1/2). owner[b] is the record
 * index + 1 of the sequence holding block b, 0 when b is free; it lets
 * mc_kv_pool_verify() check the two views against each other.
 */
#include "kv_pool.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t id;
    uint32_t n, cap;
    uint32_t *blocks; /* (n) the table */
} kv_seq;

struct mc_kv_pool {
    uint32_t n_blocks, block_size;
    uint32_t n_free;
    uint32_t *free_ids; /* (n_blocks) stack of free ids, top at n_free - 1 */
    uint32_t *owner;    /* (n_blocks) record index + 1, 0 = free */
    kv_seq *seqs;       /* (cap_seqs) */
    uint32_t n_seqs, cap_seqs;
    uint32_t *index;    /* (index_cap) record index + 1, 0 = empty slot */
    uint32_t index_cap; /* power of two */
};

static uint32_t hash_id(uint64_t id, uint32_t cap)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdull;
    id ^= id >> 33;
    return (uint32_t)id & (cap - 1);
}

/* Slot of seq id in the index, or the empty slot where it would go. */
static uint32_t index_slot(const mc_kv_pool *p, uint64_t id)
{
    uint32_t s = hash_id(id, p->index_cap);
    while (p->index[s] && p->seqs[p->index[s] - 1].id != id)
        s = (s + 1) & (p->index_cap - 1);
    return s;
}

static kv_seq *find_seq(const mc_kv_pool *p, uint64_t id)
{
    uint32_t s = index_slot(p, id);
    return p->index[s] ? &p->seqs[p->index[s] - 1] : NULL;
}

/* Removes slot s from the index, shifting the probe chain after it back. */
static void index_remove(mc_kv_pool *p, uint32_t s)
{
    uint32_t mask = p->index_cap - 1;
    uint32_t hole = s;
    for (uint32_t j = (s + 1) & mask; p->index[j]; j = (j + 1) & mask) {
        uint32_t home = hash_id(p->seqs[p->index[j] - 1].id, p->index_cap);
        /* j's entry may move to the hole when its home is not in (hole, j] */
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            p->index[hole] = p->index[j];
            hole = j;
        }
    }
    p->index[hole] = 0;
}

static mc_status index_grow(mc_kv_pool *p, mc_err *err)
{
    uint32_t cap = p->index_cap * 2;
    uint32_t *idx = calloc(cap, sizeof *idx);
    if (!idx)
        return mc_err_set(err, MC_ERR_NOMEM, "kv pool: out of memory for %u sequences", cap / 2);
    free(p->index);
    p->index = idx;
    p->index_cap = cap;
    for (uint32_t r = 0; r < p->n_seqs; r++)
        p->index[index_slot(p, p->seqs[r].id)] = r + 1;
    return MC_OK;
}

mc_status mc_kv_pool_init(mc_kv_pool **out, uint32_t n_blocks, uint32_t block_size, mc_err *err)
{
    if (!out)
        return mc_err_set(err, MC_ERR_ARG, "mc_kv_pool_init: out is NULL");
    *out = NULL;
    if (n_blocks < 1 || n_blocks > MC_KV_POOL_MAX_BLOCKS || block_size < 1)
        return mc_err_set(err, MC_ERR_ARG,
                          "kv pool: %u blocks of %u tokens (blocks 1..%u, block size >= 1)",
                          n_blocks, block_size, MC_KV_POOL_MAX_BLOCKS);
    mc_kv_pool *p = calloc(1, sizeof *p);
    if (!p)
        return mc_err_set(err, MC_ERR_NOMEM, "kv pool: out of memory");
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    p->free_ids = malloc((size_t)n_blocks * sizeof *p->free_ids);
    p->owner = calloc(n_blocks, sizeof *p->owner);
    p->index_cap = 16;
    p->index = calloc(p->index_cap, sizeof *p->index);
    if (!p->free_ids || !p->owner || !p->index) {
        mc_kv_pool_free(p);
        return mc_err_set(err, MC_ERR_NOMEM, "kv pool: out of memory for %u blocks", n_blocks);
    }
    for (uint32_t i = 0; i < n_blocks; i++)
        p->free_ids[i] = n_blocks - 1 - i;
    p->n_free = n_blocks;
    *out = p;
    return MC_OK;
}

void mc_kv_pool_free(mc_kv_pool *p)
{
    if (!p)
        return;
    for (uint32_t r = 0; r < p->n_seqs; r++)
        free(p->seqs[r].blocks);
    free(p->seqs);
    free(p->index);
    free(p->owner);
    free(p->free_ids);
    free(p);
}

uint32_t mc_kv_pool_block_size(const mc_kv_pool *p) { return p->block_size; }
uint32_t mc_kv_pool_n_blocks(const mc_kv_pool *p) { return p->n_blocks; }
uint32_t mc_kv_pool_n_free(const mc_kv_pool *p) { return p->n_free; }
uint32_t mc_kv_pool_n_used(const mc_kv_pool *p) { return p->n_blocks - p->n_free; }
uint32_t mc_kv_pool_n_seqs(const mc_kv_pool *p) { return p->n_seqs; }

uint64_t mc_kv_pool_blocks_for(const mc_kv_pool *p, uint64_t tokens)
{
    return tokens / p->block_size + (tokens % p->block_size != 0);
}

uint64_t mc_kv_pool_blocks_needed(const mc_kv_pool *p, uint64_t seq_id, uint64_t tokens)
{
    const kv_seq *s = find_seq(p, seq_id);
    uint64_t want = mc_kv_pool_blocks_for(p, tokens), have = s ? s->n : 0;
    return want > have ? want - have : 0;
}

bool mc_kv_pool_can_admit(const mc_kv_pool *p, uint64_t tokens)
{
    return mc_kv_pool_blocks_for(p, tokens) <= p->n_free;
}

mc_status mc_kv_pool_reserve(mc_kv_pool *p, uint64_t seq_id, uint64_t tokens, mc_err *err)
{
    if (!p)
        return mc_err_set(err, MC_ERR_ARG, "mc_kv_pool_reserve: pool is NULL");
    kv_seq *s = find_seq(p, seq_id);
    uint64_t want = mc_kv_pool_blocks_for(p, tokens), have = s ? s->n : 0;
    if (want <= have)
        return MC_OK;
    uint64_t more = want - have;
    if (more > p->n_free)
        return mc_err_set(err, MC_ERR_NOMEM,
                          "kv pool: sequence %llu needs %llu more blocks for %llu tokens, %u of "
                          "%u blocks free",
                          (unsigned long long)seq_id, (unsigned long long)more,
                          (unsigned long long)tokens, p->n_free, p->n_blocks);

    /* make room in every structure first, so nothing below can fail */
    if (!s) {
        if (2 * (p->n_seqs + 1) > p->index_cap) {
            mc_status st = index_grow(p, err);
            if (st != MC_OK)
                return st;
        }
        if (p->n_seqs == p->cap_seqs) {
            uint32_t cap = p->cap_seqs ? 2 * p->cap_seqs : 8;
            kv_seq *ns = realloc(p->seqs, cap * sizeof *ns);
            if (!ns)
                return mc_err_set(err, MC_ERR_NOMEM, "kv pool: out of memory for %u sequences",
                                  cap);
            p->seqs = ns;
            p->cap_seqs = cap;
        }
    }
    uint32_t cap = s ? s->cap : 0;
    uint32_t *blocks = s ? s->blocks : NULL;
    if (want > cap) {
        uint64_t nc = cap ? cap : 4;
        while (nc < want)
            nc *= 2;
        blocks = realloc(blocks, nc * sizeof *blocks);
        if (!blocks)
            return mc_err_set(err, MC_ERR_NOMEM,
                              "kv pool: out of memory for a table of %llu blocks",
                              (unsigned long long)nc);
        cap = (uint32_t)nc;
    }
    if (!s) {
        uint32_t r = p->n_seqs++;
        s = &p->seqs[r];
        s->id = seq_id;
        s->n = 0;
        p->index[index_slot(p, seq_id)] = r + 1;
    }
    s->blocks = blocks;
    s->cap = cap;
    uint32_t rec = (uint32_t)(s - p->seqs) + 1;
    while (s->n < want) {
        uint32_t b = p->free_ids[--p->n_free];
        p->owner[b] = rec;
        s->blocks[s->n++] = b;
    }
    return MC_OK;
}

mc_status mc_kv_pool_release(mc_kv_pool *p, uint64_t seq_id, mc_err *err)
{
    if (!p)
        return mc_err_set(err, MC_ERR_ARG, "mc_kv_pool_release: pool is NULL");
    uint32_t slot = index_slot(p, seq_id);
    if (!p->index[slot])
        return mc_err_set(err, MC_ERR_NOT_FOUND, "kv pool: sequence %llu holds no blocks",
                          (unsigned long long)seq_id);
    uint32_t r = p->index[slot] - 1;
    kv_seq *s = &p->seqs[r];
    for (uint32_t j = s->n; j-- > 0;) { /* reversed: the next reserve reuses them in order */
        p->owner[s->blocks[j]] = 0;
        p->free_ids[p->n_free++] = s->blocks[j];
    }
    free(s->blocks);
    index_remove(p, slot);
    uint32_t last = p->n_seqs - 1;
    if (r != last) { /* move the last record into the gap */
        p->seqs[r] = p->seqs[last];
        p->index[index_slot(p, p->seqs[r].id)] = r + 1;
        for (uint32_t j = 0; j < p->seqs[r].n; j++)
            p->owner[p->seqs[r].blocks[j]] = r + 1;
    }
    p->n_seqs = last;
    return MC_OK;
}

const uint32_t *mc_kv_pool_table(const mc_kv_pool *p, uint64_t seq_id, uint32_t *n_blocks)
{
    const kv_seq *s = find_seq(p, seq_id);
    if (n_blocks)
        *n_blocks = s ? s->n : 0;
    return s ? s->blocks : NULL;
}

mc_status mc_kv_pool_verify(const mc_kv_pool *p, mc_err *err)
{
    uint64_t held = 0;
    for (uint32_t r = 0; r < p->n_seqs; r++) {
        const kv_seq *s = &p->seqs[r];
        if (find_seq(p, s->id) != s)
            return mc_err_set(err, MC_ERR_INTERNAL, "kv pool: sequence %llu not indexed",
                              (unsigned long long)s->id);
        for (uint32_t j = 0; j < s->n; j++)
            if (s->blocks[j] >= p->n_blocks || p->owner[s->blocks[j]] != r + 1)
                return mc_err_set(err, MC_ERR_INTERNAL,
                                  "kv pool: block %u of sequence %llu owned by record %u",
                                  s->blocks[j], (unsigned long long)s->id,
                                  s->blocks[j] < p->n_blocks ? p->owner[s->blocks[j]] : 0);
        held += s->n;
    }
    for (uint32_t i = 0; i < p->n_free; i++)
        if (p->free_ids[i] >= p->n_blocks || p->owner[p->free_ids[i]] != 0)
            return mc_err_set(err, MC_ERR_INTERNAL, "kv pool: free block %u is owned",
                              p->free_ids[i]);
    if (held + p->n_free != p->n_blocks)
        return mc_err_set(err, MC_ERR_INTERNAL, "kv pool: %llu blocks held + %u free != %u blocks",
                          (unsigned long long)held, p->n_free, p->n_blocks);
    return MC_OK; /* owner[] marks exactly `held` blocks, each free id is unowned and the
                   * counts add up, so no block is both free and held, or free twice */
}

mc_status mc_kv_block_bytes(const mc_model_desc *d, int layer, int tp, uint32_t block_size,
                            uint32_t elem_bytes, uint64_t *bytes, mc_err *err)
{
    if (!d || !bytes)
        return mc_err_set(err, MC_ERR_ARG, "mc_kv_block_bytes: NULL argument");
    *bytes = 0;
    if (layer < 0 || layer >= d->n_layers || tp < 1 || block_size < 1 || elem_bytes < 1)
        return mc_err_set(err, MC_ERR_ARG,
                          "kv block bytes: layer %d of %d, tp %d, block size %u, %u bytes per "
                          "element",
                          layer, d->n_layers, tp, block_size, elem_bytes);
    uint64_t elems;
    if (d->family == MC_FAM_DEEPSEEK_V4) {
        /* the step executor's V4 pages (worker/step_v4.c), per position:
         * the window K=V row; HCA / CSA: the compressor's kv and gate
         * inputs (W = hd, CSA 2 hd) and the entry slot (hd); CSA: the
         * indexer's kv and gate inputs (2 id each) and key slot (id) */
        uint64_t hd = (uint64_t)d->head_dim, id = (uint64_t)d->v4.index_head_dim;
        int kind = d->v4.layer_attn[layer];
        elems = hd;
        if (kind == MC_V4_ATTN_HCA)
            elems += 3 * hd;
        else if (kind == MC_V4_ATTN_CSA)
            elems += 5 * hd + 5 * id;
    } else if (d->attn == MC_ATTN_MLA)
        elems = (uint64_t)d->kv_lora_rank + d->qk_rope_dim +
                (d->index_topk > 0 ? (uint64_t)d->index_head_dim : 0);
    else
        elems = 2 * (uint64_t)((d->n_kv_heads + tp - 1) / tp) * d->head_dim;
    *bytes = elems * elem_bytes * block_size;
    return MC_OK;
}
