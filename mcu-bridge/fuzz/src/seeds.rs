//! The hand-made seeds of the corpus: valid frames of every type for
//! [`crate::frame`], and operation sequences for [`crate::device`] and
//! [`crate::gateway`] that go through a whole session (hello, requests and
//! their answers, deliveries, pings, retransmissions, replays, a reboot), so
//! the fuzzer starts past the handshake. `cargo test -- --ignored
//! write_seeds` writes them to `corpus/<target>/seed-*`.

use woof_mcu_bridge::crypto::Cipher;
use woof_mcu_bridge::wire::{
    self, Ack, Delivery, DeliveryAck, ErrorReport, Hello, HelloAck, Message, Offload,
    OffloadResult, Pong, SEQ_MAX, Subscribe, Topic, caps, code,
};

use crate::Builder;
use crate::device::op as d;
use crate::gateway::op as g;

/// One message of every type (and a few of the bounds), as plaintext
/// frames with a zeroed tag, and one sealed with the frame target's key.
pub fn frame() -> Vec<(String, Vec<u8>)> {
    let msgs = [
        Message::Hello(Hello {
            device_id: b"sensor-17",
            boot_id: 0x0102_0304_0506_0708,
            caps: caps::SUBSCRIBE | caps::OFFLOAD,
            attempt: 3,
        }),
        Message::HelloAck(HelloAck {
            session_id: 0xdead_beef,
            window: 8,
            attempt: 3,
        }),
        Message::Append(Append {
            topic: Topic::Index(3),
            payload: b"21.5",
        }),
        Message::Append(Append {
            topic: Topic::Name(b"farm/north/soil-moisture"),
            payload: b"",
        }),
        Message::Ack(Ack {
            acked: SEQ_MAX,
            topic_seq: u64::MAX,
        }),
        Message::Subscribe(Subscribe {
            topic: Topic::Name(b"cmd/valve"),
            from: 300,
        }),
        Message::Delivery(Delivery {
            topic: Topic::Index(0),
            topic_seq: 1 << 40,
            payload: b"open",
        }),
        Message::DeliveryAck(DeliveryAck { acked: 128 }),
        Message::Ping,
        Message::Pong(Pong { acked: 127 }),
        Message::Offload(Offload {
            handler: b"fft",
            payload: &[1, 2, 3, 4],
        }),
        Message::OffloadResult(OffloadResult {
            acked: 9,
            status: 0,
            payload: b"ok",
        }),
        Message::Error(ErrorReport {
            about: 5,
            code: code::FORBIDDEN,
            text: "forbidden topic",
        }),
    ];
    let seqs = [0, 1, 200, 20_000, SEQ_MAX];
    let mut out = Vec::new();
    for (i, msg) in msgs.iter().enumerate() {
        let seq = if matches!(msg, Message::Hello(_) | Message::HelloAck(_)) {
            0
        } else {
            seqs[i % seqs.len()]
        };
        let mut buf = vec![0; msg.buffer_len(seq)];
        msg.emit(seq, &mut buf).expect("a sample emits");
        out.push((format!("{:02}-{:?}", i, msg.frame_type()), buf));
    }
    let mut buf = vec![0; Message::Ping.buffer_len(3)];
    Message::Ping.emit(3, &mut buf).expect("emits");
    Cipher::new(&crate::frame::KEY)
        .seal(&mut buf, &crate::frame::CTX)
        .expect("seals");
    out.push(("sealed-ping".into(), buf));
    out
}

use wire::Append;

/// The device header: session shape 0 (4 slots of 64 bytes), no caps, the
/// default ping interval, time 1000, rand 1.
fn device_header(shape: u8) -> Builder {
    let mut b = Builder::default();
    b.u8(shape).u8(0).u8(0).u32(1000).u32(1);
    b
}

/// Hello, hello ack (session 9, window 4), and the answer to the
/// confirming ping.
fn device_connect(b: &mut Builder) {
    b.u8(d::SETTLE);
    b.u8(d::HELLO_ACK).u32(9).u8(4).u8(0);
    b.u8(d::SETTLE);
    // Pong (type 2) at the next gateway seq, in the session, for the ping.
    b.u8(d::DOWN).u8(2).u8(0).u8(0).u8(0);
}

/// An ack (type 0) for the oldest request, at the next gateway seq.
fn device_ack(b: &mut Builder, topic_seq: u64) {
    b.u8(d::DOWN).u8(0).u8(0).u8(0).u8(0).u64(topic_seq);
}

pub fn device() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();

    let mut b = device_header(0);
    device_connect(&mut b);
    b.u8(d::APPEND).u8(3).bytes(b"21.5").u32(7);
    b.u8(d::SETTLE);
    b.u8(d::TICK).u16(5);
    device_ack(&mut b, 41);
    b.u8(d::SETTLE);
    out.push(("append-acked".into(), b.0));

    let mut b = device_header(2);
    device_connect(&mut b);
    b.u8(d::SUBSCRIBE).u8(0x81).u64(0).u32(3);
    b.u8(d::SETTLE);
    device_ack(&mut b, 100);
    // Delivery (type 1) topic index 0, topic seq 100, "open"; then again.
    b.u8(d::DOWN)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(0)
        .u64(100)
        .bytes(b"open");
    b.u8(d::REPLAY).u8(2);
    b.u8(d::SETTLE);
    b.u8(d::DOWN)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(0)
        .u64(101)
        .bytes(b"shut");
    b.u8(d::SETTLE);
    out.push(("subscribe-deliveries".into(), b.0));

    let mut b = device_header(0);
    device_connect(&mut b);
    b.u8(d::APPEND).u8(1).bytes(b"x").u32(u32::MAX);
    // Lost every time: retransmitted, then given up.
    for _ in 0..8 {
        b.u8(d::SETTLE).u8(d::TICK).u16(0x8000 | 20);
    }
    b.u8(d::SETTLE);
    out.push(("retransmit-give-up".into(), b.0));

    let mut b = device_header(0);
    device_connect(&mut b);
    b.u8(d::OFFLOAD).u8(0).bytes(&[1, 2, 3]).u32(0);
    b.u8(d::SETTLE);
    // OffloadResult (type 4) for it, status 0, "ok".
    b.u8(d::DOWN).u8(4).u8(0).u8(0).u8(0).u8(0).bytes(b"ok");
    b.u8(d::APPEND).u8(0x80).bytes(b"").u32(1);
    b.u8(d::SETTLE);
    // Error (type 3) about it, code 2 (forbidden), text "no".
    b.u8(d::DOWN).u8(3).u8(0).u8(0).u8(1).u8(0).u8(2).u8(1);
    b.u8(d::SETTLE);
    out.push(("offload-and-refusal".into(), b.0));

    let mut b = device_header(1);
    device_connect(&mut b);
    b.u8(d::APPEND).u8(2).bytes(b"r").u32(5);
    b.u8(d::SETTLE);
    // Error about nothing, unknown session: hello again, the same session.
    b.u8(d::DOWN).u8(3).u8(0).u8(0).u8(0).u8(1).u8(2);
    b.u8(d::SETTLE);
    b.u8(d::REPLAY).u8(0);
    b.u8(d::HELLO_ACK).u32(9).u8(4).u8(0);
    b.u8(d::SETTLE);
    device_ack(&mut b, 7);
    b.u8(d::RECONNECT).u8(d::SETTLE);
    b.u8(d::HELLO_ACK).u32(10).u8(1).u8(0);
    b.u8(d::SETTLE);
    out.push(("unknown-session-reconnect".into(), b.0));

    let mut b = device_header(0);
    device_connect(&mut b);
    b.u8(d::MUTATE).u8(1).u16(3).u8(0x40).u8(0);
    b.u8(d::MUTATE).u8(1).u16(5).u8(1).u8(1);
    b.u8(d::REFLECT).u8(1);
    b.u8(d::RAW)
        .bytes(&[0x17, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // A raw body under a good tag: type 5 (delivery), body of one 0x00.
    b.u8(d::DOWN).u8(0x85).u8(0).u8(0).bytes(&[0]);
    // A frame that only goes up (ping, type 5 of the structured ones).
    b.u8(d::DOWN).u8(5).u8(0).u8(0);
    b.u8(d::TICK).u16(0x8000 | 31);
    b.u8(d::TRANSMIT).u8(d::EVENTS);
    out.push(("forgeries".into(), b.0));

    // Answers recorded earlier, replayed: after the session is lost and
    // before the next hello, to a later hello, under a later hello's nonce
    // naming an earlier one; then the fresh answers. The last goes back to
    // the first gateway, which still holds session 9: a new replay window,
    // so its old delivery is taken again (known, see README.md).
    let mut b = device_header(0);
    device_connect(&mut b); // down[0] the hello ack, down[1] the pong
    b.u8(d::SUBSCRIBE).u8(0).u64(0).u32(3);
    b.u8(d::SETTLE);
    device_ack(&mut b, 100); // down[2]
    // down[3]: a delivery in session 9.
    b.u8(d::DOWN)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(0)
        .u64(100)
        .bytes(b"open");
    b.u8(d::SETTLE);
    b.u8(d::RECONNECT);
    b.u8(d::REPLAY).u8(0); // before the next hello
    b.u8(d::SETTLE); // hello 2
    b.u8(d::REPLAY).u8(0); // to hello 2
    b.u8(d::HELLO_ACK).u32(10).u8(4).u8(0); // another gateway
    b.u8(d::SETTLE);
    b.u8(d::REPLAY).u8(3); // the old delivery: not in session 10
    b.u8(d::RECONNECT).u8(d::SETTLE); // hello 3
    b.u8(d::REPLAY).u8(0);
    b.u8(d::HELLO_ACK).u32(9).u8(4).u8(0x81); // hello 2's answer
    b.u8(d::HELLO_ACK).u32(9).u8(4).u8(0xc0).u32(1); // naming hello 1
    b.u8(d::HELLO_ACK).u32(9).u8(4).u8(0); // back to the first gateway
    b.u8(d::REPLAY).u8(3);
    b.u8(d::SETTLE);
    b.u8(d::TICK).u16(0x8000 | 20);
    b.u8(d::SETTLE);
    out.push(("hello-ack-replayed".into(), b.0));

    // A session lost to silence and answered again before the caller
    // polls its events: Connected, and no stale Disconnected after it.
    let mut b = device_header(0);
    device_connect(&mut b);
    for _ in 0..6 {
        b.u8(d::TRANSMIT).u8(d::TICK).u16(0x8000 | 64);
    }
    b.u8(d::TRANSMIT); // the session is lost: hello 2
    b.u8(d::HELLO_ACK).u32(9).u8(4).u8(0);
    b.u8(d::EVENTS).u8(d::SETTLE);
    out.push(("lost-answered-before-events".into(), b.0));

    let mut b = device_header(0);
    // Silence: hellos back off.
    for _ in 0..6 {
        b.u8(d::SETTLE).u8(d::TICK).u16(0x8000 | 64);
    }
    out.push(("hellos-unanswered".into(), b.0));
    out
}

/// The gateway header: window 4.
fn gateway_header() -> Builder {
    let mut b = Builder::default();
    b.u8(4);
    b
}

/// A request for boot index `boot` in its learnt session at the next seq.
fn gateway_request(b: &mut Builder, boot: u8, kind: u8) -> &mut Builder {
    b.u8(g::REQUEST).u8(boot).u8(0).u8(0).u8(kind)
}

pub fn gateway() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();

    let mut b = gateway_header();
    b.u8(g::HELLO).u8(0).u32(77).u8(0);
    gateway_request(&mut b, 0, 3); // ping
    gateway_request(&mut b, 0, 0).u8(3).bytes(b"21.5"); // append
    b.u8(g::ANSWER).u16(0).u8(0).u64(41); // committed
    b.u8(g::REPLAY).u8(2).u32(0); // retransmitted: the same ack
    b.u8(g::REPLAY).u8(1).u32(0); // a replayed ping
    out.push(("append-committed".into(), b.0));

    let mut b = gateway_header();
    b.u8(g::HELLO).u8(1).u32(5).u8(8);
    gateway_request(&mut b, 1, 1).u8(0x81).u64(0); // subscribe
    b.u8(g::ANSWER).u16(0).u8(1).u64(10); // subscribed
    b.u8(g::DELIVER).u8(0x81).u64(10).bytes(b"open");
    b.u8(g::DELIVER).u8(0x81).u64(11).bytes(b"shut");
    b.u8(g::REDELIVER).u8(0);
    gateway_request(&mut b, 1, 4).u8(0); // delivery ack
    b.u8(g::REDELIVER).u8(0);
    b.u8(g::REDELIVER).u8(1);
    out.push(("subscribe-deliveries".into(), b.0));

    let mut b = gateway_header();
    b.u8(g::HELLO).u8(0).u32(1).u8(0);
    gateway_request(&mut b, 0, 2).u8(0).bytes(&[1, 2, 3]); // offload
    gateway_request(&mut b, 0, 0).u8(0x80).bytes(b""); // append
    b.u8(g::ANSWER).u16(0).u8(2).u8(0).bytes(b"ok");
    b.u8(g::ANSWER).u16(1).u8(3).u8(2).u8(2); // refused, forbidden
    b.u8(g::REPLAY).u8(1).u32(0);
    b.u8(g::REPLAY).u8(2).u32(0);
    out.push(("offload-and-refusal".into(), b.0));

    let mut b = gateway_header();
    b.u8(g::HELLO).u8(0).u32(1).u8(0);
    gateway_request(&mut b, 0, 0).u8(1).bytes(b"a");
    // A new boot: pending until its ping, then the old boot's commit is
    // too late.
    b.u8(g::HELLO).u8(1).u32(2).u8(0);
    gateway_request(&mut b, 0, 0).u8(1).bytes(b"b");
    gateway_request(&mut b, 1, 3);
    gateway_request(&mut b, 1, 0).u8(1).bytes(b"c");
    b.u8(g::ANSWER).u16(0).u8(0).u64(1);
    b.u8(g::ANSWER).u16(1).u8(0).u64(2);
    b.u8(g::HELLO).u8(0).u32(3).u8(0); // the old hello again
    out.push(("reboot".into(), b.0));

    let mut b = gateway_header();
    b.u8(g::HELLO).u8(2).u32(9).u8(0);
    b.u8(g::HELLO).u8(2).u32(9).u8(1); // another device
    b.u8(g::HELLO).u8(2).u32(9).u8(2); // another key
    b.u8(g::BURST).u8(0).u8(150); // 300 copies: the outbox overflows
    gateway_request(&mut b, 2, 7); // wrong key
    gateway_request(&mut b, 2, 6).u8(0); // an ack, from the device
    gateway_request(&mut b, 2, 5).u8(0x1f).bytes(&[0xff, 0]); // bad type
    b.u8(g::MUTATE).u8(0).u16(1).u8(4).u8(0).u32(0);
    b.u8(g::MUTATE).u8(0).u16(9).u8(4).u8(1).u32(0);
    b.u8(g::RAW).bytes(&[0x10, 0, b'x']).u32(0);
    out.push(("forgeries-and-floods".into(), b.0));

    // Hellos again: the same boot's next attempt (its answer lost, or the
    // device back from another gateway) gets the same session, named for
    // that attempt; a replayed earlier hello, the same session named for
    // its own; any attempt; a new boot, pending until its ping.
    let mut b = gateway_header();
    b.u8(g::HELLO).u8(0).u32(21).u8(0); // attempt 1
    gateway_request(&mut b, 0, 3); // ping
    b.u8(g::HELLO).u8(0).u32(22).u8(0); // attempt 2
    b.u8(g::REPLAY).u8(0).u32(23); // attempt 1 again
    b.u8(g::HELLO).u8(0).u32(24).u8(0x10).u32(0x8000_0000);
    gateway_request(&mut b, 0, 0).u8(1).bytes(b"a");
    b.u8(g::HELLO).u8(1).u32(25).u8(0); // boot 2, attempt 1: pending
    b.u8(g::HELLO).u8(1).u32(26).u8(0); // attempt 2
    gateway_request(&mut b, 1, 3); // its ping: live
    b.u8(g::REPLAY).u8(2).u32(27); // the first boot's hello 2: pending
    out.push(("hello-attempts".into(), b.0));

    // An offload result too long for a frame: refused and not kept, so the
    // retransmission waits for the real one.
    let mut b = gateway_header();
    b.u8(g::HELLO).u8(0).u32(77).u8(0);
    gateway_request(&mut b, 0, 2).u8(0).bytes(b"abc");
    b.u8(g::ANSWER).u16(0).u8(2).u8(0).bytes(&[7; 1005]);
    b.u8(g::REPLAY).u8(1).u32(0);
    b.u8(g::ANSWER).u16(0).u8(2).u8(0).bytes(b"ok");
    b.u8(g::REPLAY).u8(1).u32(0);
    out.push(("offload-result-too-long".into(), b.0));
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn write(target: &str, seeds: Vec<(String, Vec<u8>)>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, data) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
        }
    }

    /// Writes the seeds into the corpus (run by hand after changing them).
    #[test]
    #[ignore]
    fn write_seeds() {
        write("frame", super::frame());
        write("device", super::device());
        write("gateway", super::gateway());
    }
}
