/*
 * woof_bridge.c: the device side of woof's bridge protocol in C99. See
 * woof_bridge.h for how to use it, and mcu-bridge/src (the Rust core) for
 * the protocol: this file follows wire.rs, crypto.rs and session.rs
 * function by function, so that both emit the same bytes for the same
 * inputs (mcu-bridge/c-test checks it frame for frame).
 *
 * Layout: LEB128 varints and bounds-checked readers/writers; the frame
 * header and the message bodies; Ascon-AEAD128 (NIST SP 800-232) and the
 * nonce; the replay window; the session; SLIP framing (stream.rs); the
 * local-or-offloaded chooser (offload.rs).
 *
 * Every read of untrusted bytes goes through `rd`, which checks its bounds,
 * and every write through `wr`; every length is checked before it is used.
 */
#include "woof_bridge.h"

#include <limits.h>
#include <string.h>

/* Compile-time checks of the sizes (C99 has no _Static_assert). */
typedef char woof_check_outbox[(WOOF_OUTBOX >= 1 && WOOF_OUTBOX <= 64) ? 1 : -1];
typedef char woof_check_frame_max[(WOOF_FRAME_MAX >= 20 && WOOF_FRAME_MAX <= 1024) ? 1 : -1];
typedef char woof_check_deframe_max[(WOOF_DEFRAME_MAX >= 1 && WOOF_DEFRAME_MAX <= 1025) ? 1 : -1];

#define VERSION 1u
#define TAG_LEN 16u
#define SEQ_MAX ((uint32_t)WOOF_SEQ_MAX)
#define HEADER_LEN_MIN 2u
#define FRAME_LEN_MAX ((size_t)WOOF_FRAME_LEN_MAX)
#define REPLAY_WINDOW 64u

/* session.rs's constants. */
#define ACK_TIMEOUT_MS 2000u
#define ACK_RANDOM_SPREAD_MS 1000u
#define MAX_RETRANSMIT 4u
#define GIVE_UP_AFTER_MS 45000u
#define RTO_MIN_MS 200u
#define RETRANSMIT_TIMEOUT_MAX_MS 64000u
#define HELLO_TIMEOUT_MAX_MS 64000u

enum {
    T_HELLO = 0,
    T_HELLO_ACK = 1,
    T_APPEND = 2,
    T_ACK = 3,
    T_SUBSCRIBE = 4,
    T_DELIVERY = 5,
    T_DELIVERY_ACK = 6,
    T_PING = 7,
    T_PONG = 8,
    T_OFFLOAD = 9,
    T_OFFLOAD_RESULT = 10,
    T_ERROR = 11,
    T_LAST = 11
};

enum { SLOT_FREE = 0, SLOT_ACTIVE = 1, SLOT_FAILED = 2 };

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static uint64_t sat_add64(uint64_t a, uint64_t b) {
    uint64_t r = a + b;
    return r < a ? UINT64_MAX : r;
}

static uint64_t sat_sub64(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

static void inc(uint32_t *c) {
    if (*c != UINT32_MAX) {
        *c += 1;
    }
}

/* Length of a NUL-terminated string, looking at no more than max + 1
 * bytes: max + 1 means "longer than max". */
static size_t bounded_len(const char *s, size_t max) {
    size_t n = 0;
    while (n <= max && s[n] != '\0') {
        n++;
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* Readers, writers, varints                                           */
/* ------------------------------------------------------------------ */

typedef struct {
    const uint8_t *buf;
    size_t len;
    size_t pos;
} rd;

static int rd_u8(rd *r, uint8_t *out) {
    if (r->pos >= r->len) {
        return WOOF_ERR_TRUNCATED;
    }
    *out = r->buf[r->pos++];
    return WOOF_OK;
}

static int rd_bytes(rd *r, size_t n, const uint8_t **out) {
    if (n > r->len - r->pos) {
        return WOOF_ERR_TRUNCATED;
    }
    *out = r->buf + r->pos;
    r->pos += n;
    return WOOF_OK;
}

static uint64_t load_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

static void store_le(uint8_t *p, uint64_t v, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static int rd_u32_le(rd *r, uint32_t *out) {
    const uint8_t *b;
    int e = rd_bytes(r, 4, &b);
    if (e) {
        return e;
    }
    *out = (uint32_t)load_le(b, 4);
    return WOOF_OK;
}

static int rd_u64_le(rd *r, uint64_t *out) {
    const uint8_t *b;
    int e = rd_bytes(r, 8, &b);
    if (e) {
        return e;
    }
    *out = load_le(b, 8);
    return WOOF_OK;
}

/* An unsigned LEB128 varint no larger than max, in its shortest form. */
static int rd_varint(rd *r, uint64_t max, uint64_t *out) {
    uint64_t value = 0;
    unsigned i;
    for (i = 0; i < 10; i++) {
        uint8_t b;
        uint64_t bits;
        int e = rd_u8(r, &b);
        if (e) {
            return e;
        }
        bits = (uint64_t)(b & 0x7f);
        if (i == 9 && bits > 1) {
            return WOOF_ERR_BAD_VARINT;
        }
        value |= bits << (7 * i);
        if (value > max) {
            return WOOF_ERR_BAD_VARINT;
        }
        if ((b & 0x80) == 0) {
            if (i > 0 && b == 0) {
                return WOOF_ERR_BAD_VARINT;
            }
            *out = value;
            return WOOF_OK;
        }
    }
    return WOOF_ERR_BAD_VARINT;
}

static int rd_seq(rd *r, uint32_t *out) {
    uint64_t v;
    int e = rd_varint(r, SEQ_MAX, &v);
    if (e) {
        return e;
    }
    *out = (uint32_t)v;
    return WOOF_OK;
}

static const uint8_t *rd_rest(rd *r, size_t *len) {
    const uint8_t *p = r->buf + r->pos;
    *len = r->len - r->pos;
    r->pos = r->len;
    return p;
}

typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t pos;
} wr;

static int wr_bytes(wr *w, const uint8_t *b, size_t n) {
    if (n > w->cap - w->pos) {
        return WOOF_ERR_BUFFER_TOO_SMALL;
    }
    if (n > 0) {
        memcpy(w->buf + w->pos, b, n);
    }
    w->pos += n;
    return WOOF_OK;
}

static int wr_u8(wr *w, uint8_t b) { return wr_bytes(w, &b, 1); }

static int wr_varint(wr *w, uint64_t value) {
    for (;;) {
        uint8_t b = (uint8_t)(value & 0x7f);
        int e;
        value >>= 7;
        if (value == 0) {
            return wr_u8(w, b);
        }
        e = wr_u8(w, (uint8_t)(b | 0x80));
        if (e) {
            return e;
        }
    }
}

static size_t varint_len(uint64_t value) {
    size_t len = 1;
    while ((value >>= 7) != 0) {
        len++;
    }
    return len;
}

/* ------------------------------------------------------------------ */
/* Frames and messages                                                 */
/* ------------------------------------------------------------------ */

static int is_encrypted(uint8_t type) { return type != T_HELLO && type != T_HELLO_ACK; }

/* The header check of Frame::new_checked: length, version, type and the
 * sequence number's encoding. Gives the type, the seq and the header
 * length. */
static int frame_check(const uint8_t *buf, size_t len, uint8_t *type, uint32_t *seq,
                       size_t *header_len) {
    rd r;
    int e;
    if (len > FRAME_LEN_MAX) {
        return WOOF_ERR_TOO_LONG;
    }
    if (len < HEADER_LEN_MIN + TAG_LEN) {
        return WOOF_ERR_TRUNCATED;
    }
    if ((buf[0] >> 4) != VERSION) {
        return WOOF_ERR_VERSION;
    }
    if ((buf[0] & 0x0f) > T_LAST) {
        return WOOF_ERR_UNKNOWN_TYPE;
    }
    r.buf = buf + 1;
    r.len = len - 1;
    r.pos = 0;
    e = rd_seq(&r, seq);
    if (e) {
        return e;
    }
    if (1 + r.pos + TAG_LEN > len) {
        return WOOF_ERR_TRUNCATED;
    }
    *type = (uint8_t)(buf[0] & 0x0f);
    *header_len = 1 + r.pos;
    return WOOF_OK;
}

typedef struct {
    /* Name when name != NULL, else index. */
    const uint8_t *name;
    size_t name_len;
    uint8_t index;
} topic_t;

/* Any message, flattened: which fields mean what depends on the type, as
 * in wire.rs's structs. */
typedef struct {
    uint8_t type;
    /* Hello: caps; OffloadResult: status; Error: code; HelloAck: window. */
    uint8_t byte;
    /* Ack, DeliveryAck, Pong, OffloadResult: acked; Error: about;
     * HelloAck: session id. */
    uint32_t num;
    /* Ack, Delivery: topic seq; Subscribe: from; Hello: boot id. */
    uint64_t big;
    topic_t topic;
    /* Hello: device id; Offload: handler. */
    const uint8_t *name;
    size_t name_len;
    /* Hello, HelloAck: the attempt (the hello's number in this boot). */
    uint32_t attempt;
    /* Append, Delivery, Offload, OffloadResult: payload; Error: text. */
    const uint8_t *payload;
    size_t payload_len;
} msg_t;

static int topic_char_ok(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-' || c == '/';
}

static int topic_check(const topic_t *t) {
    size_t i;
    if (t->name == NULL) {
        return t->index > WOOF_TOPIC_INDEX_MAX ? WOOF_ERR_BAD_FIELD : WOOF_OK;
    }
    if (t->name_len == 0 || t->name_len > WOOF_TOPIC_NAME_LEN_MAX) {
        return WOOF_ERR_BAD_FIELD;
    }
    for (i = 0; i < t->name_len; i++) {
        if (!topic_char_ok(t->name[i])) {
            return WOOF_ERR_BAD_FIELD;
        }
    }
    return WOOF_OK;
}

static int topic_parse(rd *r, topic_t *t) {
    uint8_t b;
    int e = rd_u8(r, &b);
    if (e) {
        return e;
    }
    if (b & 0x80) {
        t->name = NULL;
        t->name_len = 0;
        t->index = (uint8_t)(b & 0x7f);
        return WOOF_OK;
    }
    e = rd_bytes(r, b, &t->name);
    if (e) {
        return e;
    }
    t->name_len = b;
    t->index = 0;
    return topic_check(t);
}

static int topic_emit(wr *w, const topic_t *t) {
    int e = topic_check(t);
    if (e) {
        return e;
    }
    if (t->name == NULL) {
        return wr_u8(w, (uint8_t)(0x80 | t->index));
    }
    e = wr_u8(w, (uint8_t)t->name_len);
    if (e) {
        return e;
    }
    return wr_bytes(w, t->name, t->name_len);
}

static int handler_check(const uint8_t *name, size_t len) {
    size_t i;
    if (len == 0 || len > WOOF_HANDLER_NAME_LEN_MAX) {
        return WOOF_ERR_BAD_FIELD;
    }
    for (i = 0; i < len; i++) {
        uint8_t c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-')) {
            return WOOF_ERR_BAD_FIELD;
        }
    }
    return WOOF_OK;
}

/* Whether text is UTF-8 (as Rust's str::from_utf8: shortest forms, no
 * surrogates, nothing past U+10FFFF). */
static int utf8_ok(const uint8_t *p, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) {
                lo = 0xa0;
            } else if (c == 0xed) {
                hi = 0x9f;
            }
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) {
                lo = 0x90;
            } else if (c == 0xf4) {
                hi = 0x8f;
            }
        } else {
            return 0;
        }
        if (need > len - i - 1) {
            return 0;
        }
        for (k = 1; k <= need; k++) {
            uint8_t b = p[i + k];
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) {
                return 0;
            }
        }
        i += need + 1;
    }
    return 1;
}

/* Message::parse_body: every field bounded, trailing bytes rejected. */
static int parse_body(uint8_t type, const uint8_t *body, size_t len, msg_t *m) {
    rd r;
    int e = WOOF_OK;
    uint8_t n;
    r.buf = body;
    r.len = len;
    r.pos = 0;
    memset(m, 0, sizeof *m);
    m->type = type;
    switch (type) {
    case T_HELLO:
        if ((e = rd_u8(&r, &n)) != 0) {
            return e;
        }
        if (n == 0 || n > WOOF_DEVICE_ID_LEN_MAX) {
            return WOOF_ERR_BAD_FIELD;
        }
        m->name_len = n;
        if ((e = rd_bytes(&r, n, &m->name)) != 0 || (e = rd_u64_le(&r, &m->big)) != 0 ||
            (e = rd_u8(&r, &m->byte)) != 0 || (e = rd_u32_le(&r, &m->attempt)) != 0) {
            return e;
        }
        if (m->attempt == 0) {
            return WOOF_ERR_BAD_FIELD;
        }
        break;
    case T_HELLO_ACK:
        if ((e = rd_u32_le(&r, &m->num)) != 0 || (e = rd_u8(&r, &m->byte)) != 0 ||
            (e = rd_u32_le(&r, &m->attempt)) != 0) {
            return e;
        }
        if (m->num == 0 || m->byte == 0 || m->byte > 64 || m->attempt == 0) {
            return WOOF_ERR_BAD_FIELD;
        }
        break;
    case T_APPEND:
        if ((e = topic_parse(&r, &m->topic)) != 0) {
            return e;
        }
        m->payload = rd_rest(&r, &m->payload_len);
        break;
    case T_ACK:
        if ((e = rd_seq(&r, &m->num)) != 0 || (e = rd_varint(&r, UINT64_MAX, &m->big)) != 0) {
            return e;
        }
        break;
    case T_SUBSCRIBE:
        if ((e = topic_parse(&r, &m->topic)) != 0 ||
            (e = rd_varint(&r, UINT64_MAX, &m->big)) != 0) {
            return e;
        }
        break;
    case T_DELIVERY:
        if ((e = topic_parse(&r, &m->topic)) != 0 ||
            (e = rd_varint(&r, UINT64_MAX, &m->big)) != 0) {
            return e;
        }
        m->payload = rd_rest(&r, &m->payload_len);
        break;
    case T_DELIVERY_ACK:
    case T_PONG:
        if ((e = rd_seq(&r, &m->num)) != 0) {
            return e;
        }
        break;
    case T_PING:
        break;
    case T_OFFLOAD:
        if ((e = rd_u8(&r, &n)) != 0 || (e = rd_bytes(&r, n, &m->name)) != 0) {
            return e;
        }
        m->name_len = n;
        if ((e = handler_check(m->name, m->name_len)) != 0) {
            return e;
        }
        m->payload = rd_rest(&r, &m->payload_len);
        break;
    case T_OFFLOAD_RESULT:
        if ((e = rd_seq(&r, &m->num)) != 0 || (e = rd_u8(&r, &m->byte)) != 0) {
            return e;
        }
        m->payload = rd_rest(&r, &m->payload_len);
        break;
    case T_ERROR:
        if ((e = rd_seq(&r, &m->num)) != 0 || (e = rd_u8(&r, &m->byte)) != 0) {
            return e;
        }
        m->payload = rd_rest(&r, &m->payload_len);
        if (m->payload_len > WOOF_ERROR_TEXT_LEN_MAX || !utf8_ok(m->payload, m->payload_len)) {
            return WOOF_ERR_BAD_FIELD;
        }
        break;
    default:
        return WOOF_ERR_UNKNOWN_TYPE;
    }
    return r.pos == r.len ? WOOF_OK : WOOF_ERR_TRAILING_BYTES;
}

/* a + b, but at most LEN_CAP: lengths past any frame's all mean "too
 * long", and capping keeps the sums from wrapping (size_t may be 16 bits). */
#define LEN_CAP (FRAME_LEN_MAX + 1)
static size_t add_cap(size_t a, size_t b) { return (a >= LEN_CAP || b >= LEN_CAP - a) ? LEN_CAP : a + b; }

/* Message::body_len for the messages a device sends (capped). */
static size_t body_len(const msg_t *m) {
    switch (m->type) {
    case T_HELLO:
        return add_cap(m->name_len, 1 + 8 + 1 + 4);
    case T_APPEND:
        return add_cap(add_cap(m->topic.name == NULL ? 0 : m->topic.name_len, 1), m->payload_len);
    case T_SUBSCRIBE:
        return add_cap(add_cap(m->topic.name == NULL ? 0 : m->topic.name_len, 1), varint_len(m->big));
    case T_DELIVERY_ACK:
        return varint_len(m->num);
    case T_OFFLOAD:
        return add_cap(add_cap(m->name_len, 1), m->payload_len);
    default: /* T_PING */
        return 0;
    }
}

/* Message::emit for the messages a device sends: header, plaintext body
 * and a zeroed tag into buf[0..cap); the same checks in the same order. */
static int emit(const msg_t *m, uint32_t seq, uint8_t *buf, size_t cap, size_t *out_len) {
    wr w;
    size_t len;
    int e = WOOF_OK;
    static const uint8_t zeros[TAG_LEN] = {0};
    if (seq > SEQ_MAX) {
        return WOOF_ERR_SEQ_EXHAUSTED;
    }
    len = add_cap(1 + varint_len(seq) + TAG_LEN, body_len(m));
    if (len > FRAME_LEN_MAX) {
        return WOOF_ERR_TOO_LONG;
    }
    if (len > cap) {
        return WOOF_ERR_BUFFER_TOO_SMALL;
    }
    w.buf = buf;
    w.cap = len;
    w.pos = 0;
    if ((e = wr_u8(&w, (uint8_t)((VERSION << 4) | m->type))) != 0 ||
        (e = wr_varint(&w, seq)) != 0) {
        return e;
    }
    switch (m->type) {
    case T_HELLO:
        if (m->name_len == 0 || m->name_len > WOOF_DEVICE_ID_LEN_MAX || m->attempt == 0) {
            return WOOF_ERR_BAD_FIELD;
        }
        {
            uint8_t boot[8], attempt[4];
            store_le(boot, m->big, 8);
            store_le(attempt, m->attempt, 4);
            if ((e = wr_u8(&w, (uint8_t)m->name_len)) != 0 ||
                (e = wr_bytes(&w, m->name, m->name_len)) != 0 ||
                (e = wr_bytes(&w, boot, 8)) != 0 || (e = wr_u8(&w, m->byte)) != 0 ||
                (e = wr_bytes(&w, attempt, 4)) != 0) {
                return e;
            }
        }
        break;
    case T_APPEND:
        if (m->payload == NULL && m->payload_len > 0) {
            return WOOF_ERR_BAD_FIELD;
        }
        if ((e = topic_emit(&w, &m->topic)) != 0 ||
            (e = wr_bytes(&w, m->payload, m->payload_len)) != 0) {
            return e;
        }
        break;
    case T_SUBSCRIBE:
        if ((e = topic_emit(&w, &m->topic)) != 0 || (e = wr_varint(&w, m->big)) != 0) {
            return e;
        }
        break;
    case T_DELIVERY_ACK:
        if (m->num > SEQ_MAX) {
            return WOOF_ERR_BAD_FIELD;
        }
        if ((e = wr_varint(&w, m->num)) != 0) {
            return e;
        }
        break;
    case T_OFFLOAD:
        if (m->payload == NULL && m->payload_len > 0) {
            return WOOF_ERR_BAD_FIELD;
        }
        if ((e = handler_check(m->name, m->name_len)) != 0 ||
            (e = wr_u8(&w, (uint8_t)m->name_len)) != 0 ||
            (e = wr_bytes(&w, m->name, m->name_len)) != 0 ||
            (e = wr_bytes(&w, m->payload, m->payload_len)) != 0) {
            return e;
        }
        break;
    case T_PING:
        break;
    default:
        return WOOF_ERR_UNEXPECTED;
    }
    if ((e = wr_bytes(&w, zeros, TAG_LEN)) != 0) {
        return e;
    }
    *out_len = len;
    return WOOF_OK;
}

/* ------------------------------------------------------------------ */
/* Ascon-AEAD128 (NIST SP 800-232)                                     */
/* ------------------------------------------------------------------ */
/*
 * The 320-bit state is five 64-bit words; bytes go in and out of the
 * words little-endian (SP 800-232's convention). Rate 128 bits, 12 rounds
 * to start and finish, 8 per block. Written from the standard.
 */

#define ASCON_AEAD128_IV 0x00001000808c0001ULL

typedef struct {
    uint64_t x0, x1, x2, x3, x4;
} ascon_state;

static uint64_t ror64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

/* The last `rounds` rounds of the 12 of Ascon-p. */
static void ascon_permute(ascon_state *s, unsigned rounds) {
    unsigned i;
    for (i = 12 - rounds; i < 12; i++) {
        uint64_t t0, t1, t2, t3, t4;
        /* Round constant: 0xf0, 0xe1, ..., 0x4b. */
        s->x2 ^= (uint64_t)(((0x0fu - i) << 4) | i);
        /* Substitution layer: the 5-bit S-box, bitsliced. */
        s->x0 ^= s->x4;
        s->x4 ^= s->x3;
        s->x2 ^= s->x1;
        t0 = ~s->x0 & s->x1;
        t1 = ~s->x1 & s->x2;
        t2 = ~s->x2 & s->x3;
        t3 = ~s->x3 & s->x4;
        t4 = ~s->x4 & s->x0;
        s->x0 ^= t1;
        s->x1 ^= t2;
        s->x2 ^= t3;
        s->x3 ^= t4;
        s->x4 ^= t0;
        s->x1 ^= s->x0;
        s->x0 ^= s->x4;
        s->x3 ^= s->x2;
        s->x2 = ~s->x2;
        /* Linear diffusion layer. */
        s->x0 ^= ror64(s->x0, 19) ^ ror64(s->x0, 28);
        s->x1 ^= ror64(s->x1, 61) ^ ror64(s->x1, 39);
        s->x2 ^= ror64(s->x2, 1) ^ ror64(s->x2, 6);
        s->x3 ^= ror64(s->x3, 10) ^ ror64(s->x3, 17);
        s->x4 ^= ror64(s->x4, 7) ^ ror64(s->x4, 41);
    }
}

/* The padding bit after n bytes of a word. */
static uint64_t pad_at(size_t n) { return (uint64_t)1 << (8 * n); }

/* Initialisation and the associated data. */
static void ascon_start(ascon_state *s, const uint8_t key[16], const uint8_t nonce[16],
                        const uint8_t *ad, size_t ad_len) {
    uint64_t k0 = load_le(key, 8), k1 = load_le(key + 8, 8);
    s->x0 = ASCON_AEAD128_IV;
    s->x1 = k0;
    s->x2 = k1;
    s->x3 = load_le(nonce, 8);
    s->x4 = load_le(nonce + 8, 8);
    ascon_permute(s, 12);
    s->x3 ^= k0;
    s->x4 ^= k1;
    if (ad_len > 0) {
        uint64_t *px = &s->x0;
        while (ad_len >= 16) {
            s->x0 ^= load_le(ad, 8);
            s->x1 ^= load_le(ad + 8, 8);
            ascon_permute(s, 8);
            ad += 16;
            ad_len -= 16;
        }
        if (ad_len >= 8) {
            s->x0 ^= load_le(ad, 8);
            px = &s->x1;
            ad += 8;
            ad_len -= 8;
        }
        *px ^= pad_at(ad_len) ^ load_le(ad, ad_len);
        ascon_permute(s, 8);
    }
    /* Domain separation between the associated data and the message. */
    s->x4 ^= (uint64_t)1 << 63;
}

static void ascon_encrypt(ascon_state *s, uint8_t *m, size_t len) {
    uint64_t *px = &s->x0;
    while (len >= 16) {
        s->x0 ^= load_le(m, 8);
        s->x1 ^= load_le(m + 8, 8);
        store_le(m, s->x0, 8);
        store_le(m + 8, s->x1, 8);
        ascon_permute(s, 8);
        m += 16;
        len -= 16;
    }
    if (len >= 8) {
        s->x0 ^= load_le(m, 8);
        store_le(m, s->x0, 8);
        px = &s->x1;
        m += 8;
        len -= 8;
    }
    *px ^= pad_at(len) ^ load_le(m, len);
    store_le(m, *px, len);
}

static void ascon_decrypt(ascon_state *s, uint8_t *c, size_t len) {
    uint64_t *px = &s->x0;
    uint64_t cx, mask;
    while (len >= 16) {
        cx = load_le(c, 8);
        store_le(c, s->x0 ^ cx, 8);
        s->x0 = cx;
        cx = load_le(c + 8, 8);
        store_le(c + 8, s->x1 ^ cx, 8);
        s->x1 = cx;
        ascon_permute(s, 8);
        c += 16;
        len -= 16;
    }
    if (len >= 8) {
        cx = load_le(c, 8);
        store_le(c, s->x0 ^ cx, 8);
        s->x0 = cx;
        px = &s->x1;
        c += 8;
        len -= 8;
    }
    /* The last len bytes: the state takes the ciphertext's bytes, the rest
     * of the word keeps its value, then the padding. */
    cx = load_le(c, len);
    store_le(c, *px ^ cx, len);
    mask = pad_at(len) - 1;
    *px = ((*px & ~mask) | cx) ^ pad_at(len);
}

static void ascon_finish(ascon_state *s, const uint8_t key[16], uint8_t tag[16]) {
    uint64_t k0 = load_le(key, 8), k1 = load_le(key + 8, 8);
    s->x2 ^= k0;
    s->x3 ^= k1;
    ascon_permute(s, 12);
    s->x3 ^= k0;
    s->x4 ^= k1;
    store_le(tag, s->x3, 8);
    store_le(tag + 8, s->x4, 8);
}

/* ------------------------------------------------------------------ */
/* Sealing and opening frames, the nonce                               */
/* ------------------------------------------------------------------ */

#define DIR_UP 0u
#define DIR_DOWN 1u

/* boot id (u64 LE) | session id (u32 LE) | seq with bit 31 the direction.
 * The hello and its answer (seq 0, which no other frame is) carry the
 * hello's attempt number where the session id goes. */
static void make_nonce(uint8_t n[16], uint64_t boot_id, uint32_t session_id, unsigned dir,
                       uint32_t seq) {
    uint32_t last = (seq & SEQ_MAX) | (dir == DIR_DOWN ? (uint32_t)1 << 31 : 0);
    store_le(n, boot_id, 8);
    store_le(n + 8, session_id, 4);
    store_le(n + 12, last, 4);
}

/* Encrypts the body of an emitted frame in place and writes its tag; the
 * handshake's bodies are associated data instead. */
static int seal(const uint8_t key[16], uint8_t *frame, size_t len, uint64_t boot_id,
                uint32_t session_id) {
    uint8_t type, nonce[16];
    uint32_t seq;
    size_t hl, body_end;
    ascon_state st;
    int e = frame_check(frame, len, &type, &seq, &hl);
    if (e) {
        return e;
    }
    body_end = len - TAG_LEN;
    make_nonce(nonce, boot_id, session_id, DIR_UP, seq);
    if (is_encrypted(type)) {
        ascon_start(&st, key, nonce, frame, hl);
        ascon_encrypt(&st, frame + hl, body_end - hl);
    } else {
        ascon_start(&st, key, nonce, frame, body_end);
        ascon_encrypt(&st, frame + body_end, 0);
    }
    ascon_finish(&st, key, frame + body_end);
    return WOOF_OK;
}

/* Checks a frame from the gateway and decrypts its body in place; on a bad
 * tag the body is garbage and the frame is to be dropped. */
static int open_frame(const uint8_t key[16], uint8_t *frame, size_t len, uint64_t boot_id,
                      uint32_t session_id) {
    uint8_t type, nonce[16], tag[16], diff = 0;
    uint32_t seq;
    size_t hl, body_end, i;
    ascon_state st;
    int e = frame_check(frame, len, &type, &seq, &hl);
    if (e) {
        return e;
    }
    body_end = len - TAG_LEN;
    make_nonce(nonce, boot_id, session_id, DIR_DOWN, seq);
    if (is_encrypted(type)) {
        ascon_start(&st, key, nonce, frame, hl);
        ascon_decrypt(&st, frame + hl, body_end - hl);
    } else {
        ascon_start(&st, key, nonce, frame, body_end);
        ascon_decrypt(&st, frame + body_end, 0);
    }
    ascon_finish(&st, key, tag);
    /* In constant time. */
    for (i = 0; i < TAG_LEN; i++) {
        diff |= (uint8_t)(tag[i] ^ frame[body_end + i]);
    }
    return diff == 0 ? WOOF_OK : WOOF_ERR_FORGED;
}

int woof_derive_key(const uint8_t fleet_key[WOOF_KEY_LEN], const char *device_id,
                    uint8_t out[WOOF_KEY_LEN]) {
    static const uint8_t zero_nonce[16] = {0};
    ascon_state st;
    size_t len;
    if (device_id == NULL) {
        return WOOF_ERR_BAD_FIELD;
    }
    len = bounded_len(device_id, WOOF_DEVICE_ID_LEN_MAX);
    if (len == 0 || len > WOOF_DEVICE_ID_LEN_MAX) {
        return WOOF_ERR_BAD_FIELD;
    }
    ascon_start(&st, fleet_key, zero_nonce, (const uint8_t *)device_id, len);
    ascon_encrypt(&st, out, 0);
    ascon_finish(&st, fleet_key, out);
    return WOOF_OK;
}

/* ------------------------------------------------------------------ */
/* Replay window (RFC 4303 3.4.3)                                      */
/* ------------------------------------------------------------------ */

enum { FRESH, DUPLICATE, TOO_OLD };

static int window_check(const woof_session *s, uint32_t seq) {
    uint32_t behind;
    if (seq > s->rx_top) {
        return FRESH;
    }
    behind = s->rx_top - seq;
    if (behind >= REPLAY_WINDOW) {
        return TOO_OLD;
    }
    return ((s->rx_seen >> behind) & 1) ? DUPLICATE : FRESH;
}

static void window_accept(woof_session *s, uint32_t seq) {
    if (seq > s->rx_top) {
        uint32_t shift = seq - s->rx_top;
        s->rx_seen = shift >= REPLAY_WINDOW ? 0 : s->rx_seen << shift;
        s->rx_seen |= 1;
        s->rx_top = seq;
    } else if (s->rx_top - seq < REPLAY_WINDOW) {
        s->rx_seen |= (uint64_t)1 << (s->rx_top - seq);
    }
}

static void window_reset(woof_session *s) {
    s->rx_top = 0;
    s->rx_seen = 1;
}

/* Makes session `id`'s window the current one: its own if it is one of the
 * last WOOF_SESSIONS_KEPT sessions, else a new one; the current one is kept
 * among them (as the Rust core's switch_window). */
static void switch_window(woof_session *s, uint32_t id) {
    uint64_t seen = 1;
    uint32_t top = 0;
    size_t i;
    for (i = 0; i < WOOF_SESSIONS_KEPT; i++) {
        if (s->past[i].id == id) {
            break;
        }
    }
    if (i < WOOF_SESSIONS_KEPT) {
        seen = s->past[i].seen;
        top = s->past[i].top;
        for (; i + 1 < WOOF_SESSIONS_KEPT; i++) {
            s->past[i] = s->past[i + 1];
        }
        s->past[WOOF_SESSIONS_KEPT - 1].id = 0;
        s->past[WOOF_SESSIONS_KEPT - 1].seen = 1;
        s->past[WOOF_SESSIONS_KEPT - 1].top = 0;
    }
    if (s->last_session_id != 0) {
        for (i = WOOF_SESSIONS_KEPT - 1; i > 0; i--) {
            s->past[i] = s->past[i - 1];
        }
        s->past[0].id = s->last_session_id;
        s->past[0].seen = s->rx_seen;
        s->past[0].top = s->rx_top;
    }
    s->rx_seen = seen;
    s->rx_top = top;
    s->last_session_id = id;
}

static void count_drop(woof_session *s, int err) {
    switch (err) {
    case WOOF_ERR_FORGED:
        inc(&s->drops.forged);
        break;
    case WOOF_ERR_REPLAYED:
        inc(&s->drops.replayed);
        break;
    case WOOF_ERR_TOO_OLD:
        inc(&s->drops.too_old);
        break;
    case WOOF_ERR_UNEXPECTED:
    case WOOF_ERR_NOT_CONNECTED:
        inc(&s->drops.unexpected);
        break;
    default:
        inc(&s->drops.malformed);
        break;
    }
}

/* ------------------------------------------------------------------ */
/* The session                                                         */
/* ------------------------------------------------------------------ */

static uint64_t initial_timeout_ms(uint32_t rand) {
    return ACK_TIMEOUT_MS + (((uint64_t)rand * ACK_RANDOM_SPREAD_MS) >> 32);
}

/* xorshift32: enough to keep devices that booted together apart. */
static uint64_t jitter_timeout(woof_session *s) {
    uint32_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s->rng = x;
    return initial_timeout_ms(x);
}

int woof_init(woof_session *s, const woof_config *c, uint64_t now_ms, uint32_t rand) {
    size_t id_len;
    memset(s, 0, sizeof *s);
    if (c == NULL || c->device_id == NULL) {
        return WOOF_ERR_BAD_FIELD;
    }
    id_len = bounded_len(c->device_id, WOOF_DEVICE_ID_LEN_MAX);
    if (id_len == 0 || id_len > WOOF_DEVICE_ID_LEN_MAX) {
        return WOOF_ERR_BAD_FIELD;
    }
    memcpy(s->device_id, c->device_id, id_len);
    s->device_id_len = (uint8_t)id_len;
    s->caps = c->caps;
    memcpy(s->key, c->key, WOOF_KEY_LEN);
    s->boot_id = c->boot_id;
    s->ping_interval_ms = c->ping_interval_ms;
    s->next_seq = 1;
    window_reset(s);
    s->last_rx_ms = now_ms;
    s->rng = rand | 1;
    s->connected = 0;
    s->hello_deadline_ms = now_ms;
    s->hello_timeout_ms = jitter_timeout(s);
    return WOOF_OK;
}

static int32_t enqueue(woof_session *s, uint8_t kind, const msg_t *m, uint32_t rand) {
    uint32_t seq = s->next_seq;
    woof_slot *slot = NULL;
    size_t i, len = 0;
    int e;
    if (seq > SEQ_MAX) {
        return WOOF_ERR_SEQ_EXHAUSTED;
    }
    for (i = 0; i < WOOF_OUTBOX; i++) {
        if (s->outbox[i].state == SLOT_FREE) {
            slot = &s->outbox[i];
            break;
        }
    }
    if (slot == NULL) {
        return WOOF_ERR_OUTBOX_FULL;
    }
    e = emit(m, seq, slot->frame, WOOF_FRAME_MAX, &len);
    if (e == WOOF_ERR_BUFFER_TOO_SMALL) {
        e = WOOF_ERR_TOO_LONG;
    }
    if (e) {
        return e;
    }
    slot->state = SLOT_ACTIVE;
    slot->kind = kind;
    slot->seq = seq;
    slot->sends = 0;
    slot->jitter = rand;
    slot->first_sent_ms = 0;
    slot->timeout_ms = 0;
    slot->deadline_ms = 0;
    slot->len = (uint16_t)len;
    s->next_seq++;
    return (int32_t)seq;
}

/* A named topic: its length is counted up to FRAME_LEN_MAX + 1, so a name
 * too long for any frame is TOO_LONG, as in the Rust core. */
static int set_topic_name(msg_t *m, const char *name) {
    if (name == NULL) {
        return WOOF_ERR_BAD_FIELD;
    }
    m->topic.name = (const uint8_t *)name;
    m->topic.name_len = bounded_len(name, FRAME_LEN_MAX);
    return WOOF_OK;
}

int32_t woof_append(woof_session *s, uint8_t topic_index, const void *payload, size_t len,
                    uint32_t rand) {
    msg_t m;
    memset(&m, 0, sizeof m);
    m.type = T_APPEND;
    m.topic.index = topic_index;
    m.payload = (const uint8_t *)payload;
    m.payload_len = len;
    return enqueue(s, WOOF_REQ_APPEND, &m, rand);
}

int32_t woof_append_named(woof_session *s, const char *topic, const void *payload, size_t len,
                          uint32_t rand) {
    msg_t m;
    int e;
    memset(&m, 0, sizeof m);
    if ((e = set_topic_name(&m, topic)) != 0) {
        return e;
    }
    m.type = T_APPEND;
    m.payload = (const uint8_t *)payload;
    m.payload_len = len;
    return enqueue(s, WOOF_REQ_APPEND, &m, rand);
}

int32_t woof_subscribe(woof_session *s, uint8_t topic_index, uint64_t from, uint32_t rand) {
    msg_t m;
    memset(&m, 0, sizeof m);
    m.type = T_SUBSCRIBE;
    m.topic.index = topic_index;
    m.big = from;
    return enqueue(s, WOOF_REQ_SUBSCRIBE, &m, rand);
}

int32_t woof_subscribe_named(woof_session *s, const char *topic, uint64_t from,
                             uint32_t rand) {
    msg_t m;
    int e;
    memset(&m, 0, sizeof m);
    if ((e = set_topic_name(&m, topic)) != 0) {
        return e;
    }
    m.type = T_SUBSCRIBE;
    m.big = from;
    return enqueue(s, WOOF_REQ_SUBSCRIBE, &m, rand);
}

int32_t woof_offload(woof_session *s, const char *handler, const void *payload, size_t len,
                     uint32_t rand) {
    msg_t m;
    memset(&m, 0, sizeof m);
    if (handler == NULL) {
        return WOOF_ERR_BAD_FIELD;
    }
    m.type = T_OFFLOAD;
    m.name = (const uint8_t *)handler;
    m.name_len = bounded_len(handler, FRAME_LEN_MAX);
    m.payload = (const uint8_t *)payload;
    m.payload_len = len;
    return enqueue(s, WOOF_REQ_OFFLOAD, &m, rand);
}

/* The queue of delivery acks loses its first (oldest). */
static void drop_first_ack(woof_session *s) {
    size_t i;
    for (i = 1; i < s->acks_len; i++) {
        s->acks[i - 1] = s->acks[i];
    }
    s->acks_len--;
}

static int take_seq(woof_session *s, uint32_t *seq) {
    if (s->next_seq > SEQ_MAX) {
        return WOOF_ERR_SEQ_EXHAUSTED;
    }
    *seq = s->next_seq++;
    return WOOF_OK;
}

static void start_ping(woof_session *s, uint64_t now_ms) {
    s->ping_timeout_ms = jitter_timeout(s);
    s->ping_active = 1;
    s->ping_first_seq = s->next_seq;
    s->ping_first_sent_ms = now_ms;
    s->ping_sends = 0;
    s->ping_due = 1;
    s->ping_deadline_ms = now_ms;
}

/* The session is gone: say hello again, keep the outbox. */
static void lose(woof_session *s, uint64_t now_ms) {
    size_t i;
    uint64_t t = jitter_timeout(s);
    s->connected = 0;
    s->hello_deadline_ms = now_ms;
    s->hello_timeout_ms = t;
    s->ping_active = 0;
    s->acks_len = 0;
    s->disconnected = 1;
    for (i = 0; i < WOOF_OUTBOX; i++) {
        if (s->outbox[i].state == SLOT_ACTIVE) {
            /* Its timeouts start over at its next first send. */
            s->outbox[i].sends = 0;
        }
    }
}

void woof_reconnect(woof_session *s, uint64_t now_ms) {
    lose(s, now_ms);
    s->disconnected = 0;
}

/* Gives up on expired requests and notices a dead link. */
static void handle_timers(woof_session *s, uint64_t now_ms) {
    size_t i;
    for (i = 0; i < WOOF_OUTBOX; i++) {
        woof_slot *slot = &s->outbox[i];
        if (slot->state == SLOT_ACTIVE && slot->sends > MAX_RETRANSMIT &&
            now_ms >= slot->deadline_ms &&
            sat_sub64(now_ms, slot->first_sent_ms) >= GIVE_UP_AFTER_MS) {
            slot->state = SLOT_FAILED;
        }
    }
    if (!s->connected) {
        return;
    }
    if (s->ping_active) {
        if (!s->ping_due && now_ms >= s->ping_deadline_ms) {
            if (s->ping_sends > MAX_RETRANSMIT) {
                lose(s, now_ms);
            } else {
                s->ping_due = 1;
            }
        }
    } else if (now_ms >= sat_add64(s->last_rx_ms, s->ping_interval_ms)) {
        start_ping(s, now_ms);
    }
}

/* The first timeout of a request: CoAP's until an answer was timed, then
 * RFC 6298's estimate, with the same random spread. */
static uint64_t first_timeout_ms(const woof_session *s, uint32_t jitter) {
    uint64_t rto;
    if (s->srtt_ms == 0) {
        return initial_timeout_ms(jitter);
    }
    rto = (uint64_t)s->srtt_ms + 4 * (uint64_t)(s->rttvar_ms > 1 ? s->rttvar_ms : 1);
    if (rto < RTO_MIN_MS) {
        rto = RTO_MIN_MS;
    }
    if (rto > ACK_TIMEOUT_MS) {
        rto = ACK_TIMEOUT_MS;
    }
    return rto + (((uint64_t)jitter * (rto / 2)) >> 32);
}

uint64_t woof_retransmit_timeout_ms(const woof_session *s) { return first_timeout_ms(s, 0); }

/* Folds one timed answer into the estimate (RFC 6298, 2). */
static void time_answer(woof_session *s, uint64_t sample_ms) {
    uint32_t r;
    if (sample_ms < 1) {
        sample_ms = 1;
    }
    if (sample_ms > UINT32_MAX / 8) {
        sample_ms = UINT32_MAX / 8;
    }
    r = (uint32_t)sample_ms;
    if (s->srtt_ms == 0) {
        s->srtt_ms = r;
        s->rttvar_ms = r / 2;
    } else {
        uint32_t diff = s->srtt_ms > r ? s->srtt_ms - r : r - s->srtt_ms;
        s->rttvar_ms = (3 * s->rttvar_ms + diff) / 4;
        s->srtt_ms = (7 * s->srtt_ms + r) / 8;
    }
}

/* Seals a device message with sequence number seq into out. */
static int seal_into(woof_session *s, const msg_t *m, uint32_t seq, uint32_t session_id,
                     uint8_t *out, size_t cap, size_t *len) {
    int e = emit(m, seq, out, cap, len);
    if (e) {
        return e;
    }
    return seal(s->key, out, *len, s->boot_id, session_id);
}

int woof_poll_transmit(woof_session *s, uint64_t now_ms, uint8_t *out, size_t cap) {
    msg_t m;
    size_t len = 0, i, in_flight = 0;
    long due = -1, next = -1;
    woof_slot *slot;
    uint64_t first_timeout;
    uint32_t seq;
    int e;
    if (out == NULL) {
        cap = 0;
    }
    handle_timers(s, now_ms);
    memset(&m, 0, sizeof m);
    if (!s->connected) {
        uint64_t t = s->hello_timeout_ms;
        if (now_ms < s->hello_deadline_ms) {
            return 0;
        }
        /* Each hello is a new attempt (never 0), which its answer must
         * name; the handshake's nonces take it in the session id's place.
         * Counted even when the send fails below, as in the Rust core. */
        s->attempt++;
        if (s->attempt == 0) {
            s->attempt = 1;
        }
        s->answered = 0;
        m.type = T_HELLO;
        m.name = s->device_id;
        m.name_len = s->device_id_len;
        m.big = s->boot_id;
        m.byte = s->caps;
        m.attempt = s->attempt;
        if ((e = seal_into(s, &m, 0, s->attempt, out, cap, &len)) != 0) {
            return e;
        }
        s->hello_deadline_ms = sat_add64(now_ms, t);
        s->hello_timeout_ms = 2 * t < HELLO_TIMEOUT_MAX_MS ? 2 * t : HELLO_TIMEOUT_MAX_MS;
        inc(&s->stats.sent);
        return (int)len;
    }

    /* Acks first: they are small and the gateway waits on them. */
    if (s->acks_len > 0) {
        m.type = T_DELIVERY_ACK;
        m.num = s->acks[0];
        if ((e = take_seq(s, &seq)) != 0 ||
            (e = seal_into(s, &m, seq, s->session_id, out, cap, &len)) != 0) {
            return e;
        }
        drop_first_ack(s);
        inc(&s->stats.sent);
        return (int)len;
    }

    if (s->ping_active && s->ping_due) {
        m.type = T_PING;
        if ((e = take_seq(s, &seq)) != 0 ||
            (e = seal_into(s, &m, seq, s->session_id, out, cap, &len)) != 0) {
            return e;
        }
        s->ping_sends++;
        s->ping_due = 0;
        s->ping_deadline_ms = sat_add64(now_ms, s->ping_timeout_ms);
        s->ping_timeout_ms *= 2;
        inc(&s->stats.sent);
        return (int)len;
    }

    /* Retransmissions that are due, then new requests in order while the
     * gateway's window allows. */
    for (i = 0; i < WOOF_OUTBOX; i++) {
        slot = &s->outbox[i];
        if (slot->state != SLOT_ACTIVE) {
            continue;
        }
        if (slot->sends > 0) {
            in_flight++;
            if (now_ms >= slot->deadline_ms && (due < 0 || slot->seq < s->outbox[due].seq)) {
                due = (long)i;
            }
        } else if (next < 0 || slot->seq < s->outbox[next].seq) {
            next = (long)i;
        }
    }
    if (due >= 0) {
        next = due;
    } else if (in_flight >= s->window) {
        next = -1;
    }
    if (next < 0) {
        return 0;
    }
    slot = &s->outbox[next];
    first_timeout = first_timeout_ms(s, slot->jitter);
    if (slot->sends == 0) {
        slot->first_sent_ms = now_ms;
        slot->timeout_ms = first_timeout;
    }
    len = slot->len;
    if (len > cap) {
        return WOOF_ERR_BUFFER_TOO_SMALL;
    }
    memcpy(out, slot->frame, len);
    if ((e = seal(s->key, out, len, s->boot_id, s->session_id)) != 0) {
        return e;
    }
    if (slot->sends > 0) {
        inc(&s->stats.retransmitted);
    }
    slot->sends++;
    slot->deadline_ms = sat_add64(now_ms, slot->timeout_ms);
    slot->timeout_ms =
        2 * slot->timeout_ms < RETRANSMIT_TIMEOUT_MAX_MS ? 2 * slot->timeout_ms
                                                         : RETRANSMIT_TIMEOUT_MAX_MS;
    inc(&s->stats.sent);
    return (int)len;
}

uint64_t woof_poll_timeout(const woof_session *s) {
    uint64_t t;
    size_t i;
    if (!s->connected) {
        t = s->hello_deadline_ms;
    } else if (s->ping_active) {
        t = s->ping_due ? 0 : s->ping_deadline_ms;
    } else {
        t = sat_add64(s->last_rx_ms, s->ping_interval_ms);
    }
    for (i = 0; i < WOOF_OUTBOX; i++) {
        const woof_slot *slot = &s->outbox[i];
        uint64_t d;
        if (slot->state == SLOT_ACTIVE && slot->sends > 0) {
            d = slot->deadline_ms;
        } else if (slot->state == SLOT_FAILED) {
            d = 0;
        } else {
            continue;
        }
        if (d < t) {
            t = d;
        }
    }
    return t;
}

static void clear_event(woof_event *ev) {
    if (ev != NULL) {
        memset(ev, 0, sizeof *ev);
    }
}

int woof_poll_event(woof_session *s, uint64_t now_ms, woof_event *ev) {
    size_t i;
    handle_timers(s, now_ms);
    if (s->disconnected) {
        s->disconnected = 0;
        clear_event(ev);
        if (ev != NULL) {
            ev->type = WOOF_EV_DISCONNECTED;
        }
        return 1;
    }
    for (i = 0; i < WOOF_OUTBOX; i++) {
        woof_slot *slot = &s->outbox[i];
        if (slot->state == SLOT_FAILED) {
            slot->state = SLOT_FREE;
            inc(&s->stats.gave_up);
            clear_event(ev);
            if (ev != NULL) {
                ev->type = WOOF_EV_GAVE_UP;
                ev->seq = slot->seq;
                ev->kind = slot->kind;
            }
            return 1;
        }
    }
    return 0;
}

static void queue_ack(woof_session *s, uint32_t gateway_seq) {
    size_t i;
    for (i = 0; i < s->acks_len; i++) {
        if (s->acks[i] == gateway_seq) {
            return;
        }
    }
    if (s->acks_len == WOOF_DELIVERY_ACKS_MAX) {
        drop_first_ack(s);
    }
    s->acks[s->acks_len++] = gateway_seq;
}

/* Frees the sent request seq of one of the kinds (a bit set of WOOF_REQ_*);
 * returns its kind, or -1 (counted) when there is none: an answer to a
 * retransmission. */
static int complete(woof_session *s, uint32_t seq, unsigned kinds, uint64_t now_ms) {
    size_t i;
    for (i = 0; i < WOOF_OUTBOX; i++) {
        woof_slot *slot = &s->outbox[i];
        if (slot->state == SLOT_ACTIVE && slot->sends > 0 && slot->seq == seq &&
            (kinds & (1u << slot->kind))) {
            slot->state = SLOT_FREE;
            /* Karn: only an answer to a single send times the link (an
             * offload's time is the handler's too). */
            if (slot->sends == 1 && slot->kind != WOOF_REQ_OFFLOAD) {
                time_answer(s, sat_sub64(now_ms, slot->first_sent_ms));
            }
            return slot->kind;
        }
    }
    inc(&s->stats.stale_answers);
    return -1;
}

#define KINDS_ACK ((1u << WOOF_REQ_APPEND) | (1u << WOOF_REQ_SUBSCRIBE))
#define KINDS_ALL (KINDS_ACK | (1u << WOOF_REQ_OFFLOAD))

static int input(woof_session *s, uint64_t now_ms, uint8_t *buf, size_t len, woof_event *ev) {
    uint8_t type;
    uint32_t seq;
    size_t hl;
    int e, verdict, kind;
    msg_t m;
    if ((e = frame_check(buf, len, &type, &seq, &hl)) != 0) {
        return e;
    }
    if (!s->connected) {
        if (type != T_HELLO_ACK) {
            return WOOF_ERR_NOT_CONNECTED;
        }
        if (seq != 0) {
            return WOOF_ERR_BAD_FIELD;
        }
        /* Only the answer to the last hello opens (an earlier one's nonce
         * differs), and it must name that hello: a recorded answer cannot
         * be replayed to a later hello (it would reset the replay window
         * and let the old session's deliveries in again). */
        if ((e = open_frame(s->key, buf, len, s->boot_id, s->attempt)) != 0 ||
            (e = parse_body(type, buf + hl, len - hl - TAG_LEN, &m)) != 0) {
            return e;
        }
        /* Taken once: a copy (or another gateway's answer to the same
         * hello, replayed here) after the session is lost and before the
         * next hello would start a new replay window. */
        if (m.attempt != s->attempt || s->answered) {
            return WOOF_ERR_REPLAYED;
        }
        s->answered = 1;
        s->connected = 1;
        s->session_id = m.num;
        s->window = m.byte;
        /* The same gateway session again (a hello after a silence, or back
         * at a gateway that kept it): its old frames are still valid under
         * these nonces, so its window must remember them. A new session id
         * makes new nonces. */
        if (m.num != s->last_session_id) {
            switch_window(s, m.num);
        }
        s->last_rx_ms = now_ms;
        /* A loss not reported yet is over: reported after this CONNECTED,
         * it would leave the caller thinking it is disconnected. */
        s->disconnected = 0;
        /* Ping at once: it tells a gateway that held the session as
         * pending that this hello was not a replay. */
        start_ping(s, now_ms);
        ev->type = WOOF_EV_CONNECTED;
        ev->session_id = m.num;
        return 1;
    }
    if (type == T_HELLO_ACK) {
        /* A late copy of the answer we already have. */
        return WOOF_ERR_UNEXPECTED;
    }
    if ((e = open_frame(s->key, buf, len, s->boot_id, s->session_id)) != 0) {
        return e;
    }
    /* A frame that only goes up is dropped before the replay window takes
     * its seq (a dropped frame leaves the session as it was). */
    if (type == T_HELLO || type == T_APPEND || type == T_SUBSCRIBE || type == T_DELIVERY_ACK ||
        type == T_PING || type == T_OFFLOAD) {
        return WOOF_ERR_UNEXPECTED;
    }
    verdict = window_check(s, seq);
    if (verdict == TOO_OLD) {
        return WOOF_ERR_TOO_OLD;
    }
    if ((e = parse_body(type, buf + hl, len - hl - TAG_LEN, &m)) != 0) {
        return e;
    }
    if (verdict == DUPLICATE) {
        /* The gateway sent the delivery again: our ack was lost. */
        if (type == T_DELIVERY) {
            queue_ack(s, seq);
        }
        return WOOF_ERR_REPLAYED;
    }
    window_accept(s, seq);
    s->last_rx_ms = now_ms;
    switch (type) {
    case T_ACK:
        kind = complete(s, m.num, KINDS_ACK, now_ms);
        if (kind < 0) {
            return 0;
        }
        inc(&s->stats.acked);
        ev->type = WOOF_EV_ACKED;
        ev->seq = m.num;
        ev->kind = (uint8_t)kind;
        ev->topic_seq = m.big;
        return 1;
    case T_OFFLOAD_RESULT:
        if (complete(s, m.num, 1u << WOOF_REQ_OFFLOAD, now_ms) < 0) {
            return 0;
        }
        ev->type = WOOF_EV_OFFLOAD_RESULT;
        ev->seq = m.num;
        ev->kind = WOOF_REQ_OFFLOAD;
        ev->code = m.byte;
        ev->payload = m.payload;
        ev->payload_len = m.payload_len;
        return 1;
    case T_DELIVERY:
        queue_ack(s, seq);
        inc(&s->stats.delivered);
        ev->type = WOOF_EV_DELIVERY;
        ev->topic_name = m.topic.name;
        ev->topic_name_len = m.topic.name_len;
        ev->topic_index = m.topic.index;
        ev->topic_seq = m.big;
        ev->payload = m.payload;
        ev->payload_len = m.payload_len;
        return 1;
    case T_PONG:
        if (s->ping_active && m.num >= s->ping_first_seq && m.num < s->next_seq) {
            s->ping_active = 0;
            ev->type = WOOF_EV_PONG;
            ev->rtt_ms = sat_sub64(now_ms, s->ping_first_sent_ms);
            return 1;
        }
        inc(&s->stats.stale_answers);
        return 0;
    case T_ERROR:
        if (m.num == 0 && m.byte == WOOF_CODE_UNKNOWN_SESSION) {
            lose(s, now_ms);
            s->disconnected = 0;
            ev->type = WOOF_EV_DISCONNECTED;
            return 1;
        }
        kind = complete(s, m.num, KINDS_ALL, now_ms);
        if (kind < 0) {
            return 0;
        }
        inc(&s->stats.rejected);
        ev->type = WOOF_EV_REJECTED;
        ev->seq = m.num;
        ev->kind = (uint8_t)kind;
        ev->code = m.byte;
        return 1;
    default:
        /* Frames that only go up (dropped above). */
        return WOOF_ERR_UNEXPECTED;
    }
}

int woof_handle_input(woof_session *s, uint64_t now_ms, uint8_t *buf, size_t len,
                      woof_event *ev) {
    woof_event scratch;
    int r;
    if (buf == NULL) {
        len = 0;
    }
    if (ev == NULL) {
        ev = &scratch;
    }
    memset(ev, 0, sizeof *ev);
    r = len == 0 ? WOOF_ERR_TRUNCATED : input(s, now_ms, buf, len, ev);
    if (r < 0) {
        count_drop(s, r);
        memset(ev, 0, sizeof *ev);
    }
    return r;
}

int woof_is_connected(const woof_session *s) { return s->connected; }

uint32_t woof_session_id(const woof_session *s) { return s->connected ? s->session_id : 0; }

uint32_t woof_hello_attempt(const woof_session *s) { return s->attempt; }

size_t woof_outbox_len(const woof_session *s) {
    size_t i, n = 0;
    for (i = 0; i < WOOF_OUTBOX; i++) {
        if (s->outbox[i].state == SLOT_ACTIVE) {
            n++;
        }
    }
    return n;
}

void woof_get_stats(const woof_session *s, woof_stats *out) { *out = s->stats; }

void woof_get_drops(const woof_session *s, woof_drops *out) { *out = s->drops; }

size_t woof_session_size(void) { return sizeof(woof_session); }

const char *woof_strerror(int err) {
    switch (err) {
    case WOOF_OK:
        return "ok";
    case WOOF_ERR_TRUNCATED:
        return "frame or field truncated";
    case WOOF_ERR_TOO_LONG:
        return "frame or payload too long";
    case WOOF_ERR_VERSION:
        return "unsupported protocol version";
    case WOOF_ERR_UNKNOWN_TYPE:
        return "unknown frame type";
    case WOOF_ERR_BAD_VARINT:
        return "malformed varint";
    case WOOF_ERR_BAD_FIELD:
        return "field out of bounds";
    case WOOF_ERR_TRAILING_BYTES:
        return "trailing bytes after the last field";
    case WOOF_ERR_FORGED:
        return "authentication tag did not verify";
    case WOOF_ERR_REPLAYED:
        return "frame already received";
    case WOOF_ERR_TOO_OLD:
        return "frame older than the replay window";
    case WOOF_ERR_UNEXPECTED:
        return "frame not expected now";
    case WOOF_ERR_NOT_CONNECTED:
        return "no session";
    case WOOF_ERR_OUTBOX_FULL:
        return "outbox full";
    case WOOF_ERR_BUFFER_TOO_SMALL:
        return "buffer too small";
    case WOOF_ERR_SEQ_EXHAUSTED:
        return "sequence numbers exhausted";
    default:
        return "unknown error";
    }
}

/* ------------------------------------------------------------------ */
/* SLIP framing (stream.rs)                                            */
/* ------------------------------------------------------------------ */

int woof_slip_encode(const uint8_t *frame, size_t len, uint8_t *out, size_t cap) {
    size_t i, n = 0;
    /* The length must fit the int returned. */
    if (cap > (size_t)INT_MAX) {
        cap = (size_t)INT_MAX;
    }
    if (cap < 2) {
        return WOOF_ERR_BUFFER_TOO_SMALL;
    }
    out[n++] = WOOF_SLIP_END;
    for (i = 0; i < len; i++) {
        uint8_t b = frame[i];
        /* Room for this byte, escaped or not, and the final END. */
        if (b == WOOF_SLIP_END || b == WOOF_SLIP_ESC) {
            if (cap - n < 3) {
                return WOOF_ERR_BUFFER_TOO_SMALL;
            }
            out[n++] = WOOF_SLIP_ESC;
            out[n++] = b == WOOF_SLIP_END ? WOOF_SLIP_ESC_END : WOOF_SLIP_ESC_ESC;
        } else {
            if (cap - n < 2) {
                return WOOF_ERR_BUFFER_TOO_SMALL;
            }
            out[n++] = b;
        }
    }
    out[n++] = WOOF_SLIP_END;
    return (int)n;
}

void woof_deframer_init(woof_deframer *d) { memset(d, 0, sizeof *d); }

size_t woof_deframer_push(woof_deframer *d, uint8_t b) {
    if (b == WOOF_SLIP_END) {
        size_t n = 0;
        if (d->skipping || d->escaped) {
            inc(&d->dropped);
        } else {
            n = d->len; /* 0: an empty frame, skipped */
        }
        d->len = 0;
        d->escaped = 0;
        d->skipping = 0;
        return n;
    }
    if (d->skipping) {
        return 0;
    }
    if (d->escaped) {
        d->escaped = 0;
        if (b == WOOF_SLIP_ESC_END) {
            b = WOOF_SLIP_END;
        } else if (b == WOOF_SLIP_ESC_ESC) {
            b = WOOF_SLIP_ESC;
        } else {
            d->skipping = 1;
            return 0;
        }
    } else if (b == WOOF_SLIP_ESC) {
        d->escaped = 1;
        return 0;
    }
    if (d->len < WOOF_DEFRAME_MAX) {
        d->buf[d->len++] = b;
    } else {
        d->skipping = 1;
    }
    return 0;
}

size_t woof_deframer_feed(woof_deframer *d, const uint8_t *in, size_t len,
                          woof_frame_fn on_frame, void *ctx) {
    size_t i, frames = 0;
    for (i = 0; i < len; i++) {
        size_t n = woof_deframer_push(d, in[i]);
        if (n > 0) {
            if (on_frame != NULL) {
                on_frame(ctx, d->buf, n);
            }
            frames++;
        }
    }
    return frames;
}

uint32_t woof_deframer_dropped(const woof_deframer *d) { return d->dropped; }

size_t woof_deframer_size(void) { return sizeof(woof_deframer); }

/* ------------------------------------------------------------------ */
/* Local or offloaded (offload.rs)                                     */
/* ------------------------------------------------------------------ */

void woof_chooser_init(woof_chooser *c) { memset(c, 0, sizeof *c); }

size_t woof_chooser_size(void) { return sizeof(woof_chooser); }

/* A side's time: the lesser of its last two. */
static uint64_t chooser_time(const uint64_t *times) {
    return times[1] < times[0] ? times[1] : times[0];
}

int woof_chooser_pick(woof_chooser *c) {
    if (c->since_reset >= WOOF_FORGET_EVERY) {
        /* Both are measured afresh; their times stay as the ones before,
         * for the fresh ones to be taken with. */
        c->measured = 0;
        c->since_reset = 0;
    }
    c->since_reset++;
    if (!(c->measured & WOOF_MEASURED_LOCAL)) {
        return WOOF_SIDE_LOCAL;
    }
    if (!(c->measured & WOOF_MEASURED_REMOTE)) {
        return WOOF_SIDE_REMOTE;
    }
    return chooser_time(c->remote_time) < chooser_time(c->local_time) ? WOOF_SIDE_REMOTE
                                                                      : WOOF_SIDE_LOCAL;
}

void woof_chooser_record(woof_chooser *c, int side, uint64_t elapsed) {
    uint64_t *times;
    unsigned bit;
    if (side == WOOF_SIDE_LOCAL) {
        times = c->local_time;
        bit = WOOF_MEASURED_LOCAL;
    } else if (side == WOOF_SIDE_REMOTE) {
        times = c->remote_time;
        bit = WOOF_MEASURED_REMOTE;
    } else {
        return;
    }
    /* A side never measured has no time before: UINT64_MAX, which the
     * lesser of the two ignores (as the Rust core's initial times). */
    times[1] = (c->held & bit) ? times[0] : UINT64_MAX;
    times[0] = elapsed;
    c->held = (uint8_t)(c->held | bit);
    c->measured = (uint8_t)(c->measured | bit);
}

void woof_chooser_remote_failed(woof_chooser *c) {
    /* Both times, or the lesser of the two would hide the failure. */
    woof_chooser_record(c, WOOF_SIDE_REMOTE, UINT64_MAX);
    woof_chooser_record(c, WOOF_SIDE_REMOTE, UINT64_MAX);
}

unsigned woof_chooser_measured(const woof_chooser *c, uint64_t *local, uint64_t *remote) {
    if (local != NULL && (c->measured & WOOF_MEASURED_LOCAL)) {
        *local = chooser_time(c->local_time);
    }
    if (remote != NULL && (c->measured & WOOF_MEASURED_REMOTE)) {
        *remote = chooser_time(c->remote_time);
    }
    return c->measured;
}
