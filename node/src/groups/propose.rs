//! Group commit on a topic's leader: appends that arrive while one is being
//! committed wait, then go together as one log entry ([`Command::Batch`]),
//! so many clients share one round of replication and fsyncs (as the
//! standalone writer in `woof_consensus::topics` does). One client alone
//! waits for nobody.

use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot};
use woof_consensus::raft::{Command, CommandResult};
use woof_consensus::store::GroupId;

use super::Groups;
use super::control::ControlReply;

/// Appends waiting for one group's proposer; past this, appenders wait.
const QUEUE_DEPTH: usize = 4096;
/// The most appends in one entry.
const BATCH_APPENDS_MAX: usize = 1024;
/// The most payload bytes in one entry (a larger append still goes, alone).
const BATCH_BYTES_MAX: usize = 8 << 20;
/// A proposer with nothing to do for this long stops.
const IDLE: Duration = Duration::from_secs(30);

pub(super) struct Proposal {
    command: Command,
    reply: oneshot::Sender<ControlReply>,
}

fn bytes(command: &Command) -> usize {
    match command {
        Command::Append { payloads, .. } => payloads.iter().map(|p| p.len() + 16).sum(),
        _ => 64,
    }
}

impl Groups {
    /// Commits an append through this node's replica of `group` (which
    /// must lead), together with the appends queued meanwhile.
    pub(super) async fn propose(&self, group: GroupId, command: Command) -> ControlReply {
        for _ in 0..2 {
            let queue = self.proposer(group);
            let (reply, answer) = oneshot::channel();
            let proposal = Proposal {
                command: command.clone(),
                reply,
            };
            if queue.send(proposal).await.is_ok() {
                return answer
                    .await
                    .unwrap_or_else(|_| ControlReply::Failed("the proposer stopped".into()));
            }
            // The proposer stopped for idleness just now: start another.
            self.proposers_mut().remove(&group.0);
        }
        ControlReply::Failed("no proposer for the group".into())
    }

    pub(super) fn proposers_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, mpsc::Sender<Proposal>>> {
        self.proposers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue of `group`'s proposer, started on first use.
    fn proposer(&self, group: GroupId) -> mpsc::Sender<Proposal> {
        self.proposers_mut()
            .entry(group.0)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                tokio::spawn(run(self.clone(), group, rx));
                tx
            })
            .clone()
    }
}

/// Proposes what is queued, one entry at a time, until idle.
async fn run(groups: Groups, group: GroupId, mut queue: mpsc::Receiver<Proposal>) {
    let mut carry: Option<Proposal> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match tokio::time::timeout(IDLE, queue.recv()).await {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(_) => {
                    groups.proposers_mut().remove(&group.0);
                    // Whatever slipped in before the removal still goes.
                    queue.close();
                    match queue.recv().await {
                        Some(p) => p,
                        None => return,
                    }
                }
            },
        };
        let mut size = bytes(&first.command);
        let mut batch = vec![first];
        while batch.len() < BATCH_APPENDS_MAX {
            let Ok(next) = queue.try_recv() else { break };
            if size + bytes(&next.command) > BATCH_BYTES_MAX {
                carry = Some(next);
                break;
            }
            size += bytes(&next.command);
            batch.push(next);
        }
        commit(&groups, group, batch).await;
    }
}

/// Commits one batch and answers each proposal.
async fn commit(groups: &Groups, group: GroupId, mut batch: Vec<Proposal>) {
    let Some(raft) = groups.router.get(group) else {
        for p in batch {
            let _ = p.reply.send(ControlReply::NoGroup);
        }
        return;
    };
    let command = if batch.len() == 1 {
        batch[0].command.clone()
    } else {
        Command::Batch(batch.iter().map(|p| p.command.clone()).collect())
    };
    let single = batch.len() == 1;
    match raft.client_write(command).await {
        Ok(r) => match r.data {
            CommandResult::Batch(results) if !single && results.len() == batch.len() => {
                for (p, result) in batch.into_iter().zip(results) {
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
            let reply = match e.forward_to_leader::<BasicNode>() {
                Some(f) => ControlReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone())),
                None => ControlReply::Failed(e.to_string()),
            };
            for p in batch {
                let _ = p.reply.send(reply.clone());
            }
        }
    }
}
