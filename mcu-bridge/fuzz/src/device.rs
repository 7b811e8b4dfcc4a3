//! The device session ([`Session::handle_input`] and the rest of its API)
//! driven by a sequence of operations read from the fuzzer's bytes.
//!
//! The input is a header (session shape, capabilities, ping interval, seed)
//! and then operations, one byte of opcode ([`op`]) and its arguments each:
//! time steps, requests, draining `poll_transmit`/`poll_event`, and frames
//! for the device: raw bytes, a hello ack or a gateway message sealed with
//! the device's key (valid or not behind the tag), a replay of one sent
//! before, a mutation of one, or one of the device's own frames reflected.
//!
//! Invariants, checked after every operation:
//! - nothing panics, and `poll_transmit` never fails with a full-size buffer;
//! - `outbox_len() <= N`; `poll_timeout()` is always set, at most
//!   max(64 s, ping interval) ahead, and once everything due was sent and
//!   reported it is in the future (a driver loop never spins);
//! - only authentic frames are taken (a frame taken opens under the key: a
//!   raw, mutated, truncated, extended or reflected one is an error, unless
//!   the fuzzer rebuilt a sealed frame byte for byte); a dropped frame
//!   changes nothing the caller can see (deadline, outbox, session, hello
//!   attempt, stats);
//! - a hello ack is taken only as the answer to the device's last hello:
//!   under that hello's nonce, naming its attempt, at seq 0, and at most
//!   once per hello; so an answer recorded earlier and replayed (to a later
//!   hello, or after the session is lost and before the next hello) is
//!   refused and cannot restart the replay window; the valid answer to a
//!   hello not answered yet is taken;
//! - every frame sent is well-formed, opens under its own context (a hello:
//!   its attempt's, the count of hellos sent), and no two different frames
//!   are sent under one nonce; a request is only sent while queued and
//!   unfinished; a delivery ack names a frame taken;
//! - events: a request ends at most once (acked, rejected, answered or given
//!   up), only after it was sent, and as the kind it was; a delivery is
//!   reported at most once per gateway session (a new replay window starts
//!   only with a fresh answer naming another session id); the stats and
//!   drop counts match what was seen.

use std::collections::{BTreeMap, HashMap, HashSet};

use woof_mcu_bridge::Error;
use woof_mcu_bridge::crypto::{Cipher, Context, Direction};
use woof_mcu_bridge::session::{
    Config, Event, HELLO_TIMEOUT_MAX_MS, PING_INTERVAL_MS, RETRANSMIT_TIMEOUT_MAX_MS, RequestKind,
    SESSIONS_KEPT, Session,
};
use woof_mcu_bridge::wire::{
    self, Ack, Delivery, DeliveryAck, ErrorReport, FRAME_LEN_MAX, Frame, Hello, HelloAck, Message,
    OffloadResult, Pong, SEQ_MAX, Topic, Type,
};

use crate::{Cursor, HANDLERS, sealed, sealed_raw, topic};

pub const KEY: [u8; 16] = *b"fuzz-device-key!";
pub const DEVICE_ID: &[u8] = b"fuzz-dev-1";
pub const BOOT: u64 = 0x0b00_7000_0000_0001;

/// The operations; an opcode byte is taken modulo [`op::COUNT`].
pub mod op {
    /// u16: ms, or seconds when the top bit is set.
    pub const TICK: u8 = 0;
    /// topic byte, payload (bytes), rand u32.
    pub const APPEND: u8 = 1;
    /// topic byte, from u64, rand u32.
    pub const SUBSCRIBE: u8 = 2;
    /// handler byte, payload (bytes), rand u32.
    pub const OFFLOAD: u8 = 3;
    /// Send everything due and report every event, then check the
    /// deadline is in the future.
    pub const SETTLE: u8 = 4;
    /// session id u32, window u8, how byte: below 0x80, the answer to the
    /// device's current hello at seq `how` (0: the valid one); from 0x80,
    /// at seq 0 under the nonce of attempt `current - (how & 0x1f)` (an
    /// earlier hello's answer, as an attacker could have recorded it), or
    /// of any attempt (0x20: attempt u32), naming that attempt or (0x40:
    /// attempt u32) any. Before the device's first hello, its hello is
    /// taken first.
    pub const HELLO_ACK: u8 = 5;
    /// A gateway frame: type byte, seq byte, session byte, then the body's
    /// fields (see `Harness::down`).
    pub const DOWN: u8 = 6;
    /// index byte: a gateway frame sent before, again.
    pub const REPLAY: u8 = 7;
    /// index byte, position u16, xor byte, how byte.
    pub const MUTATE: u8 = 8;
    /// bytes.
    pub const RAW: u8 = 9;
    pub const RECONNECT: u8 = 10;
    /// index byte: one of the device's own frames, back to it.
    pub const REFLECT: u8 = 11;
    pub const TRANSMIT: u8 = 12;
    pub const EVENTS: u8 = 13;
    pub const COUNT: u8 = 14;
}

pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    match c.u8() % 3 {
        0 => Harness::<4, 64>::new(&mut c).run(&mut c),
        1 => Harness::<1, 32>::new(&mut c).run(&mut c),
        _ => Harness::<8, 128>::new(&mut c).run(&mut c),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    kind: RequestKind,
    sent: bool,
    done: bool,
}

/// Frames remembered for replays and reflections.
const KEPT: usize = 32;

struct Harness<const N: usize, const B: usize> {
    s: Session<N, B>,
    cipher: Cipher,
    caps: u8,
    ping_interval_ms: u64,
    now: u64,
    requests: BTreeMap<u32, Request>,
    /// Frames sealed for the device, to replay and mutate.
    down: Vec<Vec<u8>>,
    /// Frames the device sent, to reflect.
    up: Vec<Vec<u8>>,
    /// (session id, seq) of every frame the device sent -> its bytes (a
    /// hello's: (attempt, 0)).
    up_nonces: HashMap<(u32, u32), Vec<u8>>,
    /// Hellos sent: the last one's attempt.
    hellos: u32,
    /// The hellos (attempts) answered.
    answered: HashSet<u32>,
    next_down: u32,
    last_ping: Option<u32>,
    /// The session the next two sets are about (the device's replay window
    /// is kept across a hello answered with the same session id).
    rx_session: Option<u32>,
    /// Gateway seqs of deliveries reported.
    reported: HashSet<u32>,
    /// Gateway seqs of the frames taken (0 is the hello ack's): a delivery
    /// sent again is acked again, and so is a delivery at the seq of another
    /// frame, which only a gateway with the key could send.
    taken: HashSet<u32>,
    /// The same two sets of the sessions before `rx_session`, newest
    /// first, as many as the device keeps windows of (`SESSIONS_KEPT`).
    past: std::collections::VecDeque<(u32, HashSet<u32>, HashSet<u32>)>,
    errors: u32,
    sent: u32,
    acked: u32,
    rejected: u32,
    gave_up: u32,
    delivered: u32,
}

impl<const N: usize, const B: usize> Harness<N, B> {
    fn new(c: &mut Cursor<'_>) -> Self {
        let caps = c.u8();
        let ping_interval_ms = match c.u8() {
            0..=127 => PING_INTERVAL_MS,
            b => u64::from(b) * 500,
        };
        let now = u64::from(c.u32());
        let rand = c.u32();
        let config = Config {
            device_id: DEVICE_ID,
            key: KEY,
            boot_id: BOOT,
            caps,
            ping_interval_ms,
        };
        Harness {
            s: Session::new(&config, now, rand).expect("a valid config"),
            cipher: Cipher::new(&KEY),
            caps,
            ping_interval_ms,
            now,
            requests: BTreeMap::new(),
            down: Vec::new(),
            up: Vec::new(),
            up_nonces: HashMap::new(),
            hellos: 0,
            answered: HashSet::new(),
            next_down: 1,
            last_ping: None,
            rx_session: None,
            reported: HashSet::new(),
            taken: HashSet::from([0]),
            past: std::collections::VecDeque::new(),
            errors: 0,
            sent: 0,
            acked: 0,
            rejected: 0,
            gave_up: 0,
            delivered: 0,
        }
    }

    fn run(&mut self, c: &mut Cursor<'_>) {
        self.check();
        while !c.done() {
            let o = c.u8() % op::COUNT;
            crate::trace!("now {}: op {o}", self.now);
            match o {
                op::TICK => {
                    let v = c.u16();
                    self.now += if v & 0x8000 != 0 {
                        u64::from(v & 0x7fff) * 1000
                    } else {
                        u64::from(v)
                    };
                }
                op::APPEND => {
                    let t = topic(c);
                    let payload = c.bytes(B);
                    let rand = c.u32();
                    let r = self.s.append(t, payload, rand);
                    self.queued(RequestKind::Append, r);
                }
                op::SUBSCRIBE => {
                    let t = topic(c);
                    let from = c.u64();
                    let rand = c.u32();
                    let r = self.s.subscribe(t, from, rand);
                    self.queued(RequestKind::Subscribe, r);
                }
                op::OFFLOAD => {
                    let h = HANDLERS[usize::from(c.u8()) % HANDLERS.len()];
                    let payload = c.bytes(B);
                    let rand = c.u32();
                    let r = self.s.offload(h, payload, rand);
                    self.queued(RequestKind::Offload, r);
                }
                op::SETTLE => self.settle(),
                op::HELLO_ACK => self.hello_ack(c),
                op::DOWN => self.down(c),
                op::REPLAY => {
                    if !self.down.is_empty() {
                        let i = usize::from(c.u8()) % self.down.len();
                        let frame = self.down[i].clone();
                        let _ = self.feed(frame, true);
                    }
                }
                op::MUTATE => {
                    if !self.down.is_empty() {
                        let i = usize::from(c.u8()) % self.down.len();
                        let frame = mutate(&self.down[i], c);
                        let r = self.feed(frame, false);
                        assert!(r.is_err(), "a mutated frame was taken");
                    }
                }
                op::RAW => {
                    let frame = c.bytes(FRAME_LEN_MAX + 8).to_vec();
                    let _ = self.feed(frame, false);
                }
                op::RECONNECT => self.s.reconnect(self.now),
                op::REFLECT => {
                    if !self.up.is_empty() {
                        let i = usize::from(c.u8()) % self.up.len();
                        let frame = self.up[i].clone();
                        let r = self.feed(frame, false);
                        assert!(r.is_err(), "the device took its own frame back");
                    }
                }
                op::TRANSMIT => self.transmit(),
                op::EVENTS => self.events(),
                _ => unreachable!(),
            }
            self.check();
        }
        self.settle();
        self.check();
    }

    /// A hello ack sealed with the key (see [`op::HELLO_ACK`]): the answer
    /// to the current hello is taken once, and nothing else is.
    fn hello_ack(&mut self, c: &mut Cursor<'_>) {
        if self.s.hello_attempt() == 0 {
            // A hello ack answers a hello.
            self.transmit();
        }
        let session_id = c.u32();
        let window = c.u8();
        let how = c.u8();
        let current = self.s.hello_attempt();
        let (seq, nonce_attempt, attempt) = if how < 0x80 {
            (u32::from(how), current, current)
        } else {
            let nonce_attempt = if how & 0x20 != 0 {
                c.u32()
            } else {
                current.saturating_sub(u32::from(how & 0x1f))
            };
            let attempt = if how & 0x40 != 0 {
                c.u32()
            } else {
                nonce_attempt
            };
            (0, nonce_attempt, attempt)
        };
        let body = [
            session_id.to_le_bytes().as_slice(),
            &[window],
            &attempt.to_le_bytes(),
        ]
        .concat();
        let ctx = self.ctx(nonce_attempt);
        let frame = sealed_raw(&self.cipher, Type::HelloAck as u8, seq, &body, &ctx);
        let was_connected = self.s.is_connected();
        let unanswered = current != 0 && !self.answered.contains(&current);
        let r = self.feed(frame, true);
        let valid = seq == 0
            && nonce_attempt == current
            && attempt == current
            && session_id != 0
            && (1..=64).contains(&window);
        if let Ok(Some(Event::Connected { session_id: sid })) = r {
            assert!(!was_connected);
            assert_eq!(sid, session_id);
            assert!(
                valid,
                "an answer naming attempt {attempt} under attempt {nonce_attempt}'s nonce \
                 at seq {seq} (session {session_id}, window {window}) taken for attempt \
                 {current}"
            );
        } else if !was_connected && unanswered && valid {
            panic!("the answer to the current hello ({current}) was refused: {r:?}");
        }
    }

    fn ctx(&self, session_id: u32) -> Context {
        Context {
            boot_id: BOOT,
            session_id,
            direction: Direction::Down,
        }
    }

    fn queued(&mut self, kind: RequestKind, r: Result<u32, Error>) {
        match r {
            Ok(seq) => {
                assert!((1..=SEQ_MAX).contains(&seq));
                let fresh = self.requests.insert(
                    seq,
                    Request {
                        kind,
                        sent: false,
                        done: false,
                    },
                );
                assert!(fresh.is_none(), "seq {seq} given to two requests");
                assert!(self.s.outbox_len() <= N);
            }
            Err(e) => assert!(
                matches!(e, Error::OutboxFull | Error::TooLong | Error::BadField),
                "{e:?}"
            ),
        }
    }

    /// A frame from the gateway, sealed with the device's key: the type, the
    /// sequence number and the session chosen by the input, the body one of
    /// the type's messages with fields from the input (naming the device's
    /// requests and pings), or raw bytes.
    fn down(&mut self, c: &mut Cursor<'_>) {
        let ty_byte = c.u8();
        let seq = match c.u8() {
            0..=199 => {
                self.next_down += 1;
                self.next_down - 1
            }
            b @ 200..=239 => self.next_down.saturating_sub(u32::from(b - 199)),
            _ => c.u32() & SEQ_MAX,
        };
        let session_id = match c.u8() {
            0..=239 => self.s.session_id().or(self.rx_session).unwrap_or(1),
            _ => c.u32(),
        };
        let ctx = self.ctx(session_id);
        let request = |c: &mut Cursor<'_>, reqs: &BTreeMap<u32, Request>| -> u32 {
            let b = c.u8();
            if b == 0xff || reqs.is_empty() {
                c.u32() & SEQ_MAX
            } else {
                *reqs
                    .keys()
                    .nth(usize::from(b) % reqs.len())
                    .expect("in range")
            }
        };
        let frame = if ty_byte & 0x80 != 0 {
            let body = c.bytes(200);
            sealed_raw(&self.cipher, ty_byte & 0x0f, seq, body, &ctx)
        } else {
            let msg = match ty_byte % 12 {
                0 => Message::Ack(Ack {
                    acked: request(c, &self.requests),
                    topic_seq: c.u64(),
                }),
                1 => Message::Delivery(Delivery {
                    topic: topic(c),
                    topic_seq: c.u64(),
                    payload: c.bytes(200),
                }),
                2 => Message::Pong(Pong {
                    acked: match (c.u8(), self.last_ping) {
                        (0..=239, Some(p)) => p,
                        _ => c.u32() & SEQ_MAX,
                    },
                }),
                3 => Message::Error(ErrorReport {
                    about: if c.u8() & 1 == 0 {
                        0
                    } else {
                        request(c, &self.requests)
                    },
                    code: c.u8() % 8,
                    text: ["", "no", "say hello"][usize::from(c.u8() % 3)],
                }),
                4 => Message::OffloadResult(OffloadResult {
                    acked: request(c, &self.requests),
                    status: c.u8(),
                    payload: c.bytes(200),
                }),
                // Frames that only go up, and a hello ack inside a session.
                5 => Message::Ping,
                6 => Message::DeliveryAck(DeliveryAck { acked: seq }),
                7 => Message::Append(wire::Append {
                    topic: Topic::Index(1),
                    payload: b"x",
                }),
                8 => Message::Hello(Hello {
                    device_id: DEVICE_ID,
                    boot_id: BOOT,
                    caps: 0,
                    attempt: 1,
                }),
                9 => Message::HelloAck(HelloAck {
                    session_id: session_id.max(1),
                    window: 4,
                    attempt: self.s.hello_attempt().max(1),
                }),
                10 => Message::Subscribe(wire::Subscribe {
                    topic: Topic::Index(2),
                    from: 0,
                }),
                _ => Message::Offload(wire::Offload {
                    handler: b"fft",
                    payload: b"",
                }),
            };
            match sealed(&self.cipher, &msg, seq, &ctx) {
                Some(f) => f,
                None => return,
            }
        };
        let _ = self.feed(frame, true);
    }

    /// Hands a frame to the device and checks what comes back.
    fn feed(&mut self, mut frame: Vec<u8>, keep: bool) -> Result<Option<Event<'static>>, Error> {
        if keep {
            if self.down.len() >= KEPT {
                self.down.remove(0);
            }
            self.down.push(frame.clone());
        }
        // Whether it is a frame sealed with the key for where the device is:
        // its session, or (a hello ack) its last hello (the fuzzer can
        // rebuild a sealed frame it saw compared in an earlier run).
        let genuine = [Some(self.s.hello_attempt()), self.s.session_id()]
            .into_iter()
            .flatten()
            .any(|sid| self.cipher.open(&mut frame.clone(), &self.ctx(sid)).is_ok());
        let original = frame.clone();
        let seq = Frame::new_checked(&frame[..]).map(|f| f.seq()).ok();
        let ty = Frame::new_checked(&frame[..])
            .ok()
            .and_then(|f| f.frame_type());
        let before = self.observable();
        let r = self.s.handle_input(self.now, &mut frame);
        crate::trace!("  in {ty:?} seq {seq:?} -> {r:?}");
        let r = match r {
            Err(e) => {
                self.errors += 1;
                // A dropped frame leaves the session as it was (a delivery
                // sent again only queues its ack again).
                assert_eq!(
                    self.observable(),
                    before,
                    "dropped as {e:?}, yet it changed the session"
                );
                Err(e)
            }
            Ok(ev) => {
                assert!(genuine, "a frame not sealed with the key was taken: {ev:?}");
                let seq = seq.expect("a taken frame has a header");
                if ty == Some(Type::HelloAck) {
                    // Only the answer to the last hello, under its nonce.
                    let attempt = self.s.hello_attempt();
                    let mut plain = original;
                    self.cipher
                        .open(&mut plain, &self.ctx(attempt))
                        .expect("a hello ack taken opens under the last hello's nonce");
                    let Ok(Message::HelloAck(a)) =
                        Message::parse(&Frame::new_checked(&plain[..]).expect("checked"))
                    else {
                        panic!("a hello ack taken does not parse");
                    };
                    assert_eq!(a.attempt, attempt, "a hello ack for another attempt taken");
                }
                self.taken.insert(seq);
                match ev {
                    Some(ev) => {
                        let ev = self.event(ev, Some(seq));
                        Ok(Some(ev))
                    }
                    None => Ok(None),
                }
            }
        };
        if r == Err(Error::Replayed) && ty == Some(Type::Delivery) {
            // A repeated delivery is acknowledged again (not reported).
            assert!(self.taken.contains(&seq.expect("a header")));
        }
        r
    }

    /// Checks an event against what the harness knows; returns it without
    /// its borrowed data.
    fn event(&mut self, ev: Event<'_>, down_seq: Option<u32>) -> Event<'static> {
        crate::trace!("  event {ev:?}");
        let mut finish = |seq: u32, kinds: &[RequestKind]| -> RequestKind {
            let r = self
                .requests
                .get_mut(&seq)
                .unwrap_or_else(|| panic!("event for request {seq}, never queued"));
            assert!(kinds.contains(&r.kind), "{r:?} ended as {kinds:?}");
            assert!(r.sent, "request {seq} ended before it was sent");
            assert!(!r.done, "request {seq} ended twice");
            r.done = true;
            r.kind
        };
        match ev {
            Event::Connected { session_id } => {
                assert_eq!(self.s.session_id(), Some(session_id));
                // Each hello is answered at most once: an answer taken
                // before (or another answer to the same hello, from a
                // gateway it was replayed to) is refused, so a recorded
                // answer cannot start a new replay window below.
                let attempt = self.s.hello_attempt();
                assert!(attempt >= 1, "connected before any hello");
                assert!(
                    self.answered.insert(attempt),
                    "hello {attempt} answered twice (a recorded hello ack taken again)"
                );
                // Another session id: the device takes that session's
                // window back if it is one of the last SESSIONS_KEPT (a
                // gateway that kept it: its old frames stay replays), else
                // starts a new one, under which the frames of a session
                // forgotten count again. Only a fresh answer to the last
                // hello (checked above) gets here.
                if self.rx_session != Some(session_id) {
                    let kept = self
                        .past
                        .iter()
                        .position(|(id, _, _)| *id == session_id)
                        .and_then(|i| self.past.remove(i));
                    let (reported, taken) = match kept {
                        Some((_, reported, taken)) => (reported, taken),
                        None => (HashSet::new(), HashSet::from([0])),
                    };
                    let reported = std::mem::replace(&mut self.reported, reported);
                    let taken = std::mem::replace(&mut self.taken, taken);
                    if let Some(old) = self.rx_session {
                        self.past.push_front((old, reported, taken));
                        self.past.truncate(SESSIONS_KEPT);
                    }
                    self.rx_session = Some(session_id);
                }
                Event::Connected { session_id }
            }
            Event::Disconnected => {
                assert!(!self.s.is_connected());
                Event::Disconnected
            }
            Event::Acked {
                seq,
                kind,
                topic_seq,
            } => {
                let k = finish(seq, &[RequestKind::Append, RequestKind::Subscribe]);
                assert_eq!(k, kind);
                self.acked += 1;
                Event::Acked {
                    seq,
                    kind,
                    topic_seq,
                }
            }
            Event::Rejected { seq, kind, code } => {
                let k = finish(
                    seq,
                    &[
                        RequestKind::Append,
                        RequestKind::Subscribe,
                        RequestKind::Offload,
                    ],
                );
                assert_eq!(k, kind);
                self.rejected += 1;
                Event::Rejected { seq, kind, code }
            }
            Event::GaveUp { seq, kind } => {
                let k = finish(
                    seq,
                    &[
                        RequestKind::Append,
                        RequestKind::Subscribe,
                        RequestKind::Offload,
                    ],
                );
                assert_eq!(k, kind);
                self.gave_up += 1;
                Event::GaveUp { seq, kind }
            }
            Event::OffloadResult { seq, status, .. } => {
                finish(seq, &[RequestKind::Offload]);
                Event::OffloadResult {
                    seq,
                    status,
                    payload: &[],
                }
            }
            Event::Delivery { topic_seq, .. } => {
                let seq = down_seq.expect("a delivery comes from a frame");
                assert!(self.s.is_connected());
                assert!(
                    self.reported.insert(seq),
                    "delivery {seq} of session {:?} reported twice",
                    self.rx_session
                );
                self.delivered += 1;
                Event::Delivery {
                    topic: Topic::Index(0),
                    topic_seq,
                    payload: &[],
                }
            }
            Event::Pong { rtt_ms } => {
                // The device takes a pong for any seq from its keepalive's
                // first on, so a gateway with the key can answer a ping not
                // sent yet; an honest one only answers pings.
                assert!(self.s.is_connected());
                Event::Pong { rtt_ms }
            }
        }
    }

    /// Takes every frame due and checks it.
    fn transmit(&mut self) {
        let mut out = [0u8; FRAME_LEN_MAX];
        for _ in 0..64 {
            let len = match self.s.poll_transmit(self.now, &mut out) {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(e) => panic!("poll_transmit failed: {e:?}"),
            };
            self.sent += 1;
            let frame = &out[..len];
            let f = Frame::new_checked(frame).expect("a sent frame is well-formed");
            let ty = f.frame_type().expect("checked");
            let seq = f.seq();
            let session_id = if ty == Type::Hello {
                // Its nonce has the attempt where the session id goes: the
                // count of hellos sent in this boot.
                assert_eq!(seq, 0);
                self.hellos += 1;
                assert_eq!(
                    self.s.hello_attempt(),
                    self.hellos,
                    "a hello's attempt is not the count of hellos sent"
                );
                self.hellos
            } else {
                assert!(seq > 0);
                self.s
                    .session_id()
                    .expect("nothing but hellos before a session")
            };
            let prev = self
                .up_nonces
                .entry((session_id, seq))
                .or_insert_with(|| frame.to_vec());
            assert_eq!(prev, frame, "two frames under one nonce");
            let mut plain = frame.to_vec();
            let ctx = Context {
                boot_id: BOOT,
                session_id,
                direction: Direction::Up,
            };
            self.cipher
                .open(&mut plain, &ctx)
                .expect("a sent frame opens under its context");
            let msg = Message::parse(&Frame::new_checked(&plain[..]).expect("checked"))
                .expect("a sent frame parses");
            crate::trace!("  out seq {seq} {msg:?}");
            let kind = match msg {
                Message::Hello(h) => {
                    assert_eq!(h.attempt, self.hellos);
                    assert_eq!(h.device_id, DEVICE_ID);
                    assert_eq!(h.boot_id, BOOT);
                    assert_eq!(h.caps, self.caps);
                    None
                }
                Message::Append(_) => Some(RequestKind::Append),
                Message::Subscribe(_) => Some(RequestKind::Subscribe),
                Message::Offload(_) => Some(RequestKind::Offload),
                Message::Ping => {
                    self.last_ping = Some(seq);
                    None
                }
                Message::DeliveryAck(d) => {
                    assert!(
                        self.taken.contains(&d.acked),
                        "ack for gateway frame {}, never taken",
                        d.acked
                    );
                    None
                }
                other => panic!("the device sent {other:?}"),
            };
            if let Some(kind) = kind {
                assert!(len <= B);
                let r = self
                    .requests
                    .get_mut(&seq)
                    .unwrap_or_else(|| panic!("request {seq} sent, never queued"));
                assert_eq!(r.kind, kind);
                assert!(!r.done, "request {seq} sent after it ended");
                r.sent = true;
            }
            if self.up.len() >= KEPT {
                self.up.remove(0);
            }
            self.up.push(frame.to_vec());
        }
        panic!("poll_transmit never ran dry");
    }

    fn events(&mut self) {
        for _ in 0..64 {
            match self.s.poll_event(self.now) {
                Some(ev) => {
                    self.event(ev, None);
                }
                None => return,
            }
        }
        panic!("poll_event never ran dry");
    }

    fn settle(&mut self) {
        for _ in 0..2 {
            self.transmit();
            self.events();
        }
        let t = self.s.poll_timeout().expect("a deadline");
        assert!(
            t > self.now,
            "nothing left to do, but the deadline {t} is not after now {}",
            self.now
        );
    }

    /// What a caller can see of the session, but for its drop counts.
    fn observable(&self) -> impl PartialEq + std::fmt::Debug + use<N, B> {
        (
            self.s.poll_timeout(),
            self.s.outbox_len(),
            self.s.session_id(),
            self.s.hello_attempt(),
            self.s.stats(),
            self.s.retransmit_timeout_ms(),
        )
    }

    fn check(&self) {
        assert!(self.s.outbox_len() <= N);
        let t = self
            .s
            .poll_timeout()
            .expect("a session always has a deadline");
        let bound = self
            .ping_interval_ms
            .max(HELLO_TIMEOUT_MAX_MS)
            .max(RETRANSMIT_TIMEOUT_MAX_MS);
        assert!(
            t <= self.now + bound,
            "deadline {t} too far past now {}",
            self.now
        );
        let st = self.s.stats();
        assert_eq!(st.sent, self.sent);
        assert_eq!(st.acked, self.acked);
        assert_eq!(st.rejected, self.rejected);
        assert_eq!(st.gave_up, self.gave_up);
        assert_eq!(st.delivered, self.delivered);
        assert_eq!(self.s.drops().total(), self.errors);
        assert_eq!(self.s.is_connected(), self.s.session_id().is_some());
    }
}

/// A frame changed so that its tag cannot hold: one byte flipped, cut short,
/// or one byte longer.
pub fn mutate(frame: &[u8], c: &mut Cursor<'_>) -> Vec<u8> {
    let mut f = frame.to_vec();
    let pos = usize::from(c.u16()) % f.len().max(1);
    let xor = c.u8().max(1);
    match c.u8() % 3 {
        0 if !f.is_empty() => f[pos] ^= xor,
        1 => f.truncate(pos),
        _ => f.insert(pos.min(f.len()), xor),
    }
    f
}
