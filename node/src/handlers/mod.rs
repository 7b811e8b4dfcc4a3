//! Handlers: code that runs once for every committed element of a topic
//! (DESIGN.md, "Handlers").
//!
//! Layout:
//! - this file: [`check`] (what a deploy must pass) and the [`Supervisor`],
//!   which starts a runner for each handler of each topic this node leads,
//!   and stops it when the node no longer leads the topic or the handler
//!   changed.
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
//! Placement is `leader()` for now: a handler runs on its topic's leader.

pub mod code;
pub mod journal;
pub mod native;
pub mod runner;

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use woof_consensus::store::GroupId;
use woof_consensus::topic::TopicName;
use woof_consensus::topic::handlers::{Code, HandlerSpec};

use crate::api::ClusterTopics;
use crate::error::{Error, Result};
use crate::groups::Groups;
use crate::shutdown::Shutdown;

/// How often the supervisor looks at which topics this node leads.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// How long a runner that failed waits before it is started again.
const RESTART_AFTER: Duration = Duration::from_secs(5);
/// The most handlers one node runs at once; past this, the rest wait (and
/// their groups stay awake, so they run once others finish or move).
pub const RUNNERS_MAX: usize = 10_000;

/// Checks what a deploy or update carries beyond names and sizes: that the
/// code exists and its config suits it (a Python handler is loaded in a
/// worker of its own: it must compile, run and define `handle`), and that
/// the placement is known.
pub async fn check(spec: &HandlerSpec, topic: &str, python: &code::Python) -> Result<()> {
    spec.check()?;
    match &spec.code {
        Code::Native(name) => {
            native::build(name, &spec.config).map_err(Error::Usage)?;
        }
        Code::Python(source) => python.check(spec, topic, source).await?,
    }
    let placement = spec.placement.trim();
    if !placement.is_empty() && placement != "leader()" {
        return Err(Error::Usage(format!(
            "placement {placement:?}: this node places handlers by `leader()` only"
        )));
    }
    Ok(())
}

/// Which runner runs: a handler of a topic at one version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    topic: TopicName,
    handler: String,
    version: u64,
}

/// Starts and stops this node's runners.
pub struct Supervisor {
    api: ClusterTopics,
    groups: Groups,
    shutdown: Shutdown,
    running: HashMap<Key, (CancellationToken, tokio::task::JoinHandle<()>)>,
    /// Runners that ended on their own (a failure), and when.
    failed: HashMap<Key, tokio::time::Instant>,
    /// Whether it said it is at [`RUNNERS_MAX`] (said once, not each step).
    full: bool,
}

impl Supervisor {
    /// Spawns the supervisor on the node's task tracker; it ends with the node.
    pub fn spawn(api: ClusterTopics, groups: Groups, shutdown: Shutdown) {
        let me = Self {
            api,
            groups,
            shutdown: shutdown.clone(),
            running: HashMap::new(),
            failed: HashMap::new(),
            full: false,
        };
        shutdown.spawn(me.run());
    }

    async fn run(mut self) {
        loop {
            tokio::select! {
                _ = self.shutdown.requested() => break,
                _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
            }
            self.step();
        }
        for (_, (token, task)) in self.running.drain() {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Starts the runners that should run and are not, stops the others.
    fn step(&mut self) {
        let mut wanted = HashMap::new();
        for (id, topic, handlers) in self.api.local_topics().handled() {
            let group = GroupId(id.0);
            if !self.groups.leads(group) {
                continue;
            }
            for h in handlers.iter().filter(|h| h.parked.is_none()) {
                let key = Key {
                    topic: topic.clone(),
                    handler: h.spec.name.clone(),
                    version: h.version,
                };
                wanted.insert(key, (group, h.clone()));
            }
        }
        let now = tokio::time::Instant::now();
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
}
