//! One handler's loop on the node that runs it.
//!
//! It follows the topic from the first element the handler has not
//! finished, runs the handler on each element in order, appends the
//! outputs, and records its progress in the topic's group.
//!
//! **Effectively once.** Output `i` of element `seq` is appended as
//! producer `~h<topic id>.<handler>` with producer sequence `seq << 16 | i`.
//! The runner appends one output at a time and waits for each, so every
//! output below the newest one committed was committed too. A re-run of an
//! element (after a crash, a leader change, or progress recorded late) then
//! finds each output it already wrote: the last one as a duplicate, older
//! ones as older than the producer's window; either way nothing is written
//! twice. Progress is recorded every [`RECORD_EVERY`] elements or
//! [`RECORD_AFTER`], whichever comes first, so a re-run repeats at most that
//! much, and writes nothing for it.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use woof_consensus::Start;
use woof_consensus::store::GroupId;
use woof_consensus::topic::handlers::{Handler, SEQ_MAX};
use woof_consensus::topic::{Producer, TopicName};

use bytes::Bytes;

use super::code::Engine;
use super::native::{self, Output};
use crate::api::ClusterTopics;
use crate::error::{Error, Result};

/// Elements taken from the topic at a time.
const BATCH: usize = 64;
/// Progress is recorded after this many elements at most...
pub const RECORD_EVERY: u64 = 64;
/// ...or this long after the first element not yet recorded.
pub const RECORD_AFTER: Duration = Duration::from_millis(50);
/// The most outputs one element may have.
pub const OUTPUTS_MAX: usize = 1024;
/// Attempts at one output append that fails for a reason that may pass.
const APPEND_ATTEMPTS: u32 = 8;
/// Attempts at one element whose handler fails.
const HANDLE_ATTEMPTS: u32 = 5;
/// The first pause between attempts; doubled each time.
const BACKOFF: Duration = Duration::from_millis(50);

/// One handler of one topic, at one version, run here.
pub struct Runner {
    api: ClusterTopics,
    topic: TopicName,
    handler: Handler,
    /// The producer its outputs are appended as.
    producer: String,
}

impl Runner {
    pub fn new(api: ClusterTopics, group: GroupId, topic: TopicName, handler: Handler) -> Self {
        let producer = format!("~h{:x}.{}", group.0, handler.spec.name);
        Self {
            api,
            topic,
            handler,
            producer,
        }
    }

    /// Runs until `stop`; until an element fails past its retries (the
    /// handler is parked); or until a failure that may pass (the
    /// supervisor starts it again later, from its recorded progress).
    pub async fn run(self, stop: CancellationToken) {
        let (topic, name) = (self.topic.clone(), self.handler.spec.name.clone());
        tracing::info!(%topic, handler = %name, from = self.handler.next(), "handler runs here");
        match self.feed(&stop).await {
            Ok(()) => tracing::info!(%topic, handler = %name, "handler stops here"),
            // The node is stopping, or the topic's replica here closed.
            Err(Error::Log(woof_consensus::Error::Closed)) => {
                tracing::info!(%topic, handler = %name, "handler stops with its replica here")
            }
            Err(e) => tracing::warn!(%topic, handler = %name, "handler stopped: {e}"),
        }
    }

    async fn feed(&self, stop: &CancellationToken) -> Result<()> {
        let mut engine = Engine::build(
            &self.handler.spec,
            self.topic.as_str(),
            &self.api.me(),
            self.api.python(),
        )?;
        let mut next = self.handler.next();
        if let Some(native) = engine.native() {
            self.warm_up(native, next).await?;
        }
        let mut recorded = self.handler.done;
        let mut unrecorded_since: Option<Instant> = None;
        let mut following = self
            .api
            .subscribe(self.topic.as_str(), Start::Seq(next))
            .await?;
        loop {
            let wait = match unrecorded_since {
                Some(since) => RECORD_AFTER.saturating_sub(since.elapsed()),
                None => Duration::from_secs(3600),
            };
            let batch = tokio::select! {
                _ = stop.cancelled() => break,
                batch = tokio::time::timeout(wait, following.next_batch(BATCH)) => batch,
            };
            for element in batch.unwrap_or_else(|_| Ok(Vec::new()))? {
                if element.seq < next {
                    continue;
                }
                let seq = element.seq;
                let done = match self.handle(&mut engine, seq, &element.payload, stop).await {
                    Ok(outputs) => self.emit(seq, outputs, stop).await,
                    Err(failure) => Err(failure),
                };
                match done {
                    Ok(()) => {}
                    Err(Failure::Stopped) => break,
                    Err(Failure::Passing(e)) => return Err(e),
                    Err(Failure::Element(why)) => {
                        // What it finished stays finished; it resumes here.
                        if next - 1 > recorded {
                            self.record(next - 1).await?;
                        }
                        return self.park(seq, why).await;
                    }
                }
                next = seq + 1;
                unrecorded_since.get_or_insert_with(Instant::now);
            }
            let done = next - 1;
            let due = unrecorded_since.is_some_and(|s| s.elapsed() >= RECORD_AFTER);
            if done > recorded && (done - recorded >= RECORD_EVERY || due) {
                if !self.record(done).await? {
                    // Updated, removed, or another runner got further:
                    // this one is no longer the handler's.
                    return Ok(());
                }
                recorded = done;
                unrecorded_since = None;
            }
        }
        if next - 1 > recorded {
            // Best effort: a re-run of these writes nothing twice anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.record(next - 1)).await;
        }
        Ok(())
    }

    /// Shows a stateful handler the elements before `next` it asks for.
    async fn warm_up(&self, handler: &mut dyn native::Native, next: u64) -> Result<()> {
        let wanted = handler.history().min(native::HISTORY_MAX) as u64;
        if wanted == 0 || next <= 1 {
            return Ok(());
        }
        let held = self.api.latest(self.topic.as_str()).await?;
        let mut from = next.saturating_sub(wanted).max(held.first).max(1);
        while from < next {
            let limit = (next - from).min(u64::from(u32::MAX)) as u32;
            let page = self.api.scan(self.topic.as_str(), from, limit).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            for e in page.iter().filter(|e| e.seq < next) {
                handler.observe(e.seq, &e.payload);
            }
            from = last + 1;
        }
        Ok(())
    }

    /// Stops the handler in its group, with why, until someone resumes it.
    async fn park(&self, seq: u64, why: String) -> Result<()> {
        tracing::warn!(topic = %self.topic, handler = %self.handler.spec.name, seq, "handler parked: {why}");
        self.api
            .park_handler(
                &self.topic,
                &self.handler.spec.name,
                self.handler.version,
                seq,
                why,
            )
            .await
    }

    /// The handler's outputs for one element, retried with backoff if it fails.
    async fn handle(
        &self,
        engine: &mut Engine,
        seq: u64,
        payload: &Bytes,
        stop: &CancellationToken,
    ) -> Result<Vec<Output>, Failure> {
        let mut pause = BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ran = engine.run(seq, payload, &self.api).await;
            match ran.outputs {
                Ok(outputs) if outputs.len() > OUTPUTS_MAX => {
                    return Err(Failure::Element(format!(
                        "element {seq} gave {} outputs; at most {OUTPUTS_MAX}",
                        outputs.len()
                    )));
                }
                Ok(outputs) => return Ok(outputs),
                Err(e) => {
                    tracing::warn!(topic = %self.topic, handler = %self.handler.spec.name, seq, attempt, "handler failed: {e}");
                    if attempt == HANDLE_ATTEMPTS {
                        return Err(Failure::Element(format!(
                            "element {seq}, {attempt} attempts: {e}"
                        )));
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Err(Failure::Stopped),
                _ = tokio::time::sleep(pause) => {}
            }
            pause *= 2;
        }
    }

    /// Appends the outputs of element `seq`, one at a time, each under its key.
    async fn emit(
        &self,
        seq: u64,
        outputs: Vec<Output>,
        stop: &CancellationToken,
    ) -> Result<(), Failure> {
        if seq >= SEQ_MAX {
            return Err(Failure::Element(format!(
                "element {seq} is beyond what output keys number"
            )));
        }
        for (i, output) in outputs.into_iter().enumerate() {
            let producer = Producer::new(self.producer.clone(), (seq << 16) | i as u64)
                .map_err(|e| Failure::Element(e.to_string()))?;
            let mut pause = BACKOFF;
            for attempt in 1..=APPEND_ATTEMPTS {
                let appended = self
                    .api
                    .append(
                        &output.topic,
                        vec![output.payload.clone()],
                        Some(producer.clone()),
                    )
                    .await;
                match appended {
                    Ok(_) => break,
                    // Below the newest output committed: committed before.
                    Err(Error::Log(woof_consensus::Error::ProducerSeq { .. })) => break,
                    Err(e) if !passing(&e) => {
                        return Err(Failure::Element(format!(
                            "element {seq}: appending output {i} to {:?}: {e}",
                            output.topic
                        )));
                    }
                    Err(e) if attempt == APPEND_ATTEMPTS => return Err(Failure::Passing(e)),
                    Err(e) => {
                        tracing::debug!(topic = %self.topic, seq, i, attempt, "output append failed: {e}");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return Err(Failure::Stopped),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause *= 2;
            }
        }
        Ok(())
    }

    async fn record(&self, done: u64) -> Result<bool> {
        self.api
            .handler_done(
                &self.topic,
                &self.handler.spec.name,
                self.handler.version,
                done,
            )
            .await
    }
}

/// Why one element was not finished.
enum Failure {
    /// The runner was told to stop.
    Stopped,
    /// Something that may pass (the network, a leader change): the runner
    /// stops, and starts again later where it stopped.
    Passing(Error),
    /// The element itself fails (the handler raises, an output is refused):
    /// the handler is parked.
    Element(String),
}

/// Whether an append that failed this way may succeed if tried again.
fn passing(e: &Error) -> bool {
    use woof_consensus::Error as L;
    match e {
        Error::Log(L::Network(_) | L::Closed | L::LimitReached(_) | L::Storage(_)) => true,
        Error::Log(_) | Error::Usage(_) => false,
        _ => true,
    }
}
