/*
 * A woof_bridge.c session behind a line protocol on stdin/stdout, so that
 * the tests can drive a copy of the C core built on its own (with
 * -fsanitize=address,undefined) exactly as they drive the linked one.
 * Host-only test code: it uses stdio, the core does not.
 *
 * One command a line, one answer a line. Bytes travel as hex, "-" for none.
 *
 *   init ID_HEX KEY_HEX BOOT CAPS PING_MS NOW RAND   -> r RC
 *   append INDEX PAYLOAD RAND                        -> r RC
 *   appendn NAME_HEX PAYLOAD RAND                    -> r RC
 *   sub INDEX FROM RAND / subn NAME_HEX FROM RAND    -> r RC
 *   off HANDLER_HEX PAYLOAD RAND                     -> r RC
 *   tx NOW CAP                                       -> r RC FRAME
 *   rx NOW FRAME                                     -> r RC EVENT
 *   ev NOW                                           -> r RC EVENT
 *   timeout                                          -> r T
 *   reconnect NOW                                    -> r 0
 *   state  -> r CONNECTED SESSION OUTBOX RTO SENT RETX ACKED REJ GAVEUP DELIV STALE
 *                MALFORMED FORGED REPLAYED TOOOLD UNEXPECTED ATTEMPT
 *
 * EVENT is TYPE KIND CODE INDEX SEQ SESSION TOPIC_SEQ RTT NAME PAYLOAD.
 *
 * SLIP and the chooser (a deframer and a chooser of their own, static, so
 * zeroed as the header allows):
 *
 *   slip FRAME CAP        -> r RC OUT        woof_slip_encode into CAP bytes
 *   dinit                 -> r 0             woof_deframer_init
 *   dfeed MODE BYTES      -> r FRAME... ; COUNT DROPPED
 *                            MODE 0: woof_deframer_feed with a callback;
 *                            1: woof_deframer_push byte by byte
 *   dsize                 -> r SIZEOF WOOF_DEFRAME_MAX
 *   cinit / cfail         -> r 0             woof_chooser_init / _remote_failed
 *   cpick                 -> r SIDE
 *   crec SIDE ELAPSED     -> r 0
 *   cmeas                 -> r BITS LOCAL REMOTE   (- for a side not measured)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "woof_bridge.h"

#define LINE_MAX_LEN 8192

static woof_session session;
static woof_deframer deframer;
static woof_chooser chooser;

static int unhex(const char *text, unsigned char *out, size_t cap, size_t *len) {
    size_t n = 0;
    if (strcmp(text, "-") == 0) {
        *len = 0;
        return 0;
    }
    while (text[0] && text[1]) {
        unsigned v;
        if (n >= cap || sscanf(text, "%2x", &v) != 1) {
            return -1;
        }
        out[n++] = (unsigned char)v;
        text += 2;
    }
    if (text[0]) {
        return -1;
    }
    *len = n;
    return 0;
}

static void put_hex(const unsigned char *p, size_t len) {
    size_t i;
    if (p == NULL || len == 0) {
        fputs(" -", stdout);
        return;
    }
    putchar(' ');
    for (i = 0; i < len; i++) {
        printf("%02x", p[i]);
    }
}

static void put_event(int rc, const woof_event *ev) {
    printf("r %d %u %u %u %u %lu %lu %llu %llu", rc, ev->type, ev->kind, ev->code,
           ev->topic_index, (unsigned long)ev->seq, (unsigned long)ev->session_id,
           (unsigned long long)ev->topic_seq, (unsigned long long)ev->rtt_ms);
    put_hex(ev->topic_name, ev->topic_name_len);
    put_hex(ev->payload, ev->payload_len);
    putchar('\n');
}

static void put_frame(void *ctx, uint8_t *frame, size_t len) {
    size_t *count = (size_t *)ctx;
    *count += 1;
    put_hex(frame, len);
    /* The frame is ours to change: the deframer must not read it again. */
    memset(frame, 0xC0, len);
}

static void fail(const char *line) {
    fprintf(stderr, "harness: bad command: %s\n", line);
    exit(2);
}

int main(void) {
    static char line[LINE_MAX_LEN];
    static unsigned char a[LINE_MAX_LEN / 2 + 1], b[LINE_MAX_LEN / 2 + 1];
    static char sa[LINE_MAX_LEN / 2 + 1];
    static char w1[LINE_MAX_LEN], w2[LINE_MAX_LEN], w3[LINE_MAX_LEN];
    static unsigned char slip_out[LINE_MAX_LEN + 2];
    while (fgets(line, sizeof line, stdin) != NULL) {
        char cmd[16];
        unsigned long long x, y, z, t;
        unsigned long r;
        size_t la, lb;
        line[strcspn(line, "\n")] = '\0';
        if (sscanf(line, "%15s", cmd) != 1) {
            fail(line);
        }
        if (strcmp(cmd, "init") == 0) {
            woof_config c;
            memset(&c, 0, sizeof c);
            if (sscanf(line, "init %s %s %llu %llu %llu %llu %lu", w1, w2, &x, &y, &z, &t, &r) !=
                    7 ||
                unhex(w1, (unsigned char *)sa, sizeof sa - 1, &la) || unhex(w2, b, 16, &lb) ||
                lb != 16) {
                fail(line);
            }
            sa[la] = '\0';
            c.device_id = sa;
            memcpy(c.key, b, 16);
            c.boot_id = x;
            c.caps = (uint8_t)y;
            c.ping_interval_ms = z;
            printf("r %d\n", woof_init(&session, &c, t, (uint32_t)r));
        } else if (strcmp(cmd, "append") == 0 || strcmp(cmd, "appendn") == 0 ||
                   strcmp(cmd, "off") == 0) {
            long rc;
            if (sscanf(line, "%*s %s %s %lu", w1, w2, &r) != 3 || unhex(w2, b, sizeof b, &lb)) {
                fail(line);
            }
            if (strcmp(cmd, "append") == 0) {
                rc = (long)woof_append(&session, (uint8_t)strtoul(w1, NULL, 10),
                                       lb ? b : NULL, lb, (uint32_t)r);
            } else {
                if (unhex(w1, (unsigned char *)sa, sizeof sa - 1, &la)) {
                    fail(line);
                }
                sa[la] = '\0';
                rc = cmd[0] == 'o'
                         ? (long)woof_offload(&session, sa, lb ? b : NULL, lb, (uint32_t)r)
                         : (long)woof_append_named(&session, sa, lb ? b : NULL, lb,
                                                   (uint32_t)r);
            }
            printf("r %ld\n", rc);
        } else if (strcmp(cmd, "sub") == 0 || strcmp(cmd, "subn") == 0) {
            long rc;
            if (sscanf(line, "%*s %s %llu %lu", w1, &x, &r) != 3) {
                fail(line);
            }
            if (cmd[3] == 'n') {
                if (unhex(w1, (unsigned char *)sa, sizeof sa - 1, &la)) {
                    fail(line);
                }
                sa[la] = '\0';
                rc = (long)woof_subscribe_named(&session, sa, x, (uint32_t)r);
            } else {
                rc = (long)woof_subscribe(&session, (uint8_t)strtoul(w1, NULL, 10), x,
                                          (uint32_t)r);
            }
            printf("r %ld\n", rc);
        } else if (strcmp(cmd, "tx") == 0) {
            int rc;
            if (sscanf(line, "tx %llu %llu", &x, &y) != 2 || y > sizeof a) {
                fail(line);
            }
            rc = woof_poll_transmit(&session, x, a, (size_t)y);
            printf("r %d", rc);
            put_hex(a, rc > 0 ? (size_t)rc : 0);
            putchar('\n');
        } else if (strcmp(cmd, "rx") == 0) {
            woof_event ev;
            int rc;
            if (sscanf(line, "rx %llu %s", &x, w3) != 2 || unhex(w3, a, sizeof a, &la)) {
                fail(line);
            }
            /* Exactly la bytes of the caller's, so that the sanitizer sees
             * any read past them: copied to the end of a buffer. */
            {
                unsigned char *exact = b + sizeof b - la;
                memmove(exact, a, la);
                rc = woof_handle_input(&session, x, la ? exact : NULL, la, &ev);
            }
            put_event(rc, &ev);
        } else if (strcmp(cmd, "ev") == 0) {
            woof_event ev;
            int rc;
            if (sscanf(line, "ev %llu", &x) != 1) {
                fail(line);
            }
            memset(&ev, 0, sizeof ev);
            rc = woof_poll_event(&session, x, &ev);
            put_event(rc, &ev);
        } else if (strcmp(cmd, "timeout") == 0) {
            printf("r %llu\n", (unsigned long long)woof_poll_timeout(&session));
        } else if (strcmp(cmd, "reconnect") == 0) {
            if (sscanf(line, "reconnect %llu", &x) != 1) {
                fail(line);
            }
            woof_reconnect(&session, x);
            printf("r 0\n");
        } else if (strcmp(cmd, "state") == 0) {
            woof_stats st;
            woof_drops d;
            woof_get_stats(&session, &st);
            woof_get_drops(&session, &d);
            printf("r %d %lu %lu %llu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu\n",
                   woof_is_connected(&session), (unsigned long)woof_session_id(&session),
                   (unsigned long)woof_outbox_len(&session),
                   (unsigned long long)woof_retransmit_timeout_ms(&session),
                   (unsigned long)st.sent, (unsigned long)st.retransmitted,
                   (unsigned long)st.acked, (unsigned long)st.rejected,
                   (unsigned long)st.gave_up, (unsigned long)st.delivered,
                   (unsigned long)st.stale_answers, (unsigned long)d.malformed,
                   (unsigned long)d.forged, (unsigned long)d.replayed,
                   (unsigned long)d.too_old, (unsigned long)d.unexpected,
                   (unsigned long)woof_hello_attempt(&session));
        } else if (strcmp(cmd, "slip") == 0) {
            unsigned char *out;
            int rc;
            if (sscanf(line, "slip %s %llu", w1, &x) != 2 || unhex(w1, a, sizeof a, &la) ||
                x > sizeof slip_out) {
                fail(line);
            }
            /* Exactly CAP bytes to write into and la to read, at the ends
             * of their buffers, so that the sanitizer sees any access past
             * them. */
            out = slip_out + sizeof slip_out - x;
            memmove(b + sizeof b - la, a, la);
            rc = woof_slip_encode(la ? b + sizeof b - la : NULL, la, out, (size_t)x);
            printf("r %d", rc);
            put_hex(out, rc > 0 ? (size_t)rc : 0);
            putchar('\n');
        } else if (strcmp(cmd, "dinit") == 0) {
            woof_deframer_init(&deframer);
            printf("r 0\n");
        } else if (strcmp(cmd, "dfeed") == 0) {
            unsigned char *exact;
            size_t count = 0, returned = 0, i;
            if (sscanf(line, "dfeed %llu %s", &x, w1) != 2 || unhex(w1, a, sizeof a, &la)) {
                fail(line);
            }
            exact = b + sizeof b - la;
            memmove(exact, a, la);
            printf("r");
            if (x == 0) {
                returned = woof_deframer_feed(&deframer, la ? exact : NULL, la, put_frame, &count);
                if (returned != count) {
                    fprintf(stderr, "harness: feed returned %lu for %lu frames\n",
                            (unsigned long)returned, (unsigned long)count);
                    exit(3);
                }
            } else {
                for (i = 0; i < la; i++) {
                    size_t n = woof_deframer_push(&deframer, exact[i]);
                    if (n > 0) {
                        put_hex(deframer.buf, n);
                        memset(deframer.buf, 0xC0, n);
                        count++;
                    }
                }
            }
            printf(" ; %lu %lu\n", (unsigned long)count,
                   (unsigned long)woof_deframer_dropped(&deframer));
        } else if (strcmp(cmd, "dsize") == 0) {
            printf("r %lu %lu\n", (unsigned long)woof_deframer_size(),
                   (unsigned long)WOOF_DEFRAME_MAX);
        } else if (strcmp(cmd, "cinit") == 0) {
            woof_chooser_init(&chooser);
            printf("r 0\n");
        } else if (strcmp(cmd, "cfail") == 0) {
            woof_chooser_remote_failed(&chooser);
            printf("r 0\n");
        } else if (strcmp(cmd, "cpick") == 0) {
            printf("r %d\n", woof_chooser_pick(&chooser));
        } else if (strcmp(cmd, "crec") == 0) {
            if (sscanf(line, "crec %llu %llu", &x, &y) != 2) {
                fail(line);
            }
            woof_chooser_record(&chooser, (int)x, y);
            printf("r 0\n");
        } else if (strcmp(cmd, "cmeas") == 0) {
            uint64_t l = 0, rt = 0;
            unsigned bits = woof_chooser_measured(&chooser, &l, &rt);
            printf("r %u", bits);
            if (bits & WOOF_MEASURED_LOCAL) {
                printf(" %llu", (unsigned long long)l);
            } else {
                printf(" -");
            }
            if (bits & WOOF_MEASURED_REMOTE) {
                printf(" %llu\n", (unsigned long long)rt);
            } else {
                printf(" -\n");
            }
        } else {
            fail(line);
        }
        fflush(stdout);
    }
    return 0;
}
