//! The C port's SLIP framing (`woof_slip_encode`, `woof_deframer`) and
//! local-or-offloaded chooser (`woof_chooser`) against the Rust core's
//! `stream` and `offload` on the same inputs: the same encodings, the same
//! frames out of the same byte streams split anywhere (noise, overlong runs,
//! bad escapes included) with the same drop counts, the same picks. Each
//! scenario also checks the outcome against a model of its own, so that two
//! implementations wrong in the same way still fail. The C side runs
//! linked in (`WOOF_DEFRAME_MAX` 66) and in the harness process built with
//! `-fsanitize=address,undefined` when available (66, and the default).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::OnceLock;

use woof_mcu_bridge::offload::{FORGET_EVERY, Side};
use woof_mcu_bridge::stream::{END, ESC, ESC_END, ESC_ESC, encoded_len_max};
use woof_mcu_c_test::*;

const SPECIAL: [u8; 4] = [END, ESC, ESC_END, ESC_ESC];

/// The first result, after checking every other is the same.
fn same<T: PartialEq + Debug>(what: &dyn Fn() -> String, results: Vec<(&str, T)>) -> T {
    let mut results = results;
    for i in 1..results.len() {
        assert_eq!(
            results[0].1,
            results[i].1,
            "{}: {} and {} differ",
            what(),
            results[0].0,
            results[i].0
        );
    }
    results.swap_remove(0).1
}

/// A byte, one of the four special ones a quarter of the time.
fn byte(rng: &mut Rng) -> u8 {
    if rng.chance(250) {
        SPECIAL[rng.below(4) as usize]
    } else {
        rng.next_u64() as u8
    }
}

fn bytes(len: usize, rng: &mut Rng) -> Vec<u8> {
    (0..len).map(|_| byte(rng)).collect()
}

/// The length `encode` must give.
fn encoded_len(frame: &[u8]) -> usize {
    2 + frame.len() + frame.iter().filter(|&&b| b == END || b == ESC).count()
}

/// What a deframer with a buffer of `b` bytes must have handed out and
/// dropped after `stream`, worked out another way: split at every END, the
/// last part still open; a part with ESC before anything but ESC_END or
/// ESC_ESC (or before its end), or longer than `b` once unescaped, is
/// dropped; an empty one is skipped.
fn model(stream: &[u8], b: usize) -> (Vec<Vec<u8>>, u32) {
    let mut parts: Vec<&[u8]> = stream.split(|&x| x == END).collect();
    parts.pop();
    let (mut frames, mut dropped) = (Vec::new(), 0);
    for part in parts {
        let mut frame = Vec::new();
        let mut bad = false;
        let mut it = part.iter();
        while let Some(&x) = it.next() {
            if x == ESC {
                match it.next() {
                    Some(&ESC_END) => frame.push(END),
                    Some(&ESC_ESC) => frame.push(ESC),
                    _ => bad = true,
                }
            } else {
                frame.push(x);
            }
        }
        if bad || frame.len() > b {
            dropped += 1;
        } else if !frame.is_empty() {
            frames.push(frame);
        }
    }
    (frames, dropped)
}

#[test]
fn the_model_agrees_with_the_rust_core_on_its_own_examples() {
    // stream.rs's tests, through the model.
    let (f, d) = model(&[9, 9, END, 1, 2, 3, 4, END], 4);
    assert_eq!((f, d), (vec![vec![9, 9], vec![1, 2, 3, 4]], 0));
    let (f, d) = model(&[1, 2, 3, 4, 5, END, 7, END], 4);
    assert_eq!((f, d), (vec![vec![7]], 1));
    let (f, d) = model(&[ESC, 1, 2, END, END, 8, END], 4);
    assert_eq!((f, d), (vec![vec![8]], 1));
}

/// Encodes fixed frames (every special byte, alone and together) and
/// `rounds` random ones into buffers of every interesting size.
fn encode_scenario(framers: &mut [(&str, &mut dyn Framer)], rounds: u32, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut frames: Vec<Vec<u8>> = vec![
        vec![],
        vec![END],
        vec![ESC],
        vec![ESC_END],
        vec![ESC_ESC],
        vec![END, END],
        vec![ESC, END],
        vec![ESC, ESC_END],
        vec![1, END, 2, ESC, ESC_END, END, ESC],
        (0..=255).collect(),
        vec![END; 1024],
        vec![ESC; 1024],
        vec![0x42; 1024],
    ];
    for _ in 0..rounds {
        let len = match rng.below(4) {
            0 => rng.below(8),
            1 => rng.below(200),
            _ => rng.below(1100),
        } as usize;
        frames.push(bytes(len, &mut rng));
    }
    let mut compared = 0;
    for frame in &frames {
        let exact = encoded_len(frame);
        let max = encoded_len_max(frame.len());
        let caps = [
            0,
            1,
            2,
            exact - 1,
            exact,
            exact + 1,
            max,
            rng.below(max as u64 + 1) as usize,
        ];
        for cap in caps {
            let what = || format!("encode {} bytes into {cap}", frame.len());
            let out = same(
                &what,
                framers
                    .iter_mut()
                    .map(|(n, f)| (*n, f.encode(frame, cap)))
                    .collect(),
            );
            compared += 1;
            match out {
                None => assert!(cap < exact, "{}: refused", what()),
                Some(out) => {
                    assert!(cap >= exact, "{}: accepted", what());
                    assert_eq!(out.len(), exact, "{}", what());
                    assert_eq!((out[0], out[exact - 1]), (END, END), "{}", what());
                    let (got, dropped) = model(&out, frame.len());
                    assert_eq!(dropped, 0, "{}", what());
                    let want: Vec<Vec<u8>> = if frame.is_empty() {
                        vec![]
                    } else {
                        vec![frame.clone()]
                    };
                    assert_eq!(got, want, "{}: decodes back", what());
                }
            }
        }
    }
    compared
}

/// A stream of frames and trouble for a deframer of `b` bytes.
fn stream(rng: &mut Rng, b: usize) -> Vec<u8> {
    let mut s = Vec::new();
    if rng.chance(300) {
        s.push(END);
    }
    let pieces = 1 + rng.below(12);
    for _ in 0..pieces {
        match rng.below(9) {
            // A whole frame, often of about the buffer's size.
            0..=2 => {
                let len = match rng.below(3) {
                    0 => (b as u64 + 3).saturating_sub(rng.below(7)) as usize,
                    1 => rng.below(b as u64 + 2) as usize,
                    _ => rng.below(12) as usize,
                };
                let frame = bytes(len, rng);
                let mut out = vec![0u8; encoded_len_max(len)];
                let n = woof_mcu_bridge::stream::encode(&frame, &mut out).unwrap();
                s.extend_from_slice(&out[..n]);
            }
            // Noise: any bytes, specials often.
            3 => {
                let len = rng.below(40) as usize;
                s.extend(bytes(len, rng));
            }
            // Empty frames.
            4 => s.extend(std::iter::repeat_n(END, 1 + rng.below(3) as usize)),
            // An overlong run, with escapes in it, ended or not.
            5 => {
                let len = b + 1 + rng.below(40) as usize;
                for _ in 0..len {
                    match rng.below(10) {
                        0 => s.extend([ESC, ESC_END]),
                        1 => s.extend([ESC, ESC_ESC]),
                        _ => s.push(rng.next_u64() as u8 & 0x7f),
                    }
                }
                if rng.chance(700) {
                    s.push(END);
                }
            }
            // A bad escape: ESC before anything else (END included).
            6 => {
                s.extend(bytes(rng.below(6) as usize, rng));
                s.push(ESC);
                let mut x = byte(rng);
                while x == ESC_END || x == ESC_ESC {
                    x = byte(rng);
                }
                s.push(x);
                s.extend(bytes(rng.below(6) as usize, rng));
            }
            // A frame cut short (joined mid-frame, or a byte lost).
            7 => {
                let frame = bytes(1 + rng.below(20) as usize, rng);
                let mut out = vec![0u8; encoded_len_max(frame.len())];
                let n = woof_mcu_bridge::stream::encode(&frame, &mut out).unwrap();
                let from = rng.below(n as u64) as usize;
                let to = from + rng.below((n - from) as u64) as usize;
                s.extend_from_slice(&out[from..to]);
            }
            // A lone ESC, or an END.
            _ => s.push(if rng.chance(500) { ESC } else { END }),
        }
    }
    s
}

/// Cuts `s` at random points (some parts empty, some one byte), no part
/// longer than the harness takes in a line.
fn split(rng: &mut Rng, s: &[u8]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = (0..rng.below(8))
        .map(|_| rng.below(s.len() as u64 + 1) as usize)
        .collect();
    if !s.is_empty() && s.len() < 400 && rng.chance(200) {
        cuts.extend(0..s.len());
    }
    cuts.push(0);
    cuts.push(s.len());
    cuts.sort_unstable();
    let mut parts = Vec::new();
    for w in cuts.windows(2) {
        let part = &s[w[0]..w[1]];
        if part.is_empty() {
            parts.push(Vec::new());
        }
        parts.extend(part.chunks(3000).map(<[u8]>::to_vec));
    }
    parts
}

/// `rounds` random streams, each fed to every deframer (all of `b` bytes)
/// in the same random parts, each member choosing feed or push by itself.
/// Returns the frames and drops seen.
fn deframe_scenario(
    framers: &mut [(&str, &mut dyn Framer)],
    b: usize,
    rounds: u32,
    seed: u64,
) -> (usize, u32) {
    let mut rng = Rng(seed);
    let (mut frames_seen, mut drops_seen) = (0, 0);
    for round in 0..rounds {
        // Round 0 starts from the deframers as they are: new, or a static
        // the harness never initialised.
        if round > 0 {
            for (_, f) in framers.iter_mut() {
                f.reset_deframer();
            }
        }
        let s = stream(&mut rng, b);
        let mut all_frames = Vec::new();
        let mut dropped = 0;
        for (i, part) in split(&mut rng, &s).iter().enumerate() {
            let what = || format!("round {round} (seed {seed}), part {i}: {}", part.len());
            let results = framers
                .iter_mut()
                .map(|(n, f)| (*n, f.feed(part, rng.chance(500))))
                .collect();
            let (frames, d) = same(&what, results);
            assert!(frames.iter().all(|f| !f.is_empty() && f.len() <= b));
            assert!(d >= dropped, "{}: dropped went back", what());
            all_frames.extend(frames);
            dropped = d;
        }
        let (want, want_dropped) = model(&s, b);
        assert_eq!(
            (&all_frames, dropped),
            (&want, want_dropped),
            "round {round} (seed {seed}): against the model"
        );
        frames_seen += all_frames.len();
        drops_seen += dropped;
    }
    (frames_seen, drops_seen)
}

/// Streams of whole frames only, some ENDs doubled: every frame comes out
/// whole (too long ones dropped and counted), however the stream is cut.
fn clean_streams(framers: &mut [(&str, &mut dyn Framer)], b: usize, rounds: u32, seed: u64) {
    let mut rng = Rng(seed);
    for _ in 0..rounds {
        for (_, f) in framers.iter_mut() {
            f.reset_deframer();
        }
        let (mut s, mut want, mut too_long) = (Vec::new(), Vec::new(), 0);
        for _ in 0..1 + rng.below(6) {
            let frame = bytes(1 + rng.below(b as u64 + 2) as usize, &mut rng);
            let mut out = vec![0u8; encoded_len_max(frame.len())];
            let n = woof_mcu_bridge::stream::encode(&frame, &mut out).unwrap();
            if rng.chance(500) {
                s.push(END);
            }
            s.extend_from_slice(&out[..n]);
            if frame.len() > b {
                too_long += 1;
            } else {
                want.push(frame);
            }
        }
        let mut got = Vec::new();
        let mut dropped = 0;
        for part in split(&mut rng, &s) {
            let results = framers
                .iter_mut()
                .map(|(n, f)| (*n, f.feed(&part, rng.chance(500))))
                .collect();
            let (frames, d) = same(&|| "clean stream".into(), results);
            got.extend(frames);
            dropped = d;
        }
        assert_eq!((got, dropped), (want, too_long));
    }
}

/// The chooser's policy written again, plainly: each side's last two times
/// (the later first, `None` where there is none), and whether it was
/// measured since the last reset. Index 0 is local, 1 remote.
#[derive(Default)]
struct ChooserModel {
    times: [[Option<u64>; 2]; 2],
    fresh: [bool; 2],
    since_reset: u32,
}

impl ChooserModel {
    fn time(&self, side: usize) -> u64 {
        self.times[side].iter().flatten().copied().min().unwrap()
    }

    fn pick(&mut self) -> Side {
        if self.since_reset == FORGET_EVERY {
            self.fresh = [false; 2];
            self.since_reset = 0;
        }
        self.since_reset += 1;
        if !self.fresh[0] || (self.fresh[1] && self.time(1) >= self.time(0)) {
            Side::Local
        } else {
            Side::Remote
        }
    }

    fn record(&mut self, side: Side, elapsed: u64) {
        let i = usize::from(side == Side::Remote);
        self.times[i] = [Some(elapsed), self.times[i][0]];
        self.fresh[i] = true;
    }

    fn remote_failed(&mut self) {
        self.times[1] = [Some(u64::MAX); 2];
        self.fresh[1] = true;
    }

    fn measured(&self) -> (Option<u64>, Option<u64>) {
        (
            self.fresh[0].then(|| self.time(0)),
            self.fresh[1].then(|| self.time(1)),
        )
    }
}

/// `rounds` sequences of picks and random records, failures and resets;
/// every pick and every `measured()` the same, and as [`ChooserModel`]
/// says. Returns the remote picks.
fn choose_scenario(choosers: &mut [(&str, &mut dyn Choose)], rounds: u32, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut remote = 0;
    for round in 0..rounds {
        if round > 0 {
            for (_, c) in choosers.iter_mut() {
                c.reset_chooser();
            }
        }
        let mut model = ChooserModel::default();
        let mut since_reset = 0u32;
        for step in 0..1 + rng.below(120) {
            let what = || format!("round {round} (seed {seed}), step {step}");
            let side = same(
                &what,
                choosers.iter_mut().map(|(n, c)| (*n, c.pick())).collect(),
            );
            let measured = same(
                &what,
                choosers
                    .iter_mut()
                    .map(|(n, c)| (*n, c.measured()))
                    .collect(),
            );
            assert_eq!(
                (side, measured),
                (model.pick(), model.measured()),
                "{} (the model)",
                what()
            );
            if since_reset == FORGET_EVERY {
                since_reset = 0;
            }
            if since_reset == 0 {
                // The first pick after a reset: nothing measured, local.
                assert_eq!((side, measured), (Side::Local, (None, None)), "{}", what());
            }
            since_reset += 1;
            if side == Side::Remote {
                remote += 1;
            }
            // A time from a small set (ties often), or anything.
            let elapsed = match rng.below(8) {
                0 => 0,
                1 => u64::MAX,
                2 => u64::MAX - 1,
                3 => rng.next_u64(),
                _ => rng.below(6) * 10,
            };
            match rng.below(20) {
                0..=11 => {
                    for (_, c) in choosers.iter_mut() {
                        c.record(side, elapsed);
                    }
                    model.record(side, elapsed);
                }
                12..=13 => {
                    let other = if side == Side::Local {
                        Side::Remote
                    } else {
                        Side::Local
                    };
                    for (_, c) in choosers.iter_mut() {
                        c.record(other, elapsed);
                    }
                    model.record(other, elapsed);
                }
                14..=16 => {
                    for (_, c) in choosers.iter_mut() {
                        c.remote_failed();
                    }
                    model.remote_failed();
                }
                17 => {
                    for (_, c) in choosers.iter_mut() {
                        c.reset_chooser();
                    }
                    model = ChooserModel::default();
                    since_reset = 0;
                }
                // No answer yet.
                _ => {}
            }
            let measured = same(
                &what,
                choosers
                    .iter_mut()
                    .map(|(n, c)| (*n, c.measured()))
                    .collect(),
            );
            assert_eq!(measured, model.measured(), "{} (the model)", what());
        }
    }
    remote
}

/// The sanitizer-built harness with the test sizes (`WOOF_DEFRAME_MAX` 66)
/// and with the header's defaults (1,025).
fn harnesses() -> &'static [(PathBuf, bool); 2] {
    static HARNESS: OnceLock<[(PathBuf, bool); 2]> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stream");
        [
            build_harness(&dir.join("sized")),
            build_harness_with(&dir.join("default"), &[]),
        ]
    })
}

#[test]
fn encode_is_the_same_byte_for_byte() {
    let (mut r, mut c) = (RustFramer::<DEFRAME_MAX>::new(), CFramer::new());
    let n = encode_scenario(&mut [("rust", &mut r), ("c", &mut c)], 3_000, 1);
    assert!(n > 20_000, "{n} encodings compared");
}

#[test]
fn deframing_random_streams_split_anywhere_is_the_same() {
    let (mut r, mut c) = (RustFramer::<DEFRAME_MAX>::new(), CFramer::new());
    let mut both: [(&str, &mut dyn Framer); 2] = [("rust", &mut r), ("c", &mut c)];
    let (frames, drops) = deframe_scenario(&mut both, DEFRAME_MAX, 4_000, 2);
    // The streams do exercise both outcomes.
    assert!(
        frames > 8_000 && drops > 5_000,
        "{frames} frames, {drops} drops"
    );
    clean_streams(&mut both, DEFRAME_MAX, 500, 3);
}

#[test]
fn chooser_picks_are_the_same() {
    let (mut r, mut c) = (RustChooser::default(), CChooser::new());
    let remote = choose_scenario(&mut [("rust", &mut r), ("c", &mut c)], 2_000, 4);
    assert!(remote > 10_000, "{remote} remote picks");
}

/// What the Rust API cannot say: a side code that is neither side, the
/// outputs of `woof_chooser_measured` for a side not measured, and init
/// over garbage.
#[test]
fn chooser_c_api_edges() {
    let mut c = CChooser::new();
    assert_eq!(c.measured_raw(42), (0, 42, 42));
    c.record_code(7, 5);
    c.record_code(-1, 5);
    assert_eq!(c.measured_raw(42), (0, 42, 42), "unknown sides ignored");
    c.record_code(0, 5);
    assert_eq!(c.measured_raw(42), (1, 5, 42));
    c.remote_failed();
    assert_eq!(c.measured_raw(42), (3, 5, u64::MAX));
    assert_eq!(c.pick(), Side::Local);
    c.reset_chooser();
    assert_eq!(c.measured_raw(42), (0, 42, 42));
}

#[test]
fn everything_under_sanitizers() {
    let [(sized, sanitized), (default, _)] = harnesses();
    if !sanitized {
        eprintln!("sanitizers unavailable here: the harness is built without them");
    }
    let mut p = ProcDevice::spawn(sized);
    let (size, max) = p.deframer_size();
    assert_eq!(max, DEFRAME_MAX);
    assert!(
        (DEFRAME_MAX + 8..=DEFRAME_MAX + 24).contains(&size),
        "{size}"
    );
    if cfg!(target_pointer_width = "64") {
        // No padding after the buffer (see DEFRAME_MAX).
        assert_eq!(size, DEFRAME_MAX + 14);
    }
    let mut r = RustFramer::<DEFRAME_MAX>::new();
    let mut c = CFramer::new();
    {
        let mut three: [(&str, &mut dyn Framer); 3] =
            [("rust", &mut r), ("c", &mut c), ("c (own process)", &mut p)];
        encode_scenario(&mut three, 300, 11);
        deframe_scenario(&mut three, DEFRAME_MAX, 400, 12);
        clean_streams(&mut three, DEFRAME_MAX, 50, 13);
    }
    let (mut rc, mut cc) = (RustChooser::default(), CChooser::new());
    choose_scenario(
        &mut [
            ("rust", &mut rc),
            ("c", &mut cc),
            ("c (own process)", &mut p),
        ],
        200,
        14,
    );
    p.close();

    // The header's default size, against the gateway's Deframer.
    let mut p = ProcDevice::spawn(default);
    assert_eq!(p.deframer_size().1, DEFRAME_MAX_DEFAULT);
    let mut r = RustFramer::<DEFRAME_MAX_DEFAULT>::new();
    let mut two: [(&str, &mut dyn Framer); 2] = [("rust", &mut r), ("c (own process)", &mut p)];
    let (frames, drops) = deframe_scenario(&mut two, DEFRAME_MAX_DEFAULT, 300, 15);
    assert!(
        frames > 300 && drops > 100,
        "{frames} frames, {drops} drops"
    );
    clean_streams(&mut two, DEFRAME_MAX_DEFAULT, 30, 16);
    p.close();
}
