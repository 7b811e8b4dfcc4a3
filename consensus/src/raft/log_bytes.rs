//! How much Raft log a group holds, in bytes.
//!
//! openraft's own policy counts entries: a snapshot every `snapshot_every`
//! entries, `log_kept` entries kept behind it (see [`super::group::Timing`]).
//! Entries range from a few bytes to a batch of several MiB, so a count
//! alone bounds nothing: at 10,000 entries of 8 MiB a replica would hold
//! 80 GB of log before its first purge, and 8 GB after it. [`LogBytes`]
//! counts the bytes this replica applies and asks for the two things that
//! bound them, on top of openraft's count:
//!
//! - A snapshot, once the bytes applied since the last one reach the larger
//!   of a floor (`Timing::snapshot_log_bytes`) and the last snapshot's size.
//!   A snapshot copies the whole topic, so a bound that grows with the topic
//!   keeps the copying in proportion to what is appended (each byte is
//!   copied a bounded number of times), while the log held stays under
//!   about the floor or the topic's own size, whichever is more.
//! - A purge, when a snapshot is built, of all but about
//!   `Timing::log_kept_bytes` of the log behind it (what a lagging follower
//!   may still catch up from without a snapshot), where that purges more
//!   than openraft's `log_kept` entries would.
//!
//! The asks go to the group's upkeep task ([`super::group`]), which holds
//! the group's `Raft` handle and passes them on; a lost or ignored ask is
//! made again once as many bytes more are applied, or when a snapshot being
//! built is kept (openraft ignores the asks made while it builds one). The
//! purge a snapshot allows is asked for when it is kept.

use std::collections::VecDeque;

/// What a group's state machine asks of its Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Build a snapshot now.
    Snapshot,
    /// Purge the log up to and including this index, once a snapshot
    /// holds it.
    PurgeUpTo(u64),
}

/// Marks kept at most: one per applied entry, the oldest dropped first.
/// A purge point is looked for among them, so they need to reach back
/// `log_kept_bytes`; with fewer, larger entries than this they do, and
/// with smaller ones openraft's count of entries purges more anyway.
const MARKS_MAX: usize = 4096;

/// Whether a group should ask for a snapshot now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    No,
    Yes,
    /// Perhaps: the last snapshot's size is needed to tell (see
    /// [`LogBytes::snapshot_size`]).
    NeedSize,
}

/// The bytes one group applied, and where its log may be cut.
#[derive(Debug)]
pub struct LogBytes {
    floor: u64,
    kept: u64,
    /// Payload bytes applied since this process opened the group.
    applied: u64,
    /// `applied` when the last snapshot was built or installed.
    at_snapshot: u64,
    /// The last snapshot's size (`None` until known: it is read from the
    /// kept file the first time it matters).
    snapshot_bytes: Option<u64>,
    /// `applied` when a snapshot was last asked for, until one comes.
    asked_at: Option<u64>,
    /// (log index, `applied` after it) of recent entries, in index order.
    marks: VecDeque<(u64, u64)>,
}

impl LogBytes {
    /// Snapshots after at least `floor` bytes; `kept` bytes of log kept
    /// behind a snapshot.
    pub fn new(floor: u64, kept: u64) -> Self {
        Self {
            floor: floor.max(1),
            kept,
            applied: 0,
            at_snapshot: 0,
            snapshot_bytes: None,
            asked_at: None,
            marks: VecDeque::new(),
        }
    }

    /// Entry `index`, of about `bytes` bytes, was applied.
    pub fn applied(&mut self, index: u64, bytes: u64) {
        self.applied += bytes;
        if self.marks.len() == MARKS_MAX {
            self.marks.pop_front();
        }
        self.marks.push_back((index, self.applied));
    }

    /// The bytes since the last snapshot after which the next is due.
    fn threshold(&self, snapshot_bytes: u64) -> u64 {
        self.floor.max(snapshot_bytes)
    }

    /// Whether a snapshot should be asked for now.
    pub fn due(&self) -> Due {
        let since = self.applied - self.at_snapshot;
        if since < self.floor {
            return Due::No;
        }
        let Some(size) = self.snapshot_bytes else {
            return Due::NeedSize;
        };
        let threshold = self.threshold(size);
        let asked_again = self
            .asked_at
            .is_none_or(|at| self.applied - at >= threshold);
        if since >= threshold && asked_again {
            Due::Yes
        } else {
            Due::No
        }
    }

    /// The last snapshot's size, read from its file (0: there is none).
    pub fn snapshot_size(&mut self, bytes: u64) {
        self.snapshot_bytes = Some(bytes);
    }

    /// A snapshot was asked for.
    pub fn asked(&mut self) {
        self.asked_at = Some(self.applied);
    }

    /// A snapshot of `bytes` bytes was built of the state after entry
    /// `index` (applies went on while it was built): where the log may now
    /// be purged to, if anywhere (the newest entry up to `index` with at
    /// least `kept` bytes applied after it).
    pub fn built(&mut self, index: u64, bytes: u64) -> Option<u64> {
        // What was applied up to the snapshot (the oldest mark's if the
        // marks no longer reach back to it).
        let at = self
            .marks
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .or(self.marks.front())
            .map_or(self.applied, |(_, after)| *after);
        self.restart(at, bytes);
        let upto = self
            .marks
            .iter()
            .rev()
            .find(|(i, after)| *i <= index && self.applied - after >= self.kept)
            .map(|(index, _)| *index)?;
        while self.marks.front().is_some_and(|(i, _)| *i <= upto) {
            self.marks.pop_front();
        }
        Some(upto)
    }

    /// A snapshot of `bytes` bytes was installed: the log before it is
    /// openraft's to drop, and counting starts again.
    pub fn installed(&mut self, bytes: u64) {
        self.restart(self.applied, bytes);
        self.marks.clear();
    }

    fn restart(&mut self, at: u64, bytes: u64) {
        self.at_snapshot = at;
        self.snapshot_bytes = Some(bytes);
        self.asked_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_the_floor_or_the_last_snapshots_size() {
        let mut log = LogBytes::new(100, 30);
        for i in 1..=9 {
            log.applied(i, 10);
        }
        assert_eq!(log.due(), Due::No);
        log.applied(10, 10);
        assert_eq!(log.due(), Due::NeedSize, "the size is not known yet");
        log.snapshot_size(0);
        assert_eq!(log.due(), Due::Yes);
        log.asked();
        assert_eq!(log.due(), Due::No, "asked once");
        for i in 11..=20 {
            log.applied(i, 10);
        }
        assert_eq!(log.due(), Due::Yes, "asked again, as many bytes on");

        // Built at 20 (200 bytes): the newest entry with 30 bytes after it
        // is 17, and the next is due after the snapshot's own size.
        assert_eq!(log.built(20, 250), Some(17));
        for i in 21..=44 {
            log.applied(i, 10);
        }
        assert_eq!(log.due(), Due::No, "240 bytes since, under 250");
        log.applied(45, 10);
        assert_eq!(log.due(), Due::Yes);
    }

    #[test]
    fn a_purge_keeps_the_bytes_behind_the_snapshot_and_never_goes_back() {
        let mut log = LogBytes::new(1, 100);
        log.applied(1, 40);
        log.applied(2, 40);
        assert_eq!(log.built(2, 80), None, "only 80 bytes: all kept");
        log.applied(3, 40);
        log.applied(4, 40);
        log.applied(5, 40);
        // After 1: 160 bytes; after 2: 120; after 3: 80.
        assert_eq!(log.built(5, 200), Some(2));
        assert_eq!(
            log.built(5, 200),
            None,
            "nothing applied since: nothing more"
        );
        log.applied(6, 1000);
        assert_eq!(log.built(6, 1200), Some(5));
        log.installed(5000);
        assert_eq!(log.built(6, 5000), None, "an install drops the marks");
    }

    #[test]
    fn a_snapshot_built_while_applies_went_on_counts_from_its_own_entry() {
        let mut log = LogBytes::new(100, 30);
        for i in 1..=10 {
            log.applied(i, 10);
        }
        // Built at 6 (60 bytes), reported after 10 (100 bytes): the purge
        // stays at or below 6, and 40 bytes count since the snapshot.
        assert_eq!(log.built(6, 60), Some(6), "70 bytes after 6, 60 after 7");
        assert_eq!(log.due(), Due::No);
        for i in 11..=15 {
            log.applied(i, 10);
        }
        assert_eq!(log.due(), Due::No, "90 bytes since 6");
        log.applied(16, 10);
        assert_eq!(log.due(), Due::Yes, "100 bytes since 6");
        // Built at 9, reported after 12, 10 bytes kept: 11 has 10 bytes
        // after it, but a purge never passes the snapshot.
        let mut log = LogBytes::new(1, 10);
        for i in 1..=12 {
            log.applied(i, 10);
        }
        assert_eq!(log.built(9, 90), Some(9));
    }

    #[test]
    fn marks_are_bounded() {
        let mut log = LogBytes::new(1, 0);
        for i in 1..=(MARKS_MAX as u64 * 3) {
            log.applied(i, 1);
        }
        assert_eq!(log.marks.len(), MARKS_MAX);
        assert_eq!(
            log.built(MARKS_MAX as u64 * 3, 0),
            Some(MARKS_MAX as u64 * 3)
        );
    }
}
