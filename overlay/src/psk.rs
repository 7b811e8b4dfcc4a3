//! The cluster's private network: every connection between nodes is
//! encrypted with a key derived from the cluster key before anything else
//! runs on it, so a peer without the key sees random bytes and cannot even
//! start noise's handshake (libp2p's private network does the same with
//! XSalsa20; ADR 30).
//!
//! On a new connection each side sends a random 24-byte nonce, then
//! everything it writes is XORed with XChaCha20's keystream under the
//! derived key and its own nonce; what it reads, under the peer's nonce.
//! There is no integrity here: noise, inside, authenticates every byte and
//! the peers' identities. The key is SHA-256 of a fixed label and the
//! cluster key, so this cipher never shares a key with another use of it.
//! `chacha20` counts blocks in 32 bits, so one keystream covers at most
//! 256 GiB (an hour of a busy link); each direction starts a new one every
//! [`SEGMENT`] bytes, with the segment's number XORed into the nonce's last
//! 8 bytes (libp2p-pnet's XSalsa20 counted in 64 bits and never ran out).
//!
//! XChaCha20 runs on the processor's vector instructions (AVX2 where there
//! are any, detected at run time); libp2p's XSalsa20 ran in portable code
//! and took 14-17 % of all CPU in the replicated bulk benchmarks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use chacha20::XChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use sha2::{Digest, Sha256};

const NONCE: usize = 24;
/// Bytes one keystream covers before the next begins: a quarter of what
/// `chacha20`'s 32-bit block counter allows.
const SEGMENT: u64 = 64 << 30;
const _: () = assert!(SEGMENT <= (u32::MAX as u64) * 64);
/// The most bytes one write encrypts and holds before it is on its way.
const WRITE_CHUNK: usize = 64 << 10;
/// Keeps this cipher's key apart from any other use of the cluster key.
const LABEL: &[u8] = b"woof private network, XChaCha20, version 1";

/// The key the connections are encrypted with, from the cluster key.
pub(crate) fn derive(cluster_key: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(cluster_key);
    h.finalize().into()
}

/// Exchanges nonces on `socket` and returns it encrypted under `key`.
pub(crate) async fn handshake<S>(mut socket: S, key: [u8; 32]) -> io::Result<Encrypted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let local: [u8; NONCE] = rand::random();
    socket.write_all(&local).await?;
    socket.flush().await?;
    let mut remote = [0u8; NONCE];
    socket.read_exact(&mut remote).await?;
    Ok(Encrypted {
        inner: socket,
        read: Keystream::new(key, remote, SEGMENT),
        write: Keystream::new(key, local, SEGMENT),
        out: vec![0u8; WRITE_CHUNK].into_boxed_slice(),
        held: 0,
        sent: 0,
    })
}

/// A connection encrypted under the private network's key.
pub struct Encrypted<S> {
    inner: S,
    read: Keystream,
    write: Keystream,
    /// Encrypted bytes taken from the writer (`out[sent..held]`) and not
    /// yet on the socket: the keystream has moved past them, so they go
    /// before anything else.
    out: Box<[u8]>,
    held: usize,
    sent: usize,
}

/// One direction's keystream: XChaCha20 under the key and the direction's
/// nonce, begun afresh every `segment` bytes with the segment's number in
/// the nonce.
struct Keystream {
    key: [u8; 32],
    nonce: [u8; NONCE],
    segment: u64,
    cipher: XChaCha20,
    /// The segment now in use, and the bytes left in it.
    number: u64,
    left: u64,
}

impl Keystream {
    fn new(key: [u8; 32], nonce: [u8; NONCE], segment: u64) -> Self {
        Self {
            cipher: XChaCha20::new(&key.into(), &nonce.into()),
            key,
            nonce,
            segment,
            number: 0,
            left: segment,
        }
    }

    /// XORs the keystream into `out`: over `out` itself, or over `input`
    /// (the same length) written into `out`.
    fn apply(&mut self, out: &mut [u8], input: Option<&[u8]>) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.left == 0 {
                self.number += 1;
                let mut nonce = self.nonce;
                for (n, s) in nonce[NONCE - 8..].iter_mut().zip(self.number.to_le_bytes()) {
                    *n ^= s;
                }
                self.cipher = XChaCha20::new(&self.key.into(), &nonce.into());
                self.left = self.segment;
            }
            let n = (out.len() - done).min(usize::try_from(self.left).unwrap_or(usize::MAX));
            let part = &mut out[done..done + n];
            let applied = match input {
                Some(input) => self
                    .cipher
                    .apply_keystream_b2b(&input[done..done + n], part),
                None => self.cipher.try_apply_keystream(part),
            };
            applied.map_err(|e| io::Error::other(format!("private network keystream: {e}")))?;
            self.left -= n as u64;
            done += n;
        }
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> Encrypted<S> {
    /// Puts what is held on the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..self.held]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held = 0;
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Encrypted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read.apply(&mut buf[..n], None)?;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Encrypted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        let take = buf.len().min(WRITE_CHUNK);
        // Encrypted on the way into the buffer: no copy of its own.
        this.write
            .apply(&mut this.out[..take], Some(&buf[..take]))?;
        this.held = take;
        // Taken: on its way now if the socket has room, else at the next
        // write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    /// Reads from one buffer; takes at most `step` bytes a write, and
    /// every other write is not ready yet (as a busy socket).
    struct Socket {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
        step: usize,
        busy: bool,
    }

    fn socket(input: Vec<u8>, step: usize) -> Socket {
        Socket {
            input: Cursor::new(input),
            output: Vec::new(),
            step,
            busy: false,
        }
    }

    impl AsyncRead for Socket {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.busy = !self.busy;
            if self.busy {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.step);
            self.output.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What one side puts on the wire (its nonce, then the ciphertext)
    /// when it writes `chunks` through a socket taking `step` bytes a time.
    async fn written(key: [u8; 32], chunks: &[&[u8]], step: usize) -> Vec<u8> {
        let mut e = handshake(socket(vec![0u8; NONCE], step), key)
            .await
            .unwrap();
        for c in chunks {
            e.write_all(c).await.unwrap();
        }
        e.flush().await.unwrap();
        e.inner.output
    }

    /// What the other side reads from `wire`, `len` bytes.
    async fn read(key: [u8; 32], wire: Vec<u8>, len: usize) -> Vec<u8> {
        let mut e = handshake(socket(wire, 1 << 20), key).await.unwrap();
        let mut got = vec![0u8; len];
        e.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn the_peer_with_the_key_reads_what_was_written_and_no_other_does() {
        let key = derive(&[7u8; 32]);
        let big: Vec<u8> = (0..3 * WRITE_CHUNK + 17).map(|i| i as u8).collect();
        let plain: Vec<u8> = [b"hello".as_slice(), &big, b"!"].concat();
        for step in [7, 1000, 1 << 20] {
            let wire = written(key, &[b"hello", &big, b"!"], step).await;
            assert_eq!(wire.len(), NONCE + plain.len(), "step {step}");
            assert_ne!(&wire[NONCE..], &plain[..], "encrypted on the wire");
            assert_eq!(read(key, wire.clone(), plain.len()).await, plain);
            let other = read(derive(&[8u8; 32]), wire, plain.len()).await;
            assert_ne!(other, plain, "another key reads something else");
        }
    }

    #[tokio::test]
    async fn each_connection_has_its_own_keystream() {
        let key = derive(&[7u8; 32]);
        let a = written(key, &[b"the same bytes"], 1 << 20).await;
        let b = written(key, &[b"the same bytes"], 1 << 20).await;
        assert_ne!(a[..NONCE], b[..NONCE], "fresh nonces");
        assert_ne!(a[NONCE..], b[NONCE..], "so different ciphertexts");
    }

    #[test]
    fn a_keystream_begins_anew_each_segment_and_reads_back_across_them() {
        let (key, nonce) = (derive(&[7u8; 32]), [3u8; NONCE]);
        let plain: Vec<u8> = (0..1000).map(|i| (i * 7) as u8).collect();
        // Written in pieces that straddle the 100-byte segments...
        let mut w = Keystream::new(key, nonce, 100);
        let mut wire = vec![0u8; plain.len()];
        for (c, p) in wire.chunks_mut(37).zip(plain.chunks(37)) {
            w.apply(c, Some(p)).unwrap();
        }
        // ... read in other pieces.
        let mut r = Keystream::new(key, nonce, 100);
        for c in wire.chunks_mut(230) {
            r.apply(c, None).unwrap();
        }
        assert_eq!(wire, plain);
        // Segment 1 is XChaCha20 under the nonce with 1 in its last 8
        // bytes, from its start: no segment reuses another's keystream.
        let mut zeros = vec![0u8; 200];
        Keystream::new(key, nonce, 100)
            .apply(&mut zeros, None)
            .unwrap();
        let mut nonce1 = nonce;
        nonce1[NONCE - 8] ^= 1;
        let mut fresh = vec![0u8; 100];
        XChaCha20::new(&key.into(), &nonce1.into()).apply_keystream(&mut fresh);
        assert_eq!(&zeros[100..], &fresh[..]);
        assert_ne!(zeros[..100], zeros[100..]);
    }

    #[test]
    fn the_key_is_derived_not_the_cluster_key_itself() {
        let cluster = [7u8; 32];
        assert_ne!(derive(&cluster), cluster);
        assert_ne!(derive(&cluster), derive(&[8u8; 32]));
        assert_eq!(derive(&cluster), derive(&cluster));
    }
}
