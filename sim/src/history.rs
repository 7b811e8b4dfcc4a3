//! The run's history: every event the simulator sees (a message sent,
//! dropped or delivered, a fault, a client's request and its answer), with
//! its simulated time, folded into one hash, and the last ones kept to show
//! when a checker fails. The same seed must give the same hash.

use std::collections::VecDeque;
use std::fmt::Write;

/// FNV-1a, 64 bits: small, and defined here so that the hash of a history
/// never changes with a dependency's version.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// How many recent events a failure report shows.
pub const RECENT: usize = 60;

/// The events of one run.
#[derive(Debug, Default)]
pub struct History {
    hash: Fnv,
    count: u64,
    recent: VecDeque<String>,
}

impl History {
    /// Records an event that happened at `at_ms` of simulated time.
    pub fn event(&mut self, at_ms: u64, what: impl std::fmt::Display) {
        let mut line = String::new();
        let _ = write!(line, "{at_ms:>8} ms  {what}");
        self.hash.write(line.as_bytes());
        self.hash.write(b"\n");
        self.count += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The last [`RECENT`] events, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(String::as_str)
    }
}

/// The history of a running simulation, shared by every part that records:
/// stamps events with the simulated milliseconds since the run began, and
/// counts the faults injected per kind.
#[derive(Debug)]
pub struct Recorder {
    start: tokio::time::Instant,
    history: std::sync::Mutex<History>,
    faults: std::sync::Mutex<crate::config::Counts>,
    /// Print every event as it happens (`--replay`).
    trace: bool,
}

impl Recorder {
    /// Starts the clock of the run; call inside its runtime.
    pub fn new(trace: bool) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            history: Default::default(),
            faults: Default::default(),
            trace,
        }
    }

    /// Simulated milliseconds since the run began.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn event(&self, what: impl std::fmt::Display) {
        let at = self.now_ms();
        let what = what.to_string();
        if self.trace {
            println!("{at:>8} ms  {what}");
        }
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .event(at, what);
    }

    /// Prints a line when tracing (`--replay`), without recording it: for
    /// details too costly to work out on every run. The hash is the same
    /// with and without tracing.
    pub fn note(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>8} ms  ({})", self.now_ms(), what());
        }
    }

    /// Records and counts an injected fault.
    pub fn fault(&self, kind: crate::config::Fault, what: impl std::fmt::Display) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(kind);
        self.event(format_args!("FAULT {} {what}", kind.name()));
    }

    pub fn faults(&self) -> crate::config::Counts {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn hash(&self) -> u64 {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hash()
    }

    pub fn len(&self) -> u64 {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn recent(&self) -> Vec<String> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recent()
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_the_events_and_their_order() {
        let run = |events: &[(u64, &str)]| {
            let mut h = History::default();
            for (t, e) in events {
                h.event(*t, e);
            }
            h.hash()
        };
        let a = run(&[(1, "send"), (2, "deliver")]);
        assert_eq!(a, run(&[(1, "send"), (2, "deliver")]));
        assert_ne!(a, run(&[(2, "deliver"), (1, "send")]));
        assert_ne!(a, run(&[(1, "send"), (3, "deliver")]));
        // FNV-1a of the empty string, as published.
        assert_eq!(Fnv::default().finish(), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn only_the_recent_events_are_kept() {
        let mut h = History::default();
        for i in 0..(RECENT as u64 + 5) {
            h.event(i, format!("e{i}"));
        }
        assert_eq!(h.len(), RECENT as u64 + 5);
        assert_eq!(h.recent().count(), RECENT);
        assert!(h.recent().next().unwrap().ends_with("e5"));
    }
}
