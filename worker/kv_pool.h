/* kv_pool.h - the paged KV cache's block pool: which block ids are free and
 * which sequence holds which.
 *
 * The cache is cut into n_blocks fixed-size blocks of block_size tokens
 * each. A sequence owns a block table: block j of it holds positions
 * j * block_size .. (j + 1) * block_size - 1. mc_kv_pool_reserve() grows a
 * sequence's table as it needs room for more tokens; mc_kv_pool_release()
 * gives all its blocks back. Admission: a scheduler asks
 * mc_kv_pool_can_admit() / mc_kv_pool_blocks_needed() before it puts a
 * sequence (or a longer chunk of one) into a step.
 *
 * The pool manages ids only. The memory behind a block, per layer and per
 * cache kind, is laid out by the step executor; mc_kv_block_bytes() says how
 * many bytes one block of one layer takes.
 *
 * Running out is an error value (MC_ERR_NOMEM, one line: which sequence,
 * how many blocks it needed, how many were free), never a crash; a failed
 * reserve changes nothing.
 *
 * Ownership: mc_kv_pool_init() returns a pool the caller releases with
 * mc_kv_pool_free(). Tables returned by mc_kv_pool_table() are borrowed and
 * valid until the next reserve or release of any sequence.
 */
#ifndef MC_KV_POOL_H
#define MC_KV_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "model_config.h"
#include "status.h"

typedef struct mc_kv_pool mc_kv_pool;

/* Largest pool (blocks); block ids fit in uint32 with room to spare. */
#define MC_KV_POOL_MAX_BLOCKS (1u << 30)

/* n_blocks in 1..MC_KV_POOL_MAX_BLOCKS, block_size >= 1 (else MC_ERR_ARG). */
mc_status mc_kv_pool_init(mc_kv_pool **out, uint32_t n_blocks, uint32_t block_size, mc_err *err);
void mc_kv_pool_free(mc_kv_pool *pool); /* NULL is fine */

uint32_t mc_kv_pool_block_size(const mc_kv_pool *pool);
uint32_t mc_kv_pool_n_blocks(const mc_kv_pool *pool);
uint32_t mc_kv_pool_n_free(const mc_kv_pool *pool);
uint32_t mc_kv_pool_n_used(const mc_kv_pool *pool); /* n_blocks - n_free */
uint32_t mc_kv_pool_n_seqs(const mc_kv_pool *pool); /* sequences holding a table */

/* Blocks that hold `tokens` positions: ceil(tokens / block_size). */
uint64_t mc_kv_pool_blocks_for(const mc_kv_pool *pool, uint64_t tokens);

/* Blocks still to be taken for seq_id to hold `tokens` positions (0 when its
 * table already covers them; a sequence not in the pool has none yet). */
uint64_t mc_kv_pool_blocks_needed(const mc_kv_pool *pool, uint64_t seq_id, uint64_t tokens);

/* True when a new sequence of `tokens` positions fits in the free blocks. */
bool mc_kv_pool_can_admit(const mc_kv_pool *pool, uint64_t tokens);

/* Grows seq_id's block table (adding the sequence if new) until it covers
 * `tokens` positions; never shrinks it. All or nothing: when fewer blocks
 * are free than needed, MC_ERR_NOMEM naming the sequence and the counts,
 * and the pool is unchanged. */
mc_status mc_kv_pool_reserve(mc_kv_pool *pool, uint64_t seq_id, uint64_t tokens, mc_err *err);

/* Gives every block of seq_id back and forgets the sequence.
 * MC_ERR_NOT_FOUND for a sequence the pool does not hold. */
mc_status mc_kv_pool_release(mc_kv_pool *pool, uint64_t seq_id, mc_err *err);

/* seq_id's block table (*n_blocks entries) or NULL (and 0) when unknown. */
const uint32_t *mc_kv_pool_table(const mc_kv_pool *pool, uint64_t seq_id, uint32_t *n_blocks);

/* Internal consistency, for tests: every block is either free (listed once)
 * or in exactly one table, and the counts agree. MC_ERR_INTERNAL otherwise. */
mc_status mc_kv_pool_verify(const mc_kv_pool *pool, mc_err *err);

/* Bytes of one block (block_size tokens) of layer `layer`'s cache on one rank
 * of a tp-way tensor-parallel group, elem_bytes per cached element, summed
 * over the layer's cache kinds:
 *   GQA (Qwen3, Llama 4 incl. chunked layers, Mistral):
 *       K and V, 2 * ceil(n_kv_heads / tp) * head_dim
 *   MLA (DeepSeek-V3, V3.2): latent + rope key, kv_lora_rank + qk_rope_dim,
 *       the same on every TP rank, + index_head_dim for the V3.2 indexer keys
 *   DeepSeek-V4 (the step executor's pages, the same on every TP rank):
 *       sliding-window layers head_dim; HCA 4 * head_dim (window row,
 *       compressor kv + gate inputs, entry); CSA 6 * head_dim +
 *       5 * index_head_dim (window row, compressor inputs 2 * 2 head_dim,
 *       entry, indexer inputs 2 * 2 index_head_dim, key). A layer
 * out of range, tp < 1 or elem_bytes < 1 is MC_ERR_ARG. */
mc_status mc_kv_block_bytes(const mc_model_desc *d, int layer, int tp, uint32_t block_size,
                            uint32_t elem_bytes, uint64_t *bytes, mc_err *err);

#endif
