/* checks.c - run every executable of checks_dir in parallel, each round.
 * Exit 0 = healthy. A check past its time limit is killed with its process
 * group and counts as unhealthy. The first line of its output (at most 4 KiB
 * kept) goes into the reason. Same rules as agents/guest_ha/guest/checks.py. */
#include "guestd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

void gd_checks_init(gd_checks *k, const char *dir, double interval_s, double timeout_s,
                    double now)
{
    memset(k, 0, sizeof(*k));
    k->dir = dir;
    k->interval_s = interval_s;
    k->timeout_s = timeout_s;
    k->next_round = now;
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted names of runnable checks (at most GD_MAX_CHECKS); returns the count. */
static int discover(gd_checks *k, char names[][256])
{
    DIR *d = opendir(k->dir);
    struct dirent *e;
    char *list[1024];
    int n = 0, i, total;
    if (!d) {
        if (errno != ENOENT && !k->dir_problem_logged) {
            gd_log(GD_WARNING, "cannot list checks_dir %s: %s", k->dir, strerror(errno));
            k->dir_problem_logged = 1;
        }
        return 0;
    }
    k->dir_problem_logged = 0;
    while ((e = readdir(d)) && n < 1024) {
        char path[GD_PATH_MAX + 300];
        struct stat st;
        if (e->d_name[0] == '.' || strlen(e->d_name) >= 256)
            continue;
        snprintf(path, sizeof path, "%s/%s", k->dir, e->d_name);
        if (stat(path, &st) || !S_ISREG(st.st_mode) || access(path, X_OK))
            continue;
        list[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(list, (size_t)n, sizeof list[0], cmp);
    total = n;
    if (n > GD_MAX_CHECKS) {
        if (!k->too_many_logged)
            gd_log(GD_WARNING, "%d checks in %s; only the first %d run", n, k->dir,
                   GD_MAX_CHECKS);
        k->too_many_logged = 1;
        n = GD_MAX_CHECKS;
    }
    for (i = 0; i < total; i++) {
        if (i < n)
            strcpy(names[i], list[i]);
        free(list[i]);
    }
    return n;
}

static gd_check *slot(gd_checks *k, const char *name, int create)
{
    int i;
    gd_check *free_slot = NULL;
    for (i = 0; i < GD_MAX_CHECKS; i++) {
        if (k->c[i].present && strcmp(k->c[i].name, name) == 0)
            return &k->c[i];
        if (!k->c[i].present && !free_slot)
            free_slot = &k->c[i];
    }
    if (!create || !free_slot)
        return NULL;
    memset(free_slot, 0, sizeof(*free_slot));
    strcpy(free_slot->name, name);
    free_slot->present = 1;
    free_slot->fd = -1;
    return free_slot;
}

static void record(gd_check *c, int healthy, const char *reason, int has_exit, int code,
                   double now, unsigned long *failures)
{
    int was = c->has_result ? c->healthy : -1;
    c->has_result = 1;
    c->healthy = healthy;
    snprintf(c->reason, sizeof c->reason, "%s", reason);
    c->has_exit = has_exit;
    c->exit_code = code;
    c->duration_ms = (long)((now - c->started) * 1000);
    c->finished_at = now;
    if (!healthy)
        (*failures)++;
    if (was != healthy) {
        if (healthy)
            gd_log(GD_INFO, "check %s: healthy", c->name);
        else
            gd_log(GD_WARNING, "check %s: unhealthy (%s)", c->name, c->reason);
    }
}

static void read_pipe(gd_check *c)
{
    char buf[4096];
    while (c->fd >= 0) {
        ssize_t r = read(c->fd, buf, sizeof buf);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (r <= 0) {
            close(c->fd);
            c->fd = -1;
            return;
        }
        if (c->out_len < GD_CHECK_OUTPUT) {
            size_t room = GD_CHECK_OUTPUT - c->out_len;
            size_t take = (size_t)r < room ? (size_t)r : room;
            memcpy(c->out + c->out_len, buf, take);
            c->out_len += take;
        }
    }
}

/* First non-empty line of the output, stripped, printable, at most 200 characters. */
static void first_line(const gd_check *c, char *dst, size_t cap)
{
    size_t s = 0, e;
    while (s < c->out_len && strchr(" \t\r\n\v\f", c->out[s]) && c->out[s])
        s++;
    e = s;
    while (e < c->out_len && c->out[e] != '\n' && c->out[e] != '\r')
        e++;
    while (e > s && (c->out[e - 1] == ' ' || c->out[e - 1] == '\t'))
        e--;
    gh_printable(dst, cap, c->out + s, e - s, 200);
}

static void start(gd_checks *k, gd_check *c, double now)
{
    int p[2];
    pid_t pid;
    char path[GD_PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/%s", k->dir, c->name);
    c->started = now;
    if (pipe(p)) {
        record(c, 0, "cannot run: no pipe", 0, 0, now, &k->failures);
        return;
    }
    pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        record(c, 0, "cannot run: fork failed", 0, 0, now, &k->failures);
        return;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        sigset_t none;
        setsid();
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(p[1], 1);
        dup2(p[1], 2);
        if (chdir("/")) {
        }
        execl(path, path, (char *)NULL);
        dprintf(2, "cannot run: %s\n", strerror(errno));
        _exit(127);
    }
    close(p[1]);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    fcntl(p[0], F_SETFD, FD_CLOEXEC);
    c->fd = p[0];
    c->pid = pid;
    c->running = 1;
    c->out_len = 0;
    c->deadline = now + k->timeout_s;
    k->runs++;
}

static void finish(gd_checks *k, gd_check *c, int status, double now)
{
    char line[1000], reason[1100];
    int code;
    read_pipe(c);
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->running = 0;
    first_line(c, line, sizeof line);
    if (WIFEXITED(status)) {
        code = WEXITSTATUS(status);
        snprintf(reason, sizeof reason, code ? "exit %d" : "", code);
    } else {
        code = -WTERMSIG(status);
        snprintf(reason, sizeof reason, "killed by signal %d", -code);
    }
    if (code != 0 && line[0]) {
        size_t l = strlen(reason);
        snprintf(reason + l, sizeof reason - l, ": %s", line);
    }
    record(c, code == 0, reason, 1, code, now, &k->failures);
}

static void kill_check(gd_checks *k, gd_check *c, double now)
{
    char line[1000], reason[1100];
    k->timeouts++;
    if (kill(-c->pid, SIGKILL))
        kill(c->pid, SIGKILL);
    read_pipe(c);
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->running = 0;
    if (k->nreaping < (int)(sizeof k->reaping / sizeof k->reaping[0]))
        k->reaping[k->nreaping++] = c->pid;
    first_line(c, line, sizeof line);
    snprintf(reason, sizeof reason, "timed out after %ld ms%s%s", (long)(k->timeout_s * 1000),
             line[0] ? ": " : "", line);
    record(c, 0, reason, 0, 0, now, &k->failures);
}

void gd_checks_tick(gd_checks *k, double now)
{
    int i, j;
    for (i = 0; i < GD_MAX_CHECKS; i++) {
        gd_check *c = &k->c[i];
        int status;
        if (!c->present || !c->running)
            continue;
        if (waitpid(c->pid, &status, WNOHANG) == c->pid)
            finish(k, c, status, now);
        else if (now >= c->deadline)
            kill_check(k, c, now);
    }
    for (i = j = 0; i < k->nreaping; i++) {
        int status;
        if (waitpid(k->reaping[i], &status, WNOHANG) == 0)
            k->reaping[j++] = k->reaping[i];
    }
    k->nreaping = j;
    if (now >= k->next_round) {
        static char names[GD_MAX_CHECKS][256];
        int n;
        k->next_round = k->next_round + k->interval_s > now ? k->next_round + k->interval_s : now;
        k->rounds++;
        n = discover(k, names);
        for (i = 0; i < GD_MAX_CHECKS; i++) { /* forget checks that are gone */
            gd_check *c = &k->c[i];
            int keep = c->running;
            for (j = 0; j < n && !keep; j++)
                keep = strcmp(names[j], c->name) == 0;
            if (c->present && !keep)
                c->present = 0;
        }
        for (j = 0; j < n; j++) {
            gd_check *c = slot(k, names[j], 1);
            if (c && !c->running)
                start(k, c, now);
        }
    }
}

void gd_checks_poll(gd_checks *k, gd_pollset *ps, int owner)
{
    int i;
    for (i = 0; i < GD_MAX_CHECKS; i++)
        if (k->c[i].present && k->c[i].running && k->c[i].fd >= 0)
            gd_poll_add(ps, k->c[i].fd, POLLIN, owner);
}

void gd_checks_handle(gd_checks *k, int fd, double now)
{
    int i, status;
    for (i = 0; i < GD_MAX_CHECKS; i++) {
        gd_check *c = &k->c[i];
        if (c->present && c->running && c->fd == fd) {
            read_pipe(c);
            if (c->fd < 0 && waitpid(c->pid, &status, WNOHANG) == c->pid)
                finish(k, c, status, now);
            return;
        }
    }
}

double gd_checks_next_deadline(const gd_checks *k)
{
    double t = k->next_round;
    int i;
    for (i = 0; i < GD_MAX_CHECKS; i++)
        if (k->c[i].present && k->c[i].running && k->c[i].deadline < t)
            t = k->c[i].deadline;
    return t;
}

int gd_checks_unhealthy(const gd_checks *k, gj_buf *reason)
{
    int i, n = 0;
    for (i = 0; i < GD_MAX_CHECKS; i++) {
        const gd_check *c = &k->c[i];
        if (c->present && c->has_result && !c->healthy) {
            if (reason->len)
                gj_puts(reason, "; ");
            gj_puts(reason, "check ");
            gj_puts(reason, c->name);
            gj_puts(reason, ": ");
            gj_puts(reason, c->reason);
            n++;
        }
    }
    return n;
}

void gd_checks_status(const gd_checks *k, gj_buf *b, double now)
{
    int i, first = 1;
    gj_puts(b, "[");
    for (i = 0; i < GD_MAX_CHECKS; i++) {
        const gd_check *c = &k->c[i];
        if (!c->present)
            continue;
        if (!first)
            gj_puts(b, ",");
        first = 0;
        gj_puts(b, "{\"name\":");
        gj_put_string(b, c->name, strlen(c->name));
        gj_puts(b, c->running ? ",\"running\":true" : ",\"running\":false");
        if (!c->has_result) {
            gj_puts(b, ",\"healthy\":null,\"reason\":\"not run yet\"}");
            continue;
        }
        gj_puts(b, c->healthy ? ",\"healthy\":true,\"reason\":" : ",\"healthy\":false,\"reason\":");
        gj_put_string(b, c->reason, strlen(c->reason));
        gj_puts(b, ",\"exit_code\":");
        if (c->has_exit)
            gj_put_int(b, c->exit_code);
        else
            gj_puts(b, "null");
        gj_puts(b, ",\"duration_ms\":");
        gj_put_int(b, c->duration_ms);
        gj_puts(b, ",\"age_ms\":");
        gj_put_int(b, (long long)((now - c->finished_at) * 1000));
        gj_puts(b, "}");
    }
    gj_puts(b, "]");
}

void gd_checks_stop(gd_checks *k)
{
    int i, status;
    for (i = 0; i < GD_MAX_CHECKS; i++) {
        gd_check *c = &k->c[i];
        if (c->present && c->running) {
            kill(-c->pid, SIGKILL);
            if (c->fd >= 0)
                close(c->fd);
            c->fd = -1;
            c->running = 0;
            waitpid(c->pid, &status, 0);
        }
    }
    for (i = 0; i < k->nreaping; i++)
        waitpid(k->reaping[i], &status, 0);
    k->nreaping = 0;
}
