//! Deliberate bugs, for the simulator to show that its checkers catch them
//! (issue 4, "proof that the checkers bite"). Compiled in only with the
//! `sim-bugs` feature, which only `woof-sim` turns on; even then a bug is
//! off until [`set`] switches it on for the calling thread (the simulator
//! runs each seed on one thread). Without the feature [`on`] is always
//! false and the branches that test it are compiled away.

/// A bug in woof's own code that can be switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The topic state machine forgets producer windows: a retried append
    /// is appended again (`topic::machine`).
    IgnoreProducerWindow,
    /// A replica answers a read of the latest range without confirming
    /// that it leads the group (`raft::group::confirm_leader`).
    StaleRead,
    /// A subscription that waited for new elements delivers its last one
    /// again (`local::Subscription::next_batch`).
    SubscriberRedelivers,
    /// A group restarted from what its disk holds is not registered with
    /// the node's router, and the node's waker does not hand it out either:
    /// no other replica can reach it (`raft::group::start`, the waker in
    /// `woof_node::groups`).
    RestartedGroupUnreachable,
    /// A node that forwards an append without a producer id retries it
    /// without the identity it gave it (`woof_node::groups::client`): a
    /// retry of an append already committed is appended again.
    ForwardedRetryWithoutIdentity,
    /// A topic create skips claiming its name in the directory
    /// (`woof_node::api`): nodes creating one name at once all succeed.
    CreateSkipsClaim,
    /// A repair makes the new replica a voter (and drops the lost one) in
    /// the same step it adds it, without waiting for it to catch up
    /// (`woof_node::groups::membership`): the group counts a voter that
    /// holds nothing yet.
    RepairSkipsCatchUp,
    /// A handler's runner records its progress over a batch of elements
    /// before their outputs are committed (`woof_node::handlers::runner`):
    /// a runner that stops in between, and the one after it, skip them.
    HandlerProgressFirst,
    /// A group's leader writes the entries it proposes without syncing them
    /// and reports them flushed at once (`raft::log_store`): it counts
    /// itself in the majority before its own write is durable, so an entry
    /// acknowledged with one follower can vanish when the leader loses
    /// power and the other follower wins the next election.
    LeaderCountsItselfUnsynced,
    /// A group purges its log without first making durable what its state
    /// machine applied from it (`raft::log_store`): a crash then loses
    /// applied elements that no log entry is left to apply again.
    PurgeBeforePersist,
    /// A snapshot's copy, made when it is sent (ADR 36), takes the topic as
    /// the store holds it then, past the snapshot's log position
    /// (`raft::state_machine`): the follower that installs it appends the
    /// later entries' elements a second time.
    SnapshotCopiesPastItsPoint,
}

#[cfg(feature = "sim-bugs")]
thread_local! {
    static ON: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Switches `bug` on (or every bug off) for the calling thread.
#[cfg(feature = "sim-bugs")]
pub fn set(bug: Option<Bug>) {
    ON.with(|b| b.set(bug));
}

/// Whether `bug` is on for the calling thread (for the node crate's
/// deliberate bugs too).
#[inline]
pub fn on(bug: Bug) -> bool {
    #[cfg(feature = "sim-bugs")]
    {
        ON.with(|b| b.get() == Some(bug))
    }
    #[cfg(not(feature = "sim-bugs"))]
    {
        let _ = bug;
        false
    }
}
