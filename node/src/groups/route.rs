//! Finding a group's leader, decided apart from doing it: [`LeaderSearch`]
//! takes what each attempt gave and says whom to ask next, after what
//! pause, or when to stop. The client side ([`super::client`]) sends the
//! requests, waits, and reads the clock; this file does none of that, so
//! every branch is tested below.
//!
//! The policy: first the leader this node's own replica knows, else the one
//! that answered last time, else the first member. A "not the leader" answer
//! with a hint goes straight to the hinted peer (pausing a little once hints
//! have chased each other a few times, as they may while a term changes,
//! and as long as after a failure once two peers name each other back and
//! forth, as a leader handing its group over and its successor do until
//! the successor wins its election).
//! Any other failure tries the leader this node's replica knows now if that
//! is news (at once the first time it names that leader, as after a leader
//! handed its group over and went: the forward failed, the replica already
//! follows the next one), else pauses and tries the next member in turn
//! (the client ends the pause early if the replica learns a leader). A
//! member the overlay suspects counts as failed without being asked. When
//! every member has said it does not hold the group, the group is gone.
//! All of it is bounded by [`ATTEMPTS`].

use std::collections::BTreeSet;
use std::time::Duration;

use woof_overlay::PeerId;

/// How many times a request follows a leader hint or tries another member
/// (about four seconds of elections).
pub(super) const ATTEMPTS: usize = 40;
/// The pause before trying another member after a failure.
pub(super) const BACKOFF: Duration = Duration::from_millis(100);
/// The pause before following a hint once hints have chased each other.
const HINT_BACKOFF: Duration = Duration::from_millis(25);
/// Hints followed at once before [`HINT_BACKOFF`] applies.
const HINTS_WITHOUT_PAUSE: usize = 3;

/// What one attempt at the current target gave, short of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It does not lead; the leader it knows, if any.
    NotLeader(Option<PeerId>),
    /// It does not hold the group.
    NoGroup,
    /// It failed, did not answer, or the overlay suspects it.
    Failed(String),
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Ask `peer`, after `pause`.
    Ask { peer: PeerId, pause: Duration },
    /// No member holds the group: deleted, or never created.
    Gone,
    /// Out of attempts; why the last one failed.
    GiveUp(String),
}

/// One search for a group's leader.
#[derive(Debug)]
pub(super) struct LeaderSearch {
    members: Vec<PeerId>,
    target: PeerId,
    next_member: usize,
    without_group: BTreeSet<PeerId>,
    attempt: usize,
    /// The last leader this node's replica named that the search asked.
    local_asked: Option<PeerId>,
    /// The target before the current one.
    before: Option<PeerId>,
}

impl LeaderSearch {
    /// A search among `members` (not empty), starting at the leader this
    /// node's replica knows, else the `cached` one if it is still a member.
    pub fn new(
        members: &[PeerId],
        local_leader: Option<PeerId>,
        cached: Option<PeerId>,
    ) -> Option<Self> {
        let first = *members.first()?;
        let target = local_leader
            .or(cached.filter(|p| members.contains(p)))
            .unwrap_or(first);
        Some(Self {
            members: members.to_vec(),
            target,
            next_member: 0,
            without_group: BTreeSet::new(),
            attempt: 0,
            local_asked: local_leader,
            before: None,
        })
    }

    /// Whom to ask now.
    pub fn target(&self) -> PeerId {
        self.target
    }

    /// The leader this node's replica names now, learnt during a pause:
    /// asked next instead of the member the search had chosen.
    pub fn follow_local(&mut self, leader: PeerId) {
        self.target = leader;
        self.local_asked = Some(leader);
    }

    /// After `outcome` at the current target, with `local_leader` the leader
    /// this node's replica knows now: what to do.
    pub fn next(&mut self, outcome: Outcome, local_leader: Option<PeerId>) -> Next {
        self.attempt += 1;
        let failed_at = self.target;
        let before = self.before.replace(failed_at);
        let why = match outcome {
            Outcome::NotLeader(Some(hint)) if hint != failed_at => {
                if self.attempt >= ATTEMPTS {
                    return Next::GiveUp(format!("{failed_at}: not the leader"));
                }
                self.target = hint;
                let pause = if self.attempt <= HINTS_WITHOUT_PAUSE {
                    Duration::ZERO
                } else if before == Some(hint) {
                    // Sent back where it came from: no leader yet.
                    BACKOFF
                } else {
                    HINT_BACKOFF
                };
                return Next::Ask { peer: hint, pause };
            }
            Outcome::NotLeader(_) => format!("{failed_at}: not the leader, no leader known"),
            Outcome::NoGroup => {
                self.without_group.insert(failed_at);
                if self.members.iter().all(|m| self.without_group.contains(m)) {
                    return Next::Gone;
                }
                format!("{failed_at}: does not hold the group")
            }
            Outcome::Failed(e) => format!("{failed_at}: {e}"),
        };
        if self.attempt >= ATTEMPTS {
            return Next::GiveUp(why);
        }
        let mut pause = BACKOFF;
        self.target = match local_leader.filter(|l| *l != failed_at) {
            Some(leader) => {
                if self.local_asked != Some(leader) && self.attempt <= HINTS_WITHOUT_PAUSE {
                    pause = Duration::ZERO;
                }
                self.local_asked = Some(leader);
                leader
            }
            None => {
                // The next member in turn, not the one that just failed
                // (unless it is the only one).
                self.next_member = (self.next_member + 1) % self.members.len();
                if self.members[self.next_member] == failed_at && self.members.len() > 1 {
                    self.next_member = (self.next_member + 1) % self.members.len();
                }
                self.members[self.next_member]
            }
        };
        Next::Ask {
            peer: self.target,
            pause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn starts_at_the_local_leader_then_the_cached_one_then_the_first_member() {
        let m = peers(3);
        let outsider = PeerId::random();
        assert!(LeaderSearch::new(&[], None, None).is_none());
        assert_eq!(
            LeaderSearch::new(&m, Some(m[2]), Some(m[1]))
                .unwrap()
                .target(),
            m[2]
        );
        assert_eq!(
            LeaderSearch::new(&m, None, Some(m[1])).unwrap().target(),
            m[1]
        );
        assert_eq!(
            LeaderSearch::new(&m, None, Some(outsider))
                .unwrap()
                .target(),
            m[0],
            "a cached leader that is no longer a member is not asked"
        );
        assert_eq!(LeaderSearch::new(&m, None, None).unwrap().target(), m[0]);
    }

    #[test]
    fn a_hint_is_followed_at_once_and_later_with_a_pause() {
        let m = peers(3);
        let mut s = LeaderSearch::new(&m, None, None).unwrap();
        for i in 0..HINTS_WITHOUT_PAUSE {
            let hint = m[(i + 1) % 3];
            assert_eq!(
                s.next(Outcome::NotLeader(Some(hint)), None),
                Next::Ask {
                    peer: hint,
                    pause: Duration::ZERO
                }
            );
        }
        let hint = s.target();
        let other = m.iter().copied().find(|p| *p != hint).unwrap();
        assert_eq!(
            s.next(Outcome::NotLeader(Some(other)), None),
            Next::Ask {
                peer: other,
                pause: HINT_BACKOFF
            }
        );
    }

    #[test]
    fn hints_sent_back_and_forth_wait_as_long_as_failures() {
        // A leader handing its group over names its successor, which names
        // the leader it still follows, until it wins its election.
        let m = peers(3);
        let mut s = LeaderSearch::new(&m, Some(m[0]), None).unwrap();
        let mut waited = Duration::ZERO;
        let mut asked = 0;
        loop {
            let hint = if s.target() == m[0] { m[1] } else { m[0] };
            match s.next(Outcome::NotLeader(Some(hint)), None) {
                Next::Ask { peer, pause } => {
                    assert_eq!(peer, hint);
                    asked += 1;
                    if asked > HINTS_WITHOUT_PAUSE {
                        assert_eq!(pause, BACKOFF, "attempt {asked}");
                    }
                    waited += pause;
                }
                Next::GiveUp(_) => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(waited >= BACKOFF * 35, "gave up after {waited:?}");
    }

    #[test]
    fn a_hint_naming_the_target_itself_counts_as_no_hint() {
        let m = peers(3);
        let mut s = LeaderSearch::new(&m, None, None).unwrap();
        assert_eq!(
            s.next(Outcome::NotLeader(Some(m[0])), None),
            Next::Ask {
                peer: m[1],
                pause: BACKOFF
            }
        );
    }

    #[test]
    fn after_a_failure_the_local_leader_if_news_else_the_next_member_in_turn() {
        let m = peers(3);
        let mut s = LeaderSearch::new(&m, None, None).unwrap();
        let fail = || Outcome::Failed("timed out".into());
        assert_eq!(
            s.next(fail(), Some(m[2])),
            Next::Ask {
                peer: m[2],
                pause: Duration::ZERO
            },
            "a leader the replica names for the first time is asked at once"
        );
        // The local replica still names the peer that just failed: not news.
        assert_eq!(
            s.next(fail(), Some(m[2])),
            Next::Ask {
                peer: m[1],
                pause: BACKOFF
            }
        );
        assert_eq!(
            s.next(Outcome::NotLeader(None), None).clone(),
            Next::Ask {
                peer: m[2],
                pause: BACKOFF
            }
        );
        assert_eq!(
            s.next(fail(), None),
            Next::Ask {
                peer: m[0],
                pause: BACKOFF
            },
            "members are tried round and round"
        );
    }

    #[test]
    fn a_local_leader_already_asked_is_asked_again_only_after_a_pause() {
        let m = peers(3);
        let fail = || Outcome::Failed("stopping".into());
        // The replica named m[0] at the start; m[0] went, the replica now
        // follows m[1]: asked at once.
        let mut s = LeaderSearch::new(&m, Some(m[0]), None).unwrap();
        assert_eq!(
            s.next(fail(), Some(m[1])),
            Next::Ask {
                peer: m[1],
                pause: Duration::ZERO
            }
        );
        // m[1] failed too; the replica still names it: the next member.
        assert_eq!(
            s.next(fail(), Some(m[1])),
            Next::Ask {
                peer: m[2],
                pause: BACKOFF
            }
        );
        // m[2] failed, the replica names m[1] again: not news, a pause.
        assert_eq!(
            s.next(fail(), Some(m[1])),
            Next::Ask {
                peer: m[1],
                pause: BACKOFF
            }
        );
        // Once hints and failures have gone on a while, news waits too.
        let mut s = LeaderSearch::new(&m, None, None).unwrap();
        for _ in 0..HINTS_WITHOUT_PAUSE {
            s.next(fail(), None);
        }
        let named = m.iter().copied().find(|p| *p != s.target()).unwrap();
        assert_eq!(
            s.next(fail(), Some(named)),
            Next::Ask {
                peer: named,
                pause: BACKOFF
            }
        );
    }

    #[test]
    fn the_group_is_gone_once_every_member_said_it_does_not_hold_it() {
        let m = peers(3);
        let mut s = LeaderSearch::new(&m, None, None).unwrap();
        assert!(matches!(s.next(Outcome::NoGroup, None), Next::Ask { .. }));
        assert!(matches!(s.next(Outcome::NoGroup, None), Next::Ask { .. }));
        assert_eq!(s.next(Outcome::NoGroup, None), Next::Gone);

        // One member that failed instead keeps the search going.
        let mut s = LeaderSearch::new(&m, None, None).unwrap();
        s.next(Outcome::NoGroup, None);
        s.next(Outcome::Failed("down".into()), None);
        assert!(matches!(s.next(Outcome::NoGroup, None), Next::Ask { .. }));
    }

    #[test]
    fn the_search_is_bounded_even_when_hints_chase_each_other() {
        let m = peers(2);
        let mut s = LeaderSearch::new(&m, None, None).unwrap();
        let mut asked = 0;
        let last = loop {
            let hint = if s.target() == m[0] { m[1] } else { m[0] };
            match s.next(Outcome::NotLeader(Some(hint)), None) {
                Next::Ask { .. } => asked += 1,
                other => break other,
            }
        };
        assert_eq!(asked, ATTEMPTS - 1);
        assert!(matches!(last, Next::GiveUp(why) if why.contains("not the leader")));

        let mut s = LeaderSearch::new(&m, None, None).unwrap();
        let last = loop {
            match s.next(Outcome::Failed("refused".into()), None) {
                Next::Ask { .. } => {}
                other => break other,
            }
        };
        assert!(matches!(last, Next::GiveUp(why) if why.contains("refused")));
    }
}
