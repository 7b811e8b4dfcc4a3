//! Raft traffic over the overlay, coalesced per peer, on the link to each
//! peer (a stream of its own, which the swarm's event loop does not carry;
//! see `woof_overlay::Client::link_request`).
//!
//! Every group sends its own heartbeats and appends; a node with hundreds of
//! awake groups would open thousands of overlay streams a second to each
//! peer. Instead, messages for one peer queue up and leave together: a
//! per-peer task sends whatever is queued as one request ([`TAG_RAFT_BATCH`])
//! as soon as one of its few in-flight slots is free, so an idle link adds
//! no delay and a busy one sends fewer, fuller requests (as CockroachDB and
//! TiKV coalesce their heartbeats). The peer answers every message of the
//! batch, in order, in one reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use openraft::BasicNode;
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot, watch};
use woof_consensus::codec::{decode, encode, encode_after, list_of_one_bytes_head};
use woof_consensus::raft::network::{Router, Transport};
use woof_overlay::PeerId;

use super::{Net, TAG_RAFT_BATCH};
use woof_consensus::batch::{self, Limits};

/// Messages waiting for one peer; past this, senders wait.
const QUEUE_DEPTH: usize = 4096;
/// The most messages, and bytes, in one batch (one larger message still
/// goes, alone).
const BATCH: Limits = Limits {
    items_max: 256,
    bytes_max: 4 << 20,
};
/// How long the receiving side works on a batch before it answers what it
/// has (half of openraft's AppendEntries timeout, one heartbeat).
const ANSWER_WITHIN: Duration = Duration::from_millis(50);
/// How long it works on a batch of one message: no other group's answer
/// waits for it (the link carries many batches at once), so it is answered
/// when handled. Cut at 50 ms, an 8 MiB entry that a follower took longer
/// to write was answered "try again" each time, which the sender counts as
/// unreachable: openraft's backoff then doubled to 1.6 s, and a flooded
/// group stood still for 1.8-3.4 s (the sender's `Pending` waits out
/// openraft's own timeout without sending again).
const ALONE_WITHIN: Duration = Duration::from_secs(10);
/// Batches in flight to one peer at once.
const IN_FLIGHT_MAX: usize = 8;

type Answer = woof_consensus::Result<Vec<u8>>;

struct Pending {
    message: Vec<u8>,
    reply: oneshot::Sender<Answer>,
}

/// The overlay as a Raft transport: `BasicNode::addr` is the peer id.
pub(super) struct OverlayTransport {
    client: Arc<dyn Net>,
    /// By `BasicNode::addr` (a peer id's text, parsed once per peer
    /// rather than on every message).
    queues: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
    /// Where the sending tasks run (awaited when the groups shut down).
    tasks: super::tasks::Tasks,
    /// Turns true when the groups shut down: the senders stop at once,
    /// dropping what is in flight.
    stop: watch::Receiver<bool>,
    /// Where snapshot sends are counted.
    counters: Arc<crate::metrics::RaftCounters>,
}

impl OverlayTransport {
    pub fn new(
        client: Arc<dyn Net>,
        tasks: super::tasks::Tasks,
        stop: watch::Receiver<bool>,
        counters: Arc<crate::metrics::RaftCounters>,
    ) -> Self {
        Self {
            client,
            queues: Mutex::default(),
            tasks,
            stop,
            counters,
        }
    }

    /// The queue to the peer `addr` names, with its sending task started
    /// on first use.
    fn queue(&self, addr: &str) -> Result<mpsc::Sender<Pending>, String> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get(addr) {
            return Ok(queue.clone());
        }
        let peer = addr.parse::<PeerId>().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stop = self.stop.clone();
        self.tasks.spawn(
            "raft-sender",
            send_batches(self.client.clone(), peer, rx, stop),
        );
        queues.insert(addr.to_string(), tx.clone());
        Ok(tx)
    }

    /// Drops every queue, which ends the sending tasks.
    pub fn close(&self) {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Transport for OverlayTransport {
    fn snapshot_chunk_sent(&self, first: bool, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if first {
            self.counters.snapshot_sends.fetch_add(1, Relaxed);
        }
        self.counters
            .snapshot_bytes
            .fetch_add(bytes as u64, Relaxed);
    }

    fn send(&self, node: &BasicNode, message: Vec<u8>) -> BoxFuture<'static, Answer> {
        let queue = self.queue(&node.addr);
        async move {
            let queue = queue.map_err(|e| {
                woof_consensus::Error::InvalidArgument(format!("not a peer id: {e}"))
            })?;
            let (reply, answer) = oneshot::channel();
            queue
                .send(Pending { message, reply })
                .await
                .map_err(|_| woof_consensus::Error::Closed)?;
            answer.await.unwrap_or(Err(woof_consensus::Error::Closed))
        }
        .boxed()
    }
}

/// Sends what is queued for `peer`, batch by batch, until the queue closes;
/// up to [`IN_FLIGHT_MAX`] batches at once, all driven by this task (no
/// task per batch: one hand-off less for every message).
async fn send_batches(
    client: Arc<dyn Net>,
    peer: PeerId,
    mut queue: mpsc::Receiver<Pending>,
    mut stop: watch::Receiver<bool>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut carry: Option<Pending> = None;
    let mut open = true;
    loop {
        let room = in_flight.len() < IN_FLIGHT_MAX;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = next(&mut carry, &mut queue), if open && room => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let (batch, left) = batch::fill(first, || queue.try_recv().ok(), BATCH, |p| {
                    p.message.len()
                });
                carry = left;
                let client = client.clone();
                in_flight.push(async move { send_one(&*client, peer, batch).await });
            }
            else => return,
        }
    }
}

/// The message left over from the last batch, else the next one queued.
async fn next(carry: &mut Option<Pending>, queue: &mut mpsc::Receiver<Pending>) -> Option<Pending> {
    match carry.take() {
        Some(p) => Some(p),
        None => queue.recv().await,
    }
}

/// Sends one batch and hands each answer to its sender.
async fn send_one(client: &dyn Net, peer: PeerId, batch: Vec<Pending>) {
    let (mut messages, replies): (Vec<Vec<u8>>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|p| (p.message, p.reply)).unzip();
    let sent = if messages.len() == 1 {
        // A batch of one (as an entry over the batch's bytes always is)
        // goes as its head and the message itself: the same bytes on the
        // wire, the message not copied into a new buffer.
        let message = messages.pop().expect("one message");
        list_of_one_bytes_head(vec![TAG_RAFT_BATCH], message.len())
            .map(|head| client.link_request_parts(peer, head, message))
    } else {
        let messages: Vec<ByteBuf> = messages.into_iter().map(ByteBuf::from).collect();
        encode_after(vec![TAG_RAFT_BATCH], &messages).map(|bytes| client.link_request(peer, bytes))
    };
    let answers = match sent {
        Ok(request) => match request.await {
            Ok(reply) => decode::<Vec<Result<ByteBuf, String>>>(&reply),
            Err(e) => Err(woof_consensus::Error::Network(e)),
        },
        Err(e) => Err(e),
    };
    match answers {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(
                    answer
                        .map(ByteBuf::into_vec)
                        .map_err(woof_consensus::Error::Network),
                );
            }
        }
        Ok(answers) => {
            let e = woof_consensus::Error::Corrupt(format!(
                "{peer} answered {} of {} messages",
                answers.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Answers a batch: every message handled at once, the answers in order.
/// What is not handled within [`ANSWER_WITHIN`] ([`ALONE_WITHIN`] for a
/// batch of one) is answered with an error
/// (its sender tries again), so that one slow message, such as one that must
/// wake a sleeping group, does not hold back the answers of every other
/// group past openraft's AppendEntries timeout (one heartbeat interval). A
/// wake goes on in the background (see the router's waker).
pub(super) async fn handle_batch(router: &Router, batch: &[u8]) -> woof_consensus::Result<Vec<u8>> {
    // Borrowed from the batch: each message is read where it lies.
    let messages: Vec<&serde_bytes::Bytes> = decode(batch)?;
    if messages.len() > BATCH.items_max {
        return Err(woof_consensus::Error::InvalidArgument(format!(
            "a batch of {} Raft messages; at most {}",
            messages.len(),
            BATCH.items_max
        )));
    }
    let within = if messages.len() == 1 {
        ALONE_WITHIN
    } else {
        ANSWER_WITHIN
    };
    let mut answers: Vec<Result<ByteBuf, String>> = (0..messages.len())
        .map(|_| {
            Err(format!(
                "not handled within {} ms; try again",
                within.as_millis()
            ))
        })
        .collect();
    let mut pending: FuturesUnordered<_> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| router.handle(m).map(move |a| (i, a)))
        .collect();
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = pending.next() => match next {
                Some((i, answer)) => {
                    answers[i] = answer.map(ByteBuf::from).map_err(|e| e.to_string());
                }
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    encode(&answers)
}
