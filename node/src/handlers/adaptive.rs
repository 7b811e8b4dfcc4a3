//! `adaptive()`: where each invocation runs, by measured time to result
//! (NanoLambda's scheduler).
//!
//! The runner keeps a [`Scheduler`] over the candidate nodes (those the
//! rest of the placement expression admits). Each invocation goes to the
//! candidate whose time to result is lowest, a candidate's time being the
//! lesser of its last two measurements, so that one slow run (a pause, a
//! busy moment) does not send the rest of a window elsewhere: two in a row
//! do. A candidate not measured since the last reset is tried first. Every
//! [`FORGET_EVERY`] invocations it resets (the paper resets its history
//! every 16): every candidate is measured once afresh, and that time is
//! taken with its last one from before the reset, so one that was slow for
//! a while wins its share back at once when it is fast again, and one that
//! went slow costs at most one more invocation. A failure counts as slower
//! than any time until the next reset. The device's chooser
//! (`woof_mcu_bridge::offload`) is the same policy over two sides. Pure:
//! times go in, choices come out.

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

/// One candidate's measurements.
#[derive(Debug, Clone, Copy)]
struct Times {
    /// The last time to result, then the one before it (`Duration::MAX`
    /// where there is none yet, which the lesser of the two then ignores),
    /// kept across resets for the fresh time to be taken with.
    last_two: [Duration; 2],
    /// Measured since the last reset. A candidate that is not is tried
    /// first, so that each reset measures every candidate afresh.
    fresh: bool,
}

/// Chooses a node per invocation among `candidates` (peer ids).
#[derive(Debug, Clone)]
pub struct Scheduler {
    candidates: Vec<String>,
    /// What was measured of each candidate; only candidates are kept, so
    /// at most [`CANDIDATES_MAX`] once the runner has set them.
    measured: HashMap<String, Times>,
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
    /// since the last reset, else the fastest by the lesser of its last
    /// two times (the first of equals). `None` without candidates.
    pub fn pick(&mut self) -> Option<&str> {
        if self.since_reset >= FORGET_EVERY {
            // Every candidate is measured afresh; its times stay as the
            // ones before, for the fresh one to be taken with.
            for times in self.measured.values_mut() {
                times.fresh = false;
            }
            self.since_reset = 0;
        }
        self.since_reset += 1;
        let unmeasured = self
            .candidates
            .iter()
            .find(|c| !self.measured.get(*c).is_some_and(|t| t.fresh));
        let chosen = unmeasured.or_else(|| self.candidates.iter().min_by_key(|c| self.time(c)))?;
        Some(chosen.as_str())
    }

    /// The time `candidate` counts as: the lesser of its last two.
    fn time(&self, candidate: &str) -> Duration {
        self.measured
            .get(candidate)
            .map_or(Duration::MAX, |t| t.last_two[0].min(t.last_two[1]))
    }

    /// Records how long `candidate` took to give its result.
    pub fn record(&mut self, candidate: &str, took: Duration) {
        if self.candidates.iter().any(|c| c == candidate) {
            let times = self.measured.entry(candidate.to_string()).or_insert(Times {
                last_two: [Duration::MAX; 2],
                fresh: false,
            });
            times.last_two = [took, times.last_two[0]];
            times.fresh = true;
        }
    }

    /// `candidate` could not be reached or would not run it: it counts as
    /// slower than any time until the next reset. Both of its times, or
    /// the lesser of the two would hide the failure; after the reset its
    /// fresh time counts alone (the lesser of it and this).
    pub fn failed(&mut self, candidate: &str) {
        self.record(candidate, Duration::MAX);
        self.record(candidate, Duration::MAX);
    }
}

/// How often a runner looks again at which nodes are candidates.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

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
                    self.scheduler.failed(&chosen);
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

    /// Runs `n` invocations where `cost` says how long each takes (given
    /// the candidate and the invocation's number from 0); returns where
    /// each went.
    fn picks(s: &mut Scheduler, n: u32, cost: impl Fn(&str, u32) -> Duration) -> Vec<String> {
        (0..n)
            .map(|i| {
                let c = s.pick().unwrap().to_string();
                s.record(&c, cost(&c, i));
                c
            })
            .collect()
    }

    fn went(picks: &[String], to: &str) -> usize {
        picks.iter().filter(|c| *c == to).count()
    }

    #[test]
    fn one_slow_run_does_not_send_the_rest_of_the_window_elsewhere_two_do() {
        let mut s = Scheduler::new(vec!["here".into(), "there".into()]);
        let here_slow_at = |slow: &'static [u32]| {
            move |c: &str, i| match c {
                "here" if slow.contains(&i) => 30 * MS,
                "here" => MS,
                _ => 2 * MS,
            }
        };
        let one = picks(&mut s, FORGET_EVERY, here_slow_at(&[2]));
        assert_eq!(went(&one, "there"), 1, "only its probe: {one:?}");
        let two = picks(&mut s, FORGET_EVERY, here_slow_at(&[2, 3]));
        assert_eq!(two[..4], ["here", "there", "here", "here"]);
        assert_eq!(went(&two[4..], "here"), 0, "{two:?}");
    }

    #[test]
    fn a_fresh_probe_after_the_reset_is_taken_with_the_time_before_it() {
        let mut s = Scheduler::new(vec!["here".into(), "there".into()]);
        let cost = |here| move |c: &str, _| if c == "here" { here } else { 2 * MS };
        picks(&mut s, FORGET_EVERY, cost(MS));
        // Its probe after the reset is slow: its time before still counts.
        let probe_slow = picks(&mut s, FORGET_EVERY, |c, i| match (c, i) {
            ("here", 0) => 30 * MS,
            ("here", _) => MS,
            _ => 2 * MS,
        });
        assert_eq!(went(&probe_slow, "there"), 1, "{probe_slow:?}");
        // Slow for good: one more invocation than its probe, then there.
        let slow = picks(&mut s, FORGET_EVERY, cost(30 * MS));
        assert_eq!(slow[..3], ["here", "there", "here"]);
        assert_eq!(went(&slow, "here"), 2, "{slow:?}");
        // Fast again: it wins at once on its probe.
        let fast = picks(&mut s, FORGET_EVERY, cost(MS));
        assert_eq!(went(&fast, "there"), 1, "{fast:?}");
    }

    #[test]
    fn a_failure_counts_at_once_until_the_reset_then_the_fresh_time_does() {
        let mut s = Scheduler::new(vec!["here".into(), "there".into()]);
        picks(&mut s, 3, |c, _| if c == "here" { 5 * MS } else { MS });
        // "there" was faster, then fails: its good time must not hide it.
        s.failed("gone");
        assert_eq!(s.pick(), Some("there"), "a stranger's failure is ignored");
        s.failed("there");
        let rest = picks(&mut s, FORGET_EVERY - 4, |_, _| 5 * MS);
        assert_eq!(went(&rest, "there"), 0, "{rest:?}");
        // After the reset it is tried again, and its fresh time counts.
        let after = picks(
            &mut s,
            FORGET_EVERY,
            |c, _| if c == "here" { 5 * MS } else { MS },
        );
        assert_eq!(went(&after, "here"), 1, "{after:?}");
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
