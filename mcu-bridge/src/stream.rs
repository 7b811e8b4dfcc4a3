//! Frames over a byte stream (TCP, a serial line), with SLIP (RFC 1055)
//! framing.
//!
//! A datagram carries one frame; a stream has no boundaries, and a serial
//! line adds noise, drops bytes and may be joined mid-frame. So each frame
//! goes between two `END` bytes (0xC0), with `END` and `ESC` (0xDB) inside
//! it escaped as `ESC 0xDC` and `ESC 0xDD`. A receiver that starts in the
//! middle, or sees garbage, loses at most the frame it is in: the next
//! `END` starts afresh, and a damaged frame fails its tag anyway. The cost
//! is two bytes a frame plus one per escaped byte (on average 2 in 256 for
//! the sealed, random-looking bodies).
//!
//! [`encode`] writes a frame; a [`Deframer`] with a buffer of `B` bytes
//! takes bytes as they come and hands out whole frames. Neither allocates.

/// Ends (and starts) a frame.
pub const END: u8 = 0xC0;
/// Starts an escape.
pub const ESC: u8 = 0xDB;
/// `ESC ESC_END` stands for a 0xC0 in the frame...
pub const ESC_END: u8 = 0xDC;
/// ...and `ESC ESC_ESC` for a 0xDB.
pub const ESC_ESC: u8 = 0xDD;

/// The most bytes [`encode`] writes for a frame of `len` bytes.
pub const fn encoded_len_max(len: usize) -> usize {
    2 * len + 2
}

/// Writes `frame` into `out` with its delimiters; the length written, or
/// `None` if `out` is too short.
pub fn encode(frame: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    let mut put = |b: u8| {
        *out.get_mut(n)? = b;
        n += 1;
        Some(())
    };
    put(END)?;
    for &b in frame {
        match b {
            END => {
                put(ESC)?;
                put(ESC_END)?;
            }
            ESC => {
                put(ESC)?;
                put(ESC_ESC)?;
            }
            b => put(b)?,
        }
    }
    put(END)?;
    Some(n)
}

/// Collects whole frames from a byte stream, in a buffer of `B` bytes.
#[derive(Debug, Clone)]
pub struct Deframer<const B: usize> {
    buf: [u8; B],
    len: usize,
    escaped: bool,
    /// The frame being read is lost (too long, or a bad escape): skip to
    /// the next `END`.
    skipping: bool,
    dropped: u32,
}

impl<const B: usize> Default for Deframer<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const B: usize> Deframer<B> {
    pub const fn new() -> Self {
        Deframer {
            buf: [0; B],
            len: 0,
            escaped: false,
            skipping: false,
            dropped: 0,
        }
    }

    /// Frames lost to overlong runs and bad escapes so far.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Takes `input`, calling `on_frame` with each whole frame (which it may
    /// change in place, as opening a sealed frame does). Empty frames (two
    /// `END`s in a row, the resynchronisation a sender may start with) are
    /// skipped. Returns how many frames were handed out.
    pub fn feed(&mut self, input: &[u8], mut on_frame: impl FnMut(&mut [u8])) -> usize {
        let mut frames = 0;
        for &b in input {
            if b == END {
                if !self.skipping && !self.escaped && self.len > 0 {
                    on_frame(&mut self.buf[..self.len]);
                    frames += 1;
                } else if self.skipping || self.escaped {
                    self.dropped = self.dropped.saturating_add(1);
                }
                self.len = 0;
                self.escaped = false;
                self.skipping = false;
                continue;
            }
            if self.skipping {
                continue;
            }
            let byte = if self.escaped {
                self.escaped = false;
                match b {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    _ => {
                        self.skipping = true;
                        continue;
                    }
                }
            } else if b == ESC {
                self.escaped = true;
                continue;
            } else {
                b
            };
            match self.buf.get_mut(self.len) {
                Some(slot) => {
                    *slot = byte;
                    self.len += 1;
                }
                None => self.skipping = true,
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames<const B: usize>(d: &mut Deframer<B>, input: &[u8]) -> [[u8; 8]; 4] {
        let mut out = [[0u8; 8]; 4];
        let mut i = 0;
        d.feed(input, |f| {
            out[i][..f.len()].copy_from_slice(f);
            i += 1;
        });
        out
    }

    #[test]
    fn frames_with_every_special_byte_come_back_whole_across_any_split() {
        let frame = [1, END, 2, ESC, ESC_END, END, ESC];
        let mut wire = [0u8; encoded_len_max(7)];
        let n = encode(&frame, &mut wire).unwrap();
        assert_eq!(n, 2 + 7 + 4);
        for split in 0..=n {
            let mut d = Deframer::<16>::new();
            let mut got = [0u8; 7];
            let mut count = 0;
            for part in [&wire[..split], &wire[split..n]] {
                d.feed(part, |f| {
                    got.copy_from_slice(f);
                    count += 1;
                });
            }
            assert_eq!((count, got), (1, frame), "split at {split}");
        }
    }

    #[test]
    fn noise_an_overlong_run_and_a_bad_escape_lose_only_their_own_frame() {
        let mut d = Deframer::<4>::new();
        // Joined mid-frame: the bytes before the first END are one bad frame
        // at most, and a frame of four bytes fits exactly.
        let got = frames(&mut d, &[9, 9, END, 1, 2, 3, 4, END]);
        assert_eq!(got[0][..4], [9, 9, 0, 0], "noise before the first END");
        assert_eq!(got[1][..4], [1, 2, 3, 4]);
        // Five bytes do not fit: dropped, and the next frame is whole.
        let got = frames(&mut d, &[1, 2, 3, 4, 5, END, 7, END]);
        assert_eq!(got[0][..1], [7]);
        assert_eq!(d.dropped(), 1);
        // ESC followed by anything but ESC_END or ESC_ESC.
        let got = frames(&mut d, &[ESC, 1, 2, END, END, 8, END]);
        assert_eq!(got[0][..1], [8]);
        assert_eq!(d.dropped(), 2);
        // Too small an output buffer is refused, not overrun.
        assert_eq!(encode(&[END, END], &mut [0u8; 5]), None);
    }
}
