/* tok_bpe.c - the ByteLevel alphabet, the vocabulary and merge maps, and the
 * BPE merge loop.
 *
 * The merge loop is Hugging Face's: every adjacent pair with a merge goes
 * into a min-heap ordered by (rank, position); the lowest is merged, and the
 * pairs it forms with its neighbours are pushed. Stale heap entries (a side
 * already merged away) are skipped when popped. O(n log n) per piece.
 */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 (0x00-0x20, 0x7F-0xA0, 0xAD) are 256, 257, ... in byte order. */
static uint32_t byte_cp(uint8_t b)
{
    if (b <= 0x20)
        return 256u + b;
    if (b >= 0x7F && b <= 0xA0)
        return 256u + 33 + (b - 0x7Fu);
    if (b == 0xAD)
        return 256u + 67;
    return b;
}

void mc_tok_byte_to_char(uint8_t b, char out[3])
{
    uint32_t cp = byte_cp(b);
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

int tok_char_to_byte(uint32_t cp)
{
    if (cp < 256)
        return cp <= 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD ? -1 : (int)cp;
    uint32_t n = cp - 256;
    return n < 33 ? (int)n : n < 67 ? (int)(0x7F + n - 33) : n == 67 ? 0xAD : -1;
}

size_t mc_utf8_len(const unsigned char *s, size_t avail)
{
    if (!avail)
        return 0;
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

long tok_bytelevel_decode(const char *s, size_t n, char *out)
{
    const unsigned char *u = (const unsigned char *)s;
    long o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = mc_utf8_len(u + i, n - i);
        if (!k)
            return -1;
        uint32_t cp = k == 1   ? u[i]
                      : k == 2 ? ((u[i] & 0x1Fu) << 6) | (u[i + 1] & 0x3Fu)
                               : 0x110000;
        int b = tok_char_to_byte(cp);
        if (b < 0)
            return -1;
        out[o++] = (char)b;
        i += k;
    }
    return o;
}

/* FNV-1a */
uint32_t tok_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

int32_t tok_vocab_find(const mc_tokenizer *t, const char *s, size_t n)
{
    if (!t->vocab.slots)
        return -1;
    for (uint32_t i = tok_hash(s, n) & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
        int32_t id = t->vocab.slots[i];
        if (id < 0)
            return -1;
        if (t->tok_len[id] == n && !memcmp(t->pool + t->tok_off[id], s, n))
            return id;
    }
}

static uint32_t pair_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (uint32_t)k;
}

/* rank of the merge of (a, b), or -1; *merged gets the id it makes */
static int32_t pair_find(const tok_pairmap *m, int32_t a, int32_t b, int32_t *merged)
{
    if (!m->keys)
        return -1;
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint32_t i = pair_hash(k) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == UINT64_MAX)
            return -1;
        if (m->keys[i] == k) {
            *merged = m->merged[i];
            return m->rank[i];
        }
    }
}

void tok_pair_insert(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t j = pair_hash(k) & m->mask;
    while (m->keys[j] != UINT64_MAX && m->keys[j] != k)
        j = (j + 1) & m->mask;
    if (m->keys[j] == k)
        return;
    m->keys[j] = k;
    m->rank[j] = rank;
    m->merged[j] = merged;
}

mc_status tok_push_id(int32_t id, int32_t **ids, size_t *n_ids, size_t *cap, mc_err *err)
{
    if (*n_ids == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        int32_t *p = realloc(*ids, nc * sizeof *p);
        if (!p)
            return mc_err_set(err, MC_ERR_NOMEM, "tokenizer: out of memory for %zu ids", nc);
        *ids = p;
        *cap = nc;
    }
    (*ids)[(*n_ids)++] = id;
    return MC_OK;
}

typedef struct {
    int32_t rank, left, right; /* symbol indices */
    int32_t idl, idr;          /* their ids when pushed (stale check) */
} heap_ent;

static int heap_less(const heap_ent *a, const heap_ent *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->left < b->left;
}

static void heap_push(heap_ent *h, size_t *n, heap_ent e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n)
{
    heap_ent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

static void push_pair(const mc_tokenizer *t, heap_ent *h, size_t *nh, const int32_t *sid, int32_t l,
                      int32_t r)
{
    int32_t merged;
    int32_t rank = pair_find(&t->merges, sid[l], sid[r], &merged);
    if (rank >= 0)
        heap_push(h, nh, (heap_ent){rank, l, r, sid[l], sid[r]});
}

#define BPE_STACK 128

mc_status tok_bpe_piece(const mc_tokenizer *t, const char *s, size_t n, int32_t **ids,
                        size_t *n_ids, size_t *cap, mc_err *err)
{
    if (!n)
        return MC_OK;
    if (t->ignore_merges) {
        int32_t id = tok_vocab_find(t, s, n);
        if (id >= 0)
            return tok_push_id(id, ids, n_ids, cap, err);
    }
    if (n > (size_t)INT32_MAX / 2)
        return mc_err_set(err, MC_ERR_ARG, "tokenizer: a piece of %zu bytes is too long", n);
    /* symbols: one per byte to begin with; bytes without a token are
     * dropped, as Hugging Face does without an unk token */
    int32_t st_id[BPE_STACK], st_prev[BPE_STACK], st_next[BPE_STACK];
    heap_ent st_heap[2 * BPE_STACK];
    int32_t *sid = st_id, *prev = st_prev, *next = st_next;
    heap_ent *heap = st_heap;
    void *blk = NULL;
    mc_status st = MC_OK;
    if (n > BPE_STACK) {
        /* 3 int32 per symbol + one heap entry per adjacent pair (the heap
         * never holds more than n - 1 + merges <= 2n entries) */
        blk = mc_malloc_n(n, 3 * sizeof(int32_t) + 2 * sizeof(heap_ent));
        if (!blk)
            return mc_err_set(err, MC_ERR_NOMEM, "tokenizer: out of memory for a %zu-byte piece",
                              n);
        heap = blk;
        sid = (int32_t *)(heap + 2 * n);
        prev = sid + n;
        next = prev + n;
    }
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[(uint8_t)s[i]];
        if (id < 0)
            continue;
        sid[m] = id;
        prev[m] = m - 1;
        next[m] = m + 1;
        m++;
    }
    if (m)
        next[m - 1] = -1;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < m; i++)
        push_pair(t, heap, &nh, sid, i, i + 1);
    while (nh) {
        heap_ent e = heap_pop(heap, &nh);
        if (sid[e.left] != e.idl || next[e.left] != e.right || sid[e.right] != e.idr)
            continue; /* stale */
        int32_t merged;
        if (pair_find(&t->merges, e.idl, e.idr, &merged) < 0)
            continue;
        sid[e.left] = merged;
        sid[e.right] = -1;
        int32_t nx = next[e.right];
        next[e.left] = nx;
        if (nx >= 0)
            prev[nx] = e.left;
        if (prev[e.left] >= 0)
            push_pair(t, heap, &nh, sid, prev[e.left], e.left);
        if (nx >= 0)
            push_pair(t, heap, &nh, sid, e.left, nx);
    }
    for (int32_t i = 0; i >= 0 && i < m; i = next[i])
        if ((st = tok_push_id(sid[i], ids, n_ids, cap, err)) != MC_OK)
            break;
    free(blk);
    return st;
}
