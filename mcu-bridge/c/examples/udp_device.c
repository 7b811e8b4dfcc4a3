/*
 * udp_device: a woof device in C over UDP, on a host (POSIX sockets): the
 * driver loop an ESP8266 sketch runs (see woof_bridge.h), around the same
 * core.
 *
 *   udp_device HOST PORT ID KEYHEX TOPIC COUNT [RATE_PER_S]
 *
 * Says hello to the woof gateway at HOST:PORT (a node started with
 * --bridge-listen udp://HOST:PORT) as device ID with the key KEYHEX (32 hex
 * digits, as `woof device add ID --topics ...` printed it), appends COUNT
 * readings {"device":"ID","n":i} to TOPIC by name at RATE_PER_S a second
 * (default 10), waits until each is acknowledged (retransmitting as the
 * core says) or given up, and prints one line:
 *
 *   {"sent":N,"acked":A,"retransmitted":R,"gave_up":G,"rejected":J,"topic_seqs":[...]}
 *
 * topic_seqs holds each reading's element number in the topic, in reading
 * order (null for one not acknowledged). Exits 0 when every reading was
 * acknowledged, 1 when not (or when nothing was heard for
 * UDP_DEVICE_IDLE_MS, default 60,000 ms), 2 on bad arguments.
 *
 * Build: cc -std=c99 -O2 -I mcu-bridge/c mcu-bridge/c/examples/udp_device.c \
 *            mcu-bridge/c/woof_bridge.c -o udp_device
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "woof_bridge.h"

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* xorshift32, seeded from /dev/urandom: the core's jitter. */
static uint32_t rng_state = 0x9e3779b9u;

static uint32_t rnd(void) {
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return x;
}

/* 12 random bytes: the boot id (new at every run, as at every boot) and
 * the seed. */
static void seed(uint64_t *boot_id) {
    unsigned char b[12];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t n = f != NULL ? fread(b, 1, sizeof b, f) : 0;
    if (f != NULL) {
        fclose(f);
    }
    if (n != sizeof b) {
        uint64_t t = now_ms() ^ ((uint64_t)getpid() << 32);
        memcpy(b, &t, 8);
        memcpy(b + 8, &t, 4);
    }
    memcpy(boot_id, b, 8);
    memcpy(&rng_state, b + 8, 4);
    rng_state |= 1;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static int parse_key(const char *text, uint8_t key[WOOF_KEY_LEN]) {
    size_t i;
    if (strlen(text) != 2 * WOOF_KEY_LEN) {
        return -1;
    }
    for (i = 0; i < WOOF_KEY_LEN; i++) {
        int hi = hex_digit(text[2 * i]), lo = hex_digit(text[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        key[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int usage(const char *msg) {
    fprintf(stderr,
            "udp_device: %s\nusage: udp_device HOST PORT ID KEYHEX TOPIC COUNT [RATE_PER_S]\n",
            msg);
    return 2;
}

/* The reading whose device sequence number is seq (seqs grow with the
 * readings), or -1. */
static long reading_of(const uint32_t *seqs, long produced, uint32_t seq) {
    long lo = 0, hi = produced;
    while (lo < hi) {
        long mid = lo + (hi - lo) / 2;
        if (seqs[mid] < seq) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < produced && seqs[lo] == seq ? lo : -1;
}

int main(int argc, char **argv) {
    static woof_session s;
    static uint8_t buf[WOOF_FRAME_LEN_MAX + 1];
    woof_config config;
    struct addrinfo hints, *addrs = NULL, *a;
    const char *topic, *idle_env;
    char *end;
    long count, produced = 0, acked = 0, gave_up = 0, rejected = 0, i;
    double rate = 10.0, next_at;
    uint64_t boot_id, last_progress, idle_ms = 60000;
    uint32_t *seqs;
    uint64_t *topic_seqs;
    /* Per reading: 0 waiting, 1 acknowledged, 2 given up or refused. */
    unsigned char *done;
    int fd = -1, rc;
    woof_stats stats;

    if (argc < 7 || argc > 8) {
        return usage("wrong number of arguments");
    }
    memset(&config, 0, sizeof config);
    config.device_id = argv[3];
    if (parse_key(argv[4], config.key) != 0) {
        return usage("KEYHEX must be 32 hex digits");
    }
    topic = argv[5];
    count = strtol(argv[6], &end, 10);
    if (*end != '\0' || count < 0 || count > 10000000) {
        return usage("COUNT must be a number of readings");
    }
    if (argc == 8) {
        rate = strtod(argv[7], &end);
        if (*end != '\0' || !(rate > 0.0)) {
            return usage("RATE_PER_S must be a positive number");
        }
    }
    idle_env = getenv("UDP_DEVICE_IDLE_MS");
    if (idle_env != NULL) {
        idle_ms = strtoull(idle_env, NULL, 10);
    }

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    rc = getaddrinfo(argv[1], argv[2], &hints, &addrs);
    if (rc != 0) {
        fprintf(stderr, "udp_device: %s:%s: %s\n", argv[1], argv[2], gai_strerror(rc));
        return 2;
    }
    for (a = addrs; a != NULL; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            break;
        }
        if (fd >= 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(addrs);
    if (fd < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
        fprintf(stderr, "udp_device: no socket to %s:%s: %s\n", argv[1], argv[2],
                strerror(errno));
        return 2;
    }

    seed(&boot_id);
    config.boot_id = boot_id;
    config.caps = 0;
    config.ping_interval_ms = WOOF_PING_INTERVAL_MS;
    rc = woof_init(&s, &config, now_ms(), rnd());
    if (rc != WOOF_OK) {
        return usage("ID must be 1 to 32 bytes");
    }
    seqs = calloc((size_t)count + 1, sizeof *seqs);
    topic_seqs = calloc((size_t)count + 1, sizeof *topic_seqs);
    done = calloc((size_t)count + 1, 1);
    if (seqs == NULL || topic_seqs == NULL || done == NULL) {
        fprintf(stderr, "udp_device: out of memory\n");
        return 1;
    }

    next_at = (double)now_ms();
    last_progress = now_ms();
    while (acked + gave_up + rejected < count) {
        uint64_t now = now_ms(), wake;
        woof_event ev;
        struct pollfd p;
        int n;

        /* New readings while the rate and the outbox allow. */
        while (produced < count && (double)now >= next_at) {
            char payload[96];
            int len = snprintf(payload, sizeof payload, "{\"device\":\"%s\",\"n\":%ld}",
                               argv[3], produced);
            int32_t seq = woof_append_named(&s, topic, payload, (size_t)len, rnd());
            if (seq == WOOF_ERR_OUTBOX_FULL) {
                break;
            }
            if (seq < 0) {
                fprintf(stderr, "udp_device: append to %s: %s\n", topic, woof_strerror(seq));
                return 2;
            }
            seqs[produced++] = (uint32_t)seq;
            next_at += 1000.0 / rate;
        }
        while ((n = woof_poll_transmit(&s, now, buf, sizeof buf)) > 0) {
            if (send(fd, buf, (size_t)n, 0) < 0 && errno != ECONNREFUSED) {
                fprintf(stderr, "udp_device: send: %s\n", strerror(errno));
            }
        }
        if (n < 0) {
            fprintf(stderr, "udp_device: %s\n", woof_strerror(n));
            return 1;
        }
        while (woof_poll_event(&s, now, &ev) > 0) {
            if (ev.type == WOOF_EV_GAVE_UP) {
                i = reading_of(seqs, produced, ev.seq);
                if (i >= 0 && !done[i]) {
                    done[i] = 2;
                    gave_up++;
                }
            }
        }
        if (now - last_progress > idle_ms) {
            fprintf(stderr, "udp_device: nothing heard for %llu ms\n",
                    (unsigned long long)idle_ms);
            break;
        }

        /* Sleep until the core's next deadline, the next reading, or a
         * datagram. */
        wake = woof_poll_timeout(&s);
        if (produced < count && (uint64_t)next_at < wake) {
            wake = (uint64_t)next_at;
        }
        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        n = poll(&p, 1, wake <= now ? 0 : (int)(wake - now > 1000 ? 1000 : wake - now));
        if (n <= 0 || !(p.revents & POLLIN)) {
            continue;
        }
        for (;;) {
            ssize_t got = recv(fd, buf, sizeof buf, 0);
            if (got <= 0) {
                break;
            }
            now = now_ms();
            if (woof_handle_input(&s, now, buf, (size_t)got, &ev) <= 0) {
                continue;
            }
            last_progress = now;
            if (ev.type == WOOF_EV_ACKED || ev.type == WOOF_EV_REJECTED) {
                i = reading_of(seqs, produced, ev.seq);
                if (i < 0 || done[i]) {
                    continue;
                }
                done[i] = ev.type == WOOF_EV_ACKED ? 1 : 2;
                if (ev.type == WOOF_EV_ACKED) {
                    topic_seqs[i] = ev.topic_seq;
                    acked++;
                } else {
                    fprintf(stderr, "udp_device: reading %ld refused with code %u\n", i,
                            ev.code);
                    rejected++;
                }
            }
        }
    }

    woof_get_stats(&s, &stats);
    printf("{\"sent\":%ld,\"acked\":%ld,\"retransmitted\":%lu,\"gave_up\":%ld,\"rejected\":%ld,"
           "\"topic_seqs\":[",
           produced, acked, (unsigned long)stats.retransmitted, gave_up, rejected);
    for (i = 0; i < count; i++) {
        if (i > 0) {
            putchar(',');
        }
        if (done[i] == 1) {
            printf("%llu", (unsigned long long)topic_seqs[i]);
        } else {
            fputs("null", stdout);
        }
    }
    puts("]}");
    close(fd);
    free(seqs);
    free(topic_seqs);
    free(done);
    return acked == count ? 0 : 1;
}
