//! What one run simulates: the cluster's shape, the workload's length, and
//! the rate of each kind of fault (parsed from `--faults`).

use std::fmt;

use crate::Error;

/// How many kinds of fault there are.
const KINDS: usize = 11;

/// A kind of fault the simulator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A request or its reply is lost (the sender times out).
    Drop,
    /// A message takes 20 to 200 ms longer than usual.
    Delay,
    /// A request is delivered twice (the second reply is discarded).
    Dup,
    /// A message is held back a little, so later ones overtake it.
    Reorder,
    /// Links are cut (a split, one way, or a node isolated), then healed.
    Partition,
    /// A node loses power: what was not synced may be lost; it restarts later.
    Crash,
    /// A node loses power during a synced write, which survives whole or not at all.
    Torn,
    /// A write fails (nothing applied); the node is restarted a little later.
    DiskFail,
    /// A node's wall clock jumps by up to ten minutes, either way.
    Clock,
    /// A node's disk is slow for 1 to 5 s: each synced log write takes 20 to 400 ms longer.
    Slow,
    /// A node is stopped on purpose: it hands the leadership of its groups
    /// over (as `Node::stop` does), then goes down as in a crash (its disk
    /// keeping what a crash would), and restarts later. Not in `all`:
    /// `all,leave=RATE` adds it.
    Leave,
}

impl Fault {
    pub const ALL: [Fault; KINDS] = [
        Fault::Drop,
        Fault::Delay,
        Fault::Dup,
        Fault::Reorder,
        Fault::Partition,
        Fault::Crash,
        Fault::Torn,
        Fault::DiskFail,
        Fault::Clock,
        Fault::Slow,
        Fault::Leave,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Delay => "delay",
            Fault::Dup => "dup",
            Fault::Reorder => "reorder",
            Fault::Partition => "partition",
            Fault::Crash => "crash",
            Fault::Torn => "torn",
            Fault::DiskFail => "disk-fail",
            Fault::Clock => "clock",
            Fault::Slow => "slow",
            Fault::Leave => "leave",
        }
    }

    /// The rate `--faults all` sets: per message for the network's kinds,
    /// per simulated second for the others.
    fn default_rate(self) -> f64 {
        match self {
            Fault::Drop => 0.01,
            Fault::Delay => 0.02,
            Fault::Dup => 0.01,
            Fault::Reorder => 0.02,
            Fault::Partition => 0.3,
            Fault::Crash => 0.15,
            Fault::Torn => 0.1,
            Fault::DiskFail => 0.1,
            Fault::Clock => 0.1,
            Fault::Slow => 0.2,
            // Off in `all`, so that the sweep's seeds keep their schedules.
            Fault::Leave => 0.0,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The rate of each fault kind; 0 turns a kind off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates([f64; KINDS]);

impl Rates {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn all() -> Self {
        let mut r = Self::none();
        for f in Fault::ALL {
            r.0[f.index()] = f.default_rate();
        }
        r
    }

    pub fn get(&self, f: Fault) -> f64 {
        self.0[f.index()]
    }

    pub fn set(&mut self, f: Fault, rate: f64) {
        self.0[f.index()] = rate;
    }

    /// `all`, `none`, or `kind=rate,...` (kinds not named are off; after
    /// `all,` they keep `all`'s rates).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (mut r, rest) = match text.trim() {
            "all" => return Ok(Self::all()),
            "none" | "" => return Ok(Self::none()),
            t => match t.strip_prefix("all,") {
                Some(rest) => (Self::all(), rest),
                None => (Self::none(), t),
            },
        };
        for part in rest.split(',') {
            let (name, rate) = part
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("fault {part:?}: expected kind=rate")))?;
            let kind = Fault::ALL
                .into_iter()
                .find(|f| f.name() == name.trim())
                .ok_or_else(|| {
                    let kinds: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
                    Error::Config(format!(
                        "unknown fault {name:?}; kinds: {}",
                        kinds.join(", ")
                    ))
                })?;
            let rate: f64 = rate
                .trim()
                .parse()
                .ok()
                .filter(|r: &f64| (0.0..=1000.0).contains(r))
                .ok_or_else(|| Error::Config(format!("fault {name}: bad rate {rate:?}")))?;
            r.set(kind, rate);
        }
        Ok(r)
    }

    /// The kinds with a rate above 0.
    pub fn enabled(&self) -> impl Iterator<Item = Fault> + '_ {
        Fault::ALL.into_iter().filter(|f| self.get(*f) > 0.0)
    }
}

/// How many faults of each kind were injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts([u64; KINDS]);

impl Counts {
    pub fn add(&mut self, f: Fault) {
        self.0[f.index()] += 1;
    }

    pub fn get(&self, f: Fault) -> u64 {
        self.0[f.index()]
    }

    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, kind) in Fault::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", kind.name(), self.0[i])?;
        }
        Ok(())
    }
}

/// A deliberate bug the simulator can switch on, to show that its
/// checkers catch what they exist for (tests only). Some are in the
/// simulator's own client or disk, the rest in woof's code
/// (`woof_consensus::bugs`, compiled in with the `sim-bugs` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The client counts an append as acknowledged once the node it asked
    /// leads the group, with the next sequence number it predicts, without
    /// waiting for the commit.
    AckBeforeCommit,
    /// After an error that leaves the outcome unknown, the client retries
    /// with a new producer sequence (so the topic cannot recognise the
    /// retry).
    RetryWithNewSeq,
    /// Node 1's disk stores every element's payload reversed.
    DivergentReplica,
    /// woof's topic state machine forgets producer windows.
    IgnoreProducerWindow,
    /// woof answers a read of the latest range from whichever replica is
    /// asked, without confirming that it leads.
    StaleRead,
    /// woof's subscriptions deliver an element again after waiting.
    SubscriberRedelivers,
    /// woof's groups restarted from disk cannot be reached by their peers.
    RestartedGroupUnreachable,
    /// woof creates topics without claiming their names in the directory.
    CreateSkipsClaim,
    /// woof retries an append it forwards for a client without a producer
    /// id without the identity it gave it.
    ForwardedRetryWithoutIdentity,
    /// woof's repair makes a new replica a voter before it caught up.
    RepairSkipsCatchUp,
    /// woof's handler runners record progress before the outputs commit.
    HandlerProgressFirst,
    /// woof's group leaders count themselves in the majority before their
    /// own log write is synced.
    LeaderCountsItselfUnsynced,
    /// woof's snapshot copies, made when a snapshot is sent, take the topic
    /// past the snapshot's log position.
    SnapshotCopiesPastItsPoint,
}

impl Broken {
    pub const ALL: [(Broken, &'static str); 13] = [
        (Broken::AckBeforeCommit, "ack-before-commit"),
        (Broken::RetryWithNewSeq, "retry-with-new-seq"),
        (Broken::DivergentReplica, "divergent-replica"),
        (Broken::IgnoreProducerWindow, "ignore-producer-window"),
        (Broken::StaleRead, "stale-read"),
        (Broken::SubscriberRedelivers, "subscriber-redelivers"),
        (
            Broken::RestartedGroupUnreachable,
            "restarted-group-unreachable",
        ),
        (Broken::CreateSkipsClaim, "create-skips-claim"),
        (
            Broken::ForwardedRetryWithoutIdentity,
            "forwarded-retry-without-identity",
        ),
        (Broken::RepairSkipsCatchUp, "repair-skips-catch-up"),
        (Broken::HandlerProgressFirst, "handler-progress-first"),
        (
            Broken::LeaderCountsItselfUnsynced,
            "leader-counts-itself-unsynced",
        ),
        (
            Broken::SnapshotCopiesPastItsPoint,
            "snapshot-copies-past-its-point",
        ),
    ];

    pub fn parse(text: &str) -> Result<Self, Error> {
        Self::ALL
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(b, _)| *b)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|(_, n)| *n).collect();
                Error::Config(format!(
                    "unknown broken variant {text:?}: {}",
                    names.join(", ")
                ))
            })
    }

    /// The bug in woof's own code this switches on, if it is one.
    pub fn in_woof(self) -> Option<woof_consensus::bugs::Bug> {
        use woof_consensus::bugs::Bug;
        match self {
            Broken::IgnoreProducerWindow => Some(Bug::IgnoreProducerWindow),
            Broken::StaleRead => Some(Bug::StaleRead),
            Broken::SubscriberRedelivers => Some(Bug::SubscriberRedelivers),
            Broken::RestartedGroupUnreachable => Some(Bug::RestartedGroupUnreachable),
            Broken::CreateSkipsClaim => Some(Bug::CreateSkipsClaim),
            Broken::ForwardedRetryWithoutIdentity => Some(Bug::ForwardedRetryWithoutIdentity),
            Broken::RepairSkipsCatchUp => Some(Bug::RepairSkipsCatchUp),
            Broken::HandlerProgressFirst => Some(Bug::HandlerProgressFirst),
            Broken::LeaderCountsItselfUnsynced => Some(Bug::LeaderCountsItselfUnsynced),
            Broken::SnapshotCopiesPastItsPoint => Some(Bug::SnapshotCopiesPastItsPoint),
            Broken::AckBeforeCommit | Broken::RetryWithNewSeq | Broken::DivergentReplica => None,
        }
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: u64,
    pub topics: usize,
    pub replication: usize,
    pub clients: usize,
    /// How long clients work and faults happen, in simulated ms (a heal
    /// phase without faults follows).
    pub sim_time_ms: u64,
    pub faults: Rates,
    /// Print every event as it happens.
    pub trace: bool,
    /// A deliberate bug to switch on (checker tests).
    pub broken: Option<Broken>,
    /// How long a replica's node may be silent before repair replaces it
    /// (each node runs `ClusterTopics::maintain` with it).
    pub repair_after_ms: u64,
    /// Extra topics an admin creates, deletes and re-creates during the
    /// faults (0: none).
    pub extra_topics: usize,
    /// Create new names from two or three nodes at the same instant, and
    /// check that one create of each succeeds (names are claimed in the
    /// directory group first).
    pub concurrent_creates: bool,
    /// Groups snapshot after this many entries (and keep a fifth of it
    /// after a purge) instead of a node's 10,000 and 1,000, so that runs
    /// of seconds snapshot, purge and install snapshots.
    pub snapshot_every: Option<u64>,
    /// Groups snapshot after this many payload bytes applied (and keep a
    /// fifth of it after a purge) instead of a node's 1 GiB and 64 MiB:
    /// the byte bound of ADR 32, which no run of seconds reaches otherwise.
    pub snapshot_bytes: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 5,
            topics: 20,
            replication: 3,
            clients: 8,
            sim_time_ms: 30_000,
            faults: Rates::all(),
            trace: false,
            broken: None,
            repair_after_ms: 4_000,
            extra_topics: 3,
            concurrent_creates: true,
            snapshot_every: None,
            snapshot_bytes: None,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        if self.snapshot_every.is_some_and(|n| n < 10) {
            return Err(Error::Config("--snapshot-every must be at least 10".into()));
        }
        if self.snapshot_bytes.is_some_and(|n| n < 100) {
            return Err(Error::Config(
                "--snapshot-bytes must be at least 100".into(),
            ));
        }
        if self.nodes == 0 || self.nodes > 64 {
            return Err(Error::Config("--nodes must be 1 to 64".into()));
        }
        let factors = woof_node::placement::REPLICATION_FACTORS;
        if !factors.contains(&self.replication) || self.replication as u64 > self.nodes {
            return Err(Error::Config(format!(
                "--replication must be one of {factors:?} and at most --nodes ({})",
                self.nodes
            )));
        }
        if self.topics == 0 || self.topics > 1000 {
            return Err(Error::Config("--topics must be 1 to 1000".into()));
        }
        if self.clients > 1000 {
            return Err(Error::Config("--clients must be at most 1000".into()));
        }
        if !(1_000..=600_000).contains(&self.repair_after_ms) {
            return Err(Error::Config("--repair-after must be 1s to 10m".into()));
        }
        if self.extra_topics > 100 {
            return Err(Error::Config("--extra-topics must be at most 100".into()));
        }
        Ok(())
    }
}

/// Parses `A..B` (B excluded) or a single seed.
pub fn parse_seeds(text: &str) -> Result<std::ops::Range<u64>, Error> {
    let bad = || Error::Config(format!("seeds {text:?}: expected A..B"));
    match text.split_once("..") {
        Some((a, b)) => {
            let a: u64 = a.trim().parse().map_err(|_| bad())?;
            let b: u64 = b.trim().parse().map_err(|_| bad())?;
            if b <= a {
                return Err(bad());
            }
            Ok(a..b)
        }
        None => {
            let a: u64 = text.trim().parse().map_err(|_| bad())?;
            Ok(a..a + 1)
        }
    }
}

/// Parses a simulated duration: `30s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let bad = || Error::Config(format!("duration {text:?}: expected 30s, 500ms or 2m"));
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1000)
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(scale).filter(|ms| *ms > 0).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(Rates::parse("all").unwrap(), Rates::all());
        assert_eq!(Rates::parse("none").unwrap().enabled().count(), 0);
        let r = Rates::parse("drop=0.05, crash=0.5").unwrap();
        assert_eq!(r.get(Fault::Drop), 0.05);
        assert_eq!(r.get(Fault::Crash), 0.5);
        assert_eq!(r.get(Fault::Dup), 0.0);
        let mut with_leaves = Rates::all();
        with_leaves.set(Fault::Leave, 0.2);
        assert_eq!(Rates::parse("all,leave=0.2").unwrap(), with_leaves);
        assert_eq!(Rates::all().get(Fault::Leave), 0.0);
        assert!(Rates::parse("flood=1").is_err());
        assert!(Rates::parse("drop").is_err());
        assert!(Rates::parse("drop=-1").is_err());
    }

    #[test]
    fn seeds_and_durations_parse() {
        assert_eq!(parse_seeds("3..7").unwrap(), 3..7);
        assert_eq!(parse_seeds("9").unwrap(), 9..10);
        assert!(parse_seeds("7..3").is_err());
        assert_eq!(parse_duration_ms("30s").unwrap(), 30_000);
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("2m").unwrap(), 120_000);
        assert_eq!(parse_duration_ms("5").unwrap(), 5_000);
        assert!(parse_duration_ms("0s").is_err());
    }
}
