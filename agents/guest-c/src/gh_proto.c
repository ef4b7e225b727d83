/* gh_proto.c - framing, envelope, PDU validation and encoders (docs/protocol.md 3-5, 7). */
#include "guestha.h"

#include <stdio.h>
#include <string.h>

static const char *const code_names[] = {
    "ok", "frame_too_large", "malformed_json", "invalid_envelope", "unsupported_version",
    "unknown_address", "unknown_msg_type", "invalid_field",
};

const char *gh_code_name(int code)
{
    return code >= 0 && code <= GH_INVALID_FIELD ? code_names[code] : "unknown";
}

const char *gh_app_name(int app) { return app == GH_SERVER_GROUP ? "server_group" : "heartbeat"; }

/* ---- framing (3.2) ---- */

void gh_decoder_reset(gh_decoder *d)
{
    d->plen = 0;
    d->skipping = 0;
}

static int blank(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (!strchr(" \t\r\n\v\f", s[i]) || s[i] == '\0')
            return 0;
    return 1;
}

void gh_decoder_feed(gh_decoder *d, const char *data, size_t len, gh_frame_fn fn, void *ctx)
{
    size_t start = 0;
    for (;;) {
        const char *nl = len > start ? memchr(data + start, '\n', len - start) : NULL;
        size_t clen;
        const char *chunk = data + start;
        if (!nl)
            break;
        clen = (size_t)(nl - chunk);
        start += clen + 1;
        if (d->skipping) {
            d->skipping = 0;
            continue;
        }
        if (d->plen) {
            if (d->plen + clen > GH_MAX_FRAME) {
                d->plen = 0;
                d->frames_dropped++;
                fn(ctx, GH_FRAME_TOO_LARGE, NULL, 0);
                continue;
            }
            memcpy(d->partial + d->plen, chunk, clen);
            clen += d->plen;
            d->plen = 0;
            chunk = d->partial;
        }
        if (clen > GH_MAX_FRAME) {
            d->frames_dropped++;
            fn(ctx, GH_FRAME_TOO_LARGE, NULL, 0);
        } else if (!blank(chunk, clen)) {
            fn(ctx, GH_OK, chunk, clen);
        }
    }
    if (start < len && !d->skipping) {
        size_t rlen = len - start;
        if (d->plen + rlen > GH_MAX_FRAME) {
            d->plen = 0;
            d->skipping = 1;
            d->frames_dropped++;
            fn(ctx, GH_FRAME_TOO_LARGE, NULL, 0);
        } else {
            memcpy(d->partial + d->plen, data + start, rlen);
            d->plen += rlen;
        }
    }
}

/* ---- text helpers ---- */

void gh_printable(char *dst, size_t cap, const char *src, size_t len, size_t max_chars)
{
    size_t i = 0, o = 0, chars = 0;
    while (i < len && chars < max_chars) {
        unsigned char c = (unsigned char)src[i];
        size_t k = 1;
        const char *put = src + i;
        if (c < 0x80) {
            if (c < 0x20)
                put = " ";
        } else {
            for (k = 2; k <= 4 && i + k <= len; k++)
                if (gj_utf8_chars(src + i, k) == 1)
                    break;
            if (k > 4 || i + k > len) {
                k = 1;
                put = "\xEF\xBF\xBD"; /* U+FFFD for an invalid byte */
            }
        }
        {
            size_t plen = put == src + i ? k : strlen(put);
            if (o + plen + 1 > cap)
                break;
            memcpy(dst + o, put, plen);
            o += plen;
        }
        i += k;
        chars++;
    }
    if (cap)
        dst[o] = '\0';
}

/* ---- PDU table (5.2 - 5.4) ---- */

enum kind { K_TEXT, K_TOKEN, K_NONCE, K_UUID, K_INT, K_CHOICE, K_JSON, K_OBJECT };
enum need { REQ = 1, OPT = 0, FORBID = -1 };

typedef struct {
    const char *name;
    int kind, need;
    long long lo, hi; /* K_INT: range; text kinds: max characters; K_JSON: max bytes */
    const char *const *choices;
} fspec;

typedef struct {
    int app, dir;
    const char *msg_type;
    fspec f[5];
    const char *const names[5];
} pspec;

static const char *const actions[] = {"log", "reboot", "stop", NULL};
static const char *const healths[] = {"healthy", "unhealthy", NULL};

#define SEQ(n) {n, K_INT, REQ, 0, GH_MAX_SEQ, NULL}
#define NACK_F {{"orig_msg_type", K_TEXT, REQ, 0, 64, NULL}, {"log_msg", K_TEXT, REQ, 0, 512, NULL}}
#define NACK_N {"orig_msg_type", "log_msg", NULL}

static const pspec specs[] = {
    {GH_HEARTBEAT, GH_GUEST_TO_HOST, "init",
     {{"invocation_id", K_TOKEN, REQ, 0, 64, NULL}, {"name", K_TEXT, REQ, 0, 64, NULL},
      {"interval_ms", K_INT, REQ, 1, 2147483647LL, NULL},
      {"corrective_action", K_CHOICE, OPT, 0, 0, actions}},
     {"invocation_id", "name", "interval_ms", "corrective_action", NULL}},
    {GH_HEARTBEAT, GH_GUEST_TO_HOST, "challenge_response",
     {SEQ("seq"), {"nonce", K_NONCE, REQ, 0, 64, NULL},
      {"health", K_CHOICE, REQ, 0, 0, healths}, {"reason", K_TEXT, OPT, 0, 256, NULL}},
     {"seq", "nonce", "health", "reason", NULL}},
    {GH_HEARTBEAT, GH_GUEST_TO_HOST, "exit",
     {{"invocation_id", K_TOKEN, REQ, 0, 64, NULL}, {"reason", K_TEXT, OPT, 0, 256, NULL}},
     {"invocation_id", "reason", NULL}},
    {GH_HEARTBEAT, GH_GUEST_TO_HOST, "nack", NACK_F, NACK_N},
    {GH_HEARTBEAT, GH_HOST_TO_GUEST, "init_ack",
     {{"invocation_id", K_TOKEN, REQ, 0, 64, NULL},
      {"interval_ms", K_INT, REQ, 1, 2147483647LL, NULL}},
     {"invocation_id", "interval_ms", NULL}},
    {GH_HEARTBEAT, GH_HOST_TO_GUEST, "challenge",
     {SEQ("seq"), {"nonce", K_NONCE, REQ, 0, 64, NULL}}, {"seq", "nonce", NULL}},
    {GH_HEARTBEAT, GH_HOST_TO_GUEST, "nack", NACK_F, NACK_N},
    {GH_SERVER_GROUP, GH_GUEST_TO_HOST, "status_query", {SEQ("seq")}, {"seq", NULL}},
    {GH_SERVER_GROUP, GH_GUEST_TO_HOST, "broadcast",
     {{"data", K_JSON, REQ, 0, GH_MAX_BROADCAST_BYTES, NULL},
      {"source_instance", K_TEXT, FORBID, 0, 0, NULL}},
     {"data", NULL}},
    {GH_SERVER_GROUP, GH_GUEST_TO_HOST, "nack", NACK_F, NACK_N},
    {GH_SERVER_GROUP, GH_HOST_TO_GUEST, "status_response",
     {SEQ("seq"), {"data", K_OBJECT, REQ, 0, 3050, NULL}}, {"seq", "data", NULL}},
    {GH_SERVER_GROUP, GH_HOST_TO_GUEST, "status_response_done", {SEQ("seq")}, {"seq", NULL}},
    {GH_SERVER_GROUP, GH_HOST_TO_GUEST, "notification",
     {{"data", K_OBJECT, REQ, 0, 3050, NULL}}, {"data", NULL}},
    {GH_SERVER_GROUP, GH_HOST_TO_GUEST, "broadcast",
     {{"source_instance", K_UUID, REQ, 0, 36, NULL},
      {"data", K_JSON, REQ, 0, GH_MAX_BROADCAST_BYTES, NULL}},
     {"source_instance", "data", NULL}},
    {GH_SERVER_GROUP, GH_HOST_TO_GUEST, "nack", NACK_F, NACK_N},
};
#define NSPECS (sizeof(specs) / sizeof(specs[0]))

static const pspec *find_spec(int app, int dir, const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < NSPECS; i++)
        if (specs[i].app == app && specs[i].dir == dir && strlen(specs[i].msg_type) == n &&
            memcmp(specs[i].msg_type, s, n) == 0)
            return &specs[i];
    return NULL;
}

const char *const *gh_spec_fields(int app, int dir, const char *msg_type)
{
    const pspec *p = find_spec(app, dir, msg_type, strlen(msg_type));
    return p ? p->names : NULL;
}

static const gj_node empty_string = {GJ_STRING, NULL, NULL, NULL, 0, "", 0, 0, 0, 0, 0};

const gj_node *gh_field(const gh_msg *msg, const char *name)
{
    const gj_node *n = gj_get(msg->data, name);
    if (!n && strcmp(name, "reason") == 0 &&
        (strcmp(msg->msg_type, "challenge_response") == 0 || strcmp(msg->msg_type, "exit") == 0))
        return &empty_string;
    return n;
}

static int pattern_ok(const gj_node *v, int kind)
{
    size_t i;
    for (i = 0; i < v->len; i++) {
        unsigned char c = (unsigned char)v->str[i];
        int ok;
        if (kind == K_TOKEN)
            ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        else if (kind == K_NONCE)
            ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        else
            ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                 c == '-';
        if (!ok)
            return 0;
    }
    if (kind == K_TOKEN)
        return v->len >= 1;
    if (kind == K_NONCE)
        return v->len >= 8;
    return v->len >= 32;
}

/* NULL when valid, else why not. */
static const char *check_field(const fspec *f, const gj_node *v)
{
    const char *const *c;
    switch (f->kind) {
    case K_TEXT:
    case K_TOKEN:
    case K_NONCE:
    case K_UUID:
        if (v->type != GJ_STRING)
            return "must be a string";
        if ((long long)v->nchars > f->hi)
            return "is too long";
        if (f->kind != K_TEXT && !pattern_ok(v, f->kind))
            return "has an invalid format";
        if (v->has_ctrl)
            return "must not contain control characters";
        return NULL;
    case K_INT:
        if (v->type != GJ_INT)
            return "must be an integer";
        if (v->ival < f->lo || v->ival > f->hi)
            return "is out of range";
        return NULL;
    case K_CHOICE:
        for (c = f->choices; *c; c++)
            if (gj_streq(v, *c))
                return NULL;
        return "is not one of the allowed values";
    case K_OBJECT:
        if (v->type != GJ_OBJECT)
            return "must be an object";
        /* fall through */
    default:
        if ((long long)gj_compact_size(v) > f->hi)
            return "is over its size limit";
        return NULL;
    }
}

static void set_err(gh_error *err, int code, int app, const char *what, const char *extra)
{
    err->code = code;
    err->app = app;
    snprintf(err->text, sizeof err->text, "%s%s", what, extra ? extra : "");
}

int gh_decode(const char *frame, size_t len, int dir, gj_doc *doc, gh_msg *msg, gh_error *err)
{
    const gj_node *root, *ver, *src, *dst, *data, *mt;
    const pspec *spec;
    int app, i, pass;
    memset(err, 0, sizeof(*err));
    memset(msg, 0, sizeof(*msg));
    if (gj_parse(doc, frame, len, GH_JSON_MAX_DEPTH)) {
        set_err(err, GH_MALFORMED_JSON, GH_HEARTBEAT, "frame is not valid UTF-8 JSON: ",
                doc->error);
        return -1;
    }
    root = doc->root;
    if (root->type != GJ_OBJECT) {
        set_err(err, GH_MALFORMED_JSON, GH_HEARTBEAT, "frame is JSON but not an object", NULL);
        return -1;
    }
    ver = gj_get(root, "version");
    src = gj_get(root, "source_addr");
    dst = gj_get(root, "dest_addr");
    data = gj_get(root, "data");
    mt = gj_get(data, "msg_type");
    if (mt && mt->type == GJ_STRING)
        gh_printable(err->msg_type, sizeof err->msg_type, mt->str, mt->len, 64);
    if (!ver || !src || !dst || !data) {
        set_err(err, GH_INVALID_ENVELOPE, GH_HEARTBEAT, "envelope lacks a key", NULL);
        return -1;
    }
    if (ver->type != GJ_INT) {
        set_err(err, GH_INVALID_ENVELOPE, GH_HEARTBEAT, "envelope version must be an integer",
                NULL);
        return -1;
    }
    if (ver->ival != 1) {
        set_err(err, GH_UNSUPPORTED_VERSION, GH_HEARTBEAT, "version not supported (supported: 1)",
                NULL);
        return -1;
    }
    if (src->type != GJ_STRING || dst->type != GJ_STRING) {
        set_err(err, GH_INVALID_ENVELOPE, GH_HEARTBEAT, "envelope addresses must be strings",
                NULL);
        return -1;
    }
    if (data->type != GJ_OBJECT) {
        set_err(err, GH_INVALID_ENVELOPE, GH_HEARTBEAT, "envelope data must be an object", NULL);
        return -1;
    }
    if (gj_streq(dst, "heartbeat"))
        app = GH_HEARTBEAT;
    else if (gj_streq(dst, "server_group"))
        app = GH_SERVER_GROUP;
    else {
        set_err(err, GH_UNKNOWN_ADDRESS, GH_HEARTBEAT, "unknown dest_addr", NULL);
        return -1;
    }
    spec = mt && mt->type == GJ_STRING ? find_spec(app, dir, mt->str, mt->len) : NULL;
    if (!spec) {
        set_err(err, GH_UNKNOWN_MSG_TYPE, app, gh_app_name(app),
                dir == GH_HOST_TO_GUEST ? " does not accept this msg_type host to guest"
                                        : " does not accept this msg_type guest to host");
        return -1;
    }
    /* required fields, then the optional ones present, then the forbidden ones */
    for (pass = REQ; pass >= FORBID; pass--)
        for (i = 0; i < 5 && spec->f[i].name; i++) {
            const fspec *f = &spec->f[i];
            const gj_node *v;
            const char *why;
            if (f->need != pass)
                continue;
            v = gj_get(data, f->name);
            if (pass == REQ && !v)
                why = "is missing";
            else if (pass == FORBID && v)
                why = "must not be present: the host sets it";
            else if (pass != FORBID && v)
                why = check_field(f, v);
            else
                why = NULL;
            if (why) {
                err->code = GH_INVALID_FIELD;
                err->app = app;
                snprintf(err->text, sizeof err->text, "%s field %s %s", spec->msg_type, f->name,
                         why);
                return -1;
            }
        }
    msg->app = app;
    snprintf(msg->msg_type, sizeof msg->msg_type, "%s", spec->msg_type);
    msg->data = data;
    return 0;
}

/* ---- encoders (3.1) ---- */

static void open_pdu(gj_buf *b, int app, const char *msg_type)
{
    gj_puts(b, "{\"version\":1,\"source_addr\":\"");
    gj_puts(b, gh_app_name(app));
    gj_puts(b, "\",\"dest_addr\":\"");
    gj_puts(b, gh_app_name(app));
    gj_puts(b, "\",\"data\":{\"msg_type\":\"");
    gj_puts(b, msg_type);
    gj_puts(b, "\"");
}

static void key(gj_buf *b, const char *k)
{
    gj_puts(b, ",\"");
    gj_puts(b, k);
    gj_puts(b, "\":");
}

static void text_field(gj_buf *b, const char *k, const char *v, size_t max_chars)
{
    char tmp[2100];
    gh_printable(tmp, sizeof tmp, v, strlen(v), max_chars);
    key(b, k);
    gj_put_string(b, tmp, strlen(tmp));
}

static int close_pdu(gj_buf *out, gj_buf *b)
{
    gj_puts(b, "}}");
    if (b->overflow || b->len > GH_MAX_FRAME || out->overflow)
        return -1;
    if (out->p && out->len + b->len + 2 > out->cap)
        return -1;
    gj_put(out, "\n", 1);
    gj_put(out, b->p, b->len);
    gj_put(out, "\n", 1);
    return 0;
}

#define PDU_BUF char space[GH_MAX_FRAME + 1]; gj_buf b = {space, 0, sizeof space, 0}

int gh_enc_init(gj_buf *out, const char *invocation_id, const char *name, long interval_ms,
                const char *corrective_action)
{
    PDU_BUF;
    open_pdu(&b, GH_HEARTBEAT, "init");
    text_field(&b, "invocation_id", invocation_id, 64);
    text_field(&b, "name", name, 64);
    key(&b, "interval_ms");
    gj_put_int(&b, interval_ms);
    if (corrective_action && *corrective_action)
        text_field(&b, "corrective_action", corrective_action, 16);
    return close_pdu(out, &b);
}

int gh_enc_challenge_response(gj_buf *out, long long seq, const char *nonce, int healthy,
                              const char *reason)
{
    PDU_BUF;
    open_pdu(&b, GH_HEARTBEAT, "challenge_response");
    key(&b, "seq");
    gj_put_int(&b, seq);
    text_field(&b, "nonce", nonce, 64);
    text_field(&b, "health", healthy ? "healthy" : "unhealthy", 16);
    text_field(&b, "reason", reason, 256);
    return close_pdu(out, &b);
}

int gh_enc_exit(gj_buf *out, const char *invocation_id, const char *reason)
{
    PDU_BUF;
    open_pdu(&b, GH_HEARTBEAT, "exit");
    text_field(&b, "invocation_id", invocation_id, 64);
    text_field(&b, "reason", reason, 256);
    return close_pdu(out, &b);
}

int gh_enc_nack(gj_buf *out, int app, const char *orig_msg_type, const char *log_msg)
{
    PDU_BUF;
    open_pdu(&b, app, "nack");
    text_field(&b, "orig_msg_type", orig_msg_type, 64);
    text_field(&b, "log_msg", log_msg, 512);
    return close_pdu(out, &b);
}

int gh_enc_status_query(gj_buf *out, long long seq)
{
    PDU_BUF;
    open_pdu(&b, GH_SERVER_GROUP, "status_query");
    key(&b, "seq");
    gj_put_int(&b, seq);
    return close_pdu(out, &b);
}

int gh_enc_broadcast(gj_buf *out, const gj_node *data)
{
    PDU_BUF;
    /* data sits at depth 3 of the envelope (docs/protocol.md 4.3) */
    if (gj_compact_size(data) > GH_MAX_BROADCAST_BYTES || gj_depth(data) > GH_JSON_MAX_DEPTH - 2)
        return -1;
    open_pdu(&b, GH_SERVER_GROUP, "broadcast");
    key(&b, "data");
    gj_put_value(&b, data);
    return close_pdu(out, &b);
}

/* ---- token bucket ---- */

void gh_bucket_init(gh_bucket *b, double rate, double burst, double now)
{
    b->rate = rate;
    b->burst = burst;
    b->tokens = burst;
    b->stamp = now;
}

int gh_bucket_consume(gh_bucket *b, double now)
{
    if (now > b->stamp) {
        b->tokens += (now - b->stamp) * b->rate;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->stamp = now;
    }
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 1;
    }
    return 0;
}
