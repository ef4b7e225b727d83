/* appsrv.c - the local app API (the protocol of agents/guest_ha/guest/apps.py and
 * sg.py): a UNIX stream socket speaking one JSON object per line. Requests carry
 * an "op" and optionally an "id" that the reply echoes; replies are
 * {"ok":true,...} or {"ok":false,"error":...}; pushes carry "push" and never "ok".
 * Ops: register, report, unregister, status, sg_subscribe, sg_unsubscribe,
 * sg_broadcast, sg_status. Everything is bounded; a bad client is answered with
 * an error or dropped and never blocks the daemon. */
#define _GNU_SOURCE
#include "guestd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_LINE 16384
#define MAX_CLIENTS 64
#define MAX_APPS 64
#define MAX_CLIENT_OUTPUT (256 * 1024)
#define MAX_PUSHES 256
#define MAX_PUSH_BYTES (512 * 1024)
#define PUSH_CHUNK 16384
#define MAX_STATUS_REPLY (192 * 1024)
#define MAX_QUEUED_STATUS 64
#define REPLY_CAP (1024 * 1024)

typedef struct {
    char *data;
    size_t len;
} push_t;

typedef struct {
    int fd, id, alive, closing, waiting;
    char waiting_id[80]; /* the deferred request's id as JSON text, "" if none */
    pid_t pid;
    char in[MAX_LINE + 1024];
    size_t in_len;
    char *out;
    size_t out_len, out_cap;
    push_t pushes[MAX_PUSHES];
    int push_head, push_count;
    size_t push_bytes;
    unsigned long pushes_dropped, dropped_unreported;
} client_t;

typedef struct {
    int used;
    char name[65];
    long timeout_ms;
    char on_disconnect[10];
    double last_seen;
    int client_id; /* 0: disconnected */
    int healthy;
    char reason[1100];
    unsigned long reports;
} app_t;

typedef struct {
    int client_id;
    double deadline;
    long timeout_ms;
} waiter_t;

enum { C_BSENT, C_QSENT, C_BRECV, C_NRECV, C_NACKS, C_SRECV, C_SSTALE, C_STRUNC, C_STIMEOUT,
       C_DROPPED, C_RATE, C_REFUSED, C_N };
static const char *const sg_counter_names[C_N] = {
    "broadcasts_sent", "status_queries_sent", "broadcasts_received", "notifications_received",
    "nacks_received", "status_responses_received", "status_responses_stale",
    "status_responses_truncated", "status_timeouts", "dropped_no_owner", "rate_limited",
    "refused"};

struct gd_server {
    char path[108];
    int sock;
    client_t *clients[MAX_CLIENTS];
    int next_id;
    app_t apps[MAX_APPS];
    gh_guest *guest;
    const gd_config *cfg;
    gd_status_fn status;
    void *ctx;
    unsigned long connections, rejected, requests, errors, pushes, pushes_dropped;
    /* server group relay */
    int owner;
    int host_connected, was_connected;
    gh_bucket bucket;
    long long next_seq;
    int inflight;
    long long q_seq;
    waiter_t q_waiter;
    char *members;
    size_t members_len;
    size_t q_size;
    int q_truncated;
    waiter_t queued[MAX_QUEUED_STATUS];
    int nqueued;
    unsigned long sgc[C_N];
    char *reply; /* scratch for one reply line */
};

/* ---- helpers ---- */

static client_t *client_by_id(gd_server *s, int id)
{
    int i;
    for (i = 0; i < MAX_CLIENTS; i++)
        if (s->clients[i] && s->clients[i]->id == id && s->clients[i]->alive)
            return s->clients[i];
    return NULL;
}

static void out_append(client_t *c, const char *data, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        char *p;
        while (cap < c->out_len + n)
            cap *= 2;
        p = realloc(c->out, cap);
        if (!p)
            return;
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

/* An error reply under construction: {"ok":false,"error":TEXT[,"code":CODE] */
static void put_error(gj_buf *b, const char *text, const char *code)
{
    gj_puts(b, "{\"ok\":false,\"error\":");
    gj_put_string(b, text, strlen(text));
    if (code) {
        gj_puts(b, ",\"code\":");
        gj_put_string(b, code, strlen(code));
    }
}

static void finish_line(client_t *c, gj_buf *b, const char *id)
{
    if (id && *id) {
        gj_puts(b, ",\"id\":");
        gj_puts(b, id);
    }
    gj_puts(b, "}\n");
    if (!b->overflow)
        out_append(c, b->p, b->len);
}

static gj_buf reply_buf(gd_server *s)
{
    gj_buf b;
    b.p = s->reply;
    b.len = 0;
    b.cap = REPLY_CAP;
    b.overflow = 0;
    return b;
}

static void queue_error(gd_server *s, client_t *c, const char *text, const char *code,
                        const char *id)
{
    gj_buf b = reply_buf(s);
    s->errors++;
    put_error(&b, text, code);
    finish_line(c, &b, id);
}

static void push(gd_server *s, client_t *c, gj_buf *b)
{
    push_t *p;
    if (!c || !c->alive)
        return;
    s->pushes++;
    gj_puts(b, "}\n");
    if (b->overflow)
        return;
    while (c->push_count >= MAX_PUSHES || (c->push_count && c->push_bytes + b->len > MAX_PUSH_BYTES)) {
        push_t *old = &c->pushes[c->push_head];
        c->push_bytes -= old->len;
        free(old->data);
        c->push_head = (c->push_head + 1) % MAX_PUSHES;
        c->push_count--;
        c->pushes_dropped++;
        c->dropped_unreported++;
        s->pushes_dropped++;
    }
    p = &c->pushes[(c->push_head + c->push_count) % MAX_PUSHES];
    p->data = malloc(b->len);
    if (!p->data)
        return;
    memcpy(p->data, b->p, b->len);
    p->len = b->len;
    c->push_count++;
    c->push_bytes += b->len;
}

/* ---- apps registry ---- */

static app_t *app_of(gd_server *s, int client_id)
{
    int i;
    for (i = 0; i < MAX_APPS; i++)
        if (s->apps[i].used && s->apps[i].client_id == client_id)
            return &s->apps[i];
    return NULL;
}

static app_t *app_named(gd_server *s, const char *name)
{
    int i;
    for (i = 0; i < MAX_APPS; i++)
        if (s->apps[i].used && strcmp(s->apps[i].name, name) == 0)
            return &s->apps[i];
    return NULL;
}

static int app_effective(const app_t *a, double now, char *reason, size_t n)
{
    if (!a->client_id && strcmp(a->on_disconnect, "unhealthy") == 0) {
        snprintf(reason, n, "disconnected without unregistering");
        return 0;
    }
    if (a->timeout_ms && (now - a->last_seen) * 1000 > (double)a->timeout_ms) {
        snprintf(reason, n, "silent for %ld ms (timeout %ld ms)",
                 (long)((now - a->last_seen) * 1000), a->timeout_ms);
        return 0;
    }
    snprintf(reason, n, "%s", a->reason);
    return a->healthy;
}

static int cmp_apps(const void *x, const void *y)
{
    const app_t *a = *(app_t *const *)x, *b = *(app_t *const *)y;
    return strcmp(a->name, b->name);
}

static int sorted_apps(const gd_server *s, const app_t **out)
{
    int i, n = 0;
    for (i = 0; i < MAX_APPS; i++)
        if (s->apps[i].used)
            out[n++] = &s->apps[i];
    qsort(out, (size_t)n, sizeof out[0], cmp_apps);
    return n;
}

int gd_server_unhealthy(const gd_server *s, gj_buf *reason, double now, int count)
{
    const app_t *list[MAX_APPS];
    int i, n = sorted_apps(s, list);
    char why[1200];
    for (i = 0; i < n; i++)
        if (!app_effective(list[i], now, why, sizeof why)) {
            if (reason->len)
                gj_puts(reason, "; ");
            gj_puts(reason, "app ");
            gj_puts(reason, list[i]->name);
            gj_puts(reason, ": ");
            gj_puts(reason, why);
            count++;
        }
    return count;
}

static void client_gone(gd_server *s, client_t *c)
{
    app_t *a = app_of(s, c->id);
    int i, j;
    if (a) {
        a->client_id = 0;
        if (strcmp(a->on_disconnect, "forget") == 0) {
            a->used = 0;
            gd_log(GD_INFO, "app %s disconnected; forgotten", a->name);
        } else if (strcmp(a->on_disconnect, "unhealthy") == 0) {
            gd_log(GD_WARNING, "app %s disconnected without unregistering: unhealthy", a->name);
        } else {
            gd_log(GD_INFO, "app %s disconnected; its last report is kept", a->name);
        }
    }
    if (s->owner == c->id) {
        s->owner = 0;
        gd_log(GD_INFO, "server group: owner client %d went away", c->id);
    }
    if (s->inflight && s->q_waiter.client_id == c->id)
        s->q_waiter.client_id = 0;
    for (i = j = 0; i < s->nqueued; i++)
        if (s->queued[i].client_id != c->id)
            s->queued[j++] = s->queued[i];
    s->nqueued = j;
}

static void drop(gd_server *s, client_t *c)
{
    int i;
    for (i = 0; i < MAX_CLIENTS; i++)
        if (s->clients[i] == c)
            s->clients[i] = NULL;
    if (c->alive) {
        c->alive = 0;
        client_gone(s, c);
    }
    while (c->push_count) {
        free(c->pushes[c->push_head].data);
        c->push_head = (c->push_head + 1) % MAX_PUSHES;
        c->push_count--;
    }
    close(c->fd);
    free(c->out);
    free(c);
}

/* ---- server group relay ---- */

static void complete(gd_server *s, int client_id, gj_buf *b);

static void answer_error(gd_server *s, waiter_t *w, const char *text, const char *code,
                         const char *members_json)
{
    gj_buf b = reply_buf(s);
    put_error(&b, text, code);
    if (members_json) {
        gj_puts(&b, ",\"members\":");
        gj_puts(&b, members_json);
    }
    s->errors++;
    complete(s, w->client_id, &b);
    w->client_id = 0;
}

static void start_next(gd_server *s, double now)
{
    while (!s->inflight && s->nqueued) {
        waiter_t w = s->queued[0];
        char frame[GH_MAX_FRAME + 2];
        gj_buf out = {frame, 0, sizeof frame, 0};
        long long seq = s->next_seq;
        memmove(s->queued, s->queued + 1, sizeof(waiter_t) * (size_t)(--s->nqueued));
        if (!client_by_id(s, w.client_id))
            continue;
        s->next_seq = seq < GH_MAX_SEQ ? seq + 1 : 0;
        if (!s->host_connected) {
            answer_error(s, &w, "no host is connected to the channel", "no_host", NULL);
            continue;
        }
        if (gh_enc_status_query(&out, seq) || gh_guest_queue(s->guest, frame, out.len)) {
            answer_error(s, &w, "the channel's output buffer is full", "busy", NULL);
            continue;
        }
        s->sgc[C_QSENT]++;
        s->inflight = 1;
        s->q_seq = seq;
        s->q_waiter = w;
        s->members_len = 0;
        s->q_size = 0;
        s->q_truncated = 0;
    }
    (void)now;
}

static void finish_query(gd_server *s, gj_buf *b, double now)
{
    s->inflight = 0;
    complete(s, s->q_waiter.client_id, b);
    start_next(s, now);
}

void gd_server_sg(void *vs, const gh_msg *m, double now)
{
    gd_server *s = vs;
    client_t *owner = s->owner ? client_by_id(s, s->owner) : NULL;
    gj_buf b = reply_buf(s);
    if (strcmp(m->msg_type, "status_response") == 0 ||
        strcmp(m->msg_type, "status_response_done") == 0) {
        long long seq = gh_field(m, "seq")->ival;
        if (!s->inflight || seq != s->q_seq) {
            s->sgc[C_SSTALE]++;
            return;
        }
        if (m->msg_type[15] == '\0') { /* status_response */
            const gj_node *d = gh_field(m, "data");
            gj_buf mb;
            size_t size = gj_compact_size(d);
            s->sgc[C_SRECV]++;
            if (s->q_size + size > MAX_STATUS_REPLY) {
                s->q_truncated = 1;
                s->sgc[C_STRUNC]++;
                return;
            }
            mb.p = s->members;
            mb.len = s->members_len;
            mb.cap = MAX_STATUS_REPLY + 4096;
            mb.overflow = 0;
            if (mb.len)
                gj_puts(&mb, ",");
            gj_put_value(&mb, d);
            s->members_len = mb.len;
            s->q_size += size;
            return;
        }
        gj_puts(&b, "{\"ok\":true,\"seq\":");
        gj_put_int(&b, s->q_seq);
        gj_puts(&b, ",\"members\":[");
        gj_put(&b, s->members, s->members_len);
        gj_puts(&b, s->q_truncated ? "],\"truncated\":true" : "]");
        finish_query(s, &b, now);
        return;
    }
    if (strcmp(m->msg_type, "broadcast") == 0) {
        s->sgc[C_BRECV]++;
        gj_puts(&b, "{\"push\":\"broadcast\",\"source_instance\":");
        gj_put_value(&b, gh_field(m, "source_instance"));
        gj_puts(&b, ",\"data\":");
        gj_put_value(&b, gh_field(m, "data"));
    } else if (strcmp(m->msg_type, "notification") == 0) {
        s->sgc[C_NRECV]++;
        gj_puts(&b, "{\"push\":\"notification\",\"data\":");
        gj_put_value(&b, gh_field(m, "data"));
    } else if (strcmp(m->msg_type, "nack") == 0) {
        const gj_node *orig = gh_field(m, "orig_msg_type"), *log = gh_field(m, "log_msg");
        const char *sep = strstr(log->str, ": ");
        char code[520];
        if (sep)
            snprintf(code, sizeof code, "%.*s", (int)(sep - log->str), log->str);
        else
            snprintf(code, sizeof code, "%s", log->len ? log->str : "unknown");
        s->sgc[C_NACKS]++;
        gd_log(GD_INFO, "server group: host refused %s: %s", orig->len ? orig->str : "a frame",
               log->str);
        if (gj_streq(orig, "status_query") && s->inflight) {
            gj_buf e = reply_buf(s);
            char text[700];
            snprintf(text, sizeof text, "the host refused the status query: %s", log->str);
            put_error(&e, text, "nacked");
            gj_puts(&e, ",\"nack_code\":");
            gj_put_string(&e, code, strlen(code));
            gj_puts(&e, ",\"log_msg\":");
            gj_put_value(&e, log);
            s->errors++;
            finish_query(s, &e, now);
        }
        b = reply_buf(s);
        gj_puts(&b, "{\"push\":\"nack\",\"orig_msg_type\":");
        gj_put_value(&b, orig);
        gj_puts(&b, ",\"log_msg\":");
        gj_put_value(&b, log);
        gj_puts(&b, ",\"code\":");
        gj_put_string(&b, code, strlen(code));
    } else {
        return;
    }
    if (!owner)
        s->sgc[C_DROPPED]++;
    else
        push(s, owner, &b);
}

/* ---- ops ---- */

static int name_ok(const gj_node *n)
{
    size_t i;
    if (!n || n->type != GJ_STRING || n->len < 1 || n->len > 64)
        return 0;
    for (i = 0; i < n->len; i++) {
        char c = n->str[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              strchr("._:@-", c)) || c == '\0')
            return 0;
    }
    return 1;
}

static int is_int(const gj_node *n) { return n && n->type == GJ_INT; }

/* Returns 1 when the op deferred its reply. */
static int run_op(gd_server *s, client_t *c, const gj_node *req, const gj_node *op,
                  gj_buf *b, double now)
{
    char text[400];
    if (gj_streq(op, "register")) {
        const gj_node *name = gj_get(req, "name"), *t = gj_get(req, "timeout_ms"),
                      *od = gj_get(req, "on_disconnect");
        long timeout = 0;
        const char *ond = "unhealthy";
        app_t *mine, *a;
        int i;
        if (!name_ok(name)) {
            put_error(b, "name must be 1-64 characters of A-Z a-z 0-9 . _ : @ -", NULL);
            return -1;
        }
        if (t && t->type != GJ_NULL) {
            if (!is_int(t) || !(t->ival == 0 || (t->ival >= 100 && t->ival <= 86400000))) {
                put_error(b, "timeout_ms must be 0 (no timeout) or between 100 and 86400000",
                          NULL);
                return -1;
            }
            timeout = (long)t->ival;
        }
        if (od) {
            if (gj_streq(od, "unhealthy") || gj_streq(od, "forget") || gj_streq(od, "keep"))
                ond = od->str;
            else {
                put_error(b, "on_disconnect must be one of unhealthy, forget, keep", NULL);
                return -1;
            }
        }
        mine = app_of(s, c->id);
        if (mine && strcmp(mine->name, name->str) != 0) {
            snprintf(text, sizeof text,
                     "this connection is registered as '%s'; unregister first", mine->name);
            put_error(b, text, NULL);
            return -1;
        }
        a = app_named(s, name->str);
        if (a && a->client_id && a->client_id != c->id) {
            snprintf(text, sizeof text, "app '%s' is registered by another connected client",
                     name->str);
            put_error(b, text, NULL);
            return -1;
        }
        if (!a) {
            for (i = 0; i < MAX_APPS && s->apps[i].used; i++)
                ;
            if (i == MAX_APPS) {
                put_error(b, "too many registered apps (limit 64)", NULL);
                return -1;
            }
            a = &s->apps[i];
            memset(a, 0, sizeof(*a));
            a->used = 1;
            a->healthy = 1;
            snprintf(a->name, sizeof a->name, "%s", name->str);
            gd_log(GD_INFO, "app %s registered (timeout %ld ms)", a->name, timeout);
        } else if (!a->client_id) {
            gd_log(GD_INFO, "app %s registered again", a->name);
        }
        a->timeout_ms = timeout;
        snprintf(a->on_disconnect, sizeof a->on_disconnect, "%s", ond);
        a->client_id = c->id;
        a->last_seen = now;
        gj_puts(b, "{\"ok\":true,\"name\":");
        gj_put_string(b, a->name, strlen(a->name));
        gj_puts(b, ",\"timeout_ms\":");
        gj_put_int(b, a->timeout_ms);
        gj_puts(b, ",\"on_disconnect\":");
        gj_put_string(b, a->on_disconnect, strlen(a->on_disconnect));
        return 0;
    }
    if (gj_streq(op, "report")) {
        app_t *a = app_of(s, c->id);
        const gj_node *h = gj_get(req, "healthy"), *r = gj_get(req, "reason");
        char reason[1100] = "";
        if (!a) {
            put_error(b, "not registered: send register first", NULL);
            return -1;
        }
        if (!h || (h->type != GJ_TRUE && h->type != GJ_FALSE)) {
            put_error(b, "healthy must be true or false", NULL);
            return -1;
        }
        if (r && r->type != GJ_NULL) {
            char *p;
            if (r->type != GJ_STRING) {
                put_error(b, "reason must be a string", NULL);
                return -1;
            }
            gh_printable(reason, sizeof reason, r->str, r->len, 256);
            for (p = reason; *p; p++)
                if (*p == 0x7F)
                    *p = ' ';
        }
        if (a->healthy != (h->type == GJ_TRUE))
            gd_log(h->type == GJ_TRUE ? GD_INFO : GD_WARNING, "app %s reports %s%s%s%s", a->name,
                   h->type == GJ_TRUE ? "healthy" : "unhealthy", *reason ? " (" : "", reason,
                   *reason ? ")" : "");
        a->healthy = h->type == GJ_TRUE;
        snprintf(a->reason, sizeof a->reason, "%s", reason);
        a->last_seen = now;
        a->reports++;
        gj_puts(b, "{\"ok\":true,\"name\":");
        gj_put_string(b, a->name, strlen(a->name));
        gj_puts(b, a->healthy ? ",\"healthy\":true" : ",\"healthy\":false");
        return 0;
    }
    if (gj_streq(op, "unregister")) {
        app_t *a = app_of(s, c->id);
        if (!a) {
            put_error(b, "not registered", NULL);
            return -1;
        }
        gd_log(GD_INFO, "app %s unregistered", a->name);
        a->used = 0;
        gj_puts(b, "{\"ok\":true,\"name\":");
        gj_put_string(b, a->name, strlen(a->name));
        return 0;
    }
    if (gj_streq(op, "status")) {
        gj_puts(b, "{\"ok\":true,");
        s->status(s->ctx, b, now);
        return 0;
    }
    if (gj_streq(op, "sg_subscribe")) {
        client_t *owner = s->owner ? client_by_id(s, s->owner) : NULL;
        if (owner && owner != c) {
            s->sgc[C_REFUSED]++;
            snprintf(text, sizeof text,
                     "the server group role is owned by another app (client %d%s); "
                     "only one app per guest may subscribe", owner->id, "");
            put_error(b, text, "owner_taken");
            gj_puts(b, ",\"owner_pid\":");
            if (owner->pid > 0)
                gj_put_int(b, owner->pid);
            else
                gj_puts(b, "null");
            return -1;
        }
        if (owner != c) {
            s->owner = c->id;
            gd_log(GD_INFO, "server group: client %d subscribed", c->id);
        }
        gj_puts(b, s->host_connected ? "{\"ok\":true,\"subscribed\":true,\"host_connected\":true"
                                     : "{\"ok\":true,\"subscribed\":true,\"host_connected\":false");
        return 0;
    }
    if (gj_streq(op, "sg_unsubscribe")) {
        if (s->owner != c->id) {
            put_error(b, "this connection is not subscribed", "not_owner");
            return -1;
        }
        s->owner = 0;
        gd_log(GD_INFO, "server group: client %d unsubscribed", c->id);
        gj_puts(b, "{\"ok\":true,\"subscribed\":false");
        return 0;
    }
    if (gj_streq(op, "sg_broadcast")) {
        const gj_node *d = gj_get(req, "data");
        char frame[GH_MAX_FRAME + 2];
        gj_buf out = {frame, 0, sizeof frame, 0};
        size_t size;
        if (!d) {
            put_error(b, "sg_broadcast needs a data field (any JSON value)", "invalid");
            return -1;
        }
        size = gj_compact_size(d);
        if (size > GH_MAX_BROADCAST_BYTES) {
            snprintf(text, sizeof text,
                     "data is %zu bytes (compact UTF-8 JSON), over the 3050-byte limit", size);
            put_error(b, text, "too_large");
            gj_puts(b, ",\"limit\":3050,\"size\":");
            gj_put_int(b, (long long)size);
            return -1;
        }
        if (gj_depth(d) > GH_JSON_MAX_DEPTH - 2) {
            snprintf(text, sizeof text,
                     "data nests %d levels deep; at most %d fit in a PDU (docs/protocol.md 4.3)",
                     gj_depth(d), GH_JSON_MAX_DEPTH - 2);
            put_error(b, text, "invalid");
            return -1;
        }
        if (!s->host_connected) {
            put_error(b, "no host is connected to the channel; nothing can be sent now",
                      "no_host");
            return -1;
        }
        if (!gh_bucket_consume(&s->bucket, now)) {
            s->sgc[C_RATE]++;
            snprintf(text, sizeof text,
                     "broadcast refused: over the local server group rate limit (%g/s, burst %g)",
                     s->bucket.rate, s->bucket.burst);
            put_error(b, text, "rate_limited");
            return -1;
        }
        if (gh_enc_broadcast(&out, d) || gh_guest_queue(s->guest, frame, out.len)) {
            put_error(b, "the channel's output buffer is full; try again", "busy");
            return -1;
        }
        s->sgc[C_BSENT]++;
        gj_puts(b, "{\"ok\":true,\"bytes\":");
        gj_put_int(b, (long long)size);
        return 0;
    }
    if (gj_streq(op, "sg_status")) {
        const gj_node *t = gj_get(req, "timeout_ms");
        long timeout = s->cfg->sg_status_timeout_ms;
        if (t && t->type != GJ_NULL) {
            if (!is_int(t) || t->ival < 100 || t->ival > 60000) {
                put_error(b, "timeout_ms must be an integer between 100 and 60000", "invalid");
                return -1;
            }
            timeout = (long)t->ival;
        }
        if (!s->host_connected) {
            put_error(b, "no host is connected to the channel; nothing can be sent now",
                      "no_host");
            return -1;
        }
        if (s->nqueued >= MAX_QUEUED_STATUS) {
            put_error(b, "too many status queries waiting", "busy");
            return -1;
        }
        if (!gh_bucket_consume(&s->bucket, now)) {
            s->sgc[C_RATE]++;
            snprintf(text, sizeof text,
                     "status_query refused: over the local server group rate limit "
                     "(%g/s, burst %g)", s->bucket.rate, s->bucket.burst);
            put_error(b, text, "rate_limited");
            return -1;
        }
        s->queued[s->nqueued].client_id = c->id;
        s->queued[s->nqueued].deadline = now + (double)timeout / 1000.0;
        s->queued[s->nqueued].timeout_ms = timeout;
        s->nqueued++;
        return 1;
    }
    snprintf(text, sizeof text,
             "unknown op '%.64s' (known: register, report, sg_broadcast, sg_status, "
             "sg_subscribe, sg_unsubscribe, status, unregister)",
             op->str);
    put_error(b, text, NULL);
    return -1;
}

static void process_lines(gd_server *s, client_t *c, double now);

static void dispatch(gd_server *s, client_t *c, const char *line, size_t len, double now)
{
    gj_doc doc;
    gj_buf b = reply_buf(s);
    char id[80] = "";
    int rc;
    s->requests++;
    if (gj_parse(&doc, line, len, GH_JSON_MAX_DEPTH)) {
        put_error(&b, "request is not valid UTF-8 JSON", NULL);
        rc = -1;
    } else if (doc.root->type != GJ_OBJECT) {
        put_error(&b, "request must be a JSON object", NULL);
        rc = -1;
    } else {
        const gj_node *rid = gj_get(doc.root, "id"), *op = gj_get(doc.root, "op");
        if (rid && rid->type != GJ_NULL) {
            if (rid->type == GJ_INT || (rid->type == GJ_STRING && rid->nchars <= 64)) {
                gj_buf ib = {id, 0, sizeof id - 1, 0};
                gj_put_value(&ib, rid);
                id[ib.overflow ? 0 : ib.len] = '\0';
            }
        }
        if (rid && rid->type != GJ_NULL && !id[0]) {
            put_error(&b, "id must be an integer or a string of at most 64", NULL);
            rc = -1;
        } else if (!op || op->type != GJ_STRING) {
            put_error(&b, "request lacks a string 'op'", NULL);
            rc = -1;
        } else {
            rc = run_op(s, c, doc.root, op, &b, now);
        }
    }
    gj_free(&doc);
    if (rc == 1) {
        c->waiting = 1;
        snprintf(c->waiting_id, sizeof c->waiting_id, "%s", id);
        start_next(s, now);
        return;
    }
    if (rc < 0)
        s->errors++;
    finish_line(c, &b, id);
}

static void complete(gd_server *s, int client_id, gj_buf *b)
{
    client_t *c = client_by_id(s, client_id);
    if (!c || !c->waiting)
        return;
    c->waiting = 0;
    finish_line(c, b, c->waiting_id);
    c->waiting_id[0] = '\0';
    process_lines(s, c, 0);
}

static void fatal(gd_server *s, client_t *c, const char *error)
{
    queue_error(s, c, error, NULL, NULL);
    c->in_len = 0;
    c->closing = 1;
}

static void process_lines(gd_server *s, client_t *c, double now)
{
    if (now == 0)
        now = gd_now();
    while (!c->closing && !c->waiting && c->alive) {
        char *nl = memchr(c->in, '\n', c->in_len);
        size_t len;
        if (!nl) {
            if (c->in_len > MAX_LINE)
                fatal(s, c, "request line longer than 16384 bytes");
            break;
        }
        len = (size_t)(nl - c->in);
        if (len > MAX_LINE) {
            fatal(s, c, "request line longer than 16384 bytes");
            break;
        }
        {
            size_t i;
            int blank = 1;
            for (i = 0; i < len && blank; i++)
                blank = strchr(" \t\r\n\v\f", c->in[i]) && c->in[i];
            if (!blank)
                dispatch(s, c, c->in, len, now);
        }
        memmove(c->in, nl + 1, c->in_len - len - 1);
        c->in_len -= len + 1;
    }
}

/* ---- socket plumbing ---- */

gd_server *gd_server_new(const char *path, gh_guest *guest, const gd_config *cfg,
                         gd_status_fn status, void *ctx, double now)
{
    gd_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    snprintf(s->path, sizeof s->path, "%s", path);
    s->sock = -1;
    s->next_id = 1;
    s->guest = guest;
    s->cfg = cfg;
    s->status = status;
    s->ctx = ctx;
    s->reply = malloc(REPLY_CAP);
    s->members = malloc(MAX_STATUS_REPLY + 4096);
    gh_bucket_init(&s->bucket, (double)cfg->sg_rate_per_s, (double)cfg->sg_burst, now);
    s->next_seq = 1 + (long long)(((unsigned long)getpid() * 2654435761UL ^
                                    (unsigned long)(now * 1e6)) % 2147483646UL);
    if (!s->reply || !s->members) {
        free(s->reply);
        free(s->members);
        free(s);
        return NULL;
    }
    return s;
}

static int mkdirs(const char *dir)
{
    char tmp[GD_PATH_MAX];
    char *p;
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    if (mkdir(tmp, 0755) && errno != EEXIST)
        return -1;
    return 0;
}

int gd_server_start(gd_server *s)
{
    struct sockaddr_un sa;
    struct stat st;
    char parent[GD_PATH_MAX];
    char *slash;
    mode_t old;
    int fd;
    snprintf(parent, sizeof parent, "%s", s->path);
    slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = '\0';
        if (mkdirs(parent))
            return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", s->path);
    if (lstat(s->path, &st) == 0) {
        int probe;
        if (!S_ISSOCK(st.st_mode)) {
            errno = EEXIST;
            return -1;
        }
        probe = socket(AF_UNIX, SOCK_STREAM, 0);
        if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
            close(probe);
            errno = EADDRINUSE;
            return -1;
        }
        if (probe >= 0)
            close(probe);
        unlink(s->path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    old = umask(0117);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa)) {
        int e = errno;
        umask(old);
        close(fd);
        errno = e;
        return -1;
    }
    umask(old);
    chmod(s->path, 0660);
    if (listen(fd, 16)) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    s->sock = fd;
    return 0;
}

void gd_server_poll(gd_server *s, gd_pollset *ps, int owner)
{
    int i;
    if (s->sock >= 0)
        gd_poll_add(ps, s->sock, POLLIN, owner);
    for (i = 0; i < MAX_CLIENTS; i++) {
        client_t *c = s->clients[i];
        short ev;
        if (!c)
            continue;
        ev = (c->closing || c->waiting) ? 0 : POLLIN;
        if (c->out_len || c->push_count)
            ev |= POLLOUT;
        gd_poll_add(ps, c->fd, ev, owner);
    }
}

static void accept_clients(gd_server *s)
{
    int k;
    for (k = 0; k < 16; k++) {
        int fd = accept(s->sock, NULL, NULL), i;
        client_t *c;
        struct ucred cred;
        socklen_t cl = sizeof cred;
        if (fd < 0)
            return;
        fcntl(fd, F_SETFL, O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        for (i = 0; i < MAX_CLIENTS && s->clients[i]; i++)
            ;
        if (i == MAX_CLIENTS || !(c = calloc(1, sizeof(*c)))) {
            static const char msg[] = "{\"ok\":false,\"error\":\"too many clients\"}\n";
            s->rejected++;
            if (send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
            }
            close(fd);
            continue;
        }
        s->connections++;
        c->fd = fd;
        c->id = s->next_id++;
        c->alive = 1;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 && cred.pid > 0)
            c->pid = cred.pid;
        s->clients[i] = c;
    }
}

static void refill(client_t *c)
{
    if (c->dropped_unreported && c->push_count) {
        char line[80];
        int n = snprintf(line, sizeof line, "{\"push\":\"dropped\",\"count\":%lu}\n",
                         c->dropped_unreported);
        out_append(c, line, (size_t)n);
        c->dropped_unreported = 0;
    }
    while (c->push_count && c->out_len < PUSH_CHUNK) {
        push_t *p = &c->pushes[c->push_head];
        out_append(c, p->data, p->len);
        c->push_bytes -= p->len;
        free(p->data);
        c->push_head = (c->push_head + 1) % MAX_PUSHES;
        c->push_count--;
    }
}

/* Returns -1 when the client was dropped. */
static int write_client(gd_server *s, client_t *c)
{
    for (;;) {
        ssize_t n;
        if (!c->out_len) {
            refill(c);
            if (!c->out_len)
                break;
        }
        n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        if (n < 0) {
            drop(s, c);
            return -1;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    if (c->out_len > MAX_CLIENT_OUTPUT) {
        gd_log(GD_WARNING, "app client %d does not read its replies; dropping it", c->id);
        drop(s, c);
        return -1;
    }
    if (c->closing && !c->out_len) {
        drop(s, c);
        return -1;
    }
    return 0;
}

void gd_server_handle(gd_server *s, int fd, short revents, double now)
{
    int i;
    client_t *c = NULL;
    if (fd == s->sock) {
        accept_clients(s);
        return;
    }
    for (i = 0; i < MAX_CLIENTS; i++)
        if (s->clients[i] && s->clients[i]->fd == fd)
            c = s->clients[i];
    if (!c)
        return;
    if ((revents & (POLLIN | POLLHUP | POLLERR)) && !c->closing && !c->waiting) {
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            drop(s, c);
            return;
        }
        if (n > 0) {
            c->in_len += (size_t)n;
            process_lines(s, c, now);
        }
    }
    if ((revents & POLLOUT) || c->out_len)
        if (write_client(s, c))
            return;
    if ((revents & (POLLHUP | POLLERR | POLLNVAL)) && (c->closing || !c->out_len))
        drop(s, c);
}

void gd_server_flush(gd_server *s, double now)
{
    int i;
    (void)now;
    for (i = 0; i < MAX_CLIENTS; i++)
        if (s->clients[i] && (s->clients[i]->out_len || s->clients[i]->push_count))
            write_client(s, s->clients[i]);
}

void gd_server_tick(gd_server *s, double now, int host_connected)
{
    int i, j;
    s->host_connected = host_connected;
    if (s->was_connected && !host_connected) {
        waiter_t w;
        if (s->inflight) {
            s->inflight = 0;
            w = s->q_waiter;
            answer_error(s, &w, "the host disconnected from the channel", "no_host", NULL);
        }
        while (s->nqueued) {
            w = s->queued[--s->nqueued];
            answer_error(s, &w, "the host disconnected from the channel", "no_host", NULL);
        }
    }
    s->was_connected = host_connected;
    if (s->inflight && now >= s->q_waiter.deadline) {
        char text[200];
        gj_buf b = reply_buf(s);
        s->sgc[C_STIMEOUT]++;
        snprintf(text, sizeof text, "no complete status answer within %ld ms",
                 s->q_waiter.timeout_ms);
        put_error(&b, text, "timeout");
        gj_puts(&b, ",\"members\":[");
        gj_put(&b, s->members, s->members_len);
        gj_puts(&b, "]");
        s->errors++;
        finish_query(s, &b, now);
    }
    for (i = j = 0; i < s->nqueued; i++) {
        if (now >= s->queued[i].deadline) {
            char text[200];
            s->sgc[C_STIMEOUT]++;
            snprintf(text, sizeof text,
                     "status query timed out after %ld ms waiting for an earlier query",
                     s->queued[i].timeout_ms);
            answer_error(s, &s->queued[i], text, "timeout", "[]");
        } else {
            s->queued[j++] = s->queued[i];
        }
    }
    s->nqueued = j;
}

double gd_server_next_deadline(const gd_server *s, double now)
{
    double t = -1;
    int i;
    char why[1200];
    if (s->inflight)
        t = s->q_waiter.deadline;
    for (i = 0; i < s->nqueued; i++)
        if (t < 0 || s->queued[i].deadline < t)
            t = s->queued[i].deadline;
    for (i = 0; i < MAX_APPS; i++) { /* an app's silence timeout running out */
        const app_t *a = &s->apps[i];
        double at;
        if (!a->used || !a->timeout_ms || !app_effective(a, now, why, sizeof why))
            continue;
        at = a->last_seen + (double)a->timeout_ms / 1000.0 + 0.001;
        if (t < 0 || at < t)
            t = at;
    }
    return t;
}

void gd_server_status(const gd_server *s, gj_buf *b, double now, int part)
{
    const app_t *list[MAX_APPS];
    client_t *owner = s->owner ? client_by_id((gd_server *)s, s->owner) : NULL;
    int i, n;
    char why[1200];
    if (part) {
        gj_puts(b, "{\"connections\":");
        goto counters;
    }
    gj_puts(b, "\"server_group\":{\"owner\":");
    if (owner) {
        gj_puts(b, "{\"client\":");
        gj_put_int(b, owner->id);
        gj_puts(b, ",\"pid\":");
        gj_put_int(b, owner->pid);
        gj_puts(b, ",\"pushes_dropped\":");
        gj_put_int(b, (long long)owner->pushes_dropped);
        gj_puts(b, "}");
    } else {
        gj_puts(b, "null");
    }
    gj_puts(b, s->host_connected ? ",\"host_connected\":true" : ",\"host_connected\":false");
    gj_puts(b, ",\"status_query_in_flight\":");
    if (s->inflight)
        gj_put_int(b, s->q_seq);
    else
        gj_puts(b, "null");
    gj_puts(b, ",\"status_queries_waiting\":");
    gj_put_int(b, s->nqueued);
    gj_puts(b, ",\"rate_per_s\":");
    gj_put_int(b, s->cfg->sg_rate_per_s);
    gj_puts(b, ",\"burst\":");
    gj_put_int(b, s->cfg->sg_burst);
    gj_puts(b, ",\"counters\":{");
    for (i = 0; i < C_N; i++) {
        if (i)
            gj_puts(b, ",");
        gj_put_string(b, sg_counter_names[i], strlen(sg_counter_names[i]));
        gj_puts(b, ":");
        gj_put_int(b, (long long)s->sgc[i]);
    }
    gj_puts(b, "}},\"apps\":[");
    n = sorted_apps(s, list);
    for (i = 0; i < n; i++) {
        const app_t *a = list[i];
        int healthy = app_effective(a, now, why, sizeof why);
        if (i)
            gj_puts(b, ",");
        gj_puts(b, "{\"name\":");
        gj_put_string(b, a->name, strlen(a->name));
        gj_puts(b, healthy ? ",\"healthy\":true,\"reason\":" : ",\"healthy\":false,\"reason\":");
        gj_put_string(b, why, strlen(why));
        gj_puts(b, a->healthy ? ",\"reported_healthy\":true" : ",\"reported_healthy\":false");
        gj_puts(b, ",\"reported_reason\":");
        gj_put_string(b, a->reason, strlen(a->reason));
        gj_puts(b, a->client_id ? ",\"connected\":true" : ",\"connected\":false");
        gj_puts(b, ",\"timeout_ms\":");
        gj_put_int(b, a->timeout_ms);
        gj_puts(b, ",\"on_disconnect\":");
        gj_put_string(b, a->on_disconnect, strlen(a->on_disconnect));
        gj_puts(b, ",\"last_seen_age_ms\":");
        gj_put_int(b, (long long)((now - a->last_seen) * 1000));
        gj_puts(b, ",\"reports\":");
        gj_put_int(b, (long long)a->reports);
        gj_puts(b, "}");
    }
    gj_puts(b, "]");
    return;
counters:
    gj_put_int(b, (long long)s->connections);
    gj_puts(b, ",\"rejected\":");
    gj_put_int(b, (long long)s->rejected);
    gj_puts(b, ",\"requests\":");
    gj_put_int(b, (long long)s->requests);
    gj_puts(b, ",\"errors\":");
    gj_put_int(b, (long long)s->errors);
    gj_puts(b, ",\"pushes\":");
    gj_put_int(b, (long long)s->pushes);
    gj_puts(b, ",\"pushes_dropped\":");
    gj_put_int(b, (long long)s->pushes_dropped);
    gj_puts(b, "}");
}

void gd_server_close(gd_server *s)
{
    int i;
    for (i = 0; i < MAX_CLIENTS; i++)
        if (s->clients[i]) {
            s->clients[i]->alive = 0; /* quiet: no app state changes at shutdown */
            drop(s, s->clients[i]);
        }
    if (s->sock >= 0) {
        close(s->sock);
        s->sock = -1;
        unlink(s->path);
    }
}
