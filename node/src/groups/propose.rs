//! Group commit on a topic's leader: appends that arrive while one is being
//! committed wait, then go together as one log entry ([`Command::Batch`]),
//! so many clients share one round of replication and fsyncs (as the
//! standalone writer in `woof_consensus::local` does).
//!
//! One client alone waits for nobody and passes through no other task: an
//! append that finds the group's proposer idle commits itself. Appends that
//! arrive meanwhile queue; when it is done, a task commits what queued, in
//! batches, until the queue is empty (flat combining).
//!
//! A few clients at once would otherwise split into two halves that take
//! turns (each half's clients send their next append while the other
//! half's round runs): two rounds per append, each round half full. So once
//! a round has committed several appends, the next waits a little
//! ([`linger`]) for as many more to queue as it committed, their clients
//! having just been answered: one round per append, twice as full.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::store::GroupId;

use super::Groups;
use super::control::ControlReply;
use woof_consensus::batch::{self, Limits};

/// Appends waiting for one group, and their payload bytes; past either, an
/// append is refused with RESOURCE_EXHAUSTED (the client retries later)
/// rather than queued behind seconds of work. An append larger than the
/// bytes bound is taken when nothing waits.
const QUEUE_DEPTH: usize = 4096;
const QUEUE_BYTES_MAX: usize = 16 << 20;
/// The most appends, and payload bytes, in one entry (a larger append
/// still goes, alone).
const BATCH: Limits = Limits {
    items_max: 1024,
    bytes_max: 8 << 20,
};

pub(super) struct Proposal {
    command: Command,
    reply: oneshot::Sender<ControlReply>,
}

/// One group's proposer: whether a commit is under way, and what waits.
#[derive(Default)]
pub(super) struct Proposer {
    busy: bool,
    queue: VecDeque<Proposal>,
    /// The payload bytes in `queue`.
    queued_bytes: usize,
    /// Told when an append queues (a lingering commit waits for it).
    queued: Arc<Notify>,
}

/// The longest a commit waits for appends to gather (see [`linger`]).
const LINGER_MAX: Duration = Duration::from_millis(2);
/// A round with this many payload bytes or more is bound by its bytes, not
/// by what every round costs: the next one does not wait for company.
const LINGER_BYTES_MAX: usize = 64 << 10;

pub(super) type Shared = Arc<Mutex<Proposer>>;

impl Proposer {
    /// Queues `proposal` and tells a lingering commit.
    fn push(&mut self, proposal: Proposal) {
        self.queued_bytes += bytes(&proposal.command);
        self.queue.push_back(proposal);
        self.queued.notify_one();
    }
}

fn bytes(command: &Command) -> usize {
    match command {
        Command::Append { payloads, .. } => payloads.iter().map(|p| p.len() + 16).sum(),
        Command::Batch(commands) => commands.iter().map(bytes).sum(),
        _ => 64,
    }
}

/// How many commands of the log entry a proposal takes (a proposal may be
/// a batch of its own: a handler's keyed outputs).
fn width(command: &Command) -> usize {
    match command {
        Command::Batch(commands) => commands.len(),
        _ => 1,
    }
}

fn lock(proposer: &Shared) -> std::sync::MutexGuard<'_, Proposer> {
    proposer.lock().unwrap_or_else(|e| e.into_inner())
}

impl Groups {
    /// Commits an append through this node's replica of `group` (which
    /// must lead), together with the appends queued meanwhile.
    pub(super) async fn propose(&self, group: GroupId, command: Command) -> ControlReply {
        let Some(proposer) = self.proposer(group) else {
            // Put to sleep (or removed) since it was woken for this append.
            return ControlReply::NotLeader(None);
        };
        let mine = {
            let mut p = lock(&proposer);
            if !p.busy {
                p.busy = true;
                Ok(command)
            } else if let Some(full) = full(&p, bytes(&command)) {
                return ControlReply::Refused(woof_consensus::Error::LimitReached(full));
            } else {
                let (reply, answer) = oneshot::channel();
                p.push(Proposal { command, reply });
                Err(answer)
            }
        };
        let command = match mine {
            Ok(command) => command,
            Err(answer) => {
                return answer
                    .await
                    .unwrap_or_else(|_| ControlReply::Failed("the proposer stopped".into()));
            }
        };
        let _leading = Leading {
            groups: self.clone(),
            group,
            proposer,
        };
        let (reply, answer) = oneshot::channel();
        commit(self, group, vec![Proposal { command, reply }]).await;
        answer
            .await
            .unwrap_or_else(|_| ControlReply::Failed("the proposer stopped".into()))
    }

    /// The proposer of `group`, if it runs here.
    fn proposer(&self, group: GroupId) -> Option<Shared> {
        self.slots.running(group).map(|m| m.proposer)
    }
}

/// Held by the append that commits itself: when it is done, or dropped
/// half-way (its client went away), what queued meanwhile is handed to a
/// task, so that nothing waits on an append that no longer runs.
struct Leading {
    groups: Groups,
    group: GroupId,
    proposer: Shared,
}

impl Drop for Leading {
    fn drop(&mut self) {
        let Some(batch) = next_batch(&self.proposer) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => {
                self.groups.tasks.spawn(
                    "group-commit",
                    drain(
                        self.groups.clone(),
                        self.group,
                        self.proposer.clone(),
                        batch,
                    ),
                );
            }
            // The node is shutting down: the waiting appends are answered
            // by their replies being dropped.
            Err(_) => drop(batch),
        }
    }
}

/// Why an append of `size` bytes cannot wait for `p`'s group now, if it
/// cannot: the queue is full in count or bytes (a client backs off and
/// retries; the message says roughly when).
fn full(p: &Proposer, size: usize) -> Option<String> {
    let over_bytes = !p.queue.is_empty() && p.queued_bytes + size > QUEUE_BYTES_MAX;
    if p.queue.len() < QUEUE_DEPTH && !over_bytes {
        return None;
    }
    Some(format!(
        "this topic's leader has {} appends ({} MiB) waiting to be committed, at most \
         {QUEUE_DEPTH} ({} MiB): retry in about {RETRY_HINT_MS} ms",
        p.queue.len(),
        p.queued_bytes >> 20,
        QUEUE_BYTES_MAX >> 20,
    ))
}

/// The pause a refused client is told to take before it retries: about one
/// commit of a full batch on a busy disk.
const RETRY_HINT_MS: u64 = 50;

/// Takes the next batch from the queue, or marks the proposer idle if
/// nothing waits.
fn next_batch(proposer: &Shared) -> Option<Vec<Proposal>> {
    let mut p = lock(proposer);
    if p.queue.is_empty() {
        p.busy = false;
        return None;
    }
    let first = p.queue.pop_front()?;
    let (batch, carry) = batch::fill(first, || p.queue.pop_front(), BATCH, |p| bytes(&p.command));
    if let Some(carry) = carry {
        p.queue.push_front(carry);
    }
    let taken: usize = batch.iter().map(|p| bytes(&p.command)).sum();
    p.queued_bytes = p.queued_bytes.saturating_sub(taken);
    Some(batch)
}

/// Commits what queued, batch after batch, until nothing waits.
async fn drain(groups: Groups, group: GroupId, proposer: Shared, first: Vec<Proposal>) {
    let mut batch = first;
    loop {
        let took = batch.len();
        let (took_bytes, started) = (
            batch.iter().map(|p| bytes(&p.command)).sum(),
            Instant::now(),
        );
        commit(&groups, group, batch).await;
        let wait = (started.elapsed() / 4).min(LINGER_MAX);
        linger(&proposer, took, took_bytes, wait).await;
        match next_batch(&proposer) {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// After a round that committed `took` appends of `took_bytes`: if it took
/// several, and few bytes (a round of many bytes costs them, and sharing
/// it saves little: 1 KiB batches lost 5-14 % waiting), waits
/// until as many more have queued (their clients were just answered and
/// send their next), the next round's bytes are full, or `wait` is over (a
/// quarter of the round just made, at most [`LINGER_MAX`]), so that they
/// share the next round rather than split into two. One client alone never
/// waits: it has nobody to share with.
async fn linger(proposer: &Shared, took: usize, took_bytes: usize, wait: Duration) {
    if took < 2 || took_bytes >= LINGER_BYTES_MAX {
        return;
    }
    let until = Instant::now() + wait;
    let target = (lock(proposer).queue.len() + took).min(BATCH.items_max);
    loop {
        let queued = {
            let p = lock(proposer);
            if p.queue.len() >= target || p.queued_bytes >= BATCH.bytes_max {
                return;
            }
            p.queued.clone()
        };
        if tokio::time::timeout_at(until, queued.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Commits one batch and answers each proposal.
async fn commit(groups: &Groups, group: GroupId, mut batch: Vec<Proposal>) {
    assert!(
        !batch.is_empty(),
        "group {}: an empty batch to commit",
        group.0
    );
    let Some(raft) = groups.running(group) else {
        for p in batch {
            let _ = p.reply.send(ControlReply::NoGroup);
        }
        return;
    };
    // A batch inside the entry's batch is spliced in (the state machine
    // applies one level), and its results gathered again below.
    let command = if batch.len() == 1 {
        batch[0].command.clone()
    } else {
        let mut commands = Vec::with_capacity(batch.iter().map(|p| width(&p.command)).sum());
        for p in &batch {
            match &p.command {
                Command::Batch(inner) => commands.extend(inner.iter().cloned()),
                command => commands.push(command.clone()),
            }
        }
        Command::Batch(commands)
    };
    let single = batch.len() == 1;
    let total: usize = batch.iter().map(|p| width(&p.command)).sum();
    match raft.client_write(command).await {
        Ok(r) => match r.data {
            CommandResult::Batch(results) if !single && results.len() == total => {
                let mut results = results.into_iter();
                for p in batch {
                    let result = match &p.command {
                        Command::Batch(inner) => {
                            CommandResult::Batch(results.by_ref().take(inner.len()).collect())
                        }
                        _ => results.next().expect("as many results as commands"),
                    };
                    let _ = p.reply.send(ControlReply::Written(result));
                }
            }
            result if single => {
                let p = batch.remove(0);
                let _ = p.reply.send(ControlReply::Written(result));
            }
            other => {
                for p in batch {
                    let _ = p.reply.send(ControlReply::Failed(format!(
                        "a batch of appends gave {other:?}"
                    )));
                }
            }
        },
        Err(e) => {
            let reply = match e.forward_to_leader() {
                Some(f) => ControlReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
                None => ControlReply::Failed(e.to_string()),
            };
            for p in batch {
                let _ = p.reply.send(reply.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(bytes: usize) -> Command {
        Command::Append {
            payloads: vec![bytes::Bytes::from(vec![0; bytes])],
            producer: None,
            time_ms: 0,
            cause: None,
            handler: None,
        }
    }

    fn proposal(size: usize) -> Proposal {
        let (reply, _) = oneshot::channel();
        Proposal {
            command: append(size),
            reply,
        }
    }

    fn queued(sizes: &[usize]) -> Proposer {
        let mut p = Proposer {
            busy: true,
            ..Proposer::default()
        };
        for &size in sizes {
            p.push(proposal(size));
        }
        p
    }

    /// A wait no test reaches unless the linger is wrong.
    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_round_of_several_waits_for_as_many_more_to_queue() {
        let shared: Shared = Arc::new(Mutex::new(queued(&[10])));
        let clients = shared.clone();
        tokio::spawn(async move {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                lock(&clients).push(proposal(10));
            }
        });
        let started = Instant::now();
        linger(&shared, 2, 20, LONG).await;
        assert_eq!(lock(&shared).queue.len(), 3, "the one waiting and two more");
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert!(started.elapsed() < LONG / 2, "it waited for nothing more");
    }

    #[tokio::test]
    async fn a_linger_ends_when_nobody_comes() {
        let shared: Shared = Arc::new(Mutex::new(queued(&[])));
        let started = Instant::now();
        linger(&shared, 3, 30, Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(started.elapsed() < LONG / 2);
    }

    #[tokio::test]
    async fn one_client_alone_a_full_round_or_a_round_of_many_bytes_does_not_linger() {
        let started = Instant::now();
        linger(&Arc::new(Mutex::new(queued(&[]))), 1, 10, LONG).await;
        linger(
            &Arc::new(Mutex::new(queued(&[BATCH.bytes_max]))),
            4,
            40,
            LONG,
        )
        .await;
        linger(
            &Arc::new(Mutex::new(queued(&[]))),
            4,
            LINGER_BYTES_MAX,
            LONG,
        )
        .await;
        assert!(started.elapsed() < LONG / 2);
    }

    #[test]
    fn the_queue_refuses_past_its_bytes_and_says_when_to_retry() {
        let p = queued(&[8 << 20]);
        assert_eq!(full(&p, 4 << 20), None);
        let refused = full(&p, 8 << 20).expect("over 16 MiB waiting");
        assert!(refused.contains("retry in about 50 ms"), "{refused}");
        assert!(refused.contains("(8 MiB) waiting"), "{refused}");
        // Small appends still fit beside a large one.
        assert_eq!(full(&queued(&[15 << 20]), 1000), None);
    }

    #[test]
    fn an_append_larger_than_the_bound_is_taken_when_nothing_waits() {
        assert_eq!(full(&queued(&[]), 64 << 20), None);
        assert!(full(&queued(&[10]), 64 << 20).is_some());
    }

    #[test]
    fn the_queue_refuses_past_its_count() {
        let p = queued(&vec![1; QUEUE_DEPTH]);
        assert!(full(&p, 1).is_some());
        assert_eq!(full(&queued(&vec![1; QUEUE_DEPTH - 1]), 1), None);
    }

    #[test]
    fn taking_a_batch_frees_its_bytes() {
        let shared: Shared = Arc::new(Mutex::new(queued(&[6 << 20, 6 << 20, 100])));
        let batch = next_batch(&shared).expect("a batch");
        // 8 MiB a batch: the first alone; the second and the small one wait.
        assert_eq!(batch.len(), 1);
        let p = lock(&shared);
        assert_eq!(p.queue.len(), 2);
        assert_eq!(p.queued_bytes, (6 << 20) + 16 + 100 + 16);
    }
}
