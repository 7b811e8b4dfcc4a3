//! The C core against the Rust gateway session over a simulated link that
//! loses, duplicates and reorders frames (as `mcu-bridge/tests/link.rs`
//! does for the Rust core): every reading acked exactly once, written once,
//! in the device's order when the gateway's window is one (as the node's
//! is). Run with the C core alone, in lockstep with the Rust core (every
//! frame the same), and against the sanitizer-built C core.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use woof_mcu_bridge::gateway::{self, Input, TopicRef};
use woof_mcu_bridge::session::{PING_INTERVAL_MS, RequestKind};
use woof_mcu_bridge::wire::{self, Topic};
use woof_mcu_c_test::*;

const KEY: [u8; 16] = *b"k3y-of-device-07";
const ID: &str = "device-07";

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

struct Run {
    /// (device seq, payload) in commit order; topic seq = index + 1.
    log: Vec<(u32, Vec<u8>)>,
    /// device seq -> the topic seqs its Acked events named.
    acked: HashMap<u32, Vec<u64>>,
    gave_up: HashSet<u32>,
    reading_of_seq: HashMap<u32, u32>,
    retransmitted: u32,
    gateway_duplicates: u64,
    lost: u64,
    frames: u64,
}

/// `readings` appends to a named topic, one every `every_ms`, through a
/// gateway with a window of `window`, over links with the given loss and
/// duplication (per mille); runs until every append is answered or given
/// up.
fn run(impls: &[Impl], seed: u64, readings: u32, loss: u64, window: u8) -> Run {
    let mut rng = Rng(seed);
    let spec = Spec {
        id: ID.into(),
        key: KEY,
        boot_id: seed,
        caps: wire::caps::SUBSCRIBE,
        ping_interval_ms: PING_INTERVAL_MS,
    };
    let mut dev = Lockstep::start(impls, &spec, 0, rng.u32()).unwrap();
    let mut gw = gateway::Session::new(ID.as_bytes(), KEY, window);
    let mut up = Link::new(loss, loss, (5, 300));
    let mut down = Link::new(loss, loss, (5, 300));
    let mut commits: Vec<(u64, u64, u32, Vec<u8>)> = Vec::new();
    let mut run = Run {
        log: Vec::new(),
        acked: HashMap::new(),
        gave_up: HashSet::new(),
        reading_of_seq: HashMap::new(),
        retransmitted: 0,
        gateway_duplicates: 0,
        lost: 0,
        frames: 0,
    };
    let mut backlog: VecDeque<u32> = VecDeque::new();
    let (mut produced, mut next_reading, mut now) = (0, 1_000u64, 0u64);
    loop {
        while produced < readings && now >= next_reading {
            backlog.push_back(produced);
            produced += 1;
            next_reading += 50;
        }
        while let Some(&r) = backlog.front() {
            let payload = format!(r#"{{"n":{r}}}"#);
            match dev.append(
                Topic::Name(b"farm/north/soil"),
                payload.as_bytes(),
                rng.u32(),
            ) {
                Ok(seq) => {
                    run.reading_of_seq.insert(seq, r);
                    backlog.pop_front();
                }
                Err(-13) => break,
                Err(e) => panic!("append: {}", c_strerror(e)),
            }
        }
        for f in dev.transmit_all(now) {
            up.send(&mut rng, now, &f);
        }
        for ev in dev.events(now) {
            if let Ev::GaveUp { seq, kind } = ev {
                assert_eq!(kind, RequestKind::Append);
                assert!(run.gave_up.insert(seq), "gave up twice on {seq}");
            }
        }
        while let Some(frame) = up.pop_due(now) {
            if let Ok(Some(input)) = gw.handle_input(&frame, rng.u32()) {
                let Input::Append {
                    boot_id,
                    device_seq,
                    topic,
                    payload,
                } = input
                else {
                    panic!("unexpected {input:?}")
                };
                assert_eq!(topic, TopicRef::Name("farm/north/soil".into()));
                commits.push((now + rng.below(80), boot_id, device_seq, payload));
            }
            while let Some(out) = gw.poll_transmit() {
                down.send(&mut rng, now, &out);
            }
        }
        // The node commits in the order it was handed the appends.
        while commits.first().is_some_and(|c| c.0 <= now) {
            let (_, boot, seq, payload) = commits.remove(0);
            run.log.push((seq, payload));
            assert!(gw.committed(boot, seq, run.log.len() as u64).unwrap());
        }
        while let Some(out) = gw.poll_transmit() {
            down.send(&mut rng, now, &out);
        }
        while let Some(frame) = down.pop_due(now) {
            if let Ok(Some(Ev::Acked {
                seq,
                kind,
                topic_seq,
            })) = dev.handle_input(now, &frame)
            {
                assert_eq!(kind, RequestKind::Append);
                run.acked.entry(seq).or_default().push(topic_seq);
            }
        }
        let state = dev.state();
        let done = produced == readings
            && backlog.is_empty()
            && state.outbox_len == 0
            && commits.is_empty()
            && up.queue.is_empty()
            && down.queue.is_empty();
        if done {
            run.retransmitted = state.stats.retransmitted;
            break;
        }
        assert!(now < 10_000_000, "seed {seed}: no progress");
        let mut next = state.poll_timeout;
        for t in [up.next_at(), down.next_at()].into_iter().flatten() {
            next = next.min(t);
        }
        for c in &commits {
            next = next.min(c.0);
        }
        if produced < readings {
            next = next.min(next_reading);
        }
        now = next.max(now + 1);
    }
    run.gateway_duplicates = gw.stats().duplicates;
    run.lost = up.lost + down.lost;
    run.frames = dev.frames;
    dev.finish();
    run
}

/// Nothing written twice; every ack seen exactly once and naming the
/// element that holds that reading; every reading acked or given up.
fn check(run: &Run, readings: u32) {
    let mut written = HashSet::new();
    for (seq, payload) in &run.log {
        assert!(written.insert(*seq), "{seq} written twice");
        let r = run.reading_of_seq[seq];
        assert_eq!(*payload, format!(r#"{{"n":{r}}}"#).into_bytes());
    }
    for (seq, acks) in &run.acked {
        assert_eq!(acks.len(), 1, "{seq} acked {} times", acks.len());
        let (logged, _) = &run.log[(acks[0] - 1) as usize];
        assert_eq!(logged, seq, "the ack of {seq} names another element");
        assert!(!run.gave_up.contains(seq));
    }
    assert_eq!(run.acked.len() + run.gave_up.len(), readings as usize);
}

/// And with a window of one and nothing given up: the readings are in the
/// topic in the device's order, and their acks name increasing elements.
fn check_in_order(run: &Run, readings: u32) {
    assert!(run.gave_up.is_empty(), "gave up {:?}", run.gave_up);
    let order: Vec<u32> = run.log.iter().map(|(s, _)| run.reading_of_seq[s]).collect();
    assert_eq!(order, (0..readings).collect::<Vec<_>>());
    let mut by_reading: Vec<(u32, u64)> = run
        .acked
        .iter()
        .map(|(s, t)| (run.reading_of_seq[s], t[0]))
        .collect();
    by_reading.sort();
    assert!(
        by_reading
            .iter()
            .enumerate()
            .all(|(i, &(r, t))| r == i as u32 && t == i as u64 + 1)
    );
}

/// The node's setting: a window of one, 5% of frames lost and 5%
/// duplicated each way, the C core alone.
#[test]
fn c_core_through_a_lossy_link_every_reading_acked_once_in_order() {
    for seed in 1..=4 {
        let run = run(&[Impl::C], seed, 300, 50, 1);
        check(&run, 300);
        check_in_order(&run, 300);
        assert!(run.lost > 0 && run.retransmitted > 0, "seed {seed}");
        assert!(run.gateway_duplicates > 0, "seed {seed}: no duplicate");
    }
}

/// A window of four and 10% loss, in lockstep with the Rust core: every
/// frame of the whole run the same.
#[test]
fn c_and_rust_cores_send_the_same_frames_through_a_lossy_link() {
    for seed in 11..=13 {
        let run = run(&[Impl::Rust, Impl::C], seed, 300, 100, 4);
        check(&run, 300);
        assert!(
            run.frames > 300 && run.retransmitted > 0,
            "{} frames",
            run.frames
        );
    }
}

/// The sanitizer-built C core in lockstep with the Rust core.
#[test]
fn sanitized_c_core_through_a_lossy_link() {
    let (bin, sanitized) = build_harness(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("link"));
    if !sanitized {
        eprintln!("sanitizers unavailable here: the harness is built without them");
    }
    let run = run(&[Impl::Rust, Impl::Proc(bin)], 21, 200, 100, 1);
    check(&run, 200);
}
