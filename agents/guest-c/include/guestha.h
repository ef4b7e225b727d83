/* guestha.h - libguestha: the guest-ha wire protocol (docs/protocol.md), sans I/O.
 *
 * Nothing here reads a clock or touches a file descriptor: callers feed bytes
 * and the current time (seconds on a monotonic clock) and take back bytes to
 * write, exactly like the Python core agents/guest_ha/protocol/.
 *
 *   gh_decoder   incremental newline framing (section 3.2), bounded memory
 *   gh_decode    envelope checks and PDU validation (4.2, 5), nack codes (7)
 *   gh_enc_*     compact PDU encoders (3.1), refusing frames over 4096 bytes
 *   gh_guest     the guest heartbeat state machine (6.4) and the guest end of
 *                the channel: decoder, nacks (rate limited), output buffer
 */
#ifndef GUESTHA_H
#define GUESTHA_H

#include <stddef.h>
#include "gh_json.h"

#define GH_MAX_FRAME 4096
#define GH_MAX_BROADCAST_BYTES 3050
#define GH_MAX_SEQ 9007199254740991LL
#define GH_MAX_OUTPUT (64 * 1024)
#define GH_JSON_MAX_DEPTH 32 /* MAX_JSON_DEPTH, envelope = 1; deeper is malformed_json (4.3) */

enum gh_app { GH_HEARTBEAT = 0, GH_SERVER_GROUP = 1 };
enum gh_dir { GH_GUEST_TO_HOST = 0, GH_HOST_TO_GUEST = 1 };

/* Error codes of section 7 (GH_OK = accepted). */
enum gh_code {
    GH_OK = 0, GH_FRAME_TOO_LARGE, GH_MALFORMED_JSON, GH_INVALID_ENVELOPE,
    GH_UNSUPPORTED_VERSION, GH_UNKNOWN_ADDRESS, GH_UNKNOWN_MSG_TYPE, GH_INVALID_FIELD
};
const char *gh_code_name(int code);
const char *gh_app_name(int app);

/* ---- framing ---- */
typedef struct {
    char partial[GH_MAX_FRAME];
    size_t plen;
    int skipping;
    unsigned long frames_dropped;
} gh_decoder;

/* Called once per complete frame (code GH_OK) or frame_too_large, in order. */
typedef void (*gh_frame_fn)(void *ctx, int code, const char *frame, size_t len);
void gh_decoder_reset(gh_decoder *d);
void gh_decoder_feed(gh_decoder *d, const char *data, size_t len, gh_frame_fn fn, void *ctx);

/* ---- envelope and PDUs ---- */
typedef struct {
    int app;              /* dest_addr */
    char msg_type[32];    /* validated msg_type */
    const gj_node *data;  /* the envelope's data object (fields live here) */
} gh_msg;

typedef struct {
    int code;             /* enum gh_code */
    int app;              /* application for the nack: dest_addr once known */
    char msg_type[260];   /* offending msg_type: first 64 characters, controls -> spaces */
    char text[200];       /* human-readable */
} gh_error;

/* Decode one frame payload for `dir`; doc must be gj_free()d by the caller. */
int gh_decode(const char *frame, size_t len, int dir, gj_doc *doc, gh_msg *msg, gh_error *err);
/* A field of a validated message, with the spec's default ("" for reason). */
const gj_node *gh_field(const gh_msg *msg, const char *name);
/* Names of the fields the spec defines for (app, dir, msg_type), NULL-terminated;
 * NULL when the PDU is unknown. */
const char *const *gh_spec_fields(int app, int dir, const char *msg_type);

/* Encoders: append "\n{json}\n" to out. Return 0, or -1 when the frame would
 * exceed GH_MAX_FRAME or out is full (out is then unchanged). Strings are UTF-8
 * and are sanitised where the spec says so (controls -> spaces, length cuts). */
int gh_enc_init(gj_buf *out, const char *invocation_id, const char *name, long interval_ms,
                const char *corrective_action);
int gh_enc_challenge_response(gj_buf *out, long long seq, const char *nonce, int healthy,
                              const char *reason);
int gh_enc_exit(gj_buf *out, const char *invocation_id, const char *reason);
int gh_enc_nack(gj_buf *out, int app, const char *orig_msg_type, const char *log_msg);
int gh_enc_status_query(gj_buf *out, long long seq);
int gh_enc_broadcast(gj_buf *out, const gj_node *data);
/* Copy text into dst (cap bytes) as at most max_chars code points of valid
 * UTF-8 with U+0000..U+001F replaced by spaces. */
void gh_printable(char *dst, size_t cap, const char *src, size_t len, size_t max_chars);

/* ---- token bucket ---- */
typedef struct { double rate, burst, tokens, stamp; } gh_bucket;
void gh_bucket_init(gh_bucket *b, double rate, double burst, double now);
int gh_bucket_consume(gh_bucket *b, double now);

/* ---- the guest end ---- */
enum gh_state { GH_IDLE, GH_REGISTERING, GH_REGISTERED, GH_EXITED };
const char *gh_state_name(int state);

typedef struct gh_guest gh_guest;
/* A validated server_group PDU from the host (valid during the call only). */
typedef void (*gh_sg_fn)(void *ctx, const gh_msg *msg, double now);
/* A log line (heartbeat events, rejected frames; rate limited). */
typedef void (*gh_log_fn)(void *ctx, const char *line);

struct gh_guest {
    int state;
    int host_present;
    char name[260];
    char invocation_id[65];
    char corrective_action[8];
    long interval_ms, effective_interval_ms;
    int healthy;
    char reason[1030];
    double init_retry_s, stale_intervals;
    double next_init;     /* < 0: not set */
    double last_challenge;
    unsigned long challenges_answered, bad_frames, output_dropped, nacks_suppressed;
    gh_decoder dec;
    gh_bucket errors;     /* nacks: 5/s, burst 10 */
    gh_bucket logs;       /* log lines: 1/s, burst 5 */
    char out[GH_MAX_OUTPUT];
    size_t out_len;
    gh_sg_fn on_sg;
    gh_log_fn on_log;
    void *ctx;
};

/* Returns 0, or -1 when the settings would give an invalid init PDU. */
int gh_guest_init(gh_guest *g, const char *name, long interval_ms, const char *invocation_id,
                  const char *corrective_action, double now);
void gh_guest_start(gh_guest *g, double now);
void gh_guest_host_connected(gh_guest *g, double now);
void gh_guest_host_disconnected(gh_guest *g, double now);
void gh_guest_set_health(gh_guest *g, int healthy, const char *reason);
void gh_guest_receive(gh_guest *g, const char *data, size_t len, double now);
void gh_guest_tick(gh_guest *g, double now);
/* Next time gh_guest_tick must run, or -1 for none. */
double gh_guest_next_deadline(const gh_guest *g);
void gh_guest_exit(gh_guest *g, double now, const char *reason);
/* Queue a ready frame (e.g. from gh_enc_broadcast); 0, or -1 when the 64 KiB
 * output buffer is full (the frame is dropped and counted). */
int gh_guest_queue(gh_guest *g, const char *frame, size_t len);
void gh_guest_output_sent(gh_guest *g, size_t n);
void gh_guest_discard_output(gh_guest *g);

#endif
