/* gh_app.c - the app hooks client (guestha_app.h): requests with ids, replies
 * matched by id, pushes dispatched to callbacks. */
#include "guestha_app.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "gh_json.h"

#define LINE_MAX_BYTES (4 * 1024 * 1024)

struct gha_app {
    int fd;
    long next_id, status_id;
    char *in;
    size_t in_len, in_cap;
    char error[600], code[64];
    gha_health_fn health;
    void *health_ctx;
    long period_ms;
    double next_health;
    gha_broadcast_fn on_broadcast;
    void *broadcast_ctx;
    gha_notification_fn on_notification;
    void *notification_ctx;
    gha_status_fn on_status;
    void *status_ctx;
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int set_error(gha_app *app, const char *text, const char *code)
{
    snprintf(app->error, sizeof app->error, "%s", text);
    snprintf(app->code, sizeof app->code, "%s", code ? code : "");
    return -1;
}

gha_app *gha_app_open(const char *path)
{
    struct sockaddr_un sa;
    gha_app *app;
    int fd;
    path = path ? path : "/run/guest-ha/app.sock";
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return NULL;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    app = calloc(1, sizeof(*app));
    if (!app) {
        close(fd);
        return NULL;
    }
    app->fd = fd;
    app->next_id = 1;
    return app;
}

void gha_app_close(gha_app *app)
{
    if (!app)
        return;
    close(app->fd);
    free(app->in);
    free(app);
}

int gha_app_fd(const gha_app *app) { return app->fd; }
const char *gha_app_error(const gha_app *app) { return app->error; }
const char *gha_app_error_code(const gha_app *app) { return app->code; }

void gha_app_on_broadcast(gha_app *app, gha_broadcast_fn fn, void *ctx)
{
    app->on_broadcast = fn;
    app->broadcast_ctx = ctx;
}

void gha_app_on_notification(gha_app *app, gha_notification_fn fn, void *ctx)
{
    app->on_notification = fn;
    app->notification_ctx = ctx;
}

void gha_app_on_status(gha_app *app, gha_status_fn fn, void *ctx)
{
    app->on_status = fn;
    app->status_ctx = ctx;
}

void gha_app_set_health_callback(gha_app *app, gha_health_fn fn, void *ctx, long period_ms)
{
    app->health = fn;
    app->health_ctx = ctx;
    app->period_ms = period_ms > 0 ? period_ms : 1000;
    app->next_health = mono();
}

static char *value_text(const gj_node *n)
{
    gj_buf b = {NULL, 0, 0, 0};
    char *p;
    if (!n)
        return strdup("null");
    gj_put_value(&b, n);
    p = malloc(b.len + 1);
    if (!p)
        return NULL;
    b.p = p;
    b.cap = b.len + 1;
    b.len = 0;
    gj_put_value(&b, n);
    p[b.len] = '\0';
    return p;
}

static void dispatch_push(gha_app *app, const gj_node *msg)
{
    const gj_node *kind = gj_get(msg, "push");
    char *data = value_text(gj_get(msg, "data"));
    if (!data)
        return;
    if (gj_streq(kind, "broadcast") && app->on_broadcast) {
        const gj_node *src = gj_get(msg, "source_instance");
        app->on_broadcast(app->broadcast_ctx, src && src->type == GJ_STRING ? src->str : "",
                          data);
    } else if (gj_streq(kind, "notification") && app->on_notification) {
        app->on_notification(app->notification_ctx, data);
    }
    free(data);
}

static void status_answer(gha_app *app, const gj_node *reply)
{
    const gj_node *ok = gj_get(reply, "ok"), *err = gj_get(reply, "error");
    char *members = value_text(gj_get(reply, "members"));
    app->status_id = 0;
    if (app->on_status && members)
        app->on_status(app->status_ctx, ok && ok->type == GJ_TRUE,
                       gj_get(reply, "members") ? members : "[]",
                       err && err->type == GJ_STRING ? err->str : NULL);
    free(members);
}

/* Read lines until the reply with id `want` (0: just what is there now, within
 * timeout_ms). A reply for `want` is parsed into doc (caller frees) and 1 is
 * returned; 0 when none yet; -1 when the connection broke. */
static int pump(gha_app *app, long want, gj_doc *doc, int timeout_ms)
{
    for (;;) {
        char *nl;
        while ((nl = app->in ? memchr(app->in, '\n', app->in_len) : NULL)) {
            size_t len = (size_t)(nl - app->in);
            gj_doc d;
            int mine = 0;
            if (gj_parse(&d, app->in, len, 512) == 0 && d.root->type == GJ_OBJECT) {
                const gj_node *id = gj_get(d.root, "id");
                if (gj_get(d.root, "push")) {
                    dispatch_push(app, d.root);
                } else if (id && id->type == GJ_INT && app->status_id && id->ival == app->status_id) {
                    status_answer(app, d.root);
                } else if (want && id && id->type == GJ_INT && id->ival == want) {
                    mine = 1;
                } else if (want && !id) { /* an error sent before the id was known */
                    mine = 1;
                }
            }
            memmove(app->in, nl + 1, app->in_len - len - 1);
            app->in_len -= len + 1;
            if (mine) {
                *doc = d;
                return 1;
            }
            gj_free(&d);
        }
        {
            struct pollfd p = {app->fd, POLLIN, 0};
            ssize_t n;
            int r = poll(&p, 1, timeout_ms);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return 0;
            if (app->in_len + 65536 > app->in_cap) {
                size_t cap = app->in_cap ? app->in_cap * 2 : 131072;
                char *q;
                if (cap > LINE_MAX_BYTES * 2) {
                    set_error(app, "reply line too long", NULL);
                    return -1;
                }
                q = realloc(app->in, cap);
                if (!q)
                    return -1;
                app->in = q;
                app->in_cap = cap;
            }
            n = recv(app->fd, app->in + app->in_len, app->in_cap - app->in_len, 0);
            if (n <= 0) {
                set_error(app, "the daemon closed the connection", NULL);
                return -1;
            }
            app->in_len += (size_t)n;
            if (want)
                timeout_ms = 30000; /* a reply is owed: wait for it */
        }
    }
}

static int send_line(gha_app *app, const char *line, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(app->fd, line + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return set_error(app, strerror(errno), NULL);
        off += (size_t)n;
    }
    return 0;
}

/* Send {"op":op,"id":N<fields>} and wait for its reply. fields: ",\"k\":v..." */
static int request(gha_app *app, const char *op, const char *fields, int defer)
{
    static char line[32768];
    long id = app->next_id++;
    int n = snprintf(line, sizeof line, "{\"op\":\"%s\",\"id\":%ld%s}\n", op, id, fields);
    gj_doc doc;
    int rc;
    if (n < 0 || (size_t)n >= sizeof line)
        return set_error(app, "request too long", "too_large");
    if (send_line(app, line, (size_t)n))
        return -1;
    if (defer) {
        app->status_id = id;
        return 0;
    }
    rc = pump(app, id, &doc, 30000);
    if (rc <= 0)
        return rc == 0 ? set_error(app, "no reply from the daemon", "timeout") : -1;
    if (gj_get(doc.root, "ok") && gj_get(doc.root, "ok")->type == GJ_TRUE) {
        app->error[0] = app->code[0] = '\0';
        rc = 0;
    } else {
        const gj_node *e = gj_get(doc.root, "error"), *c = gj_get(doc.root, "code");
        rc = set_error(app, e && e->type == GJ_STRING ? e->str : "request failed",
                       c && c->type == GJ_STRING ? c->str : NULL);
    }
    gj_free(&doc);
    return rc;
}

static void quoted(gj_buf *b, const char *key, const char *s)
{
    gj_puts(b, ",\"");
    gj_puts(b, key);
    gj_puts(b, "\":");
    gj_put_string(b, s, strlen(s));
}

int gha_app_register(gha_app *app, const char *name, long timeout_ms, const char *on_disconnect)
{
    char f[512];
    gj_buf b = {f, 0, sizeof f - 1, 0};
    quoted(&b, "name", name);
    gj_puts(&b, ",\"timeout_ms\":");
    gj_put_int(&b, timeout_ms);
    quoted(&b, "on_disconnect", on_disconnect ? on_disconnect : "unhealthy");
    if (b.overflow)
        return set_error(app, "name too long", NULL);
    f[b.len] = '\0';
    return request(app, "register", f, 0);
}

int gha_app_report(gha_app *app, int healthy, const char *reason)
{
    char f[4096];
    gj_buf b = {f, 0, sizeof f - 1, 0};
    gj_puts(&b, healthy ? ",\"healthy\":true" : ",\"healthy\":false");
    quoted(&b, "reason", reason ? reason : "");
    if (b.overflow)
        return set_error(app, "reason too long", NULL);
    f[b.len] = '\0';
    return request(app, "report", f, 0);
}

int gha_app_unregister(gha_app *app) { return request(app, "unregister", "", 0); }
int gha_app_subscribe(gha_app *app) { return request(app, "sg_subscribe", "", 0); }

int gha_app_broadcast(gha_app *app, const char *data_json)
{
    static char f[24576];
    gj_doc d;
    gj_buf b = {f, 0, sizeof f - 1, 0};
    if (gj_parse(&d, data_json, strlen(data_json), 128)) {
        gj_free(&d);
        return set_error(app, "data is not valid JSON", "invalid");
    }
    gj_puts(&b, ",\"data\":");
    gj_put_value(&b, d.root);
    gj_free(&d);
    if (b.overflow)
        return set_error(app, "data too large", "too_large");
    f[b.len] = '\0';
    return request(app, "sg_broadcast", f, 0);
}

int gha_app_request_status(gha_app *app, long timeout_ms)
{
    char f[64] = "";
    if (app->status_id)
        return set_error(app, "a status request is already pending", "busy");
    if (timeout_ms > 0)
        snprintf(f, sizeof f, ",\"timeout_ms\":%ld", timeout_ms);
    return request(app, "sg_status", f, 1);
}

int gha_app_poll(gha_app *app, int timeout_ms)
{
    gj_doc unused;
    double now = mono();
    if (app->health) {
        double wait = app->next_health - now;
        if (wait <= 0) {
            char reason[1024] = "";
            int ok = app->health(app->health_ctx, reason, sizeof reason);
            app->next_health = now + (double)app->period_ms / 1000.0;
            if (gha_app_report(app, ok, ok ? "" : reason))
                return -1;
            wait = (double)app->period_ms / 1000.0;
        }
        if (timeout_ms < 0 || wait * 1000 < timeout_ms)
            timeout_ms = (int)(wait * 1000) + 1;
    }
    return pump(app, 0, &unused, timeout_ms) < 0 ? -1 : 0;
}
