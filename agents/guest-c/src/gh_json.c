/* gh_json.c - see gh_json.h. Recursive descent, depth bounded by the caller. */
#include "gh_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *s;
    size_t pos, len;
    gj_doc *doc;
    int max_depth;
} parser;

static int fail(parser *p, const char *why)
{
    if (!p->doc->error)
        p->doc->error = why;
    return -1;
}

static gj_node *new_node(parser *p, gj_type t)
{
    gj_node *n;
    if (p->doc->count >= p->doc->cap) {
        fail(p, "too many values");
        return NULL;
    }
    n = &p->doc->nodes[p->doc->count++];
    memset(n, 0, sizeof(*n));
    n->type = t;
    return n;
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. Strict:
 * no overlongs, no encoded surrogates, nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n, unsigned long *cp)
{
    unsigned char c = s[0];
    size_t need, i;
    unsigned long v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) { need = 1; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < need + 1)
        return 0;
    for (i = 1; i <= need; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return need + 1;
}

size_t gj_utf8_chars(const char *s, size_t n)
{
    size_t i = 0, chars = 0, k;
    unsigned long cp;
    while (i < n) {
        k = utf8_seq((const unsigned char *)s + i, n - i, &cp);
        if (!k)
            return (size_t)-1;
        i += k;
        chars++;
    }
    return chars;
}

static void put_utf8(char *out, size_t *o, unsigned long cp)
{
    if (cp < 0x80) {
        out[(*o)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*o)++] = (char)(0xC0 | (cp >> 6));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xE0 | (cp >> 12));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*o)++] = (char)(0xF0 | (cp >> 18));
        out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static int hex4(parser *p, unsigned long *v)
{
    size_t i;
    *v = 0;
    if (p->pos + 4 > p->len)
        return fail(p, "truncated \\u escape");
    for (i = 0; i < 4; i++) {
        unsigned char c = p->s[p->pos++];
        int d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return fail(p, "invalid \\u escape");
        *v = (*v << 4) | (unsigned long)d;
    }
    return 0;
}

/* Parse a string at p->pos (the opening quote); decoded into doc->buf. */
static int parse_string(parser *p, const char **out, size_t *out_len, size_t *nchars,
                        int *has_ctrl)
{
    char *dst = p->doc->buf + p->doc->buf_used;
    size_t o = 0, chars = 0;
    int ctrl = 0;
    p->pos++; /* opening quote */
    for (;;) {
        unsigned long cp;
        unsigned char c;
        if (p->pos >= p->len)
            return fail(p, "unterminated string");
        c = p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20)
            return fail(p, "control character in string");
        if (c == '\\') {
            unsigned char e;
            if (p->pos + 1 >= p->len)
                return fail(p, "unterminated string");
            e = p->s[p->pos + 1];
            p->pos += 2;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = 8; break;
            case 'f': cp = 12; break;
            case 'n': cp = 10; break;
            case 'r': cp = 13; break;
            case 't': cp = 9; break;
            case 'u':
                if (hex4(p, &cp))
                    return -1;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned long lo;
                    if (p->pos + 2 > p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                        return fail(p, "lone surrogate");
                    p->pos += 2;
                    if (hex4(p, &lo))
                        return -1;
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return fail(p, "lone surrogate");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return fail(p, "lone surrogate");
                }
                break;
            default:
                return fail(p, "invalid escape");
            }
            if (cp < 0x20)
                ctrl = 1;
            put_utf8(dst, &o, cp);
        } else {
            size_t k = utf8_seq(p->s + p->pos, p->len - p->pos, &cp);
            if (!k)
                return fail(p, "invalid UTF-8");
            memcpy(dst + o, p->s + p->pos, k);
            o += k;
            p->pos += k;
        }
        chars++;
    }
    *out = dst;
    *out_len = o;
    p->doc->buf_used += o + 1;
    dst[o] = '\0';
    if (nchars)
        *nchars = chars;
    if (has_ctrl)
        *has_ctrl = ctrl;
    return 0;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int parse_number(parser *p, gj_node **out)
{
    size_t start = p->pos, i;
    int is_float = 0, neg = 0;
    gj_node *n;
    char *tmp;
    if (p->s[p->pos] == '-') {
        neg = 1;
        p->pos++;
    }
    if (p->pos >= p->len || !is_digit(p->s[p->pos]))
        return fail(p, "invalid number");
    if (p->s[p->pos] == '0')
        p->pos++;
    else
        while (p->pos < p->len && is_digit(p->s[p->pos]))
            p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        is_float = 1;
        p->pos++;
        if (p->pos >= p->len || !is_digit(p->s[p->pos]))
            return fail(p, "invalid number");
        while (p->pos < p->len && is_digit(p->s[p->pos]))
            p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        is_float = 1;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (p->pos >= p->len || !is_digit(p->s[p->pos]))
            return fail(p, "invalid number");
        while (p->pos < p->len && is_digit(p->s[p->pos]))
            p->pos++;
    }
    n = new_node(p, is_float ? GJ_FLOAT : GJ_INT);
    if (!n)
        return -1;
    /* keep the literal, NUL-terminated, for strtod and re-encoding */
    tmp = p->doc->buf + p->doc->buf_used;
    memcpy(tmp, p->s + start, p->pos - start);
    tmp[p->pos - start] = '\0';
    p->doc->buf_used += p->pos - start + 1;
    n->str = tmp;
    n->len = p->pos - start;
    if (is_float) {
        n->dval = strtod(tmp, NULL);
        if (isinf(n->dval) || isnan(n->dval))
            return fail(p, "number out of range");
    } else {
        /* docs/protocol.md 4.3: integer literals within +-(2^53-1) */
        long long v = 0;
        for (i = (size_t)neg; i < n->len; i++) {
            int d = tmp[i] - '0';
            if (v > (GJ_MAX_SAFE_INT - d) / 10)
                return fail(p, "integer beyond +-(2^53-1)");
            v = v * 10 + d;
        }
        n->ival = neg ? -v : v;
        n->dval = (double)n->ival;
    }
    *out = n;
    return 0;
}

static int match(parser *p, const char *word)
{
    size_t k = strlen(word);
    if (p->len - p->pos < k || memcmp(p->s + p->pos, word, k) != 0)
        return 0;
    p->pos += k;
    return 1;
}

static int parse_value(parser *p, gj_node **out, int depth);

static int parse_container(parser *p, gj_node **out, int depth, int is_obj)
{
    gj_node *n = new_node(p, is_obj ? GJ_OBJECT : GJ_ARRAY), *last = NULL;
    if (!n)
        return -1;
    if (depth >= p->max_depth)
        return fail(p, "nesting too deep");
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == (is_obj ? '}' : ']')) {
        p->pos++;
        *out = n;
        return 0;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        gj_node *v;
        skip_ws(p);
        if (is_obj) {
            if (p->pos >= p->len || p->s[p->pos] != '"')
                return fail(p, "expected a key");
            if (parse_string(p, &key, &key_len, NULL, NULL))
                return -1;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':')
                return fail(p, "expected ':'");
            p->pos++;
            skip_ws(p);
        }
        if (parse_value(p, &v, depth + 1))
            return -1;
        if (is_obj) {
            /* docs/protocol.md 4.3: a repeated key (after unescaping) is an error;
             * quadratic, but a frame holds at most a few hundred keys */
            const gj_node *m;
            for (m = n->child; m; m = m->next)
                if (m->key_len == key_len && memcmp(m->key, key, key_len) == 0)
                    return fail(p, "duplicate key");
        }
        v->key = key;
        v->key_len = key_len;
        if (last)
            last->next = v;
        else
            n->child = v;
        last = v;
        skip_ws(p);
        if (p->pos >= p->len)
            return fail(p, "unterminated container");
        if (p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->s[p->pos] == (is_obj ? '}' : ']')) {
            p->pos++;
            break;
        }
        return fail(p, "expected ',' or end of container");
    }
    *out = n;
    return 0;
}

static int parse_value(parser *p, gj_node **out, int depth)
{
    unsigned char c;
    skip_ws(p);
    if (p->pos >= p->len)
        return fail(p, "unexpected end of input");
    c = p->s[p->pos];
    if (c == '{' || c == '[')
        return parse_container(p, out, depth, c == '{');
    if (c == '"') {
        gj_node *n = new_node(p, GJ_STRING);
        if (!n)
            return -1;
        *out = n;
        return parse_string(p, &n->str, &n->len, &n->nchars, &n->has_ctrl);
    }
    if (c == '-' || is_digit(c))
        return parse_number(p, out);
    if (match(p, "true"))
        return (*out = new_node(p, GJ_TRUE)) ? 0 : -1;
    if (match(p, "false"))
        return (*out = new_node(p, GJ_FALSE)) ? 0 : -1;
    if (match(p, "null"))
        return (*out = new_node(p, GJ_NULL)) ? 0 : -1;
    return fail(p, "invalid value");
}

int gj_parse(gj_doc *doc, const char *text, size_t len, int max_depth)
{
    parser p;
    memset(doc, 0, sizeof(*doc));
    doc->cap = len / 2 + 2; /* every value but the first takes >= 2 bytes with its separator */
    doc->nodes = malloc(doc->cap * sizeof(gj_node));
    doc->buf = malloc(len + len / 2 + 2);
    if (!doc->nodes || !doc->buf) {
        doc->error = "out of memory";
        return -1;
    }
    p.s = (const unsigned char *)text;
    p.pos = 0;
    p.len = len;
    p.doc = doc;
    p.max_depth = max_depth;
    if (parse_value(&p, &doc->root, 0))
        return -1;
    skip_ws(&p);
    if (p.pos != len)
        return fail(&p, "extra data after the value");
    return 0;
}

void gj_free(gj_doc *doc)
{
    free(doc->nodes);
    free(doc->buf);
    doc->nodes = NULL;
    doc->buf = NULL;
}

const gj_node *gj_get(const gj_node *obj, const char *key)
{
    const gj_node *m;
    size_t k = strlen(key);
    if (!obj || obj->type != GJ_OBJECT)
        return NULL;
    for (m = obj->child; m; m = m->next)
        if (m->key_len == k && memcmp(m->key, key, k) == 0)
            return m;
    return NULL;
}

int gj_streq(const gj_node *n, const char *s)
{
    return n && n->type == GJ_STRING && n->len == strlen(s) && memcmp(n->str, s, n->len) == 0;
}

/* ---- writer ---- */

void gj_put(gj_buf *b, const char *s, size_t n)
{
    if (b->p) {
        if (b->len + n > b->cap) {
            b->overflow = 1;
            return;
        }
        memcpy(b->p + b->len, s, n);
    }
    b->len += n;
}

void gj_puts(gj_buf *b, const char *s) { gj_put(b, s, strlen(s)); }

void gj_put_string(gj_buf *b, const char *s, size_t n)
{
    size_t i, run = 0;
    gj_put(b, "\"", 1);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[8];
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c < 0x20) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            esc = tmp;
        }
        if (esc) {
            gj_put(b, s + i - run, run);
            run = 0;
            gj_puts(b, esc);
        } else {
            run++;
        }
    }
    gj_put(b, s + n - run, run);
    gj_put(b, "\"", 1);
}

void gj_put_int(gj_buf *b, long long v)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%lld", v);
    gj_puts(b, tmp);
}

/* Python's repr(float): shortest round-trip digits; exponent form when the
 * decimal exponent is < -4 or >= 16; ".0" added to integral fixed values. */
static void put_float(gj_buf *b, double v)
{
    char tmp[64], digits[32], out[64];
    int prec, exp10, nd = 0, o = 0, i;
    char *e;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    /* tmp = [-]d[.ddd]e[+-]xx */
    e = strchr(tmp, 'e');
    exp10 = atoi(e + 1);
    for (i = 0; tmp + i < e; i++)
        if (is_digit((unsigned char)tmp[i]))
            digits[nd++] = tmp[i];
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    if (tmp[0] == '-')
        out[o++] = '-';
    if (exp10 < -4 || exp10 >= 16) {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (i = 1; i < nd; i++)
                out[o++] = digits[i];
        }
        o += snprintf(out + o, sizeof out - (size_t)o, "e%c%02d", exp10 < 0 ? '-' : '+',
                      exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (i = 0; i < -exp10 - 1; i++)
            out[o++] = '0';
        for (i = 0; i < nd; i++)
            out[o++] = digits[i];
    } else {
        for (i = 0; i <= exp10; i++)
            out[o++] = i < nd ? digits[i] : '0';
        out[o++] = '.';
        if (nd > exp10 + 1)
            for (i = exp10 + 1; i < nd; i++)
                out[o++] = digits[i];
        else
            out[o++] = '0';
    }
    gj_put(b, out, (size_t)o);
}

void gj_put_value(gj_buf *b, const gj_node *n)
{
    const gj_node *c;
    switch (n->type) {
    case GJ_NULL: gj_puts(b, "null"); break;
    case GJ_TRUE: gj_puts(b, "true"); break;
    case GJ_FALSE: gj_puts(b, "false"); break;
    case GJ_INT:
        if (n->len == 2 && n->str[0] == '-' && n->str[1] == '0')
            gj_puts(b, "0");
        else
            gj_put(b, n->str, n->len);
        break;
    case GJ_FLOAT: put_float(b, n->dval); break;
    case GJ_STRING: gj_put_string(b, n->str, n->len); break;
    case GJ_ARRAY:
    case GJ_OBJECT:
        gj_put(b, n->type == GJ_ARRAY ? "[" : "{", 1);
        for (c = n->child; c; c = c->next) {
            if (c != n->child)
                gj_put(b, ",", 1);
            if (n->type == GJ_OBJECT) {
                gj_put_string(b, c->key, c->key_len);
                gj_put(b, ":", 1);
            }
            gj_put_value(b, c);
        }
        gj_put(b, n->type == GJ_ARRAY ? "]" : "}", 1);
        break;
    }
}

int gj_depth(const gj_node *n)
{
    const gj_node *c;
    int deepest = 0, d;
    if (n->type != GJ_ARRAY && n->type != GJ_OBJECT)
        return 0;
    for (c = n->child; c; c = c->next)
        if ((d = gj_depth(c)) > deepest)
            deepest = d;
    return deepest + 1;
}

size_t gj_compact_size(const gj_node *n)
{
    gj_buf b = {NULL, 0, 0, 0};
    gj_put_value(&b, n);
    return b.len;
}

int gj_equal(const gj_node *a, const gj_node *b)
{
    const gj_node *c;
    size_t na = 0, nb = 0;
    int num_a = a->type == GJ_INT || a->type == GJ_FLOAT;
    int num_b = b->type == GJ_INT || b->type == GJ_FLOAT;
    if (num_a && num_b) {
        if (a->type == GJ_INT && b->type == GJ_INT)
            return a->ival == b->ival;
        return a->dval == b->dval;
    }
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case GJ_STRING:
        return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
    case GJ_ARRAY:
        for (a = a->child, b = b->child; a && b; a = a->next, b = b->next)
            if (!gj_equal(a, b))
                return 0;
        return !a && !b;
    case GJ_OBJECT:
        for (c = a->child; c; c = c->next) {
            const gj_node *m;
            na++;
            for (m = b->child; m; m = m->next)
                if (m->key_len == c->key_len && memcmp(m->key, c->key, c->key_len) == 0)
                    break;
            if (!m || !gj_equal(c, m))
                return 0;
        }
        for (c = b->child; c; c = c->next)
            nb++;
        return na == nb;
    default:
        return 1;
    }
}
