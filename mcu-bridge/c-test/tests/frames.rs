//! The C port frame for frame against the Rust core: every scenario drives
//! a [`Lockstep`] of both, which asserts after every call that they sent
//! the same bytes, reported the same events and errors, and hold the same
//! counters and deadlines. The scenarios also check the protocol's
//! outcomes themselves, so that two cores wrong in the same way still fail.
//! The last test runs every scenario again against a copy of the C core
//! built with `-fsanitize=address,undefined` in a process of its own.

use std::path::PathBuf;
use std::sync::OnceLock;

use woof_mcu_bridge::crypto::{Cipher, KEY_LEN};
use woof_mcu_bridge::gateway::{self, Input, TopicRef};
use woof_mcu_bridge::session::{PING_INTERVAL_MS, RequestKind};
use woof_mcu_bridge::wire::{
    self, Ack, Delivery, ErrorReport, Frame, HelloAck, Message, OffloadResult, Pong, Topic, Type,
    code,
};
use woof_mcu_c_test::*;

const KEY: [u8; KEY_LEN] = *b"k3y-of-device-07";
const ID: &str = "device-07";
const RUST_AND_C: &[Impl] = &[Impl::Rust, Impl::C];

fn spec(boot_id: u64) -> Spec {
    Spec {
        id: ID.into(),
        key: KEY,
        boot_id,
        caps: wire::caps::SUBSCRIBE | wire::caps::OFFLOAD,
        ping_interval_ms: PING_INTERVAL_MS,
    }
}

fn frame_type(f: &[u8]) -> Type {
    Frame::new_checked(f).unwrap().frame_type().unwrap()
}

fn frame_seq(f: &[u8]) -> u32 {
    Frame::new_checked(f).unwrap().seq()
}

/// A hello's fields (its body travels in the clear): the device id, boot
/// id and caps, and apart the attempt number.
fn hello_of(f: &[u8]) -> ((Vec<u8>, u64, u8), u32) {
    let Ok(Message::Hello(h)) = Message::parse(&Frame::new_checked(f).unwrap()) else {
        panic!("not a hello: {f:02x?}")
    };
    ((h.device_id.to_vec(), h.boot_id, h.caps), h.attempt)
}

/// Frames both ways with no loss until both sides are quiet: the device's
/// events and the gateway's inputs.
fn exchange(dev: &mut Lockstep, gw: &mut gateway::Session, now: u64) -> (Vec<Ev>, Vec<Input>) {
    let mut events = Vec::new();
    let mut inputs = Vec::new();
    loop {
        let mut quiet = true;
        for f in dev.transmit_all(now) {
            quiet = false;
            if let Ok(Some(input)) = gw.handle_input(&f, 0x5e55_0001) {
                inputs.push(input);
            }
        }
        while let Some(f) = gw.poll_transmit() {
            quiet = false;
            if let Ok(Some(ev)) = dev.handle_input(now, &f) {
                events.push(ev);
            }
        }
        events.extend(dev.events(now));
        if quiet {
            return (events, inputs);
        }
    }
}

fn connect(dev: &mut Lockstep, gw: &mut gateway::Session, now: u64) {
    let (events, _) = exchange(dev, gw, now);
    assert_eq!(
        events.first(),
        Some(&Ev::Connected {
            session_id: 0x5e55_0001
        }),
        "{events:?}"
    );
    assert!(matches!(events.get(1), Some(Ev::Pong { .. })), "{events:?}");
}

/// Hello (retried unanswered with backoff), the hello ack, the confirming
/// ping; appends by index and by name, acked with their topic seqs;
/// retransmissions that reach the gateway twice; a request lost until it
/// is given up; the link declared dead after unanswered pings; a new
/// hello.
fn handshake_appends_and_retransmissions(impls: &[Impl]) {
    let mut dev = Lockstep::start(impls, &spec(0xb007), 0, 12345).unwrap();
    let mut gw = gateway::Session::new(ID.as_bytes(), KEY, 4);
    let mut now = 0;
    let mut hellos = Vec::new();
    for _ in 0..4 {
        let f = dev.transmit_all(now);
        assert_eq!(f.len(), 1);
        assert_eq!(frame_type(&f[0]), Type::Hello);
        hellos.push((now, f[0].clone()));
        now = dev.state().poll_timeout;
    }
    // The same hello each time but for its attempt number, one more at
    // each (so a new tag too); 2 to 3 s, then doubling.
    let fields: Vec<_> = hellos.iter().map(|(_, f)| hello_of(f)).collect();
    assert!(fields.iter().all(|(h, _)| *h == fields[0].0));
    assert_eq!(fields[0].0, (ID.as_bytes().to_vec(), 0xb007, spec(0).caps));
    let attempts: Vec<u32> = fields.iter().map(|(_, a)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert!(hellos.windows(2).all(|w| w[0].1 != w[1].1));
    assert_eq!(dev.state().hello_attempt, 4);
    let gaps: Vec<u64> = hellos.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!((2_000..3_000).contains(&gaps[0]), "{gaps:?}");
    assert_eq!(gaps[1], 2 * gaps[0]);
    assert_eq!(gaps[2], 4 * gaps[0]);
    connect(&mut dev, &mut gw, now);

    let a = dev.append(Topic::Index(0), b"21.5", 1).unwrap();
    let b = dev
        .append(Topic::Name(b"farm/north/temp"), br#"{"t":21.5}"#, 2)
        .unwrap();
    let (events, inputs) = exchange(&mut dev, &mut gw, now + 10);
    assert!(events.is_empty(), "{events:?}");
    let mut topics = Vec::new();
    for input in &inputs {
        let Input::Append {
            boot_id,
            device_seq,
            topic,
            ..
        } = input
        else {
            panic!("{input:?}")
        };
        topics.push(topic.clone());
        assert!(
            gw.committed(*boot_id, *device_seq, 100 + u64::from(*device_seq))
                .unwrap()
        );
    }
    assert_eq!(
        topics,
        [TopicRef::Index(0), TopicRef::Name("farm/north/temp".into())]
    );
    let (events, _) = exchange(&mut dev, &mut gw, now + 20);
    assert_eq!(
        events,
        [
            Ev::Acked {
                seq: a,
                kind: RequestKind::Append,
                topic_seq: 100 + u64::from(a)
            },
            Ev::Acked {
                seq: b,
                kind: RequestKind::Append,
                topic_seq: 100 + u64::from(b)
            }
        ]
    );

    // The first send reaches the gateway but its ack is lost; the
    // retransmission (the same bytes) is answered again, handed up once.
    now += 1_000;
    let c = dev.append(Topic::Index(3), &[0xab; 40], 7).unwrap();
    let first = dev.transmit_all(now);
    assert_eq!(first.len(), 1);
    let Ok(Some(Input::Append {
        boot_id,
        device_seq,
        ..
    })) = gw.handle_input(&first[0], 0)
    else {
        panic!("not handed up")
    };
    assert_eq!(device_seq, c);
    gw.committed(boot_id, device_seq, 7).unwrap();
    while gw.poll_transmit().is_some() {}
    now = dev.state().poll_timeout;
    let again = dev.transmit_all(now);
    assert_eq!(again, first, "a retransmission is the same frame");
    assert!(
        gw.handle_input(&again[0], 0).is_err(),
        "not handed up twice"
    );
    let (events, _) = exchange(&mut dev, &mut gw, now + 5);
    assert_eq!(
        events,
        [Ev::Acked {
            seq: c,
            kind: RequestKind::Append,
            topic_seq: 7
        }]
    );
    assert_eq!(dev.state().stats.retransmitted, 1);

    // Now nothing gets through: the request is sent 5 times or more and
    // given up after 45 s; the pings go unanswered and the device says
    // hello again.
    let d = dev.append(Topic::Index(1), b"lost", u32::MAX).unwrap();
    let start = now;
    let mut sends = Vec::new();
    let mut events = Vec::new();
    while now < start + 400_000 && !events.contains(&Ev::Disconnected) {
        for f in dev.transmit_all(now) {
            if frame_type(&f) == Type::Append {
                assert_eq!(frame_seq(&f), d);
                sends.push(now - start);
            }
        }
        events.extend(dev.events(now));
        now = dev.state().poll_timeout.max(now + 1);
    }
    assert!(sends.len() > 5, "{sends:?}");
    let gave_up = events
        .iter()
        .position(|e| {
            *e == Ev::GaveUp {
                seq: d,
                kind: RequestKind::Append,
            }
        })
        .expect("given up");
    assert!(gave_up < events.len() - 1, "{events:?}");
    assert_eq!(events.last(), Some(&Ev::Disconnected));
    assert!(!dev.state().connected);
    let f = dev.transmit_all(now);
    assert_eq!(f.len(), 1);
    assert_eq!(frame_type(&f[0]), Type::Hello);
    let (again, attempt) = hello_of(&f[0]);
    assert_eq!(again, fields[0].0, "the same boot's hello");
    assert_eq!(attempt, dev.state().hello_attempt);
    assert!(attempt > 5, "a later attempt: {attempt}");
    dev.finish();
}

/// The Rust core's own timing tests, as known answers: a CoAP first
/// timeout of 2,999 ms doubling, given up at 92,969 ms; after timed
/// answers, 299 ms then 897 ms.
fn retransmission_timing(impls: &[Impl]) {
    let connected = |dev: &mut Lockstep| {
        let f = dev.transmit_all(0);
        assert_eq!(frame_type(&f[0]), Type::Hello);
        assert_eq!(dev.state().hello_attempt, 1);
        let ack = hello_ack(&KEY, 0xb007, 9, 2, 1);
        assert_eq!(
            dev.handle_input(0, &ack),
            Ok(Some(Ev::Connected { session_id: 9 }))
        );
        let f = dev.transmit_all(0);
        assert_eq!(frame_type(&f[0]), Type::Ping);
        let pong = down(
            &KEY,
            0xb007,
            9,
            1,
            &Message::Pong(Pong {
                acked: frame_seq(&f[0]),
            }),
        );
        assert_eq!(dev.handle_input(0, &pong), Ok(Some(Ev::Pong { rtt_ms: 0 })));
    };
    let mut dev = Lockstep::start(impls, &spec(0xb007), 0, 12345).unwrap();
    connected(&mut dev);
    let seq = dev.append(Topic::Index(1), b"x", u32::MAX).unwrap();
    let (mut now, mut sends, mut gave_up) = (0, Vec::new(), None);
    while now < 200_000 && gave_up.is_none() {
        for f in dev.transmit_all(now) {
            if frame_type(&f) == Type::Append {
                sends.push(now);
            }
        }
        if let Some(Ev::GaveUp { seq: s, .. }) = dev.poll_event(now) {
            gave_up = Some((s, now));
        }
        now = dev.state().poll_timeout.max(now + 1);
    }
    assert_eq!(sends, [0, 2_999, 8_997, 20_993, 44_985]);
    assert_eq!(gave_up, Some((seq, 92_969)));
    dev.finish();

    let mut dev = Lockstep::start(impls, &spec(0xb007), 0, 12345).unwrap();
    connected(&mut dev);
    let mut now = 0;
    for i in 0..10 {
        let seq = dev.append(Topic::Index(1), b"x", 0).unwrap();
        let f = dev.transmit_all(now);
        assert_eq!(f.len(), 1);
        now += 5;
        let ack = down(
            &KEY,
            0xb007,
            9,
            100 + seq,
            &Message::Ack(Ack {
                acked: seq,
                topic_seq: i,
            }),
        );
        assert!(matches!(
            dev.handle_input(now, &ack),
            Ok(Some(Ev::Acked { .. }))
        ));
    }
    assert_eq!(dev.state().retransmit_timeout_ms, 200);
    dev.append(Topic::Index(1), b"y", u32::MAX).unwrap();
    let start = now;
    let mut sends = Vec::new();
    while sends.len() < 3 {
        for f in dev.transmit_all(now) {
            if frame_type(&f) == Type::Append {
                sends.push(now - start);
            }
        }
        dev.events(now);
        now = dev.state().poll_timeout.max(now + 1);
    }
    assert_eq!(sends, [0, 299, 897]);
    dev.finish();
}

/// Subscriptions by name and index, deliveries and their acks (a repeat
/// acked again, reported once; more unacked than the ack queue holds), an
/// offload and its result, refusals, stale answers, an unknown-session
/// error, a reconnect, and a hello again to the same session keeping the
/// replay window.
fn subscribe_deliver_offload_and_errors(impls: &[Impl]) {
    let boot = 9;
    let mut dev = Lockstep::start(impls, &spec(boot), 0, 9).unwrap();
    let mut gw = gateway::Session::new(ID.as_bytes(), KEY, 8);
    connect(&mut dev, &mut gw, 0);
    let sub = dev.subscribe(Topic::Name(b"cmd/valve"), 0, 1).unwrap();
    let sub2 = dev.subscribe(Topic::Index(3), 1 << 40, 2).unwrap();
    let off = dev.offload(b"double", &[21], 3).unwrap();
    let bad = dev.append(Topic::Name(b"not/mine"), b"x", 4).unwrap();
    let off2 = dev.offload(b"fft", &[1, 2, 3, 4], 5).unwrap();
    let (_, inputs) = exchange(&mut dev, &mut gw, 1);
    assert_eq!(inputs.len(), 5, "{inputs:?}");
    for input in &inputs {
        match input {
            Input::Subscribe {
                device_seq,
                topic,
                from,
                ..
            } => {
                if *device_seq == sub {
                    assert_eq!((topic, *from), (&TopicRef::Name("cmd/valve".into()), 0));
                } else {
                    assert_eq!((topic, *from), (&TopicRef::Index(3), 1 << 40));
                }
                gw.subscribed(boot, *device_seq, 41).unwrap();
            }
            Input::Offload {
                device_seq,
                handler,
                payload,
                ..
            } if handler == "double" => {
                gw.offload_result(boot, *device_seq, 0, &[payload[0] * 2])
                    .unwrap();
            }
            Input::Offload { device_seq, .. } => {
                gw.offload_result(boot, *device_seq, code::HANDLER_FAILED, b"no fft here")
                    .unwrap();
            }
            Input::Append { device_seq, .. } => {
                gw.refuse(boot, *device_seq, code::FORBIDDEN, "topic not registered")
                    .unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    let g1 = gw.deliver(Topic::Name(b"cmd/valve"), 41, b"open").unwrap();
    gw.deliver(Topic::Index(3), 1 << 40, b"").unwrap();
    let (events, inputs) = exchange(&mut dev, &mut gw, 2);
    for want in [
        Ev::Acked {
            seq: sub,
            kind: RequestKind::Subscribe,
            topic_seq: 41,
        },
        Ev::Acked {
            seq: sub2,
            kind: RequestKind::Subscribe,
            topic_seq: 41,
        },
        Ev::OffloadResult {
            seq: off,
            status: 0,
            payload: vec![42],
        },
        Ev::OffloadResult {
            seq: off2,
            status: code::HANDLER_FAILED,
            payload: b"no fft here".to_vec(),
        },
        Ev::Rejected {
            seq: bad,
            kind: RequestKind::Append,
            code: code::FORBIDDEN,
        },
        Ev::Delivery {
            topic: TopicOwned::Name(b"cmd/valve".to_vec()),
            topic_seq: 41,
            payload: b"open".to_vec(),
        },
        Ev::Delivery {
            topic: TopicOwned::Index(3),
            topic_seq: 1 << 40,
            payload: Vec::new(),
        },
    ] {
        assert!(events.contains(&want), "{want:?} not in {events:?}");
    }
    assert_eq!(inputs.len(), 2, "two delivery acks: {inputs:?}");
    assert_eq!(dev.state().outbox_len, 0);
    assert!(!gw.redeliver(g1));

    // A repeat of a delivery whose ack was lost: acked again, not reported.
    let g = gw.deliver(Topic::Name(b"cmd/valve"), 42, b"close").unwrap();
    let frame = gw.poll_transmit().unwrap();
    assert!(matches!(
        dev.handle_input(3, &frame),
        Ok(Some(Ev::Delivery { topic_seq: 42, .. }))
    ));
    let acks = dev.transmit_all(3);
    assert_eq!(acks.len(), 1);
    assert_eq!(frame_type(&acks[0]), Type::DeliveryAck);
    assert!(gw.redeliver(g));
    let again = gw.poll_transmit().unwrap();
    assert_eq!(again, frame);
    assert_eq!(dev.handle_input(4, &again), Err(-9), "replayed");
    let (events, inputs) = exchange(&mut dev, &mut gw, 5);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(inputs, [Input::DeliveryAck { gateway_seq: g }]);

    // Ten deliveries before the device sends anything: the ack queue keeps
    // the last eight (the gateway sends the others again).
    let mut frames = Vec::new();
    for i in 0..10 {
        gw.deliver(Topic::Index(0), 50 + i, &[i as u8]).unwrap();
        frames.push(gw.poll_transmit().unwrap());
    }
    for f in &frames {
        assert!(matches!(
            dev.handle_input(6, f),
            Ok(Some(Ev::Delivery { .. }))
        ));
    }
    let acks = dev.transmit_all(6);
    assert_eq!(acks.len(), 8);
    for f in &acks {
        gw.handle_input(f, 0).unwrap();
    }
    assert_eq!(gw.unacked_deliveries(), 2);

    // Stale answers: an ack and a result for nothing, a pong for no ping.
    // Crafted a little ahead of the gateway's own numbers, so that its
    // later frames stay fresh and inside the replay window.
    let gseq = frame_seq(frames.last().unwrap()) + 10;
    for (i, msg) in [
        Message::Ack(Ack {
            acked: 77,
            topic_seq: 1,
        }),
        Message::OffloadResult(OffloadResult {
            acked: off,
            status: 0,
            payload: b"late",
        }),
        Message::Pong(Pong { acked: 3 }),
        Message::Error(ErrorReport {
            about: 99,
            code: code::BUSY,
            text: "busy",
        }),
    ]
    .iter()
    .enumerate()
    {
        let f = down(&KEY, boot, 0x5e55_0001, gseq + i as u32, msg);
        assert_eq!(dev.handle_input(7, &f), Ok(None), "{msg:?}");
    }
    assert_eq!(dev.state().stats.stale_answers, 4);

    // A refusal of a pending request by an error frame.
    let r = dev.append(Topic::Index(2), b"r", 0).unwrap();
    assert_eq!(dev.transmit_all(8).len(), 1);
    let f = down(
        &KEY,
        boot,
        0x5e55_0001,
        gseq + 10,
        &Message::Error(ErrorReport {
            about: r,
            code: code::NOT_FOUND,
            text: "no topic at index 2 \u{1f6b0}",
        }),
    );
    assert_eq!(
        dev.handle_input(9, &f),
        Ok(Some(Ev::Rejected {
            seq: r,
            kind: RequestKind::Append,
            code: code::NOT_FOUND
        }))
    );

    // The gateway forgot the session: a new hello, the outbox kept.
    let kept = dev.append(Topic::Index(0), b"kept", 0).unwrap();
    let f = down(
        &KEY,
        boot,
        0x5e55_0001,
        gseq + 11,
        &Message::Error(ErrorReport {
            about: 0,
            code: code::UNKNOWN_SESSION,
            text: "say hello",
        }),
    );
    assert_eq!(dev.handle_input(10, &f), Ok(Some(Ev::Disconnected)));
    assert!(!dev.state().connected);
    assert!(dev.events(10).is_empty(), "reported once");
    let f = dev.transmit_all(10);
    assert_eq!(frame_type(&f[0]), Type::Hello);
    // The same gateway answers with the same session: its old frames are
    // still replays.
    for f in &f {
        let _ = gw.handle_input(f, 0);
    }
    let (events, inputs) = exchange(&mut dev, &mut gw, 11);
    assert!(events.contains(&Ev::Connected {
        session_id: 0x5e55_0001
    }));
    assert!(
        inputs
            .iter()
            .any(|i| matches!(i, Input::Append { device_seq, .. } if *device_seq == kept))
    );
    assert_eq!(dev.handle_input(12, &frame), Err(-9), "still a replay");

    // A reconnect (a move to another gateway): hello at once, no event.
    dev.reconnect(20);
    assert!(dev.events(20).is_empty());
    let f = dev.transmit_all(20);
    assert_eq!(f.len(), 1);
    assert_eq!(frame_type(&f[0]), Type::Hello);
    let mut other = gateway::Session::new(ID.as_bytes(), KEY, 1);
    let Ok(None) = other.handle_input(&f[0], 0x0007_0007) else {
        panic!("hello refused")
    };
    let ack = other.poll_transmit().unwrap();
    assert_eq!(
        dev.handle_input(21, &ack),
        Ok(Some(Ev::Connected {
            session_id: 0x0007_0007
        }))
    );
    // A new session: the old session's frames no longer open.
    assert_eq!(dev.handle_input(22, &frame), Err(-8));
    dev.finish();
}

/// Requests the cores refuse, with the same error: ids, topics, handlers,
/// payloads too big for a slot or any frame, a full outbox, buffers too
/// small to send into (and what is sent after).
fn refused_requests(impls: &[Impl]) {
    let mut s = spec(1);
    s.id = String::new();
    assert_eq!(Lockstep::start(impls, &s, 0, 1).err(), Some(-6));
    s.id = "x".repeat(33);
    assert_eq!(Lockstep::start(impls, &s, 0, 1).err(), Some(-6));
    s.id = "x".repeat(32);
    let mut dev = Lockstep::start(impls, &s, 0, 1).unwrap();
    // The longest hello; a buffer one byte short (the attempt counted
    // all the same, as in the Rust core).
    assert_eq!(dev.poll_transmit(0, 63), Err(-14));
    assert_eq!(dev.state().hello_attempt, 1);
    let hello = dev.poll_transmit(0, 64).unwrap().unwrap();
    assert_eq!(hello.len(), 64);
    assert_eq!(hello_of(&hello).1, 2);
    dev.finish();

    let mut dev = Lockstep::start(impls, &spec(2), 0, 2).unwrap();
    let long64 = [b'a'; 64];
    let long65 = [b'a'; 65];
    let huge = [b'a'; 2_000];
    let cases: [(Topic<'_>, usize, Result<u32, i32>); 14] = [
        // A slot is 128 bytes: header 2, topic 1, tag 16 leave 109.
        (Topic::Index(0), 109, Ok(1)),
        (Topic::Index(0), 110, Err(-2)),
        (Topic::Index(0), 2_000, Err(-2)),
        (Topic::Index(127), 0, Ok(2)),
        (Topic::Index(128), 0, Err(-6)),
        (Topic::Index(200), 0, Err(-6)),
        (Topic::Name(b""), 0, Err(-6)),
        (Topic::Name(b"Upper/case"), 0, Err(-6)),
        (Topic::Name(b"sp ace"), 0, Err(-6)),
        (Topic::Name(&long64), 40, Ok(3)),
        (Topic::Name(&long64), 50, Err(-2)),
        (Topic::Name(&long65), 0, Err(-6)),
        (Topic::Name(&huge), 0, Err(-2)),
        (Topic::Name(b"a/b.c_d-e/0123456789"), 3, Ok(4)),
    ];
    for (topic, len, want) in cases {
        assert_eq!(
            dev.append(topic, &vec![7u8; len], 0),
            want,
            "{topic:?} {len}"
        );
    }
    assert_eq!(dev.subscribe(Topic::Name(b"BAD"), 0, 0), Err(-6));
    assert_eq!(dev.subscribe(Topic::Index(130), 0, 0), Err(-6));
    assert_eq!(dev.subscribe(Topic::Name(b"ok"), u64::MAX, 0), Ok(5));
    assert_eq!(dev.offload(b"", b"", 0), Err(-6));
    assert_eq!(dev.offload(b"Fft", b"", 0), Err(-6));
    assert_eq!(dev.offload(b"a/b", b"", 0), Err(-6));
    assert_eq!(dev.offload(&[b'h'; 33], b"", 0), Err(-6));
    assert_eq!(dev.offload(&[b'h'; 32], &[1; 77], 0), Ok(6));
    assert_eq!(dev.offload(&[b'h'; 32], &[1; 78], 0), Err(-2));
    assert_eq!(dev.offload(b"fft", &huge, 0), Err(-2));
    assert_eq!(dev.append(Topic::Index(1), b"7", 0), Ok(7));
    assert_eq!(dev.append(Topic::Index(1), b"8", 0), Ok(8));
    assert_eq!(dev.state().outbox_len, 8);
    assert_eq!(dev.append(Topic::Index(1), b"9", 0), Err(-13));
    assert_eq!(dev.append(Topic::Index(1), &huge, 0), Err(-13));
    assert_eq!(dev.append(Topic::Name(b"Bad"), b"", 0), Err(-13));
    assert_eq!(dev.offload(b"", b"", 0), Err(-13));

    // Connected, a window of 8: each request sent, a too-small buffer
    // refused first (the request stays and goes out next time).
    let mut gw = gateway::Session::new(ID.as_bytes(), KEY, 8);
    let f = dev.transmit_all(0);
    assert_eq!(frame_type(&f[0]), Type::Hello);
    gw.handle_input(&f[0], 3).unwrap();
    let ack = gw.poll_transmit().unwrap();
    assert!(matches!(
        dev.handle_input(1, &ack),
        Ok(Some(Ev::Connected { .. }))
    ));
    // The ping first (into too small a buffer: refused, its seq used).
    assert_eq!(dev.poll_transmit(1, 10), Err(-14));
    let ping = dev.poll_transmit(1, 1024).unwrap().unwrap();
    assert_eq!(frame_type(&ping), Type::Ping);
    assert_eq!(dev.poll_transmit(1, 127), Err(-14));
    let mut sent = 0;
    while let Some(f) = dev.poll_transmit(1, 128).unwrap() {
        assert!(f.len() <= 128);
        sent += 1;
    }
    assert_eq!(sent, 8);
    // A delivery's ack into too small a buffer, then a big enough one.
    let d = down(
        &KEY,
        2,
        3,
        5,
        &Message::Delivery(Delivery {
            topic: Topic::Index(0),
            topic_seq: 1,
            payload: b"x",
        }),
    );
    assert!(matches!(
        dev.handle_input(2, &d),
        Ok(Some(Ev::Delivery { .. }))
    ));
    assert_eq!(dev.poll_transmit(2, 5), Err(-14));
    let ack = dev.poll_transmit(2, 1024).unwrap().unwrap();
    assert_eq!(frame_type(&ack), Type::DeliveryAck);
    dev.finish();
}

/// A random valid body of type `ty`, as the gateway might send it.
fn valid_body(ty: Type, rng: &mut Rng) -> Vec<u8> {
    let names: [&[u8]; 4] = [b"cmd/valve", b"a", &[b'z'; 64], b"x.y_z-0/9"];
    let topic = if rng.chance(500) {
        Topic::Index(rng.below(128) as u8)
    } else {
        Topic::Name(names[rng.below(4) as usize])
    };
    let big = rng.next_u64() >> rng.below(64);
    let seq = (rng.next_u64() >> rng.below(64)) as u32 & wire::SEQ_MAX;
    let payload = {
        let n = rng.below(24) as usize;
        rng.bytes(n)
    };
    let texts = ["", "busy", "\u{e9}t\u{e9} \u{1f6b0}", "0123456789"];
    let text = texts[rng.below(4) as usize];
    let id = {
        let n = 1 + rng.below(32) as usize;
        rng.bytes(n)
    };
    let msg = match ty {
        Type::Hello => Message::Hello(wire::Hello {
            device_id: &id,
            boot_id: big,
            caps: rng.u32() as u8,
            attempt: rng.u32() | 1,
        }),
        Type::HelloAck => Message::HelloAck(HelloAck {
            session_id: rng.u32() | 1,
            window: 1 + rng.below(64) as u8,
            attempt: rng.u32() | 1,
        }),
        Type::Append => Message::Append(wire::Append {
            topic,
            payload: &payload,
        }),
        Type::Ack => Message::Ack(Ack {
            acked: seq,
            topic_seq: big,
        }),
        Type::Subscribe => Message::Subscribe(wire::Subscribe { topic, from: big }),
        Type::Delivery => Message::Delivery(Delivery {
            topic,
            topic_seq: big,
            payload: &payload,
        }),
        Type::DeliveryAck => Message::DeliveryAck(wire::DeliveryAck { acked: seq }),
        Type::Ping => Message::Ping,
        Type::Pong => Message::Pong(Pong { acked: seq }),
        Type::Offload => Message::Offload(wire::Offload {
            handler: b"fft.v2",
            payload: &payload,
        }),
        Type::OffloadResult => Message::OffloadResult(OffloadResult {
            acked: seq,
            status: rng.u32() as u8,
            payload: &payload,
        }),
        Type::Error => Message::Error(ErrorReport {
            about: seq,
            code: rng.u32() as u8,
            text,
        }),
    };
    let mut buf = vec![0u8; msg.buffer_len(0)];
    let len = msg.emit(0, &mut buf).unwrap();
    buf[2..len - wire::TAG_LEN].to_vec()
}

/// Bytes changed, inserted and removed.
fn mutate(body: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..rng.below(4) {
        let at = rng.below(body.len() as u64 + 1) as usize;
        match rng.below(4) {
            0 if at < body.len() => body[at] = rng.u32() as u8,
            1 if at < body.len() => body[at] ^= 0x80,
            2 => body.insert(at, rng.u32() as u8),
            _ if at < body.len() => {
                body.remove(at);
            }
            _ => {}
        }
    }
}

const TYPES: [Type; 12] = [
    Type::Hello,
    Type::HelloAck,
    Type::Append,
    Type::Ack,
    Type::Subscribe,
    Type::Delivery,
    Type::DeliveryAck,
    Type::Ping,
    Type::Pong,
    Type::Offload,
    Type::OffloadResult,
    Type::Error,
];

/// Hostile input: random bytes, truncations, extensions, bit flips,
/// oversized frames, forged and misdirected frames, replays, frames too old
/// for the window, and authentic frames with mutated bodies (so only the
/// parser stands in the way). Every one is dropped or taken the same way by
/// both cores, and counted: the drop counters grow by exactly the frames
/// refused.
fn hostile_input(impls: &[Impl], rounds: u32) {
    let boot = 5;
    let mut rng = Rng(99);
    let mut dev = Lockstep::start(impls, &spec(boot), 0, 5).unwrap();
    let mut refused = 0u32;
    let mut feed = |dev: &mut Lockstep, now: u64, f: &[u8]| -> Result<Option<Ev>, i32> {
        let r = dev.handle_input(now, f);
        if r.is_err() {
            refused += 1;
        }
        r
    };

    // Before a session: only an authentic hello ack for this boot, naming
    // the hello sent (attempt 1) under its nonce, opens one.
    let hello = dev.transmit_all(0);
    assert_eq!(hello.len(), 1);
    assert_eq!(dev.state().hello_attempt, 1);
    for i in 0..rounds {
        let mut f = {
            let n = rng.below(200) as usize;
            rng.bytes(n)
        };
        if i % 2 == 0 && f.len() > 2 {
            f[0] = (wire::VERSION << 4) | rng.below(16) as u8;
        }
        assert!(feed(&mut dev, 0, &f).is_err());
    }
    // Body: session id, window, the attempt named; sealed under the
    // nonce of attempt `sealed`.
    let ack_body = |window: u8, named: u32| {
        let mut b = 0x1234_5678u32.to_le_bytes().to_vec();
        b.push(window);
        b.extend(named.to_le_bytes());
        b
    };
    let helloack_as = |window: u8, seq: u32, boot: u64, key: &[u8; 16], named: u32, sealed| {
        down_raw(
            key,
            boot,
            sealed,
            Type::HelloAck,
            seq,
            &ack_body(window, named),
        )
    };
    let helloack =
        |window: u8, seq: u32, boot: u64, key: &[u8; 16]| helloack_as(window, seq, boot, key, 1, 1);
    let ping = down(&KEY, boot, 0, 3, &Message::Ping);
    assert_eq!(feed(&mut dev, 0, &ping), Err(-12));
    assert_eq!(feed(&mut dev, 0, &helloack(4, 3, boot, &KEY)), Err(-6));
    assert_eq!(feed(&mut dev, 0, &helloack(4, 0, boot + 1, &KEY)), Err(-8));
    assert_eq!(
        feed(&mut dev, 0, &helloack(4, 0, boot, b"not-the-real-key")),
        Err(-8)
    );
    assert_eq!(feed(&mut dev, 0, &helloack(0, 0, boot, &KEY)), Err(-6));
    assert_eq!(feed(&mut dev, 0, &helloack(65, 0, boot, &KEY)), Err(-6));
    // The attempt: 0 is no attempt; under another attempt's nonce (the
    // handshake's old nonce, 0, among them) nothing opens; under this one's,
    // an answer naming another attempt is a replay.
    assert_eq!(
        feed(&mut dev, 0, &helloack_as(4, 0, boot, &KEY, 0, 1)),
        Err(-6)
    );
    for sealed in [0, 2, u32::MAX] {
        assert_eq!(
            feed(&mut dev, 0, &helloack_as(4, 0, boot, &KEY, 1, sealed)),
            Err(-8),
            "{sealed}"
        );
    }
    let replayed = dev.state().drops.replayed;
    assert_eq!(
        feed(&mut dev, 0, &helloack_as(4, 0, boot, &KEY, 2, 1)),
        Err(-9)
    );
    assert_eq!(dev.state().drops.replayed, replayed + 1);
    // The old body, without the attempt: too short.
    let old = ack_body(4, 1);
    assert_eq!(
        feed(
            &mut dev,
            0,
            &down_raw(&KEY, boot, 1, Type::HelloAck, 0, &old[..5])
        ),
        Err(-1)
    );
    let mut trailing = ack_body(4, 1);
    trailing.push(0);
    assert_eq!(
        feed(
            &mut dev,
            0,
            &down_raw(&KEY, boot, 1, Type::HelloAck, 0, &trailing)
        ),
        Err(-7)
    );
    assert!(!dev.state().connected);
    // The real gateway's answer to the hello sent.
    let mut gw = gateway::Session::new(ID.as_bytes(), KEY, 4);
    assert!(matches!(gw.handle_input(&hello[0], 0x5e55_0001), Ok(None)));
    connect(&mut dev, &mut gw, 1);
    let sid = 0x5e55_0001;

    // An authentic ack for a pending append, mangled every way.
    let seq = dev.append(Topic::Index(0), b"reading", 1).unwrap();
    let f = dev.transmit_all(2);
    let Ok(Some(Input::Append { device_seq, .. })) = gw.handle_input(&f[0], 0) else {
        panic!()
    };
    gw.committed(boot, device_seq, 1).unwrap();
    let good = gw.poll_transmit().unwrap();
    for bit in 0..good.len() * 8 {
        let mut b = good.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(feed(&mut dev, 3, &b).is_err(), "bit {bit}");
    }
    for cut in 0..good.len() {
        assert!(feed(&mut dev, 3, &good[..cut]).is_err(), "cut {cut}");
    }
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(feed(&mut dev, 3, &longer), Err(-8));
    let mut big = vec![0u8; 2_000];
    big[..good.len()].copy_from_slice(&good);
    assert_eq!(feed(&mut dev, 3, &big), Err(-2));
    assert_eq!(feed(&mut dev, 3, &big[..1_025]), Err(-2));
    assert_eq!(feed(&mut dev, 3, &[]), Err(-1));
    // Random bytes, half behind a plausible header.
    for i in 0..rounds {
        let mut f = {
            let n = rng.below(300) as usize;
            rng.bytes(n)
        };
        if i % 2 == 0 && f.len() > 2 {
            f[0] = (wire::VERSION << 4) | Type::Ack as u8;
            f[1] = rng.below(128) as u8;
        }
        assert!(feed(&mut dev, 3, &f).is_err());
    }
    // Misdirected: the device's own frame reflected, a frame for another
    // session or boot, a late hello ack, types that only go up.
    assert_eq!(feed(&mut dev, 3, &f[0]), Err(-8));
    let other_session = down(&KEY, boot, sid + 1, 40, &Message::Ping);
    assert_eq!(feed(&mut dev, 3, &other_session), Err(-8));
    assert_eq!(
        feed(&mut dev, 3, &down(&KEY, boot + 1, sid, 40, &Message::Ping)),
        Err(-8)
    );
    assert_eq!(feed(&mut dev, 3, &helloack(4, 0, boot, &KEY)), Err(-11));
    for (i, ty) in [
        Type::Hello,
        Type::Append,
        Type::Subscribe,
        Type::DeliveryAck,
        Type::Ping,
        Type::Offload,
    ]
    .into_iter()
    .enumerate()
    {
        let body = valid_body(ty, &mut rng);
        let f = down_raw(&KEY, boot, sid, ty, 50 + i as u32, &body);
        assert_eq!(feed(&mut dev, 3, &f), Err(-11), "{ty:?}");
    }
    // The real ack still works, once.
    assert_eq!(
        feed(&mut dev, 4, &good),
        Ok(Some(Ev::Acked {
            seq,
            kind: RequestKind::Append,
            topic_seq: 1
        }))
    );
    assert_eq!(feed(&mut dev, 4, &good), Err(-9));

    // Authentic frames with valid and mutated bodies of every type, at
    // fresh sequence numbers: what the parser refuses, both refuse.
    let mut gseq = 1_000u32;
    let mut parsed = 0;
    for i in 0..rounds * 6 {
        let ty = TYPES[(i % 12) as usize];
        let mut body = valid_body(ty, &mut rng);
        if rng.chance(800) {
            mutate(&mut body, &mut rng);
        }
        // The session-ending error would stop the round early.
        if let Ok(Message::Error(e)) = Message::parse_body(ty, &body)
            && e.about == 0
            && e.code == code::UNKNOWN_SESSION
        {
            continue;
        }
        gseq += 1;
        let f = down_raw(&KEY, boot, sid, ty, gseq, &body);
        if feed(&mut dev, 5, &f).is_ok() {
            parsed += 1;
        }
        // Delivery acks go out; the rest of what the device sends is lost.
        if i % 16 == 0 {
            dev.transmit_all(5);
        }
    }
    assert!(parsed > rounds as usize / 2, "only {parsed} parsed");
    assert!(dev.state().connected);

    // Too old for the window: 64 behind the newest.
    let top = gseq + 100;
    let pong = |s: u32| down(&KEY, boot, sid, s, &Message::Pong(Pong { acked: 1 }));
    assert_eq!(feed(&mut dev, 6, &pong(top)), Ok(None));
    assert_eq!(feed(&mut dev, 6, &pong(top - 64)), Err(-10));
    assert_eq!(feed(&mut dev, 6, &pong(top - 63)), Ok(None));
    assert_eq!(feed(&mut dev, 6, &pong(top - 63)), Err(-9));
    assert_eq!(dev.state().drops.total(), refused);
    let d = dev.state().drops;
    assert!(
        d.malformed > 0 && d.forged > 0 && d.replayed > 0 && d.too_old > 0 && d.unexpected > 0,
        "{d:?}"
    );
    dev.finish();
}

/// Seal and derive keys over every length around the Ascon blocks, against
/// the Rust crate: associated data 1..=40 bytes, messages 0..=100.
fn ascon_over_every_length(impls: &[Impl]) {
    let fleet = *b"fleet-key-16byte";
    for len in 1..=32 {
        let id: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        assert_eq!(
            c_derive_key(&fleet, &id),
            Ok(Cipher::new(&fleet).derive_key(id.as_bytes())),
            "{len}"
        );
    }
    assert_eq!(c_derive_key(&fleet, ""), Err(-6));
    assert_eq!(c_derive_key(&fleet, &"x".repeat(33)), Err(-6));
    let mut dev = Lockstep::start(impls, &spec(0xa5c0), 0, 1).unwrap();
    let mut gw = gateway::Session::new(ID.as_bytes(), KEY, 8);
    connect(&mut dev, &mut gw, 0);
    // Appends of 0..=100 bytes with names of 1..=6 bytes: every split of
    // body bytes into 16-byte blocks and 8-byte halves, both directions
    // (the gateway opens the C frames, the cores open its acks).
    for len in 0..=100usize {
        let name = &b"abcdef"[..1 + len % 6];
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        dev.append(Topic::Name(name), &payload, len as u32).unwrap();
        let (_, inputs) = exchange(&mut dev, &mut gw, len as u64);
        let Some(Input::Append {
            boot_id,
            device_seq,
            payload: got,
            ..
        }) = inputs.first()
        else {
            panic!("{inputs:?}")
        };
        assert_eq!(*got, payload);
        gw.committed(*boot_id, *device_seq, len as u64).unwrap();
        let d = gw
            .deliver(Topic::Index(1), len as u64, &payload[..len / 2])
            .unwrap();
        let (events, inputs) = exchange(&mut dev, &mut gw, len as u64);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(inputs, [Input::DeliveryAck { gateway_seq: d }]);
    }
    dev.finish();
}

/// The Rust core's fuzzer findings, as the C core must follow them: a
/// session lost to silence and answered again before the caller polled its
/// events reports Connected and no stale Disconnected after it; an
/// authentic frame of a type that only goes up leaves the replay window and
/// the keepalive as they were.
fn fuzzer_findings(impls: &[Impl]) {
    let mut dev = Lockstep::start(impls, &spec(0xb007), 0, 12345).unwrap();
    // The answer to the last hello sent.
    let ack = |dev: &mut Lockstep, session_id| {
        let attempt = dev.state().hello_attempt;
        hello_ack(&KEY, 0xb007, session_id, 2, attempt)
    };
    dev.transmit_all(0);
    let a = ack(&mut dev, 9);
    assert_eq!(
        dev.handle_input(0, &a),
        Ok(Some(Ev::Connected { session_id: 9 }))
    );
    let mut now = 0;
    while dev.state().connected {
        dev.transmit_all(now);
        now = dev.state().poll_timeout.max(now + 1);
    }
    dev.transmit_all(now);
    let a = ack(&mut dev, 9);
    assert_eq!(
        dev.handle_input(now, &a),
        Ok(Some(Ev::Connected { session_id: 9 }))
    );
    assert_eq!(dev.poll_event(now), None);
    assert!(dev.state().connected);

    let deadline = dev.state().poll_timeout;
    let up_only = Message::Subscribe(wire::Subscribe {
        topic: Topic::Index(1),
        from: 0,
    });
    let f = down(&KEY, 0xb007, 9, 500, &up_only);
    assert_eq!(dev.handle_input(now + 1_000, &f), Err(-11));
    assert_eq!(dev.state().poll_timeout, deadline);
    let d = down(
        &KEY,
        0xb007,
        9,
        500,
        &Message::Delivery(Delivery {
            topic: Topic::Index(0),
            topic_seq: 1,
            payload: b"d",
        }),
    );
    assert!(matches!(
        dev.handle_input(now + 1_000, &d),
        Ok(Some(Ev::Delivery { .. }))
    ));
    dev.finish();
}

/// The Rust core's `a_recorded_hello_ack_is_not_taken_for_a_later_hello`,
/// both cores alike: an answer to a hello recorded by an attacker and
/// replayed to a later hello (after the device moved to another gateway
/// and back) is refused, as are the right answer to an older hello (a
/// slow gateway's to a hello retransmitted since, too) and an answer
/// naming another attempt under this one's nonce, with the same errors and
/// drop counts. Taken, the recorded answer would reopen session 9 with a
/// fresh replay window (the last session was 10), and let its recorded
/// deliveries in again.
fn recorded_hello_ack_refused(impls: &[Impl]) {
    let boot = 0xb007;
    let mut dev = Lockstep::start(impls, &spec(boot), 0, 12345).unwrap();
    let f = dev.transmit_all(0);
    assert_eq!(hello_of(&f[0]).1, 1);
    assert_eq!(dev.state().hello_attempt, 1);
    let recorded = hello_ack(&KEY, boot, 9, 2, 1);
    assert_eq!(
        dev.handle_input(0, &recorded),
        Ok(Some(Ev::Connected { session_id: 9 }))
    );
    // A delivery of session 9, recorded too: a replay while it lasts.
    let delivery = down(
        &KEY,
        boot,
        9,
        1,
        &Message::Delivery(Delivery {
            topic: Topic::Index(0),
            topic_seq: 1,
            payload: b"open",
        }),
    );
    assert!(matches!(
        dev.handle_input(1, &delivery),
        Ok(Some(Ev::Delivery { .. }))
    ));
    dev.transmit_all(1);
    assert_eq!(dev.handle_input(2, &delivery), Err(-9));

    // To another gateway: session 10.
    dev.reconnect(10);
    let f = dev.transmit_all(10);
    assert_eq!(f.len(), 1);
    assert_eq!(hello_of(&f[0]).1, 2);
    assert_eq!(dev.state().hello_attempt, 2);
    assert_eq!(
        dev.handle_input(10, &hello_ack(&KEY, boot, 10, 2, 2)),
        Ok(Some(Ev::Connected { session_id: 10 }))
    );

    // And on again: the recorded answer to the first hello is refused (it
    // does not open under attempt 3's nonce), and so is the right answer
    // to an older hello.
    dev.reconnect(20);
    let f = dev.transmit_all(20);
    assert_eq!(hello_of(&f[0]).1, 3);
    assert_eq!(dev.state().hello_attempt, 3);
    let before = dev.state().drops;
    assert_eq!(dev.handle_input(20, &recorded), Err(-8));
    assert_eq!(
        dev.handle_input(20, &hello_ack(&KEY, boot, 10, 2, 2)),
        Err(-8)
    );
    // An answer naming another attempt under this one's nonce (only the
    // key's holder can make one): a replay.
    let named_other = down(
        &KEY,
        boot,
        3,
        0,
        &Message::HelloAck(HelloAck {
            session_id: 9,
            window: 2,
            attempt: 1,
        }),
    );
    assert_eq!(dev.handle_input(20, &named_other), Err(-9));
    let after = dev.state().drops;
    assert_eq!(after.forged, before.forged + 2);
    assert_eq!(after.replayed, before.replayed + 1);
    assert_eq!(after.total(), before.total() + 3);
    assert!(!dev.state().connected);
    assert_eq!(dev.state().session_id, None);
    assert_eq!(dev.handle_input(20, &delivery), Err(-12));

    // A slow gateway: its answer to attempt 3 comes after the device sent
    // attempt 4 (a retransmission is a new attempt), and is refused; the
    // answer to attempt 4 opens session 11.
    let late = hello_ack(&KEY, boot, 11, 2, 3);
    let t = dev.state().poll_timeout;
    assert!(t > 20);
    let f = dev.transmit_all(t);
    assert_eq!(f.len(), 1);
    assert_eq!(hello_of(&f[0]).1, 4);
    assert_eq!(dev.handle_input(t, &late), Err(-8));
    assert_eq!(
        dev.handle_input(t, &hello_ack(&KEY, boot, 11, 2, 4)),
        Ok(Some(Ev::Connected { session_id: 11 }))
    );
    // Session 11's nonces: session 9's recorded delivery does not open.
    assert_eq!(dev.handle_input(t, &delivery), Err(-8));
    dev.finish();
}

/// A hello's answer is taken once (the Rust core's 5286ceb): after the
/// session is lost and before the next hello (the attempt unchanged), a
/// copy of the answer, or another gateway's answer to the same hello, is a
/// replay; the next hello's answer is taken.
fn hello_ack_taken_once(impls: &[Impl]) {
    let boot = 0xb008;
    let mut dev = Lockstep::start(impls, &spec(boot), 0, 777).unwrap();
    dev.transmit_all(0);
    assert_eq!(
        dev.handle_input(0, &hello_ack(&KEY, boot, 9, 2, 1)),
        Ok(Some(Ev::Connected { session_id: 9 }))
    );
    dev.transmit_all(0);
    dev.reconnect(10);
    assert_eq!(dev.state().hello_attempt, 1);
    let before = dev.state().drops;
    assert_eq!(
        dev.handle_input(10, &hello_ack(&KEY, boot, 9, 2, 1)),
        Err(-9)
    );
    assert_eq!(
        dev.handle_input(10, &hello_ack(&KEY, boot, 12, 2, 1)),
        Err(-9)
    );
    assert!(!dev.state().connected);
    assert_eq!(dev.state().drops.replayed, before.replayed + 2);
    let f = dev.transmit_all(10);
    assert_eq!(hello_of(&f[0]).1, 2);
    assert_eq!(
        dev.handle_input(10, &hello_ack(&KEY, boot, 13, 2, 2)),
        Ok(Some(Ev::Connected { session_id: 13 }))
    );
    dev.finish();
}

/// Back at a gateway that kept an earlier session (the Rust core's
/// b57510a): that session's window comes back, so a frame of it recorded
/// before is a replay; past the last WOOF_SESSIONS_KEPT sessions a window is
/// forgotten.
fn earlier_session_window_restored(impls: &[Impl]) {
    let boot = 0xb009;
    let mut dev = Lockstep::start(impls, &spec(boot), 0, 4242).unwrap();
    dev.transmit_all(0);
    assert_eq!(
        dev.handle_input(0, &hello_ack(&KEY, boot, 9, 2, 1)),
        Ok(Some(Ev::Connected { session_id: 9 }))
    );
    let delivery = down(
        &KEY,
        boot,
        9,
        1,
        &Message::Delivery(Delivery {
            topic: Topic::Index(0),
            topic_seq: 1,
            payload: b"open",
        }),
    );
    assert!(matches!(
        dev.handle_input(0, &delivery),
        Ok(Some(Ev::Delivery { .. }))
    ));
    dev.transmit_all(0);
    let to = |dev: &mut Lockstep, id: u32, now: u64| {
        dev.reconnect(now);
        dev.transmit_all(now);
        let attempt = dev.state().hello_attempt;
        assert_eq!(
            dev.handle_input(now, &hello_ack(&KEY, boot, id, 2, attempt)),
            Ok(Some(Ev::Connected { session_id: id }))
        );
        dev.transmit_all(now);
    };
    to(&mut dev, 10, 10);
    to(&mut dev, 9, 20);
    assert_eq!(dev.handle_input(20, &delivery), Err(-9));
    for id in 11..14 {
        to(&mut dev, id, 30);
    }
    to(&mut dev, 9, 40);
    assert_eq!(dev.handle_input(40, &delivery), Err(-9));
    for id in 20..25 {
        to(&mut dev, id, 50);
    }
    to(&mut dev, 9, 60);
    assert!(matches!(
        dev.handle_input(60, &delivery),
        Ok(Some(Ev::Delivery { .. }))
    ));
    dev.finish();
}

fn harness() -> &'static (PathBuf, bool) {
    static HARNESS: OnceLock<(PathBuf, bool)> = OnceLock::new();
    HARNESS
        .get_or_init(|| build_harness(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("frames")))
}

#[test]
fn handshake_appends_and_retransmissions_frame_for_frame() {
    handshake_appends_and_retransmissions(RUST_AND_C);
}

#[test]
fn retransmission_timing_frame_for_frame() {
    retransmission_timing(RUST_AND_C);
}

#[test]
fn subscribe_deliver_offload_and_errors_frame_for_frame() {
    subscribe_deliver_offload_and_errors(RUST_AND_C);
}

#[test]
fn refused_requests_frame_for_frame() {
    refused_requests(RUST_AND_C);
}

#[test]
fn hostile_input_is_dropped_and_counted_frame_for_frame() {
    hostile_input(RUST_AND_C, 2_000);
}

#[test]
fn fuzzer_findings_frame_for_frame() {
    fuzzer_findings(RUST_AND_C);
}

#[test]
fn a_recorded_hello_ack_is_refused_frame_for_frame() {
    recorded_hello_ack_refused(RUST_AND_C);
}

#[test]
fn a_hello_ack_is_taken_once_frame_for_frame() {
    hello_ack_taken_once(RUST_AND_C);
}

#[test]
fn going_back_to_an_earlier_session_frame_for_frame() {
    earlier_session_window_restored(RUST_AND_C);
}

#[test]
fn ascon_over_every_length_frame_for_frame() {
    ascon_over_every_length(RUST_AND_C);
}

/// The C core alone still passes every scenario's own checks (lockstep of
/// one compares nothing; the scenarios' assertions do the work).
#[test]
fn the_c_core_alone_passes_every_scenario() {
    let c = &[Impl::C];
    handshake_appends_and_retransmissions(c);
    retransmission_timing(c);
    subscribe_deliver_offload_and_errors(c);
    refused_requests(c);
    hostile_input(c, 500);
    fuzzer_findings(c);
    recorded_hello_ack_refused(c);
    hello_ack_taken_once(c);
    earlier_session_window_restored(c);
    ascon_over_every_length(c);
}

/// Every scenario against a copy of the C core built on its own with
/// `-fsanitize=address,undefined` (aborting on the first report) when the
/// compiler supports it here; with the strict warnings only otherwise.
#[test]
fn every_scenario_under_sanitizers() {
    let (bin, sanitized) = harness();
    if !sanitized {
        eprintln!("sanitizers unavailable here: the harness is built without them");
    }
    let both = &[Impl::Rust, Impl::Proc(bin.clone())];
    handshake_appends_and_retransmissions(both);
    retransmission_timing(both);
    subscribe_deliver_offload_and_errors(both);
    refused_requests(both);
    hostile_input(both, 1_000);
    fuzzer_findings(both);
    recorded_hello_ack_refused(both);
    hello_ack_taken_once(both);
    earlier_session_window_restored(both);
    ascon_over_every_length(both);
}
