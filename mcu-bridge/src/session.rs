//! The device side of a session, as a state machine free of I/O and clocks.
//!
//! Bytes and the time go in ([`Session::handle_input`], `now_ms` on every
//! call); bytes and the next deadline come out ([`Session::poll_transmit`],
//! [`Session::poll_timeout`]); what the application should know comes out as
//! [`Event`]s. A driver loop looks like
//!
//! ```text
//! loop {
//!     while let Some(len) = session.poll_transmit(now, &mut out)? { send(&out[..len]) }
//!     while let Some(event) = session.poll_event(now) { handle(event) }
//!     wait for a datagram or session.poll_timeout()
//!     if a datagram came: if let Ok(Some(event)) = session.handle_input(now, &mut buf[..n]) { handle(event) }
//! }
//! ```
//!
//! Requests (append, subscribe, offload) wait in a fixed outbox of `N`
//! slots of `B` bytes each, so the whole session lives in a static or on the
//! stack, with no allocator: `N * (B + 32) + 248` bytes on a 64-bit host
//! (`Session<8, 128>` is 1,528 bytes, `Session<4, 64>` 632; a 32-bit MCU
//! packs a little tighter). A request keeps
//! its device sequence number for life, so its retransmissions are the same
//! frame and the gateway writes it once. Retransmission follows CoAP
//! (RFC 7252 §4.2) until the session has measured the time to an answer:
//! the first timeout is drawn from [2 s, 3 s) with a random number from the
//! caller, doubles at each retransmission, and after 4 retransmissions the
//! request is given up ([`Event::GaveUp`]). Once answers have been timed,
//! the first timeout is TCP's (RFC 6298: smoothed time plus four times its
//! variation, measured only on requests answered at their first send) with
//! the same random spread, between 200 ms and CoAP's 2 s, and a request is
//! given up only after 4 retransmissions *and* 45 s (CoAP's
//! MAX_TRANSMIT_SPAN), so a short timeout never gives up sooner. A lost
//! frame on a fast link then costs a fraction of a second, not 2 to 3.
//!
//! A session belongs to one boot: the caller supplies a boot id that is new
//! at every boot, and sequence numbers start at 1 again. The gateway keys its
//! dedupe on (boot id, sequence number), so a rebooted device is a new
//! session and is never taken for a retransmission of the last boot.

use crate::crypto::{Cipher, Context, Direction, Drops, KEY_LEN, ReplayWindow, Verdict};
use crate::wire::{
    self, DEVICE_ID_LEN_MAX, DeliveryAck, Frame, Hello, Message, Offload, SEQ_MAX, Subscribe,
    Topic, Type,
};
use crate::{Error, Result};

/// CoAP's ACK_TIMEOUT.
pub const ACK_TIMEOUT_MS: u64 = 2_000;
/// CoAP's ACK_RANDOM_FACTOR of 1.5, as the width of the first timeout's
/// random spread.
pub const ACK_RANDOM_SPREAD_MS: u64 = 1_000;
/// CoAP's MAX_RETRANSMIT: sends after the first.
pub const MAX_RETRANSMIT: u8 = 4;
/// CoAP's MAX_TRANSMIT_SPAN: a request is not given up sooner.
pub const GIVE_UP_AFTER_MS: u64 = 45_000;
/// The shortest first timeout, however fast the answers.
pub const RTO_MIN_MS: u64 = 200;
/// The longest wait between two sends of a request.
pub const RETRANSMIT_TIMEOUT_MAX_MS: u64 = 64_000;
/// How long the link may stay silent before the device pings.
pub const PING_INTERVAL_MS: u64 = 30_000;
/// Earlier sessions whose replay windows a device keeps (beside the
/// current one's): going back to a gateway that still holds one of them
/// restores its window, so its old frames stay replays.
pub const SESSIONS_KEPT: usize = 4;
/// The longest wait between two hellos.
pub const HELLO_TIMEOUT_MAX_MS: u64 = 64_000;
/// Delivery acks waiting to be sent; beyond this the oldest is forgotten
/// (the gateway sends the delivery again and it is acked then).
pub const DELIVERY_ACKS_MAX: usize = 8;

/// The first retransmission timeout for a random number: 2 s plus up to 1 s.
pub fn initial_timeout_ms(rand: u32) -> u64 {
    ACK_TIMEOUT_MS + ((u64::from(rand) * ACK_RANDOM_SPREAD_MS) >> 32)
}

/// What a session needs to start.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// 1..=32 bytes, as registered with the cluster.
    pub device_id: &'a [u8],
    pub key: [u8; KEY_LEN],
    /// New at every boot: see the module doc.
    pub boot_id: u64,
    /// [`wire::caps`] bits.
    pub caps: u8,
    pub ping_interval_ms: u64,
}

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Append,
    Subscribe,
    Offload,
}

/// What the application should know. Borrowed data lives in the buffer
/// given to [`Session::handle_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The gateway answered the hello; requests flow now.
    Connected { session_id: u32 },
    /// The gateway stopped answering (or said it has no session); the
    /// device says hello again and keeps its outbox.
    Disconnected,
    /// An append is committed (`topic_seq` is its number in the topic) or a
    /// subscribe is in place (`topic_seq` is the first number to come).
    Acked {
        seq: u32,
        kind: RequestKind,
        topic_seq: u64,
    },
    /// The gateway refused a request; it will not be retried.
    Rejected {
        seq: u32,
        kind: RequestKind,
        code: u8,
    },
    /// No answer after every retransmission. An append given up may or may
    /// not have been written; it is never written twice.
    GaveUp { seq: u32, kind: RequestKind },
    /// An element of a followed topic (already acked to the gateway).
    Delivery {
        topic: Topic<'a>,
        topic_seq: u64,
        payload: &'a [u8],
    },
    /// The result of an offloaded call.
    OffloadResult {
        seq: u32,
        status: u8,
        payload: &'a [u8],
    },
    /// The answer to a keepalive ping, with the time since its first send.
    Pong { rtt_ms: u64 },
}

/// Counts for the application and the device simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames sent, retransmissions included.
    pub sent: u32,
    /// Retransmissions of requests.
    pub retransmitted: u32,
    pub acked: u32,
    pub rejected: u32,
    pub gave_up: u32,
    pub delivered: u32,
    /// Answers to requests already answered (the gateway answered both the
    /// first send and a retransmission).
    pub stale_answers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for an answer; `sends == 0` means not sent yet.
    Active,
    /// Given up; reported by the next [`Session::poll_event`].
    Failed,
}

/// One outbox entry: the request's frame before sealing (sealing is
/// deterministic, so every send of it is the same bytes).
#[derive(Clone, Copy)]
struct Slot<const B: usize> {
    state: SlotState,
    kind: RequestKind,
    seq: u32,
    sends: u8,
    /// The caller's random number for the first timeout's spread.
    jitter: u32,
    /// When it was first sent (in this session).
    first_sent_ms: u64,
    timeout_ms: u64,
    deadline_ms: u64,
    len: u16,
    frame: [u8; B],
}

impl<const B: usize> Slot<B> {
    const EMPTY: Slot<B> = Slot {
        state: SlotState::Free,
        kind: RequestKind::Append,
        seq: 0,
        sends: 0,
        jitter: 0,
        first_sent_ms: 0,
        timeout_ms: 0,
        deadline_ms: 0,
        len: 0,
        frame: [0; B],
    };
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Connecting { deadline_ms: u64, timeout_ms: u64 },
    Up { session_id: u32, window: u8 },
}

/// A keepalive in progress. Each send is a new frame (pings carry nothing
/// worth deduplicating); any pong answering one of them ends it.
#[derive(Debug, Clone, Copy)]
struct Ping {
    first_seq: u32,
    first_sent_ms: u64,
    sends: u8,
    due: bool,
    timeout_ms: u64,
    deadline_ms: u64,
}

/// The device's session with its gateway: `N` outbox slots of `B` bytes
/// (a request's whole frame, tag included, must fit in `B`).
pub struct Session<const N: usize, const B: usize> {
    device_id: [u8; DEVICE_ID_LEN_MAX],
    device_id_len: u8,
    caps: u8,
    cipher: Cipher,
    boot_id: u64,
    ping_interval_ms: u64,
    link: Link,
    /// The next device sequence number (0 is the hello's).
    next_seq: u32,
    /// Gateway sequence numbers received in this session.
    rx: ReplayWindow,
    /// The session `rx` belongs to (0: none yet).
    last_session_id: u32,
    /// The windows of the sessions before it, newest first ((0, _): none):
    /// a device that goes back to a gateway that still holds its session
    /// gets that session again, whose old frames still open, so its window
    /// must come back with it.
    past: [(u32, ReplayWindow); SESSIONS_KEPT],
    /// Hellos sent in this boot: the last one's [`Hello::attempt`].
    attempt: u32,
    /// Whether the last hello's answer was taken: it is taken once, so a
    /// copy of it (or another gateway's answer to the same hello, replayed
    /// to it) is refused after the session is lost, until the next hello.
    answered: bool,
    outbox: [Slot<B>; N],
    acks: [u32; DELIVERY_ACKS_MAX],
    acks_len: usize,
    ping: Option<Ping>,
    last_rx_ms: u64,
    /// A [`Event::Disconnected`] not reported yet.
    disconnected: bool,
    /// xorshift32 state for the hello's and the ping's jitter.
    rng: u32,
    /// The smoothed time to an answer and its variation, in ms (RFC
    /// 6298); 0 until an answer was timed.
    srtt_ms: u32,
    rttvar_ms: u32,
    drops: Drops,
    stats: Stats,
}

/// Emits `msg` into `out` and seals it.
fn seal_into(
    cipher: &Cipher,
    msg: &Message<'_>,
    seq: u32,
    ctx: &Context,
    out: &mut [u8],
) -> Result<usize> {
    let len = msg.emit(seq, out)?;
    let frame = out.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    cipher.seal(frame, ctx)?;
    Ok(len)
}

impl<const N: usize, const B: usize> Session<N, B> {
    /// A session that will say hello at `now_ms`. `rand` seeds the jitter of
    /// hellos and pings.
    pub fn new(config: &Config<'_>, now_ms: u64, rand: u32) -> Result<Self> {
        let id_len = config.device_id.len();
        if id_len == 0 || id_len > DEVICE_ID_LEN_MAX {
            return Err(Error::BadField);
        }
        let mut device_id = [0; DEVICE_ID_LEN_MAX];
        device_id[..id_len].copy_from_slice(config.device_id);
        let mut s = Session {
            device_id,
            device_id_len: id_len as u8,
            caps: config.caps,
            cipher: Cipher::new(&config.key),
            boot_id: config.boot_id,
            ping_interval_ms: config.ping_interval_ms,
            link: Link::Connecting {
                deadline_ms: now_ms,
                timeout_ms: 0,
            },
            next_seq: 1,
            rx: ReplayWindow::new(),
            last_session_id: 0,
            past: [(0, ReplayWindow::new()); SESSIONS_KEPT],
            attempt: 0,
            answered: false,
            outbox: [const { Slot::EMPTY }; N],
            acks: [0; DELIVERY_ACKS_MAX],
            acks_len: 0,
            ping: None,
            last_rx_ms: now_ms,
            disconnected: false,
            rng: rand | 1,
            srtt_ms: 0,
            rttvar_ms: 0,
            drops: Drops::default(),
            stats: Stats::default(),
        };
        let t = s.jitter_timeout();
        s.link = Link::Connecting {
            deadline_ms: now_ms,
            timeout_ms: t,
        };
        Ok(s)
    }

    fn jitter_timeout(&mut self) -> u64 {
        // xorshift32: enough to keep devices that booted together apart.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        initial_timeout_ms(x)
    }

    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }

    /// The gateway's session id, once connected.
    pub fn session_id(&self) -> Option<u32> {
        match self.link {
            Link::Up { session_id, .. } => Some(session_id),
            Link::Connecting { .. } => None,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.session_id().is_some()
    }

    pub fn drops(&self) -> Drops {
        self.drops
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Makes `session_id`'s window the current one: its own if it is one of
    /// the last [`SESSIONS_KEPT`] sessions, else a new one; the current
    /// one is kept among them.
    fn switch_window(&mut self, session_id: u32) {
        let kept = self
            .past
            .iter()
            .position(|(id, _)| *id == session_id)
            .map(|i| {
                let w = self.past[i].1;
                self.past.copy_within(i + 1.., i);
                self.past[SESSIONS_KEPT - 1] = (0, ReplayWindow::new());
                w
            });
        if self.last_session_id != 0 {
            self.past.copy_within(..SESSIONS_KEPT - 1, 1);
            self.past[0] = (self.last_session_id, self.rx);
        }
        self.rx = kept.unwrap_or_else(ReplayWindow::new);
        self.last_session_id = session_id;
    }

    /// The attempt number of the last hello sent (0 before the first): what
    /// its answer must name.
    pub fn hello_attempt(&self) -> u32 {
        self.attempt
    }

    /// Requests waiting for an answer or for their first send.
    pub fn outbox_len(&self) -> usize {
        self.outbox
            .iter()
            .filter(|s| s.state == SlotState::Active)
            .count()
    }

    /// Queues a reading for `topic`; returns its device sequence number,
    /// which [`Event::Acked`] or [`Event::GaveUp`] will name.
    pub fn append(&mut self, topic: Topic<'_>, payload: &[u8], rand: u32) -> Result<u32> {
        let msg = Message::Append(wire::Append { topic, payload });
        self.enqueue(RequestKind::Append, &msg, rand)
    }

    /// Queues a subscription to `topic` from element `from` (0: the next).
    pub fn subscribe(&mut self, topic: Topic<'_>, from: u64, rand: u32) -> Result<u32> {
        let msg = Message::Subscribe(Subscribe { topic, from });
        self.enqueue(RequestKind::Subscribe, &msg, rand)
    }

    /// Queues a request to run `handler` on `payload` at the gateway.
    pub fn offload(&mut self, handler: &[u8], payload: &[u8], rand: u32) -> Result<u32> {
        let msg = Message::Offload(Offload { handler, payload });
        self.enqueue(RequestKind::Offload, &msg, rand)
    }

    fn enqueue(&mut self, kind: RequestKind, msg: &Message<'_>, rand: u32) -> Result<u32> {
        let seq = self.next_seq;
        if seq > SEQ_MAX {
            return Err(Error::SeqExhausted);
        }
        let slot = self
            .outbox
            .iter_mut()
            .find(|s| s.state == SlotState::Free)
            .ok_or(Error::OutboxFull)?;
        let len = msg.emit(seq, &mut slot.frame).map_err(|e| match e {
            Error::BufferTooSmall => Error::TooLong,
            e => e,
        })?;
        *slot = Slot {
            state: SlotState::Active,
            kind,
            seq,
            sends: 0,
            jitter: rand,
            first_sent_ms: 0,
            timeout_ms: 0,
            deadline_ms: 0,
            len: len as u16,
            frame: slot.frame,
        };
        self.next_seq += 1;
        Ok(seq)
    }

    fn take_seq(&mut self) -> Result<u32> {
        let seq = self.next_seq;
        if seq > SEQ_MAX {
            return Err(Error::SeqExhausted);
        }
        self.next_seq += 1;
        Ok(seq)
    }

    /// Gives up on expired requests and notices a dead link.
    fn handle_timers(&mut self, now_ms: u64) {
        for slot in &mut self.outbox {
            if slot.state == SlotState::Active
                && slot.sends > MAX_RETRANSMIT
                && now_ms >= slot.deadline_ms
                && now_ms.saturating_sub(slot.first_sent_ms) >= GIVE_UP_AFTER_MS
            {
                slot.state = SlotState::Failed;
            }
        }
        if let Link::Up { .. } = self.link {
            match &mut self.ping {
                Some(p) if !p.due && now_ms >= p.deadline_ms => {
                    if p.sends > MAX_RETRANSMIT {
                        self.lose(now_ms);
                    } else {
                        p.due = true;
                    }
                }
                Some(_) => {}
                None if now_ms >= self.last_rx_ms.saturating_add(self.ping_interval_ms) => {
                    self.start_ping(now_ms);
                }
                None => {}
            }
        }
    }

    fn start_ping(&mut self, now_ms: u64) {
        let timeout_ms = self.jitter_timeout();
        self.ping = Some(Ping {
            first_seq: self.next_seq,
            first_sent_ms: now_ms,
            sends: 0,
            due: true,
            timeout_ms,
            deadline_ms: now_ms,
        });
    }

    /// Drops the session and says hello again at once, keeping the outbox:
    /// for a device that moves to another gateway (its requests keep their
    /// sequence numbers, so a reading the old gateway already wrote is not
    /// written again). No [`Event::Disconnected`] follows: the caller knows.
    pub fn reconnect(&mut self, now_ms: u64) {
        self.lose(now_ms);
        self.disconnected = false;
    }

    /// The session is gone: say hello again, keep the outbox.
    fn lose(&mut self, now_ms: u64) {
        let t = self.jitter_timeout();
        self.link = Link::Connecting {
            deadline_ms: now_ms,
            timeout_ms: t,
        };
        self.ping = None;
        self.acks_len = 0;
        self.disconnected = true;
        for slot in &mut self.outbox {
            if slot.state == SlotState::Active {
                // Its timeouts start over at its next first send.
                slot.sends = 0;
            }
        }
    }

    /// Writes the next frame to send into `out` and returns its length, or
    /// `None` when nothing is due. Call until `None` after every input and
    /// every new request, and when [`Session::poll_timeout`] comes.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut [u8]) -> Result<Option<usize>> {
        self.handle_timers(now_ms);
        let (session_id, window) = match self.link {
            Link::Connecting {
                deadline_ms,
                timeout_ms,
            } => {
                if now_ms < deadline_ms {
                    return Ok(None);
                }
                // Each hello is a new attempt (never 0), which its answer
                // must name.
                self.attempt = self.attempt.wrapping_add(1).max(1);
                self.answered = false;
                let hello = Message::Hello(Hello {
                    device_id: &self.device_id[..usize::from(self.device_id_len)],
                    boot_id: self.boot_id,
                    caps: self.caps,
                    attempt: self.attempt,
                });
                let ctx = Context {
                    boot_id: self.boot_id,
                    session_id: self.attempt,
                    direction: Direction::Up,
                };
                let len = seal_into(&self.cipher, &hello, 0, &ctx, out)?;
                self.link = Link::Connecting {
                    deadline_ms: now_ms.saturating_add(timeout_ms),
                    timeout_ms: (timeout_ms * 2).min(HELLO_TIMEOUT_MAX_MS),
                };
                self.stats.sent = self.stats.sent.saturating_add(1);
                return Ok(Some(len));
            }
            Link::Up { session_id, window } => (session_id, window),
        };
        let ctx = Context {
            boot_id: self.boot_id,
            session_id,
            direction: Direction::Up,
        };

        // Acks first: they are small and the gateway waits on them.
        if self.acks_len > 0 {
            let acked = self.acks[0];
            let seq = self.take_seq()?;
            let len = seal_into(
                &self.cipher,
                &Message::DeliveryAck(DeliveryAck { acked }),
                seq,
                &ctx,
                out,
            )?;
            self.acks.copy_within(1..self.acks_len, 0);
            self.acks_len -= 1;
            self.stats.sent = self.stats.sent.saturating_add(1);
            return Ok(Some(len));
        }

        if let Some(p) = self.ping
            && p.due
        {
            let seq = self.take_seq()?;
            let len = seal_into(&self.cipher, &Message::Ping, seq, &ctx, out)?;
            self.ping = Some(Ping {
                sends: p.sends + 1,
                due: false,
                timeout_ms: p.timeout_ms * 2,
                deadline_ms: now_ms.saturating_add(p.timeout_ms),
                ..p
            });
            self.stats.sent = self.stats.sent.saturating_add(1);
            return Ok(Some(len));
        }

        // Retransmissions that are due, then new requests in order while
        // the gateway's window allows.
        let in_flight = self
            .outbox
            .iter()
            .filter(|s| s.state == SlotState::Active && s.sends > 0)
            .count();
        let due = self
            .outbox
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SlotState::Active && s.sends > 0 && now_ms >= s.deadline_ms)
            .min_by_key(|(_, s)| s.seq)
            .map(|(i, _)| i);
        let next = due.or_else(|| {
            if in_flight >= usize::from(window) {
                return None;
            }
            self.outbox
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state == SlotState::Active && s.sends == 0)
                .min_by_key(|(_, s)| s.seq)
                .map(|(i, _)| i)
        });
        let Some(i) = next else {
            return Ok(None);
        };
        let first_timeout = self.first_timeout_ms(self.outbox[i].jitter);
        let slot = &mut self.outbox[i];
        if slot.sends == 0 {
            slot.first_sent_ms = now_ms;
            slot.timeout_ms = first_timeout;
        }
        let len = usize::from(slot.len);
        let frame = out.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        frame.copy_from_slice(&slot.frame[..len]);
        self.cipher.seal(frame, &ctx)?;
        if slot.sends > 0 {
            self.stats.retransmitted = self.stats.retransmitted.saturating_add(1);
        }
        slot.sends += 1;
        slot.deadline_ms = now_ms.saturating_add(slot.timeout_ms);
        slot.timeout_ms = (slot.timeout_ms * 2).min(RETRANSMIT_TIMEOUT_MAX_MS);
        self.stats.sent = self.stats.sent.saturating_add(1);
        Ok(Some(len))
    }

    /// The next time [`Session::poll_transmit`] or [`Session::poll_event`]
    /// has something to do, if nothing else happens first (a time at or
    /// before now means now).
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t = match self.link {
            Link::Connecting { deadline_ms, .. } => Some(deadline_ms),
            Link::Up { .. } => Some(match self.ping {
                Some(p) if p.due => 0,
                Some(p) => p.deadline_ms,
                None => self.last_rx_ms.saturating_add(self.ping_interval_ms),
            }),
        };
        for s in &self.outbox {
            let d = match s.state {
                SlotState::Active if s.sends > 0 => s.deadline_ms,
                SlotState::Failed => 0,
                _ => continue,
            };
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        t
    }

    /// Events that come from time passing: [`Event::GaveUp`] and
    /// [`Event::Disconnected`]. Call until `None`.
    pub fn poll_event(&mut self, now_ms: u64) -> Option<Event<'static>> {
        self.handle_timers(now_ms);
        if self.disconnected {
            self.disconnected = false;
            return Some(Event::Disconnected);
        }
        let slot = self
            .outbox
            .iter_mut()
            .find(|s| s.state == SlotState::Failed)?;
        slot.state = SlotState::Free;
        self.stats.gave_up = self.stats.gave_up.saturating_add(1);
        Some(Event::GaveUp {
            seq: slot.seq,
            kind: slot.kind,
        })
    }

    /// Takes one received frame (decrypted in place in `buf`). A frame that
    /// is dropped comes back as the error saying why, and is counted in
    /// [`Session::drops`]; the session is unchanged by it.
    pub fn handle_input<'a>(
        &mut self,
        now_ms: u64,
        buf: &'a mut [u8],
    ) -> Result<Option<Event<'a>>> {
        let r = self.input(now_ms, buf);
        if let Err(e) = r {
            self.drops.count(e);
        }
        r
    }

    fn input<'a>(&mut self, now_ms: u64, buf: &'a mut [u8]) -> Result<Option<Event<'a>>> {
        let (ty, seq) = {
            let f = Frame::new_checked(&*buf)?;
            (f.frame_type().ok_or(Error::UnknownType)?, f.seq())
        };
        let session_id = match self.link {
            Link::Connecting { .. } => {
                if ty != Type::HelloAck {
                    return Err(Error::NotConnected);
                }
                if seq != 0 {
                    return Err(Error::BadField);
                }
                // Only the answer to the last hello opens (an earlier one's
                // nonce differs), so a recorded answer cannot be replayed.
                let ctx = Context {
                    boot_id: self.boot_id,
                    session_id: self.attempt,
                    direction: Direction::Down,
                };
                self.cipher.open(buf, &ctx)?;
                let Message::HelloAck(ack) = Message::parse(&Frame::new_unchecked(&*buf))? else {
                    return Err(Error::Unexpected);
                };
                if ack.attempt != self.attempt || self.answered {
                    return Err(Error::Replayed);
                }
                self.answered = true;
                self.link = Link::Up {
                    session_id: ack.session_id,
                    window: ack.window,
                };
                // The same gateway session again (a hello after a silence,
                // or back at a gateway that kept it): its old frames are
                // still valid under these nonces, so its window must
                // remember them. A new session id makes new nonces, under
                // which no old frame opens.
                if ack.session_id != self.last_session_id {
                    self.switch_window(ack.session_id);
                }
                self.last_rx_ms = now_ms;
                // A loss not reported yet is over: reported after this
                // Connected, it would leave the caller thinking it is
                // disconnected while it is not.
                self.disconnected = false;
                // Ping at once: it tells a gateway that held the session as
                // pending (see `gateway`) that this hello was not a replay.
                self.start_ping(now_ms);
                return Ok(Some(Event::Connected {
                    session_id: ack.session_id,
                }));
            }
            Link::Up { session_id, .. } => session_id,
        };
        if ty == Type::HelloAck {
            // A late copy of the answer we already have.
            return Err(Error::Unexpected);
        }
        let ctx = Context {
            boot_id: self.boot_id,
            session_id,
            direction: Direction::Down,
        };
        self.cipher.open(buf, &ctx)?;
        // A frame that only goes up is dropped before the replay window
        // takes its seq (a dropped frame leaves the session as it was).
        if matches!(
            ty,
            Type::Hello
                | Type::Append
                | Type::Subscribe
                | Type::DeliveryAck
                | Type::Ping
                | Type::Offload
        ) {
            return Err(Error::Unexpected);
        }
        let verdict = self.rx.check(seq);
        if verdict == Verdict::TooOld {
            return Err(Error::TooOld);
        }
        let buf: &'a [u8] = buf;
        let msg = Message::parse(&Frame::new_unchecked(buf))?;
        if verdict == Verdict::Duplicate {
            // The gateway sent the delivery again: our ack was lost.
            if let Message::Delivery(_) = msg {
                self.queue_ack(seq);
            }
            return Err(Error::Replayed);
        }
        self.rx.accept(seq);
        self.last_rx_ms = now_ms;
        match msg {
            Message::Ack(a) => Ok(self
                .complete(
                    a.acked,
                    &[RequestKind::Append, RequestKind::Subscribe],
                    now_ms,
                )
                .map(|kind| {
                    self.stats.acked = self.stats.acked.saturating_add(1);
                    Event::Acked {
                        seq: a.acked,
                        kind,
                        topic_seq: a.topic_seq,
                    }
                })),
            Message::OffloadResult(o) => Ok(self
                .complete(o.acked, &[RequestKind::Offload], now_ms)
                .map(|_| Event::OffloadResult {
                    seq: o.acked,
                    status: o.status,
                    payload: o.payload,
                })),
            Message::Delivery(d) => {
                self.queue_ack(seq);
                self.stats.delivered = self.stats.delivered.saturating_add(1);
                Ok(Some(Event::Delivery {
                    topic: d.topic,
                    topic_seq: d.topic_seq,
                    payload: d.payload,
                }))
            }
            Message::Pong(p) => match self.ping {
                Some(ping) if p.acked >= ping.first_seq && p.acked < self.next_seq => {
                    self.ping = None;
                    Ok(Some(Event::Pong {
                        rtt_ms: now_ms.saturating_sub(ping.first_sent_ms),
                    }))
                }
                _ => {
                    self.stats.stale_answers = self.stats.stale_answers.saturating_add(1);
                    Ok(None)
                }
            },
            Message::Error(e) => {
                if e.about == 0 && e.code == wire::code::UNKNOWN_SESSION {
                    self.lose(now_ms);
                    self.disconnected = false;
                    return Ok(Some(Event::Disconnected));
                }
                let kinds = [
                    RequestKind::Append,
                    RequestKind::Subscribe,
                    RequestKind::Offload,
                ];
                Ok(self.complete(e.about, &kinds, now_ms).map(|kind| {
                    self.stats.rejected = self.stats.rejected.saturating_add(1);
                    Event::Rejected {
                        seq: e.about,
                        kind,
                        code: e.code,
                    }
                }))
            }
            // Frames that only go up (dropped above).
            Message::Hello(_)
            | Message::HelloAck(_)
            | Message::Append(_)
            | Message::Subscribe(_)
            | Message::DeliveryAck(_)
            | Message::Ping
            | Message::Offload(_) => Err(Error::Unexpected),
        }
    }

    /// Frees the sent request `seq` of one of `kinds`; `None` (counted) if
    /// there is none, which is an answer to a retransmission.
    fn complete(&mut self, seq: u32, kinds: &[RequestKind], now_ms: u64) -> Option<RequestKind> {
        let slot = self.outbox.iter_mut().find(|s| {
            s.state == SlotState::Active && s.sends > 0 && s.seq == seq && kinds.contains(&s.kind)
        });
        match slot {
            Some(slot) => {
                slot.state = SlotState::Free;
                let kind = slot.kind;
                // Karn: only an answer to a single send times the link (an
                // offload's time is the handler's too).
                if slot.sends == 1 && kind != RequestKind::Offload {
                    let sample = now_ms.saturating_sub(slot.first_sent_ms);
                    self.time_answer(sample);
                }
                Some(kind)
            }
            None => {
                self.stats.stale_answers = self.stats.stale_answers.saturating_add(1);
                None
            }
        }
    }

    /// Folds one timed answer into the estimate (RFC 6298, §2).
    fn time_answer(&mut self, sample_ms: u64) {
        let r = sample_ms.clamp(1, u64::from(u32::MAX / 8)) as u32;
        if self.srtt_ms == 0 {
            self.srtt_ms = r;
            self.rttvar_ms = r / 2;
        } else {
            self.rttvar_ms = (3 * self.rttvar_ms + self.srtt_ms.abs_diff(r)) / 4;
            self.srtt_ms = (7 * self.srtt_ms + r) / 8;
        }
    }

    /// The first timeout of a request with random number `jitter`: CoAP's
    /// until an answer was timed, then the measured one (module doc).
    fn first_timeout_ms(&self, jitter: u32) -> u64 {
        if self.srtt_ms == 0 {
            return initial_timeout_ms(jitter);
        }
        let rto = (u64::from(self.srtt_ms) + 4 * u64::from(self.rttvar_ms).max(1))
            .clamp(RTO_MIN_MS, ACK_TIMEOUT_MS);
        rto + ((u64::from(jitter) * (rto / 2)) >> 32)
    }

    /// The current first timeout without spread, in ms (for the curious:
    /// the simulator prints it).
    pub fn retransmit_timeout_ms(&self) -> u64 {
        self.first_timeout_ms(0)
    }

    fn queue_ack(&mut self, gateway_seq: u32) {
        if self.acks[..self.acks_len].contains(&gateway_seq) {
            return;
        }
        if self.acks_len == DELIVERY_ACKS_MAX {
            self.acks.copy_within(1.., 0);
            self.acks_len -= 1;
        }
        self.acks[self.acks_len] = gateway_seq;
        self.acks_len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ack, HelloAck, Pong};

    const KEY: [u8; KEY_LEN] = *b"0123456789abcdef";
    const BOOT: u64 = 0xb007;

    fn config() -> Config<'static> {
        Config {
            device_id: b"dev-1",
            key: KEY,
            boot_id: BOOT,
            caps: 0,
            ping_interval_ms: PING_INTERVAL_MS,
        }
    }

    /// A frame from the gateway, sealed as the gateway would.
    fn down(msg: Message<'_>, seq: u32, session_id: u32, out: &mut [u8]) -> usize {
        let ctx = Context {
            boot_id: BOOT,
            session_id,
            direction: Direction::Down,
        };
        seal_into(&Cipher::new(&KEY), &msg, seq, &ctx, out).unwrap()
    }

    fn connected(now: u64) -> Session<4, 64> {
        let mut s = Session::<4, 64>::new(&config(), now, 12345).unwrap();
        let mut out = [0u8; 128];
        let len = s.poll_transmit(now, &mut out).unwrap().unwrap();
        assert_eq!(
            Frame::new_checked(&out[..len]).unwrap().frame_type(),
            Some(Type::Hello)
        );
        let ack = Message::HelloAck(HelloAck {
            session_id: 9,
            window: 2,
            attempt: s.hello_attempt(),
        });
        let len = down(ack, 0, s.hello_attempt(), &mut out);
        let ev = s.handle_input(now, &mut out[..len]).unwrap();
        assert_eq!(ev, Some(Event::Connected { session_id: 9 }));
        // The confirming ping.
        let len = s.poll_transmit(now, &mut out).unwrap().unwrap();
        assert_eq!(
            Frame::new_checked(&out[..len]).unwrap().frame_type(),
            Some(Type::Ping)
        );
        let seq = Frame::new_checked(&out[..len]).unwrap().seq();
        let len = down(Message::Pong(Pong { acked: seq }), 1, 9, &mut out);
        assert!(matches!(
            s.handle_input(now, &mut out[..len]),
            Ok(Some(Event::Pong { .. }))
        ));
        s
    }

    #[test]
    fn timed_answers_shorten_the_first_timeout_but_not_the_give_up() {
        let mut s = connected(0);
        let mut out = [0u8; 64];
        let mut now = 0;
        // Ten appends, each acked 5 ms after its send.
        for _ in 0..10 {
            let seq = s.append(Topic::Index(1), b"x", 0).unwrap();
            let len = s.poll_transmit(now, &mut out).unwrap().unwrap();
            assert_eq!(Frame::new_checked(&out[..len]).unwrap().seq(), seq);
            now += 5;
            let len = down(
                Message::Ack(Ack {
                    acked: seq,
                    topic_seq: 1,
                }),
                100 + seq,
                9,
                &mut out,
            );
            assert!(matches!(
                s.handle_input(now, &mut out[..len]),
                Ok(Some(Event::Acked { .. }))
            ));
        }
        assert_eq!(s.retransmit_timeout_ms(), RTO_MIN_MS);
        // The next is lost: it is sent again after 200 to 300 ms, not 2 s.
        let seq = s.append(Topic::Index(1), b"y", u32::MAX).unwrap();
        let start = now;
        let mut sends = [0u64; 16];
        let mut n = 0;
        let mut gave_up = None;
        while gave_up.is_none() && now < start + 200_000 {
            while let Some(len) = s.poll_transmit(now, &mut out).unwrap() {
                let f = Frame::new_checked(&out[..len]).unwrap();
                if f.frame_type() == Some(Type::Append) {
                    assert_eq!(f.seq(), seq);
                    sends[n] = now - start;
                    n += 1;
                }
            }
            if let Some(Event::GaveUp { .. }) = s.poll_event(now) {
                gave_up = Some(now - start);
            }
            now = s.poll_timeout().unwrap().max(now + 1);
        }
        assert_eq!(&sends[..3], &[0, 299, 897]);
        // Not given up after 4 retransmissions (under 5 s): only after 45 s.
        let gave_up = gave_up.unwrap();
        assert!(gave_up >= GIVE_UP_AFTER_MS, "gave up after {gave_up} ms");
        assert!(n > 1 + usize::from(MAX_RETRANSMIT) && n < 16, "{n} sends");
    }

    #[test]
    fn first_timeout_is_two_to_three_seconds() {
        assert_eq!(initial_timeout_ms(0), 2_000);
        assert_eq!(initial_timeout_ms(u32::MAX), 2_999);
        assert_eq!(initial_timeout_ms(1 << 31), 2_500);
    }

    #[test]
    fn hello_is_retried_with_backoff_until_answered() {
        let mut s = Session::<2, 64>::new(&config(), 0, 7).unwrap();
        let mut out = [0u8; 64];
        let mut sends = 0;
        let mut now = 0;
        for _ in 0..20 {
            while s.poll_transmit(now, &mut out).unwrap().is_some() {
                sends += 1;
            }
            let next = s.poll_timeout().unwrap();
            assert!(next > now);
            assert!(next - now <= HELLO_TIMEOUT_MAX_MS);
            now = next;
        }
        assert_eq!(sends, 20);
        assert!(!s.is_connected());
        // Anything but a hello ack is dropped before a session.
        let len = down(Message::Ping, 1, 9, &mut out);
        assert_eq!(
            s.handle_input(now, &mut out[..len]),
            Err(Error::NotConnected)
        );
    }

    #[test]
    fn append_is_retransmitted_four_times_then_given_up() {
        let mut s = connected(0);
        let seq = s.append(Topic::Index(1), b"x", u32::MAX).unwrap();
        let mut out = [0u8; 64];
        let mut sends = [0u64; 8];
        let mut n = 0;
        let mut first = [0u8; 64];
        let mut now = 0;
        let mut gave_up = None;
        while now < 200_000 && gave_up.is_none() {
            while let Some(len) = s.poll_transmit(now, &mut out).unwrap() {
                let f = Frame::new_checked(&out[..len]).unwrap();
                if f.frame_type() == Some(Type::Append) {
                    assert_eq!(f.seq(), seq);
                    if n == 0 {
                        first[..len].copy_from_slice(&out[..len]);
                    } else {
                        // Every retransmission is the same bytes.
                        assert_eq!(&first[..len], &out[..len]);
                    }
                    sends[n] = now;
                    n += 1;
                }
            }
            if let Some(Event::GaveUp { seq, .. }) = s.poll_event(now) {
                gave_up = Some((seq, now));
            }
            now = s.poll_timeout().unwrap().max(now + 1);
        }
        assert_eq!(n, 1 + usize::from(MAX_RETRANSMIT));
        // 2,999 ms doubling: 0, 2999, 8997, 20993, 44985; given up 47,984 later.
        assert_eq!(&sends[..5], &[0, 2_999, 8_997, 20_993, 44_985]);
        assert_eq!(gave_up, Some((seq, 92_969)));
        assert_eq!(s.stats().gave_up, 1);
        assert_eq!(s.stats().retransmitted, 4);
    }

    #[test]
    fn window_and_outbox_are_bounded() {
        let mut s = connected(0);
        for i in 0..4 {
            s.append(Topic::Index(i), b"r", 0).unwrap();
        }
        assert_eq!(s.append(Topic::Index(0), b"r", 0), Err(Error::OutboxFull));
        assert_eq!(
            s.append(Topic::Index(0), &[0; 64], 0),
            Err(Error::OutboxFull)
        );
        let mut out = [0u8; 64];
        let mut sent = 0;
        while s.poll_transmit(0, &mut out).unwrap().is_some() {
            sent += 1;
        }
        assert_eq!(sent, 2, "the gateway's window is 2");
        // An ack opens the window.
        let len = down(
            Message::Ack(Ack {
                acked: 2,
                topic_seq: 10,
            }),
            2,
            9,
            &mut out,
        );
        let mut buf = out;
        assert_eq!(
            s.handle_input(0, &mut buf[..len]).unwrap(),
            Some(Event::Acked {
                seq: 2,
                kind: RequestKind::Append,
                topic_seq: 10
            })
        );
        // The same ack again is a replay, and a stale answer.
        let mut buf = out;
        assert_eq!(s.handle_input(0, &mut buf[..len]), Err(Error::Replayed));
        assert_eq!(s.drops().replayed, 1);
        assert!(s.poll_transmit(0, &mut out).unwrap().is_some());
        assert!(s.poll_transmit(0, &mut out).unwrap().is_none());
        // Too big for a slot.
        let mut s = connected(0);
        assert_eq!(s.append(Topic::Index(0), &[0; 64], 0), Err(Error::TooLong));
    }

    #[test]
    fn deliveries_are_acked_and_reported_once() {
        let mut s = connected(0);
        let mut out = [0u8; 64];
        let msg = Message::Delivery(wire::Delivery {
            topic: Topic::Index(2),
            topic_seq: 77,
            payload: b"on",
        });
        let len = down(msg, 5, 9, &mut out);
        let mut buf = out;
        assert_eq!(
            s.handle_input(10, &mut buf[..len]).unwrap(),
            Some(Event::Delivery {
                topic: Topic::Index(2),
                topic_seq: 77,
                payload: b"on"
            })
        );
        let mut buf = out;
        assert_eq!(s.handle_input(11, &mut buf[..len]), Err(Error::Replayed));
        let mut acks = 0;
        while let Some(l) = s.poll_transmit(12, &mut buf).unwrap() {
            let f = Frame::new_checked(&buf[..l]).unwrap();
            assert_eq!(f.frame_type(), Some(Type::DeliveryAck));
            acks += 1;
        }
        assert_eq!(acks, 1, "one ack queued for both copies");
        assert_eq!(s.stats().delivered, 1);
    }

    #[test]
    fn forged_garbage_and_wrong_direction_are_dropped_and_counted() {
        let mut s = connected(0);
        let mut out = [0u8; 64];
        let len = down(Message::Ping, 7, 9, &mut out);
        assert_eq!(s.handle_input(0, &mut out[..len]), Err(Error::Unexpected));
        let len = down(Message::Ping, 8, 10, &mut out);
        assert_eq!(s.handle_input(0, &mut out[..len]), Err(Error::Forged));
        let mut junk = [0x5au8; 40];
        assert!(s.handle_input(0, &mut junk).is_err());
        assert!(s.handle_input(0, &mut []).is_err());
        let d = s.drops();
        assert_eq!((d.unexpected, d.forged, d.malformed), (1, 1, 2));
    }

    #[test]
    fn silence_brings_pings_then_a_new_hello() {
        let mut s = connected(0);
        let mut out = [0u8; 64];
        let mut now = 0;
        let mut pings = 0;
        let mut disconnected = false;
        while now < 400_000 && !disconnected {
            while let Some(len) = s.poll_transmit(now, &mut out).unwrap() {
                if Frame::new_checked(&out[..len]).unwrap().frame_type() == Some(Type::Ping) {
                    pings += 1;
                }
            }
            while let Some(ev) = s.poll_event(now) {
                disconnected |= ev == Event::Disconnected;
            }
            now = s.poll_timeout().unwrap().max(now + 1);
        }
        assert!(disconnected);
        assert_eq!(pings, 1 + usize::from(MAX_RETRANSMIT));
        assert!(!s.is_connected());
        let len = s.poll_transmit(now, &mut out).unwrap().unwrap();
        assert_eq!(
            Frame::new_checked(&out[..len]).unwrap().frame_type(),
            Some(Type::Hello)
        );
    }

    /// Found by the fuzzer (mcu-bridge/fuzz, target device): a session lost
    /// to silence, answered again before the caller polled its events,
    /// reported Connected and then the stale Disconnected.
    #[test]
    fn a_loss_answered_before_it_is_polled_is_not_reported_after_connected() {
        let mut s = connected(0);
        let mut out = [0u8; 64];
        let mut now = 0;
        // Pings unanswered until the session is given up; nothing polls
        // the events meanwhile.
        while s.is_connected() {
            while s.poll_transmit(now, &mut out).unwrap().is_some() {}
            now = s.poll_timeout().unwrap().max(now + 1);
        }
        while s.poll_transmit(now, &mut out).unwrap().is_some() {}
        let ack = Message::HelloAck(HelloAck {
            session_id: 9,
            window: 2,
            attempt: s.hello_attempt(),
        });
        let len = down(ack, 0, s.hello_attempt(), &mut out);
        assert_eq!(
            s.handle_input(now, &mut out[..len]).unwrap(),
            Some(Event::Connected { session_id: 9 })
        );
        assert_eq!(s.poll_event(now), None);
        assert!(s.is_connected());
    }

    /// Found by the fuzzer (mcu-bridge/fuzz, target device): an authentic
    /// frame of a type that only goes up was dropped as unexpected, but its
    /// seq had gone into the replay window (and its arrival reset the
    /// keepalive), so a dropped frame changed the session.
    #[test]
    fn a_frame_that_only_goes_up_leaves_the_window_and_the_keepalive() {
        let mut s = connected(0);
        let mut out = [0u8; 64];
        let deadline = s.poll_timeout();
        let up_only = Message::Subscribe(Subscribe {
            topic: Topic::Index(1),
            from: 0,
        });
        let len = down(up_only, 5, 9, &mut out);
        assert_eq!(
            s.handle_input(1_000, &mut out[..len]),
            Err(Error::Unexpected)
        );
        assert_eq!(s.poll_timeout(), deadline);
        let msg = Message::Delivery(wire::Delivery {
            topic: Topic::Index(0),
            topic_seq: 1,
            payload: b"d",
        });
        let len = down(msg, 5, 9, &mut out);
        assert!(matches!(
            s.handle_input(1_000, &mut out[..len]),
            Ok(Some(Event::Delivery { .. }))
        ));
    }

    #[test]
    fn ram_is_the_outbox_plus_a_little() {
        let small = core::mem::size_of::<Session<4, 64>>();
        let usual = core::mem::size_of::<Session<8, 128>>();
        extern crate std;
        std::println!("Session<4, 64>: {small} bytes; Session<8, 128>: {usual} bytes");
        // Slots are B bytes plus 40 of bookkeeping; the rest (keys, ids,
        // the replay windows of this session and the last SESSIONS_KEPT,
        // acks, counters) is under 400 bytes.
        assert!(small <= 4 * (64 + 40) + 400, "{small}");
        assert!(usual <= 8 * (128 + 40) + 400, "{usual}");
    }

    #[test]
    fn mangled_gateway_frames_change_nothing() {
        let mut s = connected(0);
        let seq = s.append(Topic::Index(1), b"x", 0).unwrap();
        let mut out = [0u8; 64];
        while s.poll_transmit(0, &mut out).unwrap().is_some() {}
        let mut good = [0u8; 64];
        let len = down(
            Message::Ack(Ack {
                acked: seq,
                topic_seq: 3,
            }),
            2,
            9,
            &mut good,
        );
        let before = s.drops().total();
        for bit in 0..len * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(s.handle_input(0, &mut b[..len]).is_err(), "bit {bit}");
        }
        for cut in 0..len {
            let mut b = good;
            assert!(s.handle_input(0, &mut b[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(s.drops().total() - before, (len * 9) as u32);
        assert_eq!(s.outbox_len(), 1);
        // The real one still works.
        assert!(matches!(
            s.handle_input(0, &mut good[..len]),
            Ok(Some(Event::Acked { .. }))
        ));
        assert_eq!(s.outbox_len(), 0);
    }

    #[test]
    fn a_hello_again_to_the_same_session_keeps_the_replay_window() {
        let mut s = connected(0);
        let mut out = [0u8; 64];
        let msg = Message::Delivery(wire::Delivery {
            topic: Topic::Index(0),
            topic_seq: 1,
            payload: b"d",
        });
        let len = down(msg, 5, 9, &mut out);
        let captured = out;
        assert!(matches!(
            s.handle_input(0, &mut out[..len]),
            Ok(Some(Event::Delivery { .. }))
        ));
        // Silence until the session is given up, then the same gateway
        // answers the new hello with the same session.
        let mut now = 0;
        while s.is_connected() {
            while s.poll_transmit(now, &mut out).unwrap().is_some() {}
            now = s.poll_timeout().unwrap().max(now + 1);
        }
        while s.poll_transmit(now, &mut out).unwrap().is_some() {}
        let ack = Message::HelloAck(HelloAck {
            session_id: 9,
            window: 2,
            attempt: s.hello_attempt(),
        });
        let l = down(ack, 0, s.hello_attempt(), &mut out);
        assert!(s.handle_input(now, &mut out[..l]).is_ok());
        let mut replay = captured;
        assert_eq!(
            s.handle_input(now, &mut replay[..len]),
            Err(Error::Replayed)
        );
    }

    /// A hello's answer recorded by an attacker and replayed to a later
    /// hello (after the device moved to another gateway and back) is not
    /// taken: it would reset the replay window and let the old session's
    /// deliveries in again.
    #[test]
    fn a_recorded_hello_ack_is_not_taken_for_a_later_hello() {
        let mut s = connected(0);
        assert_eq!(s.hello_attempt(), 1);
        let mut recorded = [0u8; 128];
        let ack = |session_id, attempt| {
            Message::HelloAck(HelloAck {
                session_id,
                window: 2,
                attempt,
            })
        };
        let recorded_len = down(ack(9, 1), 0, 1, &mut recorded);
        let mut out = [0u8; 128];
        // To another gateway: session 10.
        s.reconnect(10);
        while s.poll_transmit(10, &mut out).unwrap().is_some() {}
        assert_eq!(s.hello_attempt(), 2);
        let len = down(ack(10, 2), 0, 2, &mut out);
        assert_eq!(
            s.handle_input(10, &mut out[..len]).unwrap(),
            Some(Event::Connected { session_id: 10 })
        );
        // And on again: the recorded answer to the first hello is refused,
        // and so is the right answer to an older hello.
        s.reconnect(20);
        while s.poll_transmit(20, &mut out).unwrap().is_some() {}
        assert_eq!(s.hello_attempt(), 3);
        let mut replay = recorded;
        assert!(s.handle_input(20, &mut replay[..recorded_len]).is_err());
        let len = down(ack(10, 2), 0, 2, &mut out);
        assert!(s.handle_input(20, &mut out[..len]).is_err());
        // An answer naming another attempt under this one's nonce (only the
        // key's holder can make one) is refused too.
        let len = down(ack(9, 1), 0, 3, &mut out);
        assert_eq!(s.handle_input(20, &mut out[..len]), Err(Error::Replayed));
        assert!(!s.is_connected());
        let len = down(ack(11, 3), 0, 3, &mut out);
        assert_eq!(
            s.handle_input(20, &mut out[..len]).unwrap(),
            Some(Event::Connected { session_id: 11 })
        );
    }

    /// A hello's answer is taken once. Replayed after the session is lost
    /// and before the next hello (the attempt is still the same), the
    /// recorded answer is refused, and so is another gateway's answer to
    /// the same hello (replayed to it by an attacker), which would have
    /// started a new replay window and let that gateway's old deliveries
    /// in again.
    #[test]
    fn a_hello_ack_is_taken_once() {
        let mut s = connected(0);
        let ack = |session_id| {
            Message::HelloAck(HelloAck {
                session_id,
                window: 2,
                attempt: 1,
            })
        };
        let mut out = [0u8; 128];
        s.reconnect(10);
        assert_eq!(s.hello_attempt(), 1);
        let len = down(ack(9), 0, 1, &mut out);
        assert_eq!(s.handle_input(10, &mut out[..len]), Err(Error::Replayed));
        let len = down(ack(12), 0, 1, &mut out);
        assert_eq!(s.handle_input(10, &mut out[..len]), Err(Error::Replayed));
        assert!(!s.is_connected());
        assert_eq!(s.drops().total(), 2);
        // The next hello's answer is taken.
        let len = s.poll_transmit(10, &mut out).unwrap().unwrap();
        assert_eq!(
            Frame::new_checked(&out[..len]).unwrap().frame_type(),
            Some(Type::Hello)
        );
        assert_eq!(s.hello_attempt(), 2);
        let len = down(
            Message::HelloAck(HelloAck {
                session_id: 12,
                window: 2,
                attempt: 2,
            }),
            0,
            2,
            &mut out,
        );
        assert_eq!(
            s.handle_input(10, &mut out[..len]).unwrap(),
            Some(Event::Connected { session_id: 12 })
        );
    }

    /// Back at a gateway that kept an earlier session (A, then B, then A
    /// again, or through several more): that session's window comes back,
    /// so a frame of it recorded before is still a replay. Past
    /// [`SESSIONS_KEPT`] sessions ago a window is forgotten.
    #[test]
    fn going_back_to_an_earlier_session_restores_its_window() {
        let mut s = connected(0);
        let mut out = [0u8; 64];
        let delivery = Message::Delivery(wire::Delivery {
            topic: Topic::Index(0),
            topic_seq: 1,
            payload: b"d",
        });
        let len = down(delivery, 5, 9, &mut out);
        let captured = out;
        assert!(matches!(
            s.handle_input(0, &mut out[..len]),
            Ok(Some(Event::Delivery { .. }))
        ));
        let session = |s: &mut Session<4, 64>, id: u32, now: u64| {
            s.reconnect(now);
            let mut buf = [0u8; 64];
            while s.poll_transmit(now, &mut buf).unwrap().is_some() {}
            let ack = Message::HelloAck(HelloAck {
                session_id: id,
                window: 2,
                attempt: s.hello_attempt(),
            });
            let l = down(ack, 0, s.hello_attempt(), &mut buf);
            assert_eq!(
                s.handle_input(now, &mut buf[..l]).unwrap(),
                Some(Event::Connected { session_id: id })
            );
        };
        // To B, and back to A's session 9: the recorded delivery is a
        // replay.
        session(&mut s, 10, 10);
        session(&mut s, 9, 20);
        let mut replay = captured;
        assert_eq!(s.handle_input(20, &mut replay[..len]), Err(Error::Replayed));
        // Through SESSIONS_KEPT others and back: still remembered...
        for id in 11..11 + SESSIONS_KEPT as u32 - 1 {
            session(&mut s, id, 30);
        }
        session(&mut s, 9, 40);
        let mut replay = captured;
        assert_eq!(s.handle_input(40, &mut replay[..len]), Err(Error::Replayed));
        // ...one more, and it is forgotten (the bound of the device's RAM).
        for id in 20..20 + SESSIONS_KEPT as u32 + 1 {
            session(&mut s, id, 50);
        }
        session(&mut s, 9, 60);
        let mut replay = captured;
        assert!(s.handle_input(60, &mut replay[..len]).is_ok());
    }
}
