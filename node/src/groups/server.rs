//! The server side of the group layer: answering the requests peers (and
//! this node's own client side) send to the groups held here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use woof_consensus::Start;
use woof_consensus::codec::{decode, encode};
use woof_consensus::raft::Command;
use woof_consensus::raft::group;
use woof_consensus::raft::{Raft, WatchReceiver};
use woof_consensus::store::GroupId;
use woof_consensus::topic::{Range, TopicName};
use woof_overlay::Inbound;

use super::control::{Control, ControlReply, Read, ReadReply};
use super::{Groups, TAG_CONTROL, TAG_RAFT_BATCH, transport};
use crate::error::Error;

/// Peer requests handled at once; past this they wait in the overlay's queue.
const INBOUND_CONCURRENCY: usize = 256;
/// The most elements one follow step returns.
const FOLLOW_ELEMENTS_MAX: u32 = 1024;
/// The longest one follow step waits.
const FOLLOW_WAIT_MAX_MS: u64 = 10_000;

/// Answers peer requests until the overlay closes `inbound`; a malformed
/// one is dropped (the peer sees a refusal), never a panic. Returns once
/// every request under way was answered.
pub(super) async fn serve(mut inbound: mpsc::Receiver<Inbound>, groups: Groups) {
    let limit = Arc::new(Semaphore::new(INBOUND_CONCURRENCY));
    let mut running = tokio::task::JoinSet::new();
    while let Some(request) = inbound.recv().await {
        while running.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let groups = groups.clone();
        running.spawn(async move {
            let _permit = permit;
            let answer: std::result::Result<Vec<u8>, Error> = match request.payload.split_first() {
                Some((&TAG_RAFT_BATCH, rest)) => transport::handle_batch(&groups.router, rest)
                    .await
                    .map_err(Error::from),
                Some((&TAG_CONTROL, rest)) => match decode::<Control>(rest) {
                    Ok(control) => {
                        encode(&groups.handle_control(control).await).map_err(Error::from)
                    }
                    Err(e) => Err(e.into()),
                },
                _ => Err(Error::Usage("unknown peer message".into())),
            };
            match answer {
                Ok(bytes) => {
                    let _ = request.reply.send(bytes);
                }
                Err(e) => tracing::debug!(peer = %request.peer, "peer request refused: {e}"),
            }
        });
    }
    // Let the requests under way finish, so that none outlives the node.
    while running.join_next().await.is_some() {}
}

impl Groups {
    /// Answers one control request.
    pub(super) async fn handle_control(&self, control: Control) -> ControlReply {
        match control {
            Control::StartGroup {
                group,
                members,
                initialize,
            } => self.join(group, &members, initialize).await,
            Control::Write { group, command } => {
                let raft = match self.serving(group).await {
                    Ok(raft) => raft,
                    Err(reply) => return reply,
                };
                // Appends, and batches of keyed appends (a handler's
                // outputs), commit together with whatever else waits.
                let appends = match &command {
                    Command::Append { .. } => true,
                    Command::Batch(inner) => {
                        inner.iter().all(|c| matches!(c, Command::Append { .. }))
                    }
                    _ => false,
                };
                if appends {
                    return self.propose(group, command).await;
                }
                match raft.client_write(command).await {
                    Ok(r) => ControlReply::Written(r.data),
                    Err(e) => match e.forward_to_leader() {
                        Some(f) => {
                            ControlReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
                        }
                        None => ControlReply::Failed(e.to_string()),
                    },
                }
            }
            Control::Read { group, topic, read } => self.serve_read(group, topic, read).await,
            Control::Replicas => ControlReply::Replicas(self.replicas()),
            Control::Replica { group } => {
                ControlReply::Replicas(self.replica(group).into_iter().collect())
            }
            Control::RemoveGroup { group } => match self.remove_local(group).await {
                Ok(()) => ControlReply::Removed,
                Err(e) => ControlReply::Failed(e.to_string()),
            },
            Control::RemoveLeftBehind { group, evidence_at } => {
                match self.remove_left_behind(group, evidence_at).await {
                    Ok(true) => ControlReply::Removed,
                    Ok(false) => ControlReply::Kept,
                    Err(e) => ControlReply::Failed(e.to_string()),
                }
            }
            Control::Sleep { groups } => self.sleep_followers(groups).await,
            Control::Lease(lease) => match self.leases.0.try_send(lease) {
                Ok(()) => ControlReply::Leased,
                Err(_) => ControlReply::Failed("this node's handler leases are backed up".into()),
            },
            Control::Invoke(invoke) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if self.invokes.0.try_send((invoke, tx)).is_err() {
                    return ControlReply::Failed("this node's invocations are backed up".into());
                }
                match rx.await {
                    Ok(Ok(reply)) => ControlReply::Invoked(reply),
                    Ok(Err(why)) => ControlReply::Failed(why),
                    Err(_) => ControlReply::Failed("this node runs no handlers now".into()),
                }
            }
        }
    }

    /// Answers a read of `topic` (of `group`) as its leader.
    async fn serve_read(&self, group: GroupId, topic: String, read: Read) -> ControlReply {
        if let Read::Follow { .. } = read
            && matches!(
                self.slots.state(group),
                Some(super::slots::State::Asleep(_))
            )
        {
            // A sleeping group's topic changes only once a write wakes it:
            // following it needs no leader.
            return match self.read_local(&topic, read).await {
                Ok(r) => ControlReply::Read(r),
                Err(e) => ControlReply::Refused(e),
            };
        }
        let raft = match self.serving(group).await {
            Ok(raft) => raft,
            Err(reply) => return reply,
        };
        let held = self.topics.latest(&topic).ok();
        if let Some(not_leader) = self.check_leader(&raft, must_confirm(&read, held)).await {
            return not_leader;
        }
        if let Read::Describe = read {
            return match self.replica_status(group, &raft) {
                Some(status) => ControlReply::Read(ReadReply::Status(Box::new(status))),
                None => ControlReply::Refused(woof_consensus::Error::TopicNotFound(topic)),
            };
        }
        match self.read_local(&topic, read).await {
            Ok(r) => ControlReply::Read(r),
            Err(e) => ControlReply::Refused(e),
        }
    }

    /// `None` if this node leads the group (confirmed by a quorum when
    /// `confirm`), else the answer pointing at the leader.
    async fn check_leader(&self, raft: &Raft, confirm: bool) -> Option<ControlReply> {
        if confirm {
            return match group::confirm_leader(raft).await {
                Ok(_) => None,
                Err(e) => Some(match e.forward_to_leader() {
                    Some(f) => {
                        ControlReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
                    }
                    None => ControlReply::Failed(e.to_string()),
                }),
            };
        }
        let metrics = raft.metrics().borrow_watched().clone();
        if metrics.current_leader == Some(self.node_id) {
            return None;
        }
        let leader = super::status::leader_of(&metrics).map(|p| p.to_string());
        Some(ControlReply::NotLeader(leader))
    }

    /// Serves a read from this node's replica.
    async fn read_local(&self, topic: &str, read: Read) -> woof_consensus::Result<ReadReply> {
        let wire = ReadReply::elements;
        Ok(match read {
            Read::Get { seq } => wire(vec![self.topics.get(topic, seq).await?]),
            Read::Scan { from, limit } => wire(self.topics.scan(topic, from, limit).await?),
            Read::Latest => {
                let range = self.topics.latest(topic)?;
                ReadReply::Range {
                    first: range.first,
                    last: range.last,
                }
            }
            Read::Follow { from, max, wait_ms } => {
                let mut sub = self.topics.subscribe(topic, Start::Seq(from))?;
                let max = max.clamp(1, FOLLOW_ELEMENTS_MAX) as usize;
                let wait = Duration::from_millis(wait_ms.min(FOLLOW_WAIT_MAX_MS));
                match tokio::time::timeout(wait, sub.next_batch(max)).await {
                    Ok(batch) => wire(batch?),
                    Err(_) => ReadReply::Elements(Vec::new()),
                }
            }
            Read::Handlers => {
                let name = TopicName::new(topic)?;
                let Some(handlers) = self.topics.handlers(&name) else {
                    return Err(woof_consensus::Error::TopicNotFound(topic.to_string()));
                };
                let last = self.topics.latest(topic)?.last;
                let handlers = handlers.borrow().as_ref().clone();
                ReadReply::Handlers(Box::new(handlers), last)
            }
            Read::Effects {
                cause_topic,
                handler,
                cause_seq,
                limit,
            } => wire(
                self.topics
                    .effects(topic, &cause_topic, &handler, cause_seq, limit)
                    .await?,
            ),
            Read::Describe => {
                return Err(woof_consensus::Error::InvalidArgument(
                    "a description is not read from the store".into(),
                ));
            }
        })
    }
}

/// Whether answering `read` from this node's replica, which holds `held`,
/// needs a quorum to confirm first that it leads: a read of the latest
/// range, and a get or scan that reaches past what the replica holds. Such
/// an answer ("not there", or fewer elements) would be stale if a newer
/// leader had committed more (found by the simulator: a leader cut off from
/// the others answered "out of range" for an element already acknowledged).
/// Elements it holds never change: those need nothing.
pub(super) fn must_confirm(read: &Read, held: Option<Range>) -> bool {
    let holds = |from: u64, to: u64| held.is_some_and(|r| from >= r.first.max(1) && to <= r.last);
    match read {
        Read::Latest => true,
        Read::Get { seq } => !holds(*seq, *seq),
        Read::Scan { from, limit } => !holds(
            *from,
            from.saturating_add(u64::from(*limit)).saturating_sub(1),
        ),
        // A trace's effects: what the leader applied is answer enough.
        Read::Follow { .. } | Read::Describe | Read::Handlers | Read::Effects { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELD: Option<Range> = Some(Range { first: 5, last: 10 });

    #[test]
    fn the_latest_range_is_always_confirmed() {
        assert!(must_confirm(&Read::Latest, HELD));
        assert!(must_confirm(&Read::Latest, None));
    }

    #[test]
    fn a_get_is_confirmed_only_past_what_the_replica_holds() {
        assert!(!must_confirm(&Read::Get { seq: 5 }, HELD));
        assert!(!must_confirm(&Read::Get { seq: 10 }, HELD));
        assert!(
            must_confirm(&Read::Get { seq: 11 }, HELD),
            "may exist at a newer leader"
        );
        assert!(
            must_confirm(&Read::Get { seq: 4 }, HELD),
            "trimmed here: answer says so only once confirmed"
        );
        assert!(must_confirm(
            &Read::Get { seq: 0 },
            Some(Range { first: 0, last: 3 })
        ));
        assert!(
            must_confirm(&Read::Get { seq: 1 }, None),
            "the topic is not here"
        );
    }

    #[test]
    fn a_scan_is_confirmed_when_any_of_it_is_not_held() {
        assert!(!must_confirm(&Read::Scan { from: 5, limit: 6 }, HELD));
        assert!(must_confirm(&Read::Scan { from: 5, limit: 7 }, HELD));
        assert!(must_confirm(&Read::Scan { from: 4, limit: 1 }, HELD));
        assert!(
            must_confirm(
                &Read::Scan {
                    from: u64::MAX,
                    limit: u32::MAX
                },
                HELD
            ),
            "no overflow"
        );
        assert!(
            !must_confirm(&Read::Scan { from: 7, limit: 0 }, HELD),
            "an empty scan within the range"
        );
    }

    #[test]
    fn follows_and_descriptions_need_no_confirmation() {
        let follow = Read::Follow {
            from: 100,
            max: 10,
            wait_ms: 0,
        };
        assert!(!must_confirm(&follow, HELD));
        assert!(!must_confirm(&Read::Describe, None));
    }
}
