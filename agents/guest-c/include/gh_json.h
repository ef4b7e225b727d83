/* gh_json.h - a small, bounded JSON parser and compact writer (libguestha).
 *
 * Parses one JSON text (RFC 8259) into a flat node array allocated once, with
 * one node per value at most, so memory is O(input length). Strict, as
 * docs/protocol.md 4.3 requires: invalid UTF-8 (a byte-order mark is not
 * skipped), raw control characters in strings, escaped lone surrogates, NaN /
 * Infinity, integer literals beyond +-(2^53-1), other numbers that overflow a
 * double, duplicate object keys (compared after unescaping) and nesting
 * deeper than max_depth (the outermost container is depth 1) are errors.
 *
 * The writer produces the protocol's "compact encoding" (docs/protocol.md 1.2):
 * no whitespace, raw UTF-8, only '"', '\\' and U+0000..U+001F escaped, floats
 * as Python's repr(). Sizes of JSON values are measured with it.
 */
#ifndef GH_JSON_H
#define GH_JSON_H

#include <stddef.h>

/* Largest integer literal magnitude accepted: 2^53 - 1 (docs/protocol.md 4.3). */
#define GJ_MAX_SAFE_INT 9007199254740991LL

typedef enum {
    GJ_NULL, GJ_FALSE, GJ_TRUE, GJ_INT, GJ_FLOAT, GJ_STRING, GJ_ARRAY, GJ_OBJECT
} gj_type;

typedef struct gj_node {
    gj_type type;
    struct gj_node *next;   /* next element / member of the parent */
    struct gj_node *child;  /* first element / member (array, object) */
    const char *key;        /* member key (decoded UTF-8), NULL outside objects */
    size_t key_len;
    const char *str;        /* string: decoded UTF-8; number: its literal text */
    size_t len;
    size_t nchars;          /* string: length in code points */
    int has_ctrl;           /* string: holds U+0000..U+001F */
    long long ival;         /* integer value, within +-GJ_MAX_SAFE_INT */
    double dval;            /* float value */
} gj_node;

typedef struct {
    gj_node *nodes;
    size_t count, cap;
    char *buf;              /* decoded strings */
    size_t buf_used;
    const char *error;      /* static text when parsing failed */
    gj_node *root;
} gj_doc;

/* Parse text[0..len) into doc (which the caller frees with gj_free, also on
 * failure). Returns 0, or -1 with doc->error set. */
int gj_parse(gj_doc *doc, const char *text, size_t len, int max_depth);
void gj_free(gj_doc *doc);

/* Member `key` of object `obj`, or NULL. */
const gj_node *gj_get(const gj_node *obj, const char *key);
/* 1 if n is a string equal to s. */
int gj_streq(const gj_node *n, const char *s);

/* A bounded output buffer. p == NULL only counts (len grows, nothing stored). */
typedef struct {
    char *p;
    size_t len, cap;
    int overflow;
} gj_buf;

void gj_put(gj_buf *b, const char *s, size_t n);
void gj_puts(gj_buf *b, const char *s);
void gj_put_string(gj_buf *b, const char *s, size_t n); /* quoted, escaped */
void gj_put_int(gj_buf *b, long long v);
void gj_put_value(gj_buf *b, const gj_node *n);          /* compact encoding */
size_t gj_compact_size(const gj_node *n);
/* Nesting depth of n: 0 for a scalar, 1 for an array or object of scalars. */
int gj_depth(const gj_node *n);
/* Deep equality (object member order ignored, ints/floats by value). */
int gj_equal(const gj_node *a, const gj_node *b);

/* UTF-8 helpers: number of code points of valid UTF-8, or (size_t)-1. */
size_t gj_utf8_chars(const char *s, size_t n);

#endif
