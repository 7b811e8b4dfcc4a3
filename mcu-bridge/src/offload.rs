//! Where a device runs a function: on itself, or at the gateway by an
//! offloaded call (NanoLambda's on-device versus remote choice).
//!
//! A [`Chooser`] keeps the last two times to result measured on each side
//! and sends each invocation to the side whose lesser time of its two is
//! lower; a side not measured since the last reset is tried first (local
//! first). The lesser of two, not the last alone, so that one slow run (an
//! interrupt, a scheduling delay) does not send the rest of a window to
//! the other side: two slow runs in a row do. Every [`FORGET_EVERY`]
//! invocations it resets: each side is measured once afresh, and that time
//! is taken with the last one from before the reset, so a side that was
//! slow and is fast again wins at once, and one that went slow costs at
//! most one more call. A gateway that was slow (or a link that was lossy)
//! for a while thus wins its share back once it is fast again. A failed
//! offloaded call makes the remote side lose until the next reset. This
//! is the policy of the node's `adaptive()` placement, on the device.
//! Pure: times go in, choices come out, in whatever unit the caller uses
//! for both sides (milliseconds on a device, microseconds in the
//! simulator). Bounded: two times per side, nothing more.

/// Invocations between two resets of what was measured.
pub const FORGET_EVERY: u32 = 16;

/// Where one invocation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device's own implementation of the function.
    Local,
    /// An offloaded call to the handler at the gateway.
    Remote,
}

/// One side's measurements.
#[derive(Debug, Clone, Copy)]
struct Times {
    /// The last time measured, then the one before it, kept across
    /// resets; `u64::MAX` where there is none yet, which the lesser of
    /// the two then ignores.
    last_two: [u64; 2],
    /// Measured since the last reset. A side that is not is tried first,
    /// so that each reset measures both afresh.
    fresh: bool,
}

impl Times {
    const NONE: Times = Times {
        last_two: [u64::MAX; 2],
        fresh: false,
    };

    fn record(&mut self, elapsed: u64) {
        self.last_two = [elapsed, self.last_two[0]];
        self.fresh = true;
    }

    /// The lesser of the last two: one slow run alone does not count.
    fn time(&self) -> u64 {
        self.last_two[0].min(self.last_two[1])
    }

    fn measured(&self) -> Option<u64> {
        self.fresh.then(|| self.time())
    }
}

/// Chooses a side per invocation by measured time to result.
#[derive(Debug, Clone)]
pub struct Chooser {
    local: Times,
    remote: Times,
    since_reset: u32,
}

impl Default for Chooser {
    fn default() -> Self {
        Chooser::new()
    }
}

impl Chooser {
    /// Nothing measured.
    pub const fn new() -> Chooser {
        Chooser {
            local: Times::NONE,
            remote: Times::NONE,
            since_reset: 0,
        }
    }

    /// The side the next invocation runs on: one not measured since the
    /// last reset (local first), else the faster by the lesser of each
    /// side's last two times (local on a tie).
    pub fn pick(&mut self) -> Side {
        if self.since_reset >= FORGET_EVERY {
            // Both are measured afresh; their times stay as the ones
            // before, for the fresh ones to be taken with.
            self.local.fresh = false;
            self.remote.fresh = false;
            self.since_reset = 0;
        }
        self.since_reset += 1;
        match (self.local.fresh, self.remote.fresh) {
            (false, _) => Side::Local,
            (true, false) => Side::Remote,
            _ if self.remote.time() < self.local.time() => Side::Remote,
            _ => Side::Local,
        }
    }

    /// An invocation on `side` took `elapsed` to its result.
    pub fn record(&mut self, side: Side, elapsed: u64) {
        match side {
            Side::Local => self.local.record(elapsed),
            Side::Remote => self.remote.record(elapsed),
        }
    }

    /// An offloaded call failed (refused, the handler failed, or no answer):
    /// the remote side counts as slower than anything until the next reset.
    /// Both of its times, or the lesser of two would hide the failure; after
    /// the reset its fresh time counts alone (the lesser of it and this).
    pub fn remote_failed(&mut self) {
        self.remote.record(u64::MAX);
        self.remote.record(u64::MAX);
    }

    /// The time each side counts as (the lesser of its last two) if it was
    /// measured since the last reset: (local, remote). A failed remote is
    /// `u64::MAX`.
    pub fn measured(&self) -> (Option<u64>, Option<u64>) {
        (self.local.measured(), self.remote.measured())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invocations in a window between two resets.
    const WINDOW: usize = FORGET_EVERY as usize;

    /// Picks `N` times, recording for each pick the time `cost` gives
    /// (given the side and the pick's number from 0); returns the picks.
    fn run<const N: usize>(c: &mut Chooser, cost: impl Fn(Side, usize) -> u64) -> [Side; N] {
        core::array::from_fn(|i| {
            let side = c.pick();
            c.record(side, cost(side, i));
            side
        })
    }

    fn count(picks: &[Side], side: Side) -> usize {
        picks.iter().filter(|&&s| s == side).count()
    }

    #[test]
    fn each_side_is_tried_first_then_the_faster_wins() {
        let mut c = Chooser::new();
        assert_eq!(c.pick(), Side::Local);
        c.record(Side::Local, 50);
        assert_eq!(c.pick(), Side::Remote);
        c.record(Side::Remote, 8);
        for _ in 0..FORGET_EVERY - 2 {
            assert_eq!(c.pick(), Side::Remote);
            c.record(Side::Remote, 9);
        }
        // The reset: both are measured again, local first.
        assert_eq!(c.pick(), Side::Local);
        c.record(Side::Local, 3);
        assert_eq!(c.pick(), Side::Remote);
        c.record(Side::Remote, 9);
        assert_eq!(c.pick(), Side::Local);
    }

    /// The flaky test's case: local is faster, one local run hiccups.
    #[test]
    fn one_slow_local_run_does_not_send_the_rest_of_the_window_remote() {
        let mut c = Chooser::new();
        let slow_third = |side, i| match side {
            Side::Local if i == 2 => 100,
            Side::Local => 10,
            Side::Remote => 50,
        };
        let picks = run::<WINDOW>(&mut c, slow_third);
        assert_eq!(picks[..2], [Side::Local, Side::Remote]);
        assert_eq!(count(&picks, Side::Remote), 1, "{picks:?}");
        assert_eq!(c.measured(), (Some(10), Some(50)));
    }

    #[test]
    fn two_slow_local_runs_in_a_row_send_the_rest_remote() {
        let mut c = Chooser::new();
        let slow_from_third = |side, i| match side {
            Side::Local if i >= 2 => 100,
            Side::Local => 10,
            Side::Remote => 50,
        };
        let picks = run::<WINDOW>(&mut c, slow_from_third);
        // Local, the remote probe, two slow local runs, then remote.
        assert_eq!(
            picks[..4],
            [Side::Local, Side::Remote, Side::Local, Side::Local]
        );
        assert_eq!(count(&picks[4..], Side::Local), 0, "{picks:?}");
        assert_eq!(c.measured(), (Some(100), Some(50)));
    }

    #[test]
    fn a_remote_that_fails_loses_until_the_reset_then_its_fresh_time_counts() {
        let mut c = Chooser::new();
        // The remote is faster, then fails: one good time before the
        // failure must not hide it.
        let first: [Side; 3] = run(
            &mut c,
            |side, _| if side == Side::Local { 1_000 } else { 5 },
        );
        assert_eq!(first, [Side::Local, Side::Remote, Side::Remote]);
        assert_eq!(c.pick(), Side::Remote);
        c.remote_failed();
        let picks: usize = (0..FORGET_EVERY - 4)
            .filter(|_| c.pick() == Side::Remote)
            .count();
        assert_eq!(picks, 0);
        assert_eq!(c.measured(), (Some(1_000), Some(u64::MAX)));
        assert_eq!(c.pick(), Side::Local, "the reset tries local first");
        assert_eq!(c.measured(), (None, None));
        c.record(Side::Local, 1_000);
        // Probed afresh, and its fresh time counts (the lesser of it and
        // the failure).
        assert_eq!(c.pick(), Side::Remote);
        c.record(Side::Remote, 7);
        assert_eq!(c.measured(), (Some(1_000), Some(7)));
        assert_eq!(c.pick(), Side::Remote);
    }

    #[test]
    fn a_fresh_probe_after_the_reset_is_taken_with_the_time_before_it() {
        let mut c = Chooser::new();
        run::<WINDOW>(&mut c, |side, _| if side == Side::Local { 10 } else { 50 });
        // Local's probe after the reset hiccups: its time before the reset
        // (10) still counts, so local keeps the window.
        let picks = run::<WINDOW>(&mut c, |side, i| match side {
            Side::Local if i == 0 => 100,
            Side::Local => 10,
            Side::Remote => 50,
        });
        assert_eq!(picks[..3], [Side::Local, Side::Remote, Side::Local]);
        assert_eq!(count(&picks, Side::Remote), 1, "{picks:?}");
        // Local went slow for good: it costs one more call than its probe.
        let picks = run::<WINDOW>(&mut c, |side, _| if side == Side::Local { 100 } else { 50 });
        assert_eq!(picks[..3], [Side::Local, Side::Remote, Side::Local]);
        assert_eq!(count(&picks, Side::Local), 2, "{picks:?}");
        // The remote went fast: it wins at once on its probe.
        let picks = run::<WINDOW>(&mut c, |side, _| if side == Side::Local { 100 } else { 3 });
        assert_eq!(count(&picks, Side::Local), 1, "{picks:?}");
        // Local is fast again: it wins at once on its probe too.
        let picks = run::<WINDOW>(&mut c, |side, _| if side == Side::Local { 1 } else { 3 });
        assert_eq!(picks[..2], [Side::Local, Side::Remote]);
        assert_eq!(count(&picks, Side::Remote), 1, "{picks:?}");
    }
}
