//! The bridge gateway: devices' frames in (over UDP, TCP or serial lines,
//! [`super::transport`]), idempotent appends to the cluster out, acks back
//! only once committed.
//!
//! One task owns every device's [`woof_mcu_bridge::gateway::Session`], the
//! UDP socket and the writing ends of the streams (each TCP connection or
//! serial line has tasks of its own that read and write its bytes and hand
//! over whole frames); each append runs as a task of its own and reports
//! back on a channel, so a slow topic holds back nobody else's readings. A
//! device is known by its id in the hello and then by its [`Link`] (a UDP
//! address, or a stream): a frame from a link that has not said a good
//! hello is dropped (the device says hello again after a silence, see
//! `woof_mcu_bridge::session`).
//!
//! A reading is appended as producer `~dev:<id>/<boot>` with the device's
//! sequence number (ADR 17): a retransmission, here or at another gateway
//! after a fail-over, is recognised by the topic's group and answered with
//! the sequence number it got the first time. The hello ack gives every
//! device a window of one request, so its readings commit in its order; a
//! reading that arrives after a later one committed (a frame delayed past
//! the device giving up on it) is refused, never written out of order.
//!
//! A device may follow up to 4 topics its registration allows: each
//! subscription is a task that follows the topic from where the device
//! asked and hands the gateway the next element once the device has
//! acknowledged the last ([`DELIVERY_WINDOW`], so they arrive in order); one not
//! acknowledged within 2 s is sent again, the same frame (the device's
//! replay window recognises it and acknowledges it again). A new boot's
//! subscriptions replace the old boot's; a device that moves to another
//! gateway subscribes there again.
//!
//! An offloaded call (`super::offload`) runs as a task of its own too, and
//! its result goes back in the session like an ack.
//!
//! Bounds: 4 requests in flight per device (more are refused as busy, the
//! device retransmits), 4,096 appends and 64 offloaded calls in the whole gateway, 200 frames a second per
//! device (a burst of 400) and per unknown address, sessions forgotten after
//! 10 minutes of silence; frames over 1,024 bytes are dropped; at most
//! 4,096 streams at once (TCP connections past that are closed at once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use woof_consensus::Start;
use woof_consensus::topic::{NODE_PRODUCER_PREFIX, Producer};
use woof_mcu_bridge::gateway::{Input, Session, TopicRef};
use woof_mcu_bridge::wire::{self, FRAME_LEN_MAX};

use super::clip;
use super::offload::{self, Engines};
use super::registry::{DEVICES_TOPIC, Device, Registry};
use super::transport::{self, Serial, Transport};
use crate::api::{ClusterTopics, Following};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// Appends one device may have in flight (it is told one; this bounds a
/// device that does not listen).
pub const DEVICE_INFLIGHT_MAX: usize = 4;
/// Appends the whole gateway may have in flight.
pub const INFLIGHT_MAX: usize = 4096;
/// Frames a second one device (or one unknown address) may send.
pub const FRAMES_PER_SECOND: f64 = 200.0;
/// How many frames one may send at once after a quiet spell.
pub const FRAMES_BURST: f64 = 400.0;
/// A silent device's session is forgotten after this.
pub const IDLE_AFTER: Duration = Duration::from_secs(600);
/// How long a failing append is retried (no leader, a moving group) before
/// the device is told the gateway is busy.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// The most addresses known to belong to devices.
const ADDRS_MAX: usize = 65_536;
/// The most addresses rate-limited before they said a good hello.
const STRANGERS_MAX: usize = 4096;
/// Topics one device may follow at once.
pub const DEVICE_SUBSCRIPTIONS_MAX: usize = 4;
/// Subscriptions the whole gateway serves.
pub const SUBSCRIPTIONS_MAX: usize = 10_000;
/// Deliveries one subscription may have unacknowledged: one, so that a
/// device gets its topic's elements in order even when one is lost and sent
/// again (the device keeps no reorder buffer), and the topic is read no
/// faster than the device acknowledges.
pub const DELIVERY_WINDOW: usize = 1;
/// A delivery unacknowledged this long is sent again (the same frame).
const RESEND_AFTER: Duration = Duration::from_secs(2);
/// How often the gateway logs its counts (when they changed).
const COUNTS_EVERY: Duration = Duration::from_secs(60);
/// How often deliveries are checked for resending.
const RESEND_EVERY: Duration = Duration::from_millis(500);
/// Streams (TCP connections, serial lines) served at once.
pub const STREAMS_MAX: usize = 4096;
/// Frames from all streams waiting for the gateway's task.
const STREAM_FRAMES_QUEUED: usize = 1024;
/// The window of requests a device may have in flight, told in the hello
/// ack: one, so that its readings commit in its order (ADR 17).
const WINDOW: u8 = 1;

/// What the gateway counts (read by tests and logged when it stops).
#[derive(Debug, Default)]
pub struct Counts {
    pub frames: AtomicU64,
    /// Frames dropped: bad, forged, replayed, from unknown devices or
    /// addresses, or over the rate.
    pub dropped: AtomicU64,
    pub rate_limited: AtomicU64,
    pub appends: AtomicU64,
    /// Appends acknowledged (committed, or found committed before).
    pub acked: AtomicU64,
    /// Requests refused with an error frame.
    pub refused: AtomicU64,
    /// Retransmitted requests answered again, or ignored while pending.
    pub duplicates: AtomicU64,
    /// Elements sent to devices that follow their topics (first sends).
    pub delivered: AtomicU64,
    /// Offloaded calls run...
    pub offloads: AtomicU64,
    /// ...and those that returned a result.
    pub offloaded: AtomicU64,
    /// Frames sent to devices (first sends and resends).
    pub sent: AtomicU64,
    /// Devices with a session here now.
    pub devices: AtomicU64,
}

impl Counts {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a device is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Link {
    Udp(SocketAddr),
    /// A TCP connection or a serial line, by its number.
    Stream(u64),
}

/// What the streams' tasks tell the gateway's task.
enum StreamEvent {
    Opened(u64, mpsc::Sender<Vec<u8>>),
    Frame(u64, Vec<u8>),
    Closed(u64),
}

/// A running gateway.
pub struct Gateway {
    listening: Vec<Transport>,
    counts: Arc<Counts>,
}

impl Gateway {
    /// Listens at `listen` (one UDP address at most, any number of TCP
    /// addresses and serial lines) for `api`'s cluster until `shutdown`.
    pub async fn start(
        listen: &[Transport],
        api: ClusterTopics,
        shutdown: Shutdown,
    ) -> Result<Self> {
        let counts = Arc::new(Counts::default());
        let (streams_tx, streams_rx) = mpsc::channel(STREAM_FRAMES_QUEUED);
        let streams = Streams {
            events: streams_tx,
            next: Arc::new(AtomicU64::new(0)),
            open: Arc::new(AtomicU64::new(0)),
            counts: counts.clone(),
            stop: shutdown.token(),
        };
        let mut udp = None;
        let mut listening = Vec::new();
        for t in listen {
            let bound = |addr: SocketAddr, source| Error::Listen { addr, source };
            match t {
                Transport::Udp(addr) => {
                    if udp.is_some() {
                        return Err(Error::Usage(
                            "a gateway listens on one UDP address at most".into(),
                        ));
                    }
                    let socket = UdpSocket::bind(addr).await.map_err(|e| bound(*addr, e))?;
                    let at = socket.local_addr().map_err(|e| bound(*addr, e))?;
                    listening.push(Transport::Udp(at));
                    udp = Some(socket);
                }
                Transport::Tcp(addr) => {
                    let listener = TcpListener::bind(addr).await.map_err(|e| bound(*addr, e))?;
                    let at = listener.local_addr().map_err(|e| bound(*addr, e))?;
                    listening.push(Transport::Tcp(at));
                    shutdown.spawn(streams.clone().accept(listener));
                }
                Transport::Serial { path, baud } => {
                    let line = Serial::open(path, *baud)?;
                    listening.push(t.clone());
                    streams.clone().serve(tokio::io::split(line)).await;
                }
            }
        }
        let registry = Arc::new(RwLock::new(Registry::default()));
        shutdown.spawn(follow_registry(
            api.clone(),
            registry.clone(),
            shutdown.clone(),
        ));
        let (done_tx, done_rx) = mpsc::channel(INFLIGHT_MAX + SUBSCRIPTIONS_MAX);
        let state = State {
            udp,
            streams: HashMap::new(),
            api,
            registry,
            devices: HashMap::new(),
            by_addr: HashMap::new(),
            strangers: HashMap::new(),
            inflight: 0,
            offloads: 0,
            engines: Engines::default(),
            done_tx,
            next_sub: 0,
            counts: counts.clone(),
        };
        shutdown.spawn(state.run(done_rx, streams_rx, shutdown.clone()));
        for t in &listening {
            tracing::info!(at = %t, "bridge gateway listening");
        }
        Ok(Gateway { listening, counts })
    }

    /// Where it listens (with the ports the system chose).
    pub fn listening(&self) -> &[Transport] {
        &self.listening
    }

    /// Its UDP address, if it has one.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.listening.iter().find_map(|t| match t {
            Transport::Udp(a) => Some(*a),
            _ => None,
        })
    }

    /// Its first TCP address, if it has one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listening.iter().find_map(|t| match t {
            Transport::Tcp(a) => Some(*a),
            _ => None,
        })
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The counts, shared (the metrics read them at each scrape).
    pub fn shared_counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }
}

/// What the stream tasks share: how to reach the gateway's task, and the
/// bounds.
#[derive(Clone)]
struct Streams {
    events: mpsc::Sender<StreamEvent>,
    /// The last stream number given.
    next: Arc<AtomicU64>,
    /// Streams open now.
    open: Arc<AtomicU64>,
    counts: Arc<Counts>,
    stop: CancellationToken,
}

impl Streams {
    /// Takes TCP connections until the gateway stops.
    async fn accept(self, listener: TcpListener) {
        loop {
            let conn = tokio::select! {
                _ = self.stop.cancelled() => return,
                c = listener.accept() => c,
            };
            match conn {
                Ok((stream, from)) => {
                    if self.open.load(Ordering::Relaxed) >= STREAMS_MAX as u64 {
                        tracing::debug!(%from, "bridge connection refused: too many streams");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.serve(stream.into_split()).await;
                }
                // Out of file descriptors and the like: wait a little.
                Err(e) => {
                    tracing::debug!("accepting a bridge connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves one stream: its frames go to the gateway's task, tagged with
    /// its number, until it ends.
    async fn serve<R, W>(&self, (reader, writer): (R, W))
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let dropped = Arc::new(AtomicU64::new(0));
        let mut framed =
            transport::framed(reader, writer, self.stop.child_token(), dropped.clone());
        if self
            .events
            .send(StreamEvent::Opened(id, framed.tx))
            .await
            .is_err()
        {
            return;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            let mut counted = 0;
            while let Some(frame) = framed.rx.recv().await {
                // Runs and broken escapes the framing dropped count as bad frames.
                let now = dropped.load(Ordering::Relaxed);
                this.counts
                    .dropped
                    .fetch_add(now - counted, Ordering::Relaxed);
                this.counts
                    .frames
                    .fetch_add(now - counted, Ordering::Relaxed);
                counted = now;
                if this
                    .events
                    .send(StreamEvent::Frame(id, frame))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            this.open.fetch_sub(1, Ordering::Relaxed);
            let _ = this.events.send(StreamEvent::Closed(id)).await;
        });
    }
}

/// Keeps `registry` folded from its topic, following it live.
async fn follow_registry(api: ClusterTopics, registry: Arc<RwLock<Registry>>, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let next = registry.read().expect("registry lock").applied() + 1;
        let step = async {
            let mut follow: Following = api.subscribe(DEVICES_TOPIC, Start::Seq(next)).await?;
            loop {
                let batch = follow.next_batch(256).await?;
                let mut r = registry.write().expect("registry lock");
                for e in batch {
                    r.apply(e.seq, &e.payload);
                }
                backoff = Duration::from_millis(200);
            }
            #[allow(unreachable_code)]
            Ok::<(), Error>(())
        };
        let e = tokio::select! {
            _ = shutdown.requested() => return,
            r = step => r.err(),
        };
        match e {
            Some(Error::Log(woof_consensus::Error::TopicNotFound(_))) => {}
            Some(e) => tracing::debug!("following the device registry: {e}"),
            None => {}
        }
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A token bucket.
struct Rate {
    tokens: f64,
    at: Instant,
}

impl Rate {
    fn new(now: Instant) -> Rate {
        Rate {
            tokens: FRAMES_BURST,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * FRAMES_PER_SECOND;
        self.tokens = (self.tokens + refill).min(FRAMES_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One device the gateway speaks with.
struct Peer {
    session: Session,
    /// The key the session was made with (a rotation makes a new one).
    key: [u8; 16],
    addr: Link,
    last_rx: Instant,
    inflight: usize,
    rate: Rate,
    /// Its subscriptions, by id.
    subs: HashMap<u64, Sub>,
    /// Deliveries not yet acknowledged: gateway sequence number to the
    /// subscription and when it was last sent.
    unacked: HashMap<u32, (u64, Instant)>,
}

/// One topic a device follows.
struct Sub {
    boot_id: u64,
    /// Stops its follow task.
    cancel: CancellationToken,
    /// Deliveries it may have unacknowledged: its follow task takes one per
    /// element, an ack gives it back.
    window: Arc<Semaphore>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What a task reports to the gateway's task.
enum Report {
    Done(Done),
    Offloaded(Offloaded),
    Subscribed(Subscribed),
    Element(Element),
}

/// A subscription in place (its first sequence number) or refused.
struct Subscribed {
    device: String,
    boot_id: u64,
    device_seq: u32,
    sub: u64,
    result: Result<u64, (u8, String)>,
}

/// An element for a device that follows its topic.
struct Element {
    device: String,
    sub: u64,
    topic: TopicRef,
    seq: u64,
    payload: Bytes,
}

/// An offloaded call's end.
struct Offloaded {
    device: String,
    boot_id: u64,
    device_seq: u32,
    outcome: offload::Outcome,
}

/// An append's end, reported to the gateway's task.
struct Done {
    device: String,
    boot_id: u64,
    device_seq: u32,
    result: Result<u64, (u8, String)>,
}

struct State {
    udp: Option<UdpSocket>,
    /// The streams open now, by number: where to put frames for them.
    streams: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    api: ClusterTopics,
    registry: Arc<RwLock<Registry>>,
    devices: HashMap<String, Peer>,
    by_addr: HashMap<Link, String>,
    /// Rate limits of links with no session (hellos, strays).
    strangers: HashMap<Link, Rate>,
    inflight: usize,
    /// Offloaded calls running.
    offloads: usize,
    engines: Engines,
    done_tx: mpsc::Sender<Report>,
    /// The last subscription id given.
    next_sub: u64,
    counts: Arc<Counts>,
}

impl State {
    async fn run(
        mut self,
        mut done_rx: mpsc::Receiver<Report>,
        mut streams_rx: mpsc::Receiver<StreamEvent>,
        shutdown: Shutdown,
    ) {
        // One byte more than a frame may be, to see those that are longer.
        let mut buf = vec![0u8; FRAME_LEN_MAX + 1];
        let mut sweep = tokio::time::interval(Duration::from_secs(10));
        let mut resend = tokio::time::interval(RESEND_EVERY);
        let mut report = tokio::time::interval(COUNTS_EVERY);
        let mut reported = [0u64; 3];
        loop {
            tokio::select! {
                _ = shutdown.requested() => break,
                r = recv(self.udp.as_ref(), &mut buf) => match r {
                    Ok((n, from)) => {
                        Counts::add(&self.counts.frames);
                        if n > FRAME_LEN_MAX {
                            Counts::add(&self.counts.dropped);
                        } else {
                            self.frame(&buf[..n], Link::Udp(from)).await;
                        }
                    }
                    // ICMP port unreachable from a device that went away, and
                    // the like: nothing to do but go on.
                    Err(e) => tracing::debug!("bridge socket: {e}"),
                },
                Some(event) = streams_rx.recv() => match event {
                    StreamEvent::Opened(id, tx) => {
                        self.streams.insert(id, tx);
                    }
                    StreamEvent::Frame(id, frame) => {
                        Counts::add(&self.counts.frames);
                        self.frame(&frame, Link::Stream(id)).await;
                    }
                    StreamEvent::Closed(id) => {
                        self.streams.remove(&id);
                        self.by_addr.remove(&Link::Stream(id));
                        self.strangers.remove(&Link::Stream(id));
                    }
                },
                Some(report) = done_rx.recv() => match report {
                    Report::Done(done) => self.done(done).await,
                    Report::Offloaded(o) => self.offloaded(o).await,
                    Report::Subscribed(s) => self.subscribed(s).await,
                    Report::Element(e) => self.element(e).await,
                },
                _ = sweep.tick() => self.sweep(),
                _ = resend.tick() => self.resend().await,
                _ = report.tick() => reported = self.log_counts(reported),
            }
        }
        tracing::info!(
            frames = Counts::get(&self.counts.frames),
            dropped = Counts::get(&self.counts.dropped),
            acked = Counts::get(&self.counts.acked),
            refused = Counts::get(&self.counts.refused),
            "bridge gateway stopped"
        );
    }

    fn registered(&self, id: &str) -> Option<Device> {
        self.registry
            .read()
            .expect("registry lock")
            .get(id)
            .cloned()
    }

    async fn frame(&mut self, frame: &[u8], from: Link) {
        let now = Instant::now();
        if let Some(id) = Session::hello_device_id(frame) {
            let id = String::from_utf8_lossy(id).into_owned();
            return self.hello(&id, frame, from, now).await;
        }
        let Some(id) = self.by_addr.get(&from).cloned() else {
            self.stranger(from, now);
            Counts::add(&self.counts.dropped);
            return;
        };
        // A device removed or given a new key: its session is over.
        let Some(device) = self
            .registered(&id)
            .filter(|d| self.devices.get(&id).is_some_and(|p| p.key == d.key))
        else {
            self.forget(&id);
            Counts::add(&self.counts.dropped);
            return;
        };
        let Some(peer) = self.devices.get_mut(&id) else {
            Counts::add(&self.counts.dropped);
            return;
        };
        if !peer.rate.take(now) {
            Counts::add(&self.counts.rate_limited);
            Counts::add(&self.counts.dropped);
            return;
        }
        let before = peer.session.stats().duplicates;
        let input = peer.session.handle_input(frame, 0);
        if peer.session.stats().duplicates > before {
            Counts::add(&self.counts.duplicates);
        }
        if input.is_ok() {
            // An authentic frame of the session: the device is here now.
            peer.last_rx = now;
            peer.addr = from;
        }
        match input {
            Ok(Some(input)) => self.request(&device, input),
            Ok(None) => {}
            Err(_) => Counts::add(&self.counts.dropped),
        }
        self.flush(&id, None).await;
    }

    /// Counts a frame from an address with no session against its rate, so
    /// a flood from one address costs little.
    fn stranger(&mut self, from: Link, now: Instant) -> bool {
        if self.strangers.len() >= STRANGERS_MAX && !self.strangers.contains_key(&from) {
            return false;
        }
        let ok = self
            .strangers
            .entry(from)
            .or_insert_with(|| Rate::new(now))
            .take(now);
        if !ok {
            Counts::add(&self.counts.rate_limited);
        }
        ok
    }

    async fn hello(&mut self, id: &str, frame: &[u8], from: Link, now: Instant) {
        if !self.stranger(from, now) {
            Counts::add(&self.counts.dropped);
            return;
        }
        let Some(device) = self.registered(id) else {
            tracing::debug!(device = id, ?from, "hello from an unregistered device");
            Counts::add(&self.counts.dropped);
            return;
        };
        if self.devices.get(id).is_some_and(|p| p.key != device.key) {
            self.forget(id);
        }
        let peer = self.devices.entry(id.to_string()).or_insert_with(|| Peer {
            session: Session::new(id.as_bytes(), device.key, WINDOW),
            key: device.key,
            addr: from,
            last_rx: now,
            inflight: 0,
            rate: Rate::new(now),
            subs: HashMap::new(),
            unacked: HashMap::new(),
        });
        peer.last_rx = now;
        // The session id, if this hello starts one (0 is made 1).
        let rand = getrandom::u32().unwrap_or(1);
        match peer.session.handle_input(frame, rand) {
            Ok(_) => {
                // The hello is authentic, but may be a replay from elsewhere:
                // the answer goes where it came from, and the device's
                // address moves only when a frame of its session comes from
                // there.
                if self.by_addr.len() < ADDRS_MAX || self.by_addr.contains_key(&from) {
                    self.by_addr.insert(from, id.to_string());
                }
                tracing::debug!(device = id, ?from, "device said hello");
                self.flush(id, Some(from)).await;
            }
            Err(e) => {
                tracing::debug!(device = id, ?from, "hello dropped: {e}");
                Counts::add(&self.counts.dropped);
            }
        }
    }

    /// Starts what a request asks.
    fn request(&mut self, device: &Device, input: Input) {
        match input {
            Input::Append {
                boot_id,
                device_seq,
                topic,
                payload,
            } => {
                Counts::add(&self.counts.appends);
                let Some(peer) = self.devices.get_mut(&device.id) else {
                    return;
                };
                let topic = match resolve(device, &topic) {
                    Ok(t) => t,
                    Err((code, text)) => {
                        Counts::add(&self.counts.refused);
                        let _ = peer.session.refuse(boot_id, device_seq, code, &text);
                        return;
                    }
                };
                if peer.inflight >= DEVICE_INFLIGHT_MAX || self.inflight >= INFLIGHT_MAX {
                    Counts::add(&self.counts.refused);
                    let _ = peer
                        .session
                        .refuse(boot_id, device_seq, wire::code::BUSY, "busy");
                    return;
                }
                peer.inflight += 1;
                self.inflight += 1;
                let producer = format!("{NODE_PRODUCER_PREFIX}dev:{}/{boot_id:016x}", device.id);
                let api = self.api.clone();
                let done = self.done_tx.clone();
                let device = device.id.clone();
                tokio::spawn(async move {
                    let result = append(&api, &topic, payload, producer, device_seq).await;
                    let _ = done
                        .send(Report::Done(Done {
                            device,
                            boot_id,
                            device_seq,
                            result,
                        }))
                        .await;
                });
            }
            Input::Subscribe {
                boot_id,
                device_seq,
                topic,
                from,
            } => self.subscribe(device, boot_id, device_seq, topic, from),
            Input::Offload {
                boot_id,
                device_seq,
                handler,
                payload,
            } => {
                let Some(peer) = self.devices.get_mut(&device.id) else {
                    return;
                };
                if peer.inflight >= DEVICE_INFLIGHT_MAX || self.offloads >= offload::OFFLOADS_MAX {
                    Counts::add(&self.counts.refused);
                    let _ = peer
                        .session
                        .refuse(boot_id, device_seq, wire::code::BUSY, "busy");
                    return;
                }
                Counts::add(&self.counts.offloads);
                peer.inflight += 1;
                self.offloads += 1;
                let (api, engines, done) =
                    (self.api.clone(), self.engines.clone(), self.done_tx.clone());
                let device = device.clone();
                tokio::spawn(async move {
                    let outcome = engines.call(&api, &device, &handler, payload).await;
                    let _ = done
                        .send(Report::Offloaded(Offloaded {
                            device: device.id,
                            boot_id,
                            device_seq,
                            outcome,
                        }))
                        .await;
                });
            }
            Input::DeliveryAck { gateway_seq } => {
                if let Some(peer) = self.devices.get_mut(&device.id)
                    && let Some((sub, _)) = peer.unacked.remove(&gateway_seq)
                    && let Some(s) = peer.subs.get(&sub)
                {
                    s.window.add_permits(1);
                }
            }
        }
    }

    /// Starts following a topic for a device: refused if its registration
    /// does not allow it, or past the bounds.
    fn subscribe(
        &mut self,
        device: &Device,
        boot_id: u64,
        device_seq: u32,
        topic: TopicRef,
        from: u64,
    ) {
        let Some(peer) = self.devices.get_mut(&device.id) else {
            return;
        };
        let name = match resolve_follow(device, &topic) {
            Ok(n) => n,
            Err((code, text)) => {
                Counts::add(&self.counts.refused);
                let _ = peer.session.refuse(boot_id, device_seq, code, &text);
                return;
            }
        };
        // A new boot's subscriptions replace the old boot's.
        peer.subs.retain(|_, s| s.boot_id == boot_id);
        let all: usize = self.devices.values().map(|p| p.subs.len()).sum();
        let Some(peer) = self.devices.get_mut(&device.id) else {
            return;
        };
        if peer.subs.len() >= DEVICE_SUBSCRIPTIONS_MAX || all >= SUBSCRIPTIONS_MAX {
            Counts::add(&self.counts.refused);
            let _ = peer.session.refuse(
                boot_id,
                device_seq,
                wire::code::BUSY,
                "too many subscriptions",
            );
            return;
        }
        self.next_sub += 1;
        let id = self.next_sub;
        let cancel = CancellationToken::new();
        let window = Arc::new(Semaphore::new(DELIVERY_WINDOW));
        peer.subs.insert(
            id,
            Sub {
                boot_id,
                cancel: cancel.clone(),
                window: window.clone(),
            },
        );
        let api = self.api.clone();
        let tx = self.done_tx.clone();
        let device = device.id.clone();
        tokio::spawn(async move {
            let start = if from == 0 {
                Start::Latest
            } else {
                Start::Seq(from)
            };
            let follow = tokio::select! {
                _ = cancel.cancelled() => return,
                f = api.subscribe(&name, start) => f,
            };
            let mut follow = match follow {
                Ok(f) => {
                    let _ = tx
                        .send(Report::Subscribed(Subscribed {
                            device: device.clone(),
                            boot_id,
                            device_seq,
                            sub: id,
                            result: Ok(f.next_seq()),
                        }))
                        .await;
                    f
                }
                Err(e) => {
                    let status = crate::grpc::convert::node_status(e);
                    let code = match status.code() {
                        tonic::Code::NotFound => wire::code::NOT_FOUND,
                        _ => wire::code::REFUSED,
                    };
                    let _ = tx
                        .send(Report::Subscribed(Subscribed {
                            device,
                            boot_id,
                            device_seq,
                            sub: id,
                            result: Err((code, clip(status.message().to_string()))),
                        }))
                        .await;
                    return;
                }
            };
            loop {
                let batch = tokio::select! {
                    _ = cancel.cancelled() => return,
                    b = follow.next_batch(DELIVERY_WINDOW) => b,
                };
                let Ok(batch) = batch else {
                    // The topic went away, or the follow failed: the device
                    // notices no more deliveries and may subscribe again.
                    return;
                };
                for e in batch {
                    let permit = tokio::select! {
                        _ = cancel.cancelled() => return,
                        p = window.acquire() => p,
                    };
                    let Ok(permit) = permit else { return };
                    permit.forget();
                    let element = Element {
                        device: device.clone(),
                        sub: id,
                        topic: topic.clone(),
                        seq: e.seq,
                        payload: e.payload,
                    };
                    if tx.send(Report::Element(element)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    async fn subscribed(&mut self, s: Subscribed) {
        let Some(peer) = self.devices.get_mut(&s.device) else {
            return;
        };
        let _ = match s.result {
            Ok(first) => peer.session.subscribed(s.boot_id, s.device_seq, first),
            Err((code, text)) => {
                Counts::add(&self.counts.refused);
                peer.subs.remove(&s.sub);
                peer.session.refuse(s.boot_id, s.device_seq, code, &text)
            }
        };
        self.flush(&s.device, None).await;
    }

    /// Sends an element to the device that follows its topic.
    async fn element(&mut self, e: Element) {
        let Some(peer) = self.devices.get_mut(&e.device) else {
            return;
        };
        let Some(sub) = peer.subs.get(&e.sub) else {
            return;
        };
        let live = peer.session.current().map(|(boot, _)| boot);
        if live != Some(sub.boot_id) {
            // That boot's session is over: so is the subscription.
            peer.subs.remove(&e.sub);
            return;
        }
        match peer.session.deliver(e.topic.as_wire(), e.seq, &e.payload) {
            Ok(gateway_seq) => {
                peer.unacked.insert(gateway_seq, (e.sub, Instant::now()));
                Counts::add(&self.counts.delivered);
            }
            Err(err) => {
                // Too large for a frame, or the session is full: skipped
                // (the window slot comes back), counted.
                tracing::debug!(device = %e.device, seq = e.seq, "delivery skipped: {err}");
                Counts::add(&self.counts.refused);
                sub.window.add_permits(1);
            }
        }
        self.flush(&e.device, None).await;
    }

    /// Sends again every delivery unacknowledged for [`RESEND_AFTER`].
    async fn resend(&mut self) {
        let now = Instant::now();
        let mut touched = Vec::new();
        for (id, peer) in &mut self.devices {
            let due: Vec<u32> = peer
                .unacked
                .iter()
                .filter(|(_, (_, sent))| now.duration_since(*sent) >= RESEND_AFTER)
                .map(|(seq, _)| *seq)
                .collect();
            for gateway_seq in due {
                if peer.session.redeliver(gateway_seq) {
                    if let Some((_, sent)) = peer.unacked.get_mut(&gateway_seq) {
                        *sent = now;
                    }
                    touched.push(id.clone());
                } else if let Some((sub, _)) = peer.unacked.remove(&gateway_seq)
                    && let Some(s) = peer.subs.get(&sub)
                {
                    // Its session is over: the slot comes back.
                    s.window.add_permits(1);
                }
            }
        }
        touched.dedup();
        for id in touched {
            self.flush(&id, None).await;
        }
    }

    async fn done(&mut self, done: Done) {
        self.inflight -= 1;
        let Some(peer) = self.devices.get_mut(&done.device) else {
            return;
        };
        peer.inflight = peer.inflight.saturating_sub(1);
        let _ = match done.result {
            Ok(topic_seq) => {
                Counts::add(&self.counts.acked);
                peer.session
                    .committed(done.boot_id, done.device_seq, topic_seq)
            }
            Err((code, text)) => {
                Counts::add(&self.counts.refused);
                peer.session
                    .refuse(done.boot_id, done.device_seq, code, &text)
            }
        };
        self.flush(&done.device, None).await;
    }

    async fn offloaded(&mut self, o: Offloaded) {
        self.offloads -= 1;
        let Some(peer) = self.devices.get_mut(&o.device) else {
            return;
        };
        peer.inflight = peer.inflight.saturating_sub(1);
        let (status, payload) = o.outcome;
        if status == 0 {
            Counts::add(&self.counts.offloaded);
        } else {
            Counts::add(&self.counts.refused);
        }
        let _ = peer
            .session
            .offload_result(o.boot_id, o.device_seq, status, &payload);
        self.flush(&o.device, None).await;
    }

    /// Sends what the device's session has for it, to `to` or where the
    /// device was last heard from.
    async fn flush(&mut self, id: &str, to: Option<Link>) {
        let Some(peer) = self.devices.get_mut(id) else {
            return;
        };
        let to = to.unwrap_or(peer.addr);
        self.counts
            .devices
            .store(self.devices.len() as u64, Ordering::Relaxed);
        let Some(peer) = self.devices.get_mut(id) else {
            return;
        };
        while let Some(frame) = peer.session.poll_transmit() {
            Counts::add(&self.counts.sent);
            match to {
                Link::Udp(addr) => {
                    if let Some(udp) = &self.udp
                        && let Err(e) = udp.send_to(&frame, addr).await
                    {
                        tracing::debug!(device = id, %addr, "sending to a device: {e}");
                    }
                }
                // A stream that is full or gone loses the frame; the
                // device retransmits what matters.
                Link::Stream(stream) => {
                    if let Some(tx) = self.streams.get(&stream) {
                        let _ = tx.try_send(frame);
                    }
                }
            }
        }
    }

    fn forget(&mut self, id: &str) {
        self.devices.remove(id);
        self.by_addr.retain(|_, d| d != id);
        self.counts
            .devices
            .store(self.devices.len() as u64, Ordering::Relaxed);
    }

    /// Logs what the gateway did since the last time, if anything: so an
    /// operator sees drops and refusals without a debugger.
    fn log_counts(&self, last: [u64; 3]) -> [u64; 3] {
        let c = &self.counts;
        let now = [
            Counts::get(&c.frames),
            Counts::get(&c.dropped),
            Counts::get(&c.refused),
        ];
        if now != last {
            tracing::info!(
                devices = self.devices.len(),
                frames = now[0],
                dropped = now[1],
                rate_limited = Counts::get(&c.rate_limited),
                refused = now[2],
                duplicates = Counts::get(&c.duplicates),
                appends = Counts::get(&c.appends),
                acked = Counts::get(&c.acked),
                delivered = Counts::get(&c.delivered),
                offloads = Counts::get(&c.offloads),
                offloaded = Counts::get(&c.offloaded),
                "bridge gateway, since it started"
            );
        }
        now
    }

    /// Forgets silent devices and old rate limits.
    fn sweep(&mut self) {
        let now = Instant::now();
        let idle: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, p)| p.inflight == 0 && now.duration_since(p.last_rx) > IDLE_AFTER)
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.forget(&id);
        }
        // Addresses a device said hello from but does not use (a replayed
        // hello, an old NAT binding).
        let devices = &self.devices;
        self.by_addr
            .retain(|addr, id| devices.get(id).is_some_and(|p| p.addr == *addr));
        self.strangers
            .retain(|_, r| now.duration_since(r.at) < Duration::from_secs(10));
    }
}

/// The next datagram, if there is a UDP socket (else never).
async fn recv(udp: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match udp {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The topic a subscription names, if the device may follow it: a name, or
/// an index among its follow patterns without wildcards.
fn resolve_follow(device: &Device, topic: &TopicRef) -> Result<String, (u8, String)> {
    let name = match topic {
        TopicRef::Index(i) => device
            .subscribe
            .get(usize::from(*i))
            .and_then(|p| p.literal())
            .map(str::to_string)
            .ok_or_else(|| (wire::code::NOT_FOUND, format!("no topic at index {i}")))?,
        TopicRef::Name(n) => n.clone(),
    };
    if !device.may_subscribe(&name) {
        return Err((wire::code::FORBIDDEN, "topic not allowed".into()));
    }
    Ok(name)
}

/// The topic a request names, if the device may append to it.
fn resolve(device: &Device, topic: &TopicRef) -> Result<String, (u8, String)> {
    let name = match topic {
        TopicRef::Index(i) => device
            .indexed(*i)
            .map(str::to_string)
            .ok_or_else(|| (wire::code::NOT_FOUND, format!("no topic at index {i}")))?,
        TopicRef::Name(n) => n.clone(),
    };
    if !device.may_append(&name) {
        return Err((wire::code::FORBIDDEN, "topic not allowed".into()));
    }
    Ok(name)
}

/// Appends one reading, retrying what may pass on its own (no leader yet, a
/// group moving) for up to [`RETRY_FOR`].
async fn append(
    api: &ClusterTopics,
    topic: &str,
    payload: Vec<u8>,
    producer: String,
    device_seq: u32,
) -> Result<u64, (u8, String)> {
    let producer = Producer::new(producer, u64::from(device_seq))
        .map_err(|e| (wire::code::REFUSED, clip(e.to_string())))?;
    let payload = Bytes::from(payload);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        match api
            .append(topic, vec![payload.clone()], Some(producer.clone()))
            .await
        {
            Ok(outcome) => return Ok(outcome.first_seq),
            Err(e) => {
                let status = crate::grpc::convert::node_status(e);
                let code = match status.code() {
                    tonic::Code::NotFound => wire::code::NOT_FOUND,
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted => {
                        if started.elapsed() < RETRY_FOR {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                            continue;
                        }
                        wire::code::BUSY
                    }
                    _ => wire::code::REFUSED,
                };
                return Err((code, clip(status.message().to_string())));
            }
        }
    }
}
