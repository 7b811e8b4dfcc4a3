//! The code a runner runs, native or Python, behind one call.
//!
//! A Python handler runs in a warm worker process (`woof_python`, ADR 12).
//! A worker that overran its time budget or died is spent; the next
//! attempt starts a new one, so a hostile handler costs its own retries
//! and nothing else.

use std::path::PathBuf;

use bytes::Bytes;
use woof_consensus::topic::handlers::{Code, HandlerSpec};
use woof_python::wire::{Element, Load};
use woof_python::{Answer, Ask, Limits, Worker};

use super::native::{self, Native, Output};
use crate::api::ClusterTopics;
use crate::error::{Error, Result};

/// How this node runs Python handlers.
#[derive(Debug, Clone)]
pub struct Python {
    /// The program started as a worker: this node's own binary, unless
    /// told otherwise (tests that run a node inside their own process).
    pub program: PathBuf,
    pub limits: Limits,
}

impl Python {
    /// The limits of a handler deployed as `spec` (its own, or the node's).
    pub fn limits_of(&self, spec: &HandlerSpec) -> Limits {
        Limits {
            time: match spec.time_budget_ms {
                0 => self.limits.time,
                ms => std::time::Duration::from_millis(u64::from(ms)),
            },
            memory_bytes: match spec.memory_mib {
                0 => self.limits.memory_bytes,
                mib => u64::from(mib) << 20,
            },
        }
    }

    /// The node's own binary, with the default limits (1 s, 64 MiB).
    pub fn this_binary() -> Self {
        Self {
            program: woof_python::host::default_program().unwrap_or_else(|| "woof".into()),
            limits: Limits::default(),
        }
    }

    /// Loads `source` in a worker of its own and drops it: what a deploy
    /// must pass (it compiles, its module runs, it defines `handle`).
    pub async fn check(&self, spec: &HandlerSpec, topic: &str, source: &str) -> Result<()> {
        let load = load(spec, topic, source, "deploy-check");
        match Worker::start(&self.program, load, self.limits_of(spec)).await {
            Ok(_) => Ok(()),
            Err(e @ (woof_python::Error::Refused(_) | woof_python::Error::Overran(_))) => {
                Err(Error::Usage(format!(
                    "the Python handler {:?} is refused: {e}",
                    spec.name
                )))
            }
            Err(e) => Err(Error::Internal(format!(
                "checking the Python handler {:?}: {e}",
                spec.name
            ))),
        }
    }
}

fn load(spec: &HandlerSpec, topic: &str, source: &str, node: &str) -> Load {
    Load {
        source: source.to_string(),
        config: spec.config.clone(),
        topic: topic.to_string(),
        node: node.to_string(),
        memory_bytes: 0,
    }
}

/// A handler's code, ready to run.
pub enum Engine {
    Native(Box<dyn Native>),
    Python(Box<PythonEngine>),
}

/// A Python handler: how to start its worker, and the worker.
pub struct PythonEngine {
    python: Python,
    load: Load,
    /// `None` until started, and again after it was spent.
    worker: Option<Worker>,
}

/// What one invocation did.
pub struct Ran {
    pub outputs: Result<Vec<Output>, String>,
    /// What it logged.
    pub logs: Vec<String>,
    /// It ran past its time budget.
    pub overran: bool,
}

impl Engine {
    pub fn build(spec: &HandlerSpec, topic: &str, node: &str, python: &Python) -> Result<Self> {
        match &spec.code {
            Code::Native(name) => Ok(Self::Native(
                native::build(name, &spec.config).map_err(Error::Usage)?,
            )),
            Code::Python(source) => Ok(Self::Python(Box::new(PythonEngine {
                python: Python {
                    program: python.program.clone(),
                    limits: python.limits_of(spec),
                },
                load: load(spec, topic, source, node),
                worker: None,
            }))),
        }
    }

    /// The native handler, if it is one (only those keep state the runner
    /// rebuilds; a Python module's globals are a cache).
    pub fn native(&mut self) -> Option<&mut dyn Native> {
        match self {
            Self::Native(n) => Some(&mut **n),
            Self::Python(_) => None,
        }
    }

    /// Runs the handler on element `seq`, appended at `time_ms`.
    pub async fn run(
        &mut self,
        seq: u64,
        time_ms: u64,
        payload: &Bytes,
        api: &ClusterTopics,
    ) -> Ran {
        match self {
            Self::Native(handler) => Ran {
                outputs: handler.handle(seq, time_ms, payload),
                logs: Vec::new(),
                overran: false,
            },
            Self::Python(engine) => {
                let PythonEngine {
                    python,
                    load,
                    worker,
                } = &mut **engine;
                let failed = |e: woof_python::Error, worker: &mut Option<Worker>| {
                    *worker = None;
                    Ran {
                        overran: matches!(e, woof_python::Error::Overran(_)),
                        outputs: Err(e.to_string()),
                        logs: Vec::new(),
                    }
                };
                if worker.is_none() {
                    match Worker::start(&python.program, load.clone(), python.limits).await {
                        Ok(w) => *worker = Some(w),
                        Err(e) => return failed(e, worker),
                    }
                }
                let w = worker.as_mut().expect("started above");
                match w.invoke(seq, payload, &mut Reads(api)).await {
                    Ok(outcome) => Ran {
                        outputs: match outcome.error {
                            Some(e) => Err(e),
                            None => Ok(outcome
                                .outputs
                                .into_iter()
                                .map(|o| Output {
                                    topic: o.topic,
                                    payload: Bytes::from(o.payload),
                                })
                                .collect()),
                        },
                        logs: outcome.logs,
                        overran: false,
                    },
                    Err(e) => failed(e, worker),
                }
            }
        }
    }
}

/// A Python handler's reads, answered from the cluster.
struct Reads<'a>(&'a ClusterTopics);

impl woof_python::Reads for Reads<'_> {
    async fn answer(&mut self, ask: Ask) -> Answer {
        let topic = match &ask {
            Ask::Get { topic, .. } | Ask::Latest { topic } | Ask::Scan { topic, .. } => topic,
        };
        // The device registry holds keys: no handler reads it.
        if let Err(e) = crate::api::user_topic(topic, false) {
            return Answer::Failed(e.to_string());
        }
        let element = |seq: u64, payload: Bytes| Element {
            seq,
            payload: payload.to_vec(),
        };
        let answered = match ask {
            Ask::Get { topic, seq } => present(self.0.get(&topic, seq).await)
                .map(|e| Answer::Element(e.map(|e| element(e.seq, e.payload)))),
            Ask::Latest { topic } => match self.0.latest(&topic).await {
                Ok(range) if range.last == 0 || range.last < range.first => {
                    Ok(Answer::Element(None))
                }
                Ok(range) => present(self.0.get(&topic, range.last).await)
                    .map(|e| Answer::Element(e.map(|e| element(e.seq, e.payload)))),
                Err(e) => Err(e),
            },
            Ask::Scan { topic, from, limit } => {
                self.0.scan(&topic, from, limit).await.map(|page| {
                    Answer::Elements(
                        page.into_iter()
                            .map(|e| element(e.seq, e.payload))
                            .collect(),
                    )
                })
            }
        };
        answered.unwrap_or_else(|e| Answer::Failed(e.to_string()))
    }
}

/// An element that is not there (not yet written, or trimmed) is `None`.
fn present(
    got: Result<woof_consensus::topic::Element>,
) -> Result<Option<woof_consensus::topic::Element>> {
    match got {
        Ok(e) => Ok(Some(e)),
        Err(Error::Log(woof_consensus::Error::OutOfRange { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}
