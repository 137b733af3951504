/* fuzz_driver.c - a main() for fuzz targets in builds without libFuzzer.
 *
 *   fuzz_driver [-runs=N] [-seed=S] [-text] [-artifact=FILE] FILE_OR_DIR...
 *
 * Runs LLVMFuzzerTestOneInput on every given file (directories are read
 * recursively), then on N deterministic mutations of them (default 5000).
 * By default mutations know the safetensors framing: most edit the JSON
 * header text (bytes, numbers, dtype names, spans) and then store its new
 * length, so the reader gets past the framing checks; the rest edit raw
 * bytes. With -text the whole input is a text (a config.json, a YAML file):
 * most mutations make the same text edits with JSON and YAML tokens. Each
 * input is copied into an exactly sized heap block, so a sanitized build
 * catches reads past its end. Exits 0 when every input ran. To keep the
 * input that crashed, run again with -artifact=FILE: every input is written
 * to FILE just before it runs. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    uint8_t *p;
    size_t n;
} blob;

static blob *seeds;
static size_t n_seeds, cap_seeds;

#define FUZZ_MAX_INPUT (1u << 20)

static void add_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "fuzz_driver: cannot open %s\n", path);
        return;
    }
    uint8_t *buf = malloc(FUZZ_MAX_INPUT);
    size_t n = buf ? fread(buf, 1, FUZZ_MAX_INPUT, fp) : 0;
    fclose(fp);
    if (!buf)
        return;
    uint8_t *fit = realloc(buf, n ? n : 1);
    if (fit)
        buf = fit;
    if (n_seeds == cap_seeds) {
        size_t nc = cap_seeds ? 2 * cap_seeds : 64;
        blob *ns = realloc(seeds, nc * sizeof *ns);
        if (!ns) {
            free(buf);
            return;
        }
        seeds = ns;
        cap_seeds = nc;
    }
    seeds[n_seeds].p = buf;
    seeds[n_seeds].n = n;
    n_seeds++;
}

static void add_path(const char *path, int depth)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "fuzz_driver: %s does not exist\n", path);
        return;
    }
    if (!S_ISDIR(sb.st_mode)) {
        add_file(path);
        return;
    }
    if (depth > 4)
        return;
    DIR *d = opendir(path);
    if (!d)
        return;
    /* sorted, so the mutation sequence does not depend on readdir order */
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char **nn = realloc(names, (n + 1) * sizeof *nn);
        if (!nn)
            break;
        names = nn;
        names[n] = strdup(de->d_name);
        if (names[n])
            n++;
    }
    closedir(d);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (size_t i = 0; i < n; i++) {
        char sub[4096];
        int len = snprintf(sub, sizeof sub, "%s/%s", path, names[i]);
        if (len < 0 || (size_t)len >= sizeof sub)
            fprintf(stderr, "fuzz_driver: path too long, skipped: %s/%s\n", path, names[i]);
        else
            add_path(sub, depth + 1);
        free(names[i]);
    }
    free(names);
}

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t next(void)
{
    uint64_t x = rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng = x;
    return x * 0x2545f4914f6cdd1dull;
}
static size_t below(size_t n) { return n ? (size_t)(next() % n) : 0; }

/* A growable byte string. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf_t;

static int reserve(buf_t *b, size_t n)
{
    if (n <= b->cap)
        return 1;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < n)
        nc *= 2;
    uint8_t *np = realloc(b->p, nc);
    if (!np)
        return 0;
    b->p = np;
    b->cap = nc;
    return 1;
}

/* Replaces b[at, at+len) by src[0, sn). */
static void splice(buf_t *b, size_t at, size_t len, const void *src, size_t sn)
{
    if (at > b->n)
        at = b->n;
    if (len > b->n - at)
        len = b->n - at;
    if (b->n - len + sn > FUZZ_MAX_INPUT || !reserve(b, b->n - len + sn))
        return;
    memmove(b->p + at + sn, b->p + at + len, b->n - at - len);
    if (sn)
        memcpy(b->p + at, src, sn);
    b->n = b->n - len + sn;
}

static const char *const numbers[] = {
    "0", "1", "-1", "2", "7", "8", "255", "256", "1024", "65536", "4294967295", "4294967296",
    "9223372036854775807", "-9223372036854775808", "18446744073709551615",
    "99999999999999999999", "1e3", "1.5", "-0", "104857600", "104857601", "3037000500"};
static const char *const tokens[] = {
    "\"F32\"", "\"F16\"", "\"BF16\"", "\"F8_E4M3\"", "\"I64\"", "\"I32\"", "\"U8\"", "\"F64\"",
    "\"Q9\"", "\"\"", "[]", "[0]", "[0,0]", "[1,1,1,1,1,1,1,1,1]", "{}", "null", "true",
    "\"__metadata__\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"", ",", ":", "{", "}", "[",
    "]", "\"", "\\u0000", "\xff", " "};

static const char *const text_tokens[] = {
    "null", "true", "false", "{}", "[]", "[", "]", "{", "}", ",", ":", "\"", "\"\"", "-1", "0",
    "1e999", "NaN", "\"model_type\"", "\"num_hidden_layers\"", "\"hidden_size\"",
    "\"num_experts\"", "\"rope_scaling\"", "\"moe\"", "\"yarn\"", "\\u0000", "\xff", "\xc3",
    " ", "\n", "\n- ", ": ", "---\n", "...\n", "~", "# ", "&a ", "*a", "!!str ", "? ", "'",
    "|\n  ", ">\n  ", "\t", "%YAML 1.1\n", "parallel: {tp: 0}\n", "nodes: 2\n", ".nan",
    ".inf", "0x10", "1.5", "2147483648"};

static const char *const *tok = tokens;
static size_t n_tok = sizeof tokens / sizeof tokens[0];
static int text_mode;

/* One edit of the JSON header text (or, with -text, of the whole input). */
static void mutate_header(buf_t *h)
{
    switch (below(8)) {
    case 0: /* replace a number by an interesting one */
    case 1: {
        size_t start = below(h->n + 1), i = start;
        while (i < h->n && !(h->p[i] >= '0' && h->p[i] <= '9'))
            i++;
        if (i == h->n)
            break;
        size_t j = i;
        while (j < h->n && h->p[j] >= '0' && h->p[j] <= '9')
            j++;
        if (i > 0 && h->p[i - 1] == '-')
            i--;
        const char *s = numbers[below(sizeof numbers / sizeof numbers[0])];
        splice(h, i, j - i, s, strlen(s));
        break;
    }
    case 2: { /* nudge a number by a small amount (off-by-one spans) */
        size_t i = below(h->n + 1);
        while (i < h->n && !(h->p[i] >= '0' && h->p[i] <= '9'))
            i++;
        size_t j = i;
        long long v = 0;
        while (j < h->n && h->p[j] >= '0' && h->p[j] <= '9' && j - i < 15)
            v = v * 10 + (h->p[j++] - '0');
        if (j == i)
            break;
        char s[32];
        snprintf(s, sizeof s, "%lld", v + (long long)below(9) - 4);
        splice(h, i, j - i, s, strlen(s));
        break;
    }
    case 3: { /* insert or overwrite with a token */
        const char *s = tok[below(n_tok)];
        size_t at = below(h->n + 1);
        splice(h, at, below(2) ? 0 : below(8), s, strlen(s));
        break;
    }
    case 4: /* delete a span */
        if (h->n)
            splice(h, below(h->n), 1 + below(16), NULL, 0);
        break;
    case 5: { /* duplicate a span (duplicate keys, extra entries) */
        if (!h->n)
            break;
        size_t a = below(h->n), len = 1 + below(h->n - a < 64 ? h->n - a : 64);
        uint8_t tmp[64];
        memcpy(tmp, h->p + a, len);
        splice(h, below(h->n + 1), 0, tmp, len);
        break;
    }
    case 6: /* flip a bit */
        if (h->n)
            h->p[below(h->n)] ^= (uint8_t)(1u << below(8));
        break;
    default: /* pad with trailing spaces */
        splice(h, h->n, 0, "        ", 1 + below(8));
        break;
    }
}

/* Builds one mutated input from seed s into out. */
static void mutate(const blob *s, buf_t *out)
{
    out->n = 0;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0 && s->n >= 8; i--)
        hlen = (hlen << 8) | s->p[i];
    int framed = s->n >= 8 && hlen <= s->n - 8;
    if (text_mode && below(8) != 0) {
        if (!reserve(out, s->n + 1))
            return;
        if (s->n)
            memcpy(out->p, s->p, s->n);
        out->n = s->n;
        for (size_t k = 1 + below(4); k > 0; k--)
            mutate_header(out);
        return;
    }
    if (framed && below(8) != 0) {
        /* header-aware: edit the JSON, keep (or tweak) the data region */
        buf_t h = {0};
        if (!reserve(&h, (size_t)hlen + 1))
            return;
        memcpy(h.p, s->p + 8, (size_t)hlen);
        h.n = (size_t)hlen;
        for (size_t k = 1 + below(3); k > 0; k--)
            mutate_header(&h);
        size_t dlen = s->n - 8 - (size_t)hlen;
        const uint8_t *dp = s->p + 8 + hlen;
        switch (below(6)) {
        case 0: dlen = below(dlen + 1); break;           /* truncate the data */
        case 1: dlen += 1 + below(16); dp = NULL; break; /* extend with zeros */
        default: break;
        }
        uint64_t stored = h.n;
        switch (below(16)) {
        case 0: stored = h.n + 1 + below(8); break;
        case 1: stored = h.n ? h.n - 1 : 0; break;
        case 2: stored = next(); break;
        default: break;
        }
        if (reserve(out, 8 + h.n + dlen)) {
            for (int i = 0; i < 8; i++)
                out->p[i] = (uint8_t)(stored >> (8 * i));
            if (h.n)
                memcpy(out->p + 8, h.p, h.n);
            if (dp)
                memcpy(out->p + 8 + h.n, dp, dlen);
            else {
                size_t have = s->n - 8 - (size_t)hlen, cp = have < dlen ? have : dlen;
                memcpy(out->p + 8 + h.n, s->p + 8 + hlen, cp);
                memset(out->p + 8 + h.n + cp, 0, dlen - cp);
            }
            out->n = 8 + h.n + dlen;
        }
        free(h.p);
        return;
    }
    /* raw byte edits */
    if (!reserve(out, s->n + 64))
        return;
    memcpy(out->p, s->p, s->n);
    out->n = s->n;
    for (size_t k = 1 + below(4); k > 0; k--) {
        switch (below(5)) {
        case 0:
            if (out->n)
                out->p[below(out->n)] ^= (uint8_t)(1u << below(8));
            break;
        case 1:
            if (out->n)
                out->p[below(out->n)] = (uint8_t)next();
            break;
        case 2:
            out->n = below(out->n + 1);
            break;
        case 3: /* splice in the tail of another seed */
            if (n_seeds) {
                const blob *o = &seeds[below(n_seeds)];
                size_t from = below(o->n + 1);
                splice(out, below(out->n + 1), out->n, o->p + from, o->n - from);
            }
            break;
        default: { /* overwrite the length field */
            static const uint64_t lens[] = {0, 1, 2, 8, 104857600, 104857601, UINT64_MAX,
                                            UINT64_MAX - 7, 1ull << 63};
            uint64_t v = below(2) ? lens[below(sizeof lens / sizeof lens[0])]
                                  : (out->n > 8 ? out->n - 8 - below(3) : next());
            for (int i = 0; i < 8 && (size_t)i < out->n; i++)
                out->p[i] = (uint8_t)(v >> (8 * i));
            break;
        }
        }
    }
}

static const char *artifact; /* -artifact=FILE: each input is written there first */

static void run_one(const uint8_t *p, size_t n)
{
    if (artifact) {
        FILE *fp = fopen(artifact, "wb");
        if (fp) {
            if (n)
                fwrite(p, 1, n, fp);
            fclose(fp);
        }
    }
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact)
        return;
    if (n)
        memcpy(exact, p, n);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
}

int main(int argc, char **argv)
{
    long runs = 5000;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "-runs=", 6))
            runs = strtol(argv[i] + 6, NULL, 10);
        else if (!strncmp(argv[i], "-artifact=", 10))
            artifact = argv[i] + 10;
        else if (!strcmp(argv[i], "-text")) {
            text_mode = 1;
            tok = text_tokens;
            n_tok = sizeof text_tokens / sizeof text_tokens[0];
        } else if (!strncmp(argv[i], "-seed=", 6))
            rng = strtoull(argv[i] + 6, NULL, 10) | 1;
        else
            add_path(argv[i], 0);
    }
    if (n_seeds == 0) {
        fprintf(stderr,
                "fuzz_driver: no inputs (usage: %s [-runs=N] [-seed=S] [-text] [-artifact=FILE] "
                "FILE_OR_DIR...)\n",
                argv[0]);
        return 1;
    }
    for (size_t i = 0; i < n_seeds; i++)
        run_one(seeds[i].p, seeds[i].n);
    buf_t m = {0};
    for (long r = 0; r < runs; r++) {
        mutate(&seeds[(size_t)r % n_seeds], &m);
        run_one(m.p, m.n);
    }
    free(m.p);
    for (size_t i = 0; i < n_seeds; i++)
        free(seeds[i].p);
    free(seeds);
    printf("fuzz_driver: %zu seeds and %ld mutations ran without a finding\n", n_seeds, runs);
    return 0;
}
