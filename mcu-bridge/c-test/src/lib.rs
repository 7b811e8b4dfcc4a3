//! Host tests of the C port of the bridge's device core
//! (`mcu-bridge/c/woof_bridge.c`), which `build.rs` compiles into this crate.
//!
//! Everything a test drives is a [`Device`]: the Rust core
//! ([`RustDevice`], `Session<8, 128>`), the C core linked in ([`CDevice`],
//! built with the same sizes), or a C core in a process of its own
//! ([`ProcDevice`], `c/harness.c`, which the tests build with
//! `-fsanitize=address,undefined`). [`Lockstep`] drives several with the
//! same calls and asserts after every one that they answered the same:
//! every frame byte for byte, every event, every error, every counter and
//! deadline. So a scenario written once proves the C port frame for frame.
//!
//! The SLIP framing and the local-or-offloaded chooser are compared the same
//! way through [`Framer`] ([`RustFramer`], [`CFramer`], [`ProcDevice`]) and
//! [`Choose`] ([`RustChooser`], [`CChooser`], [`ProcDevice`]).

use std::ffi::{CString, c_char, c_void};
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use woof_mcu_bridge::Error;
use woof_mcu_bridge::crypto::{Cipher, Context, Direction, Drops, KEY_LEN};
use woof_mcu_bridge::offload::{Chooser, Side};
use woof_mcu_bridge::session::{Config, Event, RequestKind, Session, Stats};
use woof_mcu_bridge::stream::{self, Deframer};
use woof_mcu_bridge::wire::{FRAME_LEN_MAX, HelloAck, Message, TAG_LEN, Topic, Type, VERSION};

/// Outbox slots and slot bytes: `build.rs` and [`C_SIZE_DEFINES`] compile
/// the C core with these.
pub const OUTBOX: usize = 8;
pub const SLOT_BYTES: usize = 128;
/// The Rust session the C one is compared with.
pub type RustSession = Session<OUTBOX, SLOT_BYTES>;
/// The deframer's buffer in the C core `build.rs` links (small, so that
/// random streams often overrun it), compared with `Deframer<DEFRAME_MAX>`.
/// 66 so that on a 64-bit host the buffer ends `woof_deframer` with no
/// padding after it: a write one past it reaches the sanitizer's redzone.
pub const DEFRAME_MAX: usize = 66;
/// `WOOF_DEFRAME_MAX` when it is not defined: one byte more than a frame
/// may be, as the gateway's `Deframer<{ FRAME_LEN_MAX + 1 }>`.
pub const DEFRAME_MAX_DEFAULT: usize = FRAME_LEN_MAX + 1;
/// The `-D` flags for a C build with the same sizes.
pub const C_SIZE_DEFINES: [&str; 3] = [
    "-DWOOF_OUTBOX=8",
    "-DWOOF_FRAME_MAX=128",
    "-DWOOF_DEFRAME_MAX=66",
];

mod ffi {
    use std::ffi::{c_char, c_void};

    #[repr(C)]
    pub struct Config {
        pub device_id: *const c_char,
        pub key: [u8; 16],
        pub boot_id: u64,
        pub caps: u8,
        pub ping_interval_ms: u64,
    }

    #[repr(C)]
    pub struct Event {
        pub ty: u8,
        pub kind: u8,
        pub code: u8,
        pub topic_index: u8,
        pub seq: u32,
        pub session_id: u32,
        pub topic_seq: u64,
        pub rtt_ms: u64,
        pub topic_name: *const u8,
        pub topic_name_len: usize,
        pub payload: *const u8,
        pub payload_len: usize,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct Stats {
        pub sent: u32,
        pub retransmitted: u32,
        pub acked: u32,
        pub rejected: u32,
        pub gave_up: u32,
        pub delivered: u32,
        pub stale_answers: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct Drops {
        pub malformed: u32,
        pub forged: u32,
        pub replayed: u32,
        pub too_old: u32,
        pub unexpected: u32,
    }

    unsafe extern "C" {
        pub fn woof_init(s: *mut c_void, c: *const Config, now: u64, rand: u32) -> i32;
        pub fn woof_append(s: *mut c_void, i: u8, p: *const u8, l: usize, rand: u32) -> i32;
        pub fn woof_append_named(
            s: *mut c_void,
            t: *const c_char,
            p: *const u8,
            l: usize,
            rand: u32,
        ) -> i32;
        pub fn woof_subscribe(s: *mut c_void, i: u8, from: u64, rand: u32) -> i32;
        pub fn woof_subscribe_named(s: *mut c_void, t: *const c_char, from: u64, rand: u32) -> i32;
        pub fn woof_offload(
            s: *mut c_void,
            h: *const c_char,
            p: *const u8,
            l: usize,
            rand: u32,
        ) -> i32;
        pub fn woof_poll_transmit(s: *mut c_void, now: u64, out: *mut u8, cap: usize) -> i32;
        pub fn woof_handle_input(
            s: *mut c_void,
            now: u64,
            buf: *mut u8,
            len: usize,
            ev: *mut Event,
        ) -> i32;
        pub fn woof_poll_event(s: *mut c_void, now: u64, ev: *mut Event) -> i32;
        pub fn woof_poll_timeout(s: *const c_void) -> u64;
        pub fn woof_reconnect(s: *mut c_void, now: u64);
        pub fn woof_is_connected(s: *const c_void) -> i32;
        pub fn woof_session_id(s: *const c_void) -> u32;
        pub fn woof_hello_attempt(s: *const c_void) -> u32;
        pub fn woof_outbox_len(s: *const c_void) -> usize;
        pub fn woof_retransmit_timeout_ms(s: *const c_void) -> u64;
        pub fn woof_get_stats(s: *const c_void, out: *mut Stats);
        pub fn woof_get_drops(s: *const c_void, out: *mut Drops);
        pub fn woof_session_size() -> usize;
        pub fn woof_strerror(err: i32) -> *const c_char;
        pub fn woof_derive_key(fleet: *const u8, id: *const c_char, out: *mut u8) -> i32;

        pub fn woof_slip_encode(frame: *const u8, len: usize, out: *mut u8, cap: usize) -> i32;
        pub fn woof_deframer_init(d: *mut Deframer);
        pub fn woof_deframer_push(d: *mut Deframer, byte: u8) -> usize;
        pub fn woof_deframer_feed(
            d: *mut Deframer,
            input: *const u8,
            len: usize,
            on_frame: Option<unsafe extern "C" fn(*mut c_void, *mut u8, usize)>,
            ctx: *mut c_void,
        ) -> usize;
        pub fn woof_deframer_dropped(d: *const Deframer) -> u32;
        pub fn woof_deframer_size() -> usize;
        pub fn woof_chooser_init(c: *mut Chooser);
        pub fn woof_chooser_size() -> usize;
        pub fn woof_chooser_pick(c: *mut Chooser) -> i32;
        pub fn woof_chooser_record(c: *mut Chooser, side: i32, elapsed: u64);
        pub fn woof_chooser_remote_failed(c: *mut Chooser);
        pub fn woof_chooser_measured(c: *const Chooser, local: *mut u64, remote: *mut u64) -> u32;
    }

    /// `woof_deframer` as `build.rs` compiles it (`WOOF_DEFRAME_MAX` is
    /// [`super::DEFRAME_MAX`]; [`super::CFramer::new`] checks the size).
    #[repr(C)]
    pub struct Deframer {
        pub len: usize,
        pub dropped: u32,
        pub escaped: u8,
        pub skipping: u8,
        pub buf: [u8; super::DEFRAME_MAX],
    }

    /// `woof_chooser` ([`super::CChooser::new`] checks the size).
    #[repr(C)]
    #[derive(Default)]
    pub struct Chooser {
        pub local_time: [u64; 2],
        pub remote_time: [u64; 2],
        pub since_reset: u32,
        pub measured: u8,
        pub held: u8,
    }
}

/// A topic as an event names it, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOwned {
    Index(u8),
    Name(Vec<u8>),
}

impl TopicOwned {
    fn from_wire(t: Topic<'_>) -> TopicOwned {
        match t {
            Topic::Index(i) => TopicOwned::Index(i),
            Topic::Name(n) => TopicOwned::Name(n.to_vec()),
        }
    }
}

/// An event, owned, in one form for every implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Connected {
        session_id: u32,
    },
    Disconnected,
    Acked {
        seq: u32,
        kind: RequestKind,
        topic_seq: u64,
    },
    Rejected {
        seq: u32,
        kind: RequestKind,
        code: u8,
    },
    GaveUp {
        seq: u32,
        kind: RequestKind,
    },
    Delivery {
        topic: TopicOwned,
        topic_seq: u64,
        payload: Vec<u8>,
    },
    OffloadResult {
        seq: u32,
        status: u8,
        payload: Vec<u8>,
    },
    Pong {
        rtt_ms: u64,
    },
}

impl Ev {
    pub fn from_rust(e: Event<'_>) -> Ev {
        match e {
            Event::Connected { session_id } => Ev::Connected { session_id },
            Event::Disconnected => Ev::Disconnected,
            Event::Acked {
                seq,
                kind,
                topic_seq,
            } => Ev::Acked {
                seq,
                kind,
                topic_seq,
            },
            Event::Rejected { seq, kind, code } => Ev::Rejected { seq, kind, code },
            Event::GaveUp { seq, kind } => Ev::GaveUp { seq, kind },
            Event::Delivery {
                topic,
                topic_seq,
                payload,
            } => Ev::Delivery {
                topic: TopicOwned::from_wire(topic),
                topic_seq,
                payload: payload.to_vec(),
            },
            Event::OffloadResult {
                seq,
                status,
                payload,
            } => Ev::OffloadResult {
                seq,
                status,
                payload: payload.to_vec(),
            },
            Event::Pong { rtt_ms } => Ev::Pong { rtt_ms },
        }
    }

    /// The event the C core reported, from its fields.
    #[allow(clippy::too_many_arguments)]
    fn from_c(
        ty: u8,
        kind: u8,
        code: u8,
        topic_index: u8,
        seq: u32,
        session_id: u32,
        topic_seq: u64,
        rtt_ms: u64,
        topic_name: Option<Vec<u8>>,
        payload: Vec<u8>,
    ) -> Ev {
        let kind = || match kind {
            0 => RequestKind::Append,
            1 => RequestKind::Subscribe,
            2 => RequestKind::Offload,
            k => panic!("C reported request kind {k}"),
        };
        match ty {
            1 => Ev::Connected { session_id },
            2 => Ev::Disconnected,
            3 => Ev::Acked {
                seq,
                kind: kind(),
                topic_seq,
            },
            4 => Ev::Rejected {
                seq,
                kind: kind(),
                code,
            },
            5 => Ev::GaveUp { seq, kind: kind() },
            6 => Ev::Delivery {
                topic: match topic_name {
                    Some(n) => TopicOwned::Name(n),
                    None => TopicOwned::Index(topic_index),
                },
                topic_seq,
                payload,
            },
            7 => Ev::OffloadResult {
                seq,
                status: code,
                payload,
            },
            8 => Ev::Pong { rtt_ms },
            t => panic!("C reported event type {t}"),
        }
    }
}

/// The C core's number for a Rust error (`WOOF_ERR_*`).
pub fn code_of(e: Error) -> i32 {
    -(match e {
        Error::Truncated => 1,
        Error::TooLong => 2,
        Error::Version => 3,
        Error::UnknownType => 4,
        Error::BadVarint => 5,
        Error::BadField => 6,
        Error::TrailingBytes => 7,
        Error::Forged => 8,
        Error::Replayed => 9,
        Error::TooOld => 10,
        Error::Unexpected => 11,
        Error::NotConnected => 12,
        Error::OutboxFull => 13,
        Error::BufferTooSmall => 14,
        Error::SeqExhausted => 15,
    })
}

/// The C core's text for an error code.
pub fn c_strerror(code: i32) -> String {
    // SAFETY: woof_strerror returns a pointer to a static NUL-terminated
    // string for every input.
    unsafe { std::ffi::CStr::from_ptr(ffi::woof_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// The C core's fleet key derivation (`woof_derive_key`).
pub fn c_derive_key(fleet: &[u8; KEY_LEN], id: &str) -> Result<[u8; KEY_LEN], i32> {
    let id = CString::new(id).expect("no NUL in an id");
    let mut out = [0u8; KEY_LEN];
    // SAFETY: fleet and out are 16 bytes, id is NUL-terminated.
    let rc = unsafe { ffi::woof_derive_key(fleet.as_ptr(), id.as_ptr(), out.as_mut_ptr()) };
    if rc == 0 { Ok(out) } else { Err(rc) }
}

/// What a session needs to start, in one form for every implementation.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub key: [u8; KEY_LEN],
    pub boot_id: u64,
    pub caps: u8,
    pub ping_interval_ms: u64,
}

impl Spec {
    pub fn config(&self) -> Config<'_> {
        Config {
            device_id: self.id.as_bytes(),
            key: self.key,
            boot_id: self.boot_id,
            caps: self.caps,
            ping_interval_ms: self.ping_interval_ms,
        }
    }
}

/// Counters and deadlines: what [`Lockstep`] compares after every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub connected: bool,
    pub session_id: Option<u32>,
    /// The last hello's attempt number (0 before the first).
    pub hello_attempt: u32,
    pub outbox_len: usize,
    pub retransmit_timeout_ms: u64,
    pub poll_timeout: u64,
    pub stats: Stats,
    pub drops: Drops,
}

/// A device core, whichever the language. Errors are `WOOF_ERR_*` codes.
pub trait Device {
    fn append(&mut self, topic: Topic<'_>, payload: &[u8], rand: u32) -> Result<u32, i32>;
    fn subscribe(&mut self, topic: Topic<'_>, from: u64, rand: u32) -> Result<u32, i32>;
    fn offload(&mut self, handler: &[u8], payload: &[u8], rand: u32) -> Result<u32, i32>;
    /// The next frame, written into a buffer of `cap` bytes.
    fn poll_transmit(&mut self, now: u64, cap: usize) -> Result<Option<Vec<u8>>, i32>;
    /// Takes a copy of `frame`.
    fn handle_input(&mut self, now: u64, frame: &[u8]) -> Result<Option<Ev>, i32>;
    fn poll_event(&mut self, now: u64) -> Option<Ev>;
    fn reconnect(&mut self, now: u64);
    fn state(&mut self) -> State;
    /// Ends the device, checking that it ended well (a process exits 0).
    fn close(&mut self) {}
}

/// The Rust core.
pub struct RustDevice(pub RustSession);

impl RustDevice {
    pub fn new(spec: &Spec, now: u64, rand: u32) -> Result<RustDevice, i32> {
        RustSession::new(&spec.config(), now, rand)
            .map(RustDevice)
            .map_err(code_of)
    }
}

impl Device for RustDevice {
    fn append(&mut self, topic: Topic<'_>, payload: &[u8], rand: u32) -> Result<u32, i32> {
        self.0.append(topic, payload, rand).map_err(code_of)
    }

    fn subscribe(&mut self, topic: Topic<'_>, from: u64, rand: u32) -> Result<u32, i32> {
        self.0.subscribe(topic, from, rand).map_err(code_of)
    }

    fn offload(&mut self, handler: &[u8], payload: &[u8], rand: u32) -> Result<u32, i32> {
        self.0.offload(handler, payload, rand).map_err(code_of)
    }

    fn poll_transmit(&mut self, now: u64, cap: usize) -> Result<Option<Vec<u8>>, i32> {
        let mut out = vec![0u8; cap];
        let len = self.0.poll_transmit(now, &mut out).map_err(code_of)?;
        Ok(len.map(|n| out[..n].to_vec()))
    }

    fn handle_input(&mut self, now: u64, frame: &[u8]) -> Result<Option<Ev>, i32> {
        let mut buf = frame.to_vec();
        self.0
            .handle_input(now, &mut buf)
            .map(|e| e.map(Ev::from_rust))
            .map_err(code_of)
    }

    fn poll_event(&mut self, now: u64) -> Option<Ev> {
        self.0.poll_event(now).map(Ev::from_rust)
    }

    fn reconnect(&mut self, now: u64) {
        self.0.reconnect(now);
    }

    fn state(&mut self) -> State {
        State {
            connected: self.0.is_connected(),
            session_id: self.0.session_id(),
            hello_attempt: self.0.hello_attempt(),
            outbox_len: self.0.outbox_len(),
            retransmit_timeout_ms: self.0.retransmit_timeout_ms(),
            poll_timeout: self.0.poll_timeout().unwrap_or(u64::MAX),
            stats: self.0.stats(),
            drops: self.0.drops(),
        }
    }
}

/// The C core, linked into this crate by `build.rs`.
pub struct CDevice {
    /// The `woof_session`, in 8-byte words (its strictest alignment).
    mem: Vec<u64>,
}

fn cstring(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("the C API takes names without NUL bytes")
}

fn nonnull(p: &[u8]) -> *const u8 {
    if p.is_empty() {
        std::ptr::null()
    } else {
        p.as_ptr()
    }
}

fn seq_or_err(rc: i32) -> Result<u32, i32> {
    if rc >= 0 { Ok(rc as u32) } else { Err(rc) }
}

impl CDevice {
    /// `sizeof(woof_session)` as compiled.
    pub fn session_size() -> usize {
        // SAFETY: no arguments, no state.
        unsafe { ffi::woof_session_size() }
    }

    pub fn new(spec: &Spec, now: u64, rand: u32) -> Result<CDevice, i32> {
        let words = CDevice::session_size().div_ceil(8);
        let mut dev = CDevice {
            mem: vec![0; words],
        };
        let id = cstring(spec.id.as_bytes());
        let config = ffi::Config {
            device_id: id.as_ptr(),
            key: spec.key,
            boot_id: spec.boot_id,
            caps: spec.caps,
            ping_interval_ms: spec.ping_interval_ms,
        };
        // SAFETY: mem holds session_size() bytes, 8-aligned; config and the
        // id it points to outlive the call.
        let rc = unsafe { ffi::woof_init(dev.ptr(), &config, now, rand) };
        if rc == 0 { Ok(dev) } else { Err(rc) }
    }

    fn ptr(&mut self) -> *mut c_void {
        self.mem.as_mut_ptr().cast()
    }

    fn cptr(&self) -> *const c_void {
        self.mem.as_ptr().cast()
    }

    fn event(ev: &ffi::Event) -> Ev {
        // SAFETY: the C core's pointers point into the buffer the event came
        // from, which the caller still holds, with the lengths given.
        let bytes = |p: *const u8, n: usize| {
            if p.is_null() {
                None
            } else {
                Some(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
            }
        };
        Ev::from_c(
            ev.ty,
            ev.kind,
            ev.code,
            ev.topic_index,
            ev.seq,
            ev.session_id,
            ev.topic_seq,
            ev.rtt_ms,
            bytes(ev.topic_name, ev.topic_name_len),
            bytes(ev.payload, ev.payload_len).unwrap_or_default(),
        )
    }

    fn blank_event() -> ffi::Event {
        ffi::Event {
            ty: 0,
            kind: 0,
            code: 0,
            topic_index: 0,
            seq: 0,
            session_id: 0,
            topic_seq: 0,
            rtt_ms: 0,
            topic_name: std::ptr::null(),
            topic_name_len: 0,
            payload: std::ptr::null(),
            payload_len: 0,
        }
    }
}

impl Device for CDevice {
    fn append(&mut self, topic: Topic<'_>, payload: &[u8], rand: u32) -> Result<u32, i32> {
        let p = nonnull(payload);
        // SAFETY: the session is initialised; payload and name outlive the
        // call; the name is NUL-terminated.
        seq_or_err(match topic {
            Topic::Index(i) => unsafe { ffi::woof_append(self.ptr(), i, p, payload.len(), rand) },
            Topic::Name(n) => {
                let n = cstring(n);
                unsafe { ffi::woof_append_named(self.ptr(), n.as_ptr(), p, payload.len(), rand) }
            }
        })
    }

    fn subscribe(&mut self, topic: Topic<'_>, from: u64, rand: u32) -> Result<u32, i32> {
        // SAFETY: as in append.
        seq_or_err(match topic {
            Topic::Index(i) => unsafe { ffi::woof_subscribe(self.ptr(), i, from, rand) },
            Topic::Name(n) => {
                let n = cstring(n);
                unsafe { ffi::woof_subscribe_named(self.ptr(), n.as_ptr(), from, rand) }
            }
        })
    }

    fn offload(&mut self, handler: &[u8], payload: &[u8], rand: u32) -> Result<u32, i32> {
        let h = cstring(handler);
        // SAFETY: as in append.
        seq_or_err(unsafe {
            ffi::woof_offload(
                self.ptr(),
                h.as_ptr() as *const c_char,
                nonnull(payload),
                payload.len(),
                rand,
            )
        })
    }

    fn poll_transmit(&mut self, now: u64, cap: usize) -> Result<Option<Vec<u8>>, i32> {
        let mut out = vec![0u8; cap];
        // SAFETY: out holds cap bytes.
        let rc = unsafe { ffi::woof_poll_transmit(self.ptr(), now, out.as_mut_ptr(), cap) };
        match rc {
            0 => Ok(None),
            n if n > 0 => {
                assert!(n as usize <= cap, "C wrote {n} bytes into {cap}");
                out.truncate(n as usize);
                Ok(Some(out))
            }
            e => Err(e),
        }
    }

    fn handle_input(&mut self, now: u64, frame: &[u8]) -> Result<Option<Ev>, i32> {
        let mut buf = frame.to_vec();
        let mut ev = CDevice::blank_event();
        let ptr = if buf.is_empty() {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr()
        };
        // SAFETY: buf holds len bytes and outlives the event's use below.
        let rc = unsafe { ffi::woof_handle_input(self.ptr(), now, ptr, buf.len(), &mut ev) };
        match rc {
            0 => Ok(None),
            1 => Ok(Some(CDevice::event(&ev))),
            e if e < 0 => Err(e),
            r => panic!("woof_handle_input returned {r}"),
        }
    }

    fn poll_event(&mut self, now: u64) -> Option<Ev> {
        let mut ev = CDevice::blank_event();
        // SAFETY: the session is initialised.
        match unsafe { ffi::woof_poll_event(self.ptr(), now, &mut ev) } {
            0 => None,
            1 => Some(CDevice::event(&ev)),
            r => panic!("woof_poll_event returned {r}"),
        }
    }

    fn reconnect(&mut self, now: u64) {
        // SAFETY: the session is initialised.
        unsafe { ffi::woof_reconnect(self.ptr(), now) }
    }

    fn state(&mut self) -> State {
        let mut st = ffi::Stats::default();
        let mut d = ffi::Drops::default();
        let s = self.cptr();
        // SAFETY: the session is initialised; the outputs are repr(C) twins.
        unsafe {
            ffi::woof_get_stats(s, &mut st);
            ffi::woof_get_drops(s, &mut d);
            let connected = ffi::woof_is_connected(s) != 0;
            let sid = ffi::woof_session_id(s);
            State {
                connected,
                session_id: connected.then_some(sid),
                hello_attempt: ffi::woof_hello_attempt(s),
                outbox_len: ffi::woof_outbox_len(s),
                retransmit_timeout_ms: ffi::woof_retransmit_timeout_ms(s),
                poll_timeout: ffi::woof_poll_timeout(s),
                stats: Stats {
                    sent: st.sent,
                    retransmitted: st.retransmitted,
                    acked: st.acked,
                    rejected: st.rejected,
                    gave_up: st.gave_up,
                    delivered: st.delivered,
                    stale_answers: st.stale_answers,
                },
                drops: Drops {
                    malformed: d.malformed,
                    forged: d.forged,
                    replayed: d.replayed,
                    too_old: d.too_old,
                    unexpected: d.unexpected,
                },
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".into();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    if text == "-" {
        return Vec::new();
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from the harness"))
        .collect()
}

/// A C core in a process of its own (`c/harness.c`, built by
/// [`build_harness`]), driven over its stdin and stdout.
pub struct ProcDevice {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ProcDevice {
    /// The harness at `binary`, its session not started (for its
    /// [`Framer`] and [`Choose`]).
    pub fn spawn(binary: &Path) -> ProcDevice {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        ProcDevice {
            child,
            stdin,
            stdout,
        }
    }

    pub fn new(binary: &Path, spec: &Spec, now: u64, rand: u32) -> Result<ProcDevice, i32> {
        let mut dev = ProcDevice::spawn(binary);
        let r = dev.call(&format!(
            "init {} {} {} {} {} {now} {rand}",
            hex(spec.id.as_bytes()),
            hex(&spec.key),
            spec.boot_id,
            spec.caps,
            spec.ping_interval_ms
        ));
        match r[0].parse::<i32>().expect("a code") {
            0 => Ok(dev),
            e => Err(e),
        }
    }

    /// `(sizeof(woof_deframer), WOOF_DEFRAME_MAX)` as the harness was built.
    pub fn deframer_size(&mut self) -> (usize, usize) {
        let w = self.call("dsize");
        (w[0].parse().expect("a size"), w[1].parse().expect("a size"))
    }

    /// One command, one answer (its words after "r").
    fn call(&mut self, line: &str) -> Vec<String> {
        let stdin = self.stdin.as_mut().expect("the harness is running");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("harness died before `{line}`: {e}"));
        let mut answer = String::new();
        let n = self
            .stdout
            .read_line(&mut answer)
            .unwrap_or_else(|e| panic!("reading the harness: {e}"));
        assert!(
            n > 0,
            "the harness died on `{line}` (a sanitizer report is on stderr): {:?}",
            self.child.try_wait()
        );
        let mut words: Vec<String> = answer.split_whitespace().map(String::from).collect();
        assert_eq!(words.first().map(String::as_str), Some("r"), "{answer}");
        words.remove(0);
        words
    }

    fn event(words: &[String]) -> Result<Option<Ev>, i32> {
        let n = |i: usize| words[i].parse::<u64>().expect("a number");
        let rc: i32 = words[0].parse().expect("a code");
        if rc <= 0 {
            return if rc == 0 { Ok(None) } else { Err(rc) };
        }
        let name = (words[9] != "-").then(|| unhex(&words[9]));
        Ok(Some(Ev::from_c(
            n(1) as u8,
            n(2) as u8,
            n(3) as u8,
            n(4) as u8,
            n(5) as u32,
            n(6) as u32,
            n(7),
            n(8),
            name,
            unhex(&words[10]),
        )))
    }

    fn seq(words: &[String]) -> Result<u32, i32> {
        seq_or_err(words[0].parse().expect("a code"))
    }
}

impl Drop for ProcDevice {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Device for ProcDevice {
    fn append(&mut self, topic: Topic<'_>, payload: &[u8], rand: u32) -> Result<u32, i32> {
        let line = match topic {
            Topic::Index(i) => format!("append {i} {} {rand}", hex(payload)),
            Topic::Name(n) => format!("appendn {} {} {rand}", hex(n), hex(payload)),
        };
        ProcDevice::seq(&self.call(&line))
    }

    fn subscribe(&mut self, topic: Topic<'_>, from: u64, rand: u32) -> Result<u32, i32> {
        let line = match topic {
            Topic::Index(i) => format!("sub {i} {from} {rand}"),
            Topic::Name(n) => format!("subn {} {from} {rand}", hex(n)),
        };
        ProcDevice::seq(&self.call(&line))
    }

    fn offload(&mut self, handler: &[u8], payload: &[u8], rand: u32) -> Result<u32, i32> {
        let line = format!("off {} {} {rand}", hex(handler), hex(payload));
        ProcDevice::seq(&self.call(&line))
    }

    fn poll_transmit(&mut self, now: u64, cap: usize) -> Result<Option<Vec<u8>>, i32> {
        let w = self.call(&format!("tx {now} {cap}"));
        match w[0].parse::<i32>().expect("a code") {
            0 => Ok(None),
            n if n > 0 => Ok(Some(unhex(&w[1]))),
            e => Err(e),
        }
    }

    fn handle_input(&mut self, now: u64, frame: &[u8]) -> Result<Option<Ev>, i32> {
        let w = self.call(&format!("rx {now} {}", hex(frame)));
        ProcDevice::event(&w)
    }

    fn poll_event(&mut self, now: u64) -> Option<Ev> {
        let w = self.call(&format!("ev {now}"));
        ProcDevice::event(&w).expect("poll_event does not fail")
    }

    fn reconnect(&mut self, now: u64) {
        self.call(&format!("reconnect {now}"));
    }

    /// Ends the process and checks it exited cleanly (a sanitizer report
    /// makes it exit non-zero).
    fn close(&mut self) {
        if self.stdin.take().is_some() {
            let status = self.child.wait().expect("waiting for the harness");
            assert!(status.success(), "the harness exited with {status}");
        }
    }

    fn state(&mut self) -> State {
        let t = self.call("timeout");
        let w = self.call("state");
        let n = |i: usize| w[i].parse::<u64>().expect("a number");
        let connected = n(0) != 0;
        State {
            connected,
            session_id: connected.then_some(n(1) as u32),
            hello_attempt: n(16) as u32,
            outbox_len: n(2) as usize,
            retransmit_timeout_ms: n(3),
            poll_timeout: t[0].parse().expect("a time"),
            stats: Stats {
                sent: n(4) as u32,
                retransmitted: n(5) as u32,
                acked: n(6) as u32,
                rejected: n(7) as u32,
                gave_up: n(8) as u32,
                delivered: n(9) as u32,
                stale_answers: n(10) as u32,
            },
            drops: Drops {
                malformed: n(11) as u32,
                forged: n(12) as u32,
                replayed: n(13) as u32,
                too_old: n(14) as u32,
                unexpected: n(15) as u32,
            },
        }
    }
}

/// Which implementation a [`Lockstep`] member is.
#[derive(Debug, Clone)]
pub enum Impl {
    Rust,
    C,
    /// The harness binary at this path.
    Proc(PathBuf),
}

impl Impl {
    pub fn start(&self, spec: &Spec, now: u64, rand: u32) -> Result<Box<dyn Device>, i32> {
        Ok(match self {
            Impl::Rust => Box::new(RustDevice::new(spec, now, rand)?),
            Impl::C => Box::new(CDevice::new(spec, now, rand)?),
            Impl::Proc(path) => Box::new(ProcDevice::new(path, spec, now, rand)?),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Impl::Rust => "rust",
            Impl::C => "c",
            Impl::Proc(_) => "c (own process)",
        }
    }
}

/// Several devices driven by the same calls; every call's answer, and the
/// [`State`] after it, must be the same for all (the first's is returned).
pub struct Lockstep {
    devs: Vec<(&'static str, Box<dyn Device>)>,
    /// Calls so far (named in a mismatch).
    pub calls: u64,
    /// Frames compared so far.
    pub frames: u64,
}

impl Lockstep {
    /// Starts one device of each implementation. Panics unless they all
    /// start, or all refuse with the same error (returned).
    pub fn start(impls: &[Impl], spec: &Spec, now: u64, rand: u32) -> Result<Lockstep, i32> {
        let results: Vec<_> = impls.iter().map(|i| i.start(spec, now, rand)).collect();
        let codes: Vec<_> = results.iter().map(|r| r.as_ref().err().copied()).collect();
        assert!(
            codes.windows(2).all(|w| w[0] == w[1]),
            "start: {codes:?} for {spec:?}"
        );
        if let Some(e) = codes[0] {
            return Err(e);
        }
        let devs = impls
            .iter()
            .zip(results)
            .map(|(i, r)| (i.name(), r.unwrap_or_else(|_| unreachable!())))
            .collect();
        let mut l = Lockstep {
            devs,
            calls: 0,
            frames: 0,
        };
        l.check_state("start");
        Ok(l)
    }

    fn all<T: Debug + PartialEq>(
        &mut self,
        what: &dyn Fn() -> String,
        mut f: impl FnMut(&mut dyn Device) -> T,
    ) -> T {
        self.calls += 1;
        let mut results: Vec<T> = self.devs.iter_mut().map(|(_, d)| f(d.as_mut())).collect();
        for i in 1..results.len() {
            assert_eq!(
                results[0],
                results[i],
                "call {} ({}): {} and {} differ",
                self.calls,
                what(),
                self.devs[0].0,
                self.devs[i].0
            );
        }
        self.check_state(&what());
        results.swap_remove(0)
    }

    fn check_state(&mut self, what: &str) {
        let states: Vec<State> = self.devs.iter_mut().map(|(_, d)| d.state()).collect();
        for i in 1..states.len() {
            assert_eq!(
                states[0], states[i],
                "after call {} ({what}): {} and {} states differ",
                self.calls, self.devs[0].0, self.devs[i].0
            );
        }
    }

    /// The shared state (the same for all).
    pub fn state(&mut self) -> State {
        self.devs[0].1.state()
    }

    /// Ends the members that run in processes, checking they exit cleanly.
    pub fn finish(mut self) {
        for (_, d) in &mut self.devs {
            d.close();
        }
    }

    /// Sends everything due at `now` into a buffer of `cap` bytes: the
    /// frames, all the same for every member.
    pub fn transmit_all(&mut self, now: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = self.poll_transmit(now, 1024).expect("poll_transmit") {
            out.push(f);
        }
        out
    }

    pub fn events(&mut self, now: u64) -> Vec<Ev> {
        let mut out = Vec::new();
        while let Some(e) = self.poll_event(now) {
            out.push(e);
        }
        out
    }
}

impl Device for Lockstep {
    fn append(&mut self, topic: Topic<'_>, payload: &[u8], rand: u32) -> Result<u32, i32> {
        self.all(
            &|| format!("append {topic:?} {} bytes", payload.len()),
            |d| d.append(topic, payload, rand),
        )
    }

    fn subscribe(&mut self, topic: Topic<'_>, from: u64, rand: u32) -> Result<u32, i32> {
        self.all(&|| format!("subscribe {topic:?} {from}"), |d| {
            d.subscribe(topic, from, rand)
        })
    }

    fn offload(&mut self, handler: &[u8], payload: &[u8], rand: u32) -> Result<u32, i32> {
        self.all(&|| format!("offload {handler:?}"), |d| {
            d.offload(handler, payload, rand)
        })
    }

    fn poll_transmit(&mut self, now: u64, cap: usize) -> Result<Option<Vec<u8>>, i32> {
        let r = self.all(&|| format!("poll_transmit at {now}, {cap} bytes"), |d| {
            d.poll_transmit(now, cap)
        });
        if let Ok(Some(_)) = r {
            self.frames += 1;
        }
        r
    }

    fn handle_input(&mut self, now: u64, frame: &[u8]) -> Result<Option<Ev>, i32> {
        self.all(&|| format!("handle_input at {now}: {}", hex(frame)), |d| {
            d.handle_input(now, frame)
        })
    }

    fn poll_event(&mut self, now: u64) -> Option<Ev> {
        self.all(&|| format!("poll_event at {now}"), |d| d.poll_event(now))
    }

    fn reconnect(&mut self, now: u64) {
        self.all(&|| format!("reconnect at {now}"), |d| d.reconnect(now))
    }

    fn state(&mut self) -> State {
        Lockstep::state(self)
    }
}

/// A frame from the gateway to the device: `msg` emitted at `seq` and
/// sealed as the gateway seals it.
pub fn down(
    key: &[u8; KEY_LEN],
    boot_id: u64,
    session_id: u32,
    seq: u32,
    msg: &Message,
) -> Vec<u8> {
    let mut buf = vec![0u8; msg.buffer_len(seq)];
    let len = msg.emit(seq, &mut buf).expect("a valid message");
    buf.truncate(len);
    seal_down(key, boot_id, session_id, &mut buf);
    buf
}

/// The gateway's answer to the hello with attempt number `attempt` (which
/// it names), sealed as the gateway seals it: under that attempt's nonce.
pub fn hello_ack(
    key: &[u8; KEY_LEN],
    boot_id: u64,
    session_id: u32,
    window: u8,
    attempt: u32,
) -> Vec<u8> {
    let ack = Message::HelloAck(HelloAck {
        session_id,
        window,
        attempt,
    });
    down(key, boot_id, attempt, 0, &ack)
}

/// A frame from the gateway with any body bytes (valid or not), sealed:
/// authentic, so only the parser stands between it and the session.
pub fn down_raw(
    key: &[u8; KEY_LEN],
    boot_id: u64,
    session_id: u32,
    ty: Type,
    seq: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut buf = vec![(VERSION << 4) | ty as u8];
    let mut s = seq;
    loop {
        let b = (s & 0x7f) as u8;
        s >>= 7;
        if s == 0 {
            buf.push(b);
            break;
        }
        buf.push(b | 0x80);
    }
    buf.extend_from_slice(body);
    buf.extend_from_slice(&[0; TAG_LEN]);
    seal_down(key, boot_id, session_id, &mut buf);
    buf
}

fn seal_down(key: &[u8; KEY_LEN], boot_id: u64, session_id: u32, frame: &mut [u8]) {
    let ctx = Context {
        boot_id,
        session_id,
        direction: Direction::Down,
    };
    Cipher::new(key).seal(frame, &ctx).expect("sealable");
}

/// splitmix64: small, seedable, enough to shake a protocol.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// The C compiler the tests use for their own builds: `$CC`, else `cc`.
pub fn c_compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// The C sources, by path relative to this crate: `../c/...`.
pub fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../c")
}

/// Compiles `sources` into the program `out` with the strict flags and
/// `extra`; the compiler's complaint on failure.
pub fn compile(out: &Path, sources: &[PathBuf], extra: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(c_compiler());
    cmd.args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(c_dir())
        .args(extra)
        .args(sources)
        .arg("-o")
        .arg(out);
    let output = cmd
        .output()
        .map_err(|e| format!("running {}: {e}", c_compiler()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed:\n{}",
            cmd,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Whether the compiler builds and runs a program with
/// `-fsanitize=address,undefined` here.
pub fn sanitizers_work(dir: &Path) -> bool {
    let src = dir.join("sanitizer-probe.c");
    let bin = dir.join("sanitizer-probe");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    compile(&bin, &[src], &["-fsanitize=address,undefined"]).is_ok()
        && Command::new(&bin).status().is_ok_and(|s| s.success())
}

/// Builds `c/harness.c` with the C core into `dir`: with AddressSanitizer
/// and UndefinedBehaviorSanitizer (aborting on the first report) when they
/// work here, else with the strict warnings only. Returns the binary and
/// whether it is sanitized.
pub fn build_harness(dir: &Path) -> (PathBuf, bool) {
    build_harness_with(dir, &C_SIZE_DEFINES)
}

/// [`build_harness`] with other `-D` flags (`&[]`: the header's defaults).
pub fn build_harness_with(dir: &Path, defines: &[&str]) -> (PathBuf, bool) {
    std::fs::create_dir_all(dir).expect("a build directory");
    let sanitized = sanitizers_work(dir);
    let bin = dir.join(if sanitized { "harness-asan" } else { "harness" });
    let sources = [
        c_dir().join("woof_bridge.c"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("c/harness.c"),
    ];
    let mut flags = vec!["-g", "-O1"];
    flags.extend(defines);
    if sanitized {
        flags.extend([
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ]);
    }
    if let Err(e) = compile(&bin, &sources, &flags) {
        panic!("building the harness: {e}");
    }
    (bin, sanitized)
}

/// SLIP framing (`stream.rs`; `woof_slip_encode` and `woof_deframer`),
/// whichever the language.
pub trait Framer {
    /// `encode` into a buffer of `cap` bytes: what it wrote, or `None`.
    fn encode(&mut self, frame: &[u8], cap: usize) -> Option<Vec<u8>>;
    /// Starts a new deframer.
    fn reset_deframer(&mut self);
    /// Feeds `input` to the deframer (`by_byte`: one byte at a time, in C
    /// by `woof_deframer_push`): the frames handed out, in order (their
    /// number checked against what `feed` returned), and `dropped()` after.
    fn feed(&mut self, input: &[u8], by_byte: bool) -> (Vec<Vec<u8>>, u32);
}

/// The local-or-offloaded chooser (`offload.rs`; `woof_chooser`),
/// whichever the language.
pub trait Choose {
    fn reset_chooser(&mut self);
    fn pick(&mut self) -> Side;
    fn record(&mut self, side: Side, elapsed: u64);
    fn remote_failed(&mut self);
    fn measured(&mut self) -> (Option<u64>, Option<u64>);
}

/// The Rust core's deframer with a buffer of `B` bytes, and its encoder.
pub struct RustFramer<const B: usize>(pub Deframer<B>);

impl<const B: usize> RustFramer<B> {
    pub fn new() -> RustFramer<B> {
        RustFramer(Deframer::new())
    }
}

impl<const B: usize> Default for RustFramer<B> {
    fn default() -> Self {
        RustFramer::new()
    }
}

impl<const B: usize> Framer for RustFramer<B> {
    fn encode(&mut self, frame: &[u8], cap: usize) -> Option<Vec<u8>> {
        let mut out = vec![0u8; cap];
        stream::encode(frame, &mut out).map(|n| out[..n].to_vec())
    }

    fn reset_deframer(&mut self) {
        self.0 = Deframer::new();
    }

    fn feed(&mut self, input: &[u8], by_byte: bool) -> (Vec<Vec<u8>>, u32) {
        let mut frames = Vec::new();
        let parts: Vec<&[u8]> = if by_byte {
            input.chunks(1).collect()
        } else {
            vec![input]
        };
        for part in parts {
            let before = frames.len();
            let n = self.0.feed(part, |f| frames.push(f.to_vec()));
            assert_eq!(n, frames.len() - before, "feed's count");
        }
        (frames, self.0.dropped())
    }
}

/// The C core's encoder and deframer, linked in (`WOOF_DEFRAME_MAX` is
/// [`DEFRAME_MAX`]).
pub struct CFramer(Box<ffi::Deframer>);

impl CFramer {
    pub fn new() -> CFramer {
        // SAFETY: no arguments, no state.
        let size = unsafe { ffi::woof_deframer_size() };
        assert_eq!(
            size,
            std::mem::size_of::<ffi::Deframer>(),
            "woof_deframer as compiled is not the one mirrored here"
        );
        let mut d = Box::new(ffi::Deframer {
            len: 7,
            dropped: 7,
            escaped: 7,
            skipping: 7,
            buf: [7; DEFRAME_MAX],
        });
        // SAFETY: d is a woof_deframer (the size checked above).
        unsafe { ffi::woof_deframer_init(&mut *d) };
        CFramer(d)
    }
}

impl Default for CFramer {
    fn default() -> Self {
        CFramer::new()
    }
}

/// `woof_frame_fn` collecting into the `Vec<Vec<u8>>` at `ctx`; then it
/// scribbles over the frame, which the deframer must not read again.
unsafe extern "C" fn collect_frame(ctx: *mut c_void, frame: *mut u8, len: usize) {
    // SAFETY: ctx is the &mut Vec<Vec<u8>> CFramer::feed passes; frame
    // holds len bytes, ours to change until we return.
    unsafe {
        let frames = &mut *(ctx as *mut Vec<Vec<u8>>);
        frames.push(std::slice::from_raw_parts(frame, len).to_vec());
        std::ptr::write_bytes(frame, stream::END, len);
    }
}

impl Framer for CFramer {
    fn encode(&mut self, frame: &[u8], cap: usize) -> Option<Vec<u8>> {
        let mut out = vec![0u8; cap];
        // SAFETY: frame holds frame.len() bytes, out cap.
        let rc =
            unsafe { ffi::woof_slip_encode(nonnull(frame), frame.len(), out.as_mut_ptr(), cap) };
        match rc {
            n if n > 0 => {
                assert!(n as usize <= cap, "C wrote {n} bytes into {cap}");
                out.truncate(n as usize);
                Some(out)
            }
            -14 => None,
            r => panic!("woof_slip_encode returned {r}"),
        }
    }

    fn reset_deframer(&mut self) {
        // SAFETY: a woof_deframer.
        unsafe { ffi::woof_deframer_init(&mut *self.0) };
    }

    fn feed(&mut self, input: &[u8], by_byte: bool) -> (Vec<Vec<u8>>, u32) {
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let d: &mut ffi::Deframer = &mut self.0;
        if by_byte {
            for &b in input {
                // SAFETY: a woof_deframer.
                let n = unsafe { ffi::woof_deframer_push(d, b) };
                if n > 0 {
                    assert!(n <= DEFRAME_MAX, "a frame of {n} bytes");
                    frames.push(d.buf[..n].to_vec());
                    // Ours to change until the next push.
                    d.buf[..n].fill(stream::END);
                }
            }
        } else {
            // SAFETY: input holds its length; the callback gets frames as
            // ctx, which outlives the call.
            let n = unsafe {
                ffi::woof_deframer_feed(
                    d,
                    nonnull(input),
                    input.len(),
                    Some(collect_frame),
                    (&mut frames as *mut Vec<Vec<u8>>).cast(),
                )
            };
            assert_eq!(n, frames.len(), "woof_deframer_feed's count");
        }
        // SAFETY: a woof_deframer.
        (frames, unsafe { ffi::woof_deframer_dropped(d) })
    }
}

/// The Rust core's chooser.
#[derive(Default)]
pub struct RustChooser(pub Chooser);

impl Choose for RustChooser {
    fn reset_chooser(&mut self) {
        self.0 = Chooser::new();
    }

    fn pick(&mut self) -> Side {
        self.0.pick()
    }

    fn record(&mut self, side: Side, elapsed: u64) {
        self.0.record(side, elapsed);
    }

    fn remote_failed(&mut self) {
        self.0.remote_failed();
    }

    fn measured(&mut self) -> (Option<u64>, Option<u64>) {
        self.0.measured()
    }
}

fn side_of(code: i32) -> Side {
    match code {
        0 => Side::Local,
        1 => Side::Remote,
        s => panic!("C picked side {s}"),
    }
}

fn side_code(side: Side) -> i32 {
    match side {
        Side::Local => 0,
        Side::Remote => 1,
    }
}

/// The C core's chooser, linked in.
pub struct CChooser(Box<ffi::Chooser>);

impl CChooser {
    pub fn new() -> CChooser {
        // SAFETY: no arguments, no state.
        let size = unsafe { ffi::woof_chooser_size() };
        assert_eq!(
            size,
            std::mem::size_of::<ffi::Chooser>(),
            "woof_chooser as compiled is not the one mirrored here"
        );
        let mut c = Box::new(ffi::Chooser {
            local_time: [7; 2],
            remote_time: [7; 2],
            since_reset: 7,
            measured: 7,
            held: 7,
        });
        // SAFETY: c is a woof_chooser (the size checked above).
        unsafe { ffi::woof_chooser_init(&mut *c) };
        CChooser(c)
    }

    /// What `woof_chooser_measured` returns and writes, with outputs that
    /// start as `start`: (bits, local, remote).
    pub fn measured_raw(&self, start: u64) -> (u32, u64, u64) {
        let (mut l, mut r) = (start, start);
        // SAFETY: a woof_chooser; the outputs are valid.
        let bits = unsafe { ffi::woof_chooser_measured(&*self.0, &mut l, &mut r) };
        (bits, l, r)
    }

    /// `woof_chooser_record` with any side code.
    pub fn record_code(&mut self, side: i32, elapsed: u64) {
        // SAFETY: a woof_chooser.
        unsafe { ffi::woof_chooser_record(&mut *self.0, side, elapsed) }
    }
}

impl Default for CChooser {
    fn default() -> Self {
        CChooser::new()
    }
}

impl Choose for CChooser {
    fn reset_chooser(&mut self) {
        // SAFETY: a woof_chooser.
        unsafe { ffi::woof_chooser_init(&mut *self.0) }
    }

    fn pick(&mut self) -> Side {
        // SAFETY: a woof_chooser.
        side_of(unsafe { ffi::woof_chooser_pick(&mut *self.0) })
    }

    fn record(&mut self, side: Side, elapsed: u64) {
        self.record_code(side_code(side), elapsed);
    }

    fn remote_failed(&mut self) {
        // SAFETY: a woof_chooser.
        unsafe { ffi::woof_chooser_remote_failed(&mut *self.0) }
    }

    fn measured(&mut self) -> (Option<u64>, Option<u64>) {
        let (bits, l, r) = self.measured_raw(0);
        assert_eq!(bits & !3, 0, "woof_chooser_measured returned {bits}");
        ((bits & 1 != 0).then_some(l), (bits & 2 != 0).then_some(r))
    }
}

impl Framer for ProcDevice {
    fn encode(&mut self, frame: &[u8], cap: usize) -> Option<Vec<u8>> {
        let w = self.call(&format!("slip {} {cap}", hex(frame)));
        match w[0].parse::<i32>().expect("a code") {
            n if n > 0 => {
                let out = unhex(&w[1]);
                assert_eq!(out.len(), n as usize, "the harness's encoding");
                Some(out)
            }
            -14 => None,
            r => panic!("woof_slip_encode returned {r}"),
        }
    }

    fn reset_deframer(&mut self) {
        self.call("dinit");
    }

    fn feed(&mut self, input: &[u8], by_byte: bool) -> (Vec<Vec<u8>>, u32) {
        let w = self.call(&format!("dfeed {} {}", u8::from(by_byte), hex(input)));
        let semi = w
            .iter()
            .position(|x| x == ";")
            .expect("frames ; count dropped");
        let frames: Vec<Vec<u8>> = w[..semi].iter().map(|f| unhex(f)).collect();
        let count: usize = w[semi + 1].parse().expect("a count");
        assert_eq!(count, frames.len(), "the harness's count");
        (frames, w[semi + 2].parse().expect("a count"))
    }
}

impl Choose for ProcDevice {
    fn reset_chooser(&mut self) {
        self.call("cinit");
    }

    fn pick(&mut self) -> Side {
        side_of(self.call("cpick")[0].parse().expect("a side"))
    }

    fn record(&mut self, side: Side, elapsed: u64) {
        self.call(&format!("crec {} {elapsed}", side_code(side)));
    }

    fn remote_failed(&mut self) {
        self.call("cfail");
    }

    fn measured(&mut self) -> (Option<u64>, Option<u64>) {
        let w = self.call("cmeas");
        let time = |x: &str| (x != "-").then(|| x.parse().expect("a time"));
        (time(&w[1]), time(&w[2]))
    }
}
