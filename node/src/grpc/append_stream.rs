//! `AppendStream`: a producer's appends on one HTTP/2 stream (ADR 40).
//!
//! One task per stream ([`Appender::run`]) takes the requests that have
//! arrived, at most [`TAKEN_MAX`] at a time, and appends them in their
//! order: a run of requests for one topic with neither a producer nor a
//! handler goes as one batch (one round of the topic's group, each request
//! answered with its own number), any other request alone, as `Append`
//! would. Each request gets exactly one answer, in order. The task takes
//! no more requests until the answers to those it took are in the stream's
//! buffer ([`ANSWERS_BUFFERED`]), so a client that does not read its
//! answers is held back by HTTP/2's flow control, and a stream holds at
//! most about two takes' worth of requests and answers. Each answer counts
//! in the node's metrics as a unary call's would: its latency (from when
//! its run was taken) if it committed, its code if it was refused.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};
use woof_consensus::topic::{BATCH_BYTES_MAX, BATCH_ELEMENTS_MAX};
use woof_proto::v1;

use crate::api::TopicApi;
use crate::auth::{Authority, Grant, Op, Scope};
use crate::shutdown::Shutdown;

/// Requests taken from a stream at a time (and so at most appended in one
/// round): at most a batch's count.
pub const TAKEN_MAX: usize = 1_000;
/// Answers a stream buffers for a client that reads them slowly.
pub const ANSWERS_BUFFERED: usize = TAKEN_MAX;

const _: () = assert!(TAKEN_MAX <= BATCH_ELEMENTS_MAX);

pub type Answer = Result<v1::AppendStreamResponse, Status>;

/// What a stream's task appends with.
pub struct Appender {
    pub topics: TopicApi,
    pub metrics: crate::metrics::Metrics,
    /// With `--require-token`: the stream's token, checked against each
    /// request's topic.
    pub auth: Option<(Arc<Authority>, Grant)>,
}

impl Appender {
    /// Appends the stream's requests in order until the client ends it, an
    /// answer cannot be delivered (the client went away) or the node stops.
    pub async fn run(
        self,
        mut inbound: Streaming<v1::AppendRequest>,
        answers: mpsc::Sender<Answer>,
        shutdown: Shutdown,
    ) {
        let stopping = |answers: &mpsc::Sender<Answer>| {
            let _ = answers.try_send(Err(Status::unavailable("the node is stopping")));
        };
        loop {
            let first = tokio::select! {
                r = inbound.next() => r,
                _ = answers.closed() => return,
                _ = shutdown.requested() => return stopping(&answers),
            };
            let mut taken = match first {
                None => return,
                // A frame that is not a request (too large, malformed): the
                // stream ends with its error.
                Some(Err(e)) => return fail(&answers, e, &shutdown).await,
                Some(Ok(r)) => vec![r],
            };
            // Then whatever else has arrived, without waiting for more.
            let mut bytes = taken[0].payload.len();
            // `Some(None)`: the client ended the stream after these;
            // `Some(Some(e))`: a bad frame came after them.
            let mut end: Option<Option<Status>> = None;
            while taken.len() < TAKEN_MAX && bytes < BATCH_BYTES_MAX {
                match inbound.next().now_or_never() {
                    Some(Some(Ok(r))) => {
                        bytes += r.payload.len();
                        taken.push(r);
                    }
                    Some(Some(Err(e))) => {
                        end = Some(Some(e));
                        break;
                    }
                    Some(None) => {
                        end = Some(None);
                        break;
                    }
                    None => break,
                }
            }
            let mut taken = taken.into_iter().peekable();
            while let Some(r) = taken.next() {
                let mut run = vec![r];
                let mut bytes = run[0].payload.len();
                while let Some(next) = taken.peek()
                    && batchable(&run[0])
                    && batchable(next)
                    && next.topic == run[0].topic
                    && bytes + next.payload.len() <= BATCH_BYTES_MAX
                {
                    bytes += next.payload.len();
                    run.extend(taken.next());
                }
                let answered = tokio::select! {
                    answered = self.append_run(run) => answered,
                    // As a unary call's client going away: the append may
                    // still commit, unanswered.
                    _ = shutdown.requested() => return stopping(&answers),
                };
                for answer in answered {
                    tokio::select! {
                        sent = answers.send(Ok(answer)) => if sent.is_err() {
                            return;
                        },
                        // A client that does not read does not hold the node up.
                        _ = shutdown.requested() => return stopping(&answers),
                    }
                }
            }
            match end {
                None => {}
                Some(None) => return,
                Some(Some(e)) => return fail(&answers, e, &shutdown).await,
            }
        }
    }

    /// Appends `run` (one request, or several for one topic that
    /// [`batchable`] allows together) and answers each request.
    async fn append_run(&self, run: Vec<v1::AppendRequest>) -> Vec<v1::AppendStreamResponse> {
        let started = Instant::now();
        let answers = self.append_run_unmeasured(run).await;
        let elapsed = started.elapsed();
        for a in &answers {
            self.metrics.stream_answered(match &a.outcome {
                Some(v1::append_stream_response::Outcome::Error(e)) => Err(e.code),
                _ => Ok(elapsed),
            });
        }
        answers
    }

    /// [`append_run`](Self::append_run) without counting its answers in
    /// the node's metrics.
    async fn append_run_unmeasured(
        &self,
        run: Vec<v1::AppendRequest>,
    ) -> Vec<v1::AppendStreamResponse> {
        if run.len() > 1 {
            let topic = run[0].topic.clone();
            super::in_topic(&topic);
            let payloads: Vec<Bytes> = run.iter().map(|r| r.payload.clone()).collect();
            let bytes = payloads.iter().map(|p| p.len() as u64).sum();
            let appended = match self.allowed(&topic) {
                Ok(()) => self
                    .topics
                    .append(&topic, payloads, None)
                    .await
                    .map_err(super::status),
                Err(e) => Err(e),
            };
            match appended {
                Ok(outcome) => {
                    self.metrics.appended(&topic, outcome.count, bytes);
                    return (0..run.len() as u64)
                        .map(|i| appended_answer(outcome.first_seq + i, false))
                        .collect();
                }
                // A batch refused for what one of its requests holds (an
                // element over the topic's limit) was not appended at all:
                // each request is tried alone, so that only that one fails.
                Err(e) if e.code() == Code::InvalidArgument => {}
                Err(e) => return run.iter().map(|_| error_answer(&e)).collect(),
            }
        }
        let mut answers = Vec::with_capacity(run.len());
        for r in run {
            super::in_topic(&r.topic);
            let appended = match self.allowed(&r.topic) {
                Ok(()) => super::append_one(&self.topics, &self.metrics, r).await,
                Err(e) => Err(e),
            };
            answers.push(match appended {
                Ok(a) => appended_answer(a.seq, a.duplicate),
                Err(e) => error_answer(&e),
            });
        }
        answers
    }

    /// Whether the stream's token allows appending to `topic`.
    fn allowed(&self, topic: &str) -> Result<(), Status> {
        match &self.auth {
            None => Ok(()),
            Some((auth, grant)) => Ok(auth.allowed(grant, Op::Append, Scope::Topic(topic))?),
        }
    }
}

/// Ends the stream with `e`, once the answers before it are read (or the
/// node stops).
async fn fail(answers: &mpsc::Sender<Answer>, e: Status, shutdown: &Shutdown) {
    tokio::select! {
        _ = answers.send(Err(e)) => {}
        _ = shutdown.requested() => {}
    }
}

/// Whether a request may be appended in one batch with its neighbours: a
/// producer's sequence and an on-demand handler belong to one append each.
fn batchable(r: &v1::AppendRequest) -> bool {
    r.producer.is_none() && r.handler.is_empty()
}

fn appended_answer(seq: u64, duplicate: bool) -> v1::AppendStreamResponse {
    v1::AppendStreamResponse {
        outcome: Some(v1::append_stream_response::Outcome::Appended(
            v1::AppendResponse { seq, duplicate },
        )),
    }
}

fn error_answer(e: &Status) -> v1::AppendStreamResponse {
    v1::AppendStreamResponse {
        outcome: Some(v1::append_stream_response::Outcome::Error(
            v1::AppendError {
                code: e.code() as i32,
                message: e.message().to_string(),
            },
        )),
    }
}
