/* conformance.c - runs the tests/conformance vectors against libguestha.
 * Usage: gh-conformance VECTOR_DIR. Prints one line per failure and, last, a
 * JSON summary {"runs":N,"failed":M}; exits 1 if anything failed. Same splits
 * and rules as tests/conformance_runner.py (see tests/conformance/README.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guestha.h"

static const size_t splits[] = {0, 1, 2, 3, 5, 7, 13, 64, 4095, 4097};
#define NSPLITS (sizeof splits / sizeof splits[0])
static int runs, failed;

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* ---- byte streams from parts ---- */
typedef struct {
    char *p;
    size_t len, cap;
} bytes_t;

static void add(bytes_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static bytes_t stream(const gj_node *parts)
{
    bytes_t b = {NULL, 0, 0};
    const gj_node *p;
    add(&b, "", 0);
    for (p = parts->child; p; p = p->next) {
        const gj_node *hex = gj_get(p, "hex"), *rep = gj_get(p, "repeat");
        if (p->type == GJ_STRING) {
            add(&b, p->str, p->len);
        } else if (hex) {
            size_t i;
            for (i = 0; i + 1 < hex->len; i++) {
                unsigned v;
                char two[3] = {hex->str[i], hex->str[i + 1], 0};
                if (hex->str[i] == ' ')
                    continue;
                sscanf(two, "%2x", &v);
                two[0] = (char)v;
                add(&b, two, 1);
                i++;
            }
        } else if (rep) {
            long long k;
            for (k = 0; k < gj_get(p, "count")->ival; k++)
                add(&b, rep->str, rep->len);
        }
    }
    return b;
}

static void fail(const char *kind, const gj_node *vec, size_t split, const char *why)
{
    const gj_node *name = gj_get(vec, "name");
    failed++;
    printf("%s: %s [split %zu]: %s\n", kind, name ? name->str : "?", split, why);
}

/* ---- framing ---- */
typedef struct {
    int code[64];
    bytes_t frame[64];
    int n;
} items_t;

static void collect(void *ctx, int code, const char *frame, size_t len)
{
    items_t *it = ctx;
    if (it->n >= 64)
        return;
    it->code[it->n] = code;
    memset(&it->frame[it->n], 0, sizeof(bytes_t));
    add(&it->frame[it->n], frame ? frame : "", frame ? len : 0);
    it->n++;
}

static const char *run_framing(const gj_node *vec, size_t split)
{
    static gh_decoder dec;
    items_t it;
    bytes_t s = stream(gj_get(vec, "stream"));
    const gj_node *e;
    size_t off = 0;
    int i = 0;
    const char *why = NULL;
    memset(&dec, 0, sizeof dec);
    it.n = 0;
    do {
        size_t n = split == 0 || s.len - off < split ? s.len - off : split;
        gh_decoder_feed(&dec, s.p + off, n, collect, &it);
        off += n;
    } while (off < s.len);
    for (e = gj_get(vec, "expect")->child; e; e = e->next, i++) {
        if (i >= it.n) {
            why = "fewer items than expected";
            break;
        }
        if (gj_get(e, "error")) {
            if (it.code[i] != GH_FRAME_TOO_LARGE)
                why = "expected frame_too_large";
        } else {
            bytes_t want = stream(gj_get(e, "frame"));
            if (it.code[i] != GH_OK || want.len != it.frame[i].len ||
                memcmp(want.p, it.frame[i].p, want.len) != 0)
                why = "frame differs";
            free(want.p);
        }
        if (why)
            break;
    }
    if (!why && i != it.n)
        why = "more items than expected";
    for (i = 0; i < it.n; i++)
        free(it.frame[i].p);
    free(s.p);
    return why;
}

/* ---- validation ---- */

/* The spec fields of a validated message (defaults included) as a JSON object. */
static void fields_json(const gh_msg *m, int dir, gj_buf *b)
{
    const char *const *names = gh_spec_fields(m->app, dir, m->msg_type);
    int first = 1;
    gj_puts(b, "{");
    for (; names && *names; names++) {
        const gj_node *v = gh_field(m, *names);
        if (!v)
            continue;
        if (!first)
            gj_puts(b, ",");
        first = 0;
        gj_put_string(b, *names, strlen(*names));
        gj_puts(b, ":");
        gj_put_value(b, v);
    }
    gj_puts(b, "}");
}

static int json_equal_text(const char *text, size_t len, const gj_node *want)
{
    gj_doc d;
    int eq = gj_parse(&d, text, len, 64) == 0 && gj_equal(d.root, want);
    gj_free(&d);
    return eq;
}

static const char *run_validation(const gj_node *vec)
{
    static char fbuf[65536];
    bytes_t s = stream(gj_get(vec, "frame"));
    const gj_node *exp = gj_get(vec, "expect"), *code = gj_get(exp, "error");
    int dir = gj_streq(gj_get(vec, "direction"), "host_to_guest") ? GH_HOST_TO_GUEST
                                                                  : GH_GUEST_TO_HOST;
    gj_doc doc;
    gh_msg m;
    gh_error err;
    const char *why = NULL;
    int rc = gh_decode(s.p, s.len, dir, &doc, &m, &err);
    if (code) {
        if (rc == 0)
            why = "accepted";
        else if (!gj_streq(code, gh_code_name(err.code)))
            why = gh_code_name(err.code);
        else if (!gj_streq(gj_get(exp, "app"), gh_app_name(err.app)))
            why = "wrong application";
        else if (!gj_streq(gj_get(exp, "orig_msg_type"), err.msg_type))
            why = "wrong orig_msg_type";
    } else if (rc != 0) {
        why = gh_code_name(err.code);
    } else if (gj_get(exp, "ok_size")) {
        if ((long long)gj_compact_size(gh_field(&m, "data")) != gj_get(exp, "ok_size")->ival)
            why = "data size differs";
    } else {
        const gj_node *ok = gj_get(exp, "ok");
        gj_buf b = {fbuf, 0, sizeof fbuf, 0};
        fields_json(&m, dir, &b);
        if (!gj_streq(gj_get(ok, "app"), gh_app_name(m.app)) ||
            !gj_streq(gj_get(ok, "msg_type"), m.msg_type))
            why = "wrong app or msg_type";
        else if (!json_equal_text(b.p, b.len, gj_get(ok, "fields")))
            why = "fields differ";
    }
    gj_free(&doc);
    free(s.p);
    return why;
}

/* ---- guest state machine ---- */
typedef struct {
    char text[16][8192];
    int app[16];
    int n;
} sg_t;

static void on_sg(void *ctx, const gh_msg *m, double now)
{
    sg_t *sg = ctx;
    gj_buf b;
    (void)now;
    if (sg->n >= 16)
        return;
    b.p = sg->text[sg->n];
    b.len = 0;
    b.cap = sizeof sg->text[0] - 1;
    b.overflow = 0;
    gj_puts(&b, "{\"msg_type\":");
    gj_put_string(&b, m->msg_type, strlen(m->msg_type));
    gj_puts(&b, ",\"fields\":");
    fields_json(m, GH_HOST_TO_GUEST, &b);
    gj_puts(&b, "}");
    sg->text[sg->n][b.len] = '\0';
    sg->app[sg->n++] = m->app;
}

/* got: {"msg_type":..., ...data...} (sent) or {"msg_type":..,"fields":{..}} (sg). */
static int pdu_matches(const gj_node *data, const gj_node *fields, const char *app,
                       const gj_node *exp)
{
    const gj_node *code = gj_get(exp, "code"), *m, *want;
    size_t n = 0, k = 0;
    if (!gj_streq(gj_get(exp, "app"), app) ||
        !gj_equal(gj_get(data, "msg_type"), gj_get(exp, "msg_type")))
        return 0;
    if (code) {
        const gj_node *log = gj_get(data, "log_msg");
        return gj_equal(gj_get(data, "orig_msg_type"), gj_get(exp, "orig_msg_type")) && log &&
               log->type == GJ_STRING && log->len > code->len + 1 &&
               memcmp(log->str, code->str, code->len) == 0 && log->str[code->len] == ':' &&
               log->str[code->len + 1] == ' ';
    }
    want = gj_get(exp, "fields");
    if (fields)
        return gj_equal(fields, want);
    for (m = data->child; m; m = m->next) {
        const gj_node *w;
        if (m->key_len == 8 && memcmp(m->key, "msg_type", 8) == 0)
            continue;
        n++;
        w = gj_get(want, m->key);
        if (!w || !gj_equal(m, w))
            return 0;
    }
    for (m = want->child; m; m = m->next)
        k++;
    return n == k;
}

typedef struct {
    gj_doc docs[64];
    int n;
} frames_t;

static void keep_frame(void *ctx, int code, const char *frame, size_t len)
{
    frames_t *f = ctx;
    if (code != GH_OK || f->n >= 64)
        return;
    gj_parse(&f->docs[f->n++], frame, len, 64);
}

static const char *check_sent(gh_guest *g, const gj_node *want)
{
    static gh_decoder dec;
    static frames_t f;
    const gj_node *e;
    const char *why = NULL;
    int i = 0;
    memset(&dec, 0, sizeof dec);
    f.n = 0;
    gh_decoder_feed(&dec, g->out, g->out_len, keep_frame, &f);
    if (want) {
        for (e = want->child; e && !why; e = e->next, i++) {
            const gj_node *root;
            if (i >= f.n) {
                why = "fewer PDUs sent than expected";
                break;
            }
            root = f.docs[i].root;
            if (!root || !pdu_matches(gj_get(root, "data"), NULL,
                                      gj_get(root, "dest_addr")->str, e))
                why = "sent PDU differs";
        }
        if (!why && i != f.n)
            why = "more PDUs sent than expected";
    }
    for (i = 0; i < f.n; i++)
        gj_free(&f.docs[i]);
    gh_guest_output_sent(g, g->out_len);
    return why;
}

static const char *check_sg(sg_t *sg, const gj_node *want)
{
    const gj_node *e;
    int i = 0;
    const char *why = NULL;
    for (e = want->child; e && !why; e = e->next, i++) {
        gj_doc d;
        if (i >= sg->n)
            return "fewer server group PDUs than expected";
        if (gj_parse(&d, sg->text[i], strlen(sg->text[i]), 64) ||
            !pdu_matches(d.root, gj_get(d.root, "fields"), gh_app_name(sg->app[i]), e))
            why = "server group PDU differs";
        gj_free(&d);
    }
    return why ? why : (i != sg->n ? "more server group PDUs than expected" : NULL);
}

static const char *run_guest(const gj_node *vec, size_t split)
{
    static gh_guest g;
    static sg_t sg;
    const gj_node *cfg = gj_get(vec, "config"), *step, *ca = gj_get(cfg, "corrective_action");
    const char *why = NULL;
    if (gh_guest_init(&g, gj_get(cfg, "name")->str, (long)gj_get(cfg, "interval_ms")->ival,
                      gj_get(cfg, "invocation_id")->str, ca ? ca->str : NULL,
                      gj_get(gj_get(vec, "steps")->child, "at")->dval))
        return "gh_guest_init refused the config";
    g.on_sg = on_sg;
    g.ctx = &sg;
    for (step = gj_get(vec, "steps")->child; step && !why; step = step->next) {
        double now = gj_get(step, "at")->dval;
        const gj_node *do_ = gj_get(step, "do"), *exp = gj_get(step, "expect");
        sg.n = 0;
        if (gj_streq(do_, "start")) {
            gh_guest_start(&g, now);
        } else if (gj_streq(do_, "tick")) {
            gh_guest_tick(&g, now);
        } else if (gj_streq(do_, "receive")) {
            bytes_t s = stream(gj_get(step, "stream"));
            size_t off = 0;
            do {
                size_t n = split == 0 || s.len - off < split ? s.len - off : split;
                gh_guest_receive(&g, s.p + off, n, now);
                off += n;
            } while (off < s.len);
            free(s.p);
        } else if (gj_streq(do_, "set_health")) {
            gh_guest_set_health(&g, gj_get(step, "healthy")->type == GJ_TRUE,
                                gj_get(step, "reason")->str);
        } else if (gj_streq(do_, "exit")) {
            gh_guest_exit(&g, now, gj_get(step, "reason")->str);
        } else if (gj_streq(do_, "host_connected")) {
            gh_guest_host_connected(&g, now);
        } else if (gj_streq(do_, "host_disconnected")) {
            gh_guest_host_disconnected(&g, now);
        } else {
            return "unknown action";
        }
        why = check_sent(&g, gj_get(exp, "sent"));
        if (!why && gj_get(exp, "server_group"))
            why = check_sg(&sg, gj_get(exp, "server_group"));
        if (!why && gj_get(exp, "state") && !gj_streq(gj_get(exp, "state"), gh_state_name(g.state)))
            why = "state differs";
        if (!why && gj_get(exp, "next_deadline")) {
            const gj_node *w = gj_get(exp, "next_deadline");
            double got = gh_guest_next_deadline(&g);
            if (w->type == GJ_NULL ? got >= 0 : fabs(got - w->dval) > 1e-6)
                why = "next_deadline differs";
        }
    }
    return why;
}

int main(int argc, char **argv)
{
    static const char *const kinds[] = {"framing", "validation", "guest"};
    size_t k;
    if (argc != 2) {
        fprintf(stderr, "usage: %s VECTOR_DIR\n", argv[0]);
        return 2;
    }
    for (k = 0; k < 3; k++) {
        char path[4096];
        size_t len, s;
        char *text;
        gj_doc doc;
        const gj_node *vec;
        snprintf(path, sizeof path, "%s/%s.json", argv[1], kinds[k]);
        text = read_file(path, &len);
        if (!text || gj_parse(&doc, text, len, 64)) {
            fprintf(stderr, "cannot read %s\n", path);
            return 2;
        }
        for (vec = doc.root->child; vec; vec = vec->next)
            for (s = 0; s < (k == 1 ? 1 : NSPLITS); s++) {
                const char *why = k == 0   ? run_framing(vec, splits[s])
                                  : k == 1 ? run_validation(vec)
                                           : run_guest(vec, splits[s]);
                runs++;
                if (why)
                    fail(kinds[k], vec, splits[s], why);
            }
        gj_free(&doc);
        free(text);
    }
    printf("{\"runs\":%d,\"failed\":%d}\n", runs, failed);
    return failed ? 1 : 0;
}
