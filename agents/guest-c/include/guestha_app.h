/* guestha_app.h - application hooks of the guest-ha guest daemon, in C.
 *
 * A guest application never touches the virtio port: only guest-ha-guestd
 * (Python or C) holds it. Applications talk to the daemon over its app socket
 * (default /run/guest-ha/app.sock; one JSON object per line). This library is
 * that client, with no dependency beyond libc. Link: -lguestha -lm.
 *
 * Typical use (see examples/example_app.c):
 *
 *     gha_app *app = gha_app_open(NULL);                 // default socket
 *     gha_app_register(app, "db", 5000, "unhealthy");    // name, silence timeout
 *     gha_app_set_health_callback(app, check_db, &db, 1000);
 *     gha_app_on_broadcast(app, on_peer_message, &state);
 *     gha_app_subscribe(app);                            // server group pushes
 *     gha_app_broadcast(app, "{\"role\":\"active\"}");
 *     gha_app_request_status(app, 2000);                 // answer: status callback
 *     for (;;) gha_app_poll(app, 1000);                  // or poll gha_app_fd()
 *
 * Threading: a gha_app is not thread safe; use it from one thread. Callbacks
 * run inside gha_app_poll() and the request functions (which may read pushes
 * that arrive before their reply). All functions that return int return 0 on
 * success and -1 on failure; gha_app_error() then says why (the daemon's
 * error text, or the system error), and gha_app_error_code() gives the
 * daemon's stable code for server group errors ("no_host", "rate_limited",
 * "too_large", "owner_taken", "nacked", "timeout", ...), or "" if none.
 */
#ifndef GUESTHA_APP_H
#define GUESTHA_APP_H

#include <stddef.h>

typedef struct gha_app gha_app;

/* Connect to the daemon's app socket (NULL: /run/guest-ha/app.sock).
 * Returns NULL with errno set when the daemon cannot be reached. */
gha_app *gha_app_open(const char *socket_path);
/* Close the connection. A registered app is then handled according to its
 * on_disconnect ("unhealthy" by default: the guest reports unhealthy). */
void gha_app_close(gha_app *app);

/* ---- health ---- */

/* Register this connection as application `name` ([A-Za-z0-9._:@-]{1,64}).
 * timeout_ms: 0, or 100..86400000: the app is unhealthy when it reports
 * nothing for that long. on_disconnect: "unhealthy", "forget" or "keep"
 * (NULL: "unhealthy"). */
int gha_app_register(gha_app *app, const char *name, long timeout_ms, const char *on_disconnect);
/* Report health now. reason (may be NULL) is shown to the host; 256 chars max. */
int gha_app_report(gha_app *app, int healthy, const char *reason);
/* Deregister gracefully (no unhealthy verdict). */
int gha_app_unregister(gha_app *app);

/* The health callback: return 1 for healthy, 0 for unhealthy, and write a
 * reason (NUL-terminated, at most cap bytes) when unhealthy. */
typedef int (*gha_health_fn)(void *ctx, char *reason, size_t cap);
/* Call fn every period_ms from gha_app_poll() and report its verdict. */
void gha_app_set_health_callback(gha_app *app, gha_health_fn fn, void *ctx, long period_ms);

/* ---- server group (the peers of this VM's Nova server group) ---- */

/* A broadcast from a peer: its instance UUID and the data as JSON text. */
typedef void (*gha_broadcast_fn)(void *ctx, const char *source_instance, const char *data_json);
/* A peer's state changed: its member status object as JSON text. */
typedef void (*gha_notification_fn)(void *ctx, const char *member_json);
/* Answer of gha_app_request_status(): ok = 1 with members_json a JSON array
 * of member status objects (this VM included), or ok = 0 with error set (and
 * members_json holding what arrived before a timeout, possibly "[]"). */
typedef void (*gha_status_fn)(void *ctx, int ok, const char *members_json, const char *error);

void gha_app_on_broadcast(gha_app *app, gha_broadcast_fn fn, void *ctx);
void gha_app_on_notification(gha_app *app, gha_notification_fn fn, void *ctx);
void gha_app_on_status(gha_app *app, gha_status_fn fn, void *ctx);

/* Become the one app of this guest that receives broadcasts and notifications. */
int gha_app_subscribe(gha_app *app);
/* Send data_json (any JSON value, at most 3050 bytes compact) to every peer.
 * Best effort: no acknowledgement, no ordering between senders. */
int gha_app_broadcast(gha_app *app, const char *data_json);
/* Ask for the status of every member; the answer comes to the status callback
 * (within timeout_ms, 100..60000, or 0 for the daemon's default). Other
 * requests on this connection wait until the answer arrived. */
int gha_app_request_status(gha_app *app, long timeout_ms);

/* ---- event loop ---- */

/* The socket, for an application's own poll()/select() (POLLIN). */
int gha_app_fd(const gha_app *app);
/* Wait up to timeout_ms for daemon messages and run callbacks; run the health
 * callback when due. Returns -1 when the daemon went away. */
int gha_app_poll(gha_app *app, int timeout_ms);

const char *gha_app_error(const gha_app *app);
const char *gha_app_error_code(const gha_app *app);

#endif
