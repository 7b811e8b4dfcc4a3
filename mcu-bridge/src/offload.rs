//! Where a device runs a function: on itself, or at the gateway by an
//! offloaded call (NanoLambda's on-device versus remote choice).
//!
//! A [`Chooser`] keeps the last time to result measured on each side and
//! sends each invocation to the faster one; a side not yet measured is
//! tried first. Every [`FORGET_EVERY`] invocations it forgets what it
//! measured, so both sides are tried again: a gateway that was slow (or a
//! link that was lossy) for a while wins its share back once it is fast
//! again. This is the policy of the node's `adaptive()` placement, on the
//! device. Pure: times go in, choices come out, in whatever unit the
//! caller uses for both sides (milliseconds on a device, microseconds in
//! the simulator).

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

/// Chooses a side per invocation by measured time to result.
#[derive(Debug, Clone, Default)]
pub struct Chooser {
    local: Option<u64>,
    remote: Option<u64>,
    since_reset: u32,
}

impl Chooser {
    pub const fn new() -> Chooser {
        Chooser {
            local: None,
            remote: None,
            since_reset: 0,
        }
    }

    /// The side the next invocation runs on: one not measured since the
    /// last reset (local first), else the faster (local on a tie).
    pub fn pick(&mut self) -> Side {
        if self.since_reset >= FORGET_EVERY {
            *self = Chooser::new();
        }
        self.since_reset += 1;
        match (self.local, self.remote) {
            (None, _) => Side::Local,
            (Some(_), None) => Side::Remote,
            (Some(l), Some(r)) if r < l => Side::Remote,
            _ => Side::Local,
        }
    }

    /// An invocation on `side` took `elapsed` to its result.
    pub fn record(&mut self, side: Side, elapsed: u64) {
        match side {
            Side::Local => self.local = Some(elapsed),
            Side::Remote => self.remote = Some(elapsed),
        }
    }

    /// An offloaded call failed (refused, the handler failed, or no answer):
    /// the remote side counts as slower than anything until the next reset.
    pub fn remote_failed(&mut self) {
        self.remote = Some(u64::MAX);
    }

    /// What was measured since the last reset: (local, remote).
    pub fn measured(&self) -> (Option<u64>, Option<u64>) {
        (self.local, self.remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_remote_that_fails_loses_until_the_reset() {
        let mut c = Chooser::new();
        assert_eq!(c.pick(), Side::Local);
        c.record(Side::Local, 1_000);
        assert_eq!(c.pick(), Side::Remote);
        c.remote_failed();
        let picks: usize = (0..FORGET_EVERY - 2)
            .filter(|_| c.pick() == Side::Remote)
            .count();
        assert_eq!(picks, 0);
        assert_eq!(c.measured(), (Some(1_000), Some(u64::MAX)));
        assert_eq!(c.pick(), Side::Local, "the reset tries local first");
        assert_eq!(c.measured(), (None, None));
    }
}
