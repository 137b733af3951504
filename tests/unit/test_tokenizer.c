/* test_tokenizer.c - the byte-level BPE tokenizer (text/tokenizer.h):
 *   - the ByteLevel alphabet: GPT-2's bytes_to_unicode, known characters and
 *     a bijection over the 256 bytes;
 *   - merges on a small hand-made tokenizer: rank order, both merges
 *     formats, ignore_merges, added tokens;
 *   - the Split behaviors (Hugging Face's documented example), invert and
 *     Digits;
 *   - refusals: invalid UTF-8, unknown ids, unsupported types (named);
 *   - encode speed on the longest document of the gpt4-bpe-2k (6000
 *     characters) and DeepSeek-V3 (4000) fixtures, checked against their
 *     golden ids, printed.
 */
#include "check.h"
#include "tokenizer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void test_alphabet(void)
{
    char c[3];
    mc_tok_byte_to_char(' ', c);
    CHECK(!strcmp(c, "\xC4\xA0")); /* U+0120 'Ġ' */
    mc_tok_byte_to_char('\n', c);
    CHECK(!strcmp(c, "\xC4\x8A")); /* U+010A 'Ċ' */
    mc_tok_byte_to_char('a', c);
    CHECK(!strcmp(c, "a"));
    mc_tok_byte_to_char(0xAD, c);
    CHECK(!strcmp(c, "\xC5\x83")); /* U+0143, the last of the 68 moved bytes */
    mc_tok_byte_to_char(0xE9, c);
    CHECK(!strcmp(c, "\xC3\xA9")); /* Latin-1 'é' stands for itself */
    char seen[256][3];
    int distinct = 1;
    for (int b = 0; b < 256; b++) {
        mc_tok_byte_to_char((uint8_t)b, seen[b]);
        for (int k = 0; k < b; k++)
            if (!strcmp(seen[k], seen[b]))
                distinct = 0;
    }
    CHECK(distinct);
}

/* A tokenizer over the 256 byte characters plus `more` (ids 256, 257, ...;
 * NULL-terminated), pre-tokenized by `pre_json` (NULL: GPT-2's ByteLevel). */
static char *small_tokenizer_pre(const char *merges_json, int ignore_merges,
                                 const char *extra_json, const char *pre_json,
                                 const char *const *more)
{
    json_t *vocab = json_object();
    int id = 0;
    for (int b = 0; b < 256; b++) {
        char c[3];
        mc_tok_byte_to_char((uint8_t)b, c);
        json_object_set_new(vocab, c, json_integer(id++));
    }
    for (int i = 0; more[i]; i++)
        json_object_set_new(vocab, more[i], json_integer(id++)); /* 256.. */
    json_t *root = json_pack(
        "{s:o, s:n, s:{s:s, s:o, s:b}, s:o, s:{s:s}, s:{s:s, s:b}}", "added_tokens",
        json_loads(extra_json, 0, NULL), "normalizer", "pre_tokenizer", "type", "ByteLevel",
        "add_prefix_space", json_false(), "use_regex", 1, "model",
        json_pack("{s:s, s:o, s:o, s:b}", "type", "BPE", "vocab", vocab, "merges",
                  json_loads(merges_json, 0, NULL), "ignore_merges", ignore_merges),
        "decoder", "type", "ByteLevel", "post_processor", "type", "ByteLevel", "trim_offsets", 0);
    if (pre_json)
        json_object_set_new(root, "pre_tokenizer", json_loads(pre_json, 0, NULL));
    char *s = json_dumps(root, 0);
    json_decref(root);
    return s;
}

static char *small_tokenizer(const char *merges_json, int ignore_merges, const char *extra_json)
{
    static const char *const more[] = {"ab", "bc", "abc", "Ġa", "Ġab", NULL};
    return small_tokenizer_pre(merges_json, ignore_merges, extra_json, NULL, more);
}

static int encode_is(const mc_tokenizer *t, const char *text, int add, const int32_t *want,
                     size_t n_want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    mc_err err;
    mc_err_clear(&err);
    if (mc_tokenizer_encode(t, text, strlen(text), add, &ids, &n, &err) != MC_OK) {
        fprintf(stderr, "encode '%s': %s\n", text, err.msg);
        return 0;
    }
    int ok = n == n_want && (!n || !memcmp(ids, want, n * sizeof *ids));
    if (!ok) {
        fprintf(stderr, "encode '%s': got", text);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, ", want");
        for (size_t i = 0; i < n_want; i++)
            fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
    }
    free(ids);
    return ok;
}

static mc_tokenizer *load_str(const char *s, mc_err *err)
{
    mc_tokenizer *t = NULL;
    mc_err_clear(err);
    if (!s || mc_tokenizer_load_json(s, strlen(s), "small.json", &t, err) != MC_OK)
        return NULL;
    return t;
}

static void test_merges(void)
{
    mc_err err;
    /* ids: bytes are 0..255 in byte order; ab 256, bc 257, abc 258, Ġa 259, Ġab 260 */
    char *s = small_tokenizer("[\"b c\", \"a b\", \"ab c\", \"Ġ a\", \"Ġa b\"]", 0, "[]");
    mc_tokenizer *t = load_str(s, &err);
    free(s);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "%s\n", err.msg);
        return;
    }
    /* "b c" has the lowest rank: a + bc, and "a bc" is no merge */
    CHECK(encode_is(t, "abc", 0, (int32_t[]){'a', 257}, 2));
    CHECK(encode_is(t, "ab", 0, (int32_t[]){256}, 1));
    /* the GPT-2 regex splits " ab" from "x"; "a b" (rank 1) goes before
     * "Ġ a" (rank 3), and "Ġ ab" is no merge */
    CHECK(encode_is(t, "x ab", 0, (int32_t[]){'x', ' ', 256}, 3));
    CHECK(encode_is(t, "x a", 0, (int32_t[]){'x', 259}, 2));
    CHECK(encode_is(t, "", 0, NULL, 0));
    char *txt = NULL;
    size_t len = 0;
    mc_err_clear(&err);
    CHECK(mc_tokenizer_decode(t, (int32_t[]){'x', 260, 258}, 3, &txt, &len, &err) == MC_OK);
    CHECK(txt && !strcmp(txt, "x ababc"));
    free(txt);
    /* a lone continuation byte decodes to U+FFFD, as from_utf8_lossy */
    mc_err_clear(&err);
    CHECK(mc_tokenizer_decode(t, (int32_t[]){'a', 0x80, 'b'}, 3, &txt, &len, &err) == MC_OK);
    CHECK(txt && !strcmp(txt, "a\xEF\xBF\xBD"
                              "b"));
    free(txt);
    mc_err_clear(&err);
    CHECK(mc_tokenizer_decode(t, (int32_t[]){'a', 9999}, 2, &txt, &len, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "9999") != NULL);
    int32_t *ids = NULL;
    size_t n = 0;
    mc_err_clear(&err);
    CHECK(mc_tokenizer_encode(t, "ok\xC3(", 4, 0, &ids, &n, &err) == MC_ERR_ARG);
    CHECK(strstr(err.msg, "UTF-8") && strstr(err.msg, "offset 2"));
    mc_tokenizer_free(t);

    /* the [a, b] pair format, other ranks: "a b" first, then "ab c" */
    s = small_tokenizer("[[\"a\", \"b\"], [\"b\", \"c\"], [\"ab\", \"c\"]]", 0,
                        "[{\"id\": 261, \"content\": \"<s>\", \"special\": true}]");
    t = load_str(s, &err);
    free(s);
    CHECK(t != NULL);
    if (t) {
        CHECK(encode_is(t, "abc", 0, (int32_t[]){258}, 1));
        /* an added token splits the text before the regex sees it */
        CHECK(encode_is(t, "a<s>bc", 0, (int32_t[]){'a', 261, 257}, 3));
        CHECK(mc_tokenizer_token_id(t, "<s>") == 261 && mc_tokenizer_token_id(t, "Ġab") == 260);
        mc_tokenizer_free(t);
    }
    /* ignore_merges: a piece that is a token is taken whole ("abc" has no
     * merge path here: only "b c") */
    s = small_tokenizer("[\"b c\"]", 1, "[]");
    t = load_str(s, &err);
    free(s);
    CHECK(t != NULL);
    if (t) {
        CHECK(encode_is(t, "abc", 0, (int32_t[]){258}, 1));
        CHECK(encode_is(t, "abcc", 0, (int32_t[]){'a', 257, 'c'}, 3));
        mc_tokenizer_free(t);
    }
    /* a merge of unknown tokens is refused, naming the entry */
    s = small_tokenizer("[\"a b\", \"q zz\"]", 0, "[]");
    CHECK(load_str(s, &err) == NULL && strstr(err.msg, "merges[1]"));
    free(s);
}

/* Split behaviors and Digits. With ignore_merges and every expected piece in
 * the vocabulary, each piece comes out as one id, so the ids show the
 * pieces. Expected pieces: Hugging Face's SplitDelimiterBehavior docs
 * ("the-final--countdown" split at "-"). */
static void test_split_behaviors(void)
{
    static const char *const more[] = {"the",    "final", "countdown", "--",    "the-",
                                       "final-", "-final", "-countdown", "12",   "345",
                                       NULL}; /* ids 256.. */
    enum { THE = 256, FINAL, COUNTDOWN, DD, THE_, FINAL_, _FINAL, _COUNTDOWN, N12, N345 };
    static const struct {
        const char *behavior;
        int invert;
        int32_t want[8];
        size_t n;
    } cases[] = {
        {"Removed", 0, {THE, FINAL, COUNTDOWN}, 3},
        {"Isolated", 0, {THE, '-', FINAL, '-', '-', COUNTDOWN}, 6},
        {"MergedWithPrevious", 0, {THE_, FINAL_, '-', COUNTDOWN}, 4},
        {"MergedWithNext", 0, {THE, _FINAL, '-', _COUNTDOWN}, 4},
        {"Contiguous", 0, {THE, '-', FINAL, DD, COUNTDOWN}, 5},
        /* inverted, the pattern says what to keep: the dashes are removed */
        {"Removed", 1, {THE, FINAL, COUNTDOWN}, 3},
        {"Isolated", 1, {THE, '-', FINAL, DD, COUNTDOWN}, 5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char pre[512];
        snprintf(pre, sizeof pre,
                 "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                 "\"pattern\": {\"%s\": \"%s\"}, \"behavior\": \"%s\", \"invert\": %s}, "
                 "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": "
                 "false}]}",
                 cases[i].invert ? "Regex" : "String", cases[i].invert ? "[a-z]+" : "-",
                 cases[i].behavior, cases[i].invert ? "true" : "false");
        char *s = small_tokenizer_pre("[]", 1, "[]", pre, more);
        mc_err err;
        mc_tokenizer *t = load_str(s, &err);
        free(s);
        CHECK(t != NULL);
        if (!t) {
            fprintf(stderr, "%s: %s\n", cases[i].behavior, err.msg);
            continue;
        }
        int ok = encode_is(t, "the-final--countdown", 0, cases[i].want, cases[i].n);
        CHECK(ok);
        if (!ok)
            fprintf(stderr, "  behavior %s, invert %d\n", cases[i].behavior, cases[i].invert);
        mc_tokenizer_free(t);
    }
    /* Digits: runs of digits (Contiguous), or one per digit */
    for (int ind = 0; ind < 2; ind++) {
        char pre[256];
        snprintf(pre, sizeof pre,
                 "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", "
                 "\"individual_digits\": %s}, {\"type\": \"ByteLevel\", \"use_regex\": false}]}",
                 ind ? "true" : "false");
        char *s = small_tokenizer_pre("[]", 1, "[]", pre, more);
        mc_err err;
        mc_tokenizer *t = load_str(s, &err);
        free(s);
        CHECK(t != NULL);
        if (!t)
            continue;
        if (ind)
            CHECK(encode_is(t, "the12", 0, (int32_t[]){THE, '1', '2'}, 3));
        else
            CHECK(encode_is(t, "the12", 0, (int32_t[]){THE, N12}, 2));
        mc_tokenizer_free(t);
    }
}

/* Normalizers: NFC composes e + U+0301 into U+00E9 (bytes C3 A9),
 * Replace and Prepend edit the text before the pre-tokenizer. */
static void test_normalizers(void)
{
    static const char *const more[] = {NULL};
    static const struct {
        const char *norm, *text;
        int32_t want[6];
        size_t n;
    } cases[] = {
        {"{\"type\": \"NFC\"}", "e\xCC\x81", {0xC3, 0xA9}, 2},
        {"{\"type\": \"NFD\"}", "\xC3\xA9", {'e', 0xCC, 0x81}, 3},
        {"{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Replace\", \"pattern\": "
         "{\"String\": \"a\"}, \"content\": \"xy\"}, {\"type\": \"Prepend\", \"prepend\": "
         "\"_\"}]}",
         "bab",
         {'_', 'b', 'x', 'y', 'b'},
         5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *s = small_tokenizer_pre(
            "[]", 0, "[]",
            "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}",
            more);
        json_t *root = json_loads(s, 0, NULL);
        free(s);
        json_object_set_new(root, "normalizer", json_loads(cases[i].norm, 0, NULL));
        s = json_dumps(root, 0);
        json_decref(root);
        mc_err err;
        mc_tokenizer *t = load_str(s, &err);
        free(s);
        CHECK(t != NULL);
        if (!t) {
            fprintf(stderr, "normalizer case %zu: %s\n", i, err.msg);
            continue;
        }
        CHECK(encode_is(t, cases[i].text, 0, cases[i].want, cases[i].n));
        mc_tokenizer_free(t);
    }
}

static void test_refusals(void)
{
    static const struct {
        const char *json, *needle;
    } cases[] = {
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "WordPiece"},
        {"{\"normalizer\": {\"type\": \"Lowercase\"}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"},"
         " \"decoder\": {\"type\": \"ByteLevel\"},"
         " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         "Lowercase"},
        {"{\"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"decoder\": {\"type\": \"ByteLevel\"},"
         " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         "Metaspace"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"Metaspace\"},"
         " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         "Metaspace"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"},"
         " \"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"a\": 0},"
         " \"merges\": []}}",
         "byte_fallback"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"},"
         " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999}, \"merges\": []}}",
         "id must be"},
        {"{\"model\": ", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mc_err err;
        mc_tokenizer *t = load_str(cases[i].json, &err);
        CHECK(t == NULL);
        int named = strstr(err.msg, cases[i].needle) && strstr(err.msg, "small.json");
        CHECK(named);
        if (!named)
            fprintf(stderr, "case %zu: '%s' lacks '%s'\n", i, err.msg, cases[i].needle);
        mc_tokenizer_free(t);
    }
}

/* Encodes the fixture's longest golden text, checks it, prints tokens/s. */
static void test_speed(const char *fixtures, const char *name, int cases_key)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/%s/golden.json", fixtures, name);
    json_t *g = json_load_file(path, 0, NULL);
    json_t *cases = cases_key ? json_object_get(g, "cases") : g;
    json_t *doc = NULL;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        size_t l = json_string_length(json_object_get(c, "text"));
        if (l >= 4000 && (!doc || l > json_string_length(json_object_get(doc, "text"))))
            doc = c;
    }
    CHECK(doc != NULL);
    snprintf(path, sizeof path, "%s/tokenizers/%s", fixtures, name);
    mc_tokenizer *t = NULL;
    mc_err err;
    mc_err_clear(&err);
    CHECK(mc_tokenizer_load(path, &t, &err) == MC_OK);
    if (!doc || !t) {
        fprintf(stderr, "%s: %s\n", name, err.msg);
        json_decref(g);
        mc_tokenizer_free(t);
        return;
    }
    const char *text = json_string_value(json_object_get(doc, "text"));
    json_t *want = json_object_get(doc, "ids");
    int reps = 50;
    int32_t *ids = NULL;
    size_t n = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < reps; r++) {
        free(ids);
        mc_tokenizer_encode(t, text, strlen(text), 0, &ids, &n, &err);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = ((double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec)) / reps;
    int same = n == json_array_size(want);
    for (size_t k = 0; same && k < n; k++)
        same = ids[k] == json_integer_value(json_array_get(want, k));
    CHECK(same);
    printf("%s: encode of the %zu-byte document: %zu tokens in %.3f ms, %.0f tokens/s\n", name,
           strlen(text), n, s * 1e3, (double)n / s);
    free(ids);
    mc_tokenizer_free(t);
    json_decref(g);
}

int main(int argc, char **argv)
{
    const char *fixtures = argc > 1 ? argv[1] : getenv("MC_FIXTURES");
    test_alphabet();
    test_merges();
    test_split_behaviors();
    test_normalizers();
    test_refusals();
    if (fixtures) {
        test_speed(fixtures, "gpt4-bpe-2k", 0);
        test_speed(fixtures, "deepseek-v3", 1);
    }
    return check_report("test_tokenizer");
}
