//! The device session against the gateway session, end to end, with no
//! network: a simulated link that loses, duplicates and reorders frames
//! (driven by a seeded PRNG, so a failing seed replays exactly), a node that
//! commits appends after a delay, and a virtual clock that jumps to the next
//! thing that happens.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use woof_mcu_bridge::Error;
use woof_mcu_bridge::gateway::{self, Input, TopicRef};
use woof_mcu_bridge::session::{Config, Event, PING_INTERVAL_MS, RequestKind, Session};
use woof_mcu_bridge::wire::{self, Frame, Topic, Type};

const KEY: [u8; 16] = *b"k3y-of-device-07";
const ID: &[u8] = b"device-07";

/// splitmix64: small, seedable, good enough to shake a protocol.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// One direction of a lossy link.
#[derive(Default)]
struct Link {
    loss_per_mille: u64,
    dup_per_mille: u64,
    delay_ms: (u64, u64),
    /// (arrival time, order of sending) -> frame; distinct delays reorder.
    queue: BTreeMap<(u64, u64), Vec<u8>>,
    sent: u64,
    lost: u64,
}

impl Link {
    fn new(loss_per_mille: u64, dup_per_mille: u64, delay_ms: (u64, u64)) -> Link {
        Link {
            loss_per_mille,
            dup_per_mille,
            delay_ms,
            ..Link::default()
        }
    }

    fn send(&mut self, rng: &mut Rng, now: u64, frame: &[u8]) {
        let copies = if rng.chance(self.dup_per_mille) { 2 } else { 1 };
        for _ in 0..copies {
            self.sent += 1;
            if rng.chance(self.loss_per_mille) {
                self.lost += 1;
                continue;
            }
            let (lo, hi) = self.delay_ms;
            let at = now + lo + rng.below(hi - lo + 1);
            self.queue.insert((at, self.sent), frame.to_vec());
        }
    }

    fn pop_due(&mut self, now: u64) -> Option<Vec<u8>> {
        let (&key, _) = self.queue.iter().next()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }

    fn next_at(&self) -> Option<u64> {
        self.queue.keys().next().map(|k| k.0)
    }
}

/// The node behind the gateway: a topic log per device.
#[derive(Default)]
struct Node {
    /// (boot id, device seq, payload), in commit order; topic seq = index + 1.
    log: Vec<(u64, u32, Vec<u8>)>,
    /// Appends handed up but not committed yet: (commit time, boot, seq, payload).
    commits: Vec<(u64, u64, u32, Vec<u8>)>,
}

struct Run {
    log: Vec<(u64, u32, Vec<u8>)>,
    /// device seq -> Acked events seen.
    acked: HashMap<u32, Vec<u64>>,
    gave_up: HashSet<u32>,
    seq_of_reading: HashMap<u32, u32>,
    device_retransmitted: u32,
    gateway_duplicates: u64,
    lost: u64,
}

fn config(boot_id: u64) -> Config<'static> {
    Config {
        device_id: ID,
        key: KEY,
        boot_id,
        caps: wire::caps::SUBSCRIBE | wire::caps::OFFLOAD,
        ping_interval_ms: PING_INTERVAL_MS,
    }
}

/// `readings` appends, one every `every_ms`, from a device with an outbox of
/// 8 slots over links with the given loss and duplication; runs until every
/// append is answered or given up.
fn run(seed: u64, readings: u32, every_ms: u64, loss: u64, dup: u64) -> Run {
    let mut rng = Rng(seed);
    let mut dev = Session::<8, 96>::new(&config(seed), 0, rng.u32()).unwrap();
    let mut gw = gateway::Session::new(ID, KEY, 4);
    let mut up = Link::new(loss, dup, (5, 300));
    let mut down = Link::new(loss, dup, (5, 300));
    let mut node = Node::default();
    let mut run = Run {
        log: Vec::new(),
        acked: HashMap::new(),
        gave_up: HashSet::new(),
        seq_of_reading: HashMap::new(),
        device_retransmitted: 0,
        gateway_duplicates: 0,
        lost: 0,
    };
    let mut backlog: VecDeque<u32> = VecDeque::new();
    let mut produced = 0;
    let mut next_reading = 1_000;
    let mut now = 0u64;
    let mut buf = [0u8; 256];
    loop {
        while produced < readings && now >= next_reading {
            backlog.push_back(produced);
            produced += 1;
            next_reading += every_ms;
        }
        while let Some(&r) = backlog.front() {
            match dev.append(Topic::Index(0), &r.to_le_bytes(), rng.u32()) {
                Ok(seq) => {
                    run.seq_of_reading.insert(seq, r);
                    backlog.pop_front();
                }
                Err(Error::OutboxFull) => break,
                Err(e) => panic!("append: {e}"),
            }
        }
        while let Some(len) = dev.poll_transmit(now, &mut buf).unwrap() {
            up.send(&mut rng, now, &buf[..len]);
        }
        while let Some(ev) = dev.poll_event(now) {
            if let Event::GaveUp { seq, kind } = ev {
                assert_eq!(kind, RequestKind::Append);
                assert!(run.gave_up.insert(seq), "gave up twice on {seq}");
            }
        }
        while let Some(frame) = up.pop_due(now) {
            if let Ok(Some(input)) = gw.handle_input(&frame, rng.u32()) {
                match input {
                    Input::Append {
                        boot_id,
                        device_seq,
                        topic,
                        payload,
                    } => {
                        assert_eq!(topic, TopicRef::Index(0));
                        node.commits
                            .push((now + rng.below(80), boot_id, device_seq, payload));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            while let Some(out) = gw.poll_transmit() {
                down.send(&mut rng, now, &out);
            }
        }
        let mut i = 0;
        while i < node.commits.len() {
            if node.commits[i].0 <= now {
                let (_, boot, seq, payload) = node.commits.swap_remove(i);
                node.log.push((boot, seq, payload));
                let topic_seq = node.log.len() as u64;
                assert!(gw.committed(boot, seq, topic_seq).unwrap());
            } else {
                i += 1;
            }
        }
        while let Some(out) = gw.poll_transmit() {
            down.send(&mut rng, now, &out);
        }
        while let Some(mut frame) = down.pop_due(now) {
            if let Ok(Some(Event::Acked {
                seq,
                kind,
                topic_seq,
            })) = dev.handle_input(now, &mut frame)
            {
                assert_eq!(kind, RequestKind::Append);
                run.acked.entry(seq).or_default().push(topic_seq);
            }
        }

        let done = produced == readings
            && backlog.is_empty()
            && dev.outbox_len() == 0
            && node.commits.is_empty()
            && up.queue.is_empty()
            && down.queue.is_empty();
        if done {
            break;
        }
        assert!(now < 10_000_000, "seed {seed}: no progress");
        let mut next = dev.poll_timeout().unwrap_or(u64::MAX);
        for t in [up.next_at(), down.next_at()].into_iter().flatten() {
            next = next.min(t);
        }
        for c in &node.commits {
            next = next.min(c.0);
        }
        if produced < readings {
            next = next.min(next_reading);
        }
        now = next.max(now + 1);
    }
    run.log = node.log;
    run.device_retransmitted = dev.stats().retransmitted;
    run.gateway_duplicates = gw.stats().duplicates;
    run.lost = up.lost + down.lost;
    run
}

/// The promises: nothing written twice; every ack seen exactly once and
/// naming the element that holds that reading; every reading either acked
/// or given up.
fn check(run: &Run, readings: u32) {
    let mut written = HashSet::new();
    for (boot, seq, payload) in &run.log {
        assert!(
            written.insert((*boot, *seq)),
            "({boot}, {seq}) written twice"
        );
        let r = u32::from_le_bytes(payload[..4].try_into().unwrap());
        assert_eq!(run.seq_of_reading[seq], r, "payload of {seq}");
    }
    for (seq, acks) in &run.acked {
        assert_eq!(acks.len(), 1, "{seq} acked {} times", acks.len());
        let (_, logged_seq, _) = &run.log[(acks[0] - 1) as usize];
        assert_eq!(logged_seq, seq, "ack of {seq} names another element");
        assert!(!run.gave_up.contains(seq));
    }
    assert_eq!(run.acked.len() + run.gave_up.len(), readings as usize);
}

/// At 5% loss each way an append fails a round (request or every answer
/// lost) with p ~ 0.1, so all five sends fail with p ~ 1e-5: over these
/// 2,400 appends a give-up is a 2% event, and these seeds have none.
#[test]
fn lossy_link_every_append_acked_exactly_once_and_written_once() {
    for seed in 1..=6 {
        let readings = 400;
        let run = run(seed, readings, 50, 50, 50);
        check(&run, readings);
        assert!(
            run.gave_up.is_empty(),
            "seed {seed}: gave up {:?}",
            run.gave_up
        );
        assert_eq!(run.log.len(), readings as usize);
        assert!(run.lost > 0 && run.device_retransmitted > 0);
        assert!(
            run.gateway_duplicates > 0,
            "seed {seed}: no retransmission reached the gateway twice"
        );
    }
}

/// At 10% loss CoAP's four retransmissions are not always enough (seed 4
/// loses one request's five sends or all its acks); what still holds is
/// that nothing is written twice and every ack is right.
#[test]
fn ten_percent_loss_never_writes_twice() {
    let mut gave_up = 0;
    for seed in 1..=6 {
        let readings = 400;
        let run = run(seed, readings, 50, 100, 50);
        check(&run, readings);
        assert!(run.gateway_duplicates > 0);
        gave_up += run.gave_up.len();
    }
    assert!(gave_up <= 3, "{gave_up} of 2,400 appends given up");
}

#[test]
fn very_lossy_link_gives_up_some_but_never_writes_twice() {
    for seed in 100..=103 {
        let readings = 200;
        let run = run(seed, readings, 20, 450, 100);
        check(&run, readings);
        assert!(
            !run.gave_up.is_empty(),
            "seed {seed}: 45% loss and nothing given up?"
        );
        // A given-up append may have been written (its ack was lost) but once.
        assert!(run.log.len() >= run.acked.len());
    }
}

/// Runs frames both ways with no loss until both sides are quiet; returns
/// the device's events and the gateway's inputs.
fn exchange<const N: usize, const B: usize>(
    dev: &mut Session<N, B>,
    gw: &mut gateway::Session,
    now: u64,
    sniff: &mut Vec<Vec<u8>>,
) -> (Vec<String>, Vec<Input>) {
    let mut events = Vec::new();
    let mut inputs = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let mut quiet = true;
        while let Some(len) = dev.poll_transmit(now, &mut buf).unwrap() {
            quiet = false;
            sniff.push(buf[..len].to_vec());
            if let Ok(Some(input)) = gw.handle_input(&buf[..len], 0x5e55_0001) {
                inputs.push(input);
            }
        }
        while let Some(mut frame) = gw.poll_transmit() {
            quiet = false;
            if let Ok(Some(ev)) = dev.handle_input(now, &mut frame) {
                events.push(format!("{ev:?}"));
            }
        }
        if quiet {
            return (events, inputs);
        }
    }
}

fn commit_all(gw: &mut gateway::Session, inputs: &[Input], log: &mut Vec<(u64, u32, Vec<u8>)>) {
    for input in inputs {
        if let Input::Append {
            boot_id,
            device_seq,
            payload,
            ..
        } = input
        {
            log.push((*boot_id, *device_seq, payload.clone()));
            gw.committed(*boot_id, *device_seq, log.len() as u64)
                .unwrap();
        }
    }
}

#[test]
fn a_reboot_is_a_new_session_not_a_retransmission() {
    let mut gw = gateway::Session::new(ID, KEY, 4);
    let mut log = Vec::new();
    let mut sniff = Vec::new();

    let mut first = Session::<4, 64>::new(&config(1), 0, 1).unwrap();
    for r in [b"a1", b"a2", b"a3"] {
        first.append(Topic::Index(0), r, 0).unwrap();
    }
    let (_, inputs) = exchange(&mut first, &mut gw, 0, &mut sniff);
    commit_all(&mut gw, &inputs, &mut log);
    exchange(&mut first, &mut gw, 1, &mut sniff);
    assert_eq!(first.stats().acked, 3);
    let old_hello = sniff[0].clone();
    let old_append = sniff
        .iter()
        .find(|f| Frame::new_checked(&f[..]).unwrap().frame_type() == Some(Type::Append))
        .unwrap()
        .clone();

    // The device reboots: RAM lost, numbering starts again at 1.
    let mut second = Session::<4, 64>::new(&config(2), 10_000, 2).unwrap();
    let mut seqs = Vec::new();
    for r in [b"b1", b"b2", b"b3"] {
        seqs.push(second.append(Topic::Index(0), r, 0).unwrap());
    }
    let (_, inputs) = exchange(&mut second, &mut gw, 10_000, &mut sniff);
    assert_eq!(
        inputs.len(),
        3,
        "the same device seqs, but a new boot: all new"
    );
    commit_all(&mut gw, &inputs, &mut log);
    exchange(&mut second, &mut gw, 10_001, &mut sniff);
    assert_eq!(second.stats().acked, 3);
    assert_eq!(log.len(), 6);
    assert_eq!(
        log.iter().map(|(b, s, _)| (*b, *s)).collect::<Vec<_>>(),
        [
            (1, 1),
            (1, 2),
            (1, 3),
            (2, seqs[0]),
            (2, seqs[1]),
            (2, seqs[2])
        ]
    );
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(gw.current().map(|c| c.0), Some(2));

    // The old boot's frames are dead: a replayed append is not written.
    assert_eq!(gw.handle_input(&old_append, 0), Err(Error::Forged));
    // A replayed old hello is answered but does not unseat the live session.
    assert_eq!(gw.handle_input(&old_hello, 77), Ok(None));
    assert_eq!(gw.current().map(|c| c.0), Some(2));
    while gw.poll_transmit().is_some() {}
    second.append(Topic::Index(0), b"b4", 0).unwrap();
    let (_, inputs) = exchange(&mut second, &mut gw, 10_002, &mut sniff);
    assert_eq!(inputs.len(), 1);
    commit_all(&mut gw, &inputs, &mut log);
    exchange(&mut second, &mut gw, 10_003, &mut sniff);
    assert_eq!(second.stats().acked, 4);
    assert_eq!(log.len(), 7);
}

#[test]
fn replays_forgeries_garbage_and_old_frames_are_dropped_and_counted() {
    let mut gw = gateway::Session::new(ID, KEY, 8);
    let mut dev = Session::<4, 64>::new(&config(5), 0, 5).unwrap();
    let mut sniff = Vec::new();
    let mut log = Vec::new();
    dev.append(Topic::Name(b"farm/north/temp"), b"21.5", 0)
        .unwrap();
    let (_, inputs) = exchange(&mut dev, &mut gw, 0, &mut sniff);
    assert_eq!(inputs.len(), 1);
    commit_all(&mut gw, &inputs, &mut log);
    exchange(&mut dev, &mut gw, 1, &mut sniff);
    let append = sniff
        .iter()
        .find(|f| Frame::new_checked(&f[..]).unwrap().frame_type() == Some(Type::Append))
        .unwrap()
        .clone();

    // A replayed append: answered again, never handed up again.
    assert_eq!(gw.handle_input(&append, 0), Err(Error::Replayed));
    assert!(gw.poll_transmit().is_some(), "the ack is sent again");
    assert_eq!(gw.stats().duplicates, 1);

    // Every bit flip and truncation of it: dropped, nothing handed up.
    for bit in 0..append.len() * 8 {
        let mut f = append.clone();
        f[bit / 8] ^= 1 << (bit % 8);
        assert!(gw.handle_input(&f, 0).is_err());
    }
    for cut in 0..append.len() {
        assert!(gw.handle_input(&append[..cut], 0).is_err());
    }
    // Random bytes, and random bytes behind a valid-looking header.
    let mut rng = Rng(99);
    for i in 0..2_000 {
        let len = rng.below(200) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 && len > 2 {
            f[0] = (wire::VERSION << 4) | Type::Append as u8;
        }
        assert!(gw.handle_input(&f, 0).is_err());
    }
    // Oversized.
    assert_eq!(gw.handle_input(&[0x12; 2_000], 0), Err(Error::TooLong));

    // A device with the wrong key gets nowhere.
    let mut bad_cfg = config(6);
    bad_cfg.key = *b"not-the-real-key";
    let mut intruder = Session::<2, 64>::new(&bad_cfg, 0, 6).unwrap();
    let mut buf = [0u8; 128];
    let len = intruder.poll_transmit(0, &mut buf).unwrap().unwrap();
    assert_eq!(gw.handle_input(&buf[..len], 0), Err(Error::Forged));
    assert!(gw.poll_transmit().is_none());

    // A ping replayed after 64 newer frames is out of the window.
    let mut pings = Vec::new();
    for t in 0..70 {
        let now = 100_000 + t * 40_000;
        sniff.clear();
        // Silence makes the device ping; answer each.
        exchange(&mut dev, &mut gw, now, &mut sniff);
        pings.extend(sniff.iter().cloned());
    }
    assert!(pings.len() >= 65);
    assert_eq!(
        gw.handle_input(&pings[pings.len() - 1], 0),
        Err(Error::Replayed)
    );
    assert_eq!(gw.handle_input(&pings[0], 0), Err(Error::TooOld));

    let d = gw.drops();
    assert_eq!(d.replayed, 2);
    assert_eq!(d.too_old, 1);
    assert!(d.forged >= append.len() as u32 * 8 - 16, "{d:?}");
    assert!(d.malformed > 1_000, "{d:?}");
    assert_eq!(
        gw.stats().requests,
        1,
        "only the one real append was handed up"
    );
    assert_eq!(log.len(), 1);
}

#[test]
fn subscribe_deliver_offload_and_refuse() {
    let mut gw = gateway::Session::new(ID, KEY, 8);
    let mut dev = Session::<4, 64>::new(&config(9), 0, 9).unwrap();
    let mut sniff = Vec::new();
    let sub = dev.subscribe(Topic::Name(b"cmd/valve"), 0, 1).unwrap();
    let off = dev.offload(b"double", &[21], 2).unwrap();
    let bad = dev.append(Topic::Name(b"not/mine"), b"x", 3).unwrap();
    let (_, inputs) = exchange(&mut dev, &mut gw, 0, &mut sniff);
    assert_eq!(inputs.len(), 3);
    let boot = 9;
    for input in &inputs {
        match input {
            Input::Subscribe {
                device_seq, topic, ..
            } => {
                assert_eq!(*device_seq, sub);
                assert_eq!(*topic, TopicRef::Name("cmd/valve".into()));
                gw.subscribed(boot, *device_seq, 41).unwrap();
            }
            Input::Offload {
                device_seq,
                handler,
                payload,
                ..
            } => {
                assert_eq!(handler, "double");
                gw.offload_result(boot, *device_seq, 0, &[payload[0] * 2])
                    .unwrap();
            }
            Input::Append { device_seq, .. } => {
                gw.refuse(
                    boot,
                    *device_seq,
                    wire::code::FORBIDDEN,
                    "topic not registered",
                )
                .unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    let gseq = gw.deliver(Topic::Name(b"cmd/valve"), 41, b"open").unwrap();
    let (events, inputs) = exchange(&mut dev, &mut gw, 1, &mut sniff);
    assert!(events.contains(&format!(
        "{:?}",
        Event::Acked {
            seq: sub,
            kind: RequestKind::Subscribe,
            topic_seq: 41
        }
    )));
    assert!(events.contains(&format!(
        "{:?}",
        Event::OffloadResult {
            seq: off,
            status: 0,
            payload: &[42]
        }
    )));
    assert!(events.contains(&format!(
        "{:?}",
        Event::Rejected {
            seq: bad,
            kind: RequestKind::Append,
            code: wire::code::FORBIDDEN
        }
    )));
    assert!(events.contains(&format!(
        "{:?}",
        Event::Delivery {
            topic: Topic::Name(b"cmd/valve"),
            topic_seq: 41,
            payload: b"open"
        }
    )));
    assert_eq!(inputs, [Input::DeliveryAck { gateway_seq: gseq }]);
    assert_eq!(dev.outbox_len(), 0);
    // Acknowledged: nothing left to send again.
    assert_eq!(gw.unacked_deliveries(), 0);
    assert!(!gw.redeliver(gseq));

    // A delivery whose frame is lost is sent again as the same frame; the
    // device acknowledges the repeat and reports the element once.
    let lost = gw.deliver(Topic::Name(b"cmd/valve"), 42, b"close").unwrap();
    let first = gw.poll_transmit().unwrap();
    assert_eq!(gw.unacked_deliveries(), 1);
    assert!(gw.redeliver(lost));
    let again = gw.poll_transmit().unwrap();
    assert_eq!(first, again, "a repeat is the same frame");
    let mut frame = again.clone();
    let ev = dev.handle_input(2, &mut frame).unwrap();
    assert!(
        matches!(ev, Some(Event::Delivery { topic_seq: 42, .. })),
        "{ev:?}"
    );
    // Its ack is lost too: the gateway sends it once more, the device
    // acks again without reporting it twice.
    let mut buf = [0u8; 256];
    while dev.poll_transmit(3, &mut buf).unwrap().is_some() {}
    assert!(gw.redeliver(lost));
    let mut frame = gw.poll_transmit().unwrap();
    assert!(
        dev.handle_input(4, &mut frame).is_err(),
        "a repeat is not reported again"
    );
    let (events, inputs) = exchange(&mut dev, &mut gw, 5, &mut sniff);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(inputs, [Input::DeliveryAck { gateway_seq: lost }]);
    assert_eq!(gw.unacked_deliveries(), 0);
}
