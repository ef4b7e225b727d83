/* gh_guest.c - the guest heartbeat state machine (docs/protocol.md 6.4) and the
 * guest end of the channel, the C twin of GuestHeartbeat + GuestChannel. */
#include "guestha.h"

#include <stdio.h>
#include <string.h>

static const char *const state_names[] = {"idle", "registering", "registered", "exited"};

const char *gh_state_name(int state) { return state_names[state & 3]; }

static void event(gh_guest *g, const char *line)
{
    if (g->on_log)
        g->on_log(g->ctx, line);
}

int gh_guest_queue(gh_guest *g, const char *frame, size_t len)
{
    if (g->out_len + len > GH_MAX_OUTPUT) {
        g->output_dropped++;
        return -1;
    }
    memcpy(g->out + g->out_len, frame, len);
    g->out_len += len;
    return 0;
}

/* Run an encoder into a scratch frame, then queue it. */
#define QUEUE(g, call)                                                                   \
    do {                                                                                 \
        char frame_[GH_MAX_FRAME + 2];                                                   \
        gj_buf out = {frame_, 0, sizeof frame_, 0};                                      \
        if ((call) == 0)                                                                 \
            gh_guest_queue((g), frame_, out.len);                                        \
    } while (0)

static void send_init(gh_guest *g, double now)
{
    if (g->host_present)
        QUEUE(g, gh_enc_init(&out, g->invocation_id, g->name, g->interval_ms,
                             g->corrective_action));
    g->next_init = now + g->init_retry_s;
}

int gh_guest_init(gh_guest *g, const char *name, long interval_ms, const char *invocation_id,
                  const char *corrective_action, double now)
{
    char frame[GH_MAX_FRAME + 2];
    gj_buf out = {frame, 0, sizeof frame, 0};
    gj_doc doc;
    gh_msg msg;
    gh_error err;
    int rc;
    memset(g, 0, sizeof(*g));
    if (strlen(name) >= sizeof g->name || strlen(invocation_id) >= sizeof g->invocation_id ||
        (corrective_action && strlen(corrective_action) >= sizeof g->corrective_action))
        return -1;
    strcpy(g->name, name);
    strcpy(g->invocation_id, invocation_id);
    if (corrective_action)
        strcpy(g->corrective_action, corrective_action);
    g->interval_ms = g->effective_interval_ms = interval_ms;
    g->healthy = 1;
    g->init_retry_s = 1.0;
    g->stale_intervals = 3.0;
    g->next_init = -1;
    g->host_present = 1;
    gh_decoder_reset(&g->dec);
    gh_bucket_init(&g->errors, 5.0, 10.0, now);
    gh_bucket_init(&g->logs, 1.0, 5.0, now);
    /* Reject a bad configuration with the receiver's own rules. */
    if (gh_enc_init(&out, invocation_id, name, interval_ms, corrective_action))
        return -1;
    rc = gh_decode(frame + 1, out.len - 2, GH_GUEST_TO_HOST, &doc, &msg, &err);
    if (rc == 0) { /* the encoder sanitises: make sure nothing was changed */
        const gj_node *n = gh_field(&msg, "name");
        if (!gj_streq(n, name) || !gj_streq(gh_field(&msg, "invocation_id"), invocation_id))
            rc = -1;
    }
    gj_free(&doc);
    return rc;
}

void gh_guest_start(gh_guest *g, double now)
{
    g->state = GH_REGISTERING;
    send_init(g, now);
}

void gh_guest_host_connected(gh_guest *g, double now)
{
    /* Whatever was queued for the previous host is stale: registration starts afresh. */
    g->out_len = 0;
    gh_decoder_reset(&g->dec);
    g->host_present = 1;
    if (g->state == GH_REGISTERING || g->state == GH_REGISTERED) {
        g->state = GH_REGISTERING;
        send_init(g, now);
    }
}

void gh_guest_host_disconnected(gh_guest *g, double now)
{
    (void)now;
    g->host_present = 0;
}

void gh_guest_set_health(gh_guest *g, int healthy, const char *reason)
{
    g->healthy = healthy ? 1 : 0;
    gh_printable(g->reason, sizeof g->reason, reason, strlen(reason), 256);
}

static double stale_after(const gh_guest *g)
{
    return g->stale_intervals * (double)g->effective_interval_ms / 1000.0 + 0.5;
}

static void heartbeat_receive(gh_guest *g, const gh_msg *m, double now)
{
    char line[700];
    if (strcmp(m->msg_type, "init_ack") == 0) {
        if (gj_streq(gh_field(m, "invocation_id"), g->invocation_id)) {
            long iv = (long)gh_field(m, "interval_ms")->ival;
            if (g->state != GH_REGISTERED) {
                snprintf(line, sizeof line, "registered, interval %ld ms", iv);
                event(g, line);
            }
            g->state = GH_REGISTERED;
            g->effective_interval_ms = iv;
            g->last_challenge = now;
        }
    } else if (strcmp(m->msg_type, "challenge") == 0) {
        const gj_node *nonce = gh_field(m, "nonce");
        g->last_challenge = now;
        if (g->state == GH_REGISTERING) {
            g->state = GH_REGISTERED;
            event(g, "registered (challenged before init_ack)");
        }
        g->challenges_answered++;
        QUEUE(g, gh_enc_challenge_response(&out, gh_field(m, "seq")->ival, nonce->str,
                                           g->healthy, g->reason));
    } else if (strcmp(m->msg_type, "nack") == 0) {
        const gj_node *orig = gh_field(m, "orig_msg_type"), *log = gh_field(m, "log_msg");
        snprintf(line, sizeof line, "host nacked %.*s: %.*s", (int)orig->len, orig->str,
                 (int)(log->len > 512 ? 512 : log->len), log->str);
        event(g, line);
        if (gj_streq(orig, "challenge_response") || gj_streq(orig, "init")) {
            g->state = GH_REGISTERING;
            if (gj_streq(orig, "challenge_response"))
                send_init(g, now);
        }
    }
}

typedef struct {
    gh_guest *g;
    double now;
} feed_ctx;

static void reject(gh_guest *g, const gh_error *err, double now)
{
    char line[700];
    g->bad_frames++;
    if (!gh_bucket_consume(&g->errors, now)) {
        g->nacks_suppressed++;
        return;
    }
    snprintf(line, sizeof line, "%s: %s", gh_code_name(err->code), err->text);
    if (gh_bucket_consume(&g->logs, now)) {
        char l2[1000];
        snprintf(l2, sizeof l2, "rejected %s from host: %s",
                 err->msg_type[0] ? err->msg_type : "frame", line);
        event(g, l2);
    }
    if (strcmp(err->msg_type, "nack") != 0) /* never nack a nack */
        QUEUE(g, gh_enc_nack(&out, err->app, err->msg_type, line));
}

static void on_frame(void *vctx, int code, const char *frame, size_t len)
{
    feed_ctx *c = vctx;
    gh_guest *g = c->g;
    gh_error err;
    gh_msg msg;
    gj_doc doc;
    if (code != GH_OK) {
        memset(&err, 0, sizeof err);
        err.code = code;
        err.app = GH_HEARTBEAT;
        snprintf(err.text, sizeof err.text, "frame larger than %d bytes dropped", GH_MAX_FRAME);
        reject(g, &err, c->now);
        return;
    }
    if (gh_decode(frame, len, GH_HOST_TO_GUEST, &doc, &msg, &err) != 0) {
        reject(g, &err, c->now);
    } else if (g->state == GH_IDLE || g->state == GH_EXITED) {
        /* ignored, as in GuestHeartbeat.receive (server group PDUs still pass) */
        if (msg.app == GH_SERVER_GROUP && g->on_sg)
            g->on_sg(g->ctx, &msg, c->now);
    } else if (msg.app == GH_HEARTBEAT) {
        heartbeat_receive(g, &msg, c->now);
    } else if (g->on_sg) {
        g->on_sg(g->ctx, &msg, c->now);
    }
    gj_free(&doc);
}

void gh_guest_receive(gh_guest *g, const char *data, size_t len, double now)
{
    feed_ctx c;
    c.g = g;
    c.now = now;
    gh_decoder_feed(&g->dec, data, len, on_frame, &c);
}

void gh_guest_tick(gh_guest *g, double now)
{
    char line[120];
    if (g->state == GH_REGISTERING) {
        if (g->next_init < 0 || now >= g->next_init)
            send_init(g, now);
    } else if (g->state == GH_REGISTERED && now >= g->last_challenge + stale_after(g)) {
        snprintf(line, sizeof line, "no challenge for %.1f s: registering again", stale_after(g));
        event(g, line);
        g->state = GH_REGISTERING;
        send_init(g, now);
    }
}

double gh_guest_next_deadline(const gh_guest *g)
{
    if (g->state == GH_REGISTERING)
        return g->next_init;
    if (g->state == GH_REGISTERED)
        return g->last_challenge + stale_after(g);
    return -1;
}

void gh_guest_exit(gh_guest *g, double now, const char *reason)
{
    (void)now;
    if ((g->state == GH_REGISTERING || g->state == GH_REGISTERED) && g->host_present)
        QUEUE(g, gh_enc_exit(&out, g->invocation_id, reason));
    g->state = GH_EXITED;
}

void gh_guest_output_sent(gh_guest *g, size_t n)
{
    if (n >= g->out_len) {
        g->out_len = 0;
        return;
    }
    memmove(g->out, g->out + n, g->out_len - n);
    g->out_len -= n;
}

void gh_guest_discard_output(gh_guest *g) { g->out_len = 0; }
