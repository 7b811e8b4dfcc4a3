//! Fuzz targets for woof's bridge protocol (`woof-mcu-bridge`), one module
//! each, shared by the libFuzzer binaries in `fuzz_targets/` and by
//! `cargo test`, which replays the corpus through them (see README.md):
//!
//! - [`frame`]: the frame decoder on arbitrary bytes; every frame that
//!   parses is emitted again and must give back the same bytes.
//! - [`device`]: the device session fed a sequence of operations read from
//!   the bytes: raw datagrams, gateway frames sealed with the right key (so
//!   the parser and the state machine behind the tag are reached), replays,
//!   mutations, reflections, requests and time steps.
//! - [`gateway`]: the gateway's per-device session, the same way: hellos,
//!   requests sealed under the live or a pending session, replays, bursts,
//!   and the node's answers (commits, refusals, deliveries).
//!
//! Each target panics when an invariant breaks; libFuzzer reports the panic
//! as a crash and saves the input.

pub mod device;
pub mod frame;
pub mod gateway;
pub mod seeds;

use woof_mcu_bridge::crypto::{Cipher, Context};
use woof_mcu_bridge::wire::{Message, SEQ_MAX, TAG_LEN, Topic, VERSION};

/// Whether to print what the targets do (`FUZZ_TRACE=1`, for reading a
/// crash: `FUZZ_TRACE=1 target/<triple>/release/device artifacts/...`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some_and(|v| v != "0"))
}

/// Prints when [`tracing`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::tracing() {
            eprintln!($($arg)*);
        }
    };
}

/// Reads the fuzzer's bytes as a stream of small values. Past the end every
/// read gives zeros; [`Cursor::done`] says when the bytes are used up.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A length of at most `max`, then up to that many bytes (fewer at the
    /// end of the input).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u16()) % (max + 1);
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
}

/// Writes what a [`Cursor`] reads: the seeds of the corpus are built with it.
#[derive(Default)]
pub struct Builder(pub Vec<u8>);

impl Builder {
    pub fn u8(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// What [`Cursor::bytes`] reads back (the length is taken as is, so it
    /// must not exceed the reader's `max`).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u16(b.len() as u16);
        self.0.extend_from_slice(b);
        self
    }
}

/// Topic names the targets pick from (by a byte with the top bit set): valid
/// ones, the longest valid one, and ones the wire refuses.
pub const TOPIC_NAMES: [&[u8]; 6] = [
    b"farm/north/soil",
    b"cmd/valve",
    b"a",
    b"0123456789012345678901234567890123456789012345678901234567890123",
    b"Upper/case",
    b"",
];

/// A topic from one byte: below 0x80 an index, else a name from
/// [`TOPIC_NAMES`], or (0xff) an index the wire refuses.
pub fn topic(c: &mut Cursor<'_>) -> Topic<'static> {
    match c.u8() {
        b @ 0..=0x7f => Topic::Index(b),
        0xff => Topic::Index(0x80),
        b => Topic::Name(TOPIC_NAMES[usize::from(b) % TOPIC_NAMES.len()]),
    }
}

/// Handler names for offloads: valid, the longest valid, and refused ones.
pub const HANDLERS: [&[u8]; 4] = [b"fft", b"h.an_dl-er9", &[b'x'; 32], b"Bad!"];

/// A frame with this message at `seq`, sealed under `ctx` (`None` if the
/// message cannot be emitted: a field out of bounds, too long).
pub fn sealed(cipher: &Cipher, msg: &Message<'_>, seq: u32, ctx: &Context) -> Option<Vec<u8>> {
    let mut out = vec![0; msg.buffer_len(seq.min(SEQ_MAX))];
    let n = msg.emit(seq, &mut out).ok()?;
    out.truncate(n);
    cipher.seal(&mut out, ctx).ok()?;
    Some(out)
}

/// A frame of type number `ty` (0..=15, valid or not) at `seq` around an
/// arbitrary body, sealed under `ctx` when its header is valid: so a body
/// the parser refuses still carries a good tag.
pub fn sealed_raw(cipher: &Cipher, ty: u8, seq: u32, body: &[u8], ctx: &Context) -> Vec<u8> {
    let mut out = vec![(VERSION << 4) | (ty & 0x0f)];
    let mut v = seq & SEQ_MAX;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(body);
    out.extend_from_slice(&[0; TAG_LEN]);
    let _ = cipher.seal(&mut out, ctx);
    out
}

/// Replays every file of `dir` through `target`; returns how many ran.
pub fn replay_dir(dir: &std::path::Path, target: fn(&[u8])) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_file() {
            let data = std::fs::read(&path).expect("read corpus file");
            target(&data);
            n += 1;
        }
    }
    n
}
