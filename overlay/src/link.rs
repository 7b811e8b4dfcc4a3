//! Links: one long-lived connection to each peer, for requests that must
//! not wait behind the swarm's event loop nor open a stream each (the Raft
//! groups' messages).
//!
//! A link is a TCP connection of its own (ADR 34, [`crate::direct`]): a
//! Noise handshake keyed by the cluster key and bound to the peers' libp2p
//! identities, then sealed records, read and written by the link's own
//! task. It goes to the port the peer advertises ([`NodeInfo::link_port`])
//! at the address of the libp2p connection to it ([`PeerAddrs`]). A peer
//! that advertises none, or whose port cannot be reached, gets its link as
//! a libp2p stream ([`LINK_PROTOCOL`]) on the connection the overlay
//! already holds, authenticated as every other stream is (ADR 23); its
//! bytes then go through the connection's task. Requests and
//! answers are frames carrying a request number, many in flight at once,
//! and each answer leaves as soon as it is ready (none waits for another).
//! Frames queued together are written together, with one flush.
//!
//! A frame: its kind (1 byte), the request number (8 bytes, big-endian),
//! the length of what follows (4 bytes, big-endian), the bytes. Requests
//! go one way on a link, answers and refusals the other; a peer that breaks
//! the format loses the link (its requests fail and the next one opens a
//! new link), never the node.
//!
//! Everything is bounded: the frame size, the requests waiting for an
//! answer on one link ([`IN_FLIGHT_MAX`]; more wait for room), the requests
//! of one peer's link handled at once ([`SERVE_MAX`]; past it the link is
//! not read, and the peer's writes wait), and how long opening may take.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures::{FutureExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use crate::direct::{self, Secrets};
use crate::error::{Error, Result};
#[cfg(doc)]
use crate::info::NodeInfo;
use crate::network::Inbound;

pub(crate) const LINK_PROTOCOL: StreamProtocol = StreamProtocol::new("/woof/link/1.0.0");
/// Requests on one link waiting for their answers; more wait for room.
const IN_FLIGHT_MAX: usize = 1024;
/// Requests from one peer's link handled at once; past this, the link is
/// not read until one is answered.
const SERVE_MAX: usize = 256;
/// Frames waiting for a link's writer.
const QUEUE: usize = 1024;
/// Bytes gathered into one write before it goes (a larger frame goes alone).
const WRITE_GATHER: usize = 1 << 20;
/// A frame this large is written from its own buffer, not copied first.
const WRITE_DIRECT: usize = 64 << 10;
/// How long opening a link may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a link's own connection may take before the link goes
/// over the libp2p connection instead.
const DIRECT_OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a link being opened over libp2p looks whether its peer
/// advertised a new address for links' own connections.
const ADDRESS_LOOK: Duration = Duration::from_millis(50);
/// How long a replaced link goes on reading the answers still owed.
const RETIRED_MAX: Duration = Duration::from_secs(10);
/// A link whose peer sends nothing at all for this long after a request
/// went out is closed (its requests fail, the next opens a new one): a
/// peer that vanished, or a path that drops everything, would otherwise
/// hold it until TCP gave up, minutes later, and after a partition healed
/// it would wait out TCP's backed-off retransmissions. As long as the
/// longest wait of a request ([`crate::network`]'s timeout): no request
/// that could still be answered is failed for it.
const SILENT_MAX: Duration = Duration::from_secs(10);
/// Links' handshakes accepted at once; past this, new connections are
/// closed at once (their nodes try again, or go over libp2p).
const HANDSHAKES_MAX: usize = 64;
const HEADER: usize = 13;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request = 1,
    Answer = 2,
    Refused = 3,
}

#[derive(Debug)]
struct Frame {
    kind: Kind,
    id: u64,
    /// The first few bytes of the frame's body, kept apart from `bytes` so
    /// that a large body is not copied to put them in front of it.
    head: Vec<u8>,
    bytes: Vec<u8>,
}

impl Frame {
    fn new(kind: Kind, id: u64, bytes: Vec<u8>) -> Self {
        Self {
            kind,
            id,
            head: Vec::new(),
            bytes,
        }
    }

    #[cfg(test)]
    fn put(&self, out: &mut Vec<u8>) {
        self.put_header(out);
        out.extend_from_slice(&self.bytes);
    }

    /// The frame's header and its body's head.
    fn put_header(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.id.to_be_bytes());
        // Lengths were checked against the frame bound, itself below 4 GiB.
        let len = self.head.len() + self.bytes.len();
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&self.head);
    }
}

/// Reads one frame; `None` at a clean end of the stream.
async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    bytes_max: usize,
) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER];
    match r.read_exact(&mut header[..1]).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut header[1..]).await?;
    let kind = match header[0] {
        1 => Kind::Request,
        2 => Kind::Answer,
        3 => Kind::Refused,
        k => return Err(invalid(format!("a frame of unknown kind {k}"))),
    };
    let id = u64::from_be_bytes(header[1..9].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(header[9..13].try_into().expect("4 bytes")) as usize;
    if len > bytes_max {
        return Err(invalid(format!(
            "a frame of {len} bytes; at most {bytes_max}"
        )));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes).await?;
    Ok(Some(Frame::new(kind, id, bytes)))
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Writes what `frames` gives, gathering what is queued into one write,
/// until the queue closes or the stream fails. A frame of
/// [`WRITE_DIRECT`] bytes or more is written from its own buffer, not
/// copied into the gathered one.
async fn write_frames(
    w: &mut (impl AsyncWrite + Unpin),
    frames: &mut mpsc::Receiver<Frame>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(first) = frames.recv().await {
        let mut gathered = 0;
        let mut next = Some(first);
        while let Some(frame) = next {
            frame.put_header(&mut buf);
            if frame.bytes.len() >= WRITE_DIRECT {
                w.write_all(&buf).await?;
                buf.clear();
                w.write_all(&frame.bytes).await?;
            } else {
                buf.extend_from_slice(&frame.bytes);
            }
            gathered += HEADER + frame.head.len() + frame.bytes.len();
            next = if gathered < WRITE_GATHER {
                frames.try_recv().ok()
            } else {
                None
            };
        }
        w.write_all(&buf).await?;
        buf.clear();
        w.flush().await?;
    }
    w.close().await
}

/// The links of one node: to every peer it sent to, and the tasks that
/// answer the links peers open.
#[derive(Clone)]
pub(crate) struct Links {
    control: libp2p_stream::Control,
    peers: Arc<Mutex<HashMap<PeerId, Arc<Link>>>>,
    bytes_max: usize,
    stop: watch::Receiver<bool>,
    /// How to open links' own connections, and where.
    direct: Arc<Direct>,
    /// [`SILENT_MAX`], shorter in tests.
    silent_max: Duration,
}

/// Where a node takes links on connections of their own (ADR 34).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinkPort {
    /// A free port on the IP of the node's first listen address.
    #[default]
    Any,
    /// This port on that IP.
    Fixed(u16),
    /// None: peers send their links over the libp2p connection.
    Off,
}

impl std::str::FromStr for LinkPort {
    type Err = Error;

    /// `any` (or `0`), a port number, or `off`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "any" | "0" => Ok(Self::Any),
            "off" => Ok(Self::Off),
            port => port.parse().map(Self::Fixed).map_err(|_| {
                Error::InvalidInfo(format!(
                    "the link port is a port number, `any` or `off`, not {s:?}"
                ))
            }),
        }
    }
}

/// Where each peer takes links: the IP of the libp2p connection to it and
/// the port it advertises. Fed by the event loop.
#[derive(Default)]
pub(crate) struct PeerAddrs(Mutex<HashMap<PeerId, PeerAddr>>);

/// What is known of where one peer takes links.
#[derive(Default)]
struct PeerAddr {
    ip: Option<IpAddr>,
    port: Option<u16>,
    /// It has AES in hardware ([`crate::NodeInfo::link_aes`]).
    aes: bool,
}

impl PeerAddrs {
    /// A connection to `peer` was established with it at `ip`.
    pub(crate) fn note_ip(&self, peer: PeerId, ip: IpAddr) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer)
            .or_default()
            .ip = Some(ip);
    }

    /// `peer` advertised `port` (or none) for its links.
    pub(crate) fn note_port(&self, peer: PeerId, port: Option<u16>, aes: bool) {
        let mut addrs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let addr = addrs.entry(peer).or_default();
        addr.port = port;
        addr.aes = aes;
    }

    /// The cipher to seal a link to `peer` with.
    fn suite(&self, peer: &PeerId) -> direct::Suite {
        let aes = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .is_some_and(|a| a.aes);
        direct::Suite::for_peer(aes)
    }

    fn get(&self, peer: &PeerId) -> Option<SocketAddr> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).get(peer) {
            Some(PeerAddr {
                ip: Some(ip),
                port: Some(port),
                ..
            }) => Some(SocketAddr::new(*ip, *port)),
            _ => None,
        }
    }
}

/// What a node opens its links' own connections with.
struct Direct {
    secrets: Secrets,
    addrs: Arc<PeerAddrs>,
    /// Outbound links opened on their own connections (the rest went over
    /// libp2p).
    opened: AtomicU64,
    /// Addresses whose last dial failed, told at info once: a peer that is
    /// down fails every request's dial (many a second) until it is back.
    failing: Mutex<HashSet<SocketAddr>>,
}

/// Addresses [`Direct::failing`] remembers; past this it forgets them all.
const FAILING_MAX: usize = 1024;

impl Direct {
    /// Notes how dialing `addr` went; true if it failed and had not before.
    fn first_failure(&self, addr: SocketAddr, failed: bool) -> bool {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if !failed {
            failing.remove(&addr);
            return false;
        }
        if failing.len() >= FAILING_MAX {
            failing.clear();
        }
        failing.insert(addr)
    }
}

/// The requests waiting for their answers on one link, by number.
type Waiting = HashMap<u64, oneshot::Sender<Result<Vec<u8>>>>;

/// One outbound link: frames for its writer and the requests it waits on.
struct Link {
    frames: mpsc::Sender<Frame>,
    /// `None` once the link failed: nothing more is waited on.
    pending: Mutex<Option<Waiting>>,
    next_id: AtomicU64,
    room: Semaphore,
    /// Set if the link went over libp2p: the address of its own connection
    /// it tried then (none if it knew none).
    over_libp2p: OnceLock<Option<SocketAddr>>,
    /// Told when a link on a connection of its own replaces this one.
    retired: Notify,
    /// When the link started: the clock of `unanswered_since`.
    born: tokio::time::Instant,
    /// Milliseconds after `born`, plus one, since when the peer has sent
    /// nothing while requests went out or waited: the first request sent
    /// after the peer last sent anything, or that last time if requests
    /// still waited then; 0 if neither.
    unanswered_since: AtomicU64,
}

impl Link {
    fn since_born_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    /// A request went out.
    fn sent(&self) {
        let now = self.since_born_ms();
        let _ =
            self.unanswered_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The link is open: requests sent while it opened wait from now.
    fn opened(&self) {
        if self.unanswered_since.load(Ordering::Relaxed) != 0 {
            self.unanswered_since
                .store(self.since_born_ms(), Ordering::Relaxed);
        }
    }

    /// The peer sent something; `waiting`: requests still wait for their
    /// answers (the peer's silence is then counted from now).
    fn heard(&self, waiting: bool) {
        let since = if waiting { self.since_born_ms() } else { 0 };
        self.unanswered_since.store(since, Ordering::Relaxed);
    }

    /// Resolves once the peer has sent nothing for `max` since a request
    /// went out.
    async fn silent(&self, max: Duration) {
        let max_ms = max.as_millis() as u64;
        let check = (max / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(check).await;
            let since = self.unanswered_since.load(Ordering::Relaxed);
            if since != 0 && self.since_born_ms().saturating_sub(since) >= max_ms {
                return;
            }
        }
    }

    /// Fails every waiting request with `why`; later ones fail at once.
    fn fail(&self, why: &str, peer: PeerId) {
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for (_, reply) in waiting.into_iter().flatten() {
            let _ = reply.send(Err(Error::Request {
                peer: peer.to_string(),
                reason: why.to_string(),
            }));
        }
    }
}

impl Links {
    /// Links opened on their own connections with `secrets` to the
    /// addresses in `addrs` (else over `control`), answering the links
    /// peers open (on `listener`, or over libp2p) with requests on
    /// `inbound`; frames are at most `bytes_max`. Everything stops when
    /// `stop` turns true.
    pub fn start(
        mut control: libp2p_stream::Control,
        listener: Option<TcpListener>,
        secrets: Secrets,
        addrs: Arc<PeerAddrs>,
        inbound: mpsc::Sender<Inbound>,
        bytes_max: usize,
        stop: watch::Receiver<bool>,
    ) -> Result<Self> {
        let incoming = control
            .accept(LINK_PROTOCOL)
            .map_err(|e| Error::Join(format!("links: {e}")))?;
        tokio::spawn(accept(incoming, inbound.clone(), bytes_max, stop.clone()));
        let direct = Arc::new(Direct {
            secrets,
            addrs,
            opened: AtomicU64::new(0),
            failing: Mutex::default(),
        });
        if let Some(listener) = listener {
            tokio::spawn(accept_direct(
                listener,
                direct.clone(),
                inbound,
                bytes_max,
                stop.clone(),
            ));
        }
        Ok(Self {
            control,
            peers: Arc::default(),
            bytes_max,
            stop,
            direct,
            silent_max: SILENT_MAX,
        })
    }

    /// Outbound links opened on connections of their own so far.
    pub fn opened_direct(&self) -> u64 {
        self.direct.opened.load(Ordering::Relaxed)
    }

    /// Sends `payload` to `peer` on its link (opened on first use, and
    /// again after it failed) and waits at most `timeout` for the answer.
    pub async fn request(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.request_parts(peer, Vec::new(), payload, timeout).await
    }

    /// [`request`](Self::request) of `head` followed by `body`, sent
    /// without copying `body` to join them.
    pub async fn request_parts(
        &self,
        peer: PeerId,
        head: Vec<u8>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let len = head.len() + body.len();
        if len > self.bytes_max {
            return Err(Error::Request {
                peer: peer.to_string(),
                reason: format!("a request of {len} bytes; at most {}", self.bytes_max),
            });
        }
        let failed = |reason: &str| Error::Request {
            peer: peer.to_string(),
            reason: reason.to_string(),
        };
        let link = self.link(peer);
        let attempt = async {
            let _room = link.room.acquire().await.map_err(|_| Error::Closed)?;
            let id = link.next_id.fetch_add(1, Ordering::Relaxed);
            let (reply, answer) = oneshot::channel();
            match &mut *link.pending.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(pending) => pending.insert(id, reply),
                None => return Err(failed("the link to it failed")),
            };
            // Whatever ends this request early (a timeout, a caller gone)
            // forgets it.
            let _forget = Forget { link: &link, id };
            let frame = Frame {
                kind: Kind::Request,
                id,
                head,
                bytes: body,
            };
            if link.frames.send(frame).await.is_err() {
                return Err(failed("the link to it closed"));
            }
            link.sent();
            answer.await.map_err(|_| failed("the link to it closed"))?
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(answer) => answer,
            Err(_) => Err(failed(&format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// The link to `peer`, started if there is none (or it failed).
    fn link(&self, peer: PeerId) -> Arc<Link> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut retiring = None;
        if let Some(link) = peers.get(&peer)
            && !link.frames.is_closed()
        {
            // A link that went over libp2p is replaced once the peer's
            // own address for links is one it did not try (learnt since,
            // or changed as the peer restarted); the old one finishes
            // what it carries.
            let Some(tried) = link.over_libp2p.get() else {
                return link.clone();
            };
            match self.direct.addrs.get(&peer) {
                Some(now) if *tried != Some(now) => retiring = Some(link.clone()),
                _ => return link.clone(),
            }
        }
        let (frames, queue) = mpsc::channel(QUEUE);
        let link = Arc::new(Link {
            frames,
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(0),
            room: Semaphore::new(IN_FLIGHT_MAX),
            over_libp2p: OnceLock::new(),
            retired: Notify::new(),
            born: tokio::time::Instant::now(),
            unanswered_since: AtomicU64::new(0),
        });
        peers.insert(peer, link.clone());
        tokio::spawn(run_link(self.clone(), peer, link.clone(), queue));
        if let Some(old) = retiring {
            old.retired.notify_one();
        }
        link
    }
}

/// Forgets a request when its caller stops waiting (answered, timed out or
/// dropped): what the reader no longer finds, it drops.
struct Forget<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(pending) = &mut *self.link.pending.lock().unwrap_or_else(|e| e.into_inner()) {
            pending.remove(&self.id);
        }
    }
}

/// How a link was opened.
enum Opened {
    Direct,
    /// Over libp2p, after trying this address of its own (if any).
    Libp2p(Option<SocketAddr>),
}

/// Opens a link to `peer`: on its own connection if the peer advertises a
/// port for it and answers there, else as a stream on the libp2p
/// connection. While the stream is being opened, a new address the peer
/// advertises (it restarted on another port) is dialled at once: opening
/// over libp2p can hang until [`OPEN_TIMEOUT`] (a connection to the
/// peer's old process not yet seen closed, a dial to its old address), and
/// every request on the link waits meanwhile (seen in a restart test: a
/// leader's requests to a restarted follower unanswered for 10 s).
async fn open(
    links: &Links,
    peer: PeerId,
) -> std::result::Result<(Reader, Writer, Opened), String> {
    let own = &links.direct;
    let tried = own.addrs.get(&peer);
    if let Some(addr) = tried
        && let Some((r, w)) = dial_own(own, peer, addr).await
    {
        return Ok((r, w, Opened::Direct));
    }
    let mut control = links.control.clone();
    let stream = async move {
        control
            .open_stream(peer, LINK_PROTOCOL)
            .await
            .map_err(|e| e.to_string())
    };
    open_over(own, peer, tried, stream).await
}

/// Opens a link to `peer` with `over_libp2p` (after its own connection at
/// `tried`, if any, failed), or on its own connection once the peer
/// advertises another address.
async fn open_over<S>(
    own: &Direct,
    peer: PeerId,
    mut tried: Option<SocketAddr>,
    over_libp2p: impl Future<Output = std::result::Result<S, String>>,
) -> std::result::Result<(Reader, Writer, Opened), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let over_libp2p = tokio::time::timeout(OPEN_TIMEOUT, over_libp2p);
    tokio::pin!(over_libp2p);
    let mut look = tokio::time::interval(ADDRESS_LOOK);
    loop {
        tokio::select! {
            opened = &mut over_libp2p => return match opened {
                Ok(Ok(stream)) => {
                    tracing::debug!(%peer, "link opened on the libp2p connection");
                    let (r, w) = stream.split();
                    Ok((Box::new(r), Box::new(w), Opened::Libp2p(tried)))
                }
                Ok(Err(e)) => Err(format!("cannot open a link: {e}")),
                Err(_) => Err(format!(
                    "cannot open a link within {} s",
                    OPEN_TIMEOUT.as_secs()
                )),
            },
            _ = look.tick() => {
                let now = own.addrs.get(&peer);
                if let Some(addr) = now.filter(|_| now != tried) {
                    tried = now;
                    if let Some((r, w)) = dial_own(own, peer, addr).await {
                        return Ok((r, w, Opened::Direct));
                    }
                }
            }
        }
    }
}

/// Opens a link's own connection to `peer` at `addr`, if it can.
async fn dial_own(own: &Direct, peer: PeerId, addr: SocketAddr) -> Option<(Reader, Writer)> {
    let why = match tokio::time::timeout(
        DIRECT_OPEN_TIMEOUT,
        direct::dial(addr, peer, &own.secrets, own.addrs.suite(&peer)),
    )
    .await
    {
        Ok(Ok((r, w))) => {
            own.opened.fetch_add(1, Ordering::Relaxed);
            own.first_failure(addr, false);
            tracing::debug!(%peer, %addr, "link opened on its own connection");
            return Some((Box::new(r), Box::new(w)));
        }
        Ok(Err(e)) => format!("cannot open a link's own connection ({e})"),
        Err(_) => format!(
            "no link connection within {} s",
            DIRECT_OPEN_TIMEOUT.as_secs()
        ),
    };
    // Once at info while it keeps failing, then at debug.
    if own.first_failure(addr, true) {
        tracing::info!(%peer, %addr, "{why}; the link goes over libp2p");
    } else {
        tracing::debug!(%peer, %addr, "{why}; the link goes over libp2p");
    }
    None
}

/// Opens the link to `peer`, then writes its requests and reads the
/// answers until it fails, the node stops, or nobody holds it any more.
async fn run_link(links: Links, peer: PeerId, link: Arc<Link>, mut queue: mpsc::Receiver<Frame>) {
    let mut stop = links.stop.clone();
    let opened = tokio::select! {
        _ = stop.wait_for(|s| *s) => Err("the node is stopping".to_string()),
        opened = open(&links, peer) => opened,
    };
    let why = match opened {
        Ok((mut r, mut w, how)) => {
            if let Opened::Libp2p(tried) = how {
                let _ = link.over_libp2p.set(tried);
            }
            link.opened();
            let reading = read_answers(&mut r, &link, peer, links.bytes_max);
            let writing = write_frames(&mut w, &mut queue);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => "the node is stopping".to_string(),
                () = retired(&link) => "replaced by a link on a connection of its own".to_string(),
                () = link.silent(links.silent_max) => format!(
                    "nothing from the peer for {} ms while a request waited",
                    links.silent_max.as_millis()
                ),
                read = reading => match read {
                    Ok(()) => "the peer closed the link".to_string(),
                    Err(e) => format!("the link failed: {e}"),
                },
                written = writing => match written {
                    Ok(()) => "the link closed".to_string(),
                    Err(e) => format!("the link failed: {e}"),
                },
            }
        }
        Err(why) => why,
    };
    tracing::debug!(%peer, "link ended: {why}");
    // Later requests start a new link; this one's fail now.
    queue.close();
    {
        let mut peers = links.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(&peer).is_some_and(|l| Arc::ptr_eq(l, &link)) {
            peers.remove(&peer);
        }
    }
    link.fail(&why, peer);
}

/// Resolves once `link` was replaced and no request waits on it any more
/// (or the longest a request may wait has passed).
async fn retired(link: &Link) {
    link.retired.notified().await;
    let until = tokio::time::Instant::now() + RETIRED_MAX;
    while tokio::time::Instant::now() < until
        && link
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|p| !p.is_empty())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Hands each answer read from an outbound link to its request.
async fn read_answers(
    r: &mut (impl AsyncRead + Unpin),
    link: &Link,
    peer: PeerId,
    bytes_max: usize,
) -> std::io::Result<()> {
    while let Some(frame) = read_frame(r, bytes_max).await? {
        let answer = match frame.kind {
            Kind::Answer => Ok(frame.bytes),
            Kind::Refused => Err(String::from_utf8_lossy(&frame.bytes).into_owned()),
            Kind::Request => return Err(invalid("a request on an outbound link".into())),
        };
        let reply = {
            let mut pending = link.pending.lock().unwrap_or_else(|e| e.into_inner());
            let reply = pending.as_mut().and_then(|p| p.remove(&frame.id));
            link.heard(pending.as_ref().is_some_and(|p| !p.is_empty()));
            reply
        };
        // None: its caller stopped waiting.
        if let Some(reply) = reply {
            let _ = reply.send(answer.map_err(|reason| Error::Request {
                peer: peer.to_string(),
                reason,
            }));
        }
    }
    Ok(())
}

/// Takes the links peers open and serves each on its own task.
async fn accept(
    mut incoming: libp2p_stream::IncomingStreams,
    inbound: mpsc::Sender<Inbound>,
    bytes_max: usize,
    stop: watch::Receiver<bool>,
) {
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    let (r, w) = stream.split();
                    tokio::spawn(serve(peer, r, w, inbound.clone(), bytes_max, stop.clone()));
                }
                None => return,
            },
        }
    }
}

/// Takes the links' own connections peers open on `listener`: each runs
/// its handshake (at most [`HANDSHAKES_MAX`] at once, each within
/// [`direct::HANDSHAKE_TIMEOUT`]), then is served on its own task.
async fn accept_direct(
    listener: TcpListener,
    own: Arc<Direct>,
    inbound: mpsc::Sender<Inbound>,
    bytes_max: usize,
    stop: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!("cannot accept a link: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%from, "too many link handshakes at once; closed");
            continue;
        };
        let (own, inbound, stop) = (own.clone(), inbound.clone(), stop.clone());
        tokio::spawn(async move {
            let shaken = tokio::time::timeout(
                direct::HANDSHAKE_TIMEOUT,
                direct::accept(socket, &own.secrets),
            )
            .await;
            drop(permit);
            match shaken {
                Ok(Ok((peer, (r, w)))) => serve(peer, r, w, inbound, bytes_max, stop).await,
                Ok(Err(e)) => tracing::debug!(%from, "a link's handshake failed: {e}"),
                Err(_) => tracing::debug!(%from, "a link's handshake took too long"),
            }
        });
    }
}

/// Answers the requests on a link `peer` opened, each as soon as the node
/// answers it, until the link ends or the node stops.
async fn serve(
    peer: PeerId,
    r: impl AsyncRead + Unpin,
    mut w: impl AsyncWrite + Unpin,
    inbound: mpsc::Sender<Inbound>,
    bytes_max: usize,
    mut stop: watch::Receiver<bool>,
) {
    let (answers, mut queue) = mpsc::channel(SERVE_MAX);
    // The requests read, one after another (a stream, so that waiting for
    // the next one can give way to an answer and go on where it was).
    let requests = futures::stream::unfold(r, |mut r| async move {
        match read_frame(&mut r, bytes_max).await {
            Ok(Some(frame)) => Some((Ok(frame), r)),
            Ok(None) => None,
            Err(e) => Some((Err(e), r)),
        }
    });
    let reading = async {
        futures::pin_mut!(requests);
        // The answers owed, each leaving as soon as the node gives it: all
        // driven by this task, none with a task of its own.
        let mut owed = futures::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                Some(frame) = owed.next(), if !owed.is_empty() => {
                    if answers.send(frame).await.is_err() {
                        return Ok(());
                    }
                }
                next = requests.next(), if owed.len() < SERVE_MAX => {
                    let frame = match next {
                        None => return Ok(()),
                        Some(frame) => frame?,
                    };
                    if frame.kind != Kind::Request {
                        return Err(invalid("an answer on an inbound link".into()));
                    }
                    let (reply, answer) = oneshot::channel();
                    let request = Inbound {
                        peer,
                        payload: frame.bytes,
                        reply,
                    };
                    if inbound.send(request).await.is_err() {
                        return Ok(());
                    }
                    let id = frame.id;
                    owed.push(answer.map(move |answer| match answer {
                        Ok(bytes) => Frame::new(Kind::Answer, id, bytes),
                        Err(_) => Frame::new(
                            Kind::Refused,
                            id,
                            b"the node dropped the request".to_vec(),
                        ),
                    }));
                }
            }
        }
    };
    let writing = write_frames(&mut w, &mut queue);
    let ended = tokio::select! {
        _ = stop.wait_for(|s| *s) => Ok(()),
        read = reading => read,
        written = writing => written,
    };
    match ended {
        Ok(()) => tracing::debug!(%peer, "inbound link ended"),
        Err(e) => tracing::debug!(%peer, "inbound link failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    fn read(bytes: &[u8], max: usize) -> std::io::Result<Option<Frame>> {
        block_on(read_frame(&mut Cursor::new(bytes.to_vec()), max))
    }

    #[test]
    fn frames_read_back_as_written() {
        let mut out = Vec::new();
        for (kind, id, bytes) in [
            (Kind::Request, 7, b"abc".to_vec()),
            (Kind::Answer, u64::MAX, Vec::new()),
            (Kind::Refused, 0, b"busy".to_vec()),
        ] {
            Frame::new(kind, id, bytes).put(&mut out);
        }
        let mut r = Cursor::new(out);
        let mut got = Vec::new();
        while let Some(f) = block_on(read_frame(&mut r, 16)).unwrap() {
            got.push((f.kind, f.id, f.bytes));
        }
        assert_eq!(
            got,
            vec![
                (Kind::Request, 7, b"abc".to_vec()),
                (Kind::Answer, u64::MAX, Vec::new()),
                (Kind::Refused, 0, b"busy".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn the_writer_sends_small_and_large_frames_in_order() {
        // Small ones gathered, large ones from their own buffers, past the
        // gathering bound too, some with a head kept apart from their
        // body: all read back as queued, each head in front of its body.
        let sizes = [3, WRITE_DIRECT, 10, WRITE_DIRECT - 1, WRITE_GATHER, 0, 5];
        let (tx, mut rx) = mpsc::channel(16);
        let head = |i: usize| {
            if i % 2 == 1 {
                vec![0xee; i]
            } else {
                Vec::new()
            }
        };
        for (i, &n) in sizes.iter().enumerate() {
            let bytes = vec![i as u8; n];
            tx.send(Frame {
                kind: Kind::Request,
                id: i as u64,
                head: head(i),
                bytes,
            })
            .await
            .unwrap();
        }
        drop(tx);
        let mut out = Cursor::new(Vec::new());
        write_frames(&mut out, &mut rx).await.unwrap();
        let mut r = Cursor::new(out.into_inner());
        for (i, &n) in sizes.iter().enumerate() {
            let f = read_frame(&mut r, 2 * WRITE_GATHER).await.unwrap().unwrap();
            let h = head(i).len();
            assert_eq!((f.id, f.bytes.len()), (i as u64, h + n));
            assert!(f.bytes[..h].iter().all(|&b| b == 0xee), "frame {i}'s head");
            assert!(
                f.bytes[h..].iter().all(|&b| b == i as u8),
                "frame {i}'s body"
            );
        }
        assert!(read_frame(&mut r, 16).await.unwrap().is_none());
    }

    /// Two overlays on loopback, B joined to A and answering link requests
    /// with their bytes reversed (except `hang`, which it never answers nor
    /// drops), once A knows B's port for links.
    async fn two_overlays() -> (crate::Overlay, crate::Overlay, Links, PeerId) {
        use crate::{ClusterKey, NodeInfo, OverlayConfig, Tier, Timing};
        let key = ClusterKey::generate();
        let config = |join: Vec<libp2p::Multiaddr>| OverlayConfig {
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            cluster_key: Some(key),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            join,
            info: NodeInfo::new(Tier::Edge),
            timing: Timing {
                heartbeat_ms: 100,
                suspect_after_ms: 2_000,
                gone_after_ms: 5_000,
            },
            join_timeout: Some(Duration::from_secs(5)),
            rejoin: Vec::new(),
            link_port: LinkPort::Any,
        };
        let a = crate::start(config(vec![])).await.unwrap();
        let mut b = crate::start(config(a.client.listen_addrs().to_vec()))
            .await
            .unwrap();
        let b_id = b.client.peer_id();
        let links = a.client.links().clone();
        // Until B's heartbeat tells A its port.
        while links.direct.addrs.get(&b_id).is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut inbound = std::mem::replace(&mut b.link_inbound, mpsc::channel(1).1);
        tokio::spawn(async move {
            let mut hung = Vec::new();
            while let Some(req) = inbound.recv().await {
                if req.payload == b"hang" {
                    hung.push(req.reply);
                    continue;
                }
                let mut p = req.payload;
                p.reverse();
                let _ = req.reply.send(p);
            }
        });
        (a, b, links, b_id)
    }

    /// Sends `text` to `peer` over `links` (waiting at most 10 s), as a
    /// future of its own.
    fn asker(
        links: &Links,
        peer: PeerId,
    ) -> impl Fn(&'static [u8]) -> futures::future::BoxFuture<'static, Result<Vec<u8>>> {
        let links = links.clone();
        move |text| {
            let links = links.clone();
            async move {
                links
                    .request(peer, text.to_vec(), Duration::from_secs(10))
                    .await
            }
            .boxed()
        }
    }

    /// The link to `peer` now.
    fn current(links: &Links, peer: PeerId) -> Arc<Link> {
        links.peers.lock().unwrap().get(&peer).cloned().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_over_libp2p_is_replaced_once_the_peers_own_address_is_known() {
        let (a, b, links, b_id) = two_overlays().await;
        let ask = asker(&links, b_id);
        let link_now = || current(&links, b_id);

        // B's port, at an address where nothing listens (B took
        // 127.0.0.1 only): the link goes over libp2p, and stays there
        // while the address is the one it tried.
        links
            .direct
            .addrs
            .note_ip(b_id, "127.0.0.2".parse().unwrap());
        assert_eq!(ask(b"ab").await.unwrap(), b"ba");
        assert_eq!(links.opened_direct(), 0);
        let over_libp2p = link_now();
        assert_eq!(ask(b"cd").await.unwrap(), b"dc");
        assert!(
            Arc::ptr_eq(&over_libp2p, &link_now()),
            "tried the same address again"
        );

        // The address that works: the next request opens a link on a
        // connection of its own, and the old link ends.
        links
            .direct
            .addrs
            .note_ip(b_id, "127.0.0.1".parse().unwrap());
        assert_eq!(ask(b"ef").await.unwrap(), b"fe");
        assert_eq!(links.opened_direct(), 1);
        assert!(!Arc::ptr_eq(&over_libp2p, &link_now()));
        assert_eq!(ask(b"gh").await.unwrap(), b"hg");
        assert_eq!(links.opened_direct(), 1, "the direct link is kept");
        tokio::time::timeout(Duration::from_secs(5), async {
            while !over_libp2p.frames.is_closed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the replaced link did not end");
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_whose_peer_falls_silent_is_closed_and_opened_again() {
        let (a, b, mut links, b_id) = two_overlays().await;
        links.silent_max = Duration::from_millis(400);
        let ask = asker(&links, b_id);
        let link_now = || current(&links, b_id);
        assert_eq!(ask(b"ab").await.unwrap(), b"ba");
        let first = link_now();
        // Idle, every request answered: the link stays.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(ask(b"cd").await.unwrap(), b"dc");
        assert!(Arc::ptr_eq(&first, &link_now()), "an idle link was closed");
        // A request the peer never answers, while it answers others: the
        // peer is not silent, the link stays.
        let hanging = tokio::spawn(ask(b"hang"));
        for _ in 0..8 {
            assert_eq!(ask(b"ef").await.unwrap(), b"fe");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(
            Arc::ptr_eq(&first, &link_now()),
            "a link whose peer answered was closed"
        );
        assert!(!hanging.is_finished());
        // Then nothing more from it: the link closes well before the
        // request's own 10 s, and the next request opens a new one.
        let failed = tokio::time::timeout(Duration::from_secs(3), hanging)
            .await
            .expect("a silent link was kept")
            .unwrap()
            .unwrap_err();
        assert!(
            failed.to_string().contains("nothing from the peer"),
            "{failed}"
        );
        assert!(first.frames.is_closed());
        assert_eq!(links.opened_direct(), 1);
        assert_eq!(ask(b"gh").await.unwrap(), b"hg");
        assert_eq!(links.opened_direct(), 2);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_waiting_on_libp2p_takes_the_peers_new_address_at_once() {
        let (a, b, links, b_id) = two_overlays().await;
        // B's port at an address where nothing listens (as after B
        // restarted on another port, before A heard of it), and a libp2p
        // stream that never opens.
        let own = &links.direct;
        own.addrs.note_ip(b_id, "127.0.0.2".parse().unwrap());
        let tried = own.addrs.get(&b_id);
        let never = futures::future::pending::<std::result::Result<Cursor<Vec<u8>>, String>>();
        let opening = open_over(own, b_id, tried, never);
        tokio::pin!(opening);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut opening)
                .await
                .is_err(),
            "opened with nowhere to open"
        );
        // B's address that works, as its heartbeat would bring it.
        own.addrs.note_ip(b_id, "127.0.0.1".parse().unwrap());
        let (mut r, mut w, how) = tokio::time::timeout(Duration::from_secs(2), opening)
            .await
            .expect("the new address dialled while libp2p still opened")
            .unwrap();
        assert!(matches!(how, Opened::Direct));
        // The link works: a request over it is answered.
        let mut request = Vec::new();
        Frame::new(Kind::Request, 7, b"xyz".to_vec()).put(&mut request);
        w.write_all(&request).await.unwrap();
        w.flush().await.unwrap();
        let answer = read_frame(&mut r, 1 << 10).await.unwrap().unwrap();
        assert_eq!(
            (answer.kind, answer.id, answer.bytes),
            (Kind::Answer, 7, b"zyx".to_vec())
        );
        a.shutdown().await;
        b.shutdown().await;
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        // An unknown kind.
        let err = read(&[9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], 16).unwrap_err();
        assert!(err.to_string().contains("unknown kind 9"), "{err}");
        // Longer than allowed: refused before anything is allocated.
        let mut frame = vec![1, 0, 0, 0, 0, 0, 0, 0, 1];
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = read(&frame, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("at most 1048576"), "{err}");
        // Cut short in the header, and in the bytes.
        assert!(read(&[1, 0, 0], 16).is_err());
        assert!(read(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, b'x'], 16).is_err());
        // Nothing at all is the link's clean end.
        assert!(read(&[], 16).unwrap().is_none());
    }
}
