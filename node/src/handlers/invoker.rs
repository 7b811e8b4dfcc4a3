//! Runs the invocations other nodes' `adaptive()` runners send here.
//!
//! Each handler (topic, name, version) asked of this node gets a task of
//! its own with its code loaded once (a warm Python worker, or a native
//! handler) and a bounded queue: its invocations run in the order they
//! came, other handlers' beside them. A task idle for [`IDLE`] ends. The
//! invoker appends nothing: the runner that asked appends the outputs it
//! gets back, under their keys, so effectively once holds as for any run.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use woof_consensus::topic::handlers::Handler;

use super::code::Engine;
use crate::api::ClusterTopics;
use crate::groups::{HandlerInvoke, Invocation, InvokeReply};
use crate::shutdown::Shutdown;

/// Handlers this node runs for others at once, at most.
pub const HANDLERS_MAX: usize = 64;
/// Invocations waiting for one handler, at most; past that the asker is
/// told so (and runs the element elsewhere).
const QUEUED_MAX: usize = 64;
/// How long a handler's task lives without an invocation.
const IDLE: Duration = Duration::from_secs(60);

type Key = (String, String, u64);

/// Serves this node's invocations until the node stops.
pub fn spawn(api: ClusterTopics, mut invocations: mpsc::Receiver<Invocation>, shutdown: Shutdown) {
    let tasks = shutdown.clone();
    shutdown.spawn(async move {
        let mut running: HashMap<Key, mpsc::Sender<Invocation>> = HashMap::new();
        loop {
            let (invoke, reply) = tokio::select! {
                _ = tasks.requested() => break,
                next = invocations.recv() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
            running.retain(|_, queue| !queue.is_closed());
            let key = (invoke.topic.clone(), invoke.handler.clone(), invoke.version);
            if !running.contains_key(&key) {
                if running.len() >= HANDLERS_MAX {
                    let _ = reply.send(refused(format!(
                        "this node runs {HANDLERS_MAX} handlers for others already"
                    )));
                    continue;
                }
                let (tx, rx) = mpsc::channel(QUEUED_MAX);
                tasks.spawn(serve(api.clone(), key.clone(), rx));
                running.insert(key.clone(), tx);
            }
            if let Err(e) = running[&key].try_send((invoke, reply)) {
                let (_, reply) = e.into_inner();
                let _ = reply.send(refused(
                    "too many invocations of this handler wait here".into(),
                ));
            }
        }
    });
}

fn refused(why: String) -> Result<InvokeReply, String> {
    Err(why)
}

/// One handler's invocations, in order, until idle.
async fn serve(api: ClusterTopics, key: Key, mut queue: mpsc::Receiver<Invocation>) {
    let (topic, name, version) = &key;
    let mut engine: Option<Engine> = None;
    loop {
        let Ok(Some((invoke, reply))) = tokio::time::timeout(IDLE, queue.recv()).await else {
            return;
        };
        if engine.is_none() {
            match load(&api, topic, name, *version).await {
                Ok(e) => engine = Some(e),
                Err(why) => {
                    let _ = reply.send(refused(why));
                    continue;
                }
            }
        }
        let engine = engine.as_mut().expect("loaded above");
        let HandlerInvoke {
            seq,
            time_ms,
            payload,
            ..
        } = invoke;
        let ran = engine.run(seq, time_ms, &payload, &api).await;
        let _ = reply.send(Ok(InvokeReply {
            outputs: ran
                .outputs
                .map(|outputs| outputs.into_iter().map(|o| (o.topic, o.payload)).collect()),
            logs: ran.logs,
            overran: ran.overran,
        }));
    }
}

/// The code of handler `name` of `topic` at `version`, ready to run here.
async fn load(
    api: &ClusterTopics,
    topic: &str,
    name: &str,
    version: u64,
) -> Result<Engine, String> {
    let (handlers, _) = api.handlers(topic).await.map_err(|e| e.to_string())?;
    let handler: &Handler = handlers
        .get(name)
        .filter(|h| h.version == version)
        .ok_or_else(|| format!("handler {name:?} of {topic:?} is not at version {version}"))?;
    Engine::build(&handler.spec, topic, &api.me(), api.python()).map_err(|e| e.to_string())
}
