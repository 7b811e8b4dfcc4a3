//! One handler's loop on the node that runs it.
//!
//! It follows the topic from the first element the handler has not
//! finished, runs the handler on each element in order, appends the
//! outputs, and records its progress in the topic's group.
//!
//! **Effectively once.** Output `i` of element `seq` is appended as
//! producer `~h<topic id>.<handler>` (for one node's instance of a handler
//! placed by `all(...)`, `~h<topic id>.<handler>@<node>`: each instance
//! has its own keys and progress) with producer sequence `seq << 16 | i`.
//! The runner takes elements in batches and runs the handler on each; its
//! outbox (a task of its own, so that the handler goes on with the next
//! elements meanwhile) appends the outputs of the elements it is given, in
//! their order, per target topic, in key order, in chunks that are each one
//! log entry (applied whole, in order), one chunk at a time. So in each
//! target topic every output key below the newest one committed was
//! committed too. Progress counts only elements whose outputs the outbox
//! saw committed; the handler runs at most [`OUTBOX_QUEUE`] batches ahead. A re-run of an element (after a crash, a
//! leader change, or progress recorded late) then finds each output it
//! already wrote: the newest as a duplicate, older ones as older than the
//! producer's window; either way nothing is written twice. Progress is
//! recorded every [`RECORD_EVERY`] elements or [`RECORD_AFTER`], whichever
//! comes first, so a re-run repeats at most that much, and writes nothing
//! for it.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use woof_consensus::Start;
use woof_consensus::store::GroupId;
use woof_consensus::topic::handlers::{Handler, OUTPUT_TOPICS_MAX, SEQ_MAX};
use woof_consensus::topic::{Cause, Producer, TopicName};

use bytes::Bytes;

use super::adaptive::Spread;
use super::code::Engine;
use super::journal;
use super::native::{self, Output};
use crate::api::ClusterTopics;
use crate::error::{Error, Result};

/// Elements taken from the topic at a time.
const BATCH: usize = 512;
/// Progress is recorded after this many elements at most...
pub const RECORD_EVERY: u64 = 1024;
/// ...or this long after the first element not yet recorded.
pub const RECORD_AFTER: Duration = Duration::from_millis(50);
/// The most outputs one element may have.
pub const OUTPUTS_MAX: usize = 1024;
/// The most outputs, and bytes, appended in one log entry.
const OUTPUT_CHUNK: woof_consensus::batch::Limits = woof_consensus::batch::Limits {
    items_max: 1024,
    bytes_max: 4 << 20,
};
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
    /// The node it runs on, as its outputs' causes name it.
    node: String,
    /// This node, if the handler runs on every node its placement matches
    /// (`all(...)`): this instance keeps its own progress.
    instance: Option<String>,
}

impl Runner {
    pub fn new(api: ClusterTopics, group: GroupId, topic: TopicName, handler: Handler) -> Self {
        let node = api.me();
        let instance = handler.spec.per_node.then(|| node.clone());
        let producer = producer(group, &handler.spec.name, instance.as_deref());
        Self {
            api,
            topic,
            handler,
            producer,
            node,
            instance,
        }
    }

    /// The last element this runner's handler (or instance) finished.
    fn done(&self) -> u64 {
        self.handler.done_by(self.instance.as_deref())
    }

    /// Runs until `stop`; until an element fails past its retries (the
    /// handler is parked); or until a failure that may pass (the
    /// supervisor starts it again later, from its recorded progress).
    pub async fn run(self, stop: CancellationToken) {
        let (topic, name) = (self.topic.clone(), self.handler.spec.name.clone());
        self.api.journal().open(&topic, &name);
        tracing::info!(%topic, handler = %name, from = self.done() + 1, "handler runs here");
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
        // `adaptive()`: each invocation runs where it is fastest.
        let mut spread = Spread::of(&self.handler, self.node.clone());
        let mut next = self.done() + 1;
        if let Some(native) = engine.native() {
            self.warm_up(native, next).await?;
        }
        let mut recorded = self.done();
        // The last element whose outputs are all committed.
        let mut done = recorded;
        // Output topics the group's record of the handler names, and those
        // to add with the next progress record.
        let mut outputs = Outputs::new(&self.handler.outputs);
        let mut unrecorded_since: Option<Instant> = None;
        let mut following = self
            .api
            .subscribe(self.topic.as_str(), Start::Seq(next))
            .await?;
        // The outputs are appended by a task of their own, so that the
        // handler runs on the next elements while the last ones' outputs
        // commit.
        let Started {
            queue: mut outbox,
            mut emitted,
            task: mut emitting,
        } = Outbox::start(self, done, stop);
        // An element that failed past its retries, or whose outputs were
        // refused for good.
        let mut failed: Option<(u64, String)> = None;
        let mut stopped = false;
        while failed.is_none() {
            let wait = match unrecorded_since {
                Some(since) => RECORD_AFTER.saturating_sub(since.elapsed()),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    stopped = true;
                    break;
                }
                ended = &mut emitting => match ended {
                    // It ends only when told to or on a failure.
                    Ok(Ok(())) | Ok(Err(Failure::Stopped)) => {
                        stopped = true;
                        break;
                    }
                    Ok(Err(Failure::Passing(e))) => return Err(e),
                    Ok(Err(Failure::Element { seq, why })) => {
                        // Every element before it has all its outputs.
                        done = done.max(seq - 1);
                        failed = Some((seq, why));
                    }
                    Err(e) => return Err(Error::Internal(format!("a handler's outbox failed: {e}"))),
                },
                changed = emitted.changed() => {
                    if changed.is_ok() {
                        done = *emitted.borrow_and_update();
                        unrecorded_since.get_or_insert_with(Instant::now);
                    }
                }
                batch = tokio::time::timeout(wait, following.next_batch(BATCH)) => {
                    let elements = batch.unwrap_or_else(|_| Ok(Vec::new()))?;
                    let committed = following.published_at();
                    let (handled, failure) = self
                        .run_batch(&mut engine, &mut spread, elements, next, committed, stop)
                        .await;
                    if let Some(last) = handled.last().map(|h| h.seq) {
                        if woof_consensus::bugs::on(woof_consensus::bugs::Bug::HandlerProgressFirst)
                            && last > recorded
                        {
                            self.record(last, &mut outputs).await?;
                            recorded = last;
                        }
                        outputs.saw(&handled);
                        next = last + 1;
                        // Waits while the outbox is full: the handler runs no
                        // further ahead of its committed outputs than that.
                        if outbox.send(handled).await.is_err() {
                            // It ended: the next turn reads why.
                            continue;
                        }
                    }
                    match failure {
                        None => {}
                        Some(Failure::Stopped) => {
                            stopped = true;
                            break;
                        }
                        Some(Failure::Passing(e)) => return Err(e),
                        Some(Failure::Element { seq, why }) => {
                            // Its outputs, and those before it, go first.
                            drop(outbox);
                            outbox = mpsc::channel(1).0;
                            match (&mut emitting).await {
                                Ok(Ok(())) => done = next - 1,
                                Ok(Err(Failure::Element { seq: first, why: first_why })) => {
                                    done = done.max(first - 1);
                                    failed = Some((first, first_why));
                                    break;
                                }
                                Ok(Err(Failure::Stopped)) => {
                                    stopped = true;
                                    break;
                                }
                                Ok(Err(Failure::Passing(e))) => return Err(e),
                                Err(e) => {
                                    return Err(Error::Internal(format!(
                                        "a handler's outbox failed: {e}"
                                    )));
                                }
                            }
                            failed = Some((seq, why));
                        }
                    }
                }
            }
            if done <= recorded {
                // Nothing left to record: wait for elements, not a timer.
                unrecorded_since = None;
            }
            let due = unrecorded_since.is_some_and(|s| s.elapsed() >= RECORD_AFTER);
            if failed.is_none() && done > recorded && (done - recorded >= RECORD_EVERY || due) {
                if !self.record(done, &mut outputs).await? {
                    // Updated, removed, or another runner got further:
                    // this one is no longer the handler's.
                    return Ok(());
                }
                recorded = done;
                unrecorded_since = None;
            }
        }
        if let Some((seq, why)) = failed {
            // What it finished stays finished; it resumes here.
            if done > recorded {
                self.record(done, &mut outputs).await?;
            }
            return self.park(seq, why).await;
        }
        debug_assert!(stopped);
        if done > recorded {
            // Best effort: a re-run of these writes nothing twice anyway.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.record(done, &mut outputs)).await;
        }
        Ok(())
    }

    /// Runs the handler on each element of `elements` from `next` on, in
    /// order, until one fails: those it finished, and the failure.
    async fn run_batch(
        &self,
        engine: &mut Engine,
        spread: &mut Option<Spread>,
        elements: Vec<woof_consensus::topic::Element>,
        next: u64,
        committed: Option<std::time::Instant>,
        stop: &CancellationToken,
    ) -> (Vec<Handled>, Option<Failure>) {
        let mut handled: Vec<Handled> = Vec::with_capacity(elements.len());
        for element in elements {
            if element.seq < next {
                continue;
            }
            if !self.runs_for(&element) {
                // On demand, and its append named another or none.
                handled.push(Handled {
                    seq: element.seq,
                    outputs: Vec::new(),
                    at_ms: 0,
                });
                continue;
            }
            let committed = match committed {
                Some(at) => Committed::At(at),
                None => Committed::AppendedMs(element.append_time_ms),
            };
            match self.handle(engine, spread, &element, committed, stop).await {
                Ok(out) => handled.push(Handled {
                    seq: element.seq,
                    outputs: out,
                    at_ms: self.api.now_ms(),
                }),
                Err(failure) => return (handled, Some(failure)),
            }
        }
        (handled, None)
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
            for e in page.iter().filter(|e| e.seq < next && self.runs_for(e)) {
                handler.observe(e.seq, e.append_time_ms, &e.payload);
            }
            from = last + 1;
        }
        Ok(())
    }

    /// Whether the handler runs for `e`: every element, or (on demand) those
    /// whose append named it.
    fn runs_for(&self, e: &woof_consensus::topic::Element) -> bool {
        !self.handler.spec.on_demand || e.handler.as_deref() == Some(&self.handler.spec.name)
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
        spread: &mut Option<Spread>,
        element: &woof_consensus::topic::Element,
        committed: Committed,
        stop: &CancellationToken,
    ) -> Result<Vec<Output>, Failure> {
        let seq = element.seq;
        let mut pause = BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = std::time::Instant::now();
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            let dispatch_us = match committed {
                Committed::At(at) => started.saturating_duration_since(at).as_micros() as u64,
                Committed::AppendedMs(ms) => now_us.saturating_sub(ms * 1000),
            };
            let (ran, ran_on) = match spread {
                Some(spread) => {
                    spread
                        .run(
                            &self.api,
                            self.topic.as_str(),
                            &self.handler,
                            engine,
                            element,
                        )
                        .await
                }
                None => {
                    let ran = engine
                        .run(seq, element.append_time_ms, &element.payload, &self.api)
                        .await;
                    (ran, String::new())
                }
            };
            let outcome = match (&ran.outputs, ran.overran) {
                (Ok(_), _) => journal::Outcome::Ok,
                (Err(_), true) => journal::Outcome::Timeout,
                (Err(_), false) => journal::Outcome::Error,
            };
            self.api.journal().record(
                &self.topic,
                &self.handler.spec.name,
                journal::Invocation {
                    id: 0,
                    seq,
                    at_ms: now_us / 1000,
                    dispatch_us,
                    duration_us: started.elapsed().as_micros() as u64,
                    outcome,
                    error: ran.outputs.as_ref().err().cloned().unwrap_or_default(),
                    logs: ran.logs,
                    ran_on,
                },
            );
            match ran.outputs {
                Ok(outputs) if outputs.len() > OUTPUTS_MAX => {
                    return Err(Failure::Element {
                        seq,
                        why: format!(
                            "element {seq} gave {} outputs; at most {OUTPUTS_MAX}",
                            outputs.len()
                        ),
                    });
                }
                Ok(outputs) => return Ok(outputs),
                Err(e) => {
                    tracing::warn!(topic = %self.topic, handler = %self.handler.spec.name, seq, attempt, "handler failed: {e}");
                    if attempt == HANDLE_ATTEMPTS {
                        return Err(Failure::Element {
                            seq,
                            why: format!("element {seq}, {attempt} attempts: {e}"),
                        });
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

    /// Records progress up to `done`, with the output topics not yet
    /// recorded.
    async fn record(&self, done: u64, outputs: &mut Outputs) -> Result<bool> {
        let moved = self
            .api
            .handler_done(
                &self.topic,
                &self.handler.spec.name,
                self.handler.version,
                done,
                outputs.new.clone(),
                self.instance.clone(),
            )
            .await?;
        outputs.recorded();
        Ok(moved)
    }
}

/// Appends a runner's outputs, in a task of its own: what the runner sends
/// it (handled elements, in order), one batch at a time, merging what is
/// queued; it tells which element's outputs are all committed.
struct Outbox {
    api: ClusterTopics,
    topic: TopicName,
    handler: String,
    producer: String,
    node: String,
}

/// A started [`Outbox`]: where to send it handled elements, the last
/// element whose outputs it saw committed, and its task (which ends only
/// when the queue is closed, or on a failure).
struct Started {
    queue: mpsc::Sender<Vec<Handled>>,
    emitted: watch::Receiver<u64>,
    task: AbortOnDropHandle<Result<(), Failure>>,
}

/// Batches of handled elements that may wait for the outbox.
const OUTBOX_QUEUE: usize = 4;
/// The most outputs the outbox merges into one round of appends.
const OUTBOX_MERGE: usize = 4096;

impl Outbox {
    /// Starts one for `runner`, whose outputs are committed up to `done`.
    fn start(runner: &Runner, done: u64, stop: &CancellationToken) -> Started {
        let outbox = Self {
            api: runner.api.clone(),
            topic: runner.topic.clone(),
            handler: runner.handler.spec.name.clone(),
            producer: runner.producer.clone(),
            node: runner.node.clone(),
        };
        let (tx, rx) = mpsc::channel(OUTBOX_QUEUE);
        let (done_tx, done_rx) = watch::channel(done);
        let task = tokio::spawn(outbox.run(rx, done_tx, stop.clone()));
        Started {
            queue: tx,
            emitted: done_rx,
            task: AbortOnDropHandle::new(task),
        }
    }

    /// Until the runner closes the queue (`Ok`), or a failure.
    async fn run(
        self,
        mut queue: mpsc::Receiver<Vec<Handled>>,
        done: watch::Sender<u64>,
        stop: CancellationToken,
    ) -> Result<(), Failure> {
        loop {
            let mut handled = tokio::select! {
                _ = stop.cancelled() => return Err(Failure::Stopped),
                next = queue.recv() => match next {
                    Some(handled) => handled,
                    None => return Ok(()),
                },
            };
            let mut count: usize = handled.iter().map(|h| h.outputs.len()).sum();
            while count < OUTBOX_MERGE {
                let Ok(more) = queue.try_recv() else { break };
                count += more.iter().map(|h| h.outputs.len()).sum::<usize>();
                handled.extend(more);
            }
            let Some(last) = handled.last().map(|h| h.seq) else {
                continue;
            };
            self.emit(&handled, &stop).await?;
            done.send_replace(last);
        }
    }

    /// Appends the outputs of `handled` (elements in order), each under its
    /// key: per target topic, in order, in chunks of one log entry each,
    /// one chunk at a time. An output refused for good fails its element;
    /// the other topics still get theirs up to that element.
    async fn emit(&self, handled: &[Handled], stop: &CancellationToken) -> Result<(), Failure> {
        let mut by_topic: Vec<(&str, Vec<Keyed>)> = Vec::new();
        for Handled {
            seq,
            outputs,
            at_ms,
        } in handled
        {
            let seq = *seq;
            let cause = Cause {
                topic: self.topic.to_string(),
                seq,
                handler: self.handler.clone(),
                node: self.node.clone(),
                time_ms: *at_ms,
            };
            if seq >= SEQ_MAX && !outputs.is_empty() {
                return Err(Failure::Element {
                    seq,
                    why: format!("element {seq} is beyond what output keys number"),
                });
            }
            for (i, output) in outputs.iter().enumerate() {
                let key =
                    Producer::new(self.producer.clone(), (seq << 16) | i as u64).map_err(|e| {
                        Failure::Element {
                            seq,
                            why: e.to_string(),
                        }
                    })?;
                let slot = match by_topic.iter().position(|(t, _)| *t == output.topic) {
                    Some(slot) => slot,
                    None => {
                        by_topic.push((output.topic.as_str(), Vec::new()));
                        by_topic.len() - 1
                    }
                };
                by_topic[slot]
                    .1
                    .push((seq, key, output.payload.clone(), cause.clone()));
            }
        }
        let mut first_failed: Option<(u64, String)> = None;
        for (topic, keyed) in by_topic {
            let mut rest = keyed.as_slice();
            while !rest.is_empty() {
                let mut more = rest.iter().skip(1);
                let (fits, _) = woof_consensus::batch::fill(
                    &rest[0],
                    || more.next(),
                    OUTPUT_CHUNK,
                    |(_, _, payload, _)| payload.len() + 64,
                );
                let chunk = &rest[..fits.len()];
                let failed = self.emit_chunk(topic, chunk, stop).await?;
                if let Some((seq, why)) = failed {
                    if first_failed.as_ref().is_none_or(|(s, _)| seq < *s) {
                        first_failed = Some((seq, why));
                    }
                    break;
                }
                rest = &rest[chunk.len()..];
            }
        }
        match first_failed {
            Some((seq, why)) => Err(Failure::Element { seq, why }),
            None => Ok(()),
        }
    }

    /// Appends one chunk of keyed outputs to `topic`, retrying what may
    /// pass. `Some((seq, why))`: the first output refused for good.
    async fn emit_chunk(
        &self,
        topic: &str,
        chunk: &[Keyed],
        stop: &CancellationToken,
    ) -> Result<Option<(u64, String)>, Failure> {
        let mut pause = BACKOFF;
        for attempt in 1..=APPEND_ATTEMPTS {
            let keyed = chunk
                .iter()
                .map(|(_, key, payload, cause)| (key.clone(), payload.clone(), Some(cause.clone())))
                .collect();
            let e = match self.api.append_keyed(topic, keyed).await {
                Ok(results) => {
                    for ((seq, key, ..), result) in chunk.iter().zip(results) {
                        match result {
                            // Appended, or already written by an earlier run
                            // (the newest key: a duplicate; an older one: below
                            // the producer's window).
                            Ok(_) | Err(Error::Log(woof_consensus::Error::ProducerSeq { .. })) => {}
                            Err(e) => {
                                let i = key.seq & 0xffff;
                                return Ok(Some((
                                    *seq,
                                    format!(
                                        "element {seq}: appending output {i} to {topic:?}: {e}"
                                    ),
                                )));
                            }
                        }
                    }
                    return Ok(None);
                }
                Err(e) => e,
            };
            let seq = chunk.first().map_or(0, |(seq, ..)| *seq);
            if !passing(&e) {
                return Ok(Some((
                    seq,
                    format!("element {seq}: appending outputs to {topic:?}: {e}"),
                )));
            }
            if attempt == APPEND_ATTEMPTS {
                return Err(Failure::Passing(e));
            }
            tracing::debug!(topic = %self.topic, seq, attempt, "output append failed: {e}");
            tokio::select! {
                _ = stop.cancelled() => return Err(Failure::Stopped),
                _ = tokio::time::sleep(pause) => {}
            }
            pause *= 2;
        }
        unreachable!("the last attempt returns")
    }
}

/// The producer a handler's outputs are appended as: `~h<group>.<name>`,
/// and for one node's instance (`all(...)`) `@` and the last 16 characters
/// of the node's peer id (its public key's; a whole one would pass the
/// producer id's length limit).
fn producer(group: GroupId, name: &str, instance: Option<&str>) -> String {
    let mut producer = format!("~h{:x}.{name}", group.0);
    if let Some(node) = instance {
        let tail = node.char_indices().rev().nth(15).map_or(0, |(i, _)| i);
        producer.push('@');
        producer.push_str(&node[tail..]);
    }
    producer
}

/// When an element was committed, as the runner can tell.
#[derive(Debug, Clone, Copy)]
enum Committed {
    /// Applied by this node's replica then.
    At(std::time::Instant),
    /// No replica here: the leader's wall-clock time of the append (in ms,
    /// taken before the commit, so the dispatch looks a little longer).
    AppendedMs(u64),
}

/// An output ready to append: its element, its key, its payload, its cause.
type Keyed = (u64, Producer, Bytes, Cause);

/// One element the handler ran on: its outputs, and when it ran.
struct Handled {
    seq: u64,
    outputs: Vec<Output>,
    at_ms: u64,
}

/// The topics a handler appends to, as its record in the group names them
/// (where a trace looks for an element's effects), and those to add.
struct Outputs {
    known: std::collections::BTreeSet<String>,
    new: Vec<String>,
}

impl Outputs {
    fn new(recorded: &[String]) -> Self {
        Self {
            known: recorded.iter().cloned().collect(),
            new: Vec::new(),
        }
    }

    /// Notes the output topics of `handled` (before their outputs are
    /// appended: a name recorded early costs a trace one empty lookup).
    fn saw(&mut self, handled: &[Handled]) {
        if self.known.len() >= OUTPUT_TOPICS_MAX {
            return;
        }
        for output in handled.iter().flat_map(|h| &h.outputs) {
            if self.known.len() < OUTPUT_TOPICS_MAX && self.known.insert(output.topic.clone()) {
                self.new.push(output.topic.clone());
            }
        }
    }

    /// The new ones are in the group's record now.
    fn recorded(&mut self) {
        self.new.clear();
    }
}

/// Why one element was not finished.
enum Failure {
    /// The runner was told to stop.
    Stopped,
    /// Something that may pass (the network, a leader change): the runner
    /// stops, and starts again later where it stopped.
    Passing(Error),
    /// Element `seq` itself fails (the handler raises, an output is
    /// refused): the handler is parked there.
    Element { seq: u64, why: String },
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
