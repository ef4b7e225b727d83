/* fuzz.c - mutation fuzzer for the frame decoder, JSON parser, PDU validator and
 * guest state machine. Build it with `make sanitize` (ASan + UBSan, abort on the
 * first report), so any memory or undefined-behaviour error ends the run with a
 * non-zero status. Invariants checked on every iteration count as findings.
 *
 *   gh-fuzz [--iterations N] [--seed S]
 *
 * Mutations: bit flips, byte overwrites, truncation, splicing two seeds,
 * duplicated regions (up to oversized frames), inserted tokens (deep nesting,
 * huge and tiny numbers, escapes, surrogates, invalid UTF-8), fed to the
 * guest in random splits with the clock moving. Last line: a JSON summary. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guestha.h"

#define MAX_LEN 12000

static unsigned long long rng_state;

static unsigned long long rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static const char *const seeds[] = {
    "{\"version\":1,\"source_addr\":\"heartbeat\",\"dest_addr\":\"heartbeat\",\"data\":{\"msg_type\":\"init_ack\",\"invocation_id\":\"fuzz\",\"interval_ms\":1000}}",
    "{\"version\":1,\"source_addr\":\"heartbeat\",\"dest_addr\":\"heartbeat\",\"data\":{\"msg_type\":\"challenge\",\"seq\":1,\"nonce\":\"9f86d081884c7d65\"}}",
    "{\"version\":1,\"source_addr\":\"heartbeat\",\"dest_addr\":\"heartbeat\",\"data\":{\"msg_type\":\"nack\",\"orig_msg_type\":\"challenge_response\",\"log_msg\":\"not_registered: x\"}}",
    "{\"version\":1,\"source_addr\":\"server_group\",\"dest_addr\":\"server_group\",\"data\":{\"msg_type\":\"status_response\",\"seq\":7,\"data\":{\"uuid\":\"3f2a7c1e-9b4d-4e8a-a1c2-5d6e7f809a1b\",\"host\":null,\"x\":[1.5,-2e-3,true]}}}",
    "{\"version\":1,\"source_addr\":\"server_group\",\"dest_addr\":\"server_group\",\"data\":{\"msg_type\":\"status_response_done\",\"seq\":7}}",
    "{\"version\":1,\"source_addr\":\"server_group\",\"dest_addr\":\"server_group\",\"data\":{\"msg_type\":\"notification\",\"data\":{\"state\":\"stopped\",\"\\u00e9\":\"\\ud83d\\ude00\"}}}",
    "{\"version\":1,\"source_addr\":\"server_group\",\"dest_addr\":\"server_group\",\"data\":{\"msg_type\":\"broadcast\",\"source_instance\":\"3f2a7c1e-9b4d-4e8a-a1c2-5d6e7f809a1b\",\"data\":{\"role\":\"standby\",\"epoch\":12,\"f\":1e300}}}",
    "{\"version\":1,\"source_addr\":\"heartbeat\",\"dest_addr\":\"heartbeat\",\"data\":{\"msg_type\":\"init\",\"invocation_id\":\"abc\",\"name\":\"vnf\",\"interval_ms\":100,\"corrective_action\":\"reboot\"}}",
    "{\"version\":1,\"source_addr\":\"heartbeat\",\"dest_addr\":\"heartbeat\",\"data\":{\"msg_type\":\"challenge_response\",\"seq\":1,\"nonce\":\"9f86d081\",\"health\":\"unhealthy\",\"reason\":\"r\"}}",
    "{\"version\":1,\"source_addr\":\"server_group\",\"dest_addr\":\"server_group\",\"data\":{\"msg_type\":\"broadcast\",\"data\":[\"x\",0.1,-0,{\"a\":{}}]}}",
};
#define NSEEDS (sizeof seeds / sizeof seeds[0])

static const char *const tokens[] = {
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "]]]]]]]]", "{\"a\":", "1e400", "-1e400", "1e-400",
    "123456789012345678901234567890", "9007199254740992", "-0", "-0.0", "1.7976931348623157e308",
    "NaN", "Infinity", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\u0000\"", "\\", "\"", ",", ":",
    "\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\n", "\r\n", " ",
    "null", "true", "{}", "[]", "\"msg_type\":\"nack\"", "\"seq\":", "5e-324", "0.1",
};
#define NTOKENS (sizeof tokens / sizeof tokens[0])

static size_t mutate(char *buf)
{
    const char *seed = seeds[below(NSEEDS)];
    size_t len = strlen(seed), rounds = 1 + below(4), r;
    memcpy(buf, seed, len);
    for (r = 0; r < rounds; r++) {
        size_t pos = below(len + 1), k;
        switch (rnd() % 8) {
        case 0: /* bit flips */
            for (k = 0; k < 1 + below(8) && len; k++)
                buf[below(len)] ^= (char)(1u << below(8));
            break;
        case 1: /* byte overwrite */
            if (len)
                buf[below(len)] = (char)rnd();
            break;
        case 2: /* truncation */
            len = below(len + 1);
            break;
        case 3: { /* splice: our head, another seed's tail */
            const char *o = seeds[below(NSEEDS)];
            size_t ol = strlen(o), from = below(ol);
            if (pos + ol - from < MAX_LEN) {
                memcpy(buf + pos, o + from, ol - from);
                len = pos + ol - from;
            }
            break;
        }
        case 4: { /* duplicate a region, sometimes many times (oversized frames) */
            size_t a = below(len + 1), n = below(len - a + 1), times = rnd() % 4 ? 1 : 1 + below(80);
            for (k = 0; k < times && len + n < MAX_LEN; k++) {
                memmove(buf + a + n, buf + a, len - a);
                len += n;
            }
            break;
        }
        default: { /* insert a token */
            const char *t = tokens[below(NTOKENS)];
            size_t tl = strlen(t), times = t[0] == '[' ? 1 + below(70) : 1;
            for (k = 0; k < times && len + tl < MAX_LEN; k++) {
                memmove(buf + pos + tl, buf + pos, len - pos);
                memcpy(buf + pos, t, tl);
                len += tl;
            }
            break;
        }
        }
    }
    return len;
}

int main(int argc, char **argv)
{
    static char buf[MAX_LEN + 64], wire[MAX_LEN + 8];
    static gh_guest g;
    unsigned long long iterations = 100000, i;
    unsigned long counts[GH_INVALID_FIELD + 1] = {0}, findings = 0, dropped_before;
    double now = 0;
    int a;
    rng_state = 88172645463325252ULL;
    for (a = 1; a + 1 < argc; a += 2) {
        if (strcmp(argv[a], "--iterations") == 0)
            iterations = strtoull(argv[a + 1], NULL, 10);
        else if (strcmp(argv[a], "--seed") == 0)
            rng_state ^= strtoull(argv[a + 1], NULL, 10) * 2654435761ULL + 1;
    }
    gh_guest_init(&g, "fuzz", 1000, "fuzz", "reboot", now);
    gh_guest_start(&g, now);
    for (i = 0; i < iterations; i++) {
        size_t len = mutate(buf), off = 0;
        gj_doc doc;
        gh_msg m;
        gh_error err;
        int dir = (int)(rnd() & 1);
        if (len <= GH_MAX_FRAME) {
            int rc = gh_decode(buf, len, dir, &doc, &m, &err);
            counts[rc == 0 ? GH_OK : err.code]++;
            if (rc == 0) {
                const gj_node *d = gh_field(&m, "data");
                char out[GH_MAX_FRAME + 2];
                gj_buf ob = {out, 0, sizeof out, 0};
                if (d && gj_compact_size(d) > GH_MAX_BROADCAST_BYTES)
                    findings++; /* validation let an oversized value through */
                if (d && gh_enc_broadcast(&ob, d) != 0)
                    findings++; /* an accepted value must re-encode within a frame */
            } else if (err.code < GH_MALFORMED_JSON || strlen(err.msg_type) > 256) {
                findings++;
            }
            gj_free(&doc);
        }
        /* the same bytes through the guest end, framed, in random splits */
        wire[0] = '\n';
        memcpy(wire + 1, buf, len);
        wire[len + 1] = '\n';
        dropped_before = g.dec.frames_dropped;
        while (off < len + 2) {
            size_t n = 1 + below(rnd() % 3 ? 64 : len + 2);
            if (n > len + 2 - off)
                n = len + 2 - off;
            gh_guest_receive(&g, wire + off, n, now);
            off += n;
        }
        counts[GH_FRAME_TOO_LARGE] += g.dec.frames_dropped - dropped_before;
        if (g.dec.plen > GH_MAX_FRAME || g.out_len > GH_MAX_OUTPUT)
            findings++;
        now += (double)below(50) / 1000.0;
        gh_guest_tick(&g, now);
        if (rnd() % 4)
            gh_guest_output_sent(&g, g.out_len);
        if (rnd() % 1000 == 0)
            gh_guest_host_connected(&g, now);
        if (g.state == GH_EXITED || rnd() % 5000 == 0) {
            gh_guest_init(&g, "fuzz", 1000, "fuzz", "reboot", now);
            gh_guest_start(&g, now);
        }
    }
    printf("{\"iterations\":%llu,\"findings\":%lu,\"accepted\":%lu,\"frame_too_large\":%lu,"
           "\"malformed_json\":%lu,\"invalid_envelope\":%lu,\"unsupported_version\":%lu,"
           "\"unknown_address\":%lu,\"unknown_msg_type\":%lu,\"invalid_field\":%lu}\n",
           iterations, findings, counts[GH_OK], counts[GH_FRAME_TOO_LARGE],
           counts[GH_MALFORMED_JSON], counts[GH_INVALID_ENVELOPE], counts[GH_UNSUPPORTED_VERSION],
           counts[GH_UNKNOWN_ADDRESS], counts[GH_UNKNOWN_MSG_TYPE], counts[GH_INVALID_FIELD]);
    return findings ? 1 : 0;
}
