//! Sealing and opening frames in place with Ascon-AEAD128, the replay
//! window, and the counts of dropped frames.
//!
//! The nonce is never sent: both ends derive it from what they already
//! share, as 16 bytes
//!
//! ```text
//!   boot_id (u64 LE) | session_id (u32 LE) | seq (u32 LE, bit 31 = direction)
//! ```
//!
//! `boot_id` is new at every device boot, `session_id` new at every hello
//! the gateway answers, and `seq` grows by one with every frame a side
//! sends (at most [`SEQ_MAX`], 28 bits, so bit 31 is free for the
//! direction). The hello and its answer are `seq` 0, which no other frame
//! is, and carry the hello's attempt number (the device's count of hellos
//! in this boot) where the session id goes. So a key never sees the same
//! nonce twice for two different frames (but for two gateways answering one
//! hello differently, which only a replayed hello brings about: those
//! answers are MACs over cleartext, see `wire::HelloAck`). A retransmission is the same frame: the same
//! bytes under the same nonce, which reveals nothing new.
//!
//! The associated data is the header (version, type, sequence number); for
//! [`Type::Hello`] and [`Type::HelloAck`], whose bodies travel in the clear,
//! it is the header and the body, and the tag is a MAC over both.

use ascon_aead::AsconAead128;
use ascon_aead::aead::array::Array;
use ascon_aead::aead::{AeadInOut, KeyInit};

use crate::wire::{Frame, SEQ_MAX, TAG_LEN, Type};
use crate::{Error, Result};

/// Length of a device's pre-shared key.
pub const KEY_LEN: usize = 16;
/// How many sequence numbers behind the newest the replay window remembers.
pub const REPLAY_WINDOW: u32 = 64;

/// Which way a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device to gateway.
    Up,
    /// Gateway to device.
    Down,
}

/// What, besides the key, makes a nonce unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub boot_id: u64,
    /// 0 for the handshake frames.
    pub session_id: u32,
    pub direction: Direction,
}

impl Context {
    /// The 16-byte nonce for the frame with this sequence number.
    pub fn nonce(&self, seq: u32) -> [u8; 16] {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.boot_id.to_le_bytes());
        n[8..12].copy_from_slice(&self.session_id.to_le_bytes());
        let dir = match self.direction {
            Direction::Up => 0,
            Direction::Down => 1 << 31,
        };
        n[12..].copy_from_slice(&((seq & SEQ_MAX) | dir).to_le_bytes());
        n
    }
}

/// A device's key, ready to seal and open frames.
pub struct Cipher {
    aead: AsconAead128,
}

impl Cipher {
    pub fn new(key: &[u8; KEY_LEN]) -> Cipher {
        Cipher {
            aead: AsconAead128::new(&Array::from(*key)),
        }
    }

    /// Encrypts the body of an emitted frame in place and writes its tag.
    pub fn seal(&self, frame: &mut [u8], ctx: &Context) -> Result<()> {
        let (ty, seq, hl) = header(frame)?;
        let nonce = Array::from(ctx.nonce(seq));
        let body_end = frame.len() - TAG_LEN;
        let tag = if ty.is_encrypted() {
            let (head, rest) = frame.split_at_mut(hl);
            let body = &mut rest[..body_end - hl];
            self.aead
                .encrypt_inout_detached(&nonce, head, body.into())
                .map_err(|_| Error::TooLong)?
        } else {
            self.aead
                .encrypt_inout_detached(&nonce, &frame[..body_end], (&mut [][..]).into())
                .map_err(|_| Error::TooLong)?
        };
        frame[body_end..].copy_from_slice(&tag);
        Ok(())
    }

    /// A key for device `device_id` derived from this (fleet) key: the
    /// Ascon-AEAD128 tag over the id as associated data, with an all-zero
    /// nonce reserved for this and an empty message (a MAC of the id, so
    /// one fleet key provisions many devices, each with its own key).
    pub fn derive_key(&self, device_id: &[u8]) -> [u8; KEY_LEN] {
        let nonce = Array::from([0u8; 16]);
        let tag = self
            .aead
            .encrypt_inout_detached(&nonce, device_id, (&mut [][..]).into())
            .expect("an empty message always fits");
        let mut key = [0; KEY_LEN];
        key.copy_from_slice(&tag);
        key
    }

    /// Checks a frame's tag and decrypts its body in place. On failure the
    /// body may be garbled; the frame is to be dropped.
    pub fn open(&self, frame: &mut [u8], ctx: &Context) -> Result<()> {
        let (ty, seq, hl) = header(frame)?;
        let nonce = Array::from(ctx.nonce(seq));
        let body_end = frame.len() - TAG_LEN;
        let (msg, tag) = frame.split_at_mut(body_end);
        let tag = Array::try_from(&tag[..]).map_err(|_| Error::Truncated)?;
        let ok = if ty.is_encrypted() {
            let (head, body) = msg.split_at_mut(hl);
            self.aead
                .decrypt_inout_detached(&nonce, head, body.into(), &tag)
                .is_ok()
        } else {
            self.aead
                .decrypt_inout_detached(&nonce, msg, (&mut [][..]).into(), &tag)
                .is_ok()
        };
        if ok { Ok(()) } else { Err(Error::Forged) }
    }
}

/// Type, sequence number and header length of a frame, checked.
fn header(frame: &[u8]) -> Result<(Type, u32, usize)> {
    let f = Frame::new_checked(frame)?;
    let ty = f.frame_type().ok_or(Error::UnknownType)?;
    Ok((ty, f.seq(), f.header_len()))
}

/// Whether a sequence number is new to a [`ReplayWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen.
    Fresh,
    /// Seen already (a retransmission or a replay).
    Duplicate,
    /// More than [`REPLAY_WINDOW`] behind the newest: cannot tell.
    TooOld,
}

/// The last 64 sequence numbers received, as a bitmap (RFC 4303 §3.4.3,
/// RFC 6347 §4.1.2.6). Only frames that passed their tag may be recorded,
/// or a forger could slide the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The newest sequence number recorded.
    top: u32,
    /// Bit `i` is set when `top - i` has been recorded.
    seen: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// A window in which only sequence number 0 (the hello's) is taken.
    pub const fn new() -> ReplayWindow {
        ReplayWindow { top: 0, seen: 1 }
    }

    pub fn check(&self, seq: u32) -> Verdict {
        if seq > self.top {
            return Verdict::Fresh;
        }
        let behind = self.top - seq;
        if behind >= REPLAY_WINDOW {
            Verdict::TooOld
        } else if self.seen >> behind & 1 == 1 {
            Verdict::Duplicate
        } else {
            Verdict::Fresh
        }
    }

    /// Records `seq` as received.
    pub fn accept(&mut self, seq: u32) {
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = seq;
        } else if self.top - seq < REPLAY_WINDOW {
            self.seen |= 1 << (self.top - seq);
        }
    }

    pub fn top(&self) -> u32 {
        self.top
    }
}

/// Frames dropped, by reason. Counters saturate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Failed the header or body checks.
    pub malformed: u32,
    /// Failed the tag (wrong key, altered, or for another session).
    pub forged: u32,
    /// Authentic but already seen.
    pub replayed: u32,
    /// Authentic but too far behind to tell.
    pub too_old: u32,
    /// Authentic and well-formed, but not expected now (a type that goes the
    /// other way, an answer to nothing, a frame before the session).
    pub unexpected: u32,
}

impl Drops {
    /// Counts one dropped frame under the reason `err` gives.
    pub fn count(&mut self, err: Error) {
        let c = match err {
            Error::Forged => &mut self.forged,
            Error::Replayed => &mut self.replayed,
            Error::TooOld => &mut self.too_old,
            Error::Unexpected | Error::NotConnected => &mut self.unexpected,
            _ => &mut self.malformed,
        };
        *c = c.saturating_add(1);
    }

    pub fn total(&self) -> u32 {
        self.malformed
            .saturating_add(self.forged)
            .saturating_add(self.replayed)
            .saturating_add(self.too_old)
            .saturating_add(self.unexpected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::samples;
    use crate::wire::{FRAME_LEN_MAX, Message};

    const KEY: [u8; KEY_LEN] = *b"0123456789abcdef";
    const CTX: Context = Context {
        boot_id: 42,
        session_id: 7,
        direction: Direction::Up,
    };

    fn sealed(msg: &Message<'_>, seq: u32, buf: &mut [u8]) -> usize {
        let len = msg.emit(seq, buf).unwrap();
        Cipher::new(&KEY).seal(&mut buf[..len], &CTX).unwrap();
        len
    }

    #[test]
    fn derived_keys_differ_per_device_and_per_fleet_key() {
        let fleet = Cipher::new(&KEY);
        let a = fleet.derive_key(b"probe-1");
        assert_eq!(a, fleet.derive_key(b"probe-1"));
        assert_ne!(a, fleet.derive_key(b"probe-2"));
        assert_ne!(a, Cipher::new(&[7; KEY_LEN]).derive_key(b"probe-1"));
        assert_ne!(a, KEY);
    }

    #[test]
    fn seal_then_open_gives_back_every_message() {
        for msg in samples() {
            let mut buf = [0u8; FRAME_LEN_MAX];
            let len = sealed(&msg, 77, &mut buf);
            let frame = Frame::new_checked(&buf[..len]).unwrap();
            if msg.frame_type().is_encrypted() && msg.body_len() > 0 {
                assert_ne!(Message::parse(&frame).ok(), Some(msg), "body left in clear");
            }
            Cipher::new(&KEY).open(&mut buf[..len], &CTX).unwrap();
            assert_eq!(
                Message::parse(&Frame::new_checked(&buf[..len]).unwrap()).unwrap(),
                msg
            );
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_rejected() {
        let cipher = Cipher::new(&KEY);
        for msg in samples() {
            let mut buf = [0u8; FRAME_LEN_MAX];
            let len = sealed(&msg, 300, &mut buf);
            for bit in 0..len * 8 {
                let mut b = buf;
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    cipher.open(&mut b[..len], &CTX).is_err(),
                    "{msg:?} bit {bit}"
                );
            }
            for cut in 0..len {
                let mut b = buf;
                assert!(
                    cipher.open(&mut b[..cut], &CTX).is_err(),
                    "{msg:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn wrong_key_or_context_is_forged() {
        let mut buf = [0u8; 64];
        let len = sealed(&Message::Ping, 9, &mut buf);
        let other = Cipher::new(b"fedcba9876543210");
        assert_eq!(other.open(&mut { buf }[..len], &CTX), Err(Error::Forged));
        for ctx in [
            Context { boot_id: 43, ..CTX },
            Context {
                session_id: 8,
                ..CTX
            },
            Context {
                direction: Direction::Down,
                ..CTX
            },
        ] {
            let mut b = buf;
            assert_eq!(
                Cipher::new(&KEY).open(&mut b[..len], &ctx),
                Err(Error::Forged)
            );
        }
    }

    #[test]
    fn nonces_differ_by_every_input() {
        let n = CTX.nonce(1);
        assert_ne!(n, CTX.nonce(2));
        assert_ne!(n, Context { boot_id: 1, ..CTX }.nonce(1));
        assert_ne!(
            n,
            Context {
                session_id: 1,
                ..CTX
            }
            .nonce(1)
        );
        assert_ne!(
            n,
            Context {
                direction: Direction::Down,
                ..CTX
            }
            .nonce(1)
        );
        assert_ne!(CTX.nonce(0), CTX.nonce(SEQ_MAX));
    }

    #[test]
    fn replay_window_accepts_each_number_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(0), Verdict::Duplicate);
        for s in [1, 3, 2, 10, 5] {
            assert_eq!(w.check(s), Verdict::Fresh);
            w.accept(s);
            assert_eq!(w.check(s), Verdict::Duplicate);
        }
        assert_eq!(w.check(4), Verdict::Fresh);
        w.accept(100);
        assert_eq!(w.check(36), Verdict::TooOld);
        assert_eq!(w.check(37), Verdict::Fresh);
        assert_eq!(w.check(100), Verdict::Duplicate);
        w.accept(37);
        assert_eq!(w.check(37), Verdict::Duplicate);
        // A jump past the whole window forgets everything behind it.
        w.accept(100 + 1000);
        assert_eq!(w.check(1099), Verdict::Fresh);
        assert_eq!(w.check(1037), Verdict::Fresh);
        assert_eq!(w.check(1036), Verdict::TooOld);
        w.accept(SEQ_MAX);
        assert_eq!(w.check(SEQ_MAX), Verdict::Duplicate);
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let mut d = Drops::default();
        d.count(Error::Forged);
        d.count(Error::Replayed);
        d.count(Error::TooOld);
        d.count(Error::Truncated);
        d.count(Error::Unexpected);
        assert_eq!(
            d,
            Drops {
                malformed: 1,
                forged: 1,
                replayed: 1,
                too_old: 1,
                unexpected: 1
            }
        );
        assert_eq!(d.total(), 5);
    }
}
