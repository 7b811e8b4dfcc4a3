//! `woof device sim`: a device that runs the bridge's `no_std` core
//! ([`woof_mcu_bridge::session::Session`], eight requests of at most 128
//! bytes, as a small microcontroller would hold) against real gateways
//! over UDP, through a link that loses a chosen fraction of the frames each
//! way. It appends one reading per tick and reports what was sent,
//! acknowledged, retransmitted, refused and given up.
//!
//! Offload: with an [`OffloadConfig`], each tick is an invocation of a
//! function instead of a reading. The device's
//! [`woof_mcu_bridge::offload::Chooser`] runs it either locally (a native
//! handler built into the simulator, plus a chosen cost for the slow
//! microcontroller it stands for) or as an offloaded call to the gateway,
//! by measured time to result; every remote result is checked against the
//! local one.
//!
//! Fail-over: with several gateways, the device moves to the next one when
//! requests wait and nothing has come back for [`FAILOVER_AFTER_MS`]; its
//! pending readings keep their sequence numbers, so none is written twice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use woof_mcu_bridge::offload::{Chooser, Side};
use woof_mcu_bridge::session::{Config, Event, RequestKind, Session};
use woof_mcu_bridge::wire::{FRAME_LEN_MAX, Topic};

use super::registry::check_id;
use super::transport::{self, Framed, Transport};
use crate::error::{Error, Result};

/// Requests in flight: what a small device holds.
const OUTBOX: usize = 8;
/// The largest frame a request may be.
const FRAME: usize = 128;
/// How long requests may wait with nothing heard before the device moves to
/// the next gateway.
pub const FAILOVER_AFTER_MS: u64 = 5_000;
/// The keepalive interval of simulated devices: after this long without a
/// word the device pings, so a gateway that is alive but slow to commit
/// answers (a pong) before [`FAILOVER_AFTER_MS`], and only a dead one is
/// left. (A real device's default is 30 s.)
const PING_INTERVAL_MS: u64 = 2_000;
/// Readings a device keeps while its link is slow; past this the oldest
/// new one is dropped (and counted).
const BACKLOG_MAX: usize = 100_000;
/// Followed elements a run keeps.
const DELIVERED_KEPT_MAX: usize = 100_000;
/// The most readings one run sends.
pub const COUNT_MAX: u64 = 10_000_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub gateways: Vec<Transport>,
    pub id: String,
    pub key: [u8; 16],
    pub topic: String,
    /// Readings a second.
    pub rate: f64,
    pub count: u64,
    /// The fraction of frames lost, each way.
    pub loss: f64,
    pub seed: u64,
    /// How long to wait for the last answers after the last reading.
    pub drain: Duration,
    /// A topic to follow from its first element (subscribed again after a
    /// gateway change, from the element after the last one received).
    pub follow: Option<String>,
    /// With `follow`: run until this many elements were received (or the
    /// drain ends).
    pub expect_deliveries: u64,
    /// Invoke a function each tick instead of appending a reading.
    pub offload: Option<OffloadConfig>,
    /// Reading `n` (from 0) of device `id`: [`default_reading`] unless the
    /// caller simulates a particular sensor.
    pub reading: fn(&str, u64) -> String,
}

/// `{"device":ID,"n":N}`: what the simulated devices send, so that a test
/// can tell each device's readings and their order.
pub fn default_reading(id: &str, n: u64) -> String {
    format!("{{\"device\":\"{id}\",\"n\":{n}}}")
}

/// A function the device runs itself or offloads, chosen per invocation.
#[derive(Debug, Clone)]
pub struct OffloadConfig {
    /// The handler the gateway runs (bound to one of the device's topics).
    pub handler: String,
    /// The device's own implementation: a native handler and its config,
    /// the same code the gateway's handler should run.
    pub builtin: String,
    pub config: String,
    /// What running it locally costs on top of the host's time: the
    /// microcontroller the simulator stands for is that much slower.
    pub local_cost: Duration,
}

impl OffloadConfig {
    /// Runs the function here, on the payload as element 0 (as the gateway
    /// does): the payload of its first output, or nothing.
    fn local(&self, payload: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let mut handler = crate::handlers::native::build(&self.builtin, &self.config)?;
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let outputs = handler.handle(0, unix_ms, payload)?;
        Ok(outputs
            .into_iter()
            .next()
            .map(|o| o.payload.to_vec())
            .unwrap_or_default())
    }
}

/// What the invocations did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffloadReport {
    /// Invocations run on the device...
    pub local: u64,
    /// ...and offloaded to the gateway, answered with a result.
    pub remote: u64,
    /// Remote results that differ from the local result of the same input.
    pub mismatched: u64,
    /// Offloaded calls refused, failed or given up (the chooser counts the
    /// gateway as slowest until its next reset).
    pub failed: u64,
    /// Local failures (the function refused the input).
    pub local_failed: u64,
    /// Time to result of each, µs.
    pub local_us: Vec<u32>,
    pub remote_us: Vec<u32>,
}

impl OffloadReport {
    /// Whether there were invocations at all.
    pub fn any(&self) -> bool {
        self.local + self.remote + self.failed > 0
    }

    fn add(&mut self, o: &OffloadReport) {
        self.local += o.local;
        self.remote += o.remote;
        self.mismatched += o.mismatched;
        self.failed += o.failed;
        self.local_failed += o.local_failed;
        self.local_us.extend_from_slice(&o.local_us);
        self.remote_us.extend_from_slice(&o.remote_us);
    }
}

impl std::fmt::Display for OffloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invocations: {} local (p50 {:.2} ms), {} offloaded (p50 {:.2} ms), {} offloads failed, {} results differed from local",
            self.local,
            f64::from(quantile(&self.local_us, 0.5)) / 1000.0,
            self.remote,
            f64::from(quantile(&self.remote_us, 0.5)) / 1000.0,
            self.failed,
            self.mismatched
        )
    }
}

/// What happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub readings: u64,
    /// Readings acknowledged: reading number to its sequence number in the
    /// topic.
    pub acked: BTreeMap<u64, u64>,
    /// Readings refused by the gateway, with the error code.
    pub rejected: BTreeMap<u64, u8>,
    /// Readings given up after every retransmission (perhaps written).
    pub gave_up: Vec<u64>,
    /// Readings dropped at the device: its backlog was full.
    pub dropped: u64,
    /// Each acknowledged reading's time from its first send to its ack
    /// (committed on a majority), in µs.
    pub ack_us: Vec<u32>,
    /// Elements of the followed topic received, in order, once each:
    /// (sequence number, payload).
    pub delivered: Vec<(u64, Vec<u8>)>,
    /// The first element the gateway said the subscription starts at.
    pub subscribed_from: Option<u64>,
    /// Why the gateway refused the subscription (a wire error code).
    pub subscribe_refused: Option<u8>,
    /// Readings still waiting when the run ended.
    pub unanswered: u64,
    pub frames_sent: u64,
    pub retransmitted: u64,
    pub lost_up: u64,
    pub lost_down: u64,
    pub failovers: u64,
    pub elapsed_ms: u64,
    pub offload: OffloadReport,
}

impl std::fmt::Display for SimReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "readings {}  acknowledged {}  refused {}  given up {}  unanswered {}  dropped on the device {}",
            self.readings,
            self.acked.len(),
            self.rejected.len(),
            self.gave_up.len(),
            self.unanswered,
            self.dropped
        )?;
        write!(
            f,
            "frames sent {}  retransmitted {}  lost on the link: {} up, {} down  gateway changes {}  in {:.1} s",
            self.frames_sent,
            self.retransmitted,
            self.lost_up,
            self.lost_down,
            self.failovers,
            self.elapsed_ms as f64 / 1000.0
        )?;
        match (self.subscribe_refused, self.subscribed_from) {
            (Some(code), _) => write!(f, "\nfollowing refused (code {code})"),
            (None, Some(from)) => write!(
                f,
                "\nfollowed from #{from}: {} elements received, in order, once each",
                self.delivered.len()
            ),
            (None, None) => Ok(()),
        }?;
        if self.offload.any() {
            write!(f, "\n{}", self.offload)?;
        }
        Ok(())
    }
}

/// The `q` quantile (0..=1) of `values`, 0 if there are none.
fn quantile(values: &[u32], q: f64) -> u32 {
    let mut all = values.to_vec();
    if all.is_empty() {
        return 0;
    }
    all.sort_unstable();
    all[((all.len() - 1) as f64 * q).round() as usize]
}

/// `udp://HOST:PORT[,tcp://...][,serial://...]` (the scheme may be left
/// out for UDP).
pub fn parse_gateways(text: &str) -> Result<Vec<Transport>> {
    Transport::parse_list(text)
}

/// The device's end of its link to one gateway.
enum Link {
    Udp {
        socket: UdpSocket,
        to: SocketAddr,
    },
    /// A TCP connection or a serial line; its tasks stop when it is dropped.
    Stream {
        framed: Framed,
        _stop: tokio_util::sync::DropGuard,
    },
    /// Not connected (refused, or closed): frames go nowhere until the
    /// device opens a link again.
    Down,
}

impl Link {
    async fn open(to: &Transport) -> Link {
        let opened = match to {
            Transport::Udp(addr) => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse().expect("address")
                } else {
                    "[::]:0".parse().expect("address")
                };
                UdpSocket::bind(bind)
                    .await
                    .map(|socket| Link::Udp { socket, to: *addr })
                    .map_err(|source| Error::Io {
                        context: "the simulated device's socket".into(),
                        source,
                    })
            }
            stream => {
                let stop = CancellationToken::new();
                transport::connect(stream, stop.clone())
                    .await
                    .map(|framed| Link::Stream {
                        framed,
                        _stop: stop.drop_guard(),
                    })
            }
        };
        opened.unwrap_or_else(|e| {
            tracing::debug!("device link to {to}: {e}");
            Link::Down
        })
    }

    async fn send(&mut self, frame: &[u8]) {
        match self {
            Link::Udp { socket, to } => {
                if let Err(e) = socket.send_to(frame, *to).await {
                    tracing::debug!("sending to the gateway: {e}");
                }
            }
            Link::Stream { framed, .. } => {
                let _ = framed.tx.try_send(frame.to_vec());
            }
            Link::Down => {}
        }
    }

    /// The next frame from the gateway, into `buf`; never, while down.
    async fn recv(&mut self, buf: &mut [u8]) -> usize {
        loop {
            match self {
                Link::Udp { socket, to } => {
                    if let Ok((n, from)) = socket.recv_from(buf).await
                        && n <= FRAME_LEN_MAX
                        && from == *to
                    {
                        return n;
                    }
                }
                Link::Stream { framed, .. } => match framed.rx.recv().await {
                    Some(frame) if frame.len() <= buf.len() => {
                        buf[..frame.len()].copy_from_slice(&frame);
                        return frame.len();
                    }
                    Some(_) => {}
                    None => *self = Link::Down,
                },
                Link::Down => std::future::pending().await,
            }
        }
    }
}

/// A small deterministic random source (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// Runs one simulated device to the end of its readings (and the drain).
pub async fn run(config: SimConfig) -> Result<SimReport> {
    check_id(&config.id)?;
    if config.gateways.is_empty() {
        return Err(Error::Usage("a device needs a gateway".into()));
    }
    if !(config.rate > 0.0 && config.rate <= 10_000.0) {
        return Err(Error::Usage(
            "--rate must be above 0 and at most 10000/s".into(),
        ));
    }
    if !(0.0..=0.9).contains(&config.loss) {
        return Err(Error::Usage("--loss must be 0 to 0.9".into()));
    }
    if config.count > COUNT_MAX {
        return Err(Error::Usage(format!("--count is at most {COUNT_MAX}")));
    }
    let topic = Topic::Name(config.topic.as_bytes());
    topic.check().map_err(|_| {
        Error::Usage(format!(
            "{:?} cannot be named in a frame (at most 64 bytes of [a-z0-9._/-])",
            config.topic
        ))
    })?;
    let mut link = Link::open(&config.gateways[0]).await;
    let mut rng = Rng(config.seed | 1);
    let start = Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let boot_id = getrandom::u64().unwrap_or_else(|_| rng.next());
    let mut session = Session::<OUTBOX, FRAME>::new(
        &Config {
            device_id: config.id.as_bytes(),
            key: config.key,
            boot_id,
            caps: 0,
            ping_interval_ms: PING_INTERVAL_MS,
        },
        now_ms(),
        rng.u32(),
    )
    .map_err(|e| Error::Usage(format!("device session: {e}")))?;

    let mut report = SimReport::default();
    let mut pending: BTreeMap<u32, (u64, Instant)> = BTreeMap::new();
    let tick_ms = 1000.0 / config.rate;
    let mut gateway = 0;
    let mut last_rx = 0u64;
    let mut last_switch = 0u64;
    let mut out = [0u8; FRAME_LEN_MAX];
    let mut buf = [0u8; FRAME_LEN_MAX + 1];
    let mut drain_from: Option<u64> = None;
    // Following: subscribe when there is room, and again after a new
    // session at another gateway.
    let mut need_subscribe = config.follow.is_some();
    let mut subscribed = false;
    let mut backlog = std::collections::VecDeque::new();
    let mut chooser = Chooser::new();
    // Offloaded calls waiting: device seq to (invocation, first send, input).
    let mut offloads: BTreeMap<u32, (u64, Instant, Vec<u8>)> = BTreeMap::new();
    loop {
        let now = now_ms();
        // Readings fall due at the rate into a backlog (as a device keeps
        // them while its link is slow); the outbox takes them as it has room.
        while report.readings < config.count && now >= (report.readings as f64 * tick_ms) as u64 {
            if backlog.len() < BACKLOG_MAX {
                backlog.push_back(report.readings);
            } else {
                report.dropped += 1;
            }
            report.readings += 1;
        }
        // One at a time (the gateway's window is one, ADR 17), so that a
        // reading's time to its ack is from its first send. Invocations wait
        // for the first hello's answer, so that the chooser's first remote
        // measurement is a call's, not the handshake's.
        while session.outbox_len() == 0
            && (config.offload.is_none() || session.is_connected() || report.failovers > 0)
            && let Some(&n) = backlog.front()
        {
            let payload = (config.reading)(&config.id, n);
            if let Some(o) = &config.offload {
                backlog.pop_front();
                match chooser.pick() {
                    Side::Local => {
                        let started = Instant::now();
                        let result = o.local(payload.as_bytes());
                        // (A zero sleep would still wait for the timer's tick.)
                        if !o.local_cost.is_zero() {
                            tokio::time::sleep(o.local_cost).await;
                        }
                        let took = micros(started);
                        chooser.record(Side::Local, u64::from(took));
                        report.offload.local += 1;
                        report.offload.local_us.push(took);
                        if result.is_err() {
                            report.offload.local_failed += 1;
                        }
                    }
                    Side::Remote => {
                        let seq = session
                            .offload(o.handler.as_bytes(), payload.as_bytes(), rng.u32())
                            .map_err(|e| {
                                Error::Usage(format!(
                                    "an offloaded call does not fit a {FRAME}-byte frame: {e}"
                                ))
                            })?;
                        offloads.insert(seq, (n, Instant::now(), payload.into_bytes()));
                    }
                }
                continue;
            }
            let seq = session
                .append(topic, payload.as_bytes(), rng.u32())
                .map_err(|e| {
                    Error::Usage(format!("a reading does not fit a {FRAME}-byte frame: {e}"))
                })?;
            pending.insert(seq, (n, Instant::now()));
            backlog.pop_front();
        }
        if need_subscribe
            && session.outbox_len() < OUTBOX
            && let Some(follow) = &config.follow
        {
            let from = report.delivered.last().map_or(1, |(seq, _)| seq + 1);
            session
                .subscribe(Topic::Name(follow.as_bytes()), from, rng.u32())
                .map_err(|e| Error::Usage(format!("cannot follow {follow:?}: {e}")))?;
            need_subscribe = false;
        }
        while let Some(len) = session
            .poll_transmit(now, &mut out)
            .map_err(|e| Error::Internal(format!("device session: {e}")))?
        {
            if rng.chance(config.loss) {
                report.lost_up += 1;
                continue;
            }
            link.send(&out[..len]).await;
        }
        while let Some(event) = session.poll_event(now) {
            if event == Event::Disconnected {
                if config.gateways.len() > 1 {
                    gateway = (gateway + 1) % config.gateways.len();
                    report.failovers += 1;
                    last_switch = now;
                    need_subscribe |= subscribed;
                    subscribed = false;
                }
                // A new link (a stream that closed is connected again).
                link = Link::open(&config.gateways[gateway]).await;
            }
            if let Some(o) = &config.offload {
                settle_offload(&event, o, &mut offloads, &mut chooser, &mut report.offload);
            }
            settle(event, &mut pending, &mut report, &mut subscribed);
        }
        // Nothing heard while requests wait: try the next gateway.
        if config.gateways.len() > 1
            && !(pending.is_empty() && offloads.is_empty())
            && now.saturating_sub(last_rx.max(last_switch)) > FAILOVER_AFTER_MS
        {
            gateway = (gateway + 1) % config.gateways.len();
            link = Link::open(&config.gateways[gateway]).await;
            session.reconnect(now);
            report.failovers += 1;
            last_switch = now;
            need_subscribe |= subscribed;
            subscribed = false;
            continue;
        }
        let followed_enough = config.follow.is_none()
            || report.delivered.len() as u64 >= config.expect_deliveries
            || report.subscribe_refused.is_some();
        if report.readings == config.count && backlog.is_empty() {
            if pending.is_empty() && offloads.is_empty() && followed_enough {
                break;
            }
            let from = *drain_from.get_or_insert(now);
            if now.saturating_sub(from) > config.drain.as_millis() as u64 {
                break;
            }
        }
        // Sleep until something is due, or a frame comes.
        let mut wake = session.poll_timeout().unwrap_or(now + 1000);
        if report.readings < config.count {
            wake = wake.min((report.readings as f64 * tick_ms) as u64);
        }
        if !backlog.is_empty() && session.outbox_len() == 0 {
            wake = now;
        }
        if !(pending.is_empty() && offloads.is_empty()) && config.gateways.len() > 1 {
            wake = wake.min(last_rx.max(last_switch) + FAILOVER_AFTER_MS + 1);
        }
        let wait = Duration::from_millis(wake.saturating_sub(now).clamp(1, 1000));
        if let Ok(n) = tokio::time::timeout(wait, link.recv(&mut buf)).await {
            if rng.chance(config.loss) {
                report.lost_down += 1;
                continue;
            }
            let now = now_ms();
            last_rx = now;
            if let Ok(Some(event)) = session.handle_input(now, &mut buf[..n]) {
                if let Some(o) = &config.offload {
                    settle_offload(&event, o, &mut offloads, &mut chooser, &mut report.offload);
                }
                settle(event, &mut pending, &mut report, &mut subscribed);
            }
        }
    }
    let stats = session.stats();
    report.frames_sent = u64::from(stats.sent);
    report.retransmitted = u64::from(stats.retransmitted);
    report.unanswered = (pending.len() + offloads.len() + backlog.len()) as u64;
    report.elapsed_ms = now_ms();
    Ok(report)
}

/// µs since `t`, saturated.
fn micros(t: Instant) -> u32 {
    t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
}

/// Records what an event says about an offloaded call: its time to result
/// for the chooser, and whether the result is the local one.
fn settle_offload(
    event: &Event<'_>,
    o: &OffloadConfig,
    offloads: &mut BTreeMap<u32, (u64, Instant, Vec<u8>)>,
    chooser: &mut Chooser,
    report: &mut OffloadReport,
) {
    match *event {
        Event::OffloadResult {
            seq,
            status,
            payload,
        } => {
            let Some((_, sent, input)) = offloads.remove(&seq) else {
                return;
            };
            if status != 0 {
                tracing::debug!(
                    status,
                    "offloaded call failed: {}",
                    String::from_utf8_lossy(payload)
                );
                report.failed += 1;
                chooser.remote_failed();
                return;
            }
            let took = micros(sent);
            chooser.record(Side::Remote, u64::from(took));
            report.remote += 1;
            report.remote_us.push(took);
            if o.local(&input).ok().as_deref() != Some(payload) {
                report.mismatched += 1;
            }
        }
        // Refused (the handler is not found, the gateway is busy) or no
        // answer: the gateway is the slower side until the next reset.
        Event::Rejected {
            seq,
            kind: RequestKind::Offload,
            ..
        }
        | Event::GaveUp {
            seq,
            kind: RequestKind::Offload,
        } if offloads.remove(&seq).is_some() => {
            tracing::debug!(?event, "offloaded call failed");
            report.failed += 1;
            chooser.remote_failed();
        }
        _ => {}
    }
}

/// Records what an event says about the readings.
fn settle(
    event: Event<'_>,
    pending: &mut BTreeMap<u32, (u64, Instant)>,
    report: &mut SimReport,
    subscribed: &mut bool,
) {
    match event {
        Event::Acked {
            kind: RequestKind::Subscribe,
            topic_seq,
            ..
        } => {
            *subscribed = true;
            report.subscribed_from.get_or_insert(topic_seq);
        }
        Event::Rejected {
            kind: RequestKind::Subscribe,
            code,
            ..
        } => report.subscribe_refused = Some(code),
        // Once each, in order: a repeat (its ack was lost) is skipped.
        Event::Delivery {
            topic_seq, payload, ..
        } if report
            .delivered
            .last()
            .is_none_or(|(last, _)| topic_seq > *last)
            && report.delivered.len() < DELIVERED_KEPT_MAX =>
        {
            report.delivered.push((topic_seq, payload.to_vec()));
        }
        Event::Acked {
            seq,
            kind: RequestKind::Append,
            topic_seq,
        } => {
            if let Some((n, sent)) = pending.remove(&seq) {
                report.acked.insert(n, topic_seq);
                report.ack_us.push(micros(sent));
            }
        }
        Event::Rejected {
            seq,
            kind: RequestKind::Append,
            code,
        } => {
            if let Some((n, _)) = pending.remove(&seq) {
                report.rejected.insert(n, code);
            }
        }
        Event::GaveUp {
            seq,
            kind: RequestKind::Append,
        } => {
            if let Some((n, _)) = pending.remove(&seq) {
                report.gave_up.push(n);
            }
        }
        Event::Connected { session_id } => tracing::debug!(session_id, "device connected"),
        _ => {}
    }
}

/// The most devices one simulator runs.
pub const DEVICES_MAX: u32 = 10_000;

/// What a fleet of simulated devices did.
#[derive(Debug, Clone, Default)]
pub struct FleetReport {
    /// Each device's id and report.
    pub devices: Vec<(String, SimReport)>,
    pub elapsed_ms: u64,
}

impl FleetReport {
    fn sum(&self, f: impl Fn(&SimReport) -> u64) -> u64 {
        self.devices.iter().map(|(_, r)| f(r)).sum()
    }

    pub fn readings(&self) -> u64 {
        self.sum(|r| r.readings)
    }

    pub fn acked(&self) -> u64 {
        self.sum(|r| r.acked.len() as u64)
    }

    /// What went wrong, if anything: readings not acknowledged; or, for
    /// invocations, ones never answered, local runs that failed, and
    /// remote results that differ from local ones.
    pub fn shortfall(&self) -> Option<String> {
        let (readings, acked) = (self.readings(), self.acked());
        let offload = self.offload();
        if !offload.any() {
            return (acked != readings).then(|| {
                format!(
                    "{} of {readings} readings were not acknowledged",
                    readings - acked
                )
            });
        }
        let (unanswered, local_failed, mismatched) = (
            self.sum(|r| r.unanswered),
            offload.local_failed,
            offload.mismatched,
        );
        (unanswered + local_failed + mismatched > 0).then(|| {
            format!(
                "of {readings} invocations, {unanswered} were not answered, {local_failed} failed locally and {mismatched} offloaded results differed from the local ones"
            )
        })
    }

    /// The figures as one JSON object (`woof --json device sim`).
    pub fn summary(&self) -> serde_json::Value {
        let offload = self.offload();
        let secs = (self.elapsed_ms as f64 / 1000.0).max(0.001);
        serde_json::json!({
            "devices": self.devices.len(),
            "readings": self.readings(),
            "acked": self.acked(),
            "acked_per_sec": self.acked() as f64 / secs,
            "refused": self.sum(|r| r.rejected.len() as u64),
            "given_up": self.sum(|r| r.gave_up.len() as u64),
            "unanswered": self.sum(|r| r.unanswered),
            "ack_p50_ms": f64::from(self.ack_quantile_us(0.5)) / 1000.0,
            "ack_p99_ms": f64::from(self.ack_quantile_us(0.99)) / 1000.0,
            "frames_sent": self.sum(|r| r.frames_sent),
            "retransmitted": self.sum(|r| r.retransmitted),
            "gateway_changes": self.sum(|r| r.failovers),
            "elapsed_ms": self.elapsed_ms,
            "offload": {
                "local": offload.local,
                "remote": offload.remote,
                "failed": offload.failed,
                "local_failed": offload.local_failed,
                "mismatched": offload.mismatched,
                "local_p50_ms": f64::from(quantile(&offload.local_us, 0.5)) / 1000.0,
                "remote_p50_ms": f64::from(quantile(&offload.remote_us, 0.5)) / 1000.0,
            },
        })
    }

    /// Every device's invocations together.
    pub fn offload(&self) -> OffloadReport {
        let mut all = OffloadReport::default();
        for (_, r) in &self.devices {
            all.add(&r.offload);
        }
        all
    }

    /// The `q` quantile (0..=1) of the time from first send to ack, in µs.
    pub fn ack_quantile_us(&self, q: f64) -> u32 {
        let all: Vec<u32> = self
            .devices
            .iter()
            .flat_map(|(_, r)| r.ack_us.iter().copied())
            .collect();
        quantile(&all, q)
    }
}

impl std::fmt::Display for FleetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = (self.elapsed_ms as f64 / 1000.0).max(0.001);
        writeln!(
            f,
            "devices {}  readings {}  acknowledged {} ({:.0}/s)  refused {}  given up {}  unanswered {}  dropped on the devices {}",
            self.devices.len(),
            self.readings(),
            self.acked(),
            self.acked() as f64 / secs,
            self.sum(|r| r.rejected.len() as u64),
            self.sum(|r| r.gave_up.len() as u64),
            self.sum(|r| r.unanswered),
            self.sum(|r| r.dropped),
        )?;
        writeln!(
            f,
            "send to durable ack: p50 {:.2} ms  p99 {:.2} ms",
            f64::from(self.ack_quantile_us(0.5)) / 1000.0,
            f64::from(self.ack_quantile_us(0.99)) / 1000.0
        )?;
        write!(
            f,
            "frames sent {}  retransmitted {}  lost on the link: {} up, {} down  gateway changes {}  in {secs:.1} s",
            self.sum(|r| r.frames_sent),
            self.sum(|r| r.retransmitted),
            self.sum(|r| r.lost_up),
            self.sum(|r| r.lost_down),
            self.sum(|r| r.failovers),
        )?;
        let offload = self.offload();
        if offload.any() {
            write!(f, "\n{offload}")?;
        }
        Ok(())
    }
}

/// Runs `devices` simulated devices at once (one: the device `config` names),
/// `ID-1` .. `ID-N`, each with its
/// key derived from `config.key` as a fleet key
/// ([`super::registry::fleet_device_key`]), its own socket and seed, and
/// its own first gateway (round robin); their starts are spread over one
/// reading interval.
pub async fn run_fleet(config: SimConfig, devices: u32) -> Result<FleetReport> {
    if devices == 0 || devices > DEVICES_MAX {
        return Err(Error::Usage(format!("--devices takes 1 to {DEVICES_MAX}")));
    }
    let start = Instant::now();
    let spread = Duration::from_secs_f64(1.0 / config.rate.max(0.001));
    let mut tasks = Vec::new();
    for i in 1..=devices {
        let mut c = config.clone();
        // One device is the one named, with its own key.
        let id = if devices == 1 {
            config.id.clone()
        } else {
            format!("{}-{i}", config.id)
        };
        if devices > 1 {
            c.key = super::registry::fleet_device_key(&config.key, &id);
        }
        c.id = id.clone();
        c.seed = config.seed.wrapping_add(u64::from(i));
        // Spread over the gateways: each device starts at another.
        if devices > 1 {
            let first = i as usize % c.gateways.len();
            c.gateways.rotate_left(first);
        }
        let delay = spread.mul_f64(f64::from(i - 1) / f64::from(devices));
        tasks.push((
            id,
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                run(c).await
            }),
        ));
    }
    let mut report = FleetReport::default();
    for (id, task) in tasks {
        let r = task
            .await
            .map_err(|e| Error::Internal(format!("simulated device {id}: {e}")))??;
        report.devices.push((id, r));
    }
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    Ok(report)
}
