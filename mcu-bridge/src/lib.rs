//! woof's bridge protocol for microcontrollers: the frames a device and a
//! gateway node exchange, their authentication, and the device's side of a
//! session, in a `#![no_std]` core that needs no allocator. DESIGN.md,
//! "Microcontrollers", says what the bridge promises; this crate is the part
//! that runs on the device (and, with the `std` feature, the gateway's
//! per-device logic that the node drives).
//!
//! # Layout
//!
//! - [`wire`]: the frame format. [`wire::Frame`] is a zero-copy view over
//!   bytes, checked by [`wire::Frame::new_checked`] before anything is read;
//!   [`wire::Message`] holds one message type per frame type, read by
//!   [`wire::Message::parse`] and written by [`wire::Message::emit`]
//!   (smoltcp's `wire` style: the message is separate from its encoding).
//! - [`crypto`]: sealing and opening frames in place with Ascon-AEAD128, the
//!   nonce derivation, the 64-frame replay window, and [`crypto::Drops`],
//!   the counts of dropped frames by reason.
//! - [`session`]: the device's session state machine, free of I/O and
//!   clocks: bytes and the time in, bytes and the next deadline out. Hello,
//!   append with CoAP-style retransmission, subscribe, deliveries and their
//!   acks, ping, offload, all in a fixed outbox of `N` slots.
//! - [`offload`]: the device's choice per invocation between its own
//!   function and an offloaded call, by measured time to result.
//! - [`stream`]: SLIP framing, for frames over TCP or a serial line.
//! - `gateway` (feature `std`): the gateway's logic for one device:
//!   authentication, dedupe by (boot id, device sequence number), and acks
//!   sent only when the node says an append committed. No sockets.
//! - `tests/`: the device session against the gateway session over a lossy,
//!   duplicating, reordering simulated link, and across a reboot.
//! - `nostd-check/` (not a workspace member): a `#![no_std]` staticlib with
//!   its own panic handler that drives the core through one C symbol, and
//!   (feature `link`) a `#![no_main]` bare-metal program linking the same
//!   code for a Cortex-M4, which fails to link if anything pulls in `std`,
//!   `alloc` or a C symbol such as `malloc` (`./dev test` builds both). Its
//!   archive object is the core's code size (see "Size").
//! - `firmware/esp32c3/` (its own workspace): an ESP32-C3 firmware example
//!   (esp-hal, esp-radio, embassy-net) that joins Wi-Fi and appends the
//!   chip's temperature once a second through a [`session::Session`].
//! - `fuzz/` (its own workspace): fuzz targets for the frame decoder, the
//!   device session and the gateway session, with a small corpus.
//! - `c/`: the device core in C99 for boards Rust does not reach
//!   (`woof_bridge.h` and `woof_bridge.c`: no malloc, the same frames and
//!   timing) and `c/examples/udp_device.c`; `c-test/` (a workspace member)
//!   proves it frame for frame against [`session`], against `gateway` over
//!   a lossy link, under hostile input and under sanitizers.
//!
//! # Frame format
//!
//! ```text
//!    byte 0          1..=4                  n bytes              16 bytes
//!  +---------+-----------------------+---------------------+------------------+
//!  | ver|type| seq (LEB128, <= 2^28) | body                | Ascon-AEAD128 tag|
//!  +---------+-----------------------+---------------------+------------------+
//!   4b   4b   \____ header: 2..=5 bytes, the associated data ___/
//! ```
//!
//! `ver` is 1. `seq` is the sender's sequence number: every frame a side
//! sends in a boot takes the next one (a retransmission is the same frame).
//! The body is encrypted, except in `Hello` and `HelloAck`, whose bodies go
//! in the clear and are covered by the tag. Bodies, in order of fields
//! (`varint` is LEB128 in its shortest form, `topic` is one byte `0x80|index`
//! or a length 1..=64 followed by a name in `[a-z0-9._/-]`):
//!
//! | type | n | body |
//! |---|---|---|
//! | Hello | 0 | id length (1..=32), device id, boot id (u64 LE), capabilities (u8), attempt (u32 LE, non-zero) |
//! | HelloAck | 1 | session id (u32 LE, non-zero), window (1..=64), attempt (u32 LE, the hello's) |
//! | Append | 2 | topic, payload (the rest) |
//! | Ack | 3 | acked device seq (varint), topic seq (varint u64) |
//! | Subscribe | 4 | topic, from (varint u64, 0 = next) |
//! | Delivery | 5 | topic, topic seq (varint u64), payload |
//! | DeliveryAck | 6 | acked gateway seq (varint) |
//! | Ping | 7 | nothing |
//! | Pong | 8 | acked device seq (varint) |
//! | Offload | 9 | handler length (1..=32), handler name, payload |
//! | OffloadResult | 10 | acked device seq (varint), status (u8), payload |
//! | Error | 11 | about (device seq, varint, 0 = none), code (u8), text (UTF-8, <= 64) |
//!
//! A frame is at most 1,024 bytes. Every length is bounded and trailing bytes
//! are rejected.
//!
//! # Overhead
//!
//! Per frame: 1 byte of version and type, 1 to 4 bytes of sequence number
//! (1 while seq < 128, 2 below 16,384, 3 below 2,097,152, 4 up to 2^28 - 1),
//! and the 16-byte tag: **18 to 21 bytes, a header of at most 5 bytes beyond
//! the tag** (zenoh-pico's figure). An append of a 4-byte reading to topic
//! index 3 at device seq 200 is 1 + 2 + 1 + 4 + 16 = 24 bytes; its ack, at
//! a gateway seq and a topic seq between 128 and 16,383, is
//! 1 + 2 + 2 + 2 + 16 = 23 bytes. The nonce is
//! never sent: both sides derive it from (boot id, session id, direction,
//! seq), see [`crypto`].
//!
//! # Why Ascon-AEAD128
//!
//! The issue asks for a small `no_std` AEAD from RustCrypto. Ascon-AEAD128
//! (NIST SP 800-232, the lightweight-cryptography winner) is about 2.5 KB of
//! code on a Cortex-M against about 4.3 KB for ChaCha20-Poly1305 (opt-level
//! s, LTO; the issue's figures, not measured here), has a 16-byte key,
//! nonce and tag, needs no tables (no cache-timing leaks), and is cheap on
//! 32-bit cores without AES instructions, which is every board we target.
//! `ascon-aead` 0.6 with default features off builds with no `std`, no
//! `alloc` and no random source; its dependency tree is `aead`, `ascon-core`,
//! `inout`, `subtle` and `hybrid-array`.
//!
//! # Size
//!
//! Measured on a Cortex-M4 (`thumbv7em-none-eabihf`, installed with
//! `rustup target add`), `nostd-check` built with opt-level s, LTO and one
//! codegen unit: the whole device core, Ascon included, is **10.2 KB of
//! code** (`llvm-size` of the crate's object in the archive; the few
//! compiler-builtins it calls, such as 64-bit division, come on top), 13.3 KB
//! on x86_64. RAM: a device session is its outbox plus about 350 bytes:
//! `Session<8, 128>` (eight requests of up to 128-byte frames) is **1,696
//! bytes** on the Cortex-M4 and `Session<4, 64>` 768 (96 of them the replay
//! windows of the last four sessions; read from
//! `nostd-check`'s `WOOF_SESSION_*_BYTES` symbols), plus the caller's receive
//! and send buffers (one frame each).
//!
//! # Features
//!
//! - `std` (off by default): the gateway session. The device core never
//!   needs it; `cargo build -p woof-mcu-bridge --no-default-features` builds
//!   the core alone.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

pub mod crypto;
#[cfg(feature = "std")]
pub mod gateway;
pub mod offload;
pub mod session;
pub mod stream;
pub mod wire;

/// Everything that can go wrong, in one enum: a bad frame from outside is one
/// of these, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the frame or field needs.
    Truncated,
    /// More bytes than [`wire::FRAME_LEN_MAX`], or a payload too big for the
    /// device's buffers.
    TooLong,
    /// A protocol version this crate does not speak.
    Version,
    /// A frame type this crate does not know.
    UnknownType,
    /// A varint that is too long, too large, or not in its shortest form.
    BadVarint,
    /// A field out of its bounds (a length, a name's alphabet, a zero id).
    BadField,
    /// Bytes left after the last field.
    TrailingBytes,
    /// The tag did not verify: wrong key, altered bytes, or another session.
    Forged,
    /// An authentic frame that was already received.
    Replayed,
    /// An authentic frame too far behind the replay window to tell.
    TooOld,
    /// An authentic frame that makes no sense now.
    Unexpected,
    /// No session yet: the request waits in the outbox, or the frame is dropped.
    NotConnected,
    /// The outbox has no free slot.
    OutboxFull,
    /// The output buffer is too small for the frame.
    BufferTooSmall,
    /// The sender has used every sequence number: start a new boot.
    SeqExhausted,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::Truncated => "frame or field truncated",
            Error::TooLong => "frame or payload too long",
            Error::Version => "unsupported protocol version",
            Error::UnknownType => "unknown frame type",
            Error::BadVarint => "malformed varint",
            Error::BadField => "field out of bounds",
            Error::TrailingBytes => "trailing bytes after the last field",
            Error::Forged => "authentication tag did not verify",
            Error::Replayed => "frame already received",
            Error::TooOld => "frame older than the replay window",
            Error::Unexpected => "frame not expected now",
            Error::NotConnected => "no session",
            Error::OutboxFull => "outbox full",
            Error::BufferTooSmall => "buffer too small",
            Error::SeqExhausted => "sequence numbers exhausted",
        })
    }
}

impl core::error::Error for Error {}

pub type Result<T, E = Error> = core::result::Result<T, E>;
