//! woof's bridge protocol for microcontrollers (placeholder doc, rewritten below).
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

pub mod crypto;
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
