/*
 * woof_bridge.h: the device side of woof's bridge protocol in C99, for
 * boards the Rust core (mcu-bridge/src) does not reach: an ESP8266 with the
 * Arduino core, any Arduino sketch, a vendor SDK. The same frames as the
 * Rust core, byte for byte (mcu-bridge/c-test proves it frame for frame);
 * see mcu-bridge/src/lib.rs for the frame format and DESIGN.md,
 * "Microcontrollers", for what the bridge promises.
 *
 * One header and one source file (woof_bridge.c). No malloc, no clock, no
 * sockets, no libc beyond memcpy/memset/memcmp: the caller owns a
 * `woof_session` (a static, or on the stack), brings the time in
 * milliseconds and random numbers, and moves datagrams. Bytes and the time
 * go in (woof_handle_input), bytes and the next deadline come out
 * (woof_poll_transmit, woof_poll_timeout), and what the application should
 * know comes out as events (woof_handle_input, woof_poll_event). Over a
 * byte stream (a serial line, TCP) rather than datagrams, frames travel in
 * SLIP (woof_slip_encode, woof_deframer); woof_chooser picks between
 * running a function on the device and offloading it (see the end).
 *
 * Sizes are fixed at compile time; define these before including this
 * header (and when compiling woof_bridge.c, e.g. with -D) to change them:
 *
 *   WOOF_OUTBOX     requests (appends, subscribes, offloads) waiting for an
 *                   answer or their first send: outbox slots (default 8).
 *   WOOF_FRAME_MAX  bytes per slot: a request's whole frame, tag included,
 *                   must fit (default 128; a reading of p bytes to a topic
 *                   index takes p + 20 at most, to a name of n bytes
 *                   p + n + 21 at most).
 *   WOOF_DEFRAME_MAX  bytes a woof_deframer holds (frames over a serial
 *                   line or TCP, below): 1..=1,025, default 1,025, one more
 *                   than a frame may be, as the gateway's; a smaller one
 *                   drops longer frames (counted).
 *
 * A session takes about WOOF_OUTBOX * (WOOF_FRAME_MAX + 40) + 250 bytes of
 * RAM (woof_session_size() says exactly), plus the caller's buffers: one to
 * send, of WOOF_TX_MAX bytes, and one to receive, of up to
 * WOOF_FRAME_LEN_MAX (1,024) bytes (a smaller one drops longer deliveries).
 *
 * On an ESP8266 with the Arduino core (a sketch of about 20 lines; the gateway is a
 * woof node started with --bridge-listen udp://0.0.0.0:4210 and the device
 * registered with `woof device add soil-1 --topics farm/soil`, which prints
 * its key):
 *
 *   #include <ESP8266WiFi.h>
 *   #include <WiFiUdp.h>
 *   #include "woof_bridge.h"
 *   static const uint8_t KEY[16] = {0x3a, 0x91, ...};  // from device add
 *   static woof_session s; static WiFiUDP udp; static uint8_t buf[1024];
 *   static uint64_t ms(void) {  // millis() wraps after 49 days: widen it
 *     static uint32_t last, high; uint32_t m = millis();
 *     if (m < last) high++; last = m; return ((uint64_t)high << 32) | m; }
 *   void setup() {
 *     Serial.begin(115200); WiFi.begin("ssid", "pass");
 *     while (WiFi.status() != WL_CONNECTED) delay(100);
 *     udp.begin(4210);
 *     woof_config c = {}; c.device_id = "soil-1"; memcpy(c.key, KEY, 16);
 *     c.boot_id = ((uint64_t)RANDOM_REG32 << 32) | RANDOM_REG32;  // new each boot
 *     c.ping_interval_ms = WOOF_PING_INTERVAL_MS;
 *     woof_init(&s, &c, ms(), RANDOM_REG32); }
 *   void loop() {
 *     static uint64_t next; uint64_t now = ms(); woof_event ev; int n;
 *     if (now >= next) { char p[32]; next = now + 10000;
 *       n = snprintf(p, sizeof p, "{\"moisture\":%d}", analogRead(A0));
 *       woof_append_named(&s, "farm/soil", p, n, RANDOM_REG32); }
 *     while ((n = woof_poll_transmit(&s, now, buf, sizeof buf)) > 0) {
 *       udp.beginPacket("192.168.1.10", 4210); udp.write(buf, n); udp.endPacket(); }
 *     while (woof_poll_event(&s, now, &ev) > 0) Serial.println(ev.type);
 *     if ((n = udp.parsePacket()) > 0 && (n = udp.read(buf, sizeof buf)) > 0
 *         && woof_handle_input(&s, now, buf, n, &ev) > 0 && ev.type == WOOF_EV_ACKED)
 *       Serial.printf("reading %lu is element %lu\n", (unsigned long)ev.seq,
 *                     (unsigned long)ev.topic_seq); }
 *
 * (A real sketch also sleeps until woof_poll_timeout(&s) or a datagram
 * instead of spinning.) mcu-bridge/c/examples/udp_device.c is the same loop
 * with POSIX sockets, for a host.
 *
 * Over the serial line instead (the gateway started with --bridge-listen
 * serial:///dev/ttyUSB0?baud=115200, where the board's USB serial shows up
 * on the gateway's host), frames in SLIP: setup() leaves out Wi-Fi and UDP,
 * nothing else may be written to Serial (print to Serial1, if anywhere),
 * and the loop sends and receives through Serial:
 *
 *   static woof_deframer rx;  // a zeroed one is ready
 *   static uint8_t f[WOOF_TX_MAX], w[WOOF_SLIP_LEN_MAX(WOOF_TX_MAX)];
 *   void loop() {
 *     uint64_t now = ms(); woof_event ev; int n; size_t len;
 *     ...  // queue readings as above
 *     while ((n = woof_poll_transmit(&s, now, f, sizeof f)) > 0)
 *       Serial.write(w, (size_t)woof_slip_encode(f, (size_t)n, w, sizeof w));
 *     while (woof_poll_event(&s, now, &ev) > 0) {}
 *     while (Serial.available() > 0)
 *       if ((len = woof_deframer_push(&rx, (uint8_t)Serial.read())) > 0
 *           && woof_handle_input(&s, now, rx.buf, len, &ev) > 0) {}  // ev as above
 *   }
 *
 * (rx takes WOOF_DEFRAME_MAX + 16 bytes of RAM in place of the 1,024-byte
 * receive buffer; at 115,200 baud a 100-byte frame takes about 9 ms.)
 *
 * Rules: call woof_poll_transmit until it returns 0 after every input,
 * every new request and whenever woof_poll_timeout comes; call
 * woof_poll_event until it returns 0 as often; pass a time that never goes
 * back. A boot id must be new at every boot (random, or a counter kept in
 * flash): with it, the gateway tells a reboot from a retransmission.
 * Every hello carries its attempt number (woof_hello_attempt: the count of
 * hellos sent in this boot, retransmissions included) and is sealed under
 * a nonce made with it; the gateway's answer must name the same attempt
 * under the same nonce, so an answer recorded earlier and replayed to a
 * later hello is dropped (WOOF_ERR_FORGED, or WOOF_ERR_REPLAYED when it
 * opens but names another attempt) and cannot reset the replay window.
 * Untrusted bytes only ever go to woof_handle_input, which reads nothing
 * outside [buf, buf + len) and drops (and counts) anything that is not an
 * authentic, well-formed, fresh frame from the gateway. No function here
 * allocates, blocks or keeps a pointer to the caller's data past its return
 * (events point into the buffer given to woof_handle_input).
 *
 * Retransmission is the Rust core's: CoAP's (first timeout 2 to 3 s with
 * the caller's random number, doubling, 4 retransmissions) until answers
 * have been timed, then RFC 6298's estimate between 200 ms and 2 s, and a
 * request is given up only after 4 retransmissions and 45 s.
 */
#ifndef WOOF_BRIDGE_H
#define WOOF_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef WOOF_OUTBOX
#define WOOF_OUTBOX 8
#endif
#ifndef WOOF_FRAME_MAX
#define WOOF_FRAME_MAX 128
#endif
#ifndef WOOF_DEFRAME_MAX
#define WOOF_DEFRAME_MAX (WOOF_FRAME_LEN_MAX + 1)
#endif

/* The protocol's bounds (the Rust core's wire:: and crypto:: constants). */
#define WOOF_FRAME_LEN_MAX 1024
#define WOOF_TAG_LEN 16
#define WOOF_KEY_LEN 16
#define WOOF_SEQ_MAX 0x0fffffffUL
#define WOOF_DEVICE_ID_LEN_MAX 32
#define WOOF_TOPIC_NAME_LEN_MAX 64
#define WOOF_TOPIC_INDEX_MAX 127
#define WOOF_HANDLER_NAME_LEN_MAX 32
#define WOOF_ERROR_TEXT_LEN_MAX 64
/* The longest hello (a 32-byte id: header 2, id length 1, id 32, boot id
 * 8, caps 1, attempt 4, tag 16); every other frame the device sends is a
 * request from the outbox or at most 25 bytes. */
#define WOOF_HELLO_LEN_MAX 64
/* A send buffer this big takes every frame woof_poll_transmit writes. */
#define WOOF_TX_MAX (WOOF_FRAME_MAX > WOOF_HELLO_LEN_MAX ? WOOF_FRAME_MAX : WOOF_HELLO_LEN_MAX)

/* Timing (session.rs). */
#define WOOF_PING_INTERVAL_MS 30000u
#define WOOF_DELIVERY_ACKS_MAX 8

/* Capabilities announced in the hello. */
#define WOOF_CAP_SUBSCRIBE 1u
#define WOOF_CAP_OFFLOAD 2u

/* Codes in WOOF_EV_REJECTED and a WOOF_EV_OFFLOAD_RESULT's status. */
#define WOOF_CODE_UNKNOWN_SESSION 1
#define WOOF_CODE_FORBIDDEN 2
#define WOOF_CODE_NOT_FOUND 3
#define WOOF_CODE_BUSY 4
#define WOOF_CODE_REFUSED 5
#define WOOF_CODE_HANDLER_FAILED 6

/* Errors: every function returning int returns one of these (negative) on
 * failure, in the order of the Rust core's Error enum. A frame given to
 * woof_handle_input that is dropped comes back as the reason. */
#define WOOF_OK 0
#define WOOF_ERR_TRUNCATED (-1)        /* fewer bytes than a frame or field needs */
#define WOOF_ERR_TOO_LONG (-2)         /* over 1,024 bytes, or too big for a slot */
#define WOOF_ERR_VERSION (-3)          /* another protocol version */
#define WOOF_ERR_UNKNOWN_TYPE (-4)     /* an unknown frame type */
#define WOOF_ERR_BAD_VARINT (-5)       /* a varint too long, large or not shortest */
#define WOOF_ERR_BAD_FIELD (-6)        /* a length, name or id out of bounds */
#define WOOF_ERR_TRAILING_BYTES (-7)   /* bytes after the last field */
#define WOOF_ERR_FORGED (-8)           /* the tag did not verify */
#define WOOF_ERR_REPLAYED (-9)         /* an authentic frame already received */
#define WOOF_ERR_TOO_OLD (-10)         /* too far behind the replay window */
#define WOOF_ERR_UNEXPECTED (-11)      /* authentic, but makes no sense now */
#define WOOF_ERR_NOT_CONNECTED (-12)   /* no session yet */
#define WOOF_ERR_OUTBOX_FULL (-13)     /* no free outbox slot */
#define WOOF_ERR_BUFFER_TOO_SMALL (-14)/* the output buffer is too small */
#define WOOF_ERR_SEQ_EXHAUSTED (-15)   /* every sequence number used: new boot */

/* Request kinds. */
#define WOOF_REQ_APPEND 0
#define WOOF_REQ_SUBSCRIBE 1
#define WOOF_REQ_OFFLOAD 2

/* Event types. */
#define WOOF_EV_CONNECTED 1      /* session_id: the gateway answered the hello */
#define WOOF_EV_DISCONNECTED 2   /* the gateway went silent or forgot us; saying hello again */
#define WOOF_EV_ACKED 3          /* seq, kind, topic_seq: committed (append) or in place (subscribe) */
#define WOOF_EV_REJECTED 4       /* seq, kind, code: refused, not retried */
#define WOOF_EV_GAVE_UP 5        /* seq, kind: no answer after every retransmission */
#define WOOF_EV_DELIVERY 6       /* topic, topic_seq, payload: an element of a followed topic */
#define WOOF_EV_OFFLOAD_RESULT 7 /* seq, code (the status), payload */
#define WOOF_EV_PONG 8           /* rtt_ms: the keepalive was answered */

/* What a session needs to start. */
typedef struct woof_config {
    /* 1..=32 bytes, NUL-terminated, as registered with the cluster. */
    const char *device_id;
    uint8_t key[WOOF_KEY_LEN];
    /* New at every boot. */
    uint64_t boot_id;
    /* WOOF_CAP_* bits. */
    uint8_t caps;
    /* Silence after which the device pings (WOOF_PING_INTERVAL_MS). */
    uint64_t ping_interval_ms;
} woof_config;

/* What the application should know. Which fields are set depends on the
 * type (see WOOF_EV_*); pointers point into the buffer given to
 * woof_handle_input and live as long as its bytes. */
typedef struct woof_event {
    uint8_t type;
    /* WOOF_REQ_* (ACKED, REJECTED, GAVE_UP). */
    uint8_t kind;
    /* The refusal's code (REJECTED) or the handler's status (OFFLOAD_RESULT). */
    uint8_t code;
    /* DELIVERY: the topic's index when topic_name is NULL. */
    uint8_t topic_index;
    /* The device sequence number of the request answered. */
    uint32_t seq;
    uint32_t session_id;
    uint64_t topic_seq;
    uint64_t rtt_ms;
    /* DELIVERY to a named topic: the name, not NUL-terminated. */
    const uint8_t *topic_name;
    size_t topic_name_len;
    const uint8_t *payload;
    size_t payload_len;
} woof_event;

/* Counts (saturating), the Rust core's session::Stats. */
typedef struct woof_stats {
    uint32_t sent;           /* frames sent, retransmissions included */
    uint32_t retransmitted;  /* retransmissions of requests */
    uint32_t acked;
    uint32_t rejected;
    uint32_t gave_up;
    uint32_t delivered;
    uint32_t stale_answers;  /* answers to requests already answered */
} woof_stats;

/* Frames dropped, by reason (saturating), the Rust core's crypto::Drops. */
typedef struct woof_drops {
    uint32_t malformed;
    uint32_t forged;
    uint32_t replayed;
    uint32_t too_old;
    uint32_t unexpected;
} woof_drops;

/* The rest is the session's state: read it through the functions below. */
typedef struct woof_slot {
    uint64_t first_sent_ms;
    uint64_t timeout_ms;
    uint64_t deadline_ms;
    uint32_t seq;
    uint32_t jitter;
    uint16_t len;
    uint8_t state;
    uint8_t kind;
    uint8_t sends;
    uint8_t frame[WOOF_FRAME_MAX];
} woof_slot;

/* Earlier sessions whose replay windows a device keeps (the Rust core's
 * SESSIONS_KEPT): going back to a gateway that still holds one of them
 * restores its window, so its old frames stay replays. */
#define WOOF_SESSIONS_KEPT 4

/* One earlier session's replay window (id 0: none). */
typedef struct {
    uint64_t seen;
    uint32_t top;
    uint32_t id;
} woof_past_window;

typedef struct woof_session {
    uint64_t boot_id;
    uint64_t ping_interval_ms;
    uint64_t hello_deadline_ms;
    uint64_t hello_timeout_ms;
    uint64_t ping_first_sent_ms;
    uint64_t ping_timeout_ms;
    uint64_t ping_deadline_ms;
    uint64_t last_rx_ms;
    uint64_t rx_seen;
    uint32_t rx_top;
    uint32_t session_id;
    uint32_t last_session_id;
    /* The windows of the sessions before it, newest first. */
    woof_past_window past[WOOF_SESSIONS_KEPT];
    uint32_t next_seq;
    uint32_t ping_first_seq;
    uint32_t rng;
    uint32_t srtt_ms;
    uint32_t rttvar_ms;
    uint32_t attempt;
    uint32_t acks[WOOF_DELIVERY_ACKS_MAX];
    woof_stats stats;
    woof_drops drops;
    uint8_t key[WOOF_KEY_LEN];
    uint8_t device_id[WOOF_DEVICE_ID_LEN_MAX];
    uint8_t device_id_len;
    uint8_t caps;
    uint8_t connected;
    /* The last hello's answer was taken (it is taken once). */
    uint8_t answered;
    uint8_t window;
    uint8_t acks_len;
    uint8_t ping_active;
    uint8_t ping_due;
    uint8_t ping_sends;
    uint8_t disconnected;
    woof_slot outbox[WOOF_OUTBOX];
} woof_session;

/* Starts a session that says hello at now_ms; rand seeds the jitter of
 * hellos and pings. WOOF_OK, or WOOF_ERR_BAD_FIELD for an id that is empty
 * or longer than 32 bytes (the session is then unusable). */
int woof_init(woof_session *s, const woof_config *config, uint64_t now_ms, uint32_t rand);

/* Queue a reading for the topic at `topic_index` (0..=127) among the
 * device's registered topics, or for the topic named `topic`
 * (NUL-terminated, 1..=64 bytes of [a-z0-9._/-]). `rand` spreads its first
 * timeout. Returns the request's device sequence number (>= 1), which
 * WOOF_EV_ACKED, _REJECTED or _GAVE_UP will name, or a negative WOOF_ERR_*
 * (OUTBOX_FULL: try again after an answer; TOO_LONG: does not fit a slot). */
int32_t woof_append(woof_session *s, uint8_t topic_index, const void *payload, size_t len,
                    uint32_t rand);
int32_t woof_append_named(woof_session *s, const char *topic, const void *payload, size_t len,
                          uint32_t rand);

/* Queue a subscription from element `from` (0: the next one). */
int32_t woof_subscribe(woof_session *s, uint8_t topic_index, uint64_t from, uint32_t rand);
int32_t woof_subscribe_named(woof_session *s, const char *topic, uint64_t from, uint32_t rand);

/* Queue a call of `handler` (NUL-terminated, 1..=32 bytes of [a-z0-9._-])
 * on `payload` at the gateway; the answer is WOOF_EV_OFFLOAD_RESULT. */
int32_t woof_offload(woof_session *s, const char *handler, const void *payload, size_t len,
                     uint32_t rand);

/* Writes the next frame to send into out[0..cap) and returns its length;
 * 0 when nothing is due; a negative WOOF_ERR_* (BUFFER_TOO_SMALL: give it
 * WOOF_TX_MAX bytes). */
int woof_poll_transmit(woof_session *s, uint64_t now_ms, uint8_t *out, size_t cap);

/* Takes one received datagram, decrypting it in place. Returns 1 and fills
 * *ev (if ev is not NULL) when there is something to report, 0 when the
 * frame was taken without, and a negative WOOF_ERR_* saying why the frame
 * was dropped (counted in woof_get_drops; the session is unchanged). */
int woof_handle_input(woof_session *s, uint64_t now_ms, uint8_t *buf, size_t len,
                      woof_event *ev);

/* Events that come from time passing (GAVE_UP, DISCONNECTED): returns 1
 * and fills *ev, or 0. Call until 0. */
int woof_poll_event(woof_session *s, uint64_t now_ms, woof_event *ev);

/* The next time woof_poll_transmit or woof_poll_event has something to do
 * if nothing else happens first (a time at or before now means now). */
uint64_t woof_poll_timeout(const woof_session *s);

/* Drops the session and says hello again at once, keeping the outbox (for
 * a device that moves to another gateway; no DISCONNECTED event follows). */
void woof_reconnect(woof_session *s, uint64_t now_ms);

int woof_is_connected(const woof_session *s);
/* The gateway's session id, 0 before one. */
uint32_t woof_session_id(const woof_session *s);
/* The attempt number of the last hello sent (0 before the first): hellos
 * sent in this boot, retransmissions included, wrapping past 0 to 1. Only
 * a hello ack naming it, sealed under it, opens a session. */
uint32_t woof_hello_attempt(const woof_session *s);
/* Requests waiting for an answer or for their first send. */
size_t woof_outbox_len(const woof_session *s);
/* The current first retransmission timeout without its random spread. */
uint64_t woof_retransmit_timeout_ms(const woof_session *s);
void woof_get_stats(const woof_session *s, woof_stats *out);
void woof_get_drops(const woof_session *s, woof_drops *out);
/* sizeof(woof_session) as compiled (for bindings that allocate it). */
size_t woof_session_size(void);
/* A short English text for a WOOF_ERR_* code. */
const char *woof_strerror(int err);

/* The key of device `device_id` (NUL-terminated) in a fleet registered with
 * `woof device add ID --fleet N` from its fleet key: what the node derives. */
int woof_derive_key(const uint8_t fleet_key[WOOF_KEY_LEN], const char *device_id,
                    uint8_t out[WOOF_KEY_LEN]);

/* ------------------------------------------------------------------
 * Frames over a byte stream (a serial line, TCP): SLIP, RFC 1055, as the
 * Rust core's stream.rs and the gateway's serial:// and tcp:// links.
 *
 * Each frame goes between two END bytes (0xC0), with END and ESC (0xDB)
 * inside it sent as ESC 0xDC and ESC 0xDD. A receiver that starts in the
 * middle of a frame, or hears noise, loses at most the frame it is in: the
 * next END starts afresh (and a damaged frame fails its tag anyway).
 * ------------------------------------------------------------------ */

#define WOOF_SLIP_END 0xC0
#define WOOF_SLIP_ESC 0xDB
#define WOOF_SLIP_ESC_END 0xDC
#define WOOF_SLIP_ESC_ESC 0xDD
/* The most bytes woof_slip_encode writes for a frame of len bytes (a
 * constant expression for a constant len: size a buffer with it). */
#define WOOF_SLIP_LEN_MAX(len) (2 * (len) + 2)

/* Writes frame[0..len) with its delimiters into out[0..cap) and returns
 * the length written (at least 2), or WOOF_ERR_BUFFER_TOO_SMALL (give it
 * WOOF_SLIP_LEN_MAX(len) bytes; what was written is then garbage). frame
 * may be NULL when len is 0. */
int woof_slip_encode(const uint8_t *frame, size_t len, uint8_t *out, size_t cap);

/* Collects whole frames from the bytes received, in a buffer of
 * WOOF_DEFRAME_MAX bytes: no allocation, about WOOF_DEFRAME_MAX + 16 bytes
 * of RAM. Empty frames (two ENDs in a row: a sender may start with one to
 * flush the line's noise) are skipped; a frame longer than the buffer, or
 * with ESC followed by anything but 0xDC or 0xDD, is dropped up to the
 * next END and counted (woof_deframer_dropped). Read buf only as below. */
typedef struct woof_deframer {
    size_t len;
    uint32_t dropped;
    uint8_t escaped;
    uint8_t skipping;
    uint8_t buf[WOOF_DEFRAME_MAX];
} woof_deframer;

/* Empty, nothing dropped. A zeroed woof_deframer (a static) is the same. */
void woof_deframer_init(woof_deframer *d);

/* Takes one received byte (the natural fit for Arduino's Serial.read()).
 * When it ends a frame, returns the frame's length n > 0: the frame is
 * d->buf[0..n), for the caller to use (and change: woof_handle_input
 * decrypts it in place) until the next call on d. Otherwise returns 0. */
size_t woof_deframer_push(woof_deframer *d, uint8_t byte);

/* Called by woof_deframer_feed with each whole frame (in d->buf: it may be
 * changed in place, and is gone when the callback returns). ctx is the
 * feed's. The callback must not feed the same deframer. */
typedef void (*woof_frame_fn)(void *ctx, uint8_t *frame, size_t len);

/* Takes in[0..len) (a chunk read from a socket or UART; in may be NULL
 * when len is 0), calling on_frame (if not NULL) with each whole frame in
 * order. Returns how many frames were handed out. The same as
 * woof_deframer_push on each byte. */
size_t woof_deframer_feed(woof_deframer *d, const uint8_t *in, size_t len,
                          woof_frame_fn on_frame, void *ctx);

/* Frames lost to overlong runs and bad escapes so far (saturating). */
uint32_t woof_deframer_dropped(const woof_deframer *d);

/* sizeof(woof_deframer) as compiled (for bindings that allocate it). */
size_t woof_deframer_size(void);

/* ------------------------------------------------------------------
 * Local or offloaded: where the device runs a function it can both run
 * itself and offload (woof_offload) to a handler at the gateway, as the
 * Rust core's offload.rs (NanoLambda's on-device versus remote choice).
 *
 * A woof_chooser keeps the last two times to result measured on each side
 * and sends each invocation to the side whose lesser time of its two is
 * lower; a side not measured since the last reset is tried first (local
 * first). The lesser of two, not the last alone, so that one slow run (an
 * interrupt) does not send the rest of a window to the other side: two
 * slow runs in a row do. Every WOOF_FORGET_EVERY invocations it resets:
 * each side is measured once afresh, and that time is taken with the last
 * one from before the reset, so a side that was slow and is fast again
 * wins at once, and one that went slow costs at most one more call. A
 * gateway that was slow (or a link that was lossy) for a while thus wins
 * its share back once it is fast again. Pure: times go in, choices come
 * out, in any one unit for both sides (milliseconds on a device). 40 bytes
 * of RAM (woof_chooser_size() says exactly).
 *
 *   int side = woof_chooser_pick(&ch);
 *   uint64_t t0 = ms();
 *   if (side == WOOF_SIDE_LOCAL) { run it here; woof_chooser_record(&ch, side, ms() - t0); }
 *   else woof_offload(&s, "score", in, n, RANDOM_REG32);  // and remember t0:
 *   // at its WOOF_EV_OFFLOAD_RESULT, status 0: woof_chooser_record(&ch,
 *   // WOOF_SIDE_REMOTE, ms() - t0); any other status, or WOOF_EV_REJECTED or
 *   // WOOF_EV_GAVE_UP for it: woof_chooser_remote_failed(&ch) (and run it here).
 * ------------------------------------------------------------------ */

#define WOOF_SIDE_LOCAL 0
#define WOOF_SIDE_REMOTE 1
/* Invocations (picks) between two resets of what was measured. */
#define WOOF_FORGET_EVERY 16u
/* Bits of woof_chooser_measured's result. */
#define WOOF_MEASURED_LOCAL 1u
#define WOOF_MEASURED_REMOTE 2u

typedef struct woof_chooser {
    /* The last time measured on each side, then the one before it; kept
     * across resets for the fresh time to be taken with. */
    uint64_t local_time[2];
    uint64_t remote_time[2];
    uint32_t since_reset;
    uint8_t measured; /* WOOF_MEASURED_*: sides measured since the reset */
    uint8_t held;     /* WOOF_MEASURED_*: sides measured since init ([0] is a time) */
} woof_chooser;

/* Nothing measured. A zeroed woof_chooser (a static) is the same. */
void woof_chooser_init(woof_chooser *c);

/* sizeof(woof_chooser) as compiled (for bindings that allocate it). */
size_t woof_chooser_size(void);

/* The side (WOOF_SIDE_*) the next invocation runs on: one not measured
 * since the last reset (local first), else the faster by the lesser of
 * each side's last two times (local on a tie). Counts the invocation. */
int woof_chooser_pick(woof_chooser *c);

/* An invocation on `side` took `elapsed` to its result (a side other than
 * WOOF_SIDE_LOCAL or WOOF_SIDE_REMOTE is ignored). */
void woof_chooser_record(woof_chooser *c, int side, uint64_t elapsed);

/* An offloaded call failed (refused, the handler failed, or no answer): the
 * remote side counts as slower than anything until the next reset (both of
 * its times are UINT64_MAX); after it, its fresh time counts. */
void woof_chooser_remote_failed(woof_chooser *c);

/* What was measured since the last reset: WOOF_MEASURED_* bits, and the
 * time each side counts as (the lesser of its last two) into *local and
 * *remote (either may be NULL; a failed remote is UINT64_MAX; a side not
 * measured since the reset is left alone). */
unsigned woof_chooser_measured(const woof_chooser *c, uint64_t *local, uint64_t *remote);

#ifdef __cplusplus
}
#endif

#endif /* WOOF_BRIDGE_H */
