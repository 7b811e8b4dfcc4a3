//! Handlers: code that runs once for every committed element of a topic
//! (DESIGN.md, "Handlers").
//!
//! Layout:
//! - this file: [`check`] (what a deploy must pass) and the [`Supervisor`],
//!   which starts a runner for each handler placed on this node (by the
//!   topics it leads, or by a lease from another topic's leader), and
//!   stops it when it is placed here no more or the handler changed.
//! - [`runner`]: one handler's loop: feed it the elements from where it
//!   stopped, append its outputs under keys that make a re-run write
//!   nothing twice, and record how far it got in the topic's group.
//! - [`code`]: what a runner runs, native or Python (in a sandboxed
//!   worker process, `woof_python`), behind one call.
//! - [`journal`]: what each handler did here, recently (`handler logs`).
//! - [`native`]: the handlers compiled into the node.
//!
//! The definitions and progress are the topic's group state
//! (`woof_consensus::topic::handlers`), so whichever node leads the topic
//! next resumes where the last one stopped.
//!
//! - [`placement`]: placement expressions, and the node one chooses.
//! - [`adaptive`]: `adaptive()`, each invocation sent to the candidate with
//!   the shortest measured time to result; [`invoker`] runs those sent
//!   here.
//!
//! Where a handler runs: the topic's leader evaluates its placement over
//! the live nodes each step. If it chose itself, it runs the handler; if
//! another node, it sends that node a lease (renewed every second, good
//! for three) and that node runs the handler while the lease holds,
//! following the topic over the overlay if it holds no replica. When the
//! leadership moves, a handler the old leader ran goes on there while the
//! placement under the new leader (as the old one sees it) still picks the
//! old one, for up to a lease's time, until the new leader's lease renews
//! it (ADR 46): an `all(...)` instance does not stop and start again. A move
//! may let two runners overlap for a moment; keyed outputs and progress
//! that only goes forward make that harmless (ADR 11). A handler placed by
//! `all(EXPR)` runs so on every node EXPR matches, each instance with its
//! own progress and output keys (ADR 16).

pub mod adaptive;
pub mod code;
pub mod invoker;
pub mod journal;
pub mod native;
pub mod placement;
pub mod runner;

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use woof_consensus::store::GroupId;
use woof_consensus::topic::TopicName;
use woof_consensus::topic::handlers::{Code, Handler, HandlerSpec};

use crate::api::ClusterTopics;
use crate::error::{Error, Result};
use crate::groups::{Groups, HandlerLease};
use crate::shutdown::Shutdown;

/// How often the supervisor looks at which topics this node leads.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// How often a topic's leader renews the lease of a handler placed on
/// another node...
const LEASE_EVERY: Duration = Duration::from_secs(1);
/// ...and how long that node runs it without a renewal.
const LEASE: Duration = Duration::from_secs(3);
/// How long a runner that failed waits before it is started again.
const RESTART_AFTER: Duration = Duration::from_secs(5);
/// The most handlers one node runs at once; past this, the rest wait (and
/// their groups stay awake, so they run once others finish or move).
pub const RUNNERS_MAX: usize = 10_000;

/// The longest time budget a handler may ask for...
pub const TIME_BUDGET_MS_MAX: u32 = 60_000;
/// ...and the largest memory cap.
pub const MEMORY_MIB_MAX: u32 = 1024;

/// Checks what a deploy or update carries beyond names and sizes: that the
/// code exists and its config suits it (a Python handler is loaded in a
/// worker of its own: it must compile, run and define `handle`), and that
/// the placement is known.
pub async fn check(spec: &HandlerSpec, topic: &str, python: &code::Python) -> Result<()> {
    spec.check()?;
    if spec.time_budget_ms > TIME_BUDGET_MS_MAX {
        return Err(Error::Usage(format!(
            "a time budget of {} ms; at most {TIME_BUDGET_MS_MAX}",
            spec.time_budget_ms
        )));
    }
    if spec.memory_mib > MEMORY_MIB_MAX {
        return Err(Error::Usage(format!(
            "a memory cap of {} MiB; at most {MEMORY_MIB_MAX}",
            spec.memory_mib
        )));
    }
    match &spec.code {
        Code::Native(name) => {
            native::build(name, &spec.config).map_err(Error::Usage)?;
        }
        Code::Python(source) => python.check(spec, topic, source).await?,
    }
    let expr = placement::Expr::parse(&spec.placement)
        .map_err(|e| Error::Usage(format!("placement {:?}: {e}", spec.placement)))?;
    if expr.is_adaptive()
        && let Code::Native(name) = &spec.code
        && native::build(name, &spec.config).is_ok_and(|n| n.history() > 0)
    {
        return Err(Error::Usage(format!(
            "placement {:?}: adaptive() runs each element where it is fastest, so the \
             handler must keep no state between elements; {name} does",
            spec.placement
        )));
    }
    Ok(())
}

/// The nodes `h`'s placement puts it on, among `nodes`.
fn placed<'a>(
    h: &Handler,
    nodes: &'a [placement::Candidate],
    topic: placement::Topic<'_>,
) -> Vec<&'a placement::Candidate> {
    // Checked at deploy; a placement that no longer parses (from a newer
    // node) runs where the default puts it.
    let expr = placement::Expr::parse(&h.spec.placement).unwrap_or(placement::Expr::Leader);
    placement::placements(&expr, nodes, topic)
}

/// A handler a node placed on itself as its topic's leader.
struct Led {
    group: GroupId,
    handler: Handler,
    hold: Hold,
}

/// How long a node may go on running a handler it placed on itself as
/// its topic's leader, once it no longer leads (ADR 46).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold {
    until: tokio::time::Instant,
    /// The leader under which `until` was set (this node while it leads).
    under: String,
}

impl Hold {
    /// Renewed at each step this node leads and places the handler here.
    fn leading(me: &str, now: tokio::time::Instant) -> Self {
        Self {
            until: now + LEASE,
            under: me.to_string(),
        }
    }

    /// At a step where `leader` (empty: none known, an election) leads
    /// the topic: kept while the placement under that leader still puts
    /// the handler here (`stays`), with a lease's time under each leader
    /// for that leader's own lease to arrive; through an election, for
    /// what is left of that time. `None`: stop it.
    fn after_leading(
        mut self,
        leader: &str,
        stays: impl FnOnce() -> bool,
        now: tokio::time::Instant,
    ) -> Option<Self> {
        if !leader.is_empty() {
            if !stays() {
                return None;
            }
            if self.under != leader {
                self.until = now + LEASE;
                self.under = leader.to_string();
            }
        }
        (self.until > now).then_some(self)
    }
}

/// Which runner runs: a handler of a topic at one version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    topic: TopicName,
    handler: String,
    version: u64,
}

/// Starts and stops this node's runners, and places the handlers of the
/// topics it leads.
pub struct Supervisor {
    api: ClusterTopics,
    groups: Groups,
    shutdown: Shutdown,
    running: HashMap<Key, (CancellationToken, tokio::task::JoinHandle<()>)>,
    /// Runners that ended on their own (a failure), and when.
    failed: HashMap<Key, tokio::time::Instant>,
    /// Whether it said it is at [`RUNNERS_MAX`] (said once, not each step).
    full: bool,
    /// Handlers other nodes' topics placed here: what to run, and until when.
    leased: HashMap<Key, (GroupId, Handler, tokio::time::Instant)>,
    /// Handlers this node placed on itself as its topic's leader.
    led: HashMap<Key, Led>,
    leases: Option<tokio::sync::mpsc::Receiver<HandlerLease>>,
    /// When this node last sent each lease it gives (to a node).
    given: HashMap<(Key, woof_overlay::PeerId), tokio::time::Instant>,
}

impl Supervisor {
    /// Spawns the supervisor on the node's task tracker; it ends with the node.
    pub fn spawn(api: ClusterTopics, groups: Groups, shutdown: Shutdown) {
        if let Some(invocations) = groups.take_invokes() {
            invoker::spawn(api.clone(), invocations, shutdown.clone());
        }
        let me = Self {
            api,
            groups: groups.clone(),
            shutdown: shutdown.clone(),
            running: HashMap::new(),
            failed: HashMap::new(),
            full: false,
            leased: HashMap::new(),
            led: HashMap::new(),
            leases: groups.take_leases(),
            given: HashMap::new(),
        };
        shutdown.spawn(me.run());
    }

    async fn run(mut self) {
        loop {
            tokio::select! {
                _ = self.shutdown.requested() => break,
                _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
            }
            self.step().await;
        }
        for (_, (token, task)) in self.running.drain() {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Places the handlers of the topics this node leads (here, or on the
    /// node their placement chose, by lease), then starts the runners that
    /// should run here and are not, and stops the others.
    async fn step(&mut self) {
        let now = tokio::time::Instant::now();
        if let Some(leases) = &mut self.leases {
            while let Ok(lease) = leases.try_recv() {
                let Ok(topic) = TopicName::new(&lease.topic) else {
                    continue;
                };
                let key = Key {
                    topic,
                    handler: lease.handler.spec.name.clone(),
                    version: lease.handler.version,
                };
                let until =
                    now + Duration::from_millis(lease.lease_ms.min(LEASE.as_millis() as u64));
                self.leased.insert(key, (lease.group, lease.handler, until));
            }
        }
        self.leased.retain(|_, (_, _, until)| *until > now);
        let nodes = match self.api.candidates().await {
            Ok(nodes) => nodes,
            Err(e) => {
                // Without a view of the cluster nothing can be placed:
                // leave everything as it is until the next step.
                tracing::debug!("handler placement has no view of the cluster: {e}");
                return;
            }
        };
        let me = self.api.me();
        let mut wanted = HashMap::new();
        let mut giving = HashMap::new();
        let mut led = HashMap::new();
        for (id, topic, handlers) in self.api.local_topics().handled() {
            let group = GroupId(id.0);
            let leads = self.groups.leads(group);
            let replica = self.groups.replica(group);
            // Led here, the placement is this node's to make. Led elsewhere,
            // it only tells whether a handler this node ran as the leader
            // would stay here under the leader it knows (none known: an
            // election, which keeps it until its time is up).
            let leader = match (leads, replica.as_ref().and_then(|r| r.leader.as_ref())) {
                (true, _) => &me,
                (false, Some(leader)) => leader,
                (false, None) => "",
            };
            let replicas = replica
                .as_ref()
                .map(|r| r.members.as_slice())
                .unwrap_or_default();
            let of = placement::Topic { leader, replicas };
            for h in handlers.iter().filter(|h| h.parked.is_none()) {
                let key = Key {
                    topic: topic.clone(),
                    handler: h.spec.name.clone(),
                    version: h.version,
                };
                if !leads {
                    let stays = || {
                        placed(h, &nodes, of)
                            .iter()
                            .any(|c| c.peer.to_string() == me)
                    };
                    if let Some(kept) = self.led.remove(&key)
                        && let Some(hold) = kept.hold.after_leading(leader, stays, now)
                    {
                        led.insert(key, Led { hold, ..kept });
                    }
                    continue;
                }
                // Nothing matches: it waits (describe shows it).
                for c in placed(h, &nodes, of) {
                    if c.peer.to_string() == me {
                        let held = Led {
                            group,
                            handler: h.clone(),
                            hold: Hold::leading(&me, now),
                        };
                        led.insert(key.clone(), held);
                    } else {
                        giving.insert((key.clone(), c.peer), (group, h.clone()));
                    }
                }
            }
        }
        self.led = led;
        self.give_leases(giving, now);
        let led = self.led.iter().map(|(k, l)| (k, &l.group, &l.handler));
        let leased = self.leased.iter().map(|(k, (g, h, _))| (k, g, h));
        for (key, group, handler) in led.chain(leased) {
            wanted
                .entry(key.clone())
                .or_insert_with(|| (*group, handler.clone()));
        }
        let failed = &mut self.failed;
        self.running.retain(|key, (token, task)| {
            if task.is_finished() {
                failed.insert(key.clone(), now);
                return false;
            }
            let keep = wanted.contains_key(key);
            if !keep {
                token.cancel();
            }
            keep
        });
        self.failed
            .retain(|key, at| wanted.contains_key(key) && now.duration_since(*at) < RESTART_AFTER);
        for (key, (group, handler)) in wanted {
            if self.running.contains_key(&key) || self.failed.contains_key(&key) {
                continue;
            }
            if self.running.len() >= RUNNERS_MAX {
                if !self.full {
                    tracing::warn!(
                        max = RUNNERS_MAX,
                        "this node runs as many handlers as it may"
                    );
                }
                self.full = true;
                return;
            }
            let token = CancellationToken::new();
            let runner = runner::Runner::new(self.api.clone(), group, key.topic.clone(), handler);
            let task = self.shutdown.spawn(runner.run(token.clone()));
            self.running.insert(key, (token, task));
        }
        self.full = false;
    }

    /// Sends each lease to the node that should run the handler, once every
    /// [`LEASE_EVERY`] (and at once when it moves).
    fn give_leases(
        &mut self,
        giving: HashMap<(Key, woof_overlay::PeerId), (GroupId, Handler)>,
        now: tokio::time::Instant,
    ) {
        self.given.retain(|to, _| giving.contains_key(to));
        for (to, (group, handler)) in giving {
            if self
                .given
                .get(&to)
                .is_some_and(|at| now.duration_since(*at) < LEASE_EVERY)
            {
                continue;
            }
            self.given.insert(to.clone(), now);
            let (key, peer) = to;
            let lease = HandlerLease {
                group,
                topic: key.topic.to_string(),
                handler,
                lease_ms: LEASE.as_millis() as u64,
            };
            let groups = self.groups.clone();
            self.shutdown.spawn(async move {
                if let Err(e) = groups.lease(peer, lease).await {
                    tracing::debug!(%peer, "handler lease not given: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn a_handler_led_here_stays_while_the_new_leaders_placement_keeps_it_here() {
        let t0 = Instant::now();
        let led = Hold::leading("a", t0);
        // The placement under the new leader moves it (leader()): stopped.
        assert_eq!(led.clone().after_leading("b", || false, t0), None);
        // It stays here (all(...)): a lease's time from when b is known,
        // not from when a last led.
        let later = t0 + LEASE - Duration::from_millis(100);
        let kept = led.clone().after_leading("b", || true, later).unwrap();
        assert_eq!(kept.until, later + LEASE);
        assert_eq!(kept.under, "b");
        // Under the same leader the time is not renewed again...
        let again = kept.clone().after_leading("b", || true, later + LEASE / 2);
        assert_eq!(again, Some(kept.clone()));
        // ...and runs out, unless b's own lease took over.
        assert_eq!(
            kept.clone().after_leading("b", || true, later + LEASE),
            None
        );
        // A next leader gives it a lease's time again.
        let next = kept.after_leading("c", || true, later + LEASE / 2).unwrap();
        assert_eq!(next.until, later + LEASE / 2 + LEASE);
        // No leader known (an election): what is left, with no placement
        // to judge by.
        let mid = t0 + LEASE / 2;
        let judged = || panic!("no leader to place by");
        assert_eq!(
            led.clone().after_leading("", judged, mid),
            Some(led.clone())
        );
        assert_eq!(led.after_leading("", judged, t0 + LEASE), None);
    }
}
