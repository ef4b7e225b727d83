/* config.c - the [guestd] INI file merged with command-line flags.
 * Same keys, defaults, ranges and precedence (flags > file > defaults) as
 * agents/guest_ha/guest/config.py; any invalid value is a one-line error. */
#include "guestd.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { T_PATH, T_INT, T_CHOICE, T_NAME };

typedef struct {
    const char *key;
    int type;
    long lo, hi;
    const char *choices; /* space separated; leading '?' = empty allowed */
    const char *dflt;
    const char *help;
} option;

static const option options[] = {
    {"port", T_PATH, 0, 0, NULL, "/dev/virtio-ports/org.opnfv.ha.0", "character device of the channel"},
    {"transport", T_CHOICE, 0, 0, "virtio serial", "virtio", "virtio (chardev) or serial (tty)"},
    {"serial_baudrate", T_INT, 50, 4000000, NULL, "115200", "baud rate for transport=serial"},
    {"name", T_NAME, 0, 0, NULL, "", "name sent in init (default: host name)"},
    {"interval_ms", T_INT, 100, 60000, NULL, "1000", "requested heartbeat interval"},
    {"corrective_action", T_CHOICE, 0, 0, "?log reboot stop", "", "log, reboot or stop"},
    {"checks_dir", T_PATH, 0, 0, NULL, "/etc/guest-ha/checks.d", "directory of check scripts"},
    {"check_interval_ms", T_INT, 100, 3600000, NULL, "1000", "how often checks run"},
    {"check_timeout_ms", T_INT, 100, 3600000, NULL, "2000", "per-check time limit"},
    {"app_socket", T_PATH, 0, 0, NULL, "/run/guest-ha/app.sock", "UNIX socket of the app API"},
    {"sg_status_timeout_ms", T_INT, 100, 60000, NULL, "5000", "server group status time limit"},
    {"sg_rate_per_s", T_INT, 1, 10000, NULL, "50", "server group PDUs per second sent"},
    {"sg_burst", T_INT, 1, 10000, NULL, "100", "burst of the server group rate limit"},
    {"log", T_CHOICE, 0, 0, "stderr syslog", "stderr", "stderr or syslog"},
    {"log_level", T_CHOICE, 0, 0, "debug info warning error", "info", "log level"},
};
#define NOPT (sizeof(options) / sizeof(options[0]))

static char *trim(char *s)
{
    char *e;
    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Store the checked value of option o into c; NULL or the reason it is invalid. */
static const char *set_value(gd_config *c, const option *o, const char *raw, char *why, size_t n)
{
    char buf[GD_PATH_MAX + 8], *v;
    if (strlen(raw) >= sizeof buf)
        return "value too long";
    strcpy(buf, raw);
    v = trim(buf);
    if (o->type == T_INT) {
        char *end;
        long x;
        errno = 0;
        x = strtol(v, &end, 10);
        if (!*v || *end || errno) {
            snprintf(why, n, "must be an integer between %ld and %ld", o->lo, o->hi);
            return why;
        }
        if (x < o->lo || x > o->hi) {
            snprintf(why, n, "must be between %ld and %ld", o->lo, o->hi);
            return why;
        }
#define SETL(k) if (strcmp(o->key, #k) == 0) c->k = x
        SETL(serial_baudrate); SETL(interval_ms); SETL(check_interval_ms);
        SETL(check_timeout_ms); SETL(sg_status_timeout_ms); SETL(sg_rate_per_s); SETL(sg_burst);
        return NULL;
    }
    if (o->type == T_CHOICE) {
        const char *list = o->choices;
        char *p;
        int empty_ok = list[0] == '?', found = 0;
        size_t k = strlen(v);
        for (p = v; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if (empty_ok)
            list++;
        if (!k && empty_ok) {
            found = 1;
        } else if (k) {
            const char *s = list;
            while (*s) {
                size_t w = strcspn(s, " ");
                if (w == k && strncmp(s, v, k) == 0)
                    found = 1;
                s += w + (s[w] == ' ');
            }
        }
        if (!found) {
            size_t o = (size_t)snprintf(why, n, "must be one of ");
            for (p = (char *)list; *p && o + 3 < n; p++) {
                if (*p == ' ')
                    why[o++] = ',';
                why[o++] = *p;
            }
            why[o] = '\0';
            return why;
        }
    } else {
        if (!*v)
            return "must not be empty";
        if (o->type == T_NAME) {
            size_t chars = gj_utf8_chars(v, strlen(v));
            const char *p;
            if (chars == (size_t)-1)
                return "must be valid UTF-8";
            if (chars > 64)
                return "longer than 64 characters";
            for (p = v; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7F)
                    return "must not contain control characters";
        }
    }
#define SETS(k) if (strcmp(o->key, #k) == 0) { if (strlen(v) >= sizeof c->k) return "value too long"; strcpy(c->k, v); }
    SETS(port); SETS(transport); SETS(name); SETS(corrective_action); SETS(checks_dir);
    SETS(app_socket); SETS(log); SETS(log_level);
    return NULL;
}

static const option *find(const char *key)
{
    size_t i;
    for (i = 0; i < NOPT; i++)
        if (strcmp(options[i].key, key) == 0)
            return &options[i];
    return NULL;
}

static int read_file(gd_config *c, const char *path, int required, char *err, size_t n)
{
    FILE *f = fopen(path, "r");
    char line[4096], why[160];
    int in_section = 0, lineno = 0;
    if (!f) {
        if (errno == ENOENT && !required)
            return 0;
        if (errno == ENOENT)
            snprintf(err, n, "config file %s not found", path);
        else
            snprintf(err, n, "cannot read config file %s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char *s = line, *sep, *k, *v;
        const option *o;
        const char *bad;
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, n, "config file %s: line %d too long", path, lineno);
            goto fail;
        }
        if (isspace((unsigned char)line[0]) && *trim(line) && in_section >= 0) {
            snprintf(err, n, "config file %s: line %d: continuation lines are not supported",
                     path, lineno);
            goto fail;
        }
        s = trim(line);
        if (!*s || *s == '#' || *s == ';')
            continue;
        if (*s == '[') {
            char *e = strchr(s, ']');
            if (!e) {
                snprintf(err, n, "config file %s: line %d: bad section header", path, lineno);
                goto fail;
            }
            *e = '\0';
            if (strcmp(s + 1, "guestd") != 0) {
                snprintf(err, n, "config file %s: unknown section [%s] (expected [guestd])",
                         path, s + 1);
                goto fail;
            }
            in_section = 1;
            continue;
        }
        if (!in_section) {
            snprintf(err, n, "config file %s: File contains no section headers.", path);
            goto fail;
        }
        sep = s + strcspn(s, "=:");
        if (!*sep) {
            snprintf(err, n, "config file %s: line %d: expected key = value", path, lineno);
            goto fail;
        }
        *sep = '\0';
        k = trim(s);
        v = sep + 1;
        for (s = k; *s; s++)
            *s = (char)tolower((unsigned char)*s);
        o = find(k);
        if (!o) {
            snprintf(err, n, "config file %s: unknown key '%.64s' in [guestd]", path, k);
            goto fail;
        }
        bad = set_value(c, o, v, why, sizeof why);
        if (bad) {
            snprintf(err, n, "config file %s [guestd]: %s: %s (got '%.64s')", path, k, bad,
                     trim(v));
            goto fail;
        }
    }
    fclose(f);
    return 0;
fail:
    fclose(f);
    return -1;
}

static void usage(void)
{
    size_t i;
    printf("usage: %s [--config PATH] [--check-config] [--KEY VALUE ...]\n\n"
           "guest-ha guest daemon (C): heartbeat and health checks over virtio-serial.\n\n"
           "  --config PATH     config file (default /etc/guest-ha/guestd.conf)\n"
           "  --check-config    validate the configuration, print it and exit\n",
           GD_PROG);
    for (i = 0; i < NOPT; i++) {
        char flag[40], *p;
        snprintf(flag, sizeof flag, "--%s", options[i].key);
        for (p = flag + 2; *p; p++)
            if (*p == '_')
                *p = '-';
        printf("  %-24s %s [config key %s; default %s]\n", flag, options[i].help,
               options[i].key, *options[i].dflt ? options[i].dflt : "none");
    }
}

int gd_config_load(gd_config *c, int argc, char **argv, int *check_only, char *err, size_t n)
{
    const char *config = NULL, *flagval[NOPT];
    char why[160];
    size_t i;
    int a;
    memset(c, 0, sizeof(*c));
    memset(flagval, 0, sizeof flagval);
    *check_only = 0;
    for (i = 0; i < NOPT; i++)
        if (*options[i].dflt && set_value(c, &options[i], options[i].dflt, why, sizeof why))
            return -1;
    for (a = 1; a < argc; a++) {
        char key[64], *eq, *p;
        const char *val = NULL;
        const option *o;
        if (strcmp(argv[a], "-h") == 0 || strcmp(argv[a], "--help") == 0) {
            usage();
            return 1;
        }
        if (strcmp(argv[a], "--version") == 0) {
            printf("%s %s (C)\n", GD_PROG, GD_VERSION);
            return 1;
        }
        if (strcmp(argv[a], "--check-config") == 0) {
            *check_only = 1;
            continue;
        }
        if (strncmp(argv[a], "--", 2) != 0 || strlen(argv[a]) >= sizeof key + 2) {
            snprintf(err, n, "unrecognized argument: %.100s", argv[a]);
            return -1;
        }
        strcpy(key, argv[a] + 2);
        eq = strchr(key, '=');
        if (eq) {
            *eq = '\0';
            val = argv[a] + 2 + (eq - key) + 1;
        }
        for (p = key; *p; p++)
            if (*p == '-')
                *p = '_';
        if (!val) {
            if (a + 1 >= argc) {
                snprintf(err, n, "argument --%s: expected one argument", argv[a] + 2);
                return -1;
            }
            val = argv[++a];
        }
        if (strcmp(key, "config") == 0) {
            config = val;
            continue;
        }
        o = find(key);
        if (!o) {
            snprintf(err, n, "unrecognized argument: %.100s", argv[a]);
            return -1;
        }
        flagval[o - options] = val;
    }
    if (read_file(c, config ? config : "/etc/guest-ha/guestd.conf", config != NULL, err, n))
        return -1;
    for (i = 0; i < NOPT; i++) {
        const char *bad;
        if (!flagval[i])
            continue;
        bad = set_value(c, &options[i], flagval[i], why, sizeof why);
        if (bad) {
            snprintf(err, n, "command line: %s: %s (got '%.64s')", options[i].key, bad,
                     flagval[i]);
            return -1;
        }
    }
    if (!c->name[0]) {
        char host[256] = "";
        size_t o = 0;
        const char *h;
        gethostname(host, sizeof host - 1);
        for (h = host; *h && o < 64 * 4; h++)
            if ((unsigned char)*h >= 0x20)
                c->name[o++] = *h;
        c->name[o] = '\0';
        if (!o || gj_utf8_chars(c->name, o) > 64 || gj_utf8_chars(c->name, o) == (size_t)-1)
            strcpy(c->name, "guest");
    }
    config = config ? config : "/etc/guest-ha/guestd.conf";
    if (config[0] == '/') {
        snprintf(c->config_path, sizeof c->config_path, "%s", config);
    } else {
        char cwd[GD_PATH_MAX / 2] = "";
        if (!getcwd(cwd, sizeof cwd))
            strcpy(cwd, ".");
        snprintf(c->config_path, sizeof c->config_path, "%s/%.500s", cwd, config);
    }
    if (strcmp(c->transport, "serial") == 0) {
        static const long rates[] = {50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400,
                                     4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800,
                                     921600, 0};
        for (i = 0; rates[i] && rates[i] != c->serial_baudrate; i++)
            ;
        if (!rates[i]) {
            snprintf(err, n, "serial_baudrate %ld is not a standard rate this build supports",
                     c->serial_baudrate);
            return -1;
        }
    }
    return 0;
}

void gd_config_print(const gd_config *c)
{
    printf("port = %s\ntransport = %s\nserial_baudrate = %ld\nname = %s\ninterval_ms = %ld\n"
           "corrective_action = %s\nchecks_dir = %s\ncheck_interval_ms = %ld\n"
           "check_timeout_ms = %ld\napp_socket = %s\nsg_status_timeout_ms = %ld\n"
           "sg_rate_per_s = %ld\nsg_burst = %ld\nlog = %s\nlog_level = %s\nconfig_path = %s\n",
           c->port, c->transport, c->serial_baudrate, c->name, c->interval_ms,
           c->corrective_action, c->checks_dir, c->check_interval_ms, c->check_timeout_ms,
           c->app_socket, c->sg_status_timeout_ms, c->sg_rate_per_s, c->sg_burst, c->log,
           c->log_level, c->config_path);
}
