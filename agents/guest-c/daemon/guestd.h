/* guestd.h - internals of the C guest-ha-guestd (one poll loop, no threads).
 *
 *   config.c  the [guestd] INI file and command line (same keys and flags as Python)
 *   checks.c  health check scripts: run in parallel, time limit, process groups
 *   appsrv.c  the local app API (UNIX socket, JSON lines) and the server group relay
 *   guestd.c  logging, the port's life cycle (hotplug, hang-up, EBUSY), main loop
 */
#ifndef GUESTD_H
#define GUESTD_H

#include <poll.h>
#include <stddef.h>
#include <sys/types.h>

#include "guestha.h"

#define GD_VERSION "0.1.0"
#define GD_PROG "guest-ha-guestd"
#define GD_PATH_MAX 1024

/* ---- config ---- */
typedef struct {
    char port[GD_PATH_MAX];
    char transport[8];
    long serial_baudrate;
    char name[260];
    long interval_ms;
    char corrective_action[8];
    char checks_dir[GD_PATH_MAX];
    long check_interval_ms, check_timeout_ms;
    char app_socket[108];
    long sg_status_timeout_ms, sg_rate_per_s, sg_burst;
    char log[8];
    char log_level[8];
    char config_path[GD_PATH_MAX];
} gd_config;

/* 0 ok; 1 --help/--version printed; -1 error (err filled, one line). */
int gd_config_load(gd_config *c, int argc, char **argv, int *check_only, char *err, size_t n);
void gd_config_print(const gd_config *c);

/* ---- logging ---- */
enum { GD_DEBUG, GD_INFO, GD_WARNING, GD_ERROR };
void gd_log_setup(const gd_config *c);
void gd_log(int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- poll set ---- */
#define GD_MAX_FDS 256
typedef struct {
    struct pollfd fds[GD_MAX_FDS];
    int owner[GD_MAX_FDS]; /* which module registered the fd */
    int n;
} gd_pollset;
void gd_poll_add(gd_pollset *ps, int fd, short events, int owner);

/* ---- checks ---- */
#define GD_MAX_CHECKS 64
#define GD_CHECK_OUTPUT 4096
typedef struct {
    char name[256];
    int present;          /* slot in use */
    int has_result, healthy, has_exit, exit_code;
    char reason[1100];
    long duration_ms;
    double finished_at;
    int running;
    pid_t pid;
    int fd;               /* output pipe, -1 once closed */
    double started, deadline;
    char out[GD_CHECK_OUTPUT];
    size_t out_len;
} gd_check;

typedef struct {
    const char *dir;
    double interval_s, timeout_s, next_round;
    gd_check c[GD_MAX_CHECKS];
    pid_t reaping[GD_MAX_CHECKS * 2];
    int nreaping;
    int dir_problem_logged, too_many_logged;
    unsigned long rounds, runs, failures, timeouts;
} gd_checks;

void gd_checks_init(gd_checks *k, const char *dir, double interval_s, double timeout_s,
                    double now);
void gd_checks_poll(gd_checks *k, gd_pollset *ps, int owner);
void gd_checks_handle(gd_checks *k, int fd, double now);
void gd_checks_tick(gd_checks *k, double now);
double gd_checks_next_deadline(const gd_checks *k);
/* Appends "check NAME: REASON" items, joined by "; ", to reason; returns how many. */
int gd_checks_unhealthy(const gd_checks *k, gj_buf *reason);
void gd_checks_status(const gd_checks *k, gj_buf *b, double now);
void gd_checks_stop(gd_checks *k);

/* ---- app API server and server group relay ---- */
typedef struct gd_server gd_server;
typedef void (*gd_status_fn)(void *ctx, gj_buf *b, double now); /* writes "key":value,... */
gd_server *gd_server_new(const char *path, gh_guest *guest, const gd_config *cfg,
                         gd_status_fn status, void *ctx, double now);
int gd_server_start(gd_server *s);           /* 0, or -1 with errno */
void gd_server_poll(gd_server *s, gd_pollset *ps, int owner);
void gd_server_handle(gd_server *s, int fd, short revents, double now);
void gd_server_tick(gd_server *s, double now, int host_connected);
double gd_server_next_deadline(const gd_server *s, double now);
void gd_server_flush(gd_server *s, double now);
void gd_server_close(gd_server *s);
int gd_server_unhealthy(const gd_server *s, gj_buf *reason, double now, int count);
/* part 0: "server_group":{..},"apps":[..]; part 1: the app_api counters object */
void gd_server_status(const gd_server *s, gj_buf *b, double now, int part);
/* The server_group PDUs the channel received (callback of gh_guest). */
void gd_server_sg(void *server, const gh_msg *msg, double now);

double gd_now(void);

#endif
