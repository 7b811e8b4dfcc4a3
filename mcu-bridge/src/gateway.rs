//! The gateway side of one device's session (feature `std`): pure logic, no
//! sockets, no clock. The node's gateway (`woof_node::devices::gateway`)
//! holds one of these per device and drives it; the tests drive it against
//! [`crate::session::Session`].
//!
//! It authenticates every frame, answers hellos and pings itself, and hands
//! requests up as [`Input`]s. It answers a request only when told to
//! ([`Session::committed`], [`Session::offload_result`], [`Session::refuse`])
//! so an append is acknowledged only once it is committed. Requests are
//! remembered by (boot id, device sequence number): a retransmission (or a
//! replay) of one already seen is never handed up again, and gets the same
//! answer again once there is one.
//!
//! A hello for a new boot while a session is live could be a replay of an
//! old hello, so the new session stays pending, and the live one stays, until
//! a frame authenticates under the new session's nonces (the device pings at
//! once to prove it).

use std::collections::{BTreeMap, VecDeque};
use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::crypto::{Cipher, Context, Direction, Drops, KEY_LEN, ReplayWindow, Verdict};
use crate::wire::{
    self, Ack, Delivery, ErrorReport, Frame, HelloAck, Message, OffloadResult, Pong, SEQ_MAX,
    Topic, Type,
};
use crate::{Error, Result};

/// Requests remembered per session for dedupe. A request older than the
/// oldest remembered is dropped as too old, never handed up twice.
pub const REQUESTS_REMEMBERED: usize = 4096;
/// Frames waiting in [`Session::poll_transmit`]; beyond this the oldest are
/// dropped (every answer is sent again when its request is retransmitted).
pub const OUTBOX_MAX: usize = 256;
/// Deliveries sent and not yet acknowledged by the device; past this,
/// [`Session::deliver`] refuses ([`Error::OutboxFull`]).
pub const DELIVERIES_UNACKED_MAX: usize = 64;

/// A topic named in a request, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRef {
    Index(u8),
    Name(String),
}

impl TopicRef {
    fn from_wire(t: Topic<'_>) -> TopicRef {
        match t {
            Topic::Index(i) => TopicRef::Index(i),
            // The wire checked the alphabet, which is ASCII.
            Topic::Name(n) => TopicRef::Name(n.iter().map(|&c| char::from(c)).collect()),
        }
    }

    /// The wire form.
    pub fn as_wire(&self) -> Topic<'_> {
        match self {
            TopicRef::Index(i) => Topic::Index(*i),
            TopicRef::Name(n) => Topic::Name(n.as_bytes()),
        }
    }
}

/// A request for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Write this once; then call [`Session::committed`].
    Append {
        boot_id: u64,
        device_seq: u32,
        topic: TopicRef,
        payload: Vec<u8>,
    },
    /// Start deliveries; then call [`Session::subscribed`].
    Subscribe {
        boot_id: u64,
        device_seq: u32,
        topic: TopicRef,
        from: u64,
    },
    /// Run a handler; then call [`Session::offload_result`].
    Offload {
        boot_id: u64,
        device_seq: u32,
        handler: String,
        payload: Vec<u8>,
    },
    /// The device has the delivery sent as `gateway_seq`.
    DeliveryAck { gateway_seq: u32 },
}

/// The answer a request got, kept to answer its retransmissions.
#[derive(Debug, Clone)]
enum Reply {
    Pending,
    Ack(u64),
    Offload(u8, Vec<u8>),
    Refused(u8, String),
}

/// One boot's session.
#[derive(Debug)]
struct Live {
    boot_id: u64,
    session_id: u32,
    rx: ReplayWindow,
    /// The next gateway sequence number (0 is the hello ack's).
    tx_seq: u32,
    requests: BTreeMap<u32, Reply>,
    /// Requests at or below this were forgotten.
    floor: u32,
    /// Deliveries not yet acknowledged, sealed, by gateway sequence number:
    /// sent again as they are, so the device recognises a repeat.
    unacked: BTreeMap<u32, Vec<u8>>,
}

impl Live {
    fn new(boot_id: u64, session_id: u32) -> Live {
        Live {
            boot_id,
            session_id,
            rx: ReplayWindow::new(),
            tx_seq: 1,
            requests: BTreeMap::new(),
            floor: 0,
            unacked: BTreeMap::new(),
        }
    }

    fn ctx(&self, direction: Direction) -> Context {
        Context {
            boot_id: self.boot_id,
            session_id: self.session_id,
            direction,
        }
    }
}

/// Counts beyond the drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests handed up.
    pub requests: u64,
    /// Retransmitted or replayed requests answered again (or ignored while
    /// pending) instead of being handed up.
    pub duplicates: u64,
    /// Frames dropped because the outbox was full.
    pub outbox_overflow: u64,
    /// Sessions started (first hello, or a new boot confirmed).
    pub sessions: u64,
}

/// The gateway's state for one device.
pub struct Session {
    device_id: Vec<u8>,
    cipher: Cipher,
    window: u8,
    current: Option<Live>,
    /// A hello for another boot, not yet confirmed: (boot id, session id).
    pending: Option<(u64, u32)>,
    outbox: VecDeque<Vec<u8>>,
    drops: Drops,
    stats: Stats,
}

impl Session {
    /// A session for the device registered as `device_id` with `key`, which
    /// may have `window` (1..=64) requests in flight.
    pub fn new(device_id: &[u8], key: [u8; KEY_LEN], window: u8) -> Session {
        Session {
            device_id: device_id.to_vec(),
            cipher: Cipher::new(&key),
            window: window.clamp(1, 64),
            current: None,
            pending: None,
            outbox: VecDeque::new(),
            drops: Drops::default(),
            stats: Stats::default(),
        }
    }

    /// The device id a hello frame claims, read before any key is known (so
    /// the caller can find the key). `None` for anything but a well-formed
    /// hello.
    pub fn hello_device_id(frame: &[u8]) -> Option<&[u8]> {
        let f = Frame::new_checked(frame).ok()?;
        match Message::parse(&f).ok()? {
            Message::Hello(h) if f.seq() == 0 => Some(h.device_id),
            _ => None,
        }
    }

    pub fn drops(&self) -> Drops {
        self.drops
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The live session's (boot id, session id).
    pub fn current(&self) -> Option<(u64, u32)> {
        self.current.as_ref().map(|l| (l.boot_id, l.session_id))
    }

    /// Takes one frame from the device. `rand` picks the session id if this
    /// is a hello for a new boot. A dropped frame comes back as the error
    /// saying why and is counted in [`Session::drops`].
    pub fn handle_input(&mut self, frame: &[u8], rand: u32) -> Result<Option<Input>> {
        let r = self.input(frame, rand);
        if let Err(e) = r {
            self.drops.count(e);
        }
        r
    }

    fn input(&mut self, frame: &[u8], rand: u32) -> Result<Option<Input>> {
        let f = Frame::new_checked(frame)?;
        let ty = f.frame_type().ok_or(Error::UnknownType)?;
        let seq = f.seq();
        if ty == Type::Hello {
            return self.hello(frame, seq, rand).map(|()| None);
        }
        if !ty.is_encrypted() {
            return Err(Error::Unexpected);
        }
        let mut buf = frame.to_vec();
        let under_current = match &self.current {
            Some(live) => self.cipher.open(&mut buf, &live.ctx(Direction::Up)).is_ok(),
            None => false,
        };
        if !under_current {
            let Some((boot_id, session_id)) = self.pending else {
                return Err(if self.current.is_some() {
                    Error::Forged
                } else {
                    Error::NotConnected
                });
            };
            buf.copy_from_slice(frame);
            let ctx = Context {
                boot_id,
                session_id,
                direction: Direction::Up,
            };
            self.cipher.open(&mut buf, &ctx)?;
            // The device proved it holds this session: the old boot is over.
            self.current = Some(Live::new(boot_id, session_id));
            self.pending = None;
            self.stats.sessions += 1;
        }
        let msg = Message::parse(&Frame::new_unchecked(&buf[..]))?;
        let Some(live) = self.current.as_mut() else {
            return Err(Error::NotConnected);
        };
        let boot_id = live.boot_id;
        let input = match msg {
            Message::Append(a) => Input::Append {
                boot_id,
                device_seq: seq,
                topic: TopicRef::from_wire(a.topic),
                payload: a.payload.to_vec(),
            },
            Message::Subscribe(s) => Input::Subscribe {
                boot_id,
                device_seq: seq,
                topic: TopicRef::from_wire(s.topic),
                from: s.from,
            },
            Message::Offload(o) => Input::Offload {
                boot_id,
                device_seq: seq,
                // The wire checked the alphabet, which is ASCII.
                handler: o.handler.iter().map(|&c| char::from(c)).collect(),
                payload: o.payload.to_vec(),
            },
            Message::Ping | Message::DeliveryAck(_) => {
                match live.rx.check(seq) {
                    Verdict::Fresh => live.rx.accept(seq),
                    Verdict::Duplicate => return Err(Error::Replayed),
                    Verdict::TooOld => return Err(Error::TooOld),
                }
                return Ok(match msg {
                    Message::DeliveryAck(d) => {
                        live.unacked.remove(&d.acked);
                        Some(Input::DeliveryAck {
                            gateway_seq: d.acked,
                        })
                    }
                    _ => {
                        self.send(Message::Pong(Pong { acked: seq }))?;
                        None
                    }
                });
            }
            _ => return Err(Error::Unexpected),
        };
        // A request: the remembered requests decide, not the window, so a
        // retransmission from far behind is still recognised.
        if seq <= live.floor {
            return Err(Error::TooOld);
        }
        live.rx.accept(seq);
        if let Some(reply) = live.requests.get(&seq).cloned() {
            self.stats.duplicates += 1;
            self.answer(seq, reply)?;
            return Err(Error::Replayed);
        }
        live.requests.insert(seq, Reply::Pending);
        while live.requests.len() > REQUESTS_REMEMBERED {
            if let Some((old, _)) = live.requests.pop_first() {
                live.floor = live.floor.max(old);
            }
        }
        self.stats.requests += 1;
        Ok(Some(input))
    }

    fn hello(&mut self, frame: &[u8], seq: u32, rand: u32) -> Result<()> {
        if seq != 0 {
            return Err(Error::BadField);
        }
        let f = Frame::new_checked(frame)?;
        let Message::Hello(hello) = Message::parse(&f)? else {
            return Err(Error::Unexpected);
        };
        if hello.device_id != self.device_id.as_slice() {
            return Err(Error::Unexpected);
        }
        let boot_id = hello.boot_id;
        let mut buf = frame.to_vec();
        let ctx = Context {
            boot_id,
            session_id: hello.attempt,
            direction: Direction::Up,
        };
        self.cipher.open(&mut buf, &ctx)?;
        let session_id = match (&self.current, self.pending) {
            // A retransmitted hello: the same answer.
            (Some(live), _) if live.boot_id == boot_id => live.session_id,
            (_, Some((b, s))) if b == boot_id => s,
            (current, _) => {
                let session_id = if rand == 0 { 1 } else { rand };
                if current.is_none() {
                    self.current = Some(Live::new(boot_id, session_id));
                    self.stats.sessions += 1;
                } else {
                    self.pending = Some((boot_id, session_id));
                }
                session_id
            }
        };
        let ack = Message::HelloAck(HelloAck {
            session_id,
            window: self.window,
            attempt: hello.attempt,
        });
        let mut out = vec![0; ack.buffer_len(0)];
        ack.emit(0, &mut out)?;
        let ctx = Context {
            boot_id,
            session_id: hello.attempt,
            direction: Direction::Down,
        };
        self.cipher.seal(&mut out, &ctx)?;
        self.push(out);
        Ok(())
    }

    fn answer(&mut self, device_seq: u32, reply: Reply) -> Result<()> {
        match reply {
            Reply::Pending => Ok(()),
            Reply::Ack(topic_seq) => self.send(Message::Ack(Ack {
                acked: device_seq,
                topic_seq,
            })),
            Reply::Offload(status, payload) => self.send(Message::OffloadResult(OffloadResult {
                acked: device_seq,
                status,
                payload: &payload,
            })),
            Reply::Refused(code, text) => self.send(Message::Error(ErrorReport {
                about: device_seq,
                code,
                text: &text,
            })),
        }
    }

    /// Records and sends the answer to a request of boot `boot_id`. Returns
    /// false (sending nothing) if that boot's session is over.
    fn reply(&mut self, boot_id: u64, device_seq: u32, reply: Reply) -> Result<bool> {
        let Some(live) = self.current.as_mut() else {
            return Ok(false);
        };
        if live.boot_id != boot_id || device_seq > SEQ_MAX {
            return Ok(false);
        }
        // Sent first: an answer that cannot be sent (too long for a frame)
        // is not kept to answer the retransmissions either.
        self.answer(device_seq, reply.clone())?;
        if let Some(live) = self.current.as_mut()
            && device_seq > live.floor
        {
            live.requests.insert(device_seq, reply);
        }
        Ok(true)
    }

    /// The append `device_seq` of boot `boot_id` is committed as element
    /// `topic_seq`: acknowledge it (now and on every retransmission).
    pub fn committed(&mut self, boot_id: u64, device_seq: u32, topic_seq: u64) -> Result<bool> {
        self.reply(boot_id, device_seq, Reply::Ack(topic_seq))
    }

    /// The subscription `device_seq` is in place from element `from`.
    pub fn subscribed(&mut self, boot_id: u64, device_seq: u32, from: u64) -> Result<bool> {
        self.reply(boot_id, device_seq, Reply::Ack(from))
    }

    /// The offloaded call `device_seq` finished.
    pub fn offload_result(
        &mut self,
        boot_id: u64,
        device_seq: u32,
        status: u8,
        payload: &[u8],
    ) -> Result<bool> {
        self.reply(
            boot_id,
            device_seq,
            Reply::Offload(status, payload.to_vec()),
        )
    }

    /// The request `device_seq` is refused with a [`wire::code`].
    pub fn refuse(&mut self, boot_id: u64, device_seq: u32, code: u8, text: &str) -> Result<bool> {
        if text.len() > wire::ERROR_TEXT_LEN_MAX {
            return Err(Error::BadField);
        }
        self.reply(boot_id, device_seq, Reply::Refused(code, text.into()))
    }

    /// Sends an element of a followed topic; returns the gateway sequence
    /// number that [`Input::DeliveryAck`] will name. Until that ack, the
    /// frame is kept for [`Session::redeliver`].
    pub fn deliver(&mut self, topic: Topic<'_>, topic_seq: u64, payload: &[u8]) -> Result<u32> {
        let live = self.current.as_ref().ok_or(Error::NotConnected)?;
        if live.unacked.len() >= DELIVERIES_UNACKED_MAX {
            return Err(Error::OutboxFull);
        }
        let seq = live.tx_seq;
        self.send(Message::Delivery(Delivery {
            topic,
            topic_seq,
            payload,
        }))?;
        if let (Some(frame), Some(live)) = (self.outbox.back(), self.current.as_mut()) {
            live.unacked.insert(seq, frame.clone());
        }
        Ok(seq)
    }

    /// Sends delivery `gateway_seq` again, the same frame; false if it was
    /// acknowledged (or its session is over).
    pub fn redeliver(&mut self, gateway_seq: u32) -> bool {
        let Some(frame) = self
            .current
            .as_ref()
            .and_then(|l| l.unacked.get(&gateway_seq))
            .cloned()
        else {
            return false;
        };
        self.push(frame);
        true
    }

    /// Deliveries sent and not yet acknowledged.
    pub fn unacked_deliveries(&self) -> usize {
        self.current.as_ref().map_or(0, |l| l.unacked.len())
    }

    fn send(&mut self, msg: Message<'_>) -> Result<()> {
        let live = self.current.as_mut().ok_or(Error::NotConnected)?;
        let seq = live.tx_seq;
        if seq > SEQ_MAX {
            return Err(Error::SeqExhausted);
        }
        let mut out = vec![0; msg.buffer_len(seq)];
        msg.emit(seq, &mut out)?;
        self.cipher.seal(&mut out, &live.ctx(Direction::Down))?;
        live.tx_seq += 1;
        self.push(out);
        Ok(())
    }

    fn push(&mut self, frame: Vec<u8>) {
        if self.outbox.len() >= OUTBOX_MAX {
            self.outbox.pop_front();
            self.stats.outbox_overflow += 1;
        }
        self.outbox.push_back(frame);
    }

    /// The next frame to send to the device.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = *b"0123456789abcdef";

    /// A frame from device `dev-1` in boot 7, sealed as the device would.
    fn up(msg: Message<'_>, seq: u32, session_id: u32) -> Vec<u8> {
        let mut out = vec![0; msg.buffer_len(seq)];
        msg.emit(seq, &mut out).unwrap();
        let ctx = Context {
            boot_id: 7,
            session_id,
            direction: Direction::Up,
        };
        Cipher::new(&KEY).seal(&mut out, &ctx).unwrap();
        out
    }

    /// Found with the fuzz harness (mcu-bridge/fuzz, target gateway, whose
    /// duplicate count check failed on it): an offload result too long for
    /// a frame was refused, yet kept as the answer, so every retransmission
    /// of the request failed again as a malformed frame instead of waiting
    /// for the real answer.
    #[test]
    fn an_answer_too_long_to_send_is_not_kept() {
        let mut g = Session::new(b"dev-1", KEY, 4);
        let hello = Message::Hello(wire::Hello {
            device_id: b"dev-1",
            boot_id: 7,
            caps: 0,
            attempt: 1,
        });
        let mut frame = vec![0; hello.buffer_len(0)];
        hello.emit(0, &mut frame).unwrap();
        let ctx = Context {
            boot_id: 7,
            session_id: 1,
            direction: Direction::Up,
        };
        Cipher::new(&KEY).seal(&mut frame, &ctx).unwrap();
        g.handle_input(&frame, 5).unwrap();
        let (_, session_id) = g.current().unwrap();
        let offload = up(
            Message::Offload(wire::Offload {
                handler: b"fft",
                payload: b"x",
            }),
            1,
            session_id,
        );
        assert!(matches!(
            g.handle_input(&offload, 0),
            Ok(Some(Input::Offload { .. }))
        ));
        while g.poll_transmit().is_some() {}
        assert_eq!(
            g.offload_result(7, 1, 0, &[0; wire::FRAME_LEN_MAX]),
            Err(Error::TooLong)
        );
        assert_eq!(g.poll_transmit(), None);
        // The retransmission waits for the answer, as before any answer.
        assert_eq!(g.handle_input(&offload, 0), Err(Error::Replayed));
        assert_eq!(g.drops().malformed, 0);
        assert_eq!(g.poll_transmit(), None);
        assert_eq!(g.offload_result(7, 1, 0, b"ok"), Ok(true));
        assert!(g.poll_transmit().is_some());
        assert_eq!(g.handle_input(&offload, 0), Err(Error::Replayed));
        assert!(g.poll_transmit().is_some(), "the answer again");
    }
}
