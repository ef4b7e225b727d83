/* guestd.c - guest-ha-guestd in C: logging, the port's life cycle and the poll loop.
 *
 * Port quirks (docs/protocol.md 2.3): a missing device is waited for (hotplug),
 * EBUSY is retried slowly, POLLHUP / read() == 0 means "no host" (re-checked on
 * a timer, never spun on; nothing is written meanwhile), and EIO/ENXIO/ENODEV
 * mean the device went away (close, reopen later, init again). SIGTERM and
 * SIGINT send exit, flush for up to 1 s and stop with status 0. */
#include "guestd.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#define OPEN_RETRY_S 0.5
#define HANGUP_RECHECK_S 0.1
#define MAX_POLL_S 1.0
#define EXIT_FLUSH_S 1.0

enum { P_WAITING, P_CONNECTED, P_HANGUP };
static const char *const port_states[] = {"waiting", "connected", "hangup"};
enum { OWN_WAKE = 1, OWN_PORT, OWN_CHECKS, OWN_SERVER };

static int log_level = GD_INFO, use_syslog;
static volatile sig_atomic_t stop_signal;
static int wake_pipe[2] = {-1, -1};

double gd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void gd_log_setup(const gd_config *c)
{
    static const char *const names[] = {"debug", "info", "warning", "error"};
    int i;
    for (i = 0; i < 4; i++)
        if (strcmp(c->log_level, names[i]) == 0)
            log_level = i;
    if (strcmp(c->log, "syslog") == 0) {
        if (access("/dev/log", F_OK) == 0) {
            openlog(GD_PROG, LOG_PID, LOG_DAEMON);
            use_syslog = 1;
        } else {
            gd_log(GD_WARNING, "cannot log to syslog (/dev/log: %s); using stderr",
                   strerror(errno));
        }
    }
}

void gd_log(int level, const char *fmt, ...)
{
    static const char *const names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
    static const int prio[] = {LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR};
    char msg[2048], stamp[40];
    va_list ap;
    if (level < log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (use_syslog) {
        syslog(prio[level], "%s %s", names[level], msg);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
        fprintf(stderr, "%s,%03ld %s[%d] %s %s\n", stamp, ts.tv_nsec / 1000000, GD_PROG,
                (int)getpid(), names[level], msg);
        fflush(stderr);
    }
}

void gd_poll_add(gd_pollset *ps, int fd, short events, int owner)
{
    if (ps->n >= GD_MAX_FDS)
        return;
    ps->fds[ps->n].fd = fd;
    ps->fds[ps->n].events = events;
    ps->fds[ps->n].revents = 0;
    ps->owner[ps->n] = owner;
    ps->n++;
}

/* ---- the daemon ---- */

typedef struct {
    gd_config cfg;
    gh_guest guest;
    gd_checks checks;
    gd_server *server;
    int port_fd, port_state;
    double next_try, started_at;
    int wait_reason; /* last logged reason for waiting (errno), to log once */
    unsigned long bytes_in, bytes_out, opens, hangups, gone;
    int last_healthy;
    char last_reason[1100];
    int last_state;
} daemon_t;

static int is_gone(int e) { return e == EIO || e == ENXIO || e == ENODEV || e == EBADF || e == EPIPE; }

static void port_gone(daemon_t *d, double now, const char *why)
{
    d->gone++;
    gd_log(GD_WARNING, "port %s went away (%s); waiting for it again", d->cfg.port, why);
    if (d->port_fd >= 0)
        close(d->port_fd);
    d->port_fd = -1;
    d->port_state = P_WAITING;
    gh_guest_host_disconnected(&d->guest, now);
    gh_guest_discard_output(&d->guest);
    d->wait_reason = 0;
    d->next_try = now + OPEN_RETRY_S;
}

/* 1: no host connected (POLLHUP on a live device); 0: host there; -1: device gone. */
static int port_hangup(daemon_t *d)
{
    struct pollfd p;
    if (strcmp(d->cfg.transport, "serial") == 0)
        return 0; /* a UART gives no hang-up indication */
    p.fd = d->port_fd;
    p.events = POLLIN;
    p.revents = 0;
    if (poll(&p, 1, 0) <= 0)
        return 0;
    if (p.revents & POLLNVAL)
        return -1;
    if (p.revents & (POLLHUP | POLLERR)) {
        /* A hung-up pty also reports POLLHUP but fails writes with EIO. */
        if (write(d->port_fd, "", 0) < 0 && is_gone(errno))
            return -1;
        return (p.revents & POLLHUP) ? 1 : 0;
    }
    return 0;
}

static void enter_hangup(daemon_t *d, double now, int count)
{
    if (count) {
        d->hangups++;
        gd_log(GD_INFO, "host disconnected from %s", d->cfg.port);
    }
    d->port_state = P_HANGUP;
    gh_guest_host_disconnected(&d->guest, now);
    d->next_try = now + HANGUP_RECHECK_S;
}

static void port_connect(daemon_t *d, double now)
{
    d->port_state = P_CONNECTED;
    gh_guest_host_connected(&d->guest, now);
}

/* The device node: the configured path, or /dev/<vportNpM> found by name in sysfs. */
static void resolve_port(const char *path, char *out, size_t n)
{
    const char *name = strrchr(path, '/');
    DIR *dir;
    struct dirent *e;
    snprintf(out, n, "%s", path);
    if (access(path, F_OK) == 0 || !(dir = opendir("/sys/class/virtio-ports")))
        return;
    name = name ? name + 1 : path;
    while ((e = readdir(dir))) {
        char p[600], buf[256];
        FILE *f;
        size_t k;
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%.255s/name", e->d_name);
        if (!(f = fopen(p, "r")))
            continue;
        k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = '\0';
        while (k && (buf[k - 1] == '\n' || buf[k - 1] == ' '))
            buf[--k] = '\0';
        if (*name && strcmp(buf, name) == 0) {
            snprintf(out, n, "/dev/%.255s", e->d_name);
            break;
        }
    }
    closedir(dir);
}

static speed_t baud(long rate)
{
    switch (rate) {
    case 50: return B50; case 75: return B75; case 110: return B110; case 134: return B134;
    case 150: return B150; case 200: return B200; case 300: return B300; case 600: return B600;
    case 1200: return B1200; case 1800: return B1800; case 2400: return B2400;
    case 4800: return B4800; case 9600: return B9600; case 19200: return B19200;
    case 38400: return B38400; case 57600: return B57600; case 230400: return B230400;
    case 460800: return B460800; case 921600: return B921600; default: return B115200;
    }
}

static void try_open(daemon_t *d, double now)
{
    char path[GD_PATH_MAX];
    int fd, h;
    d->next_try = now + OPEN_RETRY_S;
    resolve_port(d->cfg.port, path, sizeof path);
    fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (d->wait_reason != e) {
            d->wait_reason = e;
            if (e == ENOENT || e == ENXIO || e == ENODEV)
                gd_log(GD_INFO, "waiting for port %s to appear", d->cfg.port);
            else if (e == EBUSY)
                gd_log(GD_WARNING, "port %s is busy (another process has it open); retrying",
                       d->cfg.port);
            else
                gd_log(GD_WARNING, "cannot open port %s: %s; retrying", d->cfg.port,
                       strerror(e));
        }
        return;
    }
    if (strcmp(d->cfg.transport, "serial") == 0) {
        struct termios t;
        if (tcgetattr(fd, &t) == 0) {
            cfmakeraw(&t);
            t.c_cflag |= CLOCAL | CREAD;
            t.c_iflag &= ~(unsigned)(IXON | IXOFF | IXANY);
            cfsetispeed(&t, baud(d->cfg.serial_baudrate));
            cfsetospeed(&t, baud(d->cfg.serial_baudrate));
            tcsetattr(fd, TCSANOW, &t);
        }
    }
    d->port_fd = fd;
    d->wait_reason = 0;
    d->opens++;
    h = port_hangup(d);
    if (h < 0) {
        port_gone(d, now, "device not usable");
    } else if (h) {
        gd_log(GD_INFO, "opened %s; no host connected yet", d->cfg.port);
        enter_hangup(d, now, 0);
    } else {
        gd_log(GD_INFO, "opened %s; host connected", d->cfg.port);
        port_connect(d, now);
    }
}

static void port_flush(daemon_t *d, double now)
{
    ssize_t n;
    if (d->port_fd < 0 || d->port_state != P_CONNECTED || !d->guest.out_len)
        return;
    n = write(d->port_fd, d->guest.out, d->guest.out_len);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        if (is_gone(errno)) {
            port_gone(d, now, strerror(errno));
            return;
        }
        gd_log(GD_WARNING, "write to %s failed: %s", d->cfg.port, strerror(errno));
        return;
    }
    d->bytes_out += (unsigned long)n;
    gh_guest_output_sent(&d->guest, (size_t)n);
}

static void port_handle(daemon_t *d, short revents, double now)
{
    if (revents & POLLNVAL) {
        port_gone(d, now, "descriptor no longer valid");
        return;
    }
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[65536];
        ssize_t n = read(d->port_fd, buf, sizeof buf);
        if (n < 0 && is_gone(errno)) {
            port_gone(d, now, strerror(errno));
            return;
        }
        if (n > 0) {
            d->bytes_in += (unsigned long)n;
            gh_guest_receive(&d->guest, buf, (size_t)n, now);
        } else if (n == 0 || (revents & POLLHUP)) {
            int h = port_hangup(d);
            if (h < 0) {
                port_gone(d, now, "device not usable");
                return;
            }
            if (h || n == 0) {
                enter_hangup(d, now, 1);
                return;
            }
        }
    }
    if (revents & POLLOUT)
        port_flush(d, now);
}

static void port_tick(daemon_t *d, double now)
{
    int h;
    if (d->port_state == P_CONNECTED || now < d->next_try)
        return;
    if (d->port_state == P_WAITING) {
        try_open(d, now);
        return;
    }
    d->next_try = now + HANGUP_RECHECK_S;
    h = port_hangup(d);
    if (h < 0) {
        port_gone(d, now, "device not usable");
    } else if (h) { /* whatever is buffered came from a host that is gone */
        char buf[4096];
        int i;
        for (i = 0; i < 16 && read(d->port_fd, buf, sizeof buf) > 0; i++)
            ;
    } else {
        gd_log(GD_INFO, "host connected to %s", d->cfg.port);
        port_connect(d, now);
    }
}

/* ---- health and status ---- */

static void update_health(daemon_t *d, double now)
{
    char reason[4096];
    gj_buf r = {reason, 0, sizeof reason - 1, 0};
    int problems = gd_checks_unhealthy(&d->checks, &r);
    problems = gd_server_unhealthy(d->server, &r, now, problems);
    reason[r.overflow ? sizeof reason - 1 : r.len] = '\0';
    gh_guest_set_health(&d->guest, problems == 0, reason);
    if (d->guest.healthy != d->last_healthy) {
        if (d->guest.healthy)
            gd_log(GD_INFO, "health: healthy");
        else
            gd_log(GD_WARNING, "health: unhealthy (%s)", d->guest.reason);
    } else if (strcmp(d->guest.reason, d->last_reason) != 0) {
        gd_log(GD_DEBUG, "health reason: %s", d->guest.reason);
    }
    d->last_healthy = d->guest.healthy;
    snprintf(d->last_reason, sizeof d->last_reason, "%s", d->guest.reason);
}

#define KV_STR(b, k, v) do { gj_puts(b, ",\"" k "\":"); gj_put_string(b, v, strlen(v)); } while (0)
#define KV_INT(b, k, v) do { gj_puts(b, ",\"" k "\":"); gj_put_int(b, (long long)(v)); } while (0)

static void status(void *ctx, gj_buf *b, double now)
{
    daemon_t *d = ctx;
    gh_guest *g = &d->guest;
    char up[32];
    gj_puts(b, "\"daemon\":{\"version\":\"" GD_VERSION "\",\"implementation\":\"c\"");
    KV_INT(b, "pid", getpid());
    snprintf(up, sizeof up, "%.3f", now - d->started_at);
    gj_puts(b, ",\"uptime_s\":");
    gj_puts(b, up);
    KV_STR(b, "name", g->name);
    KV_STR(b, "invocation_id", g->invocation_id);
    KV_STR(b, "port", d->cfg.port);
    KV_STR(b, "transport", d->cfg.transport);
    KV_STR(b, "port_state", port_states[d->port_state]);
    KV_STR(b, "heartbeat_state", gh_state_name(g->state));
    gj_puts(b, g->state == GH_REGISTERED ? ",\"registered\":true" : ",\"registered\":false");
    KV_INT(b, "requested_interval_ms", g->interval_ms);
    KV_INT(b, "effective_interval_ms", g->effective_interval_ms);
    if (g->corrective_action[0])
        KV_STR(b, "corrective_action", g->corrective_action);
    else
        gj_puts(b, ",\"corrective_action\":null");
    gj_puts(b, "},\"health\":{\"health\":");
    gj_puts(b, g->healthy ? "\"healthy\",\"healthy\":true" : "\"unhealthy\",\"healthy\":false");
    KV_STR(b, "reason", g->reason);
    gj_puts(b, "},\"checks\":");
    gd_checks_status(&d->checks, b, now);
    gj_puts(b, ",");
    gd_server_status(d->server, b, now, 0);
    gj_puts(b, ",\"counters\":{\"challenges_answered\":");
    gj_put_int(b, (long long)g->challenges_answered);
    KV_INT(b, "bad_frames_from_host", g->bad_frames);
    KV_INT(b, "output_dropped", g->output_dropped);
    gj_puts(b, ",\"port\":{\"bytes_in\":");
    gj_put_int(b, (long long)d->bytes_in);
    KV_INT(b, "bytes_out", d->bytes_out);
    KV_INT(b, "opens", d->opens);
    KV_INT(b, "hangups", d->hangups);
    KV_INT(b, "gone", d->gone);
    gj_puts(b, "},\"checks\":{\"rounds\":");
    gj_put_int(b, (long long)d->checks.rounds);
    KV_INT(b, "runs", d->checks.runs);
    KV_INT(b, "failures", d->checks.failures);
    KV_INT(b, "timeouts", d->checks.timeouts);
    gj_puts(b, "},\"app_api\":");
    gd_server_status(d->server, b, now, 1);
    gj_puts(b, "}");
}

static void on_event(void *ctx, const char *line)
{
    (void)ctx;
    gd_log(GD_INFO, "heartbeat: %s", line);
}

static void on_sg(void *ctx, const gh_msg *msg, double now)
{
    daemon_t *d = ctx;
    gd_server_sg(d->server, msg, now);
}

/* ---- signals and the loop ---- */

static void on_signal(int sig)
{
    int saved = errno;
    if (sig != SIGCHLD && !stop_signal)
        stop_signal = sig;
    if (wake_pipe[1] >= 0 && write(wake_pipe[1], "x", 1) < 0) {
    }
    errno = saved;
}

static void drain_wake(void)
{
    char buf[256];
    while (read(wake_pipe[0], buf, sizeof buf) > 0)
        ;
}

static double min_deadline(double a, double b) { return b >= 0 && b < a ? b : a; }

static void step(daemon_t *d)
{
    gd_pollset ps;
    double now = gd_now(), deadline;
    int i, timeout_ms;
    short port_events = 0;
    ps.n = 0;
    gd_poll_add(&ps, wake_pipe[0], POLLIN, OWN_WAKE);
    gd_server_poll(d->server, &ps, OWN_SERVER);
    gd_checks_poll(&d->checks, &ps, OWN_CHECKS);
    if (d->port_fd >= 0 && d->port_state == P_CONNECTED)
        gd_poll_add(&ps, d->port_fd, POLLIN | (d->guest.out_len ? POLLOUT : 0), OWN_PORT);
    deadline = now + MAX_POLL_S;
    deadline = min_deadline(deadline, gh_guest_next_deadline(&d->guest));
    if (d->port_state != P_CONNECTED)
        deadline = min_deadline(deadline, d->next_try);
    deadline = min_deadline(deadline, gd_checks_next_deadline(&d->checks));
    deadline = min_deadline(deadline, gd_server_next_deadline(d->server, now));
    timeout_ms = deadline <= now ? 0 : (int)((deadline - now) * 1000 + 0.999);
    if (poll(ps.fds, (nfds_t)ps.n, timeout_ms) < 0)
        ps.n = 0;
    now = gd_now();
    for (i = 0; i < ps.n; i++) {
        short re = ps.fds[i].revents;
        if (!re)
            continue;
        switch (ps.owner[i]) {
        case OWN_WAKE: drain_wake(); break;
        case OWN_PORT: port_events = re; break;
        case OWN_CHECKS: gd_checks_handle(&d->checks, ps.fds[i].fd, now); break;
        case OWN_SERVER: gd_server_handle(d->server, ps.fds[i].fd, re, now); break;
        }
    }
    gd_checks_tick(&d->checks, now);
    update_health(d, now);
    if (port_events)
        port_handle(d, port_events, now);
    port_tick(d, now);
    gh_guest_tick(&d->guest, now);
    gd_server_tick(d->server, now, d->port_state == P_CONNECTED);
    port_flush(d, now);
    gd_server_flush(d->server, now);
    if (d->guest.state != d->last_state) {
        gd_log(GD_INFO, "heartbeat state %s -> %s", gh_state_name(d->last_state),
               gh_state_name(d->guest.state));
        d->last_state = d->guest.state;
    }
}

static void shutdown_port(daemon_t *d, const char *reason)
{
    double now = gd_now(), deadline = now + EXIT_FLUSH_S;
    gh_guest_exit(&d->guest, now, reason);
    while (d->guest.out_len && d->port_state == P_CONNECTED && now < deadline) {
        struct pollfd p;
        port_flush(d, now);
        if (!d->guest.out_len || d->port_state != P_CONNECTED)
            break;
        p.fd = d->port_fd;
        p.events = POLLOUT;
        poll(&p, 1, (int)((deadline - now) * 1000) + 1);
        now = gd_now();
    }
    if (d->guest.out_len)
        gd_log(GD_WARNING, "could not deliver exit to the host");
}

static void random_id(char *out)
{
    unsigned char r[16];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC), i;
    ssize_t got = fd >= 0 ? read(fd, r, sizeof r) : -1;
    if (fd >= 0)
        close(fd);
    if (got != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        srand((unsigned)(ts.tv_nsec ^ getpid()));
        for (i = 0; i < 16; i++)
            r[i] = (unsigned char)rand();
    }
    for (i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", r[i]);
}

int main(int argc, char **argv)
{
    static daemon_t d;
    char err[600], invocation[40];
    int check_only, rc;
    double now;
    struct sigaction sa;
    rc = gd_config_load(&d.cfg, argc, argv, &check_only, err, sizeof err);
    if (rc > 0)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "%s: error: %s\n", GD_PROG, err);
        return 2;
    }
    if (check_only) {
        gd_config_print(&d.cfg);
        return 0;
    }
    gd_log_setup(&d.cfg);
    now = gd_now();
    d.started_at = now;
    d.port_fd = -1;
    d.last_healthy = 1;
    random_id(invocation);
    if (gh_guest_init(&d.guest, d.cfg.name, d.cfg.interval_ms, invocation,
                      d.cfg.corrective_action, now)) {
        fprintf(stderr, "%s: error: heartbeat settings rejected\n", GD_PROG);
        return 2;
    }
    d.guest.on_log = on_event;
    d.guest.on_sg = on_sg;
    d.guest.ctx = &d;
    /* No host until the port is open and not hung up; host_connected sends init. */
    gh_guest_host_disconnected(&d.guest, now);
    gh_guest_start(&d.guest, now);
    d.last_state = d.guest.state;
    gd_checks_init(&d.checks, d.cfg.checks_dir, d.cfg.check_interval_ms / 1000.0,
                   d.cfg.check_timeout_ms / 1000.0, now);
    d.server = gd_server_new(d.cfg.app_socket, &d.guest, &d.cfg, status, &d, now);
    if (!d.server || gd_server_start(d.server)) {
        gd_log(GD_ERROR, "cannot create app socket %s: %s", d.cfg.app_socket, strerror(errno));
        return 1;
    }
    if (pipe(wake_pipe) == 0) {
        fcntl(wake_pipe[0], F_SETFL, O_NONBLOCK);
        fcntl(wake_pipe[1], F_SETFL, O_NONBLOCK);
        fcntl(wake_pipe[0], F_SETFD, FD_CLOEXEC);
        fcntl(wake_pipe[1], F_SETFD, FD_CLOEXEC);
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    gd_log(GD_INFO,
           "started (C): name %s, invocation %s, interval %ld ms, port %s (%s), checks %s, "
           "app socket %s",
           d.cfg.name, invocation, d.cfg.interval_ms, d.cfg.port, d.cfg.transport,
           d.cfg.checks_dir, d.cfg.app_socket);
    port_tick(&d, gd_now());
    while (!stop_signal)
        step(&d);
    gd_log(GD_INFO, "%s received: deregistering", stop_signal == SIGTERM ? "SIGTERM" : "SIGINT");
    shutdown_port(&d, stop_signal == SIGTERM ? "SIGTERM" : "SIGINT");
    gd_server_close(d.server);
    gd_checks_stop(&d.checks);
    if (d.port_fd >= 0)
        close(d.port_fd);
    gd_log(GD_INFO, "stopped");
    return 0;
}
