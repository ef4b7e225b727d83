/* example_app.c - a guest application using the C app hooks (guestha_app.h).
 *
 *   gh-example-app [--socket PATH] [--name NAME] [--health-file PATH]
 *                  [--broadcast JSON] [--every S] [--status] [--seconds N]
 *
 * Registers NAME; its health callback says healthy while --health-file exists
 * (always, without it); subscribes to the server group and prints every
 * broadcast and notification as a line of JSON on stdout; sends --broadcast
 * once, or every S seconds as {"hello": HOSTNAME, "n": K, "text": JSON} with
 * --every; prints the member list when --status is given; runs N seconds (0:
 * until killed), then unregisters. Build: make (links libguestha.a). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "guestha_app.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig) { stop = sig; }

static int health(void *ctx, char *reason, size_t cap)
{
    const char *file = ctx;
    if (!file || access(file, F_OK) == 0)
        return 1;
    snprintf(reason, cap, "%s is missing", file);
    return 0;
}

static void on_broadcast(void *ctx, const char *source, const char *data)
{
    (void)ctx;
    printf("{\"event\":\"broadcast\",\"source_instance\":\"%s\",\"data\":%s}\n", source, data);
    fflush(stdout);
}

static void on_notification(void *ctx, const char *member)
{
    (void)ctx;
    printf("{\"event\":\"notification\",\"data\":%s}\n", member);
    fflush(stdout);
}

static void on_status(void *ctx, int ok, const char *members, const char *error)
{
    (void)ctx;
    printf("{\"event\":\"status\",\"ok\":%s,\"members\":%s}\n", ok ? "true" : "false", members);
    if (!ok)
        fprintf(stderr, "status: %s\n", error ? error : "failed");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *sock = NULL, *name = "example", *file = NULL, *bcast = NULL;
    int want_status = 0, i;
    long seconds = 0, every = 0, sent = 0;
    time_t next_send = 0;
    char host[64] = "guest";
    gha_app *app;
    time_t end;
    for (i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--status") == 0) { want_status = 1; continue; }
        if (!v) { fprintf(stderr, "missing value for %s\n", argv[i]); return 2; }
        if (strcmp(argv[i], "--socket") == 0) sock = v;
        else if (strcmp(argv[i], "--name") == 0) name = v;
        else if (strcmp(argv[i], "--health-file") == 0) file = v;
        else if (strcmp(argv[i], "--broadcast") == 0) bcast = v;
        else if (strcmp(argv[i], "--seconds") == 0) seconds = atol(v);
        else if (strcmp(argv[i], "--every") == 0) every = atol(v);
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
        i++;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    app = gha_app_open(sock);
    if (!app) {
        perror("cannot connect to guest-ha-guestd");
        return 1;
    }
    if (gha_app_register(app, name, 0, "unhealthy")) {
        fprintf(stderr, "register: %s\n", gha_app_error(app));
        return 1;
    }
    gha_app_set_health_callback(app, health, (void *)file, 500);
    gha_app_on_broadcast(app, on_broadcast, NULL);
    gha_app_on_notification(app, on_notification, NULL);
    gha_app_on_status(app, on_status, NULL);
    if (gha_app_subscribe(app))
        fprintf(stderr, "subscribe: %s\n", gha_app_error(app));
    gethostname(host, sizeof host - 1);
    if (bcast && !every && gha_app_broadcast(app, bcast))
        fprintf(stderr, "broadcast: %s (%s)\n", gha_app_error(app), gha_app_error_code(app));
    if (want_status && gha_app_request_status(app, 0))
        fprintf(stderr, "status: %s\n", gha_app_error(app));
    printf("{\"event\":\"ready\"}\n");
    fflush(stdout);
    end = time(NULL) + seconds;
    while (!stop && (seconds == 0 || time(NULL) < end)) {
        if (every > 0 && time(NULL) >= next_send) {
            char msg[4096];
            next_send = time(NULL) + every;
            snprintf(msg, sizeof msg, "{\"hello\":\"%s\",\"n\":%ld,\"text\":%s}", host,
                     ++sent, bcast ? bcast : "null");
            if (gha_app_broadcast(app, msg))
                fprintf(stderr, "broadcast #%ld: %s\n", sent, gha_app_error(app));
            else
                printf("{\"event\":\"sent\",\"n\":%ld}\n", sent);
            fflush(stdout);
        }
        if (gha_app_poll(app, 200)) {
            fprintf(stderr, "daemon gone: %s\n", gha_app_error(app));
            gha_app_close(app);
            return 1;
        }
    }
    gha_app_unregister(app);
    gha_app_close(app);
    return 0;
}
