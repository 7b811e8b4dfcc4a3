//! The handlers bound to a topic, and how far each has got: state that a
//! topic's group replicates with its elements, so every replica knows the
//! handlers and where each stopped (DESIGN.md, "Handlers").
//!
//! [`Handlers::decide`] is the whole rule, pure: given the table, the
//! topic's last sequence and a [`HandlerCommand`], it changes the table and
//! says what happened. Running the handlers is the node's business.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The most handlers one topic has.
pub const HANDLERS_MAX: usize = 16;
/// The longest handler name, in bytes.
pub const HANDLER_NAME_BYTES_MAX: usize = 64;
/// The largest handler source (Python) or builtin name.
pub const HANDLER_CODE_BYTES_MAX: usize = 64 * 1024;
/// The largest handler config (JSON text).
pub const HANDLER_CONFIG_BYTES_MAX: usize = 16 * 1024;
/// Handlers run for elements below this (their outputs' keys number the
/// element in 47 bits).
pub const SEQ_MAX: u64 = 1 << 47;
/// The longest placement expression.
pub const PLACEMENT_BYTES_MAX: usize = 1024;
/// The most output topics a handler's record names (for traces): a
/// handler that appends to more is traced into the first this many.
pub const OUTPUT_TOPICS_MAX: usize = 64;
/// The most instances a handler placed on every matching node
/// (`all(...)`) keeps progress for.
pub const INSTANCES_MAX: usize = 64;

/// What a handler runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Code {
    /// A Rust function compiled into the node, by its registered name.
    Native(String),
    /// Python source defining `handle(ctx, seq, payload)`.
    Python(String),
}

impl Code {
    fn bytes(&self) -> usize {
        match self {
            Code::Native(s) | Code::Python(s) => s.len(),
        }
    }
}

/// A handler as deployed: what it runs, where, with what settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandlerSpec {
    pub name: String,
    pub code: Code,
    /// A placement expression (`leader()` when empty).
    pub placement: String,
    /// JSON text the handler reads as its config (`{}` when empty).
    pub config: String,
    /// Each invocation's time budget, in ms; 0 is the node's default. (A
    /// Python handler's: native ones do not overrun.)
    #[serde(default)]
    pub time_budget_ms: u32,
    /// A Python invocation's memory cap, in MiB; 0 is the node's default.
    #[serde(default)]
    pub memory_mib: u32,
    /// Runs only for the elements whose append names it (CSPOT's put of
    /// an element with its handler), not for every element.
    #[serde(default)]
    pub on_demand: bool,
    /// Runs once on every node its placement matches (`all(...)`), each
    /// instance with its own progress; set by the node from the placement.
    #[serde(default)]
    pub per_node: bool,
}

impl HandlerSpec {
    /// Checks names and sizes. The node checks the rest (that a builtin
    /// exists, that Python compiles, that the placement parses) before it
    /// proposes a deploy.
    pub fn check(&self) -> Result<()> {
        check_name(&self.name)?;
        if self.code.bytes() == 0 || self.code.bytes() > HANDLER_CODE_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "handler code must be 1 to {HANDLER_CODE_BYTES_MAX} bytes, not {}",
                self.code.bytes()
            )));
        }
        if self.config.len() > HANDLER_CONFIG_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "handler config must be at most {HANDLER_CONFIG_BYTES_MAX} bytes, not {}",
                self.config.len()
            )));
        }
        if self.placement.len() > PLACEMENT_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "a placement expression is at most {PLACEMENT_BYTES_MAX} bytes"
            )));
        }
        Ok(())
    }
}

/// Checks a handler name: 1 to [`HANDLER_NAME_BYTES_MAX`] bytes of
/// `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= HANDLER_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "handler name {name:?}: 1 to {HANDLER_NAME_BYTES_MAX} bytes of a-z, 0-9, '.', '_', '-', \
             starting with a letter or digit"
        )))
    }
}

/// Where a newly deployed handler starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum From {
    /// With the next element appended after the deploy.
    Next,
    /// With the first element the topic still holds.
    Earliest,
    /// With this sequence number.
    Seq(u64),
}

/// A handler bound to a topic, and how far it has got.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handler {
    pub spec: HandlerSpec,
    /// Bumped by each update; progress reported for an older version is
    /// refused (a runner that did not yet see the update).
    pub version: u64,
    /// The first element this version runs for.
    pub takes_over_at: u64,
    /// The last element it finished (outputs committed); `takes_over_at - 1`
    /// before the first. For a handler that runs on every matching node,
    /// where an instance without progress of its own starts (after this).
    pub done: u64,
    /// Per node (peer id), the last element that node's instance finished:
    /// for a handler that runs on every matching node. At most
    /// [`INSTANCES_MAX`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, u64>,
    /// Set when it failed on an element past its retries: it does not run
    /// until resumed (or updated).
    #[serde(default)]
    pub parked: Option<Parked>,
    /// The topics it has appended to, in order of name (at most
    /// [`OUTPUT_TOPICS_MAX`]): where a trace looks for what an element
    /// caused.
    #[serde(default)]
    pub outputs: Vec<String>,
}

/// Why a handler stopped running.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    /// The element it failed on.
    pub seq: u64,
    pub error: String,
}

/// The longest error text a parked handler keeps.
pub const PARKED_ERROR_BYTES_MAX: usize = 1024;

impl Handler {
    /// The next element it runs for.
    pub fn next(&self) -> u64 {
        self.done + 1
    }

    /// The last element `instance` (a node, for a handler that runs on
    /// every matching node) finished; the handler's own progress if it has
    /// none, or for `None`.
    pub fn done_by(&self, instance: Option<&str>) -> u64 {
        instance
            .and_then(|i| self.instances.get(i))
            .copied()
            .unwrap_or(self.done)
    }
}

/// A change to a topic's handlers, carried in its log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HandlerCommand {
    /// Binds a new handler (refused if the name is taken).
    Deploy { spec: HandlerSpec, from: From },
    /// Replaces a handler's code, placement or config; the new version
    /// takes over at the next element it has not finished.
    Update { spec: HandlerSpec },
    /// Unbinds a handler.
    Remove { name: String },
    /// Records that `name` at `version` finished every element up to `done`,
    /// and appended to `outputs` (topics it had not reported before): the
    /// handler, or its `instance` on one node (placed on every matching
    /// node).
    Progress {
        name: String,
        version: u64,
        done: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outputs: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
    },
    /// Stops `name` at `version`: it failed on element `seq` past its retries.
    Park {
        name: String,
        version: u64,
        seq: u64,
        error: String,
    },
    /// Lets a parked handler run again, from the element it failed on.
    Resume { name: String },
}

/// What a [`HandlerCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HandlerAnswer {
    /// The handler as it now stands.
    Deployed(Box<Handler>),
    Removed,
    /// Progress recorded, or (`false`) older than what was recorded.
    Progressed(bool),
    /// Parked, or (`false`) not: the version had changed.
    Parked(bool),
}

/// The handlers of one topic, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handlers {
    by_name: BTreeMap<String, Handler>,
}

impl Handlers {
    pub fn get(&self, name: &str) -> Option<&Handler> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Handler> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Checks that an append may name handler `name`: one bound to run on
    /// demand.
    pub fn check_on_demand(&self, name: &str) -> Result<()> {
        match self.by_name.get(name) {
            Some(h) if h.spec.on_demand => Ok(()),
            Some(_) => Err(Error::InvalidArgument(format!(
                "handler {name:?} runs for every element already; an append names only a \
                 handler deployed on demand"
            ))),
            None => Err(Error::InvalidArgument(format!(
                "no handler {name:?} is bound to this topic to run on demand"
            ))),
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Every handler's (version, last element finished): what changes most
    /// often, stored apart from the specs (which may hold Python source).
    /// An instance's is under `name@node` (a name has no `@`).
    pub fn done(&self) -> BTreeMap<String, (u64, u64)> {
        let mut done = BTreeMap::new();
        for (n, h) in &self.by_name {
            done.insert(n.clone(), (h.version, h.done));
            for (node, d) in &h.instances {
                done.insert(format!("{n}@{node}"), (h.version, *d));
            }
        }
        done
    }

    /// The table with progress from [`done`](Self::done) laid over it: a
    /// handler's entry counts only for its current version, and only
    /// forward.
    pub fn with_done(mut self, done: &BTreeMap<String, (u64, u64)>) -> Self {
        for (key, &(version, d)) in done {
            let (name, instance) = match key.split_once('@') {
                Some((name, node)) => (name, Some(node)),
                None => (key.as_str(), None),
            };
            let Some(h) = self.by_name.get_mut(name) else {
                continue;
            };
            if version != h.version {
                continue;
            }
            match instance {
                None if d > h.done => h.done = d,
                None => {}
                Some(node) => {
                    let entry = h.instances.entry(node.to_string()).or_insert(d);
                    *entry = (*entry).max(d);
                }
            }
        }
        self
    }

    /// Applies `command` to a topic whose last element is `last_seq` and
    /// whose first still held is `first_seq`.
    pub fn decide(
        &mut self,
        command: HandlerCommand,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<HandlerAnswer> {
        match command {
            HandlerCommand::Deploy { spec, from } => {
                spec.check()?;
                if self.by_name.contains_key(&spec.name) {
                    return Err(Error::InvalidArgument(format!(
                        "a handler {:?} is already bound to this topic (update it, or remove it first)",
                        spec.name
                    )));
                }
                if self.by_name.len() >= HANDLERS_MAX {
                    return Err(Error::InvalidArgument(format!(
                        "a topic has at most {HANDLERS_MAX} handlers"
                    )));
                }
                let start = match from {
                    From::Next => last_seq + 1,
                    From::Earliest => first_seq.max(1),
                    From::Seq(0) => {
                        return Err(Error::InvalidArgument(
                            "sequence numbers start at 1; 0 is not one".into(),
                        ));
                    }
                    From::Seq(s) if s >= SEQ_MAX => {
                        return Err(Error::InvalidArgument(format!(
                            "a handler starts at a sequence number below {SEQ_MAX}, not {s}"
                        )));
                    }
                    From::Seq(s) => s,
                };
                let handler = Handler {
                    spec,
                    version: 1,
                    takes_over_at: start,
                    done: start - 1,
                    parked: None,
                    outputs: Vec::new(),
                    instances: BTreeMap::new(),
                };
                self.by_name
                    .insert(handler.spec.name.clone(), handler.clone());
                Ok(HandlerAnswer::Deployed(Box::new(handler)))
            }
            HandlerCommand::Update { spec } => {
                spec.check()?;
                let Some(h) = self.by_name.get_mut(&spec.name) else {
                    return Err(not_bound(&spec.name));
                };
                if h.spec.per_node && !spec.per_node {
                    // One runner again: it goes on from where every
                    // instance had got (the slowest), so no element is
                    // skipped.
                    if let Some(slowest) = h.instances.values().min() {
                        h.done = h.done.max(*slowest);
                    }
                    h.instances.clear();
                }
                h.spec = spec;
                h.version += 1;
                h.takes_over_at = h.done + 1;
                h.parked = None;
                Ok(HandlerAnswer::Deployed(Box::new(h.clone())))
            }
            HandlerCommand::Remove { name } => match self.by_name.remove(&name) {
                Some(_) => Ok(HandlerAnswer::Removed),
                None => Err(not_bound(&name)),
            },
            HandlerCommand::Progress {
                name,
                version,
                done,
                outputs,
                instance,
            } => {
                let Some(h) = self.by_name.get_mut(&name) else {
                    return Err(not_bound(&name));
                };
                for topic in outputs {
                    if let Err(at) = h.outputs.binary_search(&topic)
                        && h.outputs.len() < OUTPUT_TOPICS_MAX
                        && topic.len() <= crate::topic::NAME_BYTES_MAX
                    {
                        h.outputs.insert(at, topic);
                    }
                }
                if version != h.version || done <= h.done_by(instance.as_deref()) {
                    return Ok(HandlerAnswer::Progressed(false));
                }
                if done > last_seq {
                    return Err(Error::InvalidArgument(format!(
                        "handler {name:?} cannot have finished element {done}: the topic ends at {last_seq}"
                    )));
                }
                match instance {
                    None => h.done = done,
                    Some(_) if !h.spec.per_node => {
                        return Err(Error::InvalidArgument(format!(
                            "handler {name:?} runs on one node at a time; it has no instances"
                        )));
                    }
                    Some(node) => {
                        if !h.instances.contains_key(&node) && h.instances.len() >= INSTANCES_MAX {
                            return Err(Error::InvalidArgument(format!(
                                "handler {name:?} keeps progress for at most {INSTANCES_MAX} nodes"
                            )));
                        }
                        if node.is_empty() || node.len() > crate::topic::NAME_BYTES_MAX {
                            return Err(Error::InvalidArgument(format!(
                                "{node:?} does not name a node"
                            )));
                        }
                        h.instances.insert(node, done);
                    }
                }
                Ok(HandlerAnswer::Progressed(true))
            }
            HandlerCommand::Park {
                name,
                version,
                seq,
                mut error,
            } => {
                let Some(h) = self.by_name.get_mut(&name) else {
                    return Err(not_bound(&name));
                };
                if version != h.version {
                    return Ok(HandlerAnswer::Parked(false));
                }
                if error.len() > PARKED_ERROR_BYTES_MAX {
                    let mut end = PARKED_ERROR_BYTES_MAX;
                    while !error.is_char_boundary(end) {
                        end -= 1;
                    }
                    error.truncate(end);
                }
                h.parked = Some(Parked { seq, error });
                Ok(HandlerAnswer::Parked(true))
            }
            HandlerCommand::Resume { name } => {
                let Some(h) = self.by_name.get_mut(&name) else {
                    return Err(not_bound(&name));
                };
                h.parked = None;
                Ok(HandlerAnswer::Deployed(Box::new(h.clone())))
            }
        }
    }
}

fn not_bound(name: &str) -> Error {
    Error::HandlerNotFound(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> HandlerSpec {
        HandlerSpec {
            name: name.into(),
            code: Code::Native("forward".into()),
            placement: String::new(),
            config: "{}".into(),
            time_budget_ms: 0,
            memory_mib: 0,
            on_demand: false,
            per_node: false,
        }
    }

    fn deploy(h: &mut Handlers, name: &str, from: From, last: u64) -> Result<Handler> {
        match h.decide(
            HandlerCommand::Deploy {
                spec: spec(name),
                from,
            },
            1,
            last,
        )? {
            HandlerAnswer::Deployed(h) => Ok(*h),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_deploy_starts_where_asked() {
        let mut h = Handlers::default();
        assert_eq!(deploy(&mut h, "a", From::Next, 10).unwrap().next(), 11);
        assert_eq!(deploy(&mut h, "b", From::Earliest, 10).unwrap().next(), 1);
        assert_eq!(deploy(&mut h, "c", From::Seq(5), 10).unwrap().next(), 5);
        assert!(deploy(&mut h, "d", From::Seq(0), 10).is_err());
        assert!(deploy(&mut h, "d", From::Seq(SEQ_MAX), 10).is_err());
        assert!(deploy(&mut h, "a", From::Next, 10).is_err(), "name taken");
        assert!(deploy(&mut h, "Bad Name", From::Next, 10).is_err());
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn output_topics_are_kept_sorted_once_and_bounded() {
        let mut h = Handlers::default();
        deploy(&mut h, "a", From::Earliest, 10).unwrap();
        let progress = |h: &mut Handlers, done, outputs: &[&str]| {
            h.decide(
                HandlerCommand::Progress {
                    name: "a".into(),
                    version: 1,
                    done,
                    outputs: outputs.iter().map(|s| s.to_string()).collect(),
                    instance: None,
                },
                1,
                10,
            )
            .unwrap()
        };
        progress(&mut h, 2, &["z", "b"]);
        progress(&mut h, 3, &["b", "c"]);
        assert_eq!(h.get("a").unwrap().outputs, ["b", "c", "z"]);
        let many: Vec<String> = (0..2 * OUTPUT_TOPICS_MAX)
            .map(|i| format!("t{i:03}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        // Stale progress still says where outputs went.
        assert_eq!(progress(&mut h, 1, &many), HandlerAnswer::Progressed(false));
        assert_eq!(h.get("a").unwrap().outputs.len(), OUTPUT_TOPICS_MAX);
    }

    #[test]
    fn only_an_on_demand_handler_may_be_named_by_an_append() {
        let mut h = Handlers::default();
        deploy(&mut h, "every", From::Next, 0).unwrap();
        let mut picky = spec("picky");
        picky.on_demand = true;
        h.decide(
            HandlerCommand::Deploy {
                spec: picky,
                from: From::Next,
            },
            1,
            0,
        )
        .unwrap();
        assert!(h.check_on_demand("picky").is_ok());
        assert!(h.check_on_demand("every").is_err());
        assert!(h.check_on_demand("nope").is_err());
    }

    #[test]
    fn progress_only_moves_forward_for_the_current_version() {
        let mut h = Handlers::default();
        deploy(&mut h, "a", From::Earliest, 10).unwrap();
        let progress = |h: &mut Handlers, version, done| {
            h.decide(
                HandlerCommand::Progress {
                    name: "a".into(),
                    version,
                    done,
                    outputs: Vec::new(),
                    instance: None,
                },
                1,
                10,
            )
        };
        assert_eq!(
            progress(&mut h, 1, 4).unwrap(),
            HandlerAnswer::Progressed(true)
        );
        assert_eq!(
            progress(&mut h, 1, 3).unwrap(),
            HandlerAnswer::Progressed(false)
        );
        assert!(progress(&mut h, 1, 11).is_err(), "beyond the topic");
        // An update takes over at the next unfinished element; the old
        // version's progress no longer counts.
        let updated = h
            .decide(HandlerCommand::Update { spec: spec("a") }, 1, 10)
            .unwrap();
        let HandlerAnswer::Deployed(u) = updated else {
            panic!()
        };
        assert_eq!((u.version, u.takes_over_at, u.done), (2, 5, 4));
        assert_eq!(
            progress(&mut h, 1, 8).unwrap(),
            HandlerAnswer::Progressed(false)
        );
        assert_eq!(
            progress(&mut h, 2, 8).unwrap(),
            HandlerAnswer::Progressed(true)
        );
        assert_eq!(h.get("a").unwrap().done, 8);
    }

    #[test]
    fn a_parked_handler_stays_parked_until_resumed_or_updated() {
        let mut h = Handlers::default();
        deploy(&mut h, "a", From::Earliest, 10).unwrap();
        let park = |version| HandlerCommand::Park {
            name: "a".into(),
            version,
            seq: 4,
            error: "é".repeat(PARKED_ERROR_BYTES_MAX),
        };
        assert_eq!(
            h.decide(park(2), 1, 10).unwrap(),
            HandlerAnswer::Parked(false)
        );
        assert!(
            h.get("a").unwrap().parked.is_none(),
            "another version's runner"
        );
        assert_eq!(
            h.decide(park(1), 1, 10).unwrap(),
            HandlerAnswer::Parked(true)
        );
        let parked = h.get("a").unwrap().parked.clone().unwrap();
        assert_eq!(parked.seq, 4);
        assert!(parked.error.len() <= PARKED_ERROR_BYTES_MAX);
        h.decide(HandlerCommand::Resume { name: "a".into() }, 1, 10)
            .unwrap();
        assert!(h.get("a").unwrap().parked.is_none());
        h.decide(park(1), 1, 10).unwrap();
        h.decide(HandlerCommand::Update { spec: spec("a") }, 1, 10)
            .unwrap();
        assert!(h.get("a").unwrap().parked.is_none(), "new code runs");
    }

    #[test]
    fn bounds_and_unknown_names() {
        let mut h = Handlers::default();
        for i in 0..HANDLERS_MAX {
            deploy(&mut h, &format!("h{i}"), From::Next, 0).unwrap();
        }
        assert!(deploy(&mut h, "one-more", From::Next, 0).is_err());
        assert!(matches!(
            h.decide(
                HandlerCommand::Remove {
                    name: "nope".into()
                },
                1,
                0
            ),
            Err(Error::HandlerNotFound(_))
        ));
        let mut big = spec("big");
        big.code = Code::Python("x".repeat(HANDLER_CODE_BYTES_MAX + 1));
        assert!(big.check().is_err());
        assert_eq!(
            h.decide(HandlerCommand::Remove { name: "h0".into() }, 1, 0)
                .unwrap(),
            HandlerAnswer::Removed
        );
        assert_eq!(h.len(), HANDLERS_MAX - 1);
    }

    #[test]
    fn instances_on_every_node_keep_their_own_progress_through_updates() {
        let mut h = Handlers::default();
        let mut per_node = spec("each");
        per_node.per_node = true;
        h.decide(
            HandlerCommand::Deploy {
                spec: per_node.clone(),
                from: From::Seq(3),
            },
            1,
            10,
        )
        .unwrap();
        let progress = |h: &mut Handlers, version, done, node: &str| {
            h.decide(
                HandlerCommand::Progress {
                    name: "each".into(),
                    version,
                    done,
                    outputs: Vec::new(),
                    instance: Some(node.into()),
                },
                1,
                10,
            )
        };
        // A node without progress starts where the deploy said.
        assert_eq!(h.get("each").unwrap().done_by(Some("n1")), 2);
        assert_eq!(
            progress(&mut h, 1, 6, "n1").unwrap(),
            HandlerAnswer::Progressed(true)
        );
        assert_eq!(
            progress(&mut h, 1, 4, "n2").unwrap(),
            HandlerAnswer::Progressed(true)
        );
        assert_eq!(
            progress(&mut h, 1, 5, "n1").unwrap(),
            HandlerAnswer::Progressed(false)
        );
        assert_eq!(
            progress(&mut h, 2, 9, "n1").unwrap(),
            HandlerAnswer::Progressed(false)
        );
        assert!(progress(&mut h, 1, 11, "n1").is_err(), "past the end");
        let each = h.get("each").unwrap();
        assert_eq!((each.done_by(Some("n1")), each.done_by(Some("n2"))), (6, 4));
        assert_eq!(
            each.done, 2,
            "the handler's own progress is where new nodes start"
        );

        // Stored apart and laid back over the specs, it is the same.
        let mut bare = h.clone();
        for handler in bare.by_name.values_mut() {
            handler.instances.clear();
            handler.done = 2;
        }
        assert_eq!(bare.with_done(&h.done()), h);

        // Bounded.
        for i in 0..INSTANCES_MAX - 2 {
            progress(&mut h, 1, 3, &format!("m{i}")).unwrap();
        }
        assert!(progress(&mut h, 1, 3, "one-too-many").is_err());

        // An update keeps each node's progress; one back to a single runner
        // goes on from the slowest node.
        h.decide(
            HandlerCommand::Update {
                spec: per_node.clone(),
            },
            1,
            10,
        )
        .unwrap();
        assert_eq!(h.get("each").unwrap().done_by(Some("n1")), 6);
        h.decide(HandlerCommand::Update { spec: spec("each") }, 1, 10)
            .unwrap();
        let single = h.get("each").unwrap();
        assert!(single.instances.is_empty());
        assert_eq!(single.done, 3, "the slowest instance had finished 3");
        assert!(
            progress(&mut h, 3, 7, "n1").is_err(),
            "a single runner has no instances"
        );
    }
}
