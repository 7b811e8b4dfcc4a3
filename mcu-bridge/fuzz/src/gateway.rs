//! The gateway's per-device session ([`gateway::Session`], feature `std`)
//! driven by a sequence of operations read from the fuzzer's bytes.
//!
//! The input is a header (the window) and then operations ([`op`]): hellos
//! for one of a few boots (or any), requests sealed with the device's key
//! under the session the harness learnt from the hello ack, under a guessed
//! one, or with a wrong key; replays, mutations, raw bytes, bursts of one
//! frame; and the node's side: answers to the requests handed up (commit,
//! subscribed, offload result, refusal, sometimes long after their boot's
//! session ended), deliveries and redeliveries.
//!
//! Invariants, checked after every operation:
//! - nothing panics;
//! - only authentic frames are taken (a frame taken opens under the key and
//!   the session it was taken in; a mutated one is an error);
//! - replies are bounded: at most one frame per input or call, at most
//!   `OUTBOX_MAX` waiting, and what was dropped is counted;
//! - every frame sent is well-formed and opens under the live session (or,
//!   a hello ack, under the hello's boot and attempt, which it names), no
//!   two different frames share a nonce (but two answers to one hello
//!   replayed, MACs over cleartext), and a hello ack names the live session
//!   when its boot is live;
//! - an ack, offload result or error answers only what the node said, for
//!   that session, with what it said (no ack for anything not committed); a
//!   pong only an authentic ping; a delivery is a frame `deliver` made, and
//!   a redelivery is that frame again;
//! - a request is handed up once per session, with the frame's boot and seq;
//! - the stats (requests, sessions, duplicates), drops and unacked
//!   deliveries match what was seen.

use std::collections::{HashMap, HashSet};

use woof_mcu_bridge::Error;
use woof_mcu_bridge::crypto::{Cipher, Context, Direction};
use woof_mcu_bridge::gateway::{self, DELIVERIES_UNACKED_MAX, Input, OUTBOX_MAX};
use woof_mcu_bridge::wire::{
    self, Ack, Delivery, DeliveryAck, ErrorReport, FRAME_LEN_MAX, Frame, Hello, HelloAck, Message,
    OffloadResult, Pong, SEQ_MAX, Type,
};

use crate::device::mutate;
use crate::{Cursor, HANDLERS, sealed, sealed_raw, topic};

pub const KEY: [u8; 16] = *b"fuzz-gateway-key";
pub const DEVICE_ID: &[u8] = b"fuzz-gw-dev";
/// The boots a byte below 0xf0 picks from.
pub const BOOTS: [u64; 4] = [1, 2, 0x5eed_0000_0000_0003, u64::MAX];

/// The operations; an opcode byte is taken modulo [`op::COUNT`].
pub mod op {
    /// boot, rand u32, flags byte (1: another device id, 2: another key,
    /// 4: seq 1, 8: caps 0xff, 0x10: attempt u32 follows; else the boot's
    /// next attempt, as the device counts its hellos).
    pub const HELLO: u8 = 0;
    /// boot, session byte, seq byte, kind byte, fields (see
    /// `Harness::request`).
    pub const REQUEST: u8 = 1;
    /// index byte: a frame sent before, again.
    pub const REPLAY: u8 = 2;
    /// index byte, position u16, xor byte, how byte.
    pub const MUTATE: u8 = 3;
    /// bytes.
    pub const RAW: u8 = 4;
    /// index u16 into the requests handed up, how byte, fields.
    pub const ANSWER: u8 = 5;
    /// topic byte, topic seq u64, payload (bytes).
    pub const DELIVER: u8 = 6;
    /// index byte (0xff: any seq u32).
    pub const REDELIVER: u8 = 7;
    /// index byte, count byte: one frame sent up to 510 times, unread.
    pub const BURST: u8 = 8;
    pub const COUNT: u8 = 9;
}

pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    Harness::new(c.u8()).run(&mut c);
}

/// What the node answered, as the device should see it again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Ack(u64),
    Offload(u8, Vec<u8>),
    Refused(u8, String),
}

#[derive(Debug, Clone, Copy)]
struct HandedUp {
    boot_id: u64,
    device_seq: u32,
}

/// (boot id, session id) of a live session.
type Live = (u64, u32);

/// Frames remembered for replays.
const KEPT: usize = 64;

struct Harness {
    g: gateway::Session,
    window: u8,
    cipher: Cipher,
    /// Per boot: the session id its last hello ack named.
    sessions_of: HashMap<u64, u32>,
    /// Per boot: the next device seq.
    next_seq: HashMap<u64, u32>,
    /// Frames sent to the gateway, to replay and mutate.
    up: Vec<Vec<u8>>,
    /// The boot and attempt of the hello being answered.
    hello: Option<(u64, u32)>,
    /// Per boot: the attempt of its last hello.
    attempts: HashMap<u64, u32>,
    handed: Vec<HandedUp>,
    handed_in: HashSet<(Live, u32)>,
    /// What the node said for (session, device seq).
    replies: HashMap<(Live, u32), Reply>,
    /// Authentic pings taken, per session.
    pings: HashSet<(Live, u32)>,
    /// Delivery frames made by `deliver`, by (session, gateway seq).
    deliveries: HashMap<(Live, u32), Vec<u8>>,
    unacked: HashSet<(Live, u32)>,
    /// The gateway seq `deliver` just returned, whose frame is coming.
    new_delivery: Option<u32>,
    down_nonces: HashMap<(Live, u32), Vec<u8>>,
    /// Every session id a hello ack named.
    session_ids: HashSet<u32>,
    current: Option<Live>,
    sessions: u64,
    requests: u64,
    errors: u32,
    replayed: u64,
    overflow: u64,
}

impl Harness {
    fn new(window: u8) -> Self {
        Harness {
            g: gateway::Session::new(DEVICE_ID, KEY, window),
            window: window.clamp(1, 64),
            cipher: Cipher::new(&KEY),
            sessions_of: HashMap::new(),
            next_seq: HashMap::new(),
            up: Vec::new(),
            hello: None,
            attempts: HashMap::new(),
            handed: Vec::new(),
            handed_in: HashSet::new(),
            replies: HashMap::new(),
            pings: HashSet::new(),
            deliveries: HashMap::new(),
            unacked: HashSet::new(),
            new_delivery: None,
            down_nonces: HashMap::new(),
            session_ids: HashSet::new(),
            current: None,
            sessions: 0,
            requests: 0,
            errors: 0,
            replayed: 0,
            overflow: 0,
        }
    }

    fn run(&mut self, c: &mut Cursor<'_>) {
        while !c.done() {
            let o = c.u8() % op::COUNT;
            crate::trace!("op {o}");
            match o {
                op::HELLO => self.hello(c),
                op::REQUEST => self.request(c),
                op::REPLAY => {
                    if !self.up.is_empty() {
                        let i = usize::from(c.u8()) % self.up.len();
                        let frame = self.up[i].clone();
                        self.hello = Session::hello_of(&frame);
                        let _ = self.feed(&frame, c.u32());
                        self.drain(1);
                    }
                }
                op::MUTATE => {
                    if !self.up.is_empty() {
                        let i = usize::from(c.u8()) % self.up.len();
                        let frame = mutate(&self.up[i], c);
                        let r = self.feed(&frame, c.u32());
                        assert!(r.is_err(), "a mutated frame was taken");
                        self.drain(0);
                    }
                }
                op::RAW => {
                    let frame = c.bytes(FRAME_LEN_MAX + 8).to_vec();
                    self.hello = Session::hello_of(&frame);
                    let _ = self.feed(&frame, c.u32());
                    self.drain(1);
                }
                op::ANSWER => self.answer(c),
                op::DELIVER => {
                    let t = topic(c);
                    let topic_seq = c.u64();
                    let payload = c.bytes(FRAME_LEN_MAX);
                    let before = self.g.unacked_deliveries();
                    match self.g.deliver(t, topic_seq, payload) {
                        Ok(seq) => {
                            let live = self.current.expect("delivered in a session");
                            assert!(self.unacked.insert((live, seq)));
                            self.new_delivery = Some(seq);
                            self.drain(1);
                            assert!(self.deliveries.contains_key(&(live, seq)));
                            self.new_delivery = None;
                        }
                        Err(Error::NotConnected) => assert!(self.current.is_none()),
                        Err(Error::OutboxFull) => assert_eq!(before, DELIVERIES_UNACKED_MAX),
                        Err(e) => {
                            assert!(matches!(e, Error::TooLong | Error::BadField), "{e:?}");
                            self.drain(0);
                        }
                    }
                }
                op::REDELIVER => {
                    let b = c.u8();
                    let seq = match self.current {
                        Some(live) if b != 0xff && !self.deliveries.is_empty() => {
                            let mut seqs: Vec<u32> = self
                                .deliveries
                                .keys()
                                .filter(|(l, _)| *l == live)
                                .map(|(_, s)| *s)
                                .collect();
                            seqs.sort_unstable();
                            seqs.get(usize::from(b) % seqs.len().max(1))
                                .copied()
                                .unwrap_or(0)
                        }
                        _ => c.u32(),
                    };
                    let sent = self.g.redeliver(seq);
                    let expected = self
                        .current
                        .is_some_and(|l| self.unacked.contains(&(l, seq)));
                    assert_eq!(sent, expected, "redeliver({seq})");
                    self.drain(usize::from(sent));
                }
                op::BURST => {
                    if !self.up.is_empty() {
                        let i = usize::from(c.u8()) % self.up.len();
                        let n = usize::from(c.u8()) * 2;
                        let frame = self.up[i].clone();
                        self.hello = Session::hello_of(&frame);
                        let before = self.g.stats().outbox_overflow;
                        for _ in 0..n {
                            let _ = self.feed(&frame, 0);
                        }
                        let dropped = self.g.stats().outbox_overflow - before;
                        self.overflow += dropped;
                        let got = self.drain(OUTBOX_MAX);
                        assert!(got as u64 + dropped <= n as u64);
                        assert!(dropped == 0 || got == OUTBOX_MAX);
                    }
                }
                _ => unreachable!(),
            }
            self.check();
        }
    }

    fn boot(c: &mut Cursor<'_>) -> u64 {
        match c.u8() {
            b @ 0..=0xef => BOOTS[usize::from(b) % BOOTS.len()],
            _ => c.u64(),
        }
    }

    fn hello(&mut self, c: &mut Cursor<'_>) {
        let boot_id = Self::boot(c);
        let rand = c.u32();
        let flags = c.u8();
        let attempt = if flags & 0x10 != 0 {
            c.u32().max(1)
        } else {
            let a = self.attempts.entry(boot_id).or_insert(0);
            *a = a.wrapping_add(1).max(1);
            *a
        };
        let msg = Message::Hello(Hello {
            device_id: if flags & 1 != 0 {
                b"someone-else"
            } else {
                DEVICE_ID
            },
            boot_id,
            caps: if flags & 8 != 0 { 0xff } else { 0 },
            attempt,
        });
        let cipher = if flags & 2 != 0 {
            Cipher::new(b"not-the-key-0000")
        } else {
            Cipher::new(&KEY)
        };
        let ctx = Context {
            boot_id,
            session_id: attempt,
            direction: Direction::Up,
        };
        let seq = u32::from(flags & 4 != 0);
        let frame = sealed(&cipher, &msg, seq, &ctx).expect("a hello emits");
        let good = flags & 7 == 0;
        if good {
            self.keep(&frame);
        }
        self.hello = Some((boot_id, attempt));
        let r = self.feed(&frame, rand);
        assert_eq!(r.is_ok(), good, "{r:?}");
        self.drain(1);
    }

    /// A frame from the device: the boot, the session (the one learnt for
    /// that boot, or any) and the sequence number (the next, an earlier
    /// one, or any) chosen by the input, and a message with fields from
    /// the input, or a raw body under any type number.
    fn request(&mut self, c: &mut Cursor<'_>) {
        let boot_id = Self::boot(c);
        let session_id = match c.u8() {
            0..=0xef => self.sessions_of.get(&boot_id).copied().unwrap_or(1),
            _ => c.u32(),
        };
        let next = self.next_seq.entry(boot_id).or_insert(1);
        let seq = match c.u8() {
            0..=0xbf => {
                *next += 1;
                *next - 1
            }
            b @ 0xc0..=0xef => next.saturating_sub(u32::from(b & 0x1f) + 1),
            _ => c.u32() & SEQ_MAX,
        };
        let ctx = Context {
            boot_id,
            session_id,
            direction: Direction::Up,
        };
        let kind = c.u8();
        let frame = match kind % 8 {
            0 => sealed(
                &self.cipher,
                &Message::Append(wire::Append {
                    topic: topic(c),
                    payload: c.bytes(FRAME_LEN_MAX),
                }),
                seq,
                &ctx,
            ),
            1 => sealed(
                &self.cipher,
                &Message::Subscribe(wire::Subscribe {
                    topic: topic(c),
                    from: c.u64(),
                }),
                seq,
                &ctx,
            ),
            2 => sealed(
                &self.cipher,
                &Message::Offload(wire::Offload {
                    handler: HANDLERS[usize::from(c.u8()) % HANDLERS.len()],
                    payload: c.bytes(FRAME_LEN_MAX),
                }),
                seq,
                &ctx,
            ),
            3 => sealed(&self.cipher, &Message::Ping, seq, &ctx),
            4 => {
                let b = c.u8();
                let acked = match self.current {
                    Some(live) if b != 0xff => self
                        .unacked
                        .iter()
                        .filter(|(l, _)| *l == live)
                        .map(|(_, s)| *s)
                        .min()
                        .unwrap_or(1),
                    _ => c.u32() & SEQ_MAX,
                };
                sealed(
                    &self.cipher,
                    &Message::DeliveryAck(DeliveryAck { acked }),
                    seq,
                    &ctx,
                )
            }
            5 => Some(sealed_raw(
                &self.cipher,
                c.u8(),
                seq,
                c.bytes(FRAME_LEN_MAX),
                &ctx,
            )),
            // Frames that only go down.
            6 => {
                let msg = match c.u8() % 6 {
                    0 => Message::Ack(Ack {
                        acked: 1,
                        topic_seq: 1,
                    }),
                    1 => Message::Delivery(Delivery {
                        topic: wire::Topic::Index(0),
                        topic_seq: 1,
                        payload: b"d",
                    }),
                    2 => Message::Pong(Pong { acked: 1 }),
                    3 => Message::Error(ErrorReport {
                        about: 0,
                        code: 1,
                        text: "",
                    }),
                    4 => Message::OffloadResult(OffloadResult {
                        acked: 1,
                        status: 0,
                        payload: b"",
                    }),
                    _ => Message::HelloAck(HelloAck {
                        session_id: 5,
                        window: 4,
                        attempt: 1,
                    }),
                };
                sealed(&self.cipher, &msg, seq, &ctx)
            }
            // A wrong key.
            _ => sealed(&Cipher::new(b"not-the-key-0000"), &Message::Ping, seq, &ctx),
        };
        let Some(frame) = frame else { return };
        let good = kind % 8 != 7;
        if good {
            self.keep(&frame);
        }
        self.hello = Session::hello_of(&frame);
        let r = self.feed(&frame, 0);
        if !good {
            assert!(r.is_err());
        }
        self.drain(1);
    }

    fn keep(&mut self, frame: &[u8]) {
        if self.up.len() >= KEPT {
            self.up.remove(0);
        }
        self.up.push(frame.to_vec());
    }

    /// The node's answer to a request handed up (in this session or an
    /// earlier one).
    fn answer(&mut self, c: &mut Cursor<'_>) {
        if self.handed.is_empty() {
            return;
        }
        let h = self.handed[usize::from(c.u16()) % self.handed.len()];
        let (boot_id, seq) = (h.boot_id, h.device_seq);
        let (r, reply) = match c.u8() % 4 {
            0 => {
                let t = c.u64();
                (self.g.committed(boot_id, seq, t), Reply::Ack(t))
            }
            1 => {
                let t = c.u64();
                (self.g.subscribed(boot_id, seq, t), Reply::Ack(t))
            }
            2 => {
                let status = c.u8();
                let payload = c.bytes(FRAME_LEN_MAX + 32);
                (
                    self.g.offload_result(boot_id, seq, status, payload),
                    Reply::Offload(status, payload.to_vec()),
                )
            }
            _ => {
                let code = c.u8();
                let text = ["", "busy", "forbidden topic", &"x".repeat(65)]
                    [usize::from(c.u8() % 4)]
                .to_string();
                (
                    self.g.refuse(boot_id, seq, code, &text),
                    Reply::Refused(code, text),
                )
            }
        };
        let live = self.current.filter(|l| l.0 == boot_id);
        match r {
            Ok(true) => {
                let live = live.expect("answered in its boot's session");
                self.replies.insert((live, seq), reply);
                self.drain(1);
            }
            Ok(false) => {
                assert!(live.is_none(), "an answer in its session was not sent");
                self.drain(0);
            }
            Err(e) => {
                assert!(matches!(e, Error::TooLong | Error::BadField), "{e:?}");
                self.drain(0);
            }
        }
    }

    fn feed(&mut self, frame: &[u8], rand: u32) -> Result<Option<Input>, Error> {
        // The node draws the session id at random (getrandom): two sessions
        // of one boot under the same id would reuse nonces, once in 2^32
        // such hellos. The harness draws again on a collision, so the
        // nonce check finds the gateway's own reuses, not that.
        let mut rand = rand;
        while self.session_ids.contains(&rand.max(1)) {
            rand = rand.wrapping_mul(0x9e37_79b9).wrapping_add(1);
        }
        let r = self.g.handle_input(frame, rand);
        crate::trace!(
            "  in {:?} -> {r:?}",
            Frame::new_checked(frame).map(|f| (f.frame_type(), f.seq()))
        );
        let now = self.g.current();
        if now != self.current {
            assert!(now.is_some(), "a live session ended");
            self.sessions += 1;
            self.current = now;
        }
        let header = Frame::new_checked(frame)
            .ok()
            .map(|f| (f.frame_type(), f.seq()));
        match &r {
            Err(e) => {
                self.errors += 1;
                if *e == Error::Replayed {
                    self.replayed += 1;
                }
            }
            Ok(input) => {
                let (ty, seq) = header.expect("a taken frame has a header");
                if ty == Some(Type::Hello) {
                    let (boot_id, attempt) = Session::hello_of(frame).expect("a hello");
                    assert!(
                        self.opens(frame, boot_id, attempt),
                        "a hello not sealed with the key was taken"
                    );
                    assert!(input.is_none());
                    return r;
                }
                let live = self.current.expect("a frame taken in a session");
                assert!(
                    self.opens(frame, live.0, live.1),
                    "a frame not sealed with the key for {live:?} was taken: {input:?}"
                );
                match input {
                    Some(
                        Input::Append {
                            boot_id,
                            device_seq,
                            ..
                        }
                        | Input::Subscribe {
                            boot_id,
                            device_seq,
                            ..
                        }
                        | Input::Offload {
                            boot_id,
                            device_seq,
                            ..
                        },
                    ) => {
                        assert_eq!(*boot_id, live.0);
                        assert_eq!(*device_seq, seq);
                        assert!(
                            self.handed_in.insert((live, seq)),
                            "request {seq} of {live:?} handed up twice"
                        );
                        self.handed.push(HandedUp {
                            boot_id: *boot_id,
                            device_seq: seq,
                        });
                        self.requests += 1;
                    }
                    Some(Input::DeliveryAck { gateway_seq }) => {
                        assert_eq!(ty, Some(Type::DeliveryAck));
                        self.unacked.remove(&(live, *gateway_seq));
                    }
                    None => {
                        assert_eq!(ty, Some(Type::Ping));
                        self.pings.insert((live, seq));
                    }
                }
            }
        }
        r
    }

    /// Whether `frame` was sealed with the key, from the device, in session
    /// `session_id` of boot `boot_id`.
    fn opens(&self, frame: &[u8], boot_id: u64, session_id: u32) -> bool {
        let ctx = Context {
            boot_id,
            session_id,
            direction: Direction::Up,
        };
        self.cipher.open(&mut frame.to_vec(), &ctx).is_ok()
    }

    /// Takes every frame waiting (at most `max`, the most the last step
    /// may have made) and checks it.
    fn drain(&mut self, max: usize) -> usize {
        let mut n = 0;
        while let Some(frame) = self.g.poll_transmit() {
            n += 1;
            assert!(n <= max, "more than {max} frames for one step");
            self.check_down(&frame);
        }
        n
    }

    fn check_down(&mut self, frame: &[u8]) {
        assert!(frame.len() <= FRAME_LEN_MAX);
        let f = Frame::new_checked(frame).expect("a sent frame is well-formed");
        let ty = f.frame_type().expect("checked");
        let seq = f.seq();
        let mut plain = frame.to_vec();
        if ty == Type::HelloAck {
            let (boot_id, attempt) = self.hello.expect("a hello ack answers a hello");
            let ctx = Context {
                boot_id,
                session_id: attempt,
                direction: Direction::Down,
            };
            self.cipher
                .open(&mut plain, &ctx)
                .expect("a hello ack opens under its hello's context");
            let Ok(Message::HelloAck(a)) =
                Message::parse(&Frame::new_checked(&plain[..]).expect("checked"))
            else {
                panic!("a hello ack that does not parse");
            };
            assert_eq!(seq, 0);
            assert_eq!(a.attempt, attempt, "a hello ack names another attempt");
            assert_eq!(a.window, self.window);
            if let Some((b, s)) = self.current
                && b == boot_id
            {
                assert_eq!(
                    a.session_id, s,
                    "a hello ack for the live boot names another session"
                );
            }
            self.sessions_of.insert(boot_id, a.session_id);
            self.session_ids.insert(a.session_id);
            return;
        }
        let live = self.current.expect("only a live session sends");
        let ctx = Context {
            boot_id: live.0,
            session_id: live.1,
            direction: Direction::Down,
        };
        let prev = self
            .down_nonces
            .entry((live, seq))
            .or_insert_with(|| frame.to_vec());
        assert_eq!(prev, frame, "two frames under one nonce");
        self.cipher
            .open(&mut plain, &ctx)
            .expect("a sent frame opens under the live session");
        let msg = Message::parse(&Frame::new_checked(&plain[..]).expect("checked"))
            .expect("a sent frame parses");
        crate::trace!("  out seq {seq} {msg:?}");
        let said = |seq: u32| self.replies.get(&(live, seq));
        match msg {
            Message::Ack(a) => assert_eq!(
                said(a.acked),
                Some(&Reply::Ack(a.topic_seq)),
                "ack for {} not committed as {}",
                a.acked,
                a.topic_seq
            ),
            Message::OffloadResult(o) => assert_eq!(
                said(o.acked),
                Some(&Reply::Offload(o.status, o.payload.to_vec())),
            ),
            Message::Error(e) => assert_eq!(
                said(e.about),
                Some(&Reply::Refused(e.code, e.text.to_string())),
            ),
            Message::Pong(p) => assert!(
                self.pings.contains(&(live, p.acked)),
                "pong for {}, no such ping",
                p.acked
            ),
            Message::Delivery(_) => {
                if self.new_delivery == Some(seq) {
                    self.deliveries.insert((live, seq), frame.to_vec());
                } else {
                    assert_eq!(
                        self.deliveries.get(&(live, seq)).map(Vec::as_slice),
                        Some(frame),
                        "a redelivery that is not the delivery"
                    );
                    assert!(self.unacked.contains(&(live, seq)));
                }
            }
            other => panic!("the gateway sent {other:?}"),
        }
    }

    fn check(&self) {
        let st = self.g.stats();
        assert_eq!(st.requests, self.requests);
        assert_eq!(st.sessions, self.sessions);
        assert!(
            st.duplicates <= self.replayed,
            "{} duplicates, {} replays",
            st.duplicates,
            self.replayed
        );
        assert_eq!(st.outbox_overflow, self.overflow);
        assert_eq!(self.g.drops().total(), self.errors);
        assert_eq!(self.g.current(), self.current);
        let unacked = self
            .current
            .map_or(0, |l| self.unacked.iter().filter(|(x, _)| *x == l).count());
        assert_eq!(self.g.unacked_deliveries(), unacked);
        assert!(unacked <= DELIVERIES_UNACKED_MAX);
    }
}

/// Helpers on frames.
struct Session;

impl Session {
    /// The boot and attempt a well-formed hello names (for checking its
    /// answer).
    fn hello_of(frame: &[u8]) -> Option<(u64, u32)> {
        let f = Frame::new_checked(frame).ok()?;
        match Message::parse(&f).ok()? {
            Message::Hello(h) => Some((h.boot_id, h.attempt)),
            _ => None,
        }
    }
}
