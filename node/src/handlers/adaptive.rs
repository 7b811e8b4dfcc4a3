//! `adaptive()`: where each invocation runs, by measured time to result
//! (NanoLambda's scheduler).
//!
//! The runner keeps a [`Scheduler`] over the candidate nodes (those the
//! rest of the placement expression admits). Each invocation goes to the
//! candidate with the lowest time to result measured so far; a candidate
//! not yet measured is tried first. Every [`FORGET_EVERY`] invocations the
//! measurements are forgotten (the paper resets its history every 16), so
//! every candidate is tried again: one that was slow for a while wins its
//! share back once it is fast again. Pure: times go in, choices come out.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use woof_consensus::topic::Element;
use woof_consensus::topic::handlers::Handler;

use super::code::{Engine, Ran};
use super::native::Output;
use super::placement::{self, Expr};
use crate::api::ClusterTopics;
use crate::groups::HandlerInvoke;

/// Invocations between two resets of what was measured.
pub const FORGET_EVERY: u32 = 16;
/// The most candidates one handler is spread over.
pub const CANDIDATES_MAX: usize = 8;

/// Chooses a node per invocation among `candidates` (peer ids).
#[derive(Debug, Clone)]
pub struct Scheduler {
    candidates: Vec<String>,
    /// The last time to result measured for each, since the last reset.
    measured: HashMap<String, Duration>,
    /// Invocations since the last reset.
    since_reset: u32,
}

impl Scheduler {
    pub fn new(candidates: Vec<String>) -> Self {
        Self {
            candidates,
            measured: HashMap::new(),
            since_reset: 0,
        }
    }

    pub fn candidates(&self) -> &[String] {
        &self.candidates
    }

    /// Takes a new candidate list (the cluster changed), keeping what was
    /// measured of those still in it.
    pub fn set_candidates(&mut self, candidates: Vec<String>) {
        if candidates != self.candidates {
            self.measured.retain(|c, _| candidates.contains(c));
            self.candidates = candidates;
        }
    }

    /// The candidate the next invocation goes to: the first not measured
    /// since the last reset, else the fastest. `None` without candidates.
    pub fn pick(&mut self) -> Option<&str> {
        if self.since_reset >= FORGET_EVERY {
            self.measured.clear();
            self.since_reset = 0;
        }
        self.since_reset += 1;
        let unmeasured = self
            .candidates
            .iter()
            .find(|c| !self.measured.contains_key(*c));
        let chosen = unmeasured.or_else(|| {
            self.candidates
                .iter()
                .min_by_key(|c| self.measured.get(*c).copied().unwrap_or(Duration::MAX))
        })?;
        Some(chosen.as_str())
    }

    /// Records how long `candidate` took to give its result (or to fail:
    /// a failure counts as `took`, which the caller makes long).
    pub fn record(&mut self, candidate: &str, took: Duration) {
        if self.candidates.iter().any(|c| c == candidate) {
            self.measured.insert(candidate.to_string(), took);
        }
    }
}

/// How often a runner looks again at which nodes are candidates.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// What a candidate that could not be reached counts as having taken.
const UNREACHABLE: Duration = Duration::from_secs(10);

/// An `adaptive()` handler's invocations, each sent where it is fastest.
pub struct Spread {
    expr: Expr,
    scheduler: Scheduler,
    refreshed: Option<Instant>,
    me: String,
}

impl Spread {
    /// The spread of a handler whose placement uses `adaptive()`.
    pub fn of(handler: &Handler, me: String) -> Option<Self> {
        let expr = Expr::parse(&handler.spec.placement).ok()?;
        expr.is_adaptive().then(|| Self {
            expr,
            scheduler: Scheduler::new(vec![me.clone()]),
            refreshed: None,
            me,
        })
    }

    /// The candidates now: live nodes the expression admits, this node
    /// first if it is one, then by peer id, at most [`CANDIDATES_MAX`].
    async fn refresh(&mut self, api: &ClusterTopics, topic: &str) {
        if self
            .refreshed
            .is_some_and(|at| at.elapsed() < REFRESH_EVERY)
        {
            return;
        }
        self.refreshed = Some(Instant::now());
        let (Ok(nodes), Ok(view)) = (api.candidates().await, api.describe(topic).await) else {
            return; // Keep the last list until the cluster answers.
        };
        let leader = view.leader.unwrap_or_default();
        let held = placement::Topic {
            leader: &leader,
            replicas: &view.replicas,
        };
        let mut chosen: Vec<String> = nodes
            .iter()
            .filter(|c| c.alive && self.expr.matches(c, held))
            .map(|c| c.peer.to_string())
            .collect();
        chosen.sort_by_key(|p| (*p != self.me, p.clone()));
        chosen.truncate(CANDIDATES_MAX);
        if chosen.is_empty() {
            // Nothing matches now: run here rather than not at all.
            chosen.push(self.me.clone());
        }
        self.scheduler.set_candidates(chosen);
    }

    /// Runs `handler` on `element` where it is fastest now: here with
    /// `engine`, or on another candidate. Returns what it gave, and the
    /// node it ran on if not this one.
    pub async fn run(
        &mut self,
        api: &ClusterTopics,
        topic: &str,
        handler: &Handler,
        engine: &mut Engine,
        element: &Element,
    ) -> (Ran, String) {
        self.refresh(api, topic).await;
        let chosen = self.scheduler.pick().unwrap_or(&self.me).to_string();
        let started = std::time::Instant::now();
        if chosen != self.me {
            let invoke = HandlerInvoke {
                topic: topic.to_string(),
                handler: handler.spec.name.clone(),
                version: handler.version,
                seq: element.seq,
                time_ms: element.append_time_ms,
                payload: element.payload.clone(),
            };
            let budget = Duration::from_millis(u64::from(handler.spec.time_budget_ms).max(1000));
            match api
                .invoke(&chosen, invoke, budget + Duration::from_secs(2))
                .await
            {
                Ok(reply) => {
                    self.scheduler.record(&chosen, started.elapsed());
                    let ran = Ran {
                        outputs: reply.outputs.map(|outputs| {
                            outputs
                                .into_iter()
                                .map(|(topic, payload)| Output { topic, payload })
                                .collect()
                        }),
                        logs: reply.logs,
                        overran: reply.overran,
                    };
                    return (ran, chosen);
                }
                Err(e) => {
                    // Unreachable, or it would not run it: it runs here.
                    tracing::debug!(%topic, handler = %handler.spec.name, node = %chosen, "invocation not sent: {e}");
                    self.scheduler.record(&chosen, UNREACHABLE);
                }
            }
        }
        let started = std::time::Instant::now();
        let ran = engine
            .run(element.seq, element.append_time_ms, &element.payload, api)
            .await;
        self.scheduler.record(&self.me, started.elapsed());
        (ran, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs `n` invocations where `cost` says how long each candidate
    /// takes; returns how many went to each.
    fn run(s: &mut Scheduler, n: usize, cost: impl Fn(&str) -> Duration) -> HashMap<String, usize> {
        let mut count = HashMap::new();
        for _ in 0..n {
            let c = s.pick().unwrap().to_string();
            s.record(&c, cost(&c));
            *count.entry(c).or_default() += 1;
        }
        count
    }

    #[test]
    fn most_invocations_go_to_the_fastest_and_come_back_after_a_spike() {
        let mut s = Scheduler::new(vec!["here".into(), "there".into()]);
        // "here" is slowed down: "there" gets all but the probes.
        let slow_here = run(&mut s, 160, |c| if c == "here" { 30 * MS } else { 2 * MS });
        assert_eq!(slow_here["here"], 10, "one probe per 16: {slow_here:?}");
        assert_eq!(slow_here["there"], 150);
        // It recovers: within one reset it wins its share back, and more,
        // being faster.
        let recovered = run(&mut s, 160, |c| if c == "here" { MS / 2 } else { 2 * MS });
        assert!(recovered["here"] >= 140, "{recovered:?}");
    }

    #[test]
    fn every_candidate_is_tried_before_any_is_preferred() {
        let mut s = Scheduler::new(vec!["a".into(), "b".into(), "c".into()]);
        let first: Vec<String> = (0..3)
            .map(|_| {
                let c = s.pick().unwrap().to_string();
                s.record(&c, MS);
                c
            })
            .collect();
        assert_eq!(first, ["a", "b", "c"]);
        assert!(Scheduler::new(vec![]).pick().is_none());
    }

    #[test]
    fn a_changed_candidate_list_keeps_what_it_can() {
        let mut s = Scheduler::new(vec!["a".into(), "b".into()]);
        run(&mut s, 2, |c| if c == "a" { 5 * MS } else { MS });
        s.set_candidates(vec!["b".into(), "c".into()]);
        // "c" is new: tried first; then "b" (measured, fast) wins.
        assert_eq!(s.pick(), Some("c"));
        s.record("c", 9 * MS);
        s.record("gone", MS);
        assert_eq!(s.pick(), Some("b"));
    }
}
