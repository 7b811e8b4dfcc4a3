//! A link's own TCP connection (ADR 34): the Noise handshake that opens it
//! and the sealed records it carries, so that a link's bytes go between its
//! socket and its own task, with no connection task, multiplexer or second
//! cipher in between.
//!
//! The handshake is Noise `XXpsk0` (X25519, SHA-256, and AES-256-GCM where
//! both ends have AES in hardware, else ChaCha20-Poly1305: ADR 44, the
//! dialler names it in a first byte of its own):
//! the cluster key, through a label of its own, is the pre-shared key, mixed
//! in from the first message, so a node answers nothing to a peer without
//! it. Each side's handshake payload is its libp2p identity's public key and
//! a signature with that identity over its Noise static key: the link is
//! bound to the same peer ids as the libp2p connection (libp2p's noise does
//! the same). A node without a cluster key runs plain `XX`.
//!
//! After it, every record is `length (2 bytes, big-endian) | ciphertext`,
//! at most 65,535 bytes of ciphertext (Noise's bound), each direction
//! counting its own nonces. A record that does not decrypt, a record cut
//! short or a handshake that fails ends the connection with an error, never
//! a panic.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use sha2::{Digest, Sha256};
use snow::StatelessTransportState;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use tokio::io::{
    AsyncRead as TokioRead, AsyncReadExt, AsyncWrite as TokioWrite, AsyncWriteExt, ReadBuf,
};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The cipher a link's records are sealed with (ADR 44). The dialler
/// names it in the first byte it sends, before the handshake, whose
/// protocol name then holds it: a byte changed on the way makes the two
/// sides run different handshakes, which fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suite {
    ChaChaPoly = 1,
    AesGcm = 2,
}

impl Suite {
    fn from_byte(byte: u8) -> io::Result<Self> {
        match byte {
            1 => Ok(Self::ChaChaPoly),
            2 => Ok(Self::AesGcm),
            b => Err(invalid(format!("a link opened with unknown cipher {b}"))),
        }
    }

    /// Noise's name for the handshake with this cipher.
    fn params(self, keyed: bool) -> &'static str {
        match (self, keyed) {
            (Self::ChaChaPoly, true) => "Noise_XXpsk0_25519_ChaChaPoly_SHA256",
            (Self::ChaChaPoly, false) => "Noise_XX_25519_ChaChaPoly_SHA256",
            (Self::AesGcm, true) => "Noise_XXpsk0_25519_AESGCM_SHA256",
            (Self::AesGcm, false) => "Noise_XX_25519_AESGCM_SHA256",
        }
    }

    /// The cipher to dial a peer with: AES-256-GCM where both ends have AES
    /// in hardware (about four times ChaCha20-Poly1305's speed there),
    /// else ChaCha20-Poly1305 (faster where AES is done in software, as
    /// on small ARM boards).
    pub(crate) fn for_peer(peer_has_aes: bool) -> Self {
        if peer_has_aes && hardware_aes() {
            Self::AesGcm
        } else {
            Self::ChaChaPoly
        }
    }
}

/// Whether this CPU has AES and carry-less multiplication in hardware
/// (what AES-GCM runs fast on).
pub(crate) fn hardware_aes() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

const PROLOGUE: &[u8] = b"woof link, version 1";
/// Keeps the links' pre-shared key apart from any other use of the cluster key.
const PSK_LABEL: &[u8] = b"woof link pre-shared key, version 1";
/// What an identity signs: this, then its Noise static key.
const SIGNED_LABEL: &[u8] = b"woof link static key:";
/// Noise's bound on one message.
const MESSAGE_MAX: usize = 65535;
const TAG: usize = 16;
/// The most plaintext one record carries.
const PLAIN_MAX: usize = MESSAGE_MAX - TAG;
/// The longest public key or signature a handshake payload may carry (an
/// ed25519 key is 36 bytes encoded, its signature 64; RSA's are larger).
const IDENTITY_PART_MAX: usize = 2048;
/// How long a handshake may take, either side.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on a link's connection: the first probe after this long
/// without traffic, then one every interval, and the connection closed
/// after that many go unanswered.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// What a node opens and accepts links with: its identity and, in a
/// cluster with a key, the pre-shared key derived from it.
pub(crate) struct Secrets {
    keypair: Keypair,
    psk: Option<[u8; 32]>,
}

impl Secrets {
    pub(crate) fn new(keypair: Keypair, cluster_key: Option<&[u8; 32]>) -> Self {
        let psk = cluster_key.map(|key| {
            let mut h = Sha256::new();
            h.update(PSK_LABEL);
            h.update(key);
            h.finalize().into()
        });
        Self { keypair, psk }
    }
}

/// Connects to `addr`, runs the handshake as its initiator and checks that
/// the node there is `expect`.
pub(crate) async fn dial(
    addr: SocketAddr,
    expect: PeerId,
    secrets: &Secrets,
    suite: Suite,
) -> io::Result<(SealedRead, SealedWrite)> {
    let socket = TcpStream::connect(addr).await?;
    let (peer, halves) = handshake(socket, secrets, Some(suite)).await?;
    if peer != expect {
        return Err(invalid(format!("{addr} is {peer}, not {expect}")));
    }
    Ok(halves)
}

/// Runs the handshake on an accepted `socket` as its responder: the peer
/// that opened it, and the link's halves.
pub(crate) async fn accept(
    socket: TcpStream,
    secrets: &Secrets,
) -> io::Result<(PeerId, (SealedRead, SealedWrite))> {
    handshake(socket, secrets, None).await
}

/// The handshake, as the initiator with `dial`'s cipher, else as the
/// responder, with the cipher the initiator names.
async fn handshake(
    mut socket: TcpStream,
    secrets: &Secrets,
    dial: Option<Suite>,
) -> io::Result<(PeerId, (SealedRead, SealedWrite))> {
    socket.set_nodelay(true)?;
    // A peer whose host vanished (no FIN, no RST) leaves the connection
    // open on this side; the kernel's probes close it within about 25 s.
    socket2::SockRef::from(&socket).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    let initiator = dial.is_some();
    let suite = match dial {
        Some(suite) => {
            socket.write_all(&[suite as u8]).await?;
            suite
        }
        None => Suite::from_byte(socket.read_u8().await?)?,
    };
    let params = suite.params(secrets.psk.is_some());
    let builder = snow::Builder::with_resolver(params.parse().map_err(noise)?, Box::new(Resolver))
        .prologue(PROLOGUE)
        .map_err(noise)?;
    let local = builder.generate_keypair().map_err(noise)?;
    let mut builder = builder.local_private_key(&local.private).map_err(noise)?;
    if let Some(psk) = &secrets.psk {
        builder = builder.psk(0, psk).map_err(noise)?;
    }
    let mut state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(noise)?;

    let identity = identity_payload(&secrets.keypair, &local.public)?;
    let mut message = vec![0u8; MESSAGE_MAX];
    let mut payload = vec![0u8; MESSAGE_MAX];
    let remote = if initiator {
        // -> psk, e
        let n = state.write_message(&[], &mut message).map_err(noise)?;
        send(&mut socket, &message[..n]).await?;
        // <- e, ee, s, es: the responder's identity
        let got = recv(&mut socket).await?;
        let n = state.read_message(&got, &mut payload).map_err(noise)?;
        let remote = payload[..n].to_vec();
        // -> s, se: ours
        let n = state
            .write_message(&identity, &mut message)
            .map_err(noise)?;
        send(&mut socket, &message[..n]).await?;
        remote
    } else {
        let got = recv(&mut socket).await?;
        state.read_message(&got, &mut payload).map_err(noise)?;
        let n = state
            .write_message(&identity, &mut message)
            .map_err(noise)?;
        send(&mut socket, &message[..n]).await?;
        let got = recv(&mut socket).await?;
        let n = state.read_message(&got, &mut payload).map_err(noise)?;
        payload[..n].to_vec()
    };
    let remote_static = state
        .get_remote_static()
        .ok_or_else(|| invalid("no static key in the handshake".into()))?
        .to_vec();
    let peer = verify_identity(&remote, &remote_static)?;
    let state = Arc::new(state.into_stateless_transport_mode().map_err(noise)?);
    let (r, w) = socket.into_split();
    Ok((
        peer,
        (
            SealedRead::new(r, state.clone()),
            SealedWrite::new(w, state),
        ),
    ))
}

/// Our identity's public key and its signature over our Noise static key.
fn identity_payload(keypair: &Keypair, static_key: &[u8]) -> io::Result<Vec<u8>> {
    let public = keypair.public().encode_protobuf();
    let signature = keypair
        .sign(&[SIGNED_LABEL, static_key].concat())
        .map_err(|e| invalid(format!("cannot sign the handshake: {e}")))?;
    let mut out = Vec::with_capacity(4 + public.len() + signature.len());
    for part in [&public, &signature] {
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// The peer whose identity signed `remote_static` in `payload`.
fn verify_identity(payload: &[u8], remote_static: &[u8]) -> io::Result<PeerId> {
    let bad = |why: &str| invalid(format!("the peer's identity: {why}"));
    let mut rest = payload;
    let mut parts = [&[][..]; 2];
    for part in &mut parts {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            return Err(bad("cut short"));
        };
        let len = u16::from_be_bytes(*len) as usize;
        if len > IDENTITY_PART_MAX || len > tail.len() {
            return Err(bad("a part too long"));
        }
        (*part, rest) = tail.split_at(len);
    }
    if !rest.is_empty() {
        return Err(bad("bytes after it"));
    }
    let public = PublicKey::try_decode_protobuf(parts[0]).map_err(|_| bad("not a public key"))?;
    if !public.verify(&[SIGNED_LABEL, remote_static].concat(), parts[1]) {
        return Err(bad("a signature that does not verify"));
    }
    Ok(public.to_peer_id())
}

async fn send(socket: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    socket.write_all(&out).await
}

async fn recv(socket: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    socket.read_exact(&mut len).await?;
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    socket.read_exact(&mut message).await?;
    Ok(message)
}

fn noise(e: snow::Error) -> io::Error {
    invalid(format!("link handshake: {e}"))
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The write half of a link's connection: bytes written are sealed into
/// records of up to [`PLAIN_MAX`] bytes; a flush seals what is held.
pub(crate) struct SealedWrite {
    inner: OwnedWriteHalf,
    state: Arc<StatelessTransportState>,
    nonce: u64,
    /// Plaintext not yet sealed, at most [`PLAIN_MAX`] bytes.
    plain: Vec<u8>,
    /// Sealed records not yet written (at most one and a bit), from `written`.
    sealed: Vec<u8>,
    written: usize,
}

impl SealedWrite {
    fn new(inner: OwnedWriteHalf, state: Arc<StatelessTransportState>) -> Self {
        Self {
            inner,
            state,
            nonce: 0,
            plain: Vec::with_capacity(PLAIN_MAX),
            sealed: Vec::new(),
            written: 0,
        }
    }

    /// Seals what `plain` holds into one record.
    fn seal(&mut self) -> io::Result<()> {
        let plain = std::mem::take(&mut self.plain);
        let sealed = self.seal_from(&plain);
        self.plain = plain;
        self.plain.clear();
        sealed
    }

    /// Seals `plain` (at most [`PLAIN_MAX`] bytes) into one record.
    fn seal_from(&mut self, plain: &[u8]) -> io::Result<()> {
        let start = self.sealed.len();
        self.sealed.resize(start + 2 + plain.len() + TAG, 0);
        let n = self
            .state
            .write_message(self.nonce, plain, &mut self.sealed[start + 2..])
            .map_err(|e| invalid(format!("cannot seal a record: {e}")))?;
        self.nonce = self
            .nonce
            .checked_add(1)
            .ok_or_else(|| invalid("the link's nonces ran out".into()))?;
        self.sealed[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
        self.sealed.truncate(start + 2 + n);
        Ok(())
    }

    /// Writes out every sealed record.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.sealed.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.sealed[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.sealed.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SealedWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.plain.len() == PLAIN_MAX {
            ready!(this.poll_drain(cx))?;
            this.seal()?;
        }
        ready!(this.poll_drain(cx))?;
        if this.plain.is_empty() && buf.len() >= PLAIN_MAX {
            // A whole record's worth (a large frame): sealed from the
            // caller's bytes, not copied into `plain` first.
            this.seal_from(&buf[..PLAIN_MAX])?;
            return Poll::Ready(Ok(PLAIN_MAX));
        }
        let n = buf.len().min(PLAIN_MAX - this.plain.len());
        this.plain.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.plain.is_empty() {
            ready!(this.poll_drain(cx))?;
            this.seal()?;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The read half of a link's connection: records are read as they come
/// (several at a time when they do) and opened one by one.
pub(crate) struct SealedRead {
    inner: OwnedReadHalf,
    state: Arc<StatelessTransportState>,
    nonce: u64,
    /// Bytes read and not yet opened: `raw[start..end]`. Room for two
    /// whole records, so one always fits after the unread part is moved
    /// to the front.
    raw: Box<[u8]>,
    start: usize,
    end: usize,
    /// The last record's plaintext, read from `pos`.
    plain: Vec<u8>,
    pos: usize,
}

impl SealedRead {
    fn new(inner: OwnedReadHalf, state: Arc<StatelessTransportState>) -> Self {
        Self {
            inner,
            state,
            nonce: 0,
            raw: vec![0u8; 2 * (2 + MESSAGE_MAX)].into_boxed_slice(),
            start: 0,
            end: 0,
            plain: Vec::with_capacity(MESSAGE_MAX),
            pos: 0,
        }
    }

    /// Waits until the next record is read whole: its ciphertext's length
    /// (at `raw[start + 2..]`), or `None` at a clean end of the connection
    /// (between records).
    fn poll_whole(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        loop {
            let have = self.end - self.start;
            if have >= 2 {
                let head = [self.raw[self.start], self.raw[self.start + 1]];
                let len = u16::from_be_bytes(head) as usize;
                if len < TAG {
                    return Poll::Ready(Err(invalid(format!(
                        "a record of {len} bytes, shorter than its tag"
                    ))));
                }
                if have >= 2 + len {
                    return Poll::Ready(Ok(Some(len)));
                }
            }
            if self.raw.len() - self.end < 2 + MESSAGE_MAX {
                self.raw.copy_within(self.start..self.end, 0);
                self.end = have;
                self.start = 0;
            }
            let mut buf = ReadBuf::new(&mut self.raw[self.end..]);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                return Poll::Ready(if have == 0 {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the link ended inside a record",
                    ))
                });
            }
            self.end += n;
        }
    }

    /// Opens the record [`poll_whole`](Self::poll_whole) found, of `len`
    /// bytes, into `out` (room for `len` bytes: the cipher opens it in
    /// place there): its plaintext's length.
    fn open(&mut self, len: usize, out: &mut [u8]) -> io::Result<usize> {
        let body = &self.raw[self.start + 2..self.start + 2 + len];
        let n = self
            .state
            .read_message(self.nonce, body, out)
            .map_err(|_| invalid("a record that does not open".into()))?;
        self.nonce = self
            .nonce
            .checked_add(1)
            .ok_or_else(|| invalid("the link's nonces ran out".into()))?;
        self.start += 2 + len;
        Ok(n)
    }
}

impl AsyncRead for SealedRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        while this.pos == this.plain.len() {
            let Some(len) = ready!(this.poll_whole(cx))? else {
                return Poll::Ready(Ok(0));
            };
            if buf.len() >= len {
                // Room for the whole record (a large frame being read):
                // opened where the caller wants it, not copied from `plain`.
                let n = this.open(len, buf)?;
                if n > 0 {
                    return Poll::Ready(Ok(n));
                }
                continue;
            }
            let mut plain = std::mem::take(&mut this.plain);
            plain.resize(len, 0);
            let opened = this.open(len, &mut plain);
            this.plain = plain;
            this.pos = 0;
            match opened {
                Ok(n) => this.plain.truncate(n),
                Err(e) => {
                    this.plain.clear();
                    return Poll::Ready(Err(e));
                }
            }
        }
        let n = buf.len().min(this.plain.len() - this.pos);
        buf[..n].copy_from_slice(&this.plain[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(n))
    }
}

/// ring's hash, cipher and random numbers (as libp2p's noise uses them),
/// with X25519 from `x25519-dalek`, which ring does not offer to snow.
struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        RingResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        matches!(choice, DHChoice::Curve25519).then(|| Box::new(X25519::default()) as Box<dyn Dh>)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        RingResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver.resolve_cipher(choice)
    }
}

#[derive(Default)]
struct X25519 {
    private: [u8; 32],
    public: [u8; 32],
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, private: &[u8]) {
        self.private.copy_from_slice(&private[..32]);
        self.public = x25519_dalek::x25519(self.private, x25519_dalek::X25519_BASEPOINT_BYTES);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut private = [0u8; 32];
        rng.try_fill_bytes(&mut private)?;
        self.set(&private);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private
    }

    fn dh(&self, public: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // snow hands over its whole key buffer; the key is its first 32 bytes.
        let public: [u8; 32] = public
            .get(..32)
            .and_then(|k| k.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = x25519_dalek::x25519(self.private, public);
        // An all-zero result: the peer sent a point of small order.
        if shared == [0u8; 32] {
            return Err(snow::Error::Dh);
        }
        out[..32].copy_from_slice(&shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// Runs a handshake between `a` (dialling) and `b` (accepting) on
    /// loopback; `a` expects `expect`.
    async fn pair(
        a: &Secrets,
        b: &Secrets,
        expect: PeerId,
    ) -> (
        io::Result<(SealedRead, SealedWrite)>,
        io::Result<(PeerId, (SealedRead, SealedWrite))>,
    ) {
        pair_with(a, b, expect, Suite::ChaChaPoly).await
    }

    /// [`pair`], `a` dialling with `suite`.
    async fn pair_with(
        a: &Secrets,
        b: &Secrets,
        expect: PeerId,
        suite: Suite,
    ) -> (
        io::Result<(SealedRead, SealedWrite)>,
        io::Result<(PeerId, (SealedRead, SealedWrite))>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = async {
            let (socket, _) = listener.accept().await.unwrap();
            accept(socket, b).await
        };
        tokio::join!(dial(addr, expect, a, suite), accepting)
    }

    fn secrets(key: Option<&[u8; 32]>) -> Secrets {
        Secrets::new(Keypair::generate_ed25519(), key)
    }

    fn id(s: &Secrets) -> PeerId {
        s.keypair.public().to_peer_id()
    }

    #[tokio::test]
    async fn a_link_carries_bytes_both_ways_sealed_in_records() {
        for suite in [Suite::ChaChaPoly, Suite::AesGcm] {
            let key = [7u8; 32];
            let (a, b) = (secrets(Some(&key)), secrets(Some(&key)));
            let (dialled, accepted) = pair_with(&a, &b, id(&b), suite).await;
            let (mut ar, mut aw) = dialled.unwrap();
            let (peer, (mut br, mut bw)) = accepted.unwrap();
            assert_eq!(peer, id(&a), "the acceptor learns who dialled");

            // Small writes, one flush; then more than several records'
            // worth (sealed from the caller's buffer), twice: read once
            // into a buffer with room for whole records (opened there),
            // once in small pieces (opened, then copied out).
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let sending = async {
                aw.write_all(b"hello ").await.unwrap();
                aw.write_all(b"link").await.unwrap();
                aw.flush().await.unwrap();
                aw.write_all(&big).await.unwrap();
                aw.write_all(&big).await.unwrap();
                aw.close().await.unwrap();
            };
            let receiving = async {
                let mut head = [0u8; 10];
                br.read_exact(&mut head).await.unwrap();
                let mut whole = vec![0u8; big.len()];
                br.read_exact(&mut whole).await.unwrap();
                let mut pieces = Vec::new();
                let mut piece = [0u8; 1000];
                loop {
                    let n = br.read(&mut piece).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    pieces.extend_from_slice(&piece[..n]);
                }
                (head, whole, pieces)
            };
            let ((), (head, whole, pieces)) = tokio::join!(sending, receiving);
            assert_eq!(&head, b"hello link", "{suite:?}");
            assert!(whole == big, "{suite:?}: read whole, the bytes differ");
            assert!(pieces == big, "{suite:?}: read in pieces, the bytes differ");

            // And back.
            bw.write_all(b"answer").await.unwrap();
            bw.flush().await.unwrap();
            let mut back = [0u8; 6];
            ar.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"answer", "{suite:?}");
        }
    }

    #[test]
    fn aes_only_where_both_ends_have_it_in_hardware() {
        assert_eq!(Suite::for_peer(false), Suite::ChaChaPoly);
        let ours = if hardware_aes() {
            Suite::AesGcm
        } else {
            Suite::ChaChaPoly
        };
        assert_eq!(Suite::for_peer(true), ours);
        for suite in [Suite::ChaChaPoly, Suite::AesGcm] {
            assert_eq!(Suite::from_byte(suite as u8).unwrap(), suite);
        }
        let err = Suite::from_byte(0).unwrap_err();
        assert!(err.to_string().contains("unknown cipher 0"), "{err}");
    }

    #[tokio::test]
    async fn a_cipher_byte_changed_on_the_way_fails_the_handshake() {
        let key = [5u8; 32];
        let (a, b) = (secrets(Some(&key)), secrets(Some(&key)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Between the two, a relay that turns the dialler's AES-256-GCM
        // into ChaCha20-Poly1305, then passes everything on.
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut from, _) = relay.accept().await.unwrap();
            let mut to = TcpStream::connect(addr).await.unwrap();
            let first = from.read_u8().await.unwrap();
            assert_eq!(first, Suite::AesGcm as u8);
            to.write_all(&[Suite::ChaChaPoly as u8]).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
        });
        let accepting = async {
            let (socket, _) = listener.accept().await.unwrap();
            accept(socket, &b).await
        };
        let dialling = tokio::time::timeout(
            Duration::from_secs(5),
            dial(relay_addr, id(&b), &a, Suite::AesGcm),
        );
        let (dialled, accepted) = tokio::join!(dialling, accepting);
        assert!(
            accepted.is_err(),
            "the responder ran another cipher's handshake to its end"
        );
        assert!(
            !matches!(dialled, Ok(Ok(_))),
            "the dialler opened a link the responder did not"
        );
    }

    #[tokio::test]
    async fn another_cluster_key_or_another_peer_fails_the_handshake() {
        let (a, b) = (secrets(Some(&[1u8; 32])), secrets(Some(&[2u8; 32])));
        let (dialled, accepted) = pair(&a, &b, id(&b)).await;
        assert!(accepted.is_err(), "a node with another key was accepted");
        // The acceptor answered nothing at all (the key is in the first
        // message): the dialler learnt not even who it reached.
        let err = dialled.err().expect("a node with another key answered");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");

        // A key on one side only.
        let (a, b) = (secrets(Some(&[1u8; 32])), secrets(None));
        let (dialled, accepted) = pair(&a, &b, id(&b)).await;
        assert!(dialled.is_err() && accepted.is_err());

        // The right key, but not the node the dialler meant.
        let key = [3u8; 32];
        let (a, b) = (secrets(Some(&key)), secrets(Some(&key)));
        let other = PeerId::random();
        let (dialled, _) = pair(&a, &b, other).await;
        let err = dialled.err().expect("the wrong peer was accepted");
        assert!(err.to_string().contains("not"), "{err}");

        // Without keys on either side, plain XX still binds the identities.
        let (a, b) = (secrets(None), secrets(None));
        let (dialled, accepted) = pair(&a, &b, id(&b)).await;
        assert!(dialled.is_ok());
        assert_eq!(accepted.unwrap().0, id(&a));
    }

    #[tokio::test]
    async fn bad_bytes_are_errors_not_panics() {
        let key = [9u8; 32];
        let b = secrets(Some(&key));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Garbage instead of a handshake.
        for garbage in [vec![0u8; 0], vec![0, 5, 1, 2], vec![255u8; 70_000]] {
            let sending = async {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&garbage).await.unwrap();
                s.shutdown().await.unwrap();
                s
            };
            let accepting = async {
                let (socket, _) = listener.accept().await.unwrap();
                accept(socket, &b).await
            };
            let (_s, accepted) = tokio::join!(sending, accepting);
            assert!(
                accepted.is_err(),
                "garbage of {} bytes accepted",
                garbage.len()
            );
        }

        // A record tampered with on the way, and one cut short.
        let a = secrets(Some(&key));
        for cut in [false, true] {
            let (dialled, accepted) = pair(&a, &b, id(&b)).await;
            let (_ar, aw) = dialled.unwrap();
            let (_, (mut br, _bw)) = accepted.unwrap();
            let mut record = Vec::new();
            let mut sealer = aw;
            sealer.plain.extend_from_slice(b"payload");
            sealer.seal().unwrap();
            record.extend_from_slice(&sealer.sealed);
            if cut {
                record.truncate(record.len() - 3);
            } else {
                let last = record.len() - 1;
                record[last] ^= 1;
            }
            sealer.inner.write_all(&record).await.unwrap();
            sealer.inner.shutdown().await.unwrap();
            let mut got = Vec::new();
            let err = br.read_to_end(&mut got).await.unwrap_err();
            let expected = if cut {
                "inside a record"
            } else {
                "does not open"
            };
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
